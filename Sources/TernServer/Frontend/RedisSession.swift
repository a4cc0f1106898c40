#if canImport(Glibc)
import Glibc
#endif
import TernCore

/// A Redis client's per-connection state, seen through its connection: a two-word view made
/// for each read (`ClientConnection.process`) and by `ClientConnection.redis`, passed down the
/// request path and never stored, so a Redis connection carries no session object of its own
/// (the object it replaced was 128 bytes, a 144-byte chunk, per connection; issue #24). What
/// each request reads lives in the connection itself: the argument list is the worker's,
/// `isAuthenticated` a flag in the connection's padding, the user in its rare state (shared
/// with memcached's authentication, made on login). Its names are an object shared by the
/// worker's clients named alike (`SharedRedisNames`); a transaction, WATCH, blocked commands
/// and subscriptions are made the first time a client starts any of them
/// (`RedisSessionExtras`, in the rare state), and a request of a client that started none
/// finds none.
struct RedisSession {
    /// The connection whose request is being handled. A strong reference, so that everything
    /// read through it is borrowed for the call (an `unowned(unsafe)` one was retained at each
    /// use, four times per request); made once per read and passed down the request path as a
    /// borrowed argument.
    let client: ClientConnection

    /// The current request's arguments: the worker's list (`FrontendLoop.redisArguments`),
    /// which every Redis client of the worker fills in turn. Stored, so that it is borrowed
    /// for each use (read through the client and the worker, it was retained in each function
    /// that took it).
    let arguments: RespArguments

    var isAuthenticated: Bool {
        get { client.redisAuthenticated }
        nonmutating set { client.redisAuthenticated = newValue }
    }

    private var hasExtras: Bool { client.redisExtras != nil }

    /// CLIENT SETNAME, and SETINFO's LIB-NAME and LIB-VER: each change takes the worker's
    /// object for the new three names (`FrontendLoop.redisNames`).
    var name: String? {
        get { client.redisNames?.names.name }
        nonmutating set { if newValue != name { rename { $0.name = newValue } } }
    }
    var libraryName: String? {
        get { client.redisNames?.names.libraryName }
        nonmutating set { if newValue != libraryName { rename { $0.libraryName = newValue } } }
    }
    var libraryVersion: String? {
        get { client.redisNames?.names.libraryVersion }
        nonmutating set { if newValue != libraryVersion { rename { $0.libraryVersion = newValue } } }
    }
    private func rename(_ change: (inout RedisNames) -> Void) {
        var names = client.redisNames?.names ?? RedisNames()
        change(&names)
        client.redisNames = client.worker.redisNames(names)
    }
    /// The authenticated user whose rules apply (nil: none, or a pool without users).
    var user: RedisUser? {
        get { client.authenticatedUser }
        nonmutating set { client.authenticatedUser = newValue }
    }
    /// `PoolRuntime.usersGeneration` when `user` was set.
    var usersGeneration: Int {
        get { client.usersGeneration }
        nonmutating set { client.usersGeneration = newValue }
    }
    /// Failed authentications in a row; at `maxAuthFailures` the client is closed.
    var authFailures: Int {
        get { client.authFailures }
        nonmutating set { client.authFailures = newValue }
    }
    /// Between MULTI and EXEC/DISCARD.
    var transaction: RedisTransaction? {
        get { client.redisExtras?.transaction }
        nonmutating set { if newValue != nil || hasExtras { client.madeRedisExtras.transaction = newValue } }
    }
    /// The dedicated connection a WATCH pinned, until EXEC, DISCARD, UNWATCH, RESET or disconnect.
    var watch: DedicatedLease? {
        get { client.redisExtras?.watch }
        nonmutating set { if newValue != nil || hasExtras { client.madeRedisExtras.watch = newValue } }
    }
    /// A WATCH answered but not held (`RedisSessionExtras.watchBroken`).
    var watchBroken: Bool {
        get { client.redisExtras?.watchBroken ?? false }
        nonmutating set { if newValue || hasExtras { client.madeRedisExtras.watchBroken = newValue } }
    }
    /// A first WATCH answered -ASK at `now`: how many came before it in the same run
    /// (`RedisSessionExtras.watchAsks`), counting this one for the next.
    func noteWatchAsk(now: Double) -> Int {
        let extras = client.madeRedisExtras
        // A run ends a second after its last -ASK (the longest delay is 200 ms).
        let earlier = now - extras.watchAskAt > 1 ? 0 : Int(extras.watchAsks)
        extras.watchAsks = UInt8(min(earlier + 1, Int(UInt8.max)))
        extras.watchAskAt = now
        return earlier
    }

