// Tern's Redis command table: one entry per command, as data. Arity follows Redis (positive:
// exact argument count including the name; negative: at least that many). Key positions follow
// Redis 7.0's key specs. Routing, fan-out and CROSSSLOT checks are all derived from this table.

#if canImport(Glibc)
import Glibc
#endif

public enum RedisKeys: Sendable, Equatable {
    /// No keys.
    case none
    /// Keys from `first` to `last` (negative counts from the end: -1 is the last argument)
    /// every `step` arguments.
    case range(first: Int, last: Int, step: Int)
    /// The number of keys is at argument `countAt`; they follow it. `before` is a key placed
    /// before the count (the destination of ZUNIONSTORE), or 0.
    case counted(countAt: Int, before: Int)
    /// XREAD / XREADGROUP: the keys are the first half of the arguments after STREAMS.
    case streams
    /// The key is argument 2 of a container command (OBJECT ENCODING key, XINFO STREAM key).
    case subcommandKey
}

public enum RedisRouting: Sendable, Equatable {
    /// To the server of its keys; several keys must share a server (else CROSSSLOT).
    case keyed
    /// MGET: split per server, replies merged as one array in key order.
    case mget
    /// MSET: split per server (key/value pairs), `+OK` when every part said OK.
    case mset
    /// DEL, UNLINK, EXISTS, TOUCH: split per server, integer replies summed.
    case sum
    /// Sent to every server: `+OK` when all said OK (FLUSHDB, FLUSHALL). Invalidations: a
    /// warm-up's old pool gets them too with `deletes: both`. (SCRIPT is a local command that
    /// reaches every server itself.)
    case everyServerOK
    /// Sent to every server, integer replies summed (DBSIZE).
    case everyServerSum
    /// Keyless command for one server: the first server in config order (EVAL with 0 keys).
    case firstServer
    /// Changes the client's session (MULTI, EXEC, DISCARD, WATCH, UNWATCH, RESET): handled by
    /// the Redis frontend's session logic.
    case session
    /// Blocks until data arrives or its timeout passes (BLPOP, BZPOPMIN, XREAD … BLOCK …): runs
    /// on a dedicated backend connection of the server of its keys (all on one server).
    case blocking
    /// Pub/sub: SUBSCRIBE and its family on the client's push connections, PUBSUB merged over
    /// every server (handled by the Redis frontend's pub/sub logic).
    case pubsub
    /// Answered by Tern itself.
    case local
    /// Cannot be proxied correctly: `-ERR unsupported command`.
    case unsupported
}

/// What a command does during a warm-up (a pool with `warmup:`); every command without one of
/// these goes to the new pool only.
public enum RedisWarmup: UInt8, Sendable, Equatable {
    case none
    /// GET: a miss in the new pool is read from the old one, answered, and copied in the
    /// background.
    case read
    /// GETEX: as `read`, but the copy is made first and the command sent again to the new pool,
    /// so the expiry it sets applies to the copy.
    case readCopyFirst
    /// GETDEL: sent to both pools (with `deletes: both`); the new pool's value, or the old
    /// pool's when the new one had none.
    case readAndDelete
}

public struct RedisCommand: Sendable {
    /// The lower-case name. Stored as a StaticString so that the struct holds no reference:
    /// the lookup on every request copies it out of the table without retains.
    private let staticName: StaticString
    public var name: String { staticName.description }

    /// Whether this is the command `other` (lower case), compared as bytes without making a String.
    public func isNamed(_ other: StaticString) -> Bool { Self.same(staticName, other) }
    public let arity: Int
    public let keys: RedisKeys
    public let routing: RedisRouting
    /// Keywords after which one more key follows (SORT … STORE dst, GEORADIUS … STORE dst);
    /// set for SORT_RO too, whose BY and GET patterns are checked as SORT's are. Such a command
    /// is placed by the general walk, never the one-key shortcut.
    public let storeKeywords: Bool
    /// Whether the command writes: counted as a write, sent to a master (`read_from`), and
    /// DEL/UNLINK reach a warm-up's old pool. (COMMAND reports Redis's own flags:
    /// `RedisCommandPresentation`.)
    public let isWrite: Bool
    /// Blocking commands (XREAD and XREADGROUP block with BLOCK), WATCH and EXEC: they may leave the client's shared connections for a
    /// connection of their own, so a pipeline's order around them is kept by waiting (the
    /// Redis frontend's `mustWait` says when). One byte tested per request.
    public let keepsPipelineOrder: Bool
    /// What the command does during a warm-up (MGET, DEL, UNLINK, FLUSHDB and FLUSHALL are
    /// told by their routing).
    public let warmup: RedisWarmup
    /// Blocking commands: where their timeout is (negative counts from the end), in seconds;
    /// 0 when it follows the `BLOCK` keyword, in milliseconds (XREAD, XREADGROUP).
    public let timeoutAt: Int
    /// Position in `RedisCommandTable.commands`: per-command metrics are an array indexed by it.
    public fileprivate(set) var tableIndex: Int32 = -1
    /// Redis's ACL categories (`@read`, `@write`, `@dangerous`, …), from `RedisCategories.table`.
    public fileprivate(set) var categories = RedisCategories()

