#if canImport(Glibc)
import Glibc
#endif
import CLibev
import TernCore

/// One pool as seen by one worker: its listener watcher, its servers and their connections,
/// and the placement table for the servers this worker considers live.
///
/// Ejection (`auto_eject_hosts`) is decided per worker, the way several twemproxy processes
/// would each decide for themselves: no lock is taken on the request path.
final class PoolRuntime: BackendPool {
    unowned(unsafe) let worker: RoutingLoop
    private(set) var servers: [ServerRuntime] = []
    /// `servers` again, unretained, for the request path: an element read from the array is
    /// retained and released around its use, one read from here is not. `servers` keeps the
    /// objects alive; the table is rebuilt whenever `servers` changes (start, reload), which
    /// happens on this worker's thread between requests.
    private var serverTable: UnsafeMutablePointer<Unmanaged<ServerRuntime>>?
    /// Changed by every reload (or cluster map change) that may place a key on another server
    /// than before, or changes `servers` (which objects, or their order): `update`'s answer.
    /// What keeps server positions across loop passes (a warm-up read, an open transaction)
    /// compares it before using them again.
    private(set) var placementGeneration = 0
    /// Set by `retire()`: the pool left service (removed by a reload, its warm-up ended, or
    /// Tern is draining). Nothing new is sent on it and it takes no clients (until then its
    /// listener follows the worker's `takesClients`); what is in flight finishes.
    private(set) var isRetired = false
    private(set) var placement: Placement
    private(set) var limits: MemcacheLimits
    private(set) var respLimits: RespLimits
    /// Redis's caps before AUTH, for pools with `redis_auth`.
    private(set) var preAuthLimits: RespLimits
    /// memcached pools with `users:`, before a client has authenticated: what its
    /// authentication needs (`MemcacheLimits.unauthenticated`).
    private(set) var preAuthMemcacheLimits: MemcacheLimits
    private var listenWatcher: IOWatcher?
    /// A warm-up's old pool (no listener of its own).
    private(set) var old: PoolRuntime?
    var warmup: WarmupConfig? { config.warmup }
    /// More hot config facts (`BackendPool` has those backend connections read), copied out
    /// of `config`. Refreshed on reload.
    private(set) var isRandom = false
    private(set) var requiresAuth = false
    /// `close_on_server_failure`, outside Redis Cluster: on a pool of one server, a request
    /// waits for its connection to the server to be connected (`ClientConnection.waitsForServer`).
    private(set) var waitsForItsServer = false
    /// The pool's users (`users:`, and `default` from `redis_auth`), compiled; shared read-only.
    private(set) var users: [RedisUser] = []
    /// Raised whenever `users` is replaced (start, reload): a client authenticated under an
    /// older generation has its user looked up again by name before its next request.
    private(set) var usersGeneration = 0
    /// `disabled_commands`: bit `tableIndex` set for a disabled command; empty when none.
    private(set) var disabledCommands: [UInt64] = []
    private(set) var hasDisabledCommands = false
    /// This worker's per-command table and hot-key sketch (nil: `hot_keys: 0`, or an old pool,
    /// whose keys are its new pool's).
    let commandStats: CommandStats
    private(set) var hotKeys: HotKeys?
    /// Keys until the next one is sampled for the hot-key sketch.
    private var hotKeyCountdown = 1
    /// A cluster pool whose slot map is not known yet (every seed down): `-CLUSTERDOWN`.
    private(set) var clusterMapMissing = false
    /// Cluster pools: requests waiting in Tern for a map that knows their node or for a moment
    /// to try again (redirected, unsent, and requests in phases: `WaitingRedirect`), and the
    /// timer that sends them or fails them at their deadline (see `followRedirect`).
    var waiting: [WaitingRedirect] = []
    var parkTimer: TimerWatcher?
    /// When `parkTimer` fires (while it is active).
    var parkTimerAt = Double.infinity
    /// Numbers the requests kept waiting in the order they were kept (`WaitingRedirect.sequence`).
    var parkSequence = 0
    /// `read_from` other than master: the replicas of each server (`servers[i]`'s in
    /// `replicas[i]`), which get `READONLY` on connect and single-key reads.
    private(set) var replicas: [[ServerRuntime]] = []
    private(set) var readsFromReplicas = false

    init(plan: PoolPlan, worker: RoutingLoop) {
        self.worker = worker
        self.placement = plan.config.placement()
        (self.limits, self.respLimits) = Self.requestLimits(plan.config)
        self.preAuthLimits = respLimits.unauthenticated
        self.preAuthMemcacheLimits = limits.unauthenticated
        self.commandStats = plan.shared.commandStats[worker.identifier]
        self.old = plan.warmup.map { PoolRuntime(plan: $0, worker: worker) }
        super.init(plan: plan, backendLoop: worker, stats: plan.shared.workerCounters[worker.identifier])
        self.servers = plan.config.servers.indices.map { ServerRuntime(pool: self, index: $0, address: plan.serverAddresses[$0]) }
        cacheHotSettings()
        rebuildServerTable()
        rebuildReplicas()
    }

    deinit { serverTable?.deallocate() }

