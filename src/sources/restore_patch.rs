//! A committed restore patch as it lies in a Chroma tree: the trailer that
//! commits it, written and read here. Restore stages, commits, replays and
//! removes patches (`ops/restore/patch.rs`); create's scan reads the
//! trailer to name the file a killed restore left half-written, which a
//! snapshot must never report as good.
//!
//! A committed patch ends with: the trailer as JSON, its length (8 bytes,
//! little-endian), its BLAKE3 (32 bytes), and [`MAGIC`].

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
        let len = f.metadata().ok()?.len();
        let mut footer = [0u8; FOOTER as usize];
        f.read_exact_at(&mut footer, len.checked_sub(FOOTER)?)
            .ok()?;
        if &footer[40..] != MAGIC {
            return None;
        }
        let json_len = u64::from_le_bytes(footer[..8].try_into().ok()?);
        if json_len > TRAILER_MAX {
            return None;
        }
        let mut json = vec![0u8; json_len as usize];
        f.read_exact_at(&mut json, (len - FOOTER).checked_sub(json_len)?)
            .ok()?;
        if blake3::hash(&json).as_bytes() != &footer[8..40] {
            return None;
        }
        let t: Trailer = serde_json::from_slice(&json).ok()?;
        let name_ok = !t.target.is_empty()
            && !t.target.contains(&b'/')
            && t.target != b".."
            && t.target != b".";
        let spans_ok = t.spans.iter().all(|&(a, b)| a <= b && b <= t.len);
        (name_ok && spans_ok).then_some(t)
    }

    /// Reads the trailer of the file at `path`, if it is a committed patch.
    pub fn read_at(path: &Path) -> Option<Trailer> {
        Trailer::read(&File::open(path).ok()?)
    }

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
        }
    }

    fn committed(dir: &Path, t: &Trailer) -> PathBuf {
        let p = dir.join(".atosnap-restore-x.tmp");
        let mut bytes = vec![7u8; 8192];
        bytes.extend(t.encode().unwrap());
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn a_trailer_reads_back_and_names_its_target_beside_the_patch() {
        let dir = tempfile::tempdir().unwrap();
        let t = trailer(b"data.bin");
        let p = committed(dir.path(), &t);
        let read = Trailer::read_at(&p).unwrap();
        assert_eq!(read, t);
        assert_eq!(read.target_beside(&p), dir.path().join("data.bin"));
        std::fs::write(dir.path().join("data.bin"), b"x").unwrap();
        let m = std::fs::symlink_metadata(dir.path().join("data.bin")).unwrap();
        assert!(!read.patches(&m), "another inode");
        let same = Trailer {
            dev: m.dev(),
            ino: m.ino(),
            ..read
        };
        assert!(same.patches(&m));
    }

    #[test]
    fn damaged_or_escaping_trailers_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = committed(dir.path(), &trailer(b"data.bin"));
        let f = File::options().write(true).open(&p).unwrap();
        let len = f.metadata().unwrap().len();
        f.write_all_at(b"X", len - FOOTER - 3).unwrap();
        assert_eq!(Trailer::read_at(&p), None, "hash mismatch");
        for bad in [&b"../x"[..], b"..", b".", b""] {
            let p = committed(dir.path(), &trailer(bad));
            assert_eq!(Trailer::read_at(&p), None, "{bad:?}");
        }
        let mut past = trailer(b"data.bin");
        past.spans = vec![(0, past.len + 1)];
        assert_eq!(
            Trailer::read_at(&committed(dir.path(), &past)),
            None,
            "span past the end"
        );
        std::fs::write(&p, b"short").unwrap();
        assert_eq!(Trailer::read_at(&p), None, "shorter than a footer");
    }
}
