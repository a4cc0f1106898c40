#if canImport(Glibc)
import Glibc
#endif
import TernCore

/// Redis sessions on a sharded pool: MULTI/EXEC/DISCARD, WATCH/UNWATCH, RESET and blocking
/// commands. Confined to the client's worker thread, like the client.
///
///     MULTI ──► Tern answers +OK, then +QUEUED for each command it checks (table, arity, one
///               server for every key) and keeps (re-encoded) in the session
///     EXEC  ──► MULTI, the commands and EXEC leave in one piece of one connection's output:
///               a shared connection (no other client's bytes can fall in between), or the
///               connection the client's WATCH pinned; only EXEC's reply reaches the client
///               (cluster pools: sent whole again after -MOVED, `ClusterExec`)
///     WATCH ──► leases a dedicated connection to the keys' server until EXEC, DISCARD,
///               UNWATCH, RESET or disconnect; it goes back clean (EXEC and UNWATCH unwatch)
///               or is closed, never handed on dirty; Redis's error to the WATCH that began
///               the lease ends it (`FirstWatch`, which follows a -MOVED)
///     BLPOP ──► runs on a dedicated connection (at most `dedicated_connections` per server
///               per worker; more wait for one), with the pool timeout extended by the
///               command's own; a client that leaves while blocked has that connection closed,
///               so Redis unblocks it without popping anything (cluster pools: -MOVED/-ASK
///               followed, `ClusterBlocking`)
final class RedisTransaction {
    /// The queued commands, as multibulk requests.
    let commands = ByteBuffer()
    var count = 0
    /// The server every key so far lives on (-1: no key yet).
    var server = -1
    /// Cluster pools: the hash slot every key so far hashes to (-1: no key yet); Redis Cluster
    /// refuses an EXEC whose commands' keys span two slots.
    var hashSlot = -1
    /// A command was refused while queuing: EXEC answers EXECABORT.
    var aborted = false
    /// The pool's `placementGeneration` at MULTI: `server` is a position under that placement.
    /// A reload or a cluster map change that may move keys aborts the transaction.
    var placementGeneration = 0
}

/// A dedicated connection leased to this client, told apart from a later lease of the same
/// connection by its lease number.
struct DedicatedLease {
    let connection: ServerConnection
    let lease: Int
    /// The connection's socket when the lease began (WATCH holds only on that socket).
    let generation: Int

    /// The server's position in the pool now (a reload may have moved it). Only while the
    /// lease `isCurrent`: a reload that removed the server ended the lease, and the server may
    /// be gone (`connection.server` is unowned).
    var server: Int { connection.server.index }

    var isCurrent: Bool { connection.isLeased && connection.lease == lease }
    /// Still leased, on the socket it began on: what a WATCH needs to hold.
    var isIntact: Bool { isCurrent && connection.generation == generation }
}

extension ClientConnection {
    /// MULTI, EXEC, DISCARD, WATCH, UNWATCH, RESET.
    func routeSession(_ command: RedisCommand, _ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot) {
        if command.isNamed("multi") {
            guard session.transaction == nil else {
                return slot.complete(with: "-ERR MULTI calls can not be nested\r\n" as StaticString)
            }
            session.transaction = RedisTransaction()
            // (A lost WATCH places nothing: EXEC fails for it.)
            session.transaction!.server = session.watch.flatMap { $0.isCurrent ? $0.server : nil } ?? -1
            session.transaction!.placementGeneration = pool.placementGeneration
            slot.complete(with: "+OK\r\n" as StaticString)
        } else if command.isNamed("exec") {
            exec(session, slot)
        } else if command.isNamed("discard") {
            guard session.transaction != nil else {
                return slot.complete(with: "-ERR DISCARD without MULTI\r\n" as StaticString)
            }
            session.transaction = nil
            endWatch(session)
            slot.complete(with: "+OK\r\n" as StaticString)
        } else if command.isNamed("watch") {
            watch(frame, session, slot)
        } else if command.isNamed("unwatch") {
            if session.watchBroken { session.watchBroken = false }
            guard let watch = session.watch else { return slot.complete(with: "+OK\r\n" as StaticString) }
            session.watch = nil
            // A connection that is not open watches nothing (a WATCH its node refused).
            guard watch.isIntact, watch.connection.isOpen else {
                releaseWatch(watch)
                return slot.complete(with: "+OK\r\n" as StaticString)
            }
            let connection = watch.connection
            RespEncoder.command("UNWATCH", into: connection.requestBuffer())
            connection.enqueue(slot: slot, part: ReplyPart.whole, framing: .line)
            connection.returnWhenIdle = true
        } else {
            // RESET: out of MULTI, WATCH undone, name and library forgotten, and (as Redis does
            // for the default user) authentication to be done again.
            session.transaction = nil
            endWatch(session)
            endSubscriptions()
            session.name = nil
            session.libraryName = nil
            session.libraryVersion = nil
            if pool.requiresAuth {
                session.isAuthenticated = false
                session.user = nil
            }
            // Replies on again (`CLIENT REPLY`), this one's first, as Redis resets them: a pooled
            // connection reset before reuse stayed silent (review of session 33).
            redisReplyMode = .on
            slot.isSilent = false
            slot.complete(with: "+RESET\r\n" as StaticString)
        }
    }

