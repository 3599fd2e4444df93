/// The plugin's state as it travels in a migration stream or a snapshot
/// (heki_plugin_save_state / heki_plugin_restore_state). Restored bytes are
/// hostile: `decode` checks the frame (magic, version, length, checksum),
/// then every field, and throws a message that names what is wrong; it never
/// traps and allocates nothing sized by the input.
///
/// Format, version 1, little-endian, no padding:
///
///     header   magic "HEKISTAT" (8) | version u16 | flags u16 (0) | body length u32
///     body     profile u8 (0 none, 1 v2, 2 v3) | migration u8 | verdicts u8 x4
///              (on-denial, on-denial-cr0, on-denial-cr4, on-weak-pinning:
///              Verdict raw value + 1; the crN overrides 0 when not given)
///              | require-cr0 u64 | require-cr4 u64
///              | exit-configure, exit-denial, cap-configure, cap-denial u32 x4
///              | granted configure, denial u8 x2 (KVM_HEKI_EXIT_REASON_* masks)
///              | pins cr0, cr4 u64 x2 (the kernel's) | restored-only cr0, cr4 u64 x2
///              | counters u64 x11 (StateCounters order) | vm-name length u16 | vm-name
///     trailer  FNV-1a 64 of header and body, u64
struct PluginState: Equatable, Sendable {
    var profile: Profile?
    var policy = Policy()
    var numbers: HekiNumbers?
    var granted: (configure: ExitReasonMask, denial: ExitReasonMask) = ([], [])
    /// Pins the source's kernel enforced (its ledger).
    var pins = RegisterPair()
    /// Pins the source had itself restored, not enforced there either.
    var restoredOnly = RegisterPair()
    var counters = StateCounters()
    var vmName: String?

    static let magic: [UInt8] = Array("HEKISTAT".utf8)
    static let version: UInt16 = 1
    static let headerBytes = 16
    static let trailerBytes = 8
    /// The body of version 1 without the vm-name's bytes.
    static let fixedBodyBytes = 2 + 4 + 16 + 16 + 2 + 32 + StateCounters.count * 8 + 2
    /// Bounds any body a reader accepts, whatever the version says.
    static let maxBodyBytes = fixedBodyBytes + Options.maxTextBytes

    static func == (a: PluginState, b: PluginState) -> Bool {
        a.profile?.name == b.profile?.name && a.policy == b.policy && a.numbers == b.numbers
            && a.granted.configure == b.granted.configure && a.granted.denial == b.granted.denial
            && a.pins == b.pins && a.restoredOnly == b.restoredOnly && a.counters == b.counters
            && a.vmName == b.vmName
    }

    // MARK: Encoding

    /// The bytes, or why this state cannot be saved (a field `decode` would refuse).
    func encode() throws(StateError) -> [UInt8] {
        try validate()
        var body: [UInt8] = []
        body.reserveCapacity(PluginState.fixedBodyBytes + (vmName?.utf8.count ?? 0))
        body.append(profile.map { profile in UInt8(Profile.all.firstIndex { $0.name == profile.name }! + 1) } ?? 0)
        body.append(policy.migration.rawValue)
        for verdict: Verdict? in [policy.onDenial, policy.onDenialCR0, policy.onDenialCR4, policy.onWeakPinning] {
            body.append(verdict.map { UInt8($0.rawValue + 1) } ?? 0)
        }
        put(&body, policy.requireCR0)
        put(&body, policy.requireCR4)
        for number in [numbers?.exitConfigure, numbers?.exitDenial, numbers?.capConfigure, numbers?.capDenial] {
            put(&body, number ?? 0)
        }
        body.append(UInt8(granted.configure.rawValue))
        body.append(UInt8(granted.denial.rawValue))
        for value in [pins.cr0, pins.cr4, restoredOnly.cr0, restoredOnly.cr4] { put(&body, value) }
        for value in counters.values { put(&body, value) }
        let name = Array((vmName ?? "").utf8)
        put(&body, UInt16(name.count))
        body += name

        var bytes = PluginState.magic
        put(&bytes, PluginState.version)
        put(&bytes, UInt16(0))
        put(&bytes, UInt32(body.count))
        bytes += body
        put(&bytes, fnv1a(bytes))
        return bytes
    }

