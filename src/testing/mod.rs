//! Test infrastructure shared by the crate's unit tests, its integration
//! tests, the benchmarks and the boards (through the `internals` module):
//! one deterministic generator ([`Rng`]); with `std`, a page source that
//! checks the state machine of every call made to it ([`CheckedSource`]);
//! on Linux, a closure run in a forked child (`in_child`), for what must fault.

#[cfg(any(test, feature = "linux"))]
mod checked;
#[cfg(feature = "linux")]
mod fork;
mod rng;

#[cfg(any(test, feature = "linux"))]
pub use checked::{Call, CallCounts, CheckedSource, PageState};
#[cfg(feature = "linux")]
pub use fork::{in_child, ChildExit};
pub use rng::Rng;
