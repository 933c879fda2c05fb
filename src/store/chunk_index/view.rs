//! `IndexView`: lookups over the segments of one cache folder, newest
//! first, with the pack table `packs.tbl` whose `gone` marks hide the
//! records of packs no longer in the store (§1.5).
//!
//! `packs.tbl`: `"ATOPTBL1" | n u32 LE | n × PackRow | blake3(all before)`,
//! a `PackRow` being 48 bytes: `id [32] | size u64 LE | format u8 | gone u8
//! | reserved [6]`.
//!
//! RAM: 48 bytes per pack, each open segment's handle, and 4 bytes per
//! record of a segment that has served more than
//! [`super::segment::LAZY_PREFIX_AFTER`] lookups. Nothing else per chunk.
//!
//! Order of writes when packs are added: the new segment first, then the
//! table naming its rows. A crash in between leaves a segment naming rows
//! the table lacks; [`IndexView::open`] removes such an orphan, since the
//! next rows appended would reuse those numbers.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::segment::{parse_segment_name, segment_name, Segment, SegmentWriter, Verified};
use super::spill::SpillSorter;
use super::{IndexError, IndexRecord};
use crate::id::Id;
use crate::store::backend;

pub const TABLE_MAGIC: &[u8; 8] = b"ATOPTBL1";
pub const TABLE_NAME: &str = "packs.tbl";
/// The segments that passed their whole-file check (see
/// [`Segment::open_known`]), a line each.
pub const VERIFIED_NAME: &str = "verified";

/// Whether opening a view trusts the segment checks `verified` records
/// (only writers do: see `Store::load_index_for_writes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checks {
    Trusted,
    Again,
}

/// The `verified` file of `dir`; empty when missing or unreadable (every
/// segment is then checked whole again).
fn read_verified(dir: &Path) -> BTreeMap<String, Verified> {
    let Ok(text) = fs::read_to_string(dir.join(VERIFIED_NAME)) else {
        return BTreeMap::new();
    };
    text.lines().filter_map(Verified::parse).collect()
}

/// Rewrites the `verified` file (best effort: without it, segments are
/// only checked again). The caller holds the cache lock.
fn write_verified(dir: &Path, verified: &BTreeMap<String, Verified>) {
    let text: String = verified.iter().map(|(name, v)| v.line(name)).collect();
    let path = dir.join(VERIFIED_NAME);
    let tmp = backend::temp_path_in(dir, "ver");
    let done =
        backend::write_new_synced(&tmp, text.as_bytes()).and_then(|()| fs::rename(&tmp, &path));
    if done.is_err() {
        let _ = fs::remove_file(&tmp);
    }
}
pub const PACK_ROW_LEN: usize = 48;
/// More segments than this, or more gone records than a quarter, call for
/// a compaction ([`IndexView::needs_compaction`]).
pub const MAX_SEGMENTS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackRow {
    pub id: Id,
    pub size: u64,
    /// 1 or 2.
    pub format: u8,
    pub gone: bool,
}

impl PackRow {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.push(self.format);
        out.push(u8::from(self.gone));
        out.extend_from_slice(&[0u8; 6]);
    }

    fn decode(b: &[u8]) -> Option<PackRow> {
        let gone = match b[41] {
            0 => false,
            1 => true,
            _ => return None,
        };
        Some(PackRow {
            id: Id(b[..32].try_into().ok()?),
            size: u64::from_le_bytes(b[32..40].try_into().ok()?),
            format: b[40],
            gone,
        })
    }
}

/// The rows of `packs.tbl`, in row order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackTable {
    pub rows: Vec<PackRow>,
}

impl PackTable {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(12 + PACK_ROW_LEN * self.rows.len() + 32);
        b.extend_from_slice(TABLE_MAGIC);
        b.extend_from_slice(&(self.rows.len() as u32).to_le_bytes());
        for r in &self.rows {
            r.encode(&mut b);
        }
        let hash = blake3::hash(&b);
        b.extend_from_slice(hash.as_bytes());
        b
    }

    /// Decodes `b`, read from `path` (named in the error).
    pub fn decode(b: &[u8], path: &Path) -> Result<PackTable, IndexError> {
        let bad = |d: &str| IndexError::damaged(path, d);
        if b.len() < 44 || &b[..8] != TABLE_MAGIC {
            return Err(bad("not a pack table (bad magic or too short)"));
        }
        let (body, hash) = b.split_at(b.len() - 32);
        if blake3::hash(body).as_bytes() != hash {
            return Err(bad("blake3 trailer does not match"));
        }
        let n = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
        if body.len() != 12 + n * PACK_ROW_LEN {
            return Err(bad("length does not match the row count"));
        }
        let rows = body[12..]
            .chunks_exact(PACK_ROW_LEN)
            .map(PackRow::decode)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("a gone mark is neither 0 nor 1"))?;
        Ok(PackTable { rows })
    }

    /// Whether a record naming `row` is to be ignored (a gone pack, or a
    /// row the table does not have).
    pub fn hides(&self, row: u32) -> bool {
        self.rows.get(row as usize).is_none_or(|r| r.gone)
    }
}

