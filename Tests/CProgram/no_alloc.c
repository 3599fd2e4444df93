/*
 * Counts heap allocations made inside heki_plugin_handle_exit.  malloc and
 * friends are defined here and exported (-rdynamic), so the dlopen'ed
 * libHekiPlugin.so, its static Swift runtime included, allocates through them.
 *
 * usage: no_alloc PATH-TO-libHekiPlugin.so CALLS
 * Prints "allocations: N in M calls" and exits 0 when N is 0 (2 when the
 * counter cannot see the library's allocations at all).
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

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static atomic_int counting;
static atomic_long allocations;

static void count(void) {
    if (atomic_load_explicit(&counting, memory_order_relaxed))
        atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
}
void *malloc(size_t size) { count(); return __libc_malloc(size); }
void *calloc(size_t n, size_t size) { count(); return __libc_calloc(n, size); }
void *realloc(void *p, size_t size) { count(); return __libc_realloc(p, size); }
void free(void *p) { __libc_free(p); }
int posix_memalign(void **out, size_t align, size_t size) {
    count();
    *out = __libc_memalign(align, size);
    return *out ? 0 : 12;
}
void *aligned_alloc(size_t align, size_t size) { count(); return __libc_memalign(align, size); }
void *memalign(size_t align, size_t size) { count(); return __libc_memalign(align, size); }

typedef HekiPlugin *(*new_fn)(const HekiHost *, int, const char *const *, char **);
typedef HekiVerdict (*handle_fn)(HekiPlugin *, uint32_t, const struct kvm_run *);
typedef int (*cap_fn)(HekiPlugin *, HekiExitKind, int);
typedef void (*free_fn)(HekiPlugin *);

static void set_exit(unsigned char *run, uint32_t number, uint64_t reason, uint64_t value) {
    memcpy(run + 8, &number, sizeof number);
    memcpy(run + 32, &reason, sizeof reason);
    memcpy(run + 40, &value, sizeof value);
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    long calls = atol(argv[2]);
    void *library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!library) { fprintf(stderr, "%s\n", dlerror()); return 2; }
    new_fn plugin_new = (new_fn)dlsym(library, "heki_plugin_new");
    handle_fn handle = (handle_fn)dlsym(library, "heki_plugin_handle_exit");
    cap_fn cap_result = (cap_fn)dlsym(library, "heki_plugin_cap_result");
    free_fn plugin_free = (free_fn)dlsym(library, "heki_plugin_free");
    if (!plugin_new || !handle || !cap_result || !plugin_free) return 2;

    GMainContext *context = g_main_context_new();
    HekiHost host = { sizeof host, NULL, context, NULL, NULL };
    const char *options[] = { "require-cr4=smep+smap", "configure-exits=cr0+cr4", "denial-exits=cr4" };
    char *error = NULL;
    /* The counter must see the library's allocations: plugin_new makes some. */
    atomic_store(&counting, 1);
    HekiPlugin *plugin = plugin_new(&host, 3, options, &error);
    atomic_store(&counting, 0);
    if (!plugin) { fprintf(stderr, "%s\n", error); return 2; }
    long at_new = atomic_exchange(&allocations, 0);
    printf("allocations in heki_plugin_new: %ld\n", at_new);
    if (at_new == 0) { fprintf(stderr, "the allocation counter saw nothing\n"); return 2; }
    cap_result(plugin, HEKI_EXIT_CONFIGURE, 0);
    cap_result(plugin, HEKI_EXIT_DENIAL, 0);

    unsigned char *run = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    /* Every path of handle_exit: pin, weak pin, denial, malformed reason,
       register not enabled, foreign exit; past the rate limit and past a
       full queue, since the main loop does not run meanwhile. */
    struct { uint32_t number; uint64_t reason, value; } exits[] = {
        { 39, 1, 1u << 16 }, { 39, 2, 1u << 20 }, { 40, 2, 0x6f0 },
        { 40, 3, 0 }, { 40, 1, 0 }, { 2, 0, 0 },
    };
    size_t kinds = sizeof exits / sizeof exits[0];
    atomic_store(&counting, 1);
    for (long i = 0; i < calls; i++) {
        size_t k = (size_t)i % kinds;
        set_exit(run, exits[k].number, exits[k].reason, exits[k].value);
        handle(plugin, (uint32_t)(i & 7), (const struct kvm_run *)run);
    }
    atomic_store(&counting, 0);
    long seen = atomic_load(&allocations);
    printf("allocations: %ld in %ld calls\n", seen, calls);

    while (g_main_context_iteration(context, FALSE)) {}
    plugin_free(plugin);
    g_main_context_unref(context);
    munmap(run, 4096);
    return seen == 0 ? 0 : 1;
}
