import Foundation
import XCTest
import Synchronization
@testable import TernCore

/// Tern in front of real redis-server backends.
final class RedisProxyTests: XCTestCase {
    var group: ProcessGroup!
    override func setUp() { group = ProcessGroup() }
    override func tearDown() {
        if let run = testRun, run.failureCount > 0 { print(group.ternLog().suffix(4000)) }
        group.stopAll()
    }

    func startTern(_ backends: [RedisServer], extra: String = "", distribution: String = "ketama", hash: String = "md5", threads: Int = 2) throws -> (port: Int, pool: PoolConfig) {
        let port = ProcessGroup.freePort()
        var text = "cache:\n  listen: 127.0.0.1:\(port)\n  redis: true\n  hash: \(hash)\n  hash_tag: \"{}\"\n  distribution: \(distribution)\n  timeout: 2000\n"
        text += extra
        text += "  servers:\n" + backends.map { "   - \($0.address):1\n" }.joined()
        try group.tern(config: text, arguments: ["--threads", "\(threads)"], waitPort: port)
        return (port, try ConfigLoader.load(text: text, file: "test").pools[0])
    }

    func serverIndex(_ pool: PoolConfig, _ key: String) -> Int {
        Array(key.utf8).withUnsafeBytes { pool.placement().server(forKey: $0)! }
    }

    func keys(on server: Int, _ pool: PoolConfig, count: Int = 1) -> [String] {
        Array((0..<5000).lazy.map { "k\($0)" }.filter { self.serverIndex(pool, $0) == server }.prefix(count))
    }

    func testEveryDataStructureFamily() throws {
        let backends = try [group.redis(), group.redis(), group.redis()]
        let tern = try startTern(backends)
        let c = try TestClient(port: tern.port)
        // Strings and bitmaps
        XCTAssertEqual(try c.call("SET", "s", "hello"), "+OK\r\n")
        XCTAssertEqual(try c.call("get", "s"), "$5\r\nhello\r\n")
        XCTAssertEqual(try c.call("APPEND", "s", "!"), ":6\r\n")
        XCTAssertEqual(try c.call("GETRANGE", "s", "0", "1"), "$2\r\nhe\r\n")
        XCTAssertEqual(try c.call("INCRBY", "n", "5"), ":5\r\n")
        XCTAssertEqual(try c.call("INCRBYFLOAT", "n", "0.5"), "$3\r\n5.5\r\n")
        XCTAssertEqual(try c.call("SETBIT", "bits", "7", "1"), ":0\r\n")
        XCTAssertEqual(try c.call("BITCOUNT", "bits"), ":1\r\n")
        XCTAssertEqual(try c.call("GET", "missing"), "$-1\r\n")
        // Hashes
        XCTAssertEqual(try c.call("HSET", "h", "a", "1", "b", "2"), ":2\r\n")
        XCTAssertEqual(try c.call("HGET", "h", "b"), "$1\r\n2\r\n")
        XCTAssertEqual(try c.call("HMGET", "h", "a", "zz"), "*2\r\n$1\r\n1\r\n$-1\r\n")
        XCTAssertEqual(try c.call("HLEN", "h"), ":2\r\n")
        // Lists
        XCTAssertEqual(try c.call("RPUSH", "l", "x", "y", "z"), ":3\r\n")
        XCTAssertEqual(try c.call("LRANGE", "l", "0", "-1"), "*3\r\n$1\r\nx\r\n$1\r\ny\r\n$1\r\nz\r\n")
        XCTAssertEqual(try c.call("LPOP", "l"), "$1\r\nx\r\n")
        // Sets
        XCTAssertEqual(try c.call("SADD", "set", "m1", "m2"), ":2\r\n")
        XCTAssertEqual(try c.call("SISMEMBER", "set", "m2"), ":1\r\n")
        XCTAssertEqual(try c.call("SCARD", "set"), ":2\r\n")
        // Sorted sets
        XCTAssertEqual(try c.call("ZADD", "z", "1", "one", "2", "two"), ":2\r\n")
        XCTAssertEqual(try c.call("ZRANGE", "z", "0", "-1", "WITHSCORES"), "*4\r\n$3\r\none\r\n$1\r\n1\r\n$3\r\ntwo\r\n$1\r\n2\r\n")
        XCTAssertEqual(try c.call("ZSCORE", "z", "two"), "$1\r\n2\r\n")
        // HyperLogLog
        XCTAssertEqual(try c.call("PFADD", "hll", "a", "b", "c"), ":1\r\n")
        XCTAssertEqual(try c.call("PFCOUNT", "hll"), ":3\r\n")
        // Geo
        XCTAssertEqual(try c.call("GEOADD", "geo", "13.361389", "38.115556", "Palermo", "15.087269", "37.502669", "Catania"), ":2\r\n")
        XCTAssertTrue(try c.call("GEODIST", "geo", "Palermo", "Catania", "km").hasPrefix("$8\r\n166.2742"))
        // Streams (non-blocking)
        let id = try c.call("XADD", "stream", "*", "field", "value")
        XCTAssertTrue(id.hasPrefix("$"), id)
        XCTAssertEqual(try c.call("XLEN", "stream"), ":1\r\n")
        XCTAssertTrue(try c.call("XREAD", "COUNT", "1", "STREAMS", "stream", "0").contains("value"))
        // Blocking reads run on a dedicated connection (RedisSessionTests has the rest).
        XCTAssertEqual(try c.call("XREAD", "BLOCK", "100", "STREAMS", "stream", "$"), "*-1\r\n")
        // Keyspace
        XCTAssertEqual(try c.call("EXPIRE", "s", "100"), ":1\r\n")
        let ttl = try c.call("TTL", "s")
        XCTAssertTrue(ttl == ":100\r\n" || ttl == ":99\r\n", ttl)
        XCTAssertEqual(try c.call("PERSIST", "s"), ":1\r\n")
        XCTAssertEqual(try c.call("TYPE", "h"), "+hash\r\n")
        XCTAssertEqual(try c.call("OBJECT", "ENCODING", "n"), "$6\r\nembstr\r\n")
        let dump = try c.call("DUMP", "s")
        XCTAssertTrue(dump.hasPrefix("$"))
        // Names are case-insensitive; every reply came from the server owning the key.
        XCTAssertEqual(try backends[serverIndex(tern.pool, "h")].call("HGET", "h", "a"), "$1\r\n1\r\n")
        XCTAssertEqual(try backends[serverIndex(tern.pool, "z")].call("ZCARD", "z"), ":2\r\n")
    }

    func testTwoHundredKeyFanOut() throws {
        let backends = try [group.redis(), group.redis(), group.redis()]
        let tern = try startTern(backends)
        let c = try TestClient(port: tern.port)
        let keys = (0..<200).map { "fan:\($0)" }
        var mset = ["MSET"]
        for key in keys { mset += [key, "v-" + key] }
        XCTAssertEqual(try c.call(mset), "+OK\r\n")
        var counts = [0, 0, 0]
        for key in keys { counts[serverIndex(tern.pool, key)] += 1 }
        XCTAssertTrue(counts.allSatisfy { $0 > 20 }, "\(counts)")
        for (index, backend) in backends.enumerated() {
            XCTAssertEqual(try backend.call("DBSIZE"), ":\(counts[index])\r\n")
        }
        var expected = "*201\r\n"
        for key in keys { expected += "$\(2 + key.utf8.count)\r\nv-\(key)\r\n" }
        expected += "$-1\r\n"
        XCTAssertEqual(try c.call(["MGET"] + keys + ["absent"]), expected)
        XCTAssertEqual(try c.call(["EXISTS"] + keys + ["absent", keys[0]]), ":201\r\n")
        XCTAssertEqual(try c.call("DBSIZE"), ":200\r\n")
        XCTAssertEqual(try c.call(["TOUCH"] + keys.prefix(10)), ":10\r\n")
        XCTAssertEqual(try c.call(["DEL"] + keys.prefix(100) + ["absent"]), ":100\r\n")
        XCTAssertEqual(try c.call(["UNLINK"] + keys.suffix(100)), ":100\r\n")
        XCTAssertEqual(try c.call("DBSIZE"), ":0\r\n")
        // A part failing returns that backend's own error: a key holding a list makes MGET fine
        // (nil) but INCR-like errors come through verbatim.
        XCTAssertEqual(try c.call("RPUSH", "fan:0", "x"), ":1\r\n")
        XCTAssertEqual(try c.call("GET", "fan:0"), "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n")
        XCTAssertEqual(try c.call("MSET", "odd"), "-ERR wrong number of arguments for 'mset' command\r\n")
        XCTAssertEqual(try c.call("FLUSHDB"), "+OK\r\n")
        XCTAssertEqual(try c.call("DBSIZE"), ":0\r\n")
    }

    /// A split request's parts carry each key and value as the client sent it, whatever the
    /// length of its length (0 to 6 digits): the parts copy the client's bytes, headers
    /// included. Multibulk (one request, two pipelined, split reads) and inline alike.
    func testSplitRequestsCarryEveryLengthAsSent() throws {
        let backends = try [group.redis(), group.redis(), group.redis()]
        let tern = try startTern(backends)
        let c = try TestClient(port: tern.port)
        let lengths = [0, 1, 9, 10, 99, 100, 999, 1000, 9999, 10000, 100_000]
        var pairs: [(key: String, value: String)] = []
        for (index, length) in lengths.enumerated() {
            // Keys of 1 to 11 bytes, values with RESP framing inside them.
            let key = String(repeating: "k", count: index) + "\(index)"
            let pattern = "\r\n$3\r\nSET\r\n*"
            let value = String(String(repeating: pattern, count: length / pattern.utf8.count + 1).prefix(length))
            pairs.append((key, value))
        }
        var servers = Set<Int>()
        for pair in pairs { servers.insert(serverIndex(tern.pool, pair.key)) }
        // (Placement follows the servers' names, which hold their free ports: a short key
        // for each server the lengths' keys missed.)
        var extra = 0
        while servers.count < 3, extra < 1000 {
            let key = "x\(extra)"
            if servers.insert(serverIndex(tern.pool, key)).inserted { pairs.append((key, "v\(extra)")) }
            extra += 1
        }
        XCTAssertEqual(servers.count, 3, "the keys span every server")
        let mset = ["MSET"] + pairs.flatMap { [$0.key, $0.value] }
        XCTAssertEqual(try c.call(mset), "+OK\r\n")
        func expectStored(_ suffix: String) throws {
            for pair in pairs {
                let backend = backends[serverIndex(tern.pool, pair.key)]
                XCTAssertEqual(try backend.call("GET", pair.key), "$\(pair.value.utf8.count)\r\n\(pair.value)\r\n", "\(pair.key) \(suffix)")
            }
            var expected = "*\(pairs.count)\r\n"
            for pair in pairs { expected += "$\(pair.value.utf8.count)\r\n\(pair.value)\r\n" }
            XCTAssertEqual(try c.call(["MGET"] + pairs.map(\.key)), expected, suffix)
        }
        try expectStored("after one MSET")
        // Two pipelined, written a few bytes at a time: the second's values replace the first's.
        let first = TestClient.encode(["MSET"] + pairs.flatMap { [$0.key, "x"] })
        pairs = pairs.map { ($0.key, $0.value + "!") }
        let second = TestClient.encode(["MSET"] + pairs.flatMap { [$0.key, $0.value] })
        let both = first + second
        var offset = 0
        while offset < both.count {
            let end = min(both.count, offset + 7919)
            try c.send(Array(both[offset..<end]))
            offset = end
        }
        XCTAssertEqual(String(decoding: try c.receiveReplies(2), as: UTF8.self), "+OK\r\n+OK\r\n")
        try expectStored("after two pipelined MSETs")
        // Inline: the arguments are decoded copies, encoded for each part.
        let inlineKeys = pairs.prefix(6).map(\.key)
        try c.send("MSET " + inlineKeys.map { "\($0) \"in line\"" }.joined(separator: " ") + "\r\n")
        XCTAssertEqual(String(decoding: try c.receiveReplies(1), as: UTF8.self), "+OK\r\n")
        for key in inlineKeys {
            XCTAssertEqual(try backends[serverIndex(tern.pool, key)].call("GET", key), "$7\r\nin line\r\n", key)
        }
        try c.send("DEL " + pairs.map(\.key).joined(separator: " ") + " absent\r\n")
        XCTAssertEqual(String(decoding: try c.receiveReplies(1), as: UTF8.self), ":\(pairs.count)\r\n")
        XCTAssertEqual(try c.call("DBSIZE"), ":0\r\n")
    }

