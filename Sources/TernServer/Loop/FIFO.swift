/// A first-in first-out queue on a ring of manually managed storage: appending and popping are a
/// store and a load at a masked index, with no uniqueness check (an array would make one per
/// mutation) and no compaction. The ring is allocated when a second element is appended and
/// doubles when full; a single element of a word's size (a reference: a client's one request in
/// flight) is kept in the ring pointer's own word instead, so an unpipelined client never takes
/// a ring and an idle connection's queues take no memory. A ring is given back only when its
/// owner asks (`releaseStorageIfEmpty`, for a connection that has gone idle). Elements leave by
/// being moved out, so popping costs no retain/release pair.
///
/// A noncopyable struct stored inline in its owner (a connection): no object of its own, and no
/// copy-on-write check since it can never be shared. Like its owners, it is confined to one worker
/// thread.
struct FIFO<Element>: ~Copyable {
    /// The ring while `mask >= 0`. Without a ring (`mask < 0`): nil while the queue is empty,
    /// and while it holds one element (`stored == 1`, only when `inlines`), that element's own
    /// bits. Unsafe: those bits are an element only between `putInline` and `takeInline`, which
    /// initialize and move it as one; meanwhile they are read only as bits (the subscript's
    /// read, `isFirst`, `withFirst`), never followed as a pointer (every use of the ring is
    /// behind `mask >= 0`).
    private var storage: UnsafeMutablePointer<Element>?
    /// Capacity minus one; the capacity is a power of two. Without a ring, minus the capacity
    /// the next ring is allocated with (kept here rather than in a field of its own). The
    /// positions are 32-bit (no queue holds 2^31 elements): with the pointer, 20 bytes in
    /// every connection rather than 40.
    private var mask: Int32
    private var head: Int32 = 0
    private var stored: Int32 = 0

    /// Elements that fit in the ring pointer's word and move by copying their bits (class
    /// references, and `Int` in tests) are kept there while they are the only one. Constant
    /// once specialized.
    private static var inlines: Bool {
        MemoryLayout<Element>.size == MemoryLayout<UnsafeMutablePointer<Element>?>.size
            && MemoryLayout<Element>.alignment <= MemoryLayout<UnsafeMutablePointer<Element>?>.alignment
            && (isClass || _isPOD(Element.self))
    }

    /// Whether `Element` is a class reference: decided by the compiler where the type is known
    /// (specialized code asks no metadata per pop), at run time in unspecialized code.
    private static var isClass: Bool {
        switch _canBeClass(Element.self) {
        case 0: false
        case 1: true
        default: Element.self is AnyObject.Type
        }
    }

    var count: Int { Int(stored) }

    init(initialCapacity: Int = 8) {
        var size: Int32 = 2
        while size < initialCapacity { size <<= 1 }
        mask = -size
    }

    deinit {
        if mask < 0 {
            // The inline element, released from a copy of its word (`self` is immutable here).
            var word = storage
            if Self.inlines, stored > 0 { _ = Self.take(&word) }
        } else if let storage {
            for offset in 0..<stored { (storage + Int((head &+ offset) & mask)).deinitialize(count: 1) }
            storage.deallocate()
        }
    }

    var isEmpty: Bool { stored == 0 }

    /// Elements the ring holds without growing; 0 while it has no ring.
    var capacity: Int { mask < 0 ? 0 : Int(mask) + 1 }

    @inline(__always)
    mutating func append(_ element: consuming Element) {
        // No ring (mask < 0), or a full one.
        if stored > mask {
            // The one element of a queue with no ring (an unpipelined client's request).
            if Self.inlines, stored == 0, mask < 0 {
                putInline(element)
                stored = 1
                return
            }
            return appendWithoutRoom(element)
        }
        (storage.unsafelyUnwrapped + Int((head &+ stored) & mask)).initialize(to: element)
        stored &+= 1
    }

