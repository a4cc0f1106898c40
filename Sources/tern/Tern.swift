#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Logging
import TernCore
import TernServer

@main
struct Tern: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tern",
        abstract: "A memcached and Redis proxy, compatible with twemproxy's nutcracker.yml and flags."
    )

    /// The long options that take a value (their values are not rewritten by `ShortOptions`).
    static let longOptionsWithValues: Set<String> = [
        "verbose", "output", "conf-file", "stats-port", "stats-addr", "stats-interval", "pid-file", "mbuf-size", "threads",
        "max-threads", "active-threads", "activate-above", "activate-idle", "admin-port", "admin-addr", "shutdown-timeout",
        "dns-refresh", "locate", "pool",
    ]

    /// nutcracker's command lines run unchanged: getopt's attached values and grouped flags
    /// (`-v7`, `-c/etc/x.yml`, `-dt`) are separated before the arguments are parsed.
    static func main() {
        main(ShortOptions.expand(Array(CommandLine.arguments.dropFirst()), longOptionsWithValues: longOptionsWithValues))
    }

    @Flag(name: [.customShort("V"), .customLong("version")], help: "Show the version and exit.")
    var showVersion = false

    @Flag(name: [.customShort("t"), .customLong("test-conf")], help: "Test the configuration for syntax errors and exit.")
    var testConfig = false

    @Flag(name: [.customShort("d"), .customLong("daemonize")], help: "Run as a daemon.")
    var daemonize = false

    @Flag(name: [.customShort("D"), .customLong("describe-stats")], help: "Print the stats description and exit.")
    var describeStats = false

    @Option(name: [.customShort("v"), .customLong("verbose")], help: "Log level, 0 (emergencies) to 11 (everything); 5 is notice.")
    var verbosity = 5

    @Option(name: [.customShort("o"), .customLong("output")], help: "Log file (default: standard error).")
    var output: String?

    @Option(name: [.customShort("c"), .customLong("conf-file")], help: "Configuration file.")
    var configFile = "Config/tern.yml"

    @Option(name: [.customShort("s"), .customLong("stats-port")], help: "Stats monitoring port: one JSON object per connection, in nutcracker's shape.")
    var statsPort = 22222

    @Option(name: [.customShort("a"), .customLong("stats-addr")], help: "Stats monitoring address.")
    var statsAddress = "0.0.0.0"

    @Option(name: [.customShort("i"), .customLong("stats-interval")], help: "Stats aggregation interval in milliseconds.")
    var statsInterval = 30000

    @Option(name: [.customShort("p"), .customLong("pid-file")], help: "Pid file.")
    var pidFile: String?

    @Option(name: [.customShort("m"), .customLong("mbuf-size")], help: "Accepted for nutcracker compatibility; Tern sizes its buffers itself.")
    var mbufSize = 16384

    @Option(name: .customLong("threads"), help: "Worker threads, each with its own event loop, all taking clients (default: elastic workers, see --max-threads).")
    var threads: Int?

    @Option(name: .customLong("max-threads"), help: "Without --threads: worker threads started (default: the CPUs Tern may use); only --active-threads take clients at first, one more while those are busier than --activate-above and --activate-idle CPUs are idle.")
    var maxThreads: Int?

    @Option(name: .customLong("active-threads"), help: "Without --threads: worker threads taking clients from the start.")
    var activeThreads = 1

    @Option(name: .customLong("activate-above"), help: "Without --threads: another worker takes clients once the active ones' mean utilisation (thread CPU time over wall time) reached this fraction in each of the last two seconds.")
    var activateAbove = 0.75

    @Option(name: .customLong("activate-idle"), help: "Without --threads: another worker takes clients only if at least this many of the CPUs Tern may use were idle in the last second (0: not checked).")
    var activateIdle = 0.5

    @Option(name: .customLong("admin-port"), help: "Admin HTTP port: /metrics (Prometheus), /healthz, /readyz, /config, /locate?pool=P&key=K. Off unless given.")
    var adminPort: Int?

    @Option(name: .customLong("admin-addr"), help: "Admin HTTP address.")
    var adminAddress = "127.0.0.1"

    @Option(name: .customLong("shutdown-timeout"), help: "Seconds SIGTERM waits for in-flight requests before exiting.")
    var shutdownTimeout: Double = 10

    @Flag(name: .customLong("watch-config"), help: "Reload when the config file changes (also Kubernetes ConfigMap symlink swaps).")
    var watchConfig = false

    @Option(name: .customLong("dns-refresh"), help: "Seconds between re-resolutions of server host names (0: never).")
    var dnsRefresh = 30

    @Flag(name: .customLong("no-stats"), help: "Do not serve the stats port.")
    var noStats = false

    @Option(name: .customLong("locate"), parsing: .upToNextOption,
            help: ArgumentHelp("Print which server of each pool holds each key (one 'KEY<tab>POOL → SERVER' line per key and pool; a warm-up pool's old pool as POOL.warmup), then exit; nothing is started or bound.",
                               valueName: "key"))
    var locateKeys: [String] = []

    @Option(name: .customLong("pool"), help: "With --locate: only this pool.")
    var locatePool: String?

    /// The most worker threads Tern starts.
    static let maxWorkers = 1024

    func validate() throws {
        // (A port past 65535 was bound modulo 65536.)
        if !(1...65535).contains(statsPort) { throw ValidationError("-s/--stats-port must be a port, 1 to 65535") }
        if let adminPort, !(1...65535).contains(adminPort) { throw ValidationError("--admin-port must be a port, 1 to 65535") }
        if threads != nil, maxThreads != nil { throw ValidationError("--threads and --max-threads exclude each other (--threads N: N workers, all taking clients)") }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
        if let maxThreads, maxThreads < 1 { throw ValidationError("--max-threads must be at least 1") }
        // Each worker takes a loop and its wake-up descriptors: thousands end inside libev
        // (an abort, or a hang; operator sweep 33).
        if let threads, threads > Self.maxWorkers { throw ValidationError("--threads must be at most \(Self.maxWorkers)") }
        if let maxThreads, maxThreads > Self.maxWorkers { throw ValidationError("--max-threads must be at most \(Self.maxWorkers)") }
        // A drain's bound in seconds: `inf`, `nan` or 1e19 passed, and the drain trapped (operator sweep 33).
        if !(shutdownTimeout >= 0 && shutdownTimeout <= 86_400) { throw ValidationError("--shutdown-timeout must be 0 to 86400 (seconds)") }
        if activeThreads < 1 { throw ValidationError("--active-threads must be at least 1") }
        if !(activateAbove >= 0 && activateAbove <= 1) { throw ValidationError("--activate-above must be between 0 and 1") }
        if !(activateIdle >= 0 && activateIdle <= 65536) { throw ValidationError("--activate-idle must be 0 or more (CPUs)") }
        if locatePool != nil, locateKeys.isEmpty { throw ValidationError("--pool is used with --locate") }
        if locateKeys.contains(where: \.isEmpty) { throw ValidationError("--locate: a key cannot be empty") }
    }

    func run() throws {
        if showVersion {
            print("This is tern-\(ternVersion)")
            return
        }
        if describeStats {
            print(statsDescription)
            return
        }
        let text: String
        do {
            text = try readTextFile(configFile)
        } catch {
            printError("tern: configuration file '\(configFile)' cannot be read: \(error)")
            throw ExitCode(1)
        }
        let config: TernConfig
        do {
            config = try ConfigLoader.load(text: text, file: configFile)
        } catch {
            if testConfig { printError("tern: configuration file '\(configFile)' syntax is invalid") }
            printError("tern: \(error)")
            throw ExitCode(1)
        }
        if !locateKeys.isEmpty {
            try locate(config)
            return
        }
        if testConfig {
            let unresolved = TernServer.unresolvableListenHosts(config) + TernServer.tlsProblems(config)
            guard unresolved.isEmpty else {
                printError("tern: configuration file '\(configFile)' syntax is invalid")
                for problem in unresolved { printError("tern: \(configFile): \(problem)") }
                throw ExitCode(1)
            }
            printError("tern: configuration file '\(configFile)' syntax is ok")
            for warning in securityWarnings(config) { printError("tern: warning: \(warning)") }
            return
        }
        let destination: LogDestination
        do {
            destination = try LogDestination(path: output, level: logLevel(forVerbosity: verbosity))
        } catch {
            printError("tern: \(error)")
            throw ExitCode(1)
        }
        let logger = destination.makeLogger()
        for warning in securityWarnings(config) { logger.warning("\(warning)") }

        if daemonize { try becomeDaemon() }
        // The pid file written (nil when none could be: Tern runs on, as nutcracker does, so
        // that a unit whose /run directory is missing still starts; the warning says why).
        var pidFile = self.pidFile
        if let path = pidFile {
            let fd = open(path, O_WRONLY | O_TRUNC | O_CREAT, 0o644)
            if fd < 0 {
                logger.warning("cannot write pid file '\(path)': \(String(cString: strerror(errno))); running without one")
                pidFile = nil
            } else {
                let line = "\(getpid())\n"
                _ = line.withCString { write(fd, $0, strlen($0)) }
                close(fd)
            }
        }
        let threadCount: Int
        if let threads {
            threadCount = threads
        } else if let maxThreads {
            threadCount = maxThreads
        } else {
            let decision = defaultWorkerCount()
            var workers = decision.workers
            // One per CPU, but no more than the descriptor limit holds: a host with hundreds of
            // CPUs under a 1024 limit would not start with default flags (review of session 33).
            if let limit = TernServer.descriptorLimit() {
                let fitting = max(1, (limit - TernServer.descriptorsNeeded(workers: 0, pools: config.pools.count)) / 2)
                if workers > fitting {
                    logger.warning("worker threads: \(fitting) rather than \(workers), as the descriptor limit (\(limit), ulimit -n) holds no more")
                    workers = fitting
                }
            }
            threadCount = workers
            logger.info("worker threads: \(threadCount) (\(decision.reason))")
        }
        var options = ServerOptions(threads: threadCount, configPath: configFile, pidFile: pidFile)
        options.elasticWorkers = threads == nil
        options.activeWorkers = min(activeThreads, threadCount)
        options.activateAbove = activateAbove
        options.activateIdle = activateIdle
        options.statsAddress = statsAddress
        options.statsPort = noStats ? nil : statsPort
        options.adminAddress = adminAddress
        options.adminPort = adminPort
        options.shutdownTimeout = shutdownTimeout
        options.watchConfig = watchConfig
        options.dnsRefreshSeconds = dnsRefresh
        let server = TernServer(config: config, options: options, logger: logger, logDestination: destination)
        do {
            try server.prepare()
        } catch {
            logger.critical("\(error)")
            // Not left behind naming a process that is gone (an init script would take a
            // reused pid for Tern's).
            if let pidFile { unlink(pidFile) }
            throw ExitCode(1)
        }
        let status = server.run()
        // A start that failed after `prepare` (a worker thread) leaves no pid file either.
        if status != 0, let pidFile { unlink(pidFile) }
        throw ExitCode(status)
    }

    /// `--locate`: the placement `/locate` reports (`KeyLocator`, the request path's own), for
    /// the config file rather than the running process.
    func locate(_ config: TernConfig) throws {
        var pools = config.pools
        if let locatePool {
            pools = pools.filter { $0.name == locatePool }
            guard !pools.isEmpty else {
                printError("tern: --pool: no pool named '\(locatePool)' in '\(configFile)' (pools: \(config.pools.map(\.name).joined(separator: ", ")))")
                throw ExitCode(1)
            }
        }
        let locators = pools.map { KeyLocator(pool: $0) }
        var out = ""
        for key in locateKeys {
            for locator in locators {
                var location: KeyLocation? = locator.locate(Array(key.utf8))
                while let current = location {
                    out += "\(key)\t\(current.pool) → \(current.serverDescription)\n"
                    location = current.old
                }
            }
            if out.utf8.count > 65536 {
                print(out, terminator: "")
                out = ""
            }
        }
        print(out, terminator: "")
    }

    /// What `-t` prints and startup logs (README, "Security defaults"): pools open beyond
    /// loopback without a password, the stats port beyond loopback, a config file with secrets
    /// that others can read.
    func securityWarnings(_ config: TernConfig) -> [String] {
        var warnings = exposureWarnings(config)
        if !noStats, let warning = statsExposureWarning(address: statsAddress, port: statsPort) { warnings.append(warning) }
        if let warning = readableSecretWarning(config) { warnings.append(warning) }
        warnings += readableKeyWarnings(config)
        return warnings
    }

    func becomeDaemon() throws {
        let pid = fork()
        if pid < 0 { throw ExitCode(1) }
        if pid > 0 { Glibc.exit(0) }
        setsid()
        // As nutcracker's daemonize: a unix-socket listener without a mode in the config is
        // then 0777, which clients running as other users (php-fpm as www-data) connect to.
        // (The log file is already open; the pid file is written with an explicit 0644.)
        umask(0)
        let devNull = open("/dev/null", O_RDWR)
        if devNull >= 0 {
            dup2(devNull, 0)
            dup2(devNull, 1)
            if output != nil { dup2(devNull, 2) }
        }
    }
}


