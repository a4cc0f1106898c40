import Foundation
import XCTest
@testable import TernCore

/// Users and command rules through Tern to real redis-server backends (which need no password:
/// Tern authenticates the clients): redis-py with user names, NOPERM by category, command and
/// key, `AUTH pass` for `default`, `redis_auth` compatibility, disabled commands, the
/// brute-force lockout, /config and /metrics.
final class UsersIntegrationTests: XCTestCase {
    var group: ProcessGroup!
    override func setUp() { group = ProcessGroup() }
    override func tearDown() {
        if let run = testRun, run.failureCount > 0 { print(group.ternLog().suffix(3000)) }
        group.stopAll()
    }

    static func sha(_ password: String) -> String { SHA256.hex(SHA256.digest(Array(password.utf8))) }

    static let users = """
      users:
       - name: app
         password_sha256: "\(sha("app-secret"))"
         commands: ["+@read", "+@write", "+@transaction", "+@connection", "-@dangerous"]
         keys: ["~app:*"]
       - name: reader
         password_sha256: "\(sha("reader-secret"))"
         commands: ["+@read", "+ping"]
         keys: ["allkeys"]
       - name: admin
         password_sha256: "\(sha("admin-secret"))"
         commands: ["allcommands"]
         keys: ["~*"]
       - name: sorter
         password_sha256: "\(sha("sorter-secret"))"
         commands: ["+@read", "+rpush"]
         keys: ["~app:*"]

    """

    struct Setup {
        var port: Int
        var adminPort: Int
        var backends: [RedisServer]
    }

    func start(extra: String) throws -> Setup {
        let backends = try [group.redis(), group.redis()]
        let port = ProcessGroup.freePort(), adminPort = ProcessGroup.freePort()
        let text = "s:\n  listen: 127.0.0.1:\(port)\n  redis: true\n  timeout: 1000\n\(extra)  servers:\n"
            + backends.map { "   - \($0.address):1\n" }.joined()
        try group.tern(config: text, arguments: ["--threads", "2", "-a", "127.0.0.1", "--admin-port", "\(adminPort)"], waitPort: port)
        try group.waitForPort(adminPort)
        return Setup(port: port, adminPort: adminPort, backends: backends)
    }


