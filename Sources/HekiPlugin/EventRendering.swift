import CBridge
import CGLib

/// An event ready for the host: rendered once, handed to every sink.
struct RenderedEvent {
    let name: String
    let data: String
    let level: HekiLogLevel
    let message: String
    let timeMicros: Int64
}

/// Turns records into the JSON data and log lines of README.md's "Events".
struct EventRenderer {
    let config: Configuration

    /// "vm NAME: " (printable), or "" without vm-name: what starts a log
    /// line that names no vCPU.
    var subjectPrefix: String { config.vmName.map { "vm \(Options.printable($0)): " } ?? "" }

    /// HEKI_CAPABILITY for the kernel check of heki_plugin_enable_caps.
    func renderKernelCheck(_ check: KernelCheck, answers: KernelAnswers) -> RenderedEvent {
        kernelEvent(status: check.status, profile: check.profile, answers: answers,
                    level: check.profile != nil ? HEKI_LOG_INFO : config.requireCaps ? HEKI_LOG_ERROR : HEKI_LOG_WARNING,
                    message: check.describe(config: config, answers: answers))
    }

    /// HEKI_CAPABILITY for a heki-plugin 1.0 host, which cannot have the
    /// kernel checked: nothing is enabled.
    func renderHostCannotCheck() -> RenderedEvent {
        kernelEvent(status: "host-cannot-check", profile: nil, answers: nil, level: HEKI_LOG_WARNING,
                    message: "the host gives no KVM_CHECK_EXTENSION answers (HekiHost.check_extension, "
                        + "heki-plugin 1.1): nothing enabled, no exit claimed")
    }

    private func kernelEvent(status: String, profile: Profile?, answers: KernelAnswers?, level: HekiLogLevel,
                             message: String) -> RenderedEvent {
        var data = JSONObject()
        if let name = config.vmName { data.add("vm-name", name) }
        data.add("abi", config.abiName)
        data.add("status", status)
        data.add("profile", profile?.name)
        if let answers { data.add("answers", answers.json) }
        data.add("required", config.requireCaps)
        return RenderedEvent(name: EventKind.capability.eventName, data: data.rendered, level: level,
                             message: "heki: " + subjectPrefix + message, timeMicros: Int64(g_get_real_time()))
    }

    /// HEKI_POLICY for heki_plugin_set_policy: the keys whose value
    /// changed, and the whole policy in force after it.
    func renderPolicy(_ policy: Policy, changed: [String]) -> RenderedEvent {
        var data = JSONObject()
        if let name = config.vmName { data.add("vm-name", name) }
        data.add("changed", changed)
        data.add("on-denial", policy.onDenial.name)
        data.add("on-denial-cr0", policy.onDenial(.cr0).name)
        data.add("on-denial-cr4", policy.onDenial(.cr4).name)
        data.add("on-weak-pinning", policy.onWeakPinning.name)
        var required: [String] = []
        for register in ControlRegister.allCases {
            let bits = policy.required(register)
            let names = register.bitNames.names(of: bits)
            data.add("require-" + register.name, hex: bits)
            data.add("require-" + register.name + "-bits", names)
            required.append("require-\(register.name) " + (names.isEmpty ? "none" : names.joined(separator: "+")))
        }
        let message = subjectPrefix + "policy " + (changed.isEmpty ? "set, unchanged" : "changed: " + changed.joined(separator: ", "))
            + "; now on-denial \(policy.onDenial.name), on-denial-cr0 \(policy.onDenial(.cr0).name), "
            + "on-denial-cr4 \(policy.onDenial(.cr4).name), on-weak-pinning \(policy.onWeakPinning.name), "
            + required.joined(separator: ", ")
        return RenderedEvent(name: EventRenderer.policyEventName, data: data.rendered, level: HEKI_LOG_INFO,
                             message: "heki: " + message, timeMicros: Int64(g_get_real_time()))
    }

    /// Not an EventKind: made on the main loop, never rate-limited or queued.
    static let policyEventName = "HEKI_POLICY"

