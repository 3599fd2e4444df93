/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * heki_plugin.h - the C ABI of heki-plugin, the VMM side of Linux Heki.
 *
 * A KVM-based VMM loads libHekiPlugin.so (g_module_open or dlopen), checks
 * heki_plugin_abi_version(), creates one HekiPlugin per VM with a HekiHost
 * that can ask KVM (check_extension, enable_cap), calls
 * heki_plugin_enable_caps() once the VM exists, heki_plugin_start() when the
 * guest first runs, and offers KVM_RUN exits to heki_plugin_handle_exit().
 * The plugin returns a verdict at once and reports what happened as events
 * on the VMM's GLib main loop.  This header is the whole contract: it needs
 * only <stdint.h>, and it compiles as C11 and as C++ (which, as for QEMU's
 * qemu-plugin.h, includes it inside extern "C" { }).
 *
 * The kernel is not trusted to be a Heki kernel.  The exit and capability
 * numbers of the Heki RFC series changed between its versions and mean
 * other things upstream (cap 237 is KVM_CAP_X86_APIC_BUS_CYCLES_NS on a
 * stock kernel, exit 39 KVM_EXIT_MEMORY_FAULT), so the plugin enables a
 * capability only after KVM_CHECK_EXTENSION answered like the Heki kernel of
 * one profile (see heki_plugin_enable_caps()), and claims an exit number
 * only once its capability was enabled.
 *
 * Threads, in one place:
 *  - heki_plugin_handle_exit() may be called from any number of vCPU threads
 *    at once.  It never blocks, never allocates and never calls the host.
 *  - Everything else (new, free, enable_caps, start, set_policy, flush,
 *    cap_result, query, the number getters, migration_status, save_state,
 *    restore_state) is called from the thread that runs HekiHost.context
 *    (the "main loop thread"), or before that loop runs.  The getters,
 *    query and migration_status are also safe from any thread.
 *  - HekiHost.log, HekiHost.event, HekiHost.apply_verdict and
 *    HekiHost.migration_blocker are called only on the thread that runs
 *    HekiHost.context: from the plugin's GSource, from heki_plugin_flush()
 *    or from heki_plugin_free() (save_state and restore_state queue their
 *    reports for that dispatch: they never call the host themselves).
 *    HekiHost.check_extension and HekiHost.enable_cap are called only from
 *    inside heki_plugin_enable_caps(), on its caller's thread.
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

/*
 * The ABI this header describes.  A host refuses a library whose
 * heki_plugin_abi_version() differs from the value it was compiled with.
 */
#define HEKI_PLUGIN_ABI_VERSION 1u

struct kvm_run;                               /* <linux/kvm.h> */
typedef struct _GMainContext GMainContext;    /* <glib.h>, same typedef */

/* Opaque: one per VM. */
typedef struct HekiPlugin HekiPlugin;

/* Severity of a HekiHost.log message. */
typedef enum {
    HEKI_LOG_ERROR,
    HEKI_LOG_WARNING,
    HEKI_LOG_INFO,
    HEKI_LOG_DEBUG
} HekiLogLevel;

/* What the host does after a KVM_RUN exit. */
typedef enum {
    HEKI_VERDICT_NOT_HEKI = -1, /* not a (valid) Heki exit: the host's */
    HEKI_VERDICT_RESUME = 0,    /* re-enter KVM_RUN; KVM completes the exit */
    HEKI_VERDICT_PAUSE,         /* stop the VM, keep it for inspection */
    HEKI_VERDICT_POWEROFF,      /* orderly power-off */
    HEKI_VERDICT_RESET,         /* system reset */
    HEKI_VERDICT_EXIT           /* terminate the VMM with a failure status */
} HekiVerdict;

/*
 * What the host gives the plugin.  The plugin copies the struct in
 * heki_plugin_new(); the host keeps `opaque` and `context` alive until
 * heki_plugin_free() returns.
 *
 * The struct grows at its end; `size` says which fields the host knows.
 * HEKI_HOST_SIZE_1_0 covers size..event (heki-plugin 1.0); a host of that
 * size has no way to give KVM's answers, so the plugin enables nothing for
 * it (heki_plugin_cap_mask() is 0) and says so in a HEKI_CAPABILITY event.
 * HEKI_HOST_SIZE_1_1 adds check_extension, enable_cap and apply_verdict;
 * HEKI_HOST_SIZE_1_2 adds migration_blocker.  A field that `size` covers
 * only in part is taken as absent (NULL).
 */
