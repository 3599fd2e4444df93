import Dispatch
import Synchronization
import Testing
@testable import HekiPlugin

@Suite struct RateLimiterTests {
    @Test func admitsTheLimitPerWindowThenCountsTheRest() {
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

    @Test func limitZeroAdmitsEverything() {
        let limiter = RateLimiter(limit: 0)
        #expect((0..<10_000).allSatisfy { _ in limiter.admit(.denial) })
    }

    /// Four vCPUs hold events back while the main loop takes summaries:
    /// every held-back event is taken exactly once, the totals count them
    /// all, and a wake is asked for at most once per take (plus the first).
    @Test func everyHeldBackEventIsTakenOnceWhileVCPUsCount() {
        let limiter = RateLimiter(limit: 1)
        let perVCPU = 50_000
        let wakes = Atomic<Int>(0)
        let finished = Atomic<Int>(0)
        let group = DispatchGroup()
        for vcpu in 0..<4 {
            DispatchQueue.global().async(group: group) {
                for index in 0..<perVCPU {
                    let register: ControlRegister = index % 2 == 0 ? .cr0 : .cr4
                    if limiter.suppress(.denial, register: register, vcpu: UInt32(vcpu)) {
                        wakes.wrappingAdd(1, ordering: .relaxed)
                    }
                }
                finished.wrappingAdd(1, ordering: .relaxed)
            }
        }
        var taken: UInt64 = 0
        var takes = 0
        while finished.load(ordering: .relaxed) < 4 {
            taken += limiter.takePending(.denial)
            takes += 1
        }
        group.wait()
        taken += limiter.takePending(.denial)
        takes += 1
        #expect(taken == UInt64(4 * perVCPU))
        #expect(limiter.pendingCount(.denial) == 0)
        #expect(limiter.heldBackTotal(.denial, .cr0) + limiter.heldBackTotal(.denial, .cr4) == UInt64(4 * perVCPU))
        let woken = wakes.load(ordering: .relaxed)
        #expect(woken >= 1 && woken <= takes + 1)
        // The last take cleared the flag: the next held-back event wakes.
        #expect(limiter.suppress(.denial, register: .cr4, vcpu: 1))
    }
}
