//! Packs of a store: listing them, reading their trailers into the chunk
//! index, reading and checking chunks, deleting packs.

use rayon::prelude::*;

use std::path::PathBuf;

use crate::error::{Error, IoContext, Result};
use crate::id::Id;

use super::backend::{self, BackendErrorKind};
use super::index::{ChunkIndex, DamagedPack, Location};
use super::lock::ExclusiveLock;
use super::pack::{PackEntry, PackIndexError, TRAILER_LEN};
use super::seal::Sealer;
use super::Store;
use super::{pack, Dir, Object};

/// Where a pack's chunks and index are.
#[derive(Clone, Debug)]
pub struct PackLayout {
    pub entries: Vec<PackEntry>,
    /// End of the blob area (where the index starts).
    pub blob_end: u64,
}

/// Why a chunk could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkFault {
    Missing,
    Corrupt(String),
    /// Its pack could not be read: the storage failed (a refused
    /// connection, a cut stream, a timeout), which says nothing about the
    /// chunk. Never reported as damage: the command stops with an I/O
    /// error instead ([`ChunkFault::into_error`]), so a retry can succeed.
    Unreadable {
        pack: PathBuf,
        kind: std::io::ErrorKind,
        detail: String,
    },
}

impl ChunkFault {
    /// The stable error code of SPEC §3 for this chunk.
    pub fn code(&self, id: &Id) -> String {
        match self {
            ChunkFault::Missing => format!("chunk_missing:{id}"),
            ChunkFault::Corrupt(_) => format!("chunk_corrupt:{id}"),
            ChunkFault::Unreadable { .. } => format!("chunk_unreadable:{id}"),
        }
    }

    /// What a failed read of `pack` means for the chunks in it: a pack
    /// gone is a missing chunk, one the backend (not the transport) found
    /// cut short a corrupt one, anything else a storage failure. A
    /// transient failure is never damage, whatever its `io::ErrorKind`: a
    /// download cut mid-stream may say `UnexpectedEof`.
    pub fn of_read_error(pack: PathBuf, e: &std::io::Error) -> ChunkFault {
        match BackendErrorKind::of(e) {
            BackendErrorKind::NotFound => ChunkFault::Missing,
            BackendErrorKind::Permanent if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                ChunkFault::Corrupt(format!("pack {} is truncated", pack.display()))
            }
            _ => ChunkFault::Unreadable {
                pack,
                kind: e.kind(),
                detail: e.to_string(),
            },
        }
    }

    /// The error a command stops with when it cannot read chunk `id`.
    pub fn into_error(self, id: &Id) -> Error {
        match self {
            ChunkFault::Missing => Error::ChunkMissing { hash: id.to_hex() },
            ChunkFault::Corrupt(detail) => Error::ChunkCorrupt {
                hash: id.to_hex(),
                detail,
            },
            ChunkFault::Unreadable { pack, kind, detail } => {
                Error::io("read", pack, std::io::Error::new(kind, detail))
            }
        }
    }
}

/// How strictly [`Store::read_pack_layout`] reads a pack's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The index checksum must match and every entry must lie in the blob
    /// area.
    Strict,
    /// What can be read of a damaged pack's index: the checksum is not
    /// required to match and entries pointing outside the blob area are
    /// left out. Only for salvage, where every chunk is checked against its
    /// id before it is kept.
    Salvage,
}

impl Store {
    /// Names and sizes of every pack file under `objects/`.
    pub fn list_packs(&self) -> Result<Vec<backend::ListEntry>> {
        let list = self
            .backend
            .list_files(Dir::Packs.name())
            .ctx("list", self.display_dir(Dir::Packs))?;
        Ok(list
            .into_iter()
            .filter(|e| e.name.ends_with(".pack"))
            .collect())
    }

    /// Reads a pack's own index from its trailer.
    pub fn read_pack_index(
        &self,
        pack: &Object,
        size: u64,
    ) -> std::result::Result<Vec<PackEntry>, String> {
        self.read_pack_layout(pack, size, Check::Strict)
            .map(|l| l.entries)
    }

    /// Reads a pack's trailer and index, checked as `check` says.
    pub fn read_pack_layout(
        &self,
        pack: &Object,
        size: u64,
        check: Check,
    ) -> std::result::Result<PackLayout, String> {
        let (blob_end, stored, hash) = self.read_pack_trailer(&pack.name(), size)?;
        if check == Check::Strict {
            let entries = pack::decode_index(stored, &hash, blob_end, |b| {
                self.sealer.open(b, pack::INDEX_AD)
            })
            .map_err(|e| e.to_string())?;
            return Ok(PackLayout { entries, blob_end });
        }
        let encoded = self.sealer.open(stored, pack::INDEX_AD)?;
        let mut entries = pack::decode_entries(&encoded)?;
        entries.retain(|e| {
            e.offset as u64 >= pack::PACK_MAGIC.len() as u64
                && e.offset as u64 + e.stored_len as u64 <= blob_end
        });
        Ok(PackLayout { entries, blob_end })
    }

