// What a backend's reply says, for both protocols, so that no other layer peeks at bytes.
//
// `classify` takes the bytes of one reply as the reply parsers framed it (more bytes after it
// are ignored) and answers a small enum. Bytes that stop before the reply does answer
// `.incomplete`; bytes that are not a reply answer `.invalid`. Nothing is allocated: a
// redirect's address is a byte range of the reply.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where one backend reply ends, as both protocols' reply parsers answer it
/// (`RespReplyParser.parse`, `MemcacheReplyParser.parse`), so that a backend connection frames
/// replies with one switch whatever its protocol.
public enum ReplyFraming: Equatable, Sendable {
    case incomplete
    /// A whole reply of `length` bytes; `isError` when it reports an error (each parser says
    /// which replies count).
    case reply(length: Int, isError: Bool)
    /// The bytes are not a reply: the connection cannot be trusted any more.
    case invalid
}

// MARK: - RESP

/// One RESP2 reply, classified.
public enum RespReply: Equatable, Sendable {
    case incomplete
    case invalid
    /// `+OK`
    case ok
    /// Any other simple string (`+PONG`, `+QUEUED`).
    case status
    /// An error other than the redirects below.
    case error
    /// `-MOVED <slot> <host>:<port>`: `address` is the byte range of `<host>:<port>` (a host
    /// name, an IPv4 address, an unbracketed IPv6 address, or empty before `:<port>` when the
    /// node does not know its endpoint).
    case moved(slot: Int, address: Range<Int>)
    /// `-ASK <slot> <host>:<port>`
    case ask(slot: Int, address: Range<Int>)
    /// `-TRYAGAIN …`: a multi-key request split by a slot migration; it may succeed later.
    case tryAgain
    case integer(Int)
    /// A bulk string (a hit): `value` is the byte range of its data.
    case bulk(value: Range<Int>)
    /// `$-1` or `*-1`: nil (a miss).
    case null
    case array(count: Int)
    /// A pub/sub message pushed to a subscribed connection: a `message`, `pmessage` or
    /// `smessage` array.
    case push

    public var isError: Bool {
        switch self {
        case .error, .moved, .ask, .tryAgain: return true
        default: return false
        }
    }

    /// The RESP type of a reply already framed (`RespReplyParser`), from its first byte alone:
    /// what a merge needs to tell an array from the error that replaces it, without walking it.
    public enum FramedType: Equatable, Sendable { case simpleString, error, integer, bulk, array, push, other }

    public static func type(ofFramed frame: UnsafeRawBufferPointer) -> FramedType {
        switch frame.first {
        case UInt8(ascii: "+"): .simpleString
        case UInt8(ascii: "-"): .error
        case UInt8(ascii: ":"): .integer
        case UInt8(ascii: "$"): .bulk
        case UInt8(ascii: "*"): .array
        case UInt8(ascii: ">"): .push
        default: .other
        }
    }

    /// Classifies the reply at the start of `frame`. Arrays are walked (`RespReplyParser`) so
    /// that a cut one answers `.incomplete`.
    public static func classify(_ frame: UnsafeRawBufferPointer) -> RespReply {
        guard let type = frame.first else { return .incomplete }
        switch type {
        case UInt8(ascii: "+"), UInt8(ascii: "-"):
            guard let newlineAt = findNewline(frame, from: 0, to: frame.count) else { return .incomplete }
            let end = newlineAt > 0 && frame[newlineAt - 1] == carriageReturn ? newlineAt - 1 : newlineAt
            if type == UInt8(ascii: "+") {
                return end == 3 && frame[1] == UInt8(ascii: "O") && frame[2] == UInt8(ascii: "K") ? .ok : .status
            }
            return error(UnsafeRawBufferPointer(rebasing: frame[0..<end]))
        case UInt8(ascii: ":"):
            return afterHeader(frame, maxDigits: 19, sized: false) { value, _ in .integer(value) }
        case UInt8(ascii: "$"):
            return afterHeader(frame, maxDigits: 18, sized: true) { length, next in
                guard next + length + 2 <= frame.count else { return .incomplete }
                guard frame[next + length] == carriageReturn, frame[next + length + 1] == newline else { return .invalid }
                return .bulk(value: next..<(next + length))
            }
        case UInt8(ascii: "*"):
            return afterHeader(frame, maxDigits: 11, sized: true) { count, _ in
                switch RespReplyParser.parse(frame) {
                case .incomplete: .incomplete
                case .invalid: .invalid
                case .reply: isPush(frame, count: count) ? .push : .array(count: count)
                }
            }
        default:
            return .invalid
        }
    }

