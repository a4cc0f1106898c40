import CLibev
import TernCore

/// A worker's reply bookkeeping that slots and clients share: recycled slots, the clients with
/// reply bytes to write this loop pass, and the large backend reply being delivered. One per
/// worker (`Worker.replies`), confined to its thread. The worker drains `dirty` once per loop
/// pass and writes each client's output (`Worker.flushAll`).
final class ReplyDesk {
    /// The worker's libev loop: `ev_now` is the loop time replies are timed with.
    let loop: OpaquePointer
    /// Owners with bytes to write, each once (`ReplyOwner.isDirty`), in the order they became
    /// dirty (the client waiting longest is written first); drained by the worker.
    ///
    /// Held without a reference count (no retain and release per client written, which is per
    /// request for an unpipelined client). Invariant: an owner in this queue is alive. Only an
    /// open owner is added (`addDirty`), so it is in its worker's `clients` then; one that closes
    /// before it is written waits in the worker's `retired` list, which `Worker.flushAll` empties
    /// only once this queue is empty (it writes until nothing is dirty, held clients included),
    /// in every loop pass. An owner in this queue is never moved to another worker
    /// (`ClientConnection.isMovable`).
    var dirty = FIFO<Unmanaged<ReplyOwner>>()
    /// Recycled slots, taken most recently recycled first (a FIFO used as a stack: no
    /// uniqueness check per request, as an array would make).
    private var freeSlots = FIFO<ReplySlot>(initialCapacity: 64)
    /// A backend connection's input while a large reply at its start is delivered (with the
    /// reply's whole length), and whether a client took it.
    var largeReply: (input: ByteBuffer, length: Int)?
    var tookLargeReply = false
    /// A binary request's identity and key while the text path routes it: the next slot made
    /// takes them (kept here, not on every client, which would grow each idle connection).
    var pendingBinary: BinaryContext?
    var pendingBinaryKey = UnsafeRawBufferPointer(start: nil, count: 0)

    init(loop: OpaquePointer) { self.loop = loop }

    @inline(__always) var now: Double { ev_now(loop) }

    /// Called with every reply: the check is inlined, the append (once per client per pass)
    /// is not.
    @inline(__always)
    func markDirty(_ owner: ReplyOwner) {
        if !owner.isDirty { addDirty(owner) }
    }

    @inline(never)
    private func addDirty(_ owner: ReplyOwner) {
        // A closed owner has nothing to write, and must not be queued (see `dirty`).
        guard !owner.isClosed else { return }
        owner.isDirty = true
        dirty.append(Unmanaged.passUnretained(owner))
    }

    func makeSlot(for owner: ReplyOwner) -> ReplySlot {
        let slot = freeSlots.popLast() ?? ReplySlot()
        slot.client = owner  // unretained: see `ReplySlot.client`
        return slot
    }

    /// Takes the caller's reference (`consuming`): a slot just popped from its client's queue
    /// moves into the free list without a retain and a release. Every slot is kept, however
    /// many: a request path may still be using the one recycled (see `orphans`), so slots are
    /// freed only by `trimFreeSlots`.
    func recycle(_ slot: consuming ReplySlot) {
        // A finished slot that a backend entry still names would be a bookkeeping error: never
        // reused (another request's reply could reach it), it waits with the orphans.
        guard slot.queuedEntries == 0 else {
            assertionFailure("a finished reply slot is still named by \(slot.queuedEntries) backend entries")
            slot.client = nil
            orphans.append(slot)
            return
        }
        slot.reset()
        freeSlots.append(slot)
    }

    /// Slots of clients that closed before their replies came, kept until nothing can reach
    /// them any more.
    ///
    /// Invariant (what lets backend entries name slots without a reference, and the request
    /// path borrow them): a slot object is freed only here in the worker's once-a-second sweep,
    /// never while anything can reach it. From the free list: a recycled slot, which no entry
    /// names (`recycle`), past the 1,024 kept (`trimFreeSlots`). From the orphans: once no
    /// backend entry names it (`ReplySlot.queuedEntries`) and this list holds its only
    /// reference (a redirect, a streamed reply or a client waiting for a dedicated connection
    /// holds one of its own). Until then every slot made is alive: its client's queue holds it,
    /// then the free list, or, once its client has closed, this list.
    private var orphans: [ReplySlot] = []

    /// A closing client's slot that has not finished (`ClientConnection.close`).
    func adoptOrphan(_ slot: ReplySlot) {
        orphans.append(slot)
    }

