/*
 * selftest.c - proves libheki-kvm-emu.so on the real /dev/kvm, without QEMU.
 *
 * A minimal VMM: 32-bit protected-mode guests (selftest_guest.S) asking for
 * Heki operations with `outb %al,$0xe5`, and assertions on what a VMM sees
 * (exits and their payload, KVM_EXIT_IO left alone) and on what the guest
 * sees (rax, #GP with error code 0 at the OUT, CR values via KVM_GET_SREGS).
 *
 * Run with the emulator preloaded (`make check` does it).  Without arguments
 * it runs every scenario in a child process of its own (re-exec with the
 * scenario's environment, which the emulator reads at start) and exits
 * non-zero if one failed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "selftest_vmm.h"

/* ---- the driver ------------------------------------------------------------- */

typedef struct {
    const char *name;
    const char *env[3]; /* NAME=value, set for this scenario's process */
} Scenario;

static const Scenario scenarios[] = {
    {"caps-v2", {"HEKI_EMU_TRACE=@"}},
    {"caps-masked", {"HEKI_EMU_HOST_CR4=0x100000"}}, /* SMEP only: SMAP is masked */
    {"nocaps", {0}},
    {"v3", {"HEKI_EMU_ABI=v3"}},
    {"heki-off", {"HEKI_EMU_HEKI=off"}},
    {"immediate-exit", {0}},
    {"reset-pending", {0}},
    {"hostile", {0}},
    {"storm", {0}},
    {"kick", {0}},
    {"bench", {0}},
};

static const char *bad_envs[] = {"HEKI_EMU_ABI=v9", "HEKI_EMU_HEKI=maybe", "HEKI_EMU_HOST_CR4=xyz",
                                 "HEKI_EMU_TRACE="};

static int run_scenario(const char *name) {
    scenario = name;
    sys_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (sys_fd < 0)
        die("open /dev/kvm");
    if (!strcmp(name, "caps-v2"))
        scenario_sequence(true, true);
    else if (!strcmp(name, "caps-masked"))
        scenario_sequence(true, false); /* and #GP without KVM_CAP_EXCEPTION_PAYLOAD */
    else if (!strcmp(name, "nocaps"))
        scenario_sequence(false, true);
    else if (!strcmp(name, "v3"))
        scenario_v3();
    else if (!strcmp(name, "heki-off"))
        scenario_off();
    else if (!strcmp(name, "immediate-exit"))
        scenario_immediate();
    else if (!strcmp(name, "reset-pending"))
        scenario_reset_pending();
    else if (!strcmp(name, "hostile"))
        scenario_hostile();
    else if (!strcmp(name, "storm"))
        scenario_storm();
    else if (!strcmp(name, "kick"))
        scenario_kick();
    else if (!strcmp(name, "bench"))
        scenario_bench();
    else
        CHECK(false, "unknown scenario %s", name);
    printf("  [%s] %d checks, %d failed\n", name, checks, failures);
    return failures ? 1 : 0;
}

/* Re-executes this program for one scenario; returns its wait status. */
static int spawn(const char *name, const char *const *env, bool echo, char *errbuf, size_t errlen) {
    int pipefd[2];
    if (pipe(pipefd) < 0)
        die("pipe");
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        dup2(pipefd[1], 2);
        for (int i = 0; env[i]; i++)
            putenv((char *)env[i]);
        execl("/proc/self/exe", "emu-selftest", name, (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    size_t used = 0;
    ssize_t n;
    char chunk[512];
    while ((n = read(pipefd[0], chunk, sizeof chunk)) > 0) {
        if (echo) /* failures stay visible */
            fwrite(chunk, 1, (size_t)n, stderr);
        size_t take = (size_t)n < errlen - 1 - used ? (size_t)n : errlen - 1 - used;
        memcpy(errbuf + used, chunk, take);
        used += take;
    }
    errbuf[used] = 0;
    close(pipefd[0]);
    int status;
    waitpid(pid, &status, 0);
    return status;
}

static int count_lines(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int n = 0, ch;
    while ((ch = fgetc(f)) != EOF)
        n += ch == '\n';
    fclose(f);
    return n;
}

int main(int argc, char **argv) {
    vm_info_fn = (heki_emu_vm_info_fn)dlsym(RTLD_DEFAULT, "heki_emu_vm_info");
    vcpu_info_fn = (heki_emu_vcpu_info_fn)dlsym(RTLD_DEFAULT, "heki_emu_vcpu_info");
    if (!vm_info_fn || !vcpu_info_fn) {
        fprintf(stderr, "emu-selftest: run me with LD_PRELOAD=libheki-kvm-emu.so\n");
        return 2;
    }
    if (argc > 1)
        return run_scenario(argv[1]);

    char trace_path[] = "/tmp/heki-emu-trace-XXXXXX";
    int tfd = mkstemp(trace_path);
    if (tfd < 0)
        die("mkstemp");
    close(tfd);
    char trace_env[64];
    snprintf(trace_env, sizeof trace_env, "HEKI_EMU_TRACE=%s", trace_path);

    int failed = 0, passed = 0;
    char err[4096];
    printf("heki-kvm-emu self-test on /dev/kvm\n");
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++) {
        const char *env[3] = {0};
        for (int k = 0; k < 2 && scenarios[i].env[k]; k++)
            env[k] = strcmp(scenarios[i].env[k], "HEKI_EMU_TRACE=@") ? scenarios[i].env[k] : trace_env;
        int st = spawn(scenarios[i].name, env, true, err, sizeof err);
        bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        printf("%s %s\n", ok ? "PASS" : "FAIL", scenarios[i].name);
        ok ? passed++ : failed++;
    }
    /* The trace of caps-v2: one line per emulated operation. */
    int lines = count_lines(trace_path);
    scenario = "trace";
    /* version, unknown hypercall, 6 rejected pins, 2 pins + 2 completions,
       2 allowed writes, 2 denials + 2 completions. */
    const int want_lines = 18;
    bool trace_ok = lines == want_lines;
    printf("%s trace: %d lines from caps-v2 (want %d) in %s\n", trace_ok ? "PASS" : "FAIL", lines,
           want_lines, trace_path);
    trace_ok ? passed++ : failed++;
    if (trace_ok)
        unlink(trace_path);

    /* A bad environment aborts the VMM at start, with the reason. */
    for (size_t i = 0; i < sizeof bad_envs / sizeof bad_envs[0]; i++) {
        const char *env[2] = {bad_envs[i], NULL};
        int st = spawn("none", env, false, err, sizeof err);
        char var[32];
        snprintf(var, sizeof var, "%.*s", (int)(strchr(bad_envs[i], '=') - bad_envs[i]), bad_envs[i]);
        bool ok = WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT && strstr(err, var);
        char *nl = strchr(err, '\n');
        if (nl)
            *nl = 0;
        printf("%s bad env %s: %s\n", ok ? "PASS" : "FAIL", bad_envs[i],
               ok ? err : "did not abort at start with the reason");
        ok ? passed++ : failed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
