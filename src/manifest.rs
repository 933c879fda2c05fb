//! Snapshot manifests: every captured file, folder and symlink with its
//! chunk ids, size, mode and mtime, plus the source file's identity for the
//! files cache. Stored as
//!
//! ```text
//! "ATOMAN01" | sealed(zstd(bincode(Manifest))) | blake3(all preceding bytes)
//! ```

use serde::{Deserialize, Serialize};

use crate::id::Id;
use crate::store::seal::Sealer;

pub const MANIFEST_MAGIC: &[u8; 8] = b"ATOMAN01";
pub const MANIFEST_VERSION: u32 = 1;

/// Paths inside a snapshot.
pub const DB_PATH: &str = "atocore.db";
pub const REGISTRY_PATH: &str = "project-registry.json";
pub const CHROMA_PREFIX: &str = "chroma";

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
        let raw = zstd::stream::decode_all(&compressed[..])
            .map_err(|e| format!("does not decompress: {e}"))?;
        let manifest: Manifest =
            bincode::deserialize(&raw).map_err(|e| format!("does not decode: {e}"))?;
        if manifest.version > MANIFEST_VERSION {
            return Err(format!(
                "manifest version {} is newer than this atosnap reads ({MANIFEST_VERSION})",
                manifest.version
            ));
        }
        Ok(manifest)
    }
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
}
