//! `drill`: proves a snapshot restorable without touching live data. This
//! module owns the drill's checks of a restored tree and its result; the
//! restore itself is `restore --to` into a scratch folder under the store's
//! `tmp/` (named for this process, so a killed drill's leftovers are cleaned
//! by the next writer), and the outcome goes to the drill log.
//!
//! Checks: every restored file against the manifest (size, mode, and chunk
//! ids re-cut from the bytes on disk), folders and symlinks present,
//! `PRAGMA integrity_check` on the db (restore's last step) and on every
//! SQLite file in the Chroma tree, and row counts of the db's tables.
//! Damage in the store (validation refused, a corrupt chunk) is a drill
//! that failed (`ok: false`, logged); an environment problem (store locked,
//! disk full) is an error and logs nothing.

use chrono::{SecondsFormat, Utc};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::ops::restore::{self, ChromaChoice, RestoreOptions};
use crate::progress::Progress;
use crate::sources::sqlite;
use crate::stamp::Stamp;
use crate::store::audit_log;
use crate::store::index::ChunkIndex;
use crate::store::manifest::{EntryKind, Manifest, DB_PATH};
use crate::store::names::Log;
use crate::store::ReadFrom;
use crate::store::Store;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DrillResult {
    pub stamp: String,
    pub ok: bool,
    pub files_checked: u64,
    pub bytes_checked: u64,
    pub db_integrity_ok: bool,
    pub sqlite_files_checked: u64,
    pub table_rows: BTreeMap<String, u64>,
    pub errors: Vec<String>,
    pub duration_ms: u64,
}

/// Drills `stamp` (default: the newest snapshot) and logs the outcome.
pub fn drill(
    store: &Store,
    stamp: Option<&str>,
    lock_wait: Duration,
    progress: &dyn Progress,
) -> Result<DrillResult> {
    let started = Instant::now();
    let stamp = match stamp {
        Some(s) => Stamp::parse(s)?,
        None => store
            .list_snapshots()?
            .stamps
            .pop()
            .ok_or(Error::NoSnapshots)?,
    };
    if !store.snapshot_exists(&stamp)? {
        return Err(Error::SnapshotMissing {
            stamp: stamp.to_string(),
        });
    }
    // Held for the whole drill: gc (exclusive) empties tmp/, where the
    // scratch restore lives.
    let _lock = store.lock_shared_reader("drill", lock_wait)?;
    let tmp = store.tmp_dir()?;
    let scratch = tempfile::Builder::new()
        // Named by its owner, so that a killed drill's scratch (a whole
        // restore) is swept by the next writer, not left for gc.
        .prefix(&format!(
            "{}drill-",
            crate::os::TempOwner::current().prefix()
        ))
        .tempdir_in(&tmp)
        .ctx("create a scratch folder in", &tmp)?;
    let root = scratch.path();
    let opts = RestoreOptions {
        stamp: stamp.to_string(),
        // No live runtime: a drill writes only its scratch folder.
        db: PathBuf::new(),
        registry: PathBuf::new(),
        chroma_dir: PathBuf::new(),
        to: Some(root.to_path_buf()),
        confirm_service_stopped: false,
        pre_snapshot: false,
        chroma: ChromaChoice::Auto,
        lock_wait,
    };
    let mut result = DrillResult {
        stamp: stamp.to_string(),
        ..DrillResult::default()
    };
    match restore::restore(store, &opts, progress) {
        Ok(restored) => {
            result.db_integrity_ok = restored.restored_integrity_ok;
            if let Some(e) = restored.integrity_error {
                result
                    .errors
                    .push(format!("db_integrity_check_failed: {e}"));
            }
            crate::os::check_interrupted()?;
            let manifest = store.read_manifest(&stamp, ReadFrom::Cache)?;
            let index = store.load_index()?;
            check_restored(store, &index, &manifest, root, &mut result);
            crate::os::check_interrupted()?;
            match sqlite::table_row_counts(&root.join(DB_PATH)) {
                Ok(rows) => result.table_rows = rows,
                Err(e) => result.errors.push(format!("table_count_failed: {e}")),
            }
        }
        // Damage found in the store: the drill's verdict, not an error.
        Err(e) if e.exit_code() == 3 => result.errors.push(format!("{}: {e}", e.code())),
        Err(e) => return Err(e),
    }
    drop(scratch);
    result.ok = result.errors.is_empty();
    result.duration_ms = started.elapsed().as_millis() as u64;
    let at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut record = serde_json::to_value(&result).map_err(|e| Error::Encode {
        detail: e.to_string(),
    })?;
    record["drill_at"] = serde_json::Value::String(at.clone());
    audit_log::append(store, Log::Drill, Some(&result.stamp), &at, &record)?;
    Ok(result)
}

