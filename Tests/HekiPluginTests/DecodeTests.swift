import HekiKernelModel
import Testing
@testable import HekiPlugin

/// The kvm_run view and the decoding of Heki exits, on a real
/// struct-kvm_run-sized buffer.
@Suite struct DecodeTests {
    /// A zeroed kvm_run-sized page with the exit written as the kernel
    /// model writes one (exit_reason, the payload words).
    private func decode(exit: UInt32, reason: UInt64, value: UInt64,
                        granted: ExitReasonMask? = .all, reserved: UInt64 = 0) -> DecodedExit {
        let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        page.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        var words = [reason, value] + Array(repeating: reserved, count: 6)
        fk_run_write_raw(OpaquePointer(page), exit, &words)
        let claim = { (exit: UInt32) in granted.map { Claim(exit: exit, granted: $0) } ?? .none }
        return decodeExit(OpaquePointer(page), configure: claim(39), denial: claim(40))
    }

    @Test func claimedExitsDecodeToTheirRegisterAndValue() {
        #expect(decode(exit: 39, reason: 1, value: CR0.wp.rawValue) == .configure(.cr0, pinned: CR0.wp.rawValue))
        #expect(decode(exit: 39, reason: 2, value: 0x300000) == .configure(.cr4, pinned: 0x300000))
        #expect(decode(exit: 40, reason: 2, value: 0x6f0) == .denial(.cr4, value: 0x6f0))
        #expect(decode(exit: 40, reason: 1, value: .max) == .denial(.cr0, value: .max))
    }

    @Test func reservedWordsAreIgnored() {
        #expect(decode(exit: 40, reason: 2, value: 5, reserved: .max) == .denial(.cr4, value: 5))
    }

    @Test func otherExitNumbersAreForeign() {
        for exit: UInt32 in [0, 2, 5, 38, 41, .max] {
            #expect(decode(exit: exit, reason: 1, value: 1) == .foreign)
        }
    }

    @Test(arguments: [UInt64(0), 3, 4, 1 << 63, .max, 0x10])
    func reasonNotOneKnownBit(_ reason: UInt64) {
        #expect(decode(exit: 40, reason: reason, value: 0)
            == .malformed(.denial, reason: reason, register: nil, problem: .reasonNotOneKnownBit))
    }

    /// Before the capability is enabled, or on a kernel without Heki, the
    /// number is another exit (39 is KVM_EXIT_MEMORY_FAULT upstream).
    @Test func unclaimedNumbersAreForeign() {
        #expect(decode(exit: 39, reason: 1, value: 0, granted: nil) == .foreign)
        #expect(decode(exit: 40, reason: 7, value: 0, granted: nil) == .foreign)
    }

    @Test func claimWordRoundTrips() {
        for exit: UInt32 in [0, 39, 41, .max] {
            for mask: ExitReasonMask in [[], .cr0, .cr4, .all] {
                let claim = Claim(exit: exit, granted: mask)
                #expect(claim.isClaimed && claim.exit == exit && claim.granted == mask)
                #expect(claim.claims(exit) && !claim.claims(exit &+ 1))
            }
        }
        #expect(!Claim.none.isClaimed && Claim.none.exit == nil && !Claim.none.claims(0))
    }

    @Test func aRegisterNotGrantedIsMalformed() {
        #expect(decode(exit: 39, reason: 2, value: 0, granted: .cr0)
            == .malformed(.configure, reason: 2, register: .cr4, problem: .registerNotEnabled))
        #expect(decode(exit: 39, reason: 1, value: 0, granted: .cr0) == .configure(.cr0, pinned: 0))
    }

    @Test func bitsAreNamedArchitecturallyAndUnnamedOnesByIndex() {
        #expect(CR0.names.names(of: 0x8001_0001) == ["pe", "wp", "pg"])
        #expect(CR4.names.names(of: CR4.smep.rawValue | CR4.lamSup.rawValue | CR4.fred.rawValue) == ["smep", "lam-sup", "fred"])
        #expect(CR4.names.names(of: 1 << 15 | 1 << 63) == ["bit15", "bit63"])
        #expect(CR0.names.names(of: 0).isEmpty)
        // Every architectural bit has a distinct name.
        #expect(Set(CR0.names.table.map(\.name)).count == 11)
        #expect(Set(CR4.names.table.map(\.name)).count == CR4.names.table.count)
        #expect(CR4.names.table.reduce(0) { $0 | $1.bit } == 0x1_1bff_7fff & ~(1 << 15 | 1 << 26) | 1 << 32)
    }
}
