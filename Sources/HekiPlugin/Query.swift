import CHekiPlugin

/// heki_plugin_query: a JSON snapshot of profile, numbers, policy, pins and
/// counters. Reads only atomics and the immutable configuration, so any
/// thread may ask.
extension Plugin {
    func queryJSON() -> String {
        var root = JSONObject()
        root.add("abi-version", UInt64(HEKI_PLUGIN_ABI_VERSION))
        let kernel = self.kernel
        root.add("abi", config.abiName)
        root.add("profile", kernel?.check.profile?.name)
        root.add("vm-name", config.vmName)

        var kernelObject = JSONObject()
        kernelObject.add("status", kernel?.check.status ?? (hostCanCheck ? "not-checked" : "host-cannot-check"))
        if let kernel { kernelObject.add("answers", kernel.answers.json) }
        root.add("kernel", kernelObject)

        var exitsObject = JSONObject()
        let numbers = verifiedNumbers
        for kind in ExitKind.allCases {
            var entry = JSONObject()
            let claim = self.claim(kind)
            entry.add("exit", numbers.map { Int64($0.exit(kind)) })
            entry.add("capability", numbers.map { Int64($0.cap(kind)) })
            entry.add("mask", hex: config.capMask(kind).rawValue)
            entry.add("granted", hex: claim.isClaimed ? claim.granted.rawValue : nil)
            entry.add("enabled", claim.isClaimed)
            entry.add("kvm-result", capResult(kind))
            exitsObject.add(kind.name, entry)
        }
        root.add("exits", exitsObject)

        let policy = self.policy.current()
        var policyObject = JSONObject()
        policyObject.add("on-denial", policy.onDenial.name)
        policyObject.add("on-denial-cr0", policy.onDenial(.cr0).name)
        policyObject.add("on-denial-cr4", policy.onDenial(.cr4).name)
        policyObject.add("on-weak-pinning", policy.onWeakPinning.name)
        for register in ControlRegister.allCases {
            policyObject.add("require-" + register.name, register.bitNames.names(of: policy.required(register)))
        }
        policyObject.add("configure-exits", config.configureExits.spelling)
        policyObject.add("denial-exits", config.denialExits.spelling)
        policyObject.add("rate-limit", config.rateLimit)
        policyObject.add("require-caps", config.requireCaps)
        policyObject.add("pin-deadline", config.pinDeadline.map { Int64($0) })
        policyObject.add("audit-log", config.auditLogPath)
        policyObject.add("migration", policy.migration.name)
        root.add("policy", policyObject)

        var pins = JSONObject()
        for register in ControlRegister.allCases {
            let value = ledger.pins(register)
            var entry = JSONObject()
            entry.add("value", hex: value)
            entry.add("bits", register.bitNames.names(of: value))
            entry.add("missing-required", register.bitNames.names(of: policy.required(register) & ~value))
            // Restored from a source, not enforced by this kernel ("value" is).
            let restoredOnly = restoredOnlyPins[register]
            entry.add("restored-only", hex: restoredOnly)
            entry.add("restored-only-bits", register.bitNames.names(of: restoredOnly))
            pins.add(register.name, entry)
        }
        root.add("pins", pins)

        var migrationObject = JSONObject()
        migrationObject.add("status", migrationStatus().name)
        let source = migration.source.withLock { $0 }
        migrationObject.add("restored", source != nil)
        migrationObject.add("source-vm-name", source?.vmName)
        migrationObject.add("source-profile", source?.profile)
        migrationObject.add("source-migration", source?.migration.name)
        root.add("migration", migrationObject)

        var counts = JSONObject()
        for kind in [EventKind.configure, .denial, .weakPinning] {
            var perRegister = JSONObject()
            for register in ControlRegister.allCases { perRegister.add(register.name, counters.total(kind, register, heldBackBy: limiter)) }
            counts.add(kind == .configure ? "configure" : kind == .denial ? "denial" : "weak-pinning", perRegister)
        }
        counts.add("malformed-exit", counters.malformedExits.load(ordering: .relaxed))
        counts.add("capability", counters.capabilityReports.load(ordering: .relaxed))
        var suppressed = JSONObject()
        for kind in EventKind.allCases where kind != .suppressed {
            suppressed.add(kind.eventName, counters.summarisedTotal(kind) &+ limiter.pendingCount(kind))
        }
        counts.add("suppressed", suppressed)
        counts.add("delivered", counters.delivered.load(ordering: .relaxed))
        counts.add("audit-failures", counters.auditFailures.load(ordering: .relaxed))
        root.add("counters", counts)
        return root.rendered
    }
}
