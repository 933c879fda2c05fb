//! Packs of store format 2 (`docs/design/format2.md` §1.3): chunks grouped
//! into frames, each frame compressed and sealed as one unit, with a trailer
//! of fixed records (no bincode) naming every frame and chunk.
//!
//! This module owns the bytes of a frame ([`frame`]: cutting, encoding,
//! decoding with the re-hash of every chunk), of the trailer ([`trailer`]:
//! `TrailerV2` and its bounds checks) and of a whole pack ([`pack`]:
//! `PackWriterV2`, `PackReaderV2`). It is pure: it neither knows the
//! backend nor the chunk index. Ids come from the caller's function (the
//! store's `Sealer::chunk_id`, keyed in a `repokey` store).
//!
//! The store writes them through `store::packer` and reads every pack,
//! format 1 or 2, through `store::layout` (a format-1 chunk is read as a
//! frame of one chunk).

pub mod frame;
pub mod pack;
pub mod trailer;

#[cfg(test)]
mod tests;

pub use frame::{
    decode_prefix, decode_unit, frame_ad, AdMode, DecodedFrame, EncodedFrame, FrameBuf, FrameError,
};
pub use pack::{FinishedPackV2, PackReaderV2, PackWriterV2};
pub use trailer::{ChunkEntry, FrameEntry, TrailerV2};

use crate::chunk::CompressionParams;
use crate::codec::FrameEncoding;

/// The first 8 bytes of a format-2 pack.
pub const PACK2_MAGIC: &[u8; 8] = b"ATOPACK2";
/// Associated data of a sealed format-2 trailer.
pub const TRAILER2_AD: &[u8] = b"pack-index-v2";
/// The most raw bytes a frame may hold: a reader refuses a frame declaring
/// more before it allocates (one chunk of the largest size fits alone).
pub const MAX_FRAME_RAW: u32 = crate::chunk::MAX_RAW_CHUNK;
/// The most chunks a frame may hold (`n_chunks` is a u16 on disk).
pub const MAX_FRAME_CHUNKS: u32 = 4096;
/// The largest `frame_max_bytes` a config may ask for.
pub const MAX_FRAME_BYTES: u32 = 8 << 20;

/// What a frame holds (the low nibble of `FrameEntry`'s last byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    Data = 0,
    List = 1,
    Dict = 2,
}

impl FrameKind {
    pub fn from_u8(v: u8) -> Option<FrameKind> {
        match v {
            0 => Some(FrameKind::Data),
            1 => Some(FrameKind::List),
            2 => Some(FrameKind::Dict),
            _ => None,
        }
    }
}

/// How a frame's raw bytes are encoded before sealing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
    /// zstd with one of the pack's dictionaries: in the format, not
    /// written or decoded by this build (design §6 R2).
    ZstdDict = 2,
    /// zstd over the frame's bytes gathered into 4-byte lanes
    /// ([`crate::codec::lanes`]): frames of 4-byte numbers (HNSW floats).
    ZstdLanes = 3,
}

impl Codec {
    pub fn from_u8(v: u8) -> Option<Codec> {
        match v {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            2 => Some(Codec::ZstdDict),
            3 => Some(Codec::ZstdLanes),
            _ => None,
        }
    }

    /// The codec of a frame a writer encoded.
    pub fn of(encoding: FrameEncoding) -> Codec {
        match encoding {
            FrameEncoding::Raw => Codec::Raw,
            FrameEncoding::Zstd => Codec::Zstd,
            FrameEncoding::ZstdLanes => Codec::ZstdLanes,
        }
    }

    /// How this build decodes the codec (None: a dictionary frame).
    pub fn encoding(self) -> Option<FrameEncoding> {
        match self {
            Codec::Raw => Some(FrameEncoding::Raw),
            Codec::Zstd => Some(FrameEncoding::Zstd),
            Codec::ZstdLanes => Some(FrameEncoding::ZstdLanes),
            Codec::ZstdDict => None,
        }
    }
}

/// How frames are cut and encoded (the frame fields of a format-2
/// `compression` config; `level` and `max_ratio_percent` are the chunk
/// codec's).
#[derive(Clone, Debug, PartialEq)]
pub struct FrameParams {
    pub compression: CompressionParams,
    /// A frame closes when it holds this many chunks (1..=4096).
    pub frame_max_chunks: u32,
    /// A frame closes once its raw bytes reach this (so it holds at most
    /// this plus one chunk).
    pub frame_max_bytes: u32,
    /// Whether frames of 4-byte numbers may be written with
    /// [`Codec::ZstdLanes`] (a store whose config says so: builds before
    /// the codec refuse such a config instead of reading its frames as
    /// damage).
    pub lanes: bool,
}

impl FrameParams {
    /// `init`'s defaults: zstd level 3, raw above 97 %, frames of 1 MiB or
    /// 256 chunks, lanes allowed.
    pub fn default_v2() -> FrameParams {
        FrameParams {
            compression: CompressionParams {
                algorithm: "zstd".to_string(),
                level: 3,
                max_ratio_percent: 97,
                auto: true,
            },
            frame_max_chunks: 256,
            frame_max_bytes: 1 << 20,
            lanes: true,
        }
    }

    /// Why a writer cannot use these parameters, if it cannot.
    pub fn check(&self) -> std::result::Result<(), String> {
        if let Some(p) = self.compression.problem() {
            return Err(p);
        }
        if !(1..=MAX_FRAME_CHUNKS).contains(&self.frame_max_chunks) {
            return Err(format!(
                "frame_max_chunks {} is outside 1..={MAX_FRAME_CHUNKS}",
                self.frame_max_chunks
            ));
        }
        if !(1..=MAX_FRAME_BYTES).contains(&self.frame_max_bytes) {
            return Err(format!(
                "frame_max_bytes {} is outside 1..={MAX_FRAME_BYTES}",
                self.frame_max_bytes
            ));
        }
        Ok(())
    }
}
