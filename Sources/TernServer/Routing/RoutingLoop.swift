#if canImport(Glibc)
import Glibc
#endif
import Logging

/// What pools and servers reach of their worker, above what backend connections do
/// (`BackendLoop`): its identifier, its random numbers, whether it takes new clients, and the
/// pools and servers a reload dropped, kept until idle (swept by the worker). `Worker` is the
/// only final subclass (through `FrontendLoop`).
///
/// Every member the request path calls is final. The two overridable methods are the only
/// calls from Routing up to the worker, both off the request path: a client accepted on a
/// listener (once per connection), and a blocking command that waited for a dedicated
/// connection (once per such wait).
class RoutingLoop: BackendLoop {
    final let identifier: Int
    /// Whether this worker takes new clients (watches the listeners); follows
    /// `workerSet.active`, checked once a second by the worker. Loop-confined.
    final var takesClients: Bool
    private final var randomState: UInt64
    /// Servers dropped by a reload, closed once their in-flight requests have finished; each
    /// keeps its pool alive until then (back-references are unowned(unsafe)).
    final var retiringServers: [(server: ServerRuntime, pool: PoolRuntime)] = []
    /// Pools dropped by a reload, kept while clients still use them.
    final var retiredPools: [PoolRuntime] = []
    /// Pools whose placement an ejection or a server's return changed in this loop pass; the
    /// worker's flush has their subscribers follow (`Worker.followChangedPlacements`).
    final var placementsChanged: [PoolRuntime] = []

    init(loop: OpaquePointer, logger: Logger, identifier: Int, takesClients: Bool) {
        self.identifier = identifier
        self.takesClients = takesClients
        self.randomState = UInt64(truncatingIfNeeded: identifier &+ 1) &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(UInt(bitPattern: time(nil)))
        super.init(loop: loop, logger: logger)
    }

    final func nextRandom() -> UInt32 {
        randomState ^= randomState << 13
        randomState ^= randomState >> 7
        randomState ^= randomState << 17
        return UInt32(truncatingIfNeeded: randomState >> 16)
    }

    /// A pool that left service without clients of its own (a warm-up's old pool removed by a
    /// reload): kept until the requests on its servers have finished.
    final func retireWhenIdle(_ pool: PoolRuntime) {
        retiredPools.append(pool)
    }

    /// `pool`'s placement changed outside a reload (`PoolRuntime.eject`, `reinstate`).
    final func placementChanged(_ pool: PoolRuntime) {
        if !placementsChanged.contains(where: { $0 === pool }) { placementsChanged.append(pool) }
    }

    final func retireWhenIdle(_ server: ServerRuntime) {
        server.endSessions()
        if server.isIdle {
            server.closeConnections()
        } else {
            retiringServers.append((server, server.poolRuntime))
        }
    }

    // MARK: Up to the worker (overridden by Worker)

    /// A client accepted on `pool`'s listener (counted in the pool's open clients): served
    /// here or handed to a less loaded worker.
    func accepted(descriptor: Int32, pool: PoolRuntime) { preconditionFailure("overridden by Worker") }

    /// A dedicated connection of `server` came back and `waiter` was waiting for one: its
    /// client runs it now.
    func runWaiting(_ waiter: DedicatedWaiter, client: ReplyOwner, on server: ServerRuntime) { preconditionFailure("overridden by Worker") }
}
