#if canImport(Glibc)
import Glibc
#endif
import TernCore

/// The memcached binary protocol on a client connection (pylibmc `binary=True`, libmemcached,
/// spymemcached): chosen for the connection by its first byte (the request magic 0x80); the
/// same listener serves text and meta clients. Each packet becomes the meta command that does
/// the same (`BinaryTranslator`) and takes the text path: placement, warm-up, timeouts,
/// isolation rules. Confined to the client's worker thread.
extension ClientConnection {
    func processBinary(_ buffer: ByteBuffer) {
        while mayParseNext(buffer) {
            let bytes = buffer.readable
            // Two calls rather than one with the limits chosen (choosing copies the struct),
            // as on the text path.
            let parsed = pool.requiresAuth && authenticatedUser == nil ? BinaryRequestParser.parse(bytes, limits: pool.preAuthMemcacheLimits)
                                                                       : BinaryRequestParser.parse(bytes, limits: pool.limits)
            switch parsed {
            case .incomplete:
                return
            case .invalid:
                // Not a request packet: framing is lost. Earlier replies leave, then the close:
                // a silent slot, as a QuitQ has, whose turn closes the connection. Without one,
                // a bad packet after every reply had left set nothing to flush: the connection
                // was never closed nor read again, and with bytes still arriving its read
                // watcher fired on every loop pass (binary sweep 32: a worker at 100 % CPU and a
                // descriptor kept per such client).
                pool.stats.clientErrorReplies.add()
                buffer.consume(buffer.readableCount)
                let slot = newSlot()
                slot.isSilent = true
                slot.complete(with: "" as StaticString)
                closeWhenDrained = true
            case let .rejected(request, status, consume, skip):
                pool.stats.clientErrorReplies.add()
                answerBinary(request.opcodeByte, status, request.opaque)
                buffer.consume(consume)
                skipRemaining = skip
            case let .request(request):
                // (Deletes and flushes reach a warm-up's old pool: `deleteMustWaitForWarmupReads`.)
                if pool.deletesReachOldPool, let base = request.opcode?.base, base == .delete || base == .flush, deleteMustWaitForWarmupReads() { return }
                routeBinary(request, UnsafeRawBufferPointer(rebasing: bytes[0..<request.packetLength]))
                noteRequestBytes(request.packetLength)
                buffer.consume(request.packetLength)
            }
        }
    }

    /// An error packet (or, for `.success`, an empty success) answered by Tern, in order.
    private func answerBinary(_ opcode: UInt8, _ status: BinaryStatus, _ opaque: UInt32) {
        var packet: [UInt8] = []
        if status == .success {
            BinaryTranslator.appendResponse(to: &packet, opcode: opcode, status: .success, opaque: opaque)
        } else {
            BinaryTranslator.appendError(to: &packet, opcode: opcode, status: status, opaque: opaque)
        }
        answerBinaryPacket(packet)
    }

    private func answerBinaryPacket(_ packet: [UInt8]) {
        let slot = newSlot()
        packet.withUnsafeBytes { slot.data.append($0) }
        slot.complete(with: "" as StaticString)
    }

