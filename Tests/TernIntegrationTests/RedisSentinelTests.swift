import Foundation
import XCTest
@testable import TernCore

/// Sentinel-managed pools against real processes: two master groups (`shard1` with a replica,
/// `shard2` alone) watched by three sentinels (`redis-server --sentinel`). A master killed: the
/// sentinels promote its replica, Tern follows within seconds with the data written before,
/// and keys stay on the same master group (placement is made from the names).
final class RedisSentinelTests: XCTestCase {
    var group: ProcessGroup!
    override func setUp() { group = ProcessGroup() }
    override func tearDown() {
        if let run = testRun, run.failureCount > 0 { print(group.ternLog().suffix(4000)) }
        group.stopAll()
    }

    func sentinelCall(_ port: Int, _ arguments: String...) throws -> String {
        let client = try TestClient(port: port)
        defer { client.close() }
        return try client.call(arguments)
    }

    /// A sentinel that lies: it names `host:port` as every master's address (a replica, in the
    /// test), for Tern's `ROLE` check to catch.
    func startLyingSentinel(port: Int, naming node: Int) throws {
        try startLyingSentinel(port: port, naming: "b\"\(node)\"")
    }

    /// A sentinel that names the port written in `file` (read at each question): a test moves
    /// the master by rewriting it.
    func startScriptedSentinel(port: Int, file: String) throws {
        try startLyingSentinel(port: port, naming: "open(\"\(file)\", \"rb\").read().strip()")
    }

    /// `naming`: a Python expression giving the port, as bytes.
    private func startLyingSentinel(port: Int, naming expression: String) throws {
        try group.pythonServer(port: port, log: "liar-\(port).log", """
        def bulk(text):
            return b"$%d\\r\\n%s\\r\\n" % (len(text), text)
        def serve(connection):
            data = b""
            while True:
                chunk = connection.recv(4096)
                if not chunk:
                    return
                data += chunk
                while data.startswith(b"*") and b"\\r\\n" in data:
                    count = int(data[1:data.index(b"\\r\\n")])
                    position = data.index(b"\\r\\n") + 2
                    words = []
                    for _ in range(count):
                        if b"\\r\\n" not in data[position:]:
                            break
                        end = data.index(b"\\r\\n", position)
                        length = int(data[position + 1:end])
                        if len(data) < end + 2 + length + 2:
                            break
                        words.append(data[end + 2:end + 2 + length])
                        position = end + 2 + length + 2
                    if len(words) < count:
                        break
                    data = data[position:]
                    if len(words) >= 2 and words[1].lower() == b"get-master-addr-by-name":
                        connection.sendall(b"*2\\r\\n" + bulk(b"127.0.0.1") + bulk(\(expression)))
                    else:
                        connection.sendall(b"+OK\\r\\n")
        while True:
            connection, _ = server.accept()
            threading.Thread(target=serve, args=(connection,), daemon=True).start()
        """)
    }

    /// A failover Tern follows fails what is in flight on the old master at once, and on a tie
    /// between sentinels the master in use is kept while it answers master (Sentinel sweep 33;
    /// both fail on 0c5ce24). A write sent to a master that hung waited for it, and when it came
    /// back as a stale master its `+OK` reached the client while the write was lost; and a stale
    /// sentinel listed first took Tern back from the promoted master to the old one.
    func testFailoverFailsRequestsInFlightOnTheOldMasterAndATieKeepsTheCurrentOne() throws {
        let old = try group.redis(), promoted = try group.redis()
        let staleFile = group.directory + "/stale-sentinel", liveFile = group.directory + "/live-sentinel"
        for file in [staleFile, liveFile] { try "\(old.port)".write(toFile: file, atomically: true, encoding: .utf8) }
        let stale = ProcessGroup.freePort(), live = ProcessGroup.freePort()
        try startScriptedSentinel(port: stale, file: staleFile)
        try startScriptedSentinel(port: live, file: liveFile)
        let port = ProcessGroup.freePort()
        // No timeout (twemproxy's default): nothing but the failover ends the request.
        try group.tern(config: "s:\n  listen: 127.0.0.1:\(port)\n  redis: true\n  sentinel:\n    addresses:\n     - 127.0.0.1:\(stale)\n     - 127.0.0.1:\(live)\n  servers:\n   - shard1:1\n",
                       arguments: ["--threads", "1"], waitPort: port)
        let client = try TestClient(port: port, timeout: 8)
        XCTAssertEqual(try client.call("SET", "k", "before"), "+OK\r\n")
        // The master hangs with a write in flight; the live sentinel names the promoted one (a
        // tie with the stale one, which still names the old: ROLE decides, the old one hangs).
        old.pause()
        try client.send(TestClient.encode(["SET", "k", "during"]))
        usleep(300_000)
        try "\(promoted.port)".write(toFile: liveFile, atomically: true, encoding: .utf8)
        let sentAt = Date()
        let reply = String(decoding: try client.receiveReplies(1), as: UTF8.self)
        XCTAssertTrue(reply.hasPrefix("-ERR master moved (failover)"), reply)
        XCTAssertLessThan(Date().timeIntervalSince(sentAt), 4, "failed when Tern followed, not when the old master came back")
        // The old master comes back still saying master: the tie keeps the promoted one.
        old.resume()
        XCTAssertEqual(try client.call("GET", "k"), "$-1\r\n")
        for _ in 0..<15 {
            usleep(200_000)
            XCTAssertEqual(try client.call("SET", "after", "1"), "+OK\r\n")
        }
        XCTAssertEqual(try promoted.call("GET", "after"), "$1\r\n1\r\n")
        XCTAssertEqual(try old.call("GET", "after"), "$-1\r\n", "no write reached the demoted master")
        let info = try client.call("INFO", "sentinel")
        XCTAssertTrue(info.contains("address=127.0.0.1:\(promoted.port)"), info)
    }

