import Synchronization
import Testing
@testable import HekiPlugin

@Suite struct EventQueueTests {
    @Test func popsInPushOrderAndRefusesPastItsCapacity() throws {
        let queue = try #require(EventQueue(capacity: 5))  // rounds up to 8
        for index in 0..<8 { #expect(queue.push(sequencedRecord(producer: 0, sequence: UInt64(index)))) }
        #expect(!queue.push(sequencedRecord(producer: 0, sequence: 99)))
        for index in 0..<8 { #expect(queue.pop()?.sequenced?.sequence == UInt64(index)) }
        #expect(queue.pop() == nil)
        #expect(queue.push(sequencedRecord(producer: 7, sequence: 0)))
        #expect(queue.pop()?.sequenced?.producer == 7)
    }

    @Test func losesNothingUnderConcurrentProducers() async throws {
        let queue = try #require(EventQueue(capacity: 1024))
        let producers = 4, perProducer = 50_000
        let refusals = Tally()
        var seen = [Int](repeating: 0, count: producers)
        await withTaskGroup(of: Void.self) { group in
            for producer in 0..<producers {
                group.addTask {
                    for sequence in 0..<perProducer {
                        let record = sequencedRecord(producer: UInt32(producer), sequence: UInt64(sequence))
                        if !queue.push(record) { refusals.count.wrappingAdd(1, ordering: .relaxed) }
                    }
                }
            }
            // The consumer: per producer, sequences arrive in increasing order.
            var last = [Int](repeating: -1, count: producers)
            var popped = 0
            while popped + refusals.count.load(ordering: .relaxed) < producers * perProducer {
                if let (producer, sequence) = queue.pop()?.sequenced {
                    #expect(Int(sequence) > last[Int(producer)])
                    last[Int(producer)] = Int(sequence)
                    seen[Int(producer)] += 1
                    popped += 1
                } else {
                    await Task.yield()
                }
            }
            await group.waitForAll()
            while let (producer, _) = queue.pop()?.sequenced { seen[Int(producer)] += 1 }
        }
        #expect(seen.reduce(0, +) + refusals.count.load(ordering: .relaxed) == producers * perProducer)
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
