// ---------------------------------------------------------------- scenario: bad-pins
// Requests the patch rejects must answer -22 (unknown hypercall: -1000) and
// raise no #GP. Then CR0 must still be unpinned: clearing WP through the
// port is applied.
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
        movl    %eax, %ebx                      // the answer
        movl    percpu + PC_GP, %ecx
        subl    %edi, %ecx                      // #GPs raised: must be 0
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
        andl    $~FK_CR0_WP, %ebx
        movl    percpu + PC_GP, %edi
        HEKI_MOV_CR EMU_OP_WRITE_CR0
        movl    %cr0, %eax
        movl    %esi, %cr0                      // WP back, natively
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

// ---------------------------------------------------------------- scenario: bench
// On the BSP: `iters` operations of each kind in BENCH_BATCHES batches; per
// batch ticks/op; median and min over the batches.
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

// Stack: op loop (called with ecx = count), op name. Measures and reports.
bench_op:
        pusha
        xorl    %edi, %edi                      // batch
1:      cmpl    bench_batches, %edi
        jae     2f
        lfence
        rdtsc
        pushl   %edx
        pushl   %eax
        movl    bench_per, %ecx
        call    *44(%esp)                       // 8 + 32 (pusha) + 4 (ret) = the loop
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
        PUTSP   40(%esp)                        // 32 (pusha) + 4 (ret) + 4 (the loop): the name
        PUTS    " iters="
        PUTDEC  bench_total
        PUTS    " median-ticks="
        movl    bench_samples(,%eax,4), %eax   // the median
        PUTDEC  %eax
        PUTS    " min-ticks="
        PUTDEC  bench_samples
        LINE_END
        popa
        ret     $8

op_io:                                          // ecx times: an ordinary exit to QEMU
1:      outb    %al, $IO_PORT_BENCH
        loop    1b
        ret

op_emu:                                         // ecx times: allowed CR4 write (unchanged)
        movl    %cr4, %edx
1:      movl    %edx, %ebx
        HEKI_MOV_CR EMU_OP_WRITE_CR4
        loop    1b
        ret

op_denial:                                      // ecx times: CR0 & ~WP, denied, #GP skipped
        movl    %cr0, %edx
        andl    $~FK_CR0_WP, %edx
1:      movl    %edx, %ebx
        HEKI_MOV_CR EMU_OP_WRITE_CR0
        loop    1b
        ret

// Insertion sort of bench_samples[0 .. bench_batches).
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

// ---------------------------------------------------------------- scenario: pin-wait
// Both pins (prepare_pins), then the BSP idles idle-ms (a test migrates or
// snapshots the VM meanwhile), then clears CR0.WP once through the port. On
// the kernel that holds the pins the write is denied (one #GP, WP kept); on
// a kernel that never saw them (a migration's destination) it is applied
// (no #GP). Either is reported as `outcome=`; anything else fails. WP is set
// back natively.
work_pin_wait:
        testl   %edi, %edi                      // the BSP only
        jnz     3f
        call    work_idle
        movl    %cr0, %esi
        movl    %esi, %ebx
        andl    $~FK_CR0_WP, %ebx
        movl    PC_GP(%ebp), %edx
        HEKI_MOV_CR EMU_OP_WRITE_CR0
        movl    %cr0, %eax
        movl    %esi, %cr0                      // WP back, natively
        movl    PC_GP(%ebp), %ecx
        subl    %edx, %ecx                      // #GPs this write raised
        movl    %ecx, wait_gp
        movl    %eax, wait_read_back
        movl    $wait_denied, wait_outcome
        cmpl    $1, %ecx                        // denied: one #GP, WP kept
        jne     1f
        testl   $FK_CR0_WP, %eax
        jnz     2f
1:      movl    $wait_applied, wait_outcome
        testl   %ecx, %ecx                      // applied: no #GP, WP clear
        jnz     4f
        cmpl    %ebx, %eax
        je      2f
4:      movl    $wait_neither, wait_outcome
        FAIL    "after-wait-write-neither-denied-nor-applied"
2:      LINE_BEGIN
        PUTS    "after-wait write cr=0 value="
        PUTHEX  %ebx
        PUTS    " read-back="
        PUTHEX  wait_read_back
        PUTS    " gp="
        PUTDEC  wait_gp
        PUTS    " outcome="
        PUTSP   wait_outcome
        LINE_END
3:      ret

// The after-wait write's #GP is expected; any other #GP fails.
report_pin_wait:
        xorl    %eax, %eax
        subl    wait_gp, %eax                   // every #GP but that one
        xorl    %edi, %edi
1:      cmpl    cpus, %edi
        jae     2f
        movl    %edi, %ecx
        shll    $PC_SHIFT, %ecx
        addl    percpu + PC_GP(%ecx), %eax
        incl    %edi
        jmp     1b
2:      testl   %eax, %eax
        jz      3f
        FAIL    "unexpected-gp"
3:      ret

        .section .rodata.str, "a"
wait_denied:    .asciz "denied"
wait_applied:   .asciz "applied"
wait_neither:   .asciz "neither"
        .section .bss
        .balign 4
wait_gp:        .long 0
wait_read_back: .long 0
wait_outcome:   .long 0
        .text
// ---------------------------------------------------------------- scenario: io-bench
// On the BSP: `iters` ordinary I/O exits (outb, KVM_EXIT_IO to QEMU), timed
// in BENCH_BATCHES batches like `bench`: the exit the plugin must not slow
// down, with and without it (io_roundtrip.py). Nothing is pinned.
work_io_bench:
        testl   %edi, %edi                      // the BSP only
        jnz     2f
        movl    $BENCH_BATCHES, bench_batches
        movl    iters, %eax
        xorl    %edx, %edx
        divl    bench_batches
        testl   %eax, %eax
        jnz     1f
        incl    %eax                            // at least one exit per batch
1:      movl    %eax, bench_per
        mull    bench_batches
        movl    %eax, bench_total
        pushl   $name_io
        pushl   $op_io
        call    bench_op
2:      ret