    func testFailedFanOutPartReturnsTheBackendsOwnError() throws {
        let backends = try [group.redis(), group.redis()]
        let tern = try startTern(backends)
        let c = try TestClient(port: tern.port)
        let a = keys(on: 0, tern.pool)[0]
        let b = keys(on: 1, tern.pool)[0]
        // The second server refuses writes: MSET's part there fails with Redis's own -OOM.
        XCTAssertEqual(try backends[1].call("CONFIG", "SET", "maxmemory", "1"), "+OK\r\n")
        let reply = try c.call("MSET", a, "1", b, "2")
        XCTAssertTrue(reply.hasPrefix("-OOM command not allowed"), reply)
        XCTAssertEqual(try backends[0].call("GET", a), "$1\r\n1\r\n")
        XCTAssertEqual(try c.call("MGET", a, b), "*2\r\n$1\r\n1\r\n$-1\r\n")
    }

    func testHashTagsAndCrossSlot() throws {
        let backends = try [group.redis(), group.redis()]
        let tern = try startTern(backends)
        let c = try TestClient(port: tern.port)
        let a = keys(on: 0, tern.pool)[0]
        let b = keys(on: 1, tern.pool)[0]
        let crossSlot = "-CROSSSLOT Keys in request don't hash to the same slot\r\n"
        XCTAssertEqual(try c.call("SADD", a, "x"), ":1\r\n")
        XCTAssertEqual(try c.call("SADD", b, "x"), ":1\r\n")
        XCTAssertEqual(try c.call("SINTER", a, b), crossSlot)
        XCTAssertEqual(try c.call("RENAME", a, b), crossSlot)
        XCTAssertEqual(try c.call("MSETNX", a, "1", b, "2"), crossSlot)
        XCTAssertEqual(try c.call("ZUNIONSTORE", a, "2", a, b), crossSlot)
        XCTAssertEqual(try c.call("EVAL", "return 1", "2", a, b), crossSlot)
        XCTAssertEqual(try c.call("RPOPLPUSH", a, b), crossSlot)
        // Hash tags put keys together: the commands run.
        XCTAssertEqual(try c.call("SADD", "{user}:a", "1", "2"), ":2\r\n")
        XCTAssertEqual(try c.call("SADD", "{user}:b", "2", "3"), ":2\r\n")
        XCTAssertEqual(try c.call("SINTER", "{user}:a", "{user}:b"), "*1\r\n$1\r\n2\r\n")
        XCTAssertEqual(try c.call("SINTERSTORE", "{user}:c", "{user}:a", "{user}:b"), ":1\r\n")
        XCTAssertEqual(try c.call("SMOVE", "{user}:a", "{user}:c", "1"), ":1\r\n")
        XCTAssertEqual(try c.call("ZADD", "{g}:1", "1", "m"), ":1\r\n")
        XCTAssertEqual(try c.call("ZUNIONSTORE", "{g}:out", "1", "{g}:1"), ":1\r\n")
        XCTAssertEqual(try c.call("RENAME", "{user}:c", "{user}:d"), "+OK\r\n")
        XCTAssertEqual(try c.call("LPUSH", "{q}:in", "job"), ":1\r\n")
        XCTAssertEqual(try c.call("LMOVE", "{q}:in", "{q}:out", "LEFT", "RIGHT"), "$3\r\njob\r\n")
        XCTAssertEqual(try c.call("MSETNX", "{m}:1", "a", "{m}:2", "b"), ":1\r\n")
        let server = serverIndex(tern.pool, "user")
        XCTAssertEqual(try backends[server].call("SCARD", "{user}:d"), ":2\r\n")
    }

    /// Commands that name keys beyond the first argument, or that cluster clients and
    /// applications send besides data commands. Before: `SORT x STORE out` and `GEORADIUS …
    /// STORE` wrote their result on x's server, where `out` is never read (placed by the first
    /// key only); `SORT x BY w_*` sorted by weights that live on other servers as if they were
    /// missing; COMMAND GETKEYS, FUNCTION and TIME were refused (so redis-py's RedisCluster
    /// failed on ZUNIONSTORE); INFO keyspace's avg_ttl ended with a stray ")".
    func testCommandsThatNameMoreKeysAndWhatClientsAsk() throws {
        let backends = try [group.redis(), group.redis()]
        let tern = try startTern(backends)
        let c = try TestClient(port: tern.port)
        let a = keys(on: 0, tern.pool, count: 3), b = keys(on: 1, tern.pool)[0]
        let crossSlot = "-CROSSSLOT Keys in request don't hash to the same slot\r\n"
        XCTAssertEqual(try c.call("RPUSH", a[0], "2", "1", "3"), ":3\r\n")
        XCTAssertEqual(try c.call("SORT", a[0], "STORE", b), crossSlot)
        XCTAssertEqual(try backends[0].call("EXISTS", b), ":0\r\n", "nothing written on the sorted key's server")
        XCTAssertEqual(try c.call("SORT", a[0], "LIMIT", "0", "2", "STORE", a[1]), ":2\r\n")
        XCTAssertEqual(try c.call("LRANGE", a[1], "0", "-1"), "*2\r\n$1\r\n1\r\n$1\r\n2\r\n")
        XCTAssertEqual(try c.call("SORT_RO", a[0], "DESC"), "*3\r\n$1\r\n3\r\n$1\r\n2\r\n$1\r\n1\r\n")
        // A pattern may name keys anywhere: refused unless its hash tag keeps them together.
        XCTAssertTrue(try c.call("SORT", a[0], "BY", "w_*").hasPrefix("-ERR BY option of SORT denied"))
        XCTAssertTrue(try c.call("SORT", a[0], "GET", "#", "GET", "v_*").hasPrefix("-ERR GET option of SORT denied"))
        XCTAssertEqual(try c.call("SORT", a[0], "BY", "nosort", "GET", "#"), "*3\r\n$1\r\n2\r\n$1\r\n1\r\n$1\r\n3\r\n")
        XCTAssertEqual(try c.call("RPUSH", "{s}:list", "1", "2", "3"), ":3\r\n")
        XCTAssertEqual(try c.call("MSET", "{s}:w_1", "3", "{s}:w_2", "2", "{s}:w_3", "1", "{s}:v_1", "one", "{s}:v_3", "three"), "+OK\r\n")
        XCTAssertEqual(try c.call("SORT", "{s}:list", "BY", "{s}:w_*", "GET", "{s}:v_*"), "*3\r\n$5\r\nthree\r\n$-1\r\n$3\r\none\r\n")
        XCTAssertTrue(try c.call("SORT", "{s}:list", "BY", "{*}:w").hasPrefix("-ERR BY option of SORT denied"), "a * inside the tag")
        XCTAssertTrue(try c.call("SORT", "{s}:list", "BY", "*{s}:w").hasPrefix("-ERR BY option of SORT denied"), "a * before the tag")
        // STORE's argument is not a keyword: the GET pattern after it is checked (where the key
        // "by" lands decides which refusal comes first; neither runs the command).
        XCTAssertEqual(try c.call("SORT", "{s}:list", "STORE", "by", "GET", "*"), serverIndex(tern.pool, "by") == serverIndex(tern.pool, "{s}:list")
                       ? "-ERR GET option of SORT denied: keys formed by the pattern may be on other servers than the sorted key\r\n" : crossSlot)
        XCTAssertEqual(try c.call("SORT", a[0], "STORE", b, "STORE", a[1]), ":3\r\n", "the last STORE counts, as in Redis")
        XCTAssertEqual(try c.call("MULTI"), "+OK\r\n")
        XCTAssertTrue(try c.call("SORT", a[0], "BY", "w_*").hasPrefix("-ERR BY option of SORT denied"), "in a transaction too")
        XCTAssertEqual(try c.call("EXEC"), "-EXECABORT Transaction discarded because of previous errors.\r\n")
        // GEORADIUS: the STORE key, found after the fixed arguments (a member named "store" is
        // not a keyword).
        XCTAssertEqual(try c.call("GEOADD", a[2], "13.361389", "38.115556", "store"), ":1\r\n")
        XCTAssertEqual(try c.call("GEORADIUS", a[2], "13", "38", "100", "km", "STORE", b), crossSlot)
        XCTAssertEqual(try c.call("GEORADIUSBYMEMBER", a[2], "store", "100", "km"), "*1\r\n$5\r\nstore\r\n")
        XCTAssertEqual(try c.call("GEORADIUS", "{s}:g", "13", "38", "100", "km", "STOREDIST", "{s}:near"), ":0\r\n")
        // COMMAND GETKEYS and the key positions COMMAND reports.
        XCTAssertEqual(try c.call("COMMAND", "GETKEYS", "ZUNIONSTORE", "{z}d", "2", "{z}a", "{z}b"), "*3\r\n$4\r\n{z}d\r\n$4\r\n{z}a\r\n$4\r\n{z}b\r\n")
        XCTAssertEqual(try c.call("COMMAND", "GETKEYS", "SORT", "x", "BY", "store", "STORE", "y"), "*2\r\n$1\r\nx\r\n$1\r\ny\r\n")
        XCTAssertEqual(try c.call("COMMAND", "GETKEYS", "SET", "k", "v"), "*1\r\n$1\r\nk\r\n")
        XCTAssertEqual(try c.call("COMMAND", "GETKEYS", "EVAL", "return 1", "0"), "*0\r\n")
        XCTAssertEqual(try c.call("COMMAND", "GETKEYS", "SORT_RO", "x", "STORE", "y"), "*1\r\n$1\r\nx\r\n")
        XCTAssertEqual(try c.request("COMMAND GETKEYS ZUNIONSTORE {z}d 2 {z}a {z}b\r\n", until: "{z}b\r\n"),
                       "*3\r\n$4\r\n{z}d\r\n$4\r\n{z}a\r\n$4\r\n{z}b\r\n", "inline")
        XCTAssertEqual(try c.call("COMMAND", "GETKEYS", "NOSUCH", "x"), "-ERR Invalid command specified\r\n")
        XCTAssertEqual(try c.call("COMMAND", "GETKEYS", "GET", "a", "b"), "-ERR Invalid number of arguments specified for command\r\n")
        // Compared with the server: arity (GETKEYS takes a command and at least one argument),
        // and GEORADIUS's two destinations, which Redis both names (routing takes the one that
        // has effect, the last).
        for command in [["GET"], ["PING"], [], ["PING", "x"], ["GET", "a", "b"],
                        ["GEORADIUS", "k", "0", "0", "1", "km", "STORE", "d1", "STOREDIST", "d2"],
                        ["GEORADIUS", "k", "0", "0", "1", "km", "STOREDIST", "d2", "STORE", "d1", "STORE", "d3"],
                        ["GEORADIUSBYMEMBER", "k", "m", "1", "km", "STOREDIST", "d2"], ["GEORADIUS", "k", "0", "0", "1", "km", "STORE"],
                        ["GEORADIUSBYMEMBER", "k", "store", "1", "km", "COUNT", "5"]] {
            XCTAssertEqual(try c.call(["COMMAND", "GETKEYS"] + command), try TestClient(port: backends[0].port).call(["COMMAND", "GETKEYS"] + command),
                           command.joined(separator: " "))
        }
        XCTAssertEqual(try c.call("COMMAND", "GETKEYS", "ZUNIONSTORE", "d", "5", "a"), "-ERR Invalid arguments specified for command\r\n")
        XCTAssertEqual(try backends[0].call("COMMAND", "GETKEYS", "ZUNIONSTORE", "{z}d", "2", "{z}a", "{z}b"), "*3\r\n$4\r\n{z}d\r\n$4\r\n{z}a\r\n$4\r\n{z}b\r\n", "as Redis answers")
        // Channels are not keys to Redis (Tern places PUBLISH by its channel): GETKEYS names
        // none, and COMMAND INFO gives every command's arity and key triple as the server does
        // (PUBLISH said 1,1,1 and SSUBSCRIBE 0,0,0), but ZRANK's and ZREVRANK's arity, which is
        // 7.2's (WITHSCORE) where this server is 7.0; and its flags and categories (every
        // command was write or readonly: MULTI and PUBLISH readonly, EVAL write, OBJECT
        // movablekeys).
        for command in [["PUBLISH", "ch", "m"], ["PUBLISH", "ch"], ["SPUBLISH", "ch", "m"], ["SSUBSCRIBE", "a", "b"], ["SUBSCRIBE", "a"]] {
            XCTAssertEqual(try c.call(["COMMAND", "GETKEYS"] + command), try TestClient(port: backends[0].port).call(["COMMAND", "GETKEYS"] + command), command[0])
        }
        try python("""
        import socket
        def command_table(port):
            s = socket.create_connection(("127.0.0.1", port)); f = s.makefile("rb")
            s.sendall(b"*1\\r\\n$7\\r\\nCOMMAND\\r\\n")
            def read():
                line = f.readline(); kind, rest = line[:1], line[1:-2]
                if kind == b"*": return [read() for _ in range(int(rest))]
                if kind == b"$": return f.read(int(rest) + 2)[:-2]
                if kind == b":": return int(rest)
                return rest
            table = read(); s.close()
            return {entry[0].decode(): (entry[1], entry[3], entry[4], entry[5], sorted(entry[2]), sorted(entry[6])) for entry in table}
        tern, server = command_table(\(tern.port)), command_table(\(backends[0].port))
        assert len(tern) > 200, len(tern)
        differ = {name: (server[name], tern[name]) for name in tern if name in server and server[name] != tern[name]}
        # (The table is Redis 7.0's: another server version has other flags and arities.)
        if redis.Redis(port=\(backends[0].port)).info("server")["redis_version"].startswith("7.0."):
            assert set(differ) == {"zrank", "zrevrank"}, differ
            assert all(server[name][1:] == tern[name][1:] for name in ("zrank", "zrevrank")), differ
        assert tern["publish"][:4] == (3, 0, 0, 0) and tern["ssubscribe"][:4] == (-2, 1, -1, 1), (tern["publish"], tern["ssubscribe"])
        assert tern["get"][4] == [b"fast", b"readonly"] and tern["multi"][4] == [b"allow_busy", b"fast", b"loading", b"noscript", b"stale"], tern["multi"]
        assert tern["client"][4:] == ([], [b"@slow"]), tern["client"]
        """)
        XCTAssertEqual(try c.call("CLIENT", "NO-EVICT", "on"), "-ERR unsupported command 'client no-evict'\r\n")
        // TIME from one server; FUNCTION LOAD on every server, so FCALL finds it wherever its
        // key lives.
        XCTAssertTrue(try c.call("TIME").hasPrefix("*2\r\n$10\r\n"))
        let library = "#!lua name=tern\nredis.register_function('getter', function(keys, args) return redis.call('get', keys[1]) end)"
        XCTAssertEqual(try c.call("FUNCTION", "LOAD", library), "$4\r\ntern\r\n")
        XCTAssertEqual(try c.call("SET", a[1] + "f", "on0"), "+OK\r\n")
        XCTAssertEqual(try c.call("SET", b + "f", "on1"), "+OK\r\n")
        XCTAssertEqual(try c.call("FCALL", "getter", "1", a[1] + "f"), "$3\r\non0\r\n")
        XCTAssertEqual(try c.call("FCALL", "getter", "1", b + "f"), "$3\r\non1\r\n")
        XCTAssertTrue(try c.call("FUNCTION", "LIST").contains("getter"))
        XCTAssertEqual(try c.call("FUNCTION", "DELETE", "tern"), "+OK\r\n")
        XCTAssertEqual(try backends[1].call("FUNCTION", "LIST"), "*0\r\n")
        XCTAssertEqual(try c.call("FUNCTION", "KILL"), "-NOTBUSY No scripts in execution right now.\r\n")
        try python("""
        from redis.cluster import RedisCluster
        r = redis.Redis(port=\(tern.port))
        r.set("ttl-key", "v", ex=1000)
        deadline = time.time() + 10
        # (Redis's avg_ttl is 0 until its expiry cycle has sampled the key; Tern polls once a second.)
        while not r.info("keyspace").get("db0", {}).get("avg_ttl") and time.time() < deadline: time.sleep(0.2)
        ttl = r.info("keyspace")["db0"]["avg_ttl"]
        assert isinstance(ttl, int) and 0 < ttl <= 1000000, ttl
        rc = RedisCluster(host="127.0.0.1", port=\(tern.port))
        rc.zadd("{z}a", {"m": 1}); rc.zadd("{z}b", {"m": 2, "n": 3})
        assert rc.zunionstore("{z}d", ["{z}a", "{z}b"]) == 2
        assert rc.zrange("{z}d", 0, -1, withscores=True) == [(b"m", 3.0), (b"n", 3.0)], rc.zrange("{z}d", 0, -1, withscores=True)
        rc.rpush("{z}l", 3, 1, 2)
        assert rc.sort("{z}l", store="{z}sorted") == 3
        assert rc.lrange("{z}sorted", 0, -1) == [b"1", b"2", b"3"]
        """)
    }

