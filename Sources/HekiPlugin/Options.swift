/// Parses QEMU-style key=value options into a `Configuration`.
/// Every error names the key and the values it accepts.
struct OptionError: Error, Equatable {
    let message: String
    init(_ key: String, _ detail: String) { message = "heki-plugin: \(key): \(detail)" }
    init(message: String) { self.message = "heki-plugin: \(message)" }
}

enum Options {
    static let keys = [
        "abi", "exit-configure", "exit-denial", "cap-configure", "cap-denial",
        "configure-exits", "denial-exits", "on-denial", "on-denial-cr0", "on-denial-cr4",
        "require-cr0", "require-cr4", "on-weak-pinning", "vm-name", "audit-log",
        "rate-limit", "require-caps", "pin-deadline", "migration", "on-reset",
    ]
    static let numberOverrides = ["exit-configure", "exit-denial", "cap-configure", "cap-denial"]
    static let maxPinDeadline: UInt32 = 86_400
    static let maxRateLimit: UInt32 = 1_000_000
    static let maxTextBytes = 1024

    /// "key=value" strings as (key, value) pairs in their order; an unknown
    /// key, a string without '=' or a key given twice is refused. A list,
    /// not a hashed map: a host passes a few options, looked up a few times.
    private static func split(_ arguments: [String]) throws(OptionError) -> [(key: String, value: String)] {
        var given: [(key: String, value: String)] = []
        given.reserveCapacity(arguments.count)
        for argument in arguments {
            // The first '=' byte, as QEMU splits: not a Character search,
            // which costs grapheme breaking and misses an '=' that a
            // combining mark follows.
            let bytes = argument.utf8
            guard let equals = bytes.firstIndex(of: UInt8(ascii: "=")) else {
                throw OptionError(message: "'\(printable(argument))' is not key=value; keys: \(keys.joined(separator: ", "))")
            }
            let key = String(Substring(bytes[..<equals]))
            let value = String(Substring(bytes[bytes.index(after: equals)...]))
            guard keys.contains(key) else {
                throw OptionError(message: "unknown option '\(printable(key))'; keys: \(keys.joined(separator: ", "))")
            }
            guard !given.contains(where: { $0.key == key }) else { throw OptionError(key, "given twice") }
            given.append((key, value))
        }
        return given
    }

