//! Snapshot manifests: every captured file, folder and symlink with its
//! chunk list, size, mode and mtime, plus the source file's identity for the
//! files cache. Stored as
//!
//! ```text
//! "ATOMAN02" | sealed(zstd(bincode(ManifestV2))) | blake3(all preceding bytes)
//! ```
//!
//! Format 2 holds one list-tree root per file ([`ChunkList::Tree`], the
//! list blobs live in the packs); format 1 (`"ATOMAN01"`, read only) held
//! every chunk id ([`ChunkList::Ids`]). Both decode into the one in-memory
//! [`Manifest`]; only format 2 is written. Chunk ids are read through
//! `Store::file_chunks`, whatever the format.
//!
//! A manifest is untrusted input when the store is not encrypted (its
//! checksum is unkeyed): decoding bounds what it may make us allocate
//! ([`decompressed_bound`], docs/FORMAT.md) and refuses a tree no capture
//! makes, where an entry lies below a file or a symlink ([`Manifest::check_tree`]),
//! so a restore can never be led through a link.

use bincode::Options;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::Read;

use crate::id::Id;
use crate::store::lists::ListRef;
use crate::store::seal::Sealer;

/// The manifest this build writes (format 2).
pub const MANIFEST_MAGIC: &[u8; 8] = b"ATOMAN02";
pub const MANIFEST_VERSION: u32 = 2;
/// Format 1's manifest, still read.
pub const MANIFEST_MAGIC_V1: &[u8; 8] = b"ATOMAN01";
pub const MANIFEST_VERSION_V1: u32 = 1;

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

/// A file's chunk ids, as its manifest holds them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum ChunkList {
    /// Format 1: every id, inline.
    Ids(Vec<Id>),
    /// Format 2: the root of the file's list tree (list blobs in packs).
    Tree(ListRef),
}

