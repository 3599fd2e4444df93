/// A numbering of the Heki ABI. The RFC's versions gave the same exits and
/// capabilities different numbers, and upstream gave those numbers to other
/// features since (cap 237 is KVM_CAP_X86_APIC_BUS_CYCLES_NS, exit 39
/// KVM_EXIT_MEMORY_FAULT), so numbers are configuration, never constants,
/// and a profile is used only on a kernel that answers like it
/// (docs/HEKI-ABI.md, "The numbers changed").
struct Profile: Sendable, Equatable {
    let name: String
    let numbers: HekiNumbers
    /// The CR4 bits the kernel accepts in a pin.
    let pinnableCR4: CR4
    /// What another capability number answers on this version's kernel:
    /// what tells it from the other version.
    let neighbour: Neighbour

    /// RFC v2 (Nov 2023), the reference patch: exits 39/40, caps 235/236.
    /// Its kernel predates cap 237.
    static let v2 = Profile(name: "v2",
                            numbers: HekiNumbers(exitConfigure: 39, exitDenial: 40, capConfigure: 235, capDenial: 236),
                            pinnableCR4: [.smep, .smap, .umip, .fsgsbase, .cet],
                            neighbour: .notHeki(237))
    /// RFC v3 (May 2024): exits 40/41, caps 236/237, FRED pinnable. Its
    /// kernel has KVM_CAP_VM_TYPES at 235.
    static let v3 = Profile(name: "v3",
                            numbers: HekiNumbers(exitConfigure: 40, exitDenial: 41, capConfigure: 236, capDenial: 237),
                            pinnableCR4: [.smep, .smap, .umip, .fsgsbase, .cet, .fred],
                            neighbour: .vmTypes(235))

    static let all = [v2, v3]
    /// Every CR4 bit some profile can pin: what abi=auto accepts in require-cr4.
    static let anyPinnableCR4 = all.reduce(CR4()) { $0.union($1.pinnableCR4) }

    /// The capability numbers whose answers tell the profiles apart.
    static let probedCaps: [UInt32] = [235, 236, 237]

    /// Its two capabilities answer the Heki mask and its neighbour answers
    /// like this version's kernel.
    func matches(_ answers: KernelAnswers) -> Bool {
        answers.answersLikeHeki(numbers.capConfigure) && answers.answersLikeHeki(numbers.capDenial)
            && neighbour.matches(answers)
    }

    enum Neighbour: Sendable, Equatable {
        /// This number is no Heki capability here (v2: 237 did not exist).
        case notHeki(UInt32)
        /// KVM_CAP_VM_TYPES: a mask of VM types with KVM_X86_DEFAULT_VM
        /// (bit 0), which every x86 kernel with the capability runs.
        case vmTypes(UInt32)

        func matches(_ answers: KernelAnswers) -> Bool {
            switch self {
            case let .notHeki(cap): !answers.answersLikeHeki(cap)
            case let .vmTypes(cap): (answers.answer(cap) ?? 0) & 1 == 1
            }
        }

        var rule: String {
            switch self {
            case let .notHeki(cap): "\(cap)!=3"
            case let .vmTypes(cap): "\(cap) with bit 0"
            }
        }
    }

    /// "235=3 236=3 237!=3": the answers this profile needs, for messages.
    var rule: String {
        "\(numbers.capConfigure)=3 \(numbers.capDenial)=3 \(neighbour.rule)"
    }
}

/// The exit and capability numbers of one Heki numbering.
struct HekiNumbers: Sendable, Equatable {
    var exitConfigure: UInt32
    var exitDenial: UInt32
    var capConfigure: UInt32
    var capDenial: UInt32

    func exit(_ kind: ExitKind) -> UInt32 { kind == .configure ? exitConfigure : exitDenial }
    func cap(_ kind: ExitKind) -> UInt32 { kind == .configure ? capConfigure : capDenial }
}
