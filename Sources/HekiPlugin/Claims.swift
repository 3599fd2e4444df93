import Synchronization

/// One exit number the plugin claims: set once KVM enabled its capability.
/// Packed in one word so a vCPU reads number and mask with one atomic load:
/// the exit number in the high half, `claimedBit`, the granted mask.
struct Claim: RawRepresentable, Equatable {
    let rawValue: UInt64
    private static let claimedBit: UInt64 = 1 << 31

    /// Nothing claimed: every exit of this kind is the host's.
    static let none = Claim(rawValue: 0)

    init(rawValue: UInt64) { self.rawValue = rawValue }

    init(exit: UInt32, granted: ExitReasonMask) {
        rawValue = UInt64(exit) << 32 | Claim.claimedBit | (granted.rawValue & ExitReasonMask.all.rawValue)
    }

    var isClaimed: Bool { rawValue & Claim.claimedBit != 0 }
    var exit: UInt32? { isClaimed ? UInt32(truncatingIfNeeded: rawValue >> 32) : nil }
    var granted: ExitReasonMask { ExitReasonMask(rawValue: rawValue & ExitReasonMask.all.rawValue) }

    /// One compare: the exit number and the claimed bit together.
    @inline(__always) func claims(_ number: UInt32) -> Bool {
        rawValue >> 31 == UInt64(number) << 1 | 1
    }

    /// The exit number of a claim known to be claimed (it matched an exit).
    @inline(__always) var claimedExit: UInt32 { UInt32(truncatingIfNeeded: rawValue >> 32) }
}

/// What heki_plugin_enable_caps made of each exit kind: the claim (exit
/// number and granted mask, one word) and KVM's result. The one owner of
/// both: written on the main loop, read by every exit with one atomic load.
struct ExitClaims: ~Copyable {
    private let claims: InlineArray<2, Atomic<UInt64>>
    /// What KVM_ENABLE_CAP returned; `notReported` before.
    private let results: InlineArray<2, Atomic<Int64>>
    private static let notReported = Int64.min

    init() {
        claims = InlineArray { _ in Atomic(Claim.none.rawValue) }
        results = InlineArray { _ in Atomic(ExitClaims.notReported) }
    }

    @inline(__always)
    func claim(_ kind: ExitKind) -> Claim {
        Claim(rawValue: claims[kind.rawValue].load(ordering: .acquiring))
    }

    /// The claimed exit numbers, for the renderer.
    func exits() -> ClaimedExits {
        ClaimedExits(configure: claim(.configure).claimedExit, denial: claim(.denial).claimedExit)
    }

    /// KVM_ENABLE_CAP of `kind` returned `result`; 0 claims `numbers`' exit
    /// with the `granted` mask.
    func record(_ kind: ExitKind, result: Int32, numbers: HekiNumbers, granted: ExitReasonMask) {
        results[kind.rawValue].store(Int64(result), ordering: .relaxed)
        if result == 0 {
            claims[kind.rawValue].store(Claim(exit: numbers.exit(kind), granted: granted).rawValue, ordering: .releasing)
        }
    }

    /// KVM's result for `kind`; nil before it was asked.
    func result(_ kind: ExitKind) -> Int64? {
        let result = results[kind.rawValue].load(ordering: .relaxed)
        return result == ExitClaims.notReported ? nil : result
    }
}

/// The exit number of each kind's claim (0 while unclaimed): a configure or
/// denial event's "exit-reason", which its record does not carry.
struct ClaimedExits {
    var configure: UInt32 = 0
    var denial: UInt32 = 0
}
