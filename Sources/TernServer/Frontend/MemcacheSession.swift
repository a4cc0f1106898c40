#if canImport(Glibc)
import Glibc
#endif
import TernCore

/// The memcached text protocol on a client connection: parse, answer locally or route.
extension ClientConnection {
    /// Parses and routes every complete memcached text or meta request in `buffer`.
    func processMemcache(_ buffer: ByteBuffer) {
        while mayParseNext(buffer) {
            let bytes = buffer.readable
            if bytes[0] == 0x20 {
                // Spaces before the command name: memcached's tokenizer skips them, and the line
                // is the command after them (Tern answered ERROR, and the data block of ` set …`
                // ran as a command; memcached text sweep 31). Dropped here: what is forwarded is
                // what memcached would have read. Spaces alone wait for the rest of their line.
                var spaces = 1
                while spaces < bytes.count, bytes[spaces] == 0x20 { spaces += 1 }
                guard spaces < bytes.count || spaces >= pool.limits.maxLineLength else { return }
                buffer.consume(spaces)
                continue
            }
            // (Two calls rather than one with the limits chosen: choosing copied the struct, 9
            // instructions per request on pools without users.)
            let parsed = pool.requiresAuth && authenticatedUser == nil ? MemcacheRequestParser.parse(bytes, limits: pool.preAuthMemcacheLimits)
                                                                       : MemcacheRequestParser.parse(bytes, limits: pool.limits)
            switch parsed {
            case .incomplete:
                return
            case let .request(request):
                if request.command == .delete || request.command == .metaDelete || request.command == .flushAll, pool.deletesReachOldPool,
                   deleteMustWaitForWarmupReads() { return }
                route(request, UnsafeRawBufferPointer(rebasing: bytes[0..<request.frameLength]))
                noteRequestBytes(request.frameLength)
                // A large request's bytes may have left with the buffer's memory (`forward`).
                if !worker.tookLargeRequest { buffer.consume(request.frameLength) } else { worker.tookLargeRequest = false }
            case let .rejected(rejection, consume, skip, close):
                pool.stats.clientErrorReplies.add()
                // A refused `noreply` request gets no reply, as from memcached.
                if close || !MemcacheRequestParser.refusalIsSilent(bytes) {
                    let slot = newSlot()
                    slot.complete(with: rejection.reply)
                }
                buffer.consume(consume)
                skipRemaining = skip
                if close { closeWhenDrained = true }
            }
        }
    }

    /// Whether the next request in `buffer` is parsed now (every frontend's loop asks): there
    /// are bytes, the client is still read, what is left of a refused data block has been
    /// dropped, and the pipeline is not full (reading resumes as replies leave).
    @inline(__always)
    func mayParseNext(_ buffer: ByteBuffer) -> Bool {
        while !buffer.isEmpty, !closeWhenDrained, !isClosed {
            if skipRefusedBytes(buffer) { continue }
            if pool.waitsForItsServer, waitsForServer() {
                // Reading goes on (a client leaving is seen), paused past `heldInputLimit`.
                _ = pipelineIsFull()
                return false
            }
            return !pipelineIsFull() && mayBeginRequest()
        }
        return false
    }

