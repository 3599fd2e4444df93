// Verdicts and their precedence, weak pinning, event JSON, malformed
// payloads, bad options, HekiHost checks and callback threads: through the
// fake host and the dlopen'ed plugin.
import CHekiPlugin
import FakeHost
import HekiKernelModel
import XCTest

final class HostPolicyTests: XCTestCase {
    let verdictNames: [(String, Int32)] = [("resume", verdictResume), ("pause", verdictPause),
                                            ("poweroff", verdictPoweroff), ("reset", verdictReset),
                                            ("exit", verdictExit)]

    func testEachDenialVerdict() throws {
        for (name, verdict) in verdictNames {
            let t = try TestVM.started(["on-denial=\(name)"], vcpus: 2)
            t.pin(0, cr: 0, GuestCR0.wp)
            XCTAssertEqual(t.run(), FH_STOP_NONE)
            t.write(1, cr: 0, GuestCR0.host & ~GuestCR0.wp)
            t.write(1, cr: 4, GuestCR4.host) // after the denial: runs only if resumed
            let stop = t.run()
            XCTAssertEqual(stop, verdict == verdictResume ? FH_STOP_NONE : verdict, name)
            XCTAssertEqual(t.verdicts(verdict), verdict == verdictResume ? 2 : 1, name)
            XCTAssertEqual(fh_vm_vcpu_verdict_count(t.vm, 1, verdict), 1, name)
            switch verdict {
            case verdictResume:
                XCTAssertEqual(fh_vm_vcpu_gp(t.vm, 1), 1)
            case verdictPause:
                XCTAssertEqual(fh_vm_pauses(t.vm), 1)
                XCTAssertEqual(fh_vm_vcpu_gp(t.vm, 1), 0, "#GP waits for the VM to resume")
                XCTAssertEqual(fk_vcpu_pending(t.vcpu(1)), FK_PENDING_DENIAL)
                XCTAssertEqual(t.run(), FH_STOP_NONE, "resuming runs the rest")
                XCTAssertEqual(fh_vm_vcpu_gp(t.vm, 1), 1)
            case verdictReset:
                // A pinned VM: on-reset's default makes the reset a power-off (HostResetTests).
                XCTAssertEqual(fh_vm_last_reset_verdict(t.vm), verdictPoweroff)
                XCTAssertEqual(fh_vm_resets(t.vm), 0)
                XCTAssertEqual(fh_vm_poweroffs(t.vm), 1)
                XCTAssertEqual(fh_vm_vcpu_gp(t.vm, 1), 1, "the pending #GP was completed first")
            case verdictPoweroff:
                XCTAssertEqual(fh_vm_poweroffs(t.vm), 1)
            default:
                XCTAssertEqual(fh_vm_exit_requests(t.vm), 1)
            }
            XCTAssertEqual(t.query().object("policy")?.string("on-denial"), name)
            t.freePlugin()
            let denial = t.events("HEKI_DENIAL")
            XCTAssertEqual(denial.count, 1, name)
            XCTAssertEqual(denial.first?.string("verdict"), name)
            XCTAssertEqual(denial.first?.int("vcpu"), 1)
        }
    }

    func testPerRegisterVerdictsTakePrecedence() throws {
        let t = try TestVM.started(["on-denial=poweroff", "on-denial-cr4=pause"])
        t.pin(cr: 0, GuestCR0.wp)
        t.pin(cr: 4, GuestCR4.smep)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        t.write(cr: 4, 0)
        XCTAssertEqual(t.run(), verdictPause)
        t.write(cr: 0, 0)
        XCTAssertEqual(t.run(), verdictPoweroff)
        t.freePlugin()
        XCTAssertEqual(t.events("HEKI_DENIAL").map { $0.string("verdict") ?? "" }, ["pause", "poweroff"])

        let u = try TestVM.started(["on-denial-cr0=reset", "on-denial=exit"])
        u.pin(cr: 0, GuestCR0.wp)
        u.pin(cr: 4, GuestCR4.smap)
        u.run()
        u.write(cr: 0, GuestCR0.pe)
        XCTAssertEqual(u.run(), verdictReset)
        u.write(cr: 4, 0)
        XCTAssertEqual(u.run(), verdictExit)
        // Both per-register keys, no on-denial: the default for neither.
        let w = try TestVM.started(["on-denial-cr0=pause", "on-denial-cr4=resume"])
        w.pin(cr: 0, GuestCR0.wp)
        w.pin(cr: 4, GuestCR4.smap)
        w.write(cr: 4, 0)
        w.write(cr: 0, 0)
        XCTAssertEqual(w.run(), verdictPause)
        XCTAssertEqual(w.verdicts(verdictResume), 3)
    }

