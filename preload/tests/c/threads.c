/* Multi-threaded malloc stress with cross-thread frees and content checks.
 *
 *   ./threads [THREADS [ROUNDS]]      default 8 threads, 200 rounds
 *
 * Each round, every thread allocates a batch of objects (mostly small, some
 * medium, a few large; malloc, calloc, aligned_alloc, realloc), writes a
 * pattern derived from (owner, index) into each, and hands the batch to the
 * next thread through a mailbox. The receiver checks every byte, reallocs some
 * objects (checking the kept prefix) and frees them all: nearly every free is
 * a remote free. Short-lived threads are also created and joined throughout.
 * Prints "threads: OK <objects> objects" and exits 0, or names the first
 * corrupted object and exits 1.
 *
 * Build: cc -O2 -fno-builtin -pthread threads.c
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { BATCH = 2000, MAXT = 64 };

struct obj {
    unsigned char *p;
    size_t n;
    unsigned seed;
};

struct mailbox {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct obj *batch; /* NULL: empty */
};

static int nthreads = 8, rounds = 200;
static struct mailbox box[MAXT];
static long total_objects[MAXT];

static void fail(const char *what, int t, size_t i, size_t n) {
    fprintf(stderr, "threads: thread %d: %s (object %zu, %zu bytes)\n", t, what, i, n);
    exit(1);
}

