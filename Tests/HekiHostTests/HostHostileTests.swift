// Hostile and careless hosts and guests (issue 5): NULL for every pointer
// of every entry point; handle_exit from many threads while the loop
// dispatches and another thread queries; every denial-storm shape with the
// exact-accounting guarantee.
import CHekiPlugin
import FakeHost
import HekiKernelModel
import Foundation
import XCTest

final class HostHostileTests: XCTestCase {
    // MARK: Careless hosts

    /// Every entry point with NULL where a pointer goes: documented results,
    /// no crash, and a failing heki_plugin_new with error NULL still fails.
    func testNullPointersToEveryEntryPoint() throws {
        let t = try TestVM.started([])
        let api = fh_vm_api(t.vm)!.pointee
        let plugin = fh_vm_plugin(t.vm)
        var error: UnsafeMutablePointer<CChar>?

        // heki_plugin_new: NULL host (with and without an error pointer).
        XCTAssertNil(api.plugin_new!(nil, 0, nil, &error))
        XCTAssertEqual(error.map { String(cString: $0) }, "heki-plugin: host is NULL")
        api.free_string!(error)
        error = nil
        XCTAssertNil(api.plugin_new!(nil, 0, nil, nil))
        // argv NULL with argc > 0, a NULL entry, a negative argc: refused.
        let other = TestVM(lib: try PluginLibrary.require())
        XCTAssertEqual(fh_vm_create_plugin_argv(other.vm, 2, nil), -1)
        XCTAssertTrue(other.error.contains("argv NULL"), other.error)
        var withNull: [UnsafePointer<CChar>?] = [UnsafePointer(strdup("vm-name=x")), nil]
        XCTAssertEqual(fh_vm_create_plugin_argv(other.vm, 2, &withNull), -1)
        XCTAssertTrue(other.error.contains("argv[1] is NULL"), other.error)
        free(UnsafeMutableRawPointer(mutating: withNull[0]))
        XCTAssertEqual(fh_vm_create_plugin_argv(other.vm, -1, nil), -1)
        // argv NULL with argc 0 is fine.
        let empty = TestVM(lib: try PluginLibrary.require())
        XCTAssertEqual(fh_vm_create_plugin_argv(empty.vm, 0, nil), 0, empty.error)
        empty.freePlugin()

        // The rest with a NULL plugin (and a NULL run, a NULL string).
        api.plugin_free!(nil)
        api.free_string!(nil)
        XCTAssertEqual(api.exit_number!(nil, HEKI_EXIT_CONFIGURE), 0)
        XCTAssertEqual(api.cap_number!(nil, HEKI_EXIT_DENIAL), 0)
        XCTAssertEqual(api.cap_mask!(nil, HEKI_EXIT_DENIAL), 0)
        XCTAssertEqual(api.cap_result!(nil, HEKI_EXIT_CONFIGURE, 0), -1)
        var enableError: UnsafeMutablePointer<CChar>? = nil
        XCTAssertEqual(api.enable_caps!(nil, &enableError), -1)
        XCTAssertEqual(enableError.map { String(cString: $0) }, "heki-plugin: plugin is NULL")
        api.free_string!(enableError)
        XCTAssertEqual(api.enable_caps!(nil, nil), -1)
        api.start!(nil)
        XCTAssertEqual(api.handle_exit!(nil, 0, nil), HEKI_VERDICT_NOT_HEKI)
        XCTAssertEqual(api.handle_exit!(plugin, 0, nil), HEKI_VERDICT_NOT_HEKI)
        XCTAssertNil(api.query!(nil))
        // Unknown kinds.
        for kind in [2, 0x7fff_ffff, UInt32.max] {
            XCTAssertEqual(api.cap_mask!(plugin, HekiExitKind(rawValue: kind)), 0)
            XCTAssertEqual(api.exit_number!(plugin, HekiExitKind(rawValue: kind)), 0)
            XCTAssertEqual(api.cap_result!(plugin, HekiExitKind(rawValue: kind), 0), -1)
        }
        // The plugin is untouched by all of it.
        t.pin(cr: 0, GuestCR0.wp)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        t.freePlugin()
        XCTAssertEqual(t.count("HEKI_CONFIGURE"), 1)
    }

