//! Files' chunk lists against the store: the one reader every command
//! uses ([`Store::file_chunks`]). The writer is `Packer::add_list`.
//!
//! A format-2 file holds the root of a list tree ([`ChunkList::Tree`]); its
//! list blobs are ordinary blobs in the packs, named by `Sealer::chunk_id`
//! and sealed like chunks (never compressed: ids do not compress), so a
//! blob read back is re-hashed like any chunk. A missing or damaged list
//! blob is `chunk_missing` / `chunk_corrupt` naming it, as a chunk would
//! be. A format-1 file holds its ids inline ([`ChunkList::Ids`]).

use crate::error::{Error, Result};
use crate::id::{Id, IdSet};

use super::index::ChunkIndex;
use super::lists::{self, BlobSource, ListIter, ListParams, Reached, Walked};
use super::manifest::{ChunkList, FileEntry};
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

/// The error for a blob that could not be read: the chunk codes (a
/// storage failure stays an I/O error, never damage).
pub fn fault_error(id: &Id, fault: ChunkFault) -> Error {
    match fault {
        ChunkFault::Corrupt(detail) => Error::ChunkCorrupt {
            hash: id.to_hex(),
            detail: format!("list blob: {detail}"),
        },
        other => other.into_error(id),
    }
}

/// The blob an error names and what is wrong with it, when it is a
/// blob's damage (`chunk_missing` / `chunk_corrupt`): how validate and
/// verify report a list blob like a chunk. None for anything else (a
/// storage failure): the command stops with that error.
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
        self.file_reach_in(index, f, seen, &mut |r, _| visit(r))
            .map(drop)
    }

    /// [`Store::file_reach`], keeping what `walked` keeps of the nodes met
    /// ([`lists::reach_in`]): `visit` is told each chunk's leaf number. A
    /// format-1 list is one leaf of its own: its number is returned (None
    /// for a tree, whose nodes' numbers are `walked`'s to say).
    pub fn file_reach_in<W: Walked + ?Sized>(
        &self,
        index: &ChunkIndex,
        f: &FileEntry,
        walked: &mut W,
        visit: &mut dyn FnMut(Reached, u32),
    ) -> Result<Option<u32>> {
        match &f.list {
            ChunkList::Ids(ids) => {
                let n = walked.flat();
                ids.iter().for_each(|id| visit(Reached::Chunk(*id), n));
                Ok(Some(n))
            }
            ChunkList::Tree(r) => {
                let blobs = self.list_blobs(index);
                lists::reach_in(&blobs, &self.list_params(), r, walked, visit)?;
                Ok(None)
            }
        }
    }
}