    /// Frees the orphans nothing reaches any more (see `orphans`). Called by the worker's
    /// once-a-second sweep, outside every request path.
    @discardableResult
    func sweepOrphans() -> Int {
        var index = 0, freed = 0
        while index < orphans.count {
            if orphans[index].queuedEntries == 0, isKnownUniquelyReferenced(&orphans[index]) {
                orphans.swapAt(index, orphans.count - 1)
                orphans.removeLast()
                freed += 1
            } else {
                index += 1
            }
        }
        return freed
    }

    /// Frees the recycled slots past `keptSlots` (a burst's): called by the worker's
    /// once-a-second sweep, outside every request path. Returns how many it freed.
    @discardableResult
    func trimFreeSlots() -> Int {
        var freed = 0
        // The least recently recycled go first.
        while freeSlots.count > Self.keptSlots {
            _ = freeSlots.popFirst()
            freed += 1
        }
        // A ring a burst grew is given back too.
        if freeSlots.capacity > 2 * Self.keptSlots {
            var kept = FIFO<ReplySlot>(initialCapacity: 64)
            while let slot = freeSlots.popFirst() { kept.append(slot) }
            freeSlots = kept
        }
        return freed
    }

    /// Recycled slots kept for reuse past a sweep: enough for a busy worker's pipelines (16
    /// clients 64 deep) without an allocation, few enough that their buffers (at most 16 KiB
    /// each, see `ReplySlot.reset`) stay within 16 MiB a second after a burst.
    static let keptSlots = 1024
}

/// A pool's `client_output_limit` on one worker, shared by the pool and its clients (a reload
/// changes it for every client at once).
final class OutputLimit {
    var bytes = 0
}

/// The reply side of a client connection: its slots in request order, its output, and the
/// bytes it holds toward `client_output_limit`. Slots and backend connections reach their
/// client through this class, so they need not name `ClientConnection`, the only subclass.
///
/// Performance: everything the request path calls here is `final` (direct calls, no vtable).
/// The overridable methods at the end are called only off the request path (a client over its
/// output limit, a slow request logged, a connection lost), where a virtual call costs nothing
/// that counts. The upper layer (the worker) gets its client back from `ReplyDesk.dirty` with
/// `unsafeDowncast`, whose invariant is stated there.
class ReplyOwner {
    /// This client's number on its worker (1, 2, …): picks its backend connections.
    final let index: Int
    /// Reply bytes ready to be written.
    final let output = ByteBuffer()
    /// The client's requests in arrival order; their replies leave in this order.
    final var slots = FIFO<ReplySlot>()
    /// Reply bytes held in slots behind an unfinished one (not yet in `output`).
    final private(set) var heldReplyBytes = 0
    /// The worker's desk (owned by the worker, which outlives its clients).
    final let desk: ReplyDesk
    /// The pool's counters and per-command table on this worker, and its output limit.
    final let poolCounters: PoolCounters
    final let commandStats: CommandStats
    final let outputLimit: OutputLimit
    // The flags come last, next to each other, and the subclass's own small fields follow them
    // in the same word: every connection is smaller by the padding a flag between two
    // references costs (idle connections, issue #24).
    /// A Redis client (errors Tern makes are RESP) or memcached.
    final let isRedis: Bool
    /// Set once the connection is closed (or moved to another worker).
    final var isClosed = false
    /// In `desk.dirty` (written at the end of this loop pass).
    final var isDirty = false
    /// log2 of `inFlightWindow`, kept with the estimate (the window is checked for every request
    /// parsed, the estimate changes with every reply). In the byte the flags leave free.
    final var inFlightShift = ReplyOwner.maxInFlightShift
    /// How large this client's replies run, in bytes: a reply larger than the estimate raises it
    /// at once, a smaller one lowers it by an eighth. It sets how many requests the client may
    /// have in flight (`inFlightWindow`). In the word the flags leave free (the subclass's small
    /// fields pack behind it as before: `ClientConnection` keeps its size).
    final var replyEstimate: UInt32 = 0

    init(index: Int, isRedis: Bool, desk: ReplyDesk, poolCounters: PoolCounters, commandStats: CommandStats, outputLimit: OutputLimit) {
        self.index = index
        self.isRedis = isRedis
        self.desk = desk
        self.poolCounters = poolCounters
        self.commandStats = commandStats
        self.outputLimit = outputLimit
    }

