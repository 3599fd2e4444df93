// The kernel model alone (heki_kernel_model.h), no plugin: the hypercall's checks,
// pins, capabilities, denials, completions and the exit payload's layout, as
// in the Heki v2 patch.
import CHekiPlugin
import FakeHost
import HekiKernelModel
import XCTest

/// A kernel VM with vCPUs, each on a zeroed page standing in for kvm_run.
final class KernelFixture {
    let vm: OpaquePointer
    var vcpus: [OpaquePointer] = []
    var pages: [UnsafeMutableRawPointer] = []

    init(_ profile: FkProfile = fk_profile(FK_PROFILE_V2), hostCR0: UInt64 = GuestCR0.host,
         hostCR4: UInt64 = GuestCR4.host, vcpus n: Int = 1) {
        var p = profile
        vm = fk_vm_new(&p, hostCR0, hostCR4)
        for _ in 0..<n {
            let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
            page.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
            pages.append(page)
            vcpus.append(fk_vcpu_new(vm, OpaquePointer(page)))
        }
    }

    deinit {
        for v in vcpus { fk_vcpu_free(v) }
        fk_vm_free(vm)
        for p in pages { p.deallocate() }
    }

    var v0: OpaquePointer { vcpus[0] }
    func page(_ i: Int = 0) -> UnsafeMutableRawPointer { pages[i] }
    /// exit_reason read straight from the page, at the kernel's offset
    /// (asserted against <linux/kvm.h> in kernel_model.c), not through fk_run_*.
    func exitReason(_ i: Int = 0) -> UInt32 {
        pages[i].load(fromByteOffset: Int(FK_KVM_RUN_EXIT_REASON_OFFSET), as: UInt32.self)
    }
    /// payload word k read straight from the exit union.
    func word(_ k: Int, _ i: Int = 0) -> UInt64 {
        pages[i].load(fromByteOffset: Int(FK_KVM_RUN_UNION_OFFSET) + 8 * k, as: UInt64.self)
    }
    func poison(_ i: Int = 0) {
        pages[i].initializeMemory(as: UInt8.self, repeating: 0xAA, count: 4096)
    }
    func enableAll() {
        let p = fk_vm_profile(vm)
        XCTAssertEqual(fk_enable_cap(vm, p.cap_configure, 3), 0)
        XCTAssertEqual(fk_enable_cap(vm, p.cap_denial, 3), 0)
    }
}

final class FakeHostKernelTests: XCTestCase {
    func testProfiles() {
        let v2 = fk_profile(FK_PROFILE_V2), v3 = fk_profile(FK_PROFILE_V3)
        XCTAssertEqual([v2.exit_configure, v2.exit_denial, v2.cap_configure, v2.cap_denial], [39, 40, 235, 236])
        XCTAssertEqual([v3.exit_configure, v3.exit_denial, v3.cap_configure, v3.cap_denial], [40, 41, 236, 237])
        let v2pinnable = GuestCR4.smep | GuestCR4.smap | GuestCR4.umip | GuestCR4.fsgsbase | GuestCR4.cet
        XCTAssertEqual(v2.pinnable_cr4, v2pinnable)
        XCTAssertEqual(v3.pinnable_cr4, v2pinnable | GuestCR4.fred)
    }

    func testVersionQueryReturnsOneWithoutExit() {
        let k = KernelFixture()
        k.enableAll()
        XCTAssertEqual(fk_vcpu_lock_cr(k.v0, 0, 0, 1), FK_OK)
        XCTAssertEqual(fk_vcpu_rax(k.v0), 1)
        XCTAssertEqual(fk_vcpu_rip(k.v0), 3)
        XCTAssertEqual(k.exitReason(), 0)
        XCTAssertEqual(fk_vm_configure_exits(k.vm), 0)
        XCTAssertEqual(fk_vcpu_hypercalls(k.v0), 1)
    }

