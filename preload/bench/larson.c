// larson: the shape of Larson and Krishnan's server benchmark. T threads each
// own an array of slots holding objects of random sizes (-m..-M bytes); a
// round is -o steps of "free a random slot's object, allocate a new one of a
// random size into it". After every round each thread hands its array on to
// the next thread (thread i works on array (i + round) mod T), so from the
// second round on threads free objects other threads allocated. The run ends
// after -r rounds, or with -d after the first round that ends past SECONDS.
//
//   larson [-t THREADS] [-n SLOTS] [-m MIN] [-M MAX] [-o STEPS] [-r ROUNDS] [-d SECONDS] [-s] [-S SEED]
//
//   -t  threads (default: the online CPUs)
//   -n  slots per thread (default 1000)
//   -m  -M  object sizes, uniform (default 8..1000 bytes)
//   -o  steps per thread and round (default 20000)
//   -r  rounds (default 500)
//   -d  run for this many seconds instead of -r rounds
//   -s  free with C23's free_sized(p, size), looked up with dlsym: glibc 2.36
//       has none, so the program falls back to free() when the allocator in
//       use does not export it (the result line says which was used)
//   -S  seed of the random sizes and slots (default 1)
#define SHAPE "larson"
#include "cbench.h"

#include <dlfcn.h>

typedef void (*free_sized_fn)(void *, size_t);

static int threads, slots = 1000, steps = 20000;
static long long rounds = 500;
static double duration;
static size_t min_size = 8, max_size = 1000;
static uint64_t seed = 1;
static free_sized_fn sized_free; // NULL: free()

static struct cb_obj **arrays;
static pthread_barrier_t go, round_end;
static atomic_llong last_round; // the round after which every thread stops
static double deadline;

// free_sized of the allocator whose free() is in use, or NULL: the symbol
// counts only if it comes from the same object as free(), so that a libc
// free_sized never frees another allocator's pointers.
static free_sized_fn find_free_sized(void) {
    void *fs = dlsym(RTLD_DEFAULT, "free_sized");
    void *f = dlsym(RTLD_DEFAULT, "free");
    Dl_info a, b;
    if (fs == NULL || f == NULL || !dladdr(fs, &a) || !dladdr(f, &b) || a.dli_fbase != b.dli_fbase)
        return NULL;
    free_sized_fn fn;
    memcpy(&fn, &fs, sizeof fn);
    return fn;
}

static inline void release(struct cb_obj *o) {
    if (sized_free != NULL) {
        cb_check(o);
        sized_free(o->p, o->size);
        o->p = NULL;
    } else {
        cb_release(o);
    }
}

struct worker {
    struct cb_worker cb;
    long long rounds;
};

static void *work(void *arg) {
    struct worker *w = arg;
    struct cb_rng rng;
    struct cb_tags tags;
    cb_seed(&rng, seed, (uint64_t)w->cb.id);
    cb_tags_init(&tags, (uint64_t)w->cb.id);
    unsigned long long ops = 0;
    pthread_barrier_wait(&go);
    w->cb.span.start = cb_now();
    if (w->cb.id == 0)
        deadline = w->cb.span.start + duration;

    struct cb_obj *mine = arrays[w->cb.id];
    for (int i = 0; i < slots; i++)
        cb_alloc(&mine[i], cb_between(&rng, min_size, max_size), cb_tag(&tags));
    ops += (unsigned long long)slots;
    pthread_barrier_wait(&round_end);

    long long r = 0;
    for (;; r++) {
        struct cb_obj *a = arrays[(w->cb.id + r) % threads];
        for (int k = 0; k < steps; k++) {
            struct cb_obj *o = &a[cb_below(&rng, (uint32_t)slots)];
            release(o);
            cb_alloc(o, cb_between(&rng, min_size, max_size), cb_tag(&tags));
        }
        ops += (unsigned long long)steps;
        // Only thread 0 moves the last round, and only past the round it has
        // just finished: every thread reads it after this round's barrier.
        if (w->cb.id == 0 && duration > 0 && atomic_load(&last_round) > r && cb_now() >= deadline)
            atomic_store(&last_round, r);
        pthread_barrier_wait(&round_end);
        if (r >= atomic_load(&last_round))
            break;
    }
    struct cb_obj *a = arrays[(w->cb.id + r + 1) % threads];
    for (int i = 0; i < slots; i++)
        release(&a[i]);
    w->cb.span.end = cb_now();
    w->cb.ops = ops;
    w->rounds = r + 1;
    return NULL;
}

int main(int argc, char **argv) {
    threads = cb_cpus();
    int sized = 0;
    int opt;
    while ((opt = getopt(argc, argv, "t:n:m:M:o:r:d:sS:h")) != -1) {
        switch (opt) {
        case 't':
            threads = (int)cb_num('t', optarg, 1, 1024);
            break;
        case 'n':
            slots = (int)cb_num('n', optarg, 1, 1 << 26);
            break;
        case 'o':
            steps = (int)cb_num('o', optarg, 0, 1 << 30);
            break;
        case 'r':
            rounds = cb_num('r', optarg, 1, 1LL << 40);
            break;
        case 'd':
            duration = cb_real('d', optarg, 0.001, 1e6);
            break;
        case 's':
            sized = 1;
            break;
        default:
            if (cb_size_opt(opt, optarg, &min_size, &max_size, &seed))
                break;
            fprintf(stderr, "usage: larson [-t THREADS] [-n SLOTS] [-m MIN] [-M MAX] [-o STEPS] [-r ROUNDS] "
                            "[-d SECONDS] [-s] [-S SEED]\n");
            return 2;
        }
    }
    cb_args_done(argc, argv, min_size, max_size);
    if (sized)
        sized_free = find_free_sized();
    const char *which = !sized ? "free" : sized_free != NULL ? "free_sized" : "free-fallback";

    arrays = calloc((size_t)threads, sizeof *arrays);
    struct worker *w = calloc((size_t)threads, sizeof *w);
    if (arrays == NULL || w == NULL)
        cb_die("calloc of %d threads' state failed", threads);
    for (int i = 0; i < threads; i++) {
        arrays[i] = calloc((size_t)slots, sizeof **arrays);
        if (arrays[i] == NULL)
            cb_die("calloc of %d slots failed", slots);
    }
    atomic_init(&last_round, duration > 0 ? (1LL << 62) : rounds - 1);
    pthread_barrier_init(&go, NULL, (unsigned)threads);
    pthread_barrier_init(&round_end, NULL, (unsigned)threads);
    struct cb_span all;
    unsigned long long ops = cb_run(w, sizeof *w, threads, work, &all);
    double secs = all.end - all.start;

    char extra[200];
    snprintf(extra, sizeof extra, "rounds=%lld slots=%d sizes=%zu..%zu free=%s", w[0].rounds, slots,
             min_size, max_size, which);
    cb_report(threads, extra, ops, secs);
    for (int i = 0; i < threads; i++)
        free(arrays[i]);
    free(arrays);
    free(w);
    pthread_barrier_destroy(&go);
    pthread_barrier_destroy(&round_end);
    return 0;
}
