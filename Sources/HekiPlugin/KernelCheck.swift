/// What KVM_CHECK_EXTENSION answered, per capability number, in the order
/// asked. An answer is >= 0, or -errno when the ioctl failed.
struct KernelAnswers: Sendable, Equatable {
    struct Entry: Sendable, Equatable {
        let cap: UInt32
        let answer: Int32
    }
    private(set) var entries: [Entry] = []

    /// The valid reason mask (KVM_HEKI_EXIT_REASON_CR0 | _CR4): what a
    /// Heki capability answers, on a kernel built with Heki or without.
    static let hekiMask = Int32(ExitReasonMask.all.rawValue)

    mutating func record(_ cap: UInt32, _ answer: Int32) {
        if self.answer(cap) == nil { entries.append(Entry(cap: cap, answer: answer)) }
    }

    func answer(_ cap: UInt32) -> Int32? { entries.first { $0.cap == cap }?.answer }
    func answersLikeHeki(_ cap: UInt32) -> Bool { answer(cap) == KernelAnswers.hekiMask }

    /// "235=1 236=0 237=1", as the log lines name them.
    var spelling: String { entries.map { "\($0.cap)=\($0.answer)" }.joined(separator: " ") }

    /// `{"235":1,...}`'s members.
    func write(into object: inout JSONWriter) {
        for entry in entries { object.add(named: String(entry.cap), Int64(entry.answer)) }
    }
}

/// The verdict on the kernel: which numbering to enable, if any. Made once,
/// by heki_plugin_enable_caps, from KVM_CHECK_EXTENSION's answers.
enum KernelCheck: Sendable, Equatable {
    /// The kernel answers like `profile` (with the configuration's
    /// overrides): enable `numbers`.
    case heki(Profile, numbers: HekiNumbers)
    /// Neither profile's kernel (a stock kernel).
    case noHekiKernel
    /// Not the asked profile's kernel; `found` is what abi=auto would take.
    case mismatch(found: Profile?)

    /// The numbers to ask: the three that tell the profiles apart, and
    /// any capability override.
    static func capsToProbe(_ config: Configuration) -> [UInt32] {
        var caps = Profile.probedCaps
        for cap in [config.capConfigureOverride, config.capDenialOverride].compactMap({ $0 })
        where !caps.contains(cap) { caps.append(cap) }
        return caps
    }

    /// The decision table of heki_plugin_enable_caps (include/heki_plugin.h).
    init(config: Configuration, answers: KernelAnswers) {
        let found = Profile.all.first { $0.matches(answers) }
        guard let asked = config.abi else {
            self = found.map { .heki($0, numbers: config.numbers(for: $0)) } ?? .noHekiKernel
            return
        }
        let numbers = config.numbers(for: asked)
        // Overridden capabilities are the operator's numbering: each must
        // answer like a Heki capability; the version test does not apply.
        let verified = config.overridesCaps
            ? answers.answersLikeHeki(numbers.capConfigure) && answers.answersLikeHeki(numbers.capDenial)
            : asked.matches(answers)
        if verified {
            self = .heki(asked, numbers: numbers)
        } else {
            self = found == nil ? .noHekiKernel : .mismatch(found: found)
        }
    }

    var status: String {
        switch self {
        case .heki: "heki"
        case .noHekiKernel: "no-heki-kernel"
        case .mismatch: "mismatch"
        }
    }

    var profile: Profile? {
        if case let .heki(profile, _) = self { return profile }
        return nil
    }

    /// The log line's text after the subject.
    func describe(config: Configuration, answers: KernelAnswers) -> String {
        let asked = "KVM_CHECK_EXTENSION \(answers.spelling)"
        switch self {
        case let .heki(profile, numbers):
            let custom = config.overridesCaps ? ", capabilities \(numbers.capConfigure)/\(numbers.capDenial)" : ""
            return "Heki \(profile.name) kernel (\(asked)\(custom)), abi=\(config.abiName)"
        case .noHekiKernel:
            return "no Heki kernel (\(asked); Heki v2 answers \(Profile.v2.rule), v3 \(Profile.v3.rule)): "
                + "nothing enabled, no exit claimed"
        case let .mismatch(found):
            // A mismatch has an explicit abi: auto takes what it finds.
            let numbers = config.numbers(for: config.abi ?? .v2)
            let what = config.overridesCaps
                ? "capabilities \(numbers.capConfigure)/\(numbers.capDenial) do not answer 3"
                : "not a Heki \(config.abiName) kernel"
            return "\(what) (\(asked)\(found.map { "; a Heki \($0.name) kernel" } ?? "")): nothing enabled, no exit claimed"
        }
    }
}
