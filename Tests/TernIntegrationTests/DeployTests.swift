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
        try assertRuns(arguments, probes: ["/healthz", "/readyz"])
    }

    func testDockerfile() throws {
        let text = try read("Deploy/Dockerfile")
        let lines = text.split(separator: "\n").map(String.init)
        XCTAssertTrue(lines.contains { $0.hasPrefix("FROM swift:") && $0.contains(" AS build") })
        XCTAssertTrue(lines.contains { $0 == "FROM debian:bookworm-slim" })
        XCTAssertTrue(text.contains("libev4"))
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
        XCTAssertTrue(text.contains("COPY Config/tern.yml /etc/tern/tern.yml"))
        try assertRuns(command, probes: ["/healthz", "/readyz", "/metrics"])
    }

    func testComposeFile() throws {
        let compose = try XCTUnwrap(Yams.load(yaml: read("Deploy/docker-compose.yml")) as? [String: Any])
        let services = try XCTUnwrap(compose["services"] as? [String: Any])
        XCTAssertEqual(Set(services.keys), ["tern", "memcached", "redis"])
        let tern = try XCTUnwrap(services["tern"] as? [String: Any])
        assertFlagsExist(try XCTUnwrap(tern["command"] as? [String]), "compose command")
        let config = try ConfigLoader.load(text: read("Deploy/compose-tern.yml"), file: "compose-tern.yml")
        XCTAssertEqual(config.pools.map(\.protocolKind), [.memcache, .redis])
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
    }
}
