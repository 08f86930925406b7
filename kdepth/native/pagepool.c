// kdepth's page pool: preloaded in front of the C library's malloc (LD_PRELOAD) by `kdepth fit`.
//
// A training step frees and allocates gigabytes of tensors of 0.25-520 MiB. glibc serves each
// from a fresh mapping whose pages the kernel faults in and zeroes (2.3 M faults, a quarter of
// the step at 232x310), and a caching allocator that keeps freed blocks by size holds up to a
// gigabyte more than the step needs, because the sizes freed are not the sizes asked for next.
// This pool keeps the *pages* of freed blocks of `KDEPTH_PAGE_POOL_MIN` bytes or more (256 KiB)
// and moves them with mremap (page tables only: no copy, no zeroing, no fault) into the next
// large blocks, whatever their sizes. It holds only pages that live blocks freed and hands them
// out before asking the system for more, so the large blocks live and pooled never exceed the
// most that were ever live at once. Smaller blocks go to the C library unchanged.
// KDEPTH_PAGE_POOL=0 turns it off in a process that has it preloaded. Linux only (mremap).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);

#define PAGE 4096UL
#define PIECES 16
#define TABLE (1 << 16)
#define POOL (1 << 14)  // pooled regions, each a mapping: far under Linux's 65530 per process

typedef struct { uintptr_t ptr; size_t size; int n; size_t len[PIECES]; } Block;
typedef struct { uintptr_t addr; size_t len; } Region;

static Block table[TABLE];   // open addressing on ptr; ptr 0 = empty
static Region pool[POOL];
static int regions;
static size_t pool_bytes, live, high, min_bytes = 256UL << 10;
static size_t reused_bytes, fresh_bytes;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int ready, disabled;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void before_fork(void) { pthread_mutex_lock(&lock); }
static void after_fork(void) { pthread_mutex_unlock(&lock); }

static void init(void) {
    ready = 1;  // first: getenv and pthread_atfork may allocate, and must not come back here
    const char *m = getenv("KDEPTH_PAGE_POOL_MIN");
    if (m) min_bytes = strtoull(m, NULL, 10);
    const char *o = getenv("KDEPTH_PAGE_POOL");
    disabled = o && !strcmp(o, "0");
    pthread_atfork(before_fork, after_fork, after_fork);
}

static size_t slot(uintptr_t p) { return (size_t)((p >> 12) * 0x9E3779B97F4A7C15ULL >> 48) & (TABLE - 1); }

static Block *find(uintptr_t p) {
    for (size_t i = slot(p), k = 0; k < TABLE; i = (i + 1) & (TABLE - 1), k++) {
        if (table[i].ptr == p) return &table[i];
        if (!table[i].ptr) return NULL;
    }
    return NULL;
}

static Block *insert(uintptr_t p) {
    for (size_t i = slot(p), k = 0; k < TABLE; i = (i + 1) & (TABLE - 1), k++)
        if (!table[i].ptr) { table[i].ptr = p; return &table[i]; }
    return NULL;
}

static void erase(Block *b) {  // backward-shift deletion keeps probe chains intact
    size_t i = (size_t)(b - table);
    table[i].ptr = 0;
    for (size_t j = (i + 1) & (TABLE - 1); table[j].ptr; j = (j + 1) & (TABLE - 1)) {
        size_t home = slot(table[j].ptr);
        if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
            table[i] = table[j]; table[j].ptr = 0; i = j;
        }
    }
}

static void drop_region(int i) { pool_bytes -= pool[i].len; pool[i] = pool[--regions]; }

// Under the lock: a block of `size` bytes (a multiple of PAGE) made of pooled pages where there are any.
static void *compose(size_t size) {
    for (int i = 0; i < regions; i++)  // an exact fit needs no system call
        if (pool[i].len == size) {
            void *p = (void *)pool[i].addr;
            drop_region(i);
            Block *b = insert((uintptr_t)p);
            if (!b) { munmap(p, size); return NULL; }
            b->size = size; b->n = 1; b->len[0] = size;
            reused_bytes += size;
            return p;
        }
    char *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) return NULL;
    Block *b = insert((uintptr_t)base);
    if (!b) { munmap(base, size); return NULL; }
    b->size = size; b->n = 0;
    size_t done = 0;
    while (done < size && regions > 0 && b->n < PIECES - 1) {
        int big = 0;
        for (int i = 1; i < regions; i++) if (pool[i].len > pool[big].len) big = i;
        size_t take = pool[big].len < size - done ? pool[big].len : size - done;
        if (mremap((void *)pool[big].addr, take, take, MREMAP_MAYMOVE | MREMAP_FIXED, base + done) == MAP_FAILED) break;
        b->len[b->n++] = take;
        reused_bytes += take;
        if (take == pool[big].len) drop_region(big);
        else { pool[big].addr += take; pool[big].len -= take; pool_bytes -= take; }
        done += take;
    }
    if (done < size) {  // fresh pages for the rest; give back as many pooled ones so live + pool stays bounded
        b->len[b->n++] = size - done;
        fresh_bytes += size - done;
        size_t excess = size - done;
        while (excess > 0 && regions > 0) {
            int small = 0;
            for (int i = 1; i < regions; i++) if (pool[i].len < pool[small].len) small = i;
            size_t len = pool[small].len;
            munmap((void *)pool[small].addr, len);
            drop_region(small);
            excess = excess > len ? excess - len : 0;
        }
    }
    return base;
}

