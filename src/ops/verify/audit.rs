//! The audit: every pack read and every chunk checked against its id,
//! every manifest and summary read, every file's recorded size checked
//! against its chunks (`sizes`); what is damaged, missing or unreadable.

use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::error::{Error, Result};
use crate::id::{Id, IdSet};
use crate::ops::mark::{self, locate, InLeaf, Mark, SpillDir, NO_LEAF};
use crate::stamp::Stamp;
use crate::store::chunk_index::Spillable;
use crate::store::index::{ChunkIndex, Location};
use crate::store::lists::numbered::{self, UNKNOWN};
use crate::store::lists::{Numbered, Reached};
use crate::store::manifest::Manifest;
use crate::store::pack;
use crate::store::{ChunkFault, Dir, Object, PackLayout, ReadFrom, Store};

use super::pack_check::{check_pack, rehash_packs, PackCheck};
use super::report::{SampleReport, SizeMismatch, SnapshotHealth, VerifyReport};
use super::sample::{Candidate, Sample};
use super::sizes::Sizes;

/// What the audit found, with what repair needs beyond the report.
pub struct Audit {
    pub report: VerifyReport,
    /// Snapshots whose manifest reads (manifests are read one at a time,
    /// never all held at once).
    pub readable: Vec<Stamp>,
    /// Snapshots whose manifest does not read.
    pub unreadable: Vec<Stamp>,
    /// Snapshots whose every chunk was re-hashed (or whose manifest does
    /// not read), with their health: what the verify log records.
    pub covered: std::collections::BTreeMap<String, bool>,
    /// The packs re-hashed end to end and found sound (ids).
    pub packs_read: Vec<Id>,
    /// This host's mark of lost packs as the audit's index refresh left
    /// it (see [`crate::store::index::ChunkIndex::losses_seen`]).
    pub losses_seen: Option<String>,
    /// Per snapshot, the files whose recorded size their chunks do not
    /// hold (damaged files of the report that repair cannot heal).
    pub wrong_sizes: BTreeMap<String, Vec<SizeMismatch>>,
}

