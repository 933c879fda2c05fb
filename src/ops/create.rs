//! `create`: captures the database, the registry and (with `--chroma`) the
//! Chroma tree into new packs, then publishes the snapshot's manifest.
//!
//! Order of work, each step durable before the next:
//! 1. refuse early (missing db, not SQLite) before anything is written;
//! 2. take the shared store lock (gc cannot delete under us);
//! 3. stream every source through the pipeline (`create/pipeline.rs`: a
//!    reader thread reads, cuts and hashes a batch ahead; the packer's
//!    encoder threads compress frames; its publisher finishes full packs),
//!    skipping chunks the store already has, and build each file's list
//!    tree as its ids come (list blobs, `store::lists`,
//!    `store/list_stream.rs`) against the previous snapshot's tree of the same
//!    path (`create/capture.rs`);
//! 4. flush the last pack and wait for every pack being published (fsync,
//!    rename);
//! 5. publish `snapshots/<stamp>/` atomically.
//!
//! A crash at any point leaves at most unreferenced packs and temp files.
//!
//! A file the files cache vouches for (same size, mtime, ctime, inode)
//! keeps the previous snapshot's list root: no list blob and no chunk id
//! is read, and the chunk index is loaded only once a file must be read,
//! so a snapshot where nothing changed costs one manifest.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::sources::sqlite;
use crate::stamp::Stamp;
use crate::store::lock::SharedLock;
use crate::store::manifest::{Manifest, DB_PATH, MANIFEST_VERSION};
use crate::store::Store;

mod capture;
mod pipeline;
mod previous;

use capture::Capture;
use previous::{newest_manifest, unresolved_references};

