/* Double frees and frees of slots never handed out, under
 * LD_PRELOAD=libtieralloc.so: each KIND prints the address it frees wrongly
 * ("%p\n" on stdout) and must abort; "lookalike" must not.
 *
 *   ./double_free double SIZE     free(p); free(p)
 *   ./double_free realloc SIZE    free(p); realloc(p, 2 * SIZE)
 *   ./double_free free_sized SIZE free(p); free_sized(p, SIZE)
 *   ./double_free flushed SIZE    free(p), then enough other frees that p leaves
 *                                 the CPU's cache (for its transfer cache or its
 *                                 span, kept live by every other object), free(p)
 *   ./double_free thread SIZE     free(p) on another thread, then free(p) here
 *   ./double_free above SIZE      free(p + slot) (slot: malloc_usable_size(p)): the
 *                                 next slot, never handed out (still in its span)
 *   ./double_free below SIZE      free(p - slot): the slot before, carved into the
 *                                 CPU's cache with p, never handed out
 *   ./double_free lookalike SIZE  live objects holding what a free object holds
 *                                 (read from a freed one) are freed normally;
 *                                 prints "lookalike: OK"
 *
 * The first allocation of SIZE's class is the first thing each kind does, so
 * that the slots around it are those of a fresh refill (the refill hands out
 * the highest object of its batch and caches the ones below it).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void say(void *p) {
    printf("%p\n", p);
    fflush(stdout);
}

static void *free_it(void *p) {
    free(p);
    return NULL;
}

/* p = malloc(size) and n other objects of its size: p's frees happen in
 * the middle of the others' (every other one of them, so each span keeps
 * live objects and stays a span of its class). */
static int flushed(size_t size) {
    enum { N = 20000 };
    static char *a[2 * N];
    for (int i = 0; i < 2 * N; i++)
        if (!(a[i] = malloc(size))) return 2;
    char *p = a[N];
    for (int i = 0; i < N; i += 2) free(a[i]);
    say(p);
    free(p);
    for (int i = N + 2; i < 2 * N; i += 2) free(a[i]);
    free(p);
    return 0;
}

/* What the freed object held in its second word is the key: objects that
 * hold the key, or the key of a carved slot, while live are freed normally,
 * and the heap stays sound (no object is handed out twice). */
static int lookalike(size_t size) {
    size_t *p = malloc(size);
    if (!p) return 2;
    free(p);
    size_t key = p[1]; /* a read of freed memory: the test's, on purpose */
    for (int round = 0; round < 1000; round++) {
        size_t *q = malloc(size), *r = malloc(size);
        if (!q || !r || q == r) return 3;
        size_t k = key ^ (size_t)p ^ (size_t)q; /* q's key: the secret ^ q */
        q[1] = round & 1 ? k ^ 1 : k;
        r[1] = key ^ (size_t)p ^ (size_t)r;
        free(q);
        free(r);
    }
    size_t *s = malloc(size), *t = malloc(size);
    if (!s || !t || s == t) return 4;
    free(s);
    free(t);
    printf("lookalike: OK\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: double_free KIND SIZE\n");
        return 2;
    }
    const char *kind = argv[1];
    size_t size = strtoul(argv[2], NULL, 0);
    if (!strcmp(kind, "flushed")) return flushed(size);
    if (!strcmp(kind, "lookalike")) return lookalike(size);
    char *p = malloc(size);
    if (!p) return 2;
    if (!strcmp(kind, "double")) {
        say(p);
        free(p);
        free(p);
    } else if (!strcmp(kind, "realloc")) {
        say(p);
        free(p);
        p = realloc(p, 2 * size);
    } else if (!strcmp(kind, "free_sized")) {
        void (*free_sized)(void *, size_t) = (void (*)(void *, size_t))dlsym(RTLD_DEFAULT, "free_sized");
        if (!free_sized) return 2;
        say(p);
        free(p);
        free_sized(p, size);
    } else if (!strcmp(kind, "thread")) {
        pthread_t t;
        say(p);
        if (pthread_create(&t, NULL, free_it, p) || pthread_join(t, NULL)) return 2;
        free(p);
    } else if (!strcmp(kind, "above")) {
        size_t slot = malloc_usable_size(p);
        say(p + slot);
        free(p + slot);
    } else if (!strcmp(kind, "below")) {
        size_t slot = malloc_usable_size(p);
        say(p - slot);
        free(p - slot);
    } else {
        fprintf(stderr, "double_free: unknown kind %s\n", kind);
        return 2;
    }
    printf("not aborted\n");
    return 1;
}
