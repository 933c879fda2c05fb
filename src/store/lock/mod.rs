//! The store lock. Commands that only add to the store hold it shared;
//! anything that deletes holds it exclusive. The guard types are the proof:
//! deleting functions take an `&ExclusiveLock`.
//!
//! A local store uses an OS file lock on `locks/store.lock` (flock
//! semantics, so a crashed process leaves no stale lock). A bucket has no
//! such thing: there each holder writes a lock object
//! `locks/<mode>-<host>-<pid>-<rand>.json` naming itself, refreshed by a
//! heartbeat thread and carrying an expiry, so a crashed holder's lock
//! lapses (see [`object`] below and docs/FORMAT.md).
//!
//! Beside the lock, each holder writes `locks/holder-<pid>-<rand>.json`
//! (pid, command, since) so a blocked command can say who is in the way:
//! once when it starts waiting (through the notifier the binary installs
//! with [`set_wait_notifier`], since the library never prints) and in the
//! [`Error::Locked`] it returns when `wait` runs out. Holder files of dead
//! processes are ignored and removed.

use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::store::names::Dir;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HolderInfo {
    pub pid: u32,
    pub command: String,
    pub mode: String,
    pub since: String,
}

pub enum Held {
    Flock { _file: File, info_path: PathBuf },
    Object(object::ObjectLock),
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Held::Flock { info_path, .. } = self {
            let _ = fs::remove_file(info_path);
        }
    }
}

impl Held {
    fn still_held(&self) -> Result<()> {
        match self {
            // An OS lock cannot lapse while its file is open.
            Held::Flock { .. } => Ok(()),
            Held::Object(lock) => lock.still_held(),
        }
    }
}

/// Held while adding to the store (create): gc cannot run meanwhile.
pub struct SharedLock {
    _held: Held,
}

impl SharedLock {
    /// Fails (`store_lock_lost`) when the lock may have lapsed at any time
    /// since it was taken: checked right before a snapshot is published,
    /// since a gc that ran meanwhile may have deleted packs the snapshot
    /// deduplicated against.
    pub fn still_held(&self) -> Result<()> {
        self._held.still_held()
    }
}

/// Held while deleting from the store (gc, cleanup --confirm, repair).
pub struct ExclusiveLock {
    _held: Held,
}

impl ExclusiveLock {
    /// Fails when the lock may have lapsed (a lock object whose heartbeat
    /// could not be written for most of its lifetime): checked before each
    /// deletion, so gc never deletes under a lock others may see expired.
    pub fn still_held(&self) -> Result<()> {
        self._held.still_held()
    }
}

/// The lock of a remote store, through lock objects.
pub fn object_lock(
    backend: std::sync::Arc<dyn crate::store::backend::Backend>,
    command: &str,
    wait: Duration,
    exclusive: bool,
) -> Result<Held> {
    object::acquire(
        backend,
        command,
        wait,
        exclusive,
        WAIT_NOTIFIER.get().copied(),
    )
    .map(Held::Object)
}

impl SharedLock {
    pub(crate) fn from_held(held: Held) -> SharedLock {
        SharedLock { _held: held }
    }
}

impl ExclusiveLock {
    pub(crate) fn from_held(held: Held) -> ExclusiveLock {
        ExclusiveLock { _held: held }
    }
}

static WAIT_NOTIFIER: OnceLock<fn(&str)> = OnceLock::new();

/// Installs the function told (once per wait) that a command is blocked,
/// who holds the lock, and how long it will wait. First call wins.
pub fn set_wait_notifier(notify: fn(&str)) {
    let _ = WAIT_NOTIFIER.set(notify);
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Shared,
    SharedReader,
    Exclusive,
}

pub fn lock_shared(store_root: &Path, command: &str, wait: Duration) -> Result<SharedLock> {
    Ok(SharedLock {
        _held: acquire(store_root, command, wait, Mode::Shared)?,
    })
}