    /// The header at the start of `frame` (`:12`, `$5`, `*3`) given to `body` with where its
    /// line ends, unless it is cut or malformed. `sized`: a bulk or array length, for which -1
    /// is the null reply and any other negative length is invalid.
    @inline(__always)
    private static func afterHeader(_ frame: UnsafeRawBufferPointer, maxDigits: Int, sized: Bool, _ body: (Int, Int) -> RespReply) -> RespReply {
        switch RespRequestParser.header(frame, at: 0, maxDigits: maxDigits) {
        case .incomplete: return .incomplete
        case .invalid: return .invalid
        case let .value(value, next):
            if sized, value < 0 { return value == -1 ? .null : .invalid }
            return body(value, next)
        }
    }

    /// `message` (3 elements), `pmessage` (4) or `smessage` (3) first.
    static func isPush(_ frame: UnsafeRawBufferPointer, count: Int) -> Bool {
        func starts(_ literal: StaticString) -> Bool {
            frame.count >= literal.utf8CodeUnitCount && memcmp(frame.baseAddress!, literal.utf8Start, literal.utf8CodeUnitCount) == 0
        }
        switch count {
        case 3: return starts("*3\r\n$7\r\nmessage\r\n") || starts("*3\r\n$8\r\nsmessage\r\n")
        case 4: return starts("*4\r\n$8\r\npmessage\r\n")
        default: return false
        }
    }

    /// An error line without its line end.
    static func error(_ line: UnsafeRawBufferPointer) -> RespReply {
        if MemcacheReplyParser.startsWith(line, "-MOVED ") {
            guard let (slot, address) = redirect(line, from: 7) else { return .error }
            return .moved(slot: slot, address: address)
        }
        if MemcacheReplyParser.startsWith(line, "-ASK ") {
            guard let (slot, address) = redirect(line, from: 5) else { return .error }
            return .ask(slot: slot, address: address)
        }
        return MemcacheReplyParser.startsWith(line, "-TRYAGAIN") ? .tryAgain : .error
    }

    /// `<slot> <host>:<port>` from `start` to the end of `line`, words separated by spaces;
    /// nil unless the slot is 0…16383 and the port 1…65535.
    static func redirect(_ line: UnsafeRawBufferPointer, from start: Int) -> (Int, Range<Int>)? {
        guard line.count < 510 else { return nil }
        var position = start
        func word() -> Range<Int>? {
            while position < line.count, line[position] == space { position += 1 }
            let first = position
            while position < line.count, line[position] != space { position += 1 }
            return position > first ? first..<position : nil
        }
        guard let slotWord = word(), let address = word(), word() == nil,
              let slot = MemcacheRequestParser.number(line, slotWord.lowerBound, slotWord.upperBound, maxDigits: 5), slot < UInt64(hashSlotCount) else {
            return nil
        }
        var colon = address.upperBound - 1
        while colon >= address.lowerBound, line[colon] != UInt8(ascii: ":") { colon -= 1 }
        guard colon >= address.lowerBound,
              let port = MemcacheRequestParser.number(line, colon + 1, address.upperBound, maxDigits: 5), port >= 1, port <= 65535 else {
            return nil
        }
        return (Int(slot), address)
    }
}

// MARK: - memcached

/// One memcached reply (text or meta), classified by its first line.
public enum MemcacheReply: Equatable, Sendable {
    public enum ErrorKind: Equatable, Sendable {
        /// `ERROR`: an unknown command.
        case command
        case client
        case server
    }

    case incomplete
    case invalid
    /// A hit with its data: a `VALUE` record (text) or `VA` (meta), its data block whole.
    case value
    /// `END` alone (a retrieval that found nothing) or `EN` (meta).
    case miss
    /// `HD` (meta): stored, deleted, or found when no value was asked for.
    case success
    case stored
    /// `NOT_STORED` or `NS`.
    case notStored
    /// `EXISTS` or `EX`.
    case exists
    /// `NOT_FOUND` or `NF`.
    case notFound
    case deleted
    case touched
    /// `OK` (flush_all, verbosity).
    case ok
    /// `MN`: the end of a run of quiet meta commands.
    case noop
    /// `ME …` (meta debug).
    case debug
    /// An incr/decr result.
    case number(UInt64)
    case version
    /// A `STAT` line (stats).
    case stat
    case error(ErrorKind)