    /// Between MULTI and EXEC: check the command and keep it, or refuse it and mark the
    /// transaction for EXECABORT.
    func queueInTransaction(_ command: RedisCommand, _ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot) {
        guard let transaction = session.transaction else { return }
        let arguments = session.arguments
        guard command.isTransactional || runsOnTheOneServer(command) else {
            if command.isNamed("quit") { return answerLocally(command, frame, session, slot) }
            transaction.aborted = true
            return slot.complete(with: "-ERR '\(command.name)' cannot be used inside MULTI through Tern\r\n")
        }
        let placement = placeKeys(command, frame, arguments, startingWith: transaction.server, slot: transaction.hashSlot)
        if placement.crossServer {
            transaction.aborted = true
            return slot.complete(with: "-CROSSSLOT Keys in request don't hash to the same slot\r\n" as StaticString)
        }
        if placement.noServer || !placement.valid {
            transaction.aborted = true
            return slot.complete(with: placement.noServer ? "-ERR no server available\r\n" as StaticString : "-ERR syntax error\r\n" as StaticString)
        }
        if let refusal = sortPatternRefusal(command, frame, arguments, placement) {
            transaction.aborted = true
            return slot.complete(with: refusal)
        }
        if let refusal = copyDatabaseRefusal(command, frame, arguments) {
            transaction.aborted = true
            return slot.complete(with: refusal)
        }
        guard transaction.commands.readableCount + frame.count <= pool.config.clientQueryLimit else {
            transaction.aborted = true
            return slot.complete(with: "-ERR transaction exceeds client_query_limit\r\n" as StaticString)
        }
        transaction.server = placement.server
        transaction.hashSlot = placement.hashSlot
        writeRequest(frame, arguments, into: transaction.commands)
        transaction.count += 1
        slot.complete(with: "+QUEUED\r\n" as StaticString)
    }

    /// On a pool of one server (no cluster, no warm-up), what Tern sends to every server
    /// (DBSIZE, FLUSHDB, FLUSHALL) or walks them with (KEYS, SCAN; one server's cursors pass
    /// unchanged) is that server's own command and reply: it is queued in a transaction, as on
    /// Redis, where it was refused (and the whole transaction discarded).
    private func runsOnTheOneServer(_ command: RedisCommand) -> Bool {
        guard pool.servers.count == 1, !pool.isCluster, pool.old == nil else { return false }
        switch command.routing {
        case .everyServerOK, .everyServerSum: return true
        case .local: return command.isNamed("keys") || command.isNamed("scan")
        default: return false
        }
    }

    private func exec(_ session: RedisSession, _ slot: ReplySlot) {
        guard let transaction = session.transaction else {
            return slot.complete(with: "-ERR EXEC without MULTI\r\n" as StaticString)
        }
        session.transaction = nil
        let watch = session.watch
        session.watch = nil
        // Its commands were placed before a reload or a cluster map change that may move keys:
        // their positions may name another server than their keys' now, or none.
        if transaction.placementGeneration != pool.placementGeneration { transaction.aborted = true }
        let watchBroken = session.watchBroken
        if watchBroken { session.watchBroken = false }
        if transaction.aborted {
            pool.stats.transactionsAborted.add()
            if let watch { releaseWatch(watch) }
            return slot.complete(with: "-EXECABORT Transaction discarded because of previous errors.\r\n" as StaticString)
        }
        if watchBroken {
            // A WATCH that could not hold: nothing runs, as when a watched key changed.
            if let watch { releaseWatch(watch) }
            return slot.complete(with: "*-1\r\n" as StaticString)
        }
        let connection: ServerConnection
        if let watch {
            guard watch.isIntact, watch.connection.isOpen else {
                // The socket the WATCH was sent on is gone: its guarantee cannot be kept, so
                // nothing runs, answered as a watched key's change is (a null array). A client's
                // optimistic-locking loop retries on that (redis-py raises `WatchError`, as it
                // does when its own connection to Redis is lost while watching); an error
                // (`ResponseError`) ended the loop at every failover.
                releaseWatch(watch)
                return slot.complete(with: "*-1\r\n" as StaticString)
            }
            connection = watch.connection
        } else {
            if transaction.count == 0 { return slot.complete(with: "*0\r\n" as StaticString) }
            guard let server = transaction.server >= 0 ? transaction.server : firstLiveServer() else {
                return slot.failNoServer()
            }
            connection = pool.servers[server].connection(for: index)
        }
        pool.stats.transactions.add()
        if pool.isCluster {
            // Queued commands' replies are read for a slot that moved (`ClusterExec`).
            let run = ClusterExec(commands: Array(transaction.commands.readable), count: transaction.count, isWatched: watch != nil)
            slot.warmup = run
            run.send(on: connection, slot, asking: false, isFirst: true)
        } else {
            var none: ReplySplit?
            ClusterExec.write(transaction.commands.readable, count: transaction.count, on: connection, slot, asking: false, parts: &none)
        }
        // EXEC unwatches: the pinned connection goes back clean once it has answered. What
        // follows is sent once the transaction has run.
        if watch != nil {
            connection.returnWhenIdle = true
            holdUntilAnswered = true
        }
    }