    func testEveryEinvalCaseOfTheHypercall() {
        let cases: [(String, UInt64, UInt64, UInt64)] = [
            ("unknown flags", 0, 0, 2),
            ("version flag with a register", 4, 0, 1),
            ("version flag with a pin", 0, GuestCR0.wp, 1),
            ("version flag plus another flag", 0, 0, 3),
            ("a0 > U32_MAX", (1 << 32), GuestCR4.smep, 0),
            ("a0 > U32_MAX (cr0 in the low bits)", (1 << 32) | 0, GuestCR0.wp, 0),
            ("pin == 0 on cr0", 0, 0, 0),
            ("pin == 0 on cr4", 4, 0, 0),
            ("register 3", 3, GuestCR4.smep, 0),
            ("register 8", 8, GuestCR4.smep, 0),
            ("cr0 pin without WP", 0, GuestCR0.pe, 0),
            ("cr0 pin with a bit the host lacks (CD)", 0, GuestCR0.wp | GuestCR0.cd, 0),
            ("cr4 pin outside pinnable (PAE)", 4, GuestCR4.smep | GuestCR4.pae, 0),
            ("cr4 FRED under v2", 4, GuestCR4.fred, 0),
        ]
        let k = KernelFixture()
        k.enableAll()
        var rip: UInt64 = 0
        for (what, a0, a1, a2) in cases {
            fk_run_write_raw(OpaquePointer(k.page()), 0xdead, nil)
            XCTAssertEqual(fk_vcpu_hypercall(k.v0, 13, a0, a1, a2), FK_OK, what)
            XCTAssertEqual(fk_vcpu_rax(k.v0), kvmEINVAL, what)
            rip += 3
            XCTAssertEqual(fk_vcpu_rip(k.v0), rip, "\(what): rip skips the vmcall")
            XCTAssertEqual(k.exitReason(), 0xdead, "\(what): no exit")
            XCTAssertEqual(fk_vcpu_pending(k.v0), FK_PENDING_NONE, what)
        }
        XCTAssertEqual(fk_vm_pinned(k.vm, 0), 0)
        XCTAssertEqual(fk_vm_pinned(k.vm, 4), 0)
        XCTAssertEqual(fk_vm_configure_exits(k.vm), 0)
        XCTAssertEqual(fk_vcpu_hypercalls(k.v0), UInt64(cases.count))
        // An unknown hypercall number: -KVM_ENOSYS.
        XCTAssertEqual(fk_vcpu_hypercall(k.v0, 99, 0, 0, 0), FK_OK)
        XCTAssertEqual(fk_vcpu_rax(k.v0), UInt64(bitPattern: -1000))
    }

    func testFredIsPinnableUnderV3AndStillMaskedByTheHost() {
        let withFred = KernelFixture(fk_profile(FK_PROFILE_V3), hostCR4: GuestCR4.host | GuestCR4.fred)
        withFred.enableAll()
        XCTAssertEqual(fk_vcpu_lock_cr(withFred.v0, 4, GuestCR4.fred, 0), FK_EXIT)
        XCTAssertEqual(withFred.exitReason(), 40)
        XCTAssertEqual(withFred.word(1), GuestCR4.fred)
        let noFred = KernelFixture(fk_profile(FK_PROFILE_V3))
        noFred.enableAll()
        XCTAssertEqual(fk_vcpu_lock_cr(noFred.v0, 4, GuestCR4.fred | GuestCR4.smep, 0), FK_EXIT)
        XCTAssertEqual(noFred.word(1), GuestCR4.smep)
        XCTAssertEqual(fk_vm_pinned(noFred.vm, 4), GuestCR4.smep)
    }

    func testCR4PinIsAndedWithHostCR4AndPayloadLayout() {
        let k = KernelFixture()
        k.enableAll()
        k.poison()
        // CET is pinnable but this host lacks it.
        XCTAssertEqual(fk_vcpu_lock_cr(k.v0, 4, GuestCR4.smep | GuestCR4.cet, 0), FK_EXIT)
        XCTAssertEqual(fk_vm_pinned(k.vm, 4), GuestCR4.smep)
        XCTAssertEqual(k.exitReason(), 39)
        XCTAssertEqual(k.word(0), 1 << 1, "reason = KVM_HEKI_EXIT_REASON_CR4")
        XCTAssertEqual(k.word(1), GuestCR4.smep, "cr_pinned after host masking")
        for w in 2..<8 { XCTAssertEqual(k.word(w), 0, "reserved word \(w) zeroed") }
        // Bytes outside the 64-byte payload are untouched.
        XCTAssertEqual(k.page().load(fromByteOffset: 96, as: UInt64.self), 0xAAAA_AAAA_AAAA_AAAA)
        XCTAssertEqual(k.page().load(fromByteOffset: 0, as: UInt64.self), 0xAAAA_AAAA_AAAA_AAAA)
        // The helpers read the same places.
        XCTAssertEqual(fk_run_exit_reason(OpaquePointer(k.page())), 39)
        XCTAssertEqual(fk_run_payload_word(OpaquePointer(k.page()), 1), GuestCR4.smep)
        // The pin is not complete until user space re-enters.
        XCTAssertEqual(fk_vcpu_rip(k.v0), 0)
        XCTAssertEqual(fk_vcpu_complete(k.v0), FK_PENDING_CONFIGURE)
        XCTAssertEqual(fk_vcpu_rax(k.v0), 0)
        XCTAssertEqual(fk_vcpu_rip(k.v0), 3)
        XCTAssertEqual(fk_vcpu_hypercalls(k.v0), 1)
        XCTAssertEqual(fk_vcpu_gp_count(k.v0), 0)
    }

