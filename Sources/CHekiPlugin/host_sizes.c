/* The module of include/heki_plugin.h (see include/module.modulemap).  A C
   target needs one source: it checks what the header says of its own
   struct, so a change to HekiHost that breaks the size rule fails here. */
#include <stddef.h>

#include "../../include/heki_plugin.h"

_Static_assert(offsetof(HekiHost, check_extension) == HEKI_HOST_SIZE_1_0,
               "1.1's fields start where a 1.0 host's struct ends");
_Static_assert(offsetof(HekiHost, apply_verdict) + sizeof(void (*)(void)) == HEKI_HOST_SIZE_1_1,
               "1.1 ends with apply_verdict");
_Static_assert(offsetof(HekiHost, migration_blocker) + sizeof(void (*)(void)) == HEKI_HOST_SIZE_1_2,
               "1.2 ends with migration_blocker");
