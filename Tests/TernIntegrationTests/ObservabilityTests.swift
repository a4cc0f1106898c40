import Foundation
import XCTest
@testable import TernCore

/// What operators read, against real servers: INFO's backend figures through Tern (a Redis
/// guide's monitoring snippet), SLOWLOG with a backend made slow, per-command metrics, hot keys.
final class ObservabilityTests: XCTestCase {
    var group: ProcessGroup!
    override func setUp() { group = ProcessGroup() }
    override func tearDown() {
        if let run = testRun, run.failureCount > 0 { print(group.ternLog().suffix(3000)) }
        group.stopAll()
    }

    struct Setup {
        var port: Int
        var adminPort: Int
        var pool: PoolConfig
        func server(_ key: String) -> Int { Array(key.utf8).withUnsafeBytes { pool.placement().server(forKey: $0)! } }
    }

    func start(redis: Bool, backends addresses: [String], extra: String = "", arguments: [String] = []) throws -> Setup {
        let port = ProcessGroup.freePort(), adminPort = ProcessGroup.freePort()
        let text = "p:\n  listen: 127.0.0.1:\(port)\n  redis: \(redis)\n  timeout: 3000\n\(extra)  servers:\n"
            + addresses.map { "   - \($0):1\n" }.joined()
        try group.tern(config: text, arguments: ["--threads", "2", "--admin-port", "\(adminPort)"] + arguments, waitPort: port)
        return Setup(port: port, adminPort: adminPort, pool: try ConfigLoader.load(text: text, file: "p.yml").pools[0])
    }

