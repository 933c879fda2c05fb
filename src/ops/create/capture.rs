//! Capturing the sources of a snapshot: each file from the files cache
//! when it is unchanged, else read through the pipeline (`pipeline.rs`)
//! with change detection, its chunks into packs and its list tree built
//! against the previous snapshot's tree of the same path.

use chrono::Utc;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::pipeline;
use super::previous::Previous;
use crate::chunk::{self, Strategy};
use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::sources::{self, chroma, sqlite};
use crate::store::index::ChunkIndex;
use crate::store::list_stream::{busy, store_waiting, SharedBlobs, Waiting, WaitingSink};
use crate::store::lists::{LeafCut, ListBuilder, ListRef};
use crate::store::manifest::{
    ChunkList, Entry, EntryKind, FileEntry, SourceStat, WalSource, CHROMA_PREFIX, REGISTRY_PATH,
};
use crate::store::packer::{BuiltList, Packer};
use crate::store::Store;

/// Bytes of a file per pipeline batch: the pipeline holds three, the page
/// reader two of its own.
const BATCH_BYTES: usize = 2 << 20;
/// A file whose mtime or ctime is this recent is not trusted to the files
/// cache: a write in the same clock tick would go unseen.
const RACY_WINDOW_NS: i64 = 2_000_000_000;

/// Captures sources into packs and collects manifest entries.
pub(super) struct Capture<'a> {
    store: &'a Store,
    /// Loaded when a file must be read (a no-change snapshot never needs it).
    pub(super) index: Option<ChunkIndex>,
    pub(super) packer: Packer<'a>,
    progress: &'a dyn Progress,
    /// The previous snapshot's files by path: the files cache and the old
    /// trees new lists are built against.
    cache: HashMap<Vec<u8>, FileEntry>,
    /// See [`Previous::suspect`].
    cache_suspect: bool,
    /// See [`Previous::older`]: its trees by path.
    older: HashMap<Vec<u8>, ListRef>,
    pub(super) entries: Vec<Entry>,
    pub(super) errors: Vec<String>,
    pub(super) warnings: Vec<String>,
    pub(super) chunks_total: u64,
    pub(super) chunks_new: u64,
    pub(super) list_blobs_new: u64,
    pub(super) files_from_cache: u64,
    checks: Vec<Check>,
    now_ns: i64,
}

/// A database's integrity check still running, and where its error goes.
struct Check {
    pending: sqlite::PendingCheck,
    /// The error's prefix (which database).
    what: String,
    /// Its place among the capture errors: the order files were captured.
    at: usize,
}

/// A file's bytes stored: its size and its list tree.
struct Stored {
    size: u64,
    built: BuiltList,
}

/// The chunk index, loaded on first use.
fn loaded<'i>(index: &'i mut Option<ChunkIndex>, store: &Store) -> Result<&'i mut ChunkIndex> {
    if index.is_none() {
        *index = Some(store.load_index_for_writes()?);
    }
    Ok(index.get_or_insert_with(ChunkIndex::new))
}

