import TernCore

/// A Redis multi-key request's keys as it is split: for each key (or key and value), its
/// argument position and its group (the server's position, or in a cluster pool the hash slot;
/// -1 for a repeated key, which is not sent). One per worker, confined to its thread, used by
/// one request at a time (`begin`, `append` per key, then read); reused, so that splitting a
/// request allocates nothing once the worker has split one as large.
///
/// Manually managed storage, as `RespArguments`'s spans: an append is a store, without an
/// array's uniqueness check and write-back per key. Grown by doubling; storage for more than
/// `keptCapacity` entries is freed by `end` (one huge MGET leaves none behind).
final class SplitKeys {
    struct Entry {
        /// The key's argument position (arguments are at most `RespLimits.maxArguments`).
        var argument: Int32
        var group: Int32
    }

    /// Only this object reaches the storage; only the first `count` entries are the request's.
    private var entries: UnsafeMutablePointer<Entry>?
    private var capacity = 0
    private(set) var count = 0
    static let keptCapacity = 4096

    deinit { entries?.deallocate() }

    /// Starts a request expected to have `expected` keys: room for them is made at once (an
    /// append past it still grows the storage).
    @inline(__always)
    func begin(expected: Int) {
        count = 0
        if expected > capacity { grow(to: expected) }
    }

    /// Ends the request: storage for more than `keptCapacity` keys is freed (an idle worker
    /// does not keep one huge request's).
    @inline(__always)
    func end() {
        guard capacity > Self.keptCapacity else { return }
        entries?.deallocate()
        entries = nil
        capacity = 0
        count = 0
    }

    @inline(__always)
    func append(argument: Int, group: Int32) {
        if count == capacity { grow(to: max(16, capacity * 2)) }
        // `grow` made room for this entry.
        entries.unsafelyUnwrapped[count] = Entry(argument: Int32(truncatingIfNeeded: argument), group: group)
        count += 1
    }

    @inline(__always)
    subscript(position: Int) -> Entry {
        precondition(position >= 0 && position < count, "key \(position) of \(count)")
        return entries.unsafelyUnwrapped[position]
    }

    private func grow(to wanted: Int) {
        capacity = max(wanted, 16)
        entries = moved(entries, count: count, toCapacity: capacity)
    }
}
