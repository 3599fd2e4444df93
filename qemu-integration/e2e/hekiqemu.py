"""Runs the Heki guest in a real QEMU under real KVM, with the Heki kernel
emulator preloaded, and talks QMP to it. Used by the demo and the end-to-end
tests. Standard library only.

Paths come from the environment (qemu-integration/Makefile sets them):
HEKI_QEMU (patched qemu-system-x86_64), HEKI_QEMU_UNPATCHED, HEKI_EMU_LIB
(libheki-kvm-emu.so), HEKI_GUEST (heki-guest.elf), HEKI_PLUGIN
(libHekiPlugin.so), HEKI_IOCTL_TRACE_LIB (libkvm-ioctl-trace.so).
"""

import json
import os
import select
import socket
import subprocess
import tempfile
import time

GUEST_PASS = 33      # isa-debug-exit: (0x10 << 1) | 1
GUEST_FAIL = 35      # (0x11 << 1) | 1
GUEST_NO_HEKI = 37   # (0x12 << 1) | 1


def path_from_env(name):
    value = os.environ.get(name)
    if not value or not os.path.exists(value):
        raise RuntimeError(f"{name} must name an existing file (got {value!r}); "
                           "run through `make -C qemu-integration test`")
    return value


class QMP:
    """A minimal QMP client: commands in order, events kept as they come."""

    def __init__(self, path, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no QMP socket at {path}")
                time.sleep(0.02)
        self.buffer = b""
        self.events = []
        self.closed = False
        # QEMU can write an event emitted while it accepts the connection
        # ahead of the greeting (the plugin's startup HEKI_CAPABILITY events
        # go out on the main loop's first turns): keep such events.
        greeting = self._read_message(timeout)
        while "event" in greeting:
            self.events.append(greeting)
            greeting = self._read_message(timeout)
        assert "QMP" in greeting, greeting
        self.command("qmp_capabilities")

    def _read_message(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("QMP: no message")
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                continue
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""   # QEMU exited with our bytes unread: closed too
            if not chunk:
                self.closed = True
                raise EOFError("QMP: connection closed")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def command(self, name, timeout=10.0, **arguments):
        message = {"execute": name}
        if arguments:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = self._read_message(timeout)
            if "event" in reply:
                self.events.append(reply)
                continue
            return reply

    def wait_event(self, predicate, timeout=10.0):
        """The first event (seen before or now) for which predicate holds."""
        for event in self.events:
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("QMP: the awaited event did not come")
            reply = self._read_message(left)
            if "event" in reply:
                self.events.append(reply)
                if predicate(reply):
                    return reply

    def wait_heki(self, name, timeout=10.0):
        """The data of the first HEKI_EVENT of that name."""
        event = self.wait_event(lambda e: e["event"] == "HEKI_EVENT" and
                                e["data"]["name"] == name, timeout)
        return event["data"]["data"]

    def wait_events(self, predicate, count, timeout=10.0):
        """Waits until `count` events (seen before or now) satisfy predicate."""
        deadline = time.monotonic() + timeout
        while sum(1 for e in self.events if predicate(e)) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"QMP: fewer than {count} awaited events")
            reply = self._read_message(left)
            if "event" in reply:
                self.events.append(reply)

    def drain(self, timeout=10.0):
        """Reads events until QEMU closes the connection."""
        try:
            while True:
                reply = self._read_message(timeout)
                if "event" in reply:
                    self.events.append(reply)
        except EOFError:
            pass

    def heki_events(self, name=None):
        found = [e["data"] for e in self.events if e["event"] == "HEKI_EVENT"]
        return [e for e in found if name is None or e["name"] == name]

    def close(self):
        self.sock.close()


def parse_guest(text):
    """The guest's `heki-guest: key=value ...` lines as dicts, in order."""
    lines = []
    for raw in text.splitlines():
        if not raw.startswith("heki-guest:"):
            continue
        fields = {}
        for token in raw[len("heki-guest:"):].split():
            key, _, value = token.partition("=")
            fields[key] = value
        lines.append(fields)
    return lines


class Run:
    """One QEMU process running the guest."""

    def __init__(self, *, heki=None, scenario="pin-deny", cpus=1, extra_append="",
                 unpatched=False, emulator=True, emulator_env=None, qmp=True,
                 start_paused=True, extra_args=(), ioctl_trace=None, audit=False):
        """ioctl_trace: record KVM_CHECK_EXTENSION and KVM_ENABLE_CAP
        (read them with ioctls()): "kernel" = what reaches the real /dev/kvm
        (preloaded after the emulator), "vmm" = what QEMU asks (before it);
        the same without the emulator.
        audit: the plugin writes an audit log (read it with audit_events()):
        the events of the kernel check come before QMP's client is connected,
        so only the audit log has them all."""
        self.dir = tempfile.mkdtemp(prefix="heki-e2e-")
        self.serial_path = os.path.join(self.dir, "serial.log")
        self.qmp_path = os.path.join(self.dir, "qmp.sock")
        self.trace_path = os.path.join(self.dir, "ioctl.trace")
        qemu = path_from_env("HEKI_QEMU_UNPATCHED" if unpatched else "HEKI_QEMU")
        append = f"scenario={scenario} cpus={cpus} {extra_append}".strip()
        args = [qemu, "-M", "microvm", "-accel", "kvm",
                "-cpu", "host,-arch-capabilities", "-m", "64", "-smp", str(cpus),
                "-nodefaults", "-nographic", "-no-user-config",
                "-L", "/usr/share/qemu",
                "-serial", f"file:{self.serial_path}",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
                "-kernel", path_from_env("HEKI_GUEST"), "-append", append]
        if qmp:
            args += ["-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        if start_paused:
            args += ["-S"]
        self.audit_path = os.path.join(self.dir, "audit.jsonl")
        if audit:
            heki = dict(heki or {}, **{"audit-log": self.audit_path})
        if heki is not None:
            options = ",".join([f"file={path_from_env('HEKI_PLUGIN')}"] +
                               [f"{k}={v}" for k, v in heki.items()])
            args += ["-heki", options]
        args += list(extra_args)
        env = dict(os.environ)
        preload = [path_from_env("HEKI_EMU_LIB")] if emulator else []
        if ioctl_trace is not None:
            assert ioctl_trace in ("kernel", "vmm"), ioctl_trace
            tracer = path_from_env("HEKI_IOCTL_TRACE_LIB")
            # The first library's ioctl is the one QEMU calls; each passes
            # on to the next (RTLD_NEXT), the last to libc.
            preload.insert(len(preload) if ioctl_trace == "kernel" else 0, tracer)
            env["KVM_IOCTL_TRACE"] = self.trace_path
        if preload:
            env["LD_PRELOAD"] = " ".join(preload)
        env.update(emulator_env or {})
        self.args = args
        self.process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.qmp = None
        if qmp:
            try:
                self.qmp = QMP(self.qmp_path)
            except Exception:
                self.process.kill()
                out, err = self.process.communicate()
                raise RuntimeError(f"QEMU did not start: {err.strip()}")
        self.stdout = self.stderr = None

    def start(self):
        assert self.qmp.command("cont") == {"return": {}}

    def status(self):
        return self.qmp.command("query-status")["return"]["status"]

    def wait(self, timeout=60):
        """Waits for QEMU to exit; returns its status. Reads the rest of QMP."""
        if self.qmp is not None:
            self.qmp.drain(timeout)
        try:
            self.stdout, self.stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.stdout, self.stderr = self.process.communicate()
            raise
        return self.process.returncode

    def quit(self, timeout=30):
        self.qmp.command("quit")
        return self.wait(timeout)

    def guest(self):
        return parse_guest(self.guest_text())

    def guest_text(self):
        with open(self.serial_path, errors="replace") as f:
            return f.read()

    def per_cpu(self):
        """The guest's per-vCPU summaries: cpu=I denied-writes=K gp=G ..."""
        return [l for l in self.guest()
                if "cpu" in l and "denied-writes" in l and "result" not in l]

    def audit_events(self, name=None):
        """The audit log's events as heki_events() gives QMP's: dicts with
        "name" and "data". Complete once QEMU has exited."""
        with open(self.audit_path) as f:
            found = [{"name": l["event"], "data": l["data"]}
                     for l in map(json.loads, f)]
        return [e for e in found if name is None or e["name"] == name]

    def ioctls(self):
        """The recorded ioctls, in order: dicts with "op" ("check-extension"
        or "enable-cap") and the integer fields of the trace line."""
        calls = []
        with open(self.trace_path) as f:
            for line in f:
                op, *fields = line.split()
                call = {"op": op}
                for field in fields:
                    key, _, value = field.partition("=")
                    call[key] = value if key == "target" else int(value, 0)
                calls.append(call)
        return calls

    def guest_result(self):
        results = [line for line in self.guest() if "result" in line]
        return results[-1] if results else None

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()
        if self.qmp is not None:
            self.qmp.close()


def startup_failure(heki, emulator_env=None, timeout=30):
    """Runs QEMU that is expected to stop at startup: (status, stderr)."""
    run = Run(heki=heki, qmp=False, start_paused=True, emulator_env=emulator_env)
    try:
        status = run.wait(timeout)
        return status, run.stderr
    finally:
        run.close()


def hex_int(text):
    return int(text, 16) if isinstance(text, str) else int(text)
