#if canImport(Glibc)
import Glibc
#endif
import CLibev
import CTernBlocks
import Logging
import Synchronization
import TernCore

public let ternVersion = "0.1.0"

public struct ServerOptions: Sendable {
    public var threads: Int
    public var pidFile: String?
    public var configPath: String
    /// nutcracker's stats port (`-s`, `-a`); nil: not served.
    public var statsAddress: String = "0.0.0.0"
    public var statsPort: Int?
    /// Tern's admin HTTP endpoint (`--admin-port`, `--admin-addr`); nil: not served.
    public var adminAddress: String = "127.0.0.1"
    public var adminPort: Int?
    /// Most seconds a drain (SIGTERM) waits for in-flight requests.
    public var shutdownTimeout: Double = 10
    /// Reload when the config file changes (including a Kubernetes ConfigMap symlink swap).
    public var watchConfig = false
    /// Seconds between re-resolutions of server host names (0: never).
    public var dnsRefreshSeconds: Int = 30
    /// Elastic workers (the default without `--threads`): `threads` workers are started, the
    /// first `activeWorkers` take new clients, and one more is activated while the active ones
    /// are busier than `activateAbove` (see `WorkerScalingPolicy`). False: all take clients.
    public var elasticWorkers = false
    public var activeWorkers = 1
    public var activateAbove = 0.75
    /// Elastic workers: idle CPUs (among those Tern may use) needed to activate one more.
    public var activateIdle = 0.5

    public init(threads: Int, configPath: String, pidFile: String? = nil) {
        self.threads = threads
        self.configPath = configPath
        self.pidFile = pidFile
    }
}

/// The main thread's side: listeners, resolution, worker threads, signals, reload and drain.
/// Nothing here runs on the request path.
public final class TernServer {
    private var config: TernConfig
    let options: ServerOptions
    let logger: Logger
    let logDestination: LogDestination?
    private var plans: [PoolPlan] = []
    private var inboxes: [WorkerInbox] = []
    private var control: ControlState?
    /// The active config as YAML with secrets masked, for `/config`.
    private let activeConfigText = SharedText()
    private var configStamp: FileStamp?
    private var lastResolution = Int(time(nil))
    /// `redis_cluster` pools' slot maps now applied, by pool name (main thread only). The
    /// config keeps the seeds; the plans route by these (see `routed`).
    private var clusterMaps: [String: ClusterSlotMap] = [:]
    /// Refreshes the maps on a thread of its own (started when a cluster pool exists).
    private let discovery = ClusterDiscovery()
    private var discoveryStarted = false
    /// `sentinel:` pools' master addresses now applied: pool name → master name → node (main
    /// thread only), and the thread that asks the sentinels.
    private var sentinelMasters: [String: [String: ClusterNode]] = [:]
    private let sentinelWatcher = SentinelWatcher()
    private var sentinelWatcherStarted = false

    public init(config: TernConfig, options: ServerOptions, logger: Logger, logDestination: LogDestination? = nil) {
        self.config = config
        self.options = options
        self.logger = logger
        self.logDestination = logDestination
    }

    var workerCount: Int { max(1, options.threads) }

    /// Resolves every server and binds every listener; errors are returned, nothing runs yet.
    public func prepare() throws {
        tern_ignore_sigpipe()
        // Block the signals Tern handles before anything is bound: once a port accepts, a
        // supervisor may signal us, and SIGHUP/SIGTTOU's default actions would end or stop Tern.
        var signals = Self.handledSignals
        pthread_sigmask(SIG_BLOCK, &signals, nil)
        for pool in config.pools where pool.distribution == .redisCluster {
            // The first map is asked for before anything listens, so that the first clients
            // are routed; a cluster that does not answer is asked again in the background.
            let tls = try pool.serverTLS.map { (tls) throws(TLSSetupError) in try TLSContext.backend(tls, pool: pool.name) }
            switch ClusterDiscovery.discover(seeds: ClusterDiscovery.seeds(pool), previous: nil, password: pool.redisAuth, tls: tls) {
            case let .success((map, node, _)):
                clusterMaps[pool.name] = map
                logger.notice("pool \(pool.name): slot map from \(node): \(map.masters.count) masters, \(map.nodeCount) nodes, \(map.assignedSlots) slots served")
            case let .failure(error):
                logger.warning("pool \(pool.name): no seed node answered CLUSTER SLOTS (\(error.text)); answering -CLUSTERDOWN and retrying every second")
            }
        }
        var startupStates: [String: SentinelState] = [:]
        // Shared by the pools: a sentinel that failed for one is not waited for by the next
        // (all are asked at once; a round ends when more than half agree).
        let unreachable = SentinelWatcher.Unreachable()
        for pool in config.pools where pool.sentinel != nil {
            let state = SentinelState()
            startupStates[pool.name] = state
            let tls = try pool.serverTLS.map { (tls) throws(TLSSetupError) in try TLSContext.backend(tls, pool: pool.name) }
            let job = SentinelWatcher.Job(pool: pool.name, masters: pool.servers.map(\.name), sentinels: SentinelWatcher.sentinels(pool),
                                          sentinelPassword: pool.sentinel?.password, serverPassword: pool.redisAuth,
                                          serverTLS: tls, sentinelTLS: pool.sentinel?.tls == true ? tls : nil, state: state)
            let found = SentinelWatcher.discover(job, previous: [:], unreachable: unreachable)
            sentinelMasters[pool.name] = found
            let missing = pool.servers.map(\.name).filter { found[$0] == nil }
            if missing.isEmpty {
                logger.notice("pool \(pool.name): sentinels name \(found.sorted { $0.key < $1.key }.map { "\($0.key) at \($0.value.name)" }.joined(separator: ", "))")
            } else {
                logger.warning("pool \(pool.name): no address yet for \(missing.joined(separator: ", ")) (\(state.lastError.withLock { $0 })); their keys fail until a sentinel names them")
            }
        }
        // The stats and admin ports are bound before any pool listens: a start that fails on
        // one of them accepted no client (the pools accepted and reset hundreds; operator sweep 33).
        if let port = options.statsPort { statsListener = try ControlServer.bind(host: options.statsAddress, port: port) }
        if let port = options.adminPort { adminListener = try ControlServer.bind(host: options.adminAddress, port: port) }
        try Self.checkDescriptorLimit(workers: workerCount, pools: config.pools.count)
        plans = try makePlans(for: routed(config), previous: [])
        for plan in plans {
            if let map = clusterMaps[plan.config.name] { plan.shared.cluster.applied(map) }
            if let first = startupStates[plan.config.name] {
                // What the first round saw counts in the pool's figures.
                let state = plan.shared.sentinel
                state.refreshes.add(first.refreshes.load(ordering: .relaxed), ordering: .relaxed)
                state.refreshFailures.add(first.refreshFailures.load(ordering: .relaxed), ordering: .relaxed)
                state.roleMismatches.add(first.roleMismatches.load(ordering: .relaxed), ordering: .relaxed)
                let error = first.lastError.withLock { $0 }
                state.lastError.withLock { $0 = error }
            }
        }
        updateDiscoveryJobs()
        for pool in config.pools {
            let servers = pool.distribution == .redisCluster ? "\(pool.servers.count) seed nodes" : "\(pool.servers.count) servers"
            logger.notice("pool \(pool.name) listening on \(pool.listen) (\(pool.protocolKind.rawValue), \(servers), \(pool.distribution.rawValue)/\(pool.hash.rawValue))")
            if let warmup = pool.warmup {
                logger.notice("pool \(pool.name) warms up from \(warmup.old.servers.count) old servers (backfill \(warmup.backfill), deletes \(warmup.deletes.rawValue))")
            }
        }
        activeConfigText.value.withLock { $0 = ConfigRenderer.yaml(config) }
        configStamp = FileStamp(path: options.configPath)
    }

