//! `copy`: copies snapshots from one store to another, sending only the
//! chunks the destination lacks. Written against the [`Store`] API only, so
//! it works between any two stores (local or remote).
//!
//! Per snapshot, oldest first, each step durable before the next:
//! 1. skip it when the destination has that stamp already, for the same
//!    snapshot (its summary's facts agree); another snapshot under that
//!    stamp (two writers in one second) is a `copy_stamp_taken` failure,
//!    and an incomplete folder under it (on a bucket: another writer at
//!    work, or one stopped less than 15 minutes ago) a `copy_stamp_busy`
//!    failure;
//! 2. read its manifest and summary from the source;
//! 3. every chunk the destination lacks is read from the source, checked
//!    against its id (copy never propagates damage) and added to the
//!    destination's packs; the packs are flushed (fsync, rename);
//! 4. the manifest and summary are published under the same stamp.
//!
//! A copy killed at any point leaves at most complete, unreferenced packs
//! and temp files at the destination, never a snapshot without its chunks;
//! a rerun sends only what is still missing.
//!
//! Chunk ids: when both stores name chunks alike ([`Sealer::same_ids_as`]:
//! both unencrypted, or both under one master key) a chunk keeps its id.
//! Otherwise (plain to repokey, repokey to plain, two repokey stores with
//! different keys) every chunk the snapshot references is re-hashed with
//! the destination's id scheme and the manifest is rewritten with the new
//! ids. Either way each chunk is read and checked at the source (format-1
//! chunk or format-2 frame) and goes through the destination's packer,
//! which frames and encodes it with the destination's parameters: copying
//! a format-1 store into a new one upgrades its packs.
//!
//! Chunk lists: between two format-2 stores with the same ids and list
//! parameters, list blobs are blobs: the missing ones are sent like chunks
//! and the manifest's roots are kept (a tree whose root the destination
//! holds is not walked). Otherwise (a format-1 source: the upgrade path;
//! or other ids or parameters) each file's tree is built at the
//! destination from its ids, against the previously copied snapshot's
//! tree of the same path, as `create` builds it, a window of ids at a
//! time ([`rebuild`]).
//!
//! A re-keying copy takes what it can from a snapshot copied before
//! ([`baseline`]): unchanged files keep the destination's trees, and only
//! the chunks a file did not hold then are read and re-hashed.
//!
//! [`Sealer::same_ids_as`]: crate::store::seal::Sealer::same_ids_as

mod baseline;
mod rebuild;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::id::{Id, IdMap, IdSet};
use crate::progress::Progress;
use crate::stamp::Stamp;
use crate::store::audit_log::{self, CopyRecord, RecordedError};
use crate::store::index::{ChunkIndex, Location};
use crate::store::layout::PackLayout;
use crate::store::list_stream::{index_mut, index_ref};
use crate::store::lists::{ListRef, Reached};
use crate::store::lock::SharedLock;
use crate::store::manifest::{ChunkList, EntryKind, FileEntry, Manifest};
use crate::store::pack2::{EncodedFrame, FrameKind};
use crate::store::packer::Packer;
use crate::store::ReadFrom;
use crate::store::{ChunkFault, Object, Store};
use baseline::Baseline;
use std::cell::RefCell;
use std::sync::Arc;

/// Raw bytes of source chunks handled per parallel batch: bounds memory
/// (the batch read, and its re-encoded copy). 8 MiB was no faster on the
/// 130k runtime and held 4 MiB more.
const BATCH_BYTES: u64 = 4 << 20;
/// Decoded source frames kept while copying (see `copy`).
const COPY_FRAMES_KEPT: usize = 4;
/// Ids of a file's tree walked before what they name is sent (2 MiB of
/// ids; a frame moves whole only within one such window).
const SEND_IDS: usize = 65_536;
/// Failpoint (see [`crate::failpoint::hit`]): the process dies after a
/// snapshot's packs are durable at the destination and before its manifest
/// is published. `copy_after_packs:<stamp>` picks the snapshot.
pub const FAILPOINT_AFTER_PACKS: &str = "copy_after_packs";

