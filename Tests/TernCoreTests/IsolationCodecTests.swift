import XCTest
@testable import TernCore

/// The codec rules that keep one client's bytes from reaching a shared backend connection in a
/// form the backend parses differently from Tern (see the isolation section of README).
final class IsolationCodecTests: XCTestCase {
    func resp(_ text: String, limits: RespLimits = RespLimits()) -> RespParseResult {
        Array(text.utf8).withUnsafeBytes { RespRequestParser.parse($0, limits: limits, into: RespArguments()) }
    }

    /// Redis reads lengths with `string2ll` and closes the connection on a leading zero or `-0`:
    /// Tern refuses them as Redis would, so they never reach a shared connection.
    func testNonCanonicalLengthsAreProtocolErrors() {
        XCTAssertEqual(resp("*02\r\n$3\r\nGET\r\n$1\r\nk\r\n"), .protocolError("invalid multibulk length"))
        XCTAssertEqual(resp("*2\r\n$03\r\nGET\r\n$1\r\nk\r\n"), .protocolError("invalid bulk length"))
        XCTAssertEqual(resp("*2\r\n$3\r\nGET\r\n$01\r\nk\r\n"), .protocolError("invalid bulk length"))
        XCTAssertEqual(resp("*2\r\n$3\r\nGET\r\n$-0\r\n"), .protocolError("invalid bulk length"))
        XCTAssertEqual(resp("*-0\r\n"), .protocolError("invalid multibulk length"))
        XCTAssertEqual(resp("*+1\r\n$4\r\nPING\r\n"), .protocolError("invalid multibulk length"))
        XCTAssertEqual(resp("*1\r\n$+4\r\nPING\r\n"), .protocolError("invalid bulk length"))
        XCTAssertEqual(resp("*00\r\n"), .protocolError("invalid multibulk length"))
        XCTAssertEqual(resp("*1\r\n$00\r\n\r\n"), .protocolError("invalid bulk length"))
        // Canonical forms still parse, zero included.
        XCTAssertEqual(resp("*0\r\n"), .empty(length: 4))
        XCTAssertEqual(resp("*-1\r\n"), .empty(length: 5))
        XCTAssertEqual(resp("*2\r\n$4\r\nECHO\r\n$0\r\n\r\n"), .request(length: 20))
        XCTAssertEqual(resp("*1\r\n$10\r\n0123456789\r\n"), .request(length: 21))
        // Cut anywhere, a non-canonical header is never taken for a complete request.
        let bad = Array("*1\r\n$04\r\nPING\r\n".utf8)
        for cut in 1...bad.count {
            let result = bad[0..<cut].withUnsafeBytes { RespRequestParser.parse($0, limits: RespLimits(), into: RespArguments()) }
            if case .request = result { XCTFail("cut \(cut) parsed as a request") }
        }
    }

    /// Before AUTH, Redis's caps for unauthenticated clients apply, with Redis's own texts.
    func testUnauthenticatedCaps() {
        let limits = RespLimits().unauthenticated
        let eleven = "*11\r\n" + String(repeating: "$1\r\na\r\n", count: 11)
        XCTAssertEqual(resp(eleven, limits: limits), .protocolError("unauthenticated multibulk length"))
        XCTAssertEqual(resp("*2\r\n$4\r\nAUTH\r\n$16385\r\n", limits: limits), .protocolError("unauthenticated bulk length"))
        XCTAssertEqual(resp("*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n", limits: limits), .request(length: 26))
        XCTAssertEqual(resp(eleven), .request(length: eleven.utf8.count))
    }

    /// The query cap is checked against declared lengths, before the bytes are buffered.
    func testQueryCapFromDeclaredLengths() {
        let limits = RespLimits(maxRequestLength: 1 << 16)
        XCTAssertEqual(resp("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$70000\r\n", limits: limits), .protocolError("request exceeds the client query limit"))
        XCTAssertEqual(resp("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$60000\r\n", limits: limits), .incomplete)
    }