    /// The config as workers route it: each `redis_cluster` pool with a known map gets its
    /// masters as servers and the map as its slots (`ClusterSlotMap.applied`).
    private func routed(_ config: TernConfig) -> TernConfig {
        var routed = config
        for index in routed.pools.indices where routed.pools[index].sentinel != nil {
            let known = sentinelMasters[routed.pools[index].name] ?? [:]
            for server in routed.pools[index].servers.indices {
                // A master the sentinels have not named keeps port 0: no address (see `resolve`).
                if let node = known[routed.pools[index].servers[server].name] {
                    routed.pools[index].servers[server].address = .tcp(host: node.host, port: node.port)
                }
            }
        }
        for index in routed.pools.indices where routed.pools[index].distribution == .redisCluster {
            if let map = clusterMaps[routed.pools[index].name] {
                routed.pools[index] = map.applied(to: routed.pools[index])
            } else {
                // No map yet: no server to route to (clients get -CLUSTERDOWN).
                routed.pools[index].servers = []
                routed.pools[index].slotServers = []
            }
        }
        return routed
    }

    /// Tells the discovery thread which pools to watch (after every apply), and starts it the
    /// first time a cluster pool exists. `reseeded`: cluster pools whose map this reload found
    /// from new seeds; a map the thread offered for them before it has the new seeds is dropped
    /// as the jobs are handed (under the jobs' lock, which the thread offers under: one offered
    /// after comes from the new seeds and stays).
    private func updateDiscoveryJobs(reseeded: Set<String> = []) {
        var jobs: [ClusterDiscovery.Job] = []
        for plan in plans where plan.config.distribution == .redisCluster {
            guard let pool = config.pools.first(where: { $0.name == plan.config.name }) else { continue }
            jobs.append(ClusterDiscovery.Job(pool: pool.name, seeds: ClusterDiscovery.seeds(pool), password: pool.redisAuth, tls: plan.serverTLS,
                                         state: plan.shared.cluster))
        }
        let stale = plans.filter { reseeded.contains($0.config.name) }.map(\.shared.cluster)
        hand(jobs, pool: \.pool, known: \.clusterMaps, to: discovery.known, discovery.jobs, started: \.discoveryStarted,
             whileHanding: { for state in stale { state.discovered.withLock { $0 = nil } } }) { discovery.start() }
        var sentinelJobs: [SentinelWatcher.Job] = []
        for plan in plans {
            guard let pool = config.pools.first(where: { $0.name == plan.config.name }), pool.sentinel != nil else { continue }
            sentinelJobs.append(SentinelWatcher.Job(pool: pool.name, masters: pool.servers.map(\.name), sentinels: SentinelWatcher.sentinels(pool),
                                                    sentinelPassword: pool.sentinel?.password, serverPassword: pool.redisAuth, serverTLS: plan.serverTLS,
                                                    sentinelTLS: pool.sentinel?.tls == true ? plan.serverTLS : nil, state: plan.shared.sentinel))
            let known = sentinelMasters[pool.name] ?? [:]
            plan.shared.sentinel.mastersKnown.store(pool.servers.filter { known[$0.name] != nil }.count, ordering: .relaxed)
            plan.shared.sentinel.current.withLock { current in current = known.mapValues(\.name) }
        }
        hand(sentinelJobs, pool: \.pool, known: \.sentinelMasters, to: sentinelWatcher.known, sentinelWatcher.jobs, started: \.sentinelWatcherStarted) {
            sentinelWatcher.start()
        }
    }

    /// Hands a discovery thread (cluster discovery, the Sentinel watcher) its jobs and what is
    /// known of their pools (`known`, from which pools without a job are dropped), and starts
    /// the thread the first time it has a job (never in tests without a control state).
    private func hand<Job: Sendable, Found: Sendable>(_ jobs: [Job], pool: KeyPath<Job, String>, known: ReferenceWritableKeyPath<TernServer, [String: Found]>,
                                                      to threadKnown: Locked<[String: Found]>, _ threadJobs: Locked<[Job]>,
                                                      started: ReferenceWritableKeyPath<TernServer, Bool>,
                                                      whileHanding: () -> Void = {}, start: () -> Void) {
        self[keyPath: known] = self[keyPath: known].filter { name, _ in jobs.contains { $0[keyPath: pool] == name } }
        let current = self[keyPath: known]
        threadKnown.withLock { $0 = current }
        threadJobs.withLock {
            $0 = jobs
            whileHanding()
        }
        if !jobs.isEmpty, !self[keyPath: started], control != nil {
            self[keyPath: started] = true
            start()
        }
    }

