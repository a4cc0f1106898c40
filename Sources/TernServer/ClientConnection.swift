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
final class ClientConnection {
    let descriptor: Int32
    let pool: PoolRuntime
    let index: Int
    /// Bytes of a partial request (allocated only while one is pending).
    private let input = ByteBuffer()
    let output = ByteBuffer()
    private var slots = FIFO<ReplySlot>()
    private var watcher: IOWatcher?
    var isDirty = false
    /// Replies held back for one loop pass (see `flush(allowHold:)`).
    var isHeld = false
    /// Reply bytes beyond which nothing is held back.
    static let holdLimit = 1 << 16
    /// Bytes of a refused data block still to be discarded as they arrive.
    var skipRemaining = 0
    /// No more requests are read (quit, end of input, fatal error); close once replies are out.
    var closeWhenDrained = false
    private(set) var isClosed = false
    /// Redis clients: per-connection state (arguments, AUTH, name); nil for memcached.
    let redis: RedisSession?
    /// memcached clients: whether the first byte chose the binary protocol, once it has come.
    var protocolChosen = false
    var isBinary = false
    /// memcached pools with `users:`: the authenticated user (nil until then), and failed
    /// authentications in a row.
    var memcacheUser: RedisUser?
    var memcacheAuthFailures = 0
    /// `PoolRuntime.usersGeneration` when `memcacheUser` was set.
    var memcacheUsersGeneration = 0
    /// Requests in flight before reading pauses; reading resumes as replies leave.
    static let maxInFlight = 16384
    /// Reply bytes waiting for a slow reader before reading its requests pauses.
    static let outputHighWater = 1 << 20
    /// Loop time of the last bytes read, and since when a partial request has been waiting.
    var lastActivity: Double = 0
    var partialSince: Double = 0
    /// Loop time when the client last took reply bytes (or had none waiting).
    var lastWriteProgress: Double = 0
    /// `ip:port` of the client, looked up the first time a slow request of its is logged.
    var peerAddress: String {
        if let known = peerText { return known }
        let text = SlowLog.peerAddress(descriptor)
        peerText = text
        return text
    }
    private(set) var peerText: String?

    init(descriptor: Int32, pool: PoolRuntime) {
        self.descriptor = descriptor
        self.pool = pool
        self.worker = pool.worker
        self.index = pool.worker.nextClientIndex()
        self.redis = pool.config.protocolKind == .redis ? RedisSession() : nil
    }

    /// A client another worker moved here between two requests (`Worker.rebalanceClients`).
    init(descriptor: Int32, pool: PoolRuntime, moved: MovedClient) {
        self.descriptor = descriptor
        self.pool = pool
        self.worker = pool.worker
        self.index = pool.worker.nextClientIndex()
        self.redis = pool.config.protocolKind == .redis ? (moved.redis ?? RedisSession()) : nil
        // Users generations are counted per worker: look the user up again by name.
        redis?.usersGeneration = Int.min
        protocolChosen = moved.protocolChosen
        isBinary = moved.isBinary
        memcacheUser = moved.memcacheUser
        memcacheAuthFailures = moved.memcacheAuthFailures
        memcacheUsersGeneration = Int.min
        peerText = moved.peerText
        moved.redis = nil
    }

