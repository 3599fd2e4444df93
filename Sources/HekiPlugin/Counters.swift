import Synchronization

/// Exact counts of what the plugin saw, kept on the exit path with relaxed
/// atomics (each counter is independent; readers want totals, not order).
final class Counters: Sendable {
    /// Exits per (kind, register) for configure, denial and weak pinning,
    /// per vCPU shard.
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

    private static func index(_ kind: EventKind, _ register: ControlRegister) -> Int {
        Int(kind.rawValue) * 2 + Int(register.rawValue)
    }

    /// `kind` is .configure, .denial or .weakPinning; `vcpu` picks the
    /// shard. Returns the shard's count before (a cheap, per-vCPU tick).
    @inline(__always) @discardableResult
    func count(_ kind: EventKind, _ register: ControlRegister, vcpu: UInt32 = 0) -> UInt64 {
        perRegister.increment(Counters.index(kind, register), shard: vcpu)
    }

    func total(_ kind: EventKind, _ register: ControlRegister) -> UInt64 {
        perRegister.total(Counters.index(kind, register))
    }

    func addSummarised(_ kind: EventKind, _ count: UInt64) {
        summarised[Int(kind.rawValue)].wrappingAdd(count, ordering: .relaxed)
    }

    func summarisedTotal(_ kind: EventKind) -> UInt64 {
        summarised[Int(kind.rawValue)].load(ordering: .relaxed)
    }
}
