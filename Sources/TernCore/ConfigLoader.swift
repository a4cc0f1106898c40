import Yams

/// Loads and validates a config file's text. Every error names the file, the line and the key.
public enum ConfigLoader {
    /// The keys a pool accepts (ConfigSchema.pool).
    public static let poolKeys: [String] = ConfigSchema.pool.names()

    /// The keys of a `warmup:` mapping: the old pool's keys, plus the backfill settings.
    public static let warmupKeys: [String] = ConfigSchema.oldPool.names() + ConfigSchema.warmup.names()

    public static func load(text: String, file: String) throws(ConfigError) -> TernConfig {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let YamlError.duplicatedKeysInMapping(duplicates, context) {
            throw duplicateKeyError(duplicates, mapping: context.mark, text: text, file: file)
        } catch let error as YamlError {
            throw yamlError(error, file: file)
        } catch {
            throw ConfigError(file: file, line: 1, message: "\(error)")
        }
        guard let root else { throw ConfigError(file: file, line: 1, message: "the file has no pools") }
        guard case let .mapping(pools) = root else {
            throw ConfigError(file: file, line: line(root), message: "the top level must be a mapping of pool names to pools")
        }
        var seen: [String: Int] = [:]
        var result: [PoolConfig] = []
        for (keyNode, valueNode) in pools {
            let name = try scalar(keyNode, file: file, what: "pool name")
            if let first = seen[name] {
                throw ConfigError(file: file, line: line(keyNode), message: "duplicate pool '\(name)' (first defined on line \(first))")
            }
            seen[name] = line(keyNode)
            result.append(try pool(name: name, keyNode: keyNode, node: valueNode, file: file))
        }
        if result.isEmpty { throw ConfigError(file: file, line: line(root), message: "the file has no pools") }
        var listens: [String: String] = [:]
        for pool in result {
            let key = pool.listen.description
            if let other = listens[key] {
                throw ConfigError(file: file, line: pool.line, message: "pool '\(pool.name)': listen address \(key) is already used by pool '\(other)'")
            }
            listens[key] = pool.name
        }
        return TernConfig(path: file, pools: result)
    }

    static func yamlError(_ error: YamlError, file: String) -> ConfigError {
        switch error {
        case let .scanner(_, problem, mark, _), let .parser(_, problem, mark, _), let .composer(_, problem, mark, _):
            return ConfigError(file: file, line: mark.line, message: "YAML syntax error: \(problem)")
        default:
            return ConfigError(file: file, line: 1, message: "YAML error: \(error)")
        }
    }

    /// Yams refuses duplicate keys itself and names only the mapping; find the second
    /// occurrence of the key at the mapping's indentation to report its own line.
    static func duplicateKeyError(_ duplicates: [String], mapping: Mark, text: String, file: String) -> ConfigError {
        let key = duplicates.sorted().first ?? "?"
        let indent = String(repeating: " ", count: max(0, mapping.column - 1))
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        var seen = 0
        var pool: String?
        for (number, line) in lines.enumerated() where number + 1 >= mapping.line {
            if indent.isEmpty || line.hasPrefix(indent) {
                let rest = line.dropFirst(indent.count)
                if rest.hasPrefix(key + ":") || rest.hasPrefix("\"\(key)\":") {
                    seen += 1
                    if seen == 2 {
                        if !indent.isEmpty {
                            // The pool is the nearest line above the mapping with no indentation.
                            pool = lines[..<(mapping.line - 1)].last { !$0.hasPrefix(" ") && $0.hasSuffix(":") }.map { String($0.dropLast()) }
                        }
                        let subject = pool.map { "pool '\($0)': duplicate key '\(key)'" } ?? "duplicate pool '\(key)'"
                        return ConfigError(file: file, line: number + 1, message: subject)
                    }
                }
            }
        }
        return ConfigError(file: file, line: mapping.line, message: "duplicate key '\(key)'")
    }

    static func line(_ node: Node) -> Int { node.mark?.line ?? 0 }