static uint64_t next(uint64_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* The pattern: one 64-bit word per 64-byte line (so every cache line of the
 * object is written and checked: overlapping objects would collide), the last
 * word, and every byte of objects under 64 bytes. __builtin_memcpy: the
 * program is built with -fno-builtin, which would otherwise make each 8-byte
 * copy a libc call and swamp the allocator's share of the run. */
static uint64_t word(unsigned seed, size_t i) { return 0x9E3779B97F4A7C15ull * (seed | 1) + i; }

static void fill(unsigned char *p, size_t n, unsigned seed) {
    if (n < 64) {
        for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(seed ^ i);
        return;
    }
    for (size_t i = 0; i + 16 <= n; i += 64) { /* clear of the last word */
        uint64_t w = word(seed, i);
        __builtin_memcpy(p + i, &w, 8);
    }
    uint64_t w = ~word(seed, n);
    __builtin_memcpy(p + n - 8, &w, 8);
}

static int holds(const unsigned char *p, size_t n, unsigned seed) {
    if (n < 64) {
        for (size_t i = 0; i < n; i++)
            if (p[i] != (unsigned char)(seed ^ i)) return 0;
        return 1;
    }
    uint64_t v;
    for (size_t i = 0; i + 16 <= n; i += 64) { /* clear of the last word */
        __builtin_memcpy(&v, p + i, 8);
        if (v != word(seed, i)) return 0;
    }
    __builtin_memcpy(&v, p + n - 8, 8);
    return v == ~word(seed, n);
}

static size_t pick_size(uint64_t r) {
    unsigned k = r % 1000;
    if (k < 800) return (r >> 10) % 160;               /* small */
    if (k < 975) return 160 + (r >> 10) % 4000;        /* medium */
    if (k < 998) return 4096 + (r >> 10) % 40000;      /* up to large */
    return 65536 + (r >> 10) % (1 << 19);              /* large */
}

static void *short_lived(void *arg) {
    uint64_t x = (uintptr_t)arg * 2654435761u + 1;
    void *keep[64];
    for (int i = 0; i < 64; i++) {
        size_t n = pick_size(next(&x));
        keep[i] = malloc(n);
        if (!keep[i]) fail("short-lived malloc returned NULL", -1, i, n);
        memset(keep[i], i, n);
    }
    for (int i = 0; i < 64; i++) free(keep[i]);
    return NULL;
}

static void *worker(void *arg) {
    int t = (int)(intptr_t)arg;
    uint64_t x = 0x2545F4914F6CDD1Dull ^ ((uint64_t)t << 32) ^ (uint64_t)t;
    unsigned seed = (unsigned)t << 24;
    struct mailbox *out = &box[(t + 1) % nthreads], *in = &box[t];
    for (int r = 0; r < rounds; r++) {
        struct obj *b = malloc(BATCH * sizeof *b);
        if (!b) fail("batch malloc returned NULL", t, 0, BATCH * sizeof *b);
        for (size_t i = 0; i < BATCH; i++) {
            uint64_t v = next(&x);
            size_t n = pick_size(v);
            unsigned char *p;
            switch ((v >> 40) % 8) {
            case 0:
                p = calloc(1, n);
                if (p)
                    for (size_t j = 0; j < n; j++)
                        if (p[j]) fail("calloc memory not zero", t, i, n);
                break;
            case 1: {
                /* C11 wants the size a multiple of the alignment (some allocators
                   insist). Alignments stay at most 128: Debian's mimalloc 2.0.9
                   misaligns some 256+ byte aligned blocks, and compare.sh runs this
                   program under it too (malloc_test covers larger alignments). */
                size_t a = (size_t)32 << ((v >> 50) % 3);
                n = (n + a - 1) & ~(a - 1);
                p = aligned_alloc(a, n);
                if (p && ((uintptr_t)p & (a - 1))) fail("aligned_alloc misaligned", t, i, n);
                break;
            }
            case 2:
                p = malloc(n / 2 + 1);
                if (p) {
                    fill(p, n / 2 + 1, seed + 1);
                    p = realloc(p, n);
                    if (p && !holds(p, n / 2 + 1 < n ? n / 2 + 1 : n, seed + 1))
                        fail("realloc lost contents", t, i, n);
                }
                break;
            default:
                p = malloc(n);
            }
            if (!p && n) fail("allocation returned NULL", t, i, n);
            if (n >= 16 && ((uintptr_t)p & 15) != 0) fail("pointer not 16-byte aligned", t, i, n);
            b[i] = (struct obj){p, n, seed++};
            fill(p, n, b[i].seed);
        }
        total_objects[t] += BATCH;

        /* Hand the batch to the next thread, take ours from the previous one. */
        pthread_mutex_lock(&out->mu);
        while (out->batch) pthread_cond_wait(&out->cv, &out->mu);
        out->batch = b;
        pthread_cond_broadcast(&out->cv);
        pthread_mutex_unlock(&out->mu);

        pthread_mutex_lock(&in->mu);
        while (!in->batch) pthread_cond_wait(&in->cv, &in->mu);
        struct obj *got = in->batch;
        in->batch = NULL;
        pthread_cond_broadcast(&in->cv);
        pthread_mutex_unlock(&in->mu);

        for (size_t i = 0; i < BATCH; i++) {
            struct obj o = got[i];
            if (!holds(o.p, o.n, o.seed)) fail("remote object corrupted", t, i, o.n);
            if (i % 7 == 0) {
                size_t m = o.n * 2 + 16;
                o.p = realloc(o.p, m);
                if (!o.p) fail("realloc returned NULL", t, i, m);
                if (!holds(o.p, o.n, o.seed)) fail("remote realloc lost contents", t, i, o.n);
            }
            free(o.p);
        }
        free(got);

        if (r % 20 == 0) {
            pthread_t s;
            if (pthread_create(&s, NULL, short_lived, (void *)(intptr_t)(t * 1000 + r)) != 0)
                fail("pthread_create failed", t, 0, 0);
            pthread_join(s, NULL);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) nthreads = atoi(argv[1]);
    if (argc > 2) rounds = atoi(argv[2]);
    if (nthreads < 2 || nthreads > MAXT || rounds < 1) {
        fprintf(stderr, "usage: threads [THREADS 2..%d [ROUNDS]]\n", MAXT);
        return 2;
    }
    pthread_t th[MAXT];
    for (int i = 0; i < nthreads; i++) {
        pthread_mutex_init(&box[i].mu, NULL);
        pthread_cond_init(&box[i].cv, NULL);
    }
    for (int i = 0; i < nthreads; i++)
        if (pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i) != 0) {
            fprintf(stderr, "threads: pthread_create failed\n");
            return 1;
        }
    long n = 0;
    for (int i = 0; i < nthreads; i++) {
        pthread_join(th[i], NULL);
        n += total_objects[i];
    }
    printf("threads: OK %ld objects\n", n);
    return 0;
}
