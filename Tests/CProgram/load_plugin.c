/*
 * load_plugin.c - a plain C host for libHekiPlugin.so: dlopen, check the ABI
 * version, create a plugin whose host answers KVM's questions like a Heki v2
 * kernel (heki_v2_kernel.h), let it check the kernel and enable its
 * capabilities, start the guest, hand it one exit, free it.
 * Built and run by HostCTests.swift:
 *   cc -std=c11 -Wall -Wextra -Werror -I include Tests/CProgram/load_plugin.c -ldl
 *   ./a.out path/to/libHekiPlugin.so
 * Prints "event NAME JSON" lines and "load_plugin: ok"; exits 0 on success.
 * (The exit offered before heki_plugin_enable_caps is not claimed, silently.)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <linux/kvm.h>

#include "heki_plugin.h"
#include "heki_v2_kernel.h"

static int events, configure_events, capability_events;

static void on_event(void *opaque, const char *name, const char *data_json) {
    (void)opaque;
    events++;
    if (strcmp(name, "HEKI_CONFIGURE") == 0)
        configure_events++;
    if (strcmp(name, "HEKI_CAPABILITY") == 0)
        capability_events++;
    printf("event %s %s\n", name, data_json);
}

static void on_log(void *opaque, HekiLogLevel level, const char *message) {
    (void)opaque;
    printf("log %d %s\n", (int)level, message);
}

#define RESOLVE(handle, var, name)                                          \
    do {                                                                    \
        *(void **)(&var) = dlsym(handle, name);                             \
        if (!var) {                                                         \
            fprintf(stderr, "load_plugin: missing %s\n", name);             \
            return 1;                                                       \
        }                                                                   \
    } while (0)

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: load_plugin PATH\n");
        return 2;
    }
    void *handle = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        fprintf(stderr, "load_plugin: %s\n", dlerror());
        return 1;
    }
    uint32_t (*abi_version)(void);
    HekiPlugin *(*plugin_new)(const HekiHost *, int, const char *const *, char **);
    void (*plugin_free)(HekiPlugin *);
    void (*free_string)(char *);
    uint32_t (*exit_number)(const HekiPlugin *, HekiExitKind);
    int (*enable_caps)(HekiPlugin *, char **);
    void (*start)(HekiPlugin *);
    HekiVerdict (*handle_exit)(HekiPlugin *, uint32_t, const struct kvm_run *);
    char *(*query)(HekiPlugin *);
    RESOLVE(handle, abi_version, "heki_plugin_abi_version");
    RESOLVE(handle, plugin_new, "heki_plugin_new");
    RESOLVE(handle, plugin_free, "heki_plugin_free");
    RESOLVE(handle, free_string, "heki_plugin_free_string");
    RESOLVE(handle, exit_number, "heki_plugin_exit_number");
    RESOLVE(handle, enable_caps, "heki_plugin_enable_caps");
    RESOLVE(handle, start, "heki_plugin_start");
    RESOLVE(handle, handle_exit, "heki_plugin_handle_exit");
    RESOLVE(handle, query, "heki_plugin_query");
    if (abi_version() != HEKI_PLUGIN_ABI_VERSION) {
        fprintf(stderr, "load_plugin: ABI version %u, expected %u\n", abi_version(),
                HEKI_PLUGIN_ABI_VERSION);
        return 1;
    }

    HekiHost host;
    memset(&host, 0, sizeof host);
    host.size = sizeof host;
    host.context = NULL; /* the default context */
    host.log = on_log;
    host.event = on_event;
    host.check_extension = v2_kernel_check_extension;
    host.enable_cap = v2_kernel_enable_cap;
    const char *const options[] = {"vm-name=cprog", "on-denial=pause"};
    char *error = NULL;
    HekiPlugin *plugin = plugin_new(&host, 2, options, &error);
    if (!plugin) {
        fprintf(stderr, "load_plugin: %s\n", error ? error : "heki_plugin_new failed");
        free_string(error);
        return 1;
    }

    struct kvm_run *run = calloc(1, sizeof *run);
    if (!run)
        return 1;
    uint64_t payload[8] = {1 /* KVM_HEKI_EXIT_REASON_CR0 */, 1u << 16 /* WP */};
    run->exit_reason = 39; /* KVM_EXIT_HEKI_CONFIGURE of v2 */
    memcpy(run->padding, payload, sizeof payload);
    int failures = 0;
    if (exit_number(plugin, HEKI_EXIT_CONFIGURE) != 0 || handle_exit(plugin, 0, run) != HEKI_VERDICT_NOT_HEKI) {
        fprintf(stderr, "load_plugin: claimed an exit before its capability\n");
        failures++;
    }
    if (enable_caps(plugin, &error) != 0) {
        fprintf(stderr, "load_plugin: heki_plugin_enable_caps: %s\n", error ? error : "failed");
        free_string(error);
        failures++;
    }
    if (exit_number(plugin, HEKI_EXIT_CONFIGURE) != 39) {
        fprintf(stderr, "load_plugin: the v2 kernel's configure exit is not claimed\n");
        failures++;
    }
    start(plugin);
    HekiVerdict verdict = handle_exit(plugin, 0, run);
    printf("verdict %d\n", (int)verdict);
    if (verdict != HEKI_VERDICT_RESUME)
        failures++;
    char *q = query(plugin);
    printf("query %s\n", q ? q : "(null)");
    if (!q || !strstr(q, "\"vm-name\":\"cprog\""))
        failures++;
    free_string(q);
    plugin_free(plugin); /* delivers HEKI_CAPABILITY and HEKI_CONFIGURE here */
    free(run);
    /* HEKI_CAPABILITY: the kernel check, then each KVM_ENABLE_CAP. */
    if (configure_events != 1 || capability_events != 3) {
        fprintf(stderr, "load_plugin: %d HEKI_CONFIGURE, %d HEKI_CAPABILITY events (of %d)\n",
                configure_events, capability_events, events);
        failures++;
    }
    printf("load_plugin: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
