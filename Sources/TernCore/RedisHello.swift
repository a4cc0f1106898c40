// The argument checks of Redis's AUTH and HELLO, as Redis 7.0 makes them (`authCommand`,
// `helloCommand`), apart from the connection: the server authenticates only what these accept.

/// What AUTH or HELLO asks for, or the error Redis answers before authenticating anything.
public enum RedisAuthRequest: Equatable, Sendable {
    /// AUTH [user] password, HELLO … AUTH user password: argument indices (`user` nil: `default`).
    /// HELLO's `setName` is the index of the last SETNAME's name (already checked).
    case authenticate(user: Int?, password: Int, version: Int?, setName: Int?)
    /// HELLO without AUTH.
    case hello(version: Int?, setName: Int?)
    /// An error reply (without the CRLF), nothing authenticated or changed.
    case error(String)

    /// AUTH password | AUTH user password (the command table has refused fewer arguments).
    public static func auth(_ arguments: RespArguments) -> RedisAuthRequest {
        let count = arguments.count
        guard count >= 2 else { return .error("-ERR wrong number of arguments for 'auth' command") }
        guard count <= 3 else { return .error("-ERR syntax error") }
        return .authenticate(user: count == 3 ? 1 : nil, password: count - 1, version: nil, setName: nil)
    }

    /// HELLO [protover [AUTH user pass] [SETNAME name]]: every option is read first (the last
    /// AUTH and SETNAME win), a name with spaces or special characters is refused, and only
    /// then is anything authenticated, so a HELLO answered with an error changes nothing.
    /// `protover` is a canonical integer (Redis's `string2ll`: no `+`, no leading zero), from 2 to
    /// `highestVersion` (Redis: 3; Tern, which speaks RESP2 only, answers `-NOPROTO` to 3).
    public static func hello(_ arguments: RespArguments, in frame: UnsafeRawBufferPointer, highestVersion: Int = 3) -> RedisAuthRequest {
        let count = arguments.count
        var version: Int?
        if count >= 2 {
            guard let given = arguments.withArgument(1, in: frame, { canonicalInteger($0) }) else {
                return .error("-ERR Protocol version is not an integer or out of range")
            }
            guard given >= 2, given <= highestVersion else { return .error("-NOPROTO unsupported protocol version") }
            version = given
        }
        var user: Int?, password: Int?, setName: Int?
        var index = 2
        while index < count {
            let more = count - 1 - index
            if arguments.argument(index, in: frame, equals: "auth"), more >= 2 {
                user = index + 1
                password = index + 2
                index += 3
            } else if arguments.argument(index, in: frame, equals: "setname"), more >= 1 {
                let valid = arguments.withArgument(index + 1, in: frame) { name in !name.contains { $0 < 0x21 || $0 > 0x7e } }
                guard valid else { return .error("-ERR Client names cannot contain spaces, newlines or special characters.") }
                setName = index + 1
                index += 2
            } else {
                // Redis prints the option with %s: up to a NUL byte. Printable ASCII only here.
                let option = arguments.withArgument(index, in: frame) { bytes in
                    String(decoding: bytes.prefix(64).prefix { $0 != 0 }.map { $0 >= 0x20 && $0 < 0x7f ? $0 : UInt8(ascii: "?") }, as: UTF8.self)
                }
                return .error("-ERR Syntax error in HELLO option '\(option)'")
            }
        }
        if let user, let password { return .authenticate(user: user, password: password, version: version, setName: setName) }
        return .hello(version: version, setName: setName)
    }

    /// Redis's `string2ll`: `0`, or an optional `-` and 1 to 19 digits without a leading zero,
    /// within Int64. Anything else (`+2`, `02`, ` 2`, `-0`, overflow) is nil.
    public static func canonicalInteger(_ bytes: UnsafeRawBufferPointer) -> Int? {
        guard !bytes.isEmpty, bytes.count <= 20 else { return nil }
        if bytes.count == 1, bytes[0] == UInt8(ascii: "0") { return 0 }
        var index = 0
        let negative = bytes[0] == UInt8(ascii: "-")
        if negative { index = 1 }
        guard index < bytes.count, bytes[index] >= UInt8(ascii: "1"), bytes[index] <= UInt8(ascii: "9") else { return nil }
        var value: Int64 = 0
        while index < bytes.count {
            let digit = bytes[index] &- UInt8(ascii: "0")
            guard digit < 10 else { return nil }
            let (times, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = negative ? times.subtractingReportingOverflow(Int64(digit)) : times.addingReportingOverflow(Int64(digit))
            guard !overflow1, !overflow2 else { return nil }
            value = sum
            index += 1
        }
        return Int(value)
    }
}
