import Testing
@testable import HekiPlugin

/// Every option of README.md's table ("Options"), good and bad values.
@Suite struct OptionsTests {
    private func parse(_ arguments: String...) throws -> Configuration {
        try Options.parse(arguments)
    }

    private func error(_ arguments: String...) -> String? {
        do {
            _ = try Options.parse(arguments)
            return nil
        } catch {
            return error.message
        }
    }

    @Test func omittedKeysTakeTheDocumentedDefaults() throws {
        let config = try parse()
        #expect(config.abi == nil && config.abiName == "auto", "the kernel's answers pick the profile")
        #expect(!config.overridesCaps)
        #expect(config.pinDeadline == 60)
        #expect(config.configureExits == .all && config.denialExits == .all)
        #expect(config.policy.onDenial == .resume && config.policy.onWeakPinning == .resume)
        #expect(config.policy.onDenial(.cr0) == .resume && config.policy.onDenial(.cr4) == .resume)
        #expect(config.policy.requireCR0 == 0 && config.policy.requireCR4 == 0)
        #expect(config.rateLimit == 100 && config.requireCaps == false)
        #expect(config.vmName == nil && config.auditLogPath == nil)
        #expect(config.onReset == .poweroff, "a reset of a pinned VM powers it off")
    }

    /// An option splits at its first '=' byte, as QEMU's do: a value may
    /// start with a combining mark (a Character search missed that '='),
    /// and may hold more '='; bit lists split at '+' bytes.
    @Test func optionsSplitAtTheFirstEqualsByte() throws {
        #expect(try parse("vm-name=\u{301}web=1").vmName == "\u{301}web=1")
        #expect(try parse("require-cr4=smep+smap").policy.requireCR4 == (CR4.smep.rawValue | CR4.smap.rawValue))
        #expect(error("require-cr4=smep+")?.hasPrefix("heki-plugin: require-cr4: '' is not a bit that can be required; use none or names joined by '+' among ") == true)
        #expect(error("vm-name") != nil)
    }

