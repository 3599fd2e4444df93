// ---------------------------------------------------------------- per-vCPU work
// edi = CPU index. ebp = its per-CPU record throughout.
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
        testl   %edi, %edi                      // the BSP only
        jnz     1f
        call    bench
1:      ret

// no-pin: nothing is ever pinned; the BSP stays busy for idle-ms, in steps
// of up to 100 ms on the TSC (the VMM's pin deadline judges the VM
// meanwhile), then the run passes. A pause loop, not hlt: interrupts stay
// off, and hlt with IF=0 would never wake.
work_idle:
        testl   %edi, %edi                      // the BSP only
        jnz     3f
        LINE_BEGIN
        PUTS    "idle ms="
        PUTDEC  idle_ms
        LINE_END
        movl    idle_ms, %esi                   // ms left
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

// `writes` denied writes, alternating CR0 (clear WP) and CR4 (clear the
// pinned SMEP or SMAP), then one allowed write. Each denied write must raise
// exactly one #GP and leave the pinned bits set (checked natively).
deny_writes:
        xorl    %esi, %esi                      // write number
.Ldw_loop:
        cmpl    writes, %esi
        jae     .Ldw_done
        testl   $1, %esi
        jz      1f
        cmpl    $0, deny_cr4_bit
        je      1f
        movl    %cr4, %ebx                      // odd writes: CR4 & ~deny bit
        movl    deny_cr4_bit, %eax
        notl    %eax
        andl    %eax, %ebx
        movl    $4, %ecx
        movl    PC_GP(%ebp), %edx
        HEKI_MOV_CR EMU_OP_WRITE_CR4
        jmp     2f
1:      movl    %cr0, %ebx                      // even writes: CR0 & ~WP
        andl    $~FK_CR0_WP, %ebx
        xorl    %ecx, %ecx
        movl    PC_GP(%ebp), %edx
        HEKI_MOV_CR EMU_OP_WRITE_CR0
2:      incl    PC_DENIED(%ebp)
        incl    PC_PROGRESS(%ebp)
        movl    PC_GP(%ebp), %eax
        subl    %edx, %eax                      // #GPs this write raised: must be 1
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
        call    restore_pins                    // so the next check means something
5:      incl    %esi
        jmp     .Ldw_loop
.Ldw_done:
        // fall through
// One allowed write per vCPU: CR4 with PGE toggled (unpinned, harmless
// without paging; or CR4 unchanged without PGE). It must be applied with no
// #GP; the old value is then restored natively.
allowed_write:
        movl    %cr4, %esi
        movl    %esi, %ebx
        xorl    cr4_toggle, %ebx
        movl    PC_GP(%ebp), %edx
        HEKI_MOV_CR EMU_OP_WRITE_CR4
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

// eax = 1 if every pinned bit is set in the live CR0 and CR4, else 0.
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

// No pins: clearing WP (and SMEP if the CPU has it) through the port must be
// applied, without #GP. The bits are set back natively afterwards.
work_unpinned:
        movl    %cr0, %esi
        movl    %esi, %ebx
        andl    $~FK_CR0_WP, %ebx
        xorl    %ecx, %ecx
        movl    PC_GP(%ebp), %edx
        HEKI_MOV_CR EMU_OP_WRITE_CR0
        movl    %cr0, %eax
        call    unpinned_check
        movl    %esi, %cr0
        testl   $FK_CR4_SMEP, want_cr4
        jz      1f
        movl    %cr4, %esi
        movl    %esi, %ebx
        andl    $~FK_CR4_SMEP, %ebx
        movl    $4, %ecx
        movl    PC_GP(%ebp), %edx
        HEKI_MOV_CR EMU_OP_WRITE_CR4
        movl    %cr4, %eax
        call    unpinned_check
        movl    %esi, %cr4
1:      ret

// eax = CR read back, ebx = value written, ecx = CR number, edx = #GPs before.
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
