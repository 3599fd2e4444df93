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
    /// The two slots: the verdicts, require-cr0, require-cr4 of each. Named
    /// atomics rather than an array: no bounds checks on the exit path.
    private let verdicts0: Atomic<UInt64>, requireCR0_0: Atomic<UInt64>, requireCR4_0: Atomic<UInt64>
    private let verdicts1: Atomic<UInt64>, requireCR0_1: Atomic<UInt64>, requireCR4_1: Atomic<UInt64>

    init(_ policy: Policy) {
        let words = policy.words
        verdicts0 = Atomic(words.0)
        requireCR0_0 = Atomic(words.1)
        requireCR4_0 = Atomic(words.2)
        verdicts1 = Atomic(words.0)
        requireCR0_1 = Atomic(words.1)
        requireCR4_1 = Atomic(words.2)
    }

    /// The policy an exit is judged by. Any thread. `midway` runs between
    /// the first word and the others: a test's stand-in for a reader
    /// preempted there (empty, it compiles away).
    @inline(__always)
    func current(midway: () -> Void = {}) -> Policy {
        while true {
            let seen = generation.load(ordering: .acquiring)
            let verdicts: UInt64, requireCR0: UInt64, requireCR4: UInt64
            if seen & 1 == 0 {
                verdicts = verdicts0.load(ordering: .relaxed)
                midway()
                requireCR0 = requireCR0_0.load(ordering: .relaxed)
                requireCR4 = requireCR4_0.load(ordering: .relaxed)
            } else {
                verdicts = verdicts1.load(ordering: .relaxed)
                midway()
                requireCR0 = requireCR0_1.load(ordering: .relaxed)
                requireCR4 = requireCR4_1.load(ordering: .relaxed)
            }
            // Orders the three loads before the generation's second read.
            atomicMemoryFence(ordering: .acquiring)
            if generation.load(ordering: .relaxed) == seen {
                return Policy(words: (verdicts, requireCR0, requireCR4))
            }
        }
    }

    /// Publishes `policy`. Main loop thread only (one writer).
    func replace(with policy: Policy) {
        let next = generation.load(ordering: .relaxed) &+ 1
        let words = policy.words
        // Readers of the slot overwritten here saw the generation move when
        // it was last published; this fence makes that visible first.
        atomicMemoryFence(ordering: .releasing)
        if next & 1 == 0 {
            verdicts0.store(words.0, ordering: .relaxed)
            requireCR0_0.store(words.1, ordering: .relaxed)
            requireCR4_0.store(words.2, ordering: .relaxed)
        } else {
            verdicts1.store(words.0, ordering: .relaxed)
            requireCR0_1.store(words.1, ordering: .relaxed)
            requireCR4_1.store(words.2, ordering: .relaxed)
        }
        generation.store(next, ordering: .releasing)
    }
}
