/*
 * heki-bench: the benchmark suite of issue 4.  Loads libHekiPlugin.so with
 * dlopen and calls it through include/heki_plugin.h only, as a VMM does.
 *
 * usage: heki-bench PLUGIN.so REF.so JSON-OUT [quick]
 *        heki-bench load-sample PLUGIN.so      (one fresh-process load sample)
 *        heki-bench count PLUGIN.so REF.so plugin|ref configure|denial N storm|individual
 *        heki-bench count-dispatch PLUGIN.so N audit|none   (both under callgrind)
 *
 * Every figure is the median of repeated runs with min and max; every
 * comparison is a ratio measured in the same run (both sides alternate).
 * See README.md, "Performance".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

HsPluginApi plugin_api;
RefApi ref_api;

/* ---- clocks -------------------------------------------------------------- */

uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

uint64_t thread_cpu_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* ---- statistics and results ---------------------------------------------- */

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

Stat stat_of(const double *values, int n) {
    double *sorted = hs_uncounted_malloc(sizeof(double) * (size_t)(n ? n : 1));
    memcpy(sorted, values, sizeof(double) * (size_t)n);
    qsort(sorted, (size_t)n, sizeof(double), compare_double);
    Stat s = { 0, 0, 0, n };
    if (n) {
        s.min = sorted[0];
        s.max = sorted[n - 1];
        s.median = n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
    }
    hs_uncounted_free(sorted);
    return s;
}

static FILE *json;
static int json_first = 1;

static void json_entry(const char *group, const char *name, const char *unit, Stat s, const char *note) {
    if (!json) return;
    fprintf(json, "%s\n    {\"group\": \"%s\", \"name\": \"%s\", \"unit\": \"%s\", \"median\": %.6g, "
                  "\"min\": %.6g, \"max\": %.6g, \"repeats\": %d, \"note\": \"%s\"}",
            json_first ? "" : ",", group, name, unit, s.median, s.min, s.max, s.n, note ? note : "");
    json_first = 0;
}

static void print_number(char *out, size_t size, double v) {
    double a = v < 0 ? -v : v;
    if (a == 0) snprintf(out, size, "0");
    else if (a >= 1e6) snprintf(out, size, "%.3gM", v / 1e6);
    else if (a >= 100) snprintf(out, size, "%.0f", v);
    else if (a >= 10) snprintf(out, size, "%.1f", v);
    else if (a >= 0.01) snprintf(out, size, "%.3f", v);
    else snprintf(out, size, "%.2g", v);
}

void result_add(const char *group, const char *name, const char *unit, Stat s, const char *note) {
    char m[32], lo[32], hi[32];
    print_number(m, sizeof m, s.median);
    print_number(lo, sizeof lo, s.min);
    print_number(hi, sizeof hi, s.max);
    printf("| %-9s | %-44s | %10s | %10s | %10s | %-12s | %s\n", group, name, m, lo, hi, unit, note ? note : "");
    fflush(stdout);
    json_entry(group, name, unit, s, note);
}

void result_value(const char *group, const char *name, const char *unit, double value, const char *note) {
    Stat s = { value, value, value, 1 };
    result_add(group, name, unit, s, note);
}

/* ---- loading ------------------------------------------------------------- */

static void *symbol(void *library, const char *name) {
    void *p = dlsym(library, name);
    if (!p) {
        fprintf(stderr, "heki-bench: missing symbol %s\n", name);
        exit(2);
    }
    return p;
}

#define LOAD(api, lib, field, name) *(void **)(&(api).field) = symbol(lib, name)

static void load_plugin(const char *path) {
    char *error = NULL;
    HsLibrary *lib = hs_library_open(path, HEKI_PLUGIN_ABI_VERSION, &error);
    if (!lib) {
        fprintf(stderr, "heki-bench: %s\n", error ? error : "cannot load the plugin");
        exit(2);
    }
    plugin_api = *hs_library_api(lib); /* the library stays loaded */
}

static void load_ref(const char *path) {
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "heki-bench: %s\n", dlerror());
        exit(2);
    }
    LOAD(ref_api, lib, new_, "ref_new");
    LOAD(ref_api, lib, cap_result, "ref_cap_result");
    LOAD(ref_api, lib, handle_exit, "ref_handle_exit");
    LOAD(ref_api, lib, drain, "ref_drain");
    LOAD(ref_api, lib, free_, "ref_free");
}

void enable_caps_or_exit(HekiPlugin *plugin, const FkVm *kernel) {
    char *error = NULL;
    FkProfile p = fk_vm_profile(kernel);
    if (plugin_api.enable_caps(plugin, &error) != 0 ||
        plugin_api.exit_number(plugin, HEKI_EXIT_CONFIGURE) != p.exit_configure ||
        plugin_api.exit_number(plugin, HEKI_EXIT_DENIAL) != p.exit_denial) {
        fprintf(stderr, "heki-bench: heki_plugin_enable_caps: %s\n", error ? error : "the exits are not claimed");
        exit(2);
    }
}

/* ---- event callbacks that count ------------------------------------------ */

typedef struct {
    FkVm *kernel;             /* first: the host's opaque for fk_host_* (make_plugin) */
    atomic_long denials;      /* HEKI_DENIAL events, for the producers' pacing */
    uint64_t events[8];       /* by name, see event_index */
    uint64_t suppressed[8];   /* summed HEKI_SUPPRESSED counts, by coalesced kind */
    uint64_t bytes;
} EventTally;

/* A plugin on a Heki v2 kernel (the model, there only while the plugin
   checks it), its capabilities enabled: the exits of new_run() are claimed.
   `event` (NULL: none) gets `tally`. */
