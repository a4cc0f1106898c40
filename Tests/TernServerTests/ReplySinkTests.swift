import XCTest
@testable import TernServer

/// Splits and merges in memory: a slot with no client, parts delivered by hand, the bytes the
/// client would get read back with `emit`.
final class ReplySinkTests: XCTestCase {
    private func deliver(_ slot: ReplySlot, _ part: Int32, _ text: String, isError: Bool = false) -> Bool {
        Array(text.utf8).withUnsafeBytes { slot.deliver(part: part, reply: $0, isError: isError) }
    }

    private func emitted(_ slot: ReplySlot) -> String {
        let output = ByteBuffer()
        slot.emit(into: output)
        return String(decoding: output.readable, as: UTF8.self)
    }

    private func redisSlot(keysOn servers: [Int32]) -> ReplySlot {
        let slot = ReplySlot()
        slot.isRedis = true
        for server in servers { slot.keys.append(ReplySlot.KeyEntry(keyStart: 0, keyLength: 0, server: server)) }
        return slot
    }

    /// MGET over two servers: elements go back to their keys' positions, in the client's order.
    /// A single-key get's key takes 256 bytes in its slot, not a 4 KiB page: thousands of
    /// pipelined gets in flight (or left by clients that closed) each held one (2,500 clients
    /// leaving with 50 gets each took RSS from 26 to 330 MB; fails on 5acf88f with 4096). A
    /// recycled slot keeps its buffer, and one grown by a multi-get up to 4 KiB.
    func testAKeyTakesASmallBufferAndRecyclingKeepsIt() {
        let slot = ReplySlot()
        Array("user:1".utf8).withUnsafeBytes { slot.keyBytes.append($0) }
        XCTAssertEqual(slot.keyBytes.capacity, 256)
        slot.reset()
        XCTAssertEqual(slot.keyBytes.capacity, 256)
        let keys = [UInt8](repeating: UInt8(ascii: "k"), count: 3000)
        keys.withUnsafeBytes { slot.keyBytes.append($0) }
        slot.reset()
        XCTAssertEqual(slot.keyBytes.capacity, 4096)
    }

    func testArrayMergesByPosition() {
        let slot = redisSlot(keysOn: [0, 1, 0])
        var split = ReplySplit(slot, mergedBy: .array(RespArrayByPosition()))
        let first = split.server(0), second = split.server(1)
        split.close()
        XCTAssertTrue(deliver(slot, second, "*1\r\n$1\r\nb\r\n"))
        XCTAssertFalse(slot.isDone)
        XCTAssertTrue(deliver(slot, first, "*2\r\n$1\r\na\r\n$-1\r\n"))
        XCTAssertTrue(slot.isDone)
        XCTAssertEqual(emitted(slot), "*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n")
    }

    /// A part that fails leaves its keys unanswered; the client gets the error, not a partial array.
    func testArrayWithFailedPartIsTheError() {
        let slot = redisSlot(keysOn: [0, 1])
        var split = ReplySplit(slot, mergedBy: .array(RespArrayByPosition()))
        let first = split.server(0), second = split.server(1)
        split.close()
        XCTAssertTrue(deliver(slot, first, "*1\r\n$1\r\na\r\n"))
        slot.fail(part: second, reason: "Connection timed out")
        XCTAssertTrue(slot.isDone)
        XCTAssertEqual(emitted(slot), "-ERR Connection timed out\r\n")
    }

    /// The first error wins: a backend's own error, then a failure of another part.
    func testArrayKeepsFirstBackendError() {
        let slot = redisSlot(keysOn: [0, 1])
        var split = ReplySplit(slot, mergedBy: .array(RespArrayByPosition()))
        let first = split.server(0), second = split.server(1)
        split.close()
        XCTAssertTrue(deliver(slot, first, "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n", isError: true))
        slot.fail(part: second, reason: "Connection timed out")
        XCTAssertEqual(emitted(slot), "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n")
    }

    /// A part failing while the split is still being made does not finish the slot early.
    func testSplitHoldsUntilClosed() {
        let slot = redisSlot(keysOn: [0, 1])
        var split = ReplySplit(slot, mergedBy: .sum(IntegerSum()))
        let first = split.server(0)
        slot.fail(part: first, reason: "no server available")
        XCTAssertFalse(slot.isDone)
        let second = split.server(1)
        split.close()
        XCTAssertFalse(slot.isDone)
        XCTAssertTrue(deliver(slot, second, ":1\r\n"))
        XCTAssertTrue(slot.isDone)
        XCTAssertEqual(emitted(slot), "-ERR no server available\r\n")
    }

