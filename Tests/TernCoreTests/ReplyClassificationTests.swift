import XCTest
@testable import TernCore

final class ReplyClassificationTests: XCTestCase {
    func resp(_ text: String) -> RespReply { Array(text.utf8).withUnsafeBytes { RespReply.classify($0) } }
    func resp(_ bytes: [UInt8]) -> RespReply { bytes.withUnsafeBytes { RespReply.classify($0) } }
    func memcache(_ text: String) -> MemcacheReply { Array(text.utf8).withUnsafeBytes { MemcacheReply.classify($0) } }
    func memcache(_ bytes: [UInt8]) -> MemcacheReply { bytes.withUnsafeBytes { MemcacheReply.classify($0) } }

    func testRespKinds() {
        XCTAssertEqual(resp("+OK\r\n"), .ok)
        XCTAssertEqual(resp("+OKAY\r\n"), .status)
        XCTAssertEqual(resp("+PONG\r\n"), .status)
        XCTAssertEqual(resp("-ERR unknown command\r\n"), .error)
        XCTAssertTrue(resp("-ERR x\r\n").isError)
        XCTAssertEqual(resp(":42\r\n"), .integer(42))
        XCTAssertEqual(resp(":-2\r\n"), .integer(-2))
        XCTAssertEqual(resp("$3\r\nabc\r\n"), .bulk(value: 4..<7))
        XCTAssertEqual(resp("$0\r\n\r\n"), .bulk(value: 4..<4))
        XCTAssertEqual(resp("$-1\r\n"), .null)
        XCTAssertEqual(resp("*-1\r\n"), .null)
        XCTAssertEqual(resp("*0\r\n"), .array(count: 0))
        XCTAssertEqual(resp("*2\r\n$1\r\na\r\n:1\r\n"), .array(count: 2))
        // Binary data with CRLF inside a bulk string.
        XCTAssertEqual(resp([36, 52, 13, 10, 13, 10, 0, 255, 13, 10]), .bulk(value: 4..<8))
        // Bytes after the reply are not its business.
        XCTAssertEqual(resp("+OK\r\n+OK\r\n"), .ok)
        XCTAssertEqual(resp("$1\r\na\r\n$-1\r\n"), .bulk(value: 4..<5))
    }

    func testRespPush() {
        XCTAssertEqual(resp("*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"), .push)
        XCTAssertEqual(resp("*3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"), .push)
        XCTAssertEqual(resp("*4\r\n$8\r\npmessage\r\n$2\r\nc*\r\n$2\r\nch\r\n$2\r\nhi\r\n"), .push)
        // Subscription confirmations and other arrays are not messages.
        XCTAssertEqual(resp("*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"), .array(count: 3))
        XCTAssertEqual(resp("*2\r\n$7\r\nmessage\r\n$2\r\nch\r\n"), .array(count: 2))
    }

    func testRespRedirects() {
        func address(_ text: String) -> String? {
            let bytes = Array(text.utf8)
            switch resp(bytes) {
            case let .moved(_, range), let .ask(_, range): return String(decoding: bytes[range], as: UTF8.self)
            default: return nil
            }
        }
        XCTAssertEqual(resp("-MOVED 3999 127.0.0.1:6381\r\n"), .moved(slot: 3999, address: 12..<26))
        XCTAssertEqual(resp("-ASK 0 10.1.2.3:7000\r\n"), .ask(slot: 0, address: 7..<20))
        XCTAssertTrue(resp("-ASK 0 10.1.2.3:7000\r\n").isError)
        XCTAssertEqual(address("-MOVED 16383 ::1:7000\r\n"), "::1:7000", "IPv6 addresses come unbracketed")
        XCTAssertEqual(address("-MOVED 5 fe80::1ff:fe23:4567:890a:6379\r\n"), "fe80::1ff:fe23:4567:890a:6379")
        XCTAssertEqual(address("-ASK 12 redis-node-3.cache.internal:6379\r\n"), "redis-node-3.cache.internal:6379")
        XCTAssertEqual(address("-MOVED 7 :6380\r\n"), ":6380", "an unknown endpoint: the port alone")
        XCTAssertEqual(address("-MOVED  9   host:1\r\n"), "host:1")
        for text in ["-ERR MOVED 1 a:1\r\n", "-MOVED 16384 a:1\r\n", "-MOVED 1 a\r\n", "-MOVED 1 a:0\r\n", "-MOVED 1 a:65536\r\n",
                     "-MOVED x a:1\r\n", "-MOVED 1 a:1 extra\r\n", "-MOVEDX 1 a:1\r\n", "-ASK\r\n"] {
            XCTAssertEqual(resp(text), .error, text)
        }
        XCTAssertEqual(resp("+MOVED 1 a:1\r\n"), .status)
        XCTAssertEqual(resp("-TRYAGAIN Multiple keys request during rehashing of slot\r\n"), .tryAgain)
        XCTAssertEqual(resp("-TRY\r\n"), .error)
    }

