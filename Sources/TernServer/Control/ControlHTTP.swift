// The control plane's sockets: nutcracker's stats port and the admin HTTP endpoint. Each
// listener has one thread of its own that serves all of its connections at once with
// non-blocking sockets and poll(2). Control traffic only: nothing here touches the data path.
//
// Life of a connection (one request per connection; every response says `Connection: close`):
//
//            ┌──────── head complete: route ──────────┐
//   accept ──┤ reading ── malformed: 400, over the head cap: 431, request deadline: 408
//            │                                        ▼
//            └── stats port (nothing is read) ──► writing ──► lingering ──► closed
//                                                 (write deadline)  (linger deadline)
//
// - reading: bytes are appended until an empty line ends the head. The head is capped
//   (`maxHeadBytes`): a read never asks for more than the room left under the cap, so a client
//   cannot make the buffer grow past it. The whole head must arrive within `requestTimeout` of
//   the accept; a client trickling a byte at a time is answered 408 when that passes (an idle
//   one that sent nothing is just closed).
// - writing: the response leaves with non-blocking sends as the socket takes it; a client that
//   does not read is closed at `writeTimeout`. A slow reader holds only its own connection.
// - lingering: `shutdown(SHUT_WR)` gives the client its EOF; what it still sends (a request
//   body) is read and dropped until it closes or `lingerTimeout` passes, so unread bytes never
//   turn the close into a reset that would destroy the response before the client reads it.
//
// At most `maxConnections` are open; one more arrival closes the oldest connection, lingering
// ones first, then ones still reading, so a flood of idle sockets cannot lock a health probe
// out. Out of descriptors (EMFILE, ENFILE) the listener is left out of poll for 100 ms and
// tried again: the thread never exits.
#if canImport(Glibc)
import Glibc
#endif
import CLibev

/// A response: status, content type, extra header lines and body. `Content-Length`,
/// `Content-Type` and `Connection: close` are added by the server.
struct ControlResponse: Sendable {
    var status: Int
    var contentType: String
    var body: [UInt8]
    var headers: [(String, String)] = []

    init(_ status: Int, _ contentType: String, _ body: [UInt8], headers: [(String, String)] = []) {
        self.status = status
        self.contentType = contentType
        self.body = body
        self.headers = headers
    }

    static func text(_ status: Int, _ text: String) -> ControlResponse {
        ControlResponse(status, "text/plain", Array(text.utf8))
    }
}

/// The routing function of an HTTP endpoint: method (a valid token: GET, HEAD or any other),
/// path (the request target before `?`, as sent) and query (after `?`, still %-encoded) to a
/// response. For HEAD the server sends the headers of the response (with the body's length)
/// and no body, so a router answers HEAD as it answers GET.
typealias ControlRouter = @Sendable (_ method: String, _ path: String, _ query: String) -> ControlResponse

enum ControlService: Sendable {
    /// nutcracker's stats port: the bytes are written as soon as a client connects; nothing is
    /// read from it.
    case writeOnConnect(@Sendable () -> [UInt8])
    /// HTTP/1.0 and 1.1: one request per connection. `queryPaths`: the paths whose response
    /// reads the query; requests for any other path share a response whatever their query
    /// (`ControlServer.made`).
    case http(ControlRouter, queryPaths: Set<String>)
}

struct ControlLimits: Sendable {
    /// From accept to the end of the request head.
    var requestTimeout = 2000
    /// From the end of the request (or the accept, on the stats port) to the last byte written.
    var writeTimeout = 5000
    /// From the last byte written to the close.
    var lingerTimeout = 1000
    /// Milliseconds without accepting after EMFILE and the like.
    var acceptPause = 100
    var maxHeadBytes = 8192
    var maxConnections = 64
    /// Bytes read and dropped while lingering before the connection is closed anyway.
    var maxLingerBytes = 65536
}

/// A listening socket served by a thread of its own. The object is immutable and shared with
/// that thread; the connections live in a `ControlLoop` the thread creates and alone touches.
final class ControlServer: Sendable {
    let descriptor: Int32
    let service: ControlService
    let limits: ControlLimits
    /// The listen backlog (the kernel caps it at `net.core.somaxconn`). Deep enough that a
    /// flood of connections waits its turn instead of filling it: a connection the kernel finds
    /// no room for is dropped, and its client tries again after a second (a probe's timeout).
    static let backlog: Int32 = 1024

