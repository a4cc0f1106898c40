/// A first-in first-out queue over an array that reuses its storage (no allocation once warm).
/// Elements leave by being moved out (`take()`), so popping costs no retain/release pair.
struct FIFO<Element> {
    private var storage: [Element?] = []
    private var head = 0

    var count: Int { storage.count - head }
    var isEmpty: Bool { head == storage.count }

    mutating func append(_ element: Element) { storage.append(element) }

    mutating func popFirst() -> Element? {
        guard head < storage.count else { return nil }
        let element = storage[head].take()
        head += 1
        if head == storage.count {
            storage.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 1024, head * 2 >= storage.count {
            storage.removeFirst(head)
            head = 0
        }
        return element
    }

    /// The element `offset` places behind the head, read and written in place.
    subscript(offset: Int) -> Element {
        _read { yield storage[head + offset]! }
        _modify { yield &storage[head + offset]! }
    }

    mutating func removeAll() {
        storage.removeAll(keepingCapacity: true)
        head = 0
    }
}

extension FIFO where Element: AnyObject {
    /// Whether `element` is at the head (an identity check, no reference taken).
    @inline(__always)
    func isFirst(_ element: Element) -> Bool { head < storage.count && storage[head] === element }
}
