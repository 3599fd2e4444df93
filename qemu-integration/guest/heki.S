// ---------------------------------------------------------------- Heki probe and pins
// Version query: eax 1 = a Heki kernel (the emulator); 13 unchanged = nothing
// behind the port; -1000 = a kernel without Heki. The last two exit 0x12.
heki_probe:
        HEKI_HC $0, $0, $FK_KVM_LOCK_CR_UPDATE_VERSION
        cmpl    $1, %eax
        je      .Lprobe_present
        cmpl    $FK_KVM_HC_LOCK_CR_UPDATE, %eax
        je      .Lprobe_no_emulator
        cmpl    $FK_KVM_ENOSYS_NEG32, %eax
        je      .Lprobe_enosys
        pushl   %eax
        LINE_BEGIN
        PUTS    "heki=unexpected version-rax="
        call    put_hex_stk                     // the pushed eax
        LINE_END
        DIE     "bad-version-answer"
.Lprobe_present:
        LINE    "heki=present version=1"
        ret
.Lprobe_no_emulator:
        LINE    "heki=absent reason=port-unassigned"
        movb    $EXIT_NO_HEKI, %al
        jmp     exit_qemu
.Lprobe_enosys:
        LINE    "heki=absent reason=enosys"
        movb    $EXIT_NO_HEKI, %al
        jmp     exit_qemu

// Pins CR0.WP. Fails the run unless the answer is 0.
pin_cr0_wp:
        HEKI_HC $0, $FK_CR0_WP, $0
        pushl   %eax
        LINE_BEGIN
        PUTS    "pin cr=0 bits="
        PUTHEX  $FK_CR0_WP
        PUTS    " rax="
        PUTHEX  (%esp)
        LINE_END
        popl    %eax
        testl   %eax, %eax
        jz      1f
        FAIL    "pin-cr0-rejected"
        ret
1:      orl     $FK_CR0_WP, pins_cr0
        ret

// Pins the supported subset of CR4.SMEP|SMAP (skipped when there is none).
pin_cr4:
        movl    want_cr4, %esi
        testl   %esi, %esi
        jnz     1f
        LINE    "pin cr=4 skipped=no-smep-or-smap"
        ret
1:      HEKI_HC $4, %esi, $0
        pushl   %eax
        LINE_BEGIN
        PUTS    "pin cr=4 bits="
        PUTHEX  %esi
        PUTS    " rax="
        PUTHEX  (%esp)
        LINE_END
        popl    %eax
        testl   %eax, %eax
        jz      2f
        FAIL    "pin-cr4-rejected"
        ret
2:      orl     %esi, pins_cr4
        ret

// What the BSP does before releasing the APs.
scenario_prepare:
        xorl    %eax, %eax                      // storm: no per-write lines
        cmpl    $SC_STORM, scenario
        sete    %al
        movl    %eax, quiet
        movl    scenario, %eax
        jmp     *prepare_table(,%eax,4)
prepare_pins:                                   // pin-deny, pin-only, storm, bench
        call    pin_cr0_wp
        call    pin_cr4
        jmp     choose_deny_bit
prepare_weak:
        call    pin_cr4
        jmp     choose_deny_bit
prepare_none:
        ret

// The CR4 bit a denied CR4 write clears: SMEP if pinned, else SMAP, else none
// (then every denied write goes to CR0).
choose_deny_bit:
        movl    pins_cr4, %eax
        testl   $FK_CR4_SMEP, %eax
        jz      1f
        movl    $FK_CR4_SMEP, deny_cr4_bit
        ret
1:      andl    $FK_CR4_SMAP, %eax
        movl    %eax, deny_cr4_bit
        ret
