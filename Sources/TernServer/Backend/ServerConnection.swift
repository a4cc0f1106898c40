#if canImport(Glibc)
import Glibc
#endif
import CLibev
import TernCore

/// One connection to a backend, owned by one worker.
///
/// Request life cycle on a backend connection:
///
///     client parses ──► enqueue(bytes, slot) ──► output buffer ──(one write per loop pass)──► backend
///                                │
///                                └──► pending FIFO ◄── reply framed by the codec ◄── input buffer
///
/// Backends answer in order, so the n-th reply belongs to the n-th pending entry. A timed-out
/// entry is answered with an error at once and stays in the FIFO without a slot, so its late
/// reply is recognised and dropped; when nothing but such entries remain, the connection is
/// closed rather than trusted. A connection error fails only the entries on this connection.
final class ServerConnection {
    /// What a pending request is for: its reply goes to a client, or Tern itself reads it.
    enum Purpose: UInt8 {
        /// A part of a client's request: the reply goes to `slot` (nil once it timed out or
        /// its client left; the late reply is then dropped).
        case client
        /// Tern's probe of an ejected server (`auto_eject_hosts`).
        case probe
        /// AUTH / READONLY sent by Tern when the connection opened.
        case setup
        /// SELECT sent by Tern when the connection opened: refused, the requests behind it would
        /// run on database 0, so the connection fails.
        case selectDatabase
        /// A warm-up copy into this (new) pool: counted, never answered to a client.
        case backfill
        /// A probe that timed out: its late reply is dropped.
        case expiredProbe
        /// A warm-up copy taken back (`WarmupCopy`): its reply is dropped.
        case backfillUndo

        /// What Tern sends as a connection opens (not counted as the server's requests).
        var isConnectionSetup: Bool { self == .setup || self == .selectDatabase }
    }

    struct Pending {
        /// The slot this entry answers, named without a reference: a retain when queued and a
        /// release when answered were an atomic pair per request. Safe because a slot is freed
        /// only by its worker's sweep, never while an entry names it: every entry is counted in
        /// `ReplySlot.queuedEntries` from `enqueue` until it leaves `pending` (`popEntry`) or
        /// lets go of its slot (`clearSlot`); see `ReplyDesk.orphans`.
        private var slotReference: Unmanaged<ReplySlot>?
        var part: Int32
        /// How the memcached reply is framed (unused for Redis, whose replies frame themselves).
        var framing: MemcacheFraming
        var deadline: Double
        var purpose: Purpose
        /// Cluster pools: redirects (`-MOVED`/`-ASK`) and `-TRYAGAIN` retries this request has
        /// followed so far (`ClusterState.hops`, `.retries`), and whether it was sent after
        /// `ASKING`.
        var redirects: UInt8 = 0
        var isAsking = false
        /// A warm-up copy (`.backfill`, whose `part` is its key's bucket): the bucket's delete
        /// epoch its read noted (`WarmupInvalidations`). In the padding after the flags above:
        /// the entry is no larger.
        var noted: UInt32 = 0
        /// Bytes of the request, and when it was queued (loop time), for the stats.
        var bytes = 0
        var queuedAt: Double = 0

        init(slot: ReplySlot?, part: Int32, framing: MemcacheFraming, deadline: Double, purpose: Purpose,
             redirects: UInt8, isAsking: Bool, bytes: Int, queuedAt: Double) {
            slotReference = slot.map { Unmanaged.passUnretained($0) }
            self.part = part
            self.framing = framing
            self.deadline = deadline
            self.purpose = purpose
            self.redirects = redirects
            self.isAsking = isAsking
            self.bytes = bytes
            self.queuedAt = queuedAt
        }

        /// The slot (off the per-request path: the caller takes a reference).
        var slot: ReplySlot? { slotReference?.takeUnretainedValue() }
        var hasSlot: Bool { slotReference != nil }

        /// The slot lent to `body`, with no reference taken: the per-request delivery.
        @inline(__always)
        func withSlot<Result>(_ body: (ReplySlot) -> Result) -> Result? {
            slotReference?._withUnsafeGuaranteedRef(body)
        }

        /// The entry stays queued but answers nobody (its request timed out): its late reply is
        /// dropped, and it no longer counts toward its slot's `queuedEntries`.
        mutating func clearSlot() {
            slotReference?._withUnsafeGuaranteedRef { $0.queuedEntries &-= 1 }
            slotReference = nil
        }
    }

    /// Takes the head entry out of `pending`: from here it no longer counts toward its slot's
    /// `queuedEntries` (the caller uses it within this loop pass, in which no slot is freed).
    /// Every entry leaves `pending` through here.
    @inline(__always)
    private func popEntry() -> Pending? {
        guard let entry = pending.popFirst() else { return nil }
        entry.withSlot { $0.queuedEntries &-= 1 }
        return entry
    }

    /// `handshaking`: TLS pools, between the TCP connect and the end of the TLS handshake.
    enum State { case disconnected, connecting, handshaking, connected }

    unowned(unsafe) let server: BackendServer
    /// A warm-up old server without meta commands was reported (once, at warning level).
    private var warnedNoMetaCommands = false
    /// Connects Tern could not start for want of its own descriptors (or memory).
    private var localLimitLog = LogThrottle()
    private(set) var descriptor: Int32 = -1
    private(set) var state = State.disconnected
    /// Requests not yet answered or not yet sent, in order: the pieces of `adopted` first (large
    /// requests whose client buffers were taken over, and what `output` held before each), then
    /// `output`. Offsets below (`requestStart`, `sentBytes`, `answeredBytes`) run over all of
    /// them (`outputCount`); a request's bytes never straddle two pieces.
    private let output = ByteBuffer()
    private var adopted = FIFO<ByteBuffer>(initialCapacity: 2)
    private var adoptedBytes = 0
    private var outputCount: Int { adoptedBytes &+ output.readableCount }
    /// Requests at least this large, forwarded as the client sent them and filling its buffer,
    /// take that buffer's memory instead of being copied (`forward`).
    static let adoptThreshold = 256 << 10
    private let input = ByteBuffer()
    /// A large bulk reply being forwarded to its client as it arrives, and its bytes still to
    /// come (see `startStreaming`).
    private var stream: ReplySlot?
    private var streamRemaining = 0
    /// A streamed reply that makes no progress for the pool's `timeout` fails (its client,
    /// which has part of it, is closed): loop time by which the next bytes must come.
    private var streamDeadline = Double.infinity
    /// Bulk replies at least this large, to a client waiting for nothing else first, are
    /// streamed rather than buffered whole.
    static let streamThreshold = ReplyOwner.streamThreshold
    /// Where framing of the head reply resumes (memcached multi-value replies arriving in pieces).
    private var replyResumeOffset = 0
    private var pending = FIFO<Pending>()
    private var watcher: IOWatcher?
    /// `server_tls` pools: the TLS stream over the socket (nil: plain TCP).
    private var tls: TLSStream?
    private var timer: TimerWatcher?
    /// Whether `timer` is running, kept here so the request path checks a Bool rather than
    /// taking a reference to the watcher.
    private var isTimerArmed = false
    /// When the armed timer fires (a redirected request may need it sooner).
    private var timerDeadline = 0.0
    var isDirty = false
    /// A connect that failed synchronously; reported at the next flush.
    private var pendingError: Int32 = 0
    /// Where the request being written started in `output`, and bytes of requests awaiting replies.
    private var requestStart = 0
    private var pendingBytes = 0
    /// A request's bytes stay in `output` until its reply has come (the slow log reads them
    /// there): `output` holds, in order, bytes answered but not yet released, bytes sent and
    /// awaiting replies, and bytes not yet sent. `sentBytes` counts the first two,
    /// `answeredBytes` the first; bytes both sent and answered are released.
    private var sentBytes = 0
    private var answeredBytes = 0
    /// Requests written into `output` but not yet sent.
    private var unsentRequests = 0
    /// Consecutive connection failures: the next connect waits 50 ms × 2^n (at most 2 s).
    private var consecutiveFailures = 0
    private var retryAfter: Double = 0
    private var lastError = ""
    var counters: ServerCounters { server.counters }

