// ---------------------------------------------------------------- constants
        .set COM1,              0x3f8
        .set EXIT_PORT,         0xf4            // isa-debug-exit
        .set EXIT_PASS,         0x10            // QEMU status 33
        .set EXIT_FAIL,         0x11            // QEMU status 35
        .set EXIT_NO_HEKI,      0x12            // QEMU status 37
        .set IO_PORT_BENCH,     0x80            // unassigned in microvm: a plain round trip



        .set LAPIC,             0xfee00000
        .set LAPIC_ID,          LAPIC + 0x20
        .set LAPIC_SVR,         LAPIC + 0xf0
        .set LAPIC_ICR_LO,      LAPIC + 0x300
        .set LAPIC_ICR_HI,      LAPIC + 0x310
        .set ICR_ALL_BUT_SELF,  3 << 18
        .set ICR_INIT,          ICR_ALL_BUT_SELF | (1 << 14) | (5 << 8)
        .set ICR_SIPI,          ICR_ALL_BUT_SELF | (1 << 14) | (6 << 8)
        .set ICR_BUSY,          1 << 12
        .set MSR_APIC_BASE,     0x1b
        .set MSR_KVM_SYSTEM_TIME_NEW, 0x4b564d01

        .set TRAMP_BASE,        0x8000          // below 1 MiB, 4 KiB aligned: SIPI vector 0x08
        .set MAX_CPUS,          32
        .set STACK_SHIFT,       12
        .set STACK_SIZE,        1 << STACK_SHIFT

        .set CODE_SEL,          0x08
        .set DATA_SEL,          0x10

        // scenario numbers (index into scenario_names)
        .set SC_PIN_DENY,       0
        .set SC_PIN_ONLY,       1
        .set SC_WEAK,           2
        .set SC_BAD_PINS,       3
        .set SC_UNPINNED,       4
        .set SC_STORM,          5
        .set SC_BENCH,          6
        .set SC_NO_PIN,         7
        .set SC_PIN_WAIT,       8
        .set SC_OS_BOOT,        9       // os-boot.S
        .set SC_OS_REBOOT,      10

        // per-vCPU record, 64 bytes, written only by its own vCPU
        .set PC_GP,             0       // #GP(0) taken at the Heki port
        .set PC_DENIED,         4       // denied writes made
        .set PC_NOFAULT,        8       // denied writes that did not fault
        .set PC_LOST,           12      // times a pinned bit was found cleared
        .set PC_ALLOWED,        16      // allowed write: 0 not made, 1 applied, 2 not applied
        .set PC_PROGRESS,       20      // bumped per operation (watchdog)
        .set PC_APIC_ID,        24
        .set PC_UNPINNED,       28      // unpinned writes applied
        .set PC_UNPINNED_BAD,   32      // unpinned writes not applied or faulted
        .set PC_SHIFT,          6

        .set BENCH_BATCHES,     100

// ---------------------------------------------------------------- macros
// The Heki trigger: exactly `e6 e5`, the encoding the emulator and the #GP
// handler look for.
.macro HEKI_OUT
        outb    %al, $EMU_PORT
.endm

// Heki hypercall: eax = result (0, 1, -22, or 13 unchanged without emulator).
.macro HEKI_HC reg, bits, flags
        movl    $FK_KVM_HC_LOCK_CR_UPDATE, %eax
        movl    \reg, %ebx
        movl    \bits, %ecx
        movl    \flags, %edx
        HEKI_OUT
.endm

// Checked CR write through the port: op is EMU_OP_WRITE_CR0/EMU_OP_WRITE_CR4, value in ebx.
.macro HEKI_MOV_CR op
        movl    $\op, %eax
        HEKI_OUT
.endm

.macro PUTS str
        .pushsection .rodata.str, "a"
.Lputs\@: .asciz "\str"
        .popsection
        pushl   $.Lputs\@
        call    puts_stk
.endm

.macro PUTSP ptr                        // string at an address (register or memory)
        pushl   \ptr
        call    puts_stk
.endm

.macro PUTHEX val
        pushl   \val
        call    put_hex_stk
.endm

.macro PUTDEC val
        pushl   \val
        call    put_dec_stk
.endm

.macro LINE_BEGIN
        call    line_begin
.endm

.macro LINE_END
        call    line_end
.endm

.macro LINE str                         // a whole line of constant text
        LINE_BEGIN
        PUTS    "\str"
        LINE_END
.endm

// Records a failure (first reason wins); the run goes on so the report is whole.
.macro FAIL reason
        .pushsection .rodata.str, "a"
.Lfail\@: .asciz "\reason"
        .popsection
        pushl   $.Lfail\@
        call    record_fail
.endm

// Fails and ends the run at once (result line, exit 0x11).
.macro DIE reason
        FAIL    "\reason"
        jmp     finish
.endm
