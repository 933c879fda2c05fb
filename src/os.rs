//! What this process knows about its host and its own life: the host
//! name, whether a process still runs, who owns a temp file, whether the
//! process was asked to stop (SIGINT / SIGTERM), and the free space of a
//! file system.
//!
//! Temp files (the store's `tmp/`, restore's temps beside their targets)
//! are named for their owner, `<pid>-<host>-<boot>-<pidns>-<token>-…`:
//! a pid alone means nothing to a process in another PID namespace (a
//! container sees a host writer's pid as dead) or after a reboot. A temp
//! file is provably abandoned only when its owner ran on this host and is
//! gone: another boot of this host, or the same boot and PID namespace
//! with its pid dead (or now ours, under another process token). Anything
//! else, a foreign host or a name that does not parse, may be live work
//! and is left to a sweep under the exclusive store lock.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// Bytes an unprivileged writer may still use on the file system holding
/// `dir` (`statvfs`: available blocks times the fragment size). Test
/// hook: `ATOSNAP_TEST_FREE_BYTES=<n>` says n instead, so that a test can
/// play a full disk without filling one.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    if let Some(n) = std::env::var("ATOSNAP_TEST_FREE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Ok(n);
    }
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call and
    // `st` has room for one `statvfs`, which the call fills on success.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Reserves `len` bytes of disk for `file` (a new, empty file about to be
/// written whole), best effort: a file system without `fallocate` just
/// allocates as the writes come. Why: on ext4 a file written without
/// reserved blocks is flushed by the kernel when it is renamed over an
/// existing file (`auto_da_alloc`), inside the `rename` call; with its
/// blocks reserved the rename returns at once, and writeback stays in the
/// background (or in the `fsync` of a durable restore, where it belongs).
pub fn preallocate(file: &std::fs::File, len: u64) {
    use std::os::unix::io::AsRawFd;
    let Ok(len) = libc::off_t::try_from(len) else {
        return;
    };
    if len == 0 {
        return;
    }
    // SAFETY: the descriptor is open for the whole call (`file` is
    // borrowed); fallocate reads no memory of ours.
    let _ = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
}

/// Write-behind for a large file written front to back: the kernel is
/// asked to start writing `range` to disk now, without waiting
/// ([`WriteBehind::written`]), and the range before it, once on disk,
/// leaves the page cache. Why: a restore writes gigabytes it will not read
/// again; through the page cache alone, every byte takes a page the
/// kernel must first find (on a VM that returns free memory to its host,
/// each one a fault the host serves: 890 MB took 2.5 s of system time
/// there, against 0.6 s written behind), and it pushes out what the
/// machine had cached. Best effort: a file system without these calls
/// just keeps its pages.
#[derive(Default)]
pub struct WriteBehind {
    before: Option<std::ops::Range<u64>>,
}

impl WriteBehind {
    /// `range` of `file` is written: start writing it back, and drop the
    /// range written before it, waiting for it to reach the disk.
    pub fn written(&mut self, file: &std::fs::File, range: std::ops::Range<u64>) {
        sync_range(file, &range, libc::SYNC_FILE_RANGE_WRITE);
        if let Some(before) = self.before.replace(range) {
            drop_range(file, &before);
        }
    }

    /// The file is complete: its last range is dropped too, once on disk.
    pub fn finish(mut self, file: &std::fs::File) {
        if let Some(last) = self.before.take() {
            drop_range(file, &last);
        }
    }
}

fn sync_range(file: &std::fs::File, range: &std::ops::Range<u64>, flags: libc::c_uint) {
    use std::os::unix::io::AsRawFd;
    let (Ok(at), Ok(len)) = (
        libc::off64_t::try_from(range.start),
        libc::off64_t::try_from(range.end.saturating_sub(range.start)),
    ) else {
        return;
    };
    // SAFETY: the descriptor is open for the whole call (`file` is
    // borrowed); sync_file_range reads no memory of ours.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), at, len, flags) };
}

/// Waits until `range` is on disk, then drops its pages.
fn drop_range(file: &std::fs::File, range: &std::ops::Range<u64>) {
    sync_range(
        file,
        range,
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
    );
    forget_cached(file, range);
}

