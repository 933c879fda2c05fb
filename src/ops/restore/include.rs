//! `restore STAMP --to DIR --include PATH...`: restores only some paths of
//! a snapshot (a subtree of `chroma/`, the registry, the db) into a folder.
//!
//! Unlike a full restore, only the chunks of the included files are
//! checked: a damaged chunk of another file does not matter, a damaged
//! chunk of an included one refuses the restore before anything is
//! written (exit 3, naming the chunk and the file). Nothing outside the
//! included paths is written or removed. Files are installed with
//! `restore`'s own [`restore::install_file`] (temp + rename, mode, mtime);
//! no write passes through a symlink found under DIR, and DIR must not be
//! where the live runtime files are.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::ops::ls;
use crate::ops::restore::{self, Install};
use crate::stamp::Stamp;
use crate::store::manifest::{
    Entry, EntryKind, FileEntry, Manifest, CHROMA_PREFIX, DB_PATH, REGISTRY_PATH,
};
use crate::store::ReadFrom;
use crate::store::Store;

#[derive(Clone, Debug)]
pub struct IncludeOptions {
    pub stamp: String,
    pub to: PathBuf,
    pub include: Vec<String>,
    /// The live runtime files, which DIR must not hold.
    pub live: [PathBuf; 3],
    pub lock_wait: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IncludeResult {
    pub stamp: String,
    pub to: String,
    pub included: Vec<String>,
    pub db_restored: bool,
    pub registry_restored: bool,
    pub chroma_restored: bool,
    pub files_written: u64,
    pub dirs_created: u64,
    pub symlinks_written: u64,
    pub bytes_written: u64,
    /// `PRAGMA integrity_check` of the restored db (true when the db was
    /// not included).
    pub restored_integrity_ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrity_error: Option<String>,
    pub duration_ms: u64,
}

pub fn restore_paths(store: &Store, opts: &IncludeOptions) -> Result<IncludeResult> {
    let started = Instant::now();
    let stamp = Stamp::parse(&opts.stamp)?;
    let included: Vec<String> = opts
        .include
        .iter()
        .map(|p| {
            ls::normalize(p).ok_or_else(|| {
                Error::Usage(format!("--include {p:?}: name a path of the snapshot"))
            })
        })
        .collect::<Result<_>>()?;
    let _lock = store.lock_shared_reader("restore", opts.lock_wait)?;
    let manifest = store.read_manifest(&stamp, ReadFrom::Cache)?;
    restore::check_paths(&manifest)?;
    let chosen = choose(&manifest, &included)?;
    refuse_below_symlinks(&manifest, &chosen)?;
    prepare_target(&opts.to, &opts.live)?;

    let index = store.load_index()?;
    check_chunks(store, &index, &manifest, &chosen)?;

    let mut r = IncludeResult {
        stamp: stamp.to_string(),
        to: opts.to.display().to_string(),
        included,
        db_restored: false,
        registry_restored: false,
        chroma_restored: false,
        files_written: 0,
        dirs_created: 0,
        symlinks_written: 0,
        bytes_written: 0,
        restored_integrity_ok: true,
        integrity_error: None,
        duration_ms: 0,
    };
    let mut dirs: Vec<(&Entry, PathBuf)> = Vec::new();
    for e in &chosen {
        let target = opts.to.join(OsStr::from_bytes(&e.path));
        ensure_parents(&opts.to, &target)?;
        match &e.kind {
            // Captured through a link: restored as the folder it led to
            // (with no mode or mtime of the link's).
            EntryKind::Symlink { .. } if is_chroma_root(e) => {
                if make_dir(&target)? {
                    r.dirs_created += 1;
                }
            }
            EntryKind::Dir => {
                if make_dir(&target)? {
                    r.dirs_created += 1;
                }
                dirs.push((e, target));
            }
            EntryKind::File(f) => {
                let how = Install {
                    reusable: None,
                    durable: false,
                    bulk: false,
                    keep_patch: false,
                };
                restore::install_file(store, &index, e, f, &target, how, &|_| {})?;
                r.files_written += 1;
                r.bytes_written += f.size;
            }
            EntryKind::Symlink { target: link } => {
                install_symlink(link, &target)?;
                r.symlinks_written += 1;
            }
        }
        r.db_restored |= e.path == DB_PATH.as_bytes();
        r.registry_restored |= e.path == REGISTRY_PATH.as_bytes();
        r.chroma_restored |= e.is_chroma();
    }
    // Folder modes and mtimes last, deepest first: writing inside a folder
    // changes its mtime.
    for (e, target) in dirs.iter().rev() {
        fs::set_permissions(target, fs::Permissions::from_mode(e.mode & 0o7777))
            .ctx("set the mode of", target)?;
        let t = filetime::FileTime::from_unix_time(
            e.mtime_ns.div_euclid(1_000_000_000),
            e.mtime_ns.rem_euclid(1_000_000_000) as u32,
        );
        filetime::set_file_mtime(target, t).ctx("set the mtime of", target)?;
    }
    if r.db_restored {
        r.integrity_error = crate::sources::sqlite::final_integrity(&opts.to.join(DB_PATH));
        r.restored_integrity_ok = r.integrity_error.is_none();
    }
    r.duration_ms = started.elapsed().as_millis() as u64;
    Ok(r)
}

/// The `chroma` entry itself: a folder, or a link to the folder the
/// capture followed.
fn is_chroma_root(e: &Entry) -> bool {
    e.path == CHROMA_PREFIX.as_bytes()
}

/// The entries the included paths select, each once, parents first.
fn choose<'m>(manifest: &'m Manifest, included: &[String]) -> Result<Vec<&'m Entry>> {
    let mut chosen: BTreeSet<usize> = BTreeSet::new();
    for p in included {
        let mut found = false;
        for (i, e) in manifest.entries.iter().enumerate() {
            if ls::selects(p, e) {
                chosen.insert(i);
                found = true;
            }
        }
        if !found {
            return Err(Error::PathNotInSnapshot {
                stamp: manifest.stamp.clone(),
                path: p.clone(),
            });
        }
    }
    let mut out: Vec<&Entry> = chosen.into_iter().map(|i| &manifest.entries[i]).collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// A manifest entry below a symlink entry is corrupt: writing it would go
