/*
 * kernel_model.c - the kernel side of Heki (RFC v2 patch 03), modelled.
 * Function names in comments are the patch's; see heki_kernel_model.h.
 */
#include "heki_kernel_model.h"

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <linux/kvm.h>
#include <linux/kvm_para.h>

/* The patch's kvm_run.heki_configure / heki_denial: a reason word, then a
   union of the value word with reserved[7]; 64 bytes at the exit union. */
struct fk_heki_exit {
    __u64 reason;
    union {
        __u64 cr_value; /* heki_denial.cr_value, heki_configure.cr_pinned */
        __u64 reserved[7];
    };
};

_Static_assert(offsetof(struct kvm_run, exit_reason) == FK_KVM_RUN_EXIT_REASON_OFFSET,
               "kvm_run.exit_reason moved");
_Static_assert(offsetof(struct kvm_run, padding) == FK_KVM_RUN_UNION_OFFSET,
               "the kvm_run exit union moved");
_Static_assert(offsetof(struct kvm_run, io) == FK_KVM_RUN_UNION_OFFSET,
               "the kvm_run exit union moved");
_Static_assert(sizeof(struct fk_heki_exit) == FK_HEKI_PAYLOAD_SIZE,
               "the Heki payload is 64 bytes");
_Static_assert(offsetof(struct fk_heki_exit, cr_value) == 8, "value word at 8");
_Static_assert(offsetof(struct fk_heki_exit, reserved) == 8, "reserved at 8");
_Static_assert(sizeof(((struct kvm_run *)0)->padding) >= sizeof(struct fk_heki_exit),
               "the Heki payload does not fit the kvm_run union");
_Static_assert(KVM_EINVAL == FK_KVM_EINVAL, "KVM_EINVAL");
_Static_assert(KVM_ENOSYS == FK_KVM_ENOSYS, "KVM_ENOSYS");
_Static_assert(EINVAL == FK_EINVAL, "EINVAL");
_Static_assert(ENXIO == FK_ENXIO, "ENXIO");

/* The upstream capabilities numbered 235..237 (include/uapi/linux/kvm.h). */
#define UPSTREAM_CAP_VM_TYPES 235
#define UPSTREAM_CAP_PRE_FAULT_MEMORY 236
#define UPSTREAM_CAP_X86_APIC_BUS_CYCLES_NS 237
#define UPSTREAM_CAP_FIRST UPSTREAM_CAP_VM_TYPES
#define UPSTREAM_CAP_COUNT 3

static bool is_upstream_number(uint32_t cap) {
    return cap >= UPSTREAM_CAP_FIRST && cap < UPSTREAM_CAP_FIRST + UPSTREAM_CAP_COUNT;
}

struct FkVm {
    FkProfile profile;
    uint64_t host_cr0, host_cr4;
    FkKernelKind kernel;
    atomic_bool heki_built;                    /* CONFIG_HEKI */
    uint64_t apic_bus_cycle_ns;                /* kvm->arch.apic_bus_cycle_ns */
    /* KVM_ENABLE_CAP calls: 235..237, the profile's two caps, all. */
    atomic_uint_fast64_t enable_calls_upstream[UPSTREAM_CAP_COUNT];
    atomic_uint_fast64_t enable_calls_configure, enable_calls_denial, enable_calls;
    atomic_uint_fast64_t pinned_cr0;           /* kvm->heki_pinned_cr0 */
    atomic_uint_fast64_t pinned_cr4;           /* kvm->heki_pinned_cr4 */
    atomic_uint_fast64_t configure_exit_mask;  /* heki_configure_exit_reason */
    atomic_uint_fast64_t denial_exit_mask;     /* heki_denial_exit_reason */
    atomic_uint_fast64_t configure_exits, denial_exits, denials;
    FkVcpu *vcpus[FK_MAX_VCPUS];               /* set before vCPUs run */
    uint32_t nvcpus;
};

struct FkVcpu {
    FkVm *vm;
    uint32_t index;
    struct kvm_run *run;
    uint64_t cr0, cr4, rax, rip;
    FkPending pending;         /* vcpu->arch.complete_userspace_io */
    atomic_uint_fast64_t gp_count, hypercalls;
};