/// The shared lock for a command that only reads (validate, verify, drill):
/// it works on a store the caller may read but not write (a monitoring
/// user, a read-only mount), where flock(2) on a read-only descriptor still
/// keeps gc out.
pub fn lock_shared_reader(store_root: &Path, command: &str, wait: Duration) -> Result<SharedLock> {
    Ok(SharedLock {
        _held: acquire(store_root, command, wait, Mode::SharedReader)?,
    })
}

pub fn lock_exclusive(store_root: &Path, command: &str, wait: Duration) -> Result<ExclusiveLock> {
    Ok(ExclusiveLock {
        _held: acquire(store_root, command, wait, Mode::Exclusive)?,
    })
}

fn acquire(store_root: &Path, command: &str, wait: Duration, mode: Mode) -> Result<Held> {
    let dir = store_root.join(Dir::Locks.name());
    super::backend::create_private_dir_all(&dir).ctx("create", &dir)?;
    let path = dir.join("store.lock");
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(super::backend::PRIVATE_FILE_MODE)
        .open(&path)
    {
        Ok(f) => f,
        // A reader may audit a store it cannot write (a monitoring user, a
        // read-only mount): flock(2) needs no write access to the file.
        Err(e) if mode == Mode::SharedReader && path.exists() => {
            File::open(&path).map_err(|_| Error::io("open lock file", &path, e))?
        }
        Err(e) => return Err(Error::io("open lock file", &path, e)),
    };
    let start = Instant::now();
    let mut told = false;
    loop {
        let attempt = match mode {
            Mode::Shared | Mode::SharedReader => file.try_lock_shared(),
            Mode::Exclusive => file.try_lock(),
        };
        match attempt {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                if !told && !wait.is_zero() {
                    told = true;
                    if let Some(notify) = WAIT_NOTIFIER.get() {
                        notify(&format!(
                            "store is locked by {}; `{command}` waits up to {}s (--lock-wait)",
                            describe_holders(&dir),
                            wait.as_secs()
                        ));
                    }
                }
                crate::os::check_interrupted()?;
                if start.elapsed() >= wait {
                    return Err(Error::Locked {
                        holders: describe_holders(&dir),
                        waited_secs: wait.as_secs(),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("lock", &path, e)),
        }
    }
    // Holder files of processes that died holding the lock are stale.
    let _ = current_holders(store_root);
    let info = HolderInfo {
        pid: std::process::id(),
        command: command.to_string(),
        mode: if mode == Mode::Exclusive {
            "exclusive"
        } else {
            "shared"
        }
        .to_string(),
        since: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let info_path = dir.join(format!(
        "holder-{}-{:08x}.json",
        info.pid,
        rand::random::<u32>()
    ));
    // Best effort: the lock itself is what protects the store.
    let _ = super::backend::create_private_file(&info_path)
        .and_then(|mut f| f.write_all(&serde_json::to_vec(&info).unwrap_or_default()));
    Ok(Held::Flock {
        _file: file,
        info_path,
    })
}

/// Live holders from the info files beside the lock; stale files of dead
/// processes are removed on the way.
pub fn current_holders(store_root: &Path) -> Vec<HolderInfo> {
    let dir = store_root.join(Dir::Locks.name());
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(&dir) else {
        return out;
    };
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("holder-") {
            continue;
        }
        let Ok(bytes) = fs::read(entry.path()) else {
            continue;
        };
        let Ok(info) = serde_json::from_slice::<HolderInfo>(&bytes) else {
            continue;
        };
        if crate::os::process_alive(info.pid) {
            out.push(info);
        } else {
            let _ = fs::remove_file(entry.path());
        }
    }
    out
}

fn describe_holders(dir: &Path) -> String {
    let root = dir.parent().unwrap_or(dir);
    let holders = current_holders(root);
    if holders.is_empty() {
        return "another process (holder unknown)".to_string();
    }
    holders
        .iter()
        .map(|h| {
            format!(
                "pid {} ({} lock, `{}`, since {})",
                h.pid, h.mode, h.command, h.since
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub mod object;

#[cfg(test)]
mod tests {
    use super::object::{acquire, acquire_with, live_locks, How, LockRecord};
    use super::{Held, SharedLock};
    use crate::error::Error;
    use crate::stamp::Stamp;
    use crate::store::backend::{Backend, LocalBackend};
    use crate::store::manifest::{Manifest, MANIFEST_VERSION};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn backend() -> (tempfile::TempDir, Arc<dyn Backend>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let b: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()));
        (dir, b)
    }

    #[test]
    fn lock_objects_share_and_exclude() {
        let (_dir, b) = backend();
        let s1 = acquire(b.clone(), "create", Duration::ZERO, false, None).unwrap();
        let s2 = acquire(b.clone(), "create", Duration::ZERO, false, None).unwrap();
        // An exclusive lock waits for both shared holders, then names them.
        let started = Instant::now();
        let err = acquire(b.clone(), "gc", Duration::from_secs(1), true, None)
            .err()
            .unwrap();
        assert!(started.elapsed() >= Duration::from_secs(1));
        match err {
            Error::Locked { holders, .. } => assert!(holders.contains("shared lock of `create`")),
            other => panic!("{other}"),
        }
        // A refused contender leaves no object behind.
        assert_eq!(live_locks(b.as_ref(), "").unwrap().len(), 2);
        drop((s1, s2));
        assert!(live_locks(b.as_ref(), "").unwrap().is_empty());
        let x = acquire(b.clone(), "gc", Duration::ZERO, true, None).unwrap();
        assert!(x.still_held().is_ok());
        assert!(acquire(b.clone(), "create", Duration::ZERO, false, None).is_err());
        drop(x);
        assert!(acquire(b.clone(), "create", Duration::ZERO, false, None).is_ok());
    }

    /// An exclusive lock of `host`'s gc whose deadline passed long ago.
    fn foreign_exclusive(host: &str, ttl_secs: u64) -> LockRecord {
        LockRecord {
            owner: format!("locks/exclusive-{host}-1-0.json"),
            host: host.into(),
            pid: 1,
            command: "gc --confirm".into(),
            mode: "exclusive".into(),
            since: "2026-01-01T00:00:00Z".into(),
            expires_at: 1,
            ttl_secs,
        }
    }

    #[test]
    fn an_expired_lock_of_a_dead_holder_is_ignored_and_removed() {
        let (_dir, b) = backend();
        let dead = foreign_exclusive("deadhost", 300);
        let name = "locks/exclusive-deadhost-1-0.json";
        b.replace(name, &serde_json::to_vec(&dead).unwrap())
            .unwrap();
        // Written just now by the storage's clock: live, whatever its
        // holder's clock wrote (a host whose clock runs behind).
        let err = acquire(b.clone(), "create", Duration::ZERO, false, None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("deadhost"), "{err}");
        // Last written longer than its lifetime ago by both clocks: gone.
        let old = filetime::FileTime::from_unix_time(unix_secs() - 301, 0);
        filetime::set_file_mtime(_dir.path().join(name), old).unwrap();
        let held = acquire(b.clone(), "create", Duration::ZERO, false, None).unwrap();
        assert!(!b.exists(name).unwrap(), "the expired lock is cleared");
        drop(held);
        // A live one (far future) blocks.
        let live = LockRecord {
            expires_at: u64::MAX / 2,
            ..dead
        };
        b.replace(name, &serde_json::to_vec(&live).unwrap())
            .unwrap();
        let err = acquire(b.clone(), "create", Duration::ZERO, false, None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("deadhost"), "{err}");
    }

    fn unix_secs() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    /// A host whose clock runs 6 minutes behind the others' writes lock
    /// deadlines they see passed. Its lock stays live by the storage's
    /// clock (its object was written a moment ago), so a gc elsewhere
    /// waits instead of removing it and taking the store.
    #[test]
    fn a_lock_written_by_a_host_whose_clock_is_behind_still_excludes() {
        let (_dir, b) = backend();
        let behind: super::object::Clock = Arc::new(|| (unix_secs() as u64 - 360) * 1000);
        let held =
            acquire_with(b.clone(), "create", how(Duration::from_secs(300), behind)).unwrap();
        let gc = acquire(b.clone(), "gc --confirm", Duration::ZERO, true, None);
        assert!(matches!(gc, Err(Error::Locked { .. })), "gc took the store");
        assert!(held.still_held().is_ok());
    }

    /// A lock whose object another process removed (it judged it expired)
    /// is lost for good: `still_held` says so before a publish or a
    /// deletion, and the publish writes nothing.
    #[test]
    fn a_lock_whose_object_was_removed_is_lost_and_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = local_store(dir.path());
        let b = store.backend_handle();
        let clock = super::object::system_clock();
        let held = acquire_with(b.clone(), "create", how(Duration::from_secs(300), clock)).unwrap();
        let lock = SharedLock::from_held(Held::Object(held));
        let own = live_locks(b.as_ref(), "").unwrap()[0].owner.clone();
        b.delete(&own).unwrap();
        let err = lock.still_held().unwrap_err();
        assert_eq!(err.code(), "store_lock_lost", "{err}");
        assert!(
            err.to_string().contains("removed by another process"),
            "{err}"
        );
        let stamp = Stamp::parse("20260411T120000Z").unwrap();
        let mut meta = serde_json::json!({});
        let err = store
            .publish_snapshot(&lock, &stamp, &mut empty_manifest(&stamp), &mut meta)
            .unwrap_err();
        assert_eq!(err.code(), "store_lock_lost");
        assert!(store.list_snapshots().unwrap().stamps.is_empty());
    }

    /// A lock object claiming an absurd lifetime is live, and crashes no
    /// reader (its time plus the lifetime overflows).
    #[test]
    fn a_lock_object_with_a_huge_lifetime_is_live_and_read_without_panic() {
        let (_dir, b) = backend();
        let rec = foreign_exclusive("odd", u64::MAX);
        b.replace(&rec.owner.clone(), &serde_json::to_vec(&rec).unwrap())
            .unwrap();
        let err = acquire(b.clone(), "create", Duration::ZERO, false, None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("odd"), "{err}");
    }

    /// The heartbeat notices a removed object by itself: a lock nobody
    /// asks about is not revived by its next refresh.
    #[test]
    fn the_heartbeat_stops_at_a_removed_object() {
        let (_dir, b) = backend();
        let held = acquire_with(
            b.clone(),
            "create",
            how(Duration::from_secs(2), super::object::system_clock()),
        )
        .unwrap();
        let own = live_locks(b.as_ref(), "").unwrap()[0].owner.clone();
        b.delete(&own).unwrap();
        std::thread::sleep(Duration::from_millis(1200));
        assert!(
            !b.exists(&own).unwrap(),
            "the heartbeat wrote the lock again"
        );
        assert_eq!(held.still_held().unwrap_err().code(), "store_lock_lost");
    }

    /// A wall clock that the test moves: `base` plus the offset.
    fn test_clock() -> (Arc<AtomicU64>, super::object::Clock) {
        let offset = Arc::new(AtomicU64::new(0));
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let o = offset.clone();
        (offset, Arc::new(move || base + o.load(Ordering::SeqCst)))
    }

    fn how(ttl: Duration, clock: super::object::Clock) -> How {
        How {
            wait: Duration::ZERO,
            exclusive: false,
            notify: None,
            ttl,
            clock,
        }
    }

    fn local_store(dir: &std::path::Path) -> crate::store::Store {
        crate::store::Store::init(
            &crate::store::location::StoreAddress::local(dir),
            &crate::store::InitOptions::default(),
        )
        .unwrap()
    }

    fn empty_manifest(stamp: &Stamp) -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            stamp: stamp.to_string(),
            created_at: "2026-04-11T12:00:00Z".into(),
            tags: vec![],
            hostname: "h".into(),
            chroma_included: false,
            capture_errors: vec![],
            entries: vec![],
        }
    }

    /// A suspended host: `Instant` stands still, the wall clock moves on
    /// past the lock's deadline. The lock is lost, publish refuses with
    /// `store_lock_lost` and writes nothing.
    #[test]
    fn a_lock_past_its_wall_clock_deadline_is_lost_and_publish_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let store = local_store(dir.path());
        let (offset, clock) = test_clock();
        let ttl = Duration::from_secs(300);
        let held = acquire_with(store.backend_handle(), "create", how(ttl, clock)).unwrap();
        let lock = SharedLock::from_held(Held::Object(held));
        assert!(lock.still_held().is_ok());
        offset.store(ttl.as_millis() as u64, Ordering::SeqCst); // slept a lifetime
        let err = lock.still_held().unwrap_err();
        assert_eq!(err.code(), "store_lock_lost", "{err}");
        assert!(err.to_string().contains("300s"), "{err}");

        let stamp = Stamp::parse("20260411T120000Z").unwrap();
        let mut manifest = empty_manifest(&stamp);
        let mut meta = serde_json::json!({});
        let err = store
            .publish_snapshot(&lock, &stamp, &mut manifest, &mut meta)
            .unwrap_err();
        assert_eq!(err.code(), "store_lock_lost");
        assert!(store.list_snapshots().unwrap().stamps.is_empty());
        // The loss sticks, even with the clock back in range.
        offset.store(0, Ordering::SeqCst);
        assert!(lock.still_held().is_err());
    }

    /// A backend whose writes fail while `down` is set (an outage), and
    /// that runs `on_barrier` when asked to wait for its uploads.
    struct Flaky {
        inner: LocalBackend,
        down: AtomicBool,
        on_barrier: Option<Box<dyn Fn() + Send + Sync>>,
    }

    impl Flaky {
        fn check(&self) -> std::io::Result<()> {
            if self.down.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("storage unreachable"));
            }
            Ok(())
        }
    }

    impl Backend for Flaky {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn display_name(&self, name: &str) -> std::path::PathBuf {
            self.inner.display_name(name)
        }
        fn exists(&self, name: &str) -> std::io::Result<bool> {
            self.inner.exists(name)
        }
        fn read(&self, name: &str) -> std::io::Result<Vec<u8>> {
            self.inner.read(name)
        }
        fn read_range(&self, name: &str, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
            self.inner.read_range(name, offset, len)
        }
        fn size(&self, name: &str) -> std::io::Result<u64> {
            self.inner.size(name)
        }
        fn stat(&self, name: &str) -> std::io::Result<crate::store::backend::ObjectStat> {
            self.inner.stat(name)
        }
        fn list_files(&self, dir: &str) -> std::io::Result<Vec<crate::store::backend::ListEntry>> {
            self.inner.list_files(dir)
        }
        fn list_children(&self, dir: &str) -> std::io::Result<Vec<String>> {
            self.inner.list_children(dir)
        }
        fn write_once(&self, name: &str, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.inner.write_once(name, data)
        }
        fn replace(&self, name: &str, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.inner.replace(name, data)
        }
        fn put_file(&self, name: &str, local: &std::path::Path) -> std::io::Result<()> {
            self.check()?;
            self.inner.put_file(name, local)
        }
        fn write_dir_once(&self, dir: &str, files: &[(&str, Vec<u8>)]) -> std::io::Result<bool> {
            self.check()?;
            self.inner.write_dir_once(dir, files)
        }
        fn write_dir_once_checked(
            &self,
            dir: &str,
            files: &[(&str, Vec<u8>)],
            may_commit: &dyn Fn() -> std::io::Result<()>,
        ) -> std::io::Result<bool> {
            self.check()?;
            self.inner.write_dir_once_checked(dir, files, may_commit)
        }
        fn delete(&self, name: &str) -> std::io::Result<()> {
            self.check()?;
            self.inner.delete(name)
        }
        fn delete_dir(&self, dir: &str) -> std::io::Result<()> {
            self.check()?;
            self.inner.delete_dir(dir)
        }
        fn tmp_dir(&self) -> std::path::PathBuf {
            self.inner.tmp_dir()
        }
        fn barrier(&self) -> std::io::Result<()> {
            if let Some(hook) = &self.on_barrier {
                hook();
            }
            self.inner.barrier()
        }
    }

    /// The last packs of a create still uploading when it publishes (a
    /// bucket under `--limit-upload`, or retrying): the host is suspended
    /// meanwhile and the lock lapses. The lock is judged after the uploads,
    /// so nothing is published.
    #[test]
    fn a_lock_that_lapses_while_the_last_packs_upload_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = local_store(dir.path());
        let (offset, clock) = test_clock();
        let ttl = Duration::from_secs(300);
        let slow: Arc<dyn Backend> = Arc::new(Flaky {
            inner: LocalBackend::new(dir.path()),
            down: AtomicBool::new(false),
            on_barrier: Some(Box::new(move || {
                offset.store(ttl.as_millis() as u64, Ordering::SeqCst)
            })),
        });
        let store = store.with_backend(slow.clone());
        let held = acquire_with(slow, "create", how(ttl, clock)).unwrap();
        let lock = SharedLock::from_held(Held::Object(held));
        assert!(lock.still_held().is_ok(), "held when the capture ended");
        let stamp = Stamp::parse("20260411T120000Z").unwrap();
        let err = store
            .publish_snapshot(
                &lock,
                &stamp,
                &mut empty_manifest(&stamp),
                &mut serde_json::json!({}),
            )
            .unwrap_err();
        assert_eq!(err.code(), "store_lock_lost", "{err}");
        assert!(store.list_snapshots().unwrap().stamps.is_empty());
    }

    /// The heartbeat cannot write for longer than the lifetime (others may
    /// see the lock expire and take the store), then the storage is back
    /// and the next refresh succeeds: the lock stays lost all the same.
    #[test]
    fn a_refresh_after_a_gap_does_not_revive_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let flaky = Arc::new(Flaky {
            inner: LocalBackend::new(dir.path()),
            down: AtomicBool::new(false),
            on_barrier: None,
        });
        let b: Arc<dyn Backend> = flaky.clone();
        let clock = super::object::system_clock();
        let held = acquire_with(b, "create", how(Duration::from_secs(2), clock)).unwrap();
        std::thread::sleep(Duration::from_millis(700));
        assert!(
            held.still_held().is_ok(),
            "refreshed while the storage is up"
        );
        flaky.down.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(2300));
        flaky.down.store(false, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(1200)); // heartbeats could write again
        let err = held.still_held().unwrap_err();
        assert_eq!(err.code(), "store_lock_lost", "{err}");
    }

    #[test]
    fn the_heartbeat_keeps_the_lock_alive() {
        std::env::set_var("ATOSNAP_LOCK_TTL_SECS", "2");
        let (_dir, b) = backend();
        let held = acquire(b.clone(), "create", Duration::ZERO, true, None).unwrap();
        std::thread::sleep(Duration::from_millis(3500));
        // Past the first deadline, the refreshed object still blocks.
        assert!(acquire(b.clone(), "gc", Duration::ZERO, true, None).is_err());
        assert!(held.still_held().is_ok());
        drop(held);
        std::env::remove_var("ATOSNAP_LOCK_TTL_SECS");
    }
}
