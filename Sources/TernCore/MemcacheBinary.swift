// The memcached binary protocol, client side only, as pure functions over bytes.
//
// Binary clients (pylibmc `binary=True`, libmemcached, spymemcached) are served by translating
// each request packet into the meta command that does the same thing, which then takes the
// memcached text path (placement, warm-up, quiet batches, isolation rules) unchanged, and by
// translating that command's meta reply back into a response packet. Backends only ever see
// meta commands Tern wrote itself.
//
//     packet ──► BinaryRequestParser (header checks before anything is buffered)
//            ──► BinaryTranslator.metaRequest (keys in base64 when they are not plain tokens)
//            ──► text path … meta reply ──► BinaryTranslator.response ──► packet

public enum BinaryOpcode: UInt8, Sendable {
    case get = 0x00, set = 0x01, add = 0x02, replace = 0x03, delete = 0x04, increment = 0x05, decrement = 0x06
    case quit = 0x07, flush = 0x08, getQ = 0x09, noop = 0x0a, version = 0x0b, getK = 0x0c, getKQ = 0x0d
    case append = 0x0e, prepend = 0x0f, stat = 0x10, setQ = 0x11, addQ = 0x12, replaceQ = 0x13, deleteQ = 0x14
    case incrementQ = 0x15, decrementQ = 0x16, quitQ = 0x17, flushQ = 0x18, appendQ = 0x19, prependQ = 0x1a
    case touch = 0x1c, gat = 0x1d, gatQ = 0x1e, gatK = 0x23, gatKQ = 0x24
    case saslListMechs = 0x20, saslAuth = 0x21, saslStep = 0x22

    /// Quiet variants answer nothing on success (and the get family nothing on a miss).
    public var isQuiet: Bool {
        switch self {
        case .getQ, .getKQ, .setQ, .addQ, .replaceQ, .deleteQ, .incrementQ, .decrementQ, .quitQ, .flushQ, .appendQ, .prependQ, .gatQ, .gatKQ: return true
        default: return false
        }
    }

    /// The get family's replies carry the key.
    public var returnsKey: Bool { self == .getK || self == .getKQ || self == .gatK || self == .gatKQ }

    /// The operation, quiet or not.
    public var base: BinaryOpcode {
        switch self {
        case .getQ, .getK, .getKQ: return .get
        case .gatQ, .gatK, .gatKQ: return .gat
        case .setQ: return .set
        case .addQ: return .add
        case .replaceQ: return .replace
        case .deleteQ: return .delete
        case .incrementQ: return .increment
        case .decrementQ: return .decrement
        case .quitQ: return .quit
        case .flushQ: return .flush
        case .appendQ: return .append
        case .prependQ: return .prepend
        default: return self
        }
    }
}

public enum BinaryStatus: UInt16, Sendable {
    case success = 0x0000, keyNotFound = 0x0001, keyExists = 0x0002, valueTooLarge = 0x0003, invalidArguments = 0x0004
    case itemNotStored = 0x0005, nonNumeric = 0x0006, authenticationError = 0x0020, unknownCommand = 0x0081
    case outOfMemory = 0x0082, internalError = 0x0084

    /// memcached's texts for the error statuses.
    public var message: StaticString {
        switch self {
        case .success: return ""
        case .keyNotFound: return "Not found"
        case .keyExists: return "Data exists for key."
        case .valueTooLarge: return "Too large."
        case .invalidArguments: return "Invalid arguments"
        case .itemNotStored: return "Not stored."
        case .nonNumeric: return "Non-numeric server-side value for incr or decr"
        case .authenticationError: return "Auth failure."
        case .unknownCommand: return "Unknown command"
        case .outOfMemory: return "Out of memory"
        case .internalError: return "Internal error"
        }
    }
}

/// One request packet's header, read big-endian. Offsets of the body parts are relative to the
/// packet's start.
public struct BinaryRequest: Sendable, Equatable {
    public static let headerLength = 24
    public var opcodeByte: UInt8
    public var opcode: BinaryOpcode? { BinaryOpcode(rawValue: opcodeByte) }
    public var keyLength: Int
    public var extrasLength: Int
    public var bodyLength: Int
    public var opaque: UInt32
    public var cas: UInt64
    public var packetLength: Int { Self.headerLength + bodyLength }
    public var extrasStart: Int { Self.headerLength }
    public var keyStart: Int { Self.headerLength + extrasLength }
    public var valueStart: Int { keyStart + keyLength }
    public var valueLength: Int { bodyLength - extrasLength - keyLength }
}

