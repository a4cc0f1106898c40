import Foundation
import Synchronization
import XCTest
@testable import TernCore

/// Real processes for integration tests: memcached, redis-server and the tern binary, on free
/// loopback ports, stopped when the test ends.
final class ProcessGroup {
    private(set) var processes: [Process] = []
    let directory: String

    init() {
        directory = NSTemporaryDirectory() + "tern-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    deinit { stopAll() }

    /// Signals every process before waiting for any: memcached leaves on SIGTERM at its next
    /// clock tick (up to a second), and waiting for each in turn cost a 14-server test 11 s.
    func stopAll() {
        let running = processes.filter(\.isRunning)
        for process in running {
            kill(process.processIdentifier, SIGCONT)
            process.terminate()
        }
        for process in running { process.waitUntilExit() }
        processes.removeAll()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Ports already handed out by `freePort()` in this test process.
    private static let handedOut = Mutex<Set<Int>>([])

    /// A port nothing is bound to, chosen below the kernel's ephemeral range: a port the kernel
    /// handed out for `bind(0)` could be taken by an outgoing connection (a client or a backend
    /// connection of an earlier test) before the server under test binds it. Never the same port
    /// twice in one test process.
    static func freePort() -> Int {
        let upper = min(ephemeralRangeStart(), 32768)
        while true {
            let port = Int.random(in: 10000..<upper)
            let fresh = handedOut.withLock { $0.insert(port).inserted }
            if fresh && canBind(port) { return port }
        }
    }

    private static func ephemeralRangeStart() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8),
              let first = text.split(whereSeparator: { $0 == " " || $0 == "\t" }).first,
              let start = Int(first), start > 11000 else { return 32768 }
        return start
    }

    /// Whether a listener could bind `port` on every IPv4 address right now.
    private static func canBind(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = 0  // INADDR_ANY
        address.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }

    /// An offset that moves every one of `ports` to a free port below the ephemeral range (for
    /// scripts with fixed ports that take an offset, like Deploy/demo.sh); the moved ports are
    /// never handed out again in this test process.
    static func freeOffset(for ports: [Int]) -> Int {
        let upper = max(min(ephemeralRangeStart(), 32768), ports.max()! + 1000)
        while true {
            let offset = Int.random(in: 1000..<(upper - ports.max()!))
            let moved = ports.map { $0 + offset }
            let fresh = handedOut.withLock { taken in
                guard moved.allSatisfy({ !taken.contains($0) }) else { return false }
                taken.formUnion(moved)
                return true
            }
            if fresh && moved.allSatisfy(canBind) { return offset }
        }
    }

