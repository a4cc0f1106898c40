#if canImport(Glibc)
import Glibc
#endif
import CLibev
import TernCore

/// One client of a pool, owned by one worker.
///
///     read ──► parse (codec) ──► route: local reply │ one server │ split over servers
///                                       │
///                                  reply slots (arrival order) ──► output ──(one write per pass)──► client
///
/// Bad input is answered with the protocol's error and the connection is kept; only a lost
/// frame (a line with no end in sight) closes it.
final class ClientConnection: ReplyOwner {
    // The descriptor and the flags first: they share one word with `ReplyOwner`'s flags.
    let descriptor: Int32
    /// Replies held back for one loop pass (see `flush(allowHold:)`).
    var isHeld = false
    /// No more requests are read (quit, end of input, fatal error); close once replies are out.
    var closeWhenDrained = false
    /// The protocol this client speaks (see `Frontend`); one byte, in the same word.
    private(set) var frontend: Frontend
    /// Redis clients: AUTH or HELLO succeeded (`RedisSession.isAuthenticated`).
    var redisAuthenticated = false
    /// Redis clients: nothing more is parsed until every reply in flight is out (a blocking
    /// command, WATCH or a watched EXEC went to a connection of its own: `RedisSession.mustWait`).
    var holdUntilAnswered = false
    /// Redis clients: `CLIENT REPLY` (`RedisReplyMode`). One byte, in the padding before `passState`.
    var redisReplyMode = RedisReplyMode.on
    /// Bit 7: the requests this client may begin in this loop pass are spent, and the rest of
    /// what it sent waits, unread further, for the next pass (`inputDeferred`); bits 0-6: the
    /// loop pass (`FrontendLoop.passNumber`, its low 7 bits) whose requests `begunInPass`
    /// counts. Both fit in the padding before `position`, so an idle connection is no larger.
    /// (A client last counted exactly 128 passes ago keeps that count: at worst it waits one
    /// pass early.)
    private var passState: UInt8 = 0
    private var begunInPass: UInt16 = 0
    var inputDeferred: Bool { passState & 0x80 != 0 }
    /// Where the worker keeps this client in `FrontendLoop.clients` (-1 once released).
    var position: Int32 = -1
    let pool: PoolRuntime
    /// Bytes of a partial request: a buffer only while one is pending (nil otherwise, never
    /// empty), so an idle connection holds none. Complete requests are read and parsed in the
    /// worker's shared buffer (`FrontendLoop.scratch`).
    private var partial: ByteBuffer?
    private var watcher: IOWatcher?
    /// TLS pools: the client's TLS stream (nil on plain listeners). Kept with the rare state:
    /// a plain client's read finds `rare` nil, one load as the field itself was.
    private var tls: TLSStream? {
        get { rare?.tls }
        set { if newValue != nil || rare != nil { rareState.tls = newValue } }
    }
    /// Reply bytes beyond which nothing is held back.
    static let holdLimit = 1 << 16
    /// Bytes of a refused data block still to be discarded as they arrive (rare state too).
    var skipRemaining: Int {
        get { rare?.skipRemaining ?? 0 }
        set { if newValue != 0 || rare != nil { rareState.skipRemaining = newValue } }
    }
    /// Redis clients: a view of the connection's Redis state (`RedisSession`), for this call
    /// only; nil for memcached.
    var redis: RedisSession? {
        if case .redis = frontend { return RedisSession(client: self, arguments: worker.redisArguments) }
        return nil
    }
    /// memcached clients whose first byte chose the binary protocol.
    var isBinary: Bool {
        if case .memcachedBinary = frontend { return true }
        return false
    }
    /// What few connections need, made the first time one does (so an idle connection does
    /// not carry it): memcached authentication, the peer's address once a slow request logged
    /// it, a TLS stream, the rest of a refused memcached value to discard. Each field moved here
    /// took 8 bytes off every connection (`ClientConnection` is 184 bytes, in malloc's 192-byte
    /// chunks; 200 and 208 with `tls` and `skipRemaining` stored in it).
    private var rare: RareClientState?
    private var rareState: RareClientState {
        if let rare { return rare }
        let made = RareClientState()
        rare = made
        return made
    }
    /// The client's input ended while parsing was held (a WATCH or a watched EXEC) or paused
    /// (a full pipeline, unread output): nothing more is read, what was read is parsed as the
    /// pauses end, then the client closes (as Redis runs what it read before it saw the end).
    var inputEnded: Bool {
        get { rare?.inputEnded ?? false }
        set { if newValue || rare != nil { rareState.inputEnded = newValue } }
    }
    /// When the client's next request began to wait for its server's next connect (0: it does
    /// not wait; the wait's deadline counts from here), and the time its worker wakes it (0:
    /// no wake is due, so the client is not waiting now): `waitsForServer`.
    var waitForServerSince: Double {
        get { rare?.waitForServerSince ?? 0 }
        set { if newValue != 0 || rare != nil { rareState.waitForServerSince = newValue } }
    }
    var waitForServerWake: Double {
        get { rare?.waitForServerWake ?? 0 }
        set { if newValue != 0 || rare != nil { rareState.waitForServerWake = newValue } }
    }
    /// Parsing waits for a wake from the worker (`waitsForServer`).
    var isWaitingForServer: Bool { waitForServerWake != 0 }
    /// Ends a wait for the server (the request path's common case reads one reference).
    @inline(__always) func clearWaitForServer() {
        if let rare, rare.waitForServerSince != 0 || rare.waitForServerWake != 0 {
            rare.waitForServerSince = 0
            rare.waitForServerWake = 0
        }
    }
    /// A request's server failed and the client closes once its output is written
    /// (`closeForServerFailure`).
    var closingForServerFailure: Bool {
        get { rare?.closingForServerFailure ?? false }
        set { if newValue || rare != nil { rareState.closingForServerFailure = newValue } }
    }
    /// Pools with `users:` (memcached and Redis sessions alike): the authenticated user (nil
    /// until then), and failed authentications in a row.
    var authenticatedUser: RedisUser? {
        get { rare?.authenticatedUser }
        set { if newValue != nil || rare != nil { rareState.authenticatedUser = newValue } }
    }
    var authFailures: Int {
        get { rare?.authFailures ?? 0 }
        set { if newValue != 0 || rare != nil { rareState.authFailures = newValue } }
    }
    /// `PoolRuntime.usersGeneration` when `authenticatedUser` was set.
    var usersGeneration: Int {
        get { rare?.usersGeneration ?? 0 }
        set { if newValue != 0 || rare != nil { rareState.usersGeneration = newValue } }
    }
    /// Seconds a TLS client has to finish its handshake.
    static let handshakeTimeout = 10.0
    /// Reply bytes waiting for a slow reader before reading its requests pauses.
    static let outputHighWater = 1 << 20
    /// Loop time of the last bytes read, and since when a partial request has been waiting.
    var lastActivity: Double = 0
    var partialSince: Double = 0
    /// Loop time when the client last took reply bytes (or had none waiting).
    var lastWriteProgress: Double = 0
    /// Redis clients: the names the client gave itself, an object shared with every client of
    /// the worker named alike (`RedisSession.name`). In the word the one-byte `frontend` left
    /// free: `ClientConnection` stays in malloc's 192-byte chunks.
    var redisNames: SharedRedisNames?
    /// Redis clients: transaction, WATCH, blocked commands and subscriptions, made the first
    /// time the client sets any of them (with the rest of the rare state).
    var redisExtras: RedisSessionExtras? { rare?.redisExtras }
    var madeRedisExtras: RedisSessionExtras {
        let state = rareState
        if let extras = state.redisExtras { return extras }
        let made = RedisSessionExtras()
        state.redisExtras = made
        return made
    }
    /// `ip:port` of the client, looked up the first time a slow request of its is logged.
    var peerAddress: String {
        if let known = peerText { return known }
        let text = SlowLog.peerAddress(descriptor)
        rareState.peerText = text
        return text
    }
    var peerText: String? { rare?.peerText }

