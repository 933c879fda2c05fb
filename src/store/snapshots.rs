//! Snapshots of a store: listing them, reading and writing their manifest
//! and summary, publishing and deleting them.

use crate::error::{Error, IoContext, Result};
use crate::stamp::Stamp;
use crate::store::manifest::Manifest;

use super::backend::ObjectStat;
use super::lock::{ExclusiveLock, SharedLock};
use super::{Dir, Object, Store, MANIFEST_NAME, METADATA_NAME};

/// What is under `snapshots/`.
#[derive(Clone, Debug, Default)]
pub struct SnapshotListing {
    pub stamps: Vec<Stamp>,
    pub unparseable: Vec<String>,
    /// Remote stores: folders whose manifest is not (yet) written.
    pub incomplete: Vec<IncompleteSnapshot>,
}

/// A snapshot folder on a bucket without its manifest: being written, or
/// left by a writer that died.
#[derive(Clone, Debug)]
pub struct IncompleteSnapshot {
    pub folder: String,
    pub modified: Option<std::time::SystemTime>,
}

/// Where [`Store::read_manifest`] reads a manifest from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// The cache of a remote store when it holds the manifest (a local
    /// store has no cache: the store itself).
    Cache,
    /// The store itself, never the cache: what verify audits.
    Store,
}

impl Store {
    /// Removes a remote snapshot folder that never got its manifest. Only
    /// under the exclusive lock.
    pub fn delete_abandoned_folder(&self, lock: &ExclusiveLock, folder: &str) -> Result<()> {
        lock.still_held()?;
        let dir = Object::SnapshotDir(folder.to_string()).name();
        for f in self
            .backend
            .list_files(&dir)
            .ctx("list", self.object_path(&dir))?
        {
            self.backend
                .delete(&f.name)
                .ctx("delete", self.object_path(&f.name))?;
        }
        Ok(())
    }

    /// Writes a snapshot's summary where none is (repair). Only under the
    /// exclusive lock.
    pub fn write_metadata(
        &self,
        _lock: &ExclusiveLock,
        stamp: &Stamp,
        metadata: &serde_json::Value,
    ) -> Result<()> {
        let name = Object::summary(stamp).name();
        let bytes = serde_json::to_vec_pretty(metadata).map_err(|e| Error::Encode {
            detail: e.to_string(),
        })?;
        let bytes = self.sealer.seal(bytes, METADATA_NAME.as_bytes());
        self.backend
            .write_once(&name, &bytes)
            .ctx("write", self.object_path(&name))
    }

    /// Replaces a snapshot's summary (`atosnap tag`). Only under the
    /// exclusive lock. Atomic (temp + rename locally, one PUT on a bucket).
    /// A remote store's cache keys summaries by the bucket's ETag, so no
    /// host mistakes the new summary for a cached old one.
    pub fn replace_metadata(
        &self,
        lock: &ExclusiveLock,
        stamp: &Stamp,
        metadata: &serde_json::Value,
    ) -> Result<()> {
        lock.still_held()?;
        let name = Object::summary(stamp).name();
        let plain = serde_json::to_vec_pretty(metadata).map_err(|e| Error::Encode {
            detail: e.to_string(),
        })?;
        let bytes = self.sealer.seal(plain, METADATA_NAME.as_bytes());
        self.backend
            .replace(&name, &bytes)
            .ctx("write", self.object_path(&name))?;
        // The listing's tag is the old object's: the next read asks anew.
        if let Ok(mut listed) = self.listed.lock() {
            listed.remove(&name);
        }
        Ok(())
    }

    // ---- snapshots --------------------------------------------------------

    pub fn list_snapshots(&self) -> Result<SnapshotListing> {
        let mut listing = if self.is_remote() {
            self.list_remote_snapshot_folders()?
        } else {
            let names = self
                .backend
                .list_children(Dir::Snapshots.name())
                .ctx("list", self.display_dir(Dir::Snapshots))?;
            let mut listing = SnapshotListing::default();
            for name in names {
                match Stamp::parse(&name) {
                    Ok(stamp) if stamp.to_string() == name => listing.stamps.push(stamp),
                    _ => listing.unparseable.push(name),
                }
            }
            listing
        };
        listing.stamps.sort();
        Ok(listing)
    }

