"""libvirt end to end: heki-guest.elf as a qemu:///system domain whose
<emulator> is our patched QEMU, the plugin through <qemu:commandline>, the
Heki kernel emulated (LD_PRELOAD through <qemu:env>). What an operator and
a libvirt client see: virsh's state and reason, <on_crash>, query-heki
through `virsh qemu-monitor-command`, QMP and lifecycle events through
python3-libvirt and `virsh qemu-monitor-event`. Run by `make -C
qemu-integration test-libvirt` (as root, after scripts/ensure-libvirt.sh),
in a venv over Debian's python3, the one python3-libvirt is for.
"""

import time
import unittest

import hekivirt
from hekivirt import Domain, Events, VirshEvents, virsh

CR0_WP = 1 << 16

events = None


def boots(lines):
    """How often the guest started: its first line on every boot."""
    return sum(1 for line in lines if "boot" in line)


def setUpModule():
    global events
    left = hekivirt.remove_leftovers()
    if left:
        print(f"removed domains left by an earlier run: {left}")
    events = Events()


def tearDownModule():
    events.close()


class LibvirtCase(unittest.TestCase):
    def domain(self, suffix="", **kwargs):
        """A domain named after the test (events are told apart by name)."""
        started = time.monotonic()
        label = self._testMethodName.removeprefix("test_").replace("_", "-") + suffix
        dom = Domain(events.conn, label, **kwargs)
        self.addCleanup(lambda: print(f"[{time.monotonic() - started:.2f} s]", end=" ",
                                      flush=True))
        self.addCleanup(dom.cleanup)   # runs first: destroy + undefine
        return dom

    def qmp(self, dom, name):
        """The data of the QMP events of that name a libvirt client got."""
        return [d for _, d in events.qmp_of(dom.name, name)]

    def wait_qmp(self, dom, name, count=1):
        try:
            events.wait(lambda: len(self.qmp(dom, name)) >= count)
        except TimeoutError:
            self.fail(f"{dom.name}: {count} {name} awaited; QMP events seen: "
                      f"{[e for e, _ in events.qmp_of(dom.name)]}; state {dom.state()!r}; "
                      f"serial log: {dom.serial_tail()}")
        return self.qmp(dom, name)

    def wait_lifecycle(self, dom, wanted, count=1):
        try:
            events.wait(lambda: events.lifecycle_of(dom.name).count(wanted) >= count)
        except TimeoutError:
            self.fail(f"{dom.name}: lifecycle event {wanted} x{count} awaited; seen: "
                      f"{events.lifecycle_of(dom.name)}; state {dom.state()!r}")

    def check_restarts(self, verdict):
        """<on_crash>restart: libvirt restarts the panicked guest in the same
        QEMU (system_reset, then cont): a reset of a pinned VM, which the
        reset rule turns into a power-off, so the domain ends shut off and
        is never rebooted under its pins. With on-reset=keep-pins (the RFC)
        the guest boots again."""
        dom = self.domain(scenario="pin-deny",
                          heki={"on-denial": verdict}, on_crash="restart")
        dom.start()
        self.assert_panicked(dom, verdict)
        dom.wait_state("shut off (shutdown)")
        [heki_reset] = self.wait_qmp(dom, "HEKI_RESET")
        self.assertEqual((heki_reset["cause"], heki_reset["verdict"]), ("host", "poweroff"), heki_reset)
        self.assertEqual(boots(dom.guest()), 1, dom.serial_tail())

        rfc = self.domain("-keep-pins", scenario="pin-deny",
                          heki={"on-denial": verdict, "on-reset": "keep-pins"}, on_crash="restart")
        rfc.start()
        self.assert_panicked(rfc, verdict)
        # Each boot pins and is denied again: the loop is the policy's.
        rfc.wait_guest(lambda g: boots(g) >= 2)
        self.assertTrue(rfc.dom.isActive(), rfc.state())

    def assert_panicked(self, dom, verdict, count=1):
        """GUEST_PANICKED with the Heki information, as QMP gave it to libvirt."""
        panics = self.wait_qmp(dom, "GUEST_PANICKED", count)
        info = panics[-1].get("info", {})
        self.assertEqual((info.get("type"), info.get("verdict"), info.get("exit")),
                         ("heki", verdict, "denial"), panics[-1])
        self.assertEqual(info.get("cpu-index"), 0, panics[-1])
        self.wait_lifecycle(dom, ("crashed", "panicked"), count)


