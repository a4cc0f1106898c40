// Invariants the fuzz targets check on arbitrary input. The same functions replay the seed
// corpus and every past finding in the unit tests, so a crash found once stays fixed.
#if canImport(Glibc)
import Glibc
#endif
import TernCore

public enum FuzzTarget: String, CaseIterable, Sendable {
    case memcacheRequest = "memcache-request"
    case memcacheReply = "memcache-reply"
    case respRequest = "resp-request"
    case respReply = "resp-reply"
    case config
    case binaryRequest = "binary-request"
    case binaryTranslation = "binary-translation"
    case redisGlob = "redis-glob"
}

public enum FuzzChecks {
    /// A corpus file's bytes (nil when it cannot be read).
    public static func readFile(_ path: String) -> [UInt8]? {
        guard let file = fopen(path, "rb") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&chunk, 1, chunk.count, file)
            if count <= 0 { break }
            bytes += chunk[0..<count]
        }
        return bytes
    }

    public static func run(_ target: FuzzTarget, _ data: UnsafeRawBufferPointer) {
        switch target {
        case .memcacheRequest: memcacheRequest(data)
        case .memcacheReply: memcacheReply(data)
        case .respRequest: respRequest(data)
        case .respReply: respReply(data)
        case .config: config(data)
        case .binaryRequest: binaryRequest(data)
        case .binaryTranslation: binaryTranslation(data)
        case .redisGlob: redisGlob(data)
        }
    }

    /// `users:` key patterns: the input is a pattern, a zero byte, and a key. Matching ends
    /// (however many stars), a key matches itself with every byte escaped and nothing longer,
    /// and `*` matches every non-empty key.
    static func redisGlob(_ data: UnsafeRawBufferPointer) {
        let split = data.firstIndex(of: 0) ?? data.count
        let pattern = Array(data[..<split])
        let key = split < data.count ? Array(data[(split + 1)...]) : []
        _ = RedisGlob.matches(pattern, key)
        var escaped: [UInt8] = []
        for byte in key { escaped += [UInt8(ascii: "\\"), byte] }
        if !RedisGlob.matches(escaped, key) { fail("an escaped key does not match itself") }
        if RedisGlob.matches(escaped, key + [0x78]) { fail("an escaped key matches a longer key") }
        if !key.isEmpty, !RedisGlob.matches(Array("*".utf8), key) { fail("* does not match a key") }
    }

    static func fail(_ message: String) -> Never { fatalError("fuzz invariant: \(message)") }

    /// Parses every request in the input; each frame fits in the input; a frame cut at any byte
    /// is incomplete (or the same refusal); the noreply/key offsets lie inside the frame.
    static func memcacheRequest(_ data: UnsafeRawBufferPointer) {
        var limits = MemcacheLimits()
        limits.maxRetrievalLineLength = 1 << 16
        var offset = 0
        var frames = 0
        while offset < data.count, frames < 64 {
            let rest = UnsafeRawBufferPointer(rebasing: data[offset...])
            let result = MemcacheRequestParser.parse(rest, limits: limits)
            switch result {
            case .incomplete:
                return
            case let .request(request):
                if request.frameLength > rest.count || request.frameLength <= 0 { fail("frame \(request.frameLength) > input \(rest.count)") }
                if !(request.keysStart <= request.keysEnd && request.keysEnd <= request.contentEnd) { fail("key range outside the line") }
                if request.noreplyStart > request.contentEnd || request.contentEnd > request.lineLength { fail("noreply outside the line") }
                if request.frameLength <= 512 {
                    // Split at every byte boundary: each prefix waits for more, the whole parses the same.
                    for cut in 0..<request.frameLength {
                        if MemcacheRequestParser.parse(UnsafeRawBufferPointer(rebasing: rest[0..<cut]), limits: limits) != .incomplete {
                            fail("prefix \(cut) of a \(request.frameLength)-byte frame did not wait for more")
                        }
                    }
                    checkSplit(rest, request.frameLength) { MemcacheRequestParser.parse($0, limits: limits) == result }
                }
                offset += request.frameLength
            case let .rejected(_, consume, _, _):
                if consume > rest.count || consume <= 0 { fail("consume \(consume) > input \(rest.count)") }
                offset += consume
            }
            frames += 1
        }
    }

    /// Every prefix of a complete frame is incomplete, and the whole gives `same`.
    static func checkSplit(_ bytes: UnsafeRawBufferPointer, _ length: Int, _ same: (UnsafeRawBufferPointer) -> Bool) {
        let frame = UnsafeRawBufferPointer(rebasing: bytes[0..<length])
        if !same(frame) { fail("the frame alone parses differently") }
    }

    static func memcacheReply(_ data: UnsafeRawBufferPointer) {
        // Classification reads any bytes; a cut reply is incomplete.
        if MemcacheReply.classify(data) != .invalid, MemcacheReply.classify(data) != .incomplete {
            if let newline = data.firstIndex(of: 0x0a), newline < 256 {
                for cut in 0...newline where MemcacheReply.classify(UnsafeRawBufferPointer(rebasing: data[0..<cut])) != .incomplete {
                    fail("a \(cut)-byte prefix of a reply line was classified")
                }
            }
        }
        for framing in [MemcacheFraming.retrieval, .line, .stats, .meta, .metaUntilNoop, .metaItemsUntilNoop] {
            if case let .reply(length, _) = MemcacheReplyParser.parse(data, framing: framing) {
                if length > data.count || length <= 0 { fail("reply \(length) > input \(data.count)") }
                // A reply is complete exactly at its length: any shorter prefix is not.
                if length <= 256 {
                    for cut in 0..<length {
                        if case .reply = MemcacheReplyParser.parse(UnsafeRawBufferPointer(rebasing: data[0..<cut]), framing: framing) {
                            fail("prefix \(cut) of a \(length)-byte reply parsed as complete")
                        }
                    }
                }
                if framing == .meta, case let .item(item) = MetaItemReader.read(data) {
                    if item.length > data.count || item.length <= 0 { fail("meta item \(item.length) > input \(data.count)") }
                    if let value = item.value, value.upperBound > item.length { fail("meta value outside the item") }
                    for range in [item.key, item.opaque].compactMap({ $0 }) where range.upperBound > item.length { fail("meta flag outside the item") }
                }
                if framing == .retrieval {
                    MemcacheReplyParser.forEachValue(UnsafeRawBufferPointer(rebasing: data[0..<length])) { key, record in
                        if record.upperBound > length || key.upperBound > record.upperBound { fail("VALUE record outside the reply") }
                    }
                }
            }
        }
    }

    /// Arguments lie in the frame; re-serialising a multibulk request gives its bytes back.
    static func respRequest(_ data: UnsafeRawBufferPointer) {
        var limits = RespLimits()
        limits.maxInlineLength = 4096
        let arguments = RespArguments()
        var offset = 0
        var frames = 0
        while offset < data.count, frames < 64 {
            let rest = UnsafeRawBufferPointer(rebasing: data[offset...])
            switch RespRequestParser.parse(rest, limits: limits, into: arguments) {
            case .incomplete, .protocolError:
                return
            case let .empty(length):
                if length > rest.count || length <= 0 { fail("empty frame \(length) > input") }
                offset += length
            case let .request(length):
                if length > rest.count || length <= 0 { fail("frame \(length) > input \(rest.count)") }
                let frame = UnsafeRawBufferPointer(rebasing: rest[0..<length])
                if !arguments.isInline {
                    // Re-encoded with Tern's own encoder: what it writes is what the parser read.
                    let sink = ByteArraySink()
                    RespEncoder.arrayHeader(arguments.count, into: sink)
                    for index in 0..<arguments.count {
                        arguments.withArgument(index, in: frame) { RespEncoder.bulk($0, into: sink) }
                    }
                    let encoded = sink.bytes
                    // The frame may spell lengths with leading zeros; compare when it does not.
                    if encoded.count == length, !encoded.elementsEqual(frame) { fail("re-serialised request differs") }
                    // Split at every byte boundary: no prefix is a whole request.
                    let scratch = RespArguments()
                    for cut in 0..<length where length <= 512 || cut == length / 2 {
                        if case .request = RespRequestParser.parse(UnsafeRawBufferPointer(rebasing: rest[0..<cut]), limits: limits, into: scratch) {
                            fail("a prefix of \(cut) bytes parsed as a whole request")
                        }
                    }
                }
                offset += length
            }
            frames += 1
        }
    }

    static func respReply(_ data: UnsafeRawBufferPointer) {
        if case let .reply(length, isError) = RespReplyParser.parse(data, maxDepth: 16) {
            if length > data.count || length <= 0 { fail("reply \(length) > input \(data.count)") }
            // Classification agrees with the framing: a whole reply is never incomplete, an error
            // is an error, and when it is a reply every shorter prefix is incomplete.
            let frame = UnsafeRawBufferPointer(rebasing: data[0..<length])
            let kind = RespReply.classify(frame)
            if kind == .incomplete { fail("a whole reply classified as incomplete") }
            if isError, kind != .invalid, !kind.isError { fail("an error reply classified as \(kind)") }
            switch kind {
            case let .moved(_, address), let .ask(_, address): if address.upperBound > length { fail("redirect address outside the reply") }
            case let .bulk(value): if value.upperBound > length { fail("bulk value outside the reply") }
            default: break
            }
            if kind != .invalid, length <= 512 {
                for cut in 0..<length where RespReply.classify(UnsafeRawBufferPointer(rebasing: data[0..<cut])) != .incomplete {
                    fail("a \(cut)-byte prefix of a \(length)-byte reply was classified")
                }
            }
            for cut in 0..<length where length <= 512 || cut == length / 2 {
                if case .reply = RespReplyParser.parse(UnsafeRawBufferPointer(rebasing: data[0..<cut]), maxDepth: 16) {
                    fail("a prefix of \(cut) bytes parsed as a whole reply")
                }
            }
            RespReplyParser.forEachElement(UnsafeRawBufferPointer(rebasing: data[0..<length])) { range in
                if range.upperBound > length { fail("element outside the reply") }
            }
        }
    }

    /// The loader never crashes; an accepted config renders and loads again to the same pools.
    static func config(_ data: UnsafeRawBufferPointer) {
        guard data.count <= 16384 else { return }
        let text = String(decoding: data, as: UTF8.self)
        guard let config = try? ConfigLoader.load(text: text, file: "fuzz.yml") else { return }
        let rendered = ConfigRenderer.yaml(config, maskSecrets: false)
        guard let again = try? ConfigLoader.load(text: rendered, file: "rendered.yml") else { fail("rendered config does not load:\n\(rendered)") }
        if again.pools.map(\.name) != config.pools.map(\.name) { fail("rendered config has other pools") }
        func userFacts(_ pool: PoolConfig) -> [String] {
            pool.users.map { ([$0.name, SHA256.hex($0.passwordSHA256)] + $0.commands + ["|"] + $0.keys).joined(separator: " ") } + pool.disabledCommands
        }
        if again.pools.map(userFacts) != config.pools.map(userFacts) { fail("rendered config has other users:\n\(rendered)") }
        func placementFacts(_ pool: PoolConfig) -> [String] {
            // Slot owners as runs ("server×count"), so a failure message stays readable.
            var runs: [String] = []
            var index = 0
            while index < pool.slotServers.count {
                var end = index
                while end < pool.slotServers.count, pool.slotServers[end] == pool.slotServers[index] { end += 1 }
                runs.append("\(pool.slotServers[index])×\(end - index)")
                index = end
            }
            return pool.servers.map { "\($0.address) \($0.weight) \($0.name)" } + [pool.hash.rawValue, pool.distribution.rawValue, runs.joined(separator: ",")]
        }
        for (left, right) in zip(config.pools, again.pools) where placementFacts(left) != placementFacts(right) {
            fail("rendered config places keys differently in \(left.name):\n\(placementFacts(left))\n\(placementFacts(right))\n\(rendered)")
        }
    }

    /// Binary packets in sequence: a packet fits its input; a refusal accounts for exactly the
    /// packet's length (consumed now plus skipped later); a prefix of a whole packet is
    /// incomplete. Every packet Tern translates becomes a meta line that Tern's own text parser
    /// reads as one whole request (what a backend receives is what Tern parsed), whose key is
    /// the packet's key (decoded when sent in base64).
    static func binaryRequest(_ data: UnsafeRawBufferPointer) {
        let limits = MemcacheLimits(maxItemSize: 1 << 16, strictKeys: true)
        var offset = 0
        var packets = 0
        while offset < data.count, packets < 64 {
            let rest = UnsafeRawBufferPointer(rebasing: data[offset...])
            switch BinaryRequestParser.parse(rest, limits: limits) {
            case .incomplete, .invalid:
                return
            case let .rejected(request, _, consume, skip):
                if consume + skip != request.packetLength || consume > rest.count { fail("refusal accounts for \(consume)+\(skip) of \(request.packetLength)") }
                if skip > 0 { return }
                offset += consume
            case let .request(request):
                if request.packetLength > rest.count { fail("packet \(request.packetLength) > input \(rest.count)") }
                for cut in [BinaryRequest.headerLength, request.packetLength - 1] where cut >= 0 && cut < request.packetLength {
                    if case .request = BinaryRequestParser.parse(UnsafeRawBufferPointer(rebasing: rest[0..<cut]), limits: limits) { fail("a prefix parsed whole") }
                }
                let packet = UnsafeRawBufferPointer(rebasing: rest[0..<request.packetLength])
                // Both ways a pool may translate: control bytes in base64 (strict_keys) or plain.
                for controlBytes in [false, true] {
                var line: [UInt8] = []
                switch BinaryTranslator.translate(request, packet: packet, into: &line, controlBytes: controlBytes) {
                case .meta, .flush:
                    line.withUnsafeBytes { frame in
                        guard case let .request(parsed) = MemcacheRequestParser.parse(frame, limits: MemcacheLimits(maxItemSize: 1 << 16, strictKeys: !controlBytes)) else {
                            fail("translated line is refused by Tern's own parser: \(String(decoding: frame.prefix(80), as: UTF8.self).debugDescription)")
                        }
                        if parsed.frameLength != frame.count { fail("translated frame \(parsed.frameLength) of \(frame.count) bytes") }
                        let key = UnsafeRawBufferPointer(rebasing: packet[request.keyStart..<request.valueStart])
                        let token = UnsafeRawBufferPointer(rebasing: frame[parsed.keysStart..<parsed.keysEnd])
                        if parsed.keyCount > 0 {
                            if parsed.isBase64Key {
                                let decoded = withUnsafeTemporaryAllocation(byteCount: token.count, alignment: 1) { out in
                                    Array(UnsafeRawBufferPointer(rebasing: out[0..<Base64.decode(token, into: out)]))
                                }
                                if !decoded.elementsEqual(key) { fail("base64 key does not decode to the packet's key") }
                            } else if !token.elementsEqual(key) {
                                fail("key token is not the packet's key")
                            }
                        }
                    }
                case .local, .refuse:
                    break
                }
                }
                offset += request.packetLength
            }
            packets += 1
        }
    }

    /// Any bytes as a meta reply, under any opcode: the response is whole packets whose body
    /// lengths add up. And a value goes back out exactly: `VA <n>` + data → the packet's value.
    static func binaryTranslation(_ data: UnsafeRawBufferPointer) {
        guard data.count >= 1 else { return }
        let opcode = data[0]
        let reply = UnsafeRawBufferPointer(rebasing: data[1...])
        var output: [UInt8] = []
        BinaryTranslator.response(toMeta: reply, opcodeByte: opcode, opaque: 7, key: UnsafeRawBufferPointer(rebasing: data[0..<min(1, data.count)]), into: &output)
        var position = 0
        while position < output.count {
            guard position + 24 <= output.count, output[position] == 0x81 else { fail("response is not whole packets") }
            let body = output[(position + 8)..<(position + 12)].reduce(0) { $0 << 8 | Int($1) }
            position += 24 + body
        }
        if position != output.count { fail("packet lengths do not add up") }
        // Round trip of a value through a get's translation.
        var meta = Array("VA \(reply.count) f3 c9\r\n".utf8)
        meta += reply
        meta += Array("\r\n".utf8)
        var packet: [UInt8] = []
        meta.withUnsafeBytes { BinaryTranslator.response(toMeta: $0, opcodeByte: 0x00, opaque: 1, key: UnsafeRawBufferPointer(start: nil, count: 0), into: &packet) }
        guard packet.count == 24 + 4 + reply.count, packet[24..<28].elementsEqual([0, 0, 0, 3]), packet[28...].elementsEqual(reply) else {
            fail("a value did not come back out as it went in")
        }
    }
}