    /// Requests a client may have in flight: at most `maxInFlight`, fewer when its replies
    /// run large (`inFlightReplyBudget` over `replyEstimate`, a power of two, at least 1).
    /// What a client has asked for crosses a backend connection it shares with other clients
    /// ahead of their requests, and goes on crossing it (read and dropped) if the client stops
    /// reading or leaves. The estimate follows replies as they come, so a client can make it
    /// small before asking for large values: `maxInFlight` is what bounds a burst, at 256
    /// requests (256 values of the largest size); the budget then shrinks the window for a
    /// client whose replies are large. Before, a client could have 16,384 requests in flight:
    /// 16,000 pipelined gets of a 1 MiB value put 16 GB ahead of every other client of that
    /// server on that worker.
    static let inFlightReplyBudget = 8 << 20
    static let maxInFlightShift: UInt8 = 8
    static let maxInFlight = 1 << Int(maxInFlightShift)
    /// Replies below this size leave a full window full (the estimate is then below it too).
    static let fullWindowReply = inFlightReplyBudget >> Int(maxInFlightShift)

    /// A reply of `length` bytes for this client arrived or began: a single reply as it
    /// arrives (`replyArrived`, a streamed one as it begins), any other once complete
    /// (`ReplySlot.finish`), a refused one at the limit (`ReplySlot.overflow`).
    @inline(__always)
    final func noteReply(_ length: Int) {
        // The common case, decided first: a reply that keeps a full window full.
        if length < Self.fullWindowReply, inFlightShift == Self.maxInFlightShift { return }
        let estimate = Self.estimate(replyEstimate, after: length)
        replyEstimate = estimate
        inFlightShift = Self.shift(for: estimate)
    }

    /// A request naming `keys` keys was sent: its server's work (memcached spends about 0.5 µs
    /// a key, on the connection every client of that server shares) counts as a reply of
    /// `keyWork` bytes a key. A get line of 100,000 missing keys costs memcached 0.04–0.1 s
    /// and replies `END`: 30 of them pipelined held the shared connection past other clients'
    /// one-second timeout (a framing sweep) while the window, counting requests, let them all
    /// through; now such a client has one in flight. Lines of up to a few hundred keys never
    /// narrow the window.
    @inline(__always)
    final func noteRequestKeys(_ keys: Int) {
        if keys >= Self.fullWindowReply / Self.keyWork { noteReply(keys &* Self.keyWork) }
    }

    /// A request of `length` bytes was sent: until answered its bytes are in Tern's memory and
    /// ahead of other clients on the shared backend connection, so a large one counts as a
    /// reply that large. A client sending 40 MB SETs then has one in flight, not 256 (100 of
    /// them pipelined against a paused server took Tern to 3.9 GB; resource limits sweep 30).
    @inline(__always)
    final func noteRequestBytes(_ length: Int) {
        if length >= Self.fullWindowReply { noteReply(length) }
    }

    /// Bytes of reply a key's work counts as (`noteRequestKeys`): the 8 MiB budget then bounds
    /// a client's keys in flight to about 130,000 (0.05–0.1 s of one memcached's time).
    static let keyWork = 64

    /// Requests this client may have in flight now (`window(for:)` of its estimate).
    @inline(__always)
    final var inFlightWindow: Int { 1 &<< Int(inFlightShift) }

    /// The estimate after a reply of `length` bytes: that length if larger, else an eighth less.
    @inline(__always)
    static func estimate(_ estimate: UInt32, after length: Int) -> UInt32 {
        length > Int(estimate) ? UInt32(clamping: length) : estimate &- estimate &>> 3
    }

    /// `inFlightReplyBudget` over `estimate`, rounded to a power of two, from 1 to `maxInFlight`.
    static func window(for estimate: UInt32) -> Int { 1 &<< Int(shift(for: estimate)) }

    /// log2 of `window(for:)`: log2 of the budget (23) less the estimate's bit width, clamped.
    @inline(__always)
    static func shift(for estimate: UInt32) -> UInt8 {
        UInt8(truncatingIfNeeded: min(max(23 &- (32 &- estimate.leadingZeroBitCount), 0), Int(maxInFlightShift)))
    }

    /// Requests a backend reply this large or larger may be streamed or take the backend's
    /// buffer (see `ServerConnection.startStreaming`).
    static let streamThreshold = 256 << 10

