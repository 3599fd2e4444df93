// heki_plugin_query against fixed bytes: Fixtures/query.tsv holds, per
// case, the document the String writer (JSONObject) made before the query
// moved to the byte writer. The cases cover every member: each kernel
// status, both profiles, claimed and unclaimed exits, an abi mismatch,
// policies, pins, restored-only pins, counters and summaries, and a
// vm-name and audit-log path that need escaping. A change meant to alter
// the bytes changes the fixture, line by line, in the same commit
// (HEKI_QUERY_FIXTURE_WRITE=1 rewrites it from the build under test).
import FakeHost
import Foundation
import XCTest

final class HostQueryBytesTests: XCTestCase {
    static let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/query.tsv")

    private func raw(_ t: TestVM) -> String {
        fh_vm_flush(t.vm)  // every event delivered: "delivered" does not race the main loop
        guard let q = fh_vm_query(t.vm) else { return "(NULL)" }
        defer { fh_free_string(q) }
        return String(cString: q)
    }

    private func state(_ t: TestVM) throws -> [UInt8] {
        let api = fh_vm_api(t.vm)!.pointee
        var data: UnsafeMutablePointer<UInt8>?
        var size: UInt32 = 0
        var error: UnsafeMutablePointer<CChar>?
        XCTAssertEqual(api.save_state(fh_vm_plugin(t.vm), &data, &size, &error), 0)
        defer { api.free_state(data); api.free_string(error) }
        return Array(UnsafeBufferPointer(start: data, count: Int(size)))
    }

    /// id -> the query's document, in the fixture's order.
    private func cases() throws -> [(String, String)] {
        let lib = try PluginLibrary.require()
        var out: [(String, String)] = []
        let odd = "q\"b\\s/ é✓\u{2028}\u{2029}"
        let audit = "/tmp/heki-query-fixture-\"\\é.jsonl"
        defer { unlink(audit) }

        let created = TestVM(lib: lib)
        XCTAssertTrue(created.create([]), created.error)
        out.append(("created-not-checked", raw(created)))

        let small = TestVM(lib: lib)
        fh_vm_set_host_size(small.vm, UInt32(HEKI_HOST_SIZE_1_0))
        XCTAssertTrue(small.create(["vm-name=old-host"]), small.error)
        out.append(("host-cannot-check", raw(small)))

        let v2 = try TestVM.started(["vm-name=web1", "require-cr0=wp", "require-cr4=smep+smap"])
        out.append(("v2-started", raw(v2)))
        v2.pin(cr: 0, GuestCR0.wp)
        v2.pin(cr: 4, GuestCR4.smep | (1 << 63) | (1 << 40))
        v2.write(cr: 0, GuestCR0.host & ~GuestCR0.wp, repeat: 3)
        v2.raw(exit: numbersOf(v2).configure, words: payload(reason: 9, value: 1))
        XCTAssertEqual(v2.run(), FH_STOP_NONE)
        out.append(("v2-pinned-denied", raw(v2)))
        XCTAssertEqual(v2.setPolicy(["on-denial=pause", "on-denial-cr4=exit", "on-weak-pinning=poweroff",
                                     "require-cr4=none", "migration=allow-unprotected"]), 0, v2.error)
        out.append(("v2-policy-changed", raw(v2)))
        let saved = try state(v2)

        let v3 = try TestVM.started(["abi=v3", "require-cr4=smep", "on-weak-pinning=reset", "rate-limit=1",
                                     "vm-name=\(odd)", "audit-log=\(audit)", "pin-deadline=off"],
                                    kernel: fk_profile(FK_PROFILE_V3))
        v3.pin(cr: 4, GuestCR4.smep)
        v3.write(cr: 4, GuestCR4.host & ~GuestCR4.smep, repeat: 5)
        v3.run()
        out.append(("v3-escaped-storm", raw(v3)))

        let restored = try TestVM.started(["vm-name=dst", "configure-exits=cr4", "denial-exits=cr0"])
        XCTAssertEqual(restore(restored, saved), 0, restored.error)
        out.append(("restored", raw(restored)))

        for (id, kind) in [("stock", FK_KERNEL_STOCK), ("stock-irqchip", FK_KERNEL_STOCK_IRQCHIP)] {
            let t = TestVM(lib: lib)
            fk_vm_set_kernel(t.kernel, kind)
            XCTAssertTrue(t.create([]), t.error)
            XCTAssertEqual(t.enableCaps(), 0, t.error)
            out.append((id, raw(t)))
        }

        let mismatch = TestVM(lib: lib, kernel: fk_profile(FK_PROFILE_V3))
        XCTAssertTrue(mismatch.create(["abi=v2"]), mismatch.error)
        XCTAssertEqual(mismatch.enableCaps(), 0, mismatch.error)
        out.append(("abi-mismatch", raw(mismatch)))

        let refused = TestVM(lib: lib)
        XCTAssertTrue(refused.create(["abi=v2", "cap-configure=1000"]), refused.error)
        _ = refused.enableCaps()
        out.append(("override-refused", raw(refused)))
        return out
    }

    private func numbersOf(_ t: TestVM) -> (configure: UInt32, denial: UInt32) {
        let api = fh_vm_api(t.vm)!.pointee
        return (api.exit_number(fh_vm_plugin(t.vm), HEKI_EXIT_CONFIGURE),
                api.exit_number(fh_vm_plugin(t.vm), HEKI_EXIT_DENIAL))
    }

    private func restore(_ t: TestVM, _ bytes: [UInt8]) -> Int32 {
        let api = fh_vm_api(t.vm)!.pointee
        var error: UnsafeMutablePointer<CChar>?
        defer { api.free_string(error) }
        return bytes.withUnsafeBufferPointer {
            api.restore_state(fh_vm_plugin(t.vm), $0.baseAddress, UInt32($0.count), &error)
        }
    }

    func testQueryRendersTheBytesOfTheFixture() throws {
        let cases = try cases()
        // HEKI_QUERY_FIXTURE_WRITE=1 rewrites the fixture from this build
        // (only for a change that means to alter the bytes).
        if ProcessInfo.processInfo.environment["HEKI_QUERY_FIXTURE_WRITE"] == "1" {
            let text = cases.map { "\($0.0)\t\($0.1)\n" }.joined()
            try text.write(to: HostQueryBytesTests.fixture, atomically: true, encoding: .utf8)
        }
        let text = try String(contentsOf: HostQueryBytesTests.fixture, encoding: .utf8)
        let expected = text.split(separator: "\n").map { line in
            let fields = line.split(separator: "\t", maxSplits: 1, omittingEmptySubsequences: false)
            return (String(fields[0]), fields.count > 1 ? String(fields[1]) : "")
        }
        XCTAssertEqual(cases.map(\.0), expected.map(\.0), "the fixture's cases")
        for ((id, got), (_, want)) in zip(cases, expected) {
            XCTAssertEqual(got, want, "case \(id)")
            XCTAssertTrue((try? JSONSerialization.jsonObject(with: Data(got.utf8))) is [String: Any], "case \(id): an object")
        }
    }
}
