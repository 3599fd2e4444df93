import Testing
#if canImport(Glibc)
import Glibc
#endif
@testable import HekiPlugin

/// A queued record's stamp (the TSC) becomes the wall clock of the moment
/// it was taken, to about a microsecond: these bounds are the wall clock
/// read just before and after the stamp, with 20 µs of slack for the
/// anchor's own reads. Nothing here is timed.
@Suite struct StampClockTests {
    private func wallMicros() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec) / 1_000
    }

    @Test func aStampIsTheWallClockOfItsMoment() {
        var clock = StampClock()
        var taken: [(before: Int64, stamp: UInt64, after: Int64)] = []
        for round in 0..<5 {
            let before = wallMicros()
            let stamp = StampClock.counter()
            let after = wallMicros()
            taken.append((before, stamp, after))
            usleep(UInt32(2_000 * round))  // records of different ages at one anchor
        }
        clock.anchor()
        for (before, stamp, after) in taken {
            let micros = clock.micros(of: stamp)
            #expect(micros >= before - 20 && micros <= after + 20, "\(micros) not in [\(before), \(after)]")
        }
    }

    @Test func laterAnchorsKeepEarlierStampsInOrder() {
        var clock = StampClock()
        let first = StampClock.counter()
        usleep(1_000)
        let second = StampClock.counter()
        clock.anchor()
        usleep(1_000)
        clock.anchor()
        #expect(clock.micros(of: first) < clock.micros(of: second))
        #expect(clock.micros(of: second) - clock.micros(of: first) >= 990)
    }

    /// A stamp from a counter that jumped (far ahead of or behind the
    /// anchor) converts without trapping, to a time clamped near the anchor.
    @Test func aJumpedCounterIsClampedNotTrapped() {
        var clock = StampClock()
        usleep(1_000)
        clock.anchor()
        let now = wallMicros()
        let day: Int64 = 86_400_000_000
        for stamp: UInt64 in [0, 1, .max, .max / 2, 1 << 63, StampClock.counter() &+ (1 << 60)] {
            let micros = clock.micros(of: stamp)
            #expect(micros > now - 8 * day && micros < now + 8 * day, "\(stamp): \(micros)")
        }
    }
}

