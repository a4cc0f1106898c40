import XCTest
@testable import TernCore

/// The request encoders write exact bytes, and what they write parses as Tern's own parsers
/// read requests.
final class RequestEncoderTests: XCTestCase {
    func encoded(_ body: (ByteArraySink) -> Void) -> String {
        let sink = ByteArraySink()
        body(sink)
        return String(decoding: sink.bytes, as: UTF8.self)
    }

    func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    func testRespElements() {
        XCTAssertEqual(encoded { RespEncoder.arrayHeader(0, into: $0) }, "*0\r\n")
        XCTAssertEqual(encoded { RespEncoder.arrayHeader(12, into: $0) }, "*12\r\n")
        XCTAssertEqual(encoded { RespEncoder.arrayHeader(-1, into: $0) }, "*-1\r\n")
        XCTAssertEqual(encoded { RespEncoder.integer(0, into: $0) }, ":0\r\n")
        XCTAssertEqual(encoded { RespEncoder.integer(-42, into: $0) }, ":-42\r\n")
        XCTAssertEqual(encoded { RespEncoder.integer(Int.max, into: $0) }, ":9223372036854775807\r\n")
        XCTAssertEqual(encoded { RespEncoder.integer(Int.min, into: $0) }, ":-9223372036854775808\r\n")
        XCTAssertEqual(encoded { RespEncoder.bulk("GET", into: $0) }, "$3\r\nGET\r\n")
        XCTAssertEqual(encoded { RespEncoder.bulk("", into: $0) }, "$0\r\n\r\n")
        XCTAssertEqual(encoded { RespEncoder.bulk("héllo" as String, into: $0) }, "$6\r\nhéllo\r\n")
        XCTAssertEqual(encoded { RespEncoder.bulk(decimal: 1500, into: $0) }, "$4\r\n1500\r\n")
        XCTAssertEqual(encoded { RespEncoder.bulk(decimal: 0, into: $0) }, "$1\r\n0\r\n")
        XCTAssertEqual(encoded { RespEncoder.bulk(decimal: -7, into: $0) }, "$2\r\n-7\r\n")
        // Binary data with CRLF and NUL inside, exactly.
        let binary: [UInt8] = [0, 13, 10, 255, 36]
        let sink = ByteArraySink()
        binary.withUnsafeBytes { RespEncoder.bulk($0, into: sink) }
        XCTAssertEqual(sink.bytes, bytes("$5\r\n") + binary + bytes("\r\n"))
        // The element helpers on any sink are the same encoders.
        XCTAssertEqual(encoded { $0.appendArrayHeader(2); $0.appendBulk("a"); $0.appendInteger(3); $0.append(decimal: -10) }, "*2\r\n$1\r\na\r\n:3\r\n-10")
    }

    func testRespCommands() {
        XCTAssertEqual(encoded { RespEncoder.command("PING", into: $0) }, "*1\r\n$4\r\nPING\r\n")
        XCTAssertEqual(encoded { RespEncoder.command("ASKING", into: $0) }, "*1\r\n$6\r\nASKING\r\n")
        XCTAssertEqual(encoded { sink in bytes("k\r\ny").withUnsafeBytes { RespEncoder.command("GET", $0, into: sink) } },
                       "*2\r\n$3\r\nGET\r\n$4\r\nk\r\ny\r\n")
        XCTAssertEqual(encoded { RespEncoder.command("AUTH", "s3cret", into: $0) }, "*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n")
        XCTAssertEqual(encoded { RespEncoder.command("SELECT", decimal: 15, into: $0) }, "*2\r\n$6\r\nSELECT\r\n$2\r\n15\r\n")
        XCTAssertEqual(String(decoding: RespEncoder.command(["SENTINEL", "get-master-addr-by-name", "mymaster"]), as: UTF8.self),
                       "*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n$8\r\nmymaster\r\n")
        XCTAssertEqual(String(decoding: RespEncoder.command([]), as: UTF8.self), "*0\r\n")
    }

