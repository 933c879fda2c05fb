//! Segment round trip and damage, the spill sorter against sort + dedup,
//! and the view against a `HashMap` oracle.
//! (compiled only for tests: `#[cfg(test)] mod tests;` in mod.rs).

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use proptest::prelude::*;

use super::segment::{segment_name, LAZY_PREFIX_AFTER};
use super::*;

mod measure;

fn rec(id: Id, pack: u32, seed: u32) -> IndexRecord {
    IndexRecord {
        id,
        pack,
        frame_offset: seed,
        frame_stored_len: seed.wrapping_mul(3),
        frame_raw_len: seed ^ 0x5555,
        chunk_offset: seed / 2,
        chunk_raw_len: seed.wrapping_add(7),
        codec: seed as u8,
        kind: 1,
        dict: 2,
        ad_mode: (seed & 1) as u8,
    }
}

/// Ids that share 4-byte prefixes often (only `a` and `b` vary).
fn small_id(a: u8, b: u8) -> Id {
    let mut id = [0u8; 32];
    id[0] = a % 4;
    id[31] = b;
    Id(id)
}

fn write(dir: &Path, seq: u64, first_row: u32, records: &[IndexRecord]) -> std::path::PathBuf {
    let mut w = SegmentWriter::create(dir, &segment_name(seq), first_row).unwrap();
    for r in records {
        w.push(r).unwrap();
    }
    w.finish().unwrap()
}

fn sorted_records(n: u32) -> Vec<IndexRecord> {
    let mut v: Vec<IndexRecord> = (0..n)
        .map(|i| rec(Id::hash(&i.to_le_bytes()), i % 5, i))
        .collect();
    v.sort_by_key(|r| r.key());
    v
}

fn find_all(seg: &Segment, id: &Id) -> Vec<IndexRecord> {
    let mut out = Vec::new();
    seg.find(id, &mut out).unwrap();
    out
}

#[test]
fn record_round_trips() {
    let r = rec(Id::hash(b"x"), 0x0102_0304, 0xdead_beef);
    let mut b = [0u8; RECORD_LEN];
    r.encode(&mut b);
    assert_eq!(IndexRecord::decode(&b), r);
    assert_eq!(&b[32..36], &0x0102_0304u32.to_le_bytes());
}

#[test]
fn segment_round_trip_finds_every_record_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let records = sorted_records(3000);
    let path = write(dir.path(), 1, 0, &records);
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 24 + 64 * 3000 + 32);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let seg = Segment::open(&path).unwrap();
    assert_eq!(seg.len(), 3000);
    assert_eq!(seg.max_row(), Some(4));
    // Both lookup paths: on-disk binary search, then the prefix table.
    for r in &records {
        assert_eq!(find_all(&seg, &r.id), vec![*r]);
    }
    assert!(
        seg.prefixes_loaded(),
        "loaded after {LAZY_PREFIX_AFTER} lookups"
    );
    for i in 0..50u32 {
        assert!(find_all(&seg, &Id::hash(&(i + 1_000_000).to_le_bytes())).is_empty());
    }
    let back: Vec<_> = seg.iter().unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(back, records);
    // Only the published segment is left: no temp files.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn one_id_in_several_packs_is_found_in_row_order() {
    let dir = tempfile::tempdir().unwrap();
    let id = small_id(1, 9);
    let records = vec![
        rec(small_id(1, 8), 0, 1),
        rec(id, 2, 2),
        rec(id, 5, 3),
        rec(small_id(1, 10), 1, 4),
    ];
    let seg = Segment::open(&write(dir.path(), 0, 0, &records)).unwrap();
    assert_eq!(find_all(&seg, &id), vec![records[1], records[2]]);
}

#[test]
fn writer_refuses_out_of_order_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = SegmentWriter::create(dir.path(), &segment_name(0), 0).unwrap();
    let records = sorted_records(3);
    w.push(&records[1]).unwrap();
    assert!(matches!(
        w.push(&records[0]),
        Err(IndexError::Damaged { .. })
    ));
    assert!(matches!(
        w.push(&records[1]),
        Err(IndexError::Damaged { .. })
    ));
    let mut w2 = SegmentWriter::create(dir.path(), &segment_name(1), 3).unwrap();
    assert!(
        w2.push(&rec(records[0].id, 2, 0)).is_err(),
        "row below first_row"
    );
    drop((w, w2));
    assert!(spill_dir_is_empty(dir.path()), "records temps removed");
}

