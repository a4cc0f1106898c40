#if canImport(Glibc)
import Glibc
#endif
import CLibev
import CTernBlocks
import TernCore

/// A growable byte buffer over raw memory: bytes are appended at `writeIndex` and consumed from
/// `readIndex`. Memory is allocated on first use and given back by `release()` when a
/// connection goes idle, so an idle connection holds no buffer.
///
/// The memory comes from `malloc`/`realloc`/`free`: a full buffer that must grow is
/// `realloc`ed, and glibc moves a large (mmapped) block by remapping its pages, so a large
/// request or reply growing toward its declared length is neither copied nor held twice.
///
/// Blocks of 256 KiB or more come from and go back to the worker thread's cache of large
/// blocks (`tern_blocks.h`) when it has one that fits: a large request read into a block used
/// before finds its pages there instead of faulting each one in.
///
/// Owned by exactly one connection on one worker thread; never shared. TernCore's encoders
/// write into it (`ByteSink`: `reserve` and `commit`), RESP elements included
/// (`appendArrayHeader`, `appendBulk`, `appendInteger`).
final class ByteBuffer: ByteSink {
    private(set) var storage: UnsafeMutableRawPointer?
    private(set) var capacity = 0
    private(set) var readIndex = 0
    private(set) var writeIndex = 0
    /// The memory was mapped by `reserveMapped` (not `malloc`): grown by `mremap`, freed by
    /// `munmap`. Moves with the memory (`swapContents`).
    private var isMapped = false
    /// The least memory the buffer allocates when it first grows. 32 bits, after `isMapped`:
    /// the object stays 56 bytes, in malloc's 64-byte chunks.
    private let minimumCapacity: Int32

    init() { minimumCapacity = 4096 }

    /// A buffer whose first allocation is `minimumCapacity` bytes: a reply slot's, which holds
    /// one small reply at a time. Hundreds of them wait at once under pipelining; at 4 KiB each
    /// every held reply sat on a page of its own.
    init(minimumCapacity: Int32) { self.minimumCapacity = minimumCapacity }

    deinit { freeStorage() }

    /// Gives the memory back, however it was allocated: a large heap block to the thread's
    /// cache when it keeps it.
    private func freeStorage() {
        guard let storage else { return }
        if isMapped {
            munmap(storage, capacity)
        } else {
            Self.freeBlock(storage, capacity: capacity)
        }
        isMapped = false
    }

    /// At least `size` bytes from `malloc`, or a cached large block (then its size, which is at
    /// most twice `size`).
    private static func allocateBlock(_ size: Int) -> (memory: UnsafeMutableRawPointer?, capacity: Int) {
        if let block = cachedBlock(size) { return (block.memory, block.capacity) }
        return (allocate(size), size)
    }

    /// `malloc`, or a cached small block for the 4 KiB a buffer starts with.
    @inline(__always)
    private static func allocate(_ size: Int) -> UnsafeMutableRawPointer? {
        if size == Int(TERN_BLOCKS_SMALL_SIZE), let block = tern_blocks_take_small() { return block }
        return malloc(size)
    }

    private static func cachedBlock(_ size: Int) -> (memory: UnsafeMutableRawPointer, capacity: Int)? {
        guard size >= Int(TERN_BLOCKS_MIN_BLOCK) else { return nil }
        var capacity = 0
        guard let block = tern_blocks_take(size, &capacity) else { return nil }
        return (block, capacity)
    }

    @inline(__always)
    private static func freeBlock(_ memory: UnsafeMutableRawPointer, capacity: Int) {
        if capacity == Int(TERN_BLOCKS_SMALL_SIZE) {
            if tern_blocks_give_small(memory) == 0 { free(memory) }
        } else if capacity < Int(TERN_BLOCKS_MIN_BLOCK) || tern_blocks_give(memory, capacity) == 0 {
            free(memory)
            // A large block not kept (past 8 MiB, or the cache full) leaves its pages in malloc's
            // heap unless it was at the top: the worker's next sweep gives them back (a sweep saw
            // 330-460 MB stay resident on an idle Tern after a burst of large requests, until an
            // unrelated free made a trim due; resource limits sweep 30).
            if capacity >= Int(TERN_BLOCKS_MIN_BLOCK) { tern_blocks_trim_due() }
        }
    }

    var readableCount: Int { writeIndex - readIndex }
    var isEmpty: Bool { writeIndex == readIndex }

