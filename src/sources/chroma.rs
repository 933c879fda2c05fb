//! Walks the Chroma directory (symlinks recorded, never followed) and
//! classifies what it finds. Reading the files is the capture's job.

use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::sources::restore_patch::{self, Staged};
use crate::sources::sqlite::sqlite_page_size_of;

/// Something found in the Chroma tree. `rel` is relative to the Chroma dir
/// (empty for the dir itself).
pub enum Item {
    Dir {
        rel: Vec<u8>,
        meta: Metadata,
    },
    Symlink {
        rel: Vec<u8>,
        target: Vec<u8>,
        meta: Metadata,
    },
    File {
        rel: Vec<u8>,
        path: PathBuf,
        meta: Metadata,
        sqlite_page: Option<u32>,
    },
}

#[derive(Default)]
pub struct Scan {
    pub items: Vec<Item>,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

const SIDECARS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Name prefix restore reserves for its staging files, which it writes
/// beside their targets inside the Chroma tree: never part of a runtime,
/// so never captured (a pre-restore snapshot runs while they exist).
pub const RESTORE_TEMP_PREFIX: &str = ".atosnap-restore-";

/// Whether a name found in the tree is one restore reserves.
pub fn is_restore_temp(name: &[u8]) -> bool {
    name.starts_with(RESTORE_TEMP_PREFIX.as_bytes())
}

/// The SQLite database a sidecar belongs to, if `path` is named like one.
fn sidecar_base(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.as_bytes();
    SIDECARS.iter().find_map(|s| {
        name.strip_suffix(s.as_bytes())
            .map(|base| path.with_file_name(OsStr::from_bytes(base)))
    })
}

pub fn scan(root: &Path) -> Scan {
    let mut scan = Scan::default();
    let display = |rel: &[u8]| {
        if rel.is_empty() {
            "chroma".to_string()
        } else {
            format!("chroma/{}", String::from_utf8_lossy(rel))
        }
    };
    // Restore's staging files are skipped; a committed patch among them
    // means the file beside it may be half-written (see `restore_patch`).
    let mut interrupted: Vec<(PathBuf, Staged)> = Vec::new();
    let walk = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            let temp = e.depth() > 0 && is_restore_temp(e.file_name().as_bytes());
            if temp && e.file_type().is_file() {
                match restore_patch::inspect(e.path()) {
                    Staged::NotAPatch => {}
                    found => interrupted.push((e.path().to_path_buf(), found)),
                }
            }
            !temp
        });
    for entry in walk {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let at = e
                    .path()
                    .and_then(|p| p.strip_prefix(root).ok())
                    .map(|p| display(p.as_os_str().as_bytes()))
                    .unwrap_or_else(|| "chroma".into());
                scan.errors.push(format!("file_unreadable: {at}: {e}"));
                continue;
            }
        };
        let rel = entry
            .path()
            .strip_prefix(root)
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .unwrap_or_default();
        // The Chroma dir itself may be a symlink to the real folder (walkdir
        // follows a root link): record the folder's mode and mtime, not the
        // link's.
        let meta = if entry.depth() == 0 {
            std::fs::metadata(entry.path()).map_err(|e| e.to_string())
        } else {
            entry.metadata().map_err(|e| e.to_string())
        };
        let meta = match meta {
            Ok(m) => m,
            Err(e) => {
                scan.errors
                    .push(format!("file_unreadable: {}: {e}", display(&rel)));
                continue;
            }
        };
        let ft = if entry.depth() == 0 {
            meta.file_type()
        } else {
            entry.file_type()
        };
        if ft.is_dir() {
            scan.items.push(Item::Dir { rel, meta });
        } else if ft.is_symlink() {
            match std::fs::read_link(entry.path()) {
                Ok(t) => scan.items.push(Item::Symlink {
                    rel,
                    target: t.as_os_str().as_bytes().to_vec(),
                    meta,
                }),
                Err(e) => scan
                    .errors
                    .push(format!("file_unreadable: {}: {e}", display(&rel))),
            }
        } else if ft.is_file() {
            if let Some(base) = sidecar_base(entry.path()) {
                if matches!(sqlite_page_size_of(&base), Ok(Some(_))) {
                    // Captured through the database's backup instead; the
                    // sidecar would desync a restore.
                    continue;
                }
            }
            let sqlite_page = match sqlite_page_size_of(entry.path()) {
                Ok(p) => p,
                Err(e) => {
                    scan.errors
                        .push(format!("file_unreadable: {}: {e}", display(&rel)));
                    continue;
                }
            };
            scan.items.push(Item::File {
                rel,
                path: entry.path().to_path_buf(),
                meta,
                sqlite_page,
            });
        } else {
            scan.warnings.push(format!(
                "special file skipped: {} (not a regular file, folder or symlink)",
                display(&rel)
            ));
        }
    }
    let rel = |p: &Path| {
        let rel = p.strip_prefix(root).unwrap_or(p);
        display(rel.as_os_str().as_bytes())
    };
    for (patch, found) in interrupted {
        let (error, warning) = patch_verdict(&patch, found, &rel);
        scan.errors.extend(error);
        scan.warnings.extend(warning);
    }
    scan
}

