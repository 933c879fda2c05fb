//! A file's list tree built while its chunks are stored (design §2.1), by
//! `create` and by a copy that rebuilds trees: the ids go into the
//! `ListBuilder` batch by batch and are never collected whole, and the new
//! list blobs are stored between batches, so memory does not grow with a
//! file's chunk count (a 4 GiB file has a million ids: 32 MB as a vector,
//! as much again as list blobs).
//!
//! The builder reads the old tree through the chunk index while the
//! packer adds published packs to it: both borrow it from one `RefCell`,
//! in turn, on one thread.

use std::cell::RefCell;

use crate::error::{Error, Result};
use crate::id::{Id, IdSet};
use crate::store::index::ChunkIndex;
use crate::store::lists::{BlobSink, BlobSource};
use crate::store::packer::Packer;
use crate::store::Store;

/// The store's list blobs, read through the shared chunk index.
pub struct SharedBlobs<'a> {
    pub store: &'a Store,
    pub index: &'a RefCell<ChunkIndex>,
}

impl BlobSource for SharedBlobs<'_> {
    fn get(&self, id: &Id) -> Result<Vec<u8>> {
        self.store.list_blobs(&*index_ref(self.index)?).get(id)
    }
}

/// New list blobs waiting to be stored (each once).
#[derive(Default)]
pub struct Waiting {
    blobs: Vec<(Id, Vec<u8>)>,
    seen: IdSet,
}

/// The builder's sink: blobs wait in [`Waiting`] until [`store_waiting`].
pub struct WaitingSink<'a>(pub &'a RefCell<Waiting>);

impl BlobSink for WaitingSink<'_> {
    fn put(&mut self, id: Id, bytes: Vec<u8>) -> Result<()> {
        let mut waiting = self.0.try_borrow_mut().map_err(|_| busy())?;
        if waiting.seen.insert(id) {
            waiting.blobs.push((id, bytes));
        }
        Ok(())
    }
}

/// Hands the waiting list blobs to the packer; returns how many were new
/// to the store.
pub fn store_waiting(
    packer: &mut Packer,
    index: &RefCell<ChunkIndex>,
    waiting: &RefCell<Waiting>,
) -> Result<u64> {
    let blobs = std::mem::take(&mut waiting.try_borrow_mut().map_err(|_| busy())?.blobs);
    let mut index = index_mut(index)?;
    let mut new = 0;
    for (id, bytes) in blobs {
        if packer.add_list_blob(&mut index, id, &bytes)? {
            new += 1;
        }
    }
    Ok(new)
}

/// `index` borrowed for writing (the packer's turn).
pub fn index_mut(index: &RefCell<ChunkIndex>) -> Result<std::cell::RefMut<'_, ChunkIndex>> {
    index.try_borrow_mut().map_err(|_| busy())
}

/// `index` borrowed for reading.
pub fn index_ref(index: &RefCell<ChunkIndex>) -> Result<std::cell::Ref<'_, ChunkIndex>> {
    index.try_borrow().map_err(|_| busy())
}

/// The index or the waiting blobs borrowed twice: a bug, reported rather
/// than a panic.
pub fn busy() -> Error {
    Error::Encode {
        detail: "the chunk index was borrowed twice while a list was built".into(),
    }
}
