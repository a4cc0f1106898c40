// RESP2, both directions, as pure functions over bytes (no sockets, clocks or globals).
//
// Requests: multibulk arrays (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) and inline commands
// (`GET k\r\n`), possibly cut anywhere. Every length is checked against a limit before the
// caller would allocate for it; a framing error asks for the connection to be closed, because
// nothing after it can be trusted.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public struct RespLimits: Sendable {
    /// Largest bulk string in a request (Redis's proto-max-bulk-len).
    public var maxBulkLength = 512 << 20
    /// Most elements in one request array.
    public var maxArguments = 1 << 20
    /// Longest inline command line (Redis: 64 KiB).
    public var maxInlineLength = 64 << 10
    /// Deepest nesting of arrays accepted in a backend reply.
    public var maxReplyDepth = 64
    /// Largest whole request (all its bulk strings and headers), checked from the declared
    /// lengths before the bytes are buffered: the per-client query cap.
    public var maxRequestLength = 1 << 30
    /// Before AUTH: Redis's caps for unauthenticated clients (10 arguments, 16 KiB bulks),
    /// with Redis's error texts.
    public var isUnauthenticated = false
    public init(maxBulkLength: Int = 512 << 20, maxRequestLength: Int = 1 << 30) {
        self.maxBulkLength = maxBulkLength
        self.maxRequestLength = maxRequestLength
    }

    /// The caps Redis applies to a client that has not authenticated yet.
    public var unauthenticated: RespLimits {
        var limits = self
        limits.maxArguments = 10
        limits.maxBulkLength = min(maxBulkLength, 16 << 10)
        limits.isUnauthenticated = true
        return limits
    }
}

/// The arguments of one request: byte ranges into the frame (multibulk) or into the
/// list's own storage (inline commands, whose quoting has been undone). Reused across requests,
/// so steady-state parsing allocates nothing.
public final class RespArguments {
    /// One argument: where it starts and how long it is.
    public struct Span {
        public var start: Int
        public var length: Int
    }

    /// Only the first `count` spans are the current request's. Manually managed storage: the
    /// parser stores a span per argument without an array's uniqueness check, and resetting is a
    /// store. Allocated with the first request (an idle connection's list takes no memory), it
    /// grows (doubling) with the largest request seen and is freed with the list.
    @usableFromInline var spans: UnsafeMutablePointer<Span>?
    @usableFromInline var capacity = 0
    /// Decoded bytes of an inline command.
    public private(set) var inlineBytes: [UInt8] = []
    public private(set) var isInline = false
    public private(set) var count = 0

    public init() {}

    deinit { spans?.deallocate() }

    func reset(inline: Bool) {
        count = 0
        if !inlineBytes.isEmpty { inlineBytes.removeAll(keepingCapacity: inlineBytes.count <= Self.keptCapacity) }
        isInline = inline
    }

    /// A new list of these arguments without the first `count` (COMMAND GETKEYS reads the
    /// command it names): spans into the same frame, or a copy of the decoded inline bytes.
    public func dropping(first count: Int) -> RespArguments {
        let rest = RespArguments()
        rest.reset(inline: isInline)
        rest.inlineBytes = inlineBytes
        for index in min(count, self.count)..<self.count {
            let span = span(index)
            rest.add(start: span.start, length: span.length)
        }
        return rest
    }

    /// Gives back the capacity of one huge request (an MGET of a million keys), so that an idle
    /// connection does not keep it. Called once the request has been routed.
    @inline(__always)
    public func shrink() {
        guard capacity > Self.keptCapacity else { return }
        spans?.deallocate()
        spans = nil
        capacity = 0
        count = 0
        inlineBytes = []
    }

    /// Spans (and inline bytes) kept from one request to the next; larger ones are given back.
    public static let keptCapacity = 4096

    @inline(__always)
    func add(start: Int, length: Int) {
        if count == capacity { grow() }
        spans.unsafelyUnwrapped[count] = Span(start: start, length: length)
        count += 1
    }

    private func grow() {
        capacity = max(16, capacity * 2)
        spans = moved(spans, count: count, toCapacity: capacity)
    }

