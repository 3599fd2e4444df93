import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Per event kind: lets `limit` events a second through individually and
/// counts the rest, exactly, for HEKI_SUPPRESSED summaries. Lock-free; a vCPU
/// never waits on it.
///
/// A sustained storm costs no clock read and writes no shared line: once a
/// window is full, exits trust it until the main loop opens the next one
/// (`reopen`, at the summary it schedules for the next second) or until a
/// vCPU's own per-register count says it is time to look at the clock
/// (every `clockSamplePeriod` exits of that vCPU, in case the loop is late).
/// The rest of the time the window's second comes from the coarse monotonic
/// clock (the clock tick, a few ns), which both sides read.
final class RateLimiter: Sendable {
    private let limit: UInt64
    /// Per kind: (window second << 32) | events let through in that window.
    private let windows: InlineArray<6, Atomic<UInt64>>
    /// Per kind and vCPU shard: events not delivered individually since the
    /// last summary.
    private let pending = ShardedCounts()
    /// A full window is checked against the clock every this many exits of
    /// one vCPU (a power of two).
    static let clockSamplePeriod: UInt64 = 64

    /// `limit` 0: no rate limit (every event individual; only a full queue
    /// coalesces).
    init(limit: UInt32) {
        self.limit = UInt64(limit)
        windows = InlineArray { _ in Atomic(0) }
    }

    /// The coarse clock's resolution in microseconds: how far it may lag the
    /// precise monotonic clock GLib's ready times use.
    static let coarseLagMicros: Int64 = {
        var resolution = timespec()
        clock_getres(CLOCK_MONOTONIC_COARSE, &resolution)
        return Int64(resolution.tv_sec) * 1_000_000 + Int64(resolution.tv_nsec) / 1_000 + 1
    }()

    /// The current window: whole seconds of the (coarse) monotonic clock.
    /// Out of line: the exit path calls it only when a window may change.
    @inline(never)
    static func currentWindow() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC_COARSE, &now)
        return UInt64(truncatingIfNeeded: now.tv_sec)
    }

    /// Whether one more event of `kind` may go out individually now.
    /// `sampleClock`: look at the clock even if the window is full.
    @inline(__always)
    func admit(_ kind: EventKind, sampleClock: Bool = true) -> Bool {
        guard limit != 0, kind.isRateLimited else { return true }
        let index = Int(kind.rawValue)
        var state = windows[index].load(ordering: .relaxed)
        if state & 0xffff_ffff >= limit && !sampleClock { return false }
        let now = RateLimiter.currentWindow() & 0xffff_ffff
        while true {
            let window = state >> 32
            let count = window == now ? state & 0xffff_ffff : 0
            if count >= limit { return false }
            let (exchanged, current) = windows[index].weakCompareExchange(
                expected: state, desired: (now << 32) | (count + 1),
                successOrdering: .relaxed, failureOrdering: .relaxed)
            if exchanged { return true }
            state = current
        }
    }

    /// Main loop: windows that are full and older than `now` start over, so
    /// the next exit of their kind reads the clock again.
    func reopen(_ now: UInt64) {
        guard limit != 0 else { return }
        for kind in EventKind.allCases where kind.isRateLimited {
            let state = windows[Int(kind.rawValue)].load(ordering: .relaxed)
            if state & 0xffff_ffff >= limit && state >> 32 != now & 0xffff_ffff {
                _ = windows[Int(kind.rawValue)].compareExchange(
                    expected: state, desired: (now & 0xffff_ffff) << 32, ordering: .relaxed)
            }
        }
    }

    /// Counts one event of `kind` that was not delivered individually, in
    /// `vcpu`'s shard. True when it is the first of that shard since the
    /// last summary (time to wake the main loop so it schedules one).
    @inline(__always)
    func suppress(_ kind: EventKind, vcpu: UInt32 = 0) -> Bool {
        pending.increment(Int(kind.rawValue), shard: vcpu) == 0
    }

    /// Any thread: the count not yet summarised.
    func pendingCount(_ kind: EventKind) -> UInt64 {
        pending.total(Int(kind.rawValue))
    }

    /// Main loop: takes the count not yet summarised, leaving 0.
    func takePending(_ kind: EventKind) -> UInt64 {
        pending.take(Int(kind.rawValue))
    }
}
