//! The in-memory lookup index of every chunk in the store: chunk id to
//! its place (pack, frame, place in the frame). Built from the pack
//! trailers; about 64 bytes per chunk (32-byte key, 24-byte location, hash
//! table overhead). A format-1 chunk is a frame of one chunk
//! (`store::layout`).

use crate::id::{Id, IdMap};
use crate::store::layout::{PackFormat, PackLayout};
use crate::store::pack2::Codec;

/// The frame's stored length takes the low 29 bits of `frame_word`
/// (a frame is at most 16 MiB plus a seal), its codec the next two, and
/// the top bit says the frame is a format-2 one.
const LEN_MASK: u32 = (1 << 29) - 1;
const CODEC_SHIFT: u32 = 29;
const V2_BIT: u32 = 1 << 31;

/// Where a chunk lives: its frame in a pack, and its bytes in the frame's
/// raw bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: u32,
    /// From the start of the pack file.
    pub frame_offset: u32,
    frame_word: u32,
    /// Raw bytes of the whole frame (the chunk's own for a format-1 chunk).
    pub frame_raw_len: u32,
    /// Where the chunk starts in the frame's raw bytes.
    pub chunk_offset: u32,
    pub raw_len: u32,
}

impl Location {
    /// Stored bytes of the frame holding the chunk (seal included).
    pub fn frame_stored_len(&self) -> u32 {
        self.frame_word & LEN_MASK
    }

    pub fn codec(&self) -> Codec {
        Codec::from_u8(((self.frame_word >> CODEC_SHIFT) & 3) as u8).unwrap_or(Codec::ZstdDict)
    }

    /// Whether the frame is zstd-compressed.
    pub fn compressed(&self) -> bool {
        self.codec() == Codec::Zstd
    }

    /// Whether the chunk is in a format-2 frame (read through its pack's
    /// layout and the frame cache) rather than a format-1 chunk of its own.
    pub fn in_frame(&self) -> bool {
        self.frame_word & V2_BIT != 0
    }

    /// The chunk's share of its frame's stored bytes.
    pub fn stored_share(&self) -> u64 {
        PackLayout::share(
            self.frame_stored_len(),
            self.frame_raw_len,
            self.raw_len as u64,
        )
    }
}

/// A pack the index knows, with its size.
#[derive(Clone, Debug)]
pub struct PackInfo {
    pub id: Id,
    pub size: u64,
    pub chunks: u32,
}

/// A pack whose index could not be read: listed, its chunks unknown.
#[derive(Clone, Debug)]
pub struct DamagedPack {
    pub name: String,
    pub detail: String,
}

#[derive(Default)]
pub struct ChunkIndex {
    packs: Vec<PackInfo>,
    chunks: IdMap<Location>,
    pub damaged: Vec<DamagedPack>,
}

impl ChunkIndex {
    pub fn new() -> ChunkIndex {
        ChunkIndex::default()
    }

    /// Adds a pack and its chunks. A chunk present in two packs keeps its
    /// first location (either copy is valid).
    pub fn add_pack(&mut self, id: Id, size: u64, layout: &PackLayout) -> u32 {
        let pack = self.packs.len() as u32;
        self.packs.push(PackInfo {
            id,
            size,
            chunks: layout.chunks.len() as u32,
        });
        self.chunks.reserve(layout.chunks.len());
        let v2 = if layout.format == PackFormat::V2 {
            V2_BIT
        } else {
            0
        };
        for (fi, f) in layout.frames.iter().enumerate() {
            let word = (f.stored_len & LEN_MASK) | ((f.codec as u32) << CODEC_SHIFT) | v2;
            let mut at = 0u32;
            for c in layout.frame_chunks(fi) {
                self.chunks.entry(c.id).or_insert(Location {
                    pack,
                    frame_offset: f.offset,
                    frame_word: word,
                    frame_raw_len: f.raw_len,
                    chunk_offset: at,
                    raw_len: c.raw_len,
                });
                at = at.saturating_add(c.raw_len);
            }
        }
        pack
    }

    pub fn get(&self, id: &Id) -> Option<&Location> {
        self.chunks.get(id)
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.chunks.contains_key(id)
    }

    pub fn pack(&self, n: u32) -> &PackInfo {
        &self.packs[n as usize]
    }

    pub fn packs(&self) -> &[PackInfo] {
        &self.packs
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Id, &Location)> {
        self.chunks.iter()
    }

    pub fn total_pack_bytes(&self) -> u64 {
        self.packs.iter().map(|p| p.size).sum()
    }
}
