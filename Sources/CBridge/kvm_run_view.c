/* Ties cbridge.h's offsets to the real struct kvm_run of <linux/kvm.h>, and
   the payload to the layout of the Heki patch (a reason word, then a union
   of one word with reserved[7]: 64 bytes). */
#include <stddef.h>
#include <linux/kvm.h>
#include "cbridge.h"

struct cbridge_heki_exit_layout {   /* the patch's heki_configure / heki_denial */
    __u64 reason;
    union {
        __u64 cr_value;
        __u64 reserved[7];
    };
};

_Static_assert(offsetof(struct kvm_run, exit_reason) == CBRIDGE_KVM_RUN_EXIT_REASON_OFFSET,
               "kvm_run.exit_reason moved");
_Static_assert(sizeof(((struct kvm_run *)0)->exit_reason) == sizeof(uint32_t),
               "kvm_run.exit_reason is not 32 bits");
_Static_assert(offsetof(struct kvm_run, io) == CBRIDGE_KVM_RUN_EXIT_UNION_OFFSET,
               "the kvm_run exit union moved");
_Static_assert(offsetof(struct kvm_run, padding) == CBRIDGE_KVM_RUN_EXIT_UNION_OFFSET,
               "the kvm_run exit union moved");
_Static_assert(sizeof(((struct kvm_run *)0)->padding) >= sizeof(struct cbridge_heki_exit_layout),
               "the Heki payload does not fit the kvm_run union");
_Static_assert(sizeof(struct cbridge_heki_exit_layout) == 64, "Heki payload is 64 bytes");
_Static_assert(offsetof(struct cbridge_heki_exit_layout, cr_value) == offsetof(CBridgeHekiPayload, value),
               "payload value word moved");
_Static_assert(sizeof(CBridgeHekiPayload) == 16, "payload view is two words");
