import XCTest
@testable import TernCore

final class RespCodecTests: XCTestCase {
    /// The whole length of a bulk reply from its header (streaming of large replies).
    func testBulkFrameLength() {
        func length(_ text: String) -> Int? { Array(text.utf8).withUnsafeBytes { RespReplyParser.bulkFrameLength($0) } }
        XCTAssertEqual(length("$5\r\nhel"), 11)
        XCTAssertEqual(length("$0\r\n\r\n"), 6)
        XCTAssertEqual(length("$1048576\r\n"), 10 + 1_048_576 + 2)
        XCTAssertNil(length("$-1\r\n"))
        XCTAssertNil(length("$01\r\nx"))
        XCTAssertNil(length("$5\r"))
        XCTAssertNil(length("+OK\r\n"))
        XCTAssertNil(length("*2\r\n$1\r\na"))
    }

    /// The bytes a request still arriving will take at least, from its declared lengths (a
    /// client buffer is sized once for a large argument).
    func testDeclaredLengthOfARequestStillArriving() {
        func declared(_ text: String, maxHeaders: Int = 16) -> Int {
            Array(text.utf8).withUnsafeBytes { RespRequestParser.declaredLength($0, maxHeaders: maxHeaders) }
        }
        // SET k <1 MiB>: the whole frame, from the value's header.
        let head = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1048576\r\n"
        XCTAssertEqual(declared(head + "abc"), head.utf8.count + 1_048_576 + 2)
        // Up to the bulk being received when a later header has not come yet.
        XCTAssertEqual(declared("*3\r\n$3\r\nSET\r\n$100\r\nab"), 4 + 9 + 6 + 100 + 2)
        XCTAssertEqual(declared("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10"), 4 + 9 + 7)
        XCTAssertEqual(declared("*3\r\n"), 4)
        // Nothing for inline commands, invalid headers or requests with many arguments.
        XCTAssertEqual(declared("SET k v"), 0)
        XCTAssertEqual(declared("*02\r\n$3\r\nSET"), 0)
        XCTAssertEqual(declared("*300000\r\n$4\r\nMGET\r\n"), 0)
        XCTAssertEqual(declared("*4\r\n$4\r\nMGET\r\n$1\r\na\r\n$1", maxHeaders: 3), 0)
    }

    /// The same for replies (a backend connection's buffer sized once for a large reply).
    func testDeclaredLengthOfAReplyStillArriving() {
        func declared(_ text: String, maxElements: Int = 64) -> Int {
            Array(text.utf8).withUnsafeBytes { RespReplyParser.declaredLength($0, maxElements: maxElements) }
        }
        XCTAssertEqual(declared("$1048576\r\nab"), 10 + 1_048_576 + 2)
        // An LRANGE-like array: nil, integer, status and error elements are walked over.
        let head = "*5\r\n$-1\r\n:7\r\n+OK\r\n-ERR x\r\n$1000\r\n"
        XCTAssertEqual(declared(head + "abc"), head.utf8.count + 1000 + 2)
        XCTAssertEqual(declared("*2\r\n$3\r\nabc\r\n$10"), 4 + 9)
        XCTAssertEqual(declared("*2\r\n:12"), 4)
        // Unknown: nested arrays stop the walk; too many elements; other replies.
        XCTAssertEqual(declared("*2\r\n*1\r\n$100\r\n"), 4)
        XCTAssertEqual(declared("*100\r\n$5\r\n", maxElements: 64), 0)
        XCTAssertEqual(declared("+OK"), 0)
        XCTAssertEqual(declared("$-1\r\n"), 0)
    }

    func parse(_ text: String, limits: RespLimits = RespLimits()) -> (RespParseResult, [String]) {
        parse(Array(text.utf8), limits: limits)
    }

