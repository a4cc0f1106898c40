/// Finds the keys a multi-key read names more than once (`get k k k`, `MGET k k k`), so that
/// each is asked of its server once and Tern copies a repeated key's value into the reply
/// itself (`ReplySlot.KeyEntry.repeats`). Without it one `get` line repeating a 1 MiB key
/// 30,000 times (210 KB) made its server send 30 GB across the connection that other clients
/// of that server share, ahead of their requests, after Tern had refused the reply.
///
/// A fixed table of the request's key positions by hash, stamped with a generation per
/// request (nothing is cleared between requests, nothing is allocated after the first). It
/// may forget: a key whose entry a later key took is not found again, and is sent again as
/// before. A repeated key is found each time its entry still holds it, so a request that
/// repeats a few keys many times is asked once per key; with a seed per worker, which keys
/// share an entry cannot be chosen from outside. One per worker (`FrontendLoop.
/// withRepeatedKeys`), used by one request at a time.
struct RepeatedKeys {
    /// Generation in the high 32 bits, key position in the low 32; another generation's entry
    /// is an empty one.
    private var table: [UInt64] = []
    private var generation: UInt64 = 0
    private var seed: UInt64 = 0
    static let entries = 4096

    /// Starts a request (the first one makes the table: 32 KiB, kept by the worker).
    mutating func begin() {
        if table.isEmpty {
            table = [UInt64](repeating: 0, count: Self.entries)
            seed = UInt64.random(in: .min ... .max)
        }
        generation &+= 1
        if generation == 1 << 32 {
            // Wrapped: entries of every earlier generation must read as empty.
            for index in table.indices { table[index] = 0 }
            generation = 1
        }
    }

    /// The position of an earlier key of this request equal to `key` (`isEqual` compares the
    /// key at a position with it), or nil, and then `key` is recorded at `position`.
    @inline(__always)
    mutating func earlier(_ key: UnsafeRawBufferPointer, position: Int, isEqual: (Int) -> Bool) -> Int? {
        let index = Int(truncatingIfNeeded: hash(key)) & (Self.entries - 1)
        let stamp = generation << 32
        let entry = table[index]
        if entry & ~0xffff_ffff == stamp, isEqual(Int(entry & 0xffff_ffff)) { return Int(entry & 0xffff_ffff) }
        table[index] = stamp | UInt64(truncatingIfNeeded: position)
        return nil
    }

    /// A key's hash: eight bytes at a time, multiplied and folded, from the worker's seed.
    @inline(__always)
    private func hash(_ key: UnsafeRawBufferPointer) -> UInt64 {
        var hash = seed ^ UInt64(key.count)
        var offset = 0
        while offset + 8 <= key.count {
            hash = (hash ^ key.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) &* 0xBF58_476D_1CE4_E5B9
            hash ^= hash >> 31
            offset += 8
        }
        if offset < key.count {
            var tail: UInt64 = 0
            for byte in key[offset...].reversed() { tail = tail << 8 | UInt64(byte) }
            hash = (hash ^ tail) &* 0x94D0_49BB_1331_11EB
            hash ^= hash >> 29
        }
        return (hash &* 0x9E37_79B9_7F4A_7C15) >> 40
    }
}
