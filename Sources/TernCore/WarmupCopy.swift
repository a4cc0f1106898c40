// Warm-up copies taken back. A copy of an old-pool hit is checked for deletes when the old
// pool's reply arrives, and again when the new pool has stored it: a delete routed between the
// two may have reached the new server before the copy (another worker's connection), and the
// copy would then bring the deleted value back. Such a copy is deleted again, but only if it
// is still the copy: memcached by its CAS (`md <key> C<cas>`), Redis by its value (a script
// comparing it), so a value a client wrote since is never lost. Pure: request and reply bytes
// in, the undo request out.

public enum WarmupCopy {
    /// Compares the key's value with the copy's and deletes it when they are equal.
    static let compareAndDelete: StaticString = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

    /// The CAS of a stored memcached copy: `HD … c<cas>` (the copy asks for `c`); nil for
    /// any other reply.
    public static func storedCAS(_ reply: UnsafeRawBufferPointer) -> UInt64? {
        guard reply.count >= 4, reply[0] == UInt8(ascii: "H"), reply[1] == UInt8(ascii: "D") else { return nil }
        var end = reply.count
        while end > 2, reply[end - 1] == 0x0a || reply[end - 1] == 0x0d { end -= 1 }
        var position = 2
        while position < end {
            while position < end, reply[position] == 0x20 { position += 1 }
            let start = position
            while position < end, reply[position] != 0x20 { position += 1 }
            if position > start + 1, reply[start] == UInt8(ascii: "c") {
                return MemcacheRequestParser.number(reply, start + 1, position, maxDigits: 20)
            }
        }
        return nil
    }

    /// `md <key> [b] C<cas>` for the copy `request` (`ms <key> <size> [b] …`, as
    /// `MemcacheEncoder.metaAdd` writes it) stored with `cas`; false when `request` is not one.
    public static func memcachedUndo<S: ByteSink>(copy request: UnsafeRawBufferPointer, cas: UInt64, into sink: S) -> Bool {
        guard request.count > 3, request[0] == UInt8(ascii: "m"), request[1] == UInt8(ascii: "s"), request[2] == 0x20 else { return false }
        var position = 3
        func token() -> Range<Int>? {
            while position < request.count, request[position] == 0x20 { position += 1 }
            let start = position
            while position < request.count, request[position] != 0x20, request[position] != 0x0d, request[position] != 0x0a { position += 1 }
            return position > start ? start..<position : nil
        }
        guard let key = token(), token() != nil else { return false }
        let flag = token()
        let base64 = flag.map { $0.count == 1 && request[$0.lowerBound] == UInt8(ascii: "b") } ?? false
        SinkWriter.literal("md ", into: sink)
        SinkWriter.bytes(UnsafeRawBufferPointer(rebasing: request[key]), into: sink)
        if base64 { SinkWriter.literal(" b", into: sink) }
        // (Rare: only a copy a delete raced. A CAS is unsigned 64-bit.)
        let text = Array(" C\(cas)\r\n".utf8)
        text.withUnsafeBytes { SinkWriter.bytes($0, into: sink) }
        return true
    }

    /// `EVAL <compare and delete> 1 <key> <value>` for the copy `request` (`SET <key> <value>
    /// … NX`, as `RespEncoder.setIfAbsent` writes it); false when `request` is not one.
    public static func redisUndo<S: ByteSink>(copy request: UnsafeRawBufferPointer, into sink: S) -> Bool {
        var position = 0
        // `*<n>\r\n`, then bulk strings: SET, the key, the value.
        func line() -> Range<Int>? {
            let start = position
            while position + 1 < request.count, !(request[position] == 0x0d && request[position + 1] == 0x0a) { position += 1 }
            guard position + 1 < request.count else { return nil }
            defer { position += 2 }
            return start..<position
        }
        func bulk() -> Range<Int>? {
            guard position < request.count, request[position] == UInt8(ascii: "$"), let header = line(),
                  let length = MemcacheRequestParser.number(request, header.lowerBound + 1, header.upperBound, maxDigits: 10),
                  position + Int(length) + 2 <= request.count else { return nil }
            defer { position += Int(length) + 2 }
            return position..<(position + Int(length))
        }
        guard request.count > 0, request[0] == UInt8(ascii: "*"), line() != nil, let command = bulk(), command.count == 3 else { return false }
        guard let key = bulk() else { return false }
        let valueStart = position
        guard bulk() != nil else { return false }
        RespEncoder.arrayHeader(5, into: sink)
        RespEncoder.bulk("EVAL" as StaticString, into: sink)
        RespEncoder.bulk(compareAndDelete, into: sink)
        RespEncoder.bulk("1" as StaticString, into: sink)
        RespEncoder.bulk(UnsafeRawBufferPointer(rebasing: request[key]), into: sink)
        // The value as the copy encoded it (`$<n>\r\n<bytes>\r\n`).
        SinkWriter.bytes(UnsafeRawBufferPointer(rebasing: request[valueStart..<position]), into: sink)
        return true
    }
}
