/*
 * fake_vmm.c - the VMM side of the fake host (see fake_vmm.h).
 */
#define _GNU_SOURCE
#include "fake_vmm.h"

#include <errno.h>
#include <glib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/kvm.h>

void fh_free_string(char *string) { g_free(string); }

/* ---- VM ---------------------------------------------------------------- */

typedef enum { OP_PIN, OP_HYPERCALL, OP_WRITE_CR, OP_RAW, OP_REBOOT } OpKind;

typedef struct {
    OpKind kind;
    int cr;
    uint32_t exit_reason;
    uint64_t a0, a1, a2;
    uint64_t words[FK_HEKI_PAYLOAD_WORDS];
    uint64_t repeat;
} Op;

#define NVERDICT_SLOTS 8 /* index = verdict + 1; FH_VERDICT_INVALID + 1 = 7 */

typedef struct {
    FhVm *vm;
    uint32_t index;
    struct kvm_run *run;
    size_t run_size;
    FkVcpu *fk;
    GArray *program; /* Op */
    guint pc;        /* next op */
    uint64_t done;   /* repeats done of program[pc] */
    pthread_t thread;
    atomic_uint_fast64_t exits;
    atomic_uint_fast64_t verdicts[NVERDICT_SLOTS];
} Vcpu;

typedef struct {
    char *name;
    char *data;
} Event;

typedef struct {
    int level;
    char *message;
} LogLine;

struct FhVm {
    const HsPluginApi *api;
    HsPluginApi api_copy; /* the VM keeps working after hs_library_close (nodelete) */
    FkVm *kernel;
    GMainContext *context;
    pthread_t owner;
    HekiHost host;
    uint32_t host_size;
    bool with_log, with_event, with_kvm, with_apply_verdict;
    HekiPlugin *plugin;
    GPtrArray *options; /* char * */
    char *last_error;
    int cap_kvm[2];
    GArray *checks;  /* FhCheckCall: KVM_CHECK_EXTENSION the plugin asked */
    GArray *enables; /* FhEnableCall: KVM_ENABLE_CAP the plugin asked */
    uint64_t applied[NVERDICT_SLOTS]; /* apply_verdict calls, by verdict_slot */
    bool with_migration_blocker;     /* off unless a test asks (fh_vm_set_migration_blocker) */
    bool blocked;                    /* what migration_blocker said last */
    uint64_t blocker_calls;
    char *blocker_reason;

    Vcpu *vcpus[FH_MAX_VCPUS];
    uint32_t nvcpus;
    atomic_int running;
    atomic_int stop; /* FH_STOP_NONE or a verdict */
    uint64_t resets, pauses, poweroffs, exit_requests;
    int last_reset_verdict; /* what heki_plugin_reset made of the last reset */
    atomic_uint_fast64_t host_handled;

    GMutex lock; /* the recorded lists (callbacks may, wrongly, come from anywhere) */
    GArray *events; /* Event */
    GArray *logs;   /* LogLine */
    uint32_t event_capacity, log_capacity;
    uint64_t event_total, log_total;
    GHashTable *per_name;   /* name -> uint64_t * */
    GHashTable *suppressed; /* coalesced name -> uint64_t * */
    atomic_uint_fast64_t violations;
    FhEventHook event_hook;
    void *event_hook_data;
    FhLogHook log_hook;
    void *log_hook_data;
};

static void set_error(FhVm *vm, const char *msg) {
    g_free(vm->last_error);
    vm->last_error = g_strdup(msg ? msg : "");
}

static void check_thread(FhVm *vm) {
    if (!pthread_equal(pthread_self(), vm->owner) || !g_main_context_is_owner(vm->context))
        atomic_fetch_add(&vm->violations, 1);
}

static void bump(GHashTable *table, const char *key, uint64_t by) {
    uint64_t *n = g_hash_table_lookup(table, key);
    if (!n) {
        if (g_hash_table_size(table) >= 1024) /* distinct names are few; stay bounded */
            return;
        n = g_new0(uint64_t, 1);
        g_hash_table_insert(table, g_strdup(key), n);
    }
    *n += by;
}

/* Where the value of "key" starts in compact JSON, or NULL. */
static const char *json_value(const char *json, const char *key) {
    char *pat = g_strdup_printf("\"%s\":", key);
    const char *p = strstr(json, pat);
    size_t plen = strlen(pat);
    g_free(pat);
    return p ? p + plen : NULL;
}

