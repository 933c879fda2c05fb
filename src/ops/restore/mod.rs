//! `restore`: puts a snapshot back, into the live runtime (service stopped)
//! or into a folder (`--to DIR`, for drills). This module owns the gate and
//! the order of the steps; `plan.rs` compares disk and snapshot (and holds
//! the check "does this file on disk match that manifest entry" that drill
//! reuses), `stage.rs` validates by writing staging files, `apply.rs`
//! installs them, `patch.rs` patches a Chroma file in place when it
//! mostly holds the snapshot's bytes already, `folders.rs` takes back
//! the folders a refused restore made, `include.rs` is
//! `restore --include`. The SQLite steps
//! live in [`crate::sources::sqlite`], the `/proc` scan for open files in
//! [`crate::os`].
//!
//! The steps, in the order of SPEC §3, each a function below:
//!
//! 0. gate: a live restore needs `--confirm-service-stopped`; it is refused
//!    while another process holds a runtime file open ([`crate::os::open_holders`]);
//! 1. validate, once: [`plan`] compares the files on disk with the snapshot
//!    (content hashes, never mtimes), then [`stage`] rebuilds every file to
//!    write into a staging file beside its target (each chunk decoded and
//!    re-hashed once, or copied from the file on disk when its bytes there
//!    hash to the chunk's id), runs `PRAGMA integrity_check` on the staged
//!    db and parses the staged registry; any fault refuses the restore and
//!    removes the staging, with nothing live touched;
//! 2. [`pre_restore_snapshot`]: a safety snapshot (tag `pre-restore`) of
//!    everything about to be overwritten (it never captures staging files:
//!    see [`crate::sources::chroma::is_restore_temp`]);
//! 3. [`sqlite::checkpoint_wal`]: `PRAGMA wal_checkpoint(TRUNCATE)`, best effort;
//! 4. [`sqlite::remove_sidecars`]: stale `-wal` / `-shm` / `-journal` go, so they
//!    cannot be replayed onto the restored file;
//! 5. [`install`] renames the staged db over the target and fsyncs the folder;
//! 6. the registry likewise;
//! 7. Chroma, INTO the existing directory, which is never removed or
//!    recreated: removals, folders, staged files renamed (or patches
//!    committed and applied), metadata;
//! 8. `PRAGMA integrity_check` on the restored db ([`sqlite::final_integrity`]),
//!    unless it is the very file checked in step 1.
//!
//! Every write is temp + rename or a committed patch, so a restore killed
//! at any point and run again converges on the snapshot (the next restore
//! replays a committed patch before it plans); leftover temp and staging
//! files are named [`TEMP_PREFIX`]`<owner>-…` (pid, host, boot, PID
//! namespace, process token: see [`crate::os`]) and swept by the next
//! restore once their owner is provably gone (never a live restore's of
//! another container). Chroma files are written behind
//! ([`crate::os::WriteBehind`]): a restore does not fill the page cache
//! with gigabytes the service will read from disk anyway.

mod apply;
mod folders;
mod held;
pub mod include;
mod patch;
mod plan;
mod stage;

pub use apply::{apply, install, install_file, sweep_stale_temps, Applied, Install};
pub use folders::MadeFolders;
pub use plan::{
    compare_on_disk, file_matches, plan, plan_chroma, positional, ChromaPlan, OnDisk, Removal,
    RestorePlan, Reusable,
};
pub use stage::{stage, ChunkCounts, FileIdentity, Staged, StagedFile};

use serde::{Deserialize, Serialize};
use std::fs::{self};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::ops::create::{self, CreateOptions};
use crate::progress::Progress;
use crate::sources::sqlite;
use crate::stamp::Stamp;
use crate::store::lock::SharedLock;
use crate::store::manifest::{Manifest, CHROMA_PREFIX, DB_PATH, REGISTRY_PATH};
use crate::store::ReadFrom;
use crate::store::Store;

