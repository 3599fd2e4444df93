/*
 * load_plugin.c - a plain C host for libHekiPlugin.so: load it (dlopen, ABI
 * version checked: HekiHostSupport's loader), create a plugin whose host
 * answers KVM's questions from the kernel model (a Heki v2 kernel), let it
 * check the kernel and enable its capabilities, start the guest, hand it
 * one exit, free it.  Built and run by HostCTests.swift (CHostProgram):
 *   cc -std=c11 -Wall -Wextra -Werror -I Sources/HekiHostSupport/include
 *      -I Sources/HekiKernelModel/include Tests/CProgram/load_plugin.c
 *      Sources/HekiHostSupport/plugin_loader.c
 *      Sources/HekiKernelModel/kernel_model.c -ldl
 *   ./a.out path/to/libHekiPlugin.so
 * Prints "event NAME JSON" lines and "load_plugin: ok"; exits 0 on success.
 * With --close-first, the library's only handle is closed (dlclose) after
 * the capabilities are enabled and before the plugin is used further.
 * (The exit offered before heki_plugin_enable_caps is not claimed, silently.)
 */
#define _GNU_SOURCE
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <linux/kvm.h>

#include "heki_host_support.h"
#include "heki_kernel_model.h"

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

int main(int argc, char **argv) {
    bool close_first = argc == 3 && strcmp(argv[2], "--close-first") == 0;
    if (argc != 2 && !close_first) {
        fprintf(stderr, "usage: load_plugin PATH [--close-first]\n");
        return 2;
    }
    char *load_error = NULL;
    HsLibrary *library = hs_library_open(argv[1], HEKI_PLUGIN_ABI_VERSION, &load_error);
    if (!library) {
        fprintf(stderr, "load_plugin: %s\n", load_error ? load_error : "cannot load");
        hs_free_string(load_error);
        return 1;
    }
    /* A copy: --close-first frees the library's table. */
    const HsPluginApi table = *hs_library_api(library);
    const HsPluginApi *api = &table;
    FkProfile v2 = fk_profile(FK_PROFILE_V2);
    FkVm *kernel = fk_vm_new(&v2, FK_DEFAULT_HOST_CR0, FK_DEFAULT_HOST_CR4);

    HekiHost host;
    memset(&host, 0, sizeof host);
    host.size = sizeof host;
    host.context = NULL; /* the default context */
    host.log = on_log;
    host.event = on_event;
    host.opaque = &kernel; /* fk_host_*: the opaque points at the FkVm * */
    host.check_extension = fk_host_check_extension;
    host.enable_cap = fk_host_enable_cap;
    const char *const options[] = {"vm-name=cprog", "on-denial=pause"};
    char *error = NULL;
    HekiPlugin *plugin = api->plugin_new(&host, 2, options, &error);
    if (!plugin) {
        fprintf(stderr, "load_plugin: %s\n", error ? error : "heki_plugin_new failed");
        api->free_string(error);
        return 1;
    }

    struct kvm_run *run = calloc(1, sizeof *run);
    if (!run)
        return 1;
    fk_run_write_exit(run, v2.exit_configure, FK_HEKI_EXIT_REASON_CR0, FK_CR0_WP);
    int failures = 0;
    if (api->exit_number(plugin, HEKI_EXIT_CONFIGURE) != 0 || api->handle_exit(plugin, 0, run) != HEKI_VERDICT_NOT_HEKI) {
        fprintf(stderr, "load_plugin: claimed an exit before its capability\n");
        failures++;
    }
    if (api->enable_caps(plugin, &error) != 0) {
        fprintf(stderr, "load_plugin: heki_plugin_enable_caps: %s\n", error ? error : "failed");
        api->free_string(error);
        failures++;
    }
    if (api->exit_number(plugin, HEKI_EXIT_CONFIGURE) != v2.exit_configure) {
        fprintf(stderr, "load_plugin: the v2 kernel's configure exit is not claimed\n");
        failures++;
    }
    if (close_first) {
        /* The only handle goes: the plugin must stay usable (the library
           is linked nodelete; its Swift runtime cannot be unmapped). */
        hs_library_close(library);
        printf("library closed\n");
    }
    api->start(plugin);
    HekiVerdict verdict = api->handle_exit(plugin, 0, run);
    printf("verdict %d\n", (int)verdict);
    if (verdict != HEKI_VERDICT_RESUME)
        failures++;
    char *q = api->query(plugin);
    printf("query %s\n", q ? q : "(null)");
    if (!q || !strstr(q, "\"vm-name\":\"cprog\""))
        failures++;
    api->free_string(q);
    api->plugin_free(plugin); /* delivers HEKI_CAPABILITY and HEKI_CONFIGURE here */
    free(run);
    fk_vm_free(kernel);
    /* HEKI_CAPABILITY: the kernel check, then each KVM_ENABLE_CAP. */
    if (configure_events != 1 || capability_events != 3) {
        fprintf(stderr, "load_plugin: %d HEKI_CONFIGURE, %d HEKI_CAPABILITY events (of %d)\n",
                configure_events, capability_events, events);
        failures++;
    }
    printf("load_plugin: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
