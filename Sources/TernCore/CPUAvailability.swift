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

    /// The CPUs of a list such as `0-3,8` (nil when it is not such a list or names more than
    /// 65,536 CPUs).
    public static func members(cpuList: Substring) -> [Int]? {
        guard let total = count(cpuList: cpuList), total <= 1 << 16 else { return nil }
        var result: [Int] = []
        result.reserveCapacity(total)
        for part in cpuList.trimmingWhitespace().split(separator: ",") {
            let bounds = part.split(separator: "-")
            guard let low = Int(bounds[0]), let high = Int(bounds[bounds.count - 1]) else { return nil }
            result.append(contentsOf: low...high)
        }
        return result
    }

    /// The CPUs of `Cpus_allowed_list:` in the text of /proc/self/status.
    public static func allowedCPUs(procStatus: String) -> [Int]? {
        for line in procStatus.split(separator: "\n") where line.hasPrefix("Cpus_allowed_list:") {
            return members(cpuList: line.dropFirst("Cpus_allowed_list:".count))
        }
        return nil
    }

    /// Idle and total time of some CPUs, in clock ticks since boot, from /proc/stat.
    public struct Times: Equatable, Sendable {
        public var idle: UInt64
        public var total: UInt64
        public var cpus: Int

        public init(idle: UInt64, total: UInt64, cpus: Int) {
            self.idle = idle
            self.total = total
            self.cpus = cpus
        }
    }

    /// The `cpuN` lines of /proc/stat summed over `cpus` (every CPU listed when nil). Idle is
    /// `idle` + `iowait` (a CPU waiting for I/O runs anything runnable); total is every field up to
    /// `steal` (`guest` time is already counted in `user`). Nil when no such CPU is listed.
    public static func times(procStat: String, cpus: Set<Int>?) -> Times? {
        var sum = Times(idle: 0, total: 0, cpus: 0)
        for line in procStat.split(separator: "\n") where line.hasPrefix("cpu") {
            let fields = line.split(separator: " ")
            guard fields.count >= 5, let cpu = Int(fields[0].dropFirst(3)) else { continue }
            if let cpus, !cpus.contains(cpu) { continue }
            var values: [UInt64] = []
            for field in fields.dropFirst().prefix(8) {
                guard let value = UInt64(field) else { break }
                values.append(value)
            }
            guard values.count >= 4 else { continue }
            sum.idle &+= values[3] &+ (values.count > 4 ? values[4] : 0)
            sum.total &+= values.reduce(0, &+)
            sum.cpus += 1
        }
        return sum.cpus > 0 ? sum : nil
    }

    /// Idle CPUs between two readings of the same CPUs: the idle share of the time that passed,
    /// times the number of CPUs (2 CPUs, a quarter of their time idle: 0.5). Nil when no time
    /// passed or the CPUs counted changed (one went offline). The kernel's iowait count may go
    /// down: idle time that shrank counts as none.
    public static func idleCPUs(from earlier: Times, to later: Times) -> Double? {
        guard earlier.cpus == later.cpus, later.total > earlier.total else { return nil }
        let idle = later.idle >= earlier.idle ? Double(later.idle - earlier.idle) : 0
        let total = Double(later.total - earlier.total)
        return min(idle / total, 1) * Double(later.cpus)
    }

    /// cgroup v2 `cpu.stat`: the `usage_usec` line, CPU time used by the cgroup's processes.
    public static func usageMicroseconds(cpuStat: String) -> UInt64? {
        for line in cpuStat.split(separator: "\n") where line.hasPrefix("usage_usec ") {
            return UInt64(line.dropFirst("usage_usec ".count).trimmingWhitespace())
        }
        return nil
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