static HekiPlugin *make_plugin(GMainContext *context, int argc, const char *const *argv,
                               void (*event)(void *, const char *, const char *), EventTally *tally) {
    FkProfile v2 = fk_profile(FK_PROFILE_V2);
    tally->kernel = fk_vm_new(&v2, FK_DEFAULT_HOST_CR0, FK_DEFAULT_HOST_CR4);
    HekiHost host = { .size = sizeof host, .opaque = tally, .context = context, .event = event,
                      .check_extension = fk_host_check_extension, .enable_cap = fk_host_enable_cap };
    char *error = NULL;
    HekiPlugin *p = plugin_api.plugin_new(&host, argc, argv, &error);
    if (!p) {
        fprintf(stderr, "heki-bench: heki_plugin_new: %s\n", error ? error : "?");
        exit(2);
    }
    enable_caps_or_exit(p, tally->kernel);
    fk_vm_free(tally->kernel);
    tally->kernel = NULL;
    return p;
}

/* ---- kvm_run payloads ---------------------------------------------------- */

#define GUEST_CR4 0x3706f0ull /* a booted Linux's CR4, SMEP and SMAP set */
#define EXIT_CONFIGURE 39     /* the v2 kernel's (make_plugin) */
#define EXIT_DENIAL 40

static unsigned char *new_run(int denial) {
    unsigned char *run = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint32_t number = denial ? EXIT_DENIAL : EXIT_CONFIGURE;
    uint64_t value = denial ? GUEST_CR4 & ~FK_CR4_SMEP : FK_CR4_SMEP | FK_CR4_SMAP;
    fk_run_write_exit((struct kvm_run *)run, number, FK_HEKI_EXIT_REASON_CR4, value);
    return run;
}

/* ---- 0. clock reads: what each choice of stamp costs --------------------- */

static inline uint64_t read_tsc(void) {
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_ia32_rdtsc();
#else
    return now_ns();
#endif
}

static double clock_run(int which, long n) {
    volatile uint64_t sink = 0;
    struct timespec t;
    uint64_t c0 = thread_cpu_ns();
    for (long i = 0; i < n; i++) {
        switch (which) {
        case 0: clock_gettime(CLOCK_MONOTONIC, &t); sink += (uint64_t)t.tv_nsec; break;
        case 1: clock_gettime(CLOCK_MONOTONIC_COARSE, &t); sink += (uint64_t)t.tv_nsec; break;
        case 2: sink += (uint64_t)g_get_real_time(); break;
        default: sink += read_tsc(); break;
        }
    }
    return (double)(thread_cpu_ns() - c0) / (double)n;
}

static void bench_clocks(int repeats, long n) {
    static const char *names[] = { "CLOCK_MONOTONIC (g_get_monotonic_time)", "CLOCK_MONOTONIC_COARSE (rate window)",
                                   "g_get_real_time (CLOCK_REALTIME)", "rdtsc (event stamp)" };
    for (int which = 0; which < 4; which++) {
        double ns[64];
        clock_run(which, n / 10);
        for (int r = 0; r < repeats; r++) ns[r] = clock_run(which, n);
        result_add("clock", names[which], "ns/read", stat_of(ns, repeats), "back to back, CPU ns per read");
    }
}

/* ---- 1. handle_exit: ns per call, plugin vs the minimal C reference ------- */

/* The two paths of an exit: `storm`, the sustained storm (the plugin at its
   default rate limit coalesces; the reference's ring is full and it counts
   the overflow); `individual`, every event queued for the main loop (the
   plugin with rate-limit=0; the queue is drained between batches, outside
   the timed part). */
enum { PATH_STORM, PATH_INDIVIDUAL };
/* Per thread between drains: the threads' batches together stay below the
   4096-record queue, so no event of the individual path is coalesced. */
enum { INDIVIDUAL_BATCH_TOTAL = 3072 };

typedef struct {
    int use_ref;
    HekiPlugin *plugin;
    RefHandler *ref;
    int denial, path;
    long calls, batch; /* batch: calls between two drains (individual path) */
    uint32_t vcpu;
    pthread_barrier_t *barrier;
    uint64_t cpu_ns;
    long allocations;
    long verdict_sum;
} HxThread;

static void *hx_thread(void *arg) {
    HxThread *t = arg;
    unsigned char *run = new_run(t->denial);
    pthread_barrier_wait(t->barrier);
    uint64_t cpu = 0;
    long sum = 0, allocations = 0;
    long per_batch = t->path == PATH_INDIVIDUAL ? t->batch : t->calls;
    for (long done = 0; done < t->calls; done += per_batch) {
        long n = t->calls - done < per_batch ? t->calls - done : per_batch;
        long allocations0 = hs_alloc_thread_count();
        hs_alloc_count_on_thread(true);
        uint64_t c0 = thread_cpu_ns();
        if (t->use_ref) {
            for (long i = 0; i < n; i++) sum += ref_api.handle_exit(t->ref, t->vcpu, run);
        } else {
            for (long i = 0; i < n; i++)
                sum += plugin_api.handle_exit(t->plugin, t->vcpu, (const struct kvm_run *)run);
        }
        cpu += thread_cpu_ns() - c0;
        hs_alloc_count_on_thread(false);
        allocations += hs_alloc_thread_count() - allocations0;
        if (t->path == PATH_INDIVIDUAL) {
            /* The main loop's part, untimed: one thread drains while the others wait. */
            pthread_barrier_wait(t->barrier);
            if (t->vcpu == 0) {
                if (t->use_ref) ref_api.drain(t->ref);
                else plugin_api.flush(t->plugin);
            }
            pthread_barrier_wait(t->barrier);
        }
    }
    t->allocations = allocations;
    t->cpu_ns = cpu;
    t->verdict_sum = sum;
    munmap(run, 4096);
    return NULL;
}

static long total_exit_calls, total_exit_allocations;