    /// A node held a first WATCH, or Tern failed it: the next -ASK starts a new run.
    func endWatchAsks() {
        if let extras = client.redisExtras, extras.watchAsks != 0 { extras.watchAsks = 0 }
    }
    /// Blocking commands sent on dedicated connections (stale entries are pruned). Modified in
    /// place (an append through a getter and a setter would copy the array).
    var blocked: [DedicatedLease] {
        get { client.redisExtras?.blocked ?? [] }
        nonmutating _modify { yield &client.madeRedisExtras.blocked }
    }
    /// Pub/sub: channels, patterns and push connections (nil until the first SUBSCRIBE).
    var subscriptions: RedisSubscriptions? {
        get { client.redisExtras?.subscriptions }
        nonmutating set { if newValue != nil || hasExtras { client.madeRedisExtras.subscriptions = newValue } }
    }

    /// In one of the states tied to the worker's backend connections (transaction, WATCH,
    /// blocked command, subscription): the client may not move to another worker.
    var isTiedToWorker: Bool {
        guard let extras = client.redisExtras else { return false }
        return extras.transaction != nil || extras.watch != nil || !extras.blocked.isEmpty || extras.subscriptions != nil
    }
}

/// `CLIENT REPLY`: whether the client gets its replies. Tern answers it itself (a shared
/// backend connection must answer every request) and drops the replies the client turned
/// off: each request's slot is made silent (`ReplySlot.isSilent`), so the command runs and its
/// reply, error or not, is not written. Pub/sub messages and (UN)SUBSCRIBE confirmations are
/// pushes, not replies, and still go; RESET turns replies on.
enum RedisReplyMode: UInt8 {
    case on
    case off
    /// `CLIENT REPLY SKIP`: the next command's reply is dropped, then replies are on again.
    case skipNext
}

/// The names a Redis client gave itself.
struct RedisNames: Hashable, Sendable {
    var name: String?
    var libraryName: String?
    var libraryVersion: String?
    var isEmpty: Bool { name == nil && libraryName == nil && libraryVersion == nil }
}

/// A Redis client's names, immutable and shared by every client of a worker with the same
/// three (`FrontendLoop.redisNames`): a pool of connections named alike, as redis-py names
/// each of its connections with `CLIENT SETINFO` LIB-NAME and LIB-VER, costs one object rather
/// than one per connection (64 bytes, an 80-byte chunk, each: idle connections named so cost
/// 462 bytes with one object each, 381 shared; `bench/idle.py --redis --named`).
/// `Sendable` (immutable): a client moved to another worker takes it along.
final class SharedRedisNames: Sendable {
    let names: RedisNames
    init(_ names: RedisNames) { self.names = names }
}

/// A Redis client's transaction, WATCH, blocked commands and subscriptions: what few clients
/// set, kept in the connection's rare state. Confined to the client's worker thread.
final class RedisSessionExtras {
    var transaction: RedisTransaction?
    var watch: DedicatedLease?
    /// A WATCH Tern answered but could not hold (cluster pools: its slot was migrating, the
    /// node answered -ASK): EXEC answers a null array, as for a watched key that changed.
    var watchBroken = false
    /// First WATCHes of this client answered -ASK in a row (0 after one a node held, or a
    /// second after the last): each is answered later than the one before
    /// (`FirstWatch.advance`), so that a client's retry loop does not spin through a slot's
    /// migration. `watchAskAt`: when the last was answered -ASK (the worker's clock).
    var watchAsks: UInt8 = 0
    var watchAskAt: Double = 0
    var blocked: [DedicatedLease] = []
    /// A blocking command of this client has waited for a dedicated connection (it may still).
    var waitedForDedicated = false
    var subscriptions: RedisSubscriptions?
}

/// RESP2 on a client connection: parse, check, answer locally or route by the command table.
extension ClientConnection {
    /// The parser's limits for this client: before AUTH, Redis's own caps (10 arguments, 16 KiB
    /// bulks).
    func requestLimits(_ session: RedisSession) -> RespLimits {
        !pool.requiresAuth || session.isAuthenticated ? pool.respLimits : pool.preAuthLimits
    }

    @inline(__always)
    func processRedis(_ buffer: ByteBuffer, _ session: RedisSession) {
        let arguments = session.arguments
        while mayParseNext(buffer) {
            let bytes = buffer.readable
            switch RespRequestParser.parse(bytes, limits: requestLimits(session), into: arguments) {
            case .incomplete:
                return
            case let .empty(length):
                buffer.consume(length)
            case let .request(length):
                // Not now: it waits in the buffer for the client's earlier replies (`mustWait`).
                guard routeRedis(UnsafeRawBufferPointer(rebasing: bytes[0..<length]), session) else { return }
                noteRequestBytes(length)
                // A large request's bytes may have left with the buffer's memory (`forward`).
                if !worker.tookLargeRequest { buffer.consume(length) } else { worker.tookLargeRequest = false }
                arguments.shrink()
            case let .protocolError(message):
                pool.stats.clientErrorReplies.add()
                // Framing is lost: answer, then close once earlier replies are out.
                let slot = newSlot()
                if redisReplyMode != .on { applyReplyMode(slot) }
                slot.complete(with: "-ERR Protocol error: \(message)\r\n")
                buffer.consume(buffer.readableCount)
                closeWhenDrained = true
            }
        }
    }

