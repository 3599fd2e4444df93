import CHekiPlugin

/// heki_plugin_query: a JSON snapshot of profile, numbers, policy, pins and
/// counters, as a malloc'ed C string. Reads only atomics and the immutable
/// configuration, so any thread may ask; written by the byte writer, into
/// a buffer of its own (no String per member).
extension Plugin {
    /// Room for the default document (about 1.3 KB); a long vm-name or
    /// path grows it.
    static let queryCapacity = 2048

    func queryJSON() -> UnsafeMutablePointer<CChar>? {
        JSONWriter.document(capacity: Plugin.queryCapacity) { root in
            root.add("abi-version", UInt64(HEKI_PLUGIN_ABI_VERSION))
            let kernel = self.kernel
            root.add("abi", config.abiName)
            root.add("profile", kernel?.check.profile?.name)
            root.add("vm-name", config.vmName)

            root.add("kernel") { object in
                object.add("status", kernel?.check.status ?? (hostCanCheck ? "not-checked" : "host-cannot-check"))
                if let kernel {
                    object.add("answers") { answers in
                        for entry in kernel.answers.entries { answers.add(named: String(entry.cap), Int64(entry.answer)) }
                    }
                }
            }

            let numbers = verifiedNumbers
            root.add("exits") { exits in
                for kind in ExitKind.allCases {
                    exits.add(named: kind.name) { entry in
                        let claim = self.claim(kind)
                        entry.add("exit", numbers.map { Int64($0.exit(kind)) })
                        entry.add("capability", numbers.map { Int64($0.cap(kind)) })
                        entry.add("mask", hex: config.capMask(kind).rawValue)
                        entry.add("granted", hex: claim.isClaimed ? claim.granted.rawValue : nil)
                        entry.add("enabled", claim.isClaimed)
                        entry.add("kvm-result", capResult(kind))
                    }
                }
            }

            let policy = self.policy.current()
            root.add("policy") { object in
                object.add("on-denial", policy.onDenial.name)
                object.add("on-denial-cr0", policy.onDenial(.cr0).name)
                object.add("on-denial-cr4", policy.onDenial(.cr4).name)
                object.add("on-weak-pinning", policy.onWeakPinning.name)
                for register in ControlRegister.allCases {
                    object.add(named: "require-" + register.name, register.bitNames.names(of: policy.required(register)))
                }
                object.add("configure-exits", config.configureExits.spelling)
                object.add("denial-exits", config.denialExits.spelling)
                object.add("rate-limit", UInt64(config.rateLimit))
                object.add("require-caps", config.requireCaps)
                object.add("pin-deadline", config.pinDeadline.map { Int64($0) })
                object.add("audit-log", config.auditLogPath)
                object.add("migration", policy.migration.name)
            }

            let restoredOnly = restoredOnlyPins
            root.add("pins") { pins in
                for register in ControlRegister.allCases {
                    let value = ledger.pins(register)
                    pins.add(named: register.name) { entry in
                        entry.add("value", hex: value)
                        entry.add("bits", register.bitNames.names(of: value))
                        entry.add("missing-required", register.bitNames.names(of: policy.required(register) & ~value))
                        // Restored from a source, not enforced by this kernel ("value" is).
                        entry.add("restored-only", hex: restoredOnly[register])
                        entry.add("restored-only-bits", register.bitNames.names(of: restoredOnly[register]))
                    }
                }
            }

            root.add("migration") { object in
                object.add("status", migrationStatus().name)
                let source = migration.source.withLock { $0 }
                object.add("restored", source != nil)
                object.add("source-vm-name", source?.vmName)
                object.add("source-profile", source?.profile)
                object.add("source-migration", source?.migration.name)
            }

            root.add("counters") { counts in
                for (kind, key) in [(EventKind.configure, "configure"), (.denial, "denial"), (.weakPinning, "weak-pinning")] {
                    counts.add(named: key) { perRegister in
                        for register in ControlRegister.allCases {
                            perRegister.add(named: register.name, eventTotal(kind, register))
                        }
                    }
                }
                counts.add("malformed-exit", counters.malformedExits.load(ordering: .relaxed))
                counts.add("capability", counters.capabilityReports.load(ordering: .relaxed))
                counts.add("suppressed") { suppressed in
                    for kind in EventKind.allCases where kind != .suppressed {
                        suppressed.add(named: kind.eventName, counters.summarisedTotal(kind) &+ limiter.pendingCount(kind))
                    }
                }
                counts.add("delivered", counters.delivered.load(ordering: .relaxed))
                counts.add("audit-failures", counters.auditFailures.load(ordering: .relaxed))
            }
        }
    }
}
