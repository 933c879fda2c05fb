//! The only place the store touches its storage. Names are `/`-separated
//! paths relative to the store root (`objects/ab/ab…cd.pack`,
//! `snapshots/<stamp>/manifest.bin`). Objects are written once and never
//! modified; the operations are the ones an object store also offers, so a
//! remote backend slots in behind the same trait.
//!
//! It also owns how atosnap creates local files and folders (store, cache,
//! spool): new files are 0600 and new folders 0700 whatever the umask, since
//! an unencrypted store holds the database in the clear. Existing folders
//! keep their mode (an operator's stricter choice stays).
//!
//! And it owns the bound every backend holds an object read whole to
//! ([`WHOLE_READ_MAX`], [`read_bounded`]): a forged object cannot exhaust
//! a reader's memory.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What a failed backend call means to its caller (restic's `IsNotExist`
/// and `IsPermanentError`): every backend's errors say one of these, and
/// callers ask [`BackendErrorKind::of`] instead of guessing from an
/// `io::ErrorKind`. The error itself stays an `io::Error`, whose kind
/// [`crate::error::Error::io`] reads for disk full, read-only and
/// permission denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendErrorKind {
    /// The object (or the bucket) is not there.
    NotFound,
    /// The storage did not answer as it should (a refused connection, a
    /// timeout, a throttled or failing server): a later try may succeed.
    Transient,
    /// Anything else: trying again will not help (refused credentials, a
    /// short object, a folder where a file should be, a bad request).
    Permanent,
}

impl BackendErrorKind {
    /// The kind of an error a backend returned: the one the backend gave
    /// it ([`tagged`]), else what its `io::ErrorKind` says (a local
    /// backend's errors come from the OS).
    pub fn of(e: &io::Error) -> BackendErrorKind {
        match e.get_ref().and_then(|inner| inner.downcast_ref::<Tagged>()) {
            Some(t) => t.kind,
            None => BackendErrorKind::from_io(e.kind()),
        }
    }

    /// How an OS error reads as a backend failure.
    pub fn from_io(kind: io::ErrorKind) -> BackendErrorKind {
        match kind {
            io::ErrorKind::NotFound => BackendErrorKind::NotFound,
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::TimedOut
            | io::ErrorKind::Interrupted => BackendErrorKind::Transient,
            _ => BackendErrorKind::Permanent,
        }
    }
}

/// An `io::Error` whose backend says its kind: `kind()` is still
/// `io_kind` and the message is `msg`, unchanged.
pub fn tagged(io_kind: io::ErrorKind, kind: BackendErrorKind, msg: String) -> io::Error {
    io::Error::new(io_kind, Tagged { kind, msg })
}

/// The message of a [`tagged`] error, with its kind beside it.
#[derive(Debug)]
struct Tagged {
    kind: BackendErrorKind,
    msg: String,
}

impl std::fmt::Display for Tagged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Tagged {}

/// A file in a listing.
#[derive(Clone, Debug)]
pub struct ListEntry {
    pub name: String,
    pub size: u64,
    /// Last modification (a bucket's Last-Modified): gc's grace period.
    pub modified: Option<std::time::SystemTime>,
    /// The storage's tag of this version of the object (a bucket's ETag),
    /// when it gives one: it changes whenever the object is written anew.
    pub etag: Option<String>,
}

/// What a stat says of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectStat {
    pub size: u64,
    /// As [`ListEntry::etag`].
    pub etag: Option<String>,
}

impl From<&ListEntry> for ObjectStat {
    fn from(e: &ListEntry) -> ObjectStat {
        ObjectStat {
            size: e.size,
            etag: e.etag.clone(),
        }
    }
}

