//! Frames (design §1.3.2): consecutive chunks of one file, concatenated,
//! encoded as one zstd frame (or kept raw when zstd does not pay) and
//! sealed as one unit with `frame_ad`, the hash of the chunk ids in order.
//!
//! Decoding opens the seal, decodes at most the declared raw length (no
//! decode bomb) and re-hashes every chunk against its id. A frame that does
//! not open or decode damages every chunk in it; a chunk whose bytes do not
//! hash to its id damages only itself.

use std::ops::Range;

use super::trailer::ChunkEntry;
use super::{Codec, FrameKind, FrameParams, MAX_FRAME_CHUNKS, MAX_FRAME_RAW};
use crate::codec::FrameEncoding;
use crate::error::Error;
use crate::id::Id;
use crate::store::seal::Sealer;

/// The associated data a frame is sealed with: it binds the frame to
/// exactly the chunk list the (sealed) trailer gives for it, so a frame
/// moved to another place, or its ids reordered, fails to open.
pub fn frame_ad(ids: impl IntoIterator<Item = Id>) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("atosnap v2 frame ad");
    for id in ids {
        h.update(&id.0);
    }
    *h.finalize().as_bytes()
}

fn unit_error(chunks: &[ChunkEntry], detail: String) -> FrameError {
    FrameError {
        ids: chunks.iter().map(|c| c.id).collect(),
        detail,
    }
}

/// Opens the seal of a unit (frame or format-1 chunk): its encoded bytes
/// and how to decode them.
fn open_unit(
    stored: Vec<u8>,
    codec: Codec,
    chunks: &[ChunkEntry],
    ad: AdMode,
    sealer: &Sealer,
) -> Result<(Vec<u8>, FrameEncoding), FrameError> {
    let fail = |detail: String| unit_error(chunks, detail);
    let total: u64 = chunks.iter().map(|c| c.raw_len as u64).sum();
    if total > MAX_FRAME_RAW as u64 {
        return Err(fail(format!(
            "declares {total} raw bytes, more than any frame ({MAX_FRAME_RAW})"
        )));
    }
    let encoded = if sealer.is_encrypted() {
        let opened = match (ad, chunks) {
            (AdMode::ChunkId, [one]) => sealer.open(stored, &one.id.0),
            (AdMode::ChunkId, _) => {
                return Err(fail(format!(
                    "a format-1 chunk record covers {} chunks",
                    chunks.len()
                )))
            }
            (AdMode::Frame, _) => sealer.open(stored, &frame_ad(chunks.iter().map(|c| c.id))),
        };
        opened.map_err(|e| fail(format!("does not open: {e}")))?
    } else {
        stored
    };
    let encoding = codec
        .encoding()
        .ok_or_else(|| fail("uses a dictionary, which this build does not decode".to_string()))?;
    Ok((encoded, encoding))
}

/// The first `upto` raw bytes of a unit (at most its declared raw length),
/// nothing past them decoded: a restore that needs one chunk early in a
/// frame stops there (a lanes frame is decoded whole: its first word's
/// last byte is in its last lane). The caller re-hashes the chunks it
/// takes.
pub fn decode_prefix(
    stored: Vec<u8>,
    codec: Codec,
    chunks: &[ChunkEntry],
    ad: AdMode,
    sealer: &Sealer,
    upto: usize,
) -> Result<Vec<u8>, FrameError> {
    use std::io::Read;
    let total: u64 = chunks.iter().map(|c| c.raw_len as u64).sum();
    let upto = upto.min(total as usize);
    let (encoded, encoding) = open_unit(stored, codec, chunks, ad, sealer)?;
    if encoding != FrameEncoding::Zstd {
        let mut raw = crate::codec::decode_frame(encoded, encoding, total as u32)
            .map_err(|e| unit_error(chunks, format!("does not decode: {e}")))?;
        raw.truncate(upto);
        return Ok(raw);
    }
    let mut raw = vec![0; upto];
    zstd::stream::read::Decoder::with_buffer(&encoded[..])
        .and_then(|mut d| d.read_exact(&mut raw))
        .map_err(|e| unit_error(chunks, format!("does not decode: {e}")))?;
    Ok(raw)
}

/// A frame being filled by a writer: the chunks, in capture order.
#[derive(Debug)]
pub struct FrameBuf {
    kind: FrameKind,
    ids: Vec<Id>,
    raw_lens: Vec<u32>,
    raw: Vec<u8>,
}

impl FrameBuf {
    pub fn new(kind: FrameKind) -> FrameBuf {
        FrameBuf {
            kind,
            ids: Vec::new(),
            raw_lens: Vec::new(),
            raw: Vec::new(),
        }
    }

