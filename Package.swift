// swift-tools-version: 6.1
// heki-plugin: the VMM side of Linux Heki, as a Swift shared library with a C ABI.
import PackageDescription

// Exports only heki_* (the version script) and carries the Swift runtime
// inside the .so, so a VMM on a machine without Swift can load it. These flags
// sit on a product-only C target: on the Swift target they would also reach
// the test runner.
let productLinkFlags: [String] = [
    "-static-stdlib",
    "-Xlinker", "--version-script=\(Context.packageDirectory)/Sources/HekiPluginLink/exports.map",
    "-Xlinker", "-Bsymbolic",
    "-Xlinker", "-soname=libHekiPlugin.so",
    "-Xlinker", "-z", "-Xlinker", "now",
    // The Swift runtime inside cannot be unmapped safely (its metadata
    // caches and thread-exit hooks point into the .so): dlclose keeps it.
    "-Xlinker", "-z", "-Xlinker", "nodelete",
]

let package = Package(
    name: "heki-plugin",
    products: [
        .library(name: "HekiPlugin", type: .dynamic, targets: ["HekiPlugin", "HekiPluginLink"]),
        .executable(name: "heki-demo", targets: ["heki-demo"]),
    ],
    targets: [
        .systemLibrary(
            name: "CGLib",
            pkgConfig: "glib-2.0",
            providers: [.apt(["libglib2.0-dev"])]
        ),
        // The public header (include/heki_plugin.h) as one module: its types
        // and constants belong to CHekiPlugin whoever includes it.
        .target(name: "CHekiPlugin"),
        // The kvm_run payload view and the few C facilities Swift cannot reach.
        .target(name: "CBridge", dependencies: ["CHekiPlugin", "CGLib"]),
        .target(
            name: "HekiPlugin",
            dependencies: ["CBridge", "CHekiPlugin", "CGLib"]
        ),
        .target(
            name: "HekiPluginLink",
            exclude: ["exports.map"],
            linkerSettings: [.unsafeFlags(productLinkFlags)]
        ),
        // The kernel side of Heki, modelled in C (fk_*): what the tests, the
        // demo, the benchmarks, the fuzzers and the QEMU emulator run against.
        .target(name: "HekiKernelModel"),
        // What every C host shares: the plugin loaded into a typed table. The
        // malloc interposer (alloc_counter.c) is linked only by the C programs
        // that count allocations, never into a Swift test runner.
        .target(
            name: "HekiHostSupport",
            dependencies: ["CHekiPlugin"],
            exclude: ["alloc_counter.c"],
            linkerSettings: [.linkedLibrary("dl")]
        ),
        // The fake VMM (fh_*): a VM over the kernel model whose vCPU threads
        // hand exits to the dlopen'ed plugin, as QEMU does.
        .target(
            name: "FakeHost",
            dependencies: ["CGLib", "CHekiPlugin", "HekiKernelModel", "HekiHostSupport"],
            linkerSettings: [.linkedLibrary("pthread")]
        ),
        .executableTarget(
            name: "heki-demo",
            dependencies: ["FakeHost"]
        ),
        // Swift Testing: the plugin's own types, one suite per type, no host.
        .testTarget(
            name: "HekiPluginTests",
            dependencies: ["HekiPlugin", "CHekiPlugin", "HekiKernelModel"]
        ),
        // XCTest: through the dlopen'ed .so and the public header only (the fake
        // VMM, the kernel model, C programs, the library's shape).
        .testTarget(
            name: "HekiHostTests",
            dependencies: ["CHekiPlugin", "FakeHost", "HekiKernelModel", "HekiHostSupport"],
            exclude: ["Fixtures"]
        ),
    ]
)

// libFuzzer targets (Fuzz/, `make fuzz`). Declared only when HEKI_FUZZ is set:
// their executables take main() from libFuzzer, which a plain `swift build`
// (no -sanitize=fuzzer) cannot link.
if Context.environment["HEKI_FUZZ"] != nil {
    // The fuzz host answers KVM's questions from the kernel model.
    package.targets.append(.target(name: "HekiFuzzSupport", dependencies: ["CGLib", "CHekiPlugin", "HekiKernelModel"],
                                   path: "Fuzz/Support"))
    for name in ["exit", "options", "api", "state"] {
        package.targets.append(.executableTarget(
            name: "heki-fuzz-\(name)", dependencies: ["HekiPlugin", "HekiFuzzSupport"], path: "Fuzz/\(name)"))
        package.products.append(.executable(name: "heki-fuzz-\(name)", targets: ["heki-fuzz-\(name)"]))
    }
}
