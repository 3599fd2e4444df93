// Required pins judged at boot (issue 9): a guest that never pins a
// register whose bits are required is found by the pin deadline, counted
// from heki_plugin_start, or earlier by its first denial.
import CHekiPlugin
import FakeHost
import HekiKernelModel
import XCTest

final class HostPinDeadlineTests: XCTestCase {
    private func weak(_ t: TestVM) -> [[String: Any]] { t.events("HEKI_WEAK_PINNING") }

    func testAGuestThatNeverPinsIsReportedAtTheDeadlineAndItsVerdictApplied() throws {
        let t = try TestVM.started(["require-cr0=wp", "pin-deadline=1", "on-weak-pinning=pause", "vm-name=late"])
        fh_vm_run_loop_ms(t.vm, 1200)
        XCTAssertEqual(weak(t).count, 0, "the deadline counts from heki_plugin_start, not from creation")
        fh_vm_start(t.vm)
        fh_vm_run_loop_ms(t.vm, 500)
        XCTAssertEqual(weak(t).count, 0, "not before the deadline")
        XCTAssertEqual(fh_vm_applied_verdicts(t.vm, verdictPause), 0)
        fh_vm_run_loop_ms(t.vm, 900)
        let event = try XCTUnwrap(weak(t).first)
        XCTAssertEqual(weak(t).count, 1)
        XCTAssertNil(event["vcpu"], "no vCPU found it")
        XCTAssertEqual(event.int("deadline-seconds"), 1)
        XCTAssertEqual(event.string("register"), "cr0")
        XCTAssertEqual(event.string("pinned"), "0x0")
        XCTAssertEqual(event.strings("missing-bits"), ["wp"])
        XCTAssertEqual(event.string("verdict"), "pause")
        XCTAssertEqual(event.string("vm-name"), "late")
        XCTAssertEqual(fh_vm_applied_verdicts(t.vm, verdictPause), 1, "through HekiHost.apply_verdict")
        XCTAssertTrue(t.logs.contains("heki: vm late: weak pinning of cr0: wp required but not pinned 1 s after start, verdict pause"),
                      "\(t.logs)")
        XCTAssertEqual(t.query().object("counters")?.object("weak-pinning")?.int("cr0"), 1)
        // Judged once: a later start or more time changes nothing.
        fh_vm_start(t.vm)
        fh_vm_run_loop_ms(t.vm, 1100)
        XCTAssertEqual(weak(t).count, 1)
        XCTAssertEqual(fh_vm_applied_verdicts(t.vm, verdictPause), 1)
    }

    /// A register pinned before the deadline was judged at its pin; the
    /// deadline reports only the one never pinned.
    func testTheDeadlineReportsOnlyRegistersNeverPinned() throws {
        let t = try TestVM.started(["require-cr0=wp", "require-cr4=smep+smap", "pin-deadline=1"])
        fh_vm_start(t.vm)
        t.pin(cr: 0, GuestCR0.wp)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        fh_vm_run_loop_ms(t.vm, 1300)
        XCTAssertEqual(weak(t).map { $0.string("register") }, ["cr4"])
        XCTAssertEqual(weak(t).first?.strings("missing-bits"), ["smep", "smap"])
        XCTAssertEqual(weak(t).first?.string("verdict"), "resume")
        XCTAssertEqual(fh_vm_applied_verdicts(t.vm, verdictResume), 0, "resume is never applied: nothing to do")
    }

    /// A partial pin is weak at the pin itself; the deadline does not say
    /// it again.
    func testAWeakPinIsJudgedAtThePinNotAgainAtTheDeadline() throws {
        let t = try TestVM.started(["require-cr4=smep+smap", "pin-deadline=1", "on-weak-pinning=reset"])
        fh_vm_start(t.vm)
        t.pin(cr: 4, GuestCR4.smep)
        XCTAssertEqual(t.run(), verdictReset)
        fh_vm_run_loop_ms(t.vm, 1300)
        XCTAssertEqual(weak(t).count, 1)
        XCTAssertEqual(weak(t).first?.int("vcpu"), 0)
        XCTAssertEqual(fh_vm_applied_verdicts(t.vm, verdictReset), 0)
    }

