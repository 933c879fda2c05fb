//! The object store: layout, config, packs, the chunk index, snapshots.
//!
//! ```text
//! STORE/config.json                     format version and parameters
//! STORE/objects/<xx>/<pack id>.pack     immutable packs of chunks
//! STORE/snapshots/<stamp>/manifest.bin  + backup-metadata.json
//! STORE/drills/<stamp>--<at>.json       drill outcomes
//! STORE/locks/                          the store lock and its holders
//! STORE/tmp/                            temp files of running writers
//! ```

pub mod backend;
pub mod format;
pub mod index;
pub mod lock;
pub mod pack;
pub mod packer;
pub mod seal;

use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, IoContext, Result};
use crate::id::Id;
use crate::manifest::Manifest;
use crate::stamp::Stamp;
use backend::{Backend, LocalBackend};
use format::StoreConfig;
use index::{ChunkIndex, DamagedPack, Location};
use lock::ExclusiveLock;
use pack::{PackEntry, PackIndexError, TRAILER_LEN};
use seal::Sealer;

pub const CONFIG_NAME: &str = "config.json";
pub const MANIFEST_NAME: &str = "manifest.bin";
pub const METADATA_NAME: &str = "backup-metadata.json";

pub struct Store {
    root: PathBuf,
    backend: Arc<dyn Backend>,
    config: StoreConfig,
    sealer: Sealer,
}

/// What is under `snapshots/`.
#[derive(Clone, Debug, Default)]
pub struct SnapshotListing {
    pub stamps: Vec<Stamp>,
    pub unparseable: Vec<String>,
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

/// Is there a live process with this pid (Linux: /proc)?
pub fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

impl Store {
    /// Opens an existing store.
    pub fn open(root: &Path) -> Result<Store> {
        let backend = LocalBackend::new(root);
        let config_path = root.join(CONFIG_NAME);
        if !config_path.exists() {
            return Err(Error::StoreMissing {
                path: root.display().to_string(),
            });
        }
        let bytes = backend.read(CONFIG_NAME).ctx("read", &config_path)?;
        let config = StoreConfig::parse(&bytes, &config_path.display().to_string())?;
        let sealer = Sealer::from_scheme(&config.encryption.scheme).ok_or_else(|| {
            Error::StoreConfigInvalid {
                path: config_path.display().to_string(),
                detail: format!("unknown encryption scheme {}", config.encryption.scheme),
            }
        })?;
        Ok(Store {
            root: root.to_path_buf(),
            backend: Arc::new(backend),
            config,
            sealer,
        })
    }

    /// Creates a new store at `root` (which may exist but must not hold a
    /// store already).
    pub fn init(root: &Path) -> Result<Store> {
        let config_path = root.join(CONFIG_NAME);
        if config_path.exists() {
            return Err(Error::Other(format!(
                "a store already exists at {}",
                root.display()
            )));
        }
        for dir in ["objects", "snapshots", "locks", "tmp"] {
            let p = root.join(dir);
            std::fs::create_dir_all(&p).ctx("create", &p)?;
        }
        let config = StoreConfig::new_default();
        let json = serde_json::to_vec_pretty(&config).map_err(|e| Error::Other(e.to_string()))?;
        let backend = LocalBackend::new(root);
        backend
            .write_once(CONFIG_NAME, &json)
            .ctx("write", &config_path)?;
        Store::open(root)
    }

