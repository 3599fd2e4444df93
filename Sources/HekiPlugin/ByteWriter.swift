/// The byte buffers the event renderer writes into, and the byte strings
/// and tables it makes once at init.

/// A reused byte buffer; appends never allocate. Main loop thread.
/// Appends do not check the capacity one by one: the renderer reserves,
/// once per event, room for the largest event of its kind (`reserve`),
/// which grows the buffer only when an event's text (a kernel check, a
/// policy) could outgrow it.
struct ByteWriter {
    private(set) var base: UnsafeMutablePointer<UInt8>
    private(set) var capacity: Int
    var count = 0

    init(capacity: Int) {
        self.capacity = capacity
        base = .allocate(capacity: capacity)
    }

    func deallocate() { base.deallocate() }

    @inline(__always) mutating func reset() { count = 0 }

    /// Room for `bytes` more (and the NUL of `cString`), plus the 32 bytes
    /// a ByteString's whole-block copy may write past its end.
    @inline(__always) mutating func reserve(_ bytes: Int) {
        // Wrapping adds: a count and a room are far below Int.max (no overflow check per append).
        if count &+ bytes &+ ByteWriter.slack > capacity { grow(to: count &+ bytes &+ ByteWriter.slack) }
    }

    /// The NUL and a block copy's overshoot (`appendBlocks`).
    static let slack = 33

    @inline(never) private mutating func grow(to needed: Int) {
        var size = capacity * 2
        while size < needed { size *= 2 }
        let bigger = UnsafeMutablePointer<UInt8>.allocate(capacity: size)
        bigger.update(from: base, count: count)
        base.deallocate()
        base = bigger
        capacity = size
    }

