// paretoalloc: the shape of ITHare's alloc-test (alloc-test1 / alloc-testN).
// Each thread keeps a working set of -w live objects whose sizes follow a
// Pareto distribution (heavy-tailed: most objects small, a few large),
// P(size > x) = (MIN / x)^ALPHA, cut off at -M bytes; every step replaces a
// random object of the set with a new one of a fresh Pareto size. Threads
// (-t) have working sets of their own and share nothing.
//
//   paretoalloc [-t THREADS] [-w OBJECTS] [-n STEPS] [-a ALPHA] [-m MIN] [-M MAX] [-S SEED]
//
//   -t  threads (default 1)
//   -w  live objects per thread (default 100000)
//   -n  replacement steps per thread (default 20000000)
//   -a  the Pareto shape ALPHA (default 1.0: mean about 47 bytes from 8..1024)
//   -m  -M  the smallest size (the Pareto scale) and the cut-off (default 8, 1024)
//   -S  seed (default 1)
#define SHAPE "paretoalloc"
#include "cbench.h"

#include <math.h>

// Sizes at 4096 evenly spaced quantiles of the distribution: a step picks
// one at random, so sampling costs a table lookup, not a pow().
#define QUANTILES 4096

static int threads = 1;
static long long working = 100000, steps = 20000000;
static double alpha = 1.0;
static size_t min_size = 8, max_size = 1024;
static uint64_t seed = 1;
static uint32_t quantile[QUANTILES];
static pthread_barrier_t go;

static void make_quantiles(void) {
    for (int i = 0; i < QUANTILES; i++) {
        double u = (i + 0.5) / QUANTILES;
        double x = (double)min_size * pow(1.0 - u, -1.0 / alpha);
        quantile[i] = x >= (double)max_size ? (uint32_t)max_size : (uint32_t)x;
    }
}

struct worker {
    struct cb_worker cb;
};

static void *work(void *arg) {
    struct worker *w = arg;
    struct cb_rng rng;
    struct cb_tags tags;
    cb_seed(&rng, seed, (uint64_t)w->cb.id);
    cb_tags_init(&tags, (uint64_t)w->cb.id);
    struct cb_obj *set = calloc((size_t)working, sizeof *set);
    if (set == NULL)
        cb_die("calloc of %lld slots failed", working);
    pthread_barrier_wait(&go);
    w->cb.span.start = cb_now();
    for (long long i = 0; i < working; i++)
        cb_alloc(&set[i], quantile[cb_below(&rng, QUANTILES)], cb_tag(&tags));
    for (long long k = 0; k < steps; k++) {
        struct cb_obj *o = &set[cb_below(&rng, (uint32_t)working)];
        cb_release(o);
        cb_alloc(o, quantile[cb_below(&rng, QUANTILES)], cb_tag(&tags));
    }
    for (long long i = 0; i < working; i++)
        cb_release(&set[i]);
    w->cb.span.end = cb_now();
    free(set);
    w->cb.ops = (unsigned long long)(working + steps);
    return NULL;
}

int main(int argc, char **argv) {
    int opt;
    while ((opt = getopt(argc, argv, "t:w:n:a:m:M:S:h")) != -1) {
        switch (opt) {
        case 't':
            threads = (int)cb_num('t', optarg, 1, 1024);
            break;
        case 'w':
            working = cb_num('w', optarg, 1, 1LL << 31);
            break;
        case 'n':
            steps = cb_num('n', optarg, 0, 1LL << 40);
            break;
        case 'a':
            alpha = cb_real('a', optarg, 0.1, 100);
            break;
        default:
            if (cb_size_opt(opt, optarg, &min_size, &max_size, &seed))
                break;
            fprintf(stderr, "usage: paretoalloc [-t THREADS] [-w OBJECTS] [-n STEPS] [-a ALPHA] [-m MIN] [-M MAX] "
                            "[-S SEED]\n");
            return 2;
        }
    }
    cb_args_done(argc, argv, min_size, max_size);
    make_quantiles();
    double mean = 0;
    for (int i = 0; i < QUANTILES; i++)
        mean += quantile[i];
    mean /= QUANTILES;

    struct worker *w = calloc((size_t)threads, sizeof *w);
    if (w == NULL)
        cb_die("calloc of %d workers failed", threads);
    pthread_barrier_init(&go, NULL, (unsigned)threads);
    struct cb_span all;
    unsigned long long ops = cb_run(w, sizeof *w, threads, work, &all);
    double secs = all.end - all.start;

    char extra[200];
    snprintf(extra, sizeof extra, "working_set=%lld alpha=%g sizes=%zu..%zu mean_size=%.1f", working, alpha,
             min_size, max_size, mean);
    cb_report(threads, extra, ops, secs);
    pthread_barrier_destroy(&go);
    free(w);
    return 0;
}
