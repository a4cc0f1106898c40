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
}
