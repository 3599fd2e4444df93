// ---------------------------------------------------------------- SMP
// Real-mode trampoline, copied to TRAMP_BASE; the SIPI starts an AP at
// TRAMP_BASE:0 with cs = TRAMP_BASE >> 4. It loads the BSP's GDT and jumps
// into ap_entry32 in protected mode. Only label differences are used, so
// the code runs wherever it is copied.
        .section .rodata
        .code16
tramp_start:
        cli
        cld
        movw    %cs, %ax
        movw    %ax, %ds
        lgdtl   tramp_gdtr - tramp_start
        movl    %cr0, %eax
        orl     $1, %eax                        // PE
        movl    %eax, %cr0
        ljmpl   $CODE_SEL, $ap_entry32
        .balign 4
tramp_gdtr:
        .word   gdt_end - gdt - 1
        .long   gdt
tramp_end:
        .code32
        .text

// An AP in protected mode: a CPU index from lock xadd, its own stack, the
// shared IDT, the native CR bits; then it waits for `go`, works, reports done.
// An AP beyond cpus=N (or MAX_CPUS) parks at once: the BSP counts it as a
// mismatch with -smp.
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

// Starts the APs with a broadcast INIT-SIPI-SIPI (every AP that exists wakes,
// so a -smp larger than cpus=N is seen), waits for cpus-1 of them (bounded),
// then a grace period for extra ones.
smp_start:
        pusha
        movl    $1, next_cpu                    // index 0 is the BSP
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
1:      testl   $1 << 11, %eax                  // globally enabled
        jnz     2f
        orl     $1 << 11, %eax
        wrmsr
2:      orl     $0x100 | 0xff, LAPIC_SVR        // software enable, spurious vector 0xff
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
        decl    %esi                            // APs expected
        movl    $2000, %eax
        call    set_deadline
3:      cmpl    %esi, ap_ready
        jae     4f
        call    deadline_passed
        jc      .Lsmp_missing
        pause
        jmp     3b
4:      movl    $50, %eax                       // extra APs would arrive by now
        call    delay_ms
        movl    next_cpu, %eax
        decl    %eax                            // APs that ran the trampoline
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

// eax = ICR low word; waits (bounded) for the delivery to leave the LAPIC.
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

// The BSP waits for every vCPU to finish its work. Bounded by progress: the
// run fails if no vCPU makes progress for 5 s (an AP stuck in a Heki exit).
smp_wait_done:
        pusha
        movl    $-1, %ebx                       // last progress sum seen
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

// Time, in TSC ticks (BSP only: one deadline).
set_deadline:                                   // eax = ms from now
        pushl   %edx
        mull    tsc_khz
        movl    %eax, deadline
        movl    %edx, deadline + 4
        rdtsc
        addl    %eax, deadline
        adcl    %edx, deadline + 4
        popl    %edx
        ret

deadline_passed:                                // CF=1 when now >= deadline
        pushl   %eax
        pushl   %edx
        rdtsc
        subl    deadline, %eax
        sbbl    deadline + 4, %edx
        cmc
        popl    %edx
        popl    %eax
        ret

delay_ms:                                       // eax = ms
        call    set_deadline
1:      pause
        call    deadline_passed
        jnc     1b
        ret