    /// Routes one request; false when it must wait for the client's earlier replies (it is
    /// left in the buffer, and parsing resumes when they are out: `ClientConnection.flush`).
    @inline(__always)
    private func routeRedis(_ frame: UnsafeRawBufferPointer, _ session: RedisSession) -> Bool {
        let arguments = session.arguments
        // The name read from the frame directly (`withArgument` would take a reference to the
        // inline bytes for every request).
        let found: Int32
        let table = worker.redisCommands
        if arguments.isInline {
            found = arguments.withArgument(0, in: frame) { table.indexOf($0) }
        } else {
            let span = arguments.span(0)
            found = table.indexOf(UnsafeRawBufferPointer(rebasing: frame[span.start..<(span.start + span.length)]))
        }
        guard found >= 0 else {
            withNewSlot { slot in
                if redisReplyMode != .on { applyReplyMode(slot) }
                unknownCommand(frame, session, slot)
            }
            return true
        }
        let command = table.command(found)
        // Parsing goes on only once a held session's replies are out (`parsingHeld`).
        if holdUntilAnswered { holdUntilAnswered = false }
        if command.keepsPipelineOrder, !slots.isEmpty, mustWait(command, frame, session) {
            holdUntilAnswered = true
            return false
        }
        // (DEL, UNLINK, GETDEL and flushes reach a warm-up's old pool: `deleteMustWaitForWarmupReads`.)
        if pool.deletesReachOldPool, command.isWrite, !slots.isEmpty,
           command.warmup == .readAndDelete || command.routing == .sum || command.routing == .everyServerOK,
           deleteMustWaitForWarmupReads() {
            return false
        }
        withNewSlot { slot in
            if redisReplyMode != .on { applyReplyMode(slot, pushesConfirmations: command.routing == .pubsub && Self.confirmsAsPush(command)) }
            routeRedis(frame, session, slot, command)
        }
        return true
    }

    /// `CLIENT REPLY OFF` or `SKIP` is in effect: the request's reply is dropped (and after a
    /// `SKIP`, only this one's).
    /// `pushesConfirmations`: a (P|S)(UN)SUBSCRIBE, whose confirmations Redis sends as pushes,
    /// whatever `CLIENT REPLY` says (it does not silence them).
    private func applyReplyMode(_ slot: ReplySlot, pushesConfirmations: Bool = false) {
        if !pushesConfirmations { slot.isSilent = true }
        if redisReplyMode == .skipNext { redisReplyMode = .on }
    }

    private static func confirmsAsPush(_ command: RedisCommand) -> Bool {
        command.isNamed("subscribe") || command.isNamed("unsubscribe") || command.isNamed("psubscribe")
            || command.isNamed("punsubscribe") || command.isNamed("ssubscribe") || command.isNamed("sunsubscribe")
    }

    /// Commands that leave the client's shared connections for a connection of their own run
    /// where Redis would run them: after every earlier request of the client has been answered
    /// (held here until then), and before any later one is sent (`holdUntilAnswered`, set when
    /// they go). Without that, a command pipelined behind a blocking pop ran before it on the
    /// shared connection, a write behind a WATCH could reach Redis before the WATCH, and the
    /// EXEC of a watched transaction before the commands sent ahead of it. These are a blocking
    /// command outside MULTI (XREAD and XREADGROUP with BLOCK among them), WATCH, and EXEC of a
    /// watched transaction; and a RESET of a subscribed client, which closes its push connections:
    /// sent at once, the (UN)SUBSCRIBE confirmations still on their way were answered `-ERR
    /// backend connection closed` (review of session 33).
    private func mustWait(_ command: RedisCommand, _ frame: UnsafeRawBufferPointer, _ session: RedisSession) -> Bool {
        switch command.routing {
        case .blocking: return session.transaction == nil
        case .session where command.isNamed("reset"): return session.subscriptions != nil
        case .session: return session.transaction == nil ? command.isNamed("watch") : session.watch != nil && command.isNamed("exec")
        default: return session.transaction == nil && command.keys == .streams && RedisKeyPositions.streamReadOptions(session.arguments, in: frame).blockAt > 0
        }
    }

