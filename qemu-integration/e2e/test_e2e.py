"""End to end: the patched QEMU loads libHekiPlugin.so, the guest pins and
attacks under real KVM (the Heki kernel side emulated by libheki-kvm-emu.so),
and QEMU reacts as the policy says. Run by `make -C qemu-integration test`.
"""

import json
import math
import os
import subprocess
import tempfile
import time
import unittest

from hekiqemu import (GUEST_NO_HEKI, GUEST_PASS, Run, hex_int, path_from_env,
                      startup_failure, typed, without_qom_path)

CR0_WP = 1 << 16
CR4_SMEP = 1 << 20

# The capability numbers of the Heki series: v2 CONFIGURE/DENIAL = 235/236,
# v3 = 236/237 (its 235 is VM_TYPES). Upstream they are VM_TYPES,
# PRE_FAULT_MEMORY and X86_APIC_BUS_CYCLES_NS.
HEKI_CAPS = (235, 236, 237)
PROFILES = {"v2": {"caps": (235, 236), "exits": (39, 40)},
            "v3": {"caps": (236, 237), "exits": (40, 41)}}
HEKI_MASK = 3   # what a Heki capability answers to KVM_CHECK_EXTENSION


def denials(query):
    return sum(query["counters"]["denial"].values())


def pinned(query, register):
    return hex_int(query["pins"][register]["value"])


def kinds(run):
    return [e["name"] for e in run.qmp.heki_events()]


def vm_answers(run):
    """KVM_CHECK_EXTENSION's last answer on the VM fd, per Heki number."""
    return {c["cap"]: c["result"] for c in run.ioctls()
            if c["op"] == "check-extension" and c["cap"] in HEKI_CAPS
            and c["target"] == "anon_inode:kvm-vm"}


def heki_enables(run):
    """Every KVM_ENABLE_CAP of a Heki number the trace saw."""
    return [c for c in run.ioctls() if c["op"] == "enable-cap" and c["cap"] in HEKI_CAPS]


def heki_profile_of(answers):
    """The rule of heki_plugin_enable_caps: which Heki kernel answers so."""
    if answers.get(235) == HEKI_MASK and answers.get(236) == HEKI_MASK \
            and answers.get(237) != HEKI_MASK:
        return "v2"
    if answers.get(236) == HEKI_MASK and answers.get(237) == HEKI_MASK \
            and answers.get(235, -1) >= 0 and answers[235] & 1:
        return "v3"
    return None


def kernel_events(events):
    """The kernel check's HEKI_CAPABILITY (the one with a status)."""
    return [e["data"] for e in events
            if e["name"] == "HEKI_CAPABILITY" and "status" in e["data"]]


def cap_events(events):
    """The HEKI_CAPABILITY of each KVM_ENABLE_CAP made."""
    return [e["data"] for e in events
            if e["name"] == "HEKI_CAPABILITY" and "status" not in e["data"]]


def int_keys(answers):
    """KVM_CHECK_EXTENSION's answers by number: the audit log's map
    {"235": 1} or QMP's list [{"capability": 235, "answer": 1}]."""
    if isinstance(answers, list):
        return {a["capability"]: a["answer"] for a in answers}
    return {int(k): v for k, v in answers.items()}


def panics(run):
    """The GUEST_PANICKED events' data."""
    return [e["data"] for e in run.qmp.events if e["event"] == "GUEST_PANICKED"]


