import CBridge
#if canImport(Glibc)
import Glibc
#endif

/// Turns the stamp counter a vCPU puts on a queued record
/// (`cbridge_stamp_counter`: the TSC, a few ns on the exit path, against
/// ~30 ns for the wall clock) into wall-clock microseconds. The main loop
/// owns it and calibrates it: at each drain it takes an anchor (counter,
/// monotonic and wall clock together); a record's time is the anchor's wall
/// clock minus the counter ticks since the record, at the rate measured
/// from the plugin's start to that anchor (monotonic, so a wall-clock step
/// does not skew the rate). Every record comes after the start, so the
/// error stays about a microsecond even right after it.
struct StampClock {
    private let originCounter: UInt64
    private let originMonotonic: Int64
    private var counter: UInt64
    private var wallNanos: Int64
    private var nanosPerTick: Double = 0
    /// The same in fixed point (times 2^32): a record's conversion is
    /// integer arithmetic, no floating-point range checks.
    private var nanosPerTickQ32: Int64 = 0

    init() {
        let now = StampClock.read()
        (originCounter, originMonotonic) = (now.counter, now.monotonic)
        (counter, wallNanos) = (now.counter, now.wall)
    }

    /// A record's stamp: the counter now. Any thread.
    @inline(__always)
    static func counter() -> UInt64 { cbridge_stamp_counter() }

    /// The counter and both clocks at one moment. A read whose clock reads
    /// took more than `quickTicks` (a preemption in between would shift
    /// every conversion by its length) is tried again, up to three times,
    /// keeping the quickest.
    private static func read(quickTicks: UInt64 = 0) -> (counter: UInt64, monotonic: Int64, wall: Int64) {
        func nanos(_ t: timespec) -> Int64 { Int64(t.tv_sec) &* 1_000_000_000 &+ Int64(t.tv_nsec) }
        var best: (counter: UInt64, monotonic: Int64, wall: Int64, span: UInt64)? = nil
        for _ in 0..<3 {
            var monotonic = timespec(), wall = timespec()
            let before = counter()
            clock_gettime(CLOCK_MONOTONIC, &monotonic)
            clock_gettime(CLOCK_REALTIME, &wall)
            let span = counter() &- before
            if best == nil || span < best!.span {
                best = (before &+ span / 2, nanos(monotonic), nanos(wall), span)
            }
            if span <= quickTicks { break }
        }
        return (best!.counter, best!.monotonic, best!.wall)
    }

    /// Main loop, before popping records: a new anchor.
    mutating func anchor() {
        // Quick: the reads took under 2 µs (once the rate is known).
        let now = StampClock.read(quickTicks: nanosPerTick > 0 ? UInt64(2_000 / nanosPerTick) : 0)
        (counter, wallNanos) = (now.counter, now.wall)
        let ticks = now.counter &- originCounter, nanos = now.monotonic &- originMonotonic
        if ticks > 0 && ticks < 1 << 62 && nanos > 0 {
            let rate = Double(nanos) / Double(ticks)
            if rate < 1_048_576 {  // 2^20 ns: a tick of up to a millisecond: the fixed point fits
                nanosPerTick = rate
                nanosPerTickQ32 = Int64(rate * 4_294_967_296)
            }
        }
    }

    /// Wall-clock microseconds since the epoch of a record stamped `stamp`.
    func micros(of stamp: UInt64) -> Int64 {
        // Records are at most seconds old; the clamp (2^48 ticks, a day at
        // 3 GHz) keeps a bad counter (a CPU whose TSC jumped) from
        // overflowing the conversion: 2^48 ticks of at most 2^20 ns.
        let ticks = min(max(Int64(bitPattern: counter &- stamp), -(1 << 48)), 1 << 48)
        let product = ticks.multipliedFullWidth(by: nanosPerTickQ32)
        let behind = product.high &<< 32 | Int64(bitPattern: product.low &>> 32)  // the product / 2^32
        let nanos = wallNanos &- behind
        return nanos >= 0 ? nanos / 1_000 : (nanos &- 999) / 1_000
    }
}
