// Request encoders for both protocols: every byte Tern itself writes to a backend (probes,
// connection setup, cluster redirects, warm-up lookups and copies, split multi-key requests)
// comes from here, so no other layer spells a protocol by hand.
//
// Encoders write into the caller's buffer through `ByteSink`, a two-call protocol (reserve
// room, commit what was written). They are generic and `@inlinable`: TernServer's calls are
// specialised for its concrete buffer, with no existential, closure or allocation per request.
// A RESP header is written with one reserve and one commit, cheaper than appending its parts.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A growable byte buffer an encoder writes into.
public protocol ByteSink: AnyObject {
    /// Room for at least `count` more bytes, at the returned address (valid until the next call).
    func reserve(_ count: Int) -> UnsafeMutableRawPointer
    /// `count` bytes were written at the address the last `reserve` returned.
    func commit(_ count: Int)
}

/// A `ByteSink` over its own memory, for code off the request path (blocking probes, the INFO
/// poller, tests) that wants an array of bytes.
public final class ByteArraySink: ByteSink {
    private var storage: UnsafeMutableRawPointer?
    private var capacity = 0
    public private(set) var count = 0

    public init() {}
    deinit { storage?.deallocate() }

    public func reserve(_ needed: Int) -> UnsafeMutableRawPointer {
        if capacity - count < needed {
            var newCapacity = max(64, capacity * 2)
            while newCapacity - count < needed { newCapacity *= 2 }
            let larger = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 16)
            if let storage, count > 0 { larger.copyMemory(from: storage, byteCount: count) }
            storage?.deallocate()
            storage = larger
            capacity = newCapacity
        }
        return storage! + count
    }

    public func commit(_ written: Int) { count += written }

    public var bytes: [UInt8] {
        guard let storage else { return [] }
        return Array(UnsafeRawBufferPointer(start: storage, count: count))
    }
}

/// Small writers shared by the encoders.
@usableFromInline
enum SinkWriter {
    /// The decimal digits of `value`, with `-` when negative, written at `target` (room for 20
    /// bytes); returns how many were written.
    @inlinable @inline(__always)
    static func decimal(_ value: Int, at target: UnsafeMutableRawPointer) -> Int {
        var magnitude = value.magnitude
        var digits = 1
        var probe = magnitude
        while probe >= 10 { probe /= 10; digits += 1 }
        let sign = value < 0 ? 1 : 0
        if sign == 1 { target.storeBytes(of: UInt8(ascii: "-"), as: UInt8.self) }
        var index = sign + digits
        repeat {
            index -= 1
            target.storeBytes(of: UInt8(truncatingIfNeeded: magnitude % 10) &+ 0x30, toByteOffset: index, as: UInt8.self)
            magnitude /= 10
        } while magnitude > 0
        return sign + digits
    }

    /// How many bytes `decimal` writes for `value`.
    @inlinable @inline(__always)
    static func decimalCount(_ value: Int) -> Int {
        var probe = value.magnitude
        var digits = 1
        while probe >= 10 { probe /= 10; digits += 1 }
        return digits + (value < 0 ? 1 : 0)
    }

    @inlinable @inline(__always)
    static func bytes<S: ByteSink>(_ bytes: UnsafeRawBufferPointer, into sink: S) {
        guard bytes.count > 0 else { return }
        let target = sink.reserve(bytes.count)
        target.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        sink.commit(bytes.count)
    }

    @inlinable @inline(__always)
    static func literal<S: ByteSink>(_ literal: StaticString, into sink: S) {
        bytes(UnsafeRawBufferPointer(start: literal.utf8Start, count: literal.utf8CodeUnitCount), into: sink)
    }

    @inlinable @inline(__always)
    static func crlf(at target: UnsafeMutableRawPointer) {
        target.storeBytes(of: 0x0d, as: UInt8.self)
        target.storeBytes(of: 0x0a, toByteOffset: 1, as: UInt8.self)
    }
}

// MARK: - RESP

/// RESP2 encoders: element writers (array headers, bulk strings, integers) and the commands
/// Tern sends on its own.
public enum RespEncoder {
    /// `<prefix><value>\r\n`, with one reserve.
    @inlinable @inline(__always)
    static func header<S: ByteSink>(_ prefix: UInt8, _ value: Int, into sink: S) {
        let target = sink.reserve(23)
        target.storeBytes(of: prefix, as: UInt8.self)
        let count = 1 + SinkWriter.decimal(value, at: target + 1)
        SinkWriter.crlf(at: target + count)
        sink.commit(count + 2)
    }