#[derive(Clone, Debug)]
pub struct CopyOptions {
    pub lock_wait: Duration,
}

/// A snapshot whose copy failed (nothing was published for it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CopyFailure {
    pub stamp: String,
    /// The stable code of the error (`chunk_corrupt`, `chunk_missing`,
    /// `manifest_corrupt`, `object_corrupt`, ...).
    pub code: String,
    /// What is wrong, naming the chunk hash or the object.
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CopyResult {
    /// The source store's location.
    pub from: String,
    /// The destination store's location.
    pub to: String,
    /// Snapshots published at the destination by this run, oldest first.
    pub snapshots_copied: Vec<String>,
    /// Snapshots the destination already had (same stamp): left alone.
    pub snapshots_skipped: Vec<String>,
    /// Snapshots that could not be copied (damage at the source).
    pub snapshots_failed: Vec<CopyFailure>,
    /// Whether chunk ids were re-computed for the destination (the two
    /// stores name chunks differently: another encryption scheme or key).
    pub chunk_ids_rewritten: bool,
    /// Chunks written into new packs at the destination.
    pub chunks_sent: u64,
    /// Stored bytes of the new packs written at the destination.
    pub bytes_sent: u64,
    pub duration_ms: u64,
    /// The copy log record written in the source store (its object name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded: Option<String>,
    /// Problems that did not change the outcome (the copy record could not
    /// be written into a read-only source).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Process exit code for this result: 0, or the worst of the failures
    /// (3 for damage at the source, 1 otherwise).
    #[serde(skip)]
    pub exit_code: i32,
}

impl CopyResult {
    /// Counts `stamp` as a failure: its error in `snapshots_failed`, the
    /// exit code raised to at least 1.
    fn fail(&mut self, stamp: &Stamp, e: &Error) {
        self.exit_code = self.exit_code.max(e.exit_code().max(1));
        self.snapshots_failed.push(CopyFailure {
            stamp: stamp.to_string(),
            code: e.code().to_string(),
            message: e.to_string(),
        });
    }

    /// Judges a stamp the destination holds (`whole`: its folder is a
    /// complete snapshot, or why not): skipped when it is the source's
    /// snapshot, a `copy_stamp_taken` failure when it is another one taken
    /// in the same second.
    fn standing(&mut self, from: &Store, to: &Store, stamp: &Stamp, whole: Result<()>) {
        let verdict = whole.and_then(|()| match same_snapshot(from, to, stamp) {
            true => Ok(()),
            false => Err(Error::CopyStampTaken {
                stamp: stamp.to_string(),
                to: to.location_name(),
            }),
        });
        match verdict {
            Ok(()) => self.snapshots_skipped.push(stamp.to_string()),
            Err(e) => self.fail(stamp, &e),
        }
    }
}

/// Copies `stamps` (every snapshot of the source when empty) from `from` to
/// `to`, oldest first. A named stamp the source does not have is refused
/// before any work (`snapshot_missing`). Damage found at the
/// source fails the copy of that snapshot only (listed in
/// `snapshots_failed`); a failure at the destination stops the copy, and
/// the run is recorded in the source's copy log as failed, with the error.
pub fn copy(
    from: &Store,
    to: &Store,
    stamps: &[Stamp],
    opts: &CopyOptions,
    progress: &dyn Progress,
) -> Result<CopyResult> {
    let started = Instant::now();
    // The source is only read; copy only adds to the destination.
    let _from_lock = from.lock_shared_reader("copy (source)", opts.lock_wait)?;
    // Chunks are read in file order, a batch at a time: a frame is done
    // with long before four others are decoded (measured on the 130k
    // runtime: as fast as 8, and 4 MiB less).
    from.keep_decoded_frames(COPY_FRAMES_KEPT);
    let wanted = wanted_stamps(from, stamps)?;
    let mut result = CopyResult {
        from: from.location_name(),
        to: to.location_name(),
        snapshots_copied: Vec::new(),
        snapshots_skipped: Vec::new(),
        snapshots_failed: Vec::new(),
        chunk_ids_rewritten: !from.sealer().same_ids_as(to.sealer()),
        chunks_sent: 0,
        bytes_sent: 0,
        duration_ms: 0,
        recorded: None,
        warnings: Vec::new(),
        exit_code: 0,
    };
    // From here on the run is recorded in the source's copy log, failed
    // or not: a destination that stops answering must show in the log,
    // not only leave the last success to grow old.
    let run = copy_wanted(from, to, wanted, opts, progress, &mut result);
    result
        .snapshots_skipped
        .sort_by_key(|s| Stamp::parse(s).ok());
    record(from, &mut result, run.as_ref().err());
    run?;
    result.duration_ms = started.elapsed().as_millis() as u64;
    progress.finish();
    Ok(result)
}