    /// The worker's loop, for its clock: reading the time through `worker` would take a
    /// reference to the worker on every request.
    private let loop: OpaquePointer

    init(server: BackendServer, isDedicated: Bool = false) {
        self.server = server
        self.worker = server.pool.backendLoop
        self.loop = server.pool.backendLoop.loop
        self.isDedicated = isDedicated
    }

    /// Leased to one client at a time (`ServerRuntime.leaseDedicated`): never in the shared table.
    let isDedicated: Bool
    /// Dedicated connections: counts leases, so a client can tell its lease from a later one.
    var lease = 0
    var isLeased = false
    /// Leased for a blocking command (counted as a blocked client until it comes back).
    var isBlocking = false
    /// Dedicated connections: go back to the server once nothing is in flight.
    var returnWhenIdle = false
    /// Push connections: the request whose reply came last, while the connection owes it more
    /// (its entries are consecutive); nil once it owes it nothing, so a slot recycled since is
    /// never taken for it.
    private var lastAnsweredSlot: ObjectIdentifier?
    /// A dedicated connection for one request that needs no database (SCRIPT KILL): opened
    /// without `SELECT`, which a server running a script refuses (`-BUSY`), and closed rather
    /// than kept when it comes back, so that nothing else runs on the wrong database.
    var isScratch = false
    /// Pub/sub: the subscribed client this connection pushes messages to (nil for every other
    /// connection). Messages are not replies: they go to the client as they come; the
    /// subscribe/unsubscribe confirmations and PONGs pair with requests as usual.
    var pushClient: ReplyOwner?
    /// Counts the sockets opened: a WATCH is valid only on the socket it was sent on.
    private(set) var generation = 0
    var isOpen: Bool { state != .disconnected }

    /// A strong reference, so that the request path reaches the worker through `self` without
    /// taking a reference of its own (an unowned one is retained on every read). The worker
    /// outlives its pools; this does not keep the connection alive.
    let worker: BackendLoop
    private var timeout: Double? { server.pool.timeoutSeconds }

    /// Where a request's bytes go. Opens the connection first if needed, so that anything Tern
    /// sends on a new connection (AUTH, SELECT) goes ahead of the request.
    @inline(__always)
    func requestBuffer() -> ByteBuffer {
        beginRequest()
        return output
    }

    /// Opens the connection if needed and marks where the next request's bytes start.
    @inline(__always)
    private func beginRequest() {
        if state == .disconnected { connectIfNeeded(forRequest: true) }
        requestStart = outputCount
    }

    /// Adds a request whose bytes the caller has just written into `requestBuffer()`.
    /// `blockFor`: seconds a blocking command may take beyond the pool's timeout (nil: it
    /// may block forever, so no proxy timeout applies). `deadline`: a redirected request's,
    /// kept from its first send (its timeout spans every hop).
    @inline(__always)
    func enqueue(slot: ReplySlot?, part: Int32, framing: MemcacheFraming, purpose: Purpose = .client,
                 blockFor: Double? = 0, redirects: UInt8 = 0, isAsking: Bool = false, deadline given: Double? = nil) {
        let now = ev_now(loop)
        var deadline = Double.infinity
        if let given, given.isFinite {
            deadline = given
            // Earlier than the armed timer (set for a request queued before): brought forward.
            if !isTimerArmed || given < timerDeadline { armTimer(after: max(0, given - now)) }
        } else if given == nil, let timeout, let blockFor {
            deadline = now + timeout + blockFor
            if !isTimerArmed { armTimer(after: timeout + blockFor) }
        }
        let bytes = outputCount - requestStart
        requestStart = outputCount
        slot?.queuedEntries &+= 1
        pending.append(Pending(slot: slot, part: part, framing: framing, deadline: deadline, purpose: purpose, redirects: redirects, isAsking: isAsking, bytes: bytes, queuedAt: now))
        pendingBytes += bytes
        unsentRequests += 1
        // Read through `counters` each time, not bound to a local (a local would be retained).
        // Tern's own AUTH, SELECT and READONLY on a new connection are not clients' requests:
        // counted, each connection added one to `requests` and `responses` (nutcracker's
        // meanings are forwarded requests; operator sweep 33).
        if !purpose.isConnectionSetup {
            counters.requests.add()
            counters.requestBytes.add(bytes)
        }
        counters.inQueue.add()
        counters.inQueueBytes.add(bytes)
        worker.markDirty(self)
    }

    /// A warm-up copy of a key in delete `bucket`, whose read noted `epoch`: checked again when
    /// stored (see the reply's handling).
    func enqueueBackfill(framing: MemcacheFraming, bucket: Int, epoch: UInt32) {
        enqueue(slot: nil, part: Int32(bucket), framing: framing, purpose: .backfill)
        pending[pending.count - 1].noted = epoch
    }

    /// A request forwarded as the client sent it, answering part 0 of `slot`: the common case,
    /// written here so that the output buffer is reached through `self` (no reference taken).
    func forward(_ frame: UnsafeRawBufferPointer, slot: ReplySlot, framing: MemcacheFraming) {
        beginRequest()
        if frame.count >= Self.adoptThreshold, let source = worker.largeInput, source.readable.baseAddress == frame.baseAddress,
           source.readableCount - frame.count <= frame.count / 4 {
            adopt(frame.count, of: source)
        } else {
            output.append(frame)
        }
        enqueue(slot: slot, part: ReplyPart.whole, framing: framing)
    }

    /// A large request at the start of `source` (the client buffer being parsed), followed by
    /// at most a quarter of its size: `source`'s memory becomes a piece of this connection's
    /// output and what followed the request is copied into fresh memory for `source`, so a
    /// 16 MiB SET is not copied. The request's bytes stay where they are (the caller may still
    /// read them until it returns) and are freed once written and answered (`releaseAnswered`);
    /// the parsing loop is told not to consume them (`Worker.tookLargeRequest`).
    @inline(never)
    private func adopt(_ count: Int, of source: ByteBuffer) {
        if !output.isEmpty {
            // What is already queued goes first, as a piece of its own.
            let earlier = ByteBuffer()
            earlier.swapContents(with: output)
            adoptedBytes += earlier.readableCount
            adopted.append(earlier)
        }
        let piece = ByteBuffer()
        piece.take(count, of: source, used: count)
        adoptedBytes += count
        adopted.append(piece)
        worker.tookLargeRequest = true
    }

    /// Bytes `range` of the output (a request's, which never straddle two pieces).
    private func outputBytes(_ range: Range<Int>) -> UnsafeRawBufferPointer? {
        var start = range.lowerBound
        for index in 0..<adopted.count {
            let count = adopted[index].readableCount
            if start < count {
                guard range.count <= count - start else { return nil }
                return UnsafeRawBufferPointer(rebasing: adopted[index].readable[start..<(start + range.count)])
            }
            start -= count
        }
        guard start >= 0, start + range.count <= output.readableCount else { return nil }
        return UnsafeRawBufferPointer(rebasing: output.readable[start..<(start + range.count)])
    }

    private var isRedis: Bool { server.pool.isRedis }

    /// Cluster pools: a request redirected here (`PoolRuntime.followRedirect`), for part `part`
    /// of `slot`. For `-ASK`, `ASKING` goes first, in the same piece of output; its `+OK` has no
    /// slot and is dropped (an error there makes the request itself fail with the node's error).
    func resend(_ request: RedirectedRequest, asking: Bool) {
        beginRequest()
        if asking {
            RespEncoder.command("ASKING", into: output)
            enqueue(slot: nil, part: 0, framing: .line)
        }
        request.bytes.withUnsafeBytes { output.append($0) }
        enqueue(slot: request.slot, part: request.part, framing: .line, redirects: request.redirects, isAsking: asking, deadline: request.deadline)
    }

