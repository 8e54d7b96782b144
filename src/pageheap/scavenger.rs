//! The scavenger: which dirty free pages go back to the source, and when.
//! See [`super`] for the page heap and `lib.rs` (free step 4).
//!
//! Free pages are *dirty* (Ready) or *released* (Prepared, given back through
//! `PageSource::release`). New arena pages start released, as in Go. After
//! every free the scavenger compares the dirty free pages with an
//! *allowance* and, when they exceed it, releases the highest ones;
//! [`PageHeap::scavenge`] releases everything (Go's `debug.FreeOSMemory`).
//! Allocation is first fit over all free pages, released ones included, so
//! released memory is reused before the heap grows.
//!
//! ## Policy
//!
//! Releasing a dirty page costs a system call now and a page fault (with a
//! zeroed page, or a whole zeroed huge page) when it is used again; keeping it
//! costs memory. A page worth releasing is one the heap will not need again
//! soon. The live heap of a churning program wanders: it dips and comes back,
//! and the pages freed by a dip are exactly the ones the rebound needs. A budget
//! tied to the *current* in-use size shrinks in the dip just when the dirty
//! pages grow, so it releases the very pages that are faulted back moments
//! later (the `churn-1m` benchmark, a ~70 MiB footprint, released and faulted
//! back about 200 MiB per 100,000 operations this way). So the allowance follows the *recent peak* of the
//! in-use heap, with "recent" measured in page-heap traffic (this is `no_std`:
//! there is no clock, so, as jemalloc's decay ticks on allocator events, time
//! here is pages allocated and freed):
//!
//! * **Epochs.** An epoch ends when the pages allocated plus pages freed since it
//!   began reach the epoch's in-use peak (at least [`MIN_EPOCH_PAGES`]): one
//!   turnover of the live heap, roughly what Go's GC cycle is. The peak in-use
//!   size of each of the last [`PEAK_EPOCHS`] epochs (and of the current one) is
//!   kept; the recent peak `P` is their maximum.
//! * **Shrinks.** A heap that shrinks keeps the allowance of its old peak for
//!   `PEAK_EPOCHS` epochs of traffic at its new size. Those epochs are as short
//!   as the new heap is small (at least 4 MiB of traffic), so a heap that shrank
//!   for good has its memory released after a few turnovers of what remains,
//!   while a heap that frees everything and builds it again (a request, a batch,
//!   a benchmark round) reuses its dirty pages instead of releasing them and
//!   faulting them back: freeing the whole heap is one epoch, and the rebuild
//!   ends the next one only when it is complete. (Releasing at once when the
//!   heap halved, as an earlier rule did, released 70 MiB a round on
//!   `churn-1m`, whose rounds free everything, and tripled its page faults.)
//!   Traffic alone never ages memory that nobody touches: that is the decay's
//!   part (below).
//! * **Allowance.** Dirty free pages kept:
//!   `allowance = max(retain, P + P / RETAIN_INUSE_DIVISOR - inuse)`, so the
//!   Ready footprint (in use + dirty) stays within `1.5 * P` or `inuse + retain`.
//!   As `P >= inuse`, this is never below the old budget `inuse / 2`.
//! * **Hysteresis.** When dirty exceeds the allowance, release down to
//!   `allowance - allowance / RELEASE_GAP_DIVISOR` (Go's `reduceExtra` goes a
//!   little below its goal for the same reason), so a heap hovering at the limit
//!   releases in batches of an eighth of the allowance instead of on every free.
//! * **Which pages.** The highest dirty pages go first. Allocation is address
//!   ordered first fit, so the low pages are the ones reused soonest and the high
//!   ones the coldest; released pages therefore gather at the top, and first fit
//!   takes the dirty pages below them before it reaches released ones.
//!
//! ## Decay
//!
//! Where the source has a clock ([`PageSource::CLOCK`]: Linux), free memory
//! also ages by time, as jemalloc's `dirty_decay_ms` and Go's background
//! scavenger make it: memory that stays free and unused for the *decay
//! period* ([`DEFAULT_DECAY_MS`], [`PageHeap::set_decay_ms`]) goes back to
//! the source, down to the retained floor, whatever the pacer allows.
//! [`Decay`] keeps the low-water mark of the idle memory (dirty free pages
//! plus idle large spans) over each quarter of the period; the smallest mark
//! of the last four quarters is memory that stayed idle for a whole period,
//! and that much of the highest idle memory is released (tcmalloc's
//! "skip-subrelease" reasons the same way about its peaks). The clock is
//! read when the heap polls it (`Heap::decay`): on every refill and flush of
//! a CPU cache, every large allocation and free (a free polls even inside a
//! slot, so that memory freed just before a pause counts as idle through
//! it: the slots that pass with no poll are marked with the lowest idle
//! memory since the last poll), and every 4,096th malloc
//! of a class on a CPU — so whatever the program does next ages the memory,
//! without a page-heap event of its own — and, if the program asks for it,
//! from a background thread.
//!
//! The allowance never holds back an explicit [`PageHeap::scavenge`], and the
//! counters (`released_pages`, `scavenged_pages_total`) are moved only by the
//! pages actually released or made Ready, so the statistics stay exact.
//!

