#if canImport(Glibc)
import Glibc
#endif
import CLibev
import CTernBlocks
import Logging
import Synchronization
import TernCore

/// One worker thread: one libev loop, its client connections, its backend connections.
///
/// Everything reachable from a Worker is confined to the worker's thread. Back-references
/// (pool → worker, server → pool, connection → server) are `unowned(unsafe)`: the owner always
/// outlives them by construction (the worker outlives its thread's objects; a pool is held by
/// `pools`/`retiredPools` while clients use it and by `retiringServers` while its servers
/// finish), and a checked `unowned` costs a retain/release pair per access. Reading an
/// `unowned(unsafe)` reference still takes a reference for the length of a call on it, so the
/// request path's own objects hold strong ones instead: a client holds its pool and worker, a
/// backend connection its worker (none of them is reachable back from what it holds once it
/// has closed), and a pool reaches its servers' connections through unretained tables
/// (`PoolRuntime.withConnection`). The Worker object is created on the main thread and handed
/// over once, before its loop starts; after that only `ev_async_send` would cross threads.
///
/// Accepting: every worker watches the same listening socket of each pool and accepts with
/// `accept4`; whichever loop wakes first takes the client. That works the same for TCP and unix
/// sockets (SO_REUSEPORT does not cover AF_UNIX) and keeps one listening socket per pool owned by
/// the main thread. The loop that wakes first would take a whole burst, so each accepted client
/// goes to the worker with the fewest clients of its pool, through that worker's inbox
/// (`Worker.accepted`).
///
/// Elastic workers (the default, no `--threads`): only workers `0..<workerSet.active` take new
/// clients — only they watch the listeners, and only they are chosen for a hand-over. Each
/// worker measures its utilisation once a second; the main thread activates one more worker
/// when the active ones are busy (`WorkerScaler`, `WorkerScalingPolicy`).
final class Worker: FrontendLoop {
    /// Shared with every worker, the main thread and the admin thread (atomics only).
    let workerSet: WorkerSet
    /// The last utilisation measurement: thread CPU time and monotonic time (seconds).
    private var measuredCPU = 0.0
    private var measuredAt = 0.0
    private(set) var pools: [PoolRuntime] = []
    private let prepareWatcher = UnsafeMutablePointer<ev_prepare>.allocate(capacity: 1)
    /// Connections with bytes to write (`dirtyServers`, `replies.dirty`) are written once per
    /// loop pass before the loop blocks (`flushAll`).
    /// Last pass's held clients (`heldClients`), written now whatever arrived.
    private var releasedClients: [ClientConnection] = []
    /// Wakes the loop (`wake(after:)`): within a millisecond while replies are held, so that a
    /// stalled backend on an otherwise idle worker cannot hold its neighbours' replies longer
    /// than that; at once while clients wait to resume their deferred input.
    private var wakeTimer: TimerWatcher?
    /// The delay `wakeTimer` was last started with.
    private var wakeDelay = 0.0
    /// The main thread's way in (reload, drain), and the other workers' (client hand-over).
    let inbox: WorkerInbox
    /// Every worker's inbox, indexed by worker identifier; set before the loop starts.
    var peers: [WorkerInbox] = [] {
        didSet { workerCount = peers.count }
    }
    private let asyncWatcher = UnsafeMutablePointer<ev_async>.allocate(capacity: 1)
    private var drainFinished: Acknowledgement?

    init(identifier: Int, plans: [PoolPlan], logger: Logger, processInfo: ProcessInfo, workerSet: WorkerSet) {
        let loop = tern_loop_new()!
        self.workerSet = workerSet
        // Started here, before the loop runs, so that nothing posted early is lost.
        tern_async_init(asyncWatcher) { _, watcher, _ in
            let worker = Unmanaged<Worker>.fromOpaque(tern_get_data(watcher)!).takeUnretainedValue()
            worker.handleCommands()
        }
        self.inbox = WorkerInbox(wakeup: LoopWakeup(loop: loop, watcher: asyncWatcher))
        self.pools = []
        super.init(loop: loop, logger: logger, identifier: identifier, takesClients: identifier < workerSet.activeCount,
                   processInfo: processInfo)
        tern_set_data(asyncWatcher, Unmanaged.passUnretained(self).toOpaque())
        ev_async_start(loop, asyncWatcher)
        self.pools = plans.map { PoolRuntime(plan: $0, worker: self) }
    }

