//! A store in S3-compatible object storage (AWS S3, Garage, MinIO, …)
//! behind the [`Backend`] trait, through OpenDAL's blocking API
//! (`opendal::blocking::Operator` over an async operator driven by a small
//! tokio runtime that this backend owns).
//!
//! - Location: `s3://BUCKET/PREFIX`; the endpoint comes from the caller
//!   (`--s3-endpoint`) or `ATOSNAP_S3_ENDPOINT`, the region from
//!   `AWS_REGION` / `AWS_DEFAULT_REGION` (default `us-east-1`; Garage uses
//!   `garage`). Requests are path-style (Garage needs it). Credentials come
//!   only from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` or the standard
//!   credentials file (`~/.aws/credentials`, `AWS_PROFILE`), loaded by
//!   OpenDAL's signer; the EC2 metadata service is not asked. They are never
//!   printed: error messages are scrubbed of the secret key as well.
//! - Integrity of uploads: every PUT (and every part of a multipart upload)
//!   carries `x-amz-checksum-crc32c`, OpenDAL's S3 `checksum_algorithm =
//!   crc32c`. Garage 2.5, like AWS, recomputes the CRC32C of the body it
//!   received and refuses a mismatch (checked by hand against Garage 2.5:
//!   a PUT with a wrong `x-amz-checksum-crc32c` gets 400 `InvalidDigest`);
//!   multipart uploads with per-part CRC32C work there too (the 20 MiB
//!   `put_file` in `tests/s3_backend.rs`).
//!   CRC32C rather than Content-MD5 because it also works for multipart
//!   uploads, which OpenDAL refuses to combine with MD5.
//! - Failures: requests that fail in a way OpenDAL classes as temporary
//!   (5xx, 429, broken connections, timeouts) are retried with exponential
//!   backoff and jitter (`ATOSNAP_S3_RETRIES` attempts in all, default 4);
//!   a refused connection or an HTTP 4xx fails at once, except when the
//!   store is opened: an endpoint that cannot be reached then is tried
//!   `ATOSNAP_S3_RETRIES` times with growing pauses before the command
//!   gives up. A connection
//!   attempt gives up after 4 s and a request (or one read or write of a
//!   transfer) after `ATOSNAP_S3_TIMEOUT_SECS` (default 60), so an
//!   unreachable endpoint fails in well under 30 s, and one that accepts
//!   connections but never answers within the attempts times that,
//!   instead of hanging.
//!   Errors become `io::Error`s: `NotFound` for a missing object or bucket
//!   ("bucket X does not exist at ENDPOINT"), `PermissionDenied` for
//!   refused or missing credentials, `ConnectionRefused` / `TimedOut` for
//!   an endpoint that does not answer, each naming the endpoint.
//! - Uploads of finished packs (`put_file`) run in the background on at
//!   most `ATOSNAP_S3_UPLOADS` (default 2) threads, streamed from the local
//!   file in 8 MiB parts; a caller blocks while the pool is full.
//!   `barrier()` waits for them and reports the first failure;
//!   `write_dir_once`, `delete`, `delete_dir` and `rename` call it first, so
//!   a snapshot is never published, and nothing deleted, before the packs
//!   handed over earlier are durable in the bucket. A failure is sticky:
//!   once an upload failed, every later `put_file`, `barrier`, publish,
//!   delete and rename of this backend fails with its message until the
//!   backend is dropped (the command ends), so that no caller deletes the
//!   old copies of chunks whose new pack never arrived.
//! - Packs are named by the hash of their bytes, so two writers of the same
//!   new data (two `create`s, a `create` and a `copy`) upload the same
//!   object. A pack already in the bucket with the same size and trailer is
//!   not uploaded again (one HEAD per pack); an upload that fails while an
//!   equal object has appeared under its name (two multipart uploads to one
//!   key: the server cancels one, `NoSuchUpload`) counts as done. A name
//!   still missing, or holding other bytes, after a failure is an error.
//! - `write_dir_once`: S3 has no atomic folder rename, and Garage 2.5
//!   ignores `If-None-Match: *` on PutObject (its put.rs never reads it; a
//!   second conditional PUT of an existing key succeeds), so a conditional
//!   create cannot be the claim. Instead: list `dir/` (anything there: the
//!   folder exists, `Ok(false)`); PUT a marker `dir/.claim-<owner>-<random>`
//!   (`claim::claim_marker`: pid, host, boot id, PID namespace, token);
//!   list `dir/` again. A writer whose listing shows its own marker and
//!   nothing else owns the folder. Two racing writers cannot both win: each
//!   lists only after its own marker is stored, so the later listing of the
//!   two shows both markers (S3 and Garage list with read-after-write
//!   consistency). A writer that sees another marker deletes its own, waits
//!   a random 50–250 ms and tries again (a few times) so that a tie does not
//!   leave both out. The owner then writes the files in order (the first
//!   file first, the last file, the commit, last) and deletes its marker. A
//!   folder without its last file (`manifest.bin`) is incomplete; a crash
//!   can leave one, with a stale marker. It counts as existing while its
//!   writer may still run; once the marker names a dead process of this
//!   host, boot and PID namespace, or nothing in the folder changed
//!   for 15 minutes, the next writer of that name removes the leftovers
//!   and claims it afresh (so a rerun `copy` converges).
//! - `delete` of a missing object is `NotFound` (checked with a HEAD first,
//!   like the local backend); `delete_dir` deletes `manifest.bin` first so a
//!   snapshot disappears at once, then the rest.
//! - Reads of chunks: `read_range` on packs (`objects/`, `quarantine/`)
//!   downloads the whole pack once into a local spool file under the
//!   scratch folder and serves ranges from it; the spool is an LRU bounded
//!   by `ATOSNAP_S3_SPOOL_BYTES` (default 4 GiB, 0 = no spool: one ranged
//!   GET per call) and is deleted when the backend is dropped. Other names
//!   are ranged GETs. Whole reads (`read`: config, keys, manifests,
//!   summaries, records) are bounded by `WHOLE_READ_MAX` as a local
//!   store's are: a larger object is refused by its HEAD, unread.
//! - Bandwidth: `--limit-upload` / `--limit-download` (KiB/s, through
//!   [`S3Location::limits`]) pace every upload and download of the
//!   backend on average (see `throttle`).
//! - The blocking calls must not be made from inside a tokio runtime's
//!   worker thread (OpenDAL's blocking layer uses `Handle::block_on`).

