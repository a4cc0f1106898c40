#if canImport(Glibc)
import Glibc
#endif
import CLibev
import Synchronization
import TernCore

/// What the stats and admin threads read: the active pools and the process state.
final class ControlState: Sendable {
    let plans: Locked<[PoolPlan]>
    let isReady = Atomic<Bool>(false)
    let isDraining = Atomic<Bool>(false)
    let startTime = Int(time(nil))
    let workerCount: Int
    /// The workers' utilisation and how many take new clients.
    let workers: WorkerSet
    let hostname: String
    /// `/metrics` renders so far (requests read in one pass of the admin thread share one).
    let metricsRenders = Atomic<Int>(0)
    /// Clients accepted by pools a reload removed: `total_connections` is the process's
    /// counter and never goes back (it dropped by a removed pool's accepts; stats sweep 30).
    let retiredConnections = Atomic<Int>(0)

    init(plans: [PoolPlan], workerCount: Int, workers: WorkerSet? = nil) {
        self.plans = Locked(plans)
        self.workerCount = workerCount
        self.workers = workers ?? WorkerSet(workers: workerCount, initiallyActive: workerCount, elastic: false)
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, name.count - 1)
        self.hostname = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    var currentPlans: [PoolPlan] { plans.withLock { $0 } }
}

// MARK: - nutcracker stats JSON

enum StatsReport {
    /// nutcracker's stats object: top-level process fields, then one object per pool holding
    /// pool counters and one object per server. Values are summed over worker threads.
    static func json(_ state: ControlState) -> String {
        let now = Int(time(nil))
        let plans = state.currentPlans
        var total = state.retiredConnections.load(ordering: .relaxed), current = 0
        for plan in plans {
            total += plan.shared.totalConnections.load(ordering: .relaxed)
            current += plan.shared.clientCount.load(ordering: .relaxed)
        }
        var out = "{\"service\":\"tern\",\"source\":\(quoted(state.hostname)),\"version\":\(quoted(ternVersion)),"
        out += "\"uptime\":\(now - state.startTime),\"timestamp\":\(now),\"total_connections\":\(total),\"curr_connections\":\(current)"
        for plan in plans {
            let counters = plan.shared.workerCounters
            func sum(_ field: (PoolCounters) -> Int) -> Int { counters.reduce(0) { $0 + field($1) } }
            out += ",\(quoted(plan.config.name)):{"
            out += "\"client_eof\":\(sum { $0.clientEOF.read() }),\"client_err\":\(sum { $0.clientErrors.read() }),"
            out += "\"client_connections\":\(plan.shared.clientCount.load(ordering: .relaxed)),"
            out += "\"server_ejects\":\(sum { $0.serverEjects.read() }),\"forward_error\":\(sum { $0.forwardErrors.read() }),"
            out += "\"fragments\":\(sum { $0.fragments.read() })"
            if plan.config.protocolKind == .redis {
                for (name, value) in plan.sessionSummary { out += ",\(quoted(name)):\(value)" }
            }
            // A warm-up's old servers follow the pool's own, as `warmup_old:<name>` (the old
            // pool's connect failures, timeouts and traffic were shown nowhere; TLS sweep 32).
            var servers = plan.config.servers.indices.map { (plan.config.servers[$0].name, plan.serverCounters[$0]) }
            if let old = plan.warmup {
                servers += old.config.servers.indices.map { ("warmup_old:" + old.config.servers[$0].name, old.serverCounters[$0]) }
            }
            for (name, perWorker) in servers {
                func add(_ field: (ServerCounters) -> Int) -> Int { perWorker.reduce(0) { $0 + field($1) } }
                out += ",\(quoted(name)):{"
                out += "\"server_eof\":\(add { $0.serverEOF.read() }),\"server_err\":\(add { $0.serverErrors.read() }),"
                out += "\"server_timedout\":\(add { $0.serverTimedOut.read() }),\"server_connections\":\(add { $0.serverConnections.read() }),"
                out += "\"server_ejected_at\":\(perWorker.map { $0.serverEjectedAt.read() }.max() ?? 0),"
                out += "\"requests\":\(add { $0.requests.read() }),\"request_bytes\":\(add { $0.requestBytes.read() }),"
                out += "\"responses\":\(add { $0.responses.read() }),\"response_bytes\":\(add { $0.responseBytes.read() }),"
                // nutcracker's meanings: `in_queue` holds the requests not yet sent to the server,
                // `out_queue` those sent and not yet answered (Tern's counters: every request in
                // flight, and the unsent part of them).
                let inFlight = add { $0.inQueue.read() }, inFlightBytes = add { $0.inQueueBytes.read() }
                let unsent = add { $0.outQueue.read() }, unsentBytes = add { $0.outQueueBytes.read() }
                out += "\"in_queue\":\(unsent),\"in_queue_bytes\":\(unsentBytes),"
                out += "\"out_queue\":\(max(0, inFlight - unsent)),\"out_queue_bytes\":\(max(0, inFlightBytes - unsentBytes))}"
            }
            if plan.config.warmup != nil {
                for (name, value) in plan.shared.warmupCounters.report() { out += ",\(quoted(name)):\(value)" }
            }
            if plan.config.distribution == .redisCluster {
                for (name, value) in plan.shared.cluster.report() { out += ",\(quoted(name)):\(value)" }
            }
            if plan.config.sentinel != nil {
                for (name, value) in plan.shared.sentinel.report() { out += ",\(quoted(name)):\(value)" }
            }
            out += "}"
        }
        return out + "}\n"
    }


