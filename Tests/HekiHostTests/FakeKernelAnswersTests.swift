// What the kernel model answers for KVM_CHECK_EXTENSION / KVM_ENABLE_CAP of
// 235..237 on every kind of kernel (heki_kernel_model.h, FkKernelKind): the
// numbers are Heki caps on a Heki kernel and upstream caps on a stock one,
// and enabling 237 on a stock kernel with an irqchip changes the VM.
import CHekiPlugin
import FakeHost
import HekiKernelModel
import XCTest

final class FakeKernelAnswersTests: XCTestCase {
    static let einval = -Int32(FK_EINVAL), enxio = -Int32(FK_ENXIO)

    /// A profile whose caps are renumbered to 300/301 (exits as v2).
    static var custom: FkProfile {
        var p = fk_profile(FK_PROFILE_V2)
        p.cap_configure = 300
        p.cap_denial = 301
        return p
    }

    static let profiles: [(String, FkProfile)] = [
        ("v2", fk_profile(FK_PROFILE_V2)), ("v3", fk_profile(FK_PROFILE_V3)), ("custom", custom),
    ]

    /// One kernel's answers for 235, 236, 237, 300, 301: CHECK, ENABLE(args[0] = 3).
    struct Answers: Equatable {
        var check: [Int32]
        var enable: [Int32]
    }

    static let caps: [UInt32] = [235, 236, 237, 300, 301]
    let e = FakeKernelAnswersTests.einval, x = FakeKernelAnswersTests.enxio

    /// What each kernel answers, by profile.  A Heki patch took the next free
    /// numbers, so only upstream caps below its first Heki cap exist there.
    func expected(_ kind: FkKernelKind, _ profile: String) -> Answers {
        let stock237: Int32 = kind == FK_KERNEL_STOCK_IRQCHIP ? 0 : x
        if kind != FK_KERNEL_HEKI {
            return Answers(check: [1, 0, 1, 0, 0], enable: [e, e, stock237, e, e])
        }
        switch profile {
        case "v2": return Answers(check: [3, 3, 0, 0, 0], enable: [0, 0, e, e, e])
        case "v3": return Answers(check: [1, 3, 3, 0, 0], enable: [e, 0, 0, e, e])
        default: return Answers(check: [1, 0, 1, 3, 3], enable: [e, e, x, 0, 0])
        }
    }

    /// The answers of a fresh VM per ENABLE_CAP, so no call sees another's effect.
    func answers(_ kind: FkKernelKind, _ profile: FkProfile, built: Bool = true) -> Answers {
        var result = Answers(check: [], enable: [])
        for cap in Self.caps {
            var p = profile
            let vm = fk_vm_new(&p, GuestCR0.host, GuestCR4.host)!
            defer { fk_vm_free(vm) }
            fk_vm_set_kernel(vm, kind)
            fk_vm_set_heki_built(vm, built)
            result.check.append(fk_check_extension(vm, cap))
            result.enable.append(fk_enable_cap(vm, cap, 3))
            let counted = cap <= 237 || cap == profile.cap_configure || cap == profile.cap_denial
            XCTAssertEqual(fk_vm_enable_cap_calls(vm, cap), counted ? 1 : 0, "cap \(cap) counted")
            XCTAssertEqual(fk_vm_enable_cap_calls_total(vm), 1)
            let changed: UInt64 = kind == FK_KERNEL_STOCK_IRQCHIP && cap == 237 ? 3 : 1
            XCTAssertEqual(fk_vm_apic_bus_cycle_ns(vm), changed, "APIC bus cycle after enabling \(cap)")
        }
        return result
    }

    func testTheAnswerMatrix() {
        for kind in [FK_KERNEL_HEKI, FK_KERNEL_STOCK, FK_KERNEL_STOCK_IRQCHIP] {
            for (name, profile) in Self.profiles {
                XCTAssertEqual(answers(kind, profile), expected(kind, name),
                               "kernel \(kind.rawValue), profile \(name) (caps \(Self.caps))")
            }
        }
    }

    func testWithoutConfigHekiOnlyTheHekiCapsChange() {
        for (name, profile) in Self.profiles {
            var want = expected(FK_KERNEL_HEKI, name)
            let heki = [profile.cap_configure, profile.cap_denial]
            for (i, cap) in Self.caps.enumerated() where heki.contains(cap) {
                XCTAssertEqual(want.check[i], 3)
                want.enable[i] = e
            }
            XCTAssertEqual(answers(FK_KERNEL_HEKI, profile, built: false), want, "profile \(name)")
        }
    }

    func testTheDefaultKernelIsHeki() {
        var p = fk_profile(FK_PROFILE_V3)
        let vm = fk_vm_new(&p, GuestCR0.host, GuestCR4.host)!
        defer { fk_vm_free(vm) }
        XCTAssertEqual(fk_vm_kernel(vm), FK_KERNEL_HEKI)
        XCTAssertEqual(fk_vm_apic_bus_cycle_ns(vm), 1)
        fk_vm_set_kernel(vm, FkKernelKind(rawValue: 7))
        XCTAssertEqual(fk_vm_kernel(vm), FK_KERNEL_STOCK, "an unknown kind is stock")
    }

