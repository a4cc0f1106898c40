// Users and command rules for Redis pools (Tern key `users:`), and the glob matching of their
// key patterns. Compiled once per config into plain data; the per-request check is one bit test
// for the command and, only for users with key patterns, one glob match per key.

#if canImport(Glibc)
import Glibc
#endif

/// Redis's ACL categories, one bit each.
public struct RedisCategories: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let keyspace = Self(rawValue: 1 << 0)
    public static let read = Self(rawValue: 1 << 1)
    public static let write = Self(rawValue: 1 << 2)
    public static let set = Self(rawValue: 1 << 3)
    public static let sortedset = Self(rawValue: 1 << 4)
    public static let list = Self(rawValue: 1 << 5)
    public static let hash = Self(rawValue: 1 << 6)
    public static let string = Self(rawValue: 1 << 7)
    public static let bitmap = Self(rawValue: 1 << 8)
    public static let hyperloglog = Self(rawValue: 1 << 9)
    public static let geo = Self(rawValue: 1 << 10)
    public static let stream = Self(rawValue: 1 << 11)
    public static let pubsub = Self(rawValue: 1 << 12)
    public static let admin = Self(rawValue: 1 << 13)
    public static let fast = Self(rawValue: 1 << 14)
    public static let slow = Self(rawValue: 1 << 15)
    public static let blocking = Self(rawValue: 1 << 16)
    public static let dangerous = Self(rawValue: 1 << 17)
    public static let connection = Self(rawValue: 1 << 18)
    public static let transaction = Self(rawValue: 1 << 19)
    public static let scripting = Self(rawValue: 1 << 20)

    /// Names as `ACL CAT` lists them (without the `@`).
    public static let names: [(String, RedisCategories)] = [
        ("keyspace", .keyspace), ("read", .read), ("write", .write), ("set", .set), ("sortedset", .sortedset),
        ("list", .list), ("hash", .hash), ("string", .string), ("bitmap", .bitmap), ("hyperloglog", .hyperloglog),
        ("geo", .geo), ("stream", .stream), ("pubsub", .pubsub), ("admin", .admin), ("fast", .fast), ("slow", .slow),
        ("blocking", .blocking), ("dangerous", .dangerous), ("connection", .connection), ("transaction", .transaction),
        ("scripting", .scripting),
    ]

    public static func named(_ name: String) -> RedisCategories? {
        if name == "all" { return RedisCategories(rawValue: UInt32.max) }
        return names.first { $0.0 == name }?.1
    }

    /// The categories of each command in Tern's table, from Redis 7.0's `src/commands/*.json`:
    /// the explicit `acl_categories` plus the ones Redis derives from the command flags
    /// (`setImplicitACLCategories`: WRITE → @write, READONLY → @read unless @scripting,
    /// ADMIN → @admin @dangerous, PUBSUB → @pubsub, FAST → @fast, BLOCKING → @blocking, not
    /// FAST → @slow). A container command (CLIENT, CONFIG, OBJECT, XINFO, …) is one entry here;
    /// it gets the categories of the subcommands Tern serves or Redis's for the container.
    static let table: String = """
    append write string fast|decr write string fast|decrby write string fast|get read string fast
    getdel write string fast|getex write string fast|getrange read string slow|getset write string fast
    incr write string fast|incrby write string fast|incrbyfloat write string fast|lcs read string slow
    mget read string fast|mset write string slow|msetnx write string slow|psetex write string slow
    set write string slow|setex write string slow|setnx write string fast|setrange write string slow
    strlen read string fast|substr read string slow
    bitcount read bitmap slow|bitfield write bitmap slow|bitfield_ro read bitmap fast|bitop write bitmap slow
    bitpos read bitmap slow|getbit read bitmap fast|setbit write bitmap slow
    hdel write hash fast|hexists read hash fast|hget read hash fast|hgetall read hash slow|hincrby write hash fast
    hincrbyfloat write hash fast|hkeys read hash slow|hlen read hash fast|hmget read hash fast|hmset write hash fast
    hrandfield read hash slow|hscan read hash slow|hset write hash fast|hsetnx write hash fast|hstrlen read hash fast
    hvals read hash slow
    lindex read list slow|linsert write list slow|llen read list fast|lmove write list slow|lmpop write list slow
    lpop write list fast|lpos read list slow|lpush write list fast|lpushx write list fast|lrange read list slow
    lrem write list slow|lset write list slow|ltrim write list slow|rpop write list fast|rpoplpush write list slow
    rpush write list fast|rpushx write list fast|blmove write list slow blocking|blmpop write list slow blocking
    blpop write list slow blocking|brpop write list slow blocking|brpoplpush write list slow blocking
    sadd write set fast|scard read set fast|sdiff read set slow|sdiffstore write set slow|sinter read set slow
    sintercard read set slow|sinterstore write set slow|sismember read set fast|smembers read set slow
    smismember read set fast|smove write set fast|spop write set fast|srandmember read set slow|srem write set fast
    sscan read set slow|sunion read set slow|sunionstore write set slow
    zadd write sortedset fast|zcard read sortedset fast|zcount read sortedset fast|zdiff read sortedset slow
    zdiffstore write sortedset slow|zincrby write sortedset fast|zinter read sortedset slow
    zintercard read sortedset slow|zinterstore write sortedset slow|zlexcount read sortedset fast
    zmpop write sortedset slow|zmscore read sortedset fast|zpopmax write sortedset fast|zpopmin write sortedset fast
    zrandmember read sortedset slow|zrange read sortedset slow|zrangebylex read sortedset slow
    zrangebyscore read sortedset slow|zrangestore write sortedset slow|zrank read sortedset fast
    zrem write sortedset fast|zremrangebylex write sortedset slow|zremrangebyrank write sortedset slow
    zremrangebyscore write sortedset slow|zrevrange read sortedset slow|zrevrangebylex read sortedset slow
    zrevrangebyscore read sortedset slow|zrevrank read sortedset fast|zscan read sortedset slow
    zscore read sortedset fast|zunion read sortedset slow|zunionstore write sortedset slow
    bzmpop write sortedset slow blocking|bzpopmax write sortedset fast blocking|bzpopmin write sortedset fast blocking
    pfadd write hyperloglog fast|pfcount read hyperloglog slow|pfmerge write hyperloglog slow
    pfdebug write hyperloglog admin slow dangerous|pfselftest hyperloglog admin slow dangerous
    geoadd write geo slow|geodist read geo slow|geohash read geo slow|geopos read geo slow|georadius write geo slow
    georadiusbymember write geo slow|georadius_ro read geo slow|georadiusbymember_ro read geo slow
    geosearch read geo slow|geosearchstore write geo slow
    xack write stream fast|xadd write stream fast|xautoclaim write stream fast|xclaim write stream fast
    xdel write stream fast|xgroup write stream slow|xinfo read stream slow|xlen read stream fast
    xpending read stream slow|xrange read stream slow|xread read stream slow blocking
    xreadgroup write stream slow blocking|xrevrange read stream slow|xsetid write stream fast|xtrim write stream slow
    copy keyspace write slow|del keyspace write slow|dump keyspace read slow|exists keyspace read fast
    expire keyspace write fast|expireat keyspace write fast|expiretime keyspace read fast|object keyspace read slow
    persist keyspace write fast|pexpire keyspace write fast|pexpireat keyspace write fast
    pexpiretime keyspace read fast|pttl keyspace read fast|rename keyspace write slow|renamenx keyspace write fast
    restore keyspace write slow dangerous|sort write set sortedset list slow dangerous
    sort_ro read set sortedset list slow dangerous|touch keyspace read fast|ttl keyspace read fast
    type keyspace read fast|unlink keyspace write fast|memory read slow
    keys keyspace read slow dangerous|scan keyspace read slow|randomkey keyspace read slow
    migrate keyspace write slow dangerous|move keyspace write fast|wait slow connection
    swapdb keyspace write fast dangerous
    eval slow scripting|evalsha slow scripting|eval_ro slow scripting|evalsha_ro slow scripting
    fcall slow scripting|fcall_ro slow scripting|script slow scripting|function slow scripting
    ping fast connection|echo fast connection|quit fast connection|select fast connection|auth fast connection
    hello fast connection|client slow connection|command slow connection|info slow dangerous
    dbsize keyspace read fast|flushdb keyspace write slow dangerous|flushall keyspace write slow dangerous
    multi fast transaction|exec slow transaction|discard fast transaction|watch fast transaction
    unwatch fast transaction|reset fast connection
    subscribe pubsub slow|psubscribe pubsub slow|unsubscribe pubsub slow|punsubscribe pubsub slow
    ssubscribe pubsub slow|sunsubscribe pubsub slow|publish pubsub fast|spublish pubsub fast|pubsub pubsub slow
    monitor admin slow dangerous|cluster slow|config admin slow dangerous|debug admin slow dangerous
    slowlog admin slow dangerous|latency admin slow dangerous|acl slow|save admin slow dangerous
    bgsave admin slow dangerous|bgrewriteaof admin slow dangerous|lastsave admin fast dangerous
    shutdown admin slow dangerous|slaveof admin slow dangerous|replicaof admin slow dangerous
    sync admin slow dangerous|psync admin slow dangerous|role admin fast dangerous|readonly fast connection
    readwrite fast connection|asking fast connection|failover admin slow dangerous|module admin slow dangerous
    lolwut read fast|time fast
    """

    /// `table` parsed: command name → categories.
    static let byCommand: [String: RedisCategories] = {
        var result: [String: RedisCategories] = [:]
        for entry in table.split(whereSeparator: { $0 == "|" || $0 == "\n" }) {
            let words = entry.split(separator: " ")
            guard let name = words.first else { continue }
            var categories = RedisCategories()
            for word in words.dropFirst() {
                guard let category = named(String(word)) else { preconditionFailure("unknown category \(word) for \(name)") }
                categories.insert(category)
            }
            result[String(name)] = categories
        }
        return result
    }()
}

