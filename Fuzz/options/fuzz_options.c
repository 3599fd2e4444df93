/*
 * fuzz_options.c - heki_plugin_new over an argv of arbitrary strings.
 *
 * Input: the argv strings separated by '\n' (at most 32; the bytes are
 * anything, invalid UTF-8 and control characters included).  An audit-log
 * value is never used as a path: it selects one of a few prepared places
 * (/dev/null, a file, a symlink, a directory, a missing directory), so the
 * fuzzer cannot litter the file system.
 *
 * Oracles: NULL comes with a message, a plugin without one; the message is
 * valid UTF-8 without control characters and bounded (hostile text is
 * escaped and cut); a plugin that was made answers query with valid JSON
 * (vm-name and everything else escaped), reports its capabilities and
 * frees cleanly, with every event and log line checked.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_support.h"

#define MAX_ARGS 32
#define MAX_MESSAGE 4096

static FzHost host;
static char places[5][256];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fz_host_init(&host);
    char dir[] = "/tmp/heki-fuzz-options-XXXXXX";
    if (!mkdtemp(dir)) fz_fail("mkdtemp");
    snprintf(places[0], sizeof places[0], "/dev/null");
    snprintf(places[1], sizeof places[1], "%s/audit.jsonl", dir);
    snprintf(places[2], sizeof places[2], "%s/link.jsonl", dir);
    if (symlink(places[1], places[2]) != 0) fz_fail("symlink");
    snprintf(places[3], sizeof places[3], "%s", dir);
    snprintf(places[4], sizeof places[4], "%s/missing/audit.jsonl", dir);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *argv[MAX_ARGS];
    int argc = 0;
    bool audit_file = false;
    size_t start = 0;
    for (size_t i = 0; size > 0 && i <= size && argc < MAX_ARGS; i++) {
        if (i == size || data[i] == '\n') {
            size_t n = i - start;
            char *arg = malloc(n + 1);
            memcpy(arg, data + start, n);
            arg[n] = 0;
            if (strncmp(arg, "audit-log=", 10) == 0) {
                unsigned sum = 0;
                for (size_t k = 10; k < n; k++) sum += (unsigned char)arg[k];
                const char *place = places[sum % 5];
                audit_file |= sum % 5 == 1;
                free(arg);
                arg = malloc(10 + strlen(place) + 1);
                sprintf(arg, "audit-log=%s", place);
            }
            argv[argc++] = arg;
            start = i + 1;
        }
    }

    if (audit_file && truncate(places[1], 0) != 0 && errno != ENOENT) fz_fail("truncate");
    memset(host.events, 0, sizeof host.events);
    memset(host.suppressed, 0, sizeof host.suppressed);
    char *error = NULL;
    HekiPlugin *plugin = heki_plugin_new(&host.host, argc, (const char *const *)argv, &error);
    for (int i = 0; i < argc; i++) free(argv[i]);
    if (!plugin) {
        if (!error) fz_fail("heki_plugin_new failed without a message");
        size_t n = strlen(error);
        if (n == 0 || n > MAX_MESSAGE) fz_fail("message of %zu bytes", n);
        if (strncmp(error, "heki-plugin: ", 13) != 0) fz_fail("message without the prefix: %s", error);
        if (!g_utf8_validate(error, (gssize)n, NULL)) fz_fail("message is not UTF-8");
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)error[i] < 0x20 || error[i] == 0x7f) fz_fail("control character in: %s", error);
        heki_plugin_free_string(error);
        return 0;
    }
    if (error) fz_fail("heki_plugin_new succeeded and set *error");
    char *q = heki_plugin_query(plugin);
    fz_check_json("query", q);
    heki_plugin_free_string(q);
    uint64_t reported = 0;
    for (int kind = HEKI_EXIT_CONFIGURE; kind <= HEKI_EXIT_DENIAL; kind++) {
        if (heki_plugin_cap_mask(plugin, (HekiExitKind)kind) == 0) continue;
        heki_plugin_cap_result(plugin, (HekiExitKind)kind, 0);
        reported++;
    }
    heki_plugin_free(plugin);
    fz_dispatch(&host);
    if (host.events[FZ_CAPABILITY] != reported) fz_fail("capability events lost");
    return 0;
}
