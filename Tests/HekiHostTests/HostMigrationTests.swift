// Migration through the .so and the fake host: the status follows the pins
// and migration=, a pinned VM's save is refused by default, an allowed save
// restores in a fresh VM (another kernel: the fake kernel there has no
// pins), whose query and events say the pins are restored only, and whose
// kernel lets a write that clears them through, with no denial reported.
import FakeHost
import Foundation
import XCTest

final class HostMigrationTests: XCTestCase {
    private func api(_ t: TestVM) -> HsPluginApi { fh_vm_api(t.vm)!.pointee }

    /// heki_plugin_save_state: the bytes, or the error message.
    private func save(_ t: TestVM) -> Result<[UInt8], MessageError> {
        var data: UnsafeMutablePointer<UInt8>?
        var size: UInt32 = 0
        var error: UnsafeMutablePointer<CChar>?
        let result = api(t).save_state(fh_vm_plugin(t.vm), &data, &size, &error)
        defer { api(t).free_state(data); api(t).free_string(error) }
        if result != 0 {
            XCTAssertNil(data)
            return .failure(MessageError(text: error.map { String(cString: $0) } ?? "(no message)"))
        }
        XCTAssertNil(error)
        return .success(Array(UnsafeBufferPointer(start: data, count: Int(size))))
    }

    /// heki_plugin_restore_state: nil, or the error message.
    private func restore(_ t: TestVM, _ bytes: [UInt8]) -> String? {
        var error: UnsafeMutablePointer<CChar>?
        let result = bytes.withUnsafeBufferPointer { api(t).restore_state(fh_vm_plugin(t.vm), $0.baseAddress, UInt32($0.count), &error) }
        defer { api(t).free_string(error) }
        XCTAssertEqual(result == 0, error == nil)
        return error.map { String(cString: $0) }
    }

    private func status(_ t: TestVM) -> HekiMigrationStatus { api(t).migration_status(fh_vm_plugin(t.vm)) }

    struct MessageError: Error { let text: String }

    private func started(_ options: [String]) throws -> TestVM {
        let t = TestVM(lib: try PluginLibrary.require())
        fh_vm_set_migration_blocker(t.vm, true)
        XCTAssertTrue(t.create(options), t.error)
        XCTAssertEqual(t.enableCaps(), 0, t.error)
        return t
    }

    func testPinnedVMIsBlockedUntilTheOperatorAllowsIt() throws {
        let t = try started(["vm-name=src"])
        XCTAssertEqual(status(t), HEKI_MIGRATION_FREE, "nothing pinned yet")
        XCTAssertEqual(t.query().object("migration")?.string("status"), "free")
        t.pin(cr: 0, GuestCR0.wp)
        t.pin(cr: 4, GuestCR4.smep | GuestCR4.smap)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        fh_vm_iterate_until_idle(t.vm)  // the dispatch tells the host (HEKI_MIGRATION blocked)
        XCTAssertEqual(status(t), HEKI_MIGRATION_BLOCKED)
        XCTAssertEqual(fh_vm_migration_blocked(t.vm), 1)
        XCTAssertEqual(fh_vm_migration_blocker_calls(t.vm), 1)
        XCTAssertTrue(String(cString: fh_vm_migration_blocker_reason(t.vm)).hasPrefix("Heki: the guest pinned cr0 wp"))
        guard case let .failure(refusal) = save(t) else { return XCTFail("a pinned VM's state was saved under migration=block") }
        XCTAssertTrue(refusal.text.hasPrefix("Heki: the guest pinned cr0 wp, cr4 smep+smap, which only this host's KVM enforces"),
                      refusal.text)
        XCTAssertTrue(refusal.text.contains("migration=allow-unprotected"), refusal.text)
        XCTAssertEqual(t.setPolicy(["migration=allow-unprotected"]), 0, t.error)
        fh_vm_iterate_until_idle(t.vm)
        XCTAssertEqual(status(t), HEKI_MIGRATION_CARRY)
        XCTAssertEqual(fh_vm_migration_blocked(t.vm), 0, "dropped")
        XCTAssertEqual(String(cString: fh_vm_migration_blocker_reason(t.vm)), "")
        guard case .success = save(t) else { return XCTFail("not saved after migration=allow-unprotected") }
        XCTAssertEqual(t.setPolicy(["migration=block"]), 0, t.error)
        fh_vm_iterate_until_idle(t.vm)
        XCTAssertEqual(status(t), HEKI_MIGRATION_BLOCKED)
        XCTAssertEqual(fh_vm_migration_blocker_calls(t.vm), 3, "told on each change only")
        t.freePlugin()
        let actions = t.events("HEKI_MIGRATION").map { $0.string("action") ?? "" }
        XCTAssertEqual(actions, ["blocked", "refused", "unblocked", "saved", "blocked"], "\(t.events("HEKI_MIGRATION"))")
        XCTAssertEqual(t.events("HEKI_POLICY").map { $0.string("migration") ?? "" }, ["allow-unprotected", "block"])
    }

