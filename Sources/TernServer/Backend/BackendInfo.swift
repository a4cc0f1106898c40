#if canImport(Glibc)
import Glibc
#endif
import CLibev
import TernCore

/// One Redis server's `INFO` (a memcached server's `stats`), as last fetched by the
/// `BackendInfoPoller`.
struct BackendInfo: Sendable {
    var address: String
    /// `name:value` lines of every section.
    var fields: [String: String] = [:]
    /// Unix time (seconds) of the last successful fetch; 0 when none succeeded.
    var fetchedAt = 0
    /// Why the last fetch failed (nil: it succeeded).
    var error: String?

    /// A server is reported down when its last fetch failed or is older than this.
    static let staleAfter = 5

    /// Each server of `plan` as a `<prefix>server<i>` line (its name, up or down and why), and
    /// the fresh figures of those up. A warm-up's old pool is polled too (its plan's own
    /// `backendInfo`), and reported with `warmup_old_` in front (TLS sweep 32: an old server
    /// failing every handshake showed nowhere).
    static func serverLines(_ plan: PoolPlan, prefix: String) -> (live: [BackendInfo], lines: [(String, String)]) {
        let known = plan.shared.backendInfo.withLock { $0 }
        let now = Int(time(nil))
        var live: [BackendInfo] = []
        var lines: [(String, String)] = []
        for (index, server) in plan.config.servers.enumerated() {
            let info = known[server.name]
            if let info, info.error == nil, now - info.fetchedAt <= staleAfter {
                live.append(info)
                lines.append(("\(prefix)server\(index)", "name=\(server.name),status=up,age_seconds=\(now - info.fetchedAt),used_memory=\(info.fields["used_memory"] ?? "?"),total_commands_processed=\(info.fields["total_commands_processed"] ?? "?")"))
            } else {
                let reason = info?.error ?? (info == nil ? "not polled yet" : "no answer for \(now - (info?.fetchedAt ?? now)) s")
                lines.append(("\(prefix)server\(index)", "name=\(server.name),status=down,error=\(reason.map { $0 == "," || $0 == "\r" || $0 == "\n" ? " " : $0 }.map(String.init).joined())"))
            }
        }
        return (live, lines)
    }

    /// The INFO fields applications read from Redis, summed over the pool's live servers, and
    /// a `# Backends` section saying which servers answered. A server that did not answer is
    /// counted in `backends_down` and left out of the sums (never added as zero); with no
    /// server answering, the summed fields are left out.
    static func aggregate(_ plan: PoolPlan) -> (memory: [(String, String)], stats: [(String, String)], keyspace: [(String, String)], servers: [(String, String)]) {
        let (live, lines) = serverLines(plan, prefix: "")
        var servers = [("backends_up", String(live.count)), ("backends_down", String(plan.config.servers.count - live.count))] + lines
        if let old = plan.warmup {
            let (oldLive, oldLines) = serverLines(old, prefix: "warmup_old_")
            servers += [("warmup_old_backends_up", String(oldLive.count)), ("warmup_old_backends_down", String(old.config.servers.count - oldLive.count))] + oldLines
        }
        guard !live.isEmpty else { return ([], [], [], servers) }
        // Saturating: figures come from the servers, and a trap here would end the process.
        func sum(_ field: String) -> Int { live.reduce(0) { add($0, Int($1.fields[field] ?? "") ?? 0) } }
        let used = sum("used_memory")
        // One server without a limit makes the pool's limit "none" (0), as Redis says for one.
        let maxmemory = live.contains { Int($0.fields["maxmemory"] ?? "0") == 0 } ? 0 : sum("maxmemory")
        let policies = Set(live.compactMap { $0.fields["maxmemory_policy"] })
        let memory: [(String, String)] = [
            ("used_memory", String(used)), ("used_memory_human", human(used)),
            ("used_memory_rss", String(sum("used_memory_rss"))), ("used_memory_rss_human", human(sum("used_memory_rss"))),
            ("used_memory_peak", String(sum("used_memory_peak"))), ("used_memory_peak_human", human(sum("used_memory_peak"))),
            ("maxmemory", String(maxmemory)), ("maxmemory_human", human(maxmemory)),
            ("maxmemory_policy", policies.count == 1 ? policies.first! : policies.isEmpty ? "unknown" : "mixed"),
        ]
        let stats: [(String, String)] = ["total_commands_processed", "instantaneous_ops_per_sec", "keyspace_hits", "keyspace_misses",
                                         "expired_keys", "evicted_keys", "total_net_input_bytes", "total_net_output_bytes"]
            .map { ($0, String(sum($0))) }
        // `db0:keys=3,expires=1,avg_ttl=500`: keys and expires summed per database, avg_ttl
        // weighted by each server's expiring keys.
        var databases: [Int: (keys: Int, expires: Int, ttlWeighted: Double)] = [:]
        for info in live {
            for (name, value) in info.fields where name.hasPrefix("db") {
                guard let number = Int(name.dropFirst(2)) else { continue }
                var parsed: [Substring: Int] = [:]
                for pair in value.split(separator: ",") {
                    let parts = pair.split(separator: "=", maxSplits: 1)
                    if parts.count == 2 { parsed[parts[0]] = Int(parts[1]) ?? 0 }
                }
                var entry = databases[number] ?? (0, 0, 0)
                entry.keys = add(entry.keys, parsed["keys"] ?? 0)
                entry.expires = add(entry.expires, parsed["expires"] ?? 0)
                entry.ttlWeighted += Double(parsed["avg_ttl"] ?? 0) * Double(parsed["expires"] ?? 0)
                databases[number] = entry
            }
        }
        let keyspace = databases.keys.sorted().map { number in
            let entry = databases[number]!
            return ("db\(number)", "keys=\(entry.keys),expires=\(entry.expires),avg_ttl=\(entry.expires == 0 ? 0 : Int(min(entry.ttlWeighted / Double(entry.expires), 9e18)))")
        }
        return (memory, stats, keyspace, servers)
    }

