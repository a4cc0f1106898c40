// Every syscall of the data path goes through this file: EINTR is retried here and EAGAIN
// comes back as a value, so the connection code never looks at errno.
#if canImport(Glibc)
import Glibc
#endif
import CLibev

enum IOResult {
    case transferred(Int)
    case wouldBlock
    case endOfFile
    case failed(Int32)
}

enum Syscall {
    static func read(_ fd: Int32, into buffer: ByteBuffer, atLeast: Int = ByteBuffer.readSlack) -> IOResult {
        let target = buffer.reserve(atLeast)
        let room = buffer.writableCount
        while true {
            let count = Glibc.read(fd, target, room)
            if count > 0 { buffer.commit(count); return .transferred(count) }
            if count == 0 { return .endOfFile }
            let error = errno
            if error == EINTR { continue }
            if error == EAGAIN || error == EWOULDBLOCK { return .wouldBlock }
            return .failed(error)
        }
    }

    static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> IOResult {
        while true {
            let count = Glibc.write(fd, bytes.baseAddress, bytes.count)
            if count >= 0 { return .transferred(count) }
            let error = errno
            if error == EINTR { continue }
            if error == EAGAIN || error == EWOULDBLOCK { return .wouldBlock }
            return .failed(error)
        }
    }

    /// One `writev` of `pieces` (at most 1024, Linux's IOV_MAX, are taken).
    static func writev(_ fd: Int32, _ pieces: ContiguousArray<UnsafeRawBufferPointer>) -> IOResult {
        var vectors = ContiguousArray<iovec>()
        vectors.reserveCapacity(min(pieces.count, 1024))
        for piece in pieces.prefix(1024) {
            vectors.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: piece.baseAddress), iov_len: piece.count))
        }
        return vectors.withUnsafeBufferPointer { vectors in
            while true {
                let count = Glibc.writev(fd, vectors.baseAddress, Int32(vectors.count))
                if count >= 0 { return .transferred(count) }
                let error = errno
                if error == EINTR { continue }
                if error == EAGAIN || error == EWOULDBLOCK { return .wouldBlock }
                return .failed(error)
            }
        }
    }

    static func close(_ fd: Int32) { _ = Glibc.close(fd) }

    static func errorText(_ error: Int32) -> String {
        String(cString: strerror(error))
    }

    /// `errorText` of a refused connect, and of a Unix socket whose file is gone.
    static let refusedText = errorText(ECONNREFUSED)
    static let noSuchFileText = errorText(ENOENT)

    static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32 = 1) {
        var value = value
        _ = setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<Int32>.size))
    }

    static func setNonBlocking(_ fd: Int32) {
        let flags = fcntl(fd, F_GETFL, 0)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    }

    static func accept(_ fd: Int32) -> IOResult {
        while true {
            let client = accept4(fd, nil, nil, TERN_SOCK_NONBLOCK | TERN_SOCK_CLOEXEC)
            if client >= 0 { return .transferred(Int(client)) }
            let error = errno
            if error == EINTR { continue }
            if error == EAGAIN || error == EWOULDBLOCK { return .wouldBlock }
            return .failed(error)
        }
    }

    /// The pending error of a socket (after a non-blocking connect).
    static func socketError(_ fd: Int32) -> Int32 {
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        _ = getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
        return error
    }

    /// Why a connect failed when it reached this host's own socket instead of the server.
    static let connectedToItself = "connected to itself (nothing listens on the server's port)"

    /// The socket's close sends a reset and leaves no TIME-WAIT (SO_LINGER 0): a socket connected
    /// to itself would otherwise hold the server's port for a minute, and the server could not
    /// bind it when it starts.
    static func resetOnClose(_ fd: Int32) {
        var value = linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &value, socklen_t(MemoryLayout<linger>.size))
    }

    /// Whether a connected TCP socket is connected to itself: its local address is its peer's.
    /// Linux does this to a connect to a port of this host in the ephemeral range while nothing
    /// listens there, once it picks that very port as the source (TCP's simultaneous open).
    static func isConnectedToItself(_ fd: Int32) -> Bool {
        var local = sockaddr_storage(), peer = sockaddr_storage()
        var localLength = socklen_t(MemoryLayout<sockaddr_storage>.size), peerLength = localLength
        let gotLocal = withUnsafeMutableBytes(of: &local) { getsockname(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), &localLength) }
        let gotPeer = withUnsafeMutableBytes(of: &peer) { getpeername(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), &peerLength) }
        guard gotLocal == 0, gotPeer == 0, localLength == peerLength else { return false }
        return withUnsafeBytes(of: &local) { localBytes in
            withUnsafeBytes(of: &peer) { peerBytes in localBytes.prefix(Int(localLength)).elementsEqual(peerBytes.prefix(Int(peerLength))) }
        }
    }
}

/// A resolved socket address, kept as bytes so it can cross threads.
struct SocketAddress: Sendable, Equatable {
    var family: Int32
    var bytes: [UInt8]

    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        bytes.withUnsafeBytes { raw in
            body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(raw.count))
        }
    }

    static func unix(_ path: String) -> SocketAddress? {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(path.utf8)
        guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return nil }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in pathBytes.enumerated() { raw[i] = byte }
            raw[pathBytes.count] = 0
        }
        let bytes = withUnsafeBytes(of: &address) { Array($0) }
        return SocketAddress(family: AF_UNIX, bytes: bytes)
    }

    /// Resolves a host name or address (blocking: call off the event loops).
    static func resolve(host: String, port: Int) -> Result<SocketAddress, ResolveError> {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &result)
        guard status == 0, let first = result else {
            return .failure(ResolveError(message: "cannot resolve '\(host)': \(String(cString: gai_strerror(status)))"))
        }
        defer { freeaddrinfo(result) }
        let bytes = Array(UnsafeRawBufferPointer(start: first.pointee.ai_addr, count: Int(first.pointee.ai_addrlen)))
        return .success(SocketAddress(family: first.pointee.ai_family, bytes: bytes))
    }
}

struct ResolveError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}
