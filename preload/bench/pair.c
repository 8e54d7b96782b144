// pair SIZE N [WARMUP]: N malloc(SIZE)/free pairs in one thread; prints
// nanoseconds per pair (CLOCK_MONOTONIC over the loop, after WARMUP warm-up
// pairs, 1,000,000 by default; the callgrind bench passes a small one).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: pair SIZE N [WARMUP]\n");
        return 2;
    }
    size_t size = strtoul(argv[1], 0, 10);
    long n = strtol(argv[2], 0, 10);
    long warmup = argc == 4 ? strtol(argv[3], 0, 10) : 1000000;
    for (long i = 0; i < warmup; i++) {
        void *volatile p = malloc(size);
        free(p);
    }
    double t0 = now();
    for (long i = 0; i < n; i++) {
        void *volatile p = malloc(size);
        if (!p) {
            fprintf(stderr, "pair: malloc(%zu) failed\n", size);
            return 1;
        }
        *(volatile char *)p = (char)i;
        free(p);
    }
    printf("%.3f\n", (now() - t0) / n);
    return 0;
}
