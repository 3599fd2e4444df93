#if canImport(Glibc)
import Glibc
#endif
import CHekiPlugin

/// A byte buffer allocated once; appends never allocate. Main loop thread.
/// Appends do not check the capacity one by one: the EventWriter checks
/// once per event that the largest event it can render fits
/// (`EventWriter.maximumEventBytes`).
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

    /// Short fragments (keys, names) are copied with at most two pairs of
    /// overlapping loads and stores, never reading past `bytes + length`.
    @inline(__always) mutating func append(_ bytes: UnsafePointer<UInt8>, _ length: Int) {
        let source = UnsafeRawPointer(bytes)
        let target = UnsafeMutableRawPointer(base + count)
        if length >= 8 && length <= 16 {
            let head = source.loadUnaligned(as: UInt64.self)
            let tail = source.loadUnaligned(fromByteOffset: length - 8, as: UInt64.self)
            target.storeBytes(of: head, as: UInt64.self)
            target.storeBytes(of: tail, toByteOffset: length - 8, as: UInt64.self)
        } else if length >= 4 && length < 8 {
            let head = source.loadUnaligned(as: UInt32.self)
            let tail = source.loadUnaligned(fromByteOffset: length - 4, as: UInt32.self)
            target.storeBytes(of: head, as: UInt32.self)
            target.storeBytes(of: tail, toByteOffset: length - 4, as: UInt32.self)
        } else if length < 4 {
            var index = 0
            while index < length {
                base[count + index] = bytes[index]
                index += 1
            }
        } else {
            target.copyMemory(from: source, byteCount: length)
        }
        count += length
    }

    @inline(__always) mutating func append(_ text: StaticString) {
        append(text.utf8Start, text.utf8CodeUnitCount)
    }

    @inline(__always) mutating func append(_ text: ByteString) { append(text.bytes, text.count) }

    @inline(__always) mutating func append(byte: UInt8) {
        base[count] = byte
        count += 1
    }

    mutating func appendDecimal(_ value: UInt64) {
        var digits = 1
        var rest = value / 10
        while rest != 0 {
            digits += 1
            rest /= 10
        }
        rest = value
        var index = count + digits
        repeat {
            index -= 1
            base[index] = UInt8(truncatingIfNeeded: rest % 10) &+ 0x30
            rest /= 10
        } while rest != 0
        count += digits
    }

    /// "0x" and lower-case hex digits, no padding: String(value, radix: 16).
    mutating func appendHex(_ value: UInt64) {
        base[count] = 0x30
        base[count + 1] = 0x78
        let digits = value == 0 ? 1 : (67 - value.leadingZeroBitCount) / 4
        var rest = value
        var index = count + 2 + digits
        repeat {
            index -= 1
            let nibble = UInt8(truncatingIfNeeded: rest) & 0xf
            base[index] = nibble &+ (nibble < 10 ? 0x30 : 0x57)
            rest >>= 4
        } while index > count + 2
        count += 2 + digits
    }

    /// NUL-terminates and returns the start, as a C string.
    @inline(__always) mutating func cString() -> UnsafePointer<CChar> {
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

    static let bufferSize = 32 * 1024
    /// The largest data or log line this writer can render: the vm-name
    /// fragments, three lists of at most 64 names (each quoted, with a comma),
    /// three hex values and a fixed part well under 512 bytes.
    let maximumEventBytes: Int

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
        let longestName = ControlRegister.allCases.flatMap { register in
            (0..<64).map { register.bitNames.names(of: 1 << UInt64($0)).first?.utf8.count ?? 0 }
        }.max() ?? 0
        maximumEventBytes = (vmNameField?.count ?? 0) + subject.count + 3 * 64 * (longestName + 3) + 512
    }

    deinit {
        data.deallocate()
        message.deallocate()
    }

    /// The bulk kinds, as a vCPU records them (a deadline's weak pinning,
    /// once per VM and without a vCPU, goes through EventRenderer).
    static func handles(_ record: EventRecord) -> Bool {
        switch record.kind {
        case .configure, .denial: true
        case .weakPinning: record.detail != EventRecord.atDeadline
        default: false
        }
    }

    /// The JSON data of `record` (a kind `handles` accepts), NUL-terminated.
    func renderData(_ record: EventRecord) -> UnsafePointer<CChar> {
        let register = Int(record.register)
        // A local copy: the count stays in a register instead of the object.
        var data = self.data
        data.reset()
        precondition(data.capacity > maximumEventBytes, "event buffer too small")
        defer { self.data = data }
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
            bits(&data, ",\"pinned\":\"", ",\"pinned-bits\":[", record.pinned, register)
            bits(&data, ",\"required\":\"", ",\"required-bits\":[", record.value, register)
            bits(&data, ",\"missing\":\"", ",\"missing-bits\":[", record.extra, register)
        default:
            data.append(",\"exit-reason\":")
            data.appendDecimal(UInt64(record.number))
            bits(&data, ",\"value\":\"", ",\"value-bits\":[", record.value, register)
            bits(&data, ",\"pinned\":\"", ",\"pinned-bits\":[", record.pinned, register)
            if record.kind == .denial { bits(&data, ",\"violated\":\"", ",\"violated-bits\":[", record.extra, register) }
        }
        data.append(",\"verdict\":\"")
        data.append(verdictNames[Int(record.verdict.rawValue) + 1])
        data.append("\"}")
        return data.cString()
    }

    @inline(__always)
    private func bits(_ data: inout ByteWriter, _ key: StaticString, _ listKey: StaticString, _ value: UInt64,
                      _ register: Int) {
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
        var message = self.message
        message.reset()
        precondition(message.capacity > maximumEventBytes, "event buffer too small")
        defer { self.message = message }
        message.append(subject)
        message.appendDecimal(UInt64(record.vcpu))
        switch record.kind {
        case .configure:
            message.append(": guest pinned ")
            message.append(registerNames[register])
            message.append(byte: 0x20)
            names(&message, record.value, register)
            message.append(" (pinned now ")
            names(&message, record.pinned, register)
            message.append("), verdict ")
        case .denial:
            message.append(": KVM denied a ")
            message.append(registerNames[register])
            message.append(" write of ")
            message.appendHex(record.value)
            message.append(" clearing ")
            names(&message, record.extra, register)
            message.append(", verdict ")
        default:
            message.append(": weak pinning of ")
            message.append(registerNames[register])
            message.append(": ")
            names(&message, record.extra, register)
            message.append(" required but not pinned, verdict ")
        }
        message.append(verdictNames[Int(record.verdict.rawValue) + 1])
        return message.cString()
    }

    /// "none", or the names joined by "+".
    private func names(_ message: inout ByteWriter, _ value: UInt64, _ register: Int) {
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

}