    pub fn kind(&self) -> FrameKind {
        self.kind
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn chunks(&self) -> usize {
        self.ids.len()
    }

    /// Whether a chunk of `len` raw bytes can join this frame without
    /// passing the limits every reader enforces (an empty frame takes any
    /// chunk up to [`MAX_FRAME_RAW`]).
    pub fn fits(&self, len: usize) -> bool {
        self.ids.len() < MAX_FRAME_CHUNKS as usize
            && self.raw.len().saturating_add(len) <= MAX_FRAME_RAW as usize
    }

    /// Adds a chunk; the caller closes the frame first when it does not
    /// [`fits`](FrameBuf::fits). Returns whether the frame is now full by
    /// `params` (and should be closed).
    pub fn push(&mut self, id: Id, raw: &[u8], params: &FrameParams) -> Result<bool, String> {
        if !self.fits(raw.len()) {
            return Err(format!(
                "chunk {id} of {} bytes does not fit a frame holding {} chunks, {} bytes",
                raw.len(),
                self.ids.len(),
                self.raw.len()
            ));
        }
        if self.raw.capacity() == 0 {
            self.reserve_for(params, raw.len());
        }
        self.ids.push(id);
        self.raw_lens.push(raw.len() as u32);
        self.raw.extend_from_slice(raw);
        Ok(self.ids.len() >= params.frame_max_chunks as usize
            || self.raw.len() >= params.frame_max_bytes as usize)
    }

    /// Sizes an empty frame once for what `params` let it hold: the chunk
    /// that passes `frame_max_bytes` is taken too, so room for one more of
    /// about the first chunk's size. Grown by doubling instead, a frame
    /// would copy its bytes again at each step (measured: 3 % of a first
    /// snapshot's writer thread).
    fn reserve_for(&mut self, params: &FrameParams, first_len: usize) {
        let bytes = (params.frame_max_bytes as usize).saturating_add(first_len);
        self.raw.reserve_exact(bytes.min(MAX_FRAME_RAW as usize));
        let chunks = params.frame_max_chunks.min(MAX_FRAME_CHUNKS) as usize;
        self.ids.reserve_exact(chunks);
        self.raw_lens.reserve_exact(chunks);
    }

    /// Encodes and seals the frame: zstd at the configured level (level 1,
    /// in lanes when that pays, for data that barely compresses in an
    /// `auto` store, [`crate::codec::encode_frame`]), raw when the zstd
    /// output is above `max_ratio_percent` of the raw bytes (the chunk
    /// codec's rule).
    pub fn encode(self, params: &FrameParams, sealer: &Sealer) -> EncodedFrame {
        let (encoded, encoding) =
            crate::codec::encode_frame(&self.raw, &params.compression, params.lanes);
        let codec = Codec::of(encoding);
        let stored = seal_frame(sealer, encoded, &self.ids);
        EncodedFrame {
            kind: self.kind,
            codec,
            chunks: self
                .ids
                .into_iter()
                .zip(self.raw_lens)
                .map(|(id, raw_len)| ChunkEntry { id, raw_len })
                .collect(),
            stored,
        }
    }
}

fn seal_frame(sealer: &Sealer, encoded: Vec<u8>, ids: &[Id]) -> Vec<u8> {
    if sealer.is_encrypted() {
        sealer.seal(encoded, &frame_ad(ids.iter().copied()))
    } else {
        encoded
    }
}

/// A frame ready to be appended to a pack.
#[derive(Clone, Debug)]
pub struct EncodedFrame {
    pub kind: FrameKind,
    pub codec: Codec,
    pub chunks: Vec<ChunkEntry>,
    /// The bytes as they go into the pack (sealed in a `repokey` store).
    pub stored: Vec<u8>,
}

/// A frame that did not open or decode: every chunk in it is corrupt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameError {
    pub ids: Vec<Id>,
    pub detail: String,
}

impl FrameError {
    /// One `chunk_corrupt` per chunk of the frame.
    pub fn errors(&self) -> Vec<Error> {
        self.ids
            .iter()
            .map(|id| chunk_corrupt(id, format!("its frame {}", self.detail)))
            .collect()
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "frame of {} chunks: {}", self.ids.len(), self.detail)
    }
}

fn chunk_corrupt(id: &Id, detail: String) -> Error {
    Error::ChunkCorrupt {
        hash: id.to_hex(),
        detail,
    }
}