use crate::source::{PageSource, SourcePage};
use crate::units::{OrDefault, PageSize, Pages};

use super::PageHeap;

/// Dirty free memory (bytes) the scavenger always keeps, whatever the heap's
/// size: below this nothing is released (the `retain` of the allowance).
pub const DEFAULT_RETAIN_BYTES: usize = 16 << 20;

/// The allowance keeps the Ready footprint within `P * (1 + 1 / RETAIN_INUSE_DIVISOR)`,
/// `P` the recent peak of the in-use heap (see "Policy" in the module docs): fragmentation
/// holes of a busy heap are reused soon, and releasing them only to fault them back
/// in costs far more than it saves (Go keeps about 10% over its heap goal, which is
/// twice the live heap; jemalloc keeps dirty pages for seconds).
pub const RETAIN_INUSE_DIVISOR: usize = 2;

/// Epochs whose in-use peaks make up the recent peak (besides the current one):
/// a lasting shrink is forgotten after this many turnovers of the smaller heap.
/// `churn-1m` wanders by about a third of its heap over a few turnovers.
pub const PEAK_EPOCHS: usize = 4;

/// Shortest epoch, in pages of traffic (allocated + freed): 512 pages (a
/// chunk, 4 MiB, of Go's pages), so that a tiny heap does not age its peak on
/// every span.
pub const MIN_EPOCH_PAGES: Pages = Pages::new(512);

/// Once over the allowance, the scavenger releases down to
/// `allowance - allowance / RELEASE_GAP_DIVISOR`: batches of 1/8 of the allowance.
pub const RELEASE_GAP_DIVISOR: usize = 8;

/// The scavenger's clock and memory of the recent in-use peak (see "Policy" in
/// the module docs). All counts are in pages; guarded by the heap lock.
///
/// Invariant: `epoch_peak >= inuse` of the page heap at all times (it starts an
/// epoch at the in-use size and only in-use growth raises it), so
/// `recent_peak() >= inuse` too.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    /// Pages allocated plus pages freed since the current epoch began.
    traffic: Pages,
    /// Highest in-use size in the current epoch.
    epoch_peak: Pages,
    /// In-use peaks of the last `PEAK_EPOCHS` epochs (a ring; 0 before the heap has had that many).
    past: [Pages; PEAK_EPOCHS],
    /// Slot of `past` the next finished epoch goes to.
    next: usize,
    /// Epochs finished (for tests and statistics).
    epochs: u64,
}

impl Pacer {
    /// A heap that has seen no traffic.
    pub const fn new() -> Self {
        Pacer {
            traffic: Pages::ZERO,
            epoch_peak: Pages::ZERO,
            past: [Pages::ZERO; PEAK_EPOCHS],
            next: 0,
            epochs: 0,
        }
    }

    /// Records `pages` of traffic (allocated or freed) after which `inuse` pages are in use.
    #[inline]
    pub fn tick(&mut self, pages: Pages, inuse: Pages) {
        self.traffic = self
            .traffic
            .checked_add(pages)
            .unwrap_or(Pages::new(usize::MAX));
        if inuse > self.epoch_peak {
            self.epoch_peak = inuse;
        }
        // One turnover of the heap at its size in this epoch (so that freeing
        // the whole heap is one epoch, not many ever shorter ones).
        if self.traffic >= self.epoch_peak.max(MIN_EPOCH_PAGES) {
            self.past[self.next] = self.epoch_peak;
            self.next = (self.next + 1) % PEAK_EPOCHS;
            self.epoch_peak = inuse;
            self.traffic = Pages::ZERO;
            self.epochs += 1;
        }
    }