public enum BinaryParseResult: Sendable, Equatable {
    case incomplete
    /// A whole packet is in the buffer.
    case request(BinaryRequest)
    /// Answer `status` for this packet (its header is readable, its opaque echoed), drop
    /// `consume` bytes now and `skip` more as they arrive.
    case rejected(BinaryRequest, BinaryStatus, consume: Int, skip: Int)
    /// Framing is lost (a packet without the request magic): close the connection.
    case invalid
}

public enum BinaryRequestParser {
    public static let requestMagic: UInt8 = 0x80
    public static let responseMagic: UInt8 = 0x81

    @inline(__always)
    static func read16(_ bytes: UnsafeRawBufferPointer, _ at: Int) -> Int { Int(bytes[at]) << 8 | Int(bytes[at + 1]) }
    @inline(__always)
    static func read32(_ bytes: UnsafeRawBufferPointer, _ at: Int) -> UInt32 {
        UInt32(bytes[at]) << 24 | UInt32(bytes[at + 1]) << 16 | UInt32(bytes[at + 2]) << 8 | UInt32(bytes[at + 3])
    }
    static func read64(_ bytes: UnsafeRawBufferPointer, _ at: Int) -> UInt64 { UInt64(read32(bytes, at)) << 32 | UInt64(read32(bytes, at + 4)) }

    /// The first packet in `bytes`. Lengths are checked against the header and the limits
    /// before the body is waited for: a body that is too large is never buffered.
    public static func parse(_ bytes: UnsafeRawBufferPointer, limits: MemcacheLimits) -> BinaryParseResult {
        guard bytes.count >= BinaryRequest.headerLength else {
            return bytes.count > 0 && bytes[0] != requestMagic ? .invalid : .incomplete
        }
        guard bytes[0] == requestMagic else { return .invalid }
        let request = BinaryRequest(opcodeByte: bytes[1], keyLength: read16(bytes, 2), extrasLength: Int(bytes[4]),
                                    bodyLength: Int(read32(bytes, 8)), opaque: read32(bytes, 12), cas: read64(bytes, 16))
        let header = BinaryRequest.headerLength
        if request.extrasLength + request.keyLength > request.bodyLength {
            // The body length still frames the packet: the error goes back, the body is dropped.
            return .rejected(request, .invalidArguments, consume: min(bytes.count, request.packetLength), skip: max(0, request.packetLength - bytes.count))
        }
        // Keys and values beyond the limits, or extras no command has: refused before the body.
        if request.keyLength > limits.maxKeyLength || request.valueLength > limits.maxItemSize || request.extrasLength > 20 {
            let status: BinaryStatus = request.valueLength > limits.maxItemSize ? .valueTooLarge : .invalidArguments
            return .rejected(request, status, consume: min(bytes.count, request.packetLength), skip: max(0, request.packetLength - bytes.count))
        }
        guard bytes.count >= header + request.bodyLength else { return .incomplete }
        return .request(request)
    }
}

/// A request's key as a meta token: as it is when memcached's text grammar carries it
/// unchanged, else in base64 with the `b` flag (binary keys may hold spaces, newlines, NUL).
public enum BinaryTranslator {
    /// Whether `key` can be a plain text-protocol token. memcached splits a line at spaces and
    /// ends it at a newline (a carriage return before it is dropped, and a NUL cuts it), so a key
    /// without those bytes reaches it unchanged; other control bytes are refused only by
    /// `strict_keys` (`controlBytes: false`), and such keys then travel in base64.
    public static func isPlainToken(_ key: UnsafeRawBufferPointer, controlBytes: Bool = false) -> Bool {
        guard !key.isEmpty else { return false }
        if controlBytes {
            // Four memchr scans (vectorised) beat one byte loop with four compares.
            let base = key.baseAddress!
            return memchr(base, 0x20, key.count) == nil && memchr(base, 0x0a, key.count) == nil
                && memchr(base, 0x0d, key.count) == nil && memchr(base, 0, key.count) == nil
        } else {
            for byte in key where byte <= 0x20 || byte == 0x7f { return false }
        }
        return true
    }

