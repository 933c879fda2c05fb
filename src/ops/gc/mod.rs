//! `gc`: gives the space of deleted snapshots back. It owns the store's
//! notion of live and dead data:
//!
//! - **Live chunk**: referenced by the manifest of any snapshot under
//!   `snapshots/`, including folders whose name is not a stamp but that
//!   hold a readable manifest (never deleted, so their data is kept too).
//!   If the manifest of any *stamp* cannot be read, gc refuses to delete
//!   anything ([`Error::GcUnsafe`]): its chunks cannot be told from garbage.
//! - **Home copy**: a chunk stored in several packs (two writers raced, or a
//!   gc was killed after rewriting) is live in one pack only: the copy in
//!   the pack with the highest live share (ties: pack name order) whose
//!   copy reads back whole: the home copy is re-hashed before the others
//!   are given up ([`copies`]). The other copies are dead. A damaged copy
//!   found so is named in the warnings and counted in `damaged_copies`
//!   (exit 3); when no copy reads back, every copy is kept.
//! - **Per pack**: no live chunk → the pack is deleted; live chunks below
//!   [`REWRITE_BELOW_LIVE_PERCENT`] of its chunk bytes → its live chunks are
//!   copied (each re-verified against its id) into new packs, which are made
//!   durable before the old pack is deleted; otherwise the pack is kept, its
//!   dead bytes reported as `dead_bytes_kept`.
//! - A store without a `snapshots/` folder is refused
//!   ([`Error::SnapshotsDirMissing`]): everything would look like garbage.
//! - Packs whose index cannot be read are never touched (`verify` reports
//!   them; repairing them is its business).
//! - **Grace period** ([`Store::gc_grace`]; 1 h on a remote store, none on
//!   a local one, `--grace-period` to change): a pack modified more
//!   recently than that is never deleted or rewritten. On a bucket, lock
//!   objects can lapse (a writer cut off longer than their lifetime); a
//!   create that started before the gc and has not yet written its
//!   manifest then still never loses a pack (the kopia rule). Snapshot
//!   folders a remote writer abandoned without a manifest are removed once
//!   older than the grace period.
//!
//! The dry run holds the shared store lock; `gc --confirm` holds the
//! exclusive lock from before marking until the last deletion, so no
//! `create` can add a reference meanwhile. Order of work under the lock:
//! remove temp leftovers, mark, delete dead packs (frees space first), copy
//! the live chunks of sparse packs, flush the new packs (fsync, rename),
//! then delete the sparse packs. A kill at any point leaves every snapshot
//! whole: at worst a chunk exists twice until the next gc.
//!
//! `verify`'s `reclaimable_bytes` equals `bytes_reclaimable +
//! dead_bytes_kept` of a dry run (stored chunk bytes; pack headers and
//! indexes aside) when no chunk is stored twice.

mod copies;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::id::Id;
use crate::ops::mark::{self, Mark, SpillDir};
use crate::stamp::Stamp;
use crate::store::index::ChunkIndex;
use crate::store::layout::{PackFormat, PackLayout};
use crate::store::lock::ExclusiveLock;
use crate::store::pack;
use crate::store::pack2::{ChunkEntry, DecodedFrame, EncodedFrame, FrameKind};
use crate::store::packer::Packer;
use crate::store::{audit_log, ReadFrom};
use crate::store::{ChunkFault, Dir, Object, Store};
use copies::{join_copies, Copy, CopyCheck};

/// A pack is rewritten when its live chunks make up less than this share
/// (in stored bytes) of its chunk bytes. At 50 % a rewrite at least halves
/// the pack, and every byte copied frees at least one byte.
pub const REWRITE_BELOW_LIVE_PERCENT: u64 = 50;

/// What gc will do with a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Keep,
    Delete,
    Rewrite,
}

/// One pack's verdict.
#[derive(Clone, Debug)]
pub struct PackPlan {
    pub id: Id,
    pub name: String,
    /// File size.
    pub size: u64,
    /// Stored bytes of all its frames (format-1 chunks).
    pub chunk_bytes: u64,
    /// The live chunks' share of those bytes, for the live chunks whose
    /// home is this pack (a frame's stored bytes split by raw bytes).
    pub live_bytes: u64,
    /// Rewrite only: the pack's layout and the live chunks whose home is
    /// this pack (indexes into its chunks), copied into new frames.
    pub live: Option<(PackLayout, Vec<usize>)>,
    pub chunks: u64,
    pub action: Action,
}

