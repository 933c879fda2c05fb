//! Restore, step 1 as built: "validate and stage". Every file the plan
//! writes is rebuilt into a staging file beside its target, each chunk
//! decoded and re-hashed once (or copied from the file it replaces, when
//! its bytes there hash to the chunk's id); then the staged db gets
//! `PRAGMA integrity_check` and the staged registry is parsed. A [`Staged`]
//! owns its files until they are renamed into place (`apply.rs`): dropped
//! early, it removes them, so a refused restore leaves the live tree as it
//! was. Staging files carry restore's reserved temp name (see
//! [`super::TEMP_PREFIX`]): never captured, swept once their owner is gone.

use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, IoContext, Result};
use crate::id::Id;
use crate::ops::extract::{self, ExtractError, Output, Placed, SMALL_FILE_MAX};
use crate::progress::Progress;
use crate::sources::sqlite;
use crate::store::index::ChunkIndex;
use crate::store::manifest::{Entry, FileEntry, Manifest};
use crate::store::{ChunkFault, Store};

use super::apply::{file_time, parent_of, temp_in, wanted_owner, Install, TempGuard};
use super::chroma_rel;
use super::folders::MadeFolders;
use super::patch::{self, Patch};
use super::plan::{RestorePlan, Reusable};

/// Chunks read at once when a file's chunks are checked: its list streams,
/// so memory follows neither the file's size nor a forged chunk count.
const CHECK_BATCH: usize = 4096;
/// Faults named by one check at most: a file whose every chunk is gone is
/// named by its first ones, not by a million.
const FAULTS_NAMED: usize = 100;

/// What [`chunk_faults`] found: chunks that did not read, each with its
/// file (at most [`FAULTS_NAMED`]), and files whose list did not read.
pub(super) struct Faults<'e> {
    pub chunks: Vec<(Id, ChunkFault, &'e Entry)>,
    pub lists: Vec<(&'e Entry, Error)>,
}

/// Reads every chunk of `files` (re-hashed), [`CHECK_BATCH`] at a time
/// across the files as their lists stream, so many small files are read
/// in parallel as one big one is. A list blob that does not read ends its
/// file's walk (the chunks of it found bad so far are kept).
pub(super) fn chunk_faults<'e>(
    store: &Store,
    index: &ChunkIndex,
    files: &[(&'e Entry, &'e FileEntry)],
) -> Faults<'e> {
    let mut found = Faults {
        chunks: Vec::new(),
        lists: Vec::new(),
    };
    let mut batch: Vec<(Id, &'e Entry)> = Vec::with_capacity(CHECK_BATCH);
    let read = |batch: &mut Vec<(Id, &'e Entry)>, out: &mut Vec<(Id, ChunkFault, &'e Entry)>| {
        batch.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.path.cmp(&b.1.path)));
        batch.dedup_by(|a, b| a.0 == b.0 && a.1.path == b.1.path);
        let bad: Vec<(Id, ChunkFault, &'e Entry)> = batch
            .par_iter()
            .filter_map(|&(id, e)| store.read_chunk(index, &id).err().map(|f| (id, f, e)))
            .collect();
        out.extend(bad);
        batch.clear();
    };
    'files: for &(entry, file) in files {
        let ids = match store.file_chunks(index, file) {
            Ok(ids) => ids,
            Err(e) => {
                found.lists.push((entry, e));
                continue;
            }
        };
        for id in ids {
            match id {
                Ok(id) => batch.push((id, entry)),
                Err(e) => {
                    found.lists.push((entry, e));
                    continue 'files;
                }
            }
            if batch.len() == CHECK_BATCH {
                read(&mut batch, &mut found.chunks);
                if found.chunks.len() >= FAULTS_NAMED {
                    break 'files;
                }
            }
        }
    }
    read(&mut batch, &mut found.chunks);
    found.chunks.truncate(FAULTS_NAMED);
    found
}

/// How many chunks were read from the store and how many were taken from
/// the files on disk instead.
#[derive(Debug, Default)]
pub struct ChunkCounts {
    pub fetched: AtomicU64,
    pub reused: AtomicU64,
}

impl ChunkCounts {
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    pub fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }
}

/// Device, inode, size and mtime of a file: the same file, unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileIdentity(u64, u64, u64, i64);

impl FileIdentity {
    pub fn of(m: &fs::Metadata) -> FileIdentity {
        FileIdentity(m.dev(), m.ino(), m.len(), crate::sources::mtime_ns(m))
    }

