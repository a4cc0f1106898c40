// Where a key lives: the request path's own placement (`PoolConfig.placement()` and
// `Placement.server(forKey:)`, the calls `PoolRuntime` makes) asked about one key, for the admin
// endpoint's `/locate` and for `tern --locate`. One function serves both, so the two can never
// disagree with each other or with the proxy.
//
// Every server is taken as live. A worker that has ejected a server (`auto_eject_hosts`) sends
// that server's keys to the next point of the ring until the server returns; that state is per
// worker and is not what this answers.

/// Where one pool puts one key.
public struct KeyLocation: Sendable {
    /// The pool's name; a warm-up's old pool is named `<pool>.warmup`, as in the config errors.
    public var pool: String
    public var distribution: Distribution
    public var hash: HashFunction
    /// The bytes the pool hashes: the hash tag's content when the key has a non-empty tag,
    /// otherwise the whole key (`distribution: slots` uses `{}` when no `hash_tag` is set).
    public var hashedKey: [UInt8]
    /// The key's hash with the pool's `hash`; for `distribution: slots`, its hash slot.
    public var hashValue: UInt32
    /// The server's position in the pool's `servers:` list (as written, not twemproxy's sorted
    /// order); nil for `distribution: random`, where each request picks a server at random.
    public var serverIndex: Int?
    /// The pool's servers, so `serverIndex` can be named.
    public var servers: [ServerConfig]
    /// A warm-up's old pool: where a miss of the new pool is looked up (and where deletes also
    /// go, with `deletes: both`).
    public var old: KeyLocation? {
        get { oldStorage.first }
        set { oldStorage = newValue.map { [$0] } ?? [] }
    }
    /// An array breaks the recursion of a location holding a location.
    private var oldStorage: [KeyLocation] = []

    public var server: ServerConfig? { serverIndex.map { servers[$0] } }
    public var isRandom: Bool { distribution == .random }
    /// The Redis Cluster hash slot, for `distribution: slots`.
    public var slot: Int? { distribution == .slots ? Int(hashValue) : nil }

    init(pool: String, distribution: Distribution, hash: HashFunction, hashedKey: [UInt8], hashValue: UInt32,
         serverIndex: Int?, servers: [ServerConfig]) {
        self.pool = pool
        self.distribution = distribution
        self.hash = hash
        self.hashedKey = hashedKey
        self.hashValue = hashValue
        self.serverIndex = serverIndex
        self.servers = servers
    }
}

/// A pool's placement tables, built once (a ketama ring costs 40 MD5 digests per server) and
/// asked about any number of keys.
public final class KeyLocator: Sendable {
    public let pool: PoolConfig
    let placement: Placement
    let oldLocator: KeyLocator?

    public init(pool: PoolConfig) {
        self.pool = pool
        self.placement = pool.placement()
        self.oldLocator = pool.warmup.map { KeyLocator(pool: $0.old) }
    }

    /// Where `key` goes in this pool and, for a warm-up, in its old pool.
    public func locate(_ key: [UInt8]) -> KeyLocation {
        key.withUnsafeBytes { bytes in
            let tag = pool.distribution == .slots ? (pool.hashTag ?? .braces) : pool.hashTag
            var location = KeyLocation(
                pool: pool.name, distribution: pool.distribution, hash: pool.hash,
                hashedKey: Array(hashTagged(bytes, tag: tag)), hashValue: placement.keyHash(bytes),
                serverIndex: pool.distribution == .random ? nil : placement.server(forKey: bytes),
                servers: pool.servers)
            location.old = oldLocator?.locate(key)
            return location
        }
    }
}

// MARK: - Renderings

extension KeyLocation {
    /// The `/locate` reply (one line):
    ///
    ///     {"pool":"demo","key":"foo","distribution":"ketama","hash":"fnv1a_64","hash_key":"foo",
    ///      "hash_value":1234,"server":{"index":1,"name":"beta","address":"127.0.0.1:11312","weight":1},
    ///      "old_pool":{"pool":"demo.warmup", … same fields without "key" …}}
    ///
    /// `slots` pools give `"slot":N` instead of `"hash"` and `"hash_value"`; `random` pools give
    /// `"server":null,"random":true,"servers":[…every server…]`. `"key_hex"` is added when the
    /// key is not valid UTF-8 (`"key"` then shows U+FFFD for the bad bytes).
    public func json(key: [UInt8]) -> String {
        var out = "{\"pool\":\(JSONText.string(pool)),\"key\":\(JSONText.string(bytes: key))"
        if !JSONText.isUTF8(key) { out += ",\"key_hex\":\"\(JSONText.hex(key))\"" }
        out += fields()
        if let old { out += ",\"old_pool\":{\"pool\":\(JSONText.string(old.pool))" + old.fields() + "}" }
        return out + "}\n"
    }

    private func fields() -> String {
        var out = ",\"distribution\":\"\(distribution.rawValue)\""
        // A slots pool hashes with CRC16 into 16384 slots whatever its `hash` says.
        if distribution != .slots { out += ",\"hash\":\"\(hash.rawValue)\"" }
        out += ",\"hash_key\":\(JSONText.string(bytes: hashedKey))"
        out += slot.map { ",\"slot\":\($0)" } ?? ",\"hash_value\":\(hashValue)"
        if let serverIndex {
            out += ",\"server\":" + Self.json(servers[serverIndex], index: serverIndex)
        } else {
            out += ",\"server\":null"
            if isRandom {
                out += ",\"random\":true,\"servers\":[" + servers.indices.map { Self.json(servers[$0], index: $0) }.joined(separator: ",") + "]"
            }
        }
        return out
    }

    private static func json(_ server: ServerConfig, index: Int) -> String {
        "{\"index\":\(index),\"name\":\(JSONText.string(server.name)),\"address\":\(JSONText.string(server.address.description)),\"weight\":\(server.weight)}"
    }

    /// `tern --locate`'s right-hand side: `alpha (127.0.0.1:31201)`, `127.0.0.1:31202` (the
    /// name is the address), `127.0.0.1:7001 (slot 12182)`, `random (any of 3 servers)`.
    public var serverDescription: String {
        guard let server else {
            return isRandom ? "random (any of \(servers.count) servers)" : "no server"
        }
        var notes: [String] = []
        let address = server.address.description
        if server.name != address { notes.append(address) }
        if let slot { notes.append("slot \(slot)") }
        return server.name + (notes.isEmpty ? "" : " (" + notes.joined(separator: ", ") + ")")
    }
}

/// JSON string literals for texts and for keys (bytes).
public enum JSONText {
    public static func string(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where scalar.value < 0x20 || scalar.value == 0x7f:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// Bytes that are not UTF-8 show as U+FFFD.
    static func string(bytes: [UInt8]) -> String { string(String(decoding: bytes, as: UTF8.self)) }

    static func isUTF8(_ bytes: [UInt8]) -> Bool {
        String(decoding: bytes, as: UTF8.self).utf8.elementsEqual(bytes)
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
