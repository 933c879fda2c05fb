//! Restore's patches in place. A Chroma file on disk that already holds
//! most of the snapshot's bytes where the snapshot has them (SQLite pages
//! and HNSW blocks stay at their offsets from one day to the next) is
//! brought to the snapshot by writing only what differs into it, instead
//! of being rewritten whole into a staging file and renamed over: a day's
//! in-place restore then writes a tenth of the bytes.
//!
//! Atomic the way SQLite's journal is, since the rename is gone:
//! 1. staging writes the differing bytes, each verified, into a patch
//!    file beside the target, each at its own offset (a sparse file);
//! 2. installing first commits the patch: a trailer naming the target, its
//!    size, mode, mtime and the spans written is appended and fsynced;
//! 3. only then are the spans copied into the target, which is cut to its
//!    size, given its mode and mtime and fsynced; the patch goes last.
//!
//! A restore killed before the commit leaves the target untouched and a
//! patch without a trailer (removed like any staging file); one killed
//! after it leaves a committed patch, which the next restore of that tree
//! replays before it plans ([`recover`]; replaying is idempotent), so the
//! file ends wholly new. The patch is marked (and fsynced) before its
//! first span is copied: a patch whose replay never began, and whose
//! target no longer has the size, mtime and ctime the commit recorded, was
//! overtaken by another writer (a service started after the killed
//! restore) and is dropped, never replayed over that writer's data. The
//! file keeps its inode, owner and other links are not involved: only a
//! plain file with one link is patched.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::ErrorKind;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::sources::restore_patch::{self, Before, PatchedFile, Trailer};
use crate::store::manifest::Entry;

use super::apply::{file_time, parent_of};
use super::stage::FileIdentity;

/// A staged patch: the spans written into the patch file, the size the
/// target ends with, and the target as staging found it (it must be the
/// same, unchanged file when the patch is applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Patch {
    pub spans: Vec<Range<u64>>,
    pub len: u64,
    pub identity: FileIdentity,
}

impl Patch {
    pub fn bytes(&self) -> u64 {
        span_bytes(&self.spans)
    }
}

fn span_bytes(spans: &[Range<u64>]) -> u64 {
    spans.iter().map(|s| s.end - s.start).sum()
}

/// Is patching worth it? Its bytes are written twice (patch, then
/// target): only when at most half of the file differs.
pub fn worth_it(spans: &[Range<u64>], len: u64) -> bool {
    span_bytes(spans).saturating_mul(2) <= len
}

/// Turns a patch that is not worth it into a whole staging file: the
/// bytes between its spans are copied from the file it was made against
/// (`old`, held open since staging verified those very bytes), and the
/// file is cut to `len`.
pub fn fill_gaps(old: &File, patch: &File, spans: &[Range<u64>], len: u64) -> std::io::Result<()> {
    let mut at = 0u64;
    for s in spans.iter().chain(std::iter::once(&(len..len))) {
        copy_span(old, patch, at..s.start.min(len))?;
        at = s.end;
    }
    patch.set_len(len)
}

/// Copies `span` of `from` into `to` at the same offsets.
fn copy_span(from: &File, to: &File, span: Range<u64>) -> std::io::Result<()> {
    crate::os::copy_range(from, to, span)
}

/// The trailer committing `patch` to the file `target` (a name in the
/// patch's folder), which then gets `mode` and `mtime_ns`.
fn trailer_of(target: &[u8], patch: &Patch, mode: u32, mtime_ns: i64, before: Before) -> Trailer {
    Trailer {
        target: target.to_vec(),
        dev: patch.identity.dev(),
        ino: patch.identity.ino(),
        len: patch.len,
        mode: mode & 0o7777,
        mtime_ns,
        spans: patch.spans.iter().map(|s| (s.start, s.end)).collect(),
        before: Some(before),
    }
}

