//! What `verify` reports: the health of each snapshot, the whole report,
//! and what a repair did; and the one `size_mismatch` finding that
//! `validate` and `verify` share. Imports no sibling, so `audit` and
//! `repair` both build on it without a circle.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::store::manifest::{Entry, FileEntry};

/// A file whose recorded size (`FileEntry.size`) is not the sum of its
/// chunks' raw lengths: a forged or damaged manifest, which a restore
/// refuses. Its text is the stable code `size_mismatch`, the path and
/// both numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeMismatch {
    pub path: String,
    pub recorded: u64,
    /// The raw bytes its chunks hold, by the chunk index.
    pub chunks_hold: u64,
}

impl SizeMismatch {
    pub const CODE: &'static str = "size_mismatch";

    /// The mismatch of `f` (the file of `entry`) when its chunks hold
    /// `chunks_hold` bytes; None when they hold its size, or when that is
    /// unknown (a chunk not in the index: reported as missing instead).
    pub fn check(entry: &Entry, f: &FileEntry, chunks_hold: Option<u64>) -> Option<SizeMismatch> {
        let chunks_hold = chunks_hold.filter(|&b| b != f.size)?;
        Some(SizeMismatch {
            path: entry.path_lossy(),
            recorded: f.size,
            chunks_hold,
        })
    }
}

impl std::fmt::Display for SizeMismatch {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            out,
            "{}: {} ({} bytes recorded, its chunks hold {})",
            SizeMismatch::CODE,
            self.path,
            self.recorded,
            self.chunks_hold
        )
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SnapshotHealth {
    pub ok: bool,
    /// Paths inside the snapshot whose data is damaged.
    pub damaged_files: Vec<String>,
    /// What is wrong with files among `damaged_files` beyond their chunks
    /// (`size_mismatch: <path> (<n> bytes recorded, its chunks hold <m>)`):
    /// the manifest itself, which no repair rebuilds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_errors: Vec<String>,
    /// The manifest could not be read (the snapshot cannot be restored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The readable summary (`backup-metadata.json`) is missing or corrupt:
    /// the data is intact, `list` shows less; `--repair` rewrites it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_error: Option<String>,
    /// Paths whose data sits in a pack that could not be read (an I/O
    /// error, not damage): not verified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable_files: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub objects_checked: u64,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub corrupt: Vec<String>,
    pub missing: Vec<String>,
    pub damaged_objects: Vec<String>,
    /// Why each damaged object is damaged.
    #[serde(default)]
    pub damage: BTreeMap<String, String>,
    /// Packs that could not be read (permission denied, a timeout), with
    /// the error: not damage, left in place by `--repair`; exit 1 unless
    /// damage was found too.
    #[serde(default)]
    pub unreadable: BTreeMap<String, String>,
    pub orphans: Vec<String>,
    pub reclaimable_bytes: u64,
    pub snapshots: BTreeMap<String, SnapshotHealth>,
    /// Packs in the store, and how many of them were re-hashed (all of
    /// them unless `--sample`; the others were checked structurally).
    #[serde(default)]
    pub packs_total: u64,
    #[serde(default)]
    pub packs_sampled: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled_percent: Option<f64>,
    /// The sample asked for (`--sample`, `--subset`, `--oldest`) and the
    /// packs it re-hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<SampleReport>,
    /// Objects waiting in `quarantine/` for an operator.
    #[serde(default)]
    pub quarantined_objects: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairReport>,
    /// The verify log record written for this run (its object name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded: Option<String>,
    /// Problems that did not change the verdict (the record could not be
    /// written: a read-only store).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub duration_ms: u64,
}

impl VerifyReport {
    /// Whether damage was found: a wrong hash or structure, a missing
    /// chunk, a manifest or summary that does not read.
    pub fn damage_found(&self) -> bool {
        !self.corrupt.is_empty()
            || !self.missing.is_empty()
            || !self.damaged_objects.is_empty()
            || self.snapshots.values().any(|s| {
                !s.damaged_files.is_empty() || s.error.is_some() || s.metadata_error.is_some()
            })
    }

    /// 0 all well, 3 damage found, 1 only objects that could not be read.
    pub fn exit_code(&self) -> i32 {
        if self.damage_found() {
            3
        } else if self.ok {
            0
        } else {
            1
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RepairReport {
    /// Damaged objects moved aside.
    pub quarantined: Vec<Quarantined>,
    /// Fresh packs holding the chunks kept.
    pub packs_written: Vec<String>,
    /// Intact referenced chunks recovered from quarantined packs.
    pub chunks_salvaged: u64,
    /// Their raw bytes (re-framed into the fresh packs).
    pub bytes_salvaged: u64,
    /// Referenced chunks no longer in the store: the next `create` stores
    /// them again if the live data still has them. Empty while a pack's
    /// index could not be read (the chunks may be in it).
    pub chunks_lost: Vec<String>,
    /// Packs that could not be read (an I/O error, not damage): left in
    /// place, never quarantined; the repair is not complete while any is.
    #[serde(default)]
    pub unreadable: Vec<String>,
    /// Snapshots whose summary was rebuilt from the manifest.
    pub metadata_rewritten: Vec<String>,
    pub tmp_files_removed: u64,
    /// Snapshots still damaged after the repair, with the damaged files.
    pub still_damaged: BTreeMap<String, SnapshotHealth>,
    /// True when no snapshot stays damaged.
    pub healed: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Quarantined {
    pub object: String,
    pub moved_to: String,
    pub reason: String,
}

/// What a sampled verify reports (and records) about its sample.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SampleReport {
    /// `percent:P`, `subset:N/T` or `oldest:P`.
    pub spec: String,
    /// The packs re-hashed, by name.
    pub packs_selected: Vec<String>,
}
