// The reset rule (heki_plugin_reset, on-reset, HEKI_RESET) and a VMM's
// duty to complete a pending exit before a reset or a state save: through
// the fake VMM, whose resets ask the plugin, and the kernel model, whose
// completions stay armed across a reset as KVM's do.
import CHekiPlugin
import FakeHost
import HekiKernelModel
import XCTest

final class HostResetTests: XCTestCase {
    let guest = HEKI_RESET_CAUSE_GUEST, host = HEKI_RESET_CAUSE_HOST

    /// A VM whose vCPU 0 pinned CR0.WP.
    func pinnedVM(_ options: [String]) throws -> TestVM {
        let t = try TestVM.started(options)
        t.pin(cr: 0, GuestCR0.wp)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        return t
    }

    func testResetOfAPinnedVMPowersOffByDefault() throws {
        let t = try pinnedVM([])
        XCTAssertEqual(fh_vm_reset(t.vm, host), verdictPoweroff)
        XCTAssertEqual(fh_vm_poweroffs(t.vm), 1)
        XCTAssertEqual(fh_vm_resets(t.vm), 0, "not reset in place")
        let reset = t.events("HEKI_RESET")
        XCTAssertEqual(reset.count, 1)
        XCTAssertEqual(reset.first?.string("cause"), "host")
        XCTAssertEqual(reset.first?.string("pinned-cr0"), hex(GuestCR0.wp))
        XCTAssertEqual(reset.first?.strings("pinned-cr0-bits"), ["wp"])
        XCTAssertEqual(reset.first?.string("pinned-cr4"), "0x0")
        XCTAssertEqual(reset.first?.strings("unseen"), [])
        XCTAssertEqual(reset.first?.string("on-reset"), "poweroff")
        XCTAssertEqual(reset.first?.string("verdict"), "poweroff")
        XCTAssertEqual(t.events.last?.name, "HEKI_RESET", "delivered before heki_plugin_reset returned")
        XCTAssertTrue(t.logs.contains { $0.contains("host reset of a pinned VM (cr0 wp, cr4 none): on-reset poweroff") },
                      "\(t.logs)")
    }

    func testUnpinnedVMResetsSilently() throws {
        let t = try TestVM.started(["on-reset=exit"])
        XCTAssertEqual(fh_vm_reset(t.vm, guest), verdictReset)
        XCTAssertEqual(fh_vm_resets(t.vm), 1)
        XCTAssertEqual(t.count("HEKI_RESET"), 0)
    }

    func testNoPluginResets() {
        let vm = fh_vm_new(try! PluginLibrary.require(), nil)!
        defer { fh_vm_free(vm) }
        fh_vm_set_vcpus(vm, 1)
        XCTAssertEqual(fh_vm_reset(vm, guest), verdictReset)
        XCTAssertEqual(fh_vm_api(vm).pointee.reset(nil, guest).rawValue, verdictReset, "NULL plugin")
    }

    func testExitAndKeepPins() throws {
        let exit = try pinnedVM(["on-reset=exit"])
        XCTAssertEqual(fh_vm_reset(exit.vm, guest), verdictExit)
        XCTAssertEqual(fh_vm_exit_requests(exit.vm), 1)
        XCTAssertEqual(exit.events("HEKI_RESET").first?.string("verdict"), "exit")

        // The RFC: reset in place, the pins stay, and the rebooted guest's
        // first CR0 write without WP (firmware, startup_32) is denied.
        let rfc = try pinnedVM(["on-reset=keep-pins"])
        XCTAssertEqual(fh_vm_reset(rfc.vm, guest), verdictReset)
        XCTAssertEqual(fh_vm_resets(rfc.vm), 1)
        XCTAssertEqual(rfc.events("HEKI_RESET").first?.string("verdict"), "reset")
        XCTAssertEqual(rfc.events("HEKI_RESET").first?.string("on-reset"), "keep-pins")
        XCTAssertEqual(fk_vm_pinned(rfc.kernel, 0), GuestCR0.wp, "the pins stay in KVM")
        XCTAssertEqual(rfc.query().object("pins")?.object("cr0")?.string("value"), hex(GuestCR0.wp), "and in the ledger")
        XCTAssertEqual(fk_vcpu_cr(rfc.vcpu(0), 0), GuestCR0.reset)
        rfc.write(cr: 0, GuestCR0.pe | GuestCR0.et)
        XCTAssertEqual(rfc.run(), FH_STOP_NONE)
        fh_vm_flush(rfc.vm)  // the last exit's event may still be queued
        XCTAssertEqual(rfc.events("HEKI_DENIAL").count, 1, "boot code's CR0 write is denied")
        XCTAssertEqual(fh_vm_vcpu_gp(rfc.vm, 0), 1)
    }