    /// SCAN and KEYS over a sharded pool (refused before): redis-py's `scan_iter` (with MATCH,
    /// COUNT and TYPE) visits every key exactly once, server after server, the cursor naming
    /// the server; KEYS gathers every server's keys. A cursor that names no server is refused
    /// as Redis refuses a bad one.
    /// XREAD's and XREADGROUP's streams are found after their options, as Redis finds them: a
    /// group named `streams` routed XREADGROUP by its consumer name (to the server without the
    /// stream: `-NOGROUP`, or a `-CROSSSLOT` that was not; Redis commands sweep 31, fails on
    /// b7ab9ae). A stream named `block` made XREAD take a dedicated connection as a blocking
    /// command (answered the same; `testStreamReadOptions` holds that case).
    func testStreamReadsFindTheirStreamsAfterTheOptions() throws {
        let backends = try [group.redis(), group.redis()]
        let tern = try startTern(backends)
        let c = try TestClient(port: tern.port)
        // A stream on the server the consumer name (and STREAMS) do not both land on.
        let consumer = "c0"
        let stream = (0..<5000).lazy.map { "orders\($0)" }.first { self.serverIndex(tern.pool, $0) != self.serverIndex(tern.pool, consumer) }!
        XCTAssertEqual(try c.call("XGROUP", "CREATE", stream, "streams", "0", "MKSTREAM"), "+OK\r\n")
        let id = try c.call("XADD", stream, "*", "f", "v")
        XCTAssertTrue(id.hasPrefix("$"), id)
        let entryID = String(id.split(separator: "\r\n")[1])
        let expected = "*1\r\n*2\r\n$\(stream.utf8.count)\r\n\(stream)\r\n*1\r\n*2\r\n$\(entryID.utf8.count)\r\n\(entryID)\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
        XCTAssertEqual(try c.call("XREADGROUP", "GROUP", "streams", consumer, "STREAMS", stream, ">"), expected)
        XCTAssertEqual(try c.call("XREAD", "COUNT", "5", "STREAMS", stream, "0"), expected)
        // A stream named `block`: a plain read, answered at once with the entry (as Redis does).
        let block = "block"
        XCTAssertTrue(try c.call("XADD", block, "*", "f", "v").hasPrefix("$"))
        XCTAssertTrue(try c.call("XREAD", "COUNT", "1", "STREAMS", block, "0").hasPrefix("*1\r\n*2\r\n$5\r\nblock\r\n*1\r\n"))
        XCTAssertEqual(try c.call("XREAD", "BLOCK", "50", "STREAMS", block, "$"), "*-1\r\n")
    }

    func testScanAndKeysVisitEveryServer() throws {
        let backends = try [group.redis(), group.redis(), group.redis()]
        let tern = try startTern(backends)
        let c = try TestClient(port: tern.port)
        XCTAssertEqual(try c.call("SCAN", "3"), "-ERR invalid cursor\r\n", "3 servers: two bits, position 3 is none")
        XCTAssertEqual(try c.call("SCAN", "x1"), "-ERR invalid cursor\r\n")
        XCTAssertEqual(try c.call("SCAN", "0", "COUNT", "0"), "-ERR syntax error\r\n", "the server's own error")
        try python("""
        r = redis.Redis(port=\(tern.port))
        names = ["user:%d" % n for n in range(600)] + ["other:%d" % n for n in range(300)]
        pipe = r.pipeline(transaction=False)
        for n in names: pipe.set(n, "v")
        for n in range(50): pipe.rpush("list:%d" % n, "x")
        pipe.execute()
        direct = [redis.Redis(port=p) for p in (\(backends.map { String($0.port) }.joined(separator: ", ")))]
        assert all(d.dbsize() > 100 for d in direct), [d.dbsize() for d in direct]
        seen = list(r.scan_iter(match="user:*", count=37))
        assert len(seen) == 600 and set(seen) == {n.encode() for n in names[:600]}, len(seen)
        assert len(list(r.scan_iter())) == 950
        assert sorted(r.scan_iter(_type="list")) == sorted(("list:%d" % n).encode() for n in range(50))
        assert sorted(r.keys("other:*")) == sorted(n.encode() for n in names[600:])
        assert len(r.keys()) == 950
        cursor, page = r.scan(0, count=5)
        assert cursor != 0 and len(page) > 0
        # Deleting by pattern, as applications do.
        for key in r.scan_iter(match="other:*", count=100): r.delete(key)
        assert r.keys("other:*") == [] and r.dbsize() == 650
        """)
    }

    func testScripts() throws {
        let backends = try [group.redis(), group.redis()]
        let tern = try startTern(backends)
        let c = try TestClient(port: tern.port)
        let script = "return redis.call('get', KEYS[1])"
        let sha = try c.call("SCRIPT", "LOAD", script)
        XCTAssertEqual(sha, "$40\r\n4e6d8fc8bb01276962cce5371fa795a7763657ae\r\n")
        // Loaded on every server, so EVALSHA works for keys anywhere.
        for server in 0..<2 {
            let key = keys(on: server, tern.pool)[0]
            XCTAssertEqual(try c.call("SET", key, "val\(server)"), "+OK\r\n")
            XCTAssertEqual(try c.call("EVALSHA", "4e6d8fc8bb01276962cce5371fa795a7763657ae", "1", key), "$4\r\nval\(server)\r\n")
            XCTAssertEqual(try c.call("EVAL", script, "1", key), "$4\r\nval\(server)\r\n")
            XCTAssertEqual(try backends[server].call("SCRIPT", "EXISTS", "4e6d8fc8bb01276962cce5371fa795a7763657ae"), "*1\r\n:1\r\n")
        }
        XCTAssertEqual(try c.call("EVAL", "return 7", "0"), ":7\r\n")
        XCTAssertEqual(try c.call("SCRIPT", "EXISTS", "4e6d8fc8bb01276962cce5371fa795a7763657ae"), "*1\r\n:1\r\n")
        XCTAssertTrue(try c.call("EVAL", "return 1", "5", "a").hasPrefix("-ERR Number of keys can't be greater than number of args"))
        XCTAssertEqual(try c.call("SCRIPT", "FLUSH"), "+OK\r\n")
        XCTAssertEqual(try backends[1].call("SCRIPT", "EXISTS", "4e6d8fc8bb01276962cce5371fa795a7763657ae"), "*1\r\n:0\r\n")
    }

