//! Pack files: immutable containers of stored chunks with their own index.
//!
//! ```text
//! "ATOPACK1"                       8 bytes
//! blob 0 .. blob n-1               stored chunks (zstd or raw), back to back
//! index                            bincode Vec<PackEntry> (sealed when encrypted)
//! index_len                        u32 little endian
//! blake3(index)                    32 bytes
//! "ATOPKEND"                       8 bytes
//! ```
//!
//! A pack is named by the blake3 of all its bytes, written under a temp
//! name, fsynced and renamed; it is never modified afterwards.

use bincode::Options;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::id::Id;

pub const PACK_MAGIC: &[u8; 8] = b"ATOPACK1";
pub const TRAILER_MAGIC: &[u8; 8] = b"ATOPKEND";
/// Associated data binding a sealed pack index to its role.
pub const INDEX_AD: &[u8] = b"pack-index";
pub const TRAILER_LEN: usize = 4 + 32 + 8;
/// Bytes of one encoded index entry (bincode, fixed-width integers: id,
/// offset, stored length, raw length, compressed flag). A count prefix
/// claiming more entries than the index bytes can hold is refused before
/// anything is allocated for them.
const ENCODED_ENTRY_LEN: u64 = 32 + 4 + 4 + 4 + 1;

/// One chunk inside a pack.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackEntry {
    pub id: Id,
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
    pub compressed: bool,
}

/// Object name of a pack: [`Object::Pack`](super::names::Object::Pack)'s name.
pub fn pack_name(id: &Id) -> String {
    super::names::Object::Pack(*id).name()
}

/// The pack id from an object name, if it is exactly that pack's name.
/// Only the canonical name counts: gc reads a listed pack by the name it
/// was listed under but deletes it by id, so a copy in another shard
/// folder (or a name with more parts) standing for the id would let gc
/// judge the copy live and delete the pack at the canonical name.
pub fn pack_id_from_name(name: &str) -> Option<Id> {
    let file = name.strip_prefix("objects/")?.split('/').nth(1)?;
    let id = Id::from_hex(file.strip_suffix(".pack")?)?;
    (pack_name(&id) == name).then_some(id)
}

/// The bytes of a pack as they are written: passed on to `out` while the
/// pack id (the blake3 of the whole file) and the length are kept. Both
/// pack formats write through it and end with the same tail.
pub(crate) struct PackBody<W: Write> {
    out: W,
    hasher: blake3::Hasher,
    len: u64,
}

impl<W: Write> PackBody<W> {
    /// A body that starts with `magic`.
    pub(crate) fn start(out: W, magic: &[u8]) -> std::io::Result<Self> {
        let mut body = PackBody {
            out,
            hasher: blake3::Hasher::new(),
            len: 0,
        };
        body.write(magic)?;
        Ok(body)
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.out.write_all(data)?;
        self.hasher.update(data);
        self.len += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Tests move a pack to the 4 GiB edge without writing 4 GiB.
    #[cfg(test)]
    pub(crate) fn pretend_len(&mut self, len: u64) {
        self.len = len;
    }

    /// Ends the pack with its stored `index` and the tail (index length,
    /// index blake3, magic: see [`parse_trailer`]); returns the flushed
    /// output, the pack id and the pack's size.
    pub(crate) fn finish(mut self, index: &[u8]) -> std::io::Result<(W, Id, u64)> {
        let index_len = u32::try_from(index.len()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a pack index of {} bytes", index.len()),
            )
        })?;
        self.write(index)?;
        self.write(&index_len.to_le_bytes())?;
        self.write(blake3::hash(index).as_bytes())?;
        self.write(TRAILER_MAGIC)?;
        self.out.flush()?;
        Ok((self.out, Id::from(self.hasher.finalize()), self.len))
    }
}

/// Streams a pack to a local temp file, hashing as it goes.
pub struct PackWriter {
    body: PackBody<BufWriter<File>>,
    path: PathBuf,
    entries: Vec<PackEntry>,
}

/// A finished pack: durable on local disk, not yet published.
pub struct FinishedPack {
    pub id: Id,
    pub path: PathBuf,
    pub entries: Vec<PackEntry>,
    pub size: u64,
}

impl PackWriter {
    pub fn create(path: &Path) -> std::io::Result<PackWriter> {
        let file = crate::store::backend::create_private_file(path)?;
        Ok(PackWriter {
            body: PackBody::start(BufWriter::with_capacity(1 << 20, file), PACK_MAGIC)?,
            path: path.to_path_buf(),
            entries: Vec::new(),
        })
    }

