import CHekiPlugin

/// The two Heki exits; `HekiExitKind` in C. The raw value indexes the
/// per-kind state (capability grants, results).
enum ExitKind: Int, CaseIterable, Sendable {
    /// `HEKI_EXIT_CONFIGURE`: KVM_EXIT_HEKI_CONFIGURE, the guest pinned bits.
    case configure = 0
    /// `HEKI_EXIT_DENIAL`: KVM_EXIT_HEKI_DENIAL, KVM refused a CR write.
    case denial = 1

    /// Nil for a value outside the C enum.
    init?(_ kind: HekiExitKind) {
        self.init(rawValue: Int(truncatingIfNeeded: kind.rawValue))
    }

    var name: String { self == .configure ? "configure" : "denial" }
}
