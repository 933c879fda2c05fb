//! The audit: every pack read and every chunk checked against its id,
//! every manifest and summary read; what is damaged, missing or unreadable.

use rayon::prelude::*;
use std::collections::{BTreeSet, HashSet};
use std::io::Read;

use crate::error::{Error, Result};
use crate::id::{Id, IdSet};
use crate::ops::mark::{self, locate, Mark, SpillDir};
use crate::stamp::Stamp;
use crate::store::chunk_index::Spillable;
use crate::store::index::ChunkIndex;
use crate::store::lists::Reached;
use crate::store::manifest::Manifest;
use crate::store::pack;
use crate::store::pack2::Codec;
use crate::store::{Check, ChunkFault, Object, PackLayout, ReadFrom, Store};

use super::report::{SampleReport, SnapshotHealth, VerifyReport};
use super::sample::{Candidate, Sample};

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
    /// The packs re-hashed end to end (ids).
    pub packs_read: Vec<Id>,
}

/// What checking one pack found.
#[derive(Default)]
struct PackCheck {
    /// Bytes of the pack file read.
    bytes: u64,
    /// Chunks re-hashed.
    chunks: u64,
    /// Chunks that do not decode to their id (or cannot be read).
    corrupt: Vec<Id>,
    /// The first fault of the pack's structure: trailer, index, layout,
    /// header, length, readability.
    structural: Option<String>,
    /// The file's hash is not its name (checked when nothing else is wrong).
    name_mismatch: bool,
    /// The first I/O error reading the pack (not damage), and the chunks
    /// it left unchecked.
    unreadable: Option<String>,
    unverified: Vec<Id>,
    /// Stored bytes of all its frames.
    total_stored: u64,
}

impl PackCheck {
    fn damaged(&mut self, detail: String) {
        if self.structural.is_none() {
            self.structural = Some(detail);
        }
    }

    fn unreadable(&mut self, e: &std::io::Error, unchecked: impl IntoIterator<Item = Id>) {
        if self.unreadable.is_none() {
            self.unreadable = Some(pack::unreadable(e));
        }
        self.unverified.extend(unchecked);
    }

    /// What is wrong with the pack, if anything.
    fn detail(&self) -> Option<String> {
        if let Some(s) = &self.structural {
            return Some(s.clone());
        }
        if !self.corrupt.is_empty() {
            let mut ids: Vec<String> = self.corrupt.iter().take(3).map(Id::to_hex).collect();
            if self.corrupt.len() > 3 {
                ids.push("...".into());
            }
            return Some(format!(
                "{} corrupt chunk(s): {}",
                self.corrupt.len(),
                ids.join(", ")
            ));
        }
        self.name_mismatch
            .then(|| "pack content does not match its name".to_string())
    }