    /// Bytes that stop inside a reply are incomplete; bytes that are no reply are invalid.
    func testRespPartialAndInvalid() {
        let whole = ["+OK\r\n", "-MOVED 3999 127.0.0.1:6381\r\n", ":12\r\n", "$3\r\nabc\r\n", "$-1\r\n", "*2\r\n$1\r\na\r\n:1\r\n",
                     "*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"]
        for text in whole {
            let bytes = Array(text.utf8)
            for cut in 0..<bytes.count {
                let kind = resp(Array(bytes[0..<cut]))
                // A cut just before the final LF of a simple line still lacks its end.
                XCTAssertEqual(kind, .incomplete, "\(text.debugDescription) cut at \(cut)")
            }
        }
        XCTAssertEqual(resp("!oops\r\n"), .invalid)
        XCTAssertEqual(resp("$3\r\nabcde\r\n"), .invalid)
        XCTAssertEqual(resp("$-2\r\n"), .invalid)
        XCTAssertEqual(resp("$01\r\na\r\n"), .invalid)
        XCTAssertEqual(resp(":x\r\n"), .invalid)
        XCTAssertEqual(resp("*1\r\n!x\r\n"), .invalid)
        // 19 digits past Int.max: refused, not an overflow trap (found by fuzz/run.sh).
        XCTAssertEqual(resp(":9999999999999999999\n"), .invalid)
        XCTAssertEqual(resp(":9999999999999999999\r\n"), .invalid)
        XCTAssertEqual(resp(":9223372036854775807\r\n"), .integer(Int.max))
        XCTAssertNil(Array(":9999999999999999999\r\n".utf8).withUnsafeBytes { RespReplyParser.integer($0) })
    }

    func testMemcacheKinds() {
        XCTAssertEqual(memcache("STORED\r\n"), .stored)
        XCTAssertEqual(memcache("NOT_STORED\r\n"), .notStored)
        XCTAssertEqual(memcache("EXISTS\r\n"), .exists)
        XCTAssertEqual(memcache("NOT_FOUND\r\n"), .notFound)
        XCTAssertEqual(memcache("DELETED\r\n"), .deleted)
        XCTAssertEqual(memcache("TOUCHED\r\n"), .touched)
        XCTAssertEqual(memcache("OK\r\n"), .ok)
        XCTAssertEqual(memcache("END\r\n"), .miss)
        XCTAssertEqual(memcache("42\r\n"), .number(42))
        XCTAssertEqual(memcache("VERSION 1.6.21\r\n"), .version)
        XCTAssertEqual(memcache("STAT pid 1\r\n"), .stat)
        XCTAssertEqual(memcache("ERROR\r\n"), .error(.command))
        XCTAssertEqual(memcache("CLIENT_ERROR bad data chunk\r\n"), .error(.client))
        XCTAssertEqual(memcache("SERVER_ERROR out of memory\r\n"), .error(.server))
        XCTAssertTrue(memcache("SERVER_ERROR x\r\n").isError)
        XCTAssertEqual(memcache("VALUE k 0 3\r\nabc\r\nEND\r\n"), .value)
        XCTAssertEqual(memcache("VALUE k 0 3 99\r\nabc\r\nEND\r\n"), .value)
        // Meta.
        XCTAssertEqual(memcache("HD\r\n"), .success)
        XCTAssertEqual(memcache("HD c5 t-1\r\n"), .success)
        XCTAssertEqual(memcache("EN\r\n"), .miss)
        XCTAssertEqual(memcache("NS\r\n"), .notStored)
        XCTAssertEqual(memcache("EX\r\n"), .exists)
        XCTAssertEqual(memcache("NF\r\n"), .notFound)
        XCTAssertEqual(memcache("MN\r\n"), .noop)
        XCTAssertEqual(memcache("ME k exp=-1\r\n"), .debug)
        XCTAssertEqual(memcache("VA 2 f1\r\nhi\r\n"), .value)
        XCTAssertEqual(memcache("VA 0\r\n\r\n"), .value)
        XCTAssertEqual(memcache("EN\n"), .miss, "a bare LF ends a line too")
    }