/// A valid-looking segment (right hash) over `records` as given, unsorted.
fn forge(path: &Path, first_row: u32, records: &[IndexRecord]) {
    let n = records.len() as u64;
    let mut b = b"ATOIDXS1".to_vec();
    b.extend_from_slice(&n.to_le_bytes());
    b.extend_from_slice(&first_row.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    for r in records {
        b.extend_from_slice(&r.id.0[..4]);
    }
    for r in records {
        let mut e = [0u8; RECORD_LEN];
        r.encode(&mut e);
        b.extend_from_slice(&e);
    }
    let h = blake3::hash(&b);
    b.extend_from_slice(h.as_bytes());
    fs::write(path, b).unwrap();
}

fn damaged(path: &Path) -> String {
    match Segment::open(path) {
        Err(IndexError::Damaged { path: p, detail }) => {
            assert_eq!(p, path, "the error names the file");
            detail
        }
        other => panic!("expected Damaged, got {other:?}"),
    }
}

#[test]
fn forged_segment_opens_so_the_forge_is_faithful() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(segment_name(0));
    let records = sorted_records(10);
    forge(&p, 0, &records);
    assert_eq!(
        find_all(&Segment::open(&p).unwrap(), &records[3].id),
        vec![records[3]]
    );
}

#[test]
fn records_out_of_order_are_refused_even_with_a_right_hash() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(segment_name(0));
    let mut records = sorted_records(10);
    records.swap(3, 4);
    forge(&p, 0, &records);
    assert!(damaged(&p).contains("record 4 is out of order"));
    // A duplicate (id, row) is out of order too.
    let mut dup = sorted_records(4);
    dup[2] = dup[1];
    forge(&p, 0, &dup);
    assert!(damaged(&p).contains("out of order"));
}

#[test]
fn a_row_below_first_row_or_a_wrong_prefix_table_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(segment_name(0));
    forge(&p, 5, &sorted_records(6));
    assert!(damaged(&p).contains("below the segment's first 5"));
    // A prefix table that disagrees with the records, hash recomputed.
    let records = sorted_records(6);
    forge(&p, 0, &records);
    let mut b = fs::read(&p).unwrap();
    b[24] ^= 0x80;
    let end = b.len() - 32;
    let h = blake3::hash(&b[..end]);
    b[end..].copy_from_slice(h.as_bytes());
    fs::write(&p, &b).unwrap();
    assert!(damaged(&p).contains("prefix table"));
}

#[test]
fn a_flipped_byte_anywhere_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), 0, 0, &sorted_records(40));
    let good = fs::read(&path).unwrap();
    // In the header's reserved bytes, the prefix table, a record, the hash.
    for at in [21, 24 + 7, 24 + 4 * 40 + 61, good.len() - 1] {
        let mut b = good.clone();
        b[at] ^= 0x01;
        fs::write(&path, &b).unwrap();
        let detail = damaged(&path);
        assert!(!detail.is_empty(), "byte {at}");
    }
    let mut b = good.clone();
    b[0] = b'X';
    fs::write(&path, &b).unwrap();
    assert!(damaged(&path).contains("magic"));
}

#[test]
fn truncated_or_extended_segments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), 0, 0, &sorted_records(40));
    let good = fs::read(&path).unwrap();
    for len in [0, 10, 24, 56, good.len() - 60, good.len() - 1] {
        fs::write(&path, &good[..len]).unwrap();
        damaged(&path);
    }
    let mut longer = good.clone();
    longer.extend_from_slice(&[0; 64]);
    fs::write(&path, &longer).unwrap();
    assert!(damaged(&path).contains("header says 40 records"));
    // A header claiming an absurd count is refused before any allocation.
    let mut huge = good;
    huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    fs::write(&path, &huge).unwrap();
    damaged(&path);
}