    /// Appends ` <key>` (plain) or ` <base64>` to `line`. Returns whether the `b` flag must
    /// follow (base64), or nil when the base64 form would pass memcached's 250-byte token limit
    /// (keys over 187 bytes holding unusual bytes).
    public static func appendKey(_ key: UnsafeRawBufferPointer, to line: inout [UInt8], controlBytes: Bool = false) -> Bool? {
        line.append(0x20)
        if isPlainToken(key, controlBytes: controlBytes) {
            line.append(contentsOf: key)
            return false
        }
        let encoded = Base64.encode(key)
        guard encoded.count <= 250 else { return nil }
        line.append(contentsOf: encoded)
        return true
    }

    /// Appends a literal's bytes (a `String`'s UTF-8 view would be walked byte by byte).
    static func append(_ literal: StaticString, to line: inout [UInt8]) {
        line.append(contentsOf: UnsafeRawBufferPointer(start: literal.utf8Start, count: literal.utf8CodeUnitCount))
    }

    static func appendNumber<T: BinaryInteger>(_ value: T, to line: inout [UInt8]) {
        // Unsigned values only (lengths, flags, TTLs, CAS, deltas): digits written backwards.
        var remaining = UInt64(truncatingIfNeeded: value)
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)
        withUnsafeMutableBytes(of: &digits) { buffer in
            var index = 20
            repeat {
                index -= 1
                buffer[index] = UInt8(truncatingIfNeeded: remaining % 10) + 0x30
                remaining /= 10
            } while remaining > 0
            line.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[index..<20]))
        }
    }

    /// What a packet becomes: a meta request (written into the caller's line), `flush_all` for
    /// every server, a packet Tern answers itself (noop, version, quit, stat, SASL), or a
    /// status to answer at once.
    public enum Translation: Equatable {
        case meta
        /// `flush_all [delay]`, sent to every server.
        case flush
        case local
        case refuse(BinaryStatus)
    }

    /// Writes the meta request for `request` into `line` (emptied first; the caller reuses one
    /// array, so steady-state translation allocates nothing).
    /// `controlBytes`: keys may hold control bytes as plain tokens (the pool's `strict_keys`
    /// is off, so Tern's text parser and memcached both take them as they are).
    public static func translate(_ request: BinaryRequest, packet: UnsafeRawBufferPointer, into line: inout [UInt8],
                                 controlBytes: Bool = false) -> Translation {
        line.removeAll(keepingCapacity: true)
        guard let opcode = request.opcode else { return .refuse(.unknownCommand) }
        let key = UnsafeRawBufferPointer(rebasing: packet[request.keyStart..<request.valueStart])
        let extras = UnsafeRawBufferPointer(rebasing: packet[request.extrasStart..<request.keyStart])
        let value = UnsafeRawBufferPointer(rebasing: packet[request.valueStart..<request.packetLength])
        /// `<command> <key>`, and the `b` flag after it unless `dataLength` must come first.
        func withKey(_ command: StaticString, dataLength: Int? = nil) -> Bool {
            line.append(contentsOf: UnsafeRawBufferPointer(start: command.utf8Start, count: command.utf8CodeUnitCount))
            guard let encoded = appendKey(key, to: &line, controlBytes: controlBytes) else { return false }
            if let dataLength {
                line.append(0x20)
                appendNumber(dataLength, to: &line)
            }
            if encoded { append(" b", to: &line) }
            return true
        }
        func flag(_ letter: Unicode.Scalar, _ number: UInt64) {
            line.append(0x20)
            line.append(UInt8(truncatingIfNeeded: letter.value))
            appendNumber(number, to: &line)
        }
        // A binary expiry is unsigned: past 2^31 - 1 it is an absolute time far ahead (2106 at
        // most). The meta protocol reads its T and N flags as signed 32 bits, where such a value
        // would be negative, expired at once; the largest it can say is 2^31 - 1 (2038).
        func expiry(_ value: UInt32) -> UInt64 { UInt64(min(value, UInt32(Int32.max))) }
        switch opcode.base {
        case .get, .gat:
            guard !key.isEmpty, value.isEmpty else { return .refuse(.invalidArguments) }
            if opcode.base == .gat {
                guard extras.count == 4 else { return .refuse(.invalidArguments) }
            } else {
                guard extras.isEmpty else { return .refuse(.invalidArguments) }
            }
            if opcode.base == .get, isPlainToken(key, controlBytes: controlBytes) {
                // The common get goes the text way (`gets`: flags and CAS in the VALUE line),
                // the proxy's cheapest path.
                append("gets ", to: &line)
                line.append(contentsOf: key)
                append("\r\n", to: &line)
                return .meta
            }
            guard withKey("mg") else { return .refuse(.invalidArguments) }
            append(" v f c", to: &line)
            if opcode.base == .gat { flag("T", expiry(BinaryRequestParser.read32(extras, 0))) }
        case .touch:
            guard !key.isEmpty, value.isEmpty, extras.count == 4, withKey("mg") else { return .refuse(.invalidArguments) }
            flag("T", expiry(BinaryRequestParser.read32(extras, 0)))
            // memcached's Touch response carries the item's flags and CAS, as a Get's does.
            append(" f c", to: &line)
        case .set, .add, .replace:
            guard !key.isEmpty, extras.count == 8, withKey("ms", dataLength: value.count) else { return .refuse(.invalidArguments) }
            flag("F", UInt64(BinaryRequestParser.read32(extras, 0)))
            flag("T", expiry(BinaryRequestParser.read32(extras, 4)))
            if request.cas != 0 { flag("C", request.cas) }
            // memcached stores an Add with a CAS as a compare-and-swap (Not found when missing,
            // Exists on another CAS); meta's add mode would ignore C and store a missing key.
            let compares = opcode.base == .add && request.cas != 0
            append(opcode.base == .set || compares ? " MS c" : opcode.base == .add ? " ME c" : " MR c", to: &line)
            append("\r\n", to: &line)
            line.append(contentsOf: value)
            append("\r\n", to: &line)
            return .meta
        case .append, .prepend:
            guard !key.isEmpty, extras.isEmpty, withKey("ms", dataLength: value.count) else { return .refuse(.invalidArguments) }
            if request.cas != 0 { flag("C", request.cas) }
            append(opcode.base == .append ? " MA c" : " MP c", to: &line)
            append("\r\n", to: &line)
            line.append(contentsOf: value)
            append("\r\n", to: &line)
            return .meta
        case .delete:
            guard !key.isEmpty, extras.isEmpty, value.isEmpty, withKey("md") else { return .refuse(.invalidArguments) }
            if request.cas != 0 { flag("C", request.cas) }
        case .increment, .decrement:
            guard !key.isEmpty, extras.count == 20, value.isEmpty, withKey("ma") else { return .refuse(.invalidArguments) }
            let delta = BinaryRequestParser.read64(extras, 0)
            let initial = BinaryRequestParser.read64(extras, 8)
            let expiration = BinaryRequestParser.read32(extras, 16)
            flag("D", delta)
            // 0xffffffff: fail when missing; otherwise create it with the initial value.
            if expiration != 0xffff_ffff {
                flag("N", expiry(expiration))
                flag("J", initial)
            }
            if request.cas != 0 { flag("C", request.cas) }
            append(opcode.base == .increment ? " MI v c" : " MD v c", to: &line)
        case .flush:
            guard key.isEmpty, value.isEmpty, extras.isEmpty || extras.count == 4 else { return .refuse(.invalidArguments) }
            append("flush_all", to: &line)
            if extras.count == 4 {
                // memcached's text flush_all reads a signed 32-bit delay: a larger one cannot be
                // said in text (found by the binary-request fuzz target).
                let delay = BinaryRequestParser.read32(extras, 0)
                guard delay <= UInt32(Int32.max) else { return .refuse(.invalidArguments) }
                line.append(0x20)
                appendNumber(delay, to: &line)
            }
            append("\r\n", to: &line)
            return .flush
        case .noop, .version, .quit, .stat, .saslListMechs, .saslAuth, .saslStep:
            return .local
        default:
            return .refuse(.unknownCommand)
        }
        append("\r\n", to: &line)
        return .meta
    }

    // MARK: Responses

    /// Appends a response packet.
    public static func appendResponse(to output: inout [UInt8], opcode: UInt8, status: BinaryStatus, opaque: UInt32, cas: UInt64 = 0,
                                      extras: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                                      key: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                                      value: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0)) {
        let body = extras.count + key.count + value.count
        output.append(BinaryRequestParser.responseMagic)
        output.append(opcode)
        output.append(UInt8(truncatingIfNeeded: key.count >> 8)); output.append(UInt8(truncatingIfNeeded: key.count))
        output.append(UInt8(truncatingIfNeeded: extras.count))
        output.append(0)
        output.append(UInt8(truncatingIfNeeded: status.rawValue >> 8)); output.append(UInt8(truncatingIfNeeded: status.rawValue))
        for shift in stride(from: 24, through: 0, by: -8) { output.append(UInt8(truncatingIfNeeded: body >> shift)) }
        for shift in stride(from: 24, through: 0, by: -8) { output.append(UInt8(truncatingIfNeeded: opaque >> UInt32(shift))) }
        for shift in stride(from: 56, through: 0, by: -8) { output.append(UInt8(truncatingIfNeeded: cas >> UInt64(shift))) }
        output.append(contentsOf: extras)
        output.append(contentsOf: key)
        output.append(contentsOf: value)
    }

    /// An error response: memcached puts the status text in the value.
    public static func appendError(to output: inout [UInt8], opcode: UInt8, status: BinaryStatus, opaque: UInt32) {
        let message = status.message
        appendResponse(to: &output, opcode: opcode, status: status, opaque: opaque,
                       value: UnsafeRawBufferPointer(start: message.utf8Start, count: message.utf8CodeUnitCount))
    }

    /// What one backend reply becomes: a response packet's fields, with its value given as a
    /// range of the reply (so a server can write the packet straight into its output without
    /// copying the value first), or nothing for a quiet request that succeeded or missed.
    public struct Response: Sendable, Equatable {
        public var status: BinaryStatus = .success
        public var cas: UInt64 = 0
        /// Get responses carry the item's flags as 4 bytes of extras.
        public var flags: UInt32?
        /// The value: bytes of the reply, a number (incr/decr, 8 bytes big-endian), or the status
        /// message of an error.
        public var value: Range<Int>?
        public var number: UInt64?
        public var includesKey = false
        /// A quiet request that succeeded or missed: no packet.
        public var isSilent = false

        public init() {}

        static func error(_ status: BinaryStatus) -> Response {
            var response = Response()
            response.status = status
            return response
        }

        @inlinable public var extrasLength: Int { flags == nil ? 0 : 4 }

        /// The value's length in the packet.
        @inlinable public func valueLength() -> Int {
            if let value { return value.count }
            if number != nil { return 8 }
            return status == .success ? 0 : status.message.utf8CodeUnitCount
        }
    }

    /// Decides the response packet for one meta reply (`VA …`, `HD …`, `EN`, `NF`, `NS`, `EX`,
    /// an error line, the `OK` of flush_all, or a text `VALUE … END` for gets sent as `gets`).
    public static func plan(toMeta reply: UnsafeRawBufferPointer, opcodeByte: UInt8) -> Response {
        var silent = Response()
        silent.isSilent = true
        guard let opcode = BinaryOpcode(rawValue: opcodeByte) else { return silent }
        func fail(_ status: BinaryStatus) -> Response {
            guard status == .keyNotFound, opcode.base == .get || opcode.base == .gat else { return .error(status) }
            // Misses of quiet gets are silent; GetK and GATK answer a miss with the key and no
            // text, as memcached does.
            if opcode.isQuiet { return silent }
            var miss = Response.error(status)
            if opcode.returnsKey {
                miss.includesKey = true
                miss.value = 0..<0
            }
            return miss
        }
        guard let lineEnd = firstNewline(reply) else {
            // Nothing at all: a quiet meta command that succeeded (Tern's own mn closed it), or
            // a get whose every phase missed (a warm-up's text `gets` with no record), which is
            // a miss, never an empty success.
            if opcode.base == .get || opcode.base == .gat { return fail(.keyNotFound) }
            return opcode.isQuiet ? silent : Response()
        }
        let contentEnd = lineEnd > 0 && reply[lineEnd - 1] == 0x0d ? lineEnd - 1 : lineEnd
        let line = UnsafeRawBufferPointer(rebasing: reply[0..<contentEnd])
        func starts(_ literal: StaticString) -> Bool {
            line.count >= literal.utf8CodeUnitCount && memcmp(line.baseAddress!, literal.utf8Start, literal.utf8CodeUnitCount) == 0
        }
        // The common reply first: a text `gets` hit, VALUE <key> <flags> <bytes> <cas>.
        if opcode.base == .get, starts("VALUE ") {
            // The key holds no space: one memchr skips it.
            let afterKey = line.count > 6 ? memchr(line.baseAddress! + 6, 0x20, line.count - 6) : nil
            var position = afterKey.map { line.baseAddress!.distance(to: UnsafeRawPointer($0)) } ?? line.count
            var fields: (UInt64, UInt64, UInt64) = (0, 0, 0)
            var count = 0
            while position < line.count, count < 3 {
                while position < line.count, line[position] == 0x20 { position += 1 }
                let start = position
                while position < line.count, line[position] != 0x20 { position += 1 }
                let number = MemcacheRequestParser.number(line, start, position) ?? 0
                switch count {
                case 0: fields.0 = number
                case 1: fields.1 = number
                default: fields.2 = number
                }
                count += 1
            }
            let dataStart = lineEnd + 1
            // (Any bytes may arrive here in the fuzz target: the length is checked as a number first.)
            guard count == 3, fields.1 <= UInt64(reply.count - dataStart) else { return fail(.internalError) }
            var response = Response()
            response.flags = UInt32(truncatingIfNeeded: fields.0)
            response.cas = fields.2
            response.value = dataStart..<(dataStart + Int(fields.1))
            response.includesKey = opcode.returnsKey
            return response
        }
        // The flags of a meta line: `f<flags>`, `c<cas>`.
        var flags: UInt32 = 0
        var cas: UInt64 = 0
        var size = 0
        var index = 0
        var position = 0
        let isValue = starts("VA ")
        while position < line.count {
            while position < line.count, line[position] == 0x20 { position += 1 }
            let start = position
            while position < line.count, line[position] != 0x20 { position += 1 }
            guard position > start else { break }
            defer { index += 1 }
            if index == 1, isValue {
                size = Int(MemcacheRequestParser.number(line, start, position, maxDigits: 10) ?? 0)
            } else if index >= 1, line[start] == UInt8(ascii: "f") {
                flags = UInt32(truncatingIfNeeded: MemcacheRequestParser.number(line, start + 1, position) ?? 0)
            } else if index >= 1, line[start] == UInt8(ascii: "c") {
                cas = MemcacheRequestParser.number(line, start + 1, position) ?? 0
            }
        }
        if starts("SERVER_ERROR object too large") { return fail(.valueTooLarge) }
        // A store the server had no memory for is ENOMEM, as memcached's binary protocol says
        // it (it was E2BIG, which tells a client not to retry that value: binary sweep 32).
        if starts("SERVER_ERROR out of memory") { return fail(.outOfMemory) }
        if starts("CLIENT_ERROR cannot increment or decrement non-numeric value") { return fail(.nonNumeric) }
        if starts("CLIENT_ERROR") || starts("ERROR") { return fail(.invalidArguments) }
        if starts("SERVER_ERROR") { return fail(.internalError) }
        var response = Response()
        switch opcode.base {
        case .get, .gat:
            if starts("VALUE ") { return fail(.internalError) }  // (a gat never travels as text)
            if starts("END") { return fail(.keyNotFound) }
            guard starts("VA ") else { return fail(starts("HD") ? .success : .keyNotFound) }
            let dataStart = lineEnd + 1
            guard dataStart + size <= reply.count else { return fail(.internalError) }
            response.flags = flags
            response.cas = cas
            response.value = dataStart..<(dataStart + size)
            response.includesKey = opcode.returnsKey
            return response
        case .touch:
            guard starts("HD") else { return fail(.keyNotFound) }
            response.flags = flags
            response.cas = cas
            return response
        case .set, .add, .replace, .append, .prepend:
            if starts("HD") {
                response.cas = cas
                response.isSilent = opcode.isQuiet
                return response
            }
            if starts("NS") { return fail(opcode.base == .add ? .keyExists : opcode.base == .replace ? .keyNotFound : .itemNotStored) }
            return fail(starts("EX") ? .keyExists : .keyNotFound)
        case .delete:
            if starts("HD") {
                response.isSilent = opcode.isQuiet
                return response
            }
            return fail(starts("EX") ? .keyExists : .keyNotFound)
        case .increment, .decrement:
            guard starts("VA ") else { return fail(starts("EX") ? .keyExists : .keyNotFound) }
            let dataStart = lineEnd + 1
            guard dataStart + size <= reply.count, let value = MemcacheRequestParser.number(reply, dataStart, dataStart + size) else {
                return fail(.internalError)
            }
            if opcode.isQuiet { return silent }
            response.cas = cas
            response.number = value
            return response
        case .flush:
            guard starts("OK") else { return fail(.internalError) }
            response.isSilent = opcode.isQuiet
            return response
        default:
            return fail(.unknownCommand)
        }
    }

    /// The first newline of `bytes` (memchr: the line may be long).
    static func firstNewline(_ bytes: UnsafeRawBufferPointer) -> Int? {
        guard let base = bytes.baseAddress, !bytes.isEmpty, let found = memchr(base, 0x0a, bytes.count) else { return nil }
        return base.distance(to: UnsafeRawPointer(found))
    }

    /// Writes a response packet's 24-byte header for `response` at `header`.
    @inlinable
    public static func writeHeader(_ response: Response, opcode: UInt8, opaque: UInt32, keyLength: Int, to header: UnsafeMutableRawPointer) {
        let body = response.extrasLength + keyLength + response.valueLength()
        header.storeBytes(of: BinaryRequestParser.responseMagic, toByteOffset: 0, as: UInt8.self)
        header.storeBytes(of: opcode, toByteOffset: 1, as: UInt8.self)
        header.storeBytes(of: UInt16(truncatingIfNeeded: keyLength).bigEndian, toByteOffset: 2, as: UInt16.self)
        header.storeBytes(of: UInt8(truncatingIfNeeded: response.extrasLength), toByteOffset: 4, as: UInt8.self)
        header.storeBytes(of: 0, toByteOffset: 5, as: UInt8.self)
        header.storeBytes(of: response.status.rawValue.bigEndian, toByteOffset: 6, as: UInt16.self)
        header.storeBytes(of: UInt32(truncatingIfNeeded: body).bigEndian, toByteOffset: 8, as: UInt32.self)
        header.storeBytes(of: opaque.bigEndian, toByteOffset: 12, as: UInt32.self)
        header.storeBytes(of: response.cas.bigEndian, toByteOffset: 16, as: UInt64.self)
    }

    /// The packet's bytes after the header, in order: extras, key, value. (Inlinable: the
    /// server calls it per reply, and a closure across modules would be a call per reply.)
    @inlinable
    public static func withBody<Result>(_ response: Response, reply: UnsafeRawBufferPointer, key: UnsafeRawBufferPointer,
                                        _ body: (_ extras: UnsafeRawBufferPointer, _ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) -> Result) -> Result {
        var flags = (response.flags ?? 0).bigEndian
        var number = (response.number ?? 0).bigEndian
        return withUnsafeBytes(of: &flags) { flagBytes in
            withUnsafeBytes(of: &number) { numberBytes in
                let none = UnsafeRawBufferPointer(start: nil, count: 0)
                let extras = response.flags == nil ? none : flagBytes
                let value: UnsafeRawBufferPointer
                if let range = response.value {
                    value = UnsafeRawBufferPointer(rebasing: reply[range])
                } else if response.number != nil {
                    value = numberBytes
                } else if response.status != .success {
                    let message = response.status.message
                    value = UnsafeRawBufferPointer(start: message.utf8Start, count: message.utf8CodeUnitCount)
                } else {
                    value = none
                }
                return body(extras, response.includesKey ? key : none, value)
            }
        }
    }

    /// Translates one meta reply into the response packet for `opcode`, appended to `output`;
    /// appends nothing when a quiet request succeeded or missed. `key` is the request's key,
    /// for the K variants. (Tern writes packets straight into its output with `plan`,
    /// `writeHeader` and `withBody`; this is the same, for tests and the fuzz targets.)
    public static func response(toMeta reply: UnsafeRawBufferPointer, opcodeByte: UInt8, opaque: UInt32,
                                key: UnsafeRawBufferPointer, into output: inout [UInt8]) {
        let response = plan(toMeta: reply, opcodeByte: opcodeByte)
        guard !response.isSilent else { return }
        withBody(response, reply: reply, key: key) { extras, key, value in
            var header = [UInt8](repeating: 0, count: BinaryRequest.headerLength)
            header.withUnsafeMutableBytes { writeHeader(response, opcode: opcodeByte, opaque: opaque, keyLength: key.count, to: $0.baseAddress!) }
            output.append(contentsOf: header)
            output.append(contentsOf: extras)
            output.append(contentsOf: key)
            output.append(contentsOf: value)
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
