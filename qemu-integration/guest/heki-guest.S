# heki-guest: a tiny multiboot v1 guest for end-to-end Heki runs under KVM.
#
# 32-bit protected mode, flat segments, no paging, interrupts off throughout.
# It asks the Heki kernel emulator (LD_PRELOADed into QEMU, see
# ../PROTOCOL.md) for pins and checked CR writes with `outb %al,$0xe5`,
# writes its story to COM1 as `heki-guest: key=value ...` lines and ends by
# writing to isa-debug-exit (0xf4): 0x10 pass, 0x11 fail, 0x12 no Heki.
#
# Plain GNU as (no cpp): constants are .set, comments start with '#'.
# Sections of this file, in order:
#   constants and macros
#   multiboot header, entry (_start), BSP main flow
#   command line
#   CPU features, TSC frequency, native CR setup
#   Heki probe and pins
#   SMP: trampoline, AP entry, start and waits
#   per-vCPU work: denied writes, allowed write, unpinned writes
#   scenarios: bad-pins, bench
#   reports and the exit
#   exceptions: IDT, #GP handler, unexpected vectors
#   serial output
#   data

# ---------------------------------------------------------------- constants
        .set COM1,              0x3f8
        .set EXIT_PORT,         0xf4            # isa-debug-exit
        .set EXIT_PASS,         0x10            # QEMU status 33
        .set EXIT_FAIL,         0x11            # QEMU status 35
        .set EXIT_NO_HEKI,      0x12            # QEMU status 37
        .set IO_PORT_BENCH,     0x80            # unassigned in microvm: a plain round trip

        .set KVM_HC_LOCK_CR_UPDATE, 13
        .set KVM_LOCK_CR_UPDATE_VERSION, 1
        .set OP_MOV_CR0,        0x100
        .set OP_MOV_CR4,        0x104
        .set EINVAL_NEG,        0xffffffea      # -22
        .set ENOSYS_NEG,        0xfffffc18      # -1000

        .set CR0_NE,            1 << 5
        .set CR0_WP,            1 << 16
        .set CR0_NW,            1 << 29
        .set CR0_CD,            1 << 30
        .set CR4_PGE,           1 << 7
        .set CR4_SMEP,          1 << 20
        .set CR4_SMAP,          1 << 21

        .set LAPIC,             0xfee00000
        .set LAPIC_ID,          LAPIC + 0x20
        .set LAPIC_SVR,         LAPIC + 0xf0
        .set LAPIC_ICR_LO,      LAPIC + 0x300
        .set LAPIC_ICR_HI,      LAPIC + 0x310
        .set ICR_ALL_BUT_SELF,  3 << 18
        .set ICR_INIT,          ICR_ALL_BUT_SELF | (1 << 14) | (5 << 8)
        .set ICR_SIPI,          ICR_ALL_BUT_SELF | (1 << 14) | (6 << 8)
        .set ICR_BUSY,          1 << 12
        .set MSR_APIC_BASE,     0x1b
        .set MSR_KVM_SYSTEM_TIME_NEW, 0x4b564d01

        .set TRAMP_BASE,        0x8000          # below 1 MiB, 4 KiB aligned: SIPI vector 0x08
        .set MAX_CPUS,          32
        .set STACK_SHIFT,       12
        .set STACK_SIZE,        1 << STACK_SHIFT

        .set CODE_SEL,          0x08
        .set DATA_SEL,          0x10

        # scenario numbers (index into scenario_names)
        .set SC_PIN_DENY,       0
        .set SC_PIN_ONLY,       1
        .set SC_WEAK,           2
        .set SC_BAD_PINS,       3
        .set SC_UNPINNED,       4
        .set SC_STORM,          5
        .set SC_BENCH,          6
        .set SC_NO_PIN,         7

        # per-vCPU record, 64 bytes, written only by its own vCPU
        .set PC_GP,             0       # #GP(0) taken at the Heki port
        .set PC_DENIED,         4       # denied writes made
        .set PC_NOFAULT,        8       # denied writes that did not fault
        .set PC_LOST,           12      # times a pinned bit was found cleared
        .set PC_ALLOWED,        16      # allowed write: 0 not made, 1 applied, 2 not applied
        .set PC_PROGRESS,       20      # bumped per operation (watchdog)
        .set PC_APIC_ID,        24
        .set PC_UNPINNED,       28      # unpinned writes applied
        .set PC_UNPINNED_BAD,   32      # unpinned writes not applied or faulted
        .set PC_SHIFT,          6

        .set BENCH_BATCHES,     100

# ---------------------------------------------------------------- macros
# The Heki trigger: exactly `e6 e5`, the encoding the emulator and the #GP
# handler look for.
.macro HEKI_OUT
        outb    %al, $0xe5
.endm

# Heki hypercall: eax = result (0, 1, -22, or 13 unchanged without emulator).
.macro HEKI_HC reg, bits, flags
        movl    $KVM_HC_LOCK_CR_UPDATE, %eax
        movl    \reg, %ebx
        movl    \bits, %ecx
        movl    \flags, %edx
        HEKI_OUT
.endm

# Checked CR write through the port: op is OP_MOV_CR0/OP_MOV_CR4, value in ebx.
.macro HEKI_MOV_CR op
        movl    $\op, %eax
        HEKI_OUT
.endm

.macro PUTS str
        .pushsection .rodata.str, "a"
.Lputs\@: .asciz "\str"
        .popsection
        pushl   $.Lputs\@
        call    puts_stk
.endm

.macro PUTSP ptr                        # string at an address (register or memory)
        pushl   \ptr
        call    puts_stk
.endm

.macro PUTHEX val
        pushl   \val
        call    put_hex_stk
.endm

.macro PUTDEC val
        pushl   \val
        call    put_dec_stk
.endm

.macro LINE_BEGIN
        call    line_begin
.endm

.macro LINE_END
        call    line_end
.endm

.macro LINE str                         # a whole line of constant text
        LINE_BEGIN
        PUTS    "\str"
        LINE_END
.endm

# Records a failure (first reason wins); the run goes on so the report is whole.
.macro FAIL reason
        .pushsection .rodata.str, "a"
.Lfail\@: .asciz "\reason"
        .popsection
        pushl   $.Lfail\@
        call    record_fail
.endm

# Fails and ends the run at once (result line, exit 0x11).
.macro DIE reason
        FAIL    "\reason"
        jmp     finish
.endm

# ---------------------------------------------------------------- multiboot header
        .section .multiboot, "a"
        .balign 4
        .set MB_MAGIC, 0x1badb002
        .set MB_FLAGS, 0
        .long MB_MAGIC
        .long MB_FLAGS
        .long -(MB_MAGIC + MB_FLAGS)

# ---------------------------------------------------------------- entry, BSP main flow
        .text
        .code32
        .globl _start
_start:
        # multiboot: eax = magic, ebx = info, flat segments, IF = 0. No stack yet.
        cli
        cld
        movl    %eax, %ebp
        movl    $__bss_start, %edi              # a reset re-runs this: start from zero
        movl    $__bss_end, %ecx
        subl    %edi, %ecx
        xorl    %eax, %eax
        rep stosb
        lgdt    gdtr
        ljmp    $CODE_SEL, $1f
1:      movw    $DATA_SEL, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %fs
        movw    %ax, %gs
        movw    %ax, %ss
        movl    $stacks + STACK_SIZE, %esp      # cpu 0's stack
        movl    %ebp, mb_magic
        movl    %ebx, mb_info

        call    serial_init
        LINE    "boot"                          # first line of every boot
        call    idt_init
        lidt    idtr

        cmpl    $0x2badb002, mb_magic
        je      1f
        DIE     "not-multiboot"