    /// A pool whose one server's failure closes its clients (`close_on_server_failure`, the
    /// default for a one-server Redis pool): while the client's connection to the server is
    /// not connected (never opened, lost, backing off after refused connects), the next request
    /// waits for Tern to connect, up to `server_wait` (the pool's `timeout` without one, 1.5 s
    /// without either; `server_wait: 0` turns the wait off). Tern connects, and retries on its
    /// backoff (50 ms doubling to four fifths of the wait, 2 s at most; every 100 ms while
    /// connects are refused: `ServerConnection.nextConnectAt`) and once more in the
    /// wait's last tenth (100 ms at most), for the waiting clients;
    /// once connected, they go on; past the wait, the client is closed, as a refused connect
    /// would end it. (The default wait stays under common client read timeouts: a client that
    /// times out reading raises a timeout, which RQ's pubsub thread, for one, does not survive,
    /// where a closed connection is a `ConnectionError` it retries.)
    /// Failing at once closed the client, and clients that reconnect at once (redis-rb's
    /// blocking pops, node-redis) came back thousands of times a second; requests sent during a
    /// short restart failed, where against the server node-redis waits and succeeds; and `PING`,
    /// answered by Tern, told a health check that a dead server was up. The client is still
    /// read (its leaving is seen); parsing waits (`parsingHeld`).
    func waitsForServer() -> Bool {
        // The common case first: the connection is open.
        guard pool.servers.count == 1,
              pool.withConnection(toServer: 0, client: index, { $0.isNotReady }) else {
            clearWaitForServer()
            return false
        }
        let now = worker.now
        if waitForServerSince == 0 { waitForServerSince = now }
        let wait = pool.serverWaitSeconds
        let deadline = waitForServerSince + wait
        guard now < deadline else {
            // Waited long enough: the client ends, as a refused connect would end it. Its
            // request could not be forwarded (`forward_error`, as nutcracker counts one).
            clearWaitForServer()
            pool.stats.forwardErrors.add()
            closeForServerFailure()
            return true
        }
        guard !isWaitingForServer else { return true }
        // A connect now if the backoff is over (its result wakes the waiting clients), and a
        // look again when the backoff ends, or at the deadline. In the wait's last tenth (100
        // ms at most) a connect is made inside the backoff too, unless one was begun that
        // recently: the last retry can come half the wait before its end. A wall clock stepped
        // back (ev_now is wall-clock time) cannot stretch the backoff past its 2 s.
        let lastTry = min(0.1, wait / 10)
        pool.withConnection(toServer: 0, client: index) { connection in
            connection.connectWhenDue()
            // At most one every 50 ms per worker (the backoff's first step), however many
            // clients wait and however short the wait.
            if now >= deadline - lastTry { connection.connectBeforeWaitEnds(window: max(0.05, lastTry)) }
        }
        guard !isClosed else { return true }
        guard pool.withConnection(toServer: 0, client: index, { $0.isNotReady }) else {
            // Connected at once (or the address is not known: a Sentinel master no sentinel
            // has named fails at once).
            clearWaitForServer()
            return false
        }
        // (A connect in flight has no backoff: its result wakes the client, 2 s at the latest.)
        let retry = min(pool.withConnection(toServer: 0, client: index) { $0.nextConnectAt }, now + 2)
        var wake = min(retry > now ? retry : now + 2, deadline)
        if now < deadline - lastTry { wake = min(wake, deadline - lastTry) }
        waitForServerWake = wake
        worker.wake(self, at: wake)
        return true
    }

    /// The worker's wake-up (`waitsForServer`): the next flush parses what waited (and it
    /// waits again, or goes). A reload may have ended the pool's waits since.
    func serverWaitEnded() {
        waitForServerWake = 0
        if !pool.waitsForItsServer { waitForServerSince = 0 }
        if !isClosed { worker.markDirty(self) }
    }

    /// Drops what is left of a refused data block (or binary body) as it arrives; true when
    /// it consumed something.
    func skipRefusedBytes(_ buffer: ByteBuffer) -> Bool {
        guard skipRemaining > 0 else { return false }
        let count = min(skipRemaining, buffer.readableCount)
        skipRemaining -= count
        buffer.consume(count)
        return true
    }

    func route(_ request: MemcacheRequest, _ frame: UnsafeRawBufferPointer) {
        withNewSlot { slot in route(request, frame, slot) }
    }

