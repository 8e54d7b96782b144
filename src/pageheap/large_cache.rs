//! The large-span cache: freed large objects' spans kept whole for the next
//! large allocation of their size, and the page rounding of large objects
//! that makes them fit. See [`super`].
//!
//! **Sizes.** A large object of `b` bytes gets [`large_pages`]`(b)` pages:
//! whole pages up to 64 KiB and above 1 MiB; in between, rounded up to a
//! [`cache_class`] (four sizes per doubling, as jemalloc spaces its large
//! classes), so that an idle span fits the next request of about its size.
//! At most 25% over the request (11% at 9 pages; untouched tail pages cost
//! no memory until used). This is the object's usable size and what
//! `heap_alloc` counts.
//!
//! **The cache.** A freed span of up to [`LARGE_CACHE_MAX_SPAN_PAGES`] idles
//! whole (state `Idle`, its page-map entries still naming it, its pages
//! counted in use) on the list of its size class, newest first. A request
//! takes only a span of exactly its page count; a promotion may take one of
//! up to twice its count. The cache holds at most [`LARGE_CACHE_MAX_PAGES`]
//! (4 MiB), or a quarter of a larger retained floor up to
//! [`LARGE_CACHE_LIMIT_PAGES`]; idle spans count against the scavenger's
//! allowance like dirty free pages, so the cache changes which memory is
//! kept, not how much. When full, the newest span of the class holding the
//! most pages goes back to the heap first.
//!
//! Invariants (guarded by the heap lock): every span on list `i` is `Idle`
//! with at most `LARGE_CACHE_MAX_SPAN_PAGES` pages and `large_cache_index(
//! npages) == i`; `count` and `pages` are the number and the pages of the
//! listed spans; `pages <= max_pages`.

use core::ptr::{null_mut, NonNull};

use crate::span::{Span, SpanList, SpanState};
use crate::units::{OrDefault, PageSize, Pages};

/// Lists of the large-span cache: one per [`cache_class`] up to
/// [`LARGE_CACHE_MAX_SPAN_PAGES`] (pages 1..=8, then four per doubling).
pub(crate) const LARGE_CACHE_SIZES: usize = 8 + 4 * 4;

/// Most pages one cached large span may have (128: 1 MiB of Go's pages):
/// bigger objects are rare enough that the page bitmap's cost does not
/// matter. The cache's bounds are in pages, so they scale with the heap's
/// page size.
pub const LARGE_CACHE_MAX_SPAN_PAGES: Pages = Pages::new(128);
/// Most pages all cached large spans hold together with the default retained
/// floor (512: 4 MiB of Go's pages), reported in `Stats::cached_bytes` and
/// returned by `scavenge` and before the heap grows.
pub const LARGE_CACHE_MAX_PAGES: Pages = Pages::new(512);
/// The cache's bound for any retained floor (4,096 pages: 32 MiB of Go's).
pub const LARGE_CACHE_LIMIT_PAGES: Pages = Pages::new(4096);

/// Pages of `page` bytes for a large object of `bytes` (`None` on overflow;
/// see the module docs).
#[inline]
pub const fn large_pages(bytes: usize, page: PageSize) -> Option<Pages> {
    let Some(n) = Pages::of_bytes(bytes, page) else {
        return None;
    };
    let n = n.get();
    if n <= 8 {
        return Some(Pages::new(if n == 0 { 1 } else { n }));
    }
    if n > LARGE_CACHE_MAX_SPAN_PAGES.get() {
        return Some(Pages::new(n));
    }
    Some(Pages::new(cache_class(n)))
}

/// The size class of a span of `npages` pages (at most
/// [`LARGE_CACHE_MAX_SPAN_PAGES`]) for the cache's lists: pages 1..=8, then
/// jemalloc's spacing of four sizes per doubling (10, 12, 14, 16, 20, ... 128
/// pages), rounding up.
const fn cache_class(npages: usize) -> usize {
    if npages <= 8 {
        return npages;
    }
    let sh = (npages - 1).ilog2() - 2;
    (((npages - 1) >> sh) + 1) << sh
}

const fn large_cache_index_of(npages: usize) -> usize {
    let npages = cache_class(npages);
    if npages <= 8 {
        return npages - 1;
    }
    let lg = (npages - 1).ilog2() as usize; // 3..=6
    8 + (lg - 3) * 4 + ((npages - 1) >> (lg - 2)) - 4
}

