//! Restore, step 3: applying the plan. Each file is written to a temp file
//! beside its target and renamed over it; the Chroma folder is brought to
//! the snapshot's tree; temps left by dead runs are swept.

use rayon::prelude::*;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, IoContext, Result};
use crate::id::Id;
use crate::ops::extract::{self, ExtractError};
use crate::progress::Progress;
use crate::store::index::ChunkIndex;
use crate::store::manifest::{Entry, EntryKind, FileEntry, Manifest};
use crate::store::Store;

use super::plan::{path_of, ChromaPlan, RestorePlan, Reusable, S_IFLNK, S_IFMT};
use super::{chroma_rel, TEMP_PREFIX};

#[derive(Clone, Copy, Debug, Default)]
pub struct Applied {
    pub db_restored: bool,
    pub registry_restored: bool,
    pub chroma_written: u64,
    pub chroma_unchanged: u64,
    pub chroma_removed: u64,
}

/// Steps 5 to 7: carries a plan out.
pub fn apply(
    store: &Store,
    index: &ChunkIndex,
    manifest: &Manifest,
    plan: &RestorePlan,
    progress: &dyn Progress,
) -> Result<Applied> {
    let mut out = Applied::default();
    let t = &plan.targets;
    for dir in [t.db.parent(), t.registry.parent()].into_iter().flatten() {
        clean_stale_temps(dir);
    }
    // 5. the db
    if let Some(i) = plan.db {
        let e = &manifest.entries[i];
        if let EntryKind::File(f) = &e.kind {
            progress.phase("database", Some(f.size));
            let how = Install {
                reusable: Some(&plan.db_reusable),
                durable: t.live,
            };
            install_file(store, index, e, f, &t.db, how, &|n| progress.advance(n))?;
            if t.live {
                sync_dir(parent_of(&t.db))?;
            }
            out.db_restored = true;
        }
    }
    // 6. the registry
    if let Some(i) = plan.registry {
        let e = &manifest.entries[i];
        if let EntryKind::File(f) = &e.kind {
            progress.phase("registry", Some(f.size));
            let how = Install {
                reusable: None,
                durable: t.live,
            };
            install_file(store, index, e, f, &t.registry, how, &|n| {
                progress.advance(n)
            })?;
            if t.live {
                sync_dir(parent_of(&t.registry))?;
            }
            out.registry_restored = true;
        }
    }
    // 7. Chroma
    if let Some(cp) = &plan.chroma {
        apply_chroma(store, index, manifest, cp, t.live, progress)?;
        out.chroma_written = cp.write.len() as u64;
        out.chroma_unchanged = cp.unchanged.len() as u64;
        out.chroma_removed = cp.files_removed();
    }
    Ok(out)
}

fn parent_of(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    crate::store::backend::sync_dir(dir).ctx("fsync folder", dir)
}

fn temp_beside(target: &Path) -> PathBuf {
    parent_of(target).join(format!(
        "{TEMP_PREFIX}{}{:016x}.tmp",
        crate::os::TempOwner::current().prefix(),
        rand::random::<u64>()
    ))
}

/// Removes temp files a killed restore left in `dir` (best effort).
/// `clean_stale_temps` in every folder of a tree (links not followed).
pub(super) fn sweep_stale_temps(root: &Path) {
    for dir in walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_dir())
    {
        clean_stale_temps(dir.path());
    }
}

fn clean_stale_temps(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(rest) = name.as_bytes().strip_prefix(TEMP_PREFIX.as_bytes()) else {
            continue;
        };
        // Only a provably gone owner's: a temp of another host or PID
        // namespace may belong to a restore running there right now.
        let stale = std::str::from_utf8(rest).is_ok_and(crate::os::temp_owner_gone);
        if stale {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Removes a temp file unless disarmed.
struct TempGuard<'a>(&'a Path, bool);

impl Drop for TempGuard<'_> {
    fn drop(&mut self) {
        if !self.1 {
            let _ = fs::remove_file(self.0);
        }
    }
}

fn file_time(ns: i64) -> filetime::FileTime {
    filetime::FileTime::from_unix_time(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    )
}

