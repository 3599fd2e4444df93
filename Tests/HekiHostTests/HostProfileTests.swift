// Profiles, number overrides, exit masks, capabilities, foreign and
// unclaimed exits: through the fake host and the dlopen'ed plugin.
import CHekiPlugin
import FakeHost
import HekiKernelModel
import XCTest

final class HostProfileTests: XCTestCase {
    private func numbers(_ t: TestVM) -> [UInt64] {
        [UInt64(fh_vm_exit_number(t.vm, HEKI_EXIT_CONFIGURE)), UInt64(fh_vm_exit_number(t.vm, HEKI_EXIT_DENIAL)),
         UInt64(fh_vm_cap_number(t.vm, HEKI_EXIT_CONFIGURE)), UInt64(fh_vm_cap_number(t.vm, HEKI_EXIT_DENIAL)),
         fh_vm_cap_mask(t.vm, HEKI_EXIT_CONFIGURE), fh_vm_cap_mask(t.vm, HEKI_EXIT_DENIAL)]
    }

    /// Pin WP then clear it: one configure and one denial exit, both claimed.
    private func pinAndDeny(_ t: TestVM, file: StaticString = #filePath, line: UInt = #line) {
        t.pin(cr: 0, GuestCR0.wp)
        t.write(cr: 0, GuestCR0.host & ~GuestCR0.wp)
        XCTAssertEqual(t.run(), FH_STOP_NONE, file: file, line: line)
        XCTAssertEqual(t.verdicts(verdictResume), 2, file: file, line: line)
        XCTAssertEqual(t.verdicts(verdictNotHeki), 0, file: file, line: line)
        XCTAssertEqual(fh_vm_gp_total(t.vm), 1, file: file, line: line)
    }

    /// The HEKI_CAPABILITY events of the kernel check (the ones without "kind").
    private func kernelEvents(_ t: TestVM) -> [[String: Any]] {
        t.events("HEKI_CAPABILITY").filter { $0["kind"] == nil }
    }

    func testAutoIsTheDefaultAndFindsAV2Kernel() throws {
        let t = try TestVM.started([])
        XCTAssertEqual(numbers(t), [39, 40, 235, 236, 3, 3])
        pinAndDeny(t)
        let q = t.query()
        XCTAssertEqual(q.string("abi"), "auto")
        XCTAssertEqual(q.string("profile"), "v2")
        XCTAssertEqual(q.object("kernel")?.string("status"), "heki")
        t.freePlugin()
        XCTAssertEqual(t.events("HEKI_CONFIGURE").first?.int("exit-reason"), 39)
        XCTAssertEqual(t.events("HEKI_DENIAL").first?.int("exit-reason"), 40)
        let check = kernelEvents(t)
        XCTAssertEqual(check.count, 1)
        XCTAssertEqual(check.first?.string("status"), "heki")
        XCTAssertEqual(check.first?.string("profile"), "v2")
        XCTAssertEqual(check.first?.string("abi"), "auto")
    }

    func testAutoFindsAV3Kernel() throws {
        let t = try TestVM.started([], kernel: fk_profile(FK_PROFILE_V3))
        XCTAssertEqual(numbers(t), [40, 41, 236, 237, 3, 3])
        pinAndDeny(t)
        XCTAssertEqual(t.query().string("profile"), "v3")
    }

    func testV2Profile() throws {
        let t = try TestVM.started(["abi=v2"])
        XCTAssertEqual(numbers(t), [39, 40, 235, 236, 3, 3])
        XCTAssertEqual(fh_vm_cap_kvm_result(t.vm, HEKI_EXIT_CONFIGURE), 0)
        XCTAssertEqual(fh_vm_cap_kvm_result(t.vm, HEKI_EXIT_DENIAL), 0)
        pinAndDeny(t)
        let q = t.query()
        XCTAssertEqual(q.string("profile"), "v2")
        XCTAssertEqual(q.int("abi-version"), 1)
    }

