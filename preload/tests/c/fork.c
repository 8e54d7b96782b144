/* fork() while other threads allocate: the allocator's pthread_atfork
 * handlers must leave no lock held in the child.
 *
 *   ./fork [FORKS]          default 100
 *
 * Four threads malloc/realloc/free continuously (small, medium and large
 * objects). The main thread forks FORKS times, alternating with forks from one
 * of the allocating threads. Each child mallocs, checks and frees objects of
 * every kind, starts a thread that does the same, and exits 0; an alarm kills
 * a child that deadlocks. The parent checks every child's status and keeps
 * allocating. Prints "fork: OK <forks> children" and exits 0.
 *
 * Build: cc -O2 -fno-builtin -pthread fork.c
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static atomic_int stop;
static atomic_long parent_ops;

static uint64_t next(uint64_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static size_t pick(uint64_t r) {
    switch (r % 10) {
    case 0: return 40000 + (r >> 8) % 300000; /* large */
    case 1: case 2: return 300 + (r >> 8) % 8000;
    default: return (r >> 8) % 300;
    }
}

/* Allocates, fills, checks and frees a spread of objects; returns 0 if all is well. */
static int exercise(uint64_t seed, int n) {
    uint64_t x = seed | 1;
    for (int i = 0; i < n; i++) {
        size_t sz = pick(next(&x));
        unsigned char *p = (i % 3 == 0) ? calloc(1, sz) : malloc(sz);
        if (!p && sz) return 1;
        memset(p, (int)(i & 0xff), sz);
        p = realloc(p, sz + 100);
        if (!p) return 2;
        for (size_t j = 0; j < sz; j += 61)
            if (p[j] != (unsigned char)(i & 0xff)) return 3;
        free(p);
    }
    return 0;
}

static void *child_thread(void *arg) {
    return (void *)(intptr_t)exercise((uintptr_t)arg, 2000);
}

static void child(int k) {
    alarm(20); /* a deadlocked child dies of SIGALRM */
    if (exercise(0x1234567ull + (uint64_t)k, 3000)) _exit(10);
    pthread_t t;
    if (pthread_create(&t, NULL, child_thread, (void *)(uintptr_t)(k + 99)) != 0) _exit(11);
    void *r;
    pthread_join(t, &r);
    if (r) _exit(12);
    exit(0); /* through atexit and stdio, which may allocate too */
}

static int fork_one(int k) {
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork: fork");
        return 1;
    }
    if (pid == 0) child(k);
    int st;
    if (waitpid(pid, &st, 0) != pid) {
        perror("fork: waitpid");
        return 1;
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        if (WIFSIGNALED(st))
            fprintf(stderr, "fork: child %d killed by signal %d%s\n", k, WTERMSIG(st),
                    WTERMSIG(st) == SIGALRM ? " (deadlock: a heap lock held across fork?)" : "");
        else
            fprintf(stderr, "fork: child %d exited with %d\n", k, WEXITSTATUS(st));
        return 1;
    }
    return 0;
}

static int forks = 100;
static atomic_int failures, done;

static void *allocator(void *arg) {
    uint64_t x = 0x9E3779B97F4A7C15ull * ((uintptr_t)arg + 1);
    void *live[256] = {0};
    int id = (int)(uintptr_t)arg;
    int k = 0;
    while (!atomic_load(&stop)) {
        uint64_t r = next(&x);
        int i = (int)(r % 256);
        if (live[i]) {
            free(live[i]);
            live[i] = NULL;
        } else {
            size_t sz = pick(r >> 8);
            live[i] = malloc(sz);
            if (!live[i]) abort();
            memset(live[i], 1, sz < 64 ? sz : 64);
        }
        atomic_fetch_add(&parent_ops, 1);
        /* Thread 0 forks too: a fork from a thread that is not main. */
        if (id == 0 && (r % 5000) == 0 && k < forks / 4) {
            if (fork_one(100000 + k++)) atomic_fetch_add(&failures, 1);
            atomic_fetch_add(&done, 1);
        }
    }
    for (int i = 0; i < 256; i++) free(live[i]);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) forks = atoi(argv[1]);
    pthread_t th[4];
    for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, allocator, (void *)(uintptr_t)i);
    for (int k = 0; k < forks; k++) {
        if (fork_one(k)) atomic_fetch_add(&failures, 1);
        atomic_fetch_add(&done, 1);
        if (exercise((uint64_t)k * 7 + 1, 50)) {
            fprintf(stderr, "fork: parent allocation check failed\n");
            return 1;
        }
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    if (atomic_load(&failures)) {
        fprintf(stderr, "fork: %d of %d children failed\n", atomic_load(&failures), atomic_load(&done));
        return 1;
    }
    printf("fork: OK %d children, %ld parent operations meanwhile\n", atomic_load(&done), atomic_load(&parent_ops));
    return 0;
}