    /// A JSON string literal (TernCore's `JSONText`, which `tern locate` uses too).
    static func quoted(_ text: String) -> String { JSONText.string(text) }

    // MARK: Prometheus

    /// A label value of the Prometheus text format, quoted: backslash, double quote and line
    /// feed escaped (`\\`, `\"`, `\n`), every other character as it is. (JSON's escapes, such
    /// as `\t` or `\u0001`, are not valid there.)
    static func labelValue(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// `/metrics`: counters and gauges refilled from the workers' counters at each scrape, in
    /// the text format `PrometheusText` writes. The latency histograms are rendered from Tern's
    /// own lock-free buckets (the request path takes no lock).
    static func metrics(_ state: ControlState) -> [UInt8] {
        let text = PrometheusText()
        func counter(_ name: String, _ labels: [(String, String)], _ help: String) -> PrometheusText.Series {
            text.series(name, "counter", labels, help)
        }
        func gauge(_ name: String, _ labels: [(String, String)], _ help: String) -> PrometheusText.Series {
            text.series(name, "gauge", labels, help)
        }
        var histograms = ""
        var oldHistograms = ""
        var commandHistograms = ""
        for plan in state.currentPlans {
            let pool = plan.config.name
            let counters = plan.shared.workerCounters
            func sum(_ field: (PoolCounters) -> Int) -> Int64 { Int64(counters.reduce(0) { $0 + field($1) }) }
            gauge("tern_pool_client_connections", [("pool", pool)], "Open client connections of the pool.")
                .set(Int64(plan.shared.clientCount.load(ordering: .relaxed)))
            gauge("tern_pool_client_connections_limit", [("pool", pool)], "The pool's client_connections limit (0: unlimited).")
                .set(Int64(plan.config.clientConnections))
            for (worker, counter) in counters.enumerated() {
                gauge("tern_worker_client_connections", [("pool", pool), ("worker", String(worker))], "Open client connections of the pool served by each worker thread.")
                    .set(Int64(counter.clients.load(ordering: .relaxed)))
            }
            counter("tern_pool_client_connections_accepted_total", [("pool", pool)], "Client connections accepted by the pool.")
                .increment(by: Int64(plan.shared.totalConnections.load(ordering: .relaxed)))
            for (kind, value) in [("read", sum { $0.reads.read() }), ("write", sum { $0.writes.read() }), ("other", sum { $0.other.read() }), ("local", sum { $0.localReplies.read() })] {
                counter("tern_pool_requests_total", [("pool", pool), ("class", kind)], "Client requests by class (local: answered by Tern itself).").increment(by: value)
            }
            for (kind, value) in [("client_eof", sum { $0.clientEOF.read() }), ("client_error", sum { $0.clientErrors.read() }),
                                  ("forward_error", sum { $0.forwardErrors.read() }), ("bad_request", sum { $0.clientErrorReplies.read() }),
                                  ("accept_error", sum { $0.acceptErrors.read() }), ("refused", sum { $0.refusedClients.read() }),
                                  ("over_limit", sum { $0.overLimit.read() })] {
                counter("tern_pool_errors_total", [("pool", pool), ("kind", kind)], "Client-side errors by kind.").increment(by: value)
            }
            counter("tern_pool_slow_requests_total", [("pool", pool)], "Backend round trips slower than slowlog_log_slower_than (the slow log keeps the newest slowlog_max_len).")
                .increment(by: sum { $0.slowRequests.read() })
            counter("tern_pool_fragments_total", [("pool", pool)], "Sub-requests sent for requests split over servers.").increment(by: sum { $0.fragments.read() })
            for (kind, value) in [("exec", sum { $0.transactions.read() }), ("execabort", sum { $0.transactionsAborted.read() })] {
                counter("tern_pool_transactions_total", [("pool", pool), ("outcome", kind)], "Redis MULTI/EXEC transactions sent to a server, and refused before (EXECABORT).").increment(by: value)
            }
            counter("tern_pool_watches_total", [("pool", pool)], "Redis WATCH commands (each pins a dedicated connection until EXEC, DISCARD, UNWATCH or RESET).").increment(by: sum { $0.watches.read() })
            counter("tern_pool_blocking_requests_total", [("pool", pool)], "Redis blocking commands (BLPOP, XREAD BLOCK, …) run on dedicated connections.").increment(by: sum { $0.blockingRequests.read() })
            counter("tern_pool_dedicated_leases_total", [("pool", pool)], "Dedicated backend connections leased to one client (WATCH, blocking commands).").increment(by: sum { $0.dedicatedLeases.read() })
            gauge("tern_pool_dedicated_connections_in_use", [("pool", pool)], "Dedicated backend connections leased now: pinned by a WATCH or carrying a blocking command.")
                .set(sum { $0.dedicatedInUse.read() })
            gauge("tern_pool_subscribed_clients", [("pool", pool)], "Redis clients in subscribed mode (pub/sub).").set(sum { $0.subscribedClients.read() })
            gauge("tern_pool_blocked_clients", [("pool", pool)], "Redis clients blocked in a blocking command (BLPOP, XREAD BLOCK, …).").set(sum { $0.blockedClients.read() })
            counter("tern_pool_pubsub_messages_total", [("pool", pool)], "Pub/sub messages delivered to subscribed clients.").increment(by: sum { $0.messagesDelivered.read() })
            counter("tern_pool_pubsub_subscription_requests_total", [("pool", pool)], "SUBSCRIBE/UNSUBSCRIBE family requests sent to servers on push connections.").increment(by: sum { $0.subscriptionChanges.read() })
            if plan.config.distribution == .redisCluster {
                let cluster = plan.shared.cluster
                for (kind, value) in [("moved", cluster.movedRedirects.load(ordering: .relaxed)), ("ask", cluster.askRedirects.load(ordering: .relaxed))] {
                    counter("tern_cluster_redirects_total", [("pool", pool), ("kind", kind)], "Redis Cluster redirects (-MOVED, -ASK) followed by Tern; clients never see them.")
                        .increment(by: Int64(value))
                }
                counter("tern_cluster_redirects_given_up_total", [("pool", pool)], "Redirect errors passed to clients: more than 5 redirects or 6 TRYAGAIN retries, or a node no slot map brought in time.")
                    .increment(by: Int64(cluster.redirectsGivenUp.load(ordering: .relaxed)))
                counter("tern_cluster_tryagain_retries_total", [("pool", pool)], "Multi-key requests answered -TRYAGAIN during a slot migration and sent again after a pause.")
                    .increment(by: Int64(cluster.tryAgainRetries.load(ordering: .relaxed)))
                for (outcome, value) in [("ok", cluster.refreshes.load(ordering: .relaxed)), ("error", cluster.refreshFailures.load(ordering: .relaxed))] {
                    counter("tern_cluster_slot_map_refreshes_total", [("pool", pool), ("outcome", outcome)], "CLUSTER SLOTS refreshes of the slot map, by outcome.")
                        .increment(by: Int64(value))
                }
                gauge("tern_cluster_slot_map_version", [("pool", pool)], "Slot maps applied so far (0: none known, clients get -CLUSTERDOWN).")
                    .set(Int64(cluster.mapVersion.load(ordering: .relaxed)))
                gauge("tern_cluster_slot_map_refreshed_timestamp_seconds", [("pool", pool)], "Unix time of the last CLUSTER SLOTS answered (0: never).")
                    .set(Int64(cluster.refreshedAt.load(ordering: .relaxed)))
                gauge("tern_cluster_nodes", [("pool", pool), ("role", "master")], "Nodes of the slot map in use, by role.").set(Int64(cluster.masters.load(ordering: .relaxed)))
                gauge("tern_cluster_nodes", [("pool", pool), ("role", "replica")], "Nodes of the slot map in use, by role.")
                    .set(Int64(cluster.nodes.load(ordering: .relaxed) - cluster.masters.load(ordering: .relaxed)))
                gauge("tern_cluster_slots_assigned", [("pool", pool)], "Hash slots some master serves in the slot map in use (16384 when the cluster is whole).")
                    .set(Int64(cluster.slotsAssigned.load(ordering: .relaxed)))
            }
            if plan.config.sentinel != nil {
                let sentinel = plan.shared.sentinel
                counter("tern_sentinel_switches_total", [("pool", pool)], "Master address changes (failovers) that sentinels reported and Tern applied.")
                    .increment(by: Int64(sentinel.switches.load(ordering: .relaxed)))
                for (outcome, value) in [("ok", sentinel.refreshes.load(ordering: .relaxed)), ("error", sentinel.refreshFailures.load(ordering: .relaxed))] {
                    counter("tern_sentinel_refreshes_total", [("pool", pool), ("outcome", outcome)], "Rounds of asking the sentinels for the masters' addresses, by outcome.")
                        .increment(by: Int64(value))
                }
                counter("tern_sentinel_role_mismatches_total", [("pool", pool)], "Addresses a sentinel named whose server did not answer ROLE master (not used).")
                    .increment(by: Int64(sentinel.roleMismatches.load(ordering: .relaxed)))
                gauge("tern_sentinel_masters_known", [("pool", pool)], "Masters of the pool whose address a sentinel has given.")
                    .set(Int64(sentinel.mastersKnown.load(ordering: .relaxed)))
            }
            counter("tern_pool_server_ejects_total", [("pool", pool)], "Servers ejected from the pool (auto_eject_hosts), summed over workers.")
                .increment(by: sum { $0.serverEjects.read() })
            counter("tern_pool_auth_failures_total", [("pool", pool)], "Failed client authentications (AUTH, HELLO AUTH, memcached set/SASL); 10 in a row close the client.")
                .increment(by: sum { $0.authFailures.read() })
            if plan.clientTLS != nil {
                counter("tern_pool_tls_handshakes_total", [("pool", pool)], "TLS client handshakes completed.")
                    .increment(by: sum { $0.tlsHandshakes.read() })
                counter("tern_pool_tls_handshake_failures_total", [("pool", pool)], "TLS client handshakes that failed or timed out (plain-text clients on the TLS port among them).")
                    .increment(by: sum { $0.tlsHandshakeFailures.read() })
            }
            // The pool's servers as `tern_server_*`, a warm-up's old ones as `tern_warmup_old_server_*`
            // (same labels: the pool is the new pool's name, the server the old server's).
            var servers = plan.config.servers.indices.map { (plan.config.servers[$0].name, plan.serverCounters[$0], "tern_server", "the server") }
            if let old = plan.warmup {
                servers += old.config.servers.indices.map { (old.config.servers[$0].name, old.serverCounters[$0], "tern_warmup_old_server", "the warm-up's old server") }
            }
            for (name, perWorker, family, what) in servers {
                func add(_ field: (ServerCounters) -> Int) -> Int64 { Int64(perWorker.reduce(0) { $0 + field($1) }) }
                let labels = [("pool", pool), ("server", name)]
                counter("\(family)_requests_total", labels, "Requests sent to \(what).").increment(by: add { $0.requests.read() })
                counter("\(family)_responses_total", labels, "Replies received from \(what).").increment(by: add { $0.responses.read() })
                counter("\(family)_request_bytes_total", labels, "Request bytes sent to \(what).").increment(by: add { $0.requestBytes.read() })
                counter("\(family)_response_bytes_total", labels, "Reply bytes received from \(what).").increment(by: add { $0.responseBytes.read() })
                for (kind, value) in [("eof", add { $0.serverEOF.read() }), ("error", add { $0.serverErrors.read() }), ("timeout", add { $0.serverTimedOut.read() })] {
                    counter("\(family)_errors_total", labels + [("kind", kind)], "Connection errors of \(what) by kind.").increment(by: value)
                }
                counter("\(family)_ejections_total", labels, "Times \(what) was ejected, summed over workers.").increment(by: add { $0.ejections.read() })
                gauge("\(family)_in_flight", labels, "Requests sent to \(what) and not yet answered.").set(add { $0.inQueue.read() })
                gauge("\(family)_connections", labels, "Open connections to \(what).").set(add { $0.serverConnections.read() })
                if family == "tern_server" {
                    histograms += latencyHistogram(pool: pool, server: name, perWorker)
                } else {
                    oldHistograms += latencyHistogram(pool: pool, server: name, perWorker, family: "tern_warmup_old_server_latency_seconds")
                }
            }
            let isRedis = plan.config.protocolKind == .redis
            for row in 0..<CommandStats.rows {
                let tables = plan.shared.commandStats
                let requests = tables.reduce(0) { $0 + $1.requests(row) }
                guard requests > 0, let command = CommandStats.name(row, isRedis: isRedis) else { continue }
                counter("tern_command_requests_total", [("pool", pool), ("command", command)], "Client requests by command (the command table's names; memcached's commands for memcached pools).")
                    .increment(by: Int64(requests))
                commandHistograms += commandHistogram(pool: pool, command: command, row: row, tables)
            }
            for (key, requests, _) in HotKeys.top(plan.shared.hotKeys, limit: hotKeysInMetrics) {
                gauge("tern_hot_key_requests", [("pool", pool), ("key", printable(key))], "Estimated requests for the pool's most requested keys (sampled; halved every minute).")
                    .set(Int64(requests))
            }
            if plan.config.warmup != nil {
                for (name, value) in plan.shared.warmupCounters.report() where name != "warmup_new_hit_ratio_basis_points" {
                    counter("tern_\(name)_total", [("pool", pool)], "Warm-up: \(String(name.dropFirst("warmup_".count).map { $0 == "_" ? " " : $0 })).")
                        .increment(by: Int64(value))
                }
                let warmup = plan.shared.warmupCounters
                let new = warmup.newHits.load(ordering: .relaxed), old = warmup.oldHits.load(ordering: .relaxed)
                gauge("tern_warmup_new_hit_ratio", [("pool", pool)], "Warm-up: share of hits answered by the new pool.")
                    .set(new + old == 0 ? 0 : Double(new) / Double(new + old))
            }
        }
        // Per worker thread, over all pools: utilisation, clients, requests, whether it takes
        // new clients (elastic workers; see WorkerScalingPolicy).
        let plans = state.currentPlans
        let active = state.workers.activeCount
        for worker in 0..<state.workers.loads.count {
            let label = [("worker", String(worker))]
            gauge("tern_worker_utilization", label, "CPU time of the worker thread over wall-clock time in the last second (0-1).")
                .set(state.workers.utilisation(worker))
            var clients = 0, requests = 0
            for plan in plans where worker < plan.shared.workerCounters.count {
                let counters = plan.shared.workerCounters[worker]
                clients += counters.clients.load(ordering: .relaxed)
                requests += counters.reads.read() + counters.writes.read() + counters.other.read() + counters.localReplies.read()
            }
            gauge("tern_worker_clients", label, "Open client connections served by the worker thread, all pools.").set(Int64(clients))
            counter("tern_worker_requests_total", label, "Client requests served by the worker thread, all pools.").increment(by: Int64(requests))
            counter("tern_worker_clients_moved_total", label, "Idle clients the worker gave to a less loaded worker (elastic workers, while it was busy).")
                .increment(by: Int64(state.workers.loads[worker].movedOut.load(ordering: .relaxed)))
            gauge("tern_worker_active", label, "1 when the worker takes new clients (elastic workers: the first ones, more as load needs), 0 when it only serves the clients it has.")
                .set(Int64(worker < active ? 1 : 0))
        }
        counter("tern_admin_metrics_renders_total", [], "Renders of /metrics: requests the admin thread reads at once (a scrape storm) share one.")
            .increment(by: Int64(state.metricsRenders.wrappingAdd(1, ordering: .relaxed).newValue))
        let idle = state.workers.idleCPUsPPM.load(ordering: .relaxed)
        if idle >= 0 {
            gauge("tern_idle_cpus", [], "Elastic workers: CPUs idle in the last second among those Tern may use, within its cgroup's CPU quota; another worker takes clients only while at least --activate-idle were.")
                .set(Double(idle) / 1_000_000)
            counter("tern_worker_activation_held_seconds_total", [], "Elastic workers: seconds in which the active workers were busy enough to activate one more, but fewer than --activate-idle CPUs were idle.")
                .increment(by: Int64(state.workers.heldSeconds.load(ordering: .relaxed)))
        }
        var buffer = text.bytes
        if !histograms.isEmpty {
            buffer += Array("# HELP tern_server_latency_seconds Backend round-trip time, from the request being queued for the server to its reply.\n".utf8)
            buffer += Array("# TYPE tern_server_latency_seconds histogram\n".utf8)
            buffer += Array(histograms.utf8)
        }
        if !oldHistograms.isEmpty {
            buffer += Array("# HELP tern_warmup_old_server_latency_seconds Round-trip time to a warm-up's old server, from the request being queued for it to its reply.\n".utf8)
            buffer += Array("# TYPE tern_warmup_old_server_latency_seconds histogram\n".utf8)
            buffer += Array(oldHistograms.utf8)
        }
        if !commandHistograms.isEmpty {
            buffer += Array("# HELP tern_command_latency_seconds Client request latency by command, from the request being read to its reply being ready.\n".utf8)
            buffer += Array("# TYPE tern_command_latency_seconds histogram\n".utf8)
            buffer += Array(commandHistograms.utf8)
        }
        return buffer
    }

    /// Hot keys in /metrics: the few hottest per pool (/hotkeys has more).
    static let hotKeysInMetrics = 5

    static func commandHistogram(pool: String, command: String, row: Int, _ tables: [CommandStats]) -> String {
        let labels = "pool=\(labelValue(pool)),command=\(labelValue(command))"
        var out = ""
        var cumulative = 0
        for (index, bound) in latencyBucketBounds.enumerated() {
            cumulative += tables.reduce(0) { $0 + $1.bucket(row, index) }
            out += "tern_command_latency_seconds_bucket{\(labels),le=\"\(Double(bound) / 1_000_000)\"} \(cumulative)\n"
        }
        cumulative += tables.reduce(0) { $0 + $1.bucket(row, latencyBucketBounds.count) }
        out += "tern_command_latency_seconds_bucket{\(labels),le=\"+Inf\"} \(cumulative)\n"
        out += "tern_command_latency_seconds_sum{\(labels)} \(Double(tables.reduce(0) { $0 + $1.latencySum(row) }) / 1_000_000)\n"
        out += "tern_command_latency_seconds_count{\(labels)} \(cumulative)\n"
        return out
    }

    /// A key as text for labels and JSON: printable characters kept (UTF-8 included), every
    /// other byte and the backslash as \xNN, so that two keys never read the same. Not cut:
    /// callers bound the length (hot keys hold at most 256 bytes, longer ones as head, length
    /// and tail; slow-log arguments 128). A 128-byte cut here made two hot keys one label,
    /// and `/metrics` dropped the second (stats sweep 30).
    static func printable(_ key: [UInt8]) -> String {
        var out = ""
        var index = 0
        func escape(_ byte: UInt8) { out += "\\x" + (byte < 16 ? "0" : "") + String(byte, radix: 16) }
        while index < key.count {
            let byte = key[index]
            if byte < 0x80 {
                if byte >= 0x20, byte < 0x7f, byte != UInt8(ascii: "\\") { out.unicodeScalars.append(Unicode.Scalar(byte)) } else { escape(byte) }
                index += 1
                continue
            }
            // A whole, valid UTF-8 sequence of a printable character (not C1 controls).
            let length = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : byte >= 0xc2 ? 2 : 0
            if length > 0, index + length <= key.count, let text = String(validating: key[index..<(index + length)], as: UTF8.self),
               let scalar = text.unicodeScalars.first, scalar.value >= 0xa0 {
                out += text
                index += length
            } else {
                escape(byte)
                index += 1
            }
        }
        return out
    }

    /// `/slowlog`: every pool's slow log, newest first.
    static func slowlogJSON(_ state: ControlState) -> String {
        var out = "{"
        for (index, plan) in state.currentPlans.enumerated() {
            if index > 0 { out += "," }
            out += "\(quoted(plan.config.name)):["
            for (position, entry) in plan.shared.slowLog.newest(-1).enumerated() {
                if position > 0 { out += "," }
                out += "{\"id\":\(entry.id),\"time\":\(entry.time),\"duration_us\":\(entry.microseconds),\"command\":["
                out += entry.arguments.map { quoted(printable($0)) }.joined(separator: ",")
                out += "],\"client\":\(quoted(entry.client)),\"client_name\":\(quoted(entry.clientName)),\"server\":\(quoted(entry.server))}"
            }
            out += "]"
        }
        return out + "}\n"
    }

    /// `/hotkeys`: each pool's most requested keys with estimated counts and their error bound.
    static func hotKeysJSON(_ state: ControlState, limit: Int = 20) -> String {
        var out = "{"
        for (index, plan) in state.currentPlans.enumerated() {
            if index > 0 { out += "," }
            out += "\(quoted(plan.config.name)):["
            out += HotKeys.top(plan.shared.hotKeys, limit: limit).map { key, requests, error in
                "{\"key\":\(quoted(printable(key))),\"requests\":\(requests),\"error\":\(error)}"
            }.joined(separator: ",")
            out += "]"
        }
        return out + "}\n"
    }

    static func latencyHistogram(pool: String, server: String, _ perWorker: [ServerCounters], family: String = "tern_server_latency_seconds") -> String {
        let labels = "pool=\(labelValue(pool)),server=\(labelValue(server))"
        var out = ""
        var cumulative = 0
        for (index, bound) in latencyBucketBounds.enumerated() {
            cumulative += perWorker.reduce(0) { $0 + $1.latencyBuckets[index].count.read() }
            out += "\(family)_bucket{\(labels),le=\"\(Double(bound) / 1_000_000)\"} \(cumulative)\n"
        }
        cumulative += perWorker.reduce(0) { $0 + $1.latencyBuckets[latencyBucketBounds.count].count.read() }
        out += "\(family)_bucket{\(labels),le=\"+Inf\"} \(cumulative)\n"
        let sum = Double(perWorker.reduce(0) { $0 + $1.latencySumMicroseconds.read() }) / 1_000_000
        out += "\(family)_sum{\(labels)} \(sum)\n"
        out += "\(family)_count{\(labels)} \(cumulative)\n"
        return out
    }
}

/// The Prometheus text format (0.0.4) of `/metrics`, written here: each family's `# HELP` and
/// `# TYPE` lines once, then its series in the order added; families in the order first named.
/// swift-prometheus's registry, used before, copied a family's table for each series it added,
/// so a render grew with the square of the servers (1.4 s for 2,000), and listed families and
/// series in hash order. Made and used by one render on one thread.
final class PrometheusText {
    private var known: [String: Int] = [:]
    private var families: [(head: [UInt8], series: [UInt8])] = []

