/*
 * libkvm-ioctl-trace.so: records every KVM_CHECK_EXTENSION and
 * KVM_ENABLE_CAP a process makes, with the kernel's answer, one line each,
 * into the file named by KVM_IOCTL_TRACE (appended; nothing without it):
 *
 *   check-extension fd=12 target=anon_inode:kvm-vm cap=237 result=1
 *   enable-cap fd=12 target=anon_inode:kvm-vm cap=164 flags=0x0 arg0=0x1 result=0
 *
 * (result: the ioctl's return value, or -errno.)  Preloaded after the Heki
 * kernel emulator (LD_PRELOAD="emu.so this.so"), it sees what reaches the
 * real /dev/kvm; alone, everything the VMM asks.  The e2e tests use it to
 * prove that no Heki capability number was enabled on a stock kernel.
 * Every other ioctl goes straight through.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int (*ioctl_fn)(int, unsigned long, ...);

static ioctl_fn next_ioctl(void)
{
    static ioctl_fn next;
    ioctl_fn fn = __atomic_load_n(&next, __ATOMIC_ACQUIRE);

    if (!fn) {
        /* Every thread finds the same symbol: storing it twice is harmless. */
        fn = (ioctl_fn)dlsym(RTLD_NEXT, "ioctl");
        if (!fn) {
            fprintf(stderr, "kvm-ioctl-trace: dlsym(RTLD_NEXT, ioctl): %s\n",
                    dlerror());
            abort();
        }
        __atomic_store_n(&next, fn, __ATOMIC_RELEASE);
    }
    return fn;
}

/* One write(2) per line, O_APPEND: lines of concurrent threads stay whole. */
static void record(const char *fmt, ...)
{
    static int trace_fd = -1;
    const char *path;
    char line[512];
    va_list ap;
    int len, fd, unset = -1;

    fd = __atomic_load_n(&trace_fd, __ATOMIC_ACQUIRE);
    if (fd < 0) {
        path = getenv("KVM_IOCTL_TRACE");
        if (!path || !*path) {
            return;
        }
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd < 0) {
            /* A trace that silently records nothing would prove nothing. */
            fprintf(stderr, "kvm-ioctl-trace: cannot open %s: %s\n", path,
                    strerror(errno));
            abort();
        }
        if (!__atomic_compare_exchange_n(&trace_fd, &unset, fd, false,
                                         __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            close(fd);   /* another thread opened it first */
            fd = unset;
        }
    }
    va_start(ap, fmt);
    len = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (len > 0 && (size_t)len < sizeof(line)) {
        ssize_t done = write(fd, line, (size_t)len);
        (void)done;
    }
}

static void fd_target(int fd, char *buf, size_t size)
{
    char link[64];
    ssize_t n;

    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    n = readlink(link, buf, size - 1);
    if (n < 0) {
        n = 0;
    }
    buf[n] = '\0';
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == ' ' || buf[i] == '\n') {
            buf[i] = '_';   /* one token per field */
        }
    }
}

__attribute__((visibility("default")))
int ioctl(int fd, unsigned long request, ...)
{
    char target[128];
    va_list ap;
    void *arg;
    int ret, err;

    va_start(ap, request);
    arg = va_arg(ap, void *);
    va_end(ap);

    ret = next_ioctl()(fd, request, arg);
    if (request != KVM_CHECK_EXTENSION && request != KVM_ENABLE_CAP) {
        return ret;
    }
    err = errno;
    fd_target(fd, target, sizeof(target));
    if (request == KVM_CHECK_EXTENSION) {
        record("check-extension fd=%d target=%s cap=%lu result=%d\n", fd,
               target, (unsigned long)(uintptr_t)arg,
               ret < 0 ? -err : ret);
    } else if (arg) {
        const struct kvm_enable_cap *cap = arg;
        record("enable-cap fd=%d target=%s cap=%u flags=0x%x arg0=0x%llx "
               "result=%d\n", fd, target, cap->cap, cap->flags,
               (unsigned long long)cap->args[0], ret < 0 ? -err : ret);
    }
    errno = err;
    return ret;
}