    /// WATCH key…: pins a dedicated connection to the keys' server (all on one server).
    private func watch(_ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot) {
        guard session.transaction == nil else {
            return slot.complete(with: "-ERR WATCH inside MULTI is not allowed\r\n" as StaticString)
        }
        let arguments = session.arguments
        // An earlier WATCH whose socket is gone places nothing: this one starts afresh (once
        // its keys pass; a refused WATCH leaves the lost one, for EXEC to fail).
        var target = session.watch.flatMap { $0.isIntact ? $0.server : nil } ?? -1
        var crossServer = false
        var watchedSlot = -1
        for keyIndex in 1..<arguments.count {
            if pool.isCluster {
                // One WATCH's keys must share a slot there (Redis Cluster's own rule).
                let keySlot = arguments.withArgument(keyIndex, in: frame) { pool.clusterSlot(forKey: $0).slot }
                if watchedSlot < 0 { watchedSlot = keySlot } else if keySlot != watchedSlot { crossServer = true }
            }
            guard let server = arguments.withArgument(keyIndex, in: frame, { pool.serverIndex(forKey: $0) }) else {
                return slot.failNoServer()
            }
            if target < 0 { target = server } else if server != target { crossServer = true }
        }
        if crossServer {
            return slot.complete(with: "-CROSSSLOT Keys in request don't hash to the same slot\r\n" as StaticString)
        }
        if let watch = session.watch, !watch.isIntact {
            session.watch = nil
            releaseWatch(watch)
        }
        let connection: ServerConnection
        if let watch = session.watch {
            connection = watch.connection
        } else {
            guard let leased = pool.servers[target].leaseDedicated() else {
                return slot.complete(with: "-ERR all dedicated_connections to this server are in use\r\n" as StaticString)
            }
            connection = leased
        }
        pool.stats.watches.add()
        let output = connection.requestBuffer()
        let start = output.readableCount
        writeRequest(frame, arguments, into: output)
        if session.watch == nil {
            let lease = DedicatedLease(connection: connection, lease: connection.lease, generation: connection.generation)
            session.watch = lease
            // (Its bytes are kept only where a MOVED may send them elsewhere.)
            slot.warmup = FirstWatch(lease, request: pool.isCluster ? Array(output.readable[start...]) : [])
        }
        connection.enqueue(slot: slot, part: ReplyPart.whole, framing: .line)
        // What follows reaches Redis after the WATCH (a write to a watched key must fail EXEC).
        holdUntilAnswered = true
    }

    /// `EXEC` with arguments: the transaction (if any) and the WATCH end, nothing runs.
    func abortTransaction(_ session: RedisSession, _ slot: ReplySlot) {
        if session.transaction != nil { pool.stats.transactionsAborted.add() }
        session.transaction = nil
        endWatch(session)
        if session.watchBroken { session.watchBroken = false }
        slot.complete(with: "-EXECABORT Transaction discarded because of: wrong number of arguments for 'exec' command\r\n" as StaticString)
    }

    /// Ends a WATCH without EXEC (DISCARD, RESET): the connection is unwatched, then given back.
    private func endWatch(_ session: RedisSession) {
        if session.watchBroken { session.watchBroken = false }
        guard let watch = session.watch else { return }
        session.watch = nil
        releaseWatch(watch)
    }

    fileprivate func releaseWatch(_ watch: DedicatedLease) {
        guard watch.isCurrent else { return }
        let connection = watch.connection
        if watch.isIntact, connection.isOpen {
            RespEncoder.command("UNWATCH", into: connection.requestBuffer())
            connection.enqueue(slot: nil, part: 0, framing: .line)
            connection.returnWhenIdle = true
        } else {
            watch.connection.server.returnDedicated(connection, reusable: false)
        }
    }

    // MARK: Blocking commands

    /// BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BLMPOP, BZPOPMIN, BZPOPMAX, BZMPOP, XREAD/XREADGROUP
    /// with BLOCK: on a dedicated connection of the server of their keys.
    func routeBlocking(_ command: RedisCommand, _ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot) {
        let arguments = session.arguments
        let placement = placeKeys(command, frame, arguments)
        if placement.crossServer {
            return slot.complete(with: "-CROSSSLOT Keys in request don't hash to the same slot\r\n" as StaticString)
        }
        if placement.noServer { return slot.failNoServer() }
        // Arguments Redis will refuse (a bad numkeys) still go to one server, whose error the client sees.
        let target = placement.server < 0 || !placement.valid ? firstLiveServer() ?? -1 : placement.server
        guard target >= 0 else { return slot.failNoServer() }
        pool.stats.blockingRequests.add()
        let request = requestBytes(frame, arguments)
        let blockFor = blockingTimeout(command, frame, arguments)
        let deadline = pool.timeoutSeconds.flatMap { timeout in blockFor.map { worker.now + timeout + $0 } } ?? .infinity
        let waiter = DedicatedWaiter(slot: slot, request: request, blockFor: blockFor, deadline: deadline, now: worker.now)
        // As Redis runs a blocked client's next command only once it is unblocked.
        holdUntilAnswered = true
        if pool.isCluster { slot.warmup = ClusterBlocking(waiter) }
        runBlocking(waiter, on: pool.servers[target])
    }

    /// Sends a blocking request on a dedicated connection, or queues it until one is free.
    func runBlocking(_ waiter: DedicatedWaiter, on server: ServerRuntime) {
        // A client that has gone sends no blocking command (see `endBlockedCommands`).
        guard !isClosed else {
            return waiter.slot.fail(part: ReplyPart.whole, reason: "client closed the connection")
        }
        guard let connection = server.leaseDedicated(forBlocking: true) else {
            madeRedisExtras.waitedForDedicated = true
            server.waitForDedicated(waiter)
            return
        }
        guard let session = redis else { return }
        session.blocked.removeAll { !$0.isCurrent }
        session.blocked.append(DedicatedLease(connection: connection, lease: connection.lease, generation: connection.generation))
        if waiter.asking {
            RespEncoder.command("ASKING", into: connection.requestBuffer())
            connection.enqueue(slot: nil, part: 0, framing: .line)
        }
        waiter.request.withUnsafeBytes { connection.requestBuffer().append($0) }
        connection.enqueue(slot: waiter.slot, part: ReplyPart.whole, framing: .line, blockFor: waiter.blockFor,
                           deadline: waiter.deadline.isFinite ? waiter.deadline : nil)
        connection.returnWhenIdle = true
    }

    /// Seconds the command may block (nil: forever, so no proxy timeout applies).
    private func blockingTimeout(_ command: RedisCommand, _ frame: UnsafeRawBufferPointer, _ arguments: RespArguments) -> Double? {
        let count = arguments.count
        var seconds: Double?
        if command.timeoutAt == 0 {
            // XREAD/XREADGROUP … BLOCK <milliseconds> …
            let at = RedisKeyPositions.streamReadOptions(arguments, in: frame).blockAt
            if at > 0 { seconds = Double(arguments.argumentString(at, in: frame)).map { $0 / 1000 } }
        } else {
            let at = command.timeoutAt < 0 ? count + command.timeoutAt : command.timeoutAt
            if at > 0, at < count { seconds = Double(arguments.argumentString(at, in: frame)) }
        }
        // A timeout Redis will refuse gets its error at once: the pool's timeout is enough.
        guard let seconds, seconds.isFinite, seconds >= 0 else { return 0 }
        return seconds == 0 ? nil : seconds
    }

