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
/// line. A vCPU's records stay in order; across shards the main loop takes
/// the oldest head by its stamp (the TSC, taken once a cell is reserved),
/// so events keep the order they happened in, and a storming vCPU delays
/// no other's.
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
/// of its own, written by its producers: its tail, its wake flag and the
/// exact count of its pushes per counted slot (`countedSlots`), so a push
/// adds to a line it already holds instead of a counter line of its own.
struct EventQueue<let capacity: Int>: ~Copyable, @unchecked Sendable {
    static var shards: Int { ShardedCounts.shards }
    /// Records per shard (the generic parameter, for code outside).
    static var records: Int { capacity }
    /// A position's cell: `capacity` is a power of two and a constant, so
    /// the exit path finds a cell without loading a mask or a shard's size.
    private static var mask: Int { capacity - 1 }
    /// Bytes per shard: its header line, then its cells.
    private static var shardBytes: Int { capacity &* cellBytes &+ lineBytes }
    private static var mappedBytes: Int { shardBytes &* shards }
    /// Per shard: the header (the tail; the wake flag, set by the shard's
    /// first push after the consumer took the flags; the counts), then the
    /// cells: per cell, minus the cell's index, the position it expects to
    /// be written (pos) or read (pos+1); then the record, written before
    /// read.
    private let mapping: UnsafeMutableRawPointer
    /// The shards whose flags pushes set since the consumer last took them.
    private let wokenShards = Atomic<UInt32>(0)

    /// The consumer's (the main loop thread's) alone, in one allocation:
    /// per shard, the next position to read and the stamp of the record
    /// there; the shards in stamp order of their heads (`order`, `ordered`
    /// of them, each head read); the set of those, and the shards that may
    /// hold records but whose heads are not read yet (`expect`).
    private let consumer: UnsafeMutablePointer<Int>
    @inline(__always) private var heads: UnsafeMutablePointer<Int> { consumer }
    @inline(__always) private var stamps: UnsafeMutablePointer<Int> { consumer + EventQueue.shards }
    @inline(__always) private var order: UnsafeMutablePointer<Int> { consumer + 2 * EventQueue.shards }
    @inline(__always) private var ordered: Int {
        get { consumer[3 * EventQueue.shards] }
        nonmutating set { consumer[3 * EventQueue.shards] = newValue }
    }
    /// Bit n: shard n is in `order`.
    @inline(__always) private var inOrder: Int {
        get { consumer[3 * EventQueue.shards + 1] }
        nonmutating set { consumer[3 * EventQueue.shards + 1] = newValue }
    }
    /// Bit n: shard n may hold records, its head not read yet.
    @inline(__always) private var unread: Int {
        get { consumer[3 * EventQueue.shards + 2] }
        nonmutating set { consumer[3 * EventQueue.shards + 2] = newValue }
    }
    private static var consumerWords: Int { 3 * shards + 3 }

    @inline(__always) private static var lineBytes: Int { 64 }
    /// Bytes per cell: the sequence word and the record, rounded up to
    /// whole cache lines (one line for a 56-byte record).
    @inline(__always) private static var cellBytes: Int {
        (MemoryLayout<Atomic<Int>>.stride + MemoryLayout<EventRecord>.stride + 63) & ~63
    }
    @inline(__always) private static var recordOffset: Int { MemoryLayout<Atomic<Int>>.stride }
    /// Every shard's bit.
    static var allShards: UInt32 { UInt32.max >> (32 - shards) }