    func testMemcachePartialAndInvalid() {
        for text in ["STORED\r\n", "EN\r\n", "VA 3 f0\r\nabc\r\n", "VALUE k 0 3\r\nabc\r\n"] {
            let bytes = Array(text.utf8)
            for cut in 0..<bytes.count { XCTAssertEqual(memcache(Array(bytes[0..<cut])), .incomplete, "\(text.debugDescription) cut at \(cut)") }
        }
        for text in ["STOREDX\r\n", "ENX\r\n", "HDX\r\n", "VA x\r\nab\r\n", "VA 2\r\nabcd\r\n", "VALUE k 0\r\n", "4x\r\n", "\r\n", "END extra\r\n"] {
            XCTAssertEqual(memcache(text), .invalid, text.debugDescription)
        }
        XCTAssertEqual(memcache([UInt8](repeating: 0x41, count: 9000)), .invalid, "a line longer than any reply")
    }

    func read(_ bytes: [UInt8]) -> MetaItemReader.Result { bytes.withUnsafeBytes { MetaItemReader.read($0) } }

    func testMetaItemReader() {
        // A whole item as the warm-up asks for it, the value binary (CR, LF, NUL, 0xff inside).
        let value: [UInt8] = [0x0d, 0x0a, 0x00, 0xff, 0x41]
        let reply = Array("VA 5 s5 f4294967295 t-1 kfoo c77 b Oabc\r\n".utf8) + value + Array("\r\nMN\r\n".utf8)
        guard case let .item(item) = read(reply) else { return XCTFail() }
        XCTAssertEqual(item.status, .value)
        XCTAssertEqual(item.length, reply.count - 4)
        XCTAssertEqual(item.value.map { Array(reply[$0]) }, value)
        XCTAssertEqual(item.flags, UInt32.max)
        XCTAssertEqual(item.ttl, -1)
        XCTAssertEqual(item.cas, 77)
        XCTAssertEqual(item.key.map { String(decoding: reply[$0], as: UTF8.self) }, "foo")
        XCTAssertEqual(item.opaque.map { String(decoding: reply[$0], as: UTF8.self) }, "abc")
        XCTAssertTrue(item.isBase64Key)
        // The next reply starts where the item ends.
        guard case let .item(noop) = Array(reply[item.length...]).withUnsafeBytes({ MetaItemReader.read($0) }) else { return XCTFail() }
        XCTAssertEqual(noop.status, .noop)
        XCTAssertEqual(noop.length, 4)

        guard case let .item(timed) = read(Array("VA 0 t3600 f0\r\n\r\n".utf8)) else { return XCTFail() }
        XCTAssertEqual(timed.ttl, 3600)
        XCTAssertEqual(timed.flags, 0)
        XCTAssertEqual(timed.value, 15..<15)
        XCTAssertNil(timed.key)
        XCTAssertFalse(timed.isBase64Key)

        guard case let .item(miss) = read(Array("EN\r\n".utf8)) else { return XCTFail() }
        XCTAssertEqual(miss.status, .miss)
        XCTAssertEqual(miss.length, 4)
        XCTAssertNil(miss.value)
        guard case let .item(header) = read(Array("HD f3 t10 kbar\r\n".utf8)) else { return XCTFail() }
        XCTAssertEqual(header.status, .success)
        XCTAssertEqual(header.flags, 3)
        XCTAssertEqual(header.ttl, 10)
        XCTAssertNil(header.value)
        guard case let .item(failure) = read(Array("SERVER_ERROR busy\r\n".utf8)) else { return XCTFail() }
        XCTAssertEqual(failure.status, .error(.server))

        // Flags past their type are not read as numbers.
        guard case let .item(odd) = read(Array("HD f99999999999 tx\r\n".utf8)) else { return XCTFail() }
        XCTAssertNil(odd.flags)
        XCTAssertNil(odd.ttl)

        XCTAssertEqual(read(Array("VA 5 f1\r\nab".utf8)), .incomplete)
        XCTAssertEqual(read(Array("VA 5 f1".utf8)), .incomplete)
        XCTAssertEqual(read([]), .incomplete)
        XCTAssertEqual(read(Array("VALUE k 0 1\r\na\r\nEND\r\n".utf8)), .invalid, "a text reply is not a meta reply")
        XCTAssertEqual(read(Array("STORED\r\n".utf8)), .invalid)
    }