    init(_ name: StaticString, _ arity: Int, _ keys: RedisKeys, _ routing: RedisRouting = .keyed, write: Bool = false,
         storeKeywords: Bool = false, timeoutAt: Int = 0, warmup: RedisWarmup = .none) {
        self.staticName = name
        self.warmup = warmup
        self.arity = arity
        self.keys = keys
        self.routing = routing
        self.isWrite = write
        self.storeKeywords = storeKeywords
        self.timeoutAt = timeoutAt
        keepsPipelineOrder = routing == .blocking || keys == .streams || Self.same(name, "watch") || Self.same(name, "exec") || Self.same(name, "reset")
    }

    private static func same(_ name: StaticString, _ other: StaticString) -> Bool {
        name.utf8CodeUnitCount == other.utf8CodeUnitCount && memcmp(name.utf8Start, other.utf8Start, other.utf8CodeUnitCount) == 0
    }

    /// Whether the command may be queued between MULTI and EXEC: it runs on one server there,
    /// so it must be one that goes to the server of its keys (PING and ECHO, answered by Tern
    /// elsewhere, are harmless on a backend). Session, fan-out-to-every-server, local and
    /// unsupported commands are refused.
    public var isTransactional: Bool {
        switch routing {
        case .keyed, .mget, .mset, .sum, .firstServer, .blocking: return true
        case .local: return isNamed("ping") || isNamed("echo")
        // Queued as Redis queues it (it checks nothing at EXEC, which has checked the WATCH
        // first; EXEC's array carries its +OK).
        case .session: return isNamed("unwatch")
        default: return false
        }
    }

    /// PUBLISH and SPUBLISH: their "key" in the table is the channel, which places them on a
    /// server; Redis names no key arguments for them (COMMAND GETKEYS).
    public var routesByChannel: Bool { isNamed("publish") || isNamed("spublish") }

    /// The legacy first/last/step triple COMMAND INFO gives for the command's key positions
    /// when its keys are a plain range (Redis 7.0's: PUBLISH 0,0,0, as it has no key spec;
    /// SPUBLISH, SSUBSCRIBE and SUNSUBSCRIBE count their shard channels, which Tern places by
    /// the client's pub/sub logic instead).
    public var presentedKeyRange: (first: Int, last: Int, step: Int)? {
        if isNamed("publish") { return (0, 0, 0) }
        if isNamed("ssubscribe") || isNamed("sunsubscribe") { return (1, -1, 1) }
        return nil
    }

    public func acceptsArgumentCount(_ count: Int) -> Bool {
        arity >= 0 ? count == arity : count >= -arity
    }
}

public enum RedisCommandTable {
    static let one = RedisKeys.range(first: 1, last: 1, step: 1)
    static let two = RedisKeys.range(first: 1, last: 2, step: 1)
    static let all = RedisKeys.range(first: 1, last: -1, step: 1)
    static let pairs = RedisKeys.range(first: 1, last: -1, step: 2)
    static let fromSecond = RedisKeys.range(first: 2, last: -1, step: 1)

    public static let commands: [RedisCommand] = table.enumerated().map { index, command in
        var numbered = command
        numbered.tableIndex = Int32(index)
        guard let categories = RedisCategories.byCommand[command.name] else {
            preconditionFailure("no ACL categories for \(command.name)")
        }
        numbered.categories = categories
        return numbered
    }