/// The owner a new file at `target` should get: the one it replaces, else
/// its folder's (so a restore run as root keeps the service's ownership).
fn wanted_owner(target: &Path) -> Option<(u32, u32)> {
    fs::symlink_metadata(target)
        .or_else(|_| fs::metadata(parent_of(target)))
        .ok()
        .map(|m| (m.uid(), m.gid()))
}

fn extract_error(e: ExtractError, tmp: &Path) -> Error {
    match e {
        ExtractError::Chunk(id, fault) => fault.into_error(&id),
        ExtractError::Write(e) => Error::io("write", tmp, e),
        ExtractError::TooLarge { limit } => Error::TargetInvalid {
            path: tmp.to_path_buf(),
            detail: format!("more than {limit} bytes for an in-memory file"),
        },
    }
}

/// How a file is installed: which chunks can be read from the file being
/// replaced, and whether it must be durable before its rename (a live
/// restore) or may stay in the page cache (`--to`, like `borg extract`).
#[derive(Clone, Copy)]
pub struct Install<'a> {
    pub reusable: Option<&'a Reusable>,
    pub durable: bool,
}

/// Rebuilds a file from its chunks into a temp file beside `target`, sets
/// owner, mode and mtime, fsyncs it (when `durable`) and renames it over
/// `target`. Chunks in
/// `reusable` are read from the file being replaced (and re-hashed), the
/// rest from the store. The caller fsyncs the folder.
pub fn install_file(
    store: &Store,
    index: &ChunkIndex,
    entry: &Entry,
    file: &FileEntry,
    target: &Path,
    how: Install<'_>,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let Install { reusable, durable } = how;
    let parent = parent_of(target);
    fs::create_dir_all(parent).ctx("create", parent)?;
    let owner = wanted_owner(target);
    // Opened before the rename, so it reads the old file throughout.
    let old = reusable
        .filter(|r| !r.is_empty())
        .and_then(|r| File::open(target).ok().map(|f| (f, r)));
    let sealer = store.sealer();
    let local = |id: &Id| -> Option<Vec<u8>> {
        let (f, map) = old.as_ref()?;
        let &(offset, len) = map.get(id)?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset).ok()?;
        (sealer.chunk_id(&buf) == *id).then_some(buf)
    };
    let tmp = temp_beside(target);
    let mut guard = TempGuard(&tmp, false);
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .ctx("create", &tmp)?;
    let mut w = BufWriter::with_capacity(1 << 20, &f);
    extract::write_file(
        store,
        index,
        file,
        &mut w,
        on_bytes,
        extract::ChunkSource::LocalFirst(&local),
    )
    .map_err(|e| extract_error(e, &tmp))?;
    w.flush().ctx("write", &tmp)?;
    drop(w);
    if let (Some((uid, gid)), Ok(m)) = (owner, f.metadata()) {
        if (m.uid(), m.gid()) != (uid, gid) {
            // Best effort: only root may give a file away.
            let _ = std::os::unix::fs::fchown(&f, Some(uid), Some(gid));
        }
    }
    f.set_permissions(Permissions::from_mode(entry.mode & 0o7777))
        .ctx("set the mode of", &tmp)?;
    filetime::set_file_handle_times(&f, None, Some(file_time(entry.mtime_ns)))
        .ctx("set the mtime of", &tmp)?;
    if durable {
        f.sync_all().ctx("fsync", &tmp)?;
    }
    drop(f);
    crate::failpoint::hit(|| format!("restore:before-rename:{}", entry.path_lossy()));
    fs::rename(&tmp, target).ctx("rename into place", target)?;
    guard.1 = true;
    Ok(())
}

/// Creates a symlink beside `target` and renames it over `target`.
fn install_symlink(entry: &Entry, link_target: &[u8], target: &Path) -> Result<()> {
    let owner = wanted_owner(target);
    let tmp = temp_beside(target);
    let mut guard = TempGuard(&tmp, false);
    std::os::unix::fs::symlink(OsStr::from_bytes(link_target), &tmp).ctx("create symlink", &tmp)?;
    if let Some((uid, gid)) = owner {
        let _ = std::os::unix::fs::lchown(&tmp, Some(uid), Some(gid));
    }
    let t = file_time(entry.mtime_ns);
    filetime::set_symlink_file_times(&tmp, t, t).ctx("set the mtime of", &tmp)?;
    fs::rename(&tmp, target).ctx("rename into place", target)?;
    guard.1 = true;
    Ok(())
}