    /// (blob area end, stored index bytes, index checksum from the trailer).
    fn read_pack_trailer(
        &self,
        name: &str,
        size: u64,
    ) -> std::result::Result<(u64, Vec<u8>, [u8; 32]), String> {
        if size < TRAILER_LEN as u64 {
            return Err(PackIndexError::TooShort(size).to_string());
        }
        // A pack is named by its hash, so its cached tail never goes stale.
        // Only a tail whose index hashes to its trailer's checksum is used
        // or kept: an index read that came back wrong must not make the
        // pack look damaged from this cache ever after.
        let key = format!("packidx/{name}");
        if let Some(tail) = self.cache.as_ref().and_then(|c| c.get(&key)) {
            if tail.len() >= TRAILER_LEN {
                let (stored, trailer) = tail.split_at(tail.len() - TRAILER_LEN);
                if let Ok((blob_end, len, hash)) = pack::parse_trailer(size, trailer) {
                    if len == stored.len() && blake3::hash(stored).as_bytes() == &hash {
                        return Ok((blob_end, stored.to_vec(), hash));
                    }
                }
            }
        }
        let trailer = self
            .backend
            .read_range_direct(name, size - TRAILER_LEN as u64, TRAILER_LEN)
            .map_err(|e| format!("unreadable: {e}"))?;
        let (blob_end, len, hash) =
            pack::parse_trailer(size, &trailer).map_err(|e| e.to_string())?;
        let stored = self
            .backend
            .read_range_direct(name, blob_end, len)
            .map_err(|e| format!("unreadable: {e}"))?;
        let intact = blake3::hash(&stored).as_bytes() == &hash;
        if let Some(cache) = self.cache.as_ref().filter(|_| intact) {
            let mut tail = Vec::with_capacity(stored.len() + TRAILER_LEN);
            tail.extend_from_slice(&stored);
            tail.extend_from_slice(&trailer);
            cache.put(&key, &tail);
        }
        Ok((blob_end, stored, hash))
    }

    /// Builds the chunk index from every pack's trailer, in parallel. Packs
    /// whose index cannot be read are listed in `damaged`.
    pub fn load_index(&self) -> Result<ChunkIndex> {
        /// Packs whose indexes are read in parallel at a time: the decoded
        /// entries of only this many packs are in memory besides the map.
        const PACKS_PER_ROUND: usize = 8;
        let packs = self.list_packs()?;
        let mut index = ChunkIndex::new();
        for round in packs.chunks(PACKS_PER_ROUND) {
            let loaded: Vec<_> = round
                .par_iter()
                .map(|p| {
                    (
                        p,
                        self.read_pack_index(&Object::Listed(p.name.clone()), p.size),
                    )
                })
                .collect();
            for (p, result) in loaded {
                let Some(id) = pack::pack_id_from_name(&p.name) else {
                    index.damaged.push(DamagedPack {
                        name: p.name.clone(),
                        detail: "not a pack name".into(),
                    });
                    continue;
                };
                match result {
                    Ok(entries) => {
                        index.add_pack(id, p.size, &entries);
                    }
                    Err(detail) => index.damaged.push(DamagedPack {
                        name: p.name.clone(),
                        detail,
                    }),
                }
            }
        }
        Ok(index)
    }

