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
        // The kvm_run payload view and the few C facilities Swift cannot reach.
        .target(name: "CBridge", dependencies: ["CGLib"]),
        .target(
            name: "HekiPlugin",
            dependencies: ["CBridge", "CGLib"]
        ),
        .target(
            name: "HekiPluginLink",
            exclude: ["exports.map"],
            linkerSettings: [.unsafeFlags(productLinkFlags)]
        ),
        // The fake host: the patched kernel's side and a VMM that dlopens the .so.
        .target(
            name: "FakeHost",
            dependencies: ["CGLib"],
            path: "Tests/FakeHost",
            linkerSettings: [.linkedLibrary("dl"), .linkedLibrary("pthread")]
        ),
        .executableTarget(
            name: "heki-demo",
            dependencies: ["FakeHost"],
            path: "Tests/Demo"
        ),
        .testTarget(
            name: "HekiPluginTests",
            dependencies: ["HekiPlugin", "FakeHost"]
        ),
        // Its own module: it uses plugin types that carry C types, which in
        // HekiPluginTests would hide the header's constants from the tests
        // that see the header through FakeHost.
        .testTarget(
            name: "EventWriterTests",
            dependencies: ["HekiPlugin"]
        ),
    ]
)

// libFuzzer targets (Fuzz/, `make fuzz`). Declared only when HEKI_FUZZ is set:
// their executables take main() from libFuzzer, which a plain `swift build`
// (no -sanitize=fuzzer) cannot link.
if Context.environment["HEKI_FUZZ"] != nil {
    // The fuzz host answers KVM's questions from the kernel model (FakeHost).
    package.targets.append(.target(name: "HekiFuzzSupport", dependencies: ["CGLib", "FakeHost"], path: "Fuzz/Support"))
    for name in ["exit", "options", "api"] {
        package.targets.append(.executableTarget(
            name: "heki-fuzz-\(name)", dependencies: ["HekiPlugin", "HekiFuzzSupport"], path: "Fuzz/\(name)"))
        package.products.append(.executable(name: "heki-fuzz-\(name)", targets: ["heki-fuzz-\(name)"]))
    }
}
