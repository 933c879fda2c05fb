//! `validate` (one snapshot: the gate before a restore) and `verify` (the
//! whole store, or named snapshots: an integrity audit of every object).

mod audit;
pub mod repair;
mod report;
pub mod sample;

pub use audit::{metadata_problem, Audit};
pub use report::{Quarantined, RepairReport, SampleReport, SnapshotHealth, VerifyReport};
pub use sample::Sample;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::id::Id;
use crate::ops::extract::{self, ExtractError};
use crate::sources::sqlite;
use crate::stamp::Stamp;
use crate::store::audit_log::{self, VerifyRecord, VerifyScope};
use crate::store::index::ChunkIndex;
use crate::store::manifest::{Entry, FileEntry, Manifest};
use crate::store::names::Log;
use crate::store::ReadFrom;
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
    let manifest = match store.read_manifest(&stamp, ReadFrom::Cache) {
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
    crate::failpoint::pause("validate:before-reads");
    let lists = FileLists::read(store, index, manifest)?;
    let every_chunk = lists.ids.values().filter_map(|r| r.as_ref().ok()).flatten();
    store.with_packs_prefetched(index, every_chunk, || {
        check_manifest(store, index, manifest, &lists, report)
    })
}

/// Every file's chunk ids, read once from its list (each list blob read
/// is re-hashed like a chunk); a file whose list does not read has the
/// blob at fault instead.
struct FileLists<'m> {
    ids: HashMap<&'m [u8], FileIds>,
}

/// A file's chunk ids, or the list blob at fault.
type FileIds = std::result::Result<Vec<Id>, (Id, ChunkFault)>;