    /// `bound`: a socket `bind(host:port:)` made for the same address (-1: one is bound here).
    init(bound: Int32, host: String, port: Int, service: ControlService, limits: ControlLimits = ControlLimits()) throws {
        let fd = bound >= 0 ? bound : try Self.bind(host: host, port: port)
        guard Glibc.listen(fd, ControlServer.backlog) == 0 else {
            let error = errno
            Syscall.close(fd)
            throw StartupError(description: "cannot listen on \(host):\(port): \(Syscall.errorText(error))")
        }
        descriptor = fd
        self.service = service
        self.limits = limits
    }

    /// A socket bound to the address, not listening yet: bound early, a port in use fails a
    /// start before anything else listens.
    static func bind(host: String, port: Int) throws -> Int32 {
        let address: SocketAddress
        switch SocketAddress.resolve(host: host, port: port) {
        case let .success(resolved): address = resolved
        case let .failure(error): throw StartupError(description: "\(host):\(port): \(error)")
        }
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | TERN_SOCK_NONBLOCK | TERN_SOCK_CLOEXEC, 0)
        guard fd >= 0 else { throw StartupError(description: "socket: \(Syscall.errorText(errno))") }
        Syscall.setOption(fd, SOL_SOCKET, SO_REUSEADDR)
        guard address.withSockaddr({ Glibc.bind(fd, $0, $1) }) == 0 else {
            let error = errno
            Syscall.close(fd)
            throw StartupError(description: "cannot listen on \(host):\(port): \(Syscall.errorText(error))")
        }
        return fd
    }

    func start() {
        Threads.start("tern-control") { ControlLoop(server: self).run() }
    }
}

/// One control connection. Owned by its `ControlLoop`.
struct ControlConnection {
    enum Phase: Int { case lingering = 0, reading = 1, writing = 2 }

    let descriptor: Int32
    let acceptedAt: Int
    var phase: Phase
    /// Monotonic milliseconds at which the current phase ends the connection.
    var deadline: Int
    var input: [UInt8] = []
    var output: [UInt8] = []
    var written = 0
    var lingered = 0
    var isClosed = false
}

/// The connections of one `ControlServer`, created by and confined to the server's thread: it
/// is not Sendable and nothing else ever sees it.
final class ControlLoop {
    let server: ControlServer
    var limits: ControlLimits { server.limits }
    private(set) var connections: [ControlConnection] = []
    private var acceptPausedUntil = 0
    private var scratch = [UInt8](repeating: 0, count: 16384)
    private var pollDescriptors: [pollfd] = []
    /// Responses made in this pass, by request: every connection whose request is read in one
    /// pass shares one response per distinct request (`method path?query`; "" for the stats
    /// port's bytes). A flood of `/metrics` requests (a render costs milliseconds) then costs
    /// one render per pass rather than one per connection, and cannot fill the listen backlog
    /// ahead of a health probe. Emptied at each pass: an answer is at most that pass's
    /// milliseconds older than a request that joined it (accepted later in the same pass).
    private var madeThisPass: [(request: String, response: ControlResponse)] = []

    init(server: ControlServer) { self.server = server }

    func run() -> Never {
        while true { pass() }
    }

    /// One poll(2) and the work it reports.
    func pass() {
        madeThisPass.removeAll(keepingCapacity: true)
        var now = monotonicMilliseconds()
        expire(now)
        pollDescriptors.removeAll(keepingCapacity: true)
        let listening = now >= acceptPausedUntil
        // A negative descriptor is skipped by poll: the listener rests after EMFILE.
        pollDescriptors.append(pollfd(fd: listening ? server.descriptor : -1, events: Int16(POLLIN), revents: 0))
        var wake = now + 1000
        if !listening { wake = min(wake, acceptPausedUntil) }
        for connection in connections {
            let events = connection.phase == .writing ? POLLOUT : POLLIN
            pollDescriptors.append(pollfd(fd: connection.descriptor, events: Int16(events), revents: 0))
            wake = min(wake, connection.deadline)
        }
        let ready = poll(&pollDescriptors, nfds_t(pollDescriptors.count), Int32(max(0, wake - now)))
        if ready < 0 {
            // EINTR, or ENOMEM: try again after a moment rather than spin.
            if errno != EINTR { usleep(10_000) }
            return
        }
        now = monotonicMilliseconds()
        // Connections first: the indices of `pollDescriptors` match `connections` until an
        // accept appends to it.
        for index in connections.indices where pollDescriptors[index + 1].revents != 0 {
            switch connections[index].phase {
            case .reading: read(index, now: now)
            case .writing: write(index, now: now)
            case .lingering: linger(index)
            }
        }
        connections.removeAll { $0.isClosed }
        if listening, pollDescriptors[0].revents != 0 { accept(now: now) }
    }