    /// memcached reads lines past 2048 bytes only for get and gets; a long gat line would reset
    /// the backend connection, so Tern refuses it.
    func testLongGatLineIsRefused() {
        let keys = (0..<400).map { "key:\($0)" }.joined(separator: " ")
        for command in ["gat 0", "gats 0"] {
            let line = Array("\(command) \(keys)\r\n".utf8)
            let result = line.withUnsafeBytes { MemcacheRequestParser.parse($0, limits: MemcacheLimits()) }
            XCTAssertEqual(result, .rejected(.lineTooLong, consume: line.count, skip: 0, close: true), command)
        }
        let get = Array("get \(keys)\r\n".utf8)
        guard case let .request(request) = get.withUnsafeBytes({ MemcacheRequestParser.parse($0, limits: MemcacheLimits()) }) else {
            return XCTFail("a long get line parses")
        }
        XCTAssertEqual(request.keyCount, 400)
    }

    func memcache(_ text: String, strict: Bool = false) -> MemcacheParseResult {
        Array(text.utf8).withUnsafeBytes { MemcacheRequestParser.parse($0, limits: MemcacheLimits(strictKeys: strict)) }
    }

    /// What memcached 1.6 refuses *without* reading the data block (measured against 1.6.18)
    /// is refused by Tern, with the data block skipped, so it never reaches a shared connection.
    func testMetaLinesMemcachedWouldNotReadAreRefused() {
        let flags16 = (0..<16).map { "T\($0)" }.joined(separator: " ")
        let flags17 = flags16 + " F1"
        guard case .request = memcache("ms k 2 \(flags16)\r\nok\r\n") else { return XCTFail("16 flags are fine for ms") }
        XCTAssertEqual(memcache("ms k 2 \(flags17)\r\nok\r\n"), .rejected(.tooManyFlags, consume: "ms k 2 \(flags17)\r\n".utf8.count, skip: 4, close: false))
        guard case .request = memcache("mg k \(flags17)\r\n") else { return XCTFail("17 flags are fine for mg") }
        XCTAssertEqual(memcache("mg k \(flags17) v\r\n"), .rejected(.tooManyGetFlags, consume: "mg k \(flags17) v\r\n".utf8.count, skip: 0, close: false))
        XCTAssertEqual(memcache("md k \(flags17) q\r\n"), .rejected(.tooManyFlags, consume: "md k \(flags17) q\r\n".utf8.count, skip: 0, close: false))
        // memcached checks the key token's length before decoding base64.
        let encoded252 = String(repeating: "QUJD", count: 63)
        XCTAssertEqual(memcache("ms \(encoded252) 2 b\r\nok\r\n"), .rejected(.keyTooLong, consume: "ms \(encoded252) 2 b\r\n".utf8.count, skip: 4, close: false))
        guard case .request = memcache("ms \(String(repeating: "QUJD", count: 62)) 2 b\r\nok\r\n") else { return XCTFail("248 encoded bytes are fine") }
    }

    /// memcached reads a command line as a C string: a NUL ends it early. Refused in every
    /// command, whatever `strict_keys` says, and framed as memcached frames it: by the tokens
    /// before the NUL (a data block only when those declare one; before, the whole line's
    /// tokens decided, and Tern waited for a block memcached never reads).
    func testNulInALineIsRefused() {
        XCTAssertEqual(memcache("ms k\u{0}x 2\r\nok\r\n"), .rejected(.badFormat, consume: 10, skip: 0, close: false), "`ms k`: no block")
        XCTAssertEqual(memcache("set k\u{0} 0 0 2\r\nok\r\n"), .rejected(.unknownCommand, consume: 14, skip: 0, close: false), "`set k`: ERROR")
        XCTAssertEqual(memcache("replace k\u{0} 0 0 3600 2\r\n2e\r\n"), .rejected(.unknownCommand, consume: 23, skip: 0, close: false))
        XCTAssertEqual(memcache("get a\u{0}b\r\n"), .rejected(.badFormat, consume: 9, skip: 0, close: false))
        XCTAssertEqual(memcache("set k 0 0 2\u{0} x\r\nok\r\n"), .rejected(.badFormat, consume: 20, skip: 0, close: false), "its block dropped")
        XCTAssertEqual(memcache("set k 0 0 5\u{0} x\r\no"), .incomplete, "the block memcached would read is awaited, then dropped")
        XCTAssertEqual(memcache("\u{0}\r\n"), .rejected(.unknownCommand, consume: 3, skip: 0, close: false))
        for (line, silent) in [("set k\u{0} 0 0 2 noreply\r\n", false), ("set k 0 0 2 noreply\u{0}\r\n", true), ("set k 0 0 2\u{0} noreply\r\n", false)] {
            XCTAssertEqual(Array(line.utf8).withUnsafeBytes { MemcacheRequestParser.refusalIsSilent($0) }, silent, line)
        }
        guard case .request = memcache("get \u{10}\u{7f}\u{1}k\r\n") else { return XCTFail("other control bytes are memcached's to accept") }
    }

