#if canImport(Glibc)
import Glibc
#endif
import TernCore

/// The place of one client request in that client's reply order, and the bytes of its reply.
///
/// A client's slots leave in the order the requests arrived; a slot may be filled out of order
/// (different backends answer at different speeds). A slot is filled by one backend reply, by
/// the parts of a request split over several (`ReplySplit` counts them; the slot's `sink`
/// merges them, see `ReplySinks.swift`), or by Tern itself. The slot keeps order, the count of
/// parts still out and the bytes (reply data, keys and where each key's record is); it knows no
/// merge rule. Slots are recycled through the worker's pool. Confined to one worker thread.
final class ReplySlot {
    /// Replies at least this large that must wait in a slot are stored with `largeReplyHeadroom`
    /// bytes free in front, so they can become the client's output without a copy.
    static let largeReply = 1 << 16
    static let largeReplyHeadroom = 16384

    /// Offsets are full-width: a merged reply may pass 2 GiB when `client_output_limit` allows.
    struct KeyEntry {
        var keyStart: Int
        var keyLength: Int
        var server: Int32
        /// Where the record is: 0 in `data`, k in `kept[k - 1]`.
        var buffer: Int32 = 0
        var recordStart = -1
        var recordLength = 0
        /// Later keys of the request that repeat this one (multi-key reads): they are not sent,
        /// their place in the reply gets a copy of this key's record. A repeat's own entry has
        /// `server` -2 - the position of the key it repeats (`addRepeat(of:)`).
        var repeats: Int32 = 0
        /// With `groupHeads`: the next key of the same part (-1 after its last).
        var nextInGroup: Int32 = -1
    }

    /// A Redis MGET split over many parts (a cluster pool's hash slots): each part's first key
    /// in `keys`, sorted by part, the rest chained by `KeyEntry.nextInGroup`, so that placing a
    /// part's elements walks that part's keys only. Found by a scan from the first key per
    /// part, 200,000 keys over 16,384 slots held the worker for seconds (cluster sweep 31).
    /// Empty for a request of few parts, which scans.
    struct GroupHead {
        var group: Int32
        var head: Int32
    }
    var groupHeads: [GroupHead] = []

    /// The first key of part `group`, from `groupHeads` (nil: not one of them).
    func firstKey(ofGroup group: Int32) -> Int? {
        var low = 0
        var high = groupHeads.count
        while low < high {
            let middle = (low + high) / 2
            if groupHeads[middle].group < group { low = middle + 1 } else { high = middle }
        }
        return low < groupHeads.count && groupHeads[low].group == group ? Int(groupHeads[low].head) : nil
    }

    /// The entry whose record answers `entry`: itself, or for a repeated key the entry of its
    /// first occurrence.
    @inline(__always)
    func source(of entry: KeyEntry) -> KeyEntry {
        entry.server <= -2 ? keys[Int(-2 - entry.server)] : entry
    }

    /// A later key of a multi-key read (at the end of `keys`) repeats the key at `earlier`.
    func addRepeat(of earlier: Int) {
        keys[earlier].repeats += 1
        keys.append(KeyEntry(keyStart: keys[earlier].keyStart, keyLength: keys[earlier].keyLength, server: -2 - Int32(earlier)))
        hasRepeatedKeys = true
    }

