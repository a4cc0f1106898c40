import Yams

// The config key schema: every key of a config file appears once here, with its scope, how it
// is parsed, how `/config` renders it and a one-line doc. ConfigLoader (accepted keys, unknown
// and missing keys, parsing in table order), ConfigRenderer (`/config`, in table order) and the
// documentation test (README's tables, Config/example.yml) all read these tables: a new key
// is one entry here, plus its README row and example line, which the test asks for.
//
// A key's parse may read the keys above it in its table (the protocol before users, the
// distribution before read_from, server_tls before sentinel); a key that needs keys below it
// does its work in `finish` (slots needs the servers). A key a warm-up's old pool takes from
// its new pool says so with `inherit` (the protocol, the request limits, `timeout`). A user's
// keys are parsed by the `user` table like any other mapping's; what looks at the list as a
// whole (each entry a mapping, no name twice) is the `users` key's own parse
// (ConfigLoader.parseUsers). What stays outside the tables: the hint on listen/redis/protocol
// in a warm-up.

/// Where a key is written.
enum ConfigScope: String, Sendable {
    /// A pool's key, also taken by a warm-up's old pool (`warmup:`).
    case pool
    /// A pool's key that a warm-up's old pool does not take: it is reached only through the
    /// new pool and speaks its protocol.
    case poolOnly = "pool only"
    /// A key of the `warmup:` mapping itself (the backfill settings).
    case warmup
    /// Keys of the mappings under `tls:`, `server_tls:`, `sentinel:` and each entry of `users:`.
    case tls, serverTLS = "server_tls", sentinel, users

    /// The key whose mapping holds this scope's keys (`tls`, …); nil for a pool's keys and
    /// the warm-up's, which README has tables for.
    var parentKey: String? {
        switch self {
        case .pool, .poolOnly, .warmup: nil
        case .tls, .serverTLS, .sentinel, .users: rawValue
        }
    }
}

/// One config key of a `Target` (a pool, a warm-up, a TLS setting, a user, …).
struct ConfigKey<Target>: Sendable {
    typealias Parse = @Sendable (inout Target, Node, ConfigLoader.KeyContext) throws(ConfigError) -> Void
    typealias Finish = @Sendable (inout Target, Node?, ConfigLoader.KeyContext) throws(ConfigError) -> Void
    typealias Render = @Sendable (Target, inout ConfigOutput) -> Void

    let name: String
    let scope: ConfigScope
    /// A mapping without it is refused (`missing key`).
    var required = false
    let doc: String
    /// Reads the key's value into the target, in table order: a key may look at the keys
    /// above it. Nil: the key's owner parses it (a user's keys, see `parseUsers`).
    var parse: Parse?
    /// Runs after every key of the mapping was parsed, whether the key is set or not, in
    /// table order: for a key that needs keys below it.
    var finish: Finish?
    /// Writes the key for `/config` (nothing when it is unset and has no default).
    let render: Render
    /// What a warm-up's old pool takes from its new pool for this key, before the old pool's
    /// own keys are parsed (nil: nothing). A `pool only` key the old pool cannot set (its
    /// protocol, its request limits) or a `pool` key whose default is the new pool's (`timeout`).
    var inherit: (@Sendable (inout Target, Target) -> Void)?

    /// A whole number in `range`. `inherited`: a warm-up's old pool takes the new pool's value.
    static func integer(_ name: String, _ scope: ConfigScope, _ field: WritableKeyPath<Target, Int> & Sendable, _ range: ClosedRange<Int>, doc: String,
                        inherited: Bool = false) -> Self {
        Self(name: name, scope: scope, doc: doc, parse: { target, node, key throws(ConfigError) in target[keyPath: field] = try key.integer(node, range) },
             render: { target, out in out.value(String(target[keyPath: field])) }, inherit: inherited ? copying(field) : nil)
    }

