"""End to end: the patched QEMU loads libHekiPlugin.so, the guest pins and
attacks under real KVM (the Heki kernel side emulated by libheki-kvm-emu.so),
and QEMU reacts as the policy says. Run by `make -C qemu-integration test`.
"""

import json
import os
import subprocess
import tempfile
import unittest

from hekiqemu import (GUEST_NO_HEKI, GUEST_PASS, Run, hex_int,
                      startup_failure)

CR0_WP = 1 << 16
CR4_SMEP = 1 << 20


def denials(query):
    return sum(query["counters"]["denial"].values())


def pinned(query, register):
    return hex_int(query["pins"][register]["value"])


def kinds(run):
    return [e["name"] for e in run.qmp.heki_events()]


class Verdicts(unittest.TestCase):
    """Each verdict produces QEMU's expected state."""

    def run_vm(self, **kwargs):
        run = Run(**kwargs)
        self.addCleanup(run.close)
        return run

    def test_resume_every_denial_is_one_gp_and_one_event(self):
        run = self.run_vm(heki={"on-denial": "resume", "vm-name": "e2e"},
                          scenario="pin-deny", cpus=2, extra_append="writes=4")
        run.start()
        self.assertEqual(run.wait(), GUEST_PASS, run.guest_text())
        result = run.guest_result()
        self.assertEqual(result["result"], "pass")
        per_cpu = run.per_cpu()
        self.assertEqual(len(per_cpu), 2)
        for line in per_cpu:
            self.assertEqual(line["gp"], line["denied-writes"])
            self.assertEqual(int(line["gp"]), 4)
        denials = run.qmp.heki_events("HEKI_DENIAL")
        self.assertEqual(len(denials), 8)
        self.assertEqual(sorted({d["data"]["vcpu"] for d in denials}), [0, 1])
        for d in denials:
            self.assertEqual(d["data"]["verdict"], "resume")
            self.assertEqual(d["data"]["vm-name"], "e2e")
            self.assertNotEqual(hex_int(d["data"]["violated"]), 0)
        pins = {c["data"]["register"]: hex_int(c["data"]["pinned"])
                for c in run.qmp.heki_events("HEKI_CONFIGURE")}
        self.assertEqual(pins.get("cr0"), hex_int(result["pins-cr0"]))
        self.assertEqual(pins.get("cr4"), hex_int(result["pins-cr4"]))

    def start_until_stopped(self, run):
        run.start()
        run.qmp.wait_event(lambda e: e["event"] == "STOP")
        self.assertEqual(run.status(), "guest-panicked")

    def test_pause_stops_the_vm_like_a_panic_and_cont_resumes_it(self):
        run = self.run_vm(heki={"on-denial": "pause"}, scenario="pin-deny",
                          extra_append="writes=1")
        self.start_until_stopped(run)
        self.assertEqual(run.qmp.wait_heki("HEKI_DENIAL")["verdict"], "pause")
        self.assertIsNone(run.guest_result())   # stopped before its report
        query = run.qmp.command("query-heki")["return"]
        self.assertEqual(denials(query), 1, query)
        run.start()   # the #GP was injected before the stop: the guest goes on
        self.assertEqual(run.wait(), GUEST_PASS, run.guest_text())
        self.assertEqual(run.guest_result()["gp"], "1")

    def test_poweroff_shuts_down(self):
        run = self.run_vm(heki={"on-denial": "poweroff"}, scenario="pin-deny")
        run.start()
        self.assertEqual(run.wait(), 0, run.stderr)
        shutdown = [e for e in run.qmp.events if e["event"] == "SHUTDOWN"]
        self.assertEqual(shutdown[0]["data"]["reason"], "guest-panic")
        self.assertIsNone(run.guest_result())
        self.assertEqual(run.qmp.heki_events("HEKI_DENIAL")[0]["data"]["verdict"],
                         "poweroff")

    def test_reset_reboots_and_pins_survive(self):
        run = self.run_vm(heki={"on-denial": "reset"}, scenario="pin-deny")
        run.start()
        run.qmp.wait_events(lambda e: e["event"] == "RESET", 2)
        query = run.qmp.command("query-heki")["return"]
        self.assertEqual(run.quit(), 0)
        boots = [l for l in run.guest() if "boot" in l]
        self.assertGreaterEqual(len(boots), 2)
        self.assertGreaterEqual(denials(query), 2, query)
        self.assertNotEqual(pinned(query, "cr0"), 0, query)

    def test_exit_ends_qemu_with_failure_and_the_event_is_delivered(self):
        run = self.run_vm(heki={"on-denial": "exit"}, scenario="pin-deny")
        run.start()
        self.assertEqual(run.wait(), 1, run.stderr)
        self.assertIsNone(run.guest_result())
        denials = run.qmp.heki_events("HEKI_DENIAL")
        self.assertEqual(len(denials), 1)
        self.assertEqual(denials[0]["data"]["verdict"], "exit")

    def test_weak_pinning_verdict(self):
        # The guest pins CR4 SMEP|SMAP and never CR0: the CR4 pin misses umip.
        run = self.run_vm(heki={"require-cr0": "wp", "require-cr4": "smep+umip",
                                "on-weak-pinning": "pause"}, scenario="weak")
        self.start_until_stopped(run)
        weak = run.qmp.wait_heki("HEKI_WEAK_PINNING")
        self.assertEqual(weak["register"], "cr4")
        self.assertEqual(weak["missing-bits"], ["umip"])
        pins = run.qmp.command("query-heki")["return"]["pins"]
        self.assertEqual(pins["cr0"]["missing-required"], ["wp"])
        self.assertEqual(pins["cr4"]["missing-required"], ["umip"])


    def test_vm_name_defaults_to_qemu_name(self):
        run = self.run_vm(heki={}, scenario="pin-only", extra_args=["-name", "web7"])
        run.start()
        self.assertEqual(run.wait(), GUEST_PASS, run.guest_text())
        names = {e["data"].get("vm-name") for e in run.qmp.heki_events()}
        self.assertEqual(names, {"web7"})