    private var sweepTimer: TimerWatcher?

    /// Once a second: utilisation, whether to take new clients, client timeouts (slowloris, idle).
    private func sweepClients() {
        measureUtilisation()
        followActiveCount()
        rebalanceClients()
        let now = self.now
        for client in clients { client.checkTimeouts(now: now) }
        sweepLingering(now: now)
        sweepRedisNames()
        // A burst's slots freed (thousands of pipelined requests, or clients that left with
        // them in flight): malloc keeps their pages unless trimmed (2,500 such clients left
        // 110-330 MB of RSS behind).
        if replies.trimFreeSlots() + replies.sweepOrphans() >= 1024 { tern_blocks_trim_due() }
        // Closed TLS clients' OpenSSL memory likewise (about 14 KiB each: 5,000 of them left
        // 72 MB of RSS behind; TLS sweep 32).
        if tlsClientsClosed >= 256 { tern_blocks_trim_due() }
        tlsClientsClosed = 0
        // The shared read buffer grows to the largest burst read; keep it modest when idle.
        if scratch.isEmpty { scratch.releaseIfIdle(keep: 1 << 18) }
        // Large blocks given back more than a second ago and not taken since leave the process.
        tern_blocks_sweep()
        sweepTimer?.start(after: 1)
    }

    /// CPU time of this thread over wall-clock time since the last call (about a second: the
    /// sweep timer), published for scaling and /metrics. Two clock reads a second, none per
    /// request or loop pass. CPU time includes the system calls the loop makes (most of a
    /// proxy's work) and excludes time blocked in epoll_wait and time preempted by other
    /// processes (see `WorkerScalingPolicy` for why the latter must not count).
    private func measureUtilisation() {
        let cpu = ThreadClock.cpuSeconds()
        let wall = ThreadClock.monotonicSeconds()
        let elapsed = wall - measuredAt
        if measuredAt > 0, elapsed > 0.05 {
            let fraction = min(max((cpu - measuredCPU) / elapsed, 0), 1)
            workerSet.loads[identifier].utilisationPPM.store(Int(fraction * 1_000_000), ordering: .relaxed)
        }
        measuredCPU = cpu
        measuredAt = wall
    }

    /// Starts or stops watching the listeners when this worker joined or left the active ones.
    /// A worker that leaves keeps its clients; one that joins gets new clients at once anyway
    /// (the accepting worker hands them over), watching only saves that hand-over.
    private func followActiveCount() {
        let shouldTake = identifier < workerSet.activeCount
        guard shouldTake != takesClients, drainFinished == nil else { return }
        takesClients = shouldTake
        for pool in pools { pool.followTakesClients() }
    }

    /// Runs the loop on the current thread until it is broken.
    func run() {
        measureUtilisation()
        let timer = TimerWatcher(loop: loop, owner: self) { _, watcher, _ in
            let worker = Unmanaged<Worker>.fromOpaque(tern_get_data(watcher)!).takeUnretainedValue()
            worker.sweepTimer?.fired()
            worker.sweepClients()
        }
        sweepTimer = timer
        timer.start(after: 1)
        tern_prepare_init(prepareWatcher) { _, watcher, _ in
            let worker = Unmanaged<Worker>.fromOpaque(tern_get_data(watcher)!).takeUnretainedValue()
            worker.flushAll()
        }
        tern_set_data(prepareWatcher, Unmanaged.passUnretained(self).toOpaque())
        ev_prepare_start(loop, prepareWatcher)
        for pool in pools { pool.start() }
        // This thread keeps a few large buffer blocks for reuse (ByteBuffer, tern_blocks.h).
        tern_blocks_enable()
        ev_run(loop, 0)
        tern_blocks_release_all()
    }

    // MARK: Commands from the main thread

    private func handleCommands() {
        for command in inbox.take() {
            switch command {
            case let .apply(plans, acknowledgement):
                apply(plans)
                acknowledgement.done()
            case let .drain(stoppedListening, finished):
                for pool in pools { pool.retire() }
                stoppedListening.done()
                drainFinished = finished
                // Idle clients go now; the others once their in-flight replies are out.
                for client in clients { client.finishAndClose() }
            case let .adoptClient(descriptor, shared):
                adoptClient(descriptor: descriptor, of: shared)
            case let .adoptMovedClient(descriptor, shared, state):
                adoptClient(descriptor: descriptor, of: shared, moved: state)
            }
        }
    }

