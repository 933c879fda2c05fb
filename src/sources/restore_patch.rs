//! A committed restore patch as it lies in a Chroma tree: the trailer that
//! commits it, written and read here. Restore stages, commits, replays and
//! removes patches (`ops/restore/patch.rs`); create's scan reads the
//! trailer to name the file a killed restore left half-written, which a
//! snapshot must never report as good.
//!
//! A committed patch ends with: a block of [`MARK_BLOCK`] bytes (zero
//! until the replay begins, then [`REPLAYING`]), the trailer as JSON, its
//! length (8 bytes, little-endian), its BLAKE3 (32 bytes), and [`MAGIC`].
//! Patches of older builds have no mark block and no `before`.

use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The last 8 bytes of a committed patch.
pub const MAGIC: &[u8; 8] = b"ATSPATCH";
/// The fixed end of a committed patch: trailer length, its BLAKE3, MAGIC.
pub const FOOTER: u64 = 8 + 32 + 8;
/// The block before a trailer that marks a replay begun.
pub const MARK_BLOCK: u64 = 4096;
/// The start of the mark block once the replay has begun.
pub const REPLAYING: &[u8; 16] = b"ATSPATCH REPLAY\n";
/// A trailer larger than this is not one of ours (one of
/// `ops::extract::MAX_SPANS` spans takes about 8 MB).
const TRAILER_MAX: u64 = 32 << 20;

/// What a committed patch records.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Trailer {
    /// The target's file name, in the patch's folder.
    pub target: Vec<u8>,
    /// The target's device and inode: a file put there since is not
    /// patched.
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mode: u32,
    pub mtime_ns: i64,
    pub spans: Vec<(u64, u64)>,
    /// The target as the commit found it. A target no longer so, whose
    /// replay never began, was written by another process since (a
    /// service started after the restore was killed): the patch is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Before>,
}

/// A target's size, mtime and ctime when its patch was committed.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Before {
    pub len: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Before {
    pub fn of(m: &Metadata) -> Before {
        let s = crate::sources::source_stat(m);
        Before {
            len: s.size,
            mtime_ns: s.mtime_ns,
            ctime_ns: s.ctime_ns,
        }
    }
}

impl Trailer {
    /// The bytes that commit a patch once appended to it.
    pub fn encode(&self) -> std::io::Result<Vec<u8>> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let mut tail = json.clone();
        tail.extend_from_slice(&(json.len() as u64).to_le_bytes());
        tail.extend_from_slice(blake3::hash(&json).as_bytes());
        tail.extend_from_slice(MAGIC);
        Ok(tail)
    }

    /// Reads a committed patch's trailer: None for a file that is not one
    /// (a patch never committed, or any other staging file), or whose
    /// trailer is damaged or names a target outside its folder.
    pub fn read(f: &File) -> Option<Trailer> {
        let (json, _) = committed_json(f).ok().flatten()?;
        let t: Trailer = serde_json::from_slice(&json).ok()?;
        let spans_ok = t.spans.iter().all(|&(a, b)| a <= b && b <= t.len);
        (name_ok(&t.target) && spans_ok).then_some(t)
    }

    /// What the trailer says of its target.
    pub fn file(&self) -> PatchedFile {
        PatchedFile {
            target: self.target.clone(),
            dev: self.dev,
            ino: self.ino,
            len: self.len,
            mtime_ns: self.mtime_ns,
            before: self.before,
            begun: false,
        }
    }
}

/// Whether the replay of the committed patch `f` has begun (its mark
/// block says so). A patch of an older build has no mark block: false.
pub fn replay_begun(f: &File) -> bool {
    matches!(committed_json(f), Ok(Some((_, json_at))) if mark_set(f, json_at))
}

/// Whether the mark block before the trailer at `json_at` is set.
fn mark_set(f: &File, json_at: u64) -> bool {
    let mut mark = [0u8; REPLAYING.len()];
    json_at
        .checked_sub(MARK_BLOCK)
        .is_some_and(|at| f.read_exact_at(&mut mark, at).is_ok() && &mark == REPLAYING)
}

/// Marks the replay of the committed patch `f` begun.
pub fn mark_replay_begun(f: &File) -> std::io::Result<()> {
    let (_, json_at) = committed_json(f)
        .map_err(std::io::Error::other)?
        .ok_or_else(|| std::io::Error::other("not a committed patch"))?;
    let at = json_at
        .checked_sub(MARK_BLOCK)
        .ok_or_else(|| std::io::Error::other("a patch without a mark block"))?;
    f.write_all_at(REPLAYING, at)
}

