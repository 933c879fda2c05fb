//! Opening and creating a store: connecting to its storage, reading its
//! config and key file, and changing the password.

use std::sync::Arc;

use crate::error::{Error, IoContext, Result};

use super::backend::{Backend, BackendErrorKind, LocalBackend};
use super::cache::ObjectCache;
use super::format::{CompressionParams, StoreConfig};
use super::key::{KdfCost, KeyFile, Secrets, UnwrapError};
use super::location::{RemoteSettings, StoreAddress, StoreLocation};
use super::seal::{MasterKey, RepoKeys, Sealer};
use super::{backend, key, location};
use super::{Dir, Object, Store};

/// Reads, checks and unwraps the key file of a `repokey` store.
fn open_repokey(
    backend: &dyn Backend,
    config: &StoreConfig,
    secrets: &Secrets,
) -> Result<(Sealer, KeyFile)> {
    let password = secrets.password()?.ok_or_else(|| Error::PasswordRequired {
        path: backend.location(),
    })?;
    let key_file = Object::KeyFile.name();
    let key_path = backend.display_name(&key_file);
    let corrupt = |detail: String| Error::KeyFileCorrupt {
        path: key_path.display().to_string(),
        detail,
    };
    let bytes = match backend.read(&key_file) {
        Ok(b) => b,
        Err(e) if BackendErrorKind::of(&e) == BackendErrorKind::NotFound => {
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

/// How [`Store::init`] makes a new store. New choices become fields here
/// (with their default in `Default`), not new constructors.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Encryption scheme: `none` or `repokey` (anything else is a usage
    /// error).
    pub scheme: String,
    /// Where a `repokey` store's password comes from.
    pub secrets: Secrets,
    /// How new chunks are compressed (`init --compression`), recorded in
    /// `config.json`.
    pub compression: CompressionParams,
    /// A `repokey` store's master key taken from another store instead of
    /// a fresh one (`init --copy-key-from`).
    pub shared_key: Option<SharedKey>,
}

/// The master key of an existing encrypted store, for a new store that is
/// to share it (`init --copy-key-from`, restic's `init --copy-chunker-params
/// --from-repo` and borg's `--other-repo` in spirit): the two name and seal
/// chunks alike, so `copy` between them moves stored frames as they are
/// instead of opening, re-hashing and re-sealing every chunk. Each store
/// keeps its own key file and password.
#[derive(Clone)]
pub struct SharedKey {
    keys: Arc<RepoKeys>,
}

impl SharedKey {
    /// The key of `store`; refused (`store_not_encrypted`) for a store
    /// without one.
    pub fn of(store: &Store) -> Result<SharedKey> {
        match store.sealer() {
            Sealer::Repokey(keys) => Ok(SharedKey { keys: keys.clone() }),
            Sealer::Plain => Err(Error::NotEncrypted {
                path: store.location().display(),
            }),
        }
    }
}

impl SharedKey {
    /// Refuses a shared key for a store of another scheme than `repokey`
    /// (a check that needs no source: callers make it before opening one).
    pub fn check_scheme(scheme: &str) -> Result<()> {
        match scheme {
            "repokey" => Ok(()),
            _ => Err(Error::Usage(
                "--copy-key-from needs --encryption repokey: an unencrypted store has no key"
                    .into(),
            )),
        }
    }
}

impl std::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedKey(..)")
    }
}

impl Default for InitOptions {
    /// Unencrypted, compressed as `CompressionParams::auto` says.
    fn default() -> InitOptions {
        InitOptions {
            scheme: "none".into(),
            secrets: Secrets::none(),
            compression: CompressionParams::auto(),
            shared_key: None,
        }
    }
}