    /// A split with no parts (every key without a server) finishes when closed.
    func testEmptySplitFinishesOnClose() {
        let slot = ReplySlot()
        let split = ReplySplit(slot, mergedBy: .records(MultiGetRecords()))
        split.close()
        XCTAssertTrue(slot.isDone)
        XCTAssertEqual(emitted(slot), "END\r\n")
    }

    /// Warm-up DEL: the old pool's count is kept apart (the larger wins) and its failure is
    /// only counted.
    func testSumWithOldPool() {
        let counters = WarmupCounters()
        let slot = redisSlot(keysOn: [0, 1])
        var split = ReplySplit(slot, mergedBy: .sum(IntegerSum()), warmupCounters: counters)
        let new0 = split.server(0), new1 = split.server(1), old0 = split.oldServer(0), old1 = split.oldServer(1)
        split.close()
        XCTAssertTrue(deliver(slot, new0, ":0\r\n"))
        XCTAssertTrue(deliver(slot, new1, ":1\r\n"))
        XCTAssertTrue(deliver(slot, old0, ":2\r\n"))
        slot.fail(part: old1, reason: "Connection timed out")
        XCTAssertTrue(slot.isDone)
        XCTAssertEqual(emitted(slot), ":2\r\n")
        XCTAssertEqual(counters.oldErrors.load(ordering: .relaxed), 1)
    }

    /// memcached multi-get: records in the client's key order behind one END; a failed server's
    /// keys are misses; a record for a key the part did not ask for is refused.
    func testMultiGetRecords() {
        let slot = ReplySlot()
        for (key, server) in [("a", Int32(0)), ("b", 1), ("c", 0)] {
            slot.keys.append(ReplySlot.KeyEntry(keyStart: slot.keyBytes.readableCount, keyLength: key.utf8.count, server: server))
            Array(key.utf8).withUnsafeBytes { slot.keyBytes.append($0) }
        }
        var split = ReplySplit(slot, mergedBy: .records(MultiGetRecords()))
        let first = split.server(0), second = split.server(1)
        split.close()
        XCTAssertFalse(deliver(slot, first, "VALUE b 0 1\r\nx\r\nEND\r\n"), "b was asked of server 1")
        XCTAssertTrue(deliver(slot, first, "VALUE a 0 1\r\n1\r\nVALUE c 0 1\r\n3\r\nEND\r\n"))
        slot.fail(part: second, reason: "Connection timed out")
        XCTAssertTrue(slot.isDone)
        XCTAssertEqual(emitted(slot), "VALUE a 0 1\r\n1\r\nVALUE c 0 1\r\n3\r\nEND\r\n")
    }

    /// flush_all: OK only when every server said OK, else the first error.
    func testAllOK() {
        for (replies, expected) in [(["OK\r\n", "OK\r\n"], "OK\r\n"), (["OK\r\n", "SERVER_ERROR busy\r\n"], "SERVER_ERROR busy\r\n")] {
            let slot = ReplySlot()
            var split = ReplySplit(slot, mergedBy: .allOK(AllOK(dialect: .memcached)))
            let parts = [split.server(0), split.server(1)]
            split.close()
            for (part, reply) in zip(parts, replies) { XCTAssertTrue(deliver(slot, part, reply, isError: reply.hasPrefix("SERVER_ERROR"))) }
            XCTAssertEqual(emitted(slot), expected)
        }
    }

    /// Warm-up delete: NOT_FOUND from the new pool becomes DELETED when the old pool deleted.
    func testEitherDeleted() {
        let slot = ReplySlot()
        var split = ReplySplit(slot, mergedBy: .eitherDeleted(EitherDeleted()), warmupCounters: WarmupCounters())
        let old = split.oldServer(3), new = split.server(0)
        split.close()
        XCTAssertTrue(deliver(slot, new, "NOT_FOUND\r\n"))
        XCTAssertTrue(deliver(slot, old, "DELETED\r\n"))
        XCTAssertEqual(emitted(slot), "DELETED\r\n")
        // Meta: NF from the new pool becomes HD with its flags when the old pool said HD; an
        // old NF leaves it; a new-pool HD is the answer whatever the old pool said.
        for (newReply, oldReply, expected) in [("NF O7 kdoomed\r\n", "HD O7\r\n", "HD O7 kdoomed\r\n"),
                                               ("NF O7\r\n", "NF O7\r\n", "NF O7\r\n"),
                                               ("HD O9\r\n", "NF O9\r\n", "HD O9\r\n"),
                                               ("NF\r\n", "SERVER_ERROR out of memory\r\n", "NF\r\n")] {
            let meta = ReplySlot()
            var metaSplit = ReplySplit(meta, mergedBy: .eitherDeleted(EitherDeleted(isMeta: true)), warmupCounters: WarmupCounters())
            let oldPart = metaSplit.oldServer(1), newPart = metaSplit.server(0)
            metaSplit.close()
            XCTAssertTrue(deliver(meta, oldPart, oldReply))
            XCTAssertTrue(deliver(meta, newPart, newReply))
            XCTAssertEqual(emitted(meta), expected, "\(newReply) after \(oldReply)")
        }
    }

