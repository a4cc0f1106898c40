#if canImport(Glibc)
import Glibc
#endif
import CLibev
import Synchronization
import TernCore

// Redis Cluster redirects on a worker: `-MOVED`/`-ASK`/`-TRYAGAIN` replies re-sent or parked
// (the discovery side is Backend/RedisClusterBackend.swift).

/// A request waiting in Tern on a cluster pool (`PoolRuntime.waiting`): for a map that knows its
/// node (`retryAt` nil), or for a moment to try again (after `-TRYAGAIN`, or to look again at
/// a node that refused its connection), at most until `waitUntil`.
struct WaitingRedirect {
    /// What goes on when the wait ends.
    enum Work {
        /// A redirected (or unsent) request: re-sent by the pool, or failed with its last
        /// redirect error (`giveUp`). `isKeyed` (unsent requests): any master redirects it to
        /// its keys' node; a keyless request (EVAL with no keys, a part of DBSIZE) goes to its
        /// own node or fails.
        case request(RedirectedRequest, isKeyed: Bool)
        /// A request in phases (a blocking command, a first WATCH, a cluster transaction): its
        /// closure gets the node's position once a map knows it (for a `-MOVED`, the slot's
        /// owner in that map if it still names none), 0 when `retryAt` comes, or nil when the
        /// wait ends first (`waitUntil`, or the pool ends). Rare (a failover's first moments, a
        /// migration): the closure is allocated then only.
        case phased((Int?) -> Void)
    }

    let redirect: ClusterRedirect
    let work: Work
    /// When the wait ends with the redirect error: the request's deadline, or 2 s without a
    /// timeout.
    let waitUntil: Double
    var retryAt: Double?
    /// A request its node never received (`keepUnsentRequest`, `retryUnsent`): tried again on
    /// that node once its connection may connect, or, once the map no longer has the node (its
    /// slots moved: a failover), on another master, whose -MOVED names the slot's new owner.
    var isUnsent = false
    /// When it was kept (`PoolRuntime.parkSequence`): waiting requests that go on at one
    /// moment go in this order, so that one client's requests still run in the order sent.
    var sequence = 0

    /// When the pool's timer must look at it next.
    var nextMoment: Double { min(retryAt ?? waitUntil, waitUntil) }
}

extension PoolRuntime {
    /// Waits for a map that knows `redirect`'s node (asked for here), at most until `deadline`
    /// (2 s when it is infinite), as a redirected request is parked (`followRedirect`).
    func awaitMap(for redirect: ClusterRedirect, deadline: Double, _ resume: @escaping (Int?) -> Void) {
        plan.shared.cluster.noteUnknownNode(redirect.target)
        parkSequence += 1
        waiting.append(WaitingRedirect(redirect: redirect, work: .phased(resume), waitUntil: deadline.isFinite ? deadline : worker.now + 2,
                                       sequence: parkSequence))
        armParkTimer()
    }

    /// Calls `resume` with 0 at `moment`, or nil if `deadline` (2 s when infinite) or the
    /// pool's end comes first.
    func retryLater(at moment: Double, deadline: Double, isUnsent: Bool = false, sequence: Int? = nil, _ resume: @escaping (Int?) -> Void) {
        let waitUntil = deadline.isFinite ? deadline : worker.now + 2
        if sequence == nil { parkSequence += 1 }
        waiting.append(WaitingRedirect(redirect: ClusterRedirect(isAsk: false, slot: 0, target: ""), work: .phased(resume), waitUntil: waitUntil,
                                       retryAt: moment, isUnsent: isUnsent, sequence: sequence ?? parkSequence))
        // (The timer fires no later than this one needs: no walk of every waiting request.)
        if parkTimer?.isActive == true, min(moment, waitUntil) >= parkTimerAt { return }
        armParkTimer()
    }

    /// The position in `servers` of the node named `host:port` (a redirect's target), if it is
    /// a master of the current map. Off the common path: only redirects look.
    func serverIndex(named name: String) -> Int? {
        servers.firstIndex { $0.name == name }
    }