#[derive(Clone, Debug)]
pub struct CreateOptions {
    pub db: PathBuf,
    pub registry: PathBuf,
    /// Some(dir) when Chroma is to be captured.
    pub chroma: Option<PathBuf>,
    pub tags: Vec<String>,
    pub at: Option<DateTime<Utc>>,
    pub lock_wait: Duration,
    /// Cooperative ingestion lock held exclusively while Chroma is read.
    pub ingestion_lock: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateResult {
    pub stamp: String,
    pub created_at: String,
    pub tags: Vec<String>,
    pub db_size_bytes: u64,
    pub registry_snapshot_included: bool,
    pub chroma_snapshot_included: bool,
    pub chroma_snapshot_files: u64,
    pub chroma_snapshot_bytes: u64,
    pub chunks_total: u64,
    pub chunks_new: u64,
    /// List blobs written (format 2: the changed parts of files' lists).
    #[serde(default)]
    pub list_blobs_new: u64,
    pub bytes_new_stored: u64,
    pub files_from_cache: u64,
    pub duration_ms: u64,
    pub validated: bool,
    pub validation_errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Takes a snapshot, holding the shared store lock.
pub fn create(
    store: &Store,
    opts: &CreateOptions,
    progress: &dyn Progress,
) -> Result<CreateResult> {
    sqlite::check_database(&opts.db)?;
    let lock = store.lock_shared("create", opts.lock_wait)?;
    capture(store, &lock, opts, progress)
}

/// Takes a snapshot under a shared lock the caller already holds. Stops
/// with `interrupted` between batches once a signal asked the process to
/// stop, and publishes nothing then, nor when the lock was lost
/// (`store_lock_lost`).
pub(crate) fn capture(
    store: &Store,
    lock: &SharedLock,
    opts: &CreateOptions,
    progress: &dyn Progress,
) -> Result<CreateResult> {
    let started = Instant::now();
    let tags = super::tag::new_tags("tags", &opts.tags)?;
    let at = opts.at.unwrap_or_else(Utc::now);
    let wanted = Stamp::at(at);
    sqlite::check_database(&opts.db)?;
    store.check_writable()?;
    store.clean_tmp(None)?;
    let previous = newest_manifest(store, &wanted);
    let mut cap = Capture::new(store, previous, progress);

    progress.phase(
        "database",
        std::fs::metadata(&opts.db).ok().map(|m| m.len()),
    );
    cap.capture_sqlite(DB_PATH.as_bytes().to_vec(), &opts.db, true)?;

    // Followed if a link (a Kubernetes ConfigMap mounts its files so).
    let registry_included = match std::fs::metadata(&opts.registry) {
        Ok(m) if m.is_file() => {
            cap.capture_registry(&opts.registry)?;
            true
        }
        Ok(_) => {
            cap.warnings.push(format!(
                "registry {} is not a regular file; not captured",
                opts.registry.display()
            ));
            false
        }
        Err(_) => false,
    };

    let mut chroma_included = false;
    if let Some(dir) = &opts.chroma {
        if dir.is_dir() {
            let _ingestion = match &opts.ingestion_lock {
                Some(p) => Some(hold_ingestion_lock(p, opts.lock_wait)?),
                None => None,
            };
            cap.capture_chroma(dir)?;
            chroma_included = true;
        } else {
            cap.warnings.push(format!(
                "chroma dir {} does not exist: snapshot taken without Chroma",
                dir.display()
            ));
        }
    }
    cap.finish()?;

    let Capture {
        entries,
        errors,
        warnings,
        chunks_total,
        chunks_new,
        list_blobs_new,
        files_from_cache,
        packer,
        index,
        ..
    } = cap;
    let bytes_new_stored = packer.bytes_written();
    drop(packer);

    let mut manifest = Manifest {
        version: MANIFEST_VERSION,
        stamp: wanted.to_string(),
        created_at: at.to_rfc3339_opts(SecondsFormat::Secs, true),
        tags: tags.clone(),
        hostname: crate::os::hostname(),
        chroma_included,
        capture_errors: errors.clone(),
        entries,
    };
    let mut validation_errors = errors;
    match unresolved_references(&manifest, index.as_ref()) {
        Ok(missing) => validation_errors.extend(missing),
        // The snapshot is published: a check that could not run is
        // reported, and the snapshot not called valid.
        Err(e) => validation_errors.push(format!("{}: {e}", e.code())),
    }

    let mut result = CreateResult {
        stamp: wanted.to_string(),
        created_at: manifest.created_at.clone(),
        tags,
        db_size_bytes: manifest.db_size(),
        registry_snapshot_included: registry_included,
        chroma_snapshot_included: chroma_included,
        chroma_snapshot_files: manifest.chroma_file_count(),
        chroma_snapshot_bytes: manifest.chroma_bytes(),
        chunks_total,
        chunks_new,
        list_blobs_new,
        bytes_new_stored,
        files_from_cache,
        duration_ms: 0,
        validated: validation_errors.is_empty(),
        validation_errors,
        warnings,
    };
    result.duration_ms = started.elapsed().as_millis() as u64;
    let mut metadata = serde_json::to_value(&result).map_err(|e| Error::Encode {
        detail: e.to_string(),
    })?;
    let stamp = store.publish_snapshot(lock, &wanted, &mut manifest, &mut metadata)?;
    result.stamp = stamp.to_string();
    result.duration_ms = started.elapsed().as_millis() as u64;
    progress.finish();
    Ok(result)
}

/// Holds the exclusive OS lock on the ingestion lock file.
fn hold_ingestion_lock(path: &Path, wait: Duration) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .ctx("open ingestion lock", path)?;
    let start = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < wait => {
                crate::os::check_interrupted()?;
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    holders: format!("the ingestion lock {} (a service writer)", path.display()),
                    waited_secs: wait.as_secs(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("lock", path, e)),
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::lock::object::{acquire_with, How};
    use crate::store::lock::Held;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// Moves the lock's wall clock a lifetime ahead when capture is under
    /// way: what a host suspended (or cut off) mid-create sees.
    struct SleepMidway {
        offset: Arc<AtomicU64>,
        jump_ms: u64,
    }

    impl Progress for SleepMidway {
        fn advance(&self, _bytes: u64) {
            self.offset.store(self.jump_ms, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_create_whose_lock_lapsed_midway_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/runtime/data");
        let db = dir.path().join("atocore.db");
        for f in ["atocore.db", "atocore.db-wal", "atocore.db-shm"] {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
        let store = Store::init(
            &crate::store::location::StoreAddress::local(dir.path().join("store")),
            &crate::store::InitOptions::default(),
        )
        .unwrap();
        let offset = Arc::new(AtomicU64::new(0));
        let o = offset.clone();
        let base = chrono::Utc::now().timestamp_millis() as u64;
        let ttl = Duration::from_secs(300);
        let how = How {
            wait: Duration::ZERO,
            exclusive: false,
            notify: None,
            ttl,
            clock: Arc::new(move || base + o.load(Ordering::SeqCst)),
        };
        let held = acquire_with(store.backend_handle(), "create", how).unwrap();
        let lock = SharedLock::from_held(Held::Object(held));
        let opts = CreateOptions {
            db,
            registry: dir.path().join("none.json"),
            chroma: None,
            tags: vec![],
            at: None,
            lock_wait: Duration::ZERO,
            ingestion_lock: None,
        };
        let progress = SleepMidway {
            offset,
            jump_ms: ttl.as_millis() as u64,
        };
        let err = capture(&store, &lock, &opts, &progress).unwrap_err();
        assert_eq!(err.code(), "store_lock_lost", "{err}");
        assert!(store.list_snapshots().unwrap().stamps.is_empty());
    }
}
