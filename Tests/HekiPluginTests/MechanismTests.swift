import Testing
import Synchronization
@testable import HekiPlugin

/// The pieces under the exit path: JSON escaping, the bounded queue, the
/// rate limiter, the pin ledger.
@Suite struct MechanismTests {
    @Test func jsonEscapesEverythingThatCouldBreakALine() {
        var object = JSONObject()
        object.add("name", "a\"b\\c\nd\u{0}e\u{1f}f\u{7f}\u{2028}g")
        object.add("n", UInt64.max)
        object.add("hex", hex: 0xdead_beef)
        object.add("list", ["x", "y\""])
        object.add("none", nil as String?)
        #expect(object.rendered == #"{"name":"a\"b\\c\nd\u0000e\u001ff\u007f\u2028g","n":18446744073709551615,"hex":"0xdeadbeef","list":["x","y\""],"none":null}"#)
    }

    @Test func queueIsFIFOAndBounded() {
        let queue = EventQueue(capacity: 5)  // rounds up to 8
        for index in 0..<8 { #expect(queue.push(EventRecord(kind: .denial, vcpu: UInt32(index)))) }
        #expect(!queue.push(EventRecord(kind: .denial, vcpu: 99)))
        for index in 0..<8 { #expect(queue.pop()?.vcpu == UInt32(index)) }
        #expect(queue.pop() == nil)
        #expect(queue.push(EventRecord(kind: .configure, vcpu: 7)))
        #expect(queue.pop()?.vcpu == 7)
    }

    @Test func queueLosesNothingUnderConcurrentProducers() async {
        let queue = EventQueue(capacity: 1024)
        let producers = 4, perProducer = 50_000
        let refusals = Tally()
        var seen = [Int](repeating: 0, count: producers)
        await withTaskGroup(of: Void.self) { group in
            for producer in 0..<producers {
                group.addTask {
                    for sequence in 0..<perProducer {
                        let record = EventRecord(kind: .denial, vcpu: UInt32(producer), value: UInt64(sequence))
                        if !queue.push(record) { refusals.count.wrappingAdd(1, ordering: .relaxed) }
                    }
                }
            }
            // The consumer: per producer, values arrive in increasing order.
            var last = [Int](repeating: -1, count: producers)
            var popped = 0
            while popped + refusals.count.load(ordering: .relaxed) < producers * perProducer {
                if let record = queue.pop() {
                    let producer = Int(record.vcpu)
                    #expect(Int(record.value) > last[producer])
                    last[producer] = Int(record.value)
                    seen[producer] += 1
                    popped += 1
                } else {
                    await Task.yield()
                }
            }
            await group.waitForAll()
            while let record = queue.pop() { seen[Int(record.vcpu)] += 1 }
        }
        #expect(seen.reduce(0, +) + refusals.count.load(ordering: .relaxed) == producers * perProducer)
    }

    @Test func rateLimiterAdmitsTheLimitThenCounts() {
        let limiter = RateLimiter(limit: 3)
        let admitted = (0..<10).filter { _ in limiter.admit(.denial) }.count
        // All ten calls fall in one or two one-second windows.
        #expect(admitted == 3 || admitted == 6)
        #expect(limiter.admit(.capability))  // not rate-limited
        #expect(limiter.suppress(.denial))   // first since the last summary
        #expect(!limiter.suppress(.denial))
        #expect(limiter.pendingCount(.denial) == 2)
        #expect(limiter.takePending(.denial) == 2)
        #expect(limiter.pendingCount(.denial) == 0)
        #expect(limiter.suppress(.denial))
    }

    @Test func rateLimitZeroMeansNoLimit() {
        let limiter = RateLimiter(limit: 0)
        #expect((0..<10_000).allSatisfy { _ in limiter.admit(.denial) })
    }

    @Test func ledgerOrsPins() {
        let ledger = PinLedger()
        #expect(ledger.pin(CR4.smep.rawValue, on: .cr4) == CR4.smep.rawValue)
        #expect(ledger.pin(CR4.smap.rawValue, on: .cr4) == CR4.smep.rawValue | CR4.smap.rawValue)
        #expect(ledger.pins(.cr0) == 0)
        #expect(ledger.pin(0, on: .cr4) == CR4.smep.rawValue | CR4.smap.rawValue)
    }

    @Test func auditTimestamps() {
        #expect(AuditLog.timestamp(0) == "1970-01-01T00:00:00.000000Z")
        #expect(AuditLog.timestamp(1_795_608_000_123_456) == "2026-11-25T12:00:00.123456Z")
    }
}

/// A shared counter for producer tasks.
private final class Tally: Sendable {
    let count = Atomic<Int>(0)
}
