//! The global flags (SPEC §3: accepted before or after the command) and
//! what they resolve to: the runtime's paths, the store's address, its
//! password source.

use clap::Args;
use std::path::{Path, PathBuf};

use atosnap::error::Error;
use atosnap::sources::paths::Paths;
use atosnap::store::format::CompressionParams;
use atosnap::store::key::Secrets;
use atosnap::store::location::{RemoteSettings, StoreAddress, TransferLimits};
use atosnap::store::{SharedKey, Store};

use super::logging::LogFormat;

/// The flags every command takes, before or after its name. In `--help`
/// they stand under their own heading, after the command's own options.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// The snapshot store: a local folder or s3://BUCKET/PREFIX.
    #[arg(
        long,
        global = true,
        env = "ATOCORE_BACKUP_DIR",
        value_name = "DIR|s3://BUCKET/PREFIX"
    )]
    pub store: Option<PathBuf>,
    /// S3 endpoint of an s3:// store (e.g. http://127.0.0.1:3900);
    /// credentials only from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or
    /// the AWS credentials file, region from AWS_REGION.
    #[arg(long, global = true, env = "ATOSNAP_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// Local cache: every store's chunk index, a remote store's pack
    /// indexes and manifests [default: $XDG_CACHE_HOME/atosnap].
    #[arg(long, global = true, env = "ATOSNAP_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// The live SQLite database [default: $ATOCORE_DATA_DIR/atocore.db].
    #[arg(long, global = true, env = "ATOCORE_DB_PATH", value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// The project registry [default: ./config/project-registry.json].
    #[arg(
        long,
        global = true,
        env = "ATOCORE_PROJECT_REGISTRY_PATH",
        value_name = "PATH"
    )]
    pub registry: Option<PathBuf>,
    /// The Chroma directory [default: $ATOCORE_DATA_DIR/chroma].
    #[arg(long, global = true, env = "ATOCORE_CHROMA_PATH", value_name = "DIR")]
    pub chroma_dir: Option<PathBuf>,
    /// Seconds to wait for the store lock before giving up.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECONDS")]
    pub lock_wait: u64,
    /// No progress output (warnings and errors still go to stderr).
    #[arg(long, global = true)]
    pub quiet: bool,
    /// How stderr logs: `text` lines, or `json` (one object per line).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
    /// Cooperative ingestion lock held exclusively while Chroma is read.
    #[arg(
        long,
        global = true,
        env = "ATOCORE_INGESTION_LOCK",
        value_name = "PATH"
    )]
    pub ingestion_lock: Option<PathBuf>,
    /// File holding the password of an encrypted store (else the
    /// ATOSNAP_PASSWORD variable). Never give the password as a flag value.
    #[arg(
        long,
        global = true,
        env = "ATOSNAP_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub password_file: Option<PathBuf>,
    /// Upload at most KIB KiB/s on average to an s3:// store (all uploads
    /// of the command together). A local store ignores it, with a warning.
    #[arg(
        long,
        global = true,
        env = "ATOSNAP_LIMIT_UPLOAD",
        value_name = "KIB",
        value_parser = clap::value_parser!(u32).range(1..),
        allow_negative_numbers = true
    )]
    pub limit_upload: Option<u32>,
    /// Download at most KIB KiB/s on average from an s3:// store. A local
    /// store ignores it, with a warning.
    #[arg(
        long,
        global = true,
        env = "ATOSNAP_LIMIT_DOWNLOAD",
        value_name = "KIB",
        value_parser = clap::value_parser!(u32).range(1..),
        allow_negative_numbers = true
    )]
    pub limit_download: Option<u32>,
}

pub fn paths(g: &Global) -> Paths {
    Paths::resolve(
        g.store.clone(),
        g.db.clone(),
        g.registry.clone(),
        g.chroma_dir.clone(),
    )
}

/// The password source of every command: the password file (flag or
/// ATOSNAP_PASSWORD_FILE), else ATOSNAP_PASSWORD.
pub fn secrets(g: &Global) -> Secrets {
    Secrets::from_env(g.password_file.clone())
}

/// The password of another store than `--store` (copy's destination,
/// init's `--copy-key-from`): `file` (its flag or env), else the variable
/// `env`, else `--store`'s own.
pub fn other_secrets(g: &Global, file: &Option<PathBuf>, env: &str) -> Secrets {
    use std::os::unix::ffi::OsStringExt;
    if let Some(file) = file.as_ref().filter(|p| !p.as_os_str().is_empty()) {
        return Secrets::from_file(file.clone());
    }
    match std::env::var_os(env).filter(|v| !v.is_empty()) {
        Some(v) => Secrets::from_password(v.into_vec()),
        None => secrets(g),
    }
}

/// The key `init --copy-key-from FROM` shares, and FROM's compression
/// (the default for the new store, so that frames move between the two
/// as they are). The refusals that need no source come first: opening it
/// costs a key derivation, and its password must not hide them.
pub fn key_to_share(
    g: &Global,
    address: &StoreAddress,
    encryption: &str,
    from: Option<&Path>,
    from_password_file: &Option<PathBuf>,
) -> Result<(Option<SharedKey>, Option<CompressionParams>), Error> {
    let Some(from) = from else {
        return Ok((None, None));
    };
    SharedKey::check_scheme(encryption)?;
    if Store::exists(address)? {
        return Err(Error::StoreExists {
            path: address.display(),
        });
    }
    let from = address_of("--copy-key-from", from, g)?;
    let source = Store::open(
        &from,
        &other_secrets(g, from_password_file, "ATOSNAP_FROM_PASSWORD"),
    )?;
    let compression = source.config().compression.clone();
    Ok((Some(SharedKey::of(&source)?), Some(compression)))
}

/// How remote stores are reached: endpoint, cache and transfer limits.
pub fn remote_settings(g: &Global) -> RemoteSettings {
    RemoteSettings::new(g.s3_endpoint.clone(), g.cache_dir.clone()).with_limits(TransferLimits {
        upload_kib: g.limit_upload,
        download_kib: g.limit_download,
    })
}

/// The warning for transfer limits given to a command that reached no
/// s3:// store (`stores`: every store the command named): they are
/// ignored rather than refused, so one environment file can serve the
/// local `create` and the `copy` to a bucket.
pub fn unused_limits_warning(g: &Global, stores: &[&StoreAddress]) -> Option<String> {
    let given: Vec<&str> = [
        (g.limit_upload.is_some(), "--limit-upload"),
        (g.limit_download.is_some(), "--limit-download"),
    ]
    .into_iter()
    .filter_map(|(set, flag)| set.then_some(flag))
    .collect();
    if given.is_empty() || stores.iter().any(|a| a.location.is_remote()) {
        return None;
    }
    Some(format!(
        "{} ignored: they limit transfers to and from s3:// stores only",
        given.join(" and ")
    ))
}

/// The store the global flags name, local or remote.
pub fn store_address(g: &Global, paths: &Paths) -> Result<StoreAddress, Error> {
    address_of("--store", &paths.store, g)
}

/// The store `flag` names, local or remote; a malformed s3:// location is
/// a usage error naming the flag.
pub fn address_of(flag: &str, value: &Path, g: &Global) -> Result<StoreAddress, Error> {
    StoreAddress::parse(value, remote_settings(g)).map_err(|e| match e {
        Error::Usage(m) => Error::Usage(format!("{flag} {m}")),
        e => e,
    })
}

/// Opens the existing store with the command's password source. Every
/// command that reads a store opens it through here.
pub fn open_store(g: &Global, paths: &Paths) -> Result<Store, Error> {
    Store::open(&store_address(g, paths)?, &secrets(g))
}