class GuestRuns(LibvirtCase):
    def test_domain_starts_and_the_guest_runs_to_its_end(self):
        dom = self.domain(scenario="pin-deny", cpus=2, heki={"on-denial": "resume"})
        dom.start()
        self.assertEqual(dom.state(), "running (booted)")
        lines = dom.wait_guest(lambda g: any("result" in l for l in g))
        self.assertIn("boot", lines[0], dom.serial_tail())
        self.assertEqual([l["heki"] for l in lines if "heki" in l], ["present"])
        result = [l for l in lines if "result" in l][-1]
        self.assertEqual(result["result"], "pass", dom.serial_tail())
        self.assertEqual((result["denied-writes"], result["gp"]), ("6", "6"))
        # QEMU 10.0's isa-debug-exit requests a guest shutdown (with the exit
        # code); libvirt runs QEMU with -no-shutdown, hears SHUTDOWN and ends it.
        dom.wait_state("shut off (shutdown)")
        self.wait_lifecycle(dom, ("stopped", "shutdown"))
        self.assertIn(("started", "booted"), events.lifecycle_of(dom.name))
        denials = self.qmp(dom, "HEKI_DENIAL")
        self.assertEqual(len(denials), 6, denials)
        self.assertEqual({d["vm-name"] for d in denials}, {dom.name}, denials)
        self.assertEqual(sorted({d["cpu-index"] for d in denials}), [0, 1], denials)
        self.assertEqual({d["verdict"] for d in denials}, {"resume"})
        for d in denials:
            self.assertTrue(d["qom-path"].startswith("/machine/"), d)
        pins = {c["register"]: c["pinned"] for c in self.qmp(dom, "HEKI_CONFIGURE")}
        self.assertEqual(pins.get("cr0"), int(result["pins-cr0"], 16), pins)
        self.assertEqual(pins.get("cr4"), int(result["pins-cr4"], 16), pins)
        self.assertEqual(self.qmp(dom, "GUEST_PANICKED"), [])


class PauseVerdict(LibvirtCase):
    """on-denial=pause: a guest in trouble, as libvirt knows one (GUEST_PANICKED)."""

    def test_preserve_shows_crashed_panicked_and_resume_goes_on(self):
        dom = self.domain(scenario="pin-deny", extra_append="writes=2",
                          heki={"on-denial": "pause"}, on_crash="preserve")
        dom.start()
        [denial] = self.wait_qmp(dom, "HEKI_DENIAL")
        self.assertEqual(denial["verdict"], "pause")
        dom.wait_state("crashed (panicked)")
        self.assert_panicked(dom, "pause")
        self.assertFalse(any("result" in l for l in dom.guest()), dom.serial_tail())
        query = dom.monitor("query-heki")
        self.assert_query(query, denials=1)
        # The #GP was delivered before the stop: resumed, the guest goes on to
        # its second denied write and stops again, then passes.
        virsh("resume", dom.name)
        self.assert_panicked(dom, "pause", count=2)
        dom.wait_state("crashed (panicked)")
        virsh("resume", dom.name)
        dom.wait_state("shut off (shutdown)")
        result = [l for l in dom.guest() if "result" in l][-1]
        self.assertEqual((result["result"], result["gp"]), ("pass", "2"), dom.serial_tail())

    def assert_query(self, query, denials):
        """query-heki's typed answer: the ledger of the guest's pins."""
        self.assertEqual(sum(query["counters"]["denial"].values()), denials, query)
        self.assertTrue(query["pins"]["cr0"]["value"] & CR0_WP, query)
        self.assertIn("wp", query["pins"]["cr0"]["bits"], query)
        self.assertEqual(query["policy"]["on-denial"], "pause", query)

    def test_destroy_shuts_the_domain_off_as_crashed(self):
        dom = self.domain(scenario="pin-deny", heki={"on-denial": "pause"},
                          on_crash="destroy")
        dom.start()
        dom.wait_state("shut off (crashed)")
        self.assert_panicked(dom, "pause")
        self.wait_lifecycle(dom, ("stopped", "crashed"))
        # Why it crashed must reach management before QEMU is gone.
        self.assertEqual(self.wait_qmp(dom, "HEKI_DENIAL")[0]["verdict"], "pause")

    def test_restart_shuts_off_unless_keep_pins(self):
        self.check_restarts("pause")

    def test_the_reason_comes_before_the_panic(self):
        # GUEST_PANICKED says "heki"; the HEKI_DENIAL just before it says what
        # the guest did (the order QEMU sent them in, as libvirt got them).
        dom = self.domain(scenario="pin-deny", extra_append="writes=1",
                          heki={"on-denial": "pause"}, on_crash="preserve")
        dom.start()
        self.wait_qmp(dom, "HEKI_DENIAL")
        self.wait_qmp(dom, "GUEST_PANICKED")
        names = [e for e, _ in events.qmp_of(dom.name) if e in ("HEKI_DENIAL", "GUEST_PANICKED")]
        self.assertEqual(names, ["HEKI_DENIAL", "GUEST_PANICKED"], "QMP order as libvirt got it")


    def test_pin_deadline_pause_is_a_panic_without_a_vcpu(self):
        # A guest that never pins, CR0.WP required: 1 s after it first runs
        # the main loop judges it; the verdict has no exit and no vCPU.
        dom = self.domain(scenario="no-pin", extra_append="idle-ms=20000",
                          heki={"require-cr0": "wp", "pin-deadline": "1",
                                "on-weak-pinning": "pause"}, on_crash="preserve")
        dom.start()
        [weak] = self.wait_qmp(dom, "HEKI_WEAK_PINNING")
        self.assertEqual((weak["register"], weak["deadline-seconds"], weak["verdict"]),
                         ("cr0", 1, "pause"), weak)
        self.assertNotIn("cpu-index", weak)
        [panic] = self.wait_qmp(dom, "GUEST_PANICKED")
        self.assertEqual(panic.get("info"), {"type": "heki", "verdict": "pause"}, panic)
        self.wait_lifecycle(dom, ("crashed", "panicked"))
        dom.wait_state("crashed (panicked)")