1:      call    parse_cmdline
        call    report_config
        call    detect_features
        call    cpu_set_cr
        call    report_features
        call    heki_probe                      # exits 0x12 when there is no Heki
        call    smp_start                       # APs up, parked until `go`
        call    scenario_prepare                # pins, bad-pins cases
        movl    $1, go
        xorl    %edi, %edi
        call    cpu_work                        # the BSP works like any vCPU
        lock incl cpus_done
        call    smp_wait_done
        call    scenario_report
        jmp     finish

# ---------------------------------------------------------------- command line
# `-append` arrives as the multiboot command line, after the image path that
# QEMU's loader (like GRUB) puts first; that first word is skipped.
# Tokens: scenario=NAME cpus=N writes=K iters=N idle-ms=N; anything else
# fails the run.
parse_cmdline:
        movl    $SC_PIN_DENY, scenario
        movl    $1, cpus
        movl    $3, writes
        movl    $100000, iters
        movl    $1000, idle_ms
        movl    mb_info, %ebx
        testl   $1 << 2, (%ebx)                 # flags.cmdline
        jz      .Lpc_done
        movl    16(%ebx), %esi
        call    skip_spaces
        call    skip_token
.Lpc_next:
        call    skip_spaces
        cmpb    $0, (%esi)
        je      .Lpc_done
        movl    %esi, token
        movl    $key_scenario, %edi
        call    match_prefix
        je      .Lpc_scenario
        movl    $key_cpus, %edi
        call    match_prefix
        je      .Lpc_cpus
        movl    $key_writes, %edi
        call    match_prefix
        je      .Lpc_writes
        movl    $key_iters, %edi
        call    match_prefix
        je      .Lpc_iters
        movl    $key_idle_ms, %edi
        call    match_prefix
        je      .Lpc_idle_ms
        LINE_BEGIN
        PUTS    "error=unknown-token token="
        call    put_token
        LINE_END
        DIE     "bad-cmdline"
.Lpc_scenario:
        xorl    %edx, %edx
1:      movl    scenario_names(,%edx,4), %edi
        testl   %edi, %edi
        jz      .Lpc_bad_scenario
        pushl   %esi
        call    match_word
        popl    %esi
        je      2f
        incl    %edx
        jmp     1b
2:      movl    %edx, scenario
        call    skip_token
        jmp     .Lpc_next
.Lpc_bad_scenario:
        LINE_BEGIN
        PUTS    "error=unknown-scenario token="
        call    put_token
        LINE_END
        DIE     "bad-cmdline"
.Lpc_cpus:
        call    parse_dec
        jc      .Lpc_bad_number
        testl   %eax, %eax
        jz      .Lpc_bad_cpus
        cmpl    $MAX_CPUS, %eax
        ja      .Lpc_bad_cpus
        movl    %eax, cpus
        jmp     .Lpc_next
.Lpc_writes:
        call    parse_dec
        jc      .Lpc_bad_number
        movl    %eax, writes
        jmp     .Lpc_next
.Lpc_iters:
        call    parse_dec
        jc      .Lpc_bad_number
        testl   %eax, %eax
        jz      .Lpc_bad_number
        movl    %eax, iters
        jmp     .Lpc_next
.Lpc_idle_ms:
        call    parse_dec
        jc      .Lpc_bad_number
        movl    %eax, idle_ms
        jmp     .Lpc_next
.Lpc_bad_cpus:
        LINE_BEGIN
        PUTS    "error=cpus-out-of-range max="
        PUTDEC  $MAX_CPUS
        PUTS    " token="
        call    put_token
        LINE_END
        DIE     "bad-cmdline"
.Lpc_bad_number:
        LINE_BEGIN
        PUTS    "error=bad-number token="
        call    put_token
        LINE_END
        DIE     "bad-cmdline"
.Lpc_done:
        ret

# esi at a token; edi = prefix. Match: ZF=1, esi past the prefix; else esi kept.
match_prefix:
        pushl   %esi
        pushl   %eax
1:      movb    (%edi), %al
        testb   %al, %al
        jz      2f
        cmpb    (%esi), %al
        jne     3f
        incl    %esi
        incl    %edi
        jmp     1b
2:      popl    %eax
        leal    4(%esp), %esp                   # keep the advanced esi; lea keeps ZF=1
        ret
3:      popl    %eax
        popl    %esi
        ret                                     # ZF = 0 from the cmpb

# esi at a word ended by space/tab/nul; edi = nul-terminated name. ZF=1 if equal.
match_word:
        pushl   %eax
1:      movb    (%esi), %al
        cmpb    $0, (%edi)
        je      2f
        cmpb    (%edi), %al
        jne     3f
        incl    %esi
        incl    %edi
        jmp     1b
2:      call    is_end                          # name done: the word must end too
3:      popl    %eax
        ret

# ZF=1 if al ends a token (nul, space, tab).
is_end:
        testb   %al, %al
        je      1f
        cmpb    $' ', %al
        je      1f
        cmpb    $'\t', %al
1:      ret

skip_spaces:
1:      movb    (%esi), %al
        cmpb    $' ', %al
        je      2f
        cmpb    $'\t', %al
        jne     3f
2:      incl    %esi
        jmp     1b
3:      ret

skip_token:
1:      movb    (%esi), %al
        call    is_end
        je      2f
        incl    %esi
        jmp     1b
2:      ret

# Decimal at esi up to the token's end: eax = value, CF=1 if empty, not a
# number or above 2^32-1. esi is left after the token.
parse_dec:
        pushl   %ebx
        pushl   %ecx
        pushl   %edx
        xorl    %eax, %eax
        xorl    %ecx, %ecx                      # digits seen
1:      movzbl  (%esi), %ebx
        pushl   %eax
        movb    %bl, %al
        call    is_end
        popl    %eax
        je      3f
        subl    $'0', %ebx
        cmpl    $9, %ebx
        ja      4f
        movl    $10, %edx
        mull    %edx
        jc      4f
        addl    %ebx, %eax
        jc      4f
        incl    %ecx
        incl    %esi
        jmp     1b
3:      testl   %ecx, %ecx
        jz      4f
        clc
        jmp     5f
4:      call    skip_token
        stc
5:      popl    %edx
        popl    %ecx
        popl    %ebx
        ret

# Prints the token that starts at `token` (printable ASCII only, at most 64).
put_token:
        pusha
        movl    token, %esi
        movl    $64, %ecx
1:      movb    (%esi), %al
        call    is_end
        je      3f
        cmpb    $0x21, %al
        jb      2f
        cmpb    $0x7e, %al
        jbe     4f
2:      movb    $'?', %al
4:      call    serial_putc
        incl    %esi
        loop    1b
3:      popa
        ret

report_config:
        LINE_BEGIN
        PUTS    "config scenario="
        movl    scenario, %eax
        movl    scenario_names(,%eax,4), %eax
        PUTSP   %eax
        PUTS    " cpus="
        PUTDEC  cpus
        PUTS    " writes="
        PUTDEC  writes
        PUTS    " iters="
        PUTDEC  iters
        PUTS    " idle-ms="
        PUTDEC  idle_ms
        LINE_END
        ret

# ---------------------------------------------------------------- CPU features, TSC, native CRs
detect_features:
        pusha
        xorl    %eax, %eax
        cpuid
        movl    %eax, %esi                      # max basic leaf
        movl    $1, %eax
        cpuid
        testl   $1 << 13, %edx                  # PGE: the harmless bit the allowed write toggles
        jz      1f
        movl    $CR4_PGE, cr4_toggle
1:      cmpl    $7, %esi
        jb      3f
        movl    $7, %eax
        xorl    %ecx, %ecx
        cpuid
        testl   $1 << 7, %ebx
        jz      2f
        orl     $CR4_SMEP, want_cr4
2:      testl   $1 << 20, %ebx
        jz      3f
        orl     $CR4_SMAP, want_cr4