    /// Highest in-use size of the current epoch and the last `PEAK_EPOCHS`.
    #[inline]
    pub fn recent_peak(&self) -> Pages {
        self.past.iter().fold(self.epoch_peak, |m, &p| m.max(p))
    }

    /// Epochs finished so far.
    pub fn epochs(&self) -> u64 {
        self.epochs
    }

    /// Dirty free pages the scavenger keeps with `inuse` pages in use and a
    /// retained floor of `retain` pages: `max(retain, P + P / RETAIN_INUSE_DIVISOR - inuse)`,
    /// `P` the recent peak.
    #[inline]
    pub fn allowance(&self, inuse: Pages, retain: Pages) -> Pages {
        let peak = self.recent_peak().max(inuse);
        let footprint = peak
            .checked_add(Pages::new(peak.get() / RETAIN_INUSE_DIVISOR))
            .unwrap_or(Pages::new(usize::MAX));
        retain.max(footprint - inuse)
    }
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}

/// Default decay period: free memory unused this long goes back to the
/// source (see "Decay" in the module docs). jemalloc's `dirty_decay_ms`
/// defaults to 10 s; a second keeps a program that pauses between phases
/// from faulting its memory back while returning a finished peak promptly.
pub const DEFAULT_DECAY_MS: u64 = 1000;

/// Quarters of the decay period whose low-water marks are kept.
const DECAY_SLOTS: usize = 4;

/// The decay's memory of the idle pages (see "Decay" in the module docs):
/// the low-water mark of the idle memory over the current quarter of the
/// period and over each of the last `DECAY_SLOTS` quarters. Guarded by the
/// heap lock; times are the source's milliseconds.
///
/// Invariant: `low` is at most every idle size since `slot_start`, `tail`
/// at most every idle size since the last poll, and `lows[i]` (for the
/// `filled` most recent slots) at most every idle size during slot `i`,
/// less whatever was released since (the marks are lowered by every
/// release, so they never count memory that is already gone). The idle
/// memory only shrinks through [`Decay::note`] and releases, so every idle
/// size since the last poll is at least `tail`: the slots that ended with
/// no poll in them are marked with it.
#[derive(Clone, Copy, Debug)]
pub struct Decay {
    /// The period in ms, `DEFAULT_DECAY_MS` when zero; `u64::MAX`: never.
    period_ms: u64,
    /// Start of the current slot; 0 before the first poll.
    slot_start: u64,
    /// Low-water mark of the idle pages in the current slot.
    low: Pages,
    /// Low-water mark of the idle pages since the last poll.
    tail: Pages,
    /// Marks of the finished slots (a ring).
    lows: [Pages; DECAY_SLOTS],
    /// Slot of `lows` the next finished slot goes to.
    next: usize,
    /// Finished slots recorded, at most `DECAY_SLOTS`.
    filled: usize,
}

impl Decay {
    /// No slot started yet.
    pub const fn new() -> Self {
        Decay {
            period_ms: 0,
            slot_start: 0,
            low: Pages::ZERO,
            tail: Pages::ZERO,
            lows: [Pages::ZERO; DECAY_SLOTS],
            next: 0,
            filled: 0,
        }
    }

    /// The decay period in ms (`u64::MAX`: memory never decays).
    pub fn period_ms(&self) -> u64 {
        if self.period_ms == 0 {
            DEFAULT_DECAY_MS
        } else {
            self.period_ms
        }
    }

    /// A slot: a quarter of the period (at least 1 ms).
    fn slot_ms(&self) -> u64 {
        (self.period_ms() / DECAY_SLOTS as u64).max(1)
    }

    /// Records that `idle` pages are idle now (call whenever the idle memory shrinks).
    #[inline]
    pub fn note(&mut self, idle: Pages) {
        self.low = self.low.min(idle);
        self.tail = self.tail.min(idle);
    }