/// A pack gc leaves alone because its index cannot be read.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SkippedPack {
    pub name: String,
    pub detail: String,
}

/// The marking and the verdicts, before anything is deleted.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Snapshots whose manifests were marked.
    pub snapshots_marked: Vec<String>,
    /// Unparseable folders whose manifest kept chunks live.
    pub protected_unparseable: Vec<String>,
    pub packs: Vec<PackPlan>,
    pub damaged: Vec<SkippedPack>,
    pub chunks_live: u64,
    pub chunks_dead: u64,
    /// Referenced chunks found in no readable pack (verify names them).
    pub chunks_missing: u64,
    /// Copies of chunks stored twice that gc would have kept but that do
    /// not read back whole (another copy is kept; exit 3).
    pub damaged_copies: u64,
    /// Copies of chunks stored twice that could not be read to check them
    /// (every copy of those chunks is kept; exit 1).
    pub unreadable_copies: u64,
    pub warnings: Vec<String>,
    /// Packs that would go but are younger than the grace period.
    pub packs_within_grace: u64,
    /// Remote snapshot folders without a manifest, older than the grace
    /// period (a writer died before finishing them).
    pub abandoned_folders: Vec<String>,
    /// Why packs to rewrite were kept: their index read for the mark but
    /// not when read again for the rewrite.
    pub unread_on_rewrite: Vec<String>,
}

impl Plan {
    pub fn with_action(&self, action: Action) -> impl Iterator<Item = &PackPlan> {
        self.packs.iter().filter(move |p| p.action == action)
    }

    /// Whole dead packs plus the dead chunk bytes of sparse packs.
    pub fn bytes_reclaimable(&self) -> u64 {
        self.packs
            .iter()
            .map(|p| match p.action {
                Action::Delete => p.size,
                Action::Rewrite => p.chunk_bytes - p.live_bytes,
                Action::Keep => 0,
            })
            .sum()
    }

    /// The exit code the plan alone calls for: 3 when it found damage (a
    /// copy gc would have kept does not read back whole, or a pack's index
    /// does not read as one), 1 when the storage failed to deliver a copy
    /// or a pack's index, else 0. Either way gc did its work around them:
    /// the code is for an operator who reads only exit codes.
    pub fn exit_code(&self) -> i32 {
        let details = || {
            let damaged = self.damaged.iter().map(|p| p.detail.as_str());
            damaged.chain(self.unread_on_rewrite.iter().map(String::as_str))
        };
        if self.damaged_copies > 0 || details().any(|d| !pack::is_unreadable(d)) {
            3
        } else if self.unreadable_copies > 0 || details().next().is_some() {
            1
        } else {
            0
        }
    }

    /// Dead chunk bytes left in packs above the rewrite threshold.
    pub fn dead_bytes_kept(&self) -> u64 {
        self.with_action(Action::Keep)
            .map(|p| p.chunk_bytes - p.live_bytes)
            .sum()
    }
}

