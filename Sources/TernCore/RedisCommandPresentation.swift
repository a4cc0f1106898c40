// What COMMAND tells clients about each command, as Redis 7.0 tells it.

/// COMMAND's flags for each command Tern serves (`write`, `readonly`, `denyoom`, `fast`,
/// `pubsub`, `movablekeys`, …) and, for a container command (CLIENT, OBJECT, XINFO, …), the
/// ACL categories Redis gives the container itself (words starting with `@`): recorded from
/// redis-server 7.0.15's `COMMAND` reply. Used for COMMAND's replies only; routing, key
/// positions and ACLs come from `RedisCommandTable` and `RedisCategories`. Cluster clients read
/// these (redis-py's RedisCluster asks COMMAND GETKEYS for `movablekeys` commands and places
/// `pubsub` ones by channel; go-redis sends `readonly` ones to replicas when told to), and
/// Tern's own derivation (one of write/readonly for every command) differed from Redis's for
/// 155 of its 214 commands.
public enum RedisCommandPresentation {
    static let table: String = """
    acl @slow|append write denyoom fast|asking fast
    auth noscript loading stale fast no_auth allow_busy|bitcount readonly|bitfield write denyoom
    bitfield_ro readonly fast|bitop write denyoom|bitpos readonly
    blmove write denyoom noscript blocking|blmpop write blocking movablekeys
    blpop write noscript blocking|brpop write noscript blocking
    brpoplpush write denyoom noscript blocking|bzmpop write blocking movablekeys
    bzpopmax write noscript blocking fast|bzpopmin write noscript blocking fast|client @slow
    cluster @slow|command loading stale @connection @slow|copy write denyoom|dbsize readonly fast
    decr write denyoom fast|decrby write denyoom fast|del write
    discard noscript loading stale fast allow_busy|dump readonly|echo loading stale fast
    eval noscript stale skip_monitor no_mandatory_keys movablekeys
    eval_ro readonly noscript stale skip_monitor no_mandatory_keys movablekeys
    evalsha noscript stale skip_monitor no_mandatory_keys movablekeys
    evalsha_ro readonly noscript stale skip_monitor no_mandatory_keys movablekeys
    exec noscript loading stale skip_slowlog|exists readonly fast|expire write fast
    expireat write fast|expiretime readonly fast
    fcall noscript stale skip_monitor no_mandatory_keys movablekeys
    fcall_ro readonly noscript stale skip_monitor no_mandatory_keys movablekeys|flushall write
    flushdb write|function @slow|geoadd write denyoom|geodist readonly|geohash readonly
    geopos readonly|georadius write denyoom movablekeys|georadius_ro readonly
    georadiusbymember write denyoom movablekeys|georadiusbymember_ro readonly|geosearch readonly
    geosearchstore write denyoom|get readonly fast|getbit readonly fast|getdel write fast
    getex write fast|getrange readonly|getset write denyoom fast|hdel write fast
    hello noscript loading stale fast no_auth allow_busy|hexists readonly fast|hget readonly fast
    hgetall readonly|hincrby write denyoom fast|hincrbyfloat write denyoom fast|hkeys readonly
    hlen readonly fast|hmget readonly fast|hmset write denyoom fast|hrandfield readonly
    hscan readonly|hset write denyoom fast|hsetnx write denyoom fast|hstrlen readonly fast
    hvals readonly|incr write denyoom fast|incrby write denyoom fast|incrbyfloat write denyoom fast
    info loading stale|keys readonly|lcs readonly|lindex readonly|linsert write denyoom
    llen readonly fast|lmove write denyoom|lmpop write movablekeys|lpop write fast|lpos readonly
    lpush write denyoom fast|lpushx write denyoom fast|lrange readonly|lrem write|lset write denyoom
    ltrim write|memory @slow|mget readonly fast|mset write denyoom|msetnx write denyoom
    multi noscript loading stale fast allow_busy|object @slow|persist write fast|pexpire write fast
    pexpireat write fast|pexpiretime readonly fast|pfadd write denyoom fast|pfcount readonly
    pfmerge write denyoom|ping fast|psetex write denyoom|psubscribe pubsub noscript loading stale
    pttl readonly fast|publish pubsub loading stale fast|pubsub @slow
    punsubscribe pubsub noscript loading stale|quit noscript loading stale fast no_auth allow_busy
    readonly loading stale fast|readwrite loading stale fast|rename write|renamenx write fast
    reset noscript loading stale fast no_auth allow_busy|restore write denyoom|role noscript loading stale fast|rpop write fast
    rpoplpush write denyoom|rpush write denyoom fast|rpushx write denyoom fast
    sadd write denyoom fast|scan readonly|scard readonly fast|script @slow|sdiff readonly
    sdiffstore write denyoom|select loading stale fast|set write denyoom|setbit write denyoom
    setex write denyoom|setnx write denyoom fast|setrange write denyoom|sinter readonly
    sintercard readonly movablekeys|sinterstore write denyoom|sismember readonly fast|slowlog @slow
    smembers readonly|smismember readonly fast|smove write fast|sort write denyoom movablekeys
    sort_ro readonly movablekeys|spop write fast|spublish pubsub loading stale fast
    srandmember readonly|srem write fast|sscan readonly|ssubscribe pubsub noscript loading stale
    strlen readonly fast|subscribe pubsub noscript loading stale|substr readonly|sunion readonly
    sunionstore write denyoom|sunsubscribe pubsub noscript loading stale|time loading stale fast
    touch readonly fast|ttl readonly fast|type readonly fast|unlink write fast
    unsubscribe pubsub noscript loading stale|unwatch noscript loading stale fast allow_busy
    watch noscript loading stale fast allow_busy|xack write fast|xadd write denyoom fast
    xautoclaim write fast|xclaim write fast|xdel write fast|xgroup @slow|xinfo @slow
    xlen readonly fast|xpending readonly|xrange readonly|xread readonly blocking movablekeys
    xreadgroup write blocking movablekeys|xrevrange readonly|xsetid write denyoom fast|xtrim write
    zadd write denyoom fast|zcard readonly fast|zcount readonly fast|zdiff readonly movablekeys
    zdiffstore write denyoom movablekeys|zincrby write denyoom fast|zinter readonly movablekeys
    zintercard readonly movablekeys|zinterstore write denyoom movablekeys|zlexcount readonly fast
    zmpop write movablekeys|zmscore readonly fast|zpopmax write fast|zpopmin write fast
    zrandmember readonly|zrange readonly|zrangebylex readonly|zrangebyscore readonly
    zrangestore write denyoom|zrank readonly fast|zrem write fast|zremrangebylex write
    zremrangebyrank write|zremrangebyscore write|zrevrange readonly|zrevrangebylex readonly
    zrevrangebyscore readonly|zrevrank readonly fast|zscan readonly|zscore readonly fast
    zunion readonly movablekeys|zunionstore write denyoom movablekeys
    """