    /// Where argument `index` is: in the frame (multibulk) or in `inlineBytes` (inline).
    @inlinable
    public func span(_ index: Int) -> Span {
        precondition(index >= 0 && index < count, "argument \(index) of \(count)")
        return spans.unsafelyUnwrapped[index]
    }

    /// Where argument `index` of a multibulk request starts in its frame with its header: the
    /// bytes from there to `encodedEnd(index)` are `$<length>\r\n<argument>\r\n`, exactly what
    /// `RespEncoder.bulk` would write for it, so a part of a split request can copy runs of
    /// them. The parser reads only canonical lengths (`RespRequestParser.header`: no sign, no
    /// leading zero), so the header's size follows from the length. Not for inline requests,
    /// whose arguments are decoded copies.
    @inlinable
    public func encodedStart(_ index: Int) -> Int {
        precondition(!isInline, "an inline request has no encoded arguments")
        let span = span(index)
        var digits = 1
        var rest = span.length
        while rest >= 10 {
            rest /= 10
            digits += 1
        }
        return span.start - digits - 3
    }

    /// Where argument `index` of a multibulk request ends in its frame, its closing CRLF
    /// included (see `encodedStart`).
    @inlinable
    public func encodedEnd(_ index: Int) -> Int {
        let span = span(index)
        return span.start + span.length + 2
    }

    func addInline(_ bytes: UnsafeRawBufferPointer) {
        add(start: inlineBytes.count, length: bytes.count)
        inlineBytes.append(contentsOf: bytes)
    }

    func appendInlineByte(_ byte: UInt8) { inlineBytes.append(byte) }
    func beginInlineArgument() -> Int { inlineBytes.count }
    func endInlineArgument(from start: Int) {
        add(start: start, length: inlineBytes.count - start)
    }

    /// Argument `index` as bytes: from `frame` for multibulk requests, from the decoded copy
    /// for inline ones.
    @inlinable
    public func withArgument<R>(_ index: Int, in frame: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        let span = span(index)
        if isInline {
            return inlineBytes.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[span.start..<(span.start + span.length)])) }
        }
        return body(UnsafeRawBufferPointer(rebasing: frame[span.start..<(span.start + span.length)]))
    }

    public func argumentString(_ index: Int, in frame: UnsafeRawBufferPointer) -> String {
        withArgument(index, in: frame) { String(decoding: $0, as: UTF8.self) }
    }

    /// Whether argument `index` equals `word`, ignoring ASCII case.
    public func argument(_ index: Int, in frame: UnsafeRawBufferPointer, equals word: StaticString) -> Bool {
        withArgument(index, in: frame) { bytes in
            guard bytes.count == word.utf8CodeUnitCount else { return false }
            let pointer = word.utf8Start
            for i in 0..<bytes.count where asciiLower(bytes[i]) != asciiLower(pointer[i]) { return false }
            return true
        }
    }
}

@inlinable
public func asciiLower(_ byte: UInt8) -> UInt8 { byte >= 0x41 && byte <= 0x5a ? byte | 0x20 : byte }

/// Manually managed storage grown: a new allocation of `capacity` elements holding the first
/// `count` of `storage`, which is freed. The caller owns both, and `count` <= `capacity`.
public func moved<Element>(_ storage: UnsafeMutablePointer<Element>?, count: Int, toCapacity capacity: Int) -> UnsafeMutablePointer<Element> {
    let larger = UnsafeMutablePointer<Element>.allocate(capacity: capacity)
    if let storage {
        larger.moveInitialize(from: storage, count: count)
        storage.deallocate()
    }
    return larger
}

public enum RespParseResult: Sendable, Equatable {
    case incomplete
    /// A request of `length` bytes; its arguments are in the caller's `RespArguments`.
    case request(length: Int)
    /// An empty inline line: skip it, nothing to answer.
    case empty(length: Int)
    /// A framing error: answer `-ERR Protocol error: <message>` and close the connection.
    case protocolError(String)
}