    // MARK: Accepting

    private func accept(now: Int) {
        for _ in 0..<64 {
            switch Syscall.accept(server.descriptor) {
            case let .transferred(fd):
                admit(Int32(fd), now: now)
            case .wouldBlock, .endOfFile:
                return
            case let .failed(error):
                // A connection reset before it was accepted: take the next one.
                if error == ECONNABORTED || error == EPROTO { continue }
                // Out of descriptors or memory: the pending connection stays in the backlog and
                // poll would report it again at once. Rest, then try again; never exit.
                acceptPausedUntil = now + limits.acceptPause
                return
            }
        }
    }

    private func admit(_ fd: Int32, now: Int) {
        if connections.count >= limits.maxConnections { evictOne() }
        switch server.service {
        case let .writeOnConnect(produce):
            connections.append(ControlConnection(descriptor: fd, acceptedAt: now, phase: .writing, deadline: now + limits.writeTimeout))
            connections[connections.count - 1].output = made("") { ControlResponse(200, "", produce()) }.body
            write(connections.count - 1, now: now)
        case .http:
            connections.append(ControlConnection(descriptor: fd, acceptedAt: now, phase: .reading, deadline: now + limits.requestTimeout))
            // The request often arrives with the connection: no need to wait for a poll.
            read(connections.count - 1, now: now)
        }
        if connections.last?.isClosed == true { connections.removeLast() }
    }

    /// Makes room for one more: the oldest lingering connection, else the oldest still
    /// reading, else the oldest writing.
    private func evictOne() {
        guard let victim = connections.indices.min(by: { a, b in
            let left = connections[a], right = connections[b]
            return (left.phase.rawValue, left.acceptedAt) < (right.phase.rawValue, right.acceptedAt)
        }) else { return }
        close(victim)
        connections.remove(at: victim)
    }

    // MARK: Deadlines

    private func expire(_ now: Int) {
        for index in connections.indices where connections[index].deadline <= now {
            switch connections[index].phase {
            case .reading:
                if connections[index].input.isEmpty {
                    close(index)
                } else {
                    respond(index, .text(408, "request timeout\n"), includeBody: true, now: now)
                }
            case .writing, .lingering:
                close(index)
            }
        }
        connections.removeAll { $0.isClosed }
    }

    // MARK: Reading the request

