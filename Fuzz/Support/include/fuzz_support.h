/*
 * fuzz_support.h - what the libFuzzer targets of heki-plugin share: a host
 * whose callbacks check every event and log line the plugin produces and
 * answer KVM_CHECK_EXTENSION / KVM_ENABLE_CAP from the kernel model
 * (heki_kernel_model.h: a Heki v2 or v3 kernel, or a stock one), checking how the
 * plugin asks; and a JSON validator (the oracle for "guest bytes never
 * break the JSON").
 *
 * Any violation aborts with a message, so libFuzzer records the input.
 */
#ifndef HEKI_FUZZ_SUPPORT_H
#define HEKI_FUZZ_SUPPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <glib.h>

#include "../../../include/heki_plugin.h"
#include "heki_kernel_model.h"

/* Event kinds, in the order of the plugin's EventKind, then HEKI_POLICY
   (made on the main loop by heki_plugin_set_policy, never coalesced),
   HEKI_MIGRATION and HEKI_RESET (the main loop's too: the state functions
   and heki_plugin_reset). */
enum {
    FZ_CONFIGURE, FZ_DENIAL, FZ_WEAK_PINNING, FZ_MALFORMED, FZ_CAPABILITY,
    FZ_SUPPRESSED, FZ_POLICY, FZ_MIGRATION, FZ_RESET, FZ_KINDS
};

#define FZ_MAX_CHECKED 8

/* What one plugin lifetime delivered to the host. */
typedef struct FzHost {
    HekiHost host; /* opaque: this FzHost */
    GMainContext *context;
    /* The kernel behind check_extension and enable_cap (fz_host_kernel). */
    FkVm *kernel;
    /* Not 0: the host's KVM_ENABLE_CAP of the kernel profile's configure
       [0] / denial [1] capability fails with it before reaching the kernel
       (a VMM whose ioctl is refused). */
    int enable_fault[2];
    uint64_t enables;    /* enable_cap calls since fz_host_kernel */
    bool in_enable_caps; /* inside fz_enable_caps: the callbacks may run */
    /* KVM_CHECK_EXTENSION answers of the current fz_enable_caps call. */
    uint32_t checked_caps[FZ_MAX_CHECKED];
    int checked_answers[FZ_MAX_CHECKED];
    unsigned checked;
    uint64_t events[FZ_KINDS];     /* individual events delivered, per kind */
    uint64_t suppressed[FZ_KINDS]; /* sum of HEKI_SUPPRESSED counts, per coalesced kind */
    uint64_t logs;
    /* HekiHost.migration_blocker: whether the host holds the blocker,
       and how often it was told. */
    bool blocked;
    uint64_t blocker_calls;
    /* Set by the event callback to make it free the plugin (once). */
    HekiPlugin **free_from_callback;
} FzHost;

/* A host with its own context (acquired by this thread), every callback,
   and a Heki v2 kernel. */
void fz_host_init(FzHost *h);
/* Releases the context and the kernel. */
void fz_host_destroy(FzHost *h);
/* A new kernel for the next plugin: `profile` numbers it, `kind` says
   whether it is that Heki kernel (built with CONFIG_HEKI or not) or a stock
   one.  Clears enable_fault and enables. */
void fz_host_kernel(FzHost *h, const FkProfile *profile, FkKernelKind kind, bool heki_built);
/* heki_plugin_enable_caps(plugin, with_error ? &error : NULL), checked:
   the result is 0 or -1, -1 comes with a message (checked, then freed),
   the host's callbacks run only inside it, KVM_ENABLE_CAP only reaches
   capabilities whose KVM_CHECK_EXTENSION answered 3, with a mask of known
   bits that is not 0, and a stock kernel got no KVM_ENABLE_CAP at all (its
   APIC bus cycle is untouched).  Returns the result. */
int fz_enable_caps(FzHost *h, HekiPlugin *plugin, bool with_error);
/* Dispatches until the context has nothing ready. */
void fz_dispatch(FzHost *h);

/* True when text[0..length) is one JSON value (RFC 8259), strings valid
   UTF-8 with no raw control character. */
bool fz_json_valid(const char *text, size_t length);
/* Aborts unless `json` is valid JSON (what names the producer). */
void fz_check_json(const char *what, const char *json);
/* The unsigned number after "key": in a compact JSON object; aborts if absent. */
uint64_t fz_json_number(const char *json, const char *key);

/* The same, searched only after the first occurrence of `scope` (a
   string such as "\"counters\":"): the key's value inside that object. */
uint64_t fz_json_number_in(const char *json, const char *scope, const char *key);

/* Aborts unless `message` is one of the plugin's error messages: prefixed
   "heki-plugin: ", 1..4096 bytes of UTF-8 without control characters. */
void fz_check_message(const char *what, const char *message);

/* Aborts with a message (libFuzzer then saves the input). */
void fz_fail(const char *format, ...) __attribute__((noreturn, format(printf, 1, 2)));

#endif /* HEKI_FUZZ_SUPPORT_H */
