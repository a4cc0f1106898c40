import Foundation
import XCTest
@testable import TernCore

/// The admin endpoint and the stats port under slow, idle and malformed clients, and
/// `/locate` against where keys really land, with the real binary and real backends.
final class ControlEndpointTests: XCTestCase {
    var group: ProcessGroup!
    override func setUp() { group = ProcessGroup() }
    override func tearDown() {
        if let run = testRun, run.failureCount > 0 { print(group.ternLog().suffix(4000)) }
        group.stopAll()
    }

    struct Endpoints {
        var port: Int
        var statsPort: Int
        var adminPort: Int
        var process: Process
    }

    /// Tern with one memcached pool (unreachable servers unless given), a stats port and an
    /// admin port.
    func start(config: ((Int) -> String)? = nil) throws -> Endpoints {
        let port = ProcessGroup.freePort(), statsPort = ProcessGroup.freePort(), adminPort = ProcessGroup.freePort()
        let text = config?(port) ?? "p:\n  listen: 127.0.0.1:\(port)\n  servers:\n   - 127.0.0.1:\(ProcessGroup.freePort()):1\n"
        let process = try group.tern(config: text, arguments: ["--threads", "1", "-s", "\(statsPort)", "-a", "127.0.0.1", "--admin-port", "\(adminPort)"], waitPort: port)
        try group.waitForPort(adminPort)
        try group.waitForPort(statsPort)
        return Endpoints(port: port, statsPort: statsPort, adminPort: adminPort, process: process)
    }

    /// Sends `request` on a new connection and reads until the server closes.
    func exchange(_ port: Int, _ request: String, timeout: Double = 3) throws -> (status: Int, head: String, body: [UInt8], seconds: Double) {
        let started = Date()
        let client = try TestClient(port: port, timeout: timeout)
        try client.send(request)
        let (bytes, closed) = client.drain(for: timeout)
        let seconds = Date().timeIntervalSince(started)
        XCTAssertTrue(closed || !bytes.isEmpty, "no answer to \(request.debugDescription)")
        guard let split = bytes.firstRange(of: Array("\r\n\r\n".utf8)) else { return (0, String(decoding: bytes, as: UTF8.self), [], seconds) }
        let head = String(decoding: bytes[..<split.lowerBound], as: UTF8.self)
        let status = Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0
        return (status, head, Array(bytes[split.upperBound...]), seconds)
    }

    func get(_ port: Int, _ target: String) throws -> (status: Int, body: String) {
        let result = try exchange(port, "GET \(target) HTTP/1.1\r\nHost: localhost\r\n\r\n")
        return (result.status, String(decoding: result.body, as: UTF8.self))
    }

    func header(_ head: String, _ name: String) -> String? {
        head.components(separatedBy: "\r\n").first { $0.lowercased().hasPrefix(name.lowercased() + ":") }
            .map { String($0.dropFirst(name.count + 1)).trimmingCharacters(in: .whitespaces) }
    }

    // MARK: Concurrency

