import Foundation
import XCTest

/// nutcracker-compatible flags and listeners, against the real binary.
final class CommandLineTests: XCTestCase {
    var group: ProcessGroup!
    override func setUp() { group = ProcessGroup() }
    override func tearDown() { group.stopAll() }

    func run(_ arguments: [String]) throws -> (Int32, String) { try ProcessGroup.runTern(arguments) }

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

    func testUnbindableListenExitsWithReason() throws {
        let (status, text) = try run(["-c", try write("p:\n  listen: 203.0.113.1:1\n  servers:\n   - 127.0.0.1:2:1\n")])
        XCTAssertEqual(status, 1)
        XCTAssertTrue(text.contains("cannot bind 203.0.113.1:1"), text)
    }

    func write(_ text: String) throws -> String {
        let path = group.directory + "/config-\(UInt32.random(in: 0...UInt32.max)).yml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }
}