    pub fn dev(&self) -> u64 {
        self.0
    }

    pub fn ino(&self) -> u64 {
        self.1
    }
}

/// A complete copy of a snapshot file, or a patch that makes the file on
/// disk one ([`Patch`]), waiting beside its target.
#[derive(Debug)]
pub struct StagedFile {
    /// Its manifest entry.
    pub entry: usize,
    pub tmp: PathBuf,
    pub target: PathBuf,
    pub patch: Option<Patch>,
}

/// Everything staged for one restore. Dropping it removes the staging
/// files not yet renamed into place.
#[derive(Debug, Default)]
pub struct Staged {
    pub db: Option<StagedFile>,
    pub registry: Option<StagedFile>,
    /// Chroma files, by manifest entry index.
    pub chroma: BTreeMap<usize, StagedFile>,
    pub counts: ChunkCounts,
    /// Chroma files the plan presumed changed (see
    /// [`RestorePlan`]'s `presumed`) that hold the snapshot's content
    /// already: left alone, as files that match are.
    pub same: BTreeSet<usize>,
    /// The staged db's identity when it passed `integrity_check`: step 8
    /// need not check the same, unchanged file again.
    pub db_checked: Option<FileIdentity>,
    /// The folders that received staging files, with their mtimes before:
    /// set back when a refused restore removes its staging, so the live
    /// tree is left exactly as it was. Emptied once installing begins.
    pub(super) dir_mtimes: Vec<(PathBuf, i64)>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        let files = self
            .db
            .iter()
            .chain(&self.registry)
            .chain(self.chroma.values());
        for f in files {
            let _ = fs::remove_file(&f.tmp);
        }
        for (dir, ns) in &self.dir_mtimes {
            let _ = filetime::set_file_mtime(dir, file_time(*ns));
        }
    }
}

/// A staged file.
pub(super) struct Written {
    pub(super) tmp: PathBuf,
    /// Every chunk came from the file being replaced, which has the
    /// snapshot's size: it may hold the snapshot's content already.
    pub(super) all_reused: bool,
    /// `tmp` is a patch for the file on disk, not a whole copy.
    pub(super) patch: Option<Patch>,
}

/// Why a file could not be staged, other than a failing disk: the
/// snapshot is damaged (the restore is refused, exit 3).
pub(super) enum Fault {
    Chunk(Id, ChunkFault),
    /// The chunks hold another number of bytes than the entry records.
    Size {
        written: u64,
    },
}

/// Which file a staging job writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Db,
    Registry,
    Chroma(usize),
}

struct Job<'a> {
    slot: Slot,
    index: usize,
    /// A Chroma file the plan did not hash (it may match after all).
    presumed: bool,
    entry: &'a Entry,
    file: &'a FileEntry,
    target: PathBuf,
    dir: PathBuf,
    reusable: Option<&'a Reusable>,
}

