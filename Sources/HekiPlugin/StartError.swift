/// Why heki_plugin_new made no plugin: a bad option (an `OptionError`,
/// which names the key and the values it accepts), a host that cannot have
/// what the options ask, or a resource the plugin could not get (the audit
/// file, the eventfd). The message is what the host gets in *error.
struct StartError: Error, Equatable {
    let message: String

    init(_ option: OptionError) { message = option.message }
    /// About what `key` asks: "heki-plugin: KEY: DETAIL".
    init(_ key: String, _ detail: String) { message = "heki-plugin: \(key): \(detail)" }
    /// A resource not named by any option: "heki-plugin: DETAIL".
    init(resource detail: String) { message = "heki-plugin: \(detail)" }
}
