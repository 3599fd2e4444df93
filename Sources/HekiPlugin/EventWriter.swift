#if canImport(Glibc)
import Glibc
#endif
import CBridge

/// A byte buffer allocated once; appends never allocate. Main loop thread.
struct ByteWriter {
    let base: UnsafeMutablePointer<UInt8>
    let capacity: Int
    var count = 0

    init(capacity: Int) {
        self.capacity = capacity
        base = .allocate(capacity: capacity)
    }

    func deallocate() { base.deallocate() }

    @inline(__always) mutating func reset() { count = 0 }

    @inline(__always) mutating func append(_ bytes: UnsafePointer<UInt8>, _ length: Int) {
        precondition(count + length < capacity, "event buffer overflow")
        if length <= 16 {
            // Keys, names and brackets: a byte loop beats a memmove call.
            var index = 0
            while index < length {
                base[count + index] = bytes[index]
                index += 1
            }
        } else {
            (base + count).update(from: bytes, count: length)
        }
        count += length
    }

    @inline(__always) mutating func append(_ text: StaticString) {
        append(text.utf8Start, text.utf8CodeUnitCount)
    }

    @inline(__always) mutating func append(_ text: ByteString) { append(UnsafePointer(text.bytes), text.count) }

    @inline(__always) mutating func append(byte: UInt8) {
        precondition(count + 1 < capacity, "event buffer overflow")
        base[count] = byte
        count += 1
    }

    mutating func appendDecimal(_ value: UInt64) {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: 20 digits fit
        var length = 0
        withUnsafeMutableBytes(of: &digits) { scratch in
            var rest = value
            repeat {
                length += 1
                scratch[24 - length] = UInt8(truncatingIfNeeded: rest % 10) + 0x30
                rest /= 10
            } while rest != 0
            append(scratch.baseAddress!.assumingMemoryBound(to: UInt8.self) + (24 - length), length)
        }
    }

    /// "0x" and lower-case hex digits, no padding: String(value, radix: 16).
    mutating func appendHex(_ value: UInt64) {
        precondition(count + 18 < capacity, "event buffer overflow")
        base[count] = 0x30
        base[count + 1] = 0x78
        count += 2
        let digits = value == 0 ? 1 : (67 - value.leadingZeroBitCount) / 4
        var shift = (digits - 1) * 4
        while shift >= 0 {
            let nibble = UInt8(truncatingIfNeeded: value >> UInt64(shift)) & 0xf
            base[count] = nibble < 10 ? nibble + 0x30 : nibble + 0x57
            count += 1
            shift -= 4
        }
    }

    /// NUL-terminates and returns the start, as a C string.
    @inline(__always) mutating func cString() -> UnsafePointer<CChar> {
        precondition(count < capacity, "event buffer overflow")
        base[count] = 0
        return UnsafeRawPointer(base).assumingMemoryBound(to: CChar.self)
    }
}

/// Bytes made once from a String (names, escaped fragments), NUL-terminated,
/// owned by a ByteArena. A plain pointer and count: using one costs no
/// reference counting.
struct ByteString {
    let bytes: UnsafePointer<UInt8>
    let count: Int

    var cString: UnsafePointer<CChar> { UnsafeRawPointer(bytes).assumingMemoryBound(to: CChar.self) }
}

/// Owns the ByteStrings and tables an EventWriter makes at init.
final class ByteArena {
    private var blocks: [UnsafeMutableRawPointer] = []

    func string(_ string: String) -> ByteString {
        var copy = string
        return copy.withUTF8 { utf8 in
            let block = UnsafeMutablePointer<UInt8>.allocate(capacity: utf8.count + 1)
            if let source = utf8.baseAddress { block.update(from: source, count: utf8.count) }
            block[utf8.count] = 0
            blocks.append(UnsafeMutableRawPointer(block))
            return ByteString(bytes: UnsafePointer(block), count: utf8.count)
        }
    }

