//! The object store: layout, config, packs, the chunk index, snapshots.
//!
//! ```text
//! STORE/config.json                     format version and parameters
//! STORE/keys/repokey.json               encrypted stores: the wrapped master key
//! STORE/objects/<xx>/<pack id>.pack     immutable packs of chunks
//! STORE/snapshots/<stamp>/manifest.bin  + backup-metadata.json
//! STORE/drills/<stamp>--<at>.json       drill outcomes
//! STORE/locks/                          the store lock and its holders
//! STORE/tmp/                            temp files of running writers
//! STORE/quarantine/                     damaged objects moved aside by
//!                                       `verify --repair` (never deleted)
//! ```

pub mod backend;
pub mod cache;
pub mod drill_log;
pub mod format;
pub mod index;
pub mod key;
pub mod location;
pub mod lock;
pub mod manifest;
pub mod pack;
pub mod packer;
pub mod s3;
pub mod seal;

use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, IoContext, Result};
use crate::id::Id;
use crate::stamp::Stamp;
use crate::store::manifest::Manifest;
use backend::{Backend, LocalBackend};
use cache::ObjectCache;
use format::StoreConfig;
use index::{ChunkIndex, DamagedPack, Location};
use key::{KdfCost, KeyFile, Secrets, UnwrapError, KEY_FILE};
use location::{RemoteSettings, StoreAddress, StoreLocation};
use lock::{ExclusiveLock, SharedLock};
use pack::{PackEntry, PackIndexError, TRAILER_LEN};
use seal::{MasterKey, Sealer};

pub const CONFIG_NAME: &str = "config.json";
pub const MANIFEST_NAME: &str = "manifest.bin";
pub const METADATA_NAME: &str = "backup-metadata.json";
pub const QUARANTINE_DIR: &str = "quarantine";
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
    /// Remote stores: sizes of the snapshot files seen by the last
    /// listing, so reading them needs no stat request per file.
    listed_sizes: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    config: StoreConfig,
    sealer: Sealer,
    /// The key file an encrypted store was opened with.
    key_file: Option<KeyFile>,
}

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

/// Where a pack's chunks and index are.
#[derive(Clone, Debug)]
pub struct PackLayout {
    pub entries: Vec<PackEntry>,
    /// End of the blob area (where the index starts).
    pub blob_end: u64,
}

/// Why a chunk could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkFault {
    Missing,
    Corrupt(String),
}

impl ChunkFault {
    /// The stable error code of SPEC §3 for this chunk.
    pub fn code(&self, id: &Id) -> String {
        match self {
            ChunkFault::Missing => format!("chunk_missing:{id}"),
            ChunkFault::Corrupt(_) => format!("chunk_corrupt:{id}"),
        }
    }
}

/// Reads, checks and unwraps the key file of a `repokey` store.
fn open_repokey(
    backend: &dyn Backend,
    config: &StoreConfig,
    secrets: &Secrets,
) -> Result<(Sealer, KeyFile)> {
    let password = secrets.password()?.ok_or_else(|| Error::PasswordRequired {
        path: backend.location(),
    })?;
    let key_path = backend.display_name(KEY_FILE);
    let corrupt = |detail: String| Error::KeyFileCorrupt {
        path: key_path.display().to_string(),
        detail,
    };
    let bytes = match backend.read(KEY_FILE) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::KeyFileMissing {
                path: key_path.display().to_string(),
            })
        }
        Err(e) => return Err(Error::io("read", &key_path, e)),
    };
    let file = KeyFile::parse(&bytes).map_err(corrupt)?;
    if Some(&file.key_id) != config.encryption.key_id.as_ref() {
        return Err(corrupt(format!(
            "it holds key {} but config.json names key {} (a key file of another store?)",
            file.key_id,
            config.encryption.key_id.as_deref().unwrap_or("?")
        )));
    }
    let master = file.unwrap(&password).map_err(|e| match e {
        UnwrapError::WrongPassword => Error::WrongPassword {
            path: backend.location(),
            key_file: key_path.display().to_string(),
        },
        UnwrapError::Corrupt(detail) => corrupt(detail),
    })?;
    Ok((Sealer::repokey(master), file))
}

/// A connection to a store's storage: the backend, and the cache of a
/// remote store.
type Connection = (Arc<dyn Backend>, Option<Arc<ObjectCache>>);

