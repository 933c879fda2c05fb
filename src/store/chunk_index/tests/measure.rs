//! The figures of step 2 (`docs/design/format2.md` §3.1): an index of
//! 2 M records built through the spill sorter under a 16 MiB budget, its
//! build time, the process's peak RSS, and lookup costs. Ignored; run:
//! `cargo test --lib store::chunk_index::tests::measure -- --ignored --nocapture --test-threads 1`
//! (compiled only for tests: a module of the `#[cfg(test)]` tests).

use std::time::Instant;

use super::super::*;
use crate::id::Id;

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn id_of(i: u32) -> Id {
    Id::hash(&i.to_le_bytes())
}

#[test]
#[ignore = "measurement: 2 M records, about 250 MB of temp files"]
fn two_million_records_under_16_mib() {
    const N: u32 = 2_000_000;
    const PACKS: u32 = 1500;
    let dir = tempfile::tempdir().unwrap();
    let base = vm_hwm_kib();
    let t = Instant::now();
    let mut view = IndexView::open(dir.path()).unwrap();
    let rows: Vec<PackRow> = (0..PACKS)
        .map(|p| PackRow {
            id: id_of(u32::MAX - p),
            size: 1 << 25,
            format: 1,
            gone: false,
        })
        .collect();
    let records = (0..N).map(|i| IndexRecord {
        id: id_of(i),
        pack: i % PACKS,
        frame_offset: i,
        frame_stored_len: 4096,
        frame_raw_len: 4096,
        chunk_offset: 0,
        chunk_raw_len: 4096,
        codec: 0,
        kind: 0,
        dict: 0,
        ad_mode: 1,
    });
    view.add_packs(&rows, records, 16 << 20).unwrap();
    let build = t.elapsed();
    let built_hwm = vm_hwm_kib();

    drop(view);
    // "5" resets VmHWM to the current RSS (Linux 4.0+): the rest measures
    // a reader's peak alone.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let reader_base = vm_hwm_kib();
    let t = Instant::now();
    let view = IndexView::open(dir.path()).unwrap();
    let open = t.elapsed();
    let t = Instant::now();
    for i in 0..500 {
        assert!(view.get(&id_of(i * 7)).unwrap().is_some());
    }
    let cold = t.elapsed() / 500;
    let t = Instant::now();
    for i in 0..200_000u32 {
        assert!(view.get(&id_of(i * 9)).unwrap().is_some());
    }
    let hits = t.elapsed() / 200_000;
    let t = Instant::now();
    for i in 0..200_000u32 {
        assert!(view.get(&id_of(N + i)).unwrap().is_none());
    }
    let misses = t.elapsed() / 200_000;
    let seg_bytes: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    println!(
        "records {N}, packs {PACKS}, cache files {seg_bytes} B\n\
         build (spill sort 16 MiB + segment write + verify): {build:?}\n\
         VmHWM before {base} KiB, after build {built_hwm} KiB\n\
         reader (peak reset: {reset}): VmHWM {reader_base} KiB before open, {} KiB after all lookups\n\
         reopen (verify 2 M records): {open:?}\n\
         lookup before the prefix table: {cold:?}; hit after: {hits:?}; miss after: {misses:?}",
        vm_hwm_kib()
    );
}