/// Marks what every snapshot except `exclude` references and decides the
/// fate of each pack. `exclude` lets cleanup's dry run price a deletion it
/// has not made. The caller holds a store lock.
pub fn plan(store: &Store, exclude: &BTreeSet<Stamp>) -> Result<Plan> {
    let mut plan = Plan::default();
    if store.local_root().is_some() {
        let snapshots_dir = store.display_dir(Dir::Snapshots);
        if !snapshots_dir.is_dir() {
            return Err(Error::SnapshotsDirMissing {
                path: snapshots_dir,
            });
        }
    }
    let grace = store.gc_grace();
    let within_grace = |modified: Option<std::time::SystemTime>| {
        !grace.is_zero()
            && modified
                .and_then(|m| m.elapsed().ok())
                .is_none_or(|age| age < grace)
    };
    // Every pack's own index, a few in parallel at a time: read before
    // marking, since marking reads the list blobs of format-2 trees from
    // the packs. Each pack's chunk entries go into a sort by id (to join
    // with the mark), and only their sizes stay in memory.
    const PACKS_PER_ROUND: usize = 8;
    let spill = SpillDir::for_store(store)?;
    let mut entries = spill.sorter::<Copy>();
    let listed = store.list_packs()?;
    let mut packs: Vec<(Id, String, u64, Sizes)> = Vec::new();
    let mut young: BTreeSet<String> = BTreeSet::new();
    let mut index = ChunkIndex::new();
    for round in listed.chunks(PACKS_PER_ROUND) {
        crate::os::check_interrupted()?;
        let read: Vec<_> = round
            .par_iter()
            .map(|p| {
                let layout = store.read_pack_index(&Object::Listed(p.name.clone()), p.size);
                (p, layout)
            })
            .collect();
        for (p, layout) in read {
            if within_grace(p.modified) {
                young.insert(p.name.clone());
            }
            match (pack::pack_id_from_name(&p.name), layout) {
                (Some(id), Ok(layout)) => {
                    let n = packs.len() as u32;
                    index.add_pack(id, p.size, &layout);
                    for (ci, c) in layout.chunks.iter().enumerate() {
                        entries.push(Copy {
                            id: c.id,
                            pack: n,
                            chunk: ci as u32,
                        })?;
                    }
                    packs.push((id, p.name.clone(), p.size, Sizes::of(&layout)));
                }
                (None, _) => plan.damaged.push(SkippedPack {
                    name: p.name.clone(),
                    detail: "not a pack name".into(),
                }),
                (Some(_), Err(detail)) => plan.damaged.push(SkippedPack {
                    name: p.name.clone(),
                    detail,
                }),
            }
        }
    }

    // The mark: every id the trees reach, sorted on disk. Every list
    // blob a tree reaches is live too, delta chains included; a tree that
    // cannot be walked hides what it references, so gc refuses as for a
    // manifest that does not read.
    // Listed now, after the packs: a snapshot listed here was published
    // after its packs were durable, but maybe after the pack listing
    // above. Packs listed again now hold its list blobs: they are read
    // for the mark only, never candidates (a create running beside gc
    // must not make gc refuse for want of them).
    let listing = store.list_snapshots()?;
    let candidates: std::collections::HashSet<&str> =
        listed.iter().map(|p| p.name.as_str()).collect();
    for p in store.list_packs()? {
        if candidates.contains(p.name.as_str()) {
            continue;
        }
        let (Some(id), Ok(layout)) = (
            pack::pack_id_from_name(&p.name),
            store.read_pack_index(&Object::Listed(p.name.clone()), p.size),
        ) else {
            continue;
        };
        index.add_pack(id, p.size, &layout);
    }
    let mut marked = Mark::<Id>::new(store, &index, &spill);
    let mut mark = |m: &crate::store::manifest::Manifest, snapshot: &str| -> Result<()> {
        for e in &m.entries {
            let Some(f) = e.file() else { continue };
            marked
                .file(f, mark::any_id)
                .map_err(|err| Error::GcUnsafe {
                    snapshot: snapshot.to_string(),
                    detail: format!("the list of {} does not read: {err}", e.path_lossy()),
                })?;
        }
        Ok(())
    };
    plan.abandoned_folders = listing
        .incomplete
        .iter()
        .filter(|f| !within_grace(f.modified))
        .map(|f| f.folder.clone())
        .collect();
    for stamp in listing.stamps.iter().filter(|s| !exclude.contains(s)) {
        crate::os::check_interrupted()?;
        let manifest =
            store
                .read_manifest(stamp, ReadFrom::Cache)
                .map_err(|e| Error::GcUnsafe {
                    snapshot: stamp.to_string(),
                    detail: match e {
                        Error::ManifestCorrupt { detail, .. } => detail,
                        other => other.to_string(),
                    },
                })?;
        mark(&manifest, &stamp.to_string())?;
        plan.snapshots_marked.push(stamp.to_string());
    }
    for folder in &listing.unparseable {
        match store.read_folder_manifest(folder) {
            None => {}
            Some(Ok(manifest)) => {
                mark(&manifest, folder)?;
                plan.protected_unparseable.push(folder.clone());
            }
            Some(Err(detail)) => plan.warnings.push(format!(
                "snapshots/{folder} is not a stamp and its manifest does not read ({detail}): it protects no data"
            )),
        }
    }
    let live = marked.finish()?;
    drop(index);
    let counts: Vec<usize> = packs.iter().map(|p| p.3.raw_lens.len()).collect();
    let mut copies = join_copies(&counts, entries, live)?;
    plan.chunks_missing = copies.missing;

    // Home copies: packs with the highest live share (all copies counted)
    // claim their live chunks first.
    let share: Vec<(u64, u64)> = packs
        .iter()
        .enumerate()
        .map(|(p, (_, _, _, sizes))| sizes.stored_and_live(|ci| copies.live[p][ci]))
        .collect();
    let mut order: Vec<usize> = (0..packs.len()).collect();
    order.sort_by(|&a, &b| {
        let (ta, la) = share[a];
        let (tb, lb) = share[b];
        // Higher la/ta first (compared without division), then by name.
        (lb as u128 * ta as u128)
            .cmp(&(la as u128 * tb as u128))
            .then(packs[a].1.cmp(&packs[b].1))
    });
    let check = CopyCheck::new(store, packs.iter().map(|p| (p.1.clone(), p.2)).collect());
    let homes = copies.assign_homes(&order, &check);
    plan.damaged_copies = homes.damaged;
    plan.unreadable_copies = homes.unreadable;
    plan.warnings.extend(homes.warnings);

    for (p, (id, name, size, sizes)) in packs.into_iter().enumerate() {
        let home = &copies.home[p];
        let (chunk_bytes, live_bytes) = sizes.stored_and_live(|ci| home[ci]);
        let chunks = sizes.raw_lens.len();
        let live_here: Vec<usize> = (0..chunks).filter(|&ci| home[ci]).collect();
        plan.chunks_live += live_here.len() as u64;
        plan.chunks_dead += (chunks - live_here.len()) as u64;
        let mut action = if live_here.is_empty() {
            Action::Delete
        } else if live_bytes * 100 < chunk_bytes * REWRITE_BELOW_LIVE_PERCENT {
            Action::Rewrite
        } else {
            Action::Keep
        };
        if action != Action::Keep && young.contains(&name) {
            plan.packs_within_grace += 1;
            action = Action::Keep;
        }
        // A pack to rewrite: its layout read again (the plan kept only
        // sizes); one that no longer reads is kept as it is.
        let mut live = None;
        if action == Action::Rewrite {
            match store.read_pack_index(&Object::Listed(name.clone()), size) {
                Ok(layout) => live = Some((layout, live_here)),
                Err(detail) => {
                    plan.warnings.push(format!(
                        "pack {name} kept: its index no longer reads ({detail})"
                    ));
                    plan.unread_on_rewrite.push(detail);
                    action = Action::Keep;
                }
            }
        }
        plan.packs.push(PackPlan {
            id,
            name,
            size,
            chunk_bytes,
            live_bytes,
            chunks: chunks as u64,
            live,
            action,
        });
    }
    plan.packs.sort_by(|a, b| a.name.cmp(&b.name));
    plan.damaged.sort_by(|a, b| a.name.cmp(&b.name));
    // Said where every caller shows it: the dry runs of cleanup and forget
    // carry the plan's warnings and exit code, not `damaged_packs`.
    for d in &plan.damaged {
        plan.warnings.push(format!(
            "pack {} left alone: its index does not read ({}); run verify",
            d.name, d.detail
        ));
    }
    Ok(plan)
}

