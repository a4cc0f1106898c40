// twemproxy's twelve key hashes, bit-compatible with nutcracker 0.5.0 on x86.
//
// Several of them read the key through a (signed) `char`, so on x86 a byte >= 0x80 is
// sign-extended before it is mixed in. `signExtended` reproduces that on every platform.

/// The key hashes a pool can name in `hash:`.
public enum HashFunction: String, CaseIterable, Sendable {
    case oneAtATime = "one_at_a_time"
    case md5
    case crc16
    case crc32
    case crc32a
    case fnv1_64
    case fnv1a_64
    case fnv1_32
    case fnv1a_32
    case hsieh
    case murmur
    case jenkins

    /// Hashes `bytes` the way twemproxy's function of the same name does.
    @inlinable
    public func hash(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        switch self {
        case .oneAtATime: return KeyHash.oneAtATime(bytes)
        case .md5: return KeyHash.md5(bytes)
        case .crc16: return KeyHash.crc16(bytes)
        case .crc32: return KeyHash.crc32(bytes)
        case .crc32a: return KeyHash.crc32a(bytes)
        case .fnv1_64: return KeyHash.fnv1_64(bytes)
        // Despite its name, libmemcached's fnv1a_64 keeps a 32-bit state.
        case .fnv1a_64: return KeyHash.fnv32(bytes, basis: 0x8422_2325, prime: 0x1b3, xorFirst: true)
        case .fnv1_32: return KeyHash.fnv32(bytes, basis: 2_166_136_261, prime: 16_777_619, xorFirst: false)
        case .fnv1a_32: return KeyHash.fnv32(bytes, basis: 2_166_136_261, prime: 16_777_619, xorFirst: true)
        case .hsieh: return KeyHash.hsieh(bytes)
        case .murmur: return KeyHash.murmur(bytes)
        case .jenkins: return KeyHash.jenkins(bytes)
        }
    }

    /// Convenience for tests and the control plane.
    public func hash<Bytes: Sequence>(_ bytes: Bytes) -> UInt32 where Bytes.Element == UInt8 {
        let array = Array(bytes)
        return array.withUnsafeBytes { hash($0) }
    }
}

/// The hash implementations. Each takes the key's bytes and returns twemproxy's 32-bit value.
public enum KeyHash {
    /// A byte read through x86's signed `char` and widened to 32 bits.
    @inline(__always)
    @usableFromInline static func signExtended(_ byte: UInt8) -> UInt32 {
        UInt32(bitPattern: Int32(Int8(bitPattern: byte)))
    }

    @inlinable
    public static func oneAtATime(_ key: UnsafeRawBufferPointer) -> UInt32 {
        var value: UInt32 = 0
        for byte in key {
            value &+= signExtended(byte)
            value &+= value &<< 10
            value ^= value &>> 6
        }
        value &+= value &<< 3
        value ^= value &>> 11
        value &+= value &<< 15
        return value
    }

    /// The first four digest bytes, little-endian (libmemcached's `hashkit_md5`).
    public static func md5(_ key: UnsafeRawBufferPointer) -> UInt32 {
        let digest = MD5.digest(key)
        return digest.word(0)
    }

    /// CRC-16/XMODEM kept in an unmasked 32-bit state, as twemproxy does.
    @inlinable
    public static func crc16(_ key: UnsafeRawBufferPointer) -> UInt32 {
        var crc: UInt32 = 0
        let table = CRCTables.crc16
        for byte in key {
            let index = Int(((crc &>> 8) ^ signExtended(byte)) & 0xff)
            crc = (crc &<< 8) ^ UInt32(table[index])
        }
        return crc
    }

    /// libmemcached's "crc32": the top 15 bits of the low half of CRC-32.
    @inlinable
    public static func crc32(_ key: UnsafeRawBufferPointer) -> UInt32 {
        let crc = crc32a(key)
        return (crc &>> 16) & 0x7fff
    }

    /// Plain CRC-32 (IEEE, reflected).
    @inlinable
    public static func crc32a(_ key: UnsafeRawBufferPointer) -> UInt32 {
        var crc: UInt32 = ~0
        let table = CRCTables.crc32
        for byte in key {
            crc = table[Int((crc ^ UInt32(byte)) & 0xff)] ^ (crc &>> 8)
        }
        return ~crc
    }

