//! `create`: captures the database, the registry and (with `--chroma`) the
//! Chroma tree into new packs, then publishes the snapshot's manifest.
//!
//! Order of work, each step durable before the next:
//! 1. refuse early (missing db, not SQLite) before anything is written;
//! 2. take the shared store lock (gc cannot delete under us);
//! 3. stream every source through chunking, hashing and compression in
//!    parallel batches, skipping chunks the store already has, and build
//!    each file's list tree (list blobs, `store::lists`) against the
//!    previous snapshot's tree of the same path;
//! 4. flush the last pack (fsync, rename);
//! 5. publish `snapshots/<stamp>/` atomically.
//!
//! A crash at any point leaves at most unreferenced packs and temp files.
//!
//! A file the files cache vouches for (same size, mtime, ctime, inode)
//! keeps the previous snapshot's list root: no list blob and no chunk id
//! is read, and the chunk index is loaded only once a file must be read,
//! so a snapshot where nothing changed costs one manifest.

use chrono::{DateTime, SecondsFormat, Utc};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::chunk::{self, Strategy};
use crate::error::{Error, IoContext, Result};
use crate::id::{Id, IdSet};
use crate::progress::Progress;
use crate::sources::{self, chroma, sqlite};
use crate::stamp::Stamp;
use crate::store::index::ChunkIndex;
use crate::store::lists::ListRef;
use crate::store::lock::SharedLock;
use crate::store::manifest::{
    ChunkList, Entry, EntryKind, FileEntry, Manifest, SourceStat, CHROMA_PREFIX, DB_PATH,
    MANIFEST_VERSION, REGISTRY_PATH,
};
use crate::store::packer::Packer;
use crate::store::Store;

mod previous;

use previous::{newest_manifest, unresolved_references, Previous};

/// Bytes of a file processed per parallel batch: bounds memory (the batch,
/// its encoded copy and the page reader's two batches in flight).
const BATCH_BYTES: usize = 4 << 20;
/// A file whose mtime or ctime is this recent is not trusted to the files
/// cache: a write in the same clock tick would go unseen.
const RACY_WINDOW_NS: i64 = 2_000_000_000;

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

    let registry_included = match std::fs::symlink_metadata(&opts.registry) {
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
        tags: opts.tags.clone(),
        hostname: crate::os::hostname(),
        chroma_included,
        capture_errors: errors.clone(),
        entries,
    };
    let mut validation_errors = errors;
    validation_errors.extend(unresolved_references(&manifest, index.as_ref())?);

    let mut result = CreateResult {
        stamp: wanted.to_string(),
        created_at: manifest.created_at.clone(),
        tags: opts.tags.clone(),
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

/// Captures sources into packs and collects manifest entries.
struct Capture<'a> {
    store: &'a Store,
    /// Loaded when a file must be read (a no-change snapshot never needs it).
    index: Option<ChunkIndex>,
    packer: Packer<'a>,
    progress: &'a dyn Progress,
    /// The previous snapshot's files by path: the files cache and the old
    /// trees new lists are built against.
    cache: HashMap<Vec<u8>, FileEntry>,
    /// See [`Previous::suspect`].
    cache_suspect: bool,
    /// See [`Previous::older`]: its trees by path.
    older: HashMap<Vec<u8>, ListRef>,
    entries: Vec<Entry>,
    errors: Vec<String>,
    warnings: Vec<String>,
    chunks_total: u64,
    chunks_new: u64,
    list_blobs_new: u64,
    files_from_cache: u64,
    now_ns: i64,
}

/// A file's bytes stored: size, chunk ids and how it was cut.
struct Stored {
    size: u64,
    chunks: Vec<Id>,
    strategy: Strategy,
}

/// The chunk index, loaded on first use.
fn loaded<'i>(index: &'i mut Option<ChunkIndex>, store: &Store) -> Result<&'i mut ChunkIndex> {
    if index.is_none() {
        *index = Some(store.load_index()?);
    }
    Ok(index.get_or_insert_with(ChunkIndex::new))
}