    /// Opens the store, creating an unencrypted one when none exists.
    pub fn open_or_init(root: &Path) -> Result<Store> {
        if root.join(CONFIG_NAME).exists() {
            Store::open(root)
        } else {
            match Store::init(root) {
                // Another process created it between our check and init.
                Err(_) if root.join(CONFIG_NAME).exists() => Store::open(root),
                other => other,
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
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

    /// Path of an object, for messages.
    pub fn object_path(&self, name: &str) -> PathBuf {
        self.backend.display_name(name)
    }

    pub fn tmp_dir(&self) -> Result<PathBuf> {
        let dir = self.backend.tmp_dir();
        std::fs::create_dir_all(&dir).ctx("create", &dir)?;
        Ok(dir)
    }

    // ---- packs and chunks -------------------------------------------------

    /// Names and sizes of every pack file under `objects/`.
    pub fn list_packs(&self) -> Result<Vec<backend::ListEntry>> {
        let list = self
            .backend
            .list_files("objects")
            .ctx("list", self.root.join("objects"))?;
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
        if size < TRAILER_LEN as u64 {
            return Err(PackIndexError::TooShort(size).to_string());
        }
        let trailer = self
            .backend
            .read_range(name, size - TRAILER_LEN as u64, TRAILER_LEN)
            .map_err(|e| format!("unreadable: {e}"))?;
        let (blob_end, len, hash) =
            pack::parse_trailer(size, &trailer).map_err(|e| e.to_string())?;
        let stored = self
            .backend
            .read_range(name, blob_end, len)
            .map_err(|e| format!("unreadable: {e}"))?;
        pack::decode_index(stored, &hash, blob_end, |b| {
            self.sealer.open(b, pack::INDEX_AD)
        })
        .map_err(|e| e.to_string())
    }

    /// Builds the chunk index from every pack's trailer, in parallel. Packs
    /// whose index cannot be read are listed in `damaged`.
    pub fn load_index(&self) -> Result<ChunkIndex> {
        let packs = self.list_packs()?;
        let loaded: Vec<_> = packs
            .par_iter()
            .map(|p| (p, self.read_pack_index(&p.name, p.size)))
            .collect();
        let mut index = ChunkIndex::new();
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
        Ok(index)
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

    /// Deletes a pack. Only under the exclusive lock.
    pub fn delete_pack(&self, _lock: &ExclusiveLock, id: &Id) -> Result<()> {
        let name = pack::pack_name(id);
        self.backend
            .delete(&name)
            .ctx("delete", self.object_path(&name))
    }

    // ---- snapshots --------------------------------------------------------

    pub fn list_snapshots(&self) -> Result<SnapshotListing> {
        let names = self
            .backend
            .list_children("snapshots")
            .ctx("list", self.root.join("snapshots"))?;
        let mut listing = SnapshotListing::default();
        for name in names {
            match Stamp::parse(&name) {
                Ok(stamp) if stamp.to_string() == name => listing.stamps.push(stamp),
                _ => listing.unparseable.push(name),
            }
        }
        listing.stamps.sort();
        Ok(listing)
    }

    pub fn snapshot_exists(&self, stamp: &Stamp) -> Result<bool> {
        let dir = format!("snapshots/{stamp}");
        self.backend.exists(&dir).ctx("stat", self.root.join(&dir))
    }

    pub fn read_manifest(&self, stamp: &Stamp) -> Result<Manifest> {
        if !self.snapshot_exists(stamp)? {
            return Err(Error::SnapshotMissing {
                stamp: stamp.to_string(),
            });
        }
        let name = format!("snapshots/{stamp}/{MANIFEST_NAME}");
        let bytes = self
            .backend
            .read(&name)
            .map_err(|e| Error::ManifestCorrupt {
                stamp: stamp.to_string(),
                detail: format!("{}: {e}", self.object_path(&name).display()),
            })?;
        Manifest::decode(&bytes, &self.sealer).map_err(|detail| Error::ManifestCorrupt {
            stamp: stamp.to_string(),
            detail: format!("{}: {detail}", self.object_path(&name).display()),
        })
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
            .backend
            .read(&name)
            .ctx("read", self.object_path(&name))?;
        let opened = self
            .sealer
            .open(bytes, METADATA_NAME.as_bytes())
            .map_err(|e| Error::ObjectCorrupt {
                name: name.clone(),
                detail: e,
            })?;
        serde_json::from_slice(&opened).map_err(|e| Error::ObjectCorrupt {
            name,
            detail: format!("not JSON: {e}"),
        })
    }

    /// Publishes a snapshot atomically under `wanted`, or the next free
    /// `-N` stamp of the same second. The manifest's `stamp` field is set to
    /// the stamp actually used. Returns that stamp.
    pub fn publish_snapshot(
        &self,
        wanted: &Stamp,
        manifest: &mut Manifest,
        metadata: &mut serde_json::Value,
    ) -> Result<Stamp> {
        let snapshots = self.root.join("snapshots");
        std::fs::create_dir_all(&snapshots).ctx("create", &snapshots)?;
        let mut seq = wanted.seq();
        loop {
            let stamp = wanted.with_seq(seq);
            manifest.stamp = stamp.to_string();
            metadata["stamp"] = serde_json::Value::String(stamp.to_string());
            let encoded = manifest
                .encode(&self.sealer)
                .map_err(|e| Error::Other(format!("manifest encoding failed: {e}")))?;
            let meta =
                serde_json::to_vec_pretty(metadata).map_err(|e| Error::Other(e.to_string()))?;
            let meta = self.sealer.seal(meta, METADATA_NAME.as_bytes());
            let dir = format!("snapshots/{stamp}");
            let published = self
                .backend
                .write_dir_once(&dir, &[(MANIFEST_NAME, encoded), (METADATA_NAME, meta)])
                .ctx("publish snapshot", self.root.join(&dir))?;
            if published {
                return Ok(stamp);
            }
            seq += 1;
        }
    }

    /// Deletes a snapshot folder. Only under the exclusive lock.
    pub fn delete_snapshot(&self, _lock: &ExclusiveLock, stamp: &Stamp) -> Result<()> {
        let dir = format!("snapshots/{stamp}");
        self.backend
            .delete_dir(&dir)
            .ctx("delete", self.root.join(&dir))
    }

    // ---- temp files -------------------------------------------------------

    /// Removes temp files left by processes that no longer run. With the
    /// exclusive lock every temp file is a leftover.
    pub fn clean_tmp(&self, exclusive: Option<&ExclusiveLock>) -> Result<CleanedTmp> {
        let dir = self.tmp_dir()?;
        let mut cleaned = CleanedTmp::default();
        let rd = std::fs::read_dir(&dir).ctx("list", &dir)?;
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let owner = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let stale = exclusive.is_some()
                || match owner {
                    Some(pid) => pid != std::process::id() && !process_alive(pid),
                    None => true,
                };
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
