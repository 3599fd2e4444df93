/* The malloc interposer of heki_alloc_counter.h (link with -rdynamic). */
#define _GNU_SOURCE
#include "heki_alloc_counter.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static _Thread_local bool tl_counting;
static _Thread_local long tl_allocations;
static atomic_long total;
static atomic_bool tracking;
static atomic_long live;

static inline void count_call(void) {
    if (tl_counting) {
        tl_allocations++;
        atomic_fetch_add_explicit(&total, 1, memory_order_relaxed);
    }
}

static inline void count_block(long delta) {
    if (atomic_load_explicit(&tracking, memory_order_relaxed))
        atomic_fetch_add_explicit(&live, delta, memory_order_relaxed);
}

static inline void *counted(void *block) {
    count_call();
    if (block)
        count_block(1);
    return block;
}

void *malloc(size_t size) { return counted(__libc_malloc(size)); }
void *calloc(size_t n, size_t size) { return counted(__libc_calloc(n, size)); }
void *realloc(void *p, size_t size) {
    if (!p)
        return counted(__libc_realloc(p, size));
    count_call();
    void *block = __libc_realloc(p, size);
    if (!block && size == 0)
        count_block(-1); /* realloc(p, 0) freed p */
    return block;
}
void free(void *p) {
    if (p)
        count_block(-1);
    __libc_free(p);
}
int posix_memalign(void **out, size_t align, size_t size) {
    *out = counted(__libc_memalign(align, size));
    return *out ? 0 : ENOMEM;
}
void *aligned_alloc(size_t align, size_t size) { return counted(__libc_memalign(align, size)); }
void *memalign(size_t align, size_t size) { return counted(__libc_memalign(align, size)); }

void hs_alloc_count_on_thread(bool on) { tl_counting = on; }
long hs_alloc_thread_count(void) { return tl_allocations; }
long hs_alloc_total(void) { return atomic_load(&total); }
long hs_alloc_take_total(void) { return atomic_exchange(&total, 0); }
void hs_alloc_track_live(bool on) { atomic_store(&tracking, on); }
long hs_alloc_live(void) { return atomic_load(&live); }
void *hs_uncounted_malloc(size_t size) { return __libc_malloc(size); }
void hs_uncounted_free(void *block) { __libc_free(block); }