/* Extracts "key":"string" (into buf) from compact JSON; false if absent. */
static bool json_string_field(const char *json, const char *key, char *buf, size_t size) {
    const char *p = json_value(json, key);
    if (!p || *p != '"')
        return false;
    p++;
    size_t i = 0;
    while (p[i] && p[i] != '"' && i + 1 < size) {
        buf[i] = p[i];
        i++;
    }
    buf[i] = 0;
    return p[i] == '"';
}

static bool json_number_field(const char *json, const char *key, uint64_t *out) {
    const char *p = json_value(json, key);
    if (!p || *p < '0' || *p > '9')
        return false;
    *out = g_ascii_strtoull(p, NULL, 10);
    return true;
}

static void on_event(void *opaque, const char *name, const char *data_json) {
    FhVm *vm = opaque;
    check_thread(vm);
    if (!name)
        name = "(null)";
    if (!data_json)
        data_json = "";
    g_mutex_lock(&vm->lock);
    vm->event_total++;
    bump(vm->per_name, name, 1);
    if (strcmp(name, "HEKI_SUPPRESSED") == 0) {
        char coalesced[128];
        uint64_t count = 0;
        if (json_string_field(data_json, "event", coalesced, sizeof coalesced) &&
            json_number_field(data_json, "count", &count))
            bump(vm->suppressed, coalesced, count);
    }
    if (vm->events->len < vm->event_capacity) {
        Event e = {g_strdup(name), g_strdup(data_json)};
        g_array_append_val(vm->events, e);
    }
    g_mutex_unlock(&vm->lock);
    if (vm->event_hook)
        vm->event_hook(vm->event_hook_data, name, data_json);
}

/* Counter slot of a verdict asked for (-1 outside HekiVerdict and
   FH_VERDICT_INVALID), and of a verdict received (outside HekiVerdict: the
   FH_VERDICT_INVALID slot). */
static int verdict_slot(int verdict) {
    if (verdict >= HEKI_VERDICT_NOT_HEKI && verdict <= FH_VERDICT_INVALID)
        return verdict + 1;
    return -1;
}
static int received_slot(int verdict) {
    return verdict_slot(verdict >= HEKI_VERDICT_NOT_HEKI && verdict <= HEKI_VERDICT_EXIT ? verdict
                                                                                       : FH_VERDICT_INVALID);
}

static void request_stop(FhVm *vm, int verdict) {
    int expected = FH_STOP_NONE;
    atomic_compare_exchange_strong(&vm->stop, &expected, verdict);
}

/* The host's KVM ioctls, as the plugin drives them: into the kernel model,
   recorded like an ioctl trace. */
static int on_check_extension(void *opaque, uint32_t cap) {
    FhVm *vm = opaque;
    check_thread(vm);
    FhCheckCall call = {cap, fk_check_extension(vm->kernel, cap)};
    g_array_append_val(vm->checks, call);
    return call.answer;
}

static int on_enable_cap(void *opaque, uint32_t cap, uint64_t mask) {
    FhVm *vm = opaque;
    check_thread(vm);
    FhEnableCall call = {cap, mask, fk_enable_cap(vm->kernel, cap, mask)};
    g_array_append_val(vm->enables, call);
    return call.result;
}

/* A verdict of the main loop (the pin deadline) stops the VM as a vCPU's
   verdict does. */
static void on_apply_verdict(void *opaque, HekiVerdict verdict) {
    FhVm *vm = opaque;
    check_thread(vm);
    vm->applied[received_slot(verdict)]++;
    request_stop(vm, verdict);
}

/* The host's migration blocker, as the plugin tells it. */
static void on_migration_blocker(void *opaque, int blocked, const char *reason) {
    FhVm *vm = opaque;
    check_thread(vm);
    vm->blocked = blocked != 0;
    vm->blocker_calls++;
    g_free(vm->blocker_reason);
    vm->blocker_reason = g_strdup(reason);
}

static void on_log(void *opaque, HekiLogLevel level, const char *message) {
    FhVm *vm = opaque;
    check_thread(vm);
    if (!message)
        message = "(null)";
    g_mutex_lock(&vm->lock);
    vm->log_total++;
    if (vm->logs->len < vm->log_capacity) {
        LogLine l = {(int)level, g_strdup(message)};
        g_array_append_val(vm->logs, l);
    }
    g_mutex_unlock(&vm->lock);
    if (vm->log_hook)
        vm->log_hook(vm->log_hook_data, level, message);
}

static void clear_event(gpointer p) {
    Event *e = p;
    g_free(e->name);
    g_free(e->data);
}