    func testRespSetIfAbsent() {
        func set(_ milliseconds: Int) -> String {
            encoded { sink in
                bytes("key").withUnsafeBytes { key in
                    bytes("$3\r\nv\r\n\r\n").withUnsafeBytes { RespEncoder.setIfAbsent(key: key, encodedValue: $0, milliseconds: milliseconds, into: sink) }
                }
            }
        }
        XCTAssertEqual(set(0), "*4\r\n$3\r\nSET\r\n$3\r\nkey\r\n$3\r\nv\r\n\r\n$2\r\nNX\r\n")
        XCTAssertEqual(set(86_400_000), "*6\r\n$3\r\nSET\r\n$3\r\nkey\r\n$3\r\nv\r\n\r\n$2\r\nPX\r\n$8\r\n86400000\r\n$2\r\nNX\r\n")
        // What Tern writes, Tern's request parser reads back as the same arguments.
        let arguments = RespArguments()
        bytes(set(1500)).withUnsafeBytes { raw in
            XCTAssertEqual(RespRequestParser.parse(raw, limits: RespLimits(), into: arguments), .request(length: raw.count))
            XCTAssertEqual((0..<arguments.count).map { arguments.argumentString($0, in: raw) }, ["SET", "key", "v\r\n", "PX", "1500", "NX"])
        }
    }

    func testMemcacheMeta() {
        XCTAssertEqual(encoded { MemcacheEncoder.noop(into: $0) }, "mn\r\n")
        XCTAssertEqual(encoded { sink in bytes("foo").withUnsafeBytes { MemcacheEncoder.metaGetItem(key: $0, base64: false, opaque: 7, into: sink) } },
                       "mg foo s v f t q O7\r\n")
        XCTAssertEqual(encoded { sink in bytes("Zm9v").withUnsafeBytes { MemcacheEncoder.metaGetItem(key: $0, base64: true, opaque: 12345, into: sink) } },
                       "mg Zm9v b s v f t q O12345\r\n")
        let value: [UInt8] = [0x00, 0x0d, 0x0a, 0xff]
        func add(base64: Bool, ttl: Int, flags: UInt32) -> [UInt8] {
            let sink = ByteArraySink()
            bytes("foo").withUnsafeBytes { key in
                value.withUnsafeBytes { MemcacheEncoder.metaAdd(key: key, value: $0, ttl: ttl, flags: flags, base64: base64, into: sink) }
            }
            return sink.bytes
        }
        XCTAssertEqual(add(base64: false, ttl: 300, flags: 0), bytes("ms foo 4 T300 F0 c ME\r\n") + value + bytes("\r\n"))
        XCTAssertEqual(add(base64: true, ttl: 0, flags: UInt32.max), bytes("ms foo 4 b T0 F4294967295 c ME\r\n") + value + bytes("\r\n"))
        // The parser reads it as one whole ms request with its data block.
        add(base64: false, ttl: 300, flags: 7).withUnsafeBytes { raw in
            guard case let .request(request) = MemcacheRequestParser.parse(raw, limits: MemcacheLimits()) else { return XCTFail() }
            XCTAssertEqual(request.command, .metaSet)
            XCTAssertEqual(request.frameLength, raw.count)
            XCTAssertEqual(request.dataLength, 4)
        }
        // Taken back (a delete raced the copy): `md` of the same key form, by the stored CAS.
        for (base64, expected) in [(false, "md foo C18446744073709551615\r\n"), (true, "md foo b C7\r\n")] {
            let undo = ByteArraySink()
            let done = add(base64: base64, ttl: 300, flags: 7).withUnsafeBytes {
                WarmupCopy.memcachedUndo(copy: $0, cas: base64 ? 7 : UInt64.max, into: undo)
            }
            XCTAssertTrue(done)
            XCTAssertEqual(undo.bytes, bytes(expected))
        }
        XCTAssertEqual(bytes("HD c42\r\n").withUnsafeBytes { WarmupCopy.storedCAS($0) }, 42)
        XCTAssertEqual(bytes("HD b k1 c9 t5\r\n").withUnsafeBytes { WarmupCopy.storedCAS($0) }, 9)
        XCTAssertNil(bytes("NS c42\r\n").withUnsafeBytes { WarmupCopy.storedCAS($0) })
        XCTAssertNil(bytes("HD\r\n").withUnsafeBytes { WarmupCopy.storedCAS($0) })
        // Redis: the copy's key and value, compared by a script before it deletes.
        let copy = ByteArraySink()
        bytes("k\r\n1").withUnsafeBytes { key in
            bytes("$3\r\na\r\n\r\n").withUnsafeBytes { RespEncoder.setIfAbsent(key: key, encodedValue: $0, milliseconds: 5000, into: copy) }
        }
        let undo = ByteArraySink()
        XCTAssertTrue(copy.bytes.withUnsafeBytes { WarmupCopy.redisUndo(copy: $0, into: undo) })
        let script = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
        XCTAssertEqual(undo.bytes, bytes("*5\r\n$4\r\nEVAL\r\n$\(script.utf8.count)\r\n\(script)\r\n$1\r\n1\r\n$4\r\nk\r\n1\r\n$3\r\na\r\n\r\n"))
        XCTAssertFalse(bytes("*2\r\n$3\r\nGET\r\n").withUnsafeBytes { WarmupCopy.redisUndo(copy: $0, into: ByteArraySink()) })
    }