    func render(_ record: EventRecord) -> RenderedEvent {
        var data = JSONObject()
        if let name = config.vmName { data.add("vm-name", name) }
        let register = ControlRegister(rawValue: record.register)
        let subject = (config.vmName.map { "vm \(Options.printable($0)) " } ?? "") + "vcpu \(record.vcpu)"
        let level: HekiLogLevel
        let message: String

        func bits(_ key: String, _ value: UInt64) {
            data.add(key, hex: value)
            data.add(key + "-bits", register?.bitNames.names(of: value) ?? [])
        }
        func names(_ value: UInt64) -> String {
            let list = register?.bitNames.names(of: value) ?? []
            return list.isEmpty ? "none" : list.joined(separator: "+")
        }

        // What a configure and a denial both carry: where, which exit, the
        // payload's value and the ledger's pins.
        func exitFields() {
            data.add("vcpu", record.vcpu)
            data.add("register", register?.name ?? "")
            data.add("exit-reason", record.number)
            bits("value", record.value)
            bits("pinned", record.pinned)
        }

        switch record.kind {
        case .configure:
            exitFields()
            data.add("verdict", record.verdict.name)
            level = HEKI_LOG_INFO
            message = "\(subject): guest pinned \(register?.name ?? "") \(names(record.value)) (pinned now \(names(record.pinned))), verdict \(record.verdict.name)"
        case .denial:
            exitFields()
            bits("violated", record.extra)
            data.add("verdict", record.verdict.name)
            level = HEKI_LOG_WARNING
            message = "\(subject): KVM denied a \(register?.name ?? "") write of 0x\(String(record.value, radix: 16)) clearing \(names(record.extra)), verdict \(record.verdict.name)"
        case .weakPinning where record.detail == EventRecord.atDeadline:
            let seconds = config.pinDeadline ?? 0
            data.add("register", register?.name ?? "")
            bits("pinned", record.pinned)
            bits("required", record.value)
            bits("missing", record.extra)
            data.add("deadline-seconds", seconds)
            data.add("verdict", record.verdict.name)
            level = HEKI_LOG_WARNING
            message = subjectPrefix + "weak pinning of \(register?.name ?? ""): \(names(record.extra)) required but not pinned \(seconds) s after start, verdict \(record.verdict.name)"
        case .weakPinning:
            data.add("vcpu", record.vcpu)
            data.add("register", register?.name ?? "")
            bits("pinned", record.pinned)
            bits("required", record.value)
            bits("missing", record.extra)
            data.add("verdict", record.verdict.name)
            level = HEKI_LOG_WARNING
            message = "\(subject): weak pinning of \(register?.name ?? ""): \(names(record.extra)) required but not pinned, verdict \(record.verdict.name)"
        case .malformedExit:
            let problem = MalformedProblem(rawValue: record.detail)?.name ?? "unknown"
            let kind = ExitKind(rawValue: Int(truncatingIfNeeded: record.extra))?.name ?? "unknown"
            data.add("vcpu", record.vcpu)
            if let register { data.add("register", register.name) }
            data.add("exit-reason", record.number)
            data.add("reason", hex: record.value)
            data.add("problem", problem)
            data.add("kind", kind)
            data.add("verdict", Verdict.notHeki.name)
            level = HEKI_LOG_WARNING
            message = "\(subject): exit \(record.number) (heki \(kind)) not claimed: \(problem), reason 0x\(String(record.value, radix: 16))"
        case .capability:
            let kind = ExitKind(rawValue: Int(record.detail)) ?? .configure
            let result = Int64(bitPattern: record.extra)
            let mask = ExitReasonMask(rawValue: record.value)
            data.add("kind", kind.name)
            data.add("capability", record.number)
            data.add("mask", hex: record.value)
            data.add("mask-bits", ControlRegister.allCases.filter { mask.contains($0) }.map(\.name))
            data.add("result", result)
            data.add("enabled", result == 0)
            data.add("required", config.requireCaps)
            level = result == 0 ? HEKI_LOG_INFO : (config.requireCaps ? HEKI_LOG_ERROR : HEKI_LOG_WARNING)
            message = subjectPrefix + "KVM_ENABLE_CAP \(record.number) (heki \(kind.name), mask \(mask.spelling)) "
                + (result == 0 ? "enabled" : "refused (\(result)); heki \(kind.name) exits will not be claimed")
        case .suppressed:
            let coalesced = EventKind(rawValue: record.detail)?.eventName ?? "unknown"
            data.add("event", coalesced)
            data.add("count", record.value)
            level = HEKI_LOG_WARNING
            message = subjectPrefix + "\(record.value) \(coalesced) events coalesced (rate limit \(config.rateLimit)/s)"
        }
        return RenderedEvent(name: record.kind.eventName, data: data.rendered,
                             level: level, message: "heki: " + message, timeMicros: record.timeMicros)
    }
}
