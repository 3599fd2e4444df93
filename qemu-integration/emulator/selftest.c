/*
 * selftest.c - proves libheki-kvm-emu.so on the real /dev/kvm, without QEMU.
 *
 * A minimal VMM: 32-bit protected-mode guests (selftest_guest.S) asking for
 * Heki operations with `outb %al,$0xe5`, and assertions on what a VMM sees
 * (exits and their payload, KVM_EXIT_IO left alone) and on what the guest
 * sees (rax, #GP with error code 0 at the OUT, CR values via KVM_GET_SREGS).
 *
 * Run with the emulator preloaded (`make check` does it).  Without arguments
 * it runs every scenario in a child process of its own (re-exec with the
 * scenario's environment, which the emulator reads at start) and exits
 * non-zero if one failed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "guest_syms.h"
#include "heki_kvm_emu.h"
#include "selftest.h"

extern const uint8_t guest_blob[], guest_blob_end[];

#define CR0_PE (1u << 0)
#define CR0_ET (1u << 4)
#define CR0_NE (1u << 5)
#define CR0_WP (1u << 16)
#define CR0_AM (1u << 18)
#define CR0_PG (1u << 31)
#define CR4_OSFXSR (1u << 9)
#define CR4_SMEP (1u << 20)
#define CR4_SMAP (1u << 21)
#define CR4_PKE (1u << 22)
#define HC_LOCK_CR 13
#define LOCK_CR_VERSION 1
#define OP_CR0 0x100
#define OP_CR4 0x104
#define RAX_EINVAL 0xffffffeaU /* -22 as the 32-bit guest reads it */
#define RAX_ENOSYS 0xfffffc18U /* -1000 */
#define REASON_CR0 1
#define REASON_CR4 2

/* ---- checks ---------------------------------------------------------------- */

static const char *scenario = "driver";
static int checks, failures;

static bool check(bool ok, int line, const char *fmt, ...) {
    checks++;
    if (!ok) {
        failures++;
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "FAIL [%s] selftest.c:%d: ", scenario, line);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
    }
    return ok;
}
#define CHECK(cond, ...) check((cond), __LINE__, __VA_ARGS__)
#define CHECK_EQ(a, b, what)                                                             \
    check((uint64_t)(a) == (uint64_t)(b), __LINE__, "%s: got %#llx, want %#llx", what,    \
          (unsigned long long)(a), (unsigned long long)(b))

static void die(const char *what) {
    fprintf(stderr, "FATAL [%s] %s: %s\n", scenario, what, strerror(errno));
    exit(2);
}

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static heki_emu_vm_info_fn vm_info_fn;
static heki_emu_vcpu_info_fn vcpu_info_fn;

/* ---- a minimal VMM ---------------------------------------------------------- */

typedef struct {
    int sys, fd;
    uint8_t *mem;
    struct kvm_cpuid2 *cpuid;
    HekiEmuVmInfo info; /* refreshed by vm_info() */
} Vm;

typedef struct {
    Vm *vm;
    int fd, idx;
    struct kvm_run *run;
    volatile uint32_t *mb;
} Cpu;

/* What a run until the guest's next PORT_READY saw. */
typedef struct {
    unsigned configure, denial, plain, eintr;
    unsigned passthrough;                /* KVM_EXIT_IO on 0xe5 left to us */
    struct kvm_run io;                   /* the last passed-through exit */
    uint32_t last_reason;                /* exit_reason of the last Heki exit */
    uint64_t payload[8];                 /* its payload words */
    uint64_t rip_at_exit;                /* KVM_GET_REGS during it */
    bool halted, bad;
} Exits;

static int sys_fd;

static void vm_info(Vm *vm) {
    if (vm_info_fn(vm->fd, &vm->info) != 0) {
        fprintf(stderr, "FATAL [%s] the emulator does not track VM fd %d\n", scenario, vm->fd);
        exit(2);
    }
}

static void enable_cap(int fd, uint32_t cap, uint64_t arg0, int *err) {
    struct kvm_enable_cap c = {.cap = cap, .args = {arg0}};
    *err = ioctl(fd, KVM_ENABLE_CAP, &c) == 0 ? 0 : errno;
}