    private static let table: [RedisCommand] = [
        // Strings
        .init("append", 3, one, write: true), .init("decr", 2, one, write: true), .init("decrby", 3, one, write: true),
        .init("get", 2, one, warmup: .read), .init("getdel", 2, one, write: true, warmup: .readAndDelete),
        .init("getex", -2, one, write: true, warmup: .readCopyFirst),
        .init("getrange", 4, one), .init("getset", 3, one, write: true), .init("incr", 2, one, write: true),
        .init("incrby", 3, one, write: true), .init("incrbyfloat", 3, one, write: true), .init("lcs", -3, two),
        .init("mget", -2, all, .mget), .init("mset", -3, pairs, .mset, write: true), .init("msetnx", -3, pairs, write: true),
        .init("psetex", 4, one, write: true), .init("set", -3, one, write: true), .init("setex", 4, one, write: true),
        .init("setnx", 3, one, write: true), .init("setrange", 4, one, write: true), .init("strlen", 2, one),
        .init("substr", 4, one),
        // Bitmaps
        .init("bitcount", -2, one), .init("bitfield", -2, one, write: true), .init("bitfield_ro", -2, one),
        .init("bitop", -4, fromSecond, write: true), .init("bitpos", -3, one), .init("getbit", 3, one),
        .init("setbit", 4, one, write: true),
        // Hashes
        .init("hdel", -3, one, write: true), .init("hexists", 3, one), .init("hget", 3, one), .init("hgetall", 2, one),
        .init("hincrby", 4, one, write: true), .init("hincrbyfloat", 4, one, write: true), .init("hkeys", 2, one),
        .init("hlen", 2, one), .init("hmget", -3, one), .init("hmset", -4, one, write: true), .init("hrandfield", -2, one),
        .init("hscan", -3, one), .init("hset", -4, one, write: true), .init("hsetnx", 4, one, write: true),
        .init("hstrlen", 3, one), .init("hvals", 2, one),
        // Lists
        .init("lindex", 3, one), .init("linsert", 5, one, write: true), .init("llen", 2, one),
        .init("lmove", 5, two, write: true), .init("lmpop", -4, .counted(countAt: 1, before: 0), write: true),
        .init("lpop", -2, one, write: true), .init("lpos", -3, one), .init("lpush", -3, one, write: true),
        .init("lpushx", -3, one, write: true), .init("lrange", 4, one), .init("lrem", 4, one, write: true),
        .init("lset", 4, one, write: true), .init("ltrim", 4, one, write: true), .init("rpop", -2, one, write: true),
        .init("rpoplpush", 3, two, write: true), .init("rpush", -3, one, write: true), .init("rpushx", -3, one, write: true),
        .init("blmove", 6, two, .blocking, write: true, timeoutAt: 5),
        .init("blmpop", -5, .counted(countAt: 2, before: 0), .blocking, write: true, timeoutAt: 1),
        .init("blpop", -3, .range(first: 1, last: -2, step: 1), .blocking, write: true, timeoutAt: -1),
        .init("brpop", -3, .range(first: 1, last: -2, step: 1), .blocking, write: true, timeoutAt: -1),
        .init("brpoplpush", 4, two, .blocking, write: true, timeoutAt: 3),
        // Sets
        .init("sadd", -3, one, write: true), .init("scard", 2, one), .init("sdiff", -2, all),
        .init("sdiffstore", -3, all, write: true), .init("sinter", -2, all),
        .init("sintercard", -3, .counted(countAt: 1, before: 0)), .init("sinterstore", -3, all, write: true),
        .init("sismember", 3, one), .init("smembers", 2, one), .init("smismember", -3, one),
        .init("smove", 4, two, write: true), .init("spop", -2, one, write: true), .init("srandmember", -2, one),
        .init("srem", -3, one, write: true), .init("sscan", -3, one), .init("sunion", -2, all),
        .init("sunionstore", -3, all, write: true),
        // Sorted sets
        .init("zadd", -4, one, write: true), .init("zcard", 2, one), .init("zcount", 4, one),
        .init("zdiff", -3, .counted(countAt: 1, before: 0)), .init("zdiffstore", -4, .counted(countAt: 2, before: 1), write: true),
        .init("zincrby", 4, one, write: true), .init("zinter", -3, .counted(countAt: 1, before: 0)),
        .init("zintercard", -3, .counted(countAt: 1, before: 0)), .init("zinterstore", -4, .counted(countAt: 2, before: 1), write: true),
        .init("zlexcount", 4, one), .init("zmpop", -4, .counted(countAt: 1, before: 0), write: true), .init("zmscore", -3, one),
        .init("zpopmax", -2, one, write: true), .init("zpopmin", -2, one, write: true), .init("zrandmember", -2, one),
        .init("zrange", -4, one), .init("zrangebylex", -4, one), .init("zrangebyscore", -4, one),
        .init("zrangestore", -5, two, write: true), .init("zrank", -3, one), .init("zrem", -3, one, write: true),
        .init("zremrangebylex", 4, one, write: true), .init("zremrangebyrank", 4, one, write: true),
        .init("zremrangebyscore", 4, one, write: true), .init("zrevrange", -4, one), .init("zrevrangebylex", -4, one),
        .init("zrevrangebyscore", -4, one), .init("zrevrank", -3, one), .init("zscan", -3, one), .init("zscore", 3, one),
        .init("zunion", -3, .counted(countAt: 1, before: 0)), .init("zunionstore", -4, .counted(countAt: 2, before: 1), write: true),
        .init("bzmpop", -5, .counted(countAt: 2, before: 0), .blocking, write: true, timeoutAt: 1),
        .init("bzpopmax", -3, .range(first: 1, last: -2, step: 1), .blocking, write: true, timeoutAt: -1),
        .init("bzpopmin", -3, .range(first: 1, last: -2, step: 1), .blocking, write: true, timeoutAt: -1),
        // HyperLogLog
        .init("pfadd", -2, one, write: true), .init("pfcount", -2, all), .init("pfmerge", -2, all, write: true),
        .init("pfdebug", 3, .none, .unsupported), .init("pfselftest", 1, .none, .unsupported),
        // Geo
        .init("geoadd", -5, one, write: true), .init("geodist", -4, one), .init("geohash", -2, one), .init("geopos", -2, one),
        .init("georadius", -6, one, write: true, storeKeywords: true),
        .init("georadiusbymember", -5, one, write: true, storeKeywords: true),
        .init("georadius_ro", -6, one), .init("georadiusbymember_ro", -5, one), .init("geosearch", -7, one),
        .init("geosearchstore", -8, two, write: true),
        // Streams (non-blocking)
        .init("xack", -4, one, write: true), .init("xadd", -5, one, write: true), .init("xautoclaim", -6, one, write: true),
        .init("xclaim", -6, one, write: true), .init("xdel", -3, one, write: true), .init("xgroup", -2, .subcommandKey, write: true),
        .init("xinfo", -2, .subcommandKey), .init("xlen", 2, one), .init("xpending", -3, one), .init("xrange", -4, one),
        .init("xread", -4, .streams), .init("xreadgroup", -7, .streams, write: true), .init("xrevrange", -4, one),
        .init("xsetid", -3, one, write: true), .init("xtrim", -4, one, write: true),
        // Keyspace
        .init("copy", -3, two, write: true), .init("del", -2, all, .sum, write: true), .init("dump", 2, one),
        .init("exists", -2, all, .sum), .init("expire", -3, one, write: true), .init("expireat", -3, one, write: true),
        .init("expiretime", 2, one), .init("object", -2, .subcommandKey), .init("persist", 2, one, write: true),
        .init("pexpire", -3, one, write: true), .init("pexpireat", -3, one, write: true), .init("pexpiretime", 2, one),
        .init("pttl", 2, one), .init("rename", 3, two, write: true), .init("renamenx", 3, two, write: true),
        .init("restore", -4, one, write: true), .init("sort", -2, one, write: true, storeKeywords: true), .init("sort_ro", -2, one, storeKeywords: true),
        .init("touch", -2, all, .sum), .init("ttl", 2, one), .init("type", 2, one), .init("unlink", -2, all, .sum, write: true),
        .init("memory", -2, .subcommandKey),
        .init("keys", 2, .none, .local), .init("scan", -2, .none, .local), .init("randomkey", 1, .none, .unsupported),
        .init("migrate", -6, .none, .unsupported), .init("move", 3, .none, .unsupported), .init("wait", 3, .none, .unsupported),
        .init("swapdb", 3, .none, .unsupported),
        // Scripting and functions
        .init("eval", -3, .counted(countAt: 2, before: 0), write: true), .init("evalsha", -3, .counted(countAt: 2, before: 0), write: true),
        .init("eval_ro", -3, .counted(countAt: 2, before: 0)), .init("evalsha_ro", -3, .counted(countAt: 2, before: 0)),
        .init("fcall", -3, .counted(countAt: 2, before: 0), write: true), .init("fcall_ro", -3, .counted(countAt: 2, before: 0)),
        .init("script", -2, .none, .local), .init("function", -2, .none, .local),
        // Connection and server: answered by Tern
        .init("ping", -1, .none, .local), .init("echo", 2, .none, .local), .init("quit", -1, .none, .local),
        .init("select", 2, .none, .local), .init("auth", -2, .none, .local), .init("hello", -1, .none, .local),
        .init("client", -2, .none, .local), .init("command", -1, .none, .local), .init("info", -1, .none, .local),
        .init("dbsize", 1, .none, .everyServerSum), .init("flushdb", -1, .none, .everyServerOK, write: true),
        .init("flushall", -1, .none, .everyServerOK, write: true),
        // Cannot be proxied correctly
        .init("multi", 1, .none, .session), .init("exec", 1, .none, .session), .init("discard", 1, .none, .session),
        .init("watch", -2, all, .session), .init("unwatch", 1, .none, .session), .init("reset", 1, .none, .session),
        // Pub/sub: a channel is placed like a key, so PUBLISH and SUBSCRIBE meet on one server.
        .init("subscribe", -2, .none, .pubsub), .init("psubscribe", -2, .none, .pubsub),
        .init("unsubscribe", -1, .none, .pubsub), .init("punsubscribe", -1, .none, .pubsub),
        .init("ssubscribe", -2, .none, .pubsub), .init("sunsubscribe", -1, .none, .pubsub),
        .init("publish", 3, one), .init("spublish", 3, one), .init("pubsub", -2, .none, .pubsub),
        .init("monitor", 1, .none, .unsupported), .init("cluster", -2, .none, .local), .init("config", -2, .none, .unsupported),
        .init("debug", -2, .none, .unsupported), .init("slowlog", -2, .none, .local), .init("latency", -2, .none, .unsupported),
        .init("acl", -2, .none, .local), .init("save", 1, .none, .unsupported), .init("bgsave", -1, .none, .unsupported),
        .init("bgrewriteaof", 1, .none, .unsupported), .init("lastsave", 1, .none, .unsupported), .init("shutdown", -1, .none, .unsupported),
        .init("slaveof", 3, .none, .unsupported), .init("replicaof", 3, .none, .unsupported), .init("sync", 1, .none, .unsupported),
        .init("psync", -3, .none, .unsupported), .init("role", 1, .none, .local), .init("readonly", 1, .none, .local),
        .init("readwrite", 1, .none, .local), .init("asking", 1, .none, .local),
        .init("failover", -1, .none, .unsupported), .init("module", -2, .none, .unsupported), .init("lolwut", -1, .none, .unsupported),
        .init("time", 1, .none, .firstServer),
    ]

