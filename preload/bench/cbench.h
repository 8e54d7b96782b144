// What the C benchmark shapes (simple.c, larson.c, paretoalloc.c, rptest.c,
// xmalloc.c) share: errors, the clock, a per-thread random generator, tagged
// objects (a tag written at both ends of every object, checked before its
// free), option parsing, the result line, and a single-producer
// single-consumer ring of object batches for the shapes that free across
// threads. Each program defines SHAPE (its name) before including this file.
#ifndef CBENCH_H
#define CBENCH_H

#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef SHAPE
#error "define SHAPE before including cbench.h"
#endif

// ------------------------------------------------------------------ errors

static inline void cb_die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static inline void cb_die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs(SHAPE ": ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

// ------------------------------------------------------------------- clock

static inline double cb_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

// When a thread's work started and ended; a run lasts from the first start
// to the last end of its threads (each thread takes its own start after the
// start barrier, so that none can finish before the clock starts).
struct cb_span {
    double start, end;
};

static inline void cb_span_merge(struct cb_span *all, const struct cb_span *t) {
    if (all->start == 0 || t->start < all->start)
        all->start = t->start;
    if (t->end > all->end)
        all->end = t->end;
}

// ------------------------------------------------------------------ random

static inline uint64_t cb_splitmix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

// xorshift64*: one per thread, never shared.
struct cb_rng {
    uint64_t s;
};

static inline void cb_seed(struct cb_rng *r, uint64_t seed, uint64_t stream) {
    r->s = cb_splitmix(seed ^ cb_splitmix(stream + 1));
    if (r->s == 0)
        r->s = 1;
}

static inline uint64_t cb_next(struct cb_rng *r) {
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * 0x2545f4914f6cdd1dULL;
}

// Uniform in [0, n) for n < 2^32.
static inline uint32_t cb_below(struct cb_rng *r, uint32_t n) {
    return (uint32_t)(((cb_next(r) >> 32) * (uint64_t)n) >> 32);
}

// Uniform in [lo, hi].
static inline size_t cb_between(struct cb_rng *r, size_t lo, size_t hi) {
    return lo + cb_below(r, (uint32_t)(hi - lo + 1));
}

// -------------------------------------------------------- tagged objects

// An object the program owns: where it is, how big, and the tag written into
// it. Sizes are at least 8 bytes: the tag sits in the first 8 bytes, and
// from 16 bytes on its complement also sits in the last 8.
struct cb_obj {
    void *p;
    size_t size;
    uint64_t tag;
};

// Per-thread source of tags: distinct for every allocation of a thread
// (an odd multiplier is a bijection), salted by the thread.
struct cb_tags {
    uint64_t count, salt;
};

static inline void cb_tags_init(struct cb_tags *t, uint64_t thread) {
    t->count = 0;
    t->salt = cb_splitmix(0x7461676773ULL + thread);
}

static inline uint64_t cb_tag(struct cb_tags *t) {
    return (++t->count * 0x9e3779b97f4a7c15ULL) ^ t->salt;
}

static inline void cb_alloc(struct cb_obj *o, size_t size, uint64_t tag) {
    void *p = malloc(size);
    if (p == NULL)
        cb_die("malloc(%zu) returned NULL (errno %d)", size, errno);
    memcpy(p, &tag, 8);
    if (size >= 16) {
        uint64_t end = ~tag;
        memcpy((char *)p + size - 8, &end, 8);
    }
    o->p = p;
    o->size = size;
    o->tag = tag;
}

static inline void cb_check(const struct cb_obj *o) {
    uint64_t head, end = ~o->tag;
    memcpy(&head, o->p, 8);
    if (o->size >= 16)
        memcpy(&end, (char *)o->p + o->size - 8, 8);
    if (head != o->tag)
        cb_die("object %p of %zu bytes overwritten: first word %#llx, expected the tag %#llx", o->p, o->size,
               (unsigned long long)head, (unsigned long long)o->tag);
    if (end != ~o->tag)
        cb_die("object %p of %zu bytes overwritten: last word %#llx, expected %#llx (the tag %#llx inverted)", o->p,
               o->size, (unsigned long long)end, (unsigned long long)~o->tag, (unsigned long long)o->tag);
}

// Checks the object's tag, then frees it.
static inline void cb_release(struct cb_obj *o) {
    cb_check(o);
    free(o->p);
    o->p = NULL;
}

// ----------------------------------------------------------------- options

// The number of option -OPT, in [lo, hi]; dies with the usage otherwise.
static inline long long cb_num(char opt, const char *s, long long lo, long long hi) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
        cb_die("-%c %s: expected a whole number in %lld..%lld", opt, s, lo, hi);
    return v;
}

static inline double cb_real(char opt, const char *s, double lo, double hi) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= lo && v <= hi))
        cb_die("-%c %s: expected a number in %g..%g", opt, s, lo, hi);
    return v;
}

