#include "tern_tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>

/// The last failure of this thread, for tern_tls_last_error.
static __thread char last_error[256];

static void remember_error(const char *what) {
    unsigned long code = ERR_get_error();
    if (code != 0) {
        char text[200];
        ERR_error_string_n(code, text, sizeof text);
        snprintf(last_error, sizeof last_error, "%s: %s", what, text);
    } else if (errno != 0) {
        snprintf(last_error, sizeof last_error, "%s: %s", what, strerror(errno));
    } else {
        snprintf(last_error, sizeof last_error, "%s", what);
    }
    ERR_clear_error();
}

static void copy_error(char *error, size_t length) {
    if (error != NULL && length > 0) snprintf(error, length, "%s", last_error);
}

static void configure(SSL_CTX *context, int min_version) {
    SSL_CTX_set_min_proto_version(context, min_version > 0 ? min_version : TLS1_2_VERSION);
    SSL_CTX_set_mode(context, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
    // A client that closes its socket without close_notify ends the stream (as a plain client
    // does); renegotiation is refused (it could make a write wait for a read).
    SSL_CTX_set_options(context, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION);
}

/// A configured context for `method`, or NULL with the reason in `error`.
static SSL_CTX *new_context(const SSL_METHOD *method, int min_version, char *error, size_t error_length) {
    ERR_clear_error();
    errno = 0;
    SSL_CTX *context = SSL_CTX_new(method);
    if (context == NULL) {
        remember_error("cannot create a TLS context");
        copy_error(error, error_length);
        return NULL;
    }
    configure(context, min_version);
    return context;
}

static int load_pair(SSL_CTX *context, const char *cert, const char *key) {
    if (SSL_CTX_use_certificate_chain_file(context, cert) != 1) {
        remember_error("cannot load certificate");
        return 0;
    }
    if (SSL_CTX_use_PrivateKey_file(context, key, SSL_FILETYPE_PEM) != 1) {
        remember_error("cannot load private key");
        return 0;
    }
    if (SSL_CTX_check_private_key(context) != 1) {
        remember_error("private key does not match the certificate");
        return 0;
    }
    return 1;
}

/* The context once `configured`; otherwise NULL, the error copied out and the context freed. */
static SSL_CTX *finish_context(SSL_CTX *context, int configured, char *error, size_t error_length) {
    if (!configured) {
        copy_error(error, error_length);
        SSL_CTX_free(context);
        return NULL;
    }
    ERR_clear_error();
    return context;
}

static int configure_server(SSL_CTX *context, const char *cert, const char *key, const char *ca, int client_auth) {
    if (!load_pair(context, cert, key)) return 0;
    if (ca != NULL) {
        if (SSL_CTX_load_verify_locations(context, ca, NULL) != 1) {
            remember_error("cannot load CA file");
            return 0;
        }
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
        if (names != NULL) SSL_CTX_set_client_CA_list(context, names);
    }
    if (client_auth == TERN_TLS_CLIENT_AUTH_REQUIRED) {
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    } else if (client_auth == TERN_TLS_CLIENT_AUTH_OPTIONAL) {
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(context, SSL_VERIFY_NONE, NULL);
    }
    // No server-side session cache (workers would contend on it); clients resume with
    // stateless tickets (TLS 1.2 and 1.3), sealed with keys of this context alone, so a session
    // resumes only on the pool and certificate load that made it, with the peer certificate
    // and verification result it had then. OpenSSL refuses to resume, with a fatal alert, on a
    // context that verifies peers and has no session id context: Java clients, which offer
    // their last session on reconnecting, failed every other connection to a pool with `ca`.
    static const unsigned char session_context[] = "tern";
    if (SSL_CTX_set_session_id_context(context, session_context, sizeof session_context - 1) != 1) {
        remember_error("cannot set the session id context");
        return 0;
    }
    SSL_CTX_set_session_cache_mode(context, SSL_SESS_CACHE_OFF);
    return 1;
}

void *tern_tls_server_context(const char *cert, const char *key, const char *ca, int client_auth,
                              int min_version, char *error, size_t error_length) {
    SSL_CTX *context = new_context(TLS_server_method(), min_version, error, error_length);
    return context == NULL ? NULL : finish_context(context, configure_server(context, cert, key, ca, client_auth), error, error_length);
}

static int configure_client(SSL_CTX *context, const char *ca, const char *cert, const char *key, int verify) {
    if (cert != NULL && key != NULL && !load_pair(context, cert, key)) return 0;
    if (ca != NULL) {
        if (SSL_CTX_load_verify_locations(context, ca, NULL) != 1) {
            remember_error("cannot load CA file");
            return 0;
        }
    } else if (SSL_CTX_set_default_verify_paths(context) != 1) {
        remember_error("cannot load the system's trusted certificates");
        return 0;
    }
    SSL_CTX_set_verify(context, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    return 1;
}

void *tern_tls_client_context(const char *ca, const char *cert, const char *key, int verify,
                              int min_version, char *error, size_t error_length) {
    SSL_CTX *context = new_context(TLS_client_method(), min_version, error, error_length);
    return context == NULL ? NULL : finish_context(context, configure_client(context, ca, cert, key, verify), error, error_length);
}

void tern_tls_context_free(void *context) { SSL_CTX_free((SSL_CTX *)context); }

void *tern_tls_new(void *context, int fd, int is_server, const char *server_name, int verify) {
    SSL *tls = SSL_new((SSL_CTX *)context);
    if (tls == NULL) {
        remember_error("cannot create a TLS connection");
        return NULL;
    }
    if (SSL_set_fd(tls, fd) != 1) {
        remember_error("cannot attach the socket");
        SSL_free(tls);
        return NULL;
    }
    if (is_server) {
        SSL_set_accept_state(tls);
    } else {
        SSL_set_connect_state(tls);
        if (server_name != NULL && server_name[0] != 0) {
            unsigned char address[16];
            int is_address = inet_pton(AF_INET, server_name, address) == 1 || inet_pton(AF_INET6, server_name, address) == 1;
            if (!is_address) SSL_set_tlsext_host_name(tls, server_name);
            if (verify) {
                X509_VERIFY_PARAM *parameters = SSL_get0_param(tls);
                int ok = is_address ? X509_VERIFY_PARAM_set1_ip_asc(parameters, server_name)
                                    : X509_VERIFY_PARAM_set1_host(parameters, server_name, 0);
                if (ok != 1) {
                    remember_error("cannot set the name to verify");
                    SSL_free(tls);
                    return NULL;
                }
            }
        }
    }
    ERR_clear_error();
    return tls;
}

/// Maps a failed call's SSL_get_error to WANT_READ / WANT_WRITE / 0 (end) / ERROR.
static long outcome(SSL *tls, int result, const char *what) {
    int code = SSL_get_error(tls, result);
    switch (code) {
    case SSL_ERROR_WANT_READ:
        return TERN_TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return TERN_TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        ERR_clear_error();
        return 0;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0 && errno == 0) {
            ERR_clear_error();
            return 0;
        }
        remember_error(what);
        return TERN_TLS_ERROR;
    default:
        remember_error(what);
        return TERN_TLS_ERROR;
    }
}

int tern_tls_handshake(void *tls) {
    ERR_clear_error();
    errno = 0;
    int result = SSL_do_handshake((SSL *)tls);
    if (result == 1) return 1;
    long code = outcome((SSL *)tls, result, "TLS handshake failed");
    // The peer closing the socket during the handshake is a failed handshake, unless it never
    // sent a byte (a TCP health check). Bytes are counted on the socket BIO: a part of a
    // ClientHello leaves the state at TLS_ST_BEFORE, and was taken for a health check (TLS
    // sweep 32: truncated hellos were not counted as failed handshakes).
    if (code == 0 && SSL_is_server((SSL *)tls) && SSL_get_state((SSL *)tls) == TLS_ST_BEFORE
        && BIO_number_read(SSL_get_rbio((SSL *)tls)) == 0) return TERN_TLS_CLOSED;
    if (code == 0) {
        snprintf(last_error, sizeof last_error, "TLS handshake failed: the peer closed the connection");
        return TERN_TLS_ERROR;
    }
    return (int)code;
}

long tern_tls_read(void *tls, void *buffer, size_t length) {
    ERR_clear_error();
    errno = 0;
    size_t count = 0;
    int result = SSL_read_ex((SSL *)tls, buffer, length, &count);
    if (result == 1) return (long)count;
    return outcome((SSL *)tls, result, "TLS read failed");
}

long tern_tls_write(void *tls, const void *buffer, size_t length) {
    ERR_clear_error();
    errno = 0;
    size_t count = 0;
    int result = SSL_write_ex((SSL *)tls, buffer, length, &count);
    if (result == 1) return (long)count;
    long code = outcome((SSL *)tls, result, "TLS write failed");
    return code == 0 ? TERN_TLS_ERROR : code;
}

int tern_tls_pending(void *tls) { return SSL_pending((SSL *)tls); }
int tern_tls_has_buffered(void *tls) { return SSL_has_pending((SSL *)tls); }

void tern_tls_shutdown(void *tls) {
    SSL *connection = (SSL *)tls;
    if (SSL_is_init_finished(connection)) {
        // One non-blocking attempt; the socket closes right after either way.
        (void)SSL_shutdown(connection);
    }
    ERR_clear_error();
}

void tern_tls_free(void *tls) {
    // SSL_free writes nothing: the socket may already be closed and its number reused.
    SSL_free((SSL *)tls);
}

int tern_tls_peer_common_name(void *tls, char *buffer, size_t length) {
    SSL *connection = (SSL *)tls;
    X509 *peer = SSL_get0_peer_certificate(connection);
    if (peer == NULL || SSL_get_verify_result(connection) != X509_V_OK) return -1;
    int count = X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, buffer, (int)length);
    ERR_clear_error();
    return count < 0 ? -1 : count;
}

void tern_tls_last_error(char *buffer, size_t length) {
    if (buffer != NULL && length > 0) snprintf(buffer, length, "%s", last_error);
    last_error[0] = 0;
}
