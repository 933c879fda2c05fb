//! Where chunks are: [`ChunkIndex::locate`] for one chunk, and
//! [`ChunkLocator`] for a file's chunks, asked in file order.
//! Chunks stored together are read back together: a file's chunks were
//! packed in file order, so after one lookup in the index the next chunks
//! are usually the next entries of the same pack, which the pack's layout
//! names without another lookup. The layout is the one reading the pack's
//! frames needs anyway (the store's layout cache). A restore of a 0.9 GB
//! runtime looks up about 200,000 chunks: one positioned read of the index
//! each was a tenth of its CPU.
//!
//! What the locator answers is what the index would, or another copy of
//! the same chunk in a pack the index named a moment before; either is
//! re-hashed when read.

use std::sync::Arc;

use super::chunk_index::IndexError;
use super::index::{ChunkIndex, Location};
use super::layout::PackLayout;
use super::{ChunkFault, Store};
use crate::id::Id;

impl ChunkIndex {
    /// Where chunk `id` is, or why that cannot be said: it is missing, or
    /// a file of the index cache did not read (a storage failure naming
    /// the file: the command stops; the chunk is not missing).
    pub fn locate(&self, id: &Id) -> Result<Location, ChunkFault> {
        match self.lookup(id) {
            Ok(Some(loc)) => Ok(loc),
            Ok(None) => Err(ChunkFault::Missing),
            Err(e) => {
                let (IndexError::Damaged { path, .. } | IndexError::Io { path, .. }) = &e;
                Err(ChunkFault::Unreadable {
                    pack: path.clone(),
                    kind: std::io::ErrorKind::Other,
                    detail: e.to_string(),
                })
            }
        }
    }
}

/// Finds chunks, following the pack of the last one found.
pub struct ChunkLocator<'a> {
    store: &'a Store,
    index: &'a ChunkIndex,
    next: Option<Cursor>,
}

/// The entry of a pack's layout after the last chunk found.
struct Cursor {
    layout: Arc<PackLayout>,
    pack: u32,
    /// Its frame, its index in the layout's chunks, its offset in the
    /// frame's raw bytes.
    frame: usize,
    entry: usize,
    at: u32,
}

impl Cursor {
    /// The cursor after chunk `id` found at `loc`, or None when the pack's
    /// layout does not read or does not hold it there.
    fn after(store: &Store, index: &ChunkIndex, id: &Id, loc: &Location) -> Option<Cursor> {
        let pack = index.pack(loc.pack);
        let layout = store.cached_layout(&pack.id, pack.size).ok()?;
        let frame = layout.frame_at(loc.frame_offset)?;
        let first = layout.frames[frame].first_chunk as usize;
        let mut at = 0u32;
        for (k, c) in layout.frame_chunks(frame).iter().enumerate() {
            if at == loc.chunk_offset && c.id == *id && c.raw_len == loc.raw_len {
                let mut cursor = Cursor {
                    layout,
                    pack: loc.pack,
                    frame,
                    entry: first + k,
                    at,
                };
                cursor.step();
                return Some(cursor);
            }
            at = at.checked_add(c.raw_len)?;
        }
        None
    }

    /// Moves past the current entry (into the next frame at its end).
    fn step(&mut self) {
        let len = self.layout.chunks[self.entry].raw_len;
        self.entry += 1;
        self.at = self.at.saturating_add(len);
        let f = &self.layout.frames[self.frame];
        if self.entry >= (f.first_chunk + f.n_chunks) as usize {
            self.frame += 1;
            self.at = 0;
        }
    }

    /// The location of `id` if it is the current entry (then moves on).
    fn take(&mut self, id: &Id) -> Option<Location> {
        let c = self.layout.chunks.get(self.entry)?;
        let f = self.layout.frames.get(self.frame)?;
        let in_frame =
            (f.first_chunk as usize..(f.first_chunk + f.n_chunks) as usize).contains(&self.entry);
        if c.id != *id || !in_frame {
            return None;
        }
        let loc = Location::in_frame_of(self.layout.format, f, self.pack, self.at, c.raw_len);
        self.step();
        Some(loc)
    }
}

