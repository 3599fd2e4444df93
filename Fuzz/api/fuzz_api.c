/*
 * fuzz_api.c - every entry point of heki_plugin.h, in any order a careless
 * or hostile host can produce, with the arguments taken from the input.
 *
 * Input: a program of one-byte operations on two plugin slots, each
 * followed by the bytes it needs (missing bytes read as 0):
 *   new (HekiHost.size from a table (1.0's and 1.1's included) or raw, NULL
 *        context or the slot's own, NULL host, NULL error, argv NULL with
 *        argc > 0, negative argc, a NULL argv entry, a few option sets, and
 *        the kernel behind the host: Heki v2, Heki v3, stock, stock with an
 *        irqchip), free (also of NULL),
 *   enable_caps (NULL error or not, any number of times), start,
 *   cap_result (raw kind and raw KVM result), the three number getters
 *   (raw kind), query (also of NULL), handle_exit (raw 96 bytes, raw vCPU,
 *   NULL plugin, NULL run), dispatch, free_string(NULL), abi_version,
 *   reset (raw cause), and "free the plugin from inside its next event
 *   callback".
 * The HekiHost is a heap block of exactly HekiHost.size bytes, so reading
 * past the size the host gave is an AddressSanitizer report.
 *
 * Oracles: documented return values (NULL, 0, -1, NOT_HEKI, ABI 1); the
 * kernel check's outcome: enable_caps fails for a host without
 * check_extension (smaller than 1.1), a second time, and under
 * require-caps=on on a kernel that is not Heki; the number getters, the
 * exits claimed and cap_result follow from the kernel and the abi asked, a
 * stock kernel gets no KVM_ENABLE_CAP (fz_enable_caps); valid JSON from
 * query, every event and log line checked, no leak at the end.
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
    /* What the plugin must show, from the host, the options and the kernel. */
    bool can_check;   /* HekiHost.size covers check_extension and enable_cap */
    bool require;     /* require-caps=on */
    bool heki;        /* the kernel is a Heki kernel ... */
    bool verified;    /* ... of the asked numbering */
    bool checked;     /* enable_caps ran */
    FkProfile numbers; /* the exits aimed at and capabilities verified */
    uint64_t mask[2];
} Slot;

static Slot slots[2];
/* A heap block exactly as long as what the plugin may read: ASan sees the rest. */
#define RUN_BYTES (FK_KVM_RUN_UNION_OFFSET + FK_HEKI_PAYLOAD_SIZE)
static unsigned char *run;

#define OPTIONS 4
static const struct {
    const char *argv[OPTIONS];
    FkProfileId abi; /* 0: auto */
    uint64_t mask[2];
    bool require;
} option_sets[4] = {
    {{NULL}, 0, {3, 3}, false},
    {{"rate-limit=0", "vm-name=api", NULL}, 0, {3, 3}, false},
    {{"abi=v3", "require-cr4=smep+fred", "on-weak-pinning=reset", NULL}, FK_PROFILE_V3, {3, 3}, false},
    {{"configure-exits=cr4", "denial-exits=cr0", "on-denial=exit", "require-caps=on"}, 0, {2, 1}, true},
};

static const struct {
    FkProfileId profile;
    FkKernelKind kind;
} kernels[4] = {
    {FK_PROFILE_V2, FK_KERNEL_HEKI},
    {FK_PROFILE_V3, FK_KERNEL_HEKI},
    {FK_PROFILE_V2, FK_KERNEL_STOCK},
    {FK_PROFILE_V3, FK_KERNEL_STOCK_IRQCHIP},
};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    for (int i = 0; i < 2; i++) fz_host_init(&slots[i].host);
    run = malloc(RUN_BYTES);
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

/* The getters agree with what the slot's plugin must show. */
static void check_getters(const Slot *s, uint32_t kind) {
    uint32_t e = heki_plugin_exit_number(s->plugin, (HekiExitKind)kind);
    uint32_t n = heki_plugin_cap_number(s->plugin, (HekiExitKind)kind);
    uint64_t m = heki_plugin_cap_mask(s->plugin, (HekiExitKind)kind);
    if (!s->plugin || kind > 1) {
        if (e || n || m) fz_fail("getters of NULL/unknown kind");
        return;
    }
    bool verified = s->checked && s->verified;
    uint32_t exit = kind ? s->numbers.exit_denial : s->numbers.exit_configure;
    uint32_t cap = kind ? s->numbers.cap_denial : s->numbers.cap_configure;
    if (e != (verified ? exit : 0) || n != (verified ? cap : 0) || m != (verified ? s->mask[kind] : 0))
        fz_fail("kind %u: exit %u cap %u mask %llx; verified %d (exit %u cap %u)", kind, e, n,
                (unsigned long long)m, verified, exit, cap);
}

