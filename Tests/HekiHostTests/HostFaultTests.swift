// Faults around the plugin (issue 5): the audit disk fills and frees up
// again, the host's main loop stalls for a long time, the library is loaded,
// unloaded and loaded again, and a host frees the plugin from a callback of
// the teardown's own flush.
import FakeHost
import HekiKernelModel
import Foundation
import XCTest

final class HostFaultTests: XCTestCase {
    // MARK: The audit disk fills, later

    /// A small file system that fills up: a 64 KiB tmpfs when this process
    /// may mount one (root), else a file-size limit (RLIMIT_FSIZE, EFBIG)
    /// on a file in a temporary directory. `free()` makes room again.
    final class FillingMedium {
        let dir: String
        let mounted: Bool
        private var savedLimit = rlimit()
        private let filler: String

        init() throws {
            dir = FileManager.default.temporaryDirectory.path + "/heki-full-\(getpid())-\(UUID().uuidString.prefix(8))"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
            filler = dir + "/filler"
            // HEKI_TEST_NO_TMPFS=1 takes the other path even as root.
            mounted = ProcessInfo.processInfo.environment["HEKI_TEST_NO_TMPFS"] == nil
                && mount("tmpfs", dir, "tmpfs", 0, "size=64k,mode=0700") == 0
            if mounted {
                // 56 KiB of 64: a few lines fit, then ENOSPC.
                let bytes = [UInt8](repeating: 0x2e, count: 56 * 1024)
                XCTAssertTrue(FileManager.default.createFile(atPath: filler, contents: Data(bytes)))
            } else {
                getrlimit(Int32(RLIMIT_FSIZE.rawValue), &savedLimit)
                signal(SIGXFSZ, SIG_IGN)
                var limit = savedLimit
                limit.rlim_cur = 6 * 1024 // past it, write() gives EFBIG (a partial write first)
                XCTAssertEqual(setrlimit(Int32(RLIMIT_FSIZE.rawValue), &limit), 0)
            }
        }

        /// Room again: the filler goes, or the limit is restored.
        func free() {
            if mounted {
                XCTAssertEqual(unlink(filler), 0)
            } else {
                setrlimit(Int32(RLIMIT_FSIZE.rawValue), &savedLimit)
            }
        }

