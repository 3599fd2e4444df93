import Foundation
import Testing
@testable import HekiPlugin

/// The audit file's batches: lines added are written by `flush`, in order
/// and whole, also when a batch outgrows `AuditLog.batchBytes` and is
/// written before the next line.
@Suite struct AuditLogTests {
    private func path() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("heki-audit-unit-\(UUID().uuidString).jsonl").path
    }

    @Test func linesWaitForTheFlushThenAreWrittenWhole() throws {
        let path = path()
        defer { unlink(path) }
        let arena = ByteArena()
        let name = arena.string("HEKI_DENIAL")
        let log = try AuditLog(path: path)
        #expect(log.flush() == nil, "nothing to write")
        #expect(log.append(time: 0, event: name, data: arena.string("{\"n\":0}")) == nil)
        // The size, not String(contentsOfFile:): Foundation leaks its buffer
        // reading an empty file (LeakSanitizer, make asan).
        var info = stat()
        #expect(stat(path, &info) == 0 && info.st_size == 0, "not written before the flush")
        let outcome = try #require(log.flush())
        #expect(outcome.failed == 0 && outcome.transition == nil)
        #expect(try String(contentsOfFile: path, encoding: .utf8)
                == "{\"time\":\"1970-01-01T00:00:00.000000Z\",\"event\":\"HEKI_DENIAL\",\"data\":{\"n\":0}}\n")
    }

    @Test func aBatchLargerThanItsBufferIsWrittenInOrder() throws {
        let path = path()
        defer { unlink(path) }
        let arena = ByteArena()
        let name = arena.string("HEKI_DENIAL")
        let padding = String(repeating: "x", count: 300)
        let count = 3 * AuditLog.batchBytes / 300
        let log = try AuditLog(path: path)
        var written = 0
        for index in 0..<count {
            let data = arena.string("{\"n\":\(index),\"pad\":\"\(padding)\"}")
            if let outcome = log.append(time: 1_795_608_000_000_000 + Int64(index), event: name, data: data) {
                #expect(outcome.failed == 0)
                written += 1
            }
        }
        _ = log.flush()
        #expect(written >= 2, "the batch was written before it outgrew its buffer")
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == count)
        for (index, line) in lines.enumerated() {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect((object?["data"] as? [String: Any])?["n"] as? Int == index)
            #expect(object?["time"] as? String == AuditLog.timestamp(1_795_608_000_000_000 + Int64(index)))
        }
    }

    /// Data rendered straight into the batch: the callback sees the line's
    /// own bytes, NUL-terminated, before the line is closed; data larger
    /// than its room (or the batch) grows the batch and stays whole.
    @Test func dataRenderedIntoTheBatchIsWhatTheCallbackSees() throws {
        let path = path()
        defer { unlink(path) }
        let arena = ByteArena()
        let name = arena.string("HEKI_POLICY")
        let log = try AuditLog(path: path)
        var seen: [String] = []
        let sizes = [10, 2 * AuditLog.batchBytes, 20]
        for (index, size) in sizes.enumerated() {
            let text = "{\"n\":\(index),\"pad\":\"" + String(repeating: "y", count: size) + "\"}"
            let outcome = log.append(time: 0, event: name, room: 16, data: { line in
                let start = line.count
                line.append(text: text)
                return line.terminated(from: start)
            }, then: { data in
                seen.append(String(cString: data.cString))
                #expect(data.count == text.utf8.count)
            })
            #expect(outcome == nil || outcome?.failed == 0)
        }
        _ = log.flush()
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == sizes.count)
        for (index, line) in lines.enumerated() {
            #expect(line == "{\"time\":\"1970-01-01T00:00:00.000000Z\",\"event\":\"HEKI_POLICY\",\"data\":" + seen[index] + "}")
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect((object?["data"] as? [String: Any])?["n"] as? Int == index)
        }
    }
}
