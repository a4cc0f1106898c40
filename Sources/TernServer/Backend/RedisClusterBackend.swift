#if canImport(Glibc)
import Glibc
#endif
import CLibev
import Synchronization
import TernCore

// Redis Cluster backends (`distribution: redis_cluster`).
//
//     discovery thread ── CLUSTER SLOTS (blocking, bounded) on known nodes, then seeds ──┐
//          ▲  refresh asked (atomic flag): MOVED, connection failure; else every 10 s    │
//          │                                                                             ▼
//     worker loops ◄── new PoolPlan (servers = masters, slotServers = map) ◄── main thread
//          │            (the reload path: kept servers keep their connections)   applies it
//          └── -MOVED/-ASK on a backend reply: the request's bytes (still in the connection's
//              output) are re-sent to the named node (ASKING first for ASK), at most 5 times;
//              a node not in the map parks the request until the next map or its timeout
//
// Thread confinement: `ClusterState` is shared (atomics and locks); `ClusterDiscovery`'s
// mutable state lives on its own thread; `clusterMaps` on the main thread (`TernServer`); the
// parked redirects on their worker (`PoolRuntime`, Routing/ClusterRedirects.swift).

/// A cluster pool's figures and mailbox, shared by the workers, the discovery thread, the main
/// thread and the stats readers (kept across reloads with the pool's `PoolShared`).
final class ClusterState: DiscoveryMailbox<ClusterSlotMap>, @unchecked Sendable {
    /// Redirects (`-MOVED`, `-ASK`) a request may follow before the error goes to its client.
    static let maxRedirects: UInt8 = 5
    /// `-TRYAGAIN` retries a request may make (25 ms, doubling: 1.575 s in all, within the
    /// pool's `timeout`), counted apart
    /// from the redirects, so that a MOVED that ends a migration a request waited through is
    /// still followed (it went to the client as `-MOVED` once the retries had used the budget).
    static let maxTryAgain: UInt8 = 6

    /// A request's redirect count (`Pending.redirects`): MOVED/ASK hops in the low four bits,
    /// TRYAGAIN retries in the high four.
    @inline(__always) static func hops(_ redirects: UInt8) -> UInt8 { redirects & 0x0F }
    @inline(__always) static func retries(_ redirects: UInt8) -> UInt8 { redirects >> 4 }
    static let oneHop: UInt8 = 1
    static let oneRetry: UInt8 = 0x10

    let movedRedirects = Atomic<Int>(0)
    let askRedirects = Atomic<Int>(0)
    /// Redirect errors handed to clients: too many redirects, or the target never appeared.
    let redirectsGivenUp = Atomic<Int>(0)
    /// `-TRYAGAIN` answers (multi-key requests during a slot migration) retried after a pause.
    let tryAgainRetries = Atomic<Int>(0)
    /// Maps applied so far (1: the first one); 0 while none is known.
    let mapVersion = Atomic<Int>(0)
    /// Unix time of the last `CLUSTER SLOTS` answered (0: never).
    let refreshedAt = Atomic<Int>(0)
    /// Nodes (`host:port`) a redirect named that the map lacked, for discovery to look up in
    /// `CLUSTER NODES` (`ClusterSlotMap.addingSlotlessMasters`) until it lists them as anything
    /// but a master serving no slot, or has left them out `UnlistedNodes.limit` answers in a
    /// row over `UnlistedNodes.minimumAge` seconds (a node that left). Written by workers (`noteUnknownNode`), read and settled by the
    /// discovery thread. At most `maxWantedNodes`.
    let wantedNodes = Locked<Set<String>>([])
    static let maxWantedNodes = 64

    /// A redirect named `node`, which the map lacks: a new map is asked for, and it takes the
    /// node if it is a master serving no slot yet (a new node that a migrating slot's keys go to).
    func noteUnknownNode(_ node: String) {
        wantedNodes.withLock { wanted in
            if wanted.count < Self.maxWantedNodes { wanted.insert(node) }
        }
        requestRefresh()
    }

    /// Of the map applied now.
    let masters = Atomic<Int>(0)
    let nodes = Atomic<Int>(0)
    let slotsAssigned = Atomic<Int>(0)

    /// `INFO`'s `# Cluster` section and the stats port's fields.
    func report() -> [(String, Int)] {
        [("cluster_slot_map_version", mapVersion.load(ordering: .relaxed)),
         ("cluster_slot_map_refreshed_at", refreshedAt.load(ordering: .relaxed)),
         ("cluster_refreshes", refreshes.load(ordering: .relaxed)),
         ("cluster_refresh_failures", refreshFailures.load(ordering: .relaxed)),
         ("cluster_masters", masters.load(ordering: .relaxed)),
         ("cluster_known_nodes", nodes.load(ordering: .relaxed)),
         ("cluster_slots_assigned", slotsAssigned.load(ordering: .relaxed)),
         ("cluster_redirects_moved", movedRedirects.load(ordering: .relaxed)),
         ("cluster_redirects_ask", askRedirects.load(ordering: .relaxed)),
         ("cluster_redirects_given_up", redirectsGivenUp.load(ordering: .relaxed)),
         ("cluster_tryagain_retries", tryAgainRetries.load(ordering: .relaxed))]
    }