pub(super) fn audit(
    store: &Store,
    selected: Option<&[Stamp]>,
    sample: Option<&Sample>,
) -> Result<Audit> {
    let mut report = VerifyReport::default();
    let listing = store.list_snapshots()?;
    let stamps = match selected {
        Some(s) => s.to_vec(),
        None => listing.stamps.clone(),
    };
    // Referenced: every chunk and every list blob the trees reach (delta
    // chains included): `mark_snapshots`.
    let index = store.load_index_rechecked()?;
    let spill = SpillDir::for_store(store)?;
    // A full audit re-hashes every pack whatever the mark finds: that
    // starts at once, beside the mark (one thread walking the trees), so
    // both cores are busy from the start.
    let every_pack: Vec<u32> = (0..index.packs().len() as u32).collect();
    let full = selected.is_none() && sample.is_none();
    let (marked, early) = std::thread::scope(|scope| {
        let early = full.then(|| scope.spawn(|| rehash_packs(store, &index, &every_pack)));
        let marked = mark_snapshots(store, &index, &spill, &stamps, &mut report);
        let early = early.map(|h| {
            h.join().unwrap_or_else(|_| {
                Err(Error::ReaderPanicked {
                    path: store.display_dir(Dir::Packs),
                })
            })
        });
        (marked, early)
    });
    let Marked {
        readable,
        unreadable,
        lists_corrupt,
        wrong_sizes,
        joined:
            Joined {
                missing,
                pack_live,
                live_stored,
                ..
            },
    } = marked?;

    // Packs whose index does not read: their chunks are unknown. With
    // --snapshot they matter only when a referenced chunk is missing (it
    // may be in one of them).
    if selected.is_none() || !missing.is_empty() {
        for d in &index.damaged {
            report.objects_checked += 1;
            if pack::is_unreadable(&d.detail) {
                report.unreadable.insert(d.name.clone(), d.detail.clone());
            } else {
                report.damaged_objects.push(d.name.clone());
                report.damage.insert(d.name.clone(), d.detail.clone());
            }
        }
    }
    // A chunk the index lacks may sit in a pack whose index could not be
    // read: unverified, not missing.
    let mut unverified: HashSet<Id> = HashSet::new();
    let mut missing = missing;
    if index.damaged.iter().any(|d| pack::is_unreadable(&d.detail)) {
        unverified.extend(std::mem::take(&mut missing));
    }

    // Packs to check: all of them, or those holding a referenced chunk.
    let npacks = index.packs().len();
    let to_check: Vec<u32> = (0..npacks as u32)
        .filter(|&p| selected.is_none() || pack_live[p as usize] > 0)
        .collect();
    let rehash: HashSet<u32> = match sample {
        None => to_check.iter().copied().collect(),
        Some(sample) => {
            let candidates: Vec<Candidate> = to_check
                .iter()
                .map(|&p| Candidate {
                    pack: p,
                    id: index.pack(p).id,
                    size: index.pack(p).size,
                })
                .collect();
            sample.select(store, &candidates)
        }
    };
    report.packs_total = (npacks + index.damaged.len()) as u64;
    report.packs_sampled = rehash.len() as u64;
    if let Some(sample) = sample {
        let mut packs_selected: Vec<String> = rehash
            .iter()
            .map(|&p| Object::Pack(index.pack(p).id).name())
            .collect();
        packs_selected.sort();
        report.sample = Some(SampleReport {
            spec: sample.spec(),
            packs_selected,
        });
        if let Sample::Percent(p) = sample {
            report.sampled_percent = Some(*p);
        }
    }

    // Packs checked structurally: in parallel (small reads). Packs re-hashed:
    // [`PACKS_AT_ONCE`] at a time (`rehash_packs`).
    let (hashed, structural): (Vec<u32>, Vec<u32>) =
        to_check.iter().partition(|p| rehash.contains(p));
    let mut checks: Vec<(u32, PackCheck)> = structural
        .par_iter()
        .map(|&p| (p, check_pack(store, &index, p, false)))
        .collect();
    match early {
        // Started beside the mark: every pack, in the same order.
        Some(rehashed) => checks.extend(rehashed?),
        None => checks.extend(rehash_packs(store, &index, &hashed)?),
    }

    // A chunk is bad when the copy every reader uses (its index location)
    // is corrupt, or when it is missing.
    let mut bad: HashSet<Id> = missing.iter().copied().collect();
    bad.extend(lists_corrupt.iter().copied());
    let home_in = |id: &Id, p: u32| -> Result<bool> {
        Ok(locate(&index, id)?.is_some_and(|loc| loc.pack == p))
    };
    for (p, check) in &checks {
        for id in &check.unverified {
            if home_in(id, *p)? {
                unverified.insert(*id);
            }
        }
        for id in &check.corrupt {
            if home_in(id, *p)? {
                bad.insert(*id);
            }
        }
    }

    // The second walk: the damage mapped to files, and (with --snapshot)
    // which of the damaged chunks the snapshots reference: a few ids, where
    // the mark's set held every one.
    let asked: IdSet = match selected {
        Some(_) => checks
            .iter()
            .flat_map(|(_, c)| c.corrupt.iter().chain(&c.unverified))
            .copied()
            .collect(),
        None => IdSet::default(),
    };
    let per_file = sample.is_some() || !bad.is_empty() || !unverified.is_empty();
    let walk = Damage {
        index: &index,
        bad: &bad,
        unverified: &unverified,
        rehash: &rehash,
        asked: &asked,
    };
    let mut referenced_asked = IdSet::default();
    let mut files_of: Vec<(Stamp, Files)> = Vec::with_capacity(readable.len());
    for stamp in &readable {
        let files = match per_file || !asked.is_empty() {
            true => {
                let m = store.read_manifest(stamp, ReadFrom::Cache)?;
                walk.files(store, &m, &mut referenced_asked)
            }
            false => Files::default(),
        };
        files_of.push((stamp.clone(), files));
    }
    let referenced = |id: &Id| selected.is_none() || referenced_asked.contains(id);

    let mut packs_read: Vec<Id> = Vec::new();
    let mut corrupt: BTreeSet<Id> = lists_corrupt;
    for (p, check) in &checks {
        report.objects_checked += 1;
        report.bytes_checked += check.bytes;
        report.chunks_checked += check.chunks;
        let name = Object::Pack(index.pack(*p).id).name();
        // Only a pack read clean counts as verified: one found damaged
        // stays first in `--oldest`'s queue until a read finds it sound,
        // so the run after the one that found it reports it again.
        let clean =
            check.unreadable.is_none() && check.detail().is_none() && check.corrupt.is_empty();
        if clean && rehash.contains(p) {
            packs_read.push(index.pack(*p).id);
        }
        if let Some(detail) = &check.unreadable {
            if check.unverified.iter().any(referenced) {
                report.unreadable.insert(name.clone(), detail.clone());
            }
        }
        if let Some(detail) = check.detail() {
            if selected.is_none() || check.concerns(referenced) {
                report.damaged_objects.push(name.clone());
                report.damage.insert(name, detail);
            }
        }
        corrupt.extend(check.corrupt.iter().filter(|id| referenced(id)));
        if selected.is_none() {
            if pack_live[*p as usize] == 0 {
                report.orphans.push(Object::Pack(index.pack(*p).id).name());
                report.reclaimable_bytes += index.pack(*p).size;
            } else {
                let live = live_stored[*p as usize];
                report.reclaimable_bytes += check.total_stored.saturating_sub(live);
            }
        }
    }
    report.corrupt = corrupt.iter().map(Id::to_hex).collect();
    report.missing = missing.iter().map(Id::to_hex).collect();

    let mut covered: std::collections::BTreeMap<String, bool> =
        unreadable.iter().map(|s| (s.to_string(), false)).collect();
    for (stamp, mut files) in files_of {
        let metadata_error = metadata_problem(store, &stamp);
        let wrong = wrong_sizes.get(&stamp.to_string());
        files
            .damaged
            .extend(wrong.into_iter().flatten().map(|w| w.path.clone()));
        let ok =
            files.damaged.is_empty() && metadata_error.is_none() && files.unreadable.is_empty();
        // A wrong size is the manifest's: known whatever was sampled.
        if sample.is_none() || files.rehashed_all || wrong.is_some() {
            covered.insert(stamp.to_string(), ok);
        }
        report.snapshots.insert(
            stamp.to_string(),
            SnapshotHealth {
                ok,
                damaged_files: files.damaged.into_iter().collect(),
                file_errors: wrong.into_iter().flatten().map(|w| w.to_string()).collect(),
                error: None,
                metadata_error,
                unreadable_files: files.unreadable.into_iter().collect(),
            },
        );
    }

    report.orphans.sort();
    report.damaged_objects.sort();
    report.damaged_objects.dedup();
    report.ok = report.corrupt.is_empty()
        && report.missing.is_empty()
        && report.damaged_objects.is_empty()
        && report.unreadable.is_empty()
        && report.snapshots.values().all(|s| s.ok);
    Ok(Audit {
        report,
        readable,
        unreadable,
        covered,
        packs_read,
        losses_seen: index.losses_seen.clone(),
        wrong_sizes,
    })
}