    /// A reload that adds a Sentinel pool routes its requests as soon as it is applied: its
    /// masters are asked for during the reload, as at start-up. Before, they were left to the
    /// watcher's next round, and for about 0.1 s the pool answered `master address not known
    /// yet`, or (one server) closed its clients (TLS sweep 32).
    func testReloadAddingASentinelPoolRoutesAtOnce() throws {
        let master = try group.redis(), plain = try group.redis()
        let sentinel = ProcessGroup.freePort()
        let path = group.directory + "/sentinel-\(sentinel).conf"
        try "port \(sentinel)\nbind 127.0.0.1\ndir \(group.directory)\nsentinel monitor shard1 127.0.0.1 \(master.port) 1\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        try group.launch("/usr/bin/redis-server", [path, "--sentinel"], log: "sentinel-\(sentinel).log")
        try group.waitForPort(sentinel)
        let plainPort = ProcessGroup.freePort(), port = ProcessGroup.freePort()
        let first = "plain:\n  listen: 127.0.0.1:\(plainPort)\n  redis: true\n  servers:\n   - \(plain.address):1\n"
        let tern = try group.tern(config: first, arguments: ["--threads", "2"], waitPort: plainPort)
        let configPath = try XCTUnwrap(tern.arguments?[1])
        for round in 0..<3 {
            let added = first + "sent\(round):\n  listen: 127.0.0.1:\(port)\n  redis: true\n  timeout: 1000\n  sentinel:\n    addresses:\n     - 127.0.0.1:\(sentinel)\n"
                + "  servers:\n   - shard1:1\n"
            try (round % 2 == 0 ? added : first).write(toFile: configPath, atomically: true, encoding: .utf8)
            let applied = group.ternLog().components(separatedBy: "reload (SIGHUP) applied").count
            kill(tern.processIdentifier, SIGHUP)
            XCTAssertEqual(eventually("applied", within: 10) {
                group.ternLog().components(separatedBy: "reload (SIGHUP) applied").count > applied ? "applied" : "waiting"
            }, "applied")
            guard round % 2 == 0 else { continue }
            let client = try TestClient(port: port)
            XCTAssertEqual(try client.call("SET", "added:\(round)", "v"), "+OK\r\n", "round \(round)")
            XCTAssertEqual(try master.call("GET", "added:\(round)"), "$1\r\nv\r\n")
        }
        // A master group added to the pool that the sentinel names at a known master's address
        // is refused, as at start-up (review 32: it was checked only against the other new
        // ones, and both groups' keys went to one server).
        let withDuplicate = first + "sent2:\n  listen: 127.0.0.1:\(port)\n  redis: true\n  timeout: 1000\n  hash: md5\n  sentinel:\n    addresses:\n     - 127.0.0.1:\(sentinel)\n"
            + "  servers:\n   - shard1:1\n   - twin:1\n"
        _ = try sentinelCall(sentinel, "SENTINEL", "MONITOR", "twin", "127.0.0.1", "\(master.port)", "1")
        try withDuplicate.write(toFile: configPath, atomically: true, encoding: .utf8)
        let applied = group.ternLog().components(separatedBy: "reload (SIGHUP) applied").count
        kill(tern.processIdentifier, SIGHUP)
        XCTAssertEqual(eventually("applied", within: 10) {
            group.ternLog().components(separatedBy: "reload (SIGHUP) applied").count > applied ? "applied" : "waiting"
        }, "applied")
        let pool = try ConfigLoader.load(text: withDuplicate, file: "t.yml").pools[1]
        let keys = (0..<40).map { "dup:\($0)" }
        let onTwin = keys.filter { key in Array(key.utf8).withUnsafeBytes { pool.placement().server(forKey: $0) } == 1 }
        XCTAssertFalse(onTwin.isEmpty)
        let client = try TestClient(port: port)
        for key in keys {
            let reply = try client.call("SET", key, "v")
            XCTAssertEqual(reply.hasPrefix("+OK"), !onTwin.contains(key), "\(key): \(reply)")
        }
        for key in onTwin { XCTAssertEqual(try master.call("EXISTS", key), ":0\r\n", "nothing of twin's on shard1's server") }
    }