    /// The id `CLIENT ID`, `CLIENT INFO` and `HELLO` report: unique in the process, whichever
    /// worker took the client. Each worker numbers its own clients, so the numbers are
    /// interleaved by worker (worker w of n gives w+1, w+1+n, w+1+2n, …); `peers` has one inbox
    /// per worker and is set once before the loop starts. Computed, so an idle connection
    /// stores nothing more.
    var clientID: Int {
        let workers = max(worker.workerCount, 1)
        return (index &- 1) &* workers &+ worker.identifier &+ 1
    }

    init(descriptor: Int32, pool: PoolRuntime, worker: FrontendLoop) {
        self.descriptor = descriptor
        self.pool = pool
        self.worker = worker
        self.frontend = pool.config.protocolKind == .redis ? .redis : .memcachedUnchosen
        super.init(index: worker.nextClientIndex(), isRedis: pool.config.protocolKind == .redis, desk: worker.replies, poolCounters: pool.stats,
                   commandStats: pool.commandStats, outputLimit: pool.outputLimit)
    }

    /// A client another worker moved here between two requests (`Worker.rebalanceClients`).
    init(descriptor: Int32, pool: PoolRuntime, worker: FrontendLoop, moved: MovedClient) {
        self.descriptor = descriptor
        self.pool = pool
        self.worker = worker
        // The frontend travels with the client, as it stays with a client that is not moved: a
        // reload that changes a pool's protocol does not change its open connections'. The
        // errors Tern writes follow the frontend.
        self.frontend = moved.frontend
        self.redisAuthenticated = moved.redisAuthenticated
        let speaksRESP: Bool
        if case .redis = moved.frontend { speaksRESP = true } else { speaksRESP = false }
        super.init(index: worker.nextClientIndex(), isRedis: speaksRESP, desk: worker.replies, poolCounters: pool.stats,
                   commandStats: pool.commandStats, outputLimit: pool.outputLimit)
        // Who the client is (users, failed authentications, names, peer address) and its TLS
        // stream, which went with the socket (the session keys; a new handshake is
        // impossible). Nothing tied to the old worker's connections is in it (`isMovable`).
        rare = moved.rare
        moved.rare = nil
        // Names are shared per worker: take this worker's object for the same names.
        if let names = moved.redisNames { redisNames = worker.redisNames(names.names) }
        // Users generations are counted per worker: look the user up again by name.
        rare?.usersGeneration = Int.min
    }

