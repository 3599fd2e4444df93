/// The kinds of event a record carries (README.md, "Events"). The raw value
/// indexes the per-kind state: rate windows, pending counts, counters.
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
    @inline(__always) var isRateLimited: Bool { rawValue <= EventKind.malformedExit.rawValue }
}

// The payloads, one per kind: what the decode and the policy found, typed,
// carried unchanged to the renderer. Each is a few words and BitwiseCopyable
// (the compiler checks it), so a vCPU writes one into the queue without
// allocating or reference counting. A configure or denial does not carry its
// exit number: that is its kind's claim, set once before any exit of the
// kind is taken (ExitClaims), which the main loop reads when it renders.

/// HEKI_CONFIGURE: `bits` this call pinned (cr_pinned), `pinned` the
/// register's pins after it.
struct PinEvent: Sendable, BitwiseCopyable {
    var vcpu: UInt32
    var register: ControlRegister
    var bits: UInt64
    var pinned: UInt64
    var verdict: Verdict
}

/// HEKI_DENIAL: the whole `value` the guest tried to write, the pins it
/// met, and the pinned bits it would have cleared.
struct DenialEvent: Sendable, BitwiseCopyable {
    var vcpu: UInt32
    var register: ControlRegister
    var value: UInt64
    var pinned: UInt64
    var verdict: Verdict
    /// The pinned bits the write would have cleared: made by the main loop
    /// from the two above, not carried through the queue.
    var violated: UInt64 { pinned & ~value }
}

/// HEKI_WEAK_PINNING: bits required of `register` still missing, found at
/// a pin or the first denial (on `vcpu`) or by the pin deadline (`vcpu`
/// nil: the main loop's judgement, once per VM).
struct WeakPinningEvent: Sendable, BitwiseCopyable {
    var vcpu: UInt32?
    var register: ControlRegister
    var pinned: UInt64
    var required: UInt64
    var missing: UInt64
    var verdict: Verdict
}

/// HEKI_MALFORMED_EXIT: a claimed exit number whose payload was not taken.
/// `register` is the one `reason` names, when it names exactly one.
struct MalformedExitEvent: Sendable, BitwiseCopyable {
    var vcpu: UInt32
    var kind: ExitKind
    var exit: UInt32
    var reason: UInt64
    var register: ControlRegister?
    var problem: MalformedProblem
}

/// HEKI_CAPABILITY for one KVM_ENABLE_CAP of a verified profile.
struct CapabilityEvent: Sendable, BitwiseCopyable {
    var kind: ExitKind
    var capability: UInt32
    var mask: ExitReasonMask
    /// What KVM_ENABLE_CAP returned: 0, or -errno.
    var result: Int32
}

/// HEKI_SUPPRESSED: `count` events of `coalesced` held back since the
/// previous summary of that kind.
struct SuppressedEvent: Sendable, BitwiseCopyable {
    var coalesced: EventKind
    var count: UInt64
}

enum EventPayload: Sendable, BitwiseCopyable {
    case configure(PinEvent)
    case denial(DenialEvent)
    case weakPinning(WeakPinningEvent)
    case malformedExit(MalformedExitEvent)
    case capability(CapabilityEvent)
    case suppressed(SuppressedEvent)
}

/// One event as a vCPU (or the main loop) records it: its payload and the
/// wall clock of the exit, microseconds since the epoch.
struct EventRecord: Sendable, BitwiseCopyable {
    var payload: EventPayload
    var timeMicros: Int64 = 0

    var kind: EventKind {
        switch payload {
        case .configure: .configure
        case .denial: .denial
        case .weakPinning: .weakPinning
        case .malformedExit: .malformedExit
        case .capability: .capability
        case .suppressed: .suppressed
        }
    }
}

/// The events the main loop makes itself, outside the queue and the rate
/// limit: each said once, in order, at the next dispatch.
enum Announcement {
    /// HEKI_CAPABILITY for the kernel check of heki_plugin_enable_caps.
    case kernelCheck(KernelCheck, KernelAnswers)
    /// HEKI_CAPABILITY for a heki-plugin 1.0 host, which cannot have the
    /// kernel checked: nothing is enabled.
    case hostCannotCheck
    /// HEKI_POLICY for heki_plugin_set_policy: the keys whose value changed,
    /// and the whole policy in force after it.
    case policy(Policy, changed: [String])
    /// HEKI_MIGRATION: a migration blocker to hold or drop, a state saved,
    /// refused, restored or rejected.
    case migration(MigrationReport)

    /// HEKI_RESET for heki_plugin_reset of a pinned VM: what the reset became.
    case reset(ResetReport)

    /// Not an EventKind: never rate-limited or queued.
    static let policyEventName = "HEKI_POLICY"
    static let migrationEventName = "HEKI_MIGRATION"
    static let resetEventName = "HEKI_RESET"
}