typedef struct HekiHost {
    /*
     * sizeof(HekiHost) as the host was built.  Less than
     * HEKI_HOST_SIZE_1_0 is refused; a larger value than this header's is
     * accepted and the fields this version does not know are ignored.
     */
    uint32_t size;
    /* Passed back unchanged to log and event. */
    void *opaque;
    /*
     * The context whose loop dispatches events.  NULL: the global default
     * context (g_main_context_default()).  The plugin takes a reference.
     */
    GMainContext *context;
    /*
     * Optional (NULL: no log).  `message` is a NUL-terminated UTF-8 line
     * without a newline, owned by the plugin and valid during the call.
     */
    void (*log)(void *opaque, HekiLogLevel level, const char *message);
    /*
     * Optional (NULL: events go only to the audit log and counters).
     * `name` is one of the HEKI_* event names documented in README.md;
     * `data_json` is one line of compact JSON with kebab-case keys.  Both
     * are owned by the plugin and valid during the call.
     */
    void (*event)(void *opaque, const char *name, const char *data_json);

    /* ---- heki-plugin 1.1: present when size >= HEKI_HOST_SIZE_1_1 ---- */

    /*
     * KVM_CHECK_EXTENSION(cap) on the VM file descriptor (or /dev/kvm when
     * the VM has none for it): the answer (>= 0), or -errno.  Needed by
     * heki_plugin_enable_caps(), which is the only caller.
     */
    int (*check_extension)(void *opaque, uint32_t cap);
    /*
     * KVM_ENABLE_CAP(cap, args[0] = mask) on the VM file descriptor: 0, or
     * -errno.  Needed by heki_plugin_enable_caps(), the only caller; it is
     * called only for a capability whose check_extension answer proved it a
     * Heki capability.
     */
    int (*enable_cap)(void *opaque, uint32_t cap, uint64_t mask);
    /*
     * Optional (NULL: such a verdict is reported and logged as not
     * applied).  Applies a verdict the plugin reached outside
     * heki_plugin_handle_exit(): the pin deadline (pin-deadline=) found
     * required pins missing and on-weak-pinning says PAUSE, POWEROFF, RESET
     * or EXIT.  Never called with RESUME or NOT_HEKI.  Main loop thread.
     */
    void (*apply_verdict)(void *opaque, HekiVerdict verdict);

    /* ---- heki-plugin 1.2: present when size >= HEKI_HOST_SIZE_1_2 ---- */

    /*
     * Optional (NULL: the host asks heki_plugin_migration_status() itself
     * before each migration or snapshot).  The plugin says when the host
     * must hold a migration blocker: `blocked` 1 with `reason` (a
     * NUL-terminated UTF-8 sentence that names Heki and says why, owned by
     * the plugin and valid during the call), or 0 with `reason` NULL when
     * it may drop it.  Called only when the answer changes: the first pin
     * this kernel enforces under migration=block, a heki_plugin_set_policy
     * of migration=.  Main loop thread, from the plugin's GSource or
     * heki_plugin_flush().
     */
    void (*migration_blocker)(void *opaque, int blocked, const char *reason);
} HekiHost;

/*
 * sizeof(HekiHost) of heki-plugin 1.0's header (size..event) and of this
 * one, on LP64 targets.
 */
#define HEKI_HOST_SIZE_1_0 40u
#define HEKI_HOST_SIZE_1_1 64u
#define HEKI_HOST_SIZE_1_2 72u

/*
 * The ABI version of the loaded library (HEKI_PLUGIN_ABI_VERSION as it was
 * built).  Safe from any thread, before anything else.
 */
uint32_t heki_plugin_abi_version(void);

/*
 * Creates the plugin of one VM.
 *
 * @host   the host's callbacks and context (copied; see HekiHost).
 * @argc, @argv  options as "key=value" strings, as QEMU's -plugin passes
 *        them (argv may be NULL when argc is 0).  The strings are copied.
 * @error  optional.  On failure *error receives a message naming the key and
 *        the values it accepts, to be freed with heki_plugin_free_string().
 *
 * Returns the plugin, or NULL on failure (a bad or unknown option, a bad
 * HekiHost, an audit log that cannot be opened, require-caps=on from a host
 * of HEKI_HOST_SIZE_1_0, which cannot have the kernel checked).  Opens the
 * audit log and attaches a GSource to the context; never calls log or event
 * itself.
 * Call from the main loop thread (or before the loop runs).
 */
