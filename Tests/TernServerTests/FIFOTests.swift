import XCTest
@testable import TernServer

final class FIFOTests: XCTestCase {
    final class Box {
        let value: Int
        init(_ value: Int) { self.value = value }
    }

    /// Order is kept while the ring wraps around and while it grows with its head in the middle.
    func testOrderAcrossWrapAndGrowth() {
        var queue = FIFO<Int>(initialCapacity: 4)
        var expected: [Int] = []
        var next = 0
        // Interleave pushes and pops so the head walks round the ring, then push past capacity.
        for round in 0..<50 {
            for _ in 0..<(round % 7 + 1) {
                queue.append(next)
                expected.append(next)
                next += 1
            }
            for _ in 0..<(round % 5) where !expected.isEmpty {
                XCTAssertEqual(queue.popFirst(), expected.removeFirst())
            }
            XCTAssertEqual(queue.count, expected.count)
            for (offset, value) in expected.enumerated() { XCTAssertEqual(queue[offset], value) }
        }
        while let value = queue.popFirst() { XCTAssertEqual(value, expected.removeFirst()) }
        XCTAssertTrue(expected.isEmpty)
        XCTAssertTrue(queue.isEmpty)
        XCTAssertNil(queue.popFirst())
    }

    /// An empty queue gives its ring back and takes one of the same capacity on the next
    /// append; a queue with elements keeps its ring.
    func testAnEmptyQueueGivesItsRingBack() {
        var queue = FIFO<Box>(initialCapacity: 2)
        queue.releaseStorageIfEmpty()
        XCTAssertEqual(queue.capacity, 0)
        for value in 0..<5 { queue.append(Box(value)) }
        XCTAssertEqual(queue.capacity, 8)
        queue.releaseStorageIfEmpty()
        XCTAssertEqual(queue.capacity, 8, "not empty: kept")
        for value in 0..<3 { XCTAssertEqual(queue.popFirst()?.value, value) }
        weak var last: Box?
        do {
            let box = Box(99)
            last = box
            queue.append(box)
        }
        XCTAssertEqual(queue.popFirst()?.value, 3)
        XCTAssertEqual(queue.popFirst()?.value, 4)
        XCTAssertEqual(queue.popFirst()?.value, 99)
        XCTAssertNil(last, "popped elements are not kept by the ring")
        queue.releaseStorageIfEmpty()
        XCTAssertEqual(queue.capacity, 0)
        for value in 10..<13 { queue.append(Box(value)) }
        XCTAssertEqual(queue.capacity, 8, "the same capacity again")
        XCTAssertEqual([queue[0].value, queue[1].value, queue[2].value], [10, 11, 12])
    }

    func testElementsAreModifiedInPlace() {
        var queue = FIFO<Int>(initialCapacity: 2)
        for value in 0..<5 { queue.append(value) }
        _ = queue.popFirst()
        queue[1] += 100
        XCTAssertEqual([queue[0], queue[1], queue[2], queue[3]], [1, 102, 3, 4])
    }

    /// Popped, removed and still-queued objects are all released: nothing leaks, nothing is
    /// released twice.
    func testReferencesAreReleased() {
        weak var popped: Box?
        weak var removed: Box?
        weak var queued: Box?
        do {
            var queue = FIFO<Box>(initialCapacity: 2)
            do {
                let first = Box(1), second = Box(2), third = Box(3)
                popped = first
                removed = second
                queue.append(first)
                XCTAssertTrue(queue.isFirst(first))
                XCTAssertFalse(queue.isFirst(second))
                XCTAssertEqual(queue.popFirst()?.value, 1)
                queue.append(second)
                queue.removeAll()
                XCTAssertTrue(queue.isEmpty)
                queued = third
                for value in 4..<10 { queue.append(Box(value)) }
                queue.append(third)
            }
            XCTAssertNil(popped)
            XCTAssertNil(removed)
            XCTAssertNotNil(queued)
            XCTAssertEqual(queue.count, 7)
            XCTAssertEqual(queue[6].value, 3)
        }
        // The queue's deinit released the elements still in it.
        XCTAssertNil(queued)
    }
}
