// Plugin lifecycles a VMM can produce: free with events pending, free from
// inside the plugin's own event callback, two plugins in one process.
import CHekiPlugin
import FakeHost
import HekiKernelModel
import XCTest

final class HostLifecycleTests: XCTestCase {
    /// Writes a Heki exit into vCPU 0's kvm_run and hands it to the plugin on
    /// this thread, without running the main loop.
    private func exit(_ t: TestVM, number: UInt32, reason: UInt64, value: UInt64) -> Int32 {
        let run = fh_vm_vcpu_run(t.vm, 0)!
        var words = payload(reason: reason, value: value)
        fk_run_write_raw(run, number, &words)
        return fh_vm_handle_exit(t.vm, 0, run)
    }

    func testFreeDeliversEverythingPending() throws {
        let t = try TestVM.started(["rate-limit=5"])
        for _ in 0..<20 { XCTAssertEqual(exit(t, number: 40, reason: 2, value: 0), verdictResume) }
        XCTAssertEqual(t.count("HEKI_DENIAL"), 0, "nothing is delivered before the loop runs")
        t.freePlugin()
        XCTAssertEqual(t.count("HEKI_CAPABILITY"), 3)
        XCTAssertEqual(t.count("HEKI_DENIAL"), 5)
        XCTAssertEqual(t.suppressed("HEKI_DENIAL"), 15)
    }

    /// A reset before the loop ever ran (QEMU resets with the vCPUs
    /// stopped, whenever the main loop gets to it): what was made before
    /// it is delivered first, in the order it was made, then HEKI_RESET.
    /// The reset used to drain the queue ahead of the kernel check's
    /// announcement (seen once under TSan in HostResetTests).
    func testResetDeliversEverythingMadeBeforeItFirst() throws {
        let t = try TestVM.started([])
        XCTAssertEqual(exit(t, number: 39, reason: 1, value: GuestCR0.wp), verdictResume)
        XCTAssertEqual(exit(t, number: 40, reason: 1, value: 0), verdictResume)
        XCTAssertEqual(fh_vm_event_total(t.vm), 0, "nothing is delivered before the loop runs")
        XCTAssertEqual(fh_vm_reset(t.vm, HEKI_RESET_CAUSE_HOST), verdictPoweroff)
        XCTAssertEqual(t.events.map(\.name), ["HEKI_CAPABILITY", "HEKI_CAPABILITY", "HEKI_CAPABILITY",
                                              "HEKI_CONFIGURE", "HEKI_DENIAL", "HEKI_RESET"])
        XCTAssertEqual(fh_vm_callback_violations(t.vm), 0)
    }

    /// heki_plugin_flush delivers what the vCPUs queued without the loop
    /// running (QEMU calls it before GUEST_PANICKED), in order; coalesced
    /// counts wait for their summary.
    func testFlushDeliversWhatIsQueuedNow() throws {
        let t = try TestVM.started(["rate-limit=5"])
        XCTAssertEqual(exit(t, number: 39, reason: 1, value: GuestCR0.wp), verdictResume)
        for _ in 0..<20 { XCTAssertEqual(exit(t, number: 40, reason: 1, value: 0), verdictResume) }
        XCTAssertEqual(t.count("HEKI_DENIAL"), 0, "nothing is delivered before the loop runs")
        fh_vm_flush(t.vm)
        XCTAssertEqual(t.events.map(\.name), ["HEKI_CAPABILITY", "HEKI_CAPABILITY", "HEKI_CAPABILITY", "HEKI_CONFIGURE"]
                       + Array(repeating: "HEKI_DENIAL", count: 5), "the 5 denials admitted in this window, in order")
        XCTAssertEqual(t.suppressed("HEKI_DENIAL"), 0, "the summary keeps its window")
        fh_vm_flush(t.vm)
        XCTAssertEqual(t.events.count, 9, "a second flush has nothing to deliver")
        t.freePlugin()
        XCTAssertEqual(t.suppressed("HEKI_DENIAL"), 15)
    }