    static func scalar(_ node: Node, file: String, what: String) throws(ConfigError) -> String {
        guard case let .scalar(value) = node else {
            throw ConfigError(file: file, line: line(node), message: "\(what) must be a single value")
        }
        return value.string
    }

    static func pool(name: String, keyNode: Node, node: Node, file: String, warmupOf parent: PoolConfig? = nil) throws(ConfigError) -> PoolConfig {
        guard case let .mapping(mapping) = node else {
            throw ConfigError(file: file, line: line(node), message: "pool '\(name)' must be a mapping of keys")
        }
        let allowed = parent == nil ? poolKeys : warmupKeys
        var values: [String: Node] = [:]
        for (key, value) in mapping {
            let keyName = try scalar(key, file: file, what: "a key")
            guard allowed.contains(keyName) else {
                let hint = parent != nil && (keyName == "listen" || keyName == "redis" || keyName == "protocol") ? " (the old pool is reached only through the new one and speaks its protocol)" : ""
                throw ConfigError(file: file, line: line(key), message: "pool '\(name)': unknown key '\(keyName)'\(hint)")
            }
            if values[keyName] != nil {
                throw ConfigError(file: file, line: line(key), message: "pool '\(name)': duplicate key '\(keyName)'")
            }
            values[keyName] = value
        }
        let context = PoolContext(pool: name, file: file, values: values, isWarmup: parent != nil)
        var pool = PoolConfig(name: name, line: line(keyNode), listen: parent?.listen ?? .tcp(host: "", port: 0))
        if let parent {
            // What the old pool takes from the new pool, key by key (`ConfigKey.inherit`).
            for key in ConfigSchema.pool { key.inherit?(&pool, parent) }
        }
        try parse(&pool, keys: parent == nil ? ConfigSchema.pool : ConfigSchema.oldPool, values: values, context: { KeyContext(pool: context, key: $0) }) { key in
            ConfigError(file: file, line: line(keyNode), message: "pool '\(name)': missing key '\(key)'")
        }
        return pool
    }

    /// Parses a mapping's `values` into `target` in table order (each key's `parse` when it is
    /// set, `missing` when a required key is not), then runs every key's `finish`.
    static func parse<Target>(_ target: inout Target, keys: [ConfigKey<Target>], values: [String: Node], context: (String) -> KeyContext,
                              missing: (String) -> ConfigError = { _ in preconditionFailure("a table with a required key names its error") }) throws(ConfigError) {
        for key in keys {
            if let node = values[key.name] {
                try key.parse?(&target, node, context(key.name))
            } else if key.required {
                throw missing(key.name)
            }
        }
        for key in keys {
            try key.finish?(&target, values[key.name], context(key.name))
        }
    }

    static func parseWarmup(_ node: Node, for pool: PoolConfig, file: String) throws(ConfigError) -> WarmupConfig {
        let name = pool.name + ".warmup"
        let old = try self.pool(name: name, keyNode: node, node: node, file: file, warmupOf: pool)
        var warmup = WarmupConfig(old: old)
        guard case let .mapping(mapping) = node else { return warmup }
        var values: [String: Node] = [:]
        for (key, value) in mapping { values[key.string ?? ""] = value }
        let context = PoolContext(pool: name, file: file, values: values)
        try parse(&warmup, keys: ConfigSchema.warmup, values: values, context: { KeyContext(pool: context, key: $0) })
        return warmup
    }