static void *large(size_t n, size_t align) {
    if (align > PAGE) return __libc_memalign(align, n);
    size_t size = (n + PAGE - 1) & ~(PAGE - 1);
    pthread_mutex_lock(&lock);
    void *p = compose(size);
    if (p) { live += size; if (live + pool_bytes > high) high = live + pool_bytes; }
    pthread_mutex_unlock(&lock);
    return p ? p : align > 16 ? __libc_memalign(align, n) : __libc_malloc(n);
}

// Under the lock: the block's pieces go to the pool (or back to the system if it is full).
static void release(Block *b) {
    uintptr_t at = b->ptr;
    for (int i = 0; i < b->n; i++) {
        if (regions < POOL) { pool[regions].addr = at; pool[regions].len = b->len[i]; regions++; pool_bytes += b->len[i]; }
        else munmap((void *)at, b->len[i]);
        at += b->len[i];
    }
    live -= b->size;
    erase(b);
}

void *malloc(size_t n) {
    if (!ready) pthread_once(&once, init);
    return n >= min_bytes && !disabled ? large(n, 16) : __libc_malloc(n);
}

void *memalign(size_t align, size_t n) {
    if (!ready) pthread_once(&once, init);
    return n >= min_bytes && !disabled ? large(n, align) : __libc_memalign(align, n);
}

void *calloc(size_t k, size_t n) {
    if (!ready) pthread_once(&once, init);
    if (n && k > SIZE_MAX / n) { errno = ENOMEM; return NULL; }
    if (k * n < min_bytes || disabled) return __libc_calloc(k, n);
    void *p = large(k * n, 16);
    if (p) memset(p, 0, k * n);
    return p;
}

void free(void *p) {
    if (!p) return;
    if (((uintptr_t)p & (PAGE - 1)) == 0) {  // only page-aligned pointers can be ours
        pthread_mutex_lock(&lock);
        Block *b = find((uintptr_t)p);
        if (b) { release(b); pthread_mutex_unlock(&lock); return; }
        pthread_mutex_unlock(&lock);
    }
    __libc_free(p);
}

// The size of p if it is one of the pool's blocks, else 0.
static size_t pool_size(void *p) {
    if (((uintptr_t)p & (PAGE - 1)) != 0) return 0;  // only page-aligned pointers can be ours
    pthread_mutex_lock(&lock);
    Block *b = find((uintptr_t)p);
    size_t s = b ? b->size : 0;
    pthread_mutex_unlock(&lock);
    return s;
}

static size_t libc_usable_size(void *p) {
    static size_t (*usable)(void *);
    if (!usable) usable = (size_t (*)(void *))dlsym(RTLD_NEXT, "malloc_usable_size");
    return usable(p);
}

size_t malloc_usable_size(void *p) {
    if (!p) return 0;
    size_t s = pool_size(p);
    return s ? s : libc_usable_size(p);
}

void *realloc(void *p, size_t n) {
    if (!p) return malloc(n);
    if (!n) { free(p); return NULL; }
    size_t s = pool_size(p);
    if (!s && n < min_bytes) return __libc_realloc(p, n);
    if (!s) s = libc_usable_size(p);
    void *q = malloc(n);
    if (!q) return NULL;
    memcpy(q, p, s < n ? s : n);
    free(p);
    return q;
}

void *reallocarray(void *p, size_t k, size_t n) {
    if (n && k > SIZE_MAX / n) { errno = ENOMEM; return NULL; }
    return realloc(p, k * n);
}

int posix_memalign(void **out, size_t align, size_t n) {
    if (align < sizeof(void *) || (align & (align - 1))) return EINVAL;
    void *p = memalign(align, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}

void *aligned_alloc(size_t align, size_t n) { return memalign(align, n); }
void *valloc(size_t n) { return memalign(PAGE, n); }
void *pvalloc(size_t n) { return memalign(PAGE, (n + PAGE - 1) & ~(PAGE - 1)); }

// Bytes moved from the pool, fresh from the system, the most live and pooled at once, pooled
// now, live now, and the number of pooled regions: `kdepth.allocator.page_pool_stats`.
void kdepth_page_pool_stats(double out[6]) {
    pthread_mutex_lock(&lock);
    out[0] = (double)reused_bytes; out[1] = (double)fresh_bytes; out[2] = (double)high;
    out[3] = (double)pool_bytes; out[4] = (double)live; out[5] = (double)regions;
    pthread_mutex_unlock(&lock);
}
