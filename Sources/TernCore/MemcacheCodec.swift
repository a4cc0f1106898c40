// The memcached text protocol, both directions, as pure functions over bytes.
//
// Nothing here touches a socket, a clock or a global. Input may stop at any byte: a parser
// that needs more answers `.incomplete` and is called again later with the same bytes plus
// more. A parsed request points into the caller's buffer with offsets; nothing is copied.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum MemcacheCommand: UInt8, Sendable, CaseIterable {
    case get, gets, gat, gats
    case set, add, replace, append, prepend, cas
    case delete, incr, decr, touch
    case version, quit, verbosity, flushAll, stats
    /// The meta protocol (memcached >= 1.6): mg, ms, md, ma, mn, me.
    case metaGet, metaSet, metaDelete, metaArithmetic, metaNoop, metaDebug

    /// Commands whose reply is a run of `VALUE` blocks closed by `END`.
    @inlinable public var isRetrieval: Bool { self == .get || self == .gets || self == .gat || self == .gats }
    /// Commands that carry a data block after the line.
    @inlinable public var isStorage: Bool { rawValue >= MemcacheCommand.set.rawValue && rawValue <= MemcacheCommand.cas.rawValue }
    /// Commands that Tern answers itself.
    @inlinable public var isLocal: Bool { self == .version || self == .quit || self == .verbosity || self == .stats }
    @inlinable public var isMeta: Bool { rawValue >= MemcacheCommand.metaGet.rawValue }

    public var name: String {
        switch self {
        case .flushAll: return "flush_all"
        case .metaGet: return "mg"
        case .metaSet: return "ms"
        case .metaDelete: return "md"
        case .metaArithmetic: return "ma"
        case .metaNoop: return "mn"
        case .metaDebug: return "me"
        default: return String(describing: self)
        }
    }

    /// How a backend's reply to this command is framed.
    @inlinable public var framing: MemcacheFraming {
        switch self {
        case .get, .gets, .gat, .gats: return .retrieval
        case .stats: return .stats
        case .metaGet, .metaSet, .metaDelete, .metaArithmetic, .metaNoop, .metaDebug: return .meta
        default: return .line
        }
    }
}

/// How a reply from memcached is framed.
public enum MemcacheFraming: UInt8, Sendable {
    /// VALUE blocks closed by END.
    case retrieval
    /// One line.
    case line
    /// STAT lines closed by END.
    case stats
    /// One meta reply: a `VA <size> …` line and its data, or one line.
    case meta
    /// Meta replies up to and including `MN` (quiet commands followed by `mn`).
    case metaUntilNoop
    /// The same for Tern's own quiet item reads (a warm-up's old-pool `mg … q` batch): a bare
    /// `ERROR` there can only be a server without meta commands (memcached before 1.6), which
    /// answers every line so and never `MN`, and ends the framing.
    case metaItemsUntilNoop
}

/// One parsed request. All offsets are relative to the start of the frame.
public struct MemcacheRequest: Sendable, Equatable {
    public var command: MemcacheCommand
    /// Bytes of the whole frame: the line, its terminator and any data block.
    public var frameLength: Int
    /// Bytes of the command line including its terminator (`\r\n` or `\n`).
    public var lineLength: Int
    /// Where the line's content ends (before the terminator), and where the `noreply` token
    /// starts (including the space before it), or `contentEnd` when there is none.
    public var contentEnd: Int
    public var noreplyStart: Int
    /// The byte range that holds the key tokens: one key for single-key commands, several keys
    /// separated by single or repeated spaces for retrieval commands.
    public var keysStart: Int
    public var keysEnd: Int
    public var keyCount: Int
    /// For `gat`/`gats`: the exptime token.
    public var argumentStart: Int
    public var argumentEnd: Int
    /// For storage commands: the declared data length.
    public var dataLength: Int
    /// Meta commands: the `q` flag (quiet mode) and the `b` flag (the key is base64).
    public var isQuiet = false
    public var isBase64Key = false

    public var noreply: Bool { noreplyStart < contentEnd }

    /// What the parser makes of `gets <key>\r\n` for a key of `keyLength` bytes that it would
    /// accept (the binary front writes that line for a Get, and skips parsing its own line;
    /// a test checks this against the parser).
    public static func gets(keyLength: Int) -> MemcacheRequest {
        let contentEnd = 5 + keyLength
        return MemcacheRequest(command: .gets, frameLength: contentEnd + 2, lineLength: contentEnd + 2, contentEnd: contentEnd,
                               noreplyStart: contentEnd, keysStart: 5, keysEnd: contentEnd, keyCount: 1, argumentStart: 4, argumentEnd: 4,
                               dataLength: 0)
    }
}

/// Why a request was refused, and the exact reply the client gets.
public enum MemcacheRejection: Sendable, Equatable {
    case unknownCommand
    case badFormat
    case keyTooLong
    case badKeyCharacter
    case objectTooLarge
    case badDataChunk
    case lineTooLong
    case tooManyFlags
    /// `mg`'s text for the same refusal differs from `ms`, `md` and `ma`'s in memcached 1.6.
    case tooManyGetFlags
    case invalidDelta
    case invalidExptime
    case deleteUsage
    /// `gat <exptime>` with no key: memcached answers an empty result.
    case noKeys
    /// An `mg` or `ms` `b` key that is not base64 (`md` and `ma` say `invalidFlag`, `me`
    /// `badFormat`, as memcached 1.6 does).
    case badBase64Key
    case invalidFlag

    public var reply: StaticString {
        switch self {
        case .unknownCommand: return "ERROR\r\n"
        case .badFormat: return "CLIENT_ERROR bad command line format\r\n"
        // memcached's own text for a key over 250 bytes, on every command.
        case .keyTooLong: return "CLIENT_ERROR bad command line format\r\n"
        case .badKeyCharacter: return "CLIENT_ERROR key contains control characters\r\n"
        case .objectTooLarge: return "SERVER_ERROR object too large for cache\r\n"
        case .badDataChunk: return "CLIENT_ERROR bad data chunk\r\n"
        case .lineTooLong: return "CLIENT_ERROR line too long\r\n"
        case .tooManyFlags: return "CLIENT_ERROR options flags too long\r\n"
        case .tooManyGetFlags: return "CLIENT_ERROR options flags are too long\r\n"
        case .invalidDelta: return "CLIENT_ERROR invalid numeric delta argument\r\n"
        case .invalidExptime: return "CLIENT_ERROR invalid exptime argument\r\n"
        case .deleteUsage: return "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
        case .noKeys: return "END\r\n"
        case .badBase64Key: return "CLIENT_ERROR error decoding key\r\n"
        case .invalidFlag: return "CLIENT_ERROR invalid or duplicate flag\r\n"
        }
    }
}