/// A referenced chunk's place, sorted by pack and frame so that each
/// frame's live share is summed in one run.
struct LiveChunk {
    pack: u32,
    frame_offset: u32,
    chunk_offset: u32,
    raw_len: u32,
    frame_stored_len: u32,
    frame_raw_len: u32,
}

impl Spillable for LiveChunk {
    const LEN: usize = 24;
    type Key = (u32, u32, u32);
    /// Two referenced chunks at one place are an index whose entries
    /// overlap (a damaged pack): which raw length counts there is moot.
    const ANY_FIRST: bool = true;

    fn key(&self) -> (u32, u32, u32) {
        (self.pack, self.frame_offset, self.chunk_offset)
    }

    fn encode(&self, out: &mut [u8]) {
        let words = [
            self.pack,
            self.frame_offset,
            self.chunk_offset,
            self.raw_len,
            self.frame_stored_len,
            self.frame_raw_len,
        ];
        for (i, w) in words.iter().enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
    }

    fn decode(b: &[u8]) -> LiveChunk {
        let w = |i: usize| u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        LiveChunk {
            pack: w(0),
            frame_offset: w(1),
            chunk_offset: w(2),
            raw_len: w(3),
            frame_stored_len: w(4),
            frame_raw_len: w(5),
        }
    }
}

/// The referenced stream joined with the chunk index.
struct Joined {
    /// Referenced ids the index lacks.
    missing: BTreeSet<Id>,
    /// Per pack: the stored shares of the referenced chunks it is the
    /// index's home of (nonzero: the pack is referenced).
    pack_live: Vec<u64>,
    /// Per pack: its frames' stored bytes split by the raw bytes of those
    /// chunks (what is not reclaimable in it).
    live_stored: Vec<u64>,
    /// Per number of the mark's [`Numbered`]: for a leaf (or flat list),
    /// the raw bytes of its chunks, each slot counted ([`UNKNOWN`] when one
    /// is not indexed).
    leaf_bytes: Vec<u64>,
}