    override func redirected(_ redirect: ClusterRedirect?, _ request: RedirectedRequest, server: String, asking: Bool) {
        if let redirect {
            followRedirect(redirect, request)
        } else {
            retryLater(request, server: server, asking: asking)
        }
    }

    override func keepUnsent(_ request: RedirectedRequest, node: String) -> Bool {
        keepUnsentRequest(request, node: node)
    }

    private func rebuildServerTable() {
        serverTable?.deallocate()
        serverTable = unretainedTable(of: servers)
    }

    /// Calls `body` with the connection that client `clientIndex` uses to reach server `server`
    /// (a position in `servers`), taking no reference to the server or the connection.
    @inline(__always)
    func withConnection<Result>(toServer server: Int, client clientIndex: Int, _ body: (ServerConnection) -> Result) -> Result {
        precondition(server >= 0 && server < servers.count, "server \(server) of \(servers.count)")
        return serverTable.unsafelyUnwrapped[server]._withUnsafeGuaranteedRef { $0.withConnection(for: clientIndex, body) }
    }

    /// What a client may send, from the pool's config.
    private static func requestLimits(_ config: PoolConfig) -> (MemcacheLimits, RespLimits) {
        (MemcacheLimits(maxItemSize: config.maxItemSize, strictKeys: config.strictKeys),
         RespLimits(maxBulkLength: config.maxBulkLength, maxRequestLength: config.clientQueryLimit))
    }

    private func cacheHotSettings() {
        let config = plan.config
        isRedis = config.protocolKind == .redis
        isRandom = config.distribution == .random
        waitsForItsServer = config.closesClientsOnServerFailure && config.distribution != .redisCluster && config.serverWaitMilliseconds != 0
        isCluster = config.distribution == .redisCluster
        clusterMapMissing = isCluster && config.slotServers.isEmpty
        readsFromReplicas = isCluster && config.readFrom != .master
        isSentinel = config.sentinel != nil
        requiresAuth = config.clientsMustAuthenticate
        users = plan.users
        usersGeneration &+= 1
        disabledCommands = []
        hasDisabledCommands = !config.disabledCommands.isEmpty
        if hasDisabledCommands {
            disabledCommands = [UInt64](repeating: 0, count: (RedisCommandTable.commands.count + 63) / 64)
            for name in config.disabledCommands {
                guard let index = RedisCommandTable.byName[name].map({ Int($0.tableIndex) }) else { continue }
                disabledCommands[index >> 6] |= 1 << UInt64(index & 63)
            }
        }
        timeoutSeconds = config.timeoutMilliseconds.map { Double($0) / 1000 }
        serverWaitSeconds = config.serverWaitMilliseconds.map { Double($0) / 1000 } ?? timeoutSeconds ?? BackendPool.serverWaitWithoutTimeout
        outputLimit.bytes = config.clientOutputLimit
        if plan.listenDescriptor >= 0 || plan.warmup != nil {
            // A pool clients reach (an old pool gets its settings from `adoptObservers`).
            slowlogThreshold = config.slowlogSlowerThanMicroseconds < 0 ? Int.max : config.slowlogSlowerThanMicroseconds
            slowlogMaxLength = config.slowlogMaxLength
            hotKeys = config.hotKeys > 0 ? plan.shared.hotKeys[worker.identifier] : nil
            old?.adoptObservers(of: self)
        }
    }

    /// A retired old pool may outlive its new pool (its requests finish after the warm-up
    /// ended): it stops pointing at it, and logs nothing more.
    fileprivate func detachObservers() {
        slowOwner = nil
        slowlogThreshold = Int.max
    }

    /// A warm-up's old pool logs its slow requests into its new pool's slow log.
    private func adoptObservers(of newPool: PoolRuntime) {
        slowLog = newPool.slowLog
        // unowned(unsafe): the new pool owns this old pool (`old`), so it outlives it.
        slowOwner = newPool
        slowlogThreshold = newPool.slowlogThreshold
        slowlogMaxLength = newPool.slowlogMaxLength
        hotKeys = nil
    }

    func start() {
        old?.start()
        if config.preconnect {
            for server in servers { server.connectAll() }
        }
        startListening()
    }

    /// The worker joined or left the workers that take new clients.
    func followTakesClients() {
        guard !isRetired else { return }
        if worker.takesClients { startListening() } else { stopListening() }
    }

    private func startListening() {
        // Workers that take no new clients (elastic workers not yet active) do not watch.
        guard plan.listenDescriptor >= 0, listenWatcher == nil, worker.takesClients, !isRetired else { return }
        let watcher = IOWatcher.make(loop: worker.loop, descriptor: plan.listenDescriptor, owner: self) { _, watcher, _ in
            let pool = Unmanaged<PoolRuntime>.fromOpaque(tern_get_data(watcher)!).takeUnretainedValue()
            pool.acceptClients()
        }
        watcher.watch(TERN_EV_READ)
        listenWatcher = watcher
    }

    func stopListening() {
        resumeTimer?.stop()
        guard let watcher = listenWatcher else { return }
        watcher.watch(0)
        worker.retire(watcher)
        listenWatcher = nil
    }

