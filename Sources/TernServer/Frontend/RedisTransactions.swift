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
///     WATCH ──► leases a dedicated connection to the keys' server until EXEC, DISCARD,
///               UNWATCH, RESET or disconnect; it goes back clean (EXEC and UNWATCH unwatch)
///               or is closed, never handed on dirty
///     BLPOP ──► runs on a dedicated connection (at most `dedicated_connections` per server
///               per worker; more wait for one), with the pool timeout extended by the
///               command's own; a client that leaves while blocked has that connection closed,
///               so Redis unblocks it without popping anything
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
            guard let watch = session.watch else { return slot.complete(with: "+OK\r\n" as StaticString) }
            session.watch = nil
            guard watch.isIntact else {
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
            slot.complete(with: "+RESET\r\n" as StaticString)
        }
    }

    /// Between MULTI and EXEC: check the command and keep it, or refuse it and mark the
    /// transaction for EXECABORT.
    func queueInTransaction(_ command: RedisCommand, _ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot) {
        guard let transaction = session.transaction else { return }
        let arguments = session.arguments
        guard command.isTransactional else {
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
        if transaction.aborted {
            pool.stats.transactionsAborted.add()
            if let watch { releaseWatch(watch) }
            return slot.complete(with: "-EXECABORT Transaction discarded because of previous errors.\r\n" as StaticString)
        }
        let connection: ServerConnection
        if let watch {
            guard watch.isIntact, watch.connection.isOpen else {
                // The socket the WATCH was sent on is gone: its guarantee cannot be kept.
                releaseWatch(watch)
                return slot.complete(with: "-ERR the connection that held WATCH was lost; nothing was executed\r\n" as StaticString)
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
        // One piece of the connection's output: nothing of another client's can come between.
        let output = connection.requestBuffer()
        RespEncoder.command("MULTI", into: output)
        connection.enqueue(slot: nil, part: 0, framing: .line)
        if transaction.count > 0 {
            output.append(transaction.commands.readable)
            for _ in 0..<transaction.count { connection.enqueue(slot: nil, part: 0, framing: .line) }
        }
        RespEncoder.command("EXEC", into: output)
        connection.enqueue(slot: slot, part: ReplyPart.whole, framing: .line)
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
        writeRequest(frame, arguments, into: connection.requestBuffer())
        connection.enqueue(slot: slot, part: ReplyPart.whole, framing: .line)
        // What follows reaches Redis after the WATCH (a write to a watched key must fail EXEC).
        holdUntilAnswered = true
        if session.watch == nil {
            session.watch = DedicatedLease(connection: connection, lease: connection.lease, generation: connection.generation)
        }
    }

    /// Ends a WATCH without EXEC (DISCARD, RESET): the connection is unwatched, then given back.
    private func endWatch(_ session: RedisSession) {
        guard let watch = session.watch else { return }
        session.watch = nil
        releaseWatch(watch)
    }

    private func releaseWatch(_ watch: DedicatedLease) {
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
        let waiter = DedicatedWaiter(slot: slot, request: request, blockFor: blockFor, deadline: deadline)
        // As Redis runs a blocked client's next command only once it is unblocked.
        holdUntilAnswered = true
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
            for index in 1..<(count - 1) where arguments.argument(index, in: frame, equals: "block") {
                seconds = Double(arguments.argumentString(index + 1, in: frame)).map { $0 / 1000 }
                break
            }
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
