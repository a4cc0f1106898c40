import XCTest
@testable import TernCore

/// `distribution: redis_cluster` facts, in memory: `CLUSTER SLOTS` replies (as Redis 7.0 writes
/// them), `-MOVED`/`-ASK`/`-TRYAGAIN` errors, the pool as workers route it, config rules.
final class RedisClusterTopologyTests: XCTestCase {
    /// A 3-master cluster as `CLUSTER SLOTS` answers it: masters out of name order, one master
    /// with two ranges, replicas, a node id, an empty host ("the address you asked").
    static let slotsReply = Array(("*4\r\n"
        + "*4\r\n:5461\r\n:10922\r\n*4\r\n$9\r\n127.0.0.1\r\n:7001\r\n$4\r\nid-1\r\n*0\r\n*4\r\n$9\r\n127.0.0.1\r\n:7004\r\n$4\r\nid-4\r\n*0\r\n"
        + "*3\r\n:0\r\n:5460\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$4\r\nid-0\r\n"
        + "*4\r\n:10923\r\n:16000\r\n*3\r\n$0\r\n\r\n:7002\r\n$4\r\nid-2\r\n*3\r\n$9\r\n127.0.0.1\r\n:7005\r\n$4\r\nid-5\r\n"
        + "*3\r\n:16001\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$4\r\nid-0\r\n").utf8)

    /// Masters a redirect named that `CLUSTER NODES` lists with no slot (a node being added,
    /// importing its first slot) join the map as servers with no slot, in name order, the slots
    /// following their masters, and are asked last by discovery; a slotless master no redirect
    /// named (a node on its way to becoming a replica) does not. Names `CLUSTER NODES` lists
    /// otherwise (failed, suspected, handshaking, address-less or disconnected, a replica,
    /// serving slots) are settled; names it does not list stay wanted.
    func testSlotlessMastersFromClusterNodes() throws {
        let (value, _) = try XCTUnwrap(RespValue.decode(Self.slotsReply))
        let map = try XCTUnwrap(ClusterSlotMap.parse(clusterSlots: value, askedHost: "10.0.0.9"))
        let nodes = """
            id-0 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 16001-16383
            id-1 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922 [5462->-id-9]
            id-2 :7002@17002 master - 0 0 3 connected 10923-16000
            id-4 127.0.0.1:7004@17004 slave id-1 0 0 2 connected
            id-9 127.0.0.1:7009@17009 master - 0 0 0 connected [5462-<-id-1]
            id-8 10.0.0.8:6999@16999 master - 0 0 0 connected
            id-7 127.0.0.1:7007@17007 master,fail - 0 0 0 disconnected
            id-6 127.0.0.1:7006@17006 handshake - 0 0 0 connected
            id-5 127.0.0.1:7005@17005 master - 0 0 0 disconnected
            id-3 :0@0 master,noaddr - 0 0 0 connected
            id-10 127.0.0.1:7010@17010 master,fail? - 0 0 0 connected
            id-11 127.0.0.1:7011@17011 master - 0 0 0 connected
            """
        let wanted: Set = ["10.0.0.8:6999", "127.0.0.1:7009", "127.0.0.1:7007", "127.0.0.1:7006", "127.0.0.1:7005", "127.0.0.1:7010",
                           "127.0.0.1:7001", "127.0.0.1:7004", "127.0.0.1:7999"]
        let (added, settled, unlisted) = map.addingSlotlessMasters(clusterNodes: nodes, askedHost: "10.0.0.9", wanted: wanted)
        XCTAssertEqual(added.masters.map(\.name), ["10.0.0.8:6999", "10.0.0.9:7002", "127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7009"],
                       "7011 is a slotless master no redirect named")
        XCTAssertEqual(added.masters.last?.id, "id-9")
        XCTAssertEqual(added.replicas.map { $0.map(\.name) }, [[], ["127.0.0.1:7005"], [], ["127.0.0.1:7004"], []])
        for slot in [0, 5460, 5461, 5462, 10922, 10923, 16000, 16001, 16383] {
            XCTAssertEqual(added.masters[Int(added.slotMasters[slot])].name, map.masters[Int(map.slotMasters[slot])].name, "slot \(slot)")
        }
        XCTAssertEqual(added.assignedSlots, 16384)
        XCTAssertEqual(settled, ["127.0.0.1:7007", "127.0.0.1:7006", "127.0.0.1:7005", "127.0.0.1:7010", "127.0.0.1:7001", "127.0.0.1:7004"],
                       "7999 is not listed: still wanted; the added ones too")
        XCTAssertEqual(unlisted, ["127.0.0.1:7999"], "left out of the answer")
        XCTAssertEqual(map.addingSlotlessMasters(clusterNodes: "", askedHost: "h", wanted: ["a:1", "b:2"]).unlisted, ["a:1", "b:2"])
        XCTAssertEqual(added.allNodes.map(\.name).suffix(2), ["10.0.0.8:6999", "127.0.0.1:7009"], "masters serving no slot are asked last")
        XCTAssertEqual(map.addingSlotlessMasters(clusterNodes: nodes, askedHost: "10.0.0.9", wanted: []).map, map, "nothing wanted")
        XCTAssertEqual(map.addingSlotlessMasters(clusterNodes: "", askedHost: "h", wanted: wanted).map, map, "no answer: the map of the slots")
        XCTAssertEqual(added.addingSlotlessMasters(clusterNodes: nodes, askedHost: "10.0.0.9", wanted: wanted).map, added,
                       "masters already in the map stay once")
        // A cluster that announces host names names a new master by its host name too.
        let named = """
            id-0 127.0.0.1:7000@17000,node-0 myself,master - 0 0 1 connected 0-16383
            id-9 127.0.0.1:7009@17009,node-9 master - 0 0 0 connected
            """
        let byName = ClusterSlotMap(masters: [ClusterNode(host: "node-0", port: 7000, id: "id-0")], replicas: [[]],
                                    slotMasters: [Int32](repeating: 0, count: hashSlotCount))
        XCTAssertEqual(byName.addingSlotlessMasters(clusterNodes: named, askedHost: "h", wanted: ["node-9:7009"]).map.masters.map(\.name),
                       ["node-0:7000", "node-9:7009"])
        let byAddress = ClusterSlotMap(masters: [ClusterNode(host: "127.0.0.1", port: 7000, id: "id-0")], replicas: [[]],
                                       slotMasters: [Int32](repeating: 0, count: hashSlotCount))
        XCTAssertEqual(byAddress.addingSlotlessMasters(clusterNodes: named, askedHost: "h", wanted: ["127.0.0.1:7009"]).map.masters.map(\.name),
                       ["127.0.0.1:7000", "127.0.0.1:7009"])
    }

