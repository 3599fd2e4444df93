import Foundation
import Testing
@testable import HekiPlugin

@Suite struct JSONObjectTests {
    @Test func escapesEverythingThatCouldBreakALine() {
        var object = JSONObject()
        object.add("name", "a\"b\\c\nd\u{0}e\u{1f}f\u{7f}\u{2028}g")
        object.add("n", UInt64.max)
        object.add("hex", hex: 0xdead_beef)
        object.add("list", ["x", "y\""])
        object.add("none", nil as String?)
        #expect(object.rendered == #"{"name":"a\"b\\c\nd\u0000e\u001ff\u007f\u2028g","n":18446744073709551615,"hex":"0xdeadbeef","list":["x","y\""],"none":null}"#)
    }
}

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

@Suite struct JSONEscapeTests {
    static func needs(_ byte: UInt8) -> Bool { byte < 0x20 || byte == 0x22 || byte == 0x5c || byte == 0x7f || byte == 0xe2 }

    /// Every byte value at every position of a word of safe bytes, and
    /// random words: the word test never misses a byte that may need one.
    @Test func theWordTestMissesNoByte() {
        for byte in 0...255 {
            for position in 0..<8 {
                var bytes = [UInt8](repeating: 0x61, count: 8)
                bytes[position] = UInt8(byte)
                let word = bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
                #expect(JSONEscape.mayNeedEscape(word) == JSONEscapeTests.needs(UInt8(byte)), "byte \(byte) at \(position)")
            }
        }
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<100_000 {
            let word = UInt64.random(in: .min ... .max, using: &generator)
            let any = (0..<8).contains { JSONEscapeTests.needs(UInt8(truncatingIfNeeded: word >> (8 * $0))) }
            if any { #expect(JSONEscape.mayNeedEscape(word), "word \(String(word, radix: 16))") }
        }
    }
}
