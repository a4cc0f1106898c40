#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import TernCore

/// One worker's load as the other threads see it: written by the worker once a second (its
/// sweep timer), read by the main thread (scaling) and the admin thread (/metrics).
final class WorkerLoad: Sendable {
    /// CPU time of the worker thread over wall-clock time in the last measured second, in
    /// millionths (0…1,000,000; a little over is possible from clock granularity).
    let utilisationPPM = Atomic<Int>(0)
    /// Idle clients this worker gave to another (elastic workers; `Worker.rebalanceClients`).
    let movedOut = Atomic<Int>(0)
}

/// The workers' loads and how many of them take new clients. Workers `0..<active` take new
/// clients (they watch the listening sockets, and the accepting worker hands each client to the
/// least loaded of them); the others keep the clients they have and take no new ones.
final class WorkerSet: Sendable {
    let loads: [WorkerLoad]
    /// Workers taking new clients (a prefix of the worker identifiers). Written by the main
    /// thread (`WorkerScaler`), read by workers on accept and once a second.
    let active: Atomic<Int>
    /// False with an explicit `--threads N`: all N take clients and nothing is scaled.
    let isElastic: Bool

    /// Elastic workers: utilisation (millionths) at which a worker gives idle clients to a less
    /// loaded active worker — the activation threshold.
    let busyPPM: Int

    /// Elastic workers: idle CPUs among those Tern may use in the last second, in millionths
    /// (-1: not measured), as the main thread's scaler saw them. For /metrics.
    let idleCPUsPPM = Atomic<Int>(-1)
    /// Elastic workers: seconds in which one more worker would have been activated but too few
    /// CPUs were idle. For /metrics.
    let heldSeconds = Atomic<Int>(0)

    init(workers: Int, initiallyActive: Int, elastic: Bool, busy: Double = 0.75) {
        busyPPM = Int(busy * 1_000_000)
        loads = (0..<max(1, workers)).map { _ in WorkerLoad() }
        active = Atomic(min(max(1, initiallyActive), max(1, workers)))
        isElastic = elastic
    }

    var activeCount: Int { active.load(ordering: .relaxed) }

    func utilisation(_ worker: Int) -> Double {
        Double(loads[worker].utilisationPPM.load(ordering: .relaxed)) / 1_000_000
    }
}

/// The main thread's side of elastic workers: once a second, the policy's answer applied.
/// Confined to the main thread.
final class WorkerScaler {
    let set: WorkerSet
    private var policy: WorkerScalingPolicy

    init(set: WorkerSet, policy: WorkerScalingPolicy) {
        self.set = set
        self.policy = policy
    }

    /// When the held line was last logged (monotonic seconds).
    private var heldLoggedAt = -Double.infinity

    /// Returns a line to log when the active count changed, or when a worker would have been
    /// activated but too few CPUs were idle (at the start of such a stretch of seconds, at most
    /// once a minute). `idleCPUs`: idle CPUs Tern may use in the last second (nil: unknown).
    func tick(idleCPUs: Double?, now: Double) -> String? {
        guard set.isElastic else { return nil }
        set.idleCPUsPPM.store(idleCPUs.map { Int($0 * 1_000_000) } ?? -1, ordering: .relaxed)
        let figures = set.loads.indices.map { set.utilisation($0) }
        let before = set.activeCount
        let wasHeld = policy.heldForIdleCPUs
        let after = policy.decide(active: before, utilisation: figures, idleCPUs: idleCPUs)
        let shown = figures.prefix(before).map { String(Int(($0 * 100).rounded())) + " %" }.joined(separator: ", ")
        if let compared = policy.heldWithIdleCPUs {
            set.heldSeconds.add(1, ordering: .relaxed)
            guard !wasHeld, now - heldLoggedAt >= 60 else { return nil }
            heldLoggedAt = now
            return "worker \(before) takes no new clients yet: the active ones are busy (\(shown)) but only \(Self.cpus(compared)) CPUs were idle (--activate-idle \(Self.cpus(policy.idleNeeded))); another loop would only take CPU from the processes beside Tern"
        }
        guard after != before else { return nil }
        set.active.store(after, ordering: .relaxed)
        if after > before {
            return "worker \(after - 1) now takes new clients (\(after) of \(set.loads.count) active; busy: \(shown))"
        }
        return "worker \(after) takes no new clients, keeps its own (\(after) of \(set.loads.count) active; busy: \(shown))"
    }
}

extension WorkerScaler {
    /// A CPU count for the log: two decimals at most (0.15, 0.5, 2).
    static func cpus(_ value: Double) -> String {
        let hundredths = Int((value * 100).rounded())
        if hundredths % 100 == 0 { return String(hundredths / 100) }
        let fraction = hundredths % 100
        return "\(hundredths / 100)." + (fraction % 10 == 0 ? String(fraction / 10) : (fraction < 10 ? "0" : "") + String(fraction))
    }
}

/// CPU time of the calling thread and the monotonic clock, in seconds.
enum ThreadClock {
    static func cpuSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    static func monotonicSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }
}