    /// Applies the master addresses the sentinels gave (the reload path: a server whose address
    /// changed gets new connections, its name and so its keys stay).
    private func applySentinelAddresses() {
        // Merged into what is known: a round the watcher began before a reload added a master
        // (found during the reload) does not name it, and would have taken its address away
        // until the next round (review 32). The watcher never drops a master it has named.
        guard let (changed, before) = applyDiscovered(\.sentinelMasters, reason: "sentinel master address", known: sentinelWatcher.known,
                                                      take: { $0.config.sentinel == nil ? nil : $0.shared.sentinel.discovered },
                                                      combine: { known, found in (known ?? [:]).merging(found) { _, new in new } }) else { return }
        for (name, found) in changed {
            guard let plan = plans.first(where: { $0.config.name == name }) else { continue }
            for (master, node) in found.sorted(by: { $0.key < $1.key }) where before[name]?[master] != node {
                if let old = before[name]?[master] {
                    plan.shared.sentinel.switches.add(1, ordering: .relaxed)
                    logger.notice("pool \(name): master \(master) moved from \(old.name) to \(node.name)")
                } else {
                    logger.notice("pool \(name): master \(master) is at \(node.name)")
                }
            }
        }
    }

    /// Applies the maps the discovery thread found (the reload path: servers that stay keep
    /// their connections, requests parked for a node the old map lacked are sent).
    private func applyDiscoveredMaps() {
        guard let (changed, _) = applyDiscovered(\.clusterMaps, reason: "cluster slot map", known: discovery.known,
                                                 take: { $0.config.distribution == .redisCluster ? $0.shared.cluster.discovered : nil }) else { return }
        for (name, map) in changed {
            guard let plan = plans.first(where: { $0.config.name == name }) else { continue }
            plan.shared.cluster.applied(map)
            logger.notice("pool \(name): slot map v\(plan.shared.cluster.mapVersion.load(ordering: .relaxed)) applied: \(map.masters.count) masters (\(map.masters.map(\.name).joined(separator: ", "))), \(map.nodeCount) nodes, \(map.assignedSlots) slots served")
        }
    }

    /// What a discovery thread found (each pool's `take`, emptied as it is read), applied by a
    /// reload with the findings in `state`. Returns the pools that changed and `state` as it
    /// was, or nil when nothing changed or the reload was refused (a name that did not resolve):
    /// then `state` and the thread's `known` go back, so the thread offers its finds again.
    private func applyDiscovered<Found: Sendable>(_ state: ReferenceWritableKeyPath<TernServer, [String: Found]>, reason: String,
                                        known: Locked<[String: Found]>,
                                        take: (PoolPlan) -> Locked<Found?>?,
                                        combine: (Found?, Found) -> Found = { $1 }) -> (changed: [(String, Found)], before: [String: Found])? {
        var changed: [(String, Found)] = []
        let before = self[keyPath: state]
        for plan in plans {
            if let found = take(plan)?.withLock({ found in defer { found = nil }; return found }) {
                changed.append((plan.config.name, combine(before[plan.config.name], found)))
            }
        }
        guard !changed.isEmpty else { return nil }
        for (name, found) in changed { self[keyPath: state][name] = found }
        guard apply(config, reason: reason, rereadsTLS: false) else {
            self[keyPath: state] = before
            known.withLock { $0 = before }
            return nil
        }
        return (changed, before)
    }

    /// Plans for `config`: servers resolved, listeners bound — or reused from `previous` when a
    /// pool keeps its listen address, so a reload never rebinds a socket clients are using.
    ///
    /// New listeners are bound pool by pool and listen only once every pool is planned: a client
    /// that can connect to one of Tern's ports can connect to all of them, and a start that
    /// fails on a later pool never took a connection on an earlier one.
    private func makePlans(for config: TernConfig, previous: [PoolPlan], rereadsTLS: Bool = true) throws -> [PoolPlan] {
        var made: [PoolPlan] = []
        var boundHere: [(descriptor: Int32, pool: PoolConfig)] = []
        // A server whose name does not resolve (a DNS outage, a record not made yet) keeps the
        // address it had, or has none (its requests fail at once) until one resolves: only its
        // keys fail, as under nutcracker, and the other servers' changes still apply.
        let logger = self.logger
        let unresolved: (String) -> Void = { problem in
            logger.warning("\(problem); its requests fail until the name resolves (--dns-refresh) or a reload")
        }
        do {
            for pool in config.pools {
                let before = previous.first { $0.config.name == pool.name }
                var warmupPlan: PoolPlan?
                if let warmup = pool.warmup {
                    warmupPlan = try PoolPlan(config: warmup.old, serverAddresses: try Self.resolve(warmup.old, previous: before?.warmup, unresolved: unresolved), listenDescriptor: -1,
                                          shared: before?.warmup?.shared ?? PoolShared(workers: workerCount),
                                          serverCounters: Self.serverCounters(warmup.old, workers: workerCount, reusing: before?.warmup),
                                          keepingTLSOf: rereadsTLS ? nil : before?.warmup)
                }
                let addresses = try Self.resolve(pool, previous: before, unresolved: unresolved)
                let descriptor: Int32
                if let reused = previous.first(where: { $0.config.listen == pool.listen }) {
                    descriptor = reused.listenDescriptor
                } else {
                    descriptor = try Self.bind(pool)
                    boundHere.append((descriptor, pool))
                }
                // Cluster replicas (read_from): resolved here, off the loops; one that does not
                // resolve is skipped rather than failing the whole map.
                let replicas = pool.replicaServers.map { list in
                    list.map { replica -> SocketAddress? in
                        guard case let .tcp(host, port) = replica.address, case let .success(address) = SocketAddress.resolve(host: host, port: port) else { return nil }
                        return address
                    }
                }
                made.append(try PoolPlan(config: pool, serverAddresses: addresses, listenDescriptor: descriptor, warmup: warmupPlan,
                                     shared: before?.shared ?? PoolShared(workers: workerCount, hotKeys: pool.hotKeys),
                                     serverCounters: Self.serverCounters(pool, workers: workerCount, reusing: before), replicaAddresses: replicas,
                                     keepingTLSOf: rereadsTLS ? nil : before))
            }
            for (descriptor, pool) in boundHere { try Self.listen(descriptor, pool) }
        } catch {
            for (descriptor, _) in boundHere { Syscall.close(descriptor) }
            throw error
        }
        return made
    }

