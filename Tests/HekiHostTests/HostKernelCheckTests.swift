// The right kernel (issue 9): every pair of kernel (Heki v2, Heki v3, stock,
// stock with an irqchip, whose 237 accepts anything) and profile (auto, v2,
// v3, overridden numbers), through the fake host and the dlopen'ed plugin:
// which capabilities reach KVM_ENABLE_CAP, which exits are claimed, what
// the host is told, and what require-caps=on does.
import CHekiPlugin
import FakeHost
import HekiKernelModel
import XCTest

final class HostKernelCheckTests: XCTestCase {
    enum Kernel: String, CaseIterable {
        case v2, v3, stock, stockIrqchip

        func make(_ lib: OpaquePointer) -> TestVM {
            let t = TestVM(lib: lib, kernel: fk_profile(self == .v3 ? FK_PROFILE_V3 : FK_PROFILE_V2))
            switch self {
            case .v2, .v3: break
            case .stock: fk_vm_set_kernel(t.kernel, FK_KERNEL_STOCK)
            case .stockIrqchip: fk_vm_set_kernel(t.kernel, FK_KERNEL_STOCK_IRQCHIP)
            }
            return t
        }

        var answers: String {
            switch self {
            case .v2: "235=3 236=3 237=0"
            case .v3: "235=1 236=3 237=3"
            case .stock, .stockIrqchip: "235=1 236=0 237=1"
            }
        }
    }

    static let override = ["abi=v2", "cap-configure=300", "cap-denial=301", "exit-configure=80", "exit-denial=81"]

    /// What the plugin must decide: the profile enabled (nil: none) and the
    /// kernel check's status.
    private func expected(_ kernel: Kernel, _ options: [String]) -> (profile: String?, status: String) {
        switch (kernel, options.first) {
        case (.stock, _), (.stockIrqchip, _): (nil, "no-heki-kernel")
        case (.v2, nil), (.v2, "abi=v2") where options.count == 1: ("v2", "heki")
        case (.v3, nil), (.v3, "abi=v3"): ("v3", "heki")
        default: (nil, "mismatch")
        }
    }

    private func enableCalls(_ t: TestVM) -> [UInt32] {
        (0..<fh_vm_enable_call_count(t.vm)).map { fh_vm_enable_call(t.vm, $0).cap }
    }