    /// Lookup by lower-case name (control plane and tests).
    public static let byName: [String: RedisCommand] = {
        var table: [String: RedisCommand] = [:]
        for command in commands { table[command.name] = command }
        return table
    }()

    /// A command name of up to 24 bytes, lower-cased and packed into three little-endian words:
    /// a lookup key that needs no String (the longest Redis command name, georadiusbymember_ro,
    /// has 20).
    /// The length is kept too, so that a name with trailing zero bytes is not taken for a shorter one.
    struct PackedName: Equatable {
        var words: (UInt64, UInt64, UInt64) = (0, 0, 0)
        var length = 0

        init() {}

        @inline(__always)
        init?(_ name: UnsafeRawBufferPointer) {
            let count = name.count
            guard count > 0, count <= 24 else { return nil }
            length = count
            words.0 = Self.loweredWord(name, from: 0)
            if count > 8 { words.1 = Self.loweredWord(name, from: 8) }
            if count > 16 { words.2 = Self.loweredWord(name, from: 16) }
        }

        /// Up to eight bytes from `start`, ASCII upper case lowered in all eight at once: a byte
        /// is upper case when adding 0x3F sets its high bit and adding 0x25 does not.
        @inline(__always)
        static func loweredWord(_ name: UnsafeRawBufferPointer, from start: Int) -> UInt64 {
            let word = littleEndianWord(name, from: start)
            let ones: UInt64 = 0x0101_0101_0101_0101
            let low = word & (0x7F &* ones)
            let atLeastA = low &+ (0x80 - 0x41) &* ones
            let pastZ = low &+ (0x80 - 0x5B) &* ones
            let upper = atLeastA & ~pastZ & ~word & (0x80 &* ones)
            return word | (upper >> 2)
        }

