// An LD_PRELOAD shim for tests/cbench.rs: malloc of the allocator below
// (glibc), except that once per thread, from that thread's 5000th call on,
// the first request no larger than the one before it gets that earlier
// object again, while it is still live. The benchmark shapes must notice
// (the second tag overwrites the first) and exit 1 with a message.
//
// Two things keep the shapes' check, not glibc, the first to see it:
// - the reissued request fits in the earlier one, so the shape's tail tag
//   lands inside the object and not on glibc's next chunk header (glibc
//   would abort on the next malloc, racing the consumer's check in xmalloc);
// - the count is per thread, so where the reissue lands does not depend on
//   the allocations the C library makes before main or in other threads: an
//   xmalloc producer's two objects fall in one unpublished batch of 64.
// Built with: cc -O2 -shared -fPIC -o reissue.so reissue.c -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

#define TLS __thread __attribute__((tls_model("initial-exec")))

static void *(*next_malloc)(size_t);
static TLS void *last;
static TLS size_t last_size;
static TLS long calls;
static TLS int reissued;

void *malloc(size_t size) {
    if (next_malloc == NULL)
        next_malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
    if (++calls >= 5000 && !reissued && last != NULL && size <= last_size) {
        reissued = 1;
        return last;
    }
    last_size = size;
    return last = next_malloc(size);
}