    /// A reload: same pool name, new config. Clients keep their sockets and their next request
    /// is routed by the new servers; a server that keeps its name and address keeps its
    /// connections (unless how they are set up changed: `redis_auth`, `redis_db`, `server_tls`);
    /// the others close once their in-flight requests have finished. (A pool whose protocol
    /// changes is replaced, not updated: `Worker.apply`.)
    /// The user named `name` (nil: `default`) when `password` is theirs: the password's SHA-256
    /// compared in constant time with the user's, and with a dummy for an unknown user, so
    /// that the time taken does not tell which.
    func verify(user name: UnsafeRawBufferPointer?, password: UnsafeRawBufferPointer) -> RedisUser? {
        let found: RedisUser?
        if let name {
            found = users.first { $0.name.utf8.count == name.count && $0.name.utf8.elementsEqual(name) }
        } else {
            found = users.first { $0.name == "default" }
        }
        let given = SHA256.digest(password)
        let matches = SHA256.constantTimeEqual(given, found?.passwordSHA256 ?? [UInt8](repeating: 0, count: 32))
        return matches ? found : nil
    }

    /// The current user named like `user` (after a reload), or nil when it is gone.
    func currentUser(named user: RedisUser) -> RedisUser? {
        users.first { $0.name == user.name }
    }

    /// The user called `name` (a TLS client certificate's common name), if any.
    func currentUser(named name: String) -> RedisUser? {
        users.first { $0.name == name }
    }

    /// Whether `command` is in `disabled_commands`.
    @inline(__always)
    func isDisabled(_ command: RedisCommand) -> Bool {
        let index = Int(command.tableIndex)
        return disabledCommands.withUnsafeBufferPointer { $0[index >> 6] } & (1 << UInt64(index & 63)) != 0
    }

    /// Whether the last `update` placed keys differently (servers, weights, hash, hash tag,
    /// distribution), as opposed to only giving a server a new address (a Sentinel failover).
    private(set) var keysMovedByLastUpdate = false

    /// Applies a reload. Returns whether a key or channel may now be placed on another server
    /// than before, or the server list changed (which servers, their order, addresses, weights,
    /// the hash, hash tag or distribution).
    @discardableResult
    func update(_ newPlan: PoolPlan) -> Bool {
        let listenChanged = newPlan.listenDescriptor != plan.listenDescriptor
        if listenChanged { stopListening() }
        let previous = servers
        let placedLike = plan.config.placesKeysLike(newPlan.config)
        keysMovedByLastUpdate = !placedLike
        // What a backend connection is set up with (AUTH, SELECT, TLS): changed, no connection
        // is kept, or requests on kept connections would go on to the old database (a reload
        // to `redis_db: 3` split the pool's data: shared connections stayed on db 0 while new
        // ones, WATCH and blocking ones among them, used db 3).
        let connectionsKept = plan.config.redisAuth == newPlan.config.redisAuth
            && plan.config.redisDatabase == newPlan.config.redisDatabase
            && plan.config.serverTLS == newPlan.config.serverTLS
        plan = newPlan
        cacheHotSettings()
        (limits, respLimits) = Self.requestLimits(newPlan.config)
        preAuthLimits = respLimits.unauthenticated
        preAuthMemcacheLimits = limits.unauthenticated
        var kept: [ServerRuntime] = []
        for (index, server) in newPlan.config.servers.enumerated() {
            let address = newPlan.serverAddresses[index]
            if connectionsKept, let same = previous.first(where: { candidate in
                candidate.name == server.name && candidate.address == address && !kept.contains { $0 === candidate }
            }) {
                same.reuse(at: index)
                kept.append(same)
            } else {
                kept.append(ServerRuntime(pool: self, index: index, address: newPlan.serverAddresses[index]))
            }
        }
        for server in previous where !kept.contains(where: { $0 === server }) {
            // A Sentinel master at a new address (a failover): what is in flight on the old one
            // fails now, as README says. Left to finish, a request written to a master that hung
            // ran when it came back as a stale master, and its `+OK` reached the client while the
            // write was lost in the resync (Sentinel sweep 33: 108 acknowledged writes).
            if isSentinel, newPlan.config.servers.indices.contains(where: { newPlan.config.servers[$0].name == server.name && newPlan.serverAddresses[$0] != server.address }) {
                server.failInFlight(reason: "master moved (failover): the sentinels named another address")
            }
            worker.retireWhenIdle(server)
        }
        let moved = !placedLike || kept.count != previous.count || zip(kept, previous).contains(where: { $0 !== $1 })
        servers = kept
        rebuildServerTable()
        rebuildPlacement()
        rebuildReplicas(keepingConnections: connectionsKept)
        redispatchParked()
        if let oldPlan = newPlan.warmup {
            if let old { old.update(oldPlan) } else {
                let created = PoolRuntime(plan: oldPlan, worker: worker)
                old = created
                created.start()
            }
            old?.adoptObservers(of: self)
        } else if let old {
            old.detachObservers()
            old.retire()
            worker.retireWhenIdle(old)
            self.old = nil
        }
        if config.preconnect {
            for server in servers { server.connectAll() }
        }
        if listenChanged { startListening() }
        if moved { placementGeneration &+= 1 }
        // Clients waiting for a server's connect (`ClientConnection.waitsForServer`) look again
        // now, not at their next wake (up to 2 s away): a new address (a Sentinel failover, a
        // reload) is tried at once, and a wait the reload turned off or shortened ends at once.
        worker.serverConnectSettled()
        return moved
    }

