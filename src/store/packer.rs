//! Where objects are written: the packer groups new stored chunks (and
//! list blobs, [`Packer::add_list`]) into packs of the configured target
//! size, publishes each pack once it is durable, and records its chunks
//! in the index. Chunks waiting in the open
//! pack are tracked so the same chunk is never stored twice in one run.

use crate::chunk::Strategy;
use crate::error::{Error, IoContext, Result};
use crate::id::{Id, IdSet};
use crate::store::index::ChunkIndex;
use crate::store::lists::{BlobSink, BuildStats, LeafCut, ListBuilder, ListRef};
use crate::store::pack::{self, PackWriter};
use crate::store::{Object, Store};

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

/// What [`Packer::add_list`] made.
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

pub struct Packer<'s> {
    store: &'s Store,
    open: Option<PackWriter>,
    pending: IdSet,
    /// Packs published by this packer and their sizes.
    pub packs_written: Vec<(Id, u64)>,
}

impl<'s> Packer<'s> {
    pub fn new(store: &'s Store) -> Packer<'s> {
        Packer {
            store,
            open: None,
            pending: IdSet::default(),
            packs_written: Vec::new(),
        }
    }

    /// True when the chunk is already stored or waiting in the open pack.
    pub fn has(&self, index: &ChunkIndex, id: &Id) -> bool {
        index.contains(id) || self.pending.contains(id)
    }

    /// Adds a stored (encoded and sealed) chunk. Returns false when the
    /// chunk was already present and nothing was written.
    pub fn add(
        &mut self,
        index: &mut ChunkIndex,
        id: Id,
        stored: &[u8],
        raw_len: u32,
        compressed: bool,
    ) -> Result<bool> {
        if self.has(index, &id) {
            return Ok(false);
        }
        let writer = match &mut self.open {
            Some(w) => w,
            slot @ None => {
                let path = self.store.temp_path("pack")?;
                slot.insert(PackWriter::create(&path).ctx("create", &path)?)
            }
        };
        writer
            .add(id, stored, raw_len, compressed)
            .ctx("write", writer.path())?;
        self.pending.insert(id);
        if writer.len() >= self.store.config().pack.target_size {
            self.flush(index)?;
        }
        Ok(true)
    }

    /// Closes the open pack (if any), makes it durable and publishes it.
    pub fn flush(&mut self, index: &mut ChunkIndex) -> Result<()> {
        let Some(writer) = self.open.take() else {
            return Ok(());
        };
        let tmp_path = writer.path().to_path_buf();
        let sealer = self.store.sealer().clone();
        let finished = match writer.finish(|b| sealer.seal(b, pack::INDEX_AD)) {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp_path);
                return Err(Error::io("write", &tmp_path, e));
            }
        };
        let name = Object::Pack(finished.id).name();
        self.store
            .backend()
            .put_file(&name, &finished.path)
            .ctx("publish pack", self.store.object_path(&name))?;
        index.add_pack(finished.id, finished.size, &finished.entries);
        for e in &finished.entries {
            self.pending.remove(&e.id);
        }
        self.packs_written.push((finished.id, finished.size));
        Ok(())
    }

    /// Builds the list tree of `ids` (a file chunked by `strategy`) into
    /// new list blobs, against an old tree of the same path: unchanged
    /// leaves are reused and changed fixed-block leaves become deltas.
    /// `olds` are tried in order (the previous snapshot's tree, then an
    /// older one) until one reads whole: so a rebuild whose previous tree
    /// lost a blob can rebuild that snapshot's own blobs against the tree
    /// it was built against, and heal it. List blobs are stored as chunk
    /// entries, sealed with their id as AD and never compressed (ids do
    /// not compress).
    pub fn add_list(
        &mut self,
        index: &mut ChunkIndex,
        strategy: &Strategy,
        ids: &[Id],
        olds: &[ListRef],
    ) -> Result<BuiltList> {
        let store = self.store;
        let params = store.list_params();
        let sealer = store.sealer().clone();
        let id_of = move |b: &[u8]| sealer.chunk_id(b);
        let mut tries = olds.iter().map(Some).collect::<Vec<_>>();
        if tries.is_empty() {
            tries.push(None);
        }
        let mut first_fault = None;
        for (n, old) in tries.iter().enumerate() {
            let mut pending = Pending::default();
            let built = {
                let blobs = store.list_blobs(index);
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
            if built.old_fault.is_some() && n + 1 < tries.len() {
                first_fault = first_fault.or(built.old_fault);
                continue;
            }
            let mut blobs_new = 0;
            for (id, bytes) in pending.blobs {
                let raw_len = bytes.len() as u32;
                let stored = store.sealer().seal(bytes, &id.0);
                if self.add(index, id, &stored, raw_len, false)? {
                    blobs_new += 1;
                }
            }
            return Ok(BuiltList {
                list: built.list,
                stats: built.stats,
                blobs_new,
                old_fault: first_fault.or(built.old_fault),
            });
        }
        Err(Error::Encode {
            detail: "no list was built".into(),
        })
    }

    pub fn bytes_written(&self) -> u64 {
        self.packs_written.iter().map(|(_, s)| s).sum()
    }
}

impl Drop for Packer<'_> {
    fn drop(&mut self) {
        // An unfinished pack (error path) is removed; nothing references it.
        if let Some(w) = self.open.take() {
            let _ = std::fs::remove_file(w.path());
        }
    }
}
