/*
 * fake_vmm.h - the VMM side of the fake host: what a KVM VMM does with
 * heki-plugin, through the public header only.
 *
 *  - the library: loaded by HekiHostSupport (heki_host_support.h,
 *    hs_library_open), whose typed table the VM copies.
 *  - FhVm: one VM.  Owns a private GMainContext (acquired by the creating
 *    thread for the VM's life: that thread is "the main loop thread"), the
 *    HekiHost whose callbacks record events and log lines, the kernel model
 *    (heki_kernel_model.h), and N vCPUs each with an mmap'ed struct kvm_run and a
 *    "guest program".  fh_vm_run() runs the vCPUs on threads, hands every
 *    exit to heki_plugin_handle_exit() and applies the verdict, while the
 *    calling thread iterates the context.
 *
 * Swift-friendly: opaque pointers, plain C types, no variadics, no unions.
 * Call every fh_vm_* function on the thread that created the FhVm.
 * Strings returned as `char *` are freed with fh_free_string(); `const char *`
 * ones are owned by the FhVm.
 */
#ifndef HEKI_FAKE_VMM_H
#define HEKI_FAKE_VMM_H

#include <stdbool.h>
#include <stdint.h>

#include "../../../include/heki_plugin.h"
#include "heki_host_support.h"
#include "heki_kernel_model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Strings this header returns as `char *`. */
void fh_free_string(char *string);

/* ---- one VM ------------------------------------------------------------ */

typedef struct FhVm FhVm;

/* Verdict slots for the counters: HekiVerdict values -1..5, plus an "invalid"
   slot for a value outside the enum. */
#define FH_VERDICT_INVALID 6
/* fh_vm_cap_kvm_result() for a kind whose mask was 0 (not enabled). */
#define FH_CAP_SKIPPED 1
#define FH_CAP_NOT_TRIED 2
/* Defaults for the recorded lists (counts stay exact beyond them). */
#define FH_DEFAULT_EVENT_CAPACITY 100000u
#define FH_DEFAULT_LOG_CAPACITY 10000u
#define FH_MAX_VCPUS 64u

/* A VM whose kernel side follows `kernel_profile` (NULL: v2) on a host with
   FK_DEFAULT_HOST_CR0/CR4.  The VM copies `lib`'s function table: it keeps
   working after hs_library_close (the library is linked nodelete). */
FhVm *fh_vm_new(HsLibrary *lib, const FkProfile *kernel_profile);
/* Frees the plugin (if still there, on this thread), the vCPUs, the kernel
   model and the context. */
void fh_vm_free(FhVm *vm);

FkVm *fh_vm_kernel(FhVm *vm);
GMainContext *fh_vm_context(FhVm *vm);
const HsPluginApi *fh_vm_api(FhVm *vm);

/* The HekiHost handed to heki_plugin_new. */
void fh_vm_set_host_size(FhVm *vm, uint32_t size); /* default sizeof(HekiHost) */
void fh_vm_set_host_callbacks(FhVm *vm, bool with_log, bool with_event);
/* check_extension and enable_cap (into the kernel model, recorded), and
   apply_verdict (counted; stops a running VM like a vCPU's verdict).
   Default: both true. */
void fh_vm_set_host_kvm(FhVm *vm, bool with_kvm, bool with_apply_verdict);
/* Gives the plugin HekiHost.migration_blocker (off by default: a host that
   never migrates).  What it said last, how often, and its reason ("" when
   unblocked). */
void fh_vm_set_migration_blocker(FhVm *vm, bool with_migration_blocker);
int fh_vm_migration_blocked(FhVm *vm);
uint64_t fh_vm_migration_blocker_calls(FhVm *vm);
const char *fh_vm_migration_blocker_reason(FhVm *vm);
void fh_vm_set_event_capacity(FhVm *vm, uint32_t capacity);
void fh_vm_set_log_capacity(FhVm *vm, uint32_t capacity);
/* Optional live echo of each event / log line (the demo prints with it). */
typedef void (*FhEventHook)(void *user_data, const char *name, const char *data_json);
typedef void (*FhLogHook)(void *user_data, HekiLogLevel level, const char *message);
void fh_vm_set_event_hook(FhVm *vm, FhEventHook hook, void *user_data);
void fh_vm_set_log_hook(FhVm *vm, FhLogHook hook, void *user_data);

/* Options for heki_plugin_new, "key=value", in order. */
void fh_vm_add_option(FhVm *vm, const char *option);
void fh_vm_clear_options(FhVm *vm);
/* heki_plugin_new with the options added so far: 0, or -1 with
   fh_vm_last_error() set (the plugin's message, or the host's). */