    func testV3Profile() throws {
        let t = try TestVM.started(["abi=v3"], kernel: fk_profile(FK_PROFILE_V3))
        XCTAssertEqual(numbers(t), [40, 41, 236, 237, 3, 3])
        XCTAssertEqual(fk_vm_configure_mask(t.kernel), 3)
        XCTAssertEqual(fk_vm_denial_mask(t.kernel), 3)
        pinAndDeny(t)
        let q = t.query()
        XCTAssertEqual(q.string("profile"), "v3")
        let exits = q.object("exits")
        XCTAssertEqual(exits?.object("configure")?.int("exit"), 40)
        XCTAssertEqual(exits?.object("denial")?.int("capability"), 237)
        t.freePlugin()
        XCTAssertEqual(t.events("HEKI_CONFIGURE").first?.int("exit-reason"), 40)
        XCTAssertEqual(t.events("HEKI_DENIAL").first?.int("exit-reason"), 41)
    }

    func testFredRequirementOnlyUnderV3() throws {
        let lib = try PluginLibrary.require()
        let v2 = TestVM(lib: lib)
        XCTAssertFalse(v2.create(["abi=v2", "require-cr4=fred"]))
        XCTAssertTrue(v2.error.contains("require-cr4"), v2.error)
        let v3 = TestVM(lib: lib, kernel: fk_profile(FK_PROFILE_V3))
        XCTAssertTrue(v3.create(["abi=v3", "require-cr4=smep+fred"]), v3.error)
    }

    func testExplicitNumberOverrides() throws {
        var kernel = fk_profile(FK_PROFILE_V2)
        kernel.exit_configure = 80
        kernel.exit_denial = 81
        kernel.cap_configure = 300
        kernel.cap_denial = 301
        let t = try TestVM.started(["abi=v2", "exit-configure=0x50", "exit-denial=81", "cap-configure=300",
                                    "cap-denial=0x12d"], kernel: kernel)
        XCTAssertEqual(numbers(t), [80, 81, 300, 301, 3, 3])
        pinAndDeny(t)
        // The profile's own numbers are no longer claimed.
        t.raw(exit: 39, words: payload(reason: 1, value: GuestCR0.wp))
        t.raw(exit: 40, words: payload(reason: 1, value: 0))
        t.run()
        XCTAssertEqual(t.verdicts(verdictNotHeki), 2)
        t.freePlugin()
        XCTAssertEqual(t.events("HEKI_CONFIGURE").first?.int("exit-reason"), 80)
        XCTAssertEqual(t.events("HEKI_DENIAL").first?.int("exit-reason"), 81)
        XCTAssertEqual(t.count("HEKI_MALFORMED_EXIT"), 0)
    }

    func testOverrideOnTopOfV3() throws {
        let t = TestVM(lib: try PluginLibrary.require(), kernel: fk_profile(FK_PROFILE_V3))
        XCTAssertTrue(t.create(["abi=v3", "exit-denial=99"]), t.error)
        XCTAssertEqual(numbers(t), [0, 0, 0, 0, 0, 0], "nothing is named before the kernel is checked")
        XCTAssertEqual(t.enableCaps(), 0, t.error)
        XCTAssertEqual(numbers(t), [40, 99, 236, 237, 3, 3])
    }