    /// Ten clients hold admin connections (nine idle, one trickling a byte every 0.5 s); a
    /// health probe must still be answered at once, every time, and the slow ones are closed by
    /// the request deadline. Then 70 idle connections (over the cap of 64) cannot lock it out.
    func testSlowAndIdleAdminClientsDoNotDelayHealthz() throws {
        let endpoints = try start()
        let opened = Date()
        var idle: [TestClient] = []
        for _ in 0..<9 { idle.append(try TestClient(port: endpoints.adminPort)) }
        let trickler = try TestClient(port: endpoints.adminPort)
        // The trickler sends a byte every 0.5 s (every other probe) until it is answered.
        let slowRequest = Array("GET /healthz HTTP/1.1\r\nX-Slow: ".utf8) + Array(repeating: UInt8(ascii: "a"), count: 100)
        var sent = 0
        var answer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        var slowest = 0.0
        for round in 0..<20 {
            if answer.isEmpty {
                let count = chunk.withUnsafeMutableBytes { recv(trickler.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                if count > 0 {
                    answer = Array(chunk[0..<count])
                } else if round % 2 == 0, sent < slowRequest.count {
                    try trickler.send([slowRequest[sent]])
                    sent += 1
                }
            }
            let probe = try exchange(endpoints.adminPort, "GET /healthz HTTP/1.1\r\n\r\n")
            XCTAssertEqual(probe.status, 200)
            XCTAssertEqual(probe.body, Array("ok\n".utf8))
            slowest = max(slowest, probe.seconds)
            usleep(250_000)
        }
        XCTAssertLessThan(slowest, 1, "a /healthz probe waited \(slowest) s behind slow clients")
        // The request deadline (2 s from accept) closed the idle ones (no answer: they sent
        // nothing) and answered the trickler 408.
        for client in idle {
            let (bytes, closed) = client.drain(for: 1)
            XCTAssertTrue(closed, "an idle admin connection is still open after \(Date().timeIntervalSince(opened)) s")
            XCTAssertEqual(bytes, [])
        }
        let rest = trickler.drain(for: 3)
        answer += rest.bytes
        XCTAssertGreaterThan(sent, 3, "the trickler kept sending")
        XCTAssertTrue(String(decoding: answer, as: UTF8.self).hasPrefix("HTTP/1.1 408 Request Timeout\r\n"), String(decoding: answer, as: UTF8.self))
        XCTAssertTrue(rest.closed)
        XCTAssertLessThan(Date().timeIntervalSince(opened), 12)

        // More idle connections than the cap: the oldest make room for the probe.
        var flood: [TestClient] = []
        for _ in 0..<70 { flood.append(try TestClient(port: endpoints.adminPort)) }
        let probe = try exchange(endpoints.adminPort, "GET /healthz HTTP/1.1\r\n\r\n")
        XCTAssertEqual(probe.status, 200)
        XCTAssertLessThan(probe.seconds, 1)
        XCTAssertTrue(flood[0].drain(for: 1).closed, "the oldest idle connection was dropped for the new one")
    }

    /// nutcracker's stats port writes its JSON on connect: a client that never reads does not
    /// hold up the next one, and neither do more of them than the connection cap.
    /// Requests the admin thread reads at once share one response. Clients that asked for
    /// `/metrics` (a render costs milliseconds) as fast as they could and never read kept the
    /// thread rendering and the listen backlog full: health probes waited for a SYN
    /// retransmit, 1 s, kubelet's probe timeout (the isolation sweep). Forty requests that
    /// arrive while Tern is stopped are answered by one render; the stats port's forty
    /// connections likewise share one JSON (fails on 7d91f5e: forty renders).
    func testRequestsReadTogetherShareOneRender() throws {
        let endpoints = try start()
        func renders(_ body: [UInt8]) -> Int? {
            String(decoding: body, as: UTF8.self).split(separator: "\n")
                .first { $0.hasPrefix("tern_admin_metrics_renders_total ") }.flatMap { Int($0.split(separator: " ")[1]) }
        }
        let before = try XCTUnwrap(renders(try exchange(endpoints.adminPort, "GET /metrics HTTP/1.1\r\n\r\n").body))
        // (The pass that answered it over, so that none of the forty joins it.)
        usleep(100_000)
        stopProcess(endpoints.process)
        var stopped = true
        defer { if stopped { kill(endpoints.process.processIdentifier, SIGCONT) } }
        let metrics = try (0..<40).map { _ in try TestClient(port: endpoints.adminPort, timeout: 5) }
        // Each with a query of its own, which `/metrics` does not read (on 60b2e51 each made a
        // render: clients asking `/metrics?<unique>` and never reading held `/healthz` for
        // seconds), and ten HEADs besides, which share the GETs' render.
        for (index, client) in metrics.enumerated() { try client.send("GET /metrics?u=\(index) HTTP/1.1\r\n\r\n") }
        let heads = try (0..<10).map { _ in try TestClient(port: endpoints.adminPort, timeout: 5) }
        for (index, client) in heads.enumerated() { try client.send("HEAD /metrics?h=\(index) HTTP/1.1\r\n\r\n") }
        let stats = try (0..<40).map { _ in try TestClient(port: endpoints.statsPort, timeout: 5) }
        usleep(100_000)
        kill(endpoints.process.processIdentifier, SIGCONT)
        stopped = false
        var seen: [Int] = []
        for client in metrics {
            let (bytes, closed) = client.drain(for: 5)
            XCTAssertTrue(closed)
            guard let split = bytes.firstRange(of: Array("\r\n\r\n".utf8)) else { return XCTFail("no response") }
            seen.append(try XCTUnwrap(renders(Array(bytes[split.upperBound...]))))
        }
        XCTAssertEqual(Set(seen), [before + 1], "one render for the forty")
        for client in heads {
            let (bytes, closed) = client.drain(for: 5)
            XCTAssertTrue(closed)
            XCTAssertTrue(bytes.starts(with: Array("HTTP/1.1 200".utf8)))
            XCTAssertEqual(bytes.suffix(4), ArraySlice("\r\n\r\n".utf8), "no body for HEAD")
        }
        let statsBodies = stats.map { $0.drain(for: 5).bytes }
        XCTAssertTrue(statsBodies[0].starts(with: Array("{".utf8)))
        XCTAssertEqual(Set(statsBodies).count, 1, "one stats JSON for the forty")
        // A request that comes in a later pass gets a render of its own. (One that comes while
        // the pass that answered the forty still runs shares theirs: a response at most that
        // pass's milliseconds old.)
        usleep(100_000)
        XCTAssertEqual(renders(try exchange(endpoints.adminPort, "GET /metrics HTTP/1.1\r\n\r\n").body), before + 2, "before \(before), the forty \(seen) (the HEADs made no render)")
    }

    func testStatsPortAnswersWhileIdleStatsConnectionsAreOpen() throws {
        let endpoints = try start()
        var idle: [TestClient] = []
        for _ in 0..<70 { idle.append(try TestClient(port: endpoints.statsPort)) }
        let started = Date()
        let (bytes, closed) = try TestClient(port: endpoints.statsPort).drain(for: 2)
        XCTAssertTrue(closed)
        XCTAssertLessThan(Date().timeIntervalSince(started), 1)
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
        XCTAssertEqual(object["service"] as? String, "tern")
        // The newest idle one got its JSON without asking for it.
        let last = idle[idle.count - 1].drain(for: 2)
        XCTAssertTrue(String(decoding: last.bytes, as: UTF8.self).hasPrefix("{\"service\":\"tern\""))
        XCTAssertTrue(last.closed)
    }

    // MARK: HTTP

    func testMalformedOversizeUnknownMethodAndHead() throws {
        let endpoints = try start()
        let admin = endpoints.adminPort
        XCTAssertEqual(try exchange(admin, "garbage\r\n\r\n").status, 400)
        XCTAssertEqual(try exchange(admin, "GET /healthz\r\n\r\n").status, 400, "no HTTP version")
        XCTAssertEqual(try exchange(admin, "GET /healthz HTTP/2.0\r\n\r\n").status, 400)
        XCTAssertEqual(try exchange(admin, "GET healthz HTTP/1.1\r\n\r\n").status, 400)
        XCTAssertEqual(try exchange(admin, "GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n").status, 400)
        XCTAssertEqual(try exchange(admin, "G(T /healthz HTTP/1.1\r\n\r\n").status, 400)
        // Bare line feeds and HTTP/1.0 are fine.
        XCTAssertEqual(try exchange(admin, "GET /healthz HTTP/1.0\n\n").status, 200)
        // A head over 8 KiB: 431 and the connection closes, whether it stops there or goes on.
        let big = "GET /healthz HTTP/1.1\r\nX-Big: " + String(repeating: "b", count: 9000)
        let oversize = try exchange(admin, big)
        XCTAssertEqual(oversize.status, 431)
        XCTAssertEqual(try exchange(admin, big + String(repeating: "c", count: 20000) + "\r\n\r\n").status, 431)
        XCTAssertEqual(try exchange(admin, "GET /nope HTTP/1.1\r\n\r\n").status, 404)
        let post = try exchange(admin, "POST /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        XCTAssertEqual(post.status, 405)
        XCTAssertEqual(header(post.head, "Allow"), "GET, HEAD")
        XCTAssertEqual(try exchange(admin, "DELETE /config HTTP/1.1\r\n\r\n").status, 405)
        // HEAD: the GET's headers, Content-Length included, and no body.
        let head = try exchange(admin, "HEAD /metrics HTTP/1.1\r\n\r\n")
        XCTAssertEqual(head.status, 200)
        XCTAssertEqual(head.body, [], "HEAD sent a body")
        let getMetrics = try exchange(admin, "GET /metrics HTTP/1.1\r\n\r\n")
        XCTAssertEqual(header(head.head, "Content-Length"), String(getMetrics.body.count))
        XCTAssertEqual(header(head.head, "Content-Type"), "text/plain; version=0.0.4; charset=utf-8")
        XCTAssertGreaterThan(getMetrics.body.count, 100)
        let healthHead = try exchange(admin, "HEAD /healthz HTTP/1.1\r\n\r\n")
        XCTAssertEqual(header(healthHead.head, "Content-Length"), "3")
        XCTAssertEqual(healthHead.body, [])
        // The endpoints' bodies are unchanged.
        XCTAssertEqual(try get(admin, "/healthz").body, "ok\n")
        XCTAssertEqual(try get(admin, "/readyz").body, "ready\n")
        XCTAssertEqual(try get(admin, "/healthz?verbose=1").status, 200)
        XCTAssertEqual(try get(admin, "/nope").body, "not found\n")
    }

    // MARK: /locate

    func encoded(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
    }

    func locate(_ admin: Int, pool: String, key: String) throws -> [String: Any] {
        let (status, body) = try get(admin, "/locate?pool=\(encoded(pool))&key=\(encoded(key))")
        XCTAssertEqual(status, 200, body)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any], body)
    }

    func serverIndex(_ object: [String: Any]) throws -> Int {
        let server = try XCTUnwrap(object["server"] as? [String: Any], "\(object)")
        return try XCTUnwrap(server["index"] as? Int)
    }

    /// A warm-up pool (memcached) and a Redis pool with a hash tag: `/locate` names the server
    /// a `set` through Tern really reached (each backend asked directly), and the old server a
    /// miss is looked up on (a key stored only there is found through Tern).
    func testLocateAgreesWithWhereKeysLand() throws {
        let new = try [group.memcached(), group.memcached(), group.memcached()]
        let old = try [group.memcached(), group.memcached()]
        let redis = try [group.redis(), group.redis()]
        let redisPort = ProcessGroup.freePort()
        let endpoints = try start { port in
            "warm:\n  listen: 127.0.0.1:\(port)\n  hash: md5\n  timeout: 2000\n  servers:\n" + new.map { "   - \($0.address):1\n" }.joined()
                + "  warmup:\n    distribution: modula\n    servers:\n" + old.map { "     - \($0.address):1\n" }.joined()
                + "r:\n  listen: 127.0.0.1:\(redisPort)\n  redis: true\n  hash_tag: \"{}\"\n  timeout: 2000\n  servers:\n"
                + redis.map { "   - \($0.address):1\n" }.joined()
        }
        let admin = endpoints.adminPort
        let client = try TestClient(port: endpoints.port)
        var seenNew = Set<Int>(), seenOld = Set<Int>()
        for i in 0..<24 {
            let key = "locate:\(i)"
            let location = try locate(admin, pool: "warm", key: key)
            XCTAssertEqual(location["pool"] as? String, "warm")
            XCTAssertEqual(location["key"] as? String, key)
            let newIndex = try serverIndex(location)
            seenNew.insert(newIndex)
            XCTAssertEqual(try client.request("set \(key) 0 0 2\r\nv\(i % 10)\r\n", until: "\r\n"), "STORED\r\n")
            for (index, server) in new.enumerated() {
                XCTAssertEqual(try server.get(key), index == newIndex ? "v\(i % 10)" : nil, "\(key) on new server \(index), /locate said \(newIndex)")
            }
            let oldPool = try XCTUnwrap(location["old_pool"] as? [String: Any])
            XCTAssertEqual(oldPool["pool"] as? String, "warm.warmup")
            XCTAssertEqual(oldPool["distribution"] as? String, "modula")
            let oldIndex = try serverIndex(oldPool)
            seenOld.insert(oldIndex)
            // A key only the reported old server has is found through Tern (a miss in the new
            // pool is looked up on the old server placement picks).
            let oldKey = "old:\(i)"
            let oldLocation = try XCTUnwrap(try locate(admin, pool: "warm", key: oldKey)["old_pool"] as? [String: Any])
            XCTAssertEqual(try TestClient(port: old[try serverIndex(oldLocation)].port).request("set \(oldKey) 0 0 1\r\no\r\n", until: "\r\n"), "STORED\r\n")
            XCTAssertEqual(try client.request("get \(oldKey)\r\n", until: "END\r\n"), "VALUE \(oldKey) 0 1\r\no\r\nEND\r\n")
        }
        XCTAssertEqual(seenNew.count, 3, "the keys cover every new server")
        XCTAssertEqual(seenOld.count, 2, "the keys cover every old server")

        let redisClient = try TestClient(port: redisPort)
        for i in 0..<12 {
            let key = "{user\(i)}:name"
            let location = try locate(admin, pool: "r", key: key)
            XCTAssertEqual(location["hash_key"] as? String, "user\(i)")
            XCTAssertNil(location["old_pool"])
            let index = try serverIndex(location)
            XCTAssertEqual(try redisClient.call("SET", key, "x"), "+OK\r\n")
            for (serverIndex, server) in redis.enumerated() {
                XCTAssertEqual(try server.call("EXISTS", key), serverIndex == index ? ":1\r\n" : ":0\r\n", "\(key): /locate said \(index)")
            }
        }

        // Keys are %-decoded, `+` is a space.
        let spaced = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(try get(admin, "/locate?pool=warm&key=a+b%2Fc").body.utf8)) as? [String: Any])
        XCTAssertEqual(spaced["key"] as? String, "a b/c")
        // Errors: 400 with the reason.
        for (target, reason) in [("/locate?key=foo", "missing parameter 'pool'"), ("/locate?pool=&key=foo", "missing parameter 'pool'"),
                                 ("/locate?pool=nope&key=foo", "unknown pool 'nope'"), ("/locate?pool=warm", "missing or empty parameter 'key'"),
                                 ("/locate?pool=warm&key=", "missing or empty parameter 'key'"), ("/locate?pool=warm&key=%4", "bad %-escape"),
                                 ("/locate?pool=warm&key=%zz", "bad %-escape"), ("/locate?pool=warm&key=\(String(repeating: "k", count: 251))", "longer than 250 bytes"),
                                 ("/locate?pool=warm&pool=r&key=a", "given more than once")] {
            let (status, body) = try get(admin, target)
            XCTAssertEqual(status, 400, target)
            XCTAssertTrue(body.contains(reason), "\(target): \(body)")
        }
        XCTAssertEqual(try get(admin, "/locate?pool=warm&key=\(String(repeating: "k", count: 250))").status, 200)
    }
}