mod claim;
mod errors;
mod spool;
mod throttle;
mod upload;

use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use opendal::blocking;
use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::options::{ListOptions, ReadOptions};
use opendal::services::S3;
use opendal::{ErrorKind as OdKind, HttpTransporter, OperationContext, Operator};

use super::backend::{
    create_private_dir_all, read_bounded, refuse_over, temp_path_in, Backend, ListEntry,
    ObjectStat, WHOLE_READ_MAX,
};
pub use claim::claim_marker;
use claim::{abandoned, may_clear};
use errors::{error_chain, is_unreachable, scrub, Names};
use spool::Spool;
use throttle::Pacers;
pub use throttle::TransferLimits;
use upload::{upload_file, UploadPool};

/// Default number of attempts per request (first try plus retries).
pub const DEFAULT_ATTEMPTS: usize = 4;
/// Default number of concurrent background uploads.
pub const DEFAULT_UPLOADS: usize = 2;
/// Default disk budget of the pack spool.
pub const DEFAULT_SPOOL_BYTES: u64 = 4 << 30;
/// Part size of streamed uploads (and the whole-body limit of a single PUT).
pub(super) const UPLOAD_CHUNK: usize = 8 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
/// Default limit of one request, and of one read or write of a transfer.
const DEFAULT_TIMEOUT_SECS: usize = 60;
/// The file whose presence makes a snapshot folder complete.
const COMMIT_FILE: &str = "manifest.bin";
/// Name prefix of the marker a `write_dir_once` writer claims a folder with.
pub const CLAIM_PREFIX: &str = ".claim-";
/// Claim attempts of `write_dir_once` when writers tie.
const CLAIM_ATTEMPTS: usize = 5;