    /// One series: its value is written by `increment(by:)` (a counter's total) or `set`.
    struct Series {
        let text: PrometheusText
        let family: Int
        let name: String
        let labels: [(String, String)]
        func increment(by value: Int64) { text.append(self, "\(value)") }
        func set(_ value: Int64) { set(Double(value)) }
        func set(_ value: Double) { text.append(self, "\(value)") }
    }

    /// `type`: "counter" or "gauge"; `name` and the label names are valid Prometheus names.
    func series(_ name: String, _ type: String, _ labels: [(String, String)], _ help: String) -> Series {
        if let family = known[name] { return Series(text: self, family: family, name: name, labels: labels) }
        var head = Array("# HELP \(name) ".utf8)
        for byte in help.utf8 {
            switch byte {
            case UInt8(ascii: "\\"): head += Array("\\\\".utf8)
            case UInt8(ascii: "\n"): head += Array("\\n".utf8)
            default: head.append(byte)
            }
        }
        head += Array("\n# TYPE \(name) \(type)\n".utf8)
        known[name] = families.count
        families.append((head, []))
        return Series(text: self, family: families.count - 1, name: name, labels: labels)
    }

    /// Series written so far (name and labels): a scrape with one twice is refused whole.
    private var written: Set<String> = []

    /// Writes the series' line; a series written before keeps its first value (two hot keys
    /// longer than the label's 128 bytes can share one label: the hotter one is listed first).
    private func append(_ series: Series, _ value: String) {
        var line = series.name
        if !series.labels.isEmpty {
            line += "{" + series.labels.map { "\($0.0)=\(StatsReport.labelValue($0.1))" }.joined(separator: ",") + "}"
        }
        guard written.insert(line).inserted else { return }
        families[series.family].series += Array("\(line) \(value)\n".utf8)
    }