/// Connects to the storage at `location`: a local folder, or an S3 bucket
/// with its local cache. Nothing is read or written yet.
fn connect(location: &StoreLocation, remote: &RemoteSettings) -> Result<Connection> {
    match location {
        StoreLocation::Local(root) => Ok((Arc::new(LocalBackend::new(root)), None)),
        StoreLocation::S3(loc) => {
            let dir = location::cache_dir(loc, remote);
            let backend = location::remote_backend(loc, remote, dir.join("tmp"))
                .map_err(|e| Error::io("connect to", loc.url(), e))?;
            Ok((
                backend,
                Some(Arc::new(ObjectCache::new(dir.join("objects")))),
            ))
        }
    }
}

impl Store {
    fn assemble(
        location: &StoreLocation,
        remote: &RemoteSettings,
        (backend, cache): Connection,
        config: StoreConfig,
        sealer: Sealer,
        key_file: Option<KeyFile>,
    ) -> Store {
        Store {
            location: location.clone(),
            remote: remote.clone(),
            backend,
            cache,
            gc_grace: None,
            listed_sizes: Default::default(),
            config,
            sealer,
            key_file,
        }
    }

    /// Opens an existing unencrypted local store (an encrypted one is
    /// refused with `password_required`: use [`Store::open_with`]).
    pub fn open(root: &Path) -> Result<Store> {
        Store::open_with(root, &Secrets::none())
    }

    /// [`Store::open_at`] for a local folder.
    pub fn open_with(root: &Path, secrets: &Secrets) -> Result<Store> {
        Store::open_at(&StoreAddress::local(root), secrets)
    }

    /// Whether a store (its `config.json`) exists at `address`.
    pub fn exists_at(address: &StoreAddress) -> Result<bool> {
        let (backend, _) = connect(&address.location, &address.remote)?;
        backend
            .exists(CONFIG_NAME)
            .ctx("stat", backend.display_name(CONFIG_NAME))
    }

