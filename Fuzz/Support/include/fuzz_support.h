/*
 * fuzz_support.h - what the libFuzzer targets of heki-plugin share: a host
 * whose callbacks check every event and log line the plugin produces, and a
 * JSON validator (the oracle for "guest bytes never break the JSON").
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

/* Event kinds, in the order of the plugin's EventKind. */
enum {
    FZ_CONFIGURE, FZ_DENIAL, FZ_WEAK_PINNING, FZ_MALFORMED, FZ_CAPABILITY,
    FZ_SUPPRESSED, FZ_KINDS
};

/* What one plugin lifetime delivered to the host. */
typedef struct FzHost {
    HekiHost host;
    GMainContext *context;
    uint64_t events[FZ_KINDS];     /* individual events delivered, per kind */
    uint64_t suppressed[FZ_KINDS]; /* sum of HEKI_SUPPRESSED counts, per coalesced kind */
    uint64_t logs;
    /* Set by the event callback to make it free the plugin (once). */
    HekiPlugin **free_from_callback;
} FzHost;

/* A host with its own context (acquired by this thread), both callbacks. */
void fz_host_init(FzHost *h);
/* Releases the context. */
void fz_host_destroy(FzHost *h);
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

/* Aborts with a message (libFuzzer then saves the input). */
void fz_fail(const char *format, ...) __attribute__((noreturn, format(printf, 1, 2)));

#endif /* HEKI_FUZZ_SUPPORT_H */
