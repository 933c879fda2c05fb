//! Restore, the write steps: the staged files (`stage.rs`) renamed over
//! their targets, the Chroma folder brought to the snapshot's tree (in
//! place: removals, folders, renames, metadata), temps and staging files
//! left by dead runs swept.

use rayon::prelude::*;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, Permissions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::store::index::ChunkIndex;
use crate::store::manifest::{Entry, EntryKind, FileEntry, Manifest};
use crate::store::Store;

use super::folders::MadeFolders;
use super::held::{hold, Reached, Tree};
use super::patch;
use super::plan::{path_of, ChromaPlan, RestorePlan, Reusable, S_IFLNK, S_IFMT};
use super::stage::{stage, stage_file, ChunkCounts, Fault, Staged, StagedFile};
use super::{chroma_rel, Targets, TEMP_PREFIX};

#[derive(Clone, Copy, Debug, Default)]
pub struct Applied {
    pub db_restored: bool,
    pub registry_restored: bool,
    pub chroma_written: u64,
    pub chroma_unchanged: u64,
    pub chroma_removed: u64,
    /// Chunks read from the store (see [`RestoreResult`](super::RestoreResult)).
    pub chunks_fetched: u64,
    /// Chunks taken from the files on disk instead.
    pub chunks_reused: u64,
}

/// Steps 1 and 5 to 7 without the live-runtime steps between them: stages
/// the plan's files (refusing a damaged snapshot before anything is
/// touched), then installs them.
pub fn apply(
    store: &Store,
    index: &ChunkIndex,
    manifest: &Manifest,
    plan: &RestorePlan,
    progress: &dyn Progress,
) -> Result<Applied> {
    sweep_stale_temps(&plan.targets, plan.chroma.is_some());
    let mut folders = MadeFolders::default();
    let mut staged = stage(store, index, manifest, plan, &mut folders, progress)?;
    install(&mut staged, manifest, plan, &mut folders, progress)
}

/// Steps 5 to 7: renames the staged files into place (the db, the
/// registry, then the Chroma tree brought to the snapshot's), each folder
/// fsynced on a live restore. The folders made for staging are kept once
/// the last refusal is past.
pub fn install(
    staged: &mut Staged,
    manifest: &Manifest,
    plan: &RestorePlan,
    folders: &mut MadeFolders,
    progress: &dyn Progress,
) -> Result<Applied> {
    let t = &plan.targets;
    progress.phase("install", None);
    // A file to patch must be the one staged against: checked for all of
    // them before anything changes.
    for f in staged.chroma.values() {
        if let Some(p) = &f.patch {
            patch::check_unchanged(&f.target, p)?;
        }
    }
    folders.keep();
    // From here on the live tree changes for good.
    staged.dir_mtimes.clear();
    let mut out = Applied {
        chunks_fetched: staged.counts.fetched(),
        chunks_reused: staged.counts.reused(),
        ..Applied::default()
    };
    // 5. the db
    if let Some(db) = &staged.db {
        rename_into_place(db, manifest, t.live)?;
        staged.db = None;
        out.db_restored = true;
        crate::failpoint::hit(|| "restore:mid-renames".into());
    }
    // 6. the registry
    if let Some(reg) = &staged.registry {
        rename_into_place(reg, manifest, t.live)?;
        staged.registry = None;
        out.registry_restored = true;
    }
    // 7. Chroma
    if let Some(cp) = &plan.chroma {
        install_chroma(staged, manifest, cp, t.live)?;
        let same = staged.same.len() as u64;
        out.chroma_written = cp.write.len() as u64 - same;
        out.chroma_unchanged = cp.unchanged.len() as u64 + same;
        out.chroma_removed = cp.files_removed();
        let untouched = cp
            .unchanged
            .iter()
            .filter_map(|&i| manifest.entries[i].file());
        out.chunks_reused += untouched.map(|f| f.list.len()).sum::<u64>();
    }
    Ok(out)
}

/// Renames a staged db or registry over its target, then fsyncs the
/// folder when `durable`.
fn rename_into_place(f: &StagedFile, manifest: &Manifest, durable: bool) -> Result<()> {
    let snap_path = manifest.entries[f.entry].path_lossy();
    crate::failpoint::hit(|| format!("restore:before-rename:{snap_path}"));
    fs::rename(&f.tmp, &f.target).ctx("rename into place", &f.target)?;
    if durable {
        sync_dir(parent_of(&f.target))?;
    }
    Ok(())
}

pub(super) fn parent_of(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    crate::store::backend::sync_dir(dir).ctx("fsync folder", dir)
}

fn temp_beside(target: &Path) -> PathBuf {
    temp_in(parent_of(target))
}