int fh_vm_create_plugin(FhVm *vm);
int fh_vm_create_plugin_argv(FhVm *vm, int argc, const char *const *argv);
const char *fh_vm_last_error(FhVm *vm); /* "" when none */
HekiPlugin *fh_vm_plugin(FhVm *vm);
/* heki_plugin_free on this thread; events still pending are delivered to the
   callbacks, which stay valid.  No-op without a plugin. */
void fh_vm_free_plugin(FhVm *vm);
/* Drops the VM's pointer to the plugin without freeing it: for a test whose
   own callback already called heki_plugin_free through the raw table. */
void fh_vm_forget_plugin(FhVm *vm);

/* heki_plugin_enable_caps: the plugin asks the kernel model through the
   host's check_extension and enable_cap.  Returns its result (0 or -1);
   fh_vm_last_error() holds its *error ("" when none). */
int fh_vm_enable_caps(FhVm *vm);
/* For the capability the plugin verified for `kind`: what KVM_ENABLE_CAP
   returned (0, -errno), FH_CAP_SKIPPED when it was not asked, or
   FH_CAP_NOT_TRIED before fh_vm_enable_caps. */
int fh_vm_cap_kvm_result(FhVm *vm, HekiExitKind kind);

/* The ioctl trace of the host callbacks, in order. */
typedef struct FhCheckCall {
    uint32_t cap;
    int answer;
} FhCheckCall;
typedef struct FhEnableCall {
    uint32_t cap;
    uint64_t mask;
    int result;
} FhEnableCall;
uint32_t fh_vm_check_call_count(FhVm *vm);
FhCheckCall fh_vm_check_call(FhVm *vm, uint32_t index); /* zeros past the end */
uint32_t fh_vm_enable_call_count(FhVm *vm);
FhEnableCall fh_vm_enable_call(FhVm *vm, uint32_t index);

/* heki_plugin_flush on this thread (no plugin: nothing). */
void fh_vm_flush(FhVm *vm);
/* heki_plugin_set_policy on this thread: 0, or -1 with fh_vm_last_error()
   set (the plugin's message). */
int fh_vm_set_policy(FhVm *vm, int argc, const char *const *argv);
/* heki_plugin_start (the guest runs: the pin deadline starts). */
void fh_vm_start(FhVm *vm);
/* How often apply_verdict was called with `verdict` (HekiVerdict, or
   FH_VERDICT_INVALID for a value outside it; anything else: 0). */
uint64_t fh_vm_applied_verdicts(FhVm *vm, int verdict);

/* Thin wrappers over the table (plugin of this VM; 0/NOT_HEKI without one). */
uint32_t fh_vm_exit_number(FhVm *vm, HekiExitKind kind);
uint32_t fh_vm_cap_number(FhVm *vm, HekiExitKind kind);
uint64_t fh_vm_cap_mask(FhVm *vm, HekiExitKind kind);
int fh_vm_cap_result(FhVm *vm, HekiExitKind kind, int kvm_result);
int fh_vm_handle_exit(FhVm *vm, uint32_t vcpu_index, const struct kvm_run *run);
/* heki_plugin_query, copied (fh_free_string); NULL without a plugin. */
char *fh_vm_query(FhVm *vm);

/* ---- vCPUs and guest programs ------------------------------------------ */

/* Adds vCPUs until there are `count` (at most FH_MAX_VCPUS): each gets an
   mmap'ed, page-rounded kvm_run and an FkVcpu.  Returns the count. */
uint32_t fh_vm_set_vcpus(FhVm *vm, uint32_t count);
uint32_t fh_vm_vcpu_count(FhVm *vm);
FkVcpu *fh_vm_vcpu(FhVm *vm, uint32_t index);
struct kvm_run *fh_vm_vcpu_run(FhVm *vm, uint32_t index);

/* Program ops, appended to vCPU `vcpu`'s program; each runs `repeat` times.
   Returns 0, or -1 for a bad vCPU index. */
int fh_vm_op_pin(FhVm *vm, uint32_t vcpu, int cr, uint64_t bits, uint64_t repeat);
int fh_vm_op_hypercall(FhVm *vm, uint32_t vcpu, uint64_t a0, uint64_t a1,
                       uint64_t a2, uint64_t repeat);
int fh_vm_op_write_cr(FhVm *vm, uint32_t vcpu, int cr, uint64_t value, uint64_t repeat);
/* Writes exit_reason and the 8 payload words (NULL: zeros) into kvm_run and
   exits to the VMM, without the kernel model (foreign or malformed exits). */
int fh_vm_op_raw_exit(FhVm *vm, uint32_t vcpu, uint32_t exit_reason,
                      const uint64_t *words8, uint64_t repeat);
/* The guest asks for a reset (a reboot, a triple fault: KVM_EXIT_SHUTDOWN):
   the VM stops with FH_STOP_GUEST_RESET and fh_vm_reset(GUEST) follows. */
