//! Reaching an entry of the Chroma tree without following a link on the
//! way, for the install step: each folder from the Chroma dir down is
//! opened relative to the one above it (`openat`, `O_NOFOLLOW`), and the
//! entry is then named through the folder held open; a file whose mode
//! and mtime change is held ([`hold`]) and checked to be the file looked
//! at. Both are named through `/proc/self/fd`. A restore runs as
//! root in a tree its service's user can write: a folder swapped for a
//! link after it was checked must not send a removal, a rename or a mode
//! anywhere else.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The Chroma dir, opened once for an install (following a link there:
/// the Chroma dir may be one), from which every entry is reached.
pub(super) struct Tree {
    root: File,
    shown: PathBuf,
}

/// An entry reached from the Chroma dir: the folder holding it, held open,
/// and its name there.
pub(super) struct Reached {
    dir: File,
    name: Option<OsString>,
    /// The entry's path as the operator knows it, for messages.
    pub shown: PathBuf,
}

impl Tree {
    pub fn open(root: &Path) -> Result<Tree> {
        let root_file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(root)
            .ctx("open", root)?;
        Ok(Tree {
            root: root_file,
            shown: root.to_path_buf(),
        })
    }

    /// A path naming the Chroma dir opened (see [`Reached::path`]).
    pub fn root_path(&self) -> PathBuf {
        by_fd(&self.root, None).unwrap_or_else(|| self.shown.clone())
    }

    /// Reaches `rel` (relative, `/`-separated) below the Chroma dir; `rel`
    /// itself too when `whole`. With `make`, each missing folder on the
    /// way is made (and given its parent's owner); without, a missing one
    /// is `None`. A link or anything but a folder on the way refuses
    /// (`target_invalid`).
    pub fn reach(&self, rel: &[u8], whole: bool, make: bool) -> Result<Option<Reached>> {
        let mut steps: Vec<&[u8]> = rel
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        let name = if whole { None } else { steps.pop() };
        let mut dir = self.root.try_clone().ctx("open", &self.shown)?;
        let mut shown = self.shown.clone();
        for step in steps {
            shown.push(OsStr::from_bytes(step));
            match step_into(&dir, step, &shown, make)? {
                Some(next) => dir = next,
                None => return Ok(None),
            }
        }
        if let Some(name) = name {
            shown.push(OsStr::from_bytes(name));
        }
        Ok(Some(Reached {
            dir,
            name: name.map(|n| OsStr::from_bytes(n).to_os_string()),
            shown,
        }))
    }
}

impl Reached {
    /// A path naming the entry inside the folder held, whatever becomes
    /// of the folders above it: `/proc/self/fd/<n>/<name>` (the kernel
    /// resolves the descriptor's link to the folder itself). Without
    /// `/proc`, the plain path, checked a moment before.
    pub fn path(&self) -> PathBuf {
        by_fd(&self.dir, self.name.as_deref()).unwrap_or_else(|| self.shown.clone())
    }

    /// A path naming `name` in the folder that holds the entry.
    pub fn sibling(&self, name: &OsStr) -> PathBuf {
        by_fd(&self.dir, Some(name)).unwrap_or_else(|| match self.shown.parent() {
            Some(p) => p.join(name),
            None => PathBuf::from(name),
        })
    }
}

/// A path kept valid by the descriptor it names (see [`hold`]).
pub(super) struct HeldPath {
    path: PathBuf,
    _file: File,
}

