// The transport seam: how a connection's bytes cross its socket, plain or TLS. Client and
// backend connections read and write only through `Transport`; TLS is an optional
// `TLSStream` beside the descriptor (a closed choice checked with one branch, no existential).
#if canImport(Glibc)
import Glibc
#endif
import CTernTLS
import TernCore

/// A TLS context: certificates, keys and verification settings, built off the event loops
/// (startup, reload) and shared by every worker.
///
/// `@unchecked Sendable`: the OpenSSL context is never changed after `init`, and OpenSSL 3
/// allows connections to be made from one context on several threads at once.
final class TLSContext: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer
    let isServer: Bool
    /// Backend side: the name verified (and sent as SNI) for every server, overriding each
    /// server's host (`server_tls.server_name`).
    let serverName: String?
    let verify: Bool
    /// Client side: a verified certificate's common name selects the user.
    let userFromCertificate: Bool

    private init(pointer: UnsafeMutableRawPointer, isServer: Bool, serverName: String?, verify: Bool, userFromCertificate: Bool) {
        self.pointer = pointer
        self.isServer = isServer
        self.serverName = serverName
        self.verify = verify
        self.userFromCertificate = userFromCertificate
    }

    deinit { tern_tls_context_free(pointer) }

    /// The context a pool's listener accepts TLS clients with; throws the reason when a file is
    /// missing, unreadable or the key does not match the certificate.
    static func listener(_ config: ClientTLSConfig, pool: String) throws(TLSSetupError) -> TLSContext {
        var error = [CChar](repeating: 0, count: 256)
        let made = tern_tls_server_context(config.cert, config.key, config.ca, Self.clientAuthCode(config.clientAuth),
                                           config.minVersion.code, &error, error.count)
        guard let made else { throw TLSSetupError(message: "pool '\(pool)': tls: \(Self.text(error)) (cert \(config.cert), key \(config.key))") }
        return TLSContext(pointer: made, isServer: true, serverName: nil, verify: true, userFromCertificate: config.userFromCertificate)
    }

    /// The context a pool connects to its TLS servers with.
    static func backend(_ config: ServerTLSConfig, pool: String) throws(TLSSetupError) -> TLSContext {
        var error = [CChar](repeating: 0, count: 256)
        let made = tern_tls_client_context(config.ca, config.cert, config.key, config.verify ? 1 : 0,
                                           config.minVersion.code, &error, error.count)
        guard let made else { throw TLSSetupError(message: "pool '\(pool)': server_tls: \(Self.text(error))") }
        return TLSContext(pointer: made, isServer: false, serverName: config.serverName, verify: config.verify, userFromCertificate: false)
    }

    private static func clientAuthCode(_ mode: TLSClientAuth) -> Int32 {
        switch mode {
        case .none: TERN_TLS_CLIENT_AUTH_NONE
        case .optional: TERN_TLS_CLIENT_AUTH_OPTIONAL
        case .required: TERN_TLS_CLIENT_AUTH_REQUIRED
        }
    }

    static func text(_ buffer: [CChar]) -> String {
        buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }
}

struct TLSSetupError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// One connection's TLS state. Owned by the connection, so confined to its worker's thread.
final class TLSStream {
    let pointer: UnsafeMutableRawPointer
    /// Keeps the context alive as long as the connection (OpenSSL also counts it).
    let context: TLSContext
    private(set) var isEstablished = false
    /// The last read stopped because TLS needed the socket writable (a rare TLS 1.3 key
    /// update): the connection watches for writability and reads again then.
    var readWantsWrite = false
    /// The last write stopped because TLS needed to read first.
    var writeWantsRead = false
    /// The last read stopped at its cap of records (`Transport.read`'s `records`) with the
    /// socket not known to be drained: the caller reads again at a later loop pass.
    var readReachedRecordCap = false

    /// nil when OpenSSL cannot make the connection (out of memory).
    init?(context: TLSContext, descriptor: Int32, serverName: String?) {
        guard let made = tern_tls_new(context.pointer, descriptor, context.isServer ? 1 : 0, serverName, context.verify ? 1 : 0) else { return nil }
        pointer = made
        self.context = context
    }

    /// Frees OpenSSL's state only: whoever owns the socket calls `shutdown()` before closing
    /// it. (A stream can outlive its socket by a moment — a caller's local reference — and
    /// the socket's number may by then belong to another connection on another worker.)
    deinit { tern_tls_free(pointer) }

    /// Sends close_notify if the socket takes it now. Call just before closing the socket.
    func shutdown() { tern_tls_shutdown(pointer) }

    enum HandshakeStep { case done, wantRead, wantWrite, closed, failed(String) }

    func handshake() -> HandshakeStep {
        switch tern_tls_handshake(pointer) {
        case 1:
            isEstablished = true
            return .done
        case TERN_TLS_WANT_READ: return .wantRead
        case TERN_TLS_WANT_WRITE: return .wantWrite
        case TERN_TLS_CLOSED: return .closed
        default: return .failed(Self.lastError())
        }
    }

