//! Files' chunk lists against the store: the one reader every command
//! uses ([`Store::file_chunks`]) and the writer `create` and `copy` use
//! ([`Store::build_list`]).
//!
//! A format-2 file holds the root of a list tree ([`ChunkList::Tree`]); its
//! list blobs are ordinary blobs in the packs, named by `Sealer::chunk_id`
//! and sealed like chunks (never compressed: ids do not compress), so a
//! blob read back is re-hashed like any chunk. A missing or damaged list
//! blob is `chunk_missing` / `chunk_corrupt` naming it, as a chunk would
//! be. A format-1 file holds its ids inline ([`ChunkList::Ids`]).

use crate::chunk::Strategy;
use crate::error::{Error, Result};
use crate::id::{Id, IdSet};

use super::index::ChunkIndex;
use super::lists::{self, BlobSink, BlobSource, BuildStats, LeafCut, ListIter, ListParams};
use super::lists::{ListBuilder, ListRef, Reached};
use super::manifest::{ChunkList, FileEntry};
use super::packer::Packer;
use super::packs::ChunkFault;
use super::Store;

/// List blobs read from the store's packs through `index`.
#[derive(Clone, Copy)]
pub struct StoreBlobs<'s> {
    store: &'s Store,
    index: &'s ChunkIndex,
}

impl BlobSource for StoreBlobs<'_> {
    fn get(&self, id: &Id) -> Result<Vec<u8>> {
        self.store
            .read_chunk(self.index, id)
            .map_err(|f| fault_error(id, f))
    }
}

/// The error for a blob that could not be read: the chunk codes.
pub fn fault_error(id: &Id, fault: ChunkFault) -> Error {
    match fault {
        ChunkFault::Missing => Error::ChunkMissing { hash: id.to_hex() },
        ChunkFault::Corrupt(detail) => Error::ChunkCorrupt {
            hash: id.to_hex(),
            detail: format!("list blob: {detail}"),
        },
    }
}

/// The blob an error names and what is wrong with it, when it is a
/// blob's fault (`chunk_missing` / `chunk_corrupt`): how validate and
/// verify report a list blob like a chunk.
pub fn error_fault(e: &Error) -> Option<(Id, ChunkFault)> {
    let (hash, fault) = match e {
        Error::ChunkMissing { hash } => (hash, ChunkFault::Missing),
        Error::ChunkCorrupt { hash, detail } => (hash, ChunkFault::Corrupt(detail.clone())),
        _ => return None,
    };
    Some((Id::from_hex(hash)?, fault))
}

/// A file's chunk ids in file order. An error (a list blob missing or
/// damaged) is yielded once and ends the iteration.
pub enum FileChunks<'s> {
    Ids(std::slice::Iter<'s, Id>),
    Tree(ListIter<'s>),
}

impl Iterator for FileChunks<'_> {
    type Item = Result<Id>;

    fn next(&mut self) -> Option<Result<Id>> {
        match self {
            FileChunks::Ids(it) => it.next().map(|id| Ok(*id)),
            FileChunks::Tree(it) => it.next(),
        }
    }
}

/// New list blobs of one build, held until the build ends: the builder
/// reads the old tree through the index while it writes, and the packer
/// needs the index mutably. A file's new blobs are a few KiB on a day
/// (deltas), its whole list (32 B a chunk) on its first snapshot.
#[derive(Default)]
struct Pending {
    blobs: Vec<(Id, Vec<u8>)>,
    seen: IdSet,
}

impl BlobSink for Pending {
    fn put(&mut self, id: Id, bytes: Vec<u8>) -> Result<()> {
        if self.seen.insert(id) {
            self.blobs.push((id, bytes));
        }
        Ok(())
    }
}

/// What [`Store::build_list`] made.
#[derive(Debug)]
pub struct BuiltList {
    pub list: ListRef,
    pub stats: BuildStats,
    /// List blobs the store did not hold and that were written.
    pub blobs_new: u64,
    /// The previous version's tree could not be read (the new one is
    /// complete without it): for a warning.
    pub old_fault: Option<Error>,
}

