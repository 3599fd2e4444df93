/*
 * heki_kvm_emu.c - the LD_PRELOAD face of the emulator: interposes ioctl()
 * (and close/dup2/dup3 to forget fds), tracks /dev/kvm, VM and vCPU fds, and
 * answers the Heki capabilities from the model.  KVM_RUN is in emu_run.c.
 */
#define _GNU_SOURCE
#include "emu.h"
#include "heki_kvm_emu.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
#define KVM_MISC_MAJOR 10
#define KVM_MISC_MINOR 232 /* /dev/kvm */

static int (*real_ioctl)(int, unsigned long, ...);
static int (*real_close)(int);
static int (*real_dup2)(int, int);
static int (*real_dup3)(int, int, int);
static FkVm *system_vm; /* answers KVM_CHECK_EXTENSION on /dev/kvm */

static void *next_symbol(const char *name) {
    void *p = dlsym(RTLD_NEXT, name);
    if (!p) {
        fprintf(stderr, "heki-kvm-emu: dlsym(RTLD_NEXT, %s): %s\n", name, dlerror());
        abort();
    }
    return p;
}

static void resolve(void) {
    real_ioctl = next_symbol("ioctl");
    real_close = next_symbol("close");
    real_dup2 = next_symbol("dup2");
    real_dup3 = next_symbol("dup3");
}

__attribute__((constructor)) static void emu_init(void) {
    if (!real_ioctl)
        resolve();
    emu_config_load();
    emu_trace_open(emu_config.trace_path);
    system_vm = fk_vm_new(&emu_config.profile, emu_config.host_cr0, emu_config.host_cr4);
    if (!system_vm)
        abort();
    /* A child forked while another thread held the lock must not inherit
       it held (QEMU forks helpers, which then close fds). */
    pthread_atfork(emu_lock, emu_unlock, emu_unlock);
}

int emu_real_ioctl(int fd, unsigned long req, void *arg) { return real_ioctl(fd, req, arg); }

/* ---- object lifetimes (emu_lock held) ---------------------------------- */

/* A VM lives while its fd or one of its vCPU fds is open, as in KVM (a vCPU
   is only destroyed with its VM, so its FkVcpu stays until then). */
static void vm_unref(EmuVm *vm) {
    if (--vm->refs > 0)
        return;
    for (EmuVcpu *v = vm->vcpus, *next; v; v = next) {
        next = v->next;
        munmap(v->run, v->run_size);
        fk_vcpu_free(v->fk);
        free(v);
    }
    fk_vm_free(vm->fk);
    free(vm);
}

static void forget_fd(int fd) {
    void *obj = NULL;
    EmuFdKind kind = emu_fd_lookup(fd, &obj);
    if (kind == EMU_FD_NONE)
        return;
    emu_fd_clear(fd);
    if (kind == EMU_FD_VM) {
        EmuVm *vm = obj;
        vm->fd = -1;
        vm_unref(vm);
    } else if (kind == EMU_FD_VCPU) {
        EmuVcpu *v = obj;
        v->fd = -1;
        vm_unref(v->vm);
    }
}

static bool is_dev_kvm(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) && major(st.st_rdev) == KVM_MISC_MAJOR &&
           minor(st.st_rdev) == KVM_MISC_MINOR;
}