    static func parse(_ arguments: [String]) throws(OptionError) -> Configuration {
        let given = try split(arguments)
        func lookup(_ key: String) -> String? { given.first { $0.key == key }?.value }
        var config = Configuration()
        // The profile first: the overrides and the pinnable bits depend on it.
        if let abi = lookup("abi"), abi != "auto" {
            guard let profile = Profile.all.first(where: { $0.name == abi }) else {
                throw OptionError("abi", "'\(printable(abi))' is not one of auto, \(Profile.all.map(\.name).joined(separator: ", "))")
            }
            config.abi = profile
        }
        if config.abi == nil, let key = numberOverrides.first(where: { lookup($0) != nil }) {
            throw OptionError(key, "overrides a profile's number: name the profile with abi=\(Profile.all.map(\.name).joined(separator: "|"))")
        }

        for (key, value) in given where key != "abi" {
            switch key {
            case "exit-configure": config.exitConfigureOverride = try number(key, value)
            case "exit-denial": config.exitDenialOverride = try number(key, value)
            case "cap-configure": config.capConfigureOverride = try number(key, value)
            case "cap-denial": config.capDenialOverride = try number(key, value)
            case "configure-exits": config.configureExits = try registers(key, value)
            case "denial-exits": config.denialExits = try registers(key, value)
            case "vm-name": config.vmName = try text(key, value)
            case "audit-log":
                guard !value.isEmpty else { throw OptionError(key, "expects a file path") }
                config.auditLogPath = try text(key, value)
            case "rate-limit":
                let limit = try number(key, value)
                guard limit <= maxRateLimit else {
                    throw OptionError(key, "'\(printable(value))' is out of range: 0 (no coalescing) to \(maxRateLimit) events per second")
                }
                config.rateLimit = limit
            case "require-caps": config.requireCaps = try boolean(key, value)
            case "pin-deadline":
                if value == "off" {
                    config.pinDeadline = nil
                } else {
                    let seconds = try? number(key, value)
                    guard let seconds, seconds >= 1, seconds <= maxPinDeadline else {
                        throw OptionError(key, "'\(printable(value))' is not off or a number of seconds from 1 to \(maxPinDeadline)")
                    }
                    config.pinDeadline = seconds
                }
            case "on-reset":
                guard let rule = ResetRule(rawValue: value) else {
                    throw OptionError(key, "'\(printable(value))' is not one of \(ResetRule.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                config.onReset = rule
            case _ where Policy.keys.contains(key): try set(key, value, in: &config.policy, abi: config.abi)
            default: break
            }
        }
        if let profile = config.abi {
            let numbers = config.numbers(for: profile)
            guard numbers.exitConfigure != numbers.exitDenial else {
                throw OptionError("exit-denial", "exit number \(numbers.exitDenial) is also the configure exit; the two must differ")
            }
            guard numbers.capConfigure != numbers.capDenial else {
                throw OptionError("cap-denial", "capability number \(numbers.capDenial) is also the configure capability; the two must differ")
            }
        }
        return config
    }

    /// heki_plugin_set_policy: the policy keys of `arguments` applied to
    /// `current`, validated as at start (require-cr4 against `config`'s
    /// abi). Any other key is refused: it is fixed at heki_plugin_new.
    static func parsePolicy(_ arguments: [String], onto current: Policy, config: Configuration) throws(OptionError) -> Policy {
        let given = try split(arguments)
        if let fixed = given.first(where: { !Policy.keys.contains($0.key) })?.key {
            throw OptionError(fixed, "cannot change while the VM runs; the keys that can: \(Policy.keys.joined(separator: ", "))")
        }
        var policy = current
        for (key, value) in given { try set(key, value, in: &policy, abi: config.abi) }
        return policy
    }

    /// One policy key; `abi` bounds the CR4 bits that can be required.
    private static func set(_ key: String, _ value: String, in policy: inout Policy, abi: Profile?) throws(OptionError) {
        switch key {
        case "on-denial": policy.onDenial = try verdict(key, value)
        case "on-denial-cr0": policy.onDenialCR0 = try verdict(key, value)
        case "on-denial-cr4": policy.onDenialCR4 = try verdict(key, value)
        case "on-weak-pinning": policy.onWeakPinning = try verdict(key, value)
        case "require-cr0": policy.requireCR0 = try bits(key, value, CR0.names, accepted: CR0.names.table.map(\.bit))
        case "migration":
            guard let choice = MigrationChoice.allCases.first(where: { $0.name == value }) else {
                throw OptionError(key, "'\(printable(value))' is not one of \(MigrationChoice.allCases.map(\.name).joined(separator: ", "))")
            }
            policy.migration = choice
        case "require-cr4":
            let pinnableCR4 = abi?.pinnableCR4 ?? Profile.anyPinnableCR4
            let pinnable = CR4.names.table.map(\.bit).filter { pinnableCR4.rawValue & $0 != 0 }
            policy.requireCR4 = try bits(key, value, CR4.names, accepted: pinnable)
        default: break
        }
    }

    /// Decimal or 0x-prefixed hexadecimal, 0 to 2^32-1.
    static func number(_ key: String, _ value: String) throws(OptionError) -> UInt32 {
        let lower = value.lowercased()
        let parsed = lower.hasPrefix("0x") ? UInt32(lower.dropFirst(2), radix: 16) : UInt32(lower, radix: 10)
        guard let parsed, !lower.hasPrefix("+") else {
            throw OptionError(key, "'\(printable(value))' is not a number (decimal or 0x-hex, 0 to 4294967295)")
        }
        return parsed
    }

    static func verdict(_ key: String, _ value: String) throws(OptionError) -> Verdict {
        guard let verdict = Verdict.choosable.first(where: { $0.name == value }) else {
            throw OptionError(key, "'\(printable(value))' is not one of \(Verdict.choosable.map(\.name).joined(separator: ", "))")
        }
        return verdict
    }

    static func registers(_ key: String, _ value: String) throws(OptionError) -> ExitReasonMask {
        let accepted = "cr0, cr4, cr0+cr4, none"
        if value == "none" { return [] }
        var mask: ExitReasonMask = []
        for part in plusSeparated(value) {
            switch part {
            case "cr0" where !mask.contains(.cr0): mask.insert(.cr0)
            case "cr4" where !mask.contains(.cr4): mask.insert(.cr4)
            default: throw OptionError(key, "'\(printable(value))' is not one of \(accepted)")
            }
        }
        return mask
    }

    /// Bit names joined by '+', each among `accepted`, or "none".
    static func bits(_ key: String, _ value: String, _ names: BitNames, accepted: [UInt64]) throws(OptionError) -> UInt64 {
        if value == "none" { return 0 }
        var result: UInt64 = 0
        for part in plusSeparated(value) {
            guard let bit = names.bit(named: String(part)), accepted.contains(bit) else {
                let acceptedNames = accepted.compactMap { bit in names.table.first { $0.bit == bit }?.name }
                throw OptionError(key, "'\(printable(String(part)))' is not a bit that can be required; use none or names joined by '+' among \(acceptedNames.joined(separator: ", "))")
            }
            result |= bit
        }
        return result
    }

    /// The parts of "a+b+c", split on the '+' byte (a Character split costs
    /// grapheme breaking for names that are ASCII).
    private static func plusSeparated(_ value: String) -> [Substring] {
        value.utf8.split(separator: UInt8(ascii: "+"), omittingEmptySubsequences: false).map { Substring($0) }
    }

    static func boolean(_ key: String, _ value: String) throws(OptionError) -> Bool {
        switch value {
        case "on", "yes", "true": return true
        case "off", "no", "false": return false
        default: throw OptionError(key, "'\(printable(value))' is not one of on, off, yes, no, true, false")
        }
    }

    static func text(_ key: String, _ value: String) throws(OptionError) -> String {
        guard value.utf8.count <= maxTextBytes else { throw OptionError(key, "longer than \(maxTextBytes) bytes") }
        guard !value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) else {
            throw OptionError(key, "contains a control character")
        }
        return value
    }

    /// An option as it can appear inside an error message: control
    /// characters escaped, length bounded.
    static func printable(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars.prefix(64) {
            if scalar.value < 0x20 || scalar.value == 0x7f {
                out += "\\x" + String(scalar.value, radix: 16)
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return text.unicodeScalars.count > 64 ? out + "..." : out
    }
}
