/*
 * fuzz_exit.c - heki_plugin_handle_exit over guest-controlled bytes.
 *
 * Input: 8 bytes choose the profile, the policy, the kernel the host's
 * KVM_CHECK_EXTENSION / KVM_ENABLE_CAP reach (a Heki v2 or v3 kernel, with
 * or without CONFIG_HEKI, of the asked profile or the other one, or a stock
 * kernel) and how the host's KVM_ENABLE_CAP fares: every input the exit
 * path depends on (see create()); then records of 73 bytes, each one exit:
 *   op (1): bits 0-1 exit number: 0 the profile's configure exit, 1 its
 *           denial exit (claimed or not), 2-3 the raw number below; bit 2 dispatch the main
 *           loop after this exit; bits 3 and 6 both set: query (once, after the
 *           exits); bit 4 vCPU index raw (else
 *           0-63); bit 5 NULL kvm_run
 *   vcpu (4), exit number (4), the 64-byte payload (reason, value, reserved).
 * The kvm_run is a 96-byte heap block (exit_reason at 8, the union at 32):
 * AddressSanitizer sees any read outside the fields the plugin may read.
 *
 * Plugins live across inputs, as in a VMM (one plugin sees millions of
 * exits): a pool of 512, keyed by the 8 option bytes (bits that do not
 * change the plugin cleared).  A plugin is retired
 * (freed and checked) when its slot gets other option bytes and after 4096
 * inputs, so lifecycles, summaries and teardown stay in the loop.  The
 * price: a finding may need the inputs before it to reproduce; the
 * fuzzer prints the slot's history size with the failure.
 *
 * Oracles: the plugin enables exactly the capabilities of a Heki kernel of
 * the asked profile (abi=auto: either), never one of a stock or mismatched
 * kernel, and claims exactly the exits whose capability KVM enabled (the
 * exit and capability numbers and masks it reports, heki_plugin_enable_caps'
 * result under require-caps=on; fz_enable_caps checks how it asks); a
 * second enable_caps and the 1.0 cap_result change nothing; every verdict
 * is in the enum; NOT_HEKI, silently, for numbers not claimed (the
 * profile's own included when nothing claimed them); every
 * event and log line is checked (fuzz_support.c); the query's counters equal
 * the exits claimed so far, per kind and register, at every query; at
 * retirement, per kind, individual events + HEKI_SUPPRESSED counts == the
 * exits the plugin claimed (or reported malformed), exactly, and one
 * HEKI_CAPABILITY for the kernel check plus one per KVM_ENABLE_CAP.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_support.h"

#define RUN_BYTES (FK_KVM_RUN_UNION_OFFSET + FK_HEKI_PAYLOAD_SIZE) /* through the Heki payload */
#define RECORD_BYTES 73

static const char *const verdicts[] = {"resume", "pause", "poweroff", "reset", "exit"};
static const char *const masks[] = {"cr0", "cr4", "cr0+cr4", "none"};
static const char *const cr0_names[] = {"pe", "mp", "em", "ts", "et", "ne", "wp", "am"};
static const char *const cr4_names[] = {"umip", "fsgsbase", "smep", "smap", "cet", "fred"};
static const char *const rate_limits[] = {"rate-limit=100", "rate-limit=0", "rate-limit=1", "rate-limit=3"};
static const uint64_t mask_bits[] = {1, 2, 3, 0};
/* The host's KVM_ENABLE_CAP per kind: the kernel's answer, or a failure
   before the kernel sees it. */
static const int enable_faults[] = {0, -EINVAL, 0, -EPERM};

static char *bits_option(const char *key, uint8_t bits, const char *const *names, int count) {
    char buffer[160];
    int n = snprintf(buffer, sizeof buffer, "%s=", key);
    const char *separator = "";
    for (int i = 0; i < count; i++) {
        if (bits & (1u << i)) {
            n += snprintf(buffer + n, sizeof buffer - (size_t)n, "%s%s", separator, names[i]);
            separator = "+";
        }
    }
    return strdup(buffer);
}

#define SLOTS 512
#define LIFETIME 4096