    /// The pool left the config (or Tern is draining): stop accepting; backend connections
    /// close once their in-flight requests have finished.
    func retire() {
        isRetired = true
        old?.detachObservers()
        stopListening()
        expireParked(all: true)
        for server in servers { server.expireWaiting(now: worker.now, all: true, reason: "pool no longer served (reload or shutdown)") }
        parkTimer?.stop()
        for server in servers + replicas.joined() { worker.retireWhenIdle(server) }
        replicas = []
        old?.retire()
    }

    private func acceptClients() {
        // A bounded batch per wake-up leaves the rest to the other workers.
        for _ in 0..<64 {
            switch Syscall.accept(plan.listenDescriptor) {
            case let .transferred(descriptor):
                let fd = Int32(descriptor)
                plan.shared.totalConnections.add(1, ordering: .relaxed)
                let open = plan.shared.clientCount.add(1, ordering: .relaxed).newValue
                if config.clientConnections > 0, open > config.clientConnections {
                    // Over the limit: accepted and closed at once.
                    plan.shared.clientCount.subtract(1, ordering: .relaxed)
                    Syscall.close(fd)
                    stats.refusedClients.add()
                    if let suppressed = refusedLog.admit(now: worker.now) {
                        worker.logger.warning("pool \(config.name): client_connections limit \(config.clientConnections) reached, closing new clients (\(suppressed) more since the last line)")
                    }
                    continue
                }
                if case .tcp = config.listen {
                    Syscall.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY)
                    // As nutcracker sets it: half-open clients (a host gone, a NAT that forgot
                    // them) are found and closed.
                    if config.tcpKeepalive { Syscall.setOption(fd, SOL_SOCKET, SO_KEEPALIVE) }
                }
                worker.accepted(descriptor: fd, pool: self)
            case .wouldBlock:
                return
            case let .failed(error):
                stats.acceptErrors.add()
                if let suppressed = acceptLog.admit(now: worker.now) {
                    worker.logger.error("pool \(config.name): accept failed: \(Syscall.errorText(error)) (\(suppressed) more since the last line)")
                }
                if error == EMFILE || error == ENFILE || error == ENOBUFS || error == ENOMEM {
                    // Out of descriptors: the pending connection stays in the backlog and a
                    // level-triggered watcher would report it again at once. Stop watching the
                    // listener for a moment instead of spinning.
                    pauseAccepting(seconds: 0.1)
                }
                return
            case .endOfFile:
                return
            }
        }
    }

    private var acceptLog = LogThrottle()
    /// Clients closed over `client_output_limit` (written by their connections).
    var limitLog = LogThrottle()
    /// Failed authentications, logged at most once a second per worker.
    var authLog = LogThrottle()
    /// Failed TLS handshakes (written by the client connections).
    var tlsLog = LogThrottle()
    private var refusedLog = LogThrottle()
    private var resumeTimer: TimerWatcher?

    private func pauseAccepting(seconds: Double) {
        guard let watcher = listenWatcher else { return }
        watcher.watch(0)
        let timer = resumeTimer ?? TimerWatcher(loop: worker.loop, owner: self) { _, watcher, _ in
            let pool = Unmanaged<PoolRuntime>.fromOpaque(tern_get_data(watcher)!).takeUnretainedValue()
            pool.resumeTimer?.fired()
            // Still listening (no reload or drain stopped it meanwhile): watch again.
            pool.listenWatcher?.watch(TERN_EV_READ)
        }
        resumeTimer = timer
        timer.start(after: seconds)
    }

    var isAccepting: Bool { listenWatcher != nil }

    /// No request in flight on this pool's servers or its old pool's.
    var isIdle: Bool { servers.allSatisfy(\.isIdle) && replicas.joined().allSatisfy(\.isIdle) && (old?.isIdle ?? true) }

    func closeConnections() {
        for server in servers + replicas.joined() { server.closeConnections() }
        old?.closeConnections()
    }

    func clientClosed() {
        plan.shared.clientCount.subtract(1, ordering: .relaxed)
        stats.clients.subtract(1, ordering: .relaxed)
    }

    /// The server a key goes to, or nil when no server is live.
    @inline(__always)
    func server(forKey key: UnsafeRawBufferPointer) -> ServerRuntime? {
        guard let index = serverIndex(forKey: key) else { return nil }
        return servers[index]
    }

    /// The position in `servers` of the server a key goes to (comparing positions takes no
    /// reference to the server), or nil when no server is live.
    @inline(__always)
    func serverIndex(forKey key: UnsafeRawBufferPointer) -> Int? {
        hotKeyCountdown &-= 1
        if hotKeyCountdown == 0 { sampleHotKey(key) }
        let random = isRandom ? worker.nextRandom() : 0
        return withPlacement { $0.server(forKey: key, random: random) }
    }

    /// The placement, lent without a retain (a call on the `var` took and dropped a reference
    /// per request). Sound because only this worker replaces `placement` (at reload or an
    /// ejection, between loop callbacks) and `body` does neither.
    @inline(__always)
    private func withPlacement<R>(_ body: (Placement) -> R) -> R {
        Unmanaged.passUnretained(placement)._withUnsafeGuaranteedRef(body)
    }

    /// The same placement without counting the key as requested (a second lookup of a key
    /// already counted).
    @inline(__always)
    func serverIndexUncounted(forKey key: UnsafeRawBufferPointer) -> Int? {
        let random = isRandom ? worker.nextRandom() : 0
        return withPlacement { $0.server(forKey: key, random: random) }
    }

    /// Cluster pools: the hash slot of a key and the master serving it (nil: none serves the
    /// slot). The key is counted as requested, as `serverIndex(forKey:)` counts it.
    @inline(__always)
    func clusterSlot(forKey key: UnsafeRawBufferPointer) -> (slot: Int, server: Int?) {
        hotKeyCountdown &-= 1
        if hotKeyCountdown == 0 { sampleHotKey(key) }
        return withPlacement { placement in
            let slot = placement.keyHash(key)
            return (Int(slot), placement.server(forHash: slot))
        }
    }

    @inline(never)
    private func sampleHotKey(_ key: UnsafeRawBufferPointer) {
        // The next sample comes after 1…63 keys (32 on average), at random so that a client
        // cycling through a fixed set of keys is not always sampled on the same one.
        hotKeyCountdown = 1 + Int(worker.nextRandom() % UInt32(2 * HotKeys.sampleInterval - 1))
        hotKeys?.add(key)
    }

    // MARK: Cluster replicas (read_from)

    /// Makes `replicas` match the plan: a replica that keeps its name and address keeps its
    /// connections (unless `keepingConnections` is false), the others close once idle.
    private func rebuildReplicas(keepingConnections: Bool = true) {
        let previous = Array(replicas.joined())
        var kept: [ServerRuntime] = []
        var next: [[ServerRuntime]] = []
        if readsFromReplicas {
            for (master, list) in config.replicaServers.enumerated() where master < servers.count {
                var row: [ServerRuntime] = []
                for (position, replica) in list.enumerated() {
                    guard master < plan.replicaAddresses.count, position < plan.replicaAddresses[master].count,
                          let address = plan.replicaAddresses[master][position] else { continue }
                    if keepingConnections, let same = previous.first(where: { candidate in
                        candidate.name == replica.name && candidate.address == address && !kept.contains { $0 === candidate }
                    }) {
                        same.reuse(replicaOf: master)
                        kept.append(same)
                        row.append(same)
                    } else {
                        let created = ServerRuntime(pool: self, replicaOf: master, name: replica.name, address: address)
                        row.append(created)
                    }
                }
                next.append(row)
            }
        }
        for server in previous where !kept.contains(where: { $0 === server }) { worker.retireWhenIdle(server) }
        replicas = next
    }

    /// A replica of server `master` for client `clientIndex` to read from (always the same one
    /// for a client), or nil: the master then serves the read (no replica, or with
    /// `prefer_replica` the replica's connection is failing).
    func readReplica(ofServer master: Int, client clientIndex: Int) -> ServerRuntime? {
        guard master < replicas.count else { return nil }
        let list = replicas[master]
        guard !list.isEmpty else { return nil }
        let replica = list[clientIndex % list.count]
        if config.readFrom == .preferReplica, replica.connection(for: clientIndex).isBackingOff { return nil }
        return replica
    }

    // MARK: Ejection

    func eject(_ server: ServerRuntime) {
        guard config.autoEjectHosts, !server.isEjected else { return }
        server.isEjected = true
        stats.serverEjects.add()
        server.counters.ejections.add()
        var now = timeval()
        gettimeofday(&now, nil)
        // nutcracker reports microseconds since the epoch.
        server.counters.serverEjectedAt.set(Int(now.tv_sec) * 1_000_000 + Int(now.tv_usec))
        worker.logger.warning("pool \(config.name): ejecting server \(server.name) for \(config.serverRetryTimeoutMilliseconds) ms after \(server.failures) failures")
        rebuildPlacement()
        worker.placementChanged(self)
        server.scheduleProbe()
    }

    func reinstate(_ server: ServerRuntime) {
        guard server.isEjected else { return }
        server.isEjected = false
        server.failures = 0
        worker.logger.notice("pool \(config.name): server \(server.name) answered, back in the ring")
        rebuildPlacement()
        worker.placementChanged(self)
    }

    func rebuildPlacement() {
        placement = config.placement(live: servers.map { !$0.isEjected })
        learnedSlots = nil
    }

    /// Cluster pools: the map with the slots this worker learned from `-MOVED` since the last
    /// map (nil: none learned).
    private var learnedSlots: [Int32]?

    /// Cluster pools: a `-MOVED` named `server` as the owner of `slot`: this worker routes the
    /// slot there at once, so that a reshard costs one redirect per slot and worker rather than
    /// one per request until the refreshed map arrives (which replaces this). Off the common
    /// path; copies the 16384-entry table.
    func learnSlot(_ slot: Int, server: Int) {
        guard isCluster, slot >= 0, slot < hashSlotCount, placement.server(forHash: UInt32(slot)) != server else { return }
        var table = learnedSlots ?? config.slotServers
        guard table.count == hashSlotCount else { return }
        table[slot] = Int32(server)
        learnedSlots = table
        var patched = config
        patched.slotServers = table
        placement = patched.placement()
    }
}