    /// SCRIPT LOAD: the lowest part's reply, whatever order they come in.
    func testFirstReply() {
        let slot = redisSlot(keysOn: [])
        var split = ReplySplit(slot, mergedBy: .first(FirstReply()))
        let parts = [split.server(0), split.server(1)]
        split.close()
        XCTAssertTrue(deliver(slot, parts[1], "$1\r\nb\r\n"))
        XCTAssertTrue(deliver(slot, parts[0], "$1\r\na\r\n"))
        XCTAssertEqual(emitted(slot), "$1\r\na\r\n")
    }

    /// A recycled slot is a single request again: one part, no merge.
    func testResetLeavesOnePart() {
        let slot = redisSlot(keysOn: [0, 1])
        var split = ReplySplit(slot, mergedBy: .sum(IntegerSum()))
        _ = split.server(0)
        split.close()
        slot.reset()
        XCTAssertTrue(slot.isSingle)
        slot.fail(part: ReplyPart.whole, reason: "no server available")
        XCTAssertTrue(slot.isDone)
        XCTAssertEqual(emitted(slot), "SERVER_ERROR no server available\r\n")
    }

    /// A key named again (`get a b a`): its repeat is not asked, and gets a copy of the
    /// record; a repeated miss stays a miss.
    func testMultiGetRepeatsGetCopies() {
        let slot = ReplySlot()
        let table = RepeatedKeys()
        table.begin()
        for (key, server) in [("a", Int32(0)), ("b", 1), ("a", 0), ("m", 1), ("m", 1), ("a", 0)] {
            let bytes = Array(key.utf8)
            let earlier = bytes.withUnsafeBytes { key in table.earlier(key, position: slot.keys.count) { slot.sameKey(slot.keys[$0], key) } }
            if let earlier {
                slot.addRepeat(of: earlier)
                continue
            }
            slot.keys.append(ReplySlot.KeyEntry(keyStart: slot.keyBytes.readableCount, keyLength: bytes.count, server: server))
            bytes.withUnsafeBytes { slot.keyBytes.append($0) }
        }
        XCTAssertEqual(slot.keys.map(\.server), [0, 1, -2, 1, -5, -2])
        XCTAssertEqual(slot.keys[0].repeats, 2)
        var split = ReplySplit(slot, mergedBy: .records(MultiGetRecords()))
        let first = split.server(0), second = split.server(1)
        split.close()
        XCTAssertTrue(deliver(slot, second, "VALUE b 0 1\r\n2\r\nEND\r\n"))
        XCTAssertTrue(deliver(slot, first, "VALUE a 0 1\r\n1\r\nEND\r\n"))
        XCTAssertEqual(slot.repeatedBytes, 2 * "VALUE a 0 1\r\n1\r\n".utf8.count)
        XCTAssertEqual(emitted(slot), "VALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nVALUE a 0 1\r\n1\r\nVALUE a 0 1\r\n1\r\nEND\r\n")
    }

    /// MGET with a key named again: each position gets the element; the copies count toward
    /// the reply limit before anything is built (the request fails past it).
    func testArrayRepeatsAndTheirLimit() {
        for limit in [Int.max, 40] {
            let slot = redisSlot(keysOn: [0, 1])
            slot.addRepeat(of: 0)
            slot.addRepeat(of: 0)
            slot.replyLimit = limit
            var split = ReplySplit(slot, mergedBy: .array(RespArrayByPosition()))
            let first = split.server(0), second = split.server(1)
            split.close()
            XCTAssertTrue(deliver(slot, first, "*1\r\n$10\r\n0123456789\r\n"))
            if limit == 40 {
                // 16 bytes held, 32 more to come from the copies: past 40, failed (nothing
                // of the other part is kept).
                XCTAssertTrue(slot.isOverflowed)
                XCTAssertFalse(slot.isDone)
                XCTAssertTrue(deliver(slot, second, "*1\r\n$-1\r\n"))
                XCTAssertTrue(slot.isDone)
                XCTAssertEqual(emitted(slot), "-ERR reply exceeds client_output_limit\r\n")
            } else {
                XCTAssertTrue(deliver(slot, second, "*1\r\n$-1\r\n"))
                XCTAssertEqual(emitted(slot), "*4\r\n$10\r\n0123456789\r\n$-1\r\n$10\r\n0123456789\r\n$10\r\n0123456789\r\n")
            }
        }
    }

