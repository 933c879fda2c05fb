//! `stats`: what the store holds and what deduplication and compression
//! save, and what gc would give back (its own dry-run plan,
//! [`gc::plan`], not a second reckoning).
//!
//! Figures (raw = the files' bytes, stored = the bytes in packs, after
//! compression and sealing):
//! - `unique_*`: the distinct chunks the snapshots reference, each once;
//! - `deduplicated_bytes`: what the snapshots hold, every file of every
//!   snapshot counted (what a store without deduplication would keep);
//! - per snapshot (`--per-snapshot`), `unique_*` are the chunks no other
//!   snapshot references: what forgetting it alone would free.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::id::Id;
use crate::ops::mark::{locate, Mark, SpillDir};
use crate::store::chunk_index::Spillable;
use crate::store::lists::Reached;
use crate::store::manifest::Manifest;
use crate::store::{Dir, ReadFrom, Store};

use super::gc;

/// One snapshot's share (`stats --per-snapshot`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SnapshotStats {
    pub stamp: String,
    pub files: u64,
    /// The bytes of its files.
    pub raw_bytes: u64,
    /// Distinct chunks it references.
    pub chunks: u64,
    /// Chunks no other snapshot references, and their bytes.
    pub unique_chunks: u64,
    pub unique_raw_bytes: u64,
    pub unique_stored_bytes: u64,
}

/// The result of `stats` (SPEC §3).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatsResult {
    pub store: String,
    /// `init --compression`: `auto`, `none` or `zstd:LEVEL`.
    pub compression: String,
    pub encryption: String,
    /// Every object of the store (packs, snapshots, logs, config, keys;
    /// temp files and locks aside).
    pub store_bytes: u64,
    pub snapshots: u64,
    pub packs: u64,
    /// Distinct chunks the snapshots reference.
    pub chunks: u64,
    pub unique_raw_bytes: u64,
    pub unique_stored_bytes: u64,
    /// Every snapshot's files added up.
    pub deduplicated_bytes: u64,
    /// `deduplicated_bytes / unique_raw_bytes` (null when nothing is stored).
    pub dedup_ratio: Option<f64>,
    /// `unique_raw_bytes / unique_stored_bytes` (null when nothing is stored).
    pub compression_ratio: Option<f64>,
    /// What `gc --confirm` would free now (its dry run's
    /// `bytes_reclaimable`); null when gc would refuse (see `warnings`).
    pub bytes_reclaimable: Option<u64>,
    /// Dead bytes gc leaves in packs above its rewrite threshold.
    pub dead_bytes_kept: Option<u64>,
    /// Referenced chunks found in no readable pack (`verify` names them).
    pub chunks_missing: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_snapshot: Option<Vec<SnapshotStats>>,
    pub warnings: Vec<String>,
    pub duration_ms: u64,
}

