#if canImport(Glibc)
import Glibc
#endif
import CLibev
import TernCore

/// Fetches `INFO` from every server of every Redis pool (`stats` from every memcached server)
/// on a thread of its own, once a second, so that INFO and memcached `stats` through Tern
/// answer backend figures at most about a second old without touching the request path. One
/// connection per server, kept open. The servers of a cycle are asked together: every connect
/// is started before any is waited for (300 ms for all), every request is sent before any reply
/// is read (500 ms for all), so a cycle lasts about as long as its slowest server, not the sum
/// of them, and servers that are down or paused cannot make the others' figures stale. A
/// server that fails is tried again five seconds later. The same thread halves the hot-key
/// sketches every minute (`HotKeys`).
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

    /// One server asked in a cycle.
    private final class Target {
        let key: String
        let plan: PoolPlan
        let server: ServerConfig
        let address: SocketAddress
        let host: String?
        var connection: BlockingConnection?
        /// Opened in this cycle; `AUTH` goes ahead of its `INFO`.
        var isNew = false
        var authenticates = false
        var result: Result<[String: String], PollError>?
        var memcached: Bool { plan.config.protocolKind != .redis }

        init(key: String, plan: PoolPlan, server: ServerConfig, address: SocketAddress) {
            self.key = key
            self.plan = plan
            self.server = server
            self.address = address
            if case let .tcp(name, _) = server.address { host = name } else { host = nil }
        }

        func fail(_ text: String) {
            connection = nil
            result = .failure(PollError(text: text))
        }
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
            var targets: [Target] = []
            // A warm-up's old pool too (its servers' `backends_up`), under the same pool name.
            let polled = control.currentPlans.flatMap { plan in [(plan, plan.config.name)] + (plan.warmup.map { [($0, "warmup_old:" + plan.config.name)] } ?? []) }
            for (plan, name) in polled {
                let due = now - (connections.lastPoll[name] ?? 0) >= 1
                for (index, server) in plan.config.servers.enumerated() {
                    // With the transport: a reload that adds or drops server_tls reconnects.
                    let key = "\(name)/\(server.name)/\(server.address)/\(plan.serverTLS == nil ? "tcp" : "tls")"
                    seen.insert(key)
                    guard due, index < plan.serverAddresses.count, now >= connections.retryAt[key] ?? 0 else { continue }
                    targets.append(Target(key: key, plan: plan, server: server, address: plan.serverAddresses[index]))
                }
                if due { connections.lastPoll[name] = now }
            }
            // Servers that left the config: close their connections.
            for key in connections.connections.keys where !seen.contains(key) { connections.connections[key] = nil }
            poll(targets, connections)
            for target in targets {
                // Five seconds from the failure, not from the cycle's start.
                if case .failure = target.result { connections.retryAt[target.key] = Int(time(nil)) + 5 } else { connections.retryAt[target.key] = nil }
                connections.connections[target.key] = target.connection
                let server = target.server
                target.plan.shared.backendInfo.withLock { known in
                    var info = known[server.name] ?? BackendInfo(address: "\(server.address)")
                    info.address = "\(server.address)"
                    switch target.result {
                    case let .success(fields):
                        info.fields = fields
                        info.fetchedAt = Int(time(nil))
                        info.error = nil
                    case let .failure(error):
                        info.error = error.text
                    case nil:
                        info.error = "not polled"
                    }
                    known[server.name] = info
                }
            }
            usleep(250_000)
        }
    }

    /// One cycle: connects (and TLS handshakes) where no connection is open, stepped together
    /// from one `poll()` within 300 ms; then `INFO` (after `AUTH` on a new connection of a pool
    /// with `redis_auth`, in the same write) or `stats` to every target, every reply within 500
    /// ms of the last request sent.
    private func poll(_ targets: [Target], _ connections: Connections) {
        var opening: [(target: Target, events: Int16)] = []
        for target in targets {
            if let open = connections.connections[target.key] {
                target.connection = open
                continue
            }
            switch BlockingConnection.start(target.address) {
            case let .success(started):
                target.connection = started
                target.isNew = true
                opening.append((target, Int16(POLLOUT)))
            case let .failure(error): target.fail(error.text)
            }
        }
        let connected = BlockingConnection.now() + 0.3
        while !opening.isEmpty {
            var entries = opening.map { pollfd(fd: $0.target.connection!.descriptor, events: $0.events, revents: 0) }
            let remaining = Int32(max(0, (connected - BlockingConnection.now()) * 1000))
            let ready = Glibc.poll(&entries, nfds_t(entries.count), remaining)
            if ready < 0 {
                let failure = errno
                if failure == EINTR { continue }
                for (target, _) in opening { target.fail("poll: " + Syscall.errorText(failure)) }
                break
            }
            guard ready > 0 else {
                for (target, events) in opening { target.fail(events == Int16(POLLOUT) && target.connection?.tls == nil ? Syscall.errorText(ETIMEDOUT) : "TLS handshake timed out") }
                break
            }
            var still: [(target: Target, events: Int16)] = []
            for (index, entry) in entries.enumerated() {
                let target = opening[index].target
                guard entry.revents != 0, let connection = target.connection else {
                    still.append(opening[index])
                    continue
                }
                switch connection.openStep(tls: target.plan.serverTLS, serverName: target.host) {
                case .done: break
                case let .wait(events): still.append((target, events))
                case let .failed(failure): target.fail(failure.text)
                }
            }
            opening = still
        }
        // Every request out before any reply is waited for.
        let info = RespEncoder.command(["INFO"]), stats = Array("stats\r\n".utf8)
        let sent = BlockingConnection.now() + 0.5
        for target in targets {
            guard let connection = target.connection else { continue }
            var request = target.memcached ? stats : info
            if target.isNew, !target.memcached, let password = target.plan.config.redisAuth {
                request = RespEncoder.command(["AUTH", password]) + request
                target.authenticates = true
            }
            if case let .failure(error) = connection.writeAll(request, deadline: sent) { target.fail(error.text) }
        }
        let answered = BlockingConnection.now() + 0.5
        for target in targets {
            guard let connection = target.connection else { continue }
            let result = target.memcached ? Self.receiveStats(connection, deadline: answered)
                : Self.receiveInfo(connection, after: target.authenticates ? 1 : 0, deadline: answered)
            switch result {
            case .success: target.result = result
            case let .failure(error): target.fail(error.text)
            }
        }
    }

    struct PollError: Error { var text: String }

    /// `INFO`'s reply: a bulk string (anything else, such as `-NOAUTH`, is the failure's text).
    private static func receiveInfo(_ connection: BlockingConnection, after replies: Int, deadline: Double) -> Result<[String: String], PollError> {
        switch receiveReply(connection, after: replies, deadline: deadline) {
        case let .success(reply):
            guard case .bulk = reply.withUnsafeBytes({ RespReply.classify($0) }) else {
                return .failure(PollError(text: String(decoding: reply.prefix(120).filter { $0 >= 0x20 }, as: UTF8.self)))
            }
            return .success(BackendInfo.parse(reply))
        case let .failure(error):
            return .failure(error)
        }
    }

    /// memcached `stats`' reply: `STAT name value` lines up to `END`; an error line (a server
    /// that wants authentication) is a failure.
    private static func receiveStats(_ connection: BlockingConnection, deadline end: Double) -> Result<[String: String], PollError> {
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

    /// Reads the replies to the last `count` requests before `end`; the last one's bytes are
    /// returned, and every earlier one must be `+OK` (the `AUTH` sent ahead of `INFO`).
    private static func receiveReply(_ connection: BlockingConnection, after count: Int = 0, deadline end: Double) -> Result<[UInt8], PollError> {
        var reply: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        var skipped = 0
        while true {
            // One reply (a line, or INFO's bulk string), framed by TernCore.
            switch reply.withUnsafeBytes({ RespReplyParser.parse($0, maxDepth: 8, maxBulkLength: 4 << 20) }) {
            case let .reply(length, _):
                guard skipped < count else { return .success(Array(reply[..<length])) }
                guard reply.withUnsafeBytes({ RespReply.classify(UnsafeRawBufferPointer(rebasing: $0[..<length])) }) == .ok else {
                    // The server's own words (`-WRONGPASS …`), without the sign and the line end.
                    let said = reply[..<length].drop(while: { $0 == UInt8(ascii: "-") }).filter { $0 >= 0x20 }.prefix(120)
                    return .failure(PollError(text: "AUTH failed" + (said.isEmpty ? "" : ": " + String(decoding: said, as: UTF8.self))))
                }
                reply.removeFirst(length)
                skipped += 1
                continue
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
