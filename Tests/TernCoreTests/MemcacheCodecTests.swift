import XCTest
@testable import TernCore

final class MemcacheCodecTests: XCTestCase {
    let limits = MemcacheLimits()

    func parse(_ text: String, limits: MemcacheLimits? = nil) -> MemcacheParseResult {
        parse(Array(text.utf8), limits: limits)
    }

    func parse(_ bytes: [UInt8], limits: MemcacheLimits? = nil) -> MemcacheParseResult {
        bytes.withUnsafeBytes { MemcacheRequestParser.parse($0, limits: limits ?? self.limits) }
    }

    func request(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> MemcacheRequest? {
        guard case let .request(request) = parse(text) else {
            XCTFail("expected a request from \(text.debugDescription), got \(parse(text))", file: file, line: line)
            return nil
        }
        return request
    }

    func keys(_ text: String, _ request: MemcacheRequest) -> [String] {
        let bytes = Array(text.utf8)[request.keysStart..<request.keysEnd]
        return bytes.split(separator: 0x20).map { String(decoding: $0, as: UTF8.self) }
    }

    func testEveryCommandParses() {
        let cases: [(String, MemcacheCommand, [String])] = [
            ("get foo\r\n", .get, ["foo"]),
            ("gets a bb ccc\r\n", .gets, ["a", "bb", "ccc"]),
            ("gat 100 k1 k2\r\n", .gat, ["k1", "k2"]),
            ("gats -1 k1\r\n", .gats, ["k1"]),
            ("set k 1 2 3\r\nabc\r\n", .set, ["k"]),
            ("add k 0 0 0\r\n\r\n", .add, ["k"]),
            ("replace k 0 0 1\r\nx\r\n", .replace, ["k"]),
            ("append k 0 0 1\r\nx\r\n", .append, ["k"]),
            ("prepend k 0 0 1\r\nx\r\n", .prepend, ["k"]),
            ("cas k 0 0 1 99\r\nx\r\n", .cas, ["k"]),
            ("delete k\r\n", .delete, ["k"]),
            ("delete k 0\r\n", .delete, ["k"]),
            ("incr k 5\r\n", .incr, ["k"]),
            ("decr k 18446744073709551615\r\n", .decr, ["k"]),
            ("touch k 10\r\n", .touch, ["k"]),
        ]
        for (text, command, expectedKeys) in cases {
            guard let parsed = request(text) else { continue }
            XCTAssertEqual(parsed.command, command, text)
            XCTAssertEqual(parsed.frameLength, text.utf8.count, text)
            XCTAssertEqual(keys(text, parsed), expectedKeys, text)
            XCTAssertEqual(parsed.keyCount, expectedKeys.count, text)
            XCTAssertFalse(parsed.noreply, text)
        }
        for text in ["version\r\n", "quit\r\n", "verbosity 1\r\n", "flush_all\r\n", "flush_all 10\r\n", "stats\r\n"] {
            XCTAssertNotNil(request(text))
        }
    }

    func testNoreplyIsFoundAndStrippable() {
        let text = "set k 1 0 3 noreply\r\nabc\r\n"
        guard let parsed = request(text) else { return }
        XCTAssertTrue(parsed.noreply)
        let bytes = Array(text.utf8)
        XCTAssertEqual(String(decoding: bytes[0..<parsed.noreplyStart], as: UTF8.self), "set k 1 0 3")
        XCTAssertEqual(parsed.lineLength, "set k 1 0 3 noreply\r\n".utf8.count)
        for text in ["delete k noreply\r\n", "delete k 0 noreply\r\n", "incr k 1 noreply\r\n", "touch k 1 noreply\r\n",
                     "flush_all noreply\r\n", "flush_all 0 noreply\r\n", "verbosity 1 noreply\r\n", "cas k 0 0 1 5 noreply\r\nx\r\n"] {
            XCTAssertEqual(request(text)?.noreply, true, text)
        }
    }

    func testBareNewlineIsAccepted() {
        guard let parsed = request("get foo\n") else { return }
        XCTAssertEqual(parsed.frameLength, 8)
        XCTAssertEqual(keys("get foo\n", parsed), ["foo"])
    }

    func testEveryPrefixIsIncompleteAndTheWholeParsesTheSame() {
        // A frame arriving one byte at a time: every prefix must ask for more, never misparse.
        let frames = ["set key 5 0 10\r\n0123456789\r\n", "get a b c d\r\n", "cas k 1 2 3 4 noreply\r\nabc\r\n",
                      "gat 5 x y\r\n", "incr counter 12\r\n", "delete k 0 noreply\r\n"]
        for frame in frames {
            let bytes = Array(frame.utf8)
            for length in 0..<bytes.count {
                XCTAssertEqual(parse(Array(bytes[0..<length])), .incomplete, "\(frame.debugDescription) cut at \(length)")
            }
            guard case let .request(whole) = parse(bytes) else { return XCTFail(frame) }
            XCTAssertEqual(whole.frameLength, bytes.count)
        }
    }

    func testPipelineParsesInOrder() {
        var text = ""
        for i in 0..<10_000 { text += i % 2 == 0 ? "set k\(i) 0 0 1\r\nx\r\n" : "get k\(i)\r\n" }
        let bytes = Array(text.utf8)
        var offset = 0
        var count = 0
        bytes.withUnsafeBytes { raw in
            while offset < raw.count {
                guard case let .request(request) = MemcacheRequestParser.parse(UnsafeRawBufferPointer(rebasing: raw[offset...]), limits: limits) else {
                    return XCTFail("stopped at \(offset)")
                }
                XCTAssertEqual(request.command, count % 2 == 0 ? .set : .get)
                offset += request.frameLength
                count += 1
            }
        }
        XCTAssertEqual(count, 10_000)
    }

    func testErrorPaths() {
        XCTAssertEqual(parse("bogus\r\n"), .rejected(.unknownCommand, consume: 7, skip: 0, close: false))
        XCTAssertEqual(parse("\r\n"), .rejected(.unknownCommand, consume: 2, skip: 0, close: false))
        XCTAssertEqual(parse("GET foo\r\n"), .rejected(.unknownCommand, consume: 9, skip: 0, close: false))
        // A token count the command never takes: memcached's ERROR.
        XCTAssertEqual(parse("get\r\n"), .rejected(.unknownCommand, consume: 5, skip: 0, close: false))
        XCTAssertEqual(parse("set k 0 0\r\n"), .rejected(.unknownCommand, consume: 11, skip: 0, close: false))
        XCTAssertEqual(parse("set k x 0 1\r\n"), .rejected(.badFormat, consume: 13, skip: 0, close: false))
        XCTAssertEqual(parse("set k 0 0 -1\r\n"), .rejected(.badFormat, consume: 14, skip: 0, close: false))
        XCTAssertEqual(parse("set k 18446744073709551616 0 1\r\n"), .rejected(.badFormat, consume: 32, skip: 0, close: false))
        // memcached keeps a length's low 32 bits: 99999999999 is 1215752191, too large an item.
        XCTAssertEqual(parse("set k 0 0 99999999999\r\n"), .rejected(.objectTooLarge, consume: 23, skip: 1_215_752_193, close: false))
        XCTAssertEqual(parse("set k 0 0 99999999999999999999\r\n"), .rejected(.badFormat, consume: 32, skip: 0, close: false), "past 64 bits")
        // memcached looks for `noreply` in the last token only and ignores another one there.
        guard case let .request(ignored) = parse("set k 0 0 1 bogus\r\nx\r\n") else { return XCTFail("memcached stores it") }
        XCTAssertEqual(ignored.frameLength, 22)
        XCTAssertFalse(ignored.noreply)
        XCTAssertEqual(parse("delete k bogus\r\n"), .rejected(.deleteUsage, consume: 16, skip: 0, close: false))
        XCTAssertEqual(parse("cas k 0 0 1\r\nx\r\n"), .rejected(.unknownCommand, consume: 13, skip: 0, close: false))
        XCTAssertEqual(parse("incr k abc\r\n"), .rejected(.invalidDelta, consume: 12, skip: 0, close: false))
        XCTAssertEqual(parse("delete\r\n"), .rejected(.unknownCommand, consume: 8, skip: 0, close: false))
        XCTAssertEqual(parse("delete k 5\r\n"), .rejected(.deleteUsage, consume: 12, skip: 0, close: false))
        XCTAssertEqual(parse("verbosity\r\n"), .rejected(.unknownCommand, consume: 11, skip: 0, close: false))
        XCTAssertEqual(parse("touch k x\r\n"), .rejected(.invalidExptime, consume: 11, skip: 0, close: false))
        XCTAssertEqual(parse("flush_all x\r\n"), .rejected(.invalidExptime, consume: 13, skip: 0, close: false))
        XCTAssertEqual(parse("gat x k\r\n"), .rejected(.invalidExptime, consume: 9, skip: 0, close: false))
        XCTAssertEqual(parse("gat\r\n"), .rejected(.unknownCommand, consume: 5, skip: 0, close: false))
        XCTAssertEqual(parse("gat 10\r\n"), .rejected(.noKeys, consume: 8, skip: 0, close: false), "memcached answers END")
        guard case let .request(version) = parse("version extra\r\n") else { return XCTFail("memcached ignores tokens after version") }
        XCTAssertEqual(version.command, .version)
        XCTAssertEqual(parse("set k 0 0 3\r\nabcde\r\n"), .rejected(.badDataChunk, consume: 18, skip: 0, close: false))
        let longKey = String(repeating: "k", count: 251)
        XCTAssertEqual(parse("get \(longKey)\r\n"), .rejected(.keyTooLong, consume: 257, skip: 0, close: false))
        XCTAssertEqual(parse("get a \(longKey)\r\n"), .rejected(.keyTooLong, consume: 259, skip: 0, close: false))
        XCTAssertNotNil(request("get \(String(repeating: "k", count: 250))\r\n"))
        XCTAssertEqual(parse("get a\u{01}b\r\n"), .rejected(.badKeyCharacter, consume: 9, skip: 0, close: false))
        XCTAssertEqual(parse("set a\u{7f} 0 0 1\r\nx\r\n"), .rejected(.badKeyCharacter, consume: 14, skip: 3, close: false))
        XCTAssertEqual(parse("set \(longKey) 0 0 5\r\n"), .rejected(.keyTooLong, consume: 263, skip: 7, close: false))
        var lenient = MemcacheLimits()
        lenient.rejectsControlCharacters = false
        XCTAssertEqual((try? XCTUnwrap({ if case let .request(r) = parse("get \u{10}\u{10}k\r\n", limits: lenient) { return r.keyCount } else { return nil } }())), 1)
        XCTAssertEqual(parse([0x67, 0x65, 0x74, 0x20, 0x61, 0x09, 0x62, 0x0d, 0x0a]), .rejected(.badKeyCharacter, consume: 9, skip: 0, close: false))
    }

    /// The key scans (eight bytes at a time, and memchr for long tokens) against a byte loop:
    /// random bytes of every value at every offset and length, then random retrieval and
    /// storage lines, strict and lenient, judged by the rule written out here (the first key
    /// over 250 bytes is too long, else the first with a byte below 0x21 or 0x7F is refused).
    func testKeyScansAgreeWithAByteLoop() {
        var random = SystemRandomNumberGenerator()
        let alphabet: [UInt8] = [0x00, 0x01, 0x09, 0x10, 0x1f, 0x20, 0x21, 0x41, 0x7e, 0x7f, 0x80, 0xa0, 0xff]
        for _ in 0..<2_000 {
            let bytes = (0..<Int.random(in: 0...40, using: &random)).map { _ in
                Bool.random(using: &random) ? alphabet.randomElement(using: &random)! : UInt8.random(in: 0x21...0x7e, using: &random)
            }
            bytes.withUnsafeBytes { buffer in
                for from in 0...buffer.count {
                    var loop = from
                    while loop < buffer.count, buffer[loop] >= 0x21, buffer[loop] != 0x7f { loop += 1 }
                    XCTAssertEqual(MemcacheRequestParser.firstSpaceOrControl(buffer, from, buffer.count), loop, "\(bytes) from \(from)")
                    var space = from
                    while space < buffer.count, buffer[space] != 0x20 { space += 1 }
                    XCTAssertEqual(MemcacheRequestParser.nextSpace(buffer, from, buffer.count), space, "\(bytes) from \(from)")
                }
            }
        }
        var lenient = MemcacheLimits()
        lenient.rejectsControlCharacters = false
        for _ in 0..<3_000 {
            let keys: [[UInt8]] = (0..<Int.random(in: 1...3, using: &random)).map { _ in
                let length = [1, 7, 8, 9, 16, 17, 64, 249, 250, 251, 300].randomElement(using: &random)!
                var key = (0..<length).map { _ in UInt8.random(in: 0x21...0x7e, using: &random) }
                if Int.random(in: 0..<3, using: &random) == 0 {
                    key[Int.random(in: 0..<length, using: &random)] = [0x01, 0x09, 0x0b, 0x1f, 0x7f].randomElement(using: &random)!
                }
                return key
            }
            let strictVerdict: MemcacheRejection? = keys.lazy.compactMap { key -> MemcacheRejection? in
                if key.count > 250 { return .keyTooLong }
                return key.contains { $0 < 0x21 || $0 == 0x7f } ? .badKeyCharacter : nil
            }.first
            let lenientVerdict: MemcacheRejection? = keys.contains { $0.count > 250 } ? .keyTooLong : nil
            let line = Array("gets ".utf8) + Array(keys.joined(separator: [0x20])) + [0x0d, 0x0a]
            for (limits, verdict) in [(self.limits, strictVerdict), (lenient, lenientVerdict)] {
                let result = parse(line, limits: limits)
                if let verdict {
                    XCTAssertEqual(result, .rejected(verdict, consume: line.count, skip: 0, close: false), "\(keys)")
                } else if case let .request(request) = result {
                    XCTAssertEqual(request.keyCount, keys.count)
                    XCTAssertEqual(Array(line[request.keysStart..<request.keysEnd]), Array(keys.joined(separator: [0x20])))
                } else {
                    XCTFail("\(keys): \(result)")
                }
            }
            let set = Array("set ".utf8) + keys[0] + Array(" 5 0 1\r\nx\r\n".utf8)
            let setVerdict: MemcacheRejection? = keys[0].count > 250 ? .keyTooLong
                : keys[0].contains { $0 < 0x21 || $0 == 0x7f } ? .badKeyCharacter : nil
            if let setVerdict {
                XCTAssertEqual(parse(set), .rejected(setVerdict, consume: set.count - 3, skip: 3, close: false), "\(keys[0])")
            } else if case let .request(request) = parse(set) {
                XCTAssertEqual(Array(set[request.keysStart..<request.keysEnd]), keys[0])
                XCTAssertEqual(request.frameLength, set.count)
            } else {
                XCTFail("\(keys[0]): \(parse(set))")
            }
        }
    }

    /// Decimal fields: up to 19 digits read without overflow checks, 20 with them, and the bounds
    /// of UInt64 and of `maxDigits` kept.
    func testNumbersAtTheirBounds() {
        func number(_ text: String, maxDigits: Int = 20) -> UInt64? {
            Array(text.utf8).withUnsafeBytes { MemcacheRequestParser.number($0, 0, $0.count, maxDigits: maxDigits) }
        }
        XCTAssertEqual(number("0"), 0)
        XCTAssertEqual(number("9999999999999999999"), 9_999_999_999_999_999_999)
        XCTAssertEqual(number("0000000000000000001"), 1)
        XCTAssertEqual(number("18446744073709551615"), UInt64.max)
        XCTAssertNil(number("18446744073709551616"))
        XCTAssertNil(number("99999999999999999999"))
        XCTAssertNil(number("123456789012345678901"))
        XCTAssertNil(number(""))
        XCTAssertNil(number("12a"))
        XCTAssertNil(number("-1"))
        XCTAssertEqual(number("4294967295", maxDigits: 10), 4_294_967_295)
        XCTAssertNil(number("12345678901", maxDigits: 10))
    }

    func testValueOverTheLimitIsRefusedBeforeItArrives() {
        // Only the line is needed: the data block is skipped as it arrives, never buffered.
        let line = "set big 0 0 \((1 << 20) + 1)\r\n"
        XCTAssertEqual(parse(line), .rejected(.objectTooLarge, consume: line.utf8.count, skip: (1 << 20) + 3, close: false))
        XCTAssertEqual(parse("set ok 0 0 \(1 << 20)\r\n"), .incomplete)
        var small = MemcacheLimits()
        small.maxItemSize = 10
        XCTAssertEqual(parse("set k 0 0 11\r\n", limits: small), .rejected(.objectTooLarge, consume: 14, skip: 13, close: false))
    }

    func testLineTooLongClosesUnlessRetrieval() {
        let garbage = [UInt8](repeating: UInt8(ascii: "a"), count: 2048)
        XCTAssertEqual(parse(garbage), .rejected(.lineTooLong, consume: 2048, skip: 0, close: true))
        XCTAssertEqual(parse([UInt8](repeating: UInt8(ascii: "a"), count: 2047)), .incomplete)
        // A multi-get line may be longer than 2048 bytes.
        var keys = "get"
        for i in 0..<400 { keys += " key:\(i)" }
        XCTAssertEqual(request(keys + "\r\n")?.keyCount, 400)
        XCTAssertEqual(parse(Array(keys.utf8)), .incomplete)
        var limits = MemcacheLimits()
        limits.maxRetrievalLineLength = 4096
        XCTAssertEqual(parse(Array(("get " + String(repeating: "k ", count: 3000)).utf8), limits: limits),
                       .rejected(.lineTooLong, consume: 6004, skip: 0, close: true))
    }

    func testReplyFraming() {
        func frame(_ text: String, _ command: MemcacheCommand) -> MemcacheReplyParser.Result {
            Array(text.utf8).withUnsafeBytes { MemcacheReplyParser.parse($0, command: command) }
        }
        let value = "VALUE a 0 3\r\nabc\r\nVALUE b 5 2 77\r\nxy\r\nEND\r\n"
        XCTAssertEqual(frame(value, .get), .reply(length: value.utf8.count, isError: false))
        for cut in 0..<value.utf8.count {
            XCTAssertEqual(Array(value.utf8)[0..<cut].withUnsafeBytes { MemcacheReplyParser.parse($0, command: .get) }, .incomplete, "cut \(cut)")
        }
        XCTAssertEqual(frame("END\r\nSTORED\r\n", .get), .reply(length: 5, isError: false))
        XCTAssertEqual(frame("STORED\r\n", .set), .reply(length: 8, isError: false))
        XCTAssertEqual(frame("SERVER_ERROR out of memory\r\n", .get), .reply(length: 28, isError: true))
        XCTAssertEqual(frame("12\r\n", .incr), .reply(length: 4, isError: false))
        XCTAssertEqual(frame("HELLO\r\n", .get), .invalid)
        XCTAssertEqual(frame("VALUE a 0 x\r\n", .get), .invalid)
        // A value that contains "END\r\n" is not mistaken for the end.
        let tricky = "VALUE a 0 5\r\nEND\r\n\r\nEND\r\n"
        XCTAssertEqual(frame(tricky, .get), .reply(length: tricky.utf8.count, isError: false))
    }

    /// The length a retrieval reply declares so far: the record whose VALUE line has arrived
    /// plus END; nothing for a line cut short, a line that is not VALUE, or an offset past the end.
    func testDeclaredLengthOfARetrievalReply() {
        func declared(_ text: String, at position: Int) -> Int {
            Array(text.utf8).withUnsafeBytes { MemcacheReplyParser.declaredLength($0, recordAt: position) }
        }
        XCTAssertEqual(declared("VALUE a 0 1048576\r\nxyz", at: 0), 19 + 1_048_576 + 2 + 5)
        let first = "VALUE a 0 3\r\nabc\r\n"
        XCTAssertEqual(declared(first + "VALUE bb 7 500 99\r\nq", at: first.utf8.count), first.utf8.count + 19 + 500 + 2 + 5)
        XCTAssertEqual(declared("VALUE a 0 1048576", at: 0), 0)
        XCTAssertEqual(declared("VA 1048576\r\n", at: 0), 0)
        XCTAssertEqual(declared("VALUE a 0 x\r\n", at: 0), 0)
        XCTAssertEqual(declared("VALUE a 0 3\r\n", at: 40), 0)
    }

    /// A reply arriving a byte at a time is framed with a resume offset that only moves forward,
    /// lands on record boundaries, and gives the same answer as framing the whole reply at once.
    func testReplyFramingResumesWhereItStopped() {
        let reply = Array("VALUE a 0 3\r\nabc\r\nVALUE bb 5 10 77\r\n0123456789\r\nVALUE c 0 0\r\n\r\nEND\r\n".utf8)
        let recordStarts = [0, 18, 48, 63]
        for framing in [MemcacheFraming.retrieval, .stats] {
            var resumeAt = 0
            var seen: [Int] = []
            for cut in 0..<reply.count {
                let result = reply[0..<cut].withUnsafeBytes { MemcacheReplyParser.parse($0, framing: framing, resumeAt: &resumeAt) }
                XCTAssertEqual(result, .incomplete, "cut \(cut)")
                XCTAssertTrue(recordStarts.contains(resumeAt), "cut \(cut): resumes at \(resumeAt)")
                XCTAssertGreaterThanOrEqual(resumeAt, seen.last ?? 0)
                seen.append(resumeAt)
            }
            XCTAssertEqual(Set(seen), Set(recordStarts), "every record boundary is a resume point")
            let whole = reply.withUnsafeBytes { MemcacheReplyParser.parse($0, framing: framing, resumeAt: &resumeAt) }
            XCTAssertEqual(whole, .reply(length: reply.count, isError: false))
            XCTAssertEqual(resumeAt, 0, "a framed reply starts the next one from the beginning")
        }
        // A stale offset beyond the bytes (a connection that was reset) starts again from 0.
        var stale = 500
        let result = reply.withUnsafeBytes { MemcacheReplyParser.parse($0, framing: .retrieval, resumeAt: &stale) }
        XCTAssertEqual(result, .reply(length: reply.count, isError: false))
        // A bad record after a resume point is still refused.
        var resumeAt = 0
        let bad = Array("VALUE a 0 3\r\nabc\r\nVALUE b 0 x\r\n".utf8)
        _ = bad[0..<20].withUnsafeBytes { MemcacheReplyParser.parse($0, framing: .retrieval, resumeAt: &resumeAt) }
        XCTAssertEqual(resumeAt, 18)
        XCTAssertEqual(bad.withUnsafeBytes { MemcacheReplyParser.parse($0, framing: .retrieval, resumeAt: &resumeAt) }, .invalid)
    }

    func testForEachValueFindsKeysAndRecords() {
        let reply = "VALUE a 0 3\r\nabc\r\nVALUE bb 1 1\r\nx\r\nEND\r\n"
        var found: [(String, String)] = []
        Array(reply.utf8).withUnsafeBytes { raw in
            MemcacheReplyParser.forEachValue(raw) { key, record in
                found.append((String(decoding: raw[key], as: UTF8.self), String(decoding: raw[record], as: UTF8.self)))
            }
        }
        XCTAssertEqual(found.map(\.0), ["a", "bb"])
        XCTAssertEqual(found.map(\.1), ["VALUE a 0 3\r\nabc\r\n", "VALUE bb 1 1\r\nx\r\n"])
    }

    func testRandomBytesNeverTrap() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            let length = Int.random(in: 0..<64, using: &generator)
            let alphabet: [UInt8] = Array("get set 0 1 2 noreply\r\n \u{0}\u{ff}-abc".utf8)
            let bytes = (0..<length).map { _ in alphabet.randomElement(using: &generator)! }
            let result = parse(bytes)
            if case let .request(request) = result { XCTAssertLessThanOrEqual(request.frameLength, bytes.count) }
            if case let .rejected(_, consume, _, _) = result { XCTAssertLessThanOrEqual(consume, bytes.count) }
        }
    }
}

