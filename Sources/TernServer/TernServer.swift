#if canImport(Glibc)
import Glibc
#endif
import CLibev
import Logging
import TernCore

public let ternVersion = "0.1.0"

public struct ServerOptions: Sendable {
    public var threads: Int
    public var pidFile: String?
    public init(threads: Int, pidFile: String? = nil) {
        self.threads = threads
        self.pidFile = pidFile
    }
}

public struct StartupError: Error, CustomStringConvertible {
    public var description: String
}

/// The main thread's side: listeners, resolution, worker threads, signals.
public final class TernServer {
    let config: TernConfig
    let options: ServerOptions
    let logger: Logger
    private var plans: [PoolPlan] = []
    private var threads: [pthread_t] = []

    public init(config: TernConfig, options: ServerOptions, logger: Logger) {
        self.config = config
        self.options = options
        self.logger = logger
    }

    /// Resolves every server and binds every listener; errors are returned, nothing runs yet.
    public func prepare() throws {
        tern_ignore_sigpipe()
        for pool in config.pools {
            var warmupPlan: PoolPlan?
            let workers = max(1, options.threads)
            if let warmup = pool.warmup {
                warmupPlan = PoolPlan(config: warmup.old, serverAddresses: try Self.resolve(warmup.old), listenDescriptor: -1,
                                      shared: PoolShared(workers: workers), serverCounters: Self.serverCounters(warmup.old, workers: workers))
            }
            let addresses = try Self.resolve(pool)
            let descriptor = try Self.listen(pool)
            plans.append(PoolPlan(config: pool, serverAddresses: addresses, listenDescriptor: descriptor, warmup: warmupPlan,
                                  shared: PoolShared(workers: workers), serverCounters: Self.serverCounters(pool, workers: workers)))
            logger.notice("pool \(pool.name) listening on \(pool.listen) (\(pool.protocolKind.rawValue), \(pool.servers.count) servers, \(pool.distribution.rawValue)/\(pool.hash.rawValue))")
            if let warmup = pool.warmup {
                logger.notice("pool \(pool.name) warms up from \(warmup.old.servers.count) old servers (backfill \(warmup.backfill), deletes \(warmup.deletes.rawValue))")
            }
        }
    }

    static func serverCounters(_ pool: PoolConfig, workers: Int, reusing previous: PoolPlan? = nil) -> [[ServerCounters]] {
        pool.servers.map { server in
            if let previous, let index = previous.config.servers.firstIndex(where: { $0.name == server.name }) {
                return previous.serverCounters[index]
            }
            return (0..<workers).map { _ in ServerCounters() }
        }
    }

    /// Resolves a pool's servers (blocking; runs on the main thread before workers start).
    static func resolve(_ pool: PoolConfig) throws -> [SocketAddress] {
            var addresses: [SocketAddress] = []
            for server in pool.servers {
                switch server.address {
                case let .unix(path):
                    guard let address = SocketAddress.unix(path) else {
                        throw StartupError(description: "pool '\(pool.name)': socket path too long: \(path)")
                    }
                    addresses.append(address)
                case let .tcp(host, port):
                    switch SocketAddress.resolve(host: host, port: port) {
                    case let .success(address): addresses.append(address)
                    case let .failure(error): throw StartupError(description: "pool '\(pool.name)': server \(server.name): \(error)")
                    }
                }
            }
            return addresses
    }

    static func listen(_ pool: PoolConfig) throws -> Int32 {
        let address: SocketAddress
        switch pool.listen {
        case let .unix(path, _):
            guard let unixAddress = SocketAddress.unix(path) else { throw StartupError(description: "listen path too long: \(path)") }
            unlink(path)
            address = unixAddress
        case let .tcp(host, port):
            switch SocketAddress.resolve(host: host, port: port) {
            case let .success(resolved): address = resolved
            case let .failure(error): throw StartupError(description: "pool '\(pool.name)': listen \(pool.listen): \(error)")
            }
        }
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | TERN_SOCK_NONBLOCK | TERN_SOCK_CLOEXEC, 0)
        guard fd >= 0 else { throw StartupError(description: "socket: \(Syscall.errorText(errno))") }
        if address.family != AF_UNIX { Syscall.setOption(fd, SOL_SOCKET, SO_REUSEADDR) }
        let bound = address.withSockaddr { bind(fd, $0, $1) }
        guard bound == 0 else {
            let error = errno
            Syscall.close(fd)
            throw StartupError(description: "pool '\(pool.name)': cannot bind \(pool.listen): \(Syscall.errorText(error))")
        }
        if case let .unix(path, permissions?) = pool.listen { chmod(path, mode_t(permissions)) }
        guard Glibc.listen(fd, Int32(pool.backlog)) == 0 else {
            let error = errno
            Syscall.close(fd)
            throw StartupError(description: "pool '\(pool.name)': cannot listen on \(pool.listen): \(Syscall.errorText(error))")
        }
        return fd
    }

    /// Starts the workers and serves until SIGTERM or SIGINT.
    public func run() -> Int32 {
        var signals = sigset_t()
        sigemptyset(&signals)
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGTTIN, SIGTTOU, SIGUSR1, SIGUSR2] { sigaddset(&signals, signal) }
        // Workers inherit the mask: only this thread takes signals, through sigwait.
        pthread_sigmask(SIG_BLOCK, &signals, nil)
        let info = ProcessInfo(version: ternVersion)
        let count = max(1, options.threads)
        for identifier in 0..<count {
            let worker = Worker(identifier: identifier, plans: plans, logger: logger, processInfo: info)
            // The worker is handed to its thread here and never touched by this thread again.
            let context = Unmanaged.passRetained(worker).toOpaque()
            var thread = pthread_t()
            let result = pthread_create(&thread, nil, { context in
                let worker = Unmanaged<Worker>.fromOpaque(context!).takeRetainedValue()
                worker.run()
                return nil
            }, context)
            if result != 0 {
                logger.critical("cannot start worker thread: \(Syscall.errorText(result))")
                return 1
            }
            threads.append(thread)
        }
        logger.notice("tern \(ternVersion) started with \(count) worker threads, pid \(getpid())")
        while true {
            var received: Int32 = 0
            guard sigwait(&signals, &received) == 0 else { continue }
            let name = Self.signalName(received)
            switch received {
            case SIGTERM, SIGINT:
                logger.notice("signal \(received) (\(name)) received, exiting")
                cleanUp()
                return 0
            case SIGHUP:
                logger.notice("signal \(received) (\(name)) received; config reload is not implemented yet, keeping the current config")
            default:
                logger.notice("signal \(received) (\(name)) received")
            }
        }
    }

    private func cleanUp() {
        for plan in plans {
            if case let .unix(path, _) = plan.config.listen { unlink(path) }
        }
        if let pidFile = options.pidFile { unlink(pidFile) }
    }

    static func signalName(_ signal: Int32) -> String {
        switch signal {
        case SIGTERM: return "SIGTERM"
        case SIGINT: return "SIGINT"
        case SIGHUP: return "SIGHUP"
        case SIGTTIN: return "SIGTTIN"
        case SIGTTOU: return "SIGTTOU"
        case SIGUSR1: return "SIGUSR1"
        case SIGUSR2: return "SIGUSR2"
        default: return "signal"
        }
    }
}
