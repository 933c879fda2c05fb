//! Reassembles a file's bytes from its chunks: ids streamed from its list,
//! chunks read and verified in parallel, so memory stays bounded whatever
//! the file's size. [`write_file`] writes to any stream in order (validate,
//! dump); [`write_file_at`] writes a file's pieces at their offsets from
//! both cores at once (restore and drill: a multi-GiB HNSW file is one
//! file, so files in parallel alone would leave a core idle).

use rayon::prelude::*;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use crate::id::Id;
use crate::store::follow::ChunkLocator;
use crate::store::index::{ChunkIndex, Location};
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
/// length, and where the store holds it (looked up once, when the chunk is
/// placed, and used by whoever then reads it).
#[derive(Clone, Copy, Debug)]
pub struct Placed {
    pub id: Id,
    pub offset: u64,
    pub len: u32,
    pub loc: Location,
    /// Its frame serves little else of this part of the file (see
    /// [`mark_sporadic`]).
    pub sporadic: bool,
}

/// Marks the chunks of `window` whose frame serves at most
/// [`SPORADIC_MAX`] chunks of it. Such a chunk is read by decoding its
/// frame only up to its end, without keeping it. Why: a file whose pages
/// moved since they were stored (SQLite relocates pages) reaches back into
/// frames read long before, a chunk or two each; decoding, re-hashing and
/// caching a whole frame for each was a fifth of the decoding of a day's
/// restore (the frame cache cannot hold frames needed that far apart). At
/// most two partial decodes of a frame replace one whole one, so this
/// never costs much. A frame that reaches an edge of the window may go on
/// beyond it: never sporadic.
fn mark_sporadic(window: &mut [Placed]) {
    let key = |c: &Placed| (c.loc.pack, c.loc.frame_offset);
    let mut used: HashMap<(u32, u32), usize> = HashMap::new();
    for c in window.iter().filter(|c| c.loc.in_frame()) {
        *used.entry(key(c)).or_default() += 1;
    }
    for edge in [window.first(), window.last()].into_iter().flatten() {
        used.insert(key(edge), usize::MAX);
    }
    for c in window.iter_mut() {
        let n = used.get(&key(c)).copied().unwrap_or(usize::MAX);
        c.sporadic = c.loc.in_frame() && n <= SPORADIC_MAX;
    }
}

/// See [`mark_sporadic`].
const SPORADIC_MAX: usize = 2;

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
    /// as they are), from the local chunks first. Returns which chunks the
    /// local chunks had.
    fn fill(
        self,
        store: &Store,
        index: &ChunkIndex,
        piece: &[Placed],
        buf: &mut [u8],
    ) -> Result<Vec<bool>, ExtractError> {
        let mut filled = vec![false; piece.len()];
        let mut local_hits = 0;
        if let ChunkSource::LocalFirst(local) = self {
            local_hits = local(piece, buf, &mut filled);
            if local_hits == piece.len() as u64 {
                return Ok(filled);
            }
        }
        // The rest of a piece the disk mostly had are the few chunks that
        // differ, and sporadic chunks are alone in their frames: their
        // frames are decoded only as far as needed, not kept. The others
        // go through the frame cache (each frame decoded once for its
        // neighbours too).
        let mut scattered = Vec::new();
        let mut runs = Vec::new();
        let mut at = 0usize;
        for (c, &done) in piece.iter().zip(&filled) {
            let end = at + c.len as usize;
            if !done {
                let to = if local_hits > 0 || c.sporadic {
                    &mut scattered
                } else {
                    &mut runs
                };
                to.push((c.id, c.loc, at..end));
            }
            at = end;
        }
        store
            .read_scattered_into(index, &scattered, buf)
            .map_err(|(id, f)| ExtractError::Chunk(id, f))?;
        for (id, loc, range) in runs {
            store
                .read_chunk_into(index, &id, &loc, &mut buf[range])
                .map_err(|f| ExtractError::Chunk(id, f))?;
        }
        Ok(filled)
    }
}

