/*
 * selftest_load.c - concurrency and cost: a denial storm on 2 vCPU threads
 * with exact counts, QEMU-style kicks that must never be lost, and the
 * round-trip cost of each kind of operation (information only).
 */
#define _GNU_SOURCE
#include "selftest_vmm.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "guest_syms.h"

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
    a->res = guest_cmd(a->c, CMD_REPEAT, EMU_OP_WRITE_CR0, a->bad_cr0, 0, 0, a->count);
    a->us = now_us() - t0;
    return NULL;
}

#define STORM_THREADS 2
#define STORM_COUNT 2000

void scenario_storm(void) {
    Vm *vm = vm_new(true);
    int err;
    enable_cap(vm->fd, vm->info.cap_configure, 3, &err);
    enable_cap(vm->fd, vm->info.cap_denial, 3, &err);
    Cpu *cpus[STORM_THREADS];
    for (int i = 0; i < STORM_THREADS; i++) {
        cpus[i] = cpu_new(vm, i, BOOT_CR0, BOOT_CR4);
        cpu_start(cpus[i]);
    }
    check_pin(cpus[0], 0, FK_CR0_WP, true);
    StormArg args[STORM_THREADS];
    pthread_t th[STORM_THREADS];
    for (int i = 0; i < STORM_THREADS; i++) {
        args[i] = (StormArg){.c = cpus[i], .count = STORM_COUNT, .bad_cr0 = BOOT_CR0 & ~FK_CR0_WP};
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

void scenario_kick(void) {
    Vm *vm = vm_new(true);
    Cpu *c = cpu_new(vm, 0, BOOT_CR0, BOOT_CR4);
    cpu_start(c);
    uint32_t cr0 = (uint32_t)sreg_cr(c, 0);
    MB(c, MB_CMD) = CMD_REPEAT;
    MB(c, MB_RAX) = EMU_OP_WRITE_CR0;
    MB(c, MB_RBX) = cr0 ^ FK_CR0_AM; /* allowed: nothing pinned */
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

void scenario_bench(void) {
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
    double version = bench(c, CMD_REPEAT, FK_KVM_HC_LOCK_CR_UPDATE, 0, 0, FK_KVM_LOCK_CR_UPDATE_VERSION, &n, &r);
    CHECK(n == 0 && r.eax == 1, "bench: version queries stay in the emulator");
    uint32_t cr0 = (uint32_t)sreg_cr(c, 0);
    double write_ok = bench(c, CMD_REPEAT, EMU_OP_WRITE_CR0, cr0 ^ FK_CR0_AM, 0, 0, &n, &r);
    CHECK(n == 0 && r.gp == 0, "bench: allowed CR writes stay in the emulator");
    double configure = bench(c, CMD_REPEAT, FK_KVM_HC_LOCK_CR_UPDATE, 0, FK_CR0_WP, 0, &n, &r);
    CHECK(n == BENCH_COUNT && r.ex.configure == BENCH_COUNT, "bench: one configure exit per pin");
    double denial = bench(c, CMD_REPEAT, EMU_OP_WRITE_CR0, cr0 & ~FK_CR0_WP, 0, 0, &n, &r);
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

