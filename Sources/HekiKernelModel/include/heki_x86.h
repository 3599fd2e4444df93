/*
 * heki_x86.h - the architecture's and the Heki series' numbers, written once
 * for every C file and every assembly guest of the project: control
 * register bits, the Heki exit reason bits, the hypercall and its results.
 *
 * Only #defines, valid in C, in Swift (object-like macros import) and in
 * assembly run through cpp (gcc -c on a .S file): FK_ONE is 1ull in C,
 * where the bits are 64-bit constants, and a plain 1 for GNU as.
 */
#ifndef HEKI_X86_H
#define HEKI_X86_H

#ifdef __ASSEMBLER__
#define FK_ONE 1
#else
#define FK_ONE 1ull
#endif

/* Control register bits (arch/x86/include/uapi/asm/processor-flags.h). */
#define FK_CR0_PE (FK_ONE << 0)
#define FK_CR0_MP (FK_ONE << 1)
#define FK_CR0_EM (FK_ONE << 2)
#define FK_CR0_TS (FK_ONE << 3)
#define FK_CR0_ET (FK_ONE << 4)
#define FK_CR0_NE (FK_ONE << 5)
#define FK_CR0_WP (FK_ONE << 16)
#define FK_CR0_AM (FK_ONE << 18)
#define FK_CR0_NW (FK_ONE << 29)
#define FK_CR0_CD (FK_ONE << 30)
#define FK_CR0_PG (FK_ONE << 31)

#define FK_CR4_PAE (FK_ONE << 5)
#define FK_CR4_PGE (FK_ONE << 7)
#define FK_CR4_OSFXSR (FK_ONE << 9)
#define FK_CR4_OSXMMEXCPT (FK_ONE << 10)
#define FK_CR4_UMIP (FK_ONE << 11)
#define FK_CR4_FSGSBASE (FK_ONE << 16)
#define FK_CR4_PCIDE (FK_ONE << 17)
#define FK_CR4_OSXSAVE (FK_ONE << 18)
#define FK_CR4_SMEP (FK_ONE << 20)
#define FK_CR4_SMAP (FK_ONE << 21)
#define FK_CR4_PKE (FK_ONE << 22)
#define FK_CR4_CET (FK_ONE << 23)
#define FK_CR4_FRED (FK_ONE << 32)

/* The patch's heki_pinnable_cr4 (v2), and v3's (adds FRED). */
#define FK_PINNABLE_CR4_V2 \
    (FK_CR4_SMEP | FK_CR4_SMAP | FK_CR4_UMIP | FK_CR4_FSGSBASE | FK_CR4_CET)
#define FK_PINNABLE_CR4_V3 (FK_PINNABLE_CR4_V2 | FK_CR4_FRED)

/* A typical x86-64 Linux host: CR0 = PE|MP|ET|NE|WP|AM|PG; CR4 = PAE|PGE|
   OSFXSR|OSXMMEXCPT|UMIP|FSGSBASE|PCIDE|OSXSAVE|SMEP|SMAP|PKE: with SMEP,
   SMAP, UMIP, FSGSBASE but without CET and FRED (so host masking shows).
   Written as numbers (Swift imports a macro of one operation only);
   kernel_model.c asserts them equal to the ORs of the bits. */
#define FK_DEFAULT_HOST_CR0 (FK_ONE * 0x80050033)
#define FK_DEFAULT_HOST_CR4 (FK_ONE * 0x770ea0)

/* x86 state after RESET/INIT: CR0 = ET|NW|CD, CR4 = 0. */
#define FK_RESET_CR0 (FK_ONE * 0x60000010)
#define FK_RESET_CR4 (FK_ONE * 0)

/* KVM_HEKI_EXIT_REASON_* (capability mask bits and payload `reason`). */
#define FK_HEKI_EXIT_REASON_CR0 (FK_ONE << 0)
#define FK_HEKI_EXIT_REASON_CR4 (FK_ONE << 1)
#define FK_HEKI_EXIT_REASON_VALID_MASK \
    (FK_HEKI_EXIT_REASON_CR0 | FK_HEKI_EXIT_REASON_CR4)

/* The hypercall (include/uapi/linux/kvm_para.h of the series). */
#define FK_KVM_HC_LOCK_CR_UPDATE 13
#define FK_KVM_LOCK_CR_UPDATE_VERSION (FK_ONE << 0)
#define FK_KVM_EINVAL 22   /* KVM_EINVAL (= EINVAL) of <linux/kvm_para.h> */
#define FK_KVM_ENOSYS 1000 /* KVM_ENOSYS: unknown hypercall number */
/* The errors as the guest sees them in a 32-bit eax: -KVM_EINVAL and
   -KVM_ENOSYS. */
#define FK_KVM_EINVAL_NEG32 0xffffffea
#define FK_KVM_ENOSYS_NEG32 0xfffffc18

#endif /* HEKI_X86_H */