    public var isError: Bool {
        if case .error = self { return true }
        return false
    }

    /// Classifies the reply at the start of `frame` by its first line (and, for a value, checks
    /// that its data block is whole).
    public static func classify(_ frame: UnsafeRawBufferPointer) -> MemcacheReply {
        guard let newlineAt = findNewline(frame, from: 0, to: frame.count) else {
            return frame.count > 8192 ? .invalid : .incomplete
        }
        let end = newlineAt > 0 && frame[newlineAt - 1] == carriageReturn ? newlineAt - 1 : newlineAt
        let line = UnsafeRawBufferPointer(rebasing: frame[0..<end])
        func data(_ length: Int?) -> MemcacheReply {
            guard let length else { return .invalid }
            let dataEnd = newlineAt + 1 + length
            guard dataEnd + 2 <= frame.count else { return .incomplete }
            return frame[dataEnd] == carriageReturn && frame[dataEnd + 1] == newline ? .value : .invalid
        }
        func exactly(_ literal: StaticString) -> Bool {
            line.count == literal.utf8CodeUnitCount && MemcacheReplyParser.startsWith(line, literal)
        }
        guard let first = line.first else { return .invalid }
        if line.count == 2 || (line.count > 2 && line[2] == space) {
            switch (first, line[1]) {
            case (UInt8(ascii: "V"), UInt8(ascii: "A")): return data(MetaItemReader.size(line))
            case (UInt8(ascii: "H"), UInt8(ascii: "D")): return .success
            case (UInt8(ascii: "E"), UInt8(ascii: "N")): return .miss
            case (UInt8(ascii: "N"), UInt8(ascii: "S")): return .notStored
            case (UInt8(ascii: "E"), UInt8(ascii: "X")): return .exists
            case (UInt8(ascii: "N"), UInt8(ascii: "F")): return .notFound
            case (UInt8(ascii: "M"), UInt8(ascii: "N")): return .noop
            case (UInt8(ascii: "M"), UInt8(ascii: "E")): return .debug
            case (UInt8(ascii: "O"), UInt8(ascii: "K")): return line.count == 2 ? .ok : .invalid
            default: break
            }
        }
        switch first {
        case UInt8(ascii: "0")...UInt8(ascii: "9"):
            guard let value = MemcacheRequestParser.number(line, 0, line.count) else { return .invalid }
            return .number(value)
        case UInt8(ascii: "V"):
            if MemcacheReplyParser.startsWith(line, "VALUE ") { return data(MemcacheReplyParser.valueLength(line)) }
            return MemcacheReplyParser.startsWith(line, "VERSION ") ? .version : .invalid
        case UInt8(ascii: "E"):
            if exactly("END") { return .miss }
            if exactly("EXISTS") { return .exists }
            if exactly("ERROR") || MemcacheReplyParser.startsWith(line, "ERROR ") { return .error(.command) }
        case UInt8(ascii: "S"):
            if exactly("STORED") { return .stored }
            if MemcacheReplyParser.startsWith(line, "SERVER_ERROR") { return .error(.server) }
            if MemcacheReplyParser.startsWith(line, "STAT ") { return .stat }
        case UInt8(ascii: "C"):
            if MemcacheReplyParser.startsWith(line, "CLIENT_ERROR") { return .error(.client) }
        case UInt8(ascii: "N"):
            if exactly("NOT_STORED") { return .notStored }
            if exactly("NOT_FOUND") { return .notFound }
        case UInt8(ascii: "D"):
            if exactly("DELETED") { return .deleted }
        case UInt8(ascii: "T"):
            if exactly("TOUCHED") { return .touched }
        default:
            break
        }
        return .invalid
    }
}