    func testMissingRequiredPinsGiveOnWeakPinningAndAnEvent() throws {
        let t = try TestVM.started(["require-cr4=smep+smap", "require-cr0=wp", "on-weak-pinning=pause",
                                    "vm-name=weak"])
        t.pin(cr: 0, GuestCR0.wp)   // cr0 requirements met
        t.pin(cr: 4, GuestCR4.smep) // smap missing
        t.pin(cr: 4, GuestCR4.umip) // never reached: the VM paused
        XCTAssertEqual(t.run(), verdictPause)
        XCTAssertEqual(t.verdicts(verdictResume), 1)
        XCTAssertEqual(t.verdicts(verdictPause), 1)
        var q = t.query()
        XCTAssertEqual(q.object("pins")?.object("cr4")?.strings("missing-required"), ["smap"])
        XCTAssertEqual(q.object("counters")?.object("weak-pinning")?.int("cr4"), 1)
        // Resume; umip still leaves smap missing; then smap completes it.
        t.pin(cr: 4, GuestCR4.smap)
        XCTAssertEqual(t.run(), verdictPause, "the umip pin is still weak")
        XCTAssertEqual(t.run(), FH_STOP_NONE, "the smap pin completes the requirement")
        XCTAssertEqual(t.verdicts(verdictPause), 2)
        XCTAssertEqual(t.verdicts(verdictResume), 2)
        q = t.query()
        XCTAssertEqual(q.object("pins")?.object("cr4")?.strings("missing-required"), [])
        XCTAssertEqual(q.object("pins")?.object("cr4")?.string("value"), hex(GuestCR4.smep | GuestCR4.smap | GuestCR4.umip))
        t.freePlugin()
        let weak = t.events("HEKI_WEAK_PINNING")
        XCTAssertEqual(weak.count, 2)
        let first = try XCTUnwrap(weak.first)
        XCTAssertEqual(first.string("vm-name"), "weak")
        XCTAssertEqual(first.int("vcpu"), 0)
        XCTAssertEqual(first.string("register"), "cr4")
        XCTAssertEqual(first.string("pinned"), hex(GuestCR4.smep))
        XCTAssertEqual(first.strings("pinned-bits"), ["smep"])
        XCTAssertEqual(first.string("required"), hex(GuestCR4.smep | GuestCR4.smap))
        XCTAssertEqual(first.strings("required-bits"), ["smep", "smap"])
        XCTAssertEqual(first.string("missing"), hex(GuestCR4.smap))
        XCTAssertEqual(first.strings("missing-bits"), ["smap"])
        XCTAssertEqual(first.string("verdict"), "pause")
        // The CONFIGURE event of a weak pin carries the weak-pinning verdict.
        let configure = t.events("HEKI_CONFIGURE").filter { $0.string("register") == "cr4" }
        XCTAssertEqual(configure.map { $0.string("verdict") ?? "" }, ["pause", "pause", "resume"])
    }

