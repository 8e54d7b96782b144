//! `--code-size`: the flash a heap costs a firmware. `benches/firmware` is
//! one minimal Cortex-M4F program per heap (thumbv7em-none-eabihf,
//! `opt-level = "s"`, LTO, one codegen unit, `panic = "abort"`), each running
//! the same workload — a `Vec` grown to 100 elements, a 200-byte `Box`, a
//! 3,000-byte `vec!` — through its heap as the `#[global_allocator]`, and a
//! baseline whose allocator has no heap. A heap's code is its firmware's
//! `.text` less the baseline's; its tables are `.rodata`; its static state
//! is `.bss` less the 32 KiB region (and any `.data`, which costs flash as
//! well as RAM).
//!
//! The sizes come from the ELF section headers (read here, so no binutils
//! for the target are needed).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The firmware binaries: the baseline first, then one per heap, with what
/// each one is.
pub const FIRMWARES: [(&str, &str); 6] = [
    ("none", "no heap (every allocation fails): the baseline"),
    ("tieralloc", "`Heap<RegionSource, CriticalSectionCpu>`"),
    (
        "llff",
        "`embedded-alloc` `LlffHeap` (linked_list_allocator)",
    ),
    ("tlsf", "`embedded-alloc` `TlsfHeap` (rlsf)"),
    ("talc", "talc `TalcLock<spinning_top::RawSpinlock, Manual>`"),
    ("buddy", "buddy_system_allocator `LockedHeap<32>`"),
];

/// Bytes of the firmwares' heap region (`benches/firmware/src/lib.rs`).
pub const REGION_BYTES: u64 = 32 * 1024;

/// Section sizes of one ELF file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sections {
    pub text: u64,
    pub rodata: u64,
    pub data: u64,
    pub bss: u64,
}

/// Reads the sizes of `.text`, `.rodata`, `.data` and `.bss` from an ELF
/// image (32- or 64-bit, little-endian).
pub fn sections(elf: &[u8]) -> Result<Sections, String> {
    if elf.len() < 52 || &elf[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if elf[5] != 1 {
        return Err("not little-endian".into());
    }
    let wide = match elf[4] {
        1 => false,
        2 => true,
        _ => return Err("bad ELF class".into()),
    };
    let rd = |off: usize, n: usize| -> Result<u64, String> {
        let b = elf.get(off..off + n).ok_or("ELF truncated")?;
        Ok(b.iter().rev().fold(0u64, |v, &x| v << 8 | x as u64))
    };
    let (shoff, shentsize, shnum, shstrndx) = if wide {
        (rd(0x28, 8)?, rd(0x3a, 2)?, rd(0x3c, 2)?, rd(0x3e, 2)?)
    } else {
        (rd(0x20, 4)?, rd(0x2e, 2)?, rd(0x30, 2)?, rd(0x32, 2)?)
    };
    // A section header's name, offset and size fields.
    let header = |i: u64| -> Result<(u64, u64, u64), String> {
        let h = (shoff + i * shentsize) as usize;
        if wide {
            Ok((rd(h, 4)?, rd(h + 0x18, 8)?, rd(h + 0x20, 8)?))
        } else {
            Ok((rd(h, 4)?, rd(h + 0x10, 4)?, rd(h + 0x14, 4)?))
        }
    };
    let (_, strtab, _) = header(shstrndx)?;
    let mut out = Sections::default();
    for i in 0..shnum {
        let (name, _, size) = header(i)?;
        let start = (strtab + name) as usize;
        let end = elf[start..]
            .iter()
            .position(|&b| b == 0)
            .ok_or("unterminated section name")?;
        match &elf[start..start + end] {
            b".text" => out.text += size,
            b".rodata" => out.rodata += size,
            b".data" => out.data += size,
            b".bss" => out.bss += size,
            _ => {}
        }
    }
    Ok(out)
}

fn firmware_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("firmware")
}

/// Builds the firmwares (`cargo build --release` in `benches/firmware`).
fn build(dir: &Path) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet"])
        .current_dir(dir)
        // The bench's own cargo settings must not leak into the firmware's build.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building {} failed ({status})", dir.display()));
    }
    Ok(())
}

/// Builds every firmware and returns the report (Markdown).
pub fn run(command: &str, date: &str) -> Result<String, String> {
    let dir = firmware_dir();
    build(&dir)?;
    let bin = dir.join("target/thumbv7em-none-eabihf/release");
    let mut sizes = Vec::new();
    for (name, _) in FIRMWARES {
        let path = bin.join(name);
        let elf = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        sizes.push(sections(&elf).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    let base = sizes[0];
    let talc = FIRMWARES.iter().position(|f| f.0 == "talc").unwrap();
    let talc_text = sizes[talc].text - base.text;
    let mut md = String::new();
    writeln!(md, "<!-- generated by `{command}`; do not edit -->").unwrap();
    writeln!(
        md,
        "Measured {date} with `{command}`: minimal thumbv7em-none-eabihf firmware \
         (`benches/firmware`, `opt-level = \"s\"`, LTO), the same workload through each \
         heap. Code: `.text` less the baseline's ({} B, the same firmware with an allocator \
         that has no heap); tables: `.rodata` less the baseline's; static state: `.bss` + \
         `.data` less the {} KiB region.\n",
        base.text,
        REGION_BYTES / 1024
    )
    .unwrap();
    writeln!(
        md,
        "| heap | code (B) | x talc | tables (B) | static state (B) | of it `.data` |"
    )
    .unwrap();
    writeln!(md, "|---|---:|---:|---:|---:|---:|").unwrap();
    for ((name, what), s) in FIRMWARES.iter().zip(&sizes).skip(1) {
        let code = s.text - base.text;
        writeln!(
            md,
            "| {name}: {what} | {code} | {:.1}x | {} | {} | {} |",
            code as f64 / talc_text as f64,
            s.rodata - base.rodata,
            (s.bss + s.data).saturating_sub(base.bss + base.data + REGION_BYTES),
            s.data - base.data,
        )
        .unwrap();
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_sections() {
        // The test binary itself is an ELF file with code and data.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let s = sections(&me).unwrap();
        assert!(s.text > 10_000, "{s:?}");
        assert!(sections(b"not an elf at all, clearly not one, no......................").is_err());
    }
}
