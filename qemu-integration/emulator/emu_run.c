/*
 * emu_run.c - KVM_RUN as the Heki-patched kernel would run it.
 *
 * The guest's `outb %al, $0xe5` reaches us as a KVM_EXIT_IO.  Its registers
 * name an operation (PROTOCOL.md); the model decides (kernel_model.c) and we
 * carry the decision back into the real vCPU:
 *   FK_OK   - in-kernel result: rax or the CR is set, back into KVM_RUN;
 *   FK_GP   - #GP(0) at the OUT, back into KVM_RUN;
 *   FK_EXIT - the model wrote a Heki exit into kvm_run: return it to the
 *             VMM; it is completed at the start of the next KVM_RUN.
 * Anything else returns to the VMM untouched.  Guest registers are hostile:
 * every value goes through the model or the real kernel's own checks.
 */
#include "emu.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>

#define X86_GP_VECTOR 13
#define EFER_LMA (1ull << 10)
#define EMU_OUT_LENGTH 2 /* e6 e5 */

typedef enum { RUN_CONTINUE, RUN_TO_VMM, RUN_ERROR } RunStep;

static int vcpu_ioctl(EmuVcpu *v, unsigned long req, void *arg, const char *what) {
    int r = emu_real_ioctl(v->fd, req, arg);
    if (r < 0) {
        int err = errno;
        emu_warn("vm=%d vcpu=%lu: %s failed: %s", v->vm->fd, v->id, what, strerror(err));
        errno = err;
    }
    return r;
}

/* Lets the real kernel complete the pending PIO (rip moves past the OUT)
   without entering the guest.  immediate_exit belongs to the VMM too: QEMU's
   kick handler sets it from a signal, so signals are held off while we own
   it and a kick that comes meanwhile lands after the restore. */
static int complete_pio(EmuVcpu *v) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    uint8_t saved = __atomic_load_n(&v->run->immediate_exit, __ATOMIC_RELAXED);
    __atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_RELAXED);
    int r = emu_real_ioctl(v->fd, KVM_RUN, NULL);
    int err = errno;
    __atomic_store_n(&v->run->immediate_exit, saved, __ATOMIC_RELAXED);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r == -1 && err == EINTR)
        return 0;
    emu_warn("vm=%d vcpu=%lu: completing the port 0x%x write returned %d (%s)", v->vm->fd, v->id,
             EMU_PORT, r, r < 0 ? strerror(err) : "an exit");
    errno = r < 0 ? err : EIO;
    return -1;
}

/* After the OUT's exit: lets the kernel finish the PIO, then learns where
   the OUT is.  KVM either exits with rip at the OUT and skips it on re-entry
   (fast PIO on VMX/SVM), or emulates the OUT and exits with rip already past
   it (the instruction emulator, as this machine's PVM does).  In the second
   case the OUT is the protocol's two bytes e6 e5 before rip. */
static int settle_pio(EmuVcpu *v, uint64_t rip_at_exit, struct kvm_regs *after) {
    if (complete_pio(v) < 0 || vcpu_ioctl(v, KVM_GET_REGS, after, "KVM_GET_REGS") < 0)
        return -1;
    if (after->rip != rip_at_exit) {
        v->out_rip = rip_at_exit;
        v->next_rip = after->rip;
    } else {
        v->out_rip = rip_at_exit - EMU_OUT_LENGTH;
        v->next_rip = rip_at_exit;
    }
    return 0;
}

/* Puts rip back at the OUT: the faulting instruction, as the kernel shows
   a refused MOV to CR (and the hypercall) during a Heki exit. */
static int rip_to_out(EmuVcpu *v, struct kvm_regs *regs) {
    if (regs->rip == v->out_rip)
        return 0;
    regs->rip = v->out_rip;
    return vcpu_ioctl(v, KVM_SET_REGS, regs, "KVM_SET_REGS");
}

/* Queues #GP(0) at the current rip, as kvm_inject_gp(vcpu, 0).  Goes after
   any KVM_SET_REGS: that drops a pending exception. */
