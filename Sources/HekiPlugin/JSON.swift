/// The one spelling of a JSON string's escapes, for both writers: quotes,
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
}

/// A small writer for one compact JSON object, as a String (the rare
/// events' data). Every string goes through `quote`, so text from a guest
/// or an option cannot break the document.
struct JSONObject {
    private var text = "{"
    private var empty = true

    /// Room for a typical rare event's object at once, not five doublings.
    init() { text.reserveCapacity(256) }

    private mutating func key(_ key: String) {
        if !empty { text += "," }
        empty = false
        JSONObject.quote(key, into: &text)
        text += ":"
    }

    mutating func add(_ key: String, _ value: String) {
        self.key(key)
        JSONObject.quote(value, into: &text)
    }

    mutating func add(_ key: String, _ value: String?) {
        if let value { add(key, value) } else { self.key(key); text += "null" }
    }

    mutating func add(_ key: String, _ value: UInt64) { self.key(key); text += String(value) }
    mutating func add(_ key: String, _ value: Int64?) {
        self.key(key)
        text += value.map { String($0) } ?? "null"
    }
    mutating func add(_ key: String, _ value: UInt32) { add(key, UInt64(value)) }
    mutating func add(_ key: String, _ value: Int64) { self.key(key); text += String(value) }
    mutating func add(_ key: String, _ value: Bool) { self.key(key); text += value ? "true" : "false" }

    /// "0x..." in lower case, no padding; null for nil.
    mutating func add(_ key: String, hex value: UInt64?) { add(key, value.map { "0x" + String($0, radix: 16) }) }

    mutating func add(_ key: String, _ values: [String]) {
        self.key(key)
        text += "["
        for (index, value) in values.enumerated() {
            if index > 0 { text += "," }
            JSONObject.quote(value, into: &text)
        }
        text += "]"
    }

    mutating func add(_ key: String, _ object: JSONObject) {
        self.key(key)
        text += object.text
        text += "}"
    }

    var rendered: String { text + "}" }

    static func quote(_ string: String, into out: inout String) {
        out += "\""
        var copy = string
        copy.withUTF8 { utf8 in
            JSONEscape.scan(utf8, copy: { run in
                // Most text (keys, names) is one run: the String itself.
                if run.count == utf8.count { out += string } else { out += String(decoding: run, as: UTF8.self) }
            }, escape: { code in
                JSONEscape.spell(code) { out.unicodeScalars.append(Unicode.Scalar($0)) }
            })
        }
        out += "\""
    }
}