    /// A bucket has no atomic folder rename: a snapshot there is published
    /// summary first, manifest last, and a folder without its manifest is
    /// one still being written (or abandoned by a crash). Such folders are
    /// not snapshots; gc removes them once older than its grace period.
    /// Only a stamp-named folder can be one: any other is unparseable.
    fn list_remote_snapshot_folders(&self) -> Result<SnapshotListing> {
        let files = self
            .backend
            .list_files(Dir::Snapshots.name())
            .ctx("list", self.display_dir(Dir::Snapshots))?;
        let mut listing = SnapshotListing::default();
        let mut folders: std::collections::BTreeMap<String, (bool, Option<std::time::SystemTime>)> =
            Default::default();
        if let Ok(mut listed) = self.listed.lock() {
            listed.clear();
            listed.extend(files.iter().map(|f| (f.name.clone(), ObjectStat::from(f))));
        }
        let prefix = format!("{}/", Dir::Snapshots.name());
        for f in &files {
            let rel = f.name.trim_start_matches(prefix.as_str());
            let Some((folder, file)) = rel.split_once('/') else {
                listing.unparseable.push(rel.to_string());
                continue;
            };
            let slot = folders.entry(folder.to_string()).or_insert((false, None));
            slot.0 |= file == MANIFEST_NAME;
            slot.1 = slot.1.max(f.modified);
        }
        for (folder, (has_manifest, modified)) in folders {
            // Writers only claim stamp-named folders: anything else is
            // someone else's (SPEC §2: listed, never deleted), with or
            // without a manifest in it.
            match Stamp::parse(&folder) {
                Ok(stamp) if stamp.to_string() == folder => {
                    if has_manifest {
                        listing.stamps.push(stamp);
                    } else {
                        listing
                            .incomplete
                            .push(IncompleteSnapshot { folder, modified });
                    }
                }
                _ => listing.unparseable.push(folder),
            }
        }
        Ok(listing)
    }

    pub fn snapshot_exists(&self, stamp: &Stamp) -> Result<bool> {
        let probe = if self.is_remote() {
            Object::manifest(stamp)
        } else {
            Object::snapshot_dir(stamp)
        }
        .name();
        self.backend
            .exists(&probe)
            .ctx("stat", self.object_path(&probe))
    }

    /// Reads `name` through the cache (under `key`) when there is one.
    fn read_through_cache(&self, key: &str, name: &str) -> std::io::Result<Vec<u8>> {
        let Some(cache) = &self.cache else {
            return self.backend.read(name);
        };
        if let Some(bytes) = cache.get(key) {
            return Ok(bytes);
        }
        let bytes = self.backend.read(name)?;
        cache.put(key, &bytes);
        Ok(bytes)
    }

    /// Reads an object that is never rewritten under its name (a drill
    /// record), from the cache of a remote store (keyed by name and size).
    pub fn read_immutable(&self, name: &str, size: u64) -> std::io::Result<Vec<u8>> {
        self.read_through_cache(&format!("{name}.{size}"), name)
    }

    /// The cache key of a snapshot file: its name, size and the bucket's
    /// ETag of it. A snapshot deleted and taken again in the same second
    /// has the same stamp, and often a manifest of the same size: only the
    /// tag tells the new object from the cached old one. A storage that
    /// gives no tag gets no caching of snapshot files (`None`).
    fn snapshot_file_cache_key(&self, name: &str) -> std::io::Result<Option<String>> {
        if self.cache.is_none() {
            return Ok(None);
        }
        let listed = self.listed.lock().ok().and_then(|m| m.get(name).cloned());
        let stat = match listed {
            Some(stat) => stat,
            None => self.backend.stat(name)?,
        };
        Ok(stat.etag.map(|etag| {
            let tag = blake3::hash(etag.as_bytes()).to_hex();
            format!("{name}.{}.{}", stat.size, &tag[..16])
        }))
    }

    /// Reads a snapshot file (manifest or summary), from the cache of a
    /// remote store unless `fresh`.
    fn read_snapshot_file(&self, name: &str, fresh: bool) -> std::io::Result<Vec<u8>> {
        match self.snapshot_file_cache_key(name)? {
            Some(key) if !fresh => self.read_through_cache(&key, name),
            _ => self.backend.read(name),
        }
    }