    /// `true`/`false` (and YAML 1.1's `yes`/`no`/`on`/`off`).
    static func boolean(_ name: String, _ scope: ConfigScope, _ field: WritableKeyPath<Target, Bool> & Sendable, doc: String,
                        inherited: Bool = false) -> Self {
        Self(name: name, scope: scope, doc: doc, parse: { target, node, key throws(ConfigError) in target[keyPath: field] = try key.boolean(node) },
             render: { target, out in out.value(String(target[keyPath: field])) }, inherit: inherited ? copying(field) : nil)
    }

    /// An `inherit` that copies one field.
    static func copying<Value>(_ field: WritableKeyPath<Target, Value> & Sendable) -> @Sendable (inout Target, Target) -> Void {
        { target, parent in target[keyPath: field] = parent[keyPath: field] }
    }

    /// One of an enumeration's raw values; `unknown` words the error for any other.
    static func choice<Value: RawRepresentable<String> & Sendable>(_ name: String, _ scope: ConfigScope, _ field: WritableKeyPath<Target, Value> & Sendable, doc: String,
                                                       unknown: @escaping @Sendable (String) -> String) -> Self {
        Self(name: name, scope: scope, doc: doc, parse: { target, node, key throws(ConfigError) in target[keyPath: field] = try key.choice(node, unknown: unknown) },
             render: { target, out in out.value(target[keyPath: field].rawValue) })
    }
}

extension Array {
    /// The names of these keys, in table order.
    func names<Target>() -> [String] where Element == ConfigKey<Target> { map(\.name) }
}

