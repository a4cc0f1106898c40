/// Finds the keys a multi-key read names more than once (`get k k k`, `MGET k k k`), so that
/// each is asked of its server once and Tern copies a repeated key's value into the reply
/// itself (`ReplySlot.KeyEntry.repeats`). Without it one `get` line repeating a 1 MiB key
/// 30,000 times (210 KB) made its server send 30 GB across the connection that other clients
/// of that server share, ahead of their requests, after Tern had refused the reply.
///
/// A fixed table of the request's key positions by hash, stamped with a generation per
/// request: nothing is cleared between requests, nothing is allocated per request. It may
/// forget: a key whose entry a later key took before the key was named again is not found,
/// and is sent again as before. Once named again a key keeps its entry, so a request that
/// repeats a key many times asks for it at most a few times whatever it names in between;
/// with a seed per worker, which keys share an entry cannot be chosen from outside. One per worker, confined to its thread, used by one
/// request at a time (`begin`, then `earlier` for each key).
final class RepeatedKeys {
    /// `entries` words, each a generation in the high 32 bits, a flag (`repeated`) and a key
    /// position in the low 31 (another generation's entry is an empty one). Allocated with the worker's table and
    /// freed with it; only this object reaches it.
    /// Made by the first multi-key read (a worker that serves none, or has not yet, holds no
    /// memory for it: idle connections are measured with the workers' own memory).
    private var table: UnsafeMutablePointer<UInt64>?
    private var stamp: UInt64 = 0
    private let seed = UInt64.random(in: .min ... .max)
    static let entries = 4096

    deinit { table?.deallocate() }

    /// Starts a request.
    @inline(__always)
    func begin() {
        if table == nil { makeTable() }
        stamp &+= 1 << 32
        if stamp == 0 {
            // Wrapped: entries of every earlier generation must read as empty.
            table?.update(repeating: 0, count: Self.entries)
            stamp = 1 << 32
        }
    }

    /// The position of an earlier key of this request equal to `key` (`isEqual` compares the
    /// key at a position with it), or nil, and then `key` is recorded at `position`.
    @inline(__always)
    func earlier(_ key: UnsafeRawBufferPointer, position: Int, isEqual: (Int) -> Bool) -> Int? {
        // `begin` made the table.
        let slot = table.unsafelyUnwrapped + Int(truncatingIfNeeded: hash(key) >> 52)
        let entry = slot.pointee
        if entry & ~0xffff_ffff == stamp {
            let earlier = Int(entry & 0x7fff_ffff)
            if isEqual(earlier) {
                slot.pointee = entry | Self.repeated
                return earlier
            }
            // Another key holds the entry: one already repeated keeps it, so that keys named
            // between its repeats cannot push it out.
            if entry & Self.repeated != 0 { return nil }
        }
        slot.pointee = stamp | UInt64(truncatingIfNeeded: position) & 0x7fff_ffff
        return nil
    }

    @inline(never)
    private func makeTable() {
        let made = UnsafeMutablePointer<UInt64>.allocate(capacity: Self.entries)
        made.initialize(repeating: 0, count: Self.entries)
        table = made
    }

    /// An entry whose key has been named again (bit 31; positions use the 31 below).
    private static let repeated: UInt64 = 0x8000_0000

    /// A key's hash from the worker's seed: eight bytes at a time, the last word overlapping
    /// the one before it, short keys read as two overlapping halves (the top 12 bits are used).
    @inline(__always)
    private func hash(_ key: UnsafeRawBufferPointer) -> UInt64 {
        let count = key.count
        var hash = seed ^ UInt64(truncatingIfNeeded: count)
        if count >= 8 {
            var offset = 0
            while offset + 8 < count {
                hash = (hash ^ key.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) &* 0x9E37_79B9_7F4A_7C15
                offset += 8
            }
            hash ^= key.loadUnaligned(fromByteOffset: count - 8, as: UInt64.self)
        } else if count >= 4 {
            hash ^= UInt64(key.loadUnaligned(fromByteOffset: 0, as: UInt32.self)) << 32
                | UInt64(key.loadUnaligned(fromByteOffset: count - 4, as: UInt32.self))
        } else if count > 0 {
            hash ^= UInt64(key[0]) << 16 | UInt64(key[count / 2]) << 8 | UInt64(key[count - 1])
        }
        hash = (hash ^ hash >> 29) &* 0xBF58_476D_1CE4_E5B9
        return hash ^ hash >> 32
    }
}
