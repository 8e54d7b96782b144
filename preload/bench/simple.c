// simple: the shape of glibc's bench-malloc-simple (and, with -t, of
// bench-malloc-thread's one-thread-per-core runs). For every size and every
// batch count, a thread allocates a batch of that many objects of that size,
// then frees them in allocation order, again and again until it has made
// -n allocations for the pair; T threads (-t) each do the same on their own,
// sharing nothing.
//
//   simple [-t THREADS] [-n ALLOCS] [-z SIZE,...] [-b COUNT,...]
//
//   -t  threads (default 1)
//   -n  allocations per thread for each (size, batch count) pair (default 1500000)
//   -z  object sizes in bytes, at least 8 (default 16,32,64,128,256)
//   -b  batch counts: live objects at once (default 25,100,400,1600)
#define SHAPE "simple"
#include "cbench.h"

#define MAX_LIST 16

struct list {
    int n;
    long v[MAX_LIST];
};

static struct list sizes = {5, {16, 32, 64, 128, 256}};
static struct list batches = {4, {25, 100, 400, 1600}};
static long long allocs = 1500000;
static pthread_barrier_t go;

static void parse_list(char opt, char *s, struct list *l, long lo, long hi) {
    l->n = 0;
    for (char *tok = strtok(s, ","); tok != NULL; tok = strtok(NULL, ",")) {
        if (l->n == MAX_LIST)
            cb_die("-%c: at most %d values", opt, MAX_LIST);
        l->v[l->n++] = (long)cb_num(opt, tok, lo, hi);
    }
    if (l->n == 0)
        cb_die("-%c: no values", opt);
}

static void list_string(char *buf, size_t len, const struct list *l) {
    size_t at = 0;
    buf[0] = '\0';
    for (int i = 0; i < l->n && at < len; i++)
        at += (size_t)snprintf(buf + at, len - at, "%s%ld", i ? "," : "", l->v[i]);
}

struct worker {
    struct cb_worker cb;
};

static void *work(void *arg) {
    struct worker *w = arg;
    long most = 0;
    for (int b = 0; b < batches.n; b++)
        if (batches.v[b] > most)
            most = batches.v[b];
    struct cb_obj *live = calloc((size_t)most, sizeof *live);
    if (live == NULL)
        cb_die("calloc of %ld slots failed", most);
    struct cb_tags tags;
    cb_tags_init(&tags, (uint64_t)w->cb.id);
    pthread_barrier_wait(&go);
    w->cb.span.start = cb_now();
    unsigned long long ops = 0;
    for (int s = 0; s < sizes.n; s++) {
        size_t size = (size_t)sizes.v[s];
        for (int b = 0; b < batches.n; b++) {
            long n = batches.v[b];
            long long rounds = (allocs + n - 1) / n;
            for (long long r = 0; r < rounds; r++) {
                for (long i = 0; i < n; i++)
                    cb_alloc(&live[i], size, cb_tag(&tags));
                for (long i = 0; i < n; i++)
                    cb_release(&live[i]);
                ops += (unsigned long long)n;
            }
        }
    }
    w->cb.span.end = cb_now();
    free(live);
    w->cb.ops = ops;
    return NULL;
}

int main(int argc, char **argv) {
    int threads = 1;
    int opt;
    while ((opt = getopt(argc, argv, "t:n:z:b:h")) != -1) {
        switch (opt) {
        case 't':
            threads = (int)cb_num('t', optarg, 1, 1024);
            break;
        case 'n':
            allocs = cb_num('n', optarg, 1, 1LL << 40);
            break;
        case 'z':
            parse_list('z', optarg, &sizes, 8, 1L << 30);
            break;
        case 'b':
            parse_list('b', optarg, &batches, 1, 1L << 24);
            break;
        default:
            fprintf(stderr, "usage: simple [-t THREADS] [-n ALLOCS] [-z SIZE,...] [-b COUNT,...]\n");
            return 2;
        }
    }
    if (optind != argc)
        cb_die("unexpected argument %s", argv[optind]);

    struct worker *w = calloc((size_t)threads, sizeof *w);
    if (w == NULL)
        cb_die("calloc of %d workers failed", threads);
    pthread_barrier_init(&go, NULL, (unsigned)threads);
    struct cb_span all;
    unsigned long long ops = cb_run(w, sizeof *w, threads, work, &all);
    double secs = all.end - all.start;

    char zs[256], bs[256], extra[600];
    list_string(zs, sizeof zs, &sizes);
    list_string(bs, sizeof bs, &batches);
    snprintf(extra, sizeof extra, "sizes=%s batches=%s", zs, bs);
    cb_report(threads, extra, ops, secs);
    pthread_barrier_destroy(&go);
    free(w);
    return 0;
}
