//! `restore`: puts a snapshot back, into the live runtime (service stopped)
//! or into a folder (`--to DIR`, for drills). This module owns the restore
//! steps, the restore plan for the Chroma tree, the "who holds the db open"
//! scan of `/proc`, and the check "does this file on disk match that
//! manifest entry" that drill reuses.
//!
//! The steps, in the order of SPEC §3, each a function below:
//!
//! 0. gate: a live restore needs `--confirm-service-stopped`; it is refused
//!    while another process holds a runtime file open ([`open_holders`]);
//! 1. [`validate_snapshot`]: the snapshot must validate cleanly;
//! 2. [`pre_restore_snapshot`]: a safety snapshot (tag `pre-restore`) of
//!    everything about to be overwritten;
//! 3. [`checkpoint_wal`]: `PRAGMA wal_checkpoint(TRUNCATE)`, best effort;
//! 4. [`remove_sidecars`]: stale `-wal` / `-shm` / `-journal` go, so they
//!    cannot be replayed onto the restored file;
//! 5. [`install_file`] the db: temp file beside the target, fsync, rename,
//!    fsync the folder;
//! 6. the registry likewise;
//! 7. Chroma: [`plan_chroma`] compares the tree on disk with the snapshot
//!    (content hashes, never mtimes), [`apply_chroma`] carries the plan out
//!    INTO the existing directory, which is never removed or recreated;
//! 8. [`final_integrity`]: `PRAGMA integrity_check` on the restored db.
//!
//! Every write is temp + rename, so a restore killed at any point and run
//! again converges on the snapshot; leftover temp files are named
//! [`TEMP_PREFIX`]`<owner>-…` (pid, host, boot, PID namespace, process
//! token: see [`crate::os`]) and swept by the next restore once their
//! owner is provably gone (never a live restore's of another container).

pub mod include;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::chunk;
use crate::error::{Error, IoContext, Result};
use crate::id::Id;
use crate::ops::create::{self, CreateOptions};
use crate::ops::extract::{self, ExtractError};
use crate::ops::verify::{self, ValidateReport};
use crate::progress::Progress;
use crate::sources::sqlite;
use crate::stamp::Stamp;
use crate::store::index::ChunkIndex;
use crate::store::lock::SharedLock;
use crate::store::manifest::{
    Entry, EntryKind, FileEntry, Manifest, CHROMA_PREFIX, DB_PATH, REGISTRY_PATH,
};
use crate::store::{ChunkFault, Store};

/// Name prefix of restore's temp files beside their targets.
pub const TEMP_PREFIX: &str = ".atosnap-restore-";
/// The tag of the safety snapshot taken before a live restore.
pub const PRE_RESTORE_TAG: &str = "pre-restore";
/// File type bits of `st_mode`, and the symlink type.
const S_IFMT: u32 = 0o170000;
const S_IFLNK: u32 = 0o120000;
/// Bytes per batch when re-hashing a file on disk.
const HASH_BATCH: usize = 8 << 20;

/// Whether to restore the Chroma tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChromaChoice {
    /// When the snapshot has one.
    #[default]
    Auto,
    /// `--chroma`: required; refused when the snapshot has none.
    Yes,
    /// `--no-chroma`: the Chroma dir is left alone.
    No,
}

#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub stamp: String,
    /// The live runtime's paths (used unless `to` is set).
    pub db: PathBuf,
    pub registry: PathBuf,
    pub chroma_dir: PathBuf,
    /// `--to DIR`: restore into DIR/atocore.db, DIR/project-registry.json,
    /// DIR/chroma instead (no confirmation, no pre-restore snapshot).
    pub to: Option<PathBuf>,
    pub confirm_service_stopped: bool,
    /// False with `--no-pre-snapshot`.
    pub pre_snapshot: bool,
    pub chroma: ChromaChoice,
    pub lock_wait: Duration,
}