    @inline(__always)
    private func routeRedis(_ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot, _ command: RedisCommand) {
        let arguments = session.arguments
        // `disabled_commands`: as Redis answers after `rename-command X ""`.
        if pool.hasDisabledCommands, pool.isDisabled(command) { return unknownCommand(frame, session, slot) }
        slot.command = command.tableIndex
        if session.user != nil, session.usersGeneration != pool.usersGeneration { rebindUser(session) }
        if pool.requiresAuth, !session.isAuthenticated, !command.isNamed("auth"), !command.isNamed("hello"), !command.isNamed("quit") {
            session.transaction?.aborted = true
            // As Redis: a wrong argument count is reported before the missing authentication.
            if !command.acceptsArgumentCount(arguments.count) {
                slot.complete(with: "-ERR wrong number of arguments for '\(command.name)' command\r\n")
            } else {
                slot.complete(with: "-NOAUTH Authentication required.\r\n" as StaticString)
            }
            return
        }
        switch command.routing {
        case .local: pool.stats.localReplies.add()
        case .unsupported: pool.stats.clientErrorReplies.add()
        default: if command.isWrite { pool.stats.writes.add() } else { pool.stats.reads.add() }
        }
        guard command.acceptsArgumentCount(arguments.count) else {
            // An EXEC that Redis refuses ends the transaction and the WATCH, with Redis's
            // EXECABORT, in MULTI or not (the client stayed in MULTI, and what followed was
            // queued where Redis runs it).
            if command.isNamed("exec") { return abortTransaction(session, slot) }
            session.transaction?.aborted = true
            slot.complete(with: "-ERR wrong number of arguments for '\(command.name)' command\r\n")
            return
        }
        if let user = session.user, !permits(user, command, frame, session, slot) { return }
        if session.subscriptions != nil, refuseWhileSubscribed(command, frame, session, slot) { return }
        if pool.clusterMapMissing, command.routing != .local, command.routing != .unsupported, command.routing != .session {
            // A redis_cluster pool whose seeds have not answered yet: nothing to route by.
            session.transaction?.aborted = true
            slot.complete(with: "-CLUSTERDOWN The cluster is down (no seed node has answered CLUSTER SLOTS yet)\r\n" as StaticString)
            return
        }
        // UNWATCH inside MULTI is queued, as in Redis: run at once, it dropped the WATCH before
        // EXEC, which then ran unguarded and one element short (session sweep 32).
        if session.transaction != nil, command.routing != .session || command.isTransactional {
            return queueInTransaction(command, frame, session, slot)
        }
        switch command.routing {
        case .pubsub:
            routePubSub(command, frame, session, slot)
        case .session:
            routeSession(command, frame, session, slot)
        case .blocking:
            routeBlocking(command, frame, session, slot)
        case .unsupported:
            slot.complete(with: "-ERR unsupported command '\(command.name)'\r\n")
        case .local:
            answerLocally(command, frame, session, slot)
        case .keyed where command.warmup != .none && pool.old != nil:
            routeDuringWarmup(command, frame, session, slot)
        case .keyed:
            routeKeyed(command, frame, session, slot)
        case .mget where pool.old != nil:
            let read = WarmupRead(mode: .redisMGet, pool: pool, clientIndex: index)
            slot.warmup = read
            for argument in 1..<arguments.count {
                arguments.withArgument(argument, in: frame) { key in
                    read.addKey(key, newServer: Int32(pool.serverIndexUncounted(forKey: key) ?? -1))
                }
            }
            fanOutKeys(command, frame, session, slot, sink: .array(RespArrayByPosition()), keysPerPart: 1)
        case .mget:
            fanOutKeys(command, frame, session, slot, sink: .array(RespArrayByPosition()), keysPerPart: 1)
        case .sum where command.isWrite && pool.deletesReachOldPool:
            // The table's summed writes (DEL, UNLINK) are deletes: a warm-up's old pool deletes too.
            fanOutKeys(command, frame, session, slot, sink: .sum(IntegerSum()), keysPerPart: 1, alsoToOldPool: true)
        case .mset:
            fanOutKeys(command, frame, session, slot, sink: .allOK(AllOK(dialect: .resp)), keysPerPart: 2)
        case .sum:
            fanOutKeys(command, frame, session, slot, sink: .sum(IntegerSum()), keysPerPart: 1)
        case .everyServerOK:
            toEveryServer(frame, session, slot, sink: .allOK(AllOK(dialect: .resp)), invalidates: true)
        case .everyServerSum:
            toEveryServer(frame, session, slot, sink: .sum(IntegerSum()))
        case .firstServer:
            forwardRedis(frame, session, slot, to: firstLiveServer())
        }
    }

    /// After a reload: the session takes the new rules of its user, or, when the user is gone,
    /// must authenticate again.
    private func rebindUser(_ session: RedisSession) {
        session.usersGeneration = pool.usersGeneration
        guard let user = session.user else { return }
        session.user = pool.currentUser(named: user)
        if session.user == nil { session.isAuthenticated = false }
    }