    func table<T>(_ elements: [T]) -> UnsafeBufferPointer<T> {
        let block = UnsafeMutableBufferPointer<T>.allocate(capacity: max(elements.count, 1))
        _ = block.initialize(from: elements)
        blocks.append(UnsafeMutableRawPointer(block.baseAddress!))
        return UnsafeBufferPointer(rebasing: block[0..<elements.count])
    }

    deinit { for block in blocks { block.deallocate() } }
}

/// A register's bit names as bytes, in BitNames' order: the named bits in
/// table order, then the unnamed ones as "bit<N>", ascending.
struct BitNameBytes {
    private let tableBits: UnsafeBufferPointer<UInt64>
    private let tableNames: UnsafeBufferPointer<ByteString>
    private let namedMask: UInt64
    /// By bit index: the name ("bit<N>" when unnamed).
    private let byBit: UnsafeBufferPointer<ByteString>
    /// The table lists single bits in ascending order (CR0's and CR4's do):
    /// then the named bits come out by walking the set bits of the value.
    private let ascending: Bool

    init(_ names: BitNames, arena: ByteArena) {
        tableBits = arena.table(names.table.map(\.bit))
        tableNames = arena.table(names.table.map { arena.string($0.name) })
        namedMask = names.table.reduce(0) { $0 | $1.bit }
        byBit = arena.table((0..<64).map { index in
            arena.string(names.table.first { $0.bit == 1 << UInt64(index) }?.name ?? "bit\(index)")
        })
        ascending = names.table.allSatisfy { $0.bit.nonzeroBitCount == 1 }
            && zip(names.table, names.table.dropFirst()).allSatisfy { $0.bit < $1.bit }
    }

    /// Calls `body` with each name of `value`, in BitNames.names(of:) order.
    @inline(__always)
    func forEachName(of value: UInt64, _ body: (ByteString) -> Void) {
        var named = value & namedMask
        if ascending {
            while named != 0 {
                body(byBit[named.trailingZeroBitCount])
                named &= named - 1
            }
        } else {
            var index = 0
            while named != 0 && index < tableBits.count {
                let bit = tableBits[index]
                if named & bit != 0 {
                    body(tableNames[index])
                    named &= ~bit
                }
                index += 1
            }
        }
        var rest = value & ~namedMask
        while rest != 0 {
            body(byBit[rest.trailingZeroBitCount])
            rest &= rest - 1
        }
    }
}

/// Renders the events a guest can cause in bulk (HEKI_CONFIGURE,
/// HEKI_DENIAL, HEKI_WEAK_PINNING) straight into reused byte buffers: the
/// same bytes EventRenderer produces, without a String or an allocation per
/// event. The log line is rendered only when the host has a log callback.
/// Main loop thread only; the result is valid until the next render.
final class EventWriter {
    private var data = ByteWriter(capacity: EventWriter.bufferSize)
    private var message = ByteWriter(capacity: EventWriter.bufferSize)
    private let arena = ByteArena()
    /// `"vm-name":"..."` (escaped), or nil.
    private let vmNameField: ByteString?
    /// "heki: " + "vm NAME " (printable) + "vcpu ".
    private let subject: ByteString
    private let registerNames: UnsafeBufferPointer<ByteString>
    private let bitNames: UnsafeBufferPointer<BitNameBytes>
    private let verdictNames: UnsafeBufferPointer<ByteString>  // by Verdict.rawValue + 1
    let eventNames: UnsafeBufferPointer<ByteString>            // by EventKind.rawValue

    /// Bounds every event: vm-name escaped (1024 bytes, 6 each at most),
    /// and at most 64 names of at most 12 bytes in each of three lists.
    static let bufferSize = 32 * 1024

    init(config: Configuration) {
        let arena = self.arena
        vmNameField = config.vmName.map { name in
            var field = ""
            JSONObject.quote("vm-name", into: &field)
            field += ":"
            JSONObject.quote(name, into: &field)
            return arena.string(field)
        }
        subject = arena.string("heki: " + (config.vmName.map { "vm \(Options.printable($0)) " } ?? "") + "vcpu ")
        registerNames = arena.table(ControlRegister.allCases.map { arena.string($0.name) })
        bitNames = arena.table(ControlRegister.allCases.map { BitNameBytes($0.bitNames, arena: arena) })
        verdictNames = arena.table(Verdict.allCases.sorted { $0.rawValue < $1.rawValue }.map { arena.string($0.name) })
        eventNames = arena.table(EventKind.allCases.map { arena.string($0.eventName) })
    }