    /// The first denial comes before the deadline: the registers never
    /// pinned are judged on its vCPU, and on-weak-pinning becomes the
    /// denial's verdict when on-denial is resume.
    func testTheFirstDenialJudgesEarlier() throws {
        let t = try TestVM.started(["require-cr4=smep", "on-weak-pinning=poweroff", "pin-deadline=1"])
        fh_vm_start(t.vm)
        t.pin(cr: 0, GuestCR0.wp)
        t.write(cr: 0, GuestCR0.host & ~GuestCR0.wp)
        XCTAssertEqual(t.run(), verdictPoweroff)
        fh_vm_run_loop_ms(t.vm, 1300)
        XCTAssertEqual(weak(t).count, 1, "judged once, at the denial; the deadline finds it done")
        XCTAssertEqual(weak(t).first?.int("vcpu"), 0)
        XCTAssertEqual(weak(t).first?.string("register"), "cr4")
        XCTAssertNil(weak(t).first?["deadline-seconds"])
        XCTAssertEqual(t.events("HEKI_DENIAL").first?.string("verdict"), "poweroff", "the verdict the VM got")
        XCTAssertEqual(fh_vm_applied_verdicts(t.vm, verdictPoweroff), 0, "returned by handle_exit, not applied later")
        // The denial's own verdict, when not resume, stands.
        let strict = try TestVM.started(["require-cr4=smep", "on-weak-pinning=poweroff", "on-denial=pause",
                                         "pin-deadline=off"])
        strict.pin(cr: 0, GuestCR0.wp)
        strict.write(cr: 0, GuestCR0.host & ~GuestCR0.wp)
        XCTAssertEqual(strict.run(), verdictPause)
        strict.freePlugin()
        XCTAssertEqual(weak(strict).first?.string("verdict"), "poweroff")
        XCTAssertEqual(strict.events("HEKI_DENIAL").first?.string("verdict"), "pause")
    }

    func testOffMeansNoDeadline() throws {
        let t = try TestVM.started(["require-cr0=wp", "pin-deadline=off"])
        XCTAssertNil(t.query().object("policy")?["pin-deadline"] as? Int)
        fh_vm_start(t.vm)
        fh_vm_run_loop_ms(t.vm, 300)
        t.freePlugin()
        XCTAssertEqual(weak(t).count, 0)
    }

    /// Pins of a register whose configure exits are off cannot be seen:
    /// the deadline does not call them missing.
    func testRegistersWhosePinsAreInvisibleAreNotJudged() throws {
        let t = try TestVM.started(["require-cr0=wp", "require-cr4=smep", "configure-exits=cr4", "pin-deadline=1"])
        fh_vm_start(t.vm)
        fh_vm_run_loop_ms(t.vm, 1300)
        XCTAssertEqual(weak(t).map { $0.string("register") }, ["cr4"])
    }

    /// A kernel without Heki shows no pins at all: nothing to judge.
    func testNothingIsJudgedWithoutConfigureExits() throws {
        let t = TestVM(lib: try PluginLibrary.require())
        fk_vm_set_heki_built(t.kernel, false)
        XCTAssertTrue(t.create(["require-cr0=wp", "pin-deadline=1", "on-weak-pinning=exit"]), t.error)
        XCTAssertEqual(t.enableCaps(), 0)
        fh_vm_start(t.vm)
        fh_vm_run_loop_ms(t.vm, 1300)
        XCTAssertEqual(weak(t).count, 0)
        XCTAssertEqual(fh_vm_applied_verdicts(t.vm, verdictExit), 0)
    }

    func testAHostWithoutApplyVerdictIsToldTheVerdictWasNotApplied() throws {
        let t = TestVM(lib: try PluginLibrary.require())
        fh_vm_set_host_kvm(t.vm, true, false)
        XCTAssertTrue(t.create(["require-cr0=wp", "pin-deadline=1", "on-weak-pinning=exit"]), t.error)
        XCTAssertEqual(t.enableCaps(), 0, t.error)
        fh_vm_start(t.vm)
        fh_vm_run_loop_ms(t.vm, 1300)
        XCTAssertEqual(weak(t).first?.string("verdict"), "exit")
        XCTAssertTrue(t.logs.contains("heki: verdict exit not applied: the host has no apply_verdict"), "\(t.logs)")
    }
}
