/*
 * selftest.h - what the self-test's host (selftest.c) and guest
 * (selftest_guest.S) agree on: guest-physical layout, ports, the mailbox.
 * Plain #defines: included by C and by the assembler.
 */
#ifndef HEKI_EMU_SELFTEST_H
#define HEKI_EMU_SELFTEST_H

#define GUEST_MEM_SIZE 0x400000
#define GUEST_CODE 0x1000   /* the guest links here */
#define GUEST_GDT 0x800
#define GUEST_IDT 0x900     /* 32 gates */
#define GUEST_MAILBOX 0x10000 /* + cpu * MB_STRIDE */
#define MB_STRIDE 0x100
#define GUEST_STACK_TOP 0x20000 /* + (cpu + 1) * 0x1000 */

#define SEL_CODE 0x08
#define SEL_DATA 0x10

#include "emu_protocol.h" /* EMU_PORT, the emulator's port */
#define PORT_READY 0xf1 /* the guest waits for a command */
#define PORT_PLAIN 0xf2 /* an unrelated port: the baseline exit */
#define PORT_BAD 0xf3   /* an exception the test did not expect */

/* Commands (MB_CMD). */
#define CMD_OP 1     /* regs from the mailbox, outb %al,$0xe5, eax back */
#define CMD_REPEAT 2 /* the same, MB_COUNT times */
#define CMD_PLAIN 3  /* outb to PORT_PLAIN, MB_COUNT times */
#define CMD_IN 4     /* inb $0xe5 */
#define CMD_OUTW 5   /* outw %ax,$0xe5 */
#define CMD_HALT 6

/* Mailbox: 32-bit words at these byte offsets. */
#define MB_CMD 0
#define MB_RAX 4
#define MB_RBX 8
#define MB_RCX 12
#define MB_RDX 16
#define MB_COUNT 20
#define MB_RES_EAX 24
#define MB_GP_COUNT 28  /* #GP seen by the guest's handler */
#define MB_GP_ERR 32    /* its last error code */
#define MB_GP_EIP 36    /* its last saved eip */
#define MB_GP_BAD 40    /* #GPs whose eip was not at e6 e5 */
#define MB_BAD_VECTOR 44

#define BAD_STUB_SIZE 16 /* guest_bad_stubs + vector * 16 */

#endif