/* Returns CPU ns per call (sum of the threads' CPU time / calls). */
static double hx_run(int use_ref, HekiPlugin *plugin, RefHandler *ref, int denial, int path, int threads, long calls) {
    pthread_t ids[16];
    HxThread args[16];
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, (unsigned)threads);
    /* The storm's 100 individual events a second never fill the queue. */
    if (!use_ref && path == PATH_STORM) plugin_api.flush(plugin);
    for (int i = 0; i < threads; i++) {
        args[i] = (HxThread){ use_ref, plugin, ref, denial, path, calls, INDIVIDUAL_BATCH_TOTAL / threads,
                              (uint32_t)i, &barrier, 0, 0, 0 };
        pthread_create(&ids[i], NULL, hx_thread, &args[i]);
    }
    uint64_t cpu = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(ids[i], NULL);
        cpu += args[i].cpu_ns;
        total_exit_calls += calls;
        total_exit_allocations += args[i].allocations;
        if (args[i].verdict_sum != 0) {
            fprintf(stderr, "heki-bench: unexpected verdicts\n");
            exit(1);
        }
    }
    pthread_barrier_destroy(&barrier);
    return (double)cpu / (double)(calls * threads);
}

static RefHandler *make_ref(void) {
    RefHandler *ref = ref_api.new_(EXIT_CONFIGURE, EXIT_DENIAL, 0);
    ref_api.cap_result(ref, 0, 3, 0);
    ref_api.cap_result(ref, 1, 3, 0);
    return ref;
}

static void bench_handle_exit(int repeats, long calls_per_thread) {
    static const char *path_names[] = { "storm", "individual" };
    for (int path = PATH_STORM; path <= PATH_INDIVIDUAL; path++) {
        GMainContext *context = g_main_context_new();
        /* storm: the default rate limit, 100/s; individual: none. */
        const char *options[] = { "vm-name=bench", "rate-limit=0" };
        EventTally quiet = { 0 };
        HekiPlugin *plugin = make_plugin(context, path == PATH_STORM ? 1 : 2, options, NULL, &quiet);
        RefHandler *ref = make_ref();
        long calls_total = path == PATH_STORM ? calls_per_thread : calls_per_thread / 4;
        for (int denial = 0; denial <= 1; denial++) {
            static const int thread_counts[] = { 1, 4 };
            double median_plugin[2], median_ref[2];
            for (int ti = 0; ti < 2; ti++) {
                int threads = thread_counts[ti];
                long calls = calls_total / threads;
                double plugin_ns[64], ref_ns[64], ratio[64];
                hx_run(0, plugin, ref, denial, path, threads, calls / 10); /* warm-up; fills the ref's ring */
                hx_run(1, plugin, ref, denial, path, threads, path == PATH_STORM ? 8192 + calls / 10 : calls / 10);
                for (int r = 0; r < repeats; r++) {
                    if (r % 2) {
                        ref_ns[r] = hx_run(1, plugin, ref, denial, path, threads, calls);
                        plugin_ns[r] = hx_run(0, plugin, ref, denial, path, threads, calls);
                    } else {
                        plugin_ns[r] = hx_run(0, plugin, ref, denial, path, threads, calls);
                        ref_ns[r] = hx_run(1, plugin, ref, denial, path, threads, calls);
                    }
                    ratio[r] = plugin_ns[r] / ref_ns[r];
                }
                char name[96];
                const char *what = denial ? "DENIAL" : "CONFIGURE";
                const char *s = threads > 1 ? "s" : "";
                Stat p = stat_of(plugin_ns, repeats), c = stat_of(ref_ns, repeats);
                median_plugin[ti] = p.median;
                median_ref[ti] = c.median;
                snprintf(name, sizeof name, "%s %s %d thread%s: plugin", what, path_names[path], threads, s);
                result_add("exit", name, "ns/call", p, "CPU ns per call");
                snprintf(name, sizeof name, "%s %s %d thread%s: minimal C", what, path_names[path], threads, s);
                result_add("exit", name, "ns/call", c, "CPU ns per call");
                snprintf(name, sizeof name, "%s %s %d thread%s: plugin / C", what, path_names[path], threads, s);
                result_add("exit", name, "ratio", stat_of(ratio, repeats), "target <= 1.3");
            }
            char name[96];
            const char *what = denial ? "DENIAL" : "CONFIGURE";
            snprintf(name, sizeof name, "%s %s: plugin 4 threads / 1", what, path_names[path]);
            result_value("exit", name, "ratio", median_plugin[1] / median_plugin[0], "medians; target <= 1.2");
            snprintf(name, sizeof name, "%s %s: minimal C 4 threads / 1", what, path_names[path]);
            result_value("exit", name, "ratio", median_ref[1] / median_ref[0], "medians");
        }
        plugin_api.plugin_free(plugin);
        ref_api.free_(ref);
        g_main_context_unref(context);
    }
}

static int event_index(const char *name) {
    /* HEKI_CONFIGURE, HEKI_DENIAL, HEKI_WEAK_PINNING, HEKI_MALFORMED_EXIT,
       HEKI_CAPABILITY, HEKI_SUPPRESSED */
    switch (name[5]) {
    case 'C': return name[6] == 'O' ? 0 : 4;
    case 'D': return 1;
    case 'W': return 2;
    case 'M': return 3;
    case 'S': return 5;
    default: return 7;
    }
}

static void on_event(void *opaque, const char *name, const char *data) {
    EventTally *tally = opaque;
    int index = event_index(name);
    tally->events[index]++;
    if (index == 1) atomic_store_explicit(&tally->denials, (long)tally->events[1], memory_order_relaxed);
    tally->bytes += strlen(data);
    if (index == 5) {
        const char *event = strstr(data, "\"event\":\"");
        const char *count = strstr(data, "\"count\":");
        if (event && count) tally->suppressed[event_index(event + 9)] += strtoull(count + 8, NULL, 10);
    }
}

/* ---- producers shared by the dispatch and storm benchmarks ---------------- */

typedef struct {
    HekiPlugin *plugin;
    GMainContext *context;
    long calls;
    uint32_t vcpu;
    pthread_barrier_t *barrier;
    atomic_int *running;
    atomic_int *stop; /* non-NULL: call until it is set, then report the count in `calls` */
    /* Pacing (non-NULL): at most PACING_WINDOW calls not yet delivered, so
       the 4096-record queue never overflows and nothing is coalesced. */
    atomic_long *produced;
    atomic_long *delivered;
    long allocations;
} Producer;

