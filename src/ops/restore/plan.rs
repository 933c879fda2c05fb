//! Restore, step 2: the plan. Compares the snapshot with what is on disk
//! (by size, then by content hash) to find what must be written, what can
//! stay and what must go.

use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::chunk;
use crate::error::{Error, IoContext, Result};
use crate::id::Id;
use crate::sources::chroma::is_restore_temp;
use crate::sources::sqlite;
use crate::store::index::ChunkIndex;
use crate::store::manifest::{
    Entry, EntryKind, FileEntry, Manifest, CHROMA_PREFIX, DB_PATH, REGISTRY_PATH,
};
use crate::store::Store;

use super::{chroma_rel, Targets};

/// File type bits of `st_mode`, and the symlink type.
pub(super) const S_IFMT: u32 = 0o170000;

pub(super) const S_IFLNK: u32 = 0o120000;

/// Bytes per batch when re-hashing a file on disk. `drill` checks files
/// two at a time: with 8 MiB batches it peaked at 60-62 MiB on the 130k
/// runtime, against the 64 MiB target; with 4 MiB ones at 53-54 MiB.
const HASH_BATCH: usize = 4 << 20;

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
            let params = &store.config().chunking;
            positional(target, &e.path, f, params)
                .or_else(|| compare_on_disk(store, index, target, &e.path, f).ok())
                .map(|d| d.reusable)
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
/// chunks would sit in the file on disk at `path` if that part is
/// unchanged: chunk i at offset i × size, as far as the file reaches.
/// Nothing is read but a SQLite header, nothing is held per chunk:
/// staging re-hashes each chunk before using it. None for a file cut by
/// content, or that cannot be read.
pub fn positional(
    path: &Path,
    snap_path: &[u8],
    file: &FileEntry,
    params: &crate::store::format::ChunkingParams,
) -> Option<OnDisk> {
    let len = fs::metadata(path).ok()?.len();
    let n = fixed_size(path, snap_path, file, params).ok()??;
    Some(OnDisk {
        matches: false,
        reusable: Reusable::Slots {
            size: n,
            len,
            matched: None,
        },
    })
}

/// The chunk size of a file cut in fixed-size chunks (the page size from
/// its own header for a SQLite file); None for one cut by content, or a
/// SQLite file without a readable header.
fn fixed_size(
    path: &Path,
    snap_path: &[u8],
    file: &FileEntry,
    params: &crate::store::format::ChunkingParams,
) -> std::io::Result<Option<u64>> {
    let page = match file.sqlite {
        true => match sqlite::sqlite_page_size_of(path)? {
            Some(p) => Some(p),
            None => return Ok(None),
        },
        false => None,
    };
    Ok(match chunk::strategy_for(snap_path, page, params) {
        chunk::Strategy::Fixed(n) if n > 0 => Some(n as u64),
        _ => None,
    })
}

