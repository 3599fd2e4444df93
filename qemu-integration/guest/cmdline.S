// ---------------------------------------------------------------- command line
// `-append` arrives as the multiboot command line, after the image path that
// QEMU's loader (like GRUB) puts first; that first word is skipped.
// Tokens: scenario=NAME cpus=N writes=K iters=N idle-ms=N; anything else
// fails the run.
parse_cmdline:
        movl    $SC_PIN_DENY, scenario
        movl    $1, cpus
        movl    $3, writes
        movl    $100000, iters
        movl    $1000, idle_ms
        movl    mb_info, %ebx
        testl   $1 << 2, (%ebx)                 // flags.cmdline
        jz      .Lpc_done
        movl    16(%ebx), %esi
        call    skip_spaces
        call    skip_token
.Lpc_next:
        call    skip_spaces
        cmpb    $0, (%esi)
        je      .Lpc_done
        movl    %esi, token
        movl    $key_scenario, %edi
        call    match_prefix
        je      .Lpc_scenario
        movl    $key_cpus, %edi
        call    match_prefix
        je      .Lpc_cpus
        movl    $key_writes, %edi
        call    match_prefix
        je      .Lpc_writes
        movl    $key_iters, %edi
        call    match_prefix
        je      .Lpc_iters
        movl    $key_idle_ms, %edi
        call    match_prefix
        je      .Lpc_idle_ms
        LINE_BEGIN
        PUTS    "error=unknown-token token="
        call    put_token
        LINE_END
        DIE     "bad-cmdline"
.Lpc_scenario:
        xorl    %edx, %edx
1:      movl    scenario_names(,%edx,4), %edi
        testl   %edi, %edi
        jz      .Lpc_bad_scenario
        pushl   %esi
        call    match_word
        popl    %esi
        je      2f
        incl    %edx
        jmp     1b
2:      movl    %edx, scenario
        call    skip_token
        jmp     .Lpc_next
.Lpc_bad_scenario:
        LINE_BEGIN
        PUTS    "error=unknown-scenario token="
        call    put_token
        LINE_END
        DIE     "bad-cmdline"
.Lpc_cpus:
        call    parse_dec
        jc      .Lpc_bad_number
        testl   %eax, %eax
        jz      .Lpc_bad_cpus
        cmpl    $MAX_CPUS, %eax
        ja      .Lpc_bad_cpus
        movl    %eax, cpus
        jmp     .Lpc_next
.Lpc_writes:
        call    parse_dec
        jc      .Lpc_bad_number
        movl    %eax, writes
        jmp     .Lpc_next
.Lpc_iters:
        call    parse_dec
        jc      .Lpc_bad_number
        testl   %eax, %eax
        jz      .Lpc_bad_number
        movl    %eax, iters
        jmp     .Lpc_next
.Lpc_idle_ms:
        call    parse_dec
        jc      .Lpc_bad_number
        movl    %eax, idle_ms
        jmp     .Lpc_next
.Lpc_bad_cpus:
        LINE_BEGIN
        PUTS    "error=cpus-out-of-range max="
        PUTDEC  $MAX_CPUS
        PUTS    " token="
        call    put_token
        LINE_END
        DIE     "bad-cmdline"
.Lpc_bad_number:
        LINE_BEGIN
        PUTS    "error=bad-number token="
        call    put_token
        LINE_END
        DIE     "bad-cmdline"
.Lpc_done:
        ret

// esi at a token; edi = prefix. Match: ZF=1, esi past the prefix; else esi kept.
match_prefix:
        pushl   %esi
        pushl   %eax
1:      movb    (%edi), %al
        testb   %al, %al
        jz      2f
        cmpb    (%esi), %al
        jne     3f
        incl    %esi
        incl    %edi
        jmp     1b
2:      popl    %eax
        leal    4(%esp), %esp                   // keep the advanced esi; lea keeps ZF=1
        ret
3:      popl    %eax
        popl    %esi
        ret                                     // ZF = 0 from the cmpb

// esi at a word ended by space/tab/nul; edi = nul-terminated name. ZF=1 if equal.
match_word:
        pushl   %eax
1:      movb    (%esi), %al
        cmpb    $0, (%edi)
        je      2f
        cmpb    (%edi), %al
        jne     3f
        incl    %esi
        incl    %edi
        jmp     1b
2:      call    is_end                          // name done: the word must end too
3:      popl    %eax
        ret

// ZF=1 if al ends a token (nul, space, tab).
is_end:
        testb   %al, %al
        je      1f
        cmpb    $' ', %al
        je      1f
        cmpb    $'\t', %al
1:      ret

skip_spaces:
1:      movb    (%esi), %al
        cmpb    $' ', %al
        je      2f
        cmpb    $'\t', %al
        jne     3f
2:      incl    %esi
        jmp     1b
3:      ret

skip_token:
1:      movb    (%esi), %al
        call    is_end
        je      2f
        incl    %esi
        jmp     1b
2:      ret

// Decimal at esi up to the token's end: eax = value, CF=1 if empty, not a
// number or above 2^32-1. esi is left after the token.
parse_dec:
        pushl   %ebx
        pushl   %ecx
        pushl   %edx
        xorl    %eax, %eax
        xorl    %ecx, %ecx                      // digits seen
1:      movzbl  (%esi), %ebx
        pushl   %eax
        movb    %bl, %al
        call    is_end
        popl    %eax
        je      3f
        subl    $'0', %ebx
        cmpl    $9, %ebx
        ja      4f
        movl    $10, %edx
        mull    %edx
        jc      4f
        addl    %ebx, %eax
        jc      4f
        incl    %ecx
        incl    %esi
        jmp     1b
3:      testl   %ecx, %ecx
        jz      4f
        clc
        jmp     5f
4:      call    skip_token
        stc
5:      popl    %edx
        popl    %ecx
        popl    %ebx
        ret

// Prints the token that starts at `token` (printable ASCII only, at most 64).
put_token:
        pusha
        movl    token, %esi
        movl    $64, %ecx
1:      movb    (%esi), %al
        call    is_end
        je      3f
        cmpb    $0x21, %al
        jb      2f
        cmpb    $0x7e, %al
        jbe     4f
2:      movb    $'?', %al
4:      call    serial_putc
        incl    %esi
        loop    1b
3:      popa
        ret

report_config:
        LINE_BEGIN
        PUTS    "config scenario="
        movl    scenario, %eax
        movl    scenario_names(,%eax,4), %eax
        PUTSP   %eax
        PUTS    " cpus="
        PUTDEC  cpus
        PUTS    " writes="
        PUTDEC  writes
        PUTS    " iters="
        PUTDEC  iters
        PUTS    " idle-ms="
        PUTDEC  idle_ms
        LINE_END
        ret
