// LD_PRELOAD allocation counter for bench/allocations.sh: counts malloc, calloc, realloc and
// posix_memalign calls; SIGPWR writes the running total to $MALLOC_COUNT_FILE.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_ulong allocations;
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern int __posix_memalign(void **, size_t, size_t);

void *malloc(size_t size) { atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed); return __libc_malloc(size); }
void *calloc(size_t n, size_t size) { atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed); return __libc_calloc(n, size); }
void *realloc(void *p, size_t size) { atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed); return __libc_realloc(p, size); }
int posix_memalign(void **out, size_t alignment, size_t size) {
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    void *p = aligned_alloc(alignment < sizeof(void *) ? sizeof(void *) : alignment, (size + alignment - 1) / alignment * alignment);
    if (!p) return 12;
    *out = p;
    return 0;
}

static void report(int signal) {
    (void)signal;
    const char *path = getenv("MALLOC_COUNT_FILE");
    if (!path) return;
    char line[32];
    int length = snprintf(line, sizeof line, "%lu\n", atomic_load(&allocations));
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) { write(fd, line, length); close(fd); }
}

__attribute__((constructor)) static void install(void) { signal(SIGPWR, report); }