typedef struct {
    FzHost host;
    uint8_t options[8];
    HekiPlugin *plugin;
    uint32_t exit[2];            /* the exit numbers fed: configure, denial */
    bool claims[2];              /* which of them the plugin must claim */
    uint64_t claimed[FZ_KINDS];
    uint64_t per_register[2][2]; /* [configure/denial][cr0/cr4] */
    uint64_t capability_events;  /* HEKI_CAPABILITY events due */
    uint64_t inputs;
} Slot;

static Slot slots[SLOTS];
static unsigned char *run;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    for (int i = 0; i < SLOTS; i++) fz_host_init(&slots[i].host);
    run = malloc(RUN_BYTES);
    return 0;
}

static void check_query(Slot *s) {
    char *q = heki_plugin_query(s->plugin);
    fz_check_json("query", q);
    uint64_t malformed = fz_json_number(q, "malformed-exit");
    if (malformed != s->claimed[FZ_MALFORMED])
        fz_fail("query malformed-exit %llu, exits %llu", (unsigned long long)malformed,
                (unsigned long long)s->claimed[FZ_MALFORMED]);
    static const char *const scopes[2] = {"\"configure\":{\"cr0\":", "\"denial\":{\"cr0\":"};
    for (int k = 0; k < 2; k++) {
        const char *at = strstr(q, scopes[k]);
        if (!at) fz_fail("no %s in the query", scopes[k]);
        uint64_t cr0 = fz_json_number(at, "cr0"), cr4 = fz_json_number(at, "cr4");
        if (cr0 != s->per_register[k][0] || cr4 != s->per_register[k][1])
            fz_fail("query %s cr0 %llu cr4 %llu, exits %llu %llu", scopes[k], (unsigned long long)cr0,
                    (unsigned long long)cr4, (unsigned long long)s->per_register[k][0],
                    (unsigned long long)s->per_register[k][1]);
    }
    heki_plugin_free_string(q);
}

/* Frees the slot's plugin and checks the exact accounting of its life. */
static void retire(Slot *s, bool dispatch_first) {
    check_query(s);
    if (dispatch_first) fz_dispatch(&s->host); /* else: free with everything still pending */
    heki_plugin_free(s->plugin);
    s->plugin = NULL;
    fz_dispatch(&s->host);
    FzHost *h = &s->host;
    for (int kind = FZ_CONFIGURE; kind <= FZ_MALFORMED; kind++) {
        if (kind == FZ_WEAK_PINNING) continue; /* not one per exit */
        if (h->events[kind] + h->suppressed[kind] != s->claimed[kind])
            fz_fail("kind %d: %llu individual + %llu suppressed != %llu exits (%llu inputs)", kind,
                    (unsigned long long)h->events[kind], (unsigned long long)h->suppressed[kind],
                    (unsigned long long)s->claimed[kind], (unsigned long long)s->inputs);
    }
    /* One per configure exit at most, and the boot judgment of the first
       denial: one per register never pinned. */
    uint64_t boot = s->claimed[FZ_DENIAL] ? 2 : 0;
    if (h->events[FZ_WEAK_PINNING] + h->suppressed[FZ_WEAK_PINNING] > s->claimed[FZ_CONFIGURE] + boot)
        fz_fail("more weak-pinning events than configure exits and the boot judgment");
    if (h->events[FZ_CAPABILITY] != s->capability_events)
        fz_fail("%llu HEKI_CAPABILITY, %llu due", (unsigned long long)h->events[FZ_CAPABILITY],
                (unsigned long long)s->capability_events);
}

/* What the plugin must do with the capabilities and exits (create()). */
typedef struct {
    bool verified;      /* a Heki kernel of the asked numbering */
    bool attempted[2];  /* KVM_ENABLE_CAP asked (verified, mask not 0) */
    uint64_t mask[2];
    bool claims[2];     /* attempted and KVM said yes */
    uint32_t exit[2];   /* the numbers claimed then */
    uint32_t cap[2];    /* the verified numbering's capabilities */
    int result;         /* heki_plugin_enable_caps */
} Expected;

