// The fixtures of the fake-host tests: finding and loading libHekiPlugin.so,
// a small VM wrapper over fh_vm_*, JSON helpers, the CR bits and verdicts
// under short names. Everything goes through the dlopen'ed .so and the
// public C ABI; the plugin's Swift module is never imported.
import CHekiPlugin
import FakeHost
import HekiKernelModel
import Foundation
import XCTest

// Control register bits: the kernel model's (heki_x86.h), under short names.
enum GuestCR0 {
    static let pe = FK_CR0_PE
    static let mp = FK_CR0_MP
    static let et = FK_CR0_ET
    static let ne = FK_CR0_NE
    static let wp = FK_CR0_WP
    static let am = FK_CR0_AM
    static let nw = FK_CR0_NW
    static let cd = FK_CR0_CD
    static let pg = FK_CR0_PG
    static let host = FK_DEFAULT_HOST_CR0
    static let reset = FK_RESET_CR0
}

enum GuestCR4 {
    static let pae = FK_CR4_PAE
    static let umip = FK_CR4_UMIP
    static let fsgsbase = FK_CR4_FSGSBASE
    static let smep = FK_CR4_SMEP
    static let smap = FK_CR4_SMAP
    static let cet = FK_CR4_CET
    static let fred = FK_CR4_FRED
    /// SMEP, SMAP, UMIP, FSGSBASE; no CET, no FRED.
    static let host = FK_DEFAULT_HOST_CR4
}

let kvmEINVAL = UInt64(bitPattern: -22)
let verdictNotHeki = HEKI_VERDICT_NOT_HEKI.rawValue
let verdictResume = HEKI_VERDICT_RESUME.rawValue
let verdictPause = HEKI_VERDICT_PAUSE.rawValue
let verdictPoweroff = HEKI_VERDICT_POWEROFF.rawValue
let verdictReset = HEKI_VERDICT_RESET.rawValue
let verdictExit = HEKI_VERDICT_EXIT.rawValue

