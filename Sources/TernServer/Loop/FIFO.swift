/// A first-in first-out queue on a ring of manually managed storage: appending and popping are a
/// store and a load at a masked index, with no uniqueness check (an array would make one per
/// mutation) and no compaction; the ring is allocated on the first append (an idle connection's
/// queues take no memory), doubles when full and is never shrunk. Elements leave by being moved
/// out, so popping costs no retain/release pair.
///
/// A noncopyable struct stored inline in its owner (a connection): no object of its own, and no
/// copy-on-write check since it can never be shared. Like its owners, it is confined to one worker
/// thread.
struct FIFO<Element>: ~Copyable {
    /// Nil until the first append.
    private var storage: UnsafeMutablePointer<Element>?
    /// Capacity minus one; the capacity is a power of two (or zero before the first append).
    private var mask = -1
    private var head = 0
    private(set) var count = 0
    private let initialCapacity: Int

    init(initialCapacity: Int = 8) {
        var size = 1
        while size < initialCapacity { size <<= 1 }
        self.initialCapacity = size
    }

    deinit {
        if let storage {
            for offset in 0..<count { (storage + ((head &+ offset) & mask)).deinitialize(count: 1) }
            storage.deallocate()
        }
    }

    var isEmpty: Bool { count == 0 }

    @inline(__always)
    mutating func append(_ element: Element) {
        if count > mask { grow() }
        (storage.unsafelyUnwrapped + ((head &+ count) & mask)).initialize(to: element)
        count &+= 1
    }

    @inline(__always)
    mutating func popFirst() -> Element? {
        guard count > 0 else { return nil }
        let element = (storage.unsafelyUnwrapped + head).move()
        head = (head &+ 1) & mask
        count &-= 1
        return element
    }

    /// The element `offset` places behind the head, read and written in place.
    subscript(offset: Int) -> Element {
        _read {
            precondition(offset >= 0 && offset < count, "FIFO offset \(offset) of \(count)")
            yield storage.unsafelyUnwrapped[(head &+ offset) & mask]
        }
        _modify {
            precondition(offset >= 0 && offset < count, "FIFO offset \(offset) of \(count)")
            yield &storage.unsafelyUnwrapped[(head &+ offset) & mask]
        }
    }

    mutating func removeAll() {
        while count > 0 {
            (storage.unsafelyUnwrapped + head).deinitialize(count: 1)
            head = (head &+ 1) & mask
            count &-= 1
        }
        head = 0
    }

    private mutating func grow() {
        let capacity = mask < 0 ? initialCapacity : (mask + 1) * 2
        let larger = UnsafeMutablePointer<Element>.allocate(capacity: capacity)
        if let storage {
            for offset in 0..<count {
                (larger + offset).moveInitialize(from: storage + ((head &+ offset) & mask), count: 1)
            }
            storage.deallocate()
        }
        storage = larger
        mask = capacity - 1
        head = 0
    }
}

extension FIFO where Element: AnyObject {
    /// Whether `element` is at the head (an identity check, no reference taken).
    @inline(__always)
    func isFirst(_ element: Element) -> Bool { count > 0 && storage.unsafelyUnwrapped[head] === element }
}