/// Name prefix of restore's temp and staging files beside their targets.
pub const TEMP_PREFIX: &str = crate::sources::chroma::RESTORE_TEMP_PREFIX;
/// The tag of the safety snapshot taken before a live restore.
pub const PRE_RESTORE_TAG: &str = "pre-restore";
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
    /// Chunks read from the store (decoded and re-hashed) to rebuild the
    /// files written.
    #[serde(default)]
    pub chunks_fetched: u64,
    /// Chunks not read from the store because the files on disk already
    /// held them: copied (re-hashed) from the file being replaced, or part
    /// of a file that already matched and was left alone.
    #[serde(default)]
    pub chunks_reused: u64,
    /// What the restore could not do that the operator should know of
    /// (step 3's checkpoint of a live WAL that failed).
    #[serde(default)]
    pub warnings: Vec<String>,
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
    let lock = store.lock_shared_reader("restore", opts.lock_wait)?;
    let manifest = store.read_manifest(&stamp, ReadFrom::Cache)?;
    check_paths(&manifest)?;
    let with_chroma = chroma_wanted(&manifest, opts.chroma)?;
    // Dropped before `install` keeps them, it takes back the folders
    // made so far.
    let mut folders = MadeFolders::default();
    if let Some(dir) = &opts.to {
        prepare_to_dir(dir, &mut folders)?;
    }
    if targets.live {
        refuse_if_in_use(&targets, with_chroma)?;
    }

    // 1. validate, by staging what is to be written. A killed restore's
    // leftovers go first: never restored, never captured.
    progress.phase("plan", None);
    sweep_stale_temps(&targets, with_chroma);
    let index = store.load_index()?;
    let plan = plan(store, &index, &manifest, &targets, with_chroma)?;
    let mut staged = stage(store, &index, &manifest, &plan, &mut folders, progress)?;
    crate::failpoint::hit(|| "restore:after-stage".into());
    crate::failpoint::pause("restore:after-stage");

    // 2. pre-restore safety snapshot
    progress.phase("pre-restore snapshot", None);
    let pre_restore_snapshot =
        pre_restore_snapshot(store, &lock, opts, &targets, with_chroma, progress)?;
    crate::failpoint::hit(|| "restore:after-pre-snapshot".into());
    if targets.live {
        // The snapshot took a while: look again before writing.
        refuse_if_in_use(&targets, with_chroma)?;
    }
    // The last point where a signal stops a restore that changed nothing.
    crate::os::check_interrupted()?;

    // 3. and 4.: the old db's WAL folded in, then stale sidecars removed.
    let mut warnings = Vec::new();
    warnings.extend(fold_live_wal(&targets, pre_restore_snapshot.as_deref())?);
    sqlite::remove_sidecars(&targets.db)?;
    crate::failpoint::hit(|| "restore:after-sidecars".into());

    // 5. to 7.
    let outcome = install(&mut staged, &manifest, &plan, &mut folders, progress)?;

    // 8. integrity of what was restored
    let integrity_error = match staged.db_checked {
        Some(checked) if same_file(&targets.db, checked) => None,
        _ => sqlite::final_integrity(&targets.db),
    };
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
        chunks_fetched: outcome.chunks_fetched,
        chunks_reused: outcome.chunks_reused,
        warnings,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// Step 3, reported: a live db's WAL that could not be folded in goes
/// with step 4, and the transactions it held that the db did not yet have
/// with it (kept only by the pre-restore snapshot, which reads through
/// the WAL). Nothing to say for `--to` (the target is not live data), for
/// an absent or empty WAL, or when the checkpoint worked. A live db that
/// another connection holds is in use though `/proc` showed no holder (a
/// service in another PID namespace): the restore stops, nothing changed.
fn fold_live_wal(targets: &Targets, pre_restore_snapshot: Option<&str>) -> Result<Option<String>> {
    let wal = sqlite::sidecars(&targets.db).swap_remove(0);
    // Past its 32-byte header a WAL holds frames.
    let holds_frames = fs::symlink_metadata(&wal).is_ok_and(|m| m.is_file() && m.len() > 32);
    let Err(why) = sqlite::checkpoint_wal(&targets.db) else {
        return Ok(None);
    };
    if !targets.live {
        return Ok(None);
    }
    if why.busy {
        return Err(Error::DbHeldUnseen {
            path: targets.db.clone(),
            detail: why.detail,
        });
    }
    if !holds_frames {
        return Ok(None);
    }
    let kept = match pre_restore_snapshot {
        Some(stamp) => format!("are in the pre-restore snapshot {stamp}"),
        None => "are lost (--no-pre-snapshot)".to_string(),
    };
    Ok(Some(format!(
        "the WAL of {} could not be folded into it ({why}) and was removed: the transactions it held that the db did not have yet {kept}",
        targets.db.display()
    )))
}

