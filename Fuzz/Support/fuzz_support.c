/* fuzz_support.c - the checking host and the JSON validator of the fuzz targets. */
#include "fuzz_support.h"

/* The oracles are not what is fuzzed: no coverage feedback from them (it
   would steer the fuzzer towards JSON corner cases the plugin never makes
   and cost time on every event). */
#define ORACLE __attribute__((no_sanitize("coverage")))

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

ORACLE void fz_fail(const char *format, ...) {
    va_list args;
    va_start(args, format);
    fprintf(stderr, "heki-fuzz: ");
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
    abort();
}

/* ---- JSON ------------------------------------------------------------- */

typedef struct {
    const unsigned char *p, *end;
    int depth;
} Parser;

ORACLE static void skip_ws(Parser *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r')) s->p++;
}

ORACLE static bool literal(Parser *s, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0) return false;
    s->p += n;
    return true;
}

/* One UTF-8 sequence (no overlongs, no surrogates, <= U+10FFFF). */
ORACLE static bool utf8_char(Parser *s) {
    unsigned char c = *s->p;
    int extra;
    uint32_t cp;
    if (c < 0x80) { s->p++; return true; }
    else if ((c & 0xe0) == 0xc0) { extra = 1; cp = c & 0x1f; }
    else if ((c & 0xf0) == 0xe0) { extra = 2; cp = c & 0x0f; }
    else if ((c & 0xf8) == 0xf0) { extra = 3; cp = c & 0x07; }
    else return false;
    if (s->end - s->p <= extra) return false;
    for (int i = 1; i <= extra; i++) {
        if ((s->p[i] & 0xc0) != 0x80) return false;
        cp = (cp << 6) | (s->p[i] & 0x3f);
    }
    static const uint32_t minimum[] = {0, 0x80, 0x800, 0x10000};
    if (cp < minimum[extra] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    s->p += extra + 1;
    return true;
}

ORACLE static bool string(Parser *s) {
    if (s->p >= s->end || *s->p != '"') return false;
    s->p++;
    while (s->p < s->end) {
        unsigned char c = *s->p;
        if (c == '"') { s->p++; return true; }
        if (c < 0x20) return false;
        if (c == '\\') {
            s->p++;
            if (s->p >= s->end) return false;
            c = *s->p++;
            if (c == 'u') {
                if (s->end - s->p < 4) return false;
                for (int i = 0; i < 4; i++)
                    if (!strchr("0123456789abcdefABCDEF", s->p[i]) || !s->p[i]) return false;
                s->p += 4;
            } else if (!strchr("\"\\/bfnrt", c) || !c) {
                return false;
            }
            continue;
        }
        if (!utf8_char(s)) return false;
    }
    return false;
}

ORACLE static bool digits(Parser *s) {
    const unsigned char *start = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9') s->p++;
    return s->p > start;
}

ORACLE static bool number(Parser *s) {
    if (s->p < s->end && *s->p == '-') s->p++;
    if (s->p < s->end && *s->p == '0') s->p++;
    else if (!digits(s)) return false;
    if (s->p < s->end && *s->p == '.') { s->p++; if (!digits(s)) return false; }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-')) s->p++;
        if (!digits(s)) return false;
    }
    return true;
}

ORACLE static bool value(Parser *s);

ORACLE static bool members(Parser *s, char close, bool keyed) {
    s->p++;
    if (++s->depth > 64) return false;
    skip_ws(s);
    if (s->p < s->end && *s->p == close) { s->p++; s->depth--; return true; }
    for (;;) {
        skip_ws(s);
        if (keyed) {
            if (!string(s)) return false;
            skip_ws(s);
            if (s->p >= s->end || *s->p++ != ':') return false;
        }
        if (!value(s)) return false;
        skip_ws(s);
        if (s->p >= s->end) return false;
        if (*s->p == ',') { s->p++; continue; }
        if (*s->p == close) { s->p++; s->depth--; return true; }
        return false;
    }
}

ORACLE static bool value(Parser *s) {
    skip_ws(s);
    if (s->p >= s->end) return false;
    switch (*s->p) {
    case '{': return members(s, '}', true);
    case '[': return members(s, ']', false);
    case '"': return string(s);
    case 't': return literal(s, "true");
    case 'f': return literal(s, "false");
    case 'n': return literal(s, "null");
    default: return number(s);
    }
}

ORACLE bool fz_json_valid(const char *text, size_t length) {
    Parser s = {(const unsigned char *)text, (const unsigned char *)text + length, 0};
    if (!value(&s)) return false;
    skip_ws(&s);
    return s.p == s.end;
}

ORACLE void fz_check_message(const char *what, const char *message) {
    if (!message) fz_fail("%s: failed without a message", what);
    size_t n = strlen(message);
    if (n == 0 || n > 4096) fz_fail("%s: message of %zu bytes", what, n);
    if (strncmp(message, "heki-plugin: ", 13) != 0) fz_fail("%s: message without the prefix: %s", what, message);
    if (!g_utf8_validate(message, (gssize)n, NULL)) fz_fail("%s: message is not UTF-8", what);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)message[i] < 0x20 || message[i] == 0x7f)
            fz_fail("%s: control character in: %s", what, message);
}