    /// The client waiting for this reply; nil once that client has gone.
    ///
    /// Held without a reference count (`Unmanaged`, no retain when set, no release in `reset`)
    /// and called through `_withUnsafeGuaranteedRef` on the reply path, which saves two
    /// retain/release pairs per request. Invariant: a client outlives every slot that names it.
    /// Each slot a client makes is in its `slots` queue (`ReplyOwner.newSlot` is the only maker)
    /// until it leaves that queue, and both ways out clear this field first: `ReplyDesk.recycle`
    /// (through `reset`) and `ClientConnection.close`, which empties the queue, setting it to nil
    /// in each slot still in flight, before the client is released (and the released client
    /// stays in the worker's `retired` list until the end of the loop pass). A client moves to
    /// another worker only with its queue empty (`isMovable`).
    private var clientReference: Unmanaged<ReplyOwner>?
    var client: ReplyOwner? {
        get { clientReference?.takeUnretainedValue() }
        set { clientReference = newValue.map { Unmanaged.passUnretained($0) } }
    }
    // The fields the request and reply paths read and write come first, next to each other
    // (stored properties are laid out in declaration order): a slot is cold by the time its
    // reply arrives, and each of its cache lines touched is a miss.
    /// Most reply bytes this request may hold (the pool's `client_output_limit`), checked before
    /// a backend reply is stored; past it the request fails and later parts are dropped.
    var replyLimit = Int.max
    /// The loop time the request was read at.
    var startedAt: Double = 0
    /// Bytes of this slot counted in its client's `heldReplyBytes` (taken back when it leaves).
    var countedBytes = 0
    /// Bytes of the kept replies below, counted in `heldBytes`.
    private(set) var keptBytes = 0
    /// A request in phases: a read on a warm-up pool (new pool, old pool, resend); a Redis
    /// WATCH that begins a lease (`FirstWatch`); on a Redis Cluster pool an EXEC or a blocking
    /// command that follows a redirect (`ClusterExec`, `ClusterBlocking`).
    var warmup: PhasedRead?
    /// The request's row in the pool's `CommandStats` (-1: not counted).
    var command: Int32 = -1
    /// Backend queue entries that name this slot without a reference
    /// (`ServerConnection.Pending`): while any does, the slot is neither reused nor freed
    /// (`ReplyDesk.recycle`, `ReplyDesk.sweepOrphans`).
    var queuedEntries: Int32 = 0
    var isOverflowed = false
    /// A multi-key read named a key more than once (`KeyEntry.repeats`), and the bytes the
    /// copies of repeated records will add to the merged reply (counted toward `replyLimit`).
    var hasRepeatedKeys = false
    var repeatedBytes = 0
    /// Set by a multi-get merge that met a key its part did not ask for.
    private var replyOutOfStep = false
    /// `data` was reached since the last `reset` (only then may `dataBuffer` hold bytes).
    private var dataUsed = false
    var isDone = false
    /// No reply leaves for this request: a memcached `noreply` request (the backend's answer
    /// is dropped), or a blocking Redis command ended because its client left.
    var isSilent = false
    /// Whether errors Tern makes are written as RESP (`-ERR …`) or memcached text.
    var isRedis = false
    /// How the parts' replies become one (`.single` unless a `ReplySplit` named another).
    fileprivate(set) var sink = ReplySink.single
    /// A binary-protocol request: its reply leaves as a response packet.
    var binary: BinaryContext?
    /// Parts still to answer: 1 for a request that is not split; set only by `ReplySplit` (below).
    fileprivate(set) var remainingParts = 1
    /// Reply bytes held until the slot reaches the head of the client's queue.
    ///
    /// Reached through this accessor, which marks the buffer used: the common request (a reply
    /// that goes straight to the output) never touches the buffer object, a separate heap object
    /// whose cache line the reply path otherwise read three times and `reset` wrote, per
    /// request (about 2 of the 10 first-level cache misses per pipelined GET in callgrind's
    /// cache simulation). Code that only asks whether bytes are held uses `holdsData` or
    /// `heldBytes`, which do not mark.
    var data: ByteBuffer {
        @inline(__always) get {
            dataUsed = true
            return dataBuffer
        }
    }
    private let dataBuffer = ByteBuffer(minimumCapacity: 256)
    /// Whether reply bytes are held in `data`.
    var holdsData: Bool { dataUsed && !dataBuffer.isEmpty }
    /// Multi-key requests: the keys (bytes in `keyBytes`, memcached) with the part each went
    /// in, and where each one's record is in `data`; sinks that keep elements use it likewise.
    var keys: [KeyEntry] = []
    /// The request's keys as bytes (memcached multi-key gets, binary requests); marked used like
    /// `data`.
    var keyBytes: ByteBuffer {
        @inline(__always) get {
            keyBytesUsed = true
            return keyBuffer
        }
    }
    /// First allocation 256 bytes (a memcached key is at most 250): at 4 KiB, every pipelined
    /// single-key get held a page for its one key, and 2,500 clients leaving with 50 gets in
    /// flight each took Tern's RSS from 26 to 330 MB (reload sweep 29).
    private let keyBuffer = ByteBuffer(minimumCapacity: 256)
    private var keyBytesUsed = false
    /// Large part replies of a merge, each kept in the backend buffer it arrived in (`keep`):
    /// merged without a copy into `data` first. Their bytes, counted in `heldBytes`.
    private(set) var kept: [ByteBuffer] = []
    /// For each kept reply, how far (offset in its unread bytes) its pages were given back
    /// while the merge copied its records out (`appendRecord`).
    private var keptDiscarded: [Int] = []
    var hasError = false
    /// A part failed with its server on a pool whose clients close for it
    /// (`close_on_server_failure`): the client closes when this slot reaches the head of its
    /// queue, instead of writing it (`ReplyOwner.emitFinished`).
    var closesClient = false
    /// A split that reaches a warm-up's old pool: the new pool's counters, where failures of
    /// old-pool parts are counted (set by `ReplySplit`).
    fileprivate(set) var warmupCounters: WarmupCounters?
    /// An object that lives as long as the request (released when the slot is recycled): a
    /// warm-up's deletes in flight (`WarmupDeletesInFlight`, in Backend/).
    var heldWithRequest: AnyObject?

