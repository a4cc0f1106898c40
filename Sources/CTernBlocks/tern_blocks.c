#include "tern_blocks.h"

#include <malloc.h>
#include <stdlib.h>
#include <string.h>

struct tern_block {
    void *memory;
    size_t capacity;
    // When the block was given back (a count of gives): of the smallest fitting blocks, the one
    // given back last is taken, whose bytes are the likeliest to be in the processor's caches.
    unsigned long given;
    // Set when the block is given back, cleared by a sweep: a block found cleared by the next
    // sweep was not taken for a whole sweep interval and is freed.
    int recent;
};

// One cache per thread, touched only by that thread. Initial-exec: the code is linked into the
// executable, so the variable is reached at a fixed offset from the thread pointer, not through
// __tls_get_addr (the small blocks are taken and given once per client write).
static _Thread_local __attribute__((tls_model("initial-exec"))) struct {
    int enabled;
    size_t total;
    unsigned long gives;
    struct tern_block slots[TERN_BLOCKS_SLOTS];
    void *small[TERN_BLOCKS_SMALL_SLOTS];
    int small_count;
    // A small block was taken since the previous sweep.
    int small_taken;
    // Sweeps since this thread last called malloc_trim, and whether one is due.
    int sweeps_since_trim;
    int trim_due;
} cache = { .sweeps_since_trim = TERN_BLOCKS_TRIM_SWEEPS };

void tern_blocks_enable(void) { cache.enabled = 1; }

void tern_blocks_fix_malloc_thresholds(void) {
    if (getenv("MALLOC_MMAP_THRESHOLD_") != NULL || getenv("MALLOC_TRIM_THRESHOLD_") != NULL) return;
    const char *tunables = getenv("GLIBC_TUNABLES");
    if (tunables != NULL && (strstr(tunables, "malloc.mmap_threshold") != NULL || strstr(tunables, "malloc.trim_threshold") != NULL)) return;
    // Setting either turns glibc's dynamic thresholds off.
    mallopt(M_MMAP_THRESHOLD, TERN_MALLOC_MMAP_THRESHOLD);
    mallopt(M_TRIM_THRESHOLD, TERN_MALLOC_TRIM_THRESHOLD);
}

void *tern_blocks_take(size_t wanted, size_t *capacity) {
    int best = -1;
    for (int index = 0; index < TERN_BLOCKS_SLOTS; index++) {
        struct tern_block *slot = &cache.slots[index];
        if (slot->memory == NULL || slot->capacity < wanted || slot->capacity / 2 > wanted) continue;
        if (best < 0 || slot->capacity < cache.slots[best].capacity
            || (slot->capacity == cache.slots[best].capacity && slot->given > cache.slots[best].given)) best = index;
    }
    if (best < 0) return NULL;
    struct tern_block *slot = &cache.slots[best];
    void *memory = slot->memory;
    *capacity = slot->capacity;
    cache.total -= slot->capacity;
    slot->memory = NULL;
    slot->capacity = 0;
    return memory;
}

int tern_blocks_give(void *block, size_t capacity) {
    if (!cache.enabled || block == NULL || capacity < TERN_BLOCKS_MIN_BLOCK || capacity > TERN_BLOCKS_MAX_BLOCK
        || cache.total + capacity > TERN_BLOCKS_MAX_TOTAL) return 0;
    for (int index = 0; index < TERN_BLOCKS_SLOTS; index++) {
        struct tern_block *slot = &cache.slots[index];
        if (slot->memory != NULL) continue;
        slot->memory = block;
        slot->capacity = capacity;
        slot->recent = 1;
        slot->given = ++cache.gives;
        cache.total += capacity;
        return 1;
    }
    return 0;
}

void *tern_blocks_take_small(void) {
    if (cache.small_count == 0) return NULL;
    cache.small_taken = 1;
    return cache.small[--cache.small_count];
}

int tern_blocks_give_small(void *block) {
    if (!cache.enabled || block == NULL || cache.small_count == TERN_BLOCKS_SMALL_SLOTS) return 0;
    cache.small[cache.small_count++] = block;
    return 1;
}

int tern_blocks_small_count(void) { return cache.small_count; }

static void free_small(void) {
    while (cache.small_count > 0) free(cache.small[--cache.small_count]);
}

void tern_blocks_sweep(void) {
    if (!cache.small_taken) free_small();
    cache.small_taken = 0;
    int freed = 0;
    for (int index = 0; index < TERN_BLOCKS_SLOTS; index++) {
        struct tern_block *slot = &cache.slots[index];
        if (slot->memory == NULL) continue;
        if (slot->recent) {
            slot->recent = 0;
            continue;
        }
        free(slot->memory);
        cache.total -= slot->capacity;
        slot->memory = NULL;
        slot->capacity = 0;
        freed = 1;
    }
    // A block malloc placed inside its heap stays there when freed unless it was at the top;
    // after a burst of large values, give the free pages back to the kernel. Only after a
    // sweep freed something, and at most once per TERN_BLOCKS_TRIM_SWEEPS sweeps of this
    // thread: malloc_trim walks every arena, each under its lock, so it briefly holds up the
    // other workers' allocations.
    if (freed) cache.trim_due = 1;
    if (cache.sweeps_since_trim < TERN_BLOCKS_TRIM_SWEEPS) cache.sweeps_since_trim++;
    if (cache.trim_due && cache.sweeps_since_trim >= TERN_BLOCKS_TRIM_SWEEPS) {
        malloc_trim(0);
        cache.trim_due = 0;
        cache.sweeps_since_trim = 0;
    }
}

void tern_blocks_trim_due(void) { cache.trim_due = 1; }

void tern_blocks_release_all(void) {
    for (int index = 0; index < TERN_BLOCKS_SLOTS; index++) {
        struct tern_block *slot = &cache.slots[index];
        free(slot->memory);
        slot->memory = NULL;
        slot->capacity = 0;
    }
    cache.total = 0;
    free_small();
    cache.small_taken = 0;
    cache.enabled = 0;
}

size_t tern_blocks_cached_bytes(void) { return cache.total; }