/* Checks the plugin's numbers against `e`. */
static void check_numbers(HekiPlugin *plugin, const Expected *e) {
    for (int k = 0; k < 2; k++) {
        uint32_t exit = heki_plugin_exit_number(plugin, (HekiExitKind)k);
        uint32_t cap = heki_plugin_cap_number(plugin, (HekiExitKind)k);
        uint64_t mask = heki_plugin_cap_mask(plugin, (HekiExitKind)k);
        if (exit != (e->claims[k] ? e->exit[k] : 0))
            fz_fail("kind %d: exit number %u, want %u (claimed %d)", k, exit, e->exit[k], e->claims[k]);
        if (cap != (e->verified ? e->cap[k] : 0) || mask != (e->verified ? e->mask[k] : 0))
            fz_fail("kind %d: cap %u mask %llx, want %u %llx", k, cap, (unsigned long long)mask,
                    e->verified ? e->cap[k] : 0, (unsigned long long)(e->verified ? e->mask[k] : 0));
    }
}

/* A plugin for the option bytes `h`; false when the options are refused.
 *   h[0]: bit 0 the profile P (abi=v3, else abi=v2); bits 1-3 on-denial;
 *         bit 4 no abi option (abi=auto); bits 5-6 the kernel: Heki,
 *         Heki without CONFIG_HEKI, stock, stock with an in-kernel irqchip;
 *         bit 7 the kernel is of the other profile than P.
 *   h[1]: on-denial-cr0, on-denial-cr4, configure-exits.
 *   h[2]: on-weak-pinning, denial-exits, require-caps=on, rate-limit.
 *   h[3], h[4]: require-cr0, require-cr4, vm-name, audit-log.
 *   h[5]: bits 0-1 / 2-3 the host's KVM_ENABLE_CAP of configure / denial
 *         (enable_faults); bits 4-5 overrides: exits 2/0, exits h[6]/h[7],
 *         caps 300/301 (and the Heki kernel numbered so); bit 6 a careless
 *         host: enable_caps again and the 1.0 cap_result, both no-ops. */
