/* Every exported function of libtieralloc.so and its edge cases, with glibc's
 * semantics. Run as `LD_PRELOAD=libtieralloc.so ./malloc_test`; it refuses to
 * run without tieralloc (it checks that free_sized, which glibc 2.36 lacks,
 * resolves to the preloaded library).
 *
 *   ./malloc_test                 all API checks; prints "malloc_test: N checks passed"
 *   ./malloc_test invalid KIND    passes a bad pointer to the allocator, after
 *                                 printing it ("%p\n") on stdout; must abort.
 *                                 KIND: stack, interior, mmap, global, realloc,
 *                                 free_sized, usable
 *
 * Build: cc -O1 -fno-builtin -pthread malloc_test.c -ldl
 * (-fno-builtin: the compiler must not fold malloc/free pairs away.)
 */
#define _GNU_SOURCE
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#pragma GCC diagnostic ignored "-Walloc-size-larger-than="
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static long checks;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        checks++;                                                                     \
        if (!(cond)) {                                                                \
            fprintf(stderr, "malloc_test: %s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                           \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

/* Resolved at run time: glibc 2.36 has no C23 free_sized. */
static void (*p_free_sized)(void *, size_t);
static void (*p_free_aligned_sized)(void *, size_t, size_t);

static int aligned_to(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

static void fill(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(seed + i * 31u);
}

static int holds(const unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(seed + i * 31u)) return 0;
    return 1;
}

static int all_zero(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

static const size_t sizes[] = {0,    1,    7,     8,     15,    16,    17,     24,     31,
                               32,   33,   48,    100,   127,   128,   255,    256,    1000,
                               1024, 4095, 4096,  4097,  8191,  8192,  10000,  32767,  32768,
                               32769, 65536, 100000, 262144, 1 << 20, 3 << 20, 17 << 20};
#define NSIZES (sizeof sizes / sizeof sizes[0])

static void test_malloc(void) {
    /* malloc(0): non-null, unique, freeable. */
    void *z1 = malloc(0), *z2 = malloc(0);
    CHECK(z1 && z2 && z1 != z2);
    CHECK(malloc_usable_size(z1) >= 1);
    free(z1);
    free(z2);
    free(NULL);

    for (size_t i = 0; i < NSIZES; i++) {
        size_t n = sizes[i];
        unsigned char *p = malloc(n);
        CHECK(p != NULL);
        CHECK(aligned_to(p, 16));
        size_t u = malloc_usable_size(p);
        CHECK(u >= n);
        fill(p, u, (unsigned)n); /* the whole usable size is ours */
        unsigned char *q = malloc(n);
        CHECK(q && q != p);
        fill(q, n, 7);
        CHECK(holds(p, u, (unsigned)n));
        free(q);
        free(p);
    }

    /* Many live objects of one size never overlap. */
    enum { N = 5000 };
    static unsigned char *v[N];
    for (int i = 0; i < N; i++) {
        size_t n = 1 + (size_t)(i * 37) % 700;
        v[i] = malloc(n);
        CHECK(v[i]);
        fill(v[i], n, (unsigned)i);
    }
    for (int i = 0; i < N; i++) {
        size_t n = 1 + (size_t)(i * 37) % 700;
        CHECK(holds(v[i], n, (unsigned)i));
        free(v[i]);
    }

    /* Failure: NULL and ENOMEM, for sizes no heap can hold. */
    const size_t huge[] = {SIZE_MAX, SIZE_MAX - 15, SIZE_MAX / 2, (size_t)PTRDIFF_MAX,
                           (size_t)PTRDIFF_MAX - 8, (size_t)1 << 62};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        errno = 0;
        void *p = malloc(huge[i]);
        CHECK(p == NULL);
        CHECK(errno == ENOMEM);
    }
}

static void test_calloc(void) {
    for (size_t i = 0; i < NSIZES; i++) {
        size_t n = sizes[i];
        /* Dirty a block of this size first, so a recycled one must be cleared. */
        unsigned char *d = malloc(n + 1);
        CHECK(d);
        memset(d, 0xAB, malloc_usable_size(d));
        free(d);
        unsigned char *p = calloc(1, n);
        CHECK(p && aligned_to(p, 16));
        CHECK(all_zero(p, n));
        free(p);
        p = calloc(n, 3);
        CHECK(p);
        CHECK(all_zero(p, n * 3));
        free(p);
    }
    void *z = calloc(0, 0);
    CHECK(z != NULL);
    free(z);
    z = calloc(0, 100);
    CHECK(z != NULL);
    free(z);

    /* Overflow of n * m: NULL and ENOMEM. */
    errno = 0;
    CHECK(calloc(SIZE_MAX / 2, 3) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(calloc(3, SIZE_MAX / 2) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(calloc((size_t)1 << 32, (size_t)1 << 32) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(calloc(1, SIZE_MAX) == NULL && errno == ENOMEM);
}

static void test_realloc(void) {
    /* realloc(NULL, n) is malloc(n). */
    unsigned char *p = realloc(NULL, 100);
    CHECK(p && aligned_to(p, 16));
    fill(p, 100, 1);

    /* Grow through every kind (small -> bigger small -> large -> larger large),
       then shrink back, keeping the contents. */
    size_t steps[] = {100, 200, 1000, 5000, 32768, 40000, 200000, 1 << 20, 5 << 20, 300000, 33000, 20000, 500, 17, 1};
    size_t have = 100;
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        size_t n = steps[i];
        p = realloc(p, n);
        CHECK(p && aligned_to(p, 16));
        CHECK(malloc_usable_size(p) >= n);
        size_t keep = have < n ? have : n;
        CHECK(holds(p, keep, 1));
        fill(p, n, 1);
        have = n;
    }

    /* realloc(p, 0) frees p and returns NULL (glibc). */
    p = realloc(p, 0);
    CHECK(p == NULL);

    /* realloc(NULL, 0) is malloc(0): a unique pointer. */
    void *z = realloc(NULL, 0);
    CHECK(z != NULL);
    free(z);

    /* Failure leaves the block intact. */
    p = malloc(64);
    CHECK(p);
    fill(p, 64, 9);
    errno = 0;
    CHECK(realloc(p, SIZE_MAX) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(realloc(p, (size_t)PTRDIFF_MAX) == NULL && errno == ENOMEM);
    CHECK(holds(p, 64, 9));
    free(p);

    p = malloc(1 << 20);
    CHECK(p);
    fill(p, 1 << 20, 4);
    errno = 0;
    CHECK(realloc(p, SIZE_MAX - 100) == NULL && errno == ENOMEM);
    CHECK(holds(p, 1 << 20, 4));
    free(p);

    /* A buffer built by small reallocs (a string builder). Past 16 KiB it moves
       to a span of its own and then grows in place into the free pages after
       it, so it is rarely copied again, not at every size class. */
    unsigned char *sb = NULL;
    size_t sb_len = 0, sb_moves = 0;
    for (size_t n = 61; n <= 200000; n += 61) {
        unsigned char *q = realloc(sb, n);
        CHECK(q && malloc_usable_size(q) >= n);
        if (sb && q != sb && sb_len > 16384) sb_moves++;
        for (size_t i = sb_len; i < n; i++) q[i] = (unsigned char)(7 + i * 31u);
        sb = q;
        sb_len = n;
    }
    CHECK(holds(sb, sb_len, 7));
    if (sb_moves > 2) fprintf(stderr, "malloc_test: string builder moved %zu times past 16 KiB\n", sb_moves);
    CHECK(sb_moves <= 2); /* copied at each of the 8 classes from 16 to 32 KiB before */
    free(sb);

    /* A large object grows in place into free pages, or moves; either way contents stay. */
    unsigned char *a = malloc(100000);
    CHECK(a);
    fill(a, 100000, 5);
    for (size_t n = 110000; n < 3000000; n += 97000) {
        a = realloc(a, n);
        CHECK(a && holds(a, 100000, 5));
    }
    free(a);

    /* reallocarray: overflow check, otherwise realloc. */
    unsigned *arr = reallocarray(NULL, 10, sizeof(unsigned));
    CHECK(arr);
    for (unsigned i = 0; i < 10; i++) arr[i] = i * i;
    errno = 0;
    CHECK(reallocarray(arr, SIZE_MAX / 4, 8) == NULL && errno == ENOMEM);
    for (unsigned i = 0; i < 10; i++) CHECK(arr[i] == i * i);
    arr = reallocarray(arr, 100000, sizeof(unsigned));
    CHECK(arr);
    for (unsigned i = 0; i < 10; i++) CHECK(arr[i] == i * i);
    arr = reallocarray(arr, 0, sizeof(unsigned)); /* realloc(p, 0): freed, NULL */
    CHECK(arr == NULL);
}

static void test_aligned(void) {
    /* posix_memalign: EINVAL unless a power of two multiple of sizeof(void *). */
    void *p = (void *)0x1;
    const size_t bad[] = {0, 1, 2, 4, 3, 12, 24, 48, 100, sizeof(void *) + 1, SIZE_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(posix_memalign(&p, bad[i], 16) == EINVAL);
        CHECK(p == (void *)0x1); /* untouched on failure */
    }
    CHECK(posix_memalign(&p, 8, 16) == 0 && p && aligned_to(p, 16));
    free(p);
    for (size_t a = sizeof(void *); a <= ((size_t)1 << 23); a <<= 1) {
        const size_t ns[] = {0, 1, 16, 100, a, a + 1, 5000, 40000, 300000};
        for (size_t j = 0; j < sizeof ns / sizeof ns[0]; j++) {
            void *q = NULL;
            CHECK(posix_memalign(&q, a, ns[j]) == 0);
            CHECK(q && aligned_to(q, a) && aligned_to(q, 16));
            CHECK(malloc_usable_size(q) >= ns[j]);
            fill(q, ns[j], (unsigned)a);
            CHECK(holds(q, ns[j], (unsigned)a));
            if (j % 2 == 0) {
                q = realloc(q, ns[j] * 2 + 10);
                CHECK(q && holds(q, ns[j], (unsigned)a));
            }
            free(q);
        }
    }
    p = (void *)0x1;
    CHECK(posix_memalign(&p, 64, SIZE_MAX - 100) == ENOMEM);
    CHECK(p == (void *)0x1);
    CHECK(posix_memalign(&p, (size_t)1 << 62, 16) == ENOMEM);

    /* aligned_alloc: C17 DR 460 (glibc 2.38+): a non-power-of-two alignment is EINVAL. */
    const size_t bad2[] = {0, 3, 24, 100};
    for (size_t i = 0; i < sizeof bad2 / sizeof bad2[0]; i++) {
        errno = 0;
        CHECK(aligned_alloc(bad2[i], 64) == NULL && errno == EINVAL);
    }
    for (size_t a = 1; a <= ((size_t)1 << 20); a <<= 1) {
        void *q = aligned_alloc(a, 3 * a);
        CHECK(q && aligned_to(q, a) && aligned_to(q, 16));
        fill(q, 3 * a, 3);
        p_free_aligned_sized(q, a, 3 * a);
    }
    errno = 0;
    CHECK(aligned_alloc(4096, SIZE_MAX - 4096) == NULL && errno == ENOMEM);

    /* memalign (glibc): below 16 means 16, non-powers of two round up, huge is EINVAL. */
    void *m = memalign(0, 10);
    CHECK(m && aligned_to(m, 16));
    free(m);
    m = memalign(1, 10);
    CHECK(m && aligned_to(m, 16));
    free(m);
    m = memalign(24, 10);
    CHECK(m && aligned_to(m, 32));
    free(m);
    m = memalign(3000, 10);
    CHECK(m && aligned_to(m, 4096));
    free(m);
    m = memalign(1 << 16, 1 << 16);
    CHECK(m && aligned_to(m, 1 << 16));
    memset(m, 1, 1 << 16);
    free(m);
    errno = 0;
    CHECK(memalign(SIZE_MAX, 10) == NULL && errno == EINVAL);
    errno = 0;
    CHECK(memalign(SIZE_MAX / 2 + 2, 10) == NULL && errno == EINVAL);
    errno = 0;
    CHECK(memalign(64, SIZE_MAX) == NULL && errno == ENOMEM);

    /* valloc / pvalloc: page aligned; pvalloc rounds the size up to pages. */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t vs[] = {0, 1, 100, 4096, 5000, 100000};
    for (size_t i = 0; i < sizeof vs / sizeof vs[0]; i++) {
        void *v = valloc(vs[i]);
        CHECK(v && aligned_to(v, page) && malloc_usable_size(v) >= vs[i]);
        memset(v, 2, vs[i]);
        free(v);
        v = pvalloc(vs[i]);
        size_t want = (vs[i] + page - 1) / page * page; /* glibc: pvalloc(0) may be 0 bytes */
        CHECK(v && aligned_to(v, page) && malloc_usable_size(v) >= want);
        memset(v, 3, want);
        free(v);
    }
    errno = 0;
    CHECK(valloc(SIZE_MAX) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(pvalloc(SIZE_MAX - 10) == NULL && errno == ENOMEM);
}

static void test_sized_and_misc(void) {
    CHECK(malloc_usable_size(NULL) == 0);

    /* C23 free_sized / free_aligned_sized. */
    for (size_t i = 0; i < NSIZES; i++) {
        void *p = malloc(sizes[i]);
        CHECK(p);
        p_free_sized(p, sizes[i]);
        void *q = calloc(1, sizes[i]);
        CHECK(q);
        p_free_sized(q, sizes[i]);
        void *r = aligned_alloc(256, sizes[i]);
        CHECK(r);
        p_free_aligned_sized(r, 256, sizes[i]);
    }
    p_free_sized(NULL, 10);
    p_free_aligned_sized(NULL, 64, 10);

    /* malloc_trim gives memory back after a big free. */
    enum { BIG = 64 };
    void *big[BIG];
    for (int i = 0; i < BIG; i++) {
        big[i] = malloc(1 << 20);
        CHECK(big[i]);
        memset(big[i], 1, 1 << 20);
    }
    struct mallinfo2 mi = mallinfo2();
    CHECK(mi.uordblks >= (size_t)BIG << 20);
    CHECK(mi.arena >= mi.uordblks);
    CHECK(mi.hblkhd >= (size_t)BIG << 20);
    struct mallinfo mi1 = mallinfo();
    CHECK(mi1.uordblks > 0);
    for (int i = 0; i < BIG; i++) free(big[i]);
    CHECK(malloc_trim(0) == 1);
    struct mallinfo2 after = mallinfo2();
    CHECK(after.uordblks < mi.uordblks);
    CHECK(after.keepcost >= (size_t)BIG << 20); /* released to the OS */
}

/* A random mix with content checks, many sizes and functions interleaved. */
static void test_mix(void) {
    enum { SLOTS = 4096, OPS = 300000 };
    static unsigned char *slot[SLOTS];
    static size_t len[SLOTS];
    uint64_t x = 88172645463325252ull;
    for (long op = 0; op < OPS; op++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t i = x % SLOTS;
        unsigned kind = (unsigned)(x >> 20) % 100;
        size_t n = kind < 70 ? (x >> 32) % 128 : kind < 95 ? (x >> 32) % 4096 : (x >> 32) % 200000;
        if (slot[i]) {
            CHECK(holds(slot[i], len[i], (unsigned)i));
            if (kind % 3 == 0) {
                slot[i] = realloc(slot[i], n + 1);
                CHECK(slot[i]);
                size_t keep = len[i] < n + 1 ? len[i] : n + 1;
                CHECK(holds(slot[i], keep, (unsigned)i));
                len[i] = n + 1;
                fill(slot[i], len[i], (unsigned)i);
                continue;
            }
            free(slot[i]);
            slot[i] = NULL;
        } else {
            switch (kind % 4) {
            case 0: slot[i] = malloc(n); break;
            case 1: slot[i] = calloc(1, n); CHECK(all_zero(slot[i], n)); break;
            case 2: slot[i] = aligned_alloc((size_t)64 << (kind % 5), n); CHECK(aligned_to(slot[i], (size_t)64 << (kind % 5))); break;
            default: CHECK(posix_memalign((void **)&slot[i], 32, n) == 0); break;
            }
            CHECK(slot[i]);
            len[i] = n;
            fill(slot[i], n, (unsigned)i);
        }
    }
    for (size_t i = 0; i < SLOTS; i++) {
        if (slot[i]) CHECK(holds(slot[i], len[i], (unsigned)i));
        free(slot[i]);
    }
}

static int global_object[64];

static int invalid(const char *kind) {
    void *p;
    int local[16];
    if (!strcmp(kind, "stack")) {
        p = local;
    } else if (!strcmp(kind, "interior")) {
        p = (char *)malloc(100) + 16;
    } else if (!strcmp(kind, "mmap")) {
        p = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    } else if (!strcmp(kind, "global")) {
        p = global_object;
    } else if (!strcmp(kind, "realloc") || !strcmp(kind, "free_sized") || !strcmp(kind, "usable")) {
        p = (char *)malloc(5000) + 48;
    } else {
        fprintf(stderr, "malloc_test: unknown kind %s\n", kind);
        return 2;
    }
    printf("%p\n", p);
    fflush(stdout);
    if (!strcmp(kind, "realloc")) {
        p = realloc(p, 10000);
    } else if (!strcmp(kind, "free_sized")) {
        p_free_sized(p, 10);
    } else if (!strcmp(kind, "usable")) {
        /* malloc_usable_size of a bad pointer is 0, not an abort; then free aborts. */
        if (malloc_usable_size(p) != 0) return 3;
        free(p);
    } else {
        free(p);
    }
    fprintf(stderr, "malloc_test: the allocator accepted invalid pointer %p\n", p);
    return 1;
}

int main(int argc, char **argv) {
    p_free_sized = (void (*)(void *, size_t))dlsym(RTLD_DEFAULT, "free_sized");
    p_free_aligned_sized = (void (*)(void *, size_t, size_t))dlsym(RTLD_DEFAULT, "free_aligned_sized");
    Dl_info info;
    if (!p_free_sized || !p_free_aligned_sized || !dladdr((void *)p_free_sized, &info) ||
        !strstr(info.dli_fname, "tieralloc")) {
        fprintf(stderr, "malloc_test: not running under LD_PRELOAD=libtieralloc.so\n");
        return 2;
    }
    Dl_info mi;
    if (!dladdr((void *)dlsym(RTLD_DEFAULT, "malloc"), &mi) || !strstr(mi.dli_fname, "tieralloc")) {
        fprintf(stderr, "malloc_test: malloc does not resolve to tieralloc\n");
        return 2;
    }
    if (argc == 3 && !strcmp(argv[1], "invalid")) return invalid(argv[2]);

    test_malloc();
    test_calloc();
    test_realloc();
    test_aligned();
    test_sized_and_misc();
    test_mix();
    printf("malloc_test: %ld checks passed\n", checks);
    return 0;
}