    func testResetVerdictAndGuestRebootFollowTheRule() throws {
        let t = try pinnedVM(["on-denial=reset"])
        t.write(cr: 0, 0)
        XCTAssertEqual(t.run(), verdictReset)
        XCTAssertEqual(fh_vm_last_reset_verdict(t.vm), verdictPoweroff, "the reset verdict of a pinned VM powers off")
        XCTAssertEqual(fh_vm_resets(t.vm), 0)
        let names = t.events.map(\.name)
        XCTAssertEqual(Array(names.suffix(2)), ["HEKI_DENIAL", "HEKI_RESET"], "the denial that asked for it comes first")
        XCTAssertEqual(t.events("HEKI_RESET").first?.string("cause"), "panic")

        let reboot = try pinnedVM([])
        fh_vm_op_reboot(reboot.vm, 0)
        XCTAssertEqual(reboot.run(), FH_STOP_GUEST_RESET)
        XCTAssertEqual(fh_vm_last_reset_verdict(reboot.vm), verdictPoweroff)
        XCTAssertEqual(reboot.events("HEKI_RESET").first?.string("cause"), "guest")

        let unpinned = try TestVM.started([])
        fh_vm_op_reboot(unpinned.vm, 0)
        XCTAssertEqual(unpinned.run(), FH_STOP_GUEST_RESET)
        XCTAssertEqual(fh_vm_last_reset_verdict(unpinned.vm), verdictReset)
        XCTAssertEqual(fh_vm_resets(unpinned.vm), 1)
    }

    /// A register whose configure exits are not enabled may hold pins the
    /// plugin never saw: on a Heki kernel the VM is taken as pinned.
    func testPinsThePluginCannotSeeCountAsPinned() throws {
        let t = try TestVM.started(["configure-exits=cr4"])
        XCTAssertEqual(fh_vm_reset(t.vm, guest), verdictPoweroff)
        XCTAssertEqual(t.events("HEKI_RESET").first?.strings("unseen"), ["cr0"])
        // A stock kernel has no pins at all.
        let s = TestVM(lib: try PluginLibrary.require())
        fk_vm_set_kernel(s.kernel, FK_KERNEL_STOCK)
        XCTAssertTrue(s.create(["configure-exits=none"]))
        XCTAssertEqual(s.enableCaps(), 0)
        XCTAssertEqual(fh_vm_reset(s.vm, guest), verdictReset)
        XCTAssertEqual(s.count("HEKI_RESET"), 0)
    }

    /// A host that frees the plugin from HEKI_RESET's callback (a QMP client
    /// that tears the VM down) gets the verdict all the same.
    func testFreeFromTheResetEventCallback() throws {
        let t = try pinnedVM([])
        fh_vm_set_event_hook(t.vm, { vm, name, _ in
            if let name, String(cString: name) == "HEKI_RESET" { fh_vm_free_plugin(OpaquePointer(vm)) }
        }, UnsafeMutableRawPointer(t.vm))
        XCTAssertEqual(fh_vm_reset(t.vm, host), verdictPoweroff)
        XCTAssertNil(fh_vm_plugin(t.vm))
        XCTAssertEqual(t.events.last?.name, "HEKI_RESET")
        XCTAssertEqual(fh_vm_callback_violations(t.vm), 0)
    }

