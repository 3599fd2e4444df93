/// The policy and numbering a VM's plugin was started with: the parsed
/// form of its key=value options (DESIGN.md, "Options").
struct Configuration: Sendable {
    var profile: Profile = .v2
    var exitConfigure: UInt32 = Profile.v2.exitConfigure
    var exitDenial: UInt32 = Profile.v2.exitDenial
    var capConfigure: UInt32 = Profile.v2.capConfigure
    var capDenial: UInt32 = Profile.v2.capDenial
    var configureExits: ExitReasonMask = .all
    var denialExits: ExitReasonMask = .all
    var onDenial: Verdict = .resume
    var onDenialCR0: Verdict? = nil
    var onDenialCR4: Verdict? = nil
    var onWeakPinning: Verdict = .resume
    var requireCR0: UInt64 = 0
    var requireCR4: UInt64 = 0
    var vmName: String? = nil
    var auditLogPath: String? = nil
    var rateLimit: UInt32 = 100
    var requireCaps = false

    func exitNumber(_ kind: ExitKind) -> UInt32 {
        kind == .configure ? exitConfigure : exitDenial
    }

    func capNumber(_ kind: ExitKind) -> UInt32 {
        kind == .configure ? capConfigure : capDenial
    }

    func capMask(_ kind: ExitKind) -> ExitReasonMask {
        kind == .configure ? configureExits : denialExits
    }
}