// The options the shapes with random sizes share: -m MIN and -M MAX (object
// sizes, 8..2^30 bytes) and -S SEED. Takes `opt` into the given variables
// and returns 1, or returns 0 for any other option.
static inline int cb_size_opt(int opt, const char *arg, size_t *min, size_t *max, uint64_t *seed) {
    switch (opt) {
    case 'm':
        *min = (size_t)cb_num('m', arg, 8, 1LL << 30);
        return 1;
    case 'M':
        *max = (size_t)cb_num('M', arg, 8, 1LL << 30);
        return 1;
    case 'S':
        *seed = (uint64_t)cb_num('S', arg, 0, 1LL << 62);
        return 1;
    default:
        return 0;
    }
}

// After getopt: no operands are left, and -m is at most -M.
static inline void cb_args_done(int argc, char **argv, size_t min, size_t max) {
    if (optind != argc)
        cb_die("unexpected argument %s", argv[optind]);
    if (min > max)
        cb_die("-m %zu is above -M %zu", min, max);
}

static inline int cb_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

// The result line: shape=NAME threads=T <extra> ops=N seconds=S ops_per_s=R.
// ops counts allocations (each one freed again before the program ends).
static inline void cb_report(int threads, const char *extra, unsigned long long ops, double secs) {
    printf("shape=%s threads=%d%s%s ops=%llu seconds=%.3f ops_per_s=%.0f\n", SHAPE, threads,
           extra[0] ? " " : "", extra, ops, secs, secs > 0 ? (double)ops / secs : 0.0);
    fflush(stdout);
}

// ------------------------------------------------------------------ threads

static inline void cb_start(pthread_t *t, void *(*fn)(void *), void *arg) {
    int e = pthread_create(t, NULL, fn, arg);
    if (e != 0)
        cb_die("pthread_create: %s", strerror(e));
}

static inline void cb_join(pthread_t t) {
    int e = pthread_join(t, NULL);
    if (e != 0)
        cb_die("pthread_join: %s", strerror(e));
}

// What every shape's worker thread has: the first member of its worker.
struct cb_worker {
    pthread_t thread;
    int id;                 // 0..threads-1, set by cb_run
    unsigned long long ops; // allocations made (each freed again)
    struct cb_span span;    // the thread's own start and end
};

// Starts `fn` on each of the `n` workers of `size` bytes at `workers` (each
// starting with a struct cb_worker), joins them, and returns their ops;
// *all is the run's span, from the first start to the last end.
static inline unsigned long long cb_run(void *workers, size_t size, int n, void *(*fn)(void *),
                                        struct cb_span *all) {
    for (int i = 0; i < n; i++) {
        struct cb_worker *w = (struct cb_worker *)((char *)workers + (size_t)i * size);
        w->id = i;
        cb_start(&w->thread, fn, w);
    }
    *all = (struct cb_span){0, 0};
    unsigned long long ops = 0;
    for (int i = 0; i < n; i++) {
        struct cb_worker *w = (struct cb_worker *)((char *)workers + (size_t)i * size);
        cb_join(w->thread);
        cb_span_merge(all, &w->span);
        ops += w->ops;
    }
    return ops;
}

// ------------------------------------------------- ring of object batches

// Single producer, single consumer, lock-free: the producer fills the batch
// at `tail` in place and publishes it (release), the consumer reads the
// batch at `head` (acquire) and hands it back. A full ring or an empty one
// makes the caller wait (the callers yield: there may be more threads than
// cores).
#define CB_BATCH 64

struct cb_batch {
    int n;
    int last; // the producer's final batch
    struct cb_obj o[CB_BATCH];
};

struct cb_ring {
    _Alignas(64) atomic_ulong head; // written by the consumer
    _Alignas(64) atomic_ulong tail; // written by the producer
    _Alignas(64) unsigned long cap; // a power of two
    struct cb_batch *slot;
};

static inline void cb_ring_init(struct cb_ring *r, unsigned long cap) {
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    r->cap = cap;
    r->slot = calloc(cap, sizeof *r->slot);
    if (r->slot == NULL)
        cb_die("calloc of a ring of %lu batches failed", cap);
}

static inline void cb_ring_free(struct cb_ring *r) {
    free(r->slot);
}

// The batch to fill, or NULL when the ring is full.
static inline struct cb_batch *cb_ring_reserve(struct cb_ring *r) {
    unsigned long t = atomic_load_explicit(&r->tail, memory_order_relaxed);
    if (t - atomic_load_explicit(&r->head, memory_order_acquire) >= r->cap)
        return NULL;
    return &r->slot[t & (r->cap - 1)];
}

static inline void cb_ring_publish(struct cb_ring *r) {
    unsigned long t = atomic_load_explicit(&r->tail, memory_order_relaxed);
    atomic_store_explicit(&r->tail, t + 1, memory_order_release);
}

// The oldest published batch, or NULL when the ring is empty.
static inline struct cb_batch *cb_ring_peek(struct cb_ring *r) {
    unsigned long h = atomic_load_explicit(&r->head, memory_order_relaxed);
    if (h == atomic_load_explicit(&r->tail, memory_order_acquire))
        return NULL;
    return &r->slot[h & (r->cap - 1)];
}

static inline void cb_ring_consume(struct cb_ring *r) {
    unsigned long h = atomic_load_explicit(&r->head, memory_order_relaxed);
    atomic_store_explicit(&r->head, h + 1, memory_order_release);
}

#endif
