/*
 * heki_v2_kernel.h - HekiHost.check_extension and enable_cap for the plain C
 * programs of this directory, which are built from one .c file each and so
 * have no kernel model (Tests/FakeHost/fake_kernel.c): the answers of a
 * Heki v2 kernel, as a table.  Their exits are v2's (39/40).
 */
#ifndef HEKI_V2_KERNEL_H
#define HEKI_V2_KERNEL_H

#include <errno.h>
#include <stdint.h>

/* KVM_CHECK_EXTENSION: caps 235/236 answer the valid reason mask (3); the v2
   kernel predates upstream's 237 (KVM_CAP_X86_APIC_BUS_CYCLES_NS). */
static inline int v2_kernel_check_extension(void *opaque, uint32_t cap) {
    (void)opaque;
    return cap == 235 || cap == 236 ? 3 : 0;
}

/* KVM_ENABLE_CAP: 235/236 take a mask of the two reason bits; nothing else
   can be enabled. */
static inline int v2_kernel_enable_cap(void *opaque, uint32_t cap, uint64_t mask) {
    (void)opaque;
    return (cap == 235 || cap == 236) && !(mask & ~3ull) ? 0 : -EINVAL;
}

#endif