/// The tables, in the order `/config` renders the keys (and a mapping's keys are parsed).
enum ConfigSchema {
    static let pool: [ConfigKey<PoolConfig>] = [
        ConfigKey(name: "listen", scope: .poolOnly, required: true, doc: "host:port, [v6]:port, or /path.sock [octal mode]",
                  parse: { pool, node, key throws(ConfigError) in pool.listen = try ConfigLoader.parseListen(key.string(node), context: key.pool, node: node) },
                  render: { pool, out in out.value(ConfigRenderer.quoted(ConfigRenderer.listenText(pool.listen))) }),
        ConfigKey(name: "redis", scope: .poolOnly, doc: "backend speaks Redis (twemproxy's; rendered as protocol)",
                  parse: { pool, node, key throws(ConfigError) in pool.protocolKind = try key.boolean(node) ? .redis : .memcache },
                  render: { _, _ in }),
        ConfigKey(name: "protocol", scope: .poolOnly, doc: "memcache or redis, a readable alias of redis",
                  parse: { pool, node, key throws(ConfigError) in
                      let kind: PoolProtocol = try key.choice(node) { "must be 'memcache' or 'redis', not '\($0)'" }
                      if let redisNode = key.values["redis"], (try key.pool.boolean(redisNode, key: "redis")) != (kind == .redis) {
                          throw key.error(node, "contradicts 'redis' on line \(ConfigLoader.line(redisNode))")
                      }
                      pool.protocolKind = kind
                  },
                  render: { pool, out in out.value(pool.protocolKind.rawValue) },
                  // The old pool is reached through the new one and speaks its protocol.
                  inherit: ConfigKey.copying(\PoolConfig.protocolKind)),
        .choice("hash", .pool, \.hash, doc: "the key hash") { "unknown hash '\($0)' (one of \(HashFunction.allCases.map(\.rawValue).joined(separator: ", ")))" },
        ConfigKey(name: "hash_tag", scope: .pool, doc: "two characters; only the part of the key between them is hashed",
                  parse: { pool, node, key throws(ConfigError) in
                      let text = Array(try key.string(node).utf8)
                      guard text.count == 2 else { throw key.error(node, "must be exactly two characters, like \"{}\"") }
                      pool.hashTag = HashTag(open: text[0], close: text[1])
                  },
                  render: { pool, out in
                      if let tag = pool.hashTag { out.value(ConfigRenderer.quoted(String(decoding: [tag.open, tag.close], as: UTF8.self))) }
                  }),
        ConfigKey(name: "distribution", scope: .pool, doc: "how keys are placed on the servers",
                  parse: { pool, node, key throws(ConfigError) in
                      pool.distribution = try key.choice(node) { "unknown distribution '\($0)' (one of \(Distribution.allCases.map(\.rawValue).joined(separator: ", ")))" }
                      guard pool.distribution == .redisCluster else { return }
                      // The seeds are Redis Cluster nodes: the slot map and the {tag} rule are the cluster's.
                      guard pool.protocolKind == .redis else { throw key.error(node, "redis_cluster needs a Redis pool ('redis: true')") }
                      if key.pool.isWarmup { throw key.error(node, "redis_cluster is not supported for a warm-up's old pool") }
                      if let warmupNode = key.values["warmup"] {
                          throw key.pool.error(warmupNode, key: "warmup", "is not supported with 'distribution: redis_cluster'")
                      }
                      if let tagNode = key.values["hash_tag"], pool.hashTag != .braces {
                          throw key.pool.error(tagNode, key: "hash_tag", "Redis Cluster hashes the part between '{' and '}': only \"{}\" is allowed with redis_cluster")
                      }
                  },
                  render: { pool, out in out.value(pool.distribution.rawValue) }),
        ConfigKey(name: "read_from", scope: .poolOnly, doc: "redis_cluster: where read-only commands go",
                  parse: { pool, node, key throws(ConfigError) in
                      let readFrom: ReadFrom = try key.choice(node) { "must be one of \(ReadFrom.allCases.map(\.rawValue).joined(separator: ", ")), not '\($0)'" }
                      guard pool.distribution == .redisCluster else {
                          throw key.error(node, "is used only with 'distribution: redis_cluster' (this pool uses \(pool.distribution.rawValue))")
                      }
                      pool.readFrom = readFrom
                  },
                  render: { pool, out in if pool.distribution == .redisCluster { out.value(pool.readFrom.rawValue) } }),
        ConfigKey(name: "timeout", scope: .pool, doc: "ms to wait for a backend reply; forever by default",
                  parse: { pool, node, key throws(ConfigError) in
                      // nutcracker takes any number (longer than 24 days is forever here).
                      let value = try key.integer(node, -1...Int.max)
                      pool.timeoutMilliseconds = value <= 0 ? nil : min(value, Int(Int32.max))
                  },
                  render: { pool, out in out.value(String(pool.timeoutMilliseconds ?? -1)) },
                  // A hanging old pool must not hang the new pool's reads: the new pool's
                  // timeout unless the warm-up sets one of its own.
                  inherit: ConfigKey.copying(\PoolConfig.timeoutMilliseconds)),
        .integer("backlog", .poolOnly, \.backlog, 0...Int(Int32.max), doc: "listen backlog (the kernel caps it at net.core.somaxconn)"),
        .boolean("preconnect", .pool, \.preconnect, doc: "connect to all servers at start"),
        ConfigKey(name: "redis_auth", scope: .pool, doc: "Redis password (secret)",
                  parse: { pool, node, key throws(ConfigError) in pool.redisAuth = try key.string(node) },
                  render: { pool, out in if let auth = pool.redisAuth { out.secret(auth) } }),
        .integer("redis_db", .pool, \.redisDatabase, 0...Int(Int32.max), doc: "Redis database"),
        .integer("server_connections", .pool, \.serverConnections, 1...1024, doc: "connections per server per worker thread"),
        .boolean("auto_eject_hosts", .pool, \.autoEjectHosts, doc: "eject failing servers from the ring"),
        .integer("server_retry_timeout", .pool, \.serverRetryTimeoutMilliseconds, 0...Int(Int32.max), doc: "ms before an ejected server is probed (0 as 1)"),
        .integer("server_failure_limit", .pool, \.serverFailureLimit, 0...Int(Int32.max), doc: "consecutive failures before ejection (0 as 1)"),
        .boolean("tcpkeepalive", .pool, \.tcpKeepalive, doc: "SO_KEEPALIVE on client and backend connections"),
        .integer("client_connections", .poolOnly, \.clientConnections, 0...Int(Int32.max), doc: "most open client connections (0: no limit)"),
        .integer("max_item_size", .poolOnly, \.maxItemSize, 1...(1 << 30), doc: "largest memcached value accepted, bytes", inherited: true),
        .integer("max_bulk_length", .poolOnly, \.maxBulkLength, 1...(512 << 20), doc: "largest Redis bulk string accepted from a client, bytes", inherited: true),
        .boolean("strict_keys", .poolOnly, \.strictKeys, doc: "refuse memcached keys with control characters", inherited: true),
        ConfigKey(name: "close_on_server_failure", scope: .poolOnly,
                  doc: "close a client whose request's server failed, instead of an error reply (default: Redis pools of one server)",
                  parse: { pool, node, key throws(ConfigError) in pool.closeOnServerFailure = try key.boolean(node) },
                  render: { pool, out in if let value = pool.closeOnServerFailure { out.value(String(value)) } }),
        ConfigKey(name: "server_wait", scope: .poolOnly,
                  doc: "ms a request waits for the connect to a one-server pool's server when failures close clients (0: none; default: timeout, or 1500)",
                  parse: { pool, node, key throws(ConfigError) in pool.serverWaitMilliseconds = try key.integer(node, 0...Int(Int32.max)) },
                  render: { pool, out in if let value = pool.serverWaitMilliseconds { out.value(String(value)) } }),
        .integer("client_output_limit", .poolOnly, \.clientOutputLimit, 65536...(1 << 40), doc: "most reply bytes held for a client"),
        .integer("client_query_limit", .poolOnly, \.clientQueryLimit, 65536...(1 << 40), doc: "largest Redis request, all arguments together", inherited: true),
        .integer("dedicated_connections", .poolOnly, \.dedicatedConnections, 1...65536, doc: "Redis: connections per server and worker blocking commands may hold, and as many again for WATCH"),
        .integer("max_subscriptions", .poolOnly, \.maxSubscriptions, 1...(1 << 24), doc: "Redis: subscriptions one client may hold"),
        .integer("slowlog_log_slower_than", .poolOnly, \.slowlogSlowerThanMicroseconds, -1...Int(Int32.max), doc: "µs over which a round trip enters the slow log"),
        .integer("slowlog_max_len", .poolOnly, \.slowlogMaxLength, 0...100_000, doc: "slow log entries kept"),
        .integer("hot_keys", .poolOnly, \.hotKeys, 0...4096, doc: "keys the hot-key sketch tracks per worker"),
        ConfigKey(name: "announce", scope: .poolOnly, doc: "Redis: the host:port CLUSTER SLOTS/SHARDS/NODES give clients",
                  parse: { pool, node, key throws(ConfigError) in
                      let text = try key.string(node)
                      guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port),
                            colon > text.startIndex, !text[..<colon].contains(" ") else {
                          throw key.error(node, "must be host:port, not '\(text)'")
                      }
                      pool.announce = (String(text[..<colon]), port)
                  },
                  render: { pool, out in if let announce = pool.announce { out.value(ConfigRenderer.quoted("\(announce.host):\(announce.port)")) } }),
        .integer("client_partial_timeout", .poolOnly, \.clientPartialTimeoutMilliseconds, 0...Int(Int32.max), doc: "ms a request may stay incomplete (0: never)"),
        .integer("client_idle_timeout", .poolOnly, \.clientIdleTimeoutMilliseconds, 0...Int(Int32.max), doc: "ms a client with nothing in flight may stay idle (0: never)"),
        ConfigKey(name: "disabled_commands", scope: .poolOnly, doc: "Redis: commands answered as unknown",
                  parse: { pool, node, key throws(ConfigError) in
                      guard pool.protocolKind == .redis else { throw key.error(node, "is for Redis pools") }
                      for entry in try key.list(node) {
                          let name = entry.value.lowercased()
                          guard RedisCommandTable.byName[name] != nil else { throw key.error(line: entry.line, "unknown command '\(entry.value)'") }
                          if !pool.disabledCommands.contains(name) { pool.disabledCommands.append(name) }
                      }
                  },
                  render: { pool, out in
                      if !pool.disabledCommands.isEmpty { out.value(ConfigRenderer.list(pool.disabledCommands)) }
                  }),
        ConfigKey(name: "users", scope: .poolOnly, doc: "users and their command and key rules (see user keys)",
                  parse: { pool, node, key throws(ConfigError) in pool.users = try ConfigLoader.parseUsers(node, protocolKind: pool.protocolKind, context: key.pool) },
                  render: { pool, out in
                      guard !pool.users.isEmpty else { return }
                      out.header()
                      for user in pool.users { out.entry(user, ConfigSchema.user) }
                  }),
        ConfigKey(name: "tls", scope: .poolOnly, doc: "clients connect with TLS (see tls keys)",
                  parse: { pool, node, key throws(ConfigError) in
                      let tls = try ConfigLoader.parseClientTLS(node, context: key)
                      if tls.userFromCertificate, pool.users.isEmpty { throw key.error(node, "'user_from_certificate' needs 'users:' (a certificate names one of them)") }
                      if case .unix = pool.listen { throw key.error(node, "is for TCP listeners, not unix sockets") }
                      pool.clientTLS = tls
                  },
                  render: { pool, out in if let tls = pool.clientTLS { out.mapping(tls, ConfigSchema.tls) } }),
        ConfigKey(name: "server_tls", scope: .pool, doc: "Tern connects to the servers with TLS (see server_tls keys), or true",
                  parse: { pool, node, key throws(ConfigError) in pool.serverTLS = try ConfigLoader.parseServerTLS(node, context: key) },
                  render: { pool, out in if let tls = pool.serverTLS { out.mapping(tls, ConfigSchema.serverTLS) } }),
        ConfigKey(name: "slots", scope: .pool, doc: "server name → slot ranges, for distribution: slots",
                  finish: { pool, node, key throws(ConfigError) in
                      if let node, pool.distribution != .slots {
                          // The map would be ignored: keys would be placed by the pool's distribution instead.
                          throw key.error(node, "is used only with 'distribution: slots' (this pool uses \(pool.distribution.rawValue))")
                      }
                      if pool.distribution == .slots { pool.slotServers = try ConfigLoader.parseSlots(node, servers: pool.servers, context: key.pool) }
                  },
                  render: { pool, out in
                      guard pool.distribution == .slots, !pool.slotServers.isEmpty else { return }
                      out.header()
                      out.nested { inner in
                          for (index, server) in pool.servers.enumerated() {
                              inner.line(ConfigRenderer.quoted(server.name), ConfigRenderer.quoted(ConfigRenderer.ranges(of: Int32(index), in: pool.slotServers)))
                          }
                      }
                  }),
        ConfigKey(name: "sentinel", scope: .poolOnly, doc: "Redis: the sentinels that name the masters (see sentinel keys)",
                  parse: { pool, node, key throws(ConfigError) in
                      pool.sentinel = try ConfigLoader.parseSentinel(node, context: key)
                      guard pool.protocolKind == .redis else { throw key.error(node, "needs a Redis pool ('redis: true')") }
                      if pool.distribution == .redisCluster {
                          throw key.error(node, "cannot be used with 'distribution: redis_cluster' (a cluster names its own masters)")
                      }
                      if let warmupNode = key.values["warmup"] { throw key.pool.error(warmupNode, key: "warmup", "is not supported with 'sentinel'") }
                      if pool.sentinel?.tls == true, pool.serverTLS == nil {
                          throw key.error(node, "'tls: true' reaches the sentinels with the pool's 'server_tls' settings: add 'server_tls'")
                      }
                  },
                  render: { pool, out in if let sentinel = pool.sentinel { out.mapping(sentinel, ConfigSchema.sentinel) } }),
        ConfigKey(name: "servers", scope: .pool, required: true, doc: "host:port:weight [name] or /path.sock:weight [name]; with sentinel, <master name>:<weight>",
                  parse: { pool, node, key throws(ConfigError) in
                      pool.servers = pool.sentinel != nil ? try ConfigLoader.parseSentinelMasters(node, context: key.pool) : try ConfigLoader.parseServers(node, context: key.pool)
                  },
                  render: { pool, out in
                      out.header()
                      for server in pool.servers {
                          let text = pool.sentinel != nil ? "\(server.name):\(server.weight)" : "\(server.address):\(server.weight)" + (server.hasExplicitName ? " \(server.name)" : "")
                          out.item(ConfigRenderer.quoted(text))
                      }
                  }),
        ConfigKey(name: "warmup", scope: .poolOnly, doc: "the old pool this pool warms up from: its keys (scope pool) and the warmup keys",
                  finish: { pool, node, key throws(ConfigError) in
                      if let node { pool.warmup = try ConfigLoader.parseWarmup(node, for: pool, file: key.pool.file) }
                  },
                  render: { pool, out in
                      guard let warmup = pool.warmup else { return }
                      out.header()
                      out.nested { inner in
                          inner.keys(warmup, ConfigSchema.warmup)
                          inner.keys(warmup.old, ConfigSchema.oldPool)
                      }
                  }),
    ]

    /// The keys of a warm-up's old pool.
    static let oldPool = pool.filter { $0.scope == .pool }

    static let warmup: [ConfigKey<WarmupConfig>] = [
        .boolean("backfill", .warmup, \.backfill, doc: "copy old-pool hits into the new pool"),
        .integer("max_backfill_ttl", .warmup, \.maxBackfillTTL, 0...Int(Int32.max), doc: "cap, in seconds, on the TTL of copied items (0: none)"),
        .integer("default_backfill_ttl", .warmup, \.defaultBackfillTTL, 0...Int(Int32.max), doc: "TTL, in seconds, of copies whose TTL is unknown (0: no expiry)"),
        .choice("deletes", .warmup, \.deletes, doc: "both: deletes reach both pools; new: only the new pool") { "must be 'both' or 'new', not '\($0)'" },
    ]

    static let tls: [ConfigKey<ClientTLSConfig>] = [
        ConfigKey(name: "cert", scope: .tls, required: true, doc: "the listener's certificate (PEM)",
                  parse: { tls, node, key throws(ConfigError) in tls.cert = try ConfigLoader.tlsPath(node, context: key) },
                  render: { tls, out in out.value(ConfigRenderer.quoted(tls.cert)) }),
        ConfigKey(name: "key", scope: .tls, required: true, doc: "its private key (PEM)",
                  parse: { tls, node, key throws(ConfigError) in tls.key = try ConfigLoader.tlsPath(node, context: key) },
                  render: { tls, out in out.value(ConfigRenderer.quoted(tls.key)) }),
        .path("ca", .tls, \.ca, doc: "CA certificates client certificates are verified against"),
        .choice("client_auth", .tls, \.clientAuth, doc: "none, optional or required") { "client_auth must be none, optional or required, not '\($0)'" },
        .minVersion(.tls, \.minVersion),
        ConfigKey(name: "user_from_certificate", scope: .tls, doc: "cn: a verified certificate's CN names the client's user",
                  parse: { tls, node, key throws(ConfigError) in
                      let text = try key.string(node)
                      guard text == "cn" || text == "none" else { throw key.error(node, "user_from_certificate must be cn or none, not '\(text)'") }
                      tls.userFromCertificate = text == "cn"
                      if tls.userFromCertificate, tls.clientAuth == .none { throw key.error(node, "user_from_certificate needs client_auth optional or required") }
                  },
                  render: { tls, out in out.value(tls.userFromCertificate ? "cn" : "none") }),
    ]

    static let serverTLS: [ConfigKey<ServerTLSConfig>] = [
        .path("ca", .serverTLS, \.ca, doc: "CA certificates the servers' certificates are verified against (default: the system's)"),
        .path("cert", .serverTLS, \.cert, doc: "a client certificate, for servers that require one"),
        .path("key", .serverTLS, \.key, doc: "its private key"),
        ConfigKey(name: "server_name", scope: .serverTLS, doc: "SNI and the name verified (default: each server's host)",
                  parse: { tls, node, key throws(ConfigError) in tls.serverName = try key.string(node) },
                  render: { tls, out in if let name = tls.serverName { out.value(ConfigRenderer.quoted(name)) } }),
        .boolean("verify", .serverTLS, \.verify, doc: "verify the server's certificate and name"),
        .minVersion(.serverTLS, \.minVersion),
    ]

    static let sentinel: [ConfigKey<SentinelConfig>] = [
        ConfigKey(name: "addresses", scope: .sentinel, required: true, doc: "the sentinels, host:port, asked in order",
                  parse: { sentinel, node, key throws(ConfigError) in
                      guard case let .sequence(list) = node else { throw key.error(node, "'addresses' must be a list of host:port") }
                      for item in list {
                          let text = try key.string(item)
                          sentinel.addresses.append(try ConfigLoader.splitHostPort(text) { key.error(item, $0) })
                      }
                  },
                  render: { sentinel, out in
                      out.header()
                      for address in sentinel.addresses {
                          out.item(ConfigRenderer.quoted(address.host.contains(":") ? "[\(address.host)]:\(address.port)" : "\(address.host):\(address.port)"))
                      }
                  }),
        ConfigKey(name: "password", scope: .sentinel, doc: "the sentinels' own password (secret)",
                  parse: { sentinel, node, key throws(ConfigError) in sentinel.password = try key.string(node) },
                  render: { sentinel, out in if let password = sentinel.password { out.secret(password) } }),
        ConfigKey(name: "tls", scope: .sentinel, doc: "the sentinels listen with TLS (reached with server_tls)",
                  parse: { sentinel, node, key throws(ConfigError) in sentinel.tls = try key.boolean(node) },
                  render: { sentinel, out in if sentinel.tls { out.value("true") } }),
    ]

    /// A user's keys (one entry of `users:`), parsed in this order, so each check after the
    /// first can name the user. Errors are the `users` key's, naming the user.
    static let user: [ConfigKey<UserConfig>] = [
        ConfigKey(name: "name", scope: .users, required: true, doc: "printable ASCII without spaces",
                  parse: { user, node, key throws(ConfigError) in
                      let name = try ConfigLoader.scalar(node, file: key.pool.file, what: "a user name")
                      guard !name.isEmpty, !name.utf8.contains(where: { $0 <= 0x20 || $0 >= 0x7f }) else {
                          throw key.error(node, "user name '\(name)' must be printable ASCII without spaces")
                      }
                      user.name = name
                      user.line = ConfigLoader.line(node)
                  },
                  render: { user, out in out.value(ConfigRenderer.quoted(user.name)) }),
        ConfigKey(name: "password_sha256", scope: .users, required: true, doc: "SHA-256 of the password, 64 hex digits (secret)",
                  parse: { user, node, key throws(ConfigError) in
                      guard let hash = SHA256.parseHex(try ConfigLoader.scalar(node, file: key.pool.file, what: "password_sha256")) else {
                          throw key.error(node, "user '\(user.name)': password_sha256 must be 64 hex digits (the SHA-256 of the password, e.g. from `printf %s pass | sha256sum`)")
                      }
                      user.passwordSHA256 = hash
                  },
                  render: { user, out in out.secret(SHA256.hex(user.passwordSHA256)) }),
        ConfigKey(name: "commands", scope: .users, doc: "command rules in order (+@read, -flushall, allcommands, …)",
                  parse: { user, node, key throws(ConfigError) in
                      for rule in try key.list(node) {
                          if case let .failure(error) = RedisUser.compileCommands([rule.value]) {
                              throw key.error(line: rule.line, "user '\(user.name)': rule '\(error.rule)': \(error.reason)")
                          }
                          user.commands.append(rule.value)
                      }
                  },
                  render: { user, out in out.value(ConfigRenderer.list(user.commands)) }),
        ConfigKey(name: "keys", scope: .users, doc: "key patterns (~app:*, allkeys)",
                  parse: { user, node, key throws(ConfigError) in
                      for pattern in try key.list(node) {
                          guard pattern.value == "allkeys" || pattern.value.hasPrefix("~") else {
                              throw key.error(line: pattern.line, "user '\(user.name)': key pattern '\(pattern.value)' must start with '~' (like ~app:*) or be allkeys")
                          }
                          if key.pool.protocolKind == .memcache, pattern.value != "allkeys", pattern.value != "~*" {
                              let body = pattern.value.dropFirst()
                              guard !body.dropLast().contains(where: { "*?[\\".contains($0) }), let last = body.last, !"?[\\".contains(last) else {
                                  throw key.error(line: pattern.line, "user '\(user.name)': memcached key patterns are prefixes, like ~prefix* (not '\(pattern.value)')")
                              }
                          }
                          user.keys.append(pattern.value)
                      }
                  },
                  render: { user, out in out.value(ConfigRenderer.list(user.keys)) }),
    ]

    /// Every key's scope and name, for tests and documentation checks.
    static var all: [(scope: ConfigScope, name: String)] {
        pool.map { ($0.scope, $0.name) } + warmup.map { ($0.scope, $0.name) } + tls.map { ($0.scope, $0.name) }
            + serverTLS.map { ($0.scope, $0.name) } + sentinel.map { ($0.scope, $0.name) } + user.map { ($0.scope, $0.name) }
    }
}