public enum RespRequestParser {
    public static func parse(_ bytes: UnsafeRawBufferPointer, limits: RespLimits, into arguments: RespArguments) -> RespParseResult {
        guard bytes.count > 0 else { return .incomplete }
        if bytes[0] == UInt8(ascii: "*") { return parseMultibulk(bytes, limits: limits, into: arguments) }
        return parseInline(bytes, limits: limits, into: arguments)
    }

    /// The arguments of a RESP multibulk request, as far as its bytes go and at most `limit` of
    /// them, each handed to `body` in order. Returns the number its header declares, or nil when
    /// `request` does not start with a multibulk header. For reports (the slow log), not for
    /// routing: a cut or invalid argument ends the walk quietly.
    public static func forEachArgument(_ request: UnsafeRawBufferPointer, limit: Int, _ body: (UnsafeRawBufferPointer) -> Void) -> Int? {
        guard request.first == UInt8(ascii: "*"), case let .value(count, first) = header(request, at: 0, maxDigits: 18) else { return nil }
        var position = first
        var given = 0
        while given < min(count, limit), position < request.count, request[position] == UInt8(ascii: "$"),
              case let .value(length, next) = header(request, at: position, maxDigits: 18), length >= 0, next + length <= request.count {
            body(UnsafeRawBufferPointer(rebasing: request[next..<(next + length)]))
            given += 1
            position = next + length + 2
        }
        return count
    }

    /// Reads `<prefix><digits>\r\n` at `position`; returns the number and the position after the
    /// line, `nil` when more bytes are needed, or an error.
    enum Header { case value(Int, Int), incomplete, invalid }

    ///
    /// Only canonical integers are read, as Redis's `string2ll` reads them: `0`, or an optional
    /// `-` and digits without a leading zero. Redis closes a connection on `*02`, `$01` or `$-0`,
    /// so such bytes must never reach a shared backend connection.
    static func header(_ bytes: UnsafeRawBufferPointer, at position: Int, maxDigits: Int = 19) -> Header {
        var index = position + 1
        var negative = false
        if index < bytes.count, bytes[index] == UInt8(ascii: "-") { negative = true; index += 1 }
        var value = 0
        var digits = 0
        while index < bytes.count {
            let byte = bytes[index]
            if byte == 0x0d {
                guard index + 1 < bytes.count else { return .incomplete }
                guard bytes[index + 1] == 0x0a, digits > 0, !(negative && value == 0) else { return .invalid }
                return .value(negative ? -value : value, index + 2)
            }
            let digit = byte &- 0x30
            // A leading zero is refused once a second digit follows it.
            guard digit < 10, digits < maxDigits, digits == 0 || value != 0 else { return .invalid }
            // 19 digits may pass Int.max (`:9999999999999999999` from a backend): refused, not trapped.
            let (times, overflowed) = value.multipliedReportingOverflow(by: 10)
            let (sum, carried) = times.addingReportingOverflow(Int(digit))
            guard !overflowed, !carried else { return .invalid }
            value = sum
            digits += 1
            index += 1
        }
        // A header longer than any valid one will not become valid with more bytes.
        return index - position > maxDigits + 3 ? .invalid : .incomplete
    }