    /// `users:`: a list of mappings, each parsed by the `ConfigSchema.user` table; here, what
    /// concerns the list as a whole: each entry is a mapping of known keys, no name twice.
    static func parseUsers(_ node: Node, protocolKind: PoolProtocol, context: PoolContext) throws(ConfigError) -> [UserConfig] {
        guard case let .sequence(list) = node else { throw context.error(node, key: "users", "must be a list of users") }
        var users: [UserConfig] = []
        func fail(_ node: Node, _ message: String) -> ConfigError {
            context.error(node, key: "users", message)
        }
        let known = ConfigSchema.user.names()
        for entry in list {
            guard case let .mapping(mapping) = entry else { throw fail(entry, "each user must be a mapping with name, password_sha256, commands and keys") }
            var values: [String: Node] = [:]
            for (key, value) in mapping {
                let keyName = try scalar(key, file: context.file, what: "a key")
                guard known.contains(keyName) else {
                    throw fail(key, "unknown key '\(keyName)' (\(known.joined(separator: ", ")))")
                }
                values[keyName] = value
            }
            // The user's keys report errors as the `users` key's, and know the pool's protocol.
            var userContext = context
            userContext.values = values
            userContext.protocolKind = protocolKind
            let name = values["name"]?.string ?? ""
            // A name seen before is a duplicate whatever the entry's other keys say (that name
            // was valid, the first user having parsed).
            if let nameNode = values["name"], let first = users.first(where: { $0.name == name }) {
                throw fail(nameNode, "duplicate user '\(name)' (first defined on line \(first.line))")
            }
            var user = UserConfig(name: "", passwordSHA256: [], commands: [], keys: [], line: line(entry))
            try parse(&user, keys: ConfigSchema.user, values: values, context: { _ in KeyContext(pool: userContext, key: "users") }) { missing in
                missing == "name" ? fail(entry, "a user needs a 'name'") : fail(entry, "user '\(name)' needs a '\(missing)'")
            }
            users.append(user)
        }
        return users
    }

    struct PoolContext {
        var pool: String
        var file: String
        var values: [String: Node]
        /// A warm-up's old pool.
        var isWarmup = false
        /// The pool's protocol, for the keys of a user (`ConfigSchema.user`); nil elsewhere.
        var protocolKind: PoolProtocol?

        func error(_ node: Node, key: String, _ message: String) -> ConfigError { error(line: ConfigLoader.line(node), key: key, message) }
        func error(line: Int, key: String, _ message: String) -> ConfigError {
            ConfigError(file: file, line: line, message: "pool '\(pool)': key '\(key)': \(message)")
        }
        func string(_ node: Node, key: String) throws(ConfigError) -> String {
            guard case let .scalar(value) = node else { throw error(node, key: key, "must be a single value") }
            return value.string
        }
        /// A list of single values, each with its line.
        func list(_ node: Node, key: String) throws(ConfigError) -> [(value: String, line: Int)] {
            guard case let .sequence(items) = node else { throw error(node, key: key, "must be a list, like [a, b]") }
            var out: [(value: String, line: Int)] = []
            for item in items { out.append((try string(item, key: key), ConfigLoader.line(item))) }
            return out
        }
        func integer(_ node: Node, key: String, range: ClosedRange<Int>) throws(ConfigError) -> Int {
            let text = try string(node, key: key)
            guard let value = Int(text) else { throw error(node, key: key, "'\(text)' is not a whole number") }
            guard range.contains(value) else { throw error(node, key: key, "\(value) is out of range \(range.lowerBound)...\(range.upperBound)") }
            return value
        }
        func boolean(_ node: Node, key: String) throws(ConfigError) -> Bool {
            let text = try string(node, key: key)
            switch text {
            case "true", "True", "TRUE", "yes", "on": return true
            case "false", "False", "FALSE", "no", "off": return false
            default: throw error(node, key: key, "'\(text)' is not true or false")
            }
        }
    }

    /// One key of a pool's mapping: its errors name the pool and the key (a sub-key's name its
    /// parent key: `key 'tls': unknown key …`).
    struct KeyContext {
        var pool: PoolContext
        var key: String

        /// The pool's values, by key.
        var values: [String: Node] { pool.values }
        func error(_ node: Node, _ message: String) -> ConfigError { pool.error(node, key: key, message) }
        func error(line: Int, _ message: String) -> ConfigError { pool.error(line: line, key: key, message) }
        func string(_ node: Node) throws(ConfigError) -> String { try pool.string(node, key: key) }
        func list(_ node: Node) throws(ConfigError) -> [(value: String, line: Int)] { try pool.list(node, key: key) }
        func integer(_ node: Node, _ range: ClosedRange<Int>) throws(ConfigError) -> Int { try pool.integer(node, key: key, range: range) }
        func boolean(_ node: Node) throws(ConfigError) -> Bool { try pool.boolean(node, key: key) }
        /// One of `Value`'s raw values; `unknown` words the error for any other text.
        func choice<Value: RawRepresentable<String>>(_ node: Node, unknown: (String) -> String) throws(ConfigError) -> Value {
            let text = try string(node)
            guard let value = Value(rawValue: text) else { throw error(node, unknown(text)) }
            return value
        }
    }

