import CHekiPlugin
#if canImport(Glibc)
import Glibc
#endif

// The C ABI of include/heki_plugin.h. `@c @implementation` makes the compiler
// check each signature against the header, so the two cannot drift. Each
// function only converts between C and Swift; Plugin does the work.

@inline(__always)
private func withPlugin<T>(_ pointer: OpaquePointer?, _ otherwise: T, _ body: (Plugin) -> T) -> T {
    guard let pointer else { return otherwise }
    return Unmanaged<Plugin>.fromOpaque(UnsafeRawPointer(pointer))._withUnsafeGuaranteedRef(body)
}

/// A malloc'ed copy, for heki_plugin_free_string.
private func cString(_ string: String) -> UnsafeMutablePointer<CChar>? {
    string.withCString { strdup($0) }
}

/// 0 with *error NULL, or -1 with *error a copy of `failure`.
private func outcome(_ failure: String?, _ error: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    error?.pointee = failure.flatMap(cString)
    return failure == nil ? 0 : -1
}

/// argv as Swift strings, or why not (NULL entries, bad UTF-8).
private func arguments(_ argc: Int32, _ argv: UnsafePointer<UnsafePointer<CChar>?>?) -> Result<[String], OptionError> {
    guard argc >= 0, argc == 0 || argv != nil else { return .failure(OptionError(message: "argc is \(argc) with argv NULL")) }
    var list: [String] = []
    for index in 0..<Int(argc) {
        guard let argument = argv![index] else { return .failure(OptionError(message: "argv[\(index)] is NULL")) }
        guard let text = String(validatingCString: argument) else {
            return .failure(OptionError(message: "argv[\(index)] is not valid UTF-8"))
        }
        list.append(text)
    }
    return .success(list)
}

@c @implementation
public func heki_plugin_abi_version() -> UInt32 { HEKI_PLUGIN_ABI_VERSION }

@c @implementation
public func heki_plugin_new(
    _ host: UnsafePointer<HekiHost>?, _ argc: Int32,
    _ argv: UnsafePointer<UnsafePointer<CChar>?>?,
    _ error: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
) -> OpaquePointer? {
    func fail(_ message: String) -> OpaquePointer? {
        error?.pointee = cString(message)
        return nil
    }
    guard let host else { return fail("heki-plugin: host is NULL") }
    // Read `size` alone first: a smaller struct must not be read whole.
    let size = Int(UnsafeRawPointer(host).load(as: UInt32.self))
    guard size >= Int(HEKI_HOST_SIZE_1_0) else {
        return fail("heki-plugin: HekiHost.size is \(size) bytes; ABI version 1 needs at least \(HEKI_HOST_SIZE_1_0)")
    }
    // The fields the host's size covers whole; the rest stay zero (NULL).
    // Every field after `size` is a pointer: a size that ends inside one
    // (say 60) must not hand the plugin half a function pointer.
    var hostCopy = HekiHost()
    withUnsafeMutableBytes(of: &hostCopy) { copy in
        let whole = min(size, copy.count) & ~(MemoryLayout<UnsafeRawPointer>.alignment - 1)
        copy.copyMemory(from: UnsafeRawBufferPointer(start: host, count: whole))
    }
    let hostCanCheck = size >= Int(HEKI_HOST_SIZE_1_1) && hostCopy.check_extension != nil && hostCopy.enable_cap != nil
    let list: [String]
    switch arguments(argc, argv) {
    case let .success(strings): list = strings
    case let .failure(problem): return fail(problem.message)
    }
    let plugin: Plugin
    do throws(StartError) {
        let config: Configuration
        do throws(OptionError) { config = try Options.parse(list) } catch { throw StartError(error) }
        plugin = try Plugin(host: hostCopy, hostCanCheck: hostCanCheck, config: config)
    } catch {
        return fail(error.message)
    }
    error?.pointee = nil
    return OpaquePointer(Unmanaged.passRetained(plugin).toOpaque())
}

@c @implementation
public func heki_plugin_free(_ plugin: OpaquePointer?) {
    withPlugin(plugin, ()) { $0.free() }
}

@c @implementation
public func heki_plugin_free_string(_ string: UnsafeMutablePointer<CChar>?) {
    free(string)
}

@c @implementation
public func heki_plugin_exit_number(_ plugin: OpaquePointer?, _ kind: HekiExitKind) -> UInt32 {
    withPlugin(plugin, 0) { plugin in ExitKind(kind).flatMap { plugin.claim($0).exit } ?? 0 }
}

@c @implementation
public func heki_plugin_cap_number(_ plugin: OpaquePointer?, _ kind: HekiExitKind) -> UInt32 {
    withPlugin(plugin, 0) { plugin in
        guard let kind = ExitKind(kind) else { return 0 }
        return plugin.verifiedNumbers?.cap(kind) ?? 0
    }
}