    /// Decrypted bytes waiting inside OpenSSL, which the socket will not announce again.
    var hasPending: Bool { tern_tls_pending(pointer) > 0 }

    /// Bytes of a record not complete yet (or decrypted bytes) held inside OpenSSL.
    var hasBufferedBytes: Bool { tern_tls_has_buffered(pointer) != 0 }

    /// The verified client certificate's subject common name (nil: no verified certificate).
    func peerCommonName() -> String? {
        var buffer = [CChar](repeating: 0, count: 256)
        let count = tern_tls_peer_common_name(pointer, &buffer, buffer.count)
        guard count > 0 else { return nil }
        return TLSContext.text(buffer)
    }

    static func lastError() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        tern_tls_last_error(&buffer, buffer.count)
        let text = TLSContext.text(buffer)
        return text.isEmpty ? "TLS failure" : text
    }
}

/// How reading a connection ended.
enum ReadOutcome {
    /// Nothing more to read now (or the buffer reached its cap, see `Transport.read`).
    case drained
    case endOfFile
    case failed(String)
}

enum Transport {
    /// Reads into `buffer` until the socket is drained, this call has read `cap` bytes, the peer
    /// ends the stream, or an error. Plain sockets: a read that leaves room in the buffer
    /// drained the socket (the watcher is level-triggered, so what comes later is reported
    /// again), which saves the EAGAIN read. TLS: records are read until OpenSSL wants the
    /// socket, since a record can hold less than the socket had.
    /// `records`: most TLS records decrypted by this call. Bytes bound a plain read's work, but
    /// not a TLS read's: a client sending one-byte records as fast as it can kept the loop
    /// decrypting (each record a `read` or two and a decryption) for seconds, every other
    /// client of the worker waiting (admin sweep 29). Past the cap the stream says so
    /// (`readReachedRecordCap`).
    @inline(__always)
    static func read(_ descriptor: Int32, _ tls: TLSStream?, into buffer: ByteBuffer, cap: Int = 4 << 20, records: Int = .max) -> ReadOutcome {
        // The cap counts what this call reads, not what the buffer held before it: a large frame
        // being received still moves up to `cap` bytes per loop pass, not one read's worth, and
        // the bytes already buffered are looked at (framed, sized) between two such batches.
        let limit = buffer.readableCount + cap
        if let tls { return readTLS(tls, into: buffer, upTo: limit, records: records) }
        while true {
            switch Syscall.read(descriptor, into: buffer) {
            case .transferred:
                if buffer.writableCount > 0 || buffer.readableCount >= limit { return .drained }
            case .wouldBlock:
                return .drained
            case .endOfFile:
                return .endOfFile
            case let .failed(error):
                return .failed(Syscall.errorText(error))
            }
        }
    }

    private static func readTLS(_ tls: TLSStream, into buffer: ByteBuffer, upTo limit: Int, records: Int) -> ReadOutcome {
        tls.readWantsWrite = false
        tls.readReachedRecordCap = false
        var left = records
        // At least one read, as the plain path makes: a frame larger than the cap completes
        // over several calls.
        repeat {
            let target = buffer.reserve(16384)
            let count = tern_tls_read(tls.pointer, target, buffer.writableCount)
            if count > 0 {
                buffer.commit(count)
                left -= 1
                if left == 0 {
                    tls.readReachedRecordCap = true
                    return .drained
                }
                continue
            }
            switch Int32(count) {
            case 0: return .endOfFile
            case TERN_TLS_WANT_READ: return .drained
            case TERN_TLS_WANT_WRITE:
                tls.readWantsWrite = true
                return .drained
            default: return .failed(TLSStream.lastError())
            }
        } while buffer.readableCount < limit
        return .drained
    }

    /// Writes as much of `bytes` as the socket takes. TLS: one record per call into OpenSSL
    /// (partial writes are on), repeated until everything is written or the socket is full.
    @inline(__always)
    static func write(_ descriptor: Int32, _ tls: TLSStream?, _ bytes: UnsafeRawBufferPointer) -> IOResult {
        guard let tls else { return Syscall.write(descriptor, bytes) }
        tls.writeWantsRead = false
        var written = 0
        while written < bytes.count {
            let count = tern_tls_write(tls.pointer, bytes.baseAddress! + written, bytes.count - written)
            if count > 0 {
                written += count
                continue
            }
            if Int32(count) == TERN_TLS_WANT_READ { tls.writeWantsRead = true }
            if Int32(count) == TERN_TLS_WANT_READ || Int32(count) == TERN_TLS_WANT_WRITE {
                return written > 0 ? .transferred(written) : .wouldBlock
            }
            // The stream is over; the caller reports a failed write (EPIPE) and closes. OpenSSL's
            // reason is dropped with the thread's error state.
            _ = TLSStream.lastError()
            return written > 0 ? .transferred(written) : .failed(EPIPE)
        }
        return .transferred(written)
    }
}