enum { PACING_BATCH = 64, PACING_WINDOW = 3072 };

static void *producer_thread(void *arg) {
    Producer *p = arg;
    unsigned char *run = new_run(1);
    pthread_barrier_wait(p->barrier);
    long allocations0 = hs_alloc_thread_count();
    hs_alloc_count_on_thread(true);
    if (p->stop) {
        long calls = 0;
        while (!atomic_load_explicit(p->stop, memory_order_relaxed)) {
            if (atomic_load_explicit(p->produced, memory_order_relaxed) -
                    atomic_load_explicit(p->delivered, memory_order_relaxed) > PACING_WINDOW) {
                sched_yield();
                continue;
            }
            for (int i = 0; i < PACING_BATCH; i++)
                plugin_api.handle_exit(p->plugin, p->vcpu, (const struct kvm_run *)run);
            atomic_fetch_add_explicit(p->produced, PACING_BATCH, memory_order_relaxed);
            calls += PACING_BATCH;
        }
        p->calls = calls;
    } else {
        for (long i = 0; i < p->calls; i++) plugin_api.handle_exit(p->plugin, p->vcpu, (const struct kvm_run *)run);
    }
    hs_alloc_count_on_thread(false);
    p->allocations = hs_alloc_thread_count() - allocations0;
    munmap(run, 4096);
    if (atomic_fetch_sub(p->running, 1) == 1) g_main_context_wakeup(p->context);
    return NULL;
}

static void pin_smep(HekiPlugin *plugin) {
    unsigned char *run = new_run(0);
    plugin_api.handle_exit(plugin, 0, (const struct kvm_run *)run);
    munmap(run, 4096);
}

/* ---- 3. main-loop dispatch: events/s ------------------------------------- */

/* A fresh audit file's path (audit-log=), under TMPDIR: the plugin opens it
   itself; the caller unlinks it after each plugin. */
static void audit_path(char *path, size_t size) {
    const char *dir = getenv("TMPDIR");
    snprintf(path, size, "%s/heki-bench-audit-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) {
        perror(path);
        exit(2);
    }
    close(fd);
}

/* The dispatch group's plugin: vm-name, rate-limit=0, audit-log=`path`
   (made here; the caller unlinks it) when `audit`; SMEP pinned, the
   start's events delivered. */
static HekiPlugin *make_dispatch_plugin(GMainContext *context, EventTally *tally, int audit, char *path, size_t size) {
    char audit_option[4200];
    audit_path(path, size);
    snprintf(audit_option, sizeof audit_option, "audit-log=%s", path);
    const char *options[] = { "vm-name=bench", "rate-limit=0", audit_option };
    HekiPlugin *plugin = make_plugin(context, audit ? 3 : 2, options, on_event, tally);
    pin_smep(plugin);
    while (g_main_context_iteration(context, FALSE)) {}
    return plugin;
}

/* One case of the dispatch group: 4 paced producers, the main thread runs
   the context; `audit`: with audit-log= too (each event also an audit line). */
static void bench_dispatch_case(int repeats, double seconds, int audit) {
    enum { THREADS = 4 };
    double cpu_rate[64], wall_rate[64], consumer_ns[64], per_iteration[64];
    int exact = 1;
    uint64_t coalesced = 0;
    uint64_t delivered_total = 0, bytes_total = 0, audit_bytes = 0;
    for (int r = 0; r < repeats; r++) {
        GMainContext *context = g_main_context_new();
        g_main_context_push_thread_default(context);
        EventTally tally = { 0 };
        char path[4096];
        HekiPlugin *plugin = make_dispatch_plugin(context, &tally, audit, path, sizeof path);
        uint64_t before = tally.events[1];
        pthread_t ids[THREADS];
        Producer producers[THREADS];
        pthread_barrier_t barrier;
        atomic_int running = THREADS, stop = 0;
        atomic_long produced = (long)before;
        pthread_barrier_init(&barrier, NULL, THREADS + 1);
        for (int i = 0; i < THREADS; i++) {
            producers[i] = (Producer){ plugin, context, 0, (uint32_t)i, &barrier, &running, &stop,
                                       &produced, &tally.denials, 0 };
            pthread_create(&ids[i], NULL, producer_thread, &producers[i]);
        }
        pthread_barrier_wait(&barrier);
        uint64_t w0 = now_ns(), c0 = thread_cpu_ns();
        long iterations = 0;
        uint64_t end = w0 + (uint64_t)(seconds * 1e9);
        while (atomic_load(&running) > 0) {
            g_main_context_iteration(context, TRUE);
            iterations++;
            if (now_ns() >= end) atomic_store(&stop, 1);
        }
        while (g_main_context_iteration(context, FALSE)) iterations++;
        uint64_t w1 = now_ns(), c1 = thread_cpu_ns();
        uint64_t delivered = tally.events[1] - before;
        if (getenv("HEKI_BENCH_DEBUG"))
            fprintf(stderr, "dispatch%s: %ld iterations, %llu delivered, %.3f s main-loop CPU, %.3f s wall\n",
                    audit ? " + audit" : "", iterations, (unsigned long long)delivered,
                    (double)(c1 - c0) / 1e9, (double)(w1 - w0) / 1e9);
        long total_calls = 0;
        for (int i = 0; i < THREADS; i++) {
            pthread_join(ids[i], NULL);
            total_calls += producers[i].calls;
            total_exit_calls += producers[i].calls;
            total_exit_allocations += producers[i].allocations;
        }
        plugin_api.plugin_free(plugin);
        if (audit) {
            /* Every delivered event is one line: the file's lines are counted. */
            FILE *f = fopen(path, "r");
            uint64_t lines = 0;
            char chunk[65536];
            size_t got;
            while (f && (got = fread(chunk, 1, sizeof chunk, f)) > 0) {
                audit_bytes += got;
                for (size_t i = 0; i < got; i++) lines += chunk[i] == '\n';
            }
            if (f) fclose(f);
            uint64_t all = 0;
            for (int i = 0; i < 8; i++) all += tally.events[i];
            if (lines != all) exact = 0;
        }
        unlink(path);
        cpu_rate[r] = (double)delivered / ((double)(c1 - c0) / 1e9);
        consumer_ns[r] = (double)(c1 - c0) / (double)delivered;
        per_iteration[r] = iterations ? (double)delivered / (double)iterations : 0;
        wall_rate[r] = (double)delivered / ((double)(w1 - w0) / 1e9);
        delivered_total += delivered;
        bytes_total += tally.bytes;
        if (tally.events[1] + tally.suppressed[1] != (uint64_t)total_calls) exact = 0;
        coalesced += tally.suppressed[1];
        pthread_barrier_destroy(&barrier);
        g_main_context_pop_thread_default(context);
        g_main_context_unref(context);
    }
    char note[256], audit_note[64] = "";
    if (audit)
        snprintf(audit_note, sizeof audit_note, ", %.0f audit bytes/event",
                 delivered_total ? (double)audit_bytes / (double)delivered_total : 0.0);
    /* Events per loop iteration: a loop that keeps up wakes for few events,
       and each wake-up's cost (poll, eventfd) is shared by fewer. */
    Stat batch = stat_of(per_iteration, repeats);
    snprintf(note, sizeof note, "4 paced vCPU threads, rate-limit=0: %llu coalesced; accounting %s; %.0f bytes/event%s; "
             "%.0f events per loop iteration (%.0f to %.0f)",
             (unsigned long long)coalesced, exact ? "exact" : "WRONG",
             delivered_total ? (double)bytes_total / (double)delivered_total : 0.0, audit_note,
             batch.median, batch.min, batch.max);
    result_add("dispatch", audit ? "HEKI_DENIAL events/s, with audit-log (wall clock)"
                                 : "HEKI_DENIAL events/s delivered (wall clock)",
               "events/s", stat_of(wall_rate, repeats),
               audit ? "JSON + host callback + audit line; target >= 5M" : "JSON + host callback; target >= 5M");
    result_add("dispatch", "  main-loop CPU per event", "ns/event", stat_of(consumer_ns, repeats), note);
    result_add("dispatch", "  events per main-loop CPU second", "events/s", stat_of(cpu_rate, repeats), "");
}