public enum MemcacheParseResult: Sendable, Equatable {
    case incomplete
    case request(MemcacheRequest)
    /// Answer `rejection.reply`, drop `consume` bytes now and then `skip` more bytes as they
    /// arrive (a refused data block is never buffered); close the connection when `close`.
    case rejected(MemcacheRejection, consume: Int, skip: Int, close: Bool)
}

public struct MemcacheLimits: Sendable {
    public var maxKeyLength = 250
    public var maxLineLength = 2048
    /// `get`/`gets` lines may carry many keys; memcached reads them past the normal line limit.
    public var maxRetrievalLineLength = 1 << 20
    public var maxItemSize = 1 << 20
    /// Refuse keys with control characters (the protocol's rule). memcached and twemproxy accept
    /// them in practice; a pool can too with `strict_keys: false`.
    public var rejectsControlCharacters = true
    public init(maxItemSize: Int = 1 << 20, strictKeys: Bool = true) {
        self.maxItemSize = maxItemSize
        self.rejectsControlCharacters = strictKeys
    }

    /// Before a client of a pool with users has authenticated: enough for its authentication
    /// (`<user> <password>` as a `set`'s data, a binary SASL body) and no more, so that a client
    /// that never authenticates cannot hold an item's worth of buffer (Redis caps its
    /// unauthenticated clients likewise, `RespLimits.unauthenticated`). Larger data blocks are
    /// refused as too large and skipped as they arrive, not buffered; `get` lines get the
    /// normal line limit.
    public var unauthenticated: MemcacheLimits {
        var limits = self
        limits.maxItemSize = min(maxItemSize, Self.unauthenticatedItemSize)
        limits.maxRetrievalLineLength = limits.maxLineLength
        return limits
    }

    public static let unauthenticatedItemSize = 4096
}

@usableFromInline let space: UInt8 = 0x20
@usableFromInline let newline: UInt8 = 0x0a
@usableFromInline let carriageReturn: UInt8 = 0x0d

/// Finds the first `\n` in `bytes[from..<to]`.
@inlinable
func findNewline(_ bytes: UnsafeRawBufferPointer, from: Int, to: Int) -> Int? {
    guard to > from, let base = bytes.baseAddress else { return nil }
    guard let found = memchr(base + from, Int32(newline), to - from) else { return nil }
    return base.distance(to: UnsafeRawPointer(found))
}

public enum MemcacheRequestParser {
    /// Parses the first request in `bytes`.
    public static func parse(_ bytes: UnsafeRawBufferPointer, limits: MemcacheLimits) -> MemcacheParseResult {
        let available = bytes.count
        let scanLimit = min(available, limits.maxLineLength)
        var newlineAt = findNewline(bytes, from: 0, to: scanLimit)
        if newlineAt == nil {
            if available < limits.maxLineLength { return .incomplete }
            // A long line is fine only for `get` and `gets`: memcached reads lines past 2048
            // bytes for those alone, and drops the connection on any other (gat and gats too).
            guard startsWithRetrieval(bytes) else {
                return .rejected(.lineTooLong, consume: available, skip: 0, close: true)
            }
            newlineAt = findNewline(bytes, from: scanLimit, to: min(available, limits.maxRetrievalLineLength))
            if newlineAt == nil {
                if available < limits.maxRetrievalLineLength { return .incomplete }
                return .rejected(.lineTooLong, consume: available, skip: 0, close: true)
            }
        }
        let lineEnd = newlineAt!
        let lineLength = lineEnd + 1
        // memcached reads a command line as a C string: a NUL byte ends it there. Such a line
        // never leaves Tern, whatever `strict_keys` says, but it is framed as memcached frames
        // it: the tokens before the NUL say whether a data block follows and how long it is, and
        // whether the refusal is answered (`refusalIsSilent`). Read whole, its tokens after the
        // NUL could declare a data block the client never sends (Tern waited for it) or none
        // where memcached reads one.
        if let nul = memchr(bytes.baseAddress!, 0, lineEnd) {
            let result = parseLine(bytes, contentEnd: bytes.baseAddress!.distance(to: UnsafeRawPointer(nul)), lineLength: lineLength, limits: limits)
            guard case let .request(request) = result else { return result }
            return .rejected(.badFormat, consume: request.frameLength, skip: 0, close: false)
        }
        let contentEnd = lineEnd > 0 && bytes[lineEnd - 1] == carriageReturn ? lineEnd - 1 : lineEnd
        return parseLine(bytes, contentEnd: contentEnd, lineLength: lineLength, limits: limits)
    }

    static func startsWithRetrieval(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var end = 0
        while end < bytes.count, end < 5, bytes[end] != space { end += 1 }
        guard end < bytes.count, bytes[end] == space else { return false }
        let name = UnsafeRawBufferPointer(rebasing: bytes[0..<end])
        return matches(name, "get") || matches(name, "gets")
    }

    @inline(__always)
    static func matches(_ token: UnsafeRawBufferPointer, _ literal: StaticString) -> Bool {
        guard token.count == literal.utf8CodeUnitCount else { return false }
        let pointer = literal.utf8Start
        for i in 0..<token.count where token[i] != pointer[i] { return false }
        return true
    }

    /// Token boundaries on one line; up to 8 tokens are kept, more are counted.
    struct Tokens {
        var starts: (Int, Int, Int, Int, Int, Int, Int, Int) = (0, 0, 0, 0, 0, 0, 0, 0)
        var ends: (Int, Int, Int, Int, Int, Int, Int, Int) = (0, 0, 0, 0, 0, 0, 0, 0)
        var count = 0

        subscript(start index: Int) -> Int {
            withUnsafeBytes(of: starts) { $0.load(fromByteOffset: index * MemoryLayout<Int>.stride, as: Int.self) }
        }
        subscript(end index: Int) -> Int {
            withUnsafeBytes(of: ends) { $0.load(fromByteOffset: index * MemoryLayout<Int>.stride, as: Int.self) }
        }
        mutating func add(_ start: Int, _ end: Int) {
            if count < 8 {
                withUnsafeMutableBytes(of: &starts) { $0.storeBytes(of: start, toByteOffset: count * MemoryLayout<Int>.stride, as: Int.self) }
                withUnsafeMutableBytes(of: &ends) { $0.storeBytes(of: end, toByteOffset: count * MemoryLayout<Int>.stride, as: Int.self) }
            }
            count += 1
        }
    }

    static func tokenize(_ bytes: UnsafeRawBufferPointer, from: Int, to: Int, maxTokens: Int) -> Tokens {
        var tokens = Tokens()
        var position = from
        while position < to {
            while position < to, bytes[position] == space { position += 1 }
            if position >= to { break }
            let start = position
            while position < to, bytes[position] != space { position += 1 }
            tokens.add(start, position)
            if tokens.count > maxTokens { break }
        }
        return tokens
    }