3:      call    detect_tsc_khz
        popa
        ret

# TSC frequency, for bounded waits and to read the bench: KVM's kvmclock
# scale if offered (what Linux's pvclock_tsc_khz does), else CPUID 0x15,
# else an assumed 2 GHz (waits then are only approximate).
detect_tsc_khz:
        movl    $0x40000000, %eax
        cpuid
        cmpl    $0x4b4d564b, %ebx               # "KVMKVMKVM\0\0\0"
        jne     .Ltsc_leaf15
        cmpl    $0x564b4d56, %ecx
        jne     .Ltsc_leaf15
        movl    $0x40000001, %eax
        cpuid
        testl   $1 << 3, %eax                   # KVM_FEATURE_CLOCKSOURCE2
        jz      .Ltsc_leaf15
        movl    $MSR_KVM_SYSTEM_TIME_NEW, %ecx
        movl    $pvclock, %eax
        orl     $1, %eax                        # enable
        xorl    %edx, %edx
        wrmsr
        xorl    %eax, %eax                      # off again: no writes into our memory later
        wrmsr
        movl    pvclock + 24, %ecx              # tsc_to_system_mul
        testl   %ecx, %ecx
        jz      .Ltsc_leaf15
        movl    $1000000, %edx                  # (10^6 << 32) / mul
        xorl    %eax, %eax
        cmpl    %ecx, %edx
        jae     .Ltsc_leaf15                    # quotient would not fit
        divl    %ecx
        movsbl  pvclock + 28, %ecx              # tsc_shift
        testl   %ecx, %ecx
        js      1f
        shrl    %cl, %eax
        jmp     2f
1:      negl    %ecx
        shll    %cl, %eax
2:      movl    %eax, tsc_khz
        movl    $tsc_src_kvmclock, tsc_source
        ret
.Ltsc_leaf15:
        xorl    %eax, %eax
        cpuid
        cmpl    $0x15, %eax
        jb      .Ltsc_assume
        movl    $0x15, %eax
        cpuid
        testl   %eax, %eax
        jz      .Ltsc_assume
        testl   %ecx, %ecx
        jz      .Ltsc_assume
        movl    %eax, %esi                      # khz = crystal_hz / 1000 * ebx / eax
        movl    %ecx, %eax
        xorl    %edx, %edx
        movl    $1000, %ecx
        divl    %ecx
        mull    %ebx
        divl    %esi
        movl    %eax, tsc_khz
        movl    $tsc_src_cpuid15, tsc_source
        ret
.Ltsc_assume:
        movl    $2000000, tsc_khz
        movl    $tsc_src_assumed, tsc_source
        ret

# Every vCPU sets CR0.WP and the supported CR4.SMEP/SMAP natively (a plain
# mov, which the real KVM applies) before anything is pinned, as Linux does.
# CD/NW are cleared: an AP comes out of INIT with caching disabled.
cpu_set_cr:
        pushl   %eax
        movl    %cr0, %eax
        andl    $~(CR0_CD | CR0_NW), %eax
        orl     $CR0_WP, %eax
        movl    %eax, %cr0
        movl    %cr4, %eax
        orl     want_cr4, %eax
        movl    %eax, %cr4
        popl    %eax
        ret

report_features:
        LINE_BEGIN
        PUTS    "cpu-features smep="
        movl    want_cr4, %eax
        andl    $CR4_SMEP, %eax
        call    put_yes_no
        PUTS    " smap="
        movl    want_cr4, %eax
        andl    $CR4_SMAP, %eax
        call    put_yes_no
        PUTS    " pge="
        movl    cr4_toggle, %eax
        call    put_yes_no
        PUTS    " cr0="
        movl    %cr0, %eax
        PUTHEX  %eax
        PUTS    " cr4="
        movl    %cr4, %eax
        PUTHEX  %eax
        PUTS    " tsc-khz="
        PUTDEC  tsc_khz
        PUTS    " tsc-source="
        PUTSP   tsc_source
        LINE_END
        ret

# ---------------------------------------------------------------- Heki probe and pins
# Version query: eax 1 = a Heki kernel (the emulator); 13 unchanged = nothing
# behind the port; -1000 = a kernel without Heki. The last two exit 0x12.
heki_probe:
        HEKI_HC $0, $0, $KVM_LOCK_CR_UPDATE_VERSION
        cmpl    $1, %eax
        je      .Lprobe_present
        cmpl    $KVM_HC_LOCK_CR_UPDATE, %eax
        je      .Lprobe_no_emulator
        cmpl    $ENOSYS_NEG, %eax
        je      .Lprobe_enosys
        pushl   %eax
        LINE_BEGIN
        PUTS    "heki=unexpected version-rax="
        call    put_hex_stk                     # the pushed eax
        LINE_END
        DIE     "bad-version-answer"
.Lprobe_present:
        LINE    "heki=present version=1"
        ret
.Lprobe_no_emulator:
        LINE    "heki=absent reason=port-unassigned"
        movb    $EXIT_NO_HEKI, %al
        jmp     exit_qemu
.Lprobe_enosys:
        LINE    "heki=absent reason=enosys"
        movb    $EXIT_NO_HEKI, %al
        jmp     exit_qemu

# Pins CR0.WP. Fails the run unless the answer is 0.
pin_cr0_wp:
        HEKI_HC $0, $CR0_WP, $0
        pushl   %eax
        LINE_BEGIN
        PUTS    "pin cr=0 bits="
        PUTHEX  $CR0_WP
        PUTS    " rax="
        PUTHEX  (%esp)
        LINE_END
        popl    %eax
        testl   %eax, %eax
        jz      1f
        FAIL    "pin-cr0-rejected"
        ret
1:      orl     $CR0_WP, pins_cr0
        ret

# Pins the supported subset of CR4.SMEP|SMAP (skipped when there is none).
pin_cr4:
        movl    want_cr4, %esi
        testl   %esi, %esi
        jnz     1f
        LINE    "pin cr=4 skipped=no-smep-or-smap"
        ret
1:      HEKI_HC $4, %esi, $0
        pushl   %eax
        LINE_BEGIN
        PUTS    "pin cr=4 bits="
        PUTHEX  %esi
        PUTS    " rax="
        PUTHEX  (%esp)
        LINE_END
        popl    %eax
        testl   %eax, %eax
        jz      2f
        FAIL    "pin-cr4-rejected"
        ret
2:      orl     %esi, pins_cr4
        ret

# What the BSP does before releasing the APs.
scenario_prepare:
        xorl    %eax, %eax                      # storm: no per-write lines
        cmpl    $SC_STORM, scenario
        sete    %al
        movl    %eax, quiet
        movl    scenario, %eax
        jmp     *prepare_table(,%eax,4)
prepare_pins:                                   # pin-deny, pin-only, storm, bench
        call    pin_cr0_wp
        call    pin_cr4
        jmp     choose_deny_bit
prepare_weak:
        call    pin_cr4
        jmp     choose_deny_bit
prepare_none:
        ret

# The CR4 bit a denied CR4 write clears: SMEP if pinned, else SMAP, else none
# (then every denied write goes to CR0).
choose_deny_bit:
        movl    pins_cr4, %eax
        testl   $CR4_SMEP, %eax
        jz      1f
        movl    $CR4_SMEP, deny_cr4_bit
        ret
1:      andl    $CR4_SMAP, %eax
        movl    %eax, deny_cr4_bit
        ret

# ---------------------------------------------------------------- SMP
# Real-mode trampoline, copied to TRAMP_BASE; the SIPI starts an AP at
# TRAMP_BASE:0 with cs = TRAMP_BASE >> 4. It loads the BSP's GDT and jumps
# into ap_entry32 in protected mode. Only label differences are used, so
# the code runs wherever it is copied.
        .section .rodata
        .code16