    func testEveryKernelAndProfile() throws {
        let lib = try PluginLibrary.require()
        for kernel in Kernel.allCases {
            for options in [[], ["abi=v2"], ["abi=v3"], Self.override] {
                let what = "\(kernel.rawValue) kernel, options \(options)"
                let (profile, status) = expected(kernel, options)
                let t = kernel.make(lib)
                XCTAssertTrue(t.create(options + ["vm-name=k"]), "\(what): \(t.error)")
                XCTAssertEqual(t.enableCaps(), 0, "\(what): require-caps is off")
                XCTAssertEqual((0..<fh_vm_check_call_count(t.vm)).map { fh_vm_check_call(t.vm, $0).cap },
                               options == Self.override ? [235, 236, 237, 300, 301] : [235, 236, 237], what)
                for cap: UInt32 in [235, 236, 237] where profile == nil {
                    XCTAssertEqual(fk_vm_enable_cap_calls(t.kernel, cap), 0, "\(what): KVM_ENABLE_CAP(\(cap)) reached the kernel")
                }
                XCTAssertEqual(fk_vm_apic_bus_cycle_ns(t.kernel), 1, "\(what): the APIC bus cycle changed")
                let numbers = profile == "v2" ? [39, 40, 235, 236] : profile == "v3" ? [40, 41, 236, 237] : [0, 0, 0, 0]
                XCTAssertEqual(enableCalls(t), numbers[2] == 0 ? [] : numbers[2...3].map(UInt32.init), what)
                XCTAssertEqual([fh_vm_exit_number(t.vm, HEKI_EXIT_CONFIGURE), fh_vm_exit_number(t.vm, HEKI_EXIT_DENIAL),
                                fh_vm_cap_number(t.vm, HEKI_EXIT_CONFIGURE), fh_vm_cap_number(t.vm, HEKI_EXIT_DENIAL)],
                               numbers.map(UInt32.init), what)
                // The Heki numbers of both versions: claimed only as the
                // enabled profile says, else the host's, silently.
                for number: UInt32 in [39, 40, 41] {
                    t.raw(exit: number, words: payload(reason: 1, value: GuestCR0.wp))
                }
                XCTAssertEqual(t.run(), FH_STOP_NONE, what)
                XCTAssertEqual(t.verdicts(verdictNotHeki), profile == nil ? 3 : 1, what)
                let q = t.query()
                XCTAssertEqual(q.string("profile"), profile, what)
                XCTAssertEqual(q.object("kernel")?.string("status"), status, what)
                XCTAssertEqual(q.object("kernel")?.object("answers")?.int("237"), kernel == .v2 ? 0 : kernel == .v3 ? 3 : 1, what)
                XCTAssertEqual(q.object("exits")?.object("configure")?["exit"] as? Int, profile == nil ? nil : numbers[0], what)
                t.freePlugin()
                XCTAssertEqual(t.count("HEKI_MALFORMED_EXIT"), 0, what)
                let check = t.events("HEKI_CAPABILITY").filter { $0["kind"] == nil }
                XCTAssertEqual(check.count, 1, what)
                XCTAssertEqual(check.first?.string("status"), status, what)
                XCTAssertEqual(check.first?.string("profile"), profile, what)
                XCTAssertEqual(check.first?.string("abi"), options.first.map { String($0.dropFirst(4)) } ?? "auto", what)
                XCTAssertEqual(check.first?.object("answers")?.int("236"), kernel == .v2 || kernel == .v3 ? 3 : 0, what)
                XCTAssertEqual(t.events("HEKI_CAPABILITY").count, profile == nil ? 1 : 3, what)
                // One line that names what the kernel answered.
                let lines = t.logs.filter { $0.contains("KVM_CHECK_EXTENSION") }
                XCTAssertEqual(lines.count, 1, "\(what): \(t.logs)")
                XCTAssertTrue(lines.first?.hasPrefix("heki: vm k: ") == true, what)
                XCTAssertTrue(lines.first?.contains("KVM_CHECK_EXTENSION \(kernel.answers)") == true, "\(what): \(lines)")
                if status == "no-heki-kernel" {
                    XCTAssertTrue(lines.first?.contains("no Heki kernel") == true, "\(what): \(lines)")
                }
            }
        }
    }

    func testRequireCapsStopsTheVMMUnlessTheKernelIsTheProfilesOwn() throws {
        let lib = try PluginLibrary.require()
        for kernel in Kernel.allCases {
            for options in [[], ["abi=v2"], ["abi=v3"], Self.override] {
                let what = "\(kernel.rawValue) kernel, options \(options)"
                let t = kernel.make(lib)
                XCTAssertTrue(t.create(options + ["require-caps=on"]), "\(what): \(t.error)")
                let heki = expected(kernel, options).profile != nil
                XCTAssertEqual(t.enableCaps(), heki ? 0 : -1, what)
                if !heki {
                    XCTAssertTrue(t.error.hasPrefix("heki-plugin: require-caps=on: "), "\(what): \(t.error)")
                    XCTAssertTrue(t.error.contains(kernel.answers), "\(what): \(t.error)")
                    XCTAssertEqual(fh_vm_enable_call_count(t.vm), 0, what)
                }
                t.freePlugin()
                let level = t.events("HEKI_CAPABILITY").first { $0["kind"] == nil }?.bool("required")
                XCTAssertEqual(level, true, what)
            }
        }
    }