/// What executing a plan did.
#[derive(Clone, Debug, Default)]
pub struct Executed {
    pub deleted: Vec<String>,
    pub rewritten: Vec<String>,
    pub written: Vec<String>,
    pub bytes_reclaimed: u64,
    pub abandoned_removed: Vec<String>,
    pub errors: Vec<String>,
    /// A chunk to copy was found corrupt (exit 3).
    pub integrity_problem: bool,
}

impl Executed {
    /// `Err(GcInterrupted)` once a signal asked gc to stop, saying what
    /// this run had already deleted (`freed` bytes so far).
    fn check_interrupted(&self, freed: u64) -> Result<()> {
        crate::os::check_interrupted().map_err(|e| match e {
            Error::Interrupted { signal } => Error::GcInterrupted {
                signal,
                done: format!(
                    "deleted {} dead pack(s) ({freed} bytes) and removed {} abandoned snapshot folder(s)",
                    self.deleted.len(),
                    self.abandoned_removed.len()
                ),
            },
            e => e,
        })
    }
}

/// Carries out `plan` under the exclusive lock: dead packs go first, then
/// sparse packs are rewritten (new packs durable before the old ones go).
/// Problems with one pack are reported in `errors` and leave that pack in
/// place; an error writing new packs (a full disk) stops the rewrites and
/// no sparse pack is deleted, but the dead packs are gone by then.
pub fn execute(store: &Store, lock: &ExclusiveLock, plan: &Plan) -> Result<Executed> {
    let mut out = Executed::default();
    let mut freed = 0u64;
    let delete =
        |p: &PackPlan, out: &mut Executed, freed: &mut u64| match store.delete_pack(lock, &p.id) {
            Ok(()) => {
                out.deleted.push(p.name.clone());
                *freed += p.size;
                true
            }
            Err(e) => {
                out.errors.push(format!("pack {} not deleted: {e}", p.name));
                false
            }
        };
    // A signal stops gc between two steps, each of which leaves the store
    // whole (a rewritten pack's old copy goes only once the new is in).
    for p in plan.with_action(Action::Delete) {
        out.check_interrupted(freed)?;
        delete(p, &mut out, &mut freed);
    }
    for folder in &plan.abandoned_folders {
        out.check_interrupted(freed)?;
        match store.delete_abandoned_folder(lock, folder) {
            Ok(()) => out.abandoned_removed.push(folder.clone()),
            Err(e) => out
                .errors
                .push(format!("abandoned snapshots/{folder} not removed: {e}")),
        }
    }

    let mut scratch = ChunkIndex::new();
    let mut packer = Packer::new(store);
    let mut copied: Vec<&PackPlan> = Vec::new();
    let mut write_error = None;
    crate::failpoint::pause("gc:before-rewrite");
    for p in plan.with_action(Action::Rewrite) {
        out.check_interrupted(freed)?;
        match copy_live(store, &mut packer, &mut scratch, p) {
            Ok(()) => copied.push(p),
            // The storage failed, not the pack: stop as for a failed write.
            Err(CopyError::Chunk(id, fault @ ChunkFault::Unreadable { .. })) => {
                write_error = Some(fault.into_error(&id));
                break;
            }
            Err(CopyError::Chunk(id, fault)) => {
                out.integrity_problem = true;
                out.errors.push(format!(
                    "{} in {}: pack kept as it is (run `atosnap verify`)",
                    fault.code(&id),
                    p.name
                ));
            }
            Err(CopyError::Store(e)) => {
                write_error = Some(e);
                break;
            }
        }
    }
    if write_error.is_none() {
        if let Err(e) = packer.flush(&mut scratch) {
            write_error = Some(e);
        }
    }
    crate::failpoint::pause("gc:before-upload-barrier");
    if write_error.is_none() {
        // A remote backend uploads in the background: the new packs must
        // be in the bucket, not merely handed over, before an old one goes.
        write_error = store.packs_durable().err();
    }
    let written_bytes = packer.bytes_written();
    out.written = packer
        .packs_written
        .iter()
        .map(|(id, _)| Object::Pack(*id).name())
        .collect();
    drop(packer);
    match write_error {
        // Without durable copies no sparse pack may go.
        Some(e) => out
            .errors
            .push(format!("rewriting sparse packs stopped, none deleted: {e}")),
        None => {
            for p in copied {
                if delete(p, &mut out, &mut freed) {
                    out.rewritten.push(p.name.clone());
                }
            }
        }
    }
    out.bytes_reclaimed = freed.saturating_sub(written_bytes);
    Ok(out)
}

