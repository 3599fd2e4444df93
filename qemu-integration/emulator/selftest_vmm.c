/*
 * selftest_vmm.c - the self-test's minimal VMM (see selftest_vmm.h).
 */
#define _GNU_SOURCE
#include "selftest_vmm.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>

#include "guest_syms.h"

extern const uint8_t guest_blob[], guest_blob_end[];

/* ---- checks ---------------------------------------------------------------- */

const char *scenario = "driver";
int checks, failures;

bool check(bool ok, const char *file, int line, const char *fmt, ...) {
    checks++;
    if (!ok) {
        failures++;
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "FAIL [%s] %s:%d: ", scenario, file, line);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
    }
    return ok;
}

void die(const char *what) {
    fprintf(stderr, "FATAL [%s] %s: %s\n", scenario, what, strerror(errno));
    exit(2);
}

double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

heki_emu_vm_info_fn vm_info_fn;
heki_emu_vcpu_info_fn vcpu_info_fn;

/* ---- a minimal VMM ---------------------------------------------------------- */

int sys_fd;

void vm_info(Vm *vm) {
    if (vm_info_fn(vm->fd, &vm->info) != 0) {
        fprintf(stderr, "FATAL [%s] the emulator does not track VM fd %d\n", scenario, vm->fd);
        exit(2);
    }
}

void enable_cap(int fd, uint32_t cap, uint64_t arg0, int *err) {
    struct kvm_enable_cap c = {.cap = cap, .args = {arg0}};
    *err = ioctl(fd, KVM_ENABLE_CAP, &c) == 0 ? 0 : errno;
}

Vm *vm_new(bool exception_payload) {
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

Cpu *cpu_new(Vm *vm, int idx, uint32_t cr0, uint32_t cr4) {
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

uint64_t sreg_cr(Cpu *c, int cr) {
    struct kvm_sregs s;
    if (ioctl(c->fd, KVM_GET_SREGS, &s) < 0)
        die("KVM_GET_SREGS");
    return cr == 0 ? s.cr0 : s.cr4;
}

void get_regs(Cpu *c, struct kvm_regs *r) {
    if (ioctl(c->fd, KVM_GET_REGS, r) < 0)
        die("KVM_GET_REGS");
}

int run_until_ready(Cpu *c, Exits *ex) {
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
            if (port == EMU_PORT) {
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

void cpu_start(Cpu *c) {
    Exits ex = {0};
    if (run_until_ready(c, &ex) != 0)
        die("guest start");
}

OpResult guest_cmd(Cpu *c, uint32_t cmd, uint32_t rax, uint32_t rbx, uint32_t rcx,
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

OpResult guest_op(Cpu *c, uint32_t rax, uint32_t rbx, uint32_t rcx, uint32_t rdx) {
    return guest_cmd(c, CMD_OP, rax, rbx, rcx, rdx, 0);
}