FkProfile fk_profile(FkProfileId id) {
    FkProfile p;
    if (id == FK_PROFILE_V3) {
        p.exit_configure = 40;
        p.exit_denial = 41;
        p.cap_configure = 236;
        p.cap_denial = 237;
        p.pinnable_cr4 = FK_PINNABLE_CR4_V3;
    } else {
        p.exit_configure = 39;
        p.exit_denial = 40;
        p.cap_configure = 235;
        p.cap_denial = 236;
        p.pinnable_cr4 = FK_PINNABLE_CR4_V2;
    }
    return p;
}

FkVm *fk_vm_new(const FkProfile *profile, uint64_t host_cr0, uint64_t host_cr4) {
    FkVm *vm = calloc(1, sizeof *vm);
    if (!vm)
        return NULL;
    vm->profile = profile ? *profile : fk_profile(FK_PROFILE_V2);
    vm->host_cr0 = host_cr0;
    vm->host_cr4 = host_cr4;
    vm->kernel = FK_KERNEL_HEKI;
    atomic_init(&vm->heki_built, true);
    vm->apic_bus_cycle_ns = 1; /* APIC_BUS_CYCLE_NS_DEFAULT */
    for (int i = 0; i < UPSTREAM_CAP_COUNT; i++)
        atomic_init(&vm->enable_calls_upstream[i], 0);
    atomic_init(&vm->enable_calls_configure, 0);
    atomic_init(&vm->enable_calls_denial, 0);
    atomic_init(&vm->enable_calls, 0);
    atomic_init(&vm->pinned_cr0, 0);
    atomic_init(&vm->pinned_cr4, 0);
    atomic_init(&vm->configure_exit_mask, 0);
    atomic_init(&vm->denial_exit_mask, 0);
    atomic_init(&vm->configure_exits, 0);
    atomic_init(&vm->denial_exits, 0);
    atomic_init(&vm->denials, 0);
    return vm;
}

void fk_vm_free(FkVm *vm) { free(vm); }

FkProfile fk_vm_profile(const FkVm *vm) { return vm->profile; }

uint64_t fk_vm_host_cr(const FkVm *vm, int cr) {
    return cr == 0 ? vm->host_cr0 : cr == 4 ? vm->host_cr4 : 0;
}

void fk_vm_set_heki_built(FkVm *vm, bool built) { atomic_store(&vm->heki_built, built); }
bool fk_vm_heki_built(const FkVm *vm) { return atomic_load(&vm->heki_built); }

void fk_vm_set_kernel(FkVm *vm, FkKernelKind kind) {
    vm->kernel = kind == FK_KERNEL_HEKI || kind == FK_KERNEL_STOCK_IRQCHIP ? kind : FK_KERNEL_STOCK;
}
FkKernelKind fk_vm_kernel(const FkVm *vm) { return vm->kernel; }

/* The Heki patch itself: its caps, hypercall and checks. */
static bool has_heki(const FkVm *vm) { return vm->kernel == FK_KERNEL_HEKI; }
static bool heki_active(const FkVm *vm) { return has_heki(vm) && atomic_load(&vm->heki_built); }

static bool is_heki_cap(const FkVm *vm, uint32_t cap) {
    return has_heki(vm) && (cap == vm->profile.cap_configure || cap == vm->profile.cap_denial);
}

/* An upstream cap of 235..237 that this kernel has: all of them on a stock
   kernel; on a Heki kernel those numbered below its first Heki cap (the
   patch took the next free numbers, so the ones above came later). */
static bool has_upstream_cap(const FkVm *vm, uint32_t cap) {
    if (!is_upstream_number(cap))
        return false;
    if (!has_heki(vm))
        return true;
    uint32_t first = vm->profile.cap_configure < vm->profile.cap_denial ? vm->profile.cap_configure
                                                                      : vm->profile.cap_denial;
    return cap < first;
}

