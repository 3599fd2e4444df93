/// The one spelling of a JSON string's escapes (JSONWriter's, and the
/// renderer's fixed parts made at init): quotes,
/// backslashes, control characters, DEL, and U+2028/U+2029 (line ends to
/// some readers) become escapes; every other byte is copied as it is.
enum JSONEscape {
    /// Splits `utf8` (valid UTF-8) into the runs copied as they are and the
    /// code points between them that need an escape, in order. Eight bytes
    /// at a time until a word holds a byte that may need one (most text
    /// holds none: one test per word, not five per byte).
    @inline(__always)
    static func scan(_ utf8: UnsafeBufferPointer<UInt8>, copy: (UnsafeBufferPointer<UInt8>) -> Void,
                     escape: (UInt32) -> Void) {
        guard let base = utf8.baseAddress else { return }
        let raw = UnsafeRawPointer(base)
        var start = 0, index = 0
        while index < utf8.count {
            if index + 8 <= utf8.count && !mayNeedEscape(raw.loadUnaligned(fromByteOffset: index, as: UInt64.self)) {
                index += 8
                continue
            }
            let byte = utf8[index]
            var length = 0
            if byte < 0x20 || byte == 0x22 || byte == 0x5c || byte == 0x7f {
                length = 1
            } else if byte == 0xe2, index + 2 < utf8.count, utf8[index + 1] == 0x80, utf8[index + 2] | 1 == 0xa9 {
                length = 3  // E2 80 A8/A9: U+2028/U+2029
            }
            if length == 0 {
                index += 1
                continue
            }
            if start < index { copy(UnsafeBufferPointer(rebasing: utf8[start..<index])) }
            escape(length == 1 ? UInt32(byte) : 0x2000 | UInt32(utf8[index + 2] & 0x7f))
            index += length
            start = index
        }
        if start < utf8.count { copy(UnsafeBufferPointer(rebasing: utf8[start...])) }
    }

    /// Whether any byte of `word` is below 0x20, a quote, a backslash, DEL
    /// or 0xe2 (which leads U+2028/U+2029); the byte-wise test then decides.
    /// The classic has-less and has-zero-byte tests: a byte that matches is
    /// never missed, a borrow past it may only raise a false alarm.
    @inline(__always)
    static func mayNeedEscape(_ word: UInt64) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101, highs: UInt64 = 0x8080_8080_8080_8080
        func zeroByte(_ x: UInt64) -> UInt64 { (x &- ones) & ~x & highs }
        let control = (word &- ones &* 0x20) & ~word & highs
        return control | zeroByte(word ^ (ones &* 0x22)) | zeroByte(word ^ (ones &* 0x5c))
            | zeroByte(word ^ (ones &* 0x7f)) | zeroByte(word ^ (ones &* 0xe2)) != 0
    }

    /// The escape of `code` (\" \\ \n \r \t, else \u and four lower-case
    /// hex digits), byte by byte. At most 6 bytes.
    @inline(__always)
    static func spell(_ code: UInt32, _ emit: (UInt8) -> Void) {
        emit(0x5c)
        switch code {
        case 0x22, 0x5c: emit(UInt8(code))
        case 0x0a: emit(0x6e)  // n
        case 0x0d: emit(0x72)  // r
        case 0x09: emit(0x74)  // t
        default:
            emit(0x75)  // u
            for shift in stride(from: 12, through: 0, by: -4) {
                let digit = UInt8(truncatingIfNeeded: code >> UInt32(shift)) & 15
                emit(digit < 10 ? 0x30 + digit : 0x57 + digit)
            }
        }
    }

    /// `string` as a JSON string, quotes included: for the parts of an
    /// event the renderer makes once (the vm-name field).
    static func quoted(_ string: String) -> String {
        var out = "\""
        var copy = string
        copy.withUTF8 { utf8 in
            scan(utf8, copy: { run in out += String(decoding: run, as: UTF8.self) },
                 escape: { code in spell(code) { out.unicodeScalars.append(Unicode.Scalar($0)) } })
        }
        return out + "\""
    }
}