/* Counted under callgrind (--toggle-collect=counted_dispatch): the main loop
   delivering what is queued, GLib's iteration included. */
__attribute__((noinline)) void counted_dispatch(GMainContext *context) {
    while (g_main_context_iteration(context, FALSE)) {}
    __asm__ volatile("" ::: "memory");
}

/* `heki-bench count-dispatch PLUGIN N audit|none`: N HEKI_DENIAL events
   queued from this thread in batches of 3072 (outside the count), each
   batch delivered inside counted_dispatch. */
static int count_dispatch_sample(long n, int audit) {
    unsigned char *run = new_run(1);
    GMainContext *context = g_main_context_new();
    EventTally tally = { 0 };
    char path[4096];
    HekiPlugin *plugin = make_dispatch_plugin(context, &tally, audit, path, sizeof path);
    /* Warm-up: one batch outside the count (buffers, first pages of the queue). */
    for (long i = 0; i < INDIVIDUAL_BATCH_TOTAL; i++) plugin_api.handle_exit(plugin, 0, (const struct kvm_run *)run);
    while (g_main_context_iteration(context, FALSE)) {}
    uint64_t before = tally.events[1], cpu = 0;
    for (long done = 0; done < n;) {
        long batch = n - done < INDIVIDUAL_BATCH_TOTAL ? n - done : INDIVIDUAL_BATCH_TOTAL;
        for (long i = 0; i < batch; i++) plugin_api.handle_exit(plugin, 0, (const struct kvm_run *)run);
        uint64_t c0 = thread_cpu_ns();
        counted_dispatch(context);
        cpu += thread_cpu_ns() - c0;
        done += batch;
    }
    int ok = tally.events[1] - before == (uint64_t)n;
    if (getenv("HEKI_BENCH_DEBUG"))  /* one thread, records in this core's cache: no valgrind for this figure */
        fprintf(stderr, "count-dispatch: %.1f ns of main-loop CPU per event\n", (double)cpu / (double)n);
    plugin_api.plugin_free(plugin);
    unlink(path);
    g_main_context_unref(context);
    munmap(run, 4096);
    return ok ? 0 : 1;
}

static double callgrind_per_unit(const char *self, const char *counted, const char *const *args, long n);

static void bench_dispatch(const char *self, const char *plugin, int repeats, double seconds) {
    bench_dispatch_case(repeats, seconds, 0);
    bench_dispatch_case(repeats, seconds, 1);
    if (system("valgrind --version >/dev/null 2>&1") != 0) {
        printf("| dispatch  | valgrind not installed: instruction counts skipped\n");
        return;
    }
    const char *none[] = { "count-dispatch", plugin, "100000", "none", NULL };
    const char *audit[] = { "count-dispatch", plugin, "100000", "audit", NULL };
    result_value("dispatch", "main-loop instructions per event", "instr/event",
                 callgrind_per_unit(self, "counted_dispatch", none, 100000),
                 "callgrind, batches of 3072: GLib + JSON + host callback");
    result_value("dispatch", "main-loop instructions per event, audit-log", "instr/event",
                 callgrind_per_unit(self, "counted_dispatch", audit, 100000),
                 "callgrind: the same + audit line (user space; write(2) not counted)");
}

/* ---- 4. the denial storm -------------------------------------------------- */

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) kib = strtol(line + 6, NULL, 10);
    if (f) fclose(f);
    return kib;
}

static int compare_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

typedef struct { uint64_t last; uint64_t *lateness; long count, capacity; } TimerProbe;