final class MetaProtocolTests: XCTestCase {
    func parse(_ text: String) -> MemcacheParseResult {
        Array(text.utf8).withUnsafeBytes { MemcacheRequestParser.parse($0, limits: MemcacheLimits()) }
    }

    func testMetaRequests() {
        guard case let .request(get) = parse("mg foo v f t q O12 k\r\n") else { return XCTFail() }
        XCTAssertEqual(get.command, .metaGet)
        XCTAssertTrue(get.isQuiet)
        XCTAssertEqual(get.keysStart, 3)
        XCTAssertEqual(get.keysEnd, 6)
        guard case let .request(set) = parse("ms aw== 3 T10 F5 b\r\nabc\r\n") else { return XCTFail() }
        XCTAssertEqual(set.command, .metaSet)
        XCTAssertTrue(set.isBase64Key)
        XCTAssertEqual(set.frameLength, 25)
        XCTAssertEqual(parse("ms k 3 T10\r\nab"), .incomplete)
        guard case let .request(noop) = parse("mn\r\n") else { return XCTFail() }
        XCTAssertEqual(noop.command, .metaNoop)
        guard case let .request(noopWithToken) = parse("mn extra\r\n") else { return XCTFail("memcached ignores tokens after mn") }
        XCTAssertEqual(noopWithToken.command, .metaNoop)
        XCTAssertEqual(parse("mg\r\n"), .rejected(.unknownCommand, consume: 4, skip: 0, close: false))
        XCTAssertEqual(parse("me\r\n"), .rejected(.badFormat, consume: 4, skip: 0, close: false))
        XCTAssertEqual(parse("ms k x\r\n"), .rejected(.badFormat, consume: 8, skip: 0, close: false))
        XCTAssertEqual(parse("ms k 2000000 T0\r\n"), .rejected(.objectTooLarge, consume: 17, skip: 2_000_002, close: false))
        XCTAssertEqual(parse("mg a!b= b v\r\n"), .rejected(.badBase64Key, consume: 13, skip: 0, close: false))
        XCTAssertEqual(parse("mz foo\r\n"), .rejected(.unknownCommand, consume: 8, skip: 0, close: false))
        guard case let .request(encoded) = parse("md Zm9v b q\r\n") else { return XCTFail() }
        XCTAssertTrue(encoded.isBase64Key)
        XCTAssertTrue(encoded.isQuiet)
    }

