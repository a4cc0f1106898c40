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

    /// "warm" is 133 of 1000 keys, more than 1000 / 8: kept by any Space-Saving of 8 counters,
    /// above every other key but "hot" (a key that is not kept counts at most 1000 / 8 + 1).
    /// Keys longer than 256 bytes are kept as head, length and tail, so `top` (which merges the
    /// workers' sketches by the bytes kept) tells apart keys that differ in their last bytes or
    /// their length; before, it merged them by their first 256 bytes (admin sweep 29).
    func testLongKeysAreToldApartAcrossWorkers() {
        let workers = [HotKeys(capacity: 8), HotKeys(capacity: 8)]
        let a = Array(repeating: UInt8(ascii: "x"), count: 300)
        let b = Array(repeating: UInt8(ascii: "x"), count: 299) + [UInt8(ascii: "y")]
        let c = Array(repeating: UInt8(ascii: "x"), count: 301)
        for (index, key) in [a, b, c].enumerated() {
            for round in 0..<(10 * (index + 1)) { key.withUnsafeBytes { workers[round % 2].add($0) } }
        }
        let top = HotKeys.top(workers, limit: 10)
        XCTAssertEqual(top.map(\.requests), [30, 20, 10].map { $0 * HotKeys.sampleInterval })
        let shown = String(decoding: top[0].key, as: UTF8.self)
        XCTAssertEqual(shown, String(repeating: "x", count: 200) + "...(301 bytes)..." + String(repeating: "x", count: 32))
        XCTAssertEqual(String(decoding: top[1].key, as: UTF8.self).suffix(2), "xy")
        XCTAssertEqual(String(decoding: top[2].key, as: UTF8.self), String(repeating: "x", count: 200) + "...(300 bytes)..." + String(repeating: "x", count: 32))
        // Up to 256 bytes a key is kept whole.
        let whole = HotKeys(capacity: 4)
        Array(repeating: UInt8(ascii: "k"), count: 256).withUnsafeBytes { whole.add($0) }
        XCTAssertEqual(HotKeys.top([whole], limit: 1).first?.key.count, 256)
    }

    func testSpaceSavingFindsTheHeavyHitters() {
        var sketch = SpaceSaving(capacity: 8)
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

    /// Space-Saving's guarantees hold through the hash index and the kept smallest count, with
    /// skewed and uniform streams, halvings between them, and hashes that collide (long probe
    /// runs, entries taken out of the middle of one): the counts add up to the keys added, no
    /// key is kept twice, a count never underestimates and, less its error, never
    /// overestimates, and every key seen more than n / capacity times is kept.
    func testSpaceSavingKeepsItsGuaranteesUnderEviction() {
        // Seeded (SplitMix64) and hashed with FNV-1a, so that a failure repeats.
        struct SplitMix: RandomNumberGenerator {
            var state: UInt64
            mutating func next() -> UInt64 {
                state &+= 0x9E37_79B9_7F4A_7C15
                var z = state
                z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
                z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
                return z ^ (z >> 31)
            }
        }
        func fnv(_ key: String) -> UInt64 { key.utf8.reduce(0xcbf2_9ce4_8422_2325) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 } }
        var random = SplitMix(state: 27)
        for (capacity, collide) in [(1, false), (4, true), (16, false), (16, true), (64, false), (64, true)] {
            var sketch = SpaceSaving(capacity: capacity)
            var truth: [String: Int] = [:]
            var added = 0
            // Colliding hashes whose home is the index's last slots: probe runs wrap round.
            func hash(_ key: String) -> UInt64 { collide ? 0xFFFF_FFFF - UInt64(key.utf8.count % 3) : fnv(key) }
            func check(_ label: String) {
                let entries = sketch.entries
                XCTAssertEqual(entries.reduce(0) { $0 + $1.count }, added, "\(label): counts add up")
                XCTAssertEqual(Set(entries.map(\.key)).count, entries.count, "\(label): no key twice")
                for entry in entries {
                    let real = truth[String(decoding: entry.key, as: UTF8.self)] ?? 0
                    XCTAssertGreaterThanOrEqual(entry.count, real, label)
                    XCTAssertLessThanOrEqual(entry.count - entry.error, real, label)
                }
                let kept = Set(entries.map { String(decoding: $0.key, as: UTF8.self) })
                for (key, count) in truth where count * capacity > added { XCTAssertTrue(kept.contains(key), "\(label): \(key) seen \(count) of \(added)") }
            }
            for round in 0..<3 {
                for step in 0..<4000 {
                    // Skewed: a few keys often; uniform: many keys once or twice.
                    let key = round == 1 ? "u\(Int.random(in: 0..<3000, using: &random))"
                        : "k\(Int(Double(Int.random(in: 1...1000, using: &random)).squareRoot() * Double(step % 7 + 1)))"
                    Array(key.utf8).withUnsafeBytes { sketch.add($0, hash: hash(key)) }
                    truth[key, default: 0] += 1
                    added += 1
                }
                check("capacity \(capacity), collide \(collide), round \(round)")
                sketch.halve()
                // After a halving the counts are the sketch's own: start the truth again from them.
                truth = [:]
                added = 0
                for entry in sketch.entries {
                    truth[String(decoding: entry.key, as: UTF8.self)] = entry.count
                    added += entry.count
                }
            }
        }
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