    /// `a + b`, held at Int.max rather than trapping.
    static func add(_ a: Int, _ b: Int) -> Int {
        let (sum, overflow) = a.addingReportingOverflow(b)
        return overflow ? (b < 0 ? Int.min : Int.max) : sum
    }

    /// Redis's `bytesToHuman`: 1023B, 1.00K, 2.50M, …
    static func human(_ bytes: Int) -> String {
        guard bytes < 1 << 60 else { return "\(bytes)B" }
        let units = ["K", "M", "G", "T", "P"]
        guard bytes >= 1024 else { return "\(bytes)B" }
        var scale = 1024
        for (index, unit) in units.enumerated() {
            if bytes < scale * 1024 || index == units.count - 1 {
                let hundredths = (bytes * 100 + scale / 2) / scale
                let fraction = hundredths % 100
                return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)\(unit)"
            }
            scale *= 1024
        }
        return "\(bytes)B"
    }

    /// Parses INFO's text into `name:value` pairs (section headers and blank lines skipped).
    /// memcached's `STAT name value` lines.
    static func parseStats(_ text: [UInt8]) -> [String: String] {
        var fields: [String: String] = [:]
        for line in text.split(separator: 0x0a) {
            let words = line.split(separator: 0x20, maxSplits: 2)
            guard words.count == 3, words[0].elementsEqual("STAT".utf8) else { continue }
            var value = words[2]
            if value.last == 0x0d { value = value.dropLast() }
            fields[String(decoding: words[1], as: UTF8.self)] = String(decoding: value, as: UTF8.self)
        }
        return fields
    }

    /// The memcached `stats` figures dashboards read (items, memory, hits and misses,
    /// evictions), summed over the servers whose last poll is fresh, and how many answered.
    /// With no server answering, only the counts of servers up and down.
    static func memcachedTotals(_ plan: PoolPlan) -> [(String, String)] {
        let live = serverLines(plan, prefix: "").live
        var lines = [("backends_up", String(live.count)), ("backends_down", String(plan.config.servers.count - live.count))]
        if let old = plan.warmup {
            let up = serverLines(old, prefix: "").live.count
            lines += [("warmup_old_backends_up", String(up)), ("warmup_old_backends_down", String(old.config.servers.count - up))]
        }
        guard !live.isEmpty else { return lines }
        for field in memcachedSummed {
            lines.append((field, String(live.reduce(0) { add($0, Int($1.fields[field] ?? "") ?? 0) })))
        }
        return lines
    }

    static let memcachedSummed = [
        "curr_items", "total_items", "bytes", "limit_maxbytes", "evictions", "reclaimed", "expired_unfetched",
        "evicted_unfetched", "cmd_get", "cmd_set", "cmd_flush", "cmd_touch", "get_hits", "get_misses", "get_expired",
        "get_flushed", "delete_hits", "delete_misses", "incr_hits", "incr_misses", "decr_hits", "decr_misses",
        "cas_hits", "cas_misses", "cas_badval", "touch_hits", "touch_misses",
    ]

    static func parse(_ text: [UInt8]) -> [String: String] {
        var fields: [String: String] = [:]
        for line in text.split(separator: 0x0a) {
            var line = line
            if line.last == 0x0d { line = line.dropLast() }
            guard let first = line.first, first != UInt8(ascii: "#"), let colon = line.firstIndex(of: UInt8(ascii: ":")) else { continue }
            fields[String(decoding: line[line.startIndex..<colon], as: UTF8.self)] = String(decoding: line[(colon + 1)...], as: UTF8.self)
        }
        return fields
    }
}