    /// The common header, `<prefix><1–4 digits>\r\n` complete in the buffer, read without the
    /// general loop; nil for anything else (longer, negative, incomplete or invalid), which
    /// `header` then decides. When it answers, it answers what `header` would.
    @inline(__always)
    static func shortHeader(_ bytes: UnsafeRawBufferPointer, at position: Int) -> (value: Int, next: Int)? {
        guard let base = bytes.baseAddress else { return nil }
        // One or two digits (a command name, most keys and small values), without the loop.
        if position &+ 3 < bytes.count {
            let high = base.load(fromByteOffset: position &+ 1, as: UInt8.self) &- 0x30
            let second = base.load(fromByteOffset: position &+ 2, as: UInt8.self)
            if high < 10, second == 0x0d {
                guard base.load(fromByteOffset: position &+ 3, as: UInt8.self) == 0x0a else { return nil }
                return (Int(high), position &+ 4)
            }
            let low = second &- 0x30
            if high &- 1 < 9, low < 10, position &+ 4 < bytes.count,
               base.load(fromByteOffset: position &+ 3, as: UInt8.self) == 0x0d,
               base.load(fromByteOffset: position &+ 4, as: UInt8.self) == 0x0a {
                return (Int(high) &* 10 &+ Int(low), position &+ 5)
            }
        }
        let first = position + 1
        // A leading zero (`*0` alone excepted) is for `header` to judge.
        guard first + 1 < bytes.count, base.load(fromByteOffset: first, as: UInt8.self) != 0x30
                || base.load(fromByteOffset: first + 1, as: UInt8.self) == 0x0d else { return nil }
        let end = min(bytes.count, first + 4)
        var index = first
        var value = 0
        while index < end {
            let digit = base.load(fromByteOffset: index, as: UInt8.self) &- 0x30
            if digit >= 10 { break }
            value = value &* 10 &+ Int(digit)
            index &+= 1
        }
        guard index > first, index + 1 < bytes.count,
              base.load(fromByteOffset: index, as: UInt8.self) == 0x0d,
              base.load(fromByteOffset: index + 1, as: UInt8.self) == 0x0a else { return nil }
        return (value, index + 2)
    }

    /// `header`, reading the common forms (`shortHeader`'s, and a nil's `-1`) without its loop.
    @inline(__always)
    static func quickHeader(_ bytes: UnsafeRawBufferPointer, at position: Int, maxDigits: Int) -> Header {
        if let short = shortHeader(bytes, at: position) { return .value(short.value, short.next) }
        if position + 4 < bytes.count, let base = bytes.baseAddress,
           base.load(fromByteOffset: position + 1, as: UInt8.self) == UInt8(ascii: "-"),
           base.load(fromByteOffset: position + 2, as: UInt8.self) == UInt8(ascii: "1"),
           base.load(fromByteOffset: position + 3, as: UInt8.self) == 0x0d,
           base.load(fromByteOffset: position + 4, as: UInt8.self) == 0x0a {
            return .value(-1, position + 5)
        }
        return header(bytes, at: position, maxDigits: maxDigits)
    }

    static func parseMultibulk(_ bytes: UnsafeRawBufferPointer, limits: RespLimits, into arguments: RespArguments) -> RespParseResult {
        let count: Int
        var position: Int
        switch quickHeader(bytes, at: 0, maxDigits: 10) {
        case .incomplete: return .incomplete
        case .invalid: return .protocolError("invalid multibulk length")
        case let .value(value, next):
            guard value <= limits.maxArguments else {
                return .protocolError(limits.isUnauthenticated ? "unauthenticated multibulk length" : "invalid multibulk length")
            }
            count = value
            position = next
        }
        arguments.reset(inline: false)
        if count <= 0 { return .empty(length: position) }
        for _ in 0..<count {
            guard position < bytes.count else { return .incomplete }
            guard bytes[position] == UInt8(ascii: "$") else {
                return .protocolError("expected '$', got '\(printable(bytes[position]))'")
            }
            let length: Int
            let next: Int
            switch quickHeader(bytes, at: position, maxDigits: 10) {
            case .incomplete: return .incomplete
            case .invalid: return .protocolError("invalid bulk length")
            case let .value(value, after): (length, next) = (value, after)
            }
            guard length >= 0 else { return .protocolError("invalid bulk length") }
            guard length <= limits.maxBulkLength else {
                return .protocolError(limits.isUnauthenticated ? "unauthenticated bulk length" : "invalid bulk length")
            }
            // The query cap, from the declared length: nothing of this size is buffered.
            guard next + length + 2 <= limits.maxRequestLength else { return .protocolError("request exceeds the client query limit") }
            guard next + length + 2 <= bytes.count else { return .incomplete }
            guard bytes[next + length] == 0x0d, bytes[next + length + 1] == 0x0a else {
                return .protocolError("bulk string not terminated by CRLF")
            }
            arguments.add(start: next, length: length)
            position = next + length + 2
        }
        return .request(length: position)
    }