    /// Redis's reply to a command it does not know (counted as a bad request, as memcached
    /// pools count an unknown command: it was counted nowhere; stats sweep 30).
    private func unknownCommand(_ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot) {
        pool.stats.clientErrorReplies.add()
        session.transaction?.aborted = true
        RedisErrorText.unknownCommand(session.arguments, in: frame).withUnsafeBytes { slot.data.append($0) }
        slot.complete(with: "" as StaticString)
    }

    /// The user's rules: one bit for the command, then (only for a user with key patterns)
    /// one glob match per key. AUTH, HELLO and QUIT are always allowed, so that a client can
    /// change user or leave. Answers NOPERM and returns false when refused.
    @inline(__always)
    private func permits(_ user: RedisUser, _ command: RedisCommand, _ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot) -> Bool {
        if !user.allows(command), !command.isNamed("auth"), !command.isNamed("hello"), !command.isNamed("quit") {
            session.transaction?.aborted = true
            slot.complete(with: "-NOPERM User \(user.name) has no permissions to run the '\(command.name)' command\r\n")
            return false
        }
        if user.allKeys { return true }
        let arguments = session.arguments
        var allowed = true
        RedisKeyPositions.forEachKey(command, arguments, in: frame) { index in
            if allowed, !arguments.withArgument(index, in: frame, { user.allowsKey($0) }) { allowed = false }
        }
        if !allowed {
            session.transaction?.aborted = true
            slot.complete(with: "-NOPERM No permissions to access a key\r\n" as StaticString)
            return false
        }
        // SORT's patterns read keys no key rule was checked against: Redis refuses them to a
        // user without access to every key.
        if command.storeKeywords, command.isNamed("sort") || command.isNamed("sort_ro"),
           let option = RedisKeyPositions.sortPatternFormingKeys(arguments, in: frame) {
            session.transaction?.aborted = true
            slot.complete(with: option == .by ? "-ERR BY option of SORT denied due to insufficient ACL permissions.\r\n" as StaticString
                                              : "-ERR GET option of SORT denied due to insufficient ACL permissions.\r\n" as StaticString)
            return false
        }
        return true
    }

    func firstLiveServer() -> Int? {
        pool.servers.firstIndex { !$0.isEjected }
    }

    /// Writes the request to `output`: its own bytes for multibulk requests, re-encoded for
    /// inline ones.
    func writeRequest(_ frame: UnsafeRawBufferPointer, _ arguments: RespArguments, into output: ByteBuffer) {
        if !arguments.isInline {
            output.append(frame)
            return
        }
        RespEncoder.arrayHeader(arguments.count, into: output)
        for index in 0..<arguments.count {
            arguments.withArgument(index, in: frame) { RespEncoder.bulk($0, into: output) }
        }
    }

    /// GET, GETEX and GETDEL on a pool that warms up (the table's `warmup`): reads fall back to
    /// the old pool per key (`WarmupRead`; GETEX copies first and is sent again, so its expiry
    /// applies to the copy); GETDEL reaches both pools with `deletes: both`.
    private func routeDuringWarmup(_ command: RedisCommand, _ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot) {
        let arguments = session.arguments
        switch command.warmup {
        case .readAndDelete:
            guard pool.deletesReachOldPool, let route = WarmupRoute(pool) else { return routeKeyed(command, frame, session, slot) }
            arguments.withArgument(1, in: frame) { key in
                route.invalidate(key, slot, client: index, mergedBy: .eitherValue(EitherValue()), framing: .line) { output in
                    writeRequest(frame, arguments, into: output)
                }
            }
        case .read, .readCopyFirst:
            let read = WarmupRead(mode: .redisGet, pool: pool, clientIndex: index)
            if command.warmup == .readCopyFirst {
                // Sent again after the copy.
                read.frame = requestBytes(frame, arguments)
                read.resendsAfterCopy = true
            }
            slot.warmup = read
            arguments.withArgument(1, in: frame) { key in
                read.addKey(key, newServer: Int32(pool.serverIndexUncounted(forKey: key) ?? -1))
            }
            routeKeyed(command, frame, session, slot)
        case .none:
            routeKeyed(command, frame, session, slot)
        }
    }

    /// The request as RESP bytes kept for a later send (a blocking command waiting for its
    /// connection, a GETEX sent again after a warm-up copy): an inline request is encoded.
    func requestBytes(_ frame: UnsafeRawBufferPointer, _ arguments: RespArguments) -> [UInt8] {
        guard arguments.isInline else { return Array(frame) }
        let buffer = ByteBuffer()
        writeRequest(frame, arguments, into: buffer)
        return Array(buffer.readable)
    }

