#if canImport(Glibc)
import Glibc
#endif
import TernCore

/// How the parts of one request become the client's reply: one small type per merge rule.
///
/// The slot (`ReplySlot`) keeps order, bytes and the count of parts; a sink decides what a
/// part's reply does to those bytes, what a failed part means, what is added when every part
/// has answered, and how the bytes leave. A closed enum, so the slot dispatches with a switch
/// (no existential, no closure per request); the payloads are structs of a few plain words, no
/// references, so copying a sink in a switch costs no retain (a warm-up split's counters are
/// on the slot, `ReplySlot.warmupCounters`).
/// `ReplySplit` names the sink when it splits a request; an unsplit request is `.single`.
///
/// Shared rule of the merges below: the first error of a split request is what the client
/// gets (`ReplySlot.recordError`); a part that fails is an error of its own (`-ERR …` or
/// `SERVER_ERROR …`) unless the sink says otherwise.
enum ReplySink {
    /// One backend reply, forwarded as it is.
    case single
    /// memcached: a multi-key get split over servers, VALUE records merged in key order.
    case records(MultiGetRecords)
    /// The same command to every server: `OK` (`+OK`) when all said so (flush_all, MSET,
    /// FLUSHDB, SCRIPT FLUSH).
    case allOK(AllOK)
    /// Redis MGET split over servers: array elements merged in the client's key order.
    case array(RespArrayByPosition)
    /// Redis integer replies summed (DEL, UNLINK, EXISTS, TOUCH, DBSIZE), warm-up old pool apart.
    case sum(IntegerSum)
    /// Every server gets the command, the first server's reply is returned (SCRIPT LOAD).
    case first(FirstReply)
    /// Tern wrote the reply beforehand (pub/sub confirmations): parts only have to succeed.
    case prepared(PreparedReply)
    /// Arrays from every server, merged without repeats (PUBSUB CHANNELS), or with them (KEYS).
    case union(RespUnion)
    /// SCAN on one server: its cursor rewritten into Tern's, which names the server too.
    case scanCursor(ScanCursor)
    /// `[name, count, …]` arrays from every server, counts summed by name's position (PUBSUB NUMSUB).
    case pairSum(RespPairSum)
    /// SCRIPT EXISTS on every server: 1 for a script all of them hold.
    case everyServerHas(EveryServerHas)
    /// SCRIPT KILL / FUNCTION KILL on every server: `+OK` when one stopped a script.
    case kill(KillReply)
    /// A warm-up delete sent to both pools: the new pool's reply, "deleted" when either deleted.
    case eitherDeleted(EitherDeleted)
    /// A warm-up GETDEL sent to both pools: the new pool's value, else the old pool's.
    case eitherValue(EitherValue)
}

/// memcached multi-get: each part's VALUE records are stored in the slot as they come and
/// leave in the client's key order (`ReplySlot.keys`), behind one END; keys of a failed
/// server are misses.
struct MultiGetRecords {
    /// Records come in the order the part asked for its keys; one that matches no key still
    /// unanswered means the reply is someone else's (checked in the same walk that merges, so a
    /// merge costs one pass over the reply). Returns false then.
    func take(_ reply: UnsafeRawBufferPointer, part: Int32, into slot: ReplySlot) -> Bool {
        // A large reply is kept whole where it arrived; small ones have their records copied.
        let kept = reply.count >= ReplySlot.keptReply ? slot.keep(reply) : nil
        var cursor = 0
        var inStep = true
        MemcacheReplyParser.forEachValue(reply) { keyRange, recordRange in
            guard inStep else { return }
            let key = UnsafeRawBufferPointer(rebasing: reply[keyRange])
            while cursor < slot.keys.count {
                let entry = slot.keys[cursor]
                cursor += 1
                guard entry.server == part, entry.recordStart < 0, slot.sameKey(entry, key) else { continue }
                slot.placeRecord(cursor - 1, recordRange, of: reply, kept: kept)
                if entry.repeats > 0 { slot.repeatedBytes += Int(entry.repeats) * recordRange.count }
                return
            }
            inStep = false
        }
        return inStep
    }

    func emit(_ slot: ReplySlot, into output: ByteBuffer) {
        if slot.isOverflowed { return output.append(slot.data.readable) }
        if slot.hasRepeatedKeys { return emitWithRepeats(slot, into: output) }
        if slot.mergesLarge {
            var total = 5
            for entry in slot.keys where entry.recordStart >= 0 { total += entry.recordLength }
            slot.reserveForMerge(total, in: output)
        }
        for entry in slot.keys where entry.recordStart >= 0 { slot.appendRecord(entry, to: output) }
        output.append("END\r\n" as StaticString)
    }