    /// A store the server had no memory for answers ENOMEM, a value over its item size E2BIG,
    /// as memcached's binary protocol tells them apart (binary sweep 32: both were E2BIG).
    func testBinaryStatusesOfStoreFailures() {
        func status(_ text: String, _ opcode: UInt8 = 0x01) -> BinaryStatus {
            Array(text.utf8).withUnsafeBytes { BinaryTranslator.plan(toMeta: $0, opcodeByte: opcode).status }
        }
        XCTAssertEqual(status("SERVER_ERROR out of memory storing object\r\n"), .outOfMemory)
        XCTAssertEqual(status("SERVER_ERROR out of memory storing object\r\n", 0x11), .outOfMemory, "SetQ")
        XCTAssertEqual(status("SERVER_ERROR object too large for cache\r\n"), .valueTooLarge)
        XCTAssertEqual(status("SERVER_ERROR out of memory\r\n", 0x05), .outOfMemory, "Increment")
    }

    func testBase64() {
        for text in ["", "f", "fo", "foo", "foob", "fooba", "foobar", "meta:0"] {
            let encoded = Array(text.utf8).withUnsafeBytes { Base64.encode($0) }
            let length = encoded.withUnsafeBytes { Base64.decodedLength($0) }
            XCTAssertEqual(length, text.utf8.count)
            var output = [UInt8](repeating: 0, count: text.utf8.count)
            let count = encoded.withUnsafeBytes { source in output.withUnsafeMutableBytes { Base64.decode(source, into: $0) } }
            XCTAssertEqual(String(decoding: output[0..<count], as: UTF8.self), text)
        }
        XCTAssertEqual(Array("Zm9vYmFy".utf8).withUnsafeBytes { Base64.decodedLength($0) }, 6)
        XCTAssertNil(Array("Zm9=YmFy".utf8).withUnsafeBytes { Base64.decodedLength($0) })
        XCTAssertNil(Array("Zm9".utf8).withUnsafeBytes { Base64.decodedLength($0) })
    }