    /// Sends the request to server `server` (a position in `pool.servers`; nil when none is live).
    func forwardRedis(_ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot, to server: Int?) {
        guard let server else {
            slot.failNoServer()
            return
        }
        let isInline = session.arguments.isInline
        pool.withConnection(toServer: server, client: index) { connection in
            if !isInline {
                connection.forward(frame, slot: slot, framing: .line)
                return
            }
            writeRequest(frame, session.arguments, into: connection.requestBuffer())
            connection.enqueue(slot: slot, part: ReplyPart.whole, framing: .line)
        }
    }

    /// Sends the request on `connection` (a cluster replica's, for `read_from`).
    private func forwardRedis(_ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot, on connection: ServerConnection) {
        if !session.arguments.isInline {
            connection.forward(frame, slot: slot, framing: .line)
            return
        }
        writeRequest(frame, session.arguments, into: connection.requestBuffer())
        connection.enqueue(slot: slot, part: ReplyPart.whole, framing: .line)
    }

    /// Every key must live on one server (hash tags make that possible); else CROSSSLOT.
    private func routeKeyed(_ command: RedisCommand, _ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot) {
        if case .range(first: 1, last: 1, step: _) = command.keys, session.arguments.count > 1, !session.arguments.isInline, !command.storeKeywords {
            // One key, the first argument (GET, SET, INCR, …): placed without the general walk
            // (SORT and GEORADIUS may name a STORE key further on).
            let span = session.arguments.span(1)
            guard let server = pool.serverIndex(forKey: UnsafeRawBufferPointer(rebasing: frame[span.start..<(span.start + span.length)])) else {
                slot.failNoServer()
                return
            }
            if pool.readsFromReplicas, !command.isWrite, let replica = pool.readReplica(ofServer: server, client: index) {
                // redis_cluster with read_from: a single-key read goes to a replica of the slot's master.
                return forwardRedis(frame, session, slot, on: replica.connection(for: index))
            }
            forwardRedis(frame, session, slot, to: server)
            return
        }
        let arguments = session.arguments
        if command.keys == .streams, RedisKeyPositions.streamReadOptions(arguments, in: frame).blockAt > 0 {
            return routeBlocking(command, frame, session, slot)
        }
        let placement = placeKeys(command, frame, arguments)
        if placement.crossServer {
            slot.complete(with: "-CROSSSLOT Keys in request don't hash to the same slot\r\n" as StaticString)
            return
        }
        if placement.noServer {
            slot.failNoServer()
            return
        }
        if let refusal = sortPatternRefusal(command, frame, arguments, placement) {
            slot.complete(with: refusal)
            return
        }
        if let refusal = copyDatabaseRefusal(command, frame, arguments) {
            slot.complete(with: refusal)
            return
        }
        // No keys (EVAL with numkeys 0) or arguments Redis itself will refuse: one fixed server,
        // whose own error the client sees.
        forwardRedis(frame, session, slot, to: placement.server < 0 || !placement.valid ? firstLiveServer() : placement.server)
    }

    /// SORT and SORT_RO with a BY or GET pattern that may form keys on other servers than the
    /// sorted key's (`RedisKeyPositions.sortPatternOffServer`): Redis's refusal. A Redis
    /// Cluster node refuses such patterns itself; a one-server pool has no other server.
    func sortPatternRefusal(_ command: RedisCommand, _ frame: UnsafeRawBufferPointer, _ arguments: RespArguments,
                            _ placement: KeyPlacement) -> StaticString? {
        guard command.storeKeywords, command.isNamed("sort") || command.isNamed("sort_ro"), !pool.isCluster, pool.servers.count > 1,
              placement.valid, placement.server >= 0 else { return nil }
        switch RedisKeyPositions.sortPatternOffServer(arguments, in: frame, placement: pool.placement, server: placement.server) {
        case .by?: return "-ERR BY option of SORT denied: keys formed by the pattern may be on other servers than the sorted key\r\n"
        case .get?: return "-ERR GET option of SORT denied: keys formed by the pattern may be on other servers than the sorted key\r\n"
        case .store?, nil: return nil
        }
    }

    /// COPY … DB n to another database than the pool's: refused as SELECT is (a pool serves one
    /// database; the copy reached database n of the backend).
    func copyDatabaseRefusal(_ command: RedisCommand, _ frame: UnsafeRawBufferPointer, _ arguments: RespArguments) -> String? {
        guard arguments.count > 4, command.isNamed("copy") else { return nil }
        for index in 3..<(arguments.count - 1) where arguments.argument(index, in: frame, equals: "db") {
            guard Int(arguments.argumentString(index + 1, in: frame)) != pool.config.redisDatabase else { continue }
            return "-ERR COPY to another database is not allowed: this pool serves database \(pool.config.redisDatabase)\r\n"
        }
        return nil
    }

