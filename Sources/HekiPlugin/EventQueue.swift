import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A bounded multi-producer, single-consumer queue of event records
/// (Vyukov's bounded queue): vCPU threads push without locks or allocation,
/// the main loop pops. A push into a full queue fails at once; the caller
/// counts what it could not push.
///
/// Its memory is an anonymous mapping, untouched until used: the kernel
/// maps a zero page at a cell's first write, so a new plugin costs no
/// 260 KB of writes (heki_plugin_new stays fast; calloc would clear reused
/// heap memory) and a VM that never storms never touches most of its queue.
/// Hence a cell's sequence is kept relative to its index (Vyukov's
/// sequence - cell), whose start is 0.
///
/// A cell is one cache line: its sequence, then its record (56 bytes), so
/// a push writes one line and a pop reads one, where a sequence array and
/// a record array made it two (a record straddled lines too).
final class EventQueue: @unchecked Sendable {
    private let capacity: Int
    private let mask: Int
    private let mappedBytes: Int
    /// The cells: per cell, minus the cell's index, the position it expects
    /// to be written (pos) or read (pos+1); then the record, written before
    /// read (a cell is read only after its push).
    private let cells: UnsafeMutableRawPointer
    private let enqueuePosition = Atomic<Int>(0)
    /// Only the consumer (the main loop thread) touches this.
    private var dequeuePosition = 0

    /// Bytes per cell: the sequence word and the record, rounded up to
    /// whole cache lines (one line for a 56-byte record).
    @inline(__always) private static var cellBytes: Int {
        (MemoryLayout<Atomic<Int>>.stride + MemoryLayout<EventRecord>.stride + 63) & ~63
    }
    @inline(__always) private static var recordOffset: Int { MemoryLayout<Atomic<Int>>.stride }

    /// `capacity` is rounded up to a power of two. Nil when the mapping
    /// fails: heki_plugin_new reports it instead of trapping in the VMM.
    init?(capacity requested: Int) {
        var size = 1
        while size < requested { size <<= 1 }
        capacity = size
        mask = size - 1
        // Atomic<Int> and EventRecord are plain words: zero bytes are a
        // valid Atomic(0), records are raw memory until pushed.
        mappedBytes = size * EventQueue.cellBytes
        let memory = mmap(nil, mappedBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let memory, memory != MAP_FAILED else { return nil }
        cells = memory
        for cell in 0..<size {
            _ = (memory + cell * EventQueue.cellBytes).bindMemory(to: Atomic<Int>.self, capacity: 1)
            _ = (memory + cell * EventQueue.cellBytes + EventQueue.recordOffset).bindMemory(to: EventRecord.self, capacity: 1)
        }
    }

    deinit {
        munmap(cells, mappedBytes)
    }

    @inline(__always) private func cellSequence(_ cell: Int) -> UnsafeMutablePointer<Atomic<Int>> {
        (cells + cell &* EventQueue.cellBytes).assumingMemoryBound(to: Atomic<Int>.self)
    }

    @inline(__always) private func cellRecord(_ cell: Int) -> UnsafeMutablePointer<EventRecord> {
        (cells + (cell &* EventQueue.cellBytes &+ EventQueue.recordOffset)).assumingMemoryBound(to: EventRecord.self)
    }

    /// Any thread. False when the queue is full. `stamping`: sets the
    /// record's `timeMicros` to the stamp counter (StampClock turns it into
    /// the wall clock) once a cell is reserved: a full queue reads no clock.
    @inline(__always)
    func push(_ record: EventRecord, stamping: Bool = false) -> Bool {
        var position = enqueuePosition.load(ordering: .relaxed)
        while true {
            let cell = position & mask
            let sequence = cellSequence(cell).pointee.load(ordering: .acquiring) &+ cell
            let difference = sequence &- position
            if difference == 0 {
                let (exchanged, current) = enqueuePosition.weakCompareExchange(
                    expected: position, desired: position &+ 1,
                    successOrdering: .relaxed, failureOrdering: .relaxed)
                if exchanged {
                    var record = record
                    if stamping { record.timeMicros = Int64(bitPattern: StampClock.counter()) }
                    cellRecord(cell).initialize(to: record)
                    cellSequence(cell).pointee.store(position &+ 1 &- cell, ordering: .releasing)
                    return true
                }
                position = current
            } else if difference < 0 {
                return false
            } else {
                position = enqueuePosition.load(ordering: .relaxed)
            }
        }
    }

    /// The consumer thread only. Nil when empty (or when the next record is
    /// still being written: its producer wakes the consumer when done).
    func pop() -> EventRecord? {
        let cell = dequeuePosition & mask
        let sequence = cellSequence(cell).pointee.load(ordering: .acquiring) &+ cell
        guard sequence == dequeuePosition &+ 1 else { return nil }
        let record = cellRecord(cell).pointee
        cellSequence(cell).pointee.store(dequeuePosition &+ capacity &- cell, ordering: .releasing)
        dequeuePosition &+= 1
        return record
    }
}