/* KVM_CREATE_VM succeeded on sys_fd: the VM gets its model. */
static int track_vm(int sys_fd, int vm_fd) {
    int size = real_ioctl(sys_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    EmuVm *vm = calloc(1, sizeof *vm);
    FkVm *fk = fk_vm_new(&emu_config.profile, emu_config.host_cr0, emu_config.host_cr4);
    if (size <= 0 || !vm || !fk) {
        emu_warn("cannot track the new VM (mmap size %d): refusing it", size);
        free(vm);
        fk_vm_free(fk);
        real_close(vm_fd);
        errno = ENOMEM;
        return -1;
    }
    fk_vm_set_heki_built(fk, emu_config.heki_built);
    vm->fd = vm_fd;
    vm->fk = fk;
    vm->run_size = (size_t)size;
    vm->refs = 1;
    emu_lock();
    forget_fd(vm_fd); /* closed behind our back (close_range, exit of a dup) */
    void *unused;
    if (emu_fd_lookup(sys_fd, &unused) == EMU_FD_NONE)
        emu_fd_set(sys_fd, EMU_FD_SYSTEM, NULL);
    bool ok = emu_fd_set(vm_fd, EMU_FD_VM, vm);
    if (!ok)
        vm_unref(vm);
    emu_unlock();
    if (!ok) {
        emu_warn("fd %d out of the emulator's table: refusing the VM", vm_fd);
        real_close(vm_fd);
        errno = EMFILE;
        return -1;
    }
    return vm_fd;
}

/* KVM_CREATE_VCPU succeeded: map its kvm_run (the VMM's page, shared) and
   give it a model vCPU.  Failing loudly beats a vCPU without Heki. */
static int track_vcpu(EmuVm *vm, int vcpu_fd, unsigned long id) {
    void *run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_fd, 0);
    EmuVcpu *v = calloc(1, sizeof *v);
    if (run == MAP_FAILED || !v) {
        emu_warn("vm=%d: cannot map vCPU %lu's kvm_run: refusing it", vm->fd, id);
        if (run != MAP_FAILED)
            munmap(run, vm->run_size);
        free(v);
        real_close(vcpu_fd);
        errno = ENOMEM;
        return -1;
    }
    emu_lock();
    forget_fd(vcpu_fd);
    v->fk = fk_vcpu_new(vm->fk, run);
    bool ok = v->fk && emu_fd_set(vcpu_fd, EMU_FD_VCPU, v);
    if (ok) {
        v->vm = vm;
        v->fd = vcpu_fd;
        v->id = id;
        v->run = run;
        v->run_size = vm->run_size;
        v->next = vm->vcpus;
        vm->vcpus = v;
        vm->refs++;
    } else {
        fk_vcpu_free(v->fk);
    }
    emu_unlock();
    if (!ok) {
        emu_warn("vm=%d: no model vCPU for vCPU %lu (at most %d): refusing it", vm->fd, id,
                 FK_MAX_VCPUS);
        munmap(run, vm->run_size);
        free(v);
        real_close(vcpu_fd);
        errno = ENOSPC;
        return -1;
    }
    return vcpu_fd;
}

/* Only the profile's two caps are the emulated patch's.  Every other number,
   235..237 included (v2: 237, v3: 235), is the real kernel's to answer, as
   the rest of a patched kernel would be. */
static bool is_heki_cap(uint64_t cap) {
    return cap == emu_config.profile.cap_configure || cap == emu_config.profile.cap_denial;
}

/* ---- interposed libc calls --------------------------------------------- */

EXPORT int ioctl(int fd, unsigned long req, ...) {
    va_list ap;
    va_start(ap, req);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (!real_ioctl)
        resolve();

    void *obj = NULL;
    EmuFdKind kind = emu_fd_lookup(fd, &obj);
    if (kind == EMU_FD_VCPU && req == KVM_RUN)
        return emu_vcpu_run(obj);
    if (_IOC_TYPE(req) != KVMIO)
        return real_ioctl(fd, req, arg);

    switch (req) {
    case KVM_CHECK_EXTENSION:
        /* The patch answers on /dev/kvm and VM fds, built with Heki or not. */
        if (is_heki_cap((uintptr_t)arg) &&
            (kind == EMU_FD_SYSTEM || kind == EMU_FD_VM || (kind == EMU_FD_NONE && is_dev_kvm(fd))))
            return fk_check_extension(system_vm, (uint32_t)(uintptr_t)arg);
        break;
    case KVM_CREATE_VM: {
        int vm_fd = real_ioctl(fd, req, arg);
        return vm_fd < 0 ? vm_fd : track_vm(fd, vm_fd);
    }
    case KVM_CREATE_VCPU:
        if (kind == EMU_FD_VM) {
            int vcpu_fd = real_ioctl(fd, req, arg);
            return vcpu_fd < 0 ? vcpu_fd : track_vcpu(obj, vcpu_fd, (unsigned long)(uintptr_t)arg);
        }
        break;
    case KVM_ENABLE_CAP:
        if (kind == EMU_FD_VM && arg) {
            const struct kvm_enable_cap *cap = arg;
            if (is_heki_cap(cap->cap)) { /* never reaches the real kernel */
                int r = fk_enable_cap(((EmuVm *)obj)->fk, cap->cap, cap->args[0]);
                if (r < 0) {
                    errno = -r;
                    return -1;
                }
                return 0;
            }
        }
        break;
    }
    return real_ioctl(fd, req, arg);
}