/// Drops the clean pages of `range` of `file` from the page cache (read
/// once and not needed again: a restore's reads of the file it replaces),
/// so they serve the next reads and writes; see [`WriteBehind`]. Best
/// effort.
pub fn forget_cached(file: &std::fs::File, range: &std::ops::Range<u64>) {
    use std::os::unix::io::AsRawFd;
    let (Ok(at), Ok(len)) = (
        libc::off_t::try_from(range.start),
        libc::off_t::try_from(range.end.saturating_sub(range.start)),
    ) else {
        return;
    };
    // SAFETY: the descriptor is open for the whole call (`file` is
    // borrowed); posix_fadvise reads no memory of ours.
    let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), at, len, libc::POSIX_FADV_DONTNEED) };
}

/// Copies `range` of `from` into `to` at the same offsets, in the kernel
/// (`copy_file_range`: one call per range, no buffer of ours, and on file
/// systems that share extents no copy at all). Where the kernel cannot
/// (another file system, an old kernel), through a buffer. Why: a patch
/// is thousands of short runs, each two calls and a buffer otherwise.
pub fn copy_range(
    from: &std::fs::File,
    to: &std::fs::File,
    range: std::ops::Range<u64>,
) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let mut at = range.start;
    while at < range.end {
        let (Ok(mut off_in), Ok(mut off_out)) =
            (libc::loff_t::try_from(at), libc::loff_t::try_from(at))
        else {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        };
        let want = usize::try_from(range.end - at)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        // SAFETY: both descriptors are open for the whole call (borrowed
        // files), and the offsets are locals the call updates.
        let n = unsafe {
            libc::copy_file_range(
                from.as_raw_fd(),
                &mut off_in,
                to.as_raw_fd(),
                &mut off_out,
                want,
                0,
            )
        };
        match n {
            0 => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            n if n > 0 => at += n as u64,
            _ => {
                let e = std::io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
                        copy_range_buffered(from, to, at..range.end)
                    }
                    _ => Err(e),
                };
            }
        }
    }
    Ok(())
}

/// [`copy_range`] through a buffer of at most 1 MiB.
fn copy_range_buffered(
    from: &std::fs::File,
    to: &std::fs::File,
    range: std::ops::Range<u64>,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = usize::try_from(range.end.saturating_sub(range.start)).unwrap_or(usize::MAX);
    let mut buf = vec![0u8; len.min(1 << 20)];
    let mut at = range.start;
    while at < range.end {
        let n = usize::try_from(range.end - at)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        from.read_exact_at(&mut buf[..n], at)?;
        to.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// May this process write `path` (effective ids, as `open` judges)? A
/// read-only file is patched in place only by one who may write it.
/// Opens `path` to read if it is a regular file; anything else (a FIFO, a
/// socket, a device, a folder) is an `InvalidInput` error. The open never
/// blocks: a FIFO planted where a file is expected would otherwise hold a
/// plain `open` until a writer comes, with the store lock held
/// (`O_NONBLOCK` does nothing to a regular file's reads).
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if f.metadata()?.is_file() {
        Ok(f)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ))
    }
}

pub fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::W_OK, libc::AT_EACCESS) == 0 }
}

/// This host's name (lock objects, claim markers and temp names carry it).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Is there a live process with this pid in our PID namespace (Linux: /proc)?
pub fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Who wrote a temp file: the fields of its name before the file's own
/// random part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TempOwner {
    pub pid: u32,
    /// The host name, with every character but `[A-Za-z0-9.]` as `_` (the
    /// fields are `-`-separated).
    pub host: String,
    /// The first 8 hex digits of the kernel's boot id (`0` when unknown).
    pub boot: String,
    /// The inode of the owner's PID namespace (`0` when unknown).
    pub pidns: String,
    /// Random per process: tells this process from an earlier one that had
    /// the same pid.
    pub token: String,
}