    func testClusterSlotsReplyBecomesAMap() throws {
        let (value, length) = try XCTUnwrap(RespValue.decode(Self.slotsReply))
        XCTAssertEqual(length, Self.slotsReply.count)
        let map = try XCTUnwrap(ClusterSlotMap.parse(clusterSlots: value, askedHost: "10.0.0.9"))
        XCTAssertEqual(map.masters.map(\.name), ["10.0.0.9:7002", "127.0.0.1:7000", "127.0.0.1:7001"], "ordered by name; empty host = the asked one")
        XCTAssertEqual(map.masters[1].id, "id-0")
        XCTAssertEqual(map.replicas.map { $0.map(\.name) }, [["127.0.0.1:7005"], [], ["127.0.0.1:7004"]])
        XCTAssertEqual(map.nodeCount, 5)
        XCTAssertEqual(map.assignedSlots, 16384)
        XCTAssertEqual(map.slotMasters[0], 1)
        XCTAssertEqual(map.slotMasters[5460], 1)
        XCTAssertEqual(map.slotMasters[5461], 2)
        XCTAssertEqual(map.slotMasters[10923], 0)
        XCTAssertEqual(map.slotMasters[16383], 1)
        XCTAssertEqual(map.allNodes.first?.name, "10.0.0.9:7002", "masters are asked first")

        // The pool as routed: masters as servers, the map as slots, `{tag}` placement.
        var pool = PoolConfig(name: "rc", line: 1, listen: .tcp(host: "127.0.0.1", port: 1))
        pool.protocolKind = .redis
        pool.distribution = .redisCluster
        let routed = map.applied(to: pool)
        XCTAssertEqual(routed.servers.map(\.name), map.masters.map(\.name))
        let placement = routed.placement()
        for key in ["foo", "{user:1}:a", "bar", "zzz"] {
            let slot = Array(key.utf8).withUnsafeBytes { hashSlot($0) }
            XCTAssertEqual(Array(key.utf8).withUnsafeBytes { placement.server(forKey: $0) }, Int(map.slotMasters[slot]), key)
        }
        XCTAssertNil(pool.placement().server(forHash: 0), "no map: no server")
    }