    private func route(_ request: MemcacheRequest, _ frame: UnsafeRawBufferPointer, _ slot: ReplySlot) {
        slot.command = Int32(request.command.rawValue)
        // `users:` (the binary front checks its packets before they get here).
        if pool.requiresAuth, !isBinary {
            if authenticatedUser != nil, usersGeneration != pool.usersGeneration { rebindMemcacheUser() }
            guard let user = authenticatedUser else { return authenticateText(request, frame, slot) }
            if !memcachePermits(user, request, frame) {
                pool.stats.clientErrorReplies.add()
                return slot.complete(with: "CLIENT_ERROR permission denied\r\n" as StaticString)
            }
        }
        switch request.command {
        case .get, .gets, .gat, .gats, .metaGet: pool.stats.reads.add()
        case .version, .quit, .verbosity, .stats, .metaNoop: pool.stats.localReplies.add()
        case .metaDebug: pool.stats.other.add()
        default: pool.stats.writes.add()
        }
        slot.isSilent = request.noreply
        switch request.command {
        case .version:
            slot.complete(with: "VERSION \(memcachedCompatibleVersion)\r\n")
        case .verbosity:
            slot.complete(with: "OK\r\n" as StaticString)
        case .quit:
            slot.isSilent = true
            slot.complete(with: "" as StaticString)
            closeWhenDrained = true
        case .stats:
            // `stats items`, `slabs`, `settings`, …: one server's internals, which a sum over
            // servers would misstate. An empty group, so that collectors that ask for them
            // (memcached_exporter) go on with the general figures. Any other argument (`reset`,
            // `detail`, `cachedump`, a group memcached does not have): `ERROR`, as memcached
            // answers a group it does not know.
            if Self.hasStatsArgument(frame) {
                slot.complete(with: Self.isServerStatsGroup(frame) ? "END\r\n" as StaticString : "ERROR\r\n")
            } else {
                slot.complete(with: statsReply())
            }
        case .flushAll:
            fanOut(request, frame, slot)
        case .metaNoop:
            // Every earlier reply leaves first (slots are ordered), so MN closes the batch.
            slot.complete(with: "MN\r\n" as StaticString)
        case .metaGet where pool.old != nil:
            let read = WarmupRead(mode: .meta, pool: pool, clientIndex: index)
            read.frame = Array(frame)
            read.isQuiet = request.isQuiet
            read.isBase64Key = request.isBase64Key
            slot.warmup = read
            if let vivify = Self.vivifyToken(request, frame) {
                // Asked without `N` first (`WarmupRead.vivifies`); the token follows the key, so
                // the request's offsets hold in the shorter line.
                read.vivifies = true
                let stripped = Array(frame[0..<vivify.lowerBound]) + Array(frame[vivify.upperBound...])
                stripped.withUnsafeBytes { forwardMeta(request, $0, slot) }
            } else {
                forwardMeta(request, frame, slot)
            }
        case .metaDelete where pool.deletesReachOldPool:
            deleteInBothPools(request, frame, slot, route: WarmupRoute(pool)!)
        case .metaGet, .metaSet, .metaDelete, .metaArithmetic, .metaDebug:
            forwardMeta(request, frame, slot)
        case .get, .gets, .gat, .gats:
            if pool.old != nil {
                let read = WarmupRead(mode: .text, pool: pool, clientIndex: index)
                read.command = request.command
                if request.argumentEnd > request.argumentStart { read.exptime = Array(frame[request.argumentStart..<request.argumentEnd]) }
                routeMultiGet(request, frame, slot, warmup: read)
            } else if request.keyCount > 1 {
                routeMultiGet(request, frame, slot)
            } else {
                forward(request, frame, key: UnsafeRawBufferPointer(rebasing: frame[request.keysStart..<request.keysEnd]), slot)
            }
        case .delete where pool.deletesReachOldPool:
            deleteInBothPools(request, frame, slot, route: WarmupRoute(pool)!)
        default:
            forward(request, frame, key: UnsafeRawBufferPointer(rebasing: frame[request.keysStart..<request.keysEnd]), slot)
        }
    }