    func parse(_ bytes: [UInt8], limits: RespLimits = RespLimits()) -> (RespParseResult, [String]) {
        let arguments = RespArguments()
        return bytes.withUnsafeBytes { raw in
            let result = RespRequestParser.parse(raw, limits: limits, into: arguments)
            guard case .request = result else { return (result, []) }
            return (result, (0..<arguments.count).map { arguments.argumentString($0, in: raw) })
        }
    }

    func testMultibulkAndInline() {
        XCTAssertEqual(parse("*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n").1, ["GET", "key"])
        XCTAssertEqual(parse("*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n").0, .request(length: 22))
        XCTAssertEqual(parse("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n").1, ["SET", "k", ""])
        XCTAssertEqual(parse("*1\r\n$5\r\nPI\r\nG\r\n").1, ["PI\r\nG"], "binary-safe bulk strings")
        XCTAssertEqual(parse("PING\r\n").1, ["PING"])
        XCTAssertEqual(parse("set  a   b\n").1, ["set", "a", "b"])
        XCTAssertEqual(parse("SET k \"a b\\x41\\n\"\r\n").1, ["SET", "k", "a bA\n"])
        XCTAssertEqual(parse("ECHO 'it\\'s'\r\n").1, ["ECHO", "it's"])
        // As Redis's sdssplitargs: a quoted section may start anywhere in an argument (fails on
        // 741ef5c: a quote was a quote only at an argument's start).
        XCTAssertEqual(parse("SET k\"1 2\" v\r\n").1, ["SET", "k1 2", "v"])
        XCTAssertEqual(parse("SET a b\"c d\"\r\n").1, ["SET", "a", "bc d"])
        XCTAssertEqual(parse("SET a x'y z'\r\n").1, ["SET", "a", "xy z"])
        XCTAssertEqual(parse("SET a x\"y\r\n").0, .protocolError("unbalanced quotes in request"))
        XCTAssertEqual(parse("SET a \\\"b\r\n").0, .protocolError("unbalanced quotes in request"))
        XCTAssertEqual(parse("ECHO \"\\x41\\x4\"\r\n").1, ["ECHO", "Ax4"], "an incomplete \\x escape is the letter x")
        XCTAssertEqual(parse("ECHO a\u{0B}b\r\n").1, ["ECHO", "a\u{0B}b"], "only space, tab, CR and LF end an unquoted argument")
        XCTAssertEqual(parse("ECHO \"\"\r\n").1, ["ECHO", ""])
        XCTAssertEqual(parse("SET a\u{0}b v\r\n").0, .protocolError("invalid NUL byte in inline request"))
        XCTAssertEqual(parse("\r\n").0, .empty(length: 2))
        XCTAssertEqual(parse("*0\r\n").0, .empty(length: 4))
        XCTAssertEqual(parse("*-1\r\n").0, .empty(length: 5))
    }

    /// Each multibulk argument's encoded bytes (header to closing CRLF) are where
    /// `encodedStart`/`encodedEnd` say, for lengths of one to six digits: the bytes
    /// `RespEncoder.bulk` would write for the argument.
    func testEncodedArgumentRanges() {
        let values = ["SET", "", "k", String(repeating: "v", count: 9), String(repeating: "v", count: 10),
                      String(repeating: "w", count: 100), String(repeating: "x", count: 1000),
                      String(repeating: "y", count: 10_000), String(repeating: "z", count: 100_000)]
        let request = Array(("*\(values.count)\r\n" + values.map { "$\($0.utf8.count)\r\n\($0)\r\n" }.joined()).utf8)
        let arguments = RespArguments()
        request.withUnsafeBytes { raw in
            XCTAssertEqual(RespRequestParser.parse(raw, limits: RespLimits(), into: arguments), .request(length: request.count))
            for (index, value) in values.enumerated() {
                let encoded = String(decoding: raw[arguments.encodedStart(index)..<arguments.encodedEnd(index)], as: UTF8.self)
                XCTAssertEqual(encoded, "$\(value.utf8.count)\r\n\(value)\r\n", "argument \(index)")
            }
            XCTAssertEqual(arguments.encodedStart(0), 4)
            XCTAssertEqual(arguments.encodedEnd(values.count - 1), request.count)
        }
    }

