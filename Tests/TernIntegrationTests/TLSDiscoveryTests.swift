import Foundation
import XCTest
@testable import TernCore

/// `server_tls` beyond the data path: a Redis Cluster whose nodes speak only TLS (the slot-map
/// discovery and the INFO poller connect with TLS too), and a Sentinel pool whose masters and
/// sentinels speak only TLS (`sentinel: {tls: true}`), followed through a `SENTINEL FAILOVER`.
final class TLSDiscoveryTests: XCTestCase {
    var group: ProcessGroup!
    var certificates: TestCertificates!

    override func setUpWithError() throws {
        group = ProcessGroup()
        certificates = try TestCertificates(in: group.directory)
    }

    override func tearDown() {
        if let run = testRun, run.failureCount > 0 { print(group.ternLog().suffix(4000)) }
        group.stopAll()
    }

    /// Options every TLS-only Redis process here gets (server and, for the cluster bus and
    /// replication, client certificate: the test CA's "localhost" one).
    var tlsOptions: [String] {
        ["--tls-cert-file", certificates.serverCert, "--tls-key-file", certificates.serverKey, "--tls-ca-cert-file", certificates.ca,
         "--tls-auth-clients", "no", "--tls-replication", "yes"]
    }

    /// redis-cli over TLS to `port`; its output without the trailing newline.
    func cli(_ port: Int, _ arguments: String...) throws -> String {
        let (status, output) = try ProcessGroup.run("/usr/bin/redis-cli", ["--tls", "--cacert", certificates.ca, "-h", "127.0.0.1", "-p", "\(port)"] + arguments)
        guard status == 0 else { throw TestError("redis-cli -p \(port) \(arguments.joined(separator: " ")): \(output)") }
        return output.hasSuffix("\n") ? String(output.dropLast()) : output
    }

