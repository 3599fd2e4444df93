/*
 * emu.h - internals shared by the files of libheki-kvm-emu.so.
 *
 * The emulator plays the Heki-patched kernel in front of the real /dev/kvm
 * (see ../PROTOCOL.md).  The kernel's rules live in the shared model
 * (Sources/HekiKernelModel/kernel_model.c); these files only move state between the
 * real KVM vCPU and the model.
 */
#ifndef HEKI_EMU_H
#define HEKI_EMU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <linux/kvm.h>

#include "emu_protocol.h"
#include "heki_kernel_model.h"


/* ---- configuration (emu_config.c), read once by the constructor ------- */
typedef struct {
    FkProfile profile;
    bool heki_built;   /* HEKI_EMU_HEKI */
    uint64_t host_cr0, host_cr4;
    const char *trace_path; /* HEKI_EMU_TRACE or NULL */
} EmuConfig;

extern EmuConfig emu_config;
/* Parses the environment; on a bad value prints why and aborts. */
void emu_config_load(void);

/* ---- tracked objects ---------------------------------------------------- */
typedef struct EmuVcpu EmuVcpu;

typedef struct EmuVm {
    int fd;           /* the VM fd while open, else -1 */
    FkVm *fk;
    size_t run_size;  /* KVM_GET_VCPU_MMAP_SIZE */
    int refs;         /* the VM fd + open vCPU fds (as the kernel's kvm refs) */
    EmuVcpu *vcpus;   /* every vCPU ever created: KVM never destroys one alone */
} EmuVm;

struct EmuVcpu {
    EmuVcpu *next;
    EmuVm *vm;
    int fd;                /* while open, else -1 */
    unsigned long id;      /* KVM_CREATE_VCPU argument */
    FkVcpu *fk;
    struct kvm_run *run;   /* our MAP_SHARED view of the VMM's kvm_run page */
    size_t run_size;
    uint64_t out_rip;      /* the OUT being handled (or of the pending exit) */
    uint64_t next_rip;     /* the instruction after it */
};

/* ---- fd table (emu_fdtable.c): lock-free lookup, writers hold emu_lock -- */
typedef enum { EMU_FD_NONE = 0, EMU_FD_SYSTEM, EMU_FD_VM, EMU_FD_VCPU } EmuFdKind;

EmuFdKind emu_fd_lookup(int fd, void **obj);
/* Writers: emu_lock held.  obj NULL for EMU_FD_SYSTEM. */
bool emu_fd_set(int fd, EmuFdKind kind, void *obj);
void emu_fd_clear(int fd);

void emu_lock(void);
void emu_unlock(void);

/* ---- the real libc calls (heki_kvm_emu.c) ------------------------------ */
int emu_real_ioctl(int fd, unsigned long req, void *arg);

/* ---- KVM_RUN (emu_run.c) ------------------------------------------------ */
int emu_vcpu_run(EmuVcpu *v);

/* ---- trace (emu_trace.c) ------------------------------------------------ */
void emu_trace_open(const char *path);
bool emu_trace_on(void);
void emu_trace(const EmuVcpu *v, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* A message to stderr (rate is the caller's business: setup errors only). */
void emu_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif /* HEKI_EMU_H */