    /// The clock reads `now` with `idle` pages idle: closes the slots that
    /// have ended and returns how many pages stayed idle for a whole period
    /// (zero until a whole period has been seen, or if memory never decays).
    pub fn poll(&mut self, now: u64, idle: Pages) -> Pages {
        if self.period_ms() == u64::MAX {
            return Pages::ZERO;
        }
        let slot = self.slot_ms();
        if self.slot_start == 0 || now < self.slot_start {
            // The first poll (or a clock that went back): start afresh.
            *self = Decay {
                period_ms: self.period_ms,
                slot_start: now.max(1),
                low: idle,
                tail: idle,
                ..Decay::new()
            };
            return Pages::ZERO;
        }
        let ended = (now - self.slot_start) / slot;
        let tail = core::mem::replace(&mut self.tail, idle);
        if ended == 0 {
            return Pages::ZERO;
        }
        // The slot of the last poll keeps its mark; the slots that ended
        // after it with no poll in them, and the current one so far, held at
        // least `tail` (the memory freed before a pause is idle through it).
        // (After a pause of more than a period, only the pause is in the window.)
        let pause_only = ended > DECAY_SLOTS as u64;
        for k in 0..ended.min(DECAY_SLOTS as u64) {
            self.lows[self.next] = if k == 0 && !pause_only {
                self.low
            } else {
                tail
            };
            self.next = (self.next + 1) % DECAY_SLOTS;
            self.filled = (self.filled + 1).min(DECAY_SLOTS);
        }
        self.slot_start += ended * slot;
        self.low = tail;
        if self.filled < DECAY_SLOTS {
            return Pages::ZERO;
        }
        self.lows.iter().fold(idle, |m, &l| m.min(l))
    }

    /// `pages` idle pages were released: lowers every mark by as much.
    pub fn released(&mut self, pages: Pages) {
        self.low = self.low.saturating_sub(pages);
        self.tail = self.tail.saturating_sub(pages);
        for l in &mut self.lows {
            *l = l.saturating_sub(pages);
        }
    }

    /// When the next slot ends (the next poll that can release anything).
    pub fn next_poll(&self) -> u64 {
        if self.period_ms() == u64::MAX {
            return u64::MAX;
        }
        self.slot_start.saturating_add(self.slot_ms())
    }
}

impl Default for Decay {
    fn default() -> Self {
        Self::new()
    }
}

/// The scavenger's state (guarded by the heap lock).
pub(crate) struct Scavenger {
    /// The traffic clock and the recent in-use peak.
    pub(crate) pacer: Pacer,
    /// The time clock's low-water marks.
    pub(crate) decay: Decay,
    /// Dirty free memory always kept (the allowance's floor).
    pub(crate) retain_bytes: OrDefault<DEFAULT_RETAIN_BYTES>,
    /// Pages released, cumulative.
    pub(crate) released_total: Pages,
}

impl Scavenger {
    pub(crate) const fn new() -> Self {
        Scavenger {
            pacer: Pacer::new(),
            decay: Decay::new(),
            retain_bytes: OrDefault::DEFAULT,
            released_total: Pages::ZERO,
        }
    }

    /// The retained floor in pages of `page`.
    fn retain(&self, page: PageSize) -> Pages {
        Pages::new(page.page_at(self.retain_bytes.get()))
    }
}

impl PageHeap {
    /// Sets how many bytes of dirty free pages are always kept (the floor of the
    /// scavenger's allowance, see [`PageHeap::dirty_allowance`]; `usize::MAX`: never
    /// release on free). A floor above 16 MiB also lets the large-span cache
    /// hold a quarter of it.
    pub fn set_retain_bytes(&mut self, bytes: usize, page: PageSize) {
        self.scavenger.retain_bytes = OrDefault::new(bytes);
        self.large_cache.set_retain_bytes(bytes, page);
        while self.large_cache.pages() > self.large_cache.max_pages() {
            self.evict_cached();
        }
    }

    /// Dirty free pages the scavenger keeps now: `max(retain, P * 3/2 - inuse)`
    /// with `P` the recent in-use peak (see "Policy" in the module docs).
    /// After every free, dirty free pages are at most this.
    pub fn dirty_allowance(&self, page: PageSize) -> Pages {
        self.scavenger
            .pacer
            .allowance(self.live_pages(), self.scavenger.retain(page))
    }

    /// The scavenger's clock and recent peak, for tests and statistics.
    pub fn pacer(&self) -> &Pacer {
        &self.scavenger.pacer
    }

    /// Dirty free pages now.
    pub(super) fn dirty_pages(&self) -> Pages {
        self.sys_pages - self.inuse_pages - self.meta_pages - self.released_pages
    }

    /// Idle memory: dirty free pages and idle large spans, what the
    /// scavenger may release.
    pub(super) fn idle_pages(&self) -> Pages {
        self.dirty_pages() + self.large_cache.pages()
    }