tramp_start:
        cli
        cld
        movw    %cs, %ax
        movw    %ax, %ds
        lgdtl   tramp_gdtr - tramp_start
        movl    %cr0, %eax
        orl     $1, %eax                        # PE
        movl    %eax, %cr0
        ljmpl   $CODE_SEL, $ap_entry32
        .balign 4
tramp_gdtr:
        .word   gdt_end - gdt - 1
        .long   gdt
tramp_end:
        .code32
        .text

# An AP in protected mode: a CPU index from lock xadd, its own stack, the
# shared IDT, the native CR bits; then it waits for `go`, works, reports done.
# An AP beyond cpus=N (or MAX_CPUS) parks at once: the BSP counts it as a
# mismatch with -smp.
ap_entry32:
        movw    $DATA_SEL, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %fs
        movw    %ax, %gs
        movw    %ax, %ss
        movl    $1, %eax
        lock xaddl %eax, next_cpu
        cmpl    $MAX_CPUS, %eax
        jae     ap_park
        cmpl    cpus, %eax
        jae     ap_park
        movl    %eax, %edi
        incl    %eax
        shll    $STACK_SHIFT, %eax
        leal    stacks(%eax), %esp
        lidt    idtr
        call    cpu_set_cr
        movl    %edi, %ebx
        shll    $PC_SHIFT, %ebx
        movl    LAPIC_ID, %eax
        shrl    $24, %eax
        movl    %eax, percpu + PC_APIC_ID(%ebx)
        lock incl ap_ready
1:      pause
        cmpl    $0, go
        je      1b
        call    cpu_work
        lock incl cpus_done
ap_park:
        cli
        hlt
        jmp     ap_park

# Starts the APs with a broadcast INIT-SIPI-SIPI (every AP that exists wakes,
# so a -smp larger than cpus=N is seen), waits for cpus-1 of them (bounded),
# then a grace period for extra ones.
smp_start:
        pusha
        movl    $1, next_cpu                    # index 0 is the BSP
        movl    LAPIC_ID, %eax
        shrl    $24, %eax
        movl    %eax, percpu + PC_APIC_ID
        movl    $tramp_start, %esi
        movl    $TRAMP_BASE, %edi
        movl    $tramp_end - tramp_start, %ecx
        rep movsb
        movl    $MSR_APIC_BASE, %ecx
        rdmsr
        movl    %eax, %ebx
        andl    $0xfffff000, %ebx
        cmpl    $LAPIC, %ebx
        je      1f
        LINE_BEGIN
        PUTS    "error=apic-base msr=0x1b value="
        PUTHEX  %eax
        LINE_END
        DIE     "apic-not-at-0xfee00000"
1:      testl   $1 << 11, %eax                  # globally enabled
        jnz     2f
        orl     $1 << 11, %eax
        wrmsr
2:      orl     $0x100 | 0xff, LAPIC_SVR        # software enable, spurious vector 0xff
        movl    $ICR_INIT, %eax
        call    lapic_icr
        movl    $10, %eax
        call    delay_ms
        movl    $ICR_SIPI | (TRAMP_BASE >> 12), %eax
        call    lapic_icr
        movl    $1, %eax
        call    delay_ms
        movl    $ICR_SIPI | (TRAMP_BASE >> 12), %eax
        call    lapic_icr

        movl    cpus, %esi
        decl    %esi                            # APs expected
        movl    $2000, %eax
        call    set_deadline
3:      cmpl    %esi, ap_ready
        jae     4f
        call    deadline_passed
        jc      .Lsmp_missing
        pause
        jmp     3b
4:      movl    $50, %eax                       # extra APs would arrive by now
        call    delay_ms
        movl    next_cpu, %eax
        decl    %eax                            # APs that ran the trampoline
        LINE_BEGIN
        PUTS    "smp cpus="
        PUTDEC  cpus
        PUTS    " aps-expected="
        PUTDEC  %esi
        PUTS    " aps-started="
        PUTDEC  %eax
        PUTS    " aps-ready="
        PUTDEC  ap_ready
        LINE_END
        cmpl    %esi, %eax
        je      5f
        LINE_BEGIN
        PUTS    "error=smp-mismatch cpus="
        PUTDEC  cpus
        PUTS    " cpus-present="
        incl    %eax
        PUTDEC  %eax
        PUTS    " hint=-smp-must-equal-cpus"
        LINE_END
        DIE     "smp-mismatch"
5:      popa
        ret
.Lsmp_missing:
        movl    next_cpu, %eax
        decl    %eax
        LINE_BEGIN
        PUTS    "error=ap-missing aps-expected="
        PUTDEC  %esi
        PUTS    " aps-started="
        PUTDEC  %eax
        PUTS    " aps-ready="
        PUTDEC  ap_ready
        PUTS    " waited-ms=2000"
        LINE_END
        DIE     "ap-missing"

# eax = ICR low word; waits (bounded) for the delivery to leave the LAPIC.
lapic_icr:
        pushl   %ecx
        movl    $0, LAPIC_ICR_HI
        movl    %eax, LAPIC_ICR_LO
        movl    $1000000, %ecx
1:      testl   $ICR_BUSY, LAPIC_ICR_LO
        jz      2f
        pause
        loop    1b
2:      popl    %ecx
        ret

# The BSP waits for every vCPU to finish its work. Bounded by progress: the
# run fails if no vCPU makes progress for 5 s (an AP stuck in a Heki exit).
smp_wait_done:
        pusha
        movl    $-1, %ebx                       # last progress sum seen
1:      movl    cpus_done, %eax
        cmpl    cpus, %eax
        jae     4f
        xorl    %eax, %eax
        xorl    %ecx, %ecx
2:      movl    %ecx, %edx
        shll    $PC_SHIFT, %edx
        addl    percpu + PC_PROGRESS(%edx), %eax
        incl    %ecx
        cmpl    cpus, %ecx
        jb      2b
        cmpl    %eax, %ebx
        je      3f
        movl    %eax, %ebx
        movl    $5000, %eax
        call    set_deadline
        jmp     1b
3:      call    deadline_passed
        jc      5f
        pause
        jmp     1b
4:      popa
        ret
5:      LINE_BEGIN
        PUTS    "error=cpu-stuck cpus-done="
        PUTDEC  cpus_done
        PUTS    " cpus="
        PUTDEC  cpus
        PUTS    " idle-ms=5000"
        LINE_END
        DIE     "cpu-stuck"

# Time, in TSC ticks (BSP only: one deadline).
set_deadline:                                   # eax = ms from now
        pushl   %edx
        mull    tsc_khz
        movl    %eax, deadline
        movl    %edx, deadline + 4
        rdtsc
        addl    %eax, deadline
        adcl    %edx, deadline + 4
        popl    %edx
        ret

deadline_passed:                                # CF=1 when now >= deadline
        pushl   %eax
        pushl   %edx
        rdtsc
        subl    deadline, %eax
        sbbl    deadline + 4, %edx
        cmc
        popl    %edx
        popl    %eax
        ret

delay_ms:                                       # eax = ms
        call    set_deadline
1:      pause
        call    deadline_passed
        jnc     1b
        ret

# ---------------------------------------------------------------- per-vCPU work
# edi = CPU index. ebp = its per-CPU record throughout.
cpu_work:
        pusha
        movl    %edi, %ebp
        shll    $PC_SHIFT, %ebp
        addl    $percpu, %ebp
        movl    scenario, %eax
        call    *work_table(,%eax,4)
        popa
        ret

work_none:
        ret

work_bench:
        testl   %edi, %edi                      # the BSP only
        jnz     1f
        call    bench
1:      ret