    /// Cluster pools: the head reply is an error; if it is `-MOVED`/`-ASK` and the request may
    /// follow it, its bytes (answered, still in `output`, just before `answeredBytes`) go to
    /// the node named and true is returned; after `-TRYAGAIN` they go to this node again a
    /// little later. A MOVED also asks for a new slot map. Requests on dedicated connections
    /// (WATCH, blocking) and parts of a phased request that must not go alone (a transaction's
    /// queued commands) are not redirected here: the phased request decides (`FirstWatch`,
    /// `ClusterExec`, `ClusterBlocking`), else the client gets the error. On a push connection
    /// a MOVED goes to its client (`pushRedirected`), which follows it on its own push
    /// connection to the node named.
    @inline(never)
    private func followRedirect(_ head: Pending, replyLength length: Int) -> Bool {
        let reply = UnsafeRawBufferPointer(rebasing: input.readable[0..<length])
        let redirect = ClusterRedirect.parse(reply)
        let isTryAgain = redirect == nil && ClusterRedirect.isTryAgain(reply)
        guard redirect != nil || isTryAgain else { return false }
        let pool = server.pool
        if let redirect, !redirect.isAsk { pool.plan.shared.cluster.requestRefresh() }
        let start = answeredBytes - head.bytes
        if let pushClient {
            // SSUBSCRIBE racing a slot move: the client's push connection to the node named
            // (a MOVED); an ASK or TRYAGAIN is not followed there, but the client forgets the
            // channel the error refused.
            guard let slot = head.slot, start >= 0, let bytes = outputBytes(start..<answeredBytes) else { return false }
            let movable = redirect.map { !$0.isAsk } ?? false
            let follow = movable && ClusterState.hops(head.redirects) < ClusterState.maxRedirects
            if movable, !follow { pool.plan.shared.cluster.redirectsGivenUp.add(1, ordering: .relaxed) }
            return pushClient.pushRedirected(bytes, to: movable ? redirect : nil, follow: follow, redirects: head.redirects &+ ClusterState.oneHop,
                                             deadline: head.deadline, slot: slot, part: head.part, on: ObjectIdentifier(self))
        }
        guard !isDedicated, let slot = head.slot, let client = slot.client, start >= 0,
              slot.warmup?.partsFollowRedirects ?? true, let bytes = outputBytes(start..<answeredBytes) else {
            return false
        }
        let withinBudget = redirect != nil ? ClusterState.hops(head.redirects) < ClusterState.maxRedirects
                                            : ClusterState.retries(head.redirects) < ClusterState.maxTryAgain
        guard withinBudget else {
            pool.plan.shared.cluster.redirectsGivenUp.add(1, ordering: .relaxed)
            return false
        }
        let redirects = head.redirects &+ (redirect != nil ? ClusterState.oneHop : ClusterState.oneRetry)
        pool.redirected(redirect, RedirectedRequest(bytes: Array(bytes), error: Array(reply), slot: slot, part: head.part, redirects: redirects,
                                                    clientIndex: client.index, deadline: head.deadline),
                        server: server.name, asking: head.isAsking)
        return true
    }

    func sendProbe() {
        let buffer = requestBuffer()
        if isRedis {
            RespEncoder.command("PING", into: buffer)
        } else {
            buffer.append(MemcacheEncoder.version)
        }
        enqueue(slot: nil, part: 0, framing: .line, purpose: .probe)
    }

    /// Redis: authenticate and select the pool's database before any client request; a cluster
    /// replica (`read_from`) is told `READONLY` so that it serves its master's slots.
    private func sendSetup() {
        let config = server.pool.config
        guard isRedis else { return }
        defer {
            if server.isReplica {
                requestStart = outputCount
                RespEncoder.command("READONLY", into: output)
                enqueue(slot: nil, part: 0, framing: .line, purpose: .setup)
            }
        }
        if let password = config.redisAuth {
            requestStart = outputCount
            RespEncoder.command("AUTH", password, into: output)
            enqueue(slot: nil, part: 0, framing: .line, purpose: .setup)
        }
        if config.redisDatabase != 0, !isScratch {
            requestStart = outputCount
            RespEncoder.command("SELECT", decimal: config.redisDatabase, into: output)
            enqueue(slot: nil, part: 0, framing: .line, purpose: .selectDatabase)
        }
    }

    /// `forRequest`: a request is about to be queued on the connection. While the server's
    /// connects are refused (nothing listens: a restart), a request tries a connect inside the
    /// backoff too, at most one every `refusedRetryInterval` per worker, so a server back from a
    /// restart is reached within that time, as through nutcracker (which tries a connect for
    /// every request), not up to a whole backoff step (2 s) later, failing every request
    /// meanwhile (the drop-in sweep: 0.9–1.1 s of `Connection refused` after each restart). A
    /// refusal costs both hosts one round trip; a server that does not answer at all (timed
    /// out) keeps the backoff, so requests do not each wait out a connect timeout.
    func connectIfNeeded(forRequest: Bool = false) {
        guard state == .disconnected else { return }
        if worker.now < retryAfter || worker.now < server.connectRetryAfter {
            // (A wall clock stepped back does not hold the retry off: ev_now is wall time.)
            if forRequest, refusedRetryIsDue {
                beginConnect()
                return
            }
            // Backing off after failures (this connection's, or connects to the server by any
            // of its connections): fail fast instead of hammering a dead server.
            if worker.now >= retryAfter { lastError = server.connectError }
            pendingError = -1
            worker.markDirty(self)
            return
        }
        beginConnect()
    }

    /// The connect (and TLS handshake) completed: the server's connect backoff ends, and the
    /// clients waiting for it look again.
    private func didConnect() {
        server.connectSucceeded()
        retryBeforeLastChance = 0
        state = .connected
        counters.serverConnections.add()
        worker.serverConnectSettled()
    }