    func reset() {
        clientReference = nil
        if !isSingle { sink = .single }
        isDone = false
        isSilent = false
        closesClient = false
        remainingParts = 1
        if dataUsed {
            dataUsed = false
            dataBuffer.removeAll()
            // A recycled slot keeps a buffer a 10-key multi-get fits in (16 KiB), so the common
            // merge allocates nothing; the worker keeps at most `ReplyDesk.keptSlots` slots, so a
            // past burst of large replies pins at most 16 MiB.
            dataBuffer.releaseIfIdle(keep: 16384)
        }
        if !kept.isEmpty { dropKept() }
        if !keys.isEmpty { keys.removeAll(keepingCapacity: true) }
        if !groupHeads.isEmpty { groupHeads = [] }
        hasError = false
        isRedis = false
        if warmup != nil { warmup = nil }
        if warmupCounters != nil { warmupCounters = nil }
        if heldWithRequest != nil { heldWithRequest = nil }
        replyLimit = Int.max
        isOverflowed = false
        if hasRepeatedKeys {
            hasRepeatedKeys = false
            repeatedBytes = 0
        }
        countedBytes = 0
        if binary != nil { binary = nil }
        command = -1
        // Capacity taken by one huge request is not kept by a recycled slot.
        if keys.capacity > 64 { keys = [] }
        if keyBytesUsed {
            keyBytesUsed = false
            keyBuffer.removeAll()
            // Up to 4 KiB kept (a multi-get's keys): with a `keep` below the buffer's first
            // allocation, every single-key get allocated its key buffer anew (0.9 allocations per
            // request on memcached 90/10, found by bench/allocations.sh).
            keyBuffer.releaseIfIdle(keep: 4096)
        }
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
        clientReference?._withUnsafeGuaranteedRef { owner in
            // A merged, warm-up or local reply's size (a single one was noted as it arrived).
            owner.noteReply(heldBytes &+ repeatedBytes)
            owner.slotCompleted(self)
        }
    }

    /// Reply bytes this slot holds now (its data and a warm-up's copied values).
    var heldBytes: Int {
        let held = (dataUsed ? dataBuffer.readableCount : 0) &+ keptBytes
        // Only a warm-up read holds values outside `data`: the common slot reads no more.
        guard let warmup else { return held }
        return held + warmup.values.count
    }

    /// Part replies at least this large are merged from the backend buffer they arrived in.
    static let keptReply = 1 << 18