    func testExitMasks() throws {
        let cases: [(String, UInt64)] = [("cr0", 1), ("cr4", 2), ("cr0+cr4", 3), ("none", 0)]
        for (configure, cmask) in cases {
            for (denial, dmask) in cases {
                let t = try TestVM.started(["configure-exits=\(configure)", "denial-exits=\(denial)"])
                XCTAssertEqual(fh_vm_cap_mask(t.vm, HEKI_EXIT_CONFIGURE), cmask, configure)
                XCTAssertEqual(fh_vm_cap_mask(t.vm, HEKI_EXIT_DENIAL), dmask, denial)
                XCTAssertEqual(fk_vm_configure_mask(t.kernel), cmask)
                XCTAssertEqual(fk_vm_denial_mask(t.kernel), dmask)
                XCTAssertEqual(fh_vm_cap_kvm_result(t.vm, HEKI_EXIT_CONFIGURE), cmask == 0 ? FH_CAP_SKIPPED : 0)
                XCTAssertEqual(fh_vm_cap_kvm_result(t.vm, HEKI_EXIT_DENIAL), dmask == 0 ? FH_CAP_SKIPPED : 0)
                t.pin(cr: 0, GuestCR0.wp)
                t.pin(cr: 4, GuestCR4.smep)
                t.write(cr: 0, GuestCR0.host & ~GuestCR0.wp)
                t.write(cr: 4, GuestCR4.host & ~GuestCR4.smep)
                XCTAssertEqual(t.run(), FH_STOP_NONE)
                let expectedConfigure = UInt64(cmask.nonzeroBitCount)
                let expectedDenial = UInt64(dmask.nonzeroBitCount)
                XCTAssertEqual(fh_vm_exits(t.vm), expectedConfigure + expectedDenial, "\(configure)/\(denial)")
                XCTAssertEqual(t.verdicts(verdictResume), expectedConfigure + expectedDenial)
                XCTAssertEqual(fh_vm_gp_total(t.vm), 2, "every denial ends in #GP, exit or not")
                let q = t.query()
                XCTAssertEqual(q.object("exits")?.object("configure")?.string("mask"), hex(cmask))
                // A kind never enabled has "granted": null.
                XCTAssertEqual(q.object("exits")?.object("denial")?.string("granted"), dmask == 0 ? nil : hex(dmask))
                XCTAssertEqual(q.object("exits")?.object("denial")?.bool("enabled"), dmask != 0)
                t.freePlugin()
                XCTAssertEqual(t.count("HEKI_CONFIGURE"), expectedConfigure)
                XCTAssertEqual(t.count("HEKI_DENIAL"), expectedDenial)
                XCTAssertEqual(t.count("HEKI_CAPABILITY"), UInt64(1 + (cmask != 0 ? 1 : 0) + (dmask != 0 ? 1 : 0)),
                               "the kernel check, then each KVM_ENABLE_CAP; a kind with mask 0 is not enabled")
                let registers = Set(t.events("HEKI_CONFIGURE").compactMap { $0.string("register") })
                XCTAssertEqual(registers, Set((cmask & 1 != 0 ? ["cr0"] : []) + (cmask & 2 != 0 ? ["cr4"] : [])))
            }
        }
    }

    func testForeignExitsAreNotHekiAndSilent() throws {
        let t = try TestVM.started([])
        t.raw(exit: 2, words: payload(reason: 1, value: GuestCR0.wp))  // KVM_EXIT_IO
        t.raw(exit: 5, words: payload(reason: 2, value: 0))       // KVM_EXIT_HLT
        t.raw(exit: 0, words: [])
        t.raw(exit: 41, words: payload(reason: 1))
        t.raw(exit: UInt32.max, words: payload(reason: 1))
        t.run()
        XCTAssertEqual(t.verdicts(verdictNotHeki), 5)
        XCTAssertEqual(fh_vm_host_handled(t.vm), 5)
        let q = t.query()
        XCTAssertEqual(q.object("counters")?.int("malformed-exit"), 0)
        t.freePlugin()
        XCTAssertEqual(fh_vm_event_total(t.vm), 3, "only the HEKI_CAPABILITY events")
        XCTAssertEqual(t.count("HEKI_CAPABILITY"), 3)
    }

    func testExit39IsMemoryFaultUnderV3() throws {
        let t = try TestVM.started(["abi=v3"], kernel: fk_profile(FK_PROFILE_V3))
        t.raw(exit: 39, words: payload(reason: 1, value: GuestCR0.wp))
        t.raw(exit: 39, words: payload(reason: 3, value: 0))
        t.run()
        XCTAssertEqual(t.verdicts(verdictNotHeki), 2)
        t.freePlugin()
        XCTAssertEqual(t.count("HEKI_MALFORMED_EXIT"), 0)
        XCTAssertEqual(t.count("HEKI_CONFIGURE"), 0)
    }

