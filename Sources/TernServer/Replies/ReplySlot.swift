#if canImport(Glibc)
import Glibc
#endif
import TernCore

/// The place of one client request in that client's reply order.
///
/// A client's slots leave in the order the requests arrived; a slot may be filled out of order
/// (different backends answer at different speeds). A slot is filled by one backend reply
/// (`single`), by merging the replies of several (`multiGet`, `fanOut`), or by Tern itself.
/// Slots are recycled through the worker's pool. Confined to one worker thread.
final class ReplySlot {
    enum Kind {
        /// One backend reply, forwarded as it is.
        case single
        /// A multi-key get split over servers: VALUE records merged in the client's key order.
        case multiGet
        /// The same command sent to every server (`flush_all`): `OK` when all said OK.
        case fanOut
        /// Redis MGET split over servers: array elements merged in the client's key order.
        case respArray
        /// Redis parts that must all answer `+OK` (MSET, FLUSHDB, SCRIPT FLUSH).
        case respAllOK
        /// Redis integer replies summed (DEL, UNLINK, EXISTS, TOUCH, DBSIZE).
        case respSum
        /// Redis: every server gets the command, the first server's reply is returned (SCRIPT LOAD).
        case respFirst
        /// Tern wrote the reply beforehand (pub/sub confirmations with the client's own counts):
        /// the parts only have to succeed; a backend error replaces it.
        case prepared
        /// Arrays from every server, merged without repeats (PUBSUB CHANNELS).
        case respUnion
        /// `[name, count, …]` arrays from every server, counts summed by position (PUBSUB NUMSUB).
        case respPairSum
        /// A warm-up delete sent to both pools (part 0 new, part 1 old): the new pool's reply,
        /// but "deleted" when either pool deleted the key.
        case eitherDeleted
    }

    /// Replies at least this large that must wait in a slot are stored with `largeReplyHeadroom`
    /// bytes free in front, so they can become the client's output without a copy.
    static let largeReply = 1 << 16
    static let largeReplyHeadroom = 16384

    /// Parts numbered from here went to a warm-up's old pool.
    static let oldPartBase: Int32 = 1 << 20

    /// Offsets are full-width: a merged reply may pass 2 GiB when `client_output_limit` allows.
    struct KeyEntry {
        var keyStart: Int
        var keyLength: Int
        var server: Int32
        var recordStart = -1
        var recordLength = 0
    }

    /// The client waiting for this reply; nil once that client has gone.
    var client: ClientConnection?
    var kind: Kind = .single
    var isDone = false
    /// A `noreply` request: the backend's answer is dropped.
    var isSilent = false
    var remainingParts = 0
    /// Reply bytes held until the slot reaches the head of the client's queue.
    let data = ByteBuffer()
    /// Multi-key get: the keys (bytes in `keyBytes`) and where each one's VALUE record is in `data`.
    var keys: [KeyEntry] = []
    let keyBytes = ByteBuffer()
    var hasError = false
    /// Whether errors Tern makes are written as RESP (`-ERR …`) or memcached text.
    var isRedis = false
    /// respSum: the running total.
    var total = 0
    /// respFirst: the lowest part that has answered so far.
    var firstPart = Int32.max
    /// A read on a warm-up pool: its phases (new pool, old pool, resend).
    var warmup: WarmupRead?
    /// Warm-up deletes: what the old pool did.
    var oldTotal = 0
    var oldDeleted = false
    var isQuietMeta = false
    /// The new pool's counters, for what the old pool did on deletes.
    var warmupCounters: WarmupCounters?
    /// Most reply bytes this request may hold (the pool's `client_output_limit`), checked before
    /// a backend reply is stored; past it the request fails and later parts are dropped.
    var replyLimit = Int.max
    var isOverflowed = false
    /// A binary-protocol request: its reply leaves as a response packet.
    var binary: BinaryContext?
    /// The request's row in the pool's `CommandStats` (-1: not counted) and the loop time it
    /// was read at.
    var command: Int32 = -1
    var startedAt: Double = 0