/// Redis's `stringmatchlen` on bytes: `*`, `?`, `[...]` (with `^` negation and `a-z` ranges),
/// and `\` escaping the next byte. Case-sensitive, as ACL key patterns are.
public enum RedisGlob {
    public static func matches(_ pattern: UnsafeRawBufferPointer, _ string: UnsafeRawBufferPointer) -> Bool {
        var skipLongerMatches = false
        return match(pattern, 0, string, 0, &skipLongerMatches, nesting: 0)
    }

    public static func matches(_ pattern: [UInt8], _ string: [UInt8]) -> Bool {
        pattern.withUnsafeBytes { p in string.withUnsafeBytes { s in matches(p, s) } }
    }

    private static func match(_ pattern: UnsafeRawBufferPointer, _ patternStart: Int, _ string: UnsafeRawBufferPointer, _ stringStart: Int,
                              _ skipLongerMatches: inout Bool, nesting: Int) -> Bool {
        // Redis caps recursion (1000) against patterns made of many stars.
        if nesting > 1000 { return false }
        var p = patternStart, s = stringStart
        let plen = pattern.count, slen = string.count
        while p < plen, s < slen {
            switch pattern[p] {
            case UInt8(ascii: "*"):
                while p + 1 < plen, pattern[p + 1] == UInt8(ascii: "*") { p += 1 }
                if p + 1 == plen { return true }
                while s < slen {
                    if match(pattern, p + 1, string, s, &skipLongerMatches, nesting: nesting + 1) { return true }
                    if skipLongerMatches { return false }
                    s += 1
                }
                skipLongerMatches = true
                return false
            case UInt8(ascii: "?"):
                s += 1
            case UInt8(ascii: "["):
                p += 1
                let not = p < plen && pattern[p] == UInt8(ascii: "^")
                if not { p += 1 }
                var matched = false
                while true {
                    if p < plen, pattern[p] == UInt8(ascii: "\\"), p + 1 < plen {
                        p += 1
                        if pattern[p] == string[s] { matched = true }
                    } else if p < plen, pattern[p] == UInt8(ascii: "]") {
                        break
                    } else if p >= plen {
                        p -= 1
                        break
                    } else if p + 2 < plen, pattern[p + 1] == UInt8(ascii: "-") {
                        var start = pattern[p], end = pattern[p + 2]
                        if start > end { swap(&start, &end) }
                        p += 2
                        if string[s] >= start, string[s] <= end { matched = true }
                    } else if pattern[p] == string[s] {
                        matched = true
                    }
                    p += 1
                }
                if not { matched = !matched }
                if !matched { return false }
                s += 1
            case UInt8(ascii: "\\") where p + 1 < plen:
                p += 1
                if pattern[p] != string[s] { return false }
                s += 1
            default:
                if pattern[p] != string[s] { return false }
                s += 1
            }
            p += 1
            if s == slen {
                while p < plen, pattern[p] == UInt8(ascii: "*") { p += 1 }
                break
            }
        }
        return p == plen && s == slen
    }
}

