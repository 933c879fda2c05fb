//! Restore, step 2: the plan. Compares the snapshot with what is on disk
//! (by size, then by content hash) to find what must be written, what can
//! stay and what must go.

use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::chunk;
use crate::error::{Error, IoContext, Result};
use crate::id::Id;
use crate::sources::chroma::is_restore_temp;
use crate::sources::sqlite;
use crate::store::index::ChunkIndex;
use crate::store::manifest::{
    EntryKind, FileEntry, Manifest, CHROMA_PREFIX, DB_PATH, REGISTRY_PATH,
};
use crate::store::Store;

use super::stage::chunk_ids;
use super::{chroma_rel, Targets};

/// File type bits of `st_mode`, and the symlink type.
pub(super) const S_IFMT: u32 = 0o170000;

pub(super) const S_IFLNK: u32 = 0o120000;

/// Bytes per batch when re-hashing a file on disk.
const HASH_BATCH: usize = 8 << 20;

/// What a restore will do, computed before anything is written.
#[derive(Clone, Debug)]
pub struct RestorePlan {
    pub targets: Targets,
    /// Manifest entry indices of the db and the registry (None: not in the
    /// snapshot).
    pub db: Option<usize>,
    pub registry: Option<usize>,
    /// Chunks of the db that the db on disk already holds.
    pub db_reusable: Reusable,
    /// Chunks of the registry that the registry on disk already holds.
    pub registry_reusable: Reusable,
    pub chroma: Option<ChromaPlan>,
}

/// The Chroma part of a plan. Indices point into `Manifest::entries`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChromaPlan {
    pub root: PathBuf,
    /// The entry of the Chroma dir itself (its mode and mtime).
    pub root_entry: Option<usize>,
    /// Whether `root` exists already (it is created only when missing).
    pub root_exists: bool,
    /// Topmost entries on disk to remove (a folder goes with its content).
    pub remove: Vec<Removal>,
    /// Folders to create, parents first.
    pub create_dirs: Vec<usize>,
    /// Files and symlinks to write (missing or differing).
    pub write: Vec<usize>,
    /// Files and symlinks that already match.
    pub unchanged: Vec<usize>,
    /// For files to write that exist on disk: their chunks found there
    /// (or, for the `presumed` ones, where they would be).
    pub reusable: BTreeMap<usize, Reusable>,
    /// Files to write that the plan did not hash: their size or mtime
    /// differs from the snapshot's and their chunks have fixed offsets
    /// (see [`positional`]). Staging finds out whether they really differ.
    pub presumed: BTreeSet<usize>,
    /// Every folder of the snapshot below the root (mode and mtime are set
    /// at the end, deepest first).
    pub dirs: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    /// Path relative to the Chroma dir, as bytes.
    pub rel: Vec<u8>,
    pub is_dir: bool,
    /// Entries removed with it (itself included).
    pub entries: u64,
}

impl ChromaPlan {
    pub fn files_removed(&self) -> u64 {
        self.remove.iter().map(|r| r.entries).sum()
    }
}

/// Computes what the write steps will do. Reads (hashes Chroma files on
/// disk), never writes.
pub fn plan(
    store: &Store,
    index: &ChunkIndex,
    manifest: &Manifest,
    targets: &Targets,
    with_chroma: bool,
) -> Result<RestorePlan> {
    let idx = |p: &str| manifest.entries.iter().position(|e| e.path == p.as_bytes());
    let file_idx = |p: &str| idx(p).filter(|&i| manifest.entries[i].file().is_some());
    let chroma = if with_chroma {
        Some(plan_chroma(store, index, manifest, &targets.chroma)?)
    } else {
        None
    };
    let db = file_idx(DB_PATH);
    let registry = file_idx(REGISTRY_PATH);
    // The db and the registry are always rebuilt, but from the chunks the
    // files on disk share with the snapshot where they can.
    let reusable = |i: Option<usize>, target: &Path| {
        i.and_then(|i| {
            let e = &manifest.entries[i];
            let f = e.file()?;
            let ids = chunk_ids(store, index, f).ok()?;
            let params = &store.config().chunking;
            positional(target, &e.path, f, &ids, params).or_else(|| {
                compare_on_disk(target, &e.path, f, &ids, params, store.sealer())
                    .ok()
                    .map(|d| d.reusable)
            })
        })
        .unwrap_or_default()
    };
    Ok(RestorePlan {
        targets: targets.clone(),
        db,
        registry,
        db_reusable: reusable(db, &targets.db),
        registry_reusable: reusable(registry, &targets.registry),
        chroma,
    })
}