/// One backend server of a pool, on one worker.
final class ServerRuntime: BackendServer {
    /// The server's pool: `pool` (declared by `BackendServer`) as what it is.
    var poolRuntime: PoolRuntime {
        // Invariant: PoolRuntime is the only subclass of BackendPool, and BackendPool itself is
        // never made, so every server's pool is a PoolRuntime.
        unsafeDowncast(pool, to: PoolRuntime.self)
    }
    private(set) var connections: [ServerConnection] = []
    var isEjected = false
    private var probeTimer: TimerWatcher?
    private var probeConnection: ServerConnection?

    init(pool: PoolRuntime, index: Int, address: SocketAddress) {
        super.init(pool: pool, index: index, address: address, name: pool.config.servers[index].name, isReplica: false,
                   counters: pool.plan.serverCounters[index][pool.worker.identifier])
        self.connections = (0..<pool.config.serverConnections).map { _ in ServerConnection(server: self) }
        connectionTable = unretainedTable(of: connections)
    }

    /// A replica of server `master` of a cluster pool. Its counters are its own (the pool's
    /// per-server figures are the masters').
    init(pool: PoolRuntime, replicaOf master: Int, name: String, address: SocketAddress) {
        super.init(pool: pool, index: master, address: address, name: name, isReplica: true, counters: ServerCounters())
        self.connections = (0..<pool.config.serverConnections).map { _ in ServerConnection(server: self) }
        connectionTable = unretainedTable(of: connections)
    }

