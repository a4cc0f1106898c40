#if canImport(Glibc)
import Glibc
#endif
import TernCore

/// One read on a pool that warms up from an old pool, attached to the read's reply slot.
///
///     phase new:    the read goes to the new pool as usual
///     phase old:    keys that missed are fetched from the old pool, one request per old server
///                   (memcached: pipelined `mg <key> s v f t k q` closed by `mn`; Redis:
///                   `GET` + `PTTL` pipelined on one connection)
///     phase resend: gets/gat/gats/mg only — the old item is copied into the new pool first
///                   (add semantics) and the read is sent again there, so a CAS unique is valid
///                   where the client's next `cas` goes
///
/// Plain reads answer old hits at once and copy them in the background (`ms … ME` = add, or
/// `SET … NX`): a value written to the new pool meanwhile is never overwritten. An item with
/// 1 s or less to live is answered but not copied. A failing old pool is a miss, and counted.
/// Confined to the worker thread that owns the slot.
final class WarmupRead: PhasedRead {
    /// The old values while the resend phase runs (see `finishResend`), outside `values`,
    /// which counts toward `client_output_limit`.
    private var resendFallback: [UInt8] = []
    enum Mode { case text, meta, redisGet, redisMGet }
    enum Phase { case new, old, resend }

    struct Key {
        var start: Int
        var length: Int
        var oldServer: Int32
        var newServer: Int32
        var isResend = false
        /// Old item (Redis: value bulk and PTTL; memcached: flags, TTL, data) in `values`.
        var valueStart = -1
        var valueLength = 0
        var flags: UInt32 = 0
        var ttl: Int?
        var ttlKnown = false
        /// Missed the new pool, so the old pool was asked.
        var missed = false
        /// The key's `WarmupInvalidations` bucket, and its epoch when the read was routed.
        var invalidationBucket: Int32 = 0
        var invalidationEpoch: UInt32 = 0
        /// A key the request named before, at this position: not asked (its place in the reply
        /// gets a copy of that key's record, `ReplySlot.addRepeat(of:)`), not counted.
        var repeatOf: Int32 = -1
        /// Its new server failed the read: a miss, not asked of the old pool (whose value may be
        /// older than the one the new server holds).
        var newFailed = false
    }

    let mode: Mode
    var phase = Phase.new
    /// Held strongly: a read may still be in flight after a reload retired its pool (or the
    /// pool's warm-up), and it must find both pools where it left them. What in flight means
    /// is bounded: a retired pool stays in the worker's `retiredPools` (its connections open)
    /// only until its servers are idle, so after each phase the read checks `isRetired` and
    /// `placementGeneration` before it sends anything more: it never starts a request on a pool
    /// whose connections may have been closed for good (the request would reopen one that
    /// nobody closes, and free it with its watcher still in the loop when the read ends), nor
    /// uses a server position (`oldServer`, `newServer`) that a reload has made meaningless
    /// or out of range.
    let pool: PoolRuntime
    let old: PoolRuntime
    /// `placementGeneration` of `pool` and `old` when the keys were placed.
    let newGeneration: Int
    let oldGeneration: Int
    let warmup: WarmupConfig
    let clientIndex: Int
    /// The text command (get, gets, gat, gats) or meta's original request line and data.
    var command = MemcacheCommand.get
    var frame: [UInt8] = []
    var exptime: [UInt8] = []
    var isQuiet = false
    var isBase64Key = false
    /// Redis GETEX: an old hit is copied first and `frame` sent again to the new pool.
    var resendsAfterCopy = false
    /// meta `mg … N<ttl>` (vivify on miss): the new pool was asked without `N`, so that a miss
    /// there reads the old pool instead of making an empty item that hides the old value from
    /// every client; `frame`, with `N`, goes to the new pool after a copy or a miss in both.
    var vivifies = false
    var keys: [Key] = []
    var keyBytes: [UInt8] = []
    /// Keys of `keys` that repeat an earlier one.
    private var repeatCount = 0

    init(mode: Mode, pool: PoolRuntime, clientIndex: Int) {
        self.mode = mode
        self.pool = pool
        self.old = pool.old!
        self.newGeneration = pool.placementGeneration
        self.oldGeneration = pool.old!.placementGeneration
        self.warmup = pool.warmup!
        self.clientIndex = clientIndex
    }