    /// Between two requests with nothing pending (no request in flight or partly read, no reply
    /// waiting or held) and no state tied to this worker's backend connections (transaction,
    /// WATCH, blocking command, pub/sub): the connection may continue on another worker.
    var isMovable: Bool {
        guard !isClosed, !closeWhenDrained, slots.isEmpty, partial == nil, output.isEmpty, !isDirty, !isHeld,
              !inputDeferred, skipRemaining == 0, heldReplyBytes == 0 else { return false }
        // TLS: only an established stream with nothing decrypted and unread (the next worker's
        // watcher would not hear of those bytes) and no read or write waiting on the other
        // direction.
        if let tls, !tls.isEstablished || tls.hasPending || tls.readWantsWrite || tls.writeWantsRead { return false }
        // (`CLIENT REPLY OFF` or `SKIP` in effect: rare, and not carried over.)
        if let session = redis { return !session.isTiedToWorker && redisReplyMode == .on }
        return true
    }

    /// A partial request at least this large left in the worker's shared buffer becomes the
    /// connection's input by taking that memory rather than being copied.
    static let takeScratchAbove = 64 << 10

    /// Stops serving the connection here without closing its socket (it `isMovable`), and
    /// returns what the next worker needs. The pool's open-client count is unchanged; this
    /// worker's share is lowered by the caller.
    func detachForMove() -> MovedClient {
        isClosed = true
        if let watcher {
            watcher.watch(0)
            worker.retire(watcher)
        }
        watcher = nil
        // The rare state goes whole: nothing in it may be tied to this worker's connections.
        precondition(redis?.isTiedToWorker != true, "a Redis session tied to its worker's connections does not move")
        let moved = MovedClient(frontend: frontend, redisAuthenticated: redisAuthenticated, redisNames: redisNames, rare: rare)
        rare = nil
        redisNames = nil
        worker.release(self)
        return moved
    }

    /// Strong references, so that the request path reaches the pool and the worker through
    /// `self` without taking references of its own (an unowned one is retained on every read).
    /// The worker's client table holds the client until it closes, so the cycle this makes is
    /// broken at `close()`.
    let worker: FrontendLoop

    /// Whether the client should stop being read: too much in flight for the size its replies
    /// run to (`inFlightWindow`; not while parsing is held, where reading goes on so that a
    /// blocked client's leaving is seen), or too many replies it has not read yet
    /// (backpressure; the hard limit is `client_output_limit`).
    @inline(__always)
    private var mustPauseReading: Bool {
        slots.count >= inFlightWindow && !parsingHeld || output.readableCount >= Self.outputHighWater
            || parsingHeld && (partial?.readableCount ?? 0) >= Self.heldInputLimit || inputDeferred
    }

    /// A delete that reaches a warm-up's old pool (`deletes: both`) waits, left in the buffer,
    /// for this client's earlier warm-up reads (`holdUntilAnswered`): sent at once, it reached
    /// the old pool before a read sent ahead of it asked there, and `get k` then `delete k`
    /// answered a miss for a key the old pool had (operator sweep 33). Only then: deletes
    /// pipelined after other requests, or after each other, are not held.
    func deleteMustWaitForWarmupReads() -> Bool {
        guard !slots.isEmpty, slots.contains(where: { $0.warmup != nil && !$0.isDone }) else { return false }
        holdUntilAnswered = true
        return true
    }

    /// Parsing waits for the replies in flight (`holdUntilAnswered`). Reading goes on, so that a
    /// client that leaves while held (blocked) is seen leaving, as Redis sees it; past
    /// `heldInputLimit` bytes waiting, reading pauses too.
    private var parsingHeld: Bool { holdUntilAnswered && !slots.isEmpty || isWaitingForServer }
    /// A blocking command of this client is on a dedicated connection or waiting for one
    /// (`waitedForDedicated` says only that one once waited; the servers' queues say whether one
    /// still does: it may have run, or timed out, since).
    private var isBlockedOnRedis: Bool {
        guard let extras = redisExtras else { return false }
        return extras.blocked.contains { $0.isCurrent }
            || extras.waitedForDedicated && pool.servers.contains { $0.hasWaiting(of: self) }
    }
    static let heldInputLimit = 1 << 20