impl<'a> ChunkLocator<'a> {
    pub fn new(store: &'a Store, index: &'a ChunkIndex) -> ChunkLocator<'a> {
        ChunkLocator {
            store,
            index,
            next: None,
        }
    }

    /// Where chunk `id` is (see [`ChunkIndex::locate`] for the faults).
    pub fn locate(&mut self, id: &Id) -> Result<Location, ChunkFault> {
        if let Some(loc) = self.next.as_mut().and_then(|c| c.take(id)) {
            return Ok(loc);
        }
        let loc = self.index.locate(id)?;
        self.next = Cursor::after(self.store, self.index, id, &loc);
        Ok(loc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::location::{RemoteSettings, StoreAddress};
    use crate::store::packer::Packer;

    fn store(dir: &std::path::Path) -> Store {
        let address = StoreAddress {
            remote: RemoteSettings {
                cache_dir: Some(dir.join("cache")),
                ..RemoteSettings::default()
            },
            ..StoreAddress::local(dir.join("store"))
        };
        Store::init(&address, &Default::default()).unwrap()
    }

    /// 8 KiB chunks, so that a pack holds several frames.
    fn chunk(seed: u8, i: usize) -> Vec<u8> {
        let mut data = vec![seed; 8192];
        data[..8].copy_from_slice(&(i as u64).to_le_bytes());
        data
    }

    /// Writes `n` chunks of `seed` into one pack (through `index`, or a
    /// scratch index so that chunks already stored are stored again).
    fn add_pack(store: &Store, index: Option<&mut ChunkIndex>, seed: u8, n: usize) -> Vec<Id> {
        let mut scratch = ChunkIndex::new();
        let index = index.unwrap_or(&mut scratch);
        let mut packer = Packer::new(store);
        let mut ids = Vec::new();
        for i in 0..n {
            let data = chunk(seed, i);
            let id = store.sealer().chunk_id(&data);
            packer.add_raw(index, id, &data).unwrap();
            ids.push(id);
        }
        packer.flush(index).unwrap();
        ids
    }

    /// Each chunk found through the locator reads back as its bytes.
    fn assert_reads(store: &Store, index: &ChunkIndex, order: &[(u8, usize, Id)]) {
        let mut locator = ChunkLocator::new(store, index);
        for (seed, i, id) in order {
            let loc = locator.locate(id).unwrap();
            let mut out = vec![0; loc.raw_len as usize];
            store.read_chunk_into(index, id, &loc, &mut out).unwrap();
            assert_eq!(out, chunk(*seed, *i), "chunk {i} of {seed}");
        }
    }

    #[test]
    fn a_file_order_that_jumps_between_packs_finds_what_the_index_finds() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let mut index = store.load_index().unwrap();
        let a = add_pack(&store, Some(&mut index), 1, 300);
        let b = add_pack(&store, Some(&mut index), 2, 20);
        drop(index);
        let index = store.load_index().unwrap();
        // In order, across frames, jumping to the other pack and back,
        // backwards, and repeating a chunk.
        let order: Vec<(u8, usize, Id)> = (0..100)
            .map(|i| (1, i))
            .chain((0..10).map(|i| (2, i)))
            .chain((100..300).map(|i| (1, i)))
            .chain([(1, 5), (2, 3), (1, 299), (1, 6), (1, 6), (2, 19)])
            .map(|(s, i)| (s, i, if s == 1 { a[i] } else { b[i] }))
            .collect();
        let mut locator = ChunkLocator::new(&store, &index);
        for (_, _, id) in &order {
            assert_eq!(locator.locate(id).unwrap(), index.locate(id).unwrap());
        }
        assert_reads(&store, &index, &order);
        let missing = store.sealer().chunk_id(b"not stored");
        assert_eq!(locator.locate(&missing), Err(ChunkFault::Missing));
    }

    #[test]
    fn a_chunk_stored_twice_is_found_in_either_pack_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let a = add_pack(&store, None, 1, 200);
        // The same chunks again, in another pack.
        let again = add_pack(&store, None, 1, 200);
        assert_eq!(a, again);
        let index = store.load_index().unwrap();
        let order: Vec<(u8, usize, Id)> = (0..200).chain(50..60).map(|i| (1, i, a[i])).collect();
        assert_reads(&store, &index, &order);
    }

    #[test]
    fn a_pack_whose_layout_does_not_read_falls_back_to_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let a = add_pack(&store, None, 1, 50);
        let index = store.load_index().unwrap();
        // The pack is deleted after the index was read: its layout does
        // not read, and the locator answers as the index does.
        for e in std::fs::read_dir(dir.path().join("store/objects")).unwrap() {
            for p in std::fs::read_dir(e.unwrap().path()).unwrap() {
                let p = p.unwrap().path();
                if p.extension().is_some_and(|x| x == "pack") {
                    std::fs::remove_file(p).unwrap();
                }
            }
        }
        let mut locator = ChunkLocator::new(&store, &index);
        for id in &a {
            assert_eq!(locator.locate(id).unwrap(), index.locate(id).unwrap());
        }
    }
}