extension ConfigKey {
    /// A certificate or key path: absolute, or relative to the config file's directory.
    static func path(_ name: String, _ scope: ConfigScope, _ field: WritableKeyPath<Target, String?> & Sendable, doc: String) -> Self {
        Self(name: name, scope: scope, doc: doc, parse: { target, node, key throws(ConfigError) in target[keyPath: field] = try ConfigLoader.tlsPath(node, context: key) },
             render: { target, out in if let path = target[keyPath: field] { out.value(ConfigRenderer.quoted(path)) } })
    }

    static func minVersion(_ scope: ConfigScope, _ field: WritableKeyPath<Target, TLSVersion> & Sendable) -> Self {
        .choice("min_version", scope, field, doc: "TLSv1.2 or TLSv1.3") { "min_version must be TLSv1.2 or TLSv1.3, not '\($0)'" }
    }
}

/// `/config` text being written: one indentation level, the current key.
struct ConfigOutput {
    var text = ""
    var indent: String
    let maskSecrets: Bool
    /// The key being rendered.
    var key = ""

    mutating func line(_ name: String, _ value: String) { text += "\(indent)\(name): \(value)\n" }
    /// `key: value`.
    mutating func value(_ value: String) { line(key, value) }
    /// `key: "********"`, or the quoted value when secrets are shown.
    mutating func secret(_ value: String) { self.value(maskSecrets ? "\"********\"" : ConfigRenderer.quoted(value)) }
    /// `key:`, for a mapping or list below.
    mutating func header() { text += "\(indent)\(key):\n" }
    /// ` - value`, a list item under `header()`.
    mutating func item(_ value: String) { text += "\(indent) - \(value)\n" }

    /// Text written two spaces deeper.
    mutating func nested(_ body: (inout ConfigOutput) -> Void) {
        var inner = ConfigOutput(indent: indent + "  ", maskSecrets: maskSecrets)
        body(&inner)
        text += inner.text
    }

    /// Each key of `table`, in order.
    mutating func keys<Target>(_ target: Target, _ table: [ConfigKey<Target>]) {
        let current = key
        for entry in table {
            key = entry.name
            entry.render(target, &self)
        }
        key = current
    }

    /// `key:` and a mapping of `table`'s keys.
    mutating func mapping<Target>(_ target: Target, _ table: [ConfigKey<Target>]) {
        header()
        nested { $0.keys(target, table) }
    }

    /// A list entry that is a mapping: ` - first: …` then the other keys aligned under it.
    mutating func entry<Target>(_ target: Target, _ table: [ConfigKey<Target>]) {
        var inner = ConfigOutput(indent: indent + "   ", maskSecrets: maskSecrets)
        inner.keys(target, table)
        text += indent + " - " + inner.text.dropFirst(inner.indent.count)
    }
}