    /// A reload moved keys: a blocked command's keys may now be placed on another server,
    /// where pushes go, and it would wait on the old one for ever. The client is closed (after
    /// the replies before it), as a subscriber whose channel moved is, and blocks again where
    /// its keys are when it reconnects. Cluster pools follow their slots themselves. Returns
    /// whether it closed the client.
    func endBlockingAfterMove() -> Bool {
        guard !isClosed, !closeWhenDrained, !pool.isCluster, isBlockedOnRedis else { return false }
        closeForServerFailure()
        return true
    }

    /// TLS records one read of a client decrypts at most (1 MiB of full records); the rest
    /// waits for the next loop pass (`Transport.read`).
    static let tlsRecordsPerRead = 64

    var hasRequestsInFlight: Bool { !slots.isEmpty }
    var hasPartialRequest: Bool { partial != nil }
    /// Bytes of a partial request and the buffer holding them (CLIENT INFO's qbuf).
    var partialRequestBytes: (count: Int, capacity: Int) { (partial?.readableCount ?? 0, partial?.capacity ?? 0) }

    func start() {
        lastActivity = worker.now
        lastWriteProgress = worker.now
        // Per connection, not per request (the message is made only at -v 7 and above).
        worker.logger.debug("pool \(pool.config.name): client \(index) (fd \(descriptor)) served by worker \(worker.identifier)")
        if tls == nil, let context = pool.plan.clientTLS {
            guard let stream = TLSStream(context: context, descriptor: descriptor, serverName: nil) else {
                pool.stats.clientErrors.add()
                Syscall.close(descriptor)
                pool.clientClosed()
                return
            }
            tls = stream
        }
        let watcher = IOWatcher.make(loop: worker.loop, descriptor: descriptor, owner: self) { _, watcher, events in
            // Lent without a retain: a client leaves its worker only through `release`, which
            // keeps it in `retired` until the end of the loop pass, so it outlives this call.
            Unmanaged<ClientConnection>.fromOpaque(tern_get_data(watcher)!)._withUnsafeGuaranteedRef { $0.handle(events: events) }
        }
        self.watcher = watcher
        worker.adopt(self)
        watcher.watch(TERN_EV_READ)
    }

    private func handle(events: Int32) {
        if let tls {
            if !tls.isEstablished {
                handshake(tls)
                return
            }
            // TLS can need the other direction: a read that wanted writability, a write that
            // wanted to read first.
            if events & TERN_EV_READ != 0 || tls.readWantsWrite { readRequests() }
            if events & TERN_EV_WRITE != 0 || tls.writeWantsRead { flush() }
            return
        }
        if events & TERN_EV_READ != 0 { readRequests() }
        if events & TERN_EV_WRITE != 0 { flush() }
    }

    /// One step of a TLS client's handshake; requests are read once it is done. A client that
    /// does not speak TLS (plain text on a TLS port) fails it and is closed at once.
    private func handshake(_ tls: TLSStream) {
        switch tls.handshake() {
        case .done:
            pool.stats.tlsHandshakes.add()
            if tls.context.userFromCertificate, let name = tls.peerCommonName() { authenticateByCertificate(name) }
            watcher?.watch(TERN_EV_READ)
            // Requests may have come with the handshake's last flight.
            readRequests()
        case .wantRead:
            watcher?.watch(TERN_EV_READ)
        case .wantWrite:
            watcher?.watch(TERN_EV_READ | TERN_EV_WRITE)
        case .closed:
            pool.stats.clientEOF.add()
            close()
        case let .failed(reason):
            pool.stats.tlsHandshakeFailures.add()
            if let suppressed = pool.tlsLog.admit(now: worker.now) {
                worker.logger.warning("pool \(pool.config.name): TLS handshake with \(peerAddress) failed: \(reason) (\(suppressed) more since the last line)")
            }
            close()
        }
    }

    /// `tls.user_from_certificate: cn`: a verified certificate naming a user logs the client in
    /// as that user, as `AUTH` would.
    private func authenticateByCertificate(_ name: String) {
        guard let user = pool.currentUser(named: name) else { return }
        authenticatedUser = user
        usersGeneration = pool.usersGeneration
        // Redis sessions: logged in (memcached clients are, once they have a user).
        redisAuthenticated = true
    }

    /// A partial request's buffer goes, memory and all, once its bytes have been used.
    @inline(__always)
    private func dropEmptyPartial() {
        if let kept = partial, kept.isEmpty { partial = nil }
    }

    private func readRequests() {
        guard !isClosed, !closeWhenDrained, !inputEnded else { return }
        // With no partial request pending, read into the worker's shared buffer, lent without a
        // reference (`partial ?? worker.scratch` took one per read): the worker holds it in a
        // `let` and outlives its clients.
        if let partial {
            readRequests(into: partial)
        } else {
            Unmanaged.passUnretained(worker.scratch)._withUnsafeGuaranteedRef { readRequests(into: $0) }
        }
    }