static bool create(Slot *s, const uint8_t h[8]) {
    bool v3 = h[0] & 1, auto_abi = h[0] & 0x10, other = h[0] & 0x80;
    int kernel = (h[0] >> 5) & 3, overrides = (h[5] >> 4) & 3;
    char *argv[20];
    int argc = 0;
    if (!auto_abi) argv[argc++] = strdup(v3 ? "abi=v3" : "abi=v2");
    char buffer[96];
#define VERDICT_OPTION(key, index)                                              \
    if ((index) < 5) {                                                          \
        snprintf(buffer, sizeof buffer, "%s=%s", key, verdicts[index]);        \
        argv[argc++] = strdup(buffer);                                          \
    }
    VERDICT_OPTION("on-denial", (h[0] >> 1) & 7)
    VERDICT_OPTION("on-denial-cr0", h[1] & 7)
    VERDICT_OPTION("on-denial-cr4", (h[1] >> 3) & 7)
    VERDICT_OPTION("on-weak-pinning", h[2] & 7)
    snprintf(buffer, sizeof buffer, "configure-exits=%s", masks[h[1] >> 6]);
    argv[argc++] = strdup(buffer);
    snprintf(buffer, sizeof buffer, "denial-exits=%s", masks[(h[2] >> 3) & 3]);
    argv[argc++] = strdup(buffer);
    bool require = h[2] & 0x20;
    if (require) argv[argc++] = strdup("require-caps=on");
    argv[argc++] = strdup(rate_limits[h[2] >> 6]);
    if (h[3]) argv[argc++] = bits_option("require-cr0", h[3], cr0_names, 8);
    if (h[4] & 0x3f) argv[argc++] = bits_option("require-cr4", h[4] & 0x3f, cr4_names, 6);
    if (h[4] & 0x40) argv[argc++] = strdup("vm-name=fuzz \"vm\" \\ \xc3\xa9");
    if (h[4] & 0x80) argv[argc++] = strdup("audit-log=/dev/null");
    FkProfile kernel_profile = fk_profile(v3 != other ? FK_PROFILE_V3 : FK_PROFILE_V2);
    FkProfile asked = auto_abi ? kernel_profile : fk_profile(v3 ? FK_PROFILE_V3 : FK_PROFILE_V2);
    switch (overrides) {
    case 1:
        argv[argc++] = strdup("exit-configure=2"); /* KVM_EXIT_IO's number */
        argv[argc++] = strdup("exit-denial=0");
        asked.exit_configure = 2;
        asked.exit_denial = 0;
        break;
    case 2:
        snprintf(buffer, sizeof buffer, "exit-configure=%u", h[6]);
        argv[argc++] = strdup(buffer);
        snprintf(buffer, sizeof buffer, "exit-denial=%u", h[7]);
        argv[argc++] = strdup(buffer);
        asked.exit_configure = h[6];
        asked.exit_denial = h[7];
        break;
    case 3:
        argv[argc++] = strdup("cap-configure=300");
        argv[argc++] = strdup("cap-denial=301");
        kernel_profile.cap_configure = asked.cap_configure = 300;
        kernel_profile.cap_denial = asked.cap_denial = 301;
        break;
    }

    FzHost *host = &s->host;
    memset(host->events, 0, sizeof host->events);
    memset(host->suppressed, 0, sizeof host->suppressed);
    memset(s->claimed, 0, sizeof s->claimed);
    memset(s->per_register, 0, sizeof s->per_register);
    s->capability_events = s->inputs = 0;
    memcpy(s->options, h, 8);
    bool heki = kernel <= 1;
    fz_host_kernel(host, &kernel_profile,
                   kernel == 2 ? FK_KERNEL_STOCK : kernel == 3 ? FK_KERNEL_STOCK_IRQCHIP : FK_KERNEL_HEKI,
                   kernel == 0);
    for (int k = 0; k < 2; k++) host->enable_fault[k] = enable_faults[(h[5] >> (2 * k)) & 3];
    char *error = NULL;
    HekiPlugin *plugin = heki_plugin_new(&host->host, argc, (const char *const *)argv, &error);
    for (int i = 0; i < argc; i++) free(argv[i]);
    if (!plugin) {
        if (!error) fz_fail("heki_plugin_new failed without a message");
        heki_plugin_free_string(error);
        return false;
    }
    if (error) fz_fail("heki_plugin_new succeeded and set *error");
    s->plugin = plugin;

    /* What the plugin must do: overridden caps must answer 3, abi=auto
       takes either kernel, abi=v2/v3 only its own. */
    Expected e = {.verified = heki && (overrides == 3 || auto_abi || !other),
                  .exit = {asked.exit_configure, asked.exit_denial},
                  .cap = {asked.cap_configure, asked.cap_denial},
                  .mask = {mask_bits[h[1] >> 6], mask_bits[(h[2] >> 3) & 3]}};
    bool refused = false;
    uint64_t attempts = 0;
    for (int k = 0; k < 2; k++) {
        e.attempted[k] = e.verified && e.mask[k];
        e.claims[k] = e.attempted[k] && !host->enable_fault[k] && kernel == 0;
        refused |= e.attempted[k] && !e.claims[k];
        attempts += e.attempted[k];
        s->exit[k] = e.exit[k]; /* fed whether claimed or not */
        s->claims[k] = e.claims[k];
    }
    e.result = require && (!e.verified || refused) ? -1 : 0;
    check_numbers(plugin, &(Expected){0}); /* nothing before enable_caps */
    int r = fz_enable_caps(host, plugin, true);
    if (r != e.result) fz_fail("heki_plugin_enable_caps: %d, want %d", r, e.result);
    if (host->enables != attempts)
        fz_fail("%llu KVM_ENABLE_CAP, want %llu", (unsigned long long)host->enables, (unsigned long long)attempts);
    s->capability_events = 1 + attempts;
    check_numbers(plugin, &e);
    if (h[5] & 0x40) {
        if (fz_enable_caps(host, plugin, true) != -1) fz_fail("a second heki_plugin_enable_caps succeeded");
        for (int k = 0; k < 2; k++) {
            if (heki_plugin_cap_result(plugin, (HekiExitKind)k, 0) != (e.claims[k] ? 0 : -1))
                fz_fail("cap_result(%d, 0) does not tell the claim", k);
            if (heki_plugin_cap_result(plugin, (HekiExitKind)k, -22) != -1) fz_fail("cap_result(%d, -22)", k);
        }
        if (host->enables != attempts) fz_fail("a careless host's calls reached KVM_ENABLE_CAP");
        check_numbers(plugin, &e);
    }
    if (e.claims[0] && e.claims[1] && e.exit[0] == e.exit[1]) fz_fail("both exits are %u", e.exit[0]);
    return true;
}