    static func serverCounters(_ pool: PoolConfig, workers: Int, reusing previous: PoolPlan? = nil) -> [[ServerCounters]] {
        pool.servers.map { server in
            if let previous, let index = previous.config.servers.firstIndex(where: { $0.name == server.name }) {
                return previous.serverCounters[index]
            }
            return (0..<workers).map { _ in ServerCounters() }
        }
    }

    /// A pool's server addresses, resolved (blocking: runs on the main thread, never on a
    /// worker loop). A host name that does not resolve fails, unless `unresolved` is
    /// given: then it is told, and the server keeps its address in `previous` (the running
    /// plan), or has none (its requests fail at once, as nutcracker answers `Host is down`)
    /// until `--dns-refresh` or a reload resolves it.
    static func resolve(_ pool: PoolConfig, previous: PoolPlan? = nil, unresolved: ((String) -> Void)? = nil) throws -> [SocketAddress] {
        var addresses: [SocketAddress] = []
        for server in pool.servers {
            switch server.address {
            case let .unix(path):
                guard let address = SocketAddress.unix(path) else {
                    throw StartupError(description: "pool '\(pool.name)': socket path too long: \(path)")
                }
                addresses.append(address)
            case .tcp(_, 0) where pool.sentinel != nil:
                // A Sentinel master not named yet: no address, its connections fail at once.
                addresses.append(SocketAddress(family: AF_UNSPEC, bytes: []))
            case let .tcp(host, port):
                switch SocketAddress.resolve(host: host, port: port) {
                case let .success(address): addresses.append(address)
                case let .failure(error):
                    let problem = "pool '\(pool.name)': server \(server.name): \(error)"
                    guard let unresolved else { throw StartupError(description: problem) }
                    unresolved(problem)
                    if let previous, let index = previous.config.servers.firstIndex(where: { $0.name == server.name && $0.address == server.address }) {
                        addresses.append(previous.serverAddresses[index])
                    } else {
                        addresses.append(SocketAddress(family: AF_UNSPEC, bytes: []))
                    }
                }
            }
        }
        return addresses
    }

    /// For `-t`: TLS certificates and keys that cannot be loaded (missing, unreadable, a key
    /// that does not match its certificate), as at startup.
    public static func tlsProblems(_ config: TernConfig) -> [String] {
        var problems: [String] = []
        for pool in config.pools {
            for candidate in [pool] + (pool.warmup.map { [$0.old] } ?? []) {
                do {
                    if let tls = candidate.clientTLS { _ = try TLSContext.listener(tls, pool: candidate.name) }
                    if let tls = candidate.serverTLS { _ = try TLSContext.backend(tls, pool: candidate.name) }
                } catch {
                    problems.append(error.description)
                }
            }
        }
        return problems
    }

    /// For `-t`: listen hosts that do not resolve.
    public static func unresolvableListenHosts(_ config: TernConfig) -> [String] {
        config.pools.compactMap { pool in
            guard case let .tcp(host, port) = pool.listen else { return nil }
            if case let .failure(error) = SocketAddress.resolve(host: host, port: port) { return "pool '\(pool.name)': listen \(pool.listen): \(error)" }
            return nil
        }
    }