    /// A get that named a key more than once: each repeat gets a copy of the key's record.
    private func emitWithRepeats(_ slot: ReplySlot, into output: ByteBuffer) {
        if slot.mergesLarge || slot.repeatedBytes >= ReplySlot.largeReply {
            var total = 5
            for entry in slot.keys {
                let source = slot.source(of: entry)
                if source.recordStart >= 0 { total += source.recordLength }
            }
            slot.reserveForMerge(total, in: output)
        }
        for entry in slot.keys {
            let source = slot.source(of: entry)
            if source.recordStart >= 0 { slot.appendRecord(source, to: output) }
        }
        output.append("END\r\n" as StaticString)
    }
}

/// Every part must say OK: memcached `OK` (flush_all, old pool included) or RESP `+OK`.
struct AllOK {
    enum Dialect { case memcached, resp }
    let dialect: Dialect

    func take(_ reply: UnsafeRawBufferPointer, isError: Bool, into slot: ReplySlot) {
        let ok: Bool
        switch dialect {
        case .memcached:
            ok = !isError && MemcacheReply.classify(reply) == .ok
        case .resp:
            ok = RespReply.classify(reply) == .ok
        }
        if !ok { slot.recordError(reply) }
    }

    /// Every part said OK.
    func settle(_ slot: ReplySlot) {
        switch dialect {
        case .memcached: if !slot.isSilent { slot.data.append("OK\r\n" as StaticString) }
        case .resp: slot.data.append("+OK\r\n" as StaticString)
        }
    }
}

/// Redis MGET: each part's array elements are placed at the positions of the keys that part
/// was asked for (`ReplySlot.keys`, in order); keys never answered are nil.
struct RespArrayByPosition {
    func take(_ reply: UnsafeRawBufferPointer, part: Int32, into slot: ReplySlot) {
        // An earlier part's error is the answer: later elements are not placed (they would
        // have been appended behind the error line and sent after it).
        guard !slot.hasError else { return }
        guard RespReply.type(ofFramed: reply) == .array else {
            // The backend's own error (or an unexpected reply) becomes the answer.
            return slot.recordError(reply)
        }
        // A large reply is kept whole where it arrived; small ones have their elements copied.
        let kept = reply.count >= ReplySlot.keptReply ? slot.keep(reply) : nil
        if !slot.groupHeads.isEmpty {
            // Many parts: this part's keys along their chain.
            var position = slot.firstKey(ofGroup: part) ?? -1
            RespReplyParser.forEachElement(reply) { range in
                guard position >= 0 else { return }
                slot.placeRecord(position, range, of: reply, kept: kept)
                let repeats = slot.keys[position].repeats
                if repeats > 0 { slot.repeatedBytes += Int(repeats) * range.count }
                position = Int(slot.keys[position].nextInGroup)
            }
            return
        }
        var cursor = 0
        RespReplyParser.forEachElement(reply) { range in
            while cursor < slot.keys.count, slot.keys[cursor].server != part { cursor += 1 }
            guard cursor < slot.keys.count else { return }
            slot.placeRecord(cursor, range, of: reply, kept: kept)
            let repeats = slot.keys[cursor].repeats
            if repeats > 0 { slot.repeatedBytes += Int(repeats) * range.count }
            cursor += 1
        }
    }

    func emit(_ slot: ReplySlot, into output: ByteBuffer) {
        if slot.hasError { return output.append(slot.data.readable) }
        if slot.hasRepeatedKeys { return emitWithRepeats(slot, into: output) }
        if slot.mergesLarge {
            var total = 24
            for entry in slot.keys { total += entry.recordStart >= 0 ? entry.recordLength : 5 }
            slot.reserveForMerge(total, in: output)
        }
        output.appendArrayHeader(slot.keys.count)
        for entry in slot.keys {
            if entry.recordStart >= 0 { slot.appendRecord(entry, to: output) } else { output.append("$-1\r\n" as StaticString) }
        }
    }