    var counters: WarmupCounters { pool.warmupCounters }

    /// `hashKey` is what placement hashes (a base64 key decoded); `key` is sent as it came.
    func addKey(_ key: UnsafeRawBufferPointer, hashKey: UnsafeRawBufferPointer? = nil, newServer: Int32) {
        let oldServer = Int32(old.server(forKey: hashKey ?? key)?.index ?? -1)
        var entry = Key(start: keyBytes.count, length: key.count, oldServer: oldServer, newServer: newServer)
        if warmup.backfill {
            let bucket = WarmupInvalidations.bucket(hashKey ?? key)
            entry.invalidationBucket = Int32(bucket)
            entry.invalidationEpoch = pool.warmupInvalidations.epoch(bucket)
        }
        keys.append(entry)
        keyBytes.append(contentsOf: key)
    }

    /// The key at `index` (added already, Redis MGET) or the next one (memcached) repeats the
    /// key at `earlier`: it is asked in no phase and takes no server.
    func markRepeat(_ index: Int, of earlier: Int) {
        keys[index].repeatOf = Int32(earlier)
        keys[index].newServer = -1
        keys[index].oldServer = -1
        repeatCount += 1
    }

    func addRepeat(of earlier: Int) {
        keys.append(Key(start: keys[earlier].start, length: keys[earlier].length, oldServer: -1, newServer: -1))
        markRepeat(keys.count - 1, of: earlier)
    }