    deinit {
        data.deallocate()
        message.deallocate()
    }

    static func handles(_ kind: EventKind) -> Bool {
        kind == .configure || kind == .denial || kind == .weakPinning
    }

    /// The JSON data of `record` (a kind `handles` accepts), NUL-terminated.
    func renderData(_ record: EventRecord) -> UnsafePointer<CChar> {
        let register = Int(record.register)
        data.reset()
        data.append(byte: 0x7b)  // {
        if let vmNameField {
            data.append(vmNameField)
            data.append(",\"vcpu\":")
        } else {
            data.append("\"vcpu\":")
        }
        data.appendDecimal(UInt64(record.vcpu))
        data.append(",\"register\":\"")
        data.append(registerNames[register])
        data.append(byte: 0x22)
        switch record.kind {
        case .weakPinning:
            bits(",\"pinned\":\"", ",\"pinned-bits\":[", record.pinned, register)
            bits(",\"required\":\"", ",\"required-bits\":[", record.value, register)
            bits(",\"missing\":\"", ",\"missing-bits\":[", record.extra, register)
        default:
            data.append(",\"exit-reason\":")
            data.appendDecimal(UInt64(record.number))
            bits(",\"value\":\"", ",\"value-bits\":[", record.value, register)
            bits(",\"pinned\":\"", ",\"pinned-bits\":[", record.pinned, register)
            if record.kind == .denial { bits(",\"violated\":\"", ",\"violated-bits\":[", record.extra, register) }
        }
        data.append(",\"verdict\":\"")
        data.append(verdictNames[Int(record.verdict.rawValue) + 1])
        data.append("\"}")
        return data.cString()
    }

    @inline(__always)
    private func bits(_ key: StaticString, _ listKey: StaticString, _ value: UInt64, _ register: Int) {
        data.append(key)
        data.appendHex(value)
        data.append(byte: 0x22)
        data.append(listKey)
        var first = true
        bitNames[register].forEachName(of: value) { name in
            if !first { data.append(byte: 0x2c) }
            first = false
            data.append(byte: 0x22)
            data.append(name)
            data.append(byte: 0x22)
        }
        data.append(byte: 0x5d)  // ]
    }

    /// The log line of `record`, NUL-terminated (EventRenderer's text).
    func renderMessage(_ record: EventRecord) -> UnsafePointer<CChar> {
        let register = Int(record.register)
        message.reset()
        message.append(subject)
        message.appendDecimal(UInt64(record.vcpu))
        switch record.kind {
        case .configure:
            message.append(": guest pinned ")
            message.append(registerNames[register])
            message.append(byte: 0x20)
            names(record.value, register)
            message.append(" (pinned now ")
            names(record.pinned, register)
            message.append("), verdict ")
        case .denial:
            message.append(": KVM denied a ")
            message.append(registerNames[register])
            message.append(" write of ")
            message.appendHex(record.value)
            message.append(" clearing ")
            names(record.extra, register)
            message.append(", verdict ")
        default:
            message.append(": weak pinning of ")
            message.append(registerNames[register])
            message.append(": ")
            names(record.extra, register)
            message.append(" required but not pinned, verdict ")
        }
        message.append(verdictNames[Int(record.verdict.rawValue) + 1])
        return message.cString()
    }

    /// "none", or the names joined by "+".
    private func names(_ value: UInt64, _ register: Int) {
        if value == 0 {
            message.append("none")
            return
        }
        var first = true
        bitNames[register].forEachName(of: value) { name in
            if !first { message.append(byte: 0x2b) }
            first = false
            message.append(name)
        }
    }

    static func level(_ kind: EventKind) -> HekiLogLevel { kind == .configure ? HEKI_LOG_INFO : HEKI_LOG_WARNING }
}