/// The positional reuse of a file on disk whose size or mtime differs
/// from the snapshot entry's (None: it looks unchanged, or its chunks have
/// no fixed offsets, and the plan hashes it).
fn presumed_changed(
    path: &Path,
    entry: &crate::store::manifest::Entry,
    file: &FileEntry,
    params: &crate::store::format::ChunkingParams,
) -> Option<OnDisk> {
    let m = fs::symlink_metadata(path).ok()?;
    let same = m.len() == file.size && crate::sources::mtime_ns(&m) == entry.mtime_ns;
    if same {
        return None;
    }
    positional(path, &entry.path, file, params)
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
    let verdicts: Vec<(usize, OnDisk, bool)> = candidates
        .par_iter()
        .map(|(i, path)| {
            let e = &manifest.entries[*i];
            let EntryKind::File(f) = &e.kind else {
                return (*i, OnDisk::default(), false);
            };
            if let Some(found) = presumed_changed(path, e, f, params) {
                // Found the same by staging, it would keep the file.
                return (*i, found, !linked_with_other_meta(path, e));
            }
            // An unreadable file (or list: staging then names the fault)
            // is simply replaced.
            let mut found = compare_on_disk(store, index, path, &e.path, f).unwrap_or_default();
            // Its mode or mtime set through another link would change that
            // file too: such a file is replaced, which unlinks it.
            found.matches &= !linked_with_other_meta(path, e);
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

/// Whether the file at `path` has other links and a mode or mtime other
/// than `e`'s (what `fix_meta` would set through every link).
fn linked_with_other_meta(path: &Path, e: &Entry) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| {
        m.nlink() > 1
            && (m.mode() & 0o7777 != e.mode & 0o7777 || crate::sources::mtime_ns(&m) != e.mtime_ns)
    })
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
/// mtimes are not trusted. `chunks` is streamed (a file's list is not
/// held whole).
pub fn file_matches<B: std::borrow::Borrow<Id>>(
    path: &Path,
    snap_path: &[u8],
    file: &FileEntry,
    chunks: impl IntoIterator<Item = B>,
    params: &crate::store::format::ChunkingParams,
    sealer: &crate::store::seal::Sealer,
) -> std::io::Result<bool> {
    let f = crate::os::open_regular(path)?;
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
    let mut expected = chunks.into_iter();
    let mut mismatch = false;
    let streamed = chunk::for_each_batch(f, strategy, HASH_BATCH, |buf, ranges| {
        let ids = sealer.chunk_ids_in(buf, ranges);
        for id in &ids {
            if expected.next().is_none_or(|want| want.borrow() != id) {
                mismatch = true;
                return Err(Error::ChunksDiffer);
            }
        }
        Ok(())
    });
    match streamed {
        Err(_) if mismatch => Ok(false),
        Err(e) => Err(std::io::Error::other(e.to_string())),
        Ok(Err(e)) => Err(e),
        Ok(Ok(total)) => Ok(total == file.size && expected.next().is_none()),
    }
}

/// Where the chunks a snapshot file needs sit in the file on disk it will
/// replace. Rebuilding the file then reads those from disk (re-hashed on
/// the way) instead of the store, so an in-place restore decompresses
/// only what changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Reusable {
    /// Nothing on disk to reuse.
    #[default]
    Nothing,
    /// A file cut in fixed-size chunks: the snapshot's chunk at offset o
    /// is at o in the file on disk too, as far as that file's `len`
    /// reaches. `matched`: one bit per slot of `size` bytes, set where the
    /// plan hashed the file on disk and found the snapshot's chunk (None:
    /// not hashed, every slot is a candidate). A few bits per chunk,
    /// however large the file.
    Slots {
        size: u64,
        len: u64,
        matched: Option<Vec<u64>>,
    },
    /// A file cut by content: chunk id to (offset, length) on disk.
    Found(HashMap<Id, (u64, u32)>),
}

impl Reusable {
    /// Where on disk to read (and re-hash) the snapshot's chunk `id` of
    /// `len` bytes at `offset` in the snapshot's file, if anywhere.
    pub fn at(&self, id: &Id, offset: u64, len: u32) -> Option<u64> {
        match self {
            Reusable::Nothing => None,
            Reusable::Slots {
                size,
                len: on_disk,
                matched,
            } => {
                let slot = offset / size;
                let inside = offset.is_multiple_of(*size) && offset + len as u64 <= *on_disk;
                let hit = matched.as_ref().is_none_or(|bits| bit(bits, slot));
                (inside && hit).then_some(offset)
            }
            Reusable::Found(map) => map.get(id).filter(|(_, l)| *l == len).map(|(o, _)| *o),
        }
    }

    /// How many chunks may be reused (slots for a positional file).
    pub fn chunks(&self) -> u64 {
        match self {
            Reusable::Nothing => 0,
            Reusable::Slots {
                matched: Some(bits),
                ..
            } => bits.iter().map(|w| w.count_ones() as u64).sum(),
            Reusable::Slots { size, len, .. } => len.div_ceil(*size),
            Reusable::Found(map) => map.len() as u64,
        }
    }

    /// What a patch of a snapshot file of `size` bytes would hold: the
    /// runs of its slots the hash found differing (positional reuse
    /// whose slots were hashed only; None otherwise), and their bytes,
    /// each run rounded out to `block` (a sparse file takes whole
    /// blocks).
    pub fn differing(&self, size: u64, block: u64) -> Option<Differing> {
        let Reusable::Slots {
            size: n,
            matched: Some(bits),
            ..
        } = self
        else {
            return None;
        };
        let (n, block) = ((*n).max(1), block.max(1));
        let mut out = Differing::default();
        let mut run: Option<u64> = None;
        let slots = size.div_ceil(n);
        for slot in 0..=slots {
            let differs = slot < slots && !bit(bits, slot);
            match (run, differs) {
                (None, true) => run = Some(slot),
                (Some(first), false) => {
                    let from = (first * n) / block * block;
                    let to = (slot * n).min(size).div_ceil(block) * block;
                    out.bytes += to - from;
                    out.runs += 1;
                    run = None;
                }
                _ => {}
            }
        }
        Some(out)
    }

    pub fn is_empty(&self) -> bool {
        self.chunks() == 0
    }

    /// Positional reuse only: every slot is where the snapshot's file has
    /// it, so a file whose every chunk was reused holds exactly the
    /// snapshot's content.
    pub fn is_positional(&self) -> bool {
        matches!(self, Reusable::Slots { .. })
    }
}

/// See [`Reusable::differing`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Differing {
    pub bytes: u64,
    pub runs: u64,
}

