#if canImport(Glibc)
import Glibc
#endif
import Logging
import Synchronization

/// Where log lines go: standard error, or the file named by `-o`.
final class LogDestination: Sendable {
    let descriptor: Mutex<Int32>
    init(descriptor: Int32) { self.descriptor = Mutex(descriptor) }

    func write(_ line: String) {
        var line = line
        descriptor.withLock { fd in
            line.withUTF8 { bytes in _ = Glibc.write(fd, bytes.baseAddress, bytes.count) }
        }
    }
}

/// nutcracker-style lines: `[2026-11-21 07:13:00.123] message`.
struct TernLogHandler: LogHandler {
    let destination: LogDestination
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String, file: String, function: String, line: UInt) {
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
        destination.write("[\(stamp).\(padded)] \(message)\n")
    }
}

/// nutcracker's verbosity (0...11, default 5 = notice) as a swift-log level.
func logLevel(forVerbosity verbosity: Int) -> Logger.Level {
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
