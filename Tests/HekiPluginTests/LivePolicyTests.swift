import Dispatch
import Synchronization
import Testing
@testable import HekiPlugin

/// The policy in force and its run-time change: what parsePolicy accepts,
/// and that a reader never sees half of one policy and half of another.
@Suite struct LivePolicyTests {
    private let start = Policy(onDenial: .pause, onDenialCR4: .reset, requireCR0: CR0.wp.rawValue)

    @Test func aChangeKeepsTheKeysItDoesNotName() throws {
        let config = try Options.parse(["abi=v2"])
        let next = try Options.parsePolicy(["on-denial=exit", "require-cr4=smep"], onto: start, config: config)
        #expect(next == Policy(onDenial: .exit, onDenialCR4: .reset, requireCR0: CR0.wp.rawValue,
                               requireCR4: CR4.smep.rawValue))
        #expect(start.changedKeys(to: next) == ["on-denial", "require-cr4"])
        #expect(next.changedKeys(to: next) == [])
    }

    @Test func aChangeIsValidatedAgainstTheStartAbi() throws {
        // v2 cannot pin FRED: refused at run time as at start.
        let v2 = try Options.parse(["abi=v2"])
        #expect(throws: OptionError.self) { try Options.parsePolicy(["require-cr4=fred"], onto: start, config: v2) }
        let v3 = try Options.parse(["abi=v3"])
        #expect(try Options.parsePolicy(["require-cr4=fred"], onto: start, config: v3).requireCR4 == CR4.fred.rawValue)
    }

    @Test func aReplacedPolicyIsReadWhole() {
        let live = LivePolicy(start)
        #expect(live.current() == start)
        let other = Policy(onDenial: .reset, onDenialCR0: .exit, onWeakPinning: .poweroff,
                           requireCR0: CR0.pg.rawValue, requireCR4: CR4.smap.rawValue)
        live.replace(with: other)
        #expect(live.current() == other)
        live.replace(with: start)
        #expect(live.current() == start)
    }

    /// A reader stopped after its first word while the writer publishes
    /// twice (overwriting the slot it reads) retries and returns the
    /// latest policy, never its old verdicts with new required bits.
    @Test func aReaderOvertakenByTwoChangesReadsAgain() {
        let live = LivePolicy(start)
        let middle = Policy(onDenial: .exit, requireCR4: CR4.umip.rawValue)
        let latest = Policy(onDenial: .reset, onWeakPinning: .poweroff, requireCR0: CR0.pg.rawValue,
                            requireCR4: CR4.smap.rawValue)
        var overtaken = false
        let seen = live.current {
            guard !overtaken else { return }
            overtaken = true
            live.replace(with: middle)
            live.replace(with: latest)
        }
        #expect(seen == latest)
    }

    /// Four readers while the main loop flips between two policies that
    /// differ in every word: every read is one of the two.
    @Test func readersNeverSeeAMixDuringReplacement() {
        let other = Policy(onDenial: .exit, onDenialCR0: .poweroff, onDenialCR4: nil, onWeakPinning: .pause,
                           requireCR0: CR0.pe.rawValue, requireCR4: CR4.smep.rawValue | CR4.smap.rawValue)
        let live = LivePolicy(start)
        let done = Atomic<Bool>(false)
        let mixed = Atomic<Int>(0)
        let reads = Atomic<Int>(0)
        let group = DispatchGroup()
        for _ in 0..<4 {
            DispatchQueue.global().async(group: group) {
                var count = 0
                while !done.load(ordering: .relaxed) || count < 1000 {
                    let seen = live.current()
                    if seen != start && seen != other { mixed.wrappingAdd(1, ordering: .relaxed) }
                    count += 1
                }
                reads.wrappingAdd(count, ordering: .relaxed)
            }
        }
        for flip in 0..<200_000 { live.replace(with: flip % 2 == 0 ? other : start) }
        done.store(true, ordering: .relaxed)
        group.wait()
        #expect(mixed.load(ordering: .relaxed) == 0)
        #expect(reads.load(ordering: .relaxed) >= 4000)
    }
}