/// The stamps to copy: those named, each checked to exist at the source
/// (`snapshot_missing` otherwise, before any work), or every snapshot of
/// the source; sorted, without repeats.
fn wanted_stamps(from: &Store, stamps: &[Stamp]) -> Result<Vec<Stamp>> {
    let mut wanted: Vec<Stamp> = stamps.to_vec();
    if wanted.is_empty() {
        wanted = from.list_snapshots()?.stamps;
    } else {
        for stamp in &wanted {
            if !from.snapshot_exists(stamp)? {
                return Err(Error::SnapshotMissing {
                    stamp: stamp.to_string(),
                });
            }
        }
        wanted.sort();
        wanted.dedup();
    }
    Ok(wanted)
}

/// Copies `wanted` into `to` under its lock, filling `result` as it goes
/// (so a run that fails half-way still says what it published).
fn copy_wanted(
    from: &Store,
    to: &Store,
    wanted: Vec<Stamp>,
    opts: &CopyOptions,
    progress: &dyn Progress,
    result: &mut CopyResult,
) -> Result<()> {
    let to_lock = to.lock_shared("copy", opts.lock_wait)?;
    let same_ids = from.sealer().same_ids_as(to.sealer());
    let keep_trees = same_ids
        && from.config().list_params().is_some()
        && from.config().list_params() == to.config().list_params();
    let pending: Vec<Stamp> = wanted
        .into_iter()
        .map(|s| to.snapshot_exists(&s).map(|there| (s, there)))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .filter_map(|(s, there)| {
            if !there {
                return Some(s);
            }
            result.standing(from, to, &s, Ok(()));
            None
        })
        .collect();

    if !pending.is_empty() {
        to.clean_tmp(None)?;
        let from_index = from.load_index()?;
        let to_index = RefCell::new(to.load_index_for_writes()?);
        let vouched = summaries_vouch(to, &*index_ref(&to_index)?);
        let trust_published = keep_trees && vouched;
        // Not from a bucket: its trees would come through the spool, whole
        // packs downloaded for their list blobs (about the last run's
        // upload, again); within a run, the builder reads them anyway.
        let baseline = (!same_ids && !to.is_remote())
            .then(|| Baseline::published(from, to, vouched))
            .flatten();
        let mut copier = Copier {
            from,
            to,
            to_lock: &to_lock,
            from_index: &from_index,
            to_index: &to_index,
            packer: Packer::new(to),
            ids: (!same_ids).then(IdMap::default),
            keep_trees,
            published_roots: if trust_published {
                published_roots(to)?
            } else {
                IdSet::default()
            },
            prev_trees: baseline.as_ref().map(Baseline::trees).unwrap_or_default(),
            baseline,
            chunks_sent: 0,
            move_frames: same_ids
                && match (&from.config().frames, &to.config().frames) {
                    (Some(from_frames), Some(to_frames)) => to_frames.takes_frames_of(from_frames),
                    _ => false,
                }
                && from.config().compression == to.config().compression,
            unmovable: Default::default(),
            layouts: Default::default(),
            progress,
        };
        for stamp in &pending {
            match copier.copy_snapshot(stamp)? {
                Outcome::Copied => result.snapshots_copied.push(stamp.to_string()),
                // Whole under that stamp by now, or someone's incomplete
                // folder (a writer at work, or one that stopped less than
                // the abandonment delay ago): never a skip then.
                Outcome::AlreadyThere => {
                    let whole = match to.snapshot_exists(stamp)? {
                        true => Ok(()),
                        false => Err(Error::CopyStampBusy {
                            stamp: stamp.to_string(),
                            to: to.location_name(),
                        }),
                    };
                    result.standing(from, to, stamp, whole);
                }
                Outcome::Failed(e) => result.fail(stamp, &e),
            }
        }
        // Chunks of a failed snapshot already in the open pack are sound:
        // kept, so a rerun after the source is repaired need not send them.
        copier.packer.flush(&mut *index_mut(&to_index)?)?;
        result.chunks_sent = copier.chunks_sent;
        result.bytes_sent = copier.packer.bytes_written();
    }
    Ok(())
}