    func testUnusableRepliesGiveNoMap() {
        for text in ["-ERR This instance has cluster support disabled\r\n", "*0\r\n", "*1\r\n*3\r\n:9\r\n:2\r\n*2\r\n$1\r\na\r\n:1\r\n",
                     "*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$1\r\na\r\n:1\r\n", "*1\r\n*3\r\n:0\r\n:5\r\n*2\r\n$1\r\na\r\n:0\r\n"] {
            let decoded = RespValue.decode(Array(text.utf8))
            XCTAssertNotNil(decoded, text)
            XCTAssertNil(decoded.flatMap { ClusterSlotMap.parse(clusterSlots: $0.value, askedHost: "h") }, text)
        }
        XCTAssertNil(RespValue.decode(Array(Self.slotsReply.dropLast(3))), "incomplete")
        XCTAssertNil(RespValue.decode(Array("*1\r\n$5\r\nab\r\n".utf8)), "short bulk")
        XCTAssertNil(RespValue.decode(Array("*1\r\n".utf8) + Array(repeating: UInt8(ascii: "*"), count: 1) + Array("1\r\n*1\r\n*1\r\n:1\r\n".utf8), maxDepth: 3), "too deep")
    }

    func testRedirectErrors() {
        func parse(_ text: String) -> ClusterRedirect? { Array(text.utf8).withUnsafeBytes { ClusterRedirect.parse($0) } }
        XCTAssertEqual(parse("-MOVED 3999 127.0.0.1:6381\r\n"), ClusterRedirect(isAsk: false, slot: 3999, target: "127.0.0.1:6381"))
        XCTAssertEqual(parse("-ASK 0 10.1.2.3:7000\r\n"), ClusterRedirect(isAsk: true, slot: 0, target: "10.1.2.3:7000"))
        XCTAssertEqual(parse("-MOVED 16383 ::1:7000\r\n")?.target, "::1:7000", "IPv6 hosts are written unbracketed")
        for text in ["-ERR MOVED 1 a:1\r\n", "-MOVED 16384 a:1\r\n", "-MOVED 1 a\r\n", "-MOVED 1 a:0\r\n", "-MOVEDX 1 a:1\r\n", "+MOVED 1 a:1\r\n",
                     "-ASK\r\n", "-TRYAGAIN Multiple keys request during rehashing of slot\r\n"] {
            XCTAssertNil(parse(text), text)
        }
        XCTAssertTrue(Array("-TRYAGAIN Multiple keys request during rehashing of slot\r\n".utf8).withUnsafeBytes { ClusterRedirect.isTryAgain($0) })
        XCTAssertFalse(Array("-TRY\r\n".utf8).withUnsafeBytes { ClusterRedirect.isTryAgain($0) })
    }

    func testConfigRules() throws {
        let base = "rc:\n  listen: 127.0.0.1:1\n  redis: true\n  distribution: redis_cluster\n  servers:\n   - 127.0.0.1:7000:1\n   - 127.0.0.1:7001:1\n"
        let pool = try ConfigLoader.load(text: base, file: "t.yml").pools[0]
        XCTAssertEqual(pool.distribution, .redisCluster)
        XCTAssertEqual(pool.servers.count, 2, "the seeds")
        XCTAssertTrue(pool.slotServers.isEmpty)
        XCTAssertTrue(ConfigRenderer.yaml(TernConfig(path: "t.yml", pools: [pool])).contains("distribution: redis_cluster"))
        XCTAssertNoThrow(try ConfigLoader.load(text: base.replacingOccurrences(of: "  redis: true\n", with: "  redis: true\n  hash_tag: \"{}\"\n"), file: "t.yml"))
        func refused(_ text: String) -> String {
            do {
                _ = try ConfigLoader.load(text: text, file: "t.yml")
                return "accepted"
            } catch {
                return error.description
            }
        }
        XCTAssertTrue(refused(base.replacingOccurrences(of: "  redis: true\n", with: "")).contains("redis_cluster needs a Redis pool"))
        XCTAssertTrue(refused(base.replacingOccurrences(of: "  redis: true\n", with: "  redis: true\n  hash_tag: \"ab\"\n")).contains("only \"{}\""))
        XCTAssertTrue(refused(base + "  slots:\n    a: \"0-16383\"\n").contains("is used only with 'distribution: slots'"))
        XCTAssertTrue(refused(base + "  warmup:\n    servers:\n     - 127.0.0.1:1:1\n").contains("not supported with 'distribution: redis_cluster'"))
        let readFrom = try ConfigLoader.load(text: base.replacingOccurrences(of: "  redis: true\n", with: "  redis: true\n  read_from: prefer_replica\n"), file: "t.yml").pools[0]
        XCTAssertEqual(readFrom.readFrom, .preferReplica)
        XCTAssertTrue(ConfigRenderer.yaml(TernConfig(path: "t.yml", pools: [readFrom])).contains("read_from: prefer_replica"))
        XCTAssertTrue(refused(base.replacingOccurrences(of: "  redis: true\n", with: "  redis: true\n  read_from: slave\n")).contains("must be one of master, prefer_replica, replica"))
        XCTAssertTrue(refused(base.replacingOccurrences(of: "  distribution: redis_cluster\n", with: "  read_from: replica\n")).contains("is used only with 'distribution: redis_cluster'"))
        // The map gives the replicas only when they are read from.
        let map = ClusterSlotMap(masters: [ClusterNode(host: "a", port: 1)], replicas: [[ClusterNode(host: "b", port: 2)]],
                                 slotMasters: [Int32](repeating: 0, count: hashSlotCount))
        XCTAssertEqual(map.applied(to: readFrom).replicaServers.map { $0.map(\.name) }, [["b:2"]])
        XCTAssertTrue(map.applied(to: pool).replicaServers.isEmpty)
        let oldCluster = "p:\n  listen: 127.0.0.1:1\n  redis: true\n  servers:\n   - 127.0.0.1:2:1\n  warmup:\n    distribution: redis_cluster\n    servers:\n     - 127.0.0.1:3:1\n"
        XCTAssertTrue(refused(oldCluster).contains("not supported for a warm-up's old pool"))
    }

