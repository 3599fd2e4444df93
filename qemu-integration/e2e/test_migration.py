"""End to end: migration and snapshots of a VM whose guest pinned CR bits.
KVM keeps the pins in the source's kernel and no ioctl sets them in another
one, so QEMU holds a migration blocker from the first pin, unless the
operator allowed unprotected migration; then the plugin's state travels in
a "heki" section and the destination says its pins are not enforced.

Source and destination are patched QEMUs on this machine's KVM with the
Heki kernel emulator preloaded: the destination's "kernel" is a Heki
kernel that never saw the source's pins (the emulator keeps them in the
source process). Run by `make -C qemu-integration test`.
"""

import os
import time
import unittest

from hekiqemu import GUEST_PASS, Run, hex_int

CR0_WP = 1 << 16
CR4_SMEP_SMAP = (1 << 20) | (1 << 21)
# pin-wait: the guest pins, idles this long (the test migrates it
# meanwhile), then clears CR0.WP once through the port.
IDLE_MS = 5000


def migration_events(run):
    return [e["data"] for e in run.qmp.heki_events("HEKI_MIGRATION")]


def audit_actions(run):
    return [e["data"]["action"] for e in run.audit_events("HEKI_MIGRATION")]


def after_wait(run):
    lines = [l for l in run.guest() if "after-wait" in l]
    return lines[-1] if lines else None


