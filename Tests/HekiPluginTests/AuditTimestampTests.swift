import Testing
@testable import HekiPlugin

@Suite struct AuditTimestampTests {
    @Test func isUTCWithMicroseconds() {
        #expect(AuditLog.timestamp(0) == "1970-01-01T00:00:00.000000Z")
        #expect(AuditLog.timestamp(1_795_608_000_123_456) == "2026-11-25T12:00:00.123456Z")
    }
}
