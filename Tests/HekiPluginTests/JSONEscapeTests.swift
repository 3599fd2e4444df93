import Testing
@testable import HekiPlugin

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