    /// A request answered `-MOVED`/`-ASK`: re-sent to the node named (with `ASKING` first for
    /// ASK). A node this worker's map does not know parks it until a new map arrives (asked for
    /// here) or its deadline passes, when the redirect error goes to the client.
    func followRedirect(_ redirect: ClusterRedirect, _ request: RedirectedRequest) {
        let cluster = plan.shared.cluster
        if request.deadline <= worker.now {
            // Out of time already: the redirect error is the answer (nothing more is sent).
            return giveUp(request)
        }
        if redirect.isAsk { cluster.askRedirects.add(1, ordering: .relaxed) } else { cluster.movedRedirects.add(1, ordering: .relaxed) }
        if let server = serverIndex(named: redirect.target) {
            if !redirect.isAsk { learnSlot(redirect.slot, server: server) }
            resend(request, toServer: server, asking: redirect.isAsk)
            return
        }
        // The node may be a new master serving no slot yet (`ClusterState.noteUnknownNode`).
        cluster.noteUnknownNode(redirect.target)
        // Without a timeout, a request waits for a map with its node at most 2 s.
        park(WaitingRedirect(redirect: redirect, work: .request(request, isKeyed: false), waitUntil: request.deadline.isFinite ? request.deadline : worker.now + 2))
    }

    /// A request node `node` never received: its connection was refused, lost before sending
    /// it, or backing off after such failures (a master failing over: its replica is promoted
    /// within `cluster-node-timeout` and an election). It waits, within its deadline (2 s
    /// without a timeout), for the node to take connections again or for a map without it, as
    /// a cluster client retries; before, it failed at once with the connection's error
    /// (hundreds of errors in a master's two-second failover, where redis-py's RedisCluster
    /// saw none). Requests the node may have received are not kept: they might have run.
    func keepUnsentRequest(_ request: RedirectedRequest, node: String) -> Bool {
        // A client that has left: nothing more is sent for it (it may have sent the request
        // again elsewhere).
        guard isCluster, !isRetired, request.deadline > worker.now, let client = request.slot.client, !client.isClosed else { return false }
        // The bytes must be exactly one request, and the command known, to go elsewhere.
        let arguments = RespArguments()
        let parsed = request.bytes.withUnsafeBytes { RespRequestParser.parse($0, limits: respLimits, into: arguments) }
        guard parsed == .request(length: request.bytes.count), arguments.count > 0 else { return false }
        let command = request.bytes.withUnsafeBytes { frame in arguments.withArgument(0, in: frame) { RedisCommandTable.lookup($0) } }
        let isKeyed: Bool
        switch command?.routing {
        case .keyed?, .mget?, .mset?, .sum?: isKeyed = true
        default: isKeyed = false
        }
        let now = worker.now
        // Without a timeout the wait, and the request sent again, get 2 s in all: its deadline
        // goes with it, so that waiting again after another refusal does not start over.
        let kept = request.deadline.isFinite ? request
            : RedirectedRequest(bytes: request.bytes, error: request.error, slot: request.slot, part: request.part, redirects: request.redirects,
                                clientIndex: request.clientIndex, deadline: now + 2)
        client.holdLaterRequests()
        parkSequence += 1
        park(WaitingRedirect(redirect: ClusterRedirect(isAsk: false, slot: 0, target: node), work: .request(kept, isKeyed: isKeyed),
                             waitUntil: kept.deadline, retryAt: now + Self.unsentRetry, isUnsent: true, sequence: parkSequence))
        return true
    }

    /// How often a kept unsent request looks again (besides each new map).
    static let unsentRetry = 0.1

    /// Where a kept unsent request goes now: its node, if the map still has it and its
    /// connection may connect; another master when the map no longer has the node (a keyed
    /// request); nil to wait on.
    private func unsentTarget(_ entry: WaitingRedirect, _ request: RedirectedRequest, isKeyed: Bool) -> Int? {
        unsentTarget(node: entry.redirect.target, isKeyed: isKeyed, clientIndex: request.clientIndex)
    }

    private func unsentTarget(node name: String, isKeyed: Bool, clientIndex: Int) -> Int? {
        func mayConnect(_ index: Int) -> Bool {
            !withConnection(toServer: index, client: clientIndex) { $0.isBackingOff }
        }
        if let node = serverIndex(named: name) { return mayConnect(node) ? node : nil }
        guard isKeyed else { return nil }
        return servers.indices.first(where: mayConnect)
    }

    /// A request in phases (a transaction, a blocking command) that node `node` never
    /// received, as `keepUnsentRequest` keeps a plain one: `send` gets the node once it may be
    /// connected to again, or another master once a map no longer has it (the request follows
    /// that master's -MOVED itself); `giveUp` runs when `deadline` (2 s when infinite) or the
    /// pool's end comes first.
    /// `deadline` is fixed by the caller once, when the request is first kept, so that a node
    /// that keeps refusing cannot keep it waiting: each refusal keeps it again.
    func retryUnsent(node: String, clientIndex: Int, deadline: Double, send: @escaping (Int) -> Void, giveUp: @escaping () -> Void) {
        parkSequence += 1
        let sequence = parkSequence
        func attempt(_ due: Int?) {
            guard due != nil, !isRetired, deadline > worker.now else {
                // (Never sent: a forward error, as for a plain request; see `giveUp`.)
                stats.forwardErrors.add()
                return giveUp()
            }
            if let target = unsentTarget(node: node, isKeyed: true, clientIndex: clientIndex) {
                send(target)
            } else {
                retryLater(at: worker.now + Self.unsentRetry, deadline: deadline, isUnsent: true, sequence: sequence, attempt)
            }
        }
        retryLater(at: worker.now + Self.unsentRetry, deadline: deadline, isUnsent: true, sequence: sequence, attempt)
    }