fn bit(bits: &[u64], slot: u64) -> bool {
    bits.get((slot / 64) as usize)
        .is_some_and(|w| w & (1 << (slot % 64)) != 0)
}

fn set_bit(bits: &mut Vec<u64>, slot: u64) {
    let word = (slot / 64) as usize;
    if bits.len() <= word {
        bits.resize(word + 1, 0);
    }
    bits[word] |= 1 << (slot % 64);
}

/// What hashing a file on disk found, against a snapshot file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OnDisk {
    /// Same size and the same chunk ids in the same order.
    pub matches: bool,
    pub reusable: Reusable,
}

/// Hashes the whole file at `path` with the strategy of the snapshot file
/// `file` (see [`file_matches`]): does it match, and which of the
/// snapshot's chunks does it already hold, where. A file cut in fixed-size
/// chunks is compared slot by slot with the snapshot's list as it streams
/// (a bit per slot); one cut by content needs the set of its ids.
pub fn compare_on_disk(
    store: &Store,
    index: &ChunkIndex,
    path: &Path,
    snap_path: &[u8],
    file: &FileEntry,
) -> std::io::Result<OnDisk> {
    let params = &store.config().chunking;
    let sealer = store.sealer();
    let f = crate::os::open_regular(path)?;
    let size = f.metadata()?.len();
    let fixed = fixed_size(path, snap_path, file, params)?;
    if file.sqlite && fixed.is_none() {
        return Ok(OnDisk::default());
    }
    let listed = |e: Error| std::io::Error::other(e.to_string());
    let mut ids = store.file_chunks(index, file).map_err(listed)?;
    let strategy = match fixed {
        Some(n) => chunk::Strategy::Fixed(n as usize),
        None => chunk::strategy_for(snap_path, None, params),
    };
    // For a file cut by content: every id it needs (a small file: the
    // big ones are HNSW blocks and SQLite pages). Not when the file on
    // disk is too short to hold that many chunks of the smallest size: it
    // can then serve few of them, and a forged count must not size a set.
    let could_hold = size / u64::from(params.cdc_min_size.max(1)) + 1;
    if fixed.is_none() && file.list.len() > could_hold.saturating_mul(2) {
        return Ok(OnDisk::default());
    }
    let needed: Option<HashSet<Id>> = match fixed {
        Some(_) => None,
        None => Some(
            store
                .file_chunk_ids(index, file)
                .map_err(listed)?
                .into_iter()
                .collect(),
        ),
    };
    let mut bits = Vec::new();
    let mut found = HashMap::new();
    let mut same_order = size == file.size;
    let mut pos = 0u64;
    let mut offset = 0u64;
    let streamed = chunk::for_each_batch(f, strategy, HASH_BATCH, |buf, ranges| {
        let on_disk = sealer.chunk_ids_in(buf, ranges);
        for (id, r) in on_disk.iter().zip(ranges) {
            let wanted = match ids.next() {
                Some(w) => Some(w?),
                None => None,
            };
            let here = wanted.as_ref() == Some(id);
            same_order &= here;
            match &needed {
                None if here => set_bit(&mut bits, pos),
                None => {}
                Some(needed) if needed.contains(id) => {
                    found
                        .entry(*id)
                        .or_insert((offset + r.start as u64, r.len() as u32));
                }
                Some(_) => {}
            }
            pos += 1;
        }
        offset += ranges.last().map(|r| r.end as u64).unwrap_or(0);
        Ok(())
    });
    match streamed {
        Err(e) => return Err(std::io::Error::other(e.to_string())),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) => {}
    }
    let reusable = match fixed {
        Some(n) => Reusable::Slots {
            size: n,
            len: size,
            matched: Some(bits),
        },
        None => Reusable::Found(found),
    };
    Ok(OnDisk {
        matches: same_order && ids.next().is_none(),
        reusable,
    })
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

    #[test]
    fn reusable_slots_hold_a_bit_per_slot_and_stay_inside_the_file() {
        let id = Id::hash(b"x");
        let unhashed = Reusable::Slots {
            size: 4096,
            len: 3 * 4096 + 100,
            matched: None,
        };
        assert_eq!(unhashed.at(&id, 4096, 4096), Some(4096));
        assert_eq!(unhashed.at(&id, 3 * 4096, 100), Some(3 * 4096));
        assert_eq!(unhashed.at(&id, 3 * 4096, 4096), None, "past the end");
        assert_eq!(unhashed.at(&id, 100, 4096), None, "not a slot");
        assert_eq!(unhashed.chunks(), 4);
        let mut bits = Vec::new();
        set_bit(&mut bits, 0);
        set_bit(&mut bits, 70);
        let hashed = Reusable::Slots {
            size: 4096,
            len: 100 * 4096,
            matched: Some(bits),
        };
        assert_eq!(hashed.at(&id, 0, 4096), Some(0));
        assert_eq!(hashed.at(&id, 4096, 4096), None);
        assert_eq!(hashed.at(&id, 70 * 4096, 4096), Some(70 * 4096));
        assert_eq!(hashed.at(&id, 71 * 4096, 4096), None);
        assert_eq!(hashed.chunks(), 2);
        // Slots 0 and 70 of 100 match: runs 1..70 and 71..100 differ.
        let d = |runs, bytes| Some(Differing { bytes, runs });
        assert_eq!(hashed.differing(100 * 4096, 4096), d(2, 98 * 4096));
        // The last slot of a shorter snapshot file counts its own bytes,
        // rounded out to a block.
        assert_eq!(hashed.differing(70 * 4096 + 10, 1), d(1, 69 * 4096));
        assert_eq!(hashed.differing(72 * 4096 + 10, 1), d(2, 70 * 4096 + 10));
        assert_eq!(hashed.differing(72 * 4096 + 10, 4096), d(2, 71 * 4096));
        // Pages smaller than a block: each run takes whole blocks.
        let small = Reusable::Slots {
            size: 1024,
            len: 8 * 1024,
            matched: Some(vec![0b1011_1101]),
        };
        assert_eq!(small.differing(8 * 1024, 4096), d(2, 2 * 4096));
        assert_eq!(
            unhashed.differing(3 * 4096, 4096),
            None,
            "not hashed: nothing known"
        );
        assert!(hashed.is_positional() && !hashed.is_empty());
        let found = Reusable::Found(HashMap::from([(id, (500, 10))]));
        assert_eq!(found.at(&id, 0, 10), Some(500));
        assert_eq!(found.at(&id, 0, 11), None);
        assert!(Reusable::Nothing.is_empty());
    }
}
