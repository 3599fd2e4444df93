/// The policy an exit is judged by: the options on-denial[-crN],
/// on-weak-pinning and require-crN (and migration=, which no exit reads).
/// The ledger's state comes in, the verdict goes out. Started from the
/// VMM's options; heki_plugin_set_policy may replace it while the VM runs
/// (LivePolicy).
struct Policy: Sendable, Equatable {
    /// A byte per verdict, its raw value + 1 (0: an override not given):
    /// on-denial, on-denial-cr0, on-denial-cr4, on-weak-pinning, then the
    /// denial verdict in force for cr0 and for cr4, resolved when set, so
    /// that an exit reads one byte. Three plain words: LivePolicy publishes
    /// them as they are.
    private var verdicts: UInt64 = 0
    var requireCR0: UInt64 = 0
    var requireCR4: UInt64 = 0

    init(onDenial: Verdict = .resume, onDenialCR0: Verdict? = nil, onDenialCR4: Verdict? = nil,
         onWeakPinning: Verdict = .resume, requireCR0: UInt64 = 0, requireCR4: UInt64 = 0) {
        self.onDenial = onDenial
        self.onDenialCR0 = onDenialCR0
        self.onDenialCR4 = onDenialCR4
        self.onWeakPinning = onWeakPinning
        self.requireCR0 = requireCR0
        self.requireCR4 = requireCR4
    }

    /// The words LivePolicy keeps, and back.
    var words: (UInt64, UInt64, UInt64) { (verdicts, requireCR0, requireCR4) }
    init(words: (UInt64, UInt64, UInt64)) { (verdicts, requireCR0, requireCR4) = words }

    var onDenial: Verdict {
        get { verdict(at: 0) ?? .resume }
        set { setVerdict(newValue, at: 0) }
    }
    /// on-denial-cr0, on-denial-cr4 when given; nil follows on-denial.
    var onDenialCR0: Verdict? {
        get { verdict(at: 1) }
        set { setVerdict(newValue, at: 1) }
    }
    var onDenialCR4: Verdict? {
        get { verdict(at: 2) }
        set { setVerdict(newValue, at: 2) }
    }
    var onWeakPinning: Verdict {
        get { verdict(at: 3) ?? .resume }
        set { setVerdict(newValue, at: 3) }
    }

    @inline(__always) private func verdict(at byte: UInt64) -> Verdict? {
        let stored = Int32(truncatingIfNeeded: (verdicts >> (byte * 8)) & 0xff)
        return stored == 0 ? nil : Verdict(rawValue: stored - 1)
    }

    private mutating func setVerdict(_ verdict: Verdict?, at byte: UInt64) {
        func stored(_ verdict: Verdict?) -> UInt64 { verdict.map { UInt64(UInt8(truncatingIfNeeded: $0.rawValue + 1)) } ?? 0 }
        verdicts = verdicts & ~(0xff << (byte * 8)) | stored(verdict) << (byte * 8)
        // The verdicts in force per register (bytes 4 and 5).
        let base = verdicts & 0xff
        let cr0 = (verdicts >> 8) & 0xff, cr4 = (verdicts >> 16) & 0xff
        verdicts = verdicts & ~(0xffff << 32) | (cr0 != 0 ? cr0 : base) << 32 | (cr4 != 0 ? cr4 : base) << 40
    }

    /// migration= (byte 6, MigrationChoice's raw value): read by the main
    /// loop only, never on the exit path.
    var migration: MigrationChoice {
        get { MigrationChoice(rawValue: UInt8(truncatingIfNeeded: verdicts >> 48)) ?? .block }
        set { verdicts = verdicts & ~(0xff << 48) | UInt64(newValue.rawValue) << 48 }
    }

    /// The keys heki_plugin_set_policy accepts: the ones this type holds.
    static let keys = ["on-denial", "on-denial-cr0", "on-denial-cr4", "on-weak-pinning", "require-cr0", "require-cr4",
                       "migration"]

    /// Bits of `register` the guest must pin (require-cr0, require-cr4).
    @inline(__always) func required(_ register: ControlRegister) -> UInt64 {
        register == .cr0 ? requireCR0 : requireCR4
    }

    /// on-denial-crN when given, else on-denial.
    @inline(__always) func onDenial(_ register: ControlRegister) -> Verdict {
        verdict(at: register == .cr0 ? 4 : 5) ?? .resume
    }

    /// A pin: resume, unless bits required of that register are still not
    /// pinned after it (`missing`): then on-weak-pinning.
    @inline(__always)
    func judgePin(on register: ControlRegister, pinnedNow: UInt64) -> (verdict: Verdict, missing: UInt64) {
        ExitPolicy(self, register).judgePin(pinnedNow: pinnedNow)
    }

    /// A refused write: the register's denial verdict (the bits it would
    /// have cleared are `DenialEvent.violated`, from the plugin's ledger:
    /// KVM has no read-back of its pins).
    @inline(__always)
    func judgeDenial(on register: ControlRegister) -> Verdict { onDenial(register) }

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
        if migration != other.migration { changed.append("migration") }
        return changed
    }
}

/// What an exit of one register needs from the policy, in one word, so a
/// vCPU reads it with one load (LivePolicy.exitPolicy): the register's
/// required bits (bits 0-47: every architectural CR0 and CR4 bit is below
/// 48), on-weak-pinning (byte 6) and the register's denial verdict in force
/// (byte 7), each as its raw value + 1.
struct ExitPolicy: RawRepresentable, Sendable {
    let rawValue: UInt64
    static let requiredBits: UInt64 = (1 << 48) - 1

    init(rawValue: UInt64) { self.rawValue = rawValue }

    init(_ policy: Policy, _ register: ControlRegister) {
        func byte(_ verdict: Verdict) -> UInt64 { UInt64(unsafeBitCast(verdict, to: UInt8.self)) }
        rawValue = policy.required(register) & ExitPolicy.requiredBits
            | byte(policy.onWeakPinning) << 48 | byte(policy.onDenial(register)) << 56
    }

    @inline(__always) var required: UInt64 { rawValue & ExitPolicy.requiredBits }
    @inline(__always) var onWeakPinning: Verdict { ExitPolicy.verdict(rawValue >> 48) }
    @inline(__always) var onDenial: Verdict { ExitPolicy.verdict(rawValue >> 56) }

    /// A verdict byte is the Verdict itself, as Swift stores it: written
    /// only by `init(_:_:)`, from a Verdict, so read back without a check.
    @inline(__always) private static func verdict(_ byte: UInt64) -> Verdict {
        unsafeBitCast(UInt8(truncatingIfNeeded: byte), to: Verdict.self)
    }

    /// Policy.judgePin for this register.
    @inline(__always)
    func judgePin(pinnedNow: UInt64) -> (verdict: Verdict, missing: UInt64) {
        let missing = required & ~pinnedNow
        return (missing == 0 ? .resume : onWeakPinning, missing)
    }

    /// Policy.judgeDenial for this register.
    @inline(__always)
    func judgeDenial() -> Verdict { onDenial }
}