/// Where a store lives in object storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// `http(s)://host:port`; `None`: `ATOSNAP_S3_ENDPOINT`, else AWS.
    pub endpoint: Option<String>,
    /// `None`: `AWS_REGION`, `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Bandwidth limits of this backend's transfers.
    pub limits: TransferLimits,
}

impl S3Location {
    /// Whether a `--store` value names object storage.
    pub fn is_s3_url(s: &str) -> bool {
        s.starts_with("s3://")
    }

    /// Parses `s3://BUCKET/PREFIX` (the prefix may be empty or nested).
    pub fn parse(url: &str) -> io::Result<S3Location> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| invalid(format!("{url}: not an s3://BUCKET/PREFIX location")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid(format!(
                "{url}: no bucket name (expected s3://BUCKET/PREFIX)"
            )));
        }
        if bucket.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(format!("{url}: invalid bucket name {bucket:?}")));
        }
        let parts: Vec<&str> = prefix.split('/').filter(|p| !p.is_empty()).collect();
        if parts.iter().any(|p| *p == "." || *p == "..") {
            return Err(invalid(format!("{url}: `.` or `..` in the prefix")));
        }
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: parts.join("/"),
            endpoint: None,
            region: None,
            limits: TransferLimits::default(),
        })
    }

    /// `s3://BUCKET/PREFIX` (or `s3://BUCKET` without a prefix).
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn resolved_endpoint(&self) -> Option<String> {
        self.endpoint
            .clone()
            .or_else(|| std::env::var("ATOSNAP_S3_ENDPOINT").ok())
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
    }

    fn resolved_region(&self) -> String {
        self.region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| "us-east-1".to_string())
    }
}

/// Attempts per request (`ATOSNAP_S3_RETRIES`, at least 1).
fn attempts() -> usize {
    env_usize("ATOSNAP_S3_RETRIES", DEFAULT_ATTEMPTS).max(1)
}

