// heki_plugin_set_policy through the fake host: the next exit follows the new
// policy, a bad change changes nothing, fixed keys are refused, and each
// change is a HEKI_POLICY event in the callback, the audit file and the log.
import FakeHost
import Foundation
import XCTest

final class HostPolicyChangeTests: XCTestCase {
    func testNextDenialFollowsTheNewVerdict() throws {
        let t = try TestVM.started(["on-denial=resume"])
        t.pin(cr: 0, GuestCR0.wp)
        t.write(cr: 0, 0)
        XCTAssertEqual(t.run(), FH_STOP_NONE, "resume before the change")
        XCTAssertEqual(t.setPolicy(["on-denial=pause"]), 0, t.error)
        XCTAssertEqual(t.error, "")
        t.write(cr: 0, 0)
        XCTAssertEqual(t.run(), verdictPause, "the next denial follows on-denial=pause")
        XCTAssertEqual(t.query().object("policy")?.string("on-denial"), "pause")
        XCTAssertEqual(t.query().object("policy")?.string("on-denial-cr0"), "pause", "no override: follows on-denial")
        t.freePlugin()
        XCTAssertEqual(t.events("HEKI_DENIAL").map { $0.string("verdict") ?? "" }, ["resume", "pause"])
    }

    func testChangeIsReportedToEverySink() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("heki-policy-\(getpid())-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let audit = dir.appendingPathComponent("audit.jsonl").path
        let t = try TestVM.started(["vm-name=web1", "audit-log=\(audit)", "on-denial-cr4=reset"])
        XCTAssertEqual(t.setPolicy(["require-cr0=wp", "on-denial=exit", "on-weak-pinning=poweroff"]), 0, t.error)
        fh_vm_iterate_until_idle(t.vm)
        let raw = t.events.filter { $0.name == "HEKI_POLICY" }.map(\.raw)
        XCTAssertEqual(raw, [#"{"vm-name":"web1","changed":["on-denial","on-weak-pinning","require-cr0"],"#
            + #""on-denial":"exit","on-denial-cr0":"exit","on-denial-cr4":"reset","on-weak-pinning":"poweroff","#
            + #""require-cr0":"0x10000","require-cr0-bits":["wp"],"require-cr4":"0x0","require-cr4-bits":[],"#
            + #""migration":"block"}"#])
        XCTAssertTrue(t.logs.contains {
            $0.hasPrefix("heki: vm web1: policy changed: on-denial, on-weak-pinning, require-cr0; now on-denial exit")
        }, "\(t.logs)")
        let lines = try String(contentsOfFile: audit, encoding: .utf8).split(separator: "\n")
        let line = try XCTUnwrap(lines.first { $0.contains(#""event":"HEKI_POLICY""#) }, "\(lines)")
        XCTAssertTrue(line.hasSuffix(#""data":\#(raw.first ?? "")}"#), String(line))
        t.freePlugin()
    }

    func testBadChangeChangesNothing() throws {
        let t = try TestVM.started(["on-denial=pause", "require-cr4=smep"])
        let before = t.query().object("policy")
        for (arguments, key) in [(["on-denial=reset", "require-cr0=bogus"], "require-cr0"),
                                 (["on-denial=maybe"], "on-denial"),
                                 (["on-denial=reset", "on-denial=exit"], "on-denial"),
                                 (["abi=v3"], "abi"), (["rate-limit=5"], "rate-limit"),
                                 (["audit-log=/tmp/x"], "audit-log")] {
            XCTAssertEqual(t.setPolicy(arguments), -1, "\(arguments)")
            XCTAssertTrue(t.error.hasPrefix("heki-plugin: \(key): "), "\(arguments): \(t.error)")
        }
        XCTAssertTrue(t.error.contains("cannot change while the VM runs"), t.error)
        XCTAssertEqual(t.setPolicy(["nonsense"]), -1)
        XCTAssertTrue(t.error.contains("is not key=value"), t.error)
        XCTAssertEqual(t.query().object("policy")?.string("on-denial"), before?.string("on-denial"))
        XCTAssertEqual(t.query().object("policy")?.strings("require-cr4"), ["smep"])
        t.pin(cr: 0, GuestCR0.wp)
        t.write(cr: 0, 0)
        XCTAssertEqual(t.run(), verdictPause, "the start policy still holds")
        fh_vm_iterate_until_idle(t.vm)
        XCTAssertEqual(t.count("HEKI_POLICY"), 0, "a refused change is no event")
        t.freePlugin()
    }

    func testUnchangedKeysAndOverridesKeepTheirValues() throws {
        let t = try TestVM.started(["on-denial=poweroff", "on-denial-cr4=reset", "require-cr0=wp"])
        XCTAssertEqual(t.setPolicy(["on-denial=pause"]), 0, t.error)
        let policy = t.query().object("policy")
        XCTAssertEqual(policy?.string("on-denial-cr4"), "reset", "the override stays")
        XCTAssertEqual(policy?.string("on-denial-cr0"), "pause")
        XCTAssertEqual(policy?.strings("require-cr0"), ["wp"])
        XCTAssertEqual(t.setPolicy([]), 0, "an empty change is valid")
        fh_vm_iterate_until_idle(t.vm)
        XCTAssertEqual(t.events("HEKI_POLICY").map { $0.strings("changed") ?? ["?"] }, [["on-denial"], []])
        t.freePlugin()
    }

    func testRequiredBitsAddedAtRunTimeAreJudgedAtTheNextPin() throws {
        let t = try TestVM.started(["on-weak-pinning=pause"])
        t.pin(cr: 4, GuestCR4.smep)
        XCTAssertEqual(t.run(), FH_STOP_NONE, "nothing required yet")
        XCTAssertEqual(t.setPolicy(["require-cr4=smep+smap"]), 0, t.error)
        t.pin(cr: 4, GuestCR4.smep)
        XCTAssertEqual(t.run(), verdictPause, "smap now required, not pinned")
        t.freePlugin()
        XCTAssertEqual(t.events("HEKI_WEAK_PINNING").first?.strings("missing-bits"), ["smap"])
    }
}
