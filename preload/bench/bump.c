// The callgrind bench's baseline allocator (`none`), preloaded under
// pair.c: what a malloc/free pair costs the caller (the loop, the calls and
// the PLT jumps) when the allocator does almost nothing. A bump pointer over a
// static buffer, each block after a 16-byte header holding its size; free
// takes back the last block only (pair.c's pattern, so the buffer never
// fills) and otherwise leaks. One thread; aborts when the buffer is full.
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define ARENA (64u << 20)
static _Alignas(16) unsigned char arena[ARENA];
static size_t top;
static unsigned char *spare;

void *malloc(size_t n) {
    unsigned char *s = spare;
    if (s && n <= *(size_t *)(s - 16)) {
        spare = NULL;
        return s;
    }
    size_t need = ((n + 15) & ~(size_t)15) + 16;
    if (n > ARENA || need > ARENA - top) {
        errno = ENOMEM;
        return NULL;
    }
    unsigned char *h = arena + top;
    top += need;
    *(size_t *)h = n;
    return h + 16;
}

void free(void *p) {
    if (p)
        spare = p;
}

void *calloc(size_t n, size_t m) {
    if (m && n > (size_t)-1 / m) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = malloc(n * m);
    if (p)
        memset(p, 0, n * m);
    return p;
}

void *realloc(void *p, size_t n) {
    if (!p)
        return malloc(n);
    size_t old = *(size_t *)((unsigned char *)p - 16);
    void *q = malloc(n);
    if (q)
        memcpy(q, p, old < n ? old : n);
    return q;
}

void *memalign(size_t align, size_t n) {
    if (align <= 16)
        return malloc(n);
    void *p = malloc(n + align);
    if (!p)
        return NULL;
    unsigned char *q = (unsigned char *)(((size_t)p + align - 1) & ~(align - 1));
    if (q != p)
        *(size_t *)(q - 16) = n; // realloc and the spare read the size before the block
    return q;
}

int posix_memalign(void **out, size_t align, size_t n) {
    void *p = memalign(align, n);
    if (!p)
        return ENOMEM;
    *out = p;
    return 0;
}

void *aligned_alloc(size_t align, size_t n) { return memalign(align, n); }

size_t malloc_usable_size(void *p) { return p ? *(size_t *)((unsigned char *)p - 16) : 0; }
