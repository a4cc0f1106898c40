#if canImport(Glibc)
import Glibc
#endif
import CLibev
import Synchronization
import TernCore

// Sentinel-managed pools (`sentinel:`): each server is a master group name.
//
//     watcher thread ── SENTINEL get-master-addr-by-name (every sentinel), then ROLE on the
//          ▲            address most named (a sentinel that lies is outvoted or caught) ──┐
//          │  every second; at most every 200 ms while a master's connections fail          ▼
//     worker loops ◄── new PoolPlan (same server names, new addresses) ◄── main thread applies
//                      (a server whose address changed gets new connections; placement, made
//                      from names, does not move)
//
// Thread confinement as for cluster pools: `SentinelState` is shared (atomics, locks), the
// watcher's bookkeeping lives on its thread, the applied addresses on the main thread.

/// A Sentinel pool's figures and mailbox (kept across reloads with the pool's `PoolShared`).
final class SentinelState: DiscoveryMailbox<[String: ClusterNode]>, @unchecked Sendable {
    /// Address changes applied (failovers seen), not counting the first address of a master.
    let switches = Atomic<Int>(0)
    /// Addresses sentinels gave whose server did not say `ROLE` master (not used).
    let roleMismatches = Atomic<Int>(0)
    /// Masters whose address is known now.
    let mastersKnown = Atomic<Int>(0)
    /// The addresses in use, for INFO (master name → host:port).
    let current = Locked<[String: String]>([:])

    func report() -> [(String, Int)] {
        [("sentinel_masters_known", mastersKnown.load(ordering: .relaxed)),
         ("sentinel_switches", switches.load(ordering: .relaxed)),
         ("sentinel_refreshes", refreshes.load(ordering: .relaxed)),
         ("sentinel_refresh_failures", refreshFailures.load(ordering: .relaxed)),
         ("sentinel_role_mismatches", roleMismatches.load(ordering: .relaxed))]
    }
}

/// Asks the sentinels of every Sentinel pool for its masters' addresses, on a thread of its
/// own with blocking, bounded I/O (`RedisProbe`), and checks each address with `ROLE`.
final class SentinelWatcher: Sendable {
    struct Job: Sendable {
        var pool: String
        var masters: [String]
        var sentinels: [ClusterNode]
        var sentinelPassword: String?
        var serverPassword: String?
        /// `server_tls`: how the masters are reached (ROLE); nil: plain TCP.
        var serverTLS: TLSContext?
        /// The same context when `sentinel: {tls: true}`: the sentinels listen on `tls-port`.
        var sentinelTLS: TLSContext?
        var state: SentinelState
    }

    let jobs = Locked<[Job]>([])
    /// The addresses in use per pool, set by the main thread (the watcher compares against them).
    let known = Locked<[String: [String: ClusterNode]]>([:])

    /// Seconds between two rounds of asking the sentinels when nothing announced a switch.
    static let period = 1.0

    func start() {
        Threads.start("tern-sentinel") { self.run() }
    }

    private func run() {
        var clock = RefreshClock()
        let subscriptions = Subscriptions()
        let unreachable = Unreachable()
        while true {
            let now = RedisProbe.now()
            let current = jobs.withLock { $0 }
            // `+switch-master`/`+promoted-slave` from a sentinel: every pool it serves asks again.
            for sentinel in subscriptions.poll(current, now: now, waitMilliseconds: 50) {
                for job in current where job.sentinels.contains(where: { $0.name == sentinel }) {
                    job.state.requestRefresh()
                    clock.askSoon(job.pool)
                }
            }
            for job in current {
                guard clock.isDue(job.pool, now: now, requested: job.state.refreshRequested, period: Self.period) else { continue }
                let previous = known.withLock { $0[job.pool] } ?? [:]
                let found = Self.discover(job, previous: previous, unreachable: unreachable)
                if found != previous {
                    known.withLock { $0[job.pool] = found }
                    job.state.discovered.withLock { $0 = found }
                }
            }
        }
    }

    /// One connection per sentinel subscribed to `+switch-master` and `+promoted-slave` (the
    /// watcher thread's own): a failover is noticed when the sentinels announce it, not at the
    /// next poll.
    private final class Subscriptions {
        var connections: [String: BlockingConnection] = [:]
        var buffers: [String: [UInt8]] = [:]
        /// When a sentinel that could not be reached is tried again: after 1 s, doubling to
        /// 30 s while it stays unreachable (each try may block this thread for a second, the
        /// connect's deadline, delaying every pool's refresh).
        var retryAt: [String: Double] = [:]
        var failures: [String: Int] = [:]