    /// The messages name the kernel, what was asked and what was found.
    func testWhatTheHostIsTold() throws {
        let lib = try PluginLibrary.require()
        func line(_ kernel: Kernel, _ options: [String]) -> String? {
            let t = kernel.make(lib)
            XCTAssertTrue(t.create(options), t.error)
            XCTAssertEqual(t.enableCaps(), 0)
            t.freePlugin()
            return t.logs.first { $0.contains("KVM_CHECK_EXTENSION") }
        }
        XCTAssertEqual(line(.stock, []), "heki: no Heki kernel (KVM_CHECK_EXTENSION 235=1 236=0 237=1; Heki v2 answers 235=3 236=3 237!=3, v3 236=3 237=3 235 with bit 0): nothing enabled, no exit claimed")
        XCTAssertEqual(line(.v3, ["abi=v2"]), "heki: not a Heki v2 kernel (KVM_CHECK_EXTENSION 235=1 236=3 237=3; a Heki v3 kernel): nothing enabled, no exit claimed")
        XCTAssertEqual(line(.v2, ["abi=v3"]), "heki: not a Heki v3 kernel (KVM_CHECK_EXTENSION 235=3 236=3 237=0; a Heki v2 kernel): nothing enabled, no exit claimed")
        XCTAssertEqual(line(.v2, []), "heki: Heki v2 kernel (KVM_CHECK_EXTENSION 235=3 236=3 237=0), abi=auto")
        XCTAssertEqual(line(.v3, ["abi=v3"]), "heki: Heki v3 kernel (KVM_CHECK_EXTENSION 235=1 236=3 237=3), abi=v3")
    }

    /// A Heki kernel with its own numbering (a later patch version): the
    /// overrides name it, each of its caps must answer like Heki, and then
    /// its exits are claimed; abi=auto finds no kernel it knows.
    func testOverriddenNumbersOnTheirOwnKernel() throws {
        let lib = try PluginLibrary.require()
        var profile = fk_profile(FK_PROFILE_V2)
        profile.cap_configure = 300
        profile.cap_denial = 301
        profile.exit_configure = 80
        profile.exit_denial = 81
        let t = TestVM(lib: lib, kernel: profile)
        XCTAssertTrue(t.create(Self.override), t.error)
        XCTAssertEqual(t.enableCaps(), 0, t.error)
        XCTAssertEqual(enableCalls(t), [300, 301])
        XCTAssertEqual(fh_vm_exit_number(t.vm, HEKI_EXIT_DENIAL), 81)
        t.pin(cr: 0, GuestCR0.wp)
        t.write(cr: 0, 0)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        XCTAssertEqual(t.verdicts(verdictResume), 2)
        t.freePlugin()
        XCTAssertTrue(t.logs.contains { $0.contains("Heki v2 kernel (KVM_CHECK_EXTENSION 235=1 236=0 237=1 300=3 301=3, capabilities 300/301)") }, "\(t.logs)")

        let auto = TestVM(lib: lib, kernel: profile)
        XCTAssertTrue(auto.create([]), auto.error)
        XCTAssertEqual(auto.enableCaps(), 0)
        XCTAssertEqual(fh_vm_enable_call_count(auto.vm), 0)
        XCTAssertEqual(auto.query().object("kernel")?.string("status"), "no-heki-kernel")
    }

    /// The measured hazard: abi=v3 on this machine's stock kernel, whose
    /// 237 (KVM_CAP_X86_APIC_BUS_CYCLES_NS) accepts args[0] once the irqchip
    /// exists, whatever the masks asked.
    func testV3OnAStockKernelNeverTouchesTheAPICBusCycle() throws {
        let lib = try PluginLibrary.require()
        let t = Kernel.stockIrqchip.make(lib)
        XCTAssertTrue(t.create(["abi=v3", "configure-exits=none", "denial-exits=cr4"]), t.error)
        XCTAssertEqual(t.enableCaps(), 0)
        XCTAssertEqual(fk_vm_enable_cap_calls_total(t.kernel), 0)
        XCTAssertEqual(fk_vm_apic_bus_cycle_ns(t.kernel), 1)
    }
}
