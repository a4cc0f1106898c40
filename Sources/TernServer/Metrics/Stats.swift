#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import TernCore

/// A counter written by one worker thread and read by the control thread: a relaxed load and
/// store (plain moves on x86), never a lock or a locked instruction on the request path.
struct WorkerCounter: ~Copyable, Sendable {
    let value = Atomic<Int>(0)

    @inline(__always) func add(_ amount: Int = 1) {
        value.store(value.load(ordering: .relaxed) &+ amount, ordering: .relaxed)
    }
    @inline(__always) func set(_ amount: Int) { value.store(amount, ordering: .relaxed) }
    @inline(__always) func read() -> Int { value.load(ordering: .relaxed) }
}

/// nutcracker's per-pool counters, for one worker.
final class PoolCounters: Sendable {
    let clientEOF = WorkerCounter()
    let clientErrors = WorkerCounter()
    let serverEjects = WorkerCounter()
    let forwardErrors = WorkerCounter()
    let fragments = WorkerCounter()
    /// Requests by class, for /metrics.
    let reads = WorkerCounter()
    let writes = WorkerCounter()
    let other = WorkerCounter()
    let localReplies = WorkerCounter()
    let clientErrorReplies = WorkerCounter()
    /// accept() failures (EMFILE, ENFILE, …), clients refused over `client_connections`, and
    /// clients closed or requests failed over `client_output_limit` / `client_query_limit`.
    let acceptErrors = WorkerCounter()
    let refusedClients = WorkerCounter()
    let overLimit = WorkerCounter()
    /// Redis sessions: transactions run and refused (EXECABORT), WATCHes, blocking commands,
    /// dedicated connections leased.
    let transactions = WorkerCounter()
    let transactionsAborted = WorkerCounter()
    let watches = WorkerCounter()
    let blockingRequests = WorkerCounter()
    let dedicatedLeases = WorkerCounter()
    /// Dedicated connections leased now (a gauge).
    let dedicatedInUse = WorkerCounter()
    /// Pub/sub: clients in subscribed mode now (a gauge), SUBSCRIBE/UNSUBSCRIBE requests sent
    /// to servers, messages delivered.
    let subscribedClients = WorkerCounter()
    /// Clients blocked in a blocking command now (a gauge).
    let blockedClients = WorkerCounter()
    let subscriptionChanges = WorkerCounter()
    let messagesDelivered = WorkerCounter()
    /// Backend round trips slower than `slowlog_log_slower_than` (recorded in the slow log or not).
    let slowRequests = WorkerCounter()
    /// Failed AUTH / HELLO AUTH / memcached authentications.
    let authFailures = WorkerCounter()
    /// TLS pools: client handshakes completed, and failed or timed out.
    let tlsHandshakes = WorkerCounter()
    let tlsHandshakeFailures = WorkerCounter()
    /// Clients of the pool assigned to this worker: raised by whichever worker accepts (it may
    /// hand the client over), lowered by this worker when the client closes, hence a real atomic
    /// add. Read to give each new client to the least loaded worker.
    let clients = Atomic<Int>(0)
}

/// Upper bounds (microseconds) of the backend latency histogram buckets.
let latencyBucketBounds: [Int] = [50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000]

/// nutcracker's per-server counters, for one worker, plus a latency histogram.
final class ServerCounters: Sendable {
    let serverEOF = WorkerCounter()
    let serverErrors = WorkerCounter()
    let serverTimedOut = WorkerCounter()
    let serverConnections = WorkerCounter()
    let serverEjectedAt = WorkerCounter()
    let requests = WorkerCounter()
    let requestBytes = WorkerCounter()
    let responses = WorkerCounter()
    let responseBytes = WorkerCounter()
    let inQueue = WorkerCounter()
    let inQueueBytes = WorkerCounter()
    let outQueue = WorkerCounter()
    let outQueueBytes = WorkerCounter()
    let ejections = WorkerCounter()
    /// Non-cumulative counts per bucket of `latencyBucketBounds`, then +Inf.
    let latencyBuckets: [LatencyBucket] = (0...latencyBucketBounds.count).map { _ in LatencyBucket() }
    let latencySumMicroseconds = WorkerCounter()

    @inline(__always)
    func recordLatency(microseconds: Int) {
        // The per-command table's compare chain: no walk over the global bounds per reply.
        latencyBuckets[CommandStats.bucket(microseconds)].count.add()
        latencySumMicroseconds.add(microseconds)
    }
}

final class LatencyBucket: Sendable {
    let count = WorkerCounter()
}

/// At most one log line a second for a repeating event, saying how many were left out.
/// Loop-confined like its owner.
struct LogThrottle {
    private var lastAt = -Double.infinity
    private var suppressed = 0

    /// nil while within a second of the last line; otherwise how many events were suppressed.
    mutating func admit(now: Double) -> Int? {
        guard now - lastAt >= 1 else {
            suppressed += 1
            return nil
        }
        lastAt = now
        defer { suppressed = 0 }
        return suppressed
    }
}

/// What a warm-up did, summed over workers (relaxed atomics; these move only on warm-up reads,
/// copies and deletes).
final class WarmupCounters: Sendable {
    /// Keys answered by the new pool.
    let newHits = Atomic<Int>(0)
    /// Keys that missed the new pool and were answered by the old one.
    let oldHits = Atomic<Int>(0)
    /// Keys that missed both pools.
    let misses = Atomic<Int>(0)
    /// Old hits copied into the new pool.
    let copies = Atomic<Int>(0)
    /// Old hits not copied: about to expire, already present in the new pool, deleted since
    /// the read was routed (`WarmupInvalidations`), or an error.
    let copiesSkipped = Atomic<Int>(0)
    /// Old-pool requests that failed (answered as misses).
    let oldErrors = Atomic<Int>(0)
    /// Deletes sent to the old pool.
    let oldDeletes = Atomic<Int>(0)

    @inline(__always) static func add(_ counter: borrowing Atomic<Int>, _ value: Int = 1) {
        counter.add(value, ordering: .relaxed)
    }

    /// Lines `name value` for the protocols' stats replies.
    func report() -> [(String, Int)] {
        let new = newHits.load(ordering: .relaxed)
        let old = oldHits.load(ordering: .relaxed)
        let ratio = new + old == 0 ? 0 : new * 10000 / (new + old)
        return [
            ("warmup_new_hits", new), ("warmup_old_hits", old), ("warmup_misses", misses.load(ordering: .relaxed)),
            ("warmup_copies", copies.load(ordering: .relaxed)), ("warmup_copies_skipped", copiesSkipped.load(ordering: .relaxed)),
            ("warmup_old_errors", oldErrors.load(ordering: .relaxed)), ("warmup_old_deletes", oldDeletes.load(ordering: .relaxed)),
            ("warmup_new_hit_ratio_basis_points", ratio),
        ]
    }
}

/// Process-wide facts the protocols report (memcached `stats`).
final class ProcessInfo: Sendable {
    let startTime: Int
    let version: String
    init(version: String) {
        self.version = version
        self.startTime = Int(time(nil))
    }
}
