import Testing
@testable import HekiPlugin

/// EventWriter (the byte renderer of the bulk event kinds, issue 4) must
/// produce exactly EventRenderer's data and log line for every record.
@Suite struct EventWriterTests {
    static let vmNames: [String?] = [nil, "web1", "q\"b\\s/ é✓", String(repeating: "\"", count: 1024)]
    static let values: [UInt64] = [0, 1, 1 << 16, 0x80050033, 0x3706f0, 0x3706f0 & ~(1 << 20), 1 << 63, .max,
                                   0xdead_beef_0000_0001, 1 << 12 | 1 << 40]

    @Test(arguments: vmNames)
    func sameBytesAsTheStringRenderer(vmName: String?) throws {
        var options = ["rate-limit=0"]
        if let vmName { options.append("vm-name=\(vmName)") }
        let config = try Options.parse(options)
        let renderer = EventRenderer(config: config)
        let writer = EventWriter(config: config)
        var checked = 0
        for kind in [EventKind.configure, .denial, .weakPinning] {
            for register in ControlRegister.allCases {
                for verdict in Verdict.allCases {
                    for (index, value) in EventWriterTests.values.enumerated() {
                        let other = EventWriterTests.values[(index * 7 + 3) % EventWriterTests.values.count]
                        let third = EventWriterTests.values[(index * 3 + 1) % EventWriterTests.values.count]
                        let record = EventRecord(kind: kind, register: register.rawValue, verdict: verdict,
                                                 vcpu: UInt32(truncatingIfNeeded: value), number: UInt32(index * 1000),
                                                 value: value, pinned: other, extra: third, timeMicros: 1)
                        #expect(EventWriter.handles(record))
                        let expected = renderer.render(record)
                        #expect(String(cString: writer.renderData(record)) == expected.data)
                        #expect(String(cString: writer.renderMessage(record)) == expected.message)
                        #expect(String(cString: writer.eventNames[Int(kind.rawValue)].cString) == expected.name)
                        checked += 1
                    }
                }
            }
        }
        #expect(checked == 3 * 2 * 6 * EventWriterTests.values.count)
    }

    /// A weak pinning found by the pin deadline has no vCPU: the String
    /// renderer takes it, and its data says which deadline.
    @Test func deadlineWeakPinningGoesToTheStringRenderer() throws {
        let config = try Options.parse(["require-cr0=wp", "pin-deadline=7", "vm-name=web1"])
        let record = EventRecord(kind: .weakPinning, register: ControlRegister.cr0.rawValue, verdict: .pause,
                                 detail: EventRecord.atDeadline, value: 1 << 16, extra: 1 << 16)
        #expect(!EventWriter.handles(record))
        let event = EventRenderer(config: config).render(record)
        #expect(event.name == "HEKI_WEAK_PINNING")
        #expect(event.data == #"{"vm-name":"web1","register":"cr0","pinned":"0x0","pinned-bits":[],"required":"0x10000","required-bits":["wp"],"missing":"0x10000","missing-bits":["wp"],"deadline-seconds":7,"verdict":"pause"}"#)
        #expect(event.message == "heki: vm web1: weak pinning of cr0: wp required but not pinned 7 s after start, verdict pause")
    }

    @Test func hexAndDecimalMatchTheStandardLibrary() {
        var writer = ByteWriter(capacity: 64)
        defer { writer.deallocate() }
        for value: UInt64 in [0, 1, 9, 10, 15, 16, 255, 256, 0xabcdef, 1 << 63, .max, 12_345_678_901_234_567_890] {
            writer.reset()
            writer.appendHex(value)
            #expect(String(cString: writer.cString()) == "0x" + String(value, radix: 16))
            writer.reset()
            writer.appendDecimal(value)
            #expect(String(cString: writer.cString()) == String(value))
        }
    }
}