    func testCR0PinPayload() {
        let k = KernelFixture()
        k.enableAll()
        k.poison()
        XCTAssertEqual(fk_vcpu_lock_cr(k.v0, 0, GuestCR0.wp | GuestCR0.pe, 0), FK_EXIT)
        XCTAssertEqual(k.word(0), 1)
        XCTAssertEqual(k.word(1), GuestCR0.wp | GuestCR0.pe)
        for w in 2..<8 { XCTAssertEqual(k.word(w), 0) }
        XCTAssertEqual(fk_vm_pinned(k.vm, 0), GuestCR0.wp | GuestCR0.pe)
    }

    func testPinsAreOredPerVMAcrossVcpus() {
        let k = KernelFixture(vcpus: 2)
        let other = KernelFixture()
        k.enableAll()
        XCTAssertEqual(fk_vcpu_lock_cr(k.vcpus[0], 4, GuestCR4.smep, 0), FK_EXIT)
        fk_vcpu_complete(k.vcpus[0])
        XCTAssertEqual(fk_vcpu_lock_cr(k.vcpus[1], 4, GuestCR4.smap, 0), FK_EXIT)
        XCTAssertEqual(k.word(1, 1), GuestCR4.smap, "cr_pinned is this call's bits, not the total")
        fk_vcpu_complete(k.vcpus[1])
        // Pinning an already pinned bit again is accepted and changes nothing.
        XCTAssertEqual(fk_vcpu_lock_cr(k.vcpus[1], 4, GuestCR4.smep, 0), FK_EXIT)
        fk_vcpu_complete(k.vcpus[1])
        XCTAssertEqual(fk_vm_pinned(k.vm, 4), GuestCR4.smep | GuestCR4.smap)
        XCTAssertEqual(fk_vm_pinned(other.vm, 4), 0, "pins are per VM")
        // vCPU 0 is denied a write that clears what vCPU 1 pinned.
        XCTAssertEqual(fk_vcpu_write_cr(k.vcpus[0], 4, GuestCR4.host & ~GuestCR4.smap), FK_EXIT)
    }

    func testDenialOnlyWhenPinnedBitsAreCleared() {
        let k = KernelFixture()
        k.enableAll()
        XCTAssertEqual(fk_vcpu_lock_cr(k.v0, 4, GuestCR4.smep, 0), FK_EXIT)
        fk_vcpu_complete(k.v0)
        let rip = fk_vcpu_rip(k.v0)
        // Setting extra bits, or clearing unpinned ones, is fine.
        XCTAssertEqual(fk_vcpu_write_cr(k.v0, 4, GuestCR4.host | GuestCR4.cet), FK_OK)
        XCTAssertEqual(fk_vcpu_cr(k.v0, 4), GuestCR4.host | GuestCR4.cet)
        XCTAssertEqual(fk_vcpu_write_cr(k.v0, 4, GuestCR4.host & ~GuestCR4.smap), FK_OK)
        XCTAssertEqual(fk_vcpu_cr(k.v0, 4), GuestCR4.host & ~GuestCR4.smap)
        XCTAssertEqual(fk_vcpu_rip(k.v0), rip + 6)
        // GuestCR0 has no pins: anything goes.
        XCTAssertEqual(fk_vcpu_write_cr(k.v0, 0, 0), FK_OK)
        // Clearing SMEP: denial exit with the whole attempted value.
        k.poison()
        let attempt = GuestCR4.host & ~GuestCR4.smep
        XCTAssertEqual(fk_vcpu_write_cr(k.v0, 4, attempt), FK_EXIT)
        XCTAssertEqual(k.exitReason(), 40)
        XCTAssertEqual(k.word(0), 2)
        XCTAssertEqual(k.word(1), attempt)
        for w in 2..<8 { XCTAssertEqual(k.word(w), 0) }
        XCTAssertEqual(fk_vcpu_cr(k.v0, 4), GuestCR4.host & ~GuestCR4.smap, "the write did not happen")
        XCTAssertEqual(fk_vcpu_pending(k.v0), FK_PENDING_DENIAL)
        XCTAssertEqual(fk_vcpu_gp_count(k.v0), 0, "#GP waits for the completion")
        XCTAssertEqual(fk_vcpu_write_cr(k.v0, 4, GuestCR4.host), FK_BUSY)
        XCTAssertEqual(fk_vcpu_complete(k.v0), FK_PENDING_DENIAL)
        XCTAssertEqual(fk_vcpu_gp_count(k.v0), 1)
        XCTAssertEqual(fk_vcpu_rip(k.v0), rip + 9, "a faulting write does not advance rip")
        XCTAssertEqual(fk_vm_denials(k.vm), 1)
        XCTAssertEqual(fk_vm_denial_exits(k.vm), 1)
    }