    /// Short fragments (keys, names) are copied with at most two pairs of
    /// overlapping loads and stores, never reading past `bytes + length`.
    @inline(__always) mutating func append(_ bytes: UnsafePointer<UInt8>, _ length: Int) {
        let source = UnsafeRawPointer(bytes)
        let target = UnsafeMutableRawPointer(base + count)
        if length > 16 && length <= 32 {
            let head = source.loadUnaligned(as: SIMD16<UInt8>.self)
            let tail = source.loadUnaligned(fromByteOffset: length - 16, as: SIMD16<UInt8>.self)
            target.storeBytes(of: head, as: SIMD16<UInt8>.self)
            target.storeBytes(of: tail, toByteOffset: length - 16, as: SIMD16<UInt8>.self)
        } else if length >= 8 && length <= 16 {
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

    /// A ByteString is copied as whole 16-byte blocks (ByteArena pads every
    /// string for them), then the count moves by its length.
    @inline(__always) mutating func append(_ text: ByteString) {
        appendBlocks(text.bytes, text.count)
    }

    /// `length` bytes from `source`, copied 16 at a time, the first two
    /// blocks whatever the length (most fragments fit: no loop, no branch
    /// on their length): `source` must be readable up to `length` rounded
    /// up to 16, and at least 32 bytes (padded tables), and up to 32 bytes
    /// past the count are overwritten (the room `reserve` keeps).
    @inline(__always) mutating func appendBlocks(_ source: UnsafePointer<UInt8>, _ length: Int) {
        let from = UnsafeRawPointer(source), target = UnsafeMutableRawPointer(base + count)
        target.storeBytes(of: from.loadUnaligned(as: SIMD16<UInt8>.self), as: SIMD16<UInt8>.self)
        target.storeBytes(of: from.loadUnaligned(fromByteOffset: 16, as: SIMD16<UInt8>.self),
                          toByteOffset: 16, as: SIMD16<UInt8>.self)
        var offset = 32
        while offset < length {
            target.storeBytes(of: from.loadUnaligned(fromByteOffset: offset, as: SIMD16<UInt8>.self),
                              toByteOffset: offset, as: SIMD16<UInt8>.self)
            offset &+= 16
        }
        count &+= length
    }

    /// `length` bytes from `source`, 16 at a time, as few blocks as they
    /// need: for the nibble slots of a bit list (64-byte slots, any length
    /// up to 64). Up to 15 bytes past the count are overwritten.
    @inline(__always) mutating func appendSlot(_ source: UnsafePointer<UInt8>, _ length: Int) {
        let from = UnsafeRawPointer(source), target = UnsafeMutableRawPointer(base + count)
        var offset = 0
        repeat {
            target.storeBytes(of: from.loadUnaligned(fromByteOffset: offset, as: SIMD16<UInt8>.self),
                              toByteOffset: offset, as: SIMD16<UInt8>.self)
            offset &+= 16
        } while offset < length
        count &+= length
    }

    /// `text` without its first byte (a list's first element without its comma).
    @inline(__always) mutating func append(droppingFirst text: ByteString) {
        append(text.bytes + 1, text.count - 1)
    }

    @inline(__always) mutating func append(byte: UInt8) {
        base[count] = byte
        count &+= 1
    }

    @inline(__always) mutating func appendDecimal(_ value: UInt64) {
        // vCPU indexes and exit numbers: one or two digits, no division loop.
        if value < 10 {
            append(byte: UInt8(truncatingIfNeeded: value) &+ 0x30)
        } else if value < 100 {
            UnsafeMutableRawPointer(base + count).storeBytes(of: ByteWriter.digitPair(value), as: UInt16.self)
            count &+= 2
        } else {
            appendLongDecimal(value)
        }
    }

    @inline(never) private mutating func appendLongDecimal(_ value: UInt64) {
        var digits = 1
        var rest = value / 10
        while rest != 0 {
            digits += 1
            rest /= 10
        }
        appendDecimal(value, width: digits)
    }

    /// The last `width` decimal digits of `value` (at most 20), zero-padded.
    /// Eight digits at a time (`eightDigits`), the leading group first:
    /// each group is one 8-byte store, the leading one's extra bytes
    /// overwritten by the next group or left past the count (the room
    /// `reserve` keeps). Inlined: a constant width of up to 8 is one group.
    @inline(__always) mutating func appendDecimal(_ value: UInt64, width: Int) {
        let target = UnsafeMutableRawPointer(base + count)
        let low = value % 100_000_000, upper = value / 100_000_000
        if width <= 8 {
            target.storeBytes(of: ByteWriter.eightDigits(low) &>> UInt64((8 &- width) &<< 3), as: UInt64.self)
        } else if width <= 16 {
            target.storeBytes(of: ByteWriter.eightDigits(upper % 100_000_000) &>> UInt64((16 &- width) &<< 3), as: UInt64.self)
            target.storeBytes(of: ByteWriter.eightDigits(low), toByteOffset: width &- 8, as: UInt64.self)
        } else {
            let head = upper / 100_000_000 % 10_000
            target.storeBytes(of: ByteWriter.eightDigits(head) &>> UInt64((24 &- width) &<< 3), as: UInt64.self)
            target.storeBytes(of: ByteWriter.eightDigits(upper % 100_000_000), toByteOffset: width &- 16, as: UInt64.self)
            target.storeBytes(of: ByteWriter.eightDigits(low), toByteOffset: width &- 8, as: UInt64.self)
        }
        count &+= width
    }

    /// The 8 decimal digits of `value` (below 10^8), zero-padded, most
    /// significant first in memory: the value split into two 4-digit
    /// lanes, each into two 2-digit lanes, each into two digits, by
    /// multiplying by reciprocals (exact in these ranges), all lanes at once.
    @inline(__always) private static func eightDigits(_ value: UInt64) -> UInt64 {
        // Little-endian: the lane in the low bits is the first in memory.
        let fours = value / 10_000 | (value % 10_000) &<< 32
        let hundreds = (fours &* 10_486) &>> 20 & 0x0000_007f_0000_007f  // / 100 below 43,699
        let twos = hundreds | (fours &- hundreds &* 100) &<< 16
        let tens = (twos &* 103) &>> 10 & 0x000f_000f_000f_000f  // / 10 below 179
        return (tens | (twos &- tens &* 10) &<< 8) | 0x3030_3030_3030_3030
    }

    /// The two digits of `value` (below 100) as the bytes of a UInt16, by
    /// arithmetic: a table would be a lazy global, checked at every use.
    @inline(__always) private static func digitPair(_ value: UInt64) -> UInt16 {
        let tens = (value &* 205) &>> 11  // value / 10 for value < 1024
        let ones = value &- tens &* 10
        return UInt16(truncatingIfNeeded: tens | ones &<< 8) | 0x3030
    }

    /// A signed decimal: String(value).
    mutating func appendDecimal(signed value: Int64) {
        if value < 0 { append(byte: 0x2d) }
        appendDecimal(value.magnitude)
    }

    /// A String's UTF-8 as is (text already safe where it goes: a log line
    /// of printable text, JSON from JSONWriter). Reserves room itself.
    mutating func append(text: String) {
        var copy = text
        copy.withUTF8 { utf8 in
            reserve(utf8.count)
            if let source = utf8.baseAddress { append(source, utf8.count) }
        }
    }

    /// "0x" and lower-case hex digits, no padding: String(value, radix: 16).
    @inline(__always)
    mutating func appendHex(_ value: UInt64) {
        base[count] = 0x30
        base[count + 1] = 0x78
        count &+= 2
        appendHexDigits(value)
    }

    /// The hex digits alone. Each half of the value is made 8 digits at
    /// once (each nibble spread to a byte, then to its ASCII digit) and
    /// stored as one word, its leading zeros shifted out: 8 bytes are
    /// written whatever the digit count (the room `reserve` keeps).
    @inline(__always)
    mutating func appendHexDigits(_ value: UInt64) {
        let target = UnsafeMutableRawPointer(base + count)
        let high = UInt32(truncatingIfNeeded: value &>> 32), low = UInt32(truncatingIfNeeded: value)
        if high == 0 {
            let digits = low == 0 ? 1 : (35 &- low.leadingZeroBitCount) &>> 2
            // In memory the first bytes are the leading zeros: on a
            // little-endian word they are the low bytes.
            target.storeBytes(of: ByteWriter.hexDigits(low) &>> UInt64((8 &- digits) &<< 3), as: UInt64.self)
            count &+= digits
        } else {
            let digits = (35 &- high.leadingZeroBitCount) &>> 2
            target.storeBytes(of: ByteWriter.hexDigits(high) &>> UInt64((8 &- digits) &<< 3), as: UInt64.self)
            target.storeBytes(of: ByteWriter.hexDigits(low), toByteOffset: digits, as: UInt64.self)
            count &+= digits &+ 8
        }
    }

    /// The 8 hex digits of `value`, most significant first in memory.
    @inline(__always)
    private static func hexDigits(_ value: UInt32) -> UInt64 {
        var spread = UInt64(value)
        spread = (spread | spread << 16) & 0x0000_ffff_0000_ffff
        spread = (spread | spread << 8) & 0x00ff_00ff_00ff_00ff
        spread = (spread | spread << 4) & 0x0f0f_0f0f_0f0f_0f0f
        // Nibble k is byte k: the lowest byte, first in memory, must be the
        // most significant digit.
        let letters = ((spread &+ 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101
        let ascii = spread &+ 0x3030_3030_3030_3030 &+ letters &* 0x27
        return ascii.byteSwapped.littleEndian
    }

    /// NUL-terminates and returns the start, as a C string.
    @inline(__always) mutating func cString() -> UnsafePointer<CChar> {
        base[count] = 0
        return UnsafeRawPointer(base).assumingMemoryBound(to: CChar.self)
    }

    /// NUL-terminates and returns the bytes from `start` on (what one
    /// render appended), valid until the next change. Like every ByteString
    /// they are readable past their count as `appendBlocks` needs: the room
    /// `reserve` kept.
    @inline(__always) mutating func terminated(from start: Int = 0) -> ByteString {
        base[count] = 0
        return ByteString(bytes: base + start, count: count &- start)
    }
}

/// NUL-terminated bytes: made once from a String (names, escaped
/// fragments) and owned by a ByteArena, or a rendered event in a
/// ByteWriter (`terminated`). A plain pointer and count: using one costs
/// no reference counting, and its length is known without strlen. Its
/// bytes are readable up to its count rounded up to 16, and at least 32
/// (the arena's padding, the writer's reserve): it is copied as whole
/// 16-byte blocks (`ByteWriter.appendBlocks`).
struct ByteString {
    let bytes: UnsafePointer<UInt8>
    let count: Int

    var cString: UnsafePointer<CChar> { UnsafeRawPointer(bytes).assumingMemoryBound(to: CChar.self) }
}

/// Owns the ByteStrings and tables the EventRenderer makes at init.
final class ByteArena {
    private var blocks: [UnsafeMutableRawPointer] = []

    /// NUL-terminated and zero-padded to whole 16-byte blocks, at least
    /// two (ByteWriter copies them as whole blocks, two at least).
    func string(_ string: String) -> ByteString {
        var copy = string
        return copy.withUTF8 { utf8 in
            let size = max(32, (utf8.count + 16) & ~15)
            let block = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
                .initializeMemory(as: UInt8.self, repeating: 0, count: size)
            if let source = utf8.baseAddress { block.update(from: source, count: utf8.count) }
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
    /// The same two tables as JSON list elements: `,"name"`.
    private let quotedTableNames: UnsafeBufferPointer<ByteString>
    private let quotedByBit: UnsafeBufferPointer<ByteString>
    /// The table lists single bits in ascending order (CR0's and CR4's do):
    /// then the named bits come out by walking the set bits of the value.
    private let ascending: Bool
    /// When `ascending`: by nibble (16 positions of 16 values), the list
    /// elements of its set bits, `,"a","b"`, ascending, in zero-padded
    /// slots of `1 << slotShift` bytes, and their lengths. A list is then a
    /// copy per nonzero nibble instead of one per name. Nil when a slot
    /// would not fit (names longer than any control register's).
    private let nibbleElements: UnsafePointer<UInt8>?
    private let nibbleLengths: UnsafePointer<UInt8>
    /// A constant: the slot's address is a shift by an immediate.
    private static let slotShift = 6

    init(_ names: BitNames, arena: ByteArena) {
        tableBits = arena.table(names.table.map(\.bit))
        tableNames = arena.table(names.table.map { arena.string($0.name) })
        quotedTableNames = arena.table(names.table.map { arena.string(",\"\($0.name)\"") })
        namedMask = names.table.reduce(0) { $0 | $1.bit }
        let byIndex: [String] = (0..<64).map { index in
            names.table.first { $0.bit == 1 << UInt64(index) }?.name ?? "bit\(index)"
        }
        byBit = arena.table(byIndex.map { arena.string($0) })
        quotedByBit = arena.table(byIndex.map { arena.string(",\"\($0)\"") })
        ascending = names.table.allSatisfy { $0.bit.nonzeroBitCount == 1 }
            && zip(names.table, names.table.dropFirst()).allSatisfy { $0.bit < $1.bit }
        // Made once per process: each bit's element (quotedByBit's bytes)
        // copied into the slots of the nibbles that have it.
        let quoted = quotedByBit.map { UnsafeBufferPointer(start: $0.bytes, count: $0.count) }
        var lengths = [UInt8](repeating: 0, count: 256)
        var longest = 0
        for slot in 0..<256 {
            var length = 0
            for bit in 0..<4 where slot & 1 << bit != 0 { length += quoted[(slot >> 4) * 4 + bit].count }
            lengths[slot] = UInt8(length)
            longest = max(longest, length)
        }
        let shift = BitNameBytes.slotShift
        var bytes = [UInt8](repeating: 0, count: longest <= 1 << shift ? 256 << shift : 0)
        for slot in 0..<256 where !bytes.isEmpty {
            var at = slot << shift
            for bit in 0..<4 where slot & 1 << bit != 0 {
                for byte in quoted[(slot >> 4) * 4 + bit] {
                    bytes[at] = byte
                    at += 1
                }
            }
        }
        nibbleElements = bytes.isEmpty ? nil : arena.table(bytes).baseAddress
        nibbleLengths = arena.table(lengths).baseAddress!
    }

    /// Calls `body` with each name of `value`, in BitNames.names(of:) order.
    /// `quoted`: each as a JSON list element, `,"name"`.
    @inline(__always)
    func forEachName(of value: UInt64, quoted: Bool = false, _ body: (ByteString) -> Void) {
        let byBit = quoted ? quotedByBit : self.byBit, tableNames = quoted ? quotedTableNames : self.tableNames
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

    /// The names of `value` as a JSON list, `["a","b"]`, in forEachName's
    /// order. The first element's comma becomes the bracket.
    @inline(__always)
    func appendList(_ value: UInt64, to data: inout ByteWriter) {
        let start = data.count
        if ascending, let elements = nibbleElements {
            appendNibbles(value & namedMask, elements, to: &data)
            appendNibbles(value & ~namedMask, elements, to: &data)
        } else {
            forEachName(of: value, quoted: true) { data.append($0) }
        }
        if data.count == start { data.append(byte: 0x5b) } else { data.base[start] = 0x5b }  // [
        data.append(byte: 0x5d)  // ]
    }

    /// The list elements of `bits`, nibble by nibble, ascending.
    @inline(__always)
    private func appendNibbles(_ bits: UInt64, _ elements: UnsafePointer<UInt8>, to data: inout ByteWriter) {
        var rest = bits
        while rest != 0 {
            let shift = UInt64(truncatingIfNeeded: rest.trailingZeroBitCount & ~3)
            let nibble = rest &>> shift & 15
            let slot = Int(truncatingIfNeeded: shift &<< 2 | nibble)
            data.appendSlot(elements + slot &<< BitNameBytes.slotShift, Int(nibbleLengths[slot]))
            rest ^= nibble &<< shift
        }
    }
}
