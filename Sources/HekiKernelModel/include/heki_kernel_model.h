/*
 * heki_kernel_model.h - a model of the kernel side of Heki (RFC v2 patch 03,
 * "KVM: x86: Add notifications for Heki policy configuration and
 * violation"), for tests and for a user-space emulator in front of a real VMM.
 *
 * Plain C11 + <linux/kvm.h> + stdatomic; no GLib, no plugin dependency.
 * docs/HEKI-ABI.md summarises the interface; docs/DESIGN.md says who uses
 * the model (the tests, the demo, the benchmarks, the fuzzers, the emulator).
 * What is modelled, per the patch:
 *   - KVM_CHECK_EXTENSION / KVM_ENABLE_CAP of KVM_CAP_HEKI_CONFIGURE/_DENIAL
 *     (kvm_vm_ioctl_check_extension, kvm_vm_ioctl_enable_cap), and of the
 *     upstream capabilities that share their numbers 235..237, as the
 *     kernel of each FkKernelKind answers them (a stock kernel included);
 *   - the KVM_HC_LOCK_CR_UPDATE hypercall (kvm_emulate_hypercall +
 *     heki_lock_cr + heki_exit_cr);
 *   - guest writes to CR0/CR4 (handle_cr / emulator_set_cr + heki_check_cr);
 *   - the completion of a pending exit when user space re-enters KVM_RUN
 *     (complete_heki_configure_exit / complete_heki_denial_exit).
 * The exit payload is written into a real struct kvm_run owned by the caller.
 *
 * Threads: one FkVcpu is driven by one thread at a time; any number of vCPUs
 * of one FkVm may run at once (the pins are atomics, as in the kernel).
 * Capabilities are enabled before vCPUs run, as a VMM does.
 *
 * The types are opaque and the functions take plain C types, so the header
 * imports into Swift as is.
 */
#ifndef HEKI_KERNEL_MODEL_H
#define HEKI_KERNEL_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "heki_x86.h"