    /// One argument list reused across requests: it grows past its first capacity (16) with a
    /// large request and still answers a small one after it, multibulk and inline alike.
    func testArgumentListGrowsAndIsReused() {
        let arguments = RespArguments()
        func run(_ text: String) -> [String] {
            Array(text.utf8).withUnsafeBytes { raw in
                guard case let .request(length) = RespRequestParser.parse(raw, limits: RespLimits(), into: arguments) else { return [] }
                XCTAssertEqual(length, raw.count)
                return (0..<arguments.count).map { arguments.argumentString($0, in: raw) }
            }
        }
        let keys = (0..<100).map { "key:\($0)" }
        let large = "*101\r\n$4\r\nMGET\r\n" + keys.map { "$\($0.utf8.count)\r\n\($0)\r\n" }.joined()
        XCTAssertEqual(run(large), ["MGET"] + keys)
        XCTAssertEqual(run("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"), ["GET", "k"])
        XCTAssertEqual(run("MGET " + keys.joined(separator: " ") + "\r\n"), ["MGET"] + keys)
        XCTAssertEqual(run("GET x\r\n"), ["GET", "x"])
        XCTAssertEqual(run(large), ["MGET"] + keys)
    }

    /// The short-header fast path answers only what the general reader would answer.
    func testShortHeaderAgreesWithTheGeneralReader() {
        var inputs = ["$\r\n", "$-1\r\n", "$1x\r\n", "$12", "$12\r", "$12\n\r", "$00012\r\n", "$123456\r\n", "*2\r\n$3\r\n"]
        for value in [0, 1, 9, 10, 99, 100, 999, 1000, 9999, 10000, 65536] { inputs.append("$\(value)\r\n") }
        for text in inputs {
            let bytes = Array(text.utf8)
            for cut in 0...bytes.count {
                Array(bytes[0..<cut]).withUnsafeBytes { prefix in
                    guard let short = RespRequestParser.shortHeader(prefix, at: 0) else { return }
                    guard case let .value(value, next) = RespRequestParser.header(prefix, at: 0, maxDigits: 10) else {
                        return XCTFail("short path answered \(short) for \(text.debugDescription) cut at \(cut)")
                    }
                    XCTAssertEqual(short.value, value, text)
                    XCTAssertEqual(short.next, next, text)
                }
            }
        }
        // quickHeader (the short path, then a nil's `-1`, then the general reader) answers exactly
        // what the general reader answers, for every prefix.
        inputs += ["$-1\r\n", "$-10\r\n", "$-0\r\n", "$-1x\r\n", "$-2\r\n", "$-1\n", "$-\r\n", "$0\r\n", "$01\r\n", "$99999999999\r\n"]
        for text in inputs {
            let bytes = Array(text.utf8)
            for cut in 0...bytes.count {
                Array(bytes[0..<cut]).withUnsafeBytes { prefix in
                    let quick = RespRequestParser.quickHeader(prefix, at: 0, maxDigits: 10)
                    let general = RespRequestParser.header(prefix, at: 0, maxDigits: 10)
                    XCTAssertEqual("\(quick)", "\(general)", "\(text.debugDescription) cut at \(cut)")
                }
            }
        }
        XCTAssertNil(Array("$12345\r\n".utf8).withUnsafeBytes { RespRequestParser.shortHeader($0, at: 0) }, "five digits go the general way")
        XCTAssertEqual(Array("$1234\r\n".utf8).withUnsafeBytes { RespRequestParser.shortHeader($0, at: 0)?.value }, 1234)
    }