    private func readRequests(into buffer: ByteBuffer) {
        var reachedEnd = false
        // Held (parsing waits for a blocking command or a WATCH): at most `heldInputLimit`
        // bytes wait, give or take one read, rather than a whole read pass's 4 MiB.
        let cap = parsingHeld ? max(Self.heldInputLimit - buffer.readableCount, 1) : 4 << 20
        let readBefore = buffer.readableCount
        switch Transport.read(descriptor, tls, into: buffer, cap: cap, records: Self.tlsRecordsPerRead) {
        case .drained:
            break
        case .endOfFile:
            reachedEnd = true
        case .failed:
            pool.stats.clientErrors.add()
            close()
            return
        }
        // A TLS read that needs the socket writable (a key update's answer) resumes on EV_WRITE.
        if let tls, tls.readWantsWrite, let watcher { watcher.watch(watcher.events | TERN_EV_WRITE) }
        // A TLS read that brought no request bytes, only part of a record, is no activity, and
        // a record that stays incomplete is an incomplete request (`client_partial_timeout`):
        // a client trickling one record a byte at a time was never timed out (TLS sweep 32).
        let partialRecord = !reachedEnd && buffer.readableCount == readBefore && tls?.hasBufferedBytes == true
        if !partialRecord { lastActivity = worker.now }
        let wasPartial = partial != nil
        // A large request that fills the buffer may be handed to its server connection whole
        // rather than copied (`ServerConnection.forward`).
        let isLarge = buffer.readableCount >= ServerConnection.adoptThreshold
        let scratchCapacity = worker.scratch.capacity
        if isLarge { worker.largeInput = buffer }
        process(buffer)
        if isLarge { worker.largeInput = nil }
        if buffer === worker.scratch {
            // Keep what is left of a partial request in the connection's own buffer: a large
            // part by taking the shared buffer's memory, a small one by copying it.
            if buffer.readableCount >= Self.takeScratchAbove {
                let kept = ByteBuffer()
                kept.swapContents(with: buffer)
                partial = kept
            } else if !buffer.isEmpty {
                let kept = ByteBuffer()
                kept.append(buffer.readable)
                partial = kept
            }
            buffer.removeAll()
            // Memory taken from the shared buffer (here or by `ServerConnection.adopt`) is
            // replaced at once: the next large read then fills it without a doubling's copy.
            buffer.restore(capacity: scratchCapacity)
        }
        // A large Redis argument on its way: room for all of it at once, as Redis sizes its
        // query buffer. Never past the client's query limit: parsing may have stopped at a full
        // pipeline before the parser checked these lengths.
        if let partial, partial.readableCount >= Self.takeScratchAbove, let session = redis {
            partial.reserve(frame: min(RespRequestParser.declaredLength(partial.readable), requestLimits(session).maxRequestLength))
        }
        dropEmptyPartial()
        if partialRecord {
            if partialSince == 0 { partialSince = worker.now }
        } else if partial == nil {
            partialSince = 0
        } else if !wasPartial || partialSince == 0 {
            partialSince = worker.now
        }
        if reachedEnd {
            pool.stats.clientEOF.add()
            // Redis (and memcached) run what they read before they saw the end, unless the
            // client is blocked: requests waiting behind a hold or a full pipeline still run.
            if partial != nil, parsingHeld || mustPauseReading, !isBlockedOnRedis {
                inputEnded = true
                watcher?.watch(output.isEmpty ? 0 : TERN_EV_WRITE)
                return
            }
            closeWhenDrained = true
            // Redis drops a client the moment it closes, so nothing it was blocked on is
            // popped for nobody: neither does Tern wait for a blocked command's reply.
            if redis != nil { endBlockedCommands(deliverArrived: true) }
            watcher?.watch(0)
            closeIfDrained()
            return
        }
        if let tls {
            // Records left at the cap: the rest waits for the next pass, as requests past the
            // pass's budget do (the socket, or OpenSSL's buffer, still holds them).
            if tls.readReachedRecordCap, !isClosed, !closeWhenDrained { deferInput() }
            // Bytes already decrypted are not announced by the socket again; read them now
            // unless reading is paused (`flush` resumes it).
            if tls.hasPending, !isClosed, !closeWhenDrained, !mustPauseReading { readRequests() }
        }
    }

    /// Parses and routes every complete request in `buffer`, by the client's frontend (one
    /// switch per read, not per request).
    private func process(_ buffer: ByteBuffer) {
        switch frontend {
        case .redis:
            processRedis(buffer, RedisSession(client: self, arguments: worker.redisArguments))
        case .memcachedText:
            processMemcache(buffer)
        case .memcachedBinary:
            processBinary(buffer)
        case .memcachedUnchosen:
            // The binary protocol's request magic cannot start a text command.
            guard let first = buffer.readable.first else { return }
            frontend = first == BinaryRequestParser.requestMagic ? .memcachedBinary : .memcachedText
            process(buffer)
        }
    }