    func testRestoredPinsAreNotEnforcedAndCountersContinue() throws {
        let source = try started(["vm-name=src", "migration=allow-unprotected"])
        source.pin(cr: 0, GuestCR0.wp)
        source.pin(cr: 4, GuestCR4.smep)
        source.write(cr: 0, GuestCR0.host & ~GuestCR0.wp, repeat: 3)
        XCTAssertEqual(source.run(), FH_STOP_NONE)
        XCTAssertEqual(source.verdicts(verdictResume), 5, "two pins, three denials")
        let bytes = try save(source).mapError { $0 as Error }.get()

        let destination = try started(["vm-name=dst", "on-denial=pause"])
        XCTAssertNil(restore(destination, bytes))
        XCTAssertEqual(status(destination), HEKI_MIGRATION_CARRY, "restored-only pins travel on, nothing more to lose")
        let query = destination.query()
        let pins = try XCTUnwrap(query.object("pins"))
        XCTAssertEqual(pins.object("cr0")?.string("value"), "0x0", "this kernel enforces nothing")
        XCTAssertEqual(pins.object("cr0")?.strings("restored-only-bits"), ["wp"])
        XCTAssertEqual(pins.object("cr4")?.strings("restored-only-bits"), ["smep"])
        let migration = try XCTUnwrap(query.object("migration"))
        XCTAssertEqual(migration["restored"] as? Bool, true)
        XCTAssertEqual(migration.string("source-vm-name"), "src")
        XCTAssertEqual(migration.string("source-migration"), "allow-unprotected")
        let counters = try XCTUnwrap(query.object("counters"))
        XCTAssertEqual(counters.object("denial")?.uint64("cr0"), 3, "the source's counts continue")
        XCTAssertEqual(counters.object("configure")?.uint64("cr4"), 1)

        // This kernel never saw the pins: the write goes through, no denial.
        destination.write(cr: 0, GuestCR0.host & ~GuestCR0.wp)
        XCTAssertEqual(destination.run(), FH_STOP_NONE, "on-denial=pause would have stopped it")
        destination.freePlugin()
        XCTAssertEqual(destination.count("HEKI_DENIAL"), 0)
        let restored = try XCTUnwrap(destination.events("HEKI_MIGRATION").first)
        XCTAssertEqual(restored.string("action"), "restored")
        XCTAssertEqual(restored.string("source-vm-name"), "src")
        XCTAssertTrue(restored.string("reason")?.contains("this kernel does not enforce them") == true, "\(restored)")
        XCTAssertTrue(destination.logs.contains { $0.hasPrefix("heki: vm dst: migration restored: restored cr0 wp, cr4 smep") },
                      "\(destination.logs)")
        source.freePlugin()
    }