    /// `*<count>\r\n`
    @inlinable
    public static func arrayHeader<S: ByteSink>(_ count: Int, into sink: S) { header(UInt8(ascii: "*"), count, into: sink) }

    /// `:<value>\r\n`
    @inlinable
    public static func integer<S: ByteSink>(_ value: Int, into sink: S) { header(UInt8(ascii: ":"), value, into: sink) }

    /// `$<length>\r\n<bytes>\r\n`, with one reserve.
    @inlinable
    public static func bulk<S: ByteSink>(_ bytes: UnsafeRawBufferPointer, into sink: S) {
        let target = sink.reserve(bytes.count + 25)
        target.storeBytes(of: UInt8(ascii: "$"), as: UInt8.self)
        var count = 1 + SinkWriter.decimal(bytes.count, at: target + 1)
        SinkWriter.crlf(at: target + count)
        count += 2
        if bytes.count > 0 { (target + count).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
        count += bytes.count
        SinkWriter.crlf(at: target + count)
        sink.commit(count + 2)
    }

    @inlinable
    public static func bulk<S: ByteSink>(_ text: StaticString, into sink: S) {
        bulk(UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount), into: sink)
    }

    @inlinable
    public static func bulk<S: ByteSink>(_ text: String, into sink: S) {
        var text = text
        text.withUTF8 { bulk(UnsafeRawBufferPointer($0), into: sink) }
    }

    /// A bulk string holding the decimal `value` (`PX 1500`, `SELECT 3`), without a String.
    @inlinable
    public static func bulk<S: ByteSink>(decimal value: Int, into sink: S) {
        let digits = SinkWriter.decimalCount(value)
        let target = sink.reserve(digits + 8)
        target.storeBytes(of: UInt8(ascii: "$"), as: UInt8.self)
        var count = 1 + SinkWriter.decimal(digits, at: target + 1)
        SinkWriter.crlf(at: target + count)
        count += 2
        count += SinkWriter.decimal(value, at: target + count)
        SinkWriter.crlf(at: target + count)
        sink.commit(count + 2)
    }

    /// The nil bulk string, `$-1\r\n`.
    public static let nullBulk: StaticString = "$-1\r\n"

    /// A command without arguments: `*1\r\n$<n>\r\n<name>\r\n` (PING, ASKING, READONLY, MULTI,
    /// EXEC, UNWATCH, INFO).
    @inlinable
    public static func command<S: ByteSink>(_ name: StaticString, into sink: S) {
        arrayHeader(1, into: sink)
        bulk(name, into: sink)
    }

    /// A command with one argument (`GET <key>`, `PTTL <key>`, `AUTH <password>`).
    @inlinable
    public static func command<S: ByteSink>(_ name: StaticString, _ argument: UnsafeRawBufferPointer, into sink: S) {
        arrayHeader(2, into: sink)
        bulk(name, into: sink)
        bulk(argument, into: sink)
    }

    @inlinable
    public static func command<S: ByteSink>(_ name: StaticString, _ argument: String, into sink: S) {
        var argument = argument
        argument.withUTF8 { command(name, UnsafeRawBufferPointer($0), into: sink) }
    }

    /// A command with one decimal argument (`SELECT <db>`).
    @inlinable
    public static func command<S: ByteSink>(_ name: StaticString, decimal argument: Int, into sink: S) {
        arrayHeader(2, into: sink)
        bulk(name, into: sink)
        bulk(decimal: argument, into: sink)
    }

    /// A command of words, as an array of bytes: for the blocking probes off the request path.
    public static func command(_ words: [String]) -> [UInt8] {
        let sink = ByteArraySink()
        arrayHeader(words.count, into: sink)
        for word in words { bulk(word, into: sink) }
        return sink.bytes
    }

