import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The records waiting for the main loop: one bounded multi-producer,
/// single-consumer queue (Vyukov's bounded queue) per shard of vCPUs. vCPU
/// threads push without locks or allocation, the main loop pops. A push
/// into a full shard fails at once; the caller counts what it could not
/// push.
///
/// Sharded as the counters are (vCPU `n` pushes to shard `n % shards`):
/// with one queue, every queued exit of every vCPU wrote its tail's cache
/// line. A vCPU's records stay in order; the main loop takes the shards in
/// turn, one record each, so a storming vCPU delays no other's events by
/// more than one record per shard. Across vCPUs, each record's stamp says
/// when it was made.
///
/// Its memory is an anonymous mapping, untouched until used: the kernel
/// maps a zero page at a cell's first write, so a new plugin costs no
/// megabytes of writes (heki_plugin_new stays fast; calloc would clear
/// reused heap memory) and a VM that never storms touches a few pages.
/// Hence a cell's sequence is kept relative to its index (Vyukov's
/// sequence - cell), whose start is 0.
///
/// A cell is one cache line: its sequence, then its record (56 bytes), so
/// a push writes one line and a pop reads one. A shard starts with a line
/// of its own: its tail and its wake flag, both written by its producers.
final class EventQueue: @unchecked Sendable {
    static let shards = ShardedCounts.shards
    /// Records per shard (a power of two).
    let capacity: Int
    private let mask: Int
    /// Bytes per shard: its header line, then its cells.
    private let shardBytes: Int
    private let mappedBytes: Int
    /// Per shard: the header (the tail, then the wake flag: set by the
    /// shard's first push after the consumer took the flags), then the
    /// cells: per cell, minus the cell's index, the position it expects to
    /// be written (pos) or read (pos+1); then the record, written before
    /// read.
    private let mapping: UnsafeMutableRawPointer

    // The consumer's (the main loop thread's) alone.
    /// Per shard, the next position to read.
    private let heads: UnsafeMutablePointer<Int>
    /// Shards that may hold records (bit n: shard n); `expect` adds to it,
    /// a pop that finds a shard empty takes it out.
    private var pending: UInt32 = 0
    /// The shard the last record came from.
    private var turn = EventQueue.shards - 1
    /// The shards whose flags pushes set since the consumer last took them.
    private let wokenShards = Atomic<UInt32>(0)

    @inline(__always) private static var lineBytes: Int { 64 }
    /// Bytes per cell: the sequence word and the record, rounded up to
    /// whole cache lines (one line for a 56-byte record).
    @inline(__always) private static var cellBytes: Int {
        (MemoryLayout<Atomic<Int>>.stride + MemoryLayout<EventRecord>.stride + 63) & ~63
    }
    @inline(__always) private static var recordOffset: Int { MemoryLayout<Atomic<Int>>.stride }
    /// Every shard's bit.
    static var allShards: UInt32 { UInt32.max >> (32 - shards) }