/// The chunk index of one cache folder.
#[derive(Debug)]
pub struct IndexView {
    dir: PathBuf,
    packs: PackTable,
    /// Newest first, with their sequence numbers.
    segments: Vec<(u64, Segment)>,
}

impl IndexView {
    /// Opens the index in `dir` (made 0700 if missing): the pack table
    /// (empty if absent) and every segment, each verified. Orphan segments
    /// (naming rows beyond the table) are removed.
    pub fn open(dir: &Path) -> Result<IndexView, IndexError> {
        IndexView::open_with(dir, Checks::Trusted)
    }

    /// [`IndexView::open`], every segment checked whole with
    /// [`Checks::Again`] (every reader: a damaged line would make it
    /// report a chunk missing or corrupt).
    pub fn open_with(dir: &Path, checks: Checks) -> Result<IndexView, IndexError> {
        backend::create_private_dir_all(dir).map_err(IndexError::io("create", dir))?;
        let table_path = dir.join(TABLE_NAME);
        let packs = match fs::read(&table_path) {
            Ok(b) => PackTable::decode(&b, &table_path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PackTable::default(),
            Err(e) => return Err(IndexError::io("read", &table_path)(e)),
        };
        let known = match checks {
            Checks::Trusted => read_verified(dir),
            Checks::Again => BTreeMap::new(),
        };
        let mut verified = BTreeMap::new();
        let mut segments = Vec::new();
        for entry in fs::read_dir(dir).map_err(IndexError::io("list", dir))? {
            let entry = entry.map_err(IndexError::io("list", dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(seq) = parse_segment_name(&name) else {
                continue;
            };
            let (seg, passed) = Segment::open_known(&entry.path(), known.get(&name))?;
            if seg
                .max_row()
                .is_some_and(|r| r as usize >= packs.rows.len())
            {
                fs::remove_file(seg.path()).map_err(IndexError::io("remove", seg.path()))?;
                continue;
            }
            verified.insert(name, passed);
            segments.push((seq, seg));
        }
        if checks == Checks::Trusted && verified != known {
            write_verified(dir, &verified);
        }
        segments.sort_by_key(|s| std::cmp::Reverse(s.0));
        Ok(IndexView {
            dir: dir.to_path_buf(),
            packs,
            segments,
        })
    }

    pub fn packs(&self) -> &PackTable {
        &self.packs
    }

    /// The segments, newest first.
    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().map(|(_, s)| s)
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Records per segment, newest first.
    pub fn segment_lens(&self) -> Vec<u64> {
        self.segments.iter().map(|(_, s)| s.len()).collect()
    }

    /// Where `id` is: the first record in a pack not gone, segments newest
    /// first, within a segment by pack row.
    pub fn get(&self, id: &Id) -> Result<Option<IndexRecord>, IndexError> {
        let mut found = Vec::new();
        for (_, seg) in &self.segments {
            found.clear();
            seg.find(id, &mut found)?;
            if let Some(r) = found.iter().find(|r| !self.packs.hides(r.pack)) {
                return Ok(Some(*r));
            }
        }
        Ok(None)
    }

    /// The pack a record names.
    pub fn pack(&self, r: &IndexRecord) -> Option<&PackRow> {
        self.packs.rows.get(r.pack as usize)
    }

    /// Adds packs and their chunks: `records[i].pack` is an index into
    /// `new_packs`. The records, in any order, are sorted within `budget`
    /// bytes of RAM into one new segment; then the table is rewritten.
    pub fn add_packs(
        &mut self,
        new_packs: &[PackRow],
        records: impl IntoIterator<Item = IndexRecord>,
        budget: usize,
    ) -> Result<(), IndexError> {
        self.add_packs_from(new_packs, records.into_iter().map(Ok), budget)
    }

    /// As [`IndexView::add_packs`], from records read fallibly: the first
    /// error stops it before anything is published.
    pub fn add_packs_from(
        &mut self,
        new_packs: &[PackRow],
        records: impl IntoIterator<Item = Result<IndexRecord, IndexError>>,
        budget: usize,
    ) -> Result<(), IndexError> {
        let mut sorter = SpillSorter::new(&self.dir, budget);
        for r in as_rows(&self.dir, new_packs.len(), self.packs.rows.len(), records) {
            sorter.push(r?)?;
        }
        self.add_segment(new_packs, sorter.finish()?)
    }

    /// As [`IndexView::add_packs_from`], from records already sorted by
    /// [`IndexRecord::key`] (a writer's spilled segments merged): written
    /// as they come, without a sort. Records out of order are refused
    /// (`SegmentWriter::push`) before anything is published.
    pub fn add_sorted_packs_from(
        &mut self,
        new_packs: &[PackRow],
        records: impl IntoIterator<Item = Result<IndexRecord, IndexError>>,
    ) -> Result<(), IndexError> {
        let dir = self.dir.clone();
        let rows = as_rows(&dir, new_packs.len(), self.packs.rows.len(), records);
        self.add_segment(new_packs, rows)
    }

    /// Writes `records` (sorted, packs numbered as rows) as the newest
    /// segment, then the table with `new_packs` added.
    fn add_segment(
        &mut self,
        new_packs: &[PackRow],
        records: impl Iterator<Item = Result<IndexRecord, IndexError>>,
    ) -> Result<(), IndexError> {
        let first_row = self.packs.rows.len() as u32;
        let seq = self.next_seq();
        let seg = self.write_segment(seq, first_row, records)?;
        self.segments.insert(0, seg);
        self.packs.rows.extend_from_slice(new_packs);
        self.save_table()
    }

    /// Marks the pack `id` gone (removed from the store); its records are
    /// ignored from now on. Returns whether it was in the table.
    pub fn mark_gone(&mut self, id: &Id) -> Result<bool, IndexError> {
        self.mark_all_gone(std::slice::from_ref(id))
    }

    /// Marks every pack of `ids` gone, writing the table once; returns
    /// whether any was in it.
    pub fn mark_all_gone(&mut self, ids: &[Id]) -> Result<bool, IndexError> {
        let ids: std::collections::HashSet<&Id> = ids.iter().collect();
        let mut changed = false;
        for r in self
            .packs
            .rows
            .iter_mut()
            .filter(|r| ids.contains(&r.id) && !r.gone)
        {
            r.gone = true;
            changed = true;
        }
        if changed {
            self.save_table()?;
        }
        Ok(changed)
    }

    /// More than [`MAX_SEGMENTS`] segments, or gone packs hold more than a
    /// quarter of the records.
    pub fn needs_compaction(&self) -> bool {
        if self.segments.len() > MAX_SEGMENTS {
            return true;
        }
        let total: u64 = self.segments.iter().map(|(_, s)| s.len()).sum();
        let live_packs = self.packs.rows.iter().filter(|r| !r.gone).count();
        // Records are not counted per pack in RAM: estimate by pack share.
        let gone_share = 1.0 - live_packs as f64 / self.packs.rows.len().max(1) as f64;
        total > 0 && gone_share > 0.25
    }

    /// Merges every segment into one, dropping gone records, through a
    /// [`SpillSorter`] of `budget` bytes. Old segments are removed only
    /// after the new one is in place.
    pub fn compact(&mut self, budget: usize) -> Result<(), IndexError> {
        let mut sorter = SpillSorter::new(&self.dir, budget);
        // Oldest first, so that with equal keys (never within one table's
        // rows) the older record is kept.
        for (_, seg) in self.segments.iter().rev() {
            for r in seg.iter()? {
                let r = r?;
                if !self.packs.hides(r.pack) {
                    sorter.push(r)?;
                }
            }
        }
        let seq = self.next_seq();
        let old: Vec<PathBuf> = self
            .segments
            .iter()
            .map(|(_, s)| s.path().to_path_buf())
            .collect();
        let merged = self.write_segment(seq, 0, sorter.finish()?)?;
        self.segments = vec![merged];
        for p in old {
            fs::remove_file(&p).map_err(IndexError::io("remove", &p))?;
        }
        Ok(())
    }

    fn next_seq(&self) -> u64 {
        self.segments.first().map_or(0, |(s, _)| s + 1)
    }

    fn write_segment(
        &self,
        seq: u64,
        first_row: u32,
        records: impl Iterator<Item = Result<IndexRecord, IndexError>>,
    ) -> Result<(u64, Segment), IndexError> {
        let mut w = SegmentWriter::create(&self.dir, &segment_name(seq), first_row)?;
        for r in records {
            w.push(&r?)?;
        }
        let path = w.finish()?;
        Ok((seq, Segment::open(&path)?))
    }

    fn save_table(&self) -> Result<(), IndexError> {
        let path = self.dir.join(TABLE_NAME);
        let tmp = backend::temp_path_in(&self.dir, "tbl");
        let done = backend::write_new_synced(&tmp, &self.packs.encode())
            .and_then(|()| fs::rename(&tmp, &path))
            .and_then(|()| backend::sync_dir(&self.dir));
        if done.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        done.map_err(IndexError::io("write", &path))
    }
}

/// New records renumbered as table rows (their packs, numbered from 0
/// among the `n` new ones, follow the table's `first_row` rows); one that
/// names no new pack is a damaged input.
fn as_rows<'a>(
    dir: &'a Path,
    n: usize,
    first_row: usize,
    records: impl IntoIterator<Item = Result<IndexRecord, IndexError>> + 'a,
) -> impl Iterator<Item = Result<IndexRecord, IndexError>> + 'a {
    records.into_iter().map(move |r| {
        let r = r?;
        if r.pack as usize >= n {
            return Err(IndexError::damaged(
                dir,
                format!("a new record names pack {} of {n}", r.pack),
            ));
        }
        Ok(IndexRecord {
            pack: r.pack + first_row as u32,
            ..r
        })
    })
}
