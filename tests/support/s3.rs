//! The S3 test bucket (a Garage server started by `scripts/garage.sh`).
//! Tests that need it run when `ATOSNAP_TEST_S3_BUCKET` is set
//! (`scripts/garage.sh run cargo test` sets it, as `.ci/run` does) and are
//! skipped, saying so, otherwise. Every test works under its own random
//! prefix of the bucket.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use atosnap::os::TempOwner;
use atosnap::store::backend::Backend;
use atosnap::store::location::RemoteSettings;
use atosnap::store::s3::{claim_marker, S3Location};

use super::run::{stamps_of, Out};
use super::runtime::Runtime;

/// The test bucket, or `None` (the caller returns: skipped).
pub fn bucket() -> Option<String> {
    match std::env::var("ATOSNAP_TEST_S3_BUCKET") {
        Ok(b) if !b.is_empty() => Some(b),
        _ => {
            eprintln!("skipped: no S3 test server (scripts/garage.sh run cargo test)");
            None
        }
    }
}

/// A claim marker in `dir` by a process of this host, boot and PID
/// namespace with `pid`: this process's own claim when `pid` is ours, a
/// dead writer's when no process has it.
pub fn claim_in(dir: &str, pid: u32, random: u64) -> String {
    let owner = TempOwner {
        pid,
        ..TempOwner::current().clone()
    };
    format!("{dir}/{}", claim_marker(&owner, random))
}

/// `s3://BUCKET/<test>-<random>`.
pub fn fresh_url(bucket: &str, test: &str) -> String {
    format!("s3://{bucket}/{test}-{:016x}", rand::random::<u64>())
}

/// The fixture runtime backed up to a fresh prefix of the bucket, with its
/// own cache dir.
pub struct S3Rt {
    pub rt: Runtime,
    pub url: String,
    pub cache: PathBuf,
}

impl S3Rt {
    pub fn new(bucket: &str, test: &str) -> S3Rt {
        let mut rt = Runtime::fixture();
        let url = fresh_url(bucket, test);
        rt.store = PathBuf::from(&url);
        let cache = rt.path("cache");
        S3Rt { rt, url, cache }
    }

    /// Runs atosnap against the bucket, with this cache dir.
    pub fn run(&self, args: &[&str]) -> Out {
        let cache = self.cache.display().to_string();
        self.rt
            .run_env(args, &[("ATOSNAP_CACHE_DIR", cache.as_str())])
    }

    pub fn ok(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(args);
        assert_eq!(out.code, 0, "atosnap {args:?} failed: {out:?}");
        out.json
    }

    pub fn stamps(&self) -> Vec<String> {
        stamps_of(&self.ok(&["list"]))
    }

    /// The bucket's backend, for tests that damage objects directly.
    pub fn backend(&self) -> Arc<dyn Backend> {
        backend_for(&self.url, &self.cache)
    }
}

/// A backend on `url` as the binary would open it.
pub fn backend_for(url: &str, cache: &Path) -> Arc<dyn Backend> {
    let loc = atosnap::store::location::StoreLocation::parse(Path::new(url)).unwrap();
    let atosnap::store::location::StoreLocation::S3(s3): atosnap::store::location::StoreLocation =
        loc
    else {
        panic!("not an s3 url: {url}")
    };
    let settings = RemoteSettings::new(
        std::env::var("ATOSNAP_S3_ENDPOINT").ok(),
        Some(cache.to_path_buf()),
    );
    atosnap::store::location::remote_backend(&s3, &settings, scratch(&s3, &settings)).unwrap()
}

fn scratch(loc: &S3Location, settings: &RemoteSettings) -> PathBuf {
    let dir = atosnap::store::location::cache_dir(loc, settings).join("tmp");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The repository's Garage control script. A start right after a stop is
/// tried a few times: the old server's ports and lock may linger a moment.
pub fn garage(cmd: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/garage.sh");
    let attempts = if cmd == "start" { 5 } else { 1 };
    for attempt in 1..=attempts {
        let status = std::process::Command::new("bash")
            .arg(&script)
            .arg(cmd)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        if status.success() {
            return;
        }
        if attempt < attempts {
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
    }
    panic!("scripts/garage.sh {cmd} failed ({attempts} attempts)");
}
