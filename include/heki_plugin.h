/*
 * heki_plugin.h - the C ABI of heki-plugin, the VMM side of Linux Heki.
 *
 * A KVM-based VMM loads libHekiPlugin.so (g_module_open or dlopen), checks
 * heki_plugin_abi_version(), creates one HekiPlugin per VM, enables the two
 * Heki capabilities with the numbers and masks the plugin names, and offers
 * every KVM_RUN exit to heki_plugin_handle_exit().  The plugin returns a
 * verdict at once and reports what happened as events on the VMM's GLib main
 * loop.  This header is the whole contract: it needs only <stdint.h>, and it
 * compiles as C11 and as C++.
 *
 * Threads, in one place:
 *  - heki_plugin_handle_exit() may be called from any number of vCPU threads
 *    at once.  It never blocks, never allocates and never calls the host.
 *  - Everything else (new, free, cap_result, query, the number getters) is
 *    called from the thread that runs HekiHost.context (the "main loop
 *    thread"), or before that loop runs.  The getters and query are also
 *    safe from any thread.
 *  - HekiHost.log and HekiHost.event are called only on the thread that runs
 *    HekiHost.context: from the plugin's GSource, or from heki_plugin_free().
 *
 * The library carries the Swift runtime and is linked "nodelete": dlclose()
 * and g_module_close() leave it mapped, so loading it again is cheap and
 * safe, and plugins created before stay valid.
 *
 * Guest-controlled data (everything in kvm_run) is never used as a format
 * string and is escaped in every JSON document the plugin produces.
 */
#ifndef HEKI_PLUGIN_H
#define HEKI_PLUGIN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** The ABI this header describes.  A host refuses a library whose
 *  heki_plugin_abi_version() differs from the value it was compiled with. */
#define HEKI_PLUGIN_ABI_VERSION 1u

struct kvm_run;                               /* <linux/kvm.h> */
typedef struct _GMainContext GMainContext;    /* <glib.h>, same typedef */

/** Opaque: one per VM. */
typedef struct HekiPlugin HekiPlugin;

/** Severity of a HekiHost.log message. */
typedef enum {
    HEKI_LOG_ERROR,
    HEKI_LOG_WARNING,
    HEKI_LOG_INFO,
    HEKI_LOG_DEBUG
} HekiLogLevel;

/**
 * What the host gives the plugin.  The plugin copies the struct in
 * heki_plugin_new(); the host keeps `opaque` and `context` alive until
 * heki_plugin_free() returns.
 */
typedef struct HekiHost {
    /** sizeof(HekiHost) as the host was built.  A smaller value than ABI
     *  version 1's struct is refused; a larger one is accepted and the
     *  fields this version does not know are ignored. */
    uint32_t size;
    /** Passed back unchanged to log and event. */
    void *opaque;
    /** The context whose loop dispatches events.  NULL: the global default
     *  context (g_main_context_default()).  The plugin takes a reference. */
    GMainContext *context;
    /** Optional (NULL: no log).  `message` is a NUL-terminated UTF-8 line
     *  without a newline, owned by the plugin and valid during the call. */
    void (*log)(void *opaque, HekiLogLevel level, const char *message);
    /** Optional (NULL: events go only to the audit log and counters).
     *  `name` is one of the HEKI_* event names documented in README.md;
     *  `data_json` is one line of compact JSON with kebab-case keys.  Both
     *  are owned by the plugin and valid during the call. */
    void (*event)(void *opaque, const char *name, const char *data_json);
} HekiHost;

/** The ABI version of the loaded library (HEKI_PLUGIN_ABI_VERSION as it was
 *  built).  Safe from any thread, before anything else. */
uint32_t heki_plugin_abi_version(void);

/**
 * Creates the plugin of one VM.
 *
 * @host   the host's callbacks and context (copied; see HekiHost).
 * @argc, @argv  options as "key=value" strings, as QEMU's -plugin passes
 *         them (argv may be NULL when argc is 0).  The strings are copied.
 * @error  optional.  On failure *error receives a message naming the key and
 *         the values it accepts, to be freed with heki_plugin_free_string().
 *
 * Returns the plugin, or NULL on failure (a bad or unknown option, a bad
 * HekiHost, an audit log that cannot be opened).  Opens the audit log and
 * attaches a GSource to the context; never calls log or event itself.
 * Call from the main loop thread (or before the loop runs).
 */
HekiPlugin *heki_plugin_new(const HekiHost *host, int argc,
                            const char *const *argv, char **error);

/**
 * Destroys the plugin.  Call on the main loop thread, after every vCPU has
 * stopped calling heki_plugin_handle_exit().  Before it returns, every event
 * still queued is delivered (event, audit log, log) and every coalesced count
 * is reported as HEKI_SUPPRESSED, so nothing is lost.  NULL is ignored.
 * Called from inside the plugin's own log or event callback, it returns at
 * once and the teardown (the same delivery included) happens when that
 * dispatch unwinds; no callback ever runs inside another.
 * Using the plugin after this call is undefined.
 */