        /// The bytes `start..<min(start + 8, name.count)` (at least one) as a little-endian word,
        /// zero-padded, read with at most two overlapping loads inside those bytes: a `memcpy`
        /// of a few bytes into a word, read back at once, stalled every lookup on the store.
        @inline(__always)
        static func littleEndianWord(_ name: UnsafeRawBufferPointer, from start: Int) -> UInt64 {
            let base = name.baseAddress.unsafelyUnwrapped + start
            let count = min(8, name.count - start)
            if count == 8 { return UInt64(littleEndian: base.loadUnaligned(as: UInt64.self)) }
            if count >= 4 {
                let low = UInt64(UInt32(littleEndian: base.loadUnaligned(as: UInt32.self)))
                let high = UInt64(UInt32(littleEndian: base.loadUnaligned(fromByteOffset: count - 4, as: UInt32.self)))
                return low | high << UInt64((count - 4) * 8)
            }
            if count >= 2 {
                let low = UInt64(UInt16(littleEndian: base.loadUnaligned(as: UInt16.self)))
                let high = UInt64(UInt16(littleEndian: base.loadUnaligned(fromByteOffset: count - 2, as: UInt16.self)))
                return low | high << UInt64((count - 2) * 8)
            }
            return UInt64(base.load(as: UInt8.self))
        }

        static func == (left: PackedName, right: PackedName) -> Bool {
            left.words.0 == right.words.0 && left.words.1 == right.words.1 && left.words.2 == right.words.2 && left.length == right.length
        }

        /// Slot in `slots`: a multiplicative hash of the three words.
        @inline(__always)
        var bucket: Int {
            let mixed = (words.0 &* 0x9E37_79B9_7F4A_7C15) ^ (words.1 &* 0xC2B2_AE3D_27D4_EB4F) ^ (words.2 &* 0x1656_67B1_9E37_79F9)
            return Int(truncatingIfNeeded: mixed >> UInt64(64 - RedisCommandTable.slotBits))
        }
    }