static void new_plugin(Slot *s, Cursor *c) {
    free_slot(s);
    uint8_t how = byte(c), sizes = byte(c);
    static const uint32_t size_table[] = {0, 4, HEKI_HOST_SIZE_1_0, sizeof(HekiHost) - 1, sizeof(HekiHost),
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

    const char *const *set = option_sets[how & 3].argv;
    int argc = 0;
    while (argc < OPTIONS && set[argc]) argc++;
    const char *argv[OPTIONS + 1] = {set[0], set[1], set[2], set[3], NULL};
    const char *const *argv_arg = argv;
    bool can_check = size >= HEKI_HOST_SIZE_1_1;
    bool must_fail = size < HEKI_HOST_SIZE_1_0 || (option_sets[how & 3].require && !can_check);
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
    /* The kernel, and what the plugin must make of it. */
    int k = (sizes >> 4) & 3;
    FkProfile kernel = fk_profile(kernels[k].profile);
    fz_host_kernel(&s->host, &kernel, kernels[k].kind, true);
    FkProfileId abi = option_sets[how & 3].abi;
    s->can_check = can_check;
    s->require = option_sets[how & 3].require;
    s->heki = kernels[k].kind == FK_KERNEL_HEKI;
    s->verified = s->heki && (!abi || abi == kernels[k].profile);
    s->checked = false;
    s->numbers = abi ? fk_profile(abi) : kernel; /* auto: the kernel's */
    memcpy(s->mask, option_sets[how & 3].mask, sizeof s->mask);
}

/* heki_plugin_set_policy with policy keys, fixed keys, bad values and bytes
   from the input: 0 with no message, or -1 with one. */
static void set_policy(Slot *s, Cursor *c) {
    static const char *const known[] = {
        "on-denial=pause", "on-denial-cr0=reset", "on-denial-cr4=exit", "on-weak-pinning=poweroff",
        "require-cr0=wp", "require-cr4=smep+smap", "require-cr4=none", "on-denial=maybe",
        "abi=v2", "rate-limit=5", "require-cr0=pe+bogus", "on-denial", "",
    };
    char bytes[16];
    const char *argv[4];
    uint8_t how = byte(c);
    int argc = how & 3;
    for (int i = 0; i < argc; i++) {
        uint8_t pick = byte(c);
        if (pick < 0xf0) {
            argv[i] = known[pick % (sizeof known / sizeof known[0])];
        } else { /* raw bytes, NUL-terminated */
            size_t n = 0;
            while (n < sizeof bytes - 1 && c->p < c->end && *c->p) bytes[n++] = (char)*c->p++;
            bytes[n] = 0;
            argv[i] = bytes;
        }
    }
    char *error = (char *)0x1;
    int r = heki_plugin_set_policy(s->plugin, argc, argv, &error);
    if (r != 0 && r != -1) fz_fail("set_policy returned %d", r);
    if (r == -1 && (!error || error == (char *)0x1)) fz_fail("set_policy failed without a message");
    if (r == 0 && error) fz_fail("set_policy succeeded with *error set");
    if (!s->plugin && r == 0) fz_fail("set_policy(NULL) succeeded");
    heki_plugin_free_string(r == -1 ? error : NULL);
}

static void enable_caps(Slot *s, Cursor *c) {
    if (!s->plugin) return; /* NULL: not in the contract */
    bool with_error = !(byte(c) & 1);
    int r = fz_enable_caps(&s->host, s->plugin, with_error);
    bool ok = s->can_check && !s->checked && !(s->require && !s->verified);
    if (r != (ok ? 0 : -1))
        fz_fail("enable_caps %d (can check %d, again %d, require %d, verified %d)", r, s->can_check,
                s->checked, s->require, s->verified);
    s->checked |= s->can_check;
    for (uint32_t kind = 0; kind < 2; kind++) check_getters(s, kind);
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
            bool claimed = s->plugin && kind <= 1 && s->checked && s->verified;
            if (r != (claimed && result == 0 ? 0 : -1))
                fz_fail("cap_result(%u, %d) %d, claimed %d", kind, result, r, claimed);
            break;
        }
        case 3: check_getters(s, word(&c)); break;
        case 4: {
            char *q = heki_plugin_query(s->plugin);
            if (!s->plugin) { if (q) fz_fail("query(NULL) is not NULL"); break; }
            fz_check_json("query", q);
            heki_plugin_free_string(q);
            break;
        }
        case 5: case 6: {
            uint32_t vcpu = word(&c);
            for (int i = 0; i < RUN_BYTES; i++) run[i] = byte(&c);
            bool aimed = (op & 15) == 6 && s->plugin;
            if (aimed) { /* at the profile's numbers, claimed or not */
                uint32_t n = run[0] & 1 ? s->numbers.exit_denial : s->numbers.exit_configure;
                fk_run_set_exit_reason((struct kvm_run *)run, n);
            }
            HekiVerdict v = heki_plugin_handle_exit(s->plugin, vcpu, (const struct kvm_run *)run);
            if (v < HEKI_VERDICT_NOT_HEKI || v > HEKI_VERDICT_EXIT) fz_fail("verdict %d", (int)v);
            if (!s->plugin && v != HEKI_VERDICT_NOT_HEKI) fz_fail("NULL plugin claimed an exit");
            if (aimed && !(s->checked && s->verified) && v != HEKI_VERDICT_NOT_HEKI)
                fz_fail("exit %u claimed without its capability", run[0] & 1 ? s->numbers.exit_denial
                                                                              : s->numbers.exit_configure);
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
        case 11: enable_caps(s, &c); break;
        case 12:
            if (s->plugin) heki_plugin_start(s->plugin); /* NULL: not in the contract */
            break;
        case 13: set_policy(s, &c); break;
        case 14: heki_plugin_flush(s->plugin); break; /* NULL is ignored */
        case 15: { /* any cause; its HEKI_RESET's callbacks may free the plugin (op 9) */
            bool none = !s->plugin;
            uint64_t announced = s->host.events[FZ_RESET];
            HekiVerdict v = heki_plugin_reset(s->plugin, (HekiResetCause)word(&c));
            if (v != HEKI_VERDICT_RESET && v != HEKI_VERDICT_POWEROFF && v != HEKI_VERDICT_EXIT)
                fz_fail("reset verdict %d", (int)v);
            if (none && v != HEKI_VERDICT_RESET) fz_fail("reset(NULL) %d", (int)v);
            if (v != HEKI_VERDICT_RESET && s->host.events[FZ_RESET] != announced + 1)
                fz_fail("reset verdict %d without its HEKI_RESET", (int)v);
            break;
        }
        }
    }
    for (int i = 0; i < 2; i++) free_slot(&slots[i]);
    dispatch_all();
    return 0;
}
