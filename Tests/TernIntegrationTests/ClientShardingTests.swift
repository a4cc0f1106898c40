import Foundation
import XCTest
@testable import TernCore

/// Applications that shard memcached in the client (libmemcached via pylibmc, python-memcached)
/// move behind Tern without moving keys: the real client stores keys on real servers, then
/// Tern must find every one of them where the client put it.
final class ClientShardingTests: XCTestCase {
    var group: ProcessGroup!
    override func setUp() { group = ProcessGroup() }
    override func tearDown() { group.stopAll() }

    /// Stores keys with a real client and reports which server each one landed on.
    static let placementScript = """
    import json, socket, sys
    spec = json.loads(sys.argv[1])
    keys = ["key:%d" % i for i in range(800)] + ["user:%d:profile" % (i * 7919) for i in range(600)] \\
         + ["sess-%x" % (i * 2654435761 % 4294967296) for i in range(500)] + ["cl\\u00e9:%d:\\u00fc" % i for i in range(100)]
    if spec["client"] == "pylibmc":
        import pylibmc
        client = pylibmc.Client(spec["servers"], binary=spec.get("binary", False), behaviors=spec["behaviors"])
    else:
        import memcache
        client = memcache.Client(spec["servers"])
    for key in keys:
        if not client.set(key, key):
            sys.exit("set failed for " + key)
    where = {}
    for index, port in enumerate(spec["ports"]):
        sock = socket.create_connection(("127.0.0.1", port))
        for start in range(0, len(keys), 100):
            batch = keys[start:start + 100]
            sock.sendall(b"get " + " ".join(batch).encode() + b"\\r\\n")
            data = b""
            while not data.endswith(b"END\\r\\n"):
                data += sock.recv(65536)
            for line in data.split(b"\\r\\n"):
                if line.startswith(b"VALUE "):
                    key = line.split(b" ")[1].decode()
                    if key in where:
                        sys.exit("key on two servers: " + key)
                    where[key] = index
    missing = [k for k in keys if k not in where]
    if missing:
        sys.exit("keys found on no server: %d" % len(missing))
    for key in keys:
        print("%s\\t%d" % (key, where[key]))
    """

    struct Scenario {
        var client = "pylibmc"
        var behaviors: [String: Any] = [:]
        /// pylibmc's `binary=True` (the binary protocol; placement is the same libmemcached ring).
        var binary = false
        var serverCount: Int
        var spellAsName = false
        var includeDefaultPort = false
        /// modula: name servers so that Tern's name order is the client's list order.
        var nameInClientOrder = false
        /// Tern's side.
        var distribution: String
        var hash: String
    }

