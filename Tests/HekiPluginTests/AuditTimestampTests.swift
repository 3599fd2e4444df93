import Testing
@testable import HekiPlugin

@Suite struct AuditTimestampTests {
    @Test func isUTCWithMicroseconds() {
        #expect(AuditLog.timestamp(0) == "1970-01-01T00:00:00.000000Z")
        #expect(AuditLog.timestamp(1_795_608_000_123_456) == "2026-11-25T12:00:00.123456Z")
        #expect(AuditLog.timestamp(-1) == "1969-12-31T23:59:59.999999Z")
    }

    /// One clock across seconds (the date is remade only when the second
    /// changes, also backwards) writes what a fresh one writes.
    @Test func theCachedSecondFollowsTheTime() {
        var clock = AuditTimestamp()
        var text = ByteWriter(capacity: 64)
        defer { text.deallocate() }
        let times: [Int64] = [1_795_608_000_123_456, 1_795_608_000_999_999, 1_795_608_001_000_000,
                              1_795_608_000_000_001, 1_795_694_399_500_000, 1_795_694_400_000_000, -1, 0, 7]
        for time in times {
            text.reset()
            clock.append(time, to: &text)
            #expect(String(cString: text.cString()) == AuditLog.timestamp(time), "\(time)")
        }
        #expect(AuditLog.timestamp(1_795_694_400_000_000) == "2026-11-26T12:00:00.000000Z")
    }
}