EXPORT int close(int fd) {
    if (!real_close)
        resolve();
    void *obj;
    if (emu_fd_lookup(fd, &obj) != EMU_FD_NONE) {
        emu_lock(); /* cleared before the real close: the number may be reused */
        forget_fd(fd);
        emu_unlock();
    }
    return real_close(fd);
}

EXPORT int dup2(int oldfd, int newfd) {
    if (!real_dup2)
        resolve();
    void *obj;
    if (oldfd != newfd && emu_fd_lookup(newfd, &obj) != EMU_FD_NONE) {
        emu_lock(); /* dup2 closes newfd silently */
        forget_fd(newfd);
        emu_unlock();
    }
    return real_dup2(oldfd, newfd);
}

EXPORT int dup3(int oldfd, int newfd, int flags) {
    if (!real_dup3)
        resolve();
    void *obj;
    if (oldfd != newfd && emu_fd_lookup(newfd, &obj) != EMU_FD_NONE) {
        emu_lock();
        forget_fd(newfd);
        emu_unlock();
    }
    return real_dup3(oldfd, newfd, flags);
}

/* ---- the test view ------------------------------------------------------ */

EXPORT int heki_emu_vm_info(int vm_fd, HekiEmuVmInfo *out) {
    int r = -1;
    emu_lock();
    void *obj;
    if (emu_fd_lookup(vm_fd, &obj) == EMU_FD_VM) {
        const FkVm *fk = ((EmuVm *)obj)->fk;
        FkProfile p = fk_vm_profile(fk);
        *out = (HekiEmuVmInfo){
            .exit_configure = p.exit_configure, .exit_denial = p.exit_denial,
            .cap_configure = p.cap_configure, .cap_denial = p.cap_denial,
            .pinnable_cr4 = p.pinnable_cr4,
            .host_cr0 = fk_vm_host_cr(fk, 0), .host_cr4 = fk_vm_host_cr(fk, 4),
            .heki_built = fk_vm_heki_built(fk),
            .configure_mask = fk_vm_configure_mask(fk), .denial_mask = fk_vm_denial_mask(fk),
            .pinned_cr0 = fk_vm_pinned(fk, 0), .pinned_cr4 = fk_vm_pinned(fk, 4),
            .configure_exits = fk_vm_configure_exits(fk), .denial_exits = fk_vm_denial_exits(fk),
            .denials = fk_vm_denials(fk), .enable_cap_calls = fk_vm_enable_cap_calls_total(fk),
        };
        r = 0;
    }
    emu_unlock();
    return r;
}

EXPORT int heki_emu_vcpu_info(int vcpu_fd, HekiEmuVcpuInfo *out) {
    int r = -1;
    emu_lock();
    void *obj;
    if (emu_fd_lookup(vcpu_fd, &obj) == EMU_FD_VCPU) {
        const FkVcpu *fk = ((EmuVcpu *)obj)->fk;
        out->gp_count = fk_vcpu_gp_count(fk);
        out->hypercalls = fk_vcpu_hypercalls(fk);
        r = 0;
    }
    emu_unlock();
    return r;
}
