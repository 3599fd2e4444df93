/*
 * ref_handler.c - the minimal C reference for heki_plugin_handle_exit,
 * written for the benchmark only: the least work an exit handler with the
 * plugin's contract needs, in plain C11 (issue 13).  No clock, no rate
 * limiter, no counters beyond the overflow count:
 *   decode   exit_reason against the two exit numbers, the capability grant
 *            (acquire load), `reason` exactly one known bit the host asked for;
 *   ledger   the shared pins: a load, and an atomic OR only when the pin adds
 *            bits (configure);
 *   verdict  on-denial / on-weak-pinning from the policy; the violated bits;
 *   enqueue  a 56-byte record (the plugin's size) pushed into a bounded Vyukov MPSC ring of 4096
 *            with an eventfd wake at most once per drain; when the ring is
 *            full, an exact overflow count per kind in a per-vCPU cache line
 *            (no line written by every exit of every vCPU).
 * It is built as its own shared library (libhekiref.so) and dlopen'ed, so
 * both sides are called through a function pointer into a -fPIC .so.
 */
#define _GNU_SOURCE
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "cbridge.h" /* the plugin's own kvm_run reads */
#include "ref_handler.h"

enum { K_CONFIGURE, K_DENIAL, K_WEAK, K_MALFORMED, K_COUNT = 8 };
enum { V_NOT_HEKI = -1, V_RESUME = 0 };
#define QUEUE_CAPACITY 4096
#define SHARDS 16
#define ENABLED_BIT (1ull << 63)

typedef struct {
    uint8_t kind, reg;
    int32_t verdict;
    uint8_t detail;
    uint32_t vcpu, number;
    uint64_t value, pinned, extra;
    int64_t time_micros; /* never set: the reference reads no clock */
} RefRecord;

typedef struct {
    alignas(64) _Atomic uint64_t overflow[K_COUNT];
} RefShard;

struct RefHandler {
    uint32_t exit_configure, exit_denial;
    uint64_t require[2];
    int32_t on_denial[2], on_weak;
    _Atomic uint64_t grants[2];
    alignas(64) _Atomic uint64_t pins[2];
    alignas(64) _Atomic long enqueue_position;
    alignas(64) _Atomic bool wake_pending;
    int event_fd;
    _Atomic long *sequences;
    RefRecord *records;
    alignas(64) long dequeue_position;
    RefShard shards[SHARDS];
};

RefHandler *ref_new(uint32_t exit_configure, uint32_t exit_denial, uint32_t rate_limit) {
    (void)rate_limit; /* no rate limiter */
    RefHandler *h = aligned_alloc(64, sizeof *h);
    memset(h, 0, sizeof *h);
    h->exit_configure = exit_configure;
    h->exit_denial = exit_denial;
    h->sequences = calloc(QUEUE_CAPACITY, sizeof *h->sequences);
    h->records = calloc(QUEUE_CAPACITY, sizeof *h->records);
    for (long i = 0; i < QUEUE_CAPACITY; i++) atomic_init(&h->sequences[i], i);
    h->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return h;
}

void ref_cap_result(RefHandler *h, int kind, uint64_t mask, int kvm_result) {
    atomic_store_explicit(&h->grants[kind], kvm_result == 0 ? ENABLED_BIT | mask : 0, memory_order_release);
}

static inline __attribute__((always_inline)) void wake(RefHandler *h) {
    if (!atomic_exchange_explicit(&h->wake_pending, true, memory_order_acq_rel)) {
        uint64_t one = 1;
        ssize_t r = write(h->event_fd, &one, 8);
        (void)r;
    }
}

static inline __attribute__((always_inline)) bool push(RefHandler *h, const RefRecord *record) {
    long position = atomic_load_explicit(&h->enqueue_position, memory_order_relaxed);
    for (;;) {
        long cell = position & (QUEUE_CAPACITY - 1);
        long sequence = atomic_load_explicit(&h->sequences[cell], memory_order_acquire);
        long difference = sequence - position;
        if (difference == 0) {
            if (atomic_compare_exchange_weak_explicit(&h->enqueue_position, &position, position + 1,
                                                      memory_order_relaxed, memory_order_relaxed)) {
                h->records[cell] = *record;
                atomic_store_explicit(&h->sequences[cell], position + 1, memory_order_release);
                return true;
            }
        } else if (difference < 0) {
            return false;
        } else {
            position = atomic_load_explicit(&h->enqueue_position, memory_order_relaxed);
        }
    }
}