def heki_lines(stderr):
    return [l for l in stderr.splitlines() if "heki" in l]


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
        self.assertEqual(sorted({d["data"]["cpu-index"] for d in denials}), [0, 1])
        for d in denials:
            self.assertEqual(d["data"]["verdict"], "resume")
            self.assertEqual(d["data"]["vm-name"], "e2e")
            self.assertNotEqual(hex_int(d["data"]["violated"]), 0)
        self.assertEqual(panics(run), [])   # resume is no panic
        pins = {c["data"]["register"]: hex_int(c["data"]["pinned"])
                for c in run.qmp.heki_events("HEKI_CONFIGURE")}
        self.assertEqual(pins.get("cr0"), hex_int(result["pins-cr0"]))
        self.assertEqual(pins.get("cr4"), hex_int(result["pins-cr4"]))

    def start_until_stopped(self, run):
        run.start()
        run.qmp.wait_event(lambda e: e["event"] == "STOP")
        self.assertEqual(run.status(), "guest-panicked")

    def check_pause(self, alias):
        run = self.run_vm(heki={"on-denial": "pause"}, scenario="pin-deny",
                          extra_append="writes=1", alias=alias)
        self.start_until_stopped(run)
        denial = run.qmp.wait_heki("HEKI_DENIAL")
        self.assertEqual(denial["verdict"], "pause")
        # Reported as QEMU reports a guest in trouble: GUEST_PANICKED with
        # the Heki information, after the HEKI_DENIAL that explains it
        # (heki_plugin_flush) and before the STOP.
        self.assertEqual(panics(run), [{"action": "pause", "info": {
            "type": "heki", "exit": "denial", "verdict": "pause",
            "cpu-index": denial["cpu-index"]}}])
        names = run.qmp.names()
        self.assertLess(names.index("HEKI_DENIAL"), names.index("GUEST_PANICKED"), names)
        self.assertLess(names.index("GUEST_PANICKED"), names.index("STOP"))
        self.assertIsNone(run.guest_result())   # stopped before its report
        query = run.qmp.command("query-heki")
        self.assertEqual(denials(query), 1, query)
        run.start()   # the #GP was injected before the stop: the guest goes on
        self.assertEqual(run.wait(), GUEST_PASS, run.guest_text())
        self.assertEqual(run.guest_result()["gp"], "1")

    def test_pause_stops_the_vm_like_a_panic_and_cont_resumes_it(self):
        self.check_pause(alias=False)

    def test_pause_through_the_heki_alias(self):
        # -heki file=...,on-denial=pause: what libvirt's <qemu:commandline> uses
        self.check_pause(alias=True)

    def test_poweroff_shuts_down(self):
        run = self.run_vm(heki={"on-denial": "poweroff"}, scenario="pin-deny")
        run.start()
        self.assertEqual(run.wait(), 0, run.stderr)
        shutdown = [e for e in run.qmp.events if e["event"] == "SHUTDOWN"]
        self.assertEqual(shutdown[0]["data"], {"guest": True, "reason": "guest-panic"})
        self.assertIsNone(run.guest_result())
        self.assertEqual(run.qmp.heki_events("HEKI_DENIAL")[0]["data"]["verdict"],
                         "poweroff")
        # As -action panic=shutdown reports it: GUEST_PANICKED, then SHUTDOWN.
        self.assertEqual([(p["action"], p["info"]["verdict"]) for p in panics(run)],
                         [("poweroff", "poweroff")])
        names = run.qmp.names()
        self.assertLess(names.index("HEKI_DENIAL"), names.index("GUEST_PANICKED"), names)
        self.assertLess(names.index("GUEST_PANICKED"), names.index("SHUTDOWN"))

    def check_under_no_shutdown(self, verdict):
        # libvirt runs QEMU with -no-shutdown (-action shutdown=pause): as
        # qemu_system_guest_panicked does then, poweroff and exit only stop
        # the guest (GUEST_PANICKED "pause", no SHUTDOWN) and leave the
        # decision to management (libvirt's <on_crash>).
        run = self.run_vm(heki={"on-denial": verdict}, scenario="pin-deny",
                          extra_args=["-no-shutdown"])
        self.start_until_stopped(run)
        self.assertEqual([(p["action"], p["info"]["verdict"]) for p in panics(run)],
                         [("pause", verdict)])
        time.sleep(0.3)   # a SHUTDOWN, had one been requested, comes now
        self.assertNotIn("SHUTDOWN", run.qmp.names())
        self.assertEqual(run.status(), "guest-panicked")
        self.assertIsNone(run.process.poll())
        self.assertEqual(run.quit(), 0)

    def test_poweroff_under_no_shutdown_waits_for_management(self):
        self.check_under_no_shutdown("poweroff")

    def test_exit_under_no_shutdown_waits_for_management(self):
        self.check_under_no_shutdown("exit")

    def test_reset_of_the_pinned_vm_powers_off(self):
        # The reset rule (test_reset.py): a pinned VM is not reset in place.
        # The guest idles after its denied write: the reset comes first.
        run = self.run_vm(heki={"on-denial": "reset"}, scenario="os-boot",
                          extra_append="writes=1 idle-ms=10000")
        run.start()
        self.assertEqual(run.wait(), 0, run.stderr)
        names = [e["event"] for e in run.qmp.events]
        self.assertLess(names.index("HEKI_DENIAL"), names.index("HEKI_RESET"), names)
        self.assertLess(names.index("HEKI_RESET"), names.index("SHUTDOWN"), names)
        self.assertNotIn("RESET", names)
        self.assertEqual(panics(run), [])   # a reset is no panic
        shutdown = [e["data"] for e in run.qmp.events if e["event"] == "SHUTDOWN"]
        self.assertEqual(shutdown, [{"guest": True, "reason": "guest-panic"}])
        self.assertEqual(len([l for l in run.guest() if "boot" in l]), 1)

    def test_reset_with_keep_pins_reboots_and_pins_survive(self):
        run = self.run_vm(heki={"on-denial": "reset", "on-reset": "keep-pins"}, scenario="pin-deny")
        run.start()
        run.qmp.wait_events(lambda e: e["event"] == "RESET", 2)
        query = run.qmp.command("query-heki")
        resets = [e["data"] for e in run.qmp.events if e["event"] == "RESET"]
        self.assertEqual(resets[0], {"guest": True, "reason": "guest-panic"})
        self.assertEqual(panics(run), [])   # a reset is no panic
        names = [e["event"] for e in run.qmp.events]
        self.assertLess(names.index("HEKI_DENIAL"), names.index("HEKI_RESET"), names)
        self.assertLess(names.index("HEKI_RESET"), names.index("RESET"), names)
        self.assertEqual(run.status(), "running")
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
        self.assertEqual([(p["action"], p["info"]["verdict"]) for p in panics(run)],
                         [("poweroff", "exit")])

    def test_weak_pinning_verdict(self):
        # The guest pins CR4 SMEP|SMAP and never CR0: the CR4 pin misses umip.
        run = self.run_vm(heki={"require-cr0": "wp", "require-cr4": "smep+umip",
                                "on-weak-pinning": "pause"}, scenario="weak")
        self.start_until_stopped(run)
        weak = run.qmp.wait_heki("HEKI_WEAK_PINNING")
        self.assertEqual(weak["register"], "cr4")
        self.assertEqual(weak["missing-bits"], ["umip"])
        pins = run.qmp.command("query-heki")["pins"]
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
        # The plugin's limiter is the throttle of the Heki events (QEMU's
        # monitor throttle would keep only the last event of each period):
        # at most rate-limit individual events per second reach QMP.
        stamps = [event_time(e) for e in run.qmp.events
                  if e["event"] in ("HEKI_DENIAL", "HEKI_SUPPRESSED")]
        seconds = math.ceil(max(stamps) - min(stamps)) + 2
        self.assertLessEqual(individual, 50 * seconds, (individual, suppressed, seconds))

    def test_query_heki_matches_the_guest(self):
        # Writes alternate CR0, CR4, CR0: the CR4 denial pauses the VM, so
        # query-heki is read with the guest stopped at a known point.
        run = Run(heki={"on-denial-cr0": "resume", "on-denial-cr4": "pause"},
                  scenario="pin-deny", extra_append="writes=3")
        self.addCleanup(run.close)
        run.start()
        run.qmp.wait_event(lambda e: e["event"] == "STOP")
        query = run.qmp.command("query-heki")
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
        # QMP has every field of the plugin's JSON, typed (integers, lists,
        # cpu-index), plus the vCPU's QOM path.
        audited = [(l["event"], typed(l["data"])) for l in lines
                   if l["event"] != "HEKI_CAPABILITY"]
        seen = [(e["name"], without_qom_path(e["data"])) for e in run.qmp.heki_events()
                if e["name"] != "HEKI_CAPABILITY"]
        self.assertEqual(audited, seen)
        self.assertEqual([e["name"] for e in run.qmp.heki_events()].count("HEKI_DENIAL"), 2)
        for e in run.qmp.heki_events():
            if e["name"] in ("HEKI_CONFIGURE", "HEKI_DENIAL"):
                self.assertEqual(e["data"]["qom-path"], "/machine/unattached/device[0]")
                self.assertIsInstance(e["data"]["value"], int)
                self.assertIsInstance(e["data"]["pinned"], int)
                self.assertIn(e["data"]["register"], ("cr0", "cr4"))
                self.assertEqual(e["data"]["pinned-bits"],
                                 [b for b in e["data"]["pinned-bits"] if b])
        for denial in run.qmp.heki_events("HEKI_DENIAL"):
            d = denial["data"]   # integers: the README's rule holds as is
            self.assertEqual(d["violated"], d["pinned"] & ~d["value"])
            if d["register"] == "cr0":
                self.assertEqual((d["violated"], d["violated-bits"]), (CR0_WP, ["wp"]))
        # The kernel check (the emulated v2 kernel), then one per KVM_ENABLE_CAP.
        capabilities = [{"name": l["event"], "data": l["data"]} for l in lines
                        if l["event"] == "HEKI_CAPABILITY"]
        self.assertEqual(len(capabilities), 3)
        check = kernel_events(capabilities)
        self.assertEqual([(c["status"], c["profile"]) for c in check], [("heki", "v2")])
        # The startup events reach QMP or not (sent while the client connects),
        # but those that do are the audit log's, typed.
        for e in run.qmp.heki_events("HEKI_CAPABILITY"):
            data = dict(e["data"])
            self.assertEqual(data.pop("report"), "kernel" if "status" in data else "enable-cap")
            self.assertIn(data, [typed(c["data"]) for c in capabilities])
        enabled = cap_events(capabilities)
        self.assertEqual([(c["capability"], c["enabled"]) for c in enabled],
                         [(235, True), (236, True)])