    static func command(_ name: UnsafeRawBufferPointer) -> MemcacheCommand? {
        switch name.count {
        case 2:
            guard name[0] == UInt8(ascii: "m") else { return nil }
            switch name[1] {
            case UInt8(ascii: "g"): return .metaGet
            case UInt8(ascii: "s"): return .metaSet
            case UInt8(ascii: "d"): return .metaDelete
            case UInt8(ascii: "a"): return .metaArithmetic
            case UInt8(ascii: "n"): return .metaNoop
            case UInt8(ascii: "e"): return .metaDebug
            default: return nil
            }
        case 3:
            if matches(name, "get") { return .get }
            if matches(name, "set") { return .set }
            if matches(name, "add") { return .add }
            if matches(name, "gat") { return .gat }
            if matches(name, "cas") { return .cas }
        case 4:
            if matches(name, "gets") { return .gets }
            if matches(name, "incr") { return .incr }
            if matches(name, "decr") { return .decr }
            if matches(name, "gats") { return .gats }
            if matches(name, "quit") { return .quit }
        case 5:
            if matches(name, "touch") { return .touch }
            if matches(name, "stats") { return .stats }
        case 6:
            if matches(name, "delete") { return .delete }
            if matches(name, "append") { return .append }
        case 7:
            if matches(name, "replace") { return .replace }
            if matches(name, "prepend") { return .prepend }
            if matches(name, "version") { return .version }
        case 9:
            if matches(name, "flush_all") { return .flushAll }
            if matches(name, "verbosity") { return .verbosity }
        default:
            break
        }
        return nil
    }

    /// Checks one key: length and no control characters (memcached's rule for the text protocol).
    @inline(__always)
    static func checkKey(_ bytes: UnsafeRawBufferPointer, _ start: Int, _ end: Int, _ limits: MemcacheLimits) -> MemcacheRejection? {
        if end - start > limits.maxKeyLength { return .keyTooLong }
        guard limits.rejectsControlCharacters else { return nil }
        return firstSpaceOrControl(bytes, start, end) < end ? .badKeyCharacter : nil
    }