    func testEveryPrefixIsIncomplete() {
        for frame in ["*3\r\n$3\r\nSET\r\n$5\r\nhello\r\n$5\r\nworld\r\n", "PING\r\n", "*1\r\n$0\r\n\r\n", "GET \"quoted key\"\r\n"] {
            let bytes = Array(frame.utf8)
            for cut in 0..<bytes.count {
                XCTAssertEqual(parse(Array(bytes[0..<cut])).0, .incomplete, "\(frame.debugDescription) cut at \(cut)")
            }
            XCTAssertEqual(parse(bytes).0, .request(length: bytes.count))
        }
    }

    func testProtocolErrorsBeforeAllocation() {
        XCTAssertEqual(parse("*99999999999\r\n").0, .protocolError("invalid multibulk length"))
        XCTAssertEqual(parse("*1\r\n$-5\r\n").0, .protocolError("invalid bulk length"))
        XCTAssertEqual(parse("*1\r\n$99999999999\r\n").0, .protocolError("invalid bulk length"))
        XCTAssertEqual(parse("*1\r\n$536870913\r\n").0, .protocolError("invalid bulk length"))
        XCTAssertEqual(parse("*abc\r\n").0, .protocolError("invalid multibulk length"))
        XCTAssertEqual(parse("*1\r\n:1\r\n").0, .protocolError("expected '$', got ':'"))
        XCTAssertEqual(parse("*1\r\n$3\r\nGETX\r\n").0, .protocolError("bulk string not terminated by CRLF"))
        XCTAssertEqual(parse("SET 'a\r\n").0, .protocolError("unbalanced quotes in request"))
        XCTAssertEqual(parse("SET \"a\"b\r\n").0, .protocolError("unbalanced quotes in request"))
        XCTAssertEqual(parse([UInt8](repeating: 0x61, count: 70_000)).0, .protocolError("too big inline request"))
        var small = RespLimits()
        small.maxBulkLength = 10
        small.maxArguments = 3
        XCTAssertEqual(parse("*1\r\n$11\r\n", limits: small).0, .protocolError("invalid bulk length"))
        XCTAssertEqual(parse("*4\r\n", limits: small).0, .protocolError("invalid multibulk length"))
        // A 512 MiB bulk header is accepted (and waits for its data) without allocating it.
        XCTAssertEqual(parse("*1\r\n$536870912\r\n").0, .incomplete)
        XCTAssertEqual(parse("*1\r\n$1234567890123456789").0, .protocolError("invalid bulk length"))
    }