    /// The client has left (or closed its side): a blocked command's connection is closed, so
    /// Redis unblocks it without popping anything, and the command fails here.
    ///
    /// Its commands still waiting for a dedicated connection are taken out first, so that a
    /// connection given back below does not run one (which Redis would then answer for a
    /// client that is gone, popping an item nobody receives); they fail last.
    ///
    /// `deliverArrived` (the client ended its input; it may still read): a reply the server
    /// has already sent on a blocked command's connection is delivered first, as Redis
    /// delivers what it wrote before it read the end. A client closing (`endRedisSession`)
    /// reads nothing: it may be closing from inside that connection's delivery.
    func endBlockedCommands(deliverArrived: Bool = false) {
        // A client that never blocked makes no rare state here (`blocked` is modified in place).
        guard let session = redis, let extras = redisExtras, !extras.blocked.isEmpty || extras.waitedForDedicated else { return }
        var unsent: [ReplySlot] = []
        if extras.waitedForDedicated {
            extras.waitedForDedicated = false
            for server in pool.servers { server.takeWaiting(of: self, into: &unsent) }
        }
        // No reply, as Redis writes none for a blocked client that leaves (a client that only
        // closed its writing side reads on).
        for lease in session.blocked where lease.isCurrent {
            if deliverArrived {
                lease.connection.readWhatHasArrived()
                // Answered (and given back), or closed by what it delivered.
                guard lease.isCurrent else { continue }
            }
            lease.connection.abandonSilently()
            lease.connection.server.returnDedicated(lease.connection, reusable: false)
        }
        session.blocked.removeAll()
        for slot in unsent {
            slot.isSilent = true
            slot.fail(part: ReplyPart.whole, reason: "client closed the connection")
        }
    }

    /// The client is leaving: blocked commands end as above, a WATCH's connection is closed.
    func endRedisSession() {
        guard let session = redis else { return }
        endBlockedCommands()
        if let watch = session.watch, watch.isCurrent {
            watch.connection.server.returnDedicated(watch.connection, reusable: false)
        }
        session.watch = nil
        session.transaction = nil
        endSubscriptions()
    }
}

/// A WATCH that began its client's lease of a dedicated connection, as a request in phases.
/// Redis watches nothing when WATCH fails, and clients do not UNWATCH after a failed WATCH
/// (redis-py does not): Redis's error reply ends the lease here too, where the client stayed pinned
/// to the connection (on a cluster pool whose slot had moved, every later WATCH of the key
/// answered CROSSSLOT and every MULTI … EXEC EXECABORT, until the client sent UNWATCH). A
/// `-MOVED` is followed, since nothing was watched: the slot is learned, a dedicated connection
/// to the node named is leased and the WATCH is sent there. Confined to the client's worker.
final class FirstWatch: PhasedRead {
    private var lease: DedicatedLease
    /// The WATCH as sent.
    private let request: [UInt8]
    private var isError = false
    private var redirect: ClusterRedirect?
    private var redirects: UInt8 = 0
    /// Kept after its node failed before it was sent: when the wait ends (`keepUnsent`).
    private var keptUntil: Double = 0
    /// The +OK of a WATCH answered -ASK is on its way, after a delay (`advance`).
    private var isAnsweredLater = false

    /// How long the +OK of a WATCH answered -ASK waits when `asks` WATCHes before it in a row
    /// were answered -ASK too (at least one): 25 ms, doubling, 200 ms at most.
    static func askDelay(afterAsks asks: Int) -> Double {
        0.025 * Double(1 << min(max(asks, 1) - 1, 3))
    }

    init(_ lease: DedicatedLease, request: [UInt8]) {
        self.lease = lease
        self.request = request
    }

    override func deliver(_ slot: ReplySlot, part: Int32, reply: UnsafeRawBufferPointer, isError: Bool) {
        slot.holdReply(reply, isError: isError)
        self.isError = isError
        redirect = isError ? ClusterRedirect.parse(reply) : nil
    }

    /// The node's connection failed before the WATCH was sent (a master failing over): nothing
    /// is watched yet, so it waits for the node, or a map without it, and goes there on a new
    /// dedicated connection (another master's -MOVED leads it on), as a plain request does.
    override func keepUnsent(_ slot: ReplySlot, part: Int32, node: String, reason: String) -> Bool {
        guard part == ReplyPart.whole, let client = slot.client as? ClientConnection, !client.isClosed, let session = client.redis,
              let watch = session.watch, watch.connection === lease.connection, watch.lease == lease.lease else { return false }
        let pool = client.pool
        // The first refusal sets how long it may wait in all.
        if keptUntil == 0 { keptUntil = client.worker.now + (pool.timeoutSeconds ?? 2) }
        pool.retryUnsent(node: node, clientIndex: client.index, deadline: keptUntil,
                         send: { [self] server in
                             guard !client.isClosed, let current = session.watch, current.connection === lease.connection else {
                                 return slot.fail(part: ReplyPart.whole, reason: reason, serverFailure: true)
                             }
                             // The failed connection's lease goes back first (it holds nothing).
                             session.watch = nil
                             client.releaseWatch(current)
                             guard let connection = pool.servers[server].leaseDedicated() else {
                                 session.watch = current
                                 return slot.fail(part: ReplyPart.whole, reason: reason, serverFailure: true)
                             }
                             send(slot, session, on: connection)
                         },
                         giveUp: { slot.fail(part: ReplyPart.whole, reason: reason, serverFailure: true) })
        return true
    }

