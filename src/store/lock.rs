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
    let dir = store_root.join("locks");
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
    let dir = store_root.join("locks");
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

pub mod object {
    //! Lock objects for stores without OS locks (buckets). A holder writes
    //! `locks/<mode>-<owner>.json`, then lists `locks/`: a shared holder
    //! yields to any live exclusive lock, an exclusive holder to any live
    //! lock. On a conflict it removes its own object and retries after a
    //! random pause, so two contenders never both proceed (each sees the
    //! other's object, written before its own listing). A heartbeat thread
    //! rewrites the object every quarter of its time to live; a lock whose
    //! `expires_at` has passed belongs to a dead or cut-off process and is
    //! ignored (and removed). Expiry compares the holder's clock with the
    //! reader's: hosts sharing a store keep their clocks in sync (NTP).
    //!
    //! The holder judges its own lock by the same wall clock, never by
    //! `Instant` (which stops while the host is suspended): it counts as
    //! held while the deadline of its last written object is more than a
    //! quarter of the lifetime away. Once that failed (the storage was
    //! unreachable, the host slept) the lock stays lost for good, even if
    //! a later refresh succeeds: others may have seen it expire and deleted
    //! what it protected in the gap.

    use serde::{Deserialize, Serialize};
    use std::sync::{Arc, Condvar, Mutex};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant, SystemTime};

    /// Wall-clock time in Unix milliseconds (injectable for tests).
    pub(crate) type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

    pub(crate) fn system_clock() -> Clock {
        Arc::new(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
        })
    }

    use crate::error::{Error, Result};
    use crate::store::backend::Backend;

    /// A lock object's content.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub struct LockRecord {
        pub owner: String,
        pub host: String,
        pub pid: u32,
        pub command: String,
        pub mode: String,
        pub since: String,
        /// Unix seconds: after this the lock counts as abandoned.
        pub expires_at: u64,
    }

    /// How long a lock object lives without a heartbeat:
    /// `ATOSNAP_LOCK_TTL_SECS`, default 300 s.
    pub fn ttl() -> Duration {
        let secs = std::env::var("ATOSNAP_LOCK_TTL_SECS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&s| s >= 2)
            .unwrap_or(300);
        Duration::from_secs(secs)
    }

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    pub use crate::os::hostname;

    struct Beat {
        stop: Mutex<bool>,
        wake: Condvar,
        clock: Clock,
        ttl_ms: u64,
        held: Mutex<Tenure>,
    }

    /// What the holder knows of its own lock, in wall-clock milliseconds.
    struct Tenure {
        /// When the last successful write began.
        refreshed_at: u64,
        /// Until when others see that write live.
        live_until: u64,
        /// Set, for good, once the lock may have lapsed: how long it had
        /// gone without a refresh then.
        lost_after: Option<u64>,
    }

    impl Beat {
        /// `Err(ms without a refresh)` once the lock may have lapsed.
        /// Others judge expiry by the written deadline: stop a quarter of
        /// the lifetime before it.
        fn check(&self) -> std::result::Result<(), u64> {
            let now = (self.clock)();
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(stale) = held.lost_after {
                return Err(stale);
            }
            if now + self.ttl_ms / 4 >= held.live_until {
                let stale = now.saturating_sub(held.refreshed_at);
                held.lost_after = Some(stale);
                return Err(stale);
            }
            Ok(())
        }

        /// A write begun at `began` succeeded: others see it live for a
        /// lifetime, unless it landed after the previous one had expired
        /// (a gap: the lock is lost).
        fn refreshed(&self, began: u64) {
            let landed = (self.clock)();
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            if held.lost_after.is_some() {
                return;
            }
            if landed >= held.live_until {
                held.lost_after = Some(landed.saturating_sub(held.refreshed_at));
                return;
            }
            held.refreshed_at = began;
            held.live_until = began + self.ttl_ms;
        }
    }

    pub struct ObjectLock {
        backend: Arc<dyn Backend>,
        name: String,
        beat: Arc<Beat>,
        thread: Option<JoinHandle<()>>,
    }

    impl ObjectLock {
        /// Fails (`store_lock_lost`) when the lock may have lapsed at any
        /// time since it was taken.
        pub fn still_held(&self) -> Result<()> {
            self.beat.check().map_err(|stale_ms| Error::LockLost {
                name: self.name.clone(),
                stale_secs: stale_ms / 1000,
            })
        }
    }

    impl Drop for ObjectLock {
        fn drop(&mut self) {
            *self.beat.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
            self.beat.wake.notify_all();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            let _ = self.backend.delete(&self.name);
        }
    }

    fn record(
        owner: &str,
        command: &str,
        mode: &str,
        since: &str,
        now_ms: u64,
        ttl: Duration,
    ) -> LockRecord {
        LockRecord {
            owner: owner.to_string(),
            host: hostname(),
            pid: std::process::id(),
            command: command.to_string(),
            mode: mode.to_string(),
            since: since.to_string(),
            // Others see it live while their `now` in whole seconds is at
            // most this: at least a lifetime after `now_ms`.
            expires_at: now_ms / 1000 + ttl.as_secs(),
        }
    }

    fn write(backend: &dyn Backend, name: &str, rec: &LockRecord) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        backend.replace(name, &bytes)
    }

    /// Live lock objects other than `own`; expired ones are removed.
    pub fn live_locks(backend: &dyn Backend, own: &str) -> Result<Vec<LockRecord>> {
        let list = backend
            .list_files("locks")
            .map_err(|e| Error::io("list", backend.display_name("locks"), e))?;
        let now = unix_now();
        let mut out = Vec::new();
        for entry in list {
            if entry.name == own || !entry.name.ends_with(".json") {
                continue;
            }
            let rec = match backend.read(&entry.name) {
                Ok(bytes) => serde_json::from_slice::<LockRecord>(&bytes).ok(),
                // Removed between the listing and the read: released.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("read", backend.display_name(&entry.name), e)),
            };
            match rec {
                Some(rec) if rec.expires_at >= now => out.push(rec),
                Some(_) => {
                    let _ = backend.delete(&entry.name);
                }
                // Unreadable: a lock object being written, or junk. Junk
                // older than a lifetime is ignored, anything newer counts
                // as an exclusive lock of an unknown holder.
                None => {
                    let young = entry
                        .modified
                        .and_then(|m| m.elapsed().ok())
                        .is_none_or(|age| age < ttl());
                    if young {
                        out.push(LockRecord {
                            owner: entry.name.clone(),
                            host: "?".into(),
                            pid: 0,
                            command: "?".into(),
                            mode: "exclusive".into(),
                            since: "?".into(),
                            expires_at: now,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn describe(holders: &[LockRecord]) -> String {
        if holders.is_empty() {
            return "another process (holder unknown)".into();
        }
        holders
            .iter()
            .map(|h| {
                format!(
                    "{} lock of `{}` by pid {} on {} (since {}, lock object {})",
                    h.mode, h.command, h.pid, h.host, h.since, h.owner
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn acquire(
        backend: Arc<dyn Backend>,
        command: &str,
        wait: Duration,
        exclusive: bool,
        notify: Option<fn(&str)>,
    ) -> Result<ObjectLock> {
        let how = How {
            wait,
            exclusive,
            notify,
            ttl: ttl(),
            clock: system_clock(),
        };
        acquire_with(backend, command, how)
    }

    /// How to take a lock object.
    pub(crate) struct How {
        pub wait: Duration,
        pub exclusive: bool,
        pub notify: Option<fn(&str)>,
        pub ttl: Duration,
        pub clock: Clock,
    }

    pub(crate) fn acquire_with(
        backend: Arc<dyn Backend>,
        command: &str,
        how: How,
    ) -> Result<ObjectLock> {
        let How {
            wait,
            exclusive,
            notify,
            ttl,
            clock,
        } = how;
        let mode = if exclusive { "exclusive" } else { "shared" };
        let owner = format!(
            "{}-{}-{:08x}",
            hostname(),
            std::process::id(),
            rand::random::<u32>()
        );
        let name = format!("locks/{mode}-{owner}.json");
        let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let start = Instant::now();
        let mut told = false;
        loop {
            let began = clock();
            let rec = record(&name, command, mode, &since, began, ttl);
            write(backend.as_ref(), &name, &rec)
                .map_err(|e| Error::io("write lock object", backend.display_name(&name), e))?;
            let others = match live_locks(backend.as_ref(), &name) {
                Ok(o) => o,
                Err(e) => {
                    let _ = backend.delete(&name);
                    return Err(e);
                }
            };
            let blocking: Vec<LockRecord> = others
                .into_iter()
                .filter(|o| exclusive || o.mode == "exclusive")
                .collect();
            if blocking.is_empty() {
                return Ok(start_heartbeat(backend, name, rec, ttl, clock, began));
            }
            let _ = backend.delete(&name);
            crate::os::check_interrupted()?;
            if start.elapsed() >= wait {
                return Err(Error::Locked {
                    holders: describe(&blocking),
                    waited_secs: wait.as_secs(),
                });
            }
            if !told {
                told = true;
                if let Some(notify) = notify {
                    notify(&format!(
                        "store is locked by {}; `{command}` waits up to {}s (--lock-wait)",
                        describe(&blocking),
                        wait.as_secs()
                    ));
                }
            }
            // A random pause, so two contenders that saw each other do not
            // retry in step forever.
            let pause = 300 + rand::random::<u64>() % 700;
            std::thread::sleep(Duration::from_millis(pause));
        }
    }

    fn start_heartbeat(
        backend: Arc<dyn Backend>,
        name: String,
        rec: LockRecord,
        ttl: Duration,
        clock: Clock,
        written_at: u64,
    ) -> ObjectLock {
        let ttl_ms = ttl.as_millis() as u64;
        let beat = Arc::new(Beat {
            stop: Mutex::new(false),
            wake: Condvar::new(),
            clock,
            ttl_ms,
            held: Mutex::new(Tenure {
                refreshed_at: written_at,
                live_until: written_at + ttl_ms,
                lost_after: None,
            }),
        });
        let thread = {
            let (backend, name, beat) = (backend.clone(), name.clone(), beat.clone());
            std::thread::Builder::new()
                .name("atosnap-lock-heartbeat".into())
                .spawn(move || heartbeat(backend.as_ref(), &name, rec, ttl, &beat))
                .ok()
        };
        ObjectLock {
            backend,
            name,
            beat,
            thread,
        }
    }

    fn heartbeat(
        backend: &dyn Backend,
        name: &str,
        mut rec: LockRecord,
        ttl: Duration,
        beat: &Beat,
    ) {
        let every = (ttl / 4).max(Duration::from_millis(500));
        let mut stop = beat.stop.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            // Checked before waiting too: a stop signalled before this
            // thread first waits must not be missed.
            if *stop {
                return;
            }
            let (guard, _) = beat
                .wake
                .wait_timeout(stop, every)
                .unwrap_or_else(|e| e.into_inner());
            stop = guard;
            if *stop {
                return;
            }
            // A lock that may have lapsed is not revived: others may have
            // taken the store meanwhile. It stays lost; the object is left
            // to expire (and is deleted when the guard drops).
            if beat.check().is_err() {
                tracing::warn!("lock object {name} lapsed: no longer refreshed");
                return;
            }
            let began = (beat.clock)();
            rec.expires_at = began / 1000 + ttl.as_secs();
            match write(backend, name, &rec) {
                Ok(()) => beat.refreshed(began),
                Err(e) => tracing::warn!("could not refresh lock object {name}: {e}"),
            }
        }
    }
}

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

    #[test]
    fn an_expired_lock_of_a_dead_holder_is_ignored_and_removed() {
        let (_dir, b) = backend();
        let dead = LockRecord {
            owner: "locks/exclusive-deadhost-1-0.json".into(),
            host: "deadhost".into(),
            pid: 1,
            command: "gc --confirm".into(),
            mode: "exclusive".into(),
            since: "2026-01-01T00:00:00Z".into(),
            expires_at: 1,
        };
        let name = "locks/exclusive-deadhost-1-0.json";
        b.replace(name, &serde_json::to_vec(&dead).unwrap())
            .unwrap();
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

    /// A suspended host: `Instant` stands still, the wall clock moves on
    /// past the lock's deadline. The lock is lost, publish refuses with
    /// `store_lock_lost` and writes nothing.
    #[test]
    fn a_lock_past_its_wall_clock_deadline_is_lost_and_publish_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::init(dir.path()).unwrap();
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
        let mut manifest = Manifest {
            version: MANIFEST_VERSION,
            stamp: stamp.to_string(),
            created_at: "2026-04-11T12:00:00Z".into(),
            tags: vec![],
            hostname: "h".into(),
            chroma_included: false,
            capture_errors: vec![],
            entries: vec![],
        };
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

    /// A backend whose writes fail while `down` is set (an outage).
    struct Flaky {
        inner: LocalBackend,
        down: AtomicBool,
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