    /// An MGET that named a key more than once: each repeat gets a copy of the key's element.
    private func emitWithRepeats(_ slot: ReplySlot, into output: ByteBuffer) {
        if slot.mergesLarge || slot.repeatedBytes >= ReplySlot.largeReply {
            var total = 24
            for entry in slot.keys {
                let source = slot.source(of: entry)
                total += source.recordStart >= 0 ? source.recordLength : 5
            }
            slot.reserveForMerge(total, in: output)
        }
        output.appendArrayHeader(slot.keys.count)
        for entry in slot.keys {
            let source = slot.source(of: entry)
            if source.recordStart >= 0 { slot.appendRecord(source, to: output) } else { output.append("$-1\r\n" as StaticString) }
        }
    }
}

/// Redis integer replies summed. A warm-up DEL/UNLINK's old-pool parts are summed apart and
/// never fail the request; the reply is the larger of the two counts.
struct IntegerSum {
    var total = 0
    var oldTotal = 0

    mutating func take(_ reply: UnsafeRawBufferPointer, part: Int32, into slot: ReplySlot) {
        if ReplyPart.isOld(part) {
            oldTotal += RespReplyParser.integer(reply) ?? 0
        } else if let value = RespReplyParser.integer(reply) {
            total += value
        } else {
            slot.recordError(reply)
        }
    }

    /// Whether the failure of `part` is only counted (an old-pool part).
    func failureIsCounted(_ part: Int32, _ slot: ReplySlot) -> Bool {
        guard ReplyPart.isOld(part) else { return false }
        if let counters = slot.warmupCounters { WarmupCounters.add(counters.oldErrors) }
        return true
    }

    func settle(_ slot: ReplySlot) {
        slot.data.appendInteger(max(total, oldTotal))
    }
}

/// The reply of the lowest-numbered part (the first server); any error wins over it.
struct FirstReply {
    var firstPart = Int32.max

    mutating func take(_ reply: UnsafeRawBufferPointer, part: Int32, isError: Bool, into slot: ReplySlot) {
        if isError {
            slot.recordError(reply)
        } else if part < firstPart, !slot.hasError {
            firstPart = part
            slot.data.removeAll()
            slot.data.append(reply)
        }
    }
}

/// Tern wrote the reply before the parts were sent; an error from one of them replaces it.
struct PreparedReply {
    func take(_ reply: UnsafeRawBufferPointer, isError: Bool, into slot: ReplySlot) {
        if isError { slot.recordError(reply) }
    }
}

/// PUBSUB CHANNELS: every element once, in the order first seen; KEYS (`keepsRepeats`, each
/// key lives on one server): every element of every part. Each kept element is a
/// `ReplySlot.keys` entry pointing into the slot's bytes.
struct RespUnion {
    var keepsRepeats = false

    func take(_ reply: UnsafeRawBufferPointer, into slot: ReplySlot) {
        // An earlier part's error is the answer: later elements are not kept (they were
        // appended behind the error line and sent after it, and the entries of those kept
        // before it point past the bytes the error left; a server down made KEYS answer the
        // error and then the other servers' keys, which the client read as the replies to its
        // next commands: session sweep 32).
        guard !slot.hasError else { return }
        guard RespReply.type(ofFramed: reply) == .array else { return slot.recordError(reply) }
        if keepsRepeats {
            RespReplyParser.forEachElement(reply) { slot.store(UnsafeRawBufferPointer(rebasing: reply[$0])) }
            return
        }
        // Elements seen are found by hash (each element was compared with every one kept:
        // PUBSUB CHANNELS of 60,000 channels held the worker for 4 s).
        let seen: UnionSeen
        if let made = slot.heldWithRequest as? UnionSeen {
            seen = made
        } else {
            seen = UnionSeen()
            slot.heldWithRequest = seen
        }
        RespReplyParser.forEachElement(reply) { range in
            let element = UnsafeRawBufferPointer(rebasing: reply[range])
            if seen.isNew(element, in: slot) { slot.store(element) }
        }
    }

    func emit(_ slot: ReplySlot, into output: ByteBuffer) {
        if slot.hasError { return output.append(slot.data.readable) }
        output.appendArrayHeader(slot.keys.count)
        for entry in slot.keys { slot.appendRecord(entry, to: output) }
    }
}

/// SCAN through a sharded pool: Tern's cursor is `serverCursor << bits | server`, with `bits`
/// enough for the pool's server positions (none for one server, whose cursors pass unchanged).
/// The server's `[cursor, keys]` comes back with its next cursor rewritten; when a server is
/// done (cursor 0), the next cursor starts the next server, and 0 follows the last one.
struct ScanCursor {
    var server: Int32
    var servers: Int32
    var bits: Int32