enum CopyError {
    Chunk(Id, ChunkFault),
    Store(Error),
}

/// What the plan keeps of a pack's layout: its frames' sizes and its
/// chunks' raw lengths (4 bytes a chunk, not its 36-byte entry).
struct Sizes {
    /// Per frame: stored bytes, raw bytes, first chunk, chunks.
    frames: Vec<(u32, u32, u32, u32)>,
    raw_lens: Vec<u32>,
}

impl Sizes {
    fn of(layout: &PackLayout) -> Sizes {
        Sizes {
            frames: (layout.frames.iter())
                .map(|f| (f.stored_len, f.raw_len, f.first_chunk, f.n_chunks))
                .collect(),
            raw_lens: layout.chunks.iter().map(|c| c.raw_len).collect(),
        }
    }

    /// The pack's stored frame bytes, and the share of them that the
    /// chunks `is_live` accepts (by chunk index) hold: each frame's stored
    /// bytes split by raw bytes.
    fn stored_and_live(&self, is_live: impl Fn(usize) -> bool) -> (u64, u64) {
        let mut all = 0u64;
        let mut lv = 0u64;
        for &(stored_len, raw_len, first, n) in &self.frames {
            all += stored_len as u64;
            let (first, n) = (first as usize, n as usize);
            let live_raw: u64 = match self.raw_lens.get(first..first + n) {
                Some(lens) => (lens.iter().enumerate())
                    .filter(|(i, _)| is_live(first + i))
                    .map(|(_, len)| *len as u64)
                    .sum(),
                None => 0,
            };
            lv += PackLayout::share(stored_len, raw_len, live_raw);
        }
        (all, lv)
    }
}