class EndingVerdicts(LibvirtCase):
    """poweroff and exit end the VM as a guest panic does: under libvirt
    (-no-shutdown) <on_crash> decides."""

    def check_ends(self, verdict, on_crash, expected_state):
        dom = self.domain(scenario="pin-deny", heki={"on-denial": verdict},
                          on_crash=on_crash)
        dom.start()
        dom.wait_state(expected_state)
        [denial] = self.wait_qmp(dom, "HEKI_DENIAL")
        self.assertEqual(denial["verdict"], verdict)
        self.assert_panicked(dom, verdict)
        self.assertFalse(any("result" in l for l in dom.guest()), dom.serial_tail())
        return dom

    def test_poweroff_destroy(self):
        self.check_ends("poweroff", "destroy", "shut off (crashed)")

    def test_exit_destroy(self):
        self.check_ends("exit", "destroy", "shut off (crashed)")

    def test_poweroff_preserve(self):
        dom = self.check_ends("poweroff", "preserve", "crashed (panicked)")
        time.sleep(1)
        self.assertEqual(dom.state(), "crashed (panicked)", "preserve keeps it crashed")

    def test_exit_restart(self):
        self.check_restarts("exit")

    def test_reset_with_keep_pins_reboots_without_a_crash(self):
        # The RFC's reset in place (on-reset=keep-pins): pins kept, the guest reboots.
        dom = self.domain(scenario="pin-deny", heki={"on-denial": "reset", "on-reset": "keep-pins"})
        dom.start()
        dom.wait_guest(lambda g: boots(g) >= 2)
        self.wait_lifecycle(dom, ("reboot", ""))
        self.assertTrue(dom.state().startswith("running"), dom.state())
        resets = self.wait_qmp(dom, "RESET")
        self.assertEqual(resets[0].get("reason"), "guest-panic", resets)
        self.assertEqual(self.qmp(dom, "GUEST_PANICKED"), [])
        self.assertNotIn(("crashed", "panicked"), events.lifecycle_of(dom.name))


