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
use crate::id::{Id, IdMap, IdSet};
use crate::store::index::ChunkIndex;
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
    // Chunk -> how many snapshots reference it: the only map kept for
    // the whole store (a snapshot's own chunks are a passing set).
    let mut refs: IdMap<u32> = IdMap::default();
    let mut shares = Vec::new();
    for (stamp, chunks) in manifests(store, &index, &mut r.warnings)? {
        r.snapshots += 1;
        r.deduplicated_bytes += chunks.raw_bytes;
        for id in &chunks.ids {
            *refs.entry(*id).or_insert(0) += 1;
        }
        shares.push(SnapshotStats {
            stamp,
            files: chunks.files,
            raw_bytes: chunks.raw_bytes,
            chunks: chunks.ids.len() as u64,
            ..SnapshotStats::default()
        });
    }
    for id in refs.keys() {
        match index.get(id)? {
            Some(loc) => {
                r.chunks += 1;
                r.unique_raw_bytes += loc.raw_len as u64;
                r.unique_stored_bytes += loc.stored_share();
            }
            None => r.chunks_missing += 1,
        }
    }
    r.dedup_ratio = ratio(r.deduplicated_bytes, r.unique_raw_bytes);
    r.compression_ratio = ratio(r.unique_raw_bytes, r.unique_stored_bytes);
    if per_snapshot {
        // A second reading (from the cache on a remote store): the chunks
        // of each snapshot that no other references.
        let at: std::collections::HashMap<String, usize> = (shares.iter())
            .enumerate()
            .map(|(i, s)| (s.stamp.clone(), i))
            .collect();
        for (stamp, chunks) in manifests(store, &index, &mut Vec::new())? {
            if let Some(&i) = at.get(&stamp) {
                add_unique(&mut shares[i], &chunks, &refs, &index)?;
            }
        }
        r.per_snapshot = Some(shares);
    }
    r.duration_ms = started.elapsed().as_millis() as u64;
    Ok(r)
}

/// What a manifest references: its distinct chunks, files and bytes.
struct References {
    ids: IdSet,
    files: u64,
    raw_bytes: u64,
}

impl References {
    /// A file whose list cannot be read adds the chunks read before the
    /// damage and a warning (`verify` names the list blob).
    fn of(
        store: &Store,
        index: &ChunkIndex,
        manifest: &Manifest,
        warnings: &mut Vec<String>,
    ) -> References {
        let mut r = References {
            ids: IdSet::default(),
            files: 0,
            raw_bytes: 0,
        };
        let mut seen = IdSet::default();
        for e in &manifest.entries {
            let Some(f) = e.file() else { continue };
            r.files += 1;
            r.raw_bytes += f.size;
            let ids = &mut r.ids;
            let read = store.file_reach(index, f, &mut seen, &mut |reached| {
                if let Reached::Chunk(id) = reached {
                    ids.insert(id);
                }
            });
            if let Err(err) = read {
                warnings.push(format!(
                    "snapshot {}: the list of {} does not read: {err}",
                    manifest.stamp,
                    e.path_lossy()
                ));
            }
        }
        r
    }
}

/// Every snapshot's references, oldest first, one manifest in memory at
/// a time. A manifest that does not read is left out with a warning
/// (`verify` says more).
fn manifests<'a>(
    store: &'a Store,
    index: &'a ChunkIndex,
    warnings: &'a mut Vec<String>,
) -> Result<impl Iterator<Item = (String, References)> + 'a> {
    let stamps = store.list_snapshots()?.stamps;
    Ok(stamps.into_iter().filter_map(move |stamp| {
        match store.read_manifest(&stamp, ReadFrom::Cache) {
            Ok(m) => Some((
                stamp.to_string(),
                References::of(store, index, &m, warnings),
            )),
            Err(e) => {
                warnings.push(format!("snapshot {stamp} left out: {e}"));
                None
            }
        }
    }))
}

/// Adds the chunks of `chunks` that no other snapshot references.
fn add_unique(
    s: &mut SnapshotStats,
    chunks: &References,
    refs: &IdMap<u32>,
    index: &ChunkIndex,
) -> Result<()> {
    let only_here = |id: &&Id| refs.get(*id) == Some(&1);
    for id in chunks.ids.iter().filter(only_here) {
        if let Some(loc) = index.get(id)? {
            s.unique_chunks += 1;
            s.unique_raw_bytes += loc.raw_len as u64;
            s.unique_stored_bytes += loc.stored_share();
        }
    }
    Ok(())
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