/// The result of SPEC §3.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RestoreResult {
    pub stamp: String,
    pub pre_restore_snapshot: Option<String>,
    pub target_db: String,
    pub db_restored: bool,
    pub registry_restored: bool,
    pub chroma_restored: bool,
    pub restored_integrity_ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity_error: Option<String>,
    /// Files and symlinks written (new or differing).
    pub chroma_files_written: u64,
    /// Files and symlinks that already matched and were left alone.
    pub chroma_files_unchanged: u64,
    /// Entries removed because the snapshot does not have them (files,
    /// symlinks and folders, each counted).
    pub chroma_files_removed: u64,
    pub duration_ms: u64,
}

/// Where a restore writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets {
    pub db: PathBuf,
    pub registry: PathBuf,
    pub chroma: PathBuf,
    /// True for the live runtime, false for `--to DIR`.
    pub live: bool,
}

impl Targets {
    pub fn of(opts: &RestoreOptions) -> Targets {
        match &opts.to {
            Some(dir) => Targets {
                db: dir.join(DB_PATH),
                registry: dir.join(REGISTRY_PATH),
                chroma: dir.join(CHROMA_PREFIX),
                live: false,
            },
            None => Targets {
                db: opts.db.clone(),
                registry: opts.registry.clone(),
                chroma: opts.chroma_dir.clone(),
                live: true,
            },
        }
    }
}

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
    /// For files to write that exist on disk: their chunks found there.
    pub reusable: BTreeMap<usize, Reusable>,
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