    private func read(_ index: Int, now: Int) {
        let fd = connections[index].descriptor
        while true {
            let room = limits.maxHeadBytes - connections[index].input.count
            let count = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, min(room, $0.count), 0) }
            if count < 0 {
                let error = errno
                if error == EINTR { continue }
                if error != EAGAIN && error != EWOULDBLOCK { close(index) }
                return
            }
            if count == 0 {
                // The client left before finishing its request: nothing to answer.
                close(index)
                return
            }
            let scanFrom = max(0, connections[index].input.count - 2)
            connections[index].input.append(contentsOf: scratch[0..<count])
            if let end = ControlHTTP.headEnd(connections[index].input, from: scanFrom) {
                let response: ControlResponse
                var includeBody = true
                switch ControlHTTP.parse(head: connections[index].input[0..<end]) {
                case let .success(request):
                    guard case let .http(route, queryPaths) = server.service else { preconditionFailure("reading on a write-on-connect port") }
                    // Keyed by what the response depends on: a query the path does not read,
                    // or HEAD for GET, must not make a render of its own (clients asking
                    // `/metrics?<unique>` and never reading held `/healthz` for seconds).
                    let shared = (request.method == "HEAD" ? "GET" : request.method) + " " + request.path
                    response = made(queryPaths.contains(request.path) ? shared + "?" + request.query : shared) {
                        route(request.method, request.path, request.query)
                    }
                    includeBody = request.method != "HEAD"
                case let .failure(error):
                    response = error.response
                }
                respond(index, response, includeBody: includeBody, now: now)
                return
            }
            if connections[index].input.count >= limits.maxHeadBytes {
                respond(index, .text(431, "request head larger than \(limits.maxHeadBytes) bytes\n"), includeBody: true, now: now)
                return
            }
        }
    }

    /// The response to `request` (a key of what the response depends on) made earlier in this
    /// pass, else `make()`'s (kept for the pass).
    private func made(_ request: String, _ make: () -> ControlResponse) -> ControlResponse {
        if let earlier = madeThisPass.first(where: { $0.request == request }) { return earlier.response }
        let response = make()
        madeThisPass.append((request, response))
        return response
    }

    private func respond(_ index: Int, _ response: ControlResponse, includeBody: Bool, now: Int) {
        connections[index].input = []
        connections[index].output = ControlHTTP.encode(response, includeBody: includeBody)
        connections[index].phase = .writing
        connections[index].deadline = now + limits.writeTimeout
        write(index, now: now)
    }

    // MARK: Writing the response

    private func write(_ index: Int, now: Int) {
        let fd = connections[index].descriptor
        while connections[index].written < connections[index].output.count {
            let offset = connections[index].written
            let count = connections[index].output.withUnsafeBytes { bytes in
                send(fd, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            }
            if count >= 0 {
                connections[index].written += count
                continue
            }
            let error = errno
            if error == EINTR { continue }
            if error != EAGAIN && error != EWOULDBLOCK { close(index) }
            return
        }
        connections[index].output = []
        connections[index].written = 0
        _ = shutdown(fd, Int32(SHUT_WR))
        connections[index].phase = .lingering
        connections[index].deadline = now + limits.lingerTimeout
        linger(index)
    }

    /// After the response: drop what the client still sends until it closes.
    private func linger(_ index: Int) {
        let fd = connections[index].descriptor
        while true {
            let count = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count > 0 {
                connections[index].lingered += count
                if connections[index].lingered > limits.maxLingerBytes { close(index); return }
                continue
            }
            if count < 0 {
                let error = errno
                if error == EINTR { continue }
                if error == EAGAIN || error == EWOULDBLOCK { return }
            }
            close(index)
            return
        }
    }

    private func close(_ index: Int) {
        guard !connections[index].isClosed else { return }
        Syscall.close(connections[index].descriptor)
        connections[index].isClosed = true
        connections[index].input = []
        connections[index].output = []
    }
}

func monotonicMilliseconds() -> Int {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Int(now.tv_sec) * 1000 + Int(now.tv_nsec) / 1_000_000
}

// MARK: - HTTP/1.x: the request head, the response, the query

struct ControlRequest: Equatable {
    var method: String
    var path: String
    var query: String
}

struct ControlHTTPError: Error, Equatable {
    var reason: String
    var response: ControlResponse { .text(400, "bad request: \(reason)\n") }
}

enum ControlHTTP {
    static let lineFeed = UInt8(ascii: "\n"), carriageReturn = UInt8(ascii: "\r")

    /// The length of the head (through the empty line that ends it: CRLF CRLF, or bare LFs),
    /// or nil while it is incomplete. Scanning may resume two bytes before the previous end.
    static func headEnd(_ bytes: [UInt8], from start: Int) -> Int? {
        var index = start
        while index < bytes.count {
            if bytes[index] == lineFeed {
                if index + 1 < bytes.count, bytes[index + 1] == lineFeed { return index + 2 }
                if index + 2 < bytes.count, bytes[index + 1] == carriageReturn, bytes[index + 2] == lineFeed { return index + 3 }
            }
            index += 1
        }
        return nil
    }

