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
            .take_while(|d| fs::symlink_metadata(d).is_err())
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

    /// The restore goes on to change its targets: the folders stay.
    pub fn keep(&mut self) {
        self.made.clear();
        self.parents.clear();
    }
}

impl Drop for MadeFolders {
    fn drop(&mut self) {
        // `remove_dir` fails on a folder that is not empty: whatever
        // another process put there meanwhile stays, with its folders.
        for d in self.made.iter().rev() {
            let _ = fs::remove_dir(d);
        }
        for (made, parent, ns) in &self.parents {
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