    /// Tern's cursor from a client's argument: the server it names and that server's cursor
    /// (nil: not a cursor, or a server position past the pool's).
    static func decode(_ text: UnsafeRawBufferPointer, servers: Int) -> (server: Int, cursor: UInt64, bits: Int)? {
        guard !text.isEmpty, text.count <= 20, let value = UInt64(String(decoding: text, as: UTF8.self)) else { return nil }
        let bits = servers <= 1 ? 0 : Int.bitWidth - (servers - 1).leadingZeroBitCount
        let server = Int(value & ((1 << UInt64(bits)) - 1))
        guard server < max(servers, 1) else { return nil }
        return (server, value >> UInt64(bits), bits)
    }

    func take(_ reply: UnsafeRawBufferPointer, isError: Bool, into slot: ReplySlot) {
        guard !isError, RespReply.type(ofFramed: reply) == .array else { return slot.recordError(reply) }
        var elements: [Range<Int>] = []
        RespReplyParser.forEachElement(reply) { elements.append($0) }
        guard elements.count == 2, case let .bulk(digits) = RespReply.classify(UnsafeRawBufferPointer(rebasing: reply[elements[0]])),
              let next = UInt64(String(decoding: UnsafeRawBufferPointer(rebasing: reply[elements[0]])[digits], as: UTF8.self)) else {
            return refuse("-ERR unexpected SCAN reply from the server\r\n", slot)
        }
        let cursor: UInt64
        if next != 0 {
            guard next <= UInt64.max >> UInt64(bits) else {
                return refuse("-ERR the server's SCAN cursor does not fit Tern's\r\n", slot)
            }
            cursor = next << UInt64(bits) | UInt64(server)
        } else {
            cursor = server + 1 < servers ? UInt64(server + 1) : 0
        }
        slot.data.appendArrayHeader(2)
        slot.data.appendBulk(String(cursor))
        slot.data.append(UnsafeRawBufferPointer(rebasing: reply[elements[1]]))
    }

    private func refuse(_ text: StaticString, _ slot: ReplySlot) {
        // A StaticString's bytes are static: the pointer outlives the call.
        slot.recordError(UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }
}

/// PUBSUB NUMSUB: `[name, count, …]` from every server in the client's name order; the counts
/// are summed by position (kept in the `server` field of each name's `ReplySlot.keys` entry).
/// A key-event channel's subscribers are subscribed on every server (`RedisChannelOrigin`):
/// its count is the largest any server gives, so each is counted once.
struct RespPairSum {
    func take(_ reply: UnsafeRawBufferPointer, into slot: ReplySlot) {
        // An earlier part's error is the answer (see `RespUnion.take`).
        guard !slot.hasError else { return }
        guard RespReply.type(ofFramed: reply) == .array else { return slot.recordError(reply) }
        var position = 0
        var onEveryServer = false
        RespReplyParser.forEachElement(reply) { range in
            let element = UnsafeRawBufferPointer(rebasing: reply[range])
            if position % 2 == 0 {
                if position / 2 >= slot.keys.count { slot.store(element) }
                onEveryServer = RedisChannelOrigin(channel: Self.payload(ofBulk: element)) == .everyServer
            } else if let count = RespReplyParser.integer(element), position / 2 < slot.keys.count {
                let count = Int32(truncatingIfNeeded: count)
                if onEveryServer {
                    slot.keys[position / 2].server = max(slot.keys[position / 2].server, count)
                } else {
                    slot.keys[position / 2].server &+= count
                }
            }
            position += 1
        }
    }

    /// The bytes of a bulk string reply (`$3\r\nabc\r\n`), or none.
    private static func payload(ofBulk bulk: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        guard bulk.first == UInt8(ascii: "$"), let newline = bulk.firstIndex(of: 0x0A), newline + 3 <= bulk.count else {
            return UnsafeRawBufferPointer(start: nil, count: 0)
        }
        return UnsafeRawBufferPointer(rebasing: bulk[(newline + 1)..<(bulk.count - 2)])
    }

