/* The benchmark's C reference handler (ref_handler.c): the plugin's exit
   path written in plain C, built as libhekiref.so and dlopen'ed. */
#ifndef HEKI_REF_HANDLER_H
#define HEKI_REF_HANDLER_H
#include <stdint.h>

typedef struct RefHandler RefHandler;
RefHandler *ref_new(uint32_t exit_configure, uint32_t exit_denial, uint32_t rate_limit);
/* kind 0 configure, 1 denial; mask of KVM_HEKI_EXIT_REASON_* bits. */
void ref_cap_result(RefHandler *h, int kind, uint64_t mask, int kvm_result);
int ref_handle_exit(RefHandler *h, uint32_t vcpu, const void *run);
uint64_t ref_drain(RefHandler *h);
uint64_t ref_pending(RefHandler *h, int kind);
void ref_free(RefHandler *h);
#endif