    @Test func onResetIsPoweroffExitOrKeepPins() throws {
        #expect(try parse("on-reset=exit").onReset == .exit)
        #expect(try parse("on-reset=keep-pins").onReset == .keepPins)
        #expect(try parse("on-reset=poweroff").onReset.verdict == .poweroff)
        #expect(throws: OptionError("on-reset", "'reset' is not one of poweroff, exit, keep-pins")) {
            try parse("on-reset=reset")
        }
        #expect(throws: OptionError("on-reset", "cannot change while the VM runs; the keys that can: "
                                    + Policy.keys.joined(separator: ", "))) {
            try Options.parsePolicy(["on-reset=exit"], onto: Policy(), config: Configuration())
        }
    }

    private func numbers(_ config: Configuration) -> [UInt32] {
        let numbers = config.numbers(for: config.abi ?? .v2)
        return [numbers.exitConfigure, numbers.exitDenial, numbers.capConfigure, numbers.capDenial]
    }

    @Test func explicitProfilesNameTheirNumbers() throws {
        let v3 = try parse("abi=v3")
        #expect(v3.abi == .v3 && numbers(v3) == [40, 41, 236, 237])
        let v2 = try parse("abi=v2")
        #expect(v2.abi == .v2 && numbers(v2) == [39, 40, 235, 236])
        #expect(try parse("abi=auto").abi == nil)
        #expect(error("abi=v4") == "heki-plugin: abi: 'v4' is not one of auto, v2, v3")
    }

    @Test func overridesApplyWhateverTheOrder() throws {
        let config = try parse("exit-configure=0x50", "abi=v3", "exit-denial=81", "cap-configure=300", "cap-denial=0x12d")
        #expect(config.abi == .v3 && config.overridesCaps)
        #expect(numbers(config) == [80, 81, 300, 301])
        #expect(!(try parse("abi=v2", "exit-denial=50")).overridesCaps, "an exit override keeps the profile's caps")
    }

    /// Under abi=auto the kernel picks the profile: an override of one of
    /// its numbers would override nobody knows what.
    @Test(arguments: ["exit-configure=80", "exit-denial=81", "cap-configure=300", "cap-denial=301"])
    func numberOverridesNeedAnExplicitProfile(_ option: String) {
        let key = String(option.prefix { $0 != "=" })
        #expect(error(option) == "heki-plugin: \(key): overrides a profile's number: name the profile with abi=v2|v3")
        #expect(error("abi=auto", option) != nil)
    }

    @Test(arguments: ["", "x", "-1", "+5", "0x", "4294967296", "0x1ffffffff", "1.5", " 4"])
    func badNumbers(_ value: String) {
        let message = error("abi=v2", "exit-configure=\(value)")
        #expect(message?.hasPrefix("heki-plugin: exit-configure: ") == true)
        #expect(message?.contains("decimal or 0x-hex") == true)
    }

    @Test func exitAndCapNumbersMustDiffer() {
        #expect(error("abi=v2", "exit-configure=40")?.contains("exit-denial") == true)
        #expect(error("abi=v3", "cap-denial=236")?.contains("cap-denial") == true)
    }

    @Test func pinDeadlineIsOffOrSecondsFromOneToADay() throws {
        #expect(try parse("pin-deadline=1").pinDeadline == 1)
        #expect(try parse("pin-deadline=86400").pinDeadline == 86_400)
        #expect(try parse("pin-deadline=off").pinDeadline == nil)
        for bad in ["0", "86401", "-1", "", "on", "1s"] {
            #expect(error("pin-deadline=\(bad)") == "heki-plugin: pin-deadline: '\(bad)' is not off or a number of seconds from 1 to 86400")
        }
    }

    /// require-cr4 accepts what the asked profile can pin; under abi=auto,
    /// what any profile can (FRED is v3's).
    @Test func fredRequirementFollowsTheProfile() throws {
        #expect(error("abi=v2", "require-cr4=fred")?.hasPrefix("heki-plugin: require-cr4: ") == true)
        #expect(try parse("abi=v3", "require-cr4=fred").policy.requireCR4 == CR4.fred.rawValue)
        #expect(try parse("require-cr4=fred").policy.requireCR4 == CR4.fred.rawValue)
    }

    @Test func exitMasksNameRegistersJoinedByPlus() throws {
        #expect(try parse("configure-exits=cr0").configureExits == .cr0)
        #expect(try parse("configure-exits=cr4").configureExits == .cr4)
        #expect(try parse("denial-exits=cr4+cr0").denialExits == .all)
        #expect(try parse("denial-exits=none").denialExits == [])
        for bad in ["cr3", "cr0+cr0", "cr0+", "CR0", "all", ""] {
            #expect(error("denial-exits=\(bad)")?.contains("is not one of cr0, cr4, cr0+cr4, none") == true, "\(bad)")
        }
    }

    @Test func everyVerdictKeyTakesEveryChoosableVerdict() throws {
        for verdict in Verdict.choosable {
            let config = try parse("on-denial=\(verdict.name)", "on-weak-pinning=\(verdict.name)")
            #expect(config.policy.onDenial == verdict && config.policy.onWeakPinning == verdict)
        }
        let config = try parse("on-denial=poweroff", "on-denial-cr4=exit")
        #expect(config.policy.onDenial(.cr0) == .poweroff)
        #expect(config.policy.onDenial(.cr4) == .exit)
        #expect(try parse("on-denial=reset", "on-denial-cr0=pause").policy.onDenial(.cr0) == .pause)
        for key in ["on-denial", "on-denial-cr0", "on-denial-cr4", "on-weak-pinning"] {
            #expect(error("\(key)=not-heki") == "heki-plugin: \(key): 'not-heki' is not one of resume, pause, poweroff, reset, exit")
        }
    }

    @Test func requiredPinsAreBitNamesTheProfileCanPin() throws {
        #expect(try parse("require-cr0=wp").policy.requireCR0 == CR0.wp.rawValue)
        #expect(try parse("require-cr0=wp+pg").policy.requireCR0 == (CR0.wp.rawValue | CR0.pg.rawValue))
        #expect(try parse("require-cr4=smep+smap+umip").policy.requireCR4 == ([CR4.smep, .smap, .umip] as CR4).rawValue)
        #expect(try parse("require-cr4=none").policy.requireCR4 == 0)
        // FRED is not pinnable in v2 (fredRequirementFollowsTheProfile);
        // PKE is pinnable in no version.
        #expect(error("abi=v2", "require-cr4=fred")?.hasSuffix("among umip, fsgsbase, smep, smap, cet") == true)
        #expect(error("require-cr4=pke")?.hasPrefix("heki-plugin: require-cr4: 'pke'") == true)
        #expect(error("require-cr0=smep")?.hasPrefix("heki-plugin: require-cr0: 'smep'") == true)
        #expect(error("require-cr0=wp+")?.contains("''") == true)
    }

    @Test func textOptionsAreBoundedAndPrintable() throws {
        #expect(try parse("vm-name=guest \"one\"").vmName == "guest \"one\"")
        #expect(try parse("vm-name=a=b").vmName == "a=b")
        #expect(error("vm-name=bad\u{1b}[31m")?.contains("control character") == true)
        #expect(error("vm-name=" + String(repeating: "x", count: 1025))?.contains("longer than 1024") == true)
        #expect(try parse("audit-log=/tmp/x.jsonl").auditLogPath == "/tmp/x.jsonl")
        #expect(error("audit-log=")?.contains("expects a file path") == true)
    }

    @Test func rateLimitIsZeroToOneMillion() throws {
        #expect(try parse("rate-limit=0").rateLimit == 0)
        #expect(try parse("rate-limit=1000000").rateLimit == 1_000_000)
        #expect(error("rate-limit=1000001")?.contains("out of range") == true)
        #expect(error("rate-limit=-3")?.contains("rate-limit") == true)
    }

    @Test func booleansAcceptOnOffYesNoTrueFalse() throws {
        for yes in ["on", "yes", "true"] { #expect(try parse("require-caps=\(yes)").requireCaps) }
        for no in ["off", "no", "false"] { #expect(try !parse("require-caps=\(no)").requireCaps) }
        #expect(error("require-caps=1") == "heki-plugin: require-caps: '1' is not one of on, off, yes, no, true, false")
    }

    @Test func argumentsThatAreNotKeyValueAreRefused() {
        #expect(error("on-denial")?.contains("is not key=value") == true)
        #expect(error("colour=blue")?.hasPrefix("heki-plugin: unknown option 'colour'; keys: abi, ") == true)
        #expect(error("on-denial=pause", "on-denial=resume") == "heki-plugin: on-denial: given twice")
        #expect(error("=x")?.contains("unknown option ''") == true)
        // Hostile text is escaped and bounded in messages.
        let message = error("k\u{7}ey=1") ?? ""
        #expect(message.contains("k\\x7ey") && !message.contains("\u{7}"))
        #expect((error(String(repeating: "z", count: 5000) + "=1")?.count ?? .max) < 400)
    }
}