    func testWeakPinningIsJudgedPerRegister() throws {
        let t = try TestVM.started(["require-cr4=smep", "on-weak-pinning=poweroff"])
        t.pin(cr: 0, GuestCR0.wp) // cr0 has no requirement
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        t.pin(cr: 4, GuestCR4.umip)
        XCTAssertEqual(t.run(), verdictPoweroff)
        t.freePlugin()
        XCTAssertEqual(t.count("HEKI_WEAK_PINNING"), 1)
        // Default on-weak-pinning is resume, with the event still emitted.
        let u = try TestVM.started(["require-cr0=wp+pg"])
        u.pin(cr: 0, GuestCR0.wp)
        XCTAssertEqual(u.run(), FH_STOP_NONE)
        XCTAssertEqual(u.verdicts(verdictResume), 1)
        u.freePlugin()
        XCTAssertEqual(u.events("HEKI_WEAK_PINNING").first?.strings("missing-bits"), ["pg"])
        XCTAssertEqual(u.events("HEKI_WEAK_PINNING").first?.string("verdict"), "resume")
    }

    func testConfigureAndDenialEventFields() throws {
        let t = try TestVM.started(["vm-name=fields"], vcpus: 3)
        t.pin(2, cr: 4, GuestCR4.smep | GuestCR4.cet) // CET: the host lacks it, the kernel drops it
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        t.pin(1, cr: 4, GuestCR4.smap)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        let attempt = (GuestCR4.host & ~GuestCR4.smep & ~GuestCR4.smap) | (1 << 40)
        t.write(0, cr: 4, attempt)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        let q = t.query()
        XCTAssertEqual(q.object("counters")?.object("configure")?.int("cr4"), 2)
        XCTAssertEqual(q.object("counters")?.object("denial")?.int("cr4"), 1)
        XCTAssertEqual(q.object("counters")?.object("denial")?.int("cr0"), 0)
        XCTAssertEqual(q.object("pins")?.object("cr4")?.strings("bits"), ["smep", "smap"])
        t.freePlugin()
        let configure = t.events("HEKI_CONFIGURE")
        XCTAssertEqual(configure.count, 2)
        let c0 = try XCTUnwrap(configure.first), c1 = configure[1]
        XCTAssertEqual(c0.string("vm-name"), "fields")
        XCTAssertEqual(c0.int("vcpu"), 2)
        XCTAssertEqual(c0.string("register"), "cr4")
        XCTAssertEqual(c0.int("exit-reason"), 39)
        XCTAssertEqual(c0.string("value"), hex(GuestCR4.smep))
        XCTAssertEqual(c0.strings("value-bits"), ["smep"])
        XCTAssertEqual(c0.string("pinned"), hex(GuestCR4.smep))
        XCTAssertEqual(c0.string("verdict"), "resume")
        XCTAssertEqual(c1.int("vcpu"), 1)
        XCTAssertEqual(c1.string("value"), "0x200000", "this call's bits")
        XCTAssertEqual(c1.string("pinned"), "0x300000", "the ledger's total")
        XCTAssertEqual(c1.strings("pinned-bits"), ["smep", "smap"])
        let d = try XCTUnwrap(t.events("HEKI_DENIAL").first)
        XCTAssertEqual(d.string("vm-name"), "fields")
        XCTAssertEqual(d.int("vcpu"), 0)
        XCTAssertEqual(d.string("register"), "cr4")
        XCTAssertEqual(d.int("exit-reason"), 40)
        XCTAssertEqual(d.string("value"), hex(attempt))
        XCTAssertTrue(d.strings("value-bits")?.contains("bit40") ?? false, "unknown bits are named bit<N>")
        XCTAssertTrue(d.strings("value-bits")?.contains("umip") ?? false)
        XCTAssertFalse(d.strings("value-bits")?.contains("smep") ?? true)
        XCTAssertEqual(d.string("pinned"), "0x300000")
        XCTAssertEqual(d.string("violated"), "0x300000")
        XCTAssertEqual(d.strings("violated-bits"), ["smep", "smap"])
        XCTAssertEqual(d.string("verdict"), "resume")
        // The raw JSON is one compact line.
        for e in t.events {
            XCTAssertFalse(e.raw.contains("\n"))
            XCTAssertFalse(e.raw.contains(": "), e.raw)
        }
    }

    func testNoVmNameWhenNotSet() throws {
        let t = try TestVM.started([])
        t.pin(cr: 0, GuestCR0.wp)
        t.run()
        t.freePlugin()
        XCTAssertGreaterThan(t.events.count, 0)
        for e in t.events { XCTAssertNil(e.data["vm-name"], e.raw) }
    }