impl<'a> Capture<'a> {
    pub(super) fn new(
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
            checks: Vec::new(),
            now_ns: Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX),
        }
    }

    pub(super) fn finish(&mut self) -> Result<()> {
        // Latest first, so the earlier places stay valid.
        while let Some(check) = self.checks.pop() {
            if let Some(problems) = check.pending.wait()? {
                let error = format!("{}: {problems}", check.what);
                self.errors.insert(check.at, error);
            }
        }
        // Nothing was added to the packer without the index.
        match &mut self.index {
            Some(index) => self.packer.flush(index),
            None => Ok(()),
        }
    }

    /// The trees a new list of `path` is built against, in the order
    /// they are tried: the previous snapshot's, then (when that one is
    /// suspect) the one before it.
    fn olds(&self, path: &[u8]) -> Vec<ListRef> {
        [
            self.cache.get(path).and_then(|e| match &e.list {
                ChunkList::Tree(r) => Some(*r),
                ChunkList::Ids(_) => None,
            }),
            self.older.get(path).copied(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The list of a file just stored, from its built tree.
    fn list_of(&mut self, path: &[u8], built: BuiltList) -> ChunkList {
        if let Some(e) = built.old_fault {
            self.warnings.push(format!(
                "the previous list of {} could not be read ({}: {e}); its new list was built whole",
                String::from_utf8_lossy(path),
                e.code()
            ));
        }
        self.list_blobs_new += built.blobs_new;
        ChunkList::Tree(built.list)
    }

    /// Chunks, hashes and stores everything `reader` (the file `path`,
    /// `snap_path` in the snapshot) yields, through the pipeline: reading
    /// and hashing run a batch ahead on their own thread while this one
    /// stores the chunks and builds the file's list tree.
    fn store_stream<R: Read + Send>(
        &mut self,
        reader: R,
        snap_path: &[u8],
        path: &Path,
        strategy: Strategy,
    ) -> Result<std::io::Result<Stored>> {
        loaded(&mut self.index, self.store)?;
        let index = RefCell::new(self.index.take().unwrap_or_default());
        let stored = self.stream_into(reader, snap_path, path, strategy, &index);
        self.index = Some(index.into_inner());
        stored
    }

    /// [`store_stream`](Capture::store_stream) with the index shared by
    /// the packer and the list builder (`store::list_stream`). With one old tree
    /// or none (every file but those of a suspect previous snapshot) the
    /// ids stream into the builder; otherwise they are collected and
    /// `Packer::add_list` tries each old tree in turn.
    fn stream_into<R: Read + Send>(
        &mut self,
        reader: R,
        snap_path: &[u8],
        path: &Path,
        strategy: Strategy,
        index: &RefCell<ChunkIndex>,
    ) -> Result<std::io::Result<Stored>> {
        let store = self.store;
        let olds = self.olds(snap_path);
        let (params, sealer) = (store.list_params(), store.sealer());
        let id_of = |b: &[u8]| sealer.chunk_id(b);
        let waiting = RefCell::new(Waiting::default());
        let source = SharedBlobs { store, index };
        let mut sink = WaitingSink(&waiting);
        let mut builder = None;
        if olds.len() <= 1 {
            let cut = LeafCut::for_strategy(&strategy, &params);
            let fresh = ListBuilder::new(&params, cut, &id_of, &mut sink)?;
            builder = Some(match olds.first() {
                Some(old) => fresh.with_old(&source, old),
                None => fresh,
            });
        }
        let (packer, progress) = (&mut self.packer, self.progress);
        let (mut whole, mut count, mut new, mut blobs_new) = (Vec::new(), 0u64, 0u64, 0u64);
        let read = pipeline::for_each_hashed(
            reader,
            path,
            strategy,
            BATCH_BYTES,
            sealer,
            |buf, ranges, ids| {
                crate::os::check_interrupted()?;
                // New chunks go into frames, compressed by the packer's
                // encoder threads while the next batch is read and hashed.
                {
                    let mut index = index.try_borrow_mut().map_err(|_| busy())?;
                    for (range, id) in ranges.iter().zip(ids) {
                        if packer.add_raw(&mut index, *id, &buf[range.clone()])? {
                            new += 1;
                        }
                    }
                }
                match builder.as_mut() {
                    Some(builder) => {
                        for id in ids {
                            builder.push(*id)?;
                        }
                        blobs_new += store_waiting(packer, index, &waiting)?;
                    }
                    None => whole.extend_from_slice(ids),
                }
                count += ids.len() as u64;
                progress.advance(ranges.last().map(|r| r.end).unwrap_or(0) as u64);
                Ok(())
            },
        )?;
        self.chunks_new += new;
        let size = match read {
            Ok(size) => size,
            Err(e) => return Ok(Err(e)),
        };
        let built = match builder {
            Some(builder) => {
                let built = builder.finish()?;
                blobs_new += store_waiting(&mut self.packer, index, &waiting)?;
                BuiltList {
                    list: built.list,
                    stats: built.stats,
                    blobs_new,
                    old_fault: built.old_fault,
                }
            }
            None => {
                let mut index = index.try_borrow_mut().map_err(|_| busy())?;
                self.packer.add_list(&mut index, &strategy, &whole, &olds)?
            }
        };
        self.chunks_total += count;
        Ok(Ok(Stored { size, built }))
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
    pub(super) fn capture_sqlite(
        &mut self,
        path: Vec<u8>,
        src: &Path,
        is_main_db: bool,
    ) -> Result<()> {
        // A Chroma SQLite file that cannot be read (gone since the scan,
        // say) is named, as any Chroma file; the main db fails the create.
        let unreadable = |errors: &mut Vec<String>, e: Error| {
            if is_main_db {
                return Err(e);
            }
            errors.push(format!(
                "file_unreadable: {}: {e}",
                String::from_utf8_lossy(&path)
            ));
            Ok(())
        };
        let meta = match std::fs::metadata(src) {
            Ok(meta) => meta,
            Err(e) => return unreadable(&mut self.errors, Error::io("stat", src, e)),
        };
        let (source, wal_source) = self.sqlite_identity(src, &meta);
        if let Some(entry) = self.cached_entry(&path, source.as_ref(), wal_source.as_ref())? {
            self.reuse(path, &meta, entry);
            return Ok(());
        }
        let stored = match self.capture_sqlite_pages(&path, src, is_main_db) {
            Ok(s) => s,
            Err(e) => return unreadable(&mut self.errors, e),
        };
        let list = self.list_of(&path, stored.built);
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
    /// either changed too recently to be trusted, or the WAL's commit
    /// point was moving. Taken before the capture's read transaction.
    fn sqlite_identity(
        &self,
        src: &Path,
        meta: &std::fs::Metadata,
    ) -> (Option<SourceStat>, Option<WalSource>) {
        // Beside the file SQLite opens: it follows a link named by --db
        // (a volume or bind-mount layout), and so do its `-wal` and `-shm`.
        let base = std::fs::canonicalize(src).unwrap_or_else(|_| src.to_path_buf());
        let mut wal = base.clone().into_os_string();
        wal.push("-wal");
        let wal = std::fs::metadata(PathBuf::from(wal)).ok();
        let commit_point = match sqlite::wal_commit_point(&base) {
            sqlite::CommitPoint::Moving => return (None, None),
            sqlite::CommitPoint::Unknown => 0,
            sqlite::CommitPoint::At(point) => point,
        };
        let wal = wal.and_then(|m| wal_identity(&m, commit_point));
        let main = sources::source_stat(meta);
        let wal_racy = wal
            .as_ref()
            .is_some_and(|w| self.now_ns - w.mtime_ns < RACY_WINDOW_NS);
        if self.is_racy(&main) || wal_racy {
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
        let what = if is_main_db {
            "db_integrity_check_failed".to_string()
        } else {
            format!(
                "sqlite_integrity_check_failed: {}",
                String::from_utf8_lossy(path)
            )
        };
        match sqlite::stream_pages(src, is_main_db)? {
            Some(mut stream) => {
                let page = Some(stream.page_size);
                let strategy = chunk::strategy_for(path, page, &self.store.config().chunking);
                let stored = self.store_stream(&mut stream, path, src, strategy)?;
                let stored = stored.ctx("read", src)?;
                // The check runs while the next files are captured; its
                // outcome is taken (and an error placed here) by `finish`.
                self.checks.push(Check {
                    pending: stream.pages_done(),
                    what,
                    at: self.errors.len(),
                });
                Ok(stored)
            }
            None => {
                let (stored, problems) = self.capture_sqlite_backup(path, src, is_main_db)?;
                if let Some(problems) = problems {
                    self.errors.push(format!("{what}: {problems}"));
                }
                Ok(stored)
            }
        }
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
            let stored = self
                .store_stream(file, path, &tmp, strategy)?
                .ctx("read", &tmp)?;
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
    pub(super) fn capture_registry(&mut self, src: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        let mut stable = false;
        let mut meta = std::fs::metadata(src).ctx("stat", src)?;
        for _ in 0..2 {
            bytes.clear();
            let mut f = crate::os::open_regular(src).ctx("open", src)?;
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
        let stored = self
            .store_stream(&bytes[..], REGISTRY_PATH.as_bytes(), src, strategy)?
            .ctx("read", src)?;
        let list = self.list_of(REGISTRY_PATH.as_bytes(), stored.built);
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

    pub(super) fn capture_chroma(&mut self, dir: &Path) -> Result<()> {
        let scan = chroma::scan(dir);
        self.warnings.extend(scan.warnings);
        self.errors.extend(scan.errors);
        crate::failpoint::pause("create:chroma-scanned");
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
        // A file read twice counts its chunks once: the snapshot lists
        // only the second read.
        let chunks_before = self.chunks_total;
        let (stored, after, stable) = loop {
            attempt += 1;
            self.chunks_total = chunks_before;
            // Never blocking on a FIFO put there since the scan.
            let file = match crate::os::open_regular(src) {
                Ok(f) => f,
                Err(e) => {
                    self.errors.push(format!("file_unreadable: {display}: {e}"));
                    return Ok(());
                }
            };
            let before = file.metadata().ctx("stat", src)?;
            let stored = match self.store_stream(&file, &snap_path, src, strategy)? {
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
        let list = self.list_of(&snap_path, stored.built);
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
        wal_source: Option<&WalSource>,
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
                // A cache read that fails counts as not stored: the file
                // is read again.
                Ok(mut ids) => {
                    ids.all(|id| id.is_ok_and(|id| self.packer.has(index, &id).unwrap_or(false)))
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

pub(super) fn chroma_path(rel: &[u8]) -> Vec<u8> {
    let mut p = CHROMA_PREFIX.as_bytes().to_vec();
    if !rel.is_empty() {
        p.push(b'/');
        p.extend_from_slice(rel);
    }
    p
}

/// The identity of a database's `-wal` for the files cache: None when it
/// is empty (a WAL without frames adds nothing to the database, like no
/// WAL), else its size, mtime, inode and device with the commit point its
/// readers saw, without its ctime. Why not the ctime: SQLite opening the
/// database, as this capture does, may change it (run as root, SQLite
/// gives the `-wal` the database's owner with `fchown`), so every snapshot
/// made the next one read the whole database again. Whatever changes a
/// WAL's frames changes its mtime; whatever makes them visible changes
/// the commit point.
fn wal_identity(m: &std::fs::Metadata, commit_point: i64) -> Option<WalSource> {
    (m.len() > 0).then(|| WalSource {
        size: m.len(),
        mtime_ns: sources::mtime_ns(m),
        commit_point,
        ino: m.ino(),
        dev: m.dev(),
    })
}
