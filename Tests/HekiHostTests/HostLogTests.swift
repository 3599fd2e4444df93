// The log callback: one line per delivered event with the VM and vCPU named,
// at a level that fits; and the audit log's failure rule (a full disk).
import CHekiPlugin
import FakeHost
import HekiKernelModel
import XCTest

final class HostLogTests: XCTestCase {
    private func logs(_ t: TestVM) -> [(level: HekiLogLevel, message: String)] {
        (0..<fh_vm_log_count(t.vm)).map {
            (HekiLogLevel(rawValue: UInt32(fh_vm_log_level(t.vm, $0))), String(cString: fh_vm_log_message(t.vm, $0)))
        }
    }

    func testOneLinePerEventNamingVmAndVcpu() throws {
        let t = try TestVM.started(["vm-name=web1", "require-cr4=smep+smap", "on-denial=poweroff"], vcpus: 2)
        t.pin(0, cr: 4, GuestCR4.smep)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        // Only once the pin is made (vCPUs run concurrently within a run).
        t.write(1, cr: 4, GuestCR4.pae)
        XCTAssertEqual(t.run(), verdictPoweroff)
        t.freePlugin()
        let lines = logs(t)
        XCTAssertEqual(UInt64(lines.count), fh_vm_event_total(t.vm), "one log line per event")
        XCTAssertTrue(lines.allSatisfy { $0.message.hasPrefix("heki: vm web1") }, "\(lines)")
        let configure = try XCTUnwrap(lines.first { $0.message.contains("pinned cr4") })
        XCTAssertEqual(configure.level, HEKI_LOG_INFO)
        XCTAssertTrue(configure.message.contains("vcpu 0"), configure.message)
        let weak = try XCTUnwrap(lines.first { $0.message.contains("weak pinning") })
        XCTAssertEqual(weak.level, HEKI_LOG_WARNING)
        XCTAssertTrue(weak.message.contains("smap required but not pinned"), weak.message)
        let denial = try XCTUnwrap(lines.first { $0.message.contains("denied") })
        XCTAssertEqual(denial.level, HEKI_LOG_WARNING)
        XCTAssertTrue(denial.message.contains("vcpu 1: KVM denied a cr4 write of 0x20 clearing smep, verdict poweroff"),
                      denial.message)
    }

    func testRefusedCapabilityIsAnErrorWhenRequired() throws {
        for (required, level) in [("on", HEKI_LOG_ERROR), ("off", HEKI_LOG_WARNING)] {
            let t = TestVM(lib: try PluginLibrary.require())
            fk_vm_set_heki_built(t.kernel, false)
            XCTAssertTrue(t.create(["require-caps=\(required)"]), t.error)
            XCTAssertEqual(t.enableCaps(), required == "on" ? -1 : 0)
            t.freePlugin()
            let refused = logs(t).filter { $0.message.contains("refused") }
            XCTAssertFalse(refused.isEmpty)
            XCTAssertTrue(refused.allSatisfy { $0.level == level }, "\(refused)")
        }
    }

    /// A device that fails every write (ENOSPC): each line is dropped and
    /// counted, the failure is logged once, events still reach the host.
    func testAuditWriteFailuresAreCountedAndLoggedOnce() throws {
        let t = try TestVM.started(["audit-log=/dev/full", "rate-limit=0"])
        t.pin(cr: 0, GuestCR0.wp)
        t.write(cr: 0, 0, repeat: 50)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        fh_vm_iterate_until_idle(t.vm)
        let failures = t.query().object("counters")?.uint64("audit-failures")
        t.freePlugin()
        XCTAssertEqual(t.count("HEKI_DENIAL"), 50, "the host still gets every event")
        XCTAssertEqual(failures, fh_vm_event_total(t.vm), "every line failed and was counted")
        let audit = logs(t).filter { $0.message.contains("audit log") }
        XCTAssertEqual(audit.count, 1, "\(audit)")
        XCTAssertEqual(audit.first?.level, HEKI_LOG_ERROR)
        XCTAssertTrue(audit.first?.message.contains("No space left on device") == true, "\(audit)")
    }
}