    func testVmNameIsEscaped() throws {
        let t = try TestVM.started(["vm-name=a\"b\\c"])
        t.freePlugin()
        XCTAssertEqual(t.events("HEKI_CAPABILITY").first?.string("vm-name"), "a\"b\\c")
    }

    func testMalformedPayloadsAreNotClaimedAndAreReported() throws {
        let t = try TestVM.started(["denial-exits=cr0", "vm-name=mal"])
        let reasons: [UInt64] = [0, 3, 4, 1 << 63]
        for r in reasons {
            t.raw(exit: 39, words: payload(reason: r, value: GuestCR0.wp))
            t.raw(exit: 40, words: payload(reason: r, value: 0))
        }
        t.raw(exit: 40, words: payload(reason: 2, value: 0)) // cr4 not in the denial mask
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        XCTAssertEqual(t.verdicts(verdictNotHeki), 9)
        XCTAssertEqual(fh_vm_host_handled(t.vm), 9)
        let q = t.query()
        XCTAssertEqual(q.object("counters")?.int("malformed-exit"), 9)
        XCTAssertEqual(q.object("pins")?.object("cr0")?.string("value"), "0x0", "nothing was pinned")
        t.freePlugin()
        let malformed = t.events("HEKI_MALFORMED_EXIT")
        XCTAssertEqual(malformed.count, 9)
        for (i, r) in reasons.enumerated() {
            let c = malformed[2 * i], d = malformed[2 * i + 1]
            XCTAssertEqual(c.string("reason"), hex(r))
            XCTAssertEqual(c.string("problem"), "reason-not-one-known-bit")
            XCTAssertEqual(c.string("kind"), "configure")
            XCTAssertEqual(c.int("exit-reason"), 39)
            XCTAssertEqual(c.string("verdict"), "not-heki")
            XCTAssertEqual(c.int("vcpu"), 0)
            XCTAssertEqual(c.string("vm-name"), "mal")
            XCTAssertEqual(d.string("kind"), "denial")
            XCTAssertEqual(d.int("exit-reason"), 40)
        }
        XCTAssertEqual(malformed[8].string("problem"), "register-not-enabled")
        XCTAssertEqual(malformed[8].string("reason"), "0x2")
        XCTAssertEqual(t.count("HEKI_CONFIGURE") + t.count("HEKI_DENIAL"), 0)
    }

    func testBadOptionsNameTheKey() throws {
        let lib = try PluginLibrary.require()
        let cases: [([String], String)] = [
            (["abi=v4"], "abi"),
            (["on-denial=explode"], "on-denial"),
            (["on-denial-cr4=maybe"], "on-denial-cr4"),
            (["on-weak-pinning=later"], "on-weak-pinning"),
            (["configure-exits=cr3"], "configure-exits"),
            (["denial-exits=cr0+cr8"], "denial-exits"),
            (["exit-configure=forty"], "exit-configure"),
            (["cap-denial=-1"], "cap-denial"),
            (["exit-denial=0x1g"], "exit-denial"),
            (["rate-limit=1000001"], "rate-limit"),
            (["rate-limit=ten"], "rate-limit"),
            (["require-caps=perhaps"], "require-caps"),
            (["require-cr0=smep"], "require-cr0"),
            (["require-cr4=pe"], "require-cr4"),
            (["require-cr4=smep+nope"], "require-cr4"),
            (["vm-name=a", "vm-name=b"], "vm-name"),
            (["abi=v2", "on-denial=pause", "abi=v3"], "abi"),
        ]
        // An unknown key: the message names it and lists the keys.
        // (The plugin words this one "heki-plugin: unknown option 'KEY'; keys: ...".)
        let unknown = TestVM(lib: lib)
        XCTAssertFalse(unknown.create(["color=blue"]))
        XCTAssertTrue(unknown.error.hasPrefix("heki-plugin: "), unknown.error)
        XCTAssertTrue(unknown.error.contains("color"), unknown.error)
        for key in ["abi", "on-denial-cr4", "require-caps", "rate-limit", "audit-log"] {
            XCTAssertTrue(unknown.error.contains(key), unknown.error)
        }
        for (argv, key) in cases {
            let t = TestVM(lib: lib)
            XCTAssertFalse(t.create(argv), "\(argv) accepted")
            XCTAssertTrue(t.error.hasPrefix("heki-plugin: \(key)"), "\(argv): \(t.error)")
            XCTAssertNil(fh_vm_plugin(t.vm))
        }
        let t = TestVM(lib: lib)
        XCTAssertFalse(t.create(["pause"]))
        XCTAssertTrue(t.error.hasPrefix("heki-plugin: "), t.error)
        XCTAssertTrue(t.error.contains("pause"), t.error)
        // The message lists what is accepted.
        let u = TestVM(lib: lib)
        XCTAssertFalse(u.create(["on-denial=explode"]))
        for word in ["resume", "pause", "poweroff", "reset", "exit"] {
            XCTAssertTrue(u.error.contains(word), u.error)
        }
    }