    func testGPWithoutExitWhenTheDenialCapIsOffForThatRegister() {
        let k = KernelFixture()
        let p = fk_vm_profile(k.vm)
        XCTAssertEqual(fk_enable_cap(k.vm, p.cap_configure, 3), 0)
        XCTAssertEqual(fk_enable_cap(k.vm, p.cap_denial, 1), 0) // cr0 only
        fk_vcpu_lock_cr(k.v0, 0, GuestCR0.wp, 0); fk_vcpu_complete(k.v0)
        fk_vcpu_lock_cr(k.v0, 4, GuestCR4.smep, 0); fk_vcpu_complete(k.v0)
        fk_run_write_raw(OpaquePointer(k.page()), 0xbeef, nil)
        XCTAssertEqual(fk_vcpu_write_cr(k.v0, 4, 0), FK_GP)
        XCTAssertEqual(fk_vcpu_gp_count(k.v0), 1)
        XCTAssertEqual(k.exitReason(), 0xbeef, "no exit")
        XCTAssertEqual(fk_vcpu_pending(k.v0), FK_PENDING_NONE)
        XCTAssertEqual(fk_vcpu_write_cr(k.v0, 0, GuestCR0.host & ~GuestCR0.wp), FK_EXIT)
        XCTAssertEqual(fk_vm_denials(k.vm), 2)
        XCTAssertEqual(fk_vm_denial_exits(k.vm), 1)
        // Without any denial cap: #GP directly.
        let bare = KernelFixture()
        fk_vcpu_lock_cr(bare.v0, 0, GuestCR0.wp, 0)
        XCTAssertEqual(fk_vcpu_write_cr(bare.v0, 0, 0), FK_GP)
        XCTAssertEqual(fk_vcpu_gp_count(bare.v0), 1)
    }

    func testConfigureWithoutExitWhenTheConfigureCapIsOff() {
        let k = KernelFixture()
        let p = fk_vm_profile(k.vm)
        // No cap at all: the pin is made, rax = 0, rip skipped, no exit.
        XCTAssertEqual(fk_vcpu_lock_cr(k.v0, 0, GuestCR0.wp, 0), FK_OK)
        XCTAssertEqual(fk_vcpu_rax(k.v0), 0)
        XCTAssertEqual(fk_vcpu_rip(k.v0), 3)
        XCTAssertEqual(fk_vm_pinned(k.vm, 0), GuestCR0.wp)
        XCTAssertEqual(k.exitReason(), 0)
        // GuestCR4 only: a GuestCR0 pin stays in the kernel, a GuestCR4 pin exits.
        XCTAssertEqual(fk_enable_cap(k.vm, p.cap_configure, 2), 0)
        XCTAssertEqual(fk_vcpu_lock_cr(k.v0, 0, GuestCR0.wp | GuestCR0.pg, 0), FK_OK)
        XCTAssertEqual(fk_vcpu_lock_cr(k.v0, 4, GuestCR4.umip, 0), FK_EXIT)
        XCTAssertEqual(fk_vm_configure_exits(k.vm), 1)
        XCTAssertEqual(fk_vm_pinned(k.vm, 0), GuestCR0.wp | GuestCR0.pg)
    }

