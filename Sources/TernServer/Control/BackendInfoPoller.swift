#if canImport(Glibc)
import Glibc
#endif
import CLibev
import TernCore

/// Fetches `INFO` from every server of every Redis pool (`stats` from every memcached server)
/// on a thread of its own, once a second, so that INFO and memcached `stats` through Tern
/// answer backend figures at most about a second old without touching the request path. One connection per server, kept open; a server that does not
/// connect within 300 ms or answer within 500 ms is marked down and tried again every five
/// seconds, so that servers that are down cannot stretch the cycle for the others. The same
/// thread halves the hot-key sketches every minute (`HotKeys`).
final class BackendInfoPoller: Sendable {
    let control: ControlState

    init(control: ControlState) { self.control = control }

    func start() {
        Threads.start("tern-info") { self.run() }
    }

    /// Connections by "pool/server/address"; confined to the poller's thread.
    private final class Connections {
        var connections: [String: BlockingConnection] = [:]
        var lastPoll: [String: Int] = [:]
        /// A server whose last poll failed is tried again at this time (unix seconds), so that
        /// servers that are down cannot stretch the cycle for the others.
        var retryAt: [String: Int] = [:]
    }

    private func run() {
        let connections = Connections()
        var lastDecay = Int(time(nil))
        while true {
            let now = Int(time(nil))
            if now - lastDecay >= 60 {
                // Hot keys follow the present: counts are halved every minute.
                lastDecay = now
                for plan in control.currentPlans { for sketch in plan.shared.hotKeys { sketch.decay() } }
            }
            var seen = Set<String>()
            for plan in control.currentPlans {
                let isRedis = plan.config.protocolKind == .redis
                let due = now - (connections.lastPoll[plan.config.name] ?? 0) >= 1
                for (index, server) in plan.config.servers.enumerated() {
                    // With the transport: a reload that adds or drops server_tls reconnects.
                    let key = "\(plan.config.name)/\(server.name)/\(server.address)/\(plan.serverTLS == nil ? "tcp" : "tls")"
                    seen.insert(key)
                    guard due, index < plan.serverAddresses.count, now >= connections.retryAt[key] ?? 0 else { continue }
                    // TLS as on the data path: the pool's context, the server's host verified.
                    var host: String?
                    if case let .tcp(name, _) = server.address { host = name }
                    let result = fetch(key: key, address: plan.serverAddresses[index], tls: plan.serverTLS, host: host,
                                       password: isRedis ? plan.config.redisAuth : nil, memcached: !isRedis, connections)
                    // Five seconds from the failure, not from the cycle's start (a slow cycle would
                    // otherwise retry a down server on every pass).
                    if case .failure = result { connections.retryAt[key] = Int(time(nil)) + 5 } else { connections.retryAt[key] = nil }
                    plan.shared.backendInfo.withLock { known in
                        var info = known[server.name] ?? BackendInfo(address: "\(server.address)")
                        info.address = "\(server.address)"
                        switch result {
                        case let .success(fields):
                            info.fields = fields
                            info.fetchedAt = Int(time(nil))
                            info.error = nil
                        case let .failure(error):
                            info.error = error.text
                        }
                        known[server.name] = info
                    }
                }
                if due { connections.lastPoll[plan.config.name] = now }
            }
            // Servers that left the config: close their connections.
            for key in connections.connections.keys where !seen.contains(key) { connections.connections[key] = nil }
            usleep(250_000)
        }
    }

    struct PollError: Error { var text: String }

    private func fetch(key: String, address: SocketAddress, tls: TLSContext?, host: String?, password: String?, memcached: Bool,
                       _ connections: Connections) -> Result<[String: String], PollError> {
        let connection: BlockingConnection
        if let open = connections.connections[key] {
            connection = open
        } else {
            // Connecting (and the TLS handshake) within 300 ms.
            switch BlockingConnection.open(address, tls: tls, serverName: host, deadline: BlockingConnection.now() + 0.3) {
            case let .success(opened): connection = opened
            case let .failure(error): return .failure(PollError(text: error.text))
            }
            if let password {
                guard case let .success(reply) = Self.exchange(connection, RespEncoder.command(["AUTH", password])),
                      reply.withUnsafeBytes({ RespReply.classify($0) }) == .ok else {
                    return .failure(PollError(text: "AUTH failed"))
                }
            }
            connections.connections[key] = connection
        }
        if memcached {
            switch Self.exchangeStats(connection) {
            case let .success(fields): return .success(fields)
            case let .failure(error):
                connections.connections[key] = nil
                return .failure(error)
            }
        }
        switch Self.exchange(connection, RespEncoder.command(["INFO"])) {
        case let .success(reply):
            guard case .bulk = reply.withUnsafeBytes({ RespReply.classify($0) }) else {
                return .failure(PollError(text: String(decoding: reply.prefix(120).filter { $0 >= 0x20 }, as: UTF8.self)))
            }
            return .success(BackendInfo.parse(reply))
        case let .failure(error):
            connections.connections[key] = nil
            return .failure(error)
        }
    }

    /// memcached `stats`: `STAT name value` lines up to `END`, 500 ms at most; an error line
    /// (a server that wants authentication) is a failure.
    private static func exchangeStats(_ connection: BlockingConnection) -> Result<[String: String], PollError> {
        let end = BlockingConnection.now() + 0.5
        if case let .failure(error) = connection.writeAll(Array("stats\r\n".utf8), deadline: end) { return .failure(PollError(text: error.text)) }
        var reply: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            if reply.count >= 5, reply.suffix(5).elementsEqual("END\r\n".utf8), reply.count == 5 || reply[reply.count - 6] == 0x0a {
                return .success(BackendInfo.parseStats(reply))
            }
            if let newline = reply.firstIndex(of: 0x0a), !reply.starts(with: "STAT ".utf8) {
                return .failure(PollError(text: String(decoding: reply[..<newline].filter { $0 >= 0x20 }.prefix(120), as: UTF8.self)))
            }
            guard reply.count < 1 << 20 else { return .failure(PollError(text: "reply too large")) }
            switch connection.read(into: &chunk, deadline: end) {
            case let .success(count): reply += chunk[0..<count]
            case let .failure(error): return .failure(PollError(text: error.text))
            }
        }
    }

    /// Sends a request and reads one reply (a line, or a bulk string whole), 500 ms at most.
    private static func exchange(_ connection: BlockingConnection, _ request: [UInt8]) -> Result<[UInt8], PollError> {
        let end = BlockingConnection.now() + 0.5
        if case let .failure(error) = connection.writeAll(request, deadline: end) { return .failure(PollError(text: error.text)) }
        var reply: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            // One reply (a line, or INFO's bulk string), framed by TernCore.
            switch reply.withUnsafeBytes({ RespReplyParser.parse($0, maxDepth: 8, maxBulkLength: 4 << 20) }) {
            case let .reply(length, _): return .success(Array(reply[..<length]))
            case .invalid: return .failure(PollError(text: "invalid reply"))
            case .incomplete: break
            }
            // INFO is a few KiB; anything past 4 MiB is not a reply this poller expects.
            guard reply.count < 4 << 20 else { return .failure(PollError(text: "reply too large")) }
            switch connection.read(into: &chunk, deadline: end) {
            case let .success(count): reply += chunk[0..<count]
            case let .failure(error): return .failure(PollError(text: error.text))
            }
        }
    }
}