/// The summary facts that never change after a snapshot is taken (tags
/// do): equal in a copy, whatever the stores' keys.
const SNAPSHOT_FACTS: [&str; 5] = [
    "created_at",
    "db_size_bytes",
    "chroma_snapshot_files",
    "chroma_snapshot_bytes",
    "chunks_total",
];

/// Whether the destination's `stamp` is the source's snapshot (copied
/// earlier) rather than another one taken in the same second. Reading two
/// small summaries keeps a rerun cheap; a summary that cannot be read
/// leaves the destination alone, as before (verify reports the damage).
fn same_snapshot(from: &Store, to: &Store, stamp: &Stamp) -> bool {
    match (from.read_metadata(stamp), to.read_metadata(stamp)) {
        (Ok(a), Ok(b)) => SNAPSHOT_FACTS.iter().all(|k| a[k] == b[k]),
        _ => true,
    }
}

/// Writes the run into the source's copy log (under the source's lock):
/// the newest stamp the destination now holds from it, and `failure`
/// when the run stopped on an error. A record that cannot be written is
/// a warning: the copy itself stands.
fn record(from: &Store, result: &mut CopyResult, failure: Option<&Error>) {
    let newest_stamp = result
        .snapshots_copied
        .iter()
        .chain(&result.snapshots_skipped)
        .filter_map(|s| Stamp::parse(s).ok())
        .max()
        .map(|s| s.to_string());
    let rec = CopyRecord {
        to: result.to.clone(),
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        stamps_copied: result.snapshots_copied.clone(),
        newest_stamp,
        ok: failure.is_none() && result.snapshots_failed.is_empty(),
        error: failure.map(|e| RecordedError {
            code: e.code().to_string(),
            message: e.to_string(),
        }),
    };
    match audit_log::append_copy(from, &rec) {
        Ok(name) => result.recorded = Some(name),
        Err(e) => {
            let warning = format!("copy record not written: {}: {e}", e.code());
            // A failed run returns its error, not the result: said here.
            if failure.is_some() {
                tracing::warn!("{warning}");
            }
            result.warnings.push(warning);
        }
    }
}

enum Outcome {
    Copied,
    /// The destination refused the publish: the stamp was taken meanwhile
    /// (a concurrent copy or create), or its folder is another writer's,
    /// incomplete. Judged by [`CopyResult::standing`].
    AlreadyThere,
    /// Damage at the source: nothing was published for this snapshot.
    Failed(Error),
}

