import Synchronization

/// The policy in force: the one the VMM started with until
/// heki_plugin_set_policy replaces it. vCPU threads read it on every exit
/// without a lock and never wait for the writer: it is kept in two slots
/// and a generation. The main loop, the only writer, fills the slot not in
/// use, then publishes it by bumping the generation; a reader that sees the
/// generation move while it read reads again. So each exit is judged wholly
/// by one policy, and a writer stopped halfway delays no reader.
/// An exit needs only its register's part of the policy: that part is also
/// kept in one word per register (`exitPolicy`), read with one load.
/// Noncopyable: the plugin holds it inline, one pointer load less per exit.
struct LivePolicy: ~Copyable, Sendable {
    private let generation = Atomic<UInt64>(0)
    /// Per register: ExitPolicy of the policy in force.
    private let exitWords: InlineArray<2, Atomic<UInt64>>
    /// The two slots (fields rather than an array: no bounds checks on the
    /// exit path).
    private let even: Slot
    private let odd: Slot

    init(_ policy: Policy) {
        even = Slot(policy.words)
        odd = Slot(policy.words)
        exitWords = InlineArray { Atomic(ExitPolicy(policy, ControlRegister.allCases[$0]).rawValue) }
    }

    /// What an exit of `register` is judged by: one load. Any thread.
    @inline(__always)
    func exitPolicy(_ register: ControlRegister) -> ExitPolicy {
        ExitPolicy(rawValue: exitWords[Int(register.rawValue)].load(ordering: .relaxed))
    }

    /// The policy an exit is judged by. Any thread. `midway` runs between
    /// the first word and the others: a test's stand-in for a reader
    /// preempted there (empty, it compiles away).
    @inline(__always)
    func current(midway: () -> Void = {}) -> Policy {
        while true {
            let seen = generation.load(ordering: .acquiring)
            let words = seen & 1 == 0 ? even.load(midway: midway) : odd.load(midway: midway)
            // Orders the three loads before the generation's second read.
            atomicMemoryFence(ordering: .acquiring)
            if generation.load(ordering: .relaxed) == seen { return Policy(words: words) }
        }
    }

    /// Publishes `policy`. Main loop thread only (one writer).
    func replace(with policy: Policy) {
        let next = generation.load(ordering: .relaxed) &+ 1
        // Readers of the slot overwritten here saw the generation move when
        // it was last published; this fence makes that visible first.
        atomicMemoryFence(ordering: .releasing)
        if next & 1 == 0 { even.store(policy.words) } else { odd.store(policy.words) }
        generation.store(next, ordering: .releasing)
        for register in ControlRegister.allCases {
            exitWords[Int(register.rawValue)].store(ExitPolicy(policy, register).rawValue, ordering: .relaxed)
        }
    }

    /// One slot: Policy's three words.
    private struct Slot: ~Copyable, Sendable {
        let verdicts: Atomic<UInt64>
        let requireCR0: Atomic<UInt64>
        let requireCR4: Atomic<UInt64>

        init(_ words: (UInt64, UInt64, UInt64)) {
            verdicts = Atomic(words.0)
            requireCR0 = Atomic(words.1)
            requireCR4 = Atomic(words.2)
        }

        @inline(__always)
        func load(midway: () -> Void) -> (UInt64, UInt64, UInt64) {
            let first = verdicts.load(ordering: .relaxed)
            midway()
            return (first, requireCR0.load(ordering: .relaxed), requireCR4.load(ordering: .relaxed))
        }

        func store(_ words: (UInt64, UInt64, UInt64)) {
            verdicts.store(words.0, ordering: .relaxed)
            requireCR0.store(words.1, ordering: .relaxed)
            requireCR4.store(words.2, ordering: .relaxed)
        }
    }
}