impl ChunkList {
    /// How many chunks the file has (no list blob is read).
    pub fn len(&self) -> u64 {
        match self {
            ChunkList::Ids(ids) => ids.len() as u64,
            ChunkList::Tree(r) => r.chunks,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub size: u64,
    /// Its chunk ids in file order (read them with `Store::file_chunks`).
    pub list: ChunkList,
    /// Captured through the SQLite online backup API.
    pub sqlite: bool,
    /// Identity of the source file when it was read, for the files cache
    /// (None when it must not be trusted: read too close to a change, or
    /// changed during the read).
    pub source: Option<SourceStat>,
    /// For a SQLite database: the identity of its `-wal` file (None when
    /// there was none). A database is unchanged only if both match.
    pub wal_source: Option<WalSource>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceStat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
}

/// The identity of a database's `-wal` for the files cache. Stored as a
/// [`SourceStat`] is (the same fields in the same order, so manifests
/// written before it read the same), with a commit point where the ctime
/// would be: SQLite opening the database may change a WAL's ctime, and a
/// commit may become visible without changing the WAL's size or mtime.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WalSource {
    pub size: u64,
    pub mtime_ns: i64,
    /// What the database's readers could see when it was read: a digest
    /// of the wal-index header in its `-shm` (see
    /// `sources::sqlite::wal_commit_point`); 0 when there was none, and
    /// in manifests of builds before it.
    pub commit_point: i64,
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

    /// Encodes the manifest for storage, in format 2: every file must hold
    /// a list tree (a format-1 id list is converted by `copy`, never written).
    pub fn encode(&self, sealer: &Sealer) -> Result<Vec<u8>, String> {
        let wire = wire::to_v2(self)?;
        // Streamed into the compressor: no uncompressed copy in memory.
        let mut encoder = zstd::Encoder::new(Vec::new(), 3).map_err(|e| e.to_string())?;
        bincode::serialize_into(&mut encoder, &wire).map_err(|e| e.to_string())?;
        let compressed = encoder.finish().map_err(|e| e.to_string())?;
        let sealed = sealer.seal(compressed, MANIFEST_MAGIC);
        let mut out = Vec::with_capacity(sealed.len() + 40);
        out.extend_from_slice(MANIFEST_MAGIC);
        out.extend_from_slice(&sealed);
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        Ok(out)
    }

    /// Decodes a stored manifest of either format; the error says what is
    /// wrong with it.
    pub fn decode(bytes: &[u8], sealer: &Sealer) -> Result<Manifest, String> {
        if bytes.len() < MANIFEST_MAGIC.len() + 32 {
            return Err(format!("truncated ({} bytes)", bytes.len()));
        }
        let magic: &[u8; 8] = match &bytes[..8] {
            m if m == MANIFEST_MAGIC => MANIFEST_MAGIC,
            m if m == MANIFEST_MAGIC_V1 => MANIFEST_MAGIC_V1,
            _ => return Err("not an atosnap manifest (bad magic)".to_string()),
        };
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if blake3::hash(body).as_bytes() != sum {
            return Err("checksum mismatch (truncated or modified)".to_string());
        }
        let compressed = sealer.open(body[8..].to_vec(), magic)?;
        let raw = decompress_bounded(&compressed, decompressed_bound(compressed.len()))?;
        let manifest = if magic == MANIFEST_MAGIC {
            wire::from_v2(deserialize(&raw)?)?
        } else {
            wire::from_v1(deserialize(&raw)?)?
        };
        manifest.check_tree()?;
        Ok(manifest)
    }

    /// Refuses a tree no capture makes: a path that is not one of the
    /// three sources or a plain relative name below `chroma/` ([`path_ok`]:
    /// restoring it could escape the target), the same path twice, or an
    /// entry below a file or a symlink (`chroma/x` a link and `chroma/x/y`
    /// an entry: restoring it would write wherever the link points). The
    /// Chroma dir itself is exempt: it may be a link to the real folder.
    /// Linear in the manifest's bytes (but for the sort), whatever its
    /// paths: a hostile one must not hang every reader.
    pub fn check_tree(&self) -> Result<(), String> {
        if let Some(e) = self.entries.iter().find(|e| !path_ok(&e.path)) {
            return Err(format!("unsafe or unexpected path {:?}", e.path_lossy()));
        }
        let mut seen: HashSet<&[u8]> = HashSet::with_capacity(self.entries.len());
        for e in &self.entries {
            if !seen.insert(&e.path) {
                return Err(format!("entry {:?} is listed twice", e.path_lossy()));
            }
        }
        // In tree order (a folder's entries right after it, `/` sorting
        // before any other byte), the entries above one are a stack.
        let mut order: Vec<&Entry> = self.entries.iter().collect();
        order.sort_unstable_by(|a, b| tree_order(&a.path).cmp(tree_order(&b.path)));
        let mut above: Vec<&Entry> = Vec::new();
        for e in order {
            while above.last().is_some_and(|a| !is_below(&e.path, &a.path)) {
                above.pop();
            }
            // A file or link above is the innermost: whatever came after
            // it and was not below it has been popped.
            let blocker = above.last().filter(|a| {
                a.path != CHROMA_PREFIX.as_bytes()
                    && matches!(a.kind, EntryKind::Symlink { .. } | EntryKind::File(_))
            });
            if let Some(a) = blocker {
                let what = match a.kind {
                    EntryKind::Symlink { .. } => "a symlink",
                    _ => "a file",
                };
                return Err(format!(
                    "entry {:?} lies below {:?}, which is {what}",
                    e.path_lossy(),
                    a.path_lossy()
                ));
            }
            above.push(e);
        }
        Ok(())
    }
}

/// The longest path a manifest may hold (Linux's `PATH_MAX`).
pub const PATH_MAX: usize = 4096;

/// Whether `p` is a path a capture makes: the db, the registry, the
/// Chroma dir, or below it plain relative names (no `.`, `..`, empty
/// component or NUL), at most [`PATH_MAX`] bytes.
pub fn path_ok(p: &[u8]) -> bool {
    let below_chroma = || {
        p.strip_prefix(CHROMA_PREFIX.as_bytes())
            .and_then(|r| r.strip_prefix(b"/"))
            .is_some_and(|rel| {
                rel.split(|&b| b == b'/')
                    .all(|c| !c.is_empty() && c != b"." && c != b".." && !c.contains(&0))
            })
    };
    p.len() <= PATH_MAX
        && (p == DB_PATH.as_bytes()
            || p == REGISTRY_PATH.as_bytes()
            || p == CHROMA_PREFIX.as_bytes()
            || below_chroma())
}

/// A path's bytes with `/` first in the order (NUL is no path's).
fn tree_order(p: &[u8]) -> impl Iterator<Item = u8> + Clone + '_ {
    p.iter().map(|&b| if b == b'/' { 0 } else { b })
}