/// One entry's findings.
#[derive(Default)]
struct Finding {
    files: u64,
    bytes: u64,
    sqlite_files: u64,
    errors: Vec<String>,
}

/// Checks a tree restored with `--to root` against the manifest.
pub fn check_restored(
    store: &Store,
    index: &ChunkIndex,
    manifest: &Manifest,
    root: &Path,
    out: &mut DrillResult,
) {
    let params = &store.config().chunking;
    let sealer = store.sealer();
    let findings: Vec<Finding> = manifest
        .entries
        .par_iter()
        .map(|e| {
            let mut f = Finding::default();
            let name = e.path_lossy();
            let path = root.join(OsStr::from_bytes(&e.path));
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(err) => {
                    f.errors
                        .push(format!("restored_file_missing: {name}: {err}"));
                    return f;
                }
            };
            match &e.kind {
                EntryKind::File(file) => {
                    f.files = 1;
                    f.bytes = file.size;
                    if !meta.is_file() {
                        f.errors.push(format!("restored_kind_mismatch: {name}"));
                        return f;
                    }
                    // The list streamed (a large file's ids are not held);
                    // a list blob that does not read ends it, reported as
                    // itself rather than as a mismatch.
                    let mut fault = None;
                    let matched = match store.file_chunks(index, file) {
                        Ok(ids) => {
                            let ids = ids.map_while(|r| r.map_err(|e| fault = Some(e)).ok());
                            restore::file_matches(&path, &e.path, file, ids, params, sealer)
                        }
                        Err(err) => {
                            fault = Some(err);
                            Ok(false)
                        }
                    };
                    if let Some(err) = fault {
                        f.errors.push(format!("{}: {name}: {err}", err.code()));
                        return f;
                    }
                    match matched {
                        Ok(true) => {}
                        Ok(false) => f.errors.push(format!("restored_file_mismatch: {name}")),
                        Err(err) => f
                            .errors
                            .push(format!("restored_file_unreadable: {name}: {err}")),
                    }
                    if meta.permissions().mode() & 0o7777 != e.mode & 0o7777 {
                        f.errors.push(format!(
                            "restored_mode_mismatch: {name}: {:o} instead of {:o}",
                            meta.permissions().mode() & 0o7777,
                            e.mode & 0o7777
                        ));
                    }
                    if file.sqlite && e.is_chroma() {
                        f.sqlite_files = 1;
                        match sqlite::integrity_problems(&path, false) {
                            Ok(None) => {}
                            Ok(Some(p)) => f
                                .errors
                                .push(format!("sqlite_integrity_check_failed: {name}: {p}")),
                            Err(err) => f
                                .errors
                                .push(format!("sqlite_integrity_check_failed: {name}: {err}")),
                        }
                    }
                }
                EntryKind::Dir => {
                    if !meta.is_dir() {
                        f.errors.push(format!("restored_kind_mismatch: {name}"));
                    }
                }
                EntryKind::Symlink { target } => {
                    let same = std::fs::read_link(&path)
                        .map(|t| t.as_os_str().as_bytes() == &target[..])
                        .unwrap_or(false);
                    if !same {
                        f.errors.push(format!("restored_symlink_mismatch: {name}"));
                    }
                }
            }
            f
        })
        .collect();
    for f in findings {
        out.files_checked += f.files;
        out.bytes_checked += f.bytes;
        out.sqlite_files_checked += f.sqlite_files;
        out.errors.extend(f.errors);
    }
}
