//! `validate` (one snapshot: the gate before a restore) and `verify` (the
//! whole store, or named snapshots: an integrity audit of every object).

pub mod repair;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Read;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::id::{Id, IdSet};
use crate::ops::extract::{self, ExtractError};
use crate::sources::sqlite;
use crate::stamp::Stamp;
use crate::store::index::ChunkIndex;
use crate::store::manifest::{FileEntry, Manifest};
use crate::store::pack::{self, PackEntry, PACK_MAGIC};
use crate::store::{ChunkFault, Store};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ValidateReport {
    pub stamp: String,
    pub exists: bool,
    pub valid: bool,
    pub db_ok: bool,
    pub registry_ok: Option<bool>,
    pub chroma_ok: Option<bool>,
    pub errors: Vec<String>,
    pub duration_ms: u64,
}

/// Validates one snapshot: re-hashes every chunk it references, rebuilds
/// the db in a temp file and runs `PRAGMA integrity_check`, parses the
/// registry. Malformed stamps are an error; a missing or damaged snapshot
/// is a report with `valid: false`.
pub fn validate(store: &Store, stamp: &str, lock_wait: Duration) -> Result<ValidateReport> {
    let stamp = Stamp::parse(stamp)?;
    let _lock = store.lock_shared_reader("validate", lock_wait)?;
    let started = Instant::now();
    let mut report = ValidateReport {
        stamp: stamp.to_string(),
        exists: false,
        valid: false,
        db_ok: false,
        registry_ok: None,
        chroma_ok: None,
        errors: Vec::new(),
        duration_ms: 0,
    };
    let manifest = match store.read_manifest(&stamp) {
        Ok(m) => m,
        Err(Error::SnapshotMissing { .. }) => {
            report.errors.push("snapshot_missing".into());
            return Ok(report);
        }
        Err(Error::ManifestCorrupt { detail, .. }) => {
            report.exists = true;
            report.errors.push(format!("manifest_corrupt: {detail}"));
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    report.exists = true;
    let index = store.load_index()?;
    validate_manifest(store, &index, &manifest, &mut report)?;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// The checks of `validate` on a decoded manifest.
pub fn validate_manifest(
    store: &Store,
    index: &ChunkIndex,
    manifest: &Manifest,
    report: &mut ValidateReport,
) -> Result<()> {
    let every_chunk = manifest
        .entries
        .iter()
        .filter_map(|e| e.file())
        .flat_map(|f| f.chunks.iter());
    store.with_packs_prefetched(index, every_chunk, || {
        check_manifest(store, index, manifest, report)
    })
}

fn check_manifest(
    store: &Store,
    index: &ChunkIndex,
    manifest: &Manifest,
    report: &mut ValidateReport,
) -> Result<()> {
    let mut errors: BTreeSet<String> = BTreeSet::new();

    // The db: rebuilt into a temp file (which verifies its chunks), then
    // integrity-checked by SQLite itself.
    report.db_ok = match manifest.db() {
        None => {
            errors.insert("db_missing_from_snapshot".into());
            false
        }
        Some(db) => check_db(store, index, db, &mut errors)?,
    };

    // Every other chunk, each once, in parallel.
    let db_chunks: HashSet<&Id> = manifest
        .db()
        .map(|f| f.chunks.iter().collect())
        .unwrap_or_default();
    let others: HashSet<&Id> = manifest
        .entries
        .iter()
        .filter_map(|e| e.file())
        .flat_map(|f| f.chunks.iter())
        .filter(|id| !db_chunks.contains(id))
        .collect();
    let others: Vec<&Id> = others.into_iter().collect();
    let faults: HashMap<Id, ChunkFault> = others
        .par_iter()
        .filter_map(|id| store.read_chunk(index, id).err().map(|f| (**id, f)))
        .collect();
    let file_ok = |f: &FileEntry| f.chunks.iter().all(|id| !faults.contains_key(id));
    for (id, fault) in &faults {
        errors.insert(fault.code(id));
    }
    for entry in &manifest.entries {
        if let Some(f) = entry.file() {
            if extract::indexed_size(index, f).is_some_and(|s| s != f.size) {
                errors.insert(format!("size_mismatch: {}", entry.path_lossy()));
            }
        }
    }

    report.registry_ok = manifest.registry().map(|reg| {
        if !file_ok(reg) {
            return false;
        }
        match extract::read_small_file(store, index, reg) {
            Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(_) => true,
                Err(e) => {
                    errors.insert(format!("registry_invalid_json: {e}"));
                    false
                }
            },
            Err(ExtractError::TooLarge { limit }) => {
                errors.insert(format!(
                    "registry_too_large: more than {limit} bytes (recorded size {})",
                    reg.size
                ));
                false
            }
            // Chunk faults are reported above, each once.
            Err(_) => false,
        }
    });
    report.chroma_ok = manifest
        .chroma_included
        .then(|| manifest.chroma_files().all(|(_, f)| file_ok(f)));

    errors.extend(manifest.capture_errors.iter().cloned());
    report.errors = errors.into_iter().collect();
    report.valid = report.errors.is_empty();
    Ok(())
}

fn check_db(
    store: &Store,
    index: &ChunkIndex,
    db: &FileEntry,
    errors: &mut BTreeSet<String>,
) -> Result<bool> {
    let prefix = format!("{}-validate-", std::process::id());
    let builder = || {
        let mut b = tempfile::Builder::new();
        b.prefix(&prefix).suffix(".db");
        b
    };
    // In the store's tmp/ (same disk as the data); a reader that may not
    // write the store uses the system's temp dir instead.
    let tmp = match store
        .tmp_dir()
        .and_then(|d| builder().tempfile_in(&d).ctx("create temp file in", &d))
    {
        Ok(t) => t,
        Err(e @ (Error::PermissionDenied { .. } | Error::ReadOnly { .. })) => {
            builder().tempfile().map_err(|_| e)?
        }
        Err(e) => return Err(e),
    };
    let mut out = std::io::BufWriter::new(tmp.as_file());
    match extract::write_file(store, index, db, &mut out, |_| {}) {
        Ok(_) => {}
        Err(ExtractError::Chunk(id, fault)) => {
            errors.insert(fault.code(&id));
            // Keep checking the db's other chunks so every fault is named.
            for id in &db.chunks {
                if let Err(f) = store.read_chunk(index, id) {
                    errors.insert(f.code(id));
                }
            }
            return Ok(false);
        }
        Err(ExtractError::Write(e)) => return Err(Error::io("write", tmp.path(), e)),
        Err(ExtractError::TooLarge { limit }) => {
            return Err(Error::Other(format!("the db outgrew {limit} bytes")))
        }
    }
    drop(out);
    match sqlite::integrity_problems(tmp.path(), false)? {
        None => Ok(true),
        Some(p) => {
            errors.insert(format!("db_integrity_check_failed: {p}"));
            Ok(false)
        }
    }
}

// ---- verify ---------------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SnapshotHealth {
    pub ok: bool,
    /// Paths inside the snapshot whose data is damaged.
    pub damaged_files: Vec<String>,
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
    /// Objects waiting in `quarantine/` for an operator.
    #[serde(default)]
    pub quarantined_objects: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<crate::ops::verify::repair::RepairReport>,
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

/// What `verify` is asked to do.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Only these snapshots (and only the objects they reference).
    pub snapshots: Vec<String>,
    /// Re-hash only this share of the packs, in percent (0 to 100); check
    /// the rest structurally. None: re-hash everything.
    pub sample_percent: Option<f64>,
    /// Quarantine damaged packs and keep their intact chunks (exclusive lock).
    pub repair: bool,
    pub lock_wait: Duration,
}

impl VerifyOptions {
    pub fn new(lock_wait: Duration) -> VerifyOptions {
        VerifyOptions {
            snapshots: Vec::new(),
            sample_percent: None,
            repair: false,
            lock_wait,
        }
    }
}

/// Audits the store (or only what `only` snapshots reference), re-hashing
/// everything.
pub fn verify(store: &Store, only: &[String], lock_wait: Duration) -> Result<VerifyReport> {
    verify_with(
        store,
        &VerifyOptions {
            snapshots: only.to_vec(),
            ..VerifyOptions::new(lock_wait)
        },
    )
}

/// Audits the store as `opts` say; with `repair`, repairs what it found.
pub fn verify_with(store: &Store, opts: &VerifyOptions) -> Result<VerifyReport> {
    let started = Instant::now();
    let selected: Option<Vec<Stamp>> = if opts.snapshots.is_empty() {
        None
    } else {
        Some(
            opts.snapshots
                .iter()
                .map(|s| Stamp::parse(s))
                .collect::<Result<_>>()?,
        )
    };
    if let Some(p) = opts.sample_percent {
        if !(0.0..=100.0).contains(&p) {
            return Err(Error::Usage(format!(
                "--sample {p}: a percentage from 0 to 100"
            )));
        }
    }
    let mut report = if opts.repair {
        let lock = store.lock_exclusive("verify --repair", opts.lock_wait)?;
        let audit = audit(store, selected.as_deref(), opts.sample_percent)?;
        let repaired = crate::ops::verify::repair::repair(store, &lock, &audit)?;
        let mut report = audit.report;
        report.repair = Some(repaired);
        report
    } else {
        let _lock = store.lock_shared_reader("verify", opts.lock_wait)?;
        audit(store, selected.as_deref(), opts.sample_percent)?.report
    };
    report.quarantined_objects = store.quarantined_objects()?.len() as u64;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// What the audit found, with what repair needs beyond the report.
pub struct Audit {
    pub report: VerifyReport,
    /// Snapshots whose manifest reads (manifests are read one at a time,
    /// never all held at once).
    pub readable: Vec<Stamp>,
    /// Snapshots whose manifest does not read.
    pub unreadable: Vec<Stamp>,
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

fn audit(store: &Store, selected: Option<&[Stamp]>, sample: Option<f64>) -> Result<Audit> {
    let mut report = VerifyReport::default();
    let listing = store.list_snapshots()?;
    let stamps = match selected {
        Some(s) => s.to_vec(),
        None => listing.stamps.clone(),
    };
    let mut readable = Vec::new();
    let mut unreadable = Vec::new();
    let mut referenced = IdSet::default();
    for stamp in &stamps {
        // The audit reads the store itself, never a remote store's cache.
        match store.read_manifest_fresh(stamp) {
            Ok(m) => {
                referenced.extend(
                    m.entries
                        .iter()
                        .filter_map(|e| e.file())
                        .flat_map(|f| f.chunks.iter().copied()),
                );
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

    let index = store.load_index()?;
    let missing: BTreeSet<Id> = referenced
        .iter()
        .filter(|id| !index.contains(id))
        .copied()
        .collect();

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
    let mut pack_live: Vec<u64> = vec![0; npacks];
    for id in &referenced {
        if let Some(loc) = index.get(id) {
            pack_live[loc.pack as usize] += loc.stored_len() as u64;
        }
    }
    let to_check: Vec<u32> = (0..npacks as u32)
        .filter(|&p| selected.is_none() || pack_live[p as usize] > 0)
        .collect();
    let rehash: HashSet<u32> = match sample {
        None => to_check.iter().copied().collect(),
        Some(pct) => {
            let n = to_check.len();
            let k = ((n as f64 * pct / 100.0).ceil() as usize).min(n);
            let mut rng = rand::rng();
            rand::seq::index::sample(&mut rng, n, k)
                .into_iter()
                .map(|i| to_check[i])
                .collect()
        }
    };
    report.packs_total = (npacks + index.damaged.len()) as u64;
    report.packs_sampled = rehash.len() as u64;
    report.sampled_percent = sample;

    // Packs checked structurally: in parallel (small reads). Packs re-hashed:
    // one after the other, each streamed by its own reader thread with its
    // chunks decoded in parallel, so memory stays a few blocks whatever the
    // number of cores.
    let (hashed, structural): (Vec<u32>, Vec<u32>) =
        to_check.iter().partition(|p| rehash.contains(p));
    let mut checks: Vec<(u32, PackCheck)> = structural
        .par_iter()
        .map(|&p| (p, check_pack(store, &index, p, &referenced, false)))
        .collect();
    for p in hashed {
        crate::os::check_interrupted()?;
        checks.push((p, check_pack(store, &index, p, &referenced, true)));
    }

    // A chunk is bad when the copy every reader uses (its index location)
    // is corrupt, or when it is missing.
    let mut bad: HashSet<Id> = missing.iter().copied().collect();
    let mut corrupt: BTreeSet<Id> = BTreeSet::new();
    for (p, check) in &checks {
        report.objects_checked += 1;
        report.bytes_checked += check.bytes;
        report.chunks_checked += check.chunks;
        let name = pack::pack_name(&index.pack(*p).id);
        if let Some(detail) = &check.unreadable {
            if selected.is_none() || check.unverified.iter().any(|id| referenced.contains(id)) {
                report.unreadable.insert(name.clone(), detail.clone());
            }
        }
        for id in &check.unverified {
            if index.get(id).is_some_and(|loc| loc.pack == *p) {
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
            if index.get(id).is_some_and(|loc| loc.pack == *p) {
                bad.insert(*id);
            }
        }
        if selected.is_none() {
            if pack_live[*p as usize] == 0 {
                report.orphans.push(pack::pack_name(&index.pack(*p).id));
                report.reclaimable_bytes += index.pack(*p).size;
            } else {
                report.reclaimable_bytes += check.total_stored.saturating_sub(check.live_stored);
            }
        }
    }
    report.corrupt = corrupt.iter().map(Id::to_hex).collect();
    report.missing = missing.iter().map(Id::to_hex).collect();

    for stamp in &readable {
        let m = store.read_manifest(stamp)?;
        let damaged: BTreeSet<String> = m
            .entries
            .iter()
            .filter(|e| {
                e.file()
                    .is_some_and(|f| f.chunks.iter().any(|id| bad.contains(id)))
            })
            .map(|e| e.path_lossy())
            .collect();
        let unreadable_files: BTreeSet<String> = m
            .entries
            .iter()
            .filter(|e| {
                e.file().is_some_and(|f| {
                    f.chunks.iter().any(|id| unverified.contains(id))
                        && !damaged.contains(&e.path_lossy())
                })
            })
            .map(|e| e.path_lossy())
            .collect();
        let metadata_error = metadata_problem(store, stamp);
        report.snapshots.insert(
            stamp.to_string(),
            SnapshotHealth {
                ok: damaged.is_empty() && metadata_error.is_none() && unreadable_files.is_empty(),
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
    })
}

/// Why a snapshot's `backup-metadata.json` is not usable, if it is not.
pub fn metadata_problem(store: &Store, stamp: &Stamp) -> Option<String> {
    let name = format!("snapshots/{stamp}/{}", crate::store::METADATA_NAME);
    match store.backend().exists(&name) {
        Ok(false) => Some(format!(
            "metadata_missing: {}",
            store.object_path(&name).display()
        )),
        Ok(true) => store
            .read_metadata(stamp)
            .err()
            .map(|e| format!("metadata_corrupt: {e}")),
        Err(e) => Some(format!(
            "metadata_unreadable: {}: {e}",
            store.object_path(&name).display()
        )),
    }
}

/// Bytes of a pack read at once when re-hashing: the chunks inside a block
/// are decoded and checked in parallel while the next blocks are read.
const BLOCK: usize = 2 << 20;

/// Checks one pack. Always its structure: the trailer and index read, the
/// entries tile the blob area exactly, raw chunks have their recorded
/// length, the header is there. With `rehash`, it streams the whole file:
/// its hash must be its name and every chunk must decode to its id. Memory
/// is bounded by one window.
fn check_pack(
    store: &Store,
    index: &ChunkIndex,
    p: u32,
    referenced: &IdSet,
    rehash: bool,
) -> PackCheck {
    let info = index.pack(p);
    let name = pack::pack_name(&info.id);
    let mut check = PackCheck::default();
    let layout = match store.read_pack_layout(&name, info.size) {
        Ok(l) => l,
        Err(detail) => {
            let ids = index
                .iter()
                .filter(|(_, l)| l.pack == p)
                .map(|(id, _)| *id)
                .collect();
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
    check.bytes = (info.size - layout.blob_end).min(info.size);
    let mut sorted: Vec<&PackEntry> = layout.entries.iter().collect();
    sorted.sort_by_key(|e| (e.offset, e.stored_len));

    // Structure: entries back to back from the header to the index.
    let mut overlapping: Vec<&PackEntry> = Vec::new();
    let mut tiled: Vec<&PackEntry> = Vec::with_capacity(sorted.len());
    let mut pos = PACK_MAGIC.len() as u64;
    for e in &sorted {
        let start = e.offset as u64;
        let end = start + e.stored_len as u64;
        check.total_stored += e.stored_len as u64;
        if referenced.contains(&e.id) && index.get(&e.id).is_some_and(|l| l.pack == p) {
            check.live_stored += e.stored_len as u64;
        }
        if !e.compressed && e.stored_len as usize != e.raw_len as usize + store.sealer().overhead()
        {
            check.damaged(format!(
                "index entry for chunk {} records {} raw bytes stored in {}",
                e.id, e.raw_len, e.stored_len
            ));
            check.corrupt.push(e.id);
        }
        if start < pos {
            check.damaged(format!(
                "index entries overlap at chunk {} (offset {start})",
                e.id
            ));
            overlapping.push(e);
            continue;
        }
        if start > pos {
            check.damaged(format!(
                "bytes {pos}..{start} of the blob area belong to no index entry"
            ));
        }
        tiled.push(e);
        pos = end;
    }
    if pos < layout.blob_end {
        check.damaged(format!(
            "bytes {pos}..{} of the blob area belong to no index entry",
            layout.blob_end
        ));
    }

    if !rehash {
        match store.backend().read_range(&name, 0, PACK_MAGIC.len()) {
            Ok(h) if h == PACK_MAGIC => {}
            Ok(_) => check.damaged("bad pack header".into()),
            Err(e) => {
                let ids = layout.entries.iter().map(|e| e.id);
                check.unreadable(&e, ids);
            }
        }
        check.bytes += PACK_MAGIC.len() as u64;
        return check;
    }

    // Re-hash: a reader thread streams the file once in blocks, hashing it
    // whole, while the chunks of each block are decoded and checked in
    // parallel.
    let reader = match store.backend().open_read(&name) {
        Ok(r) => r,
        Err(e) => {
            check.unreadable(&e, layout.entries.iter().map(|e| e.id));
            return check;
        }
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
    let streamed = std::thread::scope(|scope| {
        let hashing = scope.spawn(move || stream_blocks(reader, tx));
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_start = 0u64;
        let mut next = 0usize;
        let mut header_seen = false;
        for block in rx {
            if buf.is_empty() {
                buf = block;
            } else {
                buf.extend_from_slice(&block);
            }
            if !header_seen && buf_start == 0 && buf.len() >= PACK_MAGIC.len() {
                header_seen = true;
                if &buf[..PACK_MAGIC.len()] != PACK_MAGIC {
                    check.damaged("bad pack header".into());
                }
            }
            let buf_end = buf_start + buf.len() as u64;
            let ready = tiled[next..]
                .iter()
                .take_while(|e| e.offset as u64 + e.stored_len as u64 <= buf_end)
                .count();
            decode_batch(
                store,
                &buf,
                buf_start,
                &tiled[next..next + ready],
                &mut check,
            );
            next += ready;
            // Keep only what the next entry still needs.
            let keep_from = tiled
                .get(next)
                .map(|e| (e.offset as u64).max(buf_start))
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
    let decoded: usize = check.chunks as usize;
    match streamed {
        Ok((hash, len)) => {
            check.bytes = len;
            if decoded < tiled.len() {
                check.damaged(format!(
                    "truncated: chunk {} ends past the end of the file ({len} bytes)",
                    tiled[decoded].id
                ));
                check.corrupt.extend(tiled[decoded..].iter().map(|e| e.id));
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
            let unchecked = tiled[decoded.min(tiled.len())..].iter().map(|e| e.id);
            check.unreadable(&e, unchecked);
        }
    }
    // Entries overlapping others: each checked on its own.
    for e in overlapping {
        match store
            .backend()
            .read_range(&name, e.offset as u64, e.stored_len as usize)
        {
            Ok(stored) => {
                check.chunks += 1;
                if store
                    .decode_chunk(stored, &e.id, e.compressed, e.raw_len)
                    .is_err()
                {
                    check.corrupt.push(e.id);
                }
            }
            Err(err) => check.unreadable(&err, [e.id]),
        }
    }
    check.corrupt.sort();
    check.corrupt.dedup();
    check
}

/// Decodes and checks, in parallel, entries lying wholly in `buf` (which
/// starts at file offset `start`).
fn decode_batch(
    store: &Store,
    buf: &[u8],
    start: u64,
    batch: &[&PackEntry],
    check: &mut PackCheck,
) {
    let bad: Vec<Id> = batch
        .par_iter()
        .filter_map(|e| {
            let from = (e.offset as u64 - start) as usize;
            let stored = &buf[from..from + e.stored_len as usize];
            store
                .check_chunk(stored, &e.id, e.compressed, e.raw_len)
                .err()
                .map(|_| e.id)
        })
        .collect();
    check.chunks += batch.len() as u64;
    check.corrupt.extend(bad);
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