        /// Opens missing subscriptions, waits up to `waitMilliseconds` for messages, and returns
        /// the sentinels that announced a switch.
        func poll(_ jobs: [Job], now: Double, waitMilliseconds: Int32) -> [String] {
            var wanted: [String: (ClusterNode, String?, TLSContext?)] = [:]
            for job in jobs {
                for sentinel in job.sentinels where wanted[sentinel.name] == nil { wanted[sentinel.name] = (sentinel, job.sentinelPassword, job.sentinelTLS) }
            }
            for name in connections.keys where wanted[name] == nil { close(name) }
            for (name, (node, password, tls)) in wanted where connections[name] == nil && now >= retryAt[name] ?? 0 {
                if case let .success(connection) = RedisProbe.subscribe(node, channels: ["+switch-master", "+promoted-slave"], password: password, tls: tls) {
                    connections[name] = connection
                    buffers[name] = []
                    failures[name] = nil
                } else {
                    let count = (failures[name] ?? 0) + 1
                    failures[name] = count
                    retryAt[name] = now + min(30, Double(1 << min(count - 1, 5)))
                }
            }
            let names = Array(connections.keys)
            var entries = names.map { pollfd(fd: connections[$0]!.descriptor, events: Int16(POLLIN), revents: 0) }
            guard !entries.isEmpty else {
                usleep(UInt32(waitMilliseconds) * 1000)
                return []
            }
            // Bytes OpenSSL already decrypted are not announced by the socket: no wait then.
            let pending = names.contains { connections[$0]!.hasPending }
            guard Glibc.poll(&entries, nfds_t(entries.count), pending ? 0 : waitMilliseconds) > 0 || pending else { return [] }
            var switched: [String] = []
            var chunk = [UInt8](repeating: 0, count: 4096)
            for (index, name) in names.enumerated() where entries[index].revents != 0 || connections[name]!.hasPending {
                let count: Int
                switch connections[name]!.readNow(into: &chunk) {
                case let .bytes(read):
                    count = read
                case .wouldBlock:
                    continue
                case .closed, .failed:
                    close(name)
                    retryAt[name] = now + 1
                    // A sentinel lost may have been the one to announce: ask again.
                    switched.append(name)
                    continue
                }
                var buffer = (buffers[name] ?? []) + chunk[0..<count]
                // Messages are small; only whether one names +switch-master matters.
                while let (value, length) = RespValue.decode(buffer) {
                    buffer.removeFirst(length)
                    // `+promoted-slave` comes from the leader as soon as the replica is master;
                    // `+switch-master` from every sentinel once the failover is over.
                    if case let .array(fields?) = value, fields.count == 3, fields[0].text == "message",
                       fields[1].text == "+switch-master" || fields[1].text == "+promoted-slave" {
                        switched.append(name)
                    }
                }
                buffers[name] = buffer.count > 1 << 16 ? [] : buffer
            }
            return switched
        }

        private func close(_ name: String) {
            connections[name] = nil
            buffers[name] = nil
        }
    }

    /// Sentinels that could not be reached lately (name → when), asked after the others: the
    /// watcher thread's own.
    final class Unreachable {
        var since: [String: Double] = [:]
        /// How long a sentinel that failed is asked last.
        static let memory = 30.0
        /// How long one that failed is not asked at all while another sentinel has answered.
        static let skipped = 5.0

        /// Whether `sentinel` is asked now: not if it failed in this round (`roundStart`), nor
        /// within `skipped` seconds while another sentinel has answered this master.
        func shouldAsk(_ sentinel: ClusterNode, roundStart: Double, othersAnswered: Bool, now: Double) -> Bool {
            guard let failed = since[sentinel.name] else { return true }
            if failed >= roundStart { return false }
            return !(othersAnswered && now - failed < Self.skipped)
        }

        /// `sentinels` in the order to ask them: those not failed lately first, each group in
        /// the order listed.
        func ordered(_ sentinels: [ClusterNode], now: Double) -> [ClusterNode] {
            let failing = sentinels.filter { since[$0.name].map { now - $0 < Self.memory } ?? false }
            return sentinels.filter { node in !failing.contains { $0 == node } } + failing
        }
    }