    /// Keeps a part's reply for a merge and says where: the buffer (as `KeyEntry.buffer`) and
    /// the offset of the reply's first byte in it. A large reply at the front of its backend
    /// buffer (`ReplyDesk.largeReply`) takes that buffer's memory, so a merge of large values copies
    /// each once (into the output), not twice; others are copied to `data`.
    func keep(_ reply: UnsafeRawBufferPointer) -> (buffer: Int32, offset: Int) {
        if reply.count >= Self.keptReply, let desk = client?.desk, !desk.tookLargeReply,
           let (source, length) = desk.largeReply, source.readable.baseAddress == reply.baseAddress {
            let buffer = ByteBuffer()
            buffer.take(reply.count, of: source, used: length)
            desk.tookLargeReply = true
            kept.append(buffer)
            keptDiscarded.append(0)
            keptBytes += reply.count
            return (Int32(kept.count), 0)
        }
        let offset = data.readableCount
        data.append(reply)
        return (0, offset)
    }

    /// Where key `index`'s record (`range` of a part's reply) is: in the reply as kept whole
    /// (`kept`, from `keep`), or in a copy appended to `data`.
    @inline(__always)
    func placeRecord(_ index: Int, _ range: Range<Int>, of reply: UnsafeRawBufferPointer, kept: (buffer: Int32, offset: Int)?) {
        keys[index].recordLength = range.count
        if let kept {
            keys[index].buffer = kept.buffer
            keys[index].recordStart = kept.offset + range.lowerBound
        } else {
            keys[index].recordStart = data.readableCount
            data.append(UnsafeRawBufferPointer(rebasing: reply[range]))
        }
    }

    private func dropKept() {
        kept.removeAll()
        keptDiscarded.removeAll()
        keptBytes = 0
    }

    /// True when this slot merges large replies: its sink then sizes the output once
    /// (`reserveForMerge`) instead of letting it grow, and copy, at each doubling. Small merges
    /// skip both the sizing and the sum of record lengths it needs.
    var mergesLarge: Bool { keptBytes > 0 || (dataUsed && dataBuffer.readableCount >= Self.largeReply) }

    /// Room in `output` for `total` more bytes, allocated at that size.
    func reserveForMerge(_ total: Int, in output: ByteBuffer) {
        output.reserveMapped(frame: output.readableCount + total)
    }

    /// A backend's reply for `part` of this slot. Bytes held for the client are counted on the
    /// client before and after, so replies waiting behind a slow request count toward its
    /// `client_output_limit` too.
    /// Returns false when the reply cannot be this part's (a multi-get part naming a key it did
    /// not ask for): nothing of it was counted, and the caller fails the part and the connection.
    @discardableResult
    func deliver(part: Int32, reply: UnsafeRawBufferPointer, isError: Bool) -> Bool {
        if isOverflowed || heldBytes &+ repeatedBytes &+ reply.count > replyLimit {
            overflow()
            return true
        }
        replyOutOfStep = false
        deliverPart(part, reply, isError)
        countHeld()
        return !replyOutOfStep
    }