    @inline(__always)
    mutating func popFirst() -> Element? {
        guard stored > 0 else { return nil }
        if Self.inlines, mask < 0 {
            stored = 0
            return takeInline()
        }
        let element = (storage.unsafelyUnwrapped + Int(head)).move()
        head = (head &+ 1) & mask
        stored &-= 1
        return element
    }

    /// The element appended last, moved out: the queue used as a stack (a free list, whose most
    /// recently freed element is the one most likely still in the cache).
    @inline(__always)
    mutating func popLast() -> Element? {
        guard stored > 0 else { return nil }
        if Self.inlines, mask < 0 {
            stored = 0
            return takeInline()
        }
        stored &-= 1
        return (storage.unsafelyUnwrapped + Int((head &+ stored) & mask)).move()
    }

    /// The element `offset` places behind the head, read and written in place.
    subscript(offset: Int) -> Element {
        _read {
            precondition(offset >= 0 && offset < count, "FIFO offset \(offset) of \(count)")
            // Unsafe: one inline element's bits are in `storage` (see there); read at +0.
            if Self.inlines, mask < 0 { yield unsafeBitCast(storage, to: Element.self) } else {
                yield storage.unsafelyUnwrapped[Int((head &+ Int32(truncatingIfNeeded: offset)) & mask)]
            }
        }
        _modify {
            precondition(offset >= 0 && offset < count, "FIFO offset \(offset) of \(count)")
            if Self.inlines, mask < 0 {
                var element = takeInline()
                defer { putInline(element) }
                yield &element
            } else {
                yield &storage.unsafelyUnwrapped[Int((head &+ Int32(truncatingIfNeeded: offset)) & mask)]
            }
        }
    }

    mutating func removeAll() {
        if mask < 0 {
            if Self.inlines, stored > 0 { _ = takeInline() }
            stored = 0
            return
        }
        while stored > 0 {
            (storage.unsafelyUnwrapped + Int(head)).deinitialize(count: 1)
            head = (head &+ 1) & mask
            stored &-= 1
        }
        head = 0
    }

    /// An empty queue gives its ring back (a connection that has gone idle); the next second
    /// element allocates one of the same capacity again.
    mutating func releaseStorageIfEmpty() {
        guard stored == 0, mask >= 0, let storage else { return }
        storage.deallocate()
        self.storage = nil
        mask = -(mask + 1)
        head = 0
    }

    /// A second element of a queue with no ring, the first of one that keeps no element
    /// inline, or one past a full ring: a ring twice as large (an inline element moves to its
    /// start).
    @inline(never)
    private mutating func appendWithoutRoom(_ element: consuming Element) {
        let capacity = mask < 0 ? -mask : (mask + 1) * 2
        let larger = UnsafeMutablePointer<Element>.allocate(capacity: Int(capacity))
        if mask < 0 {
            if Self.inlines, stored > 0 { larger.initialize(to: takeInline()) }
        } else if let storage {
            for offset in 0..<stored {
                (larger + Int(offset)).moveInitialize(from: storage + Int((head &+ offset) & mask), count: 1)
            }
            storage.deallocate()
        }
        storage = larger
        mask = capacity - 1
        head = 0
        (larger + Int(stored)).initialize(to: element)
        stored &+= 1
    }

    /// Unsafe: `storage`'s word holds an element's bits only between these two (no ring,
    /// `stored == 1`, `inlines`); `takeInline` leaves it nil.
    @inline(__always)
    private mutating func putInline(_ element: consuming Element) {
        Self.put(element, into: &storage)
    }

    @inline(__always)
    private mutating func takeInline() -> Element {
        Self.take(&storage)
    }

    /// Moves `element` into the pointer word at `word`, whose memory is bound to `Element`
    /// until `take` (a function, not a closure, which would copy the element).
    @inline(__always)
    private static func put(_ element: consuming Element, into word: UnsafeMutablePointer<UnsafeMutablePointer<Element>?>) {
        UnsafeMutableRawPointer(word).initializeMemory(as: Element.self, to: element)
    }

