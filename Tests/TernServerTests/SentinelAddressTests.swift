import XCTest
@testable import TernServer
import TernCore

/// The Sentinel watcher's last check of a round: no two master groups at one address.
final class SentinelAddressTests: XCTestCase {
    let x = ClusterNode(host: "10.0.0.1", port: 6379), y = ClusterNode(host: "10.0.0.2", port: 6379)
    let z = ClusterNode(host: "10.0.0.3", port: 6379)

    /// Two masters that traded addresses move together (a check against the previous round's
    /// addresses refused each the other's for ever; review of 729c4d2).
    func testMastersThatTradedAddressesMove() {
        var found = ["a": y, "b": x]
        let errors = SentinelWatcher.withoutSharedAddresses(&found, previous: ["a": x, "b": y], masters: ["a", "b"])
        XCTAssertEqual(found, ["a": y, "b": x])
        XCTAssertEqual(errors, [])
    }

    /// A master named, on a tie, the address another master keeps (a sentinel of another
    /// deployment naming it) keeps its own previous address; the other is untouched.
    func testAnAddressAnotherMasterKeepsIsRefused() {
        var found = ["a": y, "b": y]
        let errors = SentinelWatcher.withoutSharedAddresses(&found, previous: ["a": x, "b": y], masters: ["a", "b"])
        XCTAssertEqual(found, ["a": x, "b": y])
        XCTAssertEqual(errors, ["a: 10.0.0.2:6379 was named, which is b's address"])
    }

    /// A first address (no previous) that another master has is not taken; distinct moves are.
    func testNewAndMovedAddresses() {
        var found = ["a": y, "b": y, "c": z]
        let errors = SentinelWatcher.withoutSharedAddresses(&found, previous: ["b": y, "c": x], masters: ["a", "b", "c"])
        XCTAssertEqual(found, ["b": y, "c": z])
        XCTAssertEqual(errors.count, 1)
    }
}
