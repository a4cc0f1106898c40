import XCTest
@testable import TernCore

/// The argument checks of AUTH and HELLO (`RedisAuthRequest`), as Redis 7.2 makes them. The
/// regressions come from the AUTH/HELLO differential fuzzer (`fuzz/differential.py --protocol auth`).
final class RedisHelloTests: XCTestCase {
    func request(_ words: [String], hello: Bool = true, highest: Int = 3) -> RedisAuthRequest {
        let arguments = RespArguments()
        let bytes = Array(("*\(words.count)\r\n" + words.map { "$\($0.utf8.count)\r\n\($0)\r\n" }.joined()).utf8)
        return bytes.withUnsafeBytes { raw in
            guard case .request = RespRequestParser.parse(raw, limits: RespLimits(), into: arguments) else { return .error("unparsed") }
            return hello ? RedisAuthRequest.hello(arguments, in: raw, highestVersion: highest) : RedisAuthRequest.auth(arguments)
        }
    }

    func testAuthArity() {
        XCTAssertEqual(request(["AUTH", "pw"], hello: false), .authenticate(user: nil, password: 1, version: nil, setName: nil))
        XCTAssertEqual(request(["AUTH", "app", "pw"], hello: false), .authenticate(user: 1, password: 2, version: nil, setName: nil))
        // Regression: Redis answers a syntax error, not an arity error, to more than three arguments.
        XCTAssertEqual(request(["AUTH", "app", "pw", "x"], hello: false), .error("-ERR syntax error"))
        XCTAssertEqual(request(["AUTH"], hello: false), .error("-ERR wrong number of arguments for 'auth' command"))
    }

    func testHelloVersionIsACanonicalInteger() {
        XCTAssertEqual(request(["HELLO"]), .hello(version: nil, setName: nil))
        XCTAssertEqual(request(["HELLO", "2"]), .hello(version: 2, setName: nil))
        XCTAssertEqual(request(["HELLO", "3"]), .hello(version: 3, setName: nil))
        XCTAssertEqual(request(["HELLO", "3"], highest: 2), .error("-NOPROTO unsupported protocol version"))
        // Regression: Swift's Int("+2") and Int("02") are 2; Redis's string2ll refuses both.
        for bad in ["+2", "02", " 2", "2 ", "-0", "2.0", "", "two", "99999999999999999999"] {
            XCTAssertEqual(request(["HELLO", bad, "AUTH", "app", "pw"]), .error("-ERR Protocol version is not an integer or out of range"), bad)
        }
        for out in ["0", "1", "4", "-1", "9223372036854775807", "-9223372036854775808"] {
            XCTAssertEqual(request(["HELLO", out]), .error("-NOPROTO unsupported protocol version"), out)
        }
    }

    func testHelloReadsEveryOptionBeforeAuthenticating() {
        XCTAssertEqual(request(["HELLO", "2", "AUTH", "app", "pw", "SETNAME", "n"]), .authenticate(user: 3, password: 4, version: 2, setName: 6))
        XCTAssertEqual(request(["hello", "2", "setname", "n", "auth", "app", "pw"]), .authenticate(user: 5, password: 6, version: 2, setName: 3))
        // The last AUTH and the last SETNAME win.
        XCTAssertEqual(request(["HELLO", "2", "AUTH", "a", "1", "AUTH", "b", "2", "SETNAME", "x", "SETNAME", "y"]),
                       .authenticate(user: 6, password: 7, version: 2, setName: 11))
        XCTAssertEqual(request(["HELLO", "2", "SETNAME", ""]), .hello(version: 2, setName: 3))
        // Regression: a HELLO that fails must not authenticate (Tern used to, at the first AUTH).
        XCTAssertEqual(request(["HELLO", "2", "AUTH", "app", "pw", "BOGUS"]), .error("-ERR Syntax error in HELLO option 'BOGUS'"))
        XCTAssertEqual(request(["HELLO", "2", "AUTH", "app", "pw", "AUTH", "app"]), .error("-ERR Syntax error in HELLO option 'AUTH'"))
        XCTAssertEqual(request(["HELLO", "2", "AUTH", "app", "pw", "SETNAME"]), .error("-ERR Syntax error in HELLO option 'SETNAME'"))
        // Regression: SETNAME's name is checked as CLIENT SETNAME checks it, before any AUTH.
        XCTAssertEqual(request(["HELLO", "2", "AUTH", "app", "pw", "SETNAME", "with space"]),
                       .error("-ERR Client names cannot contain spaces, newlines or special characters."))
        XCTAssertEqual(request(["HELLO", "2", "SETNAME", "a\u{7f}"]), .error("-ERR Client names cannot contain spaces, newlines or special characters."))
        // The quoted option: up to a NUL, at most 64 bytes, printable ASCII only.
        XCTAssertEqual(request(["HELLO", "2", "x\r\ny\0z"]), .error("-ERR Syntax error in HELLO option 'x??y'"))
        XCTAssertEqual(request(["HELLO", "2", String(repeating: "o", count: 300)]),
                       .error("-ERR Syntax error in HELLO option '\(String(repeating: "o", count: 64))'"))
    }

    func testCanonicalInteger() {
        func value(_ text: String) -> Int? { Array(text.utf8).withUnsafeBytes { RedisAuthRequest.canonicalInteger($0) } }
        XCTAssertEqual(value("0"), 0)
        XCTAssertEqual(value("-7"), -7)
        XCTAssertEqual(value("9223372036854775807"), Int.max)
        XCTAssertEqual(value("-9223372036854775808"), Int.min)
        for bad in ["", "-", "+1", "01", "-0", "00", "9223372036854775808", "-9223372036854775809", "1a", "12345678901234567890123"] {
            XCTAssertNil(value(bad), bad)
        }
    }
}
