import XCTest
@testable import TernCore
import TernFuzzChecks

/// SHA-256, Redis glob matching, the command categories and `users:` config.
final class UsersTests: XCTestCase {
    func hex(_ text: String) -> String { SHA256.hex(SHA256.digest(Array(text.utf8))) }

    func testSHA256KnownAnswers() {
        // FIPS 180-4 examples and one input that crosses a block boundary.
        XCTAssertEqual(hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(hex(String(repeating: "a", count: 1000)), "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3")
        XCTAssertEqual(SHA256.parseHex(hex("abc")), SHA256.digest(Array("abc".utf8)))
        XCTAssertNil(SHA256.parseHex("zz" + String(repeating: "0", count: 62)))
        XCTAssertNil(SHA256.parseHex("00"))
    }

    func match(_ pattern: String, _ string: String) -> Bool { RedisGlob.matches(Array(pattern.utf8), Array(string.utf8)) }

    func testGlobMatchesLikeRedisStringmatch() {
        XCTAssertTrue(match("*", "anything"))
        XCTAssertTrue(match("app:*", "app:1"))
        XCTAssertFalse(match("app:*", "other:1"))
        XCTAssertTrue(match("h?llo", "hello"))
        XCTAssertFalse(match("h?llo", "hllo"))
        XCTAssertTrue(match("h*llo", "heeeello"))
        XCTAssertTrue(match("h[ae]llo", "hallo"))
        XCTAssertFalse(match("h[ae]llo", "hillo"))
        XCTAssertTrue(match("h[^e]llo", "hallo"))
        XCTAssertFalse(match("h[^e]llo", "hello"))
        XCTAssertTrue(match("h[a-b]llo", "hbllo"))
        XCTAssertTrue(match("h[b-a]llo", "hallo"))
        XCTAssertFalse(match("h[a-b]llo", "hcllo"))
        XCTAssertTrue(match("a\\*b", "a*b"))
        XCTAssertFalse(match("a\\*b", "axb"))
        XCTAssertTrue(match("[\\]]", "]"))
        XCTAssertTrue(match("a**b", "ab"))
        XCTAssertTrue(match("*a", "ba"))
        XCTAssertFalse(match("*", ""))
        XCTAssertTrue(match("", ""))
        // Redis's test: many stars against a long string ends quickly (skipLongerMatches).
        XCTAssertFalse(match(String(repeating: "a*", count: 30) + "b", String(repeating: "a", count: 60)))
        // An unterminated class behaves as Redis's does.
        XCTAssertTrue(match("[a", "a"))
    }

    /// The glob fuzz target's invariants over random patterns made of the special bytes.
    func testGlobRandomInputs() {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("*?[]^-\\ab".utf8)
        for _ in 0..<20_000 {
            let pattern = (0..<Int.random(in: 0...12, using: &generator)).map { _ in alphabet.randomElement(using: &generator)! }
            let key = (0..<Int.random(in: 0...12, using: &generator)).map { _ in alphabet.randomElement(using: &generator)! }
            (pattern + [0] + key).withUnsafeBytes { FuzzChecks.run(.redisGlob, $0) }
        }
    }

    func testCommandCategories() throws {
        func categories(_ name: String) -> RedisCategories { RedisCommandTable.byName[name]!.categories }
        XCTAssertEqual(categories("get"), [.read, .string, .fast])
        XCTAssertEqual(categories("set"), [.write, .string, .slow])
        XCTAssertEqual(categories("flushall"), [.keyspace, .write, .slow, .dangerous])
        XCTAssertEqual(categories("keys"), [.keyspace, .read, .slow, .dangerous])
        XCTAssertEqual(categories("blpop"), [.write, .list, .slow, .blocking])
        XCTAssertEqual(categories("publish"), [.pubsub, .fast])
        // Every command has a category, and the table's write flag agrees with @write, except
        // where Redis's flags differ from Tern's routing notion of a write: EVAL and FCALL
        // (MAY_REPLICATE, no WRITE flag) and unsupported commands Tern never marks.
        let differ: Set<String> = ["pfdebug", "migrate", "move", "swapdb", "eval", "evalsha", "fcall"]
        for command in RedisCommandTable.commands {
            XCTAssertFalse(command.categories.isEmpty, command.name)
            if differ.contains(command.name) { continue }
            XCTAssertEqual(command.isWrite, command.categories.contains(.write), command.name)
        }
    }

    func testRulesApplyInOrder() throws {
        let bits = try RedisUser.compileCommands(["+@read", "+@write", "-@dangerous", "+info"]).get()
        let user = RedisUser(name: "app", passwordSHA256: [], allowed: bits, allKeys: false, patterns: [Array("app:*".utf8)])
        XCTAssertTrue(user.allows(RedisCommandTable.byName["get"]!))
        XCTAssertTrue(user.allows(RedisCommandTable.byName["set"]!))
        XCTAssertTrue(user.allows(RedisCommandTable.byName["info"]!))
        XCTAssertFalse(user.allows(RedisCommandTable.byName["flushall"]!))
        XCTAssertFalse(user.allows(RedisCommandTable.byName["keys"]!))
        XCTAssertFalse(user.allows(RedisCommandTable.byName["publish"]!))
        XCTAssertFalse(user.memcacheWrite == false)
        XCTAssertTrue(Array("app:1".utf8).withUnsafeBytes { user.allowsKey($0) })
        XCTAssertFalse(Array("other".utf8).withUnsafeBytes { user.allowsKey($0) })
        let all = try RedisUser.compileCommands(["allcommands", "-flushall"]).get()
        let admin = RedisUser(name: "a", passwordSHA256: [], allowed: all, allKeys: true, patterns: [])
        XCTAssertTrue(admin.allows(RedisCommandTable.byName["config"]!))
        XCTAssertFalse(admin.allows(RedisCommandTable.byName["flushall"]!))
        let reader = RedisUser(name: "r", passwordSHA256: [], allowed: try RedisUser.compileCommands(["+@read"]).get(), allKeys: true, patterns: [])
        XCTAssertFalse(reader.memcacheWrite)
    }

    func testUsersConfig() throws {
        let hash = hex("secret")
        let config = try ConfigLoader.load(text: """
        p:
          listen: 127.0.0.1:7000
          redis: true
          redis_auth: old
          disabled_commands: [FLUSHALL, config]
          users:
           - name: app
             password_sha256: "\(hash)"
             commands: ["+@read", "+@write", "-@dangerous"]
             keys: ["~app:*"]
          servers:
           - 127.0.0.1:6379:1
        """, file: "t.yml")
        let pool = config.pools[0]
        XCTAssertEqual(pool.disabledCommands, ["flushall", "config"])
        XCTAssertEqual(pool.users.first?.name, "app")
        XCTAssertEqual(pool.users.first?.keys, ["~app:*"])
        let users = RedisUser.compile(pool)
        XCTAssertEqual(users.map(\.name), ["app", "default"])
        let masked = ConfigRenderer.yaml(config)
        XCTAssertTrue(masked.contains("password_sha256: \"********\""), masked)
        XCTAssertFalse(masked.contains(hash))
        XCTAssertTrue(ConfigRenderer.yaml(config, maskSecrets: false).contains(hash))
        // The rendered config loads back to the same users.
        let again = try ConfigLoader.load(text: ConfigRenderer.yaml(config, maskSecrets: false), file: "again.yml")
        XCTAssertEqual(again.pools[0].users.map { [$0.name] + $0.commands + $0.keys + [SHA256.hex($0.passwordSHA256)] }, pool.users.map { [$0.name] + $0.commands + $0.keys + [SHA256.hex($0.passwordSHA256)] })
    }

    func configError(_ users: String) -> ConfigError? {
        do {
            _ = try ConfigLoader.load(text: "p:\n  listen: 127.0.0.1:7000\n  redis: true\n  users:\n" + users + "  servers:\n   - 127.0.0.1:6379:1\n", file: "t.yml")
            return nil
        } catch { return error }
    }

    func testUsersConfigErrorsNameTheLine() {
        let good = hex("x")
        let bad = configError("   - name: app\n     password_sha256: \"abc\"\n")
        XCTAssertEqual(bad?.line, 6)
        XCTAssertTrue(bad?.message.contains("64 hex digits") ?? false, "\(String(describing: bad))")
        let category = configError("   - name: app\n     password_sha256: \"\(good)\"\n     commands:\n      - \"+@read\"\n      - \"+@nosuch\"\n")
        XCTAssertEqual(category?.line, 9)
        XCTAssertTrue(category?.message.contains("unknown category '@nosuch'") ?? false, "\(String(describing: category))")
        let duplicate = configError("   - name: app\n     password_sha256: \"\(good)\"\n   - name: app\n     password_sha256: \"\(good)\"\n")
        XCTAssertEqual(duplicate?.line, 7)
        XCTAssertTrue(duplicate?.message.contains("duplicate user 'app'") ?? false)
        // A repeated name is reported as such before the entry's other keys are looked at.
        let duplicateBad = configError("   - name: app\n     password_sha256: \"\(good)\"\n   - name: app\n     password_sha256: \"abc\"\n")
        XCTAssertEqual(duplicateBad?.line, 7)
        XCTAssertTrue(duplicateBad?.message.contains("duplicate user 'app' (first defined on line 5)") ?? false, "\(String(describing: duplicateBad))")
        do {
            _ = try ConfigLoader.load(text: "m:\n  listen: 127.0.0.1:7001\n  users:\n   - name: app\n     password_sha256: \"\(good)\"\n     keys: [\"~a*b\"]\n  servers:\n   - 127.0.0.1:11211:1\n", file: "t.yml")
            XCTFail("a memcached glob that is not a prefix was accepted")
        } catch {
            XCTAssertEqual(error.line, 6)
            XCTAssertTrue(error.message.contains("memcached key patterns are prefixes"), error.message)
        }
        let pattern = configError("   - name: app\n     password_sha256: \"\(good)\"\n     keys: [\"app:*\"]\n")
        XCTAssertEqual(pattern?.line, 7)
        XCTAssertTrue(pattern?.message.contains("must start with '~'") ?? false)
        // Required keys and the name's form: errors of the `users` key, naming the user.
        let noPassword = configError("   - name: app\n     keys: [allkeys]\n")
        XCTAssertEqual(noPassword?.line, 5)
        XCTAssertEqual(noPassword?.message, "pool 'p': key 'users': user 'app' needs a 'password_sha256'")
        let noName = configError("   - password_sha256: \"\(good)\"\n")
        XCTAssertEqual(noName?.message, "pool 'p': key 'users': a user needs a 'name'")
        let spaced = configError("   - name: \"a b\"\n     password_sha256: \"\(good)\"\n")
        XCTAssertEqual(spaced?.line, 5)
        XCTAssertEqual(spaced?.message, "pool 'p': key 'users': user name 'a b' must be printable ASCII without spaces")
        let unknown = configError("   - name: app\n     password: x\n")
        XCTAssertEqual(unknown?.line, 6)
        XCTAssertTrue(unknown?.message.contains("unknown key 'password' (name, password_sha256, commands, keys)") ?? false, "\(String(describing: unknown))")
    }
}