    func check(_ scenario: Scenario, file: StaticString = #filePath, line: UInt = #line) throws {
        var ports: [Int] = []
        if scenario.includeDefaultPort {
            guard (try? TestClient(port: 11211)) == nil else {
                throw XCTSkip("port 11211 is taken; the default-port case needs it")
            }
            ports.append(11211)
        }
        while ports.count < scenario.serverCount { ports.append(ProcessGroup.freePort()) }
        var backends: [Memcached] = []
        for port in ports { backends.append(try group.memcached(port: port, extra: ["-m", "16"])) }
        // How the client spells each server, which is also the server's name for hashing.
        let spellings = ports.map { port -> String in
            let host = scenario.spellAsName ? "localhost" : "127.0.0.1"
            return port == 11211 ? host : "\(host):\(port)"
        }
        let spec: [String: Any] = ["client": scenario.client, "servers": spellings, "ports": ports, "behaviors": scenario.behaviors, "binary": scenario.binary]
        let specText = String(decoding: try JSONSerialization.data(withJSONObject: spec), as: UTF8.self)
        let process = Process()
        // Debian's interpreter: python3-pylibmc and python3-memcache install there.
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", Self.placementScript, specText]
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        let errorText = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(process.terminationStatus, 0, errorText, file: file, line: line)
        let placed: [(String, Int)] = text.split(separator: "\n").map { row in
            let fields = row.split(separator: "\t")
            return (String(fields[0]), Int(fields[1])!)
        }
        XCTAssertEqual(placed.count, 2000, file: file, line: line)
        let used = Set(placed.map(\.1))
        // The check means something only when keys are spread (fnv1a_64 may leave a server of 25 empty).
        XCTAssertGreaterThanOrEqual(used.count, max(2, scenario.serverCount * 3 / 4), "the client used only \(used.count) servers", file: file, line: line)

        // Tern with the equivalent config: addresses, plus the client's spelling as the name.
        let ternPort = ProcessGroup.freePort()
        var config = "migrated:\n  listen: 127.0.0.1:\(ternPort)\n  distribution: \(scenario.distribution)\n  hash: \(scenario.hash)\n  servers:\n"
        for (index, (port, spelling)) in zip(ports, spellings).enumerated() {
            let address = "127.0.0.1:\(port):1"
            let defaultName = port == 11211 ? "127.0.0.1" : "127.0.0.1:\(port)"
            if scenario.nameInClientOrder {
                config += "   - \(address) mc\(index < 10 ? "0" : "")\(index)\n"
            } else {
                config += spelling == defaultName ? "   - \(address)\n" : "   - \(address) \(spelling)\n"
            }
        }
        let pool = try ConfigLoader.load(text: config, file: "migrated.yml").pools[0]
        let placement = pool.placement()
        var disagreements = 0
        for (key, server) in placed {
            let ours = Array(key.utf8).withUnsafeBytes { placement.server(forKey: $0) }
            if ours != server {
                disagreements += 1
                if disagreements <= 3 { XCTFail("\(key): client put it on \(server), Tern computes \(ours ?? -1)", file: file, line: line) }
            }
        }
        XCTAssertEqual(disagreements, 0, "keys placed differently", file: file, line: line)
        // And through the running proxy: every key is found where the client stored it.
        try group.tern(config: config, arguments: ["--threads", "1"], waitPort: ternPort)
        let client = try TestClient(port: ternPort)
        var found = 0
        for start in stride(from: 0, to: placed.count, by: 100) {
            let batch = placed[start..<min(start + 100, placed.count)].map(\.0)
            let reply = try client.request("get " + batch.joined(separator: " ") + "\r\n", until: "END\r\n")
            found += reply.components(separatedBy: "\r\n").filter { $0.hasPrefix("VALUE ") }.count
        }
        XCTAssertEqual(found, placed.count, "keys Tern could not find", file: file, line: line)
    }

    func testPlainKetamaWithDefaultHashThreeServers() throws {
        try check(Scenario(behaviors: ["ketama": true], serverCount: 3, distribution: "ketama_libmemcached", hash: "one_at_a_time"))
        // The most common Python guide's setup: pylibmc with binary=True and ketama.
        try check(Scenario(behaviors: ["ketama": true], binary: true, serverCount: 3, distribution: "ketama_libmemcached", hash: "one_at_a_time"))
    }

    func testPlainKetamaWithMD5FourServersSpelledAsNames() throws {
        try check(Scenario(behaviors: ["ketama": true, "hash": "md5"], serverCount: 4, spellAsName: true, distribution: "ketama_libmemcached", hash: "md5"))
    }

    func testPlainKetamaWithFnv1a64TwentyFiveServers() throws {
        try check(Scenario(behaviors: ["ketama": true, "hash": "fnv1a_64"], serverCount: 25, distribution: "ketama_libmemcached", hash: "fnv1a_64"))
    }

    func testPlainKetamaWithCrcAndADefaultPortServer() throws {
        try check(Scenario(behaviors: ["ketama": true, "hash": "crc"], serverCount: 4, includeDefaultPort: true, distribution: "ketama_libmemcached", hash: "crc32"))
    }

    func testWeightedKetamaIsTwemproxyKetamaWithMD5() throws {
        try check(Scenario(behaviors: ["ketama_weighted": true], serverCount: 4, distribution: "ketama", hash: "md5"))
    }

    func testPylibmcDefaultModula() throws {
        try check(Scenario(behaviors: [:], serverCount: 4, nameInClientOrder: true, distribution: "modula", hash: "one_at_a_time"))
    }

    func testPythonMemcachedDefaultIsModulaCrc32() throws {
        try check(Scenario(client: "python-memcached", serverCount: 4, nameInClientOrder: true, distribution: "modula", hash: "crc32"))
    }
}