int fh_vm_op_reboot(FhVm *vm, uint32_t vcpu);
/* Drops all programs (not the counters). */
void fh_vm_clear_programs(FhVm *vm);

/* Stop reasons: the verdict that stopped the VM. */
#define FH_STOP_NONE 0 /* every program ran to its end */
#define FH_STOP_GUEST_RESET 16 /* a vCPU ran fh_vm_op_reboot */

/* Runs every vCPU's program (from where it stopped last time; a pending
   exit is completed first, as KVM_RUN does) on its own thread until all are
   done or a verdict stops the VM; meanwhile this thread iterates the
   context.  PAUSE stops the VM (all vCPUs stop at their next exit
   boundary); POWEROFF/EXIT stop it; RESET (and FH_STOP_GUEST_RESET) stop
   it, then fh_vm_reset(PANIC, or GUEST).  Returns the stop reason
   (FH_STOP_NONE, FH_STOP_GUEST_RESET or the HekiVerdict that stopped it
   first). */
int fh_vm_run(FhVm *vm);
int fh_vm_stop_reason(FhVm *vm);

/* A reset of the stopped VM, as a VMM does it: every pending exit is
   completed first (KVM_RUN with immediate_exit), then heki_plugin_reset
   says what the reset becomes: RESET (fk_vm_reset: CR state reset, pins
   kept; counted in fh_vm_resets), POWEROFF (fh_vm_poweroffs) or EXIT
   (fh_vm_exit_requests).  Without a plugin: RESET.  Returns that verdict. */
int fh_vm_reset(FhVm *vm, HekiResetCause cause);
/* What the last fh_vm_reset became (0, RESUME, before any). */
int fh_vm_last_reset_verdict(FhVm *vm);

/* A vCPU's registers as a VMM saves them (migration, snapshot): its pending
   exit is completed first (KVM_RUN with immediate_exit), so the saved rax
   holds the hypercall's result and a denial's #GP is delivered.  Zeros for
   a bad index. */
typedef struct FhVcpuState {
    uint64_t cr0, cr4, rax, rip, gp_count;
} FhVcpuState;
FhVcpuState fh_vm_save_vcpu(FhVm *vm, uint32_t index);

/* Main loop helpers (this thread). */
void fh_vm_iterate_until_idle(FhVm *vm);
void fh_vm_run_loop_ms(FhVm *vm, uint32_t milliseconds);

/* ---- what happened ----------------------------------------------------- */

uint64_t fh_vm_exits(FhVm *vm);
uint64_t fh_vm_vcpu_exits(FhVm *vm, uint32_t vcpu);
/* verdict: HekiVerdict value (-1..5) or FH_VERDICT_INVALID. */
uint64_t fh_vm_verdict_count(FhVm *vm, int verdict);
uint64_t fh_vm_vcpu_verdict_count(FhVm *vm, uint32_t vcpu, int verdict);
uint64_t fh_vm_host_handled(FhVm *vm); /* NOT_HEKI exits */
uint64_t fh_vm_gp_total(FhVm *vm);
uint64_t fh_vm_vcpu_gp(FhVm *vm, uint32_t vcpu);
uint64_t fh_vm_resets(FhVm *vm);
uint64_t fh_vm_pauses(FhVm *vm);
uint64_t fh_vm_poweroffs(FhVm *vm);
uint64_t fh_vm_exit_requests(FhVm *vm);

/* Events delivered to HekiHost.event: the total, per name, and the sum of
   HEKI_SUPPRESSED "count" for one coalesced event name are exact; the
   first `capacity` events are kept for inspection. */
uint64_t fh_vm_event_total(FhVm *vm);
uint64_t fh_vm_event_count_named(FhVm *vm, const char *name);
uint64_t fh_vm_suppressed_sum(FhVm *vm, const char *event_name);
uint32_t fh_vm_event_count(FhVm *vm);
const char *fh_vm_event_name(FhVm *vm, uint32_t index);
const char *fh_vm_event_data(FhVm *vm, uint32_t index);
/* Log lines delivered to HekiHost.log. */
uint64_t fh_vm_log_total(FhVm *vm);
uint32_t fh_vm_log_count(FhVm *vm);
int fh_vm_log_level(FhVm *vm, uint32_t index);
const char *fh_vm_log_message(FhVm *vm, uint32_t index);
/* Forget the recorded events and log lines (counters included). */
void fh_vm_clear_events(FhVm *vm);
/* Callbacks that did not run on the thread owning the context. */
uint64_t fh_vm_callback_violations(FhVm *vm);

#ifdef __cplusplus
}
#endif

#endif /* HEKI_FAKE_VMM_H */
