// ---------------------------------------------------------------- scenarios: os-boot, os-reboot
// A guest that boots like an OS. Firmware entering protected mode and
// Linux's startup_32 write CR0 without WP long before the kernel sets WP and
// pins it; here that early write goes through the port, so the Heki kernel
// checks it. On a fresh VM nothing is pinned yet and it is applied. After a
// reset in place of a pinned VM (the RFC: pins survive) it is denied: the
// boot fails in its first instructions (`os-boot early-cr0 ... applied=no`,
// result=fail reason=early-boot-cr0-denied; a real firmware without a #GP
// handler would triple-fault). Then WP back natively, both pins, every vCPU
// makes `writes` denied writes as pin-deny does (writes=0: none), and the
// BSP stays up `idle-ms` (time for a QMP system_reset of a pinned VM).
// os-boot then finishes (exit 0x10); os-reboot reboots itself with a triple
// fault instead (an empty IDT, then ud2: #UD, #GP, #DF cannot be delivered),
// which KVM reports as KVM_EXIT_SHUTDOWN and QEMU turns into a guest reset.
prepare_os_boot:
        movl    %cr0, %esi                      // what the kernel will set again
        movl    %esi, %ebx
        andl    $~FK_CR0_WP, %ebx               // early boot's CR0: no WP
        movl    percpu + PC_GP, %edi
        HEKI_MOV_CR EMU_OP_WRITE_CR0
        movl    %cr0, %eax
        movl    percpu + PC_GP, %ecx
        subl    %edi, %ecx                      // #GPs the write raised
        xorl    %edx, %edx
        cmpl    %ebx, %eax
        sete    %dl                             // applied
        pushl   %edx
        LINE_BEGIN
        PUTS    "os-boot early-cr0 value="
        PUTHEX  %ebx
        PUTS    " read-back="
        PUTHEX  %eax
        PUTS    " gp="
        PUTDEC  %ecx
        PUTS    " applied="
        movl    (%esp), %eax
        call    put_yes_no
        LINE_END
        popl    %edx
        testl   %edx, %edx
        jnz     1f
        DIE     "early-boot-cr0-denied"
1:      movl    %esi, %cr0                      // WP on, natively, as the kernel does
        jmp     prepare_pins

os_work:
        call    deny_writes
        jmp     work_idle

// os-reboot's report: instead of finishing, the guest reboots itself.
report_os_reboot:
        call    report_deny
        cmpl    $0, fail_count
        je      1f
        ret                                     // a failed run finishes as usual
1:      LINE    "os-reboot reboot method=triple-fault"
        lidt    idt_empty
        ud2
        jmp     .                               // not reached: the VM resets

        .section .rodata
        .balign 4
idt_empty:
        .word 0
        .long 0
        .text
