/// How many worker loops take new clients, decided once a second from each worker's utilisation.
///
/// Tern starts `maximum` worker threads (the CPUs it may use, or `--max-threads`) but, by default,
/// lets only the first `minimum` (1) take new clients. On a box whose cores are shared with the
/// application and the backends (a sidecar), one loop is the cheapest way to serve a client: a
/// second loop on the same cores sleeps and wakes more per request and gives each backend
/// connection smaller batches. Once the loops that take clients are busy, a further one is
/// activated, so a box with dedicated cores still uses every one of them.
///
/// Utilisation is a worker thread's CPU time over wall-clock time in the last second (0…1; see
/// `Worker.measureUtilisation`). CPU time rather than "time not waiting in epoll": a thread that
/// is runnable but preempted because the cores are busy with other processes counts as busy by
/// the wall clock, and that is exactly when one more loop cannot help, since no core is free.
///
/// CPU time alone does not tell a preempted loop from a busy one on a box whose other processes
/// leave some CPU to it: a worker on two cores shared with the load and the backends can use 0.8
/// of a core while the cores have no idle time left, and a second loop there only takes CPU from
/// the others. So activation also needs `idleNeeded` CPUs idle in the last second, among those
/// Tern may use and within its cgroup's CPU quota (the caller measures them; nil: unknown, not
/// checked).
///
/// - One more worker is activated when the active workers' mean utilisation reached
///   `threshold` and at least `idleNeeded` CPUs were idle, both in each of the last two
///   seconds, at most every `settleSeconds` (the new loop's clients must show in the figures
///   before another is added). Two seconds, because the workers measure their seconds and the
///   caller its idle time on clocks that are not aligned: at the edges of a load on full cores,
///   one second can pair a worker's busy second with a half-idle one.
/// - The highest active worker is deactivated (it keeps its clients, it only stops taking new
///   ones) when, for `calmSeconds` in a row, the active workers' summed utilisation would fit
///   into one worker fewer at half the threshold.
///
/// Pure: the caller feeds it the figures and applies the answer.
public struct WorkerScalingPolicy: Sendable, Equatable {
    public var minimum: Int
    public var maximum: Int
    public var threshold: Double
    /// Idle CPUs needed to activate one more worker (0: not checked).
    public var idleNeeded: Double
    public var settleSeconds = 2
    public var calmSeconds = 10
    /// Ticks since the active count last changed, and calm ticks in a row.
    public private(set) var sinceChange = 0
    public private(set) var calm = 0
    /// The last decision would have activated a worker but too few CPUs were idle: the lower
    /// idle figure of the two seconds, the one compared (nil: not held).
    public private(set) var heldWithIdleCPUs: Double?
    public var heldForIdleCPUs: Bool { heldWithIdleCPUs != nil }
    /// The previous second: whether the active workers were busy, and the idle CPUs.
    private var wasBusy = false
    private var previousIdle: Double?

    public init(minimum: Int, maximum: Int, threshold: Double, idleNeeded: Double = 0) {
        self.maximum = max(1, maximum)
        self.minimum = min(max(1, minimum), self.maximum)
        self.threshold = threshold
        self.idleNeeded = idleNeeded
    }

    /// The active count after one more second with `utilisation` (one figure per worker, all of
    /// them; only the first `active` are considered) and `idleCPUs` idle in that second.
    public mutating func decide(active: Int, utilisation: [Double], idleCPUs: Double? = nil) -> Int {
        let active = min(max(active, minimum), maximum)
        sinceChange += 1
        heldWithIdleCPUs = nil
        let figures = utilisation.prefix(active)
        let total = figures.reduce(0, +)
        let mean = figures.isEmpty ? 0 : total / Double(figures.count)
        let busy = mean >= threshold, busyBefore = wasBusy
        wasBusy = busy
        var lowestIdle = idleCPUs
        if let previousIdle { lowestIdle = min(lowestIdle ?? previousIdle, previousIdle) }
        previousIdle = idleCPUs
        if active < maximum, busy, busyBefore, sinceChange >= settleSeconds {
            if let lowestIdle, lowestIdle < idleNeeded {
                heldWithIdleCPUs = lowestIdle
                calm = 0
                return active
            }
            sinceChange = 0
            calm = 0
            return active + 1
        }
        if active > minimum, total <= Double(active - 1) * threshold / 2 {
            calm += 1
            if calm >= calmSeconds {
                sinceChange = 0
                calm = 0
                return active - 1
            }
        } else {
            calm = 0
        }
        return active
    }
}