    /// `SET <key> <value> [PX <milliseconds>] NX`, the warm-up's copy (add semantics), with the
    /// value given as the complete bulk string a `GET` answered (`$<n>\r\n<bytes>\r\n`), written
    /// as it is. `milliseconds` 0 means no expiry.
    @inlinable
    public static func setIfAbsent<S: ByteSink>(key: UnsafeRawBufferPointer, encodedValue: UnsafeRawBufferPointer, milliseconds: Int, into sink: S) {
        arrayHeader(milliseconds > 0 ? 6 : 4, into: sink)
        bulk("SET" as StaticString, into: sink)
        bulk(key, into: sink)
        SinkWriter.bytes(encodedValue, into: sink)
        if milliseconds > 0 {
            bulk("PX" as StaticString, into: sink)
            bulk(decimal: milliseconds, into: sink)
        }
        bulk("NX" as StaticString, into: sink)
    }
}

extension ByteSink {
    /// `*<count>\r\n` (`RespEncoder.arrayHeader`).
    @inlinable public func appendArrayHeader(_ count: Int) { RespEncoder.arrayHeader(count, into: self) }
    /// `$<length>\r\n<bytes>\r\n` (`RespEncoder.bulk`).
    @inlinable public func appendBulk(_ bytes: UnsafeRawBufferPointer) { RespEncoder.bulk(bytes, into: self) }
    @inlinable public func appendBulk(_ text: String) { RespEncoder.bulk(text, into: self) }
    /// `:<value>\r\n` (`RespEncoder.integer`).
    @inlinable public func appendInteger(_ value: Int) { RespEncoder.integer(value, into: self) }
    /// The decimal digits of `value`.
    @inlinable public func append(decimal value: Int) {
        let target = reserve(20)
        commit(SinkWriter.decimal(value, at: target))
    }
}

// MARK: - memcached

/// memcached text and meta request encoders.
public enum MemcacheEncoder {
    /// `version\r\n`: the health probe.
    public static let version: StaticString = "version\r\n"

    /// `mn\r\n`: closes a run of quiet meta commands.
    @inlinable
    public static func noop<S: ByteSink>(into sink: S) { SinkWriter.literal("mn\r\n", into: sink) }

    /// `mg <key>[ b] s v f t q O<opaque>\r\n`: a whole item (size, value, client flags, TTL
    /// left), quiet, so a miss says nothing: the warm-up's lookup in the old pool. The reply is
    /// matched to its key by `opaque`, not by the key: memcached writes a key back as the item
    /// was stored, raw for one a binary client stored with a space, CR, LF or NUL in it, which
    /// no reader can split (binary sweep 32: such keys were always misses, and a LF reset the
    /// old server's shared connection at every read).
    @inlinable
    public static func metaGetItem<S: ByteSink>(key: UnsafeRawBufferPointer, base64: Bool, opaque: Int, into sink: S) {
        SinkWriter.literal("mg ", into: sink)
        SinkWriter.bytes(key, into: sink)
        SinkWriter.literal(base64 ? " b s v f t q O" : " s v f t q O", into: sink)
        let target = sink.reserve(24)
        let count = SinkWriter.decimal(opaque, at: target)
        SinkWriter.crlf(at: target + count)
        sink.commit(count + 2)
    }

    /// The expiration to send for `seconds` to live: memcached reads one over 30 days
    /// (2,592,000 s) as a Unix time, so a longer one is sent as `now + seconds` (sent as it was,
    /// a copy with 40 days left was a date in 1970: stored, and expired at once; warm-up sweep 30).
    public static func exptime(seconds: Int, now: Int) -> Int {
        seconds > 2_592_000 ? now + seconds : seconds
    }