    /// Between two requests with nothing pending (no request in flight or partly read, no reply
    /// waiting or held) and no state tied to this worker's backend connections (transaction,
    /// WATCH, blocking command, pub/sub): the connection may continue on another worker.
    var isMovable: Bool {
        guard !isClosed, !closeWhenDrained, slots.isEmpty, input.isEmpty, output.isEmpty, !isDirty, !isHeld,
              skipRemaining == 0, heldReplyBytes == 0 else { return false }
        if let session = redis {
            return session.transaction == nil && session.watch == nil && session.blocked.isEmpty && session.subscriptions == nil
        }
        return true
    }

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
        let moved = MovedClient(redis: redis, protocolChosen: protocolChosen, isBinary: isBinary, memcacheUser: memcacheUser,
                                memcacheAuthFailures: memcacheAuthFailures, peerText: peerText)
        worker.release(self)
        return moved
    }

    /// Strong references, so that the request path reaches the pool and the worker through
    /// `self` without taking references of its own (an unowned one is retained on every read).
    /// The worker's client table holds the client until it closes, so the cycle this makes is
    /// broken at `close()`.
    let worker: Worker

    /// Whether the client should stop being read: too much in flight, or too many replies it
    /// has not read yet (backpressure; the hard limit is `client_output_limit`).
    private var mustPauseReading: Bool {
        slots.count >= Self.maxInFlight || output.readableCount >= Self.outputHighWater
    }

    var hasRequestsInFlight: Bool { !slots.isEmpty }
    var hasPartialRequest: Bool { !input.isEmpty }

    func start() {
        lastActivity = worker.now
        lastWriteProgress = worker.now
        let watcher = IOWatcher(worker: worker, descriptor: descriptor, owner: self) { _, watcher, events in
            let client = Unmanaged<ClientConnection>.fromOpaque(tern_get_data(watcher)!).takeUnretainedValue()
            client.handle(events: events)
        }
        self.watcher = watcher
        worker.adopt(self)
        watcher.watch(TERN_EV_READ)
    }

    private func handle(events: Int32) {
        if events & TERN_EV_READ != 0 { readRequests() }
        if events & TERN_EV_WRITE != 0 { flush() }
    }

    private func readRequests() {
        guard !isClosed, !closeWhenDrained else { return }
        // With no partial request pending, read into the worker's shared buffer.
        let buffer = input.isEmpty ? worker.scratch : input
        var reachedEnd = false
        readLoop: while true {
            switch Syscall.read(descriptor, into: buffer) {
            case .transferred:
                // A short read drained the socket (level-triggered: more is reported again).
                if buffer.writableCount > 0 { break readLoop }
                if buffer.readableCount >= 4 << 20 { break readLoop }
            case .wouldBlock:
                break readLoop
            case .endOfFile:
                reachedEnd = true
                break readLoop
            case .failed:
                pool.stats.clientErrors.add()
                close()
                return
            }
        }
        lastActivity = worker.now
        let wasPartial = !input.isEmpty
        process(buffer)
        if buffer === worker.scratch {
            // Keep what is left of a partial request in the connection's own buffer.
            if !buffer.isEmpty { input.append(buffer.readable) }
            buffer.removeAll()
        }
        if input.isEmpty {
            partialSince = 0
            input.releaseIfIdle()
        } else if !wasPartial || partialSince == 0 {
            partialSince = worker.now
        }
        if reachedEnd {
            pool.stats.clientEOF.add()
            closeWhenDrained = true
            // Redis drops a client the moment it closes, so nothing it was blocked on is
            // popped for nobody: neither does Tern wait for a blocked command's reply.
            if redis != nil { endBlockedCommands() }
            watcher?.watch(0)
            closeIfDrained()
        }
    }

    /// Parses and routes every complete request in `buffer`.
    private func process(_ buffer: ByteBuffer) {
        if redis != nil { processRedis(buffer) } else { processMemcache(buffer) }
    }

    func newSlot() -> ReplySlot {
        let slot = worker.makeSlot(for: self)
        slot.isRedis = redis != nil
        slot.replyLimit = pool.clientOutputLimit
        slot.startedAt = worker.now
        if let binary = worker.pendingBinary {
            // The slot of a binary request taking the text path (see `routeBinary`).
            worker.pendingBinary = nil
            slot.binary = binary
            slot.keyBytes.append(worker.pendingBinaryKey)
        }
        slots.append(slot)
        return slot
    }

    /// Stops parsing when too many requests are in flight; reading resumes as replies leave.
    func pipelineIsFull() -> Bool {
        guard mustPauseReading else { return false }
        watcher?.watch(watcher!.events & ~TERN_EV_READ)
        return true
    }

    // MARK: Replies

    /// The one backend reply of a `single` slot. With nothing ahead of it, it goes straight to
    /// the output (one copy); otherwise it waits in the slot.
    @inline(__always)
    func replyArrived(_ slot: ReplySlot, _ reply: UnsafeRawBufferPointer) {
        if !slot.isSilent {
            if slots.isFirst(slot), slot.data.isEmpty {
                if let binary = slot.binary {
                    // A binary client's packet, written straight from the backend's reply.
                    output.appendBinaryResponse(to: reply, binary, key: slot.keyBytes.readable)
                    slot.binary = nil
                } else {
                    output.append(reply)
                }
            } else {
                slot.data.append(reply)
            }
        }
        slot.isDone = true
        slotCompleted(slot)
    }

    /// Reply bytes held in slots behind an unfinished one (not yet in `output`).
    private(set) var heldReplyBytes = 0

    /// A slot holds `delta` more reply bytes: everything held for this client counts toward its
    /// `client_output_limit`, whether written out or waiting behind a slow request.
    func heldChanged(by delta: Int) {
        heldReplyBytes += delta
        if delta > 0 { checkOutputLimit() }
    }

    /// A client that does not read its replies, or whose pipeline holds too much: bounded, then closed.
    @discardableResult
    private func checkOutputLimit() -> Bool {
        guard !isClosed, output.readableCount + heldReplyBytes > pool.clientOutputLimit else { return false }
        if let suppressed = pool.limitLog.admit(now: worker.now) {
            worker.logger.warning("pool \(pool.config.name): client exceeded client_output_limit (\(pool.config.clientOutputLimit) bytes), closing it (\(suppressed) more since the last line)")
        }
        pool.stats.clientErrors.add()
        pool.stats.overLimit.add()
        close()
        return true
    }

    /// A slot was filled: every finished slot at the head of the queue goes to the output.
    func slotCompleted(_ slot: ReplySlot) {
        slot.countHeld()
        guard slots.isFirst(slot) else { return }
        let now = worker.now
        while !slots.isEmpty, slots[0].isDone, let head = slots.popFirst() {
            if head.command >= 0 {
                pool.commandStats.record(Int(head.command), microseconds: Int((now - head.startedAt) * 1_000_000))
            }
            heldReplyBytes -= head.countedBytes
            head.emit(into: output)
            worker.recycle(head)
        }
        if checkOutputLimit() { return }
        worker.markDirty(self)
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
            switch Syscall.write(descriptor, output.readable) {
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
        if output.isEmpty { output.releaseIfIdle(keep: 65536) }
        var events: Int32 = closeWhenDrained || mustPauseReading ? 0 : TERN_EV_READ
        if !output.isEmpty { events |= TERN_EV_WRITE }
        watcher?.watch(events)
        if closeIfDrained() { return }
        // Reading was paused by a full pipeline: parse what is already buffered.
        if !closeWhenDrained, !mustPauseReading, !input.isEmpty {
            process(input)
        }
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
        guard closeWhenDrained, slots.isEmpty, output.isEmpty else { return false }
        close()
        return true
    }

    /// Called once a second by the worker: slowloris and idle clients are closed.
    func checkTimeouts(now: Double) {
        guard !isClosed else { return }
        let config = pool.config
        if config.clientPartialTimeoutMilliseconds > 0, partialSince > 0,
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
        if config.clientIdleTimeoutMilliseconds > 0, slots.isEmpty, input.isEmpty,
           now - lastActivity > Double(config.clientIdleTimeoutMilliseconds) / 1000 {
            close()
        }
    }

    func close() {
        guard !isClosed else { return }
        isClosed = true
        if let watcher {
            watcher.watch(0)
            worker.retire(watcher)
        }
        watcher = nil
        Syscall.close(descriptor)
        if redis != nil { endRedisSession() }
        // Requests still in flight finish into slots nobody reads; those are freed when their
        // backend replies arrive.
        while let slot = slots.popFirst() {
            slot.client = nil
            if slot.isDone { worker.recycle(slot) }
        }
        pool.clientClosed()
        worker.release(self)
    }
}

/// A client's state on its way from one worker to another (`Worker.rebalanceClients`).
///
/// `@unchecked Sendable`: the Redis session is a loop-confined object. Invariant: the source
/// worker builds this from a client it has just detached (no watcher, no slot, out of its client
/// table and dirty lists), keeps no reference to the client or the session, and posts this once
/// to the target worker's inbox (a mutex: the hand-over is ordered); only the target touches it
/// afterwards, and it clears `redis` once the new connection owns the session.
final class MovedClient: @unchecked Sendable {
    var redis: RedisSession?
    let protocolChosen: Bool
    let isBinary: Bool
    let memcacheUser: RedisUser?
    let memcacheAuthFailures: Int
    let peerText: String?

    init(redis: RedisSession?, protocolChosen: Bool, isBinary: Bool, memcacheUser: RedisUser?, memcacheAuthFailures: Int, peerText: String?) {
        self.redis = redis
        self.protocolChosen = protocolChosen
        self.isBinary = isBinary
        self.memcacheUser = memcacheUser
        self.memcacheAuthFailures = memcacheAuthFailures
        self.peerText = peerText
    }
}
