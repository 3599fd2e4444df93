/*
 * ref_handler.c - the C reference for heki_plugin_handle_exit, written for
 * the benchmark only.  It does the same work as the plugin's exit path, with
 * the same design, in plain C11:
 *   decode   exit_reason against the two exit numbers, the capability grant
 *            (acquire load), `reason` exactly one known bit the host asked for;
 *   ledger   atomic OR of the pin (configure) or a load of the pins (denial);
 *   counters one relaxed atomic add per (kind, register);
 *   verdict  on-denial / on-weak-pinning from the policy;
 *   enqueue  a per-kind rate limiter (packed window|count CAS, exact pending
 *            count), a 48-byte record stamped with the wall clock, pushed
 *            into a bounded Vyukov MPSC ring of 4096, an eventfd wake at most
 *            once per drain.
 * It is built as its own shared library (libhekiref.so) and dlopen'ed, so
 * both sides are called through a function pointer into a -fPIC .so.
 */
#define _GNU_SOURCE
#include <glib.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "cbridge.h" /* the plugin's own kvm_run reads */
#include "ref_handler.h"

enum { K_CONFIGURE, K_DENIAL, K_WEAK, K_MALFORMED, K_CAPABILITY, K_SUPPRESSED, K_COUNT };
enum { V_NOT_HEKI = -1, V_RESUME = 0 };
#define QUEUE_CAPACITY 4096
#define ENABLED_BIT (1ull << 63)

typedef struct {
    uint8_t kind, reg;
    int32_t verdict;
    uint8_t detail;
    uint32_t vcpu, number;
    uint64_t value, pinned, extra;
    int64_t time_micros;
} RefRecord;

struct RefHandler {
    uint32_t exit_configure, exit_denial;
    uint64_t require[2];
    int32_t on_denial[2], on_weak;
    uint64_t limit;
    _Atomic uint64_t grants[2];
    _Atomic uint64_t pins[2];
    _Atomic uint64_t per_register[6];
    _Atomic uint64_t malformed;
    _Atomic uint64_t windows[K_COUNT];
    _Atomic uint64_t pending[K_COUNT];
    _Atomic long *sequences;
    RefRecord *records;
    _Atomic long enqueue_position;
    long dequeue_position;
    _Atomic bool wake_pending;
    int event_fd;
};

RefHandler *ref_new(uint32_t exit_configure, uint32_t exit_denial, uint32_t rate_limit) {
    RefHandler *h = calloc(1, sizeof *h);
    h->exit_configure = exit_configure;
    h->exit_denial = exit_denial;
    h->limit = rate_limit;
    h->sequences = calloc(QUEUE_CAPACITY, sizeof *h->sequences);
    h->records = calloc(QUEUE_CAPACITY, sizeof *h->records);
    for (long i = 0; i < QUEUE_CAPACITY; i++) atomic_init(&h->sequences[i], i);
    h->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return h;
}

void ref_cap_result(RefHandler *h, int kind, uint64_t mask, int kvm_result) {
    atomic_store_explicit(&h->grants[kind], kvm_result == 0 ? ENABLED_BIT | mask : 0, memory_order_release);
}

static inline uint64_t current_window(void) { return (uint64_t)g_get_monotonic_time() / 1000000; }

static inline __attribute__((always_inline)) bool admit(RefHandler *h, int kind) {
    if (h->limit == 0 || kind > K_MALFORMED) return true;
    uint64_t now = current_window() & 0xffffffffu;
    uint64_t state = atomic_load_explicit(&h->windows[kind], memory_order_relaxed);
    for (;;) {
        uint64_t count = (state >> 32) == now ? (state & 0xffffffffu) : 0;
        if (count >= h->limit) return false;
        if (atomic_compare_exchange_weak_explicit(&h->windows[kind], &state, (now << 32) | (count + 1),
                                                  memory_order_relaxed, memory_order_relaxed))
            return true;
    }
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
    if (admit(h, r.kind)) {
        r.time_micros = g_get_real_time();
        if (push(h, &r)) {
            wake(h);
            return;
        }
    }
    if (atomic_fetch_add_explicit(&h->pending[r.kind], 1, memory_order_relaxed) == 0) wake(h);
}

int ref_handle_exit(RefHandler *h, uint32_t vcpu, const void *run) {
    uint32_t number = cbridge_exit_reason(run);
    int kind;
    if (number == h->exit_configure) kind = K_CONFIGURE;
    else if (number == h->exit_denial) kind = K_DENIAL;
    else return V_NOT_HEKI;
    CBridgeHekiPayload view = cbridge_heki_payload(run);
    uint64_t payload[2] = {view.reason, view.value};
    uint64_t grant = atomic_load_explicit(&h->grants[kind], memory_order_acquire);
    int reg = payload[0] == 1 ? 0 : payload[0] == 2 ? 1 : -1;
    if (grant == 0 || reg < 0 || !(grant & payload[0])) {
        atomic_fetch_add_explicit(&h->malformed, 1, memory_order_relaxed);
        record(h, (RefRecord){ .kind = K_MALFORMED, .reg = reg < 0 ? 0xff : (uint8_t)reg, .verdict = V_NOT_HEKI,
                               .detail = grant == 0 ? 1 : reg < 0 ? 0 : 2, .vcpu = vcpu, .number = number,
                               .value = payload[0], .extra = (uint64_t)kind });
        return V_NOT_HEKI;
    }
    if (kind == K_CONFIGURE) {
        uint64_t pinned = atomic_fetch_or_explicit(&h->pins[reg], payload[1], memory_order_relaxed) | payload[1];
        atomic_fetch_add_explicit(&h->per_register[K_CONFIGURE * 2 + reg], 1, memory_order_relaxed);
        uint64_t missing = h->require[reg] & ~pinned;
        int32_t verdict = missing == 0 ? V_RESUME : h->on_weak;
        record(h, (RefRecord){ .kind = K_CONFIGURE, .reg = (uint8_t)reg, .verdict = verdict, .vcpu = vcpu,
                               .number = number, .value = payload[1], .pinned = pinned });
        if (missing) {
            atomic_fetch_add_explicit(&h->per_register[K_WEAK * 2 + reg], 1, memory_order_relaxed);
            record(h, (RefRecord){ .kind = K_WEAK, .reg = (uint8_t)reg, .verdict = verdict, .vcpu = vcpu,
                                   .number = number, .value = h->require[reg], .pinned = pinned,
                                   .extra = missing });
        }
        return verdict;
    }
    uint64_t pinned = atomic_load_explicit(&h->pins[reg], memory_order_relaxed);
    atomic_fetch_add_explicit(&h->per_register[K_DENIAL * 2 + reg], 1, memory_order_relaxed);
    int32_t verdict = h->on_denial[reg];
    record(h, (RefRecord){ .kind = K_DENIAL, .reg = (uint8_t)reg, .verdict = verdict, .vcpu = vcpu,
                           .number = number, .value = payload[1], .pinned = pinned,
                           .extra = pinned & ~payload[1] });
    return verdict;
}

/* The consumer side: pops everything queued (no rendering), re-arms the wake. */
uint64_t ref_drain(RefHandler *h) {
    atomic_store_explicit(&h->wake_pending, false, memory_order_seq_cst);
    uint64_t counter;
    ssize_t r = read(h->event_fd, &counter, 8);
    (void)r;
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

uint64_t ref_pending(RefHandler *h, int kind) { return atomic_load(&h->pending[kind]); }

void ref_free(RefHandler *h) {
    close(h->event_fd);
    free(h->sequences);
    free(h->records);
    free(h);
}
