import Foundation
import Synchronization
import XCTest
@testable import TernCore

/// Hostile clients and backend chaos against a running Tern with real backends. After each
/// attack a client connected before it and a new client both get correct answers.
final class RobustnessTests: XCTestCase {
    var group: ProcessGroup!
    override func setUp() { group = ProcessGroup() }
    override func tearDown() {
        if let run = testRun, run.failureCount > 0 { print(group.ternLog().suffix(3000)) }
        group.stopAll()
    }

    /// Sanitized builds (Deploy/sanitizers.sh) keep freed memory in quarantine: RSS says
    /// nothing about leaks there, so only the functional assertions run.
    var checksMemory: Bool { ProcessInfo.processInfo.environment["TERN_SANITIZED"] == nil }

    func rssKiB(_ process: Process) -> Int {
        let text = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)) ?? ""
        let line = text.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }

    func start(_ backends: [String], extra: String = "", redis: Bool = false) throws -> (port: Int, process: Process, pool: PoolConfig) {
        let port = ProcessGroup.freePort()
        let text = "p:\n  listen: 127.0.0.1:\(port)\n  hash: md5\n  timeout: 500\n  redis: \(redis)\n\(extra)  servers:\n" + backends.map { "   - \($0):1\n" }.joined()
        let process = try group.tern(config: text, arguments: ["--threads", "2"], waitPort: port)
        return (port, process, try ConfigLoader.load(text: text, file: "p.yml").pools[0])
    }

    func assertHealthy(_ port: Int, _ bystander: TestClient, file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertEqual(try bystander.request("set alive 0 0 2\r\nok\r\nget alive\r\n", until: "END\r\n"), "STORED\r\nVALUE alive 0 2\r\nok\r\nEND\r\n", file: file, line: line)
        XCTAssertEqual(try TestClient(port: port).request("get alive\r\n", until: "END\r\n"), "VALUE alive 0 2\r\nok\r\nEND\r\n", file: file, line: line)
    }

    func testClientThatNeverReadsIsBoundedAndClosed() throws {
        let backend = try group.memcached(extra: ["-I", "2m"])
        let tern = try start([backend.address], extra: "  client_output_limit: 2097152\n  client_partial_timeout: 1000\n")
        let bystander = try TestClient(port: tern.port)
        let value = String(repeating: "v", count: 100_000)
        XCTAssertEqual(try bystander.request("set big 0 0 \(value.count)\r\n\(value)\r\n", until: "\r\n"), "STORED\r\n")
        usleep(300_000)
        let before = rssKiB(tern.process)
        // 300 pipelined gets of 100 KB (30 MB of replies) from a client that never reads: Tern
        // stops reading it at 1 MiB of waiting replies, and closes it once it makes no progress.
        let greedy = try TestClient(port: tern.port)
        var closed = false
        for _ in 0..<30 {
            if (try? greedy.send(String(repeating: "get big\r\n", count: 10))) == nil { closed = true; break }
            usleep(20_000)
        }
        let deadline = Date().addingTimeInterval(5)
        while !closed, Date() < deadline {
            let log = group.ternLog()
            closed = log.contains("exceeded client_output_limit") || log.contains("stopped reading its replies")
            usleep(50_000)
        }
        XCTAssertTrue(closed, "the non-reading client was closed")
        try assertHealthy(tern.port, bystander)
        usleep(500_000)
        if checksMemory { XCTAssertLessThan(rssKiB(tern.process) - before, 16 * 1024, "RSS returns near its start (\(before) KiB)") }
    }

    func testSlowlorisAndIdleClientsAreClosed() throws {
        let backend = try group.memcached()
        let tern = try start([backend.address], extra: "  client_partial_timeout: 1000\n  client_idle_timeout: 3000\n")
        let bystander = try TestClient(port: tern.port)
        let slow = try TestClient(port: tern.port)
        // A request shorter than declared, then nothing: closed after the partial timeout.
        try slow.send("set k 0 0 10\r\nabc")
        let started = Date()
        XCTAssertTrue(slow.drain(for: 4).closed)
        XCTAssertLessThan(Date().timeIntervalSince(started), 3.5)
        try assertHealthy(tern.port, bystander)
        // An idle client goes after client_idle_timeout; an active one stays.
        let idle = try TestClient(port: tern.port)
        XCTAssertEqual(try idle.request("version\r\n", until: "\r\n"), "VERSION 1.6.18\r\n")
        for _ in 0..<5 {
            usleep(1_000_000)
            XCTAssertEqual(try bystander.request("version\r\n", until: "\r\n"), "VERSION 1.6.18\r\n")
        }
        XCTAssertTrue(idle.drain(for: 1).closed)
    }

    /// A pipeline deeper than the in-flight limit waits, whole requests and all, in the client's
    /// buffer. Once they have been sent on and answered and the client is quiet, it is idle, not
    /// a slowloris: its partial-request clock stops when that buffer empties, whichever path
    /// (a read, or the flush that resumes a paused pipeline) emptied it.
    func testPipelinePausedAtTheInFlightLimitIsNotTakenForASlowloris() throws {
        let backend = try group.memcached()
        let port = ProcessGroup.freePort()
        _ = try group.tern(config: "p:\n  listen: 127.0.0.1:\(port)\n  timeout: 20000\n  client_partial_timeout: 1000\n  servers:\n   - \(backend.address):1\n",
                           arguments: ["--threads", "1"], waitPort: port)
        let client = try TestClient(port: port)
        // 20,000 gets in one write, more than the 256 a client may have in flight (the backend
        // paused meanwhile, so that they pile up): the rest wait in the client's buffer.
        backend.pause()
        try client.send(String(repeating: "get nothing\r\n", count: 20_000))
        usleep(300_000)
        backend.resume()
        let replies = try client.receive(until: "END\r\n", occurrences: 20_000)
        XCTAssertEqual(replies.count, 5 * 20_000)
        // Quiet for well over client_partial_timeout: still served.
        usleep(2_500_000)
        XCTAssertEqual(try client.request("get nothing\r\n", until: "END\r\n"), "END\r\n")
    }

    func testByteAtATimeLongerThanDeclaredAndDisconnectsInFlight() throws {
        let backend = try group.memcached()
        let tern = try start([backend.address])
        let bystander = try TestClient(port: tern.port)
        // Data longer than declared: bad data chunk, connection kept.
        XCTAssertEqual(try bystander.request("set k 0 0 3\r\nabcdef\r\nget k\r\n", until: "END\r\n"), "CLIENT_ERROR bad data chunk\r\nERROR\r\nEND\r\n")
        // A client that leaves with requests in flight.
        backend.pause()
        for _ in 0..<20 {
            let leaver = try TestClient(port: tern.port)
            try leaver.send(String(repeating: "get k\r\n", count: 50))
            leaver.close()
        }
        backend.resume()
        try assertHealthy(tern.port, bystander)
        // Byte at a time, slowly, within the partial timeout.
        let trickle = try TestClient(port: tern.port)
        for byte in "get alive\r\n".utf8 {
            try trickle.send([byte])
            usleep(20_000)
        }
        XCTAssertEqual(String(decoding: try trickle.receive(until: "END\r\n"), as: UTF8.self), "VALUE alive 0 2\r\nok\r\nEND\r\n")
    }

    /// The request paths and the backend queues use reply slots without references of their
    /// own, so a slot is freed only by the worker's once-a-second sweep and only once nothing
    /// reaches it: its client's queue holds it, then the worker's free list (trimmed by the
    /// sweep), or, when its client closes first, the worker's orphans (freed by the sweep once no
    /// backend entry names them). A burst here recycles more slots than a worker keeps past a
    /// sweep; clients leave with requests in flight, with refused ones, with requests queued on
    /// a paused backend and while blocked; the sweep runs between two rounds. Every reply is
    /// checked byte for byte and a bystander on each protocol is served throughout. A debug
    /// Tern stops at a slot finished while still named (`ReplyDesk.recycle`), and under
    /// `Deploy/sanitizers.sh` AddressSanitizer stops it at any use of a freed slot.
    func testReplySlotsOutliveBurstsLeaversAndTheSweep() throws {
        let memcached = try group.memcached()
        let redisServer = try group.redis()
        let memcache = try start([memcached.address])
        let redis = try start([redisServer.address], redis: true)
        let bystander = try TestClient(port: memcache.port)
        try assertHealthy(memcache.port, bystander)
        let redisBystander = try TestClient(port: redis.port)
        XCTAssertEqual(try redisBystander.call("SET", "alive", "ok"), "+OK\r\n")
        let redisGet = TestClient.encode(["GET", "alive"])
        for _ in 0..<2 {
            // 3,000 requests in one write: 3,000 slots recycled, past the 1,024 a sweep keeps.
            let burst = try TestClient(port: memcache.port)
            XCTAssertEqual(try burst.request(String(repeating: "get alive\r\n", count: 3000), until: "END\r\n", occurrences: 3000),
                           String(repeating: "VALUE alive 0 2\r\nok\r\nEND\r\n", count: 3000))
            let redisBurst = try TestClient(port: redis.port)
            try redisBurst.send(Array([[UInt8]](repeating: redisGet, count: 3000).joined()))
            XCTAssertEqual(String(decoding: try redisBurst.receiveReplies(3000), as: UTF8.self), String(repeating: "$2\r\nok\r\n", count: 3000))
            // Leavers: requests in flight, then a refused command (memcached) or an unknown
            // command and a protocol error (Redis), and gone before the replies.
            for _ in 0..<20 {
                let leaver = try TestClient(port: memcache.port)
                try leaver.send(String(repeating: "get alive\r\n", count: 50) + "bogus\r\n")
                leaver.close()
                let redisLeaver = try TestClient(port: redis.port)
                try redisLeaver.send(Array([[UInt8]](repeating: redisGet, count: 50).joined()) + Array("*1\r\n$7\r\nNOSUCHX\r\n*x\r\n".utf8))
                redisLeaver.close()
            }
            // Leavers whose requests are still queued on the backend (it is paused): their slots
            // wait with the worker's orphans until the replies come, and the sweep frees them.
            memcached.pause()
            for _ in 0..<20 {
                let leaver = try TestClient(port: memcache.port)
                try leaver.send(String(repeating: "get alive\r\n", count: 50))
                leaver.close()
            }
            usleep(200_000)
            memcached.resume()
            // Blocked Redis clients that leave: their dedicated connections give the command up.
            for _ in 0..<5 {
                let blocked = try TestClient(port: redis.port)
                try blocked.send(TestClient.encode(["BLPOP", "nothing-here", "0"]))
                usleep(20_000)
                blocked.close()
            }
            try assertHealthy(memcache.port, bystander)
            XCTAssertEqual(try redisBystander.call("GET", "alive"), "$2\r\nok\r\n")
            // The sweep frees the slots past those kept and the orphans nothing reaches; the next
            // round reuses the rest.
            usleep(1_300_000)
        }
        try assertHealthy(memcache.port, bystander)
        XCTAssertEqual(try TestClient(port: redis.port).call("GET", "alive"), "$2\r\nok\r\n")
    }

    func testTenThousandConnectionsOpenedAndClosed() throws {
        let backend = try group.memcached()
        let tern = try start([backend.address])
        let bystander = try TestClient(port: tern.port)
        try assertHealthy(tern.port, bystander)
        let before = rssKiB(tern.process)
        for index in 0..<10_000 {
            let client = try TestClient(port: tern.port)
            if index % 10 == 0 { try client.send("get alive\r\n") }
            client.close()
        }
        usleep(1_500_000)
        try assertHealthy(tern.port, bystander)
        if checksMemory { XCTAssertLessThan(rssKiB(tern.process) - before, 8 * 1024, "RSS returns near its start") }
        // (The bystander's connection asks: a sanitized build may still be reading the last
        // closes after the fixed pause.)
        var stats = ""
        _ = try eventually("counted") {
            stats = try bystander.request("stats\r\n", until: "END\r\n")
            return stats.contains("STAT curr_connections 1\r\n") ? "counted" : "not yet"
        }
        XCTAssertTrue(stats.contains("STAT curr_connections 1\r\n"), stats)
    }

    /// Clients that were used and then idle hold no buffers: 1,500 connections to a memcached
    /// pool and 1,500 to a Redis pool, each sending one GET (and, for Redis, CLIENT SETINFO as
    /// redis-py does) and reading its reply, then left open. Before, each kept a 4 KiB output
    /// buffer and a Redis one its argument list too: about 4,500 and 5,100 bytes of RSS per
    /// connection (`bench/idle.py --used`); now its output block goes back to the worker once
    /// written, and a Redis client parses into the worker's argument list. Replies checked, a
    /// bystander served before and after.
    func testUsedIdleConnectionsHoldNoBuffers() throws {
        let backend = try group.memcached()
        let redisBackend = try group.redis()
        let tern = try start([backend.address])
        let redisPort = ProcessGroup.freePort()
        let redisTern = try group.tern(config: "r:\n  listen: 127.0.0.1:\(redisPort)\n  redis: true\n  timeout: 500\n  servers:\n   - \(redisBackend.address):1\n",
                                       arguments: ["--threads", "2"], waitPort: redisPort)
        let bystander = try TestClient(port: tern.port)
        try assertHealthy(tern.port, bystander)
        var rise: [Int] = []
        for (port, process, request, reply) in [
            (tern.port, tern.process, "get idle:missing\r\n", "END\r\n"),
            (redisPort, redisTern, "*4\r\n$6\r\nCLIENT\r\n$7\r\nSETINFO\r\n$8\r\nLIB-NAME\r\n$8\r\nredis-py\r\n*2\r\n$3\r\nGET\r\n$12\r\nidle:missing\r\n", "+OK\r\n$-1\r\n"),
        ] {
            usleep(300_000)
            let before = rssKiB(process)
            var clients: [TestClient] = []
            for _ in 0..<1500 {
                let client = try TestClient(port: port)
                XCTAssertEqual(try client.request(request, until: reply), reply)
                clients.append(client)
            }
            usleep(1_500_000)
            rise.append((rssKiB(process) - before) * 1024 / 1500)
            for client in clients { client.close() }
        }
        try assertHealthy(tern.port, bystander)
        print("RSS per used idle connection: memcached \(rise[0]) bytes, Redis \(rise[1]) bytes")
        if checksMemory {
            XCTAssertLessThan(rise[0], 1500, "memcached: bytes of RSS per used, idle connection")
            XCTAssertLessThan(rise[1], 1500, "Redis: bytes of RSS per used, idle connection")
        }
    }

    // MARK: Backend chaos under load

    /// Clients that keep setting and reading back key = value, recording every mismatch, every
    /// error (by the server the key lives on) and every connection Tern closes.
    final class Load: Sendable {
        struct Counts { var ok = 0; var errors: [Int: Int] = [:]; var mismatches: [String] = []; var closed = 0; var lastErrorAt: [Int: Date] = [:] }
        let counts = Mutex(Counts())
        let stop = Atomic<Bool>(false)

        /// Stops the clients and checks what every chaos test expects of them: no reply went to
        /// the wrong request, no client was closed because of a backend, and the load ran.
        func finish(file: StaticString = #filePath, line: UInt = #line) -> Counts {
            stop.store(true, ordering: .relaxed)
            usleep(500_000)
            let counts = counts.withLock { $0 }
            XCTAssertEqual(counts.mismatches, [], "no request was answered with another request's reply", file: file, line: line)
            XCTAssertEqual(counts.closed, 0, "no client connection was closed because of a backend", file: file, line: line)
            XCTAssertGreaterThan(counts.ok, 500, file: file, line: line)
            return counts
        }

        func run(port: Int, clients: Int, keysPerServer: [[String]], redis: Bool) {
            for client in 0..<clients {
                Thread {
                    guard let connection = try? TestClient(port: port, timeout: 3) else { return }
                    var round = 0
                    while !self.stop.load(ordering: .relaxed) {
                        for (server, keys) in keysPerServer.enumerated() {
                            let key = keys[(round + client) % keys.count]
                            let value = "\(key)-\(round)"
                            do {
                                let reply: String
                                if redis {
                                    _ = try connection.call("SET", key, value)
                                    reply = try connection.call("GET", key)
                                } else {
                                    _ = try connection.request("set \(key) 0 0 \(value.utf8.count)\r\n\(value)\r\n", until: "\r\n")
                                    reply = try connection.memcacheGet(key)
                                }
                                self.record(server: server, key: key, value: value, reply: reply, redis: redis)
                            } catch {
                                self.counts.withLock { $0.closed += 1 }
                                return
                            }
                        }
                        round += 1
                    }
                }.start()
            }
        }

        func record(server: Int, key: String, value: String, reply: String, redis: Bool) {
            counts.withLock { counts in
                let isError = reply.hasPrefix("SERVER_ERROR") || reply.hasPrefix("-ERR") || reply.hasPrefix("ERROR")
                if isError {
                    counts.errors[server, default: 0] += 1
                    counts.lastErrorAt[server] = Date()
                    return
                }
                // A reply must be this key's: its own value, or a miss; never another key's.
                let expected = redis ? "$\(value.utf8.count)\r\n\(value)\r\n" : "VALUE \(key) 0 \(value.utf8.count)\r\n\(value)\r\nEND\r\n"
                let miss = redis ? "$-1\r\n" : "END\r\n"
                if reply == expected || reply == miss || reply.contains("\(key)-") { counts.ok += 1 } else { counts.mismatches.append("\(key): \(reply.prefix(80))") }
            }
        }
    }

    func keys(for pool: PoolConfig, servers: Int) -> [[String]] {
        var result = Array(repeating: [String](), count: servers)
        for index in 0..<2000 {
            let key = "chaos:\(index)"
            let server = Array(key.utf8).withUnsafeBytes { pool.placement().server(forKey: $0)! }
            if result[server].count < 20 { result[server].append(key) }
        }
        return result
    }

    func testMemcachedBackendKilledAndPausedUnderLoad() throws {
        let backends = try [group.memcached(), group.memcached()]
        let tern = try start(backends.map(\.address), extra: "  auto_eject_hosts: false\n")
        let load = Load()
        load.run(port: tern.port, clients: 8, keysPerServer: keys(for: tern.pool, servers: 2), redis: false)
        usleep(800_000)
        backends[0].kill()
        usleep(800_000)
        let restarted = try group.memcached(port: backends[0].port)
        usleep(1_000_000)
        backends[1].pause()
        usleep(1_200_000)
        backends[1].resume()
        usleep(2_500_000)
        let counts = load.finish()
        XCTAssertGreaterThan(counts.errors[0] ?? 0, 0, "the killed server's keys failed while it was down")
        // Recovered: the last errors are well before the end of the run.
        for (server, date) in counts.lastErrorAt { XCTAssertLessThan(date.timeIntervalSinceNow, -1.5, "server \(server) recovered") }
        _ = restarted
    }

    func testRedisConnectionsKilledMidReplyAndEvictionUnderLoad() throws {
        let backends = try [group.redis(), group.redis(extra: ["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"])]
        let tern = try start(backends.map(\.address), redis: true)
        let load = Load()
        load.run(port: tern.port, clients: 8, keysPerServer: keys(for: tern.pool, servers: 2), redis: true)
        // Fill the second server so that it evicts while the load runs.
        let filler = try TestClient(port: backends[1].port)
        for index in 0..<300 { _ = try filler.call("SET", "filler:\(index)", String(repeating: "x", count: 20_000)) }
        // Kill Tern's connections to the first server again and again, mid-stream.
        for _ in 0..<10 {
            _ = try? backends[0].call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            usleep(200_000)
        }
        usleep(1_500_000)
        let counts = load.finish()
        XCTAssertEqual(counts.errors[1] ?? 0, 0, "evictions are misses, not errors")
        XCTAssertGreaterThan(Int(try backends[1].call("INFO", "stats").components(separatedBy: "evicted_keys:")[1].prefix { $0.isNumber }) ?? 0, 0)
    }
}

extension TestClient {
    /// Sends `get key` and reads exactly one whole reply (framed by Tern's own reply parser).
    func memcacheGet(_ key: String) throws -> String {
        try send("get \(key)\r\n")
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            if case let .reply(length, _) = data.withUnsafeBytes({ MemcacheReplyParser.parse($0, framing: .retrieval) }) {
                return String(decoding: data[0..<length], as: UTF8.self)
            }
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count <= 0 { throw TestError("connection ended") }
            data += chunk[0..<count]
        }
    }
}