/* kvm_vm_ioctl_check_extension: the Heki case is outside #ifdef CONFIG_HEKI. */
int fk_check_extension(const FkVm *vm, uint32_t cap) {
    if (is_heki_cap(vm, cap))
        return (int)FK_HEKI_EXIT_REASON_VALID_MASK;
    if (!has_upstream_cap(vm, cap))
        return 0;
    switch (cap) {
    case UPSTREAM_CAP_VM_TYPES:
        return 1; /* kvm_caps.supported_vm_types: BIT(KVM_X86_DEFAULT_VM) */
    case UPSTREAM_CAP_PRE_FAULT_MEMORY:
        return 0; /* tdp_enabled: what this machine's kernel answers */
    default:
        return 1; /* KVM_CAP_X86_APIC_BUS_CYCLES_NS: APIC_BUS_CYCLE_NS_DEFAULT */
    }
}

/* Upstream KVM_CAP_X86_APIC_BUS_CYCLES_NS (kvm_vm_ioctl_enable_cap). */
static int enable_apic_bus_cycles(FkVm *vm, uint64_t bus_cycle_ns) {
    uint64_t unit;
    /* The guard against overflow in tmict_to_ns(): 128 is the largest
       divide value of APIC_TDCR. */
    if (!bus_cycle_ns || __builtin_mul_overflow((uint64_t)UINT32_MAX * 128, bus_cycle_ns, &unit))
        return -EINVAL;
    if (vm->kernel != FK_KERNEL_STOCK_IRQCHIP)
        return -ENXIO; /* !irqchip_in_kernel(kvm) */
    if (vm->nvcpus)
        return -EINVAL; /* kvm->created_vcpus: too late to change the frequency */
    vm->apic_bus_cycle_ns = bus_cycle_ns;
    return 0;
}

static void count_enable_cap(FkVm *vm, uint32_t cap) {
    atomic_fetch_add(&vm->enable_calls, 1);
    if (is_upstream_number(cap))
        atomic_fetch_add(&vm->enable_calls_upstream[cap - UPSTREAM_CAP_FIRST], 1);
    if (cap == vm->profile.cap_configure)
        atomic_fetch_add(&vm->enable_calls_configure, 1);
    else if (cap == vm->profile.cap_denial)
        atomic_fetch_add(&vm->enable_calls_denial, 1);
}

/* kvm_vm_ioctl_enable_cap. */
int fk_enable_cap(FkVm *vm, uint32_t cap, uint64_t arg0) {
    count_enable_cap(vm, cap);
    if (is_heki_cap(vm, cap)) {
        if (!atomic_load(&vm->heki_built))
            return -EINVAL; /* default: r = -EINVAL */
        if (arg0 & ~FK_HEKI_EXIT_REASON_VALID_MASK)
            return -EINVAL;
        atomic_store(cap == vm->profile.cap_configure ? &vm->configure_exit_mask : &vm->denial_exit_mask,
                     arg0);
        return 0;
    }
    if (has_upstream_cap(vm, cap) && cap == UPSTREAM_CAP_X86_APIC_BUS_CYCLES_NS)
        return enable_apic_bus_cycles(vm, arg0);
    return -EINVAL; /* VM_TYPES and PRE_FAULT_MEMORY are not enabled; unknown caps */
}

uint64_t fk_vm_enable_cap_calls(const FkVm *vm, uint32_t cap) {
    if (is_upstream_number(cap))
        return atomic_load(&vm->enable_calls_upstream[cap - UPSTREAM_CAP_FIRST]);
    if (cap == vm->profile.cap_configure)
        return atomic_load(&vm->enable_calls_configure);
    if (cap == vm->profile.cap_denial)
        return atomic_load(&vm->enable_calls_denial);
    return 0;
}

uint64_t fk_vm_enable_cap_calls_total(const FkVm *vm) { return atomic_load(&vm->enable_calls); }
uint64_t fk_vm_apic_bus_cycle_ns(const FkVm *vm) { return vm->apic_bus_cycle_ns; }

int fk_host_check_extension(void *opaque, uint32_t cap) {
    return fk_check_extension(*(FkVm **)opaque, cap);
}

