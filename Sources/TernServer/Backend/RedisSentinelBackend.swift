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
            // The questions a round stopped waiting for go on in the same poll.
            let switched = subscriptions.poll(current, now: now, waitMilliseconds: 50, alongside: unreachable.lingering)
            unreachable.collect()
            for sentinel in switched {
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
    /// next poll. Subscriptions are opened without blocking, stepped from the same `poll()`
    /// that waits for messages: a sentinel that accepts and never answers cost the thread 1 s
    /// per try before.
    private final class Subscriptions {
        var connections: [String: BlockingConnection] = [:]
        var buffers: [String: [UInt8]] = [:]
        /// Subscriptions being opened (connect, TLS, AUTH, the first confirmation).
        var opening: [String: ProbeExchange] = [:]
        /// When a sentinel that could not be reached is tried again: after 1 s, doubling to
        /// 30 s while it stays unreachable.
        var retryAt: [String: Double] = [:]
        var failures: [String: Int] = [:]

        /// Opens missing subscriptions, waits up to `waitMilliseconds` for messages (and the
        /// steps of the subscriptions being opened, and of the `alongside` exchanges), and
        /// returns the sentinels that announced a switch.
        func poll(_ jobs: [Job], now: Double, waitMilliseconds: Int32, alongside: [ProbeExchange]) -> [String] {
            var wanted: [String: (ClusterNode, String?, TLSContext?)] = [:]
            for job in jobs {
                for sentinel in job.sentinels where wanted[sentinel.name] == nil { wanted[sentinel.name] = (sentinel, job.sentinelPassword, job.sentinelTLS) }
            }
            for name in connections.keys where wanted[name] == nil { close(name) }
            for name in opening.keys where wanted[name] == nil { opening[name] = nil }
            for (name, (node, password, tls)) in wanted where connections[name] == nil && opening[name] == nil && now >= retryAt[name] ?? 0 {
                opening[name] = ProbeExchange(node, [["SUBSCRIBE", "+switch-master", "+promoted-slave"]], password: password, tls: tls, deadline: now + 1)
            }
            let names = Array(connections.keys), openingNames = Array(opening.keys)
            var entries = names.map { pollfd(fd: connections[$0]!.descriptor, events: Int16(POLLIN), revents: 0) }
            for name in openingNames { entries.append(pollfd(fd: opening[name]!.descriptor, events: opening[name]!.events, revents: 0)) }
            let alongsideStart = entries.count
            for exchange in alongside { entries.append(pollfd(fd: exchange.descriptor, events: exchange.events, revents: 0)) }
            guard !entries.isEmpty else {
                usleep(UInt32(waitMilliseconds) * 1000)
                return []
            }
            // Bytes OpenSSL already decrypted are not announced by the socket: no wait then.
            let pending = names.contains { connections[$0]!.hasPending } || openingNames.contains { opening[$0]!.hasPending }
                || alongside.contains { $0.hasPending }
            let ready = Glibc.poll(&entries, nfds_t(entries.count), pending ? 0 : waitMilliseconds) > 0 || pending
            for (index, exchange) in alongside.enumerated() {
                if entries[alongsideStart + index].revents != 0 || exchange.hasPending { exchange.step() }
                exchange.expire(now: RedisProbe.now())
            }
            for (index, name) in openingNames.enumerated() {
                let exchange = opening[name]!
                if entries[names.count + index].revents != 0 || exchange.hasPending { exchange.step() }
                exchange.expire(now: RedisProbe.now())
                switch exchange.outcome {
                case nil:
                    continue
                case let .success(replies):
                    if case .array = replies.first, let connection = exchange.takeConnection() {
                        connections[name] = connection
                        buffers[name] = exchange.unread
                        failures[name] = nil
                    } else {
                        retry(name, now: now)
                    }
                case .failure:
                    retry(name, now: now)
                }
                opening[name] = nil
            }
            guard ready else { return [] }
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

        private func retry(_ name: String, now: Double) {
            let count = (failures[name] ?? 0) + 1
            failures[name] = count
            retryAt[name] = now + min(30, Double(1 << min(count - 1, 5)))
        }

        private func close(_ name: String) {
            connections[name] = nil
            buffers[name] = nil
        }
    }

    /// Sentinels that failed lately (name → when): the watcher thread's own (and the main
    /// thread's at startup, shared by the pools there).
    final class Unreachable {
        var since: [String: Double] = [:]
        /// How long a sentinel that failed is not waited for (it is still asked).
        static let memory = 30.0
        /// Questions a round stopped waiting for (it had its answers), followed to their end (the
        /// watcher steps them in its subscriptions' poll): a sentinel that never answers is known
        /// as failed before a round needs to wait for it, and one a little slower than the others
        /// answers in time.
        var lingering: [ProbeExchange] = []

        func failedLately(_ sentinel: ClusterNode, now: Double) -> Bool {
            since[sentinel.name].map { now - $0 < Self.memory } ?? false
        }

        /// Notes how an exchange ended (nothing while it goes on).
        func record(_ exchange: ProbeExchange) {
            switch exchange.outcome {
            case .success: since[exchange.node.name] = nil
            case .failure: since[exchange.node.name] = RedisProbe.now()
            case nil: break
            }
        }

        /// Steps the lingering questions without waiting and notes those that ended.
        func settle() {
            guard !lingering.isEmpty else { return }
            ProbeExchange.stepReady(lingering, waitMilliseconds: 0)
            collect()
        }

        /// Notes the lingering questions that ended and lets them go.
        func collect() {
            guard !lingering.isEmpty else { return }
            for exchange in lingering { record(exchange) }
            lingering.removeAll { $0.outcome != nil }
        }
    }

    /// How long a named master has to answer `ROLE` (see `discover`).
    static let roleCheckSeconds = 0.3

    /// Each master's address: every sentinel is asked at once (one connection each, the
    /// masters' questions written together), and the round ends as soon as more than half of
    /// the sentinels name one address for every master, or every sentinel that has not failed
    /// lately has answered (or failed), or after 1 s. A sentinel that does not answer therefore
    /// costs nothing while others agree, and once it has failed, nothing at all (asked one
    /// after the other, each cost its 1 s deadline: at startup, and while sentinels disagreed
    /// during a failover; Sentinel sweep 29). The addresses named most often (several on a tie,
    /// in the order of the sentinels listed) are checked with `ROLE`; the first that says master
    /// is taken. Never one named less often: when the address most named is down (a killed
    /// master the sentinels have not replaced yet), a sentinel naming another deployment's
    /// master, or another group's, would otherwise be followed (writes went to shard2's master
    /// for 2 s; Sentinel sweep 29). Nor an address another master of the pool has. A sentinel
    /// that lies, or has not seen a failover yet, is outvoted, or on a tie caught by `ROLE` when
    /// it names a replica; a master no sentinel could place keeps its previous address.
    static func discover(_ job: Job, previous: [String: ClusterNode], unreachable: Unreachable = Unreachable()) -> [String: ClusterNode] {
        var found = previous
        var errors: [String] = []
        var anyAnswered = false
        let start = RedisProbe.now()
        let questions = job.masters.map { ["SENTINEL", "get-master-addr-by-name", $0] }
        unreachable.settle()
        // One question per sentinel at a time: one still lingering is not asked again.
        let asked = job.sentinels.filter { sentinel in !unreachable.lingering.contains { $0.node == sentinel } }
        let exchanges = asked.map { ProbeExchange($0, questions, password: job.sentinelPassword, tls: job.sentinelTLS, deadline: start + 1) }
        var awaited = asked.map { !unreachable.failedLately($0, now: start) }
        if !awaited.contains(true) { awaited = awaited.map { _ in true } }
        ProbeExchange.run(exchanges) {
            if zip(exchanges, awaited).allSatisfy({ $0.outcome != nil || !$1 }) { return true }
            return job.masters.indices.allSatisfy { master in
                Self.votes(exchanges, master: master).contains { $0.count * 2 > job.sentinels.count }
            }
        }
        for exchange in exchanges {
            unreachable.record(exchange)
            if exchange.outcome == nil { unreachable.lingering.append(exchange) }
        }
        for (index, master) in job.masters.enumerated() {
            for exchange in exchanges {
                switch exchange.outcome {
                case let .success(replies):
                    switch replies[index] {
                    case let .array(fields?) where fields.count == 2:
                        anyAnswered = true
                    case .array(nil), .bulk(nil):
                        anyAnswered = true
                        errors.append("\(master): \(exchange.node.name) does not know this master")
                    case let other:
                        errors.append("\(master): \(exchange.node.name): unexpected reply \(other)")
                    }
                case let .failure(error):
                    errors.append("\(master): \(exchange.node.name): \(error.text)")
                case nil:
                    break
                }
            }
            for sentinel in job.sentinels where !asked.contains(sentinel) {
                errors.append("\(master): \(sentinel.name): no answer yet to the last round's question")
            }
            // The most named, in the order of the sentinels listed.
            let votes = Self.votes(exchanges, master: index)
            let most = votes.map(\.count).max() ?? 0
            var ranked = votes.filter { $0.count == most }.map(\.node)
            // On a tie, the address in use first: kept while it answers master. In the order of
            // the sentinels, a stale sentinel listed first took Tern back from the promoted
            // master to the old one once it came back still saying master (Sentinel sweep 33:
            // writes went to the demoted master for 10 s).
            if ranked.count > 1, let current = previous[master], let position = ranked.firstIndex(of: current) {
                ranked.insert(ranked.remove(at: position), at: 0)
            }
            var placed = false
            for node in ranked where !placed {
                // Answered within 0.3 s: a master that hung (SIGSTOP; its kernel still accepts the
                // connect) held the watcher for 1 s, the sentinels' announcement unread, and Tern
                // followed a failover 0.8 s after they agreed (Sentinel sweep 33); a live master
                // answers ROLE in milliseconds, and one that does not keeps the address Tern has
                // (nothing is taken unconfirmed). The connect and TLS handshake keep their 1 s.
                switch RedisProbe.call(node, ["ROLE"], password: job.serverPassword, tls: job.serverTLS, answerWithin: Self.roleCheckSeconds) {
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

    /// The addresses the sentinels that answered give the master at `master` (its index in the
    /// job's masters), each with how many name it, in the order of the sentinels listed.
    private static func votes(_ exchanges: [ProbeExchange], master: Int) -> [(node: ClusterNode, count: Int)] {
        var votes: [(node: ClusterNode, count: Int)] = []
        for exchange in exchanges {
            guard case let .success(replies) = exchange.outcome, case let .array(fields?) = replies[master], fields.count == 2,
                  let host = fields[0].text, let port = fields[1].text.flatMap({ Int($0) }), (1...65535).contains(port) else { continue }
            let node = ClusterNode(host: host, port: port)
            if let index = votes.firstIndex(where: { $0.node == node }) { votes[index].count += 1 } else { votes.append((node, 1)) }
        }
        return votes
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
    /// `answerWithin`: seconds for each answer (the connect and TLS handshake have 1 s).
    static func call(_ node: ClusterNode, _ words: [String], password: String?, tls: TLSContext?, maxReply: Int = 1 << 20,
                     answerWithin within: Double = 1) -> Result<RespValue, ProbeError> {
        let connection: BlockingConnection
        switch open(node, tls: tls) {
        case let .success(opened): connection = opened
        case let .failure(error): return .failure(error)
        }
        if let password {
            switch exchange(connection, encode(["AUTH", password]), within: within) {
            case .success(.error(let text)): return .failure(ProbeError(text: "AUTH: \(text)"))
            case .success: break
            case let .failure(error): return .failure(error)
            }
        }
        return exchange(connection, encode(words), maxReply: maxReply, within: within)
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

    private static func exchange(_ connection: BlockingConnection, _ request: [UInt8], maxReply: Int = 1 << 20, within: Double) -> Result<RespValue, ProbeError> {
        let end = now() + within
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

/// Requests to a Redis node or sentinel, stepped without blocking so that a thread can have
/// several going at once from one `poll()`: the connect (and TLS handshake), `AUTH` when a
/// password is given, the requests written together, then their replies read. Ends by
/// `deadline` (`RedisProbe.now()`-based). For the Sentinel watcher (its questions and its
/// subscriptions) and the startup round; confined to the thread that made it.
final class ProbeExchange {
    let node: ClusterNode
    private let tls: TLSContext?
    private let request: [UInt8]
    /// Replies expected, `AUTH`'s included.
    private let expected: Int
    private let authenticates: Bool
    private let deadline: Double
    private var connection: BlockingConnection?
    private var connected = false
    /// What to wait for before the next step.
    private(set) var events = Int16(POLLOUT)
    /// Bytes read past the last reply expected (a subscription's first messages).
    private(set) var unread: [UInt8] = []
    private var replies: [RespValue] = []
    /// The replies to the requests (not `AUTH`'s), or the failure; nil while going on.
    private(set) var outcome: Result<[RespValue], RedisProbe.ProbeError>?

    init(_ node: ClusterNode, _ requests: [[String]], password: String?, tls: TLSContext?, deadline: Double) {
        self.node = node
        self.tls = tls
        self.deadline = deadline
        authenticates = password != nil
        expected = requests.count + (authenticates ? 1 : 0)
        request = (password.map { RespEncoder.command(["AUTH", $0]) } ?? []) + requests.flatMap { RespEncoder.command($0) }
        switch SocketAddress.resolve(host: node.host, port: node.port) {
        case let .success(address):
            switch BlockingConnection.start(address) {
            case let .success(started): connection = started
            case let .failure(error): fail(error.text)
            }
        case let .failure(error):
            fail(error.message)
        }
    }

    /// The socket to poll for `events` (-1 once ended: `poll()` skips it).
    var descriptor: Int32 { outcome == nil ? connection?.descriptor ?? -1 : -1 }

    /// Decrypted bytes OpenSSL holds, which `poll()` will not announce.
    var hasPending: Bool { outcome == nil && connection?.hasPending == true }

    /// The connection, once the exchange succeeded, for the caller to go on reading (a
    /// subscription).
    func takeConnection() -> BlockingConnection? {
        defer { connection = nil }
        return connection
    }

    /// Goes as far as it can without waiting: called once the socket is ready for `events`.
    func step() {
        guard outcome == nil, let connection else { return }
        if !connected {
            switch connection.openStep(tls: tls, serverName: node.host) {
            case .done:
                connected = true
                // A few hundred bytes into an empty socket buffer: does not wait.
                if case let .failure(error) = connection.writeAll(request, deadline: deadline) { return fail(error.text) }
                events = Int16(POLLIN)
            case let .wait(wanted):
                events = wanted
                return
            case let .failed(error):
                return fail(error.text)
            }
        }
        var chunk = [UInt8](repeating: 0, count: 16384)
        while outcome == nil {
            switch connection.readNow(into: &chunk) {
            case let .bytes(count):
                unread += chunk[0..<count]
                takeReplies()
            case let .wouldBlock(wanted):
                events = wanted
                return
            case .closed:
                return fail("server closed the connection")
            case let .failed(reason):
                return fail(reason)
            }
        }
    }

    /// Ends the exchange as timed out once its deadline has passed.
    func expire(now: Double) {
        if outcome == nil, now >= deadline { fail("timed out") }
    }

    private func takeReplies() {
        while replies.count < expected, !unread.isEmpty {
            switch unread.withUnsafeBytes({ RespReplyParser.parse($0, maxDepth: 16) }) {
            case .reply:
                guard let (value, length) = RespValue.decode(unread) else { return fail("invalid reply") }
                unread.removeFirst(length)
                if authenticates, replies.isEmpty, case let .error(text) = value { return fail("AUTH: \(text)") }
                replies.append(value)
            case .invalid:
                return fail("invalid reply")
            case .incomplete:
                if unread.count >= 1 << 20 { fail("reply too large") }
                return
            }
        }
        if replies.count == expected { outcome = .success(Array(replies.dropFirst(authenticates ? 1 : 0))) }
    }

    private func fail(_ text: String) {
        outcome = .failure(RedisProbe.ProbeError(text: text))
        connection = nil
    }

    /// Steps `exchanges` from one `poll()` until each has ended, `enough()` says the caller
    /// has what it needs, or their deadlines pass.
    /// Nothing is stepped before `poll()` says so: a connect still in progress reads as
    /// finished (`SO_ERROR` is 0 until it ends), and writing to it then waited for the deadline
    /// (a sentinel on a host that is down stalled every round; review 30).
    static func run(_ exchanges: [ProbeExchange], enough: () -> Bool) {
        while !enough(), exchanges.contains(where: { $0.outcome == nil }) {
            let next = exchanges.filter { $0.outcome == nil }.map(\.deadline).min() ?? 0
            stepReady(exchanges, waitMilliseconds: Int32(max(0, min(1000, (next - RedisProbe.now()) * 1000))))
        }
    }

    /// Waits up to `waitMilliseconds` for any of `exchanges` to be ready, steps those that
    /// are, and ends those past their deadline.
    static func stepReady(_ exchanges: [ProbeExchange], waitMilliseconds: Int32) {
        var entries = exchanges.map { pollfd(fd: $0.descriptor, events: $0.events, revents: 0) }
        let pending = exchanges.contains { $0.hasPending }
        if Glibc.poll(&entries, nfds_t(entries.count), pending ? 0 : waitMilliseconds) < 0, errno != EINTR {
            // Not expected (bad arguments): the deadlines still end every exchange.
            usleep(UInt32(waitMilliseconds) * 1000)
        }
        let now = RedisProbe.now()
        for (index, exchange) in exchanges.enumerated() {
            if entries[index].revents != 0 || exchange.hasPending { exchange.step() }
            exchange.expire(now: now)
        }
    }
}
