import XCTest
import CTernBlocks
import Foundation
@testable import TernServer

/// The buffer's memory paths: `malloc`/`realloc` growth, memory mapped for a large frame and
/// grown by `mremap`, memory handed between buffers, and pages given back under bytes already
/// copied out. Bytes are checked after every step.
final class ByteBufferTests: XCTestCase {
    private func pattern(_ count: Int, seed: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ seed) }
    }

    private func assertReadable(_ buffer: ByteBuffer, _ expected: [UInt8], _ message: String, line: UInt = #line) {
        XCTAssertEqual(buffer.readableCount, expected.count, message, line: line)
        XCTAssertTrue(Array(buffer.readable) == expected, message, line: line)
    }

    /// Growth keeps the unread bytes, whether the buffer is mostly full (realloc) or mostly
    /// consumed (fresh memory, unread bytes copied).
    func testGrowthKeepsUnreadBytes() {
        let buffer = ByteBuffer()
        let bytes = pattern(300_000, seed: 1)
        bytes.withUnsafeBytes { buffer.append(UnsafeRawBufferPointer(rebasing: $0[0..<5000])) }
        buffer.consume(4000)
        bytes.withUnsafeBytes { buffer.append(UnsafeRawBufferPointer(rebasing: $0[5000...])) }
        assertReadable(buffer, Array(bytes[4000...]), "after growth past a consumed front")
        buffer.consume(1)
        buffer.reserve(frame: 600_000)
        assertReadable(buffer, Array(bytes[4001...]), "after reserve(frame:)")
        XCTAssertGreaterThanOrEqual(buffer.capacity, 600_000)
    }

    /// A mapped frame grows by remapping as more of its length is declared, keeps its bytes,
    /// goes with its memory to another buffer, and is freed by whichever buffer holds it.
    func testMappedFrameGrowsAndMovesWithItsBytes() {
        let buffer = ByteBuffer()
        let bytes = pattern(3 << 20, seed: 7)
        bytes.withUnsafeBytes { buffer.append(UnsafeRawBufferPointer(rebasing: $0[0..<300_000])) }
        buffer.consume(10)
        buffer.reserveMapped(frame: 1 << 20)
        assertReadable(buffer, Array(bytes[10..<300_000]), "after mapping")
        bytes.withUnsafeBytes { buffer.append(UnsafeRawBufferPointer(rebasing: $0[300_000..<(2 << 20)])) }
        buffer.reserveMapped(frame: 3 << 20)
        bytes.withUnsafeBytes { buffer.append(UnsafeRawBufferPointer(rebasing: $0[(2 << 20)...])) }
        assertReadable(buffer, Array(bytes[10...]), "after remapped growth")
        let taker = ByteBuffer()
        taker.take(1 << 20, of: buffer, used: 1 << 20)
        assertReadable(taker, Array(bytes[10..<((1 << 20) + 10)]), "taken")
        assertReadable(buffer, Array(bytes[((1 << 20) + 10)...]), "left behind")
        taker.consume(taker.readableCount)
        taker.releaseIfIdle()
        XCTAssertEqual(taker.capacity, 0)
        // Memory given back and taken again through the plain path.
        taker.append(UnsafeRawBufferPointer(start: bytes.withUnsafeBytes { $0.baseAddress }, count: 0))
        bytes.withUnsafeBytes { taker.append(UnsafeRawBufferPointer(rebasing: $0[0..<100])) }
        assertReadable(taker, Array(bytes[0..<100]), "malloc again after munmap")
    }

    /// Pages under bytes already copied out read as zeros; the page holding the boundary and
    /// everything after it keep their bytes.
    func testDiscardedPagesAreOnlyThoseWhollyBeforeTheOffset() {
        let buffer = ByteBuffer()
        let bytes = pattern(2 << 20, seed: 3)
        buffer.reserveMapped(frame: bytes.count)
        bytes.withUnsafeBytes { buffer.append($0) }
        let page = ByteBuffer.pageSize
        let offset = 5 * page + 123
        buffer.discardPages(from: 0, before: offset)
        let after = Array(buffer.readable)
        XCTAssertTrue(after[0..<(5 * page)].allSatisfy { $0 == 0 }, "whole pages before the offset discarded")
        XCTAssertTrue(after[(5 * page)...] == bytes[(5 * page)...], "the boundary page and what follows kept")
        buffer.discardPages(from: offset, before: 9 * page)
        let later = Array(buffer.readable)
        XCTAssertTrue(later[0..<(9 * page)].allSatisfy { $0 == 0 }, "the boundary page goes with the next step")
        XCTAssertTrue(later[(9 * page)...] == bytes[(9 * page)...])
    }

    /// A large block a buffer gives back is kept by a caching thread and taken by the next
    /// buffer that needs about that much (a small buffer growing large copies its bytes into
    /// it); a block much larger than asked for is not taken; a block survives one sweep and is
    /// freed by the next.
    func testLargeBlocksAreReusedAndSweptWhenUnused() {
        tern_blocks_enable()
        defer { tern_blocks_release_all() }
        XCTAssertEqual(tern_blocks_cached_bytes(), 0)
        var first: ByteBuffer? = ByteBuffer()
        let value = pattern(1 << 20, seed: 3)
        first!.reserve(frame: value.count)
        value.withUnsafeBytes { first!.append($0) }
        assertReadable(first!, value, "the first large buffer")
        let memory = first!.storage, capacity = first!.capacity
        first = nil
        XCTAssertEqual(tern_blocks_cached_bytes(), capacity, "given back on deinit")

        let second = ByteBuffer()
        let head = pattern(3000, seed: 4)
        head.withUnsafeBytes { second.append($0) }
        second.reserve(frame: 1 << 20)
        XCTAssertEqual(second.storage, memory, "the cached block taken")
        XCTAssertEqual(second.capacity, capacity)
        XCTAssertEqual(tern_blocks_cached_bytes(), 0)
        assertReadable(second, head, "bytes copied into the cached block")
        second.removeAll()
        second.releaseIfIdle()
        XCTAssertEqual(tern_blocks_cached_bytes(), capacity)

        let small = ByteBuffer()
        small.reserve(frame: 300_000)
        withExtendedLifetime(small) {
            XCTAssertNotEqual(small.storage, memory, "a block over twice the size asked for is not taken")
            XCTAssertEqual(tern_blocks_cached_bytes(), capacity)
        }

        tern_blocks_sweep()
        XCTAssertEqual(tern_blocks_cached_bytes(), capacity, "given back since the last sweep: kept")
        tern_blocks_sweep()
        XCTAssertEqual(tern_blocks_cached_bytes(), 0, "not taken for a whole sweep: freed")
    }

    /// A large buffer that fills up and grows takes a cached block too (its bytes copied, its
    /// old block cached in turn) instead of `realloc`, whose new pages would fault in.
    func testAGrowingLargeBufferTakesACachedBlock() {
        tern_blocks_enable()
        defer { tern_blocks_release_all() }
        let buffer = ByteBuffer()
        let bytes = pattern(600_000, seed: 5)
        bytes.withUnsafeBytes { buffer.append(UnsafeRawBufferPointer(rebasing: $0[..<300_000])) }
        let first = buffer.capacity
        XCTAssertEqual(first, 1 << 19)
        let spare = malloc(1 << 20)!
        XCTAssertEqual(tern_blocks_give(spare, 1 << 20), 1)
        bytes.withUnsafeBytes { buffer.append(UnsafeRawBufferPointer(rebasing: $0[300_000...])) }
        XCTAssertEqual(buffer.storage, spare, "grown into the cached block")
        XCTAssertEqual(buffer.capacity, 1 << 20)
        assertReadable(buffer, bytes, "bytes copied across")
        XCTAssertEqual(tern_blocks_cached_bytes(), first, "the old block cached in turn")
    }

    /// A buffer's first 4 KiB come from the thread's small blocks when there is one, and go back
    /// there when the buffer is written out (`releaseIfIdleOrSmall`); a buffer grown past 4 KiB
    /// stays up to the limit; a sweep with no small block taken since the previous one frees
    /// them all.
    func testSmallBlocksGoBackWhenTheOutputIsWrittenOut() {
        tern_blocks_enable()
        defer { tern_blocks_release_all() }
        let output = ByteBuffer()
        let reply = pattern(100, seed: 7)
        reply.withUnsafeBytes { output.append($0) }
        XCTAssertEqual(output.capacity, Int(TERN_BLOCKS_SMALL_SIZE))
        let block = output.storage
        output.consume(100)
        output.releaseIfIdleOrSmall(keep: 65536)
        XCTAssertNil(output.storage, "written out: its block given back")
        XCTAssertEqual(tern_blocks_small_count(), 1)
        let other = ByteBuffer()
        reply.withUnsafeBytes { other.append($0) }
        XCTAssertEqual(other.storage, block, "the next buffer to start takes it")
        XCTAssertEqual(tern_blocks_small_count(), 0)
        assertReadable(other, reply, "bytes in the reused block")

        let larger = pattern(10_000, seed: 8)
        larger.withUnsafeBytes { output.append($0) }
        XCTAssertGreaterThan(output.capacity, Int(TERN_BLOCKS_SMALL_SIZE))
        output.consume(10_000)
        output.releaseIfIdleOrSmall(keep: 65536)
        XCTAssertNotNil(output.storage, "a grown buffer under the limit is kept")

        other.consume(100)
        other.releaseIfIdleOrSmall(keep: 65536)
        XCTAssertEqual(tern_blocks_small_count(), 1)
        tern_blocks_sweep()
        XCTAssertEqual(tern_blocks_small_count(), 1, "one was taken since the last sweep: kept")
        tern_blocks_sweep()
        XCTAssertEqual(tern_blocks_small_count(), 0, "none taken since the previous sweep: freed")
    }

    /// The cache's bounds: blocks of 256 KiB to 8 MiB, 32 MiB and 16 blocks in all; a thread
    /// that did not enable it keeps nothing.
    func testTheBlockCacheKeepsWithinItsBounds() {
        func give(_ size: Int) -> Bool {
            let block = malloc(size)!
            if tern_blocks_give(block, size) == 1 { return true }
            free(block)
            return false
        }
        XCTAssertFalse(give(1 << 20), "this thread does not cache yet")
        tern_blocks_enable()
        defer { tern_blocks_release_all() }
        XCTAssertFalse(give(Int(TERN_BLOCKS_MIN_BLOCK) - 1))
        XCTAssertFalse(give(Int(TERN_BLOCKS_MAX_BLOCK) + 1))
        for _ in 0..<8 { XCTAssertTrue(give(4 << 20)) }
        XCTAssertFalse(give(1 << 20), "32 MiB cached")
        tern_blocks_release_all()
        tern_blocks_enable()
        for _ in 0..<16 { XCTAssertTrue(give(1 << 20)) }
        XCTAssertFalse(give(1 << 20), "16 blocks cached")
        var capacity = 0
        XCTAssertNil(tern_blocks_take(2 << 20, &capacity), "none large enough")
        let taken = tern_blocks_take(600_000, &capacity)
        XCTAssertNotNil(taken)
        XCTAssertEqual(capacity, 1 << 20)
        free(taken)
        XCTAssertEqual(tern_blocks_cached_bytes(), 15 << 20)

        // Another thread has a cache of its own, off until it enables it.
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var kept = true
        Thread.detachNewThread {
            let block = malloc(1 << 20)!
            kept = tern_blocks_give(block, 1 << 20) == 1
            if !kept { free(block) }
            done.signal()
        }
        done.wait()
        XCTAssertFalse(kept)
        XCTAssertEqual(tern_blocks_cached_bytes(), 15 << 20)
    }
}
