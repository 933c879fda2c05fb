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
pub mod format;
pub mod index;
pub mod key;
pub mod lock;
pub mod pack;
pub mod packer;
pub mod s3;
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
use key::{KdfCost, KeyFile, Secrets, UnwrapError, KEY_FILE};
use lock::ExclusiveLock;
use pack::{PackEntry, PackIndexError, TRAILER_LEN};
use seal::{MasterKey, Sealer};

pub const CONFIG_NAME: &str = "config.json";
pub const MANIFEST_NAME: &str = "manifest.bin";
pub const METADATA_NAME: &str = "backup-metadata.json";
pub const QUARANTINE_DIR: &str = "quarantine";

pub struct Store {
    root: PathBuf,
    backend: Arc<dyn Backend>,
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
    root: &Path,
    backend: &LocalBackend,
    config: &StoreConfig,
    secrets: &Secrets,
) -> Result<(Sealer, KeyFile)> {
    let password = secrets.password()?.ok_or_else(|| Error::PasswordRequired {
        path: root.display().to_string(),
    })?;
    let key_path = root.join(KEY_FILE);
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
            path: root.display().to_string(),
            key_file: key_path.display().to_string(),
        },
        UnwrapError::Corrupt(detail) => corrupt(detail),
    })?;
    Ok((Sealer::repokey(master), file))
}

/// Is there a live process with this pid (Linux: /proc)?
pub fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

impl Store {
    /// Opens an existing unencrypted store (an encrypted one is refused
    /// with `password_required`: use [`Store::open_with`]).
    pub fn open(root: &Path) -> Result<Store> {
        Store::open_with(root, &Secrets::none())
    }

    /// Opens an existing store; an encrypted one takes its password from
    /// `secrets` and is refused, before any other work, when the password
    /// is missing (`password_required`) or wrong (`wrong_password`).
    pub fn open_with(root: &Path, secrets: &Secrets) -> Result<Store> {
        let backend = LocalBackend::new(root);
        let config_path = root.join(CONFIG_NAME);
        if !config_path.exists() {
            return Err(Error::StoreMissing {
                path: root.display().to_string(),
            });
        }
        let bytes = backend.read(CONFIG_NAME).ctx("read", &config_path)?;
        let config = StoreConfig::parse(&bytes, &config_path.display().to_string())?;
        let (sealer, key_file) = match config.encryption.scheme.as_str() {
            "repokey" => {
                let (sealer, file) = open_repokey(root, &backend, &config, secrets)?;
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
        Ok(Store {
            root: root.to_path_buf(),
            backend: Arc::new(backend),
            config,
            sealer,
            key_file,
        })
    }

    /// Creates a new unencrypted store at `root` (which may exist but must
    /// not hold a store already).
    pub fn init(root: &Path) -> Result<Store> {
        Store::init_with(root, "none", &Secrets::none())
    }

    /// Creates a new store with encryption `scheme` (`none` or `repokey`;
    /// `repokey` takes its password from `secrets`). In a `repokey` store
    /// the key file is durable before `config.json` appears, so a store
    /// never exists without its key.
    pub fn init_with(root: &Path, scheme: &str, secrets: &Secrets) -> Result<Store> {
        let config_path = root.join(CONFIG_NAME);
        if config_path.exists() {
            return Err(Error::Other(format!(
                "a store already exists at {}",
                root.display()
            )));
        }
        let mut config = StoreConfig::new_default();
        // Everything that can be refused is checked before anything is written.
        let repokey = match scheme {
            "none" => None,
            "repokey" => {
                let password = secrets.password()?.ok_or_else(|| Error::PasswordRequired {
                    path: root.display().to_string(),
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
        for dir in ["objects", "snapshots", "locks", "tmp"] {
            let p = root.join(dir);
            std::fs::create_dir_all(&p).ctx("create", &p)?;
        }
        let json = serde_json::to_vec_pretty(&config).map_err(|e| Error::Other(e.to_string()))?;
        let backend = LocalBackend::new(root);
        if let Some((_, file)) = &repokey {
            backend
                .replace(KEY_FILE, &file.to_json())
                .ctx("write", root.join(KEY_FILE))?;
        }
        backend
            .write_once(CONFIG_NAME, &json)
            .ctx("write", &config_path)?;
        match repokey {
            None => Store::open(root),
            Some((master, file)) => Ok(Store {
                root: root.to_path_buf(),
                backend: Arc::new(backend),
                config,
                sealer: Sealer::repokey(master),
                key_file: Some(file),
            }),
        }
    }

    /// Opens the store, creating an unencrypted one when none exists.
    pub fn open_or_init(root: &Path) -> Result<Store> {
        Store::open_or_init_with(root, &Secrets::none())
    }

    /// [`Store::open_with`], creating an unencrypted store when none exists.
    pub fn open_or_init_with(root: &Path, secrets: &Secrets) -> Result<Store> {
        if root.join(CONFIG_NAME).exists() {
            Store::open_with(root, secrets)
        } else {
            match Store::init(root) {
                // Another process created it between our check and init.
                Err(_) if root.join(CONFIG_NAME).exists() => Store::open_with(root, secrets),
                other => other,
            }
        }
    }

    /// The same store with fresh storage handles (no open files kept from
    /// earlier work) and the same unlocked key: how a long-running process
    /// (`serve`) keeps an encrypted store open without re-deriving its key
    /// per request, yet never holds deleted packs open after a gc.
    pub fn reopened(&self) -> Store {
        Store {
            root: self.root.clone(),
            backend: Arc::new(LocalBackend::new(&self.root)),
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
            path: self.root.display().to_string(),
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
    pub fn delete_pack(&self, _lock: &ExclusiveLock, id: &Id) -> Result<()> {
        let name = pack::pack_name(id);
        self.backend
            .delete(&name)
            .ctx("delete", self.object_path(&name))
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
            .ctx("list", self.root.join(QUARANTINE_DIR))?;
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
            .ctx("list", self.root.join(QUARANTINE_DIR))?;
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