/// The storage of a store. Failures are `io::Error`s whose
/// [`BackendErrorKind`] says what they mean: a missing object is `NotFound`
/// on every backend (the conformance suite checks it).
pub trait Backend: Send + Sync {
    /// Human-readable location, for messages.
    fn location(&self) -> String;
    /// A readable name for an object, for messages (a path or a URL).
    fn display_name(&self, name: &str) -> PathBuf;
    fn exists(&self, name: &str) -> io::Result<bool>;
    /// The whole object, of at most [`WHOLE_READ_MAX`] bytes (a larger
    /// one is refused, `InvalidData`, through [`read_bounded`]).
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    fn read_range(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// A small range read straight from the storage, bypassing whatever
    /// read-ahead `read_range` does (pack trailers and indexes).
    fn read_range_direct(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.read_range(name, offset, len)
    }
    fn size(&self, name: &str) -> io::Result<u64>;
    /// Size and version tag of `name` (a storage without tags: none).
    fn stat(&self, name: &str) -> io::Result<ObjectStat> {
        Ok(ObjectStat {
            size: self.size(name)?,
            etag: None,
        })
    }
    /// Hints that `name` will be read soon: a remote backend fetches it
    /// now (a caller runs this on a helper thread, ahead of its readers).
    fn prefetch(&self, _name: &str) -> io::Result<()> {
        Ok(())
    }
    /// Every file below `dir`, recursively (missing `dir`: empty list).
    fn list_files(&self, dir: &str) -> io::Result<Vec<ListEntry>>;
    /// Immediate children of `dir` (files and folders), by name.
    fn list_children(&self, dir: &str) -> io::Result<Vec<String>>;
    /// Writes a new object durably (temp name, fsync, rename).
    fn write_once(&self, name: &str, data: &[u8]) -> io::Result<()>;
    /// Replaces object `name` (or creates it) atomically: a reader, or a
    /// crash at any moment, sees the old content or the new, never neither
    /// and never a mix. Only for the few mutable objects (the key file).
    fn replace(&self, name: &str, data: &[u8]) -> io::Result<()> {
        self.write_once(name, data)
    }
    /// Moves a finished, fsynced local file in as object `name`. A remote
    /// backend may finish the upload in the background: `barrier` waits
    /// for it.
    fn put_file(&self, name: &str, local: &Path) -> io::Result<()>;
    /// Waits until every `put_file` handed over so far is durable, and
    /// returns the first error any of them hit. `write_dir_once`, `delete`,
    /// `delete_dir` and `rename` imply it.
    fn barrier(&self) -> io::Result<()> {
        Ok(())
    }
    /// Publishes a folder of small files atomically. Returns false, writing
    /// nothing, when `dir` already exists.
    fn write_dir_once(&self, dir: &str, files: &[(&str, Vec<u8>)]) -> io::Result<bool>;
    /// [`Backend::write_dir_once`], calling `may_commit` as late as the
    /// backend can before the write that makes the folder appear, and
    /// publishing nothing when it fails: a writer whose lease on the store
    /// may have lapsed meanwhile must not publish. Locally that is once,
    /// first (an OS lock cannot lapse); a bucket calls it again after its
    /// uploads and its claim, right before the commit file.
    fn write_dir_once_checked(
        &self,
        dir: &str,
        files: &[(&str, Vec<u8>)],
        may_commit: &dyn Fn() -> io::Result<()>,
    ) -> io::Result<bool> {
        may_commit()?;
        self.write_dir_once(dir, files)
    }
    fn delete(&self, name: &str) -> io::Result<()>;
    /// Removes a folder and what it holds, so that it disappears at once.
    fn delete_dir(&self, dir: &str) -> io::Result<()>;
    /// A local scratch folder for temp files of this process.
    fn tmp_dir(&self) -> PathBuf;
    /// Streams an object from its start (verify reads whole packs so).
    fn open_read(&self, name: &str) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(io::Cursor::new(self.read(name)?)))
    }
    /// Moves an object to a new name (quarantine); `to` must not exist.
    /// The default copies, then deletes.
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        if self.exists(to)? {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{to} already exists"),
            ));
        }
        let data = self.read(from)?;
        self.write_once(to, &data)?;
        self.delete(from)
    }
}

/// A store on a local (or mounted) filesystem.
pub struct LocalBackend {
    root: PathBuf,
    /// Open pack files, so reading thousands of chunks does not reopen.
    open_files: Mutex<HashMap<String, Arc<File>>>,
}