/// The chunks of a file's list with their offsets, lengths and locations,
/// a window at a time (a missing chunk is a fault).
struct Placing<'s, I> {
    ids: I,
    locator: ChunkLocator<'s>,
    offset: u64,
}

impl<I: Iterator<Item = crate::error::Result<Id>>> Placing<'_, I> {
    fn next_window(&mut self, max: usize, out: &mut Vec<Placed>) -> Result<(), ExtractError> {
        out.clear();
        for id in self.ids.by_ref().take(max) {
            let id = id.map_err(list_error)?;
            let loc = self
                .locator
                .locate(&id)
                .map_err(|f| ExtractError::Chunk(id, f))?;
            out.push(Placed {
                id,
                offset: self.offset,
                len: loc.raw_len,
                loc,
                sporadic: false,
            });
            self.offset += loc.raw_len as u64;
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
        locator: ChunkLocator::new(store, index),
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
                let mut bytes = vec![0; c.len as usize];
                source
                    .fill(store, index, std::slice::from_ref(c), &mut bytes)
                    .map(|_| bytes)
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

/// What [`write_file_at`] writes into its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Every chunk: `out` becomes the whole file.
    Whole,
    /// Every chunk, written behind (see [`crate::os::WriteBehind`]): for a
    /// file nothing reads again soon.
    WholeBehind,
    /// Only the chunks the local source did not have: `out` is a sparse
    /// patch holding what differs, each byte at its own offset (see
    /// `ops::restore::patch`).
    Changes,
}

/// How [`write_file_at`] went: the bytes and chunks of the file, and the
/// byte ranges written, in order.
#[derive(Debug, Default)]
pub struct Extracted {
    pub bytes: u64,
    pub chunks: u64,
    /// The byte ranges written, runs joined.
    pub spans: Vec<Range<u64>>,
}

/// Spans a patch lists at most (4 MiB of them in memory): past this many,
/// the rest of the file is written whole, as one more span.
pub const MAX_SPANS: usize = 1 << 18;

/// Writes the file's content into `out` (a new, empty file), each chunk
/// taken from `source` and verified, each piece of about [`PIECE_BYTES`]
/// written at its offset as soon as it is complete, pieces in parallel.
/// With [`Output::Changes`], only what the local source lacked is written
/// (and, past [`MAX_SPANS`] runs of it, the rest whole). More than
/// `file.size` bytes are never written (the byte count then says the
/// chunks hold more).
pub fn write_file_at(
    store: &Store,
    index: &ChunkIndex,
    file: &FileEntry,
    out: &File,
    on_bytes: &(dyn Fn(u64) + Sync),
    (source, mut output): (ChunkSource<'_>, Output),
) -> Result<Extracted, ExtractError> {
    let mut done = Extracted::default();
    let mut placing = Placing {
        ids: store.file_chunks(index, file).map_err(list_error)?,
        locator: ChunkLocator::new(store, index),
        offset: 0,
    };
    let mut window = Vec::with_capacity(WINDOW_CHUNKS);
    let mut behind = crate::os::WriteBehind::default();
    loop {
        let start = placing.offset;
        placing.next_window(WINDOW_CHUNKS, &mut window)?;
        if window.is_empty() || placing.offset > file.size {
            done.bytes = placing.offset;
            behind.finish(out);
            return Ok(done);
        }
        mark_sporadic(&mut window);
        done.chunks += window.len() as u64;
        // The first fault stops the other pieces: against a store that
        // cannot be reached, each would wait out its retries.
        let spans: Vec<Vec<Range<u64>>> = pieces(&window)
            .par_iter()
            .map(|piece| write_piece(store, index, piece, out, (source, output), on_bytes))
            .collect::<Result<_, _>>()?;
        for span in spans.into_iter().flatten() {
            match done.spans.last_mut() {
                Some(last) if last.end == span.start => last.end = span.end,
                _ => done.spans.push(span),
            }
        }
        if output == Output::WholeBehind {
            behind.written(out, start..placing.offset);
        }
        if done.spans.len() >= MAX_SPANS {
            output = Output::Whole;
        }
    }
}

/// A window cut into runs of about [`PIECE_BYTES`].
fn pieces(window: &[Placed]) -> Vec<&[Placed]> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in window.iter().enumerate() {
        if c.offset + c.len as u64 - window[start].offset >= PIECE_BYTES {
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

/// Rebuilds one piece and writes it (all of it, or its changed spans).
/// Returns the spans written.
fn write_piece(
    store: &Store,
    index: &ChunkIndex,
    piece: &[Placed],
    out: &File,
    (source, output): (ChunkSource<'_>, Output),
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Range<u64>>, ExtractError> {
    let Some(start) = piece.first().map(|c| c.offset) else {
        return Ok(Vec::new());
    };
    let bytes: u64 = piece.iter().map(|c| c.len as u64).sum();
    let spans = PIECE.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.resize(bytes as usize, 0);
        let local = source.fill(store, index, piece, &mut buf)?;
        let spans = match output {
            Output::Whole | Output::WholeBehind => std::iter::once(start..start + bytes).collect(),
            Output::Changes => changed_spans(piece, &local),
        };
        for s in &spans {
            let at = (s.start - start) as usize..(s.end - start) as usize;
            out.write_all_at(&buf[at], s.start)
                .map_err(ExtractError::Write)?;
        }
        Ok(spans)
    })?;
    on_bytes(bytes);
    Ok(spans)
}

/// The byte ranges of a piece's chunks that were not `local`, runs of
/// them joined.
fn changed_spans(piece: &[Placed], local: &[bool]) -> Vec<Range<u64>> {
    let mut spans: Vec<Range<u64>> = Vec::new();
    for (c, &here) in piece.iter().zip(local) {
        if here {
            continue;
        }
        let r = c.offset..c.offset + c.len as u64;
        match spans.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => spans.push(r),
        }
    }
    spans
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::layout::{FrameSpan, PackFormat};
    use crate::store::pack2::Codec;

    /// Chunk `i` of a window: 4 KiB in the frame at `frame` of pack 0.
    fn placed(i: usize, frame: u32) -> Placed {
        let f = FrameSpan {
            offset: frame,
            stored_len: 1000,
            codec: Codec::Zstd,
            first_chunk: 0,
            n_chunks: 256,
            raw_len: 1 << 20,
        };
        let loc = Location::in_frame_of(PackFormat::V2, &f, 0, 0, 4096);
        Placed {
            id: Id([i as u8; 32]),
            offset: i as u64 * 4096,
            len: 4096,
            loc,
            sporadic: false,
        }
    }

    #[test]
    fn only_frames_that_give_a_window_one_or_two_chunks_inside_it_are_sporadic() {
        // Frame 10 opens and closes the window, frame 20 gives it three
        // chunks, frame 30 two, frame 40 one.
        let frames = [10, 20, 30, 20, 40, 20, 30, 10];
        let mut window: Vec<Placed> = frames
            .iter()
            .enumerate()
            .map(|(i, &f)| placed(i, f))
            .collect();
        mark_sporadic(&mut window);
        let sporadic: Vec<u32> = window
            .iter()
            .filter(|c| c.sporadic)
            .map(|c| c.loc.frame_offset)
            .collect();
        assert_eq!(sporadic, [30, 40, 30]);
        // Alone at an edge, a frame may go on past the window.
        let mut window: Vec<Placed> = [40, 20, 20, 20]
            .iter()
            .enumerate()
            .map(|(i, &f)| placed(i, f))
            .collect();
        mark_sporadic(&mut window);
        assert!(window.iter().all(|c| !c.sporadic));
    }
}
