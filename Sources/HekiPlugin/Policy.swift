/// The policy an exit is judged by: the options on-denial[-crN],
/// on-weak-pinning and require-crN. The ledger's state comes in, the verdict
/// goes out. Started from the VMM's options; heki_plugin_set_policy may
/// replace it while the VM runs (LivePolicy).
struct Policy: Sendable, Equatable {
    var onDenial: Verdict = .resume
    /// on-denial-cr0, on-denial-cr4 when given; nil follows on-denial.
    var onDenialCR0: Verdict? = nil
    var onDenialCR4: Verdict? = nil
    var onWeakPinning: Verdict = .resume
    var requireCR0: UInt64 = 0
    var requireCR4: UInt64 = 0

    /// The keys heki_plugin_set_policy accepts: the ones this type holds.
    static let keys = ["on-denial", "on-denial-cr0", "on-denial-cr4", "on-weak-pinning", "require-cr0", "require-cr4"]

    /// Bits of `register` the guest must pin (require-cr0, require-cr4).
    @inline(__always) func required(_ register: ControlRegister) -> UInt64 {
        register == .cr0 ? requireCR0 : requireCR4
    }

    /// on-denial-crN when given, else on-denial.
    @inline(__always) func onDenial(_ register: ControlRegister) -> Verdict {
        (register == .cr0 ? onDenialCR0 : onDenialCR4) ?? onDenial
    }

    /// A pin: resume, unless bits required of that register are still not
    /// pinned after it (`missing`): then on-weak-pinning.
    @inline(__always)
    func judgePin(on register: ControlRegister, pinnedNow: UInt64) -> (verdict: Verdict, missing: UInt64) {
        let missing = required(register) & ~pinnedNow
        return (missing == 0 ? .resume : onWeakPinning, missing)
    }

    /// A refused write: the register's denial verdict, and the pinned bits
    /// the write would have cleared. KVM has no read-back of its pins, so
    /// `pinned` is the plugin's ledger.
    @inline(__always)
    func judgeDenial(on register: ControlRegister, value: UInt64, pinned: UInt64) -> (verdict: Verdict, violated: UInt64) {
        (onDenial(register), pinned & ~value)
    }

    /// The keys whose value differs in `other` (an override that becomes
    /// or stops being given counts as changed), in `keys` order.
    func changedKeys(to other: Policy) -> [String] {
        var changed: [String] = []
        if onDenial != other.onDenial { changed.append("on-denial") }
        if onDenialCR0 != other.onDenialCR0 { changed.append("on-denial-cr0") }
        if onDenialCR4 != other.onDenialCR4 { changed.append("on-denial-cr4") }
        if onWeakPinning != other.onWeakPinning { changed.append("on-weak-pinning") }
        if requireCR0 != other.requireCR0 { changed.append("require-cr0") }
        if requireCR4 != other.requireCR4 { changed.append("require-cr4") }
        return changed
    }
}