const OPEN_FILE_CACHE: usize = 64;

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> LocalBackend {
        LocalBackend {
            root: root.into(),
            open_files: Mutex::new(HashMap::new()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn open_cached(&self, name: &str) -> io::Result<Arc<File>> {
        let mut cache = self.open_files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = cache.get(name) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(self.path(name))?);
        if cache.len() >= OPEN_FILE_CACHE {
            cache.clear();
        }
        cache.insert(name.to_string(), f.clone());
        Ok(f)
    }

    fn forget(&self, name: &str) {
        let mut cache = self.open_files.lock().unwrap_or_else(|e| e.into_inner());
        cache.remove(name);
    }

    /// A fresh temp path under `tmp/`, named for this process so that a
    /// later writer can tell a dead process's leftovers from live work.
    pub fn temp_path(&self, suffix: &str) -> PathBuf {
        temp_path_in(&self.tmp_dir(), suffix)
    }
}

/// `DIR/<owner>-<random>.<suffix>`, the owner as [`crate::os::TempOwner`]
/// names it (pid, host, boot, PID namespace, process token).
pub fn temp_path_in(dir: &Path, suffix: &str) -> PathBuf {
    let r: u64 = rand::random();
    let owner = crate::os::TempOwner::current().prefix();
    dir.join(format!("{owner}{r:016x}.{suffix}"))
}

/// The largest object read whole (config, key file, manifests, summaries,
/// records): a format-1 manifest of a runtime of some 30 GB. A larger one
/// (a sparse file costs no disk, a forged object in a bucket none of the
/// reader's) is refused before it is read into memory, by every backend.
pub const WHOLE_READ_MAX: u64 = 256 << 20;

/// The most [`read_bounded`] grows its buffer by at a time when the size
/// is not known (or the stream outlasts it): it doubles from 64 KiB up to
/// steps of this, so a stream of `max + 1` bytes costs about `max` of
/// memory, not the double a `Vec` growing by doubling would reserve.
const READ_STEP: u64 = 8 << 20;

/// Refuses an object of `size` bytes, larger than `max`, before any of it
/// is read (the file's length, the object's HEAD).
pub fn refuse_over(size: u64, max: u64) -> io::Result<()> {
    if size <= max {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "it is {size} bytes, more than any object atosnap reads whole \
             ({max}): not one it wrote"
        ),
    ))
}

/// Reads `src` to its end into memory, every backend's whole read: at most
/// `max` bytes, else an `InvalidData` error in [`refuse_over`]'s words. A
/// `size` the caller knows (a file's length, an object's Content-Length)
/// over `max` is refused before anything is read, and sizes the buffer
/// once; a stream longer than it said is still cut after `max + 1` bytes,
/// the buffer growing at most [`READ_STEP`] at a time.
pub fn read_bounded(mut src: impl Read, size: Option<u64>, max: u64) -> io::Result<Vec<u8>> {
    if let Some(size) = size {
        refuse_over(size, max)?;
    }
    let cut = max.saturating_add(1);
    // One byte past `size` to see the end without growing the buffer.
    let first = size.map_or(64 << 10, |n| n.saturating_add(1)).min(cut);
    let mut buf = vec![0u8; first as usize];
    let mut filled = 0usize;
    loop {
        if filled == buf.len() {
            let room = cut - filled as u64;
            if room == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "it is more than {max} bytes, more than any object \
                         atosnap reads whole: not one it wrote"
                    ),
                ));
            }
            let grow = room.min(READ_STEP).min((filled as u64).max(64 << 10)) as usize;
            buf.reserve_exact(grow);
            buf.resize(filled + grow, 0);
        }
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Mode of every file atosnap creates in a store, a cache or a spool.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of every folder atosnap creates there.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// `create_dir_all` whose new folders are 0700 (existing ones are left as
/// they are).
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// Creates one new folder, 0700 (it must not exist).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(PRIVATE_DIR_MODE).create(dir)
}

/// Creates a new file for writing, 0600 (it must not exist).
pub fn create_private_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
}

/// Makes `dir` and its missing parents (0700), fsyncing the folder each new
/// one is made in: a new fan-out folder `objects/xx/` is an entry of
/// `objects/`, and a pack renamed into it survives a power cut only when
/// that entry is durable too.
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = match dir.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return create_private_dir_all(dir),
    };
    create_dir_durable(parent)?;
    match create_private_dir(dir) {
        Ok(()) => {}
        // Another writer made it (and may not have synced it yet).
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(e),
    }
    sync_dir(parent)
}

