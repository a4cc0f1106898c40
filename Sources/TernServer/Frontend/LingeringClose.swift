#if canImport(Glibc)
import Glibc
#endif
import CLibev

/// A client socket Tern has closed its side of, kept open for a moment while what the client
/// still sends is read and dropped (a lingering close, as web servers make). Closing a socket
/// with unread input makes the kernel answer with a reset, and a reset makes the client's
/// kernel drop the replies it had not read yet: a client still sending a deep pipeline when
/// Tern drained, or removed its pool, lost thousands of replies to requests its backend had
/// run (reload sweep 29). Confined to its worker's thread.
final class LingeringSocket {
    let descriptor: Int32
    /// Closed at this loop time whatever the client does.
    let deadline: Double
    var watcher: IOWatcher?
    private(set) var isClosed = false

    /// How long a socket lingers, and how many may at once per worker (past that, closed at once).
    static let seconds = 2.0
    static let maxPerWorker = 1024
    /// Reads made per readiness: a client sending without pause does not hold the loop.
    static let readsPerEvent = 64

    private init(descriptor: Int32, deadline: Double) {
        self.descriptor = descriptor
        self.deadline = deadline
    }

    /// Ends the write side (a FIN after the replies already sent), then reads what is waiting:
    /// at the client's end (or an error) the socket closes now, and so it does when nothing was
    /// waiting from a client that was not sending (`wasSending`: it had a request in flight or
    /// in part): an idle client may not close its side until it next uses the connection, and
    /// would hold a drain for the whole linger. Else the result lingers.
    static func close(_ descriptor: Int32, wasSending: Bool, now: Double) -> LingeringSocket? {
        _ = Glibc.shutdown(descriptor, Int32(SHUT_WR))
        let socket = LingeringSocket(descriptor: descriptor, deadline: now + seconds)
        if socket.discard() == 0, !wasSending { socket.close() }
        return socket.isClosed ? nil : socket
    }

    /// Reads and drops what the client sent; closes the socket at its end or on an error.
    /// Returns the reads that brought bytes.
    @discardableResult
    func discard() -> Int {
        guard !isClosed else { return 0 }
        return withUnsafeTemporaryAllocation(byteCount: 16384, alignment: 16) { buffer in
            var reads = 0
            while reads < Self.readsPerEvent {
                let count = Glibc.read(descriptor, buffer.baseAddress, buffer.count)
                if count > 0 {
                    reads += 1
                    continue
                }
                if count < 0, errno == EINTR { continue }
                if count < 0, errno == EAGAIN || errno == EWOULDBLOCK { return reads }
                close()
                return reads
            }
            return reads
        }
    }

    func close() {
        guard !isClosed else { return }
        isClosed = true
        watcher?.watch(0)
        Syscall.close(descriptor)
    }
}

extension FrontendLoop {
    /// Closes a client's socket: at once when the client has ended its side too, or was idle
    /// with nothing unread, else after it has (or `LingeringSocket.seconds`), its input
    /// dropped meanwhile.
    final func closeClientSocket(_ descriptor: Int32, wasSending: Bool) {
        guard let socket = LingeringSocket.close(descriptor, wasSending: wasSending, now: now) else { return }
        // (Never called from a lingering socket's callback: closed ones can go here.)
        if lingering.count >= LingeringSocket.maxPerWorker { lingering.removeAll { $0.isClosed } }
        guard lingering.count < LingeringSocket.maxPerWorker else { return socket.close() }
        let watcher = IOWatcher.make(loop: loop, descriptor: descriptor, owner: socket) { _, watcher, _ in
            // The socket is alive: `lingering` holds it until it is closed and swept.
            Unmanaged<LingeringSocket>.fromOpaque(tern_get_data(watcher)!).takeUnretainedValue().discard()
        }
        socket.watcher = watcher
        watcher.watch(TERN_EV_READ)
        lingering.append(socket)
    }

    /// Closes the sockets past their deadline and forgets the closed ones (from a timer or a
    /// flush, never from a lingering socket's own callback).
    final func sweepLingering(now: Double) {
        guard !lingering.isEmpty else { return }
        for socket in lingering where now >= socket.deadline { socket.close() }
        lingering.removeAll { $0.isClosed }
    }
}