/// What a restore staging file that is (or may be) a committed patch
/// says of the snapshot: an error when the file beside it may be
/// half-written (a torn copy, whatever the capture read: SPEC §1, never
/// reported as good), a warning when the patch is left over.
fn patch_verdict(
    patch: &Path,
    found: Staged,
    rel: &dyn Fn(&Path) -> String,
) -> (Option<String>, Option<String>) {
    let file = match found {
        Staged::NotAPatch => return (None, None),
        Staged::Unknown(detail) => {
            return (
                Some(format!(
                    "restore_interrupted: {}: a restore staging file that may be a committed \
                     patch, but {detail}: a file of this folder may be half-written; run a \
                     restore of this tree again",
                    rel(patch)
                )),
                None,
            )
        }
        Staged::Committed(file) => file,
    };
    let target = file.target_beside(patch);
    match std::fs::symlink_metadata(&target) {
        Ok(m) if file.patches(&m) && file.overtaken(&m) => (
            None,
            Some(format!(
                "stale restore patch: {}: the restore that committed it was killed before \
                 it changed {}, which was written since; the next restore of this tree \
                 removes the patch",
                rel(patch),
                rel(&target)
            )),
        ),
        Ok(m) if file.patches(&m) && !file.applied(&m) => (
            Some(format!(
                "restore_interrupted: {}: a restore was killed while it patched this file, \
                 which stays half-written until a restore of this tree is run again (it \
                 finishes the committed patch {}; remove the patch only if the file was \
                 rebuilt since)",
                rel(&target),
                rel(patch)
            )),
            None,
        ),
        Ok(m) if file.patches(&m) => (
            None,
            Some(format!(
                "leftover restore patch: {}: {} is whole (the patch was applied); the next \
                 restore of this tree removes it",
                rel(patch),
                rel(&target)
            )),
        ),
        _ => (
            None,
            Some(format!(
                "stale restore patch: {}: its file was replaced or removed since; the next \
                 restore of this tree removes it",
                rel(patch)
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::restore_patch::Trailer;
    use std::os::unix::fs::{FileExt, MetadataExt};

    #[test]
    fn restore_staging_files_are_never_scanned() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("seg")).unwrap();
        std::fs::write(root.join("seg/data.bin"), b"data").unwrap();
        std::fs::write(root.join("seg/.atosnap-restore-1-h-b-n-t-00.tmp"), b"x").unwrap();
        std::fs::write(root.join(".atosnap-restore-2-h-b-n-t-00.tmp"), b"x").unwrap();
        std::fs::write(root.join(".atosnap-other"), b"kept").unwrap();
        let rels: Vec<Vec<u8>> = scan(root)
            .items
            .iter()
            .map(|i| match i {
                Item::Dir { rel, .. } | Item::Symlink { rel, .. } | Item::File { rel, .. } => {
                    rel.clone()
                }
            })
            .collect();
        let want: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b".atosnap-other".to_vec(),
            b"seg".to_vec(),
            b"seg/data.bin".to_vec(),
        ];
        assert_eq!(rels, want);
        assert!(scan(root).warnings.is_empty());
        // A committed patch is not captured either. Its file may be
        // half-written: an error, so the snapshot is not reported as good.
        let data = std::fs::symlink_metadata(root.join("seg/data.bin")).unwrap();
        // A patch of `target` that leaves it `len` bytes long, at `mtime_ns`.
        let commit_as = |name: &str, target: &[u8], (len, mtime_ns): (u64, i64)| {
            let t = Trailer {
                target: target.to_vec(),
                dev: data.dev(),
                ino: data.ino(),
                len,
                mode: 0o600,
                mtime_ns,
                spans: vec![(0, len.min(4))],
                before: None,
            };
            let mut bytes = b"spans".to_vec();
            bytes.extend(t.encode().unwrap());
            std::fs::write(root.join("seg").join(name), bytes).unwrap();
        };
        let commit = |name: &str, target: &[u8]| commit_as(name, target, (4, 0));
        commit(".atosnap-restore-3-h-b-n-t-00.tmp", b"data.bin");
        let again = scan(root);
        assert_eq!(again.items.len(), want.len());
        assert!(again.warnings.is_empty(), "{:?}", again.warnings);
        assert_eq!(again.errors.len(), 1, "{:?}", again.errors);
        assert!(
            again.errors[0].starts_with("restore_interrupted: chroma/seg/data.bin: ")
                && again.errors[0].contains("chroma/seg/.atosnap-restore-3"),
            "{:?}",
            again.errors
        );
        // One whose file was replaced since (another inode) is stale.
        std::fs::remove_file(root.join("seg/.atosnap-restore-3-h-b-n-t-00.tmp")).unwrap();
        std::fs::write(root.join("seg/other.bin"), b"data").unwrap();
        commit(".atosnap-restore-4-h-b-n-t-00.tmp", b"other.bin");
        let stale = scan(root);
        assert!(stale.errors.is_empty(), "{:?}", stale.errors);
        assert_eq!(stale.warnings.len(), 1, "{:?}", stale.warnings);
        assert!(stale.warnings[0].starts_with("stale restore patch: chroma/seg/.atosnap-restore-4"));
        std::fs::remove_file(root.join("seg/.atosnap-restore-4-h-b-n-t-00.tmp")).unwrap();
        // One whose replay finished (the file has its size and mtime) and
        // was killed before removing it: the file is whole.
        let name = ".atosnap-restore-5-h-b-n-t-00.tmp";
        commit_as(
            name,
            b"data.bin",
            (data.len(), crate::sources::mtime_ns(&data)),
        );
        let applied = scan(root);
        assert!(applied.errors.is_empty(), "{:?}", applied.errors);
        assert!(applied.warnings[0]
            .starts_with("leftover restore patch: chroma/seg/.atosnap-restore-5"));
        // One whose trailer no longer reads: which file it patched is
        // unknown, so the snapshot cannot be called good.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(root.join("seg").join(name))
            .unwrap();
        f.write_all_at(b"X", 5 + 2).unwrap();
        let unknown = scan(root);
        assert_eq!(unknown.errors.len(), 1, "{:?}", unknown.errors);
        assert!(
            unknown.errors[0].starts_with("restore_interrupted: chroma/seg/.atosnap-restore-5")
                && unknown.errors[0].contains("checksum"),
            "{:?}",
            unknown.errors
        );
    }
}
