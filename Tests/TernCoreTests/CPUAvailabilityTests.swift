import XCTest
@testable import TernCore

final class CPUAvailabilityTests: XCTestCase {
    func testCPUListsAreCounted() {
        XCTAssertEqual(CPUAvailability.count(cpuList: "0-3,8,10-11\n"), 7)
        XCTAssertEqual(CPUAvailability.count(cpuList: "\t0"), 1)
        XCTAssertEqual(CPUAvailability.count(cpuList: "0-63"), 64)
        XCTAssertNil(CPUAvailability.count(cpuList: ""))
        XCTAssertNil(CPUAvailability.count(cpuList: "3-1"))
        XCTAssertNil(CPUAvailability.count(cpuList: "a-b"))
        XCTAssertNil(CPUAvailability.count(cpuList: "1--2"))
        let status = "Name:\ttern\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1\nMems_allowed_list:\t0\n"
        XCTAssertEqual(CPUAvailability.affinity(procStatus: status), 2)
        XCTAssertNil(CPUAvailability.affinity(procStatus: "Name:\ttern\n"))
    }

    func testQuotas() {
        XCTAssertNil(CPUAvailability.quota(cpuMax: "max 100000\n"))
        XCTAssertEqual(CPUAvailability.quota(cpuMax: "150000 100000\n"), 1.5)
        XCTAssertEqual(CPUAvailability.quota(cpuMax: "50000 100000"), 0.5)
        XCTAssertNil(CPUAvailability.quota(cpuMax: "garbage"))
        XCTAssertNil(CPUAvailability.quota(cfsQuota: "-1\n", cfsPeriod: "100000\n"))
        XCTAssertEqual(CPUAvailability.quota(cfsQuota: "200000\n", cfsPeriod: "100000\n"), 2)
    }

    func testCgroupPaths() {
        let v2 = "0::/kubepods/burstable/pod1/tern\n"
        XCTAssertEqual(CPUAvailability.cgroupPath(procCgroup: v2), "/kubepods/burstable/pod1/tern")
        XCTAssertNil(CPUAvailability.cgroupPath(procCgroup: v2, controller: "cpu"))
        let v1 = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n"
        XCTAssertEqual(CPUAvailability.cgroupPath(procCgroup: v1, controller: "cpu"), "/docker/abc")
        XCTAssertNil(CPUAvailability.cgroupPath(procCgroup: v1), "no v2 entry")
        XCTAssertEqual(CPUAvailability.ancestors(of: "/a/b/c"), ["/a/b/c", "/a/b", "/a", "/"])
        XCTAssertEqual(CPUAvailability.ancestors(of: "/"), ["/"])
    }

    func testTheDefaultIsTheSmallestLimit() {
        XCTAssertEqual(CPUAvailability.decide(online: 2, affinity: 2, quota: nil).workers, 2)
        XCTAssertEqual(CPUAvailability.decide(online: 64, affinity: nil, quota: 1.5).workers, 2, "a quota is rounded up")
        XCTAssertEqual(CPUAvailability.decide(online: 64, affinity: nil, quota: 0.05).workers, 1, "never fewer than one")
        XCTAssertEqual(CPUAvailability.decide(online: 64, affinity: 4, quota: 8).workers, 4)
        XCTAssertEqual(CPUAvailability.decide(online: 64, affinity: 16, quota: 2).workers, 2)
        XCTAssertEqual(CPUAvailability.decide(online: 8, affinity: 16, quota: 32).workers, 8, "limits above the online count change nothing")
        XCTAssertEqual(CPUAvailability.decide(online: 64, affinity: nil, quota: 1.5).reason, "cgroup CPU quota of 1.5 CPUs (64 online)")
        XCTAssertEqual(CPUAvailability.decide(online: 64, affinity: 4, quota: nil).reason, "the affinity mask allows 4 of 64 online CPUs")
    }

    /// Idle CPUs from two readings of /proc/stat, over the CPUs of the affinity mask; the
    /// cgroup v2 usage line.
    func testIdleCPUs() {
        XCTAssertEqual(CPUAvailability.members(cpuList: "0-2,5\n"), [0, 1, 2, 5])
        XCTAssertNil(CPUAvailability.members(cpuList: "0-70000"))
        let status = "Name:\ttern\nCpus_allowed_list:\t1,3\n"
        XCTAssertEqual(CPUAvailability.allowedCPUs(procStatus: status), [1, 3])
        let first = """
        cpu  400 0 200 1000 0 0 0 0 0 0
        cpu0 100 0 50 250 0 0 0 0 0 0
        cpu1 100 0 50 250 0 0 0 0 0 0
        cpu2 100 0 50 250 0 0 0 0 0 0
        cpu3 100 0 50 250 0 0 0 0 0 0
        intr 1 2 3
        ctxt 99
        """
        // 100 ticks pass on each CPU: cpu0 and cpu2 all busy, cpu1 all idle, cpu3 half idle
        // (40 idle + 10 iowait).
        let second = """
        cpu  700 0 300 1160 10 0 0 0 0 0
        cpu0 200 0 50 250 0 0 0 0 0 0
        cpu1 100 0 50 350 0 0 0 0 0 0
        cpu2 150 0 100 250 0 0 0 0 0 0
        cpu3 120 0 80 290 10 0 0 0 0 0
        intr 1 2 3
        """
        let all0 = CPUAvailability.times(procStat: first, cpus: nil)!, all1 = CPUAvailability.times(procStat: second, cpus: nil)!
        XCTAssertEqual(all0.cpus, 4)
        XCTAssertEqual(CPUAvailability.idleCPUs(from: all0, to: all1)!, 1.5, accuracy: 1e-9)
        let mask: Set<Int> = [1, 3]
        let some0 = CPUAvailability.times(procStat: first, cpus: mask)!, some1 = CPUAvailability.times(procStat: second, cpus: mask)!
        XCTAssertEqual(CPUAvailability.idleCPUs(from: some0, to: some1)!, 1.5, accuracy: 1e-9)
        let busy0 = CPUAvailability.times(procStat: first, cpus: [0, 2])!, busy1 = CPUAvailability.times(procStat: second, cpus: [0, 2])!
        XCTAssertEqual(CPUAvailability.idleCPUs(from: busy0, to: busy1)!, 0, accuracy: 1e-9)
        XCTAssertNil(CPUAvailability.idleCPUs(from: all1, to: all1), "no time passed")
        XCTAssertNil(CPUAvailability.idleCPUs(from: all0, to: some1), "other CPUs")
        XCTAssertNil(CPUAvailability.times(procStat: first, cpus: [9]))
        XCTAssertEqual(CPUAvailability.usageMicroseconds(cpuStat: "usage_usec 123456\nuser_usec 100000\n"), 123456)
        XCTAssertNil(CPUAvailability.usageMicroseconds(cpuStat: "nr_periods 0\n"))
    }
}