    /// `ms <key> <size>[ b] T<ttl> F<flags> c ME\r\n<value>\r\n`: mode E is add, so an item
    /// written meanwhile is kept (the warm-up's copy into the new pool); `c` asks for its CAS.
    @inlinable
    public static func metaAdd<S: ByteSink>(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer, ttl: Int, flags: UInt32,
                                            base64: Bool, into sink: S) {
        SinkWriter.literal("ms ", into: sink)
        SinkWriter.bytes(key, into: sink)
        let target = sink.reserve(72)
        target.storeBytes(of: 0x20, as: UInt8.self)
        var count = 1 + SinkWriter.decimal(value.count, at: target + 1)
        if base64 {
            target.storeBytes(of: 0x20, toByteOffset: count, as: UInt8.self)
            target.storeBytes(of: UInt8(ascii: "b"), toByteOffset: count + 1, as: UInt8.self)
            count += 2
        }
        target.storeBytes(of: 0x20, toByteOffset: count, as: UInt8.self)
        target.storeBytes(of: UInt8(ascii: "T"), toByteOffset: count + 1, as: UInt8.self)
        count += 2 + SinkWriter.decimal(ttl, at: target + count + 2)
        target.storeBytes(of: 0x20, toByteOffset: count, as: UInt8.self)
        target.storeBytes(of: UInt8(ascii: "F"), toByteOffset: count + 1, as: UInt8.self)
        count += 2 + SinkWriter.decimal(Int(flags), at: target + count + 2)
        // ` c`: the stored copy's CAS comes back (`WarmupCopy.storedCAS`).
        target.storeBytes(of: 0x20, toByteOffset: count, as: UInt8.self)
        target.storeBytes(of: UInt8(ascii: "c"), toByteOffset: count + 1, as: UInt8.self)
        target.storeBytes(of: 0x20, toByteOffset: count + 2, as: UInt8.self)
        target.storeBytes(of: UInt8(ascii: "M"), toByteOffset: count + 3, as: UInt8.self)
        target.storeBytes(of: UInt8(ascii: "E"), toByteOffset: count + 4, as: UInt8.self)
        SinkWriter.crlf(at: target + count + 5)
        sink.commit(count + 7)
        SinkWriter.bytes(value, into: sink)
        SinkWriter.literal("\r\n", into: sink)
    }

    /// `gets <key>\r\n`
    @inlinable
    public static func gets<S: ByteSink>(key: UnsafeRawBufferPointer, into sink: S) {
        SinkWriter.literal("gets ", into: sink)
        SinkWriter.bytes(key, into: sink)
        SinkWriter.literal("\r\n", into: sink)
    }

    /// A retrieval line is `<start> <key> <key>…\r\n`: `start` is the command and, for gat and
    /// gats, its exptime, as the client's request had them (`retrievalStart`); then `key` for
    /// each key and `endLine`.
    @inlinable
    public static func retrievalStart<S: ByteSink>(_ start: UnsafeRawBufferPointer, into sink: S) {
        SinkWriter.bytes(start, into: sink)
    }

    /// The command's name and, when given, an exptime: `gat 300`.
    @inlinable
    public static func retrievalStart<S: ByteSink>(_ command: MemcacheCommand, exptime: UnsafeRawBufferPointer, into sink: S) {
        var name = command.name
        name.withUTF8 { SinkWriter.bytes(UnsafeRawBufferPointer($0), into: sink) }
        if exptime.count > 0 {
            SinkWriter.literal(" ", into: sink)
            SinkWriter.bytes(exptime, into: sink)
        }
    }

    /// ` <key>`
    @inlinable
    public static func key<S: ByteSink>(_ key: UnsafeRawBufferPointer, into sink: S) {
        let target = sink.reserve(key.count + 1)
        target.storeBytes(of: 0x20, as: UInt8.self)
        if key.count > 0 { (target + 1).copyMemory(from: key.baseAddress!, byteCount: key.count) }
        sink.commit(key.count + 1)
    }

    /// `\r\n`
    @inlinable
    public static func endLine<S: ByteSink>(into sink: S) { SinkWriter.literal("\r\n", into: sink) }

    /// The parsed request `request` of `frame` with its `noreply` token dropped: the line up to
    /// the token, CRLF, then the data block (if any) as it came. A backend then always answers,
    /// and the answer is checked; the client still gets nothing.
    @inlinable
    public static func withoutNoreply<S: ByteSink>(_ frame: UnsafeRawBufferPointer, _ request: MemcacheRequest, into sink: S) {
        SinkWriter.bytes(UnsafeRawBufferPointer(rebasing: frame[0..<request.noreplyStart]), into: sink)
        SinkWriter.literal("\r\n", into: sink)
        if request.lineLength < request.frameLength {
            SinkWriter.bytes(UnsafeRawBufferPointer(rebasing: frame[request.lineLength..<request.frameLength]), into: sink)
        }
    }
}

// MARK: - memcached replies Tern writes itself

