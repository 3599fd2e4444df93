import Testing
@testable import HekiPlugin

@Suite struct JSONObjectTests {
    @Test func escapesEverythingThatCouldBreakALine() {
        var object = JSONObject()
        object.add("name", "a\"b\\c\nd\u{0}e\u{1f}f\u{7f}\u{2028}g")
        object.add("n", UInt64.max)
        object.add("hex", hex: 0xdead_beef)
        object.add("list", ["x", "y\""])
        object.add("none", nil as String?)
        #expect(object.rendered == #"{"name":"a\"b\\c\nd\u0000e\u001ff\u007f\u2028g","n":18446744073709551615,"hex":"0xdeadbeef","list":["x","y\""],"none":null}"#)
    }
}