    /// A storage line refused for its key drops the data block only when the rest of the line is
    /// well formed (its length where memcached reads it); otherwise the next line is the
    /// client's next command, as memcached reads it (Tern dropped 3600 bytes of a line whose
    /// flags were a second key; found by the differential fuzzer), and no larger than an item
    /// may be. Lengths as memcached reads them (`strtol` kept in 32 bits): `+1`, `-0`, leading
    /// zeros, a trailing tab, and `4294967301` (5) are lengths; past INT_MAX - 2 none.
    func testRefusedStorageLinesDropOnlyAWellFormedBlock() {
        let long = String(repeating: "k", count: 251)
        XCTAssertEqual(memcache("add \(long) 0 0 3\r\nabc\r\n"), .rejected(.keyTooLong, consume: "add \(long) 0 0 3\r\n".utf8.count, skip: 5, close: false))
        XCTAssertEqual(memcache("add \(long) \(long) 3600 14\r\nab\r\n"), .rejected(.keyTooLong, consume: "add \(long) \(long) 3600 14\r\n".utf8.count, skip: 0, close: false))
        XCTAssertEqual(memcache("add \(long) 0 x 3\r\nabc\r\n"), .rejected(.keyTooLong, consume: "add \(long) 0 x 3\r\n".utf8.count, skip: 0, close: false))
        XCTAssertEqual(memcache("set k 0 0 2147483646\r\nab\r\n"), .rejected(.badFormat, consume: 22, skip: 0, close: false))
        XCTAssertEqual(memcache("set k 0 0 2147483645\r\nab\r\n"), .rejected(.objectTooLarge, consume: 22, skip: 2147483647, close: false))
        XCTAssertEqual(memcache("add \(long) 0 0 2000000\r\nab\r\n"), .rejected(.keyTooLong, consume: "add \(long) 0 0 2000000\r\n".utf8.count, skip: 0, close: false),
                       "a block larger than an item is not awaited")
        XCTAssertEqual(memcache("cas \(long) 0 0 3 x\r\nabc\r\n"), .rejected(.keyTooLong, consume: "cas \(long) 0 0 3 x\r\n".utf8.count, skip: 0, close: false))
        for (text, length) in [("set k 0 0 +1\r\nx\r\n", 1), ("set k 0 0 -0\r\n\r\n", 0), ("set k 0 0 4294967301\r\nhello\r\n", 5),
                               ("set k 0 0 00000000000000000000005\r\nhello\r\n", 5), ("set k 0 0 5\t\r\nhello\r\n", 5), ("set k -0 0 1\r\nx\r\n", 1)] {
            guard case let .request(request) = memcache(text) else { return XCTFail(text) }
            XCTAssertEqual(request.dataLength, length, text)
        }
        XCTAssertEqual(memcache("set k 0 0 -1\r\nab\r\n"), .rejected(.badFormat, consume: 14, skip: 0, close: false))
    }

    /// `verbosity noreply` is silent, as in memcached (found by the differential fuzzer).
    func testVerbosityNoreplyAlone() {
        guard case let .request(request) = memcache("verbosity noreply\r\n") else { return XCTFail("parses") }
        XCTAssertTrue(request.noreply)
        guard case let .request(withLevel) = memcache("verbosity 1\r\n") else { return XCTFail("parses") }
        XCTAssertFalse(withLevel.noreply)
    }