    /// Tern's own failure (timeout, connection lost): the lease stays, so that the client's
    /// EXEC answers a null array (nothing ran, as for a watched key changed) instead of running
    /// unwatched.
    override func failed(_ slot: ReplySlot, part: Int32, reason: String, serverFailure: Bool) {
        slot.holdFailure(reason, serverFailure: serverFailure)
        isError = false
        redirect = nil
    }

    override func advance(_ slot: ReplySlot) -> Bool {
        if isAnsweredLater {
            // The +OK of a WATCH answered -ASK, delivered after its delay (below).
            isAnsweredLater = false
            return false
        }
        guard let client = slot.client as? ClientConnection, let session = client.redis else { return false }
        if !isError {
            // A node holds the WATCH (or Tern failed it: a timeout, a lost connection): the
            // next -ASK is answered at once again.
            session.endWatchAsks()
            return false
        }
        guard let watch = session.watch, watch.connection === lease.connection, watch.lease == lease.lease else { return false }
        session.watch = nil
        client.releaseWatch(watch)
        let pool = client.pool
        guard let redirect, pool.isCluster, redirects < ClusterState.maxRedirects else { return false }
        redirects += 1
        if redirect.isAsk {
            // The slot is migrating and the keys are not on this node (or not all): no node
            // can watch them all until the move ends. Answered as a WATCH whose key then
            // changes: EXEC answers a null array, and the client's retry loop tries again
            // (redis-py's WatchError); the -ASK itself is an error clients do not retry.
            // The null array comes back at once, so such a loop would retry thousands of
            // times a second for the whole migration: the +OK of the second -ASK in a row
            // waits 25 ms, and each later one twice as long as the one before, 200 ms at most,
            // within the pool's timeout (a run ends a second after its last -ASK).
            pool.plan.shared.cluster.askRedirects.add(1, ordering: .relaxed)
            session.watchBroken = true
            let asks = session.noteWatchAsk(now: client.worker.now)
            guard asks > 0 else {
                slot.holdReply(UnsafeRawBufferPointer(start: nil, count: 0), isError: false)
                slot.data.append("+OK\r\n" as StaticString)
                return false
            }
            slot.data.removeAll()
            slot.hasError = false
            var split = ReplySplit(nextPhaseOf: slot)
            _ = split.server(ReplyPart.whole)
            let now = client.worker.now
            let delay = Self.askDelay(afterAsks: asks)
            isAnsweredLater = true
            pool.retryLater(at: now + delay, deadline: now + (pool.timeoutSeconds.map { min($0, delay) } ?? delay)) { _ in
                ("+OK\r\n" as StaticString).withUTF8Buffer { _ = slot.deliver(part: ReplyPart.whole, reply: UnsafeRawBufferPointer($0), isError: false) }
            }
            return split.closePhase()
        }
        pool.plan.shared.cluster.movedRedirects.add(1, ordering: .relaxed)
        pool.plan.shared.cluster.requestRefresh()
        guard let target = pool.serverIndex(named: redirect.target) else {
            // A node the map lacks (a replica promoted since it was made): the WATCH waits for
            // a map that knows it, at most the pool's timeout (2 s without one).
            let error = Array(slot.data.readable)
            slot.data.removeAll()
            slot.hasError = false
            var split = ReplySplit(nextPhaseOf: slot)
            _ = split.server(ReplyPart.whole)
            pool.awaitMap(for: redirect, deadline: pool.timeoutSeconds.map { client.worker.now + $0 } ?? .infinity) { [self] server in
                guard let server, !client.isClosed, session.watch == nil, let connection = pool.servers[server].leaseDedicated() else {
                    pool.plan.shared.cluster.redirectsGivenUp.add(1, ordering: .relaxed)
                    redirects = ClusterState.maxRedirects
                    return error.withUnsafeBytes { _ = slot.deliver(part: ReplyPart.whole, reply: $0, isError: true) }
                }
                send(slot, session, on: connection)
            }
            return split.closePhase()
        }
        pool.learnSlot(redirect.slot, server: target)
        // No dedicated connection free: the MOVED is the answer.
        guard let connection = pool.servers[target].leaseDedicated() else { return false }
        slot.data.removeAll()
        slot.hasError = false
        var split = ReplySplit(nextPhaseOf: slot)
        _ = split.server(ReplyPart.whole)
        send(slot, session, on: connection)
        return split.closePhase()
    }

    /// The WATCH again, on `connection` (leased), answering the slot's open phase.
    private func send(_ slot: ReplySlot, _ session: RedisSession, on connection: ServerConnection) {
        // (The buffer first: it opens the socket, and the lease holds on that socket.)
        let output = connection.requestBuffer()
        request.withUnsafeBytes { output.append($0) }
        lease = DedicatedLease(connection: connection, lease: connection.lease, generation: connection.generation)
        session.watch = lease
        connection.enqueue(slot: slot, part: ReplyPart.whole, framing: .line)
    }
}

