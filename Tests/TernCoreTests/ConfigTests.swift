import XCTest
@testable import TernCore

final class ConfigTests: XCTestCase {
    func load(_ text: String) throws(ConfigError) -> TernConfig { try ConfigLoader.load(text: text, file: "test.yml") }

    func error(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> ConfigError? {
        do {
            _ = try load(text)
            XCTFail("expected an error", file: file, line: line)
            return nil
        } catch {
            return error
        }
    }

    func testTwemproxyExampleLoadsWithDefaults() throws {
        let config = try load("""
        alpha:
          listen: 127.0.0.1:22121
          hash: fnv1a_64
          distribution: ketama
          auto_eject_hosts: true
          redis: true
          server_retry_timeout: 2000
          server_failure_limit: 1
          servers:
           - 127.0.0.1:6379:1
        beta:
          listen: 127.0.0.1:22122
          hash: fnv1a_64
          hash_tag: "{}"
          distribution: ketama
          auto_eject_hosts: false
          timeout: 400
          redis: true
          servers:
           - 127.0.0.1:6380:1 server1
           - 127.0.0.1:6381:1 server2
        gamma:
          listen: /tmp/gamma.sock 0666
          servers:
           - /tmp/mc.sock:1
           - mc.example.com:11211:2
        """)
        XCTAssertEqual(config.pools.map(\.name), ["alpha", "beta", "gamma"])
        let alpha = config.pools[0]
        XCTAssertEqual(alpha.protocolKind, .redis)
        XCTAssertTrue(alpha.autoEjectHosts)
        XCTAssertEqual(alpha.serverRetryTimeoutMilliseconds, 2000)
        XCTAssertEqual(alpha.serverFailureLimit, 1)
        XCTAssertNil(alpha.timeoutMilliseconds)
        XCTAssertEqual(alpha.servers[0].name, "127.0.0.1:6379")
        let beta = config.pools[1]
        XCTAssertEqual(beta.hashTag, HashTag.braces)
        XCTAssertEqual(beta.timeoutMilliseconds, 400)
        XCTAssertEqual(beta.servers.map(\.name), ["server1", "server2"])
        let gamma = config.pools[2]
        XCTAssertEqual(gamma.listen, .unix(path: "/tmp/gamma.sock", permissions: 0o666))
        XCTAssertEqual(gamma.protocolKind, .memcache)
        XCTAssertEqual(gamma.hash, .fnv1a_64)
        XCTAssertEqual(gamma.distribution, .ketama)
        XCTAssertEqual(gamma.backlog, 512)
        XCTAssertEqual(gamma.serverConnections, 1)
        XCTAssertEqual(gamma.serverRetryTimeoutMilliseconds, 30000)
        XCTAssertEqual(gamma.serverFailureLimit, 2)
        XCTAssertEqual(gamma.maxItemSize, 1 << 20)
        XCTAssertEqual(gamma.servers.map(\.name), ["/tmp/mc.sock:", "mc.example.com"])
        XCTAssertEqual(gamma.servers[1].weight, 2)
    }

    func testProtocolAliasAndIPv6() throws {
        let config = try load("""
        p:
          listen: "[::1]:22121"
          protocol: redis
          servers:
           - "[::1]:6379:1"
        """)
        XCTAssertEqual(config.pools[0].protocolKind, .redis)
        XCTAssertEqual(config.pools[0].listen, .tcp(host: "::1", port: 22121))
        XCTAssertEqual(config.pools[0].servers[0].address, .tcp(host: "::1", port: 6379))
    }

    func testErrorsNameLineAndKey() {
        let base = "p:\n  listen: 127.0.0.1:1\n  servers:\n   - 127.0.0.1:2:1\n"
        XCTAssertEqual(error(base + "  bogus: 1\n")?.description, "test.yml:5: pool 'p': unknown key 'bogus'")
        XCTAssertEqual(error(base + "  listen: 127.0.0.1:3\n")?.description, "test.yml:5: pool 'p': duplicate key 'listen'")
        XCTAssertEqual(error(base + "  hash: sha1\n")?.line, 5)
        XCTAssertTrue(error(base + "  hash: sha1\n")!.message.contains("unknown hash 'sha1'"))
        XCTAssertTrue(error(base + "  distribution: rendezvous\n")!.message.contains("unknown distribution"))
        XCTAssertTrue(error(base + "  timeout: soon\n")!.message.contains("key 'timeout': 'soon' is not a whole number"))
        XCTAssertTrue(error(base + "  preconnect: maybe\n")!.message.contains("not true or false"))
        XCTAssertTrue(error(base + "  hash_tag: \"{\"\n")!.message.contains("exactly two characters"))
        XCTAssertEqual(error("p:\n  servers:\n   - 127.0.0.1:2:1\n")?.description, "test.yml:1: pool 'p': missing key 'listen'")
        XCTAssertEqual(error("p:\n  listen: 127.0.0.1:1\n")?.description, "test.yml:1: pool 'p': missing key 'servers'")
        XCTAssertTrue(error("p:\n  listen: 127.0.0.1:99999\n  servers:\n   - 127.0.0.1:2:1\n")!.message.contains("bad port"))
        XCTAssertTrue(error("p:\n  listen: 127.0.0.1:1\n  servers:\n   - 127.0.0.1:0:1\n")!.message.contains("bad port"))
        let zero = error("p:\n  listen: 127.0.0.1:1\n  servers:\n   - 127.0.0.1:2:0\n")
        XCTAssertEqual(zero?.line, 4)
        XCTAssertTrue(zero!.message.contains("weight must be at least 1"))
        let duplicateName = error("p:\n  listen: 127.0.0.1:1\n  servers:\n   - 127.0.0.1:2:1 a\n   - 127.0.0.1:3:1 a\n")
        XCTAssertEqual(duplicateName?.line, 5)
        XCTAssertTrue(duplicateName!.message.contains("duplicate server name 'a'"))
        let duplicateImplicit = error("p:\n  listen: 127.0.0.1:1\n  servers:\n   - 127.0.0.1:2:1\n   - 127.0.0.1:2:1\n")
        XCTAssertTrue(duplicateImplicit!.message.contains("duplicate server name '127.0.0.1:2'"))
        let sameListen = error(base + "q:\n  listen: 127.0.0.1:1\n  servers:\n   - 127.0.0.1:2:1\n")
        XCTAssertEqual(sameListen?.line, 5)
        XCTAssertTrue(sameListen!.message.contains("already used by pool 'p'"))
        let duplicatePool = error(base + "p:\n  listen: 127.0.0.1:9\n  servers:\n   - 127.0.0.1:2:1\n")
        XCTAssertTrue(duplicatePool!.message.contains("duplicate pool 'p'"))
        XCTAssertTrue(error("p: [1, 2\n")!.message.contains("YAML syntax error"))
        XCTAssertTrue(error("")!.message.contains("no pools"))
        XCTAssertTrue(error("- a\n- b\n")!.message.contains("top level"))
        XCTAssertTrue(error(base + "  redis: true\n  protocol: memcache\n")!.message.contains("contradicts"))
        XCTAssertTrue(error("p:\n  listen: /tmp/x.sock 999\n  servers:\n   - 127.0.0.1:2:1\n")!.message.contains("octal permission"))
    }

    /// Every key the loader accepts is in one of README's config tables (`| \`key\` | …`) and
    /// in Config/example.yml (set or shown commented out), so a new key cannot land undocumented.
    func testEveryConfigKeyIsDocumented() throws {
        var root = #filePath
        for _ in 0..<3 { root = String(root[..<root.lastIndex(of: "/")!]) }
        func read(_ path: String) -> String {
            guard let file = fopen(root + "/" + path, "r") else { XCTFail("missing \(path)"); return "" }
            defer { fclose(file) }
            var text = ""
            var buffer = [CChar](repeating: 0, count: 4096)
            while fgets(&buffer, Int32(buffer.count), file) != nil { text += String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
            return text
        }
        let readme = read("README.md"), example = read("Config/example.yml")
        let tableRows = readme.split(separator: "\n").filter { $0.hasPrefix("| `") }.joined(separator: "\n")
        for key in Set(ConfigLoader.poolKeys + ConfigLoader.warmupKeys) {
            XCTAssertTrue(tableRows.contains("`\(key)`"), "README's config tables do not name '\(key)'")
            XCTAssertTrue(example.contains("\(key):"), "Config/example.yml does not show '\(key)'")
        }
    }

    /// The shipped examples load: README and Config/ stay in step with the loader.
    func testShippedConfigsLoad() throws {
        var root = #filePath
        for _ in 0..<3 { root = String(root[..<root.lastIndex(of: "/")!]) }
        for name in ["tern.yml", "example.yml"] {
            guard let file = fopen(root + "/Config/" + name, "r") else { return XCTFail("missing Config/\(name)") }
            defer { fclose(file) }
            var text = ""
            var buffer = [CChar](repeating: 0, count: 4096)
            while fgets(&buffer, Int32(buffer.count), file) != nil { text += String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
            let config = try ConfigLoader.load(text: text, file: name)
            XCTAssertFalse(config.pools.isEmpty)
            // Security default: examples listen on loopback or a unix socket.
            for pool in config.pools {
                if case let .tcp(host, _) = pool.listen { XCTAssertTrue(host == "127.0.0.1" || host == "::1", "\(name): \(pool.name)") }
            }
        }
    }

    func testHostsMustBeNamesOrAddresses() throws {
        XCTAssertNoThrow(try load("p:\n  listen: \"[fe80::1%eth0]:1\"\n  servers:\n   - cache-1.example_internal:11211:1\n"))
        for host in ["127.0.0^^.1", "a b", "[::1]]", "h]x", "::g"] {
            let text = "p:\n  listen: 127.0.0.1:1\n  servers:\n   - \"\(host):11211:1\"\n"
            XCTAssertTrue((error(text)?.message ?? "").contains("bad host") || (error(text)?.message ?? "").contains("expected"), host)
        }
        // Found by the config fuzz target: a listen host that rendered to YAML that did not load.
        XCTAssertTrue(error("p:\n  listen: 127.0.0^^]^^[r:lu.2:2212\n  servers:\n   - 127.0.0.1:1:1\n")!.message.contains("bad host"))
    }

    func testSlotsMappingIsValidated() throws {
        let base = "p:\n  listen: 127.0.0.1:1\n  distribution: slots\n  servers:\n   - 127.0.0.1:2:1 a\n   - 127.0.0.1:3:1 b\n"
        let even = try load(base)
        XCTAssertEqual(even.pools[0].slotServers[8191], 0)
        XCTAssertEqual(even.pools[0].slotServers[8192], 1)
        let mapped = try load(base + "  slots:\n    a: \"0-100,200-16383\"\n    b: \"101-199\"\n")
        XCTAssertEqual(mapped.pools[0].slotServers[150], 1)
        XCTAssertEqual(mapped.pools[0].slotServers[16383], 0)
        XCTAssertTrue(error(base + "  slots:\n    a: \"0-100\"\n    b: \"101-16382\"\n")!.message.contains("slot 16383 is not assigned"))
        XCTAssertTrue(error(base + "  slots:\n    a: \"0-100\"\n    b: \"100-16383\"\n")!.message.contains("slot 100 is assigned twice"))
        XCTAssertTrue(error(base + "  slots:\n    c: \"0-16383\"\n")!.message.contains("no server named 'c'"))
        // A slot map on a pool that places keys another way would be silently ignored: refused
        // (found by the config fuzz target, whose input is kept in fuzz/regressions/config/).
        let ketama = base.replacingOccurrences(of: "  distribution: slots\n", with: "")
        let refused = error(ketama + "  slots:\n    a: \"0-8191\"\n    b: \"8192-16383\"\n")
        XCTAssertEqual(refused?.message.contains("is used only with 'distribution: slots' (this pool uses ketama)"), true, "\(String(describing: refused))")
        XCTAssertEqual(refused?.line, 7)
    }
}
