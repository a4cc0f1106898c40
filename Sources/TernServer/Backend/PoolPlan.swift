import Synchronization
import TernCore

/// What every worker gets for one pool: the config, resolved addresses, the listening socket
/// and the counters shared across workers. Immutable apart from atomics, so it is Sendable.
final class PoolPlan: Sendable {
    let config: PoolConfig
    let serverAddresses: [SocketAddress]
    /// -1 for a warm-up's old pool, which is reached only through its new pool.
    let listenDescriptor: Int32
    /// The old pool of a warm-up.
    let warmup: PoolPlan?
    /// What outlives a reload: connection counts and counters, by pool name.
    let shared: PoolShared
    /// Counters of each server on each worker: `serverCounters[server][worker]`. A server that
    /// keeps its name across a reload keeps its counters.
    let serverCounters: [[ServerCounters]]
    /// The pool's users, compiled once per plan (immutable, read by every worker).
    let users: [RedisUser]
    /// `redis_cluster` with `read_from`: the addresses of `config.replicaServers` (a replica whose
    /// name did not resolve is left out, with an empty address list in its place).
    let replicaAddresses: [[SocketAddress?]]
    /// TLS toward clients (`tls:`) and toward servers (`server_tls:`), loaded when the plan is
    /// made, so a reload re-reads certificates and keys and a bad file rejects the reload.
    let clientTLS: TLSContext?
    let serverTLS: TLSContext?

    /// `keepingTLSOf`: a plan of the same pool whose TLS contexts are kept where the settings
    /// are unchanged, the files not read again: what discovery applies (a failover's address,
    /// a slot map, a DNS change) use, so that a certificate file being replaced on disk never
    /// holds them up (TLS sweep 32: a failover was not followed while a key file was missing,
    /// and a valid new pair was put in service without a reload).
    init(config: PoolConfig, serverAddresses: [SocketAddress], listenDescriptor: Int32, warmup: PoolPlan? = nil,
         shared: PoolShared, serverCounters: [[ServerCounters]], replicaAddresses: [[SocketAddress?]] = [],
         keepingTLSOf kept: PoolPlan? = nil) throws(TLSSetupError) {
        if let kept, kept.config.clientTLS == config.clientTLS {
            self.clientTLS = kept.clientTLS
        } else {
            self.clientTLS = try config.clientTLS.map { (tls) throws(TLSSetupError) in try TLSContext.listener(tls, pool: config.name) }
        }
        if let kept, kept.config.serverTLS == config.serverTLS {
            self.serverTLS = kept.serverTLS
        } else {
            self.serverTLS = try config.serverTLS.map { (tls) throws(TLSSetupError) in try TLSContext.backend(tls, pool: config.name) }
        }
        self.config = config
        self.serverAddresses = serverAddresses
        self.replicaAddresses = replicaAddresses
        self.listenDescriptor = listenDescriptor
        self.warmup = warmup
        self.shared = shared
        self.serverCounters = serverCounters
        self.users = RedisUser.compile(config)
    }
}

/// The part of a pool that survives reloads (matched by pool name).
final class PoolShared: Sendable {
    /// Client connections open on this pool across all workers (enforces `client_connections`).
    let clientCount = Atomic<Int>(0)
    let totalConnections = Atomic<Int>(0)
    let warmupCounters = WarmupCounters()
    /// Warm-up pools: deletes seen since a read started, so that a stale copy is not made.
    let warmupInvalidations = WarmupInvalidations()
    /// One per worker.
    let workerCounters: [PoolCounters]
    /// Per-command requests and latency, one table per worker.
    let commandStats: [CommandStats]
    /// The most requested keys, one sketch per worker (`hot_keys` counters each, fixed when the
    /// pool is first made; a reload keeps the sketch).
    let hotKeys: [HotKeys]
    /// Backend round trips slower than `slowlog_log_slower_than` (a warm-up's old pool records
    /// into its new pool's log).
    let slowLog = SlowLog()
    /// Redis pools: each server's INFO, gathered off the request path (see `BackendInfoPoller`).
    let backendInfo = Locked<[String: BackendInfo]>([:])
    /// `distribution: redis_cluster`: slot map version, redirects, refreshes (idle otherwise).
    let cluster = ClusterState()
    /// `sentinel:` pools: masters' addresses, switches (idle otherwise).
    let sentinel = SentinelState()

    init(workers: Int, hotKeys capacity: Int = 64) {
        workerCounters = (0..<workers).map { _ in PoolCounters() }
        commandStats = (0..<workers).map { _ in CommandStats() }
        hotKeys = (0..<workers).map { _ in HotKeys(capacity: capacity) }
    }
}

extension PoolPlan {
    /// Pool counters summed over workers, for memcached `stats` and Redis `INFO`.
    var poolSummary: [(String, Int)] {
        let counters = shared.workerCounters
        func sum(_ field: (PoolCounters) -> Int) -> Int { counters.reduce(0) { $0 + field($1) } }
        var requests = 0, responses = 0, timeouts = 0
        for perWorker in serverCounters {
            for server in perWorker {
                requests += server.requests.read()
                responses += server.responses.read()
                timeouts += server.serverTimedOut.read()
            }
        }
        return [
            ("client_eof", sum { $0.clientEOF.read() }), ("client_err", sum { $0.clientErrors.read() }),
            ("server_ejects", sum { $0.serverEjects.read() }), ("forward_error", sum { $0.forwardErrors.read() }),
            ("fragments", sum { $0.fragments.read() }), ("server_requests", requests), ("server_responses", responses),
            ("server_timedout", timeouts),
        ]
    }

