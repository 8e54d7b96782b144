/* The C library's options and reports (tests/options.rs drives it):
 *
 *   options stats     holds 1000 objects of 100 bytes and one of 1 MiB, then
 *                     prints "held N" (bytes asked for), calls malloc_stats()
 *                     (stderr) and malloc_info(0, stdout)
 *   options mallopt   prints mallopt's answers: "mallopt P V = R" per line,
 *                     and malloc_info(1, stdout)'s result and errno
 *   options fork      forks a child that allocates and reports its threads
 *                     ("child threads N"), then the parent's ("parent threads N")
 *   options quiet     allocates and frees a little, prints "ok" */
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>

static int threads(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    if (!d)
        return -1;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "quiet";
    if (!strcmp(mode, "stats")) {
        static void *objs[1000];
        for (int i = 0; i < 1000; i++) {
            objs[i] = malloc(100);
            memset(objs[i], i, 100);
        }
        void *big = malloc(1 << 20);
        memset(big, 1, 1 << 20);
        printf("held %d\n", 1000 * 100 + (1 << 20));
        fflush(stdout);
        malloc_stats();
        if (malloc_info(0, stdout) != 0) {
            perror("malloc_info");
            return 1;
        }
        fflush(stdout);
        for (int i = 0; i < 1000; i++)
            free(objs[i]);
        free(big);
    } else if (!strcmp(mode, "mallopt")) {
        int params[][2] = {{M_MMAP_THRESHOLD, 1 << 20}, {M_ARENA_MAX, 2}, {M_TOP_PAD, 0},
                           {M_MXFAST, 0}, {12345, 1}, {M_TRIM_THRESHOLD, 1 << 20},
                           {M_TRIM_THRESHOLD, -5}};
        for (unsigned i = 0; i < sizeof params / sizeof params[0]; i++)
            printf("mallopt %d %d = %d\n", params[i][0], params[i][1],
                   mallopt(params[i][0], params[i][1]));
        int r = malloc_info(1, stdout);
        printf("malloc_info(1) = %d\n", r);
    } else if (!strcmp(mode, "fork")) {
        for (int round = 0; round < 3; round++) {
            fflush(stdout);
            pid_t pid = fork();
            if (pid < 0) {
                perror("fork");
                return 1;
            }
            if (pid == 0) {
                void *p[100];
                for (int i = 0; i < 100; i++)
                    p[i] = malloc(1000 + i);
                for (int i = 0; i < 100; i++)
                    free(p[i]);
                usleep(100000); /* the child's thread is up by now */
                printf("child threads %d\n", threads());
                fflush(stdout);
                _exit(0);
            }
            int st;
            if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                fprintf(stderr, "child failed\n");
                return 1;
            }
        }
        printf("parent threads %d\n", threads());
    } else {
        free(malloc(10));
        printf("ok\n");
    }
    return 0;
}
