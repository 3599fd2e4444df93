// ---------------------------------------------------------------- serial output
// COM1, polled. One spinlock per line keeps the vCPUs' lines whole.
serial_init:
        pushl   %eax
        pushl   %edx
        movw    $COM1 + 1, %dx                  // no interrupts
        xorb    %al, %al
        outb    %al, %dx
        movw    $COM1 + 3, %dx                  // DLAB
        movb    $0x80, %al
        outb    %al, %dx
        movw    $COM1, %dx                      // 115200 baud
        movb    $1, %al
        outb    %al, %dx
        movw    $COM1 + 1, %dx
        xorb    %al, %al
        outb    %al, %dx
        movw    $COM1 + 3, %dx                  // 8N1
        movb    $0x03, %al
        outb    %al, %dx
        movw    $COM1 + 2, %dx                  // FIFO on, cleared
        movb    $0xc7, %al
        outb    %al, %dx
        popl    %edx
        popl    %eax
        ret

serial_putc:                                    // al
        pushl   %eax
        pushl   %edx
        movb    %al, %ah
        movw    $COM1 + 5, %dx
1:      inb     %dx, %al
        testb   $0x20, %al                      // THR empty
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

// For the fatal path: the lock may be held by this very vCPU (a fault in the
// middle of a line), so wait a bounded time, then take it anyway.
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
        movb    $'\n', %al                     // taken over: end the broken line
        call    serial_putc
2:      popl    %ecx
        popl    %eax
        PUTS    "heki-guest: "
        ret

line_end:
        pushl   %eax
        movb    $'\n', %al
        call    serial_putc
        movl    $0, serial_lock                 // a plain store releases (x86 TSO)
        popl    %eax
        ret

puts_stk:                                       // stack: string
        pusha
        movl    36(%esp), %esi
1:      lodsb
        testb   %al, %al
        jz      2f
        call    serial_putc
        jmp     1b
2:      popa
        ret     $4

put_hex_stk:                                    // stack: value; 0x, no leading zeros
        pusha
        movl    36(%esp), %edx
        movb    $'0', %al
        call    serial_putc
        movb    $'x', %al
        call    serial_putc
        movl    $8, %ecx
        xorl    %ebx, %ebx                      // a digit printed yet
1:      roll    $4, %edx
        movl    %edx, %eax
        andl    $0xf, %eax
        cmpl    $1, %ecx                        // the last digit always
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

put_dec_stk:                                    // stack: value (unsigned)
        pusha
        movl    36(%esp), %eax
        subl    $12, %esp
        leal    12(%esp), %edi
        movl    %edi, %esi                      // end of the digits
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
