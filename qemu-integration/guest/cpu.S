// ---------------------------------------------------------------- CPU features, TSC, native CRs
detect_features:
        pusha
        xorl    %eax, %eax
        cpuid
        movl    %eax, %esi                      // max basic leaf
        movl    $1, %eax
        cpuid
        testl   $1 << 13, %edx                  // PGE: the harmless bit the allowed write toggles
        jz      1f
        movl    $FK_CR4_PGE, cr4_toggle
1:      cmpl    $7, %esi
        jb      3f
        movl    $7, %eax
        xorl    %ecx, %ecx
        cpuid
        testl   $1 << 7, %ebx
        jz      2f
        orl     $FK_CR4_SMEP, want_cr4
2:      testl   $1 << 20, %ebx
        jz      3f
        orl     $FK_CR4_SMAP, want_cr4
3:      call    detect_tsc_khz
        popa
        ret

// TSC frequency, for bounded waits and to read the bench: KVM's kvmclock
// scale if offered (what Linux's pvclock_tsc_khz does), else CPUID 0x15,
// else an assumed 2 GHz (waits then are only approximate).
detect_tsc_khz:
        movl    $0x40000000, %eax
        cpuid
        cmpl    $0x4b4d564b, %ebx               // "KVMKVMKVM\0\0\0"
        jne     .Ltsc_leaf15
        cmpl    $0x564b4d56, %ecx
        jne     .Ltsc_leaf15
        movl    $0x40000001, %eax
        cpuid
        testl   $1 << 3, %eax                   // KVM_FEATURE_CLOCKSOURCE2
        jz      .Ltsc_leaf15
        movl    $MSR_KVM_SYSTEM_TIME_NEW, %ecx
        movl    $pvclock, %eax
        orl     $1, %eax                        // enable
        xorl    %edx, %edx
        wrmsr
        xorl    %eax, %eax                      // off again: no writes into our memory later
        wrmsr
        movl    pvclock + 24, %ecx              // tsc_to_system_mul
        testl   %ecx, %ecx
        jz      .Ltsc_leaf15
        movl    $1000000, %edx                  // (10^6 << 32) / mul
        xorl    %eax, %eax
        cmpl    %ecx, %edx
        jae     .Ltsc_leaf15                    // quotient would not fit
        divl    %ecx
        movsbl  pvclock + 28, %ecx              // tsc_shift
        testl   %ecx, %ecx
        js      1f
        shrl    %cl, %eax
        jmp     2f
1:      negl    %ecx
        shll    %cl, %eax
2:      movl    %eax, tsc_khz
        movl    $tsc_src_kvmclock, tsc_source
        ret
.Ltsc_leaf15:
        xorl    %eax, %eax
        cpuid
        cmpl    $0x15, %eax
        jb      .Ltsc_assume
        movl    $0x15, %eax
        cpuid
        testl   %eax, %eax
        jz      .Ltsc_assume
        testl   %ecx, %ecx
        jz      .Ltsc_assume
        movl    %eax, %esi                      // khz = crystal_hz / 1000 * ebx / eax
        movl    %ecx, %eax
        xorl    %edx, %edx
        movl    $1000, %ecx
        divl    %ecx
        mull    %ebx
        divl    %esi
        movl    %eax, tsc_khz
        movl    $tsc_src_cpuid15, tsc_source
        ret
.Ltsc_assume:
        movl    $2000000, tsc_khz
        movl    $tsc_src_assumed, tsc_source
        ret

// Every vCPU sets CR0.WP and the supported CR4.SMEP/SMAP natively (a plain
// mov, which the real KVM applies) before anything is pinned, as Linux does.
// CD/NW are cleared: an AP comes out of INIT with caching disabled.
cpu_set_cr:
        pushl   %eax
        movl    %cr0, %eax
        andl    $~(FK_CR0_CD | FK_CR0_NW), %eax
        orl     $FK_CR0_WP, %eax
        movl    %eax, %cr0
        movl    %cr4, %eax
        orl     want_cr4, %eax
        movl    %eax, %cr4
        popl    %eax
        ret

report_features:
        LINE_BEGIN
        PUTS    "cpu-features smep="
        movl    want_cr4, %eax
        andl    $FK_CR4_SMEP, %eax
        call    put_yes_no
        PUTS    " smap="
        movl    want_cr4, %eax
        andl    $FK_CR4_SMAP, %eax
        call    put_yes_no
        PUTS    " pge="
        movl    cr4_toggle, %eax
        call    put_yes_no
        PUTS    " cr0="
        movl    %cr0, %eax
        PUTHEX  %eax
        PUTS    " cr4="
        movl    %cr4, %eax
        PUTHEX  %eax
        PUTS    " tsc-khz="
        PUTDEC  tsc_khz
        PUTS    " tsc-source="
        PUTSP   tsc_source
        LINE_END
        ret
