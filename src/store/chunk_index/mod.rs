//! The chunk index of store format 2 as a local, rebuildable cache
//! (`docs/design/format2.md` §1.5): chunk id → where its bytes are, kept in
//! sorted write-once segment files instead of an in-RAM map of every chunk.
//!
//! This module owns the bytes of an [`IndexRecord`], the segment file
//! ([`segment`]: write by temp + rename, read by positioned reads), the
//! external sort that makes one from records in any order ([`spill`]) and
//! the view over several segments with the pack table ([`view`]).
//!
//! It is a cache: a damaged file is refused with [`IndexError::Damaged`]
//! naming it, and [`cache::IndexCache`] drops the folder's files and the
//! caller rebuilds from the pack trailers (`Store::load_index`). Commands
//! see it through `ChunkIndex` (`store/index.rs`).

pub mod cache;
pub mod segment;
pub mod spill;
pub mod view;

#[cfg(test)]
mod tests;

pub use cache::IndexCache;
pub use segment::{Segment, SegmentWriter, Verified};
pub use spill::{SpillSorter, Spillable};
pub use view::{Checks, IndexView, PackRow, PackTable};

use std::io;
use std::path::{Path, PathBuf};

use crate::id::Id;

/// Bytes of one encoded [`IndexRecord`].
pub const RECORD_LEN: usize = 60;

/// Where one chunk is: a chunk inside a frame inside a pack (§1.5). A
/// format-1 blob is a frame of one chunk (`chunk_offset` 0, `ad_mode` 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexRecord {
    pub id: Id,
    /// Row of the pack in `packs.tbl`.
    pub pack: u32,
    pub frame_offset: u32,
    pub frame_stored_len: u32,
    pub frame_raw_len: u32,
    /// Offset of the chunk in the frame's raw bytes.
    pub chunk_offset: u32,
    pub chunk_raw_len: u32,
    pub codec: u8,
    pub kind: u8,
    pub dict: u8,
    /// 0: frame AD (format 2); 1: chunk-id AD (a format-1 blob).
    pub ad_mode: u8,
}

impl IndexRecord {
    /// The sort key of a segment: by id, ties by pack row.
    pub fn key(&self) -> (Id, u32) {
        (self.id, self.pack)
    }

    /// `id[0..4]` as a big-endian number: the prefix table's entry, whose
    /// numeric order is the ids' byte order.
    pub fn prefix(&self) -> u32 {
        id_prefix(&self.id)
    }

    /// Little-endian fields in the order of §1.5.
    pub fn encode(&self, out: &mut [u8; RECORD_LEN]) {
        out[..32].copy_from_slice(&self.id.0);
        let words = [
            self.pack,
            self.frame_offset,
            self.frame_stored_len,
            self.frame_raw_len,
            self.chunk_offset,
            self.chunk_raw_len,
        ];
        for (i, w) in words.iter().enumerate() {
            out[32 + 4 * i..36 + 4 * i].copy_from_slice(&w.to_le_bytes());
        }
        out[56] = self.codec;
        out[57] = self.kind;
        out[58] = self.dict;
        out[59] = self.ad_mode;
    }

    pub fn decode(b: &[u8; RECORD_LEN]) -> IndexRecord {
        let word = |i: usize| {
            let at = 32 + 4 * i;
            u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
        };
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[..32]);
        IndexRecord {
            id: Id(id),
            pack: word(0),
            frame_offset: word(1),
            frame_stored_len: word(2),
            frame_raw_len: word(3),
            chunk_offset: word(4),
            chunk_raw_len: word(5),
            codec: b[56],
            kind: b[57],
            dict: b[58],
            ad_mode: b[59],
        }
    }
}

/// A temp file of this module, removed when dropped (a run of the sorter,
/// the records of a segment being written): an error or a panic midway
/// leaves nothing behind.
pub(crate) struct TempFile {
    pub path: PathBuf,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `id[0..4]` big-endian (see [`IndexRecord::prefix`]).
pub fn id_prefix(id: &Id) -> u32 {
    u32::from_be_bytes([id.0[0], id.0[1], id.0[2], id.0[3]])
}

/// Why a cache file could not be used. Both name the file; on `Damaged`
/// the caller drops the cache and rebuilds it from the pack trailers.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("chunk index cache file {path} is damaged: {detail}")]
    Damaged { path: PathBuf, detail: String },

    #[error("could not {op} chunk index cache file {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl IndexError {
    pub(crate) fn damaged(path: &Path, detail: impl Into<String>) -> IndexError {
        IndexError::Damaged {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }

    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> IndexError {
        let path = path.to_path_buf();
        move |source| IndexError::Io { op, path, source }
    }
}

impl From<IndexError> for crate::error::Error {
    /// A damaged cache file is an object of the cache found corrupt; the
    /// commands rebuild before they would report it.
    fn from(e: IndexError) -> crate::error::Error {
        match e {
            IndexError::Damaged { path, detail } => crate::error::Error::ObjectCorrupt {
                name: path.display().to_string(),
                detail,
            },
            IndexError::Io { op, path, source } => crate::error::Error::io(op, path, source),
        }
    }
}