impl InitOptions {
    /// A store with encryption `scheme`, its password from `secrets`.
    pub fn with_scheme(scheme: &str, secrets: &Secrets) -> InitOptions {
        InitOptions {
            scheme: scheme.into(),
            secrets: secrets.clone(),
            ..InitOptions::default()
        }
    }
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
            listed: Default::default(),
            reads: Default::default(),
            config,
            sealer,
            key_file,
        }
    }

    /// Whether a store (its `config.json`) exists at `address`.
    pub fn exists(address: &StoreAddress) -> Result<bool> {
        let (backend, _) = connect(&address.location, &address.remote)?;
        let config = Object::Config.name();
        backend
            .exists(&config)
            .ctx("stat", backend.display_name(&config))
    }

    /// Opens an existing store; an encrypted one takes its password from
    /// `secrets` and is refused, before any other work, when the password
    /// is missing (`password_required`) or wrong (`wrong_password`).
    pub fn open(address: &StoreAddress, secrets: &Secrets) -> Result<Store> {
        let (location, remote) = (&address.location, &address.remote);
        let (backend, cache) = connect(location, remote)?;
        let config_name = Object::Config.name();
        let config_path = backend.display_name(&config_name);
        let bytes = match backend.read(&config_name) {
            Ok(b) => b,
            Err(e) if BackendErrorKind::of(&e) == BackendErrorKind::NotFound => {
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
                refuse_a_downgrade(backend.as_ref(), &config_path, scheme)?;
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

    /// Creates a new store at `address` (a local folder may exist but must
    /// not hold a store already), as `options` say. In a `repokey` store
    /// the key file is durable before `config.json` appears, so a store
    /// never exists without its key.
    pub fn init(address: &StoreAddress, options: &InitOptions) -> Result<Store> {
        let (location, remote) = (&address.location, &address.remote);
        let (scheme, secrets) = (options.scheme.as_str(), &options.secrets);
        let (backend, cache) = connect(location, remote)?;
        let config_name = Object::Config.name();
        let config_path = backend.display_name(&config_name);
        if backend.exists(&config_name).ctx("stat", &config_path)? {
            return Err(Error::StoreExists {
                path: location.display(),
            });
        }
        let mut config = StoreConfig::new_default();
        config.set_compression(&options.compression);
        // Everything that can be refused is checked before anything is written.
        if options.shared_key.is_some() {
            SharedKey::check_scheme(scheme)?;
        }
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
                let keys = match &options.shared_key {
                    Some(shared) => shared.keys.clone(),
                    None => {
                        let master = MasterKey::generate().map_err(Error::KeyMaterial)?;
                        Arc::new(RepoKeys::from_master(master))
                    }
                };
                let master = keys.master();
                let file = KeyFile::wrap(master, &password, cost).map_err(Error::KeyMaterial)?;
                config.encryption.scheme = "repokey".into();
                config.encryption.key_id = Some(master.key_id());
                Some((Sealer::Repokey(keys), file))
            }
            other => {
                return Err(Error::Usage(format!(
                    "--encryption {other}: expected none or repokey"
                )))
            }
        };
        if let StoreLocation::Local(root) = location {
            for dir in [Dir::Packs, Dir::Snapshots, Dir::Locks, Dir::Tmp] {
                let p = root.join(dir.name());
                backend::create_dir_durable(&p).ctx("create", &p)?;
            }
        }
        let json = serde_json::to_vec_pretty(&config).map_err(|e| Error::Encode {
            detail: e.to_string(),
        })?;
        if let Some((_, file)) = &repokey {
            let key_file = Object::KeyFile.name();
            backend
                .replace(&key_file, &file.to_json())
                .ctx("write", backend.display_name(&key_file))?;
        }
        backend
            .write_once(&config_name, &json)
            .ctx("write", &config_path)?;
        let (sealer, key_file) = match repokey {
            None => (Sealer::Plain, None),
            Some((sealer, file)) => (sealer, Some(file)),
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

    /// [`Store::open`], creating an unencrypted store when none exists.
    /// A password given for a store that is not there is refused
    /// (`store_missing`): the operator meant an encrypted store, and a
    /// backup disk that is not mounted must not turn into plaintext backups
    /// on the root file system. Only `init --encryption repokey` makes an
    /// encrypted store.
    pub fn open_or_init(address: &StoreAddress, secrets: &Secrets) -> Result<Store> {
        match Store::open(address, secrets) {
            Err(Error::StoreMissing { path }) if secrets.is_given() => {
                Err(Error::StoreMissingWithPassword { path })
            }
            Err(Error::StoreMissing { .. }) => {
                match Store::init(address, &InitOptions::default()) {
                    // Another process created it between our check and init.
                    Err(_) => Store::open(address, secrets),
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
            listed: Default::default(),
            reads: Default::default(),
            config: self.config.clone(),
            sealer: self.sealer.clone(),
            key_file: self.key_file.clone(),
        }
    }

    /// The same store over another backend (a test's wrapper of its own).
    #[cfg(test)]
    pub(crate) fn with_backend(self, backend: Arc<dyn Backend>) -> Store {
        Store { backend, ..self }
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
        self.check_writable()?;
        let keys = self.sealer.keys().ok_or_else(|| Error::NotEncrypted {
            path: self.location.display(),
        })?;
        if new_password.is_empty() {
            return Err(Error::Usage(
                "the new password is empty: an encrypted store needs a real password".into(),
            ));
        }
        let cost = KdfCost::from_env()?;
        let file = KeyFile::wrap(keys.master(), new_password, cost).map_err(Error::KeyMaterial)?;
        let key_file = Object::KeyFile.name();
        self.backend
            .replace(&key_file, &file.to_json())
            .ctx("replace", self.object_path(&key_file))?;
        Ok(file)
    }
}

/// A store whose `config.json` says it is not encrypted while its key
/// file is there was encrypted once: someone changed the config, and
/// opening it as it says would write every new chunk in the clear.
fn refuse_a_downgrade(
    backend: &dyn Backend,
    config_path: &std::path::Path,
    scheme: &str,
) -> Result<()> {
    let key_file = Object::KeyFile.name();
    let present = backend
        .exists(&key_file)
        .map_err(|e| Error::io("stat", backend.display_name(&key_file), e))?;
    if present {
        return Err(Error::StoreConfigInvalid {
            path: config_path.display().to_string(),
            detail: format!(
                "it says encryption {scheme:?}, but {} holds a key: the store was encrypted and its config changed since; refusing to write to it unsealed (restore config.json from a copy)",
                backend.display_name(&key_file).display()
            ),
        });
    }
    Ok(())
}
