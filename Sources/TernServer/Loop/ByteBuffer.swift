#if canImport(Glibc)
import Glibc
#endif
import TernCore

/// A growable byte buffer over raw memory: bytes are appended at `writeIndex` and consumed from
/// `readIndex`. Memory is allocated on first use and given back by `release()` when a
/// connection goes idle, so an idle connection holds no buffer.
///
/// Owned by exactly one connection on one worker thread; never shared. TernCore's encoders
/// write into it (`ByteSink`: `reserve` and `commit`), RESP elements included
/// (`appendArrayHeader`, `appendBulk`, `appendInteger`).
final class ByteBuffer: ByteSink {
    private(set) var storage: UnsafeMutableRawPointer?
    private(set) var capacity = 0
    private(set) var readIndex = 0
    private(set) var writeIndex = 0

    init() {}

    deinit { storage?.deallocate() }

    var readableCount: Int { writeIndex - readIndex }
    var isEmpty: Bool { writeIndex == readIndex }

    /// The unread bytes. Valid until the next mutation.
    var readable: UnsafeRawBufferPointer {
        guard let storage else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: storage + readIndex, count: writeIndex - readIndex)
    }

    /// Makes room for at least `count` more bytes and returns where they go.
    func reserve(_ count: Int) -> UnsafeMutableRawPointer {
        if capacity - writeIndex >= count { return storage! + writeIndex }
        let unread = writeIndex - readIndex
        if readIndex > 0, capacity - unread >= count, let storage {
            // Compact: move the unread bytes to the front.
            if unread > 0 { memmove(storage, storage + readIndex, unread) }
            readIndex = 0
            writeIndex = unread
            return storage + writeIndex
        }
        var newCapacity = max(capacity * 2, 4096)
        while newCapacity - unread < count { newCapacity *= 2 }
        moveUnread(toCapacity: newCapacity)
        return storage! + writeIndex
    }

    /// New memory of `newCapacity` bytes with the unread bytes at its front.
    private func moveUnread(toCapacity newCapacity: Int) {
        let unread = writeIndex - readIndex
        let newStorage = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 16)
        if unread > 0, let storage { newStorage.copyMemory(from: storage + readIndex, byteCount: unread) }
        storage?.deallocate()
        storage = newStorage
        capacity = newCapacity
        readIndex = 0
        writeIndex = unread
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
            storage?.deallocate()
            capacity = headroom + count
            storage = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
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

    func removeAll() {
        readIndex = 0
        writeIndex = 0
    }

    /// Gives the memory back when the buffer is empty and larger than `keep` bytes.
    func releaseIfIdle(keep: Int = 0) {
        guard readIndex == writeIndex, capacity > keep else { return }
        storage?.deallocate()
        storage = nil
        capacity = 0
        readIndex = 0
        writeIndex = 0
    }
}