    /// `ClusterRedirect` is the classification with the address made a String.
    func testClusterRedirectFromClassification() {
        func parse(_ text: String) -> ClusterRedirect? { Array(text.utf8).withUnsafeBytes { ClusterRedirect.parse($0) } }
        XCTAssertEqual(parse("-ASK 12 redis-node-3.cache.internal:6379\r\n"), ClusterRedirect(isAsk: true, slot: 12, target: "redis-node-3.cache.internal:6379"))
        XCTAssertNil(parse("-MOVED 3999 127.0.0.1:6381"), "cut before its line end")
    }
}

extension ReplyClassificationTests {
    /// The framed-reply type a merge checks, and the one-key retrieval verdict: a miss, an
    /// error, the key's one record (true); another key's record (false); a repeated key or a
    /// cut header (nil: the general walk decides).
    func testFramedTypeAndSingleKeyVerdict() {
        func type(_ text: String) -> RespReply.FramedType { Array(text.utf8).withUnsafeBytes { RespReply.type(ofFramed: $0) } }
        XCTAssertEqual(type("*2\r\n$1\r\na\r\n$-1\r\n"), .array)
        XCTAssertEqual(type("-ERR no\r\n"), .error)
        XCTAssertEqual(type(">3\r\n"), .push)
        XCTAssertEqual(type(""), .other)
        func verdict(_ reply: String, _ key: String) -> Bool? {
            Array(reply.utf8).withUnsafeBytes { r in Array(key.utf8).withUnsafeBytes { MemcacheReplyParser.singleKeyVerdict(r, key: $0) } }
        }
        XCTAssertEqual(verdict("END\r\n", "k"), true)
        XCTAssertEqual(verdict("SERVER_ERROR busy\r\n", "k"), true)
        XCTAssertEqual(verdict("VALUE k 0 2\r\nab\r\nEND\r\n", "k"), true)
        XCTAssertEqual(verdict("VALUE kk 0 2\r\nab\r\nEND\r\n", "k"), false)
        XCTAssertEqual(verdict("VALUE j 0 2\r\nab\r\nEND\r\n", "k"), false)
        XCTAssertNil(verdict("VALUE k 0 2\r\nab\r\nVALUE k 0 1\r\nc\r\nEND\r\n", "k"))
        // The header read in place answers as the line read by `valueLength` does, for every
        // form a record's header can take (a cas, a bare \n, doubled spaces, long numbers).
        func reference(_ reply: String, _ key: String) -> Bool? {
            let bytes = Array(reply.utf8)
            guard bytes.count > 6, bytes[0] == UInt8(ascii: "V") else { return true }
            let keyBytes = Array(key.utf8)
            guard bytes.count > 6 + keyBytes.count, bytes[6 + keyBytes.count] == 0x20, Array(bytes[6..<(6 + keyBytes.count)]) == keyBytes else { return false }
            guard let lineEnd = bytes.firstIndex(of: 0x0a) else { return false }
            guard let length = bytes.withUnsafeBytes({ MemcacheReplyParser.valueLength(UnsafeRawBufferPointer(rebasing: $0[0..<lineEnd])) }) else { return false }
            return lineEnd + 1 + length + 2 + 5 == bytes.count ? true : nil
        }
        let headers = ["0 2", "12 2", "4294967295 2", "42949672950 2", "0 02", "0 0000000002", "0 00000000002", "0  2", " 0 2", "0 2 ",
                       "0 2 77", "0 2 18446744073709551615", "0 2 184467440737095516150", "0 2 ", "0 2 x", "x 2", "0 x", "0 1073741824",
                       "0 1073741825", "0 9999999999", "0 2\r", "0 1", "0 3", "0"]
        for header in headers {
            for end in ["\r\n", "\n"] {
                for body in ["ab\r\nEND\r\n", "ab\r\nVALUE k 0 1\r\nc\r\nEND\r\n", "a\r\nb\r\nEND\r\n", "abc\r\nEND\r\n"] {
                    let reply = "VALUE k " + header + end + body
                    XCTAssertEqual(verdict(reply, "k"), reference(reply, "k"), reply.debugDescription)
                }
            }
        }
    }
}