/// Restores snapshot `opts.stamp`. An integrity failure of the restored db
/// is a result with `restored_integrity_ok: false`, not an error.
pub fn restore(
    store: &Store,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreResult> {
    let started = Instant::now();
    check_confirmation(opts)?;
    refuse_live_target(opts)?;
    let stamp = Stamp::parse(&opts.stamp)?;
    let targets = Targets::of(opts);
    let lock = store.lock_shared("restore", opts.lock_wait)?;
    let manifest = store.read_manifest(&stamp)?;
    check_paths(&manifest)?;
    let with_chroma = chroma_wanted(&manifest, opts.chroma)?;
    if let Some(dir) = &opts.to {
        prepare_to_dir(dir)?;
    }
    if targets.live {
        refuse_if_in_use(&targets, with_chroma)?;
    }

    // 1. validate
    progress.phase("validate", None);
    let index = store.load_index()?;
    validate_snapshot(store, &index, &manifest)?;

    // A restore killed earlier left temp files in the Chroma tree: swept
    // now so the safety snapshot does not capture them as Chroma files.
    if with_chroma {
        sweep_stale_temps(&targets.chroma);
    }

    // 2. pre-restore safety snapshot
    progress.phase("pre-restore snapshot", None);
    let pre_restore_snapshot =
        pre_restore_snapshot(store, &lock, opts, &targets, with_chroma, progress)?;
    failpoint(|| "restore:after-pre-snapshot".into());
    if targets.live {
        // The snapshot took a while: look again before writing.
        refuse_if_in_use(&targets, with_chroma)?;
    }
    // The last point where a signal stops a restore that changed nothing.
    crate::os::check_interrupted()?;

    // 3. and 4.: the old db's WAL folded in, then stale sidecars removed.
    checkpoint_wal(&targets.db);
    remove_sidecars(&targets.db)?;
    failpoint(|| "restore:after-sidecars".into());

    let plan = plan(store, &manifest, &targets, with_chroma)?;
    let outcome = apply(store, &index, &manifest, &plan, progress)?;

    // 8. integrity of what was restored
    let integrity_error = final_integrity(&targets.db);
    progress.finish();
    drop(lock);
    Ok(RestoreResult {
        stamp: stamp.to_string(),
        pre_restore_snapshot,
        target_db: targets.db.display().to_string(),
        db_restored: outcome.db_restored,
        registry_restored: outcome.registry_restored,
        chroma_restored: plan.chroma.is_some(),
        restored_integrity_ok: integrity_error.is_none(),
        integrity_error,
        chroma_files_written: outcome.chroma_written,
        chroma_files_unchanged: outcome.chroma_unchanged,
        chroma_files_removed: outcome.chroma_removed,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// The hard gate: a live restore overwrites the service's files, so the
/// operator must say the service is stopped. `--to` needs no confirmation.
pub fn check_confirmation(opts: &RestoreOptions) -> Result<()> {
    if opts.to.is_none() && !opts.confirm_service_stopped {
        return Err(Error::NotConfirmed);
    }
    Ok(())
}

/// `--to` skips every safeguard of a live restore, so it must not name the
/// live runtime under another name: refused when, symlinks resolved, a
/// file it would write is a live one, or the folder holds a live path, or
/// lies inside the live Chroma dir. Empty live paths (a drill) are none.
pub fn refuse_live_target(opts: &RestoreOptions) -> Result<()> {
    match &opts.to {
        Some(to) => refuse_live_dir(to, [&opts.db, &opts.registry, &opts.chroma_dir]),
        None => Ok(()),
    }
}

/// Refuses a `--to` folder whose restored files would be live files, that
/// holds a live path, or that lies inside one (paths resolved through
/// symlinks; an empty live path is not configured and is skipped).
pub fn refuse_live_dir(to: &Path, live: [&Path; 3]) -> Result<()> {
    let dir = resolve(to);
    let written = [
        resolve(&to.join(DB_PATH)),
        resolve(&to.join(REGISTRY_PATH)),
        resolve(&to.join(CHROMA_PREFIX)),
    ];
    for live in live {
        if live.as_os_str().is_empty() {
            continue;
        }
        let resolved = resolve(live);
        if written.contains(&resolved) || resolved.starts_with(&dir) || dir.starts_with(&resolved) {
            return Err(Error::RestoreTargetIsLive {
                to: to.to_path_buf(),
                live: live.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// `p` made absolute with its symlinks resolved, as far as it exists (the
/// missing rest appended as given).
fn resolve(p: &Path) -> PathBuf {
    let abs = match std::env::current_dir() {
        Ok(cwd) if p.is_relative() => cwd.join(p),
        _ => p.to_path_buf(),
    };
    let mut missing = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(mut found) = fs::canonicalize(cur) {
            found.extend(missing.iter().rev());
            return found;
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                cur = parent;
            }
            _ => return abs,
        }
    }
}

fn prepare_to_dir(dir: &Path) -> Result<()> {
    // DIR/chroma is written as a real folder below DIR, never through a
    // link to somewhere else.
    let chroma = dir.join(CHROMA_PREFIX);
    if fs::symlink_metadata(&chroma).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(Error::TargetInvalid {
            path: chroma,
            detail: "is a symlink: restore --to writes only into real folders below its folder"
                .into(),
        });
    }
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::TargetInvalid {
            path: dir.to_path_buf(),
            detail: "--to must name a folder (it is a file)".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).ctx("create", dir)
        }
        Err(e) => Err(Error::io("stat", dir, e)),
    }
}

/// Whether Chroma is restored, from the flag and the snapshot.
pub fn chroma_wanted(manifest: &Manifest, choice: ChromaChoice) -> Result<bool> {
    match choice {
        ChromaChoice::Auto => Ok(manifest.chroma_included),
        ChromaChoice::No => Ok(false),
        ChromaChoice::Yes if manifest.chroma_included => Ok(true),
        ChromaChoice::Yes => Err(Error::ChromaNotInSnapshot {
            stamp: manifest.stamp.clone(),
        }),
    }
}

/// Refuses a manifest whose paths could escape the target: only the three
/// sources, and below `chroma/` plain relative names (no `.`, `..`, empty
/// component or NUL).
pub fn check_paths(manifest: &Manifest) -> Result<()> {
    for entry in &manifest.entries {
        let p = &entry.path[..];
        let ok = p == DB_PATH.as_bytes()
            || p == REGISTRY_PATH.as_bytes()
            || p == CHROMA_PREFIX.as_bytes()
            || chroma_rel(p).is_some_and(|rel| {
                rel.split(|&b| b == b'/')
                    .all(|c| !c.is_empty() && c != b"." && c != b".." && !c.contains(&0))
            });
        if !ok {
            return Err(Error::ManifestCorrupt {
                stamp: manifest.stamp.clone(),
                detail: format!("unsafe or unexpected path {:?}", entry.path_lossy()),
            });
        }
    }
    Ok(())
}

/// `chroma/<rel>` → `<rel>`.
fn chroma_rel(path: &[u8]) -> Option<&[u8]> {
    path.strip_prefix(CHROMA_PREFIX.as_bytes())?
        .strip_prefix(b"/")
}

/// Test hook: with `ATOSNAP_FAILPOINT=<name>` the process dies at that
/// point without cleaning up (as after a kill -9), so tests can prove that
/// a re-run converges. Points: `restore:after-pre-snapshot`,
/// `restore:after-sidecars`, `restore:before-rename:<snapshot path>`,
/// `restore:chroma-after-remove`.
pub fn failpoint(name: impl FnOnce() -> String) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if let Some(p) = POINT.get_or_init(|| std::env::var("ATOSNAP_FAILPOINT").ok()) {
        if *p == name() {
            eprintln!("atosnap: failpoint {p} reached, dying");
            std::process::exit(137);
        }
    }
}

// ---- 0. is the runtime in use? -------------------------------------------

/// A process holding a runtime file open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub command: String,
    pub path: PathBuf,
}

/// Processes (other than `skip_pid`) with one of `files` open, found by
/// (device, inode) through the `/proc/<pid>/fd` links. Processes whose fds
/// we may not read are skipped. Sorted by pid.
pub fn open_holders(files: &[PathBuf], skip_pid: Option<u32>) -> Vec<Holder> {
    let mut wanted: HashMap<(u64, u64), &PathBuf> = HashMap::new();
    for f in files {
        if let Ok(m) = fs::metadata(f) {
            wanted.insert((m.dev(), m.ino()), f);
        }
    }
    let mut out = Vec::new();
    if wanted.is_empty() {
        return out;
    }
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if Some(pid) == skip_pid {
            continue;
        }
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            // metadata() follows the magic link to the open file itself,
            // even when it was renamed or deleted since.
            let Ok(m) = fs::metadata(fd.path()) else {
                continue;
            };
            if let Some(path) = wanted.get(&(m.dev(), m.ino())) {
                out.push(Holder {
                    pid,
                    command: process_command(pid),
                    path: (*path).clone(),
                });
                break;
            }
        }
    }
    out.sort_by_key(|h| h.pid);
    out
}

