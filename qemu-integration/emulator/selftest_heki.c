/*
 * selftest_heki.c - the Heki scenarios: what a VMM and the guest see for
 * each operation of PROTOCOL.md, with caps on/off, v3 numbering, Heki off,
 * immediate_exit with a pending exit, and hostile uses of the port.
 */
#define _GNU_SOURCE
#include "selftest_vmm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "guest_syms.h"

/* ---- the Heki sequence ------------------------------------------------------- */

/* The real kernel's own answer: syscall() does not go through the
   preloaded ioctl(). */
static int kernel_ioctl(int fd, unsigned long req, void *arg, int *err) {
    long r = syscall(SYS_ioctl, fd, req, arg);
    *err = r < 0 ? errno : 0;
    return (int)r;
}

/* 235..237 outside the profile (v2: 237, v3: 235) are the real kernel's:
   through the emulator KVM_CHECK_EXTENSION and KVM_ENABLE_CAP(args[0] = 3,
   as a plugin of the other profile would send) answer what the kernel
   answers, and the model never sees them.  `what` names the VM. */
static void check_other_numbers(int vm_fd, const char *what) {
    HekiEmuVmInfo in;
    CHECK(vm_info_fn(vm_fd, &in) == 0, "%s: tracked", what);
    for (uint32_t cap = 235; cap <= 237; cap++) {
        if (cap == in.cap_configure || cap == in.cap_denial)
            continue;
        int err, kerr;
        int fds[2] = {sys_fd, vm_fd};
        for (int i = 0; i < 2; i++) {
            int emu = ioctl(fds[i], KVM_CHECK_EXTENSION, cap);
            int real = kernel_ioctl(fds[i], KVM_CHECK_EXTENSION, (void *)(uintptr_t)cap, &kerr);
            CHECK(emu == real, "%s: CHECK_EXTENSION(%u) on %s: %d, the kernel's %d", what, cap,
                  i ? "the VM" : "/dev/kvm", emu, real);
        }
        enable_cap(vm_fd, cap, 3, &err);
        struct kvm_enable_cap c = {.cap = cap, .args = {3}};
        int real = kernel_ioctl(vm_fd, KVM_ENABLE_CAP, &c, &kerr);
        CHECK(err == kerr, "%s: ENABLE_CAP(%u, 3): %s, the kernel's %s", what, cap, strerror(err),
              strerror(kerr));
        printf("  [%s] %s: cap %u is the kernel's: CHECK %d, ENABLE_CAP(3) %s\n", scenario, what, cap,
               ioctl(vm_fd, KVM_CHECK_EXTENSION, cap), real == 0 ? "0" : strerror(kerr));
    }
    HekiEmuVmInfo after;
    vm_info_fn(vm_fd, &after);
    CHECK_EQ(after.enable_cap_calls, in.enable_cap_calls, "the model saw none of those ENABLE_CAPs");
}

/* The same on a VM with an in-kernel irqchip, where upstream's
   KVM_CAP_X86_APIC_BUS_CYCLES_NS (237) can be enabled: under v2 the
   emulator lets that reach the kernel, like a patched v2 kernel on this
   base would. */
