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
    unowned let pool: PoolRuntime
    let index: Int
    /// Bytes of a partial request (allocated only while one is pending).
    private let input = ByteBuffer()
    let output = ByteBuffer()
    private var slots = FIFO<ReplySlot>()
    private var watcher: IOWatcher?
    var isDirty = false
    /// Bytes of a refused data block still to be discarded as they arrive.
    private var skipRemaining = 0
    /// No more requests are read (quit, end of input, fatal error); close once replies are out.
    private var closeWhenDrained = false
    private var isClosed = false
    /// Requests in flight before reading pauses; reading resumes as replies leave.
    static let maxInFlight = 16384

    init(descriptor: Int32, pool: PoolRuntime) {
        self.descriptor = descriptor
        self.pool = pool
        self.index = pool.worker.nextClientIndex()
    }

    var worker: Worker { pool.worker }

    func start() {
        let watcher = IOWatcher(worker: worker, descriptor: descriptor, owner: self) { _, watcher, events in
            let client = Unmanaged<ClientConnection>.fromOpaque(tern_get_data(watcher)!).takeUnretainedValue()
            client.handle(events: events)
        }
        self.watcher = watcher
        worker.adopt(self)
        watcher.watch(TERN_EV_READ)
    }

    @inline(__always)
    func isHead(_ slot: ReplySlot) -> Bool { slots.first === slot }

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
            case let .transferred(count):
                if buffer.writableCount > 0 && count < 4096 { break readLoop }
                if buffer.readableCount >= 4 << 20 { break readLoop }
            case .wouldBlock:
                break readLoop
            case .endOfFile:
                reachedEnd = true
                break readLoop
            case .failed:
                close()
                return
            }
        }
        process(buffer)
        if buffer === worker.scratch {
            // Keep what is left of a partial request in the connection's own buffer.
            if !buffer.isEmpty { input.append(buffer.readable) }
            buffer.removeAll()
        }
        if reachedEnd {
            closeWhenDrained = true
            watcher?.watch(0)
            closeIfDrained()
        }
    }

    /// Parses and routes every complete request in `buffer`.
    private func process(_ buffer: ByteBuffer) {
        while !buffer.isEmpty, !closeWhenDrained, !isClosed {
            if skipRemaining > 0 {
                let count = min(skipRemaining, buffer.readableCount)
                skipRemaining -= count
                buffer.consume(count)
                continue
            }
            if slots.count >= Self.maxInFlight {
                watcher?.watch(watcher!.events & ~TERN_EV_READ)
                return
            }
            let bytes = buffer.readable
            switch MemcacheRequestParser.parse(bytes, limits: pool.limits) {
            case .incomplete:
                return
            case let .request(request):
                route(request, UnsafeRawBufferPointer(rebasing: bytes[0..<request.frameLength]))
                buffer.consume(request.frameLength)
            case let .rejected(rejection, consume, skip, close):
                let slot = newSlot()
                slot.complete(with: rejection.reply)
                buffer.consume(consume)
                skipRemaining = skip
                if close { closeWhenDrained = true }
            }
        }
    }

    private func newSlot() -> ReplySlot {
        let slot = worker.makeSlot(for: self)
        slots.append(slot)
        return slot
    }

    // MARK: Routing

    private func route(_ request: MemcacheRequest, _ frame: UnsafeRawBufferPointer) {
        let slot = newSlot()
        slot.isSilent = request.noreply
        switch request.command {
        case .version:
            slot.complete(with: "VERSION \(worker.processInfo.version)\r\n")
        case .verbosity:
            slot.complete(with: "OK\r\n" as StaticString)
        case .quit:
            slot.isSilent = true
            slot.complete(with: "" as StaticString)
            closeWhenDrained = true
        case .stats:
            slot.complete(with: statsReply())
        case .flushAll:
            fanOut(request, frame, slot)
        case .get, .gets, .gat, .gats:
            if request.keyCount > 1 {
                routeMultiGet(request, frame, slot)
            } else {
                forward(request, frame, key: UnsafeRawBufferPointer(rebasing: frame[request.keysStart..<request.keysEnd]), slot)
            }
        default:
            forward(request, frame, key: UnsafeRawBufferPointer(rebasing: frame[request.keysStart..<request.keysEnd]), slot)
        }
    }

    /// Sends the request to the key's server as it came, without `noreply` (the reply keeps the
    /// backend connection in step and is dropped here).
    private func forward(_ request: MemcacheRequest, _ frame: UnsafeRawBufferPointer, key: UnsafeRawBufferPointer, _ slot: ReplySlot) {
        guard let server = pool.server(forKey: key) else {
            slot.fail(part: 0, reason: "no server available")
            return
        }
        let connection = server.connection(for: index)
        if request.noreply {
            connection.output.append(UnsafeRawBufferPointer(rebasing: frame[0..<request.noreplyStart]))
            connection.output.append("\r\n" as StaticString)
            connection.output.append(UnsafeRawBufferPointer(rebasing: frame[request.lineLength...]))
        } else {
            connection.output.append(frame)
        }
        slot.remainingParts = 1
        connection.enqueue(slot: slot, part: 0, command: request.command)
    }

    /// A multi-key get: keys are grouped per server, one request per server is sent, and the
    /// VALUE records are merged in the client's key order behind one END.
    private func routeMultiGet(_ request: MemcacheRequest, _ frame: UnsafeRawBufferPointer, _ slot: ReplySlot) {
        slot.kind = .multiGet
        var position = request.keysStart
        var firstServer = -1
        var singleServer = true
        while position < request.keysEnd {
            while frame[position] == 0x20 { position += 1 }
            let start = position
            while position < request.keysEnd, frame[position] != 0x20 { position += 1 }
            let key = UnsafeRawBufferPointer(rebasing: frame[start..<position])
            let server = pool.server(forKey: key)?.index ?? -1
            if firstServer == -1 { firstServer = server } else if server != firstServer { singleServer = false }
            slot.keys.append(ReplySlot.KeyEntry(keyStart: Int32(slot.keyBytes.readableCount), keyLength: Int32(key.count), server: Int32(server)))
            slot.keyBytes.append(key)
        }
        if singleServer, firstServer >= 0 {
            // Every key lives on one server: the request goes as it is.
            slot.kind = .single
            slot.keys.removeAll(keepingCapacity: true)
            slot.keyBytes.removeAll()
            let connection = pool.servers[firstServer].connection(for: index)
            connection.output.append(frame)
            slot.remainingParts = 1
            connection.enqueue(slot: slot, part: 0, command: request.command)
            return
        }
        // Count the parts first so that a part failing at once cannot finish the slot early.
        var servers: [Int32] = []
        for entry in slot.keys where entry.server >= 0 && !servers.contains(entry.server) { servers.append(entry.server) }
        slot.remainingParts = servers.count + 1
        let prefix = UnsafeRawBufferPointer(rebasing: frame[0..<(request.argumentEnd > request.argumentStart ? request.argumentEnd : commandEnd(frame))])
        let keyBytes = slot.keyBytes.readable
        for server in servers {
            let connection = pool.servers[Int(server)].connection(for: index)
            connection.output.append(prefix)
            for entry in slot.keys where entry.server == server {
                connection.output.append(byte: 0x20)
                connection.output.append(UnsafeRawBufferPointer(rebasing: keyBytes[Int(entry.keyStart)..<Int(entry.keyStart + entry.keyLength)]))
            }
            connection.output.append("\r\n" as StaticString)
            connection.enqueue(slot: slot, part: server, command: request.command)
        }
        // The extra part stands for keys with no live server: they are misses.
        slot.fail(part: -1, reason: "")
    }

    private func commandEnd(_ frame: UnsafeRawBufferPointer) -> Int {
        var end = 0
        while frame[end] != 0x20 { end += 1 }
        return end
    }

    /// `flush_all`: the same line to every live server; `OK` only when every server said OK.
    private func fanOut(_ request: MemcacheRequest, _ frame: UnsafeRawBufferPointer, _ slot: ReplySlot) {
        slot.kind = .fanOut
        let live = pool.servers.filter { !$0.isEjected }
        if live.isEmpty {
            slot.remainingParts = 1
            slot.fail(part: 0, reason: "no server available")
            return
        }
        slot.remainingParts = live.count
        for server in live {
            let connection = server.connection(for: index)
            if request.noreply {
                connection.output.append(UnsafeRawBufferPointer(rebasing: frame[0..<request.noreplyStart]))
                connection.output.append("\r\n" as StaticString)
            } else {
                connection.output.append(frame)
            }
            connection.enqueue(slot: slot, part: Int32(server.index), command: request.command)
        }
    }

    private func statsReply() -> String {
        let info = worker.processInfo
        let now = Int(time(nil))
        var text = "STAT pid \(getpid())\r\nSTAT uptime \(now - info.startTime)\r\nSTAT time \(now)\r\nSTAT version \(info.version)\r\n"
        text += "STAT pool \(pool.config.name)\r\n"
        text += "STAT curr_connections \(pool.plan.clientCount.load(ordering: .relaxed))\r\n"
        text += "STAT total_connections \(pool.plan.totalConnections.load(ordering: .relaxed))\r\n"
        text += "STAT servers \(pool.servers.count)\r\n"
        text += "END\r\n"
        return text
    }

    // MARK: Replies

    /// A slot was filled: every finished slot at the head of the queue goes to the output.
    func slotCompleted(_ slot: ReplySlot) {
        guard slots.first === slot else { return }
        while let head = slots.first, head.isDone {
            _ = slots.popFirst()
            head.emit(into: output)
            worker.recycle(head)
        }
        worker.markDirty(self)
    }

    /// Writes the output: called once per loop pass by the worker.
    func flush() {
        guard !isClosed else { return }
        if !output.isEmpty {
            switch Syscall.write(descriptor, output.readable) {
            case let .transferred(count):
                output.consume(count)
            case .wouldBlock:
                break
            case .failed, .endOfFile:
                close()
                return
            }
        }
        if output.isEmpty { output.releaseIfIdle(keep: 65536) }
        var events: Int32 = closeWhenDrained ? 0 : TERN_EV_READ
        if slots.count >= Self.maxInFlight { events = 0 }
        if !output.isEmpty { events |= TERN_EV_WRITE }
        watcher?.watch(events)
        if closeIfDrained() { return }
        // Reading was paused by a full pipeline: parse what is already buffered.
        if !closeWhenDrained, slots.count < Self.maxInFlight, !input.isEmpty {
            process(input)
        }
    }

    @discardableResult
    private func closeIfDrained() -> Bool {
        guard closeWhenDrained, slots.isEmpty, output.isEmpty else { return false }
        close()
        return true
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
