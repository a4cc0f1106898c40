// Key placement: which server of a pool a key goes to. Bit-compatible with nutcracker 0.5.0
// for `ketama`, `modula` and `random`; `slots` follows Redis Cluster's 16384 hash slots.

public enum Distribution: String, CaseIterable, Sendable {
    case ketama
    /// libmemcached's unweighted ketama ring (pylibmc `{'ketama': True}`): 100 points per
    /// server, each the pool's hash of "<name>-<i>"; weights ignored.
    case ketamaLibmemcached = "ketama_libmemcached"
    case modula
    case random
    case slots
    /// A real Redis Cluster: the `servers:` are seed nodes; the slot map is discovered with
    /// `CLUSTER SLOTS` and kept current, and keys go to the master owning their slot (placed
    /// as `slots`, `{tag}` rule, once the map is known).
    case redisCluster = "redis_cluster"
}

/// The number of Redis Cluster hash slots.
public let hashSlotCount = 16384

/// The part of `key` that is hashed: the bytes between the first `tag.open` and the first
/// `tag.close` after it when that part is non-empty, otherwise the whole key.
@inlinable
public func hashTagged(_ key: UnsafeRawBufferPointer, tag: HashTag?) -> UnsafeRawBufferPointer {
    guard let tag, let start = key.firstIndex(of: tag.open) else { return key }
    var end = start + 1
    while end < key.count, key[end] != tag.close { end += 1 }
    guard end < key.count, end - start > 1 else { return key }
    return UnsafeRawBufferPointer(rebasing: key[(start + 1)..<end])
}

public struct HashTag: Sendable, Equatable {
    public var open: UInt8
    public var close: UInt8
    public init(open: UInt8, close: UInt8) { self.open = open; self.close = close }
    public static let braces = HashTag(open: UInt8(ascii: "{"), close: UInt8(ascii: "}"))
}

/// Redis Cluster's slot of a key (`{tag}` rule applied).
@inlinable
public func hashSlot(_ key: UnsafeRawBufferPointer) -> Int {
    Int(KeyHash.crc16Xmodem(hashTagged(key, tag: .braces)) & 0x3fff)
}

/// twemproxy's server order: shorter names first, then bytewise.
public func twemproxyOrder(_ names: [String]) -> [Int] {
    names.indices.sorted { left, right in
        let a = Array(names[left].utf8), b = Array(names[right].utf8)
        if a.count != b.count { return a.count < b.count }
        return a.lexicographicallyPrecedes(b)
    }
}

/// An immutable placement table for one pool and one set of live servers. Server numbers are
/// positions in the config's `servers:` list.
public final class Placement: Sendable {
    public let distribution: Distribution
    public let hash: HashFunction
    public let hashTag: HashTag?
    /// ketama: sorted point values and their servers.
    let pointValues: [UInt32]
    let pointServers: [Int32]
    /// ketama: where each bucket of the hash space starts in `pointValues` (the first point at
    /// or past the bucket's lowest hash), one bucket per point or so, and a last entry
    /// `pointValues.count`; a hash's bucket is `hash >> bucketShift`. The search for a hash's
    /// point then looks only between its bucket's start and the next's (usually a point or two)
    /// instead of over the whole ring: the same point as the whole search, found in a few steps.
    let bucketStarts: [UInt32]
    let bucketShift: UInt32
    /// ketama: for each bucket, the server every hash in it maps to when that is one server
    /// (the points that can answer the bucket's hashes, its own and the next one after them,
    /// all belong to it), else -1. Most buckets are such (about nine in ten with the four
    /// buckets per point `buckets` makes): their hashes are placed by one load, without the
    /// search's branches, which the CPU cannot predict (a random key's hash picks the way at
    /// each step; `perf annotate` put most of `server(forHash:)`'s samples on them).
    let bucketServers: [Int32]
    /// modula / random: the continuum of server numbers.
    let continuum: [Int32]
    /// slots: server number of every slot.
    let slotServers: [Int32]

