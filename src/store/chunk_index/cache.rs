//! `IndexCache`: the folder of one store's chunk index (§1.5) and the
//! lock two processes take around every change to it. Segments are
//! write-once; the pack table is replaced by rename; a refresh, a publish
//! of added packs and a compaction each run under an exclusive flock of
//! `lock` in the folder, so two processes (a `serve` and a CLI command, a
//! gc and a create) never interleave their table rewrites. A reader keeps
//! using the segment files it opened even when another process has since
//! replaced them (an open file outlives its name).
//!
//! When the folder cannot be made or locked (a read-only home), the index
//! lives in a private temp folder removed at the end of the command.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::segment::parse_segment_name;
use super::view::{Checks, IndexView, PackRow, TABLE_NAME, VERIFIED_NAME};
use super::{IndexError, IndexRecord};
use crate::store::backend;

pub const LOCK_NAME: &str = "lock";
/// Packs this host is deleting (gc), one hex id per line, appended before
/// each deletion: a refresh that finds them gone knows no data was lost.
const DELETED_HERE_NAME: &str = "deleted-here";
/// Set when a refresh finds packs gone that this host did not delete
/// (their time and a token): chunks may be lost, and a copy does not take
/// the destination's summaries on trust until a verify of the whole store
/// that started with this mark passes (and clears it).
const LOSSES_NAME: &str = "losses-seen";
/// RAM of the external sort of a refresh, a publish or a compaction.
pub const SORT_BUDGET: usize = 16 << 20;

pub struct IndexCache {
    dir: PathBuf,
    /// The private temp folder used instead of an unwritable `dir`.
    _temp: Option<tempfile::TempDir>,
}

/// The held lock (released when dropped, with the file).
pub struct CacheLock {
    _file: File,
}

