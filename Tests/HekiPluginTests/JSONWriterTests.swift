import Foundation
import Testing
@testable import HekiPlugin

/// The one JSON writer: its exact bytes for the characters that could break
/// a line or a document, and, for every ASCII byte, the line separators,
/// other non-ASCII and a long run (the buffer grows), a document that
/// Foundation's parser reads back to the same values, as a C string and
/// appended to a buffer the renderer owns.
@Suite struct JSONWriterTests {
    @Test func escapesEverythingThatCouldBreakALine() {
        let document = JSONWriter.document(capacity: 16) { writer in
            writer.add("name", "a\"b\\c\nd\u{0}e\u{1f}f\u{7f}\u{2028}g")
            writer.add("n", UInt64.max)
            writer.add("hex", hex: 0xdead_beef)
            writer.add("list", ["x", "y\""])
            writer.add("none", nil as String?)
        }
        #expect(document.map { String(cString: $0) }
                == #"{"name":"a\"b\\c\nd\u0000e\u001ff\u007f\u2028g","n":18446744073709551615,"hex":"0xdeadbeef","list":["x","y\""],"none":null}"#)
        free(document)
    }

    @Test func aParserReadsBackWhatWasWritten() throws {
        let ascii = String(decoding: (0..<0x80).map { UInt8($0) }, as: UTF8.self)
        let texts = [ascii, "a\u{2028}b\u{2029}c\u{2027}é✓", String(repeating: "\"\u{1}", count: 3000), "", "plain"]
        for text in texts {
            let write = { (writer: inout JSONWriter) in
                writer.add("s", text)
                writer.add("list", [text, "x"])
                writer.add("n", Int64?.none)
                writer.add("hex", hex: UInt64.max)
                writer.add("inner") { inner in inner.add(named: text, Int64(-5)) }
            }
            let document = try #require(JSONWriter.document(capacity: 64, write))
            let text1 = String(cString: document)
            free(document)
            var buffer = ByteWriter(capacity: 8)
            buffer.reserve(3)
            buffer.append("x: ")
            JSONWriter.object(appendingTo: &buffer, write)
            let text2 = String(cString: buffer.cString())
            buffer.deallocate()
            #expect(text2 == "x: " + text1)
            let parsed = try #require(try JSONSerialization.jsonObject(with: Data(text1.utf8)) as? [String: Any])
            #expect(parsed["s"] as? String == text)
            #expect(parsed["list"] as? [String] == [text, "x"])
            #expect(parsed["n"] is NSNull)
            #expect(parsed["hex"] as? String == "0xffffffffffffffff")
            #expect((parsed["inner"] as? [String: Any])?[text] as? Int == -5)
        }
    }
}