/// Limit of one request attempt (`ATOSNAP_S3_TIMEOUT_SECS`, at least 1 s).
fn request_timeout() -> Duration {
    Duration::from_secs(env_usize("ATOSNAP_S3_TIMEOUT_SECS", DEFAULT_TIMEOUT_SECS).max(1) as u64)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only when a provider is installed already: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `dir/` for listing (`/` for the root).
pub(super) fn dir_path(dir: &str) -> String {
    let d = dir.trim_matches('/');
    if d.is_empty() {
        "/".to_string()
    } else {
        format!("{d}/")
    }
}

pub(super) fn join(dir: &str, name: &str) -> String {
    let d = dir.trim_matches('/');
    if d.is_empty() {
        name.to_string()
    } else {
        format!("{d}/{name}")
    }
}

/// A store in an S3 bucket. See the module documentation.
pub struct S3Backend {
    names: Arc<Names>,
    op: blocking::Operator,
    scratch: PathBuf,
    uploads: Arc<UploadPool>,
    spool: Spool,
    pacers: Pacers,
    rt: Option<tokio::runtime::Runtime>,
}

impl S3Backend {
    /// Connects to the bucket of `loc` (one listing request checks that
    /// the bucket exists and the credentials are accepted). `scratch` is a
    /// local folder for temp files and the pack spool.
    pub fn new(loc: &S3Location, scratch: PathBuf) -> io::Result<S3Backend> {
        let backend = S3Backend::unchecked(loc, scratch)?;
        backend.check_bucket_retrying(attempts())?;
        Ok(backend)
    }

    /// The backend of [`Self::new`] without asking the server anything.
    fn unchecked(loc: &S3Location, scratch: PathBuf) -> io::Result<S3Backend> {
        let endpoint = loc.resolved_endpoint();
        let region = loc.resolved_region();
        let names = Arc::new(Names {
            url: loc.url(),
            bucket: loc.bucket.clone(),
            endpoint: endpoint
                .clone()
                .unwrap_or_else(|| format!("AWS S3 ({region})")),
        });
        create_private_dir_all(&scratch)?;
        install_crypto_provider();

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("atosnap-s3")
            .enable_all()
            .build()?;

        let mut builder = S3::default()
            .bucket(&loc.bucket)
            .root(&format!("/{}", loc.prefix))
            .region(&region)
            .checksum_algorithm("crc32c")
            .disable_ec2_metadata();
        if let Some(ep) = &endpoint {
            builder = builder.endpoint(ep);
        }
        let config_err = |e: opendal::Error| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: {}", names.url, scrub(&error_chain(&e))),
            )
        };
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| io::Error::other(format!("cannot set up the HTTP client: {e}")))?;
        let transport = HttpTransporter::new(
            opendal_http_transport_reqwest::ReqwestTransport::new(client),
        );
        let attempts = attempts();
        let op = Operator::new(builder)
            .map_err(config_err)?
            .with_context(OperationContext::new().with_http_transport(transport))
            .layer(
                TimeoutLayer::new()
                    .with_timeout(request_timeout())
                    .with_io_timeout(request_timeout()),
            )
            .layer(
                RetryLayer::new()
                    .with_jitter()
                    .with_factor(2.0)
                    .with_min_delay(Duration::from_millis(500))
                    .with_max_delay(Duration::from_secs(4))
                    .with_max_times(attempts - 1),
            );
        let op = {
            let _guard = rt.enter();
            blocking::Operator::new(op).map_err(config_err)?
        };

        let spool_budget = std::env::var("ATOSNAP_S3_SPOOL_BYTES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_SPOOL_BYTES);
        let backend = S3Backend {
            names,
            op,
            spool: Spool::new(temp_path_in(&scratch, "spool"), spool_budget),
            pacers: Pacers::new(loc.limits),
            scratch,
            uploads: Arc::new(UploadPool::new(env_usize(
                "ATOSNAP_S3_UPLOADS",
                DEFAULT_UPLOADS,
            ))),
            rt: Some(rt),
        };
        Ok(backend)
    }

    /// [`Self::check_bucket`], with an endpoint that cannot be reached
    /// (refused, timed out) tried `attempts` times in all with growing
    /// pauses (0.5, 1, 2 s…): OpenDAL counts a refused connection as
    /// permanent, but a server restarting should not fail a nightly job
    /// at once. A refusal by the server itself (credentials, bucket) is
    /// final at once.
    fn check_bucket_retrying(&self, attempts: usize) -> io::Result<()> {
        let mut pause = Duration::from_millis(500);
        let mut left = attempts.max(1);
        loop {
            match self.check_bucket() {
                Err(e) if left > 1 && is_unreachable(&e) => {
                    left -= 1;
                    tracing::warn!("{e}; retrying in {pause:?}");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(4));
                }
                Err(e) if attempts > 1 && is_unreachable(&e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{e} (tried {attempts} times)"),
                    ))
                }
                other => return other,
            }
        }
    }

    /// One listing request: the bucket exists, the credentials work.
    fn check_bucket(&self) -> io::Result<()> {
        let opts = ListOptions {
            limit: Some(1),
            ..Default::default()
        };
        let mut lister = self
            .op
            .lister_options("/", opts)
            .map_err(|e| self.err("", e))?;
        match lister.next() {
            // Listing a prefix never answers 404: the bucket is missing
            // (or the endpoint is no S3 server).
            Some(Err(e)) if e.kind() == OdKind::NotFound => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "bucket {} does not exist at {}",
                    self.names.bucket, self.names.endpoint
                ),
            )),
            Some(Err(e)) => Err(self.err("", e)),
            _ => Ok(()),
        }
    }

    fn err(&self, name: &str, e: opendal::Error) -> io::Error {
        self.names.err(name, e)
    }

    /// [`Backend::read`] under a bound of `max` bytes ([`WHOLE_READ_MAX`]
    /// there; a parameter so tests can prove the refusal on a small
    /// object): a forged object of gigabytes in the bucket must not make a
    /// reader allocate them. Its size (the HEAD a GET of a whole object
    /// costs with OpenDAL anyway) refuses a larger one before a byte is
    /// downloaded and sizes the buffer; the GET asks for that many bytes
    /// and its stream is still cut one byte past `max`.
    pub fn read_at_most(&self, name: &str, max: u64) -> io::Result<Vec<u8>> {
        let size = self.op.stat(name).map_err(|e| self.err(name, e))?;
        let size = size.content_length();
        refuse_over(size, max).map_err(|e| self.names.stream_err(name, e))?;
        if size == 0 {
            // Nothing to GET (an empty range is no request to send).
            return Ok(Vec::new());
        }
        let reader = self.op.reader(name).map_err(|e| self.err(name, e))?;
        let src = reader
            .into_std_read(0..size)
            .map_err(|e| self.err(name, e))?;
        let data =
            read_bounded(src, Some(size), max).map_err(|e| self.names.stream_err(name, e))?;
        self.pacers.download(data.len() as u64);
        Ok(data)
    }

    /// Whether `read_range` on `name` goes through the spool.
    fn spooled(&self, name: &str) -> bool {
        self.spool.budget > 0 && (name.starts_with("objects/") || name.starts_with("quarantine/"))
    }

    fn list(&self, dir: &str, recursive: bool) -> io::Result<Vec<opendal::Entry>> {
        let path = dir_path(dir);
        let opts = ListOptions {
            recursive,
            ..Default::default()
        };
        let lister = match self.op.lister_options(&path, opts) {
            Ok(l) => l,
            Err(e) if e.kind() == OdKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(dir, e)),
        };
        let mut out = Vec::new();
        for entry in lister {
            match entry {
                Ok(entry) => {
                    if entry.path() != path && entry.path() != path.trim_start_matches('/') {
                        out.push(entry);
                    }
                }
                Err(e) if e.kind() == OdKind::NotFound => break,
                Err(e) => return Err(self.err(dir, e)),
            }
        }
        Ok(out)
    }
}