    func http(_ port: Int, _ path: String) throws -> (Int, String) {
        let client = try TestClient(port: port)
        defer { client.close() }
        try client.send("GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        let response = String(decoding: client.drain(for: 3).bytes, as: UTF8.self)
        let status = Int(response.split(separator: " ").dropFirst().first ?? "") ?? 0
        let body = response.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
        return (status, body)
    }


    /// A server's `requests`, `request_bytes`, `responses` and `response_bytes` count the
    /// clients' requests only, as nutcracker's do: the AUTH and SELECT Tern sends as a connection
    /// opens added one request and one reply per connection (operator sweep 33: 2 requests, 44
    /// bytes for one GET of 21; fails on 0c5ce24).
    func testServerCountersLeaveOutTernsOwnConnectionSetup() throws {
        let backend = try group.redis(extra: ["--requirepass", "pw"])
        let statsPort = ProcessGroup.freePort()
        let setup = try start(redis: true, backends: [backend.address], extra: "  redis_auth: pw\n  redis_db: 1\n", arguments: ["-s", "\(statsPort)", "-a", "127.0.0.1"])
        let client = try TestClient(port: setup.port)
        XCTAssertEqual(try client.call("AUTH", "pw"), "+OK\r\n")
        XCTAssertEqual(try client.call("GET", "zz"), "$-1\r\n")
        let stats = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(TestClient(port: statsPort).drain(for: 2).bytes)) as? [String: Any])
        let server = try XCTUnwrap((stats["p"] as? [String: Any])?[backend.address] as? [String: Any])
        XCTAssertEqual(server["requests"] as? Int, 1, "\(server)")
        XCTAssertEqual(server["request_bytes"] as? Int, 21, "\(server)")
        XCTAssertEqual(server["responses"] as? Int, 1, "\(server)")
        XCTAssertEqual(server["response_bytes"] as? Int, 5, "\(server)")
        let (_, metrics) = try http(setup.adminPort, "/metrics")
        XCTAssertTrue(metrics.contains("tern_server_requests_total{pool=\"p\",server=\"\(backend.address)\"} 1\n"), metrics)
        XCTAssertTrue(metrics.contains("tern_server_latency_seconds_count{pool=\"p\",server=\"\(backend.address)\"} 1\n"), metrics)
    }

    /// A warm-up's old servers have figures of their own: in the stats port's pool object as
    /// `warmup_old:<name>`, in `/metrics` as `tern_warmup_old_server_*`, and counted in
    /// `warmup_old_backends_up`/`_down` (memcached `stats`) or INFO's `# Backends` section. An
    /// old server failing every connect showed nowhere, and `backends_down` said 0 (TLS sweep
    /// 32; fails on 0c5ce24).
    func testTheWarmupOldServersHaveFiguresOfTheirOwn() throws {
        for redis in [false, true] {
            let new = redis ? try group.redis().address : try group.memcached().address
            let old = redis ? try group.redis().address : try group.memcached().address
            let dead = "127.0.0.1:\(ProcessGroup.freePort())"
            // (md5: fnv1a_64 puts short similar keys on one server.)
            let statsPort = ProcessGroup.freePort()
            let setup = try start(redis: redis, backends: [new], extra: "  warmup:\n    hash: md5\n    servers:\n     - \(old):1\n     - \(dead):1\n",
                                  arguments: ["-s", "\(statsPort)", "-a", "127.0.0.1"])
            let oldPool = try XCTUnwrap(setup.pool.warmup?.old)
            let onLive = (0..<200).map { "key\($0)" }.first { key in Array(key.utf8).withUnsafeBytes { oldPool.placement().server(forKey: $0) } == 0 }!
            let onDead = (0..<200).map { "key\($0)" }.first { key in Array(key.utf8).withUnsafeBytes { oldPool.placement().server(forKey: $0) } == 1 }!
            let oldPort = Int(old.split(separator: ":").last!)!
            let client = try TestClient(port: setup.port)
            if redis {
                XCTAssertEqual(try TestClient(port: oldPort).call("SET", onLive, "v"), "+OK\r\n")
                XCTAssertEqual(try client.call("GET", onLive), "$1\r\nv\r\n")
                XCTAssertEqual(try client.call("GET", onDead), "$-1\r\n")
            } else {
                XCTAssertEqual(try TestClient(port: oldPort).request("set \(onLive) 0 0 1\r\nv\r\n", until: "\r\n"), "STORED\r\n")
                XCTAssertEqual(try client.request("get \(onLive)\r\n", until: "END\r\n"), "VALUE \(onLive) 0 1\r\nv\r\nEND\r\n")
                XCTAssertEqual(try client.request("get \(onDead)\r\n", until: "END\r\n"), "END\r\n")
            }
            // The backend poller's view, within a few of its one-second rounds.
            let up = redis ? "warmup_old_backends_up:1\r\nwarmup_old_backends_down:1\r\n" : "STAT warmup_old_backends_up 1\r\nSTAT warmup_old_backends_down 1\r\n"
            let report = try eventually("polled", within: 8) { () -> String in
                let text = redis ? try client.call("INFO", "backends") : try client.request("stats\r\n", until: "END\r\n")
                return text.contains(up) && text.contains(redis ? "backends_down:0\r\n" : "STAT backends_down 0\r\n") ? "polled" : text
            }
            XCTAssertEqual(report, "polled")
            if redis {
                let info = try client.call("INFO", "backends")
                XCTAssertTrue(info.contains("warmup_old_server0:name=\(old),status=up,") && info.contains("warmup_old_server1:name=\(dead),status=down,error="), info)
            }
            // /metrics: the old servers' own families; the pool's servers' are unchanged. (A
            // Redis old read is two commands; the new pool had the two reads and the copy.)
            let oldRequests = redis ? 2 : 1
            let (status, metrics) = try http(setup.adminPort, "/metrics")
            XCTAssertEqual(status, 200)
            func value(_ series: String) -> Int? {
                metrics.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap { Int($0.split(separator: " ").last!) }
            }
            XCTAssertEqual(value("tern_warmup_old_server_requests_total{pool=\"p\",server=\"\(old)\"}"), oldRequests, metrics)
            XCTAssertEqual(value("tern_warmup_old_server_responses_total{pool=\"p\",server=\"\(old)\"}"), oldRequests, metrics)
            XCTAssertEqual(value("tern_warmup_old_server_latency_seconds_count{pool=\"p\",server=\"\(old)\"}"), oldRequests, metrics)
            XCTAssertGreaterThanOrEqual(value("tern_warmup_old_server_errors_total{pool=\"p\",server=\"\(dead)\",kind=\"error\"}") ?? 0, 1, metrics)
            XCTAssertEqual(value("tern_server_requests_total{pool=\"p\",server=\"\(new)\"}"), 3, metrics)
            XCTAssertFalse(metrics.contains("tern_server_requests_total{pool=\"p\",server=\"\(old)\"}"), metrics)
            // The stats port: each old server as `warmup_old:<name>` in the pool's object.
            let stats = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(TestClient(port: statsPort).drain(for: 2).bytes)) as? [String: Any])
            let pool = try XCTUnwrap(stats["p"] as? [String: Any])
            let live = try XCTUnwrap(pool["warmup_old:\(old)"] as? [String: Any], "\(pool.keys)")
            let gone = try XCTUnwrap(pool["warmup_old:\(dead)"] as? [String: Any], "\(pool.keys)")
            XCTAssertEqual(live["requests"] as? Int, oldRequests)
            XCTAssertEqual(live["responses"] as? Int, oldRequests)
            XCTAssertEqual(live["server_err"] as? Int, 0)
            XCTAssertGreaterThanOrEqual(gone["server_err"] as? Int ?? 0, 1)
            XCTAssertEqual((pool[new] as? [String: Any])?["requests"] as? Int, 3)
            XCTAssertNil(pool[old])
        }
    }

    /// The monitoring snippet of a Redis guide, through Tern on a two-server pool: every field
    /// it reads is there, summed over the servers, and moves by exactly what the test did; a
    /// dead server is reported down and left out of the sums.
    func testRedisGuideMonitoringSnippetThroughTern() throws {
        let backends = try [group.redis(), group.redis()]
        let setup = try start(redis: true, backends: backends.map(\.address))
        // 40 keys, 20 on each server (short keys that differ in one byte can share a ketama arc).
        let candidates = (0..<2000).map { "user:\($0):\(($0 &* 2654435761) % 1000003)" }
        let keys = Array(candidates.filter { setup.server($0) == 0 }.prefix(20) + candidates.filter { setup.server($0) == 1 }.prefix(20))
        XCTAssertEqual(keys.count, 40)
        let onSecond = 20
        try python("""
        r = redis.Redis(port=\(setup.port))
        for i, key in enumerate(\(keys)): r.set(key, "v", ex=1000 if i % 10 == 7 else None)
        def fields():
            info = r.info()
            return info
        # The backends' figures arrive within a second or two (polled off the request path).
        deadline = time.time() + 5
        while r.info("keyspace").get("db0", {}).get("keys") != 40 and time.time() < deadline: time.sleep(0.2)
        info = fields()
        for name in ["used_memory", "used_memory_human", "maxmemory", "maxmemory_human", "keyspace_hits", "keyspace_misses", "total_commands_processed", "redis_version", "connected_clients"]:
            assert name in info, (name, sorted(info))
        db0 = r.info("keyspace")["db0"]
        assert db0["keys"] == 40 and db0["expires"] == 4, db0
        before = r.info("stats")
        assert "used_memory" not in before and "keyspace_hits" in before, sorted(before)
        for key in \(keys[0..<10]): assert r.get(key) == b"v"
        for key in ["absent1", "absent2", "absent3"]: assert r.get(key) is None
        deadline = time.time() + 5
        while time.time() < deadline:
            after = r.info("stats")
            if after["keyspace_hits"] - before["keyspace_hits"] >= 10 and after["keyspace_misses"] - before["keyspace_misses"] >= 3: break
            time.sleep(0.2)
        assert after["keyspace_hits"] - before["keyspace_hits"] == 10, (before["keyspace_hits"], after["keyspace_hits"])
        assert after["keyspace_misses"] - before["keyspace_misses"] == 3, (before["keyspace_misses"], after["keyspace_misses"])
        assert after["total_commands_processed"] > before["total_commands_processed"]
        memory = r.info("memory")
        direct = sum(redis.Redis(port=p).info("memory")["used_memory"] for p in [\(backends[0].port), \(backends[1].port)])
        assert abs(memory["used_memory"] - direct) < direct // 5, (memory["used_memory"], direct)
        assert memory["used_memory_human"].endswith(("K", "M")), memory["used_memory_human"]
        backends = r.info("backends")
        assert backends["backends_up"] == 2 and backends["backends_down"] == 0, backends
        """)
        backends[0].kill()
        try python("""
        r = redis.Redis(port=\(setup.port))
        deadline = time.time() + 10
        while r.info("backends")["backends_down"] != 1 and time.time() < deadline: time.sleep(0.3)
        info = r.info()
        assert info["backends_down"] == 1 and info["backends_up"] == 1, info
        assert "status=down" in str(info["server0"]) or info["server0"]["status"] == "down", info["server0"]
        assert info["db0"]["keys"] == \(onSecond), (info["db0"], \(onSecond))
        """)
    }

    /// SLOWLOG through Tern: a backend made slow by DEBUG SLEEP (sent to it directly) makes the
    /// request waiting on it slow; the entry has Redis's shape plus the server, arguments are
    /// truncated as Redis truncates them, fast requests are not logged, RESET empties it. The
    /// admin endpoint serves the same log as JSON, memcached pools included.
    func testSlowlogWithASlowBackend() throws {
        let backend = try group.redis(extra: ["--enable-debug-command", "local"])
        let setup = try start(redis: true, backends: [backend.address], extra: "  slowlog_log_slower_than: 100000\n  slowlog_max_len: 3\n")
        try python("""
        r = redis.Redis(port=\(setup.port))
        r.client_setname("reporter")
        for i in range(50): r.get("fast")
        assert r.slowlog_len() == 0
        def sleep_backend(): redis.Redis(port=\(backend.port)).execute_command("DEBUG", "SLEEP", "0.6")
        t = threading.Thread(target=sleep_backend); t.start(); time.sleep(0.15)
        started = time.time()
        assert r.get("slowkey") is None
        assert time.time() - started > 0.2
        t.join()
        entries = r.slowlog_get()
        assert len(entries) == 1, entries
        entry = entries[0]
        assert entry["command"] == b"GET slowkey", entry
        assert 200000 <= entry["duration"] < 3000000, entry
        assert abs(entry["start_time"] - time.time()) < 10, entry
        assert entry["client_address"].startswith(b"127.0.0.1:"), entry
        assert entry["client_name"] == b"reporter", entry
        raw = r.execute_command("SLOWLOG", "GET", "1")
        assert raw[0][6] == b"\(backend.address)", raw
        # 40 arguments of 200 bytes: 32 kept, the last one counting the rest; each cut at 128.
        t = threading.Thread(target=sleep_backend); t.start(); time.sleep(0.1)
        r.rpush("list", *[("x%02d" % i) * 50 for i in range(39)])
        t.join()
        args = r.execute_command("SLOWLOG", "GET", "1")[0][3]
        assert len(args) == 32 and args[0] == b"RPUSH" and args[1] == b"list", args[:2]
        assert args[2] == (b"x00" * 50)[:128] + b"... (22 more bytes)", args[2]
        assert args[31] == b"... (10 more arguments)", args[31]
        assert r.slowlog_len() == 2
        assert len(r.slowlog_get(-1)) == 2 and len(r.execute_command("SLOWLOG", "GET", "0")) == 0
        try:
            r.execute_command("SLOWLOG", "GET", "-2"); assert False
        except redis.ResponseError as e: assert "greater than or equal to -1" in str(e)
        log = json.load(urllib.request.urlopen("http://127.0.0.1:\(setup.adminPort)/slowlog"))
        assert [e["command"][0] for e in log["p"]] == ["RPUSH", "GET"], log
        assert log["p"][1]["server"] == "\(backend.address)" and log["p"][1]["client_name"] == "reporter", log
        assert r.slowlog_reset() and r.slowlog_len() == 0
        """)
    }

    /// memcached pools keep the same log: a backend stopped for a moment makes a get slow.
    func testMemcachedSlowlogOnTheAdminEndpoint() throws {
        let backend = try group.memcached()
        let setup = try start(redis: false, backends: [backend.address], extra: "  slowlog_log_slower_than: 100000\n")
        let client = try TestClient(port: setup.port)
        XCTAssertEqual(try client.request("set a 0 0 1\r\nx\r\n", until: "\r\n"), "STORED\r\n")
        backend.pause()
        try client.send("get a\r\n")
        usleep(500_000)
        backend.resume()
        XCTAssertEqual(String(decoding: try client.receive(until: "END\r\n"), as: UTF8.self), "VALUE a 0 1\r\nx\r\nEND\r\n")
        let (status, body) = try http(setup.adminPort, "/slowlog")
        XCTAssertEqual(status, 200)
        let log = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: [[String: Any]]])
        let entries = try XCTUnwrap(log["p"])
        XCTAssertEqual(entries.count, 1, body)
        XCTAssertEqual(entries.first?["command"] as? [String], ["get", "a"], body)
        XCTAssertGreaterThanOrEqual(entries.first?["duration_us"] as? Int ?? 0, 200_000, body)
        XCTAssertEqual(entries.first?["server"] as? String, backend.address, body)
        XCTAssertTrue(try http(setup.adminPort, "/metrics").1.contains("tern_pool_slow_requests_total{pool=\"p\"} 1\n"))
    }

    /// Per-command counters and latency histograms in /metrics, labelled from the command
    /// table only: an unknown command adds no label.
    func testPerCommandMetrics() throws {
        let redisBackend = try group.redis()
        let redisSetup = try start(redis: true, backends: [redisBackend.address])
        let client = try TestClient(port: redisSetup.port)
        for i in 0..<5 { XCTAssertEqual(try client.call("GET", "k\(i)"), "$-1\r\n") }
        for i in 0..<3 { XCTAssertEqual(try client.call("SET", "k\(i)", "v"), "+OK\r\n") }
        XCTAssertEqual(try client.call("HSET", "h", "f", "v"), ":1\r\n")
        XCTAssertTrue(try client.call("NOSUCHCOMMAND", "x").hasPrefix("-ERR unknown command"))
        let metrics = try http(redisSetup.adminPort, "/metrics").1
        XCTAssertTrue(metrics.contains("tern_command_requests_total{pool=\"p\",command=\"get\"} 5"), metrics)
        XCTAssertTrue(metrics.contains("tern_command_requests_total{pool=\"p\",command=\"set\"} 3"), metrics)
        XCTAssertTrue(metrics.contains("tern_command_requests_total{pool=\"p\",command=\"hset\"} 1"), metrics)
        XCTAssertTrue(metrics.contains("tern_command_latency_seconds_count{pool=\"p\",command=\"get\"} 5"), metrics)
        XCTAssertTrue(metrics.contains("tern_command_latency_seconds_bucket{pool=\"p\",command=\"set\",le=\"+Inf\"} 3"), metrics)
        XCTAssertFalse(metrics.lowercased().contains("nosuchcommand"), "no label from client input")
        // An unknown command is a bad request, as on memcached pools (counted nowhere before;
        // stats sweep 30).
        XCTAssertTrue(metrics.contains("tern_pool_errors_total{pool=\"p\",kind=\"bad_request\"} 1\n"), metrics)

        let memcached = try group.memcached()
        let memcachedSetup = try start(redis: false, backends: [memcached.address])
        let text = try TestClient(port: memcachedSetup.port)
        XCTAssertEqual(try text.request("set a 0 0 1\r\nx\r\nget a\r\nget a b\r\n", until: "END\r\n", occurrences: 2),
                       "STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\nVALUE a 0 1\r\nx\r\nEND\r\n")
        let memcachedMetrics = try http(memcachedSetup.adminPort, "/metrics").1
        XCTAssertTrue(memcachedMetrics.contains("tern_command_requests_total{pool=\"p\",command=\"get\"} 2"), memcachedMetrics)
        XCTAssertTrue(memcachedMetrics.contains("tern_command_requests_total{pool=\"p\",command=\"set\"} 1"), memcachedMetrics)
    }

    /// Hot keys under a skewed load: the hottest key is first, the second hottest second,
    /// in /hotkeys and in /metrics, for memcached and Redis pools.
    func testHotKeysUnderASkewedLoad() throws {
        let memcached = try group.memcached()
        let setup = try start(redis: false, backends: [memcached.address])
        var requests = ""
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<8000 {
            let draw = Int.random(in: 0..<100, using: &rng)
            let key = draw < 40 ? "hot:page" : draw < 60 ? "warm:user" : "cold:\(Int.random(in: 0..<400, using: &rng))"
            requests += "get \(key)\r\n"
        }
        let client = try TestClient(port: setup.port)
        try client.send(requests)
        _ = try client.receive(until: "END\r\n", occurrences: 8000)
        let (status, body) = try http(setup.adminPort, "/hotkeys")
        XCTAssertEqual(status, 200)
        let hot = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: [[String: Any]]])["p"] ?? []
        XCTAssertEqual(hot.prefix(2).map { $0["key"] as? String }, ["hot:page", "warm:user"], body)
        let estimate = hot.first?["requests"] as? Int ?? 0
        XCTAssertTrue((2200...4200).contains(estimate), "estimate \(estimate) for about 3200 requests: \(body)")
        let metrics = try http(setup.adminPort, "/metrics").1
        XCTAssertTrue(metrics.contains("tern_hot_key_requests{pool=\"p\",key=\"hot:page\"}"), metrics)

        let redisBackend = try group.redis()
        let redisSetup = try start(redis: true, backends: [redisBackend.address])
        let redisClient = try TestClient(port: redisSetup.port)
        var pipeline: [UInt8] = []
        // Two hot keys that differ after 128 bytes (where labels were cut: the two were one
        // series), with UTF-8 in them (shown as it is, not as \xNN escapes; stats sweep 30).
        let long = "clé:ünï:" + String(repeating: "x", count: 128)
        for i in 0..<3000 { pipeline += TestClient.encode(["GET", i % 2 == 0 ? "session:42" : i % 3 == 0 ? long + "a" : i % 3 == 1 ? long + "b" : "item:\(i % 300)"]) }
        try redisClient.send(pipeline)
        _ = try redisClient.receiveReplies(3000)
        let redisHot = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(try http(redisSetup.adminPort, "/hotkeys").1.utf8)) as? [String: [[String: Any]]])["p"] ?? []
        XCTAssertEqual(redisHot.first?["key"] as? String, "session:42")
        // Both, whole (the counts are sampled estimates: only the hottest's place is sure).
        let listed = redisHot.compactMap { $0["key"] as? String }
        XCTAssertTrue(listed.contains(long + "a") && listed.contains(long + "b"), "\(listed)")
        // A series each, under its whole key (a series listed twice makes Prometheus refuse the
        // whole scrape); none cut.
        let redisMetrics = try http(redisSetup.adminPort, "/metrics").1
        let hotSeries = redisMetrics.split(separator: "\n").filter { $0.hasPrefix("tern_hot_key_requests{") }
        XCTAssertEqual(hotSeries.filter { $0.hasPrefix("tern_hot_key_requests{pool=\"p\",key=\"\(long)a\"}") }.count, 1, redisMetrics)
        XCTAssertLessThanOrEqual(hotSeries.filter { $0.hasPrefix("tern_hot_key_requests{pool=\"p\",key=\"\(long)b\"}") }.count, 1, redisMetrics)
        XCTAssertFalse(hotSeries.contains { $0.contains("…") }, redisMetrics)
    }
}