    /// Opens the socket and starts the connect (`connectIfNeeded` once the backoff allows it,
    /// `connectBeforeWaitEnds` inside it).
    private func beginConnect() {
        if server.address.family == AF_UNSPEC {
            // A Sentinel master whose address no sentinel has given yet, or a server whose
            // host name did not resolve at start: fail at once.
            lastError = server.pool.isSentinel ? "master address not known yet (no sentinel has named it)" : "Host is down (its name did not resolve)"
            pendingError = -1
            worker.markDirty(self)
            return
        }
        let fd = socket(server.address.family, Int32(SOCK_STREAM.rawValue) | TERN_SOCK_NONBLOCK | TERN_SOCK_CLOEXEC, 0)
        guard fd >= 0 else {
            // Tern's own descriptors or memory ran out: the server did not fail. Counted against
            // it, a healthy server was ejected for 30 s (`auto_eject_hosts`), every server of a
            // worker at once (resource limits sweep 30).
            let error = errno
            if error == EMFILE || error == ENFILE || error == ENOBUFS || error == ENOMEM {
                lastError = Syscall.errorText(error) + " (Tern's own limit; the server is not counted as failing)"
                pendingError = -3
            } else {
                pendingError = error
            }
            worker.markDirty(self)
            return
        }
        if server.address.family != AF_UNIX {
            Syscall.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY)
            if server.pool.config.tcpKeepalive { Syscall.setOption(fd, SOL_SOCKET, SO_KEEPALIVE) }
        }
        server.lastConnectAt = worker.now
        let result = server.address.withSockaddr { Glibc.connect(fd, $0, $1) }
        descriptor = fd
        generation += 1
        if result == 0, server.address.family != AF_UNIX, Syscall.isConnectedToItself(fd) {
            Syscall.resetOnClose(fd)
            pendingError = -2
            state = .connecting
            worker.markDirty(self)
        } else if result == 0 {
            if server.pool.plan.serverTLS != nil {
                state = .handshaking
            } else {
                // (With TLS the connect succeeds once the handshake does.)
                didConnect()
            }
        } else if errno == EINPROGRESS || errno == EAGAIN {
            state = .connecting
        } else {
            pendingError = errno
            state = .connecting
            worker.markDirty(self)
        }
        let watcher = IOWatcher.make(loop: worker.loop, descriptor: fd, owner: self) { _, watcher, events in
            let connection = Unmanaged<ServerConnection>.fromOpaque(tern_get_data(watcher)!).takeUnretainedValue()
            connection.handle(events: events)
        }
        self.watcher = watcher
        watcher.watch(state == .connected ? TERN_EV_READ : TERN_EV_READ | TERN_EV_WRITE)
        sendSetup()
    }

    private func handle(events: Int32) {
        if state == .connecting {
            let error = Syscall.socketError(descriptor)
            if error != 0 {
                fail(reason: Syscall.errorText(error))
                return
            }
            if server.address.family != AF_UNIX, Syscall.isConnectedToItself(descriptor) {
                Syscall.resetOnClose(descriptor)
                fail(reason: Syscall.connectedToItself)
                return
            }
            if server.pool.plan.serverTLS != nil {
                state = .handshaking
            } else {
                didConnect()
                watcher?.watch(TERN_EV_READ)
                if outputCount > sentBytes { worker.markDirty(self) }
            }
        }
        if state == .handshaking {
            handshake()
            return
        }
        if let tls {
            if events & TERN_EV_READ != 0 || tls.readWantsWrite { readReplies() }
            if events & TERN_EV_WRITE != 0 || tls.writeWantsRead, state == .connected { flush() }
            return
        }
        if events & TERN_EV_READ != 0 { readReplies() }
        if events & TERN_EV_WRITE != 0, state == .connected { flush() }
    }

    /// One step of the TLS handshake with the server; what was queued meanwhile (setup,
    /// requests) is written once it is done. A failed handshake fails the connection like a
    /// refused connect (the requests on it get the error, the server's failure count rises).
    private func handshake() {
        if tls == nil {
            guard let context = server.pool.plan.serverTLS,
                  let stream = TLSStream(context: context, descriptor: descriptor, serverName: context.serverName ?? server.host) else {
                fail(reason: "TLS setup failed: \(TLSStream.lastError())")
                return
            }
            tls = stream
        }
        switch tls!.handshake() {
        case .done:
            didConnect()
            watcher?.watch(TERN_EV_READ)
            if outputCount > sentBytes { worker.markDirty(self) }
            // Replies cannot precede requests, but TLS 1.3 tickets may already be buffered.
            if tls!.hasPending { readReplies() }
        case .wantRead:
            watcher?.watch(TERN_EV_READ)
        case .wantWrite:
            watcher?.watch(TERN_EV_READ | TERN_EV_WRITE)
        case .closed:
            fail(reason: "server closed the connection during the TLS handshake")
        case let .failed(reason):
            fail(reason: reason)
        }
    }

    /// Writes what is queued: called once per loop pass by the worker.
    func flush() {
        if pendingError != 0 {
            let error = pendingError
            pendingError = 0
            if error == -2 {
                fail(reason: Syscall.connectedToItself)
            } else if error == -3 {
                // No socket: the requests fail with the reason, and nothing counts against the
                // server (no failure, no backoff, no ejection).
                if let suppressed = localLimitLog.admit(now: worker.now) {
                    worker.logger.warning("server \(server.name): \(lastError) (\(suppressed) more since the last line)")
                }
                close(failing: lastError, serverFailure: false)
            } else if error < 0 {
                // Still backing off: the requests fail at once; the backoff is not extended.
                // With auto_eject_hosts they count toward server_failure_limit, as in
                // nutcracker, where each tries a connect that fails: before, only the connects
                // the backoff allowed counted, and a busy pool kept a dead server (failing its
                // keys at once) for seconds, or for good (a request every loop pass).
                let hadRequests = !pending.isEmpty
                fail(reason: lastError, isNewFailure: false)
                if hadRequests, server.pool.config.autoEjectHosts { server.recordFailure() }
            } else {
                fail(reason: Syscall.errorText(error))
            }
            return
        }
        guard state == .connected, outputCount > sentBytes else { return }
        let result = adopted.isEmpty
            ? Transport.write(descriptor, tls, UnsafeRawBufferPointer(rebasing: output.readable[sentBytes...]))
            : writePieces()
        switch result {
        case let .transferred(count):
            sentBytes += count
            if sentBytes == outputCount { unsentRequests = 0 }
            releaseAnswered()
            counters.outQueue.set(unsentRequests)
            counters.outQueueBytes.set(outputCount - sentBytes)
            let events = outputCount == sentBytes && tls?.readWantsWrite != true ? TERN_EV_READ : TERN_EV_READ | TERN_EV_WRITE
            // Usually unchanged: compared here, so that no reference to the watcher is taken.
            if let current = watcher?.events, current != events { watcher?.watch(events) }
        case .wouldBlock:
            watcher?.watch(TERN_EV_READ | TERN_EV_WRITE)
        case let .failed(error):
            fail(reason: Syscall.errorText(error))
        case .endOfFile:
            fail(reason: "server closed the connection")
        }
    }

    private func readReplies() {
        while true {
            // Framed after at most `streamThreshold` bytes (not the default 4 MiB): a large
            // reply is streamed, or its buffer sized once (`sizeInputForReply`), before its
            // first megabytes have grown the buffer one doubling and one copy at a time.
            switch Transport.read(descriptor, tls, into: input, cap: Self.streamThreshold) {
            case .drained:
                break
            case .endOfFile:
                frameReplies()
                fail(reason: "server closed the connection")
                return
            case let .failed(reason):
                fail(reason: reason)
                return
            }
            frameReplies()
            if let tls, tls.readWantsWrite, let watcher { watcher.watch(TERN_EV_READ | TERN_EV_WRITE) }
            // TLS: decrypted bytes left behind by the 4 MiB cap are not announced again.
            guard let tls, tls.hasPending, descriptor >= 0 else { return }
        }
    }

    /// Pairs complete replies with pending requests, in order.
    private func frameReplies() {
        // Bound once for the whole batch of replies (read through the property, each update
        // would take and drop a reference).
        let counters = self.counters
        let slowThreshold = server.pool.slowlogThreshold
        // Answered requests' bytes leave in this pass however the loop ends.
        defer { releaseAnswered() }
        while !input.isEmpty {
            if skipper != nil {
                guard skipOversizedReply() else { return }
                continue
            }
            if stream != nil {
                guard forwardStream() else { return }
                continue
            }
            guard !pending.isEmpty || pushClient != nil else {
                fail(reason: "server sent an unexpected reply")
                return
            }
            let framed: (length: Int, isError: Bool)
            let framing = isRedis ? RespReplyParser.parse(input.readable, maxDepth: 64)
                                  : MemcacheReplyParser.parse(input.readable, framing: pending[0].framing, resumeAt: &replyResumeOffset)
            switch framing {
            case .incomplete:
                if input.readableCount >= Self.streamThreshold {
                    if isRedis {
                        if startStreaming() { continue }
                        // Not streamed (an array, or a client waiting for an earlier reply).
                        sizeInputForReply()
                    } else {
                        let declared = MemcacheReplyParser.declaredLength(input.readable, recordAt: replyResumeOffset)
                        if declared <= server.pool.clientOutputLimit { input.reserveMapped(frame: declared) }
                    }
                }
                if input.readableCount > server.pool.clientOutputLimit { startSkipping(); continue }
                return
            case .invalid:
                if !isRedis, pending[0].framing == .metaItemsUntilNoop, input.readable.starts(with: "ERROR".utf8) {
                    let reason = "server does not know meta commands (memcached 1.6 or later is needed; warm-up reads old pools with mg)"
                    // Said once per connection at the default level (`fail` logs at debug).
                    if !warnedNoMetaCommands {
                        warnedNoMetaCommands = true
                        worker.logger.warning("server \(server.name): \(reason)")
                    }
                    fail(reason: reason)
                } else {
                    fail(reason: "server sent an invalid reply")
                }
                return
            case let .reply(length, isError): framed = (length, isError)
            }
            if let client = pushClient {
                let frame = UnsafeRawBufferPointer(rebasing: input.readable[0..<framed.length])
                // A message; a notice of Redis's own (a shard channel's slot left the node);
                // or, with nothing asked, an answer nobody waits for (a notice that crossed the
                // client's own unsubscribe, answered by Redis again): dropped, never taken for
                // the next request's reply.
                let isPush = RespReply.classify(frame) == .push
                if isPush || client.pushNotice(frame, on: ObjectIdentifier(self)) || pending.isEmpty {
                    if isPush {
                        // Ahead of the reply this connection owes next, unless it has answered
                        // part of that request already (the message came between two of its
                        // confirmations, which leave together: it follows them).
                        let owed = pending.isEmpty ? nil : pending[0].slot
                        client.pushMessage(frame, ahead: owed.flatMap { ObjectIdentifier($0) == lastAnsweredSlot ? nil : $0 })
                    }
                    counters.responseBytes.add(framed.length)
                    // A subscriber closed over its output limit closes this connection with it.
                    guard state == .connected else { return }
                    input.consume(framed.length)
                    continue
                }
                // The request this reply answers, while this connection owes it more replies.
                let answered = pending[0].slot
                lastAnsweredSlot = answered != nil && pending.count > 1 && pending[1].slot === answered ? answered.map { ObjectIdentifier($0) } : nil
            }
            do {
                let (length, isError) = framed
                // Moved out of the queue before anything else runs: delivering may queue more.
                guard let head = popEntry() else { return }
                answered(head, counters: counters, slowThreshold: slowThreshold)
                if !head.purpose.isConnectionSetup { counters.responseBytes.add(length) }
                if head.purpose == .probe {
                    server.probeAnswered()
                } else if head.purpose == .backfill {
                    // memcached `ms … c ME` answers HD (with the CAS) when stored, NS when the key
                    // already exists; Redis `SET … NX` answers +OK or nil.
                    let reply = UnsafeRawBufferPointer(rebasing: input.readable[0..<length])
                    let stored = isRedis ? RespReply.classify(reply) == .ok : MemcacheReply.classify(reply) == .success
                    if stored, !server.pool.warmupInvalidations.allowsCopy(Int(head.part), noted: head.noted), takeBack(head, reply: reply) {
                        WarmupCounters.add(server.pool.warmupCounters.copiesSkipped)
                    } else if stored {
                        WarmupCounters.add(server.pool.warmupCounters.copies)
                    } else {
                        WarmupCounters.add(server.pool.warmupCounters.copiesSkipped)
                    }
                } else if head.purpose == .backfillUndo {
                    // (Nothing to do: deleted, or no longer the copy.)
                } else if head.purpose == .setup || head.purpose == .selectDatabase {
                    if isError {
                        let text = String(decoding: UnsafeRawBufferPointer(rebasing: input.readable[0..<max(0, length - 2)]), as: UTF8.self)
                        worker.logger.error("server \(server.name): connection setup failed: \(text)")
                        if head.purpose == .selectDatabase {
                            // The requests behind it would run on database 0 (a server running a
                            // script answers SELECT `-BUSY`): they fail, and the connection is
                            // opened afresh. (A refused AUTH needs nothing: the server refuses
                            // what follows itself, or, without a password, serves it.)
                            fail(reason: "connection setup failed: \(text.prefix(200))")
                            return
                        }
                    }
                } else if isError, head.hasSlot, server.pool.isCluster, followRedirect(head, replyLength: length) {
                    // Re-sent to the node the redirect named: the client never sees it.
                } else if let delivered = head.withSlot({ deliver(head, to: $0, length: length, isError: isError) }) {
                    guard delivered else {
                        // Never handed to a client: this request and every other on the
                        // connection fail, and the connection is opened afresh.
                        fail(reason: "server sent a value for a key not asked for")
                        return
                    }
                    if length < Self.streamThreshold, state == .connected {
                        input.consume(length)
                        continue
                    }
                }
                // A large reply may have left with the buffer's memory (`replyArrived`).
                let tookBuffer = worker.replies.tookLargeReply
                if tookBuffer { worker.replies.tookLargeReply = false }
                // Answering may have closed this connection: a client closed over its output
                // limit gives its WATCH or blocking connection back closed, and a redirect or
                // a probe's answer may fail it. Its input and queue are gone with it.
                guard state == .connected else { return }
                if !tookBuffer { input.consume(length) }
            }
        }
        if pending.isEmpty, stream == nil, isTimerArmed { stopTimer() }
        // A burst may have grown the buffer: give large ones back once drained.
        if input.isEmpty { input.releaseIfIdle(keep: 1 << 16) }
        if returnWhenIdle, pending.isEmpty {
            returnWhenIdle = false
            server.returnDedicated(self, reusable: true)
        }
    }

    /// A warm-up copy stored after a delete of its bucket was routed (since its read noted the
    /// bucket's epoch, or still in flight): the delete may have reached this server first, on
    /// another connection, and the copy brought the deleted value back (17 of 1,500 deleted keys
    /// under load; warm-up sweep 30). It is deleted again if it is still the copy: memcached by
    /// the CAS the store answered, Redis by comparing the value. Its request's bytes are still in
    /// the output (answered, not yet released). False when nothing was sent.
    private func takeBack(_ head: Pending, reply: UnsafeRawBufferPointer) -> Bool {
        guard let request = outputBytes((answeredBytes - head.bytes)..<answeredBytes) else { return false }
        // The copy's bytes are read before the undo is written after them (the output may move).
        let copy = Array(request)
        let buffer = requestBuffer()
        let written = copy.withUnsafeBytes { copy in
            if isRedis { return WarmupCopy.redisUndo(copy: copy, into: buffer) }
            // CAS 0: a memcached run with `-C` (no CAS), where `md … C0` would delete any value.
            guard let cas = WarmupCopy.storedCAS(reply), cas != 0 else { return false }
            return WarmupCopy.memcachedUndo(copy: copy, cas: cas, into: buffer)
        }
        guard written else { return false }
        enqueue(slot: nil, part: 0, framing: .meta, purpose: .backfillUndo)
        return true
    }

    /// The unsent bytes when the output is in pieces: one `writev` over them (plain sockets),
    /// or piece after piece into the TLS stream while it takes them whole.
    @inline(never)
    private func writePieces() -> IOResult {
        var unsent = ContiguousArray<UnsafeRawBufferPointer>()
        unsent.reserveCapacity(adopted.count + 1)
        var skip = sentBytes
        for index in 0..<adopted.count {
            let piece = adopted[index].readable
            if skip >= piece.count { skip -= piece.count; continue }
            unsent.append(UnsafeRawBufferPointer(rebasing: piece[skip...]))
            skip = 0
        }
        if output.readableCount > skip { unsent.append(UnsafeRawBufferPointer(rebasing: output.readable[skip...])) }
        guard tls != nil else { return Syscall.writev(descriptor, unsent) }
        var written = 0
        for piece in unsent {
            switch Transport.write(descriptor, tls, piece) {
            case let .transferred(count):
                written += count
                if count < piece.count { return .transferred(written) }
            case .wouldBlock:
                return written > 0 ? .transferred(written) : .wouldBlock
            case let failure:
                return written > 0 ? .transferred(written) : failure
            }
        }
        return .transferred(written)
    }

    /// Releases the bytes of requests both sent and answered.
    @inline(__always)
    private func releaseAnswered() {
        var released = min(answeredBytes, sentBytes)
        guard released > 0 else { return }
        answeredBytes -= released
        sentBytes -= released
        while released > 0, !adopted.isEmpty {
            // Pieces written and answered are freed whole (a large request's memory goes back now).
            let count = adopted[0].readableCount
            let taken = min(count, released)
            if taken == count { _ = adopted.popFirst() } else { adopted[0].consume(taken) }
            adoptedBytes -= taken
            released -= taken
        }
        if released > 0 { output.consume(released) }
        if output.isEmpty { output.releaseIfIdle(keep: 1 << 16) }
    }

    /// The head reply (`length` bytes at the start of `input`) for `slot`, the slot `head`
    /// named. False when it cannot be that request's (a value for a key not asked for): the
    /// part has failed, and the caller fails the connection.
    @inline(__always)
    private func deliver(_ head: Pending, to slot: ReplySlot, length: Int, isError: Bool) -> Bool {
        // Quiet meta commands were followed by Tern's own `mn`: its MN is not the client's.
        let end = head.framing == .metaUntilNoop || head.framing == .metaItemsUntilNoop ? length - 4 : length
        let reply = UnsafeRawBufferPointer(rebasing: input.readable[0..<end])
        if head.framing == .retrieval, !slot.acceptsRetrieval(reply, part: head.part) {
            slot.fail(part: head.part, reason: "server reply out of step")
            return false
        }
        // Only a reply this large may take the buffer's memory (`tookLargeReply` is set only
        // where `largeReply` is), so smaller ones skip the desk.
        guard length >= Self.streamThreshold else {
            if !slot.deliver(part: head.part, reply: reply, isError: isError) {
                slot.fail(part: head.part, reason: "server reply out of step")
                return false
            }
            return true
        }
        worker.replies.largeReply = (input, length)
        defer { worker.replies.largeReply = nil }
        if !slot.deliver(part: head.part, reply: reply, isError: isError) {
            // A merge may have kept the reply's buffer before finding it out of step.
            worker.replies.tookLargeReply = false
            slot.fail(part: head.part, reason: "server reply out of step")
            return false
        }
        return true
    }

    /// The head request was slow: it enters the pool's slow log with its arguments (read from
    /// `output`, where its bytes start after those answered and not yet released), its client
    /// and this server. Off the common path: called only past the threshold.
    @inline(never)
    private func recordSlow(_ head: Pending, microseconds: Int) {
        let pool = server.pool
        // Every slow request is counted; at most `slowlog_max_len` a second per worker are
        // written into the log, so a backend that makes everything slow costs a counter.
        guard pool.admitSlowRequest(now: ev_now(loop)) else { return }
        let start = answeredBytes
        guard let request = outputBytes(start..<(start + head.bytes)) else { return }
        var client = ""
        var name = ""
        if let connection = head.slot?.client { (client, name) = connection.slowLogIdentity() }
        pool.slowLog.record(SlowLogEntry(id: 0, time: Int(time(nil)), microseconds: microseconds, arguments: SlowLog.arguments(of: request),
                                         client: client, clientName: name, server: server.name), maxLength: pool.slowlogMaxLength)
    }

    /// Walks a reply too large to hold (see `ReplySkipper`); nil when none is being skipped.
    private var skipper: ReplySkipper?

    /// The head reply has grown past what its client may be sent: its request fails now, and
    /// the rest of the reply is dropped as it arrives instead of being buffered. The other
    /// requests on the connection, other clients' among them, are answered as usual.
    private func startSkipping() {
        guard let head = popEntry() else {
            // A pub/sub message past the limit with no request waiting: it cannot be dropped
            // silently, so the push connection closes (and with it its subscribed client).
            fail(reason: "a pushed message passed client_output_limit")
            return
        }
        pendingBytes -= head.bytes
        answeredBytes += head.bytes
        releaseAnswered()
        counters.responses.add()
        counters.inQueue.add(-1)
        counters.inQueueBytes.add(-head.bytes)
        if head.purpose == .backfill { WarmupCounters.add(server.pool.warmupCounters.copiesSkipped) }
        replyResumeOffset = 0
        skipper = ReplySkipper(isRedis ? .resp : .memcache(head.framing))
        worker.logger.warning("server \(server.name): a reply passed client_output_limit (\(server.pool.clientOutputLimit) bytes); its request failed and the reply is dropped")
        // Last: failing the slot may close its client and, with it, this connection (which
        // then forgets the skipper).
        if head.purpose == .probe { server.probeAnswered() }
        head.slot?.failTooLarge()
    }

    /// What every answered request's entry (just taken from `pending`) shares: the server's
    /// success, queue and latency counters, the slow log, and its request bytes marked answered.
    @inline(__always)
    private func answered(_ head: Pending, counters: ServerCounters, slowThreshold: Int) {
        server.recordSuccess()
        consecutiveFailures = 0
        pendingBytes -= head.bytes
        counters.inQueue.add(-1)
        counters.inQueueBytes.add(-head.bytes)
        guard !head.purpose.isConnectionSetup else {
            answeredBytes += head.bytes
            return
        }
        counters.responses.add()
        let microseconds = Int((ev_now(loop) - head.queuedAt) * 1_000_000)
        counters.recordLatency(microseconds: microseconds)
        if microseconds > slowThreshold, head.purpose != .probe { recordSlow(head, microseconds: microseconds) }
        answeredBytes += head.bytes
    }

    /// A large bulk reply (`$<n>`, at least `streamThreshold` bytes) to a plain request whose
    /// client waits for nothing before it: its request is answered now, and the reply's bytes
    /// go to the client's output as they arrive instead of piling up in `input` first and
    /// being copied whole. A reply can then take no more memory than its size plus the read
    /// buffer. Replies to merged requests, warm-up reads and replies larger than
    /// `client_output_limit` take the usual paths.
    private func startStreaming() -> Bool {
        guard pushClient == nil, !pending.isEmpty else { return false }
        let head = pending[0]
        guard head.purpose == .client, let slot = head.slot, slot.isSingle, !slot.isSilent,
              slot.warmup == nil, slot.binary == nil, let client = slot.client, client.canStream(slot),
              let total = RespReplyParser.bulkFrameLength(input.readable), total <= slot.replyLimit else { return false }
        guard let entry = popEntry() else { return false }
        client.noteReply(total)
        // Its latency and slow-log time are measured to the reply's first bytes.
        answered(entry, counters: counters, slowThreshold: server.pool.slowlogThreshold)
        stream = entry.slot
        streamRemaining = total
        if let timeout {
            streamDeadline = ev_now(loop) + timeout
            if !isTimerArmed { armTimer(after: timeout) }
        }
        return true
    }

    /// Forwards what has arrived of the streamed reply. True when it has ended.
    private func forwardStream() -> Bool {
        let count = min(streamRemaining, input.readableCount)
        let slot = stream!
        if let client = slot.client {
            client.appendStreamed(UnsafeRawBufferPointer(rebasing: input.readable[0..<count]))
            // Closing a client over its output limit can end this connection too (a client
            // blocked on it gives it up): then nothing here is valid any more.
            guard stream === slot, descriptor >= 0 else { return false }
        }
        if let timeout { streamDeadline = ev_now(loop) + timeout }
        counters.responseBytes.add(count)
        input.consume(count)
        streamRemaining -= count
        guard streamRemaining == 0 else {
            if input.isEmpty { input.releaseIfIdle(keep: 1 << 16) }
            return false
        }
        stream = nil
        streamDeadline = .infinity
        slot.isDone = true
        // A client that closed meanwhile left the slot to the worker's orphans, which free it
        // once this reference has gone (`ReplyDesk.orphans`).
        if let client = slot.client { client.slotCompleted(slot) }
        return true
    }

    /// Room in `input` for all of a large reply being received that is not streamed, as far as
    /// its declared lengths tell (one allocation instead of a copy at every doubling). Replies larger than
    /// `client_output_limit` are skipped rather than held, so no more is reserved for them.
    @inline(never)
    private func sizeInputForReply() {
        let declared = RespReplyParser.declaredLength(input.readable)
        if declared <= server.pool.clientOutputLimit { input.reserveMapped(frame: declared) }
    }

    /// Drops the skipped reply's bytes that have arrived. True when it has ended (framing goes
    /// on with the next reply), false when more is needed or the connection failed.
    private func skipOversizedReply() -> Bool {
        var consumed = 0
        let progress = skipper!.skip(input.readable, consumed: &consumed)
        counters.responseBytes.add(consumed)
        switch progress {
        case .needMore:
            input.consume(consumed)
            // What was buffered before skipping began is given back at once.
            if input.isEmpty { input.releaseIfIdle(keep: 1 << 16) }
            return false
        case let .finished(length):
            input.consume(length)
            skipper = nil
            return true
        case .invalid:
            fail(reason: "server sent an invalid reply")
            return false
        }
    }

    private func armTimer(after seconds: Double) {
        let timer = self.timer ?? TimerWatcher(loop: worker.loop, owner: self) { _, watcher, _ in
            let connection = Unmanaged<ServerConnection>.fromOpaque(tern_get_data(watcher)!).takeUnretainedValue()
            connection.timer?.fired()
            connection.isTimerArmed = false
            connection.timedOut()
        }
        self.timer = timer
        timer.start(after: seconds)
        isTimerArmed = true
        timerDeadline = ev_now(loop) + seconds
    }

    private func stopTimer() {
        timer?.stop()
        isTimerArmed = false
    }

    /// Fails every live request whose deadline has passed; they alone get the timeout.
    ///
    /// The expired slots fail last, once this connection's queue, counters and timer are
    /// final: failing one may close its client (over `client_output_limit`), and a closing
    /// client may close this very connection (its WATCH or blocking connection), emptying
    /// `pending` under a walk by index.
    private func timedOut() {
        let now = worker.now
        var expired: [(slot: ReplySlot, part: Int32)] = []
        var expiredProbes = 0
        var live = 0
        var nextDeadline = Double.infinity
        for offset in 0..<pending.count {
            var entry = pending[offset]
            guard entry.hasSlot || entry.purpose == .probe else { continue }
            if entry.deadline <= now + 0.0005 {
                // Referenced here (a timeout is off the request path): `clearSlot` stops the
                // entry counting toward the slot, so only this array keeps it from the sweep.
                if let slot = entry.slot { expired.append((slot, entry.part)) }
                entry.clearSlot()
                if entry.purpose == .probe {
                    entry.purpose = .expiredProbe
                    expiredProbes += 1
                }
                pending[offset] = entry
            } else {
                live += 1
                nextDeadline = min(nextDeadline, entry.deadline)
            }
        }
        let count = expired.count + expiredProbes
        if stream != nil {
            if streamDeadline <= now + 0.0005 {
                // `fail` counts the server's failure once, for the stream and these alike.
                counters.serverTimedOut.add(count + 1)
                // Forward errors are clients' requests failed: a probe of an ejected server is
                // Tern's own (counted as such, a hung server rose the pool's errors by one a
                // probe while no client failed; stats sweep 30).
                server.pool.stats.forwardErrors.add(expired.count)
                fail(reason: "Connection timed out (a streamed reply stalled)")
                for _ in 0..<expiredProbes { server.probeFailed() }
                failSlots(expired, reason: "Connection timed out", serverFailure: true)
                return
            }
            live += 1
            nextDeadline = min(nextDeadline, streamDeadline)
        }
        if count > 0 {
            counters.serverTimedOut.add(count)
            server.pool.stats.forwardErrors.add(expired.count)
            server.recordFailure()
        }
        if count > 0, state == .connecting || state == .handshaking {
            // The connect itself timed out: every connection to the server backs off.
            noteConnectFailure("Connection timed out")
        }
        if live == 0 {
            // Only abandoned requests are left: start afresh rather than wait for their replies.
            if !pending.isEmpty { close() }
        } else if nextDeadline.isFinite {
            // (A blocking command without a timeout of its own has none.)
            armTimer(after: nextDeadline - now)
        }
        for _ in 0..<expiredProbes { server.probeFailed() }
        failSlots(expired, reason: "Connection timed out", serverFailure: true)
    }

    /// Requests taken off the queue get their error, once the connection's state is final
    /// (failing one may close its client, and with it this connection).
    private func failSlots(_ slots: [(slot: ReplySlot, part: Int32)], reason: String, serverFailure: Bool) {
        for (slot, part) in slots { slot.fail(part: part, reason: reason, serverFailure: serverFailure) }
    }

    /// How often requests may try a connect to a server that refuses them (`connectIfNeeded`).
    static let refusedRetryInterval = 0.1

    /// The longest backoff: 2 s, or four fifths of the wait of a client whose server is down
    /// (`ClientConnection.waitsForServer`: `server_wait`, else the pool's `timeout`, else 1.5 s)
    /// if that is shorter (at least 50 ms), so that every wait sees a connect tried, with time
    /// left for it to complete, and a server that returned is reached within a wait. A pool
    /// whose requests do not wait (`server_wait: 0`) backs off to 2 s.
    private var backoffCeiling: Double {
        let wait = server.pool.serverWaitSeconds
        return wait > 0 ? min(2.0, max(0.05, 0.8 * wait)) : 2.0
    }

    /// A connect failed: every connection of this worker to the server backs off (50 ms
    /// doubling to `backoffCeiling`, while connects keep failing).
    private func noteConnectFailure(_ reason: String) {
        server.connectsRefused = reason == Syscall.refusedText || reason == Syscall.noSuchFileText
        server.connectFailures += 1
        server.connectRetryAfter = worker.now + min(backoffCeiling, 0.05 * Double(1 << min(server.connectFailures - 1, 6)))
        if retryBeforeLastChance > worker.now { server.connectRetryAfter = min(server.connectRetryAfter, retryBeforeLastChance) }
        server.connectError = reason
        worker.serverConnectSettled()
    }


    /// Closes the connection and fails what was on it.
    func fail(reason: String, isNewFailure: Bool = true) {
        let wasConnected = descriptor >= 0
        let hadRequests = !pending.isEmpty
        if reason == Syscall.connectedToItself {
            worker.logger.warning("server \(server.name): \(reason); is it down? (its port is in this host's ephemeral port range)")
        }
        if isNewFailure, state == .connecting || state == .handshaking, descriptor >= 0 { noteConnectFailure(reason) }
        if isNewFailure, wasConnected || hadRequests {
            worker.logger.debug("server \(server.name): \(reason)")
            server.recordFailure()
            if reason == "server closed the connection" { counters.serverEOF.add() } else { counters.serverErrors.add() }
            // Back off before the next connect while the server keeps failing.
            lastError = reason
            consecutiveFailures += 1
            retryAfter = worker.now + min(backoffCeiling, 0.05 * Double(1 << min(consecutiveFailures - 1, 6)))
        }
        // A cluster node failing (or still backing off) may mean a failover: the map is asked
        // again (the discovery thread asks at most every 200 ms), so requests move to a promoted
        // replica as soon as the cluster names it, not at the next reconnect.
        if server.pool.isCluster, wasConnected || hadRequests { server.pool.plan.shared.cluster.requestRefresh() }
        // The same for a Sentinel pool's master: the sentinels may have named another.
        if server.pool.isSentinel, wasConnected || hadRequests { server.pool.plan.shared.sentinel.requestRefresh() }
        if retryBeforeLastChance > worker.now { retryAfter = min(retryAfter, retryBeforeLastChance) }
        close(failing: reason, serverFailure: true)
    }

    var isIdle: Bool { pending.isEmpty && stream == nil }

    /// Closed after failures and waiting out its backoff: a request now would fail at once.
    var isBackingOff: Bool { state == .disconnected && (worker.now < retryAfter || worker.now < server.connectRetryAfter) }
    /// When the backoff ends (a time past, or 0, when the connection is open or would connect).
    var backoffEnd: Double { state == .disconnected ? max(retryAfter, server.connectRetryAfter) : 0 }
    /// The server refuses connects and none was begun on this worker in the last
    /// `refusedRetryInterval`: a request (or a waiting client) may try one inside the backoff.
    /// (A wall clock stepped back does not hold it off: ev_now is wall time.)
    private var refusedRetryIsDue: Bool {
        server.connectsRefused && !(0..<Self.refusedRetryInterval).contains(worker.now - server.lastConnectAt)
    }
    /// When a waiting client should look again: the backoff's end, or sooner the next
    /// refused-server retry (0 when the connection is open or would connect).
    var nextConnectAt: Double {
        guard state == .disconnected else { return 0 }
        return server.connectsRefused ? min(backoffEnd, server.lastConnectAt + Self.refusedRetryInterval) : backoffEnd
    }
    /// Not connected yet (closed, backing off, or a connect or TLS handshake in flight) to a
    /// server whose address is known: a one-server pool's request waits for the connect
    /// (`ClientConnection.waitsForServer`), so that neither a request Tern answers itself
    /// (`PING`) nor one that would fail at once is answered before Tern knows the server is up.
    var isNotReady: Bool { state != .connected && server.address.family != AF_UNSPEC }
    /// A connect attempt without a request, once the backoff is over or a refusing server's
    /// retry is due (a waiting client's).
    func connectWhenDue() {
        guard state == .disconnected else { return }
        if !isBackingOff { connectIfNeeded() } else if refusedRetryIsDue { beginConnect() }
    }

    /// A waiting client's last chance before its wait ends (`ClientConnection.waitsForServer`):
    /// a connect now, inside the backoff too, unless one was begun on this worker in the last
    /// `window` seconds. Without it, a server that returned after the last retry of a wait
    /// (the retries double, so the last one can come half the wait before its end) was not
    /// tried again before the wait closed the client (found by a re-check with node-redis: a
    /// 1 s restart lost every command sent during it on a 1.5 s wait).
    func connectBeforeWaitEnds(window: Double) {
        // (A wall clock stepped back does not hold the last chance off: ev_now is wall time.)
        guard state == .disconnected, pendingError == 0, !(0..<window).contains(worker.now - server.lastConnectAt) else { return }
        retryBeforeLastChance = backoffEnd
        beginConnect()
    }

    /// When the retry was due that a last-chance connect (`connectBeforeWaitEnds`) came ahead
    /// of, while that connect is in flight; 0 otherwise (cleared by a success and by every
    /// close). If it fails (`noteConnectFailure` for the server, `fail` for the connection),
    /// the backoff keeps that time: a refusal counted as a new failure put the next retry a
    /// whole backoff step (1.2 s by default) after the last chance, so a server back just
    /// after it was reached about 1.1 s later than without it (the re-check's F1).
    private var retryBeforeLastChance: Double = 0

    /// Closes the connection and fails what is on it with `reason`, without counting a server
    /// failure or asking a cluster or Sentinel pool for a new map: its client left while a
    /// blocking command was waiting (Redis unblocks it on the close, popping nothing), or its
    /// server left the pool.
    /// `serverFailure`: its requests fail as a failed server's do (closing clients whose pool
    /// says so).
    func abandon(reason: String = "client closed the connection", serverFailure: Bool = false) {
        if descriptor >= 0 || !pending.isEmpty { close(failing: reason, serverFailure: serverFailure) }
    }

    /// A leased connection whose client ended its input while blocked reads what its server
    /// has already sent, before it is abandoned: a reply there is an item Redis popped, and
    /// Redis writes it to a client that only closed its writing side. Delivering it may give
    /// the connection back (`returnWhenIdle`). Not called from inside this connection's own
    /// reading (a client closed by a reply it delivers abandons instead).
    func readWhatHasArrived() {
        guard state == .connected, descriptor >= 0 else { return }
        readReplies()
    }

    /// A leased connection whose client ended its input while blocked: as `abandon`, but its
    /// requests end with no reply (Redis writes nothing for a blocked client that leaves; one
    /// that only closed its writing side would otherwise read an error).
    func abandonSilently() {
        for offset in 0..<pending.count { pending[offset].slot?.isSilent = true }
        abandon()
    }

    /// Closes the connection if it has anything to close: a socket, requests, or a connect
    /// failure waiting for `flush` (which would count it against a server that may be gone by
    /// then: a push connection's server removed by a reload in the same loop pass).
    func closeIfOpen() {
        if descriptor >= 0 || !pending.isEmpty || pendingError != 0 { close() }
    }

    /// Closes the connection. The requests still on it fail with `reason`: those of a failure
    /// (`fail`), and those of a connection closed on purpose (a server leaving, a subscriber's
    /// RESET, a WATCH given back), which would otherwise never be answered.
    /// `serverFailure`: the server failed (`fail`), which closes clients whose pool says so.
    private func close(failing reason: String = "backend connection closed", serverFailure: Bool = false) {
        stopTimer()
        // Cluster pools: the requests of a failing node this socket never sent (from
        // `unsentFrom` on in `output`) may wait for the node, or a map without it.
        let unsentFrom = serverFailure && server.pool.isCluster && pushClient == nil && stream == nil ? sentBytes : Int.max
        var offset = answeredBytes
        pendingError = 0
        retryBeforeLastChance = 0
        if state == .connected { counters.serverConnections.add(-1) }
        counters.inQueue.add(-pending.count)
        counters.inQueueBytes.add(-pendingBytes)
        counters.outQueue.set(0)
        counters.outQueueBytes.set(0)
        pendingBytes = 0
        unsentRequests = 0
        sentBytes = 0
        answeredBytes = 0
        if let watcher {
            watcher.watch(0)
            worker.retire(watcher)
            self.watcher = nil
        }
        // A streamed reply cut short: its client has part of it and cannot be answered in step
        // any more, so it is closed — last, once this connection's state is final (closing a
        // client can come back here through a blocking command it gives up).
        let abandoned = stream
        stream = nil
        streamRemaining = 0
        streamDeadline = .infinity
        // close_notify (when the socket takes it) before the socket closes.
        tls?.shutdown()
        tls = nil
        if descriptor >= 0 { Syscall.close(descriptor) }
        descriptor = -1
        state = .disconnected
        // Every entry leaves through `popEntry`, so that none is counted in a slot any more; the
        // slots of those still answering a client fail last (below).
        var dropped: [(slot: ReplySlot, part: Int32)] = []
        var probes = 0
        let errorBytes = unsentFrom < .max ? Array((isRedis ? "-ERR \(reason)\r\n" : "SERVER_ERROR \(reason)\r\n").utf8) : []
        while let entry = popEntry() {
            defer { offset += entry.bytes }
            // A request in phases (a transaction, a blocking command, a WATCH) decides itself.
            if offset >= unsentFrom, entry.purpose == .client, let slot = entry.slot, let phased = slot.warmup, !phased.partsFollowRedirects || isDedicated {
                if phased.keepUnsent(slot, part: entry.part, node: server.name, reason: reason) { continue }
                dropped.append((slot, entry.part))
                continue
            }
            if offset >= unsentFrom, entry.purpose == .client, !isDedicated, let slot = entry.slot, let client = slot.client,
               slot.warmup?.partsFollowRedirects ?? true, let bytes = outputBytes(offset..<(offset + entry.bytes)),
               server.pool.keepUnsent(RedirectedRequest(bytes: Array(bytes), error: errorBytes, slot: slot, part: entry.part, redirects: entry.redirects,
                                                        clientIndex: client.index, deadline: entry.deadline), node: server.name) {
                continue
            }
            if let slot = entry.slot { dropped.append((slot, entry.part)) }
            if entry.purpose == .probe { probes += 1 }
            if entry.purpose == .backfill { WarmupCounters.add(server.pool.warmupCounters.copiesSkipped) }
        }
        if !dropped.isEmpty { server.pool.stats.forwardErrors.add(dropped.count) }
        input.removeAll()
        input.releaseIfIdle()
        replyResumeOffset = 0
        skipper = nil
        output.removeAll()
        output.releaseIfIdle()
        adopted.removeAll()
        adoptedBytes = 0
        if returnWhenIdle {
            // A dedicated connection that failed or was closed goes back, not to be reused.
            returnWhenIdle = false
            server.returnDedicated(self, reusable: false)
        }
        if let client = pushClient {
            // A push connection lost (failure, timeout): messages would stop silently, so the
            // subscribed client is closed instead and re-subscribes when it reconnects.
            pushClient = nil
            client.close()
        }
        if let client = abandoned?.client {
            worker.logger.warning("server \(server.name): connection lost in the middle of a streamed reply; closing its client")
            client.close()
        }
        for _ in 0..<probes { server.probeFailed() }
        // Last: failing a slot may close its client, which may come back here.
        failSlots(dropped, reason: reason, serverFailure: serverFailure)
    }
}
