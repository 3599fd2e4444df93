import CHekiPlugin
import Foundation
import Testing
@testable import HekiPlugin

/// The one renderer against fixed bytes: Fixtures/events.tsv holds, per
/// case, the event name, log level, JSON data and log line the plugin
/// emitted before the renderers were merged (the String renderer and the
/// byte writer, which agreed byte for byte). Every kind, both registers,
/// every verdict, a range of values, four vm-names (plain, none, quotes and
/// backslashes and non-ASCII, 1024 quote characters), require-caps off/on.
/// The event bytes are part of the contract (README.md, "Events"): a change
/// meant to alter them changes this file, line by line, in the same commit.
/// The denial lines' violated bits were remade once, when a denial's record
/// stopped carrying them (they are its pinned bits its value clears); every
/// other byte is as it was.
@Suite struct EventRendererTests {
    static let vmNames: [String?] = [nil, "web1", "q\"b\\s/ é✓", String(repeating: "\"", count: 1024)]
    static let values: [UInt64] = [0, 1, 1 << 16, 0x80050033, 0x3706f0, 0x3706f0 & ~(1 << 20), 1 << 63, .max]

    /// id -> name, level, data, message.
    static let expected: [String: [String]] = {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/events.tsv").path
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        var cases: [String: [String]] = [:]
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            cases[fields[0]] = Array(fields.dropFirst())
        }
        return cases
    }()

    /// Renders each case and compares it with the fixture.
    private final class Checker {
        var checked = 0
        var missing: [String] = []
        func check(_ id: String, _ renderer: EventRenderer, _ record: EventRecord, exits: ClaimedExits = ClaimedExits()) {
            compare(id, String(cString: renderer.name(record).cString), renderer.level(record),
                    String(cString: renderer.data(record, exits: exits).cString), String(cString: renderer.message(record)))
        }
        func check(_ id: String, _ renderer: EventRenderer, _ announcement: Announcement) {
            compare(id, String(cString: renderer.name(announcement).cString), renderer.level(announcement),
                    String(cString: renderer.data(announcement).cString), String(cString: renderer.message(announcement)))
        }
        private func compare(_ id: String, _ name: String, _ level: HekiLogLevel, _ data: String, _ message: String) {
            guard let want = EventRendererTests.expected[id] else { return missing.append(id) }
            #expect(want == [name, String(level.rawValue), data, message], "case \(id)")
            checked += 1
        }
    }

    @Test func everyEventRendersTheBytesOfTheFixture() throws {
        let checker = Checker()
        let values = EventRendererTests.values
        for (n, vmName) in EventRendererTests.vmNames.enumerated() {
            for requireCaps in [false, true] {
                var options = ["rate-limit=20", "pin-deadline=7", "require-caps=\(requireCaps ? "on" : "off")"]
                if let vmName { options.append("vm-name=\(vmName)") }
                let config = try Options.parse(options)
                let renderer = EventRenderer(config: config)
                let full = n < 3 && !requireCaps
                for (vi, value) in (full ? values : [values[4]]).enumerated() {
                    let other = values[(vi * 5 + 3) % values.count]
                    let third = values[(vi * 3 + 1) % values.count]
                    for register in ControlRegister.allCases {
                        for verdict in (full && n == 1 ? Verdict.allCases : [Verdict.allCases[(vi + n) % 6]]) {
                            let vcpu = UInt32(truncatingIfNeeded: value &* 7)
                            let exit = UInt32(vi * 1000 + 39)
                            let base = "\(n) \(requireCaps) \(vi) \(register.rawValue) \(verdict.rawValue)"
                            if n < 3 || register == .cr4 {
                                let exits = ClaimedExits(configure: exit, denial: exit)
                                checker.check("configure \(base)", renderer, EventRecord(payload: .configure(PinEvent(
                                    vcpu: vcpu, register: register, bits: value, pinned: other, verdict: verdict))), exits: exits)
                                checker.check("denial \(base)", renderer, EventRecord(payload: .denial(DenialEvent(
                                    vcpu: vcpu, register: register, value: value, pinned: other, verdict: verdict))),
                                              exits: exits)
                                checker.check("weakPinning \(base)", renderer, EventRecord(payload: .weakPinning(WeakPinningEvent(
                                    vcpu: vcpu, register: register, pinned: other, required: value, missing: third,
                                    verdict: verdict))))
                            }
                            if n == 3 && register == .cr0 { continue }
                            checker.check("deadline \(base)", renderer, EventRecord(payload: .weakPinning(WeakPinningEvent(
                                vcpu: nil, register: register, pinned: other, required: value, missing: third, verdict: verdict))))
                        }
                        for problem in [MalformedProblem.reasonNotOneKnownBit, .registerNotEnabled]
                        where (n < 3 && vi < 4) || (vi == 0 && register == .cr4) {
                            for kind in ExitKind.allCases {
                                let notEnabled = problem == .registerNotEnabled
                                checker.check("malformed \(n) \(requireCaps) \(vi) \(register.rawValue) \(problem.rawValue) \(kind.rawValue)",
                                              renderer, EventRecord(payload: .malformedExit(MalformedExitEvent(
                                                vcpu: UInt32(vi), kind: kind, exit: 40, reason: notEnabled ? register.reasonBit : value,
                                                register: notEnabled ? register : nil, problem: problem))))
                            }
                        }
                    }
                    for kind in ExitKind.allCases where vi < 1 {
                        for result: Int32 in (n < 3 ? [0, -22, -6] : [-22]) {
                            for mask in (n < 3 ? [ExitReasonMask.all, .cr0, .cr4, []] : [.all]) {
                                checker.check("capability \(n) \(requireCaps) \(vi) \(kind.rawValue) \(result) \(mask.rawValue)",
                                              renderer, EventRecord(payload: .capability(CapabilityEvent(
                                                kind: kind, capability: 235 + UInt32(vi), mask: mask, result: result))))
                            }
                        }
                    }
                    for coalesced in EventKind.allCases
                    where coalesced != .suppressed && (n < 3 || coalesced == .denial) && vi < 3 {
                        checker.check("suppressed \(n) \(requireCaps) \(vi) \(coalesced.rawValue)", renderer,
                                      EventRecord(payload: .suppressed(SuppressedEvent(coalesced: coalesced, count: value))))
                    }
                }
                var v2 = KernelAnswers(); v2.record(235, 3); v2.record(236, 3); v2.record(237, 1)
                var v3 = KernelAnswers(); v3.record(235, 1); v3.record(236, 3); v3.record(237, 3)
                var stock = KernelAnswers(); stock.record(235, 1); stock.record(236, 0); stock.record(237, 1)
                for (name, answers) in [("v2", v2), ("v3", v3), ("stock", stock)] where n < 3 || name == "stock" {
                    for abi in ["auto", "v2", "v3"] where n < 3 || abi == "auto" {
                        let abiConfig = try Options.parse(options + (abi == "auto" ? [] : ["abi=\(abi)"]))
                        checker.check("kernel \(n) \(requireCaps) \(name) \(abi)", EventRenderer(config: abiConfig),
                                      .kernelCheck(KernelCheck(config: abiConfig, answers: answers), answers))
                    }
                }
                checker.check("host-cannot-check \(n) \(requireCaps)", renderer, .hostCannotCheck)
                var policy = config.policy
                checker.check("policy-unchanged \(n) \(requireCaps)", renderer, .policy(policy, changed: []))
                policy.onDenial = .pause
                policy.onDenialCR4 = .reset
                policy.requireCR4 = 0x300000
                policy.requireCR0 = 1 << 16
                checker.check("policy \(n) \(requireCaps)", renderer,
                              .policy(policy, changed: ["on-denial", "on-denial-cr4", "require-cr0", "require-cr4"]))
                policy.migration = .allowUnprotected
                checker.check("policy-migration \(n) \(requireCaps)", renderer, .policy(policy, changed: ["migration"]))
                let source = RestoredSource(vmName: vmName, profile: "v3", migration: .allowUnprotected)
                let actions: [MigrationReport.Action] = [.blocked, .unblocked, .refused, .saved, .restored, .rejected]
                for (ai, action) in actions.enumerated() {
                    let enforced = RegisterPair(cr0: ai % 2 == 0 ? 1 << 16 : 0, cr4: ai < 3 ? 0x300000 : 0)
                    let restoredOnly = RegisterPair(cr0: action == .restored ? 1 << 16 : 0, cr4: action == .restored ? 0x100000 : 0)
                    checker.check("migration \(n) \(requireCaps) \(action.rawValue)", renderer, .migration(MigrationReport(
                        action: action, choice: ai % 2 == 0 ? .block : .allowUnprotected, enforced: enforced,
                        restoredOnly: restoredOnly, reason: "why \u{22}\(ai)\u{22} 0x\(ai)",
                        source: action == .restored ? source : nil)))
                }
                for cause in ResetCause.allCases {
                    for rule in ResetRule.allCases {
                        checker.check("reset \(n) \(requireCaps) \(cause.name) \(rule.rawValue)", renderer,
                                      .reset(ResetReport(cause: cause, pinned: RegisterPair(cr0: 1 << 16, cr4: 0x300000), unseen: [], rule: rule)))
                    }
                }
                checker.check("reset-unseen \(n) \(requireCaps)", renderer,
                              .reset(ResetReport(cause: .guest, pinned: RegisterPair(), unseen: [.cr0, .cr4], rule: .poweroff)))
            }
        }
        #expect(checker.missing.isEmpty, "cases not in the fixture: \(checker.missing.prefix(5))")
        #expect(checker.checked == EventRendererTests.expected.count, "every fixture line is a case")
        #expect(checker.checked > 900)
    }

    /// A record rendered twice in a row, and after a larger one, gives the
    /// same bytes: the buffers are reused, never appended to.
    @Test func reusedBuffersStartEmptyForEachEvent() throws {
        let renderer = EventRenderer(config: try Options.parse(["vm-name=web1"]))
        let small = EventRecord(payload: .configure(PinEvent(vcpu: 1, register: .cr0, bits: 1 << 16,
                                                             pinned: 1 << 16, verdict: .resume)))
        let large = EventRecord(payload: .denial(DenialEvent(vcpu: 2, register: .cr4, value: .max,
                                                             pinned: .max, verdict: .pause)))
        let exits = ClaimedExits(configure: 39, denial: 40)
        let first = (String(cString: renderer.data(small, exits: exits).cString), String(cString: renderer.message(small)))
        _ = (renderer.data(large, exits: exits), renderer.message(large))
        #expect((String(cString: renderer.data(small, exits: exits).cString), String(cString: renderer.message(small))) == first)
        #expect(first.1 == "heki: vm web1 vcpu 1: guest pinned cr0 wp (pinned now wp), verdict resume")
    }

    @Test func hexAndDecimalMatchTheStandardLibrary() {
        var writer = ByteWriter(capacity: 64)
        defer { writer.deallocate() }
        for value: UInt64 in [0, 1, 9, 10, 15, 16, 255, 256, 0xabcdef, 1 << 63, .max, 12_345_678_901_234_567_890] {
            writer.reset()
            writer.appendHex(value)
            #expect(String(cString: writer.cString()) == "0x" + String(value, radix: 16))
            writer.reset()
            writer.appendDecimal(value)
            #expect(String(cString: writer.cString()) == String(value))
        }
        for value: UInt64 in 0..<10_000 {  // every digit pair, one to four digits, zero-padded
            writer.reset()
            writer.appendDecimal(value)
            writer.appendDecimal(value, width: 6)
            #expect(String(cString: writer.cString()) == String(value) + String(String(value).reversed()).padding(toLength: 6, withPad: "0", startingAt: 0).reversed())
        }
        var generator = SplitMix64(seed: 0x4845_4b49)  // fixed: a failure names a value that fails again
        for round in 0..<4_000 {  // every digit count, 1 to 20
            let value = (generator.next()) >> UInt64(round % 64)
            writer.reset()
            writer.appendDecimal(value)
            #expect(String(cString: writer.cString()) == String(value))
        }
        for value: Int64 in [0, -1, 22, -22, .min, .max] {
            writer.reset()
            writer.appendDecimal(signed: value)
            #expect(String(cString: writer.cString()) == String(value))
        }
    }

    /// A text longer than the buffer grows it instead of overrunning it.
    @Test func longTextGrowsTheBuffer() {
        var writer = ByteWriter(capacity: 8)
        defer { writer.deallocate() }
        let text = String(repeating: "abc", count: 1000)
        writer.append(text: text)
        #expect(String(cString: writer.cString()) == text)
        #expect(writer.capacity > 3000)
    }

    /// A value's bit-name list (nibble slots) against BitNames.names(of:),
    /// for random values of each register, dense and sparse.
    @Test func bitNameListsMatchTheNames() throws {
        var generator = SplitMix64(seed: 0x4845_4b49)  // fixed: a failure names a value that fails again
        var writer = ByteWriter(capacity: 64)
        defer { writer.deallocate() }
        for register in ControlRegister.allCases {
            let arena = ByteArena()
            let bytes = BitNameBytes(register.bitNames, arena: arena)
            for round in 0..<2_000 {
                let value = round % 2 == 0 ? generator.next() : generator.next() & generator.next() & generator.next()
                writer.reset()
                writer.reserve(64 * 24)
                bytes.appendList(value, to: &writer)
                let text = String(cString: writer.cString())
                let list = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String]
                #expect(list == register.bitNames.names(of: value), "\(register.name) \(String(value, radix: 16))")
            }
        }
    }
}

/// SplitMix64: reproducible values for the tests above.
private struct SplitMix64 {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ z >> 30) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ z >> 27) &* 0x94d0_49bb_1331_11eb
        return z ^ z >> 31
    }
}
