// The configuration model: a superset of twemproxy's nutcracker.yml.
//
// A file is a mapping of pool names to pools. Every twemproxy key keeps its meaning and its
// default; Tern's own keys are documented in README.md and Config/example.yml.

public enum PoolProtocol: String, Sendable {
    case memcache
    case redis
}

public enum ListenAddress: Sendable, Equatable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    /// A unix socket path and its permission bits (`/run/tern.sock 0666`).
    case unix(path: String, permissions: UInt32?)

    public var description: String {
        switch self {
        case let .tcp(host, port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case let .unix(path, _): return path
        }
    }
}

public enum ServerAddress: Sendable, Equatable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unix(path: String)

    public var description: String {
        switch self {
        case let .tcp(host, port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case let .unix(path): return path
        }
    }
}

/// Where a `redis_cluster` pool sends read-only commands (Tern key `read_from`, Envoy's names).
public enum ReadFrom: String, CaseIterable, Sendable {
    /// Every command to the slot's master (the default).
    case master
    /// Read-only commands to a replica of the slot's master; to the master when it has none or
    /// the replica's connection is failing.
    case preferReplica = "prefer_replica"
    /// Read-only commands to a replica only (the master when the slot's master has none).
    case replica
}

/// A Sentinel-managed pool (Tern key `sentinel:`): each server is a master group that the
/// sentinels name (`SENTINEL get-master-addr-by-name`); its address follows their failovers.
public struct SentinelConfig: Sendable, Equatable {
    /// The sentinels, asked in order.
    public var addresses: [(host: String, port: Int)]
    /// The sentinels' own password (`requirepass` of the sentinels), if any.
    public var password: String?
    /// The sentinels listen with TLS (`tls-port`): they are reached with the pool's
    /// `server_tls` settings, as the masters are (Tern key `sentinel: {tls: true}`).
    public var tls: Bool

    public init(addresses: [(host: String, port: Int)], password: String? = nil, tls: Bool = false) {
        self.addresses = addresses
        self.password = password
        self.tls = tls
    }

    public static func == (left: SentinelConfig, right: SentinelConfig) -> Bool {
        left.password == right.password && left.tls == right.tls && left.addresses.map { "\($0.host):\($0.port)" } == right.addresses.map { "\($0.host):\($0.port)" }
    }
}

public struct ServerConfig: Sendable, Equatable {
    /// In a Sentinel pool, `.tcp(host: <master name>, port: 0)` until the sentinels have named
    /// the master's address (the routed config then has the real one).
    public var address: ServerAddress
    public var weight: Int
    /// The name used for ketama points, server order and stats (twemproxy's rule).
    public var name: String
    /// Whether the `servers:` line gave the name explicitly.
    public var hasExplicitName: Bool
    public var line: Int
}

