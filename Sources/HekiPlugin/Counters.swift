import Synchronization

/// Exact counts of what the plugin saw, kept on the exit path with relaxed
/// atomics (each counter is independent; readers want totals, not order).
/// Noncopyable: the plugin holds it inline, one pointer load less per exit.
struct Counters: ~Copyable, Sendable {
    /// Events per (kind, register) for configure, denial and weak pinning
    /// that a migration's source counted (RateLimiter.slot's slots). The
    /// ones this plugin saw went out individually, counted by the queue
    /// (EventQueue.queued), or were held back, counted by the limiter:
    /// each event adds to one of the two.
    private let restored: InlineArray<6, Atomic<UInt64>>
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
        restored = InlineArray { _ in Atomic(0) }
    }

    /// A restored state's counts, added (the destination continues the source's totals).
    func add(_ kind: EventKind, _ register: ControlRegister, _ count: UInt64) {
        let slot = RateLimiter.slot(kind, register)
        guard slot < restored.count else { return }  // not a kind counted per register
        restored[slot].wrappingAdd(count, ordering: .relaxed)
    }

    /// Every event of `kind` (.configure, .denial or .weakPinning) on
    /// `register`: queued (`queued`, the queue's count), held back by
    /// `limiter`, or restored.
    func total(_ kind: EventKind, _ register: ControlRegister, queued: UInt64,
               heldBackBy limiter: borrowing RateLimiter) -> UInt64 {
        let slot = RateLimiter.slot(kind, register)
        let restored = slot < self.restored.count ? self.restored[slot].load(ordering: .relaxed) : 0
        return queued &+ restored &+ limiter.heldBackTotal(kind, register)
    }

    func addSummarised(_ kind: EventKind, _ count: UInt64) {
        summarised[Int(kind.rawValue)].wrappingAdd(count, ordering: .relaxed)
    }

    func summarisedTotal(_ kind: EventKind) -> UInt64 {
        summarised[Int(kind.rawValue)].load(ordering: .relaxed)
    }
}