# no-pin: nothing is ever pinned; the BSP stays busy for idle-ms, in steps
# of up to 100 ms on the TSC (the VMM's pin deadline judges the VM
# meanwhile), then the run passes. A pause loop, not hlt: interrupts stay
# off, and hlt with IF=0 would never wake.
work_idle:
        testl   %edi, %edi                      # the BSP only
        jnz     3f
        LINE_BEGIN
        PUTS    "idle ms="
        PUTDEC  idle_ms
        LINE_END
        movl    idle_ms, %esi                   # ms left
1:      testl   %esi, %esi
        jz      2f
        movl    $100, %eax
        cmpl    %eax, %esi
        jae     4f
        movl    %esi, %eax
4:      subl    %eax, %esi
        call    delay_ms
        incl    PC_PROGRESS(%ebp)
        jmp     1b
2:      LINE_BEGIN
        PUTS    "idle-done ms="
        PUTDEC  idle_ms
        LINE_END
3:      ret

# `writes` denied writes, alternating CR0 (clear WP) and CR4 (clear the
# pinned SMEP or SMAP), then one allowed write. Each denied write must raise
# exactly one #GP and leave the pinned bits set (checked natively).
deny_writes:
        xorl    %esi, %esi                      # write number
.Ldw_loop:
        cmpl    writes, %esi
        jae     .Ldw_done
        testl   $1, %esi
        jz      1f
        cmpl    $0, deny_cr4_bit
        je      1f
        movl    %cr4, %ebx                      # odd writes: CR4 & ~deny bit
        movl    deny_cr4_bit, %eax
        notl    %eax
        andl    %eax, %ebx
        movl    $4, %ecx
        movl    PC_GP(%ebp), %edx
        HEKI_MOV_CR OP_MOV_CR4
        jmp     2f
1:      movl    %cr0, %ebx                      # even writes: CR0 & ~WP
        andl    $~CR0_WP, %ebx
        xorl    %ecx, %ecx
        movl    PC_GP(%ebp), %edx
        HEKI_MOV_CR OP_MOV_CR0
2:      incl    PC_DENIED(%ebp)
        incl    PC_PROGRESS(%ebp)
        movl    PC_GP(%ebp), %eax
        subl    %edx, %eax                      # #GPs this write raised: must be 1
        movl    %eax, %edx
        cmpl    $1, %edx
        je      3f
        incl    PC_NOFAULT(%ebp)
        FAIL    "denied-write-without-gp"
3:      cmpl    $0, quiet
        jne     4f
        LINE_BEGIN
        PUTS    "cpu="
        PUTDEC  %edi
        PUTS    " write="
        leal    1(%esi), %eax
        PUTDEC  %eax
        PUTS    " cr="
        PUTDEC  %ecx
        PUTS    " value="
        PUTHEX  %ebx
        PUTS    " gp="
        PUTDEC  %edx
        PUTS    " pinned-kept="
        call    pins_still_set
        call    put_yes_no
        LINE_END
4:      call    pins_still_set
        testl   %eax, %eax
        jnz     5f
        incl    PC_LOST(%ebp)
        FAIL    "pinned-bit-cleared"
        call    restore_pins                    # so the next check means something
5:      incl    %esi
        jmp     .Ldw_loop
.Ldw_done:
        # fall through
# One allowed write per vCPU: CR4 with PGE toggled (unpinned, harmless
# without paging; or CR4 unchanged without PGE). It must be applied with no
# #GP; the old value is then restored natively.
allowed_write:
        movl    %cr4, %esi
        movl    %esi, %ebx
        xorl    cr4_toggle, %ebx
        movl    PC_GP(%ebp), %edx
        HEKI_MOV_CR OP_MOV_CR4
        incl    PC_PROGRESS(%ebp)
        movl    %cr4, %eax
        movl    $1, PC_ALLOWED(%ebp)
        cmpl    %ebx, %eax
        jne     1f
        cmpl    PC_GP(%ebp), %edx
        je      2f
1:      movl    $2, PC_ALLOWED(%ebp)
        FAIL    "allowed-write-not-applied"
2:      movl    %esi, %cr4
        cmpl    $0, quiet
        jne     3f
        LINE_BEGIN
        PUTS    "cpu="
        PUTDEC  %edi
        PUTS    " allowed-write cr=4 value="
        PUTHEX  %ebx
        PUTS    " applied="
        xorl    %eax, %eax
        cmpl    $1, PC_ALLOWED(%ebp)
        sete    %al
        call    put_yes_no
        LINE_END
3:      ret

# eax = 1 if every pinned bit is set in the live CR0 and CR4, else 0.
pins_still_set:
        pushl   %edx
        movl    %cr0, %eax
        andl    pins_cr0, %eax
        cmpl    pins_cr0, %eax
        jne     1f
        movl    %cr4, %eax
        andl    pins_cr4, %eax
        cmpl    pins_cr4, %eax
        jne     1f
        movl    $1, %eax
        popl    %edx
        ret
1:      xorl    %eax, %eax
        popl    %edx
        ret

restore_pins:
        pushl   %eax
        movl    %cr0, %eax
        orl     pins_cr0, %eax
        movl    %eax, %cr0
        movl    %cr4, %eax
        orl     pins_cr4, %eax
        movl    %eax, %cr4
        popl    %eax
        ret

# No pins: clearing WP (and SMEP if the CPU has it) through the port must be
# applied, without #GP. The bits are set back natively afterwards.
work_unpinned:
        movl    %cr0, %esi
        movl    %esi, %ebx
        andl    $~CR0_WP, %ebx
        xorl    %ecx, %ecx
        movl    PC_GP(%ebp), %edx
        HEKI_MOV_CR OP_MOV_CR0
        movl    %cr0, %eax
        call    unpinned_check
        movl    %esi, %cr0
        testl   $CR4_SMEP, want_cr4
        jz      1f
        movl    %cr4, %esi
        movl    %esi, %ebx
        andl    $~CR4_SMEP, %ebx
        movl    $4, %ecx
        movl    PC_GP(%ebp), %edx
        HEKI_MOV_CR OP_MOV_CR4
        movl    %cr4, %eax
        call    unpinned_check
        movl    %esi, %cr4
1:      ret

# eax = CR read back, ebx = value written, ecx = CR number, edx = #GPs before.
unpinned_check:
        incl    PC_PROGRESS(%ebp)
        pushl   %eax
        LINE_BEGIN
        PUTS    "cpu="
        PUTDEC  %edi
        PUTS    " unpinned-write cr="
        PUTDEC  %ecx
        PUTS    " value="
        PUTHEX  %ebx
        PUTS    " read-back="
        PUTHEX  (%esp)
        PUTS    " gp="
        movl    PC_GP(%ebp), %eax
        subl    %edx, %eax
        PUTDEC  %eax
        LINE_END
        popl    %eax
        cmpl    %ebx, %eax
        jne     1f
        cmpl    PC_GP(%ebp), %edx
        jne     1f
        incl    PC_UNPINNED(%ebp)
        ret
1:      incl    PC_UNPINNED_BAD(%ebp)
        FAIL    "unpinned-write-not-applied"
        ret

# ---------------------------------------------------------------- scenario: bad-pins
# Requests the patch rejects must answer -22 (unknown hypercall: -1000) and
# raise no #GP. Then CR0 must still be unpinned: clearing WP through the
# port is applied.
prepare_bad_pins:
        movl    $bad_pin_cases, %esi
.Lbp_loop:
        cmpl    $0, (%esi)
        je      .Lbp_verify
        movl    percpu + PC_GP, %edi
        movl    4(%esi), %eax
        movl    8(%esi), %ebx
        movl    12(%esi), %ecx
        movl    16(%esi), %edx
        HEKI_OUT
        movl    %eax, %ebx                      # the answer
        movl    percpu + PC_GP, %ecx
        subl    %edi, %ecx                      # #GPs raised: must be 0
        xorl    %edx, %edx
        cmpl    20(%esi), %ebx
        jne     1f
        testl   %ecx, %ecx
        jnz     1f
        incl    %edx
