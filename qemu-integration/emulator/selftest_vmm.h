/*
 * selftest_vmm.h - the self-test's minimal VMM and its checks: a VM with the
 * guest of selftest_guest.S loaded, vCPUs in 32-bit protected mode, a run
 * loop that records what a VMM sees, and CHECK()s that count failures.
 */
#ifndef HEKI_EMU_SELFTEST_VMM_H
#define HEKI_EMU_SELFTEST_VMM_H

#include <linux/kvm.h>
#include <stdbool.h>
#include <stdint.h>

#include "heki_kvm_emu.h"
#include "emu_protocol.h"
#include "heki_x86.h"
#include "selftest.h"

#define BOOT_CR0 (FK_CR0_PE | FK_CR0_ET | FK_CR0_NE | FK_CR0_WP)
#define BOOT_CR4 (FK_CR4_SMEP | FK_CR4_SMAP)

/* ---- checks ---- */
extern const char *scenario; /* named in every failure */
extern int checks, failures;
bool check(bool ok, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define CHECK(cond, ...) check((cond), __FILE__, __LINE__, __VA_ARGS__)
#define CHECK_EQ(a, b, what)                                                  \
    check((uint64_t)(a) == (uint64_t)(b), __FILE__, __LINE__,                 \
          "%s: got %#llx, want %#llx", what, (unsigned long long)(a),         \
          (unsigned long long)(b))
void die(const char *what) __attribute__((noreturn));
double now_us(void);

/* The emulator's view of the model (dlsym: only when preloaded). */
extern heki_emu_vm_info_fn vm_info_fn;
extern heki_emu_vcpu_info_fn vcpu_info_fn;

/* ---- the VMM ---- */
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

typedef struct {
    Exits ex;
    uint32_t eax, gp, gp_err, gp_eip;
} OpResult;

#define MB(c, off) ((c)->mb[(off) / 4])

extern int sys_fd; /* /dev/kvm */
void vm_info(Vm *vm);
void enable_cap(int fd, uint32_t cap, uint64_t arg0, int *err);
Vm *vm_new(bool exception_payload);
Cpu *cpu_new(Vm *vm, int idx, uint32_t cr0, uint32_t cr4);
uint64_t sreg_cr(Cpu *c, int cr);
void get_regs(Cpu *c, struct kvm_regs *r);
/* Runs until the guest waits at PORT_READY (0), halts (1) or fails (-1). */
int run_until_ready(Cpu *c, Exits *ex);
void cpu_start(Cpu *c);
/* One command; the guest is at PORT_READY before and after. */
OpResult guest_cmd(Cpu *c, uint32_t cmd, uint32_t rax, uint32_t rbx, uint32_t rcx, uint32_t rdx,
                   uint32_t count);
OpResult guest_op(Cpu *c, uint32_t rax, uint32_t rbx, uint32_t rcx, uint32_t rdx);

/* An accepted pin, checked (exit payload if `exits`, model state); returns
   the bits pinned by this call. */
uint64_t check_pin(Cpu *c, uint32_t cr, uint32_t pin, bool exits);

/* ---- scenarios ---- */
void scenario_sequence(bool caps, bool payload);
void scenario_v3(void);
void scenario_off(void);
void scenario_immediate(void);
void scenario_reset_pending(void);
void scenario_hostile(void);
void scenario_storm(void);
void scenario_kick(void);
void scenario_bench(void);

#endif
