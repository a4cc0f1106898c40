// Swift cannot import libev's function-like macros; these static inline wrappers expose them.
// Names are prefixed `tern_` so they never collide with libev's own symbols.
#ifndef TERN_CLIBEV_SHIM_H
#define TERN_CLIBEV_SHIM_H

#include <ev.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/un.h>
#include <signal.h>

// accept4 is not visible through Swift's Glibc module.
extern int accept4(int sockfd, struct sockaddr *addr, socklen_t *addrlen, int flags);

// Nor is mremap (a _GNU_SOURCE declaration), and Swift cannot call a variadic C function:
// a large buffer mapped for itself grows here, its pages moved rather than copied.
extern void *mremap(void *old_address, size_t old_size, size_t new_size, int flags, ...);
static inline void *tern_mremap(void *address, size_t old_size, size_t new_size) {
    return mremap(address, old_size, new_size, 1 /* MREMAP_MAYMOVE */);
}

// Nor is prctl (variadic): names the calling thread (at most 15 bytes are kept), as top -H,
// ps -L and debuggers show it.
extern int prctl(int option, ...);
static inline void tern_set_thread_name(const char *name) { prctl(15 /* PR_SET_NAME */, name, 0, 0, 0); }

static const int TERN_EV_READ = EV_READ;
static const int TERN_EV_WRITE = EV_WRITE;
static const int TERN_EVFLAG_AUTO = EVFLAG_AUTO;
static const int TERN_EVBREAK_ALL = EVBREAK_ALL;
static const int TERN_SOCK_NONBLOCK = SOCK_NONBLOCK;
static const int TERN_SOCK_CLOEXEC = SOCK_CLOEXEC;
static const int TERN_CLOEXEC_FLAG = SOCK_CLOEXEC;

static inline struct ev_loop *tern_loop_new(void) { return ev_loop_new(EVFLAG_AUTO); }

static inline void tern_io_init(ev_io *watcher, void (*callback)(struct ev_loop *, ev_io *, int), int fd, int events) {
    ev_io_init(watcher, callback, fd, events);
}
static inline void tern_io_set(ev_io *watcher, int fd, int events) { ev_io_set(watcher, fd, events); }
static inline int tern_io_events(const ev_io *watcher) { return watcher->events; }
static inline void tern_timer_init(ev_timer *watcher, void (*callback)(struct ev_loop *, ev_timer *, int), double after, double repeat) {
    ev_timer_init(watcher, callback, after, repeat);
}
static inline void tern_async_init(ev_async *watcher, void (*callback)(struct ev_loop *, ev_async *, int)) {
    ev_async_init(watcher, callback);
}
static inline void tern_prepare_init(ev_prepare *watcher, void (*callback)(struct ev_loop *, ev_prepare *, int)) {
    ev_prepare_init(watcher, callback);
}
static inline void tern_break(struct ev_loop *loop) { ev_break(loop, EVBREAK_ALL); }
static inline int tern_is_active(const void *watcher) { return ev_is_active((const ev_watcher *)watcher); }
static inline void tern_set_data(void *watcher, void *data) { ((ev_watcher *)watcher)->data = data; }
static inline void *tern_get_data(const void *watcher) { return ((const ev_watcher *)watcher)->data; }

static inline void tern_ignore_sigpipe(void) { signal(SIGPIPE, SIG_IGN); }

// A counter written by one thread and read by others: relaxed atomic load and store (plain
// moves on x86), which ThreadSanitizer sees as atomic. Not a read-modify-write: one writer.
static inline void tern_counter_add(long *counter, long amount) {
    __atomic_store_n(counter, __atomic_load_n(counter, __ATOMIC_RELAXED) + amount, __ATOMIC_RELAXED);
}
static inline long tern_counter_read(const long *counter) { return __atomic_load_n(counter, __ATOMIC_RELAXED); }

#endif