/// through the link. The Chroma dir itself is exempt, as at decoding
/// ([`Manifest::check_tree`]): captured through a link to the real folder,
/// it is restored as a folder.
fn refuse_below_symlinks(manifest: &Manifest, chosen: &[&Entry]) -> Result<()> {
    let links: Vec<&[u8]> = manifest
        .entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::Symlink { .. }) && !is_chroma_root(e))
        .map(|e| &e.path[..])
        .collect();
    for e in chosen {
        if let Some(link) = links
            .iter()
            .find(|l| e.path.len() > l.len() && e.path.starts_with(l) && e.path[l.len()] == b'/')
        {
            return Err(Error::ManifestCorrupt {
                stamp: manifest.stamp.clone(),
                detail: format!(
                    "entry {:?} lies below the symlink entry {:?}",
                    e.path_lossy(),
                    String::from_utf8_lossy(link)
                ),
            });
        }
    }
    Ok(())
}

/// DIR does not hold the live files, and exists (created when missing:
/// only once it is known not to lie in the live tree).
fn prepare_target(dir: &Path, live: &[PathBuf; 3]) -> Result<()> {
    restore::refuse_live_dir(dir, [&live[0], &live[1], &live[2]])?;
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::TargetInvalid {
                path: dir.to_path_buf(),
                detail: "--to must name a folder".into(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).ctx("create", dir)?
        }
        Err(e) => return Err(Error::io("stat", dir, e)),
    }
    Ok(())
}

/// Reads every chunk of the chosen files (re-hashed); the first fault
/// refuses the restore, naming the chunk and the file.
fn check_chunks(
    store: &Store,
    index: &crate::store::index::ChunkIndex,
    manifest: &Manifest,
    chosen: &[&Entry],
) -> Result<()> {
    let files: Vec<(&Entry, &FileEntry)> = chosen
        .iter()
        .filter_map(|e| Some((*e, e.file()?)))
        .collect();
    let found = super::stage::chunk_faults(store, index, &files);
    let mut faults: Vec<String> = Vec::new();
    for (e, err) in found.lists {
        // A list blob's damage is a fault like a chunk's; a storage
        // failure is the error.
        let (id, fault) = crate::store::error_fault(&err).ok_or(err)?;
        faults.push(format!(
            "{} (the list of {})",
            fault.code(&id),
            e.path_lossy()
        ));
    }
    faults.extend(
        found
            .chunks
            .into_iter()
            .map(|(id, f, e)| format!("{} (a chunk of {})", f.code(&id), e.path_lossy())),
    );
    if faults.is_empty() {
        return Ok(());
    }
    faults.sort();
    faults.dedup();
    Err(Error::ValidationFailed {
        stamp: manifest.stamp.clone(),
        errors: faults.join("; "),
    })
}

/// Creates the folders between DIR and `target`, refusing a symlink on
/// the way (a write must never pass through one).
fn ensure_parents(root: &Path, target: &Path) -> Result<()> {
    let Ok(rel) = target.strip_prefix(root) else {
        return Err(Error::TargetInvalid {
            path: target.to_path_buf(),
            detail: "outside the restore folder".into(),
        });
    };
    let mut at = root.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for c in parts.iter().take(parts.len().saturating_sub(1)) {
        at.push(c);
        make_dir(&at)?;
    }
    Ok(())
}

/// Creates folder `p` (0700 until its mode is set); true when it was
/// made. A symlink or a file there is refused.
fn make_dir(p: &Path) -> Result<bool> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => Ok(false),
        Ok(_) => Err(Error::TargetInvalid {
            path: p.to_path_buf(),
            detail: "a folder of the snapshot is a file or a symlink here: nothing is written through it".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir(p).ctx("create", p)?;
            fs::set_permissions(p, fs::Permissions::from_mode(0o700)).ctx("set the mode of", p)?;
            Ok(true)
        }
        Err(e) => Err(Error::io("stat", p, e)),
    }
}

/// A symlink made beside `target`, renamed over it.
fn install_symlink(link: &[u8], target: &Path) -> Result<()> {
    let parent = target.parent().unwrap_or(Path::new("."));
    // Named for its owner like every restore temp, so a killed run's is
    // swept by the next restore into this folder.
    let tmp = super::apply::temp_in(parent);
    std::os::unix::fs::symlink(OsStr::from_bytes(link), &tmp).ctx("create", &tmp)?;
    fs::rename(&tmp, target).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io("rename into place", target, e)
    })
}