    /// Each master's address: the sentinels are asked (those unreachable lately last, and no
    /// more once more than half of them name one address), and the addresses named most often
    /// (several on a tie, in the order first named) are checked with `ROLE`; the first
    /// that says master is taken. Never one named less often: when the address most named is
    /// down (a killed master the sentinels have not replaced yet), a sentinel naming another
    /// deployment's master, or another group's, would otherwise be followed (writes went to
    /// shard2's master for 2 s; Sentinel sweep 29). Nor an address another master of the pool
    /// has. A sentinel that lies, or has not seen a failover yet, is outvoted, or on a tie
    /// caught by `ROLE` when it names a replica; a master no sentinel could place keeps its
    /// previous address.
    static func discover(_ job: Job, previous: [String: ClusterNode], unreachable: Unreachable = Unreachable()) -> [String: ClusterNode] {
        var found = previous
        var errors: [String] = []
        var anyAnswered = false
        let roundStart = RedisProbe.now()
        for master in job.masters {
            var votes: [(node: ClusterNode, count: Int)] = []
            for sentinel in unreachable.ordered(job.sentinels, now: RedisProbe.now()) {
                // A majority of all the sentinels names one address: the rest cannot outvote it.
                if votes.contains(where: { $0.count * 2 > job.sentinels.count }) { break }
                // One that does not answer costs its deadline (1 s) on this thread, which every
                // Sentinel pool shares: at most once a round, and not while others answer.
                guard unreachable.shouldAsk(sentinel, roundStart: roundStart, othersAnswered: !votes.isEmpty, now: RedisProbe.now()) else { continue }
                let answer = RedisProbe.call(sentinel, ["SENTINEL", "get-master-addr-by-name", master], password: job.sentinelPassword, tls: job.sentinelTLS)
                if case .failure = answer { unreachable.since[sentinel.name] = RedisProbe.now() } else { unreachable.since[sentinel.name] = nil }
                switch answer {
                case let .success(.array(fields?)) where fields.count == 2:
                    anyAnswered = true
                    guard let host = fields[0].text, let port = fields[1].text.flatMap({ Int($0) }), (1...65535).contains(port) else { continue }
                    let node = ClusterNode(host: host, port: port)
                    if let index = votes.firstIndex(where: { $0.node == node }) { votes[index].count += 1 } else { votes.append((node, 1)) }
                case .success(.array(nil)), .success(.bulk(nil)):
                    anyAnswered = true
                    errors.append("\(master): \(sentinel.name) does not know this master")
                case let .success(other):
                    errors.append("\(master): \(sentinel.name): unexpected reply \(other)")
                case let .failure(error):
                    errors.append("\(master): \(sentinel.name): \(error.text)")
                }
            }
            // The most named, in the order first named (votes are made in the order asked).
            let most = votes.map(\.count).max() ?? 0
            let ranked = votes.filter { $0.count == most }.map(\.node)
            var placed = false
            for node in ranked where !placed {
                switch RedisProbe.call(node, ["ROLE"], password: job.serverPassword, tls: job.serverTLS) {
                case let .success(.array(role?)) where role.first?.text == "master":
                    found[master] = node
                    placed = true
                case .success:
                    job.state.roleMismatches.add(1, ordering: .relaxed)
                    errors.append("\(master): \(node.name) was named but is not a master")
                case let .failure(error):
                    errors.append("\(master): \(node.name): \(error.text)")
                }
            }
            if placed {
                // Errors about other sentinels or addresses do not matter once one was confirmed.
                errors.removeAll { $0.hasPrefix("\(master): ") }
            }
        }
        errors += withoutSharedAddresses(&found, previous: previous, masters: job.masters)
        if anyAnswered, errors.isEmpty {
            job.state.refreshes.add(1, ordering: .relaxed)
            job.state.lastError.withLock { $0 = "" }
        } else {
            job.state.refreshFailures.add(1, ordering: .relaxed)
            job.state.lastError.withLock { $0 = errors.prefix(4).joined(separator: "; ") }
        }
        return found
    }

    /// No two masters at one address: a master given, in this round, an address another has
    /// (kept or given) keeps its previous one. Masters that traded addresses (failovers, reused
    /// addresses) are no conflict and move together (compared with the previous round's
    /// addresses, each refused the other's for ever). Returns the refusals, for the last error.
    static func withoutSharedAddresses(_ found: inout [String: ClusterNode], previous: [String: ClusterNode], masters: [String]) -> [String] {
        var errors: [String] = []
        var conflicted = true
        while conflicted {
            conflicted = false
            for master in masters {
                guard let node = found[master], found[master] != previous[master],
                      let other = masters.first(where: { $0 != master && found[$0] == node }) else { continue }
                errors.append("\(master): \(node.name) was named, which is \(other)'s address")
                found[master] = previous[master]
                conflicted = true
            }
        }
        return errors
    }