impl Store {
    /// The list-tree parameters: the config's (format 2), or the defaults
    /// for a format-1 store, which holds no tree.
    pub fn list_params(&self) -> ListParams {
        self.config().list_params().copied().unwrap_or_default()
    }

    /// List blobs of this store, read through `index`.
    pub fn list_blobs<'s>(&'s self, index: &'s ChunkIndex) -> StoreBlobs<'s> {
        StoreBlobs { store: self, index }
    }

    /// The chunk ids of `f`, in file order, streamed: a tree is read one
    /// node per level and one leaf at a time.
    pub fn file_chunks<'s>(
        &'s self,
        index: &'s ChunkIndex,
        f: &'s FileEntry,
    ) -> Result<FileChunks<'s>> {
        Ok(match &f.list {
            ChunkList::Ids(ids) => FileChunks::Ids(ids.iter()),
            ChunkList::Tree(r) => FileChunks::Tree(ListIter::new(
                self.list_blobs(index),
                &self.list_params(),
                r,
            )?),
        })
    }

    /// Every chunk id of `f` in a vector, for the few callers that need
    /// them at once (a 4 GiB file has a million: prefer
    /// [`Store::file_chunks`]).
    pub fn file_chunk_ids(&self, index: &ChunkIndex, f: &FileEntry) -> Result<Vec<Id>> {
        if let ChunkList::Ids(ids) = &f.list {
            return Ok(ids.clone());
        }
        self.file_chunks(index, f)?.collect()
    }

    /// Tells `visit` every list blob `f`'s tree reaches (delta chains
    /// included: they are live while a tree reaches their top) and every
    /// chunk it lists. Trees share `seen`: a subtree met before is not
    /// read again (gc and verify walk every snapshot so).
    pub fn file_reach(
        &self,
        index: &ChunkIndex,
        f: &FileEntry,
        seen: &mut IdSet,
        visit: &mut dyn FnMut(Reached),
    ) -> Result<()> {
        match &f.list {
            ChunkList::Ids(ids) => {
                ids.iter().for_each(|id| visit(Reached::Chunk(*id)));
                Ok(())
            }
            ChunkList::Tree(r) => {
                lists::reach(&self.list_blobs(index), &self.list_params(), r, seen, visit)
            }
        }
    }

    /// Builds the list tree of `ids` (a file chunked by `strategy`) into
    /// new list blobs through `packer`, against `old` (the previous
    /// version's tree of the same path): unchanged leaves are reused and
    /// changed fixed-block leaves become deltas.
    pub fn build_list(
        &self,
        index: &mut ChunkIndex,
        packer: &mut Packer<'_>,
        strategy: &Strategy,
        ids: &[Id],
        old: Option<&ListRef>,
    ) -> Result<BuiltList> {
        let params = self.list_params();
        let sealer = self.sealer().clone();
        let id_of = move |b: &[u8]| sealer.chunk_id(b);
        let mut pending = Pending::default();
        let built = {
            let blobs = self.list_blobs(index);
            let mut builder = ListBuilder::new(
                &params,
                LeafCut::for_strategy(strategy, &params),
                &id_of,
                &mut pending,
            )?;
            if let Some(old) = old {
                builder = builder.with_old(&blobs, old);
            }
            for id in ids {
                builder.push(*id)?;
            }
            builder.finish()?
        };
        let mut blobs_new = 0;
        for (id, bytes) in pending.blobs {
            let raw_len = bytes.len() as u32;
            let stored = self.sealer().seal(bytes, &id.0);
            if packer.add(index, id, &stored, raw_len, false)? {
                blobs_new += 1;
            }
        }
        Ok(BuiltList {
            list: built.list,
            stats: built.stats,
            blobs_new,
            old_fault: built.old_fault,
        })
    }
}