/// Resolves each referenced id (sorted, with its items of each leaf
/// together) through the index, adding each chunk's raw bytes to the
/// leaves that list it (`leaves` numbers); then sums the live bytes per
/// pack and frame from a second sort by place.
fn join(
    index: &ChunkIndex,
    spill: &SpillDir,
    referenced: mark::Marked<InLeaf>,
    leaves: usize,
) -> Result<Joined> {
    let npacks = index.packs().len();
    let mut joined = Joined {
        missing: BTreeSet::new(),
        pack_live: vec![0; npacks],
        live_stored: vec![0; npacks],
        leaf_bytes: vec![0; leaves],
    };
    let mut places = spill.sorter::<LiveChunk>();
    // A merge of two sorted streams, the referenced ids and the index's
    // records: sequential reads of the index cache, no lookup per id.
    let mut records = index.iter()?.peekable();
    // The id of the items before and where it is: the next leaves listing
    // it take its raw length from here.
    let mut last: Option<(Id, Option<Location>)> = None;
    for item in referenced {
        let InLeaf { id, leaf, count } = item?;
        let found = match last {
            Some((l, found)) if l == id => found,
            _ => {
                let found = place(&mut records, &id)?;
                live(&mut joined, &mut places, id, found)?;
                last = Some((id, found));
                found
            }
        };
        if leaf == NO_LEAF {
            continue;
        }
        if let Some(total) = joined.leaf_bytes.get_mut(leaf as usize) {
            let bytes = found.map_or(UNKNOWN, |l| l.raw_len as u64 * count as u64);
            *total = numbered::add(*total, bytes);
        }
    }
    close_frames(&mut joined, places)?;
    Ok(joined)
}

/// Where `id` is, by the index's records (sorted): those before it are
/// passed, the one at it (if any) is its place.
fn place(
    records: &mut std::iter::Peekable<impl Iterator<Item = Result<(Id, Location)>>>,
    id: &Id,
) -> Result<Option<Location>> {
    while let Some(item) = records.peek() {
        match item {
            Ok((rid, _)) if rid < id => {}
            Ok((rid, loc)) => return Ok((rid == id).then_some(*loc)),
            Err(_) => {}
        }
        if let Some(Err(e)) = records.next() {
            return Err(e);
        }
    }
    Ok(None)
}

/// A referenced id, once: missing, or its pack live and its place sorted.
fn live(
    joined: &mut Joined,
    places: &mut crate::store::chunk_index::SpillSorter<LiveChunk>,
    id: Id,
    found: Option<Location>,
) -> Result<()> {
    match found {
        None => {
            joined.missing.insert(id);
        }
        Some(loc) => {
            joined.pack_live[loc.pack as usize] += loc.stored_share();
            places.push(LiveChunk {
                pack: loc.pack,
                frame_offset: loc.frame_offset,
                chunk_offset: loc.chunk_offset,
                raw_len: loc.raw_len,
                frame_stored_len: loc.frame_stored_len(),
                frame_raw_len: loc.frame_raw_len,
            })?;
        }
    }
    Ok(())
}

/// Sums each frame's live share per pack from the places of the live
/// chunks (sorted by pack and frame).
fn close_frames(
    joined: &mut Joined,
    places: crate::store::chunk_index::SpillSorter<LiveChunk>,
) -> Result<()> {
    // One frame's live raw bytes at a time: its stored bytes are shared
    // out once per frame, as the pack check did over the pack's layout.
    let mut frame: Option<(u32, u32, u32, u32, u64)> = None;
    let close = |f: Option<(u32, u32, u32, u32, u64)>, joined: &mut Joined| {
        if let Some((pack, _, stored, raw, live_raw)) = f {
            joined.live_stored[pack as usize] += PackLayout::share(stored, raw, live_raw);
        }
    };
    for c in places.finish()? {
        let c = c?;
        match &mut frame {
            Some((pack, offset, _, _, live_raw))
                if *pack == c.pack && *offset == c.frame_offset =>
            {
                *live_raw += c.raw_len as u64;
            }
            _ => {
                close(frame.take(), joined);
                frame = Some((
                    c.pack,
                    c.frame_offset,
                    c.frame_stored_len,
                    c.frame_raw_len,
                    c.raw_len as u64,
                ));
            }
        }
    }
    close(frame, joined);
    Ok(())
}

/// What the second walk found in one snapshot's files.
#[derive(Default)]
struct Files {
    damaged: BTreeSet<String>,
    unreadable: BTreeSet<String>,
    /// Every chunk of every file is in a re-hashed pack (or missing).
    rehashed_all: bool,
}

/// The second walk's questions: a few ids, not every referenced one.
struct Damage<'a> {
    index: &'a ChunkIndex,
    bad: &'a HashSet<Id>,
    unverified: &'a HashSet<Id>,
    rehash: &'a HashSet<u32>,
    /// Ids whose being referenced the report needs (--snapshot).
    asked: &'a IdSet,
}