/// EXEC of a transaction on a cluster pool, as a request in phases: MULTI, the queued commands
/// and EXEC leave in one piece, and the queued commands' replies are read. When the slot moved
/// since Tern's map was made, the node answers them `-MOVED` and EXEC `-EXECABORT` (nothing
/// ran): the slot is learned and the whole transaction is sent again to the node named, as a
/// cluster client does. A watched transaction cannot go elsewhere (its WATCH holds on this
/// node): it answers a null array, as a WATCH whose key changed does, which clients retry.
/// A `-ASK` (the slot is migrating) for every queued command is followed: none of the keys is
/// on the source, so the whole transaction goes to the target after `ASKING`. A `-ASK` for
/// some only is not: keys still on the source would be missing on the target; the client gets
/// EXECABORT. A node the map lacks is waited for (`awaitMap`). Confined to the client's worker.
final class ClusterExec: PhasedRead {
    private let commands: [UInt8]
    private let count: Int
    private let isWatched: Bool
    private var redirect: ClusterRedirect?
    /// Queued commands answered `-ASK` (their keys are not on the node).
    private var asks = 0
    private var isAborted = false
    private var redirects: UInt8 = 0
    /// The node a new map brought for the redirect waited on (`awaitMap`).
    private var mapTarget: Int?
    /// Kept after its node failed before the EXEC was sent: when the wait ends (`keepUnsent`).
    private var keptUntil: Double = 0
    /// The node the transaction went to last (by name: a new map renumbers the servers), and
    /// whether after ASKING.
    private var sentTo = ""
    private var sentAsking = false
    /// The EXEC was answered -TRYAGAIN (after ASKING, on the importing node: some of its keys
    /// have not arrived yet), the retries so far, and whether one is due now.
    private var isTryAgain = false
    private var tryAgains = 0
    private var retryDue = false
    /// Parts: the EXEC's reply is `whole`; MULTI's and the queued commands' are `queued`.
    private static let queued: Int32 = 1

    /// A queued command's `-MOVED` is read here, never sent again alone (outside MULTI).
    override var partsFollowRedirects: Bool { false }

    /// The node's connection failed before the EXEC was sent (a master failing over): nothing
    /// ran (a MULTI without its EXEC runs nothing), so the transaction waits for the node, or a
    /// map without it, and is sent whole again, as a plain request does (`keepUnsentRequest`);
    /// MULTI's and the commands' parts fail as before (their replies are not the answer).
    /// A watched one cannot: its WATCH was on that connection.
    override func keepUnsent(_ slot: ReplySlot, part: Int32, node: String, reason: String) -> Bool {
        guard part == ReplyPart.whole, !isWatched, let client = slot.client as? ClientConnection, !client.isClosed else { return false }
        let pool = client.pool
        client.holdLaterRequests()
        // The first refusal sets how long it may wait in all.
        if keptUntil == 0 { keptUntil = client.worker.now + (pool.timeoutSeconds ?? 2) }
        pool.retryUnsent(node: node, clientIndex: client.index, deadline: keptUntil,
                         send: { [self] server in
                             slot.data.removeAll()
                             slot.hasError = false
                             _ = send(on: pool.servers[server].connection(for: client.index), slot, asking: false, isFirst: false)
                         },
                         giveUp: { slot.fail(part: ReplyPart.whole, reason: reason, serverFailure: true) })
        return true
    }

    init(commands: [UInt8], count: Int, isWatched: Bool) {
        self.commands = commands
        self.count = count
        self.isWatched = isWatched
    }

    /// MULTI, `count` commands and EXEC in one piece of `connection`'s output (nothing of
    /// another client's can come between), with `ASKING` first when `asking`. The EXEC's reply
    /// answers `slot`; with `parts`, MULTI's and the commands' replies are parts of `slot` too
    /// (read by its phases), else they are dropped.
    static func write(_ commands: UnsafeRawBufferPointer, count: Int, on connection: ServerConnection, _ slot: ReplySlot,
                      asking: Bool, parts: inout ReplySplit?) {
        let output = connection.requestBuffer()
        if asking {
            RespEncoder.command("ASKING", into: output)
            connection.enqueue(slot: nil, part: 0, framing: .line)
        }
        RespEncoder.command("MULTI", into: output)
        if parts != nil {
            connection.enqueue(slot: slot, part: parts!.server(queued), framing: .line)
        } else {
            connection.enqueue(slot: nil, part: 0, framing: .line)
        }
        if count > 0 {
            output.append(commands)
            for _ in 0..<count {
                if parts != nil {
                    connection.enqueue(slot: slot, part: parts!.server(queued), framing: .line)
                } else {
                    connection.enqueue(slot: nil, part: 0, framing: .line)
                }
            }
        }
        RespEncoder.command("EXEC", into: output)
        connection.enqueue(slot: slot, part: parts != nil ? parts!.server(ReplyPart.whole) : ReplyPart.whole, framing: .line)
    }

    /// Sends the transaction on `connection`, its replies read by this object's phases: the
    /// first time as the slot's request, later as a new phase (true when it is under way).
    @discardableResult
    func send(on connection: ServerConnection, _ slot: ReplySlot, asking: Bool, isFirst: Bool) -> Bool {
        redirect = nil
        asks = 0
        isAborted = false
        isTryAgain = false
        sentTo = connection.server.name
        sentAsking = asking
        var parts: ReplySplit? = isFirst ? ReplySplit(slot, mergedBy: .single) : ReplySplit(nextPhaseOf: slot)
        commands.withUnsafeBytes { Self.write($0, count: count, on: connection, slot, asking: asking, parts: &parts) }
        if isFirst {
            parts!.close()
            return true
        }
        return parts!.closePhase()
    }

    override func deliver(_ slot: ReplySlot, part: Int32, reply: UnsafeRawBufferPointer, isError: Bool) {
        if part == Self.queued {
            if isError, let parsed = ClusterRedirect.parse(reply) {
                if redirect == nil { redirect = parsed }
                if parsed.isAsk { asks += 1 }
            }
            return
        }
        slot.holdReply(reply, isError: isError)
        isAborted = isError && reply.starts(with: "-EXECABORT".utf8)
        isTryAgain = isError && reply.starts(with: "-TRYAGAIN".utf8)
    }

    override func failed(_ slot: ReplySlot, part: Int32, reason: String, serverFailure: Bool) {
        guard part != Self.queued else { return }
        slot.holdFailure(reason, serverFailure: serverFailure)
        isAborted = false
    }

