// heki-guest: a tiny multiboot v1 guest for end-to-end Heki runs under KVM.
//
// 32-bit protected mode, flat segments, no paging, interrupts off throughout.
// It asks the Heki kernel emulator (LD_PRELOADed into QEMU, see
// ../PROTOCOL.md) for pins and checked CR writes with `outb %al,$0xe5`,
// writes its story to COM1 as `heki-guest: key=value ...` lines and ends by
// writing to isa-debug-exit (0xf4): 0x10 pass, 0x11 fail, 0x12 no Heki.
//
// GNU as through cpp (gcc -c on .S): comments are C's, and the numbers the
// guest shares with the emulator come from the headers both include:
// emu_protocol.h (the port, the operations) and heki_x86.h (the hypercall,
// its results, the CR bits). One file per part, in this order:
#include "emu_protocol.h"
#include "heki_x86.h"

#include "defs.S"        // the guest's own constants and macros
#include "boot.S"        // multiboot header, entry (_start), BSP main flow
#include "cmdline.S"     // command line
#include "cpu.S"         // CPU features, TSC frequency, native CR setup
#include "heki.S"        // Heki probe and pins
#include "smp.S"         // SMP: trampoline, AP entry, start and waits
#include "work.S"        // per-vCPU work: denied, allowed and unpinned writes
#include "scenarios.S"   // scenarios: bad-pins, bench
#include "os-boot.S"     // scenarios: os-boot, os-reboot (boots like an OS)
#include "report.S"      // reports and the exit
#include "exceptions.S"  // exceptions: IDT, #GP handler, unexpected vectors
#include "serial.S"      // serial output
#include "data.S"        // data
