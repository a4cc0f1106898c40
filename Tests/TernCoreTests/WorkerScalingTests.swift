import XCTest
@testable import TernCore

final class WorkerScalingTests: XCTestCase {
    /// One worker at 0.5 (a sidecar on shared cores: the CPU it gets is all it can use) stays
    /// alone; after two seconds at 0.8 a second is added (one busy second among calm ones is
    /// not enough), then a third two seconds later if the mean stays high, never more than the
    /// maximum.
    func testActivatesOnlyWhileTheActiveOnesAreBusy() {
        var policy = WorkerScalingPolicy(minimum: 1, maximum: 3, threshold: 0.75)
        var active = 1
        for _ in 0..<30 { active = policy.decide(active: active, utilisation: [0.5, 0, 0]) }
        XCTAssertEqual(active, 1)
        active = policy.decide(active: active, utilisation: [0.8, 0, 0])
        active = policy.decide(active: active, utilisation: [0.5, 0, 0])
        active = policy.decide(active: active, utilisation: [0.8, 0, 0])
        XCTAssertEqual(active, 1)
        active = policy.decide(active: active, utilisation: [0.8, 0, 0])
        XCTAssertEqual(active, 2)
        // The new worker's clients have not shown yet: no third at once.
        active = policy.decide(active: active, utilisation: [0.9, 0.7, 0])
        XCTAssertEqual(active, 2)
        active = policy.decide(active: active, utilisation: [0.9, 0.7, 0])
        XCTAssertEqual(active, 3)
        for _ in 0..<5 { active = policy.decide(active: active, utilisation: [1, 1, 1]) }
        XCTAssertEqual(active, 3)
    }

    /// A worker stops taking clients after ten calm seconds in a row (the total fits in one fewer
    /// at half the threshold), never below the minimum; a busy second restarts the count.
    func testDeactivatesAfterTenCalmSeconds() {
        var policy = WorkerScalingPolicy(minimum: 1, maximum: 2, threshold: 0.75)
        var active = 2
        for _ in 0..<9 { active = policy.decide(active: active, utilisation: [0.2, 0.1]) }
        XCTAssertEqual(active, 2)
        active = policy.decide(active: active, utilisation: [0.5, 0.1])
        XCTAssertEqual(active, 2)
        for _ in 0..<9 { active = policy.decide(active: active, utilisation: [0.2, 0.1]) }
        XCTAssertEqual(active, 2)
        active = policy.decide(active: active, utilisation: [0.2, 0.1])
        XCTAssertEqual(active, 1)
        for _ in 0..<30 { active = policy.decide(active: active, utilisation: [0, 0]) }
        XCTAssertEqual(active, 1)
        var pinned = WorkerScalingPolicy(minimum: 2, maximum: 2, threshold: 0.75)
        XCTAssertEqual(pinned.decide(active: 1, utilisation: [0, 0]), 2)
    }

    /// Busy workers on cores with no idle time (the CPU a sidecar's loop gets is all there is)
    /// get no help: with fewer idle CPUs than needed, nothing is activated, however long; the
    /// lower idle figure of two seconds counts, and two busy seconds with enough idle CPUs
    /// activate one. Unknown idle time is not checked, and 0 needed never holds.
    func testActivationWaitsForIdleCPUs() {
        var policy = WorkerScalingPolicy(minimum: 1, maximum: 2, threshold: 0.75, idleNeeded: 0.5)
        // The first second only settles (at most one activation every two seconds).
        var active = policy.decide(active: 1, utilisation: [0.9, 0], idleCPUs: 0.2)
        for _ in 0..<20 {
            active = policy.decide(active: active, utilisation: [0.9, 0], idleCPUs: 0.2)
            XCTAssertTrue(policy.heldForIdleCPUs)
        }
        XCTAssertEqual(active, 1)
        // One idle second after busy, idle-less ones: the lower of the two counts.
        active = policy.decide(active: active, utilisation: [0.9, 0], idleCPUs: 1.5)
        XCTAssertEqual(active, 1)
        XCTAssertEqual(policy.heldWithIdleCPUs, 0.2, "the lower of the two seconds is compared")
        active = policy.decide(active: active, utilisation: [0.5, 0], idleCPUs: 0.1)
        XCTAssertFalse(policy.heldForIdleCPUs, "not busy: nothing held")
        // Busy and idle enough, but the second before was not: a load's edge is not trusted.
        active = policy.decide(active: active, utilisation: [0.9, 0], idleCPUs: 0.6)
        XCTAssertEqual(active, 1)
        active = policy.decide(active: active, utilisation: [0.9, 0], idleCPUs: 0.6)
        XCTAssertEqual(active, 2)
        XCTAssertFalse(policy.heldForIdleCPUs)

        var unknown = WorkerScalingPolicy(minimum: 1, maximum: 2, threshold: 0.75, idleNeeded: 0.5)
        _ = unknown.decide(active: 1, utilisation: [0.9, 0])
        XCTAssertEqual(unknown.decide(active: 1, utilisation: [0.9, 0], idleCPUs: nil), 2)
        var unchecked = WorkerScalingPolicy(minimum: 1, maximum: 2, threshold: 0.75, idleNeeded: 0)
        _ = unchecked.decide(active: 1, utilisation: [0.9, 0], idleCPUs: 0)
        XCTAssertEqual(unchecked.decide(active: 1, utilisation: [0.9, 0], idleCPUs: 0), 2)
    }
}