    /// `host:port`, `[v6]:port`, or `/path/to.sock [mode]`.
    static func parseListen(_ text: String, context: PoolContext, node: Node) throws(ConfigError) -> ListenAddress {
        let parts = text.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard let first = parts.first else { throw context.error(node, key: "listen", "is empty") }
        if first.hasPrefix("/") {
            var permissions: UInt32?
            if parts.count == 2 {
                guard let mode = UInt32(parts[1], radix: 8), mode <= 0o777 else {
                    throw context.error(node, key: "listen", "'\(parts[1])' is not an octal permission like 0666")
                }
                permissions = mode
            } else if parts.count > 2 {
                throw context.error(node, key: "listen", "expected '/path/to.sock [permissions]'")
            }
            return .unix(path: first, permissions: permissions)
        }
        guard parts.count == 1 else { throw context.error(node, key: "listen", "expected 'host:port'") }
        let (host, port) = try splitHostPort(first) { context.error(node, key: "listen", $0) }
        return .tcp(host: host, port: port)
    }

    static func splitHostPort(_ text: String, error: (String) -> ConfigError) throws(ConfigError) -> (String, Int) {
        var host: Substring
        var portText: Substring
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw error("expected '[address]:port' in '\(text)'") }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw error("expected 'host:port' in '\(text)'") }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty else { throw error("missing host in '\(text)'") }
        // A host name (letters, digits, '.', '-', '_') or an IPv6 literal (hex digits, ':', '.',
        // then an optional '%zone'): anything else could never resolve, and would not render back.
        func isNameByte(_ byte: UInt8) -> Bool {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "."), UInt8(ascii: "-"), UInt8(ascii: "_"): return true
            default: return false
            }
        }
        func isIPv6Byte(_ byte: UInt8) -> Bool {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "f"), UInt8(ascii: "A")...UInt8(ascii: "F"),
                 UInt8(ascii: ":"), UInt8(ascii: "."): return true
            default: return false
            }
        }
        let valid: Bool
        if host.contains(":") {
            let parts = host.split(separator: "%", maxSplits: 1, omittingEmptySubsequences: false)
            valid = parts[0].utf8.allSatisfy(isIPv6Byte) && (parts.count == 1 || (!parts[1].isEmpty && parts[1].utf8.allSatisfy(isNameByte)))
        } else {
            valid = host.utf8.allSatisfy(isNameByte)
        }
        guard valid, host.utf8.count <= 253 else { throw error("bad host '\(host.prefix(64))' in '\(text.prefix(80))'") }
        guard let port = Int(portText), (1...65535).contains(port) else { throw error("bad port '\(portText)' in '\(text)'") }
        return (String(host), port)
    }

    /// A path in a TLS setting: absolute, or relative to the config file's directory.
    static func tlsPath(_ node: Node, context key: KeyContext) throws(ConfigError) -> String {
        let text = try key.string(node)
        guard !text.isEmpty else { throw key.error(node, "is an empty path") }
        if text.hasPrefix("/") { return text }
        guard let slash = key.pool.file.lastIndex(of: "/") else { return text }
        return String(key.pool.file[...slash]) + text
    }

    /// The values of a sub-mapping (`tls:`, `server_tls:`, `sentinel:`), its keys checked
    /// against `table`.
    static func subKeys<Target>(_ mapping: Node.Mapping, _ table: [ConfigKey<Target>], context key: KeyContext) throws(ConfigError) -> [String: Node] {
        let known = table.names()
        var values: [String: Node] = [:]
        for (keyNode, valueNode) in mapping {
            let name = try key.string(keyNode)
            guard known.contains(name) else { throw key.error(keyNode, "unknown key '\(name)' (\(known.joined(separator: ", ")))") }
            values[name] = valueNode
        }
        return values
    }

    /// `tls: {cert, key, ca, client_auth: none|optional|required, min_version, user_from_certificate: cn}`.
    static func parseClientTLS(_ node: Node, context key: KeyContext) throws(ConfigError) -> ClientTLSConfig {
        guard case let .mapping(mapping) = node else { throw key.error(node, "must be a mapping with cert and key (and ca, client_auth, min_version)") }
        let values = try subKeys(mapping, ConfigSchema.tls, context: key)
        let missing = key.error(node, "needs both 'cert' and 'key'")
        // Checked before any path is read, as the message names both.
        guard ConfigSchema.tls.allSatisfy({ !$0.required || values[$0.name] != nil }) else { throw missing }
        var tls = ClientTLSConfig(cert: "", key: "")
        try parse(&tls, keys: ConfigSchema.tls, values: values, context: { _ in key }) { _ in missing }
        if tls.clientAuth != .none, tls.ca == nil { throw key.error(node, "client_auth '\(tls.clientAuth.rawValue)' needs 'ca' (the CA client certificates are verified against)") }
        return tls
    }

    /// `server_tls: {ca, cert, key, server_name, verify, min_version}`, or `true`.
    static func parseServerTLS(_ node: Node, context key: KeyContext) throws(ConfigError) -> ServerTLSConfig {
        var tls = ServerTLSConfig()
        if case let .scalar(scalar) = node, ["true", "yes", "on"].contains(scalar.string) { return tls }
        guard case let .mapping(mapping) = node else {
            throw key.error(node, "must be a mapping (\(ConfigSchema.serverTLS.names().joined(separator: ", "))) or true")
        }
        try parse(&tls, keys: ConfigSchema.serverTLS, values: try subKeys(mapping, ConfigSchema.serverTLS, context: key), context: { _ in key })
        if (tls.cert == nil) != (tls.key == nil) { throw key.error(node, "needs both 'cert' and 'key', or neither") }
        return tls
    }

    /// `sentinel: {addresses: [host:port, …], password: …, tls: …}`.
    static func parseSentinel(_ node: Node, context key: KeyContext) throws(ConfigError) -> SentinelConfig {
        guard case let .mapping(mapping) = node else { throw key.error(node, "must be a mapping with 'addresses' (and 'password')") }
        var sentinel = SentinelConfig(addresses: [])
        let missing = key.error(node, "needs at least one address in 'addresses'")
        try parse(&sentinel, keys: ConfigSchema.sentinel, values: try subKeys(mapping, ConfigSchema.sentinel, context: key), context: { _ in key }) { _ in missing }
        guard !sentinel.addresses.isEmpty else { throw missing }
        return sentinel
    }

    /// With `sentinel:`, servers are master group names: `<name>:<weight>`. The name is the
    /// server's name (ketama points, stats), so placement does not move on a failover.
    static func parseSentinelMasters(_ node: Node, context: PoolContext) throws(ConfigError) -> [ServerConfig] {
        try serverList(node, context: context, named: "master name", atLeastOne: "master name") { text, line, fail throws(ConfigError) in
            guard let colon = text.lastIndex(of: ":"), let weight = Int(text[text.index(after: colon)...]) else {
                throw fail("expected '<master name>:<weight>' with sentinel, got '\(text)'")
            }
            guard weight > 0 else { throw fail("weight must be at least 1 in '\(text)'") }
            let name = String(text[..<colon])
            guard !name.isEmpty, name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: ":") }) else {
                throw fail("bad master name '\(name)' (printable, no spaces or ':')")
            }
            return ServerConfig(address: .tcp(host: name, port: 0), weight: weight, name: name, hasExplicitName: true, line: line)
        }
    }

    static func parseServers(_ node: Node, context: PoolContext) throws(ConfigError) -> [ServerConfig] {
        try serverList(node, context: context, named: "server name", atLeastOne: "server") { text, line, fail throws(ConfigError) in
            let parts = text.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard parts.count == 1 || parts.count == 2 else { throw fail("expected 'host:port:weight [name]', got '\(text)'") }
            guard let weightColon = parts[0].lastIndex(of: ":") else { throw fail("missing weight in '\(parts[0])' (expected 'host:port:weight')") }
            let addressText = String(parts[0][..<weightColon])
            let weightText = parts[0][parts[0].index(after: weightColon)...]
            guard let weight = Int(weightText) else { throw fail("bad weight '\(weightText)' in '\(parts[0])'") }
            guard weight > 0 else { throw fail("weight must be at least 1 in '\(parts[0])'") }
            let address: ServerAddress
            let implicitName: String
            if addressText.hasPrefix("/") {
                address = .unix(path: addressText)
                implicitName = addressText + ":"
            } else {
                let (host, port) = try splitHostPort(addressText, error: fail)
                address = .tcp(host: host, port: port)
                implicitName = port == 11211 ? host : "\(host):\(port)"
            }
            return ServerConfig(address: address, weight: weight, name: parts.count == 2 ? parts[1] : implicitName, hasExplicitName: parts.count == 2, line: line)
        }
    }

    /// A `servers:` list: each item's text parsed by `item` (with its line and an error naming
    /// it), no server name twice, at least one server.
    private static func serverList(_ node: Node, context: PoolContext, named noun: String, atLeastOne: String,
                                   _ item: (String, Int, (String) -> ConfigError) throws(ConfigError) -> ServerConfig) throws(ConfigError) -> [ServerConfig] {
        guard case let .sequence(list) = node else { throw context.error(node, key: "servers", "must be a list") }
        var servers: [ServerConfig] = []
        var names: [String: Int] = [:]
        for entry in list {
            let text = try context.string(entry, key: "servers")
            let fail = { (message: String) in context.error(entry, key: "servers", message) }
            let server = try item(text, ConfigLoader.line(entry), fail)
            if let first = names[server.name] { throw fail("duplicate \(noun) '\(server.name)' (first on line \(first))") }
            names[server.name] = ConfigLoader.line(entry)
            servers.append(server)
        }
        guard !servers.isEmpty else { throw context.error(node, key: "servers", "needs at least one \(atLeastOne)") }
        return servers
    }

    /// The `slots:` mapping (server name → "a-b,c,d-e"), or the default split in config order.
    static func parseSlots(_ node: Node?, servers: [ServerConfig], context: PoolContext) throws(ConfigError) -> [Int32] {
        var table = [Int32](repeating: -1, count: hashSlotCount)
        guard let node else {
            for (server, range) in Placement.defaultSlotRanges(serverCount: servers.count).enumerated() {
                for slot in range { table[slot] = Int32(server) }
            }
            return table
        }
        guard case let .mapping(mapping) = node else { throw context.error(node, key: "slots", "must map server names to slot ranges") }
        for (keyNode, valueNode) in mapping {
            let name = try context.string(keyNode, key: "slots")
            guard let server = servers.firstIndex(where: { $0.name == name }) else {
                throw context.error(keyNode, key: "slots", "no server named '\(name)' in 'servers'")
            }
            let text = try context.string(valueNode, key: "slots")
            for part in text.split(separator: ",") {
                let bounds = part.trimmingSpaces.split(separator: "-", omittingEmptySubsequences: false)
                guard (1...2).contains(bounds.count), let low = Int(bounds[0].trimmingSpaces), let high = Int(bounds.last!.trimmingSpaces),
                      low <= high, low >= 0, high < hashSlotCount else {
                    throw context.error(valueNode, key: "slots", "bad slot range '\(part)' (expected like 0-5460)")
                }
                for slot in low...high {
                    if table[slot] >= 0 {
                        throw context.error(valueNode, key: "slots", "slot \(slot) is assigned twice")
                    }
                    table[slot] = Int32(server)
                }
            }
        }
        if let missing = table.firstIndex(of: -1) {
            throw context.error(node, key: "slots", "slot \(missing) is not assigned to any server (all 16384 must be)")
        }
        return table
    }
}

extension Substring {
    var trimmingSpaces: Substring {
        var result = self
        while result.first == " " { result = result.dropFirst() }
        while result.last == " " { result = result.dropLast() }
        return result
    }
}
