"""End to end: what a reset does to a pinned VM in the patched QEMU under
real KVM (the Heki kernel side emulated by libheki-kvm-emu.so), with the
guest that boots like an OS (scenarios os-boot and os-reboot: early boot
writes CR0 without WP through the port before it pins). Run by
`make -C qemu-integration test`.

The rule (heki-on-reset): a reset of a pinned VM, whatever asked for it
(system_reset, the guest's own reboot, the reset verdict), becomes a
shutdown with the reset's cause (on-reset=poweroff, the default) or a
failure exit (exit), announced by HEKI_RESET before QEMU's SHUTDOWN; the
RFC's reset in place stays selectable (keep-pins), and then the rebooted
guest's early boot is denied. An unpinned VM resets as always.
"""

import os
import tempfile
import time
import unittest

from hekiqemu import GUEST_FAIL, GUEST_PASS, Run

CR0_WP = 1 << 16


def events(run, *names):
    return [e for e in run.qmp.events if e["event"] in names]


def boots(run):
    return sum(1 for line in run.guest() if "boot" in line)


def early_writes(run):
    """Each boot's early CR0 write without WP: applied (yes/no), gp. A line
    a reset cut short (the reset verdict lets the vCPU run on until the
    reset) is left out."""
    return [(l["applied"], l["gp"]) for l in run.guest() if "early-cr0" in l and "applied" in l]


class ResetCase(unittest.TestCase):
    def run_vm(self, **kwargs):
        kwargs.setdefault("audit", True)
        run = Run(**kwargs)
        self.addCleanup(run.close)
        return run

    def wait_guest(self, run, predicate, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(line) for line in run.guest()):
                return
            time.sleep(0.05)
        self.fail(f"guest line not seen: {run.guest_text()}")

    def wait_pinned(self, run):
        """Until the guest has both pins (and idles)."""
        self.wait_guest(run, lambda l: "idle" in l and "ms" in l)

    def assert_heki_reset(self, run, cause, verdict, on_reset):
        resets = run.qmp.heki_events("HEKI_RESET")
        self.assertTrue(resets, run.qmp.names())
        data = resets[0]["data"]
        self.assertEqual((data["cause"], data["verdict"], data["on-reset"]),
                         (cause, verdict, on_reset))
        self.assertEqual(data["pinned-cr0"], CR0_WP)
        self.assertEqual(data["pinned-cr0-bits"], ["wp"])
        self.assertNotEqual(data["pinned-cr4"], 0)
        self.assertEqual(data["unseen"], [])
        return data