enum PluginLibrary {
    /// libHekiPlugin.so: $HEKI_PLUGIN_PATH, or the first directory up from
    /// the test runner (.build/<config>/heki-pluginPackageTests.xctest) that
    /// holds it.
    static let path: String? = {
        if let env = ProcessInfo.processInfo.environment["HEKI_PLUGIN_PATH"], !env.isEmpty {
            return env
        }
        guard let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        else { return nil }
        var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
        while dir.path != "/" {
            let candidate = dir.appendingPathComponent("libHekiPlugin.so").path
            if FileManager.default.fileExists(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return nil
    }()

    /// One loaded copy for the whole run (a Swift runtime inside a .so is
    /// better not unloaded and reloaded over and over).
    nonisolated(unsafe) static let shared: OpaquePointer? = {
        guard let path else { return nil }
        var error: UnsafeMutablePointer<CChar>?
        let lib = hs_library_open(path, HEKI_PLUGIN_ABI_VERSION, &error)
        if let error { hs_free_string(error) }
        return lib
    }()

    static func require(file: StaticString = #filePath, line: UInt = #line) throws -> OpaquePointer {
        guard let path else {
            throw missing("libHekiPlugin.so not found next to the test runner (run `swift build` first)")
        }
        guard let lib = shared else {
            throw missing("cannot load \(path)", file: file, line: line)
        }
        return lib
    }
}

func parseJSON(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> [String: Any] {
    guard let data = text.data(using: .utf8),
          let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
    else {
        XCTFail("not a JSON object: \(text)", file: file, line: line)
        return [:]
    }
    return object
}

extension Dictionary where Key == String, Value == Any {
    func int(_ key: String) -> Int? { (self[key] as? NSNumber)?.intValue }
    func uint64(_ key: String) -> UInt64? { (self[key] as? NSNumber)?.uint64Value }
    func string(_ key: String) -> String? { self[key] as? String }
    func strings(_ key: String) -> [String]? { self[key] as? [String] }
    func object(_ key: String) -> [String: Any]? { self[key] as? [String: Any] }
}

/// A prerequisite of a test is missing: that is a failure, never a skip.
struct MissingPrerequisite: Error, CustomStringConvertible {
    let description: String
}

func missing(_ what: String, file: StaticString = #filePath, line: UInt = #line) -> MissingPrerequisite {
    XCTFail(what, file: file, line: line)
    return MissingPrerequisite(description: what)
}

func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }

/// One VM of the fake host with the plugin.
final class TestVM {
    let vm: OpaquePointer

    init(lib: OpaquePointer, kernel: FkProfile? = nil, vcpus: UInt32 = 1) {
        if var profile = kernel {
            vm = fh_vm_new(lib, &profile)
        } else {
            vm = fh_vm_new(lib, nil)
        }
        fh_vm_set_vcpus(vm, vcpus)
    }

    deinit { fh_vm_free(vm) }

    /// A VM with the plugin created from `options` and the caps enabled.
    static func started(_ options: [String], kernel: FkProfile? = nil, vcpus: UInt32 = 1,
                        file: StaticString = #filePath, line: UInt = #line) throws -> TestVM {
        let t = TestVM(lib: try PluginLibrary.require(), kernel: kernel, vcpus: vcpus)
        XCTAssertTrue(t.create(options), "heki_plugin_new failed: \(t.error)", file: file, line: line)
        XCTAssertEqual(t.enableCaps(), 0, t.error, file: file, line: line)
        return t
    }

    @discardableResult
    func create(_ options: [String]) -> Bool {
        fh_vm_clear_options(vm)
        for option in options { fh_vm_add_option(vm, option) }
        return fh_vm_create_plugin(vm) == 0
    }

    func enableCaps() -> Int32 { fh_vm_enable_caps(vm) }

    /// heki_plugin_set_policy with these key=value strings.
    func setPolicy(_ arguments: [String]) -> Int32 {
        var copies = arguments.map { strdup($0) }
        defer { copies.forEach { free($0) } }
        return copies.withUnsafeMutableBufferPointer { buffer in
            buffer.withMemoryRebound(to: UnsafePointer<CChar>?.self) {
                fh_vm_set_policy(vm, Int32(arguments.count), $0.baseAddress)
            }
        }
    }
    var error: String { String(cString: fh_vm_last_error(vm)) }
    var kernel: OpaquePointer { fh_vm_kernel(vm) }
    func vcpu(_ i: UInt32) -> OpaquePointer { fh_vm_vcpu(vm, i) }

    func pin(_ vcpu: UInt32 = 0, cr: Int32, _ bits: UInt64, repeat n: UInt64 = 1) {
        XCTAssertEqual(fh_vm_op_pin(vm, vcpu, cr, bits, n), 0)
    }
    func write(_ vcpu: UInt32 = 0, cr: Int32, _ value: UInt64, repeat n: UInt64 = 1) {
        XCTAssertEqual(fh_vm_op_write_cr(vm, vcpu, cr, value, n), 0)
    }
    func raw(_ vcpu: UInt32 = 0, exit: UInt32, words: [UInt64], repeat n: UInt64 = 1) {
        var w = words + Array(repeating: 0, count: max(0, 8 - words.count))
        XCTAssertEqual(fh_vm_op_raw_exit(vm, vcpu, exit, &w, n), 0)
    }

    /// Runs the programs from where they stopped (ops added since run
    /// next); returns the stop reason.
    @discardableResult
    func run() -> Int32 { fh_vm_run(vm) }

    func verdicts(_ verdict: Int32) -> UInt64 { fh_vm_verdict_count(vm, verdict) }
    func query() -> [String: Any] {
        guard let q = fh_vm_query(vm) else { return [:] }
        defer { fh_free_string(q) }
        return parseJSON(String(cString: q))
    }
    func freePlugin() { fh_vm_free_plugin(vm) }

    var events: [(name: String, data: [String: Any], raw: String)] {
        (0..<fh_vm_event_count(vm)).map { i in
            let raw = String(cString: fh_vm_event_data(vm, i))
            return (String(cString: fh_vm_event_name(vm, i)), parseJSON(raw), raw)
        }
    }
    func events(_ name: String) -> [[String: Any]] { events.filter { $0.name == name }.map(\.data) }
    func count(_ name: String) -> UInt64 { fh_vm_event_count_named(vm, name) }
    func suppressed(_ name: String) -> UInt64 { fh_vm_suppressed_sum(vm, name) }
    var logs: [String] { (0..<fh_vm_log_count(vm)).map { String(cString: fh_vm_log_message(vm, $0)) } }
}

/// A guest-written payload: exit reason and words of a "denial"/"configure".
func payload(reason: UInt64, value: UInt64 = 0) -> [UInt64] { [reason, value, 0, 0, 0, 0, 0, 0] }