static void clear_log(gpointer p) {
    LogLine *l = p;
    g_free(l->message);
}

FhVm *fh_vm_new(HsLibrary *lib, const FkProfile *kernel_profile) {
    FhVm *vm = g_new0(FhVm, 1);
    if (lib)
        vm->api_copy = *hs_library_api(lib);
    vm->api = lib ? &vm->api_copy : NULL;
    vm->kernel = fk_vm_new(kernel_profile, FK_DEFAULT_HOST_CR0, FK_DEFAULT_HOST_CR4);
    vm->context = g_main_context_new();
    /* This thread owns the context for the VM's life: it is the main loop
       thread, and the only one the callbacks may run on. */
    g_main_context_acquire(vm->context);
    vm->owner = pthread_self();
    vm->host_size = (uint32_t)sizeof(HekiHost);
    vm->with_log = vm->with_event = true;
    vm->options = g_ptr_array_new_with_free_func(g_free);
    vm->last_error = g_strdup("");
    vm->cap_kvm[0] = vm->cap_kvm[1] = FH_CAP_NOT_TRIED;
    vm->checks = g_array_new(FALSE, FALSE, sizeof(FhCheckCall));
    vm->enables = g_array_new(FALSE, FALSE, sizeof(FhEnableCall));
    vm->with_kvm = vm->with_apply_verdict = true;
    atomic_init(&vm->running, 0);
    atomic_init(&vm->stop, FH_STOP_NONE);
    atomic_init(&vm->host_handled, 0);
    atomic_init(&vm->violations, 0);
    g_mutex_init(&vm->lock);
    vm->events = g_array_new(FALSE, TRUE, sizeof(Event));
    g_array_set_clear_func(vm->events, clear_event);
    vm->logs = g_array_new(FALSE, TRUE, sizeof(LogLine));
    g_array_set_clear_func(vm->logs, clear_log);
    vm->event_capacity = FH_DEFAULT_EVENT_CAPACITY;
    vm->log_capacity = FH_DEFAULT_LOG_CAPACITY;
    vm->per_name = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    vm->suppressed = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    return vm;
}

static void vcpu_free(Vcpu *v) {
    fk_vcpu_free(v->fk);
    munmap(v->run, v->run_size);
    g_array_free(v->program, TRUE);
    g_free(v);
}

void fh_vm_free(FhVm *vm) {
    if (!vm)
        return;
    fh_vm_free_plugin(vm);
    for (uint32_t i = 0; i < vm->nvcpus; i++)
        vcpu_free(vm->vcpus[i]);
    fk_vm_free(vm->kernel);
    if (g_main_context_is_owner(vm->context)) /* freed on the thread that made it */
        g_main_context_release(vm->context);
    g_main_context_unref(vm->context);
    g_ptr_array_free(vm->options, TRUE);
    g_free(vm->last_error);
    g_free(vm->blocker_reason);
    g_array_free(vm->events, TRUE);
    g_array_free(vm->logs, TRUE);
    g_array_free(vm->checks, TRUE);
    g_array_free(vm->enables, TRUE);
    g_hash_table_destroy(vm->per_name);
    g_hash_table_destroy(vm->suppressed);
    g_mutex_clear(&vm->lock);
    g_free(vm);
}

FkVm *fh_vm_kernel(FhVm *vm) { return vm->kernel; }
GMainContext *fh_vm_context(FhVm *vm) { return vm->context; }
const HsPluginApi *fh_vm_api(FhVm *vm) { return vm->api; }
void fh_vm_set_host_size(FhVm *vm, uint32_t size) { vm->host_size = size; }
void fh_vm_set_host_callbacks(FhVm *vm, bool with_log, bool with_event) {
    vm->with_log = with_log;
    vm->with_event = with_event;
}
void fh_vm_set_host_kvm(FhVm *vm, bool with_kvm, bool with_apply_verdict) {
    vm->with_kvm = with_kvm;
    vm->with_apply_verdict = with_apply_verdict;
}
void fh_vm_set_migration_blocker(FhVm *vm, bool with_migration_blocker) {
    vm->with_migration_blocker = with_migration_blocker;
}
int fh_vm_migration_blocked(FhVm *vm) { return vm->blocked; }
uint64_t fh_vm_migration_blocker_calls(FhVm *vm) { return vm->blocker_calls; }
const char *fh_vm_migration_blocker_reason(FhVm *vm) { return vm->blocker_reason ? vm->blocker_reason : ""; }
void fh_vm_set_event_capacity(FhVm *vm, uint32_t capacity) { vm->event_capacity = capacity; }
void fh_vm_set_log_capacity(FhVm *vm, uint32_t capacity) { vm->log_capacity = capacity; }
void fh_vm_set_event_hook(FhVm *vm, FhEventHook hook, void *user_data) {
    vm->event_hook = hook;
    vm->event_hook_data = user_data;
}
void fh_vm_set_log_hook(FhVm *vm, FhLogHook hook, void *user_data) {
    vm->log_hook = hook;
    vm->log_hook_data = user_data;
}

