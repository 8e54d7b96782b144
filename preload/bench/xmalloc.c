// xmalloc: the producer/consumer shape of xmalloc-test. T producer threads
// only allocate and T consumer threads only free: producer i allocates -n
// objects of random sizes (-m..-M bytes, uniform), tags them and passes them
// in batches of 64 through a lock-free single-producer single-consumer ring
// to consumer i, which checks each tag and frees the object. Every free is
// remote: no thread ever frees what it allocated.
//
//   xmalloc [-p PAIRS] [-n OBJECTS] [-m MIN] [-M MAX] [-S SEED]
//
//   -p  producer/consumer pairs: 2 x PAIRS threads (default: half the online CPUs, at least 1)
//   -n  objects per producer (default 4000000)
//   -m  -M  object sizes (default 8..512 bytes)
//   -S  seed (default 1)
#define SHAPE "xmalloc"
#include "cbench.h"

#define RING_BATCHES 64

static int pairs;
static long long objects = 4000000;
static size_t min_size = 8, max_size = 512;
static uint64_t seed = 1;
static pthread_barrier_t go;

struct pair {
    pthread_t producer, consumer;
    int id;
    struct cb_ring ring;
    unsigned long long freed;
    struct cb_span produced, consumed;
};

static void *produce(void *arg) {
    struct pair *p = arg;
    struct cb_rng rng;
    struct cb_tags tags;
    cb_seed(&rng, seed, (uint64_t)p->id);
    cb_tags_init(&tags, (uint64_t)p->id);
    pthread_barrier_wait(&go);
    p->produced.start = cb_now();
    long long left = objects;
    for (;;) {
        struct cb_batch *b;
        while ((b = cb_ring_reserve(&p->ring)) == NULL)
            sched_yield();
        int n = left < CB_BATCH ? (int)left : CB_BATCH;
        for (int i = 0; i < n; i++)
            cb_alloc(&b->o[i], cb_between(&rng, min_size, max_size), cb_tag(&tags));
        left -= n;
        b->n = n;
        b->last = left == 0;
        cb_ring_publish(&p->ring);
        if (left == 0)
            break;
    }
    p->produced.end = cb_now();
    return NULL;
}

static void *consume(void *arg) {
    struct pair *p = arg;
    unsigned long long freed = 0;
    pthread_barrier_wait(&go);
    p->consumed.start = cb_now();
    for (;;) {
        struct cb_batch *b;
        while ((b = cb_ring_peek(&p->ring)) == NULL)
            sched_yield();
        for (int i = 0; i < b->n; i++)
            cb_release(&b->o[i]);
        freed += (unsigned long long)b->n;
        int last = b->last;
        cb_ring_consume(&p->ring);
        if (last)
            break;
    }
    p->consumed.end = cb_now();
    p->freed = freed;
    return NULL;
}

int main(int argc, char **argv) {
    pairs = cb_cpus() / 2;
    if (pairs < 1)
        pairs = 1;
    int opt;
    while ((opt = getopt(argc, argv, "p:n:m:M:S:h")) != -1) {
        switch (opt) {
        case 'p':
            pairs = (int)cb_num('p', optarg, 1, 512);
            break;
        case 'n':
            objects = cb_num('n', optarg, 1, 1LL << 40);
            break;
        default:
            if (cb_size_opt(opt, optarg, &min_size, &max_size, &seed))
                break;
            fprintf(stderr, "usage: xmalloc [-p PAIRS] [-n OBJECTS] [-m MIN] [-M MAX] [-S SEED]\n");
            return 2;
        }
    }
    cb_args_done(argc, argv, min_size, max_size);

    struct pair *p = calloc((size_t)pairs, sizeof *p);
    if (p == NULL)
        cb_die("calloc of %d pairs failed", pairs);
    pthread_barrier_init(&go, NULL, 2 * (unsigned)pairs);
    for (int i = 0; i < pairs; i++) {
        p[i].id = i;
        cb_ring_init(&p[i].ring, RING_BATCHES);
        cb_start(&p[i].consumer, consume, &p[i]);
        cb_start(&p[i].producer, produce, &p[i]);
    }
    struct cb_span all = {0, 0};
    unsigned long long freed = 0;
    for (int i = 0; i < pairs; i++) {
        cb_join(p[i].producer);
        cb_join(p[i].consumer);
        cb_span_merge(&all, &p[i].produced);
        cb_span_merge(&all, &p[i].consumed);
        freed += p[i].freed;
    }
    double secs = all.end - all.start;
    if (freed != (unsigned long long)objects * (unsigned long long)pairs)
        cb_die("consumers freed %llu objects of %llu", freed, (unsigned long long)objects * (unsigned long long)pairs);

    char extra[200];
    snprintf(extra, sizeof extra, "producers=%d consumers=%d sizes=%zu..%zu", pairs, pairs, min_size, max_size);
    cb_report(2 * pairs, extra, freed, secs);
    for (int i = 0; i < pairs; i++)
        cb_ring_free(&p[i].ring);
    free(p);
    pthread_barrier_destroy(&go);
    return 0;
}
