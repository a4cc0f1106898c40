import Foundation
import XCTest
import Yams

/// Deploy/monitoring: the alert rules pass promtool (syntax and the cases in
/// tern-alerts.test.yml), every query of the dashboard and the rules names a metric a live Tern
/// serves (or one of the few being added), and a live /metrics passes `promtool check metrics`.
final class MonitoringTests: XCTestCase {
    var group: ProcessGroup!
    override func setUp() { group = ProcessGroup() }
    override func tearDown() {
        if let run = testRun, run.failureCount > 0 { print(group.ternLog().suffix(4000)) }
        group.stopAll()
    }

    static let promtool = "/usr/bin/promtool"
    static var monitoring: String { DeployTests.root + "/Deploy/monitoring" }

    /// Metric families the dashboard and the rules may use before Tern serves them (none now:
    /// every family they use must be on a live /metrics).
    static let pendingFamilies: Set<String> = []

    /// `promtool check metrics` findings on Tern's own /metrics that are accepted (none: any
    /// finding fails the test).
    static let knownMetricsLint: Set<String> = []

    func requirePromtool() throws {
        guard FileManager.default.isExecutableFile(atPath: Self.promtool) else {
            throw TestError("\(Self.promtool) is missing: Deploy/install-packages.sh installs it (Debian package prometheus)")
        }
    }

    func testAlertRulesPassPromtool() throws {
        try requirePromtool()
        let (checkStatus, check) = try ProcessGroup.run(Self.promtool, ["check", "rules", Self.monitoring + "/tern-alerts.yml"])
        XCTAssertEqual(checkStatus, 0, check)
        XCTAssertTrue(check.contains("SUCCESS: 5 rules found"), check)
        // promtool resolves rule_files relative to the test file.
        let (testStatus, test) = try ProcessGroup.run(Self.promtool, ["test", "rules", Self.monitoring + "/tern-alerts.test.yml"])
        XCTAssertEqual(testStatus, 0, test)
        XCTAssertTrue(test.contains("SUCCESS"), test)
    }

