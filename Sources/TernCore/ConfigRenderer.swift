/// Writes a loaded config back as YAML (for the admin endpoint's `/config`), with secrets
/// replaced by `********`. Every value is the effective one, defaults included.
public enum ConfigRenderer {
    public static func yaml(_ config: TernConfig, maskSecrets: Bool = true) -> String {
        var out = "# active configuration (from \(config.path))\n"
        for pool in config.pools {
            var body = ConfigOutput(indent: "  ", maskSecrets: maskSecrets)
            body.keys(pool, ConfigSchema.pool)
            out += "\(quoted(pool.name)):\n" + body.text
        }
        return out
    }

    /// `["a", "b"]`.
    static func list(_ items: [String]) -> String { "[" + items.map(quoted).joined(separator: ", ") + "]" }

    static func listenText(_ listen: ListenAddress) -> String {
        // ListenAddress.description already writes "[v6]:port"; a socket adds its mode.
        if case let .unix(path, permissions?) = listen { return "\(path) 0\(String(permissions, radix: 8))" }
        return listen.description
    }

    static func ranges(of server: Int32, in table: [Int32]) -> String {
        var parts: [String] = []
        var start = -1
        for slot in 0...table.count {
            let matches = slot < table.count && table[slot] == server
            if matches, start < 0 { start = slot }
            if !matches, start >= 0 {
                parts.append(start == slot - 1 ? "\(start)" : "\(start)-\(slot - 1)")
                start = -1
            }
        }
        return parts.joined(separator: ",")
    }

    static func quoted(_ text: String) -> String {
        var out = "\""
        for character in text {
            switch character {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            default: out.append(character)
            }
        }
        return out + "\""
    }
}
