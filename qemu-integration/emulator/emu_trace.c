/*
 * emu_trace.c - HEKI_EMU_TRACE: one line per emulated operation, written
 * with one write(2) on an O_APPEND fd so concurrent vCPU lines never mix.
 */
#include "emu.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int trace_fd = -1;

void emu_trace_open(const char *path) {
    if (!path)
        return;
    trace_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (trace_fd < 0) {
        fprintf(stderr, "heki-kvm-emu: HEKI_EMU_TRACE=%s: %s\n", path, strerror(errno));
        abort();
    }
}

bool emu_trace_on(void) { return trace_fd >= 0; }

/* Finishes a line that starts with n bytes of prefix: the message, clipped
   to the buffer, and a newline; then one write (best effort: a trace or a
   warning never fails the guest). */
static void write_line(int fd, char *line, size_t size, int n,
                       const char *fmt, va_list ap) {
    n += vsnprintf(line + n, size - (size_t)n - 1, fmt, ap);
    if (n > (int)size - 2)
        n = (int)size - 2;
    line[n++] = '\n';
    ssize_t w = write(fd, line, (size_t)n);
    (void)w;
}

void emu_trace(const EmuVcpu *v, const char *fmt, ...) {
    if (trace_fd < 0)
        return;
    char line[256];
    int n = snprintf(line, sizeof line, "vm=%d vcpu=%lu ", v->vm->fd, v->id);
    va_list ap;
    va_start(ap, fmt);
    write_line(trace_fd, line, sizeof line, n, fmt, ap);
    va_end(ap);
}

void emu_warn(const char *fmt, ...) {
    char line[256];
    int n = snprintf(line, sizeof line, "heki-kvm-emu: ");
    va_list ap;
    va_start(ap, fmt);
    write_line(2, line, sizeof line, n, fmt, ap);
    va_end(ap);
}