static int queue_gp(EmuVcpu *v) {
    struct kvm_vcpu_events ev;
    if (vcpu_ioctl(v, KVM_GET_VCPU_EVENTS, &ev, "KVM_GET_VCPU_EVENTS") < 0)
        return -1;
    ev.exception.nr = X86_GP_VECTOR;
    ev.exception.has_error_code = 1;
    ev.exception.error_code = 0;
    if (ev.flags & KVM_VCPUEVENT_VALID_PAYLOAD) {
        /* KVM_CAP_EXCEPTION_PAYLOAD on (QEMU turns it on): pending, as the
           kernel queues it, so KVM delivers it through its own checks. */
        ev.exception.pending = 1;
        ev.exception.injected = 0;
        ev.exception_has_payload = 0;
        ev.exception_payload = 0;
    } else {
        /* Without the cap user space has no "pending" state. */
        ev.exception.injected = 1;
        ev.exception.pending = 0;
    }
    return vcpu_ioctl(v, KVM_SET_VCPU_EVENTS, &ev, "KVM_SET_VCPU_EVENTS");
}

static int gp_at_out(EmuVcpu *v, struct kvm_regs *regs) {
    return rip_to_out(v, regs) < 0 || queue_gp(v) < 0 ? -1 : 0;
}

/* complete_heki_configure_exit / complete_heki_denial_exit, on re-entry.
   The PIO was settled before the exit, so this is plain state: the real
   KVM_RUN that follows honours the caller's immediate_exit by itself.
   Applied to whatever state the vCPU has now, as KVM applies
   complete_userspace_io after a KVM_SET_REGS (a reset): rax = 0 and rip
   moved past an instruction's length, or a #GP.  A VMM completes first. */
static int complete_heki(EmuVcpu *v) {
    struct kvm_regs regs;
    switch (fk_vcpu_complete(v->fk)) {
    case FK_PENDING_CONFIGURE:
        emu_trace(v, "complete configure: rax=0");
        if (vcpu_ioctl(v, KVM_GET_REGS, &regs, "KVM_GET_REGS") < 0)
            return -1;
        regs.rax = fk_vcpu_rax(v->fk);
        regs.rip += v->next_rip - v->out_rip; /* kvm_skip_emulated_instruction */
        return vcpu_ioctl(v, KVM_SET_REGS, &regs, "KVM_SET_REGS");
    case FK_PENDING_DENIAL:
        emu_trace(v, "complete denial: #GP(0) at rip=%#llx", (unsigned long long)v->out_rip);
        return queue_gp(v);
    case FK_PENDING_NONE:
        break;
    }
    return 0;
}

static bool is_trigger(const struct kvm_run *run) {
    return run->exit_reason == KVM_EXIT_IO && run->io.direction == KVM_EXIT_IO_OUT &&
           run->io.port == EMU_PORT && run->io.size == 1 && run->io.count == 1;
}

/* kvm_emulate_hypercall gives a caller outside 64-bit mode a 32-bit result:
   -22 is 0xffffffea with the upper half zero, which the guest's later
   32-bit register loads may leave in place.  Asked only for such results. */