    /// The unread bytes. Valid until the next mutation.
    var readable: UnsafeRawBufferPointer {
        guard let storage else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: storage + readIndex, count: writeIndex - readIndex)
    }

    /// Makes room for at least `count` more bytes and returns where they go.
    @inline(__always)
    func reserve(_ count: Int) -> UnsafeMutableRawPointer {
        // Room already there (the common case), inlined into the caller; growing is not.
        if capacity - writeIndex >= count { return storage! + writeIndex }
        return grow(toFit: count)
    }

    @inline(never)
    private func grow(toFit count: Int) -> UnsafeMutableRawPointer {
        // A buffer with no memory starting at 4 KiB (a client's output after the last one was
        // written out): a small block, without the general path.
        if storage == nil, minimumCapacity == Int32(TERN_BLOCKS_SMALL_SIZE), count <= Int(TERN_BLOCKS_SMALL_SIZE) {
            guard let block = Self.allocate(Int(TERN_BLOCKS_SMALL_SIZE)) else {
                fatalError("out of memory for a buffer")
            }
            storage = block
            capacity = Int(TERN_BLOCKS_SMALL_SIZE)
            readIndex = 0
            writeIndex = 0
            return block
        }
        let unread = writeIndex - readIndex
        if readIndex > 0, capacity - unread >= count, let storage {
            // Compact: move the unread bytes to the front.
            if unread > 0 { memmove(storage, storage + readIndex, unread) }
            readIndex = 0
            writeIndex = unread
            return storage + writeIndex
        }
        var newCapacity = max(capacity * 2, Int(minimumCapacity))
        while newCapacity - unread < count { newCapacity *= 2 }
        moveUnread(toCapacity: newCapacity)
        return storage! + writeIndex
    }

    /// `newCapacity` bytes of memory with the unread bytes at its front. Mapped memory is
    /// remapped (the pages move: nothing is copied, nothing held twice); with `mapping`, plain
    /// memory is left for a mapping of this buffer's own; a mostly full buffer is `realloc`ed
    /// (a large block is remapped by glibc, not copied); a mostly consumed one gets fresh memory
    /// and only its unread bytes are copied. Large memory is a cached block, whatever the
    /// buffer's state, when the thread has one that fits (its bytes are then copied).
    private func moveUnread(toCapacity newCapacity: Int, mapping: Bool = false) {
        let unread = writeIndex - readIndex
        let memory: UnsafeMutableRawPointer?
        var newCapacity = newCapacity
        // A buffer growing large takes a cached block when there is one (and copies its bytes,
        // once; its old block goes to the cache in turn) rather than `realloc`, whose new pages
        // would each fault in as they are written: under 1 MiB SETs from ten clients a fault per
        // 4 KiB cost more than the copy (bench/RESULTS.md, twelfth session).
        let cached = isMapped || mapping ? nil : Self.cachedBlock(newCapacity)
        if cached == nil, let storage, isMapped || (!mapping && unread * 2 >= capacity) {
            if readIndex > 0 { memmove(storage, storage + readIndex, unread) }
            if isMapped {
                let moved = tern_mremap(storage, capacity, newCapacity)
                memory = moved == MAP_FAILED ? nil : moved
            } else {
                memory = realloc(storage, newCapacity)
            }
        } else {
            if let cached {
                (memory, newCapacity) = (cached.memory, cached.capacity)
            } else if mapping {
                let mapped = mmap(nil, newCapacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                memory = mapped == MAP_FAILED ? nil : mapped
            } else {
                memory = Self.allocate(newCapacity)
            }
            if unread > 0, let storage, let memory { memory.copyMemory(from: storage + readIndex, byteCount: unread) }
            if memory != nil, let storage { Self.freeBlock(storage, capacity: capacity) }
        }
        guard let memory else { fatalError("out of memory growing a buffer to \(newCapacity) bytes") }
        isMapped = isMapped || mapping
        storage = memory
        capacity = newCapacity
        readIndex = 0
        writeIndex = unread
    }

    /// Like `reserve(frame:)`, in memory mapped for this buffer alone: a large reply that
    /// grows toward its length as its parts' headers arrive (an array of large values) is
    /// remapped at each step rather than copied, and its memory leaves the process when freed
    /// (`malloc` may move a large block it placed in its heap, holding both copies meanwhile).
    func reserveMapped(frame total: Int) {
        let unread = writeIndex - readIndex
        guard total > unread, capacity - readIndex < total + Self.readSlack else { return }
        moveUnread(toCapacity: (total + Self.readSlack + Self.pageSize - 1) & ~(Self.pageSize - 1), mapping: true)
    }

    /// Room for a frame of `total` bytes that starts with the unread bytes, allocated at that
    /// size (plus one read's worth) when the buffer must grow: a large request whose length is
    /// declared up front is not copied at every doubling on its way in.
    func reserve(frame total: Int) {
        let unread = writeIndex - readIndex
        guard total > unread, capacity - readIndex < total + Self.readSlack else { return }
        moveUnread(toCapacity: total + Self.readSlack)
    }

    /// Gives the buffer `capacity` bytes of memory again after its memory was taken (`take`,
    /// `swapContents`), so that it does not grow back one doubling and one copy at a time.
    func restore(capacity wanted: Int) {
        guard capacity < wanted else { return }
        moveUnread(toCapacity: wanted)
    }

    /// What one socket read asks room for (`Syscall.read`).
    static let readSlack = 16384

    /// An empty buffer about to take `count` bytes in one append, with `headroom` bytes kept
    /// free in front of them for `prepend`.
    func reserve(_ count: Int, headroom: Int) {
        guard isEmpty else { return }
        if capacity < headroom + count {
            freeStorage()
            storage = nil
            capacity = 0
            let block = Self.allocateBlock(headroom + count)
            guard let memory = block.memory else { fatalError("out of memory for a \(count) byte reply") }
            storage = memory
            capacity = block.capacity
        }
        readIndex = headroom
        writeIndex = headroom
    }

    /// Puts `bytes` in front of the unread bytes when the free space there holds them.
    func prepend(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count <= readIndex, let storage else { return false }
        readIndex -= bytes.count
        if bytes.count > 0 { (storage + readIndex).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
        return true
    }

    /// Exchanges the two buffers' memory and contents: a large reply held in a slot becomes the
    /// client's output without being copied.
    func swapContents(with other: ByteBuffer) {
        swap(&storage, &other.storage)
        swap(&capacity, &other.capacity)
        swap(&readIndex, &other.readIndex)
        swap(&writeIndex, &other.writeIndex)
        swap(&isMapped, &other.isMapped)
    }

    /// Records that `count` bytes were written into the space from `reserve`.
    func commit(_ count: Int) { writeIndex += count }

    var writableCount: Int { capacity - writeIndex }

    func append(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        let target = reserve(bytes.count)
        target.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        writeIndex += bytes.count
    }

    func append(_ literal: StaticString) {
        append(UnsafeRawBufferPointer(start: literal.utf8Start, count: literal.utf8CodeUnitCount))
    }

    func append(_ text: String) {
        var text = text
        text.withUTF8 { append(UnsafeRawBufferPointer($0)) }
    }

    func append(byte: UInt8) {
        let target = reserve(1)
        target.storeBytes(of: byte, as: UInt8.self)
        writeIndex += 1
    }

    func consume(_ count: Int) {
        readIndex += count
        if readIndex == writeIndex {
            readIndex = 0
            writeIndex = 0
        }
    }

    /// An empty buffer takes `source`'s memory with its first `count` unread bytes (a large
    /// request or reply, not copied); `source` keeps, in fresh memory, what follows its first
    /// `used` bytes (`used` ≥ `count`: the frame may end in bytes that are dropped).
    func take(_ count: Int, of source: ByteBuffer, used: Int) {
        swapContents(with: source)
        if readableCount > used { source.append(UnsafeRawBufferPointer(rebasing: readable[used...])) }
        writeIndex = readIndex + count
    }

    /// Gives the whole pages under the unread bytes `from..<offset` back to the kernel (`from`:
    /// where the previous call ended, or 0); the
    /// memory stays allocated and those bytes read as zeros afterwards. For a buffer whose
    /// front is never read again (a kept reply copied out in order) and which is then freed.
    /// Only pages wholly inside the buffer's memory are touched: the allocator's bookkeeping
    /// before and after the block is not.
    func discardPages(from: Int, before offset: Int) {
        guard let storage else { return }
        let page = Self.pageSize
        let first = (Int(bitPattern: storage) + page - 1) & ~(page - 1)
        let start = max(first, (Int(bitPattern: storage) + readIndex + from) & ~(page - 1))
        let end = (Int(bitPattern: storage) + readIndex + min(offset, readableCount)) & ~(page - 1)
        guard end > start, let address = UnsafeMutableRawPointer(bitPattern: start) else { return }
        _ = madvise(address, end - start, Int32(MADV_DONTNEED))
    }

    static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    func removeAll() {
        readIndex = 0
        writeIndex = 0
    }

    /// Gives the memory back when the buffer is empty and larger than `keep` bytes.
    @inline(__always)
    func releaseIfIdle(keep: Int = 0) {
        guard capacity > keep, readIndex == writeIndex else { return }
        releaseStorage()
    }

    /// `releaseIfIdle(keep:)`, and also when the buffer holds just the 4 KiB it started with,
    /// which goes to the thread's small blocks for the next buffer that starts (a client's
    /// output between two replies: an idle client holds none, a busy one takes the block back
    /// from the cache, not from `malloc`).
    @inline(__always)
    func releaseIfIdleOrSmall(keep: Int) {
        guard readIndex == writeIndex else { return }
        if capacity == Int(TERN_BLOCKS_SMALL_SIZE), !isMapped, let storage {
            Self.freeBlock(storage, capacity: capacity)
            self.storage = nil
            capacity = 0
            readIndex = 0
            writeIndex = 0
        } else if capacity > keep {
            releaseStorage()
        }
    }

    @inline(never)
    private func releaseStorage() {
        freeStorage()
        storage = nil
        capacity = 0
        readIndex = 0
        writeIndex = 0
    }
}