    /// Records the map the main thread has just applied.
    func applied(_ map: ClusterSlotMap) {
        mapVersion.add(1, ordering: .relaxed)
        masters.store(map.masters.count, ordering: .relaxed)
        nodes.store(map.nodeCount, ordering: .relaxed)
        slotsAssigned.store(map.assignedSlots, ordering: .relaxed)
    }
}

/// For each pool, how many `CLUSTER NODES` answers in a row left out each wanted node
/// (`ClusterState.wantedNodes`), and since when, so that one no answer lists (a node that left
/// the cluster) is no longer looked for after `limit` of them over at least `minimumAge`
/// seconds (refreshes asked for come every 0.2 s: a new node the asked one has not heard of
/// yet gets time); a redirect naming it again makes it wanted again. Confined to the
/// discovery thread.
struct UnlistedNodes {
    static let limit = 3
    static let minimumAge = 3.0
    private var answers: [String: [String: (count: Int, since: Double)]] = [:]

    /// An answer for `pool` at `now` (seconds) left out `unlisted` (and listed the other wanted
    /// nodes): returns the names to stop looking for.
    mutating func record(_ unlisted: Set<String>, pool: String, now: Double) -> Set<String> {
        var counts = answers[pool, default: [:]].filter { unlisted.contains($0.key) }
        var givenUp: Set<String> = []
        for name in unlisted {
            let seen = counts[name].map { ($0.count + 1, $0.since) } ?? (1, now)
            if seen.0 >= Self.limit, now - seen.1 >= Self.minimumAge {
                givenUp.insert(name)
                counts[name] = nil
            } else {
                counts[name] = seen
            }
        }
        answers[pool] = counts.isEmpty ? nil : counts
        return givenUp
    }
}

/// Finds and refreshes the slot maps of the `redis_cluster` pools on a thread of its own, with
/// blocking, time-bounded I/O (`RedisProbe`: never on a worker loop, never holding up signals
/// on the main thread).
final class ClusterDiscovery: Sendable {
    struct Job: Sendable {
        var pool: String
        var seeds: [ClusterNode]
        var password: String?
        /// `server_tls`: the nodes are asked over TLS with the pool's context (built once per
        /// plan); nil: plain TCP.
        var tls: TLSContext?
        var state: ClusterState
    }

    /// The pools to watch, replaced by the main thread after every apply.
    let jobs = Locked<[Job]>([])
    /// Maps last seen per pool, set by the main thread for the pools it applied (the thread
    /// compares what it finds against them).
    let known = Locked<[String: ClusterSlotMap]>([:])

    /// Seconds between refreshes when nothing asks for one; after a failure, or while no map
    /// is known, the next try comes after a second.
    static let period = 10.0

    func start() {
        Threads.start("tern-cluster") { self.run() }
    }

    private func run() {
        // Confined to this thread: when each pool was last asked and whether that worked, and
        // for each pool's wanted nodes, the answers in a row that left them out.
        var clock = RefreshClock()
        var lastFailed: [String: Bool] = [:]
        var unlistedAnswers = UnlistedNodes()
        // The seeds each pool's map was last found under. A reload that changes them (the
        // operator points the pool at another cluster) makes the pool ask its new seeds alone,
        // every second, until one answers: asking the old map's nodes first would keep the
        // old cluster for as long as it answers.
        var mapSeeds: [String: [ClusterNode]] = [:]
        while true {
            let now = RedisProbe.now()
            for job in jobs.withLock({ $0 }) {
                if mapSeeds[job.pool] == nil { mapSeeds[job.pool] = job.seeds }
                let reseeded = mapSeeds[job.pool] != job.seeds
                let noMap = known.withLock { $0[job.pool] } == nil
                let period = noMap || reseeded || lastFailed[job.pool] == true ? 1 : Self.period
                guard clock.isDue(job.pool, now: now, requested: job.state.refreshRequested, period: period) else { continue }
                let previous = known.withLock { $0[job.pool] }
                let wanted = job.state.wantedNodes.withLock { $0 }
                var result = Self.discover(seeds: job.seeds, previous: reseeded ? nil : previous, password: job.password, tls: job.tls, wanted: wanted)
                // Until a new seed answers, the map the pool has is kept current from its own
                // nodes (not refreshed, its slots' moves answered raw -MOVED: review 32).
                var newSeedsError: String?
                if reseeded, case let .failure(error) = result, let previous,
                   case let .success(kept) = Self.discover(seeds: [], previous: previous, password: job.password, tls: job.tls, wanted: wanted) {
                    newSeedsError = "no new seed answers (\(error.text)); the map of the old seeds is kept"
                    result = .success(kept)
                }
                switch result {
                case let .success((map, _, found)):
                    if newSeedsError == nil { mapSeeds[job.pool] = job.seeds }
                    var settled = found.settled
                    if let unlisted = found.unlisted { settled.formUnion(unlistedAnswers.record(unlisted, pool: job.pool, now: now)) }
                    if !settled.isEmpty { job.state.wantedNodes.withLock { $0.subtract(settled) } }
                    lastFailed[job.pool] = false
                    job.state.refreshes.add(1, ordering: .relaxed)
                    job.state.refreshedAt.store(Int(time(nil)), ordering: .relaxed)
                    job.state.lastError.withLock { $0 = newSeedsError ?? "" }
                    if map != previous {
                        // Under the jobs' lock: a map asked with seeds a reload has since replaced
                        // is not offered (the main thread drops what was offered before that).
                        jobs.withLock { current in
                            guard current.contains(where: { $0.pool == job.pool && $0.seeds == job.seeds }) else { return }
                            known.withLock { $0[job.pool] = map }
                            job.state.discovered.withLock { $0 = map }
                        }
                    }
                case let .failure(error):
                    lastFailed[job.pool] = true
                    job.state.refreshFailures.add(1, ordering: .relaxed)
                    job.state.lastError.withLock { $0 = error.text }
                }
            }
            usleep(50_000)
        }
    }

