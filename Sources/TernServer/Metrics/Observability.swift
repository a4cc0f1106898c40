#if canImport(Glibc)
import Glibc
#endif
import CLibev
import TernCore

// What operators read about requests: per-command counts and latency, the slow log and the
// hot keys. Each is written by the worker threads and read by the control threads.

// MARK: - Per-command counters and latency

/// Requests and their latency (from the request being read to its reply being queued for the
/// client) per command, for one pool on one worker. The label space is the command table
/// (Redis) or memcached's commands, never client input.
///
/// One flat table of counters: written only by its worker thread with relaxed atomic
/// load/store pairs (plain moves on x86; no locked instruction), read by the control thread
/// with relaxed loads. `@unchecked Sendable` is scoped to that: every access to `values` goes
/// through `tern_counter_add`/`tern_counter_read`.
final class CommandStats: @unchecked Sendable {
    /// Per command: requests, latency sum (µs), then one count per latency bucket (+Inf last):
    /// 2 + 14 bounds + 1 (a literal, not derived from `latencyBucketBounds`: a derived static
    /// is a lazy global, checked on every request; `CommandStatsTests` checks they agree).
    static var fields: Int { 17 }
    /// Enough rows for either protocol: a reload may turn a pool's name over to the other one.
    static let rows = max(RedisCommandTable.commands.count, MemcacheCommand.allCases.count)
    /// `rows`, stored per table so the request path reads no lazy global.
    private let rowCount: Int
    private let values: UnsafeMutablePointer<Int>

    init() {
        rowCount = Self.rows
        values = UnsafeMutablePointer<Int>.allocate(capacity: Self.rows * Self.fields)
        values.initialize(repeating: 0, count: Self.rows * Self.fields)
    }

    deinit { values.deallocate() }

    @inline(__always)
    func record(_ command: Int, microseconds: Int) {
        guard command >= 0, command < rowCount else { return }
        let row = values + command * Self.fields
        tern_counter_add(row, 1)
        tern_counter_add(row + 1, microseconds)
        tern_counter_add(row + 2 + Self.bucket(microseconds), 1)
    }

    /// The position of `microseconds` in `latencyBucketBounds` (+Inf last), as compares
    /// against constants: no array read, no lazy-global check per request.
    @inline(__always)
    static func bucket(_ microseconds: Int) -> Int {
        if microseconds <= 1000 {
            return microseconds <= 100 ? (microseconds <= 50 ? 0 : 1) : microseconds <= 250 ? 2 : microseconds <= 500 ? 3 : 4
        }
        if microseconds <= 50_000 {
            return microseconds <= 5000 ? (microseconds <= 2500 ? 5 : 6) : microseconds <= 10_000 ? 7 : microseconds <= 25_000 ? 8 : 9
        }
        return microseconds <= 250_000 ? (microseconds <= 100_000 ? 10 : 11) : microseconds <= 500_000 ? 12 : microseconds <= 1_000_000 ? 13 : 14
    }

    func requests(_ command: Int) -> Int { tern_counter_read(values + command * Self.fields) }
    func latencySum(_ command: Int) -> Int { tern_counter_read(values + command * Self.fields + 1) }
    func bucket(_ command: Int, _ bucket: Int) -> Int { tern_counter_read(values + command * Self.fields + 2 + bucket) }

    /// The label of row `command` for a pool of this protocol.
    static func name(_ command: Int, isRedis: Bool) -> String? {
        if isRedis { return command < RedisCommandTable.commands.count ? RedisCommandTable.commands[command].name : nil }
        return MemcacheCommand(rawValue: UInt8(truncatingIfNeeded: command)).map(\.name)
    }
}

// MARK: - Hot keys

/// The most requested keys of a pool on one worker, estimated by Space-Saving (Metwally et al.)
/// over sampled requests: `capacity` counters, constant memory, and a key seen often enough is
/// never missed. Sampling (one key in 32 on average, at random intervals) keeps the cost off
/// most requests; the counts reported are scaled back by the sampling rate.
///
/// Laid out for the sampled path: a key is found through an open-addressing index of its hash
/// (it was found by a scan of every entry: under uniformly random keys, where every sample is
/// a new key, the scan was about 2 % of a pipelined request's instructions), an entry to
/// replace is one with the smallest count, looked for from where the last look ended (counts
/// only grow between two halvings, so the smallest count found stays the smallest until no
/// entry has it), and an evicted key's storage is reused, so a sample allocates nothing once
/// the sketch is full.
struct SpaceSaving: Sendable {
    struct Entry: Sendable {
        var key: [UInt8]
        var hash: UInt64
        var count: Int
        /// Overestimation bound: the count the evicted entry had when this key replaced it.
        var error: Int
    }