    /// Where a command's keys live, all of which must be on one server.
    struct KeyPlacement {
        /// The server of the keys (or `startingWith`), -1 when there is none.
        var server: Int
        var crossServer = false
        /// A key whose server is out (every server ejected).
        var noServer = false
        /// The arguments agree with the key spec (a bad numkeys does not).
        var valid = true
        /// Cluster pools: the hash slot every key must share (-1: none yet). Redis Cluster
        /// refuses keys of two slots even on one node, so the check there is per slot.
        var hashSlot = -1
    }

    /// Walks the command's keys (from the table's key spec). `server` is a server the keys must
    /// share already (a transaction's or a WATCH's), or -1.
    func placeKeys(_ command: RedisCommand, _ frame: UnsafeRawBufferPointer, _ arguments: RespArguments, startingWith server: Int = -1,
                   slot hashSlot: Int = -1) -> KeyPlacement {
        var placement = KeyPlacement(server: server)
        placement.hashSlot = hashSlot
        let isCluster = pool.isCluster
        placement.valid = RedisKeyPositions.forEachKey(command, arguments, in: frame) { keyIndex in
            guard keyIndex < arguments.count else { return }
            if isCluster {
                let (keySlot, keyServer) = arguments.withArgument(keyIndex, in: frame) { pool.clusterSlot(forKey: $0) }
                if placement.hashSlot < 0 { placement.hashSlot = keySlot } else if keySlot != placement.hashSlot { placement.crossServer = true }
                guard let keyServer else {
                    placement.noServer = true
                    return
                }
                if placement.server < 0 { placement.server = keyServer }
                return
            }
            guard let keyServer = arguments.withArgument(keyIndex, in: frame, { pool.serverIndex(forKey: $0) }) else {
                placement.noServer = true
                return
            }
            if placement.server < 0 { placement.server = keyServer } else if keyServer != placement.server { placement.crossServer = true }
        }
        return placement
    }

    /// MGET / MSET / DEL-like commands: one request per server with that server's keys.
    private func fanOutKeys(_ command: RedisCommand, _ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot,
                            sink: ReplySink, keysPerPart: Int, alsoToOldPool: Bool = false) {
        let arguments = session.arguments
        let keys = worker.splitKeys
        keys.begin(expected: arguments.count / keysPerPart)
        defer { keys.end() }
        if keysPerPart == 2, (arguments.count - 1) % 2 != 0 {
            slot.complete(with: "-ERR wrong number of arguments for '\(command.name)' command\r\n")
            return
        }
        // Keys are grouped by server, or in a cluster pool by hash slot (Redis Cluster refuses a
        // multi-key command over two slots even on one node): `keys` holds the group, which
        // numbers the part.
        let isCluster = pool.isCluster
        // MGET: a key named again is asked once, its element copied (`RepeatedKeys`), in every
        // phase of a warm-up read too.
        let isArrayReply = isArray(sink)
        let findsRepeats = keysPerPart == 1 && isArrayReply
        var index = 1
        if findsRepeats { worker.repeatedKeys.begin() }
        while index < arguments.count {
            if findsRepeats, let earlier = arguments.withArgument(index, in: frame, { key in
                worker.repeatedKeys.earlier(key, position: slot.keys.count) { other in
                    arguments.withArgument(Int(keys[other].argument), in: frame) { $0.elementsEqual(key) }
                }
            }) {
                keys.append(argument: index, group: -1)
                slot.warmupRead?.markRepeat(slot.keys.count, of: earlier)
                slot.addRepeat(of: earlier)
                index += 1
                continue
            }
            let group: Int?
            if isCluster {
                let (keySlot, server) = arguments.withArgument(index, in: frame) { pool.clusterSlot(forKey: $0) }
                group = server == nil ? nil : keySlot
            } else {
                group = arguments.withArgument(index, in: frame) { pool.serverIndex(forKey: $0) }
            }
            guard let group else {
                // Not split: the error is the reply (a warm-up MGET included, which would
                // otherwise wait for parts never sent).
                slot.warmup = nil
                slot.failNoServer()
                return
            }
            keys.append(argument: index, group: Int32(group))
            // Only an array reply is merged by key position (MSET's, DEL's and the like are
            // merged whole).
            if isArrayReply { slot.keys.append(ReplySlot.KeyEntry(keyStart: 0, keyLength: 0, server: Int32(group))) }
            index += keysPerPart
        }
        let servers = keys.groups
        if isArrayReply, isCluster, servers.count > 8, slot.warmup == nil, slot.keys.count == keys.count {
            // Many parts to merge by position: each one's keys chained (`ReplySlot.groupHeads`).
            for position in 0..<keys.count { slot.keys[position].nextInGroup = keys[position].next }
            slot.groupHeads.reserveCapacity(servers.count)
            for group in servers { slot.groupHeads.append(ReplySlot.GroupHead(group: group, head: Int32(keys.firstPosition(inGroup: group)))) }
            slot.groupHeads.sort { $0.group < $1.group }
        }
        if servers.count == 1, !alsoToOldPool, !isArrayReply || slot.warmup == nil && !slot.hasRepeatedKeys {
            // All keys on one server (one slot): the request goes as it is, and so does its
            // reply (a large one becomes the client's output without a copy). A warm-up
            // MGET keeps its positions: its misses are read from the old pool.
            slot.keys.removeAll(keepingCapacity: true)
            forwardRedis(frame, session, slot, to: isCluster ? pool.server(forSlot: Int(servers[0])) : Int(servers[0]))
            return
        }
        var split = ReplySplit(slot, mergedBy: sink, warmupCounters: alsoToOldPool ? pool.warmupCounters : nil)
        sendParts(servers, keys, in: pool, toOldPool: false, frame, session, &split, keysPerPart: keysPerPart)
        if alsoToOldPool, let old = pool.old {
            // Warm-up DEL/UNLINK: the old pool deletes too; the reply is the larger count.
            let oldKeys = SplitKeys()
            let deletes = WarmupDeletesInFlight(pool.warmupInvalidations)
            slot.heldWithRequest = deletes
            for position in 0..<keys.count {
                let keyIndex = Int(keys[position].argument)
                let server = Int32(arguments.withArgument(keyIndex, in: frame) { key in
                    deletes.add(key)
                    return old.server(forKey: key)?.index ?? -1
                })
                oldKeys.append(argument: keyIndex, group: server)
            }
            WarmupCounters.add(pool.warmupCounters.oldDeletes, keys.count)
            sendParts(oldKeys.groups, oldKeys, in: old, toOldPool: true, frame, session, &split, keysPerPart: keysPerPart)
        }
        split.close()
        if servers.count > 1 { pool.stats.fragments.add(servers.count) }
    }