/// memcached replies Tern answers from an item it holds (a warm-up's hit in the old pool).
public enum MemcacheReplyEncoder {
    /// `VALUE <key> <flags> <size>[ <cas unique>]\r\n<value>\r\n`: one record of a text
    /// retrieval reply (`gets` and `gats` records carry the unique).
    @inlinable
    public static func valueRecord<S: ByteSink>(key: UnsafeRawBufferPointer, flags: UInt32, value: UnsafeRawBufferPointer,
                                                casUnique: Int? = nil, into sink: S) {
        SinkWriter.literal("VALUE ", into: sink)
        SinkWriter.bytes(key, into: sink)
        let target = sink.reserve(48)
        target.storeBytes(of: 0x20, as: UInt8.self)
        var count = 1 + SinkWriter.decimal(Int(flags), at: target + 1)
        target.storeBytes(of: 0x20, toByteOffset: count, as: UInt8.self)
        count += 1 + SinkWriter.decimal(value.count, at: target + count + 1)
        if let casUnique {
            target.storeBytes(of: 0x20, toByteOffset: count, as: UInt8.self)
            count += 1 + SinkWriter.decimal(casUnique, at: target + count + 1)
        }
        SinkWriter.crlf(at: target + count)
        sink.commit(count + 2)
        SinkWriter.bytes(value, into: sink)
        SinkWriter.literal("\r\n", into: sink)
    }

    /// The reply the meta get `request` (its line: `mg <key> <flags>*`) would get for an item:
    /// `VA <size>` and the value when it asks for the value (`v`), `HD` otherwise, with the
    /// flags it asks for among `f` (client flags), `t` (TTL left, -1 when unknown or none), `s`
    /// (size), `k` (key), `c`, `h` and `l` (0: not known) and the ones echoed as they came (`O`
    /// opaque, `b` base64 key). The
    /// value is written as it was stored, byte for byte.
    @inlinable
    public static func metaReply<S: ByteSink>(to request: UnsafeRawBufferPointer, key: UnsafeRawBufferPointer, flags: UInt32, ttl: Int?,
                                              value: UnsafeRawBufferPointer, into sink: S) {
        var lineEnd = 0
        while lineEnd < request.count, request[lineEnd] != carriageReturn, request[lineEnd] != newline { lineEnd += 1 }
        /// Calls `body` with the range of each token after the command and the key.
        func forEachFlag(_ body: (Range<Int>) -> Void) {
            var position = 0
            var index = 0
            while position < lineEnd {
                while position < lineEnd, request[position] == space { position += 1 }
                guard position < lineEnd else { return }
                let start = position
                while position < lineEnd, request[position] != space { position += 1 }
                if index >= 2 { body(start..<position) }
                index += 1
            }
        }
        var wantsValue = false
        forEachFlag { if request[$0.lowerBound] == UInt8(ascii: "v") { wantsValue = true } }
        func number(_ letter: UInt8, _ value: Int) {
            let target = sink.reserve(22)
            target.storeBytes(of: 0x20, as: UInt8.self)
            target.storeBytes(of: letter, toByteOffset: 1, as: UInt8.self)
            sink.commit(2 + SinkWriter.decimal(value, at: target + 2))
        }
        if wantsValue {
            SinkWriter.literal("VA", into: sink)
            let target = sink.reserve(21)
            target.storeBytes(of: 0x20, as: UInt8.self)
            sink.commit(1 + SinkWriter.decimal(value.count, at: target + 1))
        } else {
            SinkWriter.literal("HD", into: sink)
        }
        forEachFlag { token in
            switch request[token.lowerBound] {
            case UInt8(ascii: "f"): number(UInt8(ascii: "f"), Int(flags))
            case UInt8(ascii: "t"): number(UInt8(ascii: "t"), ttl ?? -1)
            case UInt8(ascii: "s"): number(UInt8(ascii: "s"), value.count)
            // Not known of an item read elsewhere: 0, as `gets` gives CAS unique 0 then (left out,
            // a client building `ms … C<cas>` from the token it asked for found none; warm-up
            // sweep 30).
            case UInt8(ascii: "c"), UInt8(ascii: "h"), UInt8(ascii: "l"): number(request[token.lowerBound], 0)
            case UInt8(ascii: "k"):
                SinkWriter.literal(" k", into: sink)
                SinkWriter.bytes(key, into: sink)
            case UInt8(ascii: "O"), UInt8(ascii: "b"):
                SinkWriter.literal(" ", into: sink)
                SinkWriter.bytes(UnsafeRawBufferPointer(rebasing: request[token]), into: sink)
            default: break
            }
        }
        SinkWriter.literal("\r\n", into: sink)
        guard wantsValue else { return }
        SinkWriter.bytes(value, into: sink)
        SinkWriter.literal("\r\n", into: sink)
    }
}