class PinnedReset(ResetCase):
    """The default rule: a pinned VM is powered off instead of reset."""

    def check_powered_off(self, run, cause, reason, guest):
        status = run.wait()
        self.assertEqual(status, 0, run.stderr)
        self.assert_heki_reset(run, cause, "poweroff", "poweroff")
        names = [e["event"] for e in events(run, "HEKI_RESET", "SHUTDOWN", "RESET")]
        self.assertEqual(names, ["HEKI_RESET", "SHUTDOWN"], "announced first, and no reset")
        shutdown = events(run, "SHUTDOWN")[0]["data"]
        self.assertEqual(shutdown, {"guest": guest, "reason": reason})
        self.assertEqual(boots(run), 1, "the guest never booted again under its pins")
        audit = run.audit_events("HEKI_RESET")
        self.assertEqual(len(audit), 1)
        self.assertEqual(audit[0]["data"]["verdict"], "poweroff")
        self.assertIn("reset of a pinned VM", run.stderr)

    def test_system_reset_powers_off(self):
        run = self.run_vm(heki={}, scenario="os-boot", extra_append="writes=0 idle-ms=30000")
        run.start()
        self.wait_pinned(run)
        run.qmp.command("system_reset")
        self.check_powered_off(run, "host", "host-qmp-system-reset", False)
        self.assertEqual(early_writes(run), [("yes", "0")], "a fresh VM: the early write is applied")

    def test_guest_reboot_powers_off(self):
        run = self.run_vm(heki={}, scenario="os-reboot", extra_append="writes=0 idle-ms=0")
        run.start()
        self.check_powered_off(run, "guest", "guest-reset", True)
        self.assertTrue(any("os-reboot" in l for l in run.guest()), run.guest_text())

    def test_reset_verdict_powers_off(self):
        # idle-ms: the vCPU runs on until the reset; the guest must not end first.
        run = self.run_vm(heki={"on-denial": "reset"}, scenario="os-boot",
                          extra_append="writes=1 idle-ms=10000")
        run.start()
        self.check_powered_off(run, "panic", "guest-panic", True)
        names = run.qmp.names()
        self.assertLess(names.index("HEKI_DENIAL"), names.index("HEKI_RESET"), names)
        self.assertEqual(run.qmp.heki_events("HEKI_DENIAL")[0]["data"]["verdict"], "reset")

    def test_on_reset_exit_ends_qemu_with_failure(self):
        run = self.run_vm(heki={"on-reset": "exit"}, scenario="os-boot",
                          extra_append="writes=0 idle-ms=30000")
        run.start()
        self.wait_pinned(run)
        run.qmp.command("system_reset")
        self.assertEqual(run.wait(), 1, run.stderr)
        self.assert_heki_reset(run, "host", "exit", "exit")
        self.assertEqual(boots(run), 1)

    def test_under_no_shutdown_the_vm_stays_off(self):
        # libvirt's -no-shutdown: QEMU stays, stopped in "shutdown"; every
        # further reset is refused the same way, so the VM cannot come back
        # under its pins; management decides (<on_poweroff>).
        run = self.run_vm(heki={}, scenario="os-boot", extra_args=["-no-shutdown"],
                          extra_append="writes=0 idle-ms=30000")
        run.start()
        self.wait_pinned(run)
        run.qmp.command("system_reset")
        run.qmp.wait_event(lambda e: e["event"] == "SHUTDOWN")
        self.assertEqual(run.status(), "shutdown")
        run.qmp.command("system_reset")
        run.qmp.wait_events(lambda e: e["event"] == "SHUTDOWN", 2)
        self.assertEqual(run.status(), "shutdown")
        self.assertEqual(len(run.qmp.heki_events("HEKI_RESET")), 2)
        self.assertEqual(events(run, "RESET"), [])
        self.assertIn("Resetting the Virtual Machine is required", run.qmp.error("cont")[1])
        self.assertEqual(run.quit(), 0)
        self.assertEqual(boots(run), 1)

    def test_a_stopped_vm_whose_reset_is_refused_cannot_be_resumed(self):
        # Paused by a verdict, then reset and resumed, as libvirt's restart
        # does (system_reset, cont): the VM goes to "shutdown", not back to
        # the old boot under its pins.
        run = self.run_vm(heki={"on-denial": "pause"}, scenario="os-boot",
                          extra_args=["-no-shutdown"], extra_append="writes=1 idle-ms=0")
        run.start()
        run.qmp.wait_event(lambda e: e["event"] == "STOP")
        self.assertEqual(run.status(), "guest-panicked")
        run.qmp.command("system_reset")
        run.qmp.wait_event(lambda e: e["event"] == "SHUTDOWN")
        self.assertEqual(run.status(), "shutdown")
        self.assertIn("Resetting the Virtual Machine is required", run.qmp.error("cont")[1])
        self.assertEqual(run.quit(), 0)
        self.assert_heki_reset(run, "host", "poweroff", "poweroff")
        self.assertEqual(len(run.qmp.heki_events("HEKI_DENIAL")), 1, "the old boot never ran on")


