/// A small writer for one compact JSON object. Every string goes through
/// `quote`, so text from a guest or an option cannot break the document.
struct JSONObject {
    private var text = "{"
    private var empty = true

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

    mutating func add(_ key: String, _ object: JSONObject) { self.key(key); text += object.rendered }

    var rendered: String { text + "}" }

    static func quote(_ string: String, into out: inout String) {
        out += "\""
        // Most text (keys, names, numbers' spellings) needs no escape: one
        // append. 0xe2 leads U+2028 and U+2029 (and others: the slow path
        // decides).
        if !string.utf8.contains(where: { $0 < 0x20 || $0 == 0x22 || $0 == 0x5c || $0 == 0x7f || $0 == 0xe2 }) {
            out += string
            out += "\""
            return
        }
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7f
                || scalar.value == 0x2028 || scalar.value == 0x2029:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}