void fh_vm_add_option(FhVm *vm, const char *option) {
    g_ptr_array_add(vm->options, g_strdup(option ? option : ""));
}
void fh_vm_clear_options(FhVm *vm) { g_ptr_array_set_size(vm->options, 0); }

int fh_vm_create_plugin_argv(FhVm *vm, int argc, const char *const *argv) {
    if (!vm->api) {
        set_error(vm, "fake-vmm: no library");
        return -1;
    }
    if (vm->plugin) {
        set_error(vm, "fake-vmm: plugin already created");
        return -1;
    }
    /* The struct handed over may claim a different size than it has: a
       larger claim is backed by zeroed memory so the plugin may read it. */
    struct {
        HekiHost host;
        char tail[256];
    } buffer;
    memset(&buffer, 0, sizeof buffer);
    buffer.host.size = vm->host_size;
    buffer.host.opaque = vm;
    buffer.host.context = vm->context;
    buffer.host.log = vm->with_log ? on_log : NULL;
    buffer.host.event = vm->with_event ? on_event : NULL;
    buffer.host.check_extension = vm->with_kvm ? on_check_extension : NULL;
    buffer.host.enable_cap = vm->with_kvm ? on_enable_cap : NULL;
    buffer.host.apply_verdict = vm->with_apply_verdict ? on_apply_verdict : NULL;
    buffer.host.migration_blocker = vm->with_migration_blocker ? on_migration_blocker : NULL;
    vm->host = buffer.host;
    char *error = NULL;
    vm->plugin = vm->api->plugin_new(&buffer.host, argc, argv, &error);
    if (!vm->plugin) {
        set_error(vm, error ? error : "fake-vmm: heki_plugin_new returned NULL without an error");
        vm->api->free_string(error);
        return -1;
    }
    if (error) /* not expected on success; do not leak it */
        vm->api->free_string(error);
    set_error(vm, "");
    return 0;
}

int fh_vm_create_plugin(FhVm *vm) {
    return fh_vm_create_plugin_argv(vm, (int)vm->options->len,
                                    (const char *const *)vm->options->pdata);
}

const char *fh_vm_last_error(FhVm *vm) { return vm->last_error; }
HekiPlugin *fh_vm_plugin(FhVm *vm) { return vm->plugin; }

void fh_vm_free_plugin(FhVm *vm) {
    if (vm->plugin) {
        HekiPlugin *p = vm->plugin;
        vm->plugin = NULL;
        vm->api->plugin_free(p);
    }
}

void fh_vm_forget_plugin(FhVm *vm) { vm->plugin = NULL; }

int fh_vm_enable_caps(FhVm *vm) {
    if (!vm->plugin) {
        set_error(vm, "fake-vmm: no plugin");
        return -1;
    }
    char *error = NULL;
    int r = vm->api->enable_caps(vm->plugin, &error);
    set_error(vm, error ? error : "");
    vm->api->free_string(error);
    /* Per kind, what KVM_ENABLE_CAP answered for the capability the plugin
       verified, if it asked for it. */
    static const HekiExitKind kinds[2] = {HEKI_EXIT_CONFIGURE, HEKI_EXIT_DENIAL};
    for (int i = 0; i < 2; i++) {
        uint32_t cap = vm->api->cap_number(vm->plugin, kinds[i]);
        vm->cap_kvm[i] = FH_CAP_SKIPPED;
        for (guint j = 0; cap && j < vm->enables->len; j++)
            if (g_array_index(vm->enables, FhEnableCall, j).cap == cap)
                vm->cap_kvm[i] = g_array_index(vm->enables, FhEnableCall, j).result;
    }
    return r;
}

void fh_vm_flush(FhVm *vm) {
    if (vm->plugin) vm->api->flush(vm->plugin);
}

