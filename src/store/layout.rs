//! The layout of a pack whatever its format: the stored units ("frames")
//! in the order the trailer gives them and the chunks in each. A format-1
//! chunk is read as a frame of one chunk sealed with its id; a format-2
//! frame holds up to 4096 chunks sealed with `frame_ad`
//! (`docs/design/format2.md` §1.3, §4). The chunk index, verify, gc, copy
//! and repair see only this model; the format matters when a trailer is
//! decoded (here) and when a frame is opened ([`AdMode`]).

use super::pack::{PackEntry, PACK_MAGIC};
use super::pack2::{AdMode, ChunkEntry, Codec, TrailerV2, PACK2_MAGIC};
use crate::id::Id;

/// Which pack format a layout was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackFormat {
    V1,
    V2,
}

/// One stored unit of a pack: a format-2 frame, or a format-1 chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSpan {
    /// From the start of the pack file.
    pub offset: u32,
    /// Bytes in the file, seal overhead included.
    pub stored_len: u32,
    pub codec: Codec,
    /// Index of its first chunk in [`PackLayout::chunks`].
    pub first_chunk: u32,
    pub n_chunks: u32,
    /// Sum of its chunks' raw lengths (saturated: a damaged format-1 index
    /// may record anything, and decoding refuses it).
    pub raw_len: u32,
}

impl FrameSpan {
    pub fn end(&self) -> u64 {
        self.offset as u64 + self.stored_len as u64
    }
}

/// Where a pack's frames, chunks and trailer are.
#[derive(Clone, Debug)]
pub struct PackLayout {
    pub format: PackFormat,
    pub frames: Vec<FrameSpan>,
    pub chunks: Vec<ChunkEntry>,
    /// End of the frame area (where the trailer starts).
    pub blob_end: u64,
}

impl PackLayout {
    /// A format-1 index: one frame per entry, in the index's order.
    pub fn from_v1(entries: Vec<PackEntry>, blob_end: u64) -> PackLayout {
        let frames = entries
            .iter()
            .enumerate()
            .map(|(i, e)| FrameSpan {
                offset: e.offset,
                stored_len: e.stored_len,
                codec: if e.compressed {
                    Codec::Zstd
                } else {
                    Codec::Raw
                },
                first_chunk: i as u32,
                n_chunks: 1,
                raw_len: e.raw_len,
            })
            .collect();
        let chunks = entries
            .into_iter()
            .map(|e| ChunkEntry {
                id: e.id,
                raw_len: e.raw_len,
            })
            .collect();
        PackLayout {
            format: PackFormat::V1,
            frames,
            chunks,
            blob_end,
        }
    }

    /// A format-2 trailer (checked by its decoder: frames tile the body,
    /// chunk records tile the frames).
    pub fn from_v2(trailer: TrailerV2, blob_end: u64) -> PackLayout {
        let frames = trailer
            .frames
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let raw: u64 = trailer
                    .frame_chunks(i)
                    .iter()
                    .map(|c| c.raw_len as u64)
                    .sum();
                FrameSpan {
                    offset: f.offset,
                    stored_len: f.stored_len,
                    codec: f.codec,
                    first_chunk: f.first_chunk,
                    n_chunks: f.n_chunks as u32,
                    raw_len: raw.min(u32::MAX as u64) as u32,
                }
            })
            .collect();
        PackLayout {
            format: PackFormat::V2,
            frames,
            chunks: trailer.chunks,
            blob_end,
        }
    }

    /// The first 8 bytes of a pack of this format.
    pub fn magic(&self) -> &'static [u8; 8] {
        match self.format {
            PackFormat::V1 => PACK_MAGIC,
            PackFormat::V2 => PACK2_MAGIC,
        }
    }

    /// What the frames are sealed with.
    pub fn ad_mode(&self) -> AdMode {
        match self.format {
            PackFormat::V1 => AdMode::ChunkId,
            PackFormat::V2 => AdMode::Frame,
        }
    }

    /// The chunks of frame `fi` (empty past the end).
    pub fn frame_chunks(&self, fi: usize) -> &[ChunkEntry] {
        self.frames
            .get(fi)
            .and_then(|f| {
                let start = f.first_chunk as usize;
                self.chunks.get(start..start + f.n_chunks as usize)
            })
            .unwrap_or(&[])
    }

    /// The frame starting at `offset` (frames of a format-2 pack are in
    /// file order; a format-1 index is searched through).
    pub fn frame_at(&self, offset: u32) -> Option<usize> {
        match self.format {
            PackFormat::V2 => {
                let i = self.frames.partition_point(|f| f.offset < offset);
                (self.frames.get(i)?.offset == offset).then_some(i)
            }
            PackFormat::V1 => self.frames.iter().position(|f| f.offset == offset),
        }
    }

    /// Every chunk id, in trailer order.
    pub fn ids(&self) -> impl Iterator<Item = Id> + '_ {
        self.chunks.iter().map(|c| c.id)
    }

    /// Each frame's share of its stored bytes for `raw` of its raw bytes
    /// (a chunk's share of a frame holding several: stats, verify's and
    /// gc's live and reclaimable bytes).
    pub fn share(stored_len: u32, frame_raw: u32, raw: u64) -> u64 {
        if frame_raw == 0 || raw >= frame_raw as u64 {
            return stored_len as u64;
        }
        (stored_len as u128 * raw as u128 / frame_raw as u128) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_proportional_and_never_above_the_frame() {
        assert_eq!(PackLayout::share(1000, 4000, 1000), 250);
        assert_eq!(PackLayout::share(1000, 4000, 4000), 1000);
        assert_eq!(PackLayout::share(1000, 4000, 9000), 1000);
        assert_eq!(PackLayout::share(1000, 0, 0), 1000);
        assert_eq!(PackLayout::share(u32::MAX, u32::MAX, 1), 1);
    }
}