class KeepPins(ResetCase):
    """on-reset=keep-pins, the RFC: reset in place, and what it does to a
    guest that boots like an OS."""

    def test_reboot_in_place_and_the_early_boot_is_denied(self):
        run = self.run_vm(heki={"on-reset": "keep-pins"}, scenario="os-reboot",
                          extra_append="writes=0 idle-ms=0")
        run.start()
        self.assertEqual(run.wait(), GUEST_FAIL, run.stderr)
        self.assert_heki_reset(run, "guest", "reset", "keep-pins")
        self.assertEqual(events(run, "RESET")[0]["data"], {"guest": True, "reason": "guest-reset"})
        self.assertEqual(boots(run), 2)
        self.assertEqual(early_writes(run), [("yes", "0"), ("no", "1")],
                         "the second boot's early CR0 write meets the old pins")
        self.assertEqual(run.guest_result()["reason"], "early-boot-cr0-denied")
        denial = run.qmp.heki_events("HEKI_DENIAL")
        self.assertEqual(len(denial), 1)
        self.assertEqual(denial[0]["data"]["violated-bits"], ["wp"])

    def test_with_on_denial_reset_it_is_a_boot_loop(self):
        run = self.run_vm(heki={"on-reset": "keep-pins", "on-denial": "reset"},
                          scenario="os-reboot", extra_append="writes=0 idle-ms=0")
        run.start()
        run.qmp.wait_events(lambda e: e["event"] == "RESET", 4, timeout=30)
        self.assertEqual(run.status(), "running")
        self.assertEqual(run.quit(), 0)
        reasons = [e["data"]["reason"] for e in events(run, "RESET")]
        self.assertEqual(reasons[0], "guest-reset")
        self.assertEqual(set(reasons[1:]), {"guest-panic"}, "each boot's denial resets it again")
        # Each boot's serial line races the reset its own denial asks for
        # (the vCPU runs on until the main loop resets it), so the boots are
        # counted by their denials: every guest-panic RESET follows one.
        denials = run.qmp.heki_events("HEKI_DENIAL")
        self.assertGreaterEqual(len(denials), len(reasons) - 1)
        self.assertTrue(all(d["data"]["violated-bits"] == ["wp"] for d in denials), denials)
        self.assertGreaterEqual(boots(run), 2)
        writes = early_writes(run)
        self.assertEqual(writes[0], ("yes", "0"))
        self.assertTrue(all(w[0] == "no" for w in writes[1:]), writes)
        causes = [e["data"]["cause"] for e in run.qmp.heki_events("HEKI_RESET")]
        self.assertEqual(causes[0], "guest")
        self.assertEqual(set(causes[1:]), {"panic"})


class PendingExit(ResetCase):
    """A vCPU stopped by a verdict has completed its exit before QEMU stops
    it (kvm_cpu_exec re-enters KVM_RUN with exit_request set, as for
    KVM_EXIT_IO): a reset or a state save never finds a completion armed."""

    def test_a_paused_denial_is_completed_before_the_reset(self):
        trace = os.path.join(tempfile.mkdtemp(prefix="heki-reset-"), "emu.trace")
        run = self.run_vm(heki={"on-denial": "pause", "on-reset": "keep-pins"},
                          scenario="os-boot", extra_append="writes=1 idle-ms=0",
                          emulator_env={"HEKI_EMU_TRACE": trace})
        run.start()
        run.qmp.wait_event(lambda e: e["event"] == "STOP")
        self.assertEqual(run.status(), "guest-panicked")
        with open(trace) as f:
            completed = [l for l in f if "complete denial" in l]
        self.assertEqual(len(completed), 1, "completed at the stop, not at the next run")
        run.qmp.command("system_reset")
        run.qmp.wait_event(lambda e: e["event"] == "RESET")
        run.qmp.command("cont")
        # The new boot's early write is denied (keep-pins) and paused again.
        run.qmp.wait_events(lambda e: e["event"] == "STOP", 2)
        run.qmp.command("cont")
        self.assertEqual(run.wait(), GUEST_FAIL, run.stderr)
        self.assertEqual(boots(run), 2)
        # Exactly one #GP in the new boot (its own denial): the old boot's
        # #GP did not land on the reset vCPU.
        self.assertEqual(early_writes(run), [("yes", "0"), ("no", "1")])
        self.assertFalse(any("unexpected-exception" in l for l in run.guest()), run.guest_text())


class UnpinnedReset(ResetCase):
    def test_unpinned_vm_resets_and_boots_again(self):
        run = self.run_vm(heki={}, scenario="no-pin", extra_append="idle-ms=4000")
        run.start()
        self.wait_guest(run, lambda l: "idle" in l and "ms" in l)
        run.qmp.command("system_reset")
        run.qmp.wait_event(lambda e: e["event"] == "RESET")
        self.assertEqual(run.wait(), GUEST_PASS, run.stderr)
        self.assertEqual(events(run, "RESET")[0]["data"],
                         {"guest": False, "reason": "host-qmp-system-reset"})
        self.assertEqual(run.qmp.heki_events("HEKI_RESET"), [])
        self.assertEqual(boots(run), 2)


if __name__ == "__main__":
    unittest.main()