/// Step 1: validates the snapshot by staging every file the plan writes
/// (`durable`: fsynced, for a live restore). Any fault refuses the restore
/// (`validation_failed`, exit 3) with every fault named and every staging
/// file removed; nothing at the targets is touched. The folders staging
/// needs and does not find are made and noted in `folders`, for the
/// caller to take back if it stops before installing.
pub fn stage(
    store: &Store,
    index: &ChunkIndex,
    manifest: &Manifest,
    plan: &RestorePlan,
    folders: &mut MadeFolders,
    progress: &dyn Progress,
) -> Result<Staged> {
    let errors = precheck(manifest);
    if !errors.is_empty() {
        return Err(refusal(manifest, errors));
    }
    let jobs = jobs(manifest, plan, folders)?;
    let keep_patch = check_space(store, index, &jobs, progress)?;
    let total: u64 = jobs.iter().map(|j| j.file.size).sum();
    progress.phase("validate and stage", Some(total));
    let mut staged = Staged::default();
    let dirs: BTreeSet<&Path> = jobs.iter().map(|j| j.dir.as_path()).collect();
    staged.dir_mtimes = dirs
        .into_iter()
        .filter_map(|d| {
            Some((
                d.to_path_buf(),
                crate::sources::mtime_ns(&fs::metadata(d).ok()?),
            ))
        })
        .collect();
    let durable = plan.targets.live;
    // Streamed from the lists (a remote store only: a local one ignores
    // it), the chunks found on disk left out.
    let to_fetch = jobs.iter().flat_map(|j| {
        let mut offset = 0u64;
        let ids = store.file_chunks(index, j.file).into_iter().flatten();
        ids.filter_map(std::result::Result::ok).filter(move |id| {
            // A lookup that fails only loses the prefetch of the chunk.
            let len = index.get(id).ok().flatten().map_or(0, |l| l.raw_len);
            let at = offset;
            offset += len as u64;
            j.reusable.is_none_or(|r| r.at(id, at, len).is_none())
        })
    });
    // The db's `integrity_check` (one thread) runs as soon as it is
    // staged, while the other files are still being staged.
    type Done = (
        usize,
        Result<std::result::Result<Option<Written>, Fault>>,
        Option<DbCheck>,
    );
    let results: Vec<Done> = store.with_packs_prefetched(index, to_fetch, || {
        jobs.par_iter()
            .enumerate()
            .map(|(n, j)| {
                let how = Install {
                    reusable: j.reusable,
                    durable,
                    // The db is always rebuilt whole and renamed (SPEC
                    // §3 step 5), and checked before it is.
                    bulk: matches!(j.slot, Slot::Chroma(_)),
                    keep_patch: keep_patch[n],
                };
                let on_bytes = |b: u64| progress.advance(b);
                let staged_file = stage_file(
                    store,
                    index,
                    (j.entry, j.file),
                    (&j.target, &j.dir),
                    how,
                    &staged.counts,
                    &on_bytes,
                );
                let staged_file = staged_file.map(|r| r.map(|w| unless_same(j, w)));
                let check = match &staged_file {
                    Ok(Ok(Some(w))) if j.slot == Slot::Db => Some(check_db(&w.tmp)),
                    _ => None,
                };
                (n, staged_file, check)
            })
            .collect()
    });
    let mut errors = BTreeSet::new();
    let mut fatal = None;
    for (n, result, check) in results {
        let j = &jobs[n];
        match check {
            Some(Ok(identity)) => staged.db_checked = Some(identity),
            Some(Err(problem)) => {
                errors.insert(problem);
            }
            None => {}
        }
        match result {
            Ok(Ok(None)) => {
                staged.same.insert(j.index);
            }
            Ok(Ok(Some(w))) => {
                let f = StagedFile {
                    entry: j.index,
                    tmp: w.tmp,
                    target: j.target.clone(),
                    patch: w.patch,
                };
                match j.slot {
                    Slot::Db => staged.db = Some(f),
                    Slot::Registry => staged.registry = Some(f),
                    Slot::Chroma(i) => {
                        staged.chroma.insert(i, f);
                    }
                }
            }
            // The storage failed to deliver a pack: that proves nothing
            // about the snapshot, and a retry may succeed (exit 1).
            Ok(Err(Fault::Chunk(id, f @ ChunkFault::Unreadable { .. }))) => {
                fatal = fatal.or(Some(f.into_error(&id)));
            }
            Ok(Err(fault)) => name_faults(store, index, j, fault, &mut errors),
            Err(e) => fatal = fatal.or(Some(e)),
        }
    }
    if let Some(e) = fatal {
        return Err(e);
    }
    if let Some(reg) = &staged.registry {
        errors.extend(registry_problem(&reg.tmp, manifest));
    }
    if errors.is_empty() {
        Ok(staged)
    } else {
        Err(refusal(manifest, errors))
    }
}