1:      LINE_BEGIN
        PUTS    "bad-pin case="
        PUTSP   (%esi)
        PUTS    " rax="
        PUTHEX  %ebx
        PUTS    " expect="
        PUTHEX  20(%esi)
        PUTS    " gp="
        PUTDEC  %ecx
        PUTS    " ok="
        movl    %edx, %eax
        call    put_yes_no
        LINE_END
        testl   %edx, %edx
        jnz     2f
        FAIL    "bad-pin-answer"
2:      addl    $24, %esi
        jmp     .Lbp_loop
.Lbp_verify:
        movl    %cr0, %esi
        movl    %esi, %ebx
        andl    $~CR0_WP, %ebx
        movl    percpu + PC_GP, %edi
        HEKI_MOV_CR OP_MOV_CR0
        movl    %cr0, %eax
        movl    %esi, %cr0                      # WP back, natively
        movl    percpu + PC_GP, %ecx
        subl    %edi, %ecx
        xorl    %edx, %edx
        cmpl    %ebx, %eax
        jne     3f
        testl   %ecx, %ecx
        jnz     3f
        incl    %edx
3:      LINE_BEGIN
        PUTS    "bad-pin check=cr0-still-unpinned value="
        PUTHEX  %ebx
        PUTS    " read-back="
        PUTHEX  %eax
        PUTS    " gp="
        PUTDEC  %ecx
        PUTS    " ok="
        movl    %edx, %eax
        call    put_yes_no
        LINE_END
        testl   %edx, %edx
        jnz     4f
        FAIL    "rejected-pin-took-effect"
4:      ret

# ---------------------------------------------------------------- scenario: bench
# On the BSP: `iters` operations of each kind in BENCH_BATCHES batches; per
# batch ticks/op; median and min over the batches.
bench:
        movl    iters, %eax
        movl    $BENCH_BATCHES, %ecx
        cmpl    %ecx, %eax
        jae     1f
        movl    %eax, %ecx
1:      movl    %ecx, bench_batches
        xorl    %edx, %edx
        divl    %ecx
        movl    %eax, bench_per
        mull    %ecx
        movl    %eax, bench_total
        LINE_BEGIN
        PUTS    "bench batches="
        PUTDEC  bench_batches
        PUTS    " per-batch="
        PUTDEC  bench_per
        PUTS    " tsc-khz="
        PUTDEC  tsc_khz
        PUTS    " tsc-source="
        PUTSP   tsc_source
        LINE_END

        pushl   $name_io
        pushl   $op_io
        call    bench_op

        movl    %cr4, %esi
        movl    PC_GP(%ebp), %edi
        pushl   $name_emu
        pushl   $op_emu
        call    bench_op
        movl    %cr4, %eax
        cmpl    %esi, %eax
        jne     2f
        cmpl    PC_GP(%ebp), %edi
        je      3f
2:      FAIL    "bench-allowed-write-faulted-or-changed-cr4"

3:      movl    PC_GP(%ebp), %edi
        pushl   $name_denial
        pushl   $op_denial
        call    bench_op
        movl    bench_total, %eax
        addl    %eax, PC_DENIED(%ebp)
        addl    %eax, %edi
        cmpl    PC_GP(%ebp), %edi
        je      4f
        FAIL    "bench-denials-without-gp"
4:      call    pins_still_set
        testl   %eax, %eax
        jnz     5f
        FAIL    "pinned-bit-cleared"
5:      ret

# Stack: op loop (called with ecx = count), op name. Measures and reports.
bench_op:
        pusha
        xorl    %edi, %edi                      # batch
1:      cmpl    bench_batches, %edi
        jae     2f
        lfence
        rdtsc
        pushl   %edx
        pushl   %eax
        movl    bench_per, %ecx
        call    *44(%esp)                       # 8 + 32 (pusha) + 4 (ret) = the loop
        lfence
        rdtsc
        subl    (%esp), %eax
        sbbl    4(%esp), %edx
        addl    $8, %esp
        divl    bench_per
        movl    %eax, bench_samples(,%edi,4)
        incl    PC_PROGRESS(%ebp)
        incl    %edi
        jmp     1b
2:      call    sort_samples
        movl    bench_batches, %eax
        shrl    $1, %eax
        LINE_BEGIN
        PUTS    "bench op="
        PUTSP   40(%esp)                        # 32 (pusha) + 4 (ret) + 4 (the loop): the name
        PUTS    " iters="
        PUTDEC  bench_total
        PUTS    " median-ticks="
        movl    bench_samples(,%eax,4), %eax   # the median
        PUTDEC  %eax
        PUTS    " min-ticks="
        PUTDEC  bench_samples
        LINE_END
        popa
        ret     $8

op_io:                                          # ecx times: an ordinary exit to QEMU
1:      outb    %al, $IO_PORT_BENCH
        loop    1b
        ret

op_emu:                                         # ecx times: allowed CR4 write (unchanged)
        movl    %cr4, %edx
1:      movl    %edx, %ebx
        HEKI_MOV_CR OP_MOV_CR4
        loop    1b
        ret

op_denial:                                      # ecx times: CR0 & ~WP, denied, #GP skipped
        movl    %cr0, %edx
        andl    $~CR0_WP, %edx
1:      movl    %edx, %ebx
        HEKI_MOV_CR OP_MOV_CR0
        loop    1b
        ret

# Insertion sort of bench_samples[0 .. bench_batches).
sort_samples:
        pusha
        movl    $1, %ecx
1:      cmpl    bench_batches, %ecx
        jae     4f
        movl    bench_samples(,%ecx,4), %eax
        movl    %ecx, %edx
2:      testl   %edx, %edx
        jz      3f
        movl    bench_samples - 4(,%edx,4), %ebx
        cmpl    %eax, %ebx
        jbe     3f
        movl    %ebx, bench_samples(,%edx,4)
        decl    %edx
        jmp     2b
3:      movl    %eax, bench_samples(,%edx,4)
        incl    %ecx
        jmp     1b
4:      popa
        ret

# ---------------------------------------------------------------- reports and the exit
scenario_report:
        movl    scenario, %eax
        jmp     *report_table(,%eax,4)

# Per vCPU: denied writes and #GPs must match, pins kept, allowed write applied.
report_deny:
        xorl    %edi, %edi
1:      cmpl    cpus, %edi
        jae     4f
        movl    %edi, %ebp
        shll    $PC_SHIFT, %ebp
        addl    $percpu, %ebp
        LINE_BEGIN
        PUTS    "cpu="
        PUTDEC  %edi
        PUTS    " denied-writes="
        PUTDEC  PC_DENIED(%ebp)
        PUTS    " gp="
        PUTDEC  PC_GP(%ebp)
        PUTS    " apic-id="
        PUTDEC  PC_APIC_ID(%ebp)
        PUTS    " pinned-kept="
        xorl    %eax, %eax
        cmpl    $0, PC_LOST(%ebp)
        sete    %al
        call    put_yes_no
        PUTS    " allowed-write="
        xorl    %eax, %eax
        cmpl    $1, PC_ALLOWED(%ebp)
        sete    %al
        call    put_ok_fail
        LINE_END
        movl    PC_GP(%ebp), %eax
        cmpl    PC_DENIED(%ebp), %eax
        je      2f
        FAIL    "gp-count-differs-from-denied-writes"
2:      cmpl    $1, PC_ALLOWED(%ebp)
        je      3f
        FAIL    "allowed-write-missing"
3:      incl    %edi
        jmp     1b
4:      ret

report_unpinned:
        xorl    %edi, %edi
