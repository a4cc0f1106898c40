import Foundation
import XCTest
import Yams
@testable import TernCore

/// No container engine runs here, so Deploy/ is checked by parsing it and by running the binary
/// with the command lines it contains.
final class DeployTests: XCTestCase {
    var group: ProcessGroup!
    override func setUp() { group = ProcessGroup() }
    override func tearDown() { group.stopAll() }

    static var root: String {
        var path = #filePath
        for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
        return path
    }

    func read(_ relative: String) throws -> String { try String(contentsOfFile: Self.root + "/" + relative, encoding: .utf8) }

    /// The long and short flags `tern -h` lists.
    lazy var knownFlags: Set<String> = {
        let text = (try? ProcessGroup.runTern(["-h"]).1) ?? ""
        var flags = Set<String>()
        for word in text.split(whereSeparator: { $0 == " " || $0 == "," || $0 == "\n" || $0 == "<" || $0 == "[" || $0 == "]" }) where word.hasPrefix("-") {
            flags.insert(String(word.prefix { $0 != "=" }))
        }
        return flags
    }()

    func assertFlagsExist(_ arguments: [String], _ context: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertTrue(knownFlags.contains("--admin-port"), "tern -h lists flags")
        for argument in arguments where argument.hasPrefix("-") {
            XCTAssertTrue(knownFlags.contains(argument), "\(context): tern has no flag \(argument)", file: file, line: line)
        }
    }