/// Refuses the restore (exit 1, nothing staged) when a file system that
/// would receive staging files has less free space than their bytes plus
/// 5 %: staging holds every differing file at once, and a disk filled
/// half-way would fail the restore after minutes of work. First counted
/// as whole copies; when those do not fit, each Chroma file that can be
/// patched (see [`patchable`]) is hashed and counts what its patch would
/// hold, if that is less than the file: restoring yesterday into a large
/// Chroma store must not need the store's size free when a day changed
/// a few percent of it. Returns, per job, whether its patch must be kept
/// whatever share of the file it holds (filling its gaps would need the
/// room that was not there).
fn check_space(
    store: &Store,
    index: &ChunkIndex,
    jobs: &[Job<'_>],
    progress: &dyn Progress,
) -> Result<Vec<bool>> {
    let whole: Vec<u64> = jobs.iter().map(|j| j.file.size).collect();
    if short_of_room(&space_needed(jobs, &whole)?)?.is_none() {
        return Ok(vec![false; jobs.len()]);
    }
    progress.phase("measure what differs (little free space)", None);
    let patches: Vec<Option<u64>> = jobs
        .par_iter()
        .map(|j| patch_bytes(store, index, j).filter(|&b| b < j.file.size))
        .collect();
    let bytes: Vec<u64> = (patches.iter().zip(&whole))
        .map(|(patch, &size)| patch.unwrap_or(size))
        .collect();
    match short_of_room(&space_needed(jobs, &bytes)?)? {
        None => Ok(patches.iter().map(Option::is_some).collect()),
        Some(refusal) => Err(refusal),
    }
}

/// Bytes to stage per file system (one folder of it to name): `bytes[i]`
/// for job i.
fn space_needed<'j>(jobs: &'j [Job<'_>], bytes: &[u64]) -> Result<BTreeMap<u64, (&'j Path, u64)>> {
    let mut by_fs: BTreeMap<u64, (&Path, u64)> = BTreeMap::new();
    for (j, &n) in jobs.iter().zip(bytes) {
        let dev = fs::metadata(&j.dir).ctx("stat", &j.dir)?.dev();
        let slot = by_fs.entry(dev).or_insert((&j.dir, 0));
        slot.1 = slot.1.saturating_add(n);
    }
    Ok(by_fs)
}

/// The refusal for the first file system with less room than its bytes
/// plus 5 %, if any.
fn short_of_room(by_fs: &BTreeMap<u64, (&Path, u64)>) -> Result<Option<Error>> {
    for &(dir, bytes) in by_fs.values() {
        let needed = bytes.saturating_add(bytes / 20);
        let available = crate::os::free_bytes(dir).ctx("statvfs", dir)?;
        if needed > available {
            return Ok(Some(Error::RestoreNoSpace {
                folder: dir.to_path_buf(),
                needed,
                available,
            }));
        }
    }
    Ok(None)
}

/// What patching the job's file on disk would stage: the runs of the
/// snapshot's chunks not found in place (hashed now), each rounded out to
/// the file system's blocks, plus what the file grows by (written into
/// it while the patch still exists). None when the file cannot be
/// patched or read, or when its runs would reach [`extract::MAX_SPANS`]
/// (past which the rest of a patch is written whole).
fn patch_bytes(store: &Store, index: &ChunkIndex, j: &Job<'_>) -> Option<u64> {
    let reusable = j.reusable?;
    let old = crate::os::open_regular(&j.target).ok()?;
    patchable(&old, &j.target, reusable, matches!(j.slot, Slot::Chroma(_)))?;
    let disk = old.metadata().ok()?;
    let found = super::compare_on_disk(store, index, &j.target, &j.entry.path, j.file).ok()?;
    let differing = found.reusable.differing(j.file.size, disk.blksize())?;
    if differing.runs >= extract::MAX_SPANS as u64 {
        return None;
    }
    Some(differing.bytes + j.file.size.saturating_sub(disk.len()))
}

/// The identity of the file on disk (`old`) a Chroma file would be
/// patched into, or None when it must be replaced whole: patched only
/// when bulk data whose chunks sit where the snapshot has them, in a
/// plain file with one link (a patch through another link would change
/// that file too) that this process may write (a read-only file is
/// replaced whole, by a rename its folder allows).
fn patchable(old: &File, target: &Path, reusable: &Reusable, bulk: bool) -> Option<FileIdentity> {
    if !(bulk && reusable.is_positional() && !reusable.is_empty()) {
        return None;
    }
    let m = old.metadata().ok()?;
    (m.is_file() && m.nlink() == 1 && crate::os::writable(target)).then(|| FileIdentity::of(&m))
}

fn refusal(manifest: &Manifest, errors: BTreeSet<String>) -> Error {
    Error::ValidationFailed {
        stamp: manifest.stamp.clone(),
        errors: errors.into_iter().collect::<Vec<_>>().join("; "),
    }
}

/// The checks that need only the manifest, made before a byte is staged:
/// the snapshot has a db, its capture recorded no errors, and no file
/// claims more bytes than its chunks could hold (a forged size is damage,
/// exit 3, not a lack of space). Whether every chunk is there, with the
/// recorded sizes, staging finds as it goes (one lookup per chunk, not
/// two): a fault there refuses the restore too, with the staging removed,
/// and staging never writes past a file's recorded size, which
/// [`check_space`] has measured against the free space.
fn precheck(manifest: &Manifest) -> BTreeSet<String> {
    let mut errors: BTreeSet<String> = manifest.capture_errors.iter().cloned().collect();
    if manifest.db().is_none() {
        errors.insert("db_missing_from_snapshot".into());
    }
    for entry in &manifest.entries {
        let Some(f) = entry.file() else { continue };
        let most = f
            .list
            .len()
            .saturating_mul(crate::chunk::MAX_RAW_CHUNK as u64);
        if f.size > most {
            errors.insert(format!(
                "size_mismatch: {} ({} bytes recorded, more than its {} chunks can hold)",
                entry.path_lossy(),
                f.size,
                f.list.len()
            ));
        }
    }
    errors
}

fn named(code: String, entry: &Entry) -> String {
    format!("{code} (a chunk of {})", entry.path_lossy())
}

/// The staging jobs of a plan: the db, the registry, the Chroma files to
/// write.
fn jobs<'m>(
    manifest: &'m Manifest,
    plan: &'m RestorePlan,
    folders: &mut MadeFolders,
) -> Result<Vec<Job<'m>>> {
    let t = &plan.targets;
    let mut jobs = Vec::new();
    let file_at = |i: usize| {
        let e = &manifest.entries[i];
        e.file().map(|f| (i, e, f))
    };
    let singles = [
        (Slot::Db, plan.db, &t.db, Some(&plan.db_reusable)),
        (
            Slot::Registry,
            plan.registry,
            &t.registry,
            Some(&plan.registry_reusable),
        ),
    ];
    for (slot, i, target, reusable) in singles {
        if let Some((index, entry, file)) = i.and_then(file_at) {
            let dir = parent_of(target).to_path_buf();
            folders.create(&dir)?;
            jobs.push(Job {
                slot,
                index,
                presumed: false,
                entry,
                file,
                target: target.clone(),
                dir,
                reusable,
            });
        }
    }
    if let Some(cp) = &plan.chroma {
        for &i in &cp.write {
            let Some((index, entry, file)) = file_at(i) else {
                continue;
            };
            let rel = chroma_rel(&entry.path).unwrap_or_default();
            let dir = stage_dir(&cp.root, rel, folders)?;
            jobs.push(Job {
                slot: Slot::Chroma(i),
                index,
                presumed: cp.presumed.contains(&i),
                entry,
                file,
                target: cp.root.join(OsStr::from_bytes(rel)),
                dir,
                reusable: cp.reusable.get(&i),
            });
        }
    }
    Ok(jobs)
}

