/*
 * emu_fdtable.c - fd -> tracked KVM object, read without a lock.
 *
 * Every ioctl of the VMM goes through the lookup, so it is two acquire loads
 * into a two-level table (chunks allocated on demand, never freed).  Writers
 * (create, close) hold emu_lock; an entry is cleared before the real close,
 * so a reused fd number never sees the old object.
 */
#include "emu.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#define CHUNK_BITS 10
#define CHUNK_SIZE (1u << CHUNK_BITS)
#define NCHUNKS 1024u /* fds 0 .. 1M-1; beyond, fds are not tracked */

/* An entry is the object pointer with the kind in the low 2 bits. */
typedef _Atomic uintptr_t Entry;

static _Atomic(Entry *) chunks[NCHUNKS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

void emu_lock(void) { pthread_mutex_lock(&lock); }
void emu_unlock(void) { pthread_mutex_unlock(&lock); }

EmuFdKind emu_fd_lookup(int fd, void **obj) {
    if (fd < 0 || (unsigned)fd >= NCHUNKS * CHUNK_SIZE)
        return EMU_FD_NONE;
    Entry *chunk = atomic_load_explicit(&chunks[(unsigned)fd >> CHUNK_BITS], memory_order_acquire);
    if (!chunk)
        return EMU_FD_NONE;
    uintptr_t e = atomic_load_explicit(&chunk[(unsigned)fd & (CHUNK_SIZE - 1)], memory_order_acquire);
    *obj = (void *)(e & ~(uintptr_t)3);
    return (EmuFdKind)(e & 3);
}

bool emu_fd_set(int fd, EmuFdKind kind, void *obj) {
    if (fd < 0 || (unsigned)fd >= NCHUNKS * CHUNK_SIZE)
        return false;
    unsigned c = (unsigned)fd >> CHUNK_BITS;
    Entry *chunk = atomic_load_explicit(&chunks[c], memory_order_acquire);
    if (!chunk) {
        chunk = calloc(CHUNK_SIZE, sizeof *chunk);
        if (!chunk)
            return false;
        atomic_store_explicit(&chunks[c], chunk, memory_order_release);
    }
    atomic_store_explicit(&chunk[(unsigned)fd & (CHUNK_SIZE - 1)], (uintptr_t)obj | (uintptr_t)kind,
                          memory_order_release);
    return true;
}

void emu_fd_clear(int fd) {
    if (fd < 0 || (unsigned)fd >= NCHUNKS * CHUNK_SIZE)
        return;
    Entry *chunk = atomic_load_explicit(&chunks[(unsigned)fd >> CHUNK_BITS], memory_order_acquire);
    if (chunk)
        atomic_store_explicit(&chunk[(unsigned)fd & (CHUNK_SIZE - 1)], 0, memory_order_release);
}