    /// Stops parsing when too many requests are in flight (reading resumes as replies leave),
    /// or while a held Redis session waits for its replies (reading goes on).
    @inline(__always)
    func pipelineIsFull() -> Bool {
        guard mustPauseReading else { return parsingHeld }
        watcher?.watch(watcher!.events & ~TERN_EV_READ)
        return true
    }

    /// Requests a client may begin in one loop pass. One read takes up to 4 MiB, and requests
    /// answered at once (`+QUEUED` in a transaction, `PING`, errors) are bounded otherwise only
    /// by a megabyte of replies waiting, about 100,000 of them: read and parsed in one go they
    /// held the worker's other clients for tens of milliseconds (337 ms for a 5-million-command
    /// transaction on a cluster pool). Requests sent on are bounded by the window of requests
    /// in flight (`ReplyOwner.maxInFlightShift`: 256), under this.
    static let requestsPerPass: UInt16 = 1024

    /// Counts a request begun in this loop pass; false past `requestsPerPass`, when the rest of
    /// the client's input waits for the next pass.
    @inline(__always)
    func mayBeginRequest() -> Bool {
        let pass = UInt8(truncatingIfNeeded: worker.passNumber) & 0x7f
        if passState & 0x7f != pass {
            passState = passState & 0x80 | pass
            begunInPass = 0
        }
        guard begunInPass < Self.requestsPerPass else {
            deferInput()
            return false
        }
        begunInPass &+= 1
        return true
    }

    /// Nothing more is read or parsed in this pass: the worker resumes the client at its next
    /// (`resumeDeferredInput`), after the loop has polled its other connections.
    @inline(never)
    private func deferInput() {
        guard !inputDeferred else { return }
        passState |= 0x80
        if let watcher { watcher.watch(watcher.events & ~TERN_EV_READ) }
        worker.deferInput(self)
    }

    /// The pass after `deferInput`: the client is written and what it sent is parsed again
    /// (`flush`), and reading resumes unless parsing stops once more.
    func resumeDeferredInput() {
        guard inputDeferred else { return }
        passState &= 0x7f
        guard !isClosed else { return }
        worker.markDirty(self)
    }

    // MARK: Replies

    override var closesOnServerFailure: Bool { pool.config.closesClientsOnServerFailure }

    /// A request whose server failed is next (`close_on_server_failure`): nothing more is read
    /// or answered; the replies already in the output are written, then the connection closes,
    /// as a client of the server itself sees its connection end (requests behind it end with
    /// the connection, as they would on the server's).
    override func holdLaterRequests() { holdUntilAnswered = true }

    override func closeForServerFailure() {
        guard !isClosed, !closingForServerFailure else { return }
        closingForServerFailure = true
        pool.stats.clientErrors.add()
        worker.logger.debug("pool \(pool.config.name): closing client \(index): a request's server failed (close_on_server_failure)")
        closeWhenDrained = true
        inputEnded = false
        watcher?.watch(output.isEmpty ? 0 : TERN_EV_WRITE)
        closeIfDrained()
    }

    /// Past `client_output_limit` (`ReplyOwner.checkOutputLimit`): logged, counted, closed.
    override func closeOverOutputLimit() {
        if let suppressed = pool.limitLog.admit(now: worker.now) {
            worker.logger.warning("pool \(pool.config.name): client exceeded client_output_limit (\(pool.config.clientOutputLimit) bytes), closing it (\(suppressed) more since the last line)")
        }
        pool.stats.clientErrors.add()
        pool.stats.overLimit.add()
        close()
    }

    override func pushNotice(_ frame: UnsafeRawBufferPointer, on connection: ObjectIdentifier) -> Bool {
        shardChannelLeft(frame, on: connection)
    }

    override func pushRedirected(_ request: UnsafeRawBufferPointer, to redirect: ClusterRedirect?, follow: Bool, redirects: UInt8, deadline: Double,
                                 slot: ReplySlot, part: Int32, on connection: ObjectIdentifier) -> Bool {
        shardSubscribeMoved(request, to: redirect, follow: follow, redirects: redirects, deadline: deadline, slot: slot, part: part, on: connection)
    }

    override func slowLogIdentity() -> (client: String, name: String) {
        // Redis keeps a client name in the slow log; a long one is cut (names are client input).
        (peerAddress, String((redis?.name ?? "").utf8.prefix(SlowLog.maxArgumentLength)) ?? "")
    }

