// The C side of the contract: the public header compiles as C11 and C++17
// with warnings as errors, and a plain C program (Tests/CProgram/load_plugin.c)
// loads the .so, checks the version, creates a plugin and handles one exit,
// also after closing the library's only handle.
import CHekiPlugin
import FakeHost
import Foundation
import XCTest

final class HostCTests: XCTestCase {
    /// The package root: Tests/HekiHostTests/<this file> -> ../..
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory
            .appendingPathComponent("heki-c-\(getpid())-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: scratch) }

    func requireTool(_ tool: String) throws {
        let (status, _) = try runCommand(["sh", "-c", "command -v \(tool)"])
        if status != 0 { throw missing("\(tool) not installed") }
    }

    func testHeaderCompilesAsC11AndCxx17() throws {
        let header = root.appendingPathComponent("include/heki_plugin.h").path
        XCTAssertTrue(FileManager.default.fileExists(atPath: header), header)
        try requireTool("cc")
        try requireTool("c++")
        let c = scratch.appendingPathComponent("h.c")
        try """
        #include "heki_plugin.h"
        #include "heki_plugin.h" /* the include guard */
        _Static_assert(HEKI_PLUGIN_ABI_VERSION == 1u, "abi");
        int use(const HekiHost *h) { return (int)h->size + (int)HEKI_VERDICT_EXIT + (int)HEKI_EXIT_DENIAL; }
        """.write(to: c, atomically: true, encoding: .utf8)
        var (status, output) = try runCommand(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-Wpedantic",
                                       "-I", root.appendingPathComponent("include").path, "-fsyntax-only", c.path])
        XCTAssertEqual(status, 0, output)
        // The header alone, as C11, C++17.
        (status, output) = try runCommand(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                                   "-x", "c", header])
        XCTAssertEqual(status, 0, output)
        (status, output) = try runCommand(["c++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                                   "-x", "c++", header])
        XCTAssertEqual(status, 0, output)
        // C++ includes it inside extern "C", as QEMU's qemu-plugin.h asks
        // (the header has no __cplusplus guard: QEMU's checkpatch refuses
        // one); linked against the .so, the names must resolve unmangled.
        guard let plugin = PluginLibrary.path else { throw missing("no plugin") }
        let cxx = scratch.appendingPathComponent("h.cc")
        try """
        extern "C" {
        #include "heki_plugin.h"
        }
        #include <glib.h>
        #include <cstdio>
        static_assert(HEKI_PLUGIN_ABI_VERSION == 1u, "abi");
        extern "C" void f(HekiHost *h) { h->context = g_main_context_default(); }
        int main() { std::printf("%u", heki_plugin_abi_version()); return 0; }
        """.write(to: cxx, atomically: true, encoding: .utf8)
        let (_, glib) = try runCommand(["pkg-config", "--cflags", "--libs", "glib-2.0"])
        let glibFlags = glib.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
        let program = scratch.appendingPathComponent("h-cxx").path
        (status, output) = try runCommand(["c++", "-std=c++17", "-Wall", "-Wextra", "-Werror",
                                   "-I", root.appendingPathComponent("include").path, cxx.path, plugin,
                                   "-Wl,-rpath," + URL(fileURLWithPath: plugin).deletingLastPathComponent().path,
                                   "-o", program] + glibFlags)
        XCTAssertEqual(status, 0, "the GMainContext typedef agrees with glib's, the names link: \(output)")
        (status, output) = try runCommand([program])
        XCTAssertEqual(status, 0, output)
        XCTAssertEqual(output, "1", "a C++ program calls heki_plugin_abi_version()")
    }

    func testPlainCProgramLoadsThePlugin() throws {
        guard let plugin = PluginLibrary.path else { throw missing("no plugin") }
        try requireTool("cc")
        let binary = scratch.appendingPathComponent("load_plugin").path
        var (status, output) = try CHostProgram.compile("load_plugin", into: binary)
        XCTAssertEqual(status, 0, output)
        (status, output) = try runCommand([binary, plugin])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("load_plugin: ok"), output)
        XCTAssertTrue(output.contains("event HEKI_CONFIGURE {"), output)
        XCTAssertTrue(output.contains("\"vm-name\":\"cprog\""), output)
        // A wrong path fails cleanly.
        (status, output) = try runCommand([binary, scratch.appendingPathComponent("nope.so").path])
        XCTAssertEqual(status, 1, output)
    }

    /// A plugin outlives the only handle of its library: a fresh process
    /// (load_plugin --close-first) loads the .so, makes a plugin, enables
    /// its capabilities, dlcloses the library and then starts the plugin,
    /// hands it an exit, queries and frees it. In this test process the
    /// suite's shared handle would keep the library mapped whatever the
    /// link flags: only a process of its own can see an unmapped plugin.
    func testPluginOutlivesTheOnlyHandleOfItsLibrary() throws {
        let path = try XCTUnwrap(PluginLibrary.path)
        let binary = scratch.appendingPathComponent("load_plugin_close_first").path
        let compile = try CHostProgram.compile("load_plugin", into: binary)
        XCTAssertEqual(compile.status, 0, compile.output)
        let (status, output) = try runCommand([binary, path, "--close-first"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("library closed\nverdict 0\n"), output)
        XCTAssertTrue(output.contains("load_plugin: ok"), output)
    }

    func testDemoRunsAndItsChecksHold() throws {
        guard let plugin = PluginLibrary.path else { throw missing("no plugin") }
        let demo = URL(fileURLWithPath: plugin).deletingLastPathComponent().appendingPathComponent("heki-demo").path
        guard FileManager.default.isExecutableFile(atPath: demo) else { throw missing("heki-demo not built") }
        let (status, output) = try runCommand([demo, "--plugin", plugin])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("heki-demo: all checks hold"), output)
        XCTAssertTrue(output.contains("HEKI_SUPPRESSED"), output)
        XCTAssertTrue(output.contains("the VM stopped with verdict: pause"), output)
        // A bad option is reported with the key, and the demo fails.
        let (bad, message) = try runCommand([demo, "--plugin", plugin, "on-denial=explode"])
        XCTAssertEqual(bad, 2)
        XCTAssertTrue(message.contains("heki-plugin: on-denial"), message)
    }
}