int fh_vm_set_policy(FhVm *vm, int argc, const char *const *argv) {
    if (!vm->plugin) {
        set_error(vm, "fake-vmm: no plugin");
        return -1;
    }
    char *error = NULL;
    int r = vm->api->set_policy(vm->plugin, argc, argv, &error);
    set_error(vm, error ? error : "");
    vm->api->free_string(error);
    return r;
}

int fh_vm_cap_kvm_result(FhVm *vm, HekiExitKind kind) {
    return (unsigned)kind < 2 ? vm->cap_kvm[kind] : FH_CAP_NOT_TRIED;
}

uint32_t fh_vm_check_call_count(FhVm *vm) { return vm->checks->len; }
FhCheckCall fh_vm_check_call(FhVm *vm, uint32_t index) {
    FhCheckCall none = {0, 0};
    return index < vm->checks->len ? g_array_index(vm->checks, FhCheckCall, index) : none;
}
uint32_t fh_vm_enable_call_count(FhVm *vm) { return vm->enables->len; }
FhEnableCall fh_vm_enable_call(FhVm *vm, uint32_t index) {
    FhEnableCall none = {0, 0, 0};
    return index < vm->enables->len ? g_array_index(vm->enables, FhEnableCall, index) : none;
}

void fh_vm_start(FhVm *vm) {
    if (vm->plugin)
        vm->api->start(vm->plugin);
}

uint64_t fh_vm_applied_verdicts(FhVm *vm, int verdict) {
    int slot = verdict_slot(verdict);
    return slot >= 0 ? vm->applied[slot] : 0;
}

uint32_t fh_vm_exit_number(FhVm *vm, HekiExitKind kind) {
    return vm->plugin ? vm->api->exit_number(vm->plugin, kind) : 0;
}
uint32_t fh_vm_cap_number(FhVm *vm, HekiExitKind kind) {
    return vm->plugin ? vm->api->cap_number(vm->plugin, kind) : 0;
}
uint64_t fh_vm_cap_mask(FhVm *vm, HekiExitKind kind) {
    return vm->plugin ? vm->api->cap_mask(vm->plugin, kind) : 0;
}
int fh_vm_cap_result(FhVm *vm, HekiExitKind kind, int kvm_result) {
    return vm->plugin ? vm->api->cap_result(vm->plugin, kind, kvm_result) : -1;
}
int fh_vm_handle_exit(FhVm *vm, uint32_t vcpu_index, const struct kvm_run *run) {
    return vm->plugin ? (int)vm->api->handle_exit(vm->plugin, vcpu_index, run)
                      : HEKI_VERDICT_NOT_HEKI;
}

char *fh_vm_query(FhVm *vm) {
    if (!vm->plugin)
        return NULL;
    char *q = vm->api->query(vm->plugin);
    char *copy = q ? g_strdup(q) : NULL;
    vm->api->free_string(q);
    return copy;
}

/* ---- vCPUs ------------------------------------------------------------- */

uint32_t fh_vm_set_vcpus(FhVm *vm, uint32_t count) {
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0)
        page = 4096;
    size_t size = (sizeof(struct kvm_run) + (size_t)page - 1) / (size_t)page * (size_t)page;
    while (vm->nvcpus < count && vm->nvcpus < FH_MAX_VCPUS) {
        void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (mem == MAP_FAILED)
            break;
        Vcpu *v = g_new0(Vcpu, 1);
        v->vm = vm;
        v->index = vm->nvcpus;
        v->run = mem;
        v->run_size = size;
        v->fk = fk_vcpu_new(vm->kernel, v->run);
        if (!v->fk) {
            munmap(mem, size);
            g_free(v);
            break;
        }
        v->program = g_array_new(FALSE, TRUE, sizeof(Op));
        atomic_init(&v->exits, 0);
        for (int i = 0; i < NVERDICT_SLOTS; i++)
            atomic_init(&v->verdicts[i], 0);
        vm->vcpus[vm->nvcpus++] = v;
    }
    return vm->nvcpus;
}

uint32_t fh_vm_vcpu_count(FhVm *vm) { return vm->nvcpus; }
FkVcpu *fh_vm_vcpu(FhVm *vm, uint32_t index) {
    return index < vm->nvcpus ? vm->vcpus[index]->fk : NULL;
}
struct kvm_run *fh_vm_vcpu_run(FhVm *vm, uint32_t index) {
    return index < vm->nvcpus ? vm->vcpus[index]->run : NULL;
}

static int add_op(FhVm *vm, uint32_t vcpu, const Op *op) {
    if (vcpu >= vm->nvcpus)
        return -1;
    if (op->repeat == 0)
        return 0;
    g_array_append_val(vm->vcpus[vcpu]->program, *op);
    return 0;
}