    /// Open addressing over `1 << slotBits` slots (a quarter full): each slot holds a name and its
    /// index in `commands`, or -1. Built once; a lookup hashes three words and usually compares
    /// one slot, where a Dictionary ran SipHash over them (about a tenth of the request path).
    static let slotBits = 10
    struct Slot {
        var name = PackedName()
        var index: Int32 = -1
    }
    static let slots: [Slot] = {
        var table = [Slot](repeating: Slot(), count: 1 << slotBits)
        precondition(commands.count * 2 < table.count, "command table too full")
        for (index, command) in commands.enumerated() {
            let bytes = Array(command.name.utf8)
            guard let key = bytes.withUnsafeBytes({ PackedName($0) }) else {
                preconditionFailure("command name longer than 24 bytes: \(command.name)")
            }
            var bucket = key.bucket
            while table[bucket].index >= 0 { bucket = (bucket + 1) & (table.count - 1) }
            table[bucket] = Slot(name: key, index: Int32(index))
        }
        return table
    }()

    /// Finds a command by its (any-case) name bytes, without allocating.
    public static func lookup(_ name: UnsafeRawBufferPointer) -> RedisCommand? {
        let index = indexOf(name)
        return index < 0 ? nil : commands[Int(index)]
    }

    /// The command's position in `commands` (its `tableIndex`), or -1. The request path asks
    /// its worker's `RedisCommandLookup` instead and reads the entry there in place: an
    /// `Optional<RedisCommand>` returned from a lookup was written to the caller's stack and
    /// read back at once, and the reads of that fresh copy stalled (43 % of `routeRedis`'s
    /// samples sat on one of them under pipelined GET).
    public static func indexOf(_ name: UnsafeRawBufferPointer) -> Int32 {
        RedisCommandLookup.shared.indexOf(name)
    }
}

/// The command table as the request path reads it: `RedisCommandTable`'s slots and commands
/// copied once into memory that is never freed, held by a worker (`FrontendLoop.redisCommands`).
/// Read through `RedisCommandTable`'s lazily made globals, every request paid two `swift_once`
/// checks (about 30 instructions of a pipelined SET's 2,100); a copy of this struct reads them
/// with no check. Both tables are immutable once made, so any thread may read them.
public struct RedisCommandLookup: @unchecked Sendable {
    /// `1 << RedisCommandTable.slotBits` slots (unsafe: allocated once by `shared`, never freed or written after).
    private let slots: UnsafePointer<RedisCommandTable.Slot>
    /// `RedisCommandTable.commands`, by `tableIndex` (unsafe: as `slots`).
    @usableFromInline let entries: UnsafePointer<RedisCommand>

    public static let shared: RedisCommandLookup = {
        let slots = UnsafeMutablePointer<RedisCommandTable.Slot>.allocate(capacity: RedisCommandTable.slots.count)
        slots.initialize(from: RedisCommandTable.slots, count: RedisCommandTable.slots.count)
        let entries = UnsafeMutablePointer<RedisCommand>.allocate(capacity: RedisCommandTable.commands.count)
        entries.initialize(from: RedisCommandTable.commands, count: RedisCommandTable.commands.count)
        return RedisCommandLookup(slots: slots, entries: entries)
    }()

    private init(slots: UnsafePointer<RedisCommandTable.Slot>, entries: UnsafePointer<RedisCommand>) {
        self.slots = slots
        self.entries = entries
    }

    /// As `RedisCommandTable.indexOf`.
    public func indexOf(_ name: UnsafeRawBufferPointer) -> Int32 {
        guard let key = RedisCommandTable.PackedName(name) else { return -1 }
        var bucket = key.bucket
        while true {
            let slot = slots[bucket]
            if slot.index < 0 || slot.name == key { return slot.index }
            bucket = (bucket + 1) & ((1 << RedisCommandTable.slotBits) - 1)
        }
    }

    /// The command at `index` of `RedisCommandTable.commands` (0 ≤ index < its count).
    @inlinable
    public func command(_ index: Int32) -> RedisCommand {
        entries[Int(index)]
    }
}

/// Where the keys of a request are, derived from the table entry and the arguments.
public enum RedisKeyPositions {
    /// Where XREAD's and XREADGROUP's options put STREAMS and BLOCK's milliseconds (argument
    /// indexes, -1 when absent), walked as Redis walks them (`xreadGetKeys`): BLOCK and COUNT
    /// take one argument, GROUP two, NOACK none, STREAMS ends the options, anything else ends
    /// the walk. A group, consumer or stream named `streams` or `block` is not an option
    /// (searched for anywhere, `XREADGROUP GROUP streams c STREAMS s >` was routed by `c` to
    /// the wrong server; Redis commands sweep 31).
    public static func streamReadOptions(_ arguments: RespArguments, in frame: UnsafeRawBufferPointer) -> (streamsAt: Int, blockAt: Int) {
        let count = arguments.count
        var blockAt = -1
        var index = 1
        while index < count {
            if arguments.argument(index, in: frame, equals: "streams") {
                return (index, blockAt)
            } else if arguments.argument(index, in: frame, equals: "block") {
                if index + 1 < count { blockAt = index + 1 }
                index += 2
            } else if arguments.argument(index, in: frame, equals: "count") {
                index += 2
            } else if arguments.argument(index, in: frame, equals: "group") {
                index += 3
            } else if arguments.argument(index, in: frame, equals: "noack") {
                index += 1
            } else {
                break
            }
        }
        return (-1, blockAt)
    }