    let capacity: Int
    private var keys: [[UInt8]] = []
    private var hashes: [UInt64] = []
    private var counts: [Int] = []
    private var errors: [Int] = []
    /// Open addressing by hash, linear probing: an entry's position plus one, 0 for none. At
    /// most half full.
    private var index: [Int32]
    /// No entry has a count below this (valid once the sketch is full).
    private var smallestCount = 0
    /// Where the next look for an entry with `smallestCount` starts.
    private var cursor = 0

    init(capacity: Int) {
        self.capacity = capacity
        keys.reserveCapacity(capacity)
        hashes.reserveCapacity(capacity)
        counts.reserveCapacity(capacity)
        errors.reserveCapacity(capacity)
        var slots = 4
        while slots < capacity * 2 { slots *= 2 }
        index = [Int32](repeating: 0, count: slots)
    }

    var entries: [Entry] {
        keys.indices.map { Entry(key: keys[$0], hash: hashes[$0], count: counts[$0], error: errors[$0]) }
    }

    @inline(__always)
    private func home(_ hash: UInt64) -> Int { Int(truncatingIfNeeded: hash >> 32 ^ hash) & (index.count - 1) }

    /// The entry holding `key`, or -1.
    private func find(_ key: UnsafeRawBufferPointer, hash: UInt64) -> Int {
        var slot = home(hash)
        while true {
            let entry = Int(index[slot]) - 1
            if entry < 0 { return -1 }
            if hashes[entry] == hash, keys[entry].elementsEqual(key) { return entry }
            slot = (slot + 1) & (index.count - 1)
        }
    }

    private mutating func insertIndex(_ entry: Int) {
        var slot = home(hashes[entry])
        while index[slot] != 0 { slot = (slot + 1) & (index.count - 1) }
        index[slot] = Int32(entry + 1)
    }

    /// Takes `entry` out of the index, moving later entries of its probe run back into the gap
    /// (no tombstones: the index never fills with them).
    private mutating func removeIndex(_ entry: Int) {
        let mask = index.count - 1
        var slot = home(hashes[entry])
        while Int(index[slot]) - 1 != entry { slot = (slot + 1) & mask }
        var gap = slot
        var next = (gap + 1) & mask
        while index[next] != 0 {
            let wanted = home(hashes[Int(index[next]) - 1])
            // The entry at `next` may fill the gap when its home is not in (gap, next].
            if (next > gap && (wanted <= gap || wanted > next)) || (next < gap && wanted <= gap && wanted > next) {
                index[gap] = index[next]
                gap = next
            }
            next = (next + 1) & mask
        }
        index[gap] = 0
    }

    mutating func add(_ key: UnsafeRawBufferPointer, hash: UInt64) {
        let found = find(key, hash: hash)
        if found >= 0 {
            counts[found] += 1
            return
        }
        if keys.count < capacity {
            keys.append(Array(key))
            hashes.append(hash)
            counts.append(1)
            errors.append(0)
            insertIndex(keys.count - 1)
            if keys.count == capacity { smallestCount = 1 }
            return
        }
        let smallest = entryWithSmallestCount()
        let floor = counts[smallest]
        removeIndex(smallest)
        keys[smallest].removeAll(keepingCapacity: true)
        keys[smallest].append(contentsOf: key)
        hashes[smallest] = hash
        counts[smallest] = floor + 1
        errors[smallest] = floor
        insertIndex(smallest)
        cursor = smallest + 1 == keys.count ? 0 : smallest + 1
    }

    /// An entry whose count is the smallest: the first from `cursor` on with `smallestCount`;
    /// when none has it, the smallest count is found in the same pass.
    private mutating func entryWithSmallestCount() -> Int {
        let count = keys.count
        var position = cursor
        var least = -1
        for _ in 0..<count {
            if counts[position] <= smallestCount { return position }
            if least < 0 || counts[position] < counts[least] { least = position }
            position = position + 1 == count ? 0 : position + 1
        }
        smallestCount = counts[least]
        return least
    }

    /// Halves every count, so that the sketch follows what is hot now; keys whose count
    /// reaches zero leave.
    mutating func halve() {
        // One pass: entries that stay move down over those that leave.
        var kept = 0
        for index in keys.indices where counts[index] / 2 > 0 {
            if kept != index {
                keys.swapAt(kept, index)
                hashes[kept] = hashes[index]
            }
            counts[kept] = counts[index] / 2
            errors[kept] = errors[index] / 2
            kept += 1
        }
        keys.removeLast(keys.count - kept)
        hashes.removeLast(hashes.count - kept)
        counts.removeLast(counts.count - kept)
        errors.removeLast(errors.count - kept)
        for slot in index.indices { index[slot] = 0 }
        for entry in keys.indices { insertIndex(entry) }
        smallestCount = counts.min() ?? 0
        cursor = 0
    }
}

