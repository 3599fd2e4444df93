/// The policy the VMM was started with, applied to one exit: the ledger's
/// state comes in, the verdict goes out.
struct Policy: Sendable {
    let config: Configuration
    /// onDenial(.cr0), onDenial(.cr4), resolved once: the exit path reads one byte.
    private let denialCR0: Verdict
    private let denialCR4: Verdict

    init(config: Configuration) {
        self.config = config
        denialCR0 = config.onDenialCR0 ?? config.onDenial
        denialCR4 = config.onDenialCR4 ?? config.onDenial
    }

    /// Bits of `register` the guest must pin (require-cr0, require-cr4).
    @inline(__always) func required(_ register: ControlRegister) -> UInt64 {
        register == .cr0 ? config.requireCR0 : config.requireCR4
    }

    /// on-denial-crN when given, else on-denial.
    @inline(__always) func onDenial(_ register: ControlRegister) -> Verdict {
        register == .cr0 ? denialCR0 : denialCR4
    }

    /// A pin: resume, unless bits required of that register are still not
    /// pinned after it (`missing`): then on-weak-pinning.
    @inline(__always)
    func judgePin(on register: ControlRegister, pinnedNow: UInt64) -> (verdict: Verdict, missing: UInt64) {
        let missing = required(register) & ~pinnedNow
        return (missing == 0 ? .resume : config.onWeakPinning, missing)
    }

    /// A refused write: the register's denial verdict, and the pinned bits
    /// the write would have cleared. KVM has no read-back of its pins, so
    /// `pinned` is the plugin's ledger.
    @inline(__always)
    func judgeDenial(on register: ControlRegister, value: UInt64, pinned: UInt64) -> (verdict: Verdict, violated: UInt64) {
        (onDenial(register), pinned & ~value)
    }
}
