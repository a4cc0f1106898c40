import XCTest
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
}