    /// A slot for the next request, at the end of the reply order, lent to `body` without a
    /// reference of the caller's own: the request paths route every request inside this, which
    /// saves a retain and a release (two atomic operations) per request.
    ///
    /// Invariant: a slot object is freed only by the worker's once-a-second sweep, never during a
    /// request path, so `body` and everything it calls may use it throughout. Its client's queue
    /// holds it until it leaves with its reply; it then goes to the desk's free list, or, when
    /// its client closes first, to the desk's orphans (see `ReplyDesk.orphans`).
    @inline(__always)
    final func withNewSlot<Result>(_ body: (ReplySlot) -> Result) -> Result {
        appendNewSlot()._withUnsafeGuaranteedRef(body)
    }

    /// A slot for the next request, held by the caller (off the per-request paths).
    final func newSlot() -> ReplySlot { appendNewSlot().takeUnretainedValue() }

    /// Makes the slot and appends it to the queue, which takes the only reference.
    private final func appendNewSlot() -> Unmanaged<ReplySlot> {
        let slot = desk.makeSlot(for: self)
        slot.isRedis = isRedis
        slot.replyLimit = outputLimit.bytes
        slot.startedAt = desk.now
        if let binary = desk.pendingBinary {
            // The slot of a binary request taking the text path (see `routeBinary`).
            desk.pendingBinary = nil
            slot.binary = binary
            slot.keyBytes.append(desk.pendingBinaryKey)
        }
        let lent = Unmanaged.passUnretained(slot)
        slots.append(slot)
        return lent
    }

    /// The one backend reply of a `single` slot. With nothing ahead of it, it goes straight to
    /// the output (one copy); otherwise it waits in the slot.
    @inline(__always)
    final func replyArrived(_ slot: ReplySlot, _ reply: UnsafeRawBufferPointer) {
        noteReply(reply.count)
        if !slot.isSilent {
            if slots.isFirst(slot), !slot.holdsData {
                if let binary = slot.binary {
                    // A binary client's packet, written straight from the backend's reply.
                    output.appendBinaryResponse(to: reply, binary, key: slot.keyBytes.readable)
                    slot.binary = nil
                } else if reply.count >= Self.streamThreshold, output.isEmpty, let (source, length) = desk.largeReply,
                          source.readable.baseAddress == reply.baseAddress, source.readableCount - length <= reply.count / 4 {
                    // A large reply with nothing before it becomes the output with its memory.
                    output.take(reply.count, of: source, used: length)
                    desk.tookLargeReply = true
                } else {
                    output.append(reply)
                    if slot.countedBytes == 0 {
                        // The common case: the reply went straight out and the slot holds
                        // nothing, so it leaves the queue now, without `slotCompleted`'s
                        // count of held bytes and `emit`'s copy of nothing.
                        slot.isDone = true
                        if let head = slots.popFirst() { finished(head, at: desk.now) }
                        if !slots.isEmpty, slots.withFirst({ $0.isDone }) { emitFinished() }
                        if checkOutputLimit() { return }
                        desk.markDirty(self)
                        return
                    }
                }
            } else {
                if reply.count >= ReplySlot.largeReply { slot.data.reserve(reply.count, headroom: ReplySlot.largeReplyHeadroom) }
                slot.data.append(reply)
            }
        }
        slot.isDone = true
        slotCompleted(slot)
    }

    /// A message from a push connection (pub/sub), whole. It leaves ahead of `reply`, the
    /// request whose answer that connection owes next (its server sent the message first, as
    /// one Redis would put it on the wire: a message published before the client's PING,
    /// SUBSCRIBE or UNSUBSCRIBE reached the server comes before their answers), behind the
    /// replies due before that one; with nothing owed (or, see `ServerConnection`, a request
    /// it answered in part already), behind all of them.
    final func pushMessage(_ message: UnsafeRawBufferPointer, ahead reply: ReplySlot?) {
        guard !isClosed else { return }
        poolCounters.messagesDelivered.add()
        if let reply, !reply.isDone, slots.isFirst(reply) {
            // Ahead of the first reply due: straight to the output, whatever waits behind it
            // (no slot moves; messages held behind it are not touched per message).
            output.append(message)
            if checkOutputLimit() { return }
            desk.markDirty(self)
            return
        }
        let slot = newSlot()
        if let reply, !reply.isDone { _ = slots.moveLast(before: reply) }
        replyArrived(slot, message)
    }

    /// Whether a large reply for `slot` may be written to the output as it arrives: the slot is
    /// the next reply the client gets, and nothing of it is held yet.
    final func canStream(_ slot: ReplySlot) -> Bool {
        !isClosed && slots.isFirst(slot) && !slot.holdsData
    }