struct Copier<'a> {
    from: &'a Store,
    to: &'a Store,
    /// The destination's lock: publishing checks it is still held.
    to_lock: &'a SharedLock,
    from_index: &'a ChunkIndex,
    /// The destination's index: the packer adds to it while a tree being
    /// built reads its old version through it (see `store::list_stream`).
    to_index: &'a RefCell<ChunkIndex>,
    packer: Packer<'a>,
    /// Source id to destination id of the chunks the current window of a
    /// file sent or found (see [`Copier::send_rebuilt`]), when the stores
    /// name chunks differently (None when the ids are the same). Emptied
    /// for each window: memory follows the window, not the run.
    ids: Option<IdMap<Id>>,
    /// Trees are sent as they are (see the module's doc).
    keep_trees: bool,
    /// Roots of the trees of snapshots published at the destination: whole
    /// below (a snapshot is published only once its packs are durable).
    published_roots: IdSet,
    /// The destination trees of the snapshot copied last, by path: the old
    /// trees new ones are built against.
    prev_trees: std::collections::HashMap<Vec<u8>, ListRef>,
    /// A re-keying copy's snapshot copied before (this run's last, or one
    /// both stores held when it began): what need not be read again.
    baseline: Option<Baseline>,
    chunks_sent: u64,
    /// Frames move whole (see [`Copier::send`]): both stores are format 2,
    /// name and seal chunks alike and frame and compress alike.
    move_frames: bool,
    /// Source frames (pack row, offset) found unmovable.
    unmovable: std::collections::HashSet<(u32, u32)>,
    layouts: std::collections::HashMap<u32, Arc<PackLayout>>,
    progress: &'a dyn Progress,
}

/// Whether the destination's published snapshots vouch for the trees they
/// hold (a tree one of them holds is then taken as whole without a look).
/// Not while packs are found damaged; not once packs were found lost
/// (gone without this host's gc deleting them: by hand, bit rot, a gc on
/// another host) until a verify of the whole store that started with that
/// mark found every snapshot whole and cleared it (a snapshot whose
/// summary says validated may have lost chunks since); and not while the
/// newest verify of the whole store in its log failed (a cache made afresh
/// knows of no earlier loss). Until then every chunk is looked up, and
/// what is gone is sent again from the source.
fn summaries_vouch(to: &Store, to_index: &ChunkIndex) -> bool {
    to_index.packs_lost == 0
        && to_index.damaged.is_empty()
        && to_index.losses_seen.is_none()
        && crate::store::audit_log::newest_whole_verify_ok(to) != Some(false)
}

/// The tree roots of every snapshot listed at `to` whose summary says it
/// validated. A snapshot `verify --repair` found damaged there (or whose
/// summary or manifest does not read) vouches for nothing: its trees may
/// have lost blobs or chunks, which the copy then sends again from the
/// source (as `create` re-reads such a snapshot's files).
fn published_roots(to: &Store) -> Result<IdSet> {
    let mut roots = IdSet::default();
    for stamp in to.list_snapshots()?.stamps {
        if !to.summary_says_validated(&stamp) {
            continue;
        }
        if let Ok(m) = to.read_manifest(&stamp, ReadFrom::Cache) {
            roots.extend(tree_roots(&m));
        }
    }
    Ok(roots)
}

fn tree_roots(m: &Manifest) -> impl Iterator<Item = Id> + '_ {
    m.entries.iter().filter_map(|e| match &e.file()?.list {
        ChunkList::Tree(r) => r.root,
        ChunkList::Ids(_) => None,
    })
}

/// Source pack layouts kept for moving frames (a manifest's files are
/// mostly in consecutive packs).
const LAYOUTS_KEPT: usize = 8;

/// What one batch sends: frames to move whole and chunks to send one by
/// one, with every chunk id either brings (so none goes twice).
#[derive(Default)]
struct Batch {
    frames: Vec<(Id, Arc<PackLayout>, usize)>,
    order: Vec<Id>,
    chunks: IdSet,
    /// Raw bytes of the batch.
    bytes: u64,
}

impl Batch {
    fn has(&self, id: &Id) -> bool {
        self.chunks.contains(id)
    }
}

/// A source chunk ready for the destination.
struct Ready {
    id: Id,
    raw: Vec<u8>,
}