    /// Before authentication (memcached's `-Y` authfile mode): the first command must be
    /// `set <any key> <flags> <exptime> <bytes>` with `<user> <password>` as its data; it is
    /// answered `STORED` (even with noreply, as memcached does) or `CLIENT_ERROR authentication
    /// failure`. Anything else is `CLIENT_ERROR unauthenticated`, except `quit`.
    private func authenticateText(_ request: MemcacheRequest, _ frame: UnsafeRawBufferPointer, _ slot: ReplySlot) {
        slot.isSilent = false
        switch request.command {
        case .quit:
            slot.isSilent = true
            slot.complete(with: "" as StaticString)
            closeWhenDrained = true
        case .set:
            let data = UnsafeRawBufferPointer(rebasing: frame[request.lineLength..<(request.lineLength + request.dataLength)])
            var user: RedisUser?
            if let space = data.firstIndex(of: UInt8(ascii: " ")) {
                user = pool.verify(user: UnsafeRawBufferPointer(rebasing: data[..<space]),
                                   password: UnsafeRawBufferPointer(rebasing: data[(space + 1)...]))
            }
            if let user {
                authenticatedUser = user
                usersGeneration = pool.usersGeneration
                authFailures = 0
                slot.complete(with: "STORED\r\n" as StaticString)
            } else {
                authFailures += 1
                authenticationFailed(failures: authFailures)
                slot.complete(with: "CLIENT_ERROR authentication failure\r\n" as StaticString)
            }
        default:
            pool.stats.clientErrorReplies.add()
            slot.complete(with: "CLIENT_ERROR unauthenticated\r\n" as StaticString)
        }
    }

    /// After a reload: the client takes its user's new rules, or authenticates again when the
    /// user is gone.
    func rebindMemcacheUser() {
        usersGeneration = pool.usersGeneration
        authenticatedUser = authenticatedUser.flatMap { pool.currentUser(named: $0) }
    }

    /// Whether a memcached command changes data: storage, delete, arithmetic, touch (and
    /// get-and-touch), flush_all and their meta forms.
    private static func changesData(_ command: MemcacheCommand) -> Bool {
        switch command {
        case .get, .gets, .metaGet, .metaNoop, .metaDebug, .version, .quit, .verbosity, .stats: return false
        default: return true
        }
    }

    /// An `mg` that changes its item: `T` (touch; binary Touch and GAT become it) or `N`
    /// (vivify on miss).
    private static func metaGetWrites(_ request: MemcacheRequest, _ frame: UnsafeRawBufferPointer) -> Bool {
        var at = request.keysEnd
        while at < request.contentEnd {
            if frame[at - 1] == UInt8(ascii: " "), frame[at] == UInt8(ascii: "T") || frame[at] == UInt8(ascii: "N") { return true }
            at += 1
        }
        return false
    }

    /// A user's rules for one memcached request: @write for commands that change data, @read
    /// (GET) for the others, and every key under one of the user's prefixes (flush_all needs
    /// every key).
    func memcachePermits(_ user: RedisUser, _ request: MemcacheRequest, _ frame: UnsafeRawBufferPointer) -> Bool {
        let command = request.command
        if command == .quit || command == .version || command == .metaNoop { return true }
        guard Self.changesData(command) ? user.memcacheWrite : user.memcacheRead else { return false }
        if command == .metaGet, !user.memcacheWrite, Self.metaGetWrites(request, frame) { return false }
        if user.allKeys { return true }
        if command == .flushAll { return false }
        if command.isLocal { return true }
        if command.isMeta || request.keyCount <= 1 {
            return withHashKey(request, frame) { user.allowsMemcacheKey($0) }
        }
        var at = request.keysStart
        while at < request.keysEnd {
            while at < request.keysEnd, frame[at] == UInt8(ascii: " ") { at += 1 }
            var end = at
            while end < request.keysEnd, frame[end] != UInt8(ascii: " ") { end += 1 }
            if end > at, !user.allowsMemcacheKey(UnsafeRawBufferPointer(rebasing: frame[at..<end])) { return false }
            at = end
        }
        return true
    }