    func testLocalCommandsAndErrors() throws {
        let backends = try [group.redis()]
        let tern = try startTern(backends)
        let c = try TestClient(port: tern.port)
        XCTAssertEqual(try c.call("PING"), "+PONG\r\n")
        XCTAssertEqual(try c.call("PING", "hi there"), "$8\r\nhi there\r\n")
        XCTAssertEqual(try c.call("ECHO", "x"), "$1\r\nx\r\n")
        XCTAssertEqual(try c.call("SELECT", "0"), "+OK\r\n")
        XCTAssertTrue(try c.call("SELECT", "3").hasPrefix("-ERR SELECT is not allowed"))
        // COPY into another database is refused as SELECT is (it wrote there; fails on e61c371).
        XCTAssertEqual(try c.call("SET", "copysrc", "v"), "+OK\r\n")
        XCTAssertEqual(try c.call("COPY", "copysrc", "copydst", "DB", "5"), "-ERR COPY to another database is not allowed: this pool serves database 0\r\n")
        XCTAssertEqual(try c.call("COPY", "copysrc", "copydst", "db", "0", "REPLACE"), ":1\r\n")
        XCTAssertEqual(try c.call("GET", "copydst"), "$1\r\nv\r\n")
        XCTAssertEqual(try c.call("HELLO", "3"), "-NOPROTO unsupported protocol version\r\n")
        XCTAssertTrue(try c.call("HELLO", "2").hasPrefix("*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n"))
        // HELLO's id is the client's own, as CLIENT ID answers it (it was an argument cursor).
        let id = try c.call("CLIENT", "ID")
        XCTAssertTrue(try c.call("HELLO", "2", "SETNAME", "x").contains("$2\r\nid\r\n\(id)"), id)
        XCTAssertEqual(try c.call("CLIENT", "SETNAME", ""), "+OK\r\n")
        XCTAssertEqual(try c.call("CLIENT", "GETNAME"), "$-1\r\n")
        XCTAssertEqual(try c.call("CLIENT", "SETNAME", "worker-1"), "+OK\r\n")
        XCTAssertEqual(try c.call("CLIENT", "GETNAME"), "$8\r\nworker-1\r\n")
        XCTAssertEqual(try c.call("CLIENT", "SETINFO", "LIB-NAME", "redis-py"), "+OK\r\n")
        XCTAssertTrue(try c.call("CLIENT", "ID").hasPrefix(":"))
        XCTAssertTrue(try TestClient(port: tern.port).call("CLIENT", "GETNAME") == "$-1\r\n", "names are per connection")
        XCTAssertTrue(try c.call("COMMAND", "COUNT").hasPrefix(":"))
        XCTAssertTrue(try c.call("COMMAND", "INFO", "get").hasPrefix("*1\r\n*10\r\n$3\r\nget\r\n:2\r\n"))
        XCTAssertEqual(try c.call("COMMAND", "DOCS"), "*0\r\n")
        // Argument errors of the commands Tern answers itself, as redis-server answers them
        // (the admin sweep of the twenty-ninth session found each of these different; the
        // slow log is empty on both).
        let direct = try TestClient(port: backends[0].port)
        for words in [["SLOWLOG", "GET", "+1"], ["SLOWLOG", "GET", "01"], ["SLOWLOG", "GET", "abc"], ["SLOWLOG", "GET", "1.5"], ["SLOWLOG", "GET", "-2"],
                      ["SLOWLOG", "GET", "-1"], ["SLOWLOG", "LEN", "x"], ["SLOWLOG", "RESET", "x"], ["SLOWLOG", "HELP", "x"], ["SLOWLOG", "BOGUS"],
                      ["SLOWLOG", "GET", "1", "2"], ["SLOWLOG", "get", "1", "2"], ["CLIENT", "GETNAME", "x"], ["CLIENT", "ID", "x"],
                      ["CLIENT", "INFO", "x"], ["CLIENT", "SETNAME"], ["COMMAND", "COUNT", "x"], ["COMMAND", "GETKEYS"],
                      ["COMMAND", "LIST", "FILTERBY", "BOGUS", "x"], ["COMMAND", "LIST", "x", "y", "z"], ["COMMAND", "LIST", "FILTERBY", "ACLCAT"],
                      ["COMMAND", "LIST", "FILTERBY", "PATTERN", "zzz*"], ["COMMAND", "LIST", "FILTERBY", "ACLCAT", "bogus"],
                      ["COMMAND", "LIST", "FILTERBY", "MODULE", "x"], ["COMMAND", "LIST", "FILTERBY", "PATTERN", "GETS*"]] {
            XCTAssertEqual(try c.call(words), try direct.call(words), "\(words)")
        }
        // Filters that match: a subset of the table, as Redis lists them.
        let reads = try c.call("COMMAND", "LIST", "FILTERBY", "ACLCAT", "read")
        XCTAssertTrue(reads.contains("$3\r\nget\r\n") && !reads.contains("$3\r\nset\r\n"), reads)
        XCTAssertEqual(try c.call("COMMAND", "LIST", "FILTERBY", "PATTERN", "GET*").split(separator: "\r\n").filter { !$0.hasPrefix("$") }.dropFirst().sorted(),
                       ["get", "getbit", "getdel", "getex", "getrange", "getset"])
        let info = try c.call("INFO")
        for section in ["# Server", "# Clients", "# Stats", "# Pools"] { XCTAssertTrue(info.contains(section), info) }
        // What monitors and client libraries check (fails on 2e737eb): a master, not loading,
        // and a maxclients that divides (0 did; the pool sets no client_connections).
        for line in ["role:master\r\n", "loading:0\r\n", "connected_slaves:0\r\n", "tcp_port:\(tern.port)\r\n"] {
            XCTAssertTrue(info.contains(line), line)
        }
        let maxclients = info.split(separator: "\r\n").first { $0.hasPrefix("maxclients:") }.flatMap { Int($0.dropFirst(11)) } ?? 0
        XCTAssertGreaterThan(maxclients, 0)
        XCTAssertTrue(try c.call("INFO", "replication").hasSuffix("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n"))
        XCTAssertEqual(try c.call("ROLE"), "*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n", "ROLE says what INFO replication says")
        // Tern's own CPU, as Redis writes its own (six decimals), and only where asked.
        let cpu = try c.call("INFO", "cpu")
        XCTAssertTrue(cpu.contains("# CPU\r\n"), cpu)
        for field in ["used_cpu_sys", "used_cpu_user", "used_cpu_sys_children", "used_cpu_user_children"] {
            let value = cpu.split(separator: "\r\n").first { $0.hasPrefix(field + ":") }.map { $0.dropFirst(field.count + 1) } ?? ""
            let parts = value.split(separator: ".")
            XCTAssertTrue(parts.count == 2 && parts[1].count == 6 && parts.allSatisfy { $0.allSatisfy(\.isNumber) }, "\(field): \(value)")
        }
        XCTAssertTrue(info.contains("# CPU\r\n"), "in the default sections")
        XCTAssertFalse(try c.call("INFO", "replication").contains("# CPU"))
        XCTAssertEqual(try c.call("ROLE", "x"), "-ERR wrong number of arguments for 'role' command\r\n")
        // Per-command counts in Redis's fields, by name or in `all`, not by default.
        XCTAssertFalse(info.contains("# Commandstats"))
        let commandstats = try c.call("INFO", "commandstats")
        XCTAssertTrue(commandstats.contains("# Commandstats\r\n"), commandstats)
        let line = commandstats.split(separator: "\r\n").first { $0.hasPrefix("cmdstat_client:calls=") }.map(String.init) ?? ""
        XCTAssertTrue(line.hasSuffix(",rejected_calls=0,failed_calls=0") && line.contains(",usec_per_call="), commandstats)
        XCTAssertTrue(try c.call("INFO", "all").contains("cmdstat_client:calls="))
        XCTAssertEqual(try c.call("WAIT", "1", "0"), "-ERR unsupported command 'wait'\r\n")
        XCTAssertEqual(try c.call("BLPOP", "q", "0.1"), "*-1\r\n")
        XCTAssertEqual(try c.call("MOVE", "q", "1"), "-ERR unsupported command 'move'\r\n")
        XCTAssertEqual(try c.call("CONFIG", "GET", "x"), "-ERR unsupported command 'config'\r\n")
        XCTAssertEqual(try c.call("NOPE", "a"), "-ERR unknown command 'NOPE', with args beginning with: 'a' \r\n")
        // An argument holding CRLF cannot split the error into two replies (found by the
        // differential fuzzer).
        XCTAssertEqual(try c.call("FOO", "a\r\n+X"), "-ERR unknown command 'FOO', with args beginning with: 'a  +X' \r\n")
        // Redis's own texts, byte for byte (clients probing for a feature match on them; Redis
        // commands sweep 31): an unknown command lists its arguments up to 128 bytes, an unknown
        // subcommand of a container Tern answers itself says so as Redis does, one Redis knows
        // but Tern does not serve is Tern's refusal.
        let server = backends[0]
        for request in [["FOO"] + (0..<40).map { "arg\($0)" }, ["FOO", String(repeating: "x", count: 300)], ["FOO", "a\u{1}b", "c\0d"],
                        ["SCRIPT", "foo"], ["SCRIPT", "Nope\r\n"], ["FUNCTION", "x"], ["CLIENT", "xyz"], ["COMMAND", "bogus"], ["ACL", "nope"],
                        ["CLUSTER", "whatever"], ["SELECT", "x"], ["SELECT", "-1"], ["SELECT", "1.5"], ["SELECT", "00"], ["SELECT", "+0"]] {
            XCTAssertEqual(try c.call(request), try TestClient(port: server.port).call(request), "\(request)")
        }
        XCTAssertEqual(try c.call("SCRIPT", "HELP"), "-ERR unsupported command 'script help'\r\n")
        XCTAssertEqual(try c.call("CLIENT", "KILL", "ID", "1"), "-ERR unsupported command 'client kill'\r\n")
        XCTAssertEqual(try c.call("GET"), "-ERR wrong number of arguments for 'get' command\r\n")
        XCTAssertEqual(try c.call("GET", "a", "b"), "-ERR wrong number of arguments for 'get' command\r\n")
        // Still usable after all of that.
        XCTAssertEqual(try c.call("SET", "still", "ok"), "+OK\r\n")
        XCTAssertEqual(try c.call("QUIT"), "+OK\r\n")
        XCTAssertTrue(c.drain(for: 2).closed)
    }

    /// Replies that are ready while the rest of their pipeline is in flight wait for it at most
    /// one loop pass (a millisecond on an idle worker): a stalled backend must not hold back the
    /// replies ahead of its own.
    func testReplyAheadOfAStalledBackendIsNotHeldBack() throws {
        let backends = try [group.redis(), group.redis()]
        let tern = try startTern(backends, threads: 1)
        let fast = keys(on: 0, tern.pool)[0]
        let slow = keys(on: 1, tern.pool)[0]
        let client = try TestClient(port: tern.port)
        XCTAssertEqual(try client.call("SET", fast, "f"), "+OK\r\n")
        XCTAssertEqual(try client.call("SET", slow, "s"), "+OK\r\n")
        backends[1].pause()
        let started = Date()
        try client.send(TestClient.encode(["GET", fast]) + TestClient.encode(["GET", slow]) + TestClient.encode(["GET", fast]))
        XCTAssertEqual(String(decoding: try client.receiveReplies(1), as: UTF8.self), "$1\r\nf\r\n")
        let waited = Date().timeIntervalSince(started)
        XCTAssertLessThan(waited, 0.3, "the first reply waited for the stalled backend")
        XCTAssertEqual(client.drain(for: 0.2).bytes, [], "nothing may overtake the stalled reply")
        backends[1].resume()
        client.setTimeout(5)
        XCTAssertEqual(String(decoding: try client.receiveReplies(2), as: UTF8.self), "$1\r\ns\r\n$1\r\nf\r\n")
    }