    func testApicBusCycleAsUpstream() {
        let k = KernelFixture(vcpus: 0)
        fk_vm_set_kernel(k.vm, FK_KERNEL_STOCK_IRQCHIP)
        // (u64)U32_MAX * 128 * ns must not overflow (tmict_to_ns).
        let largest = UInt64.max / (UInt64(UInt32.max) * 128)
        XCTAssertEqual(fk_enable_cap(k.vm, 237, 0), e, "0 ns")
        XCTAssertEqual(fk_enable_cap(k.vm, 237, largest + 1), e, "overflows the APIC timer")
        XCTAssertEqual(fk_vm_apic_bus_cycle_ns(k.vm), 1)
        XCTAssertEqual(fk_enable_cap(k.vm, 237, largest), 0)
        XCTAssertEqual(fk_vm_apic_bus_cycle_ns(k.vm), largest)
        XCTAssertEqual(fk_enable_cap(k.vm, 237, 3), 0, "a Heki mask taken for nanoseconds")
        XCTAssertEqual(fk_vm_apic_bus_cycle_ns(k.vm), 3)
        XCTAssertEqual(fk_vm_enable_cap_calls(k.vm, 237), 4)
        let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        let vcpu = fk_vcpu_new(k.vm, OpaquePointer(page))
        defer { fk_vcpu_free(vcpu) }
        XCTAssertEqual(fk_enable_cap(k.vm, 237, 5), e, "vCPUs already created")
        XCTAssertEqual(fk_vm_apic_bus_cycle_ns(k.vm), 3)
        // Without an irqchip the number check still comes first.
        fk_vm_set_kernel(k.vm, FK_KERNEL_STOCK)
        XCTAssertEqual(fk_enable_cap(k.vm, 237, 0), e)
        XCTAssertEqual(fk_enable_cap(k.vm, 237, 5), x)
    }

    func testEveryEnableCapIsCounted() {
        let k = KernelFixture(fk_profile(FK_PROFILE_V3))
        XCTAssertEqual(fk_check_extension(k.vm, 236), 3)
        XCTAssertEqual(fk_vm_enable_cap_calls_total(k.vm), 0, "CHECK_EXTENSION is not counted")
        fk_enable_cap(k.vm, 236, 3)
        fk_enable_cap(k.vm, 236, 4) // refused, still counted
        fk_enable_cap(k.vm, 237, 1)
        fk_enable_cap(k.vm, 235, 3)
        fk_enable_cap(k.vm, 9, 1)   // any other number: in the total only
        XCTAssertEqual([235, 236, 237, 9].map { fk_vm_enable_cap_calls(k.vm, $0) }, [1, 2, 1, 0])
        XCTAssertEqual(fk_vm_enable_cap_calls_total(k.vm), 5)
        let c = KernelFixture(Self.custom)
        fk_enable_cap(c.vm, 301, 3)
        fk_enable_cap(c.vm, 301, 3)
        XCTAssertEqual(fk_vm_enable_cap_calls(c.vm, 301), 2, "a renumbered Heki cap is counted too")
        XCTAssertEqual(fk_vm_enable_cap_calls(c.vm, 300), 0)
        XCTAssertEqual(fk_vm_denial_mask(c.vm), 3)
    }

    /// A stock kernel has no Heki at all, whatever the profile's numbers:
    /// nothing is enabled, the hypercall is unknown, nothing is ever pinned.
    func testStockKernelHasNoHeki() {
        for kind in [FK_KERNEL_STOCK, FK_KERNEL_STOCK_IRQCHIP] {
            let k = KernelFixture()
            fk_vm_set_kernel(k.vm, kind)
            let p = fk_vm_profile(k.vm)
            XCTAssertEqual(fk_enable_cap(k.vm, p.cap_configure, 3), e)
            XCTAssertEqual(fk_enable_cap(k.vm, p.cap_denial, 3), e)
            XCTAssertEqual(fk_vm_configure_mask(k.vm) | fk_vm_denial_mask(k.vm), 0)
            XCTAssertEqual(fk_vcpu_lock_cr(k.v0, 0, 0, 1), FK_OK)
            XCTAssertEqual(fk_vcpu_rax(k.v0), UInt64(bitPattern: -1000), "version query: -KVM_ENOSYS")
            XCTAssertEqual(fk_vcpu_lock_cr(k.v0, 0, GuestCR0.wp, 0), FK_OK)
            XCTAssertEqual(fk_vcpu_rax(k.v0), UInt64(bitPattern: -1000))
            XCTAssertEqual(fk_vm_pinned(k.vm, 0), 0)
            XCTAssertEqual(fk_vcpu_write_cr(k.v0, 0, GuestCR0.pe), FK_OK, "WP cleared freely")
            XCTAssertEqual(fk_vm_denials(k.vm) + fk_vm_configure_exits(k.vm), 0)
        }
    }

    /// The HekiHost-shaped adapters read the FkVm * that opaque points at.
    func testHostAdapters() {
        let k = KernelFixture(fk_profile(FK_PROFILE_V3))
        var vm: OpaquePointer? = k.vm
        withUnsafeMutablePointer(to: &vm) { opaque in
            XCTAssertEqual(fk_host_check_extension(opaque, 237), 3)
            XCTAssertEqual(fk_host_check_extension(opaque, 235), 1)
            XCTAssertEqual(fk_host_enable_cap(opaque, 237, 2), 0)
            XCTAssertEqual(fk_host_enable_cap(opaque, 235, 2), e)
        }
        XCTAssertEqual(fk_vm_denial_mask(k.vm), 2)
        XCTAssertEqual(fk_vm_enable_cap_calls_total(k.vm), 2)
    }
}
