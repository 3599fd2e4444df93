import Foundation

/// The functions include/heki_plugin.h declares, read from the header
/// itself: what the library must export and the loader must resolve, so no
/// test keeps a list of its own that could drift from the contract.
enum HeaderFunctions {
    static let names: Set<String> = {
        let header = packageRoot.appendingPathComponent("include/heki_plugin.h").path
        guard let text = try? String(contentsOfFile: header, encoding: .utf8) else { return [] }
        // A declaration: the name, then "(", at the start of a line after its return type.
        let pattern = try! NSRegularExpression(pattern: #"^[A-Za-z][A-Za-z0-9_ \*]*?\b(heki_plugin_[a-z_]+)\("#,
                                               options: [.anchorsMatchLines])
        let range = NSRange(text.startIndex..., in: text)
        return Set(pattern.matches(in: text, range: range).compactMap { match in
            Range(match.range(at: 1), in: text).map { String(text[$0]) }
        })
    }()
}