    /// Builds the table. `live[i]` says whether server `i` takes keys (auto-eject).
    public init(distribution: Distribution, hash: HashFunction, hashTag: HashTag?,
                names: [String], weights: [Int], live: [Bool], slotServers: [Int32] = []) {
        self.distribution = distribution
        self.hash = hash
        self.hashTag = hashTag
        var values: [UInt32] = []
        var servers: [Int32] = []
        var continuum: [Int32] = []
        let order = twemproxyOrder(names).filter { live[$0] }
        switch distribution {
        case .ketama:
            let totalWeight = order.reduce(0) { $0 + weights[$1] }
            var points: [(UInt32, Int32)] = []
            for server in order {
                let count = Placement.ketamaPointCount(weight: weights[server], totalWeight: totalWeight, liveCount: order.count)
                for i in 0..<(count / 4) {
                    let digest = MD5.digest(Array("\(names[server])-\(i)".utf8))
                    for word in 0..<4 { points.append((digest.word(word), Int32(server))) }
                }
            }
            points.sort { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
            values = points.map(\.0)
            servers = points.map(\.1)
        case .ketamaLibmemcached:
            var points: [(UInt32, Int32)] = []
            for server in names.indices where live[server] {
                for i in 0..<100 {
                    points.append((hash.hash(Array("\(names[server])-\(i)".utf8)), Int32(server)))
                }
            }
            points.sort { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
            values = points.map(\.0)
            servers = points.map(\.1)
        case .modula:
            for server in order { for _ in 0..<weights[server] { continuum.append(Int32(server)) } }
        case .random:
            continuum = order.map { Int32($0) }
        case .slots, .redisCluster:
            break
        }
        self.pointValues = values
        self.pointServers = servers
        (self.bucketShift, self.bucketStarts) = Placement.buckets(values)
        self.bucketServers = Placement.bucketServers(bucketStarts, servers)
        self.continuum = continuum
        self.slotServers = slotServers
    }

    /// `bucketShift` and `bucketStarts` for sorted point values: 2^b buckets, the least b (at
    /// most 16) with at least four buckets per point.
    static func buckets(_ values: [UInt32]) -> (shift: UInt32, starts: [UInt32]) {
        guard !values.isEmpty else { return (31, []) }
        var bits = 1
        while bits < 16, 1 << bits < values.count * 4 { bits += 1 }
        let count = 1 << bits
        var starts = [UInt32](repeating: 0, count: count + 1)
        var point = 0
        for bucket in 0..<count {
            let lowest = UInt64(bucket) << UInt64(32 - bits)
            while point < values.count, UInt64(values[point]) < lowest { point += 1 }
            starts[bucket] = UInt32(point)
        }
        starts[count] = UInt32(values.count)
        return (UInt32(32 - bits), starts)
    }

    /// `bucketServers` from `bucketStarts`: a hash in bucket b is answered by one of the points
    /// `starts[b]...starts[b + 1]` (the last of them is the first point past the bucket, the
    /// ring's first point when none is).
    static func bucketServers(_ starts: [UInt32], _ servers: [Int32]) -> [Int32] {
        guard starts.count > 1 else { return [] }
        return (0..<(starts.count - 1)).map { bucket in
            let first = Int(starts[bucket]), last = Int(starts[bucket + 1])
            let server = servers[first == servers.count ? 0 : first]
            for point in first...last where servers[point == servers.count ? 0 : point] != server { return -1 }
            return server
        }
    }

    /// twemproxy's per-server ketama point count, computed in 32-bit float as nutcracker does.
    public static func ketamaPointCount(weight: Int, totalWeight: Int, liveCount: Int) -> Int {
        let share = Float(weight) / Float(totalWeight)
        let scaled: Float = share * Float(160) / Float(4) * Float(liveCount)
        // C adds a double literal (1e-10) and floorf() takes the float back.
        let nudged = Float(Double(scaled) + 0.0000000001)
        return Int(nudged.rounded(.down)) * 4
    }

    /// The hash of a key as this pool computes it (hash tag applied).
    @inlinable
    public func keyHash(_ key: UnsafeRawBufferPointer) -> UInt32 {
        if distribution == .slots {
            return UInt32(KeyHash.crc16Xmodem(hashTagged(key, tag: hashTag ?? .braces)) & 0x3fff)
        }
        let tagged = hashTagged(key, tag: hashTag)
        return tagged.count == 0 ? 0 : hash.hash(tagged)
    }

    /// The server for a key, or nil when no server is live. `random` is a caller-provided
    /// random number, used only by the `random` distribution.
    @inlinable
    public func server(forKey key: UnsafeRawBufferPointer, random: UInt32 = 0) -> Int? {
        server(forHash: keyHash(key), random: random)
    }

    public func server(forHash hash: UInt32, random: UInt32 = 0) -> Int? {
        switch distribution {
        case .ketama, .ketamaLibmemcached:
            let count = pointValues.count
            if count == 0 { return nil }
            // The first point at or past `hash` is at or after its bucket's start and at or
            // before the next bucket's (whose points are all past it).
            let bucket = Int(hash >> bucketShift)
            let uniform = bucketServers[bucket]
            if uniform >= 0 { return Int(uniform) }
            var low = Int(bucketStarts[bucket]), high = Int(bucketStarts[bucket + 1])
            while low < high {
                let middle = (low + high) >> 1
                if pointValues[middle] < hash { low = middle + 1 } else { high = middle }
            }
            return Int(pointServers[low == count ? 0 : low])
        case .modula:
            if continuum.isEmpty { return nil }
            return Int(continuum[Int(hash % UInt32(continuum.count))])
        case .random:
            if continuum.isEmpty { return nil }
            return Int(continuum[Int(random % UInt32(continuum.count))])
        case .slots, .redisCluster:
            if slotServers.isEmpty { return nil }
            let server = slotServers[Int(hash) & 0x3fff]
            return server < 0 ? nil : Int(server)
        }
    }

    /// The default split of the 16384 slots over `count` servers in config order, as
    /// `redis-cli --cluster create` makes it (3 servers: 0-5460, 5461-10922, 10923-16383).
    public static func defaultSlotRanges(serverCount count: Int) -> [ClosedRange<Int>] {
        let share = Float(hashSlotCount) / Float(count)
        var ranges: [ClosedRange<Int>] = []
        var first = 0
        var cursor: Float = 0
        for i in 0..<count {
            var last = Int((cursor + share - 1).rounded())
            if last > hashSlotCount || i == count - 1 { last = hashSlotCount - 1 }
            if last < first { last = first }
            ranges.append(first...last)
            first = last + 1
            cursor += share
        }
        return ranges
    }
}