    /// memcached 1.6 reads an exptime with `strtol` (64 bits, an optional sign) and keeps its low
    /// 32 bits, and flags with `strtoul` (up to 2^64 - 1); libmemcached sends a negative exptime
    /// as `4294967295`. Tern accepts what memcached accepts (and forwards the token as written)
    /// and refuses only what memcached refuses, before the data block is read.
    func testExptimesAndFlagsAsMemcachedReadsThem() {
        for text in ["set k 0 2147483647 2\r\nok\r\n", "set k 0 -2147483648 2\r\nok\r\n", "set k 0 2147483648 2\r\nok\r\n",
                     "set k 0 4294967295 2\r\nok\r\n", "set k 0 9223372036854775807 2\r\nok\r\n", "set k 0 -9223372036854775808 2\r\nok\r\n",
                     "set k 0 +5 2\r\nok\r\n", "set k 4294967296 0 2\r\nok\r\n", "set k 18446744073709551615 0 2\r\nok\r\n",
                     "set k +7 0 2\r\nok\r\n", "touch k 99999999999\r\n", "gat 99999999999 k\r\n", "flush_all 4294967296\r\n"] {
            guard case .request = memcache(text) else { return XCTFail(text) }
        }
        XCTAssertEqual(memcache("set k 0 9223372036854775808 2\r\nok\r\n"), .rejected(.badFormat, consume: 31, skip: 0, close: false))
        XCTAssertEqual(memcache("set k 0 -9223372036854775809 2\r\nok\r\n"), .rejected(.badFormat, consume: 32, skip: 0, close: false))
        XCTAssertEqual(memcache("set k 18446744073709551616 0 2\r\nok\r\n"), .rejected(.badFormat, consume: 32, skip: 0, close: false))
        XCTAssertEqual(memcache("set k -1 0 2\r\nok\r\n"), .rejected(.badFormat, consume: 14, skip: 0, close: false))
        XCTAssertEqual(memcache("set k 0 - 2\r\nok\r\n"), .rejected(.badFormat, consume: 13, skip: 0, close: false))
        XCTAssertEqual(memcache("touch k +\r\n"), .rejected(.invalidExptime, consume: 11, skip: 0, close: false))
        XCTAssertEqual(MemcacheRequestParser.signedNumberForTests("4294967295"), -1)
        XCTAssertEqual(MemcacheRequestParser.signedNumberForTests("4294967296"), 0)
        XCTAssertEqual(MemcacheRequestParser.signedNumberForTests("-4294967297"), -1)
    }

    /// A refused request that ends with `noreply` gets no reply, as memcached sends none: only
    /// for commands that take it, with a token count memcached accepts.
    func testRefusedNoreplyRequestsAreSilent() {
        func silent(_ text: String) -> Bool { Array(text.utf8).withUnsafeBytes { MemcacheRequestParser.refusalIsSilent($0) } }
        let long = String(repeating: "k", count: 251)
        for text in ["set \(long) 0 0 1 noreply\r\nx\r\n", "set big 0 0 2000000 noreply\r\n", "delete \(long) noreply\r\n",
                     "delete \(long) 0 noreply\r\n", "incr n 18446744073709551616 noreply\r\n", "touch e abc noreply\r\n",
                     "cas k 0 0 1 x noreply\r\n", "flush_all abc noreply\r\n", "verbosity abc noreply\r\n", "set a abc 0 1 noreply\r\n",
                     "set a 0 0 noreply\r\n", "incr k noreply\r\n", "touch k noreply\r\n", "cas k 0 0 1 noreply\r\n"] {
            XCTAssertTrue(silent(text), text)
        }
        for text in ["get \(long) noreply\r\n", "set a 0 noreply\r\n", "set a 0 0 1 2 noreply\r\n", "incr noreply\r\n", "mg \(long) q noreply\r\n",
                     "bogus noreply\r\n", "set \(long) 0 0 1\r\n", "incr n x\r\n", "noreply\r\n", "set a 0 0 1 noreply"] {
            XCTAssertFalse(silent(text), text)
        }
    }

