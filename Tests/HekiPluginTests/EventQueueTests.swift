import Synchronization
import Testing
@testable import HekiPlugin

@Suite struct EventQueueTests {
    @Test func popsInPushOrderAndRefusesPastItsCapacity() throws {
        let queue = try #require(EventQueue(capacity: 5))  // rounds up to 8 per shard
        for index in 0..<8 { #expect(queue.push(sequencedRecord(producer: 0, sequence: UInt64(index)), vcpu: 0) != .refused) }
        #expect(queue.push(sequencedRecord(producer: 0, sequence: 99), vcpu: 0) == .refused)
        queue.expect(EventQueue.allShards)
        for index in 0..<8 { #expect(queue.pop()?.sequenced?.sequence == UInt64(index)) }
        #expect(queue.pop() == nil)
        #expect(queue.push(sequencedRecord(producer: 7, sequence: 0), vcpu: 0) != .refused)
        queue.expect(1)
        #expect(queue.pop()?.sequenced?.producer == 7)
    }

    /// vCPU n pushes to shard n % 16: a full shard refuses its own vCPUs
    /// only, and the consumer takes the shards in turn, one record each, so
    /// a storming vCPU cannot hold back another's events.
    @Test func shardsFillAloneAndAreTakenInTurn() throws {
        let queue = try #require(EventQueue(capacity: 4))
        for index in 0..<4 { #expect(queue.push(sequencedRecord(producer: 0, sequence: UInt64(index)), vcpu: 0) != .refused) }
        #expect(queue.push(sequencedRecord(producer: 16, sequence: 0), vcpu: 16) == .refused)  // shard 0 too
        for index in 0..<2 { #expect(queue.push(sequencedRecord(producer: 5, sequence: UInt64(index)), vcpu: 5) != .refused) }
        queue.expect(EventQueue.allShards)
        let order = (0..<6).compactMap { _ in queue.pop()?.sequenced }.map { "\($0.producer).\($0.sequence)" }
        #expect(order == ["0.0", "5.0", "0.1", "5.1", "0.2", "0.3"])
        #expect(queue.pop() == nil)
    }

    /// A shard's first push after the consumer took the wake flags says to
    /// signal it, the next ones do not; `takeWoken` names the shards.
    @Test func theFirstPushAfterTheFlagsWereTakenSignals() throws {
        let queue = try #require(EventQueue(capacity: 8))
        #expect(queue.push(sequencedRecord(producer: 2, sequence: 0), vcpu: 2) == .queuedFirst)
        #expect(queue.push(sequencedRecord(producer: 2, sequence: 1), vcpu: 2) == .queued)
        #expect(queue.push(sequencedRecord(producer: 9, sequence: 0), vcpu: 9) == .queuedFirst)
        #expect(queue.takeWoken() == (1 << 2 | 1 << 9))
        #expect(queue.takeWoken() == 0)
        #expect(queue.push(sequencedRecord(producer: 18, sequence: 0), vcpu: 18) == .queuedFirst)  // shard 2
    }

    /// The consumer looks only at the shards it was told may have records
    /// (the main loop: those whose wake flags were set); a shard stays
    /// expected until a pop finds it empty.
    @Test func popLooksOnlyAtExpectedShards() throws {
        let queue = try #require(EventQueue(capacity: 8))
        #expect(queue.push(sequencedRecord(producer: 3, sequence: 0), vcpu: 3) != .refused)
        #expect(queue.push(sequencedRecord(producer: 3, sequence: 1), vcpu: 3) != .refused)
        queue.expect(1 << 2)
        #expect(queue.pop() == nil)
        queue.expect(1 << 3)
        #expect(queue.pop()?.sequenced?.sequence == 0)
        #expect(queue.pop()?.sequenced?.sequence == 1)
        #expect(queue.pop() == nil)
        #expect(queue.push(sequencedRecord(producer: 3, sequence: 2), vcpu: 3) != .refused)
        #expect(queue.pop() == nil, "shard 3 was found empty: not expected again until told")
        queue.expect(1 << 3)
        #expect(queue.pop()?.sequenced?.sequence == 2)
    }

    @Test func losesNothingUnderConcurrentProducers() async throws {
        let queue = try #require(EventQueue(capacity: 1024))
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
                        if queue.push(record, vcpu: vcpus[producer]) == .refused { refusals.count.wrappingAdd(1, ordering: .relaxed) }
                    }
                }
            }
            // The consumer: per producer, sequences arrive in increasing order.
            var last = [Int](repeating: -1, count: producers)
            var popped = 0
            queue.expect(EventQueue.allShards)
            while popped + refusals.count.load(ordering: .relaxed) < producers * perProducer {
                if let (producer, sequence) = queue.pop()?.sequenced {
                    #expect(Int(sequence) > last[Int(producer)])
                    last[Int(producer)] = Int(sequence)
                    seen[Int(producer)] += 1
                    popped += 1
                } else {
                    queue.expect(EventQueue.allShards)
                    await Task.yield()
                }
            }
            await group.waitForAll()
            queue.expect(EventQueue.allShards)
            while let (producer, _) = queue.pop()?.sequenced { seen[Int(producer)] += 1 }
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
        let queue = try #require(EventQueue(capacity: 256))
        let vcpus: [UInt32] = [0, 16, 1, 17, 5]
        let perProducer = 40_000
        let refusals = Tally(), signals = Tally(), done = Tally()
        var popped = 0
        await withTaskGroup(of: Void.self) { group in
            for producer in vcpus.indices {
                group.addTask {
                    for sequence in 0..<perProducer {
                        switch queue.push(sequencedRecord(producer: UInt32(producer), sequence: UInt64(sequence)),
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
                    queue.expect(queue.takeWoken())
                    while queue.pop() != nil { popped += 1 }
                } else if finished {
                    break
                } else {
                    await Task.yield()
                }
            }
            await group.waitForAll()
        }
        #expect(popped + refusals.count.load(ordering: .relaxed) == vcpus.count * perProducer)
        queue.expect(EventQueue.allShards)
        #expect(queue.pop() == nil, "a record no signal led to")
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
        #expect(EventQueue(capacity: 1 << 42) == nil)
    }

    @Test func aRecordIsPlainDataWithinOneCacheLine() {
        #expect(_isPOD(EventRecord.self))
        #expect(MemoryLayout<EventRecord>.size <= 64, "\(MemoryLayout<EventRecord>.size) bytes")
    }
}
