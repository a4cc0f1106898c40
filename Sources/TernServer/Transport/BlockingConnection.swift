#if canImport(Glibc)
import Glibc
#endif
import CLibev
import CTernTLS
import TernCore

/// A blocking connection bounded by deadlines, plain or TLS, for the threads that work off the
/// event loops: cluster discovery (`CLUSTER SLOTS`), the Sentinel watcher (its questions and
/// its subscriptions) and the INFO poller. The socket stays non-blocking; every wait is a
/// `poll()` on what the kernel or OpenSSL asked for (readable, writable) until the deadline.
///
/// Confined to the thread that opened it (the `TLSStream` inside is not shared).
final class BlockingConnection {
    struct Failure: Error { var text: String }

    let descriptor: Int32
    /// nil: plain TCP.
    private(set) var tls: TLSStream?

    private init(descriptor: Int32) { self.descriptor = descriptor }

    deinit {
        // close_notify (if it can go without blocking) before the socket closes; the stream
        // itself may outlive this by a moment (a caller's reference) and then writes nothing.
        tls?.shutdown()
        tls = nil
        Glibc.close(descriptor)
    }

    static func now() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    /// Connects to `address` and, with `tls`, does the handshake (verifying `serverName` when
    /// the context verifies), all before `deadline` (`now()`-based seconds).
    static func open(_ address: SocketAddress, tls context: TLSContext?, serverName: String?, deadline: Double) -> Result<BlockingConnection, Failure> {
        start(address).flatMap { $0.finish(tls: context, serverName: serverName, deadline: deadline) }
    }

