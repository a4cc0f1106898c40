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
        /// The position of the next key of the same group (-1 after its last).
        var next: Int32 = -1
    }

    /// The groups in the order their first key came, and for each (by that order) its first
    /// and last key's positions and its number of keys; `ordinals[group]` is the group's place
    /// in that order (-1 for none). A group's keys are walked along `Entry.next`, so writing
    /// the parts costs the keys once, whatever the number of groups: scanning every key for
    /// each group held a worker for seconds on a cluster pool, where the groups are hash slots
    /// (200,000 keys over 16,384 slots: 7 s, every other client of the worker waiting; cluster
    /// sweep 31).
    private(set) var groups: [Int32] = []
    struct Chain {
        var head: Int32
        var tail: Int32
        var count: Int32
    }
    /// The first `groups.count` are the request's (manually managed, as `entries`).
    private var chains: UnsafeMutablePointer<Chain>?
    private var chainCapacity = 0
    /// Indexed by group (a server position, or a hash slot below 16,384); grown to the largest
    /// group seen, all -1 between requests.
    private var ordinals: UnsafeMutablePointer<Int32>?
    private var ordinalCapacity = 0

    /// Only this object reaches the storage; only the first `count` entries are the request's.
    private var entries: UnsafeMutablePointer<Entry>?
    private var capacity = 0
    private(set) var count = 0
    static let keptCapacity = 4096

    deinit {
        entries?.deallocate()
        ordinals?.deallocate()
        chains?.deallocate()
    }

    /// Starts a request expected to have `expected` keys: room for them is made at once (an
    /// append past it still grows the storage).
    @inline(__always)
    func begin(expected: Int) {
        count = 0
        if !groups.isEmpty { forgetGroups() }
        if expected > capacity { grow(to: expected) }
    }

    /// Ends the request: storage for more than `keptCapacity` keys is freed (an idle worker
    /// does not keep one huge request's).
    @inline(__always)
    func end() {
        if !groups.isEmpty { forgetGroups() }
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
        if group >= 0 { link(count, group: group) }
        count += 1
    }

    /// Chains the key at `position` behind the last one of its group.
    @inline(__always)
    private func link(_ position: Int, group: Int32) {
        let index = Int(group)
        if index >= ordinalCapacity { growOrdinals(to: index + 1) }
        // `growOrdinals` made `ordinals` hold `index`.
        let ordinal = ordinals.unsafelyUnwrapped[index]
        if ordinal < 0 {
            let place = groups.count
            if place == chainCapacity { growChains() }
            ordinals.unsafelyUnwrapped[index] = Int32(place)
            groups.append(group)
            // `growChains` made room for this one.
            chains.unsafelyUnwrapped[place] = Chain(head: Int32(position), tail: Int32(position), count: 1)
        } else {
            let chain = chains.unsafelyUnwrapped + Int(ordinal)
            entries.unsafelyUnwrapped[Int(chain.pointee.tail)].next = Int32(position)
            chain.pointee.tail = Int32(position)
            chain.pointee.count += 1
        }
    }

    /// The number of keys in `group` (one of `groups`).
    func count(inGroup group: Int32) -> Int {
        Int(chains.unsafelyUnwrapped[Int(ordinals.unsafelyUnwrapped[Int(group)])].count)
    }

    /// The position of `group`'s first key (one of `groups`); the next ones follow `Entry.next`.
    func firstPosition(inGroup group: Int32) -> Int {
        Int(chains.unsafelyUnwrapped[Int(ordinals.unsafelyUnwrapped[Int(group)])].head)
    }

    private func forgetGroups() {
        for group in groups { ordinals.unsafelyUnwrapped[Int(group)] = -1 }
        groups.removeAll(keepingCapacity: groups.capacity <= Self.keptCapacity)
        // (As for `entries`: one request over thousands of slots leaves no chains behind.)
        if chainCapacity > Self.keptCapacity {
            chains?.deallocate()
            chains = nil
            chainCapacity = 0
        }
    }

    private func growChains() {
        chainCapacity = max(16, chainCapacity * 2)
        chains = moved(chains, count: groups.count, toCapacity: chainCapacity)
    }

    private func growOrdinals(to wanted: Int) {
        let larger = max(wanted, ordinalCapacity * 2, 16)
        let grown = UnsafeMutablePointer<Int32>.allocate(capacity: larger)
        grown.initialize(repeating: -1, count: larger)
        if let ordinals {
            grown.update(from: ordinals, count: ordinalCapacity)
            ordinals.deallocate()
        }
        ordinals = grown
        ordinalCapacity = larger
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