    /// For a multibulk request still arriving, the bytes it will take at least, from the lengths
    /// declared so far: up to the end of the last bulk whose header has come (0 when none has).
    /// Only for bytes `parse` has answered `.incomplete` for, so the lengths read here have
    /// passed its limits. Lets a client buffer be sized once for a large argument, as Redis
    /// sizes its query buffer for one. At most `maxHeaders` headers are read (0 past them), so
    /// calling this on every read of a request with many small arguments costs nothing.
    public static func declaredLength(_ bytes: UnsafeRawBufferPointer, maxHeaders: Int = 16) -> Int {
        guard bytes.count > 0, bytes[0] == UInt8(ascii: "*"),
              case let .value(count, first) = header(bytes, at: 0, maxDigits: 10), count <= maxHeaders else { return 0 }
        var position = first
        for _ in 0..<max(count, 0) {
            guard position < bytes.count, bytes[position] == UInt8(ascii: "$"),
                  case let .value(length, next) = header(bytes, at: position, maxDigits: 10), length >= 0 else { break }
            position = next + length + 2
            if position > bytes.count { break }
        }
        return position
    }

    static func printable(_ byte: UInt8) -> String {
        byte >= 0x20 && byte < 0x7f ? String(UnicodeScalar(byte)) : "\\x" + String(byte, radix: 16)
    }

    /// An inline command, split as Redis's `sdssplitargs` splits it: arguments separated by
    /// blanks, and within an argument, anywhere in it, a section in double quotes (with escapes:
    /// `\n`, `\r`, `\t`, `\b`, `\a`, `\xHH`, and any other character after a backslash as itself)
    /// or in single quotes (`\'` for a quote); a closing quote must be followed by a blank or the
    /// end of the line, and an unclosed quote is an error (`k"1 2"` is `k1 2`; `x"y` is an
    /// error, as for Redis; Tern took a quote as a quote only at an argument's start). A NUL
    /// byte in the line is refused: Redis reads the line as a C string and never answers one.
    static func parseInline(_ bytes: UnsafeRawBufferPointer, limits: RespLimits, into arguments: RespArguments) -> RespParseResult {
        let scan = min(bytes.count, limits.maxInlineLength)
        guard let base = bytes.baseAddress, let found = memchr(base, 0x0a, scan) else {
            return bytes.count >= limits.maxInlineLength ? .protocolError("too big inline request") : .incomplete
        }
        let newlineAt = base.distance(to: UnsafeRawPointer(found))
        let end = newlineAt > 0 && bytes[newlineAt - 1] == 0x0d ? newlineAt - 1 : newlineAt
        if end > 0, memchr(base, 0, end) != nil { return .protocolError("invalid NUL byte in inline request") }
        arguments.reset(inline: true)
        // The byte at `index`, 0 past the line's end (Redis's string terminator).
        @inline(__always) func at(_ index: Int) -> UInt8 { index < end ? bytes[index] : 0 }
        var position = 0
        while true {
            while position < end, isBlank(bytes[position]) { position += 1 }
            if position >= end { break }
            let start = arguments.beginInlineArgument()
            // The quote whose section is open, if any.
            var quote: UInt8 = 0
            var done = false
            while !done {
                let byte = at(position)
                if quote == UInt8(ascii: "\""), byte == UInt8(ascii: "\\"), at(position + 1) == UInt8(ascii: "x"),
                   let high = hexValue(at(position + 2)), let low = hexValue(at(position + 3)) {
                    arguments.appendInlineByte(high << 4 | low)
                    position += 3
                } else if quote == UInt8(ascii: "\""), byte == UInt8(ascii: "\\"), at(position + 1) != 0 {
                    position += 1
                    switch at(position) {
                    case UInt8(ascii: "n"): arguments.appendInlineByte(0x0a)
                    case UInt8(ascii: "r"): arguments.appendInlineByte(0x0d)
                    case UInt8(ascii: "t"): arguments.appendInlineByte(0x09)
                    case UInt8(ascii: "b"): arguments.appendInlineByte(0x08)
                    case UInt8(ascii: "a"): arguments.appendInlineByte(0x07)
                    default: arguments.appendInlineByte(at(position))
                    }
                } else if quote == UInt8(ascii: "'"), byte == UInt8(ascii: "\\"), at(position + 1) == UInt8(ascii: "'") {
                    position += 1
                    arguments.appendInlineByte(UInt8(ascii: "'"))
                } else if quote != 0 {
                    if byte == quote {
                        // A closing quote must be followed by a blank or the end.
                        guard at(position + 1) == 0 || isBlank(at(position + 1)) else { return .protocolError("unbalanced quotes in request") }
                        done = true
                    } else if byte == 0 {
                        return .protocolError("unbalanced quotes in request")
                    } else {
                        arguments.appendInlineByte(byte)
                    }
                } else {
                    switch byte {
                    case 0x20, 0x0a, 0x0d, 0x09, 0: done = true
                    case UInt8(ascii: "\""), UInt8(ascii: "'"): quote = byte
                    default: arguments.appendInlineByte(byte)
                    }
                }
                if at(position) != 0 { position += 1 }
            }
            arguments.endInlineArgument(from: start)
        }
        if arguments.count == 0 { return .empty(length: newlineAt + 1) }
        return .request(length: newlineAt + 1)
    }

