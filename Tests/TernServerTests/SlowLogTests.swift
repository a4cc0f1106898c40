import XCTest
@testable import TernServer

/// The slow log's ring, its argument extraction and truncation, and the hot-key sketch, in
/// memory (the integration tests drive them through real servers).
final class SlowLogTests: XCTestCase {
    func entry(_ name: String) -> SlowLogEntry {
        SlowLogEntry(id: 0, time: 0, microseconds: 1, arguments: [Array(name.utf8)], client: "", clientName: "", server: "")
    }

    func testRingKeepsTheNewestInOrder() {
        let log = SlowLog()
        for index in 0..<7 { log.record(entry("c\(index)"), maxLength: 3) }
        XCTAssertEqual(log.newest(-1).map { String(decoding: $0.arguments[0], as: UTF8.self) }, ["c6", "c5", "c4"])
        XCTAssertEqual(log.newest(-1).map(\.id), [6, 5, 4])
        XCTAssertEqual(log.newest(2).count, 2)
        XCTAssertEqual(log.newest(0).count, 0)
        XCTAssertEqual(log.count, 3)
        // A reload that lowers slowlog_max_len keeps the newest.
        log.record(entry("c7"), maxLength: 2)
        XCTAssertEqual(log.newest(-1).map(\.id), [7, 6])
        // A reload that raises it after the ring wrapped keeps the order.
        for index in 8..<11 { log.record(entry("c\(index)"), maxLength: 2) }
        log.record(entry("c11"), maxLength: 4)
        log.record(entry("c12"), maxLength: 4)
        XCTAssertEqual(log.newest(-1).map(\.id), [12, 11, 10, 9])
        log.record(entry("c13"), maxLength: 4)
        XCTAssertEqual(log.newest(-1).map(\.id), [13, 12, 11, 10])
        log.reset()
        XCTAssertEqual(log.count, 0)
        log.record(entry("c8"), maxLength: 0)
        XCTAssertEqual(log.count, 0, "slowlog_max_len 0 keeps nothing")
    }

    func testArgumentsAreTruncatedAsRedisDoes() {
        var request = "*40\r\n$5\r\nRPUSH\r\n$4\r\nlist\r\n"
        for _ in 0..<38 { request += "$200\r\n" + String(repeating: "x", count: 200) + "\r\n" }
        let arguments = Array(request.utf8).withUnsafeBytes { SlowLog.arguments(of: $0) }
        XCTAssertEqual(arguments.count, 32)
        XCTAssertEqual(arguments[0], Array("RPUSH".utf8))
        XCTAssertEqual(arguments[2], Array(String(repeating: "x", count: 128).utf8) + Array("... (72 more bytes)".utf8))
        XCTAssertEqual(arguments[31], Array("... (9 more arguments)".utf8))
        let memcached = Array("set k 0 0 5\r\nvalue\r\n".utf8).withUnsafeBytes { SlowLog.arguments(of: $0) }
        XCTAssertEqual(memcached.map { String(decoding: $0, as: UTF8.self) }, ["set", "k", "0", "0", "5"])
        let manyKeys = Array(("get " + (0..<1000).map { "k\($0)" }.joined(separator: " ") + "\r\n").utf8).withUnsafeBytes { SlowLog.arguments(of: $0) }
        XCTAssertEqual(manyKeys.count, 32)
        XCTAssertEqual(manyKeys[30], Array("k29".utf8))
        XCTAssertEqual(manyKeys[31], Array("... (970 more arguments)".utf8))
        var header = "*100000\r\n$4\r\nMSET\r\n"
        for index in 0..<40 { header += "$2\r\nk\(index % 10)\r\n" }
        let declared = Array(header.utf8).withUnsafeBytes { SlowLog.arguments(of: $0) }
        XCTAssertEqual(declared.count, 32)
        XCTAssertEqual(declared[31], Array("... (99969 more arguments)".utf8), "the count comes from the header")
        // A truncated frame gives what it has, never reads past it.
        let cut = Array("*3\r\n$3\r\nGET\r\n$10\r\nabc".utf8).withUnsafeBytes { SlowLog.arguments(of: $0) }
        XCTAssertEqual(cut, [Array("GET".utf8)])
    }

    func testSpaceSavingFindsTheHeavyHitters() {
        var sketch = SpaceSaving(capacity: 4)
        var stream: [String] = []
        for index in 0..<1000 { stream.append(index % 3 == 0 ? "hot" : index % 5 == 0 ? "warm" : "cold\(index)") }
        for key in stream { Array(key.utf8).withUnsafeBytes { sketch.add($0, hash: UInt64(bitPattern: Int64(key.hashValue))) } }
        let top = sketch.entries.sorted { $0.count > $1.count }
        XCTAssertEqual(String(decoding: top[0].key, as: UTF8.self), "hot")
        XCTAssertEqual(String(decoding: top[1].key, as: UTF8.self), "warm")
        XCTAssertGreaterThanOrEqual(top[0].count, 334, "Space-Saving never underestimates")
        XCTAssertLessThanOrEqual(top[0].count - top[0].error, 334)
        sketch.halve()
        XCTAssertEqual(sketch.entries.first { String(decoding: $0.key, as: UTF8.self) == "hot" }?.count, top[0].count / 2)
    }
}

final class CommandStatsTests: XCTestCase {
    /// The constant compare chain agrees with `latencyBucketBounds` (the histogram's `le` labels).
    func testBucketMatchesTheBounds() {
        XCTAssertEqual(CommandStats.fields, 2 + latencyBucketBounds.count + 1)
        for microseconds in [0, 1, 49, 50, 51, 99, 100, 101, 250, 251, 500, 501, 1000, 1001, 2500, 2501, 5000, 5001, 10_000, 10_001,
                             25_000, 25_001, 50_000, 50_001, 100_000, 100_001, 250_000, 250_001, 500_000, 500_001, 1_000_000, 1_000_001, Int.max] {
            var expected = 0
            while expected < latencyBucketBounds.count, latencyBucketBounds[expected] < microseconds { expected += 1 }
            XCTAssertEqual(CommandStats.bucket(microseconds), expected, "\(microseconds) µs")
        }
    }
}