    pub fn len(&self) -> u64 {
        self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a stored chunk; returns its entry.
    pub fn add(
        &mut self,
        id: Id,
        stored: &[u8],
        raw_len: u32,
        compressed: bool,
    ) -> std::io::Result<PackEntry> {
        // Offsets and lengths are u32 on disk: a chunk that would end past
        // 4 GiB is refused rather than recorded at a wrapped offset.
        let len = self.body.len();
        let (Ok(offset), Ok(stored_len)) = (u32::try_from(len), u32::try_from(stored.len())) else {
            return Err(offset_overflow(len, stored.len()));
        };
        if offset.checked_add(stored_len).is_none() {
            return Err(offset_overflow(len, stored.len()));
        }
        let entry = PackEntry {
            id,
            offset,
            stored_len,
            raw_len,
            compressed,
        };
        self.body.write(stored)?;
        self.entries.push(entry);
        Ok(entry)
    }

    /// Writes the index and trailer and fsyncs. `seal` turns the encoded
    /// index into its stored form (identity in an unencrypted store).
    pub fn finish(self, seal: impl FnOnce(Vec<u8>) -> Vec<u8>) -> std::io::Result<FinishedPack> {
        let index = bincode::serialize(&self.entries).map_err(std::io::Error::other)?;
        let index = seal(index);
        let (out, id, size) = self.body.finish(&index)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(FinishedPack {
            id,
            path: self.path,
            entries: self.entries,
            size,
        })
    }
}

/// How a read failure of a pack is described: an I/O error (permission
/// denied, a timeout) says nothing about the pack's bytes, so it is
/// `unreadable`, never damage (verify reports it and repair leaves the
/// pack in place).
pub const UNREADABLE: &str = "unreadable";

/// The description of an I/O error met reading a pack.
pub fn unreadable(e: &std::io::Error) -> String {
    format!("{UNREADABLE}: {e}")
}

/// Whether a pack problem is an I/O failure rather than damage.
pub fn is_unreadable(detail: &str) -> bool {
    detail
        .strip_prefix(UNREADABLE)
        .is_some_and(|rest| rest.starts_with(':'))
}

fn offset_overflow(len: u64, stored: usize) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!(
            "a chunk of {stored} bytes at offset {len} would end past the 4 GiB a pack entry can address"
        ),
    )
}

/// Why a pack's index could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackIndexError {
    TooShort(u64),
    BadMagic,
    BadIndexLength,
    IndexChecksum,
    IndexDecode(String),
    EntryOutOfBounds(Id),
    ChunkTooLarge(Id, u32),
}

impl std::fmt::Display for PackIndexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PackIndexError::TooShort(n) => write!(f, "truncated: only {n} bytes"),
            PackIndexError::BadMagic => write!(f, "truncated or not a pack: trailer magic missing"),
            PackIndexError::BadIndexLength => write!(
                f,
                "index length points outside the file or past the largest index a pack has"
            ),
            PackIndexError::IndexChecksum => write!(f, "index checksum mismatch"),
            PackIndexError::IndexDecode(e) => write!(f, "index does not decode: {e}"),
            PackIndexError::EntryOutOfBounds(id) => {
                write!(f, "index entry for chunk {id} points outside the blob area")
            }
            PackIndexError::ChunkTooLarge(id, len) => write!(
                f,
                "index entry for chunk {id} records {len} raw bytes, more than any chunk ({})",
                crate::chunk::MAX_RAW_CHUNK
            ),
        }
    }
}

/// Where the index sits, from the last `TRAILER_LEN` bytes of a pack of
/// `size` bytes. Returns (index offset, index length, index hash).
/// The largest stored index of a pack: above the most a format-2 trailer
/// decodes to (`pack2::trailer::MAX_TRAILER_DECODED`, 54.5 MB) with room
/// for the sealing; a format-1 index is far smaller.
pub const MAX_STORED_INDEX: u64 = 64 << 20;

pub fn parse_trailer(size: u64, trailer: &[u8]) -> Result<(u64, usize, [u8; 32]), PackIndexError> {
    if size < (PACK_MAGIC.len() + TRAILER_LEN) as u64 || trailer.len() != TRAILER_LEN {
        return Err(PackIndexError::TooShort(size));
    }
    if &trailer[36..44] != TRAILER_MAGIC {
        return Err(PackIndexError::BadMagic);
    }
    let index_len = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]) as u64;
    // Refused before it is read into memory.
    if index_len > MAX_STORED_INDEX {
        return Err(PackIndexError::BadIndexLength);
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&trailer[4..36]);
    let blob_end = size
        .checked_sub(TRAILER_LEN as u64 + index_len)
        .filter(|end| *end >= PACK_MAGIC.len() as u64)
        .ok_or(PackIndexError::BadIndexLength)?;
    Ok((blob_end, index_len as usize, hash))
}

/// Decodes a pack index read from the file and checks every entry lies in
/// the blob area `[8, blob_end)`. `open` turns the stored index back into
/// its encoded form (identity in an unencrypted store).
pub fn decode_index(
    stored: Vec<u8>,
    expected_hash: &[u8; 32],
    blob_end: u64,
    open: impl FnOnce(Vec<u8>) -> Result<Vec<u8>, String>,
) -> Result<Vec<PackEntry>, PackIndexError> {
    if blake3::hash(&stored).as_bytes() != expected_hash {
        return Err(PackIndexError::IndexChecksum);
    }
    let encoded = open(stored).map_err(PackIndexError::IndexDecode)?;
    let entries = decode_entries(&encoded).map_err(PackIndexError::IndexDecode)?;
    for e in &entries {
        let end = e.offset as u64 + e.stored_len as u64;
        if (e.offset as u64) < PACK_MAGIC.len() as u64 || end > blob_end {
            return Err(PackIndexError::EntryOutOfBounds(e.id));
        }
        if e.raw_len > crate::chunk::MAX_RAW_CHUNK {
            return Err(PackIndexError::ChunkTooLarge(e.id, e.raw_len));
        }
    }
    Ok(entries)
}

