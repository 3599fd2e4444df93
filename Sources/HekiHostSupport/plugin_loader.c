/* The loader table of heki_host_support.h. */
#define _GNU_SOURCE
#include "heki_host_support.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Each table entry has exactly the type the header declares. */
#define HS_SAME_TYPE(fn, type) _Generic(&fn, type: 1, default: 0)
_Static_assert(HS_SAME_TYPE(heki_plugin_abi_version, uint32_t (*)(void)), "abi_version");
_Static_assert(HS_SAME_TYPE(heki_plugin_new, HekiPlugin *(*)(const HekiHost *, int,
                                                             const char *const *, char **)),
               "new");
_Static_assert(HS_SAME_TYPE(heki_plugin_free, void (*)(HekiPlugin *)), "free");
_Static_assert(HS_SAME_TYPE(heki_plugin_free_string, void (*)(char *)), "free_string");
_Static_assert(HS_SAME_TYPE(heki_plugin_exit_number,
                            uint32_t (*)(const HekiPlugin *, HekiExitKind)),
               "exit_number");
_Static_assert(HS_SAME_TYPE(heki_plugin_cap_number,
                            uint32_t (*)(const HekiPlugin *, HekiExitKind)),
               "cap_number");
_Static_assert(HS_SAME_TYPE(heki_plugin_cap_mask, uint64_t (*)(const HekiPlugin *, HekiExitKind)),
               "cap_mask");
_Static_assert(HS_SAME_TYPE(heki_plugin_cap_result, int (*)(HekiPlugin *, HekiExitKind, int)),
               "cap_result");
_Static_assert(HS_SAME_TYPE(heki_plugin_enable_caps, int (*)(HekiPlugin *, char **)), "enable_caps");
_Static_assert(HS_SAME_TYPE(heki_plugin_start, void (*)(HekiPlugin *)), "start");
_Static_assert(HS_SAME_TYPE(heki_plugin_flush, void (*)(HekiPlugin *)), "flush");
_Static_assert(HS_SAME_TYPE(heki_plugin_set_policy,
                            int (*)(HekiPlugin *, int, const char *const *, char **)),
               "set_policy");
_Static_assert(HS_SAME_TYPE(heki_plugin_handle_exit,
                            HekiVerdict (*)(HekiPlugin *, uint32_t, const struct kvm_run *)),
               "handle_exit");
_Static_assert(HS_SAME_TYPE(heki_plugin_query, char *(*)(HekiPlugin *)), "query");
_Static_assert(HS_SAME_TYPE(heki_plugin_migration_status, HekiMigrationStatus (*)(const HekiPlugin *)),
               "migration_status");
_Static_assert(HS_SAME_TYPE(heki_plugin_save_state, int (*)(HekiPlugin *, uint8_t **, uint32_t *, char **)),
               "save_state");
_Static_assert(HS_SAME_TYPE(heki_plugin_free_state, void (*)(uint8_t *)), "free_state");
_Static_assert(HS_SAME_TYPE(heki_plugin_restore_state, int (*)(HekiPlugin *, const uint8_t *, uint32_t, char **)),
               "restore_state");
_Static_assert(HS_SAME_TYPE(heki_plugin_reset, HekiVerdict (*)(HekiPlugin *, HekiResetCause)),
               "reset");

struct HsLibrary {
    void *handle;
    char *path;
    uint32_t abi_version;
    HsPluginApi api;
};

void hs_free_string(char *string) { free(string); }

__attribute__((format(printf, 2, 3)))
static void fail(char **error, const char *format, ...) {
    if (!error)
        return;
    va_list args;
    va_start(args, format);
    if (vasprintf(error, format, args) < 0)
        *error = NULL;
    va_end(args);
}

static bool resolve(void *handle, const char *name, void **slot, const char *path, char **error) {
    dlerror();
    void *sym = dlsym(handle, name);
    const char *err = dlerror();
    if (err || !sym) {
        fail(error, "heki-host: %s: missing symbol %s (%s)", path, name, err ? err : "NULL");
        return false;
    }
    *slot = sym;
    return true;
}

HsLibrary *hs_library_open(const char *path, uint32_t expected_abi_version, char **error) {
    if (error)
        *error = NULL;
    if (!path) {
        fail(error, "heki-host: no plugin path");
        return NULL;
    }
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        const char *err = dlerror();
        fail(error, "heki-host: cannot load %s: %s", path, err ? err : "?");
        return NULL;
    }
    HsLibrary *lib = calloc(1, sizeof *lib);
    char *copy = strdup(path);
    if (!lib || !copy) {
        free(lib);
        free(copy);
        dlclose(handle);
        fail(error, "heki-host: out of memory");
        return NULL;
    }
    lib->handle = handle;
    lib->path = copy;
    HsPluginApi *a = &lib->api;
    /* dlsym's object pointer converts to a function pointer (POSIX): each
       slot is written through void **. */
    struct {
        const char *name;
        void **slot;
    } syms[] = {
        {"heki_plugin_abi_version", (void **)&a->abi_version},
        {"heki_plugin_new", (void **)&a->plugin_new},
        {"heki_plugin_free", (void **)&a->plugin_free},
        {"heki_plugin_free_string", (void **)&a->free_string},
        {"heki_plugin_exit_number", (void **)&a->exit_number},
        {"heki_plugin_cap_number", (void **)&a->cap_number},
        {"heki_plugin_cap_mask", (void **)&a->cap_mask},
        {"heki_plugin_cap_result", (void **)&a->cap_result},
        {"heki_plugin_enable_caps", (void **)&a->enable_caps},
        {"heki_plugin_start", (void **)&a->start},
        {"heki_plugin_set_policy", (void **)&a->set_policy},
        {"heki_plugin_flush", (void **)&a->flush},
        {"heki_plugin_handle_exit", (void **)&a->handle_exit},
        {"heki_plugin_query", (void **)&a->query},
        {"heki_plugin_migration_status", (void **)&a->migration_status},
        {"heki_plugin_save_state", (void **)&a->save_state},
        {"heki_plugin_free_state", (void **)&a->free_state},
        {"heki_plugin_restore_state", (void **)&a->restore_state},
        {"heki_plugin_reset", (void **)&a->reset},
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        if (!resolve(handle, syms[i].name, syms[i].slot, path, error)) {
            hs_library_close(lib);
            return NULL;
        }
    }
    lib->abi_version = a->abi_version();
    if (lib->abi_version != expected_abi_version) {
        fail(error, "heki-host: %s: ABI version %u, this host needs %u", path, lib->abi_version,
             expected_abi_version);
        hs_library_close(lib);
        return NULL;
    }
    return lib;
}

void hs_library_close(HsLibrary *lib) {
    if (!lib)
        return;
    if (lib->handle)
        dlclose(lib->handle);
    free(lib->path);
    free(lib);
}

const HsPluginApi *hs_library_api(const HsLibrary *lib) { return &lib->api; }
uint32_t hs_library_abi_version(const HsLibrary *lib) { return lib->abi_version; }
const char *hs_library_path(const HsLibrary *lib) { return lib->path; }
