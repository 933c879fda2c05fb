//! The audit: every pack read and every chunk checked against its id,
//! every manifest and summary read; what is damaged, missing or unreadable.

use rayon::prelude::*;
use std::collections::{BTreeSet, HashSet};
use std::io::Read;

use crate::error::{Error, Result};
use crate::id::{Id, IdSet};
use crate::stamp::Stamp;
use crate::store::index::ChunkIndex;
use crate::store::lists::Reached;
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
    /// Stored bytes of all entries, and of those that are live here.
    total_stored: u64,
    live_stored: u64,
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

    /// Whether the damage concerns an audit of `referenced` only: damage to
    /// the pack as a whole does, a corrupt chunk only if referenced.
    fn concerns(&self, referenced: &IdSet) -> bool {
        // A corrupt chunk explains a name mismatch on its own.
        self.structural.is_some()
            || (self.name_mismatch && self.corrupt.is_empty())
            || self.corrupt.iter().any(|id| referenced.contains(id))
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
    // chains included), each distinct subtree walked once. A list blob
    // that does not read is referenced (missing, or corrupt below).
    let index = store.load_index_rechecked()?;
    let mut referenced = IdSet::default();
    let mut tree_seen = IdSet::default();
    let mut lists_corrupt: BTreeSet<Id> = BTreeSet::new();
    for stamp in &stamps {
        // The audit reads the store itself, never a remote store's cache.
        match store.read_manifest(stamp, ReadFrom::Store) {
            Ok(m) => {
                for f in m.entries.iter().filter_map(|e| e.file()) {
                    let walked = store.file_reach(&index, f, &mut tree_seen, &mut |r| {
                        let (Reached::Blob(id) | Reached::Chunk(id)) = r;
                        referenced.insert(id);
                    });
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

    // One sorted walk of the index (sequential reads) rather than a
    // lookup per referenced id: each pack's live bytes, and whether any
    // referenced id is missing (only then are they looked up one by one).
    let npacks = index.packs().len();
    let mut pack_live: Vec<u64> = vec![0; npacks];
    let mut indexed = 0usize;
    for item in index.iter()? {
        let (id, loc) = item?;
        if referenced.contains(&id) {
            indexed += 1;
            pack_live[loc.pack as usize] += loc.stored_share();
        }
    }
    let mut missing: BTreeSet<Id> = BTreeSet::new();
    if indexed < referenced.len() {
        for id in &referenced {
            if !index.contains(id)? {
                missing.insert(*id);
            }
        }
    }

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
    if index.damaged.iter().any(|d| pack::is_unreadable(&d.detail)) {
        unverified.extend(std::mem::take(&mut missing));
    }

    // Packs to check: all of them, or those holding a referenced chunk.
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
    // one after the other, each streamed by its own reader thread with its
    // chunks decoded in parallel, so memory stays a few blocks whatever the
    // number of cores.
    let (hashed, structural): (Vec<u32>, Vec<u32>) =
        to_check.iter().partition(|p| rehash.contains(p));
    let mut checks: Vec<(u32, PackCheck)> = structural
        .par_iter()
        .map(|&p| check_pack(store, &index, p, &referenced, false).map(|c| (p, c)))
        .collect::<Result<_>>()?;
    for p in hashed {
        crate::os::check_interrupted()?;
        checks.push((p, check_pack(store, &index, p, &referenced, true)?));
    }

    // A chunk is bad when the copy every reader uses (its index location)
    // is corrupt, or when it is missing.
    let mut bad: HashSet<Id> = missing.iter().copied().collect();
    bad.extend(lists_corrupt.iter().copied());
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
            if selected.is_none() || check.unverified.iter().any(|id| referenced.contains(id)) {
                report.unreadable.insert(name.clone(), detail.clone());
            }
        }
        for id in &check.unverified {
            if index.get(id)?.is_some_and(|loc| loc.pack == *p) {
                unverified.insert(*id);
            }
        }
        if let Some(detail) = check.detail() {
            if selected.is_none() || check.concerns(&referenced) {
                report.damaged_objects.push(name.clone());
                report.damage.insert(name, detail);
            }
        }
        for id in &check.corrupt {
            if selected.is_none() || referenced.contains(id) {
                corrupt.insert(*id);
            }
            if index.get(id)?.is_some_and(|loc| loc.pack == *p) {
                bad.insert(*id);
            }
        }
        if selected.is_none() {
            if pack_live[*p as usize] == 0 {
                report.orphans.push(Object::Pack(index.pack(*p).id).name());
                report.reclaimable_bytes += index.pack(*p).size;
            } else {
                report.reclaimable_bytes += check.total_stored.saturating_sub(check.live_stored);
            }
        }
    }
    report.corrupt = corrupt.iter().map(Id::to_hex).collect();
    report.missing = missing.iter().map(Id::to_hex).collect();

    let mut covered: std::collections::BTreeMap<String, bool> =
        unreadable.iter().map(|s| (s.to_string(), false)).collect();
    // Files are walked again only when something must be mapped to them.
    let per_file = sample.is_some() || !bad.is_empty() || !unverified.is_empty();
    for stamp in &readable {
        let m = store.read_manifest(stamp, ReadFrom::Cache)?;
        let files: Vec<(String, Vec<Id>)> = match per_file {
            true => m
                .entries
                .iter()
                .filter_map(|e| {
                    e.file()
                        .map(|f| (e.path_lossy(), file_ids(store, &index, f)))
                })
                .collect(),
            false => Vec::new(),
        };
        let mut rehashed_all = true;
        if sample.is_some() {
            for id in files.iter().flat_map(|(_, ids)| ids) {
                if index.get(id)?.is_some_and(|l| !rehash.contains(&l.pack)) {
                    rehashed_all = false;
                    break;
                }
            }
        }
        let damaged: BTreeSet<String> = files
            .iter()
            .filter(|(_, ids)| ids.iter().any(|id| bad.contains(id)))
            .map(|(p, _)| p.clone())
            .collect();
        let unreadable_files: BTreeSet<String> = files
            .iter()
            .filter(|(p, ids)| ids.iter().any(|id| unverified.contains(id)) && !damaged.contains(p))
            .map(|(p, _)| p.clone())
            .collect();
        let metadata_error = metadata_problem(store, stamp);
        let ok = damaged.is_empty() && metadata_error.is_none() && unreadable_files.is_empty();
        if rehashed_all {
            covered.insert(stamp.to_string(), ok);
        }
        report.snapshots.insert(
            stamp.to_string(),
            SnapshotHealth {
                ok,
                damaged_files: damaged.into_iter().collect(),
                error: None,
                metadata_error,
                unreadable_files: unreadable_files.into_iter().collect(),
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

/// Every id file `f` reaches: its list blobs and chunks (up to a list
/// blob that does not read, itself included).
fn file_ids(store: &Store, index: &ChunkIndex, f: &crate::store::manifest::FileEntry) -> Vec<Id> {
    let mut ids = Vec::new();
    let _ = store.file_reach(index, f, &mut IdSet::default(), &mut |r| {
        let (Reached::Blob(id) | Reached::Chunk(id)) = r;
        ids.push(id);
    });
    ids
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

/// Bytes of a pack read at once when re-hashing: the chunks inside a block
/// are decoded and checked in parallel while the next blocks are read.
const BLOCK: usize = 2 << 20;

/// Checks one pack. Always its structure: the trailer and index read, the
/// frames (format-1 chunks) tile the blob area exactly, raw frames have
/// their recorded length, the header is there. With `rehash`, it streams
/// the whole file: its hash must be its name, every frame must decode and
/// every chunk in it must hash to its id (a frame that does not decode
/// makes every chunk in it corrupt). Memory is bounded by one window.
fn check_pack(
    store: &Store,
    index: &ChunkIndex,
    p: u32,
    referenced: &IdSet,
    rehash: bool,
) -> Result<PackCheck> {
    let info = index.pack(p);
    let pack = Object::Pack(info.id);
    let mut check = PackCheck::default();
    let layout = match store.read_pack_layout(&pack, info.size, Check::Strict) {
        Ok(l) => l,
        Err(detail) => {
            let ids = index.ids_in_pack(p)?;
            if pack::is_unreadable(&detail) {
                check.unreadable = Some(detail);
                check.unverified = ids;
            } else {
                check.structural = Some(detail);
                check.corrupt = ids;
            }
            return Ok(check);
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
        let mut live_raw = 0u64;
        for c in layout.frame_chunks(fi) {
            if referenced.contains(&c.id) && index.get(&c.id)?.is_some_and(|l| l.pack == p) {
                live_raw += c.raw_len as u64;
            }
        }
        check.live_stored += PackLayout::share(f.stored_len, f.raw_len, live_raw);
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
        return Ok(check);
    }

    // Re-hash: a reader thread streams the file once in blocks, hashing it
    // whole, while the frames of each block are decoded and checked in
    // parallel.
    let reader = match store.open_object(&pack) {
        Ok(r) => r,
        Err(e) => {
            check.unreadable(&e, layout.ids());
            return Ok(check);
        }
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
    let mut next = 0usize;
    let streamed = std::thread::scope(|scope| {
        let hashing = scope.spawn(move || stream_blocks(reader, tx));
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_start = 0u64;
        let mut header_seen = false;
        for block in rx {
            if buf.is_empty() {
                buf = block;
            } else {
                buf.extend_from_slice(&block);
            }
            if !header_seen && buf_start == 0 && buf.len() >= magic.len() {
                header_seen = true;
                if &buf[..magic.len()] != magic {
                    check.damaged("bad pack header".into());
                }
            }
            let buf_end = buf_start + buf.len() as u64;
            let ready = tiled[next..]
                .iter()
                .take_while(|&&fi| layout.frames[fi].end() <= buf_end)
                .count();
            decode_batch(
                store,
                &layout,
                &buf,
                buf_start,
                &tiled[next..next + ready],
                &mut check,
            );
            next += ready;
            // Keep only what the next frame still needs.
            let keep_from = tiled
                .get(next)
                .map(|&fi| (layout.frames[fi].offset as u64).max(buf_start))
                .unwrap_or(buf_end);
            let drop = ((keep_from - buf_start) as usize).min(buf.len());
            buf.drain(..drop);
            buf_start += drop as u64;
        }
        if !header_seen {
            check.damaged("bad pack header".into());
        }
        hashing
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the reader thread failed")))
    });
    match streamed {
        Ok((hash, len)) => {
            check.bytes = len;
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
    Ok(check)
}

/// Decodes and checks, in parallel, frames lying wholly in `buf` (which
/// starts at file offset `start`).
fn decode_batch(
    store: &Store,
    layout: &PackLayout,
    buf: &[u8],
    start: u64,
    batch: &[usize],
    check: &mut PackCheck,
) {
    let bad: Vec<Vec<Id>> = batch
        .par_iter()
        .map(|&fi| {
            let f = &layout.frames[fi];
            let from = (f.offset as u64 - start) as usize;
            let stored = buf[from..from + f.stored_len as usize].to_vec();
            frame_faults(store, layout, fi, stored)
        })
        .collect();
    check.chunks += batch
        .iter()
        .map(|&fi| layout.frame_chunks(fi).len() as u64)
        .sum::<u64>();
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

/// Reads a stream to its end in blocks, sending each on and hashing it.
/// Returns the hash of everything read and its length.
fn stream_blocks(
    mut reader: Box<dyn Read + Send>,
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
) -> std::io::Result<(Id, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    loop {
        let mut block = Vec::with_capacity(BLOCK);
        let n = (&mut reader).take(BLOCK as u64).read_to_end(&mut block)?;
        if n == 0 {
            break;
        }
        hasher.update(&block);
        len += n as u64;
        if tx.send(block).is_err() {
            break;
        }
    }
    Ok((Id::from(hasher.finalize()), len))
}