static inline __attribute__((always_inline)) void record(RefHandler *h, RefRecord r) {
    if (push(h, &r)) {
        wake(h);
        return;
    }
    atomic_fetch_add_explicit(&h->shards[r.vcpu & (SHARDS - 1)].overflow[r.kind], 1, memory_order_relaxed);
}

int ref_handle_exit(RefHandler *h, uint32_t vcpu, const void *run) {
    uint32_t number = cbridge_exit_reason(run);
    int kind;
    if (number == h->exit_configure) kind = K_CONFIGURE;
    else if (number == h->exit_denial) kind = K_DENIAL;
    else return V_NOT_HEKI;
    CBridgeHekiPayload view = cbridge_heki_payload(run);
    uint64_t grant = atomic_load_explicit(&h->grants[kind], memory_order_acquire);
    int reg = view.reason == 1 ? 0 : view.reason == 2 ? 1 : -1;
    if (grant == 0 || reg < 0 || !(grant & view.reason)) {
        record(h, (RefRecord){ .kind = K_MALFORMED, .reg = reg < 0 ? 0xff : (uint8_t)reg, .verdict = V_NOT_HEKI,
                               .detail = grant == 0 ? 1 : reg < 0 ? 0 : 2, .vcpu = vcpu, .number = number,
                               .value = view.reason, .extra = (uint64_t)kind });
        return V_NOT_HEKI;
    }
    uint64_t pinned = atomic_load_explicit(&h->pins[reg], memory_order_relaxed);
    if (kind == K_CONFIGURE) {
        if ((pinned & view.value) != view.value)
            pinned = atomic_fetch_or_explicit(&h->pins[reg], view.value, memory_order_relaxed) | view.value;
        uint64_t missing = h->require[reg] & ~pinned;
        int32_t verdict = missing == 0 ? V_RESUME : h->on_weak;
        record(h, (RefRecord){ .kind = K_CONFIGURE, .reg = (uint8_t)reg, .verdict = verdict, .vcpu = vcpu,
                               .number = number, .value = view.value, .pinned = pinned });
        if (missing)
            record(h, (RefRecord){ .kind = K_WEAK, .reg = (uint8_t)reg, .verdict = verdict, .vcpu = vcpu,
                                   .number = number, .value = h->require[reg], .pinned = pinned,
                                   .extra = missing });
        return verdict;
    }
    int32_t verdict = h->on_denial[reg];
    record(h, (RefRecord){ .kind = K_DENIAL, .reg = (uint8_t)reg, .verdict = verdict, .vcpu = vcpu,
                           .number = number, .value = view.value, .pinned = pinned,
                           .extra = pinned & ~view.value });
    return verdict;
}

/* The consumer side: pops everything queued (no rendering), re-arms the wake. */
uint64_t ref_drain(RefHandler *h) {
    uint64_t counter;
    ssize_t r = read(h->event_fd, &counter, 8);
    (void)r;
    atomic_store_explicit(&h->wake_pending, false, memory_order_seq_cst);
    uint64_t popped = 0;
    for (;;) {
        long cell = h->dequeue_position & (QUEUE_CAPACITY - 1);
        if (atomic_load_explicit(&h->sequences[cell], memory_order_acquire) != h->dequeue_position + 1) break;
        RefRecord record = h->records[cell];
        (void)record;
        atomic_store_explicit(&h->sequences[cell], h->dequeue_position + QUEUE_CAPACITY, memory_order_release);
        h->dequeue_position++;
        popped++;
    }
    return popped;
}

/* Events of `kind` not queued because the ring was full. */
uint64_t ref_pending(RefHandler *h, int kind) {
    uint64_t sum = 0;
    for (int s = 0; s < SHARDS; s++) sum += atomic_load(&h->shards[s].overflow[kind]);
    return sum;
}

void ref_free(RefHandler *h) {
    close(h->event_fd);
    free(h->sequences);
    free(h->records);
    free(h);
}
