//! The store's `tmp/` folder: where writers stage files, and sweeping what
//! dead writers left there.

use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

use super::backend;
use super::lock::ExclusiveLock;
use super::Store;

#[derive(Clone, Copy, Debug, Default)]
pub struct CleanedTmp {
    pub files: u64,
    pub bytes: u64,
}

fn dir_size(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

impl Store {
    pub fn tmp_dir(&self) -> Result<PathBuf> {
        let dir = self.backend.tmp_dir();
        backend::create_private_dir_all(&dir).ctx("create", &dir)?;
        Ok(dir)
    }

    /// A fresh path in `tmp/` for a temp file of this process (`suffix`
    /// says what it holds), named so a later writer can tell a dead
    /// process's leftovers from live work.
    pub fn temp_path(&self, suffix: &str) -> Result<PathBuf> {
        Ok(backend::temp_path_in(&self.tmp_dir()?, suffix))
    }

    // ---- packs and chunks -------------------------------------------------

    /// Removes temp files left by processes that are provably gone (see
    /// [`crate::os`]: of this host, and dead). A temp file of another host
    /// or PID namespace, or of an unknown owner, may be live work: only
    /// with the exclusive lock, when no writer can run, is every such file
    /// a leftover. Even then a file of a running process of this host is
    /// kept: commands that take no store lock (`list`, `ls`, `dump` on a
    /// bucket spool their downloads here) and this process itself. Only
    /// names atosnap gives its temps are ever removed, and a link is
    /// removed, never followed: `tmp/` may be a link to another disk, and
    /// what else lies there is not the store's.
    pub fn clean_tmp(&self, exclusive: Option<&ExclusiveLock>) -> Result<CleanedTmp> {
        let dir = self.tmp_dir()?;
        let mut cleaned = CleanedTmp::default();
        let rd = std::fs::read_dir(&dir).ctx("list", &dir)?;
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !crate::os::is_temp_name(&name) {
                continue;
            }
            let stale = match exclusive {
                Some(_) => !crate::os::temp_owner_alive_here(&name),
                None => crate::os::temp_stale(&name, || crate::os::last_touched(&entry.path())),
            };
            if !stale {
                continue;
            }
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let (size, removed) = if is_dir {
                (dir_size(&path), std::fs::remove_dir_all(&path))
            } else {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                (size, std::fs::remove_file(&path))
            };
            if removed.is_ok() {
                cleaned.files += 1;
                cleaned.bytes += size;
            }
        }
        Ok(cleaned)
    }

    // ---- copy -------------------------------------------------------------
}
