#if canImport(Glibc)
import Glibc
#endif

/// A compact JSON document written into a ByteWriter, member by member:
/// the plugin's one JSON writer for documents of many members (the query)
/// and for the events not written field by field (the renderer's rare
/// kinds and announcements).
/// Keys are the plugin's own names; every String value is escaped
/// (JSONEscape). Each member reserves its own room, so a long vm-name or
/// path only grows the buffer.
struct JSONWriter {
    private var bytes: ByteWriter
    /// The next member is the first of its object: no comma before it.
    private var first = true

    private init(capacity: Int) {
        bytes = ByteWriter(capacity: capacity)
        bytes.reserve(1)
        bytes.append(byte: 0x7b)  // {
    }

    /// Continues `bytes` (the renderer's buffer) with `{`.
    private init(continuing bytes: ByteWriter) {
        self.bytes = bytes
        self.bytes.reserve(1)
        self.bytes.append(byte: 0x7b)  // {
    }

    /// Appends the object `body` writes to `bytes`.
    static func object(appendingTo bytes: inout ByteWriter, _ body: (inout JSONWriter) -> Void) {
        var writer = JSONWriter(continuing: bytes)
        body(&writer)
        writer.bytes.reserve(1)
        writer.bytes.append(byte: 0x7d)  // }
        // The writer may have grown the buffer: it is the one to keep.
        bytes = writer.bytes
    }

    /// The object `body` writes, as a malloc'ed C string (what
    /// heki_plugin_free_string frees); nil only when malloc fails.
    static func document(capacity: Int, _ body: (inout JSONWriter) -> Void) -> UnsafeMutablePointer<CChar>? {
        var writer = JSONWriter(capacity: capacity)
        defer { writer.bytes.deallocate() }
        body(&writer)
        writer.bytes.reserve(1)
        writer.bytes.append(byte: 0x7d)  // }
        return strdup(writer.bytes.cString())
    }

    // MARK: Keys

    private mutating func comma() {
        bytes.reserve(1)
        if !first { bytes.append(byte: 0x2c) }
        first = false
    }

    private mutating func key(_ key: StaticString) {
        comma()
        bytes.reserve(key.utf8CodeUnitCount + 3)
        bytes.append(byte: 0x22)
        bytes.append(key)
        bytes.append(byte: 0x22)
        bytes.append(byte: 0x3a)  // :
    }

    /// A key made at run time (a register's, a capability's number).
    private mutating func key(named key: String) {
        comma()
        quoted(key)
        bytes.reserve(1)
        bytes.append(byte: 0x3a)
    }

    // MARK: Values

    private mutating func quoted(_ string: String) {
        var copy = string
        copy.withUTF8 { utf8 in
            bytes.reserve(utf8.count * 6 + 2)  // an escape is at most 6 bytes per byte
            bytes.append(byte: 0x22)
            JSONEscape.scan(utf8, copy: { run in bytes.append(run.baseAddress!, run.count) },
                            escape: { code in JSONEscape.spell(code) { bytes.append(byte: $0) } })
            bytes.append(byte: 0x22)
        }
    }

    private mutating func null() {
        bytes.reserve(4)
        bytes.append("null")
    }

    private mutating func object(_ body: (inout JSONWriter) -> Void) {
        bytes.reserve(1)
        bytes.append(byte: 0x7b)
        first = true
        body(&self)
        bytes.reserve(1)
        bytes.append(byte: 0x7d)
        first = false
    }

    private mutating func list(_ names: [String]) {
        bytes.reserve(1)
        bytes.append(byte: 0x5b)  // [
        for (index, name) in names.enumerated() {
            if index > 0 {
                bytes.reserve(1)
                bytes.append(byte: 0x2c)
            }
            quoted(name)
        }
        bytes.reserve(1)
        bytes.append(byte: 0x5d)  // ]
    }

    private mutating func decimal(_ value: UInt64) {
        bytes.reserve(20)
        bytes.appendDecimal(value)
    }

    // MARK: Members

    mutating func add(_ key: StaticString, _ value: String?) {
        self.key(key)
        if let value { quoted(value) } else { null() }
    }

    mutating func add(_ key: StaticString, _ value: UInt64) {
        self.key(key)
        decimal(value)
    }

    mutating func add(named key: String, _ value: UInt64) {
        self.key(named: key)
        decimal(value)
    }

    /// A signed number; null for nil.
    mutating func add(_ key: StaticString, _ value: Int64?) {
        self.key(key)
        add(signed: value)
    }

    mutating func add(named key: String, _ value: Int64?) {
        self.key(named: key)
        add(signed: value)
    }

    private mutating func add(signed value: Int64?) {
        guard let value else { return null() }
        bytes.reserve(20)
        bytes.appendDecimal(signed: value)
    }

    mutating func add(_ key: StaticString, _ value: Bool) {
        self.key(key)
        bytes.reserve(5)
        bytes.append(value ? "true" : "false")
    }

    /// "0x..." in lower case, no padding; null for nil.
    mutating func add(_ key: StaticString, hex value: UInt64?) {
        self.key(key)
        hex(value)
    }

    private mutating func hex(_ value: UInt64?) {
        guard let value else { return null() }
        bytes.reserve(20)
        bytes.append(byte: 0x22)
        bytes.appendHex(value)
        bytes.append(byte: 0x22)
    }

    mutating func add(named key: String, hex value: UInt64?) {
        self.key(named: key)
        hex(value)
    }

    mutating func add(_ key: StaticString, _ names: [String]) {
        self.key(key)
        list(names)
    }

    mutating func add(named key: String, _ names: [String]) {
        self.key(named: key)
        list(names)
    }

    mutating func add(_ key: StaticString, object body: (inout JSONWriter) -> Void) {
        self.key(key)
        object(body)
    }

    mutating func add(named key: String, object body: (inout JSONWriter) -> Void) {
        self.key(named: key)
        object(body)
    }
}
