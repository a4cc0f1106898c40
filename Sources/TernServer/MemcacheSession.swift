#if canImport(Glibc)
import Glibc
#endif
import TernCore

/// The memcached text protocol on a client connection: parse, answer locally or route.
extension ClientConnection {
    /// Parses and routes every complete memcached request in `buffer`.
    func processMemcache(_ buffer: ByteBuffer) {
        while !buffer.isEmpty, !closeWhenDrained, !isClosed {
            if skipRemaining > 0 {
                let count = min(skipRemaining, buffer.readableCount)
                skipRemaining -= count
                buffer.consume(count)
                continue
            }
            if pipelineIsFull() { return }
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

    func route(_ request: MemcacheRequest, _ frame: UnsafeRawBufferPointer) {
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
        let output = connection.requestBuffer()
        if request.noreply {
            output.append(UnsafeRawBufferPointer(rebasing: frame[0..<request.noreplyStart]))
            output.append("\r\n" as StaticString)
            output.append(UnsafeRawBufferPointer(rebasing: frame[request.lineLength...]))
        } else {
            output.append(frame)
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
            connection.requestBuffer().append(frame)
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
            let output = connection.requestBuffer()
            output.append(prefix)
            for entry in slot.keys where entry.server == server {
                output.append(byte: 0x20)
                output.append(UnsafeRawBufferPointer(rebasing: keyBytes[Int(entry.keyStart)..<Int(entry.keyStart + entry.keyLength)]))
            }
            output.append("\r\n" as StaticString)
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
            let output = connection.requestBuffer()
            if request.noreply {
                output.append(UnsafeRawBufferPointer(rebasing: frame[0..<request.noreplyStart]))
                output.append("\r\n" as StaticString)
            } else {
                output.append(frame)
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
}