    /// Sets the decay period (see "Decay" in the module docs): free memory
    /// unused for `ms` milliseconds goes back to the source at the next poll;
    /// `u64::MAX` turns the decay off, 0 restores [`DEFAULT_DECAY_MS`].
    pub fn set_decay_ms(&mut self, ms: u64) {
        self.scavenger.decay.period_ms = ms;
        self.scavenger.decay.slot_start = 0;
    }

    /// The decay period in milliseconds (`u64::MAX`: off).
    pub fn decay_ms(&self) -> u64 {
        self.scavenger.decay.period_ms()
    }

    /// The clock reads `now` (milliseconds, the source's clock): releases the
    /// memory that stayed idle for a whole decay period, down to the retained
    /// floor, highest first. Returns the pages released and when to poll next.
    pub fn decay<S: PageSource>(&mut self, source: &S, now: u64) -> (usize, u64) {
        let idle = self.idle_pages();
        let stale = self.scavenger.decay.poll(now, idle);
        let mut done = 0;
        if S::CAN_RELEASE && stale > Pages::ZERO {
            let over = idle.saturating_sub(self.scavenger.retain(S::PAGE));
            let want = stale.min(over);
            if want > Pages::ZERO {
                done = self.release_idle(source, want);
            }
        }
        if self.arenas.pending() {
            self.release_free_arenas(source);
        }
        (done, self.scavenger.decay.next_poll())
    }

    /// Releases `want` pages of idle memory: idle large spans go back to the
    /// heap first, only as many as the release needs (an evicted span's pages
    /// stay dirty), then the highest dirty pages are released.
    fn release_idle<S: PageSource>(&mut self, source: &S, want: Pages) -> usize {
        while self.large_cache.count() > 0 && self.dirty_pages() < want {
            self.evict_cached();
        }
        self.scavenge(source, want.get())
    }

    /// Releases dirty free pages beyond [`PageHeap::dirty_allowance`], highest
    /// first, down to `allowance - allowance / RELEASE_GAP_DIVISOR` (the hysteresis
    /// of "Policy").
    pub(super) fn trim<S: PageSource>(&mut self, source: &S) {
        if self.arenas.pending() {
            self.release_free_arenas(source);
        }
        if !S::CAN_RELEASE {
            return;
        }
        // Within the retained floor nothing is released: skip the pacer's sums.
        let dirty = self.dirty_pages() + self.large_cache.pages();
        if dirty <= self.scavenger.retain(S::PAGE) {
            return;
        }
        let allowance = self.dirty_allowance(S::PAGE);
        // Idle large spans are dirty memory nobody uses, as free pages are: they
        // count against the same allowance, and go back to the heap first when
        // it is exceeded (so the cache never raises the footprint's bound).
        if dirty > allowance {
            // Down to the hysteresis target: idle spans go back to the heap
            // first (an evicted span's pages stay dirty, so this does not
            // change `dirty`), only as many as the release needs, so that a
            // small overshoot does not empty the cache.
            let target = allowance - Pages::new(allowance.get() / RELEASE_GAP_DIVISOR);
            self.release_idle(source, dirty - target);
        }
    }

    /// Releases up to `max_pages` dirty free pages, highest addresses first.
    /// Returns the pages released. `usize::MAX` releases everything.
    pub fn scavenge<S: PageSource>(&mut self, source: &S, max_pages: usize) -> usize {
        if !S::CAN_RELEASE {
            return 0;
        }
        let mut left = Pages::new(max_pages);
        for slot in self.arenas.slots().rev() {
            if left == Pages::ZERO {
                break;
            }
            left -= self.arenas.get_mut(slot).release_dirty(source, left);
        }
        let done = Pages::new(max_pages) - left;
        self.released_pages += done;
        self.scavenger.released_total += done;
        self.scavenger.decay.released(done);
        done.get()
    }