    /// A replica kept across a new map, whose master may sit at another position.
    func reuse(replicaOf master: Int) { index = master }

    deinit { connectionTable?.deallocate() }

    /// `connections` again, unretained (see `PoolRuntime.serverTable`); `connections` never
    /// changes after init.
    private var connectionTable: UnsafeMutablePointer<Unmanaged<ServerConnection>>?

    /// Calls `body` with the connection client `clientIndex` uses (the one `connection(for:)`
    /// returns), taking no reference to it.
    @inline(__always)
    func withConnection<Result>(for clientIndex: Int, _ body: (ServerConnection) -> Result) -> Result {
        let count = connections.count
        return connectionTable.unsafelyUnwrapped[count == 1 ? 0 : clientIndex % count]._withUnsafeGuaranteedRef(body)
    }

    var worker: RoutingLoop { poolRuntime.worker }

    /// Kept across a reload, possibly at another position in `servers:`.
    func reuse(at newIndex: Int) {
        index = newIndex
        countersOwner = pool.plan.serverCounters[newIndex][worker.identifier]
        counters = countersOwner
    }

    /// True once no connection has a request in flight.
    var isIdle: Bool { connections.allSatisfy(\.isIdle) && (probeConnection?.isIdle ?? true) && leasedDedicated == 0 }

    /// Closes the shared connections and the probe's, failing what is in flight on them (the
    /// replies of a server that is no longer the master cannot be trusted).
    func failInFlight(reason: String) {
        for connection in connections { connection.abandon(reason: reason) }
        probeConnection?.closeIfOpen()
    }

    func closeConnections() {
        for connection in connections { connection.closeIfOpen() }
        for connection in idleDedicated + leased { connection.closeIfOpen() }
        idleDedicated.removeAll()
        closePushConnections()
        probeConnection?.closeIfOpen()
        probeTimer?.stop()
    }

    // MARK: Dedicated connections (WATCH, blocking commands)

    /// Connections leased to one client at a time: for a WATCH until its EXEC, or for one
    /// blocking command. At most `dedicated_connections` are leased at once (per worker); idle
    /// ones are kept for reuse only when they ended clean.
    private var idleDedicated: [ServerConnection] = []
    /// The leased ones, kept alive here: their watchers reach them unretained, and a client may
    /// let go of its lease while a request is still in flight (EXEC, UNWATCH).
    private var leased: [ServerConnection] = []
    var leasedDedicated: Int { leased.count }
    /// Blocking requests waiting for a dedicated connection, oldest first.
    private var waiting: [DedicatedWaiter] = []

    /// Leased ones that carry a blocking command.
    private var leasedBlocking = 0

    /// A dedicated connection, or nil when `dedicated_connections` of its kind are leased:
    /// blocking commands have that many, and `WATCH` (and `SCRIPT KILL`) as many again, so that
    /// clients blocked in `BLPOP … 0` (a queue's idle workers) never leave a transaction
    /// without one (they refused every `WATCH` once 64 were blocked).
    func leaseDedicated(forBlocking: Bool = false) -> ServerConnection? {
        let limit = pool.config.dedicatedConnections
        guard forBlocking ? leasedBlocking < limit : leased.count - leasedBlocking < limit else { return nil }
        if forBlocking { leasedBlocking += 1 }
        pool.stats.dedicatedLeases.add()
        pool.stats.dedicatedInUse.add(1)
        let connection = idleDedicated.popLast() ?? ServerConnection(server: self, isDedicated: true)
        connection.lease += 1
        connection.isLeased = true
        connection.isBlocking = forBlocking
        if forBlocking { pool.stats.blockedClients.add(1) }
        leased.append(connection)
        return connection
    }

