// MD5 (RFC 1321), enough for ketama points and the `md5` key hash. Not for security.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public struct MD5Digest: Sendable, Equatable {
    public var a: UInt32, b: UInt32, c: UInt32, d: UInt32

    /// The digest's 32-bit word `index` (0...3) read little-endian from its bytes, which is
    /// how libmemcached's ketama reads four points out of one digest.
    @inlinable
    public func word(_ index: Int) -> UInt32 {
        switch index {
        case 0: return a
        case 1: return b
        case 2: return c
        default: return d
        }
    }

    public var hexString: String {
        var out = ""
        for word in [a, b, c, d] {
            for shift in stride(from: 0, to: 32, by: 8) {
                let byte = UInt8(truncatingIfNeeded: word >> UInt32(shift))
                let hex = String(byte, radix: 16)
                out += hex.count == 1 ? "0" + hex : hex
            }
        }
        return out
    }
}

public enum MD5 {
    static let shifts: [UInt32] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
        5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20,
        4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
        6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ]
    static let constants: [UInt32] = (0..<64).map { i in
        // floor(abs(sin(i + 1)) * 2^32), RFC 1321 section 3.4.
        UInt32(truncatingIfNeeded: Int64((sin(Double(i + 1)).magnitude * 4_294_967_296.0).rounded(.down)))
    }

    public static func digest<Bytes: Sequence>(_ bytes: Bytes) -> MD5Digest where Bytes.Element == UInt8 {
        let array = Array(bytes)
        return array.withUnsafeBytes { digest($0) }
    }

    /// No heap allocation: the message block and the padded tail live on the stack.
    public static func digest(_ message: UnsafeRawBufferPointer) -> MD5Digest {
        var state = MD5Digest(a: 0x6745_2301, b: 0xefcd_ab89, c: 0x98ba_dcfe, d: 0x1032_5476)
        let length = message.count
        return withUnsafeTemporaryAllocation(of: UInt32.self, capacity: 16) { block in
            withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 128) { tail in
                var offset = 0
                while offset + 64 <= length {
                    for i in 0..<16 {
                        let p = offset + i * 4
                        block[i] = UInt32(message[p]) | UInt32(message[p + 1]) << 8
                            | UInt32(message[p + 2]) << 16 | UInt32(message[p + 3]) << 24
                    }
                    compress(&state, UnsafeBufferPointer(block))
                    offset += 64
                }
                // Padding: the rest, 0x80, zeros, 64-bit bit length.
                let tailCount = (length - offset) < 56 ? 64 : 128
                for i in 0..<tailCount { tail[i] = 0 }
                for i in 0..<(length - offset) { tail[i] = message[offset + i] }
                tail[length - offset] = 0x80
                let bitLength = UInt64(length) &* 8
                for i in 0..<8 { tail[tailCount - 8 + i] = UInt8(truncatingIfNeeded: bitLength >> UInt64(8 * i)) }
                var tailOffset = 0
                while tailOffset < tailCount {
                    for i in 0..<16 {
                        let p = tailOffset + i * 4
                        block[i] = UInt32(tail[p]) | UInt32(tail[p + 1]) << 8 | UInt32(tail[p + 2]) << 16 | UInt32(tail[p + 3]) << 24
                    }
                    compress(&state, UnsafeBufferPointer(block))
                    tailOffset += 64
                }
                return state
            }
        }
    }

    static func compress(_ state: inout MD5Digest, _ block: UnsafeBufferPointer<UInt32>) {
        var a = state.a, b = state.b, c = state.c, d = state.d
        for i in 0..<64 {
            var f: UInt32
            var g: Int
            switch i {
            case 0..<16: f = (b & c) | (~b & d); g = i
            case 16..<32: f = (d & b) | (~d & c); g = (5 * i + 1) % 16
            case 32..<48: f = b ^ c ^ d; g = (3 * i + 5) % 16
            default: f = c ^ (b | ~d); g = (7 * i) % 16
            }
            f = f &+ a &+ constants[i] &+ block[g]
            a = d
            d = c
            c = b
            let s = shifts[i]
            b = b &+ ((f &<< s) | (f &>> (32 - s)))
        }
        state.a &+= a
        state.b &+= b
        state.c &+= c
        state.d &+= d
    }
}