    /// Runs `work` while, on a remote store, two helper threads fetch the
    /// packs holding `ids` in the order they are first needed, so that the
    /// readers in `work` find each pack downloaded instead of each waiting
    /// for its own. A local store just runs `work`.
    pub fn with_packs_prefetched<'a, T>(
        &self,
        index: &ChunkIndex,
        ids: impl Iterator<Item = &'a Id>,
        work: impl FnOnce() -> T,
    ) -> T {
        if !self.is_remote() {
            return work();
        }
        let mut seen = std::collections::HashSet::new();
        let names: Vec<String> = ids
            .filter_map(|id| index.get(id))
            .filter(|loc| seen.insert(loc.pack))
            .map(|loc| Object::Pack(index.pack(loc.pack).id).name())
            .collect();
        const PREFETCHERS: usize = 2;
        std::thread::scope(|scope| {
            for first in 0..PREFETCHERS {
                let names = &names;
                scope.spawn(move || {
                    for name in names.iter().skip(first).step_by(PREFETCHERS) {
                        // A failure here is met again, and reported, by
                        // the reader that needs the pack.
                        let _ = self.backend.prefetch(name);
                    }
                });
            }
            work()
        })
    }

    /// Reads, unseals, decompresses and re-hashes one chunk.
    pub fn read_chunk(
        &self,
        index: &ChunkIndex,
        id: &Id,
    ) -> std::result::Result<Vec<u8>, ChunkFault> {
        let loc = index.get(id).ok_or(ChunkFault::Missing)?;
        let stored = self.read_stored(&index.pack(loc.pack).id, loc)?;
        self.decode_chunk(stored, id, loc.compressed(), loc.raw_len)
    }

    /// The stored bytes of the chunk at `loc` in pack `pack`, as they are
    /// in the pack (sealed, maybe compressed); a failed read as
    /// [`ChunkFault::of_read_error`] says.
    pub fn read_stored(
        &self,
        pack: &Id,
        loc: &Location,
    ) -> std::result::Result<Vec<u8>, ChunkFault> {
        let pack = Object::Pack(*pack);
        self.backend
            .read_range(&pack.name(), loc.offset as u64, loc.stored_len() as usize)
            .map_err(|e| ChunkFault::of_read_error(self.display(&pack), &e))
    }

    /// Turns a stored chunk back into its raw bytes and checks its id.
    pub fn decode_chunk(
        &self,
        stored: Vec<u8>,
        id: &Id,
        compressed: bool,
        raw_len: u32,
    ) -> std::result::Result<Vec<u8>, ChunkFault> {
        let encoded = self
            .sealer
            .open(stored, &id.0)
            .map_err(ChunkFault::Corrupt)?;
        let raw =
            crate::chunk::decode(encoded, compressed, raw_len).map_err(ChunkFault::Corrupt)?;
        if self.sealer.chunk_id(&raw) != *id {
            return Err(ChunkFault::Corrupt(
                "content does not match its hash".into(),
            ));
        }
        Ok(raw)
    }

    /// Checks a stored chunk against its id without keeping the raw bytes
    /// (verify): no copy of the stored bytes, none of raw chunks.
    pub fn check_chunk(
        &self,
        stored: &[u8],
        id: &Id,
        compressed: bool,
        raw_len: u32,
    ) -> std::result::Result<(), ChunkFault> {
        match &self.sealer {
            Sealer::Plain if !compressed => {
                if stored.len() != raw_len as usize {
                    return Err(ChunkFault::Corrupt(format!(
                        "stored length {} differs from the recorded {raw_len}",
                        stored.len()
                    )));
                }
                if self.sealer.chunk_id(stored) != *id {
                    return Err(ChunkFault::Corrupt(
                        "content does not match its hash".into(),
                    ));
                }
                Ok(())
            }
            _ => self
                .decode_chunk(stored.to_vec(), id, compressed, raw_len)
                .map(|_| ()),
        }
    }

    /// Deletes a pack. Only under the exclusive lock.
    pub fn delete_pack(&self, lock: &ExclusiveLock, id: &Id) -> Result<()> {
        lock.still_held()?;
        let name = Object::Pack(*id).name();
        self.backend
            .delete(&name)
            .ctx("delete", self.object_path(&name))?;
        if let Some(cache) = &self.cache {
            cache.forget(&format!("packidx/{name}"));
        }
        Ok(())
    }

    // ---- quarantine -------------------------------------------------------
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::cache::ObjectCache;
    use std::sync::Arc;

    /// A store with one pack, and a cache as a remote store has.
    fn store_with_a_pack(dir: &std::path::Path) -> (Store, backend::ListEntry) {
        let address = crate::store::location::StoreAddress::local(dir.join("store"));
        let mut store = Store::init(&address, &Default::default()).unwrap();
        store.cache = Some(Arc::new(ObjectCache::new(dir.join("cache"))));
        let mut index = ChunkIndex::new();
        let mut packer = super::super::packer::Packer::new(&store);
        for data in [&b"first chunk"[..], b"second chunk"] {
            let id = store.sealer.chunk_id(data);
            packer
                .add(&mut index, id, data, data.len() as u32, false)
                .unwrap();
        }
        packer.flush(&mut index).unwrap();
        drop(packer);
        let pack = store.list_packs().unwrap().remove(0);
        (store, pack)
    }

    #[test]
    fn a_cached_pack_index_that_does_not_match_its_trailer_is_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let (store, pack) = store_with_a_pack(dir.path());
        let object = Object::Listed(pack.name.clone());
        let good = store.read_pack_index(&object, pack.size).unwrap();
        let key = format!("packidx/{}", pack.name);
        let cache = store.cache.as_ref().unwrap();
        let tail = cache.get(&key).expect("the index is cached");
        // The same trailer over other index bytes of the same length (an
        // index read that came back wrong): intact as a cache entry, but
        // not the pack's index.
        let mut poisoned = tail.clone();
        poisoned[0] ^= 0xff;
        cache.put(&key, &poisoned);
        let again = store.read_pack_index(&object, pack.size);
        assert_eq!(again.as_ref().map(Vec::len), Ok(good.len()), "{again:?}");
        assert_eq!(cache.get(&key), Some(tail), "the entry is replaced");
    }
}