/// One meta reply read whole: its status, the flags Tern asks for, and where its value is.
public struct MetaItem: Equatable, Sendable {
    /// `.value` (VA), `.success` (HD), `.miss` (EN), `.notStored`, `.exists`, `.notFound`,
    /// `.noop` (MN), `.debug` (ME) or `.error`.
    public var status: MemcacheReply
    /// Bytes of the whole reply: its line and, for `VA`, the data block and its CRLF.
    public var length: Int
    /// `VA`: the value's bytes (without the CRLF after them), exactly as stored.
    public var value: Range<Int>?
    /// `f<flags>`: the client flags.
    public var flags: UInt32?
    /// `t<seconds>`: time left to live; -1 when the item does not expire.
    public var ttl: Int?
    /// `c<cas>`
    public var cas: UInt64?
    /// `k<key>`: the key as the reply wrote it (base64 when `isBase64Key`).
    public var key: Range<Int>?
    /// `O<opaque>`
    public var opaque: Range<Int>?
    /// The opaque as a decimal number (the warm-up asks with key indexes), nil when absent or
    /// not one.
    public var opaqueNumber: Int?
    /// `b`: the key is base64.
    public var isBase64Key = false
    /// `X`: the item is stale (invalidated with `md … I`), to be recomputed.
    public var isStale = false

    public init(status: MemcacheReply, length: Int) {
        self.status = status
        self.length = length
    }
}

/// Reads meta replies (`VA <size> <flags>*` and its data, or one status line). All ranges are
/// offsets into the bytes given.
public enum MetaItemReader {
    public enum Result: Equatable, Sendable {
        case incomplete
        /// Not a meta reply: the connection is out of step.
        case invalid
        case item(MetaItem)
    }

    /// The `<size>` of a `VA <size> …` line.
    static func size(_ line: UnsafeRawBufferPointer) -> Int? {
        var sizeEnd = 3
        while sizeEnd < line.count, line[sizeEnd] != space { sizeEnd += 1 }
        guard let size = MemcacheRequestParser.number(line, 3, sizeEnd, maxDigits: 10),
              size <= UInt64(MemcacheReplyParser.maxValueLength) else { return nil }
        return Int(size)
    }

    /// Reads the meta reply at the start of `bytes`.
    public static func read(_ bytes: UnsafeRawBufferPointer) -> Result {
        let status = MemcacheReply.classify(bytes)
        switch status {
        case .incomplete: return .incomplete
        case .value, .success, .miss, .notStored, .exists, .notFound, .noop, .debug, .error: break
        default: return .invalid
        }
        guard let newlineAt = findNewline(bytes, from: 0, to: bytes.count) else { return .incomplete }
        let end = newlineAt > 0 && bytes[newlineAt - 1] == carriageReturn ? newlineAt - 1 : newlineAt
        var item = MetaItem(status: status, length: newlineAt + 1)
        if case .error = status { return .item(item) }
        let line = UnsafeRawBufferPointer(rebasing: bytes[0..<end])
        var position = 2
        if status == .value {
            // `classify` checked the size and the data block; a text `VALUE` record is no meta reply.
            guard line.count >= 3, line[2] == space, let size = size(line) else { return .invalid }
            item.value = (newlineAt + 1)..<(newlineAt + 1 + size)
            item.length = newlineAt + 1 + size + 2
            position = 3
            while position < end, line[position] != space { position += 1 }
        }
        // Flags: one letter and its token, separated by spaces.
        while position < end {
            while position < end, line[position] == space { position += 1 }
            guard position < end else { break }
            let flag = line[position]
            let start = position + 1
            while position < end, line[position] != space { position += 1 }
            switch flag {
            case UInt8(ascii: "f"):
                item.flags = MemcacheRequestParser.number(line, start, position, maxDigits: 10).flatMap { UInt32(exactly: $0) }
            case UInt8(ascii: "t"):
                if start < position, line[start] == UInt8(ascii: "-") {
                    item.ttl = MemcacheRequestParser.number(line, start + 1, position, maxDigits: 18).map { -Int($0) }
                } else {
                    item.ttl = MemcacheRequestParser.number(line, start, position, maxDigits: 18).map { Int($0) }
                }
            case UInt8(ascii: "c"): item.cas = MemcacheRequestParser.number(line, start, position)
            case UInt8(ascii: "k"): item.key = start..<position
            case UInt8(ascii: "O"):
                item.opaque = start..<position
                item.opaqueNumber = MemcacheRequestParser.number(line, start, position, maxDigits: 18).map { Int($0) }
            case UInt8(ascii: "b"): item.isBase64Key = true
            case UInt8(ascii: "X"): item.isStale = true
            default: break
            }
        }
        return .item(item)
    }
}