    var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(families.reduce(0) { $0 + $1.head.count + $1.series.count })
        for family in families { out += family.head + family.series }
        return out
    }
}

// MARK: - The admin endpoint's routes (served by `ControlServer`, ControlHTTP.swift)

/// The admin HTTP endpoint: GET or HEAD /metrics, /healthz, /readyz, /config, /locate, /slowlog,
/// /hotkeys.
/// To add a path, add a case to `route`.
enum AdminEndpoint {
    static func route(method: String, path: String, query: String, state: ControlState,
                      configText: @Sendable () -> String) -> ControlResponse {
        guard method == "GET" || method == "HEAD" else {
            return ControlResponse(405, "text/plain", Array("only GET and HEAD\n".utf8), headers: [("Allow", "GET, HEAD")])
        }
        switch path {
        case "/metrics":
            return ControlResponse(200, "text/plain; version=0.0.4; charset=utf-8", StatsReport.metrics(state))
        case "/healthz":
            return .text(200, "ok\n")
        case "/readyz":
            if state.isDraining.load(ordering: .relaxed) { return .text(503, "draining\n") }
            return state.isReady.load(ordering: .relaxed) ? .text(200, "ready\n") : .text(503, "starting\n")
        case "/config":
            return ControlResponse(200, "application/yaml", Array(configText().utf8))
        case "/locate":
            return locate(query: query, plans: state.currentPlans)
        case "/slowlog":
            return ControlResponse(200, "application/json", Array(StatsReport.slowlogJSON(state).utf8))
        case "/hotkeys":
            return ControlResponse(200, "application/json", Array(StatsReport.hotKeysJSON(state).utf8))
        default:
            return .text(404, "not found\n")
        }
    }