impl<'m> FileLists<'m> {
    /// A list that cannot be read for a storage failure (not damage) is
    /// the error.
    fn read(store: &Store, index: &ChunkIndex, manifest: &'m Manifest) -> Result<FileLists<'m>> {
        let mut ids = HashMap::new();
        for e in &manifest.entries {
            let Some(f) = e.file() else { continue };
            let read = match store.file_chunk_ids(index, f) {
                Ok(list) => Ok(list),
                Err(err) => Err(crate::store::error_fault(&err).ok_or(err)?),
            };
            ids.insert(&e.path[..], read);
        }
        Ok(FileLists { ids })
    }

    fn of(&self, path: &[u8]) -> Option<&FileIds> {
        self.ids.get(path)
    }
}

fn check_manifest(
    store: &Store,
    index: &ChunkIndex,
    manifest: &Manifest,
    lists: &FileLists<'_>,
    report: &mut ValidateReport,
) -> Result<()> {
    let mut errors: BTreeSet<String> = BTreeSet::new();
    for (id, fault) in lists.ids.values().filter_map(|r| r.as_ref().err()) {
        errors.insert(fault.code(id));
    }
    let db_ids = manifest
        .find(crate::store::manifest::DB_PATH)
        .and_then(|e| lists.of(&e.path));

    // The db: rebuilt into a temp file (which verifies its chunks), then
    // integrity-checked by SQLite itself.
    report.db_ok = match manifest.db() {
        None => {
            errors.insert("db_missing_from_snapshot".into());
            false
        }
        Some(db) => match db_ids {
            Some(Ok(ids)) => check_db(store, index, db, ids, &mut errors)?,
            _ => false,
        },
    };

    // Every other chunk, each once, in parallel.
    let db_chunks: HashSet<&Id> = match db_ids {
        Some(Ok(ids)) => ids.iter().collect(),
        _ => HashSet::new(),
    };
    // In manifest order: a file's chunks share format-2 frames, and the
    // store's frame cache decodes each frame once only when they are read
    // in order (rayon splits the list into contiguous runs).
    let mut seen: HashSet<&Id> = HashSet::new();
    let others: Vec<&Id> = manifest
        .entries
        .iter()
        .filter_map(|e| match lists.of(&e.path) {
            Some(Ok(ids)) => Some(ids.iter()),
            _ => None,
        })
        .flatten()
        .filter(|id| !db_chunks.contains(id) && seen.insert(*id))
        .collect();
    let faults: HashMap<Id, ChunkFault> = others
        .par_iter()
        .filter_map(|id| store.read_chunk(index, id).err().map(|f| (**id, f)))
        .map(|(id, f)| damage_only(id, f).map(|f| (id, f)))
        .collect::<Result<_>>()?;
    let file_ok = |e: &Entry| match lists.of(&e.path) {
        Some(Ok(ids)) => ids.iter().all(|id| !faults.contains_key(id)),
        _ => false,
    };
    for (id, fault) in &faults {
        errors.insert(fault.code(id));
    }
    for entry in &manifest.entries {
        if let (Some(f), Some(Ok(ids))) = (entry.file(), lists.of(&entry.path)) {
            if extract::indexed_size(index, ids)?.is_some_and(|s| s != f.size) {
                errors.insert(format!("size_mismatch: {}", entry.path_lossy()));
            }
        }
    }

    let registry = manifest.find(crate::store::manifest::REGISTRY_PATH);
    report.registry_ok = registry
        .and_then(|e| e.file().map(|f| (e, f)))
        .map(|(e, reg)| {
            if !file_ok(e) {
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
        .then(|| manifest.chroma_files().all(|(e, _)| file_ok(e)));

    errors.extend(manifest.capture_errors.iter().cloned());
    report.errors = errors.into_iter().collect();
    report.valid = report.errors.is_empty();
    Ok(())
}

/// A chunk whose pack the storage failed to deliver proves nothing either
/// way: validation stops at the first such read with that I/O error
/// (exit 1) instead of calling the snapshot damaged, and without trying
/// every other chunk of a store it cannot reach (each try waits out the
/// retries).
fn damage_only(id: Id, fault: ChunkFault) -> Result<ChunkFault> {
    match fault {
        ChunkFault::Unreadable { .. } => Err(fault.into_error(&id)),
        damage => Ok(damage),
    }
}

fn check_db(
    store: &Store,
    index: &ChunkIndex,
    db: &FileEntry,
    db_ids: &[Id],
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
    match extract::write_file(
        store,
        index,
        db,
        &mut out,
        |_| {},
        extract::ChunkSource::Store,
    ) {
        Ok(_) => {}
        Err(ExtractError::Chunk(id, fault)) => {
            errors.insert(damage_only(id, fault)?.code(&id));
            // Keep checking the db's other chunks so every fault is named.
            for id in db_ids {
                if let Err(f) = store.read_chunk(index, id) {
                    errors.insert(damage_only(*id, f)?.code(id));
                }
            }
            return Ok(false);
        }
        Err(ExtractError::Write(e)) => return Err(Error::io("write", tmp.path(), e)),
        Err(ExtractError::TooLarge { limit }) => return Err(Error::DbTooLarge { limit }),
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

/// What `verify` is asked to do.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Only these snapshots (and only the objects they reference).
    pub snapshots: Vec<String>,
    /// Re-hash only a sample of the packs (see [`Sample`]); check the rest
    /// structurally. None: re-hash everything.
    pub sample: Option<Sample>,
    /// Quarantine damaged packs and keep their intact chunks (exclusive lock).
    pub repair: bool,
    pub lock_wait: Duration,
}

impl VerifyOptions {
    pub fn new(lock_wait: Duration) -> VerifyOptions {
        VerifyOptions {
            snapshots: Vec::new(),
            sample: None,
            repair: false,
            lock_wait,
        }
    }
}

/// Audits the store (or only what `opts.snapshots` reference), re-hashing
/// everything; with `opts.repair`, repairs what it found.
pub fn verify(store: &Store, opts: &VerifyOptions) -> Result<VerifyReport> {
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
    if let Some(sample) = &opts.sample {
        sample.check()?;
        if matches!(sample, Sample::Oldest(_)) && selected.is_some() {
            return Err(Error::Usage(
                "--oldest with --snapshot: the packs verified longest ago are the store's".into(),
            ));
        }
    }
    let sample = opts.sample.as_ref();
    let mut report = if opts.repair {
        let lock = store.lock_exclusive("verify --repair", opts.lock_wait)?;
        let audit = audit::audit(store, selected.as_deref(), sample)?;
        let repaired = repair::repair(store, &lock, &audit)?;
        let mut report = record(store, opts, audit, started);
        report.repair = Some(repaired);
        report
    } else {
        let _lock = store.lock_shared_reader("verify", opts.lock_wait)?;
        let audit = audit::audit(store, selected.as_deref(), sample)?;
        record(store, opts, audit, started)
    };
    report.quarantined_objects = store.quarantined_objects()?.len() as u64;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Writes the audit's outcome to the verify log (the caller holds the
/// store lock) and returns its report. A record that cannot be written (a
/// read-only store) is a warning: the audit's verdict stands.
fn record(store: &Store, opts: &VerifyOptions, audit: Audit, started: Instant) -> VerifyReport {
    let mut report = audit.report;
    let scope = match (&opts.sample, opts.snapshots.is_empty()) {
        (_, false) => VerifyScope::Snapshots,
        (Some(_), true) => VerifyScope::Sample,
        (None, true) => VerifyScope::Store,
    };
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let rec = VerifyRecord {
        at: at.clone(),
        scope,
        sample: opts.sample.as_ref().map(Sample::spec),
        ok: report.ok,
        damaged_objects: report.damaged_objects.clone(),
        packs_read: audit.packs_read.iter().map(Id::to_hex).collect(),
        snapshots: audit.covered,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    match audit_log::append(store, Log::Verify, None, &at, &rec) {
        Ok(name) => report.recorded = Some(name),
        Err(e) => report
            .warnings
            .push(format!("verify record not written: {}: {e}", e.code())),
    }
    report
}
