import CLibev
import Logging

/// What backend connections reach of their worker: its libev loop and logger, the request and
/// reply buffers lent between layers while one is parsed or delivered, the connections to write
/// this loop pass and the objects to free once the current callback has returned. `Worker`
/// (Worker/Worker.swift) is its only subclass: every member here is final, so the request path
/// calls them directly, and Backend never names the worker, which owns clients and pools above.
/// The one exception, `serverConnectSettled`, is called once per connect, never per request.
class BackendLoop {
    final let loop: OpaquePointer
    final let logger: Logger
    /// Recycled reply slots, clients to write this pass, a large reply being delivered (the
    /// same for replies as `largeInput` for requests) and a binary request being routed.
    final let replies: ReplyDesk
    /// The client buffer being parsed, while it holds at least `ServerConnection.adoptThreshold`
    /// bytes: a request forwarded whole may take its memory (nil otherwise).
    final var largeInput: ByteBuffer?
    /// Set when a server connection took the request being parsed out of `largeInput` (its
    /// bytes are no longer there to consume); the parsing loop clears it.
    final var tookLargeRequest = false
    /// Backend connections with bytes to write, flushed once per loop pass (`Worker.flushAll`),
    /// in the order they became dirty. A FIFO, so that flushing pops each one out with the
    /// queue's own reference (an array was iterated with a retain and emptied with a release).
    final var dirtyServers = FIFO<ServerConnection>()
    /// Closed objects kept alive until the current callback has returned.
    final var retired: [AnyObject] = []

    init(loop: OpaquePointer, logger: Logger) {
        self.loop = loop
        self.logger = logger
        self.replies = ReplyDesk(loop: loop)
    }

    @inline(__always) final var now: Double { ev_now(loop) }

    /// A connect to a server succeeded or failed (not per request: once per connect). The
    /// worker wakes the clients waiting for a server (`FrontendLoop`).
    func serverConnectSettled() {}

    /// Called with every request queued: the check is inlined, the append (once per
    /// connection per pass) is not.
    @inline(__always)
    final func markDirty(_ server: ServerConnection) {
        if !server.isDirty { addDirty(server) }
    }

    @inline(never)
    private final func addDirty(_ server: ServerConnection) {
        server.isDirty = true
        dirtyServers.append(server)
    }

    final func retire(_ object: AnyObject) { retired.append(object) }
}
