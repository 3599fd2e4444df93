/*
 * heki_alloc_counter.h - counts the heap allocations of a dlopen'ed
 * libHekiPlugin.so (its static Swift runtime included).  alloc_counter.c
 * defines malloc and friends over glibc's __libc_* functions; a program that
 * links it with -rdynamic makes the library allocate through them.  Only the
 * C programs that measure allocations link it (heki-bench, alloc_check): it
 * is not part of the HekiHostSupport target the Swift tests link.
 */
#ifndef HEKI_ALLOC_COUNTER_H
#define HEKI_ALLOC_COUNTER_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* While on for a thread, each malloc-family call that thread makes is
   counted, in the thread's count and in the process total. */
void hs_alloc_count_on_thread(bool on);
long hs_alloc_thread_count(void);
/* The process total so far; hs_alloc_take_total also resets it. */
long hs_alloc_total(void);
long hs_alloc_take_total(void);

/* Blocks allocated minus blocks freed, by every thread, while tracking is on
   (off by default: it costs an atomic per call). */
void hs_alloc_track_live(bool on);
long hs_alloc_live(void);

/* The program's own buffers, outside every count. */
void *hs_uncounted_malloc(size_t size);
void hs_uncounted_free(void *block);

#ifdef __cplusplus
}
#endif

#endif /* HEKI_ALLOC_COUNTER_H */