    /// Brings the client's count of held reply bytes up to date with this slot.
    @inline(__always)
    func countHeld() {
        // The common case (a reply that went straight to the output) holds nothing: decided
        // before the client is touched.
        // Copies of repeated keys' records count as held: they are built when the slot leaves.
        let held = heldBytes &+ repeatedBytes
        guard held != countedBytes, let clientReference else { return }
        let delta = held - countedBytes
        countedBytes = held
        clientReference._withUnsafeGuaranteedRef { $0.heldChanged(by: delta) }
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
            if !kept.isEmpty { dropKept() }
            repeatedBytes = 0
            hasError = true
            if !isSilent { data.append(errorLine("reply exceeds client_output_limit")) }
            // The client's next requests go one at a time until its replies are small again.
            client?.noteReply(replyLimit)
            client?.poolCounters.overLimit.add()
            countHeld()
        }
        remainingParts -= 1
        if remainingParts <= 0 { finish() }
    }

    /// Copies of repeated keys' records would take the merged reply past the limit: the
    /// request fails as one over it does, the part counted there (true: the slot may have
    /// finished and been recycled, so the caller touches it no more).
    @inline(__always)
    private func overflowsWithRepeats() -> Bool {
        guard hasRepeatedKeys, !hasError, heldBytes &+ repeatedBytes > replyLimit else { return false }
        overflow()
        return true
    }

    private func deliverPart(_ part: Int32, _ reply: UnsafeRawBufferPointer, _ isError: Bool) {
        if let warmup {
            warmup.deliver(self, part: part, reply: reply, isError: isError)
            if overflowsWithRepeats() { return }
            partDone()
            return
        }
        switch sink {
        case .single:
            if let clientReference {
                clientReference._withUnsafeGuaranteedRef { $0.replyArrived(self, reply) }
            } else {
                isDone = true
            }
            return
        case .records(let records):
            if !isError, !records.take(reply, part: part, into: self) {
                replyOutOfStep = true
                return
            }
            if overflowsWithRepeats() { return }
        case .allOK(let rule):
            rule.take(reply, isError: isError, into: self)
        case .array(let array):
            array.take(reply, part: part, into: self)
            if overflowsWithRepeats() { return }
        case .sum(var sum):
            sum.take(reply, part: part, into: self)
            sink = .sum(sum)
        case .first(var first):
            first.take(reply, part: part, isError: isError, into: self)
            sink = .first(first)
        case .prepared(let prepared):
            prepared.take(reply, isError: isError && !ReplyPart.isBarrier(part), into: self)
        case .union(let union):
            union.take(reply, into: self)
        case .pairSum(let pairSum):
            pairSum.take(reply, into: self)
        case .everyServerHas(let has):
            has.take(reply, into: self)
        case .kill(var kill):
            kill.take(reply, isError: isError, into: self)
            sink = .kill(kill)
        case .scanCursor(let scan):
            scan.take(reply, isError: isError, into: self)
        case .eitherDeleted(var either):
            either.take(reply, part: part, into: self)
            sink = .eitherDeleted(either)
        case .eitherValue(let either):
            either.take(reply, part: part, isError: isError, into: self)
        }
        partDone()
    }

    /// The first error of a split request is what the client gets.
    func recordError(_ reply: UnsafeRawBufferPointer) {
        guard !hasError else { return }
        hasError = true
        data.removeAll()
        if !kept.isEmpty { dropKept() }
        // No copies are built for an error.
        repeatedBytes = 0
        data.append(reply)
    }

    func errorLine(_ reason: String) -> String {
        isRedis ? "-ERR \(reason)\r\n" : "SERVER_ERROR \(reason)\r\n"
    }

    /// `part` failed (connection error, timeout, no server). `serverFailure`: its server
    /// failed (refused, lost, timed out), which closes a client whose pool says so.
    ///
    /// Only a failure whose error becomes the reply closes the client: a warm-up's old pool
    /// failing (counted, answered from the new pool), a multi-get's keys answered as misses and
    /// a failure a sum only counts do not.
    func fail(part: Int32, reason: String, serverFailure: Bool = false) {
        if isOverflowed {
            overflow()
            return
        }
        if let warmup {
            warmup.failed(self, part: part, reason: reason, serverFailure: serverFailure)
            partDone()
            return
        }
        // An ordering PING's failure (its push connection closed by RESET) is not the reply.
        if ReplyPart.isBarrier(part) {
            partDone()
            return
        }
        switch sink {
        case .single:
            if serverFailure { closeClientIfItsPoolSays() }
            if !isSilent {
                data.removeAll()
                data.append(errorLine(reason))
            }
            finish()
            return
        case .records:
            // The keys of a failed server are answered as misses.
            break
        case .eitherDeleted, .eitherValue:
            if serverFailure, !ReplyPart.isOld(part) { closeClientIfItsPoolSays() }
            WarmupInvalidation.fail(part: part, reason: reason, self)
        case .sum(let sum) where sum.failureIsCounted(part, self):
            break
        case .kill(var kill):
            kill.failed(reason, into: self)
            sink = .kill(kill)
        case .allOK, .array, .sum, .first, .prepared, .union, .pairSum, .everyServerHas, .scanCursor:
            if serverFailure { closeClientIfItsPoolSays() }
            if !hasError {
                hasError = true
                data.removeAll()
                data.append(errorLine(reason))
            }
        }
        partDone()
    }

    /// A server failure answers this slot on a pool whose clients close for it
    /// (`close_on_server_failure`): the client closes when the slot reaches its queue's head.
    func closeClientIfItsPoolSays() {
        if let client, client.closesOnServerFailure { closesClient = true }
    }

    /// No server to send the request to (every one ejected): a server failure.
    func failNoServer() {
        fail(part: ReplyPart.whole, reason: "no server available", serverFailure: true)
    }

    /// One part has answered (or failed, or a split let go of its hold): the last one settles
    /// the merge and finishes the slot. Called by `ReplySplit.close()` too.
    fileprivate func partDone() {
        if isOverflowed { return }
        remainingParts -= 1
        if remainingParts == 0 {
            if let warmup {
                if warmup.advance(self) { return }
                // The last phase placed records (old hits) whose repeats' copies may pass the
                // limit: the request fails as one over it does (`overflow` counts this part).
                if hasRepeatedKeys {
                    remainingParts = 1
                    if overflowsWithRepeats() { return }
                    remainingParts = 0
                }
            }
            if !hasError {
                switch sink {
                case .allOK(let rule): rule.settle(self)
                case .sum(let sum): sum.settle(self)
                case .eitherDeleted(let either): either.settle(self)
                case .single, .records, .array, .first, .prepared, .union, .pairSum, .everyServerHas, .kill, .scanCursor, .eitherValue: break
                }
            }
            if isSilent { data.removeAll() }
            finish()
        }
    }

    var isSingle: Bool {
        if case .single = sink { return true }
        return false
    }

    /// Whether a retrieval reply for `part` names only keys that part asked for, in the order
    /// asked (a repeated key may come back repeated). A VALUE for any other key means the backend
    /// connection is out of step: the reply is someone else's.
    func acceptsRetrieval(_ reply: UnsafeRawBufferPointer, part: Int32) -> Bool {
        // Multi-get parts are checked by their merge (`deliver`), in the same walk.
        guard isSingle, warmup == nil, !keys.isEmpty else { return true }
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

    /// The common single-key get, decided without walking records (`MemcacheReplyParser.
    /// singleKeyVerdict`). nil: let the general walk decide.
    @inline(__always)
    private func singleKeyVerdict(_ reply: UnsafeRawBufferPointer) -> Bool? {
        let entry = keys[0]
        return MemcacheReplyParser.singleKeyVerdict(reply, key: UnsafeRawBufferPointer(rebasing: keyBytes.readable[entry.keyStart..<(entry.keyStart + entry.keyLength)]))
    }

    /// RespUnion / RespPairSum: one element (or name) kept in `data`, its count in `server`.
    func store(_ element: UnsafeRawBufferPointer) {
        keys.append(KeyEntry(keyStart: 0, keyLength: 0, server: 0, recordStart: data.readableCount, recordLength: element.count))
        data.append(element)
    }

    func bytesEqual(_ element: UnsafeRawBufferPointer, _ entry: KeyEntry) -> Bool {
        guard element.count == entry.recordLength else { return false }
        let stored = data.readable
        return memcmp(element.baseAddress!, stored.baseAddress! + entry.recordStart, element.count) == 0
    }

    func sameKey(_ entry: KeyEntry, _ key: UnsafeRawBufferPointer) -> Bool {
        guard Int(entry.keyLength) == key.count else { return false }
        let stored = keyBytes.readable
        for i in 0..<key.count where stored[entry.keyStart + i] != key[i] { return false }
        return true
    }

    /// Writes the bytes `entry` (a key's record, an element) points to, in `data` or a kept reply.
    @inline(__always)
    func appendRecord(_ entry: KeyEntry, to output: ByteBuffer) {
        if entry.buffer == 0 {
            output.append(UnsafeRawBufferPointer(rebasing: data.readable[entry.recordStart..<(entry.recordStart + entry.recordLength)]))
        } else {
            appendKeptRecord(entry, to: output)
        }
    }

    @inline(never)
    private func appendKeptRecord(_ entry: KeyEntry, to output: ByteBuffer) {
        let index = Int(entry.buffer) - 1
        let source = kept[index]
        // A kept reply's records are copied in the order they arrived in (keys of one part keep
        // their order), so nothing before the bytes being copied is read again: their pages go
        // back a step at a time as the output grows, and a merge holds about its size once, not
        // twice. A large record is copied a step at a time for the same reason.
        var start = entry.recordStart
        let end = entry.recordStart + entry.recordLength
        while start < end {
            let next = min(end, start + Self.discardStep)
            output.append(UnsafeRawBufferPointer(rebasing: source.readable[start..<next]))
            start = next
            // Not when a later key repeats an earlier one: its record is copied again.
            if !hasRepeatedKeys, next - keptDiscarded[index] >= Self.discardStep {
                source.discardPages(from: keptDiscarded[index], before: next)
                keptDiscarded[index] = next
            }
        }
    }

    /// Pages of a kept reply are given back in steps at least this large (one `madvise` each).
    static let discardStep = 1 << 20

    /// Writes the finished reply to the client's output.
    func emit(into output: ByteBuffer) {
        if let binary { return emitBinary(binary, into: output) }
        switch sink {
        case .records(let records): records.emit(self, into: output)
        case .array(let array): array.emit(self, into: output)
        case .union(let union): union.emit(self, into: output)
        case .pairSum(let pairSum): pairSum.emit(self, into: output)
        case .everyServerHas(let has): has.emit(self, into: output)
        case .eitherValue(let either): either.emit(self, into: output)
        case .single, .allOK, .sum, .first, .prepared, .kill, .scanCursor, .eitherDeleted:
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
        }
    }
}