#ifdef __cplusplus
extern "C" {
#endif

struct kvm_run;

#define FK_HEKI_ABI_VERSION 1
#define FK_EINVAL 22       /* -EINVAL returned by the ioctls */
#define FK_ENXIO 6         /* -ENXIO: KVM_ENABLE_CAP(237) without irqchip */
#define FK_VMCALL_LENGTH 3 /* 0f 01 c1 */
#define FK_MOV_CR_LENGTH 3 /* 0f 22 /r */

/* kvm_run layout (x86-64): exit_reason at 8, the exit union at 32. */
#define FK_KVM_RUN_EXIT_REASON_OFFSET 8
#define FK_KVM_RUN_UNION_OFFSET 32
#define FK_HEKI_PAYLOAD_SIZE 64
#define FK_HEKI_PAYLOAD_WORDS 8

/* Exit/capability numbering.  The numbers are plain fields: a test or an
   emulator may override any of them. */
typedef enum { FK_PROFILE_V2 = 2, FK_PROFILE_V3 = 3 } FkProfileId;

typedef struct FkProfile {
    uint32_t exit_configure; /* KVM_EXIT_HEKI_CONFIGURE */
    uint32_t exit_denial;    /* KVM_EXIT_HEKI_DENIAL */
    uint32_t cap_configure;  /* KVM_CAP_HEKI_CONFIGURE */
    uint32_t cap_denial;     /* KVM_CAP_HEKI_DENIAL */
    uint64_t pinnable_cr4;   /* heki_pinnable_cr4 */
} FkProfile;

/* v2: exits 39/40, caps 235/236, FK_PINNABLE_CR4_V2.
   v3: exits 40/41, caps 236/237, FK_PINNABLE_CR4_V3.  Unknown id: v2. */
FkProfile fk_profile(FkProfileId id);

/* Results of the guest-visible operations. */
typedef enum {
    FK_OK = 0,    /* done inside the kernel; the guest continues */
    FK_EXIT = 1,  /* exit to user space: run->exit_reason and payload filled,
                     a completion is pending (fk_vcpu_complete) */
    FK_GP = 2,    /* #GP(0) injected by the kernel itself, no exit */
    FK_BUSY = -1, /* model misuse: an exit is still pending completion */
    FK_BAD = -2   /* model misuse: register the model does not hold */
} FkResult;

/* What fk_vcpu_complete() did. */
typedef enum {
    FK_PENDING_NONE = 0,
    FK_PENDING_CONFIGURE = 1, /* complete_heki_configure_exit */
    FK_PENDING_DENIAL = 2     /* complete_heki_denial_exit */
} FkPending;

typedef struct FkVm FkVm;
typedef struct FkVcpu FkVcpu;

/* ---- VM ---------------------------------------------------------------- */

/* A VM on a host whose CPU has host_cr0/host_cr4 (what __read_cr4() and
   read_cr0() return in heki_lock_cr).  NULL profile: v2.  The kernel is a
   Heki kernel (FK_KERNEL_HEKI) with Heki built in (CONFIG_HEKI) until
   fk_vm_set_kernel() or fk_vm_set_heki_built(vm, false) says otherwise. */
FkVm *fk_vm_new(const FkProfile *profile, uint64_t host_cr0, uint64_t host_cr4);
/* Frees the VM; its vCPUs must have been freed. */
void fk_vm_free(FkVm *vm);
FkProfile fk_vm_profile(const FkVm *vm);
uint64_t fk_vm_host_cr(const FkVm *vm, int cr);

/* A Heki kernel (FK_KERNEL_HEKI) built without CONFIG_HEKI: KVM_ENABLE_CAP
   fails with -EINVAL for the Heki caps, the hypercall does not exist
   (-KVM_ENOSYS) and no pin is ever made, yet KVM_CHECK_EXTENSION still
   answers 3 (the switch case sits outside #ifdef CONFIG_HEKI in the patch). */
void fk_vm_set_heki_built(FkVm *vm, bool built);
bool fk_vm_heki_built(const FkVm *vm);

/* Which kernel the VM runs on.  The numbers 235..237 mean Heki caps on a
   Heki kernel and upstream ones on a stock kernel (stock 6.18: 235
   KVM_CAP_VM_TYPES, 236 KVM_CAP_PRE_FAULT_MEMORY, 237
   KVM_CAP_X86_APIC_BUS_CYCLES_NS). */
typedef enum {
    /* The Heki patch of the VM's profile.  It took the next free numbers, so
       of the upstream caps 235..237 only those below the profile's lowest
       Heki cap exist (v3: 235; v2: none; caps 300/301: all three), answered
       as FK_KERNEL_STOCK does. */
    FK_KERNEL_HEKI = 0,
    /* No Heki: the profile's caps are not special, the hypercall is unknown
       (-KVM_ENOSYS) and no Heki exit ever happens.  No in-kernel irqchip. */
    FK_KERNEL_STOCK = 1,
    /* FK_KERNEL_STOCK after KVM_CREATE_IRQCHIP: KVM_ENABLE_CAP(237) succeeds
       and changes the VM's APIC bus cycle (what a wrong profile would do). */
    FK_KERNEL_STOCK_IRQCHIP = 2
} FkKernelKind;

/* The kernel of the VM (FK_KERNEL_HEKI from fk_vm_new).  Set it before the
   VMM asks for capabilities; an unknown value is taken as FK_KERNEL_STOCK. */
void fk_vm_set_kernel(FkVm *vm, FkKernelKind kind);
FkKernelKind fk_vm_kernel(const FkVm *vm);

/* KVM_CHECK_EXTENSION.  FK_KERNEL_HEKI: 3 (the valid reason mask) for the
   profile's two caps, with or without CONFIG_HEKI.  235..237 as upstream
   where that cap exists: 235 -> 1 (BIT(KVM_X86_DEFAULT_VM)), 236 -> 0 (no
   TDP on this machine's PVM), 237 -> 1 (APIC_BUS_CYCLE_NS_DEFAULT).  Any
   other number: 0. */
int fk_check_extension(const FkVm *vm, uint32_t cap);
/* KVM_ENABLE_CAP(cap, args[0] = arg0): 0 or -errno.  A profile's Heki cap
   (FK_KERNEL_HEKI): -EINVAL for unknown bits in arg0 and without CONFIG_HEKI,
   else 0 and the mask is stored (a later call replaces it).  235 and 236
   cannot be enabled: -EINVAL.  237 as upstream: -EINVAL for arg0 0 or too
   big for the APIC timer, -ENXIO without an in-kernel irqchip, -EINVAL once
   a vCPU exists, else 0 and the APIC bus cycle becomes arg0.  Any other
   number (or a cap that does not exist in this kernel): -EINVAL.  Every
   call is counted (fk_vm_enable_cap_calls). */
int fk_enable_cap(FkVm *vm, uint32_t cap, uint64_t arg0);
/* KVM_ENABLE_CAP calls received for `cap` (235..237 or one of the
   profile's caps; any other number: 0, as it is counted in the total only),
   failed ones included. */
uint64_t fk_vm_enable_cap_calls(const FkVm *vm, uint32_t cap);
/* Every KVM_ENABLE_CAP call received, whatever the number. */
uint64_t fk_vm_enable_cap_calls_total(const FkVm *vm);
/* kvm->arch.apic_bus_cycle_ns: 1 unless KVM_ENABLE_CAP(237) changed it. */
uint64_t fk_vm_apic_bus_cycle_ns(const FkVm *vm);

/* HekiHost.check_extension and HekiHost.enable_cap over the model, for C
   hosts: `opaque` points at an FkVm * (e.g. the first field of the host's
   own opaque struct).  The signatures are HekiHost's; no plugin header is
   needed here. */
int fk_host_check_extension(void *opaque, uint32_t cap);
int fk_host_enable_cap(void *opaque, uint32_t cap, uint64_t mask);

/* The Heki masks enabled (kvm->heki_configure_exit_reason / _denial_). */
uint64_t fk_vm_configure_mask(const FkVm *vm);
uint64_t fk_vm_denial_mask(const FkVm *vm);

/* kvm->heki_pinned_cr0 / _cr4: OR-ed, never unpinned.  cr other than 0/4: 0. */
uint64_t fk_vm_pinned(const FkVm *vm, int cr);

/* System reset of every vCPU of the VM (fk_vcpu_reset; pending completions
   stay armed).  The pins are kept:
   the patch has no way to clear them, which is the RFC's stated open problem
   (reboot, kexec, hibernation would need it). */
void fk_vm_reset(FkVm *vm);

/* Counters over the VM's life (atomics; any thread). */
uint64_t fk_vm_configure_exits(const FkVm *vm); /* exits to user space */
uint64_t fk_vm_denial_exits(const FkVm *vm);
uint64_t fk_vm_denials(const FkVm *vm); /* refused CR writes, exit or not */

/* ---- vCPU -------------------------------------------------------------- */

/* A vCPU whose mmap'ed kvm_run is `run` (at least sizeof(struct kvm_run)
   bytes, owned by the caller).  Starts with a booted Linux's CR0/CR4:
   host_cr0 and host_cr4 of the VM.  At most FK_MAX_VCPUS per VM; NULL when
   full. */
#define FK_MAX_VCPUS 256
FkVcpu *fk_vcpu_new(FkVm *vm, struct kvm_run *run);
void fk_vcpu_free(FkVcpu *vcpu);
struct kvm_run *fk_vcpu_run(const FkVcpu *vcpu);
uint32_t fk_vcpu_index(const FkVcpu *vcpu);

uint64_t fk_vcpu_cr(const FkVcpu *vcpu, int cr);     /* 0 or 4; else 0 */
void fk_vcpu_set_cr_raw(FkVcpu *vcpu, int cr, uint64_t value); /* no checks */
uint64_t fk_vcpu_rax(const FkVcpu *vcpu);
uint64_t fk_vcpu_rip(const FkVcpu *vcpu);
FkPending fk_vcpu_pending(const FkVcpu *vcpu);
uint64_t fk_vcpu_gp_count(const FkVcpu *vcpu);   /* #GP(0) injected */
uint64_t fk_vcpu_hypercalls(const FkVcpu *vcpu); /* vcpu->stat.hypercalls */

/* The guest executes VMCALL with rax = nr, rbx..rdx = a0..a2 (as
   kvm_emulate_hypercall reads them).  FK_OK: rax holds the result (for
   KVM_HC_LOCK_CR_UPDATE: 0, the version, or -KVM_EINVAL as a u64), rip moved
   past the VMCALL.  FK_EXIT: a KVM_EXIT_HEKI_CONFIGURE is in run. */
FkResult fk_vcpu_hypercall(FkVcpu *vcpu, uint64_t nr, uint64_t a0,
                           uint64_t a1, uint64_t a2);
/* Shorthand: KVM_HC_LOCK_CR_UPDATE(cr, pin, flags). */
FkResult fk_vcpu_lock_cr(FkVcpu *vcpu, uint64_t cr, uint64_t pin,
                         uint64_t flags);
/* The guest executes MOV to CR0/CR4 (cr 0 or 4; else FK_BAD).  FK_OK: the
   value is in place.  FK_EXIT: KVM_EXIT_HEKI_DENIAL in run, #GP deferred to
   the completion.  FK_GP: #GP injected without exit (denial cap off for that
   register). */
FkResult fk_vcpu_write_cr(FkVcpu *vcpu, int cr, uint64_t value);

/* User space re-enters KVM_RUN: completes the pending exit (configure:
   rax = 0, rip += 3, hypercalls++; denial: #GP injected).  Returns what was
   pending. */
FkPending fk_vcpu_complete(FkVcpu *vcpu);
/* Reset of this vCPU (the VMM's KVM_SET_REGS/SREGS): CR0/CR4 to the reset
   values, rax = rip = 0.  A pending completion stays, as KVM's
   complete_userspace_io does: the next fk_vcpu_complete (KVM_RUN) applies
   it to the reset state (rax = 0 and rip += 3 past a VMCALL that is not
   there, or a #GP into the new boot), so a VMM completes first.  Pins are
   per VM and survive. */
void fk_vcpu_reset(FkVcpu *vcpu);

/* Helpers over a kvm_run buffer (memcpy, no alignment assumptions): the one
   place on the host side that knows where exit_reason and the exit union
   sit (the FK_KVM_RUN_* offsets, asserted against <linux/kvm.h>).  The
   buffer needs FK_KVM_RUN_UNION_OFFSET + FK_HEKI_PAYLOAD_SIZE bytes. */
uint32_t fk_run_exit_reason(const struct kvm_run *run);
/* word 0 = reason, word 1 = cr_pinned / cr_value, words 2..7 = reserved. */
uint64_t fk_run_payload_word(const struct kvm_run *run, unsigned index);
void fk_run_set_exit_reason(struct kvm_run *run, uint32_t exit_reason);
/* words NULL: a zero payload. */
void fk_run_write_raw(struct kvm_run *run, uint32_t exit_reason,
                      const uint64_t words[FK_HEKI_PAYLOAD_WORDS]);
/* A Heki exit as the kernel writes it: reason, cr_pinned / cr_value, the
   reserved words zero. */
void fk_run_write_exit(struct kvm_run *run, uint32_t exit_reason, uint64_t reason,
                       uint64_t value);

#ifdef __cplusplus
}
#endif

#endif /* HEKI_KERNEL_MODEL_H */
