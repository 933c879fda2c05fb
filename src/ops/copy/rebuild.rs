//! A file whose tree is rebuilt at the destination (a re-keying copy, or
//! one from a format-1 store): its chunks sent and renamed, and its new
//! tree built as they go, a window of ids at a time, so memory follows the
//! window, never the file or the run.

use std::cell::RefCell;

use super::Copier;
use crate::chunk;
use crate::error::{Error, Result};
use crate::id::{Id, IdMap};
use crate::store::list_stream::{store_waiting, SharedBlobs, Waiting, WaitingSink};
use crate::store::lists::{LeafCut, ListBuilder, ListRef};
use crate::store::manifest::{ChunkList, FileEntry};

/// Ids of a file whose tree is rebuilt (a re-keying copy, or one from a
/// format-1 store) sent, renamed and added to the new tree at a time: 64 MiB
/// of 4 KiB chunks; the window's id map then holds at most 2 MiB.
const REBUILD_WINDOW: usize = 16_384;

/// [`REBUILD_WINDOW`], or `ATOSNAP_TEST_COPY_WINDOW=<n>` (a test hook: a
/// small runtime's files then span many windows).
fn rebuild_window() -> usize {
    std::env::var("ATOSNAP_TEST_COPY_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(REBUILD_WINDOW)
}

impl Copier<'_> {
    /// Sends what the destination lacks of file `f` and builds its tree
    /// there as the chunks go, [`rebuild_window`] ids at a time: each
    /// window's ids are renamed with their destination ids (those a
    /// `Baseline` knows, the rest as `send` mapped them) and pushed into
    /// the new tree, built against the previously copied snapshot's tree of
    /// the same path; `f` then holds its root. Memory follows the window,
    /// not the file. The inner error is damage at the source.
    pub(super) fn send_rebuilt(
        &mut self,
        path: &[u8],
        f: &mut FileEntry,
    ) -> Result<Result<ListRef>> {
        let (from, from_index, to, index) = (self.from, self.from_index, self.to, self.to_index);
        let params = to.list_params();
        let sealer = to.sealer().clone();
        let id_of = move |b: &[u8]| sealer.chunk_id(b);
        // Only fixed-block or content-defined matters for the leaves.
        let page = f.sqlite.then_some(4096);
        let strategy = chunk::strategy_for(path, page, &to.config().chunking);
        let waiting = RefCell::new(Waiting::default());
        let old_blobs = SharedBlobs { store: to, index };
        let mut sink = WaitingSink(&waiting);
        let cut = LeafCut::for_strategy(&strategy, &params);
        let mut builder = ListBuilder::new(&params, cut, &id_of, &mut sink)?;
        if let Some(old) = self.prev_trees.get(path).copied() {
            builder = builder.with_old(&old_blobs, &old);
        }
        let mut known = self
            .baseline
            .as_ref()
            .and_then(|b| b.cursor(path, (from, from_index), (to, index)));
        let mut ours = match from.file_chunks(from_index, f) {
            Ok(ours) => ours,
            Err(e) => return Ok(Err(e)),
        };
        let size = rebuild_window();
        let mut window = Vec::with_capacity(size);
        loop {
            window.clear();
            for id in ours.by_ref().take(size) {
                match id {
                    Ok(id) => window.push(id),
                    Err(e) => return Ok(Err(e)),
                }
            }
            if window.is_empty() {
                break;
            }
            let named = known.as_mut().map(|k| k.next_window(&window));
            if let Some(ids) = &mut self.ids {
                ids.clear();
            }
            let sent = match &named {
                Some(named) => self.send(&unknown(&window, named))?,
                None => self.send(&window)?,
            };
            if let Err(e) = sent {
                return Ok(Err(e));
            }
            match &self.ids {
                Some(map) => {
                    for id in map_ids(&window, named.as_deref(), map)? {
                        builder.push(id)?;
                    }
                }
                None => window.iter().try_for_each(|id| builder.push(*id))?,
            }
            store_waiting(&mut self.packer, index, &waiting)?;
        }
        drop(ours);
        let built = builder.finish()?;
        store_waiting(&mut self.packer, index, &waiting)?;
        f.list = ChunkList::Tree(built.list);
        Ok(Ok(built.list))
    }
}

/// Renames a window's chunks with their destination ids (each a baseline
/// did not name was mapped by `Copier::send`; a gap would be a bug,
/// refused, never published).
pub(super) fn map_ids(
    ids: &[Id],
    known: Option<&[Option<Id>]>,
    map: &IdMap<Id>,
) -> Result<Vec<Id>> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            known
                .and_then(|k| k.get(i).copied().flatten())
                .or_else(|| map.get(id).copied())
                .ok_or_else(|| Error::CopyIdUnmapped { id: id.to_string() })
        })
        .collect()
}

/// The ids a baseline did not name (what is left to read and re-hash).
pub(super) fn unknown(ids: &[Id], known: &[Option<Id>]) -> Vec<Id> {
    ids.iter()
        .enumerate()
        .filter(|(i, _)| known.get(*i).copied().flatten().is_none())
        .map(|(_, id)| *id)
        .collect()
}
