//! Where a store lives: a local folder or `s3://BUCKET/PREFIX`, plus the
//! settings a remote store needs (endpoint, region, local cache). This
//! module turns a `--store` value into a backend; nothing else in the
//! crate needs to know which kind of store it works on.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
pub use crate::store::s3::TransferLimits;
use crate::store::s3::{S3Backend, S3Location};

/// A parsed `--store` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    Local(PathBuf),
    S3(S3Location),
}

/// A store and how to reach it: what `--store`, `--s3-endpoint` and
/// `--cache-dir` say together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreAddress {
    pub location: StoreLocation,
    pub remote: RemoteSettings,
}

impl StoreAddress {
    pub fn local(root: impl Into<PathBuf>) -> StoreAddress {
        StoreAddress {
            location: StoreLocation::Local(root.into()),
            remote: RemoteSettings::default(),
        }
    }

    /// From a `--store` value and the remote settings.
    pub fn parse(store: &Path, remote: RemoteSettings) -> Result<StoreAddress> {
        Ok(StoreAddress {
            location: StoreLocation::parse(store)?,
            remote,
        })
    }

    pub fn display(&self) -> String {
        self.location.display()
    }
}

/// Settings of remote stores: from `--s3-endpoint` / `ATOSNAP_S3_ENDPOINT`,
/// `AWS_REGION` and `--cache-dir` / `ATOSNAP_CACHE_DIR`. Credentials are
/// not here on purpose: they come only from the standard `AWS_*`
/// variables or credentials file, read by the S3 client itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteSettings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub cache_dir: Option<PathBuf>,
    /// `--limit-upload` / `--limit-download`.
    pub limits: TransferLimits,
}

impl RemoteSettings {
    /// Endpoint and cache dir as given; region from `AWS_REGION`.
    pub fn new(endpoint: Option<String>, cache_dir: Option<PathBuf>) -> RemoteSettings {
        RemoteSettings {
            endpoint: endpoint.filter(|e| !e.is_empty()),
            region: std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()),
            cache_dir,
            limits: TransferLimits::default(),
        }
    }

    /// The same settings with bandwidth limits for the bucket's transfers.
    pub fn with_limits(self, limits: TransferLimits) -> RemoteSettings {
        RemoteSettings { limits, ..self }
    }

    /// The cache root: `--cache-dir`, else `$XDG_CACHE_HOME/atosnap`, else
    /// `~/.cache/atosnap`, else a folder under the system temp dir.
    pub fn cache_root(&self) -> PathBuf {
        if let Some(dir) = &self.cache_dir {
            return dir.clone();
        }
        let from_env = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty());
        if let Some(xdg) = from_env("XDG_CACHE_HOME") {
            return PathBuf::from(xdg).join("atosnap");
        }
        if let Some(home) = from_env("HOME") {
            return PathBuf::from(home).join(".cache").join("atosnap");
        }
        std::env::temp_dir().join("atosnap-cache")
    }
}

/// The backend of a bucket; `scratch` is a local folder for its temp
/// files and pack spool.
pub fn remote_backend(
    loc: &S3Location,
    settings: &RemoteSettings,
    scratch: PathBuf,
) -> std::io::Result<std::sync::Arc<dyn crate::store::backend::Backend>> {
    let loc = S3Location {
        endpoint: settings.endpoint.clone(),
        region: settings.region.clone(),
        limits: settings.limits,
        ..loc.clone()
    };
    Ok(std::sync::Arc::new(S3Backend::new(&loc, scratch)?))
}

/// This store's own folder in the cache: one per bucket, prefix and
/// endpoint, so two stores never share cached objects.
pub fn cache_dir(loc: &S3Location, settings: &RemoteSettings) -> PathBuf {
    let mut h = blake3::Hasher::new();
    h.update(loc.url().as_bytes());
    h.update(b"\0");
    h.update(settings.endpoint.as_deref().unwrap_or("").as_bytes());
    let key = h.finalize().to_hex();
    settings.cache_root().join(&key.as_str()[..24])
}

impl StoreLocation {
    /// Parses a `--store` value: `s3://…` is remote, anything else a path.
    pub fn parse(value: &Path) -> Result<StoreLocation> {
        let Some(text) = value.to_str() else {
            return Ok(StoreLocation::Local(value.to_path_buf()));
        };
        if !S3Location::is_s3_url(text) {
            return Ok(StoreLocation::Local(value.to_path_buf()));
        }
        let loc = S3Location::parse(text).map_err(|e| Error::Usage(e.to_string()))?;
        Ok(StoreLocation::S3(loc))
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, StoreLocation::S3(_))
    }

    /// How messages name the store.
    pub fn display(&self) -> String {
        match self {
            StoreLocation::Local(p) => p.display().to_string(),
            StoreLocation::S3(loc) => loc.url(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_and_s3_urls_parse() {
        assert_eq!(
            StoreLocation::parse(Path::new("/srv/backups")).unwrap(),
            StoreLocation::Local("/srv/backups".into())
        );
        let StoreLocation::S3(loc) = StoreLocation::parse(Path::new("s3://b/a/c/")).unwrap() else {
            panic!("not remote")
        };
        assert_eq!((loc.bucket.as_str(), loc.prefix.as_str()), ("b", "a/c"));
        let bare = StoreLocation::parse(Path::new("s3://bucket")).unwrap();
        assert_eq!(bare.display(), "s3://bucket");
        assert!(StoreLocation::parse(Path::new("s3:///x")).is_err());
        assert!(StoreLocation::parse(Path::new("s3://b/../x")).is_err());
    }

    #[test]
    fn cache_dirs_differ_per_store_and_endpoint() {
        let s = |e: &str| RemoteSettings {
            endpoint: Some(e.into()),
            region: None,
            cache_dir: Some("/c".into()),
            limits: TransferLimits::default(),
        };
        let a = S3Location::parse("s3://b/p").unwrap();
        let b = S3Location::parse("s3://b/q").unwrap();
        assert_ne!(cache_dir(&a, &s("x")), cache_dir(&b, &s("x")));
        assert_ne!(cache_dir(&a, &s("x")), cache_dir(&a, &s("y")));
        assert!(cache_dir(&a, &s("x")).starts_with("/c"));
    }
}
