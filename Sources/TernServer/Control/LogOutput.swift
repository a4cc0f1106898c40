#if canImport(Glibc)
import Glibc
#endif
import Logging
import Synchronization

/// Where log lines go (standard error, or the file named by `-o`, reopened on SIGHUP) and at
/// which level (raised by SIGTTIN, lowered by SIGTTOU).
public final class LogDestination: Sendable {
    private let descriptor: Locked<Int32>
    private let path: String?
    private let levelIndex: Atomic<Int>

    public init(path: String?, level: Logger.Level) throws {
        self.path = path
        var fd: Int32 = 2
        if let path {
            fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
            if fd < 0 { throw StartupError(description: "cannot open log file '\(path)': \(String(cString: strerror(errno)))") }
        }
        descriptor = Locked(fd)
        levelIndex = Atomic(Logger.Level.allCases.firstIndex(of: level) ?? 3)
    }

    public var level: Logger.Level { Logger.Level.allCases[levelIndex.load(ordering: .relaxed)] }

    /// More verbose (SIGTTIN) or less (SIGTTOU); returns the new level.
    @discardableResult
    public func adjustLevel(moreVerbose: Bool) -> Logger.Level {
        let current = levelIndex.load(ordering: .relaxed)
        let next = moreVerbose ? max(0, current - 1) : min(Logger.Level.allCases.count - 1, current + 1)
        levelIndex.store(next, ordering: .relaxed)
        return Logger.Level.allCases[next]
    }

    /// Reopens the log file (after logrotate moved it).
    public func reopen() {
        guard let path else { return }
        let fresh = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard fresh >= 0 else { return }
        descriptor.withLock { fd in
            Glibc.close(fd)
            fd = fresh
        }
    }

    func write(_ line: String) {
        var line = line
        descriptor.withLock { fd in
            line.withUTF8 { bytes in _ = Glibc.write(fd, bytes.baseAddress, bytes.count) }
        }
    }

    public func makeLogger() -> Logger {
        Logger(label: "tern") { _ in TernLogHandler(destination: self) }
    }
}

/// nutcracker-style lines: `[2026-11-21 07:13:00.123] message`.
struct TernLogHandler: LogHandler {
    let destination: LogDestination
    var logLevel: Logger.Level {
        get { destination.level }
        set {}
    }
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        localtime_r(&seconds, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let length = strftime(&buffer, buffer.count, "%Y-%m-%d %H:%M:%S", &parts)
        let stamp = String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let millis = Int(now.tv_nsec / 1_000_000)
        let padded = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
        destination.write("[\(stamp).\(padded)] \(event.message)\n")
    }
}

/// nutcracker's verbosity (0...11, default 5 = notice) as a swift-log level.
public func logLevel(forVerbosity verbosity: Int) -> Logger.Level {
    switch verbosity {
    case ...2: return .critical
    case 3: return .error
    case 4: return .warning
    case 5: return .notice
    case 6: return .info
    case 7: return .debug
    default: return .trace
    }
}
