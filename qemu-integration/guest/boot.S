// ---------------------------------------------------------------- multiboot header
        .section .multiboot, "a"
        .balign 4
        .set MB_MAGIC, 0x1badb002
        .set MB_FLAGS, 0
        .long MB_MAGIC
        .long MB_FLAGS
        .long -(MB_MAGIC + MB_FLAGS)

// ---------------------------------------------------------------- entry, BSP main flow
        .text
        .code32
        .globl _start
_start:
        // multiboot: eax = magic, ebx = info, flat segments, IF = 0. No stack yet.
        cli
        cld
        movl    %eax, %ebp
        movl    $__bss_start, %edi              // a reset re-runs this: start from zero
        movl    $__bss_end, %ecx
        subl    %edi, %ecx
        xorl    %eax, %eax
        rep stosb
        lgdt    gdtr
        ljmp    $CODE_SEL, $1f
1:      movw    $DATA_SEL, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %fs
        movw    %ax, %gs
        movw    %ax, %ss
        movl    $stacks + STACK_SIZE, %esp      // cpu 0's stack
        movl    %ebp, mb_magic
        movl    %ebx, mb_info

        call    serial_init
        LINE    "boot"                          // first line of every boot
        call    idt_init
        lidt    idtr

        cmpl    $0x2badb002, mb_magic
        je      1f
        DIE     "not-multiboot"
1:      call    parse_cmdline
        call    report_config
        call    detect_features
        call    cpu_set_cr
        call    report_features
        call    heki_probe                      // exits 0x12 when there is no Heki
        call    smp_start                       // APs up, parked until `go`
        call    scenario_prepare                // pins, bad-pins cases
        movl    $1, go
        xorl    %edi, %edi
        call    cpu_work                        // the BSP works like any vCPU
        lock incl cpus_done
        call    smp_wait_done
        call    scenario_report
        jmp     finish
