//! Snapshot manifests: every captured file, folder and symlink with its
//! chunk ids, size, mode and mtime, plus the source file's identity for the
//! files cache. Stored as
//!
//! ```text
//! "ATOMAN01" | sealed(zstd(bincode(Manifest))) | blake3(all preceding bytes)
//! ```
//!
//! A manifest is untrusted input when the store is not encrypted (its
//! checksum is unkeyed): decoding bounds what it may make us allocate
//! ([`decompressed_bound`], docs/FORMAT.md) and refuses a tree no capture
//! makes, where an entry lies below a file or a symlink ([`Manifest::check_tree`]),
//! so a restore can never be led through a link.

use bincode::Options;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Read;

use crate::id::Id;
use crate::store::seal::Sealer;

pub const MANIFEST_MAGIC: &[u8; 8] = b"ATOMAN01";
pub const MANIFEST_VERSION: u32 = 1;

/// Paths inside a snapshot.
pub const DB_PATH: &str = "atocore.db";
pub const REGISTRY_PATH: &str = "project-registry.json";
pub const CHROMA_PREFIX: &str = "chroma";

/// A manifest decompresses to at most this many times its compressed size
/// ([`MANIFEST_RATIO_BOUND`]), or [`MANIFEST_FLOOR_BOUND`] bytes when that
/// is more. Real manifests are mostly chunk ids (random bytes) and
/// compress a few times at most; a bomb is refused after reading the
/// bound, never allocated in full.
pub const MANIFEST_RATIO_BOUND: u64 = 64;
pub const MANIFEST_FLOOR_BOUND: u64 = 64 << 20;