    /// A socket bound to the pool's `listen` address, not yet listening (`listen(_:_:)`).
    static func bind(_ pool: PoolConfig) throws -> Int32 {
        let address: SocketAddress
        switch pool.listen {
        case let .unix(path, _):
            guard let unixAddress = SocketAddress.unix(path) else { throw StartupError(description: "listen path too long: \(path)") }
            unlink(path)
            address = unixAddress
        case let .tcp(host, port):
            switch SocketAddress.resolve(host: host, port: port) {
            case let .success(resolved): address = resolved
            case let .failure(error): throw StartupError(description: "pool '\(pool.name)': listen \(pool.listen): \(error)")
            }
        }
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | TERN_SOCK_NONBLOCK | TERN_SOCK_CLOEXEC, 0)
        guard fd >= 0 else { throw StartupError(description: "socket: \(Syscall.errorText(errno))") }
        if address.family != AF_UNIX { Syscall.setOption(fd, SOL_SOCKET, SO_REUSEADDR) }
        let bound = address.withSockaddr { Glibc.bind(fd, $0, $1) }
        guard bound == 0 else {
            let error = errno
            Syscall.close(fd)
            throw StartupError(description: "pool '\(pool.name)': cannot bind \(pool.listen): \(Syscall.errorText(error))")
        }
        if case let .unix(path, permissions?) = pool.listen { chmod(path, mode_t(permissions)) }
        return fd
    }

    /// Starts a bound socket listening with the pool's backlog. The caller closes it on failure.
    static func listen(_ fd: Int32, _ pool: PoolConfig) throws {
        guard Glibc.listen(fd, Int32(pool.backlog)) == 0 else {
            throw StartupError(description: "pool '\(pool.name)': cannot listen on \(pool.listen): \(Syscall.errorText(errno))")
        }
    }

    // MARK: Running

    /// Seconds for a log line, whole when they are (`Int(_:)` traps past Int's range; the
    /// command line bounds the timeout, this does not rely on it).
    static func seconds(_ value: Double) -> String {
        value.isFinite && value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : "\(value)"
    }

    /// The stats and admin sockets `prepare` bound (-1: none), listened on by `run`.
    private var statsListener: Int32 = -1
    private var adminListener: Int32 = -1

    /// Each worker takes two descriptors (its loop's epoll and wake-up eventfd; 150 workers held
    /// 308); a limit too low for them ended inside libev (an abort) after the pools were
    /// listening (operator sweep 33).
    static func checkDescriptorLimit(workers: Int, pools: Int) throws {
        let needed = descriptorsNeeded(workers: workers, pools: pools)
        if let limit = descriptorLimit(), needed > limit {
            throw StartupError(description: "\(workers) worker threads need about \(needed) file descriptors before the first client; the limit is \(limit) (ulimit -n): raise it or pass fewer --threads")
        }
    }

    /// Descriptors Tern holds before its first client: two per worker, the pools' listeners and
    /// a few of its own (log, stats and admin ports, the control threads).
    public static func descriptorsNeeded(workers: Int, pools: Int) -> Int { workers * 2 + pools + 32 }

    /// The soft `RLIMIT_NOFILE`, nil when unlimited or unknown.
    public static func descriptorLimit() -> Int? {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max else { return nil }
        return Int(clamping: limit.rlim_cur)
    }

    /// Starts the workers and the control endpoints, then handles signals until a drain ends.
    public func run() -> Int32 {
        // Before any worker allocates: fixed malloc thresholds, so that what huge requests
        // took from an arena leaves the process (`tern_blocks_fix_malloc_thresholds`).
        tern_blocks_fix_malloc_thresholds()
        // Workers inherit the mask: only this thread takes signals.
        var signals = Self.handledSignals
        pthread_sigmask(SIG_BLOCK, &signals, nil)
        let workerSet = WorkerSet(workers: workerCount, initiallyActive: options.elasticWorkers ? options.activeWorkers : workerCount,
                                  elastic: options.elasticWorkers, busy: options.activateAbove)
        let scaler = WorkerScaler(set: workerSet, policy: WorkerScalingPolicy(minimum: options.activeWorkers, maximum: workerCount,
                                                                               threshold: options.activateAbove, idleNeeded: options.activateIdle))
        // Idle CPUs matter only while there is a worker left to activate.
        let idleMeter = options.elasticWorkers && workerSet.activeCount < workerCount && options.activateIdle > 0 ? IdleCPUMeter() : nil
        _ = idleMeter?.sample()
        let control = ControlState(plans: plans, workerCount: workerCount, workers: workerSet)
        self.control = control
        do {
            try startControlEndpoints(control)
        } catch {
            logger.critical("\(error)")
            return 1
        }
        let info = ProcessInfo(version: ternVersion)
        var workers = (0..<workerCount).map { Worker(identifier: $0, plans: plans, logger: logger, processInfo: info, workerSet: workerSet) }
        inboxes = workers.map(\.inbox)
        for worker in workers { worker.peers = inboxes }
        while !workers.isEmpty {
            let worker = workers.removeFirst()
            // The worker is handed to its thread here and never touched by this thread again.
            let result = Threads.start("tern-worker-\(worker.identifier)") { worker.run() }
            if result != 0 {
                logger.critical("cannot start worker thread: \(Syscall.errorText(result))")
                return 1
            }
        }
        // Redis pools' INFO figures, gathered off the request path (it idles without Redis pools;
        // a reload may add one).
        BackendInfoPoller(control: control).start()
        updateDiscoveryJobs()
        control.isReady.store(true, ordering: .relaxed)
        if options.elasticWorkers, workerSet.activeCount < workerCount {
            logger.notice("tern \(ternVersion) started with \(workerCount) worker threads, pid \(getpid()); \(workerSet.activeCount) taking clients, one more while those are over \(Int((options.activateAbove * 100).rounded())) % busy\(options.activateIdle > 0 ? " and " + WorkerScaler.cpus(options.activateIdle) + " CPUs are idle" : "")")
            if options.activateIdle > Double(workerCount) {
                logger.warning("--activate-idle \(WorkerScaler.cpus(options.activateIdle)) asks for more idle CPUs than the \(workerCount) Tern may use: no worker beyond the first \(workerSet.activeCount) will take clients")
            }
        } else {
            logger.notice("tern \(ternVersion) started with \(workerCount) worker threads, pid \(getpid())")
        }
        var lastChecks = Int(time(nil))
        var lastScaling = ThreadClock.monotonicSeconds()
        while true {
            // With cluster pools, new slot maps are picked up every 100 ms.
            let hasCluster = plans.contains { $0.config.distribution == .redisCluster }
            let hasSentinel = plans.contains { $0.config.sentinel != nil }
            var timeout = hasCluster || hasSentinel ? timespec(tv_sec: 0, tv_nsec: 100_000_000) : timespec(tv_sec: 1, tv_nsec: 0)
            let received = sigtimedwait(&signals, nil, &timeout)
            if hasCluster { applyDiscoveredMaps() }
            if hasSentinel { applySentinelAddresses() }
            if options.elasticWorkers, ThreadClock.monotonicSeconds() - lastScaling >= 0.9 {
                // Once a second, signals or not (the workers publish their figures at that pace).
                lastScaling = ThreadClock.monotonicSeconds()
                if let line = scaler.tick(idleCPUs: idleMeter?.sample(), now: lastScaling) { logger.notice("\(line)") }
            }
            if received < 0 {
                if !(hasCluster || hasSentinel) || Int(time(nil)) != lastChecks {
                    lastChecks = Int(time(nil))
                    periodicChecks()
                }
                continue
            }
            let name = Self.signalName(received)
            switch received {
            case SIGTERM, SIGINT:
                logger.notice("signal \(received) (\(name)) received, draining (at most \(Self.seconds(options.shutdownTimeout)) s)")
                return drain()
            case SIGHUP:
                logger.notice("signal \(received) (\(name)) received, reloading")
                logDestination?.reopen()
                reload(reason: "SIGHUP")
            case SIGTTIN, SIGTTOU:
                let level = logDestination?.adjustLevel(moreVerbose: received == SIGTTIN)
                logger.notice("signal \(received) (\(name)) received, log level now \(level.map { "\($0)" } ?? "unchanged")")
            default:
                logger.notice("signal \(received) (\(name)) received")
            }
        }
    }

    private func startControlEndpoints(_ control: ControlState) throws {
        if let port = options.statsPort {
            let server = try ControlServer(bound: statsListener, host: options.statsAddress, port: port, service: .writeOnConnect {
                Array(StatsReport.json(control).utf8)
            })
            server.start()
            logger.notice("stats on \(options.statsAddress):\(port)")
        }
        if let port = options.adminPort {
            let text = activeConfigText
            let server = try ControlServer(bound: adminListener, host: options.adminAddress, port: port, service: .http({ method, path, query in
                AdminEndpoint.route(method: method, path: path, query: query, state: control) { text.value.withLock { $0 } }
            }, queryPaths: AdminEndpoint.queryPaths))
            server.start()
            logger.notice("admin endpoint on http://\(options.adminAddress):\(port) (/metrics, /healthz, /readyz, /config, /locate, /slowlog, /hotkeys)")
        }
    }

    /// Every second: a changed config file (with `--watch-config`), and host names that now
    /// resolve elsewhere (pods move).
    private func periodicChecks() {
        if options.watchConfig, let stamp = FileStamp(path: options.configPath), stamp != configStamp {
            configStamp = stamp
            logger.notice("config file \(options.configPath) changed, reloading")
            reload(reason: "file change")
        }
        let now = Int(time(nil))
        if options.dnsRefreshSeconds > 0, now - lastResolution >= options.dnsRefreshSeconds {
            lastResolution = now
            let changed = routed(config).pools.contains { pool in
                guard let plan = plans.first(where: { $0.config.name == pool.name }) else { return false }
                // (A name that does not resolve now keeps its address: not a change.)
                return (try? Self.resolve(pool, previous: plan, unresolved: { _ in })).map { $0 != plan.serverAddresses } ?? false
            }
            if changed {
                logger.notice("a server host name resolves to a new address, applying")
                apply(config, reason: "DNS change", rereadsTLS: false)
            }
        }
    }

    /// Reads, validates and applies the config file; an invalid file changes nothing.
    private func reload(reason: String) {
        let loaded: TernConfig
        do {
            loaded = try ConfigLoader.load(text: try readTextFile(options.configPath), file: options.configPath)
        } catch {
            logger.error("reload (\(reason)) rejected, keeping the current config: \(error)")
            return
        }
        configStamp = FileStamp(path: options.configPath)
        guard apply(loaded, reason: reason) else { return }
        for warning in exposureWarnings(loaded) { logger.warning("\(warning)") }
        if let warning = readableSecretWarning(loaded) { logger.warning("\(warning)") }
        for warning in readableKeyWarnings(loaded) { logger.warning("\(warning)") }
    }

    /// Makes and hands out the plans of `newConfig` (routed by the known cluster maps); false
    /// when they cannot be made, changing nothing.
    /// `rereadsTLS`: certificates and keys are read again (a reload); false for what discovery
    /// applies (the config is the running one), which keeps the TLS contexts in service.
    @discardableResult
    private func apply(_ newConfig: TernConfig, reason: String, rereadsTLS: Bool = true) -> Bool {
        let mapsBefore = clusterMaps, mastersBefore = sentinelMasters
        let reseeded = discoverReseededClusters(newConfig)
        discoverNewSentinelMasters(newConfig)
        let newPlans: [PoolPlan]
        do {
            newPlans = try makePlans(for: routed(newConfig), previous: plans, rereadsTLS: rereadsTLS)
        } catch {
            clusterMaps = mapsBefore
            sentinelMasters = mastersBefore
            logger.error("reload (\(reason)) rejected, keeping the current config: \(error)")
            return false
        }
        let acknowledgement = Acknowledgement(count: inboxes.count)
        for inbox in inboxes { inbox.post(.apply(newPlans, acknowledgement)) }
        if !acknowledgement.wait(seconds: 10) { logger.warning("reload: a worker did not acknowledge within 10 s") }
        // Listening sockets that no pool uses any more: every worker has stopped watching them.
        for old in plans where !newPlans.contains(where: { $0.listenDescriptor == old.listenDescriptor }) {
            Syscall.close(old.listenDescriptor)
            if case let .unix(path, _) = old.config.listen { unlink(path) }
        }
        // A removed pool's accepts stay in the process's total (every worker has stopped
        // accepting for it: acknowledged above).
        for old in plans where !newPlans.contains(where: { $0.shared === old.shared }) {
            control?.retiredConnections.add(old.shared.totalConnections.load(ordering: .relaxed), ordering: .relaxed)
        }
        plans = newPlans
        config = newConfig
        control?.plans.withLock { $0 = newPlans }
        activeConfigText.value.withLock { $0 = ConfigRenderer.yaml(newConfig) }
        lastResolution = Int(time(nil))
        updateDiscoveryJobs(reseeded: reseeded)
        for plan in newPlans where reseeded.contains(plan.config.name) {
            if let map = clusterMaps[plan.config.name] { plan.shared.cluster.applied(map) }
        }
        logger.notice("reload (\(reason)) applied: \(newConfig.pools.count) pools")
        return true
    }

    /// The `redis_cluster` pools of `newConfig` that are new or whose seeds changed: their map
    /// is asked of the seeds alone, now, as at start-up, so that a reload that points a pool at
    /// another cluster routes to it once applied (refreshes ask the known map's nodes first,
    /// and would keep the old cluster for as long as it answers). When no new seed answers, a
    /// reseeded pool keeps the map it has and the discovery thread asks the new seeds every
    /// second; a new pool answers -CLUSTERDOWN until one does. Returns the pools whose map was
    /// found here. Blocking (1 s to connect and 1 s to answer per seed), on the main thread.
    private func discoverReseededClusters(_ newConfig: TernConfig) -> Set<String> {
        var found: Set<String> = []
        for pool in newConfig.pools where pool.distribution == .redisCluster {
            let seeds = ClusterDiscovery.seeds(pool)
            let before = config.pools.first { $0.name == pool.name && $0.distribution == .redisCluster }
            guard before.map({ ClusterDiscovery.seeds($0) != seeds }) ?? true else { continue }
            var tls: TLSContext?
            if let settings = pool.serverTLS {
                // A TLS setup that fails is reported by `makePlans`, which refuses the reload.
                guard let context = try? TLSContext.backend(settings, pool: pool.name) else { continue }
                tls = context
            }
            switch ClusterDiscovery.discover(seeds: seeds, previous: nil, password: pool.redisAuth, tls: tls) {
            case let .success((map, node, _)):
                clusterMaps[pool.name] = map
                found.insert(pool.name)
                logger.notice("pool \(pool.name): \(before == nil ? "new pool" : "new seeds"): slot map from \(node): \(map.masters.count) masters, \(map.nodeCount) nodes, \(map.assignedSlots) slots served")
            case let .failure(error):
                if before == nil {
                    logger.warning("pool \(pool.name): no seed node answered CLUSTER SLOTS (\(error.text)); answering -CLUSTERDOWN and retrying every second")
                } else {
                    logger.warning("pool \(pool.name): no new seed node answered CLUSTER SLOTS (\(error.text)); keeping the map of the old seeds until one does, asking every second")
                }
            }
        }
        return found
    }

    /// The `sentinel:` pools of `newConfig` that are new, or whose master names or sentinels
    /// changed: the masters no sentinel has named to Tern yet are asked for now, as at
    /// start-up, so that the pool routes once the reload is applied. Before, they were left to
    /// the watcher's next round: the pool's requests failed with `master address not known yet`
    /// for about 0.1 s, and a one-server pool closed its clients (TLS sweep 32). Blocking (a
    /// second at most, the sentinels asked at once), on the main thread.
    private func discoverNewSentinelMasters(_ newConfig: TernConfig) {
        let unreachable = SentinelWatcher.Unreachable()
        for pool in newConfig.pools where pool.sentinel != nil {
            let before = config.pools.first { $0.name == pool.name && $0.sentinel != nil }
            let changed = before.map { $0.servers.map(\.name) != pool.servers.map(\.name)
                || SentinelWatcher.sentinels($0) != SentinelWatcher.sentinels(pool) } ?? true
            let known = sentinelMasters[pool.name] ?? [:]
            let missing = pool.servers.map(\.name).filter { known[$0] == nil }
            guard changed, !missing.isEmpty else { continue }
            var tls: TLSContext?
            if let settings = pool.serverTLS {
                // A TLS setup that fails is reported by `makePlans`, which refuses the reload.
                guard let context = try? TLSContext.backend(settings, pool: pool.name) else { continue }
                tls = context
            }
            // Every master of the pool is asked, with those known as they are: an address the
            // sentinels give a new master that a known one has is refused, as at start-up.
            let job = SentinelWatcher.Job(pool: pool.name, masters: pool.servers.map(\.name), sentinels: SentinelWatcher.sentinels(pool),
                                          sentinelPassword: pool.sentinel?.password, serverPassword: pool.redisAuth,
                                          serverTLS: tls, sentinelTLS: pool.sentinel?.tls == true ? tls : nil, state: SentinelState())
            let found = SentinelWatcher.discover(job, previous: known, unreachable: unreachable)
            sentinelMasters[pool.name] = found
            let named = missing.compactMap { master in found[master].map { "\(master) at \($0.name)" } }
            if !named.isEmpty { logger.notice("pool \(pool.name): sentinels name \(named.joined(separator: ", "))") }
        }
    }

    /// SIGTERM/SIGINT: stop accepting at once, let in-flight requests finish (at most
    /// `shutdownTimeout`), close idle connections, exit 0.
    private func drain() -> Int32 {
        control?.isDraining.store(true, ordering: .relaxed)
        let stopped = Acknowledgement(count: inboxes.count)
        let finished = Acknowledgement(count: inboxes.count)
        for inbox in inboxes { inbox.post(.drain(stoppedListening: stopped, finished: finished)) }
        _ = stopped.wait(seconds: 5)
        for plan in plans {
            Syscall.close(plan.listenDescriptor)
            if case let .unix(path, _) = plan.config.listen { unlink(path) }
        }
        // Waited in slices, so that a signal that comes meanwhile is logged, as every signal
        // is (it changes nothing: the drain goes on).
        let deadline = ThreadClock.monotonicSeconds() + options.shutdownTimeout
        var drained = false
        while !drained {
            let left = deadline - ThreadClock.monotonicSeconds()
            if left <= 0 { break }
            drained = finished.wait(seconds: min(0.1, left))
            var signals = Self.handledSignals
            var now = timespec(tv_sec: 0, tv_nsec: 0)
            while case let received = sigtimedwait(&signals, nil, &now), received > 0 {
                logger.notice("signal \(received) (\(Self.signalName(received))) received while draining; the drain goes on")
            }
        }
        if drained {
            logger.notice("drained, exiting")
        } else {
            logger.warning("shutdown timeout (\(Self.seconds(options.shutdownTimeout)) s) reached with requests in flight, exiting")
        }
        if let pidFile = options.pidFile { unlink(pidFile) }
        return 0
    }

    static var handledSignals: sigset_t {
        var signals = sigset_t()
        sigemptyset(&signals)
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGTTIN, SIGTTOU, SIGUSR1, SIGUSR2] { sigaddset(&signals, signal) }
        return signals
    }

    static func signalName(_ signal: Int32) -> String {
        switch signal {
        case SIGTERM: return "SIGTERM"
        case SIGINT: return "SIGINT"
        case SIGHUP: return "SIGHUP"
        case SIGTTIN: return "SIGTTIN"
        case SIGTTOU: return "SIGTTOU"
        case SIGUSR1: return "SIGUSR1"
        case SIGUSR2: return "SIGUSR2"
        default: return "signal"
        }
    }
}