    private func put<T: FixedWidthInteger>(_ bytes: inout [UInt8], _ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes += $0 }
    }

    // MARK: Decoding

    static func decode(_ bytes: UnsafeRawBufferPointer) throws(StateError) -> PluginState {
        let minimum = headerBytes + trailerBytes
        guard bytes.count >= minimum else {
            throw StateError("\(bytes.count) bytes, fewer than a state's \(minimum)-byte frame")
        }
        var header = StateReader(bytes)
        guard try header.bytes(magic.count).elementsEqual(magic) else {
            throw StateError("no HEKISTAT magic: not a heki-plugin state")
        }
        let version: UInt16 = try header.integer()
        guard version == PluginState.version else {
            throw StateError(version > PluginState.version
                ? "state version \(version) is newer than this plugin reads (\(PluginState.version)): upgrade the destination's heki-plugin"
                : "state version \(version) is not a version (the first is 1)")
        }
        let flags: UInt16 = try header.integer()
        guard flags == 0 else { throw StateError("flags 0x\(String(flags, radix: 16)) set; version 1 defines none") }
        let length = Int(try header.integer() as UInt32)
        guard length <= maxBodyBytes else {
            throw StateError("body of \(length) bytes, more than a version 1 state holds (\(maxBodyBytes))")
        }
        guard bytes.count == headerBytes + length + trailerBytes else {
            throw StateError("\(bytes.count) bytes, but the header says \(headerBytes + length + trailerBytes)")
        }
        let sum = fnv1a(UnsafeRawBufferPointer(rebasing: bytes[0..<(headerBytes + length)]))
        var trailer = StateReader(UnsafeRawBufferPointer(rebasing: bytes[(headerBytes + length)...]))
        guard try trailer.integer() as UInt64 == sum else { throw StateError("checksum mismatch: the state is corrupt") }

        var reader = StateReader(UnsafeRawBufferPointer(rebasing: bytes[headerBytes..<(headerBytes + length)]))
        var state = PluginState()
        let profileIndex: UInt8 = try reader.integer()
        switch profileIndex {
        case 0: state.profile = nil
        case 1...UInt8(Profile.all.count): state.profile = Profile.all[Int(profileIndex) - 1]
        default: throw StateError("profile \(profileIndex) is not 0 (none) or one of \(Profile.all.map(\.name).joined(separator: ", "))")
        }
        let migration: UInt8 = try reader.integer()
        guard let choice = MigrationChoice(rawValue: migration) else {
            throw StateError("migration \(migration) is not one of \(MigrationChoice.allCases.map { "\($0.rawValue) (\($0.name))" }.joined(separator: ", "))")
        }
        state.policy.migration = choice
        state.policy.onDenial = try verdict(reader.integer(), "on-denial", optional: false) ?? .resume
        state.policy.onDenialCR0 = try verdict(reader.integer(), "on-denial-cr0", optional: true)
        state.policy.onDenialCR4 = try verdict(reader.integer(), "on-denial-cr4", optional: true)
        state.policy.onWeakPinning = try verdict(reader.integer(), "on-weak-pinning", optional: false) ?? .resume
        state.policy.requireCR0 = try reader.integer()
        state.policy.requireCR4 = try reader.integer()
        let numbers = try HekiNumbers(exitConfigure: reader.integer(), exitDenial: reader.integer(),
                                      capConfigure: reader.integer(), capDenial: reader.integer())
        state.numbers = numbers == HekiNumbers(exitConfigure: 0, exitDenial: 0, capConfigure: 0, capDenial: 0) ? nil : numbers
        state.granted = (try mask(reader.integer(), "granted configure"), try mask(reader.integer(), "granted denial"))
        state.pins = try RegisterPair(cr0: reader.integer(), cr4: reader.integer())
        state.restoredOnly = try RegisterPair(cr0: reader.integer(), cr4: reader.integer())
        for index in 0..<StateCounters.count { state.counters.values[index] = try reader.integer() }
        let nameLength = Int(try reader.integer() as UInt16)
        guard nameLength == length - fixedBodyBytes else {
            throw StateError("vm-name of \(nameLength) bytes, but the body leaves \(length - fixedBodyBytes)")
        }
        if nameLength > 0 {
            guard let name = String(validating: try reader.bytes(nameLength), as: UTF8.self) else {
                throw StateError("vm-name is not valid UTF-8")
            }
            state.vmName = name
        }
        try state.validate()
        return state
    }

    private static func verdict(_ stored: UInt8, _ key: String, optional: Bool) throws(StateError) -> Verdict? {
        if stored == 0 && optional { return nil }
        guard stored != 0, let verdict = Verdict(rawValue: Int32(stored) - 1), Verdict.choosable.contains(verdict) else {
            throw StateError("\(key) \(stored) is not a verdict (\(optional ? "0: not given, " : "")"
                + Verdict.choosable.map { "\($0.rawValue + 1): \($0.name)" }.joined(separator: ", ") + ")")
        }
        return verdict
    }

    private static func mask(_ stored: UInt8, _ what: String) throws(StateError) -> ExitReasonMask {
        let mask = ExitReasonMask(rawValue: UInt64(stored))
        guard mask.isSubset(of: .all) else { throw StateError("\(what) 0x\(String(stored, radix: 16)) has bits beyond cr0 (1) and cr4 (2)") }
        return mask
    }

    /// The checks of the fields' meaning, for both directions.
    func validate() throws(StateError) {
        let namedCR0 = CR0.names.table.reduce(UInt64(0)) { $0 | $1.bit }
        let namedCR4 = CR4.names.table.reduce(UInt64(0)) { $0 | $1.bit }
        func within(_ value: UInt64, _ allowed: UInt64, _ what: String) throws(StateError) {
            guard value & ~allowed == 0 else {
                throw StateError("\(what) 0x\(String(value, radix: 16)) has bits no Heki kernel pins (0x\(String(value & ~allowed, radix: 16)))")
            }
        }
        try within(policy.requireCR0, namedCR0, "require-cr0")
        try within(policy.requireCR4, Profile.anyPinnableCR4.rawValue, "require-cr4")
        for (pair, what) in [(pins, "pins"), (restoredOnly, "restored-only pins")] {
            try within(pair.cr0, namedCR0, what + " of cr0")
            try within(pair.cr4, namedCR4, what + " of cr4")
        }
        guard restoredOnly.cr0 & pins.cr0 == 0, restoredOnly.cr4 & pins.cr4 == 0 else {
            throw StateError("a bit is both enforced and restored-only")
        }
        if let vmName {
            // As the option accepts it (Options.text): bounded, no control characters.
            do { _ = try Options.text("vm-name", vmName) } catch {
                throw StateError(String(error.message.dropFirst("heki-plugin: ".count)))
            }
        }
        if let numbers {
            guard numbers.exitConfigure != numbers.exitDenial, numbers.capConfigure != numbers.capDenial else {
                throw StateError("exit or capability numbers of the two kinds are equal")
            }
        }
    }
}