impl TempOwner {
    /// This process.
    pub fn current() -> &'static TempOwner {
        static ME: OnceLock<TempOwner> = OnceLock::new();
        ME.get_or_init(|| TempOwner {
            pid: std::process::id(),
            host: name_safe(&hostname()),
            boot: boot_id(),
            pidns: pid_namespace(),
            token: format!("{:08x}", rand::random::<u32>()),
        })
    }

    /// The name prefix of this owner's temp files (ends with `-`).
    pub fn prefix(&self) -> String {
        format!(
            "{}-{}-{}-{}-{}-",
            self.pid, self.host, self.boot, self.pidns, self.token
        )
    }

    /// The owner named at the start of `name` (a temp file's name after any
    /// fixed prefix); `None` for a name of another form.
    pub fn parse(name: &str) -> Option<TempOwner> {
        let mut f = name.splitn(6, '-');
        let pid = f.next()?.parse().ok()?;
        let (host, boot, pidns, token) = (f.next()?, f.next()?, f.next()?, f.next()?);
        let _rest = f.next()?;
        let fields = [host, boot, pidns, token];
        if fields.iter().any(|s| s.is_empty()) {
            return None;
        }
        Some(TempOwner {
            pid,
            host: host.into(),
            boot: boot.into(),
            pidns: pidns.into(),
            token: token.into(),
        })
    }

    /// Whether this owner is provably gone, judged from this process: a
    /// process of this host, boot and PID namespace that no longer runs
    /// (or an earlier process with this very pid). Another boot id under
    /// this host name proves nothing: it is this machine before a reboot,
    /// or another machine of the same name sharing the folder (NFS).
    pub fn is_gone(&self) -> bool {
        let me = TempOwner::current();
        if !self.of_this_boot_and_namespace() {
            return false;
        }
        if self.pid == me.pid {
            return self.token != me.token;
        }
        !process_alive(self.pid)
    }

    /// Whether this owner ran on this host, boot and PID namespace, where
    /// its pid means what it means to this process.
    fn of_this_boot_and_namespace(&self) -> bool {
        let me = TempOwner::current();
        self.host == me.host
            && self.boot == me.boot
            && me.boot != "0"
            && self.pidns == me.pidns
            && me.pidns != "0"
    }

    /// A well-formed boot id that is not this owner's (tests).
    #[cfg(test)]
    pub(crate) fn other_boot_id(&self) -> String {
        if self.boot == "00000001" {
            "00000002"
        } else {
            "00000001"
        }
        .into()
    }

    /// Whether this owner is of this host name but another boot id: this
    /// machine before a reboot, or another machine of the same name.
    fn of_another_boot(&self) -> bool {
        let me = TempOwner::current();
        self.host == me.host && self.boot != me.boot && self.boot != "0" && me.boot != "0"
    }

    /// Whether this owner is a running process of this host, boot and PID
    /// namespace (this process included). A pid reused by another process
    /// also counts: the answer errs towards "alive".
    pub fn is_alive_here(&self) -> bool {
        let me = TempOwner::current();
        if !self.of_this_boot_and_namespace() {
            return false;
        }
        if self.pid == me.pid {
            return self.token == me.token;
        }
        process_alive(self.pid)
    }
}

/// Whether `name` is one atosnap gives its temp files: `<owner>-...`
/// ([`TempOwner`]), or the `<pid>-<16 hex digits>.<suffix>` of earlier
/// versions. Nothing else in a temp folder is atosnap's to remove.
pub fn is_temp_name(name: &str) -> bool {
    let legacy = || {
        let Some((pid, rest)) = name.split_once('-') else {
            return false;
        };
        let Some((random, suffix)) = rest.split_once('.') else {
            return false;
        };
        !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && random.len() == 16
            && random.bytes().all(|b| b.is_ascii_hexdigit())
            && !suffix.is_empty()
    };
    TempOwner::parse(name).is_some() || legacy()
}

/// Whether the temp file `name` (after any fixed prefix) belongs to a
/// running process of this host (see [`TempOwner::is_alive_here`]).
pub fn temp_owner_alive_here(name: &str) -> bool {
    TempOwner::parse(name).is_some_and(|o| o.is_alive_here())
}

/// A temp file of another boot of this host name that went untouched this
/// long is abandoned: after a reboot (a power cut mid-write) the next
/// writer sweeps it, while a writer on another machine of the same name
/// keeps its files, which it touches as it writes them.
pub const OTHER_BOOT_STILL_FOR: Duration = Duration::from_secs(15 * 60);

