/// The policy and numbering a VM's plugin was started with: the parsed
/// form of its key=value options (README.md, "Options").
struct Configuration: Sendable {
    /// abi=v2|v3; nil for abi=auto: the kernel's answers pick the profile.
    var abi: Profile? = nil
    /// exit-*, cap-*: numbers replacing the profile's (only with an
    /// explicit abi).
    var exitConfigureOverride: UInt32? = nil
    var exitDenialOverride: UInt32? = nil
    var capConfigureOverride: UInt32? = nil
    var capDenialOverride: UInt32? = nil
    var configureExits: ExitReasonMask = .all
    var denialExits: ExitReasonMask = .all
    /// on-denial[-crN], on-weak-pinning, require-crN: the policy at start
    /// (the one in force is the plugin's LivePolicy).
    var policy = Policy()
    /// Seconds from heki_plugin_start to the boot judgement of required
    /// pins; nil: pin-deadline=off.
    var pinDeadline: UInt32? = 60
    var vmName: String? = nil
    var auditLogPath: String? = nil
    var rateLimit: UInt32 = 100
    var requireCaps = false
    /// on-reset: what a reset of a pinned VM becomes (Reset.swift).
    var onReset = ResetRule.poweroff

    var abiName: String { abi?.name ?? "auto" }
    var overridesCaps: Bool { capConfigureOverride != nil || capDenialOverride != nil }

    /// `profile`'s numbers with the overrides applied.
    func numbers(for profile: Profile) -> HekiNumbers {
        HekiNumbers(exitConfigure: exitConfigureOverride ?? profile.numbers.exitConfigure,
                    exitDenial: exitDenialOverride ?? profile.numbers.exitDenial,
                    capConfigure: capConfigureOverride ?? profile.numbers.capConfigure,
                    capDenial: capDenialOverride ?? profile.numbers.capDenial)
    }

    func capMask(_ kind: ExitKind) -> ExitReasonMask {
        kind == .configure ? configureExits : denialExits
    }
}