class Startup(unittest.TestCase):
    """Bad configurations stop QEMU at startup with a clear message."""

    def check_bad_option(self, alias):
        run = Run(heki={"on-denial": "explode"}, qmp=False, alias=alias)
        self.addCleanup(run.close)
        self.assertEqual(run.wait(30), 1)
        # The plugin's message, through kvm_init's return code: QEMU's
        # accelerator setup reports the failure (no exit() inside kvm_init).
        fatal = [l for l in run.stderr.splitlines() if "heki plugin " in l]
        self.assertEqual(len(fatal), 1, run.stderr)
        self.assertIn("on-denial", fatal[0])
        self.assertIn("explode", fatal[0])
        self.assertIn("failed to initialize kvm", run.stderr)
        self.assertNotIn("Aborted", run.stderr)

    def test_bad_option(self):
        self.check_bad_option(alias=False)

    def test_bad_option_through_the_alias(self):
        self.check_bad_option(alias=True)

    def test_option_without_plugin(self):
        run2 = subprocess.run([path_from_env("HEKI_QEMU"), "-M", "microvm", "-nodefaults",
                               "-display", "none", "-accel", "kvm,heki-on-denial=pause"],
                              capture_output=True, text=True, timeout=30)
        self.assertEqual(run2.returncode, 1)
        self.assertIn("heki-on-denial needs heki=<path of the plugin>", run2.stderr)

    def test_alias_unknown_option(self):
        run = Run(heki=None, qmp=False, extra_args=[
            "-heki", f"file={path_from_env('HEKI_PLUGIN')},explode=1"])
        self.addCleanup(run.close)
        self.assertEqual(run.wait(30), 1)
        self.assertIn("-heki: unknown option 'explode'", run.stderr)

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
        self.assertIn("not a heki plugin", run.stderr)
        self.assertIn("heki_plugin_abi_version", run.stderr)

    def test_abi_version_mismatch(self):
        # A library with every symbol of the ABI whose version is not 1.
        build = tempfile.mkdtemp(prefix="heki-e2e-abi-")
        source = os.path.join(build, "wrong_abi.c")
        library = os.path.join(build, "libwrong.so")
        names = ["new", "free", "free_string", "enable_caps", "start",
                 "handle_exit", "exit_number", "query"]
        with open(source, "w") as f:
            f.write("unsigned heki_plugin_abi_version(void) { return 99; }\n")
            f.writelines(f"void heki_plugin_{n}(void) {{}}\n" for n in names)
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", library, source], check=True)
        run = Run(heki=None, qmp=False, extra_args=["-heki", f"file={library}"])
        self.addCleanup(run.close)
        self.assertEqual(run.wait(30), 1)
        self.assertIn("has ABI version 99, this QEMU supports version 1", run.stderr)

    def test_required_capability_refused(self):
        # A Heki v2 kernel built without CONFIG_HEKI: the capabilities answer
        # 3, KVM_ENABLE_CAP refuses them.
        status, err = startup_failure({"require-caps": "on"},
                                      emulator_env={"HEKI_EMU_HEKI": "off"})
        self.assertEqual(status, 1)
        fatal = [l for l in err.splitlines() if "heki plugin " in l]
        self.assertEqual(len(fatal), 1, err)
        self.assertIn("require-caps=on", fatal[0])
        self.assertIn("KVM refused capability 235", fatal[0])
        self.assertIn("Invalid argument", fatal[0])

    def test_refused_capability_without_requirement_runs(self):
        run = Run(heki={}, scenario="pin-deny",
                  emulator_env={"HEKI_EMU_HEKI": "off"})
        self.addCleanup(run.close)
        run.start()
        self.assertEqual(run.wait(), GUEST_NO_HEKI, run.guest_text())
        self.assertIn({"heki": "absent", "reason": "enosys"}, run.guest())
        self.assertIn("Heki v2 kernel", run.stderr)
        for cap in (235, 236):
            refused = [l for l in run.stderr.splitlines()
                       if f"KVM_ENABLE_CAP {cap} " in l and "refused (-22)" in l]
            self.assertEqual(len(refused), 1, run.stderr)


    def test_heki_without_kvm(self):
        qemu, plugin = os.environ["HEKI_QEMU"], os.environ["HEKI_PLUGIN"]
        done = subprocess.run([qemu, "-accel", "qtest", "-M", "microvm",
                               "-nodefaults", "-display", "none",
                               "-heki", f"file={plugin}"],
                              capture_output=True, text=True, timeout=30)
        self.assertEqual(done.returncode, 1)
        self.assertIn("-heki needs the KVM accelerator", done.stderr)


