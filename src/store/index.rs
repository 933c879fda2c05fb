//! The in-memory lookup index of every chunk in the store: chunk id to
//! (pack, offset, length). Built from the pack trailers; about 56 bytes per
//! chunk (32-byte key, 16-byte location, hash table overhead).

use crate::id::{Id, IdMap};
use crate::store::pack::PackEntry;

const COMPRESSED_BIT: u32 = 1 << 31;

/// Where a chunk lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: u32,
    pub offset: u32,
    len_and_flag: u32,
    pub raw_len: u32,
}

impl Location {
    pub fn stored_len(&self) -> u32 {
        self.len_and_flag & !COMPRESSED_BIT
    }
    pub fn compressed(&self) -> bool {
        self.len_and_flag & COMPRESSED_BIT != 0
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

    /// Adds a pack and its entries. A chunk present in two packs keeps its
    /// first location (either copy is valid).
    pub fn add_pack(&mut self, id: Id, size: u64, entries: &[PackEntry]) -> u32 {
        let pack = self.packs.len() as u32;
        self.packs.push(PackInfo {
            id,
            size,
            chunks: entries.len() as u32,
        });
        self.chunks.reserve(entries.len());
        for e in entries {
            let flag = if e.compressed { COMPRESSED_BIT } else { 0 };
            self.chunks.entry(e.id).or_insert(Location {
                pack,
                offset: e.offset,
                len_and_flag: e.stored_len | flag,
                raw_len: e.raw_len,
            });
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