    /// Out of memory: gives every idle large span back to the heap, releases
    /// every wholly free arena where the source gives address space back
    /// (and from now on every arena that becomes wholly free, until a growth
    /// of the full size succeeds: see `arenas`), and releases every dirty
    /// free page to the source, so that a retry can have the source reserve
    /// the address space or make Ready the pages it needs (a kernel's
    /// frames, a budget) from memory the heap was only keeping for reuse.
    /// Returns whether anything was given back (a retry can succeed).
    pub(super) fn release_for_retry<S: PageSource>(&mut self, source: &S) -> bool {
        let had_cached = self.large_cache.count() > 0;
        self.evict_all_cached();
        self.arenas.set_short::<S>();
        let unmapped = self.release_free_arenas(source);
        let released = self.scavenge(source, usize::MAX);
        had_cached || unmapped > Pages::ZERO || released > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(n: usize) -> Pages {
        Pages::new(n)
    }

    const MIN: usize = MIN_EPOCH_PAGES.get();

    /// Epochs end after one turnover of the in-use heap (at least MIN_EPOCH_PAGES).
    #[test]
    fn pacer_epoch_is_one_turnover() {
        let mut p = Pacer::new();
        let inuse = pg(4 * MIN);
        p.tick(inuse, inuse); // the heap filled: one turnover already
        assert_eq!(p.epochs(), 1);
        for _ in 0..3 {
            p.tick(MIN_EPOCH_PAGES, inuse);
        }
        assert_eq!(p.epochs(), 1, "three quarters of a turnover");
        p.tick(MIN_EPOCH_PAGES, inuse);
        assert_eq!(p.epochs(), 2);
        // A tiny heap still needs MIN_EPOCH_PAGES of traffic.
        let mut q = Pacer::new();
        q.tick(pg(MIN - 1), pg(1));
        assert_eq!(q.epochs(), 0);
        q.tick(pg(1), pg(1));
        assert_eq!(q.epochs(), 1);
    }

    /// The recent peak survives PEAK_EPOCHS further epochs, then is forgotten.
    #[test]
    fn pacer_forgets_peak_after_peak_epochs() {
        let mut p = Pacer::new();
        let (big, small) = (pg(8 * MIN), pg(5 * MIN));
        p.tick(big, big);
        p.tick(big - small, small); // a dip, same epoch (traffic < big)
        assert_eq!(p.recent_peak(), big);
        let mut epochs = p.epochs();
        let mut turnovers = 0;
        while p.recent_peak() == big {
            p.tick(small, small);
            assert_eq!(
                p.epochs(),
                epochs + 1,
                "each tick of `small` pages is one epoch"
            );
            epochs += 1;
            turnovers += 1;
        }
        assert_eq!(turnovers, PEAK_EPOCHS + 1);
        assert_eq!(p.recent_peak(), small);
    }

    /// allowance = max(retain, P * 3/2 - inuse), P the recent peak.
    #[test]
    fn pacer_allowance() {
        let mut p = Pacer::new();
        p.tick(pg(1000), pg(1000));
        assert_eq!(p.recent_peak(), pg(1000));
        let a = |p: &Pacer, inuse, retain| p.allowance(pg(inuse), pg(retain)).get();
        assert_eq!(a(&p, 1000, 0), 500, "at the peak: the in-use share");
        assert_eq!(a(&p, 1000, 800), 800, "the retained floor");
        assert_eq!(a(&p, 600, 0), 900, "a dip keeps the peak's footprint");
        assert_eq!(
            a(&p, 0, 7),
            1500,
            "everything freed: the peak's footprint, until the peak ages out"
        );
        assert_eq!(a(&p, 2000, 0), 1000, "above the recorded peak");
        assert_eq!(a(&Pacer::new(), 0, 7), 7, "no peak: only retain");
        assert_eq!(a(&Pacer::new(), 0, usize::MAX), usize::MAX);
    }

    /// Nothing decays before a whole period of slots has been seen; then
    /// what stayed idle through all of them does.
    #[test]
    fn decay_releases_what_stayed_idle_for_a_period() {
        let mut d = Decay::new();
        assert_eq!(d.period_ms(), DEFAULT_DECAY_MS);
        let q = DEFAULT_DECAY_MS / DECAY_SLOTS as u64;
        assert_eq!(
            d.poll(1000, pg(500)),
            pg(0),
            "the first poll starts the clock"
        );
        assert_eq!(d.next_poll(), 1000 + q);
        for k in 1..DECAY_SLOTS as u64 {
            assert_eq!(
                d.poll(1000 + k * q, pg(500)),
                pg(0),
                "slot {k}: not a period yet"
            );
        }
        assert_eq!(
            d.poll(1000 + 4 * q, pg(500)),
            pg(500),
            "idle for a whole period"
        );
        d.released(pg(500));
        assert_eq!(
            d.poll(1000 + 5 * q, pg(0)),
            pg(0),
            "released memory is not counted again"
        );
    }

    /// A dip of the idle memory in any slot of the period limits the release
    /// to the lowest mark; polls inside a slot only lower its mark.
    #[test]
    fn decay_follows_the_low_water_mark() {
        let mut d = Decay::new();
        let q = DEFAULT_DECAY_MS / DECAY_SLOTS as u64;
        d.poll(1, pg(1000));
        d.note(pg(300)); // reused, then freed again within the first slot
        assert_eq!(d.poll(1 + q / 2, pg(1000)), pg(0));
        for k in 1..=3 {
            assert_eq!(d.poll(1 + k * q, pg(1000)), pg(0));
        }
        assert_eq!(d.poll(1 + 4 * q, pg(1000)), pg(300), "the dip's mark");
        // The dip slot has left the window: the rest stayed idle.
        assert_eq!(d.poll(1 + 5 * q, pg(1000)), pg(1000));
    }

    /// A long gap with no poll counts as idle slots at the mark of the last
    /// one; a clock that goes back restarts; `u64::MAX` never decays.
    #[test]
    fn decay_gaps_clock_steps_and_off() {
        let mut d = Decay::new();
        d.poll(10, pg(64));
        assert_eq!(d.poll(10 + 60_000, pg(64)), pg(64), "a minute of silence");
        assert_eq!(d.poll(5, pg(64)), pg(0), "the clock went back: start again");
        d.period_ms = 40;
        assert_eq!(d.slot_ms(), 10);
        d.poll(100, pg(8));
        assert_eq!(d.poll(140, pg(8)), pg(8));
        d.period_ms = u64::MAX;
        assert_eq!(d.poll(1 << 40, pg(8)), pg(0));
        assert_eq!(d.next_poll(), u64::MAX);
    }

    /// Memory freed just before a pause (a poll marks it) is idle through
    /// the pause: the first poll after a pause of more than a period
    /// releases it, however low the idle memory was in the slot before.
    #[test]
    fn decay_counts_a_pause_after_a_free_as_idle() {
        let mut d = Decay::new();
        let q = DEFAULT_DECAY_MS / DECAY_SLOTS as u64;
        d.poll(1, pg(0)); // the heap in use: nothing idle
        d.poll(1 + q / 4, pg(0));
        d.poll(1 + q / 2, pg(16_000)); // a big free, within the same slot
        assert_eq!(
            d.poll(1 + q / 2 + 5 * q, pg(16_000)),
            pg(16_000),
            "idle through five quarters of silence"
        );
        // A shorter pause keeps the slot of the free (idle 0) in the window.
        let mut e = Decay::new();
        e.poll(1, pg(0));
        e.poll(1 + q / 2, pg(16_000));
        assert_eq!(e.poll(1 + q / 2 + 3 * q, pg(16_000)), pg(0));
        assert_eq!(e.poll(1 + q / 2 + 4 * q, pg(16_000)), pg(0));
        assert_eq!(
            e.poll(1 + 5 * q, pg(16_000)),
            pg(16_000),
            "the slot of the free has left the window"
        );
        // Reuse during the pause (noted) lowers the mark of the silent slots.
        let mut f = Decay::new();
        f.poll(1, pg(0));
        f.poll(1 + q / 2, pg(16_000));
        f.note(pg(4_000));
        assert_eq!(f.poll(1 + q / 2 + 5 * q, pg(16_000)), pg(4_000));
    }

    /// Freeing the whole heap is one epoch; the rebuild ends the next only when
    /// it is complete, so the old peak survives both.
    #[test]
    fn pacer_keeps_the_peak_through_free_all_and_rebuild() {
        let mut p = Pacer::new();
        let big = pg(16 * MIN);
        p.tick(big, big); // built: one epoch (traffic reached the peak)
        let e = p.epochs();
        for k in 1..=16 {
            p.tick(MIN_EPOCH_PAGES, big - pg(k * MIN));
        }
        assert_eq!(
            p.epochs(),
            e + 1,
            "freeing everything ended exactly one epoch"
        );
        for k in 1..=16 {
            p.tick(MIN_EPOCH_PAGES, pg(k * MIN));
            assert_eq!(p.recent_peak(), big);
        }
        assert!(p.epochs() <= e + 2);
    }
}