    /// Starts Tern with a memcached pool, a Redis pool and a memcached warm-up pool, drives a few
    /// requests through each and returns its /metrics text.
    func liveMetrics() throws -> String {
        let cacheServers = try [group.memcached(), group.memcached()]
        let oldServer = try group.memcached()
        let redisServers = try [group.redis(), group.redis()]
        let (cache, sessions, warm, admin) = (ProcessGroup.freePort(), ProcessGroup.freePort(), ProcessGroup.freePort(), ProcessGroup.freePort())
        var config = "cache:\n  listen: 127.0.0.1:\(cache)\n  timeout: 2000\n  servers:\n" + cacheServers.map { "   - \($0.address):1\n" }.joined()
        config += "sessions:\n  listen: 127.0.0.1:\(sessions)\n  redis: true\n  hash_tag: \"{}\"\n  timeout: 2000\n  servers:\n"
            + redisServers.map { "   - \($0.address):1\n" }.joined()
        config += "warm:\n  listen: 127.0.0.1:\(warm)\n  timeout: 2000\n  servers:\n" + cacheServers.map { "   - \($0.address):1\n" }.joined()
        config += "  warmup:\n    servers:\n     - \(oldServer.address):1\n"
        try group.tern(config: config, arguments: ["--threads", "2", "--admin-port", "\(admin)"], waitPort: warm)
        try group.waitForPort(admin)

        XCTAssertEqual(try TestClient(port: oldServer.port).request("set old:1 3 300 3\r\nold\r\n", until: "\r\n"), "STORED\r\n")
        let memcache = try TestClient(port: cache)
        XCTAssertEqual(try memcache.request("set k 0 0 1\r\nv\r\nget k missing\r\n", until: "END\r\n"), "STORED\r\nVALUE k 0 1\r\nv\r\nEND\r\n")
        let warmClient = try TestClient(port: warm)
        XCTAssertEqual(try warmClient.request("get old:1 k nothing\r\n", until: "END\r\n"), "VALUE old:1 3 3\r\nold\r\nVALUE k 0 1\r\nv\r\nEND\r\n")
        let redis = try TestClient(port: sessions)
        XCTAssertEqual(try redis.call("SET", "{u}:a", "1"), "+OK\r\n")
        XCTAssertEqual(try redis.call("MGET", "{u}:a", "{u}:b"), "*2\r\n$1\r\n1\r\n$-1\r\n")
        // (The copy counts when the new server answers it, after the reply.)
        _ = try eventually("copied") {
            try warmClient.request("stats\r\n", until: "END\r\n").contains("STAT warmup_copies 1\r\n") ? "copied" : "not yet"
        }
        usleep(200_000)

        let client = try TestClient(port: admin)
        try client.send("GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        let response = String(decoding: client.drain(for: 3).bytes, as: UTF8.self)
        XCTAssertTrue(response.hasPrefix("HTTP/1.1 200"), String(response.prefix(200)))
        return response.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
    }

    /// Family names of an exposition: `# TYPE` names, and sample names with a histogram's
    /// `_bucket`/`_sum`/`_count` read as the family.
    static func families(_ metrics: String) -> Set<String> {
        var names = Set<String>()
        for line in metrics.split(separator: "\n") {
            if line.hasPrefix("# TYPE ") { names.insert(String(line.split(separator: " ")[2])); continue }
            if line.hasPrefix("#") { continue }
            names.insert(String(line.prefix { $0 != "{" && $0 != " " }))
        }
        return names
    }

    /// The metric names a PromQL expression mentions (every `tern_` word; label values and
    /// legend text are not part of `expr`).
    static func metricNames(_ expression: String) -> [String] {
        let regex = try! NSRegularExpression(pattern: "\\btern_[a-zA-Z0-9_]+")
        return regex.matches(in: expression, range: NSRange(expression.startIndex..., in: expression)).map {
            String(expression[Range($0.range, in: expression)!])
        }
    }

    func dashboardExpressions() throws -> [(String, String)] {
        let data = try Data(contentsOf: URL(fileURLWithPath: Self.monitoring + "/tern-dashboard.json"))
        let dashboard = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        XCTAssertEqual(dashboard["schemaVersion"] as? Int, 38)
        XCTAssertEqual(dashboard["uid"] as? String, "tern-proxy")
        let variables = try XCTUnwrap((dashboard["templating"] as? [String: Any])?["list"] as? [[String: Any]])
        let datasource = try XCTUnwrap(variables.first { $0["name"] as? String == "DS_PROMETHEUS" })
        XCTAssertEqual(datasource["type"] as? String, "datasource")
        XCTAssertEqual(datasource["query"] as? String, "prometheus")
        let pool = try XCTUnwrap(variables.first { $0["name"] as? String == "pool" })
        XCTAssertEqual(pool["definition"] as? String, "label_values(tern_pool_requests_total, pool)")
        XCTAssertEqual((pool["query"] as? [String: Any])?["query"] as? String, "label_values(tern_pool_requests_total, pool)")
        var expressions: [(String, String)] = [("variable pool", pool["definition"] as! String)]
        let panels = try XCTUnwrap(dashboard["panels"] as? [[String: Any]])
        XCTAssertEqual(Set(panels.compactMap { $0["id"] as? Int }).count, panels.count, "panel ids are unique")
        for panel in panels where panel["type"] as? String != "row" {
            let title = panel["title"] as? String ?? "?"
            XCTAssertEqual((panel["datasource"] as? [String: Any])?["uid"] as? String, "${DS_PROMETHEUS}", title)
            let targets = try XCTUnwrap(panel["targets"] as? [[String: Any]], title)
            XCTAssertFalse(targets.isEmpty, title)
            for target in targets {
                let expression = try XCTUnwrap(target["expr"] as? String, title)
                XCTAssertTrue(expression.contains("pool=~\"$pool\""), "\(title): \(expression) follows the pool variable")
                expressions.append((title, expression))
            }
        }
        return expressions
    }

    func alertExpressions() throws -> [(String, String)] {
        let text = try String(contentsOfFile: Self.monitoring + "/tern-alerts.yml", encoding: .utf8)
        let rules = try XCTUnwrap(Yams.load(yaml: text) as? [String: Any])
        var expressions: [(String, String)] = []
        for group in try XCTUnwrap(rules["groups"] as? [[String: Any]]) {
            for rule in try XCTUnwrap(group["rules"] as? [[String: Any]]) {
                expressions.append((rule["alert"] as? String ?? "?", try XCTUnwrap(rule["expr"] as? String)))
            }
        }
        XCTAssertEqual(Set(expressions.map(\.0)), ["TernServerEjected", "TernPoolErrorRatioHigh", "TernServerErrorRatioHigh",
                                                    "TernWarmupStalled", "TernClientConnectionsNearLimit"])
        return expressions
    }

    func testDashboardAndAlertsUseServedMetricsAndLiveMetricsPassPromtool() throws {
        try requirePromtool()
        let metrics = try liveMetrics()
        let served = Self.families(metrics)
        // The scrape covers each kind of pool.
        for family in ["tern_pool_requests_total", "tern_server_latency_seconds", "tern_warmup_copies_total", "tern_warmup_new_hit_ratio",
                       "tern_pool_client_connections", "tern_worker_client_connections", "tern_server_ejections_total"] {
            XCTAssertTrue(served.contains(family), "/metrics serves \(family)")
        }
        XCTAssertTrue(metrics.contains("tern_warmup_copies_total{pool=\"warm\"} 1"), metrics)

        var used = Set<String>()
        for (source, expression) in try dashboardExpressions() + alertExpressions() {
            for name in Self.metricNames(expression) {
                func known(_ family: String) -> Bool { served.contains(family) || Self.pendingFamilies.contains(family) }
                // A histogram's series name its family.
                let family = ["_bucket", "_sum", "_count"].first { name.hasSuffix($0) && known(String(name.dropLast($0.count))) }
                    .map { String(name.dropLast($0.count)) } ?? name
                used.insert(family)
                XCTAssertTrue(known(family),
                              "\(source): \(name) is neither served by /metrics nor one of the families being added")
            }
        }
        // Every family the dashboard was asked to show is there.
        for family in ["tern_pool_requests_total", "tern_pool_errors_total", "tern_server_requests_total", "tern_server_errors_total",
                       "tern_server_latency_seconds", "tern_command_requests_total", "tern_command_latency_seconds",
                       "tern_server_ejections_total", "tern_pool_server_ejects_total", "tern_warmup_new_hit_ratio",
                       "tern_warmup_copies_total", "tern_hot_key_requests", "tern_pool_client_connections", "tern_server_connections",
                       "tern_worker_client_connections", "tern_pool_client_connections_limit"] {
            XCTAssertTrue(used.contains(family), "the dashboard or the rules use \(family)")
        }

        // promtool's linter on the live exposition (it reads standard input).
        let path = group.directory + "/metrics.txt"
        try metrics.write(toFile: path, atomically: true, encoding: .utf8)
        let (status, lint) = try ProcessGroup.run("/bin/sh", ["-c", "\(Self.promtool) check metrics < '\(path)'"])
        let findings = Set(lint.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty })
        print("promtool check metrics (exit \(status)): \(findings.sorted())")
        XCTAssertTrue(findings.isSubset(of: Self.knownMetricsLint), "new promtool findings: \(findings.subtracting(Self.knownMetricsLint).sorted())")
        // promtool exits 3 for lint findings only; anything else (1: unparsable) fails.
        XCTAssertTrue(status == 0 || (status == 3 && !findings.isEmpty), "promtool exit \(status): \(lint)")
    }

