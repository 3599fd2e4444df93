import CGLib
import Synchronization

/// A bounded multi-producer, single-consumer queue of event records
/// (Vyukov's bounded queue): vCPU threads push without locks or allocation,
/// the main loop pops. A push into a full queue fails at once; the caller
/// counts what it could not push.
final class EventQueue: @unchecked Sendable {
    private let capacity: Int
    private let mask: Int
    /// Per cell: the position it expects to be written (pos) or read (pos+1).
    private let sequences: UnsafeMutablePointer<Atomic<Int>>
    private let records: UnsafeMutablePointer<EventRecord>
    private let enqueuePosition = Atomic<Int>(0)
    /// Only the consumer (the main loop thread) touches this.
    private var dequeuePosition = 0

    /// `capacity` is rounded up to a power of two.
    init(capacity requested: Int) {
        var size = 1
        while size < requested { size <<= 1 }
        capacity = size
        mask = size - 1
        sequences = .allocate(capacity: size)
        records = .allocate(capacity: size)
        for index in 0..<size {
            (sequences + index).initialize(to: Atomic(index))
            (records + index).initialize(to: EventRecord(payload: .suppressed(SuppressedEvent(coalesced: .configure, count: 0))))
        }
    }

    deinit {
        sequences.deinitialize(count: capacity)
        sequences.deallocate()
        records.deinitialize(count: capacity)
        records.deallocate()
    }

    /// Any thread. False when the queue is full. `stampingTime`: sets the
    /// record's `timeMicros` to the wall clock once a cell is reserved.
    @inline(__always)
    func push(_ record: EventRecord, stampingTime: Bool = false) -> Bool {
        var position = enqueuePosition.load(ordering: .relaxed)
        while true {
            let cell = position & mask
            let sequence = sequences[cell].load(ordering: .acquiring)
            let difference = sequence &- position
            if difference == 0 {
                let (exchanged, current) = enqueuePosition.weakCompareExchange(
                    expected: position, desired: position &+ 1,
                    successOrdering: .relaxed, failureOrdering: .relaxed)
                if exchanged {
                    records[cell] = record
                    if stampingTime { records[cell].timeMicros = Int64(g_get_real_time()) }
                    sequences[cell].store(position &+ 1, ordering: .releasing)
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
        let sequence = sequences[cell].load(ordering: .acquiring)
        guard sequence == dequeuePosition &+ 1 else { return nil }
        let record = records[cell]
        sequences[cell].store(dequeuePosition &+ capacity, ordering: .releasing)
        dequeuePosition &+= 1
        return record
    }
}