    func testSentinelConfig() throws {
        let text = "cache:\n  listen: 127.0.0.1:1\n  redis: true\n  sentinel:\n    addresses: [127.0.0.1:26379, \"[::1]:26380\"]\n    password: s3cret\n  servers:\n   - shard1:1\n   - shard2:2\n"
        let pool = try ConfigLoader.load(text: text, file: "t.yml").pools[0]
        XCTAssertEqual(pool.sentinel?.addresses.map { "\($0.host):\($0.port)" }, ["127.0.0.1:26379", "::1:26380"])
        XCTAssertEqual(pool.sentinel?.password, "s3cret")
        XCTAssertEqual(pool.servers.map(\.name), ["shard1", "shard2"])
        XCTAssertEqual(pool.servers.map(\.weight), [1, 2])
        XCTAssertEqual(pool.servers[0].address, .tcp(host: "shard1", port: 0), "no address until a sentinel names one")
        // Placement comes from the names alone.
        let other = try ConfigLoader.load(text: text.replacingOccurrences(of: "26379", with: "1111"), file: "t.yml").pools[0]
        for key in ["a", "user:1", "session:42"] {
            XCTAssertEqual(Array(key.utf8).withUnsafeBytes { pool.placement().server(forKey: $0) }, Array(key.utf8).withUnsafeBytes { other.placement().server(forKey: $0) })
        }
        // Rendered back (password masked) and loadable again.
        let rendered = ConfigRenderer.yaml(TernConfig(path: "t.yml", pools: [pool]))
        XCTAssertTrue(rendered.contains("sentinel:") && rendered.contains("\"shard2:2\"") && rendered.contains("\"[::1]:26380\"") && !rendered.contains("s3cret"), rendered)
        let again = try ConfigLoader.load(text: ConfigRenderer.yaml(TernConfig(path: "t.yml", pools: [pool]), maskSecrets: false), file: "t.yml").pools[0]
        XCTAssertEqual(again.sentinel, pool.sentinel)
        XCTAssertEqual(again.servers.map { "\($0.name) \($0.weight) \($0.address)" }, pool.servers.map { "\($0.name) \($0.weight) \($0.address)" })

        func refused(_ text: String) -> String {
            do {
                _ = try ConfigLoader.load(text: text, file: "t.yml")
                return "accepted"
            } catch {
                return error.description
            }
        }
        XCTAssertTrue(refused(text.replacingOccurrences(of: "  redis: true\n", with: "")).contains("needs a Redis pool"))
        XCTAssertTrue(refused(text.replacingOccurrences(of: "   - shard2:2\n", with: "   - shard2\n")).contains("expected '<master name>:<weight>'"))
        XCTAssertTrue(refused(text.replacingOccurrences(of: "   - shard2:2\n", with: "   - shard1:2\n")).contains("duplicate master name 'shard1'"))
        XCTAssertTrue(refused(text.replacingOccurrences(of: "    addresses: [127.0.0.1:26379, \"[::1]:26380\"]\n", with: "    addresses: []\n")).contains("needs at least one address"))
        XCTAssertTrue(refused(text.replacingOccurrences(of: "    password: s3cret\n", with: "    pasword: s3cret\n")).contains("unknown key 'pasword'"))
        XCTAssertTrue(refused(text.replacingOccurrences(of: "  redis: true\n", with: "  redis: true\n  distribution: redis_cluster\n")).contains("cannot be used with 'distribution: redis_cluster'"))
    }
}