    /// A snapshot's manifest, read from where `from` says.
    pub fn read_manifest(&self, stamp: &Stamp, from: ReadFrom) -> Result<Manifest> {
        let fresh = from == ReadFrom::Store;
        let name = Object::manifest(stamp).name();
        let listed = self.listed.lock().is_ok_and(|m| m.contains_key(&name));
        if !listed && !self.snapshot_exists(stamp)? {
            return Err(Error::SnapshotMissing {
                stamp: stamp.to_string(),
            });
        }
        let bytes = self
            .read_snapshot_file(&name, fresh)
            .map_err(|e| Error::ManifestCorrupt {
                stamp: stamp.to_string(),
                detail: format!("{}: {e}", self.object_path(&name).display()),
            })?;
        let manifest =
            Manifest::decode(&bytes, &self.sealer).map_err(|detail| Error::ManifestCorrupt {
                stamp: stamp.to_string(),
                detail: format!("{}: {detail}", self.object_path(&name).display()),
            })?;
        // A sealed manifest is authentic but not bound to its folder's name:
        // one moved or copied over another snapshot's is caught here.
        if self.sealer.is_encrypted() && manifest.stamp != stamp.to_string() {
            return Err(Error::ManifestCorrupt {
                stamp: stamp.to_string(),
                detail: format!(
                    "{}: the sealed manifest is snapshot {}'s (moved or swapped)",
                    self.object_path(&name).display(),
                    manifest.stamp
                ),
            });
        }
        Ok(manifest)
    }

    /// The manifest inside `snapshots/<folder>/` for a folder whose name is
    /// not a stamp (`folder` comes from a listing of `snapshots/`). `None`
    /// when there is no manifest there; `Some(Err)` when one is there but
    /// does not read or decode. gc uses it to keep such data live.
    pub fn read_folder_manifest(
        &self,
        folder: &str,
    ) -> Option<std::result::Result<Manifest, String>> {
        if folder.contains('/') || folder == ".." || folder == "." {
            return None;
        }
        let name = Object::Manifest(folder.to_string()).name();
        match self.backend.exists(&name) {
            Ok(true) => {}
            Ok(false) => return None,
            // ENOTDIR: the folder is a plain file.
            Err(e) if e.raw_os_error() == Some(20) => return None,
            Err(e) => return Some(Err(e.to_string())),
        }
        Some(
            self.backend
                .read(&name)
                .map_err(|e| e.to_string())
                .and_then(|bytes| Manifest::decode(&bytes, &self.sealer)),
        )
    }

    /// Whether a snapshot's summary reads and says it validated: false
    /// after a capture error, or once `verify --repair` found files of it
    /// damaged for good. Only such a snapshot vouches for its files'
    /// trees to a later `create` or `copy`.
    pub fn summary_says_validated(&self, stamp: &Stamp) -> bool {
        self.read_metadata(stamp)
            .ok()
            .and_then(|m| m.get("validated").and_then(|v| v.as_bool()))
            == Some(true)
    }

    pub fn read_metadata(&self, stamp: &Stamp) -> Result<serde_json::Value> {
        let name = Object::summary(stamp).name();
        let bytes = self
            .read_snapshot_file(&name, false)
            .ctx("read", self.object_path(&name))?;
        let opened = self
            .sealer
            .open(bytes, METADATA_NAME.as_bytes())
            .map_err(|e| Error::ObjectCorrupt {
                name: name.clone(),
                detail: e,
            })?;
        let meta: serde_json::Value =
            serde_json::from_slice(&opened).map_err(|e| Error::ObjectCorrupt {
                name: name.clone(),
                detail: format!("not JSON: {e}"),
            })?;
        let named = meta.get("stamp").and_then(|v| v.as_str());
        if self.sealer.is_encrypted() && named != Some(stamp.to_string().as_str()) {
            return Err(Error::ObjectCorrupt {
                name,
                detail: format!(
                    "the sealed summary is snapshot {}'s (moved or swapped)",
                    named.unwrap_or("?")
                ),
            });
        }
        Ok(meta)
    }

