import Testing
@testable import HekiPlugin

/// The state format of heki_plugin_save_state / heki_plugin_restore_state:
/// round trips, and each rejection with its message.
@Suite struct StateTests {
    static func sample() -> PluginState {
        var state = PluginState()
        state.profile = .v3
        state.policy = Policy(onDenial: .pause, onDenialCR4: .reset, onWeakPinning: .poweroff,
                              requireCR0: CR0.wp.rawValue, requireCR4: CR4.smep.rawValue | CR4.smap.rawValue)
        state.policy.migration = .allowUnprotected
        state.numbers = Profile.v3.numbers
        state.granted = (.all, .cr4)
        state.pins = RegisterPair(cr0: CR0.wp.rawValue, cr4: CR4.smep.rawValue)
        state.restoredOnly = RegisterPair(cr0: 0, cr4: CR4.smap.rawValue)
        state.counters.values = (0..<StateCounters.count).map { UInt64($0) * 1_000_000_007 + 1 }
        state.vmName = "web1 \"é✓\""
        return state
    }

    private func decode(_ bytes: [UInt8]) throws(StateError) -> PluginState {
        let result = bytes.withUnsafeBytes { raw in Result { () throws(StateError) in try PluginState.decode(raw) } }
        return try result.get()
    }

    private func rejection(_ bytes: [UInt8]) -> String? {
        do { _ = try decode(bytes); return nil } catch { return error.message }
    }

