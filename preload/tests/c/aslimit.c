/* Address-space limits (issue 15): the process limits itself with
 * setrlimit(RLIMIT_AS) to its mapped size at start plus HEADROOM MiB, then
 *
 *   aslimit fill HEADROOM SIZE     mallocs SIZE-byte blocks until NULL
 *   aslimit refill HEADROOM [SIZE] fills with SIZE-byte blocks (1 MiB by
 *                                  default), frees them all, then mallocs
 *                                  64 MiB, then fills again
 *   aslimit squeeze HEADROOM MAP   maps MAP MiB itself, then fills with
 *                                  1 MiB blocks
 *
 * and prints one line of `key=value` fields: `total_kib` (bytes obtained by
 * the first fill, KiB), `errno` (`ENOMEM` if the NULL came with it, else the
 * number), and for refill `big=ok|null` and `again_kib`. Exit status 0 unless
 * the program itself failed (a bad argument, the limit not set). Every
 * allocation touches its first and last byte; the blocks are chained through
 * their first word, so the program keeps no list of its own. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#define MIB ((size_t)1 << 20)

/* The mapped size (first field of /proc/self/statm), read without malloc. */
static size_t mapped_bytes(void) {
    char text[128];
    int fd = open("/proc/self/statm", O_RDONLY);
    ssize_t got = fd < 0 ? -1 : read(fd, text, sizeof text - 1);
    unsigned long size = 0;
    if (got <= 0 || (text[got] = 0, sscanf(text, "%lu", &size)) != 1) {
        perror("statm");
        exit(2);
    }
    close(fd);
    return size * (size_t)sysconf(_SC_PAGESIZE);
}

/* Blocks of `size` bytes until NULL, chained onto *head; returns the bytes
 * obtained and leaves the NULL's errno in *err. */
static size_t fill(void **head, size_t size, int *err) {
    size_t total = 0;
    for (;;) {
        errno = 0;
        void **p = malloc(size);
        if (!p) {
            *err = errno;
            return total;
        }
        ((char *)p)[size - 1] = 1;
        *p = *head;
        *head = p;
        total += size;
    }
}

static void free_all(void **head) {
    while (*head) {
        void **block = *head;
        *head = *block;
        free(block);
    }
}

static const char *errname(int e, char *buf, size_t n) {
    if (e == ENOMEM)
        return "ENOMEM";
    snprintf(buf, n, "%d", e);
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: aslimit fill|refill|squeeze HEADROOM_MIB [SIZE|MAP_MIB]\n");
        return 2;
    }
    const char *mode = argv[1];
    size_t headroom = strtoul(argv[2], 0, 10) * MIB;
    size_t arg = argc > 3 ? strtoul(argv[3], 0, 10) : 0;
    char ebuf[16];
    /* stdout unbuffered: its buffer would be the program's own malloc. */
    setvbuf(stdout, NULL, _IONBF, 0);
    /* The soft limit only, and never above a hard limit already set (as
     * `ulimit -v` sets): a larger HEADROOM then measures under that limit. */
    struct rlimit lim;
    if (getrlimit(RLIMIT_AS, &lim) != 0) {
        perror("getrlimit");
        return 2;
    }
    size_t want = mapped_bytes() + headroom;
    lim.rlim_cur = lim.rlim_max != RLIM_INFINITY && lim.rlim_max < want ? lim.rlim_max : want;
    if (setrlimit(RLIMIT_AS, &lim) != 0) {
        perror("setrlimit");
        return 2;
    }
    void *head = NULL;
    int err = 0;
    if (strcmp(mode, "fill") == 0 && arg >= sizeof(void *)) {
        size_t total = fill(&head, arg, &err);
        printf("total_kib=%zu errno=%s\n", total >> 10, errname(err, ebuf, sizeof ebuf));
    } else if (strcmp(mode, "refill") == 0) {
        size_t size = arg >= sizeof(void *) ? arg : MIB;
        size_t total = fill(&head, size, &err);
        free_all(&head);
        errno = 0;
        char *big = malloc(64 * MIB);
        int big_err = errno;
        if (big) {
            big[0] = big[64 * MIB - 1] = 1;
            free(big);
        }
        int err2 = 0;
        size_t again = fill(&head, size, &err2);
        printf("total_kib=%zu errno=%s big=%s", total >> 10, errname(err, ebuf, sizeof ebuf),
               big ? "ok" : "null");
        if (!big)
            printf(" big_errno=%s", errname(big_err, ebuf, sizeof ebuf));
        printf(" again_kib=%zu errno2=%s\n", again >> 10, errname(err2, ebuf, sizeof ebuf));
    } else if (strcmp(mode, "squeeze") == 0 && arg > 0) {
        char *own = mmap(NULL, arg * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (own == MAP_FAILED) {
            perror("mmap");
            return 2;
        }
        own[0] = own[arg * MIB - 1] = 1;
        size_t total = fill(&head, MIB, &err);
        printf("total_kib=%zu errno=%s\n", total >> 10, errname(err, ebuf, sizeof ebuf));
    } else {
        fprintf(stderr, "aslimit: bad arguments\n");
        return 2;
    }
    return 0;
}
