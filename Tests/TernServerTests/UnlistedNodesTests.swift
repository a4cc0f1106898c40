import XCTest
@testable import TernServer

final class UnlistedNodesTests: XCTestCase {
    /// A wanted node is given up after `UnlistedNodes.limit` answers in a row leave it out;
    /// an answer that lists it starts the count again; pools count apart.
    func testGivenUpAfterAnswersInARowLeaveItOut() {
        var nodes = UnlistedNodes()
        XCTAssertEqual(UnlistedNodes.limit, 3)
        XCTAssertEqual(nodes.record(["gone:1", "late:2"], pool: "a"), [])
        XCTAssertEqual(nodes.record(["gone:1", "late:2"], pool: "a"), [])
        XCTAssertEqual(nodes.record(["gone:1"], pool: "a"), ["gone:1"], "late:2 was listed in the third answer")
        XCTAssertEqual(nodes.record(["late:2"], pool: "a"), [])
        XCTAssertEqual(nodes.record(["late:2"], pool: "b"), [], "another pool counts apart")
        XCTAssertEqual(nodes.record(["late:2"], pool: "a"), [])
        XCTAssertEqual(nodes.record(["late:2", "gone:1"], pool: "a"), ["late:2"], "gone:1, wanted again, starts at one")
        XCTAssertEqual(nodes.record(["gone:1"], pool: "a"), [])
        XCTAssertEqual(nodes.record(["gone:1"], pool: "a"), ["gone:1"])
        XCTAssertEqual(nodes.record([], pool: "a"), [])
    }
}