        func tearDown() {
            if mounted {
                umount(dir)
            } else {
                setrlimit(Int32(RLIMIT_FSIZE.rawValue), &savedLimit)
            }
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    /// The disk fills after the audit file was opened, then frees up: each
    /// line that fails is dropped whole (no fragment is left in the file)
    /// and counted, the failure and the recovery are logged once each, the
    /// host gets every event, and lines + failures == events, exactly.
    func testAuditDiskFillsThenRecovers() throws {
        let medium = try FillingMedium()
        defer { medium.tearDown() }
        let path = medium.dir + "/audit.jsonl"
        let t = try TestVM.started(["audit-log=\(path)", "rate-limit=0", "vm-name=full"])
        t.pin(cr: 0, GuestCR0.wp)
        t.write(cr: 0, 0, repeat: 200)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        fh_vm_iterate_until_idle(t.vm)
        let failedWhileFull = t.query().object("counters")?.uint64("audit-failures") ?? 0
        XCTAssertGreaterThan(failedWhileFull, 0, "the medium never filled (mounted: \(medium.mounted))")
        medium.free()
        t.write(cr: 0, 0, repeat: 100)
        XCTAssertEqual(t.run(), FH_STOP_NONE)
        fh_vm_iterate_until_idle(t.vm)
        let failures = t.query().object("counters")?.uint64("audit-failures") ?? 0
        t.freePlugin()

        XCTAssertEqual(t.count("HEKI_DENIAL"), 300, "the host gets every event whatever the disk does")
        let text = try String(contentsOfFile: path, encoding: .utf8)
        XCTAssertTrue(text.hasSuffix("\n"))
        let lines = text.split(separator: "\n").map(String.init)
        for line in lines {
            XCTAssertTrue(line.hasPrefix("{\"time\":\""), "a fragment of a failed line was left: \(line.prefix(80))")
            XCTAssertNotNil(try? JSONSerialization.jsonObject(with: Data(line.utf8)), "not JSON: \(line.prefix(80))")
        }
        XCTAssertEqual(UInt64(lines.count) + failures, fh_vm_event_total(t.vm), "every event is a line or a failure")
        XCTAssertEqual(failures, failedWhileFull, "after the recovery every line is written")
        XCTAssertEqual(parseJSON(lines.last ?? "{}").string("event"), "HEKI_DENIAL")
        let audit = t.logs.filter { $0.contains("audit log") }
        XCTAssertEqual(audit.count, 2, "one failure line, one recovery line: \(audit)")
        XCTAssertTrue(audit.first?.contains(medium.mounted ? "No space left on device" : "File too large") == true, "\(audit)")
        XCTAssertTrue(audit.last?.contains("writes succeed again") == true, "\(audit)")
    }

    // MARK: The main loop stalls

    /// The host's context does not run while 4 vCPUs storm, across several
    /// rate-limit windows: memory stays bounded (the queue holds at most
    /// 4096 records per shard of vCPUs, here one shard each; the rest are
    /// only counted), vCPUs never block, and when the loop runs again the
    /// counts are exact.
    func testStalledMainLoopKeepsTheQueueBoundedAndCountsExact() throws {
        let t = try TestVM.started(["rate-limit=0"], vcpus: 4)
        let plugin = try XCTUnwrap(fh_vm_plugin(t.vm))
        let handleExit = try XCTUnwrap(fh_vm_api(t.vm)?.pointee.handle_exit)
        let perThread = 50_000
        let runs = (0..<UInt32(4)).map { fh_vm_vcpu_run(t.vm, $0)! }
        for run in runs {
            var words = payload(reason: 2, value: 0)
            fk_run_write_raw(run, 40, &words)
        }
        // Addresses for the worker closures (pointers are not Sendable).
        let pluginBits = UInt(bitPattern: plugin), runBits = runs.map { UInt(bitPattern: $0) }
        // Two bursts with more than a rate window between them, no loop.
        for burst in 0..<2 {
            DispatchQueue.concurrentPerform(iterations: 4) { i in
                for _ in 0..<perThread {
                    precondition(handleExit(OpaquePointer(bitPattern: pluginBits), UInt32(i),
                                            OpaquePointer(bitPattern: runBits[i])) == HEKI_VERDICT_RESUME)
                }
            }
            if burst == 0 { Thread.sleep(forTimeInterval: 1.2) }
        }
        let total = UInt64(4 * perThread * 2)
        let held = UInt64(4 * 4096)  // vCPUs 0 to 3: four shards
        XCTAssertEqual(fh_vm_event_total(t.vm), 0, "nothing delivered while the loop is stalled")
        let q = t.query().object("counters")
        XCTAssertEqual((q?.object("denial")?.uint64("cr4")), total)
        let pendingSuppressed = q?.object("suppressed")?.uint64("HEKI_DENIAL") ?? 0
        XCTAssertGreaterThanOrEqual(pendingSuppressed, total - held, "at most 4096 records per shard are held")
        fh_vm_iterate_until_idle(t.vm) // the loop resumes (4 dispatches of at most 4096 records)
        let individual = t.count("HEKI_DENIAL")
        XCTAssertLessThanOrEqual(individual, held, "the queue is bounded")
        XCTAssertEqual(individual + pendingSuppressed, total)
        t.freePlugin()
        XCTAssertEqual(t.count("HEKI_DENIAL") + t.suppressed("HEKI_DENIAL"), total, "exact when the loop resumes")
        XCTAssertEqual(t.suppressed("HEKI_DENIAL"), pendingSuppressed)
        XCTAssertEqual(t.count("HEKI_CAPABILITY"), 3)
        XCTAssertEqual(fh_vm_callback_violations(t.vm), 0)
    }

    // MARK: Load, unload, load

    /// dlopen, use, dlclose, dlopen again (three times): each new handle
    /// makes working plugins, and one made through a closed handle keeps
    /// working (in this process the suite's handle keeps the library
    /// mapped: HostCTests.testPluginOutlivesTheOnlyHandleOfItsLibrary checks the
    /// unmapping case).
    func testEachNewHandleMakesWorkingPlugins() throws {
        let path = try XCTUnwrap(PluginLibrary.path)
        _ = try PluginLibrary.require()
        var error: UnsafeMutablePointer<CChar>?
        let first = try XCTUnwrap(hs_library_open(path, HEKI_PLUGIN_ABI_VERSION, &error))
        let before = TestVM(lib: first)
        XCTAssertTrue(before.create(["vm-name=before"]), before.error)
        XCTAssertEqual(before.enableCaps(), 0)
        hs_library_close(first)
        // The plugin made through the closed handle still works.
        before.pin(cr: 4, GuestCR4.smep)
        before.write(cr: 4, 0)
        XCTAssertEqual(before.run(), FH_STOP_NONE)
        for cycle in 0..<3 {
            let again = try XCTUnwrap(hs_library_open(path, HEKI_PLUGIN_ABI_VERSION, &error), "cycle \(cycle)")
            let t = TestVM(lib: again)
            XCTAssertTrue(t.create(["vm-name=again\(cycle)"]), t.error)
            XCTAssertEqual(t.enableCaps(), 0)
            t.pin(cr: 0, GuestCR0.wp)
            t.write(cr: 0, 0)
            XCTAssertEqual(t.run(), FH_STOP_NONE)
            t.freePlugin()
            XCTAssertEqual(t.count("HEKI_DENIAL"), 1)
            hs_library_close(again)
        }
        before.freePlugin()
        XCTAssertEqual(before.count("HEKI_DENIAL"), 1)
        XCTAssertEqual(before.events("HEKI_DENIAL").first?.string("vm-name"), "before")
    }

    // MARK: Free from a callback of the teardown

    /// Regression (Fuzz/api found it; corpus file
    /// Fuzz/corpus/api/regress-free-inside-teardown-flush): a host whose
    /// event callback calls heki_plugin_free, reached from the flush inside
    /// heki_plugin_free itself, used to start a second teardown and free
    /// the plugin under the first one (use after free). It returns at once
    /// now; the running teardown completes and delivers everything.
    nonisolated(unsafe) private static var freeCalls = 0
    nonisolated(unsafe) private static var api: HsPluginApi?
    nonisolated(unsafe) private static var plugin: OpaquePointer?

    func testFreeFromACallbackOfTheTeardownFlush() throws {
        for path in ["free", "dispatch"] {
            let t = try TestVM.started(["rate-limit=2"])
            let run = fh_vm_vcpu_run(t.vm, 0)!
            var words = payload(reason: 2, value: GuestCR4.smep)
            fk_run_write_raw(run, 39, &words)
            XCTAssertEqual(fh_vm_handle_exit(t.vm, 0, run), verdictResume)
            words = payload(reason: 2, value: 0)
            fk_run_write_raw(run, 40, &words)
            for _ in 0..<10 { XCTAssertEqual(fh_vm_handle_exit(t.vm, 0, run), verdictResume) }
            Self.freeCalls = 0
            Self.api = fh_vm_api(t.vm)!.pointee
            Self.plugin = fh_vm_plugin(t.vm)
            // Every event frees the plugin through the raw table (the fake
            // VMM's own wrapper would hide the second call).
            fh_vm_set_event_hook(t.vm, { _, _, _ in
                HostFaultTests.freeCalls += 1
                HostFaultTests.api!.plugin_free!(HostFaultTests.plugin)
            }, nil)
            if path == "free" {
                t.freePlugin() // the teardown's flush calls back
            } else {
                fh_vm_iterate_until_idle(t.vm) // a dispatch calls back; the deferred teardown too
                XCTAssertEqual(fh_vm_event_count_named(t.vm, "HEKI_SUPPRESSED"), 1,
                               "the deferred teardown delivered the summary")
                fh_vm_forget_plugin(t.vm) // freed by the callback: the harness must not free it again
            }
            fh_vm_set_event_hook(t.vm, nil, nil)
            XCTAssertEqual(t.count("HEKI_CAPABILITY"), 3, path)
            XCTAssertEqual(t.count("HEKI_CONFIGURE"), 1, path)
            XCTAssertEqual(t.count("HEKI_DENIAL") + t.suppressed("HEKI_DENIAL"), 10, path)
            XCTAssertEqual(UInt64(Self.freeCalls), fh_vm_event_total(t.vm), path)
        }
    }
}