    /// C's `isspace`, which Redis skips between inline arguments.
    @inline(__always) static func isBlank(_ byte: UInt8) -> Bool { byte == 0x20 || (byte >= 0x09 && byte <= 0x0d) }


    static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case 0x30...0x39: return byte - 0x30
        case 0x61...0x66: return byte - 0x61 + 10
        case 0x41...0x46: return byte - 0x41 + 10
        default: return nil
        }
    }
}

/// Frames RESP2 replies from a backend.
public enum RespReplyParser {
    /// The whole length (header, data, CRLF) of a bulk string reply whose header `$<n>\r\n`
    /// has arrived, or nil when `bytes` does not start with one (or it is not complete yet).
    public static func bulkFrameLength(_ bytes: UnsafeRawBufferPointer) -> Int? {
        guard bytes.count >= 4, bytes[0] == UInt8(ascii: "$"),
              case let .value(length, next) = RespRequestParser.quickHeader(bytes, at: 0, maxDigits: 18), length >= 0 else { return nil }
        return next + length + 2
    }

    /// For a reply still arriving, the bytes it will take at least, from the lengths declared
    /// so far: a bulk string's whole length, or for a flat array (bulk strings, nils, integers,
    /// simple strings and errors) the end of the last bulk whose header has come; 0 when
    /// unknown. At most `maxElements` elements are read, so calling this on every read costs
    /// little. Lets a backend connection's buffer be sized once for a large reply.
    public static func declaredLength(_ bytes: UnsafeRawBufferPointer, maxElements: Int = 64) -> Int {
        guard let first = bytes.first else { return 0 }
        if first == UInt8(ascii: "$") { return bulkFrameLength(bytes) ?? 0 }
        guard first == UInt8(ascii: "*"), case let .value(count, start) = RespRequestParser.header(bytes, at: 0, maxDigits: 10),
              count <= maxElements else { return 0 }
        var position = start
        for _ in 0..<max(count, 0) {
            guard position < bytes.count else { break }
            switch bytes[position] {
            case UInt8(ascii: "$"):
                guard case let .value(length, next) = RespRequestParser.header(bytes, at: position, maxDigits: 18) else { return position }
                position = length < 0 ? next : next + length + 2
                if position > bytes.count { return position }
            case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: ":"):
                guard let base = bytes.baseAddress,
                      let newline = memchr(base + position, 0x0a, bytes.count - position) else { return position }
                position = base.distance(to: UnsafeRawPointer(newline)) + 1
            default:
                return position
            }
        }
        return position
    }

    /// `.reply`'s `isError`: a top-level `-ERR …`.
    public typealias Result = ReplyFraming

    /// The extent of the first complete reply. Arrays are walked without recursion; `maxDepth`
    /// bounds their nesting.
    public static func parse(_ bytes: UnsafeRawBufferPointer, maxDepth: Int = 64, maxBulkLength: Int = 1 << 30) -> Result {
        guard bytes.count > 0 else { return .incomplete }
        let isError = bytes[0] == UInt8(ascii: "-")
        // The common replies (a line or a bulk string) are framed without the walk's stack, by
        // the steps the walk takes for them.
        switch bytes[0] {
        case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: ":"):
            guard let end = lineEnd(bytes, at: 0) else { return .incomplete }
            return .reply(length: end, isError: isError)
        case UInt8(ascii: "$"):
            return bulkEnd(bytes, at: 0, maxBulkLength: maxBulkLength)
        default:
            break
        }
        return withUnsafeTemporaryAllocation(of: Int.self, capacity: maxDepth + 1) { stack -> Result in
            // stack[d] = elements still to read at depth d.
            var depth = 0
            stack[0] = 1
            var position = 0
            while true {
                guard position < bytes.count else { return .incomplete }
                let type = bytes[position]
                switch type {
                case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: ":"):
                    guard let end = lineEnd(bytes, at: position) else { return .incomplete }
                    position = end
                    stack[depth] -= 1
                case UInt8(ascii: "$"):
                    let bulk = bulkEnd(bytes, at: position, maxBulkLength: maxBulkLength)
                    guard case let .reply(end, _) = bulk else { return bulk }
                    position = end
                    stack[depth] -= 1
                case UInt8(ascii: "*"):
                    switch RespRequestParser.quickHeader(bytes, at: position, maxDigits: 11) {
                    case .incomplete: return .incomplete
                    case .invalid: return .invalid
                    case let .value(count, next):
                        position = next
                        stack[depth] -= 1
                        if count > 0 {
                            guard depth < maxDepth else { return .invalid }
                            depth += 1
                            stack[depth] = count
                        }
                    }
                default:
                    return .invalid
                }
                while depth > 0, stack[depth] == 0 { depth -= 1 }
                if depth == 0, stack[0] == 0 { return .reply(length: position, isError: isError) }
            }
        }
    }

    /// The end (past its `\n`) of the line starting at `position`, nil until it has arrived.
    @inline(__always)
    static func lineEnd(_ bytes: UnsafeRawBufferPointer, at position: Int) -> Int? {
        guard let found = findNewlineInShortLine(bytes, from: position, to: bytes.count) else { return nil }
        return found + 1
    }

    /// The bulk string whose `$` is at `position`: `.reply` with the offset its frame ends at (a
    /// nil's right after its header), `.incomplete` or `.invalid`.
    @inline(__always)
    static func bulkEnd(_ bytes: UnsafeRawBufferPointer, at position: Int, maxBulkLength: Int) -> Result {
        switch RespRequestParser.quickHeader(bytes, at: position, maxDigits: 11) {
        case .incomplete: return .incomplete
        case .invalid: return .invalid
        case let .value(length, next):
            if length < 0 { return .reply(length: next, isError: false) }
            guard length <= maxBulkLength else { return .invalid }
            guard next + length + 2 <= bytes.count else { return .incomplete }
            return .reply(length: next + length + 2, isError: false)
        }
    }

    /// Calls `body` with the byte range of each element of a complete array reply.
    public static func forEachElement(_ bytes: UnsafeRawBufferPointer, _ body: (Range<Int>) -> Void) {
        guard bytes.count > 0, bytes[0] == UInt8(ascii: "*"),
              case let .value(count, first) = RespRequestParser.quickHeader(bytes, at: 0, maxDigits: 11) else { return }
        var position = first
        for _ in 0..<max(0, count) {
            let rest = UnsafeRawBufferPointer(rebasing: bytes[position...])
            guard case let .reply(length, _) = parse(rest) else { return }
            body(position..<(position + length))
            position += length
        }
    }

    /// The value of an integer reply (`:12\r\n`).
    public static func integer(_ bytes: UnsafeRawBufferPointer) -> Int? {
        guard bytes.count >= 4, bytes[0] == UInt8(ascii: ":"),
              case let .value(value, _) = RespRequestParser.header(bytes, at: 0) else { return nil }
        return value
    }
}
