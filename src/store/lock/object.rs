//! Lock objects for stores without OS locks (buckets). A holder writes
//! `locks/<mode>-<owner>.json`, then lists `locks/`: a shared holder
//! yields to any live exclusive lock, an exclusive holder to any live
//! lock. On a conflict it removes its own object and retries after a
//! random pause, so two contenders never both proceed (each sees the
//! other's object, written before its own listing). A heartbeat thread
//! rewrites the object every quarter of its time to live; a lock whose
//! `expires_at` has passed belongs to a dead or cut-off process and is
//! ignored (and removed). Expiry is judged by two clocks, and a lock is
//! live while either says so: the holder's (its written `expires_at`
//! against the reader's clock) and the storage's (the object's
//! modification time plus its lifetime against that of the reader's own
//! object, just written). A host whose clock runs behind others' would
//! otherwise write deadlines that others see passed, and lose its lock
//! to them while it works.
//!
//! A holder also checks that its object is still there, before each
//! refresh and whenever it is asked whether it still holds the lock
//! (before a publish or a deletion; a sighting stands for a few seconds):
//! one removed by another process (which judged it expired) is lost for
//! good, and the heartbeat stops writing it once it has seen it gone (the
//! check and the write are two requests: S3 has no conditional write
//! here to make them one).
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
use crate::store::backend::{Backend, BackendErrorKind, ListEntry};
use crate::store::names::{Dir, Object};

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
    /// The holder's lifetime of the object (`ATOSNAP_LOCK_TTL_SECS`):
    /// how long after its last write others must count it live. 0 in
    /// objects of older versions (the reader's own lifetime is used).
    #[serde(default)]
    pub ttl_secs: u64,
}

/// The longest lifetime of a lock object: a day (a longer one, set or
/// read from an object, is cut to it).
const MAX_TTL_SECS: u64 = 86_400;