    /// A fleet's worth of servers: 2,000 in four pools. /metrics lists families, pools and
    /// servers in the configured order, passes promtool, and is rendered in a fraction of a
    /// second. swift-prometheus's registry, used before, copied a family's table for each
    /// series added (1.1 s for 2,000 servers in a release build, growing with their square) and
    /// listed everything in hash order (fails on 7d91f5e: order and time).
    func testMetricsOfTwoThousandServersInConfiguredOrder() throws {
        try requirePromtool()
        let admin = ProcessGroup.freePort()
        let ports = (0..<4).map { _ in ProcessGroup.freePort() }
        // Nothing listens on the servers' addresses: no request goes to them.
        let config = ports.enumerated().map { pool, port in
            "p\(pool):\n  listen: 127.0.0.1:\(port)\n  servers:\n" + (0..<500).map { "   - 127.0.0.\(pool + 2):\(20_000 + $0):1 s\(pool)-\($0)\n" }.joined()
        }.joined()
        try group.tern(config: config, arguments: ["--threads", "1", "--admin-port", "\(admin)"], waitPort: ports[3])
        try group.waitForPort(admin)
        func scrape() throws -> (text: String, seconds: Double) {
            let started = Date()
            let client = try TestClient(port: admin, timeout: 10)
            try client.send("GET /metrics HTTP/1.1\r\n\r\n")
            let response = String(decoding: client.drain(for: 10).bytes, as: UTF8.self)
            XCTAssertTrue(response.hasPrefix("HTTP/1.1 200"), String(response.prefix(200)))
            return (response.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n"), Date().timeIntervalSince(started))
        }
        _ = try scrape()
        let (metrics, seconds) = try scrape()
        // A debug build takes about 0.1 s here.
        XCTAssertLessThan(seconds, 0.6)
        let lines = metrics.split(separator: "\n")
        let requests: [String] = lines.filter { $0.hasPrefix("tern_server_requests_total{") }.map { String($0) }
        let expected: [String] = (0..<4).flatMap { pool in (0..<500).map { "tern_server_requests_total{pool=\"p\(pool)\",server=\"s\(pool)-\($0)\"} 0" } }
        XCTAssertEqual(requests, expected)
        let families: [String] = lines.filter { $0.hasPrefix("# TYPE ") }.map { String($0.split(separator: " ")[2]) }
        XCTAssertEqual(Array(families.prefix(3)), ["tern_pool_client_connections", "tern_pool_client_connections_limit", "tern_worker_client_connections"])
        XCTAssertEqual(Set(families).count, families.count, "each family once")
        let path = group.directory + "/metrics.txt"
        try metrics.write(toFile: path, atomically: true, encoding: .utf8)
        let (status, lint) = try ProcessGroup.run("/bin/sh", ["-c", "\(Self.promtool) check metrics < '\(path)'"])
        XCTAssertEqual(status, 0, lint)
    }
}
