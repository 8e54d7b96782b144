//! The one deterministic generator of the crate's tests, benchmarks and
//! board scenarios: xorshift64* (Vigna) — small, fast, `no_std`, and the same
//! sequence on every run and every target.

/// xorshift64*. Not for anything but test and benchmark inputs.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value; it is mixed, so nearby seeds give
    /// unrelated sequences).
    pub const fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A generator whose state is exactly `state | 1` (for sequences that must
    /// match an earlier generator's, as the benchmarks' do).
    pub const fn from_state(state: u64) -> Rng {
        Rng(state | 1)
    }

    /// The next 64 bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// In `0..n` (`n > 0`), from all the bits: `next % n`.
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// In `0..n` (`n > 0`), from the top 53 bits.
    #[inline]
    pub fn below_hi(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) % n as u64) as usize
    }

    /// In `lo..=hi`, from the top 53 bits.
    #[inline]
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below_hi(hi - lo + 1)
    }

    /// In `lo..hi` (`lo < hi`), by multiply-shift (no division).
    #[inline]
    pub fn uniform(&mut self, lo: usize, hi: usize) -> usize {
        debug_assert!(lo < hi);
        lo + ((self.next_u64() as u128 * (hi - lo) as u128) >> 64) as usize
    }

    /// One of `xs` (non-empty), chosen with [`below`](Self::below).
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut r = Rng::new(1);
        let mut seen = [false; 10];
        for _ in 0..10_000 {
            let x = r.range(3, 12);
            assert!((3..=12).contains(&x));
            seen[x - 3] = true;
            assert!(r.below(5) < 5 && r.below_hi(5) < 5);
            assert!((10..20).contains(&r.uniform(10, 20)));
        }
        assert!(seen.iter().all(|&s| s), "every value drawn");
        assert_eq!(Rng::from_state(6).0, 7);
    }
}