    /// The table finds a key named again within a request, compares bytes (equal hashes are
    /// not enough), and forgets everything at the next request.
    func testRepeatedKeysTable() {
        let table = RepeatedKeys()
        let keys = (0..<3000).map { Array("key:\($0)".utf8) }
        table.begin()
        var found = 0
        for (position, key) in keys.enumerated() {
            let earlier = key.withUnsafeBytes { bytes in table.earlier(bytes, position: position) { keys[$0] == Array(bytes) } }
            if earlier != nil { found += 1 }
        }
        XCTAssertEqual(found, 0, "distinct keys are never taken for repeats")
        let again = keys[2999].withUnsafeBytes { bytes in table.earlier(bytes, position: 3000) { keys[$0] == Array(bytes) } }
        XCTAssertEqual(again, 2999)
        table.begin()
        let next = keys[2999].withUnsafeBytes { bytes in table.earlier(bytes, position: 0) { _ in true } }
        XCTAssertNil(next, "a new request starts empty")
        // A key's entry taken by a colliding key (forced: `isEqual` says no) is sent again.
        let other = keys[2999].withUnsafeBytes { bytes in table.earlier(bytes, position: 1) { _ in false } }
        XCTAssertNil(other)
    }

    /// A client may have in flight as many requests as fit 8 MiB of replies of the size its
    /// replies run to, 256 at most: 4 once a 1 MiB value came, 1 after a reply past the output
    /// limit, all 256 again after small replies.
    func testInFlightWindowFollowsReplySizes() {
        var estimate: UInt32 = 0
        XCTAssertEqual(ReplyOwner.window(for: estimate), 256)
        XCTAssertEqual(ReplyOwner.window(for: 32 << 10), 128)
        XCTAssertEqual(ReplyOwner.window(for: UInt32(ReplyOwner.fullWindowReply - 1)), 256)
        estimate = ReplyOwner.estimate(estimate, after: 1 << 20)
        XCTAssertEqual(ReplyOwner.window(for: estimate), 4)
        estimate = ReplyOwner.estimate(estimate, after: 64 << 20)
        XCTAssertEqual(ReplyOwner.window(for: estimate), 1)
        var replies = 0
        while ReplyOwner.window(for: estimate) < ReplyOwner.maxInFlight {
            estimate = ReplyOwner.estimate(estimate, after: 20)
            replies += 1
        }
        XCTAssertEqual(replies, 58, "after a 64 MiB reply, small replies bring it back in \(replies)")
        XCTAssertEqual(ReplyOwner.window(for: ReplyOwner.estimate(0, after: Int.max)), 1)
    }

    /// MGET whose first answer is a server's error: the error is the whole reply, elements of
    /// later parts are not placed behind it (they were appended to the error line and reached
    /// the client after it, out of step).
    func testArrayErrorFirstIsTheWholeReply() {
        let slot = redisSlot(keysOn: [0, 1])
        var split = ReplySplit(slot, mergedBy: .array(RespArrayByPosition()))
        let first = split.server(0), second = split.server(1)
        split.close()
        XCTAssertTrue(deliver(slot, second, "-BUSY Redis is busy running a script.\r\n", isError: true))
        XCTAssertTrue(deliver(slot, first, "*1\r\n$1\r\na\r\n"))
        XCTAssertEqual(emitted(slot), "-BUSY Redis is busy running a script.\r\n")
    }

    /// A key once named again keeps its entry: keys that land on the same entry later do not
    /// push it out (forced here by `isEqual` answering no), so its next repeat is found.
    func testRepeatedKeyKeepsItsEntry() {
        let table = RepeatedKeys()
        table.begin()
        let key = Array("big".utf8)
        key.withUnsafeBytes { bytes in
            XCTAssertNil(table.earlier(bytes, position: 0) { _ in true })
            XCTAssertEqual(table.earlier(bytes, position: 1) { $0 == 0 }, 0)
            // Another key on the same entry: not recorded.
            XCTAssertNil(table.earlier(bytes, position: 2) { _ in false })
            XCTAssertEqual(table.earlier(bytes, position: 3) { $0 == 0 }, 0)
        }
        // Not yet repeated: the entry goes to the later key.
        table.begin()
        key.withUnsafeBytes { bytes in
            XCTAssertNil(table.earlier(bytes, position: 0) { _ in true })
            XCTAssertNil(table.earlier(bytes, position: 1) { _ in false })
            XCTAssertEqual(table.earlier(bytes, position: 2) { $0 == 1 }, 1)
        }
    }
}

