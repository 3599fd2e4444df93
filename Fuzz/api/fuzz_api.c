/*
 * fuzz_api.c - every entry point of heki_plugin.h, in any order a careless
 * or hostile host can produce, with the arguments taken from the input.
 *
 * Input: a program of one-byte operations on two plugin slots, each
 * followed by the bytes it needs (missing bytes read as 0):
 *   new (HekiHost.size from a table or raw, NULL context or the slot's own,
 *        NULL host, NULL error, argv NULL with argc > 0, negative argc,
 *        a NULL argv entry, a few option sets), free (also of NULL),
 *   cap_result (raw kind and raw KVM result), the three number getters
 *   (raw kind), query (also of NULL), handle_exit (raw 96 bytes, raw vCPU,
 *   NULL plugin, NULL run), dispatch, free_string(NULL), abi_version, and
 *   "free the plugin from inside its next event callback".
 * The HekiHost is a heap block of exactly HekiHost.size bytes, so reading
 * past the size the host gave is an AddressSanitizer report.
 *
 * Oracles: documented return values (NULL, 0, -1, NOT_HEKI, ABI 1), valid
 * JSON from query, every event and log line checked, no leak at the end.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_support.h"

typedef struct {
    const uint8_t *p, *end;
} Cursor;

static uint8_t byte(Cursor *c) { return c->p < c->end ? *c->p++ : 0; }
static uint32_t word(Cursor *c) {
    uint32_t w = 0;
    for (int i = 0; i < 4; i++) w |= (uint32_t)byte(c) << (8 * i);
    return w;
}

typedef struct {
    FzHost host;
    HekiPlugin *plugin;
    void *host_block; /* the HekiHost copy the plugin was given */
} Slot;

static Slot slots[2];
static unsigned char *run;

static const char *const option_sets[4][3] = {
    {NULL},
    {"rate-limit=0", "vm-name=api", NULL},
    {"abi=v3", "require-cr4=smep+fred", "on-weak-pinning=reset"},
    {"configure-exits=cr4", "denial-exits=cr0", "on-denial=exit"},
};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    for (int i = 0; i < 2; i++) fz_host_init(&slots[i].host);
    run = malloc(96);
    return 0;
}

static void dispatch_all(void) {
    for (int i = 0; i < 2; i++) fz_dispatch(&slots[i].host);
    for (int i = 0; i < 1000 && g_main_context_iteration(NULL, FALSE); i++) {}
}

static void free_slot(Slot *s) {
    heki_plugin_free(s->plugin); /* NULL is ignored */
    s->plugin = NULL;
    s->host.free_from_callback = NULL;
    free(s->host_block);
    s->host_block = NULL;
}