    func testExitsAreNotClaimedBeforeEnableCaps() throws {
        let t = TestVM(lib: try PluginLibrary.require())
        XCTAssertTrue(t.create(["abi=v2", "denial-exits=none"]), t.error)
        let run = fh_vm_vcpu_run(t.vm, 0)!
        var words = payload(reason: 1, value: GuestCR0.wp)
        fk_run_write_raw(run, 39, &words)
        XCTAssertEqual(fh_vm_handle_exit(t.vm, 0, run), verdictNotHeki)
        // ABI 1.0's report claims nothing by itself: the kernel is unchecked.
        XCTAssertEqual(fh_vm_cap_result(t.vm, HEKI_EXIT_CONFIGURE, 0), -1)
        XCTAssertEqual(fh_vm_handle_exit(t.vm, 0, run), verdictNotHeki)
        XCTAssertEqual(t.enableCaps(), 0, t.error)
        XCTAssertEqual(fh_vm_handle_exit(t.vm, 0, run), verdictResume)
        XCTAssertEqual(fh_vm_cap_result(t.vm, HEKI_EXIT_CONFIGURE, 0), 0)
        XCTAssertEqual(fh_vm_cap_result(t.vm, HEKI_EXIT_DENIAL, 0), -1, "denial-exits=none: not enabled")
        // The denial kind is unclaimed: silently the host's.
        fk_run_write_raw(run, 40, &words)
        XCTAssertEqual(fh_vm_handle_exit(t.vm, 0, run), verdictNotHeki)
        XCTAssertEqual(t.query().object("counters")?.int("malformed-exit"), 0)
        // A second check is refused.
        XCTAssertEqual(t.enableCaps(), -1)
        XCTAssertEqual(t.error, "heki-plugin: heki_plugin_enable_caps was already called")
        // NULL run / NULL plugin through the raw table.
        let api = fh_vm_api(t.vm)!.pointee
        XCTAssertEqual(api.handle_exit!(fh_vm_plugin(t.vm), 0, nil), HEKI_VERDICT_NOT_HEKI)
        XCTAssertEqual(api.handle_exit!(nil, 0, run), HEKI_VERDICT_NOT_HEKI)
        XCTAssertNil(api.query!(nil))
        XCTAssertEqual(api.exit_number!(fh_vm_plugin(t.vm), HekiExitKind(rawValue: 7)), 0)
        XCTAssertEqual(api.cap_number!(fh_vm_plugin(t.vm), HekiExitKind(rawValue: 7)), 0)
        XCTAssertEqual(api.cap_result!(fh_vm_plugin(t.vm), HekiExitKind(rawValue: 7), 0), -1)
    }

    func testKernelWithoutHekiLeavesExitsUnclaimed() throws {
        let t = TestVM(lib: try PluginLibrary.require())
        fk_vm_set_heki_built(t.kernel, false)
        XCTAssertTrue(t.create(["vm-name=noheki"]), t.error)
        XCTAssertEqual(t.enableCaps(), 0, "require-caps is off by default")
        XCTAssertEqual(fh_vm_cap_kvm_result(t.vm, HEKI_EXIT_CONFIGURE), -22)
        XCTAssertEqual(fh_vm_cap_kvm_result(t.vm, HEKI_EXIT_DENIAL), -22)
        // Something else on the same numbers (an unpatched kernel's 39/40).
        t.raw(exit: 39, words: payload(reason: 1, value: GuestCR0.wp))
        t.raw(exit: 40, words: payload(reason: 2, value: 0))
        t.run()
        XCTAssertEqual(t.verdicts(verdictNotHeki), 2)
        let q = t.query()
        XCTAssertEqual(q.object("exits")?.object("configure")?.bool("enabled"), false)
        XCTAssertEqual(q.object("counters")?.int("malformed-exit"), 0, "unclaimed numbers are the host's, silently")
        t.freePlugin()
        XCTAssertEqual(t.count("HEKI_MALFORMED_EXIT"), 0)
        // CHECK_EXTENSION answers like Heki without CONFIG_HEKI; only
        // KVM_ENABLE_CAP tells.
        XCTAssertEqual(kernelEvents(t).first?.string("status"), "heki")
        let caps = t.events("HEKI_CAPABILITY").filter { $0["kind"] != nil }
        XCTAssertEqual(caps.count, 2)
        XCTAssertEqual(caps.first?.int("result"), -22)
        XCTAssertEqual(caps.first?.bool("enabled"), false)
        XCTAssertEqual(caps.first?.bool("required"), false)
        XCTAssertEqual(caps.first?.string("vm-name"), "noheki")
    }