/* The option bytes with the bits create() ignores cleared, so inputs that
   make the same plugin share it. */
static void canonical(const uint8_t h[8], uint8_t c[8]) {
#define OMIT(v) ((v) > 4 ? 7 : (v))
    c[0] = (uint8_t)((h[0] & 0xf1) | OMIT((h[0] >> 1) & 7) << 1);
    c[1] = (uint8_t)(OMIT(h[1] & 7) | OMIT((h[1] >> 3) & 7) << 3 | (h[1] & 0xc0));
    c[2] = (uint8_t)(OMIT(h[2] & 7) | (h[2] & 0xf8));
    c[3] = h[3];
    c[4] = h[4];
    c[5] = h[5] & 0x7f;
    bool raw_numbers = ((h[5] >> 4) & 3) == 2;
    c[6] = raw_numbers ? h[6] : 0;
    c[7] = raw_numbers ? h[7] : 0;
#undef OMIT
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t h[8] = {0}, c[8];
    memcpy(h, data, size < 8 ? size : 8);
    canonical(h, c);
    const uint8_t *records = size > 8 ? data + 8 : NULL;
    size_t record_bytes = size > 8 ? size - 8 : 0;

    uint32_t key = 2166136261u;
    for (int i = 0; i < 8; i++) key = (key ^ c[i]) * 16777619u;
    Slot *s = &slots[key % SLOTS];
    if (s->plugin && (memcmp(s->options, c, 8) != 0 || s->inputs >= LIFETIME)) retire(s, h[6] & 0x80);
    if (!s->plugin && !create(s, c)) return 0;
    s->inputs++;
    bool query = false;

    for (size_t at = 0; at < record_bytes; at += RECORD_BYTES) {
        uint8_t record[RECORD_BYTES] = {0};
        size_t n = record_bytes - at < RECORD_BYTES ? record_bytes - at : RECORD_BYTES;
        memcpy(record, records + at, n);
        uint8_t op = record[0];
        uint32_t vcpu, number;
        memcpy(&vcpu, record + 1, 4);
        memcpy(&number, record + 5, 4);
        if (!(op & 0x10)) vcpu &= 63;
        if ((op & 3) < 2) number = s->exit[op & 3];
        memset(run, 0xa5, RUN_BYTES); /* the fields around the ones the plugin reads */
        uint64_t words[FK_HEKI_PAYLOAD_WORDS];
        memcpy(words, record + 9, sizeof words);
        fk_run_write_raw((struct kvm_run *)run, number, words);
        const struct kvm_run *view = (op & 0x20) ? NULL : (const struct kvm_run *)run;
        HekiVerdict verdict = heki_plugin_handle_exit(s->plugin, vcpu, view);
        if (verdict < HEKI_VERDICT_NOT_HEKI || verdict > HEKI_VERDICT_EXIT) fz_fail("verdict %d", (int)verdict);
        int k = s->claims[0] && number == s->exit[0] ? 0 : s->claims[1] && number == s->exit[1] ? 1 : -1;
        bool ours = view && k >= 0;
        if (!ours && verdict != HEKI_VERDICT_NOT_HEKI) fz_fail("claimed exit %u (verdict %d)", number, (int)verdict);
        if (ours) {
            if (verdict == HEKI_VERDICT_NOT_HEKI) {
                s->claimed[FZ_MALFORMED]++;
            } else {
                uint64_t reason;
                memcpy(&reason, record + 9, 8);
                if (reason != 1 && reason != 2) fz_fail("claimed an exit with reason %llx", (unsigned long long)reason);
                s->claimed[k == 0 ? FZ_CONFIGURE : FZ_DENIAL]++;
                s->per_register[k][reason == 1 ? 0 : 1]++;
            }
        }
        if (op & 4) fz_dispatch(&s->host);
        query |= (op & 0x48) == 0x48;
    }
    if (query) check_query(s);
    if ((h[7] & 0xe0) == 0xe0) retire(s, h[6] & 0x80); /* a whole lifetime in this input */
    return 0;
}