/// The counters that travel: what the guest caused, so that the
/// destination's totals continue from the source's.
struct StateCounters: Equatable, Sendable {
    /// configure, denial, weak pinning per register (cr0, cr4); malformed
    /// exits; summarised counts of configure, denial, weak pinning,
    /// malformed exits.
    static let perRegisterKinds: [EventKind] = [.configure, .denial, .weakPinning]
    static let summarisedKinds: [EventKind] = [.configure, .denial, .weakPinning, .malformedExit]
    static let count = perRegisterKinds.count * 2 + 1 + summarisedKinds.count
    var values = [UInt64](repeating: 0, count: StateCounters.count)
}

/// Why bytes are no state this plugin restores, or a state cannot be saved.
struct StateError: Error, Equatable {
    let message: String
    init(_ detail: String) { message = "heki-plugin: state: \(detail)" }
    init(message: String) { self.message = message }
}

/// Bounds-checked little-endian reads: a short input throws, never traps.
private struct StateReader {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    mutating func bytes(_ count: Int) throws(StateError) -> UnsafeRawBufferPointer {
        guard count >= 0, count <= bytes.count - offset else {
            throw StateError("truncated at byte \(offset): \(count) more needed, \(bytes.count - offset) left")
        }
        defer { offset += count }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)])
    }

    mutating func integer<T: FixedWidthInteger>() throws(StateError) -> T {
        T(littleEndian: try bytes(MemoryLayout<T>.size).loadUnaligned(as: T.self))
    }
}

/// FNV-1a, 64 bits: catches a corrupt stream (not an attacker, who can
/// recompute it; the field checks stand against that).
private func fnv1a<Bytes: Sequence>(_ bytes: Bytes) -> UInt64 where Bytes.Element == UInt8 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
    return hash
}