    /// Moves the element out of the word at `word` and leaves the word a nil pointer again,
    /// its memory bound back to the pointer type.
    @inline(__always)
    private static func take(_ word: UnsafeMutablePointer<UnsafeMutablePointer<Element>?>) -> Element {
        let raw = UnsafeMutableRawPointer(word)
        let element = raw.assumingMemoryBound(to: Element.self).move()
        raw.initializeMemory(as: UnsafeMutablePointer<Element>?.self, repeating: nil, count: 1)
        return element
    }
}

extension FIFO where Element: AnyObject {
    /// Whether `element` is at the head (an identity check, no reference taken).
    @inline(__always)
    func isFirst(_ element: Element) -> Bool {
        guard stored > 0 else { return false }
        // Without a ring, the one element's bits are the storage word (see `storage`).
        if mask < 0 { return UnsafeRawPointer(storage) == UnsafeRawPointer(Unmanaged.passUnretained(element).toOpaque()) }
        return storage.unsafelyUnwrapped[Int(head)] === element
    }

    /// Moves the element appended last to just before `element` (found by identity from the
    /// head), shifting those between one place back; false, and nothing moved, when `element` is
    /// not in the queue ahead of the last. For a subscriber's message that must leave before a
    /// reply its push connection has not sent yet (`ReplyOwner.pushMessage`): a few elements.
    mutating func moveLast(before element: Element) -> Bool {
        guard stored > 1, mask >= 0, let storage else { return false }
        let target = UnsafeRawPointer(Unmanaged.passUnretained(element).toOpaque())
        var offset: Int32 = 0
        // Compared as bits: no reference is taken.
        while offset < stored &- 1,
              UnsafeRawPointer(storage + Int((head &+ offset) & mask)).load(as: UnsafeRawPointer.self) != target { offset &+= 1 }
        guard offset < stored &- 1 else { return false }
        let last = (storage + Int((head &+ stored &- 1) & mask)).move()
        var index = stored &- 1
        while index > offset {
            (storage + Int((head &+ index) & mask)).moveInitialize(from: storage + Int((head &+ index &- 1) & mask), count: 1)
            index &-= 1
        }
        (storage + Int((head &+ offset) & mask)).initialize(to: last)
        return true
    }

    /// Whether an element satisfies `predicate`, from the head, each borrowed (no reference
    /// taken); `predicate` must not change the queue. Off the per-request paths.
    func contains(where predicate: (Element) -> Bool) -> Bool {
        guard stored > 0 else { return false }
        if mask < 0 { return withFirst(predicate) }
        let ring = storage.unsafelyUnwrapped
        var offset: Int32 = 0
        while offset < stored {
            let bits = UnsafeRawPointer(ring + Int((head &+ offset) & mask)).load(as: UnsafeRawPointer.self)
            if Unmanaged<Element>.fromOpaque(bits)._withUnsafeGuaranteedRef(predicate) { return true }
            offset &+= 1
        }
        return false
    }

    /// Calls `body` with the head element, borrowed: no reference is taken, and no coroutine
    /// is entered (the subscript's, with a branch for the inline element, is not inlined). The
    /// queue must not be empty, and `body` must not change it.
    @inline(__always)
    func withFirst<Result>(_ body: (Element) -> Result) -> Result {
        precondition(stored > 0, "the first element of an empty FIFO")
        // The head's bits: the storage word itself without a ring (see `storage`), else the
        // ring's slot at `head`.
        let bits = mask < 0 ? UnsafeRawPointer(storage).unsafelyUnwrapped
                            : UnsafeRawPointer(storage.unsafelyUnwrapped + Int(head)).load(as: UnsafeRawPointer.self)
        return Unmanaged<Element>.fromOpaque(bits)._withUnsafeGuaranteedRef(body)
    }
}