    /// Whether the damage concerns an audit of what `referenced` accepts
    /// only: damage to the pack as a whole does, a corrupt chunk only if
    /// referenced.
    fn concerns(&self, referenced: impl Fn(&Id) -> bool) -> bool {
        // A corrupt chunk explains a name mismatch on its own.
        self.structural.is_some()
            || (self.name_mismatch && self.corrupt.is_empty())
            || self.corrupt.iter().any(referenced)
    }
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
    let mut readable = Vec::new();
    let mut unreadable = Vec::new();
    // Referenced: every chunk and every list blob the trees reach (delta
    // chains included), each distinct subtree walked once, sorted on disk
    // rather than held in a set. A list blob that does not read is
    // referenced (missing, or corrupt below).
    let index = store.load_index_rechecked()?;
    let spill = SpillDir::for_store(store)?;
    let mut mark = Mark::<Id>::new(store, &index, &spill);
    let mut lists_corrupt: BTreeSet<Id> = BTreeSet::new();
    for stamp in &stamps {
        // The audit reads the store itself, never a remote store's cache.
        match store.read_manifest(stamp, ReadFrom::Store) {
            Ok(m) => {
                for f in m.entries.iter().filter_map(|e| e.file()) {
                    let walked = mark.file(f, mark::any_id);
                    if let Some((id, ChunkFault::Corrupt(_))) =
                        walked.err().as_ref().and_then(crate::store::error_fault)
                    {
                        lists_corrupt.insert(id);
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
    let Joined {
        missing,
        pack_live,
        live_stored,
    } = join(&index, &spill, mark.finish()?)?;

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
    checks.extend(rehash_packs(store, &index, &hashed)?);

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
        if check.unreadable.is_none() && rehash.contains(p) {
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
    for (stamp, files) in files_of {
        let metadata_error = metadata_problem(store, &stamp);
        let ok =
            files.damaged.is_empty() && metadata_error.is_none() && files.unreadable.is_empty();
        if sample.is_none() || files.rehashed_all {
            covered.insert(stamp.to_string(), ok);
        }
        report.snapshots.insert(
            stamp.to_string(),
            SnapshotHealth {
                ok,
                damaged_files: files.damaged.into_iter().collect(),
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
}

/// Resolves each referenced id (sorted, each once) through the index, then
/// sums the live bytes per pack and frame from a second sort by place.
fn join(index: &ChunkIndex, spill: &SpillDir, referenced: mark::Marked<Id>) -> Result<Joined> {
    let npacks = index.packs().len();
    let mut joined = Joined {
        missing: BTreeSet::new(),
        pack_live: vec![0; npacks],
        live_stored: vec![0; npacks],
    };
    let mut places = spill.sorter::<LiveChunk>();
    // A merge of two sorted streams, the referenced ids and the index's
    // records: sequential reads of the index cache, no lookup per id.
    let mut records = index.iter()?.peekable();
    for id in referenced {
        let id = id?;
        let mut found = None;
        while let Some(item) = records.peek() {
            match item {
                Ok((rid, _)) if *rid < id => {}
                Ok((rid, loc)) => {
                    found = (*rid == id).then_some(*loc);
                    break;
                }
                Err(_) => {}
            }
            if let Some(Err(e)) = records.next() {
                return Err(e);
            }
        }
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
    }
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
                close(frame.take(), &mut joined);
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
    close(frame, &mut joined);
    Ok(joined)
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

/// Stored bytes of the frames handed over at once when re-hashing: they
/// are decoded and checked in parallel while the next ones are read.
/// Frames are up to about 1 MiB, so a batch holds a few for each core;
/// the other pack being re-hashed keeps a core busy when one idles.
const BLOCK: usize = 3 << 20;
/// Packs re-hashed at once, whatever the number of cores (memory stays a
/// few blocks each). With one, a pack's last frames and the next one's
/// first reads left a core idle: on the 130k runtime two took verify
/// from 1.09-1.16 s to 0.84-0.99 s, and its peak from 44 to 49 MiB.
const PACKS_AT_ONCE: usize = 2;

/// Re-hashes `packs` ([`check_pack`]), [`PACKS_AT_ONCE`] at a time, each
/// streamed by its own reader thread with its frames decoded in parallel
/// on the shared pool. Results in the order of `packs`.
fn rehash_packs(store: &Store, index: &ChunkIndex, packs: &[u32]) -> Result<Vec<(u32, PackCheck)>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done: Vec<std::sync::Mutex<Option<PackCheck>>> =
        packs.iter().map(|_| Default::default()).collect();
    let interrupted = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..PACKS_AT_ONCE.min(packs.len()))
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    loop {
                        let at = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&p) = packs.get(at) else {
                            return Ok(());
                        };
                        crate::os::check_interrupted()?;
                        let check = check_pack(store, index, p, true);
                        if let Ok(mut slot) = done[at].lock() {
                            *slot = Some(check);
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            // A panicked worker's packs are caught below, by their slots.
            .map(|w| w.join().unwrap_or(Ok(())))
            .find(|r| r.is_err())
    });
    if let Some(Err(e)) = interrupted {
        return Err(e);
    }
    // A pack without a result (its worker panicked) fails the audit by
    // name: it is never passed over as checked.
    packs
        .iter()
        .zip(done)
        .map(|(&p, slot)| match slot.into_inner().ok().flatten() {
            Some(check) => Ok((p, check)),
            None => Err(Error::ReaderPanicked {
                path: store.display(&Object::Pack(index.pack(p).id)),
            }),
        })
        .collect()
}
/// The reader's buffer: small frames (format 1: one chunk each) are read
/// through it, large ones straight into their own buffers.
const READ_BUF: usize = 256 << 10;

/// Checks one pack. Always its structure: the trailer and index read, the
/// frames (format-1 chunks) tile the blob area exactly, raw frames have
/// their recorded length, the header is there. With `rehash`, it streams
/// the whole file: its hash must be its name, every frame must decode and
/// every chunk in it must hash to its id (a frame that does not decode
/// makes every chunk in it corrupt). Memory is bounded by one window.
fn check_pack(store: &Store, index: &ChunkIndex, p: u32, rehash: bool) -> PackCheck {
    let info = index.pack(p);
    let pack = Object::Pack(info.id);
    let mut check = PackCheck::default();
    let layout = match store.read_pack_layout(&pack, info.size, Check::Strict) {
        Ok(l) => l,
        Err(detail) => {
            // A cache that does not read names no chunks: the pack is
            // still reported, by name.
            let ids = index.ids_in_pack(p).unwrap_or_default();
            if pack::is_unreadable(&detail) {
                check.unreadable = Some(detail);
                check.unverified = ids;
            } else {
                check.structural = Some(detail);
                check.corrupt = ids;
            }
            return check;
        }
    };
    let magic = layout.magic();
    check.bytes = (info.size - layout.blob_end).min(info.size);
    let mut sorted: Vec<usize> = (0..layout.frames.len()).collect();
    sorted.sort_by_key(|&fi| (layout.frames[fi].offset, layout.frames[fi].stored_len));
    let ids_of = |fi: usize| layout.frame_chunks(fi).iter().map(|c| c.id);
    let first_id = |fi: usize| ids_of(fi).next().map(|id| id.to_hex()).unwrap_or_default();

    // Structure: frames back to back from the header to the index.
    let mut overlapping: Vec<usize> = Vec::new();
    let mut tiled: Vec<usize> = Vec::with_capacity(sorted.len());
    let mut pos = magic.len() as u64;
    let overhead = store.sealer().overhead() as u64;
    for &fi in &sorted {
        let f = &layout.frames[fi];
        let start = f.offset as u64;
        check.total_stored += f.stored_len as u64;
        if f.codec == Codec::Raw && f.stored_len as u64 != f.raw_len as u64 + overhead {
            check.damaged(format!(
                "index entry for chunk {} records {} raw bytes stored in {}",
                first_id(fi),
                f.raw_len,
                f.stored_len
            ));
            check.corrupt.extend(ids_of(fi));
        }
        if start < pos {
            check.damaged(format!(
                "index entries overlap at chunk {} (offset {start})",
                first_id(fi)
            ));
            overlapping.push(fi);
            continue;
        }
        if start > pos {
            check.damaged(format!(
                "bytes {pos}..{start} of the blob area belong to no index entry"
            ));
        }
        tiled.push(fi);
        pos = f.end();
    }
    if pos < layout.blob_end {
        check.damaged(format!(
            "bytes {pos}..{} of the blob area belong to no index entry",
            layout.blob_end
        ));
    }

    if !rehash {
        match store.read_object_range(&pack, 0, magic.len()) {
            Ok(h) if h == magic => {}
            Ok(_) => check.damaged("bad pack header".into()),
            Err(e) => check.unreadable(&e, layout.ids()),
        }
        check.bytes += magic.len() as u64;
        return check;
    }

    // Re-hash: a reader thread streams the file once, frame by frame into
    // buffers of their own, hashing it whole, while the frames it has read
    // are decoded and checked in parallel (no buffer is copied again).
    let reader = match store.open_object(&pack) {
        Ok(r) => r,
        Err(e) => {
            check.unreadable(&e, layout.ids());
            return check;
        }
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(usize, Vec<u8>)>>(1);
    let mut next = 0usize;
    let streamed = std::thread::scope(|scope| {
        let places = tiled.iter().map(|&fi| {
            let f = &layout.frames[fi];
            (fi, f.offset as u64, f.stored_len as usize)
        });
        let places: Vec<(usize, u64, usize)> = places.collect();
        let reading = scope.spawn(move || stream_frames(reader, magic.len(), &places, tx));
        for batch in rx {
            next += batch.len();
            decode_batch(store, &layout, batch, &mut check);
        }
        reading
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the reader thread failed")))
    });
    match streamed {
        Ok(Streamed { hash, len, header }) => {
            check.bytes = len;
            if header != magic {
                check.damaged("bad pack header".into());
            }
            if let Some(&fi) = tiled.get(next) {
                check.damaged(format!(
                    "truncated: chunk {} ends past the end of the file ({len} bytes)",
                    first_id(fi)
                ));
                check
                    .corrupt
                    .extend(tiled[next..].iter().flat_map(|&fi| ids_of(fi)));
            } else if len != info.size {
                check.damaged(format!(
                    "size changed while read: {len} bytes, listed {}",
                    info.size
                ));
            } else {
                check.name_mismatch = hash != info.id;
            }
        }
        Err(e) => {
            let unchecked = tiled[next.min(tiled.len())..]
                .iter()
                .flat_map(|&fi| ids_of(fi));
            check.unreadable(&e, unchecked);
        }
    }
    // Frames overlapping others: each checked on its own.
    for fi in overlapping {
        let f = &layout.frames[fi];
        match store.read_object_range(&pack, f.offset as u64, f.stored_len as usize) {
            Ok(stored) => {
                let bad = frame_faults(store, &layout, fi, stored);
                check.chunks += layout.frame_chunks(fi).len() as u64;
                check.corrupt.extend(bad);
            }
            Err(err) => check.unreadable(&err, ids_of(fi)),
        }
    }
    check.corrupt.sort();
    check.corrupt.dedup();
    check
}

/// Decodes and checks, in parallel, frames read whole (frame index,
/// stored bytes).
fn decode_batch(
    store: &Store,
    layout: &PackLayout,
    batch: Vec<(usize, Vec<u8>)>,
    check: &mut PackCheck,
) {
    check.chunks += batch
        .iter()
        .map(|(fi, _)| layout.frame_chunks(*fi).len() as u64)
        .sum::<u64>();
    let bad: Vec<Vec<Id>> = batch
        .into_par_iter()
        .map(|(fi, stored)| frame_faults(store, layout, fi, stored))
        .collect();
    check.corrupt.extend(bad.into_iter().flatten());
}

/// The chunks of frame `fi` that do not decode to their id: all of them
/// when the frame itself does not open or decode.
fn frame_faults(store: &Store, layout: &PackLayout, fi: usize, stored: Vec<u8>) -> Vec<Id> {
    match store.decode_frame(layout, fi, stored) {
        Ok(frame) => (0..frame.len())
            .filter(|&i| !matches!(frame.chunk(i), Some(Ok(_))))
            .filter_map(|i| frame.id(i))
            .collect(),
        Err(e) => layout
            .frame_chunks(fi)
            .iter()
            .map(|c| c.id)
            .chain(e.ids)
            .collect(),
    }
}

/// What reading a pack through found.
struct Streamed {
    /// blake3 of every byte read, and how many.
    hash: Id,
    len: u64,
    /// The first bytes (the magic's length, fewer if the file is shorter).
    header: Vec<u8>,
}

/// Reads a pack to its end, hashing every byte, and sends the frames at
/// `places` (frame index, offset, stored length; in file order, not
/// overlapping) in batches of about [`BLOCK`] bytes, each frame in a
/// buffer of its own. Bytes between frames are hashed only; the file
/// ending inside a frame stops the sending (that frame and the later ones
/// are not sent).
fn stream_frames(
    reader: Box<dyn Read + Send>,
    header_len: usize,
    places: &[(usize, u64, usize)],
    tx: std::sync::mpsc::SyncSender<Vec<(usize, Vec<u8>)>>,
) -> std::io::Result<Streamed> {
    let mut input = std::io::BufReader::with_capacity(READ_BUF, reader);
    let mut hasher = blake3::Hasher::new();
    let mut header = Vec::with_capacity(header_len);
    let mut len = (&mut input)
        .take(header_len as u64)
        .read_to_end(&mut header)? as u64;
    hasher.update(&header);
    let mut batch: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut batch_bytes = 0usize;
    let places = match len == header_len as u64 {
        true => places,
        false => &[],
    };
    for &(fi, offset, stored_len) in places {
        if offset > len {
            let gap = offset - len;
            let skipped = std::io::copy(&mut (&mut input).take(gap), &mut hasher)?;
            len += skipped;
            if skipped < gap {
                break;
            }
        }
        let mut stored = Vec::with_capacity(stored_len);
        let got = (&mut input)
            .take(stored_len as u64)
            .read_to_end(&mut stored)?;
        hasher.update(&stored);
        len += got as u64;
        if got < stored_len {
            break;
        }
        batch_bytes += stored_len;
        batch.push((fi, stored));
        if batch_bytes >= BLOCK {
            batch_bytes = 0;
            if tx.send(std::mem::take(&mut batch)).is_err() {
                return Err(std::io::Error::other("the checking side stopped"));
            }
        }
    }
    if !batch.is_empty() && tx.send(batch).is_err() {
        return Err(std::io::Error::other("the checking side stopped"));
    }
    drop(tx);
    // The rest: the index and trailer (or whatever follows), hashed.
    len += std::io::copy(&mut input, &mut hasher)?;
    Ok(Streamed {
        hash: Id::from(hasher.finalize()),
        len,
        header,
    })
}