HEKI_OPTIONS = ["abi", "exit-configure", "exit-denial", "cap-configure", "cap-denial",
                "configure-exits", "denial-exits", "on-denial", "on-denial-cr0",
                "on-denial-cr4", "require-cr0", "require-cr4", "on-weak-pinning",
                "pin-deadline", "vm-name", "audit-log", "rate-limit", "require-caps",
                "migration", "on-reset"]


class Configuration(unittest.TestCase):
    """The plugin as properties of the KVM accelerator."""

    def test_accel_help_lists_the_heki_properties(self):
        done = subprocess.run([path_from_env("HEKI_QEMU"), "-accel", "kvm,help"],
                              capture_output=True, text=True, timeout=30)
        self.assertEqual(done.returncode, 0, done.stderr)
        listed = {l.split("=")[0].strip() for l in done.stdout.splitlines()
                  if l.strip().startswith("heki")}
        self.assertEqual(listed, {"heki"} | {f"heki-{k}" for k in HEKI_OPTIONS})
        self.assertIn("notify-vmexit", done.stdout)   # the accelerator's own

    def test_second_accel_is_a_fallback_not_a_merge(self):
        # Why -heki exists: libvirt writes its own -accel kvm; one more
        # -accel kvm,heki=... in <qemu:commandline> is never used.
        run = Run(heki=None, scenario="pin-only", extra_args=[
            "-accel", f"kvm,heki={path_from_env('HEKI_PLUGIN')}"])
        self.addCleanup(run.close)
        self.assertIn("no heki plugin", run.qmp.error("query-heki")[1])

    def test_the_accelerator_has_no_qom_path(self):
        # qom-set cannot reach the accelerator in QEMU 10.0 (it is not a
        # child of anything), so run-time changes go through heki-set-policy.
        run = Run(heki={}, scenario="pin-only")
        self.addCleanup(run.close)
        for path in ("/", "/machine", "/objects"):
            types = [p["type"] for p in run.qmp.command("qom-list", path=path)]
            self.assertFalse([t for t in types if "accel" in t], (path, types))
        self.assertIn("kvm-accel", [t["name"] for t in run.qmp.command(
            "qom-list-types", implements="accel")])


