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
}