    override func advance(_ slot: ReplySlot) -> Bool {
        guard let client = slot.client as? ClientConnection else { return false }
        let pool = client.pool
        if retryDue {
            retryDue = false
            // (A node a new map no longer has: the -TRYAGAIN held is the answer.)
            if let server = pool.serverIndex(named: sentTo) {
                slot.data.removeAll()
                slot.hasError = false
                return send(on: pool.servers[server].connection(for: client.index), slot, asking: sentAsking, isFirst: false)
            }
            return false
        }
        // (A watched transaction is not sent again: its WATCH holds on its own connection.)
        if isTryAgain, !isWatched, !sentTo.isEmpty, tryAgains < Int(ClusterState.maxTryAgain) {
            // Nothing ran; the keys that have not arrived will (or the migration ends, and
            // the node answers -MOVED): the same again after 25 ms, doubling, as cluster
            // clients retry, within the pool's timeout.
            tryAgains += 1
            pool.plan.shared.cluster.tryAgainRetries.add(1, ordering: .relaxed)
            let held = Array(slot.data.readable)
            var split = ReplySplit(nextPhaseOf: slot)
            _ = split.server(ReplyPart.whole)
            let now = client.worker.now
            pool.retryLater(at: now + 0.025 * Double(1 << (tryAgains - 1)), deadline: pool.timeoutSeconds.map { now + $0 } ?? .infinity) { [self] due in
                if due != nil, !client.isClosed { retryDue = true } else { tryAgains = Int(ClusterState.maxTryAgain) }
                held.withUnsafeBytes { _ = slot.deliver(part: ReplyPart.whole, reply: $0, isError: true) }
            }
            return split.closePhase()
        }
        guard isAborted else { return false }
        guard let redirect else { return countedAsAborted(pool) }
        let resumed = mapTarget
        mapTarget = nil
        let target = resumed ?? pool.serverIndex(named: redirect.target)
        if resumed == nil, !redirect.isAsk {
            pool.plan.shared.cluster.requestRefresh()
            if let target { pool.learnSlot(redirect.slot, server: target) }
        }
        if isWatched {
            // The watched keys' slot moved: the WATCH cannot hold; nothing ran.
            slot.data.removeAll()
            slot.data.append("*-1\r\n" as StaticString)
            slot.hasError = false
            return false
        }
        // A -ASK for some commands only: some keys are still on the migrating node, and the
        // others are not (on the importing node, or nowhere yet); no node can run them all.
        // Every command answered -ASK: none of its keys is on the migrating node, so the
        // importing node runs it whole (after ASKING, which holds through MULTI … EXEC).
        guard redirects < ClusterState.maxRedirects, !redirect.isAsk || asks == count else { return countedAsAborted(pool) }
        guard let target else {
            // A node the map lacks (a replica promoted since it was made): the transaction
            // waits for a map that knows it; the EXECABORT held is delivered again then, to
            // come back here.
            let held = Array(slot.data.readable)
            var split = ReplySplit(nextPhaseOf: slot)
            _ = split.server(ReplyPart.whole)
            pool.awaitMap(for: redirect, deadline: pool.timeoutSeconds.map { client.worker.now + $0 } ?? .infinity) { [self] server in
                if let server, !client.isClosed {
                    mapTarget = server
                } else {
                    pool.plan.shared.cluster.redirectsGivenUp.add(1, ordering: .relaxed)
                    redirects = ClusterState.maxRedirects
                }
                held.withUnsafeBytes { _ = slot.deliver(part: ReplyPart.whole, reply: $0, isError: true) }
            }
            return split.closePhase()
        }
        if redirect.isAsk {
            pool.plan.shared.cluster.askRedirects.add(1, ordering: .relaxed)
        } else {
            pool.plan.shared.cluster.movedRedirects.add(1, ordering: .relaxed)
        }
        redirects += 1
        slot.data.removeAll()
        slot.hasError = false
        return send(on: pool.servers[target].connection(for: client.index), slot, asking: redirect.isAsk, isFirst: false)
    }

    /// The node's EXECABORT is the answer: counted as one (`transactions_execabort`) instead of
    /// the EXEC counted when the transaction was sent.
    private func countedAsAborted(_ pool: PoolRuntime) -> Bool {
        pool.stats.transactions.add(-1)
        pool.stats.transactionsAborted.add()
        return false
    }
}

/// A blocking command on a cluster pool, as a request in phases. A node answers it `-MOVED`
/// when the slot moved before Tern's map did, `-ASK` when the slot is migrating and the key is
/// not on it (an empty list), and `-MOVED` when the slot moves while the command is blocked:
/// each time nothing was popped, and a client that is not cluster-aware cannot act on the
/// error, so the command is sent again on a dedicated connection to the node named (after
/// `ASKING` for an ASK), as a cluster client does, at most 5 times; its timeout starts again
/// there, as for a cluster client. Confined to the client's worker.
final class ClusterBlocking: PhasedRead {
    /// The command as sent, and the seconds it may block (the waiter's, without its slot: the
    /// slot holds this object).
    private let request: [UInt8]
    private let blockFor: Double?
    private var redirect: ClusterRedirect?
    private var redirects: UInt8 = 0
    /// Kept after its node failed before it was sent: when the wait ends (`keepUnsent`).
    private var keptUntil: Double = 0

    init(_ waiter: DedicatedWaiter) {
        request = waiter.request
        blockFor = waiter.blockFor
    }

    override func deliver(_ slot: ReplySlot, part: Int32, reply: UnsafeRawBufferPointer, isError: Bool) {
        slot.holdReply(reply, isError: isError)
        redirect = isError ? ClusterRedirect.parse(reply) : nil
        isUnblocked = isError && redirect == nil && reply.starts(with: Self.demoted.utf8)
    }

    override func failed(_ slot: ReplySlot, part: Int32, reason: String, serverFailure: Bool) {
        slot.holdFailure(reason, serverFailure: serverFailure)
        redirect = nil
        isUnblocked = false
    }