    func testBadOnResetIsRefused() throws {
        let t = TestVM(lib: try PluginLibrary.require())
        XCTAssertFalse(t.create(["on-reset=reboot"]))
        XCTAssertEqual(t.error, "heki-plugin: on-reset: 'reboot' is not one of poweroff, exit, keep-pins")
    }

    // MARK: pending completions

    /// A denial paused the VM; the operator resets it. The #GP belongs to
    /// the old boot: the VMM completes it before the reset, so the new boot
    /// starts clean (on the old fake VMM the reset dropped it; on KVM it
    /// would land in the new boot).
    func testPendingDenialIsCompletedBeforeTheReset() throws {
        let t = try pinnedVM(["on-denial=pause", "on-reset=keep-pins"])
        t.write(cr: 0, 0)
        XCTAssertEqual(t.run(), verdictPause)
        XCTAssertEqual(fk_vcpu_pending(t.vcpu(0)), FK_PENDING_DENIAL)
        XCTAssertEqual(fh_vm_reset(t.vm, host), verdictReset)
        XCTAssertEqual(fh_vm_vcpu_gp(t.vm, 0), 1, "the #GP was delivered before the reset")
        XCTAssertEqual(fk_vcpu_pending(t.vcpu(0)), FK_PENDING_NONE)
        fk_vcpu_complete(t.vcpu(0))  // the next KVM_RUN
        XCTAssertEqual(fh_vm_vcpu_gp(t.vm, 0), 1, "nothing lands on the new boot")
        XCTAssertEqual(fk_vcpu_rip(t.vcpu(0)), 0)
    }

    func testPendingPinIsCompletedBeforeTheReset() throws {
        // WP alone is a weak CR0 pin here: its verdict pauses on the configure exit.
        let t = try TestVM.started(["require-cr0=wp+ne", "on-weak-pinning=pause", "on-reset=keep-pins"])
        t.pin(cr: 0, GuestCR0.wp)
        XCTAssertEqual(t.run(), verdictPause)
        XCTAssertEqual(fk_vcpu_pending(t.vcpu(0)), FK_PENDING_CONFIGURE)
        XCTAssertEqual(fh_vm_reset(t.vm, guest), verdictReset)
        fk_vcpu_complete(t.vcpu(0))  // the next KVM_RUN
        XCTAssertEqual(fk_vcpu_rip(t.vcpu(0)), 0, "the reset vector, not 3 bytes past it")
        XCTAssertEqual(fk_vcpu_hypercalls(t.vcpu(0)), 1, "the hypercall completed once, before the reset")
    }

    /// Saving a vCPU (migration, snapshot) completes its exit first: the
    /// saved rax is the hypercall's result, rip is past the VMCALL.
    func testStateSaveCompletesThePendingExit() throws {
        let t = try TestVM.started(["require-cr0=wp+ne", "on-weak-pinning=pause"])
        t.pin(cr: 0, GuestCR0.wp)
        XCTAssertEqual(t.run(), verdictPause)
        fk_vcpu_set_cr_raw(t.vcpu(0), 0, GuestCR0.host)
        let saved = fh_vm_save_vcpu(t.vm, 0)
        XCTAssertEqual(saved.rax, 0)
        XCTAssertEqual(saved.rip, UInt64(FK_VMCALL_LENGTH))
        XCTAssertEqual(fk_vcpu_pending(t.vcpu(0)), FK_PENDING_NONE)
        XCTAssertEqual(fh_vm_save_vcpu(t.vm, 9).rip, 0, "a bad index: zeros")

        let d = try pinnedVM(["on-denial=pause"])
        d.write(cr: 0, 0)
        XCTAssertEqual(d.run(), verdictPause)
        XCTAssertEqual(fh_vm_save_vcpu(d.vm, 0).gp_count, 1, "the #GP is in the saved state")
    }
}
