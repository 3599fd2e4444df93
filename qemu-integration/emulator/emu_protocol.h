/*
 * emu_protocol.h - how a guest asks the emulator for a Heki operation
 * (../PROTOCOL.md): one byte written to a port, the operation in rax.
 * Shared by the emulator, its self-test guest and heki-guest
 * (../guest/), so the numbers are written once.  Plain #defines: included
 * by C and by assembly run through cpp.  The hypercall itself and the CR
 * bits are the kernel's (heki_x86.h, FK_*).
 */
#ifndef HEKI_EMU_PROTOCOL_H
#define HEKI_EMU_PROTOCOL_H

#define EMU_PORT 0xe5             /* outb %al, $0xe5 (encoded e6 e5) */
#define EMU_OUT_LENGTH 2          /* the bytes of that OUT: a #GP handler skips them */
#define EMU_OP_WRITE_CR0 0x100    /* rax: mov %rbx, %cr0, checked */
#define EMU_OP_WRITE_CR4 0x104    /* rax: mov %rbx, %cr4, checked */
#define EMU_HYPERCALL_LIMIT 0x100 /* rax below: a hypercall number (FK_KVM_HC_*) */

#endif /* HEKI_EMU_PROTOCOL_H */
