#if canImport(Glibc)
import Glibc
#endif
import TernCore

// Warnings about a config or command line that leaves Tern open beyond the host (README,
// "Security defaults"). `tern -t` prints them, startup and every applied reload log them; none
// of them stops Tern. Host names are resolved as the listeners resolve them (the first
// address getaddrinfo gives), so call these off the event loops.

/// One line for every pool that listens beyond loopback (not 127.0.0.0/8, ::1 or a unix
/// socket) while its clients need no credentials. The one place that decides whether a pool is
/// exposed: add a protection here and the warning follows it.
public func exposureWarnings(_ config: TernConfig) -> [String] {
    config.pools.compactMap { pool -> String? in
        if listensOnlyLocally(pool.listen) { return nil }
        // A password: redis_auth (Redis pools: the `default` user) or users: (both protocols).
        if pool.clientsMustAuthenticate { return nil }
        // TLS with `client_auth: required`: only holders of a certificate from its CA get in.
        // TLS alone makes the traffic private but lets anyone in.
        if pool.clientTLS?.clientAuth == .required { return nil }
        let credentials = pool.protocolKind == .redis ? "redis_auth or users:" : "users:"
        return "pool '\(pool.name)' listens on \(pool.listen), beyond loopback, with neither client certificates nor a password (tls: with client_auth: required, or \(credentials)): anyone who reaches that address can use its servers"
    }
}

/// The stats port beyond loopback: nutcracker's default address, 0.0.0.0, is kept for
/// compatibility, so say what it shows and how to bind it locally.
public func statsExposureWarning(address: String, port: Int) -> String? {
    if case let .success(resolved) = SocketAddress.resolve(host: address, port: port), resolved.isLoopback { return nil }
    let shown = address.contains(":") ? "[\(address)]:\(port)" : "\(address):\(port)"
    return "the stats port listens on \(shown), beyond loopback (nutcracker's default, kept for compatibility): anyone who reaches it reads the host, pool and server names and their traffic; -a 127.0.0.1 binds it to loopback, --no-stats turns it off"
}

/// Whether a pool's clients can only come from this host: a unix socket, or a TCP address that
/// resolves to loopback. An unresolvable host is not local (it cannot be bound either).
public func listensOnlyLocally(_ listen: ListenAddress) -> Bool {
    switch listen {
    case .unix:
        return true
    case let .tcp(host, port):
        guard case let .success(resolved) = SocketAddress.resolve(host: host, port: port) else { return false }
        return resolved.isLoopback
    }
}

/// A config file that holds secrets (redis_auth, users' password hashes, a sentinel password)
/// should not be readable by other users.
public func readableSecretWarning(_ config: TernConfig) -> String? {
    var secrets: [String] = []
    if config.pools.contains(where: { $0.redisAuth != nil || $0.warmup?.old.redisAuth != nil }) { secrets.append("redis_auth") }
    if config.pools.contains(where: { !$0.users.isEmpty }) { secrets.append("users: (password hashes)") }
    if config.pools.contains(where: { $0.sentinel?.password != nil }) { secrets.append("a sentinel password") }
    guard !secrets.isEmpty else { return nil }
    var info = stat()
    guard stat(config.path, &info) == 0, info.st_mode & 0o004 != 0 else { return nil }
    let listed = secrets.count == 1 ? secrets[0] : secrets.dropLast().joined(separator: ", ") + " and " + secrets.last!
    return "configuration file '\(config.path)' contains \(listed) and is readable by other users (chmod o-r)"
}

/// TLS private keys (`tls.key`, `server_tls.key`) readable by other users.
public func readableKeyWarnings(_ config: TernConfig) -> [String] {
    var seen: Set<String> = []
    var warnings: [String] = []
    for pool in config.pools {
        for path in [pool.clientTLS?.key, pool.serverTLS?.key, pool.warmup?.old.serverTLS?.key].compactMap({ $0 }) where seen.insert(path).inserted {
            var info = stat()
            guard stat(path, &info) == 0, info.st_mode & 0o004 != 0 else { continue }
            warnings.append("TLS private key '\(path)' (pool '\(pool.name)') is readable by other users (chmod o-r)")
        }
    }
    return warnings
}

extension SocketAddress {
    /// 127.0.0.0/8, ::1, ::ffff:127.0.0.0/104 (IPv4-mapped loopback) or a unix socket.
    var isLoopback: Bool {
        switch family {
        case AF_UNIX:
            return true
        case AF_INET:
            // sockaddr_in: family (2 bytes), port (2), then the address in network order.
            let offset = MemoryLayout<sockaddr_in>.offset(of: \sockaddr_in.sin_addr)!
            return bytes.count > offset && bytes[offset] == 127
        case AF_INET6:
            let offset = MemoryLayout<sockaddr_in6>.offset(of: \sockaddr_in6.sin6_addr)!
            guard bytes.count >= offset + 16 else { return false }
            let address = bytes[offset..<offset + 16]
            let prefix = address.prefix(10)
            if prefix.allSatisfy({ $0 == 0 }) {
                let tail = Array(address.suffix(6))
                if tail == [0, 0, 0, 0, 0, 1] { return true }
                if tail[0] == 0xff, tail[1] == 0xff, tail[2] == 127 { return true }
            }
            return false
        default:
            return false
        }
    }
}