    /// The first byte of `bytes[from..<to]` below 0x21 (a space or a control character) or 0x7F,
    /// or `to`. Eight bytes at a time: in each word, a byte's high bit is set where the byte is
    /// below 0x21 (`(w - 0x21…) & ~w`, bytes from 0x80 excluded by `~w`) or equals 0x7F (the
    /// same test for zero on `w ^ 0x7F…`). A borrow can flag a byte above a hit, never below
    /// the first one, so the lowest flag is the first such byte.
    @inline(__always)
    static func firstSpaceOrControl(_ bytes: UnsafeRawBufferPointer, _ from: Int, _ to: Int) -> Int {
        guard let base = bytes.baseAddress else { return to }
        let ones: UInt64 = 0x0101_0101_0101_0101
        let highs: UInt64 = 0x8080_8080_8080_8080
        var position = from
        while position + 8 <= to {
            let word = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: position, as: UInt64.self))
            let below = (word &- 0x21 &* ones) & ~word & highs
            let delete = word ^ (0x7F &* ones)
            let hits = below | ((delete &- ones) & ~delete & highs)
            if hits != 0 { return position + hits.trailingZeroBitCount >> 3 }
            position += 8
        }
        while position < to {
            let byte = base.load(fromByteOffset: position, as: UInt8.self)
            if byte < 0x21 || byte == 0x7f { return position }
            position += 1
        }
        return to
    }

    /// The first space in `bytes[from..<to]`, or `to`: `memchr` past a few bytes, a loop for
    /// short tokens.
    @inline(__always)
    static func nextSpace(_ bytes: UnsafeRawBufferPointer, _ from: Int, _ to: Int) -> Int {
        guard let base = bytes.baseAddress else { return to }
        if to - from > 16 {
            guard let found = memchr(base + from, Int32(space), to - from) else { return to }
            return base.distance(to: UnsafeRawPointer(found))
        }
        var position = from
        while position < to, base.load(fromByteOffset: position, as: UInt8.self) != space { position += 1 }
        return position
    }

    /// An unsigned decimal of at most `maxDigits` digits.
    static func number(_ bytes: UnsafeRawBufferPointer, _ start: Int, _ end: Int, maxDigits: Int = 20) -> UInt64? {
        guard end > start, end - start <= maxDigits else { return nil }
        var value: UInt64 = 0
        if end - start <= 19 {
            // Any 19 digits fit (at most 9,999,999,999,999,999,999 < 2^64): nothing to check but digits.
            for i in start..<end {
                let digit = bytes[i] &- 0x30
                guard digit < 10 else { return nil }
                value = value &* 10 &+ UInt64(digit)
            }
            return value
        }
        for i in start..<end {
            let digit = bytes[i] &- 0x30
            guard digit < 10 else { return nil }
            let (times, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times.addingReportingOverflow(UInt64(digit))
            if overflow1 || overflow2 { return nil }
            value = sum
        }
        return value
    }

    /// An exptime (or `flush_all` delay) as memcached reads it: `safe_strtol`, that is
    /// `strtol` with an optional sign, refused only past the 64-bit range, then cut to its low
    /// 32 bits (`4294967295` is -1, expired at once; `4294967296` is 0, no expiry). libmemcached
    /// writes a negative exptime that way. Tern forwards the token as written, so memcached cuts
    /// it the same way; the value returned is the cut one.
    static func signedNumber(_ bytes: UnsafeRawBufferPointer, _ start: Int, _ end: Int) -> Int64? {
        guard end > start else { return nil }
        let sign = bytes[start]
        let digits = sign == UInt8(ascii: "-") || sign == UInt8(ascii: "+") ? start + 1 : start
        guard let magnitude = number(bytes, digits, end) else { return nil }
        if sign == UInt8(ascii: "-") {
            guard magnitude <= UInt64(Int64.max) + 1 else { return nil }
            return Int64(Int32(truncatingIfNeeded: 0 &- magnitude))
        }
        guard magnitude <= UInt64(Int64.max) else { return nil }
        return Int64(Int32(truncatingIfNeeded: magnitude))
    }

    /// `signedNumber` of a whole string, for tests.
    public static func signedNumberForTests(_ text: String) -> Int64? {
        Array(text.utf8).withUnsafeBytes { signedNumber($0, 0, $0.count) }
    }

    /// Flags as memcached reads them: `safe_strtoul`, an optional `+` and up to 2^64 - 1, cut to
    /// 32 bits by memcached (a `-` is refused).
    static func flagsNumber(_ bytes: UnsafeRawBufferPointer, _ start: Int, _ end: Int) -> UInt64? {
        guard end > start else { return nil }
        // `strtoul` reads `-0` as 0, which `safe_strtoul` keeps (only a negative result is refused).
        if bytes[start] == UInt8(ascii: "-") { return number(bytes, start + 1, end).flatMap { $0 == 0 ? 0 : nil } }
        return number(bytes, bytes[start] == UInt8(ascii: "+") ? start + 1 : start, end)
    }

    /// A storage command's data length as memcached 1.6 reads it: `safe_strtol` (C's `strtol`:
    /// an optional sign, any number of leading zeros, at most a 64-bit value, then the token
    /// ends or a whitespace byte other than space follows, after which memcached reads no
    /// more of it) stored in 32 bits without a range check, then refused when negative or past
    /// INT_MAX - 2. `4294967301` is 5, as memcached reads it.
    static func dataLength(_ bytes: UnsafeRawBufferPointer, _ start: Int, _ end: Int) -> Int? {
        var index = start
        guard index < end else { return nil }
        let negative = bytes[index] == UInt8(ascii: "-")
        if negative || bytes[index] == UInt8(ascii: "+") { index += 1 }
        let digitsStart = index
        while index < end, bytes[index] == UInt8(ascii: "0") { index += 1 }
        var value: UInt64 = 0
        var significant = 0
        while index < end, bytes[index] &- 0x30 < 10 {
            significant += 1
            // 19 digits fit in 64 bits; a 20th is past LONG_MAX (strtol's ERANGE).
            guard significant <= 19 else { return nil }
            value = value &* 10 &+ UInt64(bytes[index] &- 0x30)
            index += 1
        }
        guard index > digitsStart else { return nil }
        if index < end {
            let next = bytes[index]
            guard next == 0x09 || next == 0x0a || next == 0x0b || next == 0x0c || next == 0x0d else { return nil }
        }
        guard value <= (negative ? UInt64(Int64.max) + 1 : UInt64(Int64.max)) else { return nil }
        let length = Int32(truncatingIfNeeded: negative ? 0 &- value : value)
        return length >= 0 && length <= Int32.max - 2 ? Int(length) : nil
    }

    /// Whether memcached answers nothing for a line Tern refuses: a command that takes
    /// `noreply`, with a token count it accepts, whose last token is `noreply`. memcached marks
    /// such a request silent before checking anything else, so its errors (a key too long, a
    /// bad number, an object too large) are not sent either; a client that sent `noreply` reads
    /// no reply for it. Meta commands report errors regardless, and a wrong token count is
    /// answered `ERROR` regardless.
    public static func refusalIsSilent(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let lineEnd = findNewline(bytes, from: 0, to: bytes.count) else { return false }
        // The line as memcached reads it: up to a NUL byte, if there is one.
        let contentEnd = memchr(bytes.baseAddress!, 0, lineEnd).map { bytes.baseAddress!.distance(to: UnsafeRawPointer($0)) }
            ?? (lineEnd > 0 && bytes[lineEnd - 1] == carriageReturn ? lineEnd - 1 : lineEnd)
        // Seven tokens at most matter (`cas`); an eighth makes `count` 8.
        let tokens = tokenize(bytes, from: 0, to: contentEnd, maxTokens: 7)
        let count = tokens.count
        // The name as `parseLine` reads it: from the line's first byte.
        guard count >= 2, count <= 7, isNoreply(bytes, tokens, count - 1),
              let command = command(UnsafeRawBufferPointer(rebasing: bytes[0..<tokens[end: 0]])) else { return false }
        // A token count memcached's dispatch takes: it marks the request noreply (the last
        // token), then refuses it silently, even where `noreply` stands in a value's place
        // (`incr k noreply`, `set k 0 0 noreply`).
        switch command {
        case .set, .add, .replace, .append, .prepend: return count == 5 || count == 6
        case .cas: return count == 6 || count == 7
        case .incr, .decr, .touch: return count == 3 || count == 4
        case .delete: return count == 3 || count == 4
        case .flushAll, .verbosity: return count == 2 || count == 3
        default: return false
        }
    }

    static func isNoreply(_ bytes: UnsafeRawBufferPointer, _ tokens: Tokens, _ index: Int) -> Bool {
        matches(UnsafeRawBufferPointer(rebasing: bytes[tokens[start: index]..<tokens[end: index]]), "noreply")
    }

    static func parseLine(_ bytes: UnsafeRawBufferPointer, contentEnd: Int, lineLength: Int, limits: MemcacheLimits) -> MemcacheParseResult {
        let badLine = MemcacheParseResult.rejected(.badFormat, consume: lineLength, skip: 0, close: false)
        // A token count the command never takes: memcached answers `ERROR` (its dispatch
        // checks the count before the command reads a token), with or without `noreply`.
        let wrongCount = MemcacheParseResult.rejected(.unknownCommand, consume: lineLength, skip: 0, close: false)
        func refused(_ rejection: MemcacheRejection) -> MemcacheParseResult {
            .rejected(rejection, consume: lineLength, skip: 0, close: false)
        }
        // Read the command name.
        var nameEnd = 0
        while nameEnd < contentEnd, bytes[nameEnd] != space { nameEnd += 1 }
        guard let command = command(UnsafeRawBufferPointer(rebasing: bytes[0..<nameEnd])) else {
            return .rejected(.unknownCommand, consume: lineLength, skip: 0, close: false)
        }
        var request = MemcacheRequest(command: command, frameLength: lineLength, lineLength: lineLength,
                                      contentEnd: contentEnd, noreplyStart: contentEnd,
                                      keysStart: nameEnd, keysEnd: nameEnd, keyCount: 0,
                                      argumentStart: nameEnd, argumentEnd: nameEnd, dataLength: 0)
        if command.isRetrieval {
            var position = nameEnd
            if command == .gat || command == .gats {
                while position < contentEnd, bytes[position] == space { position += 1 }
                guard position < contentEnd else { return wrongCount }
                let start = position
                while position < contentEnd, bytes[position] != space { position += 1 }
                guard signedNumber(bytes, start, position) != nil else { return refused(.invalidExptime) }
                request.argumentStart = start
                request.argumentEnd = position
            }
            var count = 0
            var firstKey = -1
            var lastEnd = position
            while position < contentEnd {
                while position < contentEnd, bytes[position] == space { position += 1 }
                if position >= contentEnd { break }
                let start = position
                // One pass finds the key's end and, with strict keys, whether it is clean.
                var clean = true
                if limits.rejectsControlCharacters {
                    position = firstSpaceOrControl(bytes, start, contentEnd)
                    if position < contentEnd, bytes[position] != space {
                        clean = false
                        position = nextSpace(bytes, position, contentEnd)
                    }
                } else {
                    position = nextSpace(bytes, start, contentEnd)
                }
                if position - start > limits.maxKeyLength {
                    return .rejected(.keyTooLong, consume: lineLength, skip: 0, close: false)
                }
                if !clean { return .rejected(.badKeyCharacter, consume: lineLength, skip: 0, close: false) }
                if firstKey < 0 { firstKey = start }
                lastEnd = position
                count += 1
            }
            // `get` alone is a token count memcached refuses; `gat <exptime>` alone finds nothing.
            guard count > 0 else { return command == .gat || command == .gats ? refused(.noKeys) : wrongCount }
            request.keysStart = firstKey
            request.keysEnd = lastEnd
            request.keyCount = count
            return .request(request)
        }
        if command.isMeta { return parseMeta(command, bytes, request, limits: limits) }
        let tokens = tokenize(bytes, from: nameEnd, to: contentEnd, maxTokens: 7)
        func key(_ index: Int) -> MemcacheRejection? {
            request.keysStart = tokens[start: index]
            request.keysEnd = tokens[end: index]
            request.keyCount = 1
            return checkKey(bytes, request.keysStart, request.keysEnd, limits)
        }
        // Marks a trailing `noreply` token at `index`. Another token there is ignored, as
        // memcached ignores it (it looks for `noreply` in the last token only, and reads no
        // further): the line goes on as written. `strict` (`delete`): another token is refused.
        func optionalNoreply(_ index: Int, strict: Bool = false) -> Bool {
            if tokens.count == index + 1 {
                guard isNoreply(bytes, tokens, index) else { return !strict }
                var start = tokens[start: index]
                while start > 0, bytes[start - 1] == space { start -= 1 }
                request.noreplyStart = start
            }
            return tokens.count <= index + 1
        }
        switch command {
        case .set, .add, .replace, .append, .prepend, .cas:
            let fixed = command == .cas ? 5 : 4
            guard tokens.count == fixed || tokens.count == fixed + 1 else { return wrongCount }
            // The data length as memcached reads it (`dataLength`); none: memcached reads no
            // data block (a bad command line).
            let length = dataLength(bytes, tokens[start: 3], tokens[end: 3])
            let wellFormed = length != nil && flagsNumber(bytes, tokens[start: 1], tokens[end: 1]) != nil
                && signedNumber(bytes, tokens[start: 2], tokens[end: 2]) != nil
                && (command != .cas || flagsNumber(bytes, tokens[start: 4], tokens[end: 4]) != nil)
            if let rejection = key(0) {
                // Unlike memcached, swallow the data block when the rest of the line is well
                // formed and the block no larger than an item may be, so the client gets one
                // reply for the command, not a second ERROR for its data.
                let skip = wellFormed && length! <= limits.maxItemSize ? length! + 2 : 0
                return .rejected(rejection, consume: lineLength, skip: skip, close: false)
            }
            guard wellFormed, let length else { return badLine }
            guard optionalNoreply(fixed) else { return badLine }
            let dataLength = length
            if dataLength > limits.maxItemSize {
                // Swallow the data block as it arrives so the connection stays in sync.
                return .rejected(.objectTooLarge, consume: lineLength, skip: dataLength + 2, close: false)
            }
            request.dataLength = dataLength
            request.frameLength = lineLength + dataLength + 2
            if bytes.count < request.frameLength { return .incomplete }
            if bytes[lineLength + dataLength] != carriageReturn || bytes[lineLength + dataLength + 1] != newline {
                return .rejected(.badDataChunk, consume: request.frameLength, skip: 0, close: false)
            }
            return .request(request)
        case .delete:
            // delete <key> [0] [noreply]
            guard tokens.count >= 1, tokens.count <= 3 else { return wrongCount }
            if let rejection = key(0) { return .rejected(rejection, consume: lineLength, skip: 0, close: false) }
            var next = 1
            if tokens.count > next, number(bytes, tokens[start: next], tokens[end: next]) == 0 { next += 1 }
            guard optionalNoreply(next, strict: true) else { return refused(.deleteUsage) }
            return .request(request)
        case .incr, .decr:
            guard tokens.count == 2 || tokens.count == 3 else { return wrongCount }
            if let rejection = key(0) { return .rejected(rejection, consume: lineLength, skip: 0, close: false) }
            // (`safe_strtoull`, as flags: `+5` is 5; refused, it ran a value as a command where
            // memcached stores it; memcached text sweep 31.)
            guard flagsNumber(bytes, tokens[start: 1], tokens[end: 1]) != nil else { return refused(.invalidDelta) }
            guard optionalNoreply(2) else { return badLine }
            return .request(request)
        case .touch:
            guard tokens.count == 2 || tokens.count == 3 else { return wrongCount }
            if let rejection = key(0) { return .rejected(rejection, consume: lineLength, skip: 0, close: false) }
            guard signedNumber(bytes, tokens[start: 1], tokens[end: 1]) != nil else { return refused(.invalidExptime) }
            guard optionalNoreply(2) else { return badLine }
            return .request(request)
        case .flushAll:
            // flush_all [delay] [noreply]: as memcached, `noreply` is the last token, and the
            // first is read as the delay unless it is that `noreply` (`flush_all noreply x`
            // is an invalid delay; `flush_all 0 x` ignores the `x`).
            guard tokens.count <= 2 else { return wrongCount }
            let hasDelay = tokens.count > (tokens.count > 0 && isNoreply(bytes, tokens, tokens.count - 1) ? 1 : 0)
            if hasDelay {
                guard signedNumber(bytes, tokens[start: 0], tokens[end: 0]) != nil else { return refused(.invalidExptime) }
                request.argumentStart = tokens[start: 0]
                request.argumentEnd = tokens[end: 0]
            }
            guard optionalNoreply(hasDelay ? 1 : 0) else { return badLine }
            return .request(request)
        case .verbosity:
            // verbosity <level> [noreply]: memcached reads the level as `safe_strtoul` from the
            // first token (a lone `noreply` is the flag, and the level it cannot read is
            // refused silently: nothing is answered either way).
            guard tokens.count == 1 || tokens.count == 2 else { return wrongCount }
            let loneNoreply = tokens.count == 1 && isNoreply(bytes, tokens, 0)
            if !loneNoreply, flagsNumber(bytes, tokens[start: 0], tokens[end: 0]) == nil { return badLine }
            guard optionalNoreply(loneNoreply ? 0 : 1) else { return badLine }
            return .request(request)
        case .version, .quit:
            // memcached reads no token after either.
            return .request(request)
        case .stats:
            return .request(request)
        default:
            return badLine
        }
    }
}