void heki_plugin_free(HekiPlugin *plugin);

/** Frees a string returned by this library (error messages, query results).
 *  NULL is ignored. */
void heki_plugin_free_string(char *string);

/** The two Heki exits. */
typedef enum {
    HEKI_EXIT_CONFIGURE = 0, /**< KVM_EXIT_HEKI_CONFIGURE: the guest pinned bits */
    HEKI_EXIT_DENIAL = 1     /**< KVM_EXIT_HEKI_DENIAL: KVM refused a CR write */
} HekiExitKind;

/** The KVM_EXIT_* number of `kind` in the active profile (abi=v2: 39/40,
 *  abi=v3: 40/41, or the exit-* overrides).  Any thread.  An unknown kind
 *  returns 0. */
uint32_t heki_plugin_exit_number(const HekiPlugin *plugin, HekiExitKind kind);

/** The KVM_CAP_* number to enable for `kind` (abi=v2: 235/236, abi=v3:
 *  236/237, or the cap-* overrides).  Any thread.  An unknown kind returns 0. */
uint32_t heki_plugin_cap_number(const HekiPlugin *plugin, HekiExitKind kind);

/** The mask to pass as args[0] of KVM_ENABLE_CAP for `kind`
 *  (KVM_HEKI_EXIT_REASON_CR0 = 1, _CR4 = 2), from configure-exits and
 *  denial-exits.  0 means: do not enable this capability (and do not report
 *  it).  Any thread. */
uint64_t heki_plugin_cap_mask(const HekiPlugin *plugin, HekiExitKind kind);

/**
 * The host reports what KVM_ENABLE_CAP(heki_plugin_cap_number(kind),
 * args[0] = heki_plugin_cap_mask(kind)) returned: 0, or -errno.  Until this
 * is reported with 0, exits of that kind are not claimed (NOT_HEKI): on an
 * unpatched kernel the same number means something else.  Queues a
 * HEKI_CAPABILITY event.  Main loop thread, before vCPUs run.
 *
 * Returns 0, or -1 when require-caps=on and KVM refused (or `kind` is
 * unknown): the VMM must not start.
 */
int heki_plugin_cap_result(HekiPlugin *plugin, HekiExitKind kind,
                           int kvm_result);

/** What the host does after a KVM_RUN exit. */
typedef enum {
    HEKI_VERDICT_NOT_HEKI = -1, /**< not a (valid) Heki exit: the host handles it */
    HEKI_VERDICT_RESUME = 0,    /**< re-enter KVM_RUN; KVM completes the exit */
    HEKI_VERDICT_PAUSE,         /**< stop the VM, keep it for inspection */
    HEKI_VERDICT_POWEROFF,      /**< orderly power-off */
    HEKI_VERDICT_RESET,         /**< system reset */
    HEKI_VERDICT_EXIT           /**< terminate the VMM with a failure status */
} HekiVerdict;

/**
 * Offers one KVM_RUN exit of vCPU `vcpu_index` to the plugin.
 *
 * `run` is the vCPU's mmap'ed kvm_run; the plugin reads exit_reason and,
 * for its exits, the 64-byte Heki payload, and keeps no pointer to it.
 * Returns NOT_HEKI for any exit that is not one of the profile's two numbers
 * (the host handles it as usual), and for a Heki-numbered exit that is not
 * valid (its capability was not enabled, or `reason` is not exactly one bit
 * the host asked for); the latter is reported as HEKI_MALFORMED_EXIT.
 * Otherwise updates the VM's pin ledger and returns the policy's verdict.
 * For RESUME the host re-enters KVM_RUN, which completes the exit (rax = 0
 * for a pin, #GP for a denial).  Before saving VM state the host must still
 * complete a pending exit (KVM_RUN with immediate_exit set).
 *
 * Any thread, any number at once.  Never blocks, never allocates, never
 * calls log or event.  NULL plugin or run: NOT_HEKI.
 */
HekiVerdict heki_plugin_handle_exit(HekiPlugin *plugin, uint32_t vcpu_index,
                                    const struct kvm_run *run);

/**
 * A JSON snapshot of the plugin: profile, exit and capability numbers, masks
 * asked and granted, policy, pins per register (hex and bit names), counters
 * per event kind and register.  The caller frees it with
 * heki_plugin_free_string().  Any thread.  NULL plugin: NULL.
 */
char *heki_plugin_query(HekiPlugin *plugin);

#ifdef __cplusplus
}
#endif

#endif /* HEKI_PLUGIN_H */
