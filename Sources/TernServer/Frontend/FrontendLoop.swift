import CLibev
import Logging
import TernCore

/// What client connections reach of their worker, above what pools do (`RoutingLoop`): the
/// worker's open clients and the ones holding replies for a pass, buffers the worker's clients
/// share, client numbering and process facts. `Worker` (Worker/Worker.swift) is the only
/// subclass; every member here is final (but the override of `serverConnectSettled`, once per
/// connect), so the request path calls them directly, and Frontend never names the worker.
class FrontendLoop: RoutingLoop {
    /// Process-wide facts the protocols report (memcached `stats`).
    final let processInfo: ProcessInfo
    /// Open client connections, in no order; the watcher's `data` does not retain its client,
    /// this does. Each client knows its place (`ClientConnection.position`), so one leaves by
    /// trading places with the last: 8 bytes a client, where a dictionary took about 36.
    final var clients: [ClientConnection] = []
    /// Clients whose replies wait one pass for the rest of their pipeline (`Worker.flushAll`).
    final var heldClients: [ClientConnection] = []
    /// Loop passes so far (one per `Worker.flushAll`): what a client begins is counted per
    /// pass (`ClientConnection.requestsPerPass`).
    final var passNumber: UInt32 = 0
    /// Clients that spent their requests of this pass (`ClientConnection.deferInput`), and
    /// those of the pass before, which the next `Worker.flushAll` resumes.
    final var deferredInput: [ClientConnection] = []
    final var resumingInput: [ClientConnection] = []
    /// Client sockets closed on Tern's side whose input is still read and dropped
    /// (`closeClientSocket`, LingeringClose.swift).
    final var lingering: [LingeringSocket] = []
    /// Read buffer shared by the worker's clients: a client holds a buffer of its own only while
    /// it has a partial request, so idle connections cost no buffer memory.
    final let scratch = ByteBuffer()
    /// TLS clients closed since the sweep last looked: OpenSSL's per-connection memory is freed
    /// to malloc, which keeps the pages unless trimmed (`Worker.sweepClients`).
    final var tlsClientsClosed = 0
    /// Binary-protocol clients: the meta line a packet becomes, reused across requests (taken
    /// out with a swap while in use; large ones are not kept), and the `gets` line of the common
    /// Get (written without the translator's array appends).
    final var binaryLine: [UInt8] = []
    final let binaryGetLine = ByteBuffer()
    /// Workers in the process (`CLIENT ID` interleaves their numbering); set with the worker's
    /// peers before the loop starts.
    final var workerCount = 1
    /// A multi-key request's distinct servers, reused so splitting one allocates nothing.
    private final var fragmentServers: [Int32] = []
    /// A multi-key read's keys, to find repeated ones (32 KiB per worker, made by its first multi-key read).
    final let repeatedKeys = RepeatedKeys()
    /// The arguments of the Redis request being parsed and routed, shared by the worker's Redis
    /// clients (`RedisSession.arguments`). One at a time: a client's requests are parsed and
    /// routed within its own read or flush, and no other client's parsing runs inside it (both
    /// are top-level loop callbacks; a blocked command that waited runs from its stored bytes).
    /// Per client it took an object and, once used, 256 bytes of spans.
    final let redisArguments = RespArguments()
    /// The command table as the Redis request path reads it (no lazy global's check).
    final let redisCommands = RedisCommandLookup.shared
    /// A Redis multi-key request's key positions and their servers (or slots), reused.
    final let splitKeys = SplitKeys()
    private final var nextClientNumber = 0
    /// Redis clients' names, one object per distinct three (`SharedRedisNames`). Entries no
    /// client holds any more are dropped by the sweep (`sweepRedisNames`); past
    /// `maxSharedNames` distinct names, new ones get an object of their own.
    private final var sharedNames: [RedisNames: SharedRedisNames] = [:]
    static let maxSharedNames = 4096

    init(loop: OpaquePointer, logger: Logger, identifier: Int, takesClients: Bool, processInfo: ProcessInfo) {
        self.processInfo = processInfo
        super.init(loop: loop, logger: logger, identifier: identifier, takesClients: takesClients)
    }

    final func nextClientIndex() -> Int {
        nextClientNumber &+= 1
        return nextClientNumber
    }