    func testPipelineOfOneThousandAndInlineCommands() throws {
        let backends = try [group.redis(), group.redis()]
        let tern = try startTern(backends)
        let c = try TestClient(port: tern.port)
        var bytes: [UInt8] = []
        for i in 0..<500 {
            bytes += TestClient.encode(["SET", "p:\(i)", "\(i)"]) + TestClient.encode(["GET", "p:\(i)"])
        }
        try c.send(bytes)
        let reply = String(decoding: try c.receiveReplies(1000), as: UTF8.self)
        var expected = ""
        for i in 0..<500 { expected += "+OK\r\n$\(String(i).utf8.count)\r\n\(i)\r\n" }
        XCTAssertTrue(reply == expected, "pipelined replies wrong or out of order")
        // Inline commands, as typed into telnet, with Redis's quoting rules; a quote closed
        // against the next character is a protocol error that ends the connection, as in Redis.
        try c.send("PING\r\nSET inline \"two words\\n\"\r\nGET inline\r\n\r\nECHO 'it\\'s'\r\nset 'it''s' x\r\n")
        XCTAssertEqual(String(decoding: try c.receiveReplies(5), as: UTF8.self),
                       "+PONG\r\n+OK\r\n$10\r\ntwo words\n\r\n$4\r\nit's\r\n-ERR Protocol error: unbalanced quotes in request\r\n")
        XCTAssertTrue(c.drain(for: 2).closed)
    }

    func testSplitReadsOneByteAtATime() throws {
        let backends = try [group.redis(), group.redis()]
        let tern = try startTern(backends)
        let c = try TestClient(port: tern.port)
        let bytes = TestClient.encode(["SET", "split", "value"]) + TestClient.encode(["MGET", "split", "k1", "k2"]) + Array("PING\r\n".utf8)
        for byte in bytes {
            try c.send([byte])
            usleep(300)
        }
        XCTAssertEqual(String(decoding: try c.receiveReplies(3), as: UTF8.self), "+OK\r\n*3\r\n$5\r\nvalue\r\n$-1\r\n$-1\r\n+PONG\r\n")
    }

    func testFiveMegabyteValue() throws {
        let backends = try [group.redis(), group.redis()]
        let tern = try startTern(backends)
        let c = try TestClient(port: tern.port)
        let value = String((0..<5_000_000).map { Character(UnicodeScalar(UInt8(97 + $0 % 26))) })
        XCTAssertEqual(try c.call("SET", "big", value), "+OK\r\n")
        let reply = try c.call("GET", "big")
        XCTAssertEqual(reply.utf8.count, 5_000_000 + 12)
        XCTAssertTrue(reply == "$5000000\r\n\(value)\r\n")
    }

