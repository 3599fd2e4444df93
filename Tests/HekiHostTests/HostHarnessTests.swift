// The host support library's loader (hs_library_open) and the fake host's
// own checks: what it loads, what it refuses, what it detects.
import CHekiPlugin
import FakeHost
import Foundation
import HekiHostSupport
import XCTest

final class HostHarnessTests: XCTestCase {
    /// Each slot of the loader's table holds the library's function of the
    /// slot's name (what dlsym gives for that name on the same library), and
    /// the table covers every function the header declares: a slot filled
    /// with the wrong symbol, or a function the table forgot, fails here.
    func testLoaderFillsEachSlotWithTheFunctionOfItsName() throws {
        let lib = try PluginLibrary.require()
        XCTAssertEqual(hs_library_abi_version(lib), HEKI_PLUGIN_ABI_VERSION)
        let api = hs_library_api(lib)!.pointee
        func address<F>(_ function: F?) -> UnsafeRawPointer? {
            function.map { unsafeBitCast($0, to: UnsafeRawPointer.self) }
        }
        let slots: [(name: String, address: UnsafeRawPointer?)] = [
            ("heki_plugin_abi_version", address(api.abi_version)), ("heki_plugin_new", address(api.plugin_new)),
            ("heki_plugin_free", address(api.plugin_free)), ("heki_plugin_free_string", address(api.free_string)),
            ("heki_plugin_exit_number", address(api.exit_number)), ("heki_plugin_cap_number", address(api.cap_number)),
            ("heki_plugin_cap_mask", address(api.cap_mask)), ("heki_plugin_cap_result", address(api.cap_result)),
            ("heki_plugin_enable_caps", address(api.enable_caps)), ("heki_plugin_start", address(api.start)),
            ("heki_plugin_set_policy", address(api.set_policy)), ("heki_plugin_flush", address(api.flush)),
            ("heki_plugin_handle_exit", address(api.handle_exit)), ("heki_plugin_query", address(api.query)),
            ("heki_plugin_migration_status", address(api.migration_status)),
            ("heki_plugin_save_state", address(api.save_state)), ("heki_plugin_free_state", address(api.free_state)),
            ("heki_plugin_restore_state", address(api.restore_state)),
            ("heki_plugin_reset", address(api.reset)),
        ]
        XCTAssertEqual(Set(slots.map(\.name)), HeaderFunctions.names, "the table covers the header")
        let handle = try XCTUnwrap(dlopen(hs_library_path(lib), RTLD_NOW | RTLD_NOLOAD), "already loaded")
        defer { dlclose(handle) }
        for slot in slots {
            XCTAssertNotNil(slot.address, slot.name)
            XCTAssertEqual(slot.address, UnsafeRawPointer(dlsym(handle, slot.name)), slot.name)
        }
    }

    func testLoaderRefusesMissingFile() {
        var error: UnsafeMutablePointer<CChar>?
        let lib = hs_library_open("/nonexistent/libHekiPlugin.so", HEKI_PLUGIN_ABI_VERSION, &error)
        XCTAssertNil(lib)
        let message = error.map { String(cString: $0) } ?? ""
        hs_free_string(error)
        XCTAssertTrue(message.contains("cannot load"), message)
        XCTAssertTrue(message.contains("/nonexistent/libHekiPlugin.so"), message)
    }

    func testLoaderRefusesLibraryWithoutTheSymbols() {
        var error: UnsafeMutablePointer<CChar>?
        let lib = hs_library_open("libm.so.6", HEKI_PLUGIN_ABI_VERSION, &error)
        XCTAssertNil(lib)
        let message = error.map { String(cString: $0) } ?? ""
        hs_free_string(error)
        XCTAssertTrue(message.contains("missing symbol heki_plugin_abi_version"), message)
    }

    func testLoaderRefusesAbiVersionMismatch() throws {
        guard let path = PluginLibrary.path else { throw missing("no plugin") }
        _ = try PluginLibrary.require()
        var error: UnsafeMutablePointer<CChar>?
        let lib = hs_library_open(path, HEKI_PLUGIN_ABI_VERSION + 1, &error)
        XCTAssertNil(lib)
        let message = error.map { String(cString: $0) } ?? ""
        hs_free_string(error)
        XCTAssertTrue(message.contains("ABI version 1, this host needs 2"), message)
    }

    /// The harness's own check: callbacks on a thread that does not own the
    /// context are counted (so a zero elsewhere means something).
    func testCallbackThreadViolationsAreDetected() throws {
        final class Box: @unchecked Sendable {
            var vm: TestVM?
            let lib: OpaquePointer
            init(_ lib: OpaquePointer) { self.lib = lib }
        }
        let box = Box(try PluginLibrary.require())
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            let t = TestVM(lib: box.lib) // this thread owns the context
            XCTAssertTrue(t.create([]), t.error)
            XCTAssertEqual(t.enableCaps(), 0)
            box.vm = t
            done.signal()
        }
        thread.start()
        done.wait()
        let t = try XCTUnwrap(box.vm)
        t.freePlugin() // here, on another thread: the HEKI_CAPABILITY callbacks
        XCTAssertEqual(t.count("HEKI_CAPABILITY"), 3)
        XCTAssertEqual(fh_vm_callback_violations(t.vm), fh_vm_event_total(t.vm) + fh_vm_log_total(t.vm))
        XCTAssertGreaterThan(fh_vm_callback_violations(t.vm), 0)
    }
}