    /// A request answered `-TRYAGAIN` by node `server` (keys of a migrating slot split between
    /// two nodes): sent to the same node the same way (`asking`) after 25 ms, doubling with each
    /// try, as cluster clients do.
    func retryLater(_ request: RedirectedRequest, server: String, asking: Bool) {
        plan.shared.cluster.tryAgainRetries.add(1, ordering: .relaxed)
        // 25 ms for the first retry (this one is counted already), doubling.
        let delay = 0.025 * Double(1 << Int(min(max(ClusterState.retries(request.redirects), 1) - 1, 6)))
        park(WaitingRedirect(redirect: ClusterRedirect(isAsk: asking, slot: 0, target: server), work: .request(request, isKeyed: false),
                             waitUntil: request.deadline.isFinite ? request.deadline : worker.now + delay + 2, retryAt: worker.now + delay))
    }

    /// A redirected request that cannot go on in time: its last redirect error is the answer.
    /// One never sent (`unsent`: its node refused connections, a master down) is a forward
    /// error, not a redirect given up: counted as one, a cluster pool that had lost a shard
    /// showed a redirect storm that never happened, and the error-ratio alert stayed silent
    /// (cluster sweep 31).
    private func giveUp(_ request: RedirectedRequest, unsent: Bool = false) {
        if unsent { stats.forwardErrors.add() } else { plan.shared.cluster.redirectsGivenUp.add(1, ordering: .relaxed) }
        request.error.withUnsafeBytes { _ = request.slot.deliver(part: request.part, reply: $0, isError: true) }
    }

    private func park(_ entry: WaitingRedirect) {
        var entry = entry
        if entry.sequence == 0 {
            parkSequence += 1
            entry.sequence = parkSequence
        }
        waiting.append(entry)
        // (The timer fires no later than this entry needs: no walk of the whole list, which a
        // failover can fill with thousands of requests.)
        if parkTimer?.isActive == true, entry.nextMoment >= parkTimerAt { return }
        armParkTimer()
    }

    private func resend(_ request: RedirectedRequest, toServer server: Int, asking: Bool) {
        withConnection(toServer: server, client: request.clientIndex) { connection in
            connection.resend(request, asking: asking)
        }
    }

    /// A new map arrived (`update`): requests waiting for a node it knows go now; a MOVED whose
    /// node is still unknown goes to its slot's owner in the new map.
    func redispatchParked() {
        guard !waiting.isEmpty else { return }
        // What goes on now, in the order it was kept (one client's requests in the order sent).
        var actions: [(sequence: Int, run: () -> Void)] = []
        let entries = waiting
        waiting.removeAll()
        for entry in entries {
            switch entry.work {
            case let .phased(resume):
                if entry.isUnsent {
                    // A kept request in phases looks at once (its node may have left the map).
                    actions.append((entry.sequence, { resume(0) }))
                    continue
                }
                guard entry.retryAt == nil else {
                    waiting.append(entry)
                    continue
                }
                let target = serverIndex(named: entry.redirect.target)
                    ?? (entry.redirect.isAsk ? nil : placement.server(forHash: UInt32(entry.redirect.slot)))
                if let target {
                    actions.append((entry.sequence, { resume(target) }))
                } else if entry.waitUntil <= worker.now {
                    actions.append((entry.sequence, { resume(nil) }))
                } else {
                    waiting.append(entry)
                }
            case let .request(request, isKeyed):
                if entry.isUnsent, entry.waitUntil > worker.now, request.slot.client?.isClosed == false,
                   serverIndex(named: entry.redirect.target) == nil, let target = unsentTarget(entry, request, isKeyed: isKeyed) {
                    // The map no longer has its node: to another master at once.
                    actions.append((entry.sequence, { self.resend(request, toServer: target, asking: false) }))
                    continue
                }
                guard entry.retryAt == nil else {
                    waiting.append(entry)
                    continue
                }
                if entry.waitUntil <= worker.now {
                    actions.append((entry.sequence, { self.giveUp(request, unsent: entry.isUnsent) }))
                    continue
                }
                let named = serverIndex(named: entry.redirect.target)
                var target = named
                if target == nil, !entry.redirect.isAsk { target = placement.server(forHash: UInt32(entry.redirect.slot)) }
                if let target {
                    actions.append((entry.sequence, { self.resend(request, toServer: target, asking: entry.redirect.isAsk && named != nil) }))
                } else {
                    waiting.append(entry)
                }
            }
        }
        run(actions)
        armParkTimer()
    }

