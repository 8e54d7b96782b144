//! The formats of a per-CPU cache's words, in one place: the Rust operations
//! ([`super::cache`]) decode them with these functions, and the restartable
//! sequences (`super::rseq`) take every width, shift and delta below as
//! `const` operands of their assembly. See [`super`] for the tier.
//!
//! * A class's **stack word** ([`StackWord`], one pointer-sized [`Word`])
//!   packs the stack's length (bits `0..15`), the [`StackWord::STOP`] bit
//!   (bit 15) and the mallocs counted by pops (bits `16..`: 48 bits on
//!   64-bit targets, 16 on 32-bit ones, where the cache carries each wrap of
//!   the field into a per-class word, `CpuCache::pop`). A pop adds
//!   [`StackWord::POP_DELTA`] (length − 1, mallocs + 1), a push adds
//!   [`StackWord::PUSH_DELTA`]: each commits with one store. The sections
//!   read the length field, `STOP` included, with one 16-bit `movzx`
//!   ([`StackWord::LEN_BITS`]).
//! * The **tiny state** ([`Tiny`]) packs the CPU's current tiny block, the
//!   bytes of it used and the sub-objects carved into 64 bits: one word on
//!   64-bit targets, so a carve commits with one store; two on 32-bit ones,
//!   which have no restartable sequences and carve under the CPU slot.

use crate::TINY_BLOCK;

/// A word of a per-CPU cache: a stack word or a slot (an object's address).
pub(crate) type Word = usize;

/// A class's stack word (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub(crate) struct StackWord(pub(crate) Word);

impl StackWord {
    /// Bits of the length field, [`StackWord::STOP`] included.
    pub(crate) const LEN_BITS: u32 = 16;
    /// Mask of the length.
    pub(crate) const LEN_MASK: Word = 0x7fff;
    /// Set in the length field while another CPU drains the cache (rseq
    /// mode): a length of at least `STOP` exceeds every capacity, so the
    /// sections see the stack as both empty and full.
    pub(crate) const STOP: Word = 0x8000;
    /// First bit of the mallocs counted by pops.
    pub(crate) const POPS_SHIFT: u32 = Self::LEN_BITS;
    /// Added by a pop: length − 1, mallocs + 1.
    pub(crate) const POP_DELTA: Word = (1 << Self::POPS_SHIFT) - 1;
    /// Added by a push: length + 1.
    pub(crate) const PUSH_DELTA: Word = 1;

    /// Objects on the stack.
    #[inline(always)]
    pub(crate) const fn len(self) -> usize {
        self.0 & Self::LEN_MASK
    }

    /// Mallocs counted by pops on this CPU, cumulative, modulo
    /// 2^[`StackWord::POPS_BITS`] (the carries are the cache's).
    #[inline(always)]
    pub(crate) const fn pops(self) -> u64 {
        (self.0 >> Self::POPS_SHIFT) as u64
    }

    /// Bits of the pops field.
    #[cfg_attr(target_pointer_width = "64", allow(dead_code))] // 32-bit carries
    pub(crate) const POPS_BITS: u32 = Word::BITS - Self::POPS_SHIFT;

    /// log2 of the mallocs between two decay ticks of one CPU's class.
    pub(crate) const TICK_SHIFT: u32 = 12;
    /// The low [`StackWord::TICK_SHIFT`] bits of the pops field.
    const TICK_MASK: Word = ((1 << Self::TICK_SHIFT) - 1) << Self::POPS_SHIFT;

    /// Whether the pop that committed this word is due a decay tick: every
    /// 4,096th malloc of a class on a CPU (its pops field a multiple of
    /// 2^[`StackWord::TICK_SHIFT`]), so that a program whose mallocs all hit
    /// the caches still reaches the page heap's clock now and then
    /// (jemalloc's ticker, counted in the word the pop writes anyway).
    #[inline(always)]
    pub(crate) const fn ticks(self) -> bool {
        self.0 & Self::TICK_MASK == 0
    }

    /// Whether a drain has stopped this word.
    #[inline(always)]
    #[cfg_attr(not(rseq), allow(dead_code))] // only rseq drains stop words
    pub(crate) const fn is_stopped(self) -> bool {
        self.0 & Self::STOP != 0
    }
}

const _: () = assert!(StackWord::TICK_SHIFT < StackWord::POPS_BITS);
const _: () = assert!(
    StackWord::LEN_MASK | StackWord::STOP == (1 << StackWord::LEN_BITS) - 1
        && StackWord::LEN_MASK & StackWord::STOP == 0
        && StackWord::STOP > super::cache::MAX_CAPACITY as Word
);