    /// An overridden capability must answer like a Heki capability itself;
    /// one that does not stops the whole profile, not only its kind.
    func testAnOverrideCapThatIsNotHekiEnablesNothing() throws {
        let t = try TestVM.started(["abi=v2", "cap-configure=999"])
        XCTAssertEqual(numbers(t), [0, 0, 0, 0, 0, 0])
        XCTAssertEqual(fh_vm_enable_call_count(t.vm), 0, "no KVM_ENABLE_CAP at all")
        XCTAssertEqual((0..<fh_vm_check_call_count(t.vm)).map { fh_vm_check_call(t.vm, $0).cap }, [235, 236, 237, 999])
        t.raw(exit: 39, words: payload(reason: 1, value: GuestCR0.wp))
        t.write(cr: 0, 0)
        t.run()
        XCTAssertEqual(t.verdicts(verdictNotHeki), 1)
        XCTAssertEqual(fh_vm_exits(t.vm), 1, "no denial cap: the kernel injects the #GP itself")
        t.freePlugin()
        XCTAssertEqual(kernelEvents(t).first?.string("status"), "mismatch")
        XCTAssertEqual(t.count("HEKI_MALFORMED_EXIT"), 0)
        XCTAssertTrue(t.logs.contains { $0.contains("capabilities 999/236 do not answer 3") }, "\(t.logs)")
    }

    func testRequireCapsStopsTheVMMWhenKVMRefuses() throws {
        for on in ["on", "yes", "true"] {
            let t = TestVM(lib: try PluginLibrary.require())
            fk_vm_set_heki_built(t.kernel, false)
            XCTAssertTrue(t.create(["require-caps=\(on)"]), t.error)
            XCTAssertEqual(t.enableCaps(), -1)
            XCTAssertEqual(t.error, "heki-plugin: require-caps=on: KVM refused capability 235 (heki configure, mask cr0+cr4): Invalid argument (-22)")
            XCTAssertEqual(fh_vm_cap_kvm_result(t.vm, HEKI_EXIT_CONFIGURE), -22)
            t.freePlugin()
            let cap = t.events("HEKI_CAPABILITY").first { $0["kind"] != nil }
            XCTAssertEqual(cap?.bool("required"), true)
            XCTAssertEqual(cap?.bool("enabled"), false)
            XCTAssertEqual(cap?.int("result"), -22)
            XCTAssertEqual(cap?.int("capability"), 235)
        }
        for off in ["off", "no", "false"] {
            let t = TestVM(lib: try PluginLibrary.require())
            fk_vm_set_heki_built(t.kernel, false)
            XCTAssertTrue(t.create(["require-caps=\(off)"]), t.error)
            XCTAssertEqual(t.enableCaps(), 0)
        }
        // Required and granted: fine.
        let ok = try TestVM.started(["require-caps=on"])
        XCTAssertEqual(fh_vm_cap_kvm_result(ok.vm, HEKI_EXIT_DENIAL), 0)
    }

    func testCapabilityEventFields() throws {
        let t = try TestVM.started(["configure-exits=cr4", "vm-name=caps"])
        t.freePlugin()
        let caps = t.events("HEKI_CAPABILITY")
        XCTAssertEqual(caps.count, 3)
        let configure = caps.first { $0.string("kind") == "configure" }
        XCTAssertEqual(configure?.int("capability"), 235)
        XCTAssertEqual(configure?.string("mask"), "0x2")
        XCTAssertEqual(configure?.strings("mask-bits"), ["cr4"])
        XCTAssertEqual(configure?.int("result"), 0)
        XCTAssertEqual(configure?.bool("enabled"), true)
        XCTAssertEqual(configure?.bool("required"), false)
        XCTAssertEqual(configure?.string("vm-name"), "caps")
        let denial = caps.first { $0.string("kind") == "denial" }
        XCTAssertEqual(denial?.string("mask"), "0x3")
        XCTAssertEqual(denial?.strings("mask-bits"), ["cr0", "cr4"])
        XCTAssertEqual(denial?.int("capability"), 236)
    }
}

extension Dictionary where Key == String, Value == Any {
    func bool(_ key: String) -> Bool? { self[key] as? Bool }
}