extension MemcacheRequestParser {
    /// `mg|md|ma|me <key> <flags>*`, `ms <key> <datalen> <flags>*` + data, `mn`.
    static func parseMeta(_ command: MemcacheCommand, _ bytes: UnsafeRawBufferPointer, _ parsed: MemcacheRequest, limits: MemcacheLimits) -> MemcacheParseResult {
        var request = parsed
        let lineLength = request.lineLength
        let contentEnd = request.contentEnd
        let badLine = MemcacheParseResult.rejected(.badFormat, consume: lineLength, skip: 0, close: false)
        var position = request.keysStart
        func nextToken() -> Range<Int>? {
            while position < contentEnd, bytes[position] == space { position += 1 }
            guard position < contentEnd else { return nil }
            let start = position
            while position < contentEnd, bytes[position] != space { position += 1 }
            return start..<position
        }
        // memcached reads no token after `mn`.
        if command == .metaNoop { return .request(request) }
        // No key: memcached answers `ERROR` (a token count no meta command takes), but
        // `CLIENT_ERROR` to `me`.
        guard let key = nextToken() else {
            return command == .metaDebug ? badLine : .rejected(.unknownCommand, consume: lineLength, skip: 0, close: false)
        }
        request.keysStart = key.lowerBound
        request.keysEnd = key.upperBound
        request.keyCount = 1
        var dataLength = -1
        if command == .metaSet {
            // The length as memcached reads a storage command's (`dataLength`: `+5`, `05`, and
            // 2^32 + 5 as 5). Read as plain digits, `+5` was refused and the value ran as a
            // command, and 2^31 or more swallowed up to 4 GiB of what came next (memcached text
            // sweep 31).
            guard let lengthToken = nextToken(),
                  let length = Self.dataLength(bytes, lengthToken.lowerBound, lengthToken.upperBound) else { return badLine }
            dataLength = length
        }
        // The key token's own length counts, base64 or not: memcached checks it before decoding,
        // and before counting the flags.
        if key.count > limits.maxKeyLength {
            return .rejected(.keyTooLong, consume: lineLength, skip: dataLength >= 0 ? dataLength + 2 : 0, close: false)
        }
        // memcached 1.6 refuses a meta command line of more than 19 tokens (command, key, the
        // data length of `ms`, flags) before it reads an `ms` data block, which would then run
        // as a command: 16 flags for ms, 17 for mg, md and ma. Checked here, never forwarded.
        let maxFlags = command == .metaSet ? 16 : command == .metaDebug ? Int.max : 17
        var flagCount = 0
        while let flag = nextToken() {
            flagCount += 1
            guard flagCount <= maxFlags else {
                return .rejected(command == .metaGet ? .tooManyGetFlags : .tooManyFlags, consume: lineLength,
                                 skip: dataLength >= 0 ? dataLength + 2 : 0, close: false)
            }
            switch bytes[flag.lowerBound] {
            case UInt8(ascii: "q"): request.isQuiet = true
            // `me` decodes its key only when the first token after it is exactly `b`
            // (memcached's process_meta_command); the others read any flag that starts so. A
            // key checked (`users:` prefixes) and placed decoded where memcached reads it raw
            // let `me YXBwOng= v b` pass as `app:x`.
            case UInt8(ascii: "b"):
                if command != .metaDebug || flagCount == 1 && flag.count == 1 { request.isBase64Key = true }
            default: break
            }
        }
        if request.isBase64Key {
            guard let decodedLength = Base64.decodedLength(UnsafeRawBufferPointer(rebasing: bytes[key])),
                  decodedLength > 0 else {
                let rejection: MemcacheRejection = command == .metaGet || command == .metaSet ? .badBase64Key
                    : command == .metaDebug ? .badFormat : .invalidFlag
                return .rejected(rejection, consume: lineLength, skip: dataLength >= 0 ? dataLength + 2 : 0, close: false)
            }
            if decodedLength > limits.maxKeyLength {
                return .rejected(.keyTooLong, consume: lineLength, skip: dataLength >= 0 ? dataLength + 2 : 0, close: false)
            }
        } else if let rejection = checkKey(bytes, key.lowerBound, key.upperBound, limits) {
            return .rejected(rejection, consume: lineLength, skip: dataLength >= 0 ? dataLength + 2 : 0, close: false)
        }
        if dataLength >= 0 {
            if dataLength > limits.maxItemSize {
                return .rejected(.objectTooLarge, consume: lineLength, skip: dataLength + 2, close: false)
            }
            request.dataLength = dataLength
            request.frameLength = lineLength + dataLength + 2
            if bytes.count < request.frameLength { return .incomplete }
            if bytes[lineLength + dataLength] != carriageReturn || bytes[lineLength + dataLength + 1] != newline {
                return .rejected(.badDataChunk, consume: request.frameLength, skip: 0, close: false)
            }
        }
        return .request(request)
    }
}