/// Copies the live chunks of a sparse pack into the packer (new frames
/// of only the live chunks), each frame decoded and every live chunk
/// checked against its id first (a corrupt chunk is never laundered into
/// a fresh pack).
fn copy_live(
    store: &Store,
    packer: &mut Packer<'_>,
    scratch: &mut ChunkIndex,
    p: &PackPlan,
) -> std::result::Result<(), CopyError> {
    let Some((layout, live)) = &p.live else {
        return Ok(());
    };
    // `live` is in chunk order, and frames tile the chunks in order.
    let mut frames: Vec<usize> = (0..layout.frames.len()).collect();
    frames.sort_by_key(|&fi| layout.frames[fi].offset);
    for fi in frames {
        let f = &layout.frames[fi];
        let first = f.first_chunk as usize;
        let end = first + f.n_chunks as usize;
        let live_here =
            &live[live.partition_point(|&c| c < first)..live.partition_point(|&c| c < end)];
        let Some(&first_live) = live_here.first() else {
            continue;
        };
        let first_live = layout.chunks[first_live].id;
        let pack = Object::Listed(p.name.clone());
        let stored = store
            .read_object_range(&pack, f.offset as u64, f.stored_len as usize)
            .map_err(|err| {
                CopyError::Chunk(
                    first_live,
                    ChunkFault::of_read_error(store.display(&pack), &err),
                )
            })?;
        // A wholly live format-2 frame moves as it is stored: checked
        // (decoded, every chunk re-hashed) but not re-encoded.
        let whole = layout.format == PackFormat::V2
            && live_here.len() == f.n_chunks as usize
            && live_here
                .iter()
                // A cache read that fails: not moved whole (add_raw meets
                // and reports it).
                .all(|&ci| !packer.has(scratch, &layout.chunks[ci].id).unwrap_or(true));
        let verbatim = whole.then(|| stored.clone());
        let frame = store
            .decode_frame(layout, fi, stored)
            .map_err(|e| CopyError::Chunk(first_live, ChunkFault::Corrupt(e.to_string())))?;
        if let Some(stored) = verbatim {
            let chunks = layout.frame_chunks(fi).to_vec();
            check_all(&frame, &chunks)?;
            packer
                .add_frame(
                    scratch,
                    EncodedFrame {
                        kind: FrameKind::Data,
                        codec: f.codec,
                        chunks,
                        stored,
                    },
                )
                .map_err(CopyError::Store)?;
            continue;
        }
        for &ci in live_here {
            let id = layout.chunks[ci].id;
            let bytes = match frame.chunk(ci - first) {
                Some(Ok(bytes)) => bytes,
                _ => {
                    return Err(CopyError::Chunk(
                        id,
                        ChunkFault::Corrupt("content does not match its hash".into()),
                    ))
                }
            };
            packer
                .add_raw(scratch, id, bytes)
                .map_err(CopyError::Store)?;
        }
    }
    Ok(())
}

