// Skips one backend reply without holding it: for a reply larger than a client may receive.
//
// A reply is framed by `MemcacheReplyParser` / `RespReplyParser` only once it is whole in the
// connection's input buffer. A reply that grows past what its client may be sent
// (`client_output_limit`) is not buffered further: its request fails, and the skipper walks
// the rest of the reply as bytes arrive, keeping only a count of data bytes still to drop and,
// for RESP, the elements still to come at each array depth. The connection stays in step with
// its other requests, which belong to other clients.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public struct ReplySkipper: Sendable {
    public enum Grammar: Sendable, Equatable {
        case memcache(MemcacheFraming)
        case resp
    }

    public enum Progress: Sendable, Equatable {
        /// Every byte given was part of the reply; more is to come.
        case needMore
        /// The reply ended after this many of the bytes given.
        case finished(Int)
        /// The bytes are not a reply of that grammar: the connection cannot be trusted.
        case invalid
    }

    let grammar: Grammar
    /// Data bytes (a value block or bulk string and its CRLF) still to drop.
    var dataRemaining = 0
    /// RESP: elements still to come at each open depth (the root counts as one element).
    var remaining: [Int] = [1]
    /// Meta until noop: seen `MN`.
    var done = false

    /// The longest header line accepted while skipping.
    static let maxLine = 8192

    public init(_ grammar: Grammar) { self.grammar = grammar }

    /// Walks `bytes`, which continue the reply from where the last call stopped. Returns how far
    /// the caller may drop: all of `bytes` on `.needMore` except an incomplete line at the end,
    /// which is kept in `consumed`'s complement and offered again with more bytes.
    public mutating func skip(_ bytes: UnsafeRawBufferPointer, consumed: inout Int) -> Progress {
        var position = 0
        defer { consumed = position }
        while true {
            if dataRemaining > 0 {
                let count = min(dataRemaining, bytes.count - position)
                dataRemaining -= count
                position += count
                if dataRemaining > 0 { return .needMore }
                if case .resp = grammar, elementDone() { return .finished(position) }
                if case .memcache(let framing) = grammar, framing == .meta { return .finished(position) }
                continue
            }
            guard position < bytes.count else { return .needMore }
            guard let lineEnd = findNewline(bytes, from: position, to: bytes.count) else {
                return bytes.count - position > Self.maxLine ? .invalid : .needMore
            }
            let line = UnsafeRawBufferPointer(rebasing: bytes[position..<lineEnd])
            let withNewline = UnsafeRawBufferPointer(rebasing: bytes[position...lineEnd])
            position = lineEnd + 1
            switch grammar {
            case .resp:
                switch step(resp: withNewline) {
                case .some(true): return .finished(position)
                case .some(false): continue
                case .none: return .invalid
                }
            case .memcache(let framing):
                switch step(memcache: line, framing: framing) {
                case .some(true): return .finished(position)
                case .some(false): continue
                case .none: return .invalid
                }
            }
        }
    }

    /// One memcached line: true when the reply ended with it, nil when it is not a reply line.
    mutating func step(memcache line: UnsafeRawBufferPointer, framing: MemcacheFraming) -> Bool? {
        let isValue = MemcacheReplyParser.startsWith(line, framing == .retrieval ? "VALUE " : "VA ")
        if isValue {
            let length: Int?
            if framing == .retrieval {
                length = MemcacheReplyParser.valueLength(line)
            } else {
                let end = line.count > 0 && line[line.count - 1] == carriageReturn ? line.count - 1 : line.count
                var sizeEnd = 3
                while sizeEnd < end, line[sizeEnd] != space { sizeEnd += 1 }
                length = MemcacheRequestParser.number(line, 3, sizeEnd, maxDigits: 10).map { Int($0) }
            }
            guard let length, framing != .line, framing != .stats else { return nil }
            dataRemaining = length + 2
            return false
        }
        switch framing {
        case .retrieval, .stats:
            if MemcacheReplyParser.startsWith(line, "END") || MemcacheReplyParser.isErrorLine(line) { return true }
            return framing == .stats && MemcacheReplyParser.startsWith(line, "STAT ") ? false : nil
        case .line, .meta:
            return true
        case .metaUntilNoop, .metaItemsUntilNoop:
            return MemcacheReplyParser.startsWith(line, "MN")
        }
    }

    /// One RESP header line, with its CRLF: true when the whole reply has been walked, nil when
    /// invalid.
    mutating func step(resp line: UnsafeRawBufferPointer) -> Bool? {
        guard let type = line.first, line.count >= 3, line[line.count - 2] == carriageReturn else { return nil }
        switch type {
        case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: ":"):
            return elementDone()
        case UInt8(ascii: "$"), UInt8(ascii: "*"):
            guard case let .value(value, _) = RespRequestParser.header(line, at: 0, maxDigits: 11) else { return nil }
            if type == UInt8(ascii: "$") {
                if value < 0 { return elementDone() }
                dataRemaining = value + 2
                return false
            }
            let finished = elementDone()
            if value > 0 {
                guard remaining.count < 64 else { return nil }
                remaining.append(value)
                return false
            }
            return finished
        default:
            return nil
        }
    }

    /// One element of the innermost open array is complete; closes finished arrays. True when
    /// the root reply is complete.
    mutating func elementDone() -> Bool {
        remaining[remaining.count - 1] -= 1
        while remaining.count > 1, remaining[remaining.count - 1] == 0 {
            // The array itself was counted in its parent when its header was read.
            remaining.removeLast()
        }
        return remaining.count == 1 && remaining[0] == 0
    }
}