    /// Sends the request to the key's server as it came, without `noreply` (the reply keeps the
    /// backend connection in step and is dropped here).
    private func forward(_ request: MemcacheRequest, _ frame: UnsafeRawBufferPointer, key: UnsafeRawBufferPointer, _ slot: ReplySlot) {
        guard let server = pool.serverIndex(forKey: key) else {
            slot.failNoServer()
            return
        }
        if request.command.isRetrieval {
            // A single-key get: its reply may name this key only.
            slot.keys.append(ReplySlot.KeyEntry(keyStart: slot.keyBytes.readableCount, keyLength: key.count, server: Int32(server)))
            slot.keyBytes.append(key)
        }
        pool.withConnection(toServer: server, client: index) { connection in
            if !request.noreply {
                connection.forward(frame, slot: slot, framing: request.command.framing)
                return
            }
            let output = connection.requestBuffer()
            MemcacheEncoder.withoutNoreply(frame, request, into: output)
            connection.enqueue(slot: slot, part: ReplyPart.whole, framing: request.command.framing)
        }
    }

    /// Calls `body` with the key as placement hashes it: decoded when sent in base64.
    private func withHashKey<R>(_ request: MemcacheRequest, _ frame: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        let key = UnsafeRawBufferPointer(rebasing: frame[request.keysStart..<request.keysEnd])
        guard request.isBase64Key else { return body(key) }
        return withUnsafeTemporaryAllocation(byteCount: key.count, alignment: 1) { decoded in
            let count = Base64.decode(key, into: decoded)
            return body(UnsafeRawBufferPointer(rebasing: decoded[0..<count]))
        }
    }

    /// The `N<ttl>` flag of a meta request with the space before it, if it has one.
    private static func vivifyToken(_ request: MemcacheRequest, _ frame: UnsafeRawBufferPointer) -> Range<Int>? {
        var position = request.keysEnd
        var found: Range<Int>?
        while position < request.contentEnd {
            let start = position
            position += 1
            while position < request.contentEnd, frame[position] != 0x20 { position += 1 }
            if position > start + 1, frame[start + 1] == UInt8(ascii: "N") {
                // Two: memcached refuses the line (`CLIENT_ERROR duplicate flag`), so it goes as
                // sent; without one of them it would vivify (found by a framing sweep: the
                // empty item hid the old pool's value from every client).
                if found != nil { return nil }
                found = start..<position
            }
        }
        return found
    }

    /// A meta command, routed by its key (decoded first when sent in base64). A quiet command
    /// is followed by Tern's own `mn` so the backend's answer, even an empty one, is framed.
    private func forwardMeta(_ request: MemcacheRequest, _ frame: UnsafeRawBufferPointer, _ slot: ReplySlot) {
        guard let server = withHashKey(request, frame, { pool.server(forKey: $0) }) else {
            slot.failNoServer()
            return
        }
        if let read = slot.warmupRead {
            let key = UnsafeRawBufferPointer(rebasing: frame[request.keysStart..<request.keysEnd])
            withHashKey(request, frame) { read.addKey(key, hashKey: $0, newServer: Int32(server.index)) }
        }
        let connection = server.connection(for: index)
        writeMeta(request, frame, into: connection.requestBuffer())
        connection.enqueue(slot: slot, part: ReplyPart.whole, framing: request.isQuiet ? .metaUntilNoop : .meta)
    }

    /// The meta request as it came, and Tern's own `mn` after a quiet one.
    private func writeMeta(_ request: MemcacheRequest, _ frame: UnsafeRawBufferPointer, into output: ByteBuffer) {
        output.append(frame)
        if request.isQuiet { MemcacheEncoder.noop(into: output) }
    }