/// For a file cut in fixed-size chunks, where each of the snapshot's
/// chunks sits in the file on disk at `path` if that part is unchanged:
/// chunk i at offset i × size (within the file's length; the first
/// position of a repeated chunk). Nothing is read but a SQLite header:
/// staging re-hashes each chunk before using it. None for a file cut by
/// content, or that cannot be read.
pub fn positional(
    path: &Path,
    snap_path: &[u8],
    file: &FileEntry,
    ids: &[Id],
    params: &crate::store::format::ChunkingParams,
) -> Option<Reusable> {
    let len = fs::metadata(path).ok()?.len();
    let page = match file.sqlite {
        true => Some(sqlite::sqlite_page_size_of(path).ok()??),
        false => None,
    };
    let chunk::Strategy::Fixed(n) = chunk::strategy_for(snap_path, page, params) else {
        return None;
    };
    let n = n as u64;
    let mut map = Reusable::new();
    for (i, id) in ids.iter().enumerate() {
        let offset = i as u64 * n;
        let want = n.min(file.size.saturating_sub(offset));
        if want == 0 || offset + want > len {
            break;
        }
        map.entry(*id).or_insert((offset, want as u32));
    }
    Some(map)
}

/// The positional reuse map of a file on disk whose size or mtime differs
/// from the snapshot entry's (None: it looks unchanged, or its chunks have
/// no fixed offsets, and the plan hashes it).
fn presumed_changed(
    path: &Path,
    entry: &crate::store::manifest::Entry,
    file: &FileEntry,
    ids: &[Id],
    params: &crate::store::format::ChunkingParams,
) -> Option<Reusable> {
    let m = fs::symlink_metadata(path).ok()?;
    let same = m.len() == file.size && crate::sources::mtime_ns(&m) == entry.mtime_ns;
    if same {
        return None;
    }
    positional(path, &entry.path, file, ids, params)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DiskKind {
    File,
    Dir,
    Symlink,
    Other,
}

fn disk_kind(ft: fs::FileType) -> DiskKind {
    if ft.is_symlink() {
        DiskKind::Symlink
    } else if ft.is_dir() {
        DiskKind::Dir
    } else if ft.is_file() {
        DiskKind::File
    } else {
        DiskKind::Other
    }
}

pub(super) fn path_of(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// Step 7's plan: walks the tree on disk (symlinks never followed) against
/// the snapshot's Chroma entries.
pub fn plan_chroma(
    store: &Store,
    index: &ChunkIndex,
    manifest: &Manifest,
    root: &Path,
) -> Result<ChromaPlan> {
    let mut wanted: BTreeMap<&[u8], usize> = BTreeMap::new();
    let mut plan = ChromaPlan {
        root: root.to_path_buf(),
        ..ChromaPlan::default()
    };
    for (i, e) in manifest.entries.iter().enumerate() {
        if e.path == CHROMA_PREFIX.as_bytes() {
            plan.root_entry = Some(i);
        } else if let Some(rel) = chroma_rel(&e.path) {
            wanted.insert(rel, i);
            if matches!(e.kind, EntryKind::Dir) {
                plan.dirs.push(i);
            }
        }
    }
    plan.root_exists = match fs::metadata(root) {
        Ok(m) if m.is_dir() => true,
        Ok(_) => {
            return Err(Error::TargetInvalid {
                path: root.to_path_buf(),
                detail: "the Chroma dir is not a folder".into(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::io("stat", root, e)),
    };

    let mut seen: BTreeSet<usize> = BTreeSet::new();
    let mut candidates: Vec<(usize, PathBuf)> = Vec::new();
    if plan.root_exists {
        walk_existing(
            root,
            &[],
            manifest,
            &wanted,
            &mut plan,
            &mut seen,
            &mut candidates,
        )?;
    }
    for (_, &i) in wanted.iter() {
        if seen.contains(&i) {
            continue;
        }
        match manifest.entries[i].kind {
            EntryKind::Dir => plan.create_dirs.push(i),
            _ => plan.write.push(i),
        }
    }

    // Files present on both sides: hashed in parallel, except those whose
    // size or mtime says they changed and whose chunks sit at fixed
    // offsets (SQLite pages, HNSW blocks): staging reads and re-hashes
    // their chunks at the same offsets anyway, so hashing them here too
    // would read them twice.
    let params = &store.config().chunking;
    let sealer = store.sealer();
    let verdicts: Vec<(usize, OnDisk, bool)> = candidates
        .par_iter()
        .map(|(i, path)| {
            let e = &manifest.entries[*i];
            let EntryKind::File(f) = &e.kind else {
                return (*i, OnDisk::default(), false);
            };
            // A file whose list cannot be read is simply written (staging
            // then names the fault).
            let Ok(ids) = chunk_ids(store, index, f) else {
                return (*i, OnDisk::default(), false);
            };
            if let Some(reusable) = presumed_changed(path, e, f, &ids, params) {
                let found = OnDisk {
                    matches: false,
                    reusable,
                };
                return (*i, found, true);
            }
            // An unreadable file is simply replaced.
            let found = compare_on_disk(path, &e.path, f, &ids, params, sealer).unwrap_or_default();
            (*i, found, false)
        })
        .collect();
    for (i, found, presumed) in verdicts {
        if found.matches {
            plan.unchanged.push(i);
        } else {
            plan.write.push(i);
            if presumed {
                plan.presumed.insert(i);
            }
            if !found.reusable.is_empty() {
                plan.reusable.insert(i, found.reusable);
            }
        }
    }
    plan.write.sort_unstable();
    plan.unchanged.sort_unstable();
    Ok(plan)
}

fn walk_existing(
    dir: &Path,
    rel: &[u8],
    manifest: &Manifest,
    wanted: &BTreeMap<&[u8], usize>,
    plan: &mut ChromaPlan,
    seen: &mut BTreeSet<usize>,
    candidates: &mut Vec<(usize, PathBuf)>,
) -> Result<()> {
    let mut children: Vec<(Vec<u8>, PathBuf, fs::FileType)> = Vec::new();
    for child in fs::read_dir(dir).ctx("list", dir)? {
        let child = child.ctx("list", dir)?;
        // Staging and temp files of restores (a running one's, or one of
        // another host's): not part of the tree, neither kept nor removed.
        if is_restore_temp(child.file_name().as_bytes()) {
            continue;
        }
        let ft = child.file_type().ctx("stat", child.path())?;
        children.push((child.file_name().as_bytes().to_vec(), child.path(), ft));
    }
    children.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, path, ft) in children {
        let mut child_rel = rel.to_vec();
        if !child_rel.is_empty() {
            child_rel.push(b'/');
        }
        child_rel.extend_from_slice(&name);
        let have = disk_kind(ft);
        let want = wanted
            .get(&child_rel[..])
            .map(|&i| (i, &manifest.entries[i].kind));
        match (have, want) {
            (DiskKind::Dir, Some((i, EntryKind::Dir))) => {
                seen.insert(i);
                walk_existing(&path, &child_rel, manifest, wanted, plan, seen, candidates)?;
            }
            (DiskKind::File, Some((i, EntryKind::File(_)))) => {
                seen.insert(i);
                candidates.push((i, path));
            }
            (DiskKind::Symlink, Some((i, EntryKind::Symlink { target }))) => {
                seen.insert(i);
                let same = fs::read_link(&path)
                    .map(|t| t.as_os_str().as_bytes() == &target[..])
                    .unwrap_or(false);
                if same {
                    plan.unchanged.push(i);
                } else {
                    plan.write.push(i);
                }
            }
            // A file where a symlink belongs or the reverse: the rename
            // of the new one replaces it atomically.
            (DiskKind::File, Some((i, EntryKind::Symlink { .. })))
            | (DiskKind::Symlink, Some((i, EntryKind::File(_)))) => {
                seen.insert(i);
                plan.write.push(i);
            }
            // Not in the snapshot, or a folder / special file where
            // something else belongs: it goes (the wanted entry, if any,
            // is then created from scratch).
            _ => {
                let is_dir = have == DiskKind::Dir;
                let entries = if is_dir {
                    walkdir::WalkDir::new(&path)
                        .follow_links(false)
                        .into_iter()
                        .count() as u64
                } else {
                    1
                };
                plan.remove.push(Removal {
                    rel: child_rel,
                    is_dir,
                    entries,
                });
            }
        }
    }
    Ok(())
}

/// Does the file at `path` hold exactly `file`'s content? Same size, and
/// the same chunk ids when cut with the strategy the snapshot used (the
/// page size from its own header for a SQLite file). Content is hashed;
/// mtimes are not trusted.
pub fn file_matches(
    path: &Path,
    snap_path: &[u8],
    file: &FileEntry,
    chunks: &[Id],
    params: &crate::store::format::ChunkingParams,
    sealer: &crate::store::seal::Sealer,
) -> std::io::Result<bool> {
    let f = File::open(path)?;
    if f.metadata()?.len() != file.size {
        return Ok(false);
    }
    let page = if file.sqlite {
        match sqlite::sqlite_page_size_of(path)? {
            Some(p) => Some(p),
            None => return Ok(false),
        }
    } else {
        None
    };
    let strategy = chunk::strategy_for(snap_path, page, params);
    let mut pos = 0usize;
    let mut mismatch = false;
    let streamed = chunk::for_each_batch(f, strategy, HASH_BATCH, |buf, ranges| {
        let ids: Vec<_> = ranges
            .par_iter()
            .map(|r| sealer.chunk_id(&buf[r.clone()]))
            .collect();
        let end = pos + ids.len();
        if end > chunks.len() || chunks[pos..end] != ids[..] {
            mismatch = true;
            return Err(Error::ChunksDiffer);
        }
        pos = end;
        Ok(())
    });
    match streamed {
        Err(_) if mismatch => Ok(false),
        Err(e) => Err(std::io::Error::other(e.to_string())),
        Ok(Err(e)) => Err(e),
        Ok(Ok(total)) => Ok(total == file.size && pos == chunks.len()),
    }
}

/// Where the chunks a snapshot file needs sit in the file on disk it will
/// replace: chunk id to (offset, length). Rebuilding the file then reads
/// those from disk (re-hashed on the way) instead of the store, so an
/// in-place restore decompresses only what changed.
pub type Reusable = HashMap<Id, (u64, u32)>;

/// What hashing a file on disk found, against a snapshot file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OnDisk {
    /// Same size and the same chunk ids in the same order.
    pub matches: bool,
    pub reusable: Reusable,
}

/// Hashes the whole file at `path` with the strategy of the snapshot file
/// `file` (see [`file_matches`]): does it match, and which of the
/// snapshot's chunks does it already hold, where.
pub fn compare_on_disk(
    path: &Path,
    snap_path: &[u8],
    file: &FileEntry,
    chunks: &[Id],
    params: &crate::store::format::ChunkingParams,
    sealer: &crate::store::seal::Sealer,
) -> std::io::Result<OnDisk> {
    let f = File::open(path)?;
    let size = f.metadata()?.len();
    let page = if file.sqlite {
        match sqlite::sqlite_page_size_of(path)? {
            Some(p) => Some(p),
            None => return Ok(OnDisk::default()),
        }
    } else {
        None
    };
    let strategy = chunk::strategy_for(snap_path, page, params);
    let needed: HashSet<&Id> = chunks.iter().collect();
    let mut out = OnDisk::default();
    let mut same_order = size == file.size;
    let mut pos = 0usize;
    let mut offset = 0u64;
    let streamed = chunk::for_each_batch(f, strategy, HASH_BATCH, |buf, ranges| {
        let ids: Vec<Id> = ranges
            .par_iter()
            .map(|r| sealer.chunk_id(&buf[r.clone()]))
            .collect();
        for (id, r) in ids.iter().zip(ranges) {
            if same_order && chunks.get(pos) != Some(id) {
                same_order = false;
            }
            pos += 1;
            if needed.contains(id) {
                out.reusable
                    .entry(*id)
                    .or_insert((offset + r.start as u64, r.len() as u32));
            }
        }
        offset += ranges.last().map(|r| r.end as u64).unwrap_or(0);
        Ok(())
    });
    match streamed {
        Err(e) => return Err(std::io::Error::other(e.to_string())),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) => {}
    }
    out.matches = same_order && pos == chunks.len();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_matches_hashes_content_not_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let params = crate::store::format::StoreConfig::new_default().chunking;
        let sealer = crate::store::seal::Sealer::Plain;
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let path = dir.path().join("x.bin");
        fs::write(&path, &data).unwrap();
        let snap_path = b"chroma/x.bin";
        let strategy = chunk::strategy_for(snap_path, None, &params);
        let chunks: Vec<Id> = chunk::cut(&data, strategy, true)
            .into_iter()
            .map(|r| Id::hash(&data[r]))
            .collect();
        let entry = FileEntry {
            size: data.len() as u64,
            list: crate::store::manifest::ChunkList::Ids(chunks.clone()),
            sqlite: false,
            source: None,
            wal_source: None,
        };
        assert!(file_matches(&path, snap_path, &entry, &chunks, &params, &sealer).unwrap());
        // Same size, one byte differs, mtime kept: detected.
        let mtime = filetime::FileTime::from_last_modification_time(&fs::metadata(&path).unwrap());
        let mut changed = data.clone();
        changed[12_345] ^= 1;
        fs::write(&path, &changed).unwrap();
        filetime::set_file_mtime(&path, mtime).unwrap();
        assert!(!file_matches(&path, snap_path, &entry, &chunks, &params, &sealer).unwrap());
        fs::write(&path, &data[..100]).unwrap();
        assert!(!file_matches(&path, snap_path, &entry, &chunks, &params, &sealer).unwrap());
    }
}