    /// A client accepted by another worker. If its pool has meanwhile left service here
    /// (reload, drain), it is closed as the accepting worker would have done. A worker that has
    /// just joined the active ones may not watch the listener yet (it follows within a second):
    /// it adopts clients all the same.
    private func adoptClient(descriptor: Int32, of shared: PoolShared, moved: MovedClient? = nil) {
        guard let pool = pools.first(where: { $0.plan.shared === shared }), !pool.isRetired, drainFinished == nil else {
            logger.debug("client fd \(descriptor) handed to worker \(identifier) closed: its pool is not served here (reload or drain)")
            shared.workerCounters[identifier].clients.subtract(1, ordering: .relaxed)
            shared.clientCount.subtract(1, ordering: .relaxed)
            // A moved TLS stream ends before its socket closes (close_notify goes to this
            // client, never to a later socket given the same number).
            moved?.rare?.tls?.shutdown()
            moved?.rare?.tls = nil
            Syscall.close(descriptor)
            return
        }
        if let moved {
            ClientConnection(descriptor: descriptor, pool: pool, worker: self, moved: moved).start()
        } else {
            ClientConnection(descriptor: descriptor, pool: pool, worker: self).start()
        }
    }

    /// Elastic workers, once a second: a worker busier than the activation threshold gives idle
    /// clients (`ClientConnection.isMovable`: between two requests, nothing pending, no session
    /// pinned to this worker's backend connections) to the active worker with the fewest clients
    /// of the pool, until the two differ by at most one (at most 64 a second). Connections that
    /// opened before more workers were activated — a fleet reconnecting after a restart, all on
    /// worker 0 — spread out this way; a worker under the threshold moves nothing, so a sidecar's
    /// clients stay on one loop. A moved client keeps its Redis session (user, name, protocol);
    /// its `CLIENT ID` changes.
    private func rebalanceClients() {
        guard workerSet.isElastic, drainFinished == nil,
              workerSet.loads[identifier].utilisationPPM.load(ordering: .relaxed) >= workerSet.busyPPM else { return }
        let active = workerSet.activeCount
        guard active >= 2 else { return }
        for pool in pools where !pool.isRetired && pool.plan.listenDescriptor >= 0 {
            let counters = pool.plan.shared.workerCounters
            guard active <= counters.count else { continue }
            var target = -1, fewest = Int.max
            for index in 0..<active where index != identifier {
                let count = counters[index].clients.load(ordering: .relaxed)
                if count < fewest { target = index; fewest = count }
            }
            guard target >= 0 else { continue }
            let mine = counters[identifier].clients.load(ordering: .relaxed)
            var budget = min((mine - fewest) / 2, 64)
            guard budget > 0 else { continue }
            for client in clients where budget > 0 && client.pool === pool && client.isMovable {
                budget -= 1
                let descriptor = client.descriptor
                let state = client.detachForMove()
                counters[identifier].clients.subtract(1, ordering: .relaxed)
                counters[target].clients.add(1, ordering: .relaxed)
                workerSet.loads[identifier].movedOut.add(1, ordering: .relaxed)
                peers[target].post(.adoptMovedClient(descriptor: descriptor, pool: pool.plan.shared, state: state))
            }
        }
    }

    /// Gives a client accepted here to worker `identifier`.
    func handOver(descriptor: Int32, of shared: PoolShared, to identifier: Int) {
        peers[identifier].post(.adoptClient(descriptor: descriptor, pool: shared))
    }

    /// A client accepted on `pool`'s listener: served here, or by the least loaded worker.
    override func accepted(descriptor: Int32, pool: PoolRuntime) {
        let target = leastLoadedWorker(for: pool)
        if target == identifier {
            ClientConnection(descriptor: descriptor, pool: pool, worker: self).start()
        } else {
            logger.debug("pool \(pool.config.name): client fd \(descriptor) accepted by worker \(identifier), handed to worker \(target)")
            handOver(descriptor: descriptor, of: pool.plan.shared, to: target)
        }
    }