#[test]
fn the_pack_table_round_trips_and_refuses_damage() {
    let p = Path::new("/x/packs.tbl");
    let t = PackTable {
        rows: vec![
            PackRow {
                id: Id::hash(b"a"),
                size: 7,
                format: 1,
                gone: false,
            },
            PackRow {
                id: Id::hash(b"b"),
                size: 1 << 40,
                format: 2,
                gone: true,
            },
        ],
    };
    let b = t.encode();
    assert_eq!(b.len(), 12 + 2 * 48 + 32);
    assert_eq!(PackTable::decode(&b, p).unwrap(), t);
    for at in [0, 9, 12 + 41, b.len() - 1] {
        let mut bad = b.clone();
        bad[at] ^= 0x02;
        assert!(
            matches!(PackTable::decode(&bad, p), Err(IndexError::Damaged { .. })),
            "byte {at}"
        );
    }
    assert!(PackTable::decode(&b[..b.len() - 1], p).is_err());
}

/// A view in a new folder with one pack (row 0) holding chunk "c".
fn view_with_one_pack(dir: &Path) -> IndexView {
    let mut v = IndexView::open(dir).unwrap();
    let row = PackRow {
        id: Id::hash(b"p"),
        size: 1,
        format: 1,
        gone: false,
    };
    v.add_packs(&[row], vec![rec(Id::hash(b"c"), 0, 1)], 1 << 20)
        .unwrap();
    v
}

#[test]
fn an_orphan_segment_is_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    view_with_one_pack(dir.path());
    // A writer killed after its segment and before the table: rows 1.. unknown.
    write(dir.path(), 7, 1, &[rec(Id::hash(b"d"), 1, 2)]);
    let v = IndexView::open(dir.path()).unwrap();
    assert_eq!(v.segment_count(), 1);
    assert!(!dir.path().join(segment_name(7)).exists());
    assert!(v.get(&Id::hash(b"c")).unwrap().is_some());
    assert!(v.get(&Id::hash(b"d")).unwrap().is_none());
}

#[test]
fn compaction_is_called_for_by_segment_count_and_gone_share() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = IndexView::open(dir.path()).unwrap();
    let row = |i: u32| PackRow {
        id: Id::hash(&i.to_le_bytes()),
        size: 1,
        format: 2,
        gone: false,
    };
    for i in 0..9u32 {
        v.add_packs(&[row(i)], vec![rec(Id::hash(&[i as u8]), 0, i)], 1 << 16)
            .unwrap();
        assert_eq!(v.needs_compaction(), i >= 8, "{} segments", i + 1);
    }
    v.compact(1 << 16).unwrap();
    assert_eq!((v.segment_count(), v.needs_compaction()), (1, false));
    for i in 0..3u32 {
        assert!(v.mark_gone(&row(i).id).unwrap());
    }
    assert!(!v.mark_gone(&row(0).id).unwrap(), "already gone");
    assert!(v.needs_compaction(), "3 of 9 packs gone");
    v.compact(1 << 16).unwrap();
    let left: Vec<u64> = v.segment_lens();
    assert_eq!(left, vec![6], "gone records dropped");
    assert!(v.get(&Id::hash(&[1])).unwrap().is_none());
    assert!(v.get(&Id::hash(&[5])).unwrap().is_some());
}

#[test]
fn a_damaged_cache_file_maps_to_object_corrupt_naming_it() {
    let e: crate::error::Error = IndexError::damaged(Path::new("/c/seg-1.idx"), "x").into();
    assert_eq!(e.code(), "object_corrupt");
    assert!(e.to_string().contains("/c/seg-1.idx"));
}

/// A sort item that adds up the counts of its key (and keeps which push
/// came first).
#[derive(Debug)]
struct Tally {
    key: u16,
    count: u32,
    first: u32,
}

impl Spillable for Tally {
    const LEN: usize = 10;
    type Key = u16;

    fn key(&self) -> u16 {
        self.key
    }