static void check_other_numbers_with_irqchip(void) {
    int vm_fd = ioctl(sys_fd, KVM_CREATE_VM, 0);
    if (vm_fd < 0)
        die("KVM_CREATE_VM");
    if (ioctl(vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
        die("KVM_CREATE_IRQCHIP");
    check_other_numbers(vm_fd, "VM with irqchip");
    close(vm_fd);
}

static void check_extension(Vm *vm, const char *which) {
    const HekiEmuVmInfo *in = &vm->info;
    CHECK_EQ(ioctl(vm->sys, KVM_CHECK_EXTENSION, in->cap_configure), 3, "CHECK_EXTENSION(configure) on /dev/kvm");
    CHECK_EQ(ioctl(vm->sys, KVM_CHECK_EXTENSION, in->cap_denial), 3, "CHECK_EXTENSION(denial) on /dev/kvm");
    CHECK_EQ(ioctl(vm->fd, KVM_CHECK_EXTENSION, in->cap_configure), 3, "CHECK_EXTENSION(configure) on the VM");
    CHECK_EQ(ioctl(vm->fd, KVM_CHECK_EXTENSION, in->cap_denial), 3, "CHECK_EXTENSION(denial) on the VM");
    CHECK_EQ(ioctl(vm->fd, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY), 1, "other caps reach the kernel");
    check_other_numbers(vm->fd, "VM");
    check_other_numbers_with_irqchip();
    (void)which;
}

/* Rejected pins: -EINVAL in rax, no exit, no pin. */
static void check_rejected_pins(Cpu *c) {
    static const struct { uint32_t cr, pin, flags; const char *what; } bad[] = {
        {0, 0, 0, "pin 0"},
        {3, FK_CR0_WP, 0, "register 3"},
        {0, FK_CR0_PE, 0, "CR0 pin without WP"},
        {0, FK_CR0_WP, 2, "unknown flags"},
        {0, FK_CR0_WP, FK_KVM_LOCK_CR_UPDATE_VERSION, "version flag with a pin"},
        {4, FK_CR4_PKE, 0, "CR4 bit that is not pinnable"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        OpResult r = guest_op(c, FK_KVM_HC_LOCK_CR_UPDATE, bad[i].cr, bad[i].pin, bad[i].flags);
        CHECK(r.eax == FK_KVM_EINVAL_NEG32, "%s: rax %#x, want -22", bad[i].what, r.eax);
        CHECK(r.ex.configure + r.ex.denial + r.ex.passthrough == 0, "%s: no exit", bad[i].what);
        struct kvm_regs regs;
        get_regs(c, &regs); /* still the result: the guest only stored eax */
        CHECK_EQ(regs.rax, FK_KVM_EINVAL_NEG32, "a 32-bit caller's result has its upper half zero");
    }
    vm_info(c->vm);
    CHECK_EQ(c->vm->info.pinned_cr0 | c->vm->info.pinned_cr4, 0, "nothing pinned by rejected pins");
}

/* The patch's payload of one Heki exit: the exit number, one reason bit,
   word 1 (cr_pinned or cr_value), zero reserved words, rip at the OUT. */
static void check_payload(const OpResult *r, uint32_t exit_number, uint32_t cr,
                          uint64_t word1, const char *kind) {
    char what[96];
    snprintf(what, sizeof what, "%s: exit number", kind);
    CHECK_EQ(r->ex.last_reason, exit_number, what);
    snprintf(what, sizeof what, "%s: payload reason", kind);
    CHECK_EQ(r->ex.payload[0], cr == 0 ? FK_HEKI_EXIT_REASON_CR0 : FK_HEKI_EXIT_REASON_CR4, what);
    snprintf(what, sizeof what, "%s: payload word 1 (cr_pinned after host "
             "masking, or the attempted cr_value)", kind);
    CHECK_EQ(r->ex.payload[1], word1, what);
    snprintf(what, sizeof what, "%s: payload reserved word", kind);
    for (int w = 2; w < 8; w++)
        CHECK_EQ(r->ex.payload[w], 0, what);
    snprintf(what, sizeof what, "%s: rip during the exit is the OUT", kind);
    CHECK_EQ(r->ex.rip_at_exit, SYM_guest_op_out, what);
}

/* A pin that the model accepts; returns the bits pinned by this call. */
uint64_t check_pin(Cpu *c, uint32_t cr, uint32_t pin, bool exits) {
    const HekiEmuVmInfo *in = &c->vm->info;
    uint64_t want = cr == 0 ? pin : (pin & in->pinnable_cr4 & in->host_cr4); /* heki_lock_cr */
    OpResult r = guest_op(c, FK_KVM_HC_LOCK_CR_UPDATE, cr, pin, 0);
    CHECK_EQ(r.eax, 0, "pin: rax after the call");
    if (exits) {
        CHECK_EQ(r.ex.configure, 1, "pin: configure exits");
        check_payload(&r, in->exit_configure, cr, want, "pin");
    } else {
        CHECK_EQ(r.ex.configure + r.ex.denial, 0, "pin without the cap: no exit");
    }
    vm_info(c->vm);
    CHECK_EQ((cr == 0 ? in->pinned_cr0 : in->pinned_cr4) & want, want, "pin: the model holds it");
    return want;
}

static void check_allowed_write(Cpu *c, int cr, uint64_t value) {
    OpResult r = guest_op(c, cr == 0 ? EMU_OP_WRITE_CR0 : EMU_OP_WRITE_CR4, (uint32_t)value, 0, 0);
    CHECK_EQ(r.ex.configure + r.ex.denial + r.ex.passthrough, 0, "allowed write: no exit");
    CHECK_EQ(r.gp, 0, "allowed write: no #GP");
    CHECK_EQ(r.eax, cr == 0 ? EMU_OP_WRITE_CR0 : EMU_OP_WRITE_CR4, "allowed write: rax unchanged");
    CHECK_EQ(sreg_cr(c, cr), value, cr == 0 ? "allowed write: CR0 applied" : "allowed write: CR4 applied");
}

/* A write that clears a pinned bit: an exit (or not), then #GP(0) at the OUT. */
static void check_denied_write(Cpu *c, int cr, uint64_t value, bool exits) {
    const HekiEmuVmInfo *in = &c->vm->info;
    uint64_t before = sreg_cr(c, cr);
    uint64_t denials0 = in->denials;
    OpResult r = guest_op(c, cr == 0 ? EMU_OP_WRITE_CR0 : EMU_OP_WRITE_CR4, (uint32_t)value, 0, 0);
    if (exits) {
        CHECK_EQ(r.ex.denial, 1, "denial: exits");
        check_payload(&r, in->exit_denial, cr, value, "denial");
    } else {
        CHECK_EQ(r.ex.configure + r.ex.denial, 0, "denial without the cap: no exit");
    }
    CHECK_EQ(r.gp, 1, "denial: #GP seen by the guest");
    CHECK_EQ(r.gp_err, 0, "denial: #GP error code");
    CHECK_EQ(r.gp_eip, SYM_guest_op_out, "denial: #GP saved eip is the OUT");
    CHECK_EQ(MB(c, MB_GP_BAD), 0, "denial: bytes at the saved eip are e6 e5");
    CHECK_EQ(sreg_cr(c, cr), before, "denial: CR unchanged");
    vm_info(c->vm);
    CHECK_EQ(in->denials, denials0 + 1, "denial: the model counted it");
}

/* The whole guest-visible sequence on one vCPU. */
static void heki_sequence(Vm *vm, Cpu *c, bool caps) {
    check_extension(vm, "");
    if (caps) {
        int err;
        enable_cap(vm->fd, vm->info.cap_configure, 4, &err);
        CHECK_EQ(err, EINVAL, "ENABLE_CAP with an unknown mask bit");
        enable_cap(vm->fd, vm->info.cap_configure, 3, &err);
        CHECK_EQ(err, 0, "ENABLE_CAP(configure, CR0|CR4)");
        enable_cap(vm->fd, vm->info.cap_denial, 3, &err);
        CHECK_EQ(err, 0, "ENABLE_CAP(denial, CR0|CR4)");
        vm_info(vm);
        CHECK_EQ(vm->info.configure_mask, 3, "configure mask in the model");
        CHECK_EQ(vm->info.denial_mask, 3, "denial mask in the model");
    }
    cpu_start(c);
    OpResult r = guest_op(c, FK_KVM_HC_LOCK_CR_UPDATE, 0, 0, FK_KVM_LOCK_CR_UPDATE_VERSION);
    CHECK_EQ(r.eax, 1, "version query");
    CHECK_EQ(r.ex.configure + r.ex.denial, 0, "version query: no exit");
    r = guest_op(c, 12, 0, 0, 0);
    CHECK_EQ(r.eax, FK_KVM_ENOSYS_NEG32, "unknown hypercall number");

    check_rejected_pins(c);
    check_pin(c, 0, FK_CR0_WP, caps);
    uint64_t cr4_pinned = check_pin(c, 4, FK_CR4_SMEP | FK_CR4_SMAP, caps);

    uint64_t cr0 = sreg_cr(c, 0), cr4 = sreg_cr(c, 4);
    check_allowed_write(c, 0, cr0 | FK_CR0_AM);
    check_allowed_write(c, 4, cr4 | FK_CR4_OSFXSR);
    cr0 |= FK_CR0_AM;
    cr4 |= FK_CR4_OSFXSR;
    check_denied_write(c, 0, cr0 & ~FK_CR0_WP, caps);
    if (CHECK(cr4_pinned != 0, "a CR4 bit is pinned (host CR4 %#llx)", (unsigned long long)vm->info.host_cr4))
        check_denied_write(c, 4, cr4 & ~cr4_pinned, caps);

    vm_info(vm);
    CHECK_EQ(vm->info.configure_exits, caps ? 2 : 0, "model: configure exits");
    CHECK_EQ(vm->info.denial_exits, caps ? 2 : 0, "model: denial exits");
    HekiEmuVcpuInfo vi;
    CHECK(vcpu_info_fn(c->fd, &vi) == 0, "vCPU tracked");
    CHECK_EQ(vi.gp_count, 2, "model: #GP injected on the vCPU");
    printf("  [%s] pins cr0=%#llx cr4=%#llx (host cr4 %#llx), configure exits %llu, denial exits %llu, "
           "denials %llu\n",
           scenario, (unsigned long long)vm->info.pinned_cr0, (unsigned long long)vm->info.pinned_cr4,
           (unsigned long long)vm->info.host_cr4, (unsigned long long)vm->info.configure_exits,
           (unsigned long long)vm->info.denial_exits, (unsigned long long)vm->info.denials);
}

void scenario_sequence(bool caps, bool payload) {
    Vm *vm = vm_new(payload);
    Cpu *c = cpu_new(vm, 0, BOOT_CR0, BOOT_CR4);
    heki_sequence(vm, c, caps);
}

void scenario_v3(void) {
    Vm *vm = vm_new(true);
    CHECK_EQ(vm->info.exit_configure, 40, "v3 configure exit");
    CHECK_EQ(vm->info.exit_denial, 41, "v3 denial exit");
    CHECK_EQ(vm->info.cap_configure, 236, "v3 configure cap");
    CHECK_EQ(vm->info.cap_denial, 237, "v3 denial cap");
    Cpu *c = cpu_new(vm, 0, BOOT_CR0, BOOT_CR4);
    heki_sequence(vm, c, true);
}

/* A kernel built without CONFIG_HEKI. */
void scenario_off(void) {
    Vm *vm = vm_new(true);
    Cpu *c = cpu_new(vm, 0, BOOT_CR0, BOOT_CR4);
    check_extension(vm, "");
    int err;
    enable_cap(vm->fd, vm->info.cap_configure, 3, &err);
    CHECK_EQ(err, EINVAL, "ENABLE_CAP(configure) without Heki");
    enable_cap(vm->fd, vm->info.cap_denial, 3, &err);
    CHECK_EQ(err, EINVAL, "ENABLE_CAP(denial) without Heki");
    cpu_start(c);
    OpResult r = guest_op(c, FK_KVM_HC_LOCK_CR_UPDATE, 0, 0, FK_KVM_LOCK_CR_UPDATE_VERSION);
    CHECK_EQ(r.eax, FK_KVM_ENOSYS_NEG32, "version query without Heki");
    r = guest_op(c, FK_KVM_HC_LOCK_CR_UPDATE, 0, FK_CR0_WP, 0);
    CHECK_EQ(r.eax, FK_KVM_ENOSYS_NEG32, "pin without Heki");
    uint64_t cr0 = sreg_cr(c, 0);
    check_allowed_write(c, 0, cr0 & ~FK_CR0_WP); /* nothing is pinned */
    vm_info(vm);
    CHECK_EQ(vm->info.pinned_cr0 | vm->info.pinned_cr4, 0, "no pin without Heki");
    CHECK_EQ(vm->info.configure_exits + vm->info.denial_exits + vm->info.denials, 0, "no exit, no denial");
}

/* The guest pins CR0.WP: KVM_RUN returns the configure exit, whose
   completion is now pending. */
static void run_to_pending_pin(Vm *vm, Cpu *c) {
    MB(c, MB_CMD) = CMD_OP;
    MB(c, MB_RAX) = FK_KVM_HC_LOCK_CR_UPDATE;
    MB(c, MB_RBX) = 0;
    MB(c, MB_RCX) = FK_CR0_WP;
    MB(c, MB_RDX) = 0;
    CHECK(ioctl(c->fd, KVM_RUN, 0) == 0, "run to the pin");
    CHECK_EQ(c->run->exit_reason, vm->info.exit_configure, "configure exit");
}

/* A VMM that stops a vCPU right after a Heki exit: KVM_RUN with
   immediate_exit completes it and returns EINTR; the state is consistent. */
void scenario_immediate(void) {
    Vm *vm = vm_new(true);
    Cpu *c = cpu_new(vm, 0, BOOT_CR0, BOOT_CR4);
    int err;
    enable_cap(vm->fd, vm->info.cap_configure, 3, &err);
    enable_cap(vm->fd, vm->info.cap_denial, 3, &err);
    cpu_start(c);

    /* A pending configure exit. */
    run_to_pending_pin(vm, c);
    c->run->immediate_exit = 1;
    int rc = ioctl(c->fd, KVM_RUN, 0);
    CHECK(rc == -1 && errno == EINTR, "immediate_exit with a pending configure: EINTR (rc %d)", rc);
    c->run->immediate_exit = 0;
    struct kvm_regs regs;
    get_regs(c, &regs);
    CHECK_EQ(regs.rax, 0, "configure completed: rax");
    CHECK_EQ(regs.rip, SYM_guest_op_out + 2, "configure completed: rip past the OUT");
    Exits ex = {0};
    run_until_ready(c, &ex);
    CHECK_EQ(MB(c, MB_RES_EAX), 0, "guest sees rax 0");
    CHECK_EQ(ex.configure + ex.denial, 0, "no second exit");

    /* A pending denial. */
    uint32_t gp0 = MB(c, MB_GP_COUNT);
    MB(c, MB_CMD) = CMD_OP;
    MB(c, MB_RAX) = EMU_OP_WRITE_CR0;
    MB(c, MB_RBX) = (uint32_t)(sreg_cr(c, 0) & ~FK_CR0_WP);
    CHECK(ioctl(c->fd, KVM_RUN, 0) == 0, "run to the denied write");
    CHECK_EQ(c->run->exit_reason, vm->info.exit_denial, "denial exit");
    c->run->immediate_exit = 1;
    rc = ioctl(c->fd, KVM_RUN, 0);
    CHECK(rc == -1 && errno == EINTR, "immediate_exit with a pending denial: EINTR (rc %d)", rc);
    c->run->immediate_exit = 0;
    get_regs(c, &regs);
    CHECK_EQ(regs.rip, SYM_guest_op_out, "denial completed: rip at the OUT");
    struct kvm_vcpu_events evs;
    if (ioctl(c->fd, KVM_GET_VCPU_EVENTS, &evs) < 0)
        die("KVM_GET_VCPU_EVENTS");
    CHECK((evs.exception.injected || evs.exception.pending) && evs.exception.nr == 13 &&
              evs.exception.has_error_code && evs.exception.error_code == 0,
          "denial completed: #GP(0) queued (injected %u pending %u nr %u err %u)",
          evs.exception.injected, evs.exception.pending, evs.exception.nr, evs.exception.error_code);
    CHECK_EQ(MB(c, MB_GP_COUNT), gp0, "the guest has not run yet");
    /* Nothing must be completed twice. */
    c->run->immediate_exit = 1;
    rc = ioctl(c->fd, KVM_RUN, 0);
    CHECK(rc == -1 && errno == EINTR, "a second immediate_exit: EINTR");
    c->run->immediate_exit = 0;
    memset(&ex, 0, sizeof ex);
    run_until_ready(c, &ex);
    CHECK_EQ(MB(c, MB_GP_COUNT), gp0 + 1, "#GP delivered once on the next run");
    CHECK_EQ(MB(c, MB_GP_ERR), 0, "#GP error code");
    CHECK_EQ(MB(c, MB_GP_EIP), SYM_guest_op_out, "#GP saved eip");
    vm_info(vm);
    CHECK_EQ(vm->info.denial_exits, 1, "model: one denial exit");
}

/* A VMM that resets a vCPU (KVM_SET_REGS) during a Heki exit, without
   completing it first: as KVM keeps complete_userspace_io armed, the next
   KVM_RUN applies the completion to the new state (the kernel model's
   fk_vcpu_reset keeps it too).  Why a VMM completes before a reset. */
void scenario_reset_pending(void) {
    Vm *vm = vm_new(true);
    Cpu *c = cpu_new(vm, 0, BOOT_CR0, BOOT_CR4);
    int err;
    enable_cap(vm->fd, vm->info.cap_configure, 3, &err);
    cpu_start(c);
    run_to_pending_pin(vm, c);
    struct kvm_regs regs;
    get_regs(c, &regs);
    uint64_t moved = SYM_guest_op_out + 0x40;
    regs.rip = moved; /* the VMM's reset state */
    regs.rax = 0x1234;
    if (ioctl(c->fd, KVM_SET_REGS, &regs) < 0)
        die("KVM_SET_REGS");
    c->run->immediate_exit = 1;
    int rc = ioctl(c->fd, KVM_RUN, 0);
    CHECK(rc == -1 && errno == EINTR, "immediate_exit after the reset: EINTR (rc %d)", rc);
    c->run->immediate_exit = 0;
    get_regs(c, &regs);
    CHECK_EQ(regs.rax, 0, "the armed completion wrote rax over the reset state");
    CHECK_EQ(regs.rip, moved + 2, "and moved rip past an OUT that is not there");
}

/* Hostile or foreign uses of the port, and fd bookkeeping. */
void scenario_hostile(void) {
    Vm *vm = vm_new(true);
    Cpu *c = cpu_new(vm, 0, BOOT_CR0, BOOT_CR4);
    cpu_start(c);

    OpResult r = guest_cmd(c, CMD_IN, FK_KVM_HC_LOCK_CR_UPDATE, 0, FK_CR0_WP, 0, 0);
    CHECK(r.ex.passthrough == 1 && r.ex.io.io.direction == KVM_EXIT_IO_IN, "IN on 0xe5 left to the VMM");
    r = guest_cmd(c, CMD_OUTW, FK_KVM_HC_LOCK_CR_UPDATE, 0, FK_CR0_WP, 0, 0);
    CHECK(r.ex.passthrough == 1 && r.ex.io.io.size == 2, "outw on 0xe5 left to the VMM");
    r = guest_op(c, 0x105, 0, 0, 0);
    CHECK(r.ex.passthrough == 1 && r.eax == 0x105, "unknown operation left to the VMM, rax kept");
    r = guest_op(c, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff);
    CHECK(r.ex.passthrough == 1, "operation 0xffffffff left to the VMM");
    r = guest_op(c, FK_KVM_HC_LOCK_CR_UPDATE, 0xffffffff, 0xffffffff, 0);
    CHECK_EQ(r.eax, FK_KVM_EINVAL_NEG32, "pin of register 0xffffffff");
    r = guest_op(c, FK_KVM_HC_LOCK_CR_UPDATE, 4, 0xffffffff, 0);
    CHECK_EQ(r.eax, FK_KVM_EINVAL_NEG32, "CR4 pin of every bit");
    vm_info(vm);
    CHECK_EQ(vm->info.pinned_cr0 | vm->info.pinned_cr4, 0, "still nothing pinned");

    /* Values the CPU refuses: not pinned, but KVM says no -> #GP, CR kept. */
    uint64_t cr0 = sreg_cr(c, 0), cr4 = sreg_cr(c, 4);
    r = guest_op(c, EMU_OP_WRITE_CR0, FK_CR0_PG | FK_CR0_ET, 0, 0); /* PG without PE */
    CHECK(r.gp == 1 && r.gp_err == 0 && r.gp_eip == SYM_guest_op_out, "CR0 PG without PE: #GP(0) at the OUT");
    CHECK_EQ(sreg_cr(c, 0), cr0, "CR0 kept");
    r = guest_op(c, EMU_OP_WRITE_CR4, 0xffffffff, 0, 0);
    CHECK(r.gp == 1 && r.gp_err == 0, "CR4 with reserved bits: #GP(0)");
    CHECK_EQ(sreg_cr(c, 4), cr4, "CR4 kept");
    CHECK_EQ(MB(c, MB_GP_BAD), 0, "every #GP at the OUT");

    /* fd reuse: a new VM on a closed VM's fd number starts clean. */
    check_pin(c, 0, FK_CR0_WP, false);
    int old_vm = vm->fd, old_cpu = c->fd;
    close(c->fd);
    CHECK(vcpu_info_fn(old_cpu, &(HekiEmuVcpuInfo){0}) == -1, "closed vCPU fd forgotten");
    close(vm->fd);
    CHECK(vm_info_fn(old_vm, &(HekiEmuVmInfo){0}) == -1, "closed VM fd forgotten");
    Vm *vm2 = vm_new(true);
    CHECK_EQ(vm2->fd, old_vm, "the kernel reused the VM fd number");
    CHECK_EQ(vm2->info.pinned_cr0, 0, "the new VM has no pins");
    Cpu *c2 = cpu_new(vm2, 0, BOOT_CR0, BOOT_CR4);
    CHECK_EQ(c2->fd, old_cpu, "the kernel reused the vCPU fd number");
    cpu_start(c2);
    uint64_t cr0b = sreg_cr(c2, 0);
    check_allowed_write(c2, 0, cr0b & ~FK_CR0_WP); /* the old VM's pin is not here */
    /* dup2 over a tracked fd forgets it. */
    int spare = open("/dev/null", O_RDONLY);
    Vm *vm3 = vm_new(true);
    dup2(spare, vm3->fd);
    CHECK(vm_info_fn(vm3->fd, &(HekiEmuVmInfo){0}) == -1, "dup2 over a VM fd forgets it");
    close(spare);
}