impl<'a> Capture<'a> {
    fn new(
        store: &'a Store,
        mut previous: Option<Previous>,
        progress: &'a dyn Progress,
    ) -> Capture<'a> {
        // A snapshot that met capture errors is not trusted as a cache. The
        // manifest is consumed: its list roots move into the cache, and
        // from there into the new manifest, never copied.
        let cache_suspect = previous.as_ref().is_some_and(|p| p.suspect);
        let older = previous
            .as_mut()
            .and_then(|p| p.older.take())
            .map(|m| {
                m.entries
                    .into_iter()
                    .filter_map(|e| match e.kind {
                        EntryKind::File(FileEntry {
                            list: ChunkList::Tree(r),
                            ..
                        }) => Some((e.path, r)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let cache = previous
            .map(|p| p.manifest)
            .filter(|m| m.capture_errors.is_empty())
            .map(|m| {
                m.entries
                    .into_iter()
                    .filter_map(|e| match e.kind {
                        EntryKind::File(f) => Some((e.path, f)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Capture {
            store,
            index: None,
            packer: Packer::new(store),
            progress,
            cache,
            cache_suspect,
            older,
            entries: Vec::new(),
            errors: Vec::new(),
            warnings: Vec::new(),
            chunks_total: 0,
            chunks_new: 0,
            list_blobs_new: 0,
            files_from_cache: 0,
            now_ns: Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX),
        }
    }

    fn finish(&mut self) -> Result<()> {
        // Nothing was added to the packer without the index.
        match &mut self.index {
            Some(index) => self.packer.flush(index),
            None => Ok(()),
        }
    }

    /// The list of a file just stored: its tree, built against the
    /// previous snapshot's tree of the same path.
    fn list_of(&mut self, path: &[u8], stored: &Stored) -> Result<ChunkList> {
        let olds: Vec<ListRef> = [
            self.cache.get(path).and_then(|e| match &e.list {
                ChunkList::Tree(r) => Some(*r),
                ChunkList::Ids(_) => None,
            }),
            self.older.get(path).copied(),
        ]
        .into_iter()
        .flatten()
        .collect();
        let index = loaded(&mut self.index, self.store)?;
        let built = self
            .packer
            .add_list(index, &stored.strategy, &stored.chunks, &olds)?;
        if let Some(e) = built.old_fault {
            self.warnings.push(format!(
                "the previous list of {} could not be read ({}: {e}); its new list was built whole",
                String::from_utf8_lossy(path),
                e.code()
            ));
        }
        self.list_blobs_new += built.blobs_new;
        Ok(ChunkList::Tree(built.list))
    }

    /// Chunks, hashes and stores everything `reader` yields.
    fn store_stream<R: Read>(
        &mut self,
        reader: R,
        strategy: Strategy,
    ) -> Result<std::io::Result<Stored>> {
        let sealer = self.store.sealer().clone();
        let params = self.store.config().compression.clone();
        let index = loaded(&mut self.index, self.store)?;
        let packer = &mut self.packer;
        let progress = self.progress;
        let mut chunks = Vec::new();
        let mut new = 0u64;
        let mut verdict = CompressionVerdict::default();
        let read = chunk::for_each_batch(reader, strategy, BATCH_BYTES, |buf, ranges| {
            crate::os::check_interrupted()?;
            let ids: Vec<Id> = ranges
                .par_iter()
                .map(|r| sealer.chunk_id(&buf[r.clone()]))
                .collect();
            let mut seen = IdSet::default();
            let mut fresh: Vec<usize> = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                if !packer.has(index, id)? && seen.insert(*id) {
                    fresh.push(i);
                }
            }
            if packer.frames() {
                // Format 2: new chunks go into frames, compressed by the
                // packer's encoder threads while the next batch is hashed.
                for &i in &fresh {
                    if packer.add_raw(index, ids[i], &buf[ranges[i].clone()])? {
                        new += 1;
                    }
                }
                progress.advance(ranges.last().map(|r| r.end).unwrap_or(0) as u64);
                chunks.extend(ids);
                return Ok(());
            }
            let encoded: Vec<(usize, Vec<u8>, bool)> = fresh
                .par_iter()
                .map(|&i| {
                    let raw = &buf[ranges[i].clone()];
                    let (enc, compressed) = if verdict.worth_trying() {
                        chunk::encode(raw, &params)
                    } else {
                        (raw.to_vec(), false)
                    };
                    (i, sealer.seal(enc, &ids[i].0), compressed)
                })
                .collect();
            verdict.record(encoded.iter().map(|(_, _, c)| *c));
            for (i, stored, compressed) in encoded {
                if packer.add(index, ids[i], &stored, ranges[i].len() as u32, compressed)? {
                    new += 1;
                }
            }
            progress.advance(ranges.last().map(|r| r.end).unwrap_or(0) as u64);
            chunks.extend(ids);
            Ok(())
        })?;
        self.chunks_new += new;
        Ok(read.map(|size| {
            self.chunks_total += chunks.len() as u64;
            Stored {
                size,
                chunks,
                strategy,
            }
        }))
    }

    fn push_file(&mut self, path: Vec<u8>, meta: &std::fs::Metadata, file: FileEntry) {
        self.entries.push(Entry {
            path,
            kind: EntryKind::File(file),
            mode: meta.mode(),
            mtime_ns: sources::mtime_ns(meta),
        });
    }

    /// A SQLite database, captured online (see `sources::sqlite`), or taken
    /// from the files cache when neither it nor its `-wal` changed.
    fn capture_sqlite(&mut self, path: Vec<u8>, src: &Path, is_main_db: bool) -> Result<()> {
        let meta = std::fs::metadata(src).ctx("stat", src)?;
        let (source, wal_source) = self.sqlite_identity(src, &meta);
        if let Some(entry) = self.cached_entry(&path, source.as_ref(), wal_source.as_ref())? {
            self.reuse(path, &meta, entry);
            return Ok(());
        }
        let stored = match self.capture_sqlite_pages(&path, src, is_main_db) {
            Ok(s) => s,
            Err(e) if !is_main_db => {
                self.errors.push(format!(
                    "file_unreadable: {}: {e}",
                    String::from_utf8_lossy(&path)
                ));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let list = self.list_of(&path, &stored)?;
        self.push_file(
            path,
            &meta,
            FileEntry {
                size: stored.size,
                list,
                sqlite: true,
                source,
                wal_source,
            },
        );
        Ok(())
    }

    /// Identity of a database and its `-wal` for the files cache; None when
    /// either changed too recently to be trusted.
    fn sqlite_identity(
        &self,
        src: &Path,
        meta: &std::fs::Metadata,
    ) -> (Option<SourceStat>, Option<SourceStat>) {
        let mut wal = src.as_os_str().to_owned();
        wal.push("-wal");
        let wal = std::fs::metadata(PathBuf::from(wal))
            .ok()
            .map(|m| sources::source_stat(&m));
        let main = sources::source_stat(meta);
        if self.is_racy(&main) || wal.as_ref().is_some_and(|w| self.is_racy(w)) {
            return (None, None);
        }
        (Some(main), wal)
    }

    fn is_racy(&self, s: &SourceStat) -> bool {
        self.now_ns - s.mtime_ns < RACY_WINDOW_NS || self.now_ns - s.ctime_ns < RACY_WINDOW_NS
    }

    fn capture_sqlite_pages(
        &mut self,
        path: &[u8],
        src: &Path,
        is_main_db: bool,
    ) -> Result<Stored> {
        // The main db is checked in the same read transaction. Chroma's own
        // SQLite files are left to validate and drill: their FTS5 integrity
        // check alone would cost more than the whole capture.
        let (stored, problems) = match sqlite::stream_pages(src, is_main_db)? {
            Some(mut stream) => {
                let page = Some(stream.page_size);
                let strategy = chunk::strategy_for(path, page, &self.store.config().chunking);
                let stored = self.store_stream(&mut stream, strategy)?;
                let problems = stream.finish()?;
                (stored.ctx("read", src)?, problems)
            }
            None => self.capture_sqlite_backup(path, src, is_main_db)?,
        };
        if let Some(problems) = problems {
            let what = if is_main_db {
                "db_integrity_check_failed".to_string()
            } else {
                format!(
                    "sqlite_integrity_check_failed: {}",
                    String::from_utf8_lossy(path)
                )
            };
            self.errors.push(format!("{what}: {problems}"));
        }
        Ok(stored)
    }

    /// Fallback: the online backup API into a temp file, then chunked.
    fn capture_sqlite_backup(
        &mut self,
        path: &[u8],
        src: &Path,
        check: bool,
    ) -> Result<(Stored, Option<String>)> {
        let tmp = self.store.temp_path("sqlite")?;
        let result = (|| {
            sqlite::backup_to(src, &tmp)?;
            let problems = if check {
                sqlite::integrity_problems(&tmp, true)?
            } else {
                None
            };
            let page = sqlite::sqlite_page_size_of(&tmp).ctx("read", &tmp)?;
            let strategy = chunk::strategy_for(path, page, &self.store.config().chunking);
            let file = File::open(&tmp).ctx("open", &tmp)?;
            let stored = self.store_stream(file, strategy)?.ctx("read", &tmp)?;
            Ok((stored, problems))
        })();
        for suffix in ["", "-journal", "-wal", "-shm"] {
            let mut p = tmp.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
        result
    }

    /// The registry: read whole (it is small), checked for change, parsed.
    fn capture_registry(&mut self, src: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        let mut stable = false;
        let mut meta = std::fs::metadata(src).ctx("stat", src)?;
        for _ in 0..2 {
            bytes.clear();
            let mut f = File::open(src).ctx("open", src)?;
            let before = sources::source_stat(&f.metadata().ctx("stat", src)?);
            f.read_to_end(&mut bytes).ctx("read", src)?;
            meta = f.metadata().ctx("stat", src)?;
            if before == sources::source_stat(&meta) && before.size == bytes.len() as u64 {
                stable = true;
                break;
            }
        }
        if !stable {
            self.errors
                .push(format!("file_changed_during_read: {REGISTRY_PATH}"));
        }
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            self.errors.push(format!("registry_invalid_json: {e}"));
        }
        let strategy = chunk::strategy_for(
            REGISTRY_PATH.as_bytes(),
            None,
            &self.store.config().chunking,
        );
        let stored = self.store_stream(&bytes[..], strategy)?.ctx("read", src)?;
        let list = self.list_of(REGISTRY_PATH.as_bytes(), &stored)?;
        self.push_file(
            REGISTRY_PATH.as_bytes().to_vec(),
            &meta,
            FileEntry {
                size: stored.size,
                list,
                sqlite: false,
                source: None,
                wal_source: None,
            },
        );
        Ok(())
    }

    fn capture_chroma(&mut self, dir: &Path) -> Result<()> {
        let scan = chroma::scan(dir);
        self.warnings.extend(scan.warnings);
        self.errors.extend(scan.errors);
        let total: u64 = scan
            .items
            .iter()
            .map(|i| match i {
                chroma::Item::File { meta, .. } => meta.len(),
                _ => 0,
            })
            .sum();
        self.progress.phase("chroma", Some(total));
        for item in scan.items {
            crate::os::check_interrupted()?;
            match item {
                chroma::Item::Dir { rel, meta } => self.entries.push(Entry {
                    path: chroma_path(&rel),
                    kind: EntryKind::Dir,
                    mode: meta.mode(),
                    mtime_ns: sources::mtime_ns(&meta),
                }),
                chroma::Item::Symlink { rel, target, meta } => self.entries.push(Entry {
                    path: chroma_path(&rel),
                    kind: EntryKind::Symlink { target },
                    mode: meta.mode(),
                    mtime_ns: sources::mtime_ns(&meta),
                }),
                chroma::Item::File {
                    rel,
                    path,
                    sqlite_page: Some(_),
                    ..
                } => self.capture_sqlite(chroma_path(&rel), &path, false)?,
                chroma::Item::File {
                    rel, path, meta, ..
                } => self.capture_plain(chroma_path(&rel), &path, &meta)?,
            }
        }
        Ok(())
    }

    /// A regular file, from the files cache when unchanged, else read with
    /// change detection: re-read once; a second change is an error.
    fn capture_plain(
        &mut self,
        snap_path: Vec<u8>,
        src: &Path,
        meta: &std::fs::Metadata,
    ) -> Result<()> {
        let stat = sources::source_stat(meta);
        if let Some(entry) = self.cached_entry(&snap_path, Some(&stat), None)? {
            self.reuse(snap_path, meta, entry);
            return Ok(());
        }
        let display = String::from_utf8_lossy(&snap_path).into_owned();
        let strategy = chunk::strategy_for(&snap_path, None, &self.store.config().chunking);
        let mut attempt = 0;
        let (stored, after, stable) = loop {
            attempt += 1;
            let file = match File::open(src) {
                Ok(f) => f,
                Err(e) => {
                    self.errors.push(format!("file_unreadable: {display}: {e}"));
                    return Ok(());
                }
            };
            let before = file.metadata().ctx("stat", src)?;
            let stored = match self.store_stream(&file, strategy)? {
                Ok(s) => s,
                Err(e) => {
                    self.errors.push(format!("file_unreadable: {display}: {e}"));
                    return Ok(());
                }
            };
            let after = file.metadata().ctx("stat", src)?;
            let still_there = std::fs::symlink_metadata(src)
                .map(|m| m.ino() == after.ino())
                .unwrap_or(false);
            let stable = sources::source_stat(&before) == sources::source_stat(&after)
                && stored.size == after.len()
                && still_there;
            if stable || attempt == 2 {
                break (stored, after, stable);
            }
        };
        let mut source = Some(sources::source_stat(&after));
        if !stable {
            // Kept, but never reported as good and never trusted by the cache.
            self.errors
                .push(format!("file_changed_during_read: {display}"));
            source = None;
        }
        if source.as_ref().is_some_and(|s| self.is_racy(s)) {
            source = None;
        }
        let list = self.list_of(&snap_path, &stored)?;
        self.push_file(
            snap_path,
            &after,
            FileEntry {
                size: stored.size,
                list,
                sqlite: false,
                source,
                wal_source: None,
            },
        );
        Ok(())
    }

    /// The previous snapshot's entry for this path when the source is
    /// provably unchanged. Its tree is taken as it is, unread: the previous
    /// snapshot reaches it, and gc (kept out by the shared lock) keeps
    /// what a snapshot reaches. Only a suspect previous snapshot (one not
    /// validated: `verify --repair` lost chunks of it) has the file's
    /// chunks checked against the index first.
    fn cached_entry(
        &mut self,
        snap_path: &[u8],
        source: Option<&SourceStat>,
        wal_source: Option<&SourceStat>,
    ) -> Result<Option<FileEntry>> {
        let Some(entry) = self.cache.get(snap_path) else {
            return Ok(None);
        };
        let same = source.is_some()
            && entry.source.as_ref() == source
            && entry.wal_source.as_ref() == wal_source
            && matches!(entry.list, ChunkList::Tree(_));
        if !same {
            return Ok(None);
        }
        if self.cache_suspect {
            let index: &ChunkIndex = loaded(&mut self.index, self.store)?;
            let stored = match self.store.file_chunks(index, entry) {
                Ok(ids) => {
                    let mut all = true;
                    for id in ids {
                        let Ok(id) = id else {
                            all = false;
                            break;
                        };
                        if !self.packer.has(index, &id)? {
                            all = false;
                            break;
                        }
                    }
                    all
                }
                Err(_) => false,
            };
            if !stored {
                return Ok(None);
            }
        }
        // Each path is captured once, so the entry can move out.
        Ok(self.cache.remove(snap_path))
    }

    fn reuse(&mut self, path: Vec<u8>, meta: &std::fs::Metadata, entry: FileEntry) {
        self.files_from_cache += 1;
        self.chunks_total += entry.list.len();
        self.progress.advance(entry.size);
        self.push_file(path, meta, entry);
    }
}

/// Whether compressing a file's chunks pays. After a fair sample of a file
/// where almost nothing compressed (HNSW floats: 1.1x), the rest of that
/// file is stored raw without trying: the CPU is better spent elsewhere.
/// Only the stored form changes, never a chunk id.
#[derive(Default)]
struct CompressionVerdict {
    tried: usize,
    paid: usize,
}

impl CompressionVerdict {
    const SAMPLE: usize = 256;

    fn worth_trying(&self) -> bool {
        self.tried < Self::SAMPLE || self.paid * 10 >= self.tried
    }

    fn record(&mut self, outcomes: impl Iterator<Item = bool>) {
        if self.worth_trying() {
            for compressed in outcomes {
                self.tried += 1;
                self.paid += compressed as usize;
            }
        }
    }
}

fn chroma_path(rel: &[u8]) -> Vec<u8> {
    let mut p = CHROMA_PREFIX.as_bytes().to_vec();
    if !rel.is_empty() {
        p.push(b'/');
        p.extend_from_slice(rel);
    }
    p
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