/// A string the main thread replaces and the admin thread reads.
final class SharedText: Sendable {
    let value = Locked<String>("")
}

/// Identity of a file's content for change detection: follows symlinks, so a ConfigMap's
/// `..data` swap shows up as a new inode.
struct FileStamp: Equatable {
    var inode: UInt
    var modified: Int
    var size: Int

    init?(path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        inode = UInt(info.st_ino)
        modified = Int(info.st_mtim.tv_sec) * 1_000_000_000 + Int(info.st_mtim.tv_nsec)
        size = Int(info.st_size)
    }
}

/// Reads a whole text file (the config).
public func readTextFile(_ path: String) throws -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw StartupError(description: "cannot read '\(path)': \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = read(fd, &chunk, chunk.count)
        if count < 0 { throw StartupError(description: "cannot read '\(path)': \(String(cString: strerror(errno)))") }
        if count == 0 { break }
        bytes.append(contentsOf: chunk[0..<count])
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// The default worker count: online CPUs, lowered to the process's CPU affinity and to a
/// cgroup CPU quota (a container's CPU limit), rounded up. See `CPUAvailability`.
public func defaultWorkerCount() -> CPUAvailability.Decision {
    let online = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
    let affinity = (try? readTextFile("/proc/self/status")).flatMap { CPUAvailability.affinity(procStatus: $0) }
    return CPUAvailability.decide(online: online, affinity: affinity, quota: CgroupQuota.find()?.cpus)
}

/// A cgroup CPU quota over the process (its own cgroup's or an ancestor's), and the file that
/// counts the CPU time used under it.
struct CgroupQuota {
    var cpus: Double
    /// cgroup v2 `cpu.stat` (`usage_usec`) or v1 `cpuacct.usage` (nanoseconds) of the cgroup
    /// that sets the quota.
    var usageFile: String
    var isV2: Bool

    /// The lowest quota, for the default worker count.
    static func find() -> CgroupQuota? {
        all().min { $0.cpus < $1.cpus }
    }

    /// Every quota over the process: each level of the hierarchy may set one, and what a level
    /// leaves depends on its own usage (siblings included), so the idle meter checks them all.
    static func all() -> [CgroupQuota] {
        guard let membership = try? readTextFile("/proc/self/cgroup") else { return [] }
        var found: [CgroupQuota] = []
        if let path = CPUAvailability.cgroupPath(procCgroup: membership) {
            // cgroup v2: the process's own cgroup and every ancestor may set cpu.max. Inside a
            // container the cgroup namespace makes the path "/", which is the container's.
            for directory in CPUAvailability.ancestors(of: path) {
                let base = "/sys/fs/cgroup" + (directory == "/" ? "" : directory)
                if let quota = (try? readTextFile(base + "/cpu.max")).flatMap({ CPUAvailability.quota(cpuMax: $0) }) {
                    found.append(CgroupQuota(cpus: quota, usageFile: base + "/cpu.stat", isV2: true))
                }
            }
        }
        if let path = CPUAvailability.cgroupPath(procCgroup: membership, controller: "cpu") {
            // cgroup v1: cpuacct is usually mounted with cpu ("cpu,cpuacct"), else on its own.
            let accounting = CPUAvailability.cgroupPath(procCgroup: membership, controller: "cpuacct") ?? path
            for mount in ["/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"] {
                for directory in path == "/" ? ["/"] : [path, "/"] {
                    let base = mount + (directory == "/" ? "" : directory)
                    guard let quotaText = try? readTextFile(base + "/cpu.cfs_quota_us"), let periodText = try? readTextFile(base + "/cpu.cfs_period_us"),
                          let quota = CPUAvailability.quota(cfsQuota: quotaText, cfsPeriod: periodText) else { continue }
                    var usage = base + "/cpuacct.usage"
                    if access(usage, R_OK) != 0 {
                        let own = directory == "/" ? "/" : accounting
                        usage = "/sys/fs/cgroup/cpuacct" + (own == "/" ? "" : own) + "/cpuacct.usage"
                    }
                    found.append(CgroupQuota(cpus: quota, usageFile: usage, isV2: false))
                }
            }
        }
        return found
    }
}

/// Idle CPUs Tern may use, measured once a second for elastic workers: the idle time in
/// /proc/stat of the CPUs in the process's affinity mask (every CPU listed when none of them is:
/// lxcfs numbers a container's CPUs from 0), lowered to what each cgroup CPU quota over the
/// process leaves (the quota minus the CPU time its cgroup used). One read of /proc/stat and one
/// of each quota's usage file a second, on the main thread; confined to it.
final class IdleCPUMeter {
    private let cpus: Set<Int>?
    private let quotas: [CgroupQuota]
    private var lastTimes: CPUAvailability.Times?
    /// Per quota, its cgroup's CPU seconds at the last reading.
    private var lastUsage: [Double?]
    private var lastAt = 0.0

    init() {
        cpus = (try? readTextFile("/proc/self/status")).flatMap { CPUAvailability.allowedCPUs(procStatus: $0) }.map(Set.init)
        quotas = CgroupQuota.all()
        lastUsage = Array(repeating: nil, count: quotas.count)
    }

    /// Idle CPUs since the previous call (nil on the first call, or when /proc/stat is unreadable).
    func sample() -> Double? {
        var idle: Double?
        if let text = try? readTextFile("/proc/stat"),
           let times = CPUAvailability.times(procStat: text, cpus: cpus) ?? CPUAvailability.times(procStat: text, cpus: nil) {
            if let lastTimes { idle = CPUAvailability.idleCPUs(from: lastTimes, to: times) }
            lastTimes = times
        }
        let now = ThreadClock.monotonicSeconds()
        let elapsed = now - lastAt
        lastAt = now
        for (index, quota) in quotas.enumerated() {
            guard let text = try? readTextFile(quota.usageFile) else { continue }
            let used: Double? = quota.isV2
                ? CPUAvailability.usageMicroseconds(cpuStat: text).map { Double($0) / 1e6 }
                : UInt64(text.filter { !$0.isWhitespace }).map { Double($0) / 1e9 }
            if let used, let before = lastUsage[index], elapsed > 0.05 {
                let left = max(quota.cpus - max(used - before, 0) / elapsed, 0)
                idle = min(idle ?? left, left)
            }
            lastUsage[index] = used
        }
        return idle
    }
}