/// How many bytes a manifest of `compressed` bytes may decompress to.
pub fn decompressed_bound(compressed: usize) -> u64 {
    (compressed as u64)
        .saturating_mul(MANIFEST_RATIO_BOUND)
        .max(MANIFEST_FLOOR_BOUND)
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub version: u32,
    pub stamp: String,
    pub created_at: String,
    pub tags: Vec<String>,
    pub hostname: String,
    /// Whether `--chroma` was asked and the Chroma dir existed.
    pub chroma_included: bool,
    /// Problems met while capturing (a file that kept changing, an
    /// unreadable file): the snapshot is kept but never reported valid.
    pub capture_errors: Vec<String>,
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// Path inside the snapshot as raw bytes (names need not be UTF-8):
    /// `atocore.db`, `project-registry.json`, `chroma/<relative path>`.
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub mode: u32,
    pub mtime_ns: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum EntryKind {
    File(FileEntry),
    Dir,
    Symlink { target: Vec<u8> },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub size: u64,
    pub chunks: Vec<Id>,
    /// Captured through the SQLite online backup API.
    pub sqlite: bool,
    /// Identity of the source file when it was read, for the files cache
    /// (None when it must not be trusted: read too close to a change, or
    /// changed during the read).
    pub source: Option<SourceStat>,
    /// For a SQLite database: the identity of its `-wal` file (None when
    /// there was none). A database is unchanged only if both match.
    pub wal_source: Option<SourceStat>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceStat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
}

impl Entry {
    pub fn path_lossy(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    pub fn file(&self) -> Option<&FileEntry> {
        match &self.kind {
            EntryKind::File(f) => Some(f),
            _ => None,
        }
    }

    pub fn is_chroma(&self) -> bool {
        self.path.starts_with(b"chroma/") || self.path == b"chroma"
    }
}

impl Manifest {
    pub fn find(&self, path: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.path == path.as_bytes())
    }

    pub fn db(&self) -> Option<&FileEntry> {
        self.find(DB_PATH).and_then(Entry::file)
    }

    pub fn registry(&self) -> Option<&FileEntry> {
        self.find(REGISTRY_PATH).and_then(Entry::file)
    }

    pub fn chroma_files(&self) -> impl Iterator<Item = (&Entry, &FileEntry)> {
        self.entries
            .iter()
            .filter(|e| e.is_chroma())
            .filter_map(|e| e.file().map(|f| (e, f)))
    }

    pub fn chroma_file_count(&self) -> u64 {
        self.chroma_files().count() as u64
    }

    pub fn chroma_bytes(&self) -> u64 {
        self.chroma_files().map(|(_, f)| f.size).sum()
    }

    pub fn db_size(&self) -> u64 {
        self.db().map(|f| f.size).unwrap_or(0)
    }

    /// Encodes the manifest for storage.
    pub fn encode(&self, sealer: &Sealer) -> Result<Vec<u8>, String> {
        // Streamed into the compressor: no uncompressed copy in memory.
        let mut encoder = zstd::Encoder::new(Vec::new(), 3).map_err(|e| e.to_string())?;
        bincode::serialize_into(&mut encoder, self).map_err(|e| e.to_string())?;
        let compressed = encoder.finish().map_err(|e| e.to_string())?;
        let sealed = sealer.seal(compressed, MANIFEST_MAGIC);
        let mut out = Vec::with_capacity(sealed.len() + 40);
        out.extend_from_slice(MANIFEST_MAGIC);
        out.extend_from_slice(&sealed);
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        Ok(out)
    }

    /// Decodes a stored manifest; the error says what is wrong with it.
    pub fn decode(bytes: &[u8], sealer: &Sealer) -> Result<Manifest, String> {
        if bytes.len() < MANIFEST_MAGIC.len() + 32 {
            return Err(format!("truncated ({} bytes)", bytes.len()));
        }
        if &bytes[..8] != MANIFEST_MAGIC {
            return Err("not an atosnap manifest (bad magic)".to_string());
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if blake3::hash(body).as_bytes() != sum {
            return Err("checksum mismatch (truncated or modified)".to_string());
        }
        let compressed = sealer.open(body[8..].to_vec(), MANIFEST_MAGIC)?;
        let raw = decompress_bounded(&compressed, decompressed_bound(compressed.len()))?;
        let manifest: Manifest = bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .allow_trailing_bytes()
            .with_limit(raw.len() as u64)
            .deserialize(&raw)
            .map_err(|e| format!("does not decode: {e}"))?;
        if manifest.version > MANIFEST_VERSION {
            return Err(format!(
                "manifest version {} is newer than this atosnap reads ({MANIFEST_VERSION})",
                manifest.version
            ));
        }
        manifest.check_tree()?;
        Ok(manifest)
    }

    /// Refuses a tree no capture makes: the same path twice, or an entry
    /// below a file or a symlink (`chroma/x` a link and `chroma/x/y` an
    /// entry: restoring it would write wherever the link points). The
    /// Chroma dir itself is exempt: it may be a link to the real folder.
    pub fn check_tree(&self) -> Result<(), String> {
        let mut kinds: HashMap<&[u8], &EntryKind> = HashMap::with_capacity(self.entries.len());
        for e in &self.entries {
            if kinds.insert(&e.path, &e.kind).is_some() {
                return Err(format!("entry {:?} is listed twice", e.path_lossy()));
            }
        }
        for e in &self.entries {
            let above = e
                .path
                .iter()
                .enumerate()
                .filter(|(_, &b)| b == b'/')
                .map(|(i, _)| &e.path[..i])
                .filter(|p| *p != CHROMA_PREFIX.as_bytes());
            for parent in above {
                let what = match kinds.get(parent) {
                    Some(EntryKind::Symlink { .. }) => "a symlink",
                    Some(EntryKind::File(_)) => "a file",
                    _ => continue,
                };
                return Err(format!(
                    "entry {:?} lies below {:?}, which is {what}",
                    e.path_lossy(),
                    String::from_utf8_lossy(parent)
                ));
            }
        }
        Ok(())
    }
}

/// Decompresses a zstd stream, refusing one that would exceed `bound`
/// bytes (read up to the bound, never beyond).
fn decompress_bounded(compressed: &[u8], bound: u64) -> Result<Vec<u8>, String> {
    let decoder = zstd::stream::read::Decoder::new(compressed)
        .map_err(|e| format!("does not decompress: {e}"))?;
    let mut raw = Vec::new();
    decoder
        .take(bound.saturating_add(1))
        .read_to_end(&mut raw)
        .map_err(|e| format!("does not decompress: {e}"))?;
    if raw.len() as u64 > bound {
        return Err(format!(
            "decompresses past {bound} bytes, the bound for {} compressed bytes (a decompression bomb?)",
            compressed.len()
        ));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            stamp: "20260411T120000Z".into(),
            created_at: "2026-04-11T12:00:00Z".into(),
            tags: vec!["t".into()],
            hostname: "h".into(),
            chroma_included: false,
            capture_errors: vec![],
            entries: vec![Entry {
                path: b"atocore.db".to_vec(),
                kind: EntryKind::File(FileEntry {
                    size: 3,
                    chunks: vec![Id::hash(b"abc")],
                    sqlite: true,
                    source: None,
                    wal_source: None,
                }),
                mode: 0o644,
                mtime_ns: 1,
            }],
        }
    }

    #[test]
    fn round_trip_and_tamper_detection() {
        let m = sample();
        let bytes = m.encode(&Sealer::Plain).unwrap();
        assert_eq!(Manifest::decode(&bytes, &Sealer::Plain).unwrap(), m);
        let mut flipped = bytes.clone();
        flipped[12] ^= 1;
        assert!(Manifest::decode(&flipped, &Sealer::Plain)
            .unwrap_err()
            .contains("checksum"));
        assert!(Manifest::decode(&bytes[..bytes.len() - 5], &Sealer::Plain).is_err());
        assert!(Manifest::decode(b"garbage", &Sealer::Plain).is_err());
    }

    /// A plain manifest holding `payload` as its zstd stream, with a valid
    /// (unkeyed) checksum: what anyone who can write the store can forge.
    fn forged(payload: &[u8]) -> Vec<u8> {
        let mut out = MANIFEST_MAGIC.to_vec();
        out.extend_from_slice(&Sealer::Plain.seal(payload.to_vec(), MANIFEST_MAGIC));
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    #[test]
    fn a_decompression_bomb_is_refused_at_the_bound() {
        // Zeros past the bound: they would decode as an empty manifest.
        let size = MANIFEST_FLOOR_BOUND as usize + (8 << 20);
        let mut enc = zstd::Encoder::new(Vec::new(), 1).unwrap();
        let block = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(block.len());
            std::io::Write::write_all(&mut enc, &block[..n]).unwrap();
            left -= n;
        }
        let bomb = enc.finish().unwrap();
        assert!((bomb.len() as u64) * MANIFEST_RATIO_BOUND < size as u64);
        let err = Manifest::decode(&forged(&bomb), &Sealer::Plain).unwrap_err();
        assert!(err.contains("decompresses past"), "{err}");
        // Under the bound the same stream is read (and decodes).
        let small = zstd::encode_all(&vec![0u8; 1 << 20][..], 1).unwrap();
        assert!(Manifest::decode(&forged(&small), &Sealer::Plain).is_ok());
    }

    #[test]
    fn an_entry_below_a_symlink_or_a_file_is_refused() {
        let entry = |path: &[u8], kind: EntryKind| Entry {
            path: path.to_vec(),
            kind,
            mode: 0o755,
            mtime_ns: 0,
        };
        let link = EntryKind::Symlink {
            target: b"/etc/cron.d".to_vec(),
        };
        let file = sample().entries[0].kind.clone();
        for (parent, kind) in [(&b"chroma/x"[..], link.clone()), (b"chroma/x", file)] {
            let mut m = sample();
            m.entries.push(entry(b"chroma", EntryKind::Dir));
            m.entries.push(entry(parent, kind));
            m.entries.push(entry(b"chroma/x/evil", EntryKind::Dir));
            let err =
                Manifest::decode(&m.encode(&Sealer::Plain).unwrap(), &Sealer::Plain).unwrap_err();
            assert!(
                err.contains("chroma/x/evil") && err.contains("chroma/x"),
                "{err}"
            );
        }
        let mut twice = sample();
        twice.entries.push(entry(b"chroma/x", EntryKind::Dir));
        twice.entries.push(entry(b"chroma/x", link.clone()));
        let err = twice.check_tree().unwrap_err();
        assert!(err.contains("twice"), "{err}");
        // A link as the Chroma dir, folders with content, links as leaves: fine.
        let mut ok = sample();
        ok.entries.push(entry(b"chroma", link.clone()));
        ok.entries.push(entry(b"chroma/d", EntryKind::Dir));
        ok.entries.push(entry(b"chroma/d/l", link));
        let bytes = ok.encode(&Sealer::Plain).unwrap();
        assert_eq!(Manifest::decode(&bytes, &Sealer::Plain).unwrap(), ok);
    }
}