    func testMemcacheText() {
        XCTAssertEqual(encoded { sink in bytes("k1").withUnsafeBytes { MemcacheEncoder.gets(key: $0, into: sink) } }, "gets k1\r\n")
        XCTAssertEqual(encoded { sink in
            bytes("300").withUnsafeBytes { MemcacheEncoder.retrievalStart(.gat, exptime: $0, into: sink) }
            bytes("a").withUnsafeBytes { MemcacheEncoder.key($0, into: sink) }
            bytes("bb").withUnsafeBytes { MemcacheEncoder.key($0, into: sink) }
            MemcacheEncoder.endLine(into: sink)
        }, "gat 300 a bb\r\n")
        XCTAssertEqual(encoded { sink in
            bytes("").withUnsafeBytes { MemcacheEncoder.retrievalStart(.get, exptime: $0, into: sink) }
            bytes("a").withUnsafeBytes { MemcacheEncoder.key($0, into: sink) }
            MemcacheEncoder.endLine(into: sink)
        }, "get a\r\n")
        XCTAssertEqual(encoded { sink in
            bytes("gets").withUnsafeBytes { MemcacheEncoder.retrievalStart($0, into: sink) }
            bytes("x").withUnsafeBytes { MemcacheEncoder.key($0, into: sink) }
            MemcacheEncoder.endLine(into: sink)
        }, "gets x\r\n")
    }

    /// `noreply` dropped, the data block kept as it came (a request that follows is not taken).
    func testWithoutNoreply() {
        func strip(_ text: String) -> String {
            bytes(text).withUnsafeBytes { raw in
                guard case let .request(request) = MemcacheRequestParser.parse(raw, limits: MemcacheLimits()) else { return "not parsed" }
                return encoded { MemcacheEncoder.withoutNoreply(raw, request, into: $0) }
            }
        }
        XCTAssertEqual(strip("set k 1 2 3 noreply\r\nabc\r\nget k\r\n"), "set k 1 2 3\r\nabc\r\n")
        XCTAssertEqual(strip("delete k noreply\r\n"), "delete k\r\n")
        XCTAssertEqual(strip("delete k\r\n"), "delete k\r\n")
        XCTAssertEqual(strip("flush_all noreply\n"), "flush_all\r\n")
    }

    /// Replies Tern answers from an item it holds (warm-up hits in the old pool), the value binary.
    func testMemcacheReplies() {
        let value: [UInt8] = [0x0d, 0x0a, 0x00, 0xff]
        func record(flags: UInt32) -> [UInt8] {
            let sink = ByteArraySink()
            bytes("foo").withUnsafeBytes { key in value.withUnsafeBytes { MemcacheReplyEncoder.valueRecord(key: key, flags: flags, value: $0, into: sink) } }
            return sink.bytes
        }
        XCTAssertEqual(record(flags: 0), bytes("VALUE foo 0 4\r\n") + value + bytes("\r\n"))
        XCTAssertEqual(record(flags: UInt32.max), bytes("VALUE foo 4294967295 4\r\n") + value + bytes("\r\n"))
        func meta(_ request: String, ttl: Int?) -> [UInt8] {
            let sink = ByteArraySink()
            bytes(request).withUnsafeBytes { request in
                bytes("Zm9v").withUnsafeBytes { key in
                    value.withUnsafeBytes { MemcacheReplyEncoder.metaReply(to: request, key: key, flags: 7, ttl: ttl, value: $0, into: sink) }
                }
            }
            return sink.bytes
        }
        XCTAssertEqual(meta("mg Zm9v b v f t s k Oab q\r\n", ttl: 99), bytes("VA 4 b f7 t99 s4 kZm9v Oab\r\n") + value + bytes("\r\n"))
        XCTAssertEqual(meta("mg foo  t   f\r\n", ttl: nil), bytes("HD t-1 f7\r\n"))
        XCTAssertEqual(meta("mg foo\r\n", ttl: 5), bytes("HD\r\n"))
        XCTAssertEqual(meta("mg foo v\n", ttl: 5), bytes("VA 4\r\n") + value + bytes("\r\n"))
        // CAS, hit-before and last-access are not known of an item read elsewhere: 0.
        XCTAssertEqual(meta("mg foo c h l f\r\n", ttl: 5), bytes("HD c0 h0 l0 f7\r\n"))
    }
}