    func testReplyFramingAndDepth() {
        func frame(_ text: String, depth: Int = 64) -> RespReplyParser.Result {
            Array(text.utf8).withUnsafeBytes { RespReplyParser.parse($0, maxDepth: depth) }
        }
        let nested = "*3\r\n:1\r\n*2\r\n$3\r\nabc\r\n$-1\r\n*0\r\n"
        XCTAssertEqual(frame(nested), .reply(length: nested.utf8.count, isError: false))
        for cut in 0..<nested.utf8.count {
            XCTAssertEqual(Array(nested.utf8)[0..<cut].withUnsafeBytes { RespReplyParser.parse($0) }, .incomplete, "cut \(cut)")
        }
        XCTAssertEqual(frame("+OK\r\n+PONG\r\n"), .reply(length: 5, isError: false))
        XCTAssertEqual(frame("-ERR nope\r\n"), .reply(length: 11, isError: true))
        XCTAssertEqual(frame("*-1\r\n"), .reply(length: 5, isError: false))
        // A line or bulk string at the top is framed without the walk: it must frame as the walk
        // frames it one level down (inside `*1`), for every prefix, valid or not.
        for reply in ["+OK\r\n", "-ERR x\r\n", ":12\r\n", ":-3\r\n", "$3\r\nabc\r\n", "$0\r\n\r\n", "$-1\r\n", "$-5\r\n",
                      "$12345\r\n" + String(repeating: "v", count: 12345) + "\r\n", "$01\r\nx\r\n", "$-0\r\n", "$x\r\n", "$3\r\nab"] {
            let bytes = Array(reply.utf8)
            for cut in 0...bytes.count {
                let top = Array(bytes[0..<cut]).withUnsafeBytes { RespReplyParser.parse($0) }
                let inside = (Array("*1\r\n".utf8) + bytes[0..<cut]).withUnsafeBytes { RespReplyParser.parse($0) }
                switch (top, inside) {
                case (.incomplete, .incomplete), (.invalid, .invalid): break
                case let (.reply(length, isError), .reply(insideLength, _)):
                    XCTAssertEqual(length + 4, insideLength, "\(reply.prefix(20).debugDescription) cut at \(cut)")
                    XCTAssertEqual(isError, reply.hasPrefix("-"))
                default:
                    XCTFail("\(reply.prefix(20).debugDescription) cut at \(cut): \(top) at the top, \(inside) inside")
                }
            }
        }
        XCTAssertEqual(frame("?\r\n"), .invalid)
        let deep = String(repeating: "*1\r\n", count: 5) + ":1\r\n"
        XCTAssertEqual(frame(deep, depth: 5), .reply(length: deep.utf8.count, isError: false))
        XCTAssertEqual(frame(deep, depth: 4), .invalid)
        var elements: [String] = []
        Array(nested.utf8).withUnsafeBytes { raw in
            RespReplyParser.forEachElement(raw) { elements.append(String(decoding: raw[$0], as: UTF8.self)) }
        }
        XCTAssertEqual(elements, [":1\r\n", "*2\r\n$3\r\nabc\r\n$-1\r\n", "*0\r\n"])
    }

    func testCommandTableIsConsistent() {
        var seen = Set<String>()
        for command in RedisCommandTable.commands {
            XCTAssertEqual(command.name, command.name.lowercased())
            XCTAssertTrue(seen.insert(command.name).inserted, "duplicate \(command.name)")
            XCTAssertNotEqual(command.arity, 0, command.name)
        }
        XCTAssertGreaterThan(seen.count, 200)
        XCTAssertEqual(Array("GeT".utf8).withUnsafeBytes { RedisCommandTable.lookup($0)?.name }, "get")
        // Every command is found by its name in any case, the longest included.
        // One row per name: /metrics writes a series per row (`tern_command_requests_total`).
        XCTAssertEqual(Set(RedisCommandTable.commands.map(\.name)).count, RedisCommandTable.commands.count)
        for command in RedisCommandTable.commands {
            XCTAssertEqual(Array(command.name.uppercased().utf8).withUnsafeBytes { RedisCommandTable.lookup($0)?.name }, command.name)
        }
        XCTAssertNil(Array("getx".utf8).withUnsafeBytes { RedisCommandTable.lookup($0) })
        // isNamed compares whole names as bytes.
        let get = RedisCommandTable.byName["get"]!
        XCTAssertTrue(get.isNamed("get"))
        XCTAssertFalse(get.isNamed("getex"))
        XCTAssertFalse(get.isNamed("ge"))
        XCTAssertFalse(get.isNamed("GET"))
        XCTAssertTrue(RedisCommandTable.byName["unlink"]!.isNamed("unlink"))
        XCTAssertNil(Array(String(repeating: "a", count: 30).utf8).withUnsafeBytes { RedisCommandTable.lookup($0) })
        // Lower-casing eight bytes at a time touches only A-Z: not the bytes beside them in
        // ASCII ('@', '[', DEL), not bytes with the high bit set, and a trailing zero byte
        // does not make a longer name equal to a shorter one.
        for bytes: [UInt8] in [[0x47, 0x45, 0x54, 0x00], [0xC7, 0x45, 0x54], [0x67, 0x65, 0x74, 0x40], [0x5B, 0x65, 0x74],
                               Array("georadius\u{7F}ro".utf8), Array("GEORADIUSBYMEMBER@RO".utf8)] {
            XCTAssertNil(bytes.withUnsafeBytes { RedisCommandTable.lookup($0) }, "\(bytes)")
        }
        XCTAssertEqual(Array("GEORADIUSBYMEMBER_RO".utf8).withUnsafeBytes { RedisCommandTable.lookup($0)?.name }, "georadiusbymember_ro")
        XCTAssertEqual(Array("zUnIoNsToRe".utf8).withUnsafeBytes { RedisCommandTable.lookup($0)?.name }, "zunionstore")
        // COMMAND's flags are recorded for every command Tern serves, and only for those.
        let served = Set(RedisCommandTable.commands.filter { $0.routing != .unsupported }.map(\.name))
        XCTAssertEqual(Set(RedisCommandPresentation.byCommand.keys), served)
        XCTAssertEqual(RedisCommandPresentation.byCommand["get"]?.flags, ["readonly", "fast"])
        XCTAssertEqual(RedisCommandPresentation.byCommand["client"]?.categories, ["@slow"])
        XCTAssertNil(RedisCommandPresentation.byCommand["set"]?.categories)
    }