/// Base64 (RFC 4648, with padding), for meta-protocol keys sent with the `b` flag.
public enum Base64 {
    @inlinable
    static func value(_ byte: UInt8) -> UInt8? {
        switch byte {
        case 0x41...0x5a: return byte - 0x41
        case 0x61...0x7a: return byte - 0x61 + 26
        case 0x30...0x39: return byte - 0x30 + 52
        case UInt8(ascii: "+"): return 62
        case UInt8(ascii: "/"): return 63
        default: return nil
        }
    }

    /// The decoded length, or nil when `text` is not valid base64.
    public static func decodedLength(_ text: UnsafeRawBufferPointer) -> Int? {
        guard text.count % 4 == 0 else { return nil }
        var padding = 0
        for (i, byte) in text.enumerated() {
            if byte == UInt8(ascii: "=") {
                guard i >= text.count - 2 else { return nil }
                padding += 1
            } else if padding > 0 || value(byte) == nil {
                return nil
            }
        }
        return text.count / 4 * 3 - padding
    }

    /// Decodes valid base64 into `output` (which must hold `decodedLength` bytes).
    public static func decode(_ text: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Int {
        var count = 0
        var accumulator: UInt32 = 0
        var bits = 0
        for byte in text {
            guard let sextet = value(byte) else { break }
            accumulator = accumulator << 6 | UInt32(sextet)
            bits += 6
            if bits >= 8 {
                bits -= 8
                output[count] = UInt8(truncatingIfNeeded: accumulator >> UInt32(bits))
                count += 1
            }
        }
        return count
    }

    public static func encode(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var out: [UInt8] = []
        var index = 0
        while index < bytes.count {
            let b0 = UInt32(bytes[index])
            let b1 = index + 1 < bytes.count ? UInt32(bytes[index + 1]) : 0
            let b2 = index + 2 < bytes.count ? UInt32(bytes[index + 2]) : 0
            let triple = b0 << 16 | b1 << 8 | b2
            out.append(alphabet[Int(triple >> 18 & 63)])
            out.append(alphabet[Int(triple >> 12 & 63)])
            out.append(index + 1 < bytes.count ? alphabet[Int(triple >> 6 & 63)] : UInt8(ascii: "="))
            out.append(index + 2 < bytes.count ? alphabet[Int(triple & 63)] : UInt8(ascii: "="))
            index += 3
        }
        return out
    }
}

/// Frames replies from a memcached backend.
public enum MemcacheReplyParser {
    /// `.reply`'s `isError`: ERROR / CLIENT_ERROR / SERVER_ERROR.
    public typealias Result = ReplyFraming