    /// The sentinels of a pool.
    static func sentinels(_ pool: PoolConfig) -> [ClusterNode] {
        (pool.sentinel?.addresses ?? []).map { ClusterNode(host: $0.host, port: $0.port) }
    }
}

/// One blocking exchange with a Redis node or sentinel, bounded by a second to connect (and
/// finish the TLS handshake) and a second to answer: for the discovery and watcher threads only
/// (cluster maps, sentinels). `tls`: the pool's `server_tls` context (nil: plain TCP); the
/// name verified is `server_tls.server_name` or the node's host, as on the data path.
enum RedisProbe {
    struct ProbeError: Error { var text: String }

    static func now() -> Double { BlockingConnection.now() }

    /// Connects, authenticates when `password` is given, sends `words`, returns the reply (at
    /// most `maxReply` bytes).
    static func call(_ node: ClusterNode, _ words: [String], password: String?, tls: TLSContext?, maxReply: Int = 1 << 20) -> Result<RespValue, ProbeError> {
        let connection: BlockingConnection
        switch open(node, tls: tls) {
        case let .success(opened): connection = opened
        case let .failure(error): return .failure(error)
        }
        if let password {
            switch exchange(connection, encode(["AUTH", password])) {
            case .success(.error(let text)): return .failure(ProbeError(text: "AUTH: \(text)"))
            case .success: break
            case let .failure(error): return .failure(error)
            }
        }
        return exchange(connection, encode(words), maxReply: maxReply)
    }

    /// A connection to `node` subscribed to `channels` (the first confirmation read; the others
    /// come with the messages), for the caller to read messages from; bounded like `call`.
    static func subscribe(_ node: ClusterNode, channels: [String], password: String?, tls: TLSContext?) -> Result<BlockingConnection, ProbeError> {
        let connection: BlockingConnection
        switch open(node, tls: tls) {
        case let .success(opened): connection = opened
        case let .failure(error): return .failure(error)
        }
        if let password, case .success(.error) = exchange(connection, encode(["AUTH", password])) {
            return .failure(ProbeError(text: "AUTH refused"))
        }
        guard case .success(.array) = exchange(connection, encode(["SUBSCRIBE"] + channels)) else {
            return .failure(ProbeError(text: "SUBSCRIBE failed"))
        }
        return .success(connection)
    }

    private static func open(_ node: ClusterNode, tls: TLSContext?) -> Result<BlockingConnection, ProbeError> {
        let address: SocketAddress
        switch SocketAddress.resolve(host: node.host, port: node.port) {
        case let .success(resolved): address = resolved
        case let .failure(error): return .failure(ProbeError(text: error.message))
        }
        return BlockingConnection.open(address, tls: tls, serverName: node.host, deadline: now() + 1).mapError { ProbeError(text: $0.text) }
    }

    private static func encode(_ words: [String]) -> [UInt8] { RespEncoder.command(words) }

    private static func exchange(_ connection: BlockingConnection, _ request: [UInt8], maxReply: Int = 1 << 20) -> Result<RespValue, ProbeError> {
        let end = now() + 1
        if case let .failure(error) = connection.writeAll(request, deadline: end) { return .failure(ProbeError(text: error.text)) }
        var reply: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            if !reply.isEmpty {
                // Framed in place first (cheap); decoded into values once complete.
                switch reply.withUnsafeBytes({ RespReplyParser.parse($0, maxDepth: 16) }) {
                case .reply:
                    guard let (value, _) = RespValue.decode(reply) else { return .failure(ProbeError(text: "invalid reply")) }
                    return .success(value)
                case .invalid:
                    return .failure(ProbeError(text: "invalid reply"))
                case .incomplete:
                    break
                }
            }
            guard reply.count < maxReply else { return .failure(ProbeError(text: "reply too large")) }
            switch connection.read(into: &chunk, deadline: end) {
            case let .success(count): reply += chunk[0..<count]
            case let .failure(error): return .failure(ProbeError(text: error.text))
            }
        }
    }
}