    func testMasterKilledSentinelsPromoteTernFollows() throws {
        // A replica writes the RDB it receives into its directory: the test's, not the package's.
        let fast = ["--repl-diskless-sync-delay", "0", "--dir", group.directory]
        let master1 = try group.redis(extra: fast)
        let replica1 = try group.redis(extra: fast + ["--replicaof", "127.0.0.1", "\(master1.port)"])
        let master2 = try group.redis(extra: fast)
        var sentinels: [Int] = []
        for _ in 0..<3 {
            let port = ProcessGroup.freePort()
            let path = group.directory + "/sentinel-\(port).conf"
            var text = "port \(port)\nbind 127.0.0.1\ndir \(group.directory)\n"
            for (name, master) in [("shard1", master1.port), ("shard2", master2.port)] {
                text += "sentinel monitor \(name) 127.0.0.1 \(master) 2\nsentinel down-after-milliseconds \(name) 1000\nsentinel failover-timeout \(name) 5000\n"
            }
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            try group.launch("/usr/bin/redis-server", [path, "--sentinel"], log: "sentinel-\(port).log")
            sentinels.append(port)
        }
        for port in sentinels { try group.waitForPort(port) }
        // A failover needs the sentinels to know each other and the replica (hello messages).
        let ready = try eventually("ready", within: 20) {
            let info = try sentinelCall(sentinels[0], "SENTINEL", "MASTER", "shard1")
            return info.contains("num-other-sentinels\r\n$1\r\n2\r\n") && info.contains("num-slaves\r\n$1\r\n1\r\n") ? "ready" : "waiting"
        }
        XCTAssertEqual(ready, "ready")

        // The first sentinel Tern asks lies: it names shard1's replica as every master.
        let liar = ProcessGroup.freePort()
        try startLyingSentinel(port: liar, naming: replica1.port)
        let port = ProcessGroup.freePort()
        let config = "cache:\n  listen: 127.0.0.1:\(port)\n  redis: true\n  distribution: ketama\n  timeout: 1000\n  sentinel:\n    addresses:\n"
            + ([liar] + sentinels).map { "     - 127.0.0.1:\($0)\n" }.joined() + "  servers:\n   - shard1:1\n   - shard2:1\n"
        try group.tern(config: config, arguments: ["--threads", "2"], waitPort: port)
        let pool = try ConfigLoader.load(text: config, file: "t.yml").pools[0]
        func shard(of key: String) -> Int { Array(key.utf8).withUnsafeBytes { pool.placement().server(forKey: $0)! } }
        let client = try TestClient(port: port)
        let keys = (0..<60).map { "session:user-\($0 * 7919)" }
        for key in keys { XCTAssertEqual(try client.call("SET", key, "v\(key)"), "+OK\r\n") }
        let onFirst = keys.filter { shard(of: $0) == 0 }, onSecond = keys.filter { shard(of: $0) == 1 }
        XCTAssertFalse(onFirst.isEmpty)
        XCTAssertFalse(onSecond.isEmpty)
        for key in onFirst { XCTAssertEqual(try master1.call("GET", key), "$\(("v" + key).utf8.count)\r\nv\(key)\r\n", "\(key) on shard1's master") }
        for key in onSecond { XCTAssertEqual(try master2.call("GET", key), "$\(("v" + key).utf8.count)\r\nv\(key)\r\n", "\(key) on shard2's master") }
        let synced = try eventually("synced", within: 10) {
            func offset(_ text: String, _ field: String) -> Substring { text.split(separator: "\r\n").first { $0.hasPrefix(field) }?.dropFirst(field.count) ?? "?" }
            return offset(try master1.call("INFO", "replication"), "master_repl_offset:") == offset(try replica1.call("INFO", "replication"), "slave_repl_offset:") ? "synced" : "behind"
        }
        XCTAssertEqual(synced, "synced")
        let text = try TestClient(port: port).call("INFO", "sentinel")
        XCTAssertTrue(text.contains("master0:name=shard1,address=127.0.0.1:\(master1.port)"), text)
        XCTAssertTrue(text.contains("sentinel_masters_known:2"), text)
        XCTAssertTrue(text.contains("master1:name=shard2,address=127.0.0.1:\(master2.port)"), "the liar was outvoted: \(text)")
        // With one honest sentinel beside it, the liar (listed first) ties: ROLE catches it.
        let tiePort = ProcessGroup.freePort()
        let tieConfig = "tie:\n  listen: 127.0.0.1:\(tiePort)\n  redis: true\n  sentinel:\n    addresses:\n     - 127.0.0.1:\(liar)\n     - 127.0.0.1:\(sentinels[0])\n  servers:\n   - shard1:1\n   - shard2:1\n"
        let startedTie = Date()
        try self.group.tern(config: tieConfig, waitPort: tiePort)
        // What a start-up with sentinels that all answer takes here (a sanitized build starts
        // slower): the guarded ones below are measured against it.
        let answeredStartup = Date().timeIntervalSince(startedTie)
        let tie = try TestClient(port: tiePort).call("INFO", "sentinel")
        XCTAssertTrue(tie.contains("master0:name=shard1,address=127.0.0.1:\(master1.port)") && tie.contains("master1:name=shard2,address=127.0.0.1:\(master2.port)"), tie)
        XCTAssertFalse(tie.contains("sentinel_role_mismatches:0\r\n"), "the replica the liar named was refused by ROLE: \(tie)")
        XCTAssertEqual(try TestClient(port: tiePort).call("GET", onFirst[0]), "$\(("v" + onFirst[0]).utf8.count)\r\nv\(onFirst[0])\r\n")

        // A sentinel of another deployment, listed first, names shard2's master for every group,
        // and one that never answers: while shard1's master is down (named by the real ones
        // until they fail over) its address must not be taken from the odd one out. Before,
        // shard1 went to shard2's master for about 2 s (Sentinel sweep 29).
        let otherDeployment = ProcessGroup.freePort()
        try startLyingSentinel(port: otherDeployment, naming: master2.port)
        let silent = ProcessGroup.freePort()
        try group.pythonServer(port: silent, log: "silent-\(silent).log", """
            held = []
            while True:
                held.append(server.accept()[0])
            """)
        let guardedPort = ProcessGroup.freePort()
        let startedGuarded = Date()
        try self.group.tern(config: "guarded:\n  listen: 127.0.0.1:\(guardedPort)\n  redis: true\n  sentinel:\n    addresses:\n"
                                + ([silent, otherDeployment] + sentinels).map { "     - 127.0.0.1:\($0)\n" }.joined() + "  servers:\n   - shard1:1\n   - shard2:1\n",
                            waitPort: guardedPort)
        // The silent sentinel costs nothing while the others agree (asked one after the other,
        // it cost its 1 s deadline once per master, then once).
        let guardedStartup = Date().timeIntervalSince(startedGuarded)
        XCTAssertLessThan(guardedStartup, answeredStartup + 0.6, "the silent sentinel was waited for (its deadline is 1 s)")
        let guarded = try TestClient(port: guardedPort)
        XCTAssertTrue(try guarded.call("INFO", "sentinel").contains("master0:name=shard1,address=127.0.0.1:\(master1.port)"))

        // A sentinel on a host that is down (SYNs dropped: a listener whose backlog is full),
        // listed first: its connect never finishes, and the others still answer at once (the
        // first version of parallel questions wrote to it before the connect was done and
        // waited its deadline, so every other answer came too late; review 30).
        let stalled = ProcessGroup.freePort()
        try group.pythonServer(port: stalled, backlog: 0, waitsForPort: false, log: "stalled-\(stalled).log", """
            fill = []
            for _ in range(3):
                client = socket.socket()
                client.setblocking(False)
                try:
                    client.connect(("127.0.0.1", \(stalled)))
                except BlockingIOError:
                    pass
                fill.append(client)
            while True:
                time.sleep(60)
            """)
        usleep(300_000)
        let stalledPort = ProcessGroup.freePort()
        let startedStalled = Date()
        try self.group.tern(config: "stalled:\n  listen: 127.0.0.1:\(stalledPort)\n  redis: true\n  sentinel:\n    addresses:\n"
                                + ([stalled] + sentinels).map { "     - 127.0.0.1:\($0)\n" }.joined() + "  servers:\n   - shard1:1\n   - shard2:1\n",
                            waitPort: stalledPort)
        let stalledStartup = Date().timeIntervalSince(startedStalled)
        XCTAssertLessThan(stalledStartup, answeredStartup + 0.6, "the stalled sentinel was waited for (its deadline is 1 s)")
        let stalledInfo = try TestClient(port: stalledPort).call("INFO", "sentinel")
        XCTAssertTrue(stalledInfo.contains("master0:name=shard1,address=127.0.0.1:\(master1.port)") && stalledInfo.contains("master1:name=shard2,address=127.0.0.1:\(master2.port)"), stalledInfo)

        // A Tern without traffic: only the sentinels' +switch-master (or its poll) tells it.
        let idlePort = ProcessGroup.freePort()
        try self.group.tern(config: "idle:\n  listen: 127.0.0.1:\(idlePort)\n  redis: true\n  sentinel:\n    addresses:\n"
                                + sentinels.map { "     - 127.0.0.1:\($0)\n" }.joined() + "  servers:\n   - shard1:1\n   - shard2:1\n", waitPort: idlePort)
        let idle = try TestClient(port: idlePort)
        XCTAssertTrue(try idle.call("INFO", "sentinel").contains("address=127.0.0.1:\(master1.port)"))
        let innocent = RedisClusterTests.InnocentClient(port: port, keys: onSecond)
        usleep(200_000)
        master1.kill()
        let killedAt = Date()
        var switchedAt: Date?
        var firstSuccess: Date?
        var failures = 0
        var guardedWentAstray = ""
        var guardedSwitched: Date?
        func watchGuarded() throws {
            let guardedInfo = try guarded.call("INFO", "sentinel")
            if guardedInfo.contains("master0:name=shard1,address=127.0.0.1:\(master2.port)") { guardedWentAstray = guardedInfo }
            if guardedSwitched == nil, guardedInfo.contains("master0:name=shard1,address=127.0.0.1:\(replica1.port)") { guardedSwitched = Date() }
        }
        client.setTimeout(3)
        while Date().timeIntervalSince(killedAt) < 30 {
            try watchGuarded()
            if switchedAt == nil, (try? sentinelCall(sentinels[1], "SENTINEL", "get-master-addr-by-name", "shard1"))?.contains("\(replica1.port)") == true {
                switchedAt = Date()
            }
            let reply = (try? client.call("GET", onFirst[0])) ?? "timeout"
            if reply == "$\(("v" + onFirst[0]).utf8.count)\r\nv\(onFirst[0])\r\n" {
                firstSuccess = Date()
                break
            }
            failures += 1
            usleep(50_000)
        }
        var idleSwitched: Date?
        while idleSwitched == nil, Date().timeIntervalSince(killedAt) < 30 {
            try watchGuarded()
            if try idle.call("INFO", "sentinel").contains("master0:name=shard1,address=127.0.0.1:\(replica1.port)") { idleSwitched = Date() } else { usleep(20_000) }
        }
        XCTAssertEqual(guardedWentAstray, "", "shard1 was given shard2's master's address")
        while guardedSwitched == nil, Date().timeIntervalSince(killedAt) < 30 {
            try watchGuarded()
            usleep(20_000)
        }
        XCTAssertNotNil(guardedSwitched, "the guarded Tern follows the real sentinels")
        XCTAssertEqual(guardedWentAstray, "", "shard1 was given shard2's master's address")
        XCTAssertTrue(try guarded.call("INFO", "sentinel").contains("master1:name=shard2,address=127.0.0.1:\(master2.port)"))
        let guardedDelay = guardedSwitched.map { $0.timeIntervalSince(killedAt) } ?? -1
        print(String(format: "guarded Tern: listening %.2f s after its start (a silent sentinel listed first); had the new address after %.2f s", guardedStartup, guardedDelay))
        let window = firstSuccess.map { $0.timeIntervalSince(killedAt) }
        let switched = (switchedAt ?? firstSuccess).map { $0.timeIntervalSince(killedAt) } ?? -1
        let idleDelay = idleSwitched.map { $0.timeIntervalSince(killedAt) } ?? -1
        // Without requests of its own, the idle Tern learns of the failover from the sentinels'
        // +promoted-slave/+switch-master (published when a sentinel has seen the promotion,
        // which may be after another sentinel already names the replica) or its 1 s poll.
        XCTAssertGreaterThan(idleDelay, 0)
        XCTAssertLessThan(idleDelay, switched + 1.2, "an idle Tern follows the failover too")
        // Nor does the silent sentinel delay the guarded one while the sentinels disagree (asked
        // one after the other, +0.47 to +0.57 s; now -0.05 to +0.06 s).
        XCTAssertLessThan(guardedDelay, idleDelay + 0.3, "the silent sentinel was waited for during the failover")
        XCTAssertNotNil(window, "shard1's keys never came back")
        XCTAssertLessThan(window ?? 99, 15)
        // (shard2's keys belong to the innocent client by now.)
        for key in onFirst { XCTAssertEqual(try client.call("GET", key), "$\(("v" + key).utf8.count)\r\nv\(key)\r\n", "\(key) written before the failover") }
        // Placement did not move: shard1's keys are now served by the promoted replica.
        XCTAssertEqual(try client.call("SET", onFirst[0], "after"), "+OK\r\n")
        XCTAssertEqual(try replica1.call("GET", onFirst[0]), "$5\r\nafter\r\n")
        // (The workers route to the new address a moment before the main thread shows it.)
        var after = ""
        XCTAssertEqual(try eventually("both", within: 2) {
            after = try TestClient(port: port).call("INFO", "sentinel")
            return after.contains("master0:name=shard1,address=127.0.0.1:\(replica1.port)") && after.contains("sentinel_switches:1") ? "both" : after
        }, "both", after)
        let (requests, errors) = innocent.finish()
        XCTAssertEqual(errors.count, 0, "shard2's client saw no error: \(errors.prefix(3))")

        // Every sentinel down at start: shard1's and shard2's keys fail with a clear error, PING
        // works, and once a sentinel listens the masters are found.
        let late = ProcessGroup.freePort()
        let latePort = ProcessGroup.freePort()
        try self.group.tern(config: config.replacingOccurrences(of: "\(port)", with: "\(latePort)").components(separatedBy: "    addresses:\n")[0]
                                + "    addresses:\n     - 127.0.0.1:\(late)\n    password: late-pw\n  servers:\n   - shard1:1\n   - shard2:1\n", waitPort: latePort)
        let waiting = try TestClient(port: latePort)
        XCTAssertEqual(try waiting.call("PING"), "+PONG\r\n")
        XCTAssertTrue(try waiting.call("GET", onFirst[1]).hasPrefix("-ERR master address not known yet"))
        XCTAssertTrue(self.group.ternLog().contains("no address yet for shard1, shard2"))
        let path = self.group.directory + "/sentinel-\(late).conf"
        // (It wants a password: the questions and the subscription authenticate.)
        var lateText = "port \(late)\nbind 127.0.0.1\ndir \(self.group.directory)\nrequirepass late-pw\n"
        for (name, master) in [("shard1", replica1.port), ("shard2", master2.port)] { lateText += "sentinel monitor \(name) 127.0.0.1 \(master) 2\n" }
        try lateText.write(toFile: path, atomically: true, encoding: .utf8)
        try self.group.launch("/usr/bin/redis-server", [path, "--sentinel"], log: "sentinel-\(late).log")
        let expected = "$\(("v" + onFirst[1]).utf8.count)\r\nv\(onFirst[1])\r\n"
        XCTAssertEqual(try eventually(expected, within: 5) { try waiting.call("GET", onFirst[1]) }, expected)
        print(String(format: "sentinel failover window: %.2f s from SIGKILL to the first successful GET through Tern (%d failed tries, 50 ms apart); a sentinel named the replica after %.2f s; an idle Tern had the new address after %.2f s; shard2's client: %d requests, %d errors",
                     window ?? -1, failures, switched, idleDelay, requests, errors.count))
    }
}
