/*
 * Heap checks of libHekiPlugin.so.  malloc and friends are defined here and
 * exported (-rdynamic), so the dlopen'ed library, its static Swift runtime
 * included, allocates through them.
 *
 * usage: alloc_check PATH-TO-libHekiPlugin.so exits N
 *   N calls of heki_plugin_handle_exit over every path; prints
 *   "allocations: A in N calls" and exits 0 when A is 0.
 * usage: alloc_check PATH-TO-libHekiPlugin.so cycles N
 *   one warm-up, then N times: new, caps, exits, dispatch, query, free;
 *   prints "live blocks: B after N cycles" (blocks allocated and not freed
 *   across the N cycles) and exits 0 when B is 0.
 * usage: alloc_check PATH cycles-without-free N
 *   the same without heki_plugin_free: the check's self-test (B > 0, exit 1).
 * Exits 2 when the counters cannot see the library's allocations at all.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <glib.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "../../include/heki_plugin.h"
#include "heki_v2_kernel.h"

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static atomic_int counting;
static atomic_long allocations;  /* calls while counting */
static atomic_long live;         /* blocks allocated minus blocks freed, always */

static void *counted(void *block) {
    if (atomic_load_explicit(&counting, memory_order_relaxed))
        atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    if (block) atomic_fetch_add_explicit(&live, 1, memory_order_relaxed);
    return block;
}
void *malloc(size_t size) { return counted(__libc_malloc(size)); }
void *calloc(size_t n, size_t size) { return counted(__libc_calloc(n, size)); }
void *realloc(void *p, size_t size) {
    if (!p) return counted(__libc_realloc(p, size));
    if (atomic_load_explicit(&counting, memory_order_relaxed))
        atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    void *block = __libc_realloc(p, size);
    if (!block && size == 0) atomic_fetch_sub_explicit(&live, 1, memory_order_relaxed);
    return block;
}
void free(void *p) {
    if (p) atomic_fetch_sub_explicit(&live, 1, memory_order_relaxed);
    __libc_free(p);
}
int posix_memalign(void **out, size_t align, size_t size) {
    *out = counted(__libc_memalign(align, size));
    return *out ? 0 : 12;
}
void *aligned_alloc(size_t align, size_t size) { return counted(__libc_memalign(align, size)); }
void *memalign(size_t align, size_t size) { return counted(__libc_memalign(align, size)); }

typedef HekiPlugin *(*new_fn)(const HekiHost *, int, const char *const *, char **);
typedef HekiVerdict (*handle_fn)(HekiPlugin *, uint32_t, const struct kvm_run *);
typedef int (*enable_caps_fn)(HekiPlugin *, char **);
typedef void (*free_fn)(HekiPlugin *);
typedef char *(*query_fn)(HekiPlugin *);
typedef void (*free_string_fn)(char *);

static void set_exit(unsigned char *run, uint32_t number, uint64_t reason, uint64_t value) {
    memcpy(run + 8, &number, sizeof number);
    memcpy(run + 32, &reason, sizeof reason);
    memcpy(run + 40, &value, sizeof value);
}

/* Every path of handle_exit: pin, weak pin, denial, malformed reason,
   register not enabled, foreign exit.  The numbers are v2's: the host is a
   Heki v2 kernel (heki_v2_kernel.h). */
static const struct { uint32_t number; uint64_t reason, value; } exits[] = {
    { 39, 1, 1u << 16 }, { 39, 2, 1u << 20 }, { 40, 2, 0x6f0 },
    { 40, 3, 0 }, { 40, 1, 0 }, { 2, 0, 0 },
};
#define EXIT_KINDS (sizeof exits / sizeof exits[0])

static new_fn plugin_new;
static handle_fn handle;
static enable_caps_fn enable_caps;
static free_fn plugin_free;
static query_fn query;
static free_string_fn free_string;