    @discardableResult
    func launch(_ path: String, _ arguments: [String], log: String, environment: [String: String] = [:]) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        _ = FileManager.default.createFile(atPath: directory + "/" + log, contents: nil)
        let handle = FileHandle(forWritingAtPath: directory + "/" + log)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        processes.append(process)
        return process
    }

    /// Starts memcached on `port` (a free one when nil) and waits until it accepts.
    func memcached(port: Int? = nil, extra: [String] = []) throws -> Memcached {
        let port = port ?? Self.freePort()
        let process = try launch("/usr/bin/memcached", ["-p", "\(port)", "-l", "127.0.0.1", "-U", "0", "-u", "root", "-t", "1"] + extra, log: "memcached-\(port).log")
        try waitForPort(port)
        return Memcached(port: port, process: process)
    }

    /// Starts redis-server on `port` (a free one when nil), without persistence.
    func redis(port: Int? = nil, extra: [String] = []) throws -> RedisServer {
        let port = port ?? Self.freePort()
        let process = try launch("/usr/bin/redis-server", ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"] + extra,
                                 log: "redis-\(port).log")
        try waitForPort(port)
        return RedisServer(port: port, process: process)
    }

    static var ternBinary: String {
        if let path = ProcessInfo.processInfo.environment["TERN_BINARY"] { return path }
        let runner = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        var candidate = runner
        // The runner is `.build/<triple>/debug/TernPackageTests.xctest` (a file or a bundle).
        for _ in 0..<4 {
            let path = candidate.appendingPathComponent("tern").path
            if FileManager.default.isExecutableFile(atPath: path) { return path }
            candidate = candidate.deletingLastPathComponent()
        }
        return runner.appendingPathComponent("tern").path
    }

    /// Runs tern to completion (`-t`, `-V`, `-h`, …) and returns its status and combined output.
    static func runTern(_ arguments: [String]) throws -> (Int32, String) { try run(ternBinary, arguments) }

    /// Runs a program to completion and returns its status and combined output.
    static func run(_ path: String, _ arguments: [String]) throws -> (Int32, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardError = pipe
        process.standardOutput = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, output)
    }

    /// Starts a stand-in server in Python on 127.0.0.1:`port`: `body` runs with `server`, a
    /// socket listening there (backlog `backlog`), and `socket`, `threading` and `time`
    /// imported. Waits for the port unless `waitsForPort` is false (a full backlog would take
    /// the wait's connection).
    func pythonServer(port: Int, backlog: Int = 64, waitsForPort: Bool = true, log: String, _ body: String) throws {
        let script = """
            import socket, threading, time
            server = socket.socket()
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", \(port)))
            server.listen(\(backlog))

            """ + body
        try launch("/usr/bin/env", ["python3", "-c", script], log: log)
        if waitsForPort { try waitForPort(port) }
    }

    /// Writes `config` and starts tern on it; waits for `waitPort` (or the unix socket) to accept.
    @discardableResult
    func tern(config: String, arguments: [String] = [], waitPort: Int? = nil, waitUnix: String? = nil) throws -> Process {
        let path = directory + "/tern-\(processes.count).yml"
        try config.write(toFile: path, atomically: true, encoding: .utf8)
        // Each tern gets its own stats port unless the test chooses one.
        let stats = arguments.contains("-s") ? [] : ["-s", "\(Self.freePort())"]
        // On loopback unless the test chooses (nutcracker's default is 0.0.0.0).
        let statsAddress = arguments.contains("-a") ? [] : ["-a", "127.0.0.1"]
        let process = try launch(Self.ternBinary, ["-c", path, "-v", "7"] + stats + statsAddress + arguments, log: "tern-\(processes.count).log")
        if let waitPort { try waitForPort(waitPort) }
        if let waitUnix { try waitForUnix(waitUnix) }
        return process
    }

    func ternLog() -> String {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return files.filter { $0.hasPrefix("tern-") && $0.hasSuffix(".log") }.sorted()
            .compactMap { try? String(contentsOfFile: directory + "/" + $0, encoding: .utf8) }.joined()
    }

    func waitForPort(_ port: Int, timeout: Double = 10) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let client = try? TestClient(port: port) { client.close(); return }
            usleep(20_000)
        }
        throw TestError("nothing listens on port \(port) after \(timeout) s")
    }

    func waitForUnix(_ path: String, timeout: Double = 10) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let client = try? TestClient(unixPath: path) { client.close(); return }
            usleep(20_000)
        }
        throw TestError("nothing listens on \(path)")
    }
}

struct Memcached {
    var port: Int
    var process: Process
    var address: String { "127.0.0.1:\(port)" }

    func kill() {
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
    func pause() { stopProcess(process) }
    func resume() { continueProcess(process) }

    /// Asks this backend directly (bypassing tern).
    func get(_ key: String) throws -> String? {
        let client = try TestClient(port: port)
        defer { client.close() }
        let reply = try client.request("get \(key)\r\n", until: "END\r\n")
        guard reply.hasPrefix("VALUE ") else { return nil }
        let lines = reply.components(separatedBy: "\r\n")
        return lines[1]
    }
}

struct RedisServer {
    var port: Int
    var process: Process
    var address: String { "127.0.0.1:\(port)" }

