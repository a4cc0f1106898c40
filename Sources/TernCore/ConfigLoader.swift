import Yams

/// Loads and validates a config file's text. Every error names the file, the line and the key.
public enum ConfigLoader {
    /// The keys a pool accepts, twemproxy's first, then Tern's.
    public static let poolKeys: [String] = [
        "listen", "hash", "hash_tag", "distribution", "timeout", "backlog", "preconnect",
        "redis", "redis_auth", "redis_db", "server_connections", "auto_eject_hosts",
        "server_retry_timeout", "server_failure_limit", "tcpkeepalive", "client_connections",
        "servers",
        // Tern's own keys
        "protocol", "max_item_size", "max_bulk_length", "strict_keys", "client_output_limit",
        "client_query_limit", "dedicated_connections", "max_subscriptions", "announce", "client_partial_timeout", "client_idle_timeout", "slots", "warmup",
        "slowlog_log_slower_than", "slowlog_max_len", "hot_keys", "read_from", "sentinel", "users", "disabled_commands",
        "tls", "server_tls",
    ]

    /// The keys of a `warmup:` mapping: a pool's keys except `listen` and `warmup`, plus the
    /// backfill settings.
    public static let warmupKeys: [String] = poolKeys.filter {
        !["listen", "warmup", "protocol", "redis", "strict_keys", "max_item_size", "max_bulk_length",
          "client_output_limit", "client_query_limit", "dedicated_connections", "max_subscriptions", "announce", "client_partial_timeout", "client_idle_timeout", "client_connections", "backlog",
          "slowlog_log_slower_than", "slowlog_max_len", "hot_keys", "read_from", "sentinel", "users", "disabled_commands", "tls"].contains($0)
    }
        + ["backfill", "max_backfill_ttl", "default_backfill_ttl", "deletes"]

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
        let context = PoolContext(pool: name, file: file, values: values)
        var pool: PoolConfig
        if let parent {
            pool = PoolConfig(name: name, line: line(keyNode), listen: parent.listen)
            pool.protocolKind = parent.protocolKind
            pool.maxItemSize = parent.maxItemSize
            pool.maxBulkLength = parent.maxBulkLength
            pool.strictKeys = parent.strictKeys
            pool.clientQueryLimit = parent.clientQueryLimit
            // A hanging old pool must not hang the new pool's reads: its `timeout` unless the
            // warm-up sets one of its own.
            pool.timeoutMilliseconds = parent.timeoutMilliseconds
        } else {
            guard let listenNode = values["listen"] else {
                throw ConfigError(file: file, line: line(keyNode), message: "pool '\(name)': missing key 'listen'")
            }
            pool = PoolConfig(name: name, line: line(keyNode), listen: try parseListen(context.string(listenNode, key: "listen"), context: context, node: listenNode))
        }
        if let node = values["hash"] {
            let text = try context.string(node, key: "hash")
            guard let hash = HashFunction(rawValue: text) else {
                throw context.error(node, key: "hash", "unknown hash '\(text)' (one of \(HashFunction.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            pool.hash = hash
        }
        if let node = values["hash_tag"] {
            let text = Array(try context.string(node, key: "hash_tag").utf8)
            guard text.count == 2 else { throw context.error(node, key: "hash_tag", "must be exactly two characters, like \"{}\"") }
            pool.hashTag = HashTag(open: text[0], close: text[1])
        }
        if let node = values["distribution"] {
            let text = try context.string(node, key: "distribution")
            guard let distribution = Distribution(rawValue: text) else {
                throw context.error(node, key: "distribution", "unknown distribution '\(text)' (one of \(Distribution.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            pool.distribution = distribution
        }
        if let node = values["timeout"] {
            let value = try context.integer(node, key: "timeout", range: -1...Int(Int32.max))
            pool.timeoutMilliseconds = value <= 0 ? nil : value
        }
        if let node = values["backlog"] { pool.backlog = try context.integer(node, key: "backlog", range: 1...65535) }
        if let node = values["preconnect"] { pool.preconnect = try context.boolean(node, key: "preconnect") }
        if let node = values["redis"] { pool.protocolKind = try context.boolean(node, key: "redis") ? .redis : .memcache }
        if let node = values["protocol"] {
            let text = try context.string(node, key: "protocol")
            guard let kind = PoolProtocol(rawValue: text) else { throw context.error(node, key: "protocol", "must be 'memcache' or 'redis', not '\(text)'") }
            if let redisNode = values["redis"], (try context.boolean(redisNode, key: "redis")) != (kind == .redis) {
                throw context.error(node, key: "protocol", "contradicts 'redis' on line \(line(redisNode))")
            }
            pool.protocolKind = kind
        }
        if let node = values["redis_auth"] { pool.redisAuth = try context.string(node, key: "redis_auth") }
        if let node = values["redis_db"] { pool.redisDatabase = try context.integer(node, key: "redis_db", range: 0...Int(Int32.max)) }
        if let node = values["server_connections"] { pool.serverConnections = try context.integer(node, key: "server_connections", range: 1...1024) }
        if let node = values["auto_eject_hosts"] { pool.autoEjectHosts = try context.boolean(node, key: "auto_eject_hosts") }
        if let node = values["server_retry_timeout"] { pool.serverRetryTimeoutMilliseconds = try context.integer(node, key: "server_retry_timeout", range: 1...Int(Int32.max)) }
        if let node = values["server_failure_limit"] { pool.serverFailureLimit = try context.integer(node, key: "server_failure_limit", range: 1...Int(Int32.max)) }
        if let node = values["tcpkeepalive"] { pool.tcpKeepalive = try context.boolean(node, key: "tcpkeepalive") }
        if let node = values["client_connections"] { pool.clientConnections = try context.integer(node, key: "client_connections", range: 0...Int(Int32.max)) }
        if let node = values["client_output_limit"] { pool.clientOutputLimit = try context.integer(node, key: "client_output_limit", range: 65536...(1 << 40)) }
        if let node = values["announce"] {
            let text = try context.string(node, key: "announce")
            guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port),
                  colon > text.startIndex, !text[..<colon].contains(" ") else {
                throw context.error(node, key: "announce", "must be host:port, not '\(text)'")
            }
            pool.announce = (String(text[..<colon]), port)
        }
        if let node = values["max_subscriptions"] { pool.maxSubscriptions = try context.integer(node, key: "max_subscriptions", range: 1...(1 << 24)) }
        if let node = values["slowlog_log_slower_than"] { pool.slowlogSlowerThanMicroseconds = try context.integer(node, key: "slowlog_log_slower_than", range: -1...Int(Int32.max)) }
        if let node = values["slowlog_max_len"] { pool.slowlogMaxLength = try context.integer(node, key: "slowlog_max_len", range: 0...100_000) }
        if let node = values["hot_keys"] { pool.hotKeys = try context.integer(node, key: "hot_keys", range: 0...4096) }
        if let node = values["dedicated_connections"] { pool.dedicatedConnections = try context.integer(node, key: "dedicated_connections", range: 1...65536) }
        if let node = values["client_query_limit"] { pool.clientQueryLimit = try context.integer(node, key: "client_query_limit", range: 65536...(1 << 40)) }
        if let node = values["client_partial_timeout"] { pool.clientPartialTimeoutMilliseconds = try context.integer(node, key: "client_partial_timeout", range: 0...Int(Int32.max)) }
        if let node = values["client_idle_timeout"] { pool.clientIdleTimeoutMilliseconds = try context.integer(node, key: "client_idle_timeout", range: 0...Int(Int32.max)) }
        if let node = values["strict_keys"] { pool.strictKeys = try context.boolean(node, key: "strict_keys") }
        if let node = values["max_bulk_length"] { pool.maxBulkLength = try context.integer(node, key: "max_bulk_length", range: 1...(512 << 20)) }
        if let node = values["max_item_size"] { pool.maxItemSize = try context.integer(node, key: "max_item_size", range: 1...(1 << 30)) }
        if let node = values["users"] { pool.users = try parseUsers(node, protocolKind: pool.protocolKind, context: context) }
        if let node = values["disabled_commands"] {
            guard pool.protocolKind == .redis else { throw context.error(node, key: "disabled_commands", "is for Redis pools") }
            for entry in try context.list(node, key: "disabled_commands") {
                let name = entry.value.lowercased()
                guard RedisCommandTable.byName[name] != nil else {
                    throw ConfigError(file: file, line: entry.line, message: "pool '\(pool.name)': key 'disabled_commands': unknown command '\(entry.value)'")
                }
                if !pool.disabledCommands.contains(name) { pool.disabledCommands.append(name) }
            }
        }
        guard let serversNode = values["servers"] else {
            throw ConfigError(file: file, line: line(keyNode), message: "pool '\(name)': missing key 'servers'")
        }
        if let node = values["tls"] {
            pool.clientTLS = try parseClientTLS(node, context: context)
            if pool.clientTLS!.userFromCertificate, pool.users.isEmpty {
                throw context.error(node, key: "tls", "'user_from_certificate' needs 'users:' (a certificate names one of them)")
            }
            if case .unix = pool.listen { throw context.error(node, key: "tls", "is for TCP listeners, not unix sockets") }
        }
        if let node = values["server_tls"] { pool.serverTLS = try parseServerTLS(node, context: context) }
        if let sentinelNode = values["sentinel"] {
            pool.sentinel = try parseSentinel(sentinelNode, context: context)
            guard pool.protocolKind == .redis else {
                throw context.error(sentinelNode, key: "sentinel", "needs a Redis pool ('redis: true')")
            }
            if pool.distribution == .redisCluster {
                throw context.error(sentinelNode, key: "sentinel", "cannot be used with 'distribution: redis_cluster' (a cluster names its own masters)")
            }
            if let warmupNode = values["warmup"] {
                throw context.error(warmupNode, key: "warmup", "is not supported with 'sentinel'")
            }
            if pool.sentinel?.tls == true, pool.serverTLS == nil {
                throw context.error(sentinelNode, key: "sentinel", "'tls: true' reaches the sentinels with the pool's 'server_tls' settings: add 'server_tls'")
            }
            pool.servers = try parseSentinelMasters(serversNode, context: context)
        } else {
            pool.servers = try parseServers(serversNode, context: context)
        }
        if let slotsNode = values["slots"], pool.distribution != .slots {
            // The map would be ignored: keys would be placed by the pool's distribution instead.
            throw context.error(slotsNode, key: "slots", "is used only with 'distribution: slots' (this pool uses \(pool.distribution.rawValue))")
        }
        if pool.distribution == .slots {
            pool.slotServers = try parseSlots(values["slots"], servers: pool.servers, context: context)
        }
        if let node = values["read_from"] {
            let text = try context.string(node, key: "read_from")
            guard let readFrom = ReadFrom(rawValue: text) else {
                throw context.error(node, key: "read_from", "must be one of \(ReadFrom.allCases.map(\.rawValue).joined(separator: ", ")), not '\(text)'")
            }
            guard pool.distribution == .redisCluster else {
                throw context.error(node, key: "read_from", "is used only with 'distribution: redis_cluster' (this pool uses \(pool.distribution.rawValue))")
            }
            pool.readFrom = readFrom
        }
        if pool.distribution == .redisCluster {
            let node = values["distribution"]!
            // The seeds are Redis Cluster nodes: the slot map and the {tag} rule are the cluster's.
            guard pool.protocolKind == .redis else {
                throw context.error(node, key: "distribution", "redis_cluster needs a Redis pool ('redis: true')")
            }
            if parent != nil {
                throw context.error(node, key: "distribution", "redis_cluster is not supported for a warm-up's old pool")
            }
            if let warmupNode = values["warmup"] {
                throw context.error(warmupNode, key: "warmup", "is not supported with 'distribution: redis_cluster'")
            }
            if let tagNode = values["hash_tag"], pool.hashTag != .braces {
                throw context.error(tagNode, key: "hash_tag", "Redis Cluster hashes the part between '{' and '}': only \"{}\" is allowed with redis_cluster")
            }
        }
        if let warmupNode = values["warmup"] {
            pool.warmup = try parseWarmup(warmupNode, for: pool, file: file)
        }
        return pool
    }

    static func parseWarmup(_ node: Node, for pool: PoolConfig, file: String) throws(ConfigError) -> WarmupConfig {
        let name = pool.name + ".warmup"
        let old = try self.pool(name: name, keyNode: node, node: node, file: file, warmupOf: pool)
        var warmup = WarmupConfig(old: old)
        guard case let .mapping(mapping) = node else { return warmup }
        var values: [String: Node] = [:]
        for (key, value) in mapping { values[key.string ?? ""] = value }
        let context = PoolContext(pool: name, file: file, values: values)
        if let node = values["backfill"] { warmup.backfill = try context.boolean(node, key: "backfill") }
        if let node = values["max_backfill_ttl"] { warmup.maxBackfillTTL = try context.integer(node, key: "max_backfill_ttl", range: 0...Int(Int32.max)) }
        if let node = values["default_backfill_ttl"] { warmup.defaultBackfillTTL = try context.integer(node, key: "default_backfill_ttl", range: 0...Int(Int32.max)) }
        if let node = values["deletes"] {
            let text = try context.string(node, key: "deletes")
            guard let deletes = WarmupDeletes(rawValue: text) else { throw context.error(node, key: "deletes", "must be 'both' or 'new', not '\(text)'") }
            warmup.deletes = deletes
        }
        return warmup
    }

    /// `users:`: a list of mappings with `name`, `password_sha256`, `commands` and `keys`.
    static func parseUsers(_ node: Node, protocolKind: PoolProtocol, context: PoolContext) throws(ConfigError) -> [UserConfig] {
        guard case let .sequence(list) = node else { throw context.error(node, key: "users", "must be a list of users") }
        var users: [UserConfig] = []
        func fail(_ node: Node, _ message: String) -> ConfigError {
            ConfigError(file: context.file, line: line(node), message: "pool '\(context.pool)': key 'users': \(message)")
        }
        for entry in list {
            guard case let .mapping(mapping) = entry else { throw fail(entry, "each user must be a mapping with name, password_sha256, commands and keys") }
            var values: [String: Node] = [:]
            for (key, value) in mapping {
                let keyName = try scalar(key, file: context.file, what: "a key")
                guard ["name", "password_sha256", "commands", "keys"].contains(keyName) else {
                    throw fail(key, "unknown key '\(keyName)' (name, password_sha256, commands, keys)")
                }
                values[keyName] = value
            }
            guard let nameNode = values["name"] else { throw fail(entry, "a user needs a 'name'") }
            let name = try scalar(nameNode, file: context.file, what: "a user name")
            guard !name.isEmpty, !name.utf8.contains(where: { $0 <= 0x20 || $0 >= 0x7f }) else {
                throw fail(nameNode, "user name '\(name)' must be printable ASCII without spaces")
            }
            if let first = users.first(where: { $0.name == name }) {
                throw fail(nameNode, "duplicate user '\(name)' (first defined on line \(first.line))")
            }
            guard let hashNode = values["password_sha256"] else { throw fail(entry, "user '\(name)' needs a 'password_sha256'") }
            guard let hash = SHA256.parseHex(try scalar(hashNode, file: context.file, what: "password_sha256")) else {
                throw fail(hashNode, "user '\(name)': password_sha256 must be 64 hex digits (the SHA-256 of the password, e.g. from `printf %s pass | sha256sum`)")
            }
            var commands: [String] = []
            if let commandsNode = values["commands"] {
                for rule in try context.list(commandsNode, key: "users") {
                    if case let .failure(error) = RedisUser.compileCommands([rule.value]) {
                        throw ConfigError(file: context.file, line: rule.line, message: "pool '\(context.pool)': key 'users': user '\(name)': rule '\(error.rule)': \(error.reason)")
                    }
                    commands.append(rule.value)
                }
            }
            var keys: [String] = []
            if let keysNode = values["keys"] {
                for pattern in try context.list(keysNode, key: "users") {
                    guard pattern.value == "allkeys" || pattern.value.hasPrefix("~") else {
                        throw ConfigError(file: context.file, line: pattern.line, message: "pool '\(context.pool)': key 'users': user '\(name)': key pattern '\(pattern.value)' must start with '~' (like ~app:*) or be allkeys")
                    }
                    if protocolKind == .memcache, pattern.value != "allkeys", pattern.value != "~*" {
                        let body = pattern.value.dropFirst()
                        guard !body.dropLast().contains(where: { "*?[\\".contains($0) }), let last = body.last, !"?[\\".contains(last) else {
                            throw ConfigError(file: context.file, line: pattern.line, message: "pool '\(context.pool)': key 'users': user '\(name)': memcached key patterns are prefixes, like ~prefix* (not '\(pattern.value)')")
                        }
                    }
                    keys.append(pattern.value)
                }
            }
            users.append(UserConfig(name: name, passwordSHA256: hash, commands: commands, keys: keys, line: line(nameNode)))
        }
        return users
    }

    struct PoolContext {
        var pool: String
        var file: String
        var values: [String: Node]

        func error(_ node: Node, key: String, _ message: String) -> ConfigError {
            ConfigError(file: file, line: ConfigLoader.line(node), message: "pool '\(pool)': key '\(key)': \(message)")
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

    /// `host:port:weight [name]` or `/path/sock:weight [name]`.
    /// A path in a TLS setting: absolute, or relative to the config file's directory.
    static func tlsPath(_ node: Node, key: String, context: PoolContext) throws(ConfigError) -> String {
        let text = try context.string(node, key: key)
        guard !text.isEmpty else { throw context.error(node, key: key, "is an empty path") }
        if text.hasPrefix("/") { return text }
        guard let slash = context.file.lastIndex(of: "/") else { return text }
        return String(context.file[...slash]) + text
    }

    static func tlsVersion(_ node: Node, key: String, context: PoolContext) throws(ConfigError) -> TLSVersion {
        let text = try context.string(node, key: key)
        guard let version = TLSVersion(rawValue: text) else { throw context.error(node, key: key, "min_version must be TLSv1.2 or TLSv1.3, not '\(text)'") }
        return version
    }

    /// `tls: {cert, key, ca, client_auth: none|optional|required, min_version, user_from_certificate: cn}`.
    static func parseClientTLS(_ node: Node, context: PoolContext) throws(ConfigError) -> ClientTLSConfig {
        let known = ["cert", "key", "ca", "client_auth", "min_version", "user_from_certificate"]
        guard case let .mapping(mapping) = node else { throw context.error(node, key: "tls", "must be a mapping with cert and key (and ca, client_auth, min_version)") }
        var values: [String: Node] = [:]
        for (keyNode, valueNode) in mapping {
            let key = try context.string(keyNode, key: "tls")
            guard known.contains(key) else { throw context.error(keyNode, key: "tls", "unknown key '\(key)' (\(known.joined(separator: ", ")))") }
            values[key] = valueNode
        }
        guard let certNode = values["cert"], let keyNode = values["key"] else { throw context.error(node, key: "tls", "needs both 'cert' and 'key'") }
        var tls = ClientTLSConfig(cert: try tlsPath(certNode, key: "tls", context: context), key: try tlsPath(keyNode, key: "tls", context: context))
        if let node = values["ca"] { tls.ca = try tlsPath(node, key: "tls", context: context) }
        if let node = values["client_auth"] {
            let text = try context.string(node, key: "tls")
            guard let mode = TLSClientAuth(rawValue: text) else { throw context.error(node, key: "tls", "client_auth must be none, optional or required, not '\(text)'") }
            tls.clientAuth = mode
        }
        if tls.clientAuth != .none, tls.ca == nil { throw context.error(node, key: "tls", "client_auth '\(tls.clientAuth.rawValue)' needs 'ca' (the CA client certificates are verified against)") }
        if let node = values["min_version"] { tls.minVersion = try tlsVersion(node, key: "tls", context: context) }
        if let node = values["user_from_certificate"] {
            let text = try context.string(node, key: "tls")
            guard text == "cn" || text == "none" else { throw context.error(node, key: "tls", "user_from_certificate must be cn or none, not '\(text)'") }
            tls.userFromCertificate = text == "cn"
            if tls.userFromCertificate, tls.clientAuth == .none { throw context.error(node, key: "tls", "user_from_certificate needs client_auth optional or required") }
        }
        return tls
    }

    /// `server_tls: {ca, cert, key, server_name, verify, min_version}`.
    static func parseServerTLS(_ node: Node, context: PoolContext) throws(ConfigError) -> ServerTLSConfig {
        let known = ["ca", "cert", "key", "server_name", "verify", "min_version"]
        var tls = ServerTLSConfig()
        if case let .scalar(scalar) = node, ["true", "yes", "on"].contains(scalar.string) { return tls }
        guard case let .mapping(mapping) = node else { throw context.error(node, key: "server_tls", "must be a mapping (ca, cert, key, server_name, verify, min_version) or true") }
        var values: [String: Node] = [:]
        for (keyNode, valueNode) in mapping {
            let key = try context.string(keyNode, key: "server_tls")
            guard known.contains(key) else { throw context.error(keyNode, key: "server_tls", "unknown key '\(key)' (\(known.joined(separator: ", ")))") }
            values[key] = valueNode
        }
        if let node = values["ca"] { tls.ca = try tlsPath(node, key: "server_tls", context: context) }
        if let node = values["cert"] { tls.cert = try tlsPath(node, key: "server_tls", context: context) }
        if let node = values["key"] { tls.key = try tlsPath(node, key: "server_tls", context: context) }
        if (tls.cert == nil) != (tls.key == nil) { throw context.error(node, key: "server_tls", "needs both 'cert' and 'key', or neither") }
        if let node = values["server_name"] { tls.serverName = try context.string(node, key: "server_tls") }
        if let node = values["verify"] { tls.verify = try context.boolean(node, key: "server_tls") }
        if let node = values["min_version"] { tls.minVersion = try tlsVersion(node, key: "server_tls", context: context) }
        return tls
    }

    /// `sentinel: {addresses: [host:port, …], password: …}`.
    static func parseSentinel(_ node: Node, context: PoolContext) throws(ConfigError) -> SentinelConfig {
        guard case let .mapping(mapping) = node else { throw context.error(node, key: "sentinel", "must be a mapping with 'addresses' (and 'password')") }
        var addresses: [(host: String, port: Int)] = []
        var password: String?
        var tls = false
        var sawAddresses = false
        for (keyNode, valueNode) in mapping {
            let key = try context.string(keyNode, key: "sentinel")
            switch key {
            case "addresses":
                sawAddresses = true
                guard case let .sequence(list) = valueNode else { throw context.error(valueNode, key: "sentinel", "'addresses' must be a list of host:port") }
                for item in list {
                    let text = try context.string(item, key: "sentinel")
                    let (host, port) = try splitHostPort(text) { context.error(item, key: "sentinel", $0) }
                    addresses.append((host, port))
                }
            case "password":
                password = try context.string(valueNode, key: "sentinel")
            case "tls":
                tls = try context.boolean(valueNode, key: "sentinel")
            default:
                throw context.error(keyNode, key: "sentinel", "unknown key '\(key)' (addresses, password, tls)")
            }
        }
        guard sawAddresses, !addresses.isEmpty else { throw context.error(node, key: "sentinel", "needs at least one address in 'addresses'") }
        return SentinelConfig(addresses: addresses, password: password, tls: tls)
    }

    /// With `sentinel:`, servers are master group names: `<name>:<weight>`. The name is the
    /// server's name (ketama points, stats), so placement does not move on a failover.
    static func parseSentinelMasters(_ node: Node, context: PoolContext) throws(ConfigError) -> [ServerConfig] {
        guard case let .sequence(list) = node else { throw context.error(node, key: "servers", "must be a list") }
        var servers: [ServerConfig] = []
        var names: [String: Int] = [:]
        for item in list {
            let text = try context.string(item, key: "servers")
            let fail = { (message: String) in context.error(item, key: "servers", message) }
            guard let colon = text.lastIndex(of: ":"), let weight = Int(text[text.index(after: colon)...]) else {
                throw fail("expected '<master name>:<weight>' with sentinel, got '\(text)'")
            }
            guard weight > 0 else { throw fail("weight must be at least 1 in '\(text)'") }
            let name = String(text[..<colon])
            guard !name.isEmpty, name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: ":") }) else {
                throw fail("bad master name '\(name)' (printable, no spaces or ':')")
            }
            if let first = names[name] { throw fail("duplicate master name '\(name)' (first on line \(first))") }
            names[name] = ConfigLoader.line(item)
            servers.append(ServerConfig(address: .tcp(host: name, port: 0), weight: weight, name: name, hasExplicitName: true, line: ConfigLoader.line(item)))
        }
        guard !servers.isEmpty else { throw context.error(node, key: "servers", "needs at least one master name") }
        return servers
    }

    static func parseServers(_ node: Node, context: PoolContext) throws(ConfigError) -> [ServerConfig] {
        guard case let .sequence(list) = node else { throw context.error(node, key: "servers", "must be a list") }
        var servers: [ServerConfig] = []
        var names: [String: Int] = [:]
        for item in list {
            let text = try context.string(item, key: "servers")
            let fail = { (message: String) in context.error(item, key: "servers", message) }
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
            let name = parts.count == 2 ? parts[1] : implicitName
            if let first = names[name] {
                throw fail("duplicate server name '\(name)' (first on line \(first))")
            }
            names[name] = ConfigLoader.line(item)
            servers.append(ServerConfig(address: address, weight: weight, name: name, hasExplicitName: parts.count == 2, line: ConfigLoader.line(item)))
        }
        guard !servers.isEmpty else { throw context.error(node, key: "servers", "needs at least one server") }
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