    func testGoodOptionSpellings() throws {
        let lib = try PluginLibrary.require()
        let good: [[String]] = [
            ["abi=v2", "exit-configure=39", "exit-denial=0x28", "cap-configure=235", "cap-denial=0xec"],
            ["configure-exits=none", "denial-exits=cr4"],
            ["rate-limit=0"], ["rate-limit=1000000"],
            ["require-cr0=pe+mp+em+ts+et+ne+wp+am+nw+cd+pg"],
            ["require-cr4=smep+smap+umip+fsgsbase+cet"], ["require-cr4=none", "require-cr0=none"],
            ["vm-name=x=y"],
        ]
        for argv in good {
            let t = TestVM(lib: lib)
            XCTAssertTrue(t.create(argv), "\(argv): \(t.error)")
        }
    }

    func testHekiHostSizeDecidesWhichFieldsAreRead() throws {
        let lib = try PluginLibrary.require()
        let small = TestVM(lib: lib)
        fh_vm_set_host_size(small.vm, 8)
        XCTAssertFalse(small.create([]))
        XCTAssertTrue(small.error.contains("size"), small.error)
        let zero = TestVM(lib: lib)
        fh_vm_set_host_size(zero.vm, 0)
        XCTAssertFalse(zero.create([]))
        let oneShort = TestVM(lib: lib)
        fh_vm_set_host_size(oneShort.vm, HEKI_HOST_SIZE_1_0 - 1)
        XCTAssertFalse(oneShort.create([]))
        XCTAssertEqual(oneShort.error, "heki-plugin: HekiHost.size is 39 bytes; ABI version 1 needs at least 40")
        let larger = TestVM(lib: lib)
        fh_vm_set_host_size(larger.vm, UInt32(MemoryLayout<HekiHost>.size + 64))
        XCTAssertTrue(larger.create([]), larger.error)
        XCTAssertEqual(larger.enableCaps(), 0)
        larger.freePlugin()
        XCTAssertEqual(larger.count("HEKI_CAPABILITY"), 3, "the callbacks of a larger struct work")
        XCTAssertEqual(HEKI_HOST_SIZE_1_2, UInt32(MemoryLayout<HekiHost>.size))
    }