ORACLE void fz_check_json(const char *what, const char *json) {
    if (!json) fz_fail("%s: NULL JSON", what);
    if (!fz_json_valid(json, strlen(json))) fz_fail("%s: invalid JSON: %s", what, json);
}

ORACLE uint64_t fz_json_number(const char *json, const char *key) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *at = strstr(json, pattern);
    if (!at) fz_fail("no \"%s\" in %s", key, json);
    char *end;
    unsigned long long n = strtoull(at + strlen(pattern), &end, 10);
    if (end == at + strlen(pattern)) fz_fail("\"%s\" is not a number in %s", key, json);
    return n;
}

ORACLE uint64_t fz_json_number_in(const char *json, const char *scope, const char *key) {
    const char *at = strstr(json, scope);
    if (!at) fz_fail("no %s in %s", scope, json);
    return fz_json_number(at, key);
}

/* ---- the host --------------------------------------------------------- */

static const char *const kind_names[FZ_KINDS] = {
    "HEKI_CONFIGURE", "HEKI_DENIAL", "HEKI_WEAK_PINNING", "HEKI_MALFORMED_EXIT",
    "HEKI_CAPABILITY", "HEKI_SUPPRESSED", "HEKI_POLICY", "HEKI_MIGRATION", "HEKI_RESET",
};

ORACLE static int kind_of(const char *name) {
    for (int i = 0; i < FZ_KINDS; i++)
        if (strcmp(name, kind_names[i]) == 0) return i;
    return -1;
}

ORACLE static void on_event(void *opaque, const char *name, const char *data) {
    FzHost *h = opaque;
    if (!name || !data) fz_fail("event with a NULL name or data");
    int kind = kind_of(name);
    if (kind < 0) fz_fail("unknown event name '%s'", name);
    fz_check_json(name, data);
    if (data[0] != '{') fz_fail("%s: data is not an object: %s", name, data);
    h->events[kind]++;
    if (kind == FZ_POLICY && !strstr(data, "\"changed\":["))
        fz_fail("HEKI_POLICY without changed: %s", data);
    if (kind == FZ_MIGRATION && (!strstr(data, "\"action\":\"") || !strstr(data, "\"reason\":\"")))
        fz_fail("HEKI_MIGRATION without action or reason: %s", data);
    if (kind == FZ_RESET && !strstr(data, "\"verdict\":\"poweroff\"") &&
        !strstr(data, "\"verdict\":\"exit\"") && !strstr(data, "\"verdict\":\"reset\""))
        fz_fail("HEKI_RESET without a reset verdict: %s", data);
    if (kind == FZ_SUPPRESSED) {
        const char *event = strstr(data, "\"event\":\"");
        if (!event) fz_fail("HEKI_SUPPRESSED without event: %s", data);
        event += strlen("\"event\":\"");
        int coalesced = -1;
        for (int i = 0; i < FZ_KINDS; i++) {
            size_t n = strlen(kind_names[i]);
            if (strncmp(event, kind_names[i], n) == 0 && event[n] == '"') coalesced = i;
        }
        if (coalesced < 0 || coalesced == FZ_SUPPRESSED || coalesced == FZ_CAPABILITY ||
            coalesced == FZ_POLICY || coalesced == FZ_MIGRATION || coalesced == FZ_RESET)
            fz_fail("HEKI_SUPPRESSED of an unexpected kind: %s", data);
        uint64_t count = fz_json_number(data, "count");
        if (count == 0) fz_fail("HEKI_SUPPRESSED with count 0: %s", data);
        h->suppressed[coalesced] += count;
    }
    if (h->free_from_callback && *h->free_from_callback) {
        HekiPlugin *plugin = *h->free_from_callback;
        *h->free_from_callback = NULL;
        heki_plugin_free(plugin); /* deferred by the plugin until this dispatch unwinds */
    }
}

ORACLE static void on_log(void *opaque, HekiLogLevel level, const char *message) {
    FzHost *h = opaque;
    if ((unsigned)level > HEKI_LOG_DEBUG) fz_fail("log level %d", (int)level);
    if (!message) fz_fail("NULL log message");
    size_t n = strlen(message);
    if (!g_utf8_validate(message, (gssize)n, NULL)) fz_fail("log line is not UTF-8");
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)message[i] < 0x20) fz_fail("control character in a log line: %s", message);
    h->logs++;
}

/* A reason exactly when blocked, naming Heki.  (Told only on a change,
   but per plugin: a slot's next plugin starts unblocked.) */
