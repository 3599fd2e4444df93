/* Shared pieces of heki-bench (bench.c, kvm_bench.c). */
#ifndef HEKI_BENCH_H
#define HEKI_BENCH_H
#include <stddef.h>
#include <stdint.h>
#include "../include/heki_plugin.h"
#include "fake_kernel.h"
#include "ref_handler.h"

typedef struct {
    uint32_t (*abi_version)(void);
    HekiPlugin *(*new_)(const HekiHost *, int, const char *const *, char **);
    void (*free_)(HekiPlugin *);
    void (*free_string)(char *);
    uint32_t (*exit_number)(const HekiPlugin *, HekiExitKind);
    int (*enable_caps)(HekiPlugin *, char **);
    HekiVerdict (*handle_exit)(HekiPlugin *, uint32_t, const struct kvm_run *);
    char *(*query)(HekiPlugin *);
} PluginApi;

typedef struct {
    RefHandler *(*new_)(uint32_t, uint32_t, uint32_t);
    void (*cap_result)(RefHandler *, int, uint64_t, int);
    int (*handle_exit)(RefHandler *, uint32_t, const void *);
    uint64_t (*drain)(RefHandler *);
    void (*free_)(RefHandler *);
} RefApi;

extern PluginApi plugin_api;
extern RefApi ref_api;

uint64_t now_ns(void);
uint64_t thread_cpu_ns(void);

/* Allocation counting (malloc interposed, counted per thread while on). */
void alloc_counting(int on);
long alloc_count_thread(void);

typedef struct { double median, min, max; int n; } Stat;
Stat stat_of(const double *values, int n);

/* Result sink: one JSON object per measure, plus the printed table. */
void result_add(const char *group, const char *name, const char *unit, Stat s, const char *note);
void result_value(const char *group, const char *name, const char *unit, double value, const char *note);

/* kvm_bench.c: returns 0 when it ran, -1 when /dev/kvm is missing. */
int kvm_bench(int repeats, long exits_per_block);

/* heki_plugin_enable_caps for a host whose KVM answers come from the kernel
   model (fake_kernel.h: fk_host_check_extension / fk_host_enable_cap, so
   the host's opaque starts with the FkVm *), checked: exits 2 unless it
   succeeded and both exits are claimed with the numbers of `kernel`'s
   profile, so what is measured is the claimed path. */
void enable_caps_or_exit(HekiPlugin *plugin, const FkVm *kernel);
#endif
