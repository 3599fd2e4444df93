@testable import HekiPlugin

/// A denial record that carries a producer (as its vCPU) and a sequence
/// number (as its value): what the queue tests push and check.
func sequencedRecord(producer: UInt32, sequence: UInt64) -> EventRecord {
    EventRecord(payload: .denial(DenialEvent(vcpu: producer, register: .cr4, value: sequence,
                                             pinned: 0, verdict: .resume)))
}

extension EventRecord {
    /// The producer and sequence of a `sequencedRecord`; nil for any other.
    var sequenced: (producer: UInt32, sequence: UInt64)? {
        if case let .denial(event) = payload { return (event.vcpu, event.value) }
        return nil
    }
}