static HekiPlugin *make_plugin(GMainContext *context) {
    HekiHost host = { .size = sizeof host, .context = context, .check_extension = v2_kernel_check_extension,
                      .enable_cap = v2_kernel_enable_cap };
    const char *options[] = { "require-cr4=smep+smap", "configure-exits=cr0+cr4", "denial-exits=cr4",
                              "rate-limit=50", "require-caps=on" };
    char *error = NULL;
    HekiPlugin *plugin = plugin_new(&host, 5, options, &error);
    if (!plugin) { fprintf(stderr, "%s\n", error); exit(2); }
    /* require-caps=on: both capabilities enabled, so exits 39 and 40 are claimed. */
    if (enable_caps(plugin, &error) != 0) { fprintf(stderr, "%s\n", error); exit(2); }
    return plugin;
}

static void run_exits(HekiPlugin *plugin, unsigned char *run, long calls) {
    for (long i = 0; i < calls; i++) {
        size_t k = (size_t)i % EXIT_KINDS;
        set_exit(run, exits[k].number, exits[k].reason, exits[k].value);
        handle(plugin, (uint32_t)(i & 7), (const struct kvm_run *)run);
    }
}

/* new, caps, exits (past the rate limit and a full queue), dispatch, a
   query, an error path, free (unless `leak`, the check's own self-test).
   Returns how many blocks the plugin held once made. */
static long cycle(GMainContext *context, unsigned char *run, int leak) {
    long start = atomic_load(&live);
    HekiPlugin *plugin = make_plugin(context);
    long held = atomic_load(&live) - start;
    run_exits(plugin, run, 6000);
    while (g_main_context_iteration(context, FALSE)) {}
    free_string(query(plugin));
    if (!leak) plugin_free(plugin);
    const char *bad[] = { "on-denial=maybe" };
    char *error = NULL;
    HekiHost host = { .size = sizeof host, .context = context };
    if (plugin_new(&host, 1, bad, &error) || !error) exit(2);
    free_string(error);
    return held;
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    /* GLib 2.74's slice allocator keeps freed blocks in magazines. */
    setenv("G_SLICE", "always-malloc", 1);
    long count = atol(argv[3]);
    void *library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!library) { fprintf(stderr, "%s\n", dlerror()); return 2; }
    plugin_new = (new_fn)dlsym(library, "heki_plugin_new");
    handle = (handle_fn)dlsym(library, "heki_plugin_handle_exit");
    enable_caps = (enable_caps_fn)dlsym(library, "heki_plugin_enable_caps");
    plugin_free = (free_fn)dlsym(library, "heki_plugin_free");
    query = (query_fn)dlsym(library, "heki_plugin_query");
    free_string = (free_string_fn)dlsym(library, "heki_plugin_free_string");
    if (!plugin_new || !handle || !enable_caps || !plugin_free || !query || !free_string) return 2;

    GMainContext *context = g_main_context_new();
    unsigned char *run = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int failed;
    if (strcmp(argv[2], "exits") == 0) {
        /* The counter must see the library's allocations: plugin_new makes some. */
        atomic_store(&counting, 1);
        HekiPlugin *plugin = make_plugin(context);
        atomic_store(&counting, 0);
        long at_new = atomic_exchange(&allocations, 0);
        printf("allocations in heki_plugin_new: %ld\n", at_new);
        if (at_new == 0) { fprintf(stderr, "the allocation counter saw nothing\n"); return 2; }
        /* The main loop does not run meanwhile: the rate limit and the full
           queue paths are taken too. */
        atomic_store(&counting, 1);
        run_exits(plugin, run, count);
        atomic_store(&counting, 0);
        long seen = atomic_load(&allocations);
        printf("allocations: %ld in %ld calls\n", seen, count);
        while (g_main_context_iteration(context, FALSE)) {}
        plugin_free(plugin);
        failed = seen != 0;
    } else if (strcmp(argv[2], "cycles") == 0 || strcmp(argv[2], "cycles-without-free") == 0) {
        int leak = strcmp(argv[2], "cycles-without-free") == 0;
        /* The first cycle warms the runtime's one-time caches. */
        if (cycle(context, run, 0) <= 0) { fprintf(stderr, "the live counter saw nothing\n"); return 2; }
        long before = atomic_load(&live);
        for (long i = 0; i < count; i++) cycle(context, run, leak);
        long leaked = atomic_load(&live) - before;
        printf("live blocks: %ld after %ld cycles\n", leaked, count);
        failed = leaked != 0;
    } else {
        return 2;
    }
    g_main_context_unref(context);
    munmap(run, 4096);
    return failed;
}