/// A request merged in phases by the layer above (the warm-up read, `WarmupRead` in
/// Routing/Warmup.swift; a Redis WATCH that began a lease, a Redis Cluster EXEC and blocking
/// command, `FirstWatch`, `ClusterExec` and `ClusterBlocking` in
/// Frontend/RedisTransactions.swift): the slot hands each
/// part's reply or failure to it, and asks it, once a phase's parts have answered, whether
/// another phase has started. These three calls go through the vtable (an indirect call per
/// reply part): only those requests have a phased read.
class PhasedRead {
    /// Values copied out of old-pool replies; held toward `client_output_limit`.
    final var values: [UInt8] = []

    func deliver(_ slot: ReplySlot, part: Int32, reply: UnsafeRawBufferPointer, isError: Bool) { preconditionFailure("overridden") }
    func failed(_ slot: ReplySlot, part: Int32, reason: String, serverFailure: Bool) { preconditionFailure("overridden") }
    /// Every part of a phase has answered. Returns true when another phase started.
    func advance(_ slot: ReplySlot) -> Bool { preconditionFailure("overridden") }
    /// Whether a part answered `-MOVED`/`-ASK`/`-TRYAGAIN` may be sent again on its own by the
    /// connection (cluster pools); false for parts that only mean something together.
    var partsFollowRedirects: Bool { true }
    /// Cluster pools: part `part` was never sent to node `node`, whose connection failed (a
    /// connect refused, or its backoff): true when this request sends it again later (or
    /// fails it then) itself, false to fail it now.
    func keepUnsent(_ slot: ReplySlot, part: Int32, node: String, reason: String) -> Bool { false }
}