/// [`large_cache_index_of`] of every span size the cache takes.
static CACHE_INDEX: [u8; LARGE_CACHE_MAX_SPAN_PAGES.get() + 1] = {
    let mut t = [0u8; LARGE_CACHE_MAX_SPAN_PAGES.get() + 1];
    let mut n = 1;
    while n <= LARGE_CACHE_MAX_SPAN_PAGES.get() {
        t[n] = large_cache_index_of(n) as u8;
        n += 1;
    }
    t
};

/// The cache's list for a span of `npages` pages (at most
/// [`LARGE_CACHE_MAX_SPAN_PAGES`]).
#[inline]
fn large_cache_index(npages: Pages) -> usize {
    CACHE_INDEX[npages.get()] as usize
}

/// The idle spans (see the module docs).
pub(crate) struct LargeCache {
    lists: [SpanList; LARGE_CACHE_SIZES],
    /// Spans listed.
    count: usize,
    /// Pages of the spans listed.
    pages: Pages,
    /// Most pages listed: [`LARGE_CACHE_MAX_PAGES`], or a quarter of a larger
    /// retained floor up to [`LARGE_CACHE_LIMIT_PAGES`].
    /// `pages` may not exceed it (default [`LARGE_CACHE_MAX_PAGES`]).
    max_pages: OrDefault<{ LARGE_CACHE_MAX_PAGES.get() }>,
}

impl LargeCache {
    pub(crate) const fn new() -> Self {
        LargeCache {
            lists: [const { SpanList::new() }; LARGE_CACHE_SIZES],
            count: 0,
            pages: Pages::ZERO,
            max_pages: OrDefault::DEFAULT,
        }
    }

    /// Spans idle now.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Pages idle now.
    pub(crate) fn pages(&self) -> Pages {
        self.pages
    }

    /// Most pages the cache holds now.
    pub(crate) fn max_pages(&self) -> Pages {
        Pages::new(self.max_pages.get())
    }

    /// Sizes the cache for a retained floor of `retain_bytes` in pages of `page`.
    pub(crate) fn set_retain_bytes(&mut self, retain_bytes: usize, page: PageSize) {
        let max = Pages::new(page.page_at(retain_bytes / 4))
            .clamp(LARGE_CACHE_MAX_PAGES, LARGE_CACHE_LIMIT_PAGES);
        self.max_pages = OrDefault::new(max.get());
    }

    /// Whether a span of `npages` may idle here.
    pub(crate) fn takes(npages: Pages) -> bool {
        npages <= LARGE_CACHE_MAX_SPAN_PAGES
    }

    /// Whether `npages` more pages fit under the bound.
    pub(crate) fn has_room(&self, npages: Pages) -> bool {
        self.pages + npages <= self.max_pages()
    }

    /// Lists span `s` as idle.
    ///
    /// # Safety
    /// `s` is a live span on no list, of at most `LARGE_CACHE_MAX_SPAN_PAGES`,
    /// that nothing uses; there is room for it ([`LargeCache::has_room`]).
    pub(crate) unsafe fn push(&mut self, s: NonNull<Span>) {
        // SAFETY: the caller hands the span over (on no list); it stays whole.
        let npages = unsafe {
            (*s.as_ptr()).state = SpanState::Idle;
            let n = (*s.as_ptr()).npages();
            self.lists[large_cache_index(n)].push(s.as_ptr());
            n
        };
        self.count += 1;
        self.pages += npages;
    }

    /// Takes the newest idle span of exactly `npages` pages (`max == npages`),
    /// or else of the most pages up to `max`, whose start has the alignment,
    /// made `Large` again. Searches the lists of the classes from `max` down
    /// to `npages`: each holds a handful of spans, nearly all of its class's
    /// page count.
    pub(crate) fn take(
        &mut self,
        npages: Pages,
        max: Pages,
        align_pages: usize,
        page: PageSize,
    ) -> Option<NonNull<Span>> {
        if npages > LARGE_CACHE_MAX_SPAN_PAGES || self.count == 0 {
            return None;
        }
        let max = max.min(LARGE_CACHE_MAX_SPAN_PAGES);
        let fits = |s: *mut Span| {
            // SAFETY: listed spans are live records.
            let (n, start) = unsafe { ((*s).npages(), (*s).start) };
            n >= npages && n <= max && page.page_at(start.get()).is_multiple_of(align_pages)
        };
        let s = (large_cache_index(npages)..=large_cache_index(max))
            .rev()
            .find_map(|i| self.lists[i].iter().find(|&s| fits(s)))
            .unwrap_or(null_mut());
        let s = NonNull::new(s)?;
        // SAFETY: `s` is on its list; the record is live and ours again.
        unsafe {
            self.remove(s);
            (*s.as_ptr()).state = SpanState::Large;
            (*s.as_ptr()).needzero = true;
        }
        Some(s)
    }