/// Where a Chroma file is staged: the deepest real folder (no symlink on
/// the way) between the Chroma dir and its target, so that the rename into
/// place stays on one file system and no folder is created in the live
/// tree before validation passes; the Chroma dir's parent while the dir
/// itself does not exist.
fn stage_dir(root: &Path, rel: &[u8], folders: &mut MadeFolders) -> Result<PathBuf> {
    if !fs::metadata(root).is_ok_and(|m| m.is_dir()) {
        let parent = parent_of(root).to_path_buf();
        folders.create(&parent)?;
        return Ok(parent);
    }
    let mut dir = root.to_path_buf();
    let mut folders: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
    folders.pop();
    for name in folders {
        let next = dir.join(OsStr::from_bytes(name));
        if !fs::symlink_metadata(&next).is_ok_and(|m| m.is_dir()) {
            break;
        }
        dir = next;
    }
    Ok(dir)
}

/// The staged file, or None (and it is removed) when it is a Chroma file
/// the plan presumed changed whose every chunk came from the file on disk
/// at its own offset, that file having the snapshot's size: each of its
/// slots hashed to the snapshot's chunk there, so it holds exactly the
/// snapshot's content and is left alone.
fn unless_same(job: &Job<'_>, w: Written) -> Option<Written> {
    let positional = job.reusable.is_some_and(Reusable::is_positional);
    if !(job.presumed && w.all_reused && positional) {
        return Some(w);
    }
    let _ = fs::remove_file(&w.tmp);
    None
}