public struct PoolConfig: Sendable {
    public var name: String
    public var line: Int
    public var listen: ListenAddress
    public var protocolKind: PoolProtocol = .memcache
    public var hash: HashFunction = .fnv1a_64
    public var hashTag: HashTag?
    public var distribution: Distribution = .ketama
    /// Milliseconds to wait for a backend reply; nil waits forever (twemproxy's default).
    public var timeoutMilliseconds: Int?
    public var backlog: Int = 512
    public var preconnect: Bool = false
    public var redisAuth: String?
    public var redisDatabase: Int = 0
    public var serverConnections: Int = 1
    public var autoEjectHosts: Bool = false
    public var serverRetryTimeoutMilliseconds: Int = 30_000
    public var serverFailureLimit: Int = 2
    public var tcpKeepalive: Bool = false
    /// 0 means unlimited.
    public var clientConnections: Int = 0
    /// Largest memcached value accepted from a client (Tern key `max_item_size`).
    public var maxItemSize: Int = 1 << 20
    /// Most reply bytes Tern holds for one client that does not read them; over it the client
    /// is closed (Tern key `client_output_limit`).
    public var clientOutputLimit: Int = 64 << 20
    /// Largest Redis request a client may send, all arguments together (Tern key
    /// `client_query_limit`). Below Redis's own `client-query-buffer-limit` (1 GiB), which would
    /// close the shared backend connection on a request that large.
    public var clientQueryLimit: Int = 768 << 20
    /// Redis: connections per server per worker that can be leased to one client at a time,
    /// for WATCH … EXEC and blocking commands (Tern key `dedicated_connections`).
    public var dedicatedConnections = 64
    /// Redis: channels, patterns and shard channels one client may subscribe to (Tern key
    /// `max_subscriptions`).
    public var maxSubscriptions = 10_000
    /// Backend round trips slower than this (µs) enter the pool's slow log (Tern key
    /// `slowlog_log_slower_than`, Redis's name and default; negative: off, 0: every request).
    public var slowlogSlowerThanMicroseconds = 10_000
    /// Entries the slow log keeps (Tern key `slowlog_max_len`, Redis's default).
    public var slowlogMaxLength = 128
    /// Keys the hot-key sketch tracks per worker (Tern key `hot_keys`; 0: off).
    public var hotKeys = 64
    /// Redis: the address cluster-aware clients are given by CLUSTER SLOTS/SHARDS/NODES (Tern
    /// key `announce`, `host:port`); nil: the listen address.
    public var announce: (host: String, port: Int)?
    /// A request that stays incomplete this long (ms) closes its client: slowloris
    /// (Tern key `client_partial_timeout`; 0 = never).
    public var clientPartialTimeoutMilliseconds: Int = 30_000
    /// A client with nothing in flight for this long (ms) is closed (Tern key
    /// `client_idle_timeout`; 0 = never, the default, as in twemproxy).
    public var clientIdleTimeoutMilliseconds: Int = 0
    /// A request whose server fails (connection refused or lost, a timeout) closes its client
    /// once the replies before it are written, instead of answering an error (Tern key
    /// `close_on_server_failure`); nil: `closesClientsOnServerFailure`'s default.
    public var closeOnServerFailure: Bool?
    /// How long (ms) a request on a pool whose one server's failure closes its clients waits
    /// for Tern's connection to that server (Tern key `server_wait`; 0: it does not wait, and
    /// fails at once); nil: the pool's `timeout`, or 1500 ms without one. Also what the connect
    /// backoff's ceiling follows (four fifths of it, 2 s at most).
    public var serverWaitMilliseconds: Int?
    /// Whether a failed server closes the client (see `closeOnServerFailure`). By default for a
    /// Redis pool of one server (a sidecar, or one Sentinel master group), where a client of
    /// the server itself would see its connection end: redis-py raises `ConnectionError`,
    /// which frameworks retry, where an `-ERR` reply is a `ResponseError` that stops an RQ or
    /// Celery worker. Not for sharded pools, where one server's failure would end requests on
    /// the others too, nor Redis Cluster pools (which follow the cluster's failover).
    public var closesClientsOnServerFailure: Bool {
        closeOnServerFailure ?? (protocolKind == .redis && distribution != .redisCluster && servers.count == 1)
    }
    /// Refuse memcached keys with control characters (Tern key `strict_keys`). Off by default:
    /// keys are what memcached accepts (a twemproxy user's keys keep working).
    public var strictKeys = false
    /// Largest Redis bulk string accepted from a client (Tern key `max_bulk_length`).
    public var maxBulkLength: Int = 512 << 20
    /// Users and their command and key rules (Tern key `users:`); empty: none.
    public var users: [UserConfig] = []
    /// Redis: commands answered as unknown (Tern key `disabled_commands`), lower case.
    public var disabledCommands: [String] = []
    /// TLS for this pool's clients (Tern key `tls:`); nil: plain TCP.
    public var clientTLS: ClientTLSConfig?
    /// TLS to this pool's servers (Tern key `server_tls:`); nil: plain TCP.
    public var serverTLS: ServerTLSConfig?
    public var servers: [ServerConfig] = []
    /// Server number of each of the 16384 slots (`distribution: slots`, and a `redis_cluster`
    /// pool once its map is known).
    public var slotServers: [Int32] = []
    /// Sentinel-managed pool: servers are master group names (Tern key `sentinel:`).
    public var sentinel: SentinelConfig?
    /// `redis_cluster`: where read-only commands go (Tern key `read_from`).
    public var readFrom = ReadFrom.master
    /// `redis_cluster` with `read_from` other than master: the replicas of each server (from
    /// the cluster's map, never from the file).
    public var replicaServers: [[ServerConfig]] = []
    /// The old pool this pool warms up from (Tern key `warmup:`).
    public var warmup: WarmupConfig? {
        get { warmupStorage.first }
        set { warmupStorage = newValue.map { [$0] } ?? [] }
    }
    /// An array breaks the recursion of a pool holding a pool.
    private var warmupStorage: [WarmupConfig] = []

    public init(name: String, line: Int, listen: ListenAddress) {
        self.name = name
        self.line = line
        self.listen = listen
    }

    /// Whether clients must authenticate before any command: a Redis pool with `redis_auth`
    /// or `users:`, a memcached pool with `users:` (`redis_auth` is for the backends there).
    public var clientsMustAuthenticate: Bool {
        protocolKind == .redis ? redisAuth != nil || !users.isEmpty : !users.isEmpty
    }

    /// Whether `other` places every key on the server of the same name, as this one does: the
    /// inputs of `placement` compared (ejections aside).
    public func placesKeysLike(_ other: PoolConfig) -> Bool {
        distribution == other.distribution && hash == other.hash && hashTag == other.hashTag && slotServers == other.slotServers
            && servers.map(\.name) == other.servers.map(\.name) && servers.map(\.weight) == other.servers.map(\.weight)
    }

    /// The placement table with every server live.
    /// A `redis_cluster` pool is placed as `slots` with Redis Cluster's `{tag}` rule.
    public func placement(live: [Bool]? = nil) -> Placement {
        let isCluster = distribution == .redisCluster
        return Placement(distribution: isCluster ? .slots : distribution, hash: hash, hashTag: isCluster ? .braces : hashTag,
                  names: servers.map(\.name), weights: servers.map(\.weight),
                  live: live ?? servers.map { _ in true }, slotServers: slotServers)
    }
}

