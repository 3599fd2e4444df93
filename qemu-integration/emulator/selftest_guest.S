/*
 * selftest_guest.S - the self-test's guest: 32-bit protected mode, flat
 * segments, no paging, no interrupts.  A command loop driven through a mailbox (%ebp), a
 * #GP handler that checks it faulted on our `outb %al,$0xe5`, and stubs that
 * report any other exception.
 */
#include "selftest.h"

    .code32
    .text
    .globl guest_entry, guest_op_out, guest_rep_out, guest_gp_handler, guest_bad_stubs

guest_entry:                    /* %ebp = mailbox, %esp = stack (host) */
next:
    outb %al, $PORT_READY       /* the host fills the mailbox meanwhile */
    movl MB_CMD(%ebp), %eax
    cmpl $CMD_OP, %eax
    je do_op
    cmpl $CMD_REPEAT, %eax
    je do_repeat
    cmpl $CMD_PLAIN, %eax
    je do_plain
    cmpl $CMD_IN, %eax
    je do_in
    cmpl $CMD_OUTW, %eax
    je do_outw
    hlt
    jmp next

do_op:
    call load_regs
guest_op_out:
    outb %al, $EMU_PORT
    movl %eax, MB_RES_EAX(%ebp)
    jmp next

do_repeat:
    movl MB_COUNT(%ebp), %esi
1:  call load_regs
guest_rep_out:
    outb %al, $EMU_PORT
    decl %esi
    jnz 1b
    movl %eax, MB_RES_EAX(%ebp)
    jmp next

do_plain:
    movl MB_COUNT(%ebp), %esi
1:  outb %al, $PORT_PLAIN
    decl %esi
    jnz 1b
    jmp next

do_in:
    call load_regs
    inb $EMU_PORT, %al
    movl %eax, MB_RES_EAX(%ebp)
    jmp next

do_outw:
    call load_regs
    outw %ax, $EMU_PORT
    movl %eax, MB_RES_EAX(%ebp)
    jmp next

load_regs:
    movl MB_RAX(%ebp), %eax
    movl MB_RBX(%ebp), %ebx
    movl MB_RCX(%ebp), %ecx
    movl MB_RDX(%ebp), %edx
    ret

/* Stack: error code, eip, cs, eflags.  Returns with popf + ret $8 instead
   of iret: on this machine (PVM) KVM's instruction emulator runs 32-bit
   guests, and it cannot emulate a protected-mode iret (X86EMUL_UNHANDLEABLE,
   KVM_EXIT_INTERNAL_ERROR).  Same privilege level, so this is equivalent. */
guest_gp_handler:
    pushl %eax
    pushl %esi
    movl 8(%esp), %eax
    movl %eax, MB_GP_ERR(%ebp)
    movl 12(%esp), %esi
    movl %esi, MB_GP_EIP(%ebp)
    incl MB_GP_COUNT(%ebp)
    cmpw $0xe5e6, (%esi)        /* e6 e5: outb %al, $0xe5 */
    jne 2f
    addl $2, 12(%esp)           /* skip the OUT */
    popl %esi
    popl %eax
    addl $4, %esp               /* the error code */
    pushl 8(%esp)               /* eflags */
    popfl
    ret $8                      /* to eip; drop cs and eflags */
2:  incl MB_GP_BAD(%ebp)
    movl $13, MB_BAD_VECTOR(%ebp)
    outb %al, $PORT_BAD
    hlt

    .balign BAD_STUB_SIZE
guest_bad_stubs:
    .irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .balign BAD_STUB_SIZE
    movl $\vec, MB_BAD_VECTOR(%ebp)
    outb %al, $PORT_BAD
    hlt
    .endr