/// Names every fault of a file that failed to stage (the failure path
/// reads its chunks once more, so the refusal lists them all, as
/// `validate` does).
fn name_faults(
    store: &Store,
    index: &ChunkIndex,
    job: &Job<'_>,
    fault: Fault,
    errors: &mut BTreeSet<String>,
) {
    match fault {
        Fault::Chunk(id, f) => {
            errors.insert(named(f.code(&id), job.entry));
            let faults = chunk_faults(store, index, &[(job.entry, job.file)]);
            let damage = faults
                .chunks
                .into_iter()
                .filter(|(_, f, _)| matches!(f, ChunkFault::Missing | ChunkFault::Corrupt(_)));
            errors.extend(damage.map(|(id, f, e)| named(f.code(&id), e)));
        }
        Fault::Size { written } => {
            errors.insert(format!(
                "size_mismatch: {} ({written} bytes rebuilt, {} recorded)",
                job.entry.path_lossy(),
                job.file.size
            ));
        }
    }
}

/// Writes one file into a new staging file in `dir` for `target`: chunks
/// found in the file being replaced (`how.reusable`) are read from it and
/// re-hashed, the rest come from the store (decoded and re-hashed); then
/// owner, mode and mtime are set and, when durable, the file is fsynced.
/// Outer error: the disk failed; inner: the snapshot is damaged.
pub(super) fn stage_file(
    store: &Store,
    index: &ChunkIndex,
    (entry, file): (&Entry, &FileEntry),
    (target, dir): (&Path, &Path),
    how: Install<'_>,
    counts: &ChunkCounts,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<std::result::Result<Written, Fault>> {
    let owner = wanted_owner(target);
    // Opened before any rename, so it reads the old file throughout.
    let old = how
        .reusable
        .filter(|r| !r.is_empty())
        .and_then(|r| crate::os::open_regular(target).ok().map(|f| (f, r)));
    // Patched in place when it can be (see `patch.rs`).
    let patch_of = old
        .as_ref()
        .and_then(|(f, r)| patchable(f, target, r, how.bulk));
    let output = match (patch_of, how.bulk) {
        (Some(_), _) => Output::Changes,
        (None, true) => Output::WholeBehind,
        (None, false) => Output::Whole,
    };
    let sealer = store.sealer();
    let reused = AtomicU64::new(0);
    let local = |piece: &[Placed], buf: &mut [u8], filled: &mut [bool]| -> u64 {
        let Some((f, reusable)) = old.as_ref() else {
            return 0;
        };
        let n = reuse_runs(f, reusable, sealer, piece, buf, filled);
        reused.fetch_add(n, Ordering::Relaxed);
        if let (true, Some(a), Some(b)) = (how.bulk, piece.first(), piece.last()) {
            // Read once: its pages serve the next reads and writes.
            crate::os::forget_cached(f, &(a.offset..b.offset + b.len as u64));
        }
        n
    };
    let tmp = temp_in(dir);
    let mut guard = TempGuard(&tmp, false);
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .ctx("create the staging copy of", target)?;
    if output != Output::Changes {
        crate::os::preallocate(&f, file.size);
    }
    let source = extract::ChunkSource::LocalFirst(&local);
    let done = match extract::write_file_at(store, index, file, &f, on_bytes, (source, output)) {
        Ok(n) => n,
        Err(ExtractError::Chunk(id, fault)) => return Ok(Err(Fault::Chunk(id, fault))),
        Err(ExtractError::Write(e)) => {
            return Err(Error::io("write the staging copy of", target, e))
        }
        Err(ExtractError::TooLarge { limit }) => {
            return Err(Error::TargetInvalid {
                path: target.to_path_buf(),
                detail: format!("more than {limit} bytes"),
            })
        }
    };
    let (written, chunks) = (done.bytes, done.chunks);
    if written != file.size {
        return Ok(Err(Fault::Size { written }));
    }
    let reused = reused.load(Ordering::Relaxed);
    let old_len = old
        .as_ref()
        .and_then(|(f, _)| f.metadata().ok())
        .map(|m| m.len());
    let all_reused = reused == chunks && old_len == Some(file.size);
    counts.reused.fetch_add(reused, Ordering::Relaxed);
    counts
        .fetched
        .fetch_add(chunks.saturating_sub(reused), Ordering::Relaxed);
    let mut patch = None;
    if let (Some(identity), Some((from, _))) = (patch_of, old.as_ref()) {
        if how.keep_patch || patch::worth_it(&done.spans, file.size) {
            patch = Some(Patch {
                spans: done.spans,
                len: file.size,
                identity,
            });
        } else {
            patch::fill_gaps(from, &f, &done.spans, file.size)
                .ctx("copy the unchanged bytes into the staging copy of", target)?;
        }
    }
    if patch.is_some() {
        // Owner, mode and mtime are the target's to get when it is patched.
        if how.durable {
            f.sync_all().ctx("fsync the staging copy of", target)?;
        }
        guard.1 = true;
        drop(guard);
        return Ok(Ok(Written {
            tmp,
            all_reused,
            patch,
        }));
    }
    if let (Some((uid, gid)), Ok(m)) = (owner, f.metadata()) {
        if (m.uid(), m.gid()) != (uid, gid) {
            // Best effort: only root may give a file away.
            let _ = std::os::unix::fs::fchown(&f, Some(uid), Some(gid));
        }
    }
    f.set_permissions(Permissions::from_mode(entry.mode & 0o7777))
        .ctx("set the mode of the staging copy of", target)?;
    filetime::set_file_handle_times(&f, None, Some(file_time(entry.mtime_ns)))
        .ctx("set the mtime of the staging copy of", target)?;
    if how.durable {
        f.sync_all().ctx("fsync the staging copy of", target)?;
    }
    guard.1 = true;
    drop(guard);
    Ok(Ok(Written {
        tmp,
        all_reused,
        patch: None,
    }))
}

/// Copies into `buf` the chunks of `piece` that the file on disk `old`
/// holds where `reusable` says, each re-hashed (one read per run of chunks
/// that follow each other on disk); marks them in `filled` and returns how
/// many. A chunk whose bytes there changed since the plan is left to the
/// store.
fn reuse_runs(
    old: &File,
    reusable: &Reusable,
    sealer: &crate::store::seal::Sealer,
    piece: &[Placed],
    buf: &mut [u8],
    filled: &mut [bool],
) -> u64 {
    let mut reused = 0;
    let (mut i, mut at) = (0usize, 0usize);
    while i < piece.len() {
        let c = piece[i];
        let Some(disk) = reusable.at(&c.id, c.offset, c.len) else {
            at += c.len as usize;
            i += 1;
            continue;
        };
        let (mut j, mut end) = (i + 1, at + c.len as usize);
        while let Some(next) = piece.get(j) {
            if reusable.at(&next.id, next.offset, next.len) != Some(disk + (end - at) as u64) {
                break;
            }
            end += next.len as usize;
            j += 1;
        }
        if old.read_exact_at(&mut buf[at..end], disk).is_ok() {
            let mut a = at;
            let pieces: Vec<&[u8]> = piece[i..j]
                .iter()
                .map(|c| {
                    a += c.len as usize;
                    &buf[a - c.len as usize..a]
                })
                .collect();
            for (k, id) in (i..j).zip(sealer.chunk_ids(&pieces)) {
                if id == piece[k].id {
                    filled[k] = true;
                    reused += 1;
                }
            }
        }
        (i, at) = (j, end);
    }
    reused
}

/// The staged db's identity when SQLite's `integrity_check` passes on it
/// (a complete file without sidecars), else the problem.
type DbCheck = std::result::Result<FileIdentity, String>;

fn check_db(tmp: &Path) -> DbCheck {
    match sqlite::integrity_problems(tmp, false) {
        Ok(None) => fs::metadata(tmp)
            .map(|m| FileIdentity::of(&m))
            .map_err(|e| format!("db_integrity_check_failed: {e}")),
        Ok(Some(p)) => Err(format!("db_integrity_check_failed: {p}")),
        Err(e) => Err(format!("db_integrity_check_failed: {e}")),
    }
}

/// Why the staged registry is unusable, if it is: not JSON, or larger than
/// a registry may be (read at most [`SMALL_FILE_MAX`] bytes).
fn registry_problem(path: &Path, manifest: &Manifest) -> Option<String> {
    let mut bytes = Vec::new();
    let read = File::open(path).and_then(|f| f.take(SMALL_FILE_MAX + 1).read_to_end(&mut bytes));
    if let Err(e) = read {
        return Some(format!("registry_unreadable: {e}"));
    }
    if bytes.len() as u64 > SMALL_FILE_MAX {
        let size = manifest.registry().map(|r| r.size).unwrap_or_default();
        return Some(format!(
            "registry_too_large: more than {SMALL_FILE_MAX} bytes (recorded size {size})"
        ));
    }
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .err()
        .map(|e| format!("registry_invalid_json: {e}"))
}