    /// Opens an existing store; an encrypted one takes its password from
    /// `secrets` and is refused, before any other work, when the password
    /// is missing (`password_required`) or wrong (`wrong_password`).
    pub fn open_at(address: &StoreAddress, secrets: &Secrets) -> Result<Store> {
        let (location, remote) = (&address.location, &address.remote);
        let (backend, cache) = connect(location, remote)?;
        let config_path = backend.display_name(CONFIG_NAME);
        let bytes = match backend.read(CONFIG_NAME) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::StoreMissing {
                    path: location.display(),
                })
            }
            Err(e) => return Err(Error::io("read", &config_path, e)),
        };
        let config = StoreConfig::parse(&bytes, &config_path.display().to_string())?;
        let (sealer, key_file) = match config.encryption.scheme.as_str() {
            "repokey" => {
                let (sealer, file) = open_repokey(backend.as_ref(), &config, secrets)?;
                (sealer, Some(file))
            }
            scheme => {
                let sealer =
                    Sealer::from_scheme(scheme).ok_or_else(|| Error::StoreConfigInvalid {
                        path: config_path.display().to_string(),
                        detail: format!("unknown encryption scheme {scheme}"),
                    })?;
                (sealer, None)
            }
        };
        Ok(Store::assemble(
            location,
            remote,
            (backend, cache),
            config,
            sealer,
            key_file,
        ))
    }

    /// Creates a new unencrypted local store at `root` (which may exist but
    /// must not hold a store already).
    pub fn init(root: &Path) -> Result<Store> {
        Store::init_with(root, "none", &Secrets::none())
    }

    /// [`Store::init_at`] for a local folder.
    pub fn init_with(root: &Path, scheme: &str, secrets: &Secrets) -> Result<Store> {
        Store::init_at(&StoreAddress::local(root), scheme, secrets)
    }

    /// Creates a new store with encryption `scheme` (`none` or `repokey`;
    /// `repokey` takes its password from `secrets`). In a `repokey` store
    /// the key file is durable before `config.json` appears, so a store
    /// never exists without its key.
    pub fn init_at(address: &StoreAddress, scheme: &str, secrets: &Secrets) -> Result<Store> {
        let (location, remote) = (&address.location, &address.remote);
        let (backend, cache) = connect(location, remote)?;
        let config_path = backend.display_name(CONFIG_NAME);
        if backend.exists(CONFIG_NAME).ctx("stat", &config_path)? {
            return Err(Error::Other(format!(
                "a store already exists at {}",
                location.display()
            )));
        }
        let mut config = StoreConfig::new_default();
        // Everything that can be refused is checked before anything is written.
        let repokey = match scheme {
            "none" => None,
            "repokey" => {
                let password = secrets.password()?.ok_or_else(|| Error::PasswordRequired {
                    path: location.display(),
                })?;
                if password.is_empty() {
                    return Err(Error::Usage(
                        "the password is empty: an encrypted store needs a real password".into(),
                    ));
                }
                let cost = KdfCost::from_env()?;
                let master = MasterKey::generate().map_err(Error::Other)?;
                let file = KeyFile::wrap(&master, &password, cost).map_err(Error::Other)?;
                config.encryption.scheme = "repokey".into();
                config.encryption.key_id = Some(master.key_id());
                Some((master, file))
            }
            other => {
                return Err(Error::Usage(format!(
                    "--encryption {other}: expected none or repokey"
                )))
            }
        };
        if let StoreLocation::Local(root) = location {
            for dir in ["objects", "snapshots", "locks", "tmp"] {
                let p = root.join(dir);
                backend::create_dir_durable(&p).ctx("create", &p)?;
            }
        }
        let json = serde_json::to_vec_pretty(&config).map_err(|e| Error::Other(e.to_string()))?;
        if let Some((_, file)) = &repokey {
            backend
                .replace(KEY_FILE, &file.to_json())
                .ctx("write", backend.display_name(KEY_FILE))?;
        }
        backend
            .write_once(CONFIG_NAME, &json)
            .ctx("write", &config_path)?;
        let (sealer, key_file) = match repokey {
            None => (Sealer::Plain, None),
            Some((master, file)) => (Sealer::repokey(master), Some(file)),
        };
        Ok(Store::assemble(
            location,
            remote,
            (backend, cache),
            config,
            sealer,
            key_file,
        ))
    }

    /// Opens the local store, creating an unencrypted one when none exists.
    pub fn open_or_init(root: &Path) -> Result<Store> {
        Store::open_or_init_with(root, &Secrets::none())
    }

    /// [`Store::open_or_init_at`] for a local folder.
    pub fn open_or_init_with(root: &Path, secrets: &Secrets) -> Result<Store> {
        Store::open_or_init_at(&StoreAddress::local(root), secrets)
    }

    /// [`Store::open_at`], creating an unencrypted store when none exists.
    /// A password given for a store that is not there is refused
    /// (`store_missing`): the operator meant an encrypted store, and a
    /// backup disk that is not mounted must not turn into plaintext backups
    /// on the root file system. Only `init --encryption repokey` makes an
    /// encrypted store.
    pub fn open_or_init_at(address: &StoreAddress, secrets: &Secrets) -> Result<Store> {
        match Store::open_at(address, secrets) {
            Err(Error::StoreMissing { path }) if secrets.is_given() => {
                Err(Error::StoreMissingWithPassword { path })
            }
            Err(Error::StoreMissing { .. }) => {
                match Store::init_at(address, "none", &Secrets::none()) {
                    // Another process created it between our check and init.
                    Err(_) => Store::open_at(address, secrets),
                    other => other,
                }
            }
            other => other,
        }
    }

    /// The same store with fresh storage handles (no open files kept from
    /// earlier work) and the same unlocked key: how a long-running process
    /// (`serve`) keeps an encrypted store open without re-deriving its key
    /// per request, yet never holds deleted packs open after a gc.
    pub fn reopened(&self) -> Store {
        let (backend, cache) = match &self.location {
            StoreLocation::Local(root) => {
                (Arc::new(LocalBackend::new(root)) as Arc<dyn Backend>, None)
            }
            // A remote backend keeps no file of a deleted pack open.
            StoreLocation::S3(_) => (self.backend.clone(), self.cache.clone()),
        };
        Store {
            location: self.location.clone(),
            remote: self.remote.clone(),
            backend,
            cache,
            gc_grace: self.gc_grace,
            listed_sizes: Default::default(),
            config: self.config.clone(),
            sealer: self.sealer.clone(),
            key_file: self.key_file.clone(),
        }
    }

    /// The key file of an encrypted store (public parts only matter: the
    /// master key in it is wrapped).
    pub fn key_file(&self) -> Option<&KeyFile> {
        self.key_file.as_ref()
    }

    /// Re-wraps the master key under `new_password` and replaces the key
    /// file atomically (temp file, fsync, rename, fsync of the folder): a
    /// crash leaves the old password or the new one working, never neither.
    pub fn change_password(&self, new_password: &key::Password) -> Result<KeyFile> {
        let keys = self.sealer.keys().ok_or_else(|| Error::NotEncrypted {
            path: self.location.display(),
        })?;
        if new_password.is_empty() {
            return Err(Error::Usage(
                "the new password is empty: an encrypted store needs a real password".into(),
            ));
        }
        let cost = KdfCost::from_env()?;
        let file = KeyFile::wrap(keys.master(), new_password, cost).map_err(Error::Other)?;
        self.backend
            .replace(KEY_FILE, &file.to_json())
            .ctx("replace", self.object_path(KEY_FILE))?;
        Ok(file)
    }

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

    /// The store lock, shared: for commands that add to the store.
    pub fn lock_shared(
        &self,
        command: &str,
        wait: std::time::Duration,
    ) -> Result<lock::SharedLock> {
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

    /// The store lock, exclusive: for anything that deletes.
    pub fn lock_exclusive(
        &self,
        command: &str,
        wait: std::time::Duration,
    ) -> Result<ExclusiveLock> {
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

    /// Removes a remote snapshot folder that never got its manifest. Only
    /// under the exclusive lock.
    pub fn delete_abandoned_folder(&self, lock: &ExclusiveLock, folder: &str) -> Result<()> {
        lock.still_held()?;
        let dir = format!("snapshots/{folder}");
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

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// A shared handle on the backend (lock heartbeats outlive a borrow).
    pub fn backend_handle(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    /// Path of an object, for messages.
    pub fn object_path(&self, name: &str) -> PathBuf {
        self.backend.display_name(name)
    }

    pub fn tmp_dir(&self) -> Result<PathBuf> {
        let dir = self.backend.tmp_dir();
        backend::create_private_dir_all(&dir).ctx("create", &dir)?;
        Ok(dir)
    }

    // ---- packs and chunks -------------------------------------------------

    /// Names and sizes of every pack file under `objects/`.
    pub fn list_packs(&self) -> Result<Vec<backend::ListEntry>> {
        let list = self
            .backend
            .list_files("objects")
            .ctx("list", self.object_path("objects"))?;
        Ok(list
            .into_iter()
            .filter(|e| e.name.ends_with(".pack"))
            .collect())
    }

    /// Reads a pack's own index from its trailer.
    pub fn read_pack_index(
        &self,
        name: &str,
        size: u64,
    ) -> std::result::Result<Vec<PackEntry>, String> {
        self.read_pack_layout(name, size).map(|l| l.entries)
    }

    /// Reads a pack's trailer and index, checking the index checksum and
    /// that every entry lies in the blob area.
    pub fn read_pack_layout(
        &self,
        name: &str,
        size: u64,
    ) -> std::result::Result<PackLayout, String> {
        let (blob_end, stored, hash) = self.read_pack_trailer(name, size)?;
        let entries = pack::decode_index(stored, &hash, blob_end, |b| {
            self.sealer.open(b, pack::INDEX_AD)
        })
        .map_err(|e| e.to_string())?;
        Ok(PackLayout { entries, blob_end })
    }

    /// Reads what can be read of a damaged pack's index: the checksum is
    /// not required to match and entries pointing outside the blob area
    /// are left out. Only for salvage, where every chunk is checked against
    /// its id before it is kept.
    pub fn read_pack_layout_lenient(
        &self,
        name: &str,
        size: u64,
    ) -> std::result::Result<PackLayout, String> {
        let (blob_end, stored, _) = self.read_pack_trailer(name, size)?;
        let encoded = self.sealer.open(stored, pack::INDEX_AD)?;
        let mut entries = pack::decode_entries(&encoded)?;
        entries.retain(|e| {
            e.offset as u64 >= pack::PACK_MAGIC.len() as u64
                && e.offset as u64 + e.stored_len as u64 <= blob_end
        });
        Ok(PackLayout { entries, blob_end })
    }

    /// (blob area end, stored index bytes, index checksum from the trailer).
    fn read_pack_trailer(
        &self,
        name: &str,
        size: u64,
    ) -> std::result::Result<(u64, Vec<u8>, [u8; 32]), String> {
        if size < TRAILER_LEN as u64 {
            return Err(PackIndexError::TooShort(size).to_string());
        }
        // A pack is named by its hash, so its cached tail never goes stale.
        let key = format!("packidx/{name}");
        if let Some(tail) = self.cache.as_ref().and_then(|c| c.get(&key)) {
            if tail.len() >= TRAILER_LEN {
                let (stored, trailer) = tail.split_at(tail.len() - TRAILER_LEN);
                if let Ok((blob_end, len, hash)) = pack::parse_trailer(size, trailer) {
                    if len == stored.len() {
                        return Ok((blob_end, stored.to_vec(), hash));
                    }
                }
            }
        }
        let trailer = self
            .backend
            .read_range_direct(name, size - TRAILER_LEN as u64, TRAILER_LEN)
            .map_err(|e| format!("unreadable: {e}"))?;
        let (blob_end, len, hash) =
            pack::parse_trailer(size, &trailer).map_err(|e| e.to_string())?;
        let stored = self
            .backend
            .read_range_direct(name, blob_end, len)
            .map_err(|e| format!("unreadable: {e}"))?;
        if let Some(cache) = &self.cache {
            let mut tail = Vec::with_capacity(stored.len() + TRAILER_LEN);
            tail.extend_from_slice(&stored);
            tail.extend_from_slice(&trailer);
            cache.put(&key, &tail);
        }
        Ok((blob_end, stored, hash))
    }

    /// Builds the chunk index from every pack's trailer, in parallel. Packs
    /// whose index cannot be read are listed in `damaged`.
    pub fn load_index(&self) -> Result<ChunkIndex> {
        /// Packs whose indexes are read in parallel at a time: the decoded
        /// entries of only this many packs are in memory besides the map.
        const PACKS_PER_ROUND: usize = 8;
        let packs = self.list_packs()?;
        let mut index = ChunkIndex::new();
        for round in packs.chunks(PACKS_PER_ROUND) {
            let loaded: Vec<_> = round
                .par_iter()
                .map(|p| (p, self.read_pack_index(&p.name, p.size)))
                .collect();
            for (p, result) in loaded {
                let Some(id) = pack::pack_id_from_name(&p.name) else {
                    index.damaged.push(DamagedPack {
                        name: p.name.clone(),
                        detail: "not a pack name".into(),
                    });
                    continue;
                };
                match result {
                    Ok(entries) => {
                        index.add_pack(id, p.size, &entries);
                    }
                    Err(detail) => index.damaged.push(DamagedPack {
                        name: p.name.clone(),
                        detail,
                    }),
                }
            }
        }
        Ok(index)
    }

    /// Runs `work` while, on a remote store, two helper threads fetch the
    /// packs holding `ids` in the order they are first needed, so that the
    /// readers in `work` find each pack downloaded instead of each waiting
    /// for its own. A local store just runs `work`.
    pub fn with_packs_prefetched<'a, T>(
        &self,
        index: &ChunkIndex,
        ids: impl Iterator<Item = &'a Id>,
        work: impl FnOnce() -> T,
    ) -> T {
        if !self.is_remote() {
            return work();
        }
        let mut seen = std::collections::HashSet::new();
        let names: Vec<String> = ids
            .filter_map(|id| index.get(id))
            .filter(|loc| seen.insert(loc.pack))
            .map(|loc| pack::pack_name(&index.pack(loc.pack).id))
            .collect();
        const PREFETCHERS: usize = 2;
        std::thread::scope(|scope| {
            for first in 0..PREFETCHERS {
                let names = &names;
                scope.spawn(move || {
                    for name in names.iter().skip(first).step_by(PREFETCHERS) {
                        // A failure here is met again, and reported, by
                        // the reader that needs the pack.
                        let _ = self.backend.prefetch(name);
                    }
                });
            }
            work()
        })
    }

    /// Reads, unseals, decompresses and re-hashes one chunk.
    pub fn read_chunk(
        &self,
        index: &ChunkIndex,
        id: &Id,
    ) -> std::result::Result<Vec<u8>, ChunkFault> {
        let loc = index.get(id).ok_or(ChunkFault::Missing)?;
        let name = pack::pack_name(&index.pack(loc.pack).id);
        self.read_chunk_at(&name, id, loc)
    }

    pub fn read_chunk_at(
        &self,
        pack_name: &str,
        id: &Id,
        loc: &Location,
    ) -> std::result::Result<Vec<u8>, ChunkFault> {
        let stored = self
            .backend
            .read_range(pack_name, loc.offset as u64, loc.stored_len() as usize)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ChunkFault::Missing,
                std::io::ErrorKind::UnexpectedEof => {
                    ChunkFault::Corrupt(format!("pack {pack_name} is truncated"))
                }
                _ => ChunkFault::Corrupt(format!("pack {pack_name} unreadable: {e}")),
            })?;
        self.decode_chunk(stored, id, loc.compressed(), loc.raw_len)
    }

    /// Turns a stored chunk back into its raw bytes and checks its id.
    pub fn decode_chunk(
        &self,
        stored: Vec<u8>,
        id: &Id,
        compressed: bool,
        raw_len: u32,
    ) -> std::result::Result<Vec<u8>, ChunkFault> {
        let encoded = self
            .sealer
            .open(stored, &id.0)
            .map_err(ChunkFault::Corrupt)?;
        let raw =
            crate::chunk::decode(encoded, compressed, raw_len).map_err(ChunkFault::Corrupt)?;
        if self.sealer.chunk_id(&raw) != *id {
            return Err(ChunkFault::Corrupt(
                "content does not match its hash".into(),
            ));
        }
        Ok(raw)
    }

    /// Checks a stored chunk against its id without keeping the raw bytes
    /// (verify): no copy of the stored bytes, none of raw chunks.
    pub fn check_chunk(
        &self,
        stored: &[u8],
        id: &Id,
        compressed: bool,
        raw_len: u32,
    ) -> std::result::Result<(), ChunkFault> {
        match &self.sealer {
            Sealer::Plain if !compressed => {
                if stored.len() != raw_len as usize {
                    return Err(ChunkFault::Corrupt(format!(
                        "stored length {} differs from the recorded {raw_len}",
                        stored.len()
                    )));
                }
                if self.sealer.chunk_id(stored) != *id {
                    return Err(ChunkFault::Corrupt(
                        "content does not match its hash".into(),
                    ));
                }
                Ok(())
            }
            _ => self
                .decode_chunk(stored.to_vec(), id, compressed, raw_len)
                .map(|_| ()),
        }
    }

    /// Deletes a pack. Only under the exclusive lock.
    pub fn delete_pack(&self, lock: &ExclusiveLock, id: &Id) -> Result<()> {
        lock.still_held()?;
        let name = pack::pack_name(id);
        self.backend
            .delete(&name)
            .ctx("delete", self.object_path(&name))?;
        if let Some(cache) = &self.cache {
            cache.forget(&format!("packidx/{name}"));
        }
        Ok(())
    }

    // ---- quarantine -------------------------------------------------------

    /// Moves a damaged object (a pack, a snapshot's summary) out of the way
    /// into `quarantine/`, beside a note saying why. Never deletes it.
    /// Returns its new name. Only under the exclusive lock.
    pub fn quarantine_object(
        &self,
        _lock: &ExclusiveLock,
        name: &str,
        reason: &str,
    ) -> Result<String> {
        let flat = name.rsplit('/').next().unwrap_or(name);
        let flat = if name.starts_with("snapshots/") {
            name.trim_start_matches("snapshots/").replace('/', "--")
        } else {
            flat.to_string()
        };
        let (stem, ext) = match flat.rsplit_once('.') {
            Some((stem, ext)) => (stem.to_string(), format!(".{ext}")),
            None => (flat.clone(), String::new()),
        };
        let mut n = 1;
        let dest = loop {
            let candidate = if n == 1 {
                format!("{QUARANTINE_DIR}/{stem}{ext}")
            } else {
                format!("{QUARANTINE_DIR}/{stem}-{n}{ext}")
            };
            let taken = self
                .backend
                .exists(&candidate)
                .ctx("stat", self.object_path(&candidate))?;
            if !taken {
                break candidate;
            }
            n += 1;
        };
        self.backend
            .rename(name, &dest)
            .ctx("move to quarantine", self.object_path(name))?;
        let note = serde_json::json!({
            "object": name,
            "reason": reason,
            "quarantined_at": chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
        let note_name = format!("{dest}.json");
        let bytes = serde_json::to_vec_pretty(&note).map_err(|e| Error::Other(e.to_string()))?;
        // The object is safe already; a missing note loses only the reason.
        let _ = self.backend.write_once(&note_name, &bytes);
        Ok(dest)
    }

    /// Packs in `quarantine/`.
    pub fn list_quarantined_packs(&self) -> Result<Vec<backend::ListEntry>> {
        let list = self
            .backend
            .list_files(QUARANTINE_DIR)
            .ctx("list", self.object_path(QUARANTINE_DIR))?;
        Ok(list
            .into_iter()
            .filter(|e| e.name.ends_with(".pack"))
            .collect())
    }

    /// Every object in `quarantine/` but the notes.
    pub fn quarantined_objects(&self) -> Result<Vec<String>> {
        let list = self
            .backend
            .list_files(QUARANTINE_DIR)
            .ctx("list", self.object_path(QUARANTINE_DIR))?;
        let names: std::collections::HashSet<&str> = list.iter().map(|e| e.name.as_str()).collect();
        // A note is `<object>.json`, beside its object.
        let is_note = |n: &str| {
            n.strip_suffix(".json")
                .is_some_and(|obj| names.contains(obj))
        };
        Ok(list
            .iter()
            .map(|e| e.name.clone())
            .filter(|n| !is_note(n))
            .collect())
    }

    /// Writes a snapshot's summary where none is (repair). Only under the
    /// exclusive lock.
    pub fn write_metadata(
        &self,
        _lock: &ExclusiveLock,
        stamp: &Stamp,
        metadata: &serde_json::Value,
    ) -> Result<()> {
        let name = format!("snapshots/{stamp}/{METADATA_NAME}");
        let bytes = serde_json::to_vec_pretty(metadata).map_err(|e| Error::Other(e.to_string()))?;
        let bytes = self.sealer.seal(bytes, METADATA_NAME.as_bytes());
        self.backend
            .write_once(&name, &bytes)
            .ctx("write", self.object_path(&name))
    }

    /// Replaces a snapshot's summary (`atosnap tag`). Only under the
    /// exclusive lock. Atomic (temp + rename locally, one PUT on a bucket).
    /// The new object is always larger than the old one (JSON whitespace
    /// pads it when needed): a remote store's cache keys summaries by name
    /// and size, so no host can mistake the new summary for a cached old one.
    pub fn replace_metadata(
        &self,
        lock: &ExclusiveLock,
        stamp: &Stamp,
        metadata: &serde_json::Value,
    ) -> Result<()> {
        lock.still_held()?;
        let name = format!("snapshots/{stamp}/{METADATA_NAME}");
        let old_size = self
            .backend
            .size(&name)
            .ctx("stat", self.object_path(&name))?;
        let mut plain =
            serde_json::to_vec_pretty(metadata).map_err(|e| Error::Other(e.to_string()))?;
        let sealed_len = self
            .sealer
            .seal(plain.clone(), METADATA_NAME.as_bytes())
            .len() as u64;
        if sealed_len <= old_size {
            plain.resize(plain.len() + (old_size + 1 - sealed_len) as usize, b'\n');
        }
        let bytes = self.sealer.seal(plain, METADATA_NAME.as_bytes());
        self.backend
            .replace(&name, &bytes)
            .ctx("write", self.object_path(&name))?;
        if let Ok(mut sizes) = self.listed_sizes.lock() {
            sizes.insert(name, bytes.len() as u64);
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
                .list_children("snapshots")
                .ctx("list", self.object_path("snapshots"))?;
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
    fn list_remote_snapshot_folders(&self) -> Result<SnapshotListing> {
        let files = self
            .backend
            .list_files("snapshots")
            .ctx("list", self.object_path("snapshots"))?;
        let mut listing = SnapshotListing::default();
        let mut folders: std::collections::BTreeMap<String, (bool, Option<std::time::SystemTime>)> =
            Default::default();
        if let Ok(mut sizes) = self.listed_sizes.lock() {
            sizes.clear();
            sizes.extend(files.iter().map(|f| (f.name.clone(), f.size)));
        }
        for f in &files {
            let rel = f.name.trim_start_matches("snapshots/");
            let Some((folder, file)) = rel.split_once('/') else {
                listing.unparseable.push(rel.to_string());
                continue;
            };
            let slot = folders.entry(folder.to_string()).or_insert((false, None));
            slot.0 |= file == MANIFEST_NAME;
            slot.1 = slot.1.max(f.modified);
        }
        for (folder, (has_manifest, modified)) in folders {
            if !has_manifest {
                listing
                    .incomplete
                    .push(IncompleteSnapshot { folder, modified });
                continue;
            }
            match Stamp::parse(&folder) {
                Ok(stamp) if stamp.to_string() == folder => listing.stamps.push(stamp),
                _ => listing.unparseable.push(folder),
            }
        }
        Ok(listing)
    }

    pub fn snapshot_exists(&self, stamp: &Stamp) -> Result<bool> {
        let dir = format!("snapshots/{stamp}");
        let probe = if self.is_remote() {
            format!("{dir}/{MANIFEST_NAME}")
        } else {
            dir
        };
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

    /// The cache key of a snapshot file: by stamp and size, so a snapshot
    /// deleted and taken again under the same stamp is never confused.
    fn snapshot_file_cache_key(&self, name: &str) -> std::io::Result<Option<String>> {
        if self.cache.is_none() {
            return Ok(None);
        }
        let listed = self
            .listed_sizes
            .lock()
            .ok()
            .and_then(|m| m.get(name).copied());
        let size = match listed {
            Some(size) => size,
            None => self.backend.size(name)?,
        };
        Ok(Some(format!("{name}.{size}")))
    }

    /// Reads a snapshot file (manifest or summary), from the cache of a
    /// remote store unless `fresh`.
    fn read_snapshot_file(&self, name: &str, fresh: bool) -> std::io::Result<Vec<u8>> {
        match self.snapshot_file_cache_key(name)? {
            Some(key) if !fresh => self.read_through_cache(&key, name),
            _ => self.backend.read(name),
        }
    }

    /// A snapshot's manifest (from the cache of a remote store).
    pub fn read_manifest(&self, stamp: &Stamp) -> Result<Manifest> {
        self.load_manifest(stamp, false)
    }

    /// A snapshot's manifest read from the store itself, never the cache:
    /// what verify audits.
    pub fn read_manifest_fresh(&self, stamp: &Stamp) -> Result<Manifest> {
        self.load_manifest(stamp, true)
    }

    fn load_manifest(&self, stamp: &Stamp, fresh: bool) -> Result<Manifest> {
        let name = format!("snapshots/{stamp}/{MANIFEST_NAME}");
        let listed = self
            .listed_sizes
            .lock()
            .is_ok_and(|m| m.contains_key(&name));
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
        let name = format!("snapshots/{folder}/{MANIFEST_NAME}");
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

    pub fn read_metadata(&self, stamp: &Stamp) -> Result<serde_json::Value> {
        let name = format!("snapshots/{stamp}/{METADATA_NAME}");
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
    /// `-N` stamp of the same second. The manifest's `stamp` field is set to
    /// the stamp actually used. Returns that stamp. Refused, publishing
    /// nothing, like [`Store::publish_snapshot_as`].
    pub fn publish_snapshot(
        &self,
        lock: &SharedLock,
        wanted: &Stamp,
        manifest: &mut Manifest,
        metadata: &mut serde_json::Value,
    ) -> Result<Stamp> {
        let mut seq = wanted.seq();
        loop {
            let stamp = wanted.with_seq(seq);
            if self.publish_snapshot_as(lock, &stamp, manifest, metadata)? {
                return Ok(stamp);
            }
            seq += 1;
        }
    }

    /// Deletes a snapshot folder. Only under the exclusive lock.
    pub fn delete_snapshot(&self, lock: &ExclusiveLock, stamp: &Stamp) -> Result<()> {
        lock.still_held()?;
        let dir = format!("snapshots/{stamp}");
        if let Ok(mut sizes) = self.listed_sizes.lock() {
            sizes.retain(|name, _| !name.starts_with(&format!("{dir}/")));
        }
        self.backend
            .delete_dir(&dir)
            .ctx("delete", self.object_path(&dir))
    }

    // ---- temp files -------------------------------------------------------

    /// Removes temp files left by processes that are provably gone (see
    /// [`crate::os`]: of this host, and dead). A temp file of another host
    /// or PID namespace, or of an unknown owner, may be live work: only
    /// with the exclusive lock, when no writer can run, is every temp file
    /// a leftover.
    pub fn clean_tmp(&self, exclusive: Option<&ExclusiveLock>) -> Result<CleanedTmp> {
        let dir = self.tmp_dir()?;
        let mut cleaned = CleanedTmp::default();
        let rd = std::fs::read_dir(&dir).ctx("list", &dir)?;
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = exclusive.is_some() || crate::os::temp_owner_gone(&name);
            if !stale {
                continue;
            }
            let path = entry.path();
            let size = dir_size(&path);
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if removed.is_ok() {
                cleaned.files += 1;
                cleaned.bytes += size;
            }
        }
        Ok(cleaned)
    }

    // ---- copy -------------------------------------------------------------

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
        let encoded = manifest
            .encode(&self.sealer)
            .map_err(|e| Error::Other(format!("manifest encoding failed: {e}")))?;
        let meta = serde_json::to_vec_pretty(metadata).map_err(|e| Error::Other(e.to_string()))?;
        let meta = self.sealer.seal(meta, METADATA_NAME.as_bytes());
        let dir = format!("snapshots/{stamp}");
        crate::os::check_interrupted()?;
        lock.still_held()?;
        self.backend
            // Summary first, manifest last: on a bucket the manifest is
            // what makes the folder a snapshot (see list_snapshots).
            .write_dir_once(&dir, &[(METADATA_NAME, meta), (MANIFEST_NAME, encoded)])
            .ctx("publish snapshot", self.object_path(&dir))
    }
}

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