    struct DiscoveryError: Error { var text: String }

    /// Asks the nodes of `previous` (masters first), then the seeds, for `CLUSTER SLOTS`; the
    /// first usable answer wins. Blocking: each node gets a second to connect and a second to
    /// answer. Returns the map and the node that gave it.
    /// `wanted`: nodes redirects named that a map lacked (`ClusterState.wantedNodes`); the
    /// result's `settled` holds those that need no more looking for, `unlisted` those a
    /// `CLUSTER NODES` answer left out (nil when none was asked or answered).
    static func discover(seeds: [ClusterNode], previous: ClusterSlotMap?, password: String?, tls: TLSContext?,
                         wanted: Set<String> = []) -> Result<(ClusterSlotMap, String, WantedFound), DiscoveryError> {
        var candidates: [ClusterNode] = []
        for node in (previous?.allNodes ?? []) + seeds where !candidates.contains(where: { $0.name == node.name }) { candidates.append(node) }
        var errors: [String] = []
        for node in candidates {
            switch ask(node, password: password, tls: tls, wanted: wanted) {
            case let .success((map, found)): return .success((map, node.name, found))
            case let .failure(error): errors.append("\(node.name): \(error.text)")
            }
        }
        return .failure(DiscoveryError(text: errors.isEmpty ? "no seed nodes" : errors.joined(separator: "; ")))
    }

    /// What a `CLUSTER NODES` answer said of the wanted nodes (`ClusterSlotMap.addingSlotlessMasters`).
    struct WantedFound: Sendable {
        var settled: Set<String> = []
        var unlisted: Set<String>?
    }

    private static func ask(_ node: ClusterNode, password: String?, tls: TLSContext?,
                            wanted: Set<String>) -> Result<(ClusterSlotMap, WantedFound), DiscoveryError> {
        // A map of 16384 single-slot ranges over many nodes stays well below 16 MiB.
        switch RedisProbe.call(node, ["CLUSTER", "SLOTS"], password: password, tls: tls, maxReply: 16 << 20) {
        case let .success(.error(text)):
            return .failure(DiscoveryError(text: text))
        case let .success(reply):
            guard let map = ClusterSlotMap.parse(clusterSlots: reply, askedHost: node.host) else {
                return .failure(DiscoveryError(text: "CLUSTER SLOTS: no slot is served"))
            }
            // Masters with no slot yet that a redirect named (a node being added), so that an
            // -ASK to one is followed. Without an answer, the map of the slots stands.
            if !wanted.isEmpty,
               case let .success(.bulk(text?)) = RedisProbe.call(node, ["CLUSTER", "NODES"], password: password, tls: tls, maxReply: 16 << 20) {
                let found = map.addingSlotlessMasters(clusterNodes: String(decoding: text, as: UTF8.self), askedHost: node.host, wanted: wanted)
                return .success((found.map, WantedFound(settled: found.settled, unlisted: found.unlisted)))
            }
            return .success((map, WantedFound()))
        case let .failure(error):
            return .failure(DiscoveryError(text: error.text))
        }
    }

    /// The seed nodes of a pool's `servers:` lines.
    static func seeds(_ pool: PoolConfig) -> [ClusterNode] {
        pool.servers.compactMap { server in
            if case let .tcp(host, port) = server.address { return ClusterNode(host: host, port: port) }
            return nil
        }
    }
}
