import Testing
@testable import HekiPlugin

/// The policy alone: pins and denials in, verdicts out.
@Suite struct PolicyTests {
    private func policy(_ options: String...) throws -> Policy {
        try Options.parse(options).policy
    }

    @Test func aPinResumesUnlessRequiredBitsAreMissing() throws {
        let strict = try policy("require-cr4=smep+smap", "on-weak-pinning=exit")
        let smep = CR4.smep.rawValue, smap = CR4.smap.rawValue
        #expect(strict.judgePin(on: .cr4, pinnedNow: smep) == (.exit, smap))
        #expect(strict.judgePin(on: .cr4, pinnedNow: smep | smap) == (.resume, 0))
        #expect(strict.judgePin(on: .cr4, pinnedNow: smep | smap | CR4.umip.rawValue) == (.resume, 0))
        // CR0 has no requirement here: judged per register.
        #expect(strict.judgePin(on: .cr0, pinnedNow: 0) == (.resume, 0))
    }

    @Test func aDenialTakesTheRegistersVerdictAndNamesTheClearedPins() throws {
        let split = try policy("on-denial=reset", "on-denial-cr4=pause")
        #expect(split.judgeDenial(on: .cr4) == .pause)
        #expect(split.judgeDenial(on: .cr0) == .reset)
        let pinned = CR4.smep.rawValue | CR4.smap.rawValue
        func denial(_ value: UInt64, _ pinned: UInt64) -> DenialEvent {
            DenialEvent(vcpu: 0, register: .cr4, value: value, pinned: pinned, verdict: .pause)
        }
        #expect(denial(CR4.smap.rawValue, pinned).violated == CR4.smep.rawValue)
        #expect(denial(0, CR0.wp.rawValue).violated == CR0.wp.rawValue)
        // Bits set beyond the pins clear nothing.
        #expect(denial(.max, pinned).violated == 0)
    }
}
