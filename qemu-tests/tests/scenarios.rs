//! Boots the x86_64-qemu kernel once per scenario and checks its serial log and
//! QEMU's exit status (33 = the kernel says pass, 35 = fail). See `src/lib.rs`.

use qemu_tests::{boot, images, Boot, FAIL, PASS};

/// Boot and basic heap use.
#[test]
fn boot_and_basic_heap() {
    let img = &images().default;
    boot(&Boot::new(img, "boot").smp(2).mem("128M").timeout(60))
        .expect_status(PASS)
        .expect_line("heap: tieralloc is the global allocator")
        .expect_line("smp: 2 of 2 CPUs online")
        .expect_line("scenario boot: PASS")
        .expect_no("CHECK FAILED");
}

/// The main job, as `make run` boots it: every CPU, stats table, per-CPU summary.
#[test]
fn main_workload_on_four_cpus() {
    let img = &images().default;
    let r = boot(&Boot::new(img, "main").smp(4).mem("512M").timeout(120));
    r.expect_status(PASS)
        .expect_line("smp: 4 of 4 CPUs online")
        .expect_line("--- heap statistics (tieralloc) ---")
        .expect_line("heap_sys")
        .expect_line("class    size      mallocs        frees       live")
        .expect_line("--- per-CPU summary ---")
        .expect_line("main: heap invariants hold")
        .expect_line("scenario main: PASS")
        .expect_no("CHECK FAILED");
    // A summary row per CPU, each with work done and objects freed that another CPU allocated.
    for cpu in 0..4 {
        let row = r
            .log
            .lines()
            .skip_while(|l| !l.contains("--- per-CPU summary ---"))
            .find(|l| l.split_whitespace().next() == Some(&cpu.to_string()))
            .unwrap_or_else(|| panic!("no summary row for CPU {cpu}:\n{}", r.log));
        let cols: Vec<u64> = row
            .split_whitespace()
            .take(3)
            .map(|c| c.parse().unwrap())
            .collect();
        assert!(
            cols[1] > 0 && cols[2] > 0,
            "CPU {cpu} did no work or no cross-CPU frees: {row}"
        );
    }
}

/// blog_os's many_boxes_long_lived, 10x larger, plus 10,000 long-lived boxes.
#[test]
fn many_boxes_long_and_short_lived() {
    let img = &images().default;
    boot(&Boot::new(img, "many_boxes").smp(1).mem("256M").timeout(90))
        .expect_status(PASS)
        .expect_line("many_boxes: 1024000 short-lived + 10,000 long-lived boxes")
        .expect_no("CHECK FAILED");
}

/// Four CPUs allocate and free concurrently; a quarter of the objects are freed
/// by another CPU; every object's contents are checked when freed. Then CPU 0
/// drains the other CPUs' caches while they work, and checks that owner and
/// remote sections of a CPU slot never overlap.
#[test]
fn four_cpu_stress_with_cross_cpu_frees() {
    let img = &images().default;
    let r = boot(
        &Boot::new(img, "stress")
            .smp(4)
            .mem("512M")
            .args("ops=300000")
            .timeout(120),
    );
    r.expect_status(PASS)
        .expect_line("scenario stress: PASS")
        .expect_no("CHECK FAILED");
    let line = r
        .log
        .lines()
        .find(|l| l.starts_with("stress: ") && l.contains("cross-CPU frees,"));
    let line = line.unwrap_or_else(|| panic!("no summary line:\n{}", r.log));
    assert!(!line.contains(" 0 cross-CPU frees"), "{line}");
    // Remote drains (CPU 0 scavenging busy CPUs' caches) and the slot-exclusion
    // check of the kernel's owner/remote protocol (percpu::KernelCpu).
    r.expect_line("stress: remote drains under load:")
        .expect_line("no update lost: yes");
}

/// At a small -m the heap runs out of frames: allocations return null, the
/// kernel keeps running, and memory is usable again after the frees.
#[test]
fn out_of_memory_returns_null_and_recovers() {
    let img = &images().default;
    boot(&Boot::new(img, "oom").smp(2).mem("48M").timeout(90))
        .expect_status(PASS)
        .expect_line("before null")
        .expect_line("the kernel is still running")
        .expect_line("oom: second round:")
        .expect_no("PANIC")
        .expect_no("CHECK FAILED");
}