    /// The worker with the fewest clients of `pool` among those taking new clients (this one
    /// on a tie, if it takes clients), counted as having one more. Whichever loop wakes first
    /// accepts a burst of connections; without this, one worker could take 49 of 50 clients
    /// while the other idles. Elastic workers: a worker that has just left the active ones may
    /// still accept what its listener reported; it hands the client to an active worker.
    private func leastLoadedWorker(for pool: PoolRuntime) -> Int {
        let counters = pool.plan.shared.workerCounters
        let active = min(max(1, workerSet.activeCount), counters.count)
        var best = identifier < active ? identifier : 0
        var fewest = counters[best].clients.load(ordering: .relaxed)
        for index in 0..<active where index != best {
            let count = counters[index].clients.load(ordering: .relaxed)
            if count < fewest {
                best = index
                fewest = count
            }
        }
        counters[best].clients.add(1, ordering: .relaxed)
        return best
    }

    /// A blocking command that waited for a dedicated connection of `server` runs now.
    override func runWaiting(_ waiter: DedicatedWaiter, client: ReplyOwner, on server: ServerRuntime) {
        // Invariant: every ReplyOwner is a ClientConnection (its only subclass; the base class
        // is never made on its own), so the cast cannot be wrong.
        unsafeDowncast(client, to: ClientConnection.self).runBlocking(waiter, on: server)
    }

    private func apply(_ plans: [PoolPlan]) {
        var next: [PoolRuntime] = []
        for plan in plans {
            // A pool whose protocol changed is another pool under the same name: its clients,
            // which speak the old one, close once answered (kept, a memcached client's `get k`
            // was read as a Redis inline command).
            if let existing = pools.first(where: { $0.config.name == plan.config.name && $0.config.protocolKind == plan.config.protocolKind }) {
                // Blocked clients only when keys moved: a server's new address (a failover) ends
                // the sessions on that server alone (`ServerRuntime.endSessions`).
                if existing.update(plan) { subscribersFollow(existing, after: "the reload", endingBlocked: existing.keysMovedByLastUpdate) }
                next.append(existing)
            } else {
                let created = PoolRuntime(plan: plan, worker: self)
                created.start()
                next.append(created)
                // (Once, not once per worker.)
                if identifier == 0 { logger.notice("pool \(plan.config.name) added") }
            }
        }
        for pool in pools where !next.contains(where: { $0 === pool }) {
            pool.retire()
            retiredPools.append(pool)
            for client in clients where client.pool === pool { client.finishAndClose() }
            logger.notice("pool \(pool.config.name) removed; its clients close once idle")
        }
        pools = next
    }

    /// Closes retired servers that have become idle, forgets retired pools nobody uses, and ends
    /// the loop when a drain has finished.
    private func sweep() {
        if !retiringServers.isEmpty {
            retiringServers.removeAll { entry in
                guard entry.server.isIdle else { return false }
                entry.server.closeConnections()
                return true
            }
        }
        if !retiredPools.isEmpty {
            // A retired pool is kept while clients use it and while requests are in flight on its
            // servers or its old pool's (a warm-up read continues on both after a reload).
            retiredPools.removeAll { pool in
                guard pool.isIdle, !clients.contains(where: { $0.pool === pool }) else { return false }
                pool.closeConnections()
                return true
            }
        }
        // A drain ends once the sockets closed on Tern's side have lingered too: the process's
        // exit would close them with a reset, dropping replies their clients had not read.
        if drainFinished != nil { sweepLingering(now: now) }
        if let finished = drainFinished, clients.isEmpty, lingering.isEmpty {
            drainFinished = nil
            for pool in pools { for server in pool.servers { server.closeConnections() } }
            finished.done()
            tern_break(loop)
        }
    }