impl Drop for S3Backend {
    fn drop(&mut self) {
        // Upload threads use the runtime: let them finish first.
        let _ = self.uploads.wait_idle();
        self.spool.clear();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        self.names.url.clone()
    }

    fn display_name(&self, name: &str) -> PathBuf {
        PathBuf::from(self.names.display(name))
    }

    fn exists(&self, name: &str) -> io::Result<bool> {
        match self.op.stat(name) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == OdKind::NotFound => Ok(false),
            Err(e) => Err(self.err(name, e)),
        }
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.read_at_most(name, WHOLE_READ_MAX)
    }

    fn prefetch(&self, name: &str) -> io::Result<()> {
        if self.spooled(name) {
            self.spool.file(self, name)?;
        }
        Ok(())
    }

    fn read_range(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        if self.spooled(name) {
            let f = self.spool.file(self, name)?;
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, offset).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "{}: cannot read {len} bytes at {offset}: {e}",
                        self.names.display(name)
                    ),
                )
            })?;
            return Ok(buf);
        }
        self.read_range_direct(name, offset, len)
    }

    /// One ranged GET, never through the spool: pack trailers and indexes
    /// are read so (downloading a whole pack for its index would defeat
    /// the cache).
    fn read_range_direct(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let opts = ReadOptions {
            range: (offset..offset + len as u64).into(),
            ..Default::default()
        };
        let buf = self
            .op
            .read_options(name, opts)
            .map_err(|e| self.err(name, e))?
            .to_vec();
        self.pacers.download(buf.len() as u64);
        if buf.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: {} bytes at {offset}, wanted {len}",
                    self.names.display(name),
                    buf.len()
                ),
            ));
        }
        Ok(buf)
    }

    fn size(&self, name: &str) -> io::Result<u64> {
        Ok(self.stat(name)?.size)
    }

    fn stat(&self, name: &str) -> io::Result<ObjectStat> {
        let meta = self.op.stat(name).map_err(|e| self.err(name, e))?;
        Ok(ObjectStat {
            size: meta.content_length(),
            etag: meta.etag().map(str::to_string),
        })
    }

    fn list_files(&self, dir: &str) -> io::Result<Vec<ListEntry>> {
        let mut out: Vec<ListEntry> = self
            .list(dir, true)?
            .into_iter()
            .filter(|e| !e.path().ends_with('/'))
            .map(|e| ListEntry {
                name: e.path().trim_start_matches('/').to_string(),
                size: e.metadata().content_length(),
                modified: e.metadata().last_modified().map(SystemTime::from),
                etag: e.metadata().etag().map(str::to_string),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        Ok(out)
    }

    fn list_children(&self, dir: &str) -> io::Result<Vec<String>> {
        let path = dir_path(dir);
        let base = path.trim_start_matches('/');
        let mut out: Vec<String> = self
            .list(dir, false)?
            .into_iter()
            .filter_map(|e| {
                let p = e.path().trim_start_matches('/');
                let rel = p.strip_prefix(base).unwrap_or(p).trim_end_matches('/');
                (!rel.is_empty()).then(|| rel.to_string())
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn write_once(&self, name: &str, data: &[u8]) -> io::Result<()> {
        self.pacers.upload(data.len() as u64);
        self.op
            .write(name, data.to_vec())
            .map_err(|e| self.err(name, e))?;
        Ok(())
    }

    fn replace(&self, name: &str, data: &[u8]) -> io::Result<()> {
        // A PUT replaces an object atomically.
        self.write_once(name, data)
    }

    fn put_file(&self, name: &str, local: &Path) -> io::Result<()> {
        let op = self.op.clone();
        let names = self.names.clone();
        let pacers = self.pacers.clone();
        let (name, local) = (name.to_string(), local.to_path_buf());
        self.uploads.spawn(local.clone(), move || {
            upload_file(&op, &names, &pacers, &name, &local)
        })
    }

    fn barrier(&self) -> io::Result<()> {
        self.uploads.wait_idle()
    }

    fn write_dir_once(&self, dir: &str, files: &[(&str, Vec<u8>)]) -> io::Result<bool> {
        self.write_dir_once_checked(dir, files, &|| Ok(()))
    }

    fn write_dir_once_checked(
        &self,
        dir: &str,
        files: &[(&str, Vec<u8>)],
        may_commit: &dyn Fn() -> io::Result<()>,
    ) -> io::Result<bool> {
        self.barrier()?;
        let Some(((commit_name, commit_data), before)) = files.split_last() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: no files to publish", self.names.display(dir)),
            ));
        };
        let commit = join(dir, commit_name);
        let mut attempt = 0;
        let claim = loop {
            attempt += 1;
            let present = self.list_files(dir)?;
            let gone = present.is_empty() || abandoned(&present);
            if present.iter().any(|e| e.name == commit) || !gone {
                return Ok(false);
            }
            // `present` is empty, or the leftovers of a writer that died
            // between its claim and its commit (judged gone just now). The
            // folder is claimed before anything in it is deleted, so two
            // takers never clear it at once (a slower one's deletes, by
            // name, would hit the faster one's new files).
            let marker = claim_marker(crate::os::TempOwner::current(), rand::random());
            let claim = join(dir, &marker);
            self.write_once(&claim, marker.as_bytes())?;
            let others: Vec<ListEntry> = self
                .list_files(dir)?
                .into_iter()
                .filter(|e| e.name != claim)
                .collect();
            // Listed after the judgement: a writer that committed after
            // the first listing, and exited before it was looked up, shows
            // its commit here; a racing taker, its claim.
            if may_clear(&present, &others, &commit) {
                // What is about to be written anew is overwritten, not
                // deleted first: a delete that timed out here but reached
                // the server later would remove the new file.
                let rewritten = |name: &str| files.iter().any(|(f, _)| join(dir, f) == name);
                for e in others.iter().filter(|e| !rewritten(&e.name)) {
                    let _ = self.op.delete(&e.name);
                }
                break claim;
            }
            // Someone else is here too, or the folder was committed
            // meanwhile: step back.
            self.op.delete(&claim).map_err(|e| self.err(&claim, e))?;
            if others.iter().any(|e| e.name == commit) || attempt >= CLAIM_ATTEMPTS {
                return Ok(false);
            }
            let pause = 50 + rand::random::<u64>() % 200;
            std::thread::sleep(Duration::from_millis(pause));
        };
        // Files in order: the last one commits, and only while the writer
        // may still commit (the uploads, the claim and the files before it
        // can take minutes when requests are retried).
        for (name, data) in before {
            self.write_once(&join(dir, name), data)?;
        }
        // Refused: withdrawn, deleting nothing. The folder may no longer
        // be this writer's (taken over while it was suspended), and a
        // delete that timed out here could land after the next writer's
        // files. Left as a dead writer's leftovers: never listed (no
        // commit), cleared by the next writer of the stamp once this
        // process is gone or after 15 minutes, or by gc.
        may_commit()?;
        self.write_once(&commit, commit_data)?;
        // Best effort: a stale marker in a complete folder is harmless.
        let _ = self.op.delete(&claim);
        Ok(true)
    }

    fn delete(&self, name: &str) -> io::Result<()> {
        self.barrier()?;
        self.spool.forget(name);
        // Like a local file system: deleting nothing is an error.
        self.op.stat(name).map_err(|e| self.err(name, e))?;
        self.op.delete(name).map_err(|e| self.err(name, e))
    }

    fn delete_dir(&self, dir: &str) -> io::Result<()> {
        self.barrier()?;
        let commit = join(dir, COMMIT_FILE);
        let had_commit = self.exists(&commit)?;
        if had_commit {
            self.op.delete(&commit).map_err(|e| self.err(&commit, e))?;
        }
        let rest: Vec<String> = self.list_files(dir)?.into_iter().map(|e| e.name).collect();
        if rest.is_empty() && !had_commit {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: not found", self.names.display(dir)),
            ));
        }
        for name in &rest {
            self.spool.forget(name);
        }
        self.op
            .delete_iter(rest.iter().map(|s| s.as_str()))
            .map_err(|e| self.err(dir, e))
    }

    fn tmp_dir(&self) -> PathBuf {
        self.scratch.clone()
    }

    fn open_read(&self, name: &str) -> io::Result<Box<dyn Read + Send>> {
        let reader = self.op.reader(name).map_err(|e| self.err(name, e))?;
        let r = reader.into_std_read(..).map_err(|e| self.err(name, e))?;
        Ok(Box::new(self.pacers.reading(r)))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.barrier()?;
        if self.exists(to)? {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already exists", self.names.display(to)),
            ));
        }
        self.spool.forget(from);
        match self.op.copy(from, to) {
            Ok(_) => {}
            Err(e) if e.kind() == OdKind::Unsupported => {
                let data = self.read(from)?;
                self.write_once(to, &data)?;
            }
            Err(e) => return Err(self.err(from, e)),
        }
        self.op.delete(from).map_err(|e| self.err(from, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn s3_location_parse() {
        let l = S3Location::parse("s3://bkt/a/b/").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("bkt", "a/b"));
        assert_eq!(l.url(), "s3://bkt/a/b");
        let l = S3Location::parse("s3://bkt").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("bkt", ""));
        assert_eq!(l.url(), "s3://bkt");
        let l = S3Location::parse("s3://bkt/").unwrap();
        assert_eq!(l.prefix, "");
        let l = S3Location::parse("s3://bkt//x//y").unwrap();
        assert_eq!(l.prefix, "x/y");
        let e = S3Location::parse("s3:///prefix").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("no bucket name"), "{e}");
        assert!(S3Location::parse("/tmp/store").is_err());
        assert!(S3Location::parse("s3://b/../x").is_err());
        assert!(S3Location::is_s3_url("s3://b"));
    }

    #[test]
    fn s3_paths() {
        assert_eq!(dir_path(""), "/");
        assert_eq!(dir_path("snapshots"), "snapshots/");
        assert_eq!(dir_path("snapshots/"), "snapshots/");
        assert_eq!(
            join("snapshots/x", "manifest.bin"),
            "snapshots/x/manifest.bin"
        );
        assert_eq!(join("", "config.json"), "config.json");
    }

    /// A backend on an endpoint where nothing listens: every request
    /// would fail, so whatever passes the barrier shows up as a
    /// connection error rather than the upload's.
    fn offline_backend(scratch: &Path) -> S3Backend {
        let mut loc = S3Location::parse("s3://bkt/store").unwrap();
        loc.endpoint = Some("http://127.0.0.1:9".into());
        S3Backend::unchecked(&loc, scratch.to_path_buf()).unwrap()
    }

    #[test]
    fn s3_a_failed_upload_fails_every_later_barrier_delete_and_publish() {
        let dir = tempfile::tempdir().unwrap();
        let b = offline_backend(dir.path());
        let local = dir.path().join("pack.tmp");
        fs::write(&local, b"pack bytes").unwrap();
        let injected = "objects/ab/ab01.pack: injected upload failure";
        b.uploads
            .spawn(local.clone(), move || Err(io::Error::other(injected)))
            .unwrap();
        let first = b.barrier().unwrap_err();
        assert_eq!(first.to_string(), injected);
        assert!(!local.exists(), "the local file goes with its upload");
        // A second barrier, a delete, a publish, a rename and a new upload
        // fail alike, with the upload's own message.
        let second = b.barrier().unwrap_err();
        assert_eq!(second.to_string(), injected);
        let delete = b.delete("objects/cd/cd02.pack").unwrap_err();
        assert_eq!(delete.to_string(), injected);
        let delete_dir = b.delete_dir("snapshots/20260101T000000Z").unwrap_err();
        assert_eq!(delete_dir.to_string(), injected);
        let publish = b
            .write_dir_once("snapshots/x", &[("manifest.bin", b"m".to_vec())])
            .unwrap_err();
        assert_eq!(publish.to_string(), injected);
        let rename = b.rename("objects/cd/cd02.pack", "quarantine/cd02.pack");
        assert_eq!(rename.unwrap_err().to_string(), injected);
        let next = dir.path().join("next.tmp");
        fs::write(&next, b"more").unwrap();
        let put = b.put_file("objects/ef/ef03.pack", &next).unwrap_err();
        assert_eq!(put.to_string(), injected);
        assert!(!next.exists(), "a refused upload removes its local file");
    }

    #[test]
    fn s3_without_a_failed_upload_the_barrier_passes() {
        let dir = tempfile::tempdir().unwrap();
        let b = offline_backend(dir.path());
        let local = dir.path().join("pack.tmp");
        fs::write(&local, b"pack bytes").unwrap();
        b.uploads.spawn(local, || Ok(())).unwrap();
        b.barrier().unwrap();
        b.barrier().unwrap();
        // The delete gets past the barrier to the (absent) server.
        let e = b.delete("objects/cd/cd02.pack").unwrap_err();
        assert!(e.to_string().contains("127.0.0.1:9"), "{e}");
    }
}
