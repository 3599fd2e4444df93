/* Shared pieces of heki-bench (bench.c, kvm_bench.c). */
#ifndef HEKI_BENCH_H
#define HEKI_BENCH_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "../include/heki_plugin.h"
#include "heki_alloc_counter.h"
#include "heki_host_support.h"
#include "heki_kernel_model.h"
#include "ref_handler.h"

typedef struct {
    RefHandler *(*new_)(uint32_t, uint32_t, uint32_t);
    void (*cap_result)(RefHandler *, int, uint64_t, int);
    int (*handle_exit)(RefHandler *, uint32_t, const void *);
    uint64_t (*drain)(RefHandler *);
    void (*free_)(RefHandler *);
} RefApi;

/* The plugin's functions (HekiHostSupport's loader). */
extern HsPluginApi plugin_api;
extern RefApi ref_api;

uint64_t now_ns(void);
uint64_t thread_cpu_ns(void);


typedef struct { double median, min, max; int n; } Stat;
Stat stat_of(const double *values, int n);

/* Result sink: one JSON object per measure, plus the printed table. */
void result_add(const char *group, const char *name, const char *unit, Stat s, const char *note);
void result_value(const char *group, const char *name, const char *unit, double value, const char *note);

/* kvm_bench.c: returns 0 when it ran, -1 when /dev/kvm is missing. */
int kvm_bench(int repeats, long exits_per_block);

/* heki_plugin_enable_caps for a host whose KVM answers come from the kernel
   model (heki_kernel_model.h: fk_host_check_extension / fk_host_enable_cap, so
   the host's opaque starts with the FkVm *), checked: exits 2 unless it
   succeeded and both exits are claimed with the numbers of `kernel`'s
   profile, so what is measured is the claimed path. */
void enable_caps_or_exit(HekiPlugin *plugin, const FkVm *kernel);
#endif