int fh_vm_op_pin(FhVm *vm, uint32_t vcpu, int cr, uint64_t bits, uint64_t repeat) {
    Op op = {.kind = OP_PIN, .cr = cr, .a1 = bits, .repeat = repeat};
    return add_op(vm, vcpu, &op);
}
int fh_vm_op_hypercall(FhVm *vm, uint32_t vcpu, uint64_t a0, uint64_t a1, uint64_t a2,
                       uint64_t repeat) {
    Op op = {.kind = OP_HYPERCALL, .a0 = a0, .a1 = a1, .a2 = a2, .repeat = repeat};
    return add_op(vm, vcpu, &op);
}
int fh_vm_op_write_cr(FhVm *vm, uint32_t vcpu, int cr, uint64_t value, uint64_t repeat) {
    Op op = {.kind = OP_WRITE_CR, .cr = cr, .a1 = value, .repeat = repeat};
    return add_op(vm, vcpu, &op);
}
int fh_vm_op_raw_exit(FhVm *vm, uint32_t vcpu, uint32_t exit_reason, const uint64_t *words8,
                      uint64_t repeat) {
    Op op = {.kind = OP_RAW, .exit_reason = exit_reason, .repeat = repeat};
    if (words8)
        memcpy(op.words, words8, sizeof op.words);
    return add_op(vm, vcpu, &op);
}

int fh_vm_op_reboot(FhVm *vm, uint32_t vcpu) {
    Op op = {.kind = OP_REBOOT, .repeat = 1};
    return add_op(vm, vcpu, &op);
}

void fh_vm_clear_programs(FhVm *vm) {
    for (uint32_t i = 0; i < vm->nvcpus; i++) {
        g_array_set_size(vm->vcpus[i]->program, 0);
        vm->vcpus[i]->pc = 0;
        vm->vcpus[i]->done = 0;
    }
}

/* One guest instruction of the op; FK_EXIT when the VMM must look at run. */
static FkResult execute(Vcpu *v, const Op *op) {
    switch (op->kind) {
    case OP_PIN:
        return fk_vcpu_lock_cr(v->fk, (uint64_t)(int64_t)op->cr, op->a1, 0);
    case OP_HYPERCALL:
        return fk_vcpu_hypercall(v->fk, FK_KVM_HC_LOCK_CR_UPDATE, op->a0, op->a1, op->a2);
    case OP_WRITE_CR:
        return fk_vcpu_write_cr(v->fk, op->cr, op->a1);
    case OP_RAW:
        fk_run_write_raw(v->run, op->exit_reason, op->words);
        return FK_EXIT;
    case OP_REBOOT:
        return FK_OK; /* the vCPU thread asks for the reset */
    }
    return FK_BAD;
}

static void *vcpu_thread(void *arg) {
    Vcpu *v = arg;
    FhVm *vm = v->vm;
    /* KVM_RUN re-entry completes what a previous run left pending. */
    fk_vcpu_complete(v->fk);
    while (v->pc < v->program->len) {
        if (atomic_load_explicit(&vm->stop, memory_order_relaxed) != FH_STOP_NONE)
            break; /* an exit boundary: the VM is stopping */
        const Op *op = &g_array_index(v->program, Op, v->pc);
        FkResult r = execute(v, op);
        if (++v->done >= op->repeat) {
            v->pc++;
            v->done = 0;
        }
        if (op->kind == OP_REBOOT) {
            request_stop(vm, FH_STOP_GUEST_RESET); /* as KVM_EXIT_SHUTDOWN does */
            break;
        }
        if (r != FK_EXIT)
            continue;
        atomic_fetch_add_explicit(&v->exits, 1, memory_order_relaxed);
        int verdict = vm->plugin ? (int)vm->api->handle_exit(vm->plugin, v->index, v->run)
                                 : HEKI_VERDICT_NOT_HEKI;
        atomic_fetch_add_explicit(&v->verdicts[received_slot(verdict)], 1, memory_order_relaxed);
        switch (verdict) {
        case HEKI_VERDICT_NOT_HEKI:
            atomic_fetch_add_explicit(&vm->host_handled, 1, memory_order_relaxed);
            fk_vcpu_complete(v->fk); /* re-entry completes whatever KVM left */
            break;
        case HEKI_VERDICT_RESUME:
            fk_vcpu_complete(v->fk);
            break;
        case HEKI_VERDICT_PAUSE:
        case HEKI_VERDICT_POWEROFF:
        case HEKI_VERDICT_RESET:
        case HEKI_VERDICT_EXIT:
            request_stop(vm, verdict);
            goto out; /* the exit stays pending until the next run */
        default:
            request_stop(vm, HEKI_VERDICT_EXIT); /* a verdict outside the ABI */
            goto out;
        }
    }
out:
    atomic_fetch_sub(&vm->running, 1);
    g_main_context_wakeup(vm->context);
    return NULL;
}

