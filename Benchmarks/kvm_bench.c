/*
 * The real-KVM share: a minimal KVM host (one VM, one vCPU, real mode) whose
 * guest loops on `out dx, al`.  Every KVM_EXIT_IO stands for one Heki exit:
 * the host lets the fake kernel model (Sources/HekiKernelModel/kernel_model.c) turn
 * it into a KVM_EXIT_HEKI_DENIAL (or _CONFIGURE) in the real kvm_run page,
 * as the patched kernel would, hands it to heki_plugin_handle_exit, and
 * completes it the kernel's way before re-entering KVM_RUN.  The baseline is
 * the identical loop without the plugin call.  Blocks of both alternate;
 * plugin share = (with - without) / with, per pair of blocks.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bench.h"
#include "heki_kernel_model.h"

typedef struct {
    FkVm *fk_vm; /* first: the host's opaque for fk_host_* */
    uint64_t event_bytes;
    int kvm, vm, vcpu;
    struct kvm_run *run;
    size_t run_size;
    unsigned char *memory;
    FkVcpu *fk_vcpu;
    HekiPlugin *plugin;
    GMainContext *context;
    GMainLoop *loop;
} KvmHost;

static void die(const char *what) {
    fprintf(stderr, "heki-bench kvm: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void *loop_thread(void *arg) {
    KvmHost *h = arg;
    g_main_context_push_thread_default(h->context);
    g_main_loop_run(h->loop);
    g_main_context_pop_thread_default(h->context);
    return NULL;
}

static void on_event(void *opaque, const char *name, const char *data) {
    (void)name;
    ((KvmHost *)opaque)->event_bytes += strlen(data);
}

/* One exit of the guest's loop, made a Heki exit by the kernel model. */
static inline void one_exit(KvmHost *h, int denial, int with_plugin) {
    if (ioctl(h->vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
    if (h->run->exit_reason != KVM_EXIT_IO) {
        fprintf(stderr, "heki-bench kvm: unexpected exit %u\n", h->run->exit_reason);
        exit(1);
    }
    FkResult r = denial ? fk_vcpu_write_cr(h->fk_vcpu, 4, FK_DEFAULT_HOST_CR4 & ~FK_CR4_SMEP)
                        : fk_vcpu_lock_cr(h->fk_vcpu, 4, FK_CR4_SMEP, 0);
    if (r != FK_EXIT) {
        fprintf(stderr, "heki-bench kvm: the kernel model made no exit (%d)\n", r);
        exit(1);
    }
    if (with_plugin && plugin_api.handle_exit(h->plugin, 0, h->run) != HEKI_VERDICT_RESUME) {
        fprintf(stderr, "heki-bench kvm: verdict not resume\n");
        exit(1);
    }
    fk_vcpu_complete(h->fk_vcpu);
}

static double block_ns(KvmHost *h, int denial, int with_plugin, long exits) {
    uint64_t t0 = now_ns();
    for (long i = 0; i < exits; i++) one_exit(h, denial, with_plugin);
    return (double)(now_ns() - t0) / (double)exits;
}

/* Exits with and without the plugin call alternate one by one, each round
   trip timed: both halves see the same machine load.  Medians per half. */
static void alternating(KvmHost *h, int denial, long exits, double *with, double *without) {
    double *times[2];
    long counts[2] = { 0, 0 };
    times[0] = calloc((size_t)exits, sizeof(double));
    times[1] = calloc((size_t)exits, sizeof(double));
    uint64_t t0 = now_ns();
    for (long i = 0; i < exits; i++) {
        int with_plugin = (int)(i & 1);
        one_exit(h, denial, with_plugin);
        uint64_t t1 = now_ns();
        times[with_plugin][counts[with_plugin]++] = (double)(t1 - t0);
        t0 = t1;
    }
    *without = stat_of(times[0], (int)counts[0]).median;
    *with = stat_of(times[1], (int)counts[1]).median;
    free(times[0]);
    free(times[1]);
}

/* The same loop with each heki_plugin_handle_exit call timed on its own:
   the plugin's time inside real exits (cold caches after KVM_RUN
   included), minus the cost of the two clock reads. */
static double in_situ_ns(KvmHost *h, int denial, long exits, double clock_pair_ns) {
    double *inside = calloc((size_t)exits, sizeof(double));
    for (long i = 0; i < exits; i++) {
        if (ioctl(h->vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
        FkResult r = denial ? fk_vcpu_write_cr(h->fk_vcpu, 4, FK_DEFAULT_HOST_CR4 & ~FK_CR4_SMEP)
                            : fk_vcpu_lock_cr(h->fk_vcpu, 4, FK_CR4_SMEP, 0);
        if (r != FK_EXIT) die("kernel model");
        uint64_t t0 = now_ns();
        HekiVerdict verdict = plugin_api.handle_exit(h->plugin, 0, h->run);
        uint64_t t1 = now_ns();
        if (verdict != HEKI_VERDICT_RESUME) die("verdict");
        inside[i] = (double)(t1 - t0);
        fk_vcpu_complete(h->fk_vcpu);
    }
    double median = stat_of(inside, (int)exits).median;
    free(inside);
    return median - clock_pair_ns;
}

/* The median cost of two back-to-back clock reads. */
static double clock_pair(void) {
    enum { N = 100001 };
    double *pairs = calloc(N, sizeof(double));
    for (int i = 0; i < N; i++) {
        uint64_t t0 = now_ns();
        uint64_t t1 = now_ns();
        pairs[i] = (double)(t1 - t0);
    }
    double median = stat_of(pairs, N).median;
    free(pairs);
    return median;
}

int kvm_bench(int repeats, long exits_per_block) {
    KvmHost h = { 0 };
    h.kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (h.kvm < 0) return -1;
    h.vm = ioctl(h.kvm, KVM_CREATE_VM, 0);
    if (h.vm < 0) die("KVM_CREATE_VM");
    ioctl(h.vm, KVM_SET_TSS_ADDR, 0xfffbd000ul);
    h.memory = mmap(NULL, 0x10000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    /* 0x1000: mov dx, 0x10; 1: out dx, al; jmp 1b */
    static const unsigned char code[] = { 0xba, 0x10, 0x00, 0xee, 0xeb, 0xfd };
    memcpy(h.memory + 0x1000, code, sizeof code);
    struct kvm_userspace_memory_region region = { .slot = 0, .guest_phys_addr = 0, .memory_size = 0x10000,
                                                  .userspace_addr = (uintptr_t)h.memory };
    if (ioctl(h.vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
    h.vcpu = ioctl(h.vm, KVM_CREATE_VCPU, 0);
    if (h.vcpu < 0) die("KVM_CREATE_VCPU");
    int size = ioctl(h.kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (size < (int)sizeof(struct kvm_run)) die("KVM_GET_VCPU_MMAP_SIZE");
    h.run_size = (size_t)size;
    h.run = mmap(NULL, h.run_size, PROT_READ | PROT_WRITE, MAP_SHARED, h.vcpu, 0);
    if (h.run == MAP_FAILED) die("mmap kvm_run");
    struct kvm_sregs sregs;
    if (ioctl(h.vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    if (ioctl(h.vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    struct kvm_regs regs = { .rip = 0x1000, .rflags = 2 };
    if (ioctl(h.vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

    /* The Heki kernel side, on the real kvm_run page. */
    FkProfile profile = fk_profile(FK_PROFILE_V2);
    h.fk_vm = fk_vm_new(&profile, FK_DEFAULT_HOST_CR0, FK_DEFAULT_HOST_CR4);
    h.fk_vcpu = fk_vcpu_new(h.fk_vm, h.run);

    /* The plugin, its events on a main loop in another thread, as in a VMM. */
    h.context = g_main_context_new();
    h.loop = g_main_loop_new(h.context, FALSE);
    const char *options[] = { "vm-name=bench" };
    HekiHost host = { .size = sizeof host, .opaque = &h, .context = h.context, .event = on_event,
                      .check_extension = fk_host_check_extension, .enable_cap = fk_host_enable_cap };
    char *error = NULL;
    h.plugin = plugin_api.plugin_new(&host, 1, options, &error);
    if (!h.plugin) {
        fprintf(stderr, "heki-bench kvm: %s\n", error);
        exit(1);
    }
    enable_caps_or_exit(h.plugin, h.fk_vm); /* the model's capabilities: its exits reach the plugin */
    /* The guest pins SMEP and SMAP at "boot". */
    if (fk_vcpu_lock_cr(h.fk_vcpu, 4, FK_CR4_SMEP | FK_CR4_SMAP, 0) != FK_EXIT) die("pin");
    plugin_api.handle_exit(h.plugin, 0, h.run);
    fk_vcpu_complete(h.fk_vcpu);
    pthread_t thread;
    pthread_create(&thread, NULL, loop_thread, &h);

    for (int denial = 1; denial >= 0; denial--) {
        double with[256], without[256], share[256], extra[256], inside[256], inside_share[256];
        double clock_pair_ns = clock_pair();
        block_ns(&h, denial, 0, exits_per_block / 4); /* warm-up */
        block_ns(&h, denial, 1, exits_per_block / 4);
        for (int r = 0; r < repeats; r++) {
            alternating(&h, denial, exits_per_block * 2, &with[r], &without[r]);
            extra[r] = with[r] - without[r];
            share[r] = 100.0 * extra[r] / with[r];
            inside[r] = in_situ_ns(&h, denial, exits_per_block / 2, clock_pair_ns);
            inside_share[r] = 100.0 * inside[r] / (without[r] + inside[r]);
        }
        const char *what = denial ? "DENIAL" : "CONFIGURE";
        char name[96];
        snprintf(name, sizeof name, "KVM exit round trip, %s, without plugin", what);
        result_add("kvm", name, "ns/exit", stat_of(without, repeats), "median exit of a block; KVM_EXIT_IO + kernel model");
        snprintf(name, sizeof name, "KVM exit round trip, %s, with plugin", what);
        result_add("kvm", name, "ns/exit", stat_of(with, repeats), "same block, alternate exits + handle_exit");
        snprintf(name, sizeof name, "plugin share of the %s round trip, A/B", what);
        result_add("kvm", name, "%", stat_of(share, repeats), "(with - without) / with; target < 1%");
        snprintf(name, sizeof name, "handle_exit timed inside the %s loop", what);
        char note[96];
        snprintf(note, sizeof note, "median call, minus %.0f ns of clock reads", clock_pair_ns);
        result_add("kvm", name, "ns/call", stat_of(inside, repeats), note);
        snprintf(name, sizeof name, "plugin share of the %s round trip, timed", what);
        result_add("kvm", name, "%", stat_of(inside_share, repeats), "in-situ / (without + in-situ); target < 1%");
    }

    g_main_loop_quit(h.loop);
    g_main_context_wakeup(h.context);
    pthread_join(thread, NULL);
    plugin_api.plugin_free(h.plugin);
    g_main_loop_unref(h.loop);
    g_main_context_unref(h.context);
    fk_vcpu_free(h.fk_vcpu);
    fk_vm_free(h.fk_vm);
    munmap(h.run, h.run_size);
    close(h.vcpu);
    close(h.vm);
    munmap(h.memory, 0x10000);
    close(h.kvm);
    return 0;
}
