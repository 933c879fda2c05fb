//! Reassembles a file's bytes from its chunks: ids streamed from its list,
//! chunks read and verified in parallel, so memory stays bounded whatever
//! the file's size. [`write_file`] writes to any stream in order (validate,
//! dump); [`write_file_at`] writes a file's pieces at their offsets from
//! both cores at once (restore and drill: a multi-GiB HNSW file is one
//! file, so files in parallel alone would leave a core idle).

use rayon::prelude::*;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

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

/// A chunk of a file being rebuilt: its id, its offset in the file, its
/// length.
pub type Placed = (Id, u64, u32);

/// Chunks taken from somewhere else than the store. Given a piece of the
/// file (its chunks, back to back) and the piece's buffer, it copies into
/// the buffer the chunks it has, each checked against its id, marks them
/// in `filled` and returns how many it filled (a restore reusing the bytes
/// of the file it replaces, read in runs rather than chunk by chunk).
pub type LocalChunks<'a> = &'a (dyn Fn(&[Placed], &mut [u8], &mut [bool]) -> u64 + Sync);

/// Where [`write_file`] takes a file's chunks from.
#[derive(Clone, Copy)]
pub enum ChunkSource<'a> {
    /// The store.
    Store,
    /// The local chunks when they have the chunk, the store otherwise.
    LocalFirst(LocalChunks<'a>),
}

impl ChunkSource<'_> {
    /// Fills `buf` with the chunks of `piece` (back to back, `buf` as long
    /// as they are), from the local chunks first.
    fn fill(
        self,
        store: &Store,
        index: &ChunkIndex,
        piece: &[Placed],
        buf: &mut [u8],
    ) -> Result<(), ExtractError> {
        let mut filled = vec![false; piece.len()];
        let mut local_hits = 0;
        if let ChunkSource::LocalFirst(local) = self {
            local_hits = local(piece, buf, &mut filled);
            if local_hits == piece.len() as u64 {
                return Ok(());
            }
        }
        let mut wanted = Vec::new();
        let mut at = 0usize;
        for ((id, _, len), done) in piece.iter().zip(filled) {
            let end = at + *len as usize;
            if !done {
                let loc = index.locate(id).map_err(|f| ExtractError::Chunk(*id, f))?;
                wanted.push((*id, loc, at..end));
            }
            at = end;
        }
        // The rest of a piece the disk mostly had are the few chunks that
        // differ: their frames are decoded only as far as needed. A piece
        // from the store alone goes through the frame cache (each frame
        // decoded once for its neighbours too).
        if local_hits > 0 {
            return store
                .read_scattered_into(index, &wanted, buf)
                .map_err(|(id, f)| ExtractError::Chunk(id, f));
        }
        for (id, loc, range) in wanted {
            store
                .read_chunk_into(index, &id, &loc, &mut buf[range])
                .map_err(|f| ExtractError::Chunk(id, f))?;
        }
        Ok(())
    }
}

/// The chunks of a file's list with their offsets and lengths from the
/// index, a window at a time (a missing chunk is a fault).
struct Placing<'s, I> {
    ids: I,
    index: &'s ChunkIndex,
    offset: u64,
}

impl<I: Iterator<Item = crate::error::Result<Id>>> Placing<'_, I> {
    fn next_window(&mut self, max: usize, out: &mut Vec<Placed>) -> Result<(), ExtractError> {
        out.clear();
        for id in self.ids.by_ref().take(max) {
            let id = id.map_err(list_error)?;
            let len = self
                .index
                .locate(&id)
                .map_err(|f| ExtractError::Chunk(id, f))?
                .raw_len;
            out.push((id, self.offset, len));
            self.offset += len as u64;
        }
        Ok(())
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
    let mut placing = Placing {
        ids: store.file_chunks(index, file).map_err(list_error)?,
        index,
        offset: 0,
    };
    let mut batch = Vec::with_capacity(BATCH_CHUNKS);
    loop {
        placing.next_window(BATCH_CHUNKS, &mut batch)?;
        if batch.is_empty() {
            break;
        }
        // The first fault stops the batch's other reads: against a store
        // that cannot be reached, each would wait out its retries.
        let data: Vec<Vec<u8>> = batch
            .par_iter()
            .map(|c| {
                let mut bytes = vec![0; c.2 as usize];
                source
                    .fill(store, index, std::slice::from_ref(c), &mut bytes)
                    .map(|()| bytes)
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

/// Chunk ids taken from a file's list per window: with their locations
/// about 700 KB (64 MiB of 4 KiB chunks), whatever the file's size.
const WINDOW_CHUNKS: usize = 16384;
/// Bytes per positioned write: each piece of a window is rebuilt in one
/// buffer by one thread and written with one `pwrite`.
const PIECE_BYTES: u64 = 4 << 20;

/// Writes the file's content into `out` (a new, empty file), each chunk
/// taken from `source` and verified, each piece of about [`PIECE_BYTES`]
/// written at its offset as soon as it is complete, pieces in parallel.
/// Returns the bytes and the chunks written; more than `file.size` bytes
/// are never written (the byte count then says the chunks hold more).
pub fn write_file_at(
    store: &Store,
    index: &ChunkIndex,
    file: &FileEntry,
    out: &File,
    on_bytes: &(dyn Fn(u64) + Sync),
    source: ChunkSource<'_>,
) -> Result<(u64, u64), ExtractError> {
    let mut chunks = 0u64;
    let mut placing = Placing {
        ids: store.file_chunks(index, file).map_err(list_error)?,
        index,
        offset: 0,
    };
    let mut window = Vec::with_capacity(WINDOW_CHUNKS);
    loop {
        placing.next_window(WINDOW_CHUNKS, &mut window)?;
        if window.is_empty() || placing.offset > file.size {
            return Ok((placing.offset, chunks));
        }
        chunks += window.len() as u64;
        // The first fault stops the other pieces: against a store that
        // cannot be reached, each would wait out its retries.
        pieces(&window)
            .par_iter()
            .try_for_each(|piece| write_piece(store, index, piece, out, source, on_bytes))?;
    }
}

/// A window cut into runs of about [`PIECE_BYTES`].
fn pieces(window: &[Placed]) -> Vec<&[Placed]> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, (_, offset, len)) in window.iter().enumerate() {
        if offset + *len as u64 - window[start].1 >= PIECE_BYTES {
            out.push(&window[start..=i]);
            start = i + 1;
        }
    }
    if start < window.len() {
        out.push(&window[start..]);
    }
    out
}

thread_local! {
    /// Each thread's piece buffer, kept between pieces.
    static PIECE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn write_piece(
    store: &Store,
    index: &ChunkIndex,
    piece: &[Placed],
    out: &File,
    source: ChunkSource<'_>,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<(), ExtractError> {
    let Some(&(_, start, _)) = piece.first() else {
        return Ok(());
    };
    let bytes: u64 = piece.iter().map(|c| c.2 as u64).sum();
    PIECE.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.resize(bytes as usize, 0);
        source.fill(store, index, piece, &mut buf)?;
        out.write_all_at(&buf, start).map_err(ExtractError::Write)
    })?;
    on_bytes(bytes);
    Ok(())
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