class RunTimePolicy(unittest.TestCase):
    """heki-set-policy: validated by the plugin, all or nothing, effective
    from the next exit, reported as HEKI_POLICY (QMP and audit log)."""

    def test_policy_change_judges_the_next_denial(self):
        # Writes CR0, CR4, CR0: the CR4 denial pauses; then CR0 denials are
        # made to pause too, and the third write follows the new policy.
        run = Run(heki={"on-denial-cr0": "resume", "on-denial-cr4": "pause"},
                  scenario="pin-deny", extra_append="writes=3", audit=True)
        self.addCleanup(run.close)
        run.start()
        run.qmp.wait_event(lambda e: e["event"] == "STOP")
        run.qmp.command("heki-set-policy", **{"on-denial-cr0": "pause"})
        policy = run.qmp.wait_heki("HEKI_POLICY")
        self.assertEqual(policy["changed"], ["on-denial-cr0"])
        self.assertEqual((policy["on-denial-cr0"], policy["on-denial-cr4"]), ("pause", "pause"))
        self.assertEqual(run.qmp.command("query-heki")["policy"]["on-denial-cr0"], "pause")
        run.start()
        run.qmp.wait_events(lambda e: e["event"] == "STOP", 2)
        verdicts = [d["data"]["verdict"] for d in run.qmp.heki_events("HEKI_DENIAL")]
        self.assertEqual(verdicts, ["resume", "pause", "pause"])
        self.assertEqual(run.status(), "guest-panicked")
        self.assertEqual(run.quit(), 0)
        audited = run.audit_events("HEKI_POLICY")
        self.assertEqual([typed(e["data"]) for e in audited],
                         [e["data"] for e in run.qmp.heki_events("HEKI_POLICY")])

    def test_bad_value_is_refused_and_changes_nothing(self):
        run = Run(heki={"on-denial": "resume", "require-cr0": "wp"}, scenario="pin-only")
        self.addCleanup(run.close)
        before = run.qmp.command("query-heki")["policy"]
        # All or nothing: a good on-denial with a bad require-cr4.
        error_class, desc = run.qmp.error("heki-set-policy", **{
            "on-denial": "pause", "require-cr4": "nonsense"})
        self.assertEqual(error_class, "GenericError")
        self.assertIn("require-cr4", desc)   # the plugin's own message
        self.assertIn("nonsense", desc)
        # A verdict QAPI does not know is refused before the plugin.
        error_class, desc = run.qmp.error("heki-set-policy", **{"on-denial": "explode"})
        self.assertIn("explode", desc)
        self.assertEqual(run.qmp.command("query-heki")["policy"], before)
        run.start()
        self.assertEqual(run.wait(), GUEST_PASS, run.guest_text())
        self.assertEqual(run.qmp.heki_events("HEKI_POLICY"), [])


class ExitPath(unittest.TestCase):
    """Only the exits the plugin claims reach it (the trace point
    kvm_heki_exit is on that path; kvm_run_exit sees every exit)."""

    def test_other_exits_do_not_call_the_plugin(self):
        run = Run(heki={"on-denial": "resume"}, scenario="pin-deny",
                  extra_append="writes=2",
                  extra_args=["-trace", "kvm_heki_exit", "-trace", "kvm_run_exit"])
        self.addCleanup(run.close)
        run.start()
        self.assertEqual(run.wait(), GUEST_PASS, run.guest_text())
        every = [l for l in run.stderr.splitlines() if "kvm_run_exit" in l]
        heki = [l for l in run.stderr.splitlines() if "kvm_heki_exit" in l]
        events = len(run.qmp.heki_events("HEKI_CONFIGURE")) + \
            len(run.qmp.heki_events("HEKI_DENIAL"))
        self.assertEqual(events, 4)
        self.assertEqual(len(heki), events, run.stderr[-2000:])
        # The guest's serial output and its exit are I/O exits: many more.
        self.assertGreater(len(every), 10 * len(heki))
        self.assertTrue(all(" exit 39 " in l or " exit 40 " in l for l in heki), heki)


