//! The folders a restore makes on its way to its targets (`--to DIR`
//! itself, the db's and the registry's folders, the Chroma dir's parent),
//! and taking them back when the restore is refused before it changed
//! anything: a refused restore leaves the disk as it found it, down to
//! the mtimes of the folders it made them in.

use std::fs;
use std::path::{Path, PathBuf};

use super::apply::file_time;
use crate::error::{IoContext, Result};

/// Folders made by one restore. Dropped while it still holds some (the
/// restore stopped before installing), it removes them again, the deepest
/// first and each only while empty; [`MadeFolders::keep`] is called once
/// the restore starts changing the targets for good.
#[derive(Debug, Default)]
pub struct MadeFolders {
    made: Vec<PathBuf>,
    /// For each folder made in a folder that was there before: that
    /// folder and its mtime before (ns), set back once it is removed.
    parents: Vec<(PathBuf, PathBuf, i64)>,
}

impl MadeFolders {
    /// Makes `dir` and its missing parents, noting each folder this call
    /// made: only those, since another process may make one meanwhile.
    /// Returns how many it made (the last ones of [`MadeFolders::made`]).
    pub fn create(&mut self, dir: &Path) -> Result<usize> {
        let missing: Vec<&Path> = dir
            .ancestors()
            // A relative path's last ancestor is "", the current folder.
            .take_while(|d| !d.as_os_str().is_empty() && fs::symlink_metadata(d).is_err())
            .collect();
        let before = self.made.len();
        let outer = missing.last().and_then(|d| {
            let parent = d.parent()?;
            Some((
                parent,
                crate::sources::mtime_ns(&fs::metadata(parent).ok()?),
            ))
        });
        for d in missing.into_iter().rev() {
            match fs::create_dir(d) {
                Ok(()) => {
                    if let Some((parent, ns)) = outer.filter(|(p, _)| Some(*p) == d.parent()) {
                        self.parents
                            .push((d.to_path_buf(), parent.to_path_buf(), ns));
                    }
                    self.made.push(d.to_path_buf());
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(crate::error::Error::io("create", d, e)),
            }
        }
        // Says what stands there when it is no folder.
        fs::create_dir_all(dir).ctx("create", dir)?;
        Ok(self.made.len() - before)
    }

    /// The folders made so far, in the order they were made.
    pub fn made(&self) -> &[PathBuf] {
        &self.made
    }

    /// The restore goes on to change its targets: the folders stay, each
    /// with its parent's owner (a root restore must not leave the service
    /// a folder it cannot write in).
    pub fn keep(&mut self) {
        for dir in &self.made {
            adopt_parent_owner(dir);
        }
        self.made.clear();
        self.parents.clear();
    }
}

/// Best effort: a folder the restore made gets its parent's owner. Never
/// through a link: a name swapped for one since changes only the link.
fn adopt_parent_owner(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let parent = dir.parent().unwrap_or(Path::new("."));
    if let (Ok(m), Ok(p)) = (fs::symlink_metadata(dir), fs::metadata(parent)) {
        if m.is_dir() && (m.uid(), m.gid()) != (p.uid(), p.gid()) {
            let _ = std::os::unix::fs::lchown(dir, Some(p.uid()), Some(p.gid()));
        }
    }
}

impl Drop for MadeFolders {
    fn drop(&mut self) {
        // `remove_dir` fails on a folder that is not empty: whatever
        // another process put there meanwhile stays, with its folders.
        for d in self.made.iter().rev() {
            let _ = fs::remove_dir(d);
        }
        // Latest first: a second folder made in the same parent noted the
        // mtime the first one gave it.
        for (made, parent, ns) in self.parents.iter().rev() {
            if fs::symlink_metadata(made).is_err() {
                let _ = filetime::set_file_mtime(parent, file_time(*ns));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_folders_go_again_unless_kept_and_never_with_content() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        let old = filetime::FileTime::from_unix_time(1_000_000_000, 5);
        filetime::set_file_mtime(tmp.path(), old).unwrap();
        let mut made = MadeFolders::default();
        assert_eq!(made.create(&deep).unwrap(), 3);
        assert_eq!(made.create(&deep).unwrap(), 0, "made once");
        drop(made);
        assert!(!tmp.path().join("a").exists());
        let mtime =
            filetime::FileTime::from_last_modification_time(&fs::metadata(tmp.path()).unwrap());
        assert_eq!(mtime, old, "the folder it was made in keeps its mtime");

        // A folder that was there stays; one that got a file stays too.
        fs::create_dir(tmp.path().join("a")).unwrap();
        let mut made = MadeFolders::default();
        assert_eq!(made.create(&deep).unwrap(), 2);
        fs::write(tmp.path().join("a/b/other"), b"x").unwrap();
        drop(made);
        assert!(tmp.path().join("a/b/other").exists());
        assert!(!deep.exists());

        let mut made = MadeFolders::default();
        made.create(&tmp.path().join("k/l")).unwrap();
        made.keep();
        drop(made);
        assert!(tmp.path().join("k/l").is_dir());

        // Two folders made in one parent: its mtime before the first.
        let old = filetime::FileTime::from_unix_time(1_000_000_000, 7);
        filetime::set_file_mtime(tmp.path(), old).unwrap();
        let mut made = MadeFolders::default();
        made.create(&tmp.path().join("p/q")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        made.create(&tmp.path().join("r")).unwrap();
        drop(made);
        assert!(!tmp.path().join("p").exists() && !tmp.path().join("r").exists());
        let mtime =
            filetime::FileTime::from_last_modification_time(&fs::metadata(tmp.path()).unwrap());
        assert_eq!(mtime, old);

        // A file in the way is named.
        fs::write(tmp.path().join("f"), b"x").unwrap();
        let err = MadeFolders::default()
            .create(&tmp.path().join("f/g"))
            .unwrap_err();
        assert!(
            err.to_string().contains("f/g") || err.to_string().contains("/f"),
            "{err}"
        );
    }
}
