// ---------------------------------------------------------------- data
        .section .rodata
        .balign 4
exc_stubs:
        .long exc_0, exc_1, exc_2, exc_3, exc_4, exc_5, exc_6, exc_7
        .long exc_8, exc_9, exc_10, exc_11, exc_12, gp_handler, exc_14, exc_15
        .long exc_16, exc_17, exc_18, exc_19, exc_20, exc_21, exc_22, exc_23
        .long exc_24, exc_25, exc_26, exc_27, exc_28, exc_29, exc_30, exc_31

scenario_names:                                 // index = SC_*
        .long sn_pin_deny, sn_pin_only, sn_weak, sn_bad_pins, sn_unpinned, sn_storm, sn_bench, sn_no_pin
        .long sn_pin_wait, sn_os_boot, sn_os_reboot, sn_io_bench, 0
prepare_table:
        .long prepare_pins, prepare_pins, prepare_weak, prepare_bad_pins, prepare_none, prepare_pins, prepare_pins
        .long prepare_none, prepare_pins
        .long prepare_os_boot, prepare_os_boot
        .long prepare_none
work_table:
        .long deny_writes, work_none, work_none, work_none, work_unpinned, deny_writes, work_bench
        .long work_idle, work_pin_wait
        .long os_work, os_work
        .long work_io_bench
report_table:
        .long report_deny, report_no_gp, report_no_gp, report_no_gp, report_unpinned, report_deny, report_bench
        .long report_no_gp, report_pin_wait
        .long report_deny, report_os_reboot
        .long report_bench

// bad-pins cases: name, rax, rbx, rcx, rdx, expected rax
bad_pin_cases:
        .long bp_zero,    FK_KVM_HC_LOCK_CR_UPDATE, 0, 0,        0, FK_KVM_EINVAL_NEG32
        .long bp_reg3,    FK_KVM_HC_LOCK_CR_UPDATE, 3, FK_CR0_WP,   0, FK_KVM_EINVAL_NEG32
        .long bp_cr0_ne,  FK_KVM_HC_LOCK_CR_UPDATE, 0, FK_CR0_NE,   0, FK_KVM_EINVAL_NEG32
        .long bp_flags,   FK_KVM_HC_LOCK_CR_UPDATE, 0, FK_CR0_WP,   2, FK_KVM_EINVAL_NEG32
        .long bp_cr4_pge, FK_KVM_HC_LOCK_CR_UPDATE, 4, FK_CR4_PGE,  0, FK_KVM_EINVAL_NEG32
        .long bp_hc99,    99,                    0, 0,        0, FK_KVM_ENOSYS_NEG32
        .long 0

        .section .rodata.str, "a"
sn_pin_deny:    .asciz "pin-deny"
sn_pin_only:    .asciz "pin-only"
sn_weak:        .asciz "weak"
sn_bad_pins:    .asciz "bad-pins"
sn_unpinned:    .asciz "unpinned-writes"
sn_storm:       .asciz "storm"
sn_bench:       .asciz "bench"
sn_no_pin:      .asciz "no-pin"
sn_pin_wait:    .asciz "pin-wait"
sn_os_boot:     .asciz "os-boot"
sn_os_reboot:   .asciz "os-reboot"
sn_io_bench:    .asciz "io-bench"
key_scenario:   .asciz "scenario="
key_cpus:       .asciz "cpus="
key_writes:     .asciz "writes="
key_iters:      .asciz "iters="
key_idle_ms:    .asciz "idle-ms="
bp_zero:        .asciz "pin-zero"
bp_reg3:        .asciz "register-3"
bp_cr0_ne:      .asciz "cr0-without-wp"
bp_flags:       .asciz "unknown-flags"
bp_cr4_pge:     .asciz "cr4-unpinnable-pge"
bp_hc99:        .asciz "unknown-hypercall-99"
name_io:        .asciz "io"
name_emu:       .asciz "emu"
name_denial:    .asciz "denial"
tsc_src_kvmclock: .asciz "kvmclock"
tsc_src_cpuid15:  .asciz "cpuid-15"
tsc_src_assumed:  .asciz "assumed-2ghz"
hex_digits:     .ascii "0123456789abcdef"

        .data
        .balign 8
gdt:    // accessed bits preset: the CPU never writes the table
        .quad 0
        .quad 0x00cf9b000000ffff                // 0x08: flat 32-bit code
        .quad 0x00cf93000000ffff                // 0x10: flat data
gdt_end:
        .balign 4
        .word 0
gdtr:   .word gdt_end - gdt - 1
        .long gdt
        .word 0
idtr:   .word 32 * 8 - 1
        .long idt

        .bss
        .balign 4096
stacks: .skip MAX_CPUS * STACK_SIZE             // cpu i: [stacks + i*4K, stacks + (i+1)*4K)
        .balign 64
percpu: .skip MAX_CPUS << PC_SHIFT
        .balign 8
idt:    .skip 32 * 8
        .balign 64
pvclock: .skip 32                               // kvmclock's pvclock_vcpu_time_info
        .balign 4
bench_samples: .skip BENCH_BATCHES * 4
deadline: .skip 8
mb_magic: .long 0
mb_info: .long 0
token:  .long 0
scenario: .long 0
cpus:   .long 0
writes: .long 0
iters:  .long 0
idle_ms: .long 0
want_cr4: .long 0                               // SMEP|SMAP the CPU has
cr4_toggle: .long 0                             // PGE if the CPU has it
tsc_khz: .long 0
tsc_source: .long 0
pins_cr0: .long 0                               // pins the emulator accepted (rax 0)
pins_cr4: .long 0
deny_cr4_bit: .long 0
quiet:  .long 0
bench_batches: .long 0
bench_per: .long 0
bench_total: .long 0
fail_count: .long 0
fail_reason: .long 0
        .balign 64
serial_lock: .long 0
        .balign 64
next_cpu: .long 0                               // lock xadd: the next CPU index
ap_ready: .long 0
go:     .long 0
cpus_done: .long 0
