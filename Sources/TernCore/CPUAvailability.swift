/// How many CPUs the process may actually use, for the default worker count.
///
/// A sidecar on a 64-core node with a CPU limit of one core, or a process started under
/// `taskset -c 0`, should not start 64 worker loops (each with its own backend connections).
/// The default is the online CPU count, lowered to the CPUs in the process's affinity mask and
/// to a cgroup CPU quota rounded up. The parsing here is pure; the caller reads the files
/// (`/proc/self/status`, `/proc/self/cgroup`, the cgroup's `cpu.max` or `cpu.cfs_quota_us`).
public enum CPUAvailability {
    /// Why the default worker count is what it is (for the startup log).
    public struct Decision: Equatable, Sendable {
        public var workers: Int
        public var reason: String
    }

    public static func decide(online: Int, affinity: Int?, quota: Double?) -> Decision {
        var workers = max(1, online)
        var reason = "\(online) online CPUs"
        if let affinity, affinity >= 1, affinity < workers {
            workers = affinity
            reason = "the affinity mask allows \(affinity) of \(online) online CPUs"
        }
        if let quota, quota > 0 {
            var limit = Int(quota)
            if Double(limit) < quota { limit += 1 }
            limit = max(1, limit)
            if limit < workers {
                workers = limit
                reason = "cgroup CPU quota of \(quota) CPUs (\(online) online)"
            }
        }
        return Decision(workers: workers, reason: reason)
    }

    /// The number of CPUs in a list such as `0-3,8,10-11` (`Cpus_allowed_list` in
    /// /proc/self/status, `cpuset.cpus.effective`). Nil when it is not such a list.
    public static func count(cpuList: Substring) -> Int? {
        let text = cpuList.trimmingWhitespace()
        guard !text.isEmpty else { return nil }
        var total = 0
        for part in text.split(separator: ",") {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard bounds.count == 1 || bounds.count == 2,
                  let low = Int(bounds[0]), let high = Int(bounds[bounds.count - 1]),
                  low >= 0, high >= low, high - low < 1 << 20 else { return nil }
            total += high - low + 1
        }
        return total
    }

    /// `Cpus_allowed_list:` from the text of /proc/self/status.
    public static func affinity(procStatus: String) -> Int? {
        for line in procStatus.split(separator: "\n") where line.hasPrefix("Cpus_allowed_list:") {
            return count(cpuList: line.dropFirst("Cpus_allowed_list:".count))
        }
        return nil
    }

    /// cgroup v2 `cpu.max`: `max 100000` (no limit) or `<quota> <period>` in microseconds.
    public static func quota(cpuMax: String) -> Double? {
        let fields = cpuMax.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard fields.count == 2, let quota = Double(fields[0]), let period = Double(fields[1]), quota > 0, period > 0 else { return nil }
        return quota / period
    }

    /// cgroup v1 `cpu.cfs_quota_us` (-1: no limit) and `cpu.cfs_period_us`.
    public static func quota(cfsQuota: String, cfsPeriod: String) -> Double? {
        guard let quota = Double(Substring(cfsQuota).trimmingWhitespace()),
              let period = Double(Substring(cfsPeriod).trimmingWhitespace()), quota > 0, period > 0 else { return nil }
        return quota / period
    }

    /// The process's cgroup path from /proc/self/cgroup: the v2 entry (`0::/path`) or, with
    /// `controller`, the v1 hierarchy that lists it (`4:cpu,cpuacct:/path`).
    public static func cgroupPath(procCgroup: String, controller: String? = nil) -> String? {
        for line in procCgroup.split(separator: "\n") {
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3 else { continue }
            if let controller {
                if fields[1].split(separator: ",").contains(where: { $0 == controller }) { return String(fields[2]) }
            } else if fields[0] == "0", fields[1].isEmpty {
                return String(fields[2])
            }
        }
        return nil
    }

    /// The directories from a cgroup path up to the root, the path's own first: a quota on any
    /// ancestor limits the process too.
    public static func ancestors(of path: String) -> [String] {
        var parts = path.split(separator: "/").map(String.init)
        var result: [String] = []
        while true {
            result.append("/" + parts.joined(separator: "/"))
            if parts.isEmpty { break }
            parts.removeLast()
        }
        return result
    }
}

fileprivate extension Substring {
    func trimmingWhitespace() -> Substring {
        var text = self
        while let first = text.first, first == " " || first == "\t" || first == "\n" { text = text.dropFirst() }
        while let last = text.last, last == " " || last == "\t" || last == "\n" { text = text.dropLast() }
        return text
    }
}
