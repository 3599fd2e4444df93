/*
 * fuzz_options.c - heki_plugin_new over an argv of arbitrary strings.
 *
 * Input: the argv strings separated by '\n' (at most 32; the bytes are
 * anything, invalid UTF-8 and control characters included).  A first line
 * "kernel=v3", "kernel=stock" or "kernel=irqchip" is no argument: it makes
 * the host's kernel a Heki v3 kernel or a stock one (without or with an
 * in-kernel irqchip) instead of a Heki v2 kernel.  An audit-log
 * value is never used as a path: it selects one of a few prepared places
 * (/dev/null, a file, a symlink, a directory, a missing directory), so the
 * fuzzer cannot litter the file system.
 *
 * Oracles: NULL comes with a message, a plugin without one; the message is
 * valid UTF-8 without control characters and bounded (hostile text is
 * escaped and cut); a plugin that was made answers query with valid JSON
 * (vm-name and everything else escaped), checks the kernel
 * (fz_enable_caps: never a KVM_ENABLE_CAP of a number that did not answer
 * 3, none on a stock kernel), claims an exit only on a Heki kernel, reports
 * the check and each KVM_ENABLE_CAP as a HEKI_CAPABILITY and frees cleanly,
 * with every event and log line checked.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_support.h"

#define MAX_ARGS 32

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

static const struct {
    const char *line;
    FkProfileId profile;
    FkKernelKind kind;
} kernels[] = {
    {"kernel=v3", FK_PROFILE_V3, FK_KERNEL_HEKI},
    {"kernel=stock", FK_PROFILE_V2, FK_KERNEL_STOCK},
    {"kernel=irqchip", FK_PROFILE_V2, FK_KERNEL_STOCK_IRQCHIP},
};

/* The kernel a first line names (consumed), else a Heki v2 kernel. */
static void choose_kernel(const uint8_t **data, size_t *size) {
    FkProfile profile = fk_profile(FK_PROFILE_V2);
    FkKernelKind kind = FK_KERNEL_HEKI;
    for (size_t k = 0; k < sizeof kernels / sizeof kernels[0]; k++) {
        size_t n = strlen(kernels[k].line);
        if (*size >= n + 1 && memcmp(*data, kernels[k].line, n) == 0 && (*data)[n] == '\n') {
            profile = fk_profile(kernels[k].profile);
            kind = kernels[k].kind;
            *data += n + 1;
            *size -= n + 1;
            break;
        }
    }
    fz_host_kernel(&host, &profile, kind, true);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *argv[MAX_ARGS];
    int argc = 0;
    bool audit_file = false;
    size_t start = 0;
    choose_kernel(&data, &size);
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
        fz_check_message("heki_plugin_new", error);
        heki_plugin_free_string(error);
        return 0;
    }
    if (error) fz_fail("heki_plugin_new succeeded and set *error");
    char *q = heki_plugin_query(plugin);
    fz_check_json("query", q);
    heki_plugin_free_string(q);
    fz_enable_caps(&host, plugin, true);
    bool heki = fk_vm_kernel(host.kernel) == FK_KERNEL_HEKI;
    for (int kind = HEKI_EXIT_CONFIGURE; kind <= HEKI_EXIT_DENIAL; kind++)
        if (!heki && (heki_plugin_cap_number(plugin, (HekiExitKind)kind) ||
                      heki_plugin_exit_number(plugin, (HekiExitKind)kind)))
            fz_fail("a capability verified or an exit claimed on a stock kernel");
    q = heki_plugin_query(plugin);
    fz_check_json("query after enable_caps", q);
    heki_plugin_free_string(q);
    heki_plugin_free(plugin);
    fz_dispatch(&host);
    if (host.events[FZ_CAPABILITY] != 1 + host.enables)
        fz_fail("%llu HEKI_CAPABILITY for the check and %llu KVM_ENABLE_CAP",
                (unsigned long long)host.events[FZ_CAPABILITY], (unsigned long long)host.enables);
    return 0;
}