    /// The request line and header lines of a complete head. Headers are checked for form and
    /// otherwise ignored (no request body is read: every response closes the connection).
    static func parse(head: ArraySlice<UInt8>) -> Result<ControlRequest, ControlHTTPError> {
        var lines = head.split(separator: lineFeed, omittingEmptySubsequences: false).map { line in
            line.last == carriageReturn ? line.dropLast() : line
        }
        while lines.last?.isEmpty == true { lines.removeLast() }
        guard let requestLine = lines.first, !requestLine.isEmpty else { return .failure(ControlHTTPError(reason: "no request line")) }
        let parts = requestLine.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3 else { return .failure(ControlHTTPError(reason: "the request line is not 'METHOD TARGET HTTP/1.x'")) }
        let (method, target, version) = (parts[0], parts[1], parts[2])
        guard !method.isEmpty, method.allSatisfy(isTokenByte) else { return .failure(ControlHTTPError(reason: "bad method")) }
        guard target.first == UInt8(ascii: "/"), target.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
            return .failure(ControlHTTPError(reason: "the target must be a path starting with '/'"))
        }
        guard version.elementsEqual("HTTP/1.1".utf8) || version.elementsEqual("HTTP/1.0".utf8) else {
            return .failure(ControlHTTPError(reason: "only HTTP/1.0 and HTTP/1.1"))
        }
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > line.startIndex,
                  line[line.startIndex..<colon].allSatisfy(isTokenByte),
                  line[(colon + 1)...].allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7f) }) else {
                return .failure(ControlHTTPError(reason: "malformed header line"))
            }
        }
        let question = target.firstIndex(of: UInt8(ascii: "?"))
        let path = target[target.startIndex..<(question ?? target.endIndex)]
        let query = question.map { target[($0 + 1)...] } ?? []
        return .success(ControlRequest(method: String(decoding: method, as: UTF8.self), path: String(decoding: path, as: UTF8.self),
                                       query: String(decoding: query, as: UTF8.self)))
    }

    /// RFC 9110 `tchar`.
    static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): return true
        default: return Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }

    static func encode(_ response: ControlResponse, includeBody: Bool) -> [UInt8] {
        var head = "HTTP/1.1 \(response.status) \(reason(response.status))\r\nContent-Type: \(response.contentType)\r\nContent-Length: \(response.body.count)\r\n"
        for (name, value) in response.headers { head += "\(name): \(value)\r\n" }
        head += "Connection: close\r\n\r\n"
        var bytes = Array(head.utf8)
        if includeBody { bytes += response.body }
        return bytes
    }

    static func reason(_ status: Int) -> String {
        switch status {
        case 200: return "OK"
        case 400: return "Bad Request"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 408: return "Request Timeout"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 503: return "Service Unavailable"
        default: return "Status"
        }
    }

    /// `name=value&…` with %XX escapes and `+` for a space decoded, in order. A name without
    /// `=` has an empty value. A `%` not followed by two hex digits is an error.
    static func queryParameters(_ query: String) -> Result<[(name: String, value: [UInt8])], ControlHTTPError> {
        var parameters: [(name: String, value: [UInt8])] = []
        for part in query.utf8.split(separator: UInt8(ascii: "&")) {
            let equals = part.firstIndex(of: UInt8(ascii: "="))
            guard let name = percentDecoded(part[part.startIndex..<(equals ?? part.endIndex)]),
                  let value = percentDecoded(equals.map { part[part.index(after: $0)...] } ?? part[part.endIndex...]) else {
                return .failure(ControlHTTPError(reason: "bad %-escape in the query"))
            }
            parameters.append((String(decoding: name, as: UTF8.self), value))
        }
        return .success(parameters)
    }

    static func percentDecoded(_ text: Substring.UTF8View) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(text.count)
        var index = text.startIndex
        while index < text.endIndex {
            let byte = text[index]
            if byte == UInt8(ascii: "+") {
                out.append(UInt8(ascii: " "))
            } else if byte == UInt8(ascii: "%") {
                let first = text.index(after: index)
                guard first < text.endIndex, text.index(after: first) < text.endIndex,
                      let high = hexValue(text[first]), let low = hexValue(text[text.index(after: first)]) else { return nil }
                out.append(high << 4 | low)
                index = text.index(after: first)
            } else {
                out.append(byte)
            }
            index = text.index(after: index)
        }
        return out
    }

    static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
