/*
 * heki-demo [--plugin PATH] [plugin options...]
 *
 * Runs a small scenario on the fake host (kernel model + VMM side) with
 * libHekiPlugin.so and prints the event stream and the verdicts:
 *   1. boot: vCPU 0 pins CR0.WP and CR4.SMEP|SMAP|UMIP, as Linux does;
 *   2. attack: vCPU 1 clears CR4.SMEP (on-denial-cr4=pause unless given);
 *   3. storm: 4 vCPUs try 200000 writes that clear CR0.WP (on-denial,
 *      default resume): rate limiting coalesces them into HEKI_SUPPRESSED;
 * then the heki_plugin_query JSON.  Exits 0 only if every check holds.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "heki_kernel_model.h"
#include "fake_vmm.h"

#define STORM_VCPUS 4u
#define STORM_PER_VCPU 50000u
#define PRINT_LIMIT 400u

static unsigned printed, unprinted;
static int failures;
/* In the storm, print only the first few denials (and their log lines). */
static int storm;
static unsigned storm_denials_printed, storm_logs_printed;
#define STORM_PRINT 4u

static void print_event(void *user_data, const char *name, const char *data_json) {
    (void)user_data;
    if (storm && strcmp(name, "HEKI_DENIAL") == 0 && storm_denials_printed++ >= STORM_PRINT) {
        unprinted++;
        return;
    }
    if (printed < PRINT_LIMIT) {
        printf("  event %-20s %s\n", name, data_json);
        printed++;
    } else {
        unprinted++;
    }
}

static void print_log(void *user_data, HekiLogLevel level, const char *message) {
    (void)user_data;
    static const char *const names[] = {"error", "warning", "info", "debug"};
    if (storm && strstr(message, "denied") && storm_logs_printed++ >= STORM_PRINT) {
        unprinted++;
        return;
    }
    if (printed < PRINT_LIMIT) {
        printf("  log   %-7s %s\n", (unsigned)level < 4 ? names[level] : "?", message);
        printed++;
    } else {
        unprinted++;
    }
}

static void check(int ok, const char *what) {
    printf("  check %-4s %s\n", ok ? "ok" : "FAIL", what);
    if (!ok)
        failures++;
}

static const char *verdict_name(int v) {
    switch (v) {
    case HEKI_VERDICT_NOT_HEKI: return "not-heki";
    case HEKI_VERDICT_RESUME: return "resume";
    case HEKI_VERDICT_PAUSE: return "pause";
    case HEKI_VERDICT_POWEROFF: return "poweroff";
    case HEKI_VERDICT_RESET: return "reset";
    case HEKI_VERDICT_EXIT: return "exit";
    default: return "?";
    }
}

static void print_verdicts(FhVm *vm, const char *phase) {
    printf("  verdicts after %s:", phase);
    for (int v = HEKI_VERDICT_NOT_HEKI; v <= HEKI_VERDICT_EXIT; v++) {
        uint64_t n = fh_vm_verdict_count(vm, v);
        if (n)
            printf(" %s=%" PRIu64, verdict_name(v), n);
    }
    printf("\n");
}

static char *default_plugin_path(void) {
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return strdup("libHekiPlugin.so");
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (slash)
        *slash = 0;
    size_t len = strlen(exe) + sizeof "/libHekiPlugin.so";
    char *path = malloc(len);
    if (path)
        snprintf(path, len, "%s/libHekiPlugin.so", exe);
    return path;
}

static int has_key(int argc, char **argv, int first, const char *key) {
    size_t k = strlen(key);
    for (int i = first; i < argc; i++)
        if (strncmp(argv[i], key, k) == 0 && argv[i][k] == '=')
            return 1;
    return 0;
}