/// Every chunk of a decoded frame hashes to its id (else the first that
/// does not is corrupt: a damaged frame is never moved as it is).
fn check_all(frame: &DecodedFrame, chunks: &[ChunkEntry]) -> std::result::Result<(), CopyError> {
    for (i, c) in chunks.iter().enumerate() {
        if !matches!(frame.chunk(i), Some(Ok(_))) {
            return Err(CopyError::Chunk(
                c.id,
                ChunkFault::Corrupt("content does not match its hash".into()),
            ));
        }
    }
    Ok(())
}

/// The result of `gc` (SPEC §3), dry run or not.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GcResult {
    pub dry_run: bool,
    pub snapshots_marked: u64,
    pub packs_total: u64,
    pub chunks_live: u64,
    pub chunks_dead: u64,
    pub chunks_missing: u64,
    /// Copies of chunks stored twice that would have been kept but do
    /// not read back whole: another copy is kept instead (exit 3).
    pub damaged_copies: u64,
    /// Copies of chunks stored twice that could not be read to check
    /// them: every copy of those chunks is kept (exit 1).
    pub unreadable_copies: u64,
    pub rewrite_threshold_percent: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_delete_packs: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_rewrite_packs: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_reclaimable: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_packs: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewritten_packs: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written_packs: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_reclaimed: Option<u64>,
    /// Audit records no reader needs, older than 90 days
    /// (`audit_log::prunable`): to prune (dry run) or pruned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_prune_audit_records: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_records_pruned: Option<u64>,
    /// Dead bytes left in packs above the rewrite threshold.
    pub dead_bytes_kept: u64,
    /// The grace period: packs modified more recently are never touched.
    pub grace_period_secs: u64,
    /// Packs that would be deleted or rewritten but are within the grace
    /// period (a later gc takes them).
    pub packs_within_grace: u64,
    /// Remote snapshot folders without a manifest, past the grace period:
    /// to remove (dry run) or removed.
    pub abandoned_snapshot_folders: Vec<String>,
    /// Packs left alone because their index does not read (exit 3; 1
    /// when only the storage failed to deliver it).
    pub damaged_packs: Vec<SkippedPack>,
    pub protected_unparseable: Vec<String>,
    pub tmp_files_removed: u64,
    pub tmp_bytes_removed: u64,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
    pub duration_ms: u64,
    /// Process exit code for this result (0, 1 or 3).
    #[serde(skip)]
    pub exit_code: i32,
}

impl GcResult {
    fn from_plan(plan: &Plan, dry_run: bool) -> GcResult {
        GcResult {
            dry_run,
            snapshots_marked: plan.snapshots_marked.len() as u64,
            packs_total: (plan.packs.len() + plan.damaged.len()) as u64,
            chunks_live: plan.chunks_live,
            chunks_dead: plan.chunks_dead,
            chunks_missing: plan.chunks_missing,
            damaged_copies: plan.damaged_copies,
            unreadable_copies: plan.unreadable_copies,
            // What choosing which copies to keep found.
            exit_code: plan.exit_code(),
            rewrite_threshold_percent: REWRITE_BELOW_LIVE_PERCENT,
            dead_bytes_kept: plan.dead_bytes_kept(),
            packs_within_grace: plan.packs_within_grace,
            abandoned_snapshot_folders: plan.abandoned_folders.clone(),
            damaged_packs: plan.damaged.clone(),
            protected_unparseable: plan.protected_unparseable.clone(),
            warnings: plan.warnings.clone(),
            ..GcResult::default()
        }
    }
}

/// What `gc` is asked to do (rustic's `PruneOptions`): new choices become
/// fields here, not new functions.
#[derive(Clone, Debug, Default)]
pub struct GcOptions {
    /// Delete and rewrite (`--confirm`); without it, a dry run.
    pub confirm: bool,
    /// How long to wait for the store lock (`--lock-wait`).
    pub lock_wait: Duration,
}