    /// A command name's packed words, read with overlapping loads, against the same words
    /// built a byte at a time: every length up to 24, random bytes (any case, high bits, zeros)
    /// inside a larger buffer whose bytes around the name must not count.
    func testPackedNameAgreesWithAByteLoop() {
        var generator = SystemRandomNumberGenerator()
        func lowered(_ byte: UInt8) -> UInt8 { byte >= 0x41 && byte <= 0x5A ? byte | 0x20 : byte }
        for length in 1...24 {
            for _ in 0..<400 {
                let before = Int.random(in: 0...9, using: &generator)
                let after = Int.random(in: 0...9, using: &generator)
                let buffer = (0..<(before + length + after)).map { _ in UInt8.random(in: 0...255, using: &generator) }
                var expected: [UInt64] = [0, 0, 0]
                for i in 0..<length { expected[i / 8] |= UInt64(lowered(buffer[before + i])) << UInt64(8 * (i % 8)) }
                buffer.withUnsafeBytes { all in
                    let name = UnsafeRawBufferPointer(rebasing: all[before..<(before + length)])
                    let packed = RedisCommandTable.PackedName(name)!
                    XCTAssertEqual([packed.words.0, packed.words.1, packed.words.2], expected, "\(Array(name))")
                    XCTAssertEqual(packed.length, length)
                }
            }
        }
        // Every command, in mixed case, between bytes that would spoil a load reaching past it.
        for command in RedisCommandTable.commands {
            let name = Array(command.name.utf8).enumerated().map { $0.offset % 2 == 0 && (0x61...0x7A).contains($0.element) ? $0.element - 0x20 : $0.element }
            let buffer: [UInt8] = [0x58, 0x59] + name + [0x0d, 0x0a, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47]
            buffer.withUnsafeBytes { all in
                XCTAssertEqual(RedisCommandTable.lookup(UnsafeRawBufferPointer(rebasing: all[2..<(2 + name.count)]))?.name, command.name)
            }
        }
    }

