//! The store lock: an OS file lock on `locks/store.lock` (flock semantics,
//! so a crashed process leaves no stale lock). Commands that only add to the
//! store hold it shared; anything that deletes holds it exclusive. The guard
//! types are the proof: deleting functions take an `&ExclusiveLock`.
//!
//! Beside the lock, each holder writes `locks/holder-<pid>-<rand>.json`
//! (pid, command, since) so a blocked command can say who is in the way:
//! once when it starts waiting (through the notifier the binary installs
//! with [`set_wait_notifier`], since the library never prints) and in the
//! [`Error::Locked`] it returns when `wait` runs out. Holder files of dead
//! processes are ignored and removed.

use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
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

struct Held {
    _file: File,
    info_path: PathBuf,
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.info_path);
    }
}

/// Held while adding to the store (create): gc cannot run meanwhile.
pub struct SharedLock {
    _held: Held,
}

/// Held while deleting from the store (gc, cleanup --confirm, repair).
pub struct ExclusiveLock {
    _held: Held,
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
    fs::create_dir_all(&dir).ctx("create", &dir)?;
    let path = dir.join("store.lock");
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
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
    let _ = fs::write(&info_path, serde_json::to_vec(&info).unwrap_or_default());
    Ok(Held {
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
        if crate::store::process_alive(info.pid) {
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