    /// Calls `body` with the argument index of every key, in order. Returns false when the
    /// arguments contradict the key spec (a bad numkeys), which is answered as a syntax error.
    @discardableResult
    public static func forEachKey(_ command: RedisCommand, _ arguments: RespArguments, in frame: UnsafeRawBufferPointer, _ body: (Int) -> Void) -> Bool {
        let count = arguments.count
        switch command.keys {
        case .none:
            return true
        case let .range(first, last, step):
            let end = last < 0 ? count + last : min(last, count - 1)
            var index = first
            while index <= end {
                body(index)
                index += step
            }
        case let .counted(countAt, before):
            if before > 0 { body(before) }
            guard countAt < count else { return false }
            let text = arguments.argumentString(countAt, in: frame)
            guard let keyCount = Int(text), keyCount >= 0, countAt + keyCount < count else { return false }
            if keyCount == 0, before == 0, command.name.hasPrefix("eval") || command.name.hasPrefix("fcall") {
                return true
            }
            guard keyCount > 0 || before > 0 else { return false }
            for index in (countAt + 1)..<(countAt + 1 + keyCount) { body(index) }
        case .streams:
            let streamsAt = streamReadOptions(arguments, in: frame).streamsAt
            guard streamsAt > 0 else { return false }
            let rest = count - streamsAt - 1
            guard rest > 0, rest % 2 == 0 else { return false }
            for index in (streamsAt + 1)...(streamsAt + rest / 2) { body(index) }
        case .subcommandKey:
            if count > 2 { body(2) }
        }
        if command.storeKeywords { forEachStoreKey(command, arguments, in: frame, body) }
        return true
    }

    /// The destination key after `STORE`/`STOREDIST`, found by walking the options as Redis
    /// parses them (`sortOptions`, and GEORADIUS's options after its fixed arguments, where
    /// `COUNT` takes a number); as in Redis, the last one counts. SORT_RO has none (Redis
    /// answers its STORE with a syntax error).
    static func forEachStoreKey(_ command: RedisCommand, _ arguments: RespArguments, in frame: UnsafeRawBufferPointer, _ body: (Int) -> Void) {
        var destination = -1
        if command.isNamed("sort") {
            sortOptions(arguments, in: frame) { option, at in if option == .store { destination = at } }
        } else if !command.isNamed("sort_ro") {
            let count = arguments.count
            var index = command.isNamed("georadius") ? 6 : 5
            while index < count {
                if index + 1 < count, arguments.argument(index, in: frame, equals: "store") || arguments.argument(index, in: frame, equals: "storedist") {
                    destination = index + 1
                    index += 2
                } else if index + 1 < count, arguments.argument(index, in: frame, equals: "count") {
                    index += 2
                } else {
                    index += 1
                }
            }
        }
        if destination > 0 { body(destination) }
    }

    public enum SortOption { case by, get, store }

    /// SORT's options that take an argument, as Redis's sort.c walks them from argument 2:
    /// `LIMIT` takes two, `BY`, `GET` and `STORE` one (`at` is its position); anything else
    /// none. So a pattern or destination named "store" or "by" is never read as a keyword.
    public static func sortOptions(_ arguments: RespArguments, in frame: UnsafeRawBufferPointer, _ body: (SortOption, Int) -> Void) {
        let count = arguments.count
        var index = 2
        while index < count {
            let left = count - index - 1
            if left >= 2, arguments.argument(index, in: frame, equals: "limit") {
                index += 3
                continue
            }
            if left >= 1 {
                let option: SortOption? = arguments.argument(index, in: frame, equals: "by") ? .by
                    : arguments.argument(index, in: frame, equals: "get") ? .get
                    : arguments.argument(index, in: frame, equals: "store") ? .store : nil
                if let option {
                    body(option, index + 1)
                    index += 2
                    continue
                }
            }
            index += 1
        }
    }

    /// Whether a SORT `BY`/`GET` pattern forms keys: not `#` (GET), not without a `*`
    /// (BY nosort has none), as Redis decides it.
    static func formsKeys(_ pattern: UnsafeRawBufferPointer, isBy: Bool) -> Bool {
        guard pattern.contains(UInt8(ascii: "*")) else { return false }
        return isBy || !(pattern.count == 1 && pattern[0] == UInt8(ascii: "#"))
    }

