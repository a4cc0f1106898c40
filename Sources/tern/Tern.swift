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

    @Option(name: [.customShort("s"), .customLong("stats-port")], help: "Stats monitoring port.")
    var statsPort = 22222

    @Option(name: [.customShort("a"), .customLong("stats-addr")], help: "Stats monitoring address.")
    var statsAddress = "0.0.0.0"

    @Option(name: [.customShort("i"), .customLong("stats-interval")], help: "Stats aggregation interval in milliseconds.")
    var statsInterval = 30000

    @Option(name: [.customShort("p"), .customLong("pid-file")], help: "Pid file.")
    var pidFile: String?

    @Option(name: [.customShort("m"), .customLong("mbuf-size")], help: "Accepted for nutcracker compatibility; Tern sizes its buffers itself.")
    var mbufSize = 16384

    @Option(name: .customLong("threads"), help: "Worker threads, each with its own event loop (default: online CPUs).")
    var threads: Int?

    func run() throws {
        if showVersion {
            print("This is tern-\(ternVersion)")
            return
        }
        if describeStats {
            print("Stats are not served yet by this version of tern.")
            return
        }
        let text: String
        do {
            text = try readFile(configFile)
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
        if testConfig {
            printError("tern: configuration file '\(configFile)' syntax is ok")
            return
        }
        var destinationDescriptor: Int32 = 2
        if let output {
            destinationDescriptor = open(output, O_WRONLY | O_APPEND | O_CREAT, 0o644)
            if destinationDescriptor < 0 {
                printError("tern: cannot open log file '\(output)': \(String(cString: strerror(errno)))")
                throw ExitCode(1)
            }
        }
        let destination = LogDestination(descriptor: destinationDescriptor)
        let level = logLevel(forVerbosity: verbosity)
        let logger = Logger(label: "tern") { _ in TernLogHandler(destination: destination, logLevel: level) }

        if daemonize { try becomeDaemon() }
        if let pidFile {
            let fd = open(pidFile, O_WRONLY | O_TRUNC | O_CREAT, 0o644)
            if fd < 0 {
                printError("tern: cannot write pid file '\(pidFile)': \(String(cString: strerror(errno)))")
                throw ExitCode(1)
            }
            let line = "\(getpid())\n"
            _ = line.withCString { write(fd, $0, strlen($0)) }
            close(fd)
        }
        let threadCount = threads ?? Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        let server = TernServer(config: config, options: ServerOptions(threads: threadCount, pidFile: pidFile), logger: logger)
        do {
            try server.prepare()
        } catch {
            logger.critical("\(error)")
            throw ExitCode(1)
        }
        if CommandLine.arguments.contains(where: { $0 == "-s" || $0.hasPrefix("--stats-port") || $0 == "-a" || $0.hasPrefix("--stats-addr") }) {
            logger.notice("stats endpoint (\(statsAddress):\(statsPort)) is not implemented yet")
        }
        let status = server.run()
        throw ExitCode(status)
    }

    func becomeDaemon() throws {
        let pid = fork()
        if pid < 0 { throw ExitCode(1) }
        if pid > 0 { Glibc.exit(0) }
        setsid()
        let devNull = open("/dev/null", O_RDWR)
        if devNull >= 0 {
            dup2(devNull, 0)
            dup2(devNull, 1)
            if output != nil { dup2(devNull, 2) }
        }
    }
}

func printError(_ text: String) {
    var line = text + "\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

struct FileError: Error, CustomStringConvertible {
    var description: String
}

func readFile(_ path: String) throws -> String {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw FileError(description: String(cString: strerror(errno))) }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = read(fd, &chunk, chunk.count)
        if count < 0 { throw FileError(description: String(cString: strerror(errno))) }
        if count == 0 { break }
        bytes.append(contentsOf: chunk[0..<count])
    }
    return String(decoding: bytes, as: UTF8.self)
}