    /// Three TLS-only masters (`--port 0 --tls-port`, cluster bus and replication over TLS)
    /// joined with `redis-cli --tls --cluster create`; a Tern `redis_cluster` pool with
    /// `server_tls: {ca}` finds the slot map over TLS, follows a MOVED after a slot is moved to
    /// another node (and refreshes the map over TLS), serves every one of the 16384 slots to
    /// redis-py, and its INFO shows the nodes' figures (the poller reads INFO over TLS).
    func testRedisClusterWithTLSOnlyNodes() throws {
        let ports = (0..<3).map { _ in ProcessGroup.freePort() }
        for port in ports {
            let bus = ProcessGroup.freePort()
            _ = try group.launch("/usr/bin/redis-server", [
                "--port", "0", "--tls-port", "\(port)", "--bind", "127.0.0.1", "--tls-cluster", "yes",
                "--cluster-enabled", "yes", "--cluster-port", "\(bus)", "--cluster-config-file", "\(group.directory)/nodes-\(port).conf",
                "--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no",
                "--save", "", "--appendonly", "no", "--dir", group.directory,
            ] + tlsOptions, log: "redis-\(port).log")
        }
        for port in ports { try group.waitForPort(port) }
        let (status, output) = try ProcessGroup.run("/usr/bin/redis-cli", ["--tls", "--cacert", certificates.ca, "--cluster", "create"]
                                                    + ports.map { "127.0.0.1:\($0)" } + ["--cluster-replicas", "0", "--cluster-yes"])
        XCTAssertEqual(status, 0, output)
        let ok = eventually("ok", within: 20) {
            ports.allSatisfy { (try? cli($0, "CLUSTER", "INFO"))?.contains("cluster_state:ok") == true } ? "ok" : "waiting"
        }
        XCTAssertEqual(ok, "ok")

        let port = ProcessGroup.freePort()
        try group.tern(config: """
            rc:
              listen: 127.0.0.1:\(port)
              redis: true
              distribution: redis_cluster
              timeout: 2000
              server_tls: {ca: "\(certificates.ca)"}
              servers: ["127.0.0.1:\(ports[0]):1"]
            """, arguments: ["--threads", "2"], waitPort: port)
        let tern = try TestClient(port: port)
        let cluster = try tern.call("INFO", "cluster")
        XCTAssertTrue(cluster.contains("cluster_state:ok\r\n"), cluster)
        XCTAssertTrue(cluster.contains("cluster_masters:3\r\n"), cluster)
        XCTAssertTrue(cluster.contains("cluster_slots_assigned:16384\r\n"), cluster)

        // A slot moved to another master behind Tern's back (an empty slot: no keys to carry):
        // the old owner answers -MOVED, Tern follows it to the new owner over TLS.
        let key = "moved:key"
        let slot = try cli(ports[0], "CLUSTER", "KEYSLOT", key)
        var owner = 0
        var ids: [Int: String] = [:]
        for line in try cli(ports[0], "CLUSTER", "NODES").split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count >= 8, let colon = fields[1].firstIndex(of: ":"), let at = fields[1].firstIndex(of: "@"),
                  let nodePort = Int(fields[1][fields[1].index(after: colon)..<at]) else { continue }
            ids[nodePort] = String(fields[0])
            for range in fields.dropFirst(8) {
                let bounds = range.split(separator: "-").compactMap { Int($0) }
                if bounds.count == 2, let slot = Int(slot), (bounds[0]...bounds[1]).contains(slot) { owner = nodePort }
            }
        }
        XCTAssertEqual(ids.count, 3)
        let target = try XCTUnwrap(ports.first { $0 != owner && owner != 0 })
        // Redis's own procedure (as `redis-cli --cluster reshard` does it): importing and
        // migrating, then the new owner first, so that it bumps its epoch and wins.
        XCTAssertEqual(try cli(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[owner]!), "OK")
        XCTAssertEqual(try cli(owner, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target]!), "OK")
        for node in [target] + ports.filter({ $0 != target }) {
            XCTAssertEqual(try cli(node, "CLUSTER", "SETSLOT", slot, "NODE", ids[target]!), "OK")
        }
        XCTAssertEqual(try tern.call("SET", key, "after-move"), "+OK\r\n")
        XCTAssertEqual(try tern.call("GET", key), "$10\r\nafter-move\r\n")
        XCTAssertEqual(try cli(target, "GET", key), "after-move", "the key is on the slot's new owner")
        XCTAssertEqual(try cli(owner, "CLUSTER", "COUNTKEYSINSLOT", slot), "0")
        let moved = try tern.call("INFO", "cluster")
        XCTAssertFalse(moved.contains("cluster_redirects_moved:0\r\n"), "the old owner's MOVED was followed: \(moved)")
        // The MOVED asked for a new map: read over TLS from the nodes.
        XCTAssertEqual(eventually("2", within: 3) { (try? tern.call("INFO", "cluster"))?.contains("cluster_slot_map_version:2\r\n") == true ? "2" : "1" }, "2",
                       (try? tern.call("INFO", "cluster")) ?? "")

        // Every slot, through redis-py: one key per slot (redis-py's own CRC16 picks them).
        try python("""
            from redis.crc import key_slot
            keys, seen, i = [], set(), 0
            while len(seen) < 16384:
                k = 'k:%d' % i
                s = key_slot(k.encode())
                if s not in seen:
                    seen.add(s); keys.append(k)
                i += 1
            r = redis.Redis(host='127.0.0.1', port=\(port), socket_timeout=10)
            p = r.pipeline(transaction=False)
            for k in keys: p.set(k, 'v-' + k)
            assert p.execute() == [True] * 16384
            p = r.pipeline(transaction=False)
            for k in keys: p.get(k)
            assert p.execute() == [('v-' + k).encode() for k in keys]
            assert r.mget(keys[:500]) == [('v-' + k).encode() for k in keys[:500]]
            assert r.dbsize() == 16385, r.dbsize()
            # INFO through Tern: the nodes' own figures, fetched over TLS by the poller.
            deadline = time.time() + 5
            while True:
                info = r.info()
                if info.get('backends_up') == 3 and info.get('db0', {}).get('keys') == 16385: break
                assert time.time() < deadline, info
                time.sleep(0.2)
            assert info['backends_down'] == 0, info
            assert info['used_memory'] > 0 and info['total_commands_processed'] > 16384, info
            """)
        // Straight to the nodes: the keys are spread over all three.
        let counts = try ports.map { Int(try cli($0, "DBSIZE")) ?? -1 }
        XCTAssertEqual(counts.reduce(0, +), 16385, "\(counts)")
        XCTAssertTrue(counts.allSatisfy { $0 > 4000 }, "\(counts)")
    }

    /// A Sentinel pool where everything speaks only TLS: master, replica and sentinel
    /// (`sentinel: {tls: true}` with the pool's `server_tls`). redis-py works through Tern; after
    /// `SENTINEL FAILOVER` the writes go to the promoted replica, with the data written before.
    func testSentinelWithTLSMastersAndSentinels() throws {
        let masterPort = ProcessGroup.freePort(), replicaPort = ProcessGroup.freePort()
        let common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", group.directory, "--repl-diskless-sync-delay", "0"] + tlsOptions
        _ = try group.launch("/usr/bin/redis-server", ["--port", "0", "--tls-port", "\(masterPort)"] + common, log: "redis-\(masterPort).log")
        try group.waitForPort(masterPort)
        _ = try group.launch("/usr/bin/redis-server", ["--port", "0", "--tls-port", "\(replicaPort)", "--replicaof", "127.0.0.1", "\(masterPort)"] + common,
                             log: "redis-\(replicaPort).log")
        try group.waitForPort(replicaPort)
        let sentinel = ProcessGroup.freePort()
        let path = group.directory + "/sentinel-\(sentinel).conf"
        try """
            port 0
            tls-port \(sentinel)
            bind 127.0.0.1
            dir \(group.directory)
            tls-cert-file \(certificates.serverCert)
            tls-key-file \(certificates.serverKey)
            tls-ca-cert-file \(certificates.ca)
            tls-auth-clients no
            tls-replication yes
            sentinel monitor m1 127.0.0.1 \(masterPort) 1
            sentinel down-after-milliseconds m1 1000
            sentinel failover-timeout m1 5000

            """.write(toFile: path, atomically: true, encoding: .utf8)
        _ = try group.launch("/usr/bin/redis-server", [path, "--sentinel"], log: "sentinel-\(sentinel).log")
        try group.waitForPort(sentinel)
        let ready = eventually("ready", within: 20) {
            let replication = (try? cli(replicaPort, "INFO", "replication")) ?? ""
            let master = (try? cli(sentinel, "SENTINEL", "MASTER", "m1")) ?? ""
            return replication.contains("master_link_status:up") && master.contains("num-slaves\n1\n") ? "ready" : "waiting"
        }
        XCTAssertEqual(ready, "ready")

        // Without `tls: true` the sentinels would be asked in plain text (a config without
        // server_tls cannot ask for it).
        let badPath = group.directory + "/bad.yml"
        try "s:\n  listen: 127.0.0.1:\(ProcessGroup.freePort())\n  redis: true\n  sentinel: {addresses: [\"127.0.0.1:\(sentinel)\"], tls: true}\n  servers: [\"m1:1\"]\n"
            .write(toFile: badPath, atomically: true, encoding: .utf8)
        let (badStatus, badOutput) = try ProcessGroup.runTern(["-t", "-c", badPath])
        XCTAssertNotEqual(badStatus, 0, badOutput)
        XCTAssertTrue(badOutput.contains("server_tls"), badOutput)

        let port = ProcessGroup.freePort(), frontPort = ProcessGroup.freePort(), frontBackend = try group.redis()
        // Another pool's certificate, which is being replaced on disk when the failover comes.
        let rotCert = group.directory + "/rot.crt", rotKey = group.directory + "/rot.key"
        try FileManager.default.copyItem(atPath: certificates.serverCert, toPath: rotCert)
        try FileManager.default.copyItem(atPath: certificates.serverKey, toPath: rotKey)
        try group.tern(config: """
            s:
              listen: 127.0.0.1:\(port)
              redis: true
              timeout: 1000
              server_tls: {ca: "\(certificates.ca)"}
              sentinel:
                addresses: ["127.0.0.1:\(sentinel)"]
                tls: true
              servers: ["m1:1"]
            front:
              listen: 127.0.0.1:\(frontPort)
              redis: true
              tls: {cert: "\(rotCert)", key: "\(rotKey)"}
              servers: ["\(frontBackend.address):1"]
            """, arguments: ["--threads", "2"], waitPort: port)
        let before = try TestClient(port: port).call("INFO", "sentinel")
        XCTAssertTrue(before.contains("sentinel_masters_known:1\r\n"), before)
        XCTAssertTrue(before.contains("address=127.0.0.1:\(masterPort)"), before)
        try python("""
            r = redis.Redis(host='127.0.0.1', port=\(port))
            p = r.pipeline(transaction=False)
            for i in range(300): p.set('s:%d' % i, 'before-%d' % i)
            assert p.execute() == [True] * 300
            assert r.mget(['s:%d' % i for i in range(300)]) == [b'before-%d' % i for i in range(300)]
            """)
        XCTAssertEqual(try cli(masterPort, "GET", "s:299"), "before-299")
        // The replica has everything before it is promoted.
        XCTAssertEqual(eventually("300", within: 5) { (try? cli(replicaPort, "DBSIZE")) ?? "?" }, "300")

        // Tern's subscription to +switch-master is open on the sentinel's TLS port.
        let subscribed = eventually("subscribed", within: 3) {
            ((try? cli(sentinel, "CLIENT", "LIST")) ?? "").split(separator: "\n").contains { $0.contains("sub=2") && $0.contains("cmd=subscribe") } ? "subscribed" : "no"
        }
        XCTAssertEqual(subscribed, "subscribed", (try? cli(sentinel, "CLIENT", "LIST")) ?? "")
        // The other pool's key is missing (a rotation half done, no SIGHUP yet): the failover
        // is followed all the same, with the TLS contexts in service (TLS sweep 32: every
        // apply of the new address was refused for the missing file, and writes went to the
        // demoted master, where they were lost).
        try FileManager.default.removeItem(atPath: rotKey)
        XCTAssertEqual(try cli(sentinel, "SENTINEL", "FAILOVER", "m1"), "OK")
        // Tern learns the new address from the TLS sentinel (its +switch-master subscription or
        // its poll) and checks it with ROLE over TLS.
        let started = Date()
        let switched = eventually("switched", within: 20) {
            (try? TestClient(port: port).call("INFO", "sentinel"))?.contains("address=127.0.0.1:\(replicaPort)") == true ? "switched" : "waiting"
        }
        XCTAssertEqual(switched, "switched")
        print(String(format: "TLS sentinel failover followed by Tern after %.2f s", Date().timeIntervalSince(started)))
        try python("""
            r = redis.Redis(host='127.0.0.1', port=\(port), socket_timeout=2)
            assert r.set('s:after', 'after-failover') is True
            assert r.get('s:after') == b'after-failover'
            assert r.get('s:0') == b'before-0' and r.get('s:299') == b'before-299'
            assert r.dbsize() == 301, r.dbsize()
            # INFO's backend figures come from the new master, polled over TLS.
            deadline = time.time() + 5
            while True:
                info = r.info()
                if info.get('backends_up') == 1 and info.get('db0', {}).get('keys') == 301: break
                assert time.time() < deadline, info
                time.sleep(0.2)
            """)
        XCTAssertEqual(try cli(replicaPort, "GET", "s:after"), "after-failover", "writes go to the promoted replica")
        XCTAssertEqual(try cli(sentinel, "SENTINEL", "get-master-addr-by-name", "m1"), "127.0.0.1\n\(replicaPort)")
        XCTAssertEqual(try cli(replicaPort, "ROLE").split(separator: "\n").first, "master")
        let after = try TestClient(port: port).call("INFO", "sentinel")
        XCTAssertTrue(after.contains("sentinel_switches:1\r\n"), after)
        XCTAssertTrue(after.contains("address=127.0.0.1:\(replicaPort)"), after)
        XCTAssertFalse(group.ternLog().contains("reload (sentinel master address) rejected"), group.ternLog())
        // The other pool still serves TLS with the certificate it had.
        let (status, output) = try ProcessGroup.run("/usr/bin/redis-cli", ["--tls", "--cacert", certificates.ca, "-h", "127.0.0.1", "-p", "\(frontPort)", "PING"])
        XCTAssertEqual(status, 0, output)
        XCTAssertEqual(output, "PONG\n")
    }
}