    /// One request per group (server, or hash slot in a cluster pool) with the keys (and
    /// values) it holds.
    private func sendParts(_ servers: [Int32], _ keys: SplitKeys, in target: PoolRuntime, toOldPool: Bool,
                           _ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ split: inout ReplySplit, keysPerPart: Int) {
        let arguments = session.arguments
        SplitRoute(target, isOldPool: toOldPool).send(servers, &split, client: index, framing: .line) { server, output in
            RespEncoder.arrayHeader(1 + keys.count(inGroup: server) * keysPerPart, into: output)
            // The group's keys, along their chain (`SplitKeys`).
            var position = keys.firstPosition(inGroup: server)
            if !arguments.isInline {
                // The command name and the group's keys (and values) as the client sent them:
                // arguments next to each other in the request go as one copy.
                var runStart = arguments.encodedStart(0)
                var runEnd = arguments.encodedEnd(0)
                while position >= 0 {
                    let keyIndex = Int(keys[position].argument)
                    let start = arguments.encodedStart(keyIndex)
                    let end = arguments.encodedEnd(keyIndex + keysPerPart - 1)
                    if start != runEnd {
                        output.append(UnsafeRawBufferPointer(rebasing: frame[runStart..<runEnd]))
                        runStart = start
                    }
                    runEnd = end
                    position = Int(keys[position].next)
                }
                output.append(UnsafeRawBufferPointer(rebasing: frame[runStart..<runEnd]))
                return
            }
            arguments.withArgument(0, in: frame) { RespEncoder.bulk($0, into: output) }
            while position >= 0 {
                let keyIndex = Int(keys[position].argument)
                for offset in 0..<keysPerPart {
                    arguments.withArgument(keyIndex + offset, in: frame) { RespEncoder.bulk($0, into: output) }
                }
                position = Int(keys[position].next)
            }
        }
    }

    /// DBSIZE, FLUSHDB, FLUSHALL, SCRIPT LOAD/FLUSH, PUBSUB: the same request to every live
    /// server. `invalidates`: the table's `.everyServerOK` commands (FLUSHDB, FLUSHALL), which
    /// a warm-up's old pool gets too with `deletes: both`.
    func toEveryServer(_ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot, sink: ReplySink,
                       invalidates: Bool = false) {
        let arguments = session.arguments
        EveryServerRoute(pool, invalidates: invalidates).send(slot, client: index, mergedBy: sink, framing: .line) { output in
            writeRequest(frame, arguments, into: output)
        }
    }

    private func isArray(_ sink: ReplySink) -> Bool {
        if case .array = sink { return true }
        return false
    }
}