/// The tiny state packed in 64 bits, so that a carve commits with one store
/// where that is one word: the block's address (bits `0..48`, sign-extended
/// back; all its bits on 32-bit targets), the bytes used
/// (`off`, bits `48..55`) and the sub-objects carved (`n`, bits `56..63`).
/// An `off` of [`Tiny::STOPPED_OFF`], above [`TINY_BLOCK`], marks the word
/// stopped: no carve fits. All zero is "no block".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tiny {
    /// The block's address; 0 = none.
    pub(crate) block: usize,
    /// Bytes of the block used.
    pub(crate) off: usize,
    /// Sub-objects carved from it.
    pub(crate) n: usize,
}

impl Tiny {
    /// Bits of the block address.
    pub(crate) const BLOCK_BITS: u32 = if usize::BITS >= 48 { 48 } else { usize::BITS };
    /// First bit of `off`.
    pub(crate) const OFF_SHIFT: u32 = 48;
    /// First bit of `n`.
    pub(crate) const N_SHIFT: u32 = 56;
    /// Width of the `off` and `n` fields (7 bits each).
    pub(crate) const FIELD_MASK: u64 = 0x7f;
    /// The `off` of a stopped tiny word.
    pub(crate) const STOPPED_OFF: usize = 127;
    /// No block.
    #[cfg(test)]
    pub(crate) const NONE: Tiny = Tiny {
        block: 0,
        off: 0,
        n: 0,
    };

    /// The word.
    #[inline(always)]
    pub(crate) const fn pack(self) -> u64 {
        (self.block as u64 & ((1 << Self::BLOCK_BITS) - 1))
            | (self.off as u64) << Self::OFF_SHIFT
            | (self.n as u64) << Self::N_SHIFT
    }

    /// The state in word `w`.
    #[inline(always)]
    pub(crate) const fn unpack(w: u64) -> Tiny {
        let ext = 64 - Self::BLOCK_BITS;
        Tiny {
            block: (((w << ext) as i64) >> ext) as usize,
            off: ((w >> Self::OFF_SHIFT) & Self::FIELD_MASK) as usize,
            n: ((w >> Self::N_SHIFT) & Self::FIELD_MASK) as usize,
        }
    }

    /// Whether a drain has stopped this word.
    #[inline(always)]
    pub(crate) const fn stopped(self) -> bool {
        self.off == Self::STOPPED_OFF
    }

    /// The block's state with no room left (`off` = [`TINY_BLOCK`]).
    #[inline(always)]
    #[cfg_attr(not(rseq), allow(dead_code))] // only rseq drains stop words
    pub(crate) const fn full(self) -> Tiny {
        Tiny {
            off: TINY_BLOCK,
            ..self
        }
    }
}

const _: () = assert!(
    Tiny::STOPPED_OFF > TINY_BLOCK
        && Tiny::STOPPED_OFF as u64 == Tiny::FIELD_MASK
        && Tiny::N_SHIFT - Tiny::OFF_SHIFT > Tiny::FIELD_MASK.count_ones()
        && Tiny::N_SHIFT + Tiny::FIELD_MASK.count_ones() <= 64
        && Tiny::BLOCK_BITS <= Tiny::OFF_SHIFT
        && (TINY_BLOCK as u64) <= Tiny::FIELD_MASK
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_word_round_trips() {
        #[cfg(target_pointer_width = "64")]
        let blocks = [0usize, 0x7f12_3456_7890, 0xffff_9000_0000_1230];
        #[cfg(target_pointer_width = "32")]
        let blocks = [0usize, 0x2000_1230, 0xffff_ff80];
        for block in blocks {
            for (off, n) in [(0, 0), (16, 16), (5, 3), (64, 64), (Tiny::STOPPED_OFF, 64)] {
                let t = Tiny { block, off, n };
                assert_eq!(Tiny::unpack(t.pack()), t);
            }
        }
        assert_eq!(Tiny::unpack(0), Tiny::NONE);
    }

    #[test]
    fn stack_word_deltas() {
        let w = StackWord(3 | 7 << StackWord::POPS_SHIFT);
        let popped = StackWord(w.0 + StackWord::POP_DELTA);
        assert_eq!((popped.len(), popped.pops()), (2, 8));
        let pushed = StackWord(w.0 + StackWord::PUSH_DELTA);
        assert_eq!((pushed.len(), pushed.pops()), (4, 7));
        assert!(!w.is_stopped() && StackWord(w.0 | StackWord::STOP).is_stopped());
        assert_eq!(StackWord(w.0 | StackWord::STOP).len(), 3);
    }
}