/// Sets mode and mtime of an existing file or folder when they differ.
/// `follow`: for the Chroma dir itself, which may be a symlink to it.
fn fix_meta(path: &Path, entry: &Entry, follow: bool) -> Result<()> {
    let m = if follow {
        fs::metadata(path)
    } else {
        fs::symlink_metadata(path)
    }
    .ctx("stat", path)?;
    if m.file_type().is_symlink() {
        let t = file_time(entry.mtime_ns);
        let have = m.mtime() * 1_000_000_000 + m.mtime_nsec();
        if have != entry.mtime_ns {
            filetime::set_symlink_file_times(path, t, t).ctx("set the mtime of", path)?;
        }
        return Ok(());
    }
    if m.mode() & 0o7777 != entry.mode & 0o7777 {
        fs::set_permissions(path, Permissions::from_mode(entry.mode & 0o7777))
            .ctx("set the mode of", path)?;
    }
    let have = m.mtime() * 1_000_000_000 + m.mtime_nsec();
    if have != entry.mtime_ns {
        filetime::set_file_mtime(path, file_time(entry.mtime_ns)).ctx("set the mtime of", path)?;
    }
    Ok(())
}

/// Step 7: carries out a Chroma plan INTO `plan.root` (created only when
/// missing; never removed or replaced): removals, new folders, files and
/// symlinks written atomically in parallel, then metadata, folders deepest
/// first so their mtimes stay as restored.
pub fn apply_chroma(
    store: &Store,
    index: &ChunkIndex,
    manifest: &Manifest,
    plan: &ChromaPlan,
    durable: bool,
    progress: &dyn Progress,
) -> Result<()> {
    let root = &plan.root;
    if !plan.root_exists {
        fs::create_dir_all(root).ctx("create", root)?;
    }
    let mut touched: BTreeSet<PathBuf> = BTreeSet::new();
    for r in &plan.remove {
        real_dirs(root, &r.rel, false)?;
        let path = path_of(root, &r.rel);
        let removed = if r.is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &path, e)),
        }
        touched.insert(parent_of(&path).to_path_buf());
    }
    crate::failpoint::hit(|| "restore:chroma-after-remove".into());
    for &i in &plan.create_dirs {
        let path = path_of(root, rel_of(manifest, i));
        real_dirs(root, rel_of(manifest, i), true)?;
        // Best effort: a new folder gets its parent's owner.
        if let (Ok(m), Ok(p)) = (fs::metadata(&path), fs::metadata(parent_of(&path))) {
            if (m.uid(), m.gid()) != (p.uid(), p.gid()) {
                let _ = std::os::unix::fs::chown(&path, Some(p.uid()), Some(p.gid()));
            }
        }
        touched.insert(parent_of(&path).to_path_buf());
    }

    let total: u64 = plan
        .write
        .iter()
        .filter_map(|&i| manifest.entries[i].file().map(|f| f.size))
        .sum();
    progress.phase("chroma", Some(total));
    let done = AtomicU64::new(0);
    let on_bytes = |n: u64| {
        done.fetch_add(n, Ordering::Relaxed);
        progress.advance(n);
    };
    plan.write.par_iter().try_for_each(|&i| -> Result<()> {
        let e = &manifest.entries[i];
        let path = path_of(root, rel_of(manifest, i));
        real_dirs(root, rel_of(manifest, i), false)?;
        match &e.kind {
            EntryKind::File(f) => {
                let how = Install {
                    reusable: plan.reusable.get(&i),
                    durable,
                };
                install_file(store, index, e, f, &path, how, &on_bytes)
            }
            EntryKind::Symlink { target } => install_symlink(e, target, &path),
            EntryKind::Dir => Ok(()),
        }
    })?;
    for &i in &plan.write {
        touched.insert(parent_of(&path_of(root, rel_of(manifest, i))).to_path_buf());
    }
    for &i in &plan.unchanged {
        real_dirs(root, rel_of(manifest, i), false)?;
        fix_meta(
            &path_of(root, rel_of(manifest, i)),
            &manifest.entries[i],
            false,
        )?;
    }
    for dir in touched.iter().filter(|_| durable) {
        if dir.is_dir() {
            sync_dir(dir)?;
        }
    }
    // Folders last, deepest first: writing inside one changes its mtime,
    // and a read-only mode must not block the writes.
    let mut dirs = plan.dirs.clone();
    dirs.sort_by(|a, b| rel_of(manifest, *b).cmp(rel_of(manifest, *a)));
    for i in dirs {
        real_dirs(root, rel_of(manifest, i), false)?;
        fix_meta(
            &path_of(root, rel_of(manifest, i)),
            &manifest.entries[i],
            false,
        )?;
    }
    if let Some(i) = plan.root_entry {
        // When the Chroma dir was reached through a symlink, the snapshot
        // may hold the link's own mode (0777) and mtime: never apply those
        // to the folder itself.
        let e = &manifest.entries[i];
        if e.mode & S_IFMT != S_IFLNK {
            fix_meta(root, e, true)?;
        }
    }
    Ok(())
}

