//! `validate` (one snapshot: the gate before a restore) and `verify` (the
//! whole store, or named snapshots: an integrity audit of every object).

mod audit;
mod pack_check;
pub mod repair;
mod report;
pub mod sample;
mod sizes;

pub use audit::{metadata_problem, Audit};
pub use report::{
    Quarantined, RepairReport, SampleReport, SizeMismatch, SnapshotHealth, VerifyReport,
};
pub use sample::Sample;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::id::{Id, IdSet};
use crate::ops::extract::{self, ExtractError};
use crate::ops::mark;
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
    // A remote store fetches the packs ahead in the order the files need
    // them (a local store does not walk this).
    let every_chunk = manifest
        .entries
        .iter()
        .filter_map(Entry::file)
        .flat_map(|f| store.file_chunks(index, f).into_iter().flatten())
        .map_while(|id| id.ok());
    store.with_packs_prefetched(index, every_chunk, || {
        check_manifest(store, index, manifest, report)
    })
}

/// Chunks read per parallel batch while streaming a file's list: 2 MiB of
/// ids. Each batch ends with a wait for its slowest reader, and the list
/// is read between batches by one thread, so batches are large.
const CHECK_BATCH: usize = 1 << 16;
/// Chunks remembered as read and sound (each file's repeats, zero pages,
/// are not read again); the set starts over when full, so memory stays
/// bounded whatever the store's size.
const CHECKED_KEPT: usize = 1 << 16;

/// What checking the chunks of the files other than the db found.
#[derive(Default)]
struct Checked<'m> {
    /// Chunk faults of the files whose list reads (each chunk once).
    faults: HashMap<Id, ChunkFault>,
    /// Per file path: its list reads and none of its chunks is at fault.
    ok: HashMap<&'m [u8], bool>,
}

/// Streams `f`'s chunk ids: the list blob at fault if its list does not
/// read (a storage failure is the error), else its size by the index
/// (None when a chunk is not indexed). `each` sees every id in file order.
fn stream_file(
    store: &Store,
    index: &ChunkIndex,
    f: &FileEntry,
    mut each: impl FnMut(Id) -> Result<()>,
) -> Result<std::result::Result<Option<u64>, (Id, ChunkFault)>> {
    let ids = match store.file_chunks(index, f) {
        Ok(ids) => ids,
        Err(err) => return Ok(Err(crate::store::error_fault(&err).ok_or(err)?)),
    };
    let mut size = Some(0u64);
    for id in ids {
        let id = match id {
            Ok(id) => id,
            Err(err) => return Ok(Err(crate::store::error_fault(&err).ok_or(err)?)),
        };
        let loc = mark::locate(index, &id)?;
        size = size.and_then(|s| Some(s + loc?.raw_len as u64));
        each(id)?;
    }
    Ok(Ok(size))
}

fn check_manifest(
    store: &Store,
    index: &ChunkIndex,
    manifest: &Manifest,
    report: &mut ValidateReport,
) -> Result<()> {
    let mut errors: BTreeSet<String> = BTreeSet::new();

    // The db: its ids (the other files' check passes over them), then
    // rebuilt into a temp file (which verifies its chunks) and
    // integrity-checked by SQLite itself.
    let db_entry = manifest.find(crate::store::manifest::DB_PATH);
    let mut db_chunks = IdSet::default();
    let db_list = match db_entry.and_then(|e| e.file().map(|f| (e, f))) {
        None => None,
        Some((e, f)) => {
            let read = stream_file(store, index, f, |id| {
                db_chunks.insert(id);
                Ok(())
            })?;
            match read {
                Ok(size) => {
                    size_check(e, f, size, &mut errors);
                    Some(true)
                }
                Err((id, fault)) => {
                    errors.insert(fault.code(&id));
                    Some(false)
                }
            }
        }
    };
    report.db_ok = match manifest.db() {
        None => {
            errors.insert("db_missing_from_snapshot".into());
            false
        }
        Some(db) => match db_list {
            Some(true) => {
                crate::os::check_interrupted()?;
                check_db(store, index, db, &mut errors)?
            }
            _ => false,
        },
    };

    // Every other chunk, in manifest order and file order, in parallel
    // batches: a file's chunks share format-2 frames, and the store's frame
    // cache decodes each frame once only when they are read in order.
    let mut checked = Checked::default();
    let mut sound = IdSet::default();
    for entry in &manifest.entries {
        let Some(f) = entry.file() else { continue };
        crate::os::check_interrupted()?;
        if db_entry.is_some_and(|db| std::ptr::eq(db, entry)) {
            checked.ok.insert(&entry.path, db_list == Some(true));
            continue;
        }
        let mut pending: Vec<(Id, ChunkFault)> = Vec::new();
        let mut batch: Vec<Id> = Vec::with_capacity(CHECK_BATCH);
        let read = stream_file(store, index, f, |id| {
            if db_chunks.contains(&id) || sound.contains(&id) {
                return Ok(());
            }
            if sound.len() >= CHECKED_KEPT {
                sound.clear();
            }
            sound.insert(id);
            batch.push(id);
            if batch.len() == CHECK_BATCH {
                check_batch(store, index, &mut batch, &mut pending)?;
            }
            Ok(())
        })?;
        check_batch(store, index, &mut batch, &mut pending)?;
        for (id, _) in &pending {
            sound.remove(id);
        }
        match read {
            // A file whose list does not read has its chunks unchecked.
            Err((id, fault)) => {
                errors.insert(fault.code(&id));
                checked.ok.insert(&entry.path, false);
            }
            Ok(size) => {
                size_check(entry, f, size, &mut errors);
                checked.ok.insert(&entry.path, pending.is_empty());
                checked.faults.extend(pending);
            }
        }
    }
    let file_ok = |e: &Entry| checked.ok.get(&e.path[..]) == Some(&true);
    for (id, fault) in &checked.faults {
        errors.insert(fault.code(id));
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

/// A file whose chunks the index sizes at other than its recorded size.
fn size_check(entry: &Entry, f: &FileEntry, size: Option<u64>, errors: &mut BTreeSet<String>) {
    if let Some(wrong) = SizeMismatch::check(entry, f, size) {
        errors.insert(wrong.to_string());
    }
}

/// Reads and checks the chunks of `batch` in parallel (emptying it); the
/// damaged ones go to `faults`, a storage failure is the error.
fn check_batch(
    store: &Store,
    index: &ChunkIndex,
    batch: &mut Vec<Id>,
    faults: &mut Vec<(Id, ChunkFault)>,
) -> Result<()> {
    crate::os::check_interrupted()?;
    let found: Vec<(Id, ChunkFault)> = batch
        .par_iter()
        .filter_map(|id| store.read_chunk(index, id).err().map(|f| (*id, f)))
        .map(|(id, f)| damage_only(id, f).map(|f| (id, f)))
        .collect::<Result<_>>()?;
    faults.extend(found);
    batch.clear();
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
            // Keep checking the db's other chunks so every fault is named
            // (its list read whole before).
            stream_file(store, index, db, |id| {
                if let Err(f) = store.read_chunk(index, &id) {
                    errors.insert(damage_only(id, f)?.code(&id));
                }
                Ok(())
            })?
            .ok();
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
    // Every snapshot found whole: packs found lost before (the mark this
    // audit started with) cost none of their chunks, and copy may take
    // this store's summaries on trust again.
    if let (VerifyScope::Store, true, Some(seen)) = (scope, report.ok, &audit.losses_seen) {
        if let Err(e) = store.clear_losses(seen) {
            report
                .warnings
                .push(format!("the mark of lost packs not cleared: {e}"));
        }
    }
    report
}
