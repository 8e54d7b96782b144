// An LD_PRELOAD shim for tests/cbench.rs: malloc of the allocator below
// (glibc), except that the 5000th call hands out the object of the call
// before it again, while that one is still live. The benchmark shapes must
// notice (the second tag overwrites the first) and exit 1 with a message.
// Built with: cc -O2 -shared -fPIC -o reissue.so reissue.c -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

static void *(*next_malloc)(size_t);
static void *last;
static long calls;

void *malloc(size_t size) {
    if (next_malloc == NULL)
        next_malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
    if (++calls == 5000 && last != NULL)
        return last;
    return last = next_malloc(size);
}