    func emit(_ slot: ReplySlot, into output: ByteBuffer) {
        if slot.hasError { return output.append(slot.data.readable) }
        output.appendArrayHeader(slot.keys.count * 2)
        for entry in slot.keys {
            slot.appendRecord(entry, to: output)
            output.appendInteger(Int(entry.server))
        }
    }
}

/// SCRIPT EXISTS sha…: 1 where every server has the script, so that `EVALSHA` finds it whatever
/// its keys (`EVAL` caches a script on its keys' server only; `SCRIPT LOAD` reaches every
/// server). Each element's minimum is kept in its `ReplySlot.keys` entry's `server` field.
struct EveryServerHas {
    func take(_ reply: UnsafeRawBufferPointer, into slot: ReplySlot) {
        guard RespReply.type(ofFramed: reply) == .array else { return slot.recordError(reply) }
        let first = slot.keys.isEmpty
        var position = 0
        RespReplyParser.forEachElement(reply) { range in
            let value = Int32(truncatingIfNeeded: RespReplyParser.integer(UnsafeRawBufferPointer(rebasing: reply[range])) ?? 0)
            if first {
                slot.keys.append(ReplySlot.KeyEntry(keyStart: 0, keyLength: 0, server: value))
            } else if position < slot.keys.count {
                slot.keys[position].server = min(slot.keys[position].server, value)
            }
            position += 1
        }
    }

    func emit(_ slot: ReplySlot, into output: ByteBuffer) {
        if slot.hasError { return output.append(slot.data.readable) }
        output.appendArrayHeader(slot.keys.count)
        for entry in slot.keys { output.appendInteger(Int(entry.server)) }
    }
}

/// SCRIPT KILL or FUNCTION KILL, sent to every server on connections of their own (the shared
/// ones are stuck behind the running script): `+OK` when one of them stopped a script; else
/// the error that says most, a script that cannot be stopped (`-UNKILLABLE`, a failure) before
/// no script running (`-NOTBUSY`).
struct KillReply {
    private var rank: UInt8 = 0

    mutating func take(_ reply: UnsafeRawBufferPointer, isError: Bool, into slot: ReplySlot) {
        let notBusy = reply.count >= 8 && memcmp(reply.baseAddress!, "-NOTBUSY", 8) == 0
        note(isError ? notBusy ? 1 : 2 : 3, into: slot) { $0.append(reply) }
    }

    mutating func failed(_ reason: String, into slot: ReplySlot) {
        note(2, into: slot) { $0.append(slot.errorLine(reason)) }
    }

    private mutating func note(_ rank: UInt8, into slot: ReplySlot, _ write: (ByteBuffer) -> Void) {
        guard rank > self.rank else { return }
        self.rank = rank
        slot.data.removeAll()
        write(slot.data)
    }
}

/// A warm-up delete sent to both pools: the new pool's reply, but "deleted" when the old pool
/// deleted the key. The old pool failing never fails the delete; it is counted
/// (`WarmupInvalidation.fail`).
struct EitherDeleted {
    /// A meta `md` (its statuses are `HD`/`NF`, not `DELETED`/`NOT_FOUND`).
    var isMeta = false
    /// A quiet `md`: "deleted" is said with nothing at all.
    var isQuietMeta = false
    var oldDeleted = false

    mutating func take(_ reply: UnsafeRawBufferPointer, part: Int32, into slot: ReplySlot) {
        if ReplyPart.isOld(part) {
            // DELETED (text), HD (meta), or nothing at all from a quiet md that deleted.
            if reply.isEmpty {
                oldDeleted = true
            } else {
                let status = MemcacheReply.classify(reply)
                oldDeleted = status == .deleted || status == .success
            }
            return
        }
        slot.data.removeAll()
        slot.data.append(reply)
    }

    /// NOT_FOUND / NF from the new pool becomes DELETED / HD when the old pool deleted the key.
    func settle(_ slot: ReplySlot) {
        guard oldDeleted else { return }
        let data = slot.data
        let reply = data.readable
        guard MemcacheReply.classify(reply) == .notFound else { return }
        if !isMeta {
            data.removeAll()
            data.append("DELETED\r\n" as StaticString)
        } else if isQuietMeta {
            data.removeAll()
        } else {
            // `NF <flags>` becomes `HD <flags>`: the flags (opaque, key) stay as echoed.
            let rest = Array(reply[2...])
            data.removeAll()
            data.append("HD" as StaticString)
            rest.withUnsafeBytes { data.append($0) }
        }
    }
}

/// A warm-up `GETDEL` sent to both pools: the new pool's reply, or the old pool's value when the
/// new pool had none — from the client's view the key existed, since a `GET` would have
/// returned it — and nil only when neither had it. Each reply kept is a `ReplySlot.keys`
/// entry (its `server`: 0 the new pool's, 1 the old pool's value), and at most one value is
/// kept (next to the new pool's 5-byte nil at most): an old value is dropped, or never kept,
/// once the new pool has answered with one. The old pool failing, or answering anything but a
/// value (another type, an error), never fails the request (`WarmupInvalidation.fail`).
struct EitherValue {
    private static let new: Int32 = 0
    private static let old: Int32 = 1