/// TLS versions a TLS setting may require at least.
public enum TLSVersion: String, Sendable {
    case tls12 = "TLSv1.2"
    case tls13 = "TLSv1.3"

    /// OpenSSL's version number.
    public var code: Int32 { self == .tls12 ? 0x0303 : 0x0304 }
}

/// Whether a TLS listener asks clients for certificates.
public enum TLSClientAuth: String, Sendable {
    /// No client certificate is asked for.
    case none
    /// Asked for, verified when given, not required.
    case optional
    /// Required and verified: a client without a valid certificate fails the handshake.
    case required
}

/// `tls:` — clients connect with TLS. Paths are absolute or relative to the config file.
public struct ClientTLSConfig: Sendable, Equatable {
    public var cert: String
    public var key: String
    /// CA certificates that client certificates are verified against.
    public var ca: String?
    public var clientAuth: TLSClientAuth = .none
    public var minVersion: TLSVersion = .tls12
    /// A verified client certificate whose subject common name is a user's name authenticates
    /// the client as that user (`user_from_certificate: cn`).
    public var userFromCertificate = false

    public init(cert: String, key: String) {
        self.cert = cert
        self.key = key
    }
}

/// `server_tls:` — Tern connects to the pool's servers with TLS.
public struct ServerTLSConfig: Sendable, Equatable {
    /// CA certificates the servers' certificates are verified against (nil: the system's).
    public var ca: String?
    /// A client certificate and key, for servers that require one.
    public var cert: String?
    public var key: String?
    /// The name sent as SNI and verified; nil: each server's host from `servers:`.
    public var serverName: String?
    /// Verify the server's certificate and name (default true).
    public var verify = true
    public var minVersion: TLSVersion = .tls12

    public init() {}
}

/// One entry of `users:`.
public struct UserConfig: Sendable, Equatable {
    public var name: String
    /// SHA-256 of the password (32 bytes).
    public var passwordSHA256: [UInt8]
    /// Command rules in order (`+@read`, `-flushall`, `allcommands`, …).
    public var commands: [String]
    /// Key patterns (`~app:*`, `allkeys`); empty: no key, as for a new Redis ACL user.
    public var keys: [String]
    public var line: Int

    public init(name: String, passwordSHA256: [UInt8], commands: [String], keys: [String], line: Int) {
        self.name = name
        self.passwordSHA256 = passwordSHA256
        self.commands = commands
        self.keys = keys
        self.line = line
    }
}

public enum WarmupDeletes: String, Sendable {
    /// Deletes and invalidations reach the new and the old pool.
    case both
    /// Only the new pool.
    case new
}

/// A warm-up: reads that miss this pool fall back to `old` and are copied in.
public struct WarmupConfig: Sendable {
    /// The old pool: the keys of a pool except `listen`.
    public var old: PoolConfig
    /// Copy old-pool hits into the new pool. Default true.
    public var backfill = true
    /// Cap (seconds) on the TTL given to copied items; 0 = no cap.
    public var maxBackfillTTL = 0
    /// TTL (seconds) for copied items whose remaining TTL cannot be known; 0 = no expiry.
    public var defaultBackfillTTL = 0
    public var deletes = WarmupDeletes.both

    /// The one backfill rule, for both protocols: the TTL to copy an old item with, in
    /// milliseconds (0: no expiry), from its remaining TTL in milliseconds (-1: none; nil:
    /// unknown, as when the old server did not say), or nil when the item is gone or about to
    /// expire (1 s or less) and is not worth copying. `default_backfill_ttl` stands in for an
    /// unknown TTL; `max_backfill_ttl` caps every copy, items without expiry included.
    public func backfillTTL(remainingMilliseconds remaining: Int?) -> Int? {
        guard let remaining else { return cap(defaultBackfillTTL * 1000) }
        if remaining == -1 { return cap(0) }
        if remaining <= 1000 { return nil }
        return cap(remaining)
    }

    /// The same rule in seconds, for memcached (`t` flag in, `T` flag out; -1: no expiry).
    public func backfillTTL(remaining: Int?) -> Int? {
        backfillTTL(remainingMilliseconds: remaining.map { $0 == -1 ? -1 : $0 * 1000 }).map { ($0 + 999) / 1000 }
    }

    /// 0 means "no expiry"; a cap turns it into the cap.
    private func cap(_ milliseconds: Int) -> Int {
        guard maxBackfillTTL > 0 else { return milliseconds }
        return milliseconds == 0 ? maxBackfillTTL * 1000 : min(milliseconds, maxBackfillTTL * 1000)
    }
}

public struct TernConfig: Sendable {
    public var path: String
    public var pools: [PoolConfig]
}

public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public var file: String
    public var line: Int
    public var message: String
    public var description: String { "\(file):\(line): \(message)" }
}