/// When a temp file (or folder: what is in it too) was last touched: the
/// later of its mtime and ctime. Not the mtime alone: a restore's staged
/// file gets the snapshot's old mtime at once, and setting it bumps the
/// ctime, as every write does.
pub fn last_touched(path: &Path) -> Option<SystemTime> {
    let touched = |m: &fs::Metadata| {
        let ctime = SystemTime::UNIX_EPOCH.checked_add(Duration::new(
            m.ctime().max(0) as u64,
            m.ctime_nsec().clamp(0, 999_999_999) as u32,
        ));
        m.modified().ok().max(ctime)
    };
    walkdir::WalkDir::new(path)
        .follow_links(false)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok().and_then(|m| touched(&m)))
        .max()
}

/// Whether the temp file `name` (after any fixed prefix), last touched at
/// what `touched` says ([`last_touched`], asked only when it matters), was left by a writer that is gone: its
/// owner is provably gone ([`TempOwner::is_gone`]), or it is of another
/// boot of this host name and untouched for [`OTHER_BOOT_STILL_FOR`]. An
/// unparseable name never is.
pub fn temp_stale(name: &str, touched: impl FnOnce() -> Option<SystemTime>) -> bool {
    let Some(owner) = TempOwner::parse(name) else {
        return false;
    };
    let still = || {
        touched()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= OTHER_BOOT_STILL_FOR)
    };
    owner.is_gone() || (owner.of_another_boot() && still())
}

fn name_safe(s: &str) -> String {
    let safe: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if safe.is_empty() {
        "_".into()
    } else {
        safe
    }
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|b| {
            b.trim()
                .replace('-', "")
                .chars()
                .take(8)
                .collect::<String>()
        })
        .filter(|b| b.len() == 8 && b.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| "0".into())
}

fn pid_namespace() -> String {
    // `pid:[4026531836]`
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .and_then(|l| {
            let l = l.to_string_lossy().into_owned();
            let inner = l.strip_prefix("pid:[")?.strip_suffix(']')?.to_string();
            inner.parse::<u64>().ok().map(|n| n.to_string())
        })
        .unwrap_or_else(|| "0".into())
}

/// The signal that asked this process to stop, 0 while none did.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

/// Records that signal `sig` asked the process to stop. Returns whether
/// one had already (the caller may then exit at once). Async-signal-safe:
/// one atomic operation, so a signal handler may call it.
pub fn note_interrupt(sig: i32) -> bool {
    INTERRUPTED
        .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
}

/// The signal that asked this process to stop, if one did.
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// `Err(Interrupted)` once a signal asked the process to stop: long loops
/// call it between steps, so the command unwinds (lock guards released,
/// temp files left for the next run to sweep) and publishes nothing.
pub fn check_interrupted() -> Result<()> {
    match interrupted() {
        None => Ok(()),
        Some(sig) => Err(Error::Interrupted {
            signal: signal_name(sig),
        }),
    }
}

/// `SIGINT`, `SIGTERM`, or `signal N`.
pub fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

/// A process holding a runtime file open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub command: String,
    pub path: PathBuf,
}

/// Processes (other than `skip_pid`) with one of `files` open, found by
/// (device, inode) through the `/proc/<pid>/fd` links. Processes whose fds
/// we may not read are skipped. Sorted by pid.
pub fn open_holders(files: &[PathBuf], skip_pid: Option<u32>) -> Vec<Holder> {
    let mut wanted: HashMap<(u64, u64), &PathBuf> = HashMap::new();
    for f in files {
        if let Ok(m) = fs::metadata(f) {
            wanted.insert((m.dev(), m.ino()), f);
        }
    }
    let mut out = Vec::new();
    if wanted.is_empty() {
        return out;
    }
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if Some(pid) == skip_pid {
            continue;
        }
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            // metadata() follows the magic link to the open file itself,
            // even when it was renamed or deleted since.
            let Ok(m) = fs::metadata(fd.path()) else {
                continue;
            };
            if let Some(path) = wanted.get(&(m.dev(), m.ino())) {
                out.push(Holder {
                    pid,
                    command: process_command(pid),
                    path: (*path).clone(),
                });
                break;
            }
        }
    }
    out.sort_by_key(|h| h.pid);
    out
}