class Schema(unittest.TestCase):
    """query-qmp-schema describes the Heki types (no 'any')."""

    def test_schema_has_typed_heki_events_and_query(self):
        run = Run(scenario="pin-only")
        self.addCleanup(run.close)
        schema = run.qmp.command("query-qmp-schema")
        by_name = {e["name"]: e for e in schema}

        def members(type_name):
            return {m["name"]: m["type"] for m in by_name[type_name].get("members", [])}

        for event in ("HEKI_CONFIGURE", "HEKI_DENIAL", "HEKI_WEAK_PINNING",
                      "HEKI_MALFORMED_EXIT", "HEKI_CAPABILITY", "HEKI_SUPPRESSED",
                      "HEKI_POLICY", "HEKI_RESET"):
            self.assertEqual(by_name[event]["meta-type"], "event", event)
            self.assertNotEqual(by_name[event]["arg-type"], "any", event)
        denial = members(by_name["HEKI_DENIAL"]["arg-type"])
        self.assertEqual(by_name[denial["value"]]["json-type"], "int")
        self.assertEqual(by_name[denial["cpu-index"]]["json-type"], "int")
        self.assertEqual(by_name[denial["qom-path"]]["json-type"], "string")
        self.assertEqual(by_name[denial["register"]]["meta-type"], "enum")
        self.assertEqual(by_name[denial["verdict"]]["meta-type"], "enum")
        self.assertEqual(set(by_name[denial["register"]]["members"][i]["name"]
                             for i in range(2)), {"cr0", "cr4"})
        self.assertIn("violated-bits", denial)
        capability = by_name[by_name["HEKI_CAPABILITY"]["arg-type"]]
        self.assertEqual(capability["tag"], "report")
        query = by_name["query-heki"]
        self.assertNotEqual(query["ret-type"], "any")
        self.assertTrue({"kernel", "exits", "policy", "pins", "counters"}
                        <= set(members(query["ret-type"])))
        self.assertEqual(by_name["heki-set-policy"]["meta-type"], "command")
        panic_types = [e for e in schema if e.get("meta-type") == "object"
                       and e.get("tag") == "type"
                       and any(v["case"] == "heki" for v in e.get("variants", []))]
        self.assertEqual(len(panic_types), 1)   # GuestPanicInformation's heki branch


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
        self.assertEqual(run.qmp.error("query-heki")[0], "CommandNotFound")

    def test_patched_qemu_without_plugin(self):
        run = Run(scenario="pin-only")
        self.addCleanup(run.close)
        self.assertIn("no heki plugin", run.qmp.error("query-heki")[1])
        run.start()
        self.assertEqual(run.wait(), GUEST_PASS, run.guest_text())


class StockKernel(unittest.TestCase):
    """This machine's real KVM, without the emulator: 235-237 mean other
    things there, and KVM_ENABLE_CAP(237, 3) would silently set the APIC bus
    cycle to 3 ns. The recorder (libkvm-ioctl-trace.so) shows what reached
    the kernel."""

    def stock_answers(self, run):
        answers = vm_answers(run)
        # The plugin asked each number (else the trace proves nothing).
        self.assertEqual(sorted(answers), list(HEKI_CAPS), run.ioctls())
        self.assertIsNone(heki_profile_of(answers),
                          f"premise: this kernel answers like a Heki kernel: {answers}")
        return answers

    def assert_nothing_reached_the_kernel(self, run):
        self.assertEqual(heki_enables(run), [])
        # The recorder does see QEMU's own KVM_ENABLE_CAPs on the VM (164,
        # KVM_CAP_EXCEPTION_PAYLOAD, here): an empty list above means something.
        self.assertNotEqual([c for c in run.ioctls() if c["op"] == "enable-cap"
                             and c["target"] == "anon_inode:kvm-vm"], [])

    def check_runs_without_heki(self, abi):
        run = Run(heki={"abi": abi, "on-denial": "pause"}, emulator=False,
                  ioctl_trace="kernel", audit=True)
        self.addCleanup(run.close)
        query = run.qmp.command("query-heki")   # -S: before the guest
        run.start()
        self.assertEqual(run.wait(), GUEST_NO_HEKI, run.guest_text())
        self.assertIn({"heki": "absent", "reason": "port-unassigned"}, run.guest())
        self.assert_nothing_reached_the_kernel(run)
        answers = self.stock_answers(run)

        self.assertEqual(query["abi"], abi)
        self.assertNotIn("profile", query)   # QAPI: absent, not null
        self.assertEqual(query["kernel"]["status"], "no-heki-kernel", query)
        self.assertEqual(int_keys(query["kernel"]["answers"]), answers)
        for kind in ("configure", "denial"):
            self.assertFalse(query["exits"][kind]["enabled"], query)
            self.assertNotIn("exit", query["exits"][kind], query)

        audited = run.audit_events()
        self.assertEqual(len(kernel_events(audited)), 1, audited)
        check = kernel_events(audited)[0]
        self.assertEqual((check["status"], check["abi"], check["profile"], check["required"]),
                         ("no-heki-kernel", abi, None, False))
        self.assertEqual(int_keys(check["answers"]), answers)
        self.assertEqual(cap_events(audited), [])   # no KVM_ENABLE_CAP made
        self.assertEqual(run.qmp.heki_events("HEKI_MALFORMED_EXIT"), [])
        self.assertEqual([e["name"] for e in audited], ["HEKI_CAPABILITY"])
        # One line at startup, naming the kernel's answers.
        lines = heki_lines(run.stderr)
        self.assertEqual(len(lines), 1, run.stderr)
        for cap, answer in answers.items():
            self.assertIn(f"{cap}={answer}", lines[0])

    def test_abi_auto_enables_nothing(self):
        self.check_runs_without_heki("auto")

    def test_abi_v2_enables_nothing(self):
        self.check_runs_without_heki("v2")

    def test_abi_v3_enables_nothing(self):
        self.check_runs_without_heki("v3")

    def check_required_stops_qemu(self, abi):
        run = Run(heki={"abi": abi, "require-caps": "on"}, emulator=False,
                  ioctl_trace="kernel", qmp=False)
        self.addCleanup(run.close)
        self.assertEqual(run.wait(30), 1, run.stderr)
        self.assert_nothing_reached_the_kernel(run)
        answers = self.stock_answers(run)
        self.assertIn("require-caps", run.stderr)
        fatal = [l for l in run.stderr.splitlines() if "heki plugin " in l]
        self.assertEqual(len(fatal), 1, run.stderr)
        for cap, answer in answers.items():
            self.assertIn(f"{cap}={answer}", fatal[0])

    def test_abi_auto_required_stops_qemu(self):
        self.check_required_stops_qemu("auto")

    def test_abi_v2_required_stops_qemu(self):
        self.check_required_stops_qemu("v2")

    def test_abi_v3_required_stops_qemu(self):
        self.check_required_stops_qemu("v3")


