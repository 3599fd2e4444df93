// Storms from several vCPU threads: exact accounting across rate limiting,
// coalescing and queue overflow; the summary while the loop runs.
import CHekiPlugin
import FakeHost
import HekiKernelModel
import XCTest

final class HostStormTests: XCTestCase {
    func testFourThreadStormExactAccounting() throws {
        let threads: UInt32 = 4, perThread: UInt64 = 100_000
        let t = try TestVM.started(["vm-name=storm"], vcpus: threads)
        t.pin(0, cr: 0, GuestCR0.wp)
        t.pin(0, cr: 4, GuestCR4.smep | GuestCR4.smap)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        for i in 0..<threads {
            // Two vCPUs clear GuestCR0.WP, two clear GuestCR4.SMEP.
            if i % 2 == 0 {
                t.write(i, cr: 0, GuestCR0.host & ~GuestCR0.wp, repeat: perThread)
            } else {
                t.write(i, cr: 4, GuestCR4.host & ~GuestCR4.smep, repeat: perThread)
            }
        }
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        let total = UInt64(threads) * perThread
        XCTAssertEqual(fk_vm_denial_exits(t.kernel), total)
        XCTAssertEqual(fh_vm_exits(t.vm), total + 2)
        XCTAssertEqual(t.verdicts(verdictResume), total + 2)
        XCTAssertEqual(fh_vm_gp_total(t.vm), total, "every denial ended in #GP")
        for i in 0..<threads { XCTAssertEqual(fh_vm_vcpu_gp(t.vm, i), perThread) }
        let q = t.query()
        let denial = q.object("counters")?.object("denial")
        XCTAssertEqual(denial?.uint64("cr0"), total / 2)
        XCTAssertEqual(denial?.uint64("cr4"), total / 2)
        t.freePlugin()
        let individual = t.count("HEKI_DENIAL")
        let suppressed = t.suppressed("HEKI_DENIAL")
        XCTAssertEqual(individual + suppressed, total, "individual \(individual) + suppressed \(suppressed)")
        XCTAssertGreaterThan(suppressed, 0, "a storm is coalesced at the default rate limit")
        XCTAssertLessThan(individual, total)
        XCTAssertEqual(t.count("HEKI_CONFIGURE"), 2)
        XCTAssertEqual(t.suppressed("HEKI_CONFIGURE"), 0)
        XCTAssertEqual(fh_vm_callback_violations(t.vm), 0)
        for e in t.events("HEKI_SUPPRESSED") {
            XCTAssertEqual(e.string("vm-name"), "storm")
            XCTAssertGreaterThan(e.uint64("count") ?? 0, 0)
        }
    }

    func testRateLimitWindowSummaryArrivesWhileTheLoopRuns() throws {
        let t = try TestVM.started(["rate-limit=10"])
        t.pin(cr: 4, GuestCR4.smep)
        t.write(cr: 4, 0, repeat: 1000)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        fh_vm_iterate_until_idle(t.vm)
        // The plugin reports the coalesced count within ~1-2 s.
        var waited = 0
        while t.count("HEKI_SUPPRESSED") == 0 && waited < 4000 {
            fh_vm_run_loop_ms(t.vm, 100)
            waited += 100
        }
        XCTAssertGreaterThan(t.count("HEKI_SUPPRESSED"), 0, "no summary after \(waited) ms")
        XCTAssertLessThanOrEqual(waited, 2500)
        let individualBeforeFree = t.count("HEKI_DENIAL")
        XCTAssertLessThanOrEqual(individualBeforeFree, 20, "about rate-limit per window")
        XCTAssertEqual(individualBeforeFree + t.suppressed("HEKI_DENIAL"), 1000)
        let summary = try XCTUnwrap(t.events("HEKI_SUPPRESSED").first)
        XCTAssertEqual(summary.string("event"), "HEKI_DENIAL")
        XCTAssertEqual(t.query().object("counters")?.object("suppressed")?.uint64("HEKI_DENIAL"),
                       t.suppressed("HEKI_DENIAL"))
        t.freePlugin()
        XCTAssertEqual(t.count("HEKI_DENIAL") + t.suppressed("HEKI_DENIAL"), 1000)
        XCTAssertEqual(t.count("HEKI_CONFIGURE"), 1)
    }