/// Decodes the entries of an (opened) pack index, without any check of
/// where they point. The entry count is checked against the bytes first.
pub fn decode_entries(encoded: &[u8]) -> Result<Vec<PackEntry>, String> {
    if let Some(prefix) = encoded.first_chunk::<8>() {
        let claimed = u64::from_le_bytes(*prefix);
        let room = (encoded.len() as u64 - 8) / ENCODED_ENTRY_LEN;
        if claimed > room {
            return Err(format!(
                "the index claims {claimed} entries, its {} bytes hold at most {room}",
                encoded.len()
            ));
        }
    }
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(encoded.len() as u64)
        .deserialize(encoded)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trailer declaring an index larger than any pack's is refused
    /// before the index is read (a sparse 4 GiB pack once made verify and
    /// validate allocate 4 GiB).
    #[test]
    fn an_index_larger_than_any_packs_is_refused_before_it_is_read() {
        let mut trailer = vec![0u8; TRAILER_LEN];
        trailer[36..44].copy_from_slice(TRAILER_MAGIC);
        trailer[..4].copy_from_slice(&(u32::MAX - 64).to_le_bytes());
        let size = 5 << 30;
        assert!(matches!(
            parse_trailer(size, &trailer),
            Err(PackIndexError::BadIndexLength)
        ));
        trailer[..4].copy_from_slice(&(1u32 << 20).to_le_bytes());
        assert!(parse_trailer(size, &trailer).is_ok());
    }

    #[test]
    fn only_a_packs_own_name_parses_as_that_pack() {
        let id = Id::hash(b"live pack");
        let hex = id.to_hex();
        assert_eq!(pack_id_from_name(&pack_name(&id)), Some(id));
        for name in [
            format!("objects/00/{hex}.pack"),
            format!("objects/{}/{hex}.pack/../../../tmp/x.pack", &hex[..2]),
            format!("objects/{}/{hex}.pack/more", &hex[..2]),
            format!("objects/{}/{}.pack", &hex[..2], hex.to_uppercase()),
            format!("objects/{hex}.pack"),
            format!("x/objects/{}/{hex}.pack", &hex[..2]),
        ] {
            assert_eq!(pack_id_from_name(&name), None, "{name}");
        }
    }

    fn entries(n: u32) -> Vec<PackEntry> {
        (0..n)
            .map(|i| PackEntry {
                id: Id::hash(&i.to_le_bytes()),
                offset: 8 + i * 10,
                stored_len: 10,
                raw_len: 10,
                compressed: false,
            })
            .collect()
    }

    #[test]
    fn an_index_claiming_more_entries_than_it_holds_is_refused() {
        let list = entries(3);
        let mut encoded = bincode::serialize(&list).unwrap();
        assert_eq!(encoded.len() as u64, 8 + 3 * ENCODED_ENTRY_LEN);
        assert_eq!(decode_entries(&encoded).unwrap(), list);
        for claimed in [4u64, 1 << 40, u64::MAX] {
            encoded[..8].copy_from_slice(&claimed.to_le_bytes());
            let err = decode_entries(&encoded).unwrap_err();
            assert!(err.contains(&format!("claims {claimed} entries")), "{err}");
        }
    }

    #[test]
    fn an_entry_larger_than_any_chunk_is_refused() {
        let mut list = entries(2);
        list[1].compressed = true;
        list[1].raw_len = u32::MAX;
        let encoded = bincode::serialize(&list).unwrap();
        let hash = *blake3::hash(&encoded).as_bytes();
        let err = decode_index(encoded, &hash, 28, Ok).unwrap_err();
        assert_eq!(err, PackIndexError::ChunkTooLarge(list[1].id, u32::MAX));
        assert!(err.to_string().contains("more than any chunk"));
    }

    #[test]
    fn an_entry_past_u32_offsets_is_refused_not_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PackWriter::create(&dir.path().join("p.pack")).unwrap();
        let e = w
            .add(Id::from(blake3::hash(b"a")), b"abc", 3, false)
            .unwrap();
        assert_eq!((e.offset, e.stored_len), (8, 3));
        // As if 4 GiB had been written (without writing them).
        w.body.pretend_len(u32::MAX as u64 - 2);
        let last = w
            .add(Id::from(blake3::hash(b"b")), b"ab", 2, false)
            .unwrap();
        assert_eq!(last.offset, u32::MAX - 2);
        let e = w
            .add(Id::from(blake3::hash(b"c")), b"abc", 3, false)
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("4 GiB"), "{e}");
        assert_eq!(w.entries.len(), 2);
        w.body.pretend_len(u32::MAX as u64 + 1);
        assert!(w.add(Id::from(blake3::hash(b"d")), b"", 0, false).is_err());
    }

    #[test]
    fn pack_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pack");
        PackWriter::create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
