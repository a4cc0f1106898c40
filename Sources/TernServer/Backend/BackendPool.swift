import TernCore

/// What backend connections reach of their pool on this worker: its plan, counters and the hot
/// config facts copied out of it (refreshed on reload by the pool), the slow log, and the worker.
/// `PoolRuntime` (Routing/PoolRuntime.swift) is the only subclass: every member here is final
/// (direct calls, stored fields), and the one overridable method, for cluster redirects, is
/// called only on a `-MOVED`/`-ASK`/`-TRYAGAIN` reply.
class BackendPool {
    final var plan: PoolPlan
    final var config: PoolConfig { plan.config }
    final var warmupCounters: WarmupCounters { plan.shared.warmupCounters }
    final var warmupInvalidations: WarmupInvalidations { plan.shared.warmupInvalidations }
    /// The worker, as backend connections see it (unowned(unsafe): the worker outlives its pools).
    final unowned(unsafe) let backendLoop: BackendLoop
    /// This worker's counters for the pool.
    final let stats: PoolCounters
    /// Hot config facts, copied out of `config` (a computed copy of a struct holding arrays
    /// would retain and release each of them on every read). Set by the pool, refreshed on reload.
    final var isRedis = false
    /// How long a request waits for its one server's connect on a pool without `timeout` or
    /// `server_wait` (`ClientConnection.waitsForServer`).
    static let serverWaitWithoutTimeout = 1.5
    final var timeoutSeconds: Double?
    /// How long a request waits for its one server's connect (`server_wait`, else `timeout`,
    /// else 1.5 s), and what the connect backoff's ceiling follows.
    final var serverWaitSeconds = BackendPool.serverWaitWithoutTimeout
    /// `client_output_limit`, shared with the pool's clients (`ReplyOwner.outputLimit`).
    final let outputLimit = OutputLimit()
    final var clientOutputLimit: Int { outputLimit.bytes }
    /// Backend round trips slower than this (µs) are logged; Int.max when the log is off.
    final var slowlogThreshold = Int.max
    /// Where slow requests are recorded, and the config that governs the log: the pool's own,
    /// or for a warm-up's old pool, its new pool's.
    final var slowLog: SlowLog
    final var slowlogMaxLength = 128
    /// `distribution: redis_cluster`: redirects are followed, multi-key checks are per slot.
    final var isCluster = false
    /// A `sentinel:` pool: failing connections ask the sentinels again.
    final var isSentinel = false
    /// Slow requests recorded in the current second (see `admitSlowRequest`).
    private final var slowSecond = 0
    private final var slowRecorded = 0
    /// For a warm-up's old pool, its new pool (slow requests count there). unowned(unsafe): the
    /// new pool owns its old pool (`PoolRuntime.old`), so it outlives it; a retired old pool
    /// drops it (`PoolRuntime.detachObservers`).
    final unowned(unsafe) var slowOwner: BackendPool?

    init(plan: PoolPlan, backendLoop: BackendLoop, stats: PoolCounters) {
        self.plan = plan
        self.backendLoop = backendLoop
        self.stats = stats
        self.slowLog = plan.shared.slowLog
    }

    /// Counts a slow request; true when it may also be written into the slow log: at most
    /// `slowlog_max_len` entries a second per worker.
    final func admitSlowRequest(now: Double) -> Bool {
        if let owner = slowOwner { return owner.admitSlowRequest(now: now) }
        stats.slowRequests.add()
        let second = Int(now)
        if second != slowSecond {
            slowSecond = second
            slowRecorded = 0
        }
        slowRecorded += 1
        return slowRecorded <= slowlogMaxLength
    }

    /// A cluster pool's reply redirected a request (`redirect`), or asked it to try again
    /// (`redirect` nil, `-TRYAGAIN`, from node `server`, the request `asking` there): the
    /// request is re-sent or parked (overridden by the pool, Routing/ClusterRedirects.swift).
    func redirected(_ redirect: ClusterRedirect?, _ request: RedirectedRequest, server: String, asking: Bool) {
        preconditionFailure("overridden by PoolRuntime")
    }

