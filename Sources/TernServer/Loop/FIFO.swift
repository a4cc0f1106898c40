/// A first-in first-out queue on a ring of manually managed storage: appending and popping are a
/// store and a load at a masked index, with no uniqueness check (an array would make one per
/// mutation) and no compaction; the ring is allocated on the first append (an idle connection's
/// queues take no memory), doubles when full, and is given back only when its owner asks
/// (`releaseStorageIfEmpty`, for a connection that has gone idle). Elements leave by being moved
/// out, so popping costs no retain/release pair.
///
/// A noncopyable struct stored inline in its owner (a connection): no object of its own, and no
/// copy-on-write check since it can never be shared. Like its owners, it is confined to one worker
/// thread.
struct FIFO<Element>: ~Copyable {
    /// Nil until the first append.
    private var storage: UnsafeMutablePointer<Element>?
    /// Capacity minus one; the capacity is a power of two. Before the first append, minus the
    /// capacity the first append allocates (kept here rather than in a field of its own). The
    /// positions are 32-bit (no queue holds 2^31 elements): with the pointer, 20 bytes in
    /// every connection rather than 40.
    private var mask: Int32
    private var head: Int32 = 0
    private var stored: Int32 = 0

    var count: Int { Int(stored) }

    init(initialCapacity: Int = 8) {
        var size: Int32 = 1
        while size < initialCapacity { size <<= 1 }
        mask = -size
    }

    deinit {
        if let storage {
            for offset in 0..<stored { (storage + Int((head &+ offset) & mask)).deinitialize(count: 1) }
            storage.deallocate()
        }
    }

    var isEmpty: Bool { stored == 0 }

    /// Elements the ring holds without growing; 0 while it has no ring.
    var capacity: Int { storage == nil ? 0 : Int(mask) + 1 }

    @inline(__always)
    mutating func append(_ element: Element) {
        if stored > mask { grow() }
        (storage.unsafelyUnwrapped + Int((head &+ stored) & mask)).initialize(to: element)
        stored &+= 1
    }

    @inline(__always)
    mutating func popFirst() -> Element? {
        guard stored > 0 else { return nil }
        let element = (storage.unsafelyUnwrapped + Int(head)).move()
        head = (head &+ 1) & mask
        stored &-= 1
        return element
    }

    /// The element `offset` places behind the head, read and written in place.
    subscript(offset: Int) -> Element {
        _read {
            precondition(offset >= 0 && offset < count, "FIFO offset \(offset) of \(count)")
            yield storage.unsafelyUnwrapped[Int((head &+ Int32(truncatingIfNeeded: offset)) & mask)]
        }
        _modify {
            precondition(offset >= 0 && offset < count, "FIFO offset \(offset) of \(count)")
            yield &storage.unsafelyUnwrapped[Int((head &+ Int32(truncatingIfNeeded: offset)) & mask)]
        }
    }

    mutating func removeAll() {
        while stored > 0 {
            (storage.unsafelyUnwrapped + Int(head)).deinitialize(count: 1)
            head = (head &+ 1) & mask
            stored &-= 1
        }
        head = 0
    }

    /// An empty queue gives its ring back (a connection that has gone idle); the next append
    /// allocates one of the same capacity again.
    mutating func releaseStorageIfEmpty() {
        guard stored == 0, let storage else { return }
        storage.deallocate()
        self.storage = nil
        mask = -(mask + 1)
        head = 0
    }

    private mutating func grow() {
        let capacity = storage == nil ? -mask : (mask + 1) * 2
        let larger = UnsafeMutablePointer<Element>.allocate(capacity: Int(capacity))
        if let storage {
            for offset in 0..<stored {
                (larger + Int(offset)).moveInitialize(from: storage + Int((head &+ offset) & mask), count: 1)
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
    func isFirst(_ element: Element) -> Bool { stored > 0 && storage.unsafelyUnwrapped[Int(head)] === element }
}
