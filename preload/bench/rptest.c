// rptest: the shape of rpmalloc's benchmark (rptest). Each of T threads keeps
// a working set of -w live objects of random sizes between -m and -M bytes
// (log-uniform: as many objects of 8..80 bytes as of 1600..16000). An
// iteration replaces -b random objects of the set with new ones; on every
// second iteration the objects taken out are not freed by the thread but
// passed, in batches of 64, to the next thread (i -> i + 1 mod T) through a
// lock-free single-producer single-consumer ring, and that thread frees them
// (checking their tags) when it drains its ring at the start of each of its
// iterations, or while it waits for room in its own outgoing ring.
//
//   rptest [-t THREADS] [-w OBJECTS] [-i ITERATIONS] [-b OBJECTS] [-m MIN] [-M MAX] [-S SEED]
//
//   -t  threads (default: the online CPUs)
//   -w  live objects per thread (default 2000)
//   -i  iterations per thread (default 4000)
//   -b  objects replaced per iteration (default 500)
//   -m  -M  object sizes (default 8..16000 bytes)
//   -S  seed (default 1)
#define SHAPE "rptest"
#include "cbench.h"

#include <math.h>

#define SIZES 4096
#define RING_BATCHES 64

static int threads;
static long long working = 2000, iterations = 4000, per_iteration = 500;
static size_t min_size = 8, max_size = 16000;
static uint64_t seed = 1;
static uint32_t size_table[SIZES];
static pthread_barrier_t go;
static atomic_int done;

struct worker {
    struct cb_worker cb;
    struct cb_ring ring; // into this thread, from thread id - 1
    struct cb_ring *out; // into thread id + 1
    unsigned long long passed;
};

static struct worker *workers;

// Frees everything the previous thread passed in, checking every tag.
static void drain(struct worker *w) {
    struct cb_batch *b;
    while ((b = cb_ring_peek(&w->ring)) != NULL) {
        for (int i = 0; i < b->n; i++)
            cb_release(&b->o[i]);
        cb_ring_consume(&w->ring);
    }
}

// Passes a batch to the next thread, draining our own ring while the
// next thread's is full (it may be waiting the same way on the one after).
static void pass(struct worker *w, const struct cb_batch *batch) {
    struct cb_batch *b;
    while ((b = cb_ring_reserve(w->out)) == NULL) {
        drain(w);
        sched_yield();
    }
    memcpy(b, batch, sizeof *b);
    cb_ring_publish(w->out);
    w->passed += (unsigned long long)batch->n;
}

static void *work(void *arg) {
    struct worker *w = arg;
    struct cb_rng rng;
    struct cb_tags tags;
    cb_seed(&rng, seed, (uint64_t)w->cb.id);
    cb_tags_init(&tags, (uint64_t)w->cb.id);
    struct cb_obj *set = calloc((size_t)working, sizeof *set);
    struct cb_batch *batch = malloc(sizeof *batch);
    if (set == NULL || batch == NULL)
        cb_die("calloc of %lld slots failed", working);
    pthread_barrier_wait(&go);
    w->cb.span.start = cb_now();
    for (long long i = 0; i < working; i++)
        cb_alloc(&set[i], size_table[cb_below(&rng, SIZES)], cb_tag(&tags));
    unsigned long long ops = (unsigned long long)working;
    for (long long it = 0; it < iterations; it++) {
        drain(w);
        int remote = (int)(it & 1);
        batch->n = 0;
        for (long long k = 0; k < per_iteration; k++) {
            struct cb_obj *o = &set[cb_below(&rng, (uint32_t)working)];
            if (remote) {
                cb_check(o);
                batch->o[batch->n++] = *o;
                if (batch->n == CB_BATCH) {
                    pass(w, batch);
                    batch->n = 0;
                }
            } else {
                cb_release(o);
            }
            cb_alloc(o, size_table[cb_below(&rng, SIZES)], cb_tag(&tags));
        }
        if (remote && batch->n > 0)
            pass(w, batch);
        ops += (unsigned long long)per_iteration;
    }
    // Keep freeing what arrives until no thread can pass anything more.
    atomic_fetch_add(&done, 1);
    while (atomic_load(&done) < threads) {
        drain(w);
        sched_yield();
    }
    drain(w);
    for (long long i = 0; i < working; i++)
        cb_release(&set[i]);
    w->cb.span.end = cb_now();
    free(batch);
    free(set);
    w->cb.ops = ops;
    return NULL;
}

int main(int argc, char **argv) {
    threads = cb_cpus();
    int opt;
    while ((opt = getopt(argc, argv, "t:w:i:b:m:M:S:h")) != -1) {
        switch (opt) {
        case 't':
            threads = (int)cb_num('t', optarg, 1, 1024);
            break;
        case 'w':
            working = cb_num('w', optarg, 1, 1LL << 31);
            break;
        case 'i':
            iterations = cb_num('i', optarg, 0, 1LL << 40);
            break;
        case 'b':
            per_iteration = cb_num('b', optarg, 1, 1LL << 31);
            break;
        default:
            if (cb_size_opt(opt, optarg, &min_size, &max_size, &seed))
                break;
            fprintf(stderr, "usage: rptest [-t THREADS] [-w OBJECTS] [-i ITERATIONS] [-b OBJECTS] [-m MIN] [-M MAX] "
                            "[-S SEED]\n");
            return 2;
        }
    }
    cb_args_done(argc, argv, min_size, max_size);
    // Log-uniform sizes at evenly spaced quantiles.
    for (int i = 0; i < SIZES; i++) {
        double u = (i + 0.5) / SIZES;
        size_table[i] = (uint32_t)((double)min_size * pow((double)max_size / (double)min_size, u));
    }

    workers = calloc((size_t)threads, sizeof *workers);
    if (workers == NULL)
        cb_die("calloc of %d workers failed", threads);
    for (int i = 0; i < threads; i++)
        cb_ring_init(&workers[i].ring, RING_BATCHES);
    for (int i = 0; i < threads; i++)
        workers[i].out = &workers[(i + 1) % threads].ring;
    atomic_init(&done, 0);
    pthread_barrier_init(&go, NULL, (unsigned)threads);
    struct cb_span all;
    unsigned long long ops = cb_run(workers, sizeof *workers, threads, work, &all), passed = 0;
    for (int i = 0; i < threads; i++)
        passed += workers[i].passed;
    double secs = all.end - all.start;

    char extra[200];
    snprintf(extra, sizeof extra, "working_set=%lld per_iteration=%lld sizes=%zu..%zu remote_frees=%llu", working,
             per_iteration, min_size, max_size, passed);
    cb_report(threads, extra, ops, secs);
    for (int i = 0; i < threads; i++)
        cb_ring_free(&workers[i].ring);
    free(workers);
    pthread_barrier_destroy(&go);
    return 0;
}
