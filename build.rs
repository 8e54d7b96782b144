//! Build-time configuration: one cfg, `rseq`, set where the per-CPU tier
//! compiles restartable sequences in (feature `linux` on x86-64). Everything
//! that differs between the rseq and the locked builds keys on it.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(rseq)");
    let linux = std::env::var_os("CARGO_FEATURE_LINUX").is_some();
    let x86_64 = std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64");
    if linux && x86_64 {
        println!("cargo::rustc-cfg=rseq");
    }
    println!("cargo::rerun-if-changed=build.rs");
}