    /// `capacity` (per shard) is rounded up to a power of two. Nil when the
    /// mapping fails: heki_plugin_new reports it instead of trapping in the
    /// VMM.
    init?(capacity requested: Int) {
        var size = 1
        while size < requested { size <<= 1 }
        capacity = size
        mask = size - 1
        let (cellBytes, over1) = size.multipliedReportingOverflow(by: EventQueue.cellBytes)
        let (allBytes, over2) = (cellBytes &+ EventQueue.lineBytes).multipliedReportingOverflow(by: EventQueue.shards)
        guard !over1, !over2, cellBytes < Int.max - EventQueue.lineBytes else { return nil }
        shardBytes = cellBytes + EventQueue.lineBytes
        // Atomics and EventRecord are plain words: zero bytes are a valid
        // Atomic(0) and Atomic(false), records are raw memory until pushed.
        mappedBytes = allBytes
        let memory = mmap(nil, mappedBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let memory, memory != MAP_FAILED else { return nil }
        mapping = memory
        for shard in 0..<EventQueue.shards {
            let base = memory + shard * shardBytes
            _ = base.bindMemory(to: Atomic<Int>.self, capacity: 1)
            _ = (base + EventQueue.wakeOffset).bindMemory(to: Atomic<Bool>.self, capacity: 1)
            for cell in 0..<size {
                let cellBase = base + EventQueue.lineBytes + cell * EventQueue.cellBytes
                _ = cellBase.bindMemory(to: Atomic<Int>.self, capacity: 1)
                _ = (cellBase + EventQueue.recordOffset).bindMemory(to: EventRecord.self, capacity: 1)
            }
        }
        heads = .allocate(capacity: EventQueue.shards)
        heads.initialize(repeating: 0, count: EventQueue.shards)
    }

    deinit {
        munmap(mapping, mappedBytes)
        heads.deallocate()
    }

    @inline(__always) private static var wakeOffset: Int { MemoryLayout<Atomic<Int>>.stride }

    /// A shard's header line; its cells follow it.
    @inline(__always) private func shard(_ index: Int) -> UnsafeMutableRawPointer {
        mapping + index &* shardBytes
    }

    @inline(__always) private func tail(_ shard: UnsafeMutableRawPointer) -> UnsafeMutablePointer<Atomic<Int>> {
        shard.assumingMemoryBound(to: Atomic<Int>.self)
    }

    @inline(__always) private func woken(_ shard: UnsafeMutableRawPointer) -> UnsafeMutablePointer<Atomic<Bool>> {
        (shard + EventQueue.wakeOffset).assumingMemoryBound(to: Atomic<Bool>.self)
    }

    @inline(__always) private func cellSequence(_ shard: UnsafeMutableRawPointer, _ cell: Int)
        -> UnsafeMutablePointer<Atomic<Int>> {
        (shard + (cell &* EventQueue.cellBytes &+ EventQueue.lineBytes)).assumingMemoryBound(to: Atomic<Int>.self)
    }

    @inline(__always) private func cellRecord(_ shard: UnsafeMutableRawPointer, _ cell: Int)
        -> UnsafeMutablePointer<EventRecord> {
        (shard + (cell &* EventQueue.cellBytes &+ (EventQueue.lineBytes + EventQueue.recordOffset)))
            .assumingMemoryBound(to: EventRecord.self)
    }

    enum Push {
        /// The shard is full: nothing was written.
        case refused
        case queued
        /// Queued, and the shard's wake flag was clear: signal the consumer.
        case queuedFirst
    }

    /// Any thread. `stamping`: sets the record's `timeMicros` to the stamp
    /// counter (StampClock turns it into the wall clock) once a cell is
    /// reserved: a full shard reads no clock.
    @inline(__always)
    func push(_ record: EventRecord, vcpu: UInt32, stamping: Bool = false) -> Push {
        let index = Int(vcpu & UInt32(EventQueue.shards - 1))
        let shard = shard(index)
        let tail = tail(shard)
        var position = tail.pointee.load(ordering: .relaxed)
        while true {
            let cell = position & mask
            let sequence = cellSequence(shard, cell).pointee.load(ordering: .acquiring) &+ cell
            let difference = sequence &- position
            if difference == 0 {
                let (exchanged, current) = tail.pointee.weakCompareExchange(
                    expected: position, desired: position &+ 1,
                    successOrdering: .relaxed, failureOrdering: .relaxed)
                if exchanged {
                    var record = record
                    if stamping { record.timeMicros = Int64(bitPattern: StampClock.counter()) }
                    cellRecord(shard, cell).initialize(to: record)
                    cellSequence(shard, cell).pointee.store(position &+ 1 &- cell, ordering: .releasing)
                    // After the record is published: the consumer clears the
                    // flag before it looks, so it sees this record or this
                    // push sees the flag clear.
                    if woken(shard).pointee.exchange(true, ordering: .acquiringAndReleasing) { return .queued }
                    return woke(index)
                }
                position = current
            } else if difference < 0 {
                return .refused
            } else {
                position = tail.pointee.load(ordering: .relaxed)
            }
        }
    }

    /// A push set shard `index`'s wake flag: names the shard to the
    /// consumer, which then looks at no other shard's (untouched) pages.
    /// Out of line: once per shard and drain.
    @inline(never)
    private func woke(_ index: Int) -> Push {
        wokenShards.bitwiseOr(1 << UInt32(index), ordering: .acquiringAndReleasing)
        return .queuedFirst
    }

    /// The consumer thread only, after it read the wake-up (the eventfd):
    /// clears the named shards' wake flags and returns those shards (bit n:
    /// shard n), the ones to look at. A shard whose push set its flag but
    /// has not named it yet is named, and signalled, right after: the next
    /// dispatch takes it.
    func takeWoken() -> UInt32 {
        let named = wokenShards.exchange(0, ordering: .acquiringAndReleasing)
        var remaining = named
        while remaining != 0 {
            let index = Int(remaining.trailingZeroBitCount)
            remaining &= remaining &- 1
            // An exchange, not a store: it reads the last push's set, so
            // the records before it are seen by the pops after this.
            _ = woken(shard(index)).pointee.exchange(false, ordering: .acquiringAndReleasing)
        }
        return named
    }

    /// The consumer thread only: the shards in `shards` (bit n: shard n)
    /// may have records; `pop` looks at them until it finds them empty.
    func expect(_ shards: UInt32) {
        pending |= shards & EventQueue.allShards
    }

    /// The consumer thread only: the next record of the next expected shard
    /// in turn. Nil when every expected shard is empty (or its next record
    /// is still being written: its producer wakes the consumer when done).
    func pop() -> EventRecord? {
        while pending != 0 {
            // The first expected shard after the last one taken, else the first.
            let after = pending & ~(UInt32(2) &<< UInt32(turn) &- 1)
            let shard = Int((after != 0 ? after : pending).trailingZeroBitCount)
            if let record = pop(shard) {
                turn = shard
                return record
            }
            pending &= ~(UInt32(1) &<< UInt32(shard))
        }
        return nil
    }

    private func pop(_ index: Int) -> EventRecord? {
        let shard = shard(index), head = heads[index]
        let cell = head & mask
        let sequence = cellSequence(shard, cell).pointee.load(ordering: .acquiring) &+ cell
        guard sequence == head &+ 1 else { return nil }
        let record = cellRecord(shard, cell).pointee
        cellSequence(shard, cell).pointee.store(head &+ capacity &- cell, ordering: .releasing)
        heads[index] = head &+ 1
        return record
    }
}