class EmulatedKernels(unittest.TestCase):
    """The emulator as a Heki v2 or v3 kernel: abi=auto finds each; an abi=
    of the other version enables nothing. The emulator answers its own two
    numbers itself, so the recorder sits above it ("vmm": what QEMU asks)."""

    def check_auto_finds(self, version):
        profile = PROFILES[version]
        run = Run(heki={"on-denial": "resume"}, scenario="pin-deny",
                  extra_append="writes=2", emulator_env={"HEKI_EMU_ABI": version},
                  ioctl_trace="vmm", audit=True)
        self.addCleanup(run.close)
        query = run.qmp.command("query-heki")
        self.assertEqual((query["abi"], query["profile"], query["kernel"]["status"]),
                         ("auto", version, "heki"), query)
        for kind, cap, exit_number in zip(("configure", "denial"), profile["caps"],
                                          profile["exits"]):
            self.assertEqual((query["exits"][kind]["exit"], query["exits"][kind]["capability"],
                              query["exits"][kind]["enabled"]), (exit_number, cap, True), query)
        run.start()
        self.assertEqual(run.wait(), GUEST_PASS, run.guest_text())
        self.assertEqual(len(run.qmp.heki_events("HEKI_DENIAL")), 2)
        self.assertEqual(len(run.qmp.heki_events("HEKI_CONFIGURE")), 2)
        self.assertEqual(run.qmp.heki_events("HEKI_MALFORMED_EXIT"), [])

        answers = vm_answers(run)
        self.assertEqual(heki_profile_of(answers), version, answers)
        audited = run.audit_events()
        check = kernel_events(audited)
        self.assertEqual(len(check), 1, audited)
        self.assertEqual((check[0]["status"], check[0]["abi"], check[0]["profile"]),
                         ("heki", "auto", version))
        self.assertEqual(int_keys(check[0]["answers"]), answers)
        enabled = cap_events(audited)
        self.assertEqual([(e["kind"], e["capability"], e["enabled"], e["result"]) for e in enabled],
                         [("configure", profile["caps"][0], True, 0),
                          ("denial", profile["caps"][1], True, 0)])
        # What QEMU asked: exactly the profile's two, each with mask 0x3
        # (also the positive control of the stock-kernel tests' recorder).
        self.assertEqual([(c["cap"], c["arg0"], c["result"]) for c in heki_enables(run)],
                         [(profile["caps"][0], 3, 0), (profile["caps"][1], 3, 0)])

    def test_auto_finds_a_v2_kernel(self):
        self.check_auto_finds("v2")

    def test_auto_finds_a_v3_kernel(self):
        self.check_auto_finds("v3")

    def check_mismatch(self, asked, kernel):
        # on-denial=pause: had the plugin claimed the denials, the VM would stop.
        run = Run(heki={"abi": asked, "on-denial": "pause"}, scenario="pin-deny",
                  emulator_env={"HEKI_EMU_ABI": kernel}, ioctl_trace="vmm", audit=True)
        self.addCleanup(run.close)
        query = run.qmp.command("query-heki")
        self.assertEqual((query["abi"], query.get("profile"), query["kernel"]["status"]),
                         (asked, None, "mismatch"), query)
        for kind in ("configure", "denial"):
            self.assertFalse(query["exits"][kind]["enabled"], query)
        run.start()
        # The emulated kernel still refuses the writes (#GP) by itself.
        self.assertEqual(run.wait(), GUEST_PASS, run.guest_text())
        self.assertEqual(run.guest_result()["gp"], "3")
        self.assertNotIn("STOP", [e["event"] for e in run.qmp.events])
        # No exit event; the startup HEKI_CAPABILITY may reach QMP or not
        # (it is sent as the test connects): the audit file has it.
        self.assertEqual([e for e in run.qmp.heki_events() if e["name"] != "HEKI_CAPABILITY"], [])
        self.assertEqual(heki_enables(run), [])   # QEMU asked for none
        audited = run.audit_events()
        self.assertEqual(len(kernel_events(audited)), 1, audited)
        check = kernel_events(audited)[0]
        self.assertEqual((check["status"], check["abi"], check["profile"]),
                         ("mismatch", asked, None))
        self.assertEqual(heki_profile_of(int_keys(check["answers"])), kernel)
        self.assertEqual(cap_events(audited), [])
        lines = heki_lines(run.stderr)
        self.assertEqual(len(lines), 1, run.stderr)
        for cap, answer in int_keys(check["answers"]).items():
            self.assertIn(f"{cap}={answer}", lines[0])

    def test_abi_v2_on_a_v3_kernel_enables_nothing(self):
        self.check_mismatch("v2", "v3")

    def test_abi_v3_on_a_v2_kernel_enables_nothing(self):
        self.check_mismatch("v3", "v2")


