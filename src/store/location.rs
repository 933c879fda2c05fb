//! Where a store lives: a local folder or `s3://BUCKET/PREFIX`, plus the
//! settings a remote store needs (endpoint, region, local cache). This
//! module turns a `--store` value into a backend; nothing else in the
//! crate needs to know which kind of store it works on.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A parsed `--store` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    Local(PathBuf),
    S3(S3Url),
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

/// `s3://BUCKET/PREFIX` (the prefix may be empty or nested).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub prefix: String,
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
}

impl RemoteSettings {
    /// Endpoint and cache dir as given; region from `AWS_REGION`.
    pub fn new(endpoint: Option<String>, cache_dir: Option<PathBuf>) -> RemoteSettings {
        RemoteSettings {
            endpoint: endpoint.filter(|e| !e.is_empty()),
            region: std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()),
            cache_dir,
        }
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

/// The backend of a bucket; `scratch` is a local folder for its temp files.
pub fn remote_backend(
    url: &S3Url,
    _settings: &RemoteSettings,
    _scratch: PathBuf,
) -> std::io::Result<std::sync::Arc<dyn crate::store::backend::Backend>> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        format!("{}: the S3 backend is not built in yet", url.url()),
    ))
}

impl StoreLocation {
    /// Parses a `--store` value: `s3://…` is remote, anything else a path.
    pub fn parse(value: &Path) -> Result<StoreLocation> {
        let Some(text) = value.to_str() else {
            return Ok(StoreLocation::Local(value.to_path_buf()));
        };
        let Some(rest) = text.strip_prefix("s3://") else {
            return Ok(StoreLocation::Local(value.to_path_buf()));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Usage(format!(
                "--store {text}: no bucket (expected s3://BUCKET/PREFIX)"
            )));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == ".." || p == ".") {
            return Err(Error::Usage(format!(
                "--store {text}: the prefix may not contain . or .. segments"
            )));
        }
        Ok(StoreLocation::S3(S3Url {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        }))
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, StoreLocation::S3(_))
    }

    /// How messages name the store.
    pub fn display(&self) -> String {
        match self {
            StoreLocation::Local(p) => p.display().to_string(),
            StoreLocation::S3(u) => u.url(),
        }
    }
}

impl S3Url {
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    /// This store's own folder in the cache: one per bucket, prefix and
    /// endpoint, so two stores never share cached objects.
    pub fn cache_dir(&self, settings: &RemoteSettings) -> PathBuf {
        let mut h = blake3::Hasher::new();
        h.update(self.url().as_bytes());
        h.update(b"\0");
        h.update(settings.endpoint.as_deref().unwrap_or("").as_bytes());
        let key = h.finalize().to_hex();
        settings.cache_root().join(&key.as_str()[..24])
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
        assert_eq!(
            StoreLocation::parse(Path::new("s3://b/a/c/")).unwrap(),
            StoreLocation::S3(S3Url {
                bucket: "b".into(),
                prefix: "a/c".into()
            })
        );
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
        };
        let a = S3Url {
            bucket: "b".into(),
            prefix: "p".into(),
        };
        let b = S3Url {
            bucket: "b".into(),
            prefix: "q".into(),
        };
        assert_ne!(a.cache_dir(&s("x")), b.cache_dir(&s("x")));
        assert_ne!(a.cache_dir(&s("x")), a.cache_dir(&s("y")));
        assert!(a.cache_dir(&s("x")).starts_with("/c"));
    }
}