/// A target's name must stay in the patch's folder.
fn name_ok(target: &[u8]) -> bool {
    !target.is_empty() && !target.contains(&b'/') && target != b".." && target != b"."
}

/// The trailer's JSON of a committed patch, its length and BLAKE3 checked,
/// and where it starts: `Ok(None)` when the file does not end like one,
/// `Err` when it does but the trailer does not read.
fn committed_json(f: &File) -> Result<Option<(Vec<u8>, u64)>, String> {
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let Some(footer_at) = len.checked_sub(FOOTER) else {
        return Ok(None);
    };
    let mut footer = [0u8; FOOTER as usize];
    f.read_exact_at(&mut footer, footer_at)
        .map_err(|e| e.to_string())?;
    if &footer[40..] != MAGIC {
        return Ok(None);
    }
    let mut json_len = [0u8; 8];
    json_len.copy_from_slice(&footer[..8]);
    let json_len = u64::from_le_bytes(json_len);
    if json_len > TRAILER_MAX || json_len > footer_at {
        return Err(format!("its trailer claims {json_len} bytes"));
    }
    let mut json = vec![0u8; json_len as usize];
    let json_at = footer_at - json_len;
    f.read_exact_at(&mut json, json_at)
        .map_err(|e| e.to_string())?;
    if blake3::hash(&json).as_bytes() != &footer[8..40] {
        return Err("its trailer does not match its checksum".into());
    }
    Ok(Some((json, json_at)))
}

/// What a committed patch says of its target, spans left out (what
/// create's scan needs).
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct PatchedFile {
    pub target: Vec<u8>,
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i64,
    #[serde(default)]
    pub before: Option<Before>,
    /// Whether the patch's replay has begun (its mark block; not in the
    /// trailer).
    #[serde(skip)]
    pub begun: bool,
}

impl PatchedFile {
    /// The target's path, beside the patch at `patch`.
    pub fn target_beside(&self, patch: &Path) -> PathBuf {
        let folder = patch.parent().unwrap_or(Path::new("."));
        folder.join(OsStr::from_bytes(&self.target))
    }

    /// Whether `m` (the target's metadata, links not followed) is still
    /// the file the patch was made against.
    pub fn patches(&self, m: &Metadata) -> bool {
        m.is_file() && (m.dev(), m.ino()) == (self.dev, self.ino)
    }

    /// Whether another writer overtook the patch: its replay never began
    /// and its target (`m`, the same file) is no longer as the commit
    /// found it. The file then holds that writer's data, whole; the patch
    /// is stale. A patch of an older build records neither: never.
    pub fn overtaken(&self, m: &Metadata) -> bool {
        self.before
            .is_some_and(|b| b != Before::of(m) && !self.begun)
    }

    /// Whether `m` shows the replay finished: the size and mtime a replay
    /// sets last are there (killed before the patch was removed).
    pub fn applied(&self, m: &Metadata) -> bool {
        m.len() == self.len && crate::sources::mtime_ns(m) == self.mtime_ns
    }
}

/// A restore staging file, as far as a committed patch goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Staged {
    /// Not a committed patch (or gone meanwhile).
    NotAPatch,
    /// A committed patch.
    Committed(PatchedFile),
    /// A file that may be a committed patch but whose trailer does not
    /// read, or that cannot be read at all: what it patched is unknown.
    Unknown(String),
}

/// Looks at the restore staging file at `path` without following a link
/// or blocking on a FIFO put there in its place.
pub fn inspect(path: &Path) -> Staged {
    let f = match open_staged(path) {
        Ok(Some(f)) => f,
        Ok(None) => return Staged::NotAPatch,
        Err(e) => return Staged::Unknown(format!("it cannot be read: {e}")),
    };
    match committed_json(&f) {
        Ok(None) => Staged::NotAPatch,
        Ok(Some((json, json_at))) => match serde_json::from_slice::<PatchedFile>(&json) {
            Ok(p) if name_ok(&p.target) => Staged::Committed(PatchedFile {
                begun: mark_set(&f, json_at),
                ..p
            }),
            Ok(_) => Staged::Unknown("its trailer names no file of its folder".into()),
            Err(e) => Staged::Unknown(format!("its trailer does not parse: {e}")),
        },
        Err(detail) => Staged::Unknown(detail),
    }
}