    func reset() {
        client = nil
        kind = .single
        isDone = false
        isSilent = false
        remainingParts = 0
        data.removeAll()
        // A recycled slot keeps a buffer a 10-key multi-get fits in (16 KiB), so the common
        // merge allocates nothing; the worker keeps at most `Worker.keptSlots` slots, so a past
        // burst of large replies pins at most 16 MiB.
        data.releaseIfIdle(keep: 16384)
        if !keys.isEmpty { keys.removeAll(keepingCapacity: true) }
        keyBytes.removeAll()
        hasError = false
        isRedis = false
        total = 0
        firstPart = Int32.max
        if warmup != nil { warmup = nil }
        oldTotal = 0
        oldDeleted = false
        isQuietMeta = false
        if warmupCounters != nil { warmupCounters = nil }
        replyLimit = Int.max
        isOverflowed = false
        countedBytes = 0
        if binary != nil { binary = nil }
        command = -1
        // Capacity taken by one huge request is not kept by a recycled slot.
        if keys.capacity > 64 { keys = [] }
        // At least the smallest buffer a ByteBuffer allocates (4 KiB): with a smaller `keep`,
        // every single-key get allocated its key buffer anew (0.9 allocations per request on
        // memcached 90/10, found by bench/allocations.sh).
        keyBytes.releaseIfIdle(keep: 4096)
    }

    /// Fills the slot with bytes Tern produced itself.
    func complete(with literal: StaticString) {
        if !isSilent { data.append(literal) }
        finish()
    }

    func complete(with text: String) {
        if !isSilent { data.append(text) }
        finish()
    }

    private func finish() {
        isDone = true
        client?.slotCompleted(self)
    }

    /// Reply bytes this slot holds now (its data and a warm-up's copied values).
    var heldBytes: Int { data.readableCount + (warmup?.values.count ?? 0) }

    /// A backend's reply for `part` of this slot. Bytes held for the client are counted on the
    /// client before and after, so replies waiting behind a slow request count toward its
    /// `client_output_limit` too.
    /// Returns false when the reply cannot be this part's (a multi-get part naming a key it did
    /// not ask for): nothing of it was counted, and the caller fails the part and the connection.
    @discardableResult
    func deliver(part: Int32, reply: UnsafeRawBufferPointer, isError: Bool) -> Bool {
        if isOverflowed || heldBytes + reply.count > replyLimit {
            overflow()
            return true
        }
        replyOutOfStep = false
        deliverPart(part, reply, isError)
        countHeld()
        return !replyOutOfStep
    }

    /// Set by a multi-get merge that met a key its part did not ask for.
    private var replyOutOfStep = false

    /// Bytes of this slot counted in its client's `heldReplyBytes` (taken back when it leaves).
    var countedBytes = 0

    /// Brings the client's count of held reply bytes up to date with this slot.
    @inline(__always)
    func countHeld() {
        // The common case (a reply that went straight to the output) holds nothing: decided
        // before the client is touched.
        let held = heldBytes
        guard held != countedBytes, let client else { return }
        let delta = held - countedBytes
        countedBytes = held
        client.heldChanged(by: delta)
    }

    /// A backend's reply for this slot was too large to hold (the connection drops it).
    func failTooLarge() { overflow() }

    /// The merged reply would pass the limit: the request fails with an error, whatever else
    /// arrives for it is dropped.
    private func overflow() {
        if !isOverflowed {
            isOverflowed = true
            warmup?.values.removeAll()
            data.removeAll()
            hasError = true
            if !isSilent { data.append(errorLine("reply exceeds client_output_limit")) }
            client?.pool.stats.overLimit.add()
            countHeld()
        }
        remainingParts -= 1
        if remainingParts <= 0 { finish() }
    }

