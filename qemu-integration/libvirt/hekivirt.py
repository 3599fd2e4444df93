"""heki-guest.elf as a libvirt domain (qemu:///system) running our patched
QEMU with the plugin and the emulated Heki kernel: the domain XML from
heki-domain.xml, libvirt's view of it (virsh, python3-libvirt) and the
events a libvirt client receives. Used by test_libvirt.py.

Paths come from the environment, as for the e2e tests (qemu-integration/
Makefile's RUN_ENV): HEKI_QEMU, HEKI_EMU_LIB, HEKI_GUEST, HEKI_PLUGIN.

    python3 hekivirt.py [scenario=pin-deny] [cpus=1] [on-crash=destroy] [PLUGIN-KEY=VALUE...]

prints a ready domain XML for this checkout (`virsh define` it).
"""

import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from xml.sax.saxutils import escape

import libvirt
import libvirt_qemu

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from hekiqemu import parse_guest, path_from_env  # noqa: E402

URI = "qemu:///system"
# Every domain the tests define is named so: leftovers of a killed run are
# recognised by it (and only they are removed).
PREFIX = "heki-test-"
TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "heki-domain.xml")


def path(variable):
    """An absolute path from the environment: libvirt starts QEMU in a
    directory of its own."""
    return os.path.abspath(path_from_env(variable))


def render(*, name, serial_log, scenario="pin-deny", cpus=1, heki=None,
           on_crash="destroy", extra_append=""):
    """The domain XML: heki-domain.xml with its @...@ placeholders filled in. heki:
    the plugin's options (key: value), after file=."""
    options = "".join(f",{k}={str(v).replace(',', ',,')}" for k, v in (heki or {}).items())
    values = {
        "NAME": name,
        "VCPUS": str(cpus),
        "GUEST": path("HEKI_GUEST"),
        "CMDLINE": f"scenario={scenario} cpus={cpus} {extra_append}".strip(),
        "ON_CRASH": on_crash,
        "QEMU": path("HEKI_QEMU"),
        "SERIAL_LOG": os.path.abspath(serial_log),
        "PLUGIN": path("HEKI_PLUGIN"),
        "HEKI_OPTIONS": options,
        "EMU_LIB": path("HEKI_EMU_LIB"),
    }
    with open(TEMPLATE) as f:
        xml = f.read()
    for word, value in values.items():
        xml = xml.replace(f"@{word}@", escape(value, {"'": "&apos;", '"': "&quot;"}))
    left = re.findall(r"@[A-Z_]+@", xml)
    assert not left, f"{TEMPLATE}: unfilled {left}"
    return xml