extension ReplySlot {
    /// A phased request's answer so far is `reply` (what it held before is dropped).
    func holdReply(_ reply: UnsafeRawBufferPointer, isError: Bool) {
        data.removeAll()
        data.append(reply)
        hasError = isError
    }

    /// A phased request's answer so far is the error for `reason` (a failed part).
    func holdFailure(_ reason: String, serverFailure: Bool) {
        if serverFailure { closeClientIfItsPoolSays() }
        data.removeAll()
        data.append(errorLine(reason))
        hasError = true
    }
}

/// Part numbers: which part of its slot's request a backend reply answers.
///
///     whole              0                    a request sent as one part
///     server(s)          s                    the part sent to position `s` of the pool's servers
///                                             (a hash slot in a cluster pool): multi-key merges
///                                             match replies to keys by it
///     oldServer(s)       oldBase + s          a warm-up's part sent to the old pool
///     oldGet(k) / oldTTL(k)  2k / 2k+1        a Redis warm-up read's GET and PTTL for key k
///
/// Numbers are made here and by `ReplySplit` only; sinks read them back with the same names.
enum ReplyPart {
    static let whole: Int32 = 0
    /// Parts numbered from here went to a warm-up's old pool.
    private static let oldBase: Int32 = 1 << 20
    /// Parts numbered from here (below `oldBase`) are a PING that only orders a subscriber's
    /// reply behind what its push connection carried before (`pingPushConnections`): their
    /// answers and failures are not the reply.
    private static let barrierBase: Int32 = 1 << 19

