//! `TrailerV2` (design §1.3.1): the table of a format-2 pack, as fixed
//! little-endian records, stored as `seal(zstd(records), "pack-index-v2")`.
//!
//! ```text
//! "ATOPIDX2" | n_frames u32 | n_chunks u32 | n_dicts u16 | 0 u16
//! dict ids        32 B each
//! FrameEntry      16 B each: offset u32, stored_len u32, first_chunk u32,
//!                 n_chunks u16, codec u8, kind (low nibble) | dict << 4
//! ChunkEntry      36 B each: id [32], raw_len u32 (frame order, raw order)
//! ```
//!
//! Decoding checks everything before it trusts anything: counts against
//! the decoded length before allocating, frames tiling the body, chunk
//! records tiling the frames, raw frames' lengths, frame raw sizes.

use super::{Codec, FrameKind, MAX_FRAME_CHUNKS, MAX_FRAME_RAW, PACK2_MAGIC, TRAILER2_AD};
use crate::id::Id;
use crate::store::pack::PackIndexError;
use crate::store::seal::Sealer;

pub const TRAILER2_MAGIC: &[u8; 8] = b"ATOPIDX2";
const HEADER_LEN: u64 = 20;
const DICT_LEN: u64 = 32;
const FRAME_LEN: u64 = 16;
const CHUNK_LEN: u64 = 36;
/// Dictionary indexes are a nibble, 15 reserved.
const MAX_DICTS: u16 = 15;
/// The most chunk records a stored trailer of L bytes may claim: random
/// ids do not compress, so zstd cannot expand the records 64-fold.
const CHUNKS_PER_STORED_BYTE: u64 = 64;
/// The most bytes a trailer decodes to, whatever it declares (2^20 frames
/// and 2^20 chunks, far above any pack's count).
pub const MAX_TRAILER_DECODED: u64 =
    HEADER_LEN + DICT_LEN * MAX_DICTS as u64 + (FRAME_LEN + CHUNK_LEN) * (1 << 20);

/// One frame of a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameEntry {
    /// From the start of the pack file.
    pub offset: u32,
    /// Bytes in the file, seal overhead included.
    pub stored_len: u32,
    /// Index of its first chunk record.
    pub first_chunk: u32,
    pub n_chunks: u16,
    pub codec: Codec,
    pub kind: FrameKind,
    /// Index into the pack's dictionaries (codec 2 only, else 0).
    pub dict: u8,
}

/// One chunk of a pack: its offset in the frame's raw bytes is the sum of
/// the raw lengths before it in the same frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkEntry {
    pub id: Id,
    pub raw_len: u32,
}

/// The decoded trailer of a format-2 pack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrailerV2 {
    pub dicts: Vec<Id>,
    pub frames: Vec<FrameEntry>,
    pub chunks: Vec<ChunkEntry>,
}

