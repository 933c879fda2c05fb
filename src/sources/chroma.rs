//! Walks the Chroma directory (symlinks recorded, never followed) and
//! classifies what it finds. Reading the files is the capture's job.

use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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

/// The last 8 bytes of a committed restore patch (`ops/restore/patch.rs`):
/// a restore killed while it patched a file leaves one beside it, and the
/// file is half-written until the next restore replays it.
pub const PATCH_MAGIC: &[u8; 8] = b"ATSPATCH";

/// Whether the file at `path` ends like a committed restore patch.
pub fn is_committed_patch(path: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let Some(at) = f.metadata().ok().and_then(|m| m.len().checked_sub(8)) else {
        return false;
    };
    let mut tail = [0u8; 8];
    f.read_exact_at(&mut tail, at).is_ok() && &tail == PATCH_MAGIC
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
    // means the file beside it is half-written (see `PATCH_MAGIC`).
    let mut interrupted: Vec<PathBuf> = Vec::new();
    let walk = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            let temp = e.depth() > 0 && is_restore_temp(e.file_name().as_bytes());
            if temp && e.file_type().is_file() && is_committed_patch(e.path()) {
                interrupted.push(e.path().to_path_buf());
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
    for patch in interrupted {
        let rel = patch.strip_prefix(root).unwrap_or(&patch);
        scan.warnings.push(format!(
            "restore_interrupted: {}: a restore was killed while it patched a file in this folder, \
             which is half-written until that restore is run again (its committed patch is kept)",
            display(rel.as_os_str().as_bytes())
        ));
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // A committed patch is not captured either, but said.
        let mut patch = b"spans".to_vec();
        patch.extend_from_slice(PATCH_MAGIC);
        std::fs::write(root.join("seg/.atosnap-restore-3-h-b-n-t-00.tmp"), patch).unwrap();
        let again = scan(root);
        assert_eq!(again.items.len(), want.len());
        assert_eq!(again.warnings.len(), 1, "{:?}", again.warnings);
        assert!(
            again.warnings[0].starts_with("restore_interrupted: chroma/seg/.atosnap-restore-3"),
            "{:?}",
            again.warnings
        );
    }
}