/// Whether `p` lies below the folder `dir`.
fn is_below(p: &[u8], dir: &[u8]) -> bool {
    p.len() > dir.len() && p.starts_with(dir) && p[dir.len()] == b'/'
}

/// Bincode as manifests are written, bounded by the bytes at hand.
fn deserialize<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, String> {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(raw.len() as u64)
        .deserialize(raw)
        .map_err(|e| format!("does not decode: {e}"))
}

/// The stored forms of both formats: [`Manifest`] with the file's list as
/// format 1 (`chunks: Vec<Id>`) or format 2 (`list: ListRef`) held it.
/// Only this module knows them.
mod wire {
    use super::*;

    #[derive(Serialize, Deserialize)]
    pub struct ManifestW<F> {
        pub version: u32,
        pub stamp: String,
        pub created_at: String,
        pub tags: Vec<String>,
        pub hostname: String,
        pub chroma_included: bool,
        pub capture_errors: Vec<String>,
        pub entries: Vec<EntryW<F>>,
    }

    #[derive(Serialize, Deserialize)]
    pub struct EntryW<F> {
        pub path: Vec<u8>,
        pub kind: KindW<F>,
        pub mode: u32,
        pub mtime_ns: i64,
    }

    #[derive(Serialize, Deserialize)]
    pub enum KindW<F> {
        File(F),
        Dir,
        Symlink { target: Vec<u8> },
    }

    /// Format 1's file entry.
    #[derive(Serialize, Deserialize)]
    pub struct FileV1 {
        pub size: u64,
        pub chunks: Vec<Id>,
        pub sqlite: bool,
        pub source: Option<SourceStat>,
        pub wal_source: Option<WalSource>,
    }

    /// Format 2's file entry: the list tree's root instead of the ids.
    #[derive(Serialize, Deserialize)]
    pub struct FileV2 {
        pub size: u64,
        pub list: ListRef,
        pub sqlite: bool,
        pub source: Option<SourceStat>,
        pub wal_source: Option<WalSource>,
    }

