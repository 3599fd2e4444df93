// The audit log (audit-log=PATH): JSON lines, one per delivered event, 0600,
// appended across plugin lifetimes, symlinks and unwritable places refused.
import FakeHost
import Foundation
import XCTest

final class HostAuditTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("heki-audit-\(getpid())-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        chmod(dir.path, 0o700)
        try? FileManager.default.removeItem(at: dir)
    }

    private func lines(_ path: String) throws -> [String] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
            .map(String.init).filter { !$0.isEmpty }
    }

    private func lifetime(_ path: String, name: String) throws -> TestVM {
        let t = try TestVM.started(["audit-log=\(path)", "vm-name=\(name)"])
        t.pin(cr: 0, GuestCR0.wp)
        t.write(cr: 0, 0)
        t.raw(exit: 39, words: payload(reason: 5))
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        t.freePlugin()
        return t
    }

    func testOneJsonLinePerDeliveredEvent() throws {
        let path = dir.appendingPathComponent("audit.jsonl").path
        let t = try lifetime(path, name: "audit")
        let events = t.events
        XCTAssertEqual(events.count, 6, "the kernel check, 2 capability, configure, denial, malformed")
        let written = try lines(path)
        XCTAssertEqual(written.count, events.count)
        let iso = try NSRegularExpression(pattern: #"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$"#)
        for (line, event) in zip(written, events) {
            let object = parseJSON(line)
            XCTAssertEqual(object.string("event"), event.name)
            let time = object.string("time") ?? ""
            XCTAssertEqual(iso.numberOfMatches(in: time, range: NSRange(time.startIndex..., in: time)), 1, time)
            let data = try XCTUnwrap(object.object("data"), line)
            XCTAssertEqual(NSDictionary(dictionary: data), NSDictionary(dictionary: event.data),
                           "the audit data is the callback's data")
            XCTAssertEqual(data.string("vm-name"), "audit")
        }
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        XCTAssertEqual((attributes[.posixPermissions] as? NSNumber)?.intValue, 0o600)
        XCTAssertEqual(t.query().count, 0, "no plugin any more")
    }

    func testAppendedAcrossTwoLifetimes() throws {
        let path = dir.appendingPathComponent("audit.jsonl").path
        _ = try lifetime(path, name: "first")
        let first = try lines(path).count
        XCTAssertEqual(first, 6)
        _ = try lifetime(path, name: "second")
        let all = try lines(path)
        XCTAssertEqual(all.count, 2 * first)
        XCTAssertEqual(parseJSON(all[0]).object("data")?.string("vm-name"), "first")
        XCTAssertEqual(parseJSON(all[first]).object("data")?.string("vm-name"), "second")
    }

    func testExistingFileKeepsItsContent() throws {
        let path = dir.appendingPathComponent("audit.jsonl").path
        try "{\"older\":true}\n".write(toFile: path, atomically: false, encoding: .utf8)
        chmod(path, 0o600)
        _ = try lifetime(path, name: "x")
        let all = try lines(path)
        XCTAssertEqual(all.first, "{\"older\":true}")
        XCTAssertEqual(all.count, 7)
    }

    func testSymlinkIsRefused() throws {
        let target = dir.appendingPathComponent("target.jsonl").path
        XCTAssertTrue(FileManager.default.createFile(atPath: target, contents: nil))
        let link = dir.appendingPathComponent("link.jsonl").path
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
        let t = TestVM(lib: try PluginLibrary.require())
        XCTAssertFalse(t.create(["audit-log=\(link)"]))
        XCTAssertTrue(t.error.hasPrefix("heki-plugin: audit-log"), t.error)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: target)).count, 0)
    }

    func testUnwritablePlacesAreRefused() throws {
        let lib = try PluginLibrary.require()
        var paths = [dir.appendingPathComponent("missing/dir/audit.jsonl").path,
                     "/proc/heki-audit-test.jsonl"]
        if getuid() != 0 {
            let locked = dir.appendingPathComponent("locked")
            try FileManager.default.createDirectory(at: locked, withIntermediateDirectories: false)
            chmod(locked.path, 0o500)
            paths.append(locked.appendingPathComponent("audit.jsonl").path)
        }
        paths.append(dir.path) // a directory, not a file
        for path in paths {
            let t = TestVM(lib: lib)
            XCTAssertFalse(t.create(["audit-log=\(path)"]), path)
            XCTAssertTrue(t.error.hasPrefix("heki-plugin: audit-log"), "\(path): \(t.error)")
        }
    }
}
