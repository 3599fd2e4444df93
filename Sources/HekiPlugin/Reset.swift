import CHekiPlugin

/// Why the VMM resets the VM; `HekiResetCause` in C.
enum ResetCause: UInt32, CaseIterable, Sendable {
    /// `HEKI_RESET_CAUSE_GUEST`: a reboot or a triple fault of the guest.
    case guest = 0
    /// `HEKI_RESET_CAUSE_HOST`: the operator or the management layer.
    case host = 1
    /// `HEKI_RESET_CAUSE_PANIC`: a reset verdict or a panic action.
    case panic = 2
    /// `HEKI_RESET_CAUSE_OTHER`: anything else (and any unknown value).
    case other = 3

    init(_ cause: HekiResetCause) { self = ResetCause(rawValue: cause.rawValue) ?? .other }

    var name: String {
        switch self {
        case .guest: "guest"
        case .host: "host"
        case .panic: "panic"
        case .other: "other"
        }
    }
}

/// on-reset: what a reset of a pinned VM becomes. KVM keeps a VM's pins
/// for its life and no ioctl clears them, so a reset in place boots the
/// guest again under its old pins: firmware and early boot write CR0
/// without WP, that write is denied, and the guest faults in boot code.
enum ResetRule: String, CaseIterable, Sendable {
    /// The VM powers off: a fresh VM has no pins (the management layer starts it).
    case poweroff
    /// The VMM ends with a failure status.
    case exit
    /// The RFC: reset in place, pins (and the ledger) kept.
    case keepPins = "keep-pins"

    var verdict: Verdict {
        switch self {
        case .poweroff: .poweroff
        case .exit: .exit
        case .keepPins: .reset
        }
    }
}

/// HEKI_RESET: a reset of a pinned VM and what it became.
struct ResetReport: Sendable {
    var cause: ResetCause
    /// The ledger's pins.
    var pinned: RegisterPair
    /// Registers whose pins the plugin cannot see (no configure exits
    /// granted on a Heki kernel): the VM is taken as pinned.
    var unseen: [ControlRegister]
    var rule: ResetRule
}

extension Plugin {
    /// heki_plugin_reset: the verdict the VMM applies instead of a reset.
    /// Main loop thread.
    func reset(cause: ResetCause) -> Verdict {
        let pinned = enforcedPins
        // On a Heki kernel, a register without configure exits may hold
        // pins the ledger never saw: safe means taking it as pinned.
        let granted = claim(.configure).granted
        let unseen = verifiedNumbers == nil ? [] : ControlRegister.allCases.filter { !granted.contains($0) }
        guard !pinned.isEmpty || !unseen.isEmpty else {
            forgetRestoredPins()
            return .reset
        }
        let verdict = config.onReset.verdict
        if verdict == .reset { forgetRestoredPins() }
        // The exits' events first: they say how the VM got its pins. A
        // callback may free the plugin: nothing touches self after this.
        flush(then: .reset(ResetReport(cause: cause, pinned: pinned, unseen: unseen, rule: config.onReset)))
        return verdict
    }

    /// A reset in place starts a new boot: pins restored from a migration
    /// source described the guest that is gone (this kernel never enforced
    /// them), so query and the next migration stop carrying them.
    private func forgetRestoredPins() {
        migration.setRestored(RegisterPair(cr0: 0, cr4: 0))
    }
}