    /// A leased connection comes back: kept when it is open and clean, else closed. A waiting
    /// blocking request, if any, takes it.
    override func returnDedicated(_ connection: ServerConnection, reusable: Bool) {
        guard connection.isLeased else { return }
        connection.isLeased = false
        let wasBlocking = connection.isBlocking
        if wasBlocking {
            connection.isBlocking = false
            leasedBlocking -= 1
            pool.stats.blockedClients.add(-1)
        }
        leased.removeAll { $0 === connection }
        pool.stats.dedicatedInUse.add(-1)
        let wasScratch = connection.isScratch
        connection.isScratch = false
        if reusable, !wasScratch, connection.isIdle, idleDedicated.count < 8 {
            idleDedicated.append(connection)
        } else {
            connection.closeIfOpen()
        }
        // The waiters are blocking commands: only a blocking lease's return makes room for one.
        while wasBlocking, !waiting.isEmpty {
            let waiter = waiting.removeFirst()
            // A client that left while waiting has nothing to run; nor has one leaving now (its
            // own blocked command may be the one that gave this connection back).
            guard let client = waiter.slot.client, !client.isClosed else { continue }
            if waiter.waitUntil <= worker.now {
                // Out of time (its timer is about to say so): not sent, so nothing is popped
                // for a client that gets a timeout.
                Self.expire(waiter)
                continue
            }
            worker.runWaiting(waiter, client: client, on: self)
            break
        }
    }

    func waitForDedicated(_ waiter: DedicatedWaiter) {
        waiting.append(waiter)
        if waiter.waitUntil.isFinite { poolRuntime.armParkTimer() }
    }

    /// Takes `client`'s waiting blocking requests out (it closed its side): their slots are
    /// added to `slots`, for the caller to fail.
    func takeWaiting(of client: ReplyOwner, into slots: inout [ReplySlot]) {
        guard !waiting.isEmpty else { return }
        waiting.removeAll { waiter in
            guard waiter.slot.client === client else { return false }
            slots.append(waiter.slot)
            return true
        }
    }

    /// Whether a blocking request of `client` waits here for a dedicated connection.
    func hasWaiting(of client: ReplyOwner) -> Bool {
        waiting.contains { $0.slot.client === client }
    }

    /// The earliest deadline of a waiting blocking request (infinite when none has one).
    var nextWaitingDeadline: Double {
        waiting.reduce(Double.infinity) { min($0, $1.waitUntil) }
    }

    /// Waiting blocking requests whose deadline has passed (all of them when `all`: the server
    /// leaves) fail; a client that left has nothing to answer.
    ///
    /// The expired ones are taken out first and fail once `waiting` is final: failing one may
    /// close its client (over `client_output_limit`), which gives its dedicated connections
    /// back, and that runs the next waiter, which must be in `waiting` then.
    func expireWaiting(now: Double, all: Bool = false, reason: String = "Connection timed out", serverFailure: Bool = false) {
        guard !waiting.isEmpty else { return }
        var expired: [DedicatedWaiter] = []
        waiting.removeAll { waiter in
            guard all || waiter.waitUntil <= now else { return false }
            expired.append(waiter)
            return true
        }
        for waiter in expired where waiter.slot.client != nil {
            if all { waiter.slot.fail(part: ReplyPart.whole, reason: reason, serverFailure: serverFailure) } else { Self.expire(waiter) }
        }
    }

    /// A blocking request whose wait for a dedicated connection ran out: the pool's timeout
    /// error, or without a pool timeout the reply to a blocking command whose own timeout
    /// passed with nothing to pop (RESP2's null array, whatever the command).
    private static func expire(_ waiter: DedicatedWaiter) {
        guard waiter.isTimedOutWithoutConnection else {
            return waiter.slot.fail(part: ReplyPart.whole, reason: "Connection timed out")
        }
        waiter.slot.complete(with: "*-1\r\n" as StaticString)
    }

    // MARK: Push connections (pub/sub)

    /// Subscribed clients' connections to this server, kept alive here (their watchers reach
    /// them unretained). When the server leaves (reload) they close, and so do their clients.
    private var pushConnections: [ServerConnection] = []

    func openPushConnection(for client: ReplyOwner) -> ServerConnection {
        let connection = ServerConnection(server: self, isDedicated: true)
        connection.pushClient = client
        pushConnections.append(connection)
        return connection
    }

    func closePushConnection(_ connection: ServerConnection) {
        connection.pushClient = nil
        connection.closeIfOpen()
        pushConnections.removeAll { $0 === connection }
    }