    /// The largest `VALUE` block accepted from a backend.
    public static let maxValueLength = 1 << 30

    public static func parse(_ bytes: UnsafeRawBufferPointer, command: MemcacheCommand) -> Result {
        parse(bytes, framing: command.framing)
    }

    public static func parse(_ bytes: UnsafeRawBufferPointer, framing: MemcacheFraming) -> Result {
        var resumeAt = 0
        return parse(bytes, framing: framing, resumeAt: &resumeAt)
    }

    /// Frames the reply at the start of `bytes`, resuming a multi-line reply where an earlier
    /// `.incomplete` stopped: `resumeAt` is the offset of the first record not yet known to be
    /// complete (0 for a new reply). It is left there on `.incomplete` and set back to 0 otherwise,
    /// so a many-value reply arriving in pieces is scanned once, not once per piece.
    public static func parse(_ bytes: UnsafeRawBufferPointer, framing: MemcacheFraming, resumeAt: inout Int) -> Result {
        if framing == .meta || framing == .metaUntilNoop || framing == .metaItemsUntilNoop {
            resumeAt = 0
            return parseMeta(bytes, untilNoop: framing != .meta, ownItems: framing == .metaItemsUntilNoop)
        }
        let multiLine = framing == .retrieval || framing == .stats
        var position = multiLine && resumeAt <= bytes.count ? resumeAt : 0
        resumeAt = 0
        while true {
            // The END after a record (or of a miss) without a scan, as the walk below reads it.
            if multiLine, position + 5 <= bytes.count, bytes[position] == UInt8(ascii: "E"), bytes[position + 1] == UInt8(ascii: "N"),
               bytes[position + 2] == UInt8(ascii: "D"), bytes[position + 3] == carriageReturn, bytes[position + 4] == newline {
                return .reply(length: position + 5, isError: false)
            }
            guard let lineEnd = findNewline(bytes, from: position, to: bytes.count) else {
                if bytes.count - position > 8192 { return .invalid }
                resumeAt = position
                return .incomplete
            }
            let line = UnsafeRawBufferPointer(rebasing: bytes[position..<lineEnd])
            if isErrorLine(line) { return .reply(length: lineEnd + 1, isError: true) }
            // A one-line reply must be one a one-line command can get: anything else means the
            // connection is out of step with its requests.
            if !multiLine { return isLineReply(line) ? .reply(length: lineEnd + 1, isError: false) : .invalid }
            if startsWith(line, "END") && (line.count == 3 || (line.count == 4 && line[3] == carriageReturn)) {
                return .reply(length: lineEnd + 1, isError: false)
            }
            if framing == .stats, startsWith(line, "STAT ") {
                position = lineEnd + 1
                continue
            }
            guard startsWith(line, "VALUE "), let length = valueLength(line) else { return .invalid }
            let next = lineEnd + 1 + length + 2
            if bytes.count < next {
                resumeAt = position
                return .incomplete
            }
            position = next
        }
    }

    /// A framed reply to a one-key text retrieval (`get`/`gets`/`gat`), judged without walking
    /// records: true for a miss (`END`), an error line, or exactly one `VALUE` record for `key`
    /// then `END`; false when its record names another key (the connection is out of step); nil
    /// when only the general walk can tell (a repeated key, a malformed record).
    @inlinable
    public static func singleKeyVerdict(_ reply: UnsafeRawBufferPointer, key: UnsafeRawBufferPointer) -> Bool? {
        let count = reply.count
        // The framer lets through only END, an error line or VALUE records: only those name keys.
        guard count > 6, reply[0] == UInt8(ascii: "V") else { return true }
        guard count > 6 + key.count, reply[6 + key.count] == 0x20,
              memcmp(reply.baseAddress! + 6, key.baseAddress!, key.count) == 0 else { return false }
        // One record, then END: anything longer (a repeated key) takes the general walk.
        // `<flags> <bytes>[ <cas>]\r\n` after the key, as memcached writes it, is read in place;
        // any other form (a bare \n, doubled spaces) is read by `valueLength`, which gives the
        // same length for this one.
        var at = 7 + key.count
        let flagsStart = at
        while at < count, at - flagsStart < 11, reply[at] &- 0x30 < 10 { at += 1 }
        if at > flagsStart, at - flagsStart <= 10, at < count, reply[at] == space {
            at += 1
            let lengthStart = at
            var length = 0
            while at < count, at - lengthStart < 11, case let digit = reply[at] &- 0x30, digit < 10 {
                length = length &* 10 &+ Int(digit)
                at += 1
            }
            if at > lengthStart, at - lengthStart <= 10, length <= maxValueLength, at < count {
                if reply[at] == space {
                    // A cas (gets, gats): up to 20 digits.
                    at += 1
                    let casStart = at
                    while at < count, at - casStart < 21, reply[at] &- 0x30 < 10 { at += 1 }
                    if at == casStart || at - casStart > 20 { at = count }
                }
                if at + 1 < count, reply[at] == carriageReturn, reply[at + 1] == newline {
                    return at + 2 + length + 2 + 5 == count ? true : nil
                }
            }
        }
        guard let lineEnd = memchr(reply.baseAddress!, 0x0a, count) else { return false }
        let headerLength = reply.baseAddress!.distance(to: UnsafeRawPointer(lineEnd)) + 1
        guard let length = valueLength(UnsafeRawBufferPointer(rebasing: reply[0..<(headerLength - 1)])) else { return false }
        return headerLength + length + 2 + 5 == count ? true : nil
    }

    /// The least length of a retrieval reply as far as it has arrived: the end of the record at
    /// `position` (where an `.incomplete` parse stopped, its `VALUE` line whole) plus `END`.
    /// 0 when that line has not arrived or is not a `VALUE` line. Lets a receiver size its
    /// buffer once for a large value instead of growing it as the bytes come.
    public static func declaredLength(_ bytes: UnsafeRawBufferPointer, recordAt position: Int) -> Int {
        guard position < bytes.count, let lineEnd = findNewline(bytes, from: position, to: min(bytes.count, position + 8192)) else { return 0 }
        let line = UnsafeRawBufferPointer(rebasing: bytes[position..<lineEnd])
        guard startsWith(line, "VALUE "), let length = valueLength(line) else { return 0 }
        return lineEnd + 1 + length + 2 + 5
    }

