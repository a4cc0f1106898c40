// A small shim over Debian's OpenSSL (libssl-dev) for Tern's TLS transport.
//
// Everything here is non-blocking: a call that needs the socket to become readable or
// writable returns TERN_TLS_WANT_READ / TERN_TLS_WANT_WRITE and is called again when libev
// says so. Contexts (SSL_CTX) are built off the event loops and shared read-only by every
// worker (OpenSSL 3 allows SSL_new on one context from several threads); a connection's SSL
// object belongs to the worker that owns the connection. OpenSSL's error queue is per
// thread: every function here clears it before returning.
#ifndef TERN_TLS_H
#define TERN_TLS_H

#include <stddef.h>

#define TERN_TLS_WANT_READ (-1)
#define TERN_TLS_WANT_WRITE (-2)
#define TERN_TLS_ERROR (-3)
/// The handshake ended because the peer closed the connection without sending anything.
#define TERN_TLS_CLOSED (-4)

/// Client certificates a listener asks for.
#define TERN_TLS_CLIENT_AUTH_NONE 0
#define TERN_TLS_CLIENT_AUTH_OPTIONAL 1
#define TERN_TLS_CLIENT_AUTH_REQUIRED 2

/// A context for accepting TLS clients. `ca` (may be NULL) verifies client certificates.
/// `min_version`: 0x0303 for TLS 1.2, 0x0304 for TLS 1.3. NULL on failure, with the reason
/// in `error`.
void *tern_tls_server_context(const char *cert, const char *key, const char *ca, int client_auth,
                              int min_version, char *error, size_t error_length);

/// A context for connecting to TLS backends. `ca` NULL: the system's trust store. `cert`/`key`
/// (both or neither) are presented when the backend asks for a client certificate.
void *tern_tls_client_context(const char *ca, const char *cert, const char *key, int verify,
                              int min_version, char *error, size_t error_length);

void tern_tls_context_free(void *context);

/// A TLS connection over the connected non-blocking socket `fd`. Client side (`is_server` 0):
/// `server_name` (may be NULL) is sent as SNI when it is a host name and, with `verify`,
/// checked against the certificate (host name or IP address).
void *tern_tls_new(void *context, int fd, int is_server, const char *server_name, int verify);

/// 1 once the handshake is done, or WANT_READ / WANT_WRITE / ERROR, or CLOSED when the peer
/// closed the connection before sending a byte (a TCP health check, not a failed handshake).
int tern_tls_handshake(void *tls);

/// Bytes read (> 0), 0 at the end of the stream (close_notify or the peer closing the socket),
/// or WANT_READ / WANT_WRITE / ERROR.
long tern_tls_read(void *tls, void *buffer, size_t length);

/// Bytes written (> 0, possibly fewer than `length`: partial writes are on), or WANT_READ /
/// WANT_WRITE / ERROR. After a WANT_*, call again with at least the same bytes (the buffer may
/// move and may have grown).
long tern_tls_write(void *tls, const void *buffer, size_t length);

/// Decrypted bytes OpenSSL holds that the socket will not announce again.
int tern_tls_pending(void *tls);
/// 1 when OpenSSL holds bytes read from the socket that are not yet application data (part of
/// a record), or decrypted bytes (SSL_has_pending).
int tern_tls_has_buffered(void *tls);

/// Sends close_notify if it can without blocking (call before the socket is closed).
void tern_tls_shutdown(void *tls);

/// Frees the connection; touches no socket.
void tern_tls_free(void *tls);

/// The verified peer certificate's subject common name: its length (copied into `buffer`,
/// NUL-terminated), or -1 when there is no verified certificate.
int tern_tls_peer_common_name(void *tls, char *buffer, size_t length);

/// The reason of the last failure on this thread (and clears OpenSSL's error queue).
void tern_tls_last_error(char *buffer, size_t length);

#endif