def event_time(event):
    return event["timestamp"]["seconds"] + event["timestamp"]["microseconds"] / 1e6


class PinDeadline(unittest.TestCase):
    """A guest that never pins (scenario no-pin) under a policy that
    requires CR0.WP: pin-deadline=1 judges it one second after it first
    runs (emulated v2 kernel)."""

    def run_no_pin(self, verdict, idle_ms):
        run = Run(heki={"require-cr0": "wp", "pin-deadline": "1",
                        "on-weak-pinning": verdict},
                  scenario="no-pin", extra_append=f"idle-ms={idle_ms}")
        self.addCleanup(run.close)
        return run

    def weak_after_cont(self, run, timeout=6):
        """The HEKI_WEAK_PINNING event and its delay after cont (RESUME)."""
        weak = run.qmp.wait_event(lambda e: e["event"] == "HEKI_WEAK_PINNING", timeout)
        resume = [e for e in run.qmp.events if e["event"] == "RESUME"]
        self.assertEqual(len(resume), 1)
        data = weak["data"]
        self.assertNotIn("cpu-index", data)
        self.assertEqual(data["deadline-seconds"], 1)
        self.assertEqual(data["register"], "cr0")
        self.assertEqual(data["missing-bits"], ["wp"])
        return data, event_time(weak) - event_time(resume[0])

    def test_deadline_pauses_a_guest_that_never_pins(self):
        run = self.run_no_pin("pause", idle_ms=30000)
        run.start()
        data, delay = self.weak_after_cont(run)
        self.assertEqual(data["verdict"], "pause")
        self.assertGreaterEqual(delay, 0.9)
        self.assertLess(delay, 4)
        run.qmp.wait_event(lambda e: e["event"] == "STOP", timeout=5)
        names = run.qmp.names()
        self.assertLess(names.index("HEKI_WEAK_PINNING"), names.index("STOP"))
        self.assertEqual(run.status(), "guest-panicked")
        # The main loop's verdict: no vCPU, no exit in the panic information.
        self.assertEqual(panics(run), [{"action": "pause",
                                        "info": {"type": "heki", "verdict": "pause"}}])
        query = run.qmp.command("query-heki")
        self.assertEqual(query["pins"]["cr0"]["missing-required"], ["wp"])
        self.assertIsNone(run.guest_result())   # stopped in the middle of its idle
        self.assertIn({"idle": "", "ms": "30000"}, run.guest())
        self.assertEqual(run.quit(), 0)

    def test_resume_reports_and_the_guest_runs_to_its_end(self):
        run = self.run_no_pin("resume", idle_ms=2500)
        run.start()
        data, delay = self.weak_after_cont(run)
        self.assertEqual(data["verdict"], "resume")
        self.assertGreaterEqual(delay, 0.9)
        self.assertEqual(run.wait(), GUEST_PASS, run.guest_text())
        self.assertEqual(run.guest_result()["result"], "pass")
        self.assertIn({"idle-done": "", "ms": "2500"}, run.guest())
        self.assertNotIn("STOP", [e["event"] for e in run.qmp.events])
        self.assertEqual(len(run.qmp.heki_events("HEKI_WEAK_PINNING")), 1)

    def test_deadline_counts_from_cont(self):
        run = self.run_no_pin("pause", idle_ms=30000)
        time.sleep(1.6)   # longer than the deadline, still under -S
        self.assertEqual(run.status(), "prelaunch")
        self.assertEqual(run.qmp.heki_events("HEKI_WEAK_PINNING"), [])
        run.start()
        data, delay = self.weak_after_cont(run)
        self.assertGreaterEqual(delay, 0.9)
        self.assertLess(delay, 4)
        run.qmp.wait_event(lambda e: e["event"] == "STOP", timeout=5)
        self.assertEqual(run.status(), "guest-panicked")


if __name__ == "__main__":
    unittest.main()
