/* Fragmentation cycles of shifting small sizes (issue 15): cycle k
 * allocates OBJS objects of 32 + 24k bytes (32 ... 488 bytes over 20
 * cycles), MIB MiB of them, every byte written, frees all but one in
 * KEEP_EVERY, and frees the survivors of cycle k - 2: the bytes a cycle
 * allocates and keeps stay the same while the size they are made of
 * shifts, so every cycle leaves spans of the old sizes mostly empty.
 * Prints the resident set (/proc/self/statm) after each cycle and
 * "plateau_kb=N" (the largest of cycles 10-19) and "end_kb=N".
 *
 *   frag [CYCLES [MIB [KEEP_EVERY]]]    (20, 128, 16) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long rss_kb(void) {
    long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%ld %ld", &size, &resident) != 2)
        exit(2);
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

int main(int argc, char **argv) {
    int cycles = argc > 1 ? atoi(argv[1]) : 20;
    long mib = argc > 2 ? atol(argv[2]) : 128;
    long objs = (mib << 20) / 32; /* the most objects a cycle has */
    long keep = argc > 3 ? atol(argv[3]) : 16;
    void **all = malloc(objs * sizeof *all);
    long kept_n = objs / keep + 1;
    void **kept[2] = {calloc(kept_n, sizeof(void *)), calloc(kept_n, sizeof(void *))};
    long plateau = 0;
    if (!all || !kept[0] || !kept[1])
        return 1;
    for (int k = 0; k < cycles; k++) {
        size_t size = 32 + 24 * (size_t)(k % 20);
        long n_k = (mib << 20) / (long)size;
        void **mine = kept[k % 2];
        for (long i = 0; i < kept_n; i++) /* the survivors of cycle k - 2 */
            free(mine[i]), mine[i] = NULL;
        for (long i = 0; i < n_k; i++) {
            all[i] = malloc(size);
            if (!all[i])
                return 1;
            memset(all[i], (int)i, size);
        }
        long n = 0;
        for (long i = 0; i < n_k; i++) {
            if (i % keep == 0)
                mine[n++] = all[i];
            else
                free(all[i]);
        }
        long r = rss_kb();
        if (k >= 10 && r > plateau)
            plateau = r;
        printf("cycle %d size %zu rss_kb=%ld\n", k, size, r);
    }
    printf("plateau_kb=%ld end_kb=%ld\n", plateau, rss_kb());
    return 0;
}