static Vm *vm_new(bool exception_payload) {
    Vm *vm = calloc(1, sizeof *vm);
    vm->sys = sys_fd;
    vm->fd = ioctl(sys_fd, KVM_CREATE_VM, 0);
    if (vm->fd < 0)
        die("KVM_CREATE_VM");
    if (ioctl(vm->fd, KVM_SET_TSS_ADDR, 0xfffbd000) < 0)
        die("KVM_SET_TSS_ADDR");
    if (exception_payload) { /* as QEMU does */
        int err;
        enable_cap(vm->fd, KVM_CAP_EXCEPTION_PAYLOAD, 1, &err);
        if (err) {
            errno = err;
            die("KVM_CAP_EXCEPTION_PAYLOAD");
        }
    }
    vm->mem = mmap(NULL, GUEST_MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (vm->mem == MAP_FAILED)
        die("mmap guest memory");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = GUEST_MEM_SIZE,
        .userspace_addr = (uintptr_t)vm->mem};
    if (ioctl(vm->fd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        die("KVM_SET_USER_MEMORY_REGION");
    memcpy(vm->mem + GUEST_CODE, guest_blob, (size_t)(guest_blob_end - guest_blob));
    uint64_t gdt[3] = {0, 0x00cf9a000000ffffull, 0x00cf92000000ffffull};
    memcpy(vm->mem + GUEST_GDT, gdt, sizeof gdt);
    for (uint32_t vec = 0; vec < 32; vec++) {
        uint32_t handler = vec == 13 ? SYM_guest_gp_handler : SYM_guest_bad_stubs + vec * BAD_STUB_SIZE;
        uint64_t gate = (handler & 0xffffull) | ((uint64_t)SEL_CODE << 16) | (0x8eull << 40) |
                        ((uint64_t)(handler >> 16) << 48); /* 32-bit interrupt gate */
        memcpy(vm->mem + GUEST_IDT + 8 * vec, &gate, 8);
    }
    int n = 256;
    vm->cpuid = calloc(1, sizeof *vm->cpuid + n * sizeof(struct kvm_cpuid_entry2));
    vm->cpuid->nent = n;
    if (ioctl(sys_fd, KVM_GET_SUPPORTED_CPUID, vm->cpuid) < 0)
        die("KVM_GET_SUPPORTED_CPUID");
    vm_info(vm);
    return vm;
}

static void seg(struct kvm_segment *s, uint16_t sel, uint8_t type) {
    *s = (struct kvm_segment){.base = 0, .limit = 0xffffffff, .selector = sel, .type = type,
                              .present = 1, .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1};
}

static Cpu *cpu_new(Vm *vm, int idx, uint32_t cr0, uint32_t cr4) {
    Cpu *c = calloc(1, sizeof *c);
    c->vm = vm;
    c->idx = idx;
    c->fd = ioctl(vm->fd, KVM_CREATE_VCPU, idx);
    if (c->fd < 0)
        die("KVM_CREATE_VCPU");
    int size = ioctl(sys_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    c->run = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
    if (c->run == MAP_FAILED)
        die("mmap kvm_run");
    if (ioctl(c->fd, KVM_SET_CPUID2, vm->cpuid) < 0)
        die("KVM_SET_CPUID2");
    struct kvm_sregs s;
    if (ioctl(c->fd, KVM_GET_SREGS, &s) < 0)
        die("KVM_GET_SREGS");
    seg(&s.cs, SEL_CODE, 0xb);
    seg(&s.ds, SEL_DATA, 0x3);
    s.es = s.fs = s.gs = s.ss = s.ds;
    s.gdt.base = GUEST_GDT;
    s.gdt.limit = 3 * 8 - 1;
    s.idt.base = GUEST_IDT;
    s.idt.limit = 32 * 8 - 1;
    s.cr0 = cr0;
    s.cr4 = cr4;
    s.efer = 0;
    if (ioctl(c->fd, KVM_SET_SREGS, &s) < 0)
        die("KVM_SET_SREGS (initial)");
    c->mb = (volatile uint32_t *)(vm->mem + GUEST_MAILBOX + idx * MB_STRIDE);
    struct kvm_regs r = {.rip = GUEST_CODE, .rflags = 2,
                         .rsp = GUEST_STACK_TOP + (idx + 1) * 0x1000,
                         .rbp = GUEST_MAILBOX + idx * MB_STRIDE};
    if (ioctl(c->fd, KVM_SET_REGS, &r) < 0)
        die("KVM_SET_REGS (initial)");
    return c;
}

#define MB(c, off) ((c)->mb[(off) / 4])

static uint64_t sreg_cr(Cpu *c, int cr) {
    struct kvm_sregs s;
    if (ioctl(c->fd, KVM_GET_SREGS, &s) < 0)
        die("KVM_GET_SREGS");
    return cr == 0 ? s.cr0 : s.cr4;
}

static void get_regs(Cpu *c, struct kvm_regs *r) {
    if (ioctl(c->fd, KVM_GET_REGS, r) < 0)
        die("KVM_GET_REGS");
}

/* Runs until the guest waits at PORT_READY (0), halts (1) or fails (-1). */
static int run_until_ready(Cpu *c, Exits *ex) {
    const HekiEmuVmInfo *info = &c->vm->info;
    for (;;) {
        if (ioctl(c->fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR) {
                ex->eintr++;
                continue;
            }
            die("KVM_RUN");
        }
        struct kvm_run *run = c->run;
        uint32_t reason = run->exit_reason;
        if (reason == KVM_EXIT_IO) {
            uint16_t port = run->io.port;
            if (port == PORT_READY)
                return 0;
            if (port == PORT_PLAIN) {
                ex->plain++;
                continue;
            }
            if (port == PORT_HEKI) {
                ex->passthrough++;
                ex->io = *run;
                continue;
            }
            if (port == PORT_BAD) {
                CHECK(false, "cpu %d: guest exception %u (gp bad eip %u, eip %#x)", c->idx,
                      MB(c, MB_BAD_VECTOR), MB(c, MB_GP_BAD), MB(c, MB_GP_EIP));
                ex->bad = true;
                return -1;
            }
        }
        if (reason == info->exit_configure || reason == info->exit_denial) {
            if (reason == info->exit_configure)
                ex->configure++;
            else
                ex->denial++;
            ex->last_reason = reason;
            memcpy(ex->payload, (const uint8_t *)run + 32, sizeof ex->payload);
            struct kvm_regs r;
            get_regs(c, &r);
            ex->rip_at_exit = r.rip;
            continue;
        }
        if (reason == KVM_EXIT_HLT) {
            ex->halted = true;
            return 1;
        }
        struct kvm_regs r;
        get_regs(c, &r);
        CHECK(false, "cpu %d: unexpected exit %u at rip %#llx", c->idx, reason,
              (unsigned long long)r.rip);
        ex->bad = true;
        return -1;
    }
}

static void cpu_start(Cpu *c) {
    Exits ex = {0};
    if (run_until_ready(c, &ex) != 0)
        die("guest start");
}

typedef struct {
    Exits ex;
    uint32_t eax, gp, gp_err, gp_eip;
} OpResult;

/* One command; the guest is at PORT_READY before and after. */
static OpResult guest_cmd(Cpu *c, uint32_t cmd, uint32_t rax, uint32_t rbx, uint32_t rcx,
                          uint32_t rdx, uint32_t count) {
    OpResult res = {0};
    uint32_t gp0 = MB(c, MB_GP_COUNT);
    MB(c, MB_CMD) = cmd;
    MB(c, MB_RAX) = rax;
    MB(c, MB_RBX) = rbx;
    MB(c, MB_RCX) = rcx;
    MB(c, MB_RDX) = rdx;
    MB(c, MB_COUNT) = count;
    MB(c, MB_RES_EAX) = 0xdeadbeef;
    MB(c, MB_GP_ERR) = 0xdeadbeef;
    MB(c, MB_GP_EIP) = 0;
    run_until_ready(c, &res.ex);
    res.eax = MB(c, MB_RES_EAX);
    res.gp = MB(c, MB_GP_COUNT) - gp0;
    res.gp_err = MB(c, MB_GP_ERR);
    res.gp_eip = MB(c, MB_GP_EIP);
    return res;
}

static OpResult guest_op(Cpu *c, uint32_t rax, uint32_t rbx, uint32_t rcx, uint32_t rdx) {
    return guest_cmd(c, CMD_OP, rax, rbx, rcx, rdx, 0);
}

/* ---- the Heki sequence ------------------------------------------------------- */

static void check_extension(Vm *vm, const char *which) {
    const HekiEmuVmInfo *in = &vm->info;
    CHECK_EQ(ioctl(vm->sys, KVM_CHECK_EXTENSION, in->cap_configure), 3, "CHECK_EXTENSION(configure) on /dev/kvm");
    CHECK_EQ(ioctl(vm->sys, KVM_CHECK_EXTENSION, in->cap_denial), 3, "CHECK_EXTENSION(denial) on /dev/kvm");
    CHECK_EQ(ioctl(vm->fd, KVM_CHECK_EXTENSION, in->cap_configure), 3, "CHECK_EXTENSION(configure) on the VM");
    CHECK_EQ(ioctl(vm->fd, KVM_CHECK_EXTENSION, in->cap_denial), 3, "CHECK_EXTENSION(denial) on the VM");
    CHECK_EQ(ioctl(vm->fd, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY), 1, "other caps reach the kernel");
    (void)which;
}

/* Rejected pins: -EINVAL in rax, no exit, no pin. */
static void check_rejected_pins(Cpu *c) {
    static const struct { uint32_t cr, pin, flags; const char *what; } bad[] = {
        {0, 0, 0, "pin 0"},
        {3, CR0_WP, 0, "register 3"},
        {0, CR0_PE, 0, "CR0 pin without WP"},
        {0, CR0_WP, 2, "unknown flags"},
        {0, CR0_WP, LOCK_CR_VERSION, "version flag with a pin"},
        {4, CR4_PKE, 0, "CR4 bit that is not pinnable"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        OpResult r = guest_op(c, HC_LOCK_CR, bad[i].cr, bad[i].pin, bad[i].flags);
        CHECK(r.eax == RAX_EINVAL, "%s: rax %#x, want -22", bad[i].what, r.eax);
        CHECK(r.ex.configure + r.ex.denial + r.ex.passthrough == 0, "%s: no exit", bad[i].what);
        struct kvm_regs regs;
        get_regs(c, &regs); /* still the result: the guest only stored eax */
        CHECK_EQ(regs.rax, RAX_EINVAL, "a 32-bit caller's result has its upper half zero");
    }
    vm_info(c->vm);
    CHECK_EQ(c->vm->info.pinned_cr0 | c->vm->info.pinned_cr4, 0, "nothing pinned by rejected pins");
}

/* A pin that the model accepts; returns the bits pinned by this call. */
static uint64_t check_pin(Cpu *c, uint32_t cr, uint32_t pin, bool exits) {
    const HekiEmuVmInfo *in = &c->vm->info;
    uint64_t want = cr == 0 ? pin : (pin & in->pinnable_cr4 & in->host_cr4); /* heki_lock_cr */
    OpResult r = guest_op(c, HC_LOCK_CR, cr, pin, 0);
    CHECK_EQ(r.eax, 0, "pin: rax after the call");
    if (exits) {
        CHECK_EQ(r.ex.configure, 1, "pin: configure exits");
        CHECK_EQ(r.ex.last_reason, in->exit_configure, "pin: exit number");
        CHECK_EQ(r.ex.payload[0], cr == 0 ? REASON_CR0 : REASON_CR4, "pin: payload reason");
        CHECK_EQ(r.ex.payload[1], want, "pin: payload cr_pinned (this call, after host masking)");
        for (int w = 2; w < 8; w++)
            CHECK_EQ(r.ex.payload[w], 0, "pin: payload reserved word");
        CHECK_EQ(r.ex.rip_at_exit, SYM_guest_op_out, "pin: rip during the exit is the OUT");
    } else {
        CHECK_EQ(r.ex.configure + r.ex.denial, 0, "pin without the cap: no exit");
    }
    vm_info(c->vm);
    CHECK_EQ((cr == 0 ? in->pinned_cr0 : in->pinned_cr4) & want, want, "pin: the model holds it");
    return want;
}

static void check_allowed_write(Cpu *c, int cr, uint64_t value) {
    OpResult r = guest_op(c, cr == 0 ? OP_CR0 : OP_CR4, (uint32_t)value, 0, 0);
    CHECK_EQ(r.ex.configure + r.ex.denial + r.ex.passthrough, 0, "allowed write: no exit");
    CHECK_EQ(r.gp, 0, "allowed write: no #GP");
    CHECK_EQ(r.eax, cr == 0 ? OP_CR0 : OP_CR4, "allowed write: rax unchanged");
    CHECK_EQ(sreg_cr(c, cr), value, cr == 0 ? "allowed write: CR0 applied" : "allowed write: CR4 applied");
}

/* A write that clears a pinned bit: an exit (or not), then #GP(0) at the OUT. */
static void check_denied_write(Cpu *c, int cr, uint64_t value, bool exits) {
    const HekiEmuVmInfo *in = &c->vm->info;
    uint64_t before = sreg_cr(c, cr);
    uint64_t denials0 = in->denials;
    OpResult r = guest_op(c, cr == 0 ? OP_CR0 : OP_CR4, (uint32_t)value, 0, 0);
    if (exits) {
        CHECK_EQ(r.ex.denial, 1, "denial: exits");
        CHECK_EQ(r.ex.last_reason, in->exit_denial, "denial: exit number");
        CHECK_EQ(r.ex.payload[0], cr == 0 ? REASON_CR0 : REASON_CR4, "denial: payload reason");
        CHECK_EQ(r.ex.payload[1], value, "denial: payload cr_value (the attempted value)");
        for (int w = 2; w < 8; w++)
            CHECK_EQ(r.ex.payload[w], 0, "denial: payload reserved word");
        CHECK_EQ(r.ex.rip_at_exit, SYM_guest_op_out, "denial: rip during the exit is the OUT");
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
    OpResult r = guest_op(c, HC_LOCK_CR, 0, 0, LOCK_CR_VERSION);
    CHECK_EQ(r.eax, 1, "version query");
    CHECK_EQ(r.ex.configure + r.ex.denial, 0, "version query: no exit");
    r = guest_op(c, 12, 0, 0, 0);
    CHECK_EQ(r.eax, RAX_ENOSYS, "unknown hypercall number");

    check_rejected_pins(c);
    check_pin(c, 0, CR0_WP, caps);
    uint64_t cr4_pinned = check_pin(c, 4, CR4_SMEP | CR4_SMAP, caps);

    uint64_t cr0 = sreg_cr(c, 0), cr4 = sreg_cr(c, 4);
    check_allowed_write(c, 0, cr0 | CR0_AM);
    check_allowed_write(c, 4, cr4 | CR4_OSFXSR);
    cr0 |= CR0_AM;
    cr4 |= CR4_OSFXSR;
    check_denied_write(c, 0, cr0 & ~CR0_WP, caps);
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

#define BOOT_CR0 (CR0_PE | CR0_ET | CR0_NE | CR0_WP)
#define BOOT_CR4 (CR4_SMEP | CR4_SMAP)

static void scenario_sequence(bool caps, bool payload) {
    Vm *vm = vm_new(payload);
    Cpu *c = cpu_new(vm, 0, BOOT_CR0, BOOT_CR4);
    heki_sequence(vm, c, caps);
}

static void scenario_v3(void) {
    Vm *vm = vm_new(true);
    CHECK_EQ(vm->info.exit_configure, 40, "v3 configure exit");
    CHECK_EQ(vm->info.exit_denial, 41, "v3 denial exit");
    CHECK_EQ(vm->info.cap_configure, 236, "v3 configure cap");
    CHECK_EQ(vm->info.cap_denial, 237, "v3 denial cap");
    Cpu *c = cpu_new(vm, 0, BOOT_CR0, BOOT_CR4);
    heki_sequence(vm, c, true);
}

/* A kernel built without CONFIG_HEKI. */
static void scenario_off(void) {
    Vm *vm = vm_new(true);
    Cpu *c = cpu_new(vm, 0, BOOT_CR0, BOOT_CR4);
    check_extension(vm, "");
    int err;
    enable_cap(vm->fd, vm->info.cap_configure, 3, &err);
    CHECK_EQ(err, EINVAL, "ENABLE_CAP(configure) without Heki");
    enable_cap(vm->fd, vm->info.cap_denial, 3, &err);
    CHECK_EQ(err, EINVAL, "ENABLE_CAP(denial) without Heki");
    cpu_start(c);
    OpResult r = guest_op(c, HC_LOCK_CR, 0, 0, LOCK_CR_VERSION);
    CHECK_EQ(r.eax, RAX_ENOSYS, "version query without Heki");
    r = guest_op(c, HC_LOCK_CR, 0, CR0_WP, 0);
    CHECK_EQ(r.eax, RAX_ENOSYS, "pin without Heki");
    uint64_t cr0 = sreg_cr(c, 0);
    check_allowed_write(c, 0, cr0 & ~CR0_WP); /* nothing is pinned */
    vm_info(vm);
    CHECK_EQ(vm->info.pinned_cr0 | vm->info.pinned_cr4, 0, "no pin without Heki");
    CHECK_EQ(vm->info.configure_exits + vm->info.denial_exits + vm->info.denials, 0, "no exit, no denial");
}

/* A VMM that stops a vCPU right after a Heki exit: KVM_RUN with
   immediate_exit completes it and returns EINTR; the state is consistent. */
static void scenario_immediate(void) {
    Vm *vm = vm_new(true);
    Cpu *c = cpu_new(vm, 0, BOOT_CR0, BOOT_CR4);
    int err;
    enable_cap(vm->fd, vm->info.cap_configure, 3, &err);
    enable_cap(vm->fd, vm->info.cap_denial, 3, &err);
    cpu_start(c);

    /* A pending configure exit. */
    MB(c, MB_CMD) = CMD_OP;
    MB(c, MB_RAX) = HC_LOCK_CR;
    MB(c, MB_RBX) = 0;
    MB(c, MB_RCX) = CR0_WP;
    MB(c, MB_RDX) = 0;
    CHECK(ioctl(c->fd, KVM_RUN, 0) == 0, "run to the pin");
    CHECK_EQ(c->run->exit_reason, vm->info.exit_configure, "configure exit");
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
    MB(c, MB_RAX) = OP_CR0;
    MB(c, MB_RBX) = (uint32_t)(sreg_cr(c, 0) & ~CR0_WP);
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

/* Hostile or foreign uses of the port, and fd bookkeeping. */
static void scenario_hostile(void) {
    Vm *vm = vm_new(true);
    Cpu *c = cpu_new(vm, 0, BOOT_CR0, BOOT_CR4);
    cpu_start(c);

    OpResult r = guest_cmd(c, CMD_IN, HC_LOCK_CR, 0, CR0_WP, 0, 0);
    CHECK(r.ex.passthrough == 1 && r.ex.io.io.direction == KVM_EXIT_IO_IN, "IN on 0xe5 left to the VMM");
    r = guest_cmd(c, CMD_OUTW, HC_LOCK_CR, 0, CR0_WP, 0, 0);
    CHECK(r.ex.passthrough == 1 && r.ex.io.io.size == 2, "outw on 0xe5 left to the VMM");
    r = guest_op(c, 0x105, 0, 0, 0);
    CHECK(r.ex.passthrough == 1 && r.eax == 0x105, "unknown operation left to the VMM, rax kept");
    r = guest_op(c, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff);
    CHECK(r.ex.passthrough == 1, "operation 0xffffffff left to the VMM");
    r = guest_op(c, HC_LOCK_CR, 0xffffffff, 0xffffffff, 0);
    CHECK_EQ(r.eax, RAX_EINVAL, "pin of register 0xffffffff");
    r = guest_op(c, HC_LOCK_CR, 4, 0xffffffff, 0);
    CHECK_EQ(r.eax, RAX_EINVAL, "CR4 pin of every bit");
    vm_info(vm);
    CHECK_EQ(vm->info.pinned_cr0 | vm->info.pinned_cr4, 0, "still nothing pinned");

    /* Values the CPU refuses: not pinned, but KVM says no -> #GP, CR kept. */
    uint64_t cr0 = sreg_cr(c, 0), cr4 = sreg_cr(c, 4);
    r = guest_op(c, OP_CR0, CR0_PG | CR0_ET, 0, 0); /* PG without PE */
    CHECK(r.gp == 1 && r.gp_err == 0 && r.gp_eip == SYM_guest_op_out, "CR0 PG without PE: #GP(0) at the OUT");
    CHECK_EQ(sreg_cr(c, 0), cr0, "CR0 kept");
    r = guest_op(c, OP_CR4, 0xffffffff, 0, 0);
    CHECK(r.gp == 1 && r.gp_err == 0, "CR4 with reserved bits: #GP(0)");
    CHECK_EQ(sreg_cr(c, 4), cr4, "CR4 kept");
    CHECK_EQ(MB(c, MB_GP_BAD), 0, "every #GP at the OUT");

    /* fd reuse: a new VM on a closed VM's fd number starts clean. */
    check_pin(c, 0, CR0_WP, false);
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
    check_allowed_write(c2, 0, cr0b & ~CR0_WP); /* the old VM's pin is not here */
    /* dup2 over a tracked fd forgets it. */
    int spare = open("/dev/null", O_RDONLY);
    Vm *vm3 = vm_new(true);
    dup2(spare, vm3->fd);
    CHECK(vm_info_fn(vm3->fd, &(HekiEmuVmInfo){0}) == -1, "dup2 over a VM fd forgets it");
    close(spare);
}

/* ---- concurrency and cost ------------------------------------------------ */

typedef struct {
    Cpu *c;
    uint32_t count, bad_cr0;
    OpResult res;
    double us;
} StormArg;

static void *storm_thread(void *p) {
    StormArg *a = p;
    double t0 = now_us();
    a->res = guest_cmd(a->c, CMD_REPEAT, OP_CR0, a->bad_cr0, 0, 0, a->count);
    a->us = now_us() - t0;
    return NULL;
}

#define STORM_THREADS 2
#define STORM_COUNT 2000

static void scenario_storm(void) {
    Vm *vm = vm_new(true);
    int err;
    enable_cap(vm->fd, vm->info.cap_configure, 3, &err);
    enable_cap(vm->fd, vm->info.cap_denial, 3, &err);
    Cpu *cpus[STORM_THREADS];
    for (int i = 0; i < STORM_THREADS; i++) {
        cpus[i] = cpu_new(vm, i, BOOT_CR0, BOOT_CR4);
        cpu_start(cpus[i]);
    }
    check_pin(cpus[0], 0, CR0_WP, true);
    StormArg args[STORM_THREADS];
    pthread_t th[STORM_THREADS];
    for (int i = 0; i < STORM_THREADS; i++) {
        args[i] = (StormArg){.c = cpus[i], .count = STORM_COUNT, .bad_cr0 = BOOT_CR0 & ~CR0_WP};
        pthread_create(&th[i], NULL, storm_thread, &args[i]);
    }
    unsigned exits = 0, gps = 0;
    double us = 0;
    for (int i = 0; i < STORM_THREADS; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ(args[i].res.ex.denial, STORM_COUNT, "storm: denial exits seen by the thread");
        CHECK_EQ(args[i].res.gp, STORM_COUNT, "storm: #GPs counted by the guest");
        CHECK_EQ(MB(cpus[i], MB_GP_BAD), 0, "storm: every #GP at the OUT");
        CHECK_EQ(args[i].res.gp_err, 0, "storm: error code");
        CHECK_EQ(args[i].res.gp_eip, SYM_guest_rep_out, "storm: saved eip");
        HekiEmuVcpuInfo vi;
        vcpu_info_fn(cpus[i]->fd, &vi);
        CHECK_EQ(vi.gp_count, STORM_COUNT, "storm: model #GPs on the vCPU");
        exits += args[i].res.ex.denial;
        gps += args[i].res.gp;
        us += args[i].us;
    }
    vm_info(vm);
    CHECK_EQ(vm->info.denial_exits, exits, "storm: model denial exits == exits seen");
    CHECK_EQ(vm->info.denials, gps, "storm: model denials == guest #GPs");
    CHECK_EQ(exits, STORM_THREADS * STORM_COUNT, "storm: total");
    CHECK_EQ(sreg_cr(cpus[0], 0), BOOT_CR0, "storm: CR0 unchanged");
    printf("  [storm] %d threads x %d denials: exits seen %u, guest #GPs %u, model denial exits %llu; "
           "%.2f us per denial round trip (exit + #GP, 2 vCPUs concurrently)\n",
           STORM_THREADS, STORM_COUNT, exits, gps, (unsigned long long)vm->info.denial_exits,
           us / (STORM_THREADS * STORM_COUNT));
}

/* A QEMU-style kick (SIGUSR1 whose handler sets immediate_exit) must never
   be lost, even when it lands while the emulator borrows immediate_exit to
   complete a port write.  The guest loops on allowed CR writes, which the
   emulator completes that way and which never exit to us: a lost kick leaves
   KVM_RUN running for a minute, so each kick waits for its EINTR. */
#define KICKS 300
#define KICK_TIMEOUT_US 3e6

static struct kvm_run *kick_run;
static atomic_uint kick_eintrs;
static atomic_bool kick_stop;

static void on_kick(int sig) {
    (void)sig;
    __atomic_store_n(&kick_run->immediate_exit, 1, __ATOMIC_RELAXED);
}

static void *kick_vcpu_thread(void *p) {
    Cpu *c = p;
    for (;;) {
        int r = ioctl(c->fd, KVM_RUN, 0);
        if (r < 0 && errno == EINTR) {
            c->run->immediate_exit = 0; /* as QEMU, before it looks again */
            atomic_fetch_add(&kick_eintrs, 1);
            if (atomic_load(&kick_stop))
                return NULL;
            continue;
        }
        CHECK(false, "kick: unexpected KVM_RUN result %d, exit %u", r, c->run->exit_reason);
        atomic_store(&kick_stop, true);
        atomic_fetch_add(&kick_eintrs, 1);
        return NULL;
    }
}

static void scenario_kick(void) {
    Vm *vm = vm_new(true);
    Cpu *c = cpu_new(vm, 0, BOOT_CR0, BOOT_CR4);
    cpu_start(c);
    uint32_t cr0 = (uint32_t)sreg_cr(c, 0);
    MB(c, MB_CMD) = CMD_REPEAT;
    MB(c, MB_RAX) = OP_CR0;
    MB(c, MB_RBX) = cr0 ^ CR0_AM; /* allowed: nothing pinned */
    MB(c, MB_COUNT) = 1000000;
    kick_run = c->run;
    struct sigaction sa = {.sa_handler = on_kick};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    pthread_t th;
    pthread_create(&th, NULL, kick_vcpu_thread, c);
    int lost = -1;
    for (int k = 0; k < KICKS && !atomic_load(&kick_stop); k++) {
        usleep(200 + (unsigned)(k * 7919) % 800); /* land anywhere in the loop */
        unsigned seen = atomic_load(&kick_eintrs);
        if (k == KICKS - 1)
            atomic_store(&kick_stop, true);
        pthread_kill(th, SIGUSR1);
        double t0 = now_us();
        while (atomic_load(&kick_eintrs) == seen && now_us() - t0 < KICK_TIMEOUT_US)
            usleep(50);
        if (atomic_load(&kick_eintrs) == seen) {
            lost = k;
            break;
        }
    }
    if (lost >= 0) {
        CHECK(false, "kick %d lost: KVM_RUN did not return EINTR within %.0f s", lost, KICK_TIMEOUT_US / 1e6);
        _exit(1); /* the vCPU thread is stuck in the guest */
    }
    pthread_join(th, NULL);
    HekiEmuVcpuInfo vi;
    vcpu_info_fn(c->fd, &vi);
    CHECK_EQ(atomic_load(&kick_eintrs), KICKS, "kick: one EINTR per kick");
    printf("  [kick] %d kicks during emulator-completed CR writes, each ended KVM_RUN with EINTR\n", KICKS);
}

#define BENCH_COUNT 2000

static double bench(Cpu *c, uint32_t cmd, uint32_t rax, uint32_t rbx, uint32_t rcx, uint32_t rdx,
                    unsigned *exits_seen, OpResult *res) {
    double t0 = now_us();
    *res = guest_cmd(c, cmd, rax, rbx, rcx, rdx, BENCH_COUNT);
    double us = (now_us() - t0) / BENCH_COUNT;
    *exits_seen = res->ex.plain + res->ex.configure + res->ex.denial;
    return us;
}

static void scenario_bench(void) {
    Vm *vm = vm_new(true);
    int err;
    enable_cap(vm->fd, vm->info.cap_configure, 3, &err);
    enable_cap(vm->fd, vm->info.cap_denial, 3, &err);
    Cpu *c = cpu_new(vm, 0, BOOT_CR0, BOOT_CR4);
    cpu_start(c);
    unsigned n;
    OpResult r;
    double plain = bench(c, CMD_PLAIN, 0, 0, 0, 0, &n, &r);
    CHECK_EQ(n, BENCH_COUNT, "bench: plain exits");
    double version = bench(c, CMD_REPEAT, HC_LOCK_CR, 0, 0, LOCK_CR_VERSION, &n, &r);
    CHECK(n == 0 && r.eax == 1, "bench: version queries stay in the emulator");
    uint32_t cr0 = (uint32_t)sreg_cr(c, 0);
    double write_ok = bench(c, CMD_REPEAT, OP_CR0, cr0 ^ CR0_AM, 0, 0, &n, &r);
    CHECK(n == 0 && r.gp == 0, "bench: allowed CR writes stay in the emulator");
    double configure = bench(c, CMD_REPEAT, HC_LOCK_CR, 0, CR0_WP, 0, &n, &r);
    CHECK(n == BENCH_COUNT && r.ex.configure == BENCH_COUNT, "bench: one configure exit per pin");
    double denial = bench(c, CMD_REPEAT, OP_CR0, cr0 & ~CR0_WP, 0, 0, &n, &r);
    CHECK(n == BENCH_COUNT && r.gp == BENCH_COUNT, "bench: one denial exit and #GP per write");
    struct kvm_regs regs;
    double t0 = now_us();
    for (int i = 0; i < BENCH_COUNT; i++)
        get_regs(c, &regs);
    double one_ioctl = (now_us() - t0) / BENCH_COUNT;
    printf("  [bench] round trip per operation (%d each, information only):\n"
           "    one vCPU ioctl (KVM_GET_REGS), for scale            %7.2f us\n"
           "    plain KVM_EXIT_IO to port 0x%x, handled by the VMM  %7.2f us\n"
           "    emulator-only hypercall (version query)            %7.2f us\n"
           "    emulator-only allowed CR0 write (KVM_SET_SREGS)    %7.2f us\n"
           "    Heki configure exit to the VMM and completion      %7.2f us\n"
           "    Heki denial exit + #GP delivered to the guest      %7.2f us\n",
           BENCH_COUNT, one_ioctl, PORT_PLAIN, plain, version, write_ok, configure, denial);
}

/* ---- the driver ------------------------------------------------------------- */

typedef struct {
    const char *name;
    const char *env[3]; /* NAME=value, set for this scenario's process */
} Scenario;

static const Scenario scenarios[] = {
    {"caps-v2", {"HEKI_EMU_TRACE=@"}},
    {"caps-masked", {"HEKI_EMU_HOST_CR4=0x100000"}}, /* SMEP only: SMAP is masked */
    {"nocaps", {0}},
    {"v3", {"HEKI_EMU_ABI=v3"}},
    {"heki-off", {"HEKI_EMU_HEKI=off"}},
    {"immediate-exit", {0}},
    {"hostile", {0}},
    {"storm", {0}},
    {"kick", {0}},
    {"bench", {0}},
};

static const char *bad_envs[] = {"HEKI_EMU_ABI=v9", "HEKI_EMU_HEKI=maybe", "HEKI_EMU_HOST_CR4=xyz",
                                 "HEKI_EMU_TRACE="};

static int run_scenario(const char *name) {
    scenario = name;
    sys_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (sys_fd < 0)
        die("open /dev/kvm");
    if (!strcmp(name, "caps-v2"))
        scenario_sequence(true, true);
    else if (!strcmp(name, "caps-masked"))
        scenario_sequence(true, false); /* and #GP without KVM_CAP_EXCEPTION_PAYLOAD */
    else if (!strcmp(name, "nocaps"))
        scenario_sequence(false, true);
    else if (!strcmp(name, "v3"))
        scenario_v3();
    else if (!strcmp(name, "heki-off"))
        scenario_off();
    else if (!strcmp(name, "immediate-exit"))
        scenario_immediate();
    else if (!strcmp(name, "hostile"))
        scenario_hostile();
    else if (!strcmp(name, "storm"))
        scenario_storm();
    else if (!strcmp(name, "kick"))
        scenario_kick();
    else if (!strcmp(name, "bench"))
        scenario_bench();
    else
        CHECK(false, "unknown scenario %s", name);
    printf("  [%s] %d checks, %d failed\n", name, checks, failures);
    return failures ? 1 : 0;
}

/* Re-executes this program for one scenario; returns its wait status. */
static int spawn(const char *name, const char *const *env, bool echo, char *errbuf, size_t errlen) {
    int pipefd[2];
    if (pipe(pipefd) < 0)
        die("pipe");
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        dup2(pipefd[1], 2);
        for (int i = 0; env[i]; i++)
            putenv((char *)env[i]);
        execl("/proc/self/exe", "emu-selftest", name, (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    size_t used = 0;
    ssize_t n;
    char chunk[512];
    while ((n = read(pipefd[0], chunk, sizeof chunk)) > 0) {
        if (echo) /* failures stay visible */
            fwrite(chunk, 1, (size_t)n, stderr);
        size_t take = (size_t)n < errlen - 1 - used ? (size_t)n : errlen - 1 - used;
        memcpy(errbuf + used, chunk, take);
        used += take;
    }
    errbuf[used] = 0;
    close(pipefd[0]);
    int status;
    waitpid(pid, &status, 0);
    return status;
}

static int count_lines(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int n = 0, ch;
    while ((ch = fgetc(f)) != EOF)
        n += ch == '\n';
    fclose(f);
    return n;
}

int main(int argc, char **argv) {
    vm_info_fn = (heki_emu_vm_info_fn)dlsym(RTLD_DEFAULT, "heki_emu_vm_info");
    vcpu_info_fn = (heki_emu_vcpu_info_fn)dlsym(RTLD_DEFAULT, "heki_emu_vcpu_info");
    if (!vm_info_fn || !vcpu_info_fn) {
        fprintf(stderr, "emu-selftest: run me with LD_PRELOAD=libheki-kvm-emu.so\n");
        return 2;
    }
    if (argc > 1)
        return run_scenario(argv[1]);

    char trace_path[] = "/tmp/heki-emu-trace-XXXXXX";
    int tfd = mkstemp(trace_path);
    if (tfd < 0)
        die("mkstemp");
    close(tfd);
    char trace_env[64];
    snprintf(trace_env, sizeof trace_env, "HEKI_EMU_TRACE=%s", trace_path);

    int failed = 0, passed = 0;
    char err[4096];
    printf("heki-kvm-emu self-test on /dev/kvm\n");
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++) {
        const char *env[3] = {0};
        for (int k = 0; k < 2 && scenarios[i].env[k]; k++)
            env[k] = strcmp(scenarios[i].env[k], "HEKI_EMU_TRACE=@") ? scenarios[i].env[k] : trace_env;
        int st = spawn(scenarios[i].name, env, true, err, sizeof err);
        bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        printf("%s %s\n", ok ? "PASS" : "FAIL", scenarios[i].name);
        ok ? passed++ : failed++;
    }
    /* The trace of caps-v2: one line per emulated operation. */
    int lines = count_lines(trace_path);
    scenario = "trace";
    /* version, unknown hypercall, 6 rejected pins, 2 pins + 2 completions,
       2 allowed writes, 2 denials + 2 completions. */
    const int want_lines = 18;
    bool trace_ok = lines == want_lines;
    printf("%s trace: %d lines from caps-v2 (want %d) in %s\n", trace_ok ? "PASS" : "FAIL", lines,
           want_lines, trace_path);
    trace_ok ? passed++ : failed++;
    if (trace_ok)
        unlink(trace_path);

    /* A bad environment aborts the VMM at start, with the reason. */
    for (size_t i = 0; i < sizeof bad_envs / sizeof bad_envs[0]; i++) {
        const char *env[2] = {bad_envs[i], NULL};
        int st = spawn("none", env, false, err, sizeof err);
        char var[32];
        snprintf(var, sizeof var, "%.*s", (int)(strchr(bad_envs[i], '=') - bad_envs[i]), bad_envs[i]);
        bool ok = WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT && strstr(err, var);
        char *nl = strchr(err, '\n');
        if (nl)
            *nl = 0;
        printf("%s bad env %s: %s\n", ok ? "PASS" : "FAIL", bad_envs[i],
               ok ? err : "did not abort at start with the reason");
        ok ? passed++ : failed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