/// A new temp (or staging) file name in `dir`, naming its owner.
pub(super) fn temp_in(dir: &Path) -> PathBuf {
    dir.join(format!(
        "{TEMP_PREFIX}{}{:016x}.tmp",
        crate::os::TempOwner::current().prefix(),
        rand::random::<u64>()
    ))
}

/// Removes the temp and staging files a killed restore left beside the
/// targets: in the db's and the registry's folders and, with Chroma, in
/// every folder of the Chroma tree and in the tree's parent (where files
/// are staged while the tree does not exist). Best effort.
pub fn sweep_stale_temps(targets: &Targets, with_chroma: bool) {
    for dir in [&targets.db, &targets.registry] {
        clean_stale_temps(parent_of(dir));
    }
    if with_chroma {
        clean_stale_temps(parent_of(&targets.chroma));
        sweep_tree(&targets.chroma);
    }
}

/// `clean_stale_temps` in every folder of a tree (links not followed).
fn sweep_tree(root: &Path) {
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
        // Only a gone owner's: a temp of another host or PID namespace may
        // belong to a restore running there right now.
        let touched = || crate::os::last_touched(&e.path());
        let stale = std::str::from_utf8(rest).is_ok_and(|n| crate::os::temp_stale(n, touched));
        // A committed patch is finished, not removed (see `patch.rs`).
        if stale && patch::recover(&e.path()) == patch::Recovered::NotAPatch {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Removes a temp file unless disarmed.
pub(super) struct TempGuard<'a>(pub(super) &'a Path, pub(super) bool);

impl Drop for TempGuard<'_> {
    fn drop(&mut self) {
        if !self.1 {
            let _ = fs::remove_file(self.0);
        }
    }
}

pub(super) fn file_time(ns: i64) -> filetime::FileTime {
    filetime::FileTime::from_unix_time(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    )
}

/// The owner a new file at `target` should get: the one it replaces, else
/// its nearest existing folder's (so a restore run as root keeps the
/// service's ownership, also in folders it creates: those take their
/// parent's owner, [`adopt_parent_owner`]).
pub(super) fn wanted_owner(target: &Path) -> Option<(u32, u32)> {
    fs::symlink_metadata(target)
        .ok()
        .or_else(|| {
            target
                .ancestors()
                .skip(1)
                .find_map(|d| fs::metadata(d).ok())
        })
        .map(|m| (m.uid(), m.gid()))
}

/// Makes a missing Chroma folder and its missing parents. Each folder
/// this call made (and only those: another process may make one
/// meanwhile) takes its parent's owner.
fn create_root(root: &Path) -> Result<()> {
    let mut folders = MadeFolders::default();
    folders.create(root)?;
    folders.keep();
    Ok(())
}

/// How a file is installed: which chunks can be read from the file being
/// replaced, and whether it must be durable before its rename (a live
/// restore) or may stay in the page cache (`--to`, like `borg extract`).
#[derive(Clone, Copy)]
pub struct Install<'a> {
    pub reusable: Option<&'a Reusable>,
    pub durable: bool,
    /// Bulk data (a Chroma file): written behind, and the file it
    /// replaces read once ([`crate::os::WriteBehind`]: neither is read
    /// again soon, and a restore must not flood the page cache); one that
    /// mostly holds the snapshot's bytes where it has them may be patched
    /// in place rather than replaced (see `patch.rs`). Not the db, whose
    /// staged copy `integrity_check` reads at once.
    pub bulk: bool,
    /// The disk has no room for a whole copy of this file (see
    /// `stage::check_space`): its patch is kept whatever share of the
    /// file it holds, since filling its gaps would need that room.
    pub keep_patch: bool,
}

/// Rebuilds a file from its chunks into a temp file beside `target`, sets
/// owner, mode and mtime, fsyncs it (when `durable`) and renames it over
/// `target` (`restore --include`, which checks its chunks beforehand).
/// Chunks in `reusable` are read from the file being replaced (and
/// re-hashed), the rest from the store. The caller fsyncs the folder.
pub fn install_file(
    store: &Store,
    index: &ChunkIndex,
    entry: &Entry,
    file: &FileEntry,
    target: &Path,
    how: Install<'_>,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let parent = parent_of(target);
    fs::create_dir_all(parent).ctx("create", parent)?;
    let counts = ChunkCounts::default();
    let staged = stage_file(
        store,
        index,
        (entry, file),
        (target, parent),
        how,
        &counts,
        on_bytes,
    )?;
    let tmp = match staged {
        Ok(w) => w.tmp,
        Err(Fault::Chunk(id, fault)) => return Err(fault.into_error(&id)),
        Err(Fault::Size { written }) => {
            return Err(Error::TargetInvalid {
                path: target.to_path_buf(),
                detail: format!(
                    "its chunks hold {written} bytes, the snapshot records {}",
                    file.size
                ),
            })
        }
    };
    let mut guard = TempGuard(&tmp, false);
    if file.sqlite {
        // The `-wal` / `-shm` / `-journal` of the file replaced must not
        // stay (the next open would replay them onto the new one): its WAL
        // is folded in, then they go (steps 3 and 4 of a full restore),
        // once the new file is staged. So a failed staging, or a kill
        // before the rename, leaves the old file whole.
        let _ = crate::sources::sqlite::checkpoint_wal(target);
        crate::sources::sqlite::remove_sidecars(target)?;
    }
    crate::failpoint::hit(|| format!("restore:before-rename:{}", entry.path_lossy()));
    fs::rename(&tmp, target).ctx("rename into place", target)?;
    guard.1 = true;
    Ok(())
}