fn process_command(pid: u32) -> String {
    let base = Path::new("/proc").join(pid.to_string());
    let cmdline = fs::read(base.join("cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut command = if args.is_empty() {
        fs::read_to_string(base.join("comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown command".into())
    } else {
        args.join(" ")
    };
    if command.len() > 200 {
        let mut cut = 200;
        while !command.is_char_boundary(cut) {
            cut -= 1;
        }
        command.truncate(cut);
        command.push('…');
    }
    command
}

/// The runtime files a live restore would overwrite: the db and its
/// sidecars, the registry, and with Chroma every regular file in its tree.
fn runtime_files(targets: &Targets, with_chroma: bool) -> Vec<PathBuf> {
    let mut files = vec![targets.db.clone(), targets.registry.clone()];
    files.extend(sidecars(&targets.db));
    if with_chroma {
        for e in walkdir::WalkDir::new(&targets.chroma)
            .follow_links(false)
            .into_iter()
            .flatten()
        {
            if e.file_type().is_file() {
                files.push(e.into_path());
            }
        }
    }
    files
}

fn refuse_if_in_use(targets: &Targets, with_chroma: bool) -> Result<()> {
    let files = runtime_files(targets, with_chroma);
    match open_holders(&files, Some(std::process::id()))
        .into_iter()
        .next()
    {
        Some(h) => Err(Error::DbInUse {
            path: h.path,
            pid: h.pid,
            command: h.command,
        }),
        None => Ok(()),
    }
}

// ---- 1. validate -----------------------------------------------------------

/// Step 1: the checks of `validate` on this manifest; any error refuses.
pub fn validate_snapshot(store: &Store, index: &ChunkIndex, manifest: &Manifest) -> Result<()> {
    let mut report = ValidateReport {
        stamp: manifest.stamp.clone(),
        exists: true,
        valid: false,
        db_ok: false,
        registry_ok: None,
        chroma_ok: None,
        errors: Vec::new(),
        duration_ms: 0,
    };
    verify::validate_manifest(store, index, manifest, &mut report)?;
    if report.valid {
        Ok(())
    } else {
        Err(Error::ValidationFailed {
            stamp: manifest.stamp.clone(),
            errors: report.errors.join("; "),
        })
    }
}

// ---- 2. pre-restore snapshot -----------------------------------------------

/// Step 2: snapshot what is about to be overwritten, tagged `pre-restore`.
/// None for `--to` and `--no-pre-snapshot`. A failure refuses the restore
/// before anything is written.
pub fn pre_restore_snapshot(
    store: &Store,
    lock: &SharedLock,
    opts: &RestoreOptions,
    targets: &Targets,
    with_chroma: bool,
    progress: &dyn Progress,
) -> Result<Option<String>> {
    if !targets.live || !opts.pre_snapshot {
        return Ok(None);
    }
    let copts = CreateOptions {
        db: targets.db.clone(),
        registry: targets.registry.clone(),
        chroma: with_chroma.then(|| targets.chroma.clone()),
        tags: vec![PRE_RESTORE_TAG.to_string()],
        at: None,
        lock_wait: opts.lock_wait,
        ingestion_lock: None,
    };
    match create::create_locked(store, lock, &copts, progress) {
        Ok(r) => Ok(Some(r.stamp)),
        Err(e) => Err(Error::PreSnapshotFailed {
            detail: e.to_string(),
        }),
    }
}

// ---- 3. and 4. the old db's WAL ---------------------------------------------

fn sidecars(db: &Path) -> Vec<PathBuf> {
    ["-wal", "-shm", "-journal"]
        .iter()
        .map(|s| {
            let mut p = db.as_os_str().to_os_string();
            p.push(s);
            PathBuf::from(p)
        })
        .collect()
}

/// Step 3: folds the live db's WAL into it, best effort (a missing or
/// damaged db is about to be replaced anyway). Returns what went wrong.
pub fn checkpoint_wal(db: &Path) -> Option<String> {
    if !matches!(sqlite::sqlite_page_size_of(db), Ok(Some(_))) {
        return Some("not a SQLite database".into());
    }
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())
    .ok()?;
    let _ = conn.busy_timeout(Duration::from_secs(2));
    let r = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    let closed = conn.close();
    match (r, closed) {
        (Err(e), _) => Some(e.to_string()),
        (_, Err((_, e))) => Some(e.to_string()),
        _ => None,
    }
}

/// Step 4: removes the db's `-wal`, `-shm` and `-journal`: replayed onto
/// the restored file they would corrupt it. Returns those removed.
pub fn remove_sidecars(db: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for p in sidecars(db) {
        match fs::remove_file(&p) {
            Ok(()) => removed.push(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove stale sidecar", &p, e)),
        }
    }
    if !removed.is_empty() {
        if let Some(parent) = db.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(removed)
}

// ---- the plan ---------------------------------------------------------------

/// Computes what the write steps will do. Reads (hashes Chroma files on
/// disk), never writes.
pub fn plan(
    store: &Store,
    manifest: &Manifest,
    targets: &Targets,
    with_chroma: bool,
) -> Result<RestorePlan> {
    let idx = |p: &str| manifest.entries.iter().position(|e| e.path == p.as_bytes());
    let file_idx = |p: &str| idx(p).filter(|&i| manifest.entries[i].file().is_some());
    let chroma = if with_chroma {
        Some(plan_chroma(store, manifest, &targets.chroma)?)
    } else {
        None
    };
    let db = file_idx(DB_PATH);
    // The db is always rebuilt, but from the pages the old one shares with
    // the snapshot where it can (the old WAL was folded in and removed).
    let db_reusable = db
        .and_then(|i| {
            let e = &manifest.entries[i];
            let f = e.file()?;
            compare_on_disk(
                &targets.db,
                &e.path,
                f,
                &store.config().chunking,
                store.sealer(),
            )
            .ok()
        })
        .map(|d| d.reusable)
        .unwrap_or_default();
    Ok(RestorePlan {
        targets: targets.clone(),
        db,
        registry: file_idx(REGISTRY_PATH),
        db_reusable,
        chroma,
    })
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

fn path_of(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// Step 7's plan: walks the tree on disk (symlinks never followed) against
/// the snapshot's Chroma entries.
pub fn plan_chroma(store: &Store, manifest: &Manifest, root: &Path) -> Result<ChromaPlan> {
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

    // Files present on both sides: hashed in parallel.
    let params = &store.config().chunking;
    let sealer = store.sealer();
    let verdicts: Vec<(usize, OnDisk)> = candidates
        .par_iter()
        .map(|(i, path)| {
            let e = &manifest.entries[*i];
            let found = match &e.kind {
                // An unreadable file is simply replaced.
                EntryKind::File(f) => {
                    compare_on_disk(path, &e.path, f, params, sealer).unwrap_or_default()
                }
                _ => OnDisk::default(),
            };
            (*i, found)
        })
        .collect();
    for (i, found) in verdicts {
        if found.matches {
            plan.unchanged.push(i);
        } else {
            plan.write.push(i);
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
        if end > file.chunks.len() || file.chunks[pos..end] != ids[..] {
            mismatch = true;
            return Err(Error::Other("differs".into()));
        }
        pos = end;
        Ok(())
    });
    match streamed {
        Err(_) if mismatch => Ok(false),
        Err(e) => Err(std::io::Error::other(e.to_string())),
        Ok(Err(e)) => Err(e),
        Ok(Ok(total)) => Ok(total == file.size && pos == file.chunks.len()),
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
    let needed: HashSet<&Id> = file.chunks.iter().collect();
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
            if same_order && file.chunks.get(pos) != Some(id) {
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
    out.matches = same_order && pos == file.chunks.len();
    Ok(out)
}

// ---- the write steps ----------------------------------------------------------

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
fn sweep_stale_temps(root: &Path) {
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
        ExtractError::Chunk(id, ChunkFault::Missing) => Error::ChunkMissing { hash: id.to_hex() },
        ExtractError::Chunk(id, ChunkFault::Corrupt(detail)) => Error::ChunkCorrupt {
            hash: id.to_hex(),
            detail,
        },
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
    extract::write_file_with(store, index, file, &mut w, on_bytes, local)
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
    failpoint(|| format!("restore:before-rename:{}", entry.path_lossy()));
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
    failpoint(|| "restore:chroma-after-remove".into());
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

// ---- 8. integrity -----------------------------------------------------------

/// Step 8: `PRAGMA integrity_check` on the restored db; None when ok.
pub fn final_integrity(db: &Path) -> Option<String> {
    match sqlite::integrity_problems(db, false) {
        Ok(problems) => problems,
        Err(e) => Some(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;
    use crate::store::manifest::MANIFEST_VERSION;

    fn manifest_with(paths: &[&[u8]]) -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            stamp: "20260411T120000Z".into(),
            created_at: String::new(),
            tags: vec![],
            hostname: String::new(),
            chroma_included: true,
            capture_errors: vec![],
            entries: paths
                .iter()
                .map(|p| Entry {
                    path: p.to_vec(),
                    kind: EntryKind::File(FileEntry {
                        size: 0,
                        chunks: vec![],
                        sqlite: false,
                        source: None,
                        wal_source: None,
                    }),
                    mode: 0o644,
                    mtime_ns: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn unsafe_manifest_paths_are_refused() {
        for bad in [
            &b"chroma/../etc/passwd"[..],
            b"chroma/a/../../x",
            b"chroma//a",
            b"chroma/./a",
            b"chroma/a/",
            b"/etc/passwd",
            b"other.db",
            b"chroma/a\0b",
            b"chromax",
        ] {
            let err = check_paths(&manifest_with(&[bad])).unwrap_err();
            assert_eq!(err.code(), "manifest_corrupt", "{:?}", bad);
        }
        check_paths(&manifest_with(&[
            b"atocore.db",
            b"project-registry.json",
            b"chroma",
            b"chroma/a/b\xff.bin",
            b"chroma/...",
        ]))
        .unwrap();
    }

    #[test]
    fn confirmation_gates_live_restores_only() {
        let mut opts = RestoreOptions {
            stamp: "20260411T120000Z".into(),
            db: "db".into(),
            registry: "r".into(),
            chroma_dir: "c".into(),
            to: None,
            confirm_service_stopped: false,
            pre_snapshot: true,
            chroma: ChromaChoice::Auto,
            lock_wait: Duration::from_secs(1),
        };
        let err = check_confirmation(&opts).unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().contains("--confirm-service-stopped"));
        opts.to = Some("/tmp/x".into());
        check_confirmation(&opts).unwrap();
        opts.to = None;
        opts.confirm_service_stopped = true;
        check_confirmation(&opts).unwrap();
    }

    #[test]
    fn chroma_choice_follows_the_snapshot() {
        let mut m = manifest_with(&[b"atocore.db"]);
        m.chroma_included = false;
        assert!(!chroma_wanted(&m, ChromaChoice::Auto).unwrap());
        assert_eq!(
            chroma_wanted(&m, ChromaChoice::Yes).unwrap_err().code(),
            "chroma_not_in_snapshot"
        );
        m.chroma_included = true;
        assert!(chroma_wanted(&m, ChromaChoice::Auto).unwrap());
        assert!(!chroma_wanted(&m, ChromaChoice::No).unwrap());
    }

    #[test]
    fn holders_are_found_by_inode_through_proc() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held.db");
        fs::write(&path, b"x").unwrap();
        let other = dir.path().join("not-held");
        fs::write(&other, b"y").unwrap();
        let held = File::open(&path).unwrap();
        // Found under another name too (same inode).
        let alias = dir.path().join("alias.db");
        fs::hard_link(&path, &alias).unwrap();
        let found = open_holders(std::slice::from_ref(&alias), None);
        assert!(
            found.iter().any(|h| h.pid == std::process::id()),
            "{found:?}"
        );
        assert!(open_holders(std::slice::from_ref(&alias), Some(std::process::id())).is_empty());
        assert!(open_holders(&[other], None).is_empty());
        drop(held);
        assert!(open_holders(&[alias], None).is_empty());
    }

    #[test]
    fn stale_sidecars_are_removed_and_missing_ones_are_fine() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        fs::write(&db, b"db").unwrap();
        fs::write(dir.path().join("a.db-wal"), b"w").unwrap();
        fs::write(dir.path().join("a.db-shm"), b"s").unwrap();
        let removed = remove_sidecars(&db).unwrap();
        assert_eq!(removed.len(), 2);
        assert!(db.exists());
        assert!(!dir.path().join("a.db-wal").exists());
        assert!(remove_sidecars(&db).unwrap().is_empty());
        // Not a database: the checkpoint reports it, best effort.
        assert!(checkpoint_wal(&db).is_some());
    }

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
            chunks,
            sqlite: false,
            source: None,
            wal_source: None,
        };
        assert!(file_matches(&path, snap_path, &entry, &params, &sealer).unwrap());
        // Same size, one byte differs, mtime kept: detected.
        let mtime = filetime::FileTime::from_last_modification_time(&fs::metadata(&path).unwrap());
        let mut changed = data.clone();
        changed[12_345] ^= 1;
        fs::write(&path, &changed).unwrap();
        filetime::set_file_mtime(&path, mtime).unwrap();
        assert!(!file_matches(&path, snap_path, &entry, &params, &sealer).unwrap());
        fs::write(&path, &data[..100]).unwrap();
        assert!(!file_matches(&path, snap_path, &entry, &params, &sealer).unwrap());
    }
}