    func http(_ port: Int, _ target: String) throws -> String {
        let client = try TestClient(port: port)
        try client.send("GET \(target) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return String(decoding: client.drain(for: 3).bytes, as: UTF8.self)
    }

    /// redis-py with a user name: reads and writes under `app:`, NOPERM for a dangerous
    /// command, a key outside the pattern, and a multi-key command with one key outside;
    /// a read-only user; ACL WHOAMI.
    func testRedisPyUsersCommandsAndKeys() throws {
        let setup = try start(extra: Self.users)
        try python("""
        def refused(call, text):
            try:
                call()
            except redis.exceptions.ResponseError as error:
                assert text in str(error), str(error)
                return
            raise SystemExit("not refused: " + text)
        app = redis.Redis(port=\(setup.port), username="app", password="app-secret")
        assert app.set("app:1", "v") and app.get("app:1") == b"v"
        assert app.mset({"app:2": "a", "app:3": "b"}) and app.mget("app:2", "app:3") == [b"a", b"b"]
        refused(lambda: app.execute_command("ACL", "WHOAMI"), "User app has no permissions to run the 'acl' command")
        refused(lambda: app.flushall(), "User app has no permissions to run the 'flushall' command")
        refused(lambda: app.keys("*"), "User app has no permissions to run the 'keys' command")
        refused(lambda: app.get("other"), "No permissions to access a key")
        refused(lambda: app.mget("app:2", "other"), "No permissions to access a key")
        refused(lambda: app.delete("app:2", "zzz"), "No permissions to access a key")
        assert app.get("app:2") == b"a", "the refused DEL deleted nothing"
        # SORT's patterns read keys no rule was checked against: refused to a user without
        # access to every key, as Redis refuses them.
        sorter = redis.Redis(port=\(setup.port), username="sorter", password="sorter-secret")
        sorter.rpush("app:l", 2, 1)
        sort_ro = lambda *arguments: sorter.execute_command("SORT_RO", "app:l", *arguments)
        assert sort_ro() == [b"1", b"2"] and sort_ro("BY", "nosort", "GET", "#") == [b"2", b"1"]
        refused(lambda: sort_ro("GET", "secret*"), "GET option of SORT denied due to insufficient ACL permissions")
        refused(lambda: sort_ro("BY", "app:w*"), "BY option of SORT denied due to insufficient ACL permissions")
        reader = redis.Redis(port=\(setup.port), username="reader", password="reader-secret")
        assert reader.get("app:1") == b"v" and reader.ping()
        refused(lambda: reader.set("x", "1"), "User reader has no permissions to run the 'set' command")
        admin = redis.Redis(port=\(setup.port), username="admin", password="admin-secret")
        assert admin.set("anything", "1") and admin.delete("anything") == 1
        assert admin.execute_command("ACL", "WHOAMI") == b"admin"
        try:
            redis.Redis(port=\(setup.port), username="app", password="wrong").ping()
            raise SystemExit("a wrong password was accepted")
        except redis.exceptions.AuthenticationError:
            pass
        try:
            redis.Redis(port=\(setup.port)).get("app:1")
            raise SystemExit("an unauthenticated client was served")
        except redis.exceptions.AuthenticationError as error:
            assert "Authentication required" in str(error), str(error)
        """)
        // HELLO 2 AUTH user pass, then a transaction refused by a rule.
        let client = try TestClient(port: setup.port)
        XCTAssertTrue(try client.call("HELLO", "2", "AUTH", "app", "app-secret").hasPrefix("*14\r\n"))
        XCTAssertEqual(try client.call("MULTI"), "+OK\r\n")
        XCTAssertEqual(try client.call("SET", "other", "1"), "-NOPERM No permissions to access a key\r\n")
        XCTAssertTrue(try client.call("EXEC").hasPrefix("-EXECABORT"))
        XCTAssertEqual(try setup.backends[0].call("EXISTS", "other") + (try setup.backends[1].call("EXISTS", "other")), ":0\r\n:0\r\n")
        // /config shows the users with their hashes masked.
        let config = try http(setup.adminPort, "/config")
        XCTAssertTrue(config.contains("name: \"app\""), config)
        XCTAssertTrue(config.contains("password_sha256: \"********\""), config)
        XCTAssertFalse(config.contains(Self.sha("app-secret")), config)
    }

    /// `redis_auth` alone is the `default` user (AUTH pass, AUTH default pass, every command);
    /// with `users:` too, `AUTH pass` still logs in as `default`.
    func testRedisAuthIsTheDefaultUser() throws {
        let setup = try start(extra: "  redis_auth: old-password\n" + Self.users)
        let client = try TestClient(port: setup.port)
        XCTAssertEqual(try client.call("GET", "k"), "-NOAUTH Authentication required.\r\n")
        XCTAssertEqual(try client.call("AUTH", "nope"), "-WRONGPASS invalid username-password pair or user is disabled.\r\n")
        XCTAssertEqual(try client.call("AUTH", "old-password"), "+OK\r\n")
        XCTAssertEqual(try client.call("ACL", "WHOAMI"), "$7\r\ndefault\r\n")
        XCTAssertEqual(try client.call("SET", "free", "1"), "+OK\r\n")
        XCTAssertEqual(try client.call("AUTH", "app", "app-secret"), "+OK\r\n")
        XCTAssertEqual(try client.call("GET", "free"), "-NOPERM No permissions to access a key\r\n")
        XCTAssertEqual(try client.call("AUTH", "default", "old-password"), "+OK\r\n")
        XCTAssertEqual(try client.call("GET", "free"), "$1\r\n1\r\n")
        try python("""
        r = redis.Redis(port=\(setup.port), password="old-password")
        assert r.get("free") == b"1"
        """)
    }

    /// Regressions found by the AUTH/HELLO differential fuzzer (fuzz/differential.py --protocol
    /// auth), with Redis's replies: an arity error before NOAUTH, AUTH with too many arguments,
    /// HELLO's version as a canonical integer, a failing HELLO that authenticated anyway, and
    /// HELLO SETNAME names.
    func testHelloAndAuthArgumentsAsRedis() throws {
        let setup = try start(extra: Self.users)
        let client = try TestClient(port: setup.port)
        XCTAssertEqual(try client.call("GET"), "-ERR wrong number of arguments for 'get' command\r\n")
        XCTAssertEqual(try client.call("GET", "app:1"), "-NOAUTH Authentication required.\r\n")
        XCTAssertEqual(try client.call("AUTH", "app", "app-secret", "x"), "-ERR syntax error\r\n")
        XCTAssertEqual(try client.call("HELLO", "+2", "AUTH", "app", "app-secret"), "-ERR Protocol version is not an integer or out of range\r\n")
        XCTAssertEqual(try client.call("HELLO", "02", "AUTH", "app", "app-secret"), "-ERR Protocol version is not an integer or out of range\r\n")
        XCTAssertEqual(try client.call("HELLO", "2", "AUTH", "app", "app-secret", "BOGUS"), "-ERR Syntax error in HELLO option 'BOGUS'\r\n")
        XCTAssertEqual(try client.call("HELLO", "2", "AUTH", "app", "app-secret", "SETNAME", "with space"),
                       "-ERR Client names cannot contain spaces, newlines or special characters.\r\n")
        XCTAssertEqual(try client.call("HELLO", "3", "AUTH", "app", "app-secret"), "-NOPROTO unsupported protocol version\r\n")
        XCTAssertEqual(try client.call("GET", "app:1"), "-NOAUTH Authentication required.\r\n", "no failing HELLO authenticated")
        // The last AUTH decides; the name is set once authenticated.
        let hello = try client.call("HELLO", "2", "AUTH", "reader", "wrong", "SETNAME", "first", "AUTH", "admin", "admin-secret")
        XCTAssertTrue(hello.hasPrefix("*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n"), hello)
        XCTAssertEqual(try client.call("ACL", "WHOAMI"), "$5\r\nadmin\r\n")
        XCTAssertEqual(try client.call("CLIENT", "GETNAME"), "$5\r\nfirst\r\n")
        // A failing HELLO changes neither the user nor the name.
        XCTAssertEqual(try client.call("HELLO", "2", "SETNAME", "second", "AUTH", "app", "wrong"),
                       "-WRONGPASS invalid username-password pair or user is disabled.\r\n")
        XCTAssertEqual(try client.call("HELLO", "2", "AUTH", "app", "app-secret", "SETNAME", "third", "x"), "-ERR Syntax error in HELLO option 'x'\r\n")
        XCTAssertEqual(try client.call("ACL", "WHOAMI"), "$5\r\nadmin\r\n")
        XCTAssertEqual(try client.call("CLIENT", "GETNAME"), "$5\r\nfirst\r\n")
    }

    /// `disabled_commands`: answered as Redis answers an unknown (renamed) command, for every user.
    func testDisabledCommands() throws {
        let setup = try start(extra: "  disabled_commands: [flushall, flushdb, keys]\n")
        let client = try TestClient(port: setup.port)
        XCTAssertEqual(try client.call("SET", "k", "v"), "+OK\r\n")
        XCTAssertEqual(try client.call("FLUSHALL"), "-ERR unknown command 'FLUSHALL', with args beginning with: \r\n")
        XCTAssertEqual(try client.call("flushdb", "async"), "-ERR unknown command 'flushdb', with args beginning with: 'async' \r\n")
        XCTAssertEqual(try client.call("GET", "k"), "$1\r\nv\r\n")
        // The same text redis-server gives for a command it does not know.
        XCTAssertEqual(try setup.backends[0].call("NOSUCH", "async"), "-ERR unknown command 'NOSUCH', with args beginning with: 'async' \r\n")
    }

    /// Ten failed AUTHs in a row close the client; an innocent client on the same pool is
    /// served throughout; the failures are counted in /metrics and logged without secrets.
    func testBruteForceLockout() throws {
        let setup = try start(extra: Self.users)
        let innocent = try TestClient(port: setup.port)
        XCTAssertEqual(try innocent.call("AUTH", "app", "app-secret"), "+OK\r\n")
        let attacker = try TestClient(port: setup.port)
        for attempt in 1...9 {
            XCTAssertEqual(try attacker.call("AUTH", "app", "guess\(attempt)"), "-WRONGPASS invalid username-password pair or user is disabled.\r\n")
            XCTAssertEqual(try innocent.call("SET", "app:k", "\(attempt)"), "+OK\r\n")
        }
        try attacker.send(TestClient.encode(["AUTH", "app", "guess10"]) + TestClient.encode(["PING"]))
        let last = attacker.drain(for: 3)
        XCTAssertEqual(String(decoding: last.bytes, as: UTF8.self), "-WRONGPASS invalid username-password pair or user is disabled.\r\n")
        XCTAssertTrue(last.closed, "the client was closed after ten failures")
        XCTAssertEqual(try innocent.call("GET", "app:k"), "$1\r\n9\r\n")
        // A success resets the count: nine failures, a success, nine more, still open.
        let forgetful = try TestClient(port: setup.port)
        for _ in 1...9 { _ = try forgetful.call("AUTH", "app", "x") }
        XCTAssertEqual(try forgetful.call("AUTH", "app", "app-secret"), "+OK\r\n")
        for _ in 1...9 { _ = try forgetful.call("AUTH", "app", "x") }
        XCTAssertEqual(try forgetful.call("PING"), "+PONG\r\n")
        let metrics = try http(setup.adminPort, "/metrics")
        XCTAssertTrue(metrics.contains("tern_pool_auth_failures_total{pool=\"s\"} 28"), metrics)
        let log = group.ternLog()
        XCTAssertTrue(log.contains("failed authentication"), log)
        XCTAssertFalse(log.contains("guess"), "no password in the log")
    }

    /// A reload applies new rules to clients already authenticated, and a user removed from
    /// the file has to authenticate again.
    func testReloadAppliesNewRules() throws {
        let backend = try group.redis()
        let port = ProcessGroup.freePort()
        let path = group.directory + "/users-reload.yml"
        func config(_ users: String) -> String {
            "s:\n  listen: 127.0.0.1:\(port)\n  redis: true\n  timeout: 1000\n\(users)  servers:\n   - \(backend.address):1\n"
        }
        try config(Self.users).write(toFile: path, atomically: true, encoding: .utf8)
        let tern = try group.launch(ProcessGroup.ternBinary, ["-c", path, "-v", "7", "-s", "\(ProcessGroup.freePort())"], log: "tern-reload.log")
        try group.waitForPort(port)
        let app = try TestClient(port: port), reader = try TestClient(port: port)
        XCTAssertEqual(try app.call("AUTH", "app", "app-secret"), "+OK\r\n")
        XCTAssertEqual(try reader.call("AUTH", "reader", "reader-secret"), "+OK\r\n")
        XCTAssertEqual(try app.call("SET", "app:1", "x"), "+OK\r\n")
        let narrowed = """
          users:
           - name: app
             password_sha256: "\(Self.sha("app-secret"))"
             commands: ["+@read"]
             keys: ["~app:*"]

        """
        try config(narrowed).write(toFile: path, atomically: true, encoding: .utf8)
        kill(tern.processIdentifier, SIGHUP)
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline, !group.ternLog().contains("reload (SIGHUP) applied") { usleep(50_000) }
        XCTAssertTrue(group.ternLog().contains("reload (SIGHUP) applied"), group.ternLog())
        XCTAssertEqual(try app.call("GET", "app:1"), "$1\r\nx\r\n")
        XCTAssertEqual(try app.call("SET", "app:1", "y"), "-NOPERM User app has no permissions to run the 'set' command\r\n")
        XCTAssertEqual(try reader.call("GET", "app:1"), "-NOAUTH Authentication required.\r\n")
    }

    /// The categories of every command in Tern's table, as Tern's `COMMAND INFO` gives them,
    /// are the ones the real redis-server (7.0) gives, but for container commands (one entry
    /// in Tern's table, which carries its subcommands' categories; Redis's container has @slow).
    func testCategoriesMatchRedisCommandInfo() throws {
        let setup = try start(extra: "")
        let containers: Set<String> = ["xgroup", "xinfo", "object", "memory", "script", "function", "client", "pubsub",
                                       "config", "slowlog", "latency", "module"]
        // name:categories from the table, and whether Tern's COMMAND lists it (not unsupported ones).
        let entries = RedisCommandTable.commands.filter { !containers.contains($0.name) }.map { command in
            let categories = RedisCategories.names.filter { command.categories.contains($0.1) }.map { "@" + $0.0 }.sorted()
            return "\(command.name):\(command.routing == .unsupported ? 0 : 1):\(categories.joined(separator: " "))"
        }
        try python("""
        def categories(port, name):
            conn = redis.Redis(port=port).connection_pool.get_connection()
            conn.send_command("COMMAND", "INFO", name)
            info = conn.read_response()
            assert info and info[0] is not None, (port, name)
            return sorted(c.decode() if isinstance(c, bytes) else c for c in info[0][6])
        mismatches = []
        for entry in "\(entries.joined(separator: ","))".split(","):
            name, listed, table = entry.split(":")
            redis_says = categories(\(setup.backends[0].port), name)
            if redis_says != table.split():
                mismatches.append(("table", name, redis_says, table))
            if listed == "1" and categories(\(setup.port), name) != redis_says:
                mismatches.append(("COMMAND INFO", name, redis_says, categories(\(setup.port), name)))
        assert not mismatches, mismatches
        """)
    }
}