/// One pool's hot keys on one worker. Locked only on sampled requests (about one key in 32) and
/// by the control thread's reads; each worker has its own, so workers never contend.
final class HotKeys: Sendable {
    /// Mean interval between sampled keys.
    static let sampleInterval = 32
    let sketch: Locked<SpaceSaving>
    /// Mixed into the hash, different in every process: a client cannot choose keys whose
    /// hashes collide in the sketch's index (long probe runs on every sampled request).
    private let seed = UInt64.random(in: .min ... .max)

    init(capacity: Int) { sketch = Locked(SpaceSaving(capacity: max(1, capacity))) }

    /// Longest key kept whole: a longer key is kept as its first `longKeyHead` bytes, its
    /// length and its last `longKeyTail` bytes (`<head>...(<n> bytes)...<tail>`), which is also
    /// how `/hotkeys` shows it (a Redis key may be 512 MiB; the sketch stays small). Keys that
    /// agree in all three are counted as one.
    static let maxKeyBytes = 256
    static let longKeyHead = 200
    static let longKeyTail = 32

    func add(_ key: UnsafeRawBufferPointer) {
        guard key.count > Self.maxKeyBytes else { return add(kept: key) }
        // One key in 32 is sampled, and few are this long: built on the stack.
        let middle = Array("...(\(key.count) bytes)...".utf8)
        withUnsafeTemporaryAllocation(byteCount: Self.longKeyHead + middle.count + Self.longKeyTail, alignment: 1) { buffer in
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: key.prefix(Self.longKeyHead)))
            middle.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: buffer[Self.longKeyHead...]).copyMemory(from: $0) }
            UnsafeMutableRawBufferPointer(rebasing: buffer[(Self.longKeyHead + middle.count)...]).copyMemory(from: UnsafeRawBufferPointer(rebasing: key.suffix(Self.longKeyTail)))
            add(kept: UnsafeRawBufferPointer(buffer))
        }
    }

    /// FNV-1a over every byte kept: keys the sketch tells apart hash apart (a hash of only the
    /// first and last 32 bytes made keys of 65-256 bytes that differ in the middle collide under
    /// every seed), and `top` merges the workers' entries by the same bytes.
    private func add(kept: UnsafeRawBufferPointer) {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325 ^ seed ^ UInt64(kept.count)
        for byte in kept { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        sketch.withLock { $0.add(kept, hash: hash) }
    }

    /// Called every minute (by the backend poller's thread).
    func decay() { sketch.withLock { $0.halve() } }

    /// Keys with estimated request counts (scaled by the sampling rate), merged over workers,
    /// most requested first.
    static func top(_ perWorker: [HotKeys], limit: Int) -> [(key: [UInt8], requests: Int, error: Int)] {
        var merged: [[UInt8]: (Int, Int)] = [:]
        for hotKeys in perWorker {
            for entry in hotKeys.sketch.withLock({ $0.entries }) {
                let before = merged[entry.key] ?? (0, 0)
                merged[entry.key] = (before.0 + entry.count, before.1 + entry.error)
            }
        }
        return merged.map { (key: $0.key, requests: $0.value.0 * sampleInterval, error: $0.value.1 * sampleInterval) }
            .sorted { $0.requests != $1.requests ? $0.requests > $1.requests : $0.key.lexicographicallyPrecedes($1.key) }
            .prefix(limit).map { $0 }
    }
}

// MARK: - Slow log

/// One backend round trip slower than the pool's `slowlog_log_slower_than`.
struct SlowLogEntry: Sendable {
    var id: Int
    /// Unix time (seconds) the reply arrived.
    var time: Int
    var microseconds: Int
    /// The command as sent to the server, truncated as Redis truncates its slow log.
    var arguments: [[UInt8]]
    var client: String
    var clientName: String
    var server: String
}

/// A pool's slow log, shared by its workers (locked only when a slow request is recorded and
/// when it is read).
final class SlowLog: Sendable {
    /// A ring of at most `maxLength` entries: recording never moves the others, so a backend
    /// that makes every request slow costs one store per request here, not a shift of the log.
    private struct State: Sendable {
        var entries: [SlowLogEntry] = []
        /// Where the next entry goes once the ring is full (the oldest entry's position).
        var next = 0
        var nextID = 0
    }

    private let state = Locked(State())