static gboolean probe_tick(gpointer data) {
    TimerProbe *probe = data;
    uint64_t now = now_ns();
    if (probe->last && probe->count < probe->capacity) {
        uint64_t gap = now - probe->last;
        probe->lateness[probe->count++] = gap > 1000000 ? gap - 1000000 : 0;
    }
    probe->last = now;
    return G_SOURCE_CONTINUE;
}

static void bench_storm(int repeats, long total) {
    enum { THREADS = 4 };
    double growth[16], p99[16], max_iteration[16], seconds[16], timer_p99[16];
    int exact = 1;
    char detail[256] = "";
    for (int r = 0; r < repeats; r++) {
        GMainContext *context = g_main_context_new();
        g_main_context_push_thread_default(context);
        g_main_context_acquire(context);
        EventTally tally = { 0 };
        const char *options[] = { "vm-name=bench" }; /* default rate-limit, 100/s */
        HekiPlugin *plugin = make_plugin(context, 1, options, on_event, &tally);
        pin_smep(plugin);
        while (g_main_context_iteration(context, FALSE)) {}
        TimerProbe probe = { 0, hs_uncounted_malloc(sizeof(uint64_t) * 100000), 0, 100000 };
        GSource *timer = g_timeout_source_new(1);
        g_source_set_callback(timer, probe_tick, &probe, NULL);
        g_source_attach(timer, context);
        long capacity = 1000000, iterations = 0;
        uint64_t *busy = hs_uncounted_malloc(sizeof(uint64_t) * (size_t)capacity);
        long rss0 = rss_kib();

        pthread_t ids[THREADS];
        Producer producers[THREADS];
        pthread_barrier_t barrier;
        atomic_int running = THREADS;
        pthread_barrier_init(&barrier, NULL, THREADS + 1);
        for (int i = 0; i < THREADS; i++) {
            producers[i] = (Producer){ plugin, context, total / THREADS, (uint32_t)i, &barrier, &running, NULL,
                                       NULL, NULL, 0 };
            pthread_create(&ids[i], NULL, producer_thread, &producers[i]);
        }
        pthread_barrier_wait(&barrier);
        uint64_t w0 = now_ns();
        GPollFD fds[32];
        /* One loop iteration by hand: its busy part (check + dispatch) is timed. */
        while (atomic_load(&running) > 0) {
            gint priority, timeout;
            g_main_context_prepare(context, &priority);
            gint n = g_main_context_query(context, priority, &timeout, fds, 32);
            g_poll(fds, (guint)n, timeout);
            uint64_t t0 = now_ns();
            if (g_main_context_check(context, priority, fds, n)) g_main_context_dispatch(context);
            uint64_t t1 = now_ns();
            if (iterations < capacity) busy[iterations++] = t1 - t0;
        }
        uint64_t w1 = now_ns();
        for (int i = 0; i < THREADS; i++) pthread_join(ids[i], NULL);
        long rss1 = rss_kib();
        g_source_destroy(timer);
        g_source_unref(timer);
        plugin_api.plugin_free(plugin);
        for (int i = 0; i < THREADS; i++) {
            total_exit_calls += producers[i].calls;
            total_exit_allocations += producers[i].allocations;
        }
        uint64_t denials = tally.events[1] + tally.suppressed[1];
        if (denials != (uint64_t)(total / THREADS) * THREADS) exact = 0;
        snprintf(detail, sizeof detail, "last run: %llu individual + %llu suppressed = %llu of %ld; %s",
                 (unsigned long long)tally.events[1], (unsigned long long)tally.suppressed[1],
                 (unsigned long long)denials, (total / THREADS) * THREADS, exact ? "exact" : "WRONG");
        qsort(busy, (size_t)iterations, sizeof *busy, compare_u64);
        qsort(probe.lateness, (size_t)probe.count, sizeof(uint64_t), compare_u64);
        growth[r] = (double)(rss1 - rss0) / 1024.0;
        p99[r] = iterations ? (double)busy[(iterations * 99) / 100] / 1e6 : 0;
        max_iteration[r] = iterations ? (double)busy[iterations - 1] / 1e6 : 0;
        timer_p99[r] = probe.count ? (double)probe.lateness[(probe.count * 99) / 100] / 1e6 : 0;
        seconds[r] = (double)(w1 - w0) / 1e9;
        hs_uncounted_free(busy);
        hs_uncounted_free(probe.lateness);
        pthread_barrier_destroy(&barrier);
        g_main_context_release(context);
        g_main_context_pop_thread_default(context);
        g_main_context_unref(context);
    }
    char name[96];
    snprintf(name, sizeof name, "storm %ldM denials, 4 threads: RSS growth", total / 1000000);
    result_add("storm", name, "MiB", stat_of(growth, repeats), "target < 4 MiB");
    result_value("storm", "individual + suppressed == denials", "bool", exact, detail);
    result_add("storm", "main-loop iteration busy time p99", "ms", stat_of(p99, repeats), "check+dispatch; target < 5 ms");
    result_add("storm", "main-loop iteration busy time max", "ms", stat_of(max_iteration, repeats), "");
    result_add("storm", "1 ms timer on the loop: lateness p99", "ms", stat_of(timer_p99, repeats),
               "includes OS scheduling: 5 threads on 2 cores");
    result_add("storm", "storm duration", "s", stat_of(seconds, repeats), "");
}

/* ---- 5. dlopen + new + free, first load in a fresh process ---------------- */

