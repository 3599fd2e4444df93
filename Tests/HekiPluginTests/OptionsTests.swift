import XCTest
@testable import HekiPlugin
final class OptionsTests: XCTestCase {
    func testDefaults() throws {
        let config = try Options.parse([])
        XCTAssertEqual(config.profile.name, "v2")
    }
}