    /// Publishes a snapshot atomically under `wanted`, or the next free
    /// `-N` stamp of the same second after every snapshot of that second
    /// that stands. The manifest's `stamp` field is set to the stamp
    /// actually used. Returns that stamp. Refused, publishing nothing, like
    /// [`Store::publish_snapshot_as`].
    pub fn publish_snapshot(
        &self,
        lock: &SharedLock,
        wanted: &Stamp,
        manifest: &mut Manifest,
        metadata: &mut serde_json::Value,
    ) -> Result<Stamp> {
        let mut seq = self.first_seq_after_standing(wanted)?;
        loop {
            let stamp = wanted.with_seq(seq);
            if self.publish_snapshot_as(lock, &stamp, manifest, metadata)? {
                return Ok(stamp);
            }
            seq += 1;
        }
    }

    /// The first sequence number for a new snapshot of `wanted`'s second:
    /// after the highest one standing. Stamps order snapshots (retention
    /// keeps "the newest", the files cache takes the newest as the previous
    /// one); taking the free stamp of a forgotten `X` while `X-2` stands
    /// would put the newest snapshot before an older one.
    fn first_seq_after_standing(&self, wanted: &Stamp) -> Result<u32> {
        let standing = self
            .list_snapshots()?
            .stamps
            .iter()
            .filter(|s| s.time() == wanted.time())
            .map(|s| s.seq() + 1)
            .max();
        Ok(standing.map_or(wanted.seq(), |next| next.max(wanted.seq())))
    }

    /// Deletes a snapshot folder. Only under the exclusive lock.
    pub fn delete_snapshot(&self, lock: &ExclusiveLock, stamp: &Stamp) -> Result<()> {
        lock.still_held()?;
        let dir = Object::snapshot_dir(stamp).name();
        if let Ok(mut listed) = self.listed.lock() {
            listed.retain(|name, _| !name.starts_with(&format!("{dir}/")));
        }
        self.backend
            .delete_dir(&dir)
            .ctx("delete", self.object_path(&dir))
    }

    // ---- temp files -------------------------------------------------------

    /// Publishes a snapshot atomically under exactly `stamp` (`copy`: a
    /// snapshot keeps its name from store to store). The manifest's and the
    /// summary's `stamp` are set to it. Unlike [`Store::publish_snapshot`]
    /// it never moves to a `-N` stamp: it returns false, writing nothing,
    /// when `snapshots/<stamp>` exists already.
    ///
    /// Refused, publishing nothing, when `lock` may have lapsed at any time
    /// since it was taken (`store_lock_lost`: a gc may have deleted packs
    /// the snapshot counts on) or a signal asked the process to stop
    /// (`interrupted`). Checked here, right before the write, so that no
    /// caller can forget it.
    pub fn publish_snapshot_as(
        &self,
        lock: &SharedLock,
        stamp: &Stamp,
        manifest: &mut Manifest,
        metadata: &mut serde_json::Value,
    ) -> Result<bool> {
        manifest.stamp = stamp.to_string();
        metadata["stamp"] = serde_json::Value::String(stamp.to_string());
        let encoded = manifest.encode(&self.sealer).map_err(|e| Error::Encode {
            detail: format!("manifest encoding failed: {e}"),
        })?;
        let meta = serde_json::to_vec_pretty(metadata).map_err(|e| Error::Encode {
            detail: e.to_string(),
        })?;
        let meta = self.sealer.seal(meta, METADATA_NAME.as_bytes());
        let dir = Object::snapshot_dir(stamp).name();
        // A bucket may still be uploading the last packs: the lock is
        // judged after they are durable, not before.
        self.packs_durable()?;
        let may_commit = || -> Result<()> {
            crate::os::check_interrupted()?;
            lock.still_held()
        };
        may_commit()?;
        crate::failpoint::hit(|| "snapshot:before-publish".into());
        // Judged again right before the commit (the claim of a bucket's
        // folder takes requests of its own); the typed error is kept, the
        // backend only learns that it must not commit.
        let refused = std::cell::RefCell::new(None);
        let published = self.backend.write_dir_once_checked(
            &dir,
            // Summary first, manifest last: on a bucket the manifest is
            // what makes the folder a snapshot (see list_snapshots).
            &[(METADATA_NAME, meta), (MANIFEST_NAME, encoded)],
            &|| {
                may_commit().map_err(|e| {
                    let io = std::io::Error::other(e.to_string());
                    *refused.borrow_mut() = Some(e);
                    io
                })
            },
        );
        if let Some(e) = refused.into_inner() {
            return Err(e);
        }
        published.ctx("publish snapshot", self.object_path(&dir))
    }
}