    private func entry(_ pool: Int32, _ slot: ReplySlot) -> ReplySlot.KeyEntry? {
        slot.keys.first { $0.server == pool }
    }

    private func newIsValue(_ slot: ReplySlot) -> Bool {
        guard let new = entry(Self.new, slot) else { return false }
        let bytes = slot.data.readable
        return RespReply.classify(UnsafeRawBufferPointer(rebasing: bytes[new.recordStart..<(new.recordStart + new.recordLength)])) != .null
    }

    func take(_ reply: UnsafeRawBufferPointer, part: Int32, isError: Bool, into slot: ReplySlot) {
        if slot.hasError { return }
        let pool: Int32
        if ReplyPart.isOld(part) {
            guard !isError, case .bulk = RespReply.classify(reply), !newIsValue(slot) else { return }
            pool = Self.old
        } else if isError {
            return slot.recordError(reply)
        } else {
            if RespReply.classify(reply) != .null, entry(Self.old, slot) != nil {
                // The new pool's value wins: the old one is not kept.
                slot.data.removeAll()
                slot.keys.removeAll(keepingCapacity: true)
            }
            pool = Self.new
        }
        slot.store(reply)
        slot.keys[slot.keys.count - 1].server = pool
    }

    func emit(_ slot: ReplySlot, into output: ByteBuffer) {
        guard !slot.hasError, let new = entry(Self.new, slot) else { return output.append(slot.data.readable) }
        if let old = entry(Self.old, slot), !newIsValue(slot) {
            slot.appendRecord(old, to: output)
        } else {
            slot.appendRecord(new, to: output)
        }
    }
}

/// A warm-up invalidation sent to both pools (`EitherDeleted`, `EitherValue`): a failed
/// old-pool part is only counted; a failed new-pool part's error is the reply.
enum WarmupInvalidation {
    static func fail(part: Int32, reason: String, _ slot: ReplySlot) {
        if ReplyPart.isOld(part) {
            if let counters = slot.warmupCounters { WarmupCounters.add(counters.oldErrors) }
            return
        }
        if !slot.isSilent {
            slot.data.removeAll()
            slot.data.append(slot.errorLine(reason))
        }
        slot.hasError = true
    }
}

/// The elements a union (`RespUnion`) kept, by hash: an open-addressed table of positions in
/// `ReplySlot.keys`, at most half full. Made for the request and released with it
/// (`ReplySlot.heldWithRequest`); the hash is seeded per process (`Hasher`), so elements
/// chosen to collide cannot be prepared. Confined to the slot's worker thread.
final class UnionSeen {
    private var table = [Int32](repeating: -1, count: 64)
    private var count = 0

    /// Whether `element` is not among the slot's kept elements; if so, the caller stores it and
    /// it is noted here as the slot's next entry.
    func isNew(_ element: UnsafeRawBufferPointer, in slot: ReplySlot) -> Bool {
        if (count + 1) * 2 > table.count { grow(slot) }
        let mask = table.count - 1
        var index = Self.hash(element) & mask
        while table[index] >= 0 {
            if slot.bytesEqual(element, slot.keys[Int(table[index])]) { return false }
            index = (index + 1) & mask
        }
        table[index] = Int32(slot.keys.count)
        count += 1
        return true
    }

    private func grow(_ slot: ReplySlot) {
        table = [Int32](repeating: -1, count: table.count * 2)
        let mask = table.count - 1
        let stored = slot.data.readable
        for position in slot.keys.indices {
            let entry = slot.keys[position]
            var index = Self.hash(UnsafeRawBufferPointer(rebasing: stored[entry.recordStart..<(entry.recordStart + entry.recordLength)])) & mask
            while table[index] >= 0 { index = (index + 1) & mask }
            table[index] = Int32(position)
        }
    }

    private static func hash(_ bytes: UnsafeRawBufferPointer) -> Int {
        var hasher = Hasher()
        hasher.combine(bytes: bytes)
        return hasher.finalize()
    }
}