    /// Flags and, for containers, categories, by lower-case command name.
    public static let byCommand: [String: (flags: [String], categories: [String]?)] = {
        var result: [String: (flags: [String], categories: [String]?)] = [:]
        for entry in table.split(whereSeparator: { $0 == "|" || $0 == "\n" }) {
            let words = entry.split(separator: " ").map(String.init)
            guard let name = words.first else { continue }
            let flags = words.dropFirst().filter { !$0.hasPrefix("@") }
            let categories = words.dropFirst().filter { $0.hasPrefix("@") }
            result[name] = (Array(flags), categories.isEmpty ? nil : Array(categories))
        }
        return result
    }()
}

/// The subcommands Redis (7.0, and 7.2's additions) knows for the container commands Tern
/// answers itself or refuses, and the errors Redis gives for what it does not know: a client
/// that probes for a feature matches on `unknown subcommand` (Tern answered `unsupported
/// command` for every subcommand it does not serve; Redis commands sweep 31).
public enum RedisErrorText {
    static let subcommands: [String: Set<String>] = [
        "script": ["debug", "exists", "flush", "help", "kill", "load"],
        "function": ["delete", "dump", "flush", "help", "kill", "list", "load", "restore", "stats"],
        "acl": ["cat", "deluser", "dryrun", "genpass", "getuser", "help", "list", "load", "log", "save", "setuser", "users", "whoami"],
        "client": ["caching", "getname", "getredir", "help", "id", "info", "kill", "list", "no-evict", "no-touch", "pause", "reply",
                   "setinfo", "setname", "tracking", "trackinginfo", "unblock", "unpause"],
        "command": ["count", "docs", "getkeys", "getkeysandflags", "help", "info", "list"],
        "pubsub": ["channels", "help", "numpat", "numsub", "shardchannels", "shardnumsub"],
        "cluster": ["addslots", "addslotsrange", "bumpepoch", "count-failure-reports", "countkeysinslot", "delslots", "delslotsrange",
                    "failover", "flushslots", "forget", "getkeysinslot", "help", "info", "keyslot", "links", "meet", "myid", "myshardid",
                    "nodes", "replicas", "replicate", "reset", "saveconfig", "set-config-epoch", "setslot", "shards", "slaves", "slots"],
    ]