/// One user of a pool, compiled from `users:` (or from `redis_auth` for `default`). Immutable;
/// shared read-only by the workers.
public final class RedisUser: Sendable {
    public let name: String
    public let passwordSHA256: [UInt8]
    /// Allowed commands: bit `tableIndex` of `RedisCommandTable.commands`.
    public let allowed: [UInt64]
    /// Whether every key is allowed (`allkeys`, `~*`, or no `keys:` given); else `patterns`.
    public let allKeys: Bool
    public let patterns: [[UInt8]]
    /// memcached pools: whether storage, delete, arithmetic and flush commands are allowed
    /// (the user's rules allow @write).
    public let memcacheWrite: Bool
    /// memcached pools: whether retrievals are allowed (the user's rules allow GET).
    public let memcacheRead: Bool
    /// memcached pools: key prefixes (a `~prefix*` pattern is the prefix `prefix`).
    public let memcachePrefixes: [[UInt8]]

    public init(name: String, passwordSHA256: [UInt8], allowed: [UInt64], allKeys: Bool, patterns: [[UInt8]]) {
        self.name = name
        self.passwordSHA256 = passwordSHA256
        self.allowed = allowed
        self.allKeys = allKeys
        self.patterns = patterns
        let setIndex = RedisCommandTable.byName["set"].map { Int($0.tableIndex) } ?? 0
        self.memcacheWrite = allowed[setIndex >> 6] & (1 << UInt64(setIndex & 63)) != 0
        let getIndex = RedisCommandTable.byName["get"].map { Int($0.tableIndex) } ?? 0
        self.memcacheRead = allowed[getIndex >> 6] & (1 << UInt64(getIndex & 63)) != 0
        self.memcachePrefixes = patterns.map { $0.last == UInt8(ascii: "*") ? Array($0.dropLast()) : $0 }
    }