    func withKey<R>(_ index: Int, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        keyBytes.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[keys[index].start..<(keys[index].start + keys[index].length)])) }
    }

    // MARK: Replies

    override func deliver(_ slot: ReplySlot, part: Int32, reply: UnsafeRawBufferPointer, isError: Bool) {
        switch (mode, phase) {
        case (.text, .new), (.text, .resend):
            storeValueRecords(slot, part: part, reply: reply, resendOnly: phase == .resend)
        case (.text, .old):
            readOldMetaItems(reply, part: part)
        case (.meta, .new), (.meta, .resend), (.redisGet, .new), (.redisGet, .resend):
            slot.data.removeAll()
            slot.data.append(reply)
        case (.meta, .old):
            readOldMetaItems(reply, part: part)
        case (.redisGet, .old), (.redisMGet, .old):
            readOldRedisReply(reply, part: part, isError: isError)
        case (.redisMGet, .new):
            storeArrayElements(slot, part: part, reply: reply, isError: isError)
        case (.redisMGet, .resend):
            break
        }
    }

    override func failed(_ slot: ReplySlot, part: Int32, reason: String, serverFailure: Bool) {
        if phase == .old {
            // Counted per key, in both protocols (a Redis key's GET and PTTL each counted, a
            // memcached batch once for all its keys: TLS sweep 32).
            switch mode {
            case .text, .meta:
                let server = ReplyPart.oldServer(of: part)
                WarmupCounters.add(counters.oldErrors, keys.indices.filter { keys[$0].oldServer == server && keys[$0].missed }.count)
            case .redisGet, .redisMGet:
                if !ReplyPart.isTTL(part) { WarmupCounters.add(counters.oldErrors) }
            }
            return
        }
        // The new pool failed: memcached multi-key reads answer its keys as misses, as on other
        // pools, without asking the old pool (the new server may hold newer values than the old
        // pool's, which must not be answered instead); other reads report the error (an MGET
        // too, as on other pools, rather than nil or the old pool's values).
        switch mode {
        case .text:
            for index in keys.indices where keys[index].newServer == part && keys[index].repeatOf < 0 { keys[index].newFailed = true }
        case .meta, .redisGet, .redisMGet:
            if serverFailure { slot.closeClientIfItsPoolSays() }
            slot.data.removeAll()
            slot.data.append(mode == .meta ? "SERVER_ERROR \(reason)\r\n" : "-ERR \(reason)\r\n")
            slot.hasError = true
            slot.repeatedBytes = 0
        }
    }

    /// Called when every part of a phase has answered. Returns true when another phase started.
    override func advance(_ slot: ReplySlot) -> Bool {
        switch phase {
        case .new: return startOldPhase(slot)
        case .old: return finishOldPhase(slot)
        case .resend:
            finishResend(slot)
            return false
        }
    }

    // MARK: Phase new → old

    private func startOldPhase(_ slot: ReplySlot) -> Bool {
        var missing: [Int] = []
        var failed = 0
        switch mode {
        case .text:
            for index in keys.indices where slot.keys[index].recordStart < 0 && keys[index].repeatOf < 0 {
                if keys[index].newFailed { failed += 1 } else { missing.append(index) }
            }
        case .meta:
            if !slot.hasError, isMetaMiss(slot.data.readable) { missing.append(0) }
        case .redisGet:
            if !slot.hasError, RespReply.classify(slot.data.readable) == .null { missing.append(0) }
        case .redisMGet:
            if slot.hasError { return false }
            for index in keys.indices where keys[index].repeatOf < 0 && (slot.keys[index].recordStart < 0 || isNil(slot, index)) { missing.append(index) }
        }
        WarmupCounters.add(counters.newHits, keys.count - repeatCount - missing.count - failed)
        if failed > 0 { WarmupCounters.add(counters.misses, failed) }
        if missing.isEmpty { return false }
        guard !old.isRetired, old.placementGeneration == oldGeneration else {
            // A reload ended the warm-up or changed the old servers since the keys were
            // placed: the old pool is not asked, the keys are misses.
            WarmupCounters.add(counters.misses, missing.count)
            return vivifyWithoutOldPool(slot)
        }
        for index in missing { keys[index].missed = true }
        phase = .old
        var split = ReplySplit(nextPhaseOf: slot)
        var parts = 0
        var servers: [Int32] = []
        for index in missing where keys[index].oldServer >= 0 && !servers.contains(keys[index].oldServer) { servers.append(keys[index].oldServer) }
        for server in servers {
            let connection = old.servers[Int(server)].connection(for: clientIndex)
            let output = connection.requestBuffer()
            switch mode {
            case .text, .meta:
                for index in missing where keys[index].oldServer == server {
                    withKey(index) { MemcacheEncoder.metaGetItem(key: $0, base64: isBase64Key, opaque: index, into: output) }
                }
                MemcacheEncoder.noop(into: output)
                connection.enqueue(slot: slot, part: split.oldServer(server), framing: .metaItemsUntilNoop)
                parts += 1
            case .redisGet, .redisMGet:
                for index in missing where keys[index].oldServer == server {
                    withKey(index) { RespEncoder.command("GET", $0, into: output) }
                    connection.enqueue(slot: slot, part: split.oldGet(key: index), framing: .line)
                    withKey(index) { RespEncoder.command("PTTL", $0, into: output) }
                    connection.enqueue(slot: slot, part: split.oldTTL(key: index), framing: .line)
                    parts += 2
                }
            }
        }
        if parts == 0 { WarmupCounters.add(counters.misses, missing.count) }
        if split.closePhase() { return true }
        return parts == 0 && vivifyWithoutOldPool(slot)
    }

    /// A `mg … N` that missed the new pool, with no old server to ask: it vivifies there now.
    private func vivifyWithoutOldPool(_ slot: ReplySlot) -> Bool {
        guard vivifies, keys[0].newServer >= 0, !pool.isRetired, pool.placementGeneration == newGeneration else { return false }
        return resend(slot, to: [keys[0].newServer])
    }

    private func isMetaMiss(_ reply: UnsafeRawBufferPointer) -> Bool {
        // Quiet mode says nothing for a miss.
        reply.count == 0 || MemcacheReply.classify(reply) == .miss
    }

    private func isNil(_ slot: ReplySlot, _ index: Int) -> Bool {
        let entry = slot.keys[index]
        let start = Int(entry.recordStart)
        return RespReply.classify(UnsafeRawBufferPointer(rebasing: slot.data.readable[start..<(start + Int(entry.recordLength))])) == .null
    }

    // MARK: Old-pool replies

    /// `VA <size> s<size> f<flags> t<ttl> O<index>` blocks (misses are silent), then nothing
    /// (Tern's MN was stripped), read with TernCore's `MetaItemReader`; each names its key by
    /// the opaque it was asked with (`MemcacheEncoder.metaGetItem`), in the order asked.
    private func readOldMetaItems(_ reply: UnsafeRawBufferPointer, part: Int32) {
        let server = ReplyPart.oldServer(of: part)
        var position = 0
        var cursor = 0
        while position < reply.count {
            let rest = UnsafeRawBufferPointer(rebasing: reply[position...])
            guard case let .item(item) = MetaItemReader.read(rest) else { return }
            defer { position += item.length }
            // A stale item (invalidated with `md … I`) is a miss: copied, it would be served as
            // fresh until its TTL, and nobody told to recompute it.
            guard item.status == .value, !item.isStale, let value = item.value, let asked = item.opaqueNumber else { continue }
            let index = asked >= cursor && asked < keys.count && keys[asked].oldServer == server && keys[asked].valueStart < 0 ? asked : nil
            if let index {
                cursor = index + 1
                keys[index].valueStart = values.count
                keys[index].valueLength = value.count
                keys[index].flags = item.flags ?? 0
                keys[index].ttl = item.ttl ?? -1
                keys[index].ttlKnown = item.ttl != nil
                values.append(contentsOf: UnsafeRawBufferPointer(rebasing: rest[value]))
            }
        }
    }

    /// Redis: part 2i is `GET` of key i, part 2i+1 its `PTTL`.
    private func readOldRedisReply(_ reply: UnsafeRawBufferPointer, part: Int32, isError: Bool) {
        let index = ReplyPart.key(ofOldRead: part)
        guard index < keys.count, !isError else { return }
        if !ReplyPart.isTTL(part) {
            guard case .bulk = RespReply.classify(reply) else { return }
            keys[index].valueStart = values.count
            keys[index].valueLength = reply.count
            values.append(contentsOf: reply)
        } else if let milliseconds = RespReplyParser.integer(reply) {
            keys[index].ttl = milliseconds
            keys[index].ttlKnown = true
        }
    }

    // MARK: Phase old → resend / done

    private func finishOldPhase(_ slot: ReplySlot) -> Bool {
        var resendServers: [Int32] = []
        if pool.isRetired || pool.placementGeneration != newGeneration {
            // A reload removed the pool or changed its servers while the old pool answered:
            // old hits are answered from the old item and not copied (as without backfill).
            for index in keys.indices { keys[index].newServer = -1 }
        }
        for index in keys.indices where keys[index].missed {
            guard keys[index].valueStart >= 0 else {
                WarmupCounters.add(counters.misses)
                // Missed in both pools: the client's `mg … N` now vivifies in the new one.
                if vivifies, keys[index].newServer >= 0 { resendServers.append(keys[index].newServer) }
                continue
            }
            WarmupCounters.add(counters.oldHits)
            switch mode {
            case .text: answerTextHit(slot, index, &resendServers)
            case .meta: answerMetaHit(slot, index, &resendServers)
            case .redisGet, .redisMGet: answerRedisHit(slot, index, &resendServers)
            }
        }
        // The old values are answered and copied (into the slot and the copies' requests):
        // no longer counted toward the limit, so it counts each once. Kept aside until the
        // resend has answered when there is one (a copy the new pool refused is answered from
        // them), not counted: counting them again made a read near the limit fail (review 30).
        let resent = resend(slot, to: resendServers)
        if resent { swap(&values, &resendFallback) }
        values = []
        return resent
    }

    /// The resend has answered: a key it did not find (the new pool refused the copy: an item
    /// too large for it, out of memory; or a delete came between) is answered from the old item,
    /// as `get` answers it, with the CAS unique 0 for gets and gats (it was a miss for a key
    /// that exists; warm-up sweep 30). Its expiry (gat, gats, `mg … T`, GETEX) applies nowhere.
    private func finishResend(_ slot: ReplySlot) {
        swap(&values, &resendFallback)
        defer { values = [] }
        guard !slot.hasError else { return }
        switch mode {
        case .text:
            for index in keys.indices where keys[index].isResend && keys[index].valueStart >= 0 {
                keys[index].isResend = false
                appendOldRecord(slot, index)
            }
        case .meta:
            if keys.first.map({ $0.missed && $0.valueStart >= 0 }) == true, isMetaMiss(slot.data.readable) {
                slot.data.removeAll()
                appendSynthesizedMetaReply(0, to: slot.data)
            }
        case .redisGet:
            if let key = keys.first, key.missed, key.valueStart >= 0, RespReply.classify(slot.data.readable) == .null {
                slot.data.removeAll()
                values.withUnsafeBytes { slot.data.append(UnsafeRawBufferPointer(rebasing: $0[key.valueStart..<(key.valueStart + key.valueLength)])) }
            }
        case .redisMGet:
            break
        }
    }

    /// The resend phase: keys (text) or the client's own request (meta, GETEX) to `servers` of
    /// the new pool. False when there is nothing to send.
    private func resend(_ slot: ReplySlot, to resendServers: [Int32]) -> Bool {
        guard !resendServers.isEmpty else { return false }
        phase = .resend
        var split = ReplySplit(nextPhaseOf: slot)
        for server in resendServers {
            let connection = pool.servers[Int(server)].connection(for: clientIndex)
            let output = connection.requestBuffer()
            switch mode {
            case .text:
                exptime.withUnsafeBytes { MemcacheEncoder.retrievalStart(command, exptime: $0, into: output) }
                for index in keys.indices where keys[index].isResend && keys[index].newServer == server {
                    withKey(index) { MemcacheEncoder.key($0, into: output) }
                }
                MemcacheEncoder.endLine(into: output)
                connection.enqueue(slot: slot, part: split.server(server), framing: .retrieval)
            case .meta, .redisGet, .redisMGet:
                // The client's own request again (Redis: GETEX).
                frame.withUnsafeBytes { output.append($0) }
                if isQuiet { MemcacheEncoder.noop(into: output) }
                connection.enqueue(slot: slot, part: split.server(server), framing: mode != .meta ? .line : isQuiet ? .metaUntilNoop : .meta)
            }
        }
        return split.closePhase()
    }

    /// Whether a delete of a key in key `index`'s bucket (or a flush) was routed to both pools
    /// since this read was, or is still in flight: the old value read may be one that delete
    /// removes, and a copy made now could reach the new pool after it. Such an item is answered
    /// but not copied, as without backfill.
    private func deletedSinceRouted(_ index: Int) -> Bool {
        !pool.warmupInvalidations.allowsCopy(Int(keys[index].invalidationBucket), noted: keys[index].invalidationEpoch)
    }

    /// memcached text: `get` answers the old item now and copies it in the background; gets,
    /// gat and gats copy first and read again from the new pool. An item not copied (backfill
    /// off, 1 s or less to live, no live new server, deleted since the read) is answered from
    /// the old item; for gets and gats with the CAS unique 0, as a memcached without CAS gives
    /// (a `cas` with it finds no item in the new pool).
    private func answerTextHit(_ slot: ReplySlot, _ index: Int, _ resendServers: inout [Int32]) {
        let key = keys[index]
        let ttl = warmup.backfillTTL(remaining: key.ttlKnown ? key.ttl : nil)
        let newServer = key.newServer
        let deleted = deletedSinceRouted(index)
        if command == .get || !warmup.backfill || ttl == nil || newServer < 0 || deleted {
            appendOldRecord(slot, index)
            if warmup.backfill {
                if let ttl, newServer >= 0, !deleted { copyMemcached(index, ttl: ttl) } else { WarmupCounters.add(counters.copiesSkipped) }
            }
            return
        }
        copyMemcached(index, ttl: ttl!)
        keys[index].isResend = true
        if !resendServers.contains(newServer) { resendServers.append(newServer) }
    }

    /// Key `index`'s old item as a `VALUE` record in the slot (gets and gats: CAS unique 0).
    private func appendOldRecord(_ slot: ReplySlot, _ index: Int) {
        let key = keys[index]
        let record = slot.data.readableCount
        values.withUnsafeBytes { values in
            withKey(index) {
                MemcacheReplyEncoder.valueRecord(key: $0, flags: key.flags,
                                                 value: UnsafeRawBufferPointer(rebasing: values[key.valueStart..<(key.valueStart + key.valueLength)]),
                                                 casUnique: command == .gets || command == .gats ? 0 : nil, into: slot.data)
            }
        }
        slot.keys[index].recordStart = record
        slot.keys[index].recordLength = slot.data.readableCount - record
        slot.repeatedBytes += Int(slot.keys[index].repeats) * slot.keys[index].recordLength
    }

    /// Meta `mg`: copy, then the client's own `mg` goes to the new pool again.
    private func answerMetaHit(_ slot: ReplySlot, _ index: Int, _ resendServers: inout [Int32]) {
        let key = keys[index]
        let ttl = warmup.backfillTTL(remaining: key.ttlKnown ? key.ttl : nil)
        if warmup.backfill, let ttl, key.newServer >= 0, !deletedSinceRouted(index) {
            copyMemcached(index, ttl: ttl)
            if !resendServers.contains(key.newServer) { resendServers.append(key.newServer) }
            return
        }
        if warmup.backfill { WarmupCounters.add(counters.copiesSkipped) }
        // Not copied: answer from the old item with the flags the client asked for.
        slot.data.removeAll()
        appendSynthesizedMetaReply(index, to: slot.data)
    }

    /// The old item as the client's `mg` would have got it: its value and key as bytes (a
    /// binary value must arrive as it was stored, with `VA <size>` matching it).
    private func appendSynthesizedMetaReply(_ index: Int, to output: ByteBuffer) {
        let key = keys[index]
        frame.withUnsafeBytes { request in
            values.withUnsafeBytes { values in
                withKey(index) {
                    MemcacheReplyEncoder.metaReply(to: request, key: $0, flags: key.flags, ttl: key.ttl,
                                                   value: UnsafeRawBufferPointer(rebasing: values[key.valueStart..<(key.valueStart + key.valueLength)]), into: output)
                }
            }
        }
    }

    /// `ms <key> <size> T<ttl> F<flags> ME` — mode E is add: an item written to the new pool
    /// meanwhile is kept. A TTL over 30 days goes as a Unix time, as memcached reads it.
    private func copyMemcached(_ index: Int, ttl: Int) {
        let key = keys[index]
        let connection = pool.servers[Int(key.newServer)].connection(for: clientIndex)
        let output = connection.requestBuffer()
        let exptime = MemcacheEncoder.exptime(seconds: ttl, now: Int(time(nil)))
        values.withUnsafeBytes { values in
            withKey(index) {
                MemcacheEncoder.metaAdd(key: $0, value: UnsafeRawBufferPointer(rebasing: values[key.valueStart..<(key.valueStart + key.valueLength)]),
                                        ttl: exptime, flags: key.flags, base64: isBase64Key, into: output)
            }
        }
        connection.enqueueBackfill(framing: .meta, bucket: Int(key.invalidationBucket), epoch: key.invalidationEpoch)
    }

    /// Redis: answer the old value; copy with `SET key value [PX ms] NX`. GETEX copies first
    /// and is sent again to the new pool (when the item is copied at all).
    private func answerRedisHit(_ slot: ReplySlot, _ index: Int, _ resendServers: inout [Int32]) {
        let key = keys[index]
        // PTTL: -1 no expiry, -2 gone meanwhile (not copied), else milliseconds left; unknown
        // when PTTL failed. The rule is the one memcached copies use.
        let remaining = key.ttlKnown ? (key.ttl == -2 ? 0 : key.ttl) : nil
        let ttl = warmup.backfill && !deletedSinceRouted(index) ? warmup.backfillTTL(remainingMilliseconds: remaining) : nil
        if resendsAfterCopy, let ttl, key.newServer >= 0 {
            copyRedis(index, milliseconds: ttl)
            if !resendServers.contains(key.newServer) { resendServers.append(key.newServer) }
            return
        }
        let valueRange = key.valueStart..<(key.valueStart + key.valueLength)
        if mode == .redisGet {
            slot.data.removeAll()
            values.withUnsafeBytes { slot.data.append(UnsafeRawBufferPointer(rebasing: $0[valueRange])) }
        } else {
            values.withUnsafeBytes { placeRecord(slot, index, UnsafeRawBufferPointer(rebasing: $0[valueRange])) }
        }
        guard warmup.backfill else { return }
        guard let ttl, key.newServer >= 0 else {
            WarmupCounters.add(counters.copiesSkipped)
            return
        }
        copyRedis(index, milliseconds: ttl)
    }

    private func copyRedis(_ index: Int, milliseconds: Int) {
        let key = keys[index]
        let valueRange = key.valueStart..<(key.valueStart + key.valueLength)
        let connection = pool.servers[Int(key.newServer)].connection(for: clientIndex)
        let output = connection.requestBuffer()
        // The stored bulk is `$<n>\r\n<value>\r\n`: written as it is.
        values.withUnsafeBytes { values in
            withKey(index) {
                RespEncoder.setIfAbsent(key: $0, encodedValue: UnsafeRawBufferPointer(rebasing: values[valueRange]), milliseconds: milliseconds, into: output)
            }
        }
        connection.enqueueBackfill(framing: .line, bucket: Int(key.invalidationBucket), epoch: key.invalidationEpoch)
    }

    // MARK: New-pool replies

    private func storeValueRecords(_ slot: ReplySlot, part: Int32, reply: UnsafeRawBufferPointer, resendOnly: Bool) {
        var cursor = 0
        MemcacheReplyParser.forEachValue(reply) { keyRange, recordRange in
            let key = UnsafeRawBufferPointer(rebasing: reply[keyRange])
            guard let index = nextKey(from: &cursor, matching: key, where: {
                keys[$0].newServer == part && (resendOnly ? keys[$0].isResend : slot.keys[$0].recordStart < 0)
            }) else { return }
            keys[index].isResend = false
            placeRecord(slot, index, UnsafeRawBufferPointer(rebasing: reply[recordRange]))
        }
    }

    /// The first key from `cursor` on that `isCandidate` accepts and whose bytes are `key`;
    /// `cursor` moves past it. A server answers in the order it was asked (misses say nothing),
    /// so one walk over the keys serves a whole reply: a 100,000-key get costs 100,000 steps,
    /// not the 5 billion of a search from the first key for each record. A record matching no
    /// key ahead (a server out of order) is dropped and leaves `cursor` where it was.
    private func nextKey(from cursor: inout Int, matching key: UnsafeRawBufferPointer, where isCandidate: (Int) -> Bool) -> Int? {
        var index = cursor
        while index < keys.count {
            if isCandidate(index), withKey(index, { $0.elementsEqual(key) }) {
                cursor = index + 1
                return index
            }
            index += 1
        }
        return nil
    }

    /// Key `index`'s record, in the slot; the copies its repeats will get count toward
    /// `client_output_limit` (`ReplySlot.repeatedBytes`).
    private func placeRecord(_ slot: ReplySlot, _ index: Int, _ record: UnsafeRawBufferPointer) {
        let entry = slot.keys[index]
        if entry.repeats > 0 {
            slot.repeatedBytes += Int(entry.repeats) * (record.count - (entry.recordStart >= 0 ? entry.recordLength : 0))
        }
        slot.keys[index].recordStart = slot.data.readableCount
        slot.keys[index].recordLength = record.count
        slot.data.append(record)
    }

    private func storeArrayElements(_ slot: ReplySlot, part: Int32, reply: UnsafeRawBufferPointer, isError: Bool) {
        // An earlier part's error is the answer.
        guard !slot.hasError else { return }
        guard case .array = RespReply.classify(reply) else {
            // The new server's error (`-BUSY`, `-LOADING`) is the answer, as on other pools.
            slot.recordError(reply)
            return
        }
        var cursor = 0
        RespReplyParser.forEachElement(reply) { range in
            while cursor < keys.count, keys[cursor].newServer != part { cursor += 1 }
            guard cursor < keys.count else { return }
            placeRecord(slot, cursor, UnsafeRawBufferPointer(rebasing: reply[range]))
            cursor += 1
        }
    }
}

extension ReplySlot {
    /// The slot's warm-up read, if it has one.
    var warmupRead: WarmupRead? {
        // (Checked: other requests are phased too, `FirstWatch`, `ClusterExec`, `ClusterBlocking`.)
        warmup as? WarmupRead
    }
}
