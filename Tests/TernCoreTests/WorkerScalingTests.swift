import XCTest
@testable import TernCore

final class WorkerScalingTests: XCTestCase {
    /// One worker at 0.5 (a sidecar on shared cores: the CPU it gets is all it can use) stays
    /// alone; at 0.8 a second is added, then a third two seconds later if the mean stays high,
    /// never more than the maximum.
    func testActivatesOnlyWhileTheActiveOnesAreBusy() {
        var policy = WorkerScalingPolicy(minimum: 1, maximum: 3, threshold: 0.75)
        var active = 1
        for _ in 0..<30 { active = policy.decide(active: active, utilisation: [0.5, 0, 0]) }
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
}