    /// A free from inside a callback of flush waits until the flush unwinds.
    func testFreeFromInsideAFlush() throws {
        let t = try TestVM.started([])
        XCTAssertEqual(exit(t, number: 39, reason: 1, value: GuestCR0.wp), verdictResume)
        XCTAssertEqual(exit(t, number: 40, reason: 1, value: 0), verdictResume)
        fh_vm_set_event_hook(t.vm, { vm, _, _ in fh_vm_free_plugin(OpaquePointer(vm)) }, UnsafeMutableRawPointer(t.vm))
        fh_vm_flush(t.vm)
        XCTAssertNil(fh_vm_plugin(t.vm))
        XCTAssertEqual(t.events.map(\.name).suffix(2), ["HEKI_CONFIGURE", "HEKI_DENIAL"], "the teardown delivered the rest")
        XCTAssertEqual(fh_vm_callback_violations(t.vm), 0)
    }

    /// How deep event callbacks nest (the hook below frees the plugin).
    nonisolated(unsafe) private static var hookDepth = 0
    nonisolated(unsafe) private static var deepestHook = 0

    /// A host that frees the plugin from its event callback (say, a QMP
    /// client that powers the VM off) gets the teardown once the dispatch
    /// unwinds, with every queued event still delivered, and no callback
    /// runs inside another.
    func testFreeFromInsideTheEventCallback() throws {
        let t = try TestVM.started([])
        XCTAssertEqual(exit(t, number: 39, reason: 1, value: GuestCR0.wp), verdictResume)
        XCTAssertEqual(exit(t, number: 39, reason: 2, value: GuestCR4.smep), verdictResume)
        XCTAssertEqual(exit(t, number: 40, reason: 2, value: 0), verdictResume)
        Self.hookDepth = 0
        Self.deepestHook = 0
        fh_vm_set_event_hook(t.vm, { vm, _, _ in
            HostLifecycleTests.hookDepth += 1
            HostLifecycleTests.deepestHook = max(HostLifecycleTests.deepestHook, HostLifecycleTests.hookDepth)
            fh_vm_free_plugin(OpaquePointer(vm))
            HostLifecycleTests.hookDepth -= 1
        }, UnsafeMutableRawPointer(t.vm))
        fh_vm_iterate_until_idle(t.vm)
        XCTAssertEqual(Self.deepestHook, 1, "an event callback ran inside another")
        XCTAssertNil(fh_vm_plugin(t.vm))
        XCTAssertEqual(t.events.map(\.name),
                       ["HEKI_CAPABILITY", "HEKI_CAPABILITY", "HEKI_CAPABILITY", "HEKI_CONFIGURE", "HEKI_CONFIGURE",
                        "HEKI_DENIAL"])
        XCTAssertEqual(fh_vm_callback_violations(t.vm), 0)
        // The source is gone from the context: iterating again dispatches nothing.
        fh_vm_run_loop_ms(t.vm, 20)
        XCTAssertEqual(t.events.count, 6)
    }

    func testTwoPluginsInOneProcessKeepTheirOwnLedgers() throws {
        let a = try TestVM.started(["vm-name=a", "on-denial=pause"])
        let b = try TestVM.started(["vm-name=b", "abi=v3"], kernel: fk_profile(FK_PROFILE_V3))
        XCTAssertEqual(exit(a, number: 39, reason: 2, value: GuestCR4.smep), verdictResume)
        XCTAssertEqual(exit(a, number: 40, reason: 2, value: 0), verdictPause)
        // The same numbers mean other things to b (v3): 40 is its configure.
        XCTAssertEqual(exit(b, number: 40, reason: 1, value: GuestCR0.wp), verdictResume)
        XCTAssertEqual(exit(b, number: 41, reason: 1, value: 0), verdictResume)
        fh_vm_iterate_until_idle(a.vm)
        fh_vm_iterate_until_idle(b.vm)
        let pinsA = a.query().object("pins"), pinsB = b.query().object("pins")
        XCTAssertEqual(pinsA?.object("cr4")?.string("value"), hex(GuestCR4.smep))
        XCTAssertEqual(pinsA?.object("cr0")?.string("value"), "0x0")
        XCTAssertEqual(pinsB?.object("cr0")?.string("value"), hex(GuestCR0.wp))
        XCTAssertEqual(pinsB?.object("cr4")?.string("value"), "0x0")
        XCTAssertEqual(a.events("HEKI_DENIAL").first?.string("vm-name"), "a")
        XCTAssertEqual(b.events("HEKI_DENIAL").first?.string("vm-name"), "b")
        XCTAssertEqual(a.events("HEKI_DENIAL").first?.string("violated"), hex(GuestCR4.smep))
        XCTAssertEqual(b.events("HEKI_DENIAL").first?.string("violated"), hex(GuestCR0.wp))
    }
}
