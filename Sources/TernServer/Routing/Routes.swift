import TernCore

// Routes: which servers' connections carry a request, and how its parts are numbered.
//
// A frontend decides what a request is (its keys, the sink that merges its parts, the bytes
// each server gets); a route decides where those bytes go. Routes are plain structs made on
// the stack for one request (no existential, no stored closure), and they reach a connection
// only through `requestBuffer()`/`enqueue`.

extension PoolRuntime {
    /// A warm-up pool whose deletes and invalidations also reach the old pool (`deletes: both`).
    var deletesReachOldPool: Bool { old != nil && warmup?.deletes == .both }
}

/// Every live server of a pool as a route: the same request to each, merged by one sink.
/// memcached `flush_all`; Redis `FLUSHDB`/`FLUSHALL` (`.everyServerOK`), `DBSIZE`
/// (`.everyServerSum`), and from the local commands `SCRIPT LOAD`/`FLUSH` and `PUBSUB`.
/// Ejected servers are skipped, in the old pool too.
///
/// An invalidation of a warm-up pool with `deletes: both` reaches every live server of the old
/// pool too, for both protocols alike, so that no flushed key comes back through the fallback.
struct EveryServerRoute {
    /// The client's pool. `unowned(unsafe)`: the route lives on the stack for one call made by a
    /// client, which holds its pool strongly for as long.
    unowned(unsafe) let pool: PoolRuntime
    /// Whether the old pool's servers get the request too.
    let reachesOldPool: Bool

    /// `invalidates`: the request empties servers (a flush), so a warm-up's old pool is flushed
    /// as well when its deletes reach it.
    init(_ pool: PoolRuntime, invalidates: Bool) {
        self.pool = pool
        reachesOldPool = invalidates && pool.deletesReachOldPool
    }

    /// Sends the request to every live server (`encode` writes it into each server's request
    /// buffer); the slot finishes once every part has answered, merged by `sink`. With no live
    /// server in the pool the slot fails at once ("no server available"); the old pool's
    /// servers never make that decision.
    func send(_ slot: ReplySlot, client: Int, mergedBy sink: ReplySink, framing: MemcacheFraming,
              _ encode: (ByteBuffer) -> Void) {
        guard pool.servers.contains(where: { !$0.isEjected }) else {
            slot.failNoServer()
            return
        }
        var split = ReplySplit(slot, mergedBy: sink, warmupCounters: reachesOldPool ? pool.warmupCounters : nil)
        for server in pool.servers where !server.isEjected {
            let connection = server.connection(for: client)
            encode(connection.requestBuffer())
            connection.enqueue(slot: slot, part: split.server(Int32(server.index)), framing: framing)
        }
        if reachesOldPool, let old = pool.old {
            let flush = WarmupDeletesInFlight(pool.warmupInvalidations)
            flush.addFlush()
            slot.heldWithRequest = flush
            for server in old.servers where !server.isEjected {
                let connection = server.connection(for: client)
                encode(connection.requestBuffer())
                connection.enqueue(slot: slot, part: split.oldServer(Int32(server.index)), framing: framing)
            }
        }
        split.close()
    }
}

/// A pool's servers as a split: one part per group of keys, merged by the split's sink.
/// memcached multi-key `get`/`gets`/`gat`/`gats`; Redis `MGET`, `MSET`, `DEL`, `UNLINK`,
/// `EXISTS`, `TOUCH` (and a warm-up's `DEL`/`UNLINK` to the old pool).
///
/// A group is a server's position in the pool, or in a cluster pool a hash slot, whose master
/// takes the part (Redis Cluster refuses a multi-key command over two slots even on one node).
/// The frontend groups the keys and writes each part's request; the route picks the
/// connection and numbers the part.
struct SplitRoute {
    /// The pool the parts go to (a warm-up's new or old pool). `unowned(unsafe)`: the route
    /// lives on the stack for one call made by a client, which holds its pool (and so the old
    /// pool) strongly for as long.
    unowned(unsafe) let pool: PoolRuntime
    /// Parts to a warm-up's old pool, numbered as such (`ReplySplit.oldServer`).
    let isOldPool: Bool

    init(_ pool: PoolRuntime, isOldPool: Bool = false) {
        self.pool = pool
        self.isOldPool = isOldPool
    }

    /// One part per group of `groups` (each once): `encode(group, output)` writes that group's
    /// request into its server's request buffer.
    @inline(__always)
    func send(_ groups: [Int32], _ split: inout ReplySplit, client: Int, framing: MemcacheFraming,
              _ encode: (Int32, ByteBuffer) -> Void) {
        let isCluster = pool.isCluster
        let slot = split.slot
        for group in groups {
            // A cluster group is a slot: its master (a slot without one failed earlier).
            let server = isCluster ? pool.server(forSlot: Int(group)) ?? 0 : Int(group)
            let part = isOldPool ? split.oldServer(group) : split.server(group)
            pool.withConnection(toServer: server, client: client) { connection in
                encode(group, connection.requestBuffer())
                connection.enqueue(slot: slot, part: part, framing: framing)
            }
        }
    }
}

/// A warm-up pool as a route over two pools, new and old, with one policy (`warmup:`).
/// Reads go to the new pool and fall back per key to the old one (`WarmupRead`, a phased read
/// on the slot); writes go to the new pool only; invalidations reach both with
/// `deletes: both` (`invalidate`, and `EveryServerRoute`/`SplitRoute` for the ones that
/// span servers).
struct WarmupRoute {
    /// `unowned(unsafe)`: the route lives on the stack for one call made by a client, which
    /// holds its pool, and the pool its old pool, strongly for as long.
    unowned(unsafe) let new: PoolRuntime
    unowned(unsafe) let old: PoolRuntime

    /// The client's pool when it warms up from an old pool; nil otherwise.
    init?(_ pool: PoolRuntime) {
        guard let old = pool.old else { return nil }
        new = pool
        self.old = old
    }

    /// A one-key invalidation (memcached `delete`, `md`; Redis `GETDEL`) to the key's server in
    /// both pools; the client gets the new pool's reply as `sink` amends it with the old pool's
    /// (`EitherDeleted`: "deleted" when the old pool deleted the key; `EitherValue`: the old
    /// value when the new pool had none). `hashKey` is what placement hashes; `encode` writes
    /// the request, which must have a reply. With no live new-pool server the slot fails; with
    /// no live old-pool server only the new pool is asked.
    func invalidate(_ hashKey: UnsafeRawBufferPointer, _ slot: ReplySlot, client: Int, mergedBy sink: ReplySink,
                    framing: MemcacheFraming, _ encode: (ByteBuffer) -> Void) {
        guard let server = new.server(forKey: hashKey) else {
            slot.failNoServer()
            return
        }
        var split = ReplySplit(slot, mergedBy: sink, warmupCounters: new.warmupCounters)
        let deletes = WarmupDeletesInFlight(new.warmupInvalidations)
        deletes.add(hashKey)
        slot.heldWithRequest = deletes
        if let oldServer = old.server(forKey: hashKey) {
            WarmupCounters.add(new.warmupCounters.oldDeletes)
            let connection = oldServer.connection(for: client)
            encode(connection.requestBuffer())
            connection.enqueue(slot: slot, part: split.oldServer(Int32(oldServer.index)), framing: framing)
        }
        let connection = server.connection(for: client)
        encode(connection.requestBuffer())
        connection.enqueue(slot: slot, part: split.server(Int32(server.index)), framing: framing)
        split.close()
    }
}
