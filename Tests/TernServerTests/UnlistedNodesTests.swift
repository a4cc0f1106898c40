import XCTest
@testable import TernServer

final class UnlistedNodesTests: XCTestCase {
    /// A wanted node is given up once `UnlistedNodes.limit` answers in a row, over at least
    /// `minimumAge` seconds, leave it out; an answer that lists it starts again; pools count
    /// apart.
    func testGivenUpAfterAnswersInARowLeaveItOut() {
        var nodes = UnlistedNodes()
        XCTAssertEqual(UnlistedNodes.limit, 3)
        XCTAssertEqual(UnlistedNodes.minimumAge, 3)
        XCTAssertEqual(nodes.record(["gone:1", "late:2"], pool: "a", now: 100), [])
        XCTAssertEqual(nodes.record(["gone:1", "late:2"], pool: "a", now: 100.2), [])
        XCTAssertEqual(nodes.record(["gone:1"], pool: "a", now: 100.4), [], "three answers in 0.4 s: a new node gets time")
        XCTAssertEqual(nodes.record(["gone:1"], pool: "a", now: 103), ["gone:1"], "late:2 was listed in the third answer")
        XCTAssertEqual(nodes.record(["late:2"], pool: "a", now: 103.2), [])
        XCTAssertEqual(nodes.record(["late:2"], pool: "b", now: 103.2), [], "another pool counts apart")
        XCTAssertEqual(nodes.record(["late:2"], pool: "a", now: 104), [])
        XCTAssertEqual(nodes.record(["late:2", "gone:1"], pool: "a", now: 106.2), ["late:2"], "gone:1, wanted again, starts at one")
        XCTAssertEqual(nodes.record(["gone:1"], pool: "a", now: 106.4), [])
        XCTAssertEqual(nodes.record(["gone:1"], pool: "a", now: 106.6), [], "three answers, too soon")
        XCTAssertEqual(nodes.record(["gone:1"], pool: "a", now: 109.2), ["gone:1"])
        XCTAssertEqual(nodes.record([], pool: "a", now: 120), [])
    }
}