static bool in_64bit_mode(EmuVcpu *v) {
    struct kvm_sregs sregs;
    if (vcpu_ioctl(v, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS") < 0)
        return true; /* keep the model's value */
    return (sregs.efer & EFER_LMA) && sregs.cs.l;
}

static RunStep hypercall(EmuVcpu *v, struct kvm_regs *regs) {
    uint64_t nr = regs->rax, a0 = regs->rbx, a1 = regs->rcx, a2 = regs->rdx;
    FkResult res = fk_vcpu_hypercall(v->fk, nr, a0, a1, a2);
    if (res == FK_EXIT) {
        emu_trace(v, "hypercall nr=%#llx a0=%#llx a1=%#llx a2=%#llx: exit configure cr_pinned=%#llx",
                  (unsigned long long)nr, (unsigned long long)a0, (unsigned long long)a1,
                  (unsigned long long)a2, (unsigned long long)fk_run_payload_word(v->run, 1));
        struct kvm_regs after;
        return settle_pio(v, regs->rip, &after) < 0 || rip_to_out(v, &after) < 0 ? RUN_ERROR
                                                                                  : RUN_TO_VMM;
    }
    if (res != FK_OK) {
        emu_warn("vm=%d vcpu=%lu: model refused the hypercall (%d)", v->vm->fd, v->id, (int)res);
        errno = EIO;
        return RUN_ERROR;
    }
    uint64_t rax = fk_vcpu_rax(v->fk);
    if ((rax >> 32) && !in_64bit_mode(v))
        rax = (uint32_t)rax;
    emu_trace(v, "hypercall nr=%#llx a0=%#llx a1=%#llx a2=%#llx: rax=%#llx", (unsigned long long)nr,
              (unsigned long long)a0, (unsigned long long)a1, (unsigned long long)a2,
              (unsigned long long)rax);
    /* No settling needed: rip is at the OUT (the real KVM_RUN completes and
       skips it) or already past it. */
    regs->rax = rax;
    return vcpu_ioctl(v, KVM_SET_REGS, regs, "KVM_SET_REGS") < 0 ? RUN_ERROR : RUN_CONTINUE;
}

static RunStep write_cr(EmuVcpu *v, int cr, uint64_t rip_at_exit, uint64_t value) {
    /* Settled first: a refused write needs rip at the OUT, an applied one
       may change how KVM computes the linear rip it skips the OUT with. */
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    if (settle_pio(v, rip_at_exit, &regs) < 0 ||
        vcpu_ioctl(v, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS") < 0)
        return RUN_ERROR;
    fk_vcpu_set_cr_raw(v->fk, 0, sregs.cr0);
    fk_vcpu_set_cr_raw(v->fk, 4, sregs.cr4);
    FkResult res = fk_vcpu_write_cr(v->fk, cr, value);
    switch (res) {
    case FK_EXIT:
        emu_trace(v, "write cr%d=%#llx: exit denial", cr, (unsigned long long)value);
        return rip_to_out(v, &regs) < 0 ? RUN_ERROR : RUN_TO_VMM;
    case FK_GP:
        emu_trace(v, "write cr%d=%#llx: denied, #GP(0)", cr, (unsigned long long)value);
        return gp_at_out(v, &regs) < 0 ? RUN_ERROR : RUN_CONTINUE;
    case FK_OK:
        break;
    default:
        emu_warn("vm=%d vcpu=%lu: model refused the CR write (%d)", v->vm->fd, v->id, (int)res);
        errno = EIO;
        return RUN_ERROR;
    }
    uint64_t old = cr == 0 ? sregs.cr0 : sregs.cr4;
    if (cr == 0)
        sregs.cr0 = value;
    else
        sregs.cr4 = value;
    if (emu_real_ioctl(v->fd, KVM_SET_SREGS, &sregs) == 0) {
        emu_trace(v, "write cr%d=%#llx: applied", cr, (unsigned long long)value);
        return RUN_CONTINUE;
    }
    /* KVM refuses values the CPU refuses (reserved bits, PG without PE,
       features the guest lacks): a real MOV to CR would #GP. */
    int err = errno;
    fk_vcpu_set_cr_raw(v->fk, cr, old);
    emu_trace(v, "write cr%d=%#llx: invalid for KVM (%s), #GP(0)", cr, (unsigned long long)value,
              strerror(err));
    return gp_at_out(v, &regs) < 0 ? RUN_ERROR : RUN_CONTINUE;
}

static RunStep handle_trigger(EmuVcpu *v) {
    struct kvm_regs regs;
    if (vcpu_ioctl(v, KVM_GET_REGS, &regs, "KVM_GET_REGS") < 0)
        return RUN_ERROR;
    if (regs.rax < EMU_HYPERCALL_LIMIT)
        return hypercall(v, &regs);
    if (regs.rax == EMU_OP_WRITE_CR0)
        return write_cr(v, 0, regs.rip, regs.rbx);
    if (regs.rax == EMU_OP_WRITE_CR4)
        return write_cr(v, 4, regs.rip, regs.rbx);
    emu_trace(v, "op=%#llx unknown: port write left to the VMM", (unsigned long long)regs.rax);
    return RUN_TO_VMM;
}

int emu_vcpu_run(EmuVcpu *v) {
    /* The kernel completes a pending exit first, then honours
       immediate_exit: the real KVM_RUN below returns EINTR itself. */
    if (fk_vcpu_pending(v->fk) != FK_PENDING_NONE && complete_heki(v) < 0)
        return -1;
    for (;;) {
        int r = emu_real_ioctl(v->fd, KVM_RUN, NULL);
        if (r != 0 || !is_trigger(v->run))
            return r;
        switch (handle_trigger(v)) {
        case RUN_CONTINUE:
            continue;
        case RUN_TO_VMM:
            return 0;
        case RUN_ERROR:
            return -1;
        }
    }
}