    func kill() {
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
    func pause() { stopProcess(process) }
    func resume() { continueProcess(process) }

    /// Runs a command on this backend directly (bypassing tern).
    func call(_ arguments: String...) throws -> String {
        let client = try TestClient(port: port)
        defer { client.close() }
        return try client.call(arguments)
    }

    /// Waits (at most `seconds`) until this server has `count` blocked clients: a blocking
    /// command sent through Tern has reached it. A fixed sleep could be too short under a
    /// sanitizer on a loaded machine.
    func waitForBlockedClients(_ count: Int, within seconds: Double = 5, file: StaticString = #filePath, line: UInt = #line) {
        let wanted = "blocked_clients:\(count)\r\n"
        let deadline = Date().addingTimeInterval(seconds)
        var last = ""
        while Date() < deadline {
            last = (try? call("INFO", "clients")) ?? ""
            if last.contains(wanted) { return }
            usleep(20_000)
        }
        XCTFail("\(address): not \(wanted) within \(seconds) s: \(last)", file: file, line: line)
    }
}

/// Stops `process` with SIGSTOP and returns once every one of its threads is stopped. The
/// signal alone is not enough: the kernel stops the other threads only after the thread that
/// took the signal has run, and on a loaded machine a worker thread woken by a request can
/// answer it first (CI saw a "paused" memcached reply that way).
func stopProcess(_ process: Process) {
    let pid = process.processIdentifier
    Glibc.kill(pid, SIGSTOP)
    waitForThreads(of: pid, stopped: true)
}

/// Continues a process stopped by `stopProcess` and returns once its threads run again.
func continueProcess(_ process: Process) {
    let pid = process.processIdentifier
    Glibc.kill(pid, SIGCONT)
    waitForThreads(of: pid, stopped: false)
}

/// Polls the state letter of every thread in /proc/PID/task until all of them are (or none of
/// them is) in the stopped state `T`; fails the test after 5 s.
private func waitForThreads(of pid: pid_t, stopped: Bool) {
    let deadline = Date().addingTimeInterval(5)
    while Date() < deadline {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        let states = tasks.compactMap { task -> Character? in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/stat", encoding: .utf8),
                  let end = stat.lastIndex(of: ")") else { return nil }
            // "pid (comm) S ...": the state follows the command name's closing parenthesis.
            return stat[stat.index(end, offsetBy: 2)...].first
        }
        if !states.isEmpty, states.allSatisfy({ ($0 == "T") == stopped }) { return }
        usleep(1_000)
    }
    XCTFail("process \(pid) did not \(stopped ? "stop" : "continue") within 5 s")
}

/// Retries `body` until it returns `expected` or `seconds` pass; returns the last result.
/// For recovery after a backend restart (Tern backs off reconnects for up to 2 s).
func eventually(_ expected: String, within seconds: Double = 4, _ body: () throws -> String) rethrows -> String {
    let deadline = Date().addingTimeInterval(seconds)
    var last = try body()
    while last != expected, Date() < deadline {
        usleep(100_000)
        last = try body()
    }
    return last
}

struct TestError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A blocking socket client with a receive timeout.
final class TestClient {
    /// -1 once closed: a descriptor is closed once (closed twice, the second close could take
    /// another thread's socket that reused the number: an innocent client's requests then went
    /// straight to a cluster node, or failed with EBADF).
    private(set) var fd: Int32

    /// `receiveBuffer`: the socket's SO_RCVBUF, set before connecting (a small one keeps a
    /// large reply in the server's output instead of the kernel's buffers).
    init(port: Int, timeout: Double = 5, receiveBuffer: Int32? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        if var size = receiveBuffer { _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let result = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard result == 0 else {
            let error = errno
            Glibc.close(fd)
            fd = -1
            throw TestError("connect to \(port): \(String(cString: strerror(error)))")
        }
        setTimeout(timeout)
    }

    init(unixPath: String, timeout: Double = 5) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in unixPath.utf8.enumerated() { raw[i] = byte }
        }
        let result = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard result == 0 else {
            let error = errno
            Glibc.close(fd)
            fd = -1
            throw TestError("connect to \(unixPath): \(String(cString: strerror(error)))")
        }
        setTimeout(timeout)
    }