int fk_host_enable_cap(void *opaque, uint32_t cap, uint64_t mask) {
    return fk_enable_cap(*(FkVm **)opaque, cap, mask);
}

uint64_t fk_vm_configure_mask(const FkVm *vm) { return atomic_load(&vm->configure_exit_mask); }
uint64_t fk_vm_denial_mask(const FkVm *vm) { return atomic_load(&vm->denial_exit_mask); }

uint64_t fk_vm_pinned(const FkVm *vm, int cr) {
    if (cr == 0)
        return atomic_load(&vm->pinned_cr0);
    if (cr == 4)
        return atomic_load(&vm->pinned_cr4);
    return 0;
}

void fk_vm_reset(FkVm *vm) {
    /* The pins are deliberately left alone: the patch never clears
       heki_pinned_cr0/cr4, so they survive a reset (the RFC's open problem). */
    for (uint32_t i = 0; i < vm->nvcpus; i++)
        if (vm->vcpus[i])
            fk_vcpu_reset(vm->vcpus[i]);
}

uint64_t fk_vm_configure_exits(const FkVm *vm) { return atomic_load(&vm->configure_exits); }
uint64_t fk_vm_denial_exits(const FkVm *vm) { return atomic_load(&vm->denial_exits); }
uint64_t fk_vm_denials(const FkVm *vm) { return atomic_load(&vm->denials); }

FkVcpu *fk_vcpu_new(FkVm *vm, struct kvm_run *run) {
    if (vm->nvcpus >= FK_MAX_VCPUS)
        return NULL;
    FkVcpu *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    v->vm = vm;
    v->index = vm->nvcpus;
    v->run = run;
    v->cr0 = vm->host_cr0;
    v->cr4 = vm->host_cr4;
    v->pending = FK_PENDING_NONE;
    atomic_init(&v->gp_count, 0);
    atomic_init(&v->hypercalls, 0);
    vm->vcpus[vm->nvcpus++] = v;
    return v;
}

void fk_vcpu_free(FkVcpu *v) {
    if (!v)
        return;
    if (v->index < FK_MAX_VCPUS && v->vm->vcpus[v->index] == v)
        v->vm->vcpus[v->index] = NULL;
    free(v);
}

struct kvm_run *fk_vcpu_run(const FkVcpu *v) { return v->run; }
uint32_t fk_vcpu_index(const FkVcpu *v) { return v->index; }
uint64_t fk_vcpu_cr(const FkVcpu *v, int cr) { return cr == 0 ? v->cr0 : cr == 4 ? v->cr4 : 0; }
void fk_vcpu_set_cr_raw(FkVcpu *v, int cr, uint64_t value) {
    if (cr == 0)
        v->cr0 = value;
    else if (cr == 4)
        v->cr4 = value;
}
uint64_t fk_vcpu_rax(const FkVcpu *v) { return v->rax; }
uint64_t fk_vcpu_rip(const FkVcpu *v) { return v->rip; }
FkPending fk_vcpu_pending(const FkVcpu *v) { return v->pending; }
uint64_t fk_vcpu_gp_count(const FkVcpu *v) { return atomic_load(&v->gp_count); }
uint64_t fk_vcpu_hypercalls(const FkVcpu *v) { return atomic_load(&v->hypercalls); }

static struct fk_heki_exit *payload_of(struct kvm_run *run) {
    return (struct fk_heki_exit *)(void *)run->padding;
}

/* heki_exit_cr: true if user space asked for this exit. */
static bool heki_exit_cr(FkVcpu *v, bool configure, uint64_t heki_reason, uint64_t value) {
    FkVm *vm = v->vm;
    struct fk_heki_exit *p = payload_of(v->run);
    if (configure) {
        if (!(atomic_load(&vm->configure_exit_mask) & heki_reason))
            return false;
        p->reason = heki_reason;
        memset(p->reserved, 0, sizeof p->reserved);
        p->cr_value = value; /* cr_pinned */
        v->pending = FK_PENDING_CONFIGURE;
        v->run->exit_reason = vm->profile.exit_configure;
        atomic_fetch_add(&vm->configure_exits, 1);
    } else {
        if (!(atomic_load(&vm->denial_exit_mask) & heki_reason))
            return false;
        p->reason = heki_reason;
        memset(p->reserved, 0, sizeof p->reserved);
        p->cr_value = value;
        v->pending = FK_PENDING_DENIAL;
        v->run->exit_reason = vm->profile.exit_denial;
        atomic_fetch_add(&vm->denial_exits, 1);
    }
    return true;
}