    /// Writes the output: called once per loop pass by the worker. With `allowHold`, replies
    /// ready while later replies of the same pipeline are still in flight wait one loop pass
    /// (see `Worker.flushAll`), so that a pipeline whose keys live on different backends is
    /// usually answered in one write rather than one per backend.
    func flush(allowHold: Bool = false) {
        guard !isClosed else { return }
        if allowHold, !slots.isEmpty, !output.isEmpty, output.readableCount < Self.holdLimit, !closeWhenDrained {
            worker.hold(self)
            return
        }
        if output.isEmpty {
            lastWriteProgress = worker.now
        } else {
            switch Transport.write(descriptor, tls, output.readable) {
            case let .transferred(count):
                if count > 0 { lastWriteProgress = worker.now }
                output.consume(count)
            case .wouldBlock:
                break
            case .failed, .endOfFile:
                pool.stats.clientErrors.add()
                close()
                return
            }
        }
        // Written out: the output's first 4 KiB go back to the worker's small blocks (an idle
        // client holds no output buffer); a larger buffer stays up to 64 KiB for a client that
        // needs one reply after another, until a second of idleness (`releaseIdleMemory`).
        if output.isEmpty { output.releaseIfIdleOrSmall(keep: 65536) }
        var events: Int32 = closeWhenDrained || mustPauseReading || inputEnded ? 0 : TERN_EV_READ
        if !output.isEmpty || tls?.readWantsWrite == true { events |= TERN_EV_WRITE }
        if tls?.writeWantsRead == true { events |= TERN_EV_READ }
        // Usually unchanged: compared here, so that no reference to the watcher is taken.
        if let current = watcher?.events, current != events { watcher?.watch(events) }
        if closeIfDrained() { return }
        // A hold ends once every reply in flight is out.
        if holdUntilAnswered, slots.isEmpty { holdUntilAnswered = false }
        // Reading was paused by a full pipeline, or parsing by a hold: parse what is buffered.
        if !closeWhenDrained, !mustPauseReading, let partial {
            process(partial)
            dropEmptyPartial()
            // Nothing partial left: the slowloris clock stops (as after a read). Bytes left
            // after a pause start it again: the wait was Tern's, not the client's (a client
            // gets here once per batch of complete requests answered, so a slowloris gains
            // nothing by it).
            partialSince = self.partial == nil ? 0 : worker.now
        }
        if inputEnded, isBlockedOnRedis || !parsingHeld && !mustPauseReading {
            // Everything read has been parsed (an incomplete request at the end is dropped),
            // or a blocking command among it is out: Redis would see the end now. (Parsing
            // paused by a full pipeline or unread output goes on at a later flush.)
            inputEnded = false
            closeWhenDrained = true
            partial = nil
            partialSince = 0
            if redis != nil { endBlockedCommands(deliverArrived: true) }
            watcher?.watch(output.isEmpty ? 0 : TERN_EV_WRITE)
            if closeIfDrained() { return }
        }
        // TLS bytes decrypted while reading was paused.
        if let tls, tls.hasPending, !isClosed, !closeWhenDrained, !mustPauseReading { readRequests() }
    }

    /// Reload removed the pool, or Tern is draining: no new requests are read; the connection
    /// closes as soon as the replies to requests already read have been written.
    func finishAndClose() {
        guard !isClosed else { return }
        closeWhenDrained = true
        watcher?.watch(output.isEmpty ? 0 : TERN_EV_WRITE)
        closeIfDrained()
    }

    @discardableResult
    private func closeIfDrained() -> Bool {
        guard closeWhenDrained, slots.isEmpty || closingForServerFailure, output.isEmpty else { return false }
        close()
        return true
    }

    /// Called once a second by the worker: slowloris and idle clients are closed.
    func checkTimeouts(now: Double) {
        guard !isClosed else { return }
        let config = pool.config
        if let tls, !tls.isEstablished, now - lastActivity > Self.handshakeTimeout {
            pool.stats.tlsHandshakeFailures.add()
            close()
            return
        }
        // Not while reading or parsing is paused: the client waits for Tern then (a full
        // pipeline, a blocking command it sent more behind), not the other way round.
        if config.clientPartialTimeoutMilliseconds > 0, partialSince > 0, !mustPauseReading, !(holdUntilAnswered && partial != nil), !isWaitingForServer,
           now - partialSince > Double(config.clientPartialTimeoutMilliseconds) / 1000 {
            worker.logger.info("pool \(config.name): closing a client whose request stayed incomplete for \(config.clientPartialTimeoutMilliseconds) ms")
            pool.stats.clientErrors.add()
            close()
            return
        }
        // Replies waiting and none taken for as long: a client that stopped reading.
        if config.clientPartialTimeoutMilliseconds > 0, !output.isEmpty,
           now - lastWriteProgress > Double(config.clientPartialTimeoutMilliseconds) / 1000 {
            worker.logger.warning("pool \(config.name): closing a client that stopped reading its replies (\(output.readableCount) bytes waiting)")
            pool.stats.clientErrors.add()
            close()
            return
        }
        if config.clientIdleTimeoutMilliseconds > 0, slots.isEmpty, partial == nil,
           now - lastActivity > Double(config.clientIdleTimeoutMilliseconds) / 1000 {
            close()
            return
        }
        releaseIdleMemory(now: now)
    }