    @inline(__always)
    public func allows(_ command: RedisCommand) -> Bool {
        let index = Int(command.tableIndex)
        return allowed.withUnsafeBufferPointer { $0[index >> 6] } & (1 << UInt64(index & 63)) != 0
    }

    /// Whether `key` matches one of the patterns.
    public func allowsKey(_ key: UnsafeRawBufferPointer) -> Bool {
        if allKeys { return true }
        for pattern in patterns where pattern.withUnsafeBytes({ RedisGlob.matches($0, key) }) { return true }
        return false
    }

    /// memcached: whether `key` starts with one of the prefixes.
    public func allowsMemcacheKey(_ key: UnsafeRawBufferPointer) -> Bool {
        if allKeys { return true }
        for prefix in memcachePrefixes where prefix.count <= key.count {
            if prefix.isEmpty || prefix.withUnsafeBytes({ memcmp($0.baseAddress!, key.baseAddress!, prefix.count) }) == 0 { return true }
        }
        return false
    }

    /// Applies `rules` in order, as Redis's ACL SETUSER does: `+@cat`, `-@cat`, `+cmd`, `-cmd`,
    /// `allcommands` (= `+@all`), `nocommands` (= `-@all`). Returns the bitset, or the first
    /// rule it does not understand.
    public static func compileCommands(_ rules: [String]) -> Result<[UInt64], RuleError> {
        let commands = RedisCommandTable.commands
        var bits = [UInt64](repeating: 0, count: (commands.count + 63) / 64)
        func apply(_ index: Int, _ on: Bool) {
            if on { bits[index >> 6] |= 1 << UInt64(index & 63) } else { bits[index >> 6] &= ~(1 << UInt64(index & 63)) }
        }
        for rule in rules {
            let lowered = rule.lowercased()
            if lowered == "allcommands" || lowered == "nocommands" {
                for index in commands.indices { apply(index, lowered == "allcommands") }
                continue
            }
            guard let sign = lowered.first, sign == "+" || sign == "-" else { return .failure(RuleError(rule: rule, reason: "must start with + or -")) }
            let on = sign == "+"
            let body = String(lowered.dropFirst())
            if body.hasPrefix("@") {
                guard let category = RedisCategories.named(String(body.dropFirst())) else {
                    return .failure(RuleError(rule: rule, reason: "unknown category '\(body)'"))
                }
                for (index, command) in commands.enumerated() where !command.categories.isDisjoint(with: category) || category.rawValue == UInt32.max {
                    apply(index, on)
                }
            } else {
                // `+config|get` (a subcommand) is not supported: Tern's table has one entry per command.
                guard let command = RedisCommandTable.byName[body] else {
                    return .failure(RuleError(rule: rule, reason: "unknown command '\(body)'"))
                }
                apply(Int(command.tableIndex), on)
            }
        }
        return .success(bits)
    }

    public struct RuleError: Error, Sendable {
        public var rule: String
        public var reason: String
    }

    /// The pool's users: its `users:`, plus `default` from `redis_auth` (every command and key)
    /// unless `users:` defines `default`.
    public static func compile(_ pool: PoolConfig) -> [RedisUser] {
        var users: [RedisUser] = []
        for user in pool.users {
            let allowed = (try? compileCommands(user.commands).get()) ?? []
            let allKeys = user.keys.contains { $0 == "allkeys" || $0 == "~*" }
            let patterns = user.keys.filter { $0.hasPrefix("~") }.map { Array($0.utf8.dropFirst()) }
            users.append(RedisUser(name: user.name, passwordSHA256: user.passwordSHA256, allowed: allowed, allKeys: allKeys, patterns: patterns))
        }
        if pool.protocolKind == .redis, let password = pool.redisAuth, !users.contains(where: { $0.name == "default" }) {
            let all = (try? compileCommands(["allcommands"]).get()) ?? []
            users.append(RedisUser(name: "default", passwordSHA256: SHA256.digest(Array(password.utf8)), allowed: all, allKeys: true, patterns: []))
        }
        return users
    }
}