    /// Rewrites the checksum after a change, so that the field check is
    /// what refuses it.
    private func resealed(_ bytes: [UInt8]) -> [UInt8] {
        var out = Array(bytes.dropLast(8))
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in out { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        withUnsafeBytes(of: hash.littleEndian) { out += $0 }
        return out
    }

    /// Offsets into the body (after the 16-byte header) of version 1.
    enum Offset {
        static let profile = 16, migration = 17, onDenial = 18, onDenialCR0 = 19, onWeakPinning = 21
        static let requireCR0 = 22, requireCR4 = 30, exitConfigure = 38, exitDenial = 42
        static let grantedConfigure = 54, pinsCR0 = 56, pinsCR4 = 64, restoredCR0 = 72
        static let nameLength = 16 + PluginState.fixedBodyBytes - 2
    }

    private func with(_ bytes: [UInt8], at offset: Int, _ values: [UInt8]) -> [UInt8] {
        var out = bytes
        out.replaceSubrange(offset..<(offset + values.count), with: values)
        return resealed(out)
    }

    private func le64(_ value: UInt64) -> [UInt8] { withUnsafeBytes(of: value.littleEndian) { Array($0) } }

    @Test func aStateRoundTrips() throws {
        let state = StateTests.sample()
        let bytes = try state.encode()
        #expect(bytes.count == 16 + PluginState.fixedBodyBytes + state.vmName!.utf8.count + 8)
        #expect(Array(bytes.prefix(8)) == Array("HEKISTAT".utf8))
        #expect(try decode(bytes) == state)
        // An empty state (no profile, no name, nothing pinned) too.
        let empty = PluginState()
        #expect(try decode(try empty.encode()) == empty)
        #expect(try decode(try empty.encode()).vmName == nil)
        #expect(try decode(try empty.encode()).numbers == nil)
    }

    @Test func theFrameIsChecked() throws {
        let bytes = try StateTests.sample().encode()
        #expect(rejection([]) == "heki-plugin: state: 0 bytes, fewer than a state's 24-byte frame")
        #expect(rejection(Array("HEKISTAX".utf8) + bytes.dropFirst(8)) == "heki-plugin: state: no HEKISTAT magic: not a heki-plugin state")
        #expect(rejection(with(bytes, at: 8, [2, 0]))
            == "heki-plugin: state: state version 2 is newer than this plugin reads (1): upgrade the destination's heki-plugin")
        #expect(rejection(with(bytes, at: 8, [0, 0])) == "heki-plugin: state: state version 0 is not a version (the first is 1)")
        #expect(rejection(with(bytes, at: 10, [1, 0])) == "heki-plugin: state: flags 0x1 set; version 1 defines none")
        #expect(rejection(with(bytes, at: 12, [0xff, 0xff, 0xff, 0xff]))
            == "heki-plugin: state: body of 4294967295 bytes, more than a version 1 state holds (\(PluginState.maxBodyBytes))")
        #expect(rejection(Array(bytes.dropLast())) == "heki-plugin: state: \(bytes.count - 1) bytes, but the header says \(bytes.count)")
        #expect(rejection(bytes + [0]) == "heki-plugin: state: \(bytes.count + 1) bytes, but the header says \(bytes.count)")
        var flipped = bytes
        flipped[Offset.pinsCR4] ^= 0x01
        #expect(rejection(flipped) == "heki-plugin: state: checksum mismatch: the state is corrupt")
    }

    @Test func everyFieldIsChecked() throws {
        let bytes = try StateTests.sample().encode()
        #expect(rejection(with(bytes, at: Offset.profile, [3])) == "heki-plugin: state: profile 3 is not 0 (none) or one of v2, v3")
        #expect(rejection(with(bytes, at: Offset.migration, [2]))
            == "heki-plugin: state: migration 2 is not one of 0 (block), 1 (allow-unprotected)")
        #expect(rejection(with(bytes, at: Offset.onDenial, [0]))
            == "heki-plugin: state: on-denial 0 is not a verdict (1: resume, 2: pause, 3: poweroff, 4: reset, 5: exit)")
        #expect(rejection(with(bytes, at: Offset.onDenialCR0, [6]))
            == "heki-plugin: state: on-denial-cr0 6 is not a verdict (0: not given, 1: resume, 2: pause, 3: poweroff, 4: reset, 5: exit)")
        #expect(rejection(with(bytes, at: Offset.onWeakPinning, [0xff]))?.hasPrefix("heki-plugin: state: on-weak-pinning 255 is not a verdict") == true)
        #expect(rejection(with(bytes, at: Offset.requireCR0, le64(1 << 40)))
            == "heki-plugin: state: require-cr0 0x10000000000 has bits no Heki kernel pins (0x10000000000)")
        #expect(rejection(with(bytes, at: Offset.requireCR4, le64(CR4.pge.rawValue)))
            == "heki-plugin: state: require-cr4 0x80 has bits no Heki kernel pins (0x80)")
        #expect(rejection(with(bytes, at: Offset.exitDenial, [40, 0, 0, 0]))
            == "heki-plugin: state: exit or capability numbers of the two kinds are equal")
        #expect(rejection(with(bytes, at: Offset.grantedConfigure, [4]))
            == "heki-plugin: state: granted configure 0x4 has bits beyond cr0 (1) and cr4 (2)")
        #expect(rejection(with(bytes, at: Offset.pinsCR0, le64(1 << 6)))
            == "heki-plugin: state: pins of cr0 0x40 has bits no Heki kernel pins (0x40)")
        #expect(rejection(with(bytes, at: Offset.pinsCR4, le64(1 << 15)))
            == "heki-plugin: state: pins of cr4 0x8000 has bits no Heki kernel pins (0x8000)")
        #expect(rejection(with(bytes, at: Offset.restoredCR0, le64(CR0.wp.rawValue)))
            == "heki-plugin: state: a bit is both enforced and restored-only")
        #expect(rejection(with(bytes, at: Offset.nameLength, [0, 0]))?.hasPrefix("heki-plugin: state: vm-name of 0 bytes, but the body leaves") == true)
    }

    @Test func theVMNameIsCheckedLikeTheOption() throws {
        var state = PluginState()
        state.vmName = "ok"
        let bytes = try state.encode()
        let name = bytes.count - 8 - 2
        #expect(rejection(with(bytes, at: name, [0xff, 0xfe])) == "heki-plugin: state: vm-name is not valid UTF-8")
        #expect(rejection(with(bytes, at: name, [0x0a, 0x41])) == "heki-plugin: state: vm-name: contains a control character")
        // A name longer than the option allows is neither encoded nor decoded.
        state.vmName = String(repeating: "a", count: Options.maxTextBytes + 1)
        #expect(throws: StateError("vm-name: longer than 1024 bytes")) { try state.encode() }
        var tooLong = Array(try PluginState().encode().dropLast(8))
        tooLong.replaceSubrange(12..<16, with: withUnsafeBytes(of: UInt32(PluginState.fixedBodyBytes + Options.maxTextBytes + 1).littleEndian) { Array($0) })
        tooLong.replaceSubrange((tooLong.count - 2)..., with: withUnsafeBytes(of: UInt16(Options.maxTextBytes + 1).littleEndian) { Array($0) })
        tooLong += Array(state.vmName!.utf8) + [0, 0, 0, 0, 0, 0, 0, 0]
        #expect(rejection(resealed(tooLong))?.contains("more than a version 1 state holds") == true)
    }

    @Test func aStateThatDecodeWouldRefuseIsNotSaved() {
        var state = PluginState()
        state.pins = RegisterPair(cr0: 1 << 40, cr4: 0)
        #expect(throws: StateError("pins of cr0 0x10000000000 has bits no Heki kernel pins (0x10000000000)")) {
            try state.encode()
        }
    }

    /// Every truncation of a valid state and every single-byte change is
    /// refused with a message, never a trap (the fuzz target goes further).
    @Test func everyTruncationAndByteFlipIsRefused() throws {
        let bytes = try StateTests.sample().encode()
        for length in 0..<bytes.count { #expect(rejection(Array(bytes.prefix(length))) != nil) }
        for index in bytes.indices {
            var changed = bytes
            changed[index] &+= 1
            #expect(rejection(changed) != nil, "byte \(index)")
        }
    }

    @Test func theMigrationOptionIsAPolicyKey() throws {
        #expect(try Options.parse([]).policy.migration == .block)
        let allowed = try Options.parse(["migration=allow-unprotected", "on-denial=pause"]).policy
        #expect(allowed.migration == .allowUnprotected)
        #expect(allowed.onDenial == .pause && allowed.onDenial(.cr4) == .pause)
        #expect(throws: OptionError("migration", "'yes' is not one of block, allow-unprotected")) {
            try Options.parse(["migration=yes"])
        }
        // The verdict bytes and the migration byte do not disturb each other.
        var policy = allowed
        policy.onDenialCR0 = .exit
        #expect(policy.migration == .allowUnprotected && policy.onDenial(.cr0) == .exit)
        policy.migration = .block
        #expect(policy.onDenial(.cr0) == .exit && policy.onDenial(.cr4) == .pause)
        #expect(allowed.changedKeys(to: policy) == ["on-denial-cr0", "migration"])
        let config = try Options.parse([])
        #expect(try Options.parsePolicy(["migration=allow-unprotected"], onto: config.policy, config: config).migration
            == .allowUnprotected)
    }
}