    /// Redis sessions: transactions, WATCHes, blocking commands, dedicated connections,
    /// subscribed clients and messages (stats port and INFO; /metrics has the same figures).
    var sessionSummary: [(String, Int)] {
        let counters = shared.workerCounters
        func sum(_ field: (PoolCounters) -> Int) -> Int { counters.reduce(0) { $0 + field($1) } }
        return [
            ("transactions_exec", sum { $0.transactions.read() }), ("transactions_execabort", sum { $0.transactionsAborted.read() }),
            ("watches", sum { $0.watches.read() }), ("blocking_requests", sum { $0.blockingRequests.read() }),
            ("dedicated_connections_in_use", sum { $0.dedicatedInUse.read() }), ("subscribed_clients", sum { $0.subscribedClients.read() }),
            ("pubsub_messages", sum { $0.messagesDelivered.read() }), ("blocked_clients", sum { $0.blockedClients.read() }),
        ]
    }
}

/// The deletes a warm-up pool sends to both pools, counted per key bucket across workers
/// (relaxed atomics), so that a warm-up read does not copy an old-pool value that a delete has
/// removed. Without it, a read that missed the new pool and read the old pool just before
/// another client's delete reached it copied what it read after that delete had reached the
/// new pool, leaving the deleted value there until its TTL. A bucket's epoch moves when a
/// delete of one of its keys is routed and again when that delete's request is done
/// (`WarmupDeletesInFlight`); the deletes still in flight are counted too. A read notes its
/// keys' epochs when it is routed and copies an old hit only if its bucket's epoch has not moved
/// and no delete of the bucket is in flight (`allowsCopy`): a delete routed after the read, or
/// before it but not yet done on the old pool, skips the copy. Buckets are shared by keys (a
/// delete of another key of the bucket skips a copy the next read makes); a flush counts for
/// every bucket. Only deletes routed by this process are seen.
final class WarmupInvalidations: Sendable {
    static let bucketCount = 1024
    private let epochs: InlineArray<1024, Atomic<UInt32>> = InlineArray { _ in Atomic(0) }
    private let inFlight: InlineArray<1024, Atomic<UInt32>> = InlineArray { _ in Atomic(0) }
    private let flushes = Atomic<UInt32>(0)
    private let flushesInFlight = Atomic<UInt32>(0)

    /// The bucket of `key` (FNV-1a over its bytes).
    @inline(__always)
    static func bucket(_ key: UnsafeRawBufferPointer) -> Int {
        var hash: UInt32 = 2_166_136_261
        for byte in key { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        return Int(hash & UInt32(bucketCount - 1))
    }

    /// What a read notes for a key in `bucket` when it is routed.
    @inline(__always)
    func epoch(_ bucket: Int) -> UInt32 {
        epochs[bucket].load(ordering: .relaxed) &+ flushes.load(ordering: .relaxed)
    }

    /// Whether a read that noted `noted` for `bucket` may copy an old hit of it now.
    func allowsCopy(_ bucket: Int, noted: UInt32) -> Bool {
        epoch(bucket) == noted && inFlight[bucket].load(ordering: .relaxed) == 0 && flushesInFlight.load(ordering: .relaxed) == 0
    }

    fileprivate func begin(_ bucket: Int) {
        inFlight[bucket].add(1, ordering: .relaxed)
        epochs[bucket].add(1, ordering: .relaxed)
    }

    fileprivate func end(_ bucket: Int) {
        epochs[bucket].add(1, ordering: .relaxed)
        inFlight[bucket].subtract(1, ordering: .relaxed)
    }

    fileprivate func beginFlush() {
        flushesInFlight.add(1, ordering: .relaxed)
        flushes.add(1, ordering: .relaxed)
    }

    fileprivate func endFlush() {
        flushes.add(1, ordering: .relaxed)
        flushesInFlight.subtract(1, ordering: .relaxed)
    }
}

/// The deletes (or the flush) of one request sent to both pools of a warm-up, in flight for as
/// long as this object lives: the request's reply slot holds it (`ReplySlot.heldWithRequest`)
/// until the slot is recycled, after every part, the old pool's included, has answered or
/// failed. Released exactly once, whatever way the request ends. Confined to the worker thread
/// of the slot that holds it.
final class WarmupDeletesInFlight {
    private let table: WarmupInvalidations
    private var buckets: [Int32] = []
    private var flush = false

    init(_ table: WarmupInvalidations) {
        self.table = table
    }

    /// A delete of `key` is being sent.
    func add(_ key: UnsafeRawBufferPointer) {
        let bucket = WarmupInvalidations.bucket(key)
        table.begin(bucket)
        buckets.append(Int32(bucket))
    }

    /// A flush of every server of both pools is being sent.
    func addFlush() {
        guard !flush else { return }
        flush = true
        table.beginFlush()
    }

    deinit {
        for bucket in buckets { table.end(Int(bucket)) }
        if flush { table.endFlush() }
    }
}