ORACLE static void on_migration_blocker(void *opaque, int blocked, const char *reason) {
    FzHost *h = opaque;
    if (blocked != 0 && blocked != 1) fz_fail("migration_blocker(%d)", blocked);
    if (blocked) {
        if (!reason || strncmp(reason, "Heki: ", 6) != 0) fz_fail("blocker reason '%s'", reason ? reason : "(null)");
        if (!g_utf8_validate(reason, -1, NULL)) fz_fail("blocker reason is not UTF-8");
    } else if (reason) {
        fz_fail("migration_blocker(0) with a reason: %s", reason);
    }
    h->blocked = blocked;
    h->blocker_calls++;
}

ORACLE static void inside_enable_caps(const FzHost *h, const char *callback) {
    if (!h->in_enable_caps) fz_fail("HekiHost.%s called outside heki_plugin_enable_caps", callback);
}

ORACLE static int on_check_extension(void *opaque, uint32_t cap) {
    FzHost *h = opaque;
    inside_enable_caps(h, "check_extension");
    int answer = fk_check_extension(h->kernel, cap);
    if (h->checked < FZ_MAX_CHECKED) {
        h->checked_caps[h->checked] = cap;
        h->checked_answers[h->checked++] = answer;
    }
    return answer;
}

ORACLE static int on_enable_cap(void *opaque, uint32_t cap, uint64_t mask) {
    FzHost *h = opaque;
    inside_enable_caps(h, "enable_cap");
    int answer = -1;
    for (unsigned i = 0; i < h->checked; i++)
        if (h->checked_caps[i] == cap) answer = h->checked_answers[i];
    if (answer != (int)FK_HEKI_EXIT_REASON_VALID_MASK)
        fz_fail("KVM_ENABLE_CAP(%u) after KVM_CHECK_EXTENSION answered %d", cap, answer);
    if (mask == 0 || (mask & ~FK_HEKI_EXIT_REASON_VALID_MASK))
        fz_fail("KVM_ENABLE_CAP(%u) with mask %#llx", cap, (unsigned long long)mask);
    h->enables++;
    FkProfile p = fk_vm_profile(h->kernel);
    int fault = cap == p.cap_configure ? h->enable_fault[0] : cap == p.cap_denial ? h->enable_fault[1] : 0;
    return fault ? fault : fk_enable_cap(h->kernel, cap, mask);
}

ORACLE void fz_host_init(FzHost *h) {
    memset(h, 0, sizeof *h);
    h->context = g_main_context_new();
    g_main_context_acquire(h->context);
    h->host = (HekiHost){.size = sizeof(HekiHost), .opaque = h, .context = h->context, .log = on_log,
                         .event = on_event, .check_extension = on_check_extension,
                         .enable_cap = on_enable_cap, .migration_blocker = on_migration_blocker};
    FkProfile v2 = fk_profile(FK_PROFILE_V2);
    fz_host_kernel(h, &v2, FK_KERNEL_HEKI, true);
}

ORACLE void fz_host_destroy(FzHost *h) {
    fz_dispatch(h);
    g_main_context_release(h->context);
    g_main_context_unref(h->context);
    fk_vm_free(h->kernel);
}

ORACLE void fz_host_kernel(FzHost *h, const FkProfile *profile, FkKernelKind kind, bool heki_built) {
    fk_vm_free(h->kernel);
    h->kernel = fk_vm_new(profile, FK_DEFAULT_HOST_CR0, FK_DEFAULT_HOST_CR4);
    if (!h->kernel) fz_fail("fk_vm_new");
    fk_vm_set_kernel(h->kernel, kind);
    fk_vm_set_heki_built(h->kernel, heki_built);
    h->enable_fault[0] = h->enable_fault[1] = 0;
    h->enables = 0;
}

ORACLE int fz_enable_caps(FzHost *h, HekiPlugin *plugin, bool with_error) {
    char *error = (char *)0x1;
    h->checked = 0;
    h->in_enable_caps = true;
    int r = heki_plugin_enable_caps(plugin, with_error ? &error : NULL);
    h->in_enable_caps = false;
    if (r != 0 && r != -1) fz_fail("heki_plugin_enable_caps returned %d", r);
    if (with_error) {
        if (r == 0 && error) fz_fail("heki_plugin_enable_caps returned 0 and set *error");
        if (r == -1) {
            fz_check_message("heki_plugin_enable_caps", error == (char *)0x1 ? NULL : error);
            heki_plugin_free_string(error);
        }
    }
    if (fk_vm_kernel(h->kernel) != FK_KERNEL_HEKI) {
        if (fk_vm_enable_cap_calls_total(h->kernel) != 0)
            fz_fail("KVM_ENABLE_CAP reached a stock kernel (%llu calls)",
                    (unsigned long long)fk_vm_enable_cap_calls_total(h->kernel));
        if (fk_vm_apic_bus_cycle_ns(h->kernel) != 1) fz_fail("the stock kernel's APIC bus cycle changed");
    }
    return r;
}

ORACLE void fz_dispatch(FzHost *h) {
    for (int i = 0; i < 100000 && g_main_context_iteration(h->context, FALSE); i++) {}
}