    /// Meta replies: `VA <size> <flags>*` + data, or one line (HD, NS, EX, NF, EN, MN, ME …,
    /// errors). With `untilNoop`, replies are read up to and including `MN`.
    static func parseMeta(_ bytes: UnsafeRawBufferPointer, untilNoop: Bool, ownItems: Bool = false) -> Result {
        var position = 0
        var sawError = false
        while true {
            guard let lineEnd = findNewline(bytes, from: position, to: bytes.count) else {
                return bytes.count - position > 8192 ? .invalid : .incomplete
            }
            let line = UnsafeRawBufferPointer(rebasing: bytes[position..<lineEnd])
            var next = lineEnd + 1
            if startsWith(line, "VA ") {
                let end = line.count > 0 && line[line.count - 1] == carriageReturn ? line.count - 1 : line.count
                var sizeEnd = 3
                while sizeEnd < end, line[sizeEnd] != space { sizeEnd += 1 }
                guard let size = MemcacheRequestParser.number(line, 3, sizeEnd, maxDigits: 10), size <= UInt64(maxValueLength) else { return .invalid }
                next += Int(size) + 2
                if bytes.count < next { return .incomplete }
            } else if isErrorLine(line) {
                sawError = true
                if !untilNoop { return .reply(length: next, isError: true) }
                // A bare ERROR (an unknown command) in Tern's own quiet read: a server without
                // meta commands (memcached before 1.6), which answers every line so and never
                // `MN`. Waited for, each read lasted the pool's timeout (warm-up sweep 30). (In a
                // client's batch it stays part of the reply: an older 1.6 runs a refused `ms`
                // line's data as a command, and the batch still ends at `MN`.)
                if ownItems, line.count == 5 || (line.count == 6 && line[5] == carriageReturn), startsWith(line, "ERROR") { return .invalid }
            } else if !isMetaStatus(line) {
                return .invalid
            }
            if !untilNoop || startsWith(line, "MN") { return .reply(length: next, isError: sawError) }
            position = next
        }
    }

    /// The `<bytes>` field of a `VALUE <key> <flags> <bytes> [<cas>]` line.
    public static func valueLength(_ line: UnsafeRawBufferPointer) -> Int? {
        let end = line.count > 0 && line[line.count - 1] == carriageReturn ? line.count - 1 : line.count
        // `VALUE <key> <flags> <bytes> [<cas>]` as memcached writes it (one space apart): the key,
        // up to 250 bytes, is skipped with one memchr, and only the short numeric fields are
        // tokenized. Anything else takes the general tokenizer below.
        if end > 7, line[5] == space, line[6] != space, let base = line.baseAddress,
           let found = memchr(base + 7, Int32(space), end - 7) {
            let keyEnd = base.distance(to: UnsafeRawPointer(found))
            // `<flags> <bytes>` to the end of the line, one space apart, as memcached writes it
            // for a get: read without tokenizing. Anything else (a cas, doubled spaces) is
            // tokenized below, which answers the same for this form.
            let flagsEnd = MemcacheRequestParser.nextSpace(line, keyEnd + 1, end)
            if flagsEnd > keyEnd + 1, let value = MemcacheRequestParser.number(line, flagsEnd + 1, end, maxDigits: 10) {
                return value <= UInt64(maxValueLength) ? Int(value) : nil
            }
            let rest = MemcacheRequestParser.tokenize(line, from: keyEnd, to: end, maxTokens: 3)
            guard rest.count == 2 || rest.count == 3,
                  let value = MemcacheRequestParser.number(line, rest[start: 1], rest[end: 1], maxDigits: 10),
                  value <= UInt64(maxValueLength) else { return nil }
            return Int(value)
        }
        let tokens = MemcacheRequestParser.tokenize(line, from: 0, to: end, maxTokens: 5)
        guard tokens.count == 4 || tokens.count == 5,
              let value = MemcacheRequestParser.number(line, tokens[start: 3], tokens[end: 3], maxDigits: 10),
              value <= UInt64(maxValueLength) else { return nil }
        return Int(value)
    }

    /// The key of a `VALUE` line (the bytes between the first and second space).
    public static func valueKey(_ line: UnsafeRawBufferPointer) -> Range<Int> {
        var end = 6
        while end < line.count, line[end] != space { end += 1 }
        return 6..<end
    }

    /// The replies of storage, delete, arithmetic, touch, flush_all, verbosity and version.
    static func isLineReply(_ line: UnsafeRawBufferPointer) -> Bool {
        guard let first = line.first else { return false }
        switch first {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return true
        case UInt8(ascii: "S"): return startsWith(line, "STORED")
        case UInt8(ascii: "N"): return startsWith(line, "NOT_STORED") || startsWith(line, "NOT_FOUND")
        case UInt8(ascii: "E"): return startsWith(line, "EXISTS")
        case UInt8(ascii: "D"): return startsWith(line, "DELETED")
        case UInt8(ascii: "T"): return startsWith(line, "TOUCHED")
        case UInt8(ascii: "O"): return startsWith(line, "OK")
        case UInt8(ascii: "V"): return startsWith(line, "VERSION ")
        default: return false
        }
    }

    /// The status codes of meta replies other than `VA`.
    static func isMetaStatus(_ line: UnsafeRawBufferPointer) -> Bool {
        guard line.count >= 2, line.count == 2 || line[2] == space || line[2] == carriageReturn else { return false }
        switch (line[0], line[1]) {
        case (UInt8(ascii: "H"), UInt8(ascii: "D")), (UInt8(ascii: "N"), UInt8(ascii: "S")), (UInt8(ascii: "E"), UInt8(ascii: "X")),
             (UInt8(ascii: "N"), UInt8(ascii: "F")), (UInt8(ascii: "E"), UInt8(ascii: "N")), (UInt8(ascii: "M"), UInt8(ascii: "N")),
             (UInt8(ascii: "M"), UInt8(ascii: "E")):
            return true
        default:
            return false
        }
    }

    static func isErrorLine(_ line: UnsafeRawBufferPointer) -> Bool {
        startsWith(line, "ERROR") || startsWith(line, "CLIENT_ERROR") || startsWith(line, "SERVER_ERROR")
    }

    @inline(__always)
    static func startsWith(_ line: UnsafeRawBufferPointer, _ literal: StaticString) -> Bool {
        let count = literal.utf8CodeUnitCount
        guard line.count >= count else { return false }
        let pointer = literal.utf8Start
        for i in 0..<count where line[i] != pointer[i] { return false }
        return true
    }

    /// Calls `body(keyRange, recordRange)` for each `VALUE` record of a complete retrieval reply.
    public static func forEachValue(_ bytes: UnsafeRawBufferPointer, _ body: (Range<Int>, Range<Int>) -> Void) {
        var position = 0
        while let lineEnd = findNewline(bytes, from: position, to: bytes.count) {
            let line = UnsafeRawBufferPointer(rebasing: bytes[position..<lineEnd])
            guard startsWith(line, "VALUE "), let length = valueLength(line) else { return }
            let key = valueKey(line)
            let recordEnd = lineEnd + 1 + length + 2
            guard recordEnd <= bytes.count else { return }
            body((position + key.lowerBound)..<(position + key.upperBound), position..<recordEnd)
            position = recordEnd
        }
    }
}