    func testMetaReplyFraming() {
        func frame(_ text: String, _ framing: MemcacheFraming) -> MemcacheReplyParser.Result {
            Array(text.utf8).withUnsafeBytes { MemcacheReplyParser.parse($0, framing: framing) }
        }
        XCTAssertEqual(frame("VA 3 f1\r\nabc\r\nHD\r\n", .meta), .reply(length: 14, isError: false))
        XCTAssertEqual(frame("EN\r\n", .meta), .reply(length: 4, isError: false))
        XCTAssertEqual(frame("VA 3 f1\r\nab", .meta), .incomplete)
        let batch = "VA 2 kx\r\nMN\r\nHD\r\nNF\r\nMN\r\n"
        XCTAssertEqual(frame(batch, .metaUntilNoop), .reply(length: 25, isError: false), "a value containing MN is data, not the end")
        XCTAssertEqual(frame("HD\r\nNF\r\nMN\r\n", .metaUntilNoop), .reply(length: 12, isError: false))
        XCTAssertEqual(frame("HD\r\nNF\r\n", .metaUntilNoop), .incomplete)
        XCTAssertEqual(frame("CLIENT_ERROR bad\r\nMN\r\n", .metaUntilNoop), .reply(length: 22, isError: true))
    }
}

final class ValueLineTests: XCTestCase {
    /// The memchr fast path of `valueLength` agrees with the general tokenizer on every shape.
    func testValueLengthFastPathAgreesWithTheTokenizer() {
        func general(_ text: String) -> Int? {
            Array(text.utf8).withUnsafeBytes { line in
                let end = line.count > 0 && line[line.count - 1] == 0x0d ? line.count - 1 : line.count
                let tokens = MemcacheRequestParser.tokenize(line, from: 0, to: end, maxTokens: 5)
                guard tokens.count == 4 || tokens.count == 5,
                      let value = MemcacheRequestParser.number(line, tokens[start: 3], tokens[end: 3], maxDigits: 10),
                      value <= UInt64(MemcacheReplyParser.maxValueLength) else { return nil }
                return Int(value)
            }
        }
        let lines = ["VALUE k 0 5", "VALUE k 0 5\r", "VALUE key\u{10}x 7 12 99\r", "VALUE k  0   5 ", "VALUE k 0", "VALUE k 0 5 6 7",
                     "VALUE  k 0 5", "VALUE k", "VALUE k 0 x", "VALUE k 0 99999999999", "VALUE k 0 -1", "VALUE a 1 2\r\r", "VALUE \(String(repeating: "z", count: 250)) 1 1048576",
                     // the one-space `<flags> <bytes>` path's edges: digit counts, the limit, what ends the line
                     "VALUE k 0 1073741824", "VALUE k 0 1073741825", "VALUE k 0 0123", "VALUE k 0 12345678901", "VALUE k 0 9999999999",
                     "VALUE k 0 5x", "VALUE k 0 ", "VALUE k x 5\r", "VALUE k 0\r", "VALUE k 0 5 \r", "VALUE k 4294967295 3\r"]
        for line in lines {
            XCTAssertEqual(Array(line.utf8).withUnsafeBytes { MemcacheReplyParser.valueLength($0) }, general(line), line.debugDescription)
        }
    }
}

final class BinaryGetLineTests: XCTestCase {
    /// The binary front's Get skips parsing its own `gets` line: what it assumes is what the
    /// parser makes of that line, for plain keys under both key rules.
    func testGetsRequestMatchesTheParser() {
        for strict in [true, false] {
            let limits = MemcacheLimits(strictKeys: strict)
            for key in ["k", "user:42", String(repeating: "x", count: 250)] + (strict ? [] : ["\u{10}\u{3}ctl\u{7f}"]) {
                let line = Array("gets \(key)\r\n".utf8)
                let parsed = line.withUnsafeBytes { MemcacheRequestParser.parse($0, limits: limits) }
                XCTAssertEqual(parsed, .request(.gets(keyLength: key.utf8.count)), key.debugDescription)
            }
        }
    }
}