    fn encode(&self, out: &mut [u8]) {
        out[..2].copy_from_slice(&self.key.to_le_bytes());
        out[2..6].copy_from_slice(&self.count.to_le_bytes());
        out[6..].copy_from_slice(&self.first.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Tally {
        let word = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        Tally {
            key: u16::from_le_bytes([b[0], b[1]]),
            count: word(2),
            first: word(6),
        }
    }

    fn absorb(&mut self, later: &Tally) {
        self.count += later.count;
    }
}

fn spill_dir_is_empty(dir: &Path) -> bool {
    fs::read_dir(dir).unwrap().count() == 0
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Output = stable sort by key + dedup keeping the first pushed, for
    /// budgets from one item per run up to everything in RAM; 64+ runs
    /// exercise the intermediate merge.
    #[test]
    fn spill_sorter_is_sort_plus_dedup(
        items in prop::collection::vec((0u8..6, 0u8..40, 0u32..3, any::<u32>()), 0..400),
        per_run in prop::sample::select(vec![1usize, 2, 3, 7, 50, 1000]),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let input: Vec<IndexRecord> =
            items.iter().map(|&(a, b, p, s)| rec(small_id(a, b), p, s)).collect();
        let budget = per_run * std::mem::size_of::<IndexRecord>();
        let mut sorter = SpillSorter::new(dir.path(), budget);
        for r in &input {
            sorter.push(*r).unwrap();
        }
        let want_runs = if input.len() > per_run { 1 } else { 0 };
        prop_assert!(sorter.runs() >= want_runs);
        let got: Vec<IndexRecord> = sorter.finish().unwrap().map(|r| r.unwrap()).collect();
        let mut want = input.clone();
        want.sort_by_key(|r| r.key());
        want.dedup_by_key(|r| r.key());
        prop_assert_eq!(got, want);
        prop_assert!(spill_dir_is_empty(dir.path()), "run files removed");
    }

    /// Items of one key become one, the first pushed absorbing the later
    /// ones wherever they land (one run, another run, the intermediate
    /// merge): what verify's mark counts slots of a leaf with.
    #[test]
    fn spill_sorter_absorbs_every_item_of_a_key(
        items in prop::collection::vec((0u16..60, 1u32..5), 0..400),
        per_run in prop::sample::select(vec![1usize, 2, 3, 7, 50, 1000]),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut sorter = SpillSorter::new(dir.path(), per_run * std::mem::size_of::<Tally>());
        let mut want: std::collections::BTreeMap<u16, (u32, u32)> = Default::default();
        for (i, &(key, count)) in items.iter().enumerate() {
            sorter.push(Tally { key, count, first: i as u32 }).unwrap();
            want.entry(key).or_insert((0, i as u32)).0 += count;
        }
        let got: Vec<(u16, (u32, u32))> = sorter
            .finish()
            .unwrap()
            .map(|t| t.unwrap())
            .map(|t| (t.key, (t.count, t.first)))
            .collect();
        prop_assert_eq!(got, want.into_iter().collect::<Vec<_>>());
        prop_assert!(spill_dir_is_empty(dir.path()), "run files removed");
    }

    /// Packs added (each with random chunks, some shared) and marked gone,
    /// with compactions and reopenings between: `get` finds a live record
    /// of exactly the ids some live pack holds.
    #[test]
    fn view_get_agrees_with_a_hashmap_oracle(
        ops in prop::collection::vec(
            prop_oneof![
                3 => prop::collection::vec(
                    prop::collection::vec((0u8..4, 0u8..30), 0..25), 1..3
                ).prop_map(Op::Add),
                1 => any::<prop::sample::Index>().prop_map(Op::Gone),
                1 => Just(Op::Compact),
                1 => Just(Op::Reopen),
            ],
            1..14,
        ),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut view = IndexView::open(dir.path()).unwrap();
        // Oracle: id -> (pack row -> record); which rows are live.
        let mut oracle: HashMap<Id, HashMap<u32, IndexRecord>> = HashMap::new();
        let mut live: Vec<bool> = Vec::new();
        let mut seed = 0u32;
        for op in ops {
            match op {
                Op::Add(packs) => {
                    let first = live.len() as u32;
                    let mut rows = Vec::new();
                    let mut records = Vec::new();
                    for (k, chunks) in packs.iter().enumerate() {
                        seed += 1;
                        rows.push(PackRow { id: Id::hash(&seed.to_le_bytes()), size: 9, format: 1, gone: false });
                        for &(a, b) in chunks {
                            seed += 1;
                            let r = rec(small_id(a, b), k as u32, seed);
                            let slot = oracle.entry(r.id).or_default();
                            // A pack holds a chunk once: the first one counts.
                            if slot.contains_key(&(first + k as u32)) { continue; }
                            slot.insert(first + k as u32, IndexRecord { pack: first + k as u32, ..r });
                            records.push(r);
                        }
                        live.push(true);
                    }
                    view.add_packs(&rows, records, 4 * std::mem::size_of::<IndexRecord>()).unwrap();
                }
                Op::Gone(i) => {
                    if live.is_empty() { continue; }
                    let row = i.index(live.len());
                    let id = view.packs().rows[row].id;
                    prop_assert_eq!(view.mark_gone(&id).unwrap(), live[row]);
                    live[row] = false;
                }
                Op::Compact => {
                    view.compact(3 * std::mem::size_of::<IndexRecord>()).unwrap();
                    prop_assert!(view.segment_count() == 1);
                }
                Op::Reopen => view = IndexView::open(dir.path()).unwrap(),
            }
            // 120 ids asked 5 times: a segment serves its first
            // LAZY_PREFIX_AFTER lookups on disk and the rest by prefix table.
            for (a, b) in (0..5).flat_map(|_| (0u8..4).flat_map(|a| (0u8..30).map(move |b| (a, b)))) {
                {
                    let id = small_id(a, b);
                    let got = view.get(&id).unwrap();
                    let want = oracle.get(&id).map(|m| {
                        m.iter().filter(|(row, _)| live[**row as usize]).map(|(_, r)| *r).collect::<Vec<_>>()
                    }).unwrap_or_default();
                    match got {
                        None => prop_assert!(want.is_empty(), "{:?} missed", id),
                        Some(r) => prop_assert!(want.contains(&r), "{:?}: {:?} not live", id, r),
                    }
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Add(Vec<Vec<(u8, u8)>>),
    Gone(prop::sample::Index),
    Compact,
    Reopen,
}

#[test]
fn a_segment_checked_whole_once_is_trusted_while_it_keeps_its_identity() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), 0, 0, &sorted_records(40));
    let (_, fresh) = Segment::open_known(&path, None).unwrap();
    // A record damaged in place; length, inode and mtime kept.
    let mtime = filetime::FileTime::from_last_modification_time(&fs::metadata(&path).unwrap());
    let at = 24 + 4 * 40 + 61;
    let mut byte = [0u8];
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 1], at).unwrap();
    drop(f);
    filetime::set_file_mtime(&path, mtime).unwrap();
    // A check made within 2 s of the file's mtime vouches for nothing.
    assert!(Segment::open_known(&path, Some(&fresh)).is_err());
    // One made later does: the file is not read whole again (so the
    // damage goes unseen, the trade-off `verify` does not make).
    let settled = Verified {
        checked_ns: fresh.mtime_ns + 2_000_000_000,
        ..fresh
    };
    let (_, again) = Segment::open_known(&path, Some(&settled)).unwrap();
    assert_eq!(again, settled, "a trusted check is kept as it was");
    // Another mtime, length or inode: checked whole again.
    let later = filetime::FileTime::from_unix_time(mtime.unix_seconds() + 1, 0);
    filetime::set_file_mtime(&path, later).unwrap();
    assert!(Segment::open_known(&path, Some(&settled)).is_err());
    let other = Verified {
        ino: settled.ino + 1,
        ..settled
    };
    filetime::set_file_mtime(&path, mtime).unwrap();
    assert!(Segment::open_known(&path, Some(&other)).is_err());
}

#[test]
fn the_view_keeps_its_checks_in_a_file_that_may_be_lost_or_garbage() {
    let dir = tempfile::tempdir().unwrap();
    view_with_one_pack(dir.path());
    // Each open records what it checked.
    drop(IndexView::open(dir.path()).unwrap());
    let verified = dir.path().join(super::view::VERIFIED_NAME);
    let text = fs::read_to_string(&verified).unwrap();
    let lines: Vec<(String, Verified)> = text.lines().filter_map(Verified::parse).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0].0, segment_name(0));
    assert_eq!(lines[0].1.max_row, Some(0));
    assert_eq!(lines[0].1.line(&lines[0].0).trim_end(), text.trim_end());
    for garbage in ["", "seg-0000000000000000.idx 1 2 3\n", "\u{0}\u{1}nonsense"] {
        fs::write(&verified, garbage).unwrap();
        let v = IndexView::open(dir.path()).unwrap();
        assert!(v.get(&Id::hash(b"c")).unwrap().is_some());
        let again = fs::read_to_string(&verified).unwrap();
        assert_eq!(again.lines().filter_map(Verified::parse).count(), 1);
    }
    fs::remove_file(&verified).unwrap();
    assert!(IndexView::open(dir.path())
        .unwrap()
        .get(&Id::hash(b"c"))
        .unwrap()
        .is_some());
}