int fh_vm_run(FhVm *vm) {
    atomic_store(&vm->stop, FH_STOP_NONE);
    uint32_t started = 0;
    atomic_store(&vm->running, (int)vm->nvcpus);
    for (uint32_t i = 0; i < vm->nvcpus; i++) {
        if (pthread_create(&vm->vcpus[i]->thread, NULL, vcpu_thread, vm->vcpus[i]) != 0) {
            atomic_fetch_sub(&vm->running, (int)(vm->nvcpus - i));
            break;
        }
        started++;
    }
    while (atomic_load(&vm->running) > 0)
        g_main_context_iteration(vm->context, TRUE);
    for (uint32_t i = 0; i < started; i++)
        pthread_join(vm->vcpus[i]->thread, NULL);
    int stop = atomic_load(&vm->stop);
    switch (stop) {
    case HEKI_VERDICT_PAUSE:
        vm->pauses++;
        break;
    case HEKI_VERDICT_POWEROFF:
        vm->poweroffs++;
        break;
    case HEKI_VERDICT_RESET:
        fh_vm_reset(vm, HEKI_RESET_CAUSE_PANIC);
        break;
    case FH_STOP_GUEST_RESET:
        fh_vm_reset(vm, HEKI_RESET_CAUSE_GUEST);
        break;
    case HEKI_VERDICT_EXIT:
        vm->exit_requests++;
        break;
    default:
        break;
    }
    return stop;
}

/* KVM_RUN with immediate_exit = 1: the kernel completes what the last
   exit left pending (rax = 0, or the #GP) and returns before the guest
   runs.  Without it, the completion stays armed across KVM_SET_REGS and
   lands on whatever state the VMM put in meanwhile. */
static void complete_pending(FhVm *vm) {
    for (uint32_t i = 0; i < vm->nvcpus; i++)
        fk_vcpu_complete(vm->vcpus[i]->fk);
}

int fh_vm_reset(FhVm *vm, HekiResetCause cause) {
    complete_pending(vm);
    int verdict = vm->plugin ? (int)vm->api->reset(vm->plugin, cause) : HEKI_VERDICT_RESET;
    vm->last_reset_verdict = verdict;
    switch (verdict) {
    case HEKI_VERDICT_RESET:
        vm->resets++;
        fk_vm_reset(vm->kernel); /* CR state reset; the pins stay */
        break;
    case HEKI_VERDICT_POWEROFF:
        vm->poweroffs++;
        break;
    default:
        vm->exit_requests++; /* EXIT, and anything outside the ABI */
        break;
    }
    return verdict;
}

int fh_vm_last_reset_verdict(FhVm *vm) { return vm->last_reset_verdict; }

FhVcpuState fh_vm_save_vcpu(FhVm *vm, uint32_t index) {
    FhVcpuState state = {0};
    if (index >= vm->nvcpus)
        return state;
    FkVcpu *v = vm->vcpus[index]->fk;
    fk_vcpu_complete(v); /* KVM_RUN with immediate_exit before KVM_GET_REGS */
    state.cr0 = fk_vcpu_cr(v, 0);
    state.cr4 = fk_vcpu_cr(v, 4);
    state.rax = fk_vcpu_rax(v);
    state.rip = fk_vcpu_rip(v);
    state.gp_count = fk_vcpu_gp_count(v);
    return state;
}

int fh_vm_stop_reason(FhVm *vm) { return atomic_load(&vm->stop); }

void fh_vm_iterate_until_idle(FhVm *vm) {
    for (int i = 0; i < 1000000 && g_main_context_iteration(vm->context, FALSE); i++) {
    }
}

static gboolean set_flag(gpointer data) {
    *(bool *)data = true;
    return G_SOURCE_REMOVE;
}

void fh_vm_run_loop_ms(FhVm *vm, uint32_t milliseconds) {
    bool done = false;
    GSource *timer = g_timeout_source_new(milliseconds);
    g_source_set_callback(timer, set_flag, &done, NULL);
    g_source_attach(timer, vm->context);
    while (!done)
        g_main_context_iteration(vm->context, TRUE);
    g_source_destroy(timer);
    g_source_unref(timer);
}

