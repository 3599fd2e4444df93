import CBridge

/// One KVM_RUN exit, as the plugin sees it: decoding of the kvm_run union in
/// one place (the payload: docs/HEKI-ABI.md, "The two exits"). Like kvm-ioctls' `VcpuExit`, an exit that is not ours comes back
/// as `.foreign` for the host to handle.
enum DecodedExit: Equatable {
    /// `KVM_EXIT_HEKI_CONFIGURE`: `pinned` are the bits this call pinned
    /// (`cr_pinned`, after the kernel's host masking), not the running total.
    case configure(ControlRegister, pinned: UInt64)
    /// `KVM_EXIT_HEKI_DENIAL`: `value` is the whole value the guest tried to
    /// write (`cr_value`).
    case denial(ControlRegister, value: UInt64)
    /// A claimed exit number whose payload is not valid: not taken.
    /// `register` is the one `reason` names, when it names exactly one.
    case malformed(ExitKind, reason: UInt64, register: ControlRegister?, problem: MalformedProblem)
    /// Any exit number the plugin does not claim.
    case foreign
}

/// Why a claimed exit number's payload was not taken.
enum MalformedProblem: UInt8, Sendable {
    /// `reason` is not exactly one of the KVM_HEKI_EXIT_REASON_* bits.
    case reasonNotOneKnownBit = 0
    /// One known bit, but not one the host asked KVM to exit for.
    case registerNotEnabled = 2

    var name: String {
        switch self {
        case .reasonNotOneKnownBit: "reason-not-one-known-bit"
        case .registerNotEnabled: "register-not-enabled"
        }
    }
}

/// Decodes `run` against the two claims (configure, denial). An exit
/// number nobody claimed is the host's: on a kernel without Heki, or before
/// the capability was enabled, 39-41 are other exits (MEMORY_FAULT, TDX).
/// Reads each kvm_run field once.
@inline(__always)
func decodeExit(_ run: OpaquePointer, configure: Claim, denial: Claim) -> DecodedExit {
    let number = cbridge_exit_reason(run)
    // One payload decode per kind, each with its kind known: the caller's
    // switch then follows the branch taken here without comparing again.
    if configure.claims(number) { return decodePayload(run, .configure, granted: configure.granted) }
    if denial.claims(number) { return decodePayload(run, .denial, granted: denial.granted) }
    return .foreign
}

/// The payload of a claimed exit of `kind`.
@inline(__always)
private func decodePayload(_ run: OpaquePointer, _ kind: ExitKind, granted: ExitReasonMask) -> DecodedExit {
    let payload = cbridge_heki_payload(run)
    guard let register = ControlRegister(reason: payload.reason) else {
        return .malformed(kind, reason: payload.reason, register: nil, problem: .reasonNotOneKnownBit)
    }
    guard granted.contains(register) else {
        return .malformed(kind, reason: payload.reason, register: register, problem: .registerNotEnabled)
    }
    return kind == .configure
        ? .configure(register, pinned: payload.value)
        : .denial(register, value: payload.value)
}