HekiPlugin *heki_plugin_new(const HekiHost *host, int argc,
                            const char *const *argv, char **error);

/*
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

/*
 * Frees a string returned by this library (error messages, query results).
 * NULL is ignored.
 */
void heki_plugin_free_string(char *string);

/* The two Heki exits. */
typedef enum {
    HEKI_EXIT_CONFIGURE = 0, /* KVM_EXIT_HEKI_CONFIGURE: the guest pinned */
    HEKI_EXIT_DENIAL = 1     /* KVM_EXIT_HEKI_DENIAL: a CR write refused */
} HekiExitKind;

/*
 * The KVM_EXIT_* number the plugin claims for `kind`: the verified
 * profile's (v2: 39/40, v3: 40/41, or the exit-* overrides) once its
 * capability was enabled, else 0 (nothing claimed).  Any thread.  An
 * unknown kind returns 0.
 */
uint32_t heki_plugin_exit_number(const HekiPlugin *plugin, HekiExitKind kind);

/*
 * The KVM_CAP_* number of `kind` in the profile heki_plugin_enable_caps()
 * verified (v2: 235/236, v3: 236/237, or the cap-* overrides); 0 before
 * that, and when the kernel is not a Heki kernel of the asked profile.
 * Any thread.  An unknown kind returns 0.
 */
uint32_t heki_plugin_cap_number(const HekiPlugin *plugin, HekiExitKind kind);

/*
 * The mask of KVM_ENABLE_CAP's args[0] for `kind` (KVM_HEKI_EXIT_REASON_CR0
 * = 1, _CR4 = 2, from configure-exits and denial-exits) once
 * heki_plugin_enable_caps() verified the kernel; 0 otherwise.  For an ABI
 * 1.0 host, which enables the capabilities itself when this is not 0, it
 * is therefore always 0: without KVM_CHECK_EXTENSION's answers no number
 * is safe to enable.  Any thread.
 */
uint64_t heki_plugin_cap_mask(const HekiPlugin *plugin, HekiExitKind kind);

/*
 * Checks the kernel and enables the Heki capabilities, driving the host's
 * check_extension and enable_cap.  Call once, on the main loop thread, after
 * the VM (and its in-kernel irqchip) exists and before any vCPU runs.
 *
 * 1. KVM_CHECK_EXTENSION of 235, 236 and 237 (and of cap-* overrides).  A
 *   Heki capability answers the valid reason mask (3), with or without
 *   CONFIG_HEKI.  The kernel is
 *     Heki v2  when 235 = 3, 236 = 3 and 237 != 3 (v2 has no 237);
 *     Heki v3  when 236 = 3, 237 = 3 and 235 answers a VM-type mask with
 *              KVM_X86_DEFAULT_VM (bit 0) set (v3's 235 is VM_TYPES);
 *     not Heki otherwise (a stock kernel answers 235 = VM_TYPES,
 *              236 = PRE_FAULT_MEMORY, 237 = X86_APIC_BUS_CYCLES_NS).
 *   abi=auto takes the kernel's profile; abi=v2/v3 must match it; with
 *   cap-* overrides both capabilities must answer 3.
 * 2. Only then KVM_ENABLE_CAP of each capability whose mask is not 0.
 *
 * Anything else enables nothing and claims no exit number: the host keeps
 * those exits.  Each outcome is a HEKI_CAPABILITY event and one log line
 * that names the kernel's answers; so is each KVM_ENABLE_CAP.
 *
 * Returns 0; or -1 with *error (optional; free with
 * heki_plugin_free_string()) when the host lacks check_extension or
 * enable_cap, when called a second time, or when require-caps=on and the
 * kernel is not a Heki kernel of the asked profile or refused a capability:
 * the VMM must not start.
 */
int heki_plugin_enable_caps(HekiPlugin *plugin, char **error);

/*
 * The guest starts to run (QEMU: the first change to the running state).
 * Starts the pin deadline: when require-cr0/require-cr4 name bits and
 * pin-deadline=SECONDS (default 60) passes with a register whose configure
 * exits are enabled still not pinned at all, the plugin reports
 * HEKI_WEAK_PINNING (with "deadline-seconds") and applies on-weak-pinning
 * through HekiHost.apply_verdict.  The first denial judges the same way
 * earlier, on its vCPU.  Main loop thread; later calls are ignored.
 */
