/// A numbering of the Heki ABI. The RFC's versions gave the same exits and
/// capabilities different numbers (reference/HEKI-ABI.md), so numbers are
/// configuration, never constants.
struct Profile: Sendable {
    let name: String
    let exitConfigure: UInt32
    let exitDenial: UInt32
    let capConfigure: UInt32
    let capDenial: UInt32
    /// The CR4 bits the kernel accepts in a pin.
    let pinnableCR4: CR4

    /// RFC v2 (Nov 2023), the reference patch: exits 39/40, caps 235/236.
    static let v2 = Profile(name: "v2", exitConfigure: 39, exitDenial: 40,
                            capConfigure: 235, capDenial: 236,
                            pinnableCR4: [.smep, .smap, .umip, .fsgsbase, .cet])
    /// RFC v3 (May 2024): exits 40/41, caps 236/237, FRED pinnable.
    static let v3 = Profile(name: "v3", exitConfigure: 40, exitDenial: 41,
                            capConfigure: 236, capDenial: 237,
                            pinnableCR4: [.smep, .smap, .umip, .fsgsbase, .cet, .fred])

    static let all = [v2, v3]
}