    func testAuthFlowsAndBackendSetup() throws {
        // Backends need a password and the pool uses database 2: Tern sends AUTH and SELECT.
        let backends = try [group.redis(extra: ["--requirepass", "s3cret"]), group.redis(extra: ["--requirepass", "s3cret"])]
        let tern = try startTern(backends, extra: "  redis_auth: s3cret\n  redis_db: 2\n")
        let c = try TestClient(port: tern.port)
        XCTAssertEqual(try c.call("GET", "x"), "-NOAUTH Authentication required.\r\n")
        XCTAssertEqual(try c.call("PING"), "-NOAUTH Authentication required.\r\n")
        XCTAssertEqual(try c.call("AUTH", "wrong"), "-WRONGPASS invalid username-password pair or user is disabled.\r\n")
        XCTAssertEqual(try c.call("AUTH", "other", "s3cret"), "-WRONGPASS invalid username-password pair or user is disabled.\r\n")
        XCTAssertEqual(try c.call("AUTH", "s3cret"), "+OK\r\n")
        XCTAssertEqual(try c.call("SET", "authed", "yes"), "+OK\r\n")
        XCTAssertEqual(try c.call("SELECT", "2"), "+OK\r\n")
        let owner = backends[serverIndex(tern.pool, "authed")]
        let direct = try TestClient(port: owner.port)
        XCTAssertEqual(try direct.call("AUTH", "s3cret"), "+OK\r\n")
        XCTAssertEqual(try direct.call("SELECT", "2"), "+OK\r\n")
        XCTAssertEqual(try direct.call("GET", "authed"), "$3\r\nyes\r\n")
        XCTAssertEqual(try direct.call("SELECT", "0"), "+OK\r\n")
        XCTAssertEqual(try direct.call("GET", "authed"), "$-1\r\n")
        // HELLO with AUTH authenticates in one step.
        let h = try TestClient(port: tern.port)
        XCTAssertTrue(try h.call("HELLO", "2").hasPrefix("-NOAUTH HELLO must be called"))
        XCTAssertTrue(try h.call("HELLO", "2", "AUTH", "default", "s3cret", "SETNAME", "me").hasPrefix("*14\r\n"))
        XCTAssertEqual(try h.call("CLIENT", "GETNAME"), "$2\r\nme\r\n")
        XCTAssertEqual(try h.call("GET", "authed"), "$3\r\nyes\r\n")
        // INFO's backend figures: the poller authenticates too (AUTH in the same write as its
        // first INFO); a server whose password changed is down with the reason.
        func figures() -> String {
            let info = (try? h.call("INFO", "backends")) ?? ""
            return info.split(separator: "\r\n").compactMap { line -> String? in
                if line.hasPrefix("backends_") { return String(line) }
                return line.split(separator: ",").first { $0.hasPrefix("error=") }.map(String.init)
            }.joined(separator: " ")
        }
        XCTAssertEqual(eventually("backends_up:2 backends_down:0") { figures() }, "backends_up:2 backends_down:0")
        XCTAssertEqual(try direct.call("CONFIG", "SET", "requirepass", "changed"), "+OK\r\n")
        XCTAssertEqual(try direct.call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes").hasPrefix(":"), true, "the poller's connection too")
        let refused = "backends_up:1 backends_down:1 error=AUTH failed: WRONGPASS invalid username-password pair or user is disabled."
        XCTAssertEqual(eventually(refused, within: 8) { figures() }, refused)
    }

    /// A pool without a password answers AUTH and HELLO … AUTH byte for byte as a Redis without
    /// one: its `default` user takes any password when named, so an application whose URL says
    /// `redis://default:pw@…` connects (it got an error; found by a framework sweep), another
    /// user does not exist, and a lone password is Redis's configuration hint. redis-py with a
    /// password in its URL then works.
    func testAuthWithoutConfiguredPassword() throws {
        let backend = try group.redis()
        let tern = try startTern([backend])
        let commands = [["AUTH", "x"], ["AUTH", "default", "x"], ["AUTH", "bob", "x"], ["AUTH", "Default", "x"],
                        ["HELLO", "2", "AUTH", "bob", "x"], ["AUTH", "a", "b", "c"]]
        for command in commands {
            XCTAssertEqual(try TestClient(port: tern.port).call(command), try TestClient(port: backend.port).call(command), "\(command)")
        }
        let hello = try TestClient(port: tern.port).call("HELLO", "2", "AUTH", "default", "x")
        XCTAssertTrue(hello.hasPrefix("*14\r\n$6\r\nserver\r\n"), hello)
        try python("""
        r = redis.Redis.from_url("redis://default:secret@127.0.0.1:\(tern.port)/0")
        assert r.set("k", "v") and r.get("k") == b"v"
        """)
    }

    func testHostileInputClosesOnlyThatClient() throws {
        let backends = try [group.redis()]
        let tern = try startTern(backends)
        let bystander = try TestClient(port: tern.port)
        XCTAssertEqual(try bystander.call("SET", "safe", "1"), "+OK\r\n")
        let cases: [(String, String)] = [
            ("*99999999999\r\n", "-ERR Protocol error: invalid multibulk length\r\n"),
            ("*1\r\n$-5\r\n", "-ERR Protocol error: invalid bulk length\r\n"),
            ("*1\r\n$99999999999\r\n", "-ERR Protocol error: invalid bulk length\r\n"),
            ("*2\r\n$3\r\nGET\r\n:1\r\n", "-ERR Protocol error: expected '$', got ':'\r\n"),
            ("*1\r\n$3\r\nGETXX\r\n", "-ERR Protocol error: bulk string not terminated by CRLF\r\n"),
            ("*abc\r\n", "-ERR Protocol error: invalid multibulk length\r\n"),
        ]
        for (input, reply) in cases {
            let hostile = try TestClient(port: tern.port)
            // A valid request ahead of the garbage is still answered.
            try hostile.send(TestClient.encode(["GET", "safe"]) + Array(input.utf8))
            let result = hostile.drain(for: 3)
            XCTAssertEqual(String(decoding: result.bytes, as: UTF8.self), "$1\r\n1\r\n" + reply, input.debugDescription)
            XCTAssertTrue(result.closed, input.debugDescription)
        }
        // An inline line with no end within 64 KiB.
        let flood = try TestClient(port: tern.port)
        try? flood.send([UInt8](repeating: UInt8(ascii: "a"), count: 70_000))
        let flooded = flood.drain(for: 3)
        XCTAssertEqual(String(decoding: flooded.bytes, as: UTF8.self), "-ERR Protocol error: too big inline request\r\n")
        // A truncated frame just waits; the bystander and a new client are unaffected.
        let truncated = try TestClient(port: tern.port)
        try truncated.send("*3\r\n$3\r\nSET\r\n$1\r\n")
        var generator = SystemRandomNumberGenerator()
        let garbage = try TestClient(port: tern.port)
        try? garbage.send((0..<50_000).map { _ in UInt8.random(in: 0...255, using: &generator) })
        XCTAssertEqual(try bystander.call("GET", "safe"), "$1\r\n1\r\n")
        XCTAssertEqual(try TestClient(port: tern.port).call("GET", "safe"), "$1\r\n1\r\n")
        try truncated.send("k\r\n$1\r\nv\r\n")
        XCTAssertEqual(String(decoding: try truncated.receiveReplies(1), as: UTF8.self), "+OK\r\n")
    }

    func testBackendKilledMidTest() throws {
        let backends = try [group.redis(), group.redis()]
        let tern = try startTern(backends)
        let c = try TestClient(port: tern.port)
        let onFirst = keys(on: 0, tern.pool)[0]
        let onSecond = keys(on: 1, tern.pool)[0]
        XCTAssertEqual(try c.call("SET", onFirst, "1"), "+OK\r\n")
        XCTAssertEqual(try c.call("SET", onSecond, "2"), "+OK\r\n")
        backends[0].kill()
        let failed = try c.call("GET", onFirst)
        XCTAssertTrue(failed.hasPrefix("-ERR "), failed)
        XCTAssertEqual(try c.call("GET", onSecond), "$1\r\n2\r\n")
        XCTAssertTrue(try c.call("MGET", onFirst, onSecond).hasPrefix("-ERR "))
        let restarted = try group.redis(port: backends[0].port)
        _ = restarted
        XCTAssertEqual(try eventually("+OK\r\n") { try c.call("SET", onFirst, "back") }, "+OK\r\n")
        XCTAssertEqual(try c.call("MGET", onFirst, onSecond), "*2\r\n$4\r\nback\r\n$1\r\n2\r\n")
    }

    /// A Redis pool of one server (a sidecar) closes a client whose request's server failed,
    /// after the replies before it, as a client of the server itself sees its connection end:
    /// redis-py raises `ConnectionError` (which RQ, Celery and redis-py's own retry take as a
    /// reason to reconnect), not `ResponseError` (an `-ERR` reply, which stopped an RQ worker
    /// and a Celery worker at a routine Redis restart; found by a framework sweep). A blocked
    /// `BLPOP` ends the same way. Beside it, on the same Tern, a sharded pool keeps the `-ERR`
    /// reply for the failed server's keys and serves the other server's, on the same
    /// connection, and a one-server pool with `close_on_server_failure: false` answers `-ERR`.
    func testOneServerPoolClosesClientsWhenItsServerFails() throws {
        let backend = try group.redis(), other = try group.redis()
        let single = ProcessGroup.freePort(), sharded = ProcessGroup.freePort(), kept = ProcessGroup.freePort()
        let text = "single:\n  listen: 127.0.0.1:\(single)\n  redis: true\n  timeout: 2000\n  servers:\n   - \(backend.address):1\n"
            + "sharded:\n  listen: 127.0.0.1:\(sharded)\n  redis: true\n  timeout: 2000\n  servers:\n   - \(backend.address):1\n   - \(other.address):1\n"
            + "kept:\n  listen: 127.0.0.1:\(kept)\n  redis: true\n  timeout: 2000\n  close_on_server_failure: false\n  servers:\n   - \(backend.address):1\n"
        try group.tern(config: text, arguments: ["--threads", "1"], waitPort: single)
        try group.waitForPort(sharded)
        try group.waitForPort(kept)
        let pools = try ConfigLoader.load(text: text, file: "t").pools
        XCTAssertEqual(pools.map(\.closesClientsOnServerFailure), [true, false, false])
        let onDown = keys(on: 0, pools[1])[0], onUp = keys(on: 1, pools[1])[0]
        let shardedClient = try TestClient(port: sharded), keptClient = try TestClient(port: kept)
        XCTAssertEqual(try shardedClient.call("SET", onUp, "up"), "+OK\r\n")
        let blocked = try TestClient(port: single)
        try blocked.send(TestClient.encode(["BLPOP", "queue", "0"]))
        let pipelined = try TestClient(port: single)
        XCTAssertEqual(try pipelined.call("SET", "k", "v"), "+OK\r\n")
        // A script keeps the server busy while the server dies under it.
        let busy = "local s = tonumber(redis.call('TIME')[1]) while tonumber(redis.call('TIME')[1]) < s + 3 do end return 1"
        try pipelined.send(TestClient.encode(["PING"]) + TestClient.encode(["EVAL", busy, "0"]) + TestClient.encode(["PING"]))
        usleep(300_000)
        backend.kill()
        // Lost with its server: no error bytes, the connection ends.
        let ended = blocked.drain(for: 3)
        XCTAssertEqual(ended.bytes, [], "the blocked client")
        XCTAssertTrue(ended.closed, "the blocked client")
        // The reply before the failed request is written, then the connection ends.
        let cut = pipelined.drain(for: 3)
        XCTAssertEqual(String(decoding: cut.bytes, as: UTF8.self), "+PONG\r\n")
        XCTAssertTrue(cut.closed)
        // The sharded pool and the pool that keeps its clients: -ERR, connection kept.
        XCTAssertTrue(try shardedClient.call("GET", onDown).hasPrefix("-ERR "))
        XCTAssertEqual(try shardedClient.call("GET", onUp), "$2\r\nup\r\n")
        XCTAssertTrue(try keptClient.call("GET", "k").hasPrefix("-ERR "))
        XCTAssertEqual(try keptClient.call("PING"), "+PONG\r\n")
        // redis-py: ConnectionError while the server is down; after it returns, the same
        // client object reconnects and carries on.
        try python("""
        r = redis.Redis(port=\(single), socket_timeout=5)
        try:
            r.get("k")
            raise SystemExit("no error")
        except redis.exceptions.ConnectionError:
            pass
        """)
        _ = try group.redis(port: backend.port)
        try python("""
        r = redis.Redis(port=\(single), socket_timeout=5)
        for attempt in range(40):
            try:
                assert r.set("k", "back"); break
            except redis.exceptions.ConnectionError:
                time.sleep(0.1)
        assert r.get("k") == b"back", r.get("k")
        p = r.pipeline(transaction=False); p.get("k"); p.ping()
        assert p.execute() == [b"back", True]
        """)
        XCTAssertEqual(try shardedClient.call("GET", onUp), "$2\r\nup\r\n")
    }

    /// A request waiting for a one-server pool's server (`server_wait`) is answered within 0.1 s
    /// of the server's return from a restart: while connects are refused, Tern retries every
    /// 100 ms, not on its doubling backoff alone (whose next step came up to 1.6 s later; fails
    /// on 0c5ce24).
    func testAWaitingRequestIsAnsweredWithinATenthOfASecondOfTheServersReturn() throws {
        let backend = try group.redis()
        let port = ProcessGroup.freePort()
        let text = "single:\n  listen: 127.0.0.1:\(port)\n  redis: true\n  server_wait: 5000\n  servers:\n   - \(backend.address):1\n"
        try group.tern(config: text, arguments: ["--threads", "1"], waitPort: port)
        let client = try TestClient(port: port, timeout: 10)
        XCTAssertEqual(try client.call("SET", "n", "1"), "+OK\r\n")
        backend.kill()
        // The backoff's retries come 0.05, 0.15, 0.35, 0.75, 1.55 and 3.15 s into the wait, the
        // last chance at 4.9 s: back at 3.3 s, the server was reached at 4.9 s.
        try client.send(TestClient.encode(["GET", "n"]))
        usleep(3_300_000)
        _ = try group.redis(port: backend.port)
        let back = Date()
        XCTAssertEqual(String(decoding: try client.receiveReplies(1), as: UTF8.self), "$-1\r\n")
        XCTAssertLessThan(Date().timeIntervalSince(back), 0.5)
    }

    /// On a one-server pool whose server is known down, a request waits for Tern to reach it
    /// again (retried on the backoff), up to the pool's `timeout`, instead of failing at once
    /// and closing its client (found by a sweep of redis-rb, node-redis, go-redis and Perl
    /// clients): a client that reconnects at once after the close (redis-rb's blocking pops,
    /// as Sidekiq uses them) made about 84,000 connections through Tern in a 2 to 4 s outage,
    /// and a command sent during a short restart failed, where node-redis against the server
    /// itself waits and succeeds. Now a client reconnecting in a loop makes a few connections a
    /// second, a request sent while the server is down is answered once it is back (a 2 MiB
    /// SET too, and a client that shut its writing side), a request that waited the pool's
    /// timeout still ends its connection, and `PING`, which Tern answers itself, waits like any
    /// other (a health check got `+PONG` from a dead server; found by the re-check).
    func testRequestsWaitForTheServersNextConnect() throws {
        let backend = try group.redis()
        let port = ProcessGroup.freePort(), quick = ProcessGroup.freePort(), fresh = ProcessGroup.freePort()
        let text = "single:\n  listen: 127.0.0.1:\(port)\n  redis: true\n  timeout: 4000\n  servers:\n   - \(backend.address):1\n"
            + "quick:\n  listen: 127.0.0.1:\(quick)\n  redis: true\n  timeout: 300\n  servers:\n   - \(backend.address):1\n"
            + "fresh:\n  listen: 127.0.0.1:\(fresh)\n  redis: true\n  servers:\n   - \(backend.address):1\n"
        try group.tern(config: text, arguments: ["--threads", "1"], waitPort: port)
        try group.waitForPort(quick)
        try group.waitForPort(fresh)
        XCTAssertEqual(try TestClient(port: port).call("SET", "n", "1"), "+OK\r\n")
        backend.kill()
        // A client that reconnects as soon as its connection ends, for 2 s (redis-rb's BLPOP).
        try python("""
        import socket
        deadline = time.time() + 2
        connections = 0
        while time.time() < deadline:
            s = socket.create_connection(("127.0.0.1", \(port)))
            connections += 1
            s.sendall(b"*3\\r\\n$5\\r\\nBLPOP\\r\\n$1\\r\\nq\\r\\n$1\\r\\n0\\r\\n")
            s.settimeout(5)
            got = s.recv(100)
            assert got == b"", got
            s.close()
        assert 1 <= connections <= 20, connections
        """)
        // A request sent while the server is down waits for it: the server returns 0.5 s later.
        // So does a 2 MiB SET (more than a waiting client's input may hold before its reading
        // pauses) and a client that shuts its writing side after its request.
        let waiting = try TestClient(port: port), large = try TestClient(port: port), leaving = try TestClient(port: port)
        let started = Date()
        try waiting.send(TestClient.encode(["INCR", "n"]))
        try large.send(TestClient.encode(["SET", "large", String(repeating: "v", count: 2 << 20)]) + TestClient.encode(["STRLEN", "large"]))
        try leaving.send(TestClient.encode(["INCR", "left"]))
        leaving.shutdownWrite()
        usleep(500_000)
        let restarted = try group.redis(port: backend.port)
        XCTAssertEqual(String(decoding: try waiting.receiveReplies(1), as: UTF8.self), ":1\r\n", "answered, not closed (the restarted server is empty)")
        XCTAssertEqual(String(decoding: try large.receiveReplies(2), as: UTF8.self), "+OK\r\n:2097152\r\n")
        let left = leaving.drain(for: 3)
        XCTAssertEqual(String(decoding: left.bytes, as: UTF8.self), ":1\r\n")
        XCTAssertTrue(left.closed)
        XCTAssertLessThan(Date().timeIntervalSince(started), 3.5)
        XCTAssertEqual(try waiting.call("PING"), "+PONG\r\n")
        // With the server down again, the pool whose timeout (0.3 s) is shorter than its backoff
        // grows to ends a request's connection once that timeout has passed.
        restarted.kill()
        // A pool that never connected answers PING only once it has: here never, so its client
        // ends after the wait (1.5 s without a timeout); it got +PONG at once.
        let unanswered = try TestClient(port: fresh)
        let pinged = Date()
        try unanswered.send(TestClient.encode(["PING"]))
        let silence = unanswered.drain(for: 4)
        XCTAssertEqual(silence.bytes, [], "no +PONG from a server that is down")
        XCTAssertTrue(silence.closed)
        XCTAssertGreaterThan(Date().timeIntervalSince(pinged), 1.3)
        XCTAssertLessThan(Date().timeIntervalSince(pinged), 2.5)
        try python("""
        import socket
        deadline = time.time() + 1.5
        while time.time() < deadline:
            s = socket.create_connection(("127.0.0.1", \(quick)))
            s.sendall(b"*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nn\\r\\n")
            s.settimeout(5)
            assert s.recv(100) == b""
            s.close()
        """)
        for command in [["GET", "n"], ["PING"], ["GET", "n"]] {
            // PING too, which Tern answers itself: a health check must not hear that a dead
            // server is up (it got +PONG at once).
            let impatient = try TestClient(port: quick)
            let asked = Date()
            try impatient.send(TestClient.encode(command))
            let ended = impatient.drain(for: 3)
            XCTAssertTrue(ended.closed, command[0])
            XCTAssertEqual(ended.bytes, [], command[0])
            XCTAssertLessThan(Date().timeIntervalSince(asked), 0.8, "the pool's timeout, not the backoff")
            XCTAssertGreaterThan(Date().timeIntervalSince(asked), 0.25, "waited for the server")
        }
        // Back, a waiting request goes on.
        let patient = try TestClient(port: port)
        try patient.send(TestClient.encode(["PING"]))
        usleep(300_000)
        _ = try group.redis(port: backend.port)
        XCTAssertEqual(String(decoding: try patient.receiveReplies(1), as: UTF8.self), "+PONG\r\n")
        // The short-timeout pool retries within its timeout (its backoff stops at 0.3 s): the
        // server that is back is reached by its next request.
        let back = Date()
        XCTAssertEqual(eventually("$-1\r\n", within: 3) { (try? TestClient(port: quick).call("GET", "n")) ?? "" }, "$-1\r\n")
        XCTAssertLessThan(Date().timeIntervalSince(back), 0.9)
    }

    /// `server_wait` sets the wait apart from `timeout`: node-redis sends its whole offline queue
    /// on one connection, and lost all of it in restarts longer than the 1.5 s default (the
    /// twentieth session's re-check), where a longer `timeout` would also slow every request's
    /// failure. A pool with `timeout: 300` and `server_wait: 4000` answers requests sent during
    /// a 1 s restart (its timeout alone closes them within 0.8 s: the test above), and still
    /// closes them past the 4 s; `server_wait: 0` turns the wait off: a request for a server
    /// that is down closes its client at once (PING, which Tern answers, is answered). A server
    /// back after a wait's last retry is still reached within the wait.
    func testServerWaitSetsTheWaitApartFromTheTimeout() throws {
        let backend = try group.redis()
        let port = ProcessGroup.freePort(), off = ProcessGroup.freePort(), plain = ProcessGroup.freePort(), late = ProcessGroup.freePort()
        let text = "long:\n  listen: 127.0.0.1:\(port)\n  redis: true\n  timeout: 300\n  server_wait: 4000\n  servers:\n   - \(backend.address):1\n"
            + "off:\n  listen: 127.0.0.1:\(off)\n  redis: true\n  server_wait: 0\n  servers:\n   - \(backend.address):1\n"
            + "plain:\n  listen: 127.0.0.1:\(plain)\n  redis: true\n  servers:\n   - \(backend.address):1\n"
            + "late:\n  listen: 127.0.0.1:\(late)\n  redis: true\n  server_wait: 4000\n  servers:\n   - \(backend.address):1\n"
        try group.tern(config: text, arguments: ["--threads", "1"], waitPort: port)
        for other in [off, plain, late] { try group.waitForPort(other) }
        XCTAssertEqual(try TestClient(port: port).call("SET", "n", "1"), "+OK\r\n")
        XCTAssertEqual(try TestClient(port: off).call("GET", "n"), "$1\r\n1\r\n")
        backend.kill()
        let waiting = try TestClient(port: port)
        let started = Date()
        try waiting.send(TestClient.encode(["INCR", "n"]) + TestClient.encode(["PING"]))
        let refused = try TestClient(port: off)
        try refused.send(TestClient.encode(["GET", "n"]))
        let ended = refused.drain(for: 3)
        XCTAssertTrue(ended.closed)
        XCTAssertEqual(ended.bytes, [])
        XCTAssertLessThan(Date().timeIntervalSince(started), 0.5, "no wait with server_wait: 0")
        XCTAssertEqual(try TestClient(port: off).call("PING"), "+PONG\r\n", "no wait: Tern answers PING itself")
        usleep(1_000_000)
        let restarted = try group.redis(port: backend.port)
        XCTAssertEqual(String(decoding: try waiting.receiveReplies(2), as: UTF8.self), ":1\r\n+PONG\r\n", "answered after 1 s, past the 0.3 s timeout")
        XCTAssertLessThan(Date().timeIntervalSince(started), 3.9)
        restarted.kill()
        let impatient = try TestClient(port: port)
        let impatientAsked = Date()
        try impatient.send(TestClient.encode(["GET", "n"]))
        let closed = impatient.drain(for: 7)
        XCTAssertTrue(closed.closed)
        XCTAssertEqual(closed.bytes, [])
        XCTAssertGreaterThan(Date().timeIntervalSince(impatientAsked), 3.8, "waited server_wait")
        XCTAssertLessThan(Date().timeIntervalSince(impatientAsked), 5)
        // The retries double from 50 ms, so the last one inside the default 1.5 s wait comes
        // 0.75 s in: a server back 1 s after the request was not tried again, and the client
        // was closed at 1.5 s (a re-check found node-redis losing every command of a 1 s
        // restart). A connect in the wait's last tenth reaches it. (This pool has not connected
        // yet: its first attempt is the request's.)
        let lastChance = try TestClient(port: plain)
        let sent = Date()
        try lastChance.send(TestClient.encode(["INCR", "late"]))
        usleep(1_000_000)
        let backInTime = try group.redis(port: backend.port)
        XCTAssertEqual(String(decoding: try lastChance.receiveReplies(1), as: UTF8.self), ":1\r\n", "answered within the wait, not closed")
        XCTAssertLessThan(Date().timeIntervalSince(sent), 1.6)
        // A last chance that fails does not push the next retry back. On a 4 s wait (a pool
        // that has not connected yet) the retries come 0.05, 0.15, 0.35, 0.75, 1.55, 3.15 and
        // 5.15 s after the first request, the last chance at 3.9 s; with the server back just
        // after it, the request closed at 4 s, the next request is answered at the retry that
        // was due (5.15 s), not a whole backoff step (2 s) after the last chance (the re-check's
        // F1). Either side has a margin of about 0.35 s.
        backInTime.kill()
        let closedAtTheEnd = try TestClient(port: late)
        let asked = Date()
        try closedAtTheEnd.send(TestClient.encode(["GET", "late"]))
        usleep(3_920_000)
        _ = try group.redis(port: backend.port)
        _ = closedAtTheEnd.drain(for: 2)
        let next = Date()
        XCTAssertEqual(try TestClient(port: late).call("GET", "late"), "$-1\r\n")
        XCTAssertLessThan(Date().timeIntervalSince(next), 1.5, "the retry that was due, \(next.timeIntervalSince(asked)) s after the first request")
    }

    /// KEYS and PUBSUB CHANNELS/NUMSUB with a server down: the refused part's error is the whole
    /// reply, and the next reply on the connection is the next command's. Before, the live
    /// servers' elements, arriving after the error, were written behind it, and a client read
    /// them as the replies to its next commands: redis-py's `get` returned another key's name
    /// (session sweep 32; fails on a84b660).
    func testAFannedOutUnionWithAServerDownAnswersOneError() throws {
        let live = try [group.redis(), group.redis()]
        let deadPort = ProcessGroup.freePort(), port = ProcessGroup.freePort()
        let text = "u:\n  listen: 127.0.0.1:\(port)\n  redis: true\n  timeout: 1000\n  close_on_server_failure: false\n  servers:\n"
            + live.map { "   - \($0.address):1\n" }.joined() + "   - 127.0.0.1:\(deadPort):1\n"
        try group.tern(config: text, arguments: ["--threads", "1"], waitPort: port)
        for (index, server) in live.enumerated() { XCTAssertEqual(try server.call("SET", "stray:\(index)", "v"), "+OK\r\n") }
        let subscriber = try TestClient(port: live[0].port)
        try subscriber.send(TestClient.encode(["SUBSCRIBE", "chan1"]))
        _ = try subscriber.receiveReplies(1)
        let client = try TestClient(port: port), innocent = try TestClient(port: port)
        for command in [["KEYS", "stray:*"], ["PUBSUB", "NUMSUB", "chan1", "chan2"], ["PUBSUB", "CHANNELS"], ["PUBSUB", "SHARDNUMSUB", "chan1"]] {
            try client.send(TestClient.encode(command) + TestClient.encode(["PING"]))
            let reply = String(decoding: try client.receiveReplies(2), as: UTF8.self)
            XCTAssertEqual(reply, "-ERR Connection refused\r\n+PONG\r\n", command.joined(separator: " "))
            XCTAssertEqual(client.drain(for: 0.2).bytes, [], "nothing after the PING's reply")
            XCTAssertEqual(try innocent.call("ECHO", "innocent"), "$8\r\ninnocent\r\n")
        }
        XCTAssertEqual(try client.call("ECHO", "next"), "$4\r\nnext\r\n")
    }

    /// Connections opened for one client (a blocking command, a WATCH, a subscription) back off
    /// with the server's shared connections while it refuses connects: 100 `BLPOP`s, `WATCH`es
    /// and `SUBSCRIBE`s each on a server that is down make at most ten connect attempts a
    /// second, not one each (found by a framework sweep: a retrying worker made about 7,600 connects a second,
    /// until Linux connected one to itself on a port in the ephemeral range, and `BLPOP q 1`
    /// was answered with its own request). Each is refused at once with the server's error; once
    /// the server listens, the next attempt after the backoff (at most 2 s) reaches it.
    func testPerClientConnectionsBackOffFromADeadServer() throws {
        let deadPort = ProcessGroup.freePort(), port = ProcessGroup.freePort(), statsPort = ProcessGroup.freePort()
        let text = "single:\n  listen: 127.0.0.1:\(port)\n  redis: true\n  timeout: 2000\n  close_on_server_failure: false\n"
            + "  servers:\n   - 127.0.0.1:\(deadPort):1\n"
        try group.tern(config: text, arguments: ["--threads", "1", "-s", "\(statsPort)"], waitPort: port)
        let client = try TestClient(port: port)
        let started = Date()
        for round in 0..<100 {
            for command in [["BLPOP", "q", "0"], ["WATCH", "w"]] {
                let reply = try client.call(command)
                XCTAssertTrue(reply.hasPrefix("-ERR Connection refused"), "round \(round), \(command[0]): \(reply)")
            }
            // A subscriber whose push connection fails is closed (it would miss messages).
            let subscriber = try TestClient(port: port)
            try subscriber.send(TestClient.encode(["SUBSCRIBE", "ch"]))
            XCTAssertTrue(subscriber.drain(for: 3).closed, "round \(round)")
        }
        let elapsed = Date().timeIntervalSince(started)
        XCTAssertLessThan(elapsed, 10)
        usleep(1_200_000)
        let stats = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(TestClient(port: statsPort).drain(for: 2).bytes)) as? [String: Any])
        let server = try XCTUnwrap((stats["single"] as? [String: Any])?["127.0.0.1:\(deadPort)"] as? [String: Any])
        let attempts = try XCTUnwrap(server["server_err"] as? Int)
        // Requests retry a refused server at most every 0.1 s (the backoff, 0.05 s doubling to
        // 1.6 s, holds a server that does not answer): about elapsed / 0.1 attempts.
        XCTAssertLessThanOrEqual(attempts, 8 + Int(elapsed / 0.1), "connect attempts in \(elapsed) s")
        XCTAssertGreaterThanOrEqual(attempts, 1)
        _ = try group.redis(port: deadPort)
        XCTAssertEqual(try eventually("*-1\r\n", within: 5) { try client.call("BLPOP", "q", "0.1") }, "*-1\r\n")
        XCTAssertEqual(try client.call("SET", "k", "v"), "+OK\r\n")
    }

    /// A client of a one-server pool closed because its server stayed down through `server_wait`
    /// counts a `forward_error` for the request it could not forward, as nutcracker counts one
    /// per request it failed: the pool's `forward_error` stayed 0 while its only server was
    /// down, and a "forward_error > 0" alert stayed silent (the drop-in sweep; fails on 7577d0c).
    func testClientsClosedAfterTheServerWaitCountForwardErrors() throws {
        let deadPort = ProcessGroup.freePort(), port = ProcessGroup.freePort(), statsPort = ProcessGroup.freePort()
        let text = "single:\n  listen: 127.0.0.1:\(port)\n  redis: true\n  server_wait: 200\n  servers:\n   - 127.0.0.1:\(deadPort):1\n"
        try group.tern(config: text, arguments: ["--threads", "1", "-s", "\(statsPort)"], waitPort: port)
        for _ in 0..<3 {
            let client = try TestClient(port: port)
            try client.send(TestClient.encode(["GET", "k"]))
            XCTAssertTrue(client.drain(for: 3).closed)
        }
        let stats = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(TestClient(port: statsPort).drain(for: 2).bytes)) as? [String: Any])
        let pool = try XCTUnwrap(stats["single"] as? [String: Any])
        XCTAssertEqual(pool["forward_error"] as? Int, 3)
        XCTAssertEqual(pool["client_err"] as? Int, 3)
    }

    /// A backend connect that reaches its own socket fails: in a private network namespace
    /// whose ephemeral port range is the dead server's port alone, Linux connects Tern's socket
    /// to itself (found by a framework sweep on a normal range, after thousands of connects a
    /// second). `BLPOP` is never answered with its own request (it was), the client's connection
    /// closes (a one-server pool), the socket leaves no TIME-WAIT behind, so the server binds
    /// its port at once when it starts (with a normal close it could not for a minute), and
    /// Tern reaches it after the backoff.
    func testConnectToItselfFailsAndLeavesThePortFree() throws {
        guard getuid() == 0, (try? ProcessGroup.run("/usr/bin/unshare", ["-n", "true"]).0) == 0,
              FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") || FileManager.default.isExecutableFile(atPath: "/usr/bin/ip") else {
            throw XCTSkip("needs root, unshare -n and ip (iproute2)")
        }
        let config = group.directory + "/self.yml"
        try "self:\n  listen: 127.0.0.1:40000\n  redis: true\n  timeout: 2000\n  servers:\n   - 127.0.0.1:45124:1\n".write(toFile: config, atomically: true, encoding: .utf8)
        let script = """
        set -u
        ip link set lo up
        echo "45124 45124" > /proc/sys/net/ipv4/ip_local_port_range || echo "45124 45125" > /proc/sys/net/ipv4/ip_local_port_range
        \(ProcessGroup.ternBinary) -c \(config) -s 40001 -a 127.0.0.1 --threads 1 > \(group.directory)/self-tern.log 2>&1 &
        tern=$!
        sleep 1
        python3 - <<'PY'
        import socket, time
        for round in range(3):
            s = socket.create_connection(("127.0.0.1", 40000)); s.settimeout(3)
            s.sendall(b"*3\\r\\n$5\\r\\nBLPOP\\r\\n$1\\r\\nq\\r\\n$1\\r\\n1\\r\\n")
            data = b""
            try:
                while True:
                    chunk = s.recv(4096)
                    if not chunk: break
                    data += chunk
            except socket.timeout:
                data += b"<timeout>"
            print("reply %r" % data, flush=True)
            s.close(); time.sleep(0.3)
        PY
        redis-server --port 45124 --bind 127.0.0.1 --save '' --appendonly no > \(group.directory)/self-redis.log 2>&1 &
        redis=$!
        sleep 0.5
        # The server now holds the one ephemeral port: give connects others.
        echo "45125 45200" > /proc/sys/net/ipv4/ip_local_port_range
        python3 - <<'PY'
        import socket, time
        for attempt in range(40):
            s = socket.create_connection(("127.0.0.1", 40000)); s.settimeout(3)
            s.sendall(b"*3\\r\\n$5\\r\\nBLPOP\\r\\n$1\\r\\nq\\r\\n$3\\r\\n0.1\\r\\n")
            data = s.recv(4096); s.close()
            if data == b"*-1\\r\\n": print("served", flush=True); break
            time.sleep(0.1)
        PY
        kill $tern $redis
        wait
        grep -c "Ready to accept" \(group.directory)/self-redis.log
        grep -c "connected to itself" \(group.directory)/self-tern.log
        """
        let (_, output) = try ProcessGroup.run("/usr/bin/unshare", ["-n", "/bin/bash", "-c", script])
        let lines = output.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.filter { $0.hasPrefix("reply ") }, Array(repeating: "reply b''", count: 3), output)
        XCTAssertTrue(lines.contains("served"), output)
        XCTAssertEqual(lines.suffix(2).first, "1", "redis-server bound its port: \(output)")
        XCTAssertGreaterThanOrEqual(Int(lines.last ?? "") ?? 0, 1, "Tern saw the self-connect: \(output)")
    }

    func testSlotsDistributionPlacesKeysByHashSlot() throws {
        let backends = try [group.redis(), group.redis(), group.redis()]
        let tern = try startTern(backends, distribution: "slots")
        let c = try TestClient(port: tern.port)
        // Slot ranges split like redis-cli --cluster create: 0-5460, 5461-10922, 10923-16383.
        let samples = ["foo", "bar", "hello", "{user1000}.following", "key:1", "key:2", "key:3"]
        for key in samples {
            XCTAssertEqual(try c.call("SET", key, key), "+OK\r\n")
            let slot = Array(key.utf8).withUnsafeBytes { hashSlot($0) }
            let server = slot <= 5460 ? 0 : slot <= 10922 ? 1 : 2
            XCTAssertEqual(try backends[server].call("GET", key), "$\(key.utf8.count)\r\n\(key)\r\n", "\(key) slot \(slot)")
        }
    }

    func testRealClientsRedisCliAndBenchmark() throws {
        let backends = try [group.redis(), group.redis()]
        let tern = try startTern(backends)
        let run = ProcessGroup.run
        XCTAssertEqual(try run("/usr/bin/redis-cli", ["-p", "\(tern.port)", "SET", "cli", "works"]).1, "OK\n")
        XCTAssertEqual(try run("/usr/bin/redis-cli", ["-p", "\(tern.port)", "GET", "cli"]).1, "works\n")
        let (status, text) = try run("/usr/bin/redis-benchmark", ["-p", "\(tern.port)", "-t", "set,get,mset", "-n", "20000", "-P", "16", "-r", "1000", "-q"])
        XCTAssertEqual(status, 0, text)
        for test in ["SET:", "GET:", "MSET (10 keys):"] { XCTAssertTrue(text.contains(test), text) }
        XCTAssertFalse(text.contains("ERR"), text)
        // redis-py with its defaults (it sends CLIENT SETINFO on connect in versions >= 5).
        let python = ["python3", "/usr/bin/python3"].first { interpreter in
            (try? run("/usr/bin/env", [interpreter, "-c", "import redis"]).0) == 0
        }
        guard let python else { throw XCTSkip("redis-py is not installed (Deploy/install-packages.sh installs it)") }
        let script = """
        import redis
        r = redis.Redis(port=\(tern.port), client_name="tester")
        assert r.ping()
        r.set("py", "thon")
        assert r.get("py") == b"thon"
        r.mset({"a%d" % i: i for i in range(50)})
        assert r.mget(["a%d" % i for i in range(50)]) == [str(i).encode() for i in range(50)]
        assert r.delete(*["a%d" % i for i in range(50)]) == 50
        assert r.client_getname() == "tester"
        p = r.pipeline(transaction=False)
        for i in range(100): p.incr("counter")
        assert p.execute()[-1] == 100
        print("redis-py", redis.__version__, "ok")
        """
        let (pyStatus, pyText) = try run("/usr/bin/env", [python, "-c", script])
        XCTAssertEqual(pyStatus, 0, pyText)
        XCTAssertTrue(pyText.contains("ok"), pyText)
    }

    /// Tern out of descriptors for a backend connection: the requests fail with the reason, and
    /// the server is not counted as failing. Counted, a healthy server was ejected for
    /// `server_retry_timeout` (`auto_eject_hosts`) and its keys read as misses elsewhere
    /// (resource limits sweep 30).
    ///
    /// A memcached pool: a Redis pool's INFO poller opens backend connections of its own now and
    /// then, so the descriptors left free moved under the test (an ASan run in CI).
    func testTernOutOfDescriptorsDoesNotEjectAHealthyServer() throws {
        // A sanitizer's runtime opens descriptors of its own in the Tern it watches, so the room
        // counted here is not the room left (both clients refused in CI's ASan stage).
        if let sanitizer = ProcessInfo.processInfo.environment["TERN_SANITIZED"] { throw XCTSkip("descriptor counts under \(sanitizer)") }
        let backends = try [group.memcached(), group.memcached()]
        let port = ProcessGroup.freePort()
        let text = "cache:\n  listen: 127.0.0.1:\(port)\n  hash: md5\n  distribution: ketama\n  timeout: 2000\n  auto_eject_hosts: true\n"
            + "  server_failure_limit: 1\n  server_retry_timeout: 30000\n  servers:\n" + backends.map { "   - \($0.address):1\n" }.joined()
        try group.tern(config: text, arguments: ["--threads", "1"], waitPort: port)
        let pool = try ConfigLoader.load(text: text, file: "test").pools[0]
        let key = keys(on: 0, pool)[0]
        let pid = try XCTUnwrap(group.processes.last?.processIdentifier)
        // Room for two clients and nothing more: the limit is on descriptor numbers, and a new
        // one takes the lowest free.
        let used = Set(try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").compactMap { Int($0) })
        var limit = 0, free = 0
        while free < 2 {
            if !used.contains(limit) { free += 1 }
            limit += 1
        }
        XCTAssertEqual(try ProcessGroup.run("/usr/bin/prlimit", ["--pid", "\(pid)", "--nofile=\(limit):\(limit)"]).0, 0)
        let first = try TestClient(port: port), second = try TestClient(port: port)
        XCTAssertEqual(try first.request("version\r\n", until: "\r\n").hasPrefix("VERSION "), true)
        XCTAssertEqual(try second.request("version\r\n", until: "\r\n").hasPrefix("VERSION "), true)
        XCTAssertEqual(try first.request("set \(key) 0 0 1\r\nv\r\n", until: "\r\n"),
                       "SERVER_ERROR Too many open files (Tern's own limit; the server is not counted as failing)\r\n")
        second.close()
        // (Until Tern has read the close and its descriptor is free.)
        let stored = eventually("STORED\r\n") { (try? first.request("set \(key) 0 0 1\r\nv\r\n", until: "\r\n")) ?? "no reply" }
        XCTAssertEqual(stored, "STORED\r\n")
        XCTAssertEqual(try TestClient(port: backends[0].port).request("get \(key)\r\n", until: "END\r\n"), "VALUE \(key) 0 1\r\nv\r\nEND\r\n",
                       "still placed on its server: not ejected")
        XCTAssertFalse(group.ternLog().contains("ejecting server"), group.ternLog())
    }


    /// Large requests count toward a client's window as large replies do: pipelined 8 MB SETs
    /// against a paused server have one or two in flight, not 256 (100 × 40 MB took Tern from
    /// 27 MB to 3.9 GB; resource limits sweep 30). The rest wait in the client's socket.
    func testLargeRequestsInFlightAreBoundedPerClient() throws {
        let backend = try group.redis()
        let tern = try startTern([backend], threads: 1)
        let pid = try XCTUnwrap(group.processes.last?.processIdentifier)
        func residentMB() -> Int {
            let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
            return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) / 1024
        }
        let client = try TestClient(port: tern.port)
        XCTAssertEqual(try client.call("PING"), "+PONG\r\n")
        let before = residentMB()
        backend.pause()
        let value = String(repeating: "v", count: 8 << 20)
        let request = TestClient.encode(["SET", "big", value])
        // Sends only, while this thread only measures, then reads once the sender is done.
        final class Lent: @unchecked Sendable { let client: TestClient; init(_ client: TestClient) { self.client = client } }
        let lent = Lent(client), sent = Atomic<Bool>(false)
        Thread {
            for _ in 0..<30 { try? lent.client.send(request) }
            sent.store(true, ordering: .relaxed)
        }.start()
        // (Within the pool's 2 s timeout.)
        usleep(1_000_000)
        let during = residentMB()
        backend.resume()
        while !sent.load(ordering: .relaxed) { usleep(10_000) }
        let replies = try client.receiveReplies(30)
        XCTAssertEqual(replies, Array(String(repeating: "+OK\r\n", count: 30).utf8))
        XCTAssertLessThan(during - before, 100, "resident MB: \(before) before, \(during) with 240 MB of SETs pipelined")
        print("resident: \(before) MB before, \(during) MB with 30 SETs of 8 MB pipelined against a paused server")
    }

}
