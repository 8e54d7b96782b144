/* The decay case (issue 15): a buffer grown by realloc to 64 MiB, shrunk to
 * 1 KiB, then a pause, then small malloc/free pairs; prints the resident set
 * (from /proc/self/statm) at the peak and at the end.
 *
 *   decay [STEP [PAUSE_MS [PAIRS [MIB]]]]
 *
 * STEP: bytes added per realloc (1 by default: one byte at a time);
 * PAUSE_MS: the sleep after the shrink (1500); PAIRS: malloc/free pairs of
 * 64 bytes after it (100000; 0 for none); MIB: the peak (64).
 * Output: "peak_kb=N after_shrink_kb=N end_kb=N". */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Read with open/read into a stack buffer: fopen would malloc, and with no
 * pairs after the pause the program must make no heap call at all (a malloc
 * here may be the one that polls the decay). */
static long rss_kb(void) {
    char text[128];
    int fd = open("/proc/self/statm", O_RDONLY);
    ssize_t got = fd < 0 ? -1 : read(fd, text, sizeof text - 1);
    long size = 0, resident = 0;
    if (got <= 0 || (text[got] = 0, sscanf(text, "%ld %ld", &size, &resident)) != 2) {
        perror("statm");
        exit(2);
    }
    close(fd);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

int main(int argc, char **argv) {
    size_t step = argc > 1 ? strtoul(argv[1], 0, 10) : 1;
    long pause_ms = argc > 2 ? strtol(argv[2], 0, 10) : 1500;
    long pairs = argc > 3 ? strtol(argv[3], 0, 10) : 100000;
    size_t peak = (argc > 4 ? strtoul(argv[4], 0, 10) : 64) << 20;
    if (step == 0)
        step = 1;
    char *buf = NULL;
    size_t n = 0;
    while (n < peak) {
        n += step;
        if (n > peak)
            n = peak;
        char *q = realloc(buf, n);
        if (!q) {
            perror("realloc");
            return 1;
        }
        buf = q;
        buf[n - 1] = (char)n; /* touch the new byte */
    }
    for (size_t i = 0; i < n; i += 4096) /* every page resident */
        if (buf[i] == 0x7f)
            buf[i] = 0;
    long peak_kb = rss_kb();
    buf = realloc(buf, 1024);
    if (!buf) {
        perror("realloc shrink");
        return 1;
    }
    long shrunk_kb = rss_kb();
    struct timespec ts = {pause_ms / 1000, (pause_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    for (long i = 0; i < pairs; i++) {
        volatile char *p = malloc(64);
        if (!p)
            return 1;
        p[0] = (char)i;
        free((void *)p);
    }
    printf("peak_kb=%ld after_shrink_kb=%ld end_kb=%ld\n", peak_kb, shrunk_kb, rss_kb());
    free(buf);
    return 0;
}