int main(int argc, char **argv) {
    char *path = NULL;
    int first = 1;
    if (argc > 1 && strcmp(argv[1], "--help") == 0) {
        printf("usage: heki-demo [--plugin PATH] [plugin options key=value...]\n");
        return 0;
    }
    if (argc > 2 && strcmp(argv[1], "--plugin") == 0) {
        path = strdup(argv[2]);
        first = 3;
    } else {
        path = default_plugin_path();
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    char *error = NULL;
    HsLibrary *lib = hs_library_open(path, HEKI_PLUGIN_ABI_VERSION, &error);
    if (!lib) {
        fprintf(stderr, "heki-demo: %s\n", error ? error : "cannot load the plugin");
        hs_free_string(error);
        free(path);
        return 2;
    }
    printf("loaded %s (ABI version %u)\n", hs_library_path(lib), hs_library_abi_version(lib));

    FhVm *vm = fh_vm_new(lib, NULL);
    fh_vm_set_event_hook(vm, print_event, NULL);
    fh_vm_set_log_hook(vm, print_log, NULL);
    if (!has_key(argc, argv, first, "vm-name"))
        fh_vm_add_option(vm, "vm-name=demo");
    if (!has_key(argc, argv, first, "on-denial-cr4"))
        fh_vm_add_option(vm, "on-denial-cr4=pause");
    for (int i = first; i < argc; i++)
        fh_vm_add_option(vm, argv[i]);
    if (fh_vm_create_plugin(vm) != 0) {
        fprintf(stderr, "heki-demo: %s\n", fh_vm_last_error(vm));
        fh_vm_free(vm);
        hs_library_close(lib);
        free(path);
        return 2;
    }
    /* The plugin checks the modelled kernel, then enables what it verified. */
    if (fh_vm_enable_caps(vm) != 0) {
        fprintf(stderr, "heki-demo: %s\n", fh_vm_last_error(vm));
        fh_vm_free(vm);
        hs_library_close(lib);
        free(path);
        return 2;
    }
    printf("exits: configure=%u denial=%u; caps: configure=%u (mask 0x%" PRIx64
           ") denial=%u (mask 0x%" PRIx64 ")\n",
           fh_vm_exit_number(vm, HEKI_EXIT_CONFIGURE), fh_vm_exit_number(vm, HEKI_EXIT_DENIAL),
           fh_vm_cap_number(vm, HEKI_EXIT_CONFIGURE), fh_vm_cap_mask(vm, HEKI_EXIT_CONFIGURE),
           fh_vm_cap_number(vm, HEKI_EXIT_DENIAL), fh_vm_cap_mask(vm, HEKI_EXIT_DENIAL));
    printf("KVM_ENABLE_CAP: configure=%d denial=%d\n", fh_vm_cap_kvm_result(vm, HEKI_EXIT_CONFIGURE),
           fh_vm_cap_kvm_result(vm, HEKI_EXIT_DENIAL));
    fh_vm_set_vcpus(vm, STORM_VCPUS);
    FkVm *kernel = fh_vm_kernel(vm);

    /* 1. boot */
    printf("\n== 1. boot: vCPU 0 pins CR0.WP and CR4.SMEP|SMAP|UMIP\n");
    fh_vm_op_pin(vm, 0, 0, FK_CR0_WP, 1);
    fh_vm_op_pin(vm, 0, 4, FK_CR4_SMEP | FK_CR4_SMAP | FK_CR4_UMIP, 1);
    int stop = fh_vm_run(vm);
    fh_vm_iterate_until_idle(vm);
    print_verdicts(vm, "boot");
    printf("  kernel pins: cr0=0x%" PRIx64 " cr4=0x%" PRIx64 "; vCPU 0 rax=%" PRIu64 "\n",
           fk_vm_pinned(kernel, 0), fk_vm_pinned(kernel, 4), fk_vcpu_rax(fh_vm_vcpu(vm, 0)));
    check(stop == FH_STOP_NONE, "boot ran to its end");
    check(fk_vm_pinned(kernel, 0) == FK_CR0_WP &&
              fk_vm_pinned(kernel, 4) == (FK_CR4_SMEP | FK_CR4_SMAP | FK_CR4_UMIP),
          "the kernel holds the pins");
    check(fh_vm_event_count_named(vm, "HEKI_CONFIGURE") == 2, "two HEKI_CONFIGURE events");

    /* 2. attack */
    printf("\n== 2. attack: vCPU 1 writes CR4 without SMEP\n");
    fh_vm_clear_programs(vm);
    uint64_t cr4 = fk_vcpu_cr(fh_vm_vcpu(vm, 1), 4);
    fh_vm_op_write_cr(vm, 1, 4, cr4 & ~FK_CR4_SMEP, 1);
    stop = fh_vm_run(vm);
    fh_vm_iterate_until_idle(vm);
    printf("  the VM stopped with verdict: %s\n", stop == FH_STOP_NONE ? "none" : verdict_name(stop));
    print_verdicts(vm, "attack");
    check(fh_vm_event_count_named(vm, "HEKI_DENIAL") == 1, "one HEKI_DENIAL event");
    check(fk_vcpu_cr(fh_vm_vcpu(vm, 1), 4) == cr4, "CR4 kept SMEP");
    if (!has_key(argc, argv, first, "on-denial-cr4"))
        check(stop == HEKI_VERDICT_PAUSE, "on-denial-cr4=pause paused the VM");
    printf("  resuming: KVM_RUN completes the denial with #GP\n");
    fh_vm_clear_programs(vm);
    fh_vm_run(vm);
    check(fh_vm_vcpu_gp(vm, 1) == 1, "vCPU 1 took #GP");

    /* 3. storm */
    printf("\n== 3. storm: %u vCPUs x %u writes clearing CR0.WP\n", STORM_VCPUS, STORM_PER_VCPU);
    fh_vm_clear_programs(vm);
    for (uint32_t i = 0; i < STORM_VCPUS; i++) {
        uint64_t cr0 = fk_vcpu_cr(fh_vm_vcpu(vm, i), 0);
        fh_vm_op_write_cr(vm, i, 0, cr0 & ~FK_CR0_WP, STORM_PER_VCPU);
    }
    storm = 1;
    stop = fh_vm_run(vm);
    printf("  the VM stopped with verdict: %s\n", stop == FH_STOP_NONE ? "none" : verdict_name(stop));
    /* Let one rate-limit window close so a summary shows while running. */
    fh_vm_run_loop_ms(vm, 1500);
    print_verdicts(vm, "storm");

    char *query = fh_vm_query(vm);
    printf("\n== query\n%s\n", query ? query : "(null)");
    check(query != NULL, "heki_plugin_query answered");
    fh_free_string(query);

    printf("\n== heki_plugin_free (delivers what is pending)\n");
    fh_vm_free_plugin(vm);
    if (unprinted)
        printf("  (%u more HEKI_DENIAL events and log lines not printed)\n", unprinted);

    uint64_t denials = fk_vm_denial_exits(kernel);
    uint64_t individual = fh_vm_event_count_named(vm, "HEKI_DENIAL");
    uint64_t suppressed = fh_vm_suppressed_sum(vm, "HEKI_DENIAL");
    printf("\n== accounting\n");
    printf("  denial exits %" PRIu64 " = HEKI_DENIAL events %" PRIu64
           " + HEKI_SUPPRESSED counts %" PRIu64 " (= %" PRIu64 ")\n",
           denials, individual, suppressed, individual + suppressed);
    printf("  #GP seen by the guest: %" PRIu64 "\n", fh_vm_gp_total(vm));
    if (stop == FH_STOP_NONE) {
        check(denials == 1 + (uint64_t)STORM_VCPUS * STORM_PER_VCPU,
              "every storm write was denied by the kernel");
        check(fh_vm_gp_total(vm) == denials, "#GP count == denial exits");
    } else {
        printf("  (the storm stopped at verdict %s: %" PRIu64 " denial exits happened)\n",
               verdict_name(stop), denials);
    }
    check(individual + suppressed == denials, "individual + suppressed == denial exits");
    check(fh_vm_callback_violations(vm) == 0, "callbacks ran only on the main loop thread");

    printf("\n%s\n", failures ? "heki-demo: SOME CHECKS FAILED" : "heki-demo: all checks hold");
    fh_vm_free(vm);
    hs_library_close(lib);
    free(path);
    return failures ? 1 : 0;
}
