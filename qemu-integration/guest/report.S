// ---------------------------------------------------------------- reports and the exit
scenario_report:
        movl    scenario, %eax
        jmp     *report_table(,%eax,4)

// Per vCPU: denied writes and #GPs must match, pins kept, allowed write applied.
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

// Any #GP at all fails these (nothing in them should be denied).
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

// The result line, then the exit: 0x10 if nothing failed, else 0x11.
finish:
        xorl    %ecx, %ecx                      // denied total
        xorl    %edx, %edx                      // #GP total
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
        // fall through
// al = exit value. isa-debug-exit ends QEMU with status (al << 1) | 1.
exit_qemu:
        outb    %al, $EXIT_PORT
        LINE    "error=still-running-after-exit hint=-device-isa-debug-exit,iobase=0xf4,iosize=1"
1:      cli
        hlt
        jmp     1b

// Stack: reason string. Counts the failure; the first reason is kept.
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

put_yes_no:                                     // eax != 0: "yes"
        testl   %eax, %eax
        jz      1f
        PUTS    "yes"
        ret
1:      PUTS    "no"
        ret

put_ok_fail:                                    // eax != 0: "ok"
        testl   %eax, %eax
        jz      1f
        PUTS    "ok"
        ret
1:      PUTS    "fail"
        ret