class Accounting(unittest.TestCase):
    """Events and query-heki agree with what the guest did."""

    def test_storm_individual_plus_suppressed_equals_guest_gps(self):
        run = Run(heki={"on-denial": "resume", "rate-limit": "50"},
                  scenario="storm", cpus=2, extra_append="writes=3000")
        self.addCleanup(run.close)
        run.start()
        self.assertEqual(run.wait(120), GUEST_PASS, run.guest_text())
        guest_gps = sum(int(l["gp"]) for l in run.per_cpu())
        self.assertEqual(guest_gps, 6000)
        individual = len(run.qmp.heki_events("HEKI_DENIAL"))
        suppressed = sum(e["data"]["count"]
                         for e in run.qmp.heki_events("HEKI_SUPPRESSED")
                         if e["data"]["event"] == "HEKI_DENIAL")
        self.assertLess(individual, 6000)
        self.assertEqual(individual + suppressed, guest_gps)

    def test_query_heki_matches_the_guest(self):
        # Writes alternate CR0, CR4, CR0: the CR4 denial pauses the VM, so
        # query-heki is read with the guest stopped at a known point.
        run = Run(heki={"on-denial-cr0": "resume", "on-denial-cr4": "pause"},
                  scenario="pin-deny", extra_append="writes=3")
        self.addCleanup(run.close)
        run.start()
        run.qmp.wait_event(lambda e: e["event"] == "STOP")
        query = run.qmp.command("query-heki")["return"]
        self.assertEqual(query["counters"]["denial"], {"cr0": 1, "cr4": 1})
        run.start()
        self.assertEqual(run.wait(), GUEST_PASS, run.guest_text())
        result = run.guest_result()
        self.assertEqual(pinned(query, "cr0"), hex_int(result["pins-cr0"]))
        self.assertEqual(pinned(query, "cr4"), hex_int(result["pins-cr4"]))
        self.assertEqual(int(result["gp"]), 3)
        verdicts = [d["data"]["verdict"] for d in run.qmp.heki_events("HEKI_DENIAL")]
        self.assertEqual(verdicts, ["resume", "pause", "resume"])

    def test_rejected_pins_make_no_exit(self):
        run = Run(heki={}, scenario="bad-pins")
        self.addCleanup(run.close)
        run.start()
        self.assertEqual(run.wait(), GUEST_PASS, run.guest_text())
        self.assertEqual(kinds(run).count("HEKI_CONFIGURE"), 0)
        self.assertEqual(kinds(run).count("HEKI_DENIAL"), 0)

    def test_audit_log_records_what_qmp_saw(self):
        audit = os.path.join(os.environ.get("TMPDIR", "/tmp"),
                             f"heki-e2e-audit-{os.getpid()}.jsonl")
        self.addCleanup(lambda: os.path.exists(audit) and os.unlink(audit))
        run = Run(heki={"audit-log": audit}, scenario="pin-deny",
                  extra_append="writes=2")
        self.addCleanup(run.close)
        run.start()
        self.assertEqual(run.wait(), GUEST_PASS, run.guest_text())
        with open(audit) as f:
            lines = [json.loads(l) for l in f]
        audited = [(l["event"], l["data"]) for l in lines
                   if l["event"] != "HEKI_CAPABILITY"]
        seen = [(e["name"], e["data"]) for e in run.qmp.heki_events()
                if e["name"] != "HEKI_CAPABILITY"]
        self.assertEqual(audited, seen)
        capabilities = [l for l in lines if l["event"] == "HEKI_CAPABILITY"]
        self.assertEqual(len(capabilities), 2)
        self.assertTrue(all(c["data"]["enabled"] for c in capabilities))