def virsh(*args, timeout=30):
    """virsh -c qemu:///system ARGS: (stdout + stderr) text; raises with the
    whole output when virsh fails."""
    cmd = ["virsh", "-c", URI, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({done.returncode}): {output}")
    return output


_loop_lock = threading.Lock()
_loop_started = False


def _start_event_loop():
    """libvirt's default event loop on a daemon thread: callbacks of every
    connection opened afterwards run there. Once per process."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run():
            while True:
                libvirt.virEventRunDefaultImpl()
        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


LIFECYCLE = ("defined", "undefined", "started", "suspended", "resumed", "stopped",
             "shutdown", "pmsuspended", "crashed")   # virDomainEventType, in order


def lifecycle_detail(event, detail):
    """("crashed", "panicked") from a lifecycle event's two numbers: the names
    of virDomainEventType and of its detail enum (VIR_DOMAIN_EVENT_CRASHED_*)."""
    kind = LIFECYCLE[event] if 0 <= event < len(LIFECYCLE) else str(event)
    prefix = f"VIR_DOMAIN_EVENT_{kind.upper()}_"
    names = [n[len(prefix):].lower() for n in dir(libvirt)
             if n.startswith(prefix) and not n.endswith("_LAST") and getattr(libvirt, n) == detail]
    return kind, (names[0] if names else str(detail))


class Events:
    """What a libvirt client hears of the domains: every QMP event (libvirt's
    qemu-monitor events, registered for all domains so that none is missed
    between define and the first callback) and every lifecycle event. Each
    list holds (domain name, ...) tuples in arrival order."""

    def __init__(self):
        _start_event_loop()
        self.conn = libvirt.open(URI)
        self.cond = threading.Condition()
        self.qmp = []         # (domain, event name, data dict)
        self.lifecycle = []   # (domain, kind, detail): ("x", "crashed", "panicked"), ("x", "reboot", "")
        self._ids = [
            libvirt_qemu.qemuMonitorEventRegister(self.conn, None, None, self._on_qmp, None, 0),
        ]
        self._domain_ids = [
            self.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                             self._on_lifecycle, None),
            self.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT,
                                             self._on_reboot, None),
        ]

    def _on_qmp(self, conn, dom, event, seconds, micros, details, opaque):
        data = json.loads(details) if details else {}
        with self.cond:
            self.qmp.append((dom.name(), event, data))
            self.cond.notify_all()

    def _on_lifecycle(self, conn, dom, event, detail, opaque):
        with self.cond:
            self.lifecycle.append((dom.name(),) + lifecycle_detail(event, detail))
            self.cond.notify_all()

    def _on_reboot(self, conn, dom, opaque):
        with self.cond:
            self.lifecycle.append((dom.name(), "reboot", ""))
            self.cond.notify_all()

    def wait(self, predicate, timeout=20.0):
        """Waits until predicate() (called under the lock) is true; returns
        its value, or raises TimeoutError."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("libvirt: the awaited events did not come")
                self.cond.wait(left)

    def qmp_of(self, domain, name=None):
        with self.cond:
            return [(e, d) for n, e, d in self.qmp if n == domain and (name is None or e == name)]

    def lifecycle_of(self, domain):
        with self.cond:
            return [(k, d) for n, k, d in self.lifecycle if n == domain]

    def close(self):
        for cid in self._ids:
            libvirt_qemu.qemuMonitorEventDeregister(self.conn, cid)
        for cid in self._domain_ids:
            self.conn.domainEventDeregisterAny(cid)
        self.conn.close()


class Domain:
    """One defined domain of the guest; cleanup() destroys and undefines it."""

    def __init__(self, conn, label, *, scenario="pin-deny", cpus=1, heki=None,
                 on_crash="destroy", extra_append=""):
        self.conn = conn
        self.name = f"{PREFIX}{label}-{os.getpid()}"
        self.dir = tempfile.mkdtemp(prefix="heki-libvirt-")
        self.serial_path = os.path.join(self.dir, "serial.log")
        self.audit_path = os.path.join(self.dir, "audit.jsonl")
        self.qemu_log = f"/var/log/libvirt/qemu/{self.name}.log"
        heki = dict(heki or {}, **{"audit-log": self.audit_path})
        try:
            self.xml = render(name=self.name, serial_log=self.serial_path, scenario=scenario,
                              cpus=cpus, heki=heki, on_crash=on_crash,
                              extra_append=extra_append)
            self.dom = conn.defineXML(self.xml)
        except Exception:
            shutil.rmtree(self.dir)
            raise

    def start(self, paused=False):
        self.dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)

    def state(self):
        """`virsh domstate --reason`, as an operator reads it: "paused (user)"."""
        return virsh("domstate", "--reason", self.name)

    def wait_state(self, expected, timeout=20.0):
        """Polls state() until it is expected (passing states such as "in
        shutdown (unknown)" are skipped); returns it. On timeout the
        AssertionError names the last state, the serial log's and QEMU's log's
        tails."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            if state == expected:
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {state!r} after {timeout} s, not "
                                     f"{expected!r}; serial log: {self.serial_tail()}; "
                                     f"QEMU's log: {self.qemu_log_tail()}")
            time.sleep(0.05)

    def monitor(self, command, **arguments):
        """A QMP command through `virsh qemu-monitor-command`: its "return",
        or AssertionError with virsh's output."""
        reply = self.monitor_reply(command, **arguments)
        assert "return" in reply, f"{command}: {reply}"
        return reply["return"]

    def monitor_reply(self, command, **arguments):
        """QEMU's whole reply ({"return": ...} or {"error": ...}): virsh
        passes an error reply on with status 0."""
        message = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        out = virsh("qemu-monitor-command", self.name, json.dumps(message))
        try:
            return json.loads(out)
        except ValueError:
            raise AssertionError(f"{command}: virsh said {out!r}")

    def serial_text(self):
        try:
            with open(self.serial_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def serial_tail(self, lines=8):
        return " | ".join(self.serial_text().splitlines()[-lines:]) or "(empty)"

    def guest(self):
        """The guest's complete lines (the last one may still be being written)."""
        return parse_guest(self.serial_text())

    def wait_guest(self, predicate, timeout=20.0):
        """Polls the serial log until predicate(guest lines) is true."""
        deadline = time.monotonic() + timeout
        while not predicate(self.guest()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: the guest's lines did not come; state "
                                     f"{self.state()!r}; serial log: {self.serial_tail()}")
            time.sleep(0.05)
        return self.guest()

    def qemu_log_tail(self, lines=6):
        """The end of libvirt's log of this domain's QEMU (its stderr)."""
        try:
            with open(self.qemu_log, errors="replace") as f:
                return " | ".join(f.read().splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def cleanup(self):
        """Destroy (when running) and undefine; the directory and libvirt's
        log of the domain go too (names are per run: they would pile up)."""
        remove(self.name)
        if os.path.exists(self.qemu_log):
            os.unlink(self.qemu_log)
        shutil.rmtree(self.dir)


class VirshEvents:
    """`virsh qemu-monitor-event --domain NAME --loop`, as an operator runs it:
    one line per QMP event, "event NAME at S.US for domain 'D': JSON"."""

    def __init__(self, domain):
        self.process = subprocess.Popen(
            ["virsh", "-c", URI, "qemu-monitor-event", "--domain", domain, "--loop"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.buffer = b""
        self.lines = []

    def next(self, name, timeout=10.0):
        """The data of the next event NAME (None for <null>), skipping others;
        raises TimeoutError."""
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while True:
            while b"\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\n", 1)
                line = raw.decode(errors="replace")
                self.lines.append(line)
                if line.startswith(f"event {name} "):
                    payload = line.split("': ", 1)[1]
                    return None if payload == "<null>" else json.loads(payload)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"virsh qemu-monitor-event: no {name}; lines: {self.lines}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError(f"virsh qemu-monitor-event ended; lines: {self.lines}")
            self.buffer += chunk

    def close(self):
        self.process.terminate()
        self.process.wait()
        self.process.stdout.close()


def remove(name):
    """Destroys and undefines the domain NAME when it exists."""
    try:
        conn = libvirt.open(URI)
    except libvirt.libvirtError:
        return
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        conn.close()
        return
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError:
        pass   # it stopped between the two calls
    dom.undefine()
    conn.close()


def remove_leftovers():
    """Removes the domains of runs that died before their cleanup: ours
    (PREFIX) whose test process (the name's last number) is gone. A run going
    on beside this one, from another checkout, keeps its domains. Returns
    the names removed."""
    conn = libvirt.open(URI)
    names = [d.name() for d in conn.listAllDomains() if d.name().startswith(PREFIX)]
    conn.close()
    dead = [n for n in names
            if not os.path.exists(f"/proc/{n.rsplit('-', 1)[-1]}")]
    for name in dead:
        remove(name)
    return dead


def main(argv):
    settings = {"scenario": "pin-deny", "cpus": "1", "on-crash": "destroy"}
    heki = {"on-denial": "pause"}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            sys.exit(f"hekivirt: {arg!r} is not key=value")
        (settings if key in settings else heki)[key] = value
    print(render(name=f"heki-{settings['scenario']}", serial_log="/tmp/heki-guest.serial.log",
                 scenario=settings["scenario"], cpus=int(settings["cpus"]), heki=heki,
                 on_crash=settings["on-crash"]), end="")


if __name__ == "__main__":
    main(sys.argv[1:])