impl IndexCache {
    /// The cache in `dir` (made 0700 with its parents), or a private temp
    /// folder when `dir` cannot be made or its lock not created.
    pub fn at(dir: PathBuf) -> Result<IndexCache, IndexError> {
        let usable = backend::create_private_dir_all(&dir)
            .and_then(|()| open_lock_file(&dir))
            .is_ok();
        if usable {
            return Ok(IndexCache { dir, _temp: None });
        }
        tracing::debug!(
            "index cache {} is not writable; using a temp folder",
            dir.display()
        );
        let tmp = std::env::temp_dir();
        let temp = tempfile::Builder::new()
            .prefix("atosnap-index-")
            .tempdir_in(&tmp)
            .map_err(IndexError::io("create", &tmp))?;
        Ok(IndexCache {
            dir: temp.path().to_path_buf(),
            _temp: Some(temp),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits for and takes the folder's exclusive lock.
    pub fn lock(&self) -> Result<CacheLock, IndexError> {
        let path = self.dir.join(LOCK_NAME);
        let file = open_lock_file(&self.dir).map_err(IndexError::io("open", &path))?;
        file.lock().map_err(IndexError::io("lock", &path))?;
        Ok(CacheLock { _file: file })
    }

    /// Opens the view (the caller holds the lock). A damaged table or
    /// segment drops the folder's index files: the caller rebuilds them
    /// from the pack trailers.
    pub fn open(&self, _lock: &CacheLock, checks: Checks) -> Result<IndexView, IndexError> {
        match IndexView::open_with(&self.dir, checks) {
            Err(IndexError::Damaged { path, detail }) => {
                tracing::warn!(
                    "chunk index cache file {} is damaged ({detail}); rebuilding the index",
                    path.display()
                );
                self.wipe()?;
                IndexView::open_with(&self.dir, checks)
            }
            other => other,
        }
    }

    /// Takes the ids of the packs this host recorded deleting
    /// ([`note_pack_deleted`]) since the last refresh (the caller holds the
    /// lock). The file is renamed first, so an id appended meanwhile goes
    /// into a new one for the next refresh.
    pub fn take_deleted_here(&self) -> std::collections::HashSet<crate::id::Id> {
        let path = self.dir.join(DELETED_HERE_NAME);
        let taken = self.dir.join(format!("{DELETED_HERE_NAME}.taking"));
        if fs::rename(&path, &taken).is_err() {
            return Default::default();
        }
        let ids = fs::read_to_string(&taken)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| crate::id::Id::from_hex(l.trim()))
            .collect();
        let _ = fs::remove_file(&taken);
        ids
    }

    /// The mark of packs found lost (see [`LOSSES_NAME`]): when, and a
    /// token telling one mark from the next. A mark that exists but does
    /// not read counts as a loss (a torn write must not clear it).
    pub fn losses_seen(&self) -> Option<String> {
        let path = self.dir.join(LOSSES_NAME);
        match fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => Some(text.trim().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            _ => Some("unreadable".to_string()),
        }
    }

    /// Marks packs found lost now (the caller holds the lock): written,
    /// fsynced and renamed into place before the packs are marked gone,
    /// so no crash or failure between the two forgets the loss.
    pub fn note_losses(&self) -> Result<(), IndexError> {
        use std::io::Write;
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mark = format!("{at} {:016x}", rand::random::<u64>());
        let path = self.dir.join(LOSSES_NAME);
        let tmp = self.dir.join(format!("{LOSSES_NAME}.tmp"));
        let written = File::create(&tmp)
            .and_then(|mut f| f.write_all(mark.as_bytes()).and_then(|()| f.sync_all()));
        written.map_err(IndexError::io("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(IndexError::io("rename", &path))
    }

    /// Clears the mark of lost packs if it is still `seen` (a verify of
    /// the whole store that saw that mark when it started has found every
    /// snapshot whole): a mark another process wrote since stays.
    pub fn clear_losses(&self, seen: &str) -> Result<(), IndexError> {
        let _lock = self.lock()?;
        if self.losses_seen().as_deref() != Some(seen) {
            return Ok(());
        }
        let path = self.dir.join(LOSSES_NAME);
        fs::remove_file(&path).map_err(IndexError::io("remove", &path))
    }

    /// Removes the pack table and every segment.
    pub fn wipe(&self) -> Result<(), IndexError> {
        let list = fs::read_dir(&self.dir).map_err(IndexError::io("list", &self.dir))?;
        for entry in list {
            let entry = entry.map_err(IndexError::io("list", &self.dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == TABLE_NAME || name == VERIFIED_NAME || parse_segment_name(&name).is_some() {
                let path = entry.path();
                fs::remove_file(&path).map_err(IndexError::io("remove", &path))?;
            }
        }
        Ok(())
    }

    /// Adds `packs` and their `records` (naming them by their place in
    /// `packs`, sorted by [`IndexRecord::key`]) under the lock, skipping
    /// those another process has added meanwhile; compacts when due.
    pub fn publish(
        &self,
        packs: &[PackRow],
        records: impl Iterator<Item = Result<IndexRecord, IndexError>>,
    ) -> Result<(), IndexError> {
        let lock = self.lock()?;
        let mut view = self.open(&lock, Checks::Trusted)?;
        let known: std::collections::HashSet<_> = view
            .packs()
            .rows
            .iter()
            .filter(|r| !r.gone)
            .map(|r| r.id)
            .collect();
        let mut place = Vec::with_capacity(packs.len());
        let mut new = Vec::new();
        for p in packs {
            if known.contains(&p.id) {
                place.push(None);
            } else {
                place.push(Some(new.len() as u32));
                new.push(*p);
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        let records = records.filter_map(|r| match r {
            Ok(r) => place
                .get(r.pack as usize)
                .copied()
                .flatten()
                .map(|pack| Ok(IndexRecord { pack, ..r })),
            Err(e) => Some(Err(e)),
        });
        view.add_sorted_packs_from(&new, records)?;
        if view.needs_compaction() {
            view.compact(SORT_BUDGET)?;
        }
        Ok(())
    }
}

/// Records, in the index cache folder `dir` (when it exists), that this
/// host is deleting pack `id`: the next refresh then does not count it as
/// lost. Best effort: a pack missing from the record only makes copies
/// look up every chunk until a verify passes.
pub fn note_pack_deleted(dir: &Path, id: &crate::id::Id) {
    use std::io::Write;
    if !dir.is_dir() {
        return;
    }
    let appended = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(dir.join(DELETED_HERE_NAME))
        .and_then(|mut f| f.write_all(format!("{}\n", id.to_hex()).as_bytes()));
    if let Err(e) = appended {
        tracing::debug!("recording pack {id} as deleted here: {e}");
    }
}

fn open_lock_file(dir: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(backend::PRIVATE_FILE_MODE)
        .open(dir.join(LOCK_NAME))
}