    pub fn to_v2(m: &Manifest) -> Result<ManifestW<FileV2>, String> {
        let entries = m
            .entries
            .iter()
            .map(|e| {
                let kind = match &e.kind {
                    EntryKind::File(f) => KindW::File(FileV2 {
                        size: f.size,
                        list: match &f.list {
                            ChunkList::Tree(r) => *r,
                            ChunkList::Ids(_) => {
                                return Err(format!(
                                    "entry {:?} holds a format-1 id list, which is never written",
                                    e.path_lossy()
                                ))
                            }
                        },
                        sqlite: f.sqlite,
                        source: f.source,
                        wal_source: f.wal_source,
                    }),
                    EntryKind::Dir => KindW::Dir,
                    EntryKind::Symlink { target } => KindW::Symlink {
                        target: target.clone(),
                    },
                };
                Ok(EntryW {
                    path: e.path.clone(),
                    kind,
                    mode: e.mode,
                    mtime_ns: e.mtime_ns,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(ManifestW {
            version: MANIFEST_VERSION,
            stamp: m.stamp.clone(),
            created_at: m.created_at.clone(),
            tags: m.tags.clone(),
            hostname: m.hostname.clone(),
            chroma_included: m.chroma_included,
            capture_errors: m.capture_errors.clone(),
            entries,
        })
    }

    pub fn from_v2(w: ManifestW<FileV2>) -> Result<Manifest, String> {
        refuse_newer(w.version, MANIFEST_VERSION, MANIFEST_MAGIC)?;
        convert(w, |path, f| {
            let entry = |e: String| format!("entry {:?}: {e}", String::from_utf8_lossy(path));
            f.list.check().map_err(entry)?;
            // Every chunk holds at least one byte. A tree's nodes are
            // checked one by one as they are read, so without this a tree
            // whose nodes repeat one child could claim any count, and a
            // reader collecting the ids would never stop.
            if f.list.chunks > f.size {
                return Err(entry(format!(
                    "its list claims {} chunks for {} bytes",
                    f.list.chunks, f.size
                )));
            }
            Ok(FileEntry {
                size: f.size,
                list: ChunkList::Tree(f.list),
                sqlite: f.sqlite,
                source: f.source,
                wal_source: f.wal_source,
            })
        })
    }

    pub fn from_v1(w: ManifestW<FileV1>) -> Result<Manifest, String> {
        refuse_newer(w.version, MANIFEST_VERSION_V1, MANIFEST_MAGIC_V1)?;
        convert(w, |_, f| {
            Ok(FileEntry {
                size: f.size,
                list: ChunkList::Ids(f.chunks),
                sqlite: f.sqlite,
                source: f.source,
                wal_source: f.wal_source,
            })
        })
    }

    fn convert<F>(
        w: ManifestW<F>,
        file: impl Fn(&[u8], F) -> Result<FileEntry, String>,
    ) -> Result<Manifest, String> {
        let entries = w
            .entries
            .into_iter()
            .map(|e| {
                let kind = match e.kind {
                    KindW::File(f) => EntryKind::File(file(&e.path, f)?),
                    KindW::Dir => EntryKind::Dir,
                    KindW::Symlink { target } => EntryKind::Symlink { target },
                };
                Ok(Entry {
                    path: e.path,
                    kind,
                    mode: e.mode,
                    mtime_ns: e.mtime_ns,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Manifest {
            version: w.version,
            stamp: w.stamp,
            created_at: w.created_at,
            tags: w.tags,
            hostname: w.hostname,
            chroma_included: w.chroma_included,
            capture_errors: w.capture_errors,
            entries,
        })
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

/// A manifest whose magic is `magic` but whose version field says newer
/// than `max` was written by a newer atosnap: refused, not guessed at.
fn refuse_newer(version: u32, max: u32, magic: &[u8; 8]) -> Result<(), String> {
    if version > max {
        return Err(format!(
            "an {} manifest says version {version}",
            String::from_utf8_lossy(magic)
        ));
    }
    Ok(())
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
                    list: ChunkList::Tree(ListRef {
                        root: Some(Id::hash(b"abc")),
                        chunks: 1,
                        levels: 0,
                    }),
                    sqlite: true,
                    source: None,
                    wal_source: None,
                }),
                mode: 0o644,
                mtime_ns: 1,
            }],
        }
    }

    fn tree(entries: &[(&[u8], EntryKind)]) -> Result<(), String> {
        let entries = entries
            .iter()
            .map(|(p, kind)| Entry {
                path: p.to_vec(),
                kind: kind.clone(),
                mode: 0o40755,
                mtime_ns: 0,
            })
            .collect();
        Manifest {
            entries,
            ..sample()
        }
        .check_tree()
    }

    /// What a capture never makes is refused at decoding, for every
    /// reader (validate, verify, restore alike): paths that could escape,
    /// and entries below a file or a symlink, even with siblings sorting
    /// between them byte by byte (`x-1` before `x/y`).
    #[test]
    fn a_tree_no_capture_makes_is_refused() {
        let (dir, link) = (
            EntryKind::Dir,
            EntryKind::Symlink {
                target: b"t".to_vec(),
            },
        );
        let fine = [
            (&b"chroma"[..], link.clone()),
            (b"chroma/x", dir.clone()),
            (b"chroma/x-1", dir.clone()),
            (b"chroma/x/y", dir.clone()),
        ];
        assert_eq!(tree(&fine), Ok(()), "the Chroma dir itself may be a link");
        let below = [
            (&b"chroma/x"[..], link.clone()),
            (b"chroma/x-1", dir.clone()),
            (b"chroma/x/y/z", dir.clone()),
        ];
        let err = tree(&below).unwrap_err();
        assert!(
            err.contains("lies below \"chroma/x\", which is a symlink"),
            "{err}"
        );
        let long = [
            b"chroma/".to_vec(),
            b"a/".repeat(PATH_MAX / 2),
            b"a".to_vec(),
        ]
        .concat();
        for bad in [
            &b"chroma/../etc/passwd"[..],
            b"chroma/a/../../x",
            b"chroma//a",
            b"chroma/./a",
            b"chroma/a/",
            b"/etc/passwd",
            b"other.db",
            b"chroma/a\0b",
            b"chromax",
            &long,
        ] {
            let err = tree(&[(bad, dir.clone())]).unwrap_err();
            assert!(err.contains("unsafe or unexpected path"), "{err}");
        }
        for good in [&b"chroma/a/b\xff.bin"[..], b"chroma/...", b"atocore.db"] {
            assert!(path_ok(good), "{good:?}");
        }
        // The deepest path allowed, with every folder on its way: fine
        // (and checked in one pass, not one lookup per prefix).
        let deep: Vec<Vec<u8>> = (1..=(PATH_MAX - 7) / 2)
            .map(|n| [b"chroma".to_vec(), b"/a".repeat(n)].concat())
            .collect();
        let deep: Vec<(&[u8], EntryKind)> = deep.iter().map(|p| (&p[..], dir.clone())).collect();
        assert_eq!(tree(&deep), Ok(()));
        let twice = [(&b"chroma/x"[..], dir.clone()), (b"chroma/x", dir)];
        assert!(tree(&twice).unwrap_err().contains("listed twice"));
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

    /// A list claiming more chunks than its file has bytes is refused at
    /// decoding: every chunk holds a byte at least, and a forged tree
    /// (nodes repeating one child) could otherwise claim any count.
    #[test]
    fn a_list_claiming_more_chunks_than_bytes_is_refused() {
        let mut m = sample();
        if let EntryKind::File(f) = &mut m.entries[0].kind {
            f.list = ChunkList::Tree(ListRef {
                root: Some(Id::hash(b"abc")),
                chunks: 1 << 32,
                levels: 4,
            });
        }
        let bytes = m.encode(&Sealer::Plain).unwrap();
        let err = Manifest::decode(&bytes, &Sealer::Plain).unwrap_err();
        assert!(
            err.contains("\"atocore.db\": its list claims 4294967296 chunks for 3 bytes"),
            "{err}"
        );
        // As many chunks as bytes is possible (one-byte chunks).
        if let EntryKind::File(f) = &mut m.entries[0].kind {
            f.list = ChunkList::Tree(ListRef {
                root: Some(Id::hash(b"abc")),
                chunks: 3,
                levels: 0,
            });
        }
        let bytes = m.encode(&Sealer::Plain).unwrap();
        assert_eq!(Manifest::decode(&bytes, &Sealer::Plain).unwrap(), m);
    }

    #[test]
    fn only_list_trees_are_written_and_ids_read_from_format_1() {
        let mut m = sample();
        if let EntryKind::File(f) = &mut m.entries[0].kind {
            f.list = ChunkList::Ids(vec![Id::hash(b"abc")]);
        }
        let err = m.encode(&Sealer::Plain).unwrap_err();
        assert!(err.contains("format-1 id list"), "{err}");
        // The same manifest as format 1 wrote it decodes into `Ids`.
        let w = wire::to_v2(&sample()).unwrap();
        let v1 = wire::ManifestW {
            version: 1,
            stamp: w.stamp,
            created_at: w.created_at,
            tags: w.tags,
            hostname: w.hostname,
            chroma_included: w.chroma_included,
            capture_errors: w.capture_errors,
            entries: vec![wire::EntryW {
                path: b"atocore.db".to_vec(),
                kind: wire::KindW::File(wire::FileV1 {
                    size: 3,
                    chunks: vec![Id::hash(b"abc")],
                    sqlite: true,
                    source: None,
                    wal_source: None,
                }),
                mode: 0o644,
                mtime_ns: 1,
            }],
        };
        let compressed = zstd::encode_all(&bincode::serialize(&v1).unwrap()[..], 3).unwrap();
        let mut bytes = MANIFEST_MAGIC_V1.to_vec();
        bytes.extend_from_slice(&Sealer::Plain.seal(compressed, MANIFEST_MAGIC_V1));
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(sum.as_bytes());
        let back = Manifest::decode(&bytes, &Sealer::Plain).unwrap();
        assert_eq!(back.entries[0].kind, m.entries[0].kind);
        // A format-2 root that no builder makes is refused on decode.
        let mut bad = wire::to_v2(&sample()).unwrap();
        if let wire::KindW::File(f) = &mut bad.entries[0].kind {
            f.list.chunks = 0;
        }
        let compressed = zstd::encode_all(&bincode::serialize(&bad).unwrap()[..], 3).unwrap();
        let err = Manifest::decode(&forged(&compressed), &Sealer::Plain).unwrap_err();
        assert!(
            err.contains("atocore.db") && err.contains("no chunks"),
            "{err}"
        );
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
