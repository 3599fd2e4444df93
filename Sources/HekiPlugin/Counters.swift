import Synchronization

/// Exact counts of what the plugin saw, kept on the exit path with relaxed
/// atomics (each counter is independent; readers want totals, not order).
/// Noncopyable: the plugin holds it inline, one pointer load less per exit.
struct Counters: ~Copyable, Sendable {
    /// Events per (kind, register) for configure, denial and weak pinning
    /// that went out individually (queued), per vCPU shard; the rest are
    /// the limiter's held-back counts. Each event adds to one of the two.
    private let perRegister = ShardedCounts()
    let malformedExits = Atomic<UInt64>(0)
    let capabilityReports = Atomic<UInt64>(0)
    /// Per event kind: counts already reported in HEKI_SUPPRESSED.
    private let summarised: InlineArray<6, Atomic<UInt64>>
    /// Events handed to the host (event callback, audit log, log).
    let delivered = Atomic<UInt64>(0)
    /// Audit lines that could not be written.
    let auditFailures = Atomic<UInt64>(0)

    init() {
        summarised = InlineArray { _ in Atomic(0) }
    }

    /// One event of `kind` (.configure, .denial or .weakPinning) went out
    /// individually; `vcpu` picks the shard.
    @inline(__always)
    func countQueued(_ kind: EventKind, _ register: ControlRegister?, vcpu: UInt32) {
        perRegister.increment(RateLimiter.slot(kind, register), shard: vcpu)
    }

    /// A restored state's counts, added (the destination continues the source's totals).
    func add(_ kind: EventKind, _ register: ControlRegister, _ count: UInt64) {
        perRegister.add(RateLimiter.slot(kind, register), count, shard: 0)
    }

    /// Every event of `kind` on `register`: queued, or held back by `limiter`.
    func total(_ kind: EventKind, _ register: ControlRegister, heldBackBy limiter: borrowing RateLimiter) -> UInt64 {
        perRegister.total(RateLimiter.slot(kind, register)) &+ limiter.heldBackTotal(kind, register)
    }

    func addSummarised(_ kind: EventKind, _ count: UInt64) {
        summarised[Int(kind.rawValue)].wrappingAdd(count, ordering: .relaxed)
    }

    func summarisedTotal(_ kind: EventKind) -> UInt64 {
        summarised[Int(kind.rawValue)].load(ordering: .relaxed)
    }
}