/* ---- counters ---------------------------------------------------------- */

uint64_t fh_vm_exits(FhVm *vm) {
    uint64_t n = 0;
    for (uint32_t i = 0; i < vm->nvcpus; i++)
        n += atomic_load(&vm->vcpus[i]->exits);
    return n;
}
uint64_t fh_vm_vcpu_exits(FhVm *vm, uint32_t vcpu) {
    return vcpu < vm->nvcpus ? atomic_load(&vm->vcpus[vcpu]->exits) : 0;
}
uint64_t fh_vm_vcpu_verdict_count(FhVm *vm, uint32_t vcpu, int verdict) {
    int s = verdict_slot(verdict);
    return (vcpu < vm->nvcpus && s >= 0) ? atomic_load(&vm->vcpus[vcpu]->verdicts[s]) : 0;
}
uint64_t fh_vm_verdict_count(FhVm *vm, int verdict) {
    uint64_t n = 0;
    for (uint32_t i = 0; i < vm->nvcpus; i++)
        n += fh_vm_vcpu_verdict_count(vm, i, verdict);
    return n;
}
uint64_t fh_vm_host_handled(FhVm *vm) { return atomic_load(&vm->host_handled); }
uint64_t fh_vm_vcpu_gp(FhVm *vm, uint32_t vcpu) {
    return vcpu < vm->nvcpus ? fk_vcpu_gp_count(vm->vcpus[vcpu]->fk) : 0;
}
uint64_t fh_vm_gp_total(FhVm *vm) {
    uint64_t n = 0;
    for (uint32_t i = 0; i < vm->nvcpus; i++)
        n += fk_vcpu_gp_count(vm->vcpus[i]->fk);
    return n;
}
uint64_t fh_vm_resets(FhVm *vm) { return vm->resets; }
uint64_t fh_vm_pauses(FhVm *vm) { return vm->pauses; }
uint64_t fh_vm_poweroffs(FhVm *vm) { return vm->poweroffs; }
uint64_t fh_vm_exit_requests(FhVm *vm) { return vm->exit_requests; }

uint64_t fh_vm_event_total(FhVm *vm) {
    g_mutex_lock(&vm->lock);
    uint64_t n = vm->event_total;
    g_mutex_unlock(&vm->lock);
    return n;
}
/* A count kept per event name in `table` (0 when absent). */
static uint64_t count_named(FhVm *vm, GHashTable *table, const char *name) {
    g_mutex_lock(&vm->lock);
    uint64_t *n = name ? g_hash_table_lookup(table, name) : NULL;
    uint64_t r = n ? *n : 0;
    g_mutex_unlock(&vm->lock);
    return r;
}
uint64_t fh_vm_event_count_named(FhVm *vm, const char *name) {
    return count_named(vm, vm->per_name, name);
}
uint64_t fh_vm_suppressed_sum(FhVm *vm, const char *event_name) {
    return count_named(vm, vm->suppressed, event_name);
}
uint32_t fh_vm_event_count(FhVm *vm) { return vm->events->len; }
const char *fh_vm_event_name(FhVm *vm, uint32_t index) {
    return index < vm->events->len ? g_array_index(vm->events, Event, index).name : NULL;
}
const char *fh_vm_event_data(FhVm *vm, uint32_t index) {
    return index < vm->events->len ? g_array_index(vm->events, Event, index).data : NULL;
}
uint64_t fh_vm_log_total(FhVm *vm) { return vm->log_total; }
uint32_t fh_vm_log_count(FhVm *vm) { return vm->logs->len; }
int fh_vm_log_level(FhVm *vm, uint32_t index) {
    return index < vm->logs->len ? g_array_index(vm->logs, LogLine, index).level : -1;
}
const char *fh_vm_log_message(FhVm *vm, uint32_t index) {
    return index < vm->logs->len ? g_array_index(vm->logs, LogLine, index).message : NULL;
}
void fh_vm_clear_events(FhVm *vm) {
    g_mutex_lock(&vm->lock);
    g_array_set_size(vm->events, 0);
    g_array_set_size(vm->logs, 0);
    vm->event_total = vm->log_total = 0;
    g_hash_table_remove_all(vm->per_name);
    g_hash_table_remove_all(vm->suppressed);
    g_mutex_unlock(&vm->lock);
}
uint64_t fh_vm_callback_violations(FhVm *vm) { return atomic_load(&vm->violations); }
