/*
 * heki_kvm_emu.h - what libheki-kvm-emu.so exports besides the interposed
 * libc calls (ioctl, close, dup2, dup3): a read-only view of the model, for
 * tests.  Look the functions up with dlsym(RTLD_DEFAULT, ...): they exist
 * only when the library is preloaded.
 */
#ifndef HEKI_KVM_EMU_H
#define HEKI_KVM_EMU_H

#include <stdint.h>

typedef struct HekiEmuVmInfo {
    uint32_t exit_configure, exit_denial; /* the profile's numbers */
    uint32_t cap_configure, cap_denial;
    uint64_t pinnable_cr4;
    uint64_t host_cr0, host_cr4;          /* what pins are checked/masked with */
    int heki_built;                       /* HEKI_EMU_HEKI */
    uint64_t configure_mask, denial_mask; /* enabled caps */
    uint64_t pinned_cr0, pinned_cr4;
    uint64_t configure_exits, denial_exits, denials; /* fk_vm_* counters */
    uint64_t enable_cap_calls;            /* KVM_ENABLE_CAPs the model answered */
} HekiEmuVmInfo;

typedef struct HekiEmuVcpuInfo {
    uint64_t gp_count;   /* #GP(0) the model injected (denials) */
    uint64_t hypercalls; /* completed hypercalls */
} HekiEmuVcpuInfo;

/* 0, or -1 when fd is not a VM (vCPU) fd the emulator tracks. */
int heki_emu_vm_info(int vm_fd, HekiEmuVmInfo *out);
int heki_emu_vcpu_info(int vcpu_fd, HekiEmuVcpuInfo *out);

typedef int (*heki_emu_vm_info_fn)(int, HekiEmuVmInfo *);
typedef int (*heki_emu_vcpu_info_fn)(int, HekiEmuVcpuInfo *);

#endif /* HEKI_KVM_EMU_H */