    /// The next piece of a reply being streamed (see `ServerConnection.startStreaming`).
    final func appendStreamed(_ bytes: UnsafeRawBufferPointer) {
        output.append(bytes)
        if checkOutputLimit() { return }
        desk.markDirty(self)
    }

    /// A slot holds `delta` more reply bytes: everything held for this client counts toward its
    /// `client_output_limit`, whether written out or waiting behind a slow request.
    final func heldChanged(by delta: Int) {
        heldReplyBytes += delta
        if delta > 0 { checkOutputLimit() }
    }

    /// A client that does not read its replies, or whose pipeline holds too much: bounded, then closed.
    @discardableResult
    final func checkOutputLimit() -> Bool {
        guard !isClosed, output.readableCount + heldReplyBytes > outputLimit.bytes else { return false }
        closeOverOutputLimit()
        return true
    }

    /// A slot was filled: every finished slot at the head of the queue goes to the output.
    final func slotCompleted(_ slot: ReplySlot) {
        slot.countHeld()
        guard slots.isFirst(slot) else { return }
        emitFinished()
        if checkOutputLimit() { return }
        desk.markDirty(self)
    }

    /// Every finished slot at the head of the queue goes to the output, in order. A slot whose
    /// server failed on a pool that closes clients for it stops there: what is in the output
    /// is written, then the client closes (`closeForServerFailure`).
    private final func emitFinished() {
        let now = desk.now
        while !slots.isEmpty, slots.withFirst({ $0.isDone && !$0.closesClient }), let head = slots.popFirst() {
            heldReplyBytes -= head.countedBytes
            // (A silent slot's reply is dropped: memcached `noreply`, Redis `CLIENT REPLY`.)
            if !head.isSilent { head.emit(into: output) }
            finished(head, at: now)
        }
        if !slots.isEmpty, slots.withFirst({ $0.isDone }) { closeForServerFailure() }
    }

    /// A slot that has left the queue, its reply in the output: timed and recycled.
    @inline(__always)
    private final func finished(_ slot: consuming ReplySlot, at now: Double) {
        if slot.command >= 0 {
            commandStats.record(Int(slot.command), microseconds: Int((now - slot.startedAt) * 1_000_000))
        }
        desk.recycle(slot)
    }

    // MARK: Off the request path (overridden by the client)

    /// Past `client_output_limit`: log, count and close. Called once per client at most.
    func closeOverOutputLimit() { preconditionFailure("overridden by ClientConnection") }

    /// Closes the connection (a push connection or a streamed reply's backend was lost).
    func close() { preconditionFailure("overridden by ClientConnection") }

    /// Whether a request whose server failed closes this client (`close_on_server_failure`).
    var closesOnServerFailure: Bool { false }

    /// A request whose server failed reached the head of the queue on a pool that closes
    /// clients for it: the output is written, then the connection closes.
    func closeForServerFailure() { preconditionFailure("overridden by ClientConnection") }

    /// A request of this client waits in Tern to be sent again (a cluster node that failed
    /// before sending it): nothing it sends later is routed before it is answered, so that its
    /// requests still run in the order sent.
    func holdLaterRequests() {}

    /// The client's address and name, for a slow-log entry.
    func slowLogIdentity() -> (client: String, name: String) { ("", "") }

    /// A frame on this client's push connection (named by its identity: the replies layer
    /// does not know backend connections) that is neither a message nor the answer to a
    /// request (Redis Cluster's `sunsubscribe` when a shard channel's slot leaves the node):
    /// whether it was one, handled.
    func pushNotice(_ frame: UnsafeRawBufferPointer, on connection: ObjectIdentifier) -> Bool { false }

    /// A Redis Cluster node answered `-MOVED` (`redirect`; nil: `-ASK` or `-TRYAGAIN`) to
    /// `request` (its bytes), which this client's push connection `connection` sent for
    /// `slot`'s `part`: whether the client handled it (true: the error is not the answer; the
    /// client sent the request on, or answered the part). `follow` false: the client only
    /// forgets what the request would have subscribed.
    func pushRedirected(_ request: UnsafeRawBufferPointer, to redirect: ClusterRedirect?, follow: Bool, redirects: UInt8, deadline: Double,
                        slot: ReplySlot, part: Int32, on connection: ObjectIdentifier) -> Bool { false }
}