/* heki_lock_cr: the return value goes to rax unless *exit. */
static long heki_lock_cr(FkVcpu *v, uint64_t cr, uint64_t pin, uint64_t flags, bool *exit) {
    FkVm *vm = v->vm;
    *exit = false;
    if (flags) {
        if (flags == FK_KVM_LOCK_CR_UPDATE_VERSION && !cr && !pin)
            return FK_HEKI_ABI_VERSION;
        return -KVM_EINVAL;
    }
    if (!pin)
        return -KVM_EINVAL;
    switch (cr) {
    case 0:
        /* Cf. arch/x86/kernel/cpu/common.c: WP is the one CR0 bit pinned. */
        if (!(pin & FK_CR0_WP))
            return -KVM_EINVAL;
        /* Only bits the host has (read_cr0()). */
        if ((vm->host_cr0 & pin) != pin)
            return -KVM_EINVAL;
        atomic_fetch_or(&vm->pinned_cr0, pin);
        *exit = heki_exit_cr(v, true, FK_HEKI_EXIT_REASON_CR0, pin);
        return 0;
    case 4:
        /* Checks for irrelevant bits. */
        if (~vm->profile.pinnable_cr4 & pin)
            return -KVM_EINVAL;
        /* Ignores bits not present in host. */
        pin &= vm->host_cr4;
        atomic_fetch_or(&vm->pinned_cr4, pin);
        *exit = heki_exit_cr(v, true, FK_HEKI_EXIT_REASON_CR4, pin);
        return 0;
    }
    return -KVM_EINVAL;
}

/* kvm_emulate_hypercall, reduced to what Heki touches. */
FkResult fk_vcpu_hypercall(FkVcpu *v, uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2) {
    if (v->pending != FK_PENDING_NONE)
        return FK_BUSY;
    long ret;
    if (nr == FK_KVM_HC_LOCK_CR_UPDATE && heki_active(v->vm)) {
        if (a0 > UINT32_MAX) {
            ret = -KVM_EINVAL;
        } else {
            bool exit = false;
            ret = heki_lock_cr(v, a0, a1, a2, &exit);
            if (exit)
                return FK_EXIT; /* completed by complete_heki_configure_exit */
        }
    } else {
        ret = -KVM_ENOSYS;
    }
    v->rax = (uint64_t)ret;
    atomic_fetch_add(&v->hypercalls, 1);
    v->rip += FK_VMCALL_LENGTH; /* kvm_skip_emulated_instruction */
    return FK_OK;
}

FkResult fk_vcpu_lock_cr(FkVcpu *v, uint64_t cr, uint64_t pin, uint64_t flags) {
    return fk_vcpu_hypercall(v, FK_KVM_HC_LOCK_CR_UPDATE, cr, pin, flags);
}

/* handle_cr -> heki_check_cr, then the write itself. */
FkResult fk_vcpu_write_cr(FkVcpu *v, int cr, uint64_t value) {
    if (v->pending != FK_PENDING_NONE)
        return FK_BUSY;
    if (cr != 0 && cr != 4)
        return FK_BAD;
    FkVm *vm = v->vm;
    if (heki_active(vm)) {
        uint64_t pinned = atomic_load(cr == 0 ? &vm->pinned_cr0 : &vm->pinned_cr4);
        if ((value & pinned) != pinned) {
            /* pr_warn_ratelimited("heki: Blocked CR%d update") */
            atomic_fetch_add(&vm->denials, 1);
            if (heki_exit_cr(v, false, cr == 0 ? FK_HEKI_EXIT_REASON_CR0 : FK_HEKI_EXIT_REASON_CR4,
                             value))
                return FK_EXIT;
            atomic_fetch_add(&v->gp_count, 1); /* complete_heki_denial_exit */
            return FK_GP;
        }
    }
    if (cr == 0)
        v->cr0 = value;
    else
        v->cr4 = value;
    v->rip += FK_MOV_CR_LENGTH;
    return FK_OK;
}