1:      cmpl    cpus, %edi
        jae     3f
        movl    %edi, %ebp
        shll    $PC_SHIFT, %ebp
        addl    $percpu, %ebp
        LINE_BEGIN
        PUTS    "cpu="
        PUTDEC  %edi
        PUTS    " unpinned-writes-applied="
        PUTDEC  PC_UNPINNED(%ebp)
        PUTS    " not-applied="
        PUTDEC  PC_UNPINNED_BAD(%ebp)
        PUTS    " gp="
        PUTDEC  PC_GP(%ebp)
        PUTS    " apic-id="
        PUTDEC  PC_APIC_ID(%ebp)
        LINE_END
        cmpl    $0, PC_UNPINNED(%ebp)
        jne     2f
        FAIL    "no-unpinned-write-applied"
2:      incl    %edi
        jmp     1b
3:      ret

# Any #GP at all fails these (nothing in them should be denied).
report_no_gp:
        xorl    %edi, %edi
1:      cmpl    cpus, %edi
        jae     3f
        movl    %edi, %eax
        shll    $PC_SHIFT, %eax
        cmpl    $0, percpu + PC_GP(%eax)
        je      2f
        FAIL    "unexpected-gp"
2:      incl    %edi
        jmp     1b
3:      ret

report_bench:
        ret

# The result line, then the exit: 0x10 if nothing failed, else 0x11.
finish:
        xorl    %ecx, %ecx                      # denied total
        xorl    %edx, %edx                      # #GP total
        xorl    %edi, %edi
1:      cmpl    cpus, %edi
        jae     2f
        movl    %edi, %eax
        shll    $PC_SHIFT, %eax
        addl    percpu + PC_DENIED(%eax), %ecx
        addl    percpu + PC_GP(%eax), %edx
        incl    %edi
        jmp     1b
2:      LINE_BEGIN
        PUTS    "result="
        cmpl    $0, fail_count
        jne     3f
        PUTS    "pass"
        jmp     4f
3:      PUTS    "fail"
4:      PUTS    " pins-cr0="
        PUTHEX  pins_cr0
        PUTS    " pins-cr4="
        PUTHEX  pins_cr4
        PUTS    " denied-writes="
        PUTDEC  %ecx
        PUTS    " gp="
        PUTDEC  %edx
        PUTS    " cpus="
        PUTDEC  cpus
        PUTS    " scenario="
        movl    scenario, %eax
        movl    scenario_names(,%eax,4), %eax
        PUTSP   %eax
        cmpl    $0, fail_count
        je      5f
        PUTS    " failures="
        PUTDEC  fail_count
        PUTS    " reason="
        PUTSP   fail_reason
5:      LINE_END
        movb    $EXIT_PASS, %al
        cmpl    $0, fail_count
        je      exit_qemu
        movb    $EXIT_FAIL, %al
        # fall through
# al = exit value. isa-debug-exit ends QEMU with status (al << 1) | 1.
exit_qemu:
        outb    %al, $EXIT_PORT
        LINE    "error=still-running-after-exit hint=-device-isa-debug-exit,iobase=0xf4,iosize=1"
1:      cli
        hlt
        jmp     1b

# Stack: reason string. Counts the failure; the first reason is kept.
record_fail:
        pushl   %eax
        pushl   %ecx
        lock incl fail_count
        movl    12(%esp), %ecx
        xorl    %eax, %eax
        lock cmpxchgl %ecx, fail_reason
        popl    %ecx
        popl    %eax
        ret     $4

put_yes_no:                                     # eax != 0: "yes"
        testl   %eax, %eax
        jz      1f
        PUTS    "yes"
        ret
1:      PUTS    "no"
        ret

put_ok_fail:                                    # eax != 0: "ok"
        testl   %eax, %eax
        jz      1f
        PUTS    "ok"
        ret
1:      PUTS    "fail"
        ret

# ---------------------------------------------------------------- exceptions
# 32 interrupt gates. #GP goes to gp_handler; everything else is unexpected.
idt_init:
        pusha
        xorl    %ecx, %ecx
1:      movl    exc_stubs(,%ecx,4), %eax
        movl    %eax, %edx
        andl    $0xffff, %eax
        orl     $CODE_SEL << 16, %eax
        andl    $0xffff0000, %edx
        orl     $0x8e00, %edx                   # present, DPL 0, 32-bit interrupt gate
        movl    %eax, idt(,%ecx,8)
        movl    %edx, idt + 4(,%ecx,8)
        incl    %ecx
        cmpl    $32, %ecx
        jb      1b
        popa
        ret

# eax = CPU index from esp (each vCPU runs on its own stack), or -1.
cpu_from_esp:
        leal    4(%esp), %eax                   # the caller's esp
        subl    $stacks, %eax
        cmpl    $MAX_CPUS * STACK_SIZE, %eax
        jae     1f
        shrl    $STACK_SHIFT, %eax
        ret
1:      movl    $-1, %eax
        ret

# #GP(0) at the Heki port is a denied CR write: count it on this vCPU (its
# own record: lock-free) and resume after the 2-byte OUT. Any other #GP is
# a bug. Stack: error code, eip, cs, eflags.
gp_handler:
        pushl   %eax
        pushl   %ebx
        cmpl    $0, 8(%esp)                     # error code 0
        jne     1f
        movl    12(%esp), %ebx                  # saved eip
        cmpw    $0xe5e6, (%ebx)                 # `e6 e5` = outb %al,$0xe5
        jne     1f
        call    cpu_from_esp
        cmpl    $-1, %eax
        je      1f
        shll    $PC_SHIFT, %eax
        incl    percpu + PC_GP(%eax)
        addl    $2, 12(%esp)
        popl    %ebx
        popl    %eax
        leal    4(%esp), %esp                   # the error code
        # Return without IRET: this machine's KVM emulates a protected-mode
        # IRET (and INT3) and stops with "emulation failure". Same privilege
        # level and IF already 0, so popfl + ret restore the same state.
        # Stack: eip, cs, eflags  ->  eflags, eip.
        pushl   %eax
        movl    4(%esp), %eax                   # eip
        xchgl   %eax, 12(%esp)                  # eflags slot <- eip, eax = eflags
        movl    %eax, 8(%esp)                   # cs slot <- eflags
        popl    %eax
        leal    4(%esp), %esp                   # the old eip slot
        popfl
        ret
1:      popl    %ebx
        popl    %eax
        pushl   $13
        jmp     exc_unexpected

.macro EXC_STUB vec, has_error
exc_\vec:
        .if \has_error == 0
        pushl   $0
        .endif
        pushl   $\vec
        jmp     exc_unexpected
.endm
        EXC_STUB 0, 0
        EXC_STUB 1, 0
        EXC_STUB 2, 0
        EXC_STUB 3, 0
        EXC_STUB 4, 0
        EXC_STUB 5, 0
        EXC_STUB 6, 0
        EXC_STUB 7, 0
        EXC_STUB 8, 1
        EXC_STUB 9, 0
        EXC_STUB 10, 1
        EXC_STUB 11, 1
        EXC_STUB 12, 1
        EXC_STUB 14, 1
        EXC_STUB 15, 0
        EXC_STUB 16, 0
        EXC_STUB 17, 1
        EXC_STUB 18, 0
        EXC_STUB 19, 0
        EXC_STUB 20, 0
        EXC_STUB 21, 1
        EXC_STUB 22, 0
        EXC_STUB 23, 0
        EXC_STUB 24, 0
        EXC_STUB 25, 0
        EXC_STUB 26, 0
        EXC_STUB 27, 0
        EXC_STUB 28, 0
        EXC_STUB 29, 1
        EXC_STUB 30, 1
        EXC_STUB 31, 0

# Stack: vector, error code, eip, cs, eflags. Reports and fails the run.
exc_unexpected:
        call    line_begin_force
        PUTS    "unexpected-exception vector="
        PUTDEC  (%esp)
        PUTS    " error="
        PUTHEX  4(%esp)
        PUTS    " eip="
        PUTHEX  8(%esp)
        PUTS    " cpu="
        call    cpu_from_esp
        cmpl    $-1, %eax
        jne     1f
        PUTS    "unknown"
        jmp     2f