    private func deliverPart(_ part: Int32, _ reply: UnsafeRawBufferPointer, _ isError: Bool) {
        if let warmup {
            warmup.deliver(self, part: part, reply: reply, isError: isError)
            partDone()
            return
        }
        if part >= Self.oldPartBase {
            deliverFromOldPool(reply)
            partDone()
            return
        }
        switch kind {
        case .single:
            if let client {
                client.replyArrived(self, reply)
            } else {
                isDone = true
            }
        case .multiGet:
            if !isError {
                // Records come in the order the part asked for its keys; one that matches no key
                // still unanswered means the reply is someone else's (checked in the same walk
                // that merges, so a merge costs one pass over the reply).
                var cursor = 0
                MemcacheReplyParser.forEachValue(reply) { keyRange, recordRange in
                    guard !replyOutOfStep else { return }
                    let key = UnsafeRawBufferPointer(rebasing: reply[keyRange])
                    while cursor < keys.count {
                        let entry = keys[cursor]
                        cursor += 1
                        guard entry.server == part, entry.recordStart < 0, sameKey(entry, key) else { continue }
                        keys[cursor - 1].recordStart = data.readableCount
                        keys[cursor - 1].recordLength = recordRange.count
                        data.append(UnsafeRawBufferPointer(rebasing: reply[recordRange]))
                        return
                    }
                    replyOutOfStep = true
                }
                if replyOutOfStep { return }
            }
            partDone()
        case .fanOut:
            let ok = !isError && reply.count >= 2 && reply[0] == UInt8(ascii: "O") && reply[1] == UInt8(ascii: "K")
            if !ok { recordError(reply) }
            partDone()
        case .respArray:
            if reply.first == UInt8(ascii: "*") {
                var cursor = 0
                RespReplyParser.forEachElement(reply) { range in
                    while cursor < keys.count, keys[cursor].server != part { cursor += 1 }
                    guard cursor < keys.count else { return }
                    keys[cursor].recordStart = data.readableCount
                    keys[cursor].recordLength = range.count
                    data.append(UnsafeRawBufferPointer(rebasing: reply[range]))
                    cursor += 1
                }
            } else {
                // The backend's own error (or an unexpected reply) becomes the answer.
                recordError(reply)
            }
            partDone()
        case .respAllOK:
            let ok = reply.count >= 3 && reply[0] == UInt8(ascii: "+") && reply[1] == UInt8(ascii: "O") && reply[2] == UInt8(ascii: "K")
            if !ok { recordError(reply) }
            partDone()
        case .respSum:
            if let value = RespReplyParser.integer(reply) { total += value } else { recordError(reply) }
            partDone()
        case .eitherDeleted:
            data.removeAll()
            data.append(reply)
            partDone()
        case .prepared:
            if isError { recordError(reply) }
            partDone()
        case .respUnion, .respPairSum:
            if reply.first == UInt8(ascii: "*") {
                var position = 0
                RespReplyParser.forEachElement(reply) { range in
                    let element = UnsafeRawBufferPointer(rebasing: reply[range])
                    if kind == .respUnion {
                        if !keys.contains(where: { bytesEqual(element, $0) }) { store(element) }
                    } else if position % 2 == 0 {
                        if position / 2 >= keys.count { store(element) }
                    } else if let count = RespReplyParser.integer(element), position / 2 < keys.count {
                        keys[position / 2].server &+= Int32(truncatingIfNeeded: count)
                    }
                    position += 1
                }
            } else {
                recordError(reply)
            }
            partDone()
        case .respFirst:
            if isError {
                recordError(reply)
            } else if part < firstPart, !hasError {
                firstPart = part
                data.removeAll()
                data.append(reply)
            }
            partDone()
        }
    }

    /// A warm-up delete's old-pool part: it decides nothing unless it deleted something.
    private func deliverFromOldPool(_ reply: UnsafeRawBufferPointer) {
        switch kind {
        case .respSum:
            oldTotal += RespReplyParser.integer(reply) ?? 0
        case .eitherDeleted:
            // DELETED (text), HD (meta), or nothing at all from a quiet md that deleted.
            oldDeleted = reply.count == 0 || (reply.count >= 2 && reply[0] == UInt8(ascii: "D") && reply[1] == UInt8(ascii: "E"))
                || (reply.count >= 2 && reply[0] == UInt8(ascii: "H") && reply[1] == UInt8(ascii: "D"))
        case .fanOut:
            let ok = reply.count >= 2 && reply[0] == UInt8(ascii: "O") && reply[1] == UInt8(ascii: "K")
            if !ok { recordError(reply) }
        default:
            break
        }
    }

