"""libvirt end to end: heki-guest.elf as a qemu:///system domain whose
<emulator> is our patched QEMU, the plugin through <qemu:commandline>, the
Heki kernel emulated (LD_PRELOAD through <qemu:env>). What an operator and
a libvirt client see: virsh's state and reason, <on_crash>, query-heki
through `virsh qemu-monitor-command`, QMP and lifecycle events through
python3-libvirt. Run by `make -C qemu-integration test-libvirt` (as root,
after scripts/ensure-libvirt.sh) with Debian's /usr/bin/python3.
"""

import time
import unittest

import hekivirt
from hekivirt import Domain, Events, virsh

CR0_WP = 1 << 16

events = None


def setUpModule():
    global events
    left = hekivirt.remove_leftovers()
    if left:
        print(f"removed domains left by an earlier run: {left}")
    events = Events()


def tearDownModule():
    events.close()


class LibvirtCase(unittest.TestCase):
    def domain(self, label, **kwargs):
        started = time.monotonic()
        dom = Domain(events.conn, label, **kwargs)
        self.addCleanup(lambda: print(f"  [{dom.name}: {time.monotonic() - started:.2f} s]",
                                      end=" ", flush=True))
        self.addCleanup(dom.cleanup)   # runs first: destroy + undefine
        return dom

    def heki(self, dom, kind):
        """The data of the Heki events of that kind a libvirt client got."""
        return [d["data"] for e, d in events.qmp_of(dom.name, "HEKI_EVENT")
                if d["name"] == kind]

    def wait_heki(self, dom, kind, count=1):
        try:
            events.wait(lambda: len(self.heki(dom, kind)) >= count)
        except TimeoutError:
            self.fail(f"{dom.name}: {count} {kind} awaited; QMP events seen: "
                      f"{[e for e, _ in events.qmp_of(dom.name)]}; state {dom.state()!r}")
        return self.heki(dom, kind)

    def wait_lifecycle(self, dom, wanted):
        try:
            events.wait(lambda: wanted in events.lifecycle_of(dom.name))
        except TimeoutError:
            self.fail(f"{dom.name}: lifecycle event {wanted} awaited; seen: "
                      f"{events.lifecycle_of(dom.name)}; state {dom.state()!r}")


class GuestRuns(LibvirtCase):
    def test_domain_starts_and_the_guest_runs_to_its_end(self):
        dom = self.domain("runs", scenario="pin-deny", cpus=2, heki={"on-denial": "resume"})
        dom.start()
        self.assertEqual(dom.state(), "running (booted)")
        lines = dom.wait_guest(lambda g: any("result" in l for l in g))
        self.assertIn("boot", lines[0], dom.serial_tail())
        self.assertEqual([l.get("heki") for l in lines if "heki" in l], ["present"])
        result = [l for l in lines if "result" in l][-1]
        self.assertEqual(result["result"], "pass", dom.serial_tail())
        self.assertEqual((result["denied-writes"], result["gp"]), ("6", "6"))
        # The guest ends QEMU through isa-debug-exit: QEMU exits without a
        # SHUTDOWN event, which libvirt takes for a crash of QEMU.
        self.assertEqual(dom.wait_state(("shut off (crashed)", "shut off (shutdown)")),
                         "shut off (crashed)")
        denials = self.heki(dom, "HEKI_DENIAL")
        self.assertEqual(len(denials), 6, denials)
        self.assertEqual({d["vm-name"] for d in denials}, {dom.name})
        self.assertEqual(sorted({d["vcpu"] for d in denials}), [0, 1])
        self.assertEqual(events.lifecycle_of(dom.name)[0], ("started", "booted"))


class PauseVerdict(LibvirtCase):
    def test_pause_shows_the_state_and_resume_lets_the_guest_go_on(self):
        dom = self.domain("pause", scenario="pin-deny", extra_append="writes=2",
                          heki={"on-denial": "pause"}, on_crash="preserve")
        dom.start()
        [denial] = self.wait_heki(dom, "HEKI_DENIAL")
        self.assertEqual(denial["verdict"], "pause")
        state = dom.wait_state(("paused (unknown)", "crashed (panicked)", "paused (crashed)"))
        self.assertEqual(state, "crashed (panicked)",
                         "the pause verdict must show as a guest in trouble")

    def test_query_heki_through_virsh(self):
        dom = self.domain("query", scenario="pin-deny", extra_append="writes=2",
                          heki={"on-denial": "pause"}, on_crash="preserve")
        dom.start()
        self.wait_heki(dom, "HEKI_DENIAL")
        dom.wait_state(("paused (unknown)", "crashed (panicked)"))
        query = dom.monitor("query-heki")
        self.assertEqual(sum(query["counters"]["denial"].values()), 1, query)
        self.assertTrue(int(str(query["pins"]["cr0"]["value"]), 0) & CR0_WP, query)


if __name__ == "__main__":
    unittest.main()