    /// Nil when `capacity` is not a power of two or the mapping fails:
    /// heki_plugin_new reports it instead of trapping in the VMM.
    init?() {
        let (cellBytes, over1) = capacity.multipliedReportingOverflow(by: EventQueue.cellBytes)
        let (_, over2) = (cellBytes &+ EventQueue.lineBytes).multipliedReportingOverflow(by: EventQueue.shards)
        guard capacity > 0, capacity & (capacity - 1) == 0, !over1, !over2, cellBytes < Int.max - EventQueue.lineBytes
        else { return nil }
        // Atomics and EventRecord are plain words: zero bytes are a valid
        // Atomic(0) and Atomic(false), records are raw memory until pushed.
        let memory = mmap(nil, EventQueue.mappedBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let memory, memory != MAP_FAILED else { return nil }
        mapping = memory
        for shard in 0..<EventQueue.shards {
            let base = memory + shard * EventQueue.shardBytes
            _ = base.bindMemory(to: Atomic<Int>.self, capacity: 1)
            _ = (base + EventQueue.wakeOffset).bindMemory(to: Atomic<Bool>.self, capacity: 1)
            _ = (base + EventQueue.countsOffset).bindMemory(to: Atomic<UInt64>.self, capacity: EventQueue.countedSlots)
            for cell in 0..<capacity {
                let cellBase = base + EventQueue.lineBytes + cell * EventQueue.cellBytes
                _ = cellBase.bindMemory(to: Atomic<Int>.self, capacity: 1)
                _ = (cellBase + EventQueue.recordOffset).bindMemory(to: EventRecord.self, capacity: 1)
            }
        }
        consumer = .allocate(capacity: EventQueue.consumerWords)
        consumer.initialize(repeating: 0, count: EventQueue.consumerWords)
    }

    deinit {
        munmap(mapping, EventQueue.mappedBytes)
        consumer.deallocate()
    }

    @inline(__always) private static var wakeOffset: Int { MemoryLayout<Atomic<Int>>.stride }
    @inline(__always) private static var countsOffset: Int { 2 * MemoryLayout<Atomic<Int>>.stride }
    /// The slots a push can count in its shard's header line (the rest of
    /// the line after the tail and the wake flag): RateLimiter.slot's
    /// configure, denial and weak pinning per register.
    static var countedSlots: Int { (lineBytes - countsOffset) / MemoryLayout<Atomic<UInt64>>.stride }

    /// A shard's header line; its cells follow it.
    @inline(__always) private func shard(_ index: Int) -> UnsafeMutableRawPointer {
        mapping + index &* EventQueue.shardBytes
    }

    @inline(__always) private func tail(_ shard: UnsafeMutableRawPointer) -> UnsafeMutablePointer<Atomic<Int>> {
        shard.assumingMemoryBound(to: Atomic<Int>.self)
    }

    @inline(__always) private func woken(_ shard: UnsafeMutableRawPointer) -> UnsafeMutablePointer<Atomic<Bool>> {
        (shard + EventQueue.wakeOffset).assumingMemoryBound(to: Atomic<Bool>.self)
    }

    @inline(__always) private func counts(_ shard: UnsafeMutableRawPointer) -> UnsafeMutablePointer<Atomic<UInt64>> {
        (shard + EventQueue.countsOffset).assumingMemoryBound(to: Atomic<UInt64>.self)
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
        /// Queued; the shard's wake flag was already set (the consumer is
        /// signalled, or has not taken the flags yet).
        case queued
        /// Queued, and the shard's wake flag was clear: signal the consumer.
        case queuedFirst
    }

    /// Any thread. `counting`: the slot the push adds one to when it
    /// queues (none at or above `countedSlots`). `stamping`: sets the
    /// record's `timeMicros` to the stamp counter (StampClock turns it into
    /// the wall clock) once a cell is reserved: a full shard reads no clock.
    @inline(__always)
    func push(_ record: EventRecord, vcpu: UInt32, counting slot: Int = .max, stamping: Bool = false) -> Push {
        let index = Int(vcpu & UInt32(EventQueue.shards - 1))
        let shard = shard(index)
        let tail = tail(shard)
        var position = tail.pointee.load(ordering: .relaxed)
        while true {
            let cell = position & EventQueue.mask
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
                    if slot < EventQueue.countedSlots { counts(shard)[slot].wrappingAdd(1, ordering: .relaxed) }
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

    /// Any thread: the pushes `counting` `slot` queued, over every shard.
    /// It reads every shard's header: a page of each (a query, a save).
    func queued(_ slot: Int) -> UInt64 {
        guard slot >= 0, slot < EventQueue.countedSlots else { return 0 }
        var sum: UInt64 = 0
        for index in 0..<EventQueue.shards { sum &+= counts(shard(index))[slot].load(ordering: .relaxed) }
        return sum
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
        unread |= Int(shards & EventQueue.allShards) & ~inOrder
    }

    /// The consumer thread only: the oldest record (by its stamp) at the
    /// head of the expected shards, so events of different vCPUs keep the
    /// order they happened in (a pin on one vCPU before a denial on
    /// another), and a storming vCPU delays no other's. Nil when every
    /// expected shard is empty (or its next record is still being written:
    /// its producer wakes the consumer when done).
    @inline(__always)
    func pop() -> EventRecord? {
        guard unread == 0, ordered == 1 else { return popOrdered() }
        // One shard: its records in order, no stamps to keep (`readHeads`
        // reads its head again when another shard joins).
        if let record = pop(order[0]) { return record }
        ordered = 0
        inOrder = 0
        return nil
    }

    /// Several shards, or new ones: the head with the oldest stamp.
    @inline(__always)
    private func popOrdered() -> EventRecord? {
        if unread != 0 { readHeads() }
        guard ordered != 0 else { return nil }
        let index = order[0]
        let record = take(index)
        reorder(after: index)
        return record
    }

    /// Puts the shards whose heads are unread into `order` (the empty ones
    /// stop being expected). Out of line: once per drain and shard.
    @inline(never)
    private func readHeads() {
        var unread = self.unread
        self.unread = 0
        if ordered == 1 {
            // The one shard was taken from without its stamps.
            let index = order[0]
            (ordered, inOrder) = (0, 0)
            if let stamp = headStamp(index) { insert(index, stamp: stamp) }
        }
        while unread != 0 {
            let index = unread.trailingZeroBitCount
            unread &= unread &- 1
            if let stamp = headStamp(index) { insert(index, stamp: stamp) }
        }
    }

    /// `order[0]` was just taken from: its next record's place in `order`,
    /// or none when its shard is empty.
    @inline(__always)
    private func reorder(after index: Int) {
        let next = headStamp(index)
        // A burst from one vCPU: its next record is still the oldest.
        if let stamp = next, ordered > 1, !EventQueue.newer(stamp, than: stamps[order[1]]) {
            stamps[index] = stamp
            return
        }
        let count = ordered &- 1
        for slot in 0..<count { order[slot] = order[slot &+ 1] }
        ordered = count
        inOrder &= ~(1 &<< index)
        if let stamp = next { insert(index, stamp: stamp) }
    }

    /// Inserts shard `index` with its head's stamp, from the newest end
    /// (a shard just taken from usually has the newest head).
    @inline(__always)
    private func insert(_ index: Int, stamp: Int) {
        stamps[index] = stamp
        var slot = ordered
        while slot > 0, EventQueue.newer(stamps[order[slot &- 1]], than: stamp) {
            order[slot] = order[slot &- 1]
            slot &-= 1
        }
        order[slot] = index
        ordered &+= 1
        inOrder |= 1 &<< index
    }

    /// Stamps are the TSC's unsigned count, kept in Int words.
    @inline(__always)
    private static func newer(_ stamp: Int, than other: Int) -> Bool {
        UInt(bitPattern: stamp) > UInt(bitPattern: other)
    }

    /// The stamp of shard `index`'s next record, if it is written.
    @inline(__always)
    private func headStamp(_ index: Int) -> Int? {
        let shard = shard(index), head = heads[index]
        let cell = head & EventQueue.mask
        guard cellSequence(shard, cell).pointee.load(ordering: .acquiring) &+ cell == head &+ 1 else { return nil }
        return Int(cellRecord(shard, cell).pointee.timeMicros)
    }

    /// Shard `index`'s next record, if it is written.
    @inline(__always)
    private func pop(_ index: Int) -> EventRecord? {
        let shard = shard(index), head = heads[index]
        let cell = head & EventQueue.mask
        guard cellSequence(shard, cell).pointee.load(ordering: .acquiring) &+ cell == head &+ 1 else { return nil }
        return take(index)
    }

    /// Shard `index`'s next record, known to be written (its head was read).
    @inline(__always)
    private func take(_ index: Int) -> EventRecord {
        let shard = shard(index), head = heads[index]
        let cell = head & EventQueue.mask
        let record = cellRecord(shard, cell).pointee
        cellSequence(shard, cell).pointee.store(head &+ capacity &- cell, ordering: .releasing)
        heads[index] = head &+ 1
        return record
    }
}