impl Damage<'_> {
    /// Walks every file of `m` (its list blobs and chunks, up to a list
    /// blob that does not read), one id at a time.
    fn files(&self, store: &Store, m: &Manifest, referenced_asked: &mut IdSet) -> Files {
        let mut out = Files {
            rehashed_all: true,
            ..Files::default()
        };
        for e in &m.entries {
            let Some(f) = e.file() else { continue };
            let (mut bad, mut unverified) = (false, false);
            let _ = store.file_reach(self.index, f, &mut IdSet::default(), &mut |r| {
                let (Reached::Blob(id) | Reached::Chunk(id)) = r;
                bad |= self.bad.contains(&id);
                unverified |= self.unverified.contains(&id);
                if self.asked.contains(&id) {
                    referenced_asked.insert(id);
                }
                if out.rehashed_all {
                    // A lookup that fails cannot say the chunk was read.
                    out.rehashed_all = match locate(self.index, &id) {
                        Ok(Some(l)) => self.rehash.contains(&l.pack),
                        Ok(None) => true,
                        Err(_) => false,
                    };
                }
            });
            if bad {
                out.damaged.insert(e.path_lossy());
            } else if unverified {
                out.unreadable.insert(e.path_lossy());
            }
        }
        out
    }
}

/// Why a snapshot's `backup-metadata.json` is not usable, if it is not.
pub fn metadata_problem(store: &Store, stamp: &Stamp) -> Option<String> {
    let summary = Object::summary(stamp);
    match store.object_exists(&summary) {
        Ok(false) => Some(format!(
            "metadata_missing: {}",
            store.display(&summary).display()
        )),
        Ok(true) => store
            .read_metadata(stamp)
            .err()
            .map(|e| format!("metadata_corrupt: {e}")),
        Err(e) => Some(format!(
            "metadata_unreadable: {}: {e}",
            store.display(&summary).display()
        )),
    }
}

/// What the mark of the selected snapshots found.
struct Marked {
    readable: Vec<Stamp>,
    unreadable: Vec<Stamp>,
    lists_corrupt: BTreeSet<Id>,
    /// Per snapshot, its files whose recorded size is not what their
    /// chunks hold.
    wrong_sizes: BTreeMap<String, Vec<SizeMismatch>>,
    joined: Joined,
}

/// Marks every chunk and list blob the `stamps`' trees reach (each
/// distinct subtree once, sorted on disk rather than held in a set) and
/// joins them with the index. A snapshot whose manifest does not read is
/// reported in `report`; a list blob that does not read is referenced
/// (missing, or corrupt below). Each file's recorded size is checked
/// against its chunks' raw bytes as the join adds them up (`sizes`).
fn mark_snapshots(
    store: &Store,
    index: &ChunkIndex,
    spill: &SpillDir,
    stamps: &[Stamp],
    report: &mut VerifyReport,
) -> Result<Marked> {
    let mut readable = Vec::new();
    let mut unreadable = Vec::new();
    let mut mark = Mark::<InLeaf, Numbered>::with(store, index, spill, Numbered::default());
    let mut sizes = Sizes::default();
    let mut lists_corrupt: BTreeSet<Id> = BTreeSet::new();
    for stamp in stamps {
        // The audit reads the store itself, never a remote store's cache.
        match store.read_manifest(stamp, ReadFrom::Store) {
            Ok(m) => {
                sizes.snapshot();
                for (at, e) in m.entries.iter().enumerate() {
                    let Some(f) = e.file() else { continue };
                    match mark.file_in(f, mark::in_leaf) {
                        Ok(flat) => sizes.walked(mark.walked(), at, f, flat),
                        Err(err) => {
                            if let Some((id, ChunkFault::Corrupt(_))) =
                                crate::store::error_fault(&err)
                            {
                                lists_corrupt.insert(id);
                            }
                        }
                    }
                }
                readable.push(stamp.clone());
            }
            Err(e @ (Error::SnapshotMissing { .. } | Error::ManifestCorrupt { .. })) => {
                let code = e.code();
                report.snapshots.insert(
                    stamp.to_string(),
                    SnapshotHealth {
                        ok: false,
                        error: Some(format!("{code}: {e}")),
                        ..SnapshotHealth::default()
                    },
                );
                if code == "manifest_corrupt" {
                    unreadable.push(stamp.clone());
                }
            }
            Err(e) => return Err(e),
        }
    }
    let (marked, numbered) = mark.finish_walked()?;
    let mut joined = join(index, spill, marked, numbered.len())?;
    let leaf_bytes = std::mem::take(&mut joined.leaf_bytes);
    let wrong_sizes = sizes.check(store, &numbered, leaf_bytes, &readable)?;
    Ok(Marked {
        readable,
        unreadable,
        lists_corrupt,
        wrong_sizes,
        joined,
    })
}
