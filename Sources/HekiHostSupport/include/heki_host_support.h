/*
 * heki_host_support.h - what every C host of this project does the same
 * way: load libHekiPlugin.so into a table of the header's functions.
 * Used by the fake VMM (Sources/FakeHost), heki-demo, heki-bench and the C
 * programs the tests compile (Tests/CProgram).  The allocation counter is
 * its own header (heki_alloc_counter.h): it replaces malloc, so only a
 * program that asks for it links it.  kvm_run is written by the kernel
 * model (heki_kernel_model.h, fk_run_*), the one place with its offsets on
 * the host side.
 *
 * Plain C11 and libdl: no GLib.
 */
#ifndef HEKI_HOST_SUPPORT_H
#define HEKI_HOST_SUPPORT_H

#include <stdint.h>

#include "../../../include/heki_plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Every function of heki_plugin.h, typed from the header (plugin_loader.c
   checks each type against the header's declaration at compile time). */
typedef struct HsPluginApi {
    uint32_t (*abi_version)(void);
    HekiPlugin *(*plugin_new)(const HekiHost *host, int argc,
                              const char *const *argv, char **error);
    void (*plugin_free)(HekiPlugin *plugin);
    void (*free_string)(char *string);
    uint32_t (*exit_number)(const HekiPlugin *plugin, HekiExitKind kind);
    uint32_t (*cap_number)(const HekiPlugin *plugin, HekiExitKind kind);
    uint64_t (*cap_mask)(const HekiPlugin *plugin, HekiExitKind kind);
    int (*cap_result)(HekiPlugin *plugin, HekiExitKind kind, int kvm_result);
    int (*enable_caps)(HekiPlugin *plugin, char **error);
    void (*start)(HekiPlugin *plugin);
    void (*flush)(HekiPlugin *plugin);
    int (*set_policy)(HekiPlugin *plugin, int argc, const char *const *argv,
                      char **error);
    HekiVerdict (*handle_exit)(HekiPlugin *plugin, uint32_t vcpu_index,
                               const struct kvm_run *run);
    char *(*query)(HekiPlugin *plugin);
    HekiMigrationStatus (*migration_status)(const HekiPlugin *plugin);
    int (*save_state)(HekiPlugin *plugin, uint8_t **data, uint32_t *size,
                      char **error);
    void (*free_state)(uint8_t *data);
    int (*restore_state)(HekiPlugin *plugin, const uint8_t *data, uint32_t size,
                         char **error);
    HekiVerdict (*reset)(HekiPlugin *plugin, HekiResetCause cause);
} HsPluginApi;

typedef struct HsLibrary HsLibrary;

/* dlopen(RTLD_NOW | RTLD_LOCAL) of `path`, every function resolved.
   Refuses (NULL, *error set) a missing or unloadable file, a missing symbol
   (naming it), and a library whose heki_plugin_abi_version() differs from
   `expected_abi_version` (pass HEKI_PLUGIN_ABI_VERSION).  *error (when
   `error` is not NULL) is freed with hs_free_string. */
HsLibrary *hs_library_open(const char *path, uint32_t expected_abi_version,
                           char **error);
/* dlclose()s the library (the plugin is linked nodelete: plugins made
   through it keep working). */
void hs_library_close(HsLibrary *lib);
const HsPluginApi *hs_library_api(const HsLibrary *lib);
uint32_t hs_library_abi_version(const HsLibrary *lib);
const char *hs_library_path(const HsLibrary *lib);
void hs_free_string(char *string);

#ifdef __cplusplus
}
#endif

#endif /* HEKI_HOST_SUPPORT_H */
