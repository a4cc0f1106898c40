import Foundation
import XCTest
@testable import TernCore

/// nutcracker-compatible flags and listeners, against the real binary.
final class CommandLineTests: XCTestCase {
    var group: ProcessGroup!
    override func setUp() { group = ProcessGroup() }
    override func tearDown() { group.stopAll() }

    func run(_ arguments: [String]) throws -> (Int32, String) { try ProcessGroup.runTern(arguments) }

    /// A socket listening on 127.0.0.1:`port` (the caller closes it): the port is in use.
    func listening(on port: Int) throws -> Int32 {
        let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        guard withUnsafePointer(to: &address, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(holder, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }) == 0,
              listen(holder, 1) == 0 else {
            close(holder)
            throw TestError("cannot hold port \(port)")
        }
        return holder
    }

    func testVersionFlag() throws {
        let (status, text) = try run(["-V"])
        XCTAssertEqual(status, 0)
        XCTAssertEqual(text, "This is tern-0.1.0\n")
    }

    func testLogFilePidFileAndIPv6ListenerThenSIGTERM() throws {
        let backend = try group.memcached()
        let port = ProcessGroup.freePort()
        let log = group.directory + "/out.log"
        let pid = group.directory + "/tern.pid"
        let tern = try group.tern(config: "v6:\n  listen: \"[::1]:\(port)\"\n  preconnect: true\n  servers:\n   - \(backend.address):1\n",
                                  arguments: ["-o", log, "-p", pid, "-s", "\(ProcessGroup.freePort())", "-a", "127.0.0.1", "-i", "1000"])
        // Connect over IPv6 loopback.
        let fd = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = UInt16(port).bigEndian
        address.sin6_addr = in6addr_loopback
        var connected = false
        for _ in 0..<250 where !connected {
            connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } } == 0
            if !connected { usleep(20_000) }
        }
        XCTAssertTrue(connected)
        let request = Array("set six 0 0 1\r\n6\r\nget six\r\n".utf8)
        _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        var buffer = [UInt8](repeating: 0, count: 256)
        var reply = ""
        while !reply.hasSuffix("END\r\n") {
            let count = recv(fd, &buffer, buffer.count, 0)
            guard count > 0 else { break }
            reply += String(decoding: buffer[0..<count], as: UTF8.self)
        }
        XCTAssertEqual(reply, "STORED\r\nVALUE six 0 1\r\n6\r\nEND\r\n")
        let pidText = try String(contentsOfFile: pid, encoding: .utf8)
        XCTAssertEqual(Int32(pidText.trimmingCharacters(in: .whitespacesAndNewlines)), tern.processIdentifier)
        let logText = try String(contentsOfFile: log, encoding: .utf8)
        XCTAssertTrue(logText.contains("pool v6 listening on [::1]:\(port)"), logText)
        tern.terminate()
        tern.waitUntilExit()
        XCTAssertEqual(tern.terminationStatus, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: pid))
        XCTAssertTrue(try String(contentsOfFile: log, encoding: .utf8).contains("signal 15 (SIGTERM) received"))
    }

    /// A pid file that cannot be written (its directory does not exist: a unit whose /run
    /// directory is missing) is a warning, and Tern serves, as nutcracker does; Tern refused to
    /// start (the drop-in sweep; fails on 7577d0c).
    func testUnwritablePidFileIsAWarning() throws {
        let backend = try group.memcached()
        let port = ProcessGroup.freePort()
        let pid = group.directory + "/missing/tern.pid"
        try group.tern(config: "p:\n  listen: 127.0.0.1:\(port)\n  servers:\n   - \(backend.address):1\n", arguments: ["-p", pid], waitPort: port)
        XCTAssertEqual(try TestClient(port: port).request("set k 0 0 1\r\nx\r\nget k\r\n", until: "END\r\n"), "STORED\r\nVALUE k 0 1\r\nx\r\nEND\r\n")
        XCTAssertTrue(group.ternLog().contains("cannot write pid file '\(pid)': No such file or directory; running without one"), group.ternLog())
    }

    /// Without --threads, the worker count follows the CPUs the process may use: under
    /// `taskset -c 0` one worker, whatever the machine has.
    func testDefaultWorkerCountFollowsTheAffinityMask() throws {
        let taskset = "/usr/bin/taskset"
        guard FileManager.default.isExecutableFile(atPath: taskset) else { throw XCTSkip("taskset (util-linux) is not installed") }
        let backend = try group.memcached()
        let port = ProcessGroup.freePort()
        let path = try write("one:\n  listen: 127.0.0.1:\(port)\n  servers:\n   - \(backend.address):1\n")
        try group.launch(taskset, ["-c", "0", ProcessGroup.ternBinary, "-c", path, "-s", "\(ProcessGroup.freePort())", "-v", "6"], log: "tern-affinity.log")
        try group.waitForPort(port)
        let stats = try TestClient(port: port).request("stats\r\n", until: "END\r\n")
        XCTAssertTrue(stats.contains("STAT threads 1\r\n"), stats)
        XCTAssertTrue(group.ternLog().contains("worker threads: 1 (the affinity mask allows 1 of "), group.ternLog())
        // Under this test's own limits, the count the log gives is the count that runs, and it is
        // never more than the online CPUs.
        let open = ProcessGroup.freePort()
        let logPath = group.directory + "/tern-\(group.processes.count).log"
        try group.tern(config: "all:\n  listen: 127.0.0.1:\(open)\n  servers:\n   - \(backend.address):1\n", waitPort: open)
        let allStats = try TestClient(port: open).request("stats\r\n", until: "END\r\n")
        let log = try String(contentsOfFile: logPath, encoding: .utf8)
        let line = log.split(separator: "\n").first { $0.contains("worker threads: ") }
        let logged = line.flatMap { text in text.range(of: "worker threads: ").flatMap { Int(text[$0.upperBound...].prefix { $0.isNumber }) } }
        XCTAssertNotNil(logged, log)
        XCTAssertTrue(allStats.contains("STAT threads \(logged ?? -1)\r\n"), allStats)
        XCTAssertLessThanOrEqual(logged ?? 0, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
    }

    /// `-d` as nutcracker's: the daemon clears its umask, so a unix-socket listener without a
    /// mode is 0777 (it was 0755, and clients running as another user could not connect), and
    /// a start that fails removes the pid file it wrote (it was left behind, naming a process
    /// that is gone; found by a drop-in sweep).
    func testDaemonSocketModeAndPidFileOfAFailedStart() throws {
        let backend = try group.memcached()
        let socketPath = group.directory + "/d.sock", pid = group.directory + "/d.pid", log = group.directory + "/d.log"
        let config = try write("u:\n  listen: \(socketPath)\n  servers:\n   - \(backend.address):1\n")
        // Through system(): Foundation's Process waits for a socket it hands the child, which
        // the daemon inherits, so it would wait for the daemon.
        let status = system("'\(ProcessGroup.ternBinary)' -d -c '\(config)' -p '\(pid)' -o '\(log)' --no-stats </dev/null >/dev/null 2>&1")
        XCTAssertEqual(status, 0)
        XCTAssertEqual(eventually("up", within: 5) { FileManager.default.fileExists(atPath: socketPath) && FileManager.default.fileExists(atPath: pid) ? "up" : "" }, "up")
        let daemonPid = Int32(try String(contentsOfFile: pid, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        defer { if daemonPid > 0 { kill(daemonPid, SIGKILL) } }
        var info = stat()
        XCTAssertEqual(stat(socketPath, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o777)
        XCTAssertEqual(kill(daemonPid, SIGTERM), 0)
        XCTAssertEqual(eventually("gone", within: 5) { FileManager.default.fileExists(atPath: pid) ? "" : "gone" }, "gone")
        // A listener that cannot be bound: the start fails, and the pid file goes with it.
        let taken = ProcessGroup.freePort()
        let holder = try listening(on: taken)
        defer { close(holder) }
        let busy = try write("b:\n  listen: 127.0.0.1:\(taken)\n  servers:\n   - \(backend.address):1\n")
        let failed = try run(["-c", busy, "-p", pid, "--no-stats"])
        XCTAssertEqual(failed.0, 1, failed.1)
        XCTAssertFalse(FileManager.default.fileExists(atPath: pid))
    }

    /// Starts that cannot work fail at once, cleanly (operator sweep 33; each fails on 0c5ce24):
    /// `--shutdown-timeout inf|nan|1e19` was taken and the drain trapped at SIGTERM (exit 132,
    /// replies lost); `--threads` beyond what the descriptor limit allows aborted inside libev
    /// (exit 134) with the pools listening; a stats or admin port in use failed the start after
    /// the pools had accepted clients, and left the pid file naming a process that was gone.
    func testStartsThatCannotWorkFailCleanly() throws {
        let backend = try group.memcached()
        let port = ProcessGroup.freePort()
        let config = try write("p:\n  listen: 127.0.0.1:\(port)\n  servers:\n   - \(backend.address):1\n")
        for value in ["inf", "nan", "1e19", "-1"] {
            // (With -t: a build that took the value tests the file and exits instead of running.)
            let (status, text) = try run(["-t", "-c", config, "--no-stats", "--shutdown-timeout=\(value)"])
            XCTAssertEqual(status, 64, text)
            XCTAssertTrue(text.contains("--shutdown-timeout must be 0 to 86400"), text)
        }
        XCTAssertEqual(try run(["-t", "-c", config, "--no-stats", "--threads", "5000"]).0, 64)
        // More workers than descriptors: refused before anything listens.
        let (limited, limitedText) = try ProcessGroup.run("/bin/sh", ["-c", "ulimit -n 64; exec '\(ProcessGroup.ternBinary)' -c '\(config)' --no-stats --threads 100"])
        XCTAssertEqual(limited, 1, limitedText)
        XCTAssertTrue(limitedText.contains("100 worker threads need about") && !limitedText.contains("listening on"), limitedText)
        // A stats or an admin port in use: exit 1, no pool ever listened, no pid file left.
        let taken = ProcessGroup.freePort()
        let holder = try listening(on: taken)
        defer { close(holder) }
        let pid = group.directory + "/busy.pid"
        for flags in [["-s", "\(taken)", "-a", "127.0.0.1"], ["--no-stats", "--admin-port", "\(taken)"]] {
            let (status, text) = try run(["-c", config, "-p", pid] + flags)
            XCTAssertEqual(status, 1, text)
            XCTAssertTrue(text.contains("cannot listen on 127.0.0.1:\(taken)") && !text.contains("listening on"), text)
            XCTAssertFalse(FileManager.default.fileExists(atPath: pid), "\(flags)")
        }
        // A fractional timeout drains and says so.
        let process = try group.launch(ProcessGroup.ternBinary, ["-c", config, "--no-stats", "--shutdown-timeout", "0.5"], log: "tern-fraction.log")
        try group.waitForPort(port)
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0)
        XCTAssertTrue(group.ternLog().contains("draining (at most 0.5 s)"), group.ternLog())
    }

    /// nutcracker reads its command line with getopt: values attached to short options and
    /// grouped flags (`-v7`, `-c/etc/x.yml`, `-tc file`) ran there and were refused here as
    /// unknown options; a stats port past 65535 was bound modulo 65536 (found by a drop-in
    /// sweep against nutcracker 0.5.0).
    func testNutcrackerCommandLinesRunUnchanged() throws {
        let path = try write("p:\n  listen: 127.0.0.1:1\n  servers:\n   - 127.0.0.1:2:1\n")
        for arguments in [["-t", "-c", path, "-v7"], ["-t", "-c" + path], ["-tc" + path], ["-t", "-c", path, "-s39999", "-a127.0.0.1", "-i30000", "-m16384"],
                          ["-t", "--conf-file=" + path, "--verbose", "7"]] {
            let (status, text) = try run(arguments)
            XCTAssertEqual(status, 0, "\(arguments): \(text)")
            XCTAssertTrue(text.contains("syntax is ok"), "\(arguments): \(text)")
        }
        for arguments in [["-t", "-c", path, "-s", "104975"], ["-t", "-c", path, "-s0"], ["-t", "-c", path, "-x"]] {
            XCTAssertNotEqual(try run(arguments).0, 0, "\(arguments)")
        }
    }

    func testReadableConfigWithASecretIsWarnedAbout() throws {
        let path = try write("r:\n  listen: 127.0.0.1:1\n  redis: true\n  redis_auth: s3cret\n  servers:\n   - 127.0.0.1:2:1\n")
        chmod(path, 0o644)
        let (status, text) = try run(["-t", "-c", path])
        XCTAssertEqual(status, 0)
        XCTAssertTrue(text.contains("contains redis_auth and is readable by other users"), text)
        XCTAssertFalse(text.contains("s3cret"), text)
        chmod(path, 0o600)
        XCTAssertFalse(try run(["-t", "-c", path]).1.contains("readable by other users"))
    }

    /// A config file with users: (password hashes) or a sentinel password, and no redis_auth,
    /// is warned about too when others can read it.
    func testReadableConfigWithUsersOrSentinelPasswordIsWarnedAbout() throws {
        let hash = String(repeating: "ab", count: 32)
        let users = try write("m:\n  listen: 127.0.0.1:1\n  users:\n   - name: app\n     password_sha256: \"\(hash)\"\n     commands: [\"+@read\"]\n     keys: [allkeys]\n  servers:\n   - 127.0.0.1:2:1\n")
        chmod(users, 0o644)
        let (status, text) = try run(["-t", "-a", "127.0.0.1", "-c", users])
        XCTAssertEqual(status, 0, text)
        XCTAssertEqual(warnings(text), ["configuration file '\(users)' contains users: (password hashes) and is readable by other users (chmod o-r)"])
        XCTAssertFalse(text.contains(hash), text)
        chmod(users, 0o600)
        XCTAssertEqual(warnings(try run(["-t", "-a", "127.0.0.1", "-c", users]).1), [])
        let both = try write("s:\n  listen: 127.0.0.1:1\n  redis: true\n  redis_auth: pw\n  sentinel:\n    addresses: [127.0.0.1:26379]\n    password: sentinel-pw\n  users:\n   - name: app\n     password_sha256: \"\(hash)\"\n  servers:\n   - shard1:1\n")
        chmod(both, 0o604)
        XCTAssertEqual(warnings(try run(["-t", "-a", "127.0.0.1", "-c", both]).1),
                       ["configuration file '\(both)' contains redis_auth, users: (password hashes) and a sentinel password and is readable by other users (chmod o-r)"])
        // Readable by the group only is not "by others".
        chmod(both, 0o640)
        XCTAssertEqual(warnings(try run(["-t", "-a", "127.0.0.1", "-c", both]).1), [])
    }

    /// `-t` warns about each pool that listens beyond loopback while its clients need no
    /// password, and about no other pool.
    func testPoolsOpenBeyondLoopbackWithoutAPasswordAreWarnedAbout() throws {
        let hash = String(repeating: "0f", count: 32)
        let user = "  users:\n   - name: app\n     password_sha256: \"\(hash)\"\n     commands: [\"+@all\"]\n     keys: [allkeys]\n"
        let server = "  servers:\n   - 127.0.0.1:2:1\n"
        let path = try write("""
            open:
              listen: 0.0.0.0:1
            \(server)openv6:
              listen: "[::]:2"
              redis: true
            \(server)memcacheauth:
              listen: 0.0.0.0:3
              redis_auth: backend-only
            \(server)loop:
              listen: 127.0.0.1:4
            \(server)loop8:
              listen: 127.8.9.10:5
            \(server)loop6:
              listen: "[::1]:6"
            \(server)mapped:
              listen: "[::ffff:127.0.0.1]:7"
            \(server)name:
              listen: localhost:8
            \(server)socket:
              listen: \(group.directory)/tern.sock 0600
            \(server)redisauth:
              listen: 0.0.0.0:9
              redis: true
              redis_auth: pw
            \(server)redisusers:
              listen: "[::]:10"
              redis: true
            \(user)\(server)memcacheusers:
              listen: 0.0.0.0:11
            \(user)\(server)
            """)
        chmod(path, 0o600)
        let (status, text) = try run(["-t", "-a", "127.0.0.1", "-c", path])
        XCTAssertEqual(status, 0, text)
        XCTAssertTrue(text.contains("syntax is ok"), text)
        XCTAssertEqual(warnings(text), [
            "pool 'open' listens on 0.0.0.0:1, beyond loopback, with neither client certificates nor a password (tls: with client_auth: required, or users:): anyone who reaches that address can use its servers",
            "pool 'openv6' listens on [::]:2, beyond loopback, with neither client certificates nor a password (tls: with client_auth: required, or redis_auth or users:): anyone who reaches that address can use its servers",
            // redis_auth on a memcached pool authenticates Tern to nothing a client sees.
            "pool 'memcacheauth' listens on 0.0.0.0:3, beyond loopback, with neither client certificates nor a password (tls: with client_auth: required, or users:): anyone who reaches that address can use its servers",
        ])
    }

    /// The stats port on nutcracker's default address (0.0.0.0) is warned about; -a with a
    /// loopback address or --no-stats silences it.
    func testStatsPortBeyondLoopbackIsWarnedAbout() throws {
        let path = try write("p:\n  listen: 127.0.0.1:1\n  servers:\n   - 127.0.0.1:2:1\n")
        let expected = "the stats port listens on 0.0.0.0:22222, beyond loopback (nutcracker's default, kept for compatibility): anyone who reaches it reads the host, pool and server names and their traffic; -a 127.0.0.1 binds it to loopback, --no-stats turns it off"
        XCTAssertEqual(warnings(try run(["-t", "-c", path]).1), [expected])
        XCTAssertEqual(warnings(try run(["-t", "-c", path, "-s", "4000", "-a", "::"]).1), [expected.replacingOccurrences(of: "0.0.0.0:22222", with: "[::]:4000")])
        for quiet in [["-a", "127.0.0.1"], ["--stats-addr", "::1"], ["-a", "localhost"], ["--no-stats"]] {
            XCTAssertEqual(warnings(try run(["-t", "-c", path] + quiet).1), [], "\(quiet)")
        }
    }

    /// A running tern logs the same warnings at startup (and keeps serving), and a reload
    /// that opens another pool logs that pool's.
    func testStartupAndReloadLogExposureWarnings() throws {
        let backend = try group.memcached()
        let (port, later, moved, statsPort) = (ProcessGroup.freePort(), ProcessGroup.freePort(), ProcessGroup.freePort(), ProcessGroup.freePort())
        let wide = "wide:\n  listen: 0.0.0.0:\(port)\n  servers:\n   - \(backend.address):1\n"
        let configPath = group.directory + "/tern-\(group.processes.count).yml"
        let tern = try group.tern(config: wide + "local:\n  listen: 127.0.0.1:\(later)\n  servers:\n   - \(backend.address):1\n",
                                  arguments: ["-s", "\(statsPort)", "-a", "0.0.0.0"], waitPort: port)
        let client = try TestClient(port: port)
        XCTAssertEqual(try client.request("set k 0 0 1\r\nv\r\nget k\r\n", until: "END\r\n"), "STORED\r\nVALUE k 0 1\r\nv\r\nEND\r\n")
        let log = group.ternLog()
        XCTAssertTrue(log.contains("pool 'wide' listens on 0.0.0.0:\(port), beyond loopback, with neither client certificates nor a password (tls: with client_auth: required, or users:)"), log)
        XCTAssertTrue(log.contains("the stats port listens on 0.0.0.0:\(statsPort), beyond loopback"), log)
        XCTAssertFalse(log.contains("pool 'local'"), log)
        // The pool 'local' moves beyond loopback: the reload applies and is warned about.
        try (wide + "local:\n  listen: 0.0.0.0:\(moved)\n  servers:\n   - \(backend.address):1\n")
            .write(toFile: configPath, atomically: true, encoding: .utf8)
        kill(tern.processIdentifier, SIGHUP)
        let warned = eventually("yes") { self.group.ternLog().contains("pool 'local' listens on 0.0.0.0:\(moved), beyond loopback") ? "yes" : "no" }
        XCTAssertEqual(warned, "yes", group.ternLog())
        XCTAssertTrue(group.ternLog().contains("reload (SIGHUP) applied"), group.ternLog())
    }

    /// The `tern: warning: ` lines of `-t`'s output, without the prefix.
    func warnings(_ output: String) -> [String] {
        output.split(separator: "\n").filter { $0.hasPrefix("tern: warning: ") }.map { String($0.dropFirst("tern: warning: ".count)) }
    }

    func testUnbindableListenExitsWithReason() throws {
        let (status, text) = try run(["-c", try write("p:\n  listen: 203.0.113.1:1\n  servers:\n   - 127.0.0.1:2:1\n")])
        XCTAssertEqual(status, 1)
        XCTAssertTrue(text.contains("cannot bind 203.0.113.1:1"), text)
    }

    // MARK: --locate

    /// A placement file of ../shared/vectors (made by the real nutcracker and Redis): the config
    /// from its header and its key → value rows.
    func vectors(_ name: String) throws -> (config: String, rows: [(key: String, value: Int)]) {
        var directory = #filePath
        for _ in 0..<3 { directory = String(directory[..<directory.lastIndex(of: "/")!]) }
        let path = directory + "/../shared/vectors/" + name
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw XCTSkip("vectors not found at \(path)") }
        var config = "", inConfig = false
        var rows: [(String, Int)] = []
        for line in text.split(separator: "\n") {
            if line.hasPrefix("#") {
                if line.contains("config (exact file") { inConfig = true } else if inConfig { config += line.dropFirst() + "\n" }
                continue
            }
            let fields = line.split(separator: "\t")
            if fields.count == 2, let value = Int(fields[1]) { rows.append((String(fields[0]), value)) }
        }
        return (config, rows)
    }

    /// Runs `tern --locate` with every key and returns, per key, the right-hand side printed
    /// for `pool`.
    func locate(_ keys: [String], pool: String, configPath: String, restrict: Bool = true) throws -> [String: String] {
        let (status, output) = try run(["--locate"] + keys + ["-c", configPath] + (restrict ? ["--pool", pool] : []))
        XCTAssertEqual(status, 0, output)
        var result: [String: String] = [:]
        for line in output.split(separator: "\n") {
            let fields = line.split(separator: "\t", maxSplits: 1)
            guard fields.count == 2, fields[1].hasPrefix(pool + " → ") else { continue }
            result[String(fields[0])] = String(fields[1].dropFirst(pool.count + 3))
        }
        return result
    }

    /// `tern --locate` reproduces nutcracker's placements (ketama with fnv1a_64, md5, weights and
    /// names, a hash tag; modula with crc32a), key for key.
    func testLocateReproducesTwemproxyPlacements() throws {
        for file in ["ketama_fnv1a_64.tsv", "ketama_md5.tsv", "ketama_weighted_named.tsv", "modula_crc32a.tsv", "hashtag_ketama_fnv1a_64.tsv"] {
            let (text, rows) = try vectors(file)
            XCTAssertGreaterThanOrEqual(rows.count, 2000, file)
            let pool = try ConfigLoader.load(text: text, file: file).pools[0]
            let path = try write(text)
            let printed = try locate(rows.map(\.key), pool: pool.name, configPath: path)
            var mismatches = 0
            for row in rows {
                let server = pool.servers[row.value]
                let expected = server.name == server.address.description ? server.name : "\(server.name) (\(server.address))"
                if printed[row.key] != expected {
                    mismatches += 1
                    if mismatches < 5 { XCTFail("\(file): \(row.key) → \(printed[row.key] ?? "nothing"), nutcracker put it on \(expected)") }
                }
            }
            XCTAssertEqual(mismatches, 0, file)
        }
    }

    /// Redis Cluster slots (from CLUSTER KEYSLOT of a real Redis) through a `distribution: slots`
    /// pool: the slot printed and the server that owns it.
    func testLocateReproducesRedisSlots() throws {
        let (_, rows) = try vectors("slots.tsv")
        XCTAssertGreaterThanOrEqual(rows.count, 2000)
        let path = try write("c:\n  listen: 127.0.0.1:1\n  redis: true\n  distribution: slots\n  servers:\n   - 127.0.0.1:7001:1\n   - 127.0.0.1:7002:1\n   - 127.0.0.1:7003:1\n")
        let ranges = Placement.defaultSlotRanges(serverCount: 3)
        let printed = try locate(rows.map(\.key), pool: "c", configPath: path, restrict: false)
        var mismatches = 0
        for row in rows {
            let owner = ranges.firstIndex { $0.contains(row.value) }!
            let expected = "127.0.0.1:\(7001 + owner) (slot \(row.value))"
            if printed[row.key] != expected {
                mismatches += 1
                if mismatches < 5 { XCTFail("\(row.key) → \(printed[row.key] ?? "nothing"), Redis says slot \(row.value) (\(expected))") }
            }
        }
        XCTAssertEqual(mismatches, 0)
    }

    /// Every pool, a warm-up's old pool on a line of its own, `--pool` to pick one, and errors.
    func testLocateLinesPerPoolAndErrors() throws {
        let path = try write("""
            new:
              listen: 127.0.0.1:1
              servers:
               - 127.0.0.1:2:1 alpha
              warmup:
                servers:
                 - 127.0.0.1:11211:1
            rnd:
              listen: 127.0.0.1:3
              distribution: random
              servers:
               - 127.0.0.1:4:1
               - 127.0.0.1:5:1

            """)
        let (status, output) = try run(["--locate", "k1", "k2", "-c", path])
        XCTAssertEqual(status, 0, output)
        XCTAssertEqual(output, """
            k1\tnew → alpha (127.0.0.1:2)
            k1\tnew.warmup → 127.0.0.1 (127.0.0.1:11211)
            k1\trnd → random (any of 2 servers)
            k2\tnew → alpha (127.0.0.1:2)
            k2\tnew.warmup → 127.0.0.1 (127.0.0.1:11211)
            k2\trnd → random (any of 2 servers)

            """)
        XCTAssertEqual(try run(["--locate", "k", "--pool", "rnd", "-c", path]).1, "k\trnd → random (any of 2 servers)\n")
        let unknown = try run(["--locate", "k", "--pool", "nope", "-c", path])
        XCTAssertEqual(unknown.0, 1)
        XCTAssertTrue(unknown.1.contains("no pool named 'nope'"), unknown.1)
        XCTAssertNotEqual(try run(["--pool", "new", "-c", path]).0, 0, "--pool without --locate")
        XCTAssertNotEqual(try run(["--locate", "k", "-c", group.directory + "/missing.yml"]).0, 0)
    }

    func write(_ text: String) throws -> String {
        let path = group.directory + "/config-\(UInt32.random(in: 0...UInt32.max)).yml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }
}