    /// Runs tern with `arguments` (config path and ports replaced by test ones) and checks the
    /// probe paths answer.
    func assertRuns(_ arguments: [String], probes: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let adminPort = ProcessGroup.freePort()
        let listenPort = ProcessGroup.freePort()
        let configPath = group.directory + "/deploy.yml"
        try "p:\n  listen: 127.0.0.1:\(listenPort)\n  servers:\n   - 127.0.0.1:11311:1\n".write(toFile: configPath, atomically: true, encoding: .utf8)
        var rewritten: [String] = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            rewritten.append(argument)
            if ["-c", "--conf-file"].contains(argument) { rewritten.append(configPath); index += 2; continue }
            if argument == "--admin-port" { rewritten.append(String(adminPort)); index += 2; continue }
            if ["-s", "--stats-port"].contains(argument) { rewritten.append(String(ProcessGroup.freePort())); index += 2; continue }
            if argument == "--admin-addr" { rewritten.append("127.0.0.1"); index += 2; continue }
            index += 1
        }
        if !rewritten.contains("-s") { rewritten += ["-s", String(ProcessGroup.freePort())] }
        let process = try group.launch(ProcessGroup.ternBinary, rewritten, log: "deploy-\(adminPort).log")
        try group.waitForPort(adminPort)
        for path in probes {
            let status = try eventually("200") {
                let client = try TestClient(port: adminPort)
                try client.send("GET \(path) HTTP/1.1\r\n\r\n")
                return String(String(decoding: client.drain(for: 2).bytes, as: UTF8.self).split(separator: " ").dropFirst().first ?? "")
            }
            XCTAssertEqual(status, "200", path, file: file, line: line)
        }
        process.terminate()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, file: file, line: line)
    }

    func testKubernetesSidecar() throws {
        let documents = try Array(Yams.load_all(yaml: read("Deploy/kubernetes/sidecar.yaml"))).compactMap { $0 as? [String: Any] }
        XCTAssertEqual(documents.map { $0["kind"] as? String }, ["ConfigMap", "Deployment"])
        let data = try XCTUnwrap((documents[0]["data"] as? [String: String])?["tern.yml"])
        let config = try ConfigLoader.load(text: data, file: "sidecar ConfigMap")
        XCTAssertEqual(config.pools.map(\.name), ["cache", "sessions"])
        for pool in config.pools { XCTAssertEqual(pool.listen.description.hasPrefix("127.0.0.1:"), true) }
        let spec = try XCTUnwrap(((documents[1]["spec"] as? [String: Any])?["template"] as? [String: Any])?["spec"] as? [String: Any])
        let containers = try XCTUnwrap(spec["containers"] as? [[String: Any]])
        let tern = try XCTUnwrap(containers.first { $0["name"] as? String == "tern" })
        let arguments = try XCTUnwrap(tern["args"] as? [String])
        assertFlagsExist(arguments, "sidecar args")
        let liveness = ((tern["livenessProbe"] as? [String: Any])?["httpGet"] as? [String: Any])?["path"] as? String
        let readiness = ((tern["readinessProbe"] as? [String: Any])?["httpGet"] as? [String: Any])?["path"] as? String
        XCTAssertEqual(liveness, "/healthz")
        XCTAssertEqual(readiness, "/readyz")
        XCTAssertNotNil((tern["lifecycle"] as? [String: Any])?["preStop"])
        XCTAssertNotNil((tern["resources"] as? [String: Any])?["requests"])
        XCTAssertEqual((tern["securityContext"] as? [String: Any])?["runAsNonRoot"] as? Bool, true)
        // The mount path matches the -c argument.
        let mount = (tern["volumeMounts"] as? [[String: Any]])?.first?["mountPath"] as? String
        XCTAssertEqual(arguments[arguments.firstIndex(of: "-c")! + 1], (mount ?? "") + "/tern.yml")
        // Secure by default: the stats port on loopback; the admin endpoint on the pod IP (from
        // the downward API), which the kubelet's probes reach, not on 0.0.0.0.
        XCTAssertEqual(value(after: "-a", in: arguments), "127.0.0.1")
        XCTAssertEqual(value(after: "--admin-addr", in: arguments), "$(POD_IP)")
        let env = try XCTUnwrap(tern["env"] as? [[String: Any]])
        let podIP = env.first { $0["name"] as? String == "POD_IP" }
        XCTAssertEqual(((podIP?["valueFrom"] as? [String: Any])?["fieldRef"] as? [String: Any])?["fieldPath"] as? String, "status.podIP")
        XCTAssertEqual(try securityWarnings(data, arguments), [])
        try assertRuns(arguments, probes: ["/healthz", "/readyz"])
    }

    func testDockerfile() throws {
        let text = try read("Deploy/Dockerfile")
        let lines = text.split(separator: "\n").map(String.init)
        XCTAssertTrue(lines.contains { $0.hasPrefix("FROM swift:") && $0.contains(" AS build") })
        XCTAssertTrue(lines.contains { $0 == "FROM debian:bookworm-slim" })
        XCTAssertTrue(text.contains("libev4"))
        // Tern links OpenSSL (TLS): the build stage needs its headers, the image its library.
        XCTAssertTrue(text.contains("libssl-dev"))
        XCTAssertTrue(text.contains("libssl3"))
        XCTAssertTrue(lines.contains { $0.hasPrefix("USER ") && !$0.contains("root") && !$0.contains(" 0") })
        func jsonArray(_ instruction: String) throws -> [String] {
            let line = try XCTUnwrap(lines.first { $0.hasPrefix(instruction + " ") })
            let data = Data(line.dropFirst(instruction.count + 1).utf8)
            return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String])
        }
        XCTAssertEqual(try jsonArray("ENTRYPOINT"), ["/usr/local/bin/tern"])
        let command = try jsonArray("CMD")
        XCTAssertEqual(Array(command.prefix(2)), ["-c", "/etc/tern/tern.yml"])
        assertFlagsExist(command, "Dockerfile CMD")
        // The image's config is compose's: its pools listen on 0.0.0.0 inside the container so
        // the EXPOSEd ports reach them, with users; stats and admin stay on its loopback.
        XCTAssertTrue(lines.contains("COPY --chown=root:10001 --chmod=0640 Deploy/compose-tern.yml /etc/tern/tern.yml"), text)
        let exposed = try XCTUnwrap(lines.first { $0.hasPrefix("EXPOSE ") }).split(separator: " ").dropFirst().compactMap { Int($0) }
        let config = try ConfigLoader.load(text: read("Deploy/compose-tern.yml"), file: "compose-tern.yml")
        XCTAssertEqual(exposed, config.pools.map { pool -> Int in
            guard case let .tcp(host, port) = pool.listen else { return -1 }
            XCTAssertEqual(host, "0.0.0.0")
            return port
        })
        XCTAssertEqual(value(after: "-a", in: command), "127.0.0.1")
        XCTAssertEqual(value(after: "--admin-addr", in: command), "127.0.0.1")
        XCTAssertEqual(try securityWarnings(read("Deploy/compose-tern.yml"), command), [])
        try assertRuns(command, probes: ["/healthz", "/readyz", "/metrics"])
    }

    func testComposeFile() throws {
        let compose = try XCTUnwrap(Yams.load(yaml: read("Deploy/docker-compose.yml")) as? [String: Any])
        let services = try XCTUnwrap(compose["services"] as? [String: Any])
        XCTAssertEqual(Set(services.keys), ["tern", "memcached", "redis"])
        let tern = try XCTUnwrap(services["tern"] as? [String: Any])
        let command = try XCTUnwrap(tern["command"] as? [String])
        assertFlagsExist(command, "compose command")
        let config = try ConfigLoader.load(text: read("Deploy/compose-tern.yml"), file: "compose-tern.yml")
        XCTAssertEqual(config.pools.map(\.protocolKind), [.memcache, .redis])
        // The pools listen on the container's interfaces, with users (no exposure warning);
        // every published port is on the host's loopback; the stats port is not published.
        XCTAssertTrue(config.pools.allSatisfy { !$0.users.isEmpty && $0.clientsMustAuthenticate })
        XCTAssertEqual(value(after: "-a", in: command), "127.0.0.1")
        let ports = try XCTUnwrap(tern["ports"] as? [String])
        XCTAssertEqual(ports, ["127.0.0.1:22121:22121", "127.0.0.1:22122:22122", "127.0.0.1:9121:9121"])
        XCTAssertEqual(try securityWarnings(read("Deploy/compose-tern.yml"), command), [])
    }

    /// compose-tern.yml's users, as its comments tell clients to use them, against real servers
    /// (the backend names and listen addresses swapped for test ones): memcached's -Y form and
    /// redis-py with a user name; no password, no access.
    func testComposeConfigUsersAuthenticateRealClients() throws {
        let memcached = try group.memcached()
        let redis = try group.redis()
        let (cachePort, sessionsPort) = (ProcessGroup.freePort(), ProcessGroup.freePort())
        let text = try read("Deploy/compose-tern.yml")
            .replacingOccurrences(of: "memcached:11211:1", with: "\(memcached.address):1")
            .replacingOccurrences(of: "redis:6379:1", with: "\(redis.address):1")
            .replacingOccurrences(of: "0.0.0.0:22121", with: "127.0.0.1:\(cachePort)")
            .replacingOccurrences(of: "0.0.0.0:22122", with: "127.0.0.1:\(sessionsPort)")
        try group.tern(config: text, waitPort: cachePort)
        try group.waitForPort(sessionsPort)
        let client = try TestClient(port: cachePort)
        XCTAssertEqual(try client.request("get k\r\n", until: "\r\n"), "CLIENT_ERROR unauthenticated\r\n")
        XCTAssertEqual(try client.request("set auth 0 0 13\r\napp change-me\r\n", until: "\r\n"), "STORED\r\n")
        XCTAssertEqual(try client.request("set k 5 0 2\r\nhi\r\nget k\r\n", until: "END\r\n"), "STORED\r\nVALUE k 5 2\r\nhi\r\nEND\r\n")
        XCTAssertEqual(try memcached.get("k"), "hi")
        try python("""
        r = redis.Redis(port=\(sessionsPort))
        try:
            r.get("k"); raise SystemExit("no authentication needed")
        except redis.exceptions.AuthenticationError:
            pass
        r = redis.Redis(port=\(sessionsPort), username="app", password="change-me")
        assert r.set("k", "v") is True
        assert r.get("k") == b"v", r.get("k")
        try:
            r.flushall(); raise SystemExit("flushall allowed")
        except redis.exceptions.NoPermissionError:
            pass
        assert redis.Redis(port=\(redis.port)).get("k") == b"v"
        """)
    }

    func testSystemdUnit() throws {
        let text = try read("Deploy/systemd/tern.service")
        var values: [String: String] = [:]
        for line in text.split(separator: "\n") where line.contains("=") && !line.hasPrefix("#") {
            let parts = line.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            values[String(parts[0])] = String(parts[1])
        }
        XCTAssertEqual(values["ExecReload"], "/bin/kill -HUP $MAINPID")
        XCTAssertEqual(values["KillSignal"], "SIGTERM")
        XCTAssertEqual(values["NoNewPrivileges"], "yes")
        XCTAssertEqual(values["ProtectSystem"], "strict")
        XCTAssertEqual(values["User"], "tern")
        for key in ["ExecStart", "ExecStartPre"] {
            let words = try XCTUnwrap(values[key]).split(separator: " ").map(String.init)
            XCTAssertEqual(words.first, "/usr/local/bin/tern")
            assertFlagsExist(Array(words.dropFirst()), key)
        }
        try assertRuns(Array(values["ExecStart"]!.split(separator: " ").map(String.init).dropFirst()), probes: ["/healthz", "/readyz"])
        // -t runs with the service's stats address, and the shipped config passes it silently.
        let check = Array(try XCTUnwrap(values["ExecStartPre"]).split(separator: " ").map(String.init).dropFirst())
        XCTAssertEqual(value(after: "-a", in: check), "127.0.0.1")
        XCTAssertEqual(value(after: "-a", in: check), value(after: "-a", in: values["ExecStart"]!.split(separator: " ").map(String.init)))
        XCTAssertEqual(try securityWarnings(read("Config/tern.yml"), check), [])
    }

    /// The examples in Config/ pass `-t` without a warning when the stats port is on loopback,
    /// and with nutcracker's default stats address, with exactly the stats port's warning
    /// (README, "Security defaults").
    func testConfigExamplesHaveNoSecurityWarnings() throws {
        for name in ["Config/tern.yml", "Config/example.yml"] {
            let text = try read(name)
            XCTAssertEqual(try securityWarnings(text, ["-a", "127.0.0.1"]), [], name)
            let defaults = try securityWarnings(text, [])
            XCTAssertEqual(defaults.count, 1, "\(name): \(defaults)")
            XCTAssertTrue(defaults.first?.hasPrefix("the stats port listens on 0.0.0.0:") == true, "\(name): \(defaults)")
        }
    }

    /// The value following `flag` in a command line.
    func value(after flag: String, in arguments: [String]) -> String? {
        arguments.firstIndex(of: flag).flatMap { $0 + 1 < arguments.count ? arguments[$0 + 1] : nil }
    }

    /// The warnings `tern -t` prints for `config` with a deployment's command line (its -c, -s
    /// and admin flags replaced: only the stats address and --no-stats count). The file is
    /// written 0600, as the examples tell users to keep it. Fails unless the syntax is ok.
    func securityWarnings(_ config: String, _ arguments: [String], file: StaticString = #filePath, line: UInt = #line) throws -> [String] {
        let path = group.directory + "/check-\(UInt32.random(in: 0...UInt32.max)).yml"
        try config.write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o600)
        var check = ["-t", "-c", path]
        if let address = value(after: "-a", in: arguments) ?? value(after: "--stats-addr", in: arguments) { check += ["-a", address] }
        if arguments.contains("--no-stats") { check.append("--no-stats") }
        let (status, output) = try ProcessGroup.runTern(check)
        XCTAssertEqual(status, 0, output, file: file, line: line)
        XCTAssertTrue(output.contains("syntax is ok"), output, file: file, line: line)
        return output.split(separator: "\n").filter { $0.hasPrefix("tern: warning: ") }.map { String($0.dropFirst("tern: warning: ".count)) }
    }

    // MARK: Deploy/demo.sh

    /// The demo's fixed ports: pools cache, sessions, warm; memcached new a, b and old; redis a,
    /// b; stats; admin. The test moves them all by TERN_DEMO_PORT_OFFSET to a free range, so it
    /// never meets a demo someone runs, or the ports of a concurrent test run.
    static let demoPorts = [22121, 22122, 22123, 11311, 11312, 11313, 6381, 6382, 22222, 9121]

    func testDemoScriptRunsEveryPoolAndStopsEverythingOnSIGINT() throws {
        let offset = ProcessGroup.freeOffset(for: Self.demoPorts)
        let ports = Self.demoPorts.map { $0 + offset }
        let (cache, sessions, warm, newA, newB, old, stats, admin) = (ports[0], ports[1], ports[2], ports[3], ports[4], ports[5], ports[8], ports[9])
        let binary = URL(fileURLWithPath: ProcessGroup.ternBinary).standardizedFileURL.path
        let log = "demo.log"
        let demo = try group.launch(Self.root + "/Deploy/demo.sh", [], log: log, environment: [
            "TERN_BINARY": binary, "TERN_DEMO_SKIP_INSTALL": "1", "TERN_DEMO_PORT_OFFSET": String(offset),
        ])
        func output() -> String { (try? String(contentsOfFile: group.directory + "/" + log, encoding: .utf8)) ?? "" }
        defer { if let run = testRun, run.failureCount > 0 { print(output().suffix(4000)) } }
        // Tern starts once the backends answer and the old memcached is filled; the copy-paste
        // commands come last.
        let deadline = Date().addingTimeInterval(30)
        while !output().contains("Ctrl-C stops"), demo.isRunning, Date() < deadline { usleep(50_000) }
        XCTAssertTrue(output().contains("Ctrl-C stops"), "the demo printed its commands")
        for port in ports { try group.waitForPort(port) }

        // The Redis pool, through redis-cli.
        let redisCLI = "/usr/bin/redis-cli"
        XCTAssertEqual(try ProcessGroup.run(redisCLI, ["-p", "\(sessions)", "set", "{user:9}:name", "zoe"]).1, "OK\n")
        XCTAssertEqual(try ProcessGroup.run(redisCLI, ["-p", "\(sessions)", "get", "{user:9}:name"]).1, "zoe\n")
        // The memcached pool, through a raw client.
        let client = try TestClient(port: cache)
        XCTAssertEqual(try client.request("set demo:key 7 0 5\r\nvalue\r\n", until: "\r\n"), "STORED\r\n")
        XCTAssertEqual(try client.request("get demo:key\r\n", until: "END\r\n"), "VALUE demo:key 7 5\r\nvalue\r\nEND\r\n")
        // The warm-up pool: user:2 is only in the old memcached; the hit is copied to a new one.
        XCTAssertEqual(try Memcached(port: newA, process: demo).get("user:2"), nil)
        XCTAssertEqual(try Memcached(port: newB, process: demo).get("user:2"), nil)
        XCTAssertEqual(try Memcached(port: old, process: demo).get("user:2"), "bob")
        let warmClient = try TestClient(port: warm)
        XCTAssertEqual(try warmClient.request("get user:2\r\n", until: "END\r\n"), "VALUE user:2 42 3\r\nbob\r\nEND\r\n")
        let copied = eventually("bob") {
            (try? Memcached(port: newA, process: demo).get("user:2")) ?? (try? Memcached(port: newB, process: demo).get("user:2")) ?? "none"
        }
        XCTAssertEqual(copied, "bob", "the old hit was copied into the new servers")

        // Every command the demo printed runs as printed and answers.
        let commands = output().split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { line in ["redis-cli ", "printf ", "nc ", "curl "].contains { line.hasPrefix($0) } || line.contains(" --locate ") }
        XCTAssertEqual(commands.count, 12, "\(commands)")
        var answers: [String: String] = [:]
        for command in commands {
            let (status, text) = try ProcessGroup.run("/bin/bash", ["-c", "set -o pipefail; " + command])
            XCTAssertEqual(status, 0, command)
            XCTAssertFalse(text.isEmpty, command)
            answers[command] = text
        }
        func answer(_ fragment: String) -> String { answers.first { $0.key.contains(fragment) }?.value ?? "" }
        XCTAssertEqual(answer("get '{user:1}:name'"), "alice\n")
        XCTAssertEqual(answer("get greeting"), "STORED\r\nVALUE greeting 0 5\r\nhello\r\nEND\r\n")
        XCTAssertEqual(answer("get user:1"), "VALUE user:1 42 5\r\nalice\r\nEND\r\n", "a warm-up hit from the old pool")
        XCTAssertTrue(answer("grep warmup_").contains("STAT warmup_old_hits 2\r\n"), answer("grep warmup_"))
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(answer("nc 127.0.0.1 \(stats)").utf8)) as? [String: Any])
        XCTAssertEqual(Set(json.keys).intersection(["cache", "sessions", "warm"]).count, 3)
        XCTAssertTrue(answer("/metrics").contains("tern_warmup_copies_total{pool=\"warm\"} 2"), answer("/metrics"))
        XCTAssertTrue(commands.contains { $0.contains("127.0.0.1:\(admin)/metrics") }, "the printed commands use the moved ports")
        // The backends' figures are at most about a second old (polled off the request path).
        let keyspace = eventually("yes") {
            let command = answers.keys.first { $0.contains("info keyspace") } ?? ""
            return (try? ProcessGroup.run("/bin/bash", ["-c", command]).1.contains("db0:keys=")) == true ? "yes" : "no"
        }
        XCTAssertEqual(keyspace, "yes", "INFO keyspace through Tern shows the Redis servers' keys")
        XCTAssertEqual(answer("slowlog len"), "0\n")
        let located = answer("--locate").split(separator: "\n").map(String.init)
        XCTAssertEqual(located.count, 12, "3 keys × (3 pools and the warm-up's old pool): \(located)")
        XCTAssertTrue(located.contains { $0.hasPrefix("user:1\twarm.warmup") && $0.contains("127.0.0.1:\(old)") }, "\(located)")
        XCTAssertTrue(answer("/locate?pool=sessions").contains("\"pool\":\"sessions\""), answer("/locate?pool=sessions"))
        XCTAssertTrue(answer("/hotkeys").hasPrefix("{\"cache\":["), answer("/hotkeys"))

        // SIGINT (Ctrl-C) stops the script and everything it started.
        kill(demo.processIdentifier, SIGINT)
        let stopDeadline = Date().addingTimeInterval(20)
        while demo.isRunning, Date() < stopDeadline { usleep(50_000) }
        XCTAssertFalse(demo.isRunning, "the demo stopped within 20 s of SIGINT")
        guard !demo.isRunning else { return }
        XCTAssertEqual(demo.terminationStatus, 0)
        XCTAssertTrue(output().contains("demo stopped"), output())
        for port in ports {
            XCTAssertThrowsError(try TestClient(port: port), "port \(port) still accepts after the demo stopped")
        }
    }
}
