//! Reassembles a file's bytes from its chunks: ids streamed from its list,
//! chunks read and verified in parallel batches, written in order, so
//! memory stays bounded whatever the file's size. Used by validate,
//! restore and drill.

use rayon::prelude::*;
use std::io::Write;

use crate::id::Id;
use crate::store::index::ChunkIndex;
use crate::store::manifest::FileEntry;
use crate::store::{ChunkFault, Store};

/// Chunks read per parallel batch (with 4 KiB pages: 1 MiB; with 256 KiB
/// CDC chunks at most 64 MiB in flight).
const BATCH_CHUNKS: usize = 256;

/// How extracting a file went.
#[derive(Debug)]
pub enum ExtractError {
    /// A chunk could not be read: the file cannot be rebuilt.
    Chunk(Id, ChunkFault),
    /// Writing the output failed.
    Write(std::io::Error),
    /// A file read into memory holds more than its recorded size, or more
    /// than [`SMALL_FILE_MAX`].
    TooLarge { limit: u64 },
}

/// The most [`read_small_file`] holds in memory (the registry is a small
/// JSON file; a manifest may claim any size).
pub const SMALL_FILE_MAX: u64 = 64 << 20;
/// Bytes reserved up front at most: the recorded size is untrusted.
const SMALL_FILE_RESERVE: u64 = 1 << 20;

/// Where [`write_file`] takes a file's chunks from.
#[derive(Clone, Copy)]
pub enum ChunkSource<'a> {
    /// The store.
    Store,
    /// `local` when it has the chunk (a restore reusing the bytes of the
    /// file it replaces; it must return only bytes whose id it has
    /// checked), the store otherwise.
    LocalFirst(&'a (dyn Fn(&Id) -> Option<Vec<u8>> + Sync)),
}

impl ChunkSource<'_> {
    fn read(self, store: &Store, index: &ChunkIndex, id: &Id) -> Result<Vec<u8>, ChunkFault> {
        match self {
            ChunkSource::LocalFirst(local) => match local(id) {
                Some(bytes) => Ok(bytes),
                None => store.read_chunk(index, id),
            },
            ChunkSource::Store => store.read_chunk(index, id),
        }
    }
}

/// Writes the file's content to `out`, each chunk taken from `source` and
/// verified. Returns the bytes written.
pub fn write_file<W: Write>(
    store: &Store,
    index: &ChunkIndex,
    file: &FileEntry,
    out: &mut W,
    mut on_bytes: impl FnMut(u64),
    source: ChunkSource<'_>,
) -> Result<u64, ExtractError> {
    let mut written = 0u64;
    let mut ids = store.file_chunks(index, file).map_err(list_error)?;
    let mut batch = Vec::with_capacity(BATCH_CHUNKS);
    loop {
        batch.clear();
        for id in ids.by_ref().take(BATCH_CHUNKS) {
            batch.push(id.map_err(list_error)?);
        }
        if batch.is_empty() {
            break;
        }
        // The first fault stops the batch's other reads: against a store
        // that cannot be reached, each would wait out its retries.
        let data: Vec<Vec<u8>> = batch
            .par_iter()
            .map(|id| {
                source
                    .read(store, index, id)
                    .map_err(|f| ExtractError::Chunk(*id, f))
            })
            .collect::<Result<_, _>>()?;
        for chunk in data {
            out.write_all(&chunk).map_err(ExtractError::Write)?;
            written += chunk.len() as u64;
            on_bytes(chunk.len() as u64);
        }
    }
    Ok(written)
}

/// A file's list that cannot be read: the list blob at fault, reported as
/// a chunk.
/// Anything else (the storage failed) stays a failure, never damage.
pub fn list_error(e: crate::error::Error) -> ExtractError {
    match crate::store::error_fault(&e) {
        Some((id, fault)) => ExtractError::Chunk(id, fault),
        None => ExtractError::Chunk(
            Id([0; 32]),
            ChunkFault::Unreadable {
                pack: std::path::PathBuf::from("a list blob"),
                kind: std::io::ErrorKind::Other,
                detail: e.to_string(),
            },
        ),
    }
}

/// Reads a whole (small) file into memory: at most its recorded size and
/// at most [`SMALL_FILE_MAX`] bytes, allocated as the bytes arrive (a
/// forged manifest may record any size, or list a chunk a million times).
pub fn read_small_file(
    store: &Store,
    index: &ChunkIndex,
    file: &FileEntry,
) -> Result<Vec<u8>, ExtractError> {
    let limit = file.size.min(SMALL_FILE_MAX);
    let mut out = Bounded {
        buf: Vec::with_capacity(limit.min(SMALL_FILE_RESERVE) as usize),
        limit,
    };
    match write_file(store, index, file, &mut out, |_| {}, ChunkSource::Store) {
        Err(ExtractError::Write(e)) if e.kind() == std::io::ErrorKind::FileTooLarge => {
            Err(ExtractError::TooLarge { limit })
        }
        r => r.map(|_| out.buf),
    }
}

/// A memory buffer refusing to grow past `limit` bytes.
struct Bounded {
    buf: Vec<u8>,
    limit: u64,
}

impl Write for Bounded {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() as u64 + data.len() as u64 > self.limit {
            return Err(std::io::ErrorKind::FileTooLarge.into());
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Size recorded for a file's chunks `ids` in the index (None if one is
/// missing).
pub fn indexed_size(index: &ChunkIndex, ids: &[Id]) -> crate::error::Result<Option<u64>> {
    let mut size = 0u64;
    for id in ids {
        match index.get(id)? {
            Some(l) => size += l.raw_len as u64,
            None => return Ok(None),
        }
    }
    Ok(Some(size))
}
