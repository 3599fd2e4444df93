"""Runs the Heki guest in a real QEMU under real KVM, with the Heki kernel
emulator preloaded, and talks QMP to it with QEMU's own client (qemu.qmp,
from PyPI, in the venv qemu-integration/Makefile creates). Used by the demo
and the end-to-end tests.

Paths come from the environment (qemu-integration/Makefile sets them):
HEKI_QEMU (patched qemu-system-x86_64), HEKI_QEMU_UNPATCHED, HEKI_EMU_LIB
(libheki-kvm-emu.so), HEKI_GUEST (heki-guest.elf), HEKI_PLUGIN
(libHekiPlugin.so), HEKI_IOCTL_TRACE_LIB (libkvm-ioctl-trace.so).
"""

import asyncio
import json
import os
import subprocess
import tempfile
import threading

from qemu.qmp import ConnectError, EventListener, ExecuteError, QMPClient
from qemu.qmp.protocol import Runstate

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
    """qemu.qmp's QMPClient on an asyncio loop of its own thread, for
    synchronous tests: commands in order; every event, as QMP sent it (a
    dict with "event", "data", "timestamp"), kept in arrival order through
    one EventListener."""

    def __init__(self, path, timeout=10.0):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client = QMPClient("heki-e2e")
        self.listener = EventListener()
        self.client.register_listener(self.listener)
        self.events = []
        self._run(self._connect(path, timeout), timeout + 1)

    def _run(self, coroutine, timeout):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _connect(self, path, timeout):
        deadline = self.loop.time() + timeout
        while True:
            try:
                await self.client.connect(path)
                return
            except ConnectError:
                if self.loop.time() > deadline:
                    raise TimeoutError(f"no QMP socket at {path}")
                await asyncio.sleep(0.02)

    def _collect(self):
        """(loop thread) Moves the listener's pending events to self.events."""
        self.events.extend(dict(e) for e in self.listener.clear())

    async def _wait(self, predicate, count, timeout):
        deadline = self.loop.time() + timeout
        while True:
            self._collect()
            found = [e for e in self.events if predicate(e)]
            if len(found) >= count:
                return found
            left = deadline - self.loop.time()
            if left <= 0:
                raise TimeoutError(f"QMP: fewer than {count} awaited events")
            try:
                self.events.append(dict(await asyncio.wait_for(self.listener.get(), left)))
            except asyncio.TimeoutError:
                pass

    def command(self, name, timeout=10.0, **arguments):
        """The command's return value; a QMP error raises ExecuteError."""
        return self._run(self.client.execute(name, arguments or None), timeout)

    def error(self, name, timeout=10.0, **arguments):
        """The QMP error of a command expected to fail: (class, desc)."""
        try:
            self.command(name, timeout, **arguments)
        except ExecuteError as e:
            return e.error_class, str(e)
        raise AssertionError(f"{name} did not fail")

    def wait_event(self, predicate, timeout=10.0):
        """The first event (seen before or now) for which predicate holds."""
        return self._run(self._wait(predicate, 1, timeout), timeout + 1)[0]

    def wait_events(self, predicate, count, timeout=10.0):
        """Waits until `count` events (seen before or now) satisfy predicate."""
        self._run(self._wait(predicate, count, timeout), timeout + 1)

    def wait_heki(self, name, timeout=10.0):
        """The data of the first event of that name."""
        return self.wait_event(lambda e: e["event"] == name, timeout)["data"]

    async def _drain(self, timeout):
        # Polled: runstate_changed() misses a change made before its task
        # starts waiting (wait_for schedules it a turn later).
        deadline = self.loop.time() + timeout
        while self.client.runstate == Runstate.RUNNING:
            if self.loop.time() > deadline:
                raise TimeoutError("QMP: QEMU did not close the connection")
            await asyncio.sleep(0.01)
        try:
            await self.client.disconnect()
        except (EOFError, OSError):
            pass   # QEMU hung up: what it sent before is in the listener
        self._collect()

    def drain(self, timeout=10.0):
        """Reads events until QEMU closes the connection."""
        self._run(self._drain(timeout), timeout + 1)

    def heki_events(self, name=None):
        """The Heki events as {"name", "data"}, as audit_events() gives."""
        self._run(self._collect_async(), 5)
        return [{"name": e["event"], "data": e["data"]} for e in self.events
                if e["event"].startswith("HEKI_") and name in (None, e["event"])]

    async def _collect_async(self):
        self._collect()

    def all(self):
        """Every event so far, in order (those that came since included)."""
        self._run(self._collect_async(), 5)
        return self.events

    def names(self):
        """The names of all events so far, in order."""
        self._run(self._collect_async(), 5)
        return [e["event"] for e in self.events]

    def close(self):
        try:
            self._run(self.client.disconnect(), 5)
        except Exception:
            pass   # already gone with QEMU
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def parse_guest(text):
    """The guest's `heki-guest: key=value ...` lines as dicts, in order.

    A reset or a quit can cut a line: the vCPU runs on until the main loop
    resets the machine, so the next boot's first line may follow a partial
    one on the same line of the serial log, and the log's last line may
    stop in the middle of a value (`applied=n`). The guest ends every line
    with a newline, so only terminated lines count, each taken from its
    last `heki-guest:` on; the partial one before it is dropped.
    """
    lines = []
    for raw in text.split("\n")[:-1]:
        start = raw.rfind("heki-guest:")
        if start < 0:
            continue
        raw = raw[start:]
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
                 start_paused=True, extra_args=(), ioctl_trace=None, audit=False,
                 alias=False):
        """heki: the plugin's options ({"on-denial": "pause"}), given as the
        accelerator's properties (-accel kvm,heki=PLUGIN,heki-on-denial=pause),
        or with alias=True as -heki file=PLUGIN,on-denial=pause.
        ioctl_trace: record KVM_CHECK_EXTENSION and KVM_ENABLE_CAP
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
        self.audit_path = os.path.join(self.dir, "audit.jsonl")
        if audit:
            heki = dict(heki or {}, **{"audit-log": self.audit_path})
        accel = "kvm"
        if heki is not None and not alias:
            accel = ",".join([f"kvm,heki={qemu_opt(path_from_env('HEKI_PLUGIN'))}"] +
                             [f"heki-{k}={qemu_opt(v)}" for k, v in heki.items()])
        args = [qemu, "-M", "microvm", "-accel", accel,
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
        if heki is not None and alias:
            options = ",".join([f"file={qemu_opt(path_from_env('HEKI_PLUGIN'))}"] +
                               [f"{k}={qemu_opt(v)}" for k, v in heki.items()])
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
        self.qmp.command("cont")

    def status(self):
        return self.qmp.command("query-status")["status"]

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


def qemu_opt(value):
    """A value inside QemuOpts: a comma is doubled."""
    return str(value).replace(",", ",,")


def typed(data, member=""):
    """The plugin's JSON (audit log) as QEMU types it for QMP (heki.c's
    heki_adapt): "0x..." strings are integers, null members absent, "vcpu"
    is "cpu-index" (QMP adds "qom-path"), the maps "answers" and
    "suppressed" are lists sorted by key."""
    maps = {"answers": ("capability", "answer"), "suppressed": ("event", "count")}
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            if value is None:
                continue
            if key in maps and isinstance(value, dict):
                k, v = maps[key]
                items = sorted(value.items(), key=lambda kv: (len(kv[0]), kv[0])
                               if kv[0].isdigit() else (0, kv[0]))
                out[key] = [{k: int(name) if name.isdigit() else name, v: typed(n, v)}
                            for name, n in items]
            elif key == "vcpu":
                out["cpu-index"] = value
            else:
                out[key] = typed(value, key)
        return out
    if isinstance(data, list):
        return [typed(v, member) for v in data]
    if isinstance(data, str) and member not in ("vm-name", "audit-log") \
            and data.startswith("0x") and len(data) > 2:
        try:
            return int(data[2:], 16)
        except ValueError:
            return data
    return data


def without_qom_path(data):
    return {k: v for k, v in data.items() if k != "qom-path"}


def hex_int(text):
    return int(text, 16) if isinstance(text, str) else int(text)