    /// Runs `actions` in the order their requests were kept.
    private func run(_ actions: [(sequence: Int, run: () -> Void)]) {
        for action in actions.sorted(by: { $0.sequence < $1.sequence }) { action.run() }
    }

    /// Retries that are due go out; requests whose deadline has passed (all of them when `all`)
    /// fail with their last error. Blocking requests waiting for a connection past their
    /// deadline fail too.
    func expireParked(all: Bool = false) {
        let now = worker.now + 0.0005
        for server in servers { server.expireWaiting(now: now) }
        var actions: [(sequence: Int, run: () -> Void)] = []
        let entries = waiting
        waiting.removeAll()
        for entry in entries {
            switch entry.work {
            case let .phased(resume):
                if all || entry.waitUntil <= now {
                    actions.append((entry.sequence, { resume(nil) }))
                } else if let retryAt = entry.retryAt, retryAt <= now {
                    actions.append((entry.sequence, { resume(0) }))
                } else {
                    waiting.append(entry)
                }
            case let .request(request, isKeyed):
                if entry.isUnsent, !all, entry.waitUntil > now, request.slot.client?.isClosed == false {
                    if let retryAt = entry.retryAt, retryAt > now {
                        waiting.append(entry)
                    } else if let target = unsentTarget(entry, request, isKeyed: isKeyed) {
                        actions.append((entry.sequence, { self.resend(request, toServer: target, asking: false) }))
                    } else {
                        var again = entry
                        again.retryAt = now + Self.unsentRetry
                        waiting.append(again)
                    }
                    continue
                }
                if !all, entry.waitUntil > now, let retryAt = entry.retryAt, retryAt <= now, let server = serverIndex(named: entry.redirect.target) {
                    actions.append((entry.sequence, { self.resend(request, toServer: server, asking: entry.redirect.isAsk) }))
                } else if all || entry.waitUntil <= now || entry.retryAt.map({ $0 <= now }) == true {
                    actions.append((entry.sequence, { self.giveUp(request, unsent: entry.isUnsent) }))
                } else {
                    waiting.append(entry)
                }
            }
        }
        run(actions)
        // While requests wait for the cluster to settle (a node down, a node no map has yet),
        // the map is asked for at every pass of this timer, at most every 200 ms: one refresh
        // after the first -MOVED could read a node that had not heard of the promotion yet,
        // and the waiting requests then waited for the periodic refresh (10 s) or their
        // timeout; after a master died, the map came with the workers' reconnect backoff,
        // seconds after the promotion (cluster sweep 31).
        if isCluster, !waiting.isEmpty { plan.shared.cluster.requestRefresh() }
        armParkTimer()
    }

    /// The pool's timer for requests that wait in Tern: parked redirects, and blocking
    /// requests waiting for a dedicated connection (`ServerRuntime.waitForDedicated`).
    func armParkTimer() {
        let firstWaiting = servers.reduce(Double.infinity) { min($0, $1.nextWaitingDeadline) }
        guard let first = (waiting.map(\.nextMoment) + (firstWaiting.isFinite ? [firstWaiting] : [])).min() else {
            parkTimer?.stop()
            return
        }
        let timer = parkTimer ?? TimerWatcher(loop: worker.loop, owner: self) { _, watcher, _ in
            let pool = Unmanaged<PoolRuntime>.fromOpaque(tern_get_data(watcher)!).takeUnretainedValue()
            pool.parkTimer?.fired()
            pool.expireParked()
        }
        parkTimer = timer
        // (A cluster pool's timer also asks for the map while requests wait: `expireParked`.)
        let asksMap = isCluster && !waiting.isEmpty
        parkTimerAt = max(worker.now + 0.001, asksMap ? min(first, worker.now + RefreshClock.minimumInterval) : first)
        timer.start(after: parkTimerAt - worker.now)
    }

    /// The server of a hash slot (cluster pools).
    @inline(__always)
    func server(forSlot slot: Int) -> Int? {
        placement.server(forHash: UInt32(slot))
    }
}