    func setTimeout(_ seconds: Double) {
        var value = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
    }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }
    /// Ends the client's side of the stream (FIN); replies can still be read.
    func shutdownWrite() { _ = Glibc.shutdown(fd, Int32(SHUT_WR)) }
    deinit { if fd >= 0 { Glibc.close(fd) } }

    func send(_ text: String) throws { try send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let count = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard count > 0 else { throw TestError("send failed: \(String(cString: strerror(errno)))") }
            offset += count
        }
    }

    /// Reads until the received bytes end with `suffix` (or contain `count` occurrences of it).
    func receive(until suffix: String, occurrences: Int = 1) throws -> [UInt8] {
        let marker = Array(suffix.utf8)
        var data: [UInt8] = []
        var found = 0
        var scanned = 0
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count <= 0 {
                throw TestError("connection ended or timed out after \(data.count) bytes: \(String(decoding: data.suffix(200), as: UTF8.self).debugDescription)")
            }
            data.append(contentsOf: chunk[0..<count])
            while scanned + marker.count <= data.count {
                if data[scanned..<(scanned + marker.count)].elementsEqual(marker) {
                    found += 1
                    scanned += marker.count
                } else {
                    scanned += 1
                }
            }
            if found >= occurrences, data.count >= marker.count, data.suffix(marker.count).elementsEqual(marker) { return data }
        }
    }

    func request(_ text: String, until suffix: String, occurrences: Int = 1) throws -> String {
        try send(text)
        return String(decoding: try receive(until: suffix, occurrences: occurrences), as: UTF8.self)
    }

    /// RESP: sends one command as a multibulk array and returns its whole reply as text.
    func call(_ arguments: [String]) throws -> String {
        try send(TestClient.encode(arguments))
        return String(decoding: try receiveReplies(1), as: UTF8.self)
    }

    func call(_ arguments: String...) throws -> String { try call(arguments) }

    static func encode(_ arguments: [String]) -> [UInt8] {
        var bytes = Array("*\(arguments.count)\r\n".utf8)
        for argument in arguments {
            bytes += Array("$\(argument.utf8.count)\r\n".utf8) + Array(argument.utf8) + Array("\r\n".utf8)
        }
        return bytes
    }

    /// Reads until `count` complete RESP replies have arrived; returns their bytes.
    func receiveReplies(_ count: Int) throws -> [UInt8] {
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        var parsedOffset = 0
        var complete = 0
        while complete < count {
            while complete < count {
                let result = data[parsedOffset...].withUnsafeBytes { RespReplyParser.parse($0, maxDepth: 64) }
                guard case let .reply(length, _) = result else { break }
                parsedOffset += length
                complete += 1
            }
            if complete >= count { break }
            let received = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if received <= 0 {
                throw TestError("connection ended or timed out after \(complete) replies: \(String(decoding: data.suffix(200), as: UTF8.self).debugDescription)")
            }
            data.append(contentsOf: chunk[0..<received])
        }
        return data
    }

    /// Whatever arrives within `seconds`; stops at end of stream.
    func drain(for seconds: Double) -> (bytes: [UInt8], closed: Bool) {
        setTimeout(seconds)
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count == 0 { return (data, true) }
            if count < 0 { return (data, errno == ECONNRESET) }
            data.append(contentsOf: chunk[0..<count])
        }
    }
}

extension XCTestCase {
    /// Runs a redis-py script under whichever python3 has redis-py installed (pyenv's, or
    /// Debian's); its last line printed must be "ok".
    func python(_ script: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let run = ProcessGroup.run
        guard let python = ["python3", "/usr/bin/python3"].first(where: { (try? run("/usr/bin/env", [$0, "-c", "import redis"]).0) == 0 }) else {
            throw XCTSkip("redis-py is not installed (Deploy/install-packages.sh installs it)")
        }
        let (status, text) = try run("/usr/bin/env", [python, "-c", "import redis, socket, threading, time, json, urllib.request\n" + script + "\nprint('ok')"])
        XCTAssertEqual(status, 0, text, file: file, line: line)
        XCTAssertTrue(text.hasSuffix("ok\n"), text, file: file, line: line)
    }
}