    /// The paths whose response reads the query (the others ignore it).
    static let queryPaths: Set<String> = ["/locate"]

    /// Longest key `/locate` takes (memcached's key limit).
    static let maxLocateKeyLength = 250

    /// `/locate?pool=P&key=K`: where the running config puts key K in pool P, and in its old
    /// pool for a warm-up (`KeyLocation.json` documents the reply). 400 with the reason for a
    /// missing, repeated or unknown pool, a missing, empty or over-long key, or a bad escape.
    static func locate(query: String, plans: [PoolPlan]) -> ControlResponse {
        let parameters: [(name: String, value: [UInt8])]
        switch ControlHTTP.queryParameters(query) {
        case let .success(decoded): parameters = decoded
        case let .failure(error): return error.response
        }
        for name in ["pool", "key"] where parameters.filter({ $0.name == name }).count > 1 {
            return .text(400, "bad request: parameter '\(name)' given more than once\n")
        }
        guard let pool = parameters.first(where: { $0.name == "pool" })?.value, !pool.isEmpty else {
            return .text(400, "bad request: missing parameter 'pool' (/locate?pool=NAME&key=KEY)\n")
        }
        guard let plan = plans.first(where: { $0.config.name.utf8.elementsEqual(pool) }) else {
            return .text(400, "bad request: unknown pool '\(String(decoding: pool, as: UTF8.self))'\n")
        }
        guard let key = parameters.first(where: { $0.name == "key" })?.value, !key.isEmpty else {
            return .text(400, "bad request: missing or empty parameter 'key' (/locate?pool=NAME&key=KEY)\n")
        }
        guard key.count <= maxLocateKeyLength else {
            return .text(400, "bad request: key longer than \(maxLocateKeyLength) bytes\n")
        }
        return ControlResponse(200, "application/json", Array(KeyLocator(pool: plan.config).locate(key).json(key: key).utf8))
    }
}