impl Copier<'_> {
    /// Copies one snapshot. The outer error stops the whole copy (the
    /// destination failed); damage at the source is an `Outcome::Failed`.
    fn copy_snapshot(&mut self, stamp: &Stamp) -> Result<Outcome> {
        crate::os::check_interrupted()?;
        let (mut manifest, mut metadata) = match self.read_source(stamp) {
            Ok(v) => v,
            Err(e) => return Ok(Outcome::Failed(e)),
        };
        let as_read = self
            .ids
            .is_some()
            .then(|| baseline::source_files(&manifest));
        if let Err(e) = self.send_snapshot(stamp, &mut manifest)? {
            return Ok(Outcome::Failed(e));
        }
        self.packer.flush(&mut *index_mut(self.to_index)?)?;
        crate::failpoint::hit(|| FAILPOINT_AFTER_PACKS.to_string());
        crate::failpoint::hit(|| format!("{FAILPOINT_AFTER_PACKS}:{stamp}"));
        if self
            .to
            .publish_snapshot_as(self.to_lock, stamp, &mut manifest, &mut metadata)?
        {
            self.published_roots.extend(tree_roots(&manifest));
            if let Some(as_read) = as_read {
                self.baseline = Some(Baseline::copied(as_read, &manifest));
            }
            Ok(Outcome::Copied)
        } else {
            Ok(Outcome::AlreadyThere)
        }
    }

    fn read_source(&self, stamp: &Stamp) -> Result<(Manifest, serde_json::Value)> {
        let manifest = self.from.read_manifest(stamp, ReadFrom::Cache)?;
        let metadata = self.from.read_metadata(stamp)?;
        Ok((manifest, metadata))
    }

    /// Sends what the destination lacks of `manifest`, one file at a time
    /// (memory follows the largest file, not the snapshot), and when trees
    /// are rebuilt builds each file's tree at the destination right after
    /// its chunks, so the manifest then holds the new roots. The inner
    /// error is damage at the source (the first chunk or list blob found
    /// missing or corrupt); the outer one a failure at the destination.
    fn send_snapshot(&mut self, stamp: &Stamp, manifest: &mut Manifest) -> Result<Result<()>> {
        let total = manifest
            .entries
            .iter()
            .filter_map(|e| e.file())
            .map(|f| f.size)
            .sum();
        self.progress.phase(&format!("copy {stamp}"), Some(total));
        let mut tree_seen = IdSet::default();
        let mut trees = std::collections::HashMap::new();
        for entry in manifest.entries.iter_mut() {
            let EntryKind::File(f) = &mut entry.kind else {
                continue;
            };
            if self.keep_trees {
                if let Err(e) = self.send_tree(f, &mut tree_seen)? {
                    return Ok(Err(e));
                }
            } else {
                if let Some(list) = self
                    .baseline
                    .as_ref()
                    .and_then(|b| b.unchanged(&entry.path, f))
                {
                    f.list = ChunkList::Tree(list);
                    trees.insert(entry.path.clone(), list);
                    self.progress.advance(f.size);
                    continue;
                }
                match self.send_rebuilt(&entry.path, f)? {
                    Ok(built) => trees.insert(entry.path.clone(), built),
                    Err(e) => return Ok(Err(e)),
                };
            }
            self.progress.advance(f.size);
        }
        if !self.keep_trees {
            self.prev_trees = trees;
        }
        Ok(Ok(()))
    }

    /// Sends what the destination lacks of file `f`'s tree as it is: its
    /// list blobs and chunks, [`SEND_IDS`] at a time as the walk reaches
    /// them (memory does not follow the file's size). Nothing when a
    /// snapshot published at the destination holds the root: it holds the
    /// whole tree then (a root merely present may be a cut copy's, its
    /// subtree partly sent).
    fn send_tree(&mut self, f: &FileEntry, tree_seen: &mut IdSet) -> Result<Result<()>> {
        if let ChunkList::Tree(ListRef {
            root: Some(root), ..
        }) = &f.list
        {
            if self.published_roots.contains(root) {
                return Ok(Ok(()));
            }
        }
        let (from, from_index) = (self.from, self.from_index);
        let mut ids = Vec::new();
        let mut stopped: Option<Result<Result<()>>> = None;
        let walked = from.file_reach(from_index, f, tree_seen, &mut |r| {
            let (Reached::Blob(id) | Reached::Chunk(id)) = r;
            if stopped.is_some() {
                return;
            }
            ids.push(id);
            if ids.len() >= SEND_IDS {
                match self.send(&ids) {
                    Ok(Ok(())) => ids.clear(),
                    failed => stopped = Some(failed),
                }
            }
        });
        if let Some(failed) = stopped {
            return failed;
        }
        if let Err(e) = walked {
            return Ok(Err(e));
        }
        self.send(&ids)
    }

    /// Sends the chunks of `ids` the destination lacks, in batches of about
    /// [`BATCH_BYTES`] read and checked in parallel. An id is skipped once
    /// the destination has it (sent earlier in this run included: the
    /// packer knows its pending chunks), so each goes once. With
    /// `move_frames`, a source frame none of whose chunks the destination
    /// has moves whole, as it is stored (checked, not re-encoded).
    fn send(&mut self, ids: &[Id]) -> Result<Result<()>> {
        let mut batch = Batch::default();
        for (at, id) in ids.iter().enumerate() {
            let todo = match &self.ids {
                None => !self.packer.has(&*index_ref(self.to_index)?, id)?,
                Some(ids) => !ids.contains_key(id),
            };
            if !todo || batch.has(id) {
                continue;
            }
            let loc = match self.from_index.locate(id) {
                Ok(loc) => loc,
                Err(f) => return Ok(Err(f.into_error(id))),
            };
            if !(self.move_frames
                && loc.in_frame()
                && self.try_take_frame(&loc, &ids[at..], &mut batch)?)
            {
                batch.chunks.insert(*id);
                batch.order.push(*id);
                batch.bytes += loc.raw_len as u64;
            }
            if batch.bytes >= BATCH_BYTES {
                if let Err(e) = self.send_batch(&std::mem::take(&mut batch))? {
                    return Ok(Err(e));
                }
            }
        }
        self.send_batch(&batch)
    }

    /// Adds the source frame at `loc` to `batch` as a frame to move when
    /// its chunks are the next ones of the file (`ahead` starts with them:
    /// so the frame holds nothing this snapshot does not reference, and a
    /// copy of some snapshots sends no other one's chunks) and the
    /// destination lacks them all; false otherwise: its chunks go one by
    /// one. A frame found unmovable is remembered.
    ///
    /// A first snapshot's frames are runs of its files and move; a day's
    /// new chunks are scattered through a file, so its frames do not, and
    /// are re-framed (a day is small).
    fn try_take_frame(&mut self, loc: &Location, ahead: &[Id], batch: &mut Batch) -> Result<bool> {
        let key = (loc.pack, loc.frame_offset);
        if self.unmovable.contains(&key) {
            return Ok(false);
        }
        let info = self.from_index.pack(loc.pack).clone();
        let layout = match self.layouts.get(&loc.pack) {
            Some(l) => l.clone(),
            None => {
                // Unreadable trailer: the chunk-by-chunk path reports it.
                let Ok(l) = self.from.read_pack_index(&Object::Pack(info.id), info.size) else {
                    self.unmovable.insert(key);
                    return Ok(false);
                };
                if self.layouts.len() >= LAYOUTS_KEPT {
                    self.layouts.clear();
                }
                let l = Arc::new(l);
                self.layouts.insert(loc.pack, l.clone());
                l
            }
        };
        let Some(fi) = layout.frame_at(loc.frame_offset) else {
            self.unmovable.insert(key);
            return Ok(false);
        };
        let chunks = layout.frame_chunks(fi);
        let to_index = index_ref(self.to_index)?;
        let to_index = &*to_index;
        let runs_ahead =
            chunks.len() <= ahead.len() && chunks.iter().zip(ahead).all(|(c, id)| c.id == *id);
        let mut clash = !runs_ahead;
        for c in chunks {
            if clash {
                break;
            }
            clash = batch.has(&c.id) || self.packer.has(to_index, &c.id)?;
        }
        if clash {
            self.unmovable.insert(key);
            return Ok(false);
        }
        batch.chunks.extend(chunks.iter().map(|c| c.id));
        batch.bytes += layout.frames[fi].raw_len as u64;
        batch.frames.push((info.id, layout, fi));
        Ok(true)
    }

    fn send_batch(&mut self, batch: &Batch) -> Result<Result<()>> {
        crate::os::check_interrupted()?;
        let moved = match self.read_frames(&batch.frames) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        for frame in moved {
            self.chunks_sent += frame.chunks.len() as u64;
            self.packer
                .add_frame(&mut *index_mut(self.to_index)?, frame)?;
        }
        let ready = match self.prepare(&batch.order) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        for r in ready.into_iter().flatten() {
            if self
                .packer
                .add_raw(&mut *index_mut(self.to_index)?, r.id, &r.raw)?
            {
                self.chunks_sent += 1;
            }
        }
        Ok(Ok(()))
    }

    /// Reads the frames to move in parallel, each decoded and every chunk
    /// re-hashed (copy never propagates damage), and returns them as they
    /// are stored.
    fn read_frames(&self, frames: &[(Id, Arc<PackLayout>, usize)]) -> Result<Vec<EncodedFrame>> {
        let from = self.from;
        frames
            .par_iter()
            .map(|(pack, layout, fi)| {
                let f = &layout.frames[*fi];
                let chunks = layout.frame_chunks(*fi).to_vec();
                let first = chunks.first().map(|c| c.id).unwrap_or(Id([0; 32]));
                let stored = from
                    .read_object_range(&Object::Pack(*pack), f.offset as u64, f.stored_len as usize)
                    .map_err(|e| {
                        ChunkFault::of_read_error(from.display(&Object::Pack(*pack)), &e)
                            .into_error(&first)
                    })?;
                let decoded = from
                    .decode_frame(layout, *fi, stored.clone())
                    .map_err(|e| ChunkFault::Corrupt(e.to_string()).into_error(&first))?;
                for (i, c) in chunks.iter().enumerate() {
                    if !matches!(decoded.chunk(i), Some(Ok(_))) {
                        return Err(
                            ChunkFault::Corrupt("content does not match its hash".into())
                                .into_error(&c.id),
                        );
                    }
                }
                Ok(EncodedFrame {
                    kind: FrameKind::Data,
                    codec: f.codec,
                    chunks,
                    stored,
                })
            })
            .collect()
    }

    /// Reads and checks a batch of source chunks in parallel and turns each
    /// into what the destination stores (raw: the destination's packer
    /// frames and encodes it). None for a chunk the destination
    /// turns out to have (after re-hashing). Records new id mappings.
    fn prepare(&mut self, batch: &[Id]) -> Result<Vec<Option<Ready>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let from = self.from;
        let to = self.to;
        let index = self.from_index;
        let rewrite = self.ids.is_some();
        let packer = &self.packer;
        let to_index = index_ref(self.to_index)?;
        let to_index = &*to_index;
        let prepared: Vec<std::result::Result<(Id, Option<Ready>), Error>> = batch
            .par_iter()
            .map(|id| {
                // Read through the source's frame cache: a frame of
                // consecutive chunks is decoded (and re-hashed) once.
                let raw = from.read_chunk(index, id).map_err(|f| f.into_error(id))?;
                if !rewrite {
                    return Ok((*id, Some(Ready { id: *id, raw })));
                }
                let new_id = to.sealer().chunk_id(&raw);
                if packer.has(to_index, &new_id)? {
                    return Ok((new_id, None));
                }
                Ok((new_id, Some(Ready { id: new_id, raw })))
            })
            .collect();
        let mut out = Vec::with_capacity(prepared.len());
        for (src, p) in batch.iter().zip(prepared) {
            let (new_id, ready) = p?;
            if let Some(ids) = &mut self.ids {
                ids.insert(*src, new_id);
            }
            out.push(ready);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