    // MARK: Concurrency

    /// 8 vCPU threads call handle_exit while this thread dispatches the
    /// loop and another thread calls query in a loop: every query is valid
    /// JSON with counters that only grow, and the totals are exact.
    func testConcurrentExitsWhileTheLoopDispatchesAndQueryRuns() throws {
        let vcpus: UInt32 = 8, perVcpu: UInt64 = 20_000
        let t = try TestVM.started(["rate-limit=50"], vcpus: vcpus)
        t.pin(0, cr: 0, GuestCR0.wp)
        t.pin(0, cr: 4, GuestCR4.smep)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        for i in 0..<vcpus {
            t.write(i, cr: i % 2 == 0 ? 0 : 4, 0, repeat: perVcpu)
            t.pin(i, cr: 4, GuestCR4.smap, repeat: 100)
        }
        final class Querier: @unchecked Sendable {
            let plugin: OpaquePointer
            let api: HsPluginApi
            let stop = TestFlag(false)
            var queries = 0
            var problems: [String] = []
            init(_ plugin: OpaquePointer, _ api: HsPluginApi) { self.plugin = plugin; self.api = api }
        }
        let querier = Querier(try XCTUnwrap(fh_vm_plugin(t.vm)), fh_vm_api(t.vm)!.pointee)
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            var last: UInt64 = 0
            while !querier.stop.value {
                guard let q = querier.api.query!(querier.plugin) else { querier.problems.append("NULL"); break }
                let text = String(cString: q)
                querier.api.free_string!(q)
                guard let data = text.data(using: .utf8),
                      let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any],
                      let denials = (object["counters"] as? [String: Any])?["denial"] as? [String: Any]
                else { querier.problems.append("bad JSON: \(text.prefix(100))"); break }
                let now = ((denials["cr0"] as? NSNumber)?.uint64Value ?? 0) + ((denials["cr4"] as? NSNumber)?.uint64Value ?? 0)
                if now < last { querier.problems.append("denials went from \(last) to \(now)") }
                last = now
                querier.queries += 1
            }
            done.signal()
        }
        XCTAssertEqual(t.run(), FH_STOP_NONE) // the vCPU threads, with this thread dispatching
        querier.stop.value = true
        done.wait()
        XCTAssertEqual(querier.problems, [])
        XCTAssertGreaterThan(querier.queries, 0)
        let total = UInt64(vcpus) * perVcpu
        XCTAssertEqual(fh_vm_gp_total(t.vm), total)
        t.freePlugin()
        XCTAssertEqual(t.count("HEKI_DENIAL") + t.suppressed("HEKI_DENIAL"), total)
        XCTAssertEqual(t.count("HEKI_CONFIGURE") + t.suppressed("HEKI_CONFIGURE"), 2 + UInt64(vcpus) * 100)
        XCTAssertEqual(fh_vm_callback_violations(t.vm), 0)
    }

    // MARK: Hostile guests: every storm shape

    struct Expected {
        var denials: UInt64 = 0
        var malformed: UInt64 = 0
        var configures: UInt64 = 0
        var perRegister: [String: UInt64] = ["cr0": 0, "cr4": 0]
    }

    /// Runs a storm and checks the guarantee of the main storm test for
    /// every kind: individual + suppressed == exits, == the kernel's count,
    /// == the #GPs the guest took, == the query's counters.
    private func checkStorm(_ name: String, vcpus: UInt32, options: [String] = [],
                            program: (TestVM) -> Expected) throws {
        let t = try TestVM.started(["vm-name=\(name)"] + options, vcpus: vcpus)
        t.pin(0, cr: 0, GuestCR0.wp)
        t.pin(0, cr: 4, GuestCR4.smep | GuestCR4.smap)
        XCTAssertEqual(t.run(), FH_STOP_NONE, name)
        let expected = program(t)
        XCTAssertEqual(t.run(), FH_STOP_NONE, name)
        XCTAssertEqual(fk_vm_denial_exits(t.kernel), expected.denials, name)
        XCTAssertEqual(fh_vm_gp_total(t.vm), expected.denials, "\(name): one #GP per denied write")
        XCTAssertEqual(t.verdicts(verdictNotHeki), expected.malformed, name)
        let counters = t.query().object("counters")
        XCTAssertEqual(counters?.object("denial")?.uint64("cr0"), expected.perRegister["cr0"], name)
        XCTAssertEqual(counters?.object("denial")?.uint64("cr4"), expected.perRegister["cr4"], name)
        XCTAssertEqual(counters?.uint64("malformed-exit"), expected.malformed, name)
        t.freePlugin()
        XCTAssertEqual(t.count("HEKI_DENIAL") + t.suppressed("HEKI_DENIAL"), expected.denials, name)
        XCTAssertEqual(t.count("HEKI_MALFORMED_EXIT") + t.suppressed("HEKI_MALFORMED_EXIT"), expected.malformed, name)
        XCTAssertEqual(t.count("HEKI_CONFIGURE") + t.suppressed("HEKI_CONFIGURE"), 2 + expected.configures, name)
        if expected.denials > 1000 { XCTAssertGreaterThan(t.suppressed("HEKI_DENIAL"), 0, "\(name): coalesced") }
        XCTAssertEqual(fh_vm_callback_violations(t.vm), 0, name)
    }

    func testStormFromOneVcpu() throws {
        try checkStorm("one-vcpu", vcpus: 4) { t in
            t.write(2, cr: 4, GuestCR4.host & ~GuestCR4.smap, repeat: 200_000)
            return Expected(denials: 200_000, perRegister: ["cr0": 0, "cr4": 200_000])
        }
    }

    func testStormFromEveryVcpu() throws {
        try checkStorm("all-vcpus", vcpus: 16) { t in
            for i in 0..<UInt32(16) { t.write(i, cr: 0, GuestCR0.host & ~GuestCR0.wp, repeat: 12_500) }
            return Expected(denials: 200_000, perRegister: ["cr0": 200_000, "cr4": 0])
        }
    }

    func testStormAlternatingRegisters() throws {
        try checkStorm("alternating-registers", vcpus: 4) { t in
            for i in 0..<UInt32(4) {
                for _ in 0..<5_000 {
                    t.write(i, cr: 0, 0)
                    t.write(i, cr: 4, 0)
                }
            }
            return Expected(denials: 40_000, perRegister: ["cr0": 20_000, "cr4": 20_000])
        }
    }

    /// A guest interleaves valid denials with malformed Heki exits (two
    /// reason bits, unknown bits, none) on every vCPU: each kind is counted
    /// exactly, and a malformed exit is never claimed.
    func testStormAlternatingValidAndMalformedExits() throws {
        try checkStorm("valid-and-malformed", vcpus: 4) { t in
            let bad: [UInt64] = [3, 0, 4, 1 << 63]
            for i in 0..<UInt32(4) {
                for n in 0..<5_000 {
                    t.write(i, cr: 4, GuestCR4.host & ~GuestCR4.smep)
                    t.raw(i, exit: 40, words: payload(reason: bad[n % bad.count], value: 0))
                }
            }
            return Expected(denials: 20_000, malformed: 20_000, perRegister: ["cr0": 0, "cr4": 20_000])
        }
    }

    /// Pins storm too (a guest may hammer the hypercall): configure and
    /// denial storms at once, rate-limited separately, both exact.
    func testStormOfPinsAndDenialsAtOnce() throws {
        try checkStorm("pins-and-denials", vcpus: 4) { t in
            for i in 0..<UInt32(4) {
                if i % 2 == 0 {
                    t.pin(i, cr: 4, GuestCR4.umip, repeat: 30_000)
                } else {
                    t.write(i, cr: 0, 0, repeat: 30_000)
                }
            }
            return Expected(denials: 60_000, configures: 60_000, perRegister: ["cr0": 60_000, "cr4": 0])
        }
    }
}

/// A tiny atomic flag for the test threads (no Synchronization import
/// needed by the tests elsewhere).
final class TestFlag<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value
    init(_ value: Value) { stored = value }
    var value: Value {
        get { lock.lock(); defer { lock.unlock() }; return stored }
        set { lock.lock(); stored = newValue; lock.unlock() }
    }
}