static int load_sample(const char *path) {
    uint64_t t0 = now_ns();
    HsLibrary *lib = hs_library_open(path, HEKI_PLUGIN_ABI_VERSION, NULL);
    if (!lib) return 2;
    HekiPlugin *(*new_)(const HekiHost *, int, const char *const *, char **) = hs_library_api(lib)->plugin_new;
    void (*free_)(HekiPlugin *) = hs_library_api(lib)->plugin_free;
    uint64_t t1 = now_ns();
    GMainContext *context = g_main_context_new();
    HekiHost host = { .size = sizeof host, .context = context };
    const char *options[] = { "vm-name=bench", "on-denial=pause", "require-cr4=smep+smap" };
    char *error = NULL;
    HekiPlugin *plugin = new_(&host, 3, options, &error);
    if (!plugin) return 2;
    uint64_t t2 = now_ns();
    free_(plugin);
    uint64_t t3 = now_ns();
    /* A second plugin in the same (warm) process. */
    plugin = new_(&host, 3, options, &error);
    free_(plugin);
    uint64_t t4 = now_ns();
    hs_library_close(lib);
    g_main_context_unref(context);
    printf("%llu %llu %llu %llu %llu\n", (unsigned long long)(t3 - t0), (unsigned long long)(t1 - t0),
           (unsigned long long)(t2 - t1), (unsigned long long)(t3 - t2), (unsigned long long)(t4 - t3));
    return 0;
}

static void bench_load(const char *self, const char *path, int repeats) {
    double total[64], open_[64], create[64], destroy[64], warm[64];
    int n = 0;
    for (int r = 0; r < repeats; r++) {
        int fds[2];
        if (pipe(fds) != 0) return;
        pid_t pid = fork();
        if (pid == 0) {
            dup2(fds[1], 1);
            close(fds[0]);
            execl(self, self, "load-sample", path, (char *)NULL);
            _exit(127);
        }
        close(fds[1]);
        char buffer[256] = "";
        ssize_t got = read(fds[0], buffer, sizeof buffer - 1);
        close(fds[0]);
        int status;
        waitpid(pid, &status, 0);
        unsigned long long a, b, c, d, e;
        if (got > 0 && sscanf(buffer, "%llu %llu %llu %llu %llu", &a, &b, &c, &d, &e) == 5) {
            total[n] = (double)a / 1e6;
            open_[n] = (double)b / 1e6;
            create[n] = (double)c / 1e6;
            destroy[n] = (double)d / 1e6;
            warm[n] = (double)e / 1e6;
            n++;
        }
    }
    result_add("load", "dlopen + new + free, first in a fresh process", "ms", stat_of(total, n), "target < 3 ms");
    result_add("load", "  of which dlopen + dlsym", "ms", stat_of(open_, n), "");
    result_add("load", "  of which heki_plugin_new (first)", "ms", stat_of(create, n), "");
    result_add("load", "  of which heki_plugin_free", "ms", stat_of(destroy, n), "");
    result_add("load", "new + free again, same process", "ms", stat_of(warm, n), "library already mapped");
}

/* ---- 1b. instructions per call under callgrind (noise-free) --------------- */

/* One of these runs under callgrind with --toggle-collect=<its name>: the
   instructions counted are those of N handle_exit calls and nothing else. */
#define COUNTED(name, call)                                                    \
    __attribute__((noinline)) void name(void *self, unsigned char *run, long n) { \
        for (long i = 0; i < n; i++) call;                                     \
        __asm__ volatile("" ::: "memory");                                     \
    }
COUNTED(counted_plugin, plugin_api.handle_exit(self, 0, (const struct kvm_run *)run))
COUNTED(counted_ref, ref_api.handle_exit(self, 0, run))

/* `heki-bench count PLUGIN REF plugin|ref configure|denial N storm|individual`:
   N calls of one path, inside counted_* only (the warm-up and the drains of
   the individual path are outside it). */
static int count_sample(const char *which, int denial, long n, int path) {
    unsigned char *run = new_run(denial);
    int plugin_side = strcmp(which, "plugin") == 0;
    GMainContext *context = g_main_context_new();
    HekiPlugin *plugin = NULL;
    RefHandler *ref = NULL;
    void *self;
    if (plugin_side) {
        const char *options[] = { "vm-name=bench", "rate-limit=0" };
        EventTally quiet = { 0 };
        plugin = make_plugin(context, path == PATH_STORM ? 1 : 2, options, NULL, &quiet);
        pin_smep(plugin);
        self = plugin;
    } else {
        ref = make_ref();
        unsigned char *pin = new_run(0);
        ref_api.handle_exit(ref, 0, pin);
        munmap(pin, 4096);
        self = ref;
    }
    /* Warm-up: past the plugin's first window (100 events) and the ref's ring (4096). */
    for (long i = 0; i < 5000; i++) {
        if (plugin_side) plugin_api.handle_exit(plugin, 0, (const struct kvm_run *)run);
        else ref_api.handle_exit(ref, 0, run);
    }
    for (long done = 0; done < n;) {
        long batch = path == PATH_STORM ? n : INDIVIDUAL_BATCH_TOTAL;
        if (batch > n - done) batch = n - done;
        if (path == PATH_INDIVIDUAL) {
            if (plugin_side) plugin_api.flush(plugin);
            else ref_api.drain(ref);
        }
        if (plugin_side) counted_plugin(self, run, batch);
        else counted_ref(self, run, batch);
        done += batch;
    }
    if (plugin) plugin_api.plugin_free(plugin);
    if (ref) ref_api.free_(ref);
    g_main_context_unref(context);
    munmap(run, 4096);
    return 0;
}

/* Runs `heki-bench ARGS...` under callgrind, counting inside the function
   `counted` only; returns its instructions divided by `n`, or -1. */
