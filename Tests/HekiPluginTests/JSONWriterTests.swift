import Foundation
import Testing
@testable import HekiPlugin

/// The query's byte writer and the String writer escape alike: every ASCII
/// byte, the line separators, other non-ASCII, a long run (the buffer grows).
@Suite struct JSONWriterTests {
    @Test func writesWhatJSONObjectWrites() {
        let ascii = String(decoding: (0..<0x80).map { UInt8($0) }, as: UTF8.self)
        let texts = [ascii, "a\u{2028}b\u{2029}c\u{2027}é✓", String(repeating: "\"\u{1}", count: 3000), "", "plain"]
        for text in texts {
            var object = JSONObject()
            object.add("s", text)
            object.add("list", [text, "x"])
            object.add("n", Int64?.none)
            object.add("hex", hex: UInt64.max)
            var inner = JSONObject()
            inner.add(text, Int64(-5))
            object.add("inner", inner)
            let document = JSONWriter.document(capacity: 64) { writer in
                writer.add("s", text)
                writer.add("list", [text, "x"])
                writer.add("n", Int64?.none)
                writer.add("hex", hex: UInt64.max)
                writer.add("inner") { inner in inner.add(named: text, Int64(-5)) }
            }
            #expect(document.map { String(cString: $0) } == object.rendered)
            free(document)
        }
    }
}
