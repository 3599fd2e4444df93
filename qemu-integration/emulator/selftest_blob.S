/* The guest's flat binary, embedded into the self-test. */
    .section .rodata
    .globl guest_blob, guest_blob_end
    .balign 16
guest_blob:
    .incbin "guest.bin"
guest_blob_end:
    .section .note.GNU-stack, "", @progbits
