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

    /// The one backfill TTL rule both protocols copy with (memcached in seconds, Redis in
    /// milliseconds): no expiry stays none unless `max_backfill_ttl` caps it; an unknown TTL
    /// takes `default_backfill_ttl`, itself capped; 1 s or less left, or gone: not copied.
    func testBackfillTTLRule() throws {
        let text = "p:\n  listen: 127.0.0.1:1\n  servers:\n   - 127.0.0.1:2:1\n  warmup:\n    servers:\n     - 127.0.0.1:3:1\n"
        var rule = try XCTUnwrap(ConfigLoader.load(text: text, file: "w.yml").pools[0].warmup)
        XCTAssertEqual(rule.backfillTTL(remainingMilliseconds: -1), 0)
        XCTAssertEqual(rule.backfillTTL(remainingMilliseconds: nil), 0)
        XCTAssertEqual(rule.backfillTTL(remainingMilliseconds: 30_500), 30_500)
        XCTAssertNil(rule.backfillTTL(remainingMilliseconds: 1000))
        XCTAssertNil(rule.backfillTTL(remainingMilliseconds: 0))
        XCTAssertEqual(rule.backfillTTL(remaining: -1), 0)
        XCTAssertEqual(rule.backfillTTL(remaining: nil), 0)
        XCTAssertEqual(rule.backfillTTL(remaining: 2), 2)
        XCTAssertNil(rule.backfillTTL(remaining: 1))
        XCTAssertNil(rule.backfillTTL(remaining: 0))

        rule.defaultBackfillTTL = 500
        XCTAssertEqual(rule.backfillTTL(remainingMilliseconds: nil), 500_000)
        XCTAssertEqual(rule.backfillTTL(remainingMilliseconds: -1), 0, "the default is for unknown TTLs only")
        XCTAssertEqual(rule.backfillTTL(remaining: nil), 500)

        rule.maxBackfillTTL = 100
        for (remaining, expected) in [(nil, 100_000), (-1, 100_000), (30_500, 30_500), (100_000, 100_000), (250_000, 100_000)] as [(Int?, Int?)] {
            XCTAssertEqual(rule.backfillTTL(remainingMilliseconds: remaining), expected, "\(String(describing: remaining)) ms")
        }
        XCTAssertNil(rule.backfillTTL(remainingMilliseconds: 900))
        for (remaining, expected) in [(nil, 100), (-1, 100), (30, 30), (250, 100)] as [(Int?, Int?)] {
            XCTAssertEqual(rule.backfillTTL(remaining: remaining), expected, "\(String(describing: remaining)) s")
        }
        rule.defaultBackfillTTL = 50
        XCTAssertEqual(rule.backfillTTL(remainingMilliseconds: nil), 50_000)
        XCTAssertEqual(rule.backfillTTL(remaining: nil), 50)
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

    /// Values nutcracker 0.5.0 accepts load (Tern refused them, so a twemproxy file with them
    /// did not start; found by a drop-in sweep): a backlog of 0 or past 65535 (the kernel caps
    /// it), a retry timeout and a failure limit of 0 (as 1), a timeout past 2^31 ms (forever).
    func testValuesNutcrackerAcceptsLoad() throws {
        let text = "p:\n  listen: 127.0.0.1:1\n  backlog: 0\n  server_retry_timeout: 0\n  server_failure_limit: 0\n  timeout: 99999999999\n"
            + "  servers:\n   - 127.0.0.1:2:1\nq:\n  listen: 127.0.0.1:3\n  backlog: 100000\n  servers:\n   - 127.0.0.1:2:1\n"
        let config = try ConfigLoader.load(text: text, file: "test.yml")
        XCTAssertEqual(config.pools[0].backlog, 0)
        XCTAssertEqual(config.pools[0].serverFailureLimit, 0)
        XCTAssertEqual(config.pools[0].serverRetryTimeoutMilliseconds, 0)
        XCTAssertEqual(config.pools[0].timeoutMilliseconds, Int(Int32.max))
        XCTAssertEqual(config.pools[1].backlog, 100_000)
    }

    /// A file of the repository, by its path from the root.
    static func repositoryFile(_ path: String) -> String? {
        var root = #filePath
        for _ in 0..<3 { root = String(root[..<root.lastIndex(of: "/")!]) }
        guard let file = fopen(root + "/" + path, "r") else { return nil }
        defer { fclose(file) }
        var text = ""
        var buffer = [CChar](repeating: 0, count: 4096)
        while fgets(&buffer, Int32(buffer.count), file) != nil { text += String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        return text
    }

    /// The shipped configs, by path from the repository's root.
    static let shippedConfigs = ["Config/tern.yml", "Config/example.yml"]

    /// Every key of the schema is in one of README's config tables (`| \`key\` | …`) — a key
    /// of `tls:`, `server_tls:`, `sentinel:` or a user in its parent key's row — and in
    /// Config/example.yml (set or shown commented out), so a new key cannot land undocumented.
    func testEveryConfigKeyIsDocumented() throws {
        let readme = try XCTUnwrap(Self.repositoryFile("README.md")), example = try XCTUnwrap(Self.repositoryFile("Config/example.yml"))
        let tableRows = readme.split(separator: "\n").filter { $0.hasPrefix("| `") }
        for (scope, key) in ConfigSchema.all {
            if let parent = scope.parentKey {
                let row = tableRows.first { $0.hasPrefix("| `\(parent)` |") } ?? ""
                XCTAssertTrue(row.contains("`\(key)`") || row.contains("`\(key):"), "README's '\(parent)' row does not name '\(key)'")
            } else {
                XCTAssertTrue(tableRows.contains { $0.contains("`\(key)`") }, "README's config tables do not name '\(key)'")
            }
            XCTAssertTrue(example.contains("\(key):"), "Config/example.yml does not show '\(key)'")
        }
    }

    /// Each table names a key once, with its own scopes; a `warmup:` mapping's keys (the old
    /// pool's and the backfill settings) are distinct too.
    func testSchemaNamesEachKeyOnce() {
        func check<Target>(_ table: [ConfigKey<Target>], _ scopes: Set<ConfigScope>, _ what: String) {
            let names = table.names()
            XCTAssertEqual(Set(names).count, names.count, "\(what) names a key twice: \(names)")
            for key in table { XCTAssertTrue(scopes.contains(key.scope), "\(what): '\(key.name)' has scope \(key.scope)") }
            for key in table { XCTAssertFalse(key.doc.isEmpty, "\(what): '\(key.name)' has no doc") }
        }
        check(ConfigSchema.pool, [.pool, .poolOnly], "pool")
        check(ConfigSchema.warmup, [.warmup], "warmup")
        check(ConfigSchema.tls, [.tls], "tls")
        check(ConfigSchema.serverTLS, [.serverTLS], "server_tls")
        check(ConfigSchema.sentinel, [.sentinel], "sentinel")
        check(ConfigSchema.user, [.users], "users")
        XCTAssertEqual(Set(ConfigLoader.warmupKeys).count, ConfigLoader.warmupKeys.count, "\(ConfigLoader.warmupKeys)")
        XCTAssertFalse(ConfigLoader.warmupKeys.contains("listen"))
    }

    /// A warm-up's old pool takes from its new pool what it cannot set (the protocol, the
    /// request limits) and `timeout` unless it sets its own: the keys whose schema entry says
    /// `inherit`, and no others.
    func testWarmupOldPoolInheritsFromTheSchema() throws {
        let text = """
        m:
          listen: 127.0.0.1:1
          protocol: redis
          timeout: 700
          max_item_size: 1000
          max_bulk_length: 2000
          strict_keys: false
          client_query_limit: 100000
          client_output_limit: 200000
          servers:
           - 127.0.0.1:6379:1
          warmup:
            servers:
             - 127.0.0.1:6380:1
        """
        let pool = try ConfigLoader.load(text: text, file: "w.yml").pools[0]
        let old = try XCTUnwrap(pool.warmup?.old)
        XCTAssertEqual(old.protocolKind, .redis)
        XCTAssertEqual(old.timeoutMilliseconds, 700)
        XCTAssertEqual(old.maxItemSize, 1000)
        XCTAssertEqual(old.maxBulkLength, 2000)
        XCTAssertEqual(old.strictKeys, false)
        XCTAssertEqual(old.clientQueryLimit, 100000)
        XCTAssertEqual(old.clientOutputLimit, PoolConfig(name: "x", line: 0, listen: .tcp(host: "", port: 0)).clientOutputLimit, "not inherited")
        let inherited = ConfigSchema.pool.filter { $0.inherit != nil }.names()
        XCTAssertEqual(inherited, ["protocol", "timeout", "max_item_size", "max_bulk_length", "strict_keys", "client_query_limit"])
        // The old pool's own timeout wins.
        let own = try ConfigLoader.load(text: text + "\n    timeout: 300\n", file: "w.yml").pools[0]
        XCTAssertEqual(own.warmup?.old.timeoutMilliseconds, 300)
    }

    /// load → render → load gives the same config: what `/config` shows (secrets unmasked)
    /// is a config file that loads to itself, for the shipped configs and one with every block.
    func testConfigRoundTripsThroughRender() throws {
        var files = try Self.shippedConfigs.map { ("/etc/tern/" + $0.split(separator: "/").last!, try XCTUnwrap(Self.repositoryFile($0))) }
        let hash = String(repeating: "ab", count: 32)
        files.append(("/etc/tern/every.yml", """
        r:
          listen: 127.0.0.1:1
          redis: true
          hash_tag: "{}"
          timeout: 400
          server_wait: 0
          redis_auth: "se\\"cret"
          disabled_commands: [FLUSHALL, flushdb]
          announce: cache.internal:7000
          users:
           - name: app
             password_sha256: "\(hash)"
             commands: ["+@read", "-flushall"]
             keys: ["~app:*"]
          tls: {cert: tls/c.pem, key: /k.pem, ca: /ca.pem, client_auth: required, min_version: TLSv1.3, user_from_certificate: cn}
          server_tls: {ca: /b.pem, cert: /c.pem, key: /k.pem, server_name: backend, verify: false}
          servers:
           - 127.0.0.1:2:1 a
           - "[::1]:3:2"
           - /tmp/r.sock:1
          warmup:
            servers: [127.0.0.1:4:1]
            distribution: slots
            server_tls: true
            backfill: false
            max_backfill_ttl: 60
            deletes: new
        c:
          listen: 127.0.0.1:5
          protocol: redis
          distribution: redis_cluster
          read_from: prefer_replica
          servers: [127.0.0.1:6:1]
        s:
          listen: /tmp/s.sock 0600
          redis: true
          server_tls: true
          sentinel: {addresses: [127.0.0.1:26379, "[::1]:26380"], password: pw, tls: true}
          servers: [mymaster:1]
        m:
          listen: 127.0.0.1:7
          distribution: slots
          slots: {a: "0-100,200-16383", b: "101-199"}
          servers: [127.0.0.1:8:1 a, 127.0.0.1:9:1 b]
        """))
        for (path, text) in files {
            let config = try ConfigLoader.load(text: text, file: path)
            for masked in [false, true] {
                let rendered = ConfigRenderer.yaml(config, maskSecrets: masked)
                if masked { XCTAssertFalse(rendered.contains("cret") || rendered.contains(hash) || rendered.contains("pw\""), rendered) }
                if masked, rendered.contains("********") { continue }
                let again = try ConfigLoader.load(text: rendered, file: path)
                XCTAssertEqual(ConfigRenderer.yaml(again, maskSecrets: masked), rendered, path)
            }
        }
    }

    /// The shipped examples load: README and Config/ stay in step with the loader.
    func testShippedConfigsLoad() throws {
        for path in Self.shippedConfigs {
            let config = try ConfigLoader.load(text: try XCTUnwrap(Self.repositoryFile(path)), file: path)
            XCTAssertFalse(config.pools.isEmpty)
            // Security default: examples listen on loopback or a unix socket.
            for pool in config.pools {
                if case let .tcp(host, _) = pool.listen { XCTAssertTrue(host == "127.0.0.1" || host == "::1", "\(path): \(pool.name)") }
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

    /// getopt's forms, as nutcracker reads them, become separate arguments; values of options
    /// and everything after `--` stay as they are; an unknown character leaves its token alone.
    func testShortOptionsAreSeparatedAsGetoptReadsThem() {
        let long: Set<String> = ["conf-file", "verbose"]
        XCTAssertEqual(ShortOptions.expand(["-v7", "-c/etc/x.yml", "-dt", "-dv", "6"], longOptionsWithValues: long),
                       ["-v", "7", "-c", "/etc/x.yml", "-d", "-t", "-d", "-v", "6"])
        XCTAssertEqual(ShortOptions.expand(["-c", "-v7", "--conf-file", "-dt", "--verbose=-1", "-d"], longOptionsWithValues: long),
                       ["-c", "-v7", "--conf-file", "-dt", "--verbose=-1", "-d"])
        XCTAssertEqual(ShortOptions.expand(["-x7", "-dx", "-", "--", "-v7"], longOptionsWithValues: long), ["-x7", "-dx", "-", "--", "-v7"])
        XCTAssertEqual(ShortOptions.expand(["--threads", "2", "-tdc", "f"], longOptionsWithValues: long), ["--threads", "2", "-t", "-d", "-c", "f"])
    }
}
