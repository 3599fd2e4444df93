/// The control registers Heki pins, as `reason` bits of the exit payload.
///
/// Each case stands for one `KVM_HEKI_EXIT_REASON_*` bit of the patch's uapi.
enum ControlRegister: UInt8, CaseIterable, Sendable {
    /// `KVM_HEKI_EXIT_REASON_CR0` (1 << 0).
    case cr0 = 0
    /// `KVM_HEKI_EXIT_REASON_CR4` (1 << 1).
    case cr4 = 1

    /// The register's bit in a payload `reason` and in a capability mask.
    @inline(__always) var reasonBit: UInt64 { 1 << UInt64(rawValue) }

    /// The register a payload names, when `reason` is exactly one known bit.
    /// One compare: 1 and 2 are the bits, and the bit less one is the raw value.
    @inline(__always) init?(reason: UInt64) {
        guard reason &- 1 < 2 else { return nil }
        self.init(rawValue: UInt8(truncatingIfNeeded: reason &- 1))
    }

    var name: String { self == .cr0 ? "cr0" : "cr4" }

    /// The architectural names of the register's bits.
    var bitNames: BitNames { self == .cr0 ? CR0.names : CR4.names }
}

/// One value per register.
struct RegisterPair: Equatable, Sendable {
    var cr0: UInt64 = 0
    var cr4: UInt64 = 0

    subscript(register: ControlRegister) -> UInt64 {
        get { register == .cr0 ? cr0 : cr4 }
        set { if register == .cr0 { cr0 = newValue } else { cr4 = newValue } }
    }

    var isEmpty: Bool { cr0 | cr4 == 0 }
}

/// A mask of `KVM_HEKI_EXIT_REASON_*` bits: what a capability asks KVM for.
struct ExitReasonMask: OptionSet, Sendable {
    let rawValue: UInt64
    static let cr0 = ExitReasonMask(rawValue: 1 << 0)
    static let cr4 = ExitReasonMask(rawValue: 1 << 1)
    static let all: ExitReasonMask = [.cr0, .cr4]

    @inline(__always) func contains(_ register: ControlRegister) -> Bool { rawValue & register.reasonBit != 0 }

    /// "cr0", "cr4", "cr0+cr4" or "none", as the options spell it.
    var spelling: String {
        let parts = ControlRegister.allCases.filter { contains($0) }.map(\.name)
        return parts.isEmpty ? "none" : parts.joined(separator: "+")
    }
}
