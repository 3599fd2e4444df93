import Foundation
import XCTest

/// What the built libHekiPlugin.so looks like from outside: its exports, its
/// dependencies, and the install step C consumers use.
final class LibraryTests: XCTestCase {
    static let packageDirectory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    /// .build/<configuration>: the test runner and the .so sit side by side.
    static let binDirectory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
    static let library = binDirectory.appendingPathComponent("libHekiPlugin.so").path

    static let abiFunctions: Set<String> = [
        "heki_plugin_abi_version", "heki_plugin_new", "heki_plugin_free", "heki_plugin_free_string",
        "heki_plugin_exit_number", "heki_plugin_cap_number", "heki_plugin_cap_mask",
        "heki_plugin_cap_result", "heki_plugin_handle_exit", "heki_plugin_query",
        "heki_plugin_enable_caps", "heki_plugin_start", "heki_plugin_set_policy",
    ]

    /// Global dynamic symbols: exactly the C ABI. (A debug build also lists
    /// Swift symbols that the version script made local: `nm` types in
    /// lower case, which nothing can bind to.)
    func testExportsExactlyTheCABI() throws {
        let (status, output) = try runCommand(["nm", "-D", "--defined-only", Self.library])
        XCTAssertEqual(status, 0, output)
        let global = output.split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(separator: " ")
            guard fields.count == 3, fields[1].first!.isUppercase else { return nil }
            return String(fields[2])
        }
        XCTAssertEqual(Set(global), Self.abiFunctions, "exported: \(global)")
    }

    /// The release library (`make test` builds it first, as `make demo`
    /// does): `nm -D --defined-only` lists the C ABI and nothing else.
    func testReleaseLibraryListsOnlyTheCABI() throws {
        let release = Self.releaseLibrary
        guard FileManager.default.fileExists(atPath: release) else {
            return XCTFail("\(release) is missing: run the tests with `make test`, which builds it first")
        }
        let (status, output) = try runCommand(["nm", "-D", "--defined-only", release])
        XCTAssertEqual(status, 0, output)
        let symbols = output.split(separator: "\n").compactMap { $0.split(separator: " ").last.map(String.init) }
        XCTAssertEqual(Set(symbols), Self.abiFunctions, "exported: \(symbols)")
        XCTAssertEqual(symbols.count, Self.abiFunctions.count)
    }

    func testCarriesTheSwiftRuntimeStatically() throws {
        let (status, output) = try runCommand(["readelf", "-d", Self.library])
        XCTAssertEqual(status, 0, output)
        let needed = output.split(separator: "\n").filter { $0.contains("(NEEDED)") }
        XCTAssertFalse(needed.isEmpty)
        XCTAssertFalse(needed.contains { $0.contains("libswift") || $0.contains("Foundation") || $0.contains("XCTest") },
                       "needs: \(needed)")
        XCTAssertTrue(needed.contains { $0.contains("libglib-2.0") })
        XCTAssertTrue(output.contains("Library soname: [libHekiPlugin.so]"))
        // dlclose must not unmap the Swift runtime.
        XCTAssertTrue(output.contains("NODELETE"), output)
    }

    static var releaseLibrary: String {
        packageDirectory.appendingPathComponent(".build/release/libHekiPlugin.so").path
    }

    /// Builds Tests/CProgram/alloc_check.c (malloc interposed, exported so
    /// the dlopen'ed library allocates through it) and runs it on the release
    /// .so with `arguments`.
    private func allocCheck(_ arguments: [String]) throws -> (status: Int32, output: String) {
        guard FileManager.default.fileExists(atPath: Self.releaseLibrary) else {
            XCTFail("\(Self.releaseLibrary) is missing: run the tests with `make test`, which builds it first")
            return (-1, "")
        }
        let binary = FileManager.default.temporaryDirectory.appendingPathComponent("heki-alloc-check-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: binary) }
        let source = Self.packageDirectory.appendingPathComponent("Tests/CProgram/alloc_check.c").path
        let compile = try runCommand(["sh", "-c", "cc -std=c11 -Wall -Wextra -Werror -rdynamic -o \(binary) \(source) $(pkg-config --cflags --libs glib-2.0) -ldl"])
        XCTAssertEqual(compile.status, 0, compile.output)
        return try runCommand([binary, Self.releaseLibrary] + arguments)
    }

    /// handle_exit allocates nothing, on every path (pin, weak pin, denial,
    /// malformed, foreign, rate-limited, queue full).
    func testHandleExitNeverAllocates() throws {
        let result = try allocCheck(["exits", "300000"])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("allocations: 0 in 300000 calls"), result.output)
    }

    /// new/exits/dispatch/query/free cycles leave no heap block behind; the
    /// same cycles without heki_plugin_free show the check can see a leak.
    func testPluginLifecycleLeaksNothing() throws {
        let result = try allocCheck(["cycles", "100"])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("live blocks: 0 after 100 cycles"), result.output)
        let leaky = try allocCheck(["cycles-without-free", "2"])
        XCTAssertEqual(leaky.status, 1, leaky.output)
        XCTAssertFalse(leaky.output.contains("live blocks: 0 "), leaky.output)
    }

    /// `make install-files` with DESTDIR and PREFIX, then a C program built
    /// with `pkg-config --cflags --libs heki-plugin` links against the .so
    /// (no dlopen) and runs.
    func testInstallGivesPkgConfigConsumersALibrary() throws {
        let stage = FileManager.default.temporaryDirectory.appendingPathComponent("heki-install-\(getpid())")
        try? FileManager.default.removeItem(at: stage)
        defer { try? FileManager.default.removeItem(at: stage) }
        let install = try runCommand(["make", "-s", "install-files", "BUILD_DIR=\(Self.binDirectory.path)",
                                    "DESTDIR=\(stage.path)", "PREFIX=/opt/heki"],
                                   directory: Self.packageDirectory)
        XCTAssertEqual(install.status, 0, install.output)
        let root = stage.path + "/opt/heki"
        for file in ["lib/libHekiPlugin.so", "include/heki_plugin.h", "lib/pkgconfig/heki-plugin.pc"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: root + "/" + file), file)
        }
        let pc = try String(contentsOfFile: root + "/lib/pkgconfig/heki-plugin.pc", encoding: .utf8)
        XCTAssertTrue(pc.contains("prefix=/opt/heki\n"), pc)
        XCTAssertFalse(pc.contains("@"), pc)

        let environment = ["PKG_CONFIG_PATH": root + "/lib/pkgconfig", "PKG_CONFIG_SYSROOT_DIR": stage.path]
        let flags = try runCommand(["pkg-config", "--cflags", "--libs", "heki-plugin"], environment: environment)
        XCTAssertEqual(flags.status, 0, flags.output)
        XCTAssertTrue(flags.output.contains("-I\(root)/include"), flags.output)
        XCTAssertTrue(flags.output.contains("-lHekiPlugin"), flags.output)

        let source = stage.appendingPathComponent("consumer.c")
        try """
        #include <heki_plugin.h>
        #include <stdio.h>
        /* A Heki v3 kernel's answers: 235 is VM_TYPES, 236/237 are Heki's. */
        static int check(void *opaque, uint32_t cap) {
            (void)opaque;
            return cap == 235 ? 1 : cap == 236 || cap == 237 ? 3 : 0;
        }
        static int enable(void *opaque, uint32_t cap, uint64_t mask) {
            (void)opaque;
            return (cap == 236 || cap == 237) && mask == 3 ? 0 : -22;
        }
        int main(void) {
            char *error = NULL;
            const char *argv[] = { "abi=v3" };
            HekiHost host = { .size = sizeof host, .check_extension = check, .enable_cap = enable };
            HekiPlugin *plugin = heki_plugin_new(&host, 1, argv, &error);
            if (!plugin) { fprintf(stderr, "%s\\n", error); return 1; }
            if (heki_plugin_enable_caps(plugin, &error) != 0) { fprintf(stderr, "%s\\n", error); return 1; }
            printf("abi %u exit %u\\n", heki_plugin_abi_version(),
                   heki_plugin_exit_number(plugin, HEKI_EXIT_DENIAL));
            heki_plugin_free(plugin);
            return 0;
        }
        """.write(to: source, atomically: true, encoding: .utf8)
        let binary = stage.appendingPathComponent("consumer").path
        let compile = try runCommand(["sh", "-c", "cc -std=c11 -Wall -Wextra -Werror -o \(binary) \(source.path) $(pkg-config --cflags --libs heki-plugin)"],
                                   environment: environment)
        XCTAssertEqual(compile.status, 0, compile.output)
        let output = try runCommand([binary], environment: ["LD_LIBRARY_PATH": root + "/lib"])
        XCTAssertEqual(output.status, 0, output.output)
        XCTAssertEqual(output.output, "abi 1 exit 41\n")
    }
}
