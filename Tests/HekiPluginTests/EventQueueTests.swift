import Synchronization
import Testing
@testable import HekiPlugin

@Suite struct EventQueueTests {
    @Test func popsInPushOrderAndRefusesPastItsCapacity() throws {
        let box = try #require(QueueBox<8>())
        for index in 0..<8 { #expect(box.queue.push(sequencedRecord(producer: 0, sequence: UInt64(index)), vcpu: 0) != .refused) }
        #expect(box.queue.push(sequencedRecord(producer: 0, sequence: 99), vcpu: 0) == .refused)
        box.queue.expect(EventQueue<8>.allShards)
        for index in 0..<8 { #expect(box.queue.pop()?.sequenced?.sequence == UInt64(index)) }
        #expect(box.queue.pop() == nil)
        #expect(box.queue.push(sequencedRecord(producer: 7, sequence: 0), vcpu: 0) != .refused)
        box.queue.expect(1)
        #expect(box.queue.pop()?.sequenced?.producer == 7)
    }

    /// vCPU n pushes to shard n % 16: a full shard refuses its own vCPUs
    /// only. Across shards the consumer takes the oldest head by its stamp:
    /// events of different vCPUs come out in the order they were stamped
    /// (a pin on vCPU 2, then one on vCPU 1, stays in that order), and a
    /// storming vCPU cannot hold back another's older events.
    @Test func shardsFillAloneAndAreTakenOldestFirst() throws {
        let box = try #require(QueueBox<4>())
        for index in 0..<4 { #expect(box.queue.push(sequencedRecord(producer: 2, sequence: UInt64(index)), vcpu: 2, stamping: true) != .refused) }
        #expect(box.queue.push(sequencedRecord(producer: 18, sequence: 0), vcpu: 18) == .refused)  // shard 2 too
        for index in 0..<2 { #expect(box.queue.push(sequencedRecord(producer: 1, sequence: UInt64(index)), vcpu: 1, stamping: true) != .refused) }
        box.queue.expect(EventQueue<4>.allShards)
        let order = (0..<6).compactMap { _ in box.queue.pop()?.sequenced }.map { "\($0.producer).\($0.sequence)" }
        #expect(order == ["2.0", "2.1", "2.2", "2.3", "1.0", "1.1"])
        #expect(box.queue.pop() == nil)

        // Interleaved in time: interleaved out.
        for index in 0..<3 {
            #expect(box.queue.push(sequencedRecord(producer: 1, sequence: UInt64(index)), vcpu: 1, stamping: true) != .refused)
            #expect(box.queue.push(sequencedRecord(producer: 7, sequence: UInt64(index)), vcpu: 7, stamping: true) != .refused)
        }
        box.queue.expect(EventQueue<4>.allShards)
        let mixed = (0..<6).compactMap { _ in box.queue.pop()?.sequenced }.map { "\($0.producer).\($0.sequence)" }
        #expect(mixed == ["1.0", "7.0", "1.1", "7.1", "1.2", "7.2"])
    }

    /// One shard is taken from without keeping stamps; when another joins,
    /// its head is read again, so the order holds across the change.
    @Test func aShardThatJoinsIsOrderedAgainstTheOneBeingTaken() throws {
        let box = try #require(QueueBox<8>())
        func push(_ vcpu: UInt32, _ sequence: UInt64) {
            #expect(box.queue.push(sequencedRecord(producer: vcpu, sequence: sequence), vcpu: vcpu, stamping: true) != .refused)
        }
        push(1, 0); push(2, 0); push(1, 1); push(2, 1)
        box.queue.expect(1 << 1)
        #expect(box.queue.pop()?.sequenced?.sequence == 0)  // shard 1 alone
        box.queue.expect(1 << 2)
        let order = (0..<3).compactMap { _ in box.queue.pop()?.sequenced }.map { "\($0.producer).\($0.sequence)" }
        #expect(order == ["2.0", "1.1", "2.1"])
        #expect(box.queue.pop() == nil)
    }

    /// A push counts in the slot it names, in its shard's header line, only
    /// when it queues; `queued` sums every shard's count of a slot, and pops
    /// do not take counts back.
    @Test func pushesCountTheirSlotWhenTheyQueue() throws {
        let box = try #require(QueueBox<2>())
        for vcpu: UInt32 in [0, 0, 0, 1, 17, 17] {  // the third into shard 0 and the second into shard 1 are refused
            _ = box.queue.push(sequencedRecord(producer: vcpu, sequence: 0), vcpu: vcpu, counting: 3)
        }
        _ = box.queue.push(sequencedRecord(producer: 5, sequence: 0), vcpu: 5, counting: 0)
        _ = box.queue.push(sequencedRecord(producer: 6, sequence: 0), vcpu: 6)  // no slot
        _ = box.queue.push(sequencedRecord(producer: 7, sequence: 0), vcpu: 7, counting: EventQueue<2>.countedSlots)
        #expect(box.queue.queued(3) == 4)
        #expect(box.queue.queued(0) == 1)
        #expect((0..<EventQueue<2>.countedSlots).map { box.queue.queued($0) } == [1, 0, 0, 4, 0, 0])
        #expect(box.queue.queued(EventQueue<2>.countedSlots) == 0 && box.queue.queued(-1) == 0)
        box.queue.expect(EventQueue<2>.allShards)
        #expect((0..<7).compactMap { _ in box.queue.pop() }.count == 7)
        #expect(box.queue.queued(3) == 4)
        #expect(EventQueue<2>.countedSlots == 6, "configure, denial and weak pinning per register")
    }

    /// A shard's first push after the consumer took the wake flags says to
    /// signal it, the next ones do not; `takeWoken` names the shards.
    @Test func theFirstPushAfterTheFlagsWereTakenSignals() throws {
        let box = try #require(QueueBox<8>())
        #expect(box.queue.push(sequencedRecord(producer: 2, sequence: 0), vcpu: 2) == .queuedFirst)
        #expect(box.queue.push(sequencedRecord(producer: 2, sequence: 1), vcpu: 2) == .queued)
        #expect(box.queue.push(sequencedRecord(producer: 9, sequence: 0), vcpu: 9) == .queuedFirst)
        #expect(box.queue.takeWoken() == (1 << 2 | 1 << 9))
        #expect(box.queue.takeWoken() == 0)
        #expect(box.queue.push(sequencedRecord(producer: 18, sequence: 0), vcpu: 18) == .queuedFirst)  // shard 2
    }

    /// The consumer looks only at the shards it was told may have records
    /// (the main loop: those whose wake flags were set); a shard stays
    /// expected until a pop finds it empty.
    @Test func popLooksOnlyAtExpectedShards() throws {
        let box = try #require(QueueBox<8>())
        #expect(box.queue.push(sequencedRecord(producer: 3, sequence: 0), vcpu: 3) != .refused)
        #expect(box.queue.push(sequencedRecord(producer: 3, sequence: 1), vcpu: 3) != .refused)
        box.queue.expect(1 << 2)
        #expect(box.queue.pop() == nil)
        box.queue.expect(1 << 3)
        #expect(box.queue.pop()?.sequenced?.sequence == 0)
        #expect(box.queue.pop()?.sequenced?.sequence == 1)
        #expect(box.queue.pop() == nil)
        #expect(box.queue.push(sequencedRecord(producer: 3, sequence: 2), vcpu: 3) != .refused)
        #expect(box.queue.pop() == nil, "shard 3 was found empty: not expected again until told")
        box.queue.expect(1 << 3)
        #expect(box.queue.pop()?.sequenced?.sequence == 2)
    }

    @Test func losesNothingUnderConcurrentProducers() async throws {
        let box = try #require(QueueBox<1024>())
        // vCPUs 0 and 16 share shard 0, 1 and 17 shard 1: several producers per shard.
        let producers = 4, perProducer = 50_000
        let vcpus: [UInt32] = [0, 16, 1, 17]
        let refusals = Tally()
        var seen = [Int](repeating: 0, count: producers)
        await withTaskGroup(of: Void.self) { group in
            for producer in 0..<producers {
                group.addTask {
                    for sequence in 0..<perProducer {
                        let record = sequencedRecord(producer: UInt32(producer), sequence: UInt64(sequence))
                        if box.queue.push(record, vcpu: vcpus[producer]) == .refused { refusals.count.wrappingAdd(1, ordering: .relaxed) }
                    }
                }
            }
            // The consumer: per producer, sequences arrive in increasing order.
            var last = [Int](repeating: -1, count: producers)
            var popped = 0
            box.queue.expect(EventQueue<8>.allShards)
            while popped + refusals.count.load(ordering: .relaxed) < producers * perProducer {
                if let (producer, sequence) = box.queue.pop()?.sequenced {
                    #expect(Int(sequence) > last[Int(producer)])
                    last[Int(producer)] = Int(sequence)
                    seen[Int(producer)] += 1
                    popped += 1
                } else {
                    box.queue.expect(EventQueue<8>.allShards)
                    await Task.yield()
                }
            }
            await group.waitForAll()
            box.queue.expect(EventQueue<8>.allShards)
            while let (producer, _) = box.queue.pop()?.sequenced { seen[Int(producer)] += 1 }
        }
        #expect(seen.reduce(0, +) + refusals.count.load(ordering: .relaxed) == producers * perProducer)
    }
}

extension EventQueueTests {
    /// The wake-up protocol under concurrent producers: the consumer looks
    /// only at the shards `takeWoken` names, after each signal (a push that
    /// returned `queuedFirst`, the eventfd write); once the producers are
    /// done and every signal is served, no record is left behind. A lost
    /// wake-up leaves records in a shard nobody names.
    @Test func everyRecordIsTakenAfterTheSignalsAlone() async throws {
        let box = try #require(QueueBox<256>())
        let vcpus: [UInt32] = [0, 16, 1, 17, 5]
        let perProducer = 40_000
        let refusals = Tally(), signals = Tally(), done = Tally()
        var popped = 0
        await withTaskGroup(of: Void.self) { group in
            for producer in vcpus.indices {
                group.addTask {
                    for sequence in 0..<perProducer {
                        switch box.queue.push(sequencedRecord(producer: UInt32(producer), sequence: UInt64(sequence)),
                                          vcpu: vcpus[producer]) {
                        case .refused: refusals.count.wrappingAdd(1, ordering: .relaxed)
                        case .queued: break
                        case .queuedFirst: signals.count.wrappingAdd(1, ordering: .sequentiallyConsistent)
                        }
                    }
                    done.count.wrappingAdd(1, ordering: .sequentiallyConsistent)
                }
            }
            var served = 0
            while true {
                let finished = done.count.load(ordering: .sequentiallyConsistent) == vcpus.count
                let signalled = signals.count.load(ordering: .sequentiallyConsistent)
                if signalled > served {
                    served = signalled  // the eventfd read, before the flags are taken
                    box.queue.expect(box.queue.takeWoken())
                    while box.queue.pop() != nil { popped += 1 }
                } else if finished {
                    break
                } else {
                    await Task.yield()
                }
            }
            await group.waitForAll()
        }
        #expect(popped + refusals.count.load(ordering: .relaxed) == vcpus.count * perProducer)
        box.queue.expect(EventQueue<8>.allShards)
        #expect(box.queue.pop() == nil, "a record no signal led to")
    }
}

/// A queue in a class, so tests can hand it to tasks and #require it (the
/// queue itself is noncopyable, as the plugin holds it inline).
private final class QueueBox<let capacity: Int>: @unchecked Sendable {
    let queue: EventQueue<capacity>
    init?() {
        guard let queue = EventQueue<capacity>() else { return nil }
        self.queue = queue
    }
}

/// A shared counter for producer tasks.
private final class Tally: Sendable {
    let count = Atomic<Int>(0)
}

@Suite struct EventRecordTests {
    /// What a vCPU writes into a queue cell: no reference (the type is
    /// BitwiseCopyable, which the compiler checks), and one cache line at
    /// most, whatever the kind.
    /// 2^42 records (256 TiB, more than the address space): the mapping
    /// fails and the queue is nil, which heki_plugin_new reports as an
    /// error; it used to be a trap, which kills the VMM.
    @Test func aMappingThatFailsIsNilNotATrap() {
        #expect(QueueBox<4_398_046_511_104>() == nil)
    }

    /// A shard's cells are found by masking: a capacity that is not a
    /// power of two is refused, not rounded behind the caller's back.
    @Test func aCapacityThatIsNotAPowerOfTwoIsNil() {
        #expect(QueueBox<5>() == nil)
        #expect(QueueBox<0>() == nil)
        #expect(QueueBox<8>() != nil)
    }

    @Test func aRecordIsPlainDataWithinOneCacheLine() {
        #expect(_isPOD(EventRecord.self))
        #expect(MemoryLayout<EventRecord>.size <= 64, "\(MemoryLayout<EventRecord>.size) bytes")
    }
}