/// How long a lock object lives without a heartbeat:
/// `ATOSNAP_LOCK_TTL_SECS` (2 s to a day), default 300 s.
pub fn ttl() -> Duration {
    let secs = std::env::var("ATOSNAP_LOCK_TTL_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&s| (2..=MAX_TTL_SECS).contains(&s))
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
    /// When the object was last seen still there ([`Beat::confirm`]).
    seen_at: Mutex<Option<u64>>,
}

/// What the holder knows of its own lock, in wall-clock milliseconds.
struct Tenure {
    /// When the last successful write began.
    refreshed_at: u64,
    /// Until when others see that write live.
    live_until: u64,
    /// Set, for good, once the lock may have lapsed.
    lost: Option<Lapse>,
}

/// How a lock was lost.
#[derive(Clone, Copy, Debug)]
enum Lapse {
    /// It went this many ms without a refresh: others may have seen it
    /// expire.
    Stale(u64),
    /// Its object was removed by another process.
    Removed,
}

impl Lapse {
    fn why(self) -> String {
        match self {
            Lapse::Stale(ms) => format!(
                "was not refreshed for {}s (storage unreachable, or the host suspended?)",
                ms / 1000
            ),
            Lapse::Removed => "was removed by another process (which judged it expired: \
                 is this host's clock behind the others'?)"
                .into(),
        }
    }
}

impl Beat {
    /// `Err` once the lock may have lapsed. Others judge expiry by the
    /// written deadline: stop a quarter of the lifetime before it.
    fn check(&self) -> std::result::Result<(), Lapse> {
        let now = (self.clock)();
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lapse) = held.lost {
            return Err(lapse);
        }
        if now + self.ttl_ms / 4 >= held.live_until {
            let lapse = Lapse::Stale(now.saturating_sub(held.refreshed_at));
            held.lost = Some(lapse);
            return Err(lapse);
        }
        Ok(())
    }

    /// The lock's object is gone: lost for good.
    fn removed(&self) -> Lapse {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        *held.lost.get_or_insert(Lapse::Removed)
    }

    /// Is the object still there? A lock whose object another process
    /// removed is lost ([`Lapse::Removed`]); a failed check is an error
    /// of its own (the storage's), and loses nothing. Asked of the
    /// storage at most once per [`Beat::recheck_ms`]: gc asks before each
    /// of thousands of deletions, and another process removes the object
    /// only once it went a whole lifetime unrefreshed.
    fn confirm(&self, backend: &dyn Backend, name: &str) -> Result<()> {
        self.check().map_err(|lapse| lost(name, lapse))?;
        let now = (self.clock)();
        let mut seen_at = self.seen_at.lock().unwrap_or_else(|e| e.into_inner());
        if seen_at.is_some_and(|t| now.saturating_sub(t) < self.recheck_ms()) {
            return Ok(());
        }
        match backend.exists(name) {
            Ok(true) => {
                *seen_at = Some(now);
                Ok(())
            }
            Ok(false) => Err(lost(name, self.removed())),
            Err(e) => Err(Error::io(
                "check lock object",
                backend.display_name(name),
                e,
            )),
        }
    }

    /// How long a sighting of the object stands: an eighth of the
    /// lifetime, at most 5 s.
    fn recheck_ms(&self) -> u64 {
        (self.ttl_ms / 8).min(5_000)
    }

    /// A write begun at `began` succeeded: others see it live for a
    /// lifetime, unless it landed after the previous one had expired
    /// (a gap: the lock is lost).
    fn refreshed(&self, began: u64) {
        let landed = (self.clock)();
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.lost.is_some() {
            return;
        }
        if landed >= held.live_until {
            held.lost = Some(Lapse::Stale(landed.saturating_sub(held.refreshed_at)));
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

fn lost(name: &str, lapse: Lapse) -> Error {
    Error::LockLost {
        name: name.to_string(),
        why: lapse.why(),
    }
}

impl ObjectLock {
    /// Fails (`store_lock_lost`) when the lock may have lapsed at any
    /// time since it was taken, or its object is gone: one request to
    /// the storage (callers ask before a publish or a deletion).
    pub fn still_held(&self) -> Result<()> {
        self.beat.confirm(self.backend.as_ref(), &self.name)
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
        ttl_secs: ttl.as_secs(),
    }
}

fn write(backend: &dyn Backend, name: &str, rec: &LockRecord) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
    backend.replace(name, &bytes)
}

/// Is a lock object listed as `entry` live by the storage's clock: last
/// written less than its lifetime (plus a second for the storage's
/// rounding) before the reader's own object, just written? Unknown
/// (false) without both times.
fn written_recently(entry: &ListEntry, ttl_secs: u64, storage_now: Option<SystemTime>) -> bool {
    let (Some(written), Some(now)) = (entry.modified, storage_now) else {
        return false;
    };
    let ttl_secs = match ttl_secs {
        0 => ttl().as_secs(),
        s => s.min(MAX_TTL_SECS),
    };
    // One second for the storage's rounding of its times.
    let live_for = Duration::from_secs(ttl_secs + 1);
    written
        .checked_add(live_for)
        .is_none_or(|until| until >= now)
}

/// Live lock objects other than `own`; expired ones are removed. A lock
/// is live while its holder's deadline has not passed by this host's
/// clock, or it was written within its lifetime by the storage's clock
/// (`own`'s modification time; see the module doc).
pub fn live_locks(backend: &dyn Backend, own: &str) -> Result<Vec<LockRecord>> {
    let locks = Dir::Locks.name();
    let list = backend
        .list_files(locks)
        .map_err(|e| Error::io("list", backend.display_name(locks), e))?;
    let now = unix_now();
    let storage_now = list.iter().find(|e| e.name == own).and_then(|e| e.modified);
    let mut out = Vec::new();
    for entry in list {
        if entry.name == own || !entry.name.ends_with(".json") {
            continue;
        }
        let rec = match backend.read(&entry.name) {
            Ok(bytes) => serde_json::from_slice::<LockRecord>(&bytes).ok(),
            // Removed between the listing and the read: released.
            Err(e) if BackendErrorKind::of(&e) == BackendErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read", backend.display_name(&entry.name), e)),
        };
        match rec {
            Some(rec)
                if rec.expires_at >= now || written_recently(&entry, rec.ttl_secs, storage_now) =>
            {
                out.push(rec)
            }
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
                        ttl_secs: 0,
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
    let name = Object::Lock {
        mode: mode.to_string(),
        owner,
    }
    .name();
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
            lost: None,
        }),
        seen_at: Mutex::new(None),
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

fn heartbeat(backend: &dyn Backend, name: &str, mut rec: LockRecord, ttl: Duration, beat: &Beat) {
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
        // A lock that may have lapsed, or whose object another process
        // removed, is not revived: others may have taken the store
        // meanwhile. It stays lost; the object is left to expire (and is
        // deleted when the guard drops, if still there).
        // A check the storage failed to answer still leaves the write to
        // try: a lapse is what loses the lock, not one failed request.
        if let Err(e @ Error::LockLost { .. }) = beat.confirm(backend, name) {
            tracing::warn!("{e}");
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