/// Whether `path` is the file `checked`, unchanged: the staged db that
/// passed `integrity_check` in step 1, renamed into place, needs no second
/// check.
fn same_file(path: &Path, checked: FileIdentity) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| FileIdentity::of(&m) == checked)
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
/// holds a live path, or that lies inside one: by path (symlinks
/// resolved), and by file identity (device and inode), which sees through
/// a bind mount, the way the Chroma dir is usually mounted. An empty live
/// path is not configured and is skipped.
pub fn refuse_live_dir(to: &Path, live: [&Path; 3]) -> Result<()> {
    let dir = resolve(to);
    let written = [
        resolve(&to.join(DB_PATH)),
        resolve(&to.join(REGISTRY_PATH)),
        resolve(&to.join(CHROMA_PREFIX)),
    ];
    let written_ids: Vec<Identity> = written.iter().filter_map(|p| identity(p)).collect();
    let dir_chain = identity_chain(&dir);
    for live in live {
        if live.as_os_str().is_empty() {
            continue;
        }
        let resolved = resolve(live);
        let by_path =
            written.contains(&resolved) || resolved.starts_with(&dir) || dir.starts_with(&resolved);
        let by_identity = identity(&resolved).is_some_and(|id| {
            written_ids.contains(&id)
                || dir_chain.contains(&id)
                || identity(&dir).is_some_and(|d| identity_chain(&resolved).contains(&d))
        });
        if by_path || by_identity {
            return Err(Error::RestoreTargetIsLive {
                to: to.to_path_buf(),
                live: live.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// A file's device and inode: the same through every path and mount.
type Identity = (u64, u64);

fn identity(p: &Path) -> Option<Identity> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// The identities of `p` and of each folder above it that exists.
fn identity_chain(p: &Path) -> Vec<Identity> {
    p.ancestors().filter_map(identity).collect()
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

fn prepare_to_dir(dir: &Path, folders: &mut MadeFolders) -> Result<()> {
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
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => folders.create(dir).map(drop),
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

/// Refuses a manifest whose paths could escape the target
/// ([`path_ok`](crate::store::manifest::path_ok); a decoded manifest was
/// checked already, this guards one built otherwise).
pub fn check_paths(manifest: &Manifest) -> Result<()> {
    for entry in &manifest.entries {
        if !crate::store::manifest::path_ok(&entry.path) {
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

/// The runtime files a live restore would overwrite: the db and its
/// sidecars, the registry, and with Chroma every regular file in its tree.
fn runtime_files(targets: &Targets, with_chroma: bool) -> Vec<PathBuf> {
    let mut files = vec![targets.db.clone(), targets.registry.clone()];
    files.extend(sqlite::sidecars(&targets.db));
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
    match crate::os::open_holders(&files, Some(std::process::id()))
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
    match create::capture(store, lock, &copts, progress) {
        Ok(r) => Ok(Some(r.stamp)),
        Err(e) => Err(Error::PreSnapshotFailed {
            detail: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::manifest::MANIFEST_VERSION;
    use crate::store::manifest::{Entry, EntryKind, FileEntry};

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
                        list: crate::store::manifest::ChunkList::Ids(vec![]),
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

    /// The rule itself is `manifest::path_ok`'s (tested there).
    #[test]
    fn unsafe_manifest_paths_are_refused() {
        let err = check_paths(&manifest_with(&[b"chroma/../etc/passwd"])).unwrap_err();
        assert_eq!(err.code(), "manifest_corrupt");
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
}