/// A decoded frame: its raw bytes and where each chunk lies in them.
#[derive(Debug)]
pub struct DecodedFrame {
    raw: Vec<u8>,
    spans: Vec<(Id, Range<usize>)>,
    /// Per chunk: whether its bytes hash to its id.
    matches: Vec<bool>,
}

impl DecodedFrame {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn id(&self, i: usize) -> Option<Id> {
        self.spans.get(i).map(|(id, _)| *id)
    }

    /// Chunk `i`'s bytes, checked against its id (None past the end).
    pub fn chunk(&self, i: usize) -> Option<Result<&[u8], Error>> {
        let (id, span) = self.spans.get(i)?;
        if !*self.matches.get(i)? {
            return Some(Err(mismatch(id)));
        }
        self.raw.get(span.clone()).map(Ok)
    }

    /// The chunk whose bytes start at `offset` in the frame's raw bytes.
    pub fn position_at(&self, offset: usize) -> Option<usize> {
        let i = self.spans.partition_point(|(_, s)| s.start < offset);
        (self.spans.get(i)?.1.start == offset).then_some(i)
    }

    /// Chunk `i`'s bytes, owned: without a copy when the frame holds only
    /// that chunk (a format-1 chunk).
    pub fn into_chunk(mut self, i: usize) -> Option<Result<Vec<u8>, Error>> {
        if self.spans.len() == 1 && i == 0 {
            let id = self.spans[0].0;
            return Some(if self.matches[0] {
                Ok(std::mem::take(&mut self.raw))
            } else {
                Err(mismatch(&id))
            });
        }
        self.chunk(i).map(|r| r.map(<[u8]>::to_vec))
    }

    /// Raw bytes held (for the readers' cache budget).
    pub fn raw_len(&self) -> usize {
        self.raw.len()
    }

    /// Every chunk in frame order, each checked against its id.
    pub fn chunks(&self) -> impl Iterator<Item = (Id, Result<&[u8], Error>)> + '_ {
        self.spans
            .iter()
            .enumerate()
            .filter_map(|(i, (id, _))| Some((*id, self.chunk(i)?)))
    }

    /// The `chunk_corrupt` errors of chunks that do not hash to their id.
    pub fn errors(&self) -> Vec<Error> {
        self.spans
            .iter()
            .zip(&self.matches)
            .filter(|(_, ok)| !**ok)
            .map(|((id, _), _)| mismatch(id))
            .collect()
    }
}

fn mismatch(id: &Id) -> Error {
    chunk_corrupt(
        id,
        "its bytes in the frame do not hash to its id".to_string(),
    )
}

/// What a stored unit is sealed with: a format-2 frame's [`frame_ad`], or
/// (a format-1 chunk, read as a frame of one) the chunk's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdMode {
    Frame,
    ChunkId,
}

/// Opens and decodes a frame's stored bytes; `chunks` are its trailer
/// records in order and `sealer` the store's (it names the chunks too).
pub fn decode_frame(
    stored: Vec<u8>,
    codec: Codec,
    chunks: &[ChunkEntry],
    sealer: &Sealer,
) -> Result<DecodedFrame, FrameError> {
    decode_unit(stored, codec, chunks, AdMode::Frame, sealer)
}

/// [`decode_frame`] for any stored unit: a format-1 chunk is a frame of
/// one chunk sealed with its id ([`AdMode::ChunkId`]).
pub fn decode_unit(
    stored: Vec<u8>,
    codec: Codec,
    chunks: &[ChunkEntry],
    ad: AdMode,
    sealer: &Sealer,
) -> Result<DecodedFrame, FrameError> {
    let total: u64 = chunks.iter().map(|c| c.raw_len as u64).sum();
    let (encoded, encoding) = open_unit(stored, codec, chunks, ad, sealer)?;
    // `total` is at most MAX_FRAME_RAW, so it fits a u32, and `decode`
    // decompresses into exactly that much room.
    let raw = crate::codec::decode_frame(encoded, encoding, total as u32)
        .map_err(|e| unit_error(chunks, format!("does not decode: {e}")))?;
    let mut spans = Vec::with_capacity(chunks.len());
    let mut at = 0usize;
    for c in chunks {
        let span = at..at + c.raw_len as usize;
        at = span.end;
        spans.push((c.id, span));
    }
    // `decode` returned exactly `total` bytes, the sum of the spans.
    let pieces: Vec<&[u8]> = spans.iter().map(|(_, s)| &raw[s.clone()]).collect();
    let matches = sealer
        .chunk_ids(&pieces)
        .iter()
        .zip(chunks)
        .map(|(got, c)| *got == c.id)
        .collect();
    Ok(DecodedFrame {
        raw,
        spans,
        matches,
    })
}