    /// SORT's first `BY` or `GET` pattern that forms keys (for a user without access to every
    /// key: Redis refuses such patterns then), as the option's name; nil when none does.
    public static func sortPatternFormingKeys(_ arguments: RespArguments, in frame: UnsafeRawBufferPointer) -> SortOption? {
        var found: SortOption?
        sortOptions(arguments, in: frame) { option, at in
            guard found == nil, option != .store, arguments.withArgument(at, in: frame, { formsKeys($0, isBy: option == .by) }) else { return }
            found = option
        }
        return found
    }

    /// SORT's `BY` and `GET` patterns name keys of their own (the pattern with its first `*`
    /// replaced by each element), which Tern cannot follow to other servers. The first pattern
    /// that may form a key placed off `server` (by `placement`), or nil when all stay on it: a
    /// pattern stays when it forms no key, or when a hash tag closes before its `*` (so every
    /// key it forms has that tag) and places it on `server`, as Redis Cluster's
    /// `patternHashSlot` decides.
    public static func sortPatternOffServer(_ arguments: RespArguments, in frame: UnsafeRawBufferPointer, placement: Placement,
                                            server: Int) -> SortOption? {
        let tag = placement.distribution == .slots ? placement.hashTag ?? .braces : placement.hashTag
        var found: SortOption?
        sortOptions(arguments, in: frame) { option, at in
            guard found == nil, option != .store else { return }
            let stays = arguments.withArgument(at, in: frame) { pattern -> Bool in
                guard formsKeys(pattern, isBy: option == .by), let star = pattern.firstIndex(of: UInt8(ascii: "*")) else { return true }
                // The key part: up to a `->` (a hash field) after the `*`.
                var end = pattern.count
                var index = star + 1
                while index + 1 < pattern.count {
                    if pattern[index] == UInt8(ascii: "-"), pattern[index + 1] == UInt8(ascii: ">") { end = index; break }
                    index += 1
                }
                let key = UnsafeRawBufferPointer(rebasing: pattern[0..<end])
                let tagged = hashTagged(key, tag: tag)
                guard tagged.count < key.count, let base = key.baseAddress, let tagBase = tagged.baseAddress else { return false }
                // The tag's closing byte is at `tagStart + tagged.count`: the `*` must follow it.
                let tagStart = base.distance(to: tagBase)
                guard star > tagStart + tagged.count else { return false }
                return placement.server(forKey: key) == server
            }
            if !stays { found = option }
        }
        return found
    }

    /// COMMAND GETKEYS: the keys of the command that starts at argument 2, as Redis answers
    /// it (an error's text otherwise, with its line end).
    public static func getKeys(_ arguments: RespArguments, in frame: UnsafeRawBufferPointer) -> Result<[Int], GetKeysError> {
        guard arguments.count > 2, let command = arguments.withArgument(2, in: frame, { RedisCommandTable.lookup($0) }),
              command.routing != .unsupported else { return .failure(.invalidCommand) }
        // PUBLISH and SPUBLISH are placed by their channel, which Redis does not count as a key.
        if command.keys == .none && !command.storeKeywords || command.routesByChannel { return .failure(.noKeys) }
        guard command.acceptsArgumentCount(arguments.count - 2) else { return .failure(.invalidArgumentCount) }
        let inner = arguments.dropping(first: 2)
        var keys: [Int] = []
        if command.isNamed("georadius") || command.isNamed("georadiusbymember") {
            // Redis answers by the key specs: the key, then the argument after the first STORE
            // and after the first STOREDIST, both (routing takes the one that has effect).
            keys.append(3)
            for keyword: StaticString in ["store", "storedist"] {
                var index = command.isNamed("georadius") ? 6 : 5
                while index + 1 < inner.count, !inner.argument(index, in: frame, equals: keyword) { index += 1 }
                if index + 1 < inner.count { keys.append(index + 3) }
            }
            return .success(keys)
        }
        guard forEachKey(command, inner, in: frame, { keys.append($0 + 2) }) else { return .failure(.invalidArguments) }
        // EVAL and FCALL with no keys: an empty list (Redis flags them no-mandatory-keys).
        if keys.isEmpty, command.name.hasPrefix("eval") || command.name.hasPrefix("fcall") { return .success([]) }
        return keys.isEmpty ? .failure(.noKeys) : .success(keys)
    }

    public enum GetKeysError: Error {
        case invalidCommand, invalidArgumentCount, invalidArguments, noKeys

        public var reply: StaticString {
            switch self {
            case .invalidCommand: "-ERR Invalid command specified\r\n"
            case .invalidArgumentCount: "-ERR Invalid number of arguments specified for command\r\n"
            case .invalidArguments: "-ERR Invalid arguments specified for command\r\n"
            case .noKeys: "-ERR The command has no key arguments\r\n"
            }
        }
    }
}