1:      PUTDEC  %eax
2:      cmpl    $13, (%esp)                     # a #GP resuming just past the Heki OUT:
        jne     3f                              # the emulator left rip after it
        movl    8(%esp), %eax
        cmpl    $0x100002, %eax
        jb      3f
        cmpw    $0xe5e6, -2(%eax)
        jne     3f
        PUTS    " note=eip-just-after-heki-out-expected-at-it"
3:      LINE_END
        LINE    "result=fail reason=unexpected-exception"
        movb    $EXIT_FAIL, %al
        jmp     exit_qemu

# ---------------------------------------------------------------- serial output
# COM1, polled. One spinlock per line keeps the vCPUs' lines whole.
serial_init:
        pushl   %eax
        pushl   %edx
        movw    $COM1 + 1, %dx                  # no interrupts
        xorb    %al, %al
        outb    %al, %dx
        movw    $COM1 + 3, %dx                  # DLAB
        movb    $0x80, %al
        outb    %al, %dx
        movw    $COM1, %dx                      # 115200 baud
        movb    $1, %al
        outb    %al, %dx
        movw    $COM1 + 1, %dx
        xorb    %al, %al
        outb    %al, %dx
        movw    $COM1 + 3, %dx                  # 8N1
        movb    $0x03, %al
        outb    %al, %dx
        movw    $COM1 + 2, %dx                  # FIFO on, cleared
        movb    $0xc7, %al
        outb    %al, %dx
        popl    %edx
        popl    %eax
        ret

serial_putc:                                    # al
        pushl   %eax
        pushl   %edx
        movb    %al, %ah
        movw    $COM1 + 5, %dx
1:      inb     %dx, %al
        testb   $0x20, %al                      # THR empty
        jz      1b
        movb    %ah, %al
        movw    $COM1, %dx
        outb    %al, %dx
        popl    %edx
        popl    %eax
        ret

line_begin:
        pushl   %eax
1:      movl    $1, %eax
        xchgl   %eax, serial_lock
        testl   %eax, %eax
        jz      3f
2:      pause
        cmpl    $0, serial_lock
        jne     2b
        jmp     1b
3:      popl    %eax
        PUTS    "heki-guest: "
        ret

# For the fatal path: the lock may be held by this very vCPU (a fault in the
# middle of a line), so wait a bounded time, then take it anyway.
line_begin_force:
        pushl   %eax
        pushl   %ecx
        movl    $10000000, %ecx
1:      movl    $1, %eax
        xchgl   %eax, serial_lock
        testl   %eax, %eax
        jz      2f
        pause
        loop    1b
        movb    $'\n', %al                     # taken over: end the broken line
        call    serial_putc
2:      popl    %ecx
        popl    %eax
        PUTS    "heki-guest: "
        ret

line_end:
        pushl   %eax
        movb    $'\n', %al
        call    serial_putc
        movl    $0, serial_lock                 # a plain store releases (x86 TSO)
        popl    %eax
        ret

puts_stk:                                       # stack: string
        pusha
        movl    36(%esp), %esi
1:      lodsb
        testb   %al, %al
        jz      2f
        call    serial_putc
        jmp     1b
2:      popa
        ret     $4

put_hex_stk:                                    # stack: value; 0x, no leading zeros
        pusha
        movl    36(%esp), %edx
        movb    $'0', %al
        call    serial_putc
        movb    $'x', %al
        call    serial_putc
        movl    $8, %ecx
        xorl    %ebx, %ebx                      # a digit printed yet
1:      roll    $4, %edx
        movl    %edx, %eax
        andl    $0xf, %eax
        cmpl    $1, %ecx                        # the last digit always
        je      2f
        testl   %ebx, %ebx
        jnz     2f
        testl   %eax, %eax
        jz      3f
2:      movl    $1, %ebx
        movb    hex_digits(%eax), %al
        call    serial_putc
3:      loop    1b
        popa
        ret     $4

put_dec_stk:                                    # stack: value (unsigned)
        pusha
        movl    36(%esp), %eax
        subl    $12, %esp
        leal    12(%esp), %edi
        movl    %edi, %esi                      # end of the digits
        movl    $10, %ebx
1:      xorl    %edx, %edx
        divl    %ebx
        addb    $'0', %dl
        decl    %edi
        movb    %dl, (%edi)
        testl   %eax, %eax
        jnz     1b
2:      movb    (%edi), %al
        call    serial_putc
        incl    %edi
        cmpl    %esi, %edi
        jb      2b
        addl    $12, %esp
        popa
        ret     $4

# ---------------------------------------------------------------- data
        .section .rodata
        .balign 4
exc_stubs:
        .long exc_0, exc_1, exc_2, exc_3, exc_4, exc_5, exc_6, exc_7
        .long exc_8, exc_9, exc_10, exc_11, exc_12, gp_handler, exc_14, exc_15
        .long exc_16, exc_17, exc_18, exc_19, exc_20, exc_21, exc_22, exc_23
        .long exc_24, exc_25, exc_26, exc_27, exc_28, exc_29, exc_30, exc_31

scenario_names:                                 # index = SC_*
        .long sn_pin_deny, sn_pin_only, sn_weak, sn_bad_pins, sn_unpinned, sn_storm, sn_bench, sn_no_pin, 0
prepare_table:
        .long prepare_pins, prepare_pins, prepare_weak, prepare_bad_pins, prepare_none, prepare_pins, prepare_pins
        .long prepare_none
work_table:
        .long deny_writes, work_none, work_none, work_none, work_unpinned, deny_writes, work_bench
        .long work_idle
report_table:
        .long report_deny, report_no_gp, report_no_gp, report_no_gp, report_unpinned, report_deny, report_bench
        .long report_no_gp

# bad-pins cases: name, rax, rbx, rcx, rdx, expected rax
bad_pin_cases:
        .long bp_zero,    KVM_HC_LOCK_CR_UPDATE, 0, 0,        0, EINVAL_NEG
        .long bp_reg3,    KVM_HC_LOCK_CR_UPDATE, 3, CR0_WP,   0, EINVAL_NEG
        .long bp_cr0_ne,  KVM_HC_LOCK_CR_UPDATE, 0, CR0_NE,   0, EINVAL_NEG
        .long bp_flags,   KVM_HC_LOCK_CR_UPDATE, 0, CR0_WP,   2, EINVAL_NEG
        .long bp_cr4_pge, KVM_HC_LOCK_CR_UPDATE, 4, CR4_PGE,  0, EINVAL_NEG
        .long bp_hc99,    99,                    0, 0,        0, ENOSYS_NEG
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
gdt:    # accessed bits preset: the CPU never writes the table
        .quad 0
        .quad 0x00cf9b000000ffff                # 0x08: flat 32-bit code
        .quad 0x00cf93000000ffff                # 0x10: flat data
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
stacks: .skip MAX_CPUS * STACK_SIZE             # cpu i: [stacks + i*4K, stacks + (i+1)*4K)
        .balign 64
percpu: .skip MAX_CPUS << PC_SHIFT
        .balign 8
idt:    .skip 32 * 8
        .balign 64
pvclock: .skip 32                               # kvmclock's pvclock_vcpu_time_info
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
want_cr4: .long 0                               # SMEP|SMAP the CPU has
cr4_toggle: .long 0                             # PGE if the CPU has it
tsc_khz: .long 0
tsc_source: .long 0
pins_cr0: .long 0                               # pins the emulator accepted (rax 0)
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
next_cpu: .long 0                               # lock xadd: the next CPU index
ap_ready: .long 0
go:     .long 0
cpus_done: .long 0
