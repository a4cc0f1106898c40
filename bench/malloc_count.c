// LD_PRELOAD allocation counter for bench/allocations.sh: counts malloc, calloc, realloc and
// posix_memalign calls, per thread; SIGPWR writes "<all threads> <worker threads>" to
// $MALLOC_COUNT_FILE, the second figure summed over the threads whose name starts with
// "tern-worker" (Tern names its threads: tern-worker-N, tern-info, tern-control, …), so that
// the once-a-second work of the other threads (the INFO poller parses each backend's INFO
// into strings) is told apart from the request path.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_THREADS 512

static atomic_ulong allocations;
static atomic_int thread_count;
static pid_t thread_ids[MAX_THREADS];
static atomic_ulong thread_allocations[MAX_THREADS];
static __thread int thread_slot = -1;

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);

static void counted(void) {
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    if (thread_slot < 0) {
        int slot = atomic_fetch_add(&thread_count, 1);
        if (slot >= MAX_THREADS) return;
        thread_ids[slot] = gettid();
        thread_slot = slot;
    }
    if (thread_slot < MAX_THREADS) atomic_fetch_add_explicit(&thread_allocations[thread_slot], 1, memory_order_relaxed);
}

void *malloc(size_t size) { counted(); return __libc_malloc(size); }
void *calloc(size_t n, size_t size) { counted(); return __libc_calloc(n, size); }
void *realloc(void *p, size_t size) { counted(); return __libc_realloc(p, size); }
int posix_memalign(void **out, size_t alignment, size_t size) {
    counted();
    void *p = aligned_alloc(alignment < sizeof(void *) ? sizeof(void *) : alignment, (size + alignment - 1) / alignment * alignment);
    if (!p) return 12;
    *out = p;
    return 0;
}

// Whether thread `tid` of this process is named tern-worker-…
static int is_worker(pid_t tid) {
    char path[64], name[32];
    snprintf(path, sizeof path, "/proc/self/task/%d/comm", (int)tid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t length = read(fd, name, sizeof name - 1);
    close(fd);
    if (length <= 0) return 0;
    name[length] = 0;
    return strncmp(name, "tern-worker", 11) == 0;
}

static void report(int signal) {
    (void)signal;
    const char *path = getenv("MALLOC_COUNT_FILE");
    if (!path) return;
    unsigned long workers = 0;
    int threads = atomic_load(&thread_count);
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    for (int slot = 0; slot < threads; slot++) {
        if (is_worker(thread_ids[slot])) workers += atomic_load(&thread_allocations[slot]);
    }
    char line[64];
    int length = snprintf(line, sizeof line, "%lu %lu\n", atomic_load(&allocations), workers);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) { write(fd, line, length); close(fd); }
}

__attribute__((constructor)) static void install(void) { signal(SIGPWR, report); }