    func testEnableCapAndCheckExtension() {
        let k = KernelFixture()
        let p = fk_vm_profile(k.vm)
        XCTAssertEqual(fk_check_extension(k.vm, 235), 3)
        XCTAssertEqual(fk_check_extension(k.vm, 236), 3)
        XCTAssertEqual(fk_check_extension(k.vm, 237), 0)
        XCTAssertEqual(fk_enable_cap(k.vm, p.cap_configure, 4), -22, "unknown mask bit")
        XCTAssertEqual(fk_enable_cap(k.vm, p.cap_denial, 1 << 63), -22)
        XCTAssertEqual(fk_vm_configure_mask(k.vm), 0)
        XCTAssertEqual(fk_enable_cap(k.vm, p.cap_configure, 0), 0, "mask 0 is valid")
        XCTAssertEqual(fk_enable_cap(k.vm, p.cap_denial, 2), 0)
        XCTAssertEqual(fk_vm_denial_mask(k.vm), 2)
        XCTAssertEqual(fk_enable_cap(k.vm, 237, 3), -22, "not a Heki cap under v2")
        let v3 = KernelFixture(fk_profile(FK_PROFILE_V3))
        XCTAssertEqual(fk_check_extension(v3.vm, 235), 1, "KVM_CAP_VM_TYPES: older than v3's caps")
        XCTAssertEqual(fk_check_extension(v3.vm, 237), 3)
        XCTAssertEqual(fk_enable_cap(v3.vm, 235, 3), -22)
        XCTAssertEqual(fk_enable_cap(v3.vm, 237, 3), 0)
        XCTAssertEqual(fk_vm_denial_mask(v3.vm), 3)
    }

    func testKernelWithoutHeki() {
        let k = KernelFixture()
        fk_vm_set_heki_built(k.vm, false)
        XCTAssertEqual(fk_check_extension(k.vm, 235), 3, "still answered without CONFIG_HEKI")
        XCTAssertEqual(fk_enable_cap(k.vm, 235, 3), -22)
        XCTAssertEqual(fk_enable_cap(k.vm, 236, 3), -22)
        XCTAssertEqual(fk_vcpu_lock_cr(k.v0, 0, GuestCR0.wp, 0), FK_OK)
        XCTAssertEqual(fk_vcpu_rax(k.v0), UInt64(bitPattern: -1000), "-KVM_ENOSYS")
        XCTAssertEqual(fk_vm_pinned(k.vm, 0), 0)
        XCTAssertEqual(fk_vcpu_write_cr(k.v0, 0, 0), FK_OK)
    }

    func testResetKeepsPins() {
        let k = KernelFixture(vcpus: 2)
        k.enableAll()
        fk_vcpu_lock_cr(k.v0, 0, GuestCR0.wp, 0); fk_vcpu_complete(k.v0)
        XCTAssertEqual(fk_vcpu_write_cr(k.vcpus[1], 0, 0), FK_EXIT)
        fk_vm_reset(k.vm)
        XCTAssertEqual(fk_vcpu_pending(k.vcpus[1]), FK_PENDING_DENIAL, "the completion stays armed, as in KVM")
        XCTAssertEqual(fk_vcpu_gp_count(k.vcpus[1]), 0)
        XCTAssertEqual(fk_vcpu_cr(k.vcpus[1], 0), GuestCR0.reset)
        XCTAssertEqual(fk_vcpu_complete(k.vcpus[1]), FK_PENDING_DENIAL, "the next KVM_RUN runs it")
        XCTAssertEqual(fk_vcpu_gp_count(k.vcpus[1]), 1, "a #GP into the new boot")
        XCTAssertEqual(fk_vcpu_cr(k.v0, 4), 0)
        XCTAssertEqual(fk_vm_pinned(k.vm, 0), GuestCR0.wp, "pins survive a reset")
        // A pending pin completed after the reset: rax = 0, rip past a VMCALL that is not there.
        XCTAssertEqual(fk_vcpu_lock_cr(k.vcpus[1], 4, GuestCR4.smep, 0), FK_EXIT)
        fk_vm_reset(k.vm)
        XCTAssertEqual(fk_vcpu_complete(k.vcpus[1]), FK_PENDING_CONFIGURE)
        XCTAssertEqual(fk_vcpu_rip(k.vcpus[1]), UInt64(FK_VMCALL_LENGTH))
        XCTAssertEqual(fk_vcpu_rax(k.vcpus[1]), 0)
        // The open problem: the rebooting guest cannot write a GuestCR0 without WP.
        XCTAssertEqual(fk_vcpu_write_cr(k.v0, 0, GuestCR0.pe), FK_EXIT)
    }
}
