// ---------------------------------------------------------------- exceptions
// 32 interrupt gates. #GP goes to gp_handler; everything else is unexpected.
idt_init:
        pusha
        xorl    %ecx, %ecx
1:      movl    exc_stubs(,%ecx,4), %eax
        movl    %eax, %edx
        andl    $0xffff, %eax
        orl     $CODE_SEL << 16, %eax
        andl    $0xffff0000, %edx
        orl     $0x8e00, %edx                   // present, DPL 0, 32-bit interrupt gate
        movl    %eax, idt(,%ecx,8)
        movl    %edx, idt + 4(,%ecx,8)
        incl    %ecx
        cmpl    $32, %ecx
        jb      1b
        popa
        ret

// eax = CPU index from esp (each vCPU runs on its own stack), or -1.
cpu_from_esp:
        leal    4(%esp), %eax                   // the caller's esp
        subl    $stacks, %eax
        cmpl    $MAX_CPUS * STACK_SIZE, %eax
        jae     1f
        shrl    $STACK_SHIFT, %eax
        ret
1:      movl    $-1, %eax
        ret

// #GP(0) at the Heki port is a denied CR write: count it on this vCPU (its
// own record: lock-free) and resume after the 2-byte OUT. Any other #GP is
// a bug. Stack: error code, eip, cs, eflags.
gp_handler:
        pushl   %eax
        pushl   %ebx
        cmpl    $0, 8(%esp)                     // error code 0
        jne     1f
        movl    12(%esp), %ebx                  // saved eip
        cmpw    $(EMU_PORT << 8 | 0xe6), (%ebx)                 // `e6 e5` = outb %al,$0xe5
        jne     1f
        call    cpu_from_esp
        cmpl    $-1, %eax
        je      1f
        shll    $PC_SHIFT, %eax
        incl    percpu + PC_GP(%eax)
        addl    $2, 12(%esp)
        popl    %ebx
        popl    %eax
        leal    4(%esp), %esp                   // the error code
        // Return without IRET: this machine's KVM emulates a protected-mode
        // IRET (and INT3) and stops with "emulation failure". Same privilege
        // level and IF already 0, so popfl + ret restore the same state.
        // Stack: eip, cs, eflags  ->  eflags, eip.
        pushl   %eax
        movl    4(%esp), %eax                   // eip
        xchgl   %eax, 12(%esp)                  // eflags slot <- eip, eax = eflags
        movl    %eax, 8(%esp)                   // cs slot <- eflags
        popl    %eax
        leal    4(%esp), %esp                   // the old eip slot
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

// Stack: vector, error code, eip, cs, eflags. Reports and fails the run.
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
2:      cmpl    $13, (%esp)                     // a #GP resuming just past the Heki OUT:
        jne     3f                              // the emulator left rip after it
        movl    8(%esp), %eax
        cmpl    $0x100002, %eax
        jb      3f
        cmpw    $(EMU_PORT << 8 | 0xe6), -2(%eax)
        jne     3f
        PUTS    " note=eip-just-after-heki-out-expected-at-it"
3:      LINE_END
        LINE    "result=fail reason=unexpected-exception"
        movb    $EXIT_FAIL, %al
        jmp     exit_qemu
