/*
 * Heap checks of libHekiPlugin.so.  Linked with HekiHostSupport's
 * alloc_counter.c and -rdynamic, so the dlopen'ed library, its static Swift
 * runtime included, allocates through the counted malloc.
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
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "heki_alloc_counter.h"
#include "heki_host_support.h"
#include "heki_kernel_model.h"

/* Every path of handle_exit: pin, weak pin, denial, malformed reason,
   register not enabled, foreign exit.  The numbers are v2's: the host's
   KVM answers come from the kernel model, a Heki v2 kernel. */
static const struct { uint32_t number; uint64_t reason, value; } exits[] = {
    { 39, FK_HEKI_EXIT_REASON_CR0, FK_CR0_WP }, { 39, FK_HEKI_EXIT_REASON_CR4, FK_CR4_SMEP },
    { 40, FK_HEKI_EXIT_REASON_CR4, 0x6f0 }, { 40, FK_HEKI_EXIT_REASON_VALID_MASK, 0 },
    { 40, FK_HEKI_EXIT_REASON_CR0, 0 }, { 2, 0, 0 },
};
#define EXIT_KINDS (sizeof exits / sizeof exits[0])

static HsPluginApi api;
/* The host's opaque for fk_host_check_extension / fk_host_enable_cap. */
static FkVm *kernel;

static HekiPlugin *make_plugin(GMainContext *context) {
    HekiHost host = { .size = sizeof host, .opaque = &kernel, .context = context,
                      .check_extension = fk_host_check_extension, .enable_cap = fk_host_enable_cap };
    const char *options[] = { "require-cr4=smep+smap", "configure-exits=cr0+cr4", "denial-exits=cr4",
                              "rate-limit=50", "require-caps=on" };
    char *error = NULL;
    HekiPlugin *plugin = api.plugin_new(&host, 5, options, &error);
    if (!plugin) { fprintf(stderr, "%s\n", error); exit(2); }
    /* require-caps=on: both capabilities enabled, so exits 39 and 40 are claimed. */
    if (api.enable_caps(plugin, &error) != 0) { fprintf(stderr, "%s\n", error); exit(2); }
    return plugin;
}

static void run_exits(HekiPlugin *plugin, unsigned char *run, long calls) {
    for (long i = 0; i < calls; i++) {
        size_t k = (size_t)i % EXIT_KINDS;
        fk_run_write_exit((struct kvm_run *)run, exits[k].number, exits[k].reason, exits[k].value);
        api.handle_exit(plugin, (uint32_t)(i & 7), (const struct kvm_run *)run);
    }
}

/* new, caps, exits (past the rate limit and a full queue), dispatch, a
   query, an error path, free (unless `leak`, the check's own self-test).
   Returns how many blocks the plugin held once made. */
static long cycle(GMainContext *context, unsigned char *run, int leak) {
    long start = hs_alloc_live();
    HekiPlugin *plugin = make_plugin(context);
    long held = hs_alloc_live() - start;
    run_exits(plugin, run, 6000);
    while (g_main_context_iteration(context, FALSE)) {}
    api.free_string(api.query(plugin));
    if (!leak) api.plugin_free(plugin);
    const char *bad[] = { "on-denial=maybe" };
    char *error = NULL;
    HekiHost host = { .size = sizeof host, .context = context };
    if (api.plugin_new(&host, 1, bad, &error) || !error) exit(2);
    api.free_string(error);
    return held;
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    /* GLib 2.74's slice allocator keeps freed blocks in magazines. */
    setenv("G_SLICE", "always-malloc", 1);
    long count = atol(argv[3]);
    char *error = NULL;
    HsLibrary *library = hs_library_open(argv[1], HEKI_PLUGIN_ABI_VERSION, &error);
    if (!library) { fprintf(stderr, "%s\n", error ? error : "cannot load"); return 2; }
    api = *hs_library_api(library);
    FkProfile v2 = fk_profile(FK_PROFILE_V2);
    kernel = fk_vm_new(&v2, FK_DEFAULT_HOST_CR0, FK_DEFAULT_HOST_CR4);
    hs_alloc_track_live(true);

    GMainContext *context = g_main_context_new();
    unsigned char *run = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int failed;
    if (strcmp(argv[2], "exits") == 0) {
        /* The counter must see the library's allocations: plugin_new makes some. */
        hs_alloc_count_on_thread(true);
        HekiPlugin *plugin = make_plugin(context);
        hs_alloc_count_on_thread(false);
        long at_new = hs_alloc_take_total();
        printf("allocations in heki_plugin_new: %ld\n", at_new);
        if (at_new == 0) { fprintf(stderr, "the allocation counter saw nothing\n"); return 2; }
        /* The main loop does not run meanwhile: the rate limit and the full
           queue paths are taken too. */
        hs_alloc_count_on_thread(true);
        run_exits(plugin, run, count);
        hs_alloc_count_on_thread(false);
        long seen = hs_alloc_total();
        printf("allocations: %ld in %ld calls\n", seen, count);
        while (g_main_context_iteration(context, FALSE)) {}
        api.plugin_free(plugin);
        failed = seen != 0;
    } else if (strcmp(argv[2], "cycles") == 0 || strcmp(argv[2], "cycles-without-free") == 0) {
        int leak = strcmp(argv[2], "cycles-without-free") == 0;
        /* The first cycle warms the runtime's one-time caches. */
        if (cycle(context, run, 0) <= 0) { fprintf(stderr, "the live counter saw nothing\n"); return 2; }
        long before = hs_alloc_live();
        for (long i = 0; i < count; i++) cycle(context, run, leak);
        long leaked = hs_alloc_live() - before;
        printf("live blocks: %ld after %ld cycles\n", leaked, count);
        failed = leaked != 0;
    } else {
        return 2;
    }
    fk_vm_free(kernel);
    g_main_context_unref(context);
    munmap(run, 4096);
    return failed;
}
