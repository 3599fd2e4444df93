import CBridge

/// One KVM_RUN exit, as the plugin sees it: decoding of the kvm_run union in
/// one place. Like kvm-ioctls' `VcpuExit`, an exit that is not ours comes back
/// as `.foreign` for the host to handle.
enum DecodedExit: Equatable {
    /// `KVM_EXIT_HEKI_CONFIGURE`: `pinned` are the bits this call pinned
    /// (`cr_pinned`, after the kernel's host masking), not the running total.
    case configure(ControlRegister, pinned: UInt64)
    /// `KVM_EXIT_HEKI_DENIAL`: `value` is the whole value the guest tried to
    /// write (`cr_value`).
    case denial(ControlRegister, value: UInt64)
    /// A Heki exit number whose payload or state is not valid: not claimed.
    case malformed(ExitKind, reason: UInt64, problem: MalformedProblem)
    /// Any other exit number.
    case foreign
}

/// Why a Heki-numbered exit was not claimed.
enum MalformedProblem: UInt8, Sendable {
    /// `reason` is not exactly one of the KVM_HEKI_EXIT_REASON_* bits.
    case reasonNotOneKnownBit = 0
    /// The capability of this exit number was not enabled: on a kernel
    /// without Heki the number means something else.
    case capabilityNotEnabled = 1
    /// One known bit, but not one the host asked KVM to exit for.
    case registerNotEnabled = 2

    var name: String {
        switch self {
        case .reasonNotOneKnownBit: "reason-not-one-known-bit"
        case .capabilityNotEnabled: "capability-not-enabled"
        case .registerNotEnabled: "register-not-enabled"
        }
    }
}

/// The exit numbers and what KVM granted: everything decoding depends on.
struct ExitTable {
    let configureExit: UInt32
    let denialExit: UInt32

    /// Decodes `run`. `granted(kind)` is 0 while that capability is not
    /// enabled, else a non-zero word whose KVM_HEKI_EXIT_REASON_* bits are
    /// the mask KVM accepted. Reads each kvm_run field once.
    @inline(__always)
    func decode(_ run: OpaquePointer, granted: (ExitKind) -> UInt64) -> DecodedExit {
        let number = cbridge_exit_reason(run)
        let kind: ExitKind
        if number == configureExit {
            kind = .configure
        } else if number == denialExit {
            kind = .denial
        } else {
            return .foreign
        }
        let payload = cbridge_heki_payload(run)
        let grant = granted(kind)
        guard grant != 0 else {
            return .malformed(kind, reason: payload.reason, problem: .capabilityNotEnabled)
        }
        guard let register = ControlRegister(reason: payload.reason) else {
            return .malformed(kind, reason: payload.reason, problem: .reasonNotOneKnownBit)
        }
        guard grant & register.reasonBit != 0 else {
            return .malformed(kind, reason: payload.reason, problem: .registerNotEnabled)
        }
        return kind == .configure
            ? .configure(register, pinned: payload.value)
            : .denial(register, value: payload.value)
    }
}