/// Large objects, then frees and `scavenge()`: frames go back to the frame
/// allocator (all but metadata and page tables, within the printed bound).
#[test]
fn scavenging_returns_frames() {
    let img = &images().default;
    boot(&Boot::new(img, "scavenge").smp(2).mem("512M").timeout(90))
        .expect_status(PASS)
        .expect_line("scavenge: frames not back:")
        .expect_line("scenario scavenge: PASS")
        .expect_no("CHECK FAILED");
}

/// A kernel stack overflow on CPU 1 hits the guard page below its stack and is reported.
#[test]
fn stack_guard_page_hit_is_reported() {
    let img = &images().default;
    boot(&Boot::new(img, "guard").smp(2).mem("128M").timeout(60))
        .expect_status(PASS)
        .expect_line("guard page hit at 0x")
        .expect_line("(stack of CPU 1)")
        .expect_line("guard: stack overflow caught and reported");
}

/// With `checks`, a double free panics with the address, and QEMU exits with the failure status.
#[test]
fn double_free_is_detected_under_checks() {
    let img = &images().checks;
    let r = boot(&Boot::new(img, "double_free").smp(1).mem("128M").timeout(60));
    r.expect_status(FAIL)
        .expect_line("PANIC on CPU 0")
        .expect_line("tieralloc: double free of 0x")
        .expect_no("NOT detected");
}

/// With `checks`, freeing a pointer the heap never handed out is reported, not absorbed.
#[test]
fn foreign_free_is_reported_under_checks() {
    let img = &images().checks;
    for args in ["", "ptr=window"] {
        boot(
            &Boot::new(img, "foreign_free")
                .smp(1)
                .mem("128M")
                .args(args)
                .timeout(60),
        )
        .expect_status(FAIL)
        .expect_line("PANIC on CPU 0")
        .expect_line("not a pointer into this heap")
        .expect_no("NOT detected");
    }
}

/// The checks image also runs the main job cleanly (no false positives).
#[test]
fn checks_image_runs_the_main_job() {
    let img = &images().checks;
    boot(
        &Boot::new(img, "main")
            .smp(4)
            .mem("512M")
            .args("rounds=1500")
            .timeout(120),
    )
    .expect_status(PASS)
    .expect_line("scenario main: PASS")
    .expect_no("CHECK FAILED");
}

/// linked_list_allocator as the global heap (feature `lla-heap`) boots and runs the main job.
#[test]
fn lla_heap_image_runs() {
    let img = &images().lla;
    boot(&Boot::new(img, "boot").smp(2).mem("256M").timeout(60))
        .expect_status(PASS)
        .expect_line("heap: linked_list_allocator is the global allocator");
    boot(
        &Boot::new(img, "main")
            .smp(4)
            .mem("512M")
            .args("rounds=300")
            .timeout(120),
    )
    .expect_status(PASS)
    .expect_line("scenario main: PASS")
    .expect_no("CHECK FAILED");
}

/// tieralloc vs linked_list_allocator in the same boot; 1-CPU vs 4-CPU stress.
/// Asserts correctness and that the numbers are printed; prints them.
#[test]
fn bench_prints_comparison() {
    let img = &images().default;
    let r = boot(&Boot::new(img, "bench").smp(4).mem("512M").timeout(180));
    let table: Vec<&str> = r
        .log
        .lines()
        .skip_while(|l| !l.starts_with("workload (single CPU)"))
        .take_while(|l| !l.starts_with("scenario bench"))
        .collect();
    eprintln!("{}", table.join("\n"));
    r.expect_status(PASS)
        .expect_line("tieralloc/linked_list_allocator =")
        .expect_line("of its 1-CPU rate")
        .expect_no("CHECK FAILED");
    let churn = r.line("churn with 10,000 live objects").unwrap();
    let x: f64 = churn
        .split(" = ")
        .nth(1)
        .and_then(|s| s.trim().split('x').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {churn:?}"));
    assert!(
        x >= 10.0,
        "tieralloc should be far ahead of linked_list_allocator on churn: {churn}"
    );
}

/// The runner fails loudly (never skips) without QEMU.
#[test]
fn missing_qemu_is_an_error() {
    let e = qemu_tests::check_qemu("/nonexistent/qemu-system-x86_64").unwrap_err();
    assert!(
        e.contains("qemu-system-x86") && e.contains("make deps"),
        "{e}"
    );
}