    @inline(__always) static func server(_ server: Int32) -> Int32 { server }
    @inline(__always) static func isOld(_ part: Int32) -> Bool { part >= oldBase }
    @inline(__always) static func isBarrier(_ part: Int32) -> Bool { part >= barrierBase && part < oldBase }
    fileprivate static func barrier(_ server: Int32) -> Int32 { barrierBase + server }
    @inline(__always) static func oldServer(of part: Int32) -> Int32 { part - oldBase }
    @inline(__always) static func key(ofOldRead part: Int32) -> Int { Int(part) / 2 }
    @inline(__always) static func isTTL(_ part: Int32) -> Bool { part % 2 == 1 }

    fileprivate static func old(_ server: Int32) -> Int32 { oldBase + server }
    fileprivate static func oldGet(key: Int) -> Int32 { Int32(key * 2) }
    fileprivate static func oldTTL(key: Int) -> Int32 { Int32(key * 2 + 1) }
}

/// Splits one client request into parts: names the sink that merges them, numbers each part as
/// it is made and counts it on the slot.
///
/// While the split is open it holds one part of its own, so a part that fails at once (no
/// connection) cannot finish the slot before its siblings are sent; `close()` lets go of it,
/// once. (Not `~Copyable`: Swift 6.3's release optimizer crashed on one passed `inout` from a
/// closure.)
/// Every request that is not split is one part (`ReplySlot.reset` leaves the count at 1), so
/// single requests never touch the count.
///
///     var split = ReplySplit(slot, mergedBy: .sum(IntegerSum()))
///     for server in servers { connection.enqueue(slot: slot, part: split.server(server), …) }
///     split.close()
struct ReplySplit {
    let slot: ReplySlot

    /// A request split into parts merged by `sink`; `warmupCounters` when parts may go to a
    /// warm-up's old pool (their failures are counted there).
    init(_ slot: ReplySlot, mergedBy sink: ReplySink, warmupCounters: WarmupCounters? = nil) {
        self.slot = slot
        slot.sink = sink
        slot.remainingParts = 1
        if let warmupCounters { slot.warmupCounters = warmupCounters }
    }

    /// The next phase of a warm-up read (its sink unchanged): opened when the previous phase's
    /// last part has answered.
    init(nextPhaseOf slot: ReplySlot) {
        self.slot = slot
        slot.remainingParts = 1
    }

    /// A part for server `server` of the pool (a hash slot's group in a cluster pool).
    mutating func server(_ server: Int32) -> Int32 {
        slot.remainingParts += 1
        return ReplyPart.server(server)
    }

    /// An ordering PING on server `server`'s push connection (`ReplyPart.isBarrier`).
    mutating func barrier(_ server: Int32) -> Int32 {
        slot.remainingParts += 1
        return ReplyPart.barrier(server)
    }

    /// A part for server `server` of a warm-up's old pool.
    mutating func oldServer(_ server: Int32) -> Int32 {
        slot.remainingParts += 1
        return ReplyPart.old(server)
    }

    /// A Redis warm-up read's old-pool `GET` and `PTTL` of key `key`.
    mutating func oldGet(key: Int) -> Int32 {
        slot.remainingParts += 1
        return ReplyPart.oldGet(key: key)
    }

    mutating func oldTTL(key: Int) -> Int32 {
        slot.remainingParts += 1
        return ReplyPart.oldTTL(key: key)
    }

    /// Every part is sent: the slot finishes when they have answered (at once if they all
    /// have, or if there were none).
    func close() {
        slot.partDone()
    }

    /// Ends a warm-up phase's split. Returns false when nothing is left to wait for (the phase
    /// made no part, or its parts all failed already): the caller finishes the slot itself.
    func closePhase() -> Bool {
        slot.remainingParts -= 1
        return slot.remainingParts > 0
    }
}