    /// The word-at-a-time newline scan against a byte loop: every range inside random buffers
    /// dense and sparse in `\n` (and in bytes one off from it, 0x0b and 0x09, and 0x8a, which a
    /// wrong zero-byte test would take), lines shorter and longer than the 16 bytes scanned
    /// before `memchr`, starts at every alignment.
    func testShortLineNewlineScanAgreesWithAByteLoop() {
        var generator = SystemRandomNumberGenerator()
        let alphabet: [UInt8] = [0x0a, 0x0b, 0x09, 0x8a, 0x0d, 0x41, 0x00, 0xff]
        for density in [2, 8, 40, 200] {
            for _ in 0..<300 {
                let count = Int.random(in: 0...120, using: &generator)
                let buffer = (0..<count).map { _ in
                    Int.random(in: 0..<density, using: &generator) == 0 ? 0x0a : alphabet[Int.random(in: 1..<alphabet.count, using: &generator)]
                }
                buffer.withUnsafeBytes { raw in
                    for from in 0...count {
                        let to = Int.random(in: from...count, using: &generator)
                        let expected = (from..<to).first { buffer[$0] == 0x0a }
                        XCTAssertEqual(findNewlineInShortLine(raw, from: from, to: to), expected, "\(buffer) \(from)..<\(to)")
                    }
                }
            }
        }
        // Simple replies framed through it, split at every byte.
        let replies = Array("+OK\r\n:12345\r\n-ERR a longer error line than thirty-two bytes here\r\n+QUEUED\r\n".utf8)
        var lengths: [Int] = []
        replies.withUnsafeBytes { raw in
            var position = 0
            while position < raw.count {
                guard case let .reply(length, _) = RespReplyParser.parse(UnsafeRawBufferPointer(rebasing: raw[position...])) else { return XCTFail("no reply at \(position)") }
                for cut in (position + 1)..<(position + length) {
                    XCTAssertEqual(RespReplyParser.parse(UnsafeRawBufferPointer(rebasing: raw[position..<cut])), .incomplete, "cut at \(cut)")
                }
                lengths.append(length)
                position += length
            }
        }
        XCTAssertEqual(lengths, [5, 8, 53, 9])
    }

    func keys(_ words: [String]) -> [String] {
        var bytes: [UInt8] = Array("*\(words.count)\r\n".utf8)
        for word in words { bytes += Array("$\(word.utf8.count)\r\n\(word)\r\n".utf8) }
        let arguments = RespArguments()
        return bytes.withUnsafeBytes { raw -> [String] in
            _ = RespRequestParser.parse(raw, limits: RespLimits(), into: arguments)
            let command = arguments.withArgument(0, in: raw) { RedisCommandTable.lookup($0) }!
            var found: [String] = []
            RedisKeyPositions.forEachKey(command, arguments, in: raw) { found.append(arguments.argumentString($0, in: raw)) }
            return found
        }
    }

    func testStreamReadOptions() {
        func options(_ words: [String]) -> [Int] {
            var bytes: [UInt8] = Array("*\(words.count)\r\n".utf8)
            for word in words { bytes += Array("$\(word.utf8.count)\r\n\(word)\r\n".utf8) }
            let arguments = RespArguments()
            return bytes.withUnsafeBytes { raw in
                _ = RespRequestParser.parse(raw, limits: RespLimits(), into: arguments)
                let found = RedisKeyPositions.streamReadOptions(arguments, in: raw)
                return [found.streamsAt, found.blockAt]
            }
        }
        XCTAssertEqual(options(["XREAD", "BLOCK", "100", "STREAMS", "s", "0"]), [3, 2])
        XCTAssertEqual(options(["XREAD", "COUNT", "1", "STREAMS", "block", "0"]), [3, -1], "a stream named block")
        XCTAssertEqual(options(["XREADGROUP", "GROUP", "block", "c", "STREAMS", "s", ">"]), [4, -1], "a group named block")
        XCTAssertEqual(options(["XREADGROUP", "GROUP", "g", "c", "count", "2", "block", "0", "noack", "streams", "s", ">"]), [9, 7])
        XCTAssertEqual(options(["XREAD", "BLOCK"]), [-1, -1])
        XCTAssertEqual(options(["XREAD", "FOO", "STREAMS", "s", "0"]), [-1, -1], "an unknown option ends the walk")
    }

