import CGLib
import Synchronization

/// Per event kind: lets `limit` events a second through individually and
/// counts the rest, exactly, for HEKI_SUPPRESSED summaries. Lock-free; a vCPU
/// never waits on it.
final class RateLimiter: Sendable {
    private let limit: UInt64
    /// Per kind: (window second << 32) | events let through in that window.
    private let windows: InlineArray<6, Atomic<UInt64>>
    /// Per kind: events not delivered individually since the last summary.
    private let pending: InlineArray<6, Atomic<UInt64>>

    /// `limit` 0: no rate limit (every event individual; only a full queue
    /// coalesces).
    init(limit: UInt32) {
        self.limit = UInt64(limit)
        windows = InlineArray { _ in Atomic(0) }
        pending = InlineArray { _ in Atomic(0) }
    }

    /// The current window: whole seconds of the monotonic clock.
    @inline(__always)
    static func currentWindow() -> UInt64 { UInt64(truncatingIfNeeded: g_get_monotonic_time()) / 1_000_000 }

    /// Whether one more event of `kind` may go out individually now.
    @inline(__always)
    func admit(_ kind: EventKind) -> Bool {
        guard limit != 0, kind.isRateLimited else { return true }
        let index = Int(kind.rawValue)
        let now = RateLimiter.currentWindow() & 0xffff_ffff
        var state = windows[index].load(ordering: .relaxed)
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

    /// Counts one event of `kind` that was not delivered individually.
    /// True when it is the first since the last summary (time to wake the
    /// main loop so it schedules one).
    @inline(__always)
    func suppress(_ kind: EventKind) -> Bool {
        pending[Int(kind.rawValue)].wrappingAdd(1, ordering: .relaxed).oldValue == 0
    }

    /// Any thread: the count not yet summarised.
    func pendingCount(_ kind: EventKind) -> UInt64 {
        pending[Int(kind.rawValue)].load(ordering: .relaxed)
    }

    /// Main loop: takes the count not yet summarised, leaving 0.
    func takePending(_ kind: EventKind) -> UInt64 {
        pending[Int(kind.rawValue)].exchange(0, ordering: .relaxed)
    }
}