static double callgrind_per_unit(const char *self, const char *counted, const char *const *args, long n) {
    char out[] = "/tmp/heki-bench-callgrind-XXXXXX";
    int fd = mkstemp(out);
    if (fd < 0) return -1;
    close(fd);
    char out_arg[128], toggle[96];
    snprintf(out_arg, sizeof out_arg, "--callgrind-out-file=%s", out);
    snprintf(toggle, sizeof toggle, "--toggle-collect=%s", counted);
    const char *argv[16] = { "valgrind", "--tool=callgrind", out_arg, toggle, self };
    int argc = 5;
    for (int i = 0; args[i] && argc < 15; i++) argv[argc++] = args[i];
    argv[argc] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execvp("valgrind", (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    double per_unit = -1;
    FILE *f = fopen(out, "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        unsigned long long total;
        if (sscanf(line, "totals: %llu", &total) == 1 || sscanf(line, "summary: %llu", &total) == 1)
            per_unit = (double)total / (double)n;
    }
    if (f) fclose(f);
    unlink(out);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? per_unit : -1;
}

/* `heki-bench count ...` under callgrind: instructions per call, or -1. */
static double callgrind_per_call(const char *self, const char *plugin, const char *ref, const char *which,
                                 int denial, int path, long n) {
    char counted[32], count[32];
    snprintf(counted, sizeof counted, "counted_%s", which);
    snprintf(count, sizeof count, "%ld", n);
    const char *args[] = { "count", plugin, ref, which, denial ? "denial" : "configure", count,
                           path == PATH_STORM ? "storm" : "individual", NULL };
    return callgrind_per_unit(self, counted, args, n);
}

static void bench_instructions(const char *self, const char *plugin, const char *ref) {
    if (system("valgrind --version >/dev/null 2>&1") != 0) {
        printf("| instr     | valgrind not installed: instruction counts skipped\n");
        return;
    }
    static const char *path_names[] = { "storm", "individual" };
    for (int path = PATH_STORM; path <= PATH_INDIVIDUAL; path++) {
        for (int denial = 0; denial <= 1; denial++) {
            const char *what = denial ? "DENIAL" : "CONFIGURE";
            double p = callgrind_per_call(self, plugin, ref, "plugin", denial, path, 100000);
            double r = callgrind_per_call(self, plugin, ref, "ref", denial, path, 100000);
            char name[96];
            snprintf(name, sizeof name, "%s %s: plugin", what, path_names[path]);
            result_value("instr", name, "instr/call", p, "callgrind, 1 thread");
            snprintf(name, sizeof name, "%s %s: minimal C", what, path_names[path]);
            result_value("instr", name, "instr/call", r, "callgrind, 1 thread");
            snprintf(name, sizeof name, "%s %s: plugin / C", what, path_names[path]);
            result_value("instr", name, "ratio", p > 0 && r > 0 ? p / r : -1, "noise-free; target <= 1.3");
        }
    }
}

/* ---- main ----------------------------------------------------------------- */

static double load_average(void) {
    double one = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &one) != 1) one = -1;
        fclose(f);
    }
    return one;
}

/* HEKI_BENCH_ONLY=group[,group]: run only those groups (for profiling). */
static int wanted(const char *group) {
    const char *only = getenv("HEKI_BENCH_ONLY");
    return !only || strstr(only, group) != NULL;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "load-sample") == 0) return load_sample(argv[2]);
    if (argc == 8 && strcmp(argv[1], "count") == 0) {
        load_plugin(argv[2]);
        load_ref(argv[3]);
        return count_sample(argv[4], strcmp(argv[5], "denial") == 0, atol(argv[6]),
                            strcmp(argv[7], "individual") == 0 ? PATH_INDIVIDUAL : PATH_STORM);
    }
    if (argc == 5 && strcmp(argv[1], "count-dispatch") == 0) {
        load_plugin(argv[2]);
        return count_dispatch_sample(atol(argv[3]), strcmp(argv[4], "audit") == 0);
    }
    if (argc < 4) {
        fprintf(stderr, "usage: heki-bench PLUGIN.so REF.so JSON-OUT [quick]\n");
        return 2;
    }
    int quick = argc > 4 && strcmp(argv[4], "quick") == 0;
    setenv("G_SLICE", "always-malloc", 1);
    load_plugin(argv[1]);
    load_ref(argv[2]);
    json = fopen(argv[3], "w");
    if (!json) {
        perror(argv[3]);
        return 2;
    }
    char self[4096];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    self[len > 0 ? len : 0] = 0;
    time_t started = time(NULL);
    char date[64];
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&started));
    double load_before = load_average();
    fprintf(json, "{\n  \"date\": \"%s\",\n  \"cpus\": %ld,\n  \"loadavg-before\": %.2f,\n  \"results\": [",
            date, sysconf(_SC_NPROCESSORS_ONLN), load_before);
    printf("heki-bench %s, %ld CPUs, load average %.2f at start%s\n", date, sysconf(_SC_NPROCESSORS_ONLN),
           load_before, quick ? " (quick)" : "");
    printf("| %-9s | %-44s | %10s | %10s | %10s | %-12s | %s\n", "group", "measure", "median", "min", "max",
           "unit", "note");
    printf("|-----------|----------------------------------------------|------------|------------|------------|--------------|------\n");

    int repeats = quick ? 3 : 11;
    if (wanted("clock")) bench_clocks(repeats, 2000000);
    if (wanted("exit")) bench_handle_exit(repeats, quick ? 400000 : 2000000);
    if (wanted("instr")) bench_instructions(self, argv[1], argv[2]);
    if (wanted("dispatch")) bench_dispatch(self, argv[1], quick ? 3 : 9, quick ? 0.2 : 0.5);
    if (wanted("storm")) bench_storm(quick ? 1 : 3, quick ? 2000000 : 10000000);
    result_value("alloc", "heap allocations per handle_exit",
                 "allocs/call", total_exit_calls ? (double)total_exit_allocations / (double)total_exit_calls : -1,
                 "malloc interposed, every handle_exit call of this run");
    {
        char note[96];
        snprintf(note, sizeof note, "%ld allocations in %ld calls; target 0", total_exit_allocations, total_exit_calls);
        result_value("alloc", "heap allocations in handle_exit, total", "allocs", (double)total_exit_allocations, note);
    }
    if (wanted("load")) bench_load(self, argv[1], quick ? 5 : 21);
    if (wanted("kvm") && kvm_bench(quick ? 5 : 41, quick ? 1000 : 2000) < 0)
        printf("| kvm       | /dev/kvm not available: skipped\n");
    double load_after = load_average();
    printf("load average at end: %.2f\n", load_after);
    fprintf(json, "\n  ],\n  \"loadavg-after\": %.2f\n}\n", load_after);
    fclose(json);
    return 0;
}