    /// The first half of `open`: the connect started, not waited for, so that a thread with
    /// several servers to reach starts them all before it waits for any (the INFO poller).
    static func start(_ address: SocketAddress) -> Result<BlockingConnection, Failure> {
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | TERN_SOCK_NONBLOCK | TERN_SOCK_CLOEXEC, 0)
        guard fd >= 0 else { return .failure(Failure(text: Syscall.errorText(errno))) }
        let connection = BlockingConnection(descriptor: fd)
        if address.withSockaddr({ Glibc.connect(fd, $0, $1) }) != 0, errno != EINPROGRESS {
            return .failure(Failure(text: Syscall.errorText(errno)))
        }
        return .success(connection)
    }

    /// The second half of `open`: waits for the connect `start` began and, with `tls`, does the
    /// handshake, before `deadline`.
    func finish(tls context: TLSContext?, serverName: String?, deadline: Double) -> Result<BlockingConnection, Failure> {
        var events = Int16(POLLOUT)
        while true {
            guard wait(events, deadline: deadline) else {
                return .failure(Failure(text: isConnected ? "TLS handshake timed out" : Syscall.errorText(ETIMEDOUT)))
            }
            switch openStep(tls: context, serverName: serverName) {
            case .done: return .success(self)
            case let .wait(next): events = next
            case let .failed(failure): return .failure(failure)
            }
        }
    }

    enum OpenStep { case done, wait(Int16), failed(Failure) }

    /// The connect `start` began has finished.
    private var isConnected = false

    /// One step of opening, without waiting: call it first once the socket is writable (the
    /// connect finished, or failed), then whenever it is ready for what the last step asked.
    /// With `tls`, the handshake follows the connect (verifying `serverName` when the context
    /// verifies). A thread opening several connections steps them all from one `poll()`.
    func openStep(tls context: TLSContext?, serverName: String?) -> OpenStep {
        if !isConnected {
            let error = Syscall.socketError(descriptor)
            guard error == 0 else { return .failed(Failure(text: Syscall.errorText(error))) }
            // A connect that reached this socket itself (nothing listens on the server's port,
            // which is in the ephemeral range): closed with a reset, so it leaves no TIME-WAIT
            // holding the port the server needs to start (the INFO poller and the discovery
            // threads retry a server that is down, as the workers do).
            if Syscall.isConnectedToItself(descriptor) {
                Syscall.resetOnClose(descriptor)
                return .failed(Failure(text: Syscall.connectedToItself))
            }
            isConnected = true
            guard let context else { return .done }
            guard let stream = TLSStream(context: context, descriptor: descriptor, serverName: context.serverName ?? serverName) else {
                return .failed(Failure(text: "TLS setup failed: \(TLSStream.lastError())"))
            }
            tls = stream
        }
        guard let stream = tls else { return .done }
        switch stream.handshake() {
        case .done: return .done
        case .wantRead: return .wait(Int16(POLLIN))
        case .wantWrite: return .wait(Int16(POLLOUT))
        case .closed: return .failed(Failure(text: "server closed the connection during the TLS handshake (is it a TLS port?)"))
        case let .failed(reason): return .failed(Failure(text: "TLS handshake: \(reason)"))
        }
    }

    /// Writes all of `bytes` before `deadline`.
    func writeAll(_ bytes: [UInt8], deadline: Double) -> Result<Void, Failure> {
        var sent = 0
        while sent < bytes.count {
            let result = bytes[sent...].withUnsafeBytes { Transport.write(descriptor, tls, $0) }
            switch result {
            case let .transferred(count):
                sent += count
            case .wouldBlock:
                let events = tls?.writeWantsRead == true ? Int16(POLLIN) : Int16(POLLOUT)
                guard wait(events, deadline: deadline) else { return .failure(Failure(text: "timed out")) }
            case .endOfFile:
                return .failure(Failure(text: "server closed the connection"))
            case let .failed(error):
                return .failure(Failure(text: tls == nil ? Syscall.errorText(error) : "TLS write failed"))
            }
        }
        return .success(())
    }

    enum ReadStep { case bytes(Int), wouldBlock(Int16), closed, failed(String) }

    /// One read without waiting: bytes, what to wait for before reading again, the end of the
    /// stream, or a failure.
    func readNow(into chunk: inout [UInt8]) -> ReadStep {
        guard let tls else {
            let count = recv(descriptor, &chunk, chunk.count, Int32(MSG_DONTWAIT))
            if count > 0 { return .bytes(count) }
            if count == 0 { return .closed }
            return errno == EAGAIN || errno == EINTR ? .wouldBlock(Int16(POLLIN)) : .failed(Syscall.errorText(errno))
        }
        let count = chunk.withUnsafeMutableBytes { tern_tls_read(tls.pointer, $0.baseAddress, $0.count) }
        if count > 0 { return .bytes(count) }
        switch Int32(count) {
        case 0: return .closed
        case TERN_TLS_WANT_READ: return .wouldBlock(Int16(POLLIN))
        case TERN_TLS_WANT_WRITE: return .wouldBlock(Int16(POLLOUT))
        default: return .failed(TLSStream.lastError())
        }
    }

    /// Reads at least one byte into `chunk` before `deadline`; the count.
    func read(into chunk: inout [UInt8], deadline: Double) -> Result<Int, Failure> {
        while true {
            switch readNow(into: &chunk) {
            case let .bytes(count): return .success(count)
            case .closed: return .failure(Failure(text: "server closed the connection"))
            case let .failed(reason): return .failure(Failure(text: reason))
            case let .wouldBlock(events):
                guard wait(events, deadline: deadline) else { return .failure(Failure(text: "timed out")) }
            }
        }
    }

    /// Decrypted bytes OpenSSL holds, which `poll()` will not announce.
    var hasPending: Bool { tls?.hasPending ?? false }

    /// Waits for `events` until `deadline`; false on timeout.
    private func wait(_ events: Int16, deadline: Double) -> Bool {
        while true {
            var entry = pollfd(fd: descriptor, events: events, revents: 0)
            let remaining = Int32(max(0, (deadline - Self.now()) * 1000))
            let result = poll(&entry, 1, remaining)
            if result > 0 { return true }
            if result < 0, errno == EINTR { continue }
            return false
        }
    }
}