    /// Warm-up `delete` and `md` with `deletes: both`: both pools, so a deleted key never comes
    /// back from the old one. The client gets DELETED (HD) when either pool deleted it.
    private func deleteInBothPools(_ request: MemcacheRequest, _ frame: UnsafeRawBufferPointer, _ slot: ReplySlot, route: WarmupRoute) {
        if request.command.isMeta {
            let sink = EitherDeleted(isMeta: true, isQuietMeta: request.isQuiet)
            withHashKey(request, frame) { key in
                route.invalidate(key, slot, client: index, mergedBy: .eitherDeleted(sink), framing: request.isQuiet ? .metaUntilNoop : .meta) { output in
                    writeMeta(request, frame, into: output)
                }
            }
            return
        }
        // Always with a reply (noreply is honoured towards the client only).
        route.invalidate(UnsafeRawBufferPointer(rebasing: frame[request.keysStart..<request.keysEnd]), slot, client: index,
                         mergedBy: .eitherDeleted(EitherDeleted()), framing: .line) { MemcacheEncoder.withoutNoreply(frame, request, into: $0) }
    }

    /// A multi-key get: keys are grouped per server, one request per server is sent, and the
    /// VALUE records are merged in the client's key order behind one END. A key named more
    /// than once is asked once and its record copied for each repeat (`RepeatedKeys`).
    private func routeMultiGet(_ request: MemcacheRequest, _ frame: UnsafeRawBufferPointer, _ slot: ReplySlot, warmup: WarmupRead? = nil) {
        slot.warmup = warmup
        noteRequestKeys(request.keyCount)
        var position = request.keysStart
        var firstServer = -1
        var singleServer = true
        // A key named again is asked once, in every phase of a warm-up read too.
        worker.repeatedKeys.begin()
        while position < request.keysEnd {
            while frame[position] == 0x20 { position += 1 }
            let start = position
            while position < request.keysEnd, frame[position] != 0x20 { position += 1 }
            let key = UnsafeRawBufferPointer(rebasing: frame[start..<position])
            if let earlier = worker.repeatedKeys.earlier(key, position: slot.keys.count, isEqual: { slot.sameKey(slot.keys[$0], key) }) {
                slot.addRepeat(of: earlier)
                warmup?.addRepeat(of: earlier)
                continue
            }
            let server = pool.serverIndex(forKey: key) ?? -1
            if firstServer == -1 { firstServer = server } else if server != firstServer { singleServer = false }
            slot.keys.append(ReplySlot.KeyEntry(keyStart: slot.keyBytes.readableCount, keyLength: key.count, server: Int32(server)))
            slot.keyBytes.append(key)
            warmup?.addKey(key, newServer: Int32(server))
        }
        if singleServer, firstServer >= 0, warmup == nil, !slot.hasRepeatedKeys {
            // Every key lives on one server: the request goes as it is (its keys stay in the
            // slot, so that the reply's VALUE keys are checked against them).
            pool.withConnection(toServer: firstServer, client: index) { $0.forward(frame, slot: slot, framing: request.command.framing) }
            return
        }
        // Keys with no live server are never sent: they are misses.
        var split = ReplySplit(slot, mergedBy: .records(MultiGetRecords()))
        worker.withFragmentServers { servers in
            for entry in slot.keys where entry.server >= 0 && !servers.contains(entry.server) { servers.append(entry.server) }
            // A get that reaches one server is not a fragment, even when split (to ask its
            // repeated keys once, or on a warm-up pool, where every get is: each counted one;
            // stats sweep 30).
            if servers.count > 1 { pool.stats.fragments.add(servers.count) }
            let prefix = UnsafeRawBufferPointer(rebasing: frame[0..<(request.argumentEnd > request.argumentStart ? request.argumentEnd : commandEnd(frame))])
            let keyBytes = slot.keyBytes.readable
            SplitRoute(pool).send(servers, &split, client: index, framing: request.command.framing) { server, output in
                MemcacheEncoder.retrievalStart(prefix, into: output)
                for entry in slot.keys where entry.server == server {
                    MemcacheEncoder.key(UnsafeRawBufferPointer(rebasing: keyBytes[entry.keyStart..<(entry.keyStart + entry.keyLength)]), into: output)
                }
                MemcacheEncoder.endLine(into: output)
            }
        }
        split.close()
    }