    /// The span to give back first: the newest of the size class that holds
    /// the most pages (by count times class size); `None` if empty.
    pub(crate) fn victim(&self) -> Option<NonNull<Span>> {
        let mut best = (0, 0);
        for (i, l) in self.lists.iter().enumerate() {
            let pages = if l.is_empty() {
                0
            } else {
                // SAFETY: listed spans are live records.
                l.len() * cache_class(unsafe { (*l.first()).npages() }.get())
            };
            if pages > best.1 {
                best = (i, pages);
            }
        }
        NonNull::new(self.lists[best.0].first())
    }

    /// Takes idle span `s` off its list (it stays `Idle` until the caller
    /// changes it).
    ///
    /// # Safety
    /// `s` is an idle span on its list.
    pub(crate) unsafe fn remove(&mut self, s: NonNull<Span>) {
        // SAFETY: as the caller promises.
        let npages = unsafe { (*s.as_ptr()).npages() };
        // SAFETY: as the caller promises.
        unsafe { self.lists[large_cache_index(npages)].remove(s.as_ptr()) };
        self.count -= 1;
        self.pages -= npages;
    }

    /// Checks the invariants of the module docs.
    pub(crate) fn check_invariants(&self) {
        let (mut pages, mut n) = (Pages::ZERO, 0);
        for (i, l) in self.lists.iter().enumerate() {
            for s in l.iter() {
                // SAFETY: cached spans are live records.
                let s = unsafe { &*s };
                assert!(
                    s.state == SpanState::Idle
                        && s.npages() <= LARGE_CACHE_MAX_SPAN_PAGES
                        && large_cache_index(s.npages()) == i,
                    "cached large span {:#x}",
                    s.start
                );
                pages += s.npages();
                n += 1;
            }
        }
        assert_eq!((pages, n), (self.pages, self.count), "cached pages, count");
        assert!(self.pages <= self.max_pages());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_pages_and_cache_classes() {
        const PAGE_BYTES: usize = PageSize::GO.bytes();
        let lp = |b| large_pages(b, PageSize::GO).map(Pages::get);
        assert_eq!(lp(0), Some(1));
        assert_eq!(lp(1), Some(1));
        assert_eq!(lp(8 * PAGE_BYTES + 1), Some(10));
        assert_eq!(lp(16 * PAGE_BYTES + 1), Some(20));
        assert_eq!(lp(1 << 20), Some(128));
        assert_eq!(lp((1 << 20) + 1), Some(129), "whole pages above 1 MiB");
        assert_eq!(lp(usize::MAX), None);
        assert_eq!(cache_class(8), 8);
        assert_eq!(cache_class(9), 10);
        assert_eq!(cache_class(17), 20);
        assert_eq!(cache_class(128), 128);
        let mut prev = 0;
        for n in 1..=LARGE_CACHE_MAX_SPAN_PAGES.get() {
            let r = cache_class(n);
            assert!(r >= n && r >= prev, "monotone and never short: {n} -> {r}");
            assert!(r * 4 <= n * 5, "at most 25% over: {n} -> {r}");
            prev = r;
        }
        // Four classes per doubling between 64 KiB and 1 MiB, each its own cache list.
        let sizes: std::collections::BTreeSet<usize> = (1..=128).map(cache_class).collect();
        assert_eq!(sizes.len(), LARGE_CACHE_SIZES);
        let idx: std::vec::Vec<usize> = sizes
            .iter()
            .map(|&n| large_cache_index(Pages::new(n)))
            .collect();
        assert_eq!(idx, (0..LARGE_CACHE_SIZES).collect::<std::vec::Vec<_>>());
    }
}