    /// Redis 7.0's container commands: errors name their subcommand too (`client|setname`).
    static let containers: Set<String> = ["acl", "client", "cluster", "command", "config", "function", "latency", "memory", "module",
                                          "object", "pubsub", "script", "slowlog", "xgroup", "xinfo"]

    /// The name Redis's errors give a command (`cmd->fullname`): `container|subcommand`
    /// (lowercase, at most 128 bytes, CR and LF as spaces: the client's bytes never end the
    /// error line) for a container's subcommand, else `name`.
    public static func fullName(_ name: String, _ arguments: RespArguments, in frame: UnsafeRawBufferPointer) -> String {
        guard containers.contains(name), arguments.count > 1 else { return name }
        return arguments.withArgument(1, in: frame) { name + "|" + String(decoding: lineSafe($0, limit: 128).map { asciiLower($0) }, as: UTF8.self) }
    }

    /// Redis's error for a subcommand of `name` it does not know (`unknown subcommand …`), for
    /// the containers whose subcommands are listed here; nil otherwise.
    public static func unknownSubcommandError(_ name: String, _ arguments: RespArguments, in frame: UnsafeRawBufferPointer) -> [UInt8]? {
        guard subcommands[name] != nil, arguments.count > 1 else { return nil }
        return arguments.withArgument(1, in: frame) { isKnownSubcommand(name, $0) ? nil : unknownSubcommand(name, $0) }
    }

    /// Whether Redis knows `subcommand` of `container` (a lowercase name in `subcommands`).
    public static func isKnownSubcommand(_ container: String, _ subcommand: UnsafeRawBufferPointer) -> Bool {
        guard let known = subcommands[container], subcommand.count <= 32 else { return false }
        return known.contains(String(decoding: subcommand.map { asciiLower($0) }, as: UTF8.self))
    }

    /// Redis's `-ERR unknown subcommand '<sub>'. Try <CONTAINER> HELP.` (the subcommand as
    /// sent, at most 128 bytes, CR and LF as spaces).
    public static func unknownSubcommand(_ container: String, _ subcommand: UnsafeRawBufferPointer) -> [UInt8] {
        var line = Array("-ERR unknown subcommand '".utf8)
        line += lineSafe(subcommand, limit: 128)
        line += Array("'. Try \(container.uppercased()) HELP.\r\n".utf8)
        return line
    }

    /// Redis's unknown-command error: the name (at most 128 bytes), then arguments in quotes
    /// while fewer than 128 bytes of them are listed, each cut to what is left of the 128; CR
    /// and LF as spaces, other bytes as sent.
    public static func unknownCommand(_ arguments: RespArguments, in frame: UnsafeRawBufferPointer) -> [UInt8] {
        var line = Array("-ERR unknown command '".utf8)
        arguments.withArgument(0, in: frame) { line += lineSafe($0, limit: 128) }
        line += Array("', with args beginning with: ".utf8)
        var listed = 0
        var index = 1
        while index < arguments.count, listed < 128 {
            let part = arguments.withArgument(index, in: frame) { lineSafe($0, limit: 128 - listed) }
            line.append(UInt8(ascii: "'"))
            line += part
            line += Array("' ".utf8)
            listed += part.count + 3
            index += 1
        }
        line += Array("\r\n".utf8)
        return line
    }

    /// (Redis prints arguments with `%s`: a NUL byte ends one.)
    static func lineSafe(_ bytes: UnsafeRawBufferPointer, limit: Int) -> [UInt8] {
        bytes.prefix(max(0, limit)).prefix { $0 != 0 }.map { $0 == 0x0d || $0 == 0x0a ? 0x20 : $0 }
    }
}
