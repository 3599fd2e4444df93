/// The kinds of event the plugin reports (README.md, "Events").
enum EventKind: UInt8, CaseIterable, Sendable {
    case configure = 0
    case denial = 1
    case weakPinning = 2
    case malformedExit = 3
    case capability = 4
    case suppressed = 5

    var eventName: String {
        switch self {
        case .configure: "HEKI_CONFIGURE"
        case .denial: "HEKI_DENIAL"
        case .weakPinning: "HEKI_WEAK_PINNING"
        case .malformedExit: "HEKI_MALFORMED_EXIT"
        case .capability: "HEKI_CAPABILITY"
        case .suppressed: "HEKI_SUPPRESSED"
        }
    }

    /// Kinds a guest can trigger at will: rate-limited and coalesced.
    static let rateLimited: [EventKind] = [.configure, .denial, .weakPinning, .malformedExit]
    @inline(__always) var isRateLimited: Bool { rawValue <= EventKind.malformedExit.rawValue }
}

/// One event as a vCPU thread records it: fixed size and trivially copyable,
/// so writing it into the queue allocates nothing. The main loop renders it.
struct EventRecord: Sendable {
    var kind: EventKind
    /// ControlRegister raw value, or `noRegister`.
    var register: UInt8 = EventRecord.noRegister
    var verdict: Verdict = .resume
    /// MalformedProblem raw value; ExitKind for capability events;
    /// `atDeadline` for a weak pinning the pin deadline found (no vCPU).
    var detail: UInt8 = 0
    var vcpu: UInt32 = 0
    /// KVM exit number; capability number for HEKI_CAPABILITY.
    var number: UInt32 = 0
    /// configure: cr_pinned; denial: cr_value; weak pinning: required;
    /// malformed: payload reason; capability: mask asked.
    var value: UInt64 = 0
    /// The register's pins after (configure) or at (denial, weak) the exit.
    var pinned: UInt64 = 0
    /// denial: violated bits; weak pinning: missing bits; malformed: exit
    /// kind index; capability: KVM's result as Int64 bits.
    var extra: UInt64 = 0
    /// Wall clock at the exit, microseconds since the epoch.
    var timeMicros: Int64 = 0

    static let noRegister: UInt8 = 0xff
    static let atDeadline: UInt8 = 1
}