void heki_plugin_start(HekiPlugin *plugin);

/*
 * Changes the policy while the VM runs (QEMU: qom-set of a heki policy
 * property).  `argv` holds "key=value" strings as for heki_plugin_new(), with
 * only the policy keys: on-denial, on-denial-cr0, on-denial-cr4,
 * on-weak-pinning, require-cr0, require-cr4, migration.  A key not given
 * keeps its value.  The strings are validated together, with
 * heki_plugin_new()'s messages; on any error nothing changes and *error
 * (optional; free with heki_plugin_free_string()) names the key.  Any other
 * key is refused: the numbering, the exits asked of KVM and the sinks are
 * fixed at heki_plugin_new().
 *
 * Effective from each vCPU's next exit: an exit is judged wholly by the old
 * or wholly by the new policy, never by a mix.  Reported as a HEKI_POLICY
 * event (the keys whose value changed, and the whole policy after it) to the
 * event callback, the audit log and the log.  Main loop thread.
 * Returns 0, or -1.
 */
int heki_plugin_set_policy(HekiPlugin *plugin, int argc,
                           const char *const *argv, char **error);

/*
 * Delivers now, on the calling thread (the main loop thread), every event
 * the vCPUs have queued so far, as the plugin's own dispatch would (event,
 * audit log, log).  A host calls it before it reports what a verdict did
 * (QEMU: before GUEST_PANICKED), so that the event that explains a verdict
 * comes first, and is not lost if the VMM ends at once.  Coalesced counts
 * still go out as HEKI_SUPPRESSED when their window ends.  Called from
 * inside one of the plugin's callbacks, it does nothing.  NULL is ignored.
 */
void heki_plugin_flush(HekiPlugin *plugin);

/*
 * ABI 1.0's capability report, kept so 1.0 hosts link and run: they call it
 * only after enabling a capability whose heki_plugin_cap_mask() was not 0,
 * which heki_plugin_enable_caps() now does by itself.  Changes nothing.
 * Returns 0 when `kind` was enabled by heki_plugin_enable_caps() and
 * `kvm_result` is 0, else -1.
 */
int heki_plugin_cap_result(HekiPlugin *plugin, HekiExitKind kind,
                           int kvm_result);

/*
 * Offers one KVM_RUN exit of vCPU `vcpu_index` to the plugin.
 *
 * `run` is the vCPU's mmap'ed kvm_run; the plugin reads exit_reason and,
 * for its exits, the 64-byte Heki payload, and keeps no pointer to it.
 * Returns NOT_HEKI for any exit whose number the plugin does not claim
 * (heki_plugin_exit_number(): 0 until its capability was enabled), silently:
 * the host handles it as usual.  A claimed exit that is not valid (`reason`
 * is not exactly one bit the host asked for) is NOT_HEKI too, reported as
 * HEKI_MALFORMED_EXIT.
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

/*
 * A JSON snapshot of the plugin: the abi asked, the kernel's answers and the
 * profile verified (or why none), exit and capability numbers, masks asked
 * and granted, policy, pins per register (hex and bit names), counters per
 * event kind and register.  The caller frees it with
 * heki_plugin_free_string().  Any thread.  NULL plugin: NULL.
 */
char *heki_plugin_query(HekiPlugin *plugin);

/* ---- migration and snapshots (heki-plugin 1.2) ---- */

/*
 * Kernel pins live in KVM, per VM, and no ioctl reads or sets them: a VM
 * restored elsewhere (a migration's destination, a snapshot loaded into a
 * new process) runs with its pins not enforced.  The option
 * migration=block|allow-unprotected (default block; a policy key, so
 * heki_plugin_set_policy changes it) says whether that may happen.
 */
typedef enum {
    HEKI_MIGRATION_FREE = 0,    /* nothing pinned or restored: no state */
    HEKI_MIGRATION_BLOCKED = 1, /* pins this kernel enforces, migration=block */
    HEKI_MIGRATION_CARRY = 2    /* the state must travel with the VM */
} HekiMigrationStatus;

