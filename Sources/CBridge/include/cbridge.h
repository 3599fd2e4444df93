/*
 * CBridge: the kvm_run payload view, and the exit path's stamp counter.  The only place that knows where the
 * Heki fields sit in struct kvm_run; kvm_run_view.c ties the offsets to
 * <linux/kvm.h> with static assertions.  Swift does the rest.
 */
#ifndef HEKI_CBRIDGE_H
#define HEKI_CBRIDGE_H

#include <stdint.h>
#include <string.h>
#if !defined(__x86_64__) && !defined(__i386__)
#include <time.h>
#endif

struct kvm_run; /* <linux/kvm.h>; the public header is CHekiPlugin's alone */

/* struct kvm_run: __u32 exit_reason at 8; the exit union at 32. */
#define CBRIDGE_KVM_RUN_EXIT_REASON_OFFSET 8
#define CBRIDGE_KVM_RUN_EXIT_UNION_OFFSET 32

/* The 64-byte payload of KVM_EXIT_HEKI_CONFIGURE and _DENIAL (the patch's
   heki_configure / heki_denial): reason, then cr_pinned or cr_value, then
   six reserved words the plugin ignores. */
typedef struct CBridgeHekiPayload {
    uint64_t reason;
    uint64_t value;
} CBridgeHekiPayload;

/* Reads exit_reason once.  kvm_run is shared memory: every field is copied
   out exactly once so a later re-read cannot see a different value. */
static inline uint32_t cbridge_exit_reason(const struct kvm_run *run) {
    uint32_t reason;
    memcpy(&reason, (const char *)run + CBRIDGE_KVM_RUN_EXIT_REASON_OFFSET, sizeof reason);
    return reason;
}

/* Reads the two meaningful words of the Heki payload, once each. */
static inline CBridgeHekiPayload cbridge_heki_payload(const struct kvm_run *run) {
    CBridgeHekiPayload payload;
    memcpy(&payload, (const char *)run + CBRIDGE_KVM_RUN_EXIT_UNION_OFFSET, sizeof payload);
    return payload;
}

/* The stamp of an event on the exit path: the CPU's timestamp counter
   (rdtsc, not serializing: a few ns, against ~30 for the wall clock).  The
   main loop turns it into wall-clock microseconds (StampClock.swift).
   Elsewhere than x86, the monotonic clock in nanoseconds. */
static inline uint64_t cbridge_stamp_counter(void) {
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_ia32_rdtsc();
#else
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
#endif
}

#endif /* HEKI_CBRIDGE_H */