/// Opens a staging file to read its trailer, if it is a plain file:
/// `None` when it is gone, a link (never followed) or anything else
/// (a FIFO must not block the reader, which holds locks meanwhile).
pub fn open_staged(path: &Path) -> std::io::Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let f = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // A link put there since (ELOOP) is no staging file of ours.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(f.metadata()?.is_file().then_some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trailer(target: &[u8]) -> Trailer {
        Trailer {
            target: target.to_vec(),
            dev: 1,
            ino: 2,
            len: 8192,
            mode: 0o640,
            mtime_ns: 5,
            spans: vec![(4096, 8192)],
            before: None,
        }
    }

    fn committed(dir: &Path, name: &str, t: &Trailer) -> PathBuf {
        let p = dir.join(name);
        let mut bytes = vec![7u8; 8192];
        bytes.extend(t.encode().unwrap());
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn read_at(p: &Path) -> Option<Trailer> {
        Trailer::read(&File::open(p).unwrap())
    }

    #[test]
    fn a_trailer_reads_back_and_names_its_target_beside_the_patch() {
        let dir = tempfile::tempdir().unwrap();
        let t = trailer(b"data.bin");
        let p = committed(dir.path(), "p.tmp", &t);
        assert_eq!(read_at(&p).unwrap(), t);
        let Staged::Committed(file) = inspect(&p) else {
            panic!("{:?}", inspect(&p));
        };
        assert_eq!(file, t.file());
        assert_eq!(file.target_beside(&p), dir.path().join("data.bin"));
        std::fs::write(dir.path().join("data.bin"), b"x").unwrap();
        let m = std::fs::symlink_metadata(dir.path().join("data.bin")).unwrap();
        assert!(!file.patches(&m), "another inode");
        let same = PatchedFile {
            dev: m.dev(),
            ino: m.ino(),
            ..file
        };
        assert!(same.patches(&m));
        assert!(
            !same.applied(&m),
            "its size and mtime are not the patch's yet"
        );
        let done = PatchedFile {
            len: 1,
            mtime_ns: crate::sources::mtime_ns(&m),
            ..same
        };
        assert!(done.applied(&m));
    }

    #[test]
    fn damaged_or_escaping_trailers_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = committed(dir.path(), "p.tmp", &trailer(b"data.bin"));
        let f = File::options().write(true).open(&p).unwrap();
        let len = f.metadata().unwrap().len();
        f.write_all_at(b"X", len - FOOTER - 3).unwrap();
        assert_eq!(read_at(&p), None, "hash mismatch");
        assert!(matches!(inspect(&p), Staged::Unknown(d) if d.contains("checksum")));
        for bad in [&b"../x"[..], b"..", b".", b""] {
            let p = committed(dir.path(), "bad.tmp", &trailer(bad));
            assert_eq!(read_at(&p), None, "{bad:?}");
            assert!(matches!(inspect(&p), Staged::Unknown(_)), "{bad:?}");
        }
        let mut past = trailer(b"data.bin");
        past.spans = vec![(0, past.len + 1)];
        assert_eq!(
            read_at(&committed(dir.path(), "past.tmp", &past)),
            None,
            "span past the end"
        );
        // A length beyond the file is refused before anything is allocated.
        let mut huge = vec![0u8; 16];
        huge.extend_from_slice(&(TRAILER_MAX - 1).to_le_bytes());
        huge.extend_from_slice(&[0; 32]);
        huge.extend_from_slice(MAGIC);
        std::fs::write(&p, huge).unwrap();
        assert_eq!(read_at(&p), None);
        assert!(matches!(inspect(&p), Staged::Unknown(d) if d.contains("claims")));
        std::fs::write(&p, b"short").unwrap();
        assert_eq!(read_at(&p), None, "shorter than a footer");
        assert_eq!(inspect(&p), Staged::NotAPatch);
    }

    #[test]
    fn links_fifos_and_files_gone_are_no_patches() {
        let dir = tempfile::tempdir().unwrap();
        let real = committed(dir.path(), "real.tmp", &trailer(b"data.bin"));
        let link = dir.path().join("link.tmp");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(inspect(&link), Staged::NotAPatch, "never followed");
        let fifo = dir.path().join("fifo.tmp");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        assert_eq!(inspect(&fifo), Staged::NotAPatch, "opened without blocking");
        assert_eq!(inspect(&dir.path().join("gone.tmp")), Staged::NotAPatch);
    }
}