FkPending fk_vcpu_complete(FkVcpu *v) {
    FkPending p = v->pending;
    v->pending = FK_PENDING_NONE;
    switch (p) {
    case FK_PENDING_CONFIGURE: /* complete_heki_configure_exit */
        v->rax = 0;
        atomic_fetch_add(&v->hypercalls, 1);
        v->rip += FK_VMCALL_LENGTH;
        break;
    case FK_PENDING_DENIAL: /* complete_heki_denial_exit: kvm_inject_gp */
        atomic_fetch_add(&v->gp_count, 1);
        break;
    case FK_PENDING_NONE:
        break;
    }
    return p;
}

void fk_vcpu_reset(FkVcpu *v) {
    v->cr0 = FK_RESET_CR0;
    v->cr4 = FK_RESET_CR4;
    v->rax = 0;
    v->rip = 0;
    /* v->pending stays: KVM's complete_userspace_io survives KVM_SET_REGS
       and KVM_SET_SREGS and runs at the next KVM_RUN, on the reset state. */
}

uint32_t fk_run_exit_reason(const struct kvm_run *run) {
    uint32_t r;
    memcpy(&r, (const char *)run + FK_KVM_RUN_EXIT_REASON_OFFSET, sizeof r);
    return r;
}

uint64_t fk_run_payload_word(const struct kvm_run *run, unsigned index) {
    uint64_t w = 0;
    if (index < FK_HEKI_PAYLOAD_WORDS)
        memcpy(&w, (const char *)run + FK_KVM_RUN_UNION_OFFSET + 8 * index, sizeof w);
    return w;
}

void fk_run_set_exit_reason(struct kvm_run *run, uint32_t exit_reason) {
    memcpy((char *)run + FK_KVM_RUN_EXIT_REASON_OFFSET, &exit_reason, sizeof exit_reason);
}

void fk_run_write_raw(struct kvm_run *run, uint32_t exit_reason,
                      const uint64_t words[FK_HEKI_PAYLOAD_WORDS]) {
    fk_run_set_exit_reason(run, exit_reason);
    if (words)
        memcpy((char *)run + FK_KVM_RUN_UNION_OFFSET, words, FK_HEKI_PAYLOAD_SIZE);
    else
        memset((char *)run + FK_KVM_RUN_UNION_OFFSET, 0, FK_HEKI_PAYLOAD_SIZE);
}

void fk_run_write_exit(struct kvm_run *run, uint32_t exit_reason, uint64_t reason, uint64_t value) {
    const uint64_t words[FK_HEKI_PAYLOAD_WORDS] = {reason, value};
    fk_run_write_raw(run, exit_reason, words);
}

/* heki_x86.h writes these as numbers: they are the ORs its comments name. */
_Static_assert(FK_DEFAULT_HOST_CR0 == (FK_CR0_PE | FK_CR0_MP | FK_CR0_ET | FK_CR0_NE | FK_CR0_WP |
                                       FK_CR0_AM | FK_CR0_PG),
               "a typical host CR0");
_Static_assert(FK_DEFAULT_HOST_CR4 == (FK_CR4_PAE | FK_CR4_PGE | FK_CR4_OSFXSR | FK_CR4_OSXMMEXCPT |
                                       FK_CR4_UMIP | FK_CR4_FSGSBASE | FK_CR4_PCIDE | FK_CR4_OSXSAVE |
                                       FK_CR4_SMEP | FK_CR4_SMAP | FK_CR4_PKE),
               "a typical host CR4");
_Static_assert(FK_RESET_CR0 == (FK_CR0_ET | FK_CR0_NW | FK_CR0_CD) && FK_RESET_CR4 == 0,
               "CR0/CR4 after RESET");
