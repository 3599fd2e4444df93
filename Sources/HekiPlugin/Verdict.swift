import CHekiPlugin

/// What the host does with the VM after a Heki exit; `HekiVerdict` in C.
enum Verdict: Int32, CaseIterable, Sendable {
    /// `HEKI_VERDICT_NOT_HEKI`: not a (valid) Heki exit; the host handles it.
    case notHeki = -1
    /// `HEKI_VERDICT_RESUME`: re-enter KVM_RUN, KVM completes the exit.
    case resume = 0
    /// `HEKI_VERDICT_PAUSE`: stop the VM, keep it for inspection.
    case pause = 1
    /// `HEKI_VERDICT_POWEROFF`: orderly power-off.
    case poweroff = 2
    /// `HEKI_VERDICT_RESET`: system reset.
    case reset = 3
    /// `HEKI_VERDICT_EXIT`: terminate the VMM with a failure status.
    case exit = 4

    @inline(__always) var cValue: HekiVerdict { HekiVerdict(rawValue: rawValue) }

    /// The option and event spelling.
    var name: String {
        switch self {
        case .notHeki: "not-heki"
        case .resume: "resume"
        case .pause: "pause"
        case .poweroff: "poweroff"
        case .reset: "reset"
        case .exit: "exit"
        }
    }

    /// The verdicts a policy option may name.
    static let choosable: [Verdict] = [.resume, .pause, .poweroff, .reset, .exit]
}