    func testNewWindowAllowsIndividualEventsAgain() throws {
        let t = try TestVM.started(["rate-limit=5"])
        t.pin(cr: 0, GuestCR0.wp)
        t.write(cr: 0, 0, repeat: 50)
        t.run()
        fh_vm_run_loop_ms(t.vm, 1300)
        let firstWindow = t.count("HEKI_DENIAL")
        XCTAssertLessThanOrEqual(firstWindow, 10)
        t.write(cr: 0, 0, repeat: 3)
        t.run()
        t.freePlugin()
        XCTAssertEqual(t.count("HEKI_DENIAL"), firstWindow + 3, "a new window: the first N go out again")
        XCTAssertEqual(t.count("HEKI_DENIAL") + t.suppressed("HEKI_DENIAL"), 53)
    }

    func testMalformedExitsAreRateLimitedToo() throws {
        let t = try TestVM.started(["rate-limit=3"], vcpus: 2)
        t.raw(0, exit: 39, words: payload(reason: 0), repeat: 5000)
        t.raw(1, exit: 40, words: payload(reason: 12), repeat: 5000)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        XCTAssertEqual(t.verdicts(verdictNotHeki), 10000)
        t.freePlugin()
        XCTAssertEqual(t.count("HEKI_MALFORMED_EXIT") + t.suppressed("HEKI_MALFORMED_EXIT"), 10000)
        XCTAssertLessThanOrEqual(t.count("HEKI_MALFORMED_EXIT"), 6)
    }

    func testNoCoalescingWithRateLimitZero() throws {
        let t = try TestVM.started(["rate-limit=0"], vcpus: 2)
        t.pin(0, cr: 0, GuestCR0.wp)
        t.run()
        t.write(0, cr: 0, 0, repeat: 2000)
        t.write(1, cr: 0, 0, repeat: 2000)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        t.freePlugin()
        // Only queue overflow may coalesce; the accounting stays exact.
        XCTAssertEqual(t.count("HEKI_DENIAL") + t.suppressed("HEKI_DENIAL"), 4000)
        XCTAssertGreaterThan(t.count("HEKI_DENIAL"), 100, "more than any default window")
    }

    /// Four vCPUs storm denials with on-denial=pause: each of them stops at
    /// its next exit (at most one denial each, judged pause), none runs on
    /// through its 100000 writes, and every denial is one event.
    func testStormWithPauseStopsEveryVcpu() throws {
        let t = try TestVM.started(["on-denial=pause", "rate-limit=0"], vcpus: 4)
        t.pin(0, cr: 0, GuestCR0.wp)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        let before = (0..<UInt32(4)).map { fh_vm_vcpu_exits(t.vm, $0) }
        for i in 0..<UInt32(4) { t.write(i, cr: 0, 0, repeat: 100_000) }
        XCTAssertEqual(t.run(), verdictPause)
        var denials: UInt64 = 0
        for i in 0..<UInt32(4) {
            let exits = fh_vm_vcpu_exits(t.vm, i) - before[Int(i)]
            XCTAssertLessThanOrEqual(exits, 1, "vCPU \(i) stopped at its next exit")
            XCTAssertEqual(fh_vm_vcpu_verdict_count(t.vm, i, verdictPause), exits, "vCPU \(i): its denial was judged pause")
            XCTAssertLessThanOrEqual(fk_vcpu_gp_count(t.vcpu(i)), 1, "vCPU \(i) did not run on")
            denials += exits
        }
        XCTAssertGreaterThanOrEqual(denials, 1)
        XCTAssertEqual(t.verdicts(verdictPause), denials)
        XCTAssertEqual(fk_vm_denial_exits(t.kernel), denials)
        t.freePlugin()
        XCTAssertEqual(t.count("HEKI_DENIAL"), denials)
    }
}