    /// A heki-plugin 1.0 host (its struct ends at `event`) cannot give
    /// KVM_CHECK_EXTENSION's answers: the plugin reads none of the fields
    /// past its size, enables nothing, claims nothing and says so once.
    func testHostOfVersion1_0EnablesNothing() throws {
        let lib = try PluginLibrary.require()
        let t = TestVM(lib: lib)
        fh_vm_set_host_size(t.vm, HEKI_HOST_SIZE_1_0)
        XCTAssertTrue(t.create(["abi=v2", "vm-name=old"]), t.error)
        XCTAssertEqual(fh_vm_cap_mask(t.vm, HEKI_EXIT_CONFIGURE), 0, "a 1.0 host enables a cap only when its mask is not 0")
        XCTAssertEqual(fh_vm_cap_mask(t.vm, HEKI_EXIT_DENIAL), 0)
        XCTAssertEqual(t.enableCaps(), -1)
        XCTAssertTrue(t.error.contains("HekiHost.check_extension"), t.error)
        XCTAssertEqual(fh_vm_check_call_count(t.vm), 0, "the callbacks past the 1.0 size are not read")
        XCTAssertEqual(fh_vm_enable_call_count(t.vm), 0)
        t.raw(exit: 39, words: payload(reason: 1, value: GuestCR0.wp))
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        XCTAssertEqual(t.verdicts(verdictNotHeki), 1)
        XCTAssertEqual(t.query().object("kernel")?.string("status"), "host-cannot-check")
        t.freePlugin()
        XCTAssertEqual(t.count("HEKI_CAPABILITY"), 1)
        XCTAssertEqual(t.events("HEKI_CAPABILITY").first?.string("status"), "host-cannot-check")
        XCTAssertEqual(t.count("HEKI_MALFORMED_EXIT"), 0)
        XCTAssertEqual(t.logs.filter { $0.contains("nothing enabled") }.count, 1, "\(t.logs)")
        // require-caps=on cannot be honoured by such a host: refused at once.
        let strict = TestVM(lib: lib)
        fh_vm_set_host_size(strict.vm, HEKI_HOST_SIZE_1_0)
        XCTAssertFalse(strict.create(["require-caps=on"]))
        XCTAssertTrue(strict.error.hasPrefix("heki-plugin: require-caps: on needs a host"), strict.error)
    }

    func testAHostWithoutCallbacksStillGetsVerdicts() throws {
        let t = TestVM(lib: try PluginLibrary.require())
        fh_vm_set_host_callbacks(t.vm, false, false)
        XCTAssertTrue(t.create([]), t.error)
        XCTAssertEqual(t.enableCaps(), 0)
        t.pin(cr: 0, GuestCR0.wp)
        t.write(cr: 0, 0)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        XCTAssertEqual(t.verdicts(verdictResume), 2)
        let q = t.query()
        XCTAssertEqual(q.object("counters")?.object("denial")?.int("cr0"), 1)
        t.freePlugin()
        XCTAssertEqual(fh_vm_event_total(t.vm), 0)
        XCTAssertEqual(fh_vm_log_total(t.vm), 0)
    }

    func testCallbacksOnlyOnTheContextThread() throws {
        let t = try TestVM.started(["rate-limit=50"], vcpus: 4)
        XCTAssertEqual(fh_vm_event_total(t.vm), 0, "heki_plugin_new and cap_result never call back")
        for i in 0..<UInt32(4) {
            t.pin(i, cr: 4, GuestCR4.smep)
            t.write(i, cr: 4, 0, repeat: 5000)
        }
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        fh_vm_run_loop_ms(t.vm, 100)
        XCTAssertGreaterThan(fh_vm_event_total(t.vm), 0, "events came while the loop ran")
        t.freePlugin()
        XCTAssertGreaterThan(fh_vm_log_total(t.vm), 0)
        XCTAssertEqual(fh_vm_callback_violations(t.vm), 0)
    }

    func testHandleExitNeverCallsBack() throws {
        let t = try TestVM.started([])
        fh_vm_iterate_until_idle(t.vm) // the HEKI_CAPABILITY events
        let before = fh_vm_event_total(t.vm)
        let run = fh_vm_vcpu_run(t.vm, 0)!
        var words = payload(reason: 1, value: GuestCR0.wp)
        fk_run_write_raw(run, 39, &words)
        XCTAssertEqual(fh_vm_handle_exit(t.vm, 0, run), verdictResume)
        XCTAssertEqual(fh_vm_event_total(t.vm), before, "nothing is delivered until the loop runs")
        fh_vm_iterate_until_idle(t.vm)
        XCTAssertEqual(fh_vm_event_total(t.vm), before + 1)
        XCTAssertEqual(fh_vm_callback_violations(t.vm), 0)
    }
}