    /// Writes every dirty connection, servers first, then clients, until neither has anything
    /// to write.
    private func writeDirty() {
        while !dirtyServers.isEmpty || !replies.dirty.isEmpty {
            // Servers first, then clients, until neither has anything to write: a client's
            // flush may parse requests it had paused on (dirtying servers), a server's failure
            // may complete slots (dirtying clients). Each queue is FIFO, so connections are
            // written in the order they became dirty (the client waiting longest first). A
            // server is popped out with the queue's own reference, a client with none (see
            // `ReplyDesk.dirty`): no retain to iterate, no release pass to empty a list.
            while let server = dirtyServers.popFirst() {
                server.isDirty = false
                server.flush()
            }
            while let lent = replies.dirty.popFirst() {
                // Lent without a reference (alive: see `ReplyDesk.dirty`).
                lent._withUnsafeGuaranteedRef { owner in
                    // Invariant: every ReplyOwner is a ClientConnection (its only subclass; the
                    // base class is never made on its own), so the cast cannot be wrong.
                    let client = unsafeDowncast(owner, to: ClientConnection.self)
                    client.isDirty = false
                    if client.isHeld {
                        client.isHeld = false
                        client.flush()
                    } else {
                        client.flush(allowHold: true)
                    }
                }
            }
        }
    }

    /// One write per dirty connection per loop pass: requests of many clients to one backend
    /// connection leave in one write, and so do many replies to one client.
    private func flushAll() {
        if !placementsChanged.isEmpty { followChangedPlacements() }
        // Clients whose input waited since the last pass go on (parsed in their flush below).
        if !resumingInput.isEmpty {
            for client in resumingInput { client.resumeDeferredInput() }
            resumingInput.removeAll(keepingCapacity: true)
        }
        swap(&heldClients, &releasedClients)
        // Until nothing is dirty: writing last pass's held clients may parse requests they had
        // paused on and so dirty servers and clients again, which are written in this pass too.
        // `retired` is emptied only after this, with `replies.dirty` empty (see there).
        repeat {
            writeDirty()
            // Held last pass and not written since: written now.
            for client in releasedClients where client.isHeld {
                client.isHeld = false
                client.flush()
            }
            releasedClients.removeAll(keepingCapacity: true)
        } while !dirtyServers.isEmpty || !replies.dirty.isEmpty
        if !heldClients.isEmpty { wake(after: 0.001) }
        if !deferredInput.isEmpty {
            // Resumed at the next pass, which polls first without blocking.
            swap(&deferredInput, &resumingInput)
            wake(after: 0)
        }
        passNumber &+= 1
        retired.removeAll(keepingCapacity: true)
        if !retiringServers.isEmpty || !retiredPools.isEmpty || drainFinished != nil { sweep() }
    }

    /// Subscribers of `pool` whose channels the placement moved are closed
    /// (`ClientConnection.followPlacement`); with `endingBlocked` (a reload), so are its
    /// clients blocked in a command (`ClientConnection.endBlockingAfterMove`).
    private func subscribersFollow(_ pool: PoolRuntime, after change: String, endingBlocked: Bool = false) {
        var closed = 0, blocked = 0
        for client in clients where client.pool === pool && client.redisExtras != nil {
            if client.redisExtras?.subscriptions != nil {
                if client.followPlacement() { closed += 1 }
            } else if endingBlocked, client.endBlockingAfterMove() {
                blocked += 1
            }
        }
        if closed > 0 { logger.notice("pool \(pool.config.name): \(change) moved channels; \(closed) subscribed clients closed (they subscribe again on reconnect)") }
        if blocked > 0 { logger.notice("pool \(pool.config.name): \(change) moved keys; \(blocked) clients in a blocking command closed (they block again where their keys are on reconnect)") }
    }

    /// Ejections and returns of this pass (`placementChanged`), followed here, at the start of
    /// the next flush: closing a subscriber from inside the backend connection's work that
    /// ejected a server could close that very connection under it.
    private func followChangedPlacements() {
        var pools: [PoolRuntime] = []
        swap(&pools, &placementsChanged)
        for pool in pools where !pool.isRetired { subscribersFollow(pool, after: "an ejection or a server's return") }
    }

    /// Wakes the loop within `delay` seconds, unless it is woken sooner already. Waking is all
    /// the timer does: the next pass's flush writes what was held and resumes deferred input
    /// (and wakes again if clients are still held).
    private func wake(after delay: Double) {
        let timer = wakeTimer ?? TimerWatcher(loop: loop, owner: self) { _, watcher, _ in
            let worker = Unmanaged<Worker>.fromOpaque(tern_get_data(watcher)!).takeUnretainedValue()
            worker.wakeTimer?.fired()
        }
        wakeTimer = timer
        if timer.isActive, wakeDelay <= delay { return }
        wakeDelay = delay
        timer.start(after: delay)
    }
}