class Startup(unittest.TestCase):
    """Bad configurations stop QEMU at startup with a clear message."""

    def test_bad_option(self):
        status, err = startup_failure({"on-denial": "explode"})
        self.assertEqual(status, 1)
        self.assertIn("on-denial", err)
        self.assertIn("explode", err)

    def test_missing_plugin(self):
        run_env = dict(os.environ)
        os.environ["HEKI_PLUGIN"] = "/nonexistent/libHekiPlugin.so"
        try:
            with self.assertRaises(RuntimeError):
                startup_failure({})
        finally:
            os.environ.clear()
            os.environ.update(run_env)

    def test_missing_plugin_file_message(self):
        run = Run(heki=None, qmp=False,
                  extra_args=["-heki", "file=/nonexistent/libHekiPlugin.so"])
        self.addCleanup(run.close)
        self.assertEqual(run.wait(30), 1)
        self.assertIn("cannot load /nonexistent/libHekiPlugin.so", run.stderr)

    def test_library_without_the_symbols(self):
        libm = "/lib/x86_64-linux-gnu/libm.so.6"
        run = Run(heki=None, qmp=False, extra_args=["-heki", f"file={libm}"])
        self.addCleanup(run.close)
        self.assertEqual(run.wait(30), 1)
        self.assertIn("is not a heki plugin", run.stderr)
        self.assertIn("heki_plugin_abi_version", run.stderr)

    def test_abi_version_mismatch(self):
        # A library with every symbol of the ABI whose version is not 1.
        build = tempfile.mkdtemp(prefix="heki-e2e-abi-")
        source = os.path.join(build, "wrong_abi.c")
        library = os.path.join(build, "libwrong.so")
        names = ["new", "free", "free_string", "cap_number", "cap_mask",
                 "cap_result", "handle_exit", "query"]
        with open(source, "w") as f:
            f.write("unsigned heki_plugin_abi_version(void) { return 99; }\n")
            f.writelines(f"void heki_plugin_{n}(void) {{}}\n" for n in names)
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", library, source], check=True)
        run = Run(heki=None, qmp=False, extra_args=["-heki", f"file={library}"])
        self.addCleanup(run.close)
        self.assertEqual(run.wait(30), 1)
        self.assertIn("has ABI version 99, this QEMU supports version 1", run.stderr)

    def test_required_capability_refused(self):
        status, err = startup_failure({"require-caps": "on"},
                                      emulator_env={"HEKI_EMU_HEKI": "off"})
        self.assertEqual(status, 1)
        self.assertIn("KVM refused KVM_CAP_HEKI_CONFIGURE", err)

    def test_refused_capability_without_requirement_runs(self):
        run = Run(heki={}, scenario="pin-deny",
                  emulator_env={"HEKI_EMU_HEKI": "off"})
        self.addCleanup(run.close)
        run.start()
        self.assertEqual(run.wait(), GUEST_NO_HEKI, run.guest_text())
        self.assertIn("KVM refused", run.stderr)


    def test_heki_without_kvm(self):
        qemu, plugin = os.environ["HEKI_QEMU"], os.environ["HEKI_PLUGIN"]
        done = subprocess.run([qemu, "-accel", "qtest", "-M", "microvm",
                               "-nodefaults", "-display", "none",
                               "-heki", f"file={plugin}"],
                              capture_output=True, text=True, timeout=30)
        self.assertEqual(done.returncode, 1)
        self.assertIn("-heki needs the KVM accelerator", done.stderr)


class WhatThePatchChanges(unittest.TestCase):
    """The same guest and kernel emulator on QEMU without the patch."""

    def test_unpatched_qemu_sees_nothing_and_keeps_running(self):
        run = Run(unpatched=True, scenario="pin-deny", cpus=2,
                  extra_append="writes=3")
        self.addCleanup(run.close)
        run.start()
        # The kernel still refuses the writes (#GP), but the VMM never learns.
        self.assertEqual(run.wait(), GUEST_PASS, run.guest_text())
        self.assertEqual(run.guest_result()["gp"], "6")
        self.assertEqual(run.qmp.heki_events(), [])

    def test_unpatched_qemu_has_no_query_heki(self):
        run = Run(unpatched=True, scenario="pin-only")
        self.addCleanup(run.close)
        reply = run.qmp.command("query-heki")
        self.assertEqual(reply["error"]["class"], "CommandNotFound")

    def test_patched_qemu_without_plugin(self):
        run = Run(scenario="pin-only")
        self.addCleanup(run.close)
        reply = run.qmp.command("query-heki")
        self.assertIn("no heki plugin", reply["error"]["desc"])
        run.start()
        self.assertEqual(run.wait(), GUEST_PASS, run.guest_text())


if __name__ == "__main__":
    unittest.main()
