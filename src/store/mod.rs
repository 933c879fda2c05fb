//! The object store: layout, config, packs, the chunk index, snapshots.
//!
//! ```text
//! STORE/config.json                     format version and parameters
//! STORE/keys/repokey.json               encrypted stores: the wrapped master key
//! STORE/objects/<xx>/<pack id>.pack     immutable packs of chunks (format 2:
//!                                       zstd frames of chunks; format 1 read)
//! STORE/snapshots/<stamp>/manifest.bin  + backup-metadata.json
//! STORE/drills/<stamp>--<at>.json       drill outcomes
//! STORE/locks/                          the store lock and its holders
//! STORE/tmp/                            temp files of running writers
//! STORE/quarantine/                     damaged objects moved aside by
//!                                       `verify --repair` (never deleted)
//! ```
//!
//! `Store` is split by concern: `open.rs` (constructors), `packs.rs`,
//! `file_lists.rs` (files' chunk lists: list blobs in packs),
//! `snapshots.rs`, `quarantine.rs`, `tmp.rs`; each adds an `impl Store`.

pub mod audit_log;
pub mod backend;
pub mod cache;
pub mod chunk_index;
mod file_lists;
pub mod follow;
pub mod format;
mod frame_cache;
pub mod index;
#[cfg(test)]
mod index_cache_tests;
pub mod key;
pub mod layout;
pub mod list_stream;
pub mod lists;
pub mod location;
pub mod lock;
pub mod manifest;
pub mod names;
mod open;
pub mod pack;
pub mod pack2;
pub mod packer;
mod packs;
#[cfg(test)]
mod packs_tests;
mod quarantine;
pub mod s3;
pub mod seal;
mod snapshots;
mod tmp;

pub use file_lists::{error_fault, fault_error, FileChunks, StoreBlobs};
pub use layout::PackLayout;
pub use open::{InitOptions, SharedKey};
pub use packs::{Check, ChunkFault};
pub use snapshots::{IncompleteSnapshot, ReadFrom, SnapshotListing};
pub use tmp::CleanedTmp;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{IoContext, Result};
use backend::{Backend, ListEntry};
use cache::ObjectCache;
use format::StoreConfig;
use key::KeyFile;
use location::{RemoteSettings, StoreLocation};
use lock::ExclusiveLock;
use seal::Sealer;

pub use backend::BackendErrorKind;
pub use names::{Dir, Object, CONFIG_NAME, MANIFEST_NAME, METADATA_NAME};
/// gc's grace period on a remote store.
pub const DEFAULT_REMOTE_GC_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

pub struct Store {
    location: StoreLocation,
    remote: RemoteSettings,
    backend: Arc<dyn Backend>,
    /// Remote stores: pack indexes, manifests and summaries fetched once.
    cache: Option<Arc<ObjectCache>>,
    /// `--grace-period`, when given.
    gc_grace: Option<std::time::Duration>,
    /// Remote stores: size and tag of the snapshot files seen by the last
    /// listing, so reading them through the cache needs no stat request.
    listed: std::sync::Mutex<std::collections::HashMap<String, backend::ObjectStat>>,
    /// Readers' caches of decoded frames and pack layouts.
    reads: packs::ReadCaches,
    config: StoreConfig,
    sealer: Sealer,
    /// The key file an encrypted store was opened with.
    key_file: Option<KeyFile>,
}

impl Store {
    /// Where the store is.
    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// The folder of a local store; `None` for a remote one.
    pub fn local_root(&self) -> Option<&Path> {
        match &self.location {
            StoreLocation::Local(root) => Some(root),
            StoreLocation::S3(_) => None,
        }
    }

    pub fn is_remote(&self) -> bool {
        self.location.is_remote()
    }

    /// The remote settings the store was opened with (for a second store
    /// opened alongside, as `copy` does).
    pub fn remote_settings(&self) -> &RemoteSettings {
        &self.remote
    }

    /// Refuses to write to a store of an older format
    /// (`store_format_read_only`, naming the upgrade). Every writer passes
    /// here before it takes the store lock or writes anything (the write
    /// locks, the key file, the policy), so a format-1 store is never
    /// changed, not even by a lock file.
    pub fn check_writable(&self) -> Result<()> {
        if self.config.is_writable() {
            return Ok(());
        }
        Err(crate::error::Error::StoreFormatReadOnly {
            store: self.location_name(),
            found: self.config.format_version,
        })
    }

    /// The store lock, shared: for commands that add to the store
    /// (refused on a read-only format, [`Store::check_writable`]).
    pub fn lock_shared(
        &self,
        command: &str,
        wait: std::time::Duration,
    ) -> Result<lock::SharedLock> {
        self.check_writable()?;
        match &self.location {
            StoreLocation::Local(root) => lock::lock_shared(root, command, wait),
            StoreLocation::S3(_) => lock::object_lock(self.backend_handle(), command, wait, false)
                .map(lock::SharedLock::from_held),
        }
    }