    /// The first error of a split request is what the client gets.
    private func recordError(_ reply: UnsafeRawBufferPointer) {
        guard !hasError else { return }
        hasError = true
        data.removeAll()
        data.append(reply)
    }

    private func errorLine(_ reason: String) -> String {
        isRedis ? "-ERR \(reason)\r\n" : "SERVER_ERROR \(reason)\r\n"
    }

    /// `part` failed (connection error, timeout, no server).
    func fail(part: Int32, reason: String) {
        if isOverflowed {
            overflow()
            return
        }
        if let warmup {
            warmup.failed(self, part: part, reason: reason)
            partDone()
            return
        }
        if part >= Self.oldPartBase, kind != .fanOut {
            // The old pool failing never fails a delete; it is counted.
            if let warmupCounters { WarmupCounters.add(warmupCounters.oldErrors) }
            partDone()
            return
        }
        switch kind {
        case .single:
            if !isSilent {
                data.removeAll()
                data.append(errorLine(reason))
            }
            finish()
        case .multiGet:
            // The keys of a failed server are answered as misses.
            partDone()
        case .eitherDeleted:
            if !isSilent {
                data.removeAll()
                data.append(errorLine(reason))
            }
            hasError = true
            partDone()
        case .fanOut, .respArray, .respAllOK, .respSum, .respFirst, .prepared, .respUnion, .respPairSum:
            if !hasError {
                hasError = true
                data.removeAll()
                data.append(errorLine(reason))
            }
            partDone()
        }
    }

    private func partDone() {
        if isOverflowed { return }
        remainingParts -= 1
        if remainingParts == 0 {
            if let warmup, warmup.advance(self) { return }
            if !hasError {
                switch kind {
                case .fanOut: if !isSilent { data.append("OK\r\n" as StaticString) }
                case .respAllOK: data.append("+OK\r\n" as StaticString)
                case .respSum: data.appendInteger(max(total, oldTotal))
                case .eitherDeleted: settleEitherDeleted()
                default: break
                }
            }
            if isSilent { data.removeAll() }
            finish()
        }
    }

    /// NOT_FOUND / NF from the new pool becomes DELETED / HD when the old pool deleted the key.
    private func settleEitherDeleted() {
        guard oldDeleted else { return }
        let reply = data.readable
        if reply.count >= 9, reply[0] == UInt8(ascii: "N"), reply[1] == UInt8(ascii: "O") {
            data.removeAll()
            data.append("DELETED\r\n" as StaticString)
        } else if reply.count >= 2, reply[0] == UInt8(ascii: "N"), reply[1] == UInt8(ascii: "F") {
            if isQuietMeta {
                data.removeAll()
            } else {
                let rest = Array(reply[2...])
                data.removeAll()
                data.append("HD" as StaticString)
                rest.withUnsafeBytes { data.append($0) }
            }
        }
    }

    /// Whether a retrieval reply for `part` names only keys that part asked for, in the order
    /// asked (a repeated key may come back repeated). A VALUE for any other key means the backend
    /// connection is out of step: the reply is someone else's.
    func acceptsRetrieval(_ reply: UnsafeRawBufferPointer, part: Int32) -> Bool {
        // Multi-get parts are checked by their merge (`deliver`), in the same walk.
        guard kind == .single, warmup == nil, !keys.isEmpty else { return true }
        if keys.count == 1, let verdict = singleKeyVerdict(reply) { return verdict }
        var cursor = 0
        var accepted = true
        MemcacheReplyParser.forEachValue(reply) { keyRange, _ in
            guard accepted else { return }
            let key = UnsafeRawBufferPointer(rebasing: reply[keyRange])
            while cursor < keys.count, !sameKey(keys[cursor], key) { cursor += 1 }
            if cursor == keys.count { accepted = false } else { cursor += 1 }
        }
        return accepted
    }