    @inlinable
    public static func fnv1_64(_ key: UnsafeRawBufferPointer) -> UInt32 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in key {
            hash = hash &* 0x100_0000_01b3
            hash ^= UInt64(bitPattern: Int64(Int8(bitPattern: byte)))
        }
        return UInt32(truncatingIfNeeded: hash)
    }

    /// The three FNV variants with a 32-bit state: FNV-1 multiplies then mixes the byte in,
    /// FNV-1a mixes first. Always inlined, so each caller's constants fold and `xorFirst`
    /// is no branch per byte.
    @inlinable @inline(__always)
    static func fnv32(_ key: UnsafeRawBufferPointer, basis: UInt32, prime: UInt32, xorFirst: Bool) -> UInt32 {
        var hash = basis
        for byte in key {
            if xorFirst {
                hash ^= signExtended(byte)
                hash = hash &* prime
            } else {
                hash = hash &* prime
                hash ^= signExtended(byte)
            }
        }
        return hash
    }

    /// Paul Hsieh's SuperFastHash, started from 0 rather than the length.
    public static func hsieh(_ key: UnsafeRawBufferPointer) -> UInt32 {
        let count = key.count
        if count == 0 { return 0 }
        @inline(__always) func get16(_ at: Int) -> UInt32 {
            UInt32(key[at + 1]) << 8 + UInt32(key[at])
        }
        var hash: UInt32 = 0
        var position = 0
        for _ in 0..<(count >> 2) {
            hash &+= get16(position)
            let tmp = (get16(position + 2) &<< 11) ^ hash
            hash = (hash &<< 16) ^ tmp
            position += 4
            hash &+= hash &>> 11
        }
        switch count & 3 {
        case 3:
            hash &+= get16(position)
            hash ^= hash &<< 16
            hash ^= signExtended(key[position + 2]) &<< 18
            hash &+= hash &>> 11
        case 2:
            hash &+= get16(position)
            hash ^= hash &<< 11
            hash &+= hash &>> 17
        case 1:
            hash &+= UInt32(key[position])
            hash ^= hash &<< 10
            hash &+= hash &>> 1
        default:
            break
        }
        hash ^= hash &<< 3
        hash &+= hash &>> 5
        hash ^= hash &<< 4
        hash &+= hash &>> 17
        hash ^= hash &<< 25
        hash &+= hash &>> 6
        return hash
    }

    /// MurmurHash2 seeded with `0xdeadbeef * length`.
    public static func murmur(_ key: UnsafeRawBufferPointer) -> UInt32 {
        let multiplier: UInt32 = 0x5bd1_e995
        let length = UInt32(truncatingIfNeeded: key.count)
        var h: UInt32 = (0xdead_beef &* length) ^ length
        var position = 0
        var remaining = key.count
        while remaining >= 4 {
            var k = UInt32(key[position]) | UInt32(key[position + 1]) << 8
                | UInt32(key[position + 2]) << 16 | UInt32(key[position + 3]) << 24
            k = k &* multiplier
            k ^= k &>> 24
            k = k &* multiplier
            h = h &* multiplier
            h ^= k
            position += 4
            remaining -= 4
        }
        if remaining == 3 { h ^= UInt32(key[position + 2]) << 16 }
        if remaining >= 2 { h ^= UInt32(key[position + 1]) << 8 }
        if remaining >= 1 {
            h ^= UInt32(key[position])
            h = h &* multiplier
        }
        h ^= h &>> 13
        h = h &* multiplier
        h ^= h &>> 15
        return h
    }

    /// Bob Jenkins' lookup3 `hashlittle` with initval 13 (read byte-wise; equal to the word-wise
    /// path on little-endian machines).
    public static func jenkins(_ key: UnsafeRawBufferPointer) -> UInt32 {
        @inline(__always) func rot(_ x: UInt32, _ k: UInt32) -> UInt32 { (x &<< k) | (x &>> (32 - k)) }
        var a: UInt32 = 0xdead_beef &+ UInt32(truncatingIfNeeded: key.count) &+ 13
        var b = a
        var c = a
        var position = 0
        var length = key.count
        @inline(__always) func word(_ at: Int, _ available: Int) -> UInt32 {
            var value: UInt32 = 0
            for i in 0..<min(4, max(0, available)) { value |= UInt32(key[at + i]) << (8 * UInt32(i)) }
            return value
        }
        while length > 12 {
            a &+= word(position, 4)
            b &+= word(position + 4, 4)
            c &+= word(position + 8, 4)
            a &-= c; a ^= rot(c, 4); c &+= b
            b &-= a; b ^= rot(a, 6); a &+= c
            c &-= b; c ^= rot(b, 8); b &+= a
            a &-= c; a ^= rot(c, 16); c &+= b
            b &-= a; b ^= rot(a, 19); a &+= c
            c &-= b; c ^= rot(b, 4); b &+= a
            length -= 12
            position += 12
        }
        if length == 0 { return c }
        a &+= word(position, length)
        b &+= word(position + 4, length - 4)
        c &+= word(position + 8, length - 8)
        c ^= b; c &-= rot(b, 14)
        a ^= c; a &-= rot(c, 11)
        b ^= a; b &-= rot(a, 25)
        c ^= b; c &-= rot(b, 16)
        a ^= c; a &-= rot(c, 4)
        b ^= a; b &-= rot(a, 14)
        c ^= b; c &-= rot(b, 24)
        return c
    }

    /// Redis Cluster's slot hash: CRC-16/XMODEM masked to 16 bits.
    @inlinable
    public static func crc16Xmodem(_ key: UnsafeRawBufferPointer) -> UInt16 {
        var crc: UInt16 = 0
        let table = CRCTables.crc16
        for byte in key {
            crc = (crc &<< 8) ^ table[Int(UInt8(truncatingIfNeeded: crc &>> 8) ^ byte)]
        }
        return crc
    }
}

/// Lookup tables, computed once.
public enum CRCTables {
    public static let crc16: [UInt16] = (0..<256).map { index in
        var crc = UInt16(index) << 8
        for _ in 0..<8 { crc = (crc & 0x8000) != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        return crc
    }
    public static let crc32: [UInt32] = (0..<256).map { index in
        var crc = UInt32(index)
        for _ in 0..<8 { crc = (crc & 1) != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
        return crc
    }
}