/// Computes the figures under the shared (reader's) store lock.
pub fn stats(store: &Store, per_snapshot: bool, lock_wait: Duration) -> Result<StatsResult> {
    let started = Instant::now();
    let _lock = store.lock_shared_reader("stats", lock_wait)?;
    let mut r = StatsResult {
        store: store.location().display(),
        compression: store.config().compression.choice(),
        encryption: store.config().encryption.scheme.clone(),
        store_bytes: store_bytes(store)?,
        ..StatsResult::default()
    };
    match gc::plan(store, &BTreeSet::new()) {
        Ok(plan) => {
            r.bytes_reclaimable = Some(plan.bytes_reclaimable());
            r.dead_bytes_kept = Some(plan.dead_bytes_kept());
            r.warnings.extend(plan.warnings);
        }
        Err(e) => r.warnings.push(format!("gc would refuse: {e}")),
    }
    let index = store.load_index()?;
    r.packs = (index.packs().len() + index.damaged.len()) as u64;
    // Every (chunk, snapshot) pair, sorted on disk: a chunk's snapshots
    // come together, so how many reference it needs no map of every chunk.
    let spill = SpillDir::for_store(store)?;
    let mut mark = Mark::<SnapshotRef>::new(store, &index, &spill);
    let mut shares = Vec::new();
    let stamps = store.list_snapshots()?.stamps;
    crate::failpoint::pause("stats:before-reads");
    // A signal stops stats between two snapshots or two chunks: on a
    // large store it reads every snapshot's lists.
    for stamp in stamps {
        crate::os::check_interrupted()?;
        let m = match store.read_manifest(&stamp, ReadFrom::Cache) {
            Ok(m) => m,
            Err(e) => {
                r.warnings.push(format!("snapshot {stamp} left out: {e}"));
                continue;
            }
        };
        // Without --per-snapshot, one key for all: each chunk once.
        let snapshot = if per_snapshot { shares.len() as u32 } else { 0 };
        let (files, raw_bytes) = references(&mut mark, &m, snapshot, &mut r.warnings);
        r.snapshots += 1;
        r.deduplicated_bytes += raw_bytes;
        shares.push(SnapshotStats {
            stamp: stamp.to_string(),
            files,
            raw_bytes,
            ..SnapshotStats::default()
        });
    }
    let mut group: Vec<u32> = Vec::new();
    let mut pairs = mark.finish()?.peekable();
    while let Some(first) = pairs.next() {
        crate::os::check_interrupted()?;
        let first = first?;
        group.clear();
        group.push(first.snapshot);
        while let Some(Ok(next)) = pairs.peek() {
            if next.id != first.id {
                break;
            }
            group.push(next.snapshot);
            pairs.next();
        }
        let loc = locate(&index, &first.id)?;
        if per_snapshot {
            for &s in &group {
                shares[s as usize].chunks += 1;
            }
        }
        let Some(loc) = loc else {
            r.chunks_missing += 1;
            continue;
        };
        r.chunks += 1;
        r.unique_raw_bytes += loc.raw_len as u64;
        r.unique_stored_bytes += loc.stored_share();
        if let ([only], true) = (group.as_slice(), per_snapshot) {
            // The chunks no other snapshot references: what forgetting
            // this one alone would free.
            let s = &mut shares[*only as usize];
            s.unique_chunks += 1;
            s.unique_raw_bytes += loc.raw_len as u64;
            s.unique_stored_bytes += loc.stored_share();
        }
    }
    r.dedup_ratio = ratio(r.deduplicated_bytes, r.unique_raw_bytes);
    r.compression_ratio = ratio(r.unique_raw_bytes, r.unique_stored_bytes);
    r.per_snapshot = per_snapshot.then_some(shares);
    r.duration_ms = started.elapsed().as_millis() as u64;
    Ok(r)
}

/// A chunk a snapshot references (the snapshot's number among those read).
struct SnapshotRef {
    id: Id,
    snapshot: u32,
}

impl Spillable for SnapshotRef {
    const LEN: usize = 36;
    type Key = (Id, u32);

    fn key(&self) -> (Id, u32) {
        (self.id, self.snapshot)
    }

    fn encode(&self, out: &mut [u8]) {
        self.id.encode(&mut out[..32]);
        out[32..].copy_from_slice(&self.snapshot.to_le_bytes());
    }

    fn decode(b: &[u8]) -> SnapshotRef {
        SnapshotRef {
            id: <Id as Spillable>::decode(&b[..32]),
            snapshot: u32::from_le_bytes([b[32], b[33], b[34], b[35]]),
        }
    }
}

/// Sorts the chunks `manifest` references (each of its trees walked
/// whole) and returns its files and their bytes. A file whose list cannot
/// be read adds the chunks read before the damage and a warning (`verify`
/// names the list blob).
fn references(
    mark: &mut Mark<'_, SnapshotRef>,
    manifest: &Manifest,
    snapshot: u32,
    warnings: &mut Vec<String>,
) -> (u64, u64) {
    mark.forget_walked();
    let (mut files, mut raw_bytes) = (0, 0);
    for e in &manifest.entries {
        let Some(f) = e.file() else { continue };
        files += 1;
        raw_bytes += f.size;
        let read = mark.file(f, |reached| match reached {
            Reached::Chunk(id) => Some(SnapshotRef { id, snapshot }),
            Reached::Blob(_) => None,
        });
        if let Err(err) = read {
            warnings.push(format!(
                "snapshot {}: the list of {} does not read: {err}",
                manifest.stamp,
                e.path_lossy()
            ));
        }
    }
    (files, raw_bytes)
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    // Two decimals are all a reader needs, and keep the JSON short.
    (b > 0).then(|| ((a as f64 / b as f64) * 100.0).round() / 100.0)
}

/// Bytes of every object but temp files and locks (scratch, not data).
fn store_bytes(store: &Store) -> Result<u64> {
    let files = store.list_all()?;
    Ok(files
        .iter()
        .filter(|f| !Dir::Tmp.holds(&f.name) && !Dir::Locks.holds(&f.name))
        .map(|f| f.size)
        .sum())
}