class Migration(unittest.TestCase):
    def setUp(self):
        self.runs = []
        self.dir = None

    def tearDown(self):
        for run in self.runs:
            run.close()

    def run_vm(self, **kwargs):
        run = Run(**kwargs)
        self.runs.append(run)
        return run

    def source(self, heki=None, scenario="pin-wait", idle_ms=IDLE_MS):
        return self.run_vm(heki=dict({"vm-name": "src"}, **(heki or {})), scenario=scenario,
                           extra_append=f"idle-ms={idle_ms}", audit=True)

    def destination(self, uri, heki=None, scenario="pin-wait", unpatched=False, idle_ms=IDLE_MS):
        return self.run_vm(heki=None if unpatched else dict({"vm-name": "dst"}, **(heki or {})),
                           scenario=scenario, extra_append=f"idle-ms={idle_ms}", unpatched=unpatched,
                           audit=not unpatched, start_paused=False, extra_args=("-incoming", uri))

    def migrate(self, run, uri, timeout=30):
        """Starts a migration; returns query-migrate once it ended."""
        run.qmp.command("migrate", uri=uri)
        return self.wait_migration(run, timeout)

    def wait_migration(self, run, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            info = run.qmp.command("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                return info
            self.assertLess(time.monotonic(), deadline, f"migration still {info.get('status')}")
            time.sleep(0.05)

    def wait_blocked(self, run):
        data = run.qmp.wait_heki("HEKI_MIGRATION", timeout=10)
        self.assertEqual(data["action"], "blocked", data)
        return data

    def socket(self, run):
        return "unix:" + os.path.join(run.dir, "migrate.sock")

    def test_unpinned_vm_migrates_to_a_qemu_without_heki(self):
        """Before any pin nothing is held and no heki section is sent: the
        stream loads into an unpatched QEMU."""
        src = self.source(scenario="no-pin")
        uri = self.socket(src)
        dst = self.destination(uri, scenario="no-pin", unpatched=True)
        src.start()
        self.assertEqual(src.qmp.command("query-heki")["migration"]["status"], "free")
        info = self.migrate(src, uri)
        self.assertEqual(info["status"], "completed", info)
        self.assertEqual(src.status(), "postmigrate")
        self.assertEqual(dst.wait(60), GUEST_PASS, dst.guest_text())
        self.assertIn("idle-done", dst.guest_text())
        self.assertEqual(src.quit(), 0)
        self.assertEqual(audit_actions(src), [], "nothing pinned, nothing said")

    def test_pinned_vm_is_refused_keeps_running_and_stays_protected(self):
        src = self.source()
        src.start()
        blocked = self.wait_blocked(src)
        self.assertTrue(blocked["reason"].startswith("Heki: the guest pinned cr0 wp"), blocked)
        self.assertEqual(blocked["pins"]["cr0"]["enforced-bits"], ["wp"])
        schema = {e["name"]: e for e in src.qmp.command("query-qmp-schema")}
        self.assertEqual(schema["HEKI_MIGRATION"]["meta-type"], "event")
        self.assertNotEqual(schema["HEKI_MIGRATION"]["arg-type"], "any")
        query = src.qmp.command("query-heki")
        self.assertEqual(query["migration"]["status"], "blocked")
        self.assertEqual(query["policy"]["migration"], "block")
        for uri in (self.socket(src), "file:" + os.path.join(src.dir, "vm.state")):
            _, desc = src.qmp.error("migrate", uri=uri)
            self.assertIn("Heki: the guest pinned cr0 wp", desc)
            self.assertIn("no ioctl can re-arm pins in a destination kernel", desc)
            self.assertIn("migration=allow-unprotected", desc)
        self.assertFalse(os.path.exists(os.path.join(src.dir, "vm.state")), "nothing written")
        # savevm checks the same blockers (before it looks for a disk).
        output = src.qmp.command("human-monitor-command", **{"command-line": "savevm snap"})
        self.assertIn("Heki: the guest pinned", output)
        self.assertEqual(src.status(), "running")
        # The guest goes on, on the kernel that holds its pins.
        self.assertEqual(src.wait(60), GUEST_PASS, src.guest_text())
        self.assertEqual(after_wait(src)["outcome"], "denied", src.guest_text())
        self.assertEqual(audit_actions(src), ["blocked"])

    def test_allowed_at_run_time_the_destination_says_its_pins_are_not_enforced(self):
        src = self.source()
        uri = self.socket(src)
        dst = self.destination(uri)
        src.start()
        self.wait_blocked(src)
        src.qmp.command("heki-set-policy", migration="allow-unprotected")
        unblocked = src.qmp.wait_event(lambda e: e["event"] == "HEKI_MIGRATION"
                                       and e["data"]["action"] == "unblocked")["data"]
        self.assertEqual(unblocked["migration"], "allow-unprotected")
        self.assertEqual(src.qmp.wait_heki("HEKI_POLICY")["changed"], ["migration"])
        self.assertEqual(src.qmp.command("query-heki")["migration"]["status"], "carry")
        info = self.migrate(src, uri)
        self.assertEqual(info["status"], "completed", info)
        source_query = src.qmp.command("query-heki")   # as it left (postmigrate)

        restored = dst.qmp.wait_event(lambda e: e["event"] == "HEKI_MIGRATION")["data"]
        self.assertEqual(restored["action"], "restored", restored)
        self.assertEqual(restored["source-vm-name"], "src")
        self.assertIn("this kernel does not enforce them", restored["reason"])
        query = dst.qmp.command("query-heki")
        pins = query["pins"]
        self.assertEqual(pins["cr0"]["value"], 0, "the destination's kernel enforces nothing")
        self.assertEqual(pins["cr0"]["restored-only-bits"], ["wp"])
        self.assertEqual(pins["cr0"]["restored-only"], source_query["pins"]["cr0"]["value"])
        self.assertEqual(pins["cr4"]["restored-only"], source_query["pins"]["cr4"]["value"])
        self.assertNotEqual(pins["cr4"]["restored-only"] & CR4_SMEP_SMAP, 0)
        self.assertEqual(query["migration"]["restored"], True)
        self.assertEqual(query["migration"]["source-vm-name"], "src")
        self.assertEqual(query["migration"]["source-migration"], "allow-unprotected")
        self.assertEqual(query["migration"]["status"], "carry")
        self.assertEqual(query["counters"]["configure"], source_query["counters"]["configure"],
                         "the counters continue from the source's")

        # The guest finishes on the destination: its write is not refused.
        self.assertEqual(dst.wait(60), GUEST_PASS, dst.guest_text())
        self.assertEqual(after_wait(dst)["outcome"], "applied", dst.guest_text())
        self.assertEqual(dst.audit_events("HEKI_DENIAL"), [], "no denial can follow a restored-only pin")
        self.assertEqual(audit_actions(dst), ["restored"])
        self.assertEqual(src.status(), "postmigrate")
        self.assertEqual(src.quit(), 0)
        self.assertEqual(audit_actions(src), ["blocked", "unblocked", "saved"])

    def test_migrate_to_a_file_and_incoming_from_it(self):
        src = self.source(heki={"migration": "allow-unprotected"})
        src.start()
        src.qmp.wait_heki("HEKI_CONFIGURE")
        path = os.path.join(src.dir, "vm.state")
        info = self.migrate(src, "file:" + path)
        self.assertEqual(info["status"], "completed", info)
        with open(path, "rb") as f:
            self.assertIn(b"HEKISTAT", f.read(), "the heki section is in the file")
        self.assertEqual(src.quit(), 0)
        self.assertEqual(audit_actions(src), ["saved"], "allowed from the start: no blocker")

        dst = self.destination("file:" + path)
        self.assertEqual(dst.wait(60), GUEST_PASS, dst.guest_text())
        self.assertEqual(after_wait(dst)["outcome"], "applied", dst.guest_text())
        restored = dst.audit_events("HEKI_MIGRATION")
        self.assertEqual([e["data"]["action"] for e in restored], ["restored"])
        self.assertEqual(restored[0]["data"]["pins"]["cr0"]["restored-only-bits"], ["wp"])

    def saved_file(self):
        src = self.source(heki={"migration": "allow-unprotected"})
        src.start()
        src.qmp.wait_heki("HEKI_CONFIGURE")
        path = os.path.join(src.dir, "vm.state")
        self.assertEqual(self.migrate(src, "file:" + path)["status"], "completed")
        src.quit()
        with open(path, "rb") as f:
            return path, bytearray(f.read())

    def load_corrupt(self, path, data):
        with open(path, "wb") as f:
            f.write(data)
        dst = self.destination("file:" + path)
        status = dst.wait(60)
        self.assertNotEqual(status, GUEST_PASS)
        self.assertNotEqual(status, 0)
        return dst

    def test_a_corrupt_heki_state_fails_the_incoming_migration_loudly(self):
        path, data = self.saved_file()
        at = data.index(b"HEKISTAT")
        data[at + 16 + 40] ^= 0x01           # a byte of the pins
        dst = self.load_corrupt(path, data)
        self.assertIn("heki: the migration stream's heki state is refused: "
                      "heki-plugin: state: checksum mismatch: the state is corrupt", dst.stderr)
        self.assertEqual(audit_actions(dst), ["rejected"])
        self.assertNotIn("after-wait", dst.guest_text(), "the guest never ran on the destination")

    def test_a_hostile_state_length_is_refused_before_any_allocation(self):
        path, data = self.saved_file()
        at = data.index(b"HEKISTAT")
        data[at - 4:at] = (0xfffffff0).to_bytes(4, "big")   # the section's size field
        dst = self.load_corrupt(path, data)
        self.assertIn("heki: the stream's state has 4294967280 bytes, more than 65536", dst.stderr)

    def test_a_pin_during_migration_is_refused_at_the_save(self):
        """The race: migration starts before the guest pins; the blocker then
        comes too late (QEMU refuses new blockers while a migration runs), so
        the plugin refuses the save itself, with the vCPUs stopped; the VM
        keeps running, and the blocker is held once the migration failed."""
        src = self.source()
        uri = self.socket(src)
        dst = self.destination(uri)
        # Slow enough that the guest pins before the migration completes.
        src.qmp.command("migrate-set-parameters", **{"max-bandwidth": 4096})
        src.qmp.command("migrate", uri=uri)
        src.start()
        self.wait_blocked(src)
        self.assertEqual(src.qmp.command("query-migrate")["status"], "active")
        src.qmp.command("migrate-set-parameters", **{"max-bandwidth": 1 << 30})
        info = self.wait_migration(src)
        self.assertEqual(info["status"], "failed", info)
        self.assertIn("pre-save failed: heki", info.get("error-desc", ""))
        refused = src.qmp.wait_event(lambda e: e["event"] == "HEKI_MIGRATION"
                                     and e["data"]["action"] == "refused")["data"]
        self.assertIn("Heki: the guest pinned cr0 wp", refused["reason"])
        self.assertEqual(src.status(), "running")
        # The blocker is held now: the next attempt is refused at once.
        _, desc = src.qmp.error("migrate", uri="file:" + os.path.join(src.dir, "vm.state"))
        self.assertIn("Heki: the guest pinned cr0 wp", desc)
        self.assertEqual(src.wait(60), GUEST_PASS, src.guest_text())
        self.assertEqual(after_wait(src)["outcome"], "denied", src.guest_text())
        self.assertEqual(audit_actions(src), ["blocked", "refused"])
        self.assertIn("heki: Heki: the guest pinned", src.stderr)


if __name__ == "__main__":
    unittest.main()
