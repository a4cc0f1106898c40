#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Finds the first `\n` in `bytes[from..<to]`, for lines that are usually a few bytes long.
///
/// RESP's line replies are short (`+OK\r\n`, `:1\r\n`, `+QUEUED\r\n`): their first 16 bytes are
/// read two words at a time here, and only a longer line is left to `memchr`, whose call and
/// setup cost more than the whole scan of a short line (3 % of Tern's CPU under pipelined SET,
/// per `perf record`, when every `+OK` went through it). Memcached's lines (`VALUE <key> …`,
/// keys up to 250 bytes) are longer and keep `memchr` (`findNewline`).
@inlinable
func findNewlineInShortLine(_ bytes: UnsafeRawBufferPointer, from: Int, to: Int) -> Int? {
    guard to > from, let base = bytes.baseAddress else { return nil }
    var index = from
    let scanEnd = min(to, from &+ 16)
    // A word at a time while a whole word is inside the range: a byte equal to `\n` becomes zero
    // after the xor, and the lowest byte the zero-byte test flags is the first zero byte (its
    // false positives only ever sit above a true zero).
    while index &+ 8 <= scanEnd {
        let word = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: index, as: UInt64.self)) ^ 0x0a0a_0a0a_0a0a_0a0a
        let zeros = (word &- 0x0101_0101_0101_0101) & ~word & 0x8080_8080_8080_8080
        if zeros != 0 { return index &+ zeros.trailingZeroBitCount &>> 3 }
        index &+= 8
    }
    while index < scanEnd {
        if base.load(fromByteOffset: index, as: UInt8.self) == 0x0a { return index }
        index &+= 1
    }
    guard index < to, let found = memchr(base + index, 0x0a, to - index) else { return nil }
    return base.distance(to: UnsafeRawPointer(found))
}