/// Creates a symlink beside `target` and renames it over `target`.
fn install_symlink(entry: &Entry, link_target: &[u8], target: &Path, shown: &Path) -> Result<()> {
    let owner = wanted_owner(target);
    let tmp = temp_beside(target);
    let mut guard = TempGuard(&tmp, false);
    std::os::unix::fs::symlink(OsStr::from_bytes(link_target), &tmp)
        .ctx("create a symlink beside", shown)?;
    if let Some((uid, gid)) = owner {
        let _ = std::os::unix::fs::lchown(&tmp, Some(uid), Some(gid));
    }
    let t = file_time(entry.mtime_ns);
    filetime::set_symlink_file_times(&tmp, t, t).ctx("set the mtime of a symlink beside", shown)?;
    fs::rename(&tmp, target).ctx("rename into place", shown)?;
    guard.1 = true;
    Ok(())
}

/// Sets mode and mtime of an existing file or folder when they differ
/// (`path`: as [`super::held::Reached::path`] names it; `shown`: for
/// messages).
/// `follow`: for the Chroma dir itself, which may be a symlink to it.
///
/// The file is held (`O_PATH | O_NOFOLLOW`) and checked to be the one
/// just looked at before its mode and mtime change, through that handle:
/// a file swapped for a symlink in between (a restore runs as root in a
/// tree its service's user can write) must not lend the snapshot's mode
/// to whatever the link names.
fn fix_meta(path: &Path, shown: &Path, entry: &Entry, follow: bool) -> Result<()> {
    let m = if follow {
        fs::metadata(path)
    } else {
        fs::symlink_metadata(path)
    }
    .ctx("stat", shown)?;
    if m.file_type().is_symlink() {
        let t = file_time(entry.mtime_ns);
        let have = m.mtime() * 1_000_000_000 + m.mtime_nsec();
        if have != entry.mtime_ns {
            filetime::set_symlink_file_times(path, t, t).ctx("set the mtime of", shown)?;
        }
        return Ok(());
    }
    let have = m.mtime() * 1_000_000_000 + m.mtime_nsec();
    let mode_differs = m.mode() & 0o7777 != entry.mode & 0o7777;
    if !mode_differs && have == entry.mtime_ns {
        return Ok(());
    }
    crate::failpoint::pause_named(|| format!("restore:before-meta:{}", entry.path_lossy()));
    let held = hold(path, shown, follow, &m)?;
    if mode_differs {
        fs::set_permissions(&held, Permissions::from_mode(entry.mode & 0o7777))
            .ctx("set the mode of", shown)?;
    }
    if have != entry.mtime_ns {
        filetime::set_file_mtime(&held, file_time(entry.mtime_ns))
            .ctx("set the mtime of", shown)?;
    }
    Ok(())
}