    func testKeyPositions() {
        XCTAssertEqual(keys(["GET", "a"]), ["a"])
        XCTAssertEqual(keys(["MSET", "a", "1", "b", "2"]), ["a", "b"])
        XCTAssertEqual(keys(["DEL", "a", "b", "c"]), ["a", "b", "c"])
        XCTAssertEqual(keys(["EVAL", "s", "2", "k1", "k2", "arg"]), ["k1", "k2"])
        XCTAssertEqual(keys(["EVAL", "s", "0", "arg"]), [])
        XCTAssertEqual(keys(["ZUNIONSTORE", "dst", "2", "a", "b", "WEIGHTS", "1", "2"]), ["dst", "a", "b"])
        XCTAssertEqual(keys(["ZUNION", "2", "a", "b"]), ["a", "b"])
        XCTAssertEqual(keys(["LMPOP", "2", "a", "b", "LEFT"]), ["a", "b"])
        XCTAssertEqual(keys(["SINTERCARD", "2", "a", "b", "LIMIT", "1"]), ["a", "b"])
        XCTAssertEqual(keys(["BITOP", "AND", "dst", "a", "b"]), ["dst", "a", "b"])
        XCTAssertEqual(keys(["XREAD", "COUNT", "2", "STREAMS", "s1", "s2", "0", "0"]), ["s1", "s2"])
        // Options walked as Redis walks them: a group, consumer or stream named like a keyword
        // is not one (Redis commands sweep 31).
        XCTAssertEqual(keys(["XREADGROUP", "GROUP", "streams", "c0", "STREAMS", "orders", ">"]), ["orders"])
        XCTAssertEqual(keys(["XREADGROUP", "GROUP", "g", "streams", "NOACK", "BLOCK", "5", "STREAMS", "a", "b", ">", ">"]), ["a", "b"])
        XCTAssertEqual(keys(["XREAD", "STREAMS", "streams", "block", "0", "0"]), ["streams", "block"])
        XCTAssertEqual(keys(["OBJECT", "ENCODING", "k"]), ["k"])
        XCTAssertEqual(keys(["SORT", "k", "BY", "w", "STORE", "dst"]), ["k", "dst"])
        XCTAssertEqual(keys(["GEORADIUS", "g", "1", "2", "3", "km", "STORE", "dst"]), ["g", "dst"])
        XCTAssertEqual(keys(["LMOVE", "a", "b", "LEFT", "RIGHT"]), ["a", "b"])
        XCTAssertEqual(keys(["RENAME", "a", "b"]), ["a", "b"])
    }
}

/// Where keyspace notification channels are subscribed (`RedisChannelOrigin`).
final class RedisChannelOriginTests: XCTestCase {
    func origin(_ name: String) -> RedisChannelOrigin { Array(name.utf8).withUnsafeBytes { RedisChannelOrigin(channel: $0) } }

    func testKeyspaceKeyeventAndOtherChannels() {
        XCTAssertEqual(origin("__keyspace@0__:user:42"), .key(15..<22))
        XCTAssertEqual(origin("__keyspace@12__:k"), .key(16..<17))
        XCTAssertEqual(origin("__keyspace@0__:"), .key(15..<15), "the empty key, as Redis would name it")
        XCTAssertEqual(origin("__keyevent@0__:expired"), .everyServer)
        for other in ["news", "__keyspace@__:k", "__keyspace@0_:k", "__keyspace@x__:k", "__keyspace@0__", "__keyevent@0:k", "__KEYSPACE@0__:k", ""] {
            XCTAssertEqual(origin(other), .name, other)
        }
    }

    /// A Redis Cluster pool's patterns: those starting `__key` on every node, others on one.
    func testPatterns() {
        let pattern = { (name: String) in Array(name.utf8).withUnsafeBytes { RedisChannelOrigin(pattern: $0) } }
        for notification in ["__key*__:*", "__keyevent@0__:*", "__keyspace@*__:user:*", "__key"] {
            XCTAssertEqual(pattern(notification), .everyServer, notification)
        }
        for other in ["*", "news.*", "__k*", "_key*", "__KEY*", ""] { XCTAssertEqual(pattern(other), .name, other) }
    }
}
