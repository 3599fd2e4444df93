import Foundation

/// The package root: Tests/HekiHostTests/Support/<this file> -> ../../..
let packageRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// A C host of Tests/CProgram, compiled the way a VMM would build one: the
/// public header, HekiHostSupport's loader and the kernel model (whose
/// KVM answers the host gives), optionally the allocation counter (linked
/// with -rdynamic, so the dlopen'ed library allocates through it).
enum CHostProgram {
    static func compile(_ name: String, into binary: String, countingAllocations: Bool = false)
        throws -> (status: Int32, output: String)
    {
        let source = { (path: String) in packageRoot.appendingPathComponent(path).path }
        var sources = [source("Tests/CProgram/\(name).c"), source("Sources/HekiHostSupport/plugin_loader.c"),
                       source("Sources/HekiKernelModel/kernel_model.c")]
        var flags = ["-std=c11", "-Wall", "-Wextra", "-Werror",
                     "-I", source("Sources/HekiHostSupport/include"), "-I", source("Sources/HekiKernelModel/include")]
        if countingAllocations {
            sources.append(source("Sources/HekiHostSupport/alloc_counter.c"))
            flags.append("-rdynamic")
        }
        let quoted = (flags + sources + ["-o", binary]).map { "'\($0)'" }.joined(separator: " ")
        return try runCommand(["sh", "-c", "cc \(quoted) $(pkg-config --cflags --libs glib-2.0) -ldl"])
    }
}