static void new_plugin(Slot *s, Cursor *c) {
    free_slot(s);
    uint8_t how = byte(c), sizes = byte(c);
    static const uint32_t size_table[] = {0, 4, 8, sizeof(HekiHost) - 1, sizeof(HekiHost),
                                          sizeof(HekiHost) + 8, sizeof(HekiHost) + 200, 0};
    uint32_t size = (sizes & 7) == 7 ? byte(c) : size_table[sizes & 7];
    size_t block = size < 4 ? 4 : size;
    unsigned char *h = malloc(block);
    memset(h, 0xa5, block); /* a larger host's unknown fields: garbage */
    HekiHost host = s->host.host;
    if (sizes & 8) host.context = NULL; /* the default context */
    memcpy(h, &host, block < sizeof host ? block : sizeof host);
    memcpy(h, &size, 4);
    s->host_block = h;

    const char *const *set = option_sets[how & 3];
    int argc = 0;
    while (argc < 3 && set[argc]) argc++;
    const char *argv[4] = {set[0], set[1], set[2], NULL};
    const char *const *argv_arg = argv;
    bool must_fail = size < sizeof(HekiHost);
    switch ((how >> 2) & 7) {
    case 1: argv_arg = NULL; if (argc == 0) argc = 1; must_fail = true; break;
    case 2: argc = -1 - (int)byte(c); must_fail = true; break;
    case 3: argv[argc] = NULL; argc++; must_fail = true; break; /* a NULL entry */
    case 4: h = NULL; must_fail = true; break;                  /* NULL host */
    }
    if (argc == 0 && (how >> 2 & 7) == 0 && (how & 0x20)) argv_arg = NULL; /* argv NULL, argc 0: fine */
    char *error = (char *)0x1;
    char **error_arg = (how & 0x40) ? NULL : &error;
    HekiPlugin *p = heki_plugin_new((const HekiHost *)h, argc, argv_arg, error_arg);
    if (error_arg) {
        if (!p && (!error || error == (char *)0x1)) fz_fail("failure without a message");
        if (p && error) fz_fail("success with *error set");
        if (!p) {
            heki_plugin_free_string(error);
        }
    }
    if (p && must_fail) fz_fail("heki_plugin_new accepted a bad call (how %u, size %u)", how, size);
    s->plugin = p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Cursor c = {data, data + size};
    for (int steps = 0; c.p < c.end && steps < 256; steps++) {
        uint8_t op = byte(&c);
        Slot *s = &slots[op >> 7];
        switch (op & 15) {
        case 0: new_plugin(s, &c); break;
        case 1: free_slot(s); break;
        case 2: {
            uint32_t kind = word(&c);
            int32_t result = (int32_t)word(&c);
            int r = heki_plugin_cap_result(s->plugin, (HekiExitKind)kind, result);
            if (r != 0 && r != -1) fz_fail("cap_result %d", r);
            if ((!s->plugin || kind > 1) && r != -1) fz_fail("cap_result of NULL/unknown kind: %d", r);
            break;
        }
        case 3: {
            uint32_t kind = word(&c);
            uint32_t e = heki_plugin_exit_number(s->plugin, (HekiExitKind)kind);
            uint32_t n = heki_plugin_cap_number(s->plugin, (HekiExitKind)kind);
            uint64_t m = heki_plugin_cap_mask(s->plugin, (HekiExitKind)kind);
            if ((!s->plugin || kind > 1) && (e || n || m)) fz_fail("getters of NULL/unknown kind");
            if (m & ~3ull) fz_fail("cap mask %llx", (unsigned long long)m);
            break;
        }
        case 4: {
            char *q = heki_plugin_query(s->plugin);
            if (!s->plugin) { if (q) fz_fail("query(NULL) is not NULL"); break; }
            fz_check_json("query", q);
            heki_plugin_free_string(q);
            break;
        }
        case 5: case 6: {
            uint32_t vcpu = word(&c);
            for (int i = 0; i < 96; i++) run[i] = byte(&c);
            if ((op & 15) == 6 && s->plugin) { /* aim at the profile's numbers */
                uint32_t n = heki_plugin_exit_number(s->plugin, (HekiExitKind)(run[0] & 1));
                memcpy(run + 8, &n, 4);
            }
            HekiVerdict v = heki_plugin_handle_exit(s->plugin, vcpu, (const struct kvm_run *)run);
            if (v < HEKI_VERDICT_NOT_HEKI || v > HEKI_VERDICT_EXIT) fz_fail("verdict %d", (int)v);
            if (!s->plugin && v != HEKI_VERDICT_NOT_HEKI) fz_fail("NULL plugin claimed an exit");
            break;
        }
        case 7: dispatch_all(); break;
        case 8:
            heki_plugin_free_string(NULL);
            if (heki_plugin_abi_version() != HEKI_PLUGIN_ABI_VERSION) fz_fail("ABI version");
            break;
        case 9:
            if (s->plugin) s->host.free_from_callback = &s->plugin;
            break;
        case 10:
            if (heki_plugin_handle_exit(s->plugin, byte(&c), NULL) != HEKI_VERDICT_NOT_HEKI)
                fz_fail("NULL run claimed");
            if (heki_plugin_handle_exit(NULL, 0, (const struct kvm_run *)run) != HEKI_VERDICT_NOT_HEKI)
                fz_fail("NULL plugin claimed");
            break;
        default: break;
        }
    }
    for (int i = 0; i < 2; i++) free_slot(&slots[i]);
    dispatch_all();
    return 0;
}