    /// The store lock, shared, for commands that only read (works on a
    /// local store the caller may read but not write).
    pub fn lock_shared_reader(
        &self,
        command: &str,
        wait: std::time::Duration,
    ) -> Result<lock::SharedLock> {
        match &self.location {
            StoreLocation::Local(root) => lock::lock_shared_reader(root, command, wait),
            StoreLocation::S3(_) => self.lock_shared(command, wait),
        }
    }

    /// The store lock, exclusive: for anything that deletes (refused on a
    /// read-only format, [`Store::check_writable`]).
    pub fn lock_exclusive(
        &self,
        command: &str,
        wait: std::time::Duration,
    ) -> Result<ExclusiveLock> {
        self.check_writable()?;
        match &self.location {
            StoreLocation::Local(root) => lock::lock_exclusive(root, command, wait),
            StoreLocation::S3(_) => lock::object_lock(self.backend_handle(), command, wait, true)
                .map(ExclusiveLock::from_held),
        }
    }

    /// gc's grace period: objects modified more recently are never deleted.
    /// Default 1 h on a remote store (lock objects can lapse there), none
    /// on a local one (its OS lock cannot).
    pub fn gc_grace(&self) -> std::time::Duration {
        self.gc_grace.unwrap_or(if self.is_remote() {
            DEFAULT_REMOTE_GC_GRACE
        } else {
            std::time::Duration::ZERO
        })
    }

    /// Overrides the grace period (`--grace-period`).
    pub fn set_gc_grace(&mut self, grace: std::time::Duration) {
        self.gc_grace = Some(grace);
    }

    /// The remote cache, when there is one.
    pub fn cache(&self) -> Option<&ObjectCache> {
        self.cache.as_deref()
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// The backend itself: only the store's own parts touch it.
    pub(in crate::store) fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// A shared handle on the backend (lock heartbeats outlive a borrow).
    pub(crate) fn backend_handle(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    /// Path of an object by its raw name, for the store's own messages.
    pub(in crate::store) fn object_path(&self, name: &str) -> PathBuf {
        self.backend.display_name(name)
    }

    // ---- objects by their typed names --------------------------------------

    /// Path (or URL) of an object, for messages.
    pub fn display(&self, o: &Object) -> PathBuf {
        self.backend.display_name(&o.name())
    }

    /// Path (or URL) of a folder of the store, for messages.
    pub fn display_dir(&self, d: Dir) -> PathBuf {
        self.backend.display_name(d.name())
    }

    /// Where the store is, as its storage names it (a folder, a bucket URL).
    pub fn location_name(&self) -> String {
        self.backend.location()
    }

    /// Whether `o` is there.
    pub fn object_exists(&self, o: &Object) -> std::io::Result<bool> {
        self.backend.exists(&o.name())
    }

    /// The whole of `o`, from the storage (never the cache).
    pub fn read_object(&self, o: &Object) -> std::io::Result<Vec<u8>> {
        self.backend.read(&o.name())
    }

    /// `len` bytes of `o` at `offset`, from the storage.
    pub fn read_object_range(
        &self,
        o: &Object,
        offset: u64,
        len: usize,
    ) -> std::io::Result<Vec<u8>> {
        self.backend.read_range(&o.name(), offset, len)
    }

    /// Streams `o` from its start (verify reads whole packs so).
    pub fn open_object(&self, o: &Object) -> std::io::Result<Box<dyn std::io::Read + Send>> {
        self.backend.open_read(&o.name())
    }

    /// Writes a new object durably; `o` must not exist yet.
    pub fn write_object(&self, o: &Object, bytes: &[u8]) -> Result<()> {
        let name = o.name();
        self.backend
            .write_once(&name, bytes)
            .ctx("write", self.object_path(&name))
    }

    /// Replaces `o` (or creates it) atomically: a reader, or a crash, sees
    /// the old content or the new, never neither.
    pub fn replace_object(&self, o: &Object, bytes: &[u8]) -> Result<()> {
        self.check_writable()?;
        let name = o.name();
        self.backend
            .replace(&name, bytes)
            .ctx("write", self.object_path(&name))
    }

    /// Every file of the store, recursively.
    pub fn list_all(&self) -> Result<Vec<ListEntry>> {
        self.backend
            .list_files("")
            .ctx("list", self.object_path(""))
    }

    /// Every file below folder `d`, recursively (none when it is missing).
    pub fn list_dir(&self, d: Dir) -> std::io::Result<Vec<ListEntry>> {
        self.backend.list_files(d.name())
    }

    /// Waits until the packs handed to the storage are stored: an upload
    /// that failed fails this (and every later delete of the backend too).
    pub fn packs_durable(&self) -> Result<()> {
        self.backend
            .barrier()
            .ctx("upload new packs to", self.display_dir(Dir::Packs))
    }
}
