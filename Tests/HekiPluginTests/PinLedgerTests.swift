import Testing
@testable import HekiPlugin

@Suite struct PinLedgerTests {
    @Test func pinsAccumulatePerRegisterAndNeverClear() {
        let ledger = PinLedger()
        #expect(ledger.pin(CR4.smep.rawValue, on: .cr4) == CR4.smep.rawValue)
        #expect(ledger.pin(CR4.smap.rawValue, on: .cr4) == CR4.smep.rawValue | CR4.smap.rawValue)
        #expect(ledger.pins(.cr0) == 0)
        #expect(ledger.pin(0, on: .cr4) == CR4.smep.rawValue | CR4.smap.rawValue)
    }
}