/// Makes sure each folder on the way from `root` to `root/rel` (`rel`
/// itself too when `whole`) is a real folder, creating missing ones. A
/// symlink or anything else on the way refuses the write: a restore never
/// writes, removes or sets metadata through a link, whether one planted
/// in the tree on disk or one a forged manifest declares (the plan already
/// replaces links where the snapshot has folders; this guards the rest).
fn real_dirs(root: &Path, rel: &[u8], whole: bool) -> Result<()> {
    let mut steps: Vec<&[u8]> = rel
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    if !whole {
        steps.pop();
    }
    let mut dir = root.to_path_buf();
    for step in steps {
        dir.push(OsStr::from_bytes(step));
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => return Err(not_a_real_dir(&dir)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("stat", &dir, e)),
        }
        match fs::create_dir(&dir) {
            Ok(()) => {}
            // Made by a parallel writer of the same restore: a folder, or refused.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                    return Err(not_a_real_dir(&dir));
                }
            }
            Err(e) => return Err(Error::io("create", &dir, e)),
        }
    }
    Ok(())
}

fn not_a_real_dir(path: &Path) -> Error {
    Error::TargetInvalid {
        path: path.to_path_buf(),
        detail: "is a symlink or not a folder where the restore needs a folder; restore never writes through a link (remove it and run the restore again)".into(),
    }
}

fn rel_of(manifest: &Manifest, i: usize) -> &[u8] {
    chroma_rel(&manifest.entries[i].path).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temps_of_dead_processes_are_cleaned() {
        use crate::os::TempOwner;
        let dir = tempfile::tempdir().unwrap();
        let temp_of = |owner: &TempOwner| {
            dir.path()
                .join(format!("{TEMP_PREFIX}{}00.tmp", owner.prefix()))
        };
        let me = TempOwner::current();
        // pid 4194304 is above Linux's pid_max: never a live process.
        let dead = TempOwner {
            pid: 4_194_304,
            ..me.clone()
        };
        // The same pid on another host (or seen from another container)
        // says nothing about that writer: it may be running.
        let foreign = TempOwner {
            host: "elsewhere".into(),
            ..dead.clone()
        };
        let (dead, mine, foreign) = (temp_of(&dead), temp_of(me), temp_of(&foreign));
        let unknown = dir.path().join(format!("{TEMP_PREFIX}4294967290-00.tmp"));
        let other = dir.path().join("keep.me");
        for p in [&dead, &mine, &foreign, &unknown, &other] {
            fs::write(p, b"x").unwrap();
        }
        clean_stale_temps(dir.path());
        assert!(!dead.exists());
        assert!(mine.exists() && other.exists());
        assert!(foreign.exists() && unknown.exists());
        assert!(temp_beside(&dir.path().join("a.db"))
            .to_string_lossy()
            .contains(&me.prefix()));
    }
}
