import Synchronization

/// The mailbox between a discovery thread (cluster discovery, the Sentinel watcher) and the
/// rest of Tern, per pool: workers request a refresh, the thread counts its rounds, says why
/// the last one failed and leaves what it found (a slot map, master addresses) for the main
/// thread to apply. Kept across reloads with the pool's `PoolShared`.
///
/// `@unchecked Sendable` (a class with subclasses cannot be checked, and the subclasses restate
/// it): every stored property here and in `ClusterState` and `SentinelState` is a `let` of an
/// atomic, a `Locked` or a constant.
class DiscoveryMailbox<Found: Sendable>: @unchecked Sendable {
    let refreshRequested = Atomic<Bool>(false)
    let refreshes = Atomic<Int>(0)
    let refreshFailures = Atomic<Int>(0)
    /// What the thread found that differs from the last find: the main thread takes it.
    let discovered = Locked<Found?>(nil)
    /// Why the last round failed ("" after a success).
    let lastError = Locked<String>("")

    @inline(__always) final func requestRefresh() { refreshRequested.store(true, ordering: .relaxed) }
}

/// When a discovery thread (cluster discovery, the Sentinel watcher) asks again for each pool.
/// Confined to that thread.
///
/// A pool is due `period` seconds after its last attempt, or `minimumInterval` after it when a
/// refresh was requested (a worker saw MOVED or a node fail; a sentinel announced a switch):
/// requests that come in bursts are answered by one refresh.
struct RefreshClock {
    /// Least time between two refreshes that were requested.
    static let minimumInterval = 0.2
    private var lastAttempt: [String: Double] = [:]

    /// Whether `pool` is due at `now` (`period`: seconds when nothing asked). A due pool's
    /// request is cleared and its attempt stamped, so the caller asks now.
    mutating func isDue(_ pool: String, now: Double, requested: borrowing Atomic<Bool>, period: Double) -> Bool {
        let asked = requested.load(ordering: .relaxed)
        guard now - (lastAttempt[pool] ?? -.infinity) >= (asked ? Self.minimumInterval : period) else { return false }
        requested.store(false, ordering: .relaxed)
        lastAttempt[pool] = now
        return true
    }

    /// `pool` is asked at the next pass, whatever its last attempt.
    mutating func askSoon(_ pool: String) { lastAttempt[pool] = nil }
}
