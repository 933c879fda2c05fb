//! The mark of verify, gc and stats (`docs/design/format2.md` §2.3, §2.5):
//! what the trees of some manifests reach goes into an external sort
//! ([`SpillSorter`]) instead of a hash set of every chunk, and comes back
//! as one sorted, deduplicated stream that the callers join with the
//! chunk index. Each distinct list-blob subtree is walked once (a set of
//! the visited list-blob ids: about one id per thousand chunks).
//!
//! Memory: the sort's budget ([`SORT_BUDGET`]) plus a 64 KiB buffer per
//! run while merging; the runs go to the store's `tmp/` (a local store)
//! or to a private temp dir, and are removed when the stream is dropped.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::id::{Id, IdSet};
use crate::store::chunk_index::spill::Merged;
use crate::store::chunk_index::{SpillSorter, Spillable};
use crate::store::index::{ChunkIndex, Location};
use crate::store::lists::Reached;
use crate::store::manifest::FileEntry;
use crate::store::Store;

/// Bytes the sort keeps in RAM before it writes a run.
pub const SORT_BUDGET: usize = 8 << 20;

/// Tuning (and test) knob: the sort's budget in bytes. A tiny budget
/// makes the mark spill many runs; the results must not change.
pub const SORT_BUDGET_ENV: &str = "ATOSNAP_SORT_BUDGET_BYTES";

thread_local! {
    static BUDGET: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Runs `work` with the sorts this thread makes held to `budget` bytes:
/// the in-process form of [`SORT_BUDGET_ENV`], for tests.
pub fn with_sort_budget<T>(budget: usize, work: impl FnOnce() -> T) -> T {
    let before = BUDGET.with(|b| b.replace(Some(budget)));
    let out = work();
    BUDGET.with(|b| b.set(before));
    out
}

fn sort_budget() -> usize {
    BUDGET.with(|b| b.get()).unwrap_or_else(|| {
        std::env::var(SORT_BUDGET_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(SORT_BUDGET)
    })
}

/// Where a chunk is, by value: the one place the mark's callers ask the
/// chunk index (an on-disk index returns records by value).
pub fn locate(index: &ChunkIndex, id: &Id) -> Result<Option<Location>> {
    index.get(id)
}

/// The folder the sorts of one command spill their runs into: the
/// store's own `tmp/` when it is local and writable (same disk as the
/// data, and a later writer removes a killed command's leftovers), else a
/// private temp dir removed with this value.
pub struct SpillDir {
    path: PathBuf,
    _owned: Option<tempfile::TempDir>,
}

impl SpillDir {
    pub fn for_store(store: &Store) -> Result<SpillDir> {
        if store.local_root().is_some() {
            if let Ok(dir) = store.tmp_dir() {
                // A reader that may not write the store sorts elsewhere.
                if tempfile::tempfile_in(&dir).is_ok() {
                    return Ok(SpillDir {
                        path: dir,
                        _owned: None,
                    });
                }
            }
        }
        let owned = tempfile::Builder::new()
            .prefix("atosnap-sort-")
            .tempdir()
            .map_err(|e| Error::io("create temp dir in", std::env::temp_dir(), e))?;
        Ok(SpillDir {
            path: owned.path().to_path_buf(),
            _owned: Some(owned),
        })
    }

    /// A sorter spilling here, with the command's budget.
    pub fn sorter<T: Spillable>(&self) -> SpillSorter<T> {
        SpillSorter::new(&self.path, sort_budget())
    }
}

impl Spillable for Id {
    const LEN: usize = 32;
    type Key = Id;

    fn key(&self) -> Id {
        *self
    }

    fn encode(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.0);
    }

    fn decode(b: &[u8]) -> Id {
        let mut id = [0u8; 32];
        id.copy_from_slice(b);
        Id(id)
    }
}

/// The sorted, deduplicated stream a [`Mark`] gives back.
pub type Marked<T> = Merged<T>;

/// Walks trees into a sort: what each reached blob or chunk becomes (if
/// anything) is the caller's choice.
pub struct Mark<'a, T: Spillable> {
    store: &'a Store,
    index: &'a ChunkIndex,
    seen: IdSet,
    sorter: SpillSorter<T>,
    /// The first error of the sort (a run that could not be written):
    /// the walk cannot return it, [`Mark::finish`] does.
    failed: Option<Error>,
}

impl<'a, T: Spillable> Mark<'a, T> {
    pub fn new(store: &'a Store, index: &'a ChunkIndex, spill: &SpillDir) -> Mark<'a, T> {
        Mark {
            store,
            index,
            seen: IdSet::default(),
            sorter: spill.sorter(),
            failed: None,
        }
    }

    /// Forgets the subtrees walked so far: the next trees are walked whole
    /// (stats counts each snapshot's own chunks).
    pub fn forget_walked(&mut self) {
        self.seen.clear();
    }

    /// Walks `f`'s list (each subtree not walked before), sorting what
    /// `item` makes of each reached id. The error is the walk's: a list
    /// blob missing or damaged (what was reached before it is sorted). A
    /// failure of the sort itself is [`Mark::finish`]'s error.
    pub fn file(&mut self, f: &FileEntry, item: impl Fn(Reached) -> Option<T>) -> Result<()> {
        let (sorter, failed) = (&mut self.sorter, &mut self.failed);
        self.store
            .file_reach(self.index, f, &mut self.seen, &mut |r| {
                if failed.is_some() {
                    return;
                }
                if let Some(t) = item(r) {
                    if let Err(e) = sorter.push(t) {
                        *failed = Some(e.into());
                    }
                }
            })
    }

    /// Runs spilled so far (tests check that a tiny budget spills).
    pub fn runs(&self) -> usize {
        self.sorter.runs()
    }

    /// Everything sorted, each key once.
    pub fn finish(self) -> Result<Marked<T>> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        Ok(self.sorter.finish()?)
    }
}

/// Any reached id (list blobs and chunks): what verify and gc mark.
pub fn any_id(r: Reached) -> Option<Id> {
    let (Reached::Blob(id) | Reached::Chunk(id)) = r;
    Some(id)
}