let statsDescription = """
pool stats:
  client_eof          "# eof on client connections"
  client_err          "# errors on client connections"
  client_connections  "# active client connections"
  server_ejects       "# times backend server was ejected"
  forward_error       "# times we encountered a forwarding error"
  fragments           "# fragments created from a multi-vector request"

server stats:
  server_eof          "# eof on server connections"
  server_err          "# errors on server connections"
  server_timedout     "# timeouts on server connections"
  server_connections  "# active server connections"
  server_ejected_at   "timestamp when server was ejected in usec since epoch"
  requests            "# requests"
  request_bytes       "total request bytes"
  responses           "# responses"
  response_bytes      "total response bytes"
  in_queue            "# requests in incoming queue"
  in_queue_bytes      "current request bytes in incoming queue"
  out_queue           "# requests in outgoing queue"
  out_queue_bytes     "current request bytes in outgoing queue"

Tern's own pool stats (after nutcracker's; exporters that read known names ignore them):
  warm-up pools       warmup_new_hits, warmup_old_hits, warmup_misses, warmup_copies,
                      warmup_copies_skipped, warmup_old_errors, warmup_old_deletes,
                      warmup_new_hit_ratio_basis_points; each old server as a server object
                      named "warmup_old:<name>", with the server stats above
  Redis pools         transactions_exec, transactions_execabort, watches, blocking_requests,
                      dedicated_connections_in_use, subscribed_clients, pubsub_messages,
                      blocked_clients
  Redis Cluster pools cluster_slot_map_version, cluster_slot_map_refreshed_at, cluster_refreshes,
                      cluster_refresh_failures, cluster_masters, cluster_known_nodes,
                      cluster_slots_assigned, cluster_redirects_moved, cluster_redirects_ask,
                      cluster_redirects_given_up, cluster_tryagain_retries
  Sentinel pools      sentinel_masters_known, sentinel_switches, sentinel_refreshes,
                      sentinel_refresh_failures, sentinel_role_mismatches
"""

func printError(_ text: String) {
    var line = text + "\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}