    private func commandEnd(_ frame: UnsafeRawBufferPointer) -> Int {
        var end = 0
        while frame[end] != 0x20 { end += 1 }
        return end
    }

    /// `flush_all`: the same line to every live server (a warm-up's old pool included with
    /// `deletes: both`); `OK` only when every server said OK.
    private func fanOut(_ request: MemcacheRequest, _ frame: UnsafeRawBufferPointer, _ slot: ReplySlot) {
        EveryServerRoute(pool, invalidates: true).send(slot, client: index, mergedBy: .allOK(AllOK(dialect: .memcached)),
                                                       framing: request.command.framing) { output in
            // Always with a reply, so every server's answer is checked.
            MemcacheEncoder.withoutNoreply(frame, request, into: output)
        }
    }

    /// Whether `stats` names a group (`stats items`).
    /// `stats <group>` names one of memcached's per-server groups (the first argument).
    static func isServerStatsGroup(_ frame: UnsafeRawBufferPointer) -> Bool {
        var start = 5
        while start < frame.count, frame[start] == 0x20 || frame[start] == 0x09 { start += 1 }
        var end = start
        while end < frame.count, frame[end] != 0x20, frame[end] != 0x09, frame[end] != 0x0d, frame[end] != 0x0a { end += 1 }
        return isServerStatsGroup(named: UnsafeRawBufferPointer(rebasing: frame[start..<end]))
    }

    /// Whether `group` is one of memcached's per-server stats groups (`items`, `slabs`, …).
    static func isServerStatsGroup(named group: UnsafeRawBufferPointer) -> Bool {
        ["items", "slabs", "sizes", "conns", "settings", "extstore"].contains { name in
            name.utf8.count == group.count && name.utf8.elementsEqual(group)
        }
    }

    static func hasStatsArgument(_ frame: UnsafeRawBufferPointer) -> Bool {
        var index = 5
        while index < frame.count, frame[index] == 0x20 || frame[index] == 0x09 { index += 1 }
        return index < frame.count && frame[index] != 0x0d && frame[index] != 0x0a
    }

    /// `stats`: Tern's lines, then the servers' own figures summed (polled once a second, off
    /// the request path). The binary protocol's STAT answers the same pairs.
    func memcachedStats() -> [(String, String)] {
        let info = worker.processInfo
        let now = Int(time(nil))
        let shared = pool.plan.shared
        var stats = [("pid", "\(getpid())"), ("uptime", "\(now - info.startTime)"), ("time", "\(now)"), ("version", memcachedCompatibleVersion),
                     ("tern_version", info.version),
                     ("pool", pool.config.name), ("curr_connections", "\(shared.clientCount.load(ordering: .relaxed))"),
                     ("total_connections", "\(shared.totalConnections.load(ordering: .relaxed))"), ("servers", "\(pool.servers.count)"),
                     ("threads", "\(shared.workerCounters.count)")]
        for (name, value) in pool.plan.poolSummary { stats.append((name, "\(value)")) }
        if pool.old != nil {
            for (name, value) in pool.warmupCounters.report() { stats.append((name, "\(value)")) }
        }
        stats += BackendInfo.memcachedTotals(pool.plan)
        return stats
    }

    private func statsReply() -> String {
        var text = ""
        for (name, value) in memcachedStats() { text += "STAT \(name) \(value)\r\n" }
        return text + "END\r\n"
    }

}

/// The memcached version Tern presents (`version`, binary Version, `stats`), as Redis clients
/// get `redis_version:7.0.0`: libmemcached (php-memcached, pylibmc, memcstat) refuses a major
/// version of 0, Tern's own (`tern_version` in `stats`), and php-memcached's `getVersion` and
/// `getStats` failed on it. 1.6.18 is the memcached whose replies Tern's tests compare against.
let memcachedCompatibleVersion = "1.6.18"