/// Step 7 for a patched file: refuses a target that changed since it was
/// staged, commits the patch, applies it and removes it. An error after
/// the commit leaves the committed patch for the next restore to replay.
pub fn install(
    tmp: &Path,
    target: &Path,
    patch: &Patch,
    entry: &Entry,
    durable: bool,
) -> Result<()> {
    // Everything that can refuse comes before the commit: a patch that
    // cannot be applied must not be left committed (the next restore
    // would try it again, and create would see the file half-restored).
    let uncommitted = |e: Error| {
        let _ = fs::remove_file(tmp);
        e
    };
    check_unchanged(target, patch).map_err(uncommitted)?;
    // And the file opened is that one (not one swapped in since).
    let out = open_for_patching(target).map_err(uncommitted)?;
    let opened = out.metadata().ctx("stat", target).map_err(uncommitted)?;
    unchanged(target, &opened, patch).map_err(uncommitted)?;
    let name = target.file_name().map(|n| n.as_bytes()).unwrap_or_default();
    let trailer = trailer_of(name, patch, entry.mode, entry.mtime_ns, Before::of(&opened));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(tmp)
        .ctx("open", tmp)
        .map_err(uncommitted)?;
    commit(&f, &trailer, patch).ctx("commit the patch", tmp)?;
    if durable {
        f.sync_all().ctx("fsync", tmp)?;
        crate::store::backend::sync_dir(parent_of(tmp)).ctx("fsync folder", parent_of(tmp))?;
    }
    crate::failpoint::hit(|| format!("restore:patch-committed:{}", entry.path_lossy()));
    begin_replay(&f, tmp, durable)?;
    replay(&f, &out, target, &trailer, durable)?;
    fs::remove_file(tmp).ctx("remove", tmp)
}

/// The target opened to be patched (never through a symlink).
fn open_for_patching(target: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(target)
        .ctx("open for patching", target)
}

/// Refuses a target that is no longer the file the patch was made
/// against (another process wrote, replaced or linked it since staging).
pub fn check_unchanged(target: &Path, patch: &Patch) -> Result<()> {
    let now = fs::symlink_metadata(target).ctx("stat", target)?;
    unchanged(target, &now, patch)
}

/// [`check_unchanged`] on the file's metadata `now` (of the path, or of
/// the descriptor the patch will be written through).
fn unchanged(target: &Path, now: &fs::Metadata, patch: &Patch) -> Result<()> {
    if now.is_file() && now.nlink() == 1 && FileIdentity::of(now) == patch.identity {
        return Ok(());
    }
    Err(Error::TargetInvalid {
        path: target.to_path_buf(),
        detail: "changed since the restore staged it (is something still writing the runtime?); \
                 nothing of it was written: run the restore again"
            .into(),
    })
}

/// Appends the (zero) mark block and the trailer after the data, at a
/// 4 KiB boundary past the target's size and every span.
fn commit(f: &File, trailer: &Trailer, patch: &Patch) -> std::io::Result<()> {
    let data_end = patch.spans.iter().map(|s| s.end).fold(patch.len, u64::max);
    let at = data_end.div_ceil(4096) * 4096 + restore_patch::MARK_BLOCK;
    let tail = trailer.encode()?;
    f.set_len(at)?;
    f.write_all_at(&tail, at)
}

/// Marks the replay begun, durably before the target's first byte
/// changes when `durable`.
fn begin_replay(f: &File, tmp: &Path, durable: bool) -> Result<()> {
    restore_patch::mark_replay_begun(f).ctx("mark the replay of", tmp)?;
    if durable {
        f.sync_data().ctx("fsync", tmp)?;
    }
    Ok(())
}

/// Copies the spans into the target (`out`, opened at `target`), cuts it
/// to its size, sets mode and mtime, fsyncs it when `durable`.
fn replay(patch: &File, out: &File, target: &Path, t: &Trailer, durable: bool) -> Result<()> {
    for &(a, b) in &t.spans {
        copy_span(patch, out, a..b).ctx("patch", target)?;
    }
    out.set_len(t.len).ctx("set the size of", target)?;
    out.set_permissions(Permissions::from_mode(t.mode))
        .ctx("set the mode of", target)?;
    filetime::set_file_handle_times(out, None, Some(file_time(t.mtime_ns)))
        .ctx("set the mtime of", target)?;
    if durable {
        out.sync_all().ctx("fsync", target)?;
    }
    Ok(())
}

/// What [`recover`] did with a stale staging file.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovered {
    /// Not a committed patch: the caller removes it as any staging file.
    NotAPatch,
    /// A committed patch, replayed into its target (or its target is gone)
    /// and removed.
    Replayed,
    /// A committed patch that could not be replayed: kept for another try.
    Kept,
    /// A committed patch whose replay never began and whose target was
    /// written since: removed unreplayed.
    Stale,
}

