/*
 * fuzz_state.c - heki_plugin_restore_state over hostile bytes (a crafted or
 * corrupt migration stream), and round trips of the states it accepts.
 *
 * Input: a flags byte, then the bytes to restore.  Flags: bit 0 rewrites
 * the header's body length to fit the input and bit 1 the trailing
 * FNV-1a checksum, so that the fuzzer reaches the field checks behind the
 * frame; bit 2 restores into a plugin that already restored once (a
 * loadvm over a restored VM); bit 3 creates the plugins with
 * migration=allow-unprotected and a vm-name.
 *
 * Oracles: 0 or -1, -1 with a plugin error message; a refusal changes
 * nothing (the query's restored flag, the migration status); an accepted
 * state leaves the status FREE or CARRY, never BLOCKED (restored pins are
 * not enforced), is saved again (0, bytes), and those bytes restore into a
 * fresh plugin whose own save gives the same bytes (a fixed point: restore
 * and save agree on every field); every event (HEKI_MIGRATION restored or
 * rejected, one per restore) and log line is checked; no leak.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_support.h"

#define HEADER 16
#define TRAILER 8

static FzHost hosts[3];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    for (int i = 0; i < 3; i++) fz_host_init(&hosts[i]);
    return 0;
}

static uint64_t fnv1a(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static HekiPlugin *make(FzHost *h, bool allow) {
    const char *options[] = {"rate-limit=0", "migration=allow-unprotected", "vm-name=fuzz \"state\""};
    char *error = NULL;
    FkProfile v2 = fk_profile(FK_PROFILE_V2);
    fz_host_kernel(h, &v2, FK_KERNEL_HEKI, true);
    HekiPlugin *p = heki_plugin_new(&h->host, allow ? 3 : 1, options, &error);
    if (!p) fz_fail("heki_plugin_new: %s", error ? error : "(null)");
    if (fz_enable_caps(h, p, true) != 0) fz_fail("enable_caps on a Heki v2 kernel failed");
    fz_dispatch(h);
    return p;
}

static bool restored(HekiPlugin *p) {
    char *q = heki_plugin_query(p);
    if (!q) fz_fail("query returned NULL");
    fz_check_json("query", q);
    const char *at = strstr(q, "\"migration\":{\"status\":");
    if (!at) fz_fail("query without migration: %s", q);
    bool yes = strstr(at, "\"restored\":true") != NULL;
    heki_plugin_free_string(q);
    return yes;
}

/* Restores `data`; returns the result after checking the outcome. */
static int restore(FzHost *h, HekiPlugin *p, const uint8_t *data, uint32_t size) {
    HekiMigrationStatus before = heki_plugin_migration_status(p);
    bool was_restored = restored(p);
    uint64_t events = h->events[FZ_MIGRATION];
    char *error = (char *)0x1;
    int r = heki_plugin_restore_state(p, data, size, &error);
    if (r == -1) {
        fz_check_message("heki_plugin_restore_state", error == (char *)0x1 ? NULL : error);
        heki_plugin_free_string(error);
        if (heki_plugin_migration_status(p) != before || restored(p) != was_restored)
            fz_fail("a refused state changed the plugin");
    } else if (r == 0) {
        if (error) fz_fail("restore returned 0 and set *error");
        if (!restored(p)) fz_fail("restored, but the query says not");
        if (heki_plugin_migration_status(p) == HEKI_MIGRATION_BLOCKED)
            fz_fail("restored-only pins block migration");
    } else {
        fz_fail("heki_plugin_restore_state returned %d", r);
    }
    fz_dispatch(h);
    if (h->events[FZ_MIGRATION] != events + 1) fz_fail("a restore without one HEKI_MIGRATION");
    return r;
}

static uint8_t *save(HekiPlugin *p, uint32_t *size) {
    uint8_t *data = NULL;
    char *error = NULL;
    if (heki_plugin_save_state(p, &data, size, &error) != 0) fz_fail("save after a restore failed: %s", error);
    if (!data || error || *size < HEADER + TRAILER) fz_fail("save_state's outputs");
    return data;
}

int LLVMFuzzerTestOneInput(const uint8_t *input, size_t size) {
    if (size < 1 || size > 4096) return -1;
    uint8_t flags = input[0];
    uint32_t n = (uint32_t)(size - 1);
    uint8_t *bytes = malloc(n ? n : 1);
    memcpy(bytes, input + 1, n);
    if ((flags & 1) && n >= HEADER + TRAILER) {
        uint32_t body = n - HEADER - TRAILER;
        memcpy(bytes + 12, &body, 4);
    }
    if ((flags & 2) && n >= TRAILER) {
        uint64_t sum = fnv1a(bytes, n - TRAILER);
        memcpy(bytes + n - TRAILER, &sum, TRAILER);
    }
    bool allow = flags & 8;
    HekiPlugin *a = make(&hosts[0], allow);
    if (flags & 4) {
        /* A plugin that restored before: the fixed point below still holds. */
        HekiPlugin *seed = make(&hosts[2], true);
        uint32_t seed_size;
        uint8_t *seed_bytes = save(seed, &seed_size);
        if (restore(&hosts[0], a, seed_bytes, seed_size) != 0) fz_fail("a saved state was refused");
        heki_plugin_free_state(seed_bytes);
        heki_plugin_free(seed);
        fz_dispatch(&hosts[2]);
    }
    if (restore(&hosts[0], a, n ? bytes : NULL, n) == 0) {
        uint32_t first_size, second_size;
        uint8_t *first = save(a, &first_size);
        HekiPlugin *b = make(&hosts[1], allow);
        if (restore(&hosts[1], b, first, first_size) != 0) fz_fail("the plugin refused its own state");
        uint8_t *second = save(b, &second_size);
        if (first_size != second_size || memcmp(first, second, first_size) != 0)
            fz_fail("restore then save is no fixed point (%u vs %u bytes)", first_size, second_size);
        heki_plugin_free_state(first);
        heki_plugin_free_state(second);
        heki_plugin_free(b);
        fz_dispatch(&hosts[1]);
    }
    /* Not NULL with a size: refused, never read. */
    char *error = NULL;
    if (heki_plugin_restore_state(a, NULL, 8, &error) != -1 || !error) fz_fail("NULL data with size 8 accepted");
    heki_plugin_free_string(error);
    heki_plugin_free(a);
    fz_dispatch(&hosts[0]);
    free(bytes);
    return 0;
}