    /// A cluster pool's connection to node `node` failed before it sent `request` (a connect
    /// refused, or its backoff: the node may be failing over): true when the pool keeps it
    /// (Routing/ClusterRedirects.swift), false to fail it with the connection's error.
    func keepUnsent(_ request: RedirectedRequest, node: String) -> Bool { false }
}

/// A request a cluster node redirected (`-MOVED`, `-ASK`) or asked to try again (`-TRYAGAIN`).
struct RedirectedRequest {
    /// Its bytes, as its client's connection sent them.
    let bytes: [UInt8]
    /// The node's error: what the client gets if the request cannot go on in time.
    let error: [UInt8]
    /// The reply it answers.
    let slot: ReplySlot
    let part: Int32
    /// Redirects and retries so far, this one included (`ClusterState.hops`, `.retries`).
    let redirects: UInt8
    let clientIndex: Int
    /// From its first send (infinite without a timeout): the timeout spans every hop and wait.
    let deadline: Double
}

/// What backend connections reach of their server on this worker: its name, address, counters
/// and failures. `ServerRuntime` (Routing/PoolRuntime.swift) is the only subclass. The request
/// path uses the final members; the overridable ones (a failure, a probe's answer, a dedicated
/// connection given back) are called off it.
class BackendServer {
    /// unowned(unsafe): a pool outlives its servers (the worker keeps a retiring server's pool
    /// with it, `RoutingLoop.retiringServers`).
    final unowned(unsafe) let pool: BackendPool
    final var index: Int
    final let address: SocketAddress
    final let name: String
    /// A cluster replica (`read_from`): `index` is its master's; `READONLY` is sent on connect.
    final let isReplica: Bool
    /// This worker's counters for the server, read on every request without a retain: the
    /// reference is unowned(unsafe) and `countersOwner` keeps the object alive.
    final unowned(unsafe) var counters: ServerCounters
    final var countersOwner: ServerCounters
    final var failures = 0
    /// Connects to this server that failed in a row (refused, timed out, a failed TLS handshake,
    /// connected to itself) on any of this worker's connections to it, and when the next may be
    /// tried: a connection opened for one client (a blocking command, a WATCH, a subscription)
    /// waits out the same backoff as the shared ones instead of trying a dead server at once
    /// for every client that asks (thousands of connects a second from one retrying client).
    final var connectFailures = 0
    final var connectRetryAfter: Double = 0
    final var connectError = ""
    /// The last connect failed as refused (or, for a Unix socket, its file gone): the host
    /// answered and nothing listens, a server restarting. Requests then retry the connect
    /// inside the backoff (`ServerConnection.connectIfNeeded`).
    final var connectsRefused = false
    /// When this worker last began a connect to the server (a waiting client's last-chance
    /// connect is skipped if one was begun just before: `connectBeforeWaitEnds`).
    final var lastConnectAt: Double = 0

    init(pool: BackendPool, index: Int, address: SocketAddress, name: String, isReplica: Bool, counters: ServerCounters) {
        self.pool = pool
        self.index = index
        self.address = address
        self.name = name
        self.isReplica = isReplica
        self.countersOwner = counters
        self.counters = counters
    }

    /// The host the server was named by (from `servers:`, or the cluster's map for a replica):
    /// the name a TLS certificate is verified against unless `server_tls.server_name` is set.
    final var host: String? {
        if !isReplica, index < pool.config.servers.count, case let .tcp(host, _) = pool.config.servers[index].address { return host }
        guard let colon = name.lastIndex(of: ":") else { return nil }
        return String(name[..<colon])
    }

    final func recordSuccess() { failures = 0 }

    /// A connect to the server completed: the connect backoff ends.
    final func connectSucceeded() {
        connectFailures = 0
        connectRetryAfter = 0
        connectsRefused = false
    }

    // MARK: Up to the pool (overridden by ServerRuntime)

    func recordFailure() { preconditionFailure("overridden by ServerRuntime") }
    func probeAnswered() { preconditionFailure("overridden by ServerRuntime") }
    func probeFailed() { preconditionFailure("overridden by ServerRuntime") }
    /// A leased dedicated connection comes back (see `ServerRuntime.returnDedicated`).
    func returnDedicated(_ connection: ServerConnection, reusable: Bool) { preconditionFailure("overridden by ServerRuntime") }
}