    /// The common single-key get, decided without walking records: a miss (`END`), or one VALUE
    /// record whose key is this one, framed already. nil: let the general walk decide.
    @inline(__always)
    private func singleKeyVerdict(_ reply: UnsafeRawBufferPointer) -> Bool? {
        let count = reply.count
        // The framer let through only END, an error line or VALUE records: only those name keys.
        guard count > 6, reply[0] == UInt8(ascii: "V") else { return true }
        let entry = keys[0]
        let key = UnsafeRawBufferPointer(rebasing: keyBytes.readable[entry.keyStart..<(entry.keyStart + entry.keyLength)])
        guard count > 6 + key.count, reply[6 + key.count] == 0x20,
              memcmp(reply.baseAddress! + 6, key.baseAddress!, key.count) == 0 else { return false }
        // One record, then END: anything longer (a repeated key) takes the general walk.
        guard let lineEnd = memchr(reply.baseAddress!, 0x0a, count) else { return false }
        let headerLength = reply.baseAddress!.distance(to: UnsafeRawPointer(lineEnd)) + 1
        guard let length = MemcacheReplyParser.valueLength(UnsafeRawBufferPointer(rebasing: reply[0..<(headerLength - 1)])) else { return false }
        return headerLength + length + 2 + 5 == count ? true : nil
    }

    /// respUnion / respPairSum: one element (or name) kept in `data`, its count in `server`.
    private func store(_ element: UnsafeRawBufferPointer) {
        keys.append(KeyEntry(keyStart: 0, keyLength: 0, server: 0, recordStart: data.readableCount, recordLength: element.count))
        data.append(element)
    }

    private func bytesEqual(_ element: UnsafeRawBufferPointer, _ entry: KeyEntry) -> Bool {
        guard element.count == entry.recordLength else { return false }
        let stored = data.readable
        return memcmp(element.baseAddress!, stored.baseAddress! + entry.recordStart, element.count) == 0
    }

    private func sameKey(_ entry: KeyEntry, _ key: UnsafeRawBufferPointer) -> Bool {
        guard Int(entry.keyLength) == key.count else { return false }
        let stored = keyBytes.readable
        for i in 0..<key.count where stored[entry.keyStart + i] != key[i] { return false }
        return true
    }

    /// Writes the finished reply to the client's output.
    func emit(into output: ByteBuffer) {
        if let binary { return emitBinary(binary, into: output) }
        switch kind {
        case .single, .fanOut, .respAllOK, .respSum, .respFirst, .eitherDeleted, .prepared:
            // A large reply that waited here (behind a slower one) becomes the output itself,
            // the few bytes already in the output put in the room left in front of it: one copy
            // of the reply, not two. The slot gets the emptied buffer, whose capacity `reset`
            // gives back.
            if data.readableCount >= Self.largeReply, data.prepend(output.readable) {
                output.removeAll()
                output.swapContents(with: data)
                return
            }
            output.append(data.readable)
        case .respUnion, .respPairSum:
            if hasError {
                output.append(data.readable)
                return
            }
            let bytes = data.readable
            output.appendArrayHeader(kind == .respUnion ? keys.count : keys.count * 2)
            for entry in keys {
                output.append(UnsafeRawBufferPointer(rebasing: bytes[entry.recordStart..<(entry.recordStart + entry.recordLength)]))
                if kind == .respPairSum { output.appendInteger(Int(entry.server)) }
            }
        case .respArray:
            if hasError {
                output.append(data.readable)
                return
            }
            let bytes = data.readable
            output.appendArrayHeader(keys.count)
            for entry in keys {
                if entry.recordStart >= 0 {
                    output.append(UnsafeRawBufferPointer(rebasing: bytes[entry.recordStart..<(entry.recordStart + entry.recordLength)]))
                } else {
                    output.append("$-1\r\n" as StaticString)
                }
            }
        case .multiGet:
            if isOverflowed {
                output.append(data.readable)
                return
            }
            let bytes = data.readable
            for entry in keys where entry.recordStart >= 0 {
                output.append(UnsafeRawBufferPointer(rebasing: bytes[entry.recordStart..<(entry.recordStart + entry.recordLength)]))
            }
            output.append("END\r\n" as StaticString)
        }
    }
}