/*
 * What a migration or snapshot means now.  CARRY: pins with
 * migration=allow-unprotected, or pins restored from a source (already not
 * enforced: migrating on loses nothing more).  A host saves the plugin's
 * state into the stream only when it is not FREE, so that an unpinned VM's
 * stream is what it was without the plugin.  Any thread; with vCPUs
 * stopped the answer is final.  NULL plugin: FREE.
 */
HekiMigrationStatus heki_plugin_migration_status(const HekiPlugin *plugin);

/*
 * Saves the plugin's state (pin ledger, counters, policy identity, profile)
 * as bytes for the migration stream: a versioned, checksummed format
 * (README.md, "Migration and snapshots").  Call on the main loop thread
 * with every vCPU stopped (QEMU: the section's pre_save), after any
 * pending Heki exit was completed.
 *
 * Returns 0 with *data (free with heki_plugin_free_state()) and *size; or
 * -1 with *error (optional; free with heki_plugin_free_string()) when the
 * status is BLOCKED: the message names Heki and says why.  This is the
 * decision that counts: a pin made between the host's blocker check and
 * the save is seen here.  Reported as a HEKI_MIGRATION event ("saved" or
 * "refused").
 */
int heki_plugin_save_state(HekiPlugin *plugin, uint8_t **data, uint32_t *size,
                           char **error);

/* Frees the bytes of heki_plugin_save_state().  NULL is ignored. */
void heki_plugin_free_state(uint8_t *data);

/*
 * Restores a state heki_plugin_save_state() made, on the destination:
 * before the guest runs there, main loop thread, vCPUs stopped.  The bytes
 * are hostile input: magic, version, length, checksum and every field are
 * checked before anything changes; nothing is allocated from a length in
 * them.  On success the source's pins become "restored only" (this kernel
 * does not enforce them: query's pins.crN.restored-only; a denial is never
 * reported for them) and the source's counters are added to this plugin's.
 * The plugin keeps its own options (policy, migration=): the source's
 * profile and vm-name are reported.  Reported as a HEKI_MIGRATION event
 * ("restored", or "rejected" with the reason).
 *
 * Returns 0; or -1 with *error (optional; free with
 * heki_plugin_free_string()) naming what is wrong, and nothing changed.
 */
int heki_plugin_restore_state(HekiPlugin *plugin, const uint8_t *data,
                              uint32_t size, char **error);
/* ---- reset (heki-plugin 1.2) ---- */

/* Why the VMM is about to reset the VM (QEMU's cause in brackets). */
typedef enum HekiResetCause {
    HEKI_RESET_CAUSE_GUEST = 0, /* a reboot, a triple fault (guest-reset) */
    HEKI_RESET_CAUSE_HOST = 1,  /* the operator (host-qmp-system-reset) */
    HEKI_RESET_CAUSE_PANIC = 2, /* a reset verdict, a panic (guest-panic) */
    HEKI_RESET_CAUSE_OTHER = 3  /* any other reason */
} HekiResetCause;

/*
 * The VMM is about to reset the whole VM (all vCPUs stopped, every pending
 * Heki exit completed: KVM_RUN with immediate_exit set, as KVM keeps the
 * completion armed across KVM_SET_REGS/SREGS).  Heki pins live in KVM and
 * no ioctl clears them, so a reset in place leaves a rebooting guest with
 * its old pins: the first CR0 write without WP of its early boot is denied.
 * Returns what the VMM does instead of the reset:
 *  - the VM has no pin (and every pin would have been seen): RESET, the
 *    reset goes ahead, nothing is reported;
 *  - otherwise the on-reset option decides: POWEROFF (on-reset=poweroff,
 *    the default: a fresh VM has no pins, the management layer starts one),
 *    EXIT (on-reset=exit: end the VMM with a failure status) or RESET
 *    (on-reset=keep-pins: the RFC's reset in place, pins and ledger kept),
 *    announced by a HEKI_RESET event delivered before this returns (event,
 *    audit log, log), after the events the vCPUs had queued (called from
 *    inside one of the plugin's callbacks: at its next dispatch).
 * A RESET also forgets the pins a heki_plugin_restore_state() brought
 * (restored only): they described the guest that the reset ends.
 * Main loop thread.  An unknown cause is reported as OTHER.  NULL plugin:
 * RESET.
 */
HekiVerdict heki_plugin_reset(HekiPlugin *plugin, HekiResetCause cause);

#endif /* HEKI_PLUGIN_H */