/// Finishes the patch a killed restore committed (see the module doc):
/// called on staging files whose owner is gone.
pub fn recover(path: &Path) -> Recovered {
    let f = match crate::sources::restore_patch::open_staged(path) {
        Ok(Some(f)) => f,
        Ok(None) => return Recovered::NotAPatch,
        // It may be a committed patch that cannot be read just now: never
        // removed unread.
        Err(_) => return Recovered::Kept,
    };
    let Some(t) = Trailer::read(&f) else {
        return Recovered::NotAPatch;
    };
    let file = PatchedFile {
        begun: restore_patch::replay_begun(&f),
        ..t.file()
    };
    let target = file.target_beside(path);
    let mut outcome = Recovered::Replayed;
    let replayed = match fs::symlink_metadata(&target) {
        Ok(m) if file.patches(&m) && file.overtaken(&m) => {
            outcome = Recovered::Stale;
            true
        }
        Ok(m) if file.patches(&m) => open_for_patching(&target)
            .and_then(|out| {
                // The patch again, to mark (read-only until now; never
                // through a link).
                let marked = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(path)
                    .ctx("open", path)?;
                begin_replay(&marked, path, true)?;
                replay(&f, &out, &target, &t, true)
            })
            .is_ok(),
        // Gone or replaced since: nothing left to finish.
        Ok(_) => true,
        Err(e) => e.kind() == ErrorKind::NotFound,
    };
    if replayed && fs::remove_file(path).is_ok() {
        outcome
    } else {
        Recovered::Kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::restore_patch::FOOTER;

    fn identity(p: &Path) -> FileIdentity {
        FileIdentity::of(&fs::symlink_metadata(p).unwrap())
    }

    fn before(p: &Path) -> Before {
        Before::of(&fs::symlink_metadata(p).unwrap())
    }

    /// A committed patch (replay not begun) of `setup`'s target.
    fn committed(tmp: &Path, target: &Path, patch: &Patch) -> File {
        let f = File::options().read(true).write(true).open(tmp).unwrap();
        commit(
            &f,
            &trailer_of(b"data.bin", patch, 0o600, 5, before(target)),
            patch,
        )
        .unwrap();
        f
    }

    /// A target of 3 × 4096 bytes, and a patch file changing its middle
    /// block and growing it by 100 bytes.
    fn setup(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, Patch, Vec<u8>) {
        let target = dir.join("data.bin");
        let old: Vec<u8> = vec![1; 3 * 4096];
        fs::write(&target, &old).unwrap();
        let mut new = old.clone();
        new[4096..8192].fill(2);
        new.extend_from_slice(&[3; 100]);
        let tmp = dir.join(".atosnap-tmp-x.tmp");
        let f = File::create(&tmp).unwrap();
        f.write_all_at(&new[4096..8192], 4096).unwrap();
        f.write_all_at(&new[3 * 4096..], 3 * 4096).unwrap();
        let patch = Patch {
            spans: vec![4096..8192, 3 * 4096..new.len() as u64],
            len: new.len() as u64,
            identity: identity(&target),
        };
        (target, tmp, patch, new)
    }

    fn entry() -> Entry {
        Entry {
            path: b"chroma/data.bin".to_vec(),
            kind: crate::store::manifest::EntryKind::Dir,
            mode: 0o640,
            mtime_ns: 1_700_000_000_123_456_789,
        }
    }

    #[test]
    fn a_patch_brings_the_file_to_the_snapshot_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (target, tmp, patch, new) = setup(dir.path());
        let inode = fs::metadata(&target).unwrap().ino();
        install(&tmp, &target, &patch, &entry(), true).unwrap();
        assert_eq!(fs::read(&target).unwrap(), new);
        let m = fs::metadata(&target).unwrap();
        assert_eq!(m.ino(), inode, "patched in place");
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(crate::sources::mtime_ns(&m), entry().mtime_ns);
        assert!(!tmp.exists());
    }

    #[test]
    fn a_target_changed_since_staging_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let (target, tmp, patch, _) = setup(dir.path());
        fs::write(&target, vec![9u8; 3 * 4096 + 1]).unwrap();
        let err = install(&tmp, &target, &patch, &entry(), false).unwrap_err();
        assert!(
            err.to_string()
                .contains("changed since the restore staged it"),
            "{err}"
        );
        assert_eq!(fs::read(&target).unwrap(), vec![9u8; 3 * 4096 + 1]);
        assert_eq!(recover(&tmp), Recovered::NotAPatch, "never committed");
    }

    #[test]
    fn a_committed_patch_left_by_a_killed_restore_is_replayed_once() {
        let dir = tempfile::tempdir().unwrap();
        let (target, tmp, patch, new) = setup(dir.path());
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&tmp)
            .unwrap();
        let trailer = trailer_of(b"data.bin", &patch, 0o600, 5_000_000_000, before(&target));
        commit(&f, &trailer, &patch).unwrap();
        assert_eq!(Trailer::read(&f), Some(trailer));
        // Killed half-way through the copy: the first span only.
        begin_replay(&f, &tmp, true).unwrap();
        copy_span(
            &f,
            &File::options().write(true).open(&target).unwrap(),
            4096..6000,
        )
        .unwrap();
        assert_eq!(recover(&tmp), Recovered::Replayed);
        assert_eq!(fs::read(&target).unwrap(), new);
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o600);
        assert!(!tmp.exists());
    }

    /// The sweep hands recover any stale staging name: a FIFO there must
    /// not block the restore (it holds the store lock), and a link to a
    /// committed patch is never followed.
    #[test]
    fn a_fifo_or_a_link_at_a_staging_name_is_no_patch() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join(".atosnap-tmp-fifo.tmp");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        assert_eq!(recover(&fifo), Recovered::NotAPatch);
        let (target, tmp, patch, _) = setup(dir.path());
        committed(&tmp, &target, &patch);
        let link = dir.path().join(".atosnap-tmp-link.tmp");
        std::os::unix::fs::symlink(&tmp, &link).unwrap();
        let before = fs::read(&target).unwrap();
        assert_eq!(recover(&link), Recovered::NotAPatch);
        assert_eq!(
            fs::read(&target).unwrap(),
            before,
            "not replayed through the link"
        );
    }

    /// Killed between the commit and the replay, then the file written by
    /// another process (the service, started again): the stale patch is
    /// dropped, never replayed over what that process wrote.
    #[test]
    fn a_patch_whose_target_was_written_before_its_replay_began_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (target, tmp, patch, _) = setup(dir.path());
        committed(&tmp, &target, &patch);
        let newer = vec![5u8; 3 * 4096];
        File::options()
            .write(true)
            .open(&target)
            .unwrap()
            .write_all_at(&newer, 0)
            .unwrap();
        assert_eq!(recover(&tmp), Recovered::Stale);
        assert_eq!(fs::read(&target).unwrap(), newer, "untouched");
        assert!(!tmp.exists(), "the stale patch is removed");
    }

    /// Killed between the commit and the replay, the file untouched since:
    /// the replay is finished as the restore meant it.
    #[test]
    fn a_patch_whose_target_is_as_the_commit_found_it_is_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (target, tmp, patch, new) = setup(dir.path());
        committed(&tmp, &target, &patch);
        assert_eq!(recover(&tmp), Recovered::Replayed);
        assert_eq!(fs::read(&target).unwrap(), new);
    }

    #[test]
    fn a_damaged_trailer_is_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (target, tmp, patch, _) = setup(dir.path());
        let f = committed(&tmp, &target, &patch);
        let len = f.metadata().unwrap().len();
        f.write_all_at(b"X", len - FOOTER - 3).unwrap();
        assert_eq!(recover(&tmp), Recovered::NotAPatch, "hash mismatch");
        assert_eq!(fs::read(&target).unwrap(), vec![1; 3 * 4096]);
    }

    #[test]
    fn a_patch_not_worth_it_becomes_a_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let (target, tmp, patch, new) = setup(dir.path());
        assert!(worth_it(&patch.spans, patch.len));
        let most = std::iter::once(0..patch.len / 2 + 1).collect::<Vec<_>>();
        assert!(!worth_it(&most, patch.len));
        let old = File::open(&target).unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&tmp)
            .unwrap();
        fill_gaps(&old, &f, &patch.spans, patch.len).unwrap();
        assert_eq!(fs::read(&tmp).unwrap(), new);
    }
}