@c @implementation
public func heki_plugin_cap_mask(_ plugin: OpaquePointer?, _ kind: HekiExitKind) -> UInt64 {
    withPlugin(plugin, 0) { plugin in
        guard let kind = ExitKind(kind), plugin.verifiedNumbers != nil else { return 0 }
        return plugin.config.capMask(kind).rawValue
    }
}

@c @implementation
public func heki_plugin_enable_caps(_ plugin: OpaquePointer?, _ error: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    outcome(plugin == nil ? "heki-plugin: plugin is NULL" : withPlugin(plugin, nil) { $0.enableCaps() }, error)
}

@c @implementation
public func heki_plugin_start(_ plugin: OpaquePointer?) {
    withPlugin(plugin, ()) { $0.start() }
}

@c @implementation
public func heki_plugin_set_policy(
    _ plugin: OpaquePointer?, _ argc: Int32,
    _ argv: UnsafePointer<UnsafePointer<CChar>?>?,
    _ error: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
) -> Int32 {
    guard let plugin else { return outcome("heki-plugin: plugin is NULL", error) }
    switch arguments(argc, argv) {
    case let .success(list): return outcome(withPlugin(plugin, nil) { $0.setPolicy(list) }, error)
    case let .failure(problem): return outcome(problem.message, error)
    }
}

@c @implementation
public func heki_plugin_flush(_ plugin: OpaquePointer?) {
    withPlugin(plugin, ()) { $0.flush() }
}

@c @implementation
public func heki_plugin_cap_result(_ plugin: OpaquePointer?, _ kind: HekiExitKind, _ kvmResult: Int32) -> Int32 {
    withPlugin(plugin, -1) { plugin in
        guard let kind = ExitKind(kind) else { return -1 }
        return plugin.legacyCapabilityResult(kind, kvmResult: kvmResult)
    }
}

@c @implementation
public func heki_plugin_handle_exit(_ plugin: OpaquePointer?, _ vcpuIndex: UInt32, _ run: OpaquePointer?) -> HekiVerdict {
    guard let run else { return Verdict.notHeki.cValue }
    return withPlugin(plugin, Verdict.notHeki.cValue) { Plugin.handleExit($0, vcpu: vcpuIndex, run: run) }
}

@c @implementation
public func heki_plugin_reset(_ plugin: OpaquePointer?, _ cause: HekiResetCause) -> HekiVerdict {
    withPlugin(plugin, Verdict.reset.cValue) { $0.reset(cause: ResetCause(cause)).cValue }
}

@c @implementation
public func heki_plugin_query(_ plugin: OpaquePointer?) -> UnsafeMutablePointer<CChar>? {
    withPlugin(plugin, nil) { $0.queryJSON() }
}

// ---- migration and snapshots (heki-plugin 1.2) ----

@c @implementation
public func heki_plugin_migration_status(_ plugin: OpaquePointer?) -> HekiMigrationStatus {
    withPlugin(plugin, MigrationStatus.free.cValue) { $0.migrationStatus().cValue }
}

@c @implementation
public func heki_plugin_save_state(
    _ plugin: OpaquePointer?, _ data: UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>?,
    _ size: UnsafeMutablePointer<UInt32>?, _ error: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
) -> Int32 {
    data?.pointee = nil
    size?.pointee = 0
    guard let plugin, let data, let size else {
        return outcome("heki-plugin: " + (plugin == nil ? "plugin" : "data or size") + " is NULL", error)
    }
    let saved = withPlugin(plugin, .failure(StateError(message: ""))) { $0.saveState() }
    switch saved {
    case let .success(bytes):
        guard let copy = malloc(max(bytes.count, 1))?.assumingMemoryBound(to: UInt8.self) else {
            return outcome("heki-plugin: state: out of memory", error)
        }
        bytes.withUnsafeBufferPointer { copy.update(from: $0.baseAddress!, count: bytes.count) }
        data.pointee = copy
        size.pointee = UInt32(bytes.count)
        return outcome(nil, error)
    case let .failure(problem):
        return outcome(problem.message, error)
    }
}

@c @implementation
public func heki_plugin_free_state(_ data: UnsafeMutablePointer<UInt8>?) {
    free(data)
}

@c @implementation
public func heki_plugin_restore_state(
    _ plugin: OpaquePointer?, _ data: UnsafePointer<UInt8>?, _ size: UInt32,
    _ error: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
) -> Int32 {
    guard let plugin else { return outcome("heki-plugin: plugin is NULL", error) }
    guard data != nil || size == 0 else { return outcome("heki-plugin: data is NULL with size \(size)", error) }
    let bytes = UnsafeRawBufferPointer(start: data, count: Int(size))
    return outcome(withPlugin(plugin, nil) { $0.restoreState(bytes)?.message }, error)
}