fn process_command(pid: u32) -> String {
    let base = Path::new("/proc").join(pid.to_string());
    let cmdline = fs::read(base.join("cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut command = if args.is_empty() {
        fs::read_to_string(base.join("comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown command".into())
    } else {
        args.join(" ")
    };
    if command.len() > 200 {
        let mut cut = 200;
        while !command.is_char_boundary(cut) {
            cut -= 1;
        }
        command.truncate(cut);
        command.push('…');
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `file` in the page cache (mincore over a mapping of it).
    fn resident_pages(file: &std::fs::File, len: usize) -> usize {
        use std::os::unix::io::AsRawFd;
        let page = 4096;
        let pages = len.div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: a read-only shared mapping of `len` bytes of an open
        // file, unmapped before returning; mincore fills `pages` bytes.
        unsafe {
            let at = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(at, libc::MAP_FAILED);
            assert_eq!(libc::mincore(at, len, vec.as_mut_ptr()), 0);
            libc::munmap(at, len);
        }
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[test]
    fn copied_ranges_land_at_their_offsets_in_the_kernel_or_through_a_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3 * 4096 + 100u32)
            .map(|i| (i * 13 % 251) as u8)
            .collect();
        let from = dir.path().join("from");
        fs::write(&from, &data).unwrap();
        let from = fs::File::open(&from).unwrap();
        for (name, buffered) in [("kernel", false), ("buffer", true)] {
            let path = dir.path().join(name);
            fs::write(&path, vec![0u8; data.len()]).unwrap();
            let to = fs::OpenOptions::new().write(true).open(&path).unwrap();
            let copy = |r: std::ops::Range<u64>| match buffered {
                false => copy_range(&from, &to, r),
                true => copy_range_buffered(&from, &to, r),
            };
            copy(4096..8192).unwrap();
            copy(3 * 4096..data.len() as u64).unwrap();
            copy(10..10).unwrap();
            let got = fs::read(&path).unwrap();
            let mut want = vec![0u8; data.len()];
            want[4096..8192].copy_from_slice(&data[4096..8192]);
            want[3 * 4096..].copy_from_slice(&data[3 * 4096..]);
            assert_eq!(got, want, "{name}");
            // Past the end of the source: an error, never zeros.
            let past = data.len() as u64;
            let err = copy(past - 10..past + 10).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{name}");
        }
    }

    #[test]
    fn written_behind_ranges_reach_the_disk_and_leave_the_page_cache() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = std::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let piece = 1 << 20;
        let mut behind = WriteBehind::default();
        for i in 0..8u64 {
            let bytes = vec![i as u8 + 1; piece];
            f.write_all_at(&bytes, i * piece as u64).unwrap();
            behind.written(&f, i * piece as u64..(i + 1) * piece as u64);
        }
        behind.finish(&f);
        let len = 8 * piece;
        // A file system that keeps its pages regardless (tmpfs) shows
        // every page; a disk-backed one keeps few of them.
        let resident = resident_pages(&f, len);
        let tmpfs = {
            let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
            let c = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a NUL-terminated path and room for one statfs.
            unsafe {
                libc::statfs(c.as_ptr(), st.as_mut_ptr()) == 0
                    && st.assume_init().f_type == 0x0102_1994
            }
        };
        if !tmpfs {
            assert!(
                resident < len / 4096 / 2,
                "{resident} of {} pages still cached",
                len / 4096
            );
        }
        let back = std::fs::read(&path).unwrap();
        for i in 0..8 {
            assert!(back[i * piece..(i + 1) * piece]
                .iter()
                .all(|&b| b == i as u8 + 1));
        }
        // Read once and forgotten: dropped as well.
        forget_cached(&f, &(0..len as u64));
        if !tmpfs {
            assert!(resident_pages(&f, len) < len / 4096 / 2);
        }
    }

    #[test]
    fn the_owner_round_trips_through_a_name_and_is_alive() {
        let me = TempOwner::current();
        let name = format!("{}0123456789abcdef.pack", me.prefix());
        assert_eq!(TempOwner::parse(&name).as_ref(), Some(me));
        assert!(!temp_stale(&name, || None), "our own temp is not stale");
        assert!(me.prefix().starts_with(&format!("{}-", std::process::id())));
    }

    #[test]
    fn only_an_owner_of_this_host_and_namespace_can_be_proven_gone() {
        let me = TempOwner::current().clone();
        // pid 4194304 is above Linux's pid_max: never a live process.
        let dead = TempOwner {
            pid: 4_194_304,
            ..me.clone()
        };
        assert!(dead.is_gone());
        let earlier_me = TempOwner {
            token: "ffffffff".into(),
            ..me.clone()
        };
        assert_eq!(earlier_me.is_gone(), me.token != "ffffffff");
        let other_host = TempOwner {
            host: "elsewhere".into(),
            ..dead.clone()
        };
        assert!(!other_host.is_gone());
        let other_ns = TempOwner {
            pidns: "1".into(),
            ..dead.clone()
        };
        assert!(
            !other_ns.is_gone(),
            "another PID namespace: pid says nothing"
        );
        let live = TempOwner {
            pid: 1,
            token: "ffffffff".into(),
            ..me.clone()
        };
        assert!(!live.is_gone() || !process_alive(1));
        for bad in ["1234-00aa.pack", "garbage.pack", "x-h-b-n-t-r.pack", ""] {
            assert!(!temp_stale(bad, || Some(SystemTime::UNIX_EPOCH)), "{bad}");
        }
    }

    #[test]
    fn a_file_is_touched_when_written_or_backdated_and_a_folder_by_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let before = SystemTime::now() - Duration::from_secs(2);
        let f = dir.path().join("staged");
        fs::write(&f, b"x").unwrap();
        // Backdated as a restore backdates a staged file: touched now.
        let long_ago = filetime::FileTime::from_unix_time(1_000_000, 0);
        filetime::set_file_mtime(&f, long_ago).unwrap();
        assert!(last_touched(&f).is_some_and(|t| t >= before));
        // A folder whose own times are old holds a file touched now.
        let sub = dir.path().join("spool");
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("part"), b"y").unwrap();
        filetime::set_file_mtime(&sub, long_ago).unwrap();
        assert!(last_touched(&sub).is_some_and(|t| t >= before));
        assert_eq!(last_touched(&dir.path().join("missing")), None);
    }

    #[test]
    fn a_temp_of_another_boot_is_stale_only_once_it_went_still() {
        let me = TempOwner::current().clone();
        if me.boot == "0" {
            return; // no boot id on this system: nothing to tell apart
        }
        let other_boot = TempOwner {
            boot: me.other_boot_id(),
            ..me.clone()
        };
        // This machine before a reboot, or another machine of this name
        // writing into a shared folder right now: the pid says nothing.
        assert!(!other_boot.is_gone());
        let name = format!("{}0123456789abcdef.pack", other_boot.prefix());
        let now = SystemTime::now();
        let just_touched = now - Duration::from_secs(5);
        let still = now - OTHER_BOOT_STILL_FOR - Duration::from_secs(5);
        assert!(!temp_stale(&name, || Some(just_touched)), "being written");
        assert!(!temp_stale(&name, || None), "no time known");
        assert!(temp_stale(&name, || Some(still)), "left before a reboot");
        // Another host's file is never judged by a writer here, however old.
        let other_host = TempOwner {
            host: "elsewhere".into(),
            ..other_boot
        };
        let name = format!("{}0123456789abcdef.pack", other_host.prefix());
        assert!(!temp_stale(&name, || Some(still)));
        // This process's own file, however old, is never stale.
        let mine = format!("{}0123456789abcdef.pack", me.prefix());
        assert!(!temp_stale(&mine, || Some(still)));
    }

    #[test]
    fn host_names_are_made_safe_for_the_fields() {
        assert_eq!(name_safe("my-host.lan"), "my_host.lan");
        assert_eq!(name_safe(""), "_");
        assert_eq!(name_safe(&"a".repeat(100)).len(), 64);
    }

    #[test]
    fn holders_are_found_by_inode_through_proc() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held.db");
        fs::write(&path, b"x").unwrap();
        let other = dir.path().join("not-held");
        fs::write(&other, b"y").unwrap();
        let held = fs::File::open(&path).unwrap();
        // Found under another name too (same inode).
        let alias = dir.path().join("alias.db");
        fs::hard_link(&path, &alias).unwrap();
        let found = open_holders(std::slice::from_ref(&alias), None);
        assert!(
            found.iter().any(|h| h.pid == std::process::id()),
            "{found:?}"
        );
        assert!(open_holders(std::slice::from_ref(&alias), Some(std::process::id())).is_empty());
        assert!(open_holders(&[other], None).is_empty());
        drop(held);
        assert!(open_holders(&[alias], None).is_empty());
    }
}