    final func markDirty(_ client: ClientConnection) { replies.markDirty(client) }

    /// Clients whose next request waits for their one server's next connect
    /// (`ClientConnection.waitsForServer`), with when each is parsed again; one timer for all,
    /// at the earliest. Only during an outage of a one-server pool's server.
    private final var serverWaits: [(client: ClientConnection, at: Double)] = []
    private final var serverWaitTimer: TimerWatcher?
    private final var serverWaitTimerAt = Double.infinity

    /// Parses `client`'s input again at `time` (a flush of the client resumes parsing).
    final func wake(_ client: ClientConnection, at time: Double) {
        serverWaits.append((client, time))
        guard serverWaitTimer?.isActive != true || time < serverWaitTimerAt else { return }
        let timer = serverWaitTimer ?? TimerWatcher(loop: loop, owner: self) { _, watcher, _ in
            let worker = Unmanaged<FrontendLoop>.fromOpaque(tern_get_data(watcher)!).takeUnretainedValue()
            worker.serverWaitTimer?.fired()
            worker.serverWaitsDue()
        }
        serverWaitTimer = timer
        serverWaitTimerAt = time
        timer.start(after: time - now)
    }

    /// A connect settled: every waiting client looks again (sent now, or waits for the next).
    override func serverConnectSettled() {
        guard !serverWaits.isEmpty else { return }
        var waits: [(client: ClientConnection, at: Double)] = []
        swap(&waits, &serverWaits)
        for wait in waits { wait.client.serverWaitEnded() }
        serverWaitTimer?.stop()
        serverWaitTimerAt = .infinity
    }

    private final func serverWaitsDue() {
        let due = now + 0.0005
        var later = Double.infinity
        var waits: [(client: ClientConnection, at: Double)] = []
        swap(&waits, &serverWaits)
        for wait in waits {
            if wait.at <= due {
                wait.client.serverWaitEnded()
            } else if !wait.client.isClosed {
                serverWaits.append(wait)
                later = min(later, wait.at)
            }
        }
        serverWaitTimerAt = later
        if later.isFinite { serverWaitTimer?.start(after: later - now) }
    }

    final func deferInput(_ client: ClientConnection) { deferredInput.append(client) }

    final func hold(_ client: ClientConnection) {
        if !client.isHeld {
            client.isHeld = true
            heldClients.append(client)
        }
    }

    final func adopt(_ client: ClientConnection) {
        client.position = Int32(clients.count)
        clients.append(client)
    }

    final func release(_ client: ClientConnection) {
        let place = Int(client.position)
        guard place >= 0, place < clients.count, clients[place] === client else { return }
        // Retired before it leaves `clients`, so that it is never without a reference here: the
        // client's watcher callback lends it unretained and may be the caller.
        retired.append(client)
        let last = clients.removeLast()
        if place < clients.count {
            clients[place] = last
            last.position = Int32(place)
        }
        client.position = -1
    }

    /// Lends the worker's server list, empty, for splitting one multi-key request.
    final func withFragmentServers<Result>(_ body: (inout [Int32]) -> Result) -> Result {
        var servers = fragmentServers
        fragmentServers = []
        defer {
            servers.removeAll(keepingCapacity: true)
            fragmentServers = servers
        }
        return body(&servers)
    }

    /// The worker's object for `names` (nil for none): the one its clients named alike hold.
    /// Called when a client names itself, not per request.
    final func redisNames(_ names: RedisNames) -> SharedRedisNames? {
        if names.isEmpty { return nil }
        if let shared = sharedNames[names] { return shared }
        let made = SharedRedisNames(names)
        if sharedNames.count < Self.maxSharedNames { sharedNames[names] = made }
        return made
    }

    /// Drops the names no client holds (only this table refers to them). Once a second.
    final func sweepRedisNames() {
        guard !sharedNames.isEmpty else { return }
        var unused: [RedisNames] = []
        var index = sharedNames.values.startIndex
        while index != sharedNames.values.endIndex {
            if isKnownUniquelyReferenced(&sharedNames.values[index]) { unused.append(sharedNames.keys[index]) }
            sharedNames.values.formIndex(after: &index)
        }
        for names in unused { sharedNames[names] = nil }
    }
}