    private func routeBinary(_ request: BinaryRequest, _ packet: UnsafeRawBufferPointer) {
        // `users:`: before SASL authentication only SASL, Version (as memcached lets it through)
        // and quit are served.
        if authenticatedUser != nil, usersGeneration != pool.usersGeneration { rebindMemcacheUser() }
        if pool.requiresAuth, authenticatedUser == nil {
            switch request.opcode {
            case .saslListMechs?, .saslAuth?, .saslStep?, .version?, .quit?, .quitQ?: break
            default: return answerBinary(request.opcodeByte, .authenticationError, request.opaque)
            }
        }
        // The common request, a Get (or GetK/GetQ/GetKQ) of a key the text protocol carries
        // as it is, becomes `gets <key>` here; everything else goes through the translator.
        if let opcode = request.opcode, opcode.base == .get, request.keyStart == request.extrasStart,
           request.valueStart == request.packetLength, request.valueStart > request.keyStart {
            let key = UnsafeRawBufferPointer(rebasing: packet[request.keyStart..<request.valueStart])
            if key.count <= pool.limits.maxKeyLength, BinaryTranslator.isPlainToken(key, controlBytes: !pool.limits.rejectsControlCharacters) {
                let line = worker.binaryGetLine
                line.removeAll()
                MemcacheEncoder.gets(key: key, into: line)
                // The line is Tern's own and its key passed the parser's checks just above: its
                // parse is known (`MemcacheRequest.gets`, checked against the parser by a test).
                return routeParsed(request, .gets(keyLength: key.count), line.readable, key: key)
            }
        }
        // The worker's line buffer, taken out for the call (a swap, not a copy) and given back.
        var line: [UInt8] = []
        swap(&line, &worker.binaryLine)
        defer {
            if line.capacity <= 1 << 16 { swap(&line, &worker.binaryLine) }
        }
        switch BinaryTranslator.translate(request, packet: packet, into: &line, controlBytes: !pool.limits.rejectsControlCharacters) {
        case let .refuse(status):
            pool.stats.clientErrorReplies.add()
            return answerBinary(request.opcodeByte, status, request.opaque)
        case .local:
            return answerBinaryLocally(request, packet)
        case .meta, .flush:
            break
        }
        let key = UnsafeRawBufferPointer(rebasing: packet[request.keyStart..<request.valueStart])
        line.withUnsafeBytes { routeTranslated(request, $0, key: key) }
    }

    /// Routes the text line a packet became, as a text request whose slot answers in binary.
    private func routeTranslated(_ request: BinaryRequest, _ frame: UnsafeRawBufferPointer, key: UnsafeRawBufferPointer) {
        guard case let .request(parsed) = MemcacheRequestParser.parse(frame, limits: pool.limits) else {
            // Tern wrote the line itself; a refusal means the packet's fields did not fit.
            pool.stats.clientErrorReplies.add()
            return answerBinary(request.opcodeByte, .invalidArguments, request.opaque)
        }
        routeParsed(request, parsed, frame, key: key)
    }

    private func routeParsed(_ request: BinaryRequest, _ parsed: MemcacheRequest, _ frame: UnsafeRawBufferPointer, key: UnsafeRawBufferPointer) {
        // `users:`: the user's rules on the text request the packet became (both the Get
        // fast path and translated packets come through here).
        if let user = authenticatedUser, !memcachePermits(user, parsed, frame) {
            pool.stats.clientErrorReplies.add()
            return answerBinary(request.opcodeByte, .authenticationError, request.opaque)
        }
        // The slot the text path takes gets the binary identity before anything can
        // complete it (a failure to reach a server completes it at once).
        worker.replies.pendingBinary = BinaryContext(opcode: request.opcodeByte, opaque: request.opaque, keyLength: key.count)
        worker.replies.pendingBinaryKey = key
        route(parsed, frame)
        worker.replies.pendingBinary = nil
    }

