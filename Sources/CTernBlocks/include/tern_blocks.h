// A per-thread cache of large heap blocks, for the buffers of large requests and replies.
//
// A 1 MiB request read into fresh memory costs a page fault per 4 KiB page (glibc maps a block
// that large on its own and unmaps it when it is freed): perf put every page fault of a
// 1 MiB SET load in the read into the new request buffer. A worker thread keeps the last few
// large blocks its buffers gave back and hands them to the next large buffer, whose pages are
// then already there.
//
// Bounded: at most TERN_BLOCKS_SLOTS blocks per thread, each at most TERN_BLOCKS_MAX_BLOCK
// bytes and TERN_BLOCKS_MAX_TOTAL bytes in all; a block not taken again by the second sweep
// after it was given back (the worker sweeps once a second) is freed. Only threads that called
// `tern_blocks_enable` cache (Tern's workers); elsewhere `tern_blocks_give` declines and the
// caller frees. The cache is thread-local: nothing is shared, nothing is locked.
#ifndef TERN_BLOCKS_H
#define TERN_BLOCKS_H

#include <stddef.h>

/// Blocks smaller than this are not cached (malloc reuses small ones by itself).
/// (Plain literals, so that Swift imports them: 256 KiB, 8 MiB, 32 MiB.)
#define TERN_BLOCKS_MIN_BLOCK 262144
#define TERN_BLOCKS_MAX_BLOCK 8388608
#define TERN_BLOCKS_MAX_TOTAL 33554432
#define TERN_BLOCKS_SLOTS 16

/// The calling thread caches blocks from now on.
void tern_blocks_enable(void);

/// Fixes glibc's malloc thresholds before the workers start, unless MALLOC_MMAP_THRESHOLD_,
/// MALLOC_TRIM_THRESHOLD_ or either in GLIBC_TUNABLES is set (the operator's choice stands).
/// Left to themselves, glibc raises its mmap threshold to the size of every mapped block freed
/// (up to 32 MiB) and its trim threshold to twice that, and a thread arena gives its top back only past the trim
/// threshold (malloc_trim trims only the main arena's top): growing MGETs of 50,000 to 300,000
/// keys left 38 MiB resident for good that way. Fixed: blocks below 32 MiB (the most the
/// dynamic threshold reaches) come from the arenas, so their pages are reused as before, and an
/// arena's top past 4 MiB is given back when a block next to it is freed (up to 4 MiB stays at
/// each arena's top: the cost of reusing pages).
#define TERN_MALLOC_MMAP_THRESHOLD 33554432
#define TERN_MALLOC_TRIM_THRESHOLD 4194304
void tern_blocks_fix_malloc_thresholds(void);

/// A cached block of at least `wanted` bytes and at most twice that (the smallest such, and of
/// those the one given back last), or NULL. `*capacity` is set to the block's size. The block came from malloc: free or realloc
/// it as any other.
void *tern_blocks_take(size_t wanted, size_t *capacity);

/// Keeps a malloc'd block of `capacity` bytes for a later `tern_blocks_take` on this thread.
/// Returns 1 when it was kept, 0 when the caller must free it (the thread does not cache, the
/// block is outside the bounds, or the cache is full).
int tern_blocks_give(void *block, size_t capacity);

/// Frees the large blocks given back before the previous sweep and not taken since, and the
/// small ones when none was taken since the previous sweep. After it freed a large block,
/// `malloc_trim` gives malloc's free pages back to the kernel: at once, or when
/// TERN_BLOCKS_TRIM_SWEEPS sweeps have passed since this thread's previous trim.
#define TERN_BLOCKS_TRIM_SWEEPS 2
void tern_blocks_sweep(void);

/// Makes the next `malloc_trim` due (as a freed large block does): the caller freed much small
/// memory (a burst's reply slots).
void tern_blocks_trim_due(void);

/// Frees every cached block (a worker thread ending) and stops caching on this thread.
void tern_blocks_release_all(void);

/// Bytes cached on this thread (large blocks).
size_t tern_blocks_cached_bytes(void);

// Small blocks: the 4 KiB a buffer starts with. A client's output buffer gives its block back
// as soon as everything in it is written, and takes one when the next reply comes, so a client
// holds a block only while it has bytes to send, and an idle client none (nutcracker's mbufs
// work the same way). The blocks wait here between two uses: at most TERN_BLOCKS_SMALL_SLOTS
// per thread (1 MiB), all freed by a sweep when none was taken since the previous one.
#define TERN_BLOCKS_SMALL_SIZE 4096
#define TERN_BLOCKS_SMALL_SLOTS 256

/// A cached 4 KiB block, or NULL.
void *tern_blocks_take_small(void);

/// Keeps a malloc'd block of TERN_BLOCKS_SMALL_SIZE bytes (or more) for a later
/// `tern_blocks_take_small`. 1 when kept, 0 when the caller must free it.
int tern_blocks_give_small(void *block);

/// Small blocks cached on this thread.
int tern_blocks_small_count(void);

#endif
