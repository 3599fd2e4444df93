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
/// vCPU's own held-back count says it is time to look at the clock (every
/// `clockSamplePeriod` held-back exits of that vCPU and register, in case
/// the loop is late). A held-back exit is one add to its vCPU's line, and
/// that add's old value is the count that says when.
/// The rest of the time the window's second comes from the coarse monotonic
/// clock (the clock tick, a few ns), which both sides read.
/// Noncopyable, so the plugin holds it inline: the exit path reaches it
/// without a pointer load.
struct RateLimiter: ~Copyable, Sendable {
    private let limit: UInt64
    /// Per kind: (window second << 32) | events let through in that window.
    private let windows: InlineArray<6, Atomic<UInt64>>
    /// Per kind (and register) and vCPU shard: events not delivered
    /// individually, ever. Never reset, so a held-back exit costs one add
    /// and the counts read from any thread only grow; what is pending is
    /// this minus `taken`.
    private let heldBack = ShardedCounts()
    /// Per kind: the held-back count the summaries took so far (main loop).
    private let taken: InlineArray<6, Atomic<UInt64>>
    /// Per kind: a vCPU woke the main loop for its held-back events since the
    /// last summary took them (set by vCPUs, cleared by `takePending`).
    private let armed: InlineArray<6, Atomic<Bool>>
    /// A full window is checked against the clock every this many held-back
    /// exits of one vCPU (a power of two).
    static let clockSamplePeriod: UInt64 = 64

    /// `limit` 0: no rate limit (every event individual; only a full queue
    /// coalesces).
    init(limit: UInt32) {
        self.limit = UInt64(limit)
        windows = InlineArray { _ in Atomic(0) }
        taken = InlineArray { _ in Atomic(0) }
        armed = InlineArray { _ in Atomic(false) }
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

    /// Whether one more event of `kind` may go out individually now. A full
    /// window is trusted without the clock: the main loop reopens it, and
    /// `suppress` has a vCPU look at the clock every `clockSamplePeriod`
    /// held-back exits.
    @inline(__always)
    func admit(_ kind: EventKind) -> Bool {
        guard limit != 0, kind.isRateLimited else { return true }
        let state = windows[Int(kind.rawValue)].load(ordering: .relaxed)
        if state & 0xffff_ffff >= limit { return false }
        return admit(Int(kind.rawValue), from: state)
    }

    /// A window with room, or one from an earlier second: the clock says
    /// which. Out of line: at most `limit` a second get here.
    @inline(never)
    private func admit(_ index: Int, from state: UInt64) -> Bool {
        var state = state
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
        for kind in EventKind.allCases where kind.isRateLimited { reopen(Int(kind.rawValue), now) }
    }

    private func reopen(_ index: Int, _ now: UInt64) {
        let state = windows[index].load(ordering: .relaxed)
        if state & 0xffff_ffff >= limit && state >> 32 != now & 0xffff_ffff {
            _ = windows[index].compareExchange(expected: state, desired: (now & 0xffff_ffff) << 32, ordering: .relaxed)
        }
    }

    /// A vCPU's look at the clock in a storm, in case the main loop is
    /// late to reopen a full window. Out of line: once per
    /// `clockSamplePeriod` held-back exits of a vCPU.
    @inline(never)
    private func sampleClock(_ kind: EventKind) {
        guard limit != 0, kind.isRateLimited else { return }
        reopen(Int(kind.rawValue), RateLimiter.currentWindow())
    }

    /// The held-back counts' slot of `kind` (and `register`, for the kinds
    /// counted per register). HEKI_SUPPRESSED is never held back: the main
    /// loop makes it.
    @inline(__always)
    static func slot(_ kind: EventKind, _ register: ControlRegister?) -> Int {
        kind.rawValue <= EventKind.weakPinning.rawValue
            ? Int(kind.rawValue) &* 2 &+ Int(register?.rawValue ?? 0)
            : kind == .malformedExit ? 6 : 7
    }

    /// Counts one event of `kind` that was not delivered individually, in
    /// `vcpu`'s shard: one add. True when it is the first since the last
    /// summary took the count (time to wake the main loop so it schedules
    /// one); the flag is only read until then.
    @inline(__always)
    func suppress(_ kind: EventKind, register: ControlRegister? = nil, vcpu: UInt32 = 0) -> Bool {
        // Sequentially consistent with takePending's clear and loads: either
        // this sees the flag cleared, or that summary sees this count.
        let before = heldBack.increment(RateLimiter.slot(kind, register), shard: vcpu)
        if before & (RateLimiter.clockSamplePeriod - 1) == 0 { sampleClock(kind) }
        if armed[Int(kind.rawValue)].load(ordering: .sequentiallyConsistent) { return false }
        return arm(kind)
    }

    /// Out of line: once per kind and summary.
    @inline(never)
    private func arm(_ kind: EventKind) -> Bool {
        !armed[Int(kind.rawValue)].exchange(true, ordering: .sequentiallyConsistent)
    }

    /// Any thread: the held-back events of `kind` and `register`, ever.
    func heldBackTotal(_ kind: EventKind, _ register: ControlRegister) -> UInt64 {
        heldBack.total(RateLimiter.slot(kind, register))
    }

    /// The held-back events of `kind`, ever, over its registers.
    private func heldBackTotal(_ kind: EventKind) -> UInt64 {
        switch kind {
        case .configure, .denial, .weakPinning:
            ControlRegister.allCases.reduce(0) { $0 &+ heldBack.total(RateLimiter.slot(kind, $1)) }
        case .malformedExit, .capability, .suppressed:
            heldBack.total(RateLimiter.slot(kind, nil))
        }
    }

    /// Main loop: whether a vCPU held an event of `kind` back since the last
    /// summary took the count: one load, where `pendingCount` sums every
    /// shard. A vCPU adds to its count before it sets the flag and wakes the
    /// loop, so a count not yet flagged is flagged by the next dispatch.
    func mayHavePending(_ kind: EventKind) -> Bool {
        armed[Int(kind.rawValue)].load(ordering: .sequentiallyConsistent)
    }

    /// Any thread: the count not yet summarised.
    func pendingCount(_ kind: EventKind) -> UInt64 {
        // `taken` first: the totals read after it cover what it took.
        let taken = taken[Int(kind.rawValue)].load(ordering: .acquiring)
        return heldBackTotal(kind) &- taken
    }

    /// Main loop: takes the count not yet summarised, leaving 0.
    func takePending(_ kind: EventKind) -> UInt64 {
        let index = Int(kind.rawValue)
        armed[index].store(false, ordering: .sequentiallyConsistent)
        let total = heldBackTotal(kind)
        let count = total &- taken[index].load(ordering: .relaxed)
        taken[index].store(total, ordering: .releasing)
        return count
    }
}