/// fsyncs a folder so a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    // O_DIRECTORY: anything else there (a FIFO swapped in, whose open
    // would wait for a writer) fails at once.
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?
        .sync_all()
}

/// Writes `data` to `path` (which must not exist) and fsyncs it.
pub fn write_new_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = create_private_file(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Test hooks: the range reads of one object from a local store fail as
/// a disk's read error does (the storage failing, not the data: see
/// [`BackendErrorKind`]), so tests can prove what a command does with an
/// object it cannot read. `ATOSNAP_TEST_UNREADABLE_FRAMES=<object name>`
/// fails only `read_range`: its trailer and index still read (bad sectors
/// under a pack's frames). `ATOSNAP_TEST_UNREADABLE_OBJECT=<object name>`
/// fails `read_range_direct` too, so not even its index reads. Whole-object
/// reads (`read`, and `open_read`, which verify streams packs with) still
/// work.
fn refuse_if_injected(var: &'static str, name: &str) -> io::Result<()> {
    static NAMES: std::sync::OnceLock<[Option<String>; 2]> = std::sync::OnceLock::new();
    let [frames, object] = NAMES.get_or_init(|| {
        [
            std::env::var(FRAMES_HOOK).ok(),
            std::env::var(OBJECT_HOOK).ok(),
        ]
    });
    let hooked = if var == FRAMES_HOOK { frames } else { object };
    match hooked {
        Some(n) if n == name => Err(io::Error::other(format!(
            "injected read failure of {name} ({var})"
        ))),
        _ => Ok(()),
    }
}

const FRAMES_HOOK: &str = "ATOSNAP_TEST_UNREADABLE_FRAMES";
const OBJECT_HOOK: &str = "ATOSNAP_TEST_UNREADABLE_OBJECT";

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn display_name(&self, name: &str) -> PathBuf {
        self.path(name)
    }

    fn exists(&self, name: &str) -> io::Result<bool> {
        match fs::symlink_metadata(self.path(name)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let f = File::open(self.path(name))?;
        let len = f.metadata()?.len();
        read_bounded(f, Some(len), WHOLE_READ_MAX)
    }

    fn read_range(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        refuse_if_injected(FRAMES_HOOK, name)?;
        self.read_range_direct(name, offset, len)
    }

    fn read_range_direct(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        refuse_if_injected(OBJECT_HOOK, name)?;
        let f = self.open_cached(name)?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn size(&self, name: &str) -> io::Result<u64> {
        Ok(fs::metadata(self.path(name))?.len())
    }

    fn list_files(&self, dir: &str) -> io::Result<Vec<ListEntry>> {
        let base = self.path(dir);
        let mut out = Vec::new();
        if !base.exists() {
            return Ok(out);
        }
        for entry in walkdir::WalkDir::new(&base).follow_links(false) {
            let entry = entry.map_err(io::Error::other)?;
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = entry
                .path()
                .strip_prefix(&self.root)
                .map_err(io::Error::other)?;
            let Some(rel) = rel.to_str() else { continue };
            let meta = entry.metadata().map_err(io::Error::other)?;
            out.push(ListEntry {
                name: rel.to_string(),
                size: meta.len(),
                modified: meta.modified().ok(),
                etag: None,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn list_children(&self, dir: &str) -> io::Result<Vec<String>> {
        let base = self.path(dir);
        let rd = match fs::read_dir(&base) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry?;
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }

    fn write_once(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let tmp = self.temp_path("obj");
        write_new_synced(&tmp, data)?;
        self.put_file(name, &tmp)
    }

    fn replace(&self, name: &str, data: &[u8]) -> io::Result<()> {
        // Temp file, fsync, rename(2) over the old one, fsync the folder.
        self.write_once(name, data)
    }

    fn put_file(&self, name: &str, local: &Path) -> io::Result<()> {
        let dest = self.path(name);
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        create_dir_durable(&parent)?;
        if let Err(e) = fs::rename(local, &dest) {
            let _ = fs::remove_file(local);
            return Err(e);
        }
        sync_dir(&parent)
    }

    fn write_dir_once(&self, dir: &str, files: &[(&str, Vec<u8>)]) -> io::Result<bool> {
        let dest = self.path(dir);
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        create_dir_durable(&parent)?;
        if dest.exists() {
            return Ok(false);
        }
        let tmp = self.temp_path("dir");
        create_private_dir(&tmp)?;
        let staged = (|| {
            for (name, data) in files {
                write_new_synced(&tmp.join(name), data)?;
            }
            sync_dir(&tmp)
        })();
        if let Err(e) = staged {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        crate::failpoint::hit(|| format!("backend:dir-staged:{dir}"));
        // rename(2) of a folder onto an existing non-empty folder fails, so
        // two writers racing for one name cannot both win.
        match fs::rename(&tmp, &dest) {
            Ok(()) => {
                sync_dir(&parent)?;
                Ok(true)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                if dest.exists() {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    fn delete(&self, name: &str) -> io::Result<()> {
        self.forget(name);
        let path = self.path(name);
        fs::remove_file(&path)?;
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }

    fn delete_dir(&self, dir: &str) -> io::Result<()> {
        let path = self.path(dir);
        // Move it out of sight first so a crash never leaves half a folder
        // where a reader would find it.
        let tmp = self.temp_path("deleting");
        fs::rename(&path, &tmp)?;
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
        fs::remove_dir_all(&tmp)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn open_read(&self, name: &str) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(File::open(self.path(name))?))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (src, dest) = (self.path(from), self.path(to));
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        create_dir_durable(&parent)?;
        if fs::symlink_metadata(&dest).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already exists", dest.display()),
            ));
        }
        self.forget(from);
        fs::rename(&src, &dest)?;
        sync_dir(&parent)?;
        if let Some(p) = src.parent() {
            sync_dir(p)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// A huge object (a sparse file costs no disk) is refused before it
    /// is read into memory; one at the limit's side is read.
    #[test]
    fn an_object_larger_than_any_read_whole_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        create_private_dir(&dir.path().join("tmp")).unwrap();
        let b = LocalBackend::new(dir.path());
        b.write_once("small", b"fine").unwrap();
        assert_eq!(b.read("small").unwrap(), b"fine");
        let huge = File::create(dir.path().join("huge")).unwrap();
        huge.set_len(WHOLE_READ_MAX + 1).unwrap();
        let err = b.read("huge").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string()
                .contains("more than any object atosnap reads whole"),
            "{err}"
        );
    }

    /// A stream that counts the bytes taken from it.
    struct Counted<'a>(io::Cursor<Vec<u8>>, &'a mut u64);

    impl Read for Counted<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            *self.1 += n as u64;
            Ok(n)
        }
    }

    /// Every backend's whole read: a stated size over the bound is refused
    /// before a byte is read, a stream longer than it said (or of no
    /// stated size) is cut one byte past the bound, and the buffer never
    /// grows past that byte.
    #[test]
    fn a_whole_read_stops_one_byte_past_its_bound() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let read = |size: Option<u64>, max: u64| {
            let mut taken = 0;
            let r = read_bounded(
                Counted(io::Cursor::new(data.clone()), &mut taken),
                size,
                max,
            );
            (r, taken)
        };
        // Within the bound (a stated size may exceed the stream): read exactly.
        for (size, max) in [
            (Some(1000), 1000),
            (None, 1000),
            (Some(2000), 4096),
            (None, 1 << 20),
        ] {
            assert_eq!(read(size, max).0.unwrap(), data, "{size:?} {max}");
        }
        // Said too large: refused unread, naming size and bound.
        let (r, taken) = read(Some(1000), 999);
        let err = r.unwrap_err();
        assert_eq!((err.kind(), taken), (io::ErrorKind::InvalidData, 0));
        assert_eq!(
            err.to_string(),
            "it is 1000 bytes, more than any object atosnap reads whole (999): not one it wrote"
        );
        // Said small (or nothing), but the stream goes on: cut at 513.
        for size in [Some(10), None] {
            let (r, taken) = read(size, 512);
            let err = r.unwrap_err();
            assert_eq!((err.kind(), taken), (io::ErrorKind::InvalidData, 513));
            assert!(
                err.to_string().contains("more than 512 bytes")
                    && err.to_string().contains("not one it wrote"),
                "{err}"
            );
        }
        // Grown in bounded steps: a stream of exactly the bound, of no
        // stated size, ends in a buffer of the bound and one byte (a
        // doubling `Vec` would hold twice that).
        let big = vec![7u8; 3 << 20];
        let got = read_bounded(io::Cursor::new(big.clone()), None, 3 << 20).unwrap();
        assert_eq!(got, big);
        assert!(got.capacity() as u64 <= (3 << 20) + 1, "{}", got.capacity());
    }

    #[test]
    fn objects_and_their_folders_are_private_and_existing_folders_keep_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o751)).unwrap();
        create_private_dir(&root.join("tmp")).unwrap();
        let b = LocalBackend::new(&root);
        b.write_once("objects/ab/x.pack", b"pack").unwrap();
        b.write_dir_once("snapshots/s1", &[("manifest.bin", b"m".to_vec())])
            .unwrap();
        b.rename("objects/ab/x.pack", "quarantine/objects/ab/x.pack")
            .unwrap();
        for d in [
            "tmp",
            "objects",
            "objects/ab",
            "snapshots/s1",
            "quarantine/objects/ab",
        ] {
            assert_eq!(mode(&root.join(d)), 0o700, "{d}");
        }
        for f in ["snapshots/s1/manifest.bin", "quarantine/objects/ab/x.pack"] {
            assert_eq!(mode(&root.join(f)), 0o600, "{f}");
        }
        assert_eq!(mode(&root), 0o751);
    }

    #[test]
    fn local_failures_say_their_kind() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        let kind = |r: io::Result<Vec<u8>>| BackendErrorKind::of(&r.unwrap_err());
        // A missing object, whole or in part.
        assert_eq!(
            kind(b.read("objects/ab/none.pack")),
            BackendErrorKind::NotFound
        );
        assert_eq!(
            kind(b.read_range("objects/ab/none.pack", 0, 4)),
            BackendErrorKind::NotFound
        );
        assert_eq!(
            BackendErrorKind::of(&b.size("config.json").unwrap_err()),
            BackendErrorKind::NotFound
        );
        // A folder where an object should be: trying again will not help.
        fs::create_dir(dir.path().join("snapshots")).unwrap();
        assert_eq!(kind(b.read("snapshots")), BackendErrorKind::Permanent);
        // Permission denied, as the OS reports it (and for real where this
        // user cannot read past a mode of 0: root can).
        let denied = io::Error::from_raw_os_error(13);
        assert_eq!(denied.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(BackendErrorKind::of(&denied), BackendErrorKind::Permanent);
        fs::write(dir.path().join("config.json"), b"{}").unwrap();
        fs::set_permissions(
            dir.path().join("config.json"),
            fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        if let Err(e) = b.read("config.json") {
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
            assert_eq!(BackendErrorKind::of(&e), BackendErrorKind::Permanent);
        }
        assert_eq!(
            BackendErrorKind::of(&io::Error::from(io::ErrorKind::TimedOut)),
            BackendErrorKind::Transient
        );
    }

    #[test]
    fn a_tagged_error_keeps_its_io_kind_and_message() {
        let e = tagged(
            io::ErrorKind::Other,
            BackendErrorKind::Transient,
            "s3://b/x: slow down".into(),
        );
        assert_eq!(BackendErrorKind::of(&e), BackendErrorKind::Transient);
        assert_eq!(e.kind(), io::ErrorKind::Other);
        assert_eq!(e.to_string(), "s3://b/x: slow down");
        // Rewrapped by message only, the kind falls back to the io kind.
        let plain = io::Error::new(e.kind(), e.to_string());
        assert_eq!(BackendErrorKind::of(&plain), BackendErrorKind::Permanent);
    }

    #[test]
    fn durable_folders_are_made_with_their_parents() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_durable(&deep).unwrap();
        assert!(deep.is_dir());
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        // Existing: nothing to do.
        create_dir_durable(&deep).unwrap();
        // A file in the way is an error, not a loop.
        fs::write(dir.path().join("f"), b"").unwrap();
        assert!(create_dir_durable(&dir.path().join("f/g")).is_err());
    }
}