/// `gc [--confirm]`: a dry run under the shared lock, or the real thing
/// under the exclusive lock.
pub fn gc(store: &Store, opts: &GcOptions) -> Result<GcResult> {
    let GcOptions { confirm, lock_wait } = *opts;
    let started = Instant::now();
    let mut result = if confirm {
        let lock = store.lock_exclusive("gc --confirm", lock_wait)?;
        collect(store, &lock)?
    } else {
        let _lock = store.lock_shared_reader("gc", lock_wait)?;
        let plan = plan(store, &BTreeSet::new())?;
        let mut r = GcResult::from_plan(&plan, true);
        r.grace_period_secs = store.gc_grace().as_secs();
        r.would_delete_packs = Some(names(&plan, Action::Delete));
        r.would_rewrite_packs = Some(names(&plan, Action::Rewrite));
        r.bytes_reclaimable = Some(plan.bytes_reclaimable());
        r.would_prune_audit_records = Some(audit_records(store, &plan).len() as u64);
        r
    };
    result.duration_ms = started.elapsed().as_millis() as u64;
    Ok(result)
}

/// The audit records gc prunes: none of them speaks of a snapshot or a
/// pack the plan found (unparseable snapshots count as found).
fn audit_records(store: &Store, plan: &Plan) -> Vec<String> {
    let stamps = plan
        .snapshots_marked
        .iter()
        .chain(&plan.protected_unparseable)
        .cloned()
        .collect();
    let damaged = plan
        .damaged
        .iter()
        .filter_map(|d| pack::pack_id_from_name(&d.name));
    let packs = plan
        .packs
        .iter()
        .map(|p| p.id)
        .chain(damaged)
        .map(|id| id.to_hex())
        .collect();
    let live = audit_log::Live {
        stamps: &stamps,
        packs: &packs,
    };
    audit_log::prunable(store, &live, chrono::Utc::now())
}

fn names(plan: &Plan, action: Action) -> Vec<String> {
    plan.with_action(action).map(|p| p.name.clone()).collect()
}

/// Collects garbage under an exclusive lock the caller holds (cleanup
/// holds it from its first deletion to the end of gc).
pub fn collect(store: &Store, lock: &ExclusiveLock) -> Result<GcResult> {
    let started = Instant::now();
    let tmp = store.clean_tmp(Some(lock))?;
    let plan = plan(store, &BTreeSet::new())?;
    let mut r = GcResult::from_plan(&plan, false);
    r.grace_period_secs = store.gc_grace().as_secs();
    r.tmp_files_removed = tmp.files;
    r.tmp_bytes_removed = tmp.bytes;
    let done = execute(store, lock, &plan)?;
    r.deleted_packs = Some(done.deleted);
    r.rewritten_packs = Some(done.rewritten);
    r.written_packs = Some(done.written);
    r.bytes_reclaimed = Some(done.bytes_reclaimed);
    r.abandoned_snapshot_folders = done.abandoned_removed;
    let (pruned, not_pruned) = audit_log::prune(store, lock, &audit_records(store, &plan))?;
    r.audit_records_pruned = Some(pruned);
    r.warnings.extend(not_pruned);
    r.exit_code = match (done.errors.is_empty(), done.integrity_problem) {
        (_, true) => 3,
        (true, false) => r.exit_code,
        (false, false) => 1.max(r.exit_code),
    };
    r.errors = done.errors;
    r.duration_ms = started.elapsed().as_millis() as u64;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skipped(detail: &str) -> SkippedPack {
        SkippedPack {
            name: "objects/ab/x.pack".into(),
            detail: detail.into(),
        }
    }

    #[test]
    fn damage_outranks_a_storage_failure_in_the_exit_code() {
        let unreadable = "unreadable: injected read failure";
        assert!(pack::is_unreadable(unreadable));
        let mut plan = Plan::default();
        assert_eq!(plan.exit_code(), 0);
        plan.damaged.push(skipped(unreadable));
        assert_eq!(plan.exit_code(), 1, "the storage failed: retry");
        plan.damaged.push(skipped("not a pack name"));
        assert_eq!(plan.exit_code(), 3, "damage found");
        let mut plan = Plan {
            unread_on_rewrite: vec![unreadable.into()],
            ..Plan::default()
        };
        assert_eq!(plan.exit_code(), 1);
        plan.unread_on_rewrite
            .push("index checksum mismatch".into());
        assert_eq!(plan.exit_code(), 3);
        let plan = Plan {
            unreadable_copies: 1,
            damaged: vec![skipped("index checksum mismatch")],
            ..Plan::default()
        };
        assert_eq!(plan.exit_code(), 3);
    }
}