class PinnedReset(LibvirtCase):
    """The reset rule under libvirt (-no-shutdown): a reset of a pinned VM
    is a power-off with the reset's cause, so the domain ends "shut off
    (shutdown)" through <on_poweroff>destroy, never rebooted under its pins,
    with HEKI_RESET before SHUTDOWN; `virsh start` then boots a new VM, whose
    early boot is clean."""

    def check_shut_off(self, dom, cause, reason, guest):
        dom.wait_state("shut off (shutdown)")
        heki_reset = self.wait_qmp(dom, "HEKI_RESET")[0]
        self.assertEqual((heki_reset["cause"], heki_reset["verdict"], heki_reset["pinned-cr0"]),
                         (cause, "poweroff", CR0_WP), heki_reset)
        # The second SHUTDOWN, if any, is libvirt's SIGTERM (host-signal).
        shutdown = self.wait_qmp(dom, "SHUTDOWN")[0]
        self.assertEqual(shutdown, {"guest": guest, "reason": reason})
        names = [e for e, _ in events.qmp_of(dom.name) if e in ("HEKI_RESET", "SHUTDOWN", "RESET")]
        self.assertEqual(names[:2], ["HEKI_RESET", "SHUTDOWN"], names)
        self.assertNotIn("RESET", names)
        lifecycle = events.lifecycle_of(dom.name)
        self.assertIn(("shutdown", "guest" if guest else "host"), lifecycle)
        self.assertIn(("stopped", "shutdown"), lifecycle)
        self.assertNotIn(("reboot", ""), lifecycle)
        self.assertNotIn(("crashed", "panicked"), lifecycle)
        self.assertEqual(boots(dom.guest()), 1, dom.serial_tail())

    def test_guest_reboot_shuts_the_domain_off_and_start_boots_clean(self):
        dom = self.domain(scenario="os-reboot", extra_append="writes=0 idle-ms=0")
        dom.start()
        self.check_shut_off(dom, "guest", "guest-reset", True)
        # The management layer starts it again: a new KVM VM, no pins.
        dom.start()
        lines = dom.wait_guest(lambda g: any("idle-done" in l for l in g))
        early = [l for l in lines if "early-cr0" in l]
        self.assertEqual([(l["applied"], l["gp"]) for l in early], [("yes", "0")], dom.serial_tail())

    def test_virsh_reset_shuts_the_domain_off(self):
        dom = self.domain(scenario="os-boot", extra_append="writes=0 idle-ms=30000")
        dom.start()
        dom.wait_guest(lambda g: any("idle" in l and "ms" in l for l in g))
        virsh("reset", dom.name)
        self.check_shut_off(dom, "host", "host-qmp-system-reset", False)

    def test_reset_verdict_shuts_the_domain_off(self):
        # idle-ms: the vCPU runs on until the reset; the guest must not end first.
        dom = self.domain(scenario="os-boot", extra_append="writes=1 idle-ms=10000",
                          heki={"on-denial": "reset"})
        dom.start()
        self.check_shut_off(dom, "panic", "guest-panic", True)
        [denial] = self.wait_qmp(dom, "HEKI_DENIAL")
        self.assertEqual(denial["verdict"], "reset")


class Monitor(LibvirtCase):
    """The operator's tools: `virsh qemu-monitor-event` and `qemu-monitor-command`."""

    def test_virsh_sees_the_heki_events_and_changes_the_policy(self):
        # A guest that never pins, under a policy requiring CR0.WP: the pin
        # deadline (2 s after the first run) makes a HEKI_WEAK_PINNING.
        dom = self.domain(scenario="no-pin", extra_append="idle-ms=20000",
                          heki={"require-cr0": "wp", "pin-deadline": "2",
                                "on-weak-pinning": "resume"})
        dom.start(paused=True)
        watcher = VirshEvents(dom.name)
        self.addCleanup(watcher.close)
        # Until virsh has registered its callback, events pass it by: resume,
        # then stop and resume again until it shows a RESUME.
        virsh("resume", dom.name)
        for _ in range(20):
            try:
                watcher.next("RESUME", timeout=0.5)
                break
            except TimeoutError:
                virsh("suspend", dom.name)
                virsh("resume", dom.name)
        weak = watcher.next("HEKI_WEAK_PINNING")
        self.assertEqual((weak["register"], weak["missing-bits"], weak["verdict"]),
                         ("cr0", ["wp"], "resume"), weak)
        # The policy at run time, through libvirt: refused by QAPI (not an
        # action) and by the plugin (not a CR0 bit), then accepted.
        refused = dom.monitor_reply("heki-set-policy", **{"on-denial": "sleep"})
        self.assertIn("on-denial", refused.get("error", {}).get("desc", ""), refused)
        refused = dom.monitor_reply("heki-set-policy", **{"require-cr0": "wp+bogus"})
        self.assertIn("bogus", refused.get("error", {}).get("desc", ""), refused)
        query = dom.monitor("query-heki")
        # The kernel check ran before libvirt's QMP connection was up (its
        # HEKI_CAPABILITY events went to no client): query-heki has it.
        self.assertEqual((query["kernel"]["status"], query.get("profile")), ("heki", "v2"), query)
        self.assertEqual(query["policy"]["on-denial"], "resume", query)
        self.assertEqual(dom.monitor("heki-set-policy", **{"on-denial": "pause"}), {})
        policy = watcher.next("HEKI_POLICY")
        self.assertEqual((policy["changed"], policy["on-denial"]), (["on-denial"], "pause"),
                         policy)
        self.assertEqual(dom.monitor("query-heki")["policy"]["on-denial"], "pause")
        self.assertEqual(sum("event HEKI_POLICY " in l for l in watcher.lines), 1,
                         watcher.lines)
        self.assertEqual(dom.state(), "running (unpaused)")


if __name__ == "__main__":
    unittest.main()