    /// The server leaves the pool (a reload, a Sentinel failover's new address, a drain): its
    /// sessions end now rather than keep it alive. WATCHes on it end (the `EXEC` answers a
    /// null array); blocked commands end as a failed server's requests do: their clients are
    /// closed where the pool closes clients on a server failure (a one-server pool: an error
    /// there stopped RQ and Celery workers at a routine failover), else answered an error;
    /// subscribed clients are closed (they re-subscribe on reconnect).
    func endSessions() {
        let reason = "server left the pool (reload, failover or shutdown)"
        let blockingFails = !pool.isCluster
        expireWaiting(now: worker.now, all: true, reason: reason, serverFailure: blockingFails)
        for connection in leased {
            connection.abandon(reason: reason, serverFailure: blockingFails && connection.isBlocking)
            returnDedicated(connection, reusable: false)
        }
        closePushConnections()
    }

    private func closePushConnections() {
        let connections = pushConnections
        pushConnections.removeAll()
        for connection in connections {
            let client = connection.pushClient
            connection.pushClient = nil
            connection.closeIfOpen()
            client?.close()
        }
    }

    /// The connection a client uses: always the same one for a given client, so one client's
    /// requests to one server stay in order. With one connection per server (the default) no
    /// division is needed.
    @inline(__always)
    func connection(for clientIndex: Int) -> ServerConnection {
        withConnection(for: clientIndex) { $0 }
    }

    func connectAll() {
        for connection in connections { connection.connectIfNeeded() }
    }

    override func recordFailure() {
        failures += 1
        if pool.config.autoEjectHosts, failures >= pool.config.serverFailureLimit {
            poolRuntime.eject(self)
        }
    }

    func scheduleProbe() {
        let timer = probeTimer ?? TimerWatcher(loop: worker.loop, owner: self) { _, watcher, _ in
            let server = Unmanaged<ServerRuntime>.fromOpaque(tern_get_data(watcher)!).takeUnretainedValue()
            server.probeTimer?.fired()
            server.probe()
        }
        probeTimer = timer
        timer.start(after: Double(max(1, pool.config.serverRetryTimeoutMilliseconds)) / 1000)
    }

    /// After `server_retry_timeout`, an ejected server gets one request of its own; it returns to
    /// the ring only when that request is answered.
    private func probe() {
        guard isEjected else { return }
        let connection = probeConnection ?? ServerConnection(server: self)
        probeConnection = connection
        connection.sendProbe()
    }

    override func probeAnswered() { poolRuntime.reinstate(self) }

    /// A failed probe counts as another ejection (`server_ejects`, the server's ejection count
    /// and `server_ejected_at`), as nutcracker's re-insertion after `server_retry_timeout`
    /// ends in one: an alert on the ejection count's increase keeps firing while the server
    /// stays down (it counted one per outage: drop-in sweep 32).
    override func probeFailed() {
        guard isEjected else { return }
        poolRuntime.stats.serverEjects.add()
        counters.ejections.add()
        var now = timeval()
        gettimeofday(&now, nil)
        counters.serverEjectedAt.set(Int(now.tv_sec) * 1_000_000 + Int(now.tv_usec))
        scheduleProbe()
    }
}

/// A blocking request that found every dedicated connection of its server leased: its bytes,
/// its slot and its timeout wait for the next one returned.
struct DedicatedWaiter {
    let slot: ReplySlot
    let request: [UInt8]
    /// Seconds added to the pool's timeout (nil: no proxy timeout, the command blocks forever).
    let blockFor: Double?
    /// When it came plus the pool's timeout and `blockFor` (infinite without them): the time
    /// spent waiting for a connection counts.
    let deadline: Double
    /// Sent after `ASKING` (a cluster node's `-ASK` followed).
    var asking = false

    init(slot: ReplySlot, request: [UInt8], blockFor: Double?, deadline: Double, now: Double) {
        self.slot = slot
        self.request = request
        self.blockFor = blockFor
        self.deadline = deadline
        waitUntil = deadline.isFinite ? deadline : blockFor.map { now + $0 } ?? .infinity
    }

    /// How long it may wait for a dedicated connection: its deadline, or without a pool
    /// timeout its own timeout (infinite for a command that blocks forever). A command still
    /// waiting then is answered as Redis answers one whose timeout passed with nothing to pop
    /// (`isTimedOutWithoutConnection`): it never ran, so nothing was popped.
    let waitUntil: Double
    /// Out of time while waiting, with no pool timeout: its own timeout passed.
    var isTimedOutWithoutConnection: Bool { !deadline.isFinite }
}

/// `objects` as a table of unretained references (see `PoolRuntime.serverTable`). The caller keeps
/// the array, which owns the objects, and deallocates the table.
private func unretainedTable<Object: AnyObject>(of objects: [Object]) -> UnsafeMutablePointer<Unmanaged<Object>> {
    let table = UnsafeMutablePointer<Unmanaged<Object>>.allocate(capacity: max(1, objects.count))
    for (index, object) in objects.enumerated() { (table + index).initialize(to: .passUnretained(object)) }
    return table
}

extension ServerConnection {
    /// The connection's server (`server`, declared as a `BackendServer`) as what it is.
    var serverRuntime: ServerRuntime {
        // Invariant: ServerRuntime is the only subclass of BackendServer, and BackendServer
        // itself is never made, so every connection's server is a ServerRuntime.
        unsafeDowncast(server, to: ServerRuntime.self)
    }
}