impl AsRef<Path> for HeldPath {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// A path that reaches exactly the file `seen` describes: `path` opened
/// without following a final symlink (but for `follow`) and checked to be
/// that file, then named through `/proc/self/fd`, whose link leads to the
/// file held whatever happens to `path` meanwhile. Without `/proc`, the
/// path itself, checked just before.
pub(super) fn hold(
    path: &Path,
    shown: &Path,
    follow: bool,
    seen: &std::fs::Metadata,
) -> Result<HeldPath> {
    use std::os::unix::fs::MetadataExt;
    let mut flags = libc::O_PATH | libc::O_CLOEXEC;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .ctx("open", shown)?;
    let now = file.metadata().ctx("stat", shown)?;
    if (now.dev(), now.ino()) != (seen.dev(), seen.ino()) || now.file_type() != seen.file_type() {
        return Err(Error::TargetInvalid {
            path: shown.to_path_buf(),
            detail: "was replaced while the restore ran: its mode and mtime were not set (run the restore again)".into(),
        });
    }
    let path = by_fd(&file, None).unwrap_or_else(|| path.to_path_buf());
    Ok(HeldPath { path, _file: file })
}

/// `/proc/self/fd/<n>[/<name>]` for what `held` holds (`name` inside it,
/// for a folder), or None without `/proc`.
fn by_fd(held: &File, name: Option<&OsStr>) -> Option<PathBuf> {
    let path = PathBuf::from(format!("/proc/self/fd/{}", held.as_raw_fd()));
    // The descriptor's own link: there whenever `/proc` is.
    std::fs::symlink_metadata(&path).ok()?;
    Some(match name {
        Some(name) => path.join(name),
        None => path,
    })
}

/// The folder `name` in `dir`, opened without following a link; made
/// when missing and `make` (with `dir`'s owner), else None.
fn step_into(dir: &File, name: &[u8], shown: &Path, make: bool) -> Result<Option<File>> {
    let c = CString::new(name).map_err(|_| not_a_real_dir(shown))?;
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let mut made = false;
    for _ in 0..2 {
        // SAFETY: openat(2) with a valid descriptor and a NUL-terminated
        // name; the descriptor returned is owned by the File made of it.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: `fd` is a fresh descriptor nothing else owns.
            let opened = unsafe { File::from_raw_fd(fd) };
            if made {
                adopt_owner_of(dir, &opened);
            }
            return Ok(Some(opened));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            // A link (O_NOFOLLOW) or a file where a folder must be.
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => return Err(not_a_real_dir(shown)),
            Some(libc::ENOENT) if !make => return Ok(None),
            Some(libc::ENOENT) => {
                // SAFETY: mkdirat(2), as above.
                if unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o777) } == 0 {
                    made = true;
                } else {
                    let err = std::io::Error::last_os_error();
                    // Made meanwhile (a parallel writer of the same
                    // restore): opened, and checked, on the next turn.
                    if err.kind() != std::io::ErrorKind::AlreadyExists {
                        return Err(Error::io("create", shown, err));
                    }
                }
            }
            _ => return Err(Error::io("open", shown, err)),
        }
    }
    Err(not_a_real_dir(shown))
}

/// Best effort: the folder `made` (just made, and held) takes the owner
/// of `parent`, changed through its descriptor (`AT_EMPTY_PATH`), never
/// through a name.
fn adopt_owner_of(parent: &File, made: &File) {
    use std::os::unix::fs::MetadataExt;
    let (Ok(p), Ok(m)) = (parent.metadata(), made.metadata()) else {
        return;
    };
    if (p.uid(), p.gid()) == (m.uid(), m.gid()) {
        return;
    }
    // SAFETY: fchownat(2) on a descriptor this process holds, with an
    // empty NUL-terminated name.
    let _ = unsafe {
        libc::fchownat(
            made.as_raw_fd(),
            c"".as_ptr(),
            p.uid(),
            p.gid(),
            libc::AT_EMPTY_PATH,
        )
    };
}

fn not_a_real_dir(path: &Path) -> Error {
    Error::TargetInvalid {
        path: path.to_path_buf(),
        detail: "is a symlink or not a folder where the restore needs a folder; restore never writes through a link (remove it and run the restore again)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reaching_makes_folders_refuses_links_and_holds_the_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("chroma");
        std::fs::create_dir(&root).unwrap();
        let tree = Tree::open(&root).unwrap();
        assert!(
            tree.reach(b"a/b/file", false, false).unwrap().is_none(),
            "not made"
        );
        assert!(!root.join("a").exists());
        let at = tree.reach(b"a/b/file", false, true).unwrap().unwrap();
        assert!(root.join("a/b").is_dir(), "folders on the way are made");
        assert_eq!(at.shown, root.join("a/b/file"));
        std::fs::write(at.path(), b"x").unwrap();
        assert_eq!(std::fs::read(root.join("a/b/file")).unwrap(), b"x");
        let whole = tree.reach(b"a/c", true, true).unwrap().unwrap();
        assert!(root.join("a/c").is_dir());
        assert!(whole.path().is_dir());

        // The folder held stays the one reached when its path changes.
        std::fs::rename(root.join("a"), tmp.path().join("moved")).unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(outside.join("b")).unwrap();
        std::fs::write(outside.join("b/file"), b"not the restore's").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a")).unwrap();
        std::fs::remove_file(at.path()).unwrap();
        assert!(!tmp.path().join("moved/b/file").exists());
        assert!(
            outside.join("b/file").exists(),
            "nothing removed through the link"
        );

        // A link on the way, or a file, refuses, naming the step.
        let e = tree.reach(b"a/b/file", false, true).err().unwrap();
        assert!(e.to_string().contains("chroma/a"), "{e}");
        std::fs::write(root.join("f"), b"").unwrap();
        assert!(tree.reach(b"f/x", false, true).is_err());
        assert!(tree.reach(b"f", true, false).is_err());
    }
}
