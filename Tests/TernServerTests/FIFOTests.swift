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

    /// `moveLast(before:)` (a subscriber's message ahead of an answer still owed): the last
    /// element goes just before the one named, with the head anywhere in the ring; nothing moves
    /// when the one named is absent, is the last itself, or the queue holds one element.
    func testMoveLastBeforeAnElement() {
        let boxes = (0..<6).map { Box($0) }
        var queue = FIFO<Box>(initialCapacity: 4)
        // Walk the head round the ring first.
        for box in boxes.prefix(3) { queue.append(box) }
        for _ in 0..<3 { _ = queue.popFirst() }
        for box in boxes.prefix(4) { queue.append(box) }
        XCTAssertTrue(queue.moveLast(before: boxes[1]))
        XCTAssertEqual((0..<queue.count).map { queue[$0].value }, [0, 3, 1, 2])
        XCTAssertTrue(queue.moveLast(before: boxes[0]))
        XCTAssertEqual((0..<queue.count).map { queue[$0].value }, [2, 0, 3, 1])
        XCTAssertFalse(queue.moveLast(before: boxes[5]))
        XCTAssertFalse(queue.moveLast(before: boxes[1]), "the last element itself")
        XCTAssertEqual((0..<queue.count).map { queue[$0].value }, [2, 0, 3, 1])
        var one = FIFO<Box>()
        one.append(boxes[0])
        XCTAssertFalse(one.moveLast(before: boxes[0]))
        XCTAssertEqual(one.popFirst()?.value, 0)
    }

    /// Used as a stack (the worker's free slots): `popLast` takes the element appended last,
    /// with the head anywhere in the ring, after growth, and for an inline element; mixed with
    /// `popFirst`, the elements left are those between. Popped references are released.
    func testPopLastTakesTheNewestElement() {
        var queue = FIFO<Int>(initialCapacity: 4)
        var expected: [Int] = []
        var next = 0
        for round in 0..<60 {
            for _ in 0..<(round % 6 + 1) {
                queue.append(next)
                expected.append(next)
                next += 1
            }
            for _ in 0..<(round % 3) where !expected.isEmpty { XCTAssertEqual(queue.popFirst(), expected.removeFirst()) }
            for _ in 0..<(round % 4) where !expected.isEmpty { XCTAssertEqual(queue.popLast(), expected.removeLast()) }
            XCTAssertEqual(queue.count, expected.count)
            for (offset, value) in expected.enumerated() { XCTAssertEqual(queue[offset], value) }
        }
        while let value = queue.popLast() { XCTAssertEqual(value, expected.removeLast()) }
        XCTAssertTrue(expected.isEmpty)
        XCTAssertNil(queue.popLast())

        weak var released: Box?
        var boxes = FIFO<Box>()
        do {
            let box = Box(1)
            released = box
            boxes.append(box)
            XCTAssertEqual(boxes.capacity, 0, "one element: inline")
            XCTAssertTrue(boxes.popLast() === box)
            XCTAssertTrue(boxes.isEmpty)
        }
        XCTAssertNil(released, "the popped element was moved out, not copied")
        boxes.append(Box(2))
        boxes.append(Box(3))
        XCTAssertEqual(boxes.popLast()?.value, 3)
        XCTAssertEqual(boxes.popLast()?.value, 2)
        XCTAssertNil(boxes.popLast())
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

    /// One element of a reference's size is kept without a ring (an unpipelined client's one
    /// request in flight allocates nothing); a second makes the ring, with the first at its
    /// head. The inline element is read, modified, compared, popped and released like a ring's.
    func testASingleElementTakesNoRing() {
        weak var dropped: Box?
        do {
            var queue = FIFO<Box>()
            for round in 0..<3 {
                let box = Box(round)
                queue.append(box)
                XCTAssertEqual(queue.capacity, 0, "one element: no ring")
                XCTAssertEqual(queue.count, 1)
                XCTAssertTrue(queue.isFirst(box))
                XCTAssertFalse(queue.isFirst(Box(round)))
                XCTAssertEqual(queue[0].value, round)
                XCTAssertTrue(queue.popFirst() === box)
                XCTAssertTrue(queue.isEmpty)
                XCTAssertFalse(queue.isFirst(box))
                XCTAssertNil(queue.popFirst())
            }
            queue.append(Box(1))
            queue.append(Box(2))
            XCTAssertEqual(queue.capacity, 8, "a second element: the ring")
            XCTAssertEqual([queue[0].value, queue[1].value], [1, 2])
            XCTAssertEqual(queue.popFirst()?.value, 1)
            XCTAssertEqual(queue.popFirst()?.value, 2)
            queue.releaseStorageIfEmpty()
            XCTAssertEqual(queue.capacity, 0)
            do {
                let box = Box(7)
                dropped = box
                queue.append(box)
            }
            XCTAssertNotNil(dropped, "kept by the queue")
            queue.removeAll()
            XCTAssertNil(dropped, "removeAll released the inline element")
            do {
                let box = Box(8)
                dropped = box
                queue.append(box)
            }
            XCTAssertEqual(queue.capacity, 0)
        }
        XCTAssertNil(dropped, "the queue's deinit released its inline element")
        // withFirst borrows the head, inline and in a ring; an inline element replaced in
        // place releases the one it replaced.
        var queue = FIFO<Box>()
        weak var replaced: Box?
        do {
            let box = Box(20)
            replaced = box
            queue.append(box)
        }
        XCTAssertEqual(queue.withFirst { $0.value }, 20)
        queue[0] = Box(21)
        XCTAssertNil(replaced, "the inline element replaced in place was released")
        XCTAssertEqual(queue.withFirst { $0.value }, 21)
        queue.append(Box(22))
        XCTAssertEqual(queue.withFirst { $0.value }, 21, "the head, once in a ring")
        _ = queue.popFirst()
        XCTAssertEqual(queue.withFirst { $0.value }, 22)
        var numbers = FIFO<Int>()
        numbers.append(5)
        numbers[0] += 10
        XCTAssertEqual(numbers.capacity, 0)
        XCTAssertEqual(numbers.popFirst(), 15)
    }
}

/// A backend connection's queue entry stays within 48 bytes (a warm-up copy's noted epoch
/// lives in the padding after its flags).
final class PendingEntryLayoutTests: XCTestCase {
    func testAnEntryIsNoLargerThan48Bytes() {
        XCTAssertEqual(MemoryLayout<ServerConnection.Pending>.stride, 48)
    }
}
