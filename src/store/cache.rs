//! The local cache of a remote store: pack indexes, manifests and snapshot
//! summaries, fetched once. It only saves downloads. Each entry starts
//! with the blake3 hash of its content, so a damaged entry (a bad disk, a
//! crash while writing) is noticed on use, dropped and fetched again;
//! deleting the cache changes no result. Keys are store names whose
//! content never changes under that name (packs are named by their hash;
//! manifests are keyed by stamp and size).

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::backend;

/// Hits, misses and damaged entries of one process (for tests and logs).
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub damaged: AtomicU64,
}

pub struct ObjectCache {
    dir: PathBuf,
    pub stats: CacheStats,
}

const HASH_LEN: usize = 32;

impl ObjectCache {
    pub fn new(dir: PathBuf) -> ObjectCache {
        ObjectCache {
            dir,
            stats: CacheStats::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `key` lives: only below the cache folder. Keys carry object
    /// names a bucket listing supplied, so a key with an empty, `.` or
    /// `..` part (or an absolute one) has no place in the cache.
    fn path(&self, key: &str) -> Option<PathBuf> {
        let plain = |part: &str| !matches!(part, "" | "." | "..");
        key.split('/').all(plain).then(|| self.dir.join(key))
    }

    /// The cached bytes of `key`, when present and intact.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let Some(path) = self.path(key) else {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let Ok(mut bytes) = fs::read(&path) else {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let intact = bytes.len() >= HASH_LEN
            && blake3::hash(&bytes[HASH_LEN..]).as_bytes()[..] == bytes[..HASH_LEN];
        if !intact {
            self.stats.damaged.fetch_add(1, Ordering::Relaxed);
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "cache entry {} is damaged; fetching it again",
                path.display()
            );
            let _ = fs::remove_file(&path);
            return None;
        }
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        bytes.drain(..HASH_LEN);
        Some(bytes)
    }

    /// Stores `bytes` under `key`. Best effort: a cache that cannot be
    /// written (full disk, read-only home) only costs downloads.
    pub fn put(&self, key: &str, bytes: &[u8]) {
        if let Err(e) = self.try_put(key, bytes) {
            tracing::debug!("cache entry {key} not written: {e}");
        }
    }

    fn try_put(&self, key: &str, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.path(key).ok_or_else(|| {
            std::io::Error::new(ErrorKind::InvalidInput, "key leaves the cache folder")
        })?;
        let parent = path.parent().unwrap_or(&self.dir);
        // 0700 folders, 0600 entries: manifests of an unencrypted store
        // name every file of the runtime.
        backend::create_private_dir_all(parent)?;
        // A temp name then rename, so a reader never sees half an entry
        // (and if it did, the hash would catch it).
        let tmp = backend::temp_path_in(parent, "cache");
        let mut f = backend::create_private_file(&tmp)?;
        let written = f
            .write_all(blake3::hash(bytes).as_bytes())
            .and_then(|_| f.write_all(bytes))
            .and_then(|_| fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    /// Drops an entry (its object was deleted from the store).
    pub fn forget(&self, key: &str) {
        if let Some(path) = self.path(key) {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_never_leaves_the_cache_folder() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ObjectCache::new(dir.path().join("cache"));
        for key in [
            "packidx/objects/ab/x.pack/../../../../escaped".to_string(),
            format!("{}/escaped", dir.path().display()),
            "packidx//x".into(),
            "packidx/./x".into(),
        ] {
            cache.put(&key, b"tail");
            assert_eq!(cache.get(&key), None, "{key}");
            cache.forget(&key);
        }
        assert!(!dir.path().join("escaped").exists());
        cache.put("packidx/ab/x", b"tail");
        assert_eq!(cache.get("packidx/ab/x").as_deref(), Some(&b"tail"[..]));
    }

    #[test]
    fn entries_round_trip_and_damage_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ObjectCache::new(dir.path().to_path_buf());
        assert_eq!(cache.get("packidx/ab/x"), None);
        cache.put("packidx/ab/x", b"hello");
        assert_eq!(cache.get("packidx/ab/x").as_deref(), Some(&b"hello"[..]));
        // Flip a byte of the content: the entry is dropped, not returned.
        let path = dir.path().join("packidx/ab/x");
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(cache.get("packidx/ab/x"), None);
        assert!(!path.exists());
        assert_eq!(cache.stats.damaged.load(Ordering::Relaxed), 1);
        // Truncated below the hash.
        fs::write(&path, b"short").unwrap();
        assert_eq!(cache.get("packidx/ab/x"), None);
    }

    #[test]
    fn entries_are_0600_in_0700_folders() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let cache = ObjectCache::new(root.clone());
        cache.put("manifests/snapshots/s/manifest.bin.12", b"names of files");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for d in [
            "",
            "manifests",
            "manifests/snapshots",
            "manifests/snapshots/s",
        ] {
            assert_eq!(mode(&root.join(d)), 0o700, "{d}");
        }
        assert_eq!(
            mode(&root.join("manifests/snapshots/s/manifest.bin.12")),
            0o600
        );
    }
}