    /// What a master that becomes a replica (a graceful `CLUSTER FAILOVER`) answers the commands
    /// blocked on it. Nothing was popped: the command goes again to the slot's master, as after
    /// a -MOVED (the node, a replica now, answers -MOVED if Tern's map is older than the
    /// failover). The client got the error before (cluster sweep 31).
    private static let demoted = "-UNBLOCKED force unblock from blocking operation, instance state changed"
    private var isUnblocked = false

    /// The hash slot of the command's keys (a blocking command's keys share one).
    private func keySlot() -> Int? {
        let arguments = RespArguments()
        return request.withUnsafeBytes { frame -> Int? in
            guard case .request = RespRequestParser.parse(frame, limits: RespLimits(), into: arguments), arguments.count > 1,
                  let command = arguments.withArgument(0, in: frame, { RedisCommandTable.lookup($0) }) else { return nil }
            var first: Int?
            RedisKeyPositions.forEachKey(command, arguments, in: frame) { index in
                if first == nil { first = index }
            }
            return first.map { index in arguments.withArgument(index, in: frame) { hashSlot($0) } }
        }
    }

    /// The node's dedicated connection failed before the command was sent (a master failing
    /// over): it waits for the node, or a map without it, and is sent there (another master's
    /// -MOVED leads it on), as a plain request does (`keepUnsentRequest`). Nothing was popped.
    override func keepUnsent(_ slot: ReplySlot, part: Int32, node: String, reason: String) -> Bool {
        guard part == ReplyPart.whole, let client = slot.client as? ClientConnection, !client.isClosed, !client.closeWhenDrained else { return false }
        let pool = client.pool
        // The first refusal sets how long it may wait in all (its blocking time comes after).
        if keptUntil == 0 { keptUntil = client.worker.now + (pool.timeoutSeconds ?? 2) }
        pool.retryUnsent(node: node, clientIndex: client.index, deadline: keptUntil,
                         send: { [self] server in
                             guard !client.isClosed, !client.closeWhenDrained else {
                                 return slot.fail(part: ReplyPart.whole, reason: reason, serverFailure: true)
                             }
                             send(slot, client, to: server, asking: false)
                         },
                         giveUp: { slot.fail(part: ReplyPart.whole, reason: reason, serverFailure: true) })
        return true
    }

    override func advance(_ slot: ReplySlot) -> Bool {
        if isUnblocked { return sendAgainAfterDemotion(slot) }
        // A client whose input ended (`closeWhenDrained`; `endBlockedCommands` may be
        // delivering this reply) gets the error: nothing is blocked again for it.
        guard let redirect, redirects < ClusterState.maxRedirects, let client = slot.client as? ClientConnection,
              !client.isClosed, !client.closeWhenDrained else { return false }
        let pool = client.pool
        guard pool.isCluster else { return false }
        redirects += 1
        self.redirect = nil
        if redirect.isAsk {
            pool.plan.shared.cluster.askRedirects.add(1, ordering: .relaxed)
        } else {
            pool.plan.shared.cluster.movedRedirects.add(1, ordering: .relaxed)
            pool.plan.shared.cluster.requestRefresh()
        }
        let target = pool.serverIndex(named: redirect.target)
        if let target, !redirect.isAsk { pool.learnSlot(redirect.slot, server: target) }
        // The node's error, should nothing else answer.
        let error = target == nil ? Array(slot.data.readable) : []
        slot.data.removeAll()
        slot.hasError = false
        var split = ReplySplit(nextPhaseOf: slot)
        _ = split.server(ReplyPart.whole)
        if let target {
            send(slot, client, to: target, asking: redirect.isAsk)
        } else {
            // A node the map lacks (a replica promoted since the map was made; its old master
            // answers -MOVED): the command waits for a map that knows it. Nothing was popped.
            pool.awaitMap(for: redirect, deadline: blockFor.map { client.worker.now + (pool.timeoutSeconds ?? 2) + $0 } ?? .infinity) { [self] server in
                guard let server, !client.isClosed, !client.closeWhenDrained else {
                    pool.plan.shared.cluster.redirectsGivenUp.add(1, ordering: .relaxed)
                    redirects = ClusterState.maxRedirects
                    return error.withUnsafeBytes { _ = slot.deliver(part: ReplyPart.whole, reply: $0, isError: true) }
                }
                send(slot, client, to: server, asking: redirect.isAsk)
            }
        }
        return split.closePhase()
    }

    /// After `-UNBLOCKED` from a master turned replica: the command again, to the slot's master
    /// in the map (a new map is asked for), within the redirects' budget.
    private func sendAgainAfterDemotion(_ slot: ReplySlot) -> Bool {
        isUnblocked = false
        guard redirects < ClusterState.maxRedirects, let client = slot.client as? ClientConnection, !client.isClosed, !client.closeWhenDrained,
              client.pool.isCluster, let keySlot = keySlot(), let target = client.pool.server(forSlot: keySlot) else { return false }
        redirects += 1
        client.pool.plan.shared.cluster.requestRefresh()
        slot.data.removeAll()
        slot.hasError = false
        var split = ReplySplit(nextPhaseOf: slot)
        _ = split.server(ReplyPart.whole)
        send(slot, client, to: target, asking: false)
        return split.closePhase()
    }

    /// The command again, on a dedicated connection to `server`: its timeout starts again there.
    private func send(_ slot: ReplySlot, _ client: ClientConnection, to server: Int, asking: Bool) {
        let pool = client.pool
        let now = client.worker.now
        var next = DedicatedWaiter(slot: slot, request: request, blockFor: blockFor,
                                   deadline: pool.timeoutSeconds.flatMap { timeout in blockFor.map { now + timeout + $0 } } ?? .infinity, now: now)
        next.asking = asking
        client.runBlocking(next, on: pool.servers[server])
    }
}