    func record(_ entry: SlowLogEntry, maxLength: Int) {
        guard maxLength > 0 else { return }
        state.withLock { state in
            var entry = entry
            entry.id = state.nextID
            state.nextID += 1
            if state.entries.count > maxLength {
                // The limit was lowered by a reload: keep the newest.
                state.entries = Array(Self.ordered(state).suffix(maxLength - 1))
                state.next = 0
            }
            if state.entries.count < maxLength, state.next != 0 {
                // The limit was raised by a reload after the ring wrapped: oldest first again.
                state.entries = Self.ordered(state)
                state.next = 0
            }
            if state.entries.count < maxLength {
                state.entries.append(entry)
            } else {
                state.entries[state.next] = entry
                state.next = (state.next + 1) % maxLength
            }
        }
    }

    /// Oldest first.
    private static func ordered(_ state: State) -> [SlowLogEntry] {
        Array(state.entries[state.next...] + state.entries[..<state.next])
    }

    /// The `count` newest entries, newest first (`count` < 0: all of them).
    func newest(_ count: Int) -> [SlowLogEntry] {
        state.withLock { state in
            let all = Self.ordered(state)
            let taken = count < 0 ? all.count : min(count, all.count)
            return Array(all.suffix(taken).reversed())
        }
    }

    var count: Int { state.withLock { $0.entries.count } }

    func reset() {
        state.withLock { state in
            state.entries.removeAll()
            state.next = 0
        }
    }

    /// Redis's limits on what a slow log entry keeps.
    static let maxArguments = 32
    static let maxArgumentLength = 128

    /// Arguments as Redis's slow log keeps them: at most 32 (the last one then says how many
    /// more there were), each at most 128 bytes (then "... (N more bytes)").
    static func truncated(_ arguments: [UnsafeRawBufferPointer]) -> [[UInt8]] {
        var result: [[UInt8]] = []
        let kept = arguments.count > maxArguments ? maxArguments - 1 : arguments.count
        for argument in arguments.prefix(kept) {
            if argument.count > maxArgumentLength {
                result.append(Array(argument.prefix(maxArgumentLength)) + Array("... (\(argument.count - maxArgumentLength) more bytes)".utf8))
            } else {
                result.append(Array(argument))
            }
        }
        if kept < arguments.count {
            result.append(Array("... (\(arguments.count - kept) more arguments)".utf8))
        }
        return result
    }

    /// A request's arguments: a RESP multibulk, or a text line split at spaces (inline Redis
    /// commands and memcached, whose data block is not an argument).
    static func arguments(of request: UnsafeRawBufferPointer) -> [[UInt8]] {
        var parts: [UnsafeRawBufferPointer] = []
        if request.first == UInt8(ascii: "*") {
            // A multibulk whose header cannot be read has no arguments to show.
            guard let count = RespRequestParser.forEachArgument(request, limit: maxArguments, { parts.append($0) }) else { return [] }
            var kept = truncated(Array(parts.prefix(count > maxArguments ? maxArguments - 1 : maxArguments)))
            if count > maxArguments, parts.count >= maxArguments - 1 {
                kept.append(Array("... (\(count - (maxArguments - 1)) more arguments)".utf8))
            }
            return kept
        }
        let end = request.firstIndex(of: 0x0a).map { $0 > 0 && request[$0 - 1] == 0x0d ? $0 - 1 : $0 } ?? request.count
        var position = 0
        var extra = 0
        while position < end {
            while position < end, request[position] == 0x20 { position += 1 }
            let start = position
            while position < end, request[position] != 0x20 { position += 1 }
            guard position > start else { continue }
            // (A memcached multi-get may name thousands of keys: only what is kept is stored.)
            if parts.count < maxArguments { parts.append(UnsafeRawBufferPointer(rebasing: request[start..<position])) } else { extra += 1 }
        }
        var kept = truncated(parts)
        if extra > 0 {
            kept[maxArguments - 1] = Array("... (\(extra + 1) more arguments)".utf8)
        }
        return kept
    }

    /// `ip:port` of a connected socket's peer, or with `local` of its own end ("" when unknown).
    static func peerAddress(_ descriptor: Int32, local: Bool = false) -> String {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                local ? getsockname(descriptor, $0, &length) : getpeername(descriptor, $0, &length)
            }
        }
        guard result == 0 else { return "" }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { address in
                    var raw = address.pointee.sin_addr
                    inet_ntop(AF_INET, &raw, &text, socklen_t(text.count))
                    return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) + ":\(UInt16(bigEndian: address.pointee.sin_port))"
                }
            }
        case AF_INET6:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { address in
                    var raw = address.pointee.sin6_addr
                    inet_ntop(AF_INET6, &raw, &text, socklen_t(text.count))
                    return "[" + String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) + "]:\(UInt16(bigEndian: address.pointee.sin6_port))"
                }
            }
        case AF_UNIX:
            return "unix"
        default:
            return ""
        }
    }
}