impl TrailerV2 {
    /// The fixed records (before zstd and sealing).
    pub fn encode(&self) -> Vec<u8> {
        let len = HEADER_LEN
            + DICT_LEN * self.dicts.len() as u64
            + FRAME_LEN * self.frames.len() as u64
            + CHUNK_LEN * self.chunks.len() as u64;
        let mut out = Vec::with_capacity(len as usize);
        out.extend_from_slice(TRAILER2_MAGIC);
        out.extend_from_slice(&(self.frames.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.dicts.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        for d in &self.dicts {
            out.extend_from_slice(&d.0);
        }
        for f in &self.frames {
            out.extend_from_slice(&f.offset.to_le_bytes());
            out.extend_from_slice(&f.stored_len.to_le_bytes());
            out.extend_from_slice(&f.first_chunk.to_le_bytes());
            out.extend_from_slice(&f.n_chunks.to_le_bytes());
            out.push(f.codec as u8);
            out.push(f.kind as u8 | (f.dict << 4));
        }
        for c in &self.chunks {
            out.extend_from_slice(&c.id.0);
            out.extend_from_slice(&c.raw_len.to_le_bytes());
        }
        out
    }

    /// The trailer body as stored: `seal(zstd(records), "pack-index-v2")`.
    pub fn seal(&self, level: i32, sealer: &Sealer) -> std::io::Result<Vec<u8>> {
        let z = zstd::bulk::compress(&self.encode(), level)?;
        Ok(sealer.seal(z, TRAILER2_AD))
    }

    /// Opens and decodes a stored trailer body. `blob_end` is where the
    /// frames end (the body's offset in the pack); the zstd decoder is
    /// bounded by the stored length and [`MAX_TRAILER_DECODED`].
    pub fn open(
        stored: Vec<u8>,
        blob_end: u64,
        sealer: &Sealer,
    ) -> Result<TrailerV2, PackIndexError> {
        let stored_len = stored.len() as u64;
        let z = sealer
            .open(stored, TRAILER2_AD)
            .map_err(PackIndexError::IndexDecode)?;
        TrailerV2::from_opened(&z, stored_len, blob_end, sealer.overhead())
    }

    /// [`TrailerV2::open`] after the seal is opened: `z` is the zstd frame
    /// of the records, `stored_len` the stored body's length.
    pub fn from_opened(
        z: &[u8],
        stored_len: u64,
        blob_end: u64,
        overhead: usize,
    ) -> Result<TrailerV2, PackIndexError> {
        let declared = match zstd::zstd_safe::get_frame_content_size(z) {
            Ok(Some(n)) => n,
            _ => {
                return Err(bad(
                    "the trailer is not one zstd frame with its content size",
                ))
            }
        };
        let cap =
            MAX_TRAILER_DECODED.min(stored_len.saturating_mul(CHUNKS_PER_STORED_BYTE * CHUNK_LEN));
        if declared > cap {
            return Err(bad(format!(
                "the trailer declares {declared} decoded bytes, more than the {cap} its {stored_len} stored bytes allow"
            )));
        }
        let records = zstd::bulk::decompress(z, declared as usize)
            .map_err(|e| bad(format!("the trailer does not decompress: {e}")))?;
        TrailerV2::decode(&records, stored_len, blob_end, overhead)
    }

    /// Decodes and checks the fixed records. `stored_len` is the trailer
    /// body's stored length (bounding the chunk count), `blob_end` the end
    /// of the frames and `overhead` the seal's bytes per frame.
    pub fn decode(
        bytes: &[u8],
        stored_len: u64,
        blob_end: u64,
        overhead: usize,
    ) -> Result<TrailerV2, PackIndexError> {
        let (d, f, c) = header(bytes)?;
        if c > stored_len.saturating_mul(CHUNKS_PER_STORED_BYTE) {
            return Err(bad(format!(
                "the trailer claims {c} chunks, more than its {stored_len} stored bytes can hold"
            )));
        }
        if f > c {
            return Err(bad(format!("the trailer claims {f} frames for {c} chunks")));
        }
        let mut rest = &bytes[HEADER_LEN as usize..];
        let dicts = (0..d).map(|_| Id(take::<32>(&mut rest))).collect();
        let frames = (0..f)
            .map(|_| frame_entry(take::<16>(&mut rest)))
            .collect::<Result<Vec<_>, _>>()?;
        let chunks = (0..c)
            .map(|_| {
                let r = take::<36>(&mut rest);
                let mut id = [0u8; 32];
                id.copy_from_slice(&r[..32]);
                ChunkEntry {
                    id: Id(id),
                    raw_len: u32::from_le_bytes([r[32], r[33], r[34], r[35]]),
                }
            })
            .collect();
        let t = TrailerV2 {
            dicts,
            frames,
            chunks,
        };
        t.check(blob_end, overhead)?;
        Ok(t)
    }

    /// The records of frame `i`'s chunks (empty past the end).
    pub fn frame_chunks(&self, i: usize) -> &[ChunkEntry] {
        self.frames
            .get(i)
            .and_then(|f| {
                let start = f.first_chunk as usize;
                self.chunks.get(start..start + f.n_chunks as usize)
            })
            .unwrap_or(&[])
    }

    /// The frame holding chunk record `ci`.
    pub fn frame_of(&self, ci: usize) -> Option<usize> {
        if ci >= self.chunks.len() {
            return None;
        }
        // Frames tile the records in order (checked on decode).
        self.frames
            .partition_point(|f| f.first_chunk as usize <= ci)
            .checked_sub(1)
    }

    /// Where chunk record `ci` lies in its frame's raw bytes.
    pub fn raw_span(&self, ci: usize) -> Option<(usize, std::ops::Range<usize>)> {
        let fi = self.frame_of(ci)?;
        let first = self.frames.get(fi)?.first_chunk as usize;
        let start: usize = self
            .chunks
            .get(first..ci)?
            .iter()
            .map(|c| c.raw_len as usize)
            .sum();
        Some((fi, start..start + self.chunks.get(ci)?.raw_len as usize))
    }

    fn check(&self, blob_end: u64, overhead: usize) -> Result<(), PackIndexError> {
        let mut at = PACK2_MAGIC.len() as u64;
        let mut next_chunk = 0u64;
        for (i, f) in self.frames.iter().enumerate() {
            if f.offset as u64 != at {
                return Err(bad(format!(
                    "frame {i} starts at {}, the frames before it end at {at}: frames must tile the body",
                    f.offset
                )));
            }
            at += f.stored_len as u64;
            if f.first_chunk as u64 != next_chunk {
                return Err(bad(format!(
                    "frame {i} starts at chunk record {}, expected {next_chunk}",
                    f.first_chunk
                )));
            }
            if f.n_chunks == 0 || f.n_chunks as u32 > MAX_FRAME_CHUNKS {
                return Err(bad(format!("frame {i} holds {} chunks", f.n_chunks)));
            }
            next_chunk += f.n_chunks as u64;
            let raw: u64 = self.frame_chunks(i).iter().map(|c| c.raw_len as u64).sum();
            self.check_frame(i, f, raw, overhead)?;
        }
        if at != blob_end {
            return Err(bad(format!(
                "the frames end at {at}, the trailer starts at {blob_end}: frames must tile the body"
            )));
        }
        if next_chunk != self.chunks.len() as u64 {
            return Err(bad(format!(
                "the frames hold {next_chunk} chunk records, the trailer has {}",
                self.chunks.len()
            )));
        }
        Ok(())
    }

    fn check_frame(
        &self,
        i: usize,
        f: &FrameEntry,
        raw: u64,
        overhead: usize,
    ) -> Result<(), PackIndexError> {
        if raw > MAX_FRAME_RAW as u64 {
            return Err(bad(format!(
                "frame {i} declares {raw} raw bytes, more than any frame ({MAX_FRAME_RAW})"
            )));
        }
        if (f.stored_len as usize) < overhead {
            return Err(bad(format!("frame {i} is shorter than its seal")));
        }
        match f.codec {
            Codec::Raw if f.stored_len as u64 - overhead as u64 != raw => Err(bad(format!(
                "raw frame {i} stores {} bytes for {raw} raw bytes",
                f.stored_len as u64 - overhead as u64
            ))),
            Codec::ZstdDict if f.dict as usize >= self.dicts.len() => Err(bad(format!(
                "frame {i} uses dictionary {} of {}",
                f.dict,
                self.dicts.len()
            ))),
            Codec::Raw | Codec::Zstd | Codec::ZstdLanes if f.dict != 0 => Err(bad(format!(
                "frame {i} names a dictionary without using one"
            ))),
            _ => Ok(()),
        }
    }
}

fn bad(detail: impl Into<String>) -> PackIndexError {
    PackIndexError::IndexDecode(detail.into())
}

/// (n_dicts, n_frames, n_chunks), checked against the decoded length so
/// that nothing is allocated for records the bytes do not hold.
fn header(bytes: &[u8]) -> Result<(u64, u64, u64), PackIndexError> {
    let mut rest = bytes;
    if (bytes.len() as u64) < HEADER_LEN || &take::<8>(&mut rest) != TRAILER2_MAGIC {
        return Err(bad("the trailer does not start with ATOPIDX2"));
    }
    let f = u32::from_le_bytes(take::<4>(&mut rest)) as u64;
    let c = u32::from_le_bytes(take::<4>(&mut rest)) as u64;
    let d = u16::from_le_bytes(take::<2>(&mut rest));
    if u16::from_le_bytes(take::<2>(&mut rest)) != 0 {
        return Err(bad("the trailer's reserved field is not 0"));
    }
    if d > MAX_DICTS {
        return Err(bad(format!(
            "the trailer names {d} dictionaries, at most {MAX_DICTS}"
        )));
    }
    let d = d as u64;
    let expected = HEADER_LEN + DICT_LEN * d + FRAME_LEN * f + CHUNK_LEN * c;
    if expected != bytes.len() as u64 {
        return Err(bad(format!(
            "the trailer claims {d} dictionaries, {f} frames and {c} chunks ({expected} bytes), it has {} bytes",
            bytes.len()
        )));
    }
    Ok((d, f, c))
}

/// The next N bytes; the caller has checked the length (zeros otherwise).
fn take<const N: usize>(rest: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some((head, tail)) = rest.split_first_chunk::<N>() {
        out = *head;
        *rest = tail;
    }
    out
}

fn frame_entry(r: [u8; 16]) -> Result<FrameEntry, PackIndexError> {
    let codec =
        Codec::from_u8(r[14]).ok_or_else(|| bad(format!("unknown frame codec {}", r[14])))?;
    let kind = FrameKind::from_u8(r[15] & 0x0f)
        .ok_or_else(|| bad(format!("unknown frame kind {}", r[15] & 0x0f)))?;
    Ok(FrameEntry {
        offset: u32::from_le_bytes([r[0], r[1], r[2], r[3]]),
        stored_len: u32::from_le_bytes([r[4], r[5], r[6], r[7]]),
        first_chunk: u32::from_le_bytes([r[8], r[9], r[10], r[11]]),
        n_chunks: u16::from_le_bytes([r[12], r[13]]),
        codec,
        kind,
        dict: r[15] >> 4,
    })
}
