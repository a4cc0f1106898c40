/// Writes a loaded config back as YAML (for the admin endpoint's `/config`), with secrets
/// replaced by `********`. Every value is the effective one, defaults included.
public enum ConfigRenderer {
    public static func yaml(_ config: TernConfig, maskSecrets: Bool = true) -> String {
        var out = "# active configuration (from \(config.path))\n"
        for pool in config.pools {
            out += "\(quoted(pool.name)):\n"
            out += "  listen: \(quoted(listenText(pool.listen)))\n"
            out += body(pool, indent: "  ", maskSecrets: maskSecrets)
            if let warmup = pool.warmup {
                out += "  warmup:\n"
                out += "    backfill: \(warmup.backfill)\n"
                out += "    max_backfill_ttl: \(warmup.maxBackfillTTL)\n"
                out += "    default_backfill_ttl: \(warmup.defaultBackfillTTL)\n"
                out += "    deletes: \(warmup.deletes.rawValue)\n"
                out += body(warmup.old, indent: "    ", maskSecrets: maskSecrets, isWarmup: true)
            }
        }
        return out
    }

    static func body(_ pool: PoolConfig, indent: String, maskSecrets: Bool, isWarmup: Bool = false) -> String {
        var out = ""
        func line(_ key: String, _ value: String) { out += "\(indent)\(key): \(value)\n" }
        if !isWarmup { line("protocol", pool.protocolKind.rawValue) }
        line("hash", pool.hash.rawValue)
        if let tag = pool.hashTag { line("hash_tag", quoted(String(decoding: [tag.open, tag.close], as: UTF8.self))) }
        line("distribution", pool.distribution.rawValue)
        if pool.distribution == .redisCluster { line("read_from", pool.readFrom.rawValue) }
        line("timeout", String(pool.timeoutMilliseconds ?? -1))
        if !isWarmup { line("backlog", String(pool.backlog)) }
        line("preconnect", String(pool.preconnect))
        if let auth = pool.redisAuth { line("redis_auth", maskSecrets ? "\"********\"" : quoted(auth)) }
        line("redis_db", String(pool.redisDatabase))
        line("server_connections", String(pool.serverConnections))
        line("auto_eject_hosts", String(pool.autoEjectHosts))
        line("server_retry_timeout", String(pool.serverRetryTimeoutMilliseconds))
        line("server_failure_limit", String(pool.serverFailureLimit))
        line("tcpkeepalive", String(pool.tcpKeepalive))
        if !isWarmup { line("client_connections", String(pool.clientConnections)) }
        if !isWarmup {
            line("max_item_size", String(pool.maxItemSize))
            line("max_bulk_length", String(pool.maxBulkLength))
            line("strict_keys", String(pool.strictKeys))
            line("client_output_limit", String(pool.clientOutputLimit))
            line("client_query_limit", String(pool.clientQueryLimit))
            line("dedicated_connections", String(pool.dedicatedConnections))
            line("max_subscriptions", String(pool.maxSubscriptions))
            line("slowlog_log_slower_than", String(pool.slowlogSlowerThanMicroseconds))
            line("slowlog_max_len", String(pool.slowlogMaxLength))
            line("hot_keys", String(pool.hotKeys))
            if let announce = pool.announce { line("announce", quoted("\(announce.host):\(announce.port)")) }
            line("client_partial_timeout", String(pool.clientPartialTimeoutMilliseconds))
            line("client_idle_timeout", String(pool.clientIdleTimeoutMilliseconds))
            if !pool.disabledCommands.isEmpty { line("disabled_commands", "[" + pool.disabledCommands.map(quoted).joined(separator: ", ") + "]") }
            if !pool.users.isEmpty {
                out += "\(indent)users:\n"
                for user in pool.users {
                    out += "\(indent) - name: \(quoted(user.name))\n"
                    out += "\(indent)   password_sha256: \(maskSecrets ? "\"********\"" : quoted(SHA256.hex(user.passwordSHA256)))\n"
                    out += "\(indent)   commands: [" + user.commands.map(quoted).joined(separator: ", ") + "]\n"
                    out += "\(indent)   keys: [" + user.keys.map(quoted).joined(separator: ", ") + "]\n"
                }
            }
        }
        if !isWarmup, let tls = pool.clientTLS {
            out += "\(indent)tls:\n"
            out += "\(indent)  cert: \(quoted(tls.cert))\n"
            out += "\(indent)  key: \(quoted(tls.key))\n"
            if let ca = tls.ca { out += "\(indent)  ca: \(quoted(ca))\n" }
            out += "\(indent)  client_auth: \(tls.clientAuth.rawValue)\n"
            out += "\(indent)  min_version: \(tls.minVersion.rawValue)\n"
            out += "\(indent)  user_from_certificate: \(tls.userFromCertificate ? "cn" : "none")\n"
        }
        if let tls = pool.serverTLS {
            out += "\(indent)server_tls:\n"
            if let ca = tls.ca { out += "\(indent)  ca: \(quoted(ca))\n" }
            if let cert = tls.cert { out += "\(indent)  cert: \(quoted(cert))\n" }
            if let key = tls.key { out += "\(indent)  key: \(quoted(key))\n" }
            if let name = tls.serverName { out += "\(indent)  server_name: \(quoted(name))\n" }
            out += "\(indent)  verify: \(tls.verify)\n"
            out += "\(indent)  min_version: \(tls.minVersion.rawValue)\n"
        }
        if pool.distribution == .slots, !pool.slotServers.isEmpty {
            out += "\(indent)slots:\n"
            for (index, server) in pool.servers.enumerated() {
                out += "\(indent)  \(quoted(server.name)): \(quoted(ranges(of: Int32(index), in: pool.slotServers)))\n"
            }
        }
        if let sentinel = pool.sentinel {
            out += "\(indent)sentinel:\n\(indent)  addresses:\n"
            for address in sentinel.addresses {
                out += "\(indent)   - \(quoted(address.host.contains(":") ? "[\(address.host)]:\(address.port)" : "\(address.host):\(address.port)"))\n"
            }
            if let password = sentinel.password { out += "\(indent)  password: \(maskSecrets ? "\"********\"" : quoted(password))\n" }
            if sentinel.tls { out += "\(indent)  tls: true\n" }
            out += "\(indent)servers:\n"
            for server in pool.servers { out += "\(indent) - \(quoted("\(server.name):\(server.weight)"))\n" }
            return out
        }
        out += "\(indent)servers:\n"
        for server in pool.servers {
            out += "\(indent) - \(quoted("\(server.address):\(server.weight)" + (server.hasExplicitName ? " \(server.name)" : "")))\n"
        }
        return out
    }

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