    /// A client that has read and written nothing for a second, with nothing in flight, partly
    /// read or waiting to be written, gives back what it kept for its next request: an output buffer
    /// that had grown past 4 KiB (kept up to 64 KiB between requests, so that a busy client
    /// does not grow one per reply) and its reply queue's ring. Called by the worker's
    /// once-a-second sweep: a client busy again allocates these once, not per request.
    private func releaseIdleMemory(now: Double) {
        // Nothing read and nothing written for a second (a subscriber that only receives
        // messages is flushed with each, so it keeps its buffers while they come).
        guard now - lastActivity >= 1, now - lastWriteProgress >= 1, slots.isEmpty, partial == nil, output.isEmpty, !isHeld else { return }
        output.releaseIfIdle()
        slots.releaseStorageIfEmpty()
    }

    override func close() {
        guard !isClosed else { return }
        isClosed = true
        worker.logger.debug("pool \(pool.config.name): client \(index) (fd \(descriptor)) closed, \(slots.count) replies pending")
        if let watcher {
            watcher.watch(0)
            worker.retire(watcher)
        }
        watcher = nil
        // close_notify (if the socket takes it) before the socket closes.
        if let tls {
            tls.shutdown()
            worker.tlsClientsClosed += 1
        }
        tls = nil
        worker.closeClientSocket(descriptor, wasSending: partial != nil || !slots.isEmpty || inputDeferred)
        if redis != nil { endRedisSession() }
        // Requests still in flight finish into slots nobody reads; the worker keeps those until
        // nothing reaches them (backend entries name slots without a reference, and a request
        // path may be using one lent by `withNewSlot`): see `ReplyDesk.orphans`.
        while let slot = slots.popFirst() {
            slot.client = nil
            if slot.isDone { desk.recycle(slot) } else { desk.adoptOrphan(slot) }
        }
        pool.clientClosed()
        worker.release(self)
    }
}

extension ClientConnection {
    /// The protocol a client speaks: chosen by its listener (the pool's `protocol`), and for
    /// memcached by the client's first byte (text and meta, or binary). A closed enum, so the
    /// request path is picked by one `switch` per read (`process`), with no existential or
    /// closure dispatch. One byte: RESP's per-connection state is in the connection
    /// (`RedisSession`).
    enum Frontend {
        /// memcached, before the first byte has come.
        case memcachedUnchosen
        /// memcached text and meta commands (`MemcacheSession.swift`).
        case memcachedText
        /// memcached binary packets (`MemcacheBinarySession.swift`).
        case memcachedBinary
        /// RESP2 (`RedisSession.swift` and its neighbours).
        case redis
    }
}

/// A client connection's state that few connections need (see `ClientConnection.rare`).
/// Owned by its connection, on its worker's thread.
final class RareClientState {
    var authenticatedUser: RedisUser?
    var authFailures = 0
    var usersGeneration = 0
    var peerText: String?
    var tls: TLSStream?
    var skipRemaining = 0
    /// The client closed its side while a hold or a full pipeline kept what it sent (`ClientConnection.inputEnded`).
    var inputEnded = false
    /// `ClientConnection.closingForServerFailure`.
    var closingForServerFailure = false
    /// `ClientConnection.waitForServerSince`, `waitForServerWake`.
    var waitForServerSince: Double = 0
    var waitForServerWake: Double = 0
    /// A Redis client's transaction, WATCH, blocked commands and subscriptions.
    var redisExtras: RedisSessionExtras?
}

/// A client's state on its way from one worker to another (`Worker.rebalanceClients`).
///
/// `@unchecked Sendable`: the rare state (users, the TLS stream) is loop-confined.
/// Invariant: the source worker builds this from a client it has just detached (no watcher,
/// no slot, out of its client table and dirty lists, its TLS stream no longer used), keeps no
/// reference to the client or those states, and posts this once to the target worker's
/// inbox (a mutex: the hand-over is ordered); only the target touches it afterwards, and it
/// clears them once the new connection owns them.
final class MovedClient: @unchecked Sendable {
    let frontend: ClientConnection.Frontend
    let redisAuthenticated: Bool
    /// Immutable (`Sendable`); the adopting worker takes its own object for the same names.
    let redisNames: SharedRedisNames?
    var rare: RareClientState?

    init(frontend: ClientConnection.Frontend, redisAuthenticated: Bool, redisNames: SharedRedisNames?, rare: RareClientState?) {
        self.frontend = frontend
        self.redisAuthenticated = redisAuthenticated
        self.redisNames = redisNames
        self.rare = rare
    }
}