    /// A reset in place on the destination (nothing pinned there) boots a
    /// new guest: the restored pins belonged to the old one and are dropped.
    func testAResetInPlaceForgetsRestoredPins() throws {
        let source = try started(["migration=allow-unprotected"])
        source.pin(cr: 0, GuestCR0.wp)
        XCTAssertEqual(source.run(), FH_STOP_NONE)
        let bytes = try save(source).mapError { $0 as Error }.get()
        source.freePlugin()
        let destination = try started([])
        XCTAssertNil(restore(destination, bytes))
        XCTAssertEqual(status(destination), HEKI_MIGRATION_CARRY)
        XCTAssertEqual(fh_vm_reset(destination.vm, HEKI_RESET_CAUSE_GUEST), Int32(verdictReset),
                       "no pin on this kernel: a plain reset")
        XCTAssertEqual(status(destination), HEKI_MIGRATION_FREE, "nothing left to carry")
        XCTAssertEqual(destination.query().object("pins")?.object("cr0")?.strings("restored-only-bits"), [])
        destination.freePlugin()
        XCTAssertEqual(destination.count("HEKI_RESET"), 0, "an unpinned VM's reset is not announced")
    }

    /// A size that ends inside migration_blocker (4 bytes short of 1.2)
    /// covers only half of the pointer: the plugin must take the callback
    /// as absent, never call through the half it was given.
    func testASizeEndingInsideAFieldDoesNotHandOverHalfAPointer() throws {
        let t = TestVM(lib: try PluginLibrary.require())
        fh_vm_set_migration_blocker(t.vm, true)
        fh_vm_set_host_size(t.vm, HEKI_HOST_SIZE_1_2 - 4)
        XCTAssertTrue(t.create([]), t.error)
        XCTAssertEqual(t.enableCaps(), 0, t.error)
        t.pin(cr: 0, GuestCR0.wp)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        fh_vm_iterate_until_idle(t.vm)
        XCTAssertEqual(status(t), HEKI_MIGRATION_BLOCKED)
        XCTAssertEqual(fh_vm_migration_blocker_calls(t.vm), 0, "the half-covered callback is not called")
        guard case .failure = save(t) else { return XCTFail("saved without a blocker under migration=block") }
        t.freePlugin()
    }

    func testCorruptBytesChangeNothingAndAreReported() throws {
        let source = try TestVM.started(["migration=allow-unprotected"])
        source.pin(cr: 0, GuestCR0.wp)
        XCTAssertEqual(source.run(), FH_STOP_NONE)
        var bytes = try save(source).mapError { $0 as Error }.get()
        bytes[bytes.count / 2] ^= 0x40
        let destination = try TestVM.started([])
        XCTAssertEqual(restore(destination, bytes), "heki-plugin: state: checksum mismatch: the state is corrupt")
        XCTAssertEqual(restore(destination, []), "heki-plugin: state: 0 bytes, fewer than a state's 24-byte frame")
        XCTAssertEqual(status(destination), HEKI_MIGRATION_FREE, "nothing restored")
        XCTAssertEqual(destination.query().object("migration")?["restored"] as? Bool, false)
        destination.freePlugin()
        XCTAssertEqual(destination.events("HEKI_MIGRATION").map { $0.string("action") ?? "" }, ["rejected", "rejected"])
        source.freePlugin()
    }
}

extension HostMigrationTests {
    /// A host without migration_blocker holds nothing: no blocked event, its
    /// event stream is what it was; the save still refuses.
    func testAHostWithoutTheCallbackIsRefusedAtTheSave() throws {
        let t = try TestVM.started([])
        t.pin(cr: 0, GuestCR0.wp)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        fh_vm_iterate_until_idle(t.vm)
        XCTAssertEqual(t.count("HEKI_MIGRATION"), 0)
        XCTAssertEqual(status(t), HEKI_MIGRATION_BLOCKED)
        guard case .failure = save(t) else { return XCTFail("saved under migration=block") }
        t.freePlugin()
        XCTAssertEqual(t.events("HEKI_MIGRATION").map { $0.string("action") ?? "" }, ["refused"])
    }
}
