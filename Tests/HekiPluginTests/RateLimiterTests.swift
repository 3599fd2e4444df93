import Dispatch
#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Testing
@testable import HekiPlugin

@Suite struct RateLimiterTests {
    @Test func admitsTheLimitPerWindowThenCountsTheRest() {
        let limiter = RateLimiter(limit: 3)
        let admitted = (0..<10).filter { _ in limiter.admit(.denial) }.count
        // All ten calls fall in one or two one-second windows.
        #expect(admitted == 3 || admitted == 6)
        // RateLimiter is noncopyable: #expect cannot take it apart, so each
        // answer is a local first.
        let capability = limiter.admit(.capability)
        #expect(capability)  // not rate-limited
        let first = limiter.suppress(.denial), second = limiter.suppress(.denial)
        #expect(first)   // first since the last summary
        #expect(!second)
        let pending = limiter.pendingCount(.denial)
        #expect(pending == 2)
        #expect(limiter.takePending(.denial) == 2)
        #expect(limiter.pendingCount(.denial) == 0)
        let afterTake = limiter.suppress(.denial)
        #expect(afterTake)
    }

    /// A full window is trusted without the clock until the main loop
    /// reopens it, or until a vCPU's held-back count reaches the next
    /// multiple of clockSamplePeriod: then that vCPU looks at the clock
    /// and reopens a window from an earlier second.
    @Test func heldBackExitsReopenAStaleWindowEveryClockSamplePeriod() {
        let limiter = RateLimiter(limit: 1)
        let period = RateLimiter.clockSamplePeriod
        // Fill a window and hold one exit back (it looks at the clock: the
        // same second), all within one second of the coarse clock.
        var start: UInt64
        repeat {
            start = RateLimiter.currentWindow()
            while !limiter.admit(.denial) { _ = limiter.suppress(.denial) }
            repeat { _ = limiter.suppress(.denial) } while limiter.heldBackTotal(.denial, .cr0) % period != 1
        } while RateLimiter.currentWindow() != start
        while RateLimiter.currentWindow() == start { usleep(20_000) }
        // The second changed, but no exit has looked at the clock since.
        var admittedEarly = 0
        for _ in 0..<(period - 1) {
            if limiter.admit(.denial) { admittedEarly += 1 }
            _ = limiter.suppress(.denial)
        }
        #expect(admittedEarly == 0)
        // The held-back count is a multiple of the period now: the next
        // held-back exit looks at the clock and reopens the window.
        let trusted = limiter.admit(.denial)
        #expect(!trusted)
        _ = limiter.suppress(.denial)
        let reopened = limiter.admit(.denial)
        #expect(reopened)
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
        let pending = limiter.pendingCount(.denial)
        let heldBack = limiter.heldBackTotal(.denial, .cr0) + limiter.heldBackTotal(.denial, .cr4)
        #expect(pending == 0)
        #expect(heldBack == UInt64(4 * perVCPU))
        let woken = wakes.load(ordering: .relaxed)
        #expect(woken >= 1 && woken <= takes + 1)
        // The last take cleared the flag: the next held-back event wakes.
        let next = limiter.suppress(.denial, register: .cr4, vcpu: 1)
        #expect(next)
    }
}