    /// noop, version, quit, stat, and the SASL opcodes (memcached without SASL configured
    /// answers them as unknown commands, and so does Tern).
    private func answerBinaryLocally(_ request: BinaryRequest, _ packet: UnsafeRawBufferPointer) {
        guard let opcode = request.opcode else { return answerBinary(request.opcodeByte, .unknownCommand, request.opaque) }
        switch opcode {
        case .noop:
            // Every earlier reply leaves first (slots are ordered), so this closes a quiet batch.
            answerBinary(request.opcodeByte, .success, request.opaque)
        case .version:
            var packet: [UInt8] = []
            let version = Array(memcachedCompatibleVersion.utf8)
            version.withUnsafeBytes { BinaryTranslator.appendResponse(to: &packet, opcode: request.opcodeByte, status: .success, opaque: request.opaque, value: $0) }
            answerBinaryPacket(packet)
        case .quit, .quitQ:
            if opcode == .quit {
                answerBinary(request.opcodeByte, .success, request.opaque)
            } else {
                // Nothing to answer, but a slot all the same, as text `quit` has: its turn is
                // what closes the connection once the replies before it are written (with none,
                // a QuitQ alone left the connection open and reading nothing).
                let slot = newSlot()
                slot.isSilent = true
                slot.complete(with: "" as StaticString)
            }
            closeWhenDrained = true
        case .stat:
            // A group (`items`, `slabs`, …) is one server's internals: answered empty, as text
            // `stats <group>` is. Any other key is "Not found", as memcached answers a group it
            // does not know, `reset` and `detail` included, which memcached would carry out:
            // Tern does not reset or dump its servers' figures (text answers `ERROR`).
            let group = UnsafeRawBufferPointer(rebasing: packet[request.keyStart..<request.valueStart])
            if !group.isEmpty, !Self.isServerStatsGroup(named: group) {
                return answerBinary(request.opcodeByte, .keyNotFound, request.opaque)
            }
            let stats = group.isEmpty ? memcachedStats() : []
            var packet: [UInt8] = []
            for (name, value) in stats {
                Array(name.utf8).withUnsafeBytes { key in
                    Array(value.utf8).withUnsafeBytes { BinaryTranslator.appendResponse(to: &packet, opcode: request.opcodeByte, status: .success, opaque: request.opaque, key: key, value: $0) }
                }
            }
            BinaryTranslator.appendResponse(to: &packet, opcode: request.opcodeByte, status: .success, opaque: request.opaque)
            answerBinaryPacket(packet)
        case .saslListMechs where pool.requiresAuth:
            var packet: [UInt8] = []
            BinaryTranslator.appendResponse(to: &packet, opcode: request.opcodeByte, status: .success, opaque: request.opaque,
                                            value: UnsafeRawBufferPointer(start: ("PLAIN" as StaticString).utf8Start, count: 5))
            answerBinaryPacket(packet)
        case .saslAuth where pool.requiresAuth:
            saslPlain(request, packet)
        case .saslStep where pool.requiresAuth:
            // PLAIN has no steps: a failure, which ends an earlier authentication, as every
            // SASL exchange does in memcached.
            authenticatedUser = nil
            answerBinary(request.opcodeByte, .authenticationError, request.opaque)
        default:
            answerBinary(request.opcodeByte, .unknownCommand, request.opaque)
        }
    }

    /// SASL PLAIN: the key names the mechanism, the value is `authzid NUL user NUL password`
    /// (authzid ignored). Success is status 0 with "Authenticated", as memcached answers;
    /// anything else 0x20 "Auth failure.".
    private func saslPlain(_ request: BinaryRequest, _ packet: UnsafeRawBufferPointer) {
        let mechanism = UnsafeRawBufferPointer(rebasing: packet[request.keyStart..<request.valueStart])
        let value = UnsafeRawBufferPointer(rebasing: packet[request.valueStart..<request.packetLength])
        var user: RedisUser?
        if mechanism.elementsEqual("PLAIN".utf8), let first = value.firstIndex(of: 0),
           let second = value[(first + 1)...].firstIndex(of: 0) {
            user = pool.verify(user: UnsafeRawBufferPointer(rebasing: value[(first + 1)..<second]),
                               password: UnsafeRawBufferPointer(rebasing: value[(second + 1)...]))
        }
        guard let user else {
            // A failed authentication ends the one before, as in memcached (every SASL auth
            // starts unauthenticated): the connection kept its earlier user (binary sweep 32).
            authenticatedUser = nil
            authFailures += 1
            authenticationFailed(failures: authFailures)
            return answerBinary(request.opcodeByte, .authenticationError, request.opaque)
        }
        authenticatedUser = user
        usersGeneration = pool.usersGeneration
        authFailures = 0
        var reply: [UInt8] = []
        BinaryTranslator.appendResponse(to: &reply, opcode: request.opcodeByte, status: .success, opaque: request.opaque,
                                        value: UnsafeRawBufferPointer(start: ("Authenticated" as StaticString).utf8Start, count: 13))
        answerBinaryPacket(reply)
    }
}
