import Synchronization

/// The policy in force: the one the VMM started with until
/// heki_plugin_set_policy replaces it. vCPU threads read it on every exit
/// without a lock and never wait for the writer: it is kept in two slots
/// and a generation. The main loop, the only writer, fills the slot not in
/// use, then publishes it by bumping the generation; a reader that sees the
/// generation move while it read reads again. So each exit is judged wholly
/// by one policy, and a writer stopped halfway delays no reader.
final class LivePolicy: Sendable {
    private let generation = Atomic<UInt64>(0)
    /// Slot s holds words 3s..3s+2: the verdicts, require-cr0, require-cr4.
    private let words: InlineArray<6, Atomic<UInt64>>

    init(_ policy: Policy) {
        let packed = LivePolicy.pack(policy)
        words = InlineArray { index in Atomic(packed[index % 3]) }
    }

    /// The policy an exit is judged by. Any thread. `midway` runs between
    /// the first word and the others: a test's stand-in for a reader
    /// preempted there (empty, it compiles away).
    @inline(__always)
    func current(midway: () -> Void = {}) -> Policy {
        while true {
            let seen = generation.load(ordering: .acquiring)
            let base = Int(seen & 1) * 3
            let verdicts = words[base].load(ordering: .relaxed)
            midway()
            let requireCR0 = words[base + 1].load(ordering: .relaxed)
            let requireCR4 = words[base + 2].load(ordering: .relaxed)
            // Orders the three loads before the generation's second read.
            atomicMemoryFence(ordering: .acquiring)
            if generation.load(ordering: .relaxed) == seen {
                return LivePolicy.unpack(verdicts, requireCR0, requireCR4)
            }
        }
    }

    /// Publishes `policy`. Main loop thread only (one writer).
    func replace(with policy: Policy) {
        let next = generation.load(ordering: .relaxed) &+ 1
        let base = Int(next & 1) * 3
        // Readers of the slot overwritten here saw the generation move when
        // it was last published; this fence makes that visible first.
        atomicMemoryFence(ordering: .releasing)
        for (index, word) in LivePolicy.pack(policy).enumerated() {
            words[base + index].store(word, ordering: .relaxed)
        }
        generation.store(next, ordering: .releasing)
    }

    /// A verdict per byte, its raw value + 1: on-denial, on-denial-cr0,
    /// on-denial-cr4, on-weak-pinning; 0 for an override not given.
    private static func pack(_ policy: Policy) -> [UInt64] {
        func byte(_ verdict: Verdict?) -> UInt64 { verdict.map { UInt64(UInt8(truncatingIfNeeded: $0.rawValue + 1)) } ?? 0 }
        let verdicts = byte(policy.onDenial) | byte(policy.onDenialCR0) << 8
            | byte(policy.onDenialCR4) << 16 | byte(policy.onWeakPinning) << 24
        return [verdicts, policy.requireCR0, policy.requireCR4]
    }

    @inline(__always)
    private static func unpack(_ verdicts: UInt64, _ requireCR0: UInt64, _ requireCR4: UInt64) -> Policy {
        @inline(__always) func verdict(_ shift: UInt64) -> Verdict? {
            let byte = Int32((verdicts >> shift) & 0xff)
            return byte == 0 ? nil : Verdict(rawValue: byte - 1)
        }
        return Policy(onDenial: verdict(0) ?? .resume, onDenialCR0: verdict(8), onDenialCR4: verdict(16),
                      onWeakPinning: verdict(24) ?? .resume, requireCR0: requireCR0, requireCR4: requireCR4)
    }
}