    /// A one-line reply must be one the command can get: a VALUE, END or meta status where a
    /// storage reply belongs means the connection is out of step.
    func testOutOfStepRepliesAreInvalid() {
        func frame(_ text: String, _ framing: MemcacheFraming) -> MemcacheReplyParser.Result {
            Array(text.utf8).withUnsafeBytes { MemcacheReplyParser.parse($0, framing: framing) }
        }
        for good in ["STORED\r\n", "NOT_STORED\r\n", "EXISTS\r\n", "NOT_FOUND\r\n", "DELETED\r\n", "TOUCHED\r\n", "OK\r\n", "42\r\n", "VERSION 1.6.18\r\n", "ERROR\r\n"] {
            XCTAssertEqual(frame(good, .line), .reply(length: good.utf8.count, isError: good == "ERROR\r\n"), good)
        }
        for bad in ["VALUE k 0 1\r\n", "END\r\n", "HD\r\n", "MN\r\n", "STAT pid 1\r\n", "hello\r\n", "\r\n"] {
            XCTAssertEqual(frame(bad, .line), .invalid, bad)
        }
        for good in ["HD\r\n", "HD k1 O2\r\n", "NS\r\n", "EX\r\n", "NF\r\n", "EN\r\n", "MN\r\n", "ME k exp=-1\r\n"] {
            XCTAssertEqual(frame(good, .meta), .reply(length: good.utf8.count, isError: false), good)
        }
        for bad in ["STORED\r\n", "END\r\n", "VALUE k 0 1\r\nx\r\nEND\r\n", "HDX\r\n"] {
            XCTAssertEqual(frame(bad, .meta), .invalid, bad)
        }
    }

    /// Walks `reply` through a skipper in pieces of `step` bytes, as a connection would: dropped
    /// bytes leave the buffer, an incomplete line stays. Returns where the reply ended.
    func skip(_ reply: [UInt8], _ grammar: ReplySkipper.Grammar, step: Int) -> Int? {
        var skipper = ReplySkipper(grammar)
        var buffer: [UInt8] = []
        var fed = 0
        var dropped = 0
        while fed < reply.count {
            let next = min(reply.count, fed + step)
            buffer += reply[fed..<next]
            fed = next
            var consumed = 0
            let progress = buffer.withUnsafeBytes { skipper.skip($0, consumed: &consumed) }
            switch progress {
            case .needMore:
                dropped += consumed
                buffer.removeFirst(consumed)
            case let .finished(length):
                return dropped + length
            case .invalid:
                return nil
            }
        }
        return -1
    }

    func testSkipperFindsTheEndOfEveryReplyInAnyPieces() {
        let value = String(repeating: "v", count: 300)
        let cases: [(String, ReplySkipper.Grammar)] = [
            ("VALUE a 0 300\r\n\(value)\r\nVALUE a 0 3\r\nEND\r\nEND\r\n", .memcache(.retrieval)),
            ("END\r\n", .memcache(.retrieval)),
            ("VA 300 f0\r\n\(value)\r\n", .memcache(.meta)),
            ("VA 3\r\nMN\r\nHD\r\nMN\r\n", .memcache(.metaUntilNoop)),
            ("$300\r\n\(value)\r\n", .resp),
            ("*3\r\n$3\r\nabc\r\n*2\r\n:1\r\n$-1\r\n*0\r\n", .resp),
            ("*2\r\n*2\r\n$300\r\n\(value)\r\n+OK\r\n-ERR x\r\n", .resp),
            ("-ERR too bad\r\n", .resp),
        ]
        for (text, grammar) in cases {
            let trailing = Array("+NEXT\r\n".utf8)
            let reply = Array(text.utf8)
            for step in [1, 2, 7, 64, 4096] {
                XCTAssertEqual(skip(reply + trailing, grammar, step: step), reply.count, "\(grammar) step \(step): \(text.prefix(40))")
            }
        }
        XCTAssertNil(skip(Array("HELLO\r\n".utf8), .memcache(.retrieval), step: 3))
        XCTAssertNil(skip(Array("?\r\n".utf8), .resp, step: 3))
        XCTAssertNil(skip([UInt8](repeating: 0x41, count: 9000), .resp, step: 4096), "a header line without an end is refused")
    }
}