/// Step 7: carries out a Chroma plan INTO `plan.root` (created only when
/// missing; never removed or replaced): removals, new folders, the staged
/// files renamed into place and symlinks made, then metadata, folders
/// deepest first so their mtimes stay as restored.
fn install_chroma(
    staged: &mut Staged,
    manifest: &Manifest,
    plan: &ChromaPlan,
    durable: bool,
) -> Result<()> {
    let root = &plan.root;
    if !plan.root_exists {
        create_root(root)?;
    }
    let tree = Tree::open(root)?;
    // An entry the plan saw, which must still be there.
    let existing = |rel: &[u8]| -> Result<Reached> {
        tree.reach(rel, false, false)?.ok_or_else(|| {
            let shown = path_of(root, rel);
            Error::io("stat", &shown, std::io::ErrorKind::NotFound.into())
        })
    };
    let mut touched: BTreeSet<PathBuf> = BTreeSet::new();
    for r in &plan.remove {
        // A folder on the way gone already: so is the entry.
        let Some(at) = tree.reach(&r.rel, false, false)? else {
            continue;
        };
        crate::failpoint::pause_named(|| format!("restore:before-remove:{}", at.shown.display()));
        let removed = if r.is_dir {
            fs::remove_dir_all(at.path())
        } else {
            fs::remove_file(at.path())
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &at.shown, e)),
        }
        touched.insert(parent_of(&at.shown).to_path_buf());
    }
    crate::failpoint::hit(|| "restore:chroma-after-remove".into());
    for &i in &plan.create_dirs {
        let rel = rel_of(manifest, i);
        tree.reach(rel, true, true)?;
        touched.insert(parent_of(&path_of(root, rel)).to_path_buf());
    }

    let patched = install_patches(staged, manifest, plan, &tree, durable)?;
    for &i in &plan.write {
        let e = &manifest.entries[i];
        let Some(at) = tree.reach(rel_of(manifest, i), false, true)? else {
            continue; // never: folders on the way are made
        };
        let path = at.path();
        match &e.kind {
            EntryKind::File(_) if staged.same.contains(&i) => fix_meta(&path, &at.shown, e, false)?,
            EntryKind::File(_) if patched.contains(&i) => {}
            EntryKind::File(_) => {
                let Some(f) = staged.chroma.remove(&i) else {
                    return Err(Error::TargetInvalid {
                        path: at.shown,
                        detail: "no staged copy to install".into(),
                    });
                };
                crate::failpoint::hit(|| format!("restore:before-rename:{}", e.path_lossy()));
                // Staged beside its target (the usual case): renamed
                // within the folder held.
                let from = match f.tmp.file_name() {
                    Some(name) if f.tmp.parent() == at.shown.parent() => at.sibling(name),
                    _ => f.tmp.clone(),
                };
                if let Err(err) = fs::rename(&from, &path) {
                    // Still the staging's to remove.
                    staged.chroma.insert(i, f);
                    return Err(Error::io("rename into place", &at.shown, err));
                }
            }
            EntryKind::Symlink { target } => install_symlink(e, target, &path, &at.shown)?,
            EntryKind::Dir => {}
        }
    }
    for &i in &plan.write {
        touched.insert(parent_of(&path_of(root, rel_of(manifest, i))).to_path_buf());
    }
    for &i in &plan.unchanged {
        let at = existing(rel_of(manifest, i))?;
        fix_meta(&at.path(), &at.shown, &manifest.entries[i], false)?;
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
        let at = existing(rel_of(manifest, i))?;
        fix_meta(&at.path(), &at.shown, &manifest.entries[i], false)?;
    }
    if let Some(i) = plan.root_entry {
        // When the Chroma dir was reached through a symlink, the snapshot
        // may hold the link's own mode (0777) and mtime: never apply those
        // to the folder itself.
        let e = &manifest.entries[i];
        if e.mode & S_IFMT != S_IFLNK {
            fix_meta(&tree.root_path(), root, e, true)?;
        }
    }
    Ok(())
}

/// Installs the patched Chroma files, in parallel: each is a journal of
/// its own, in a folder that is there, and none depends on another or on
/// the renames after. Every one is tried; the first error is returned,
/// else the entries patched.
fn install_patches(
    staged: &mut Staged,
    manifest: &Manifest,
    plan: &ChromaPlan,
    tree: &Tree,
    durable: bool,
) -> Result<BTreeSet<usize>> {
    let root = &plan.root;
    let mut jobs = Vec::new();
    for &i in &plan.write {
        let patched = staged.chroma.get(&i).is_some_and(|f| f.patch.is_some());
        if !patched || staged.same.contains(&i) {
            continue;
        }
        // The folders on the way are real ones. What keeps the patch
        // from a file swapped in since is `patch::install` itself: it
        // opens its file without following a link and checks it is the
        // file staged against (device, inode, one link).
        tree.reach(rel_of(manifest, i), false, false)?;
        let e = &manifest.entries[i];
        crate::failpoint::hit(|| format!("restore:before-rename:{}", e.path_lossy()));
        // Once committed, a patch is the next restore's to finish if this
        // one fails (and one refused before its commit is removed by
        // `patch::install`): the staging's no more.
        if let Some(StagedFile {
            tmp,
            patch: Some(p),
            ..
        }) = staged.chroma.remove(&i)
        {
            jobs.push((i, tmp, p));
        }
    }
    let done: Vec<Result<()>> = jobs
        .par_iter()
        .map(|(i, tmp, p)| {
            let path = path_of(root, rel_of(manifest, *i));
            patch::install(tmp, &path, p, &manifest.entries[*i], durable)
        })
        .collect();
    done.into_iter().collect::<Result<()>>()?;
    Ok(jobs.into_iter().map(|(i, ..)| i).collect())
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
