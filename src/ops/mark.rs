//! The mark of verify, gc and stats (`docs/design/format2.md` §2.3, §2.5):
//! what the trees of some manifests reach goes into an external sort
//! ([`SpillSorter`]) instead of a hash set of every chunk, and comes back
//! as one sorted, deduplicated stream that the callers join with the
//! chunk index. Each distinct list-blob subtree is walked once (a set of
//! the visited list-blob ids: about one id per thousand chunks). Verify's
//! mark numbers them ([`Numbered`]) and carries each chunk's leaf number
//! through the sort ([`InLeaf`]) to check the files' sizes at its join.
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
use crate::store::lists::numbered::UNNUMBERED;
#[cfg(doc)]
use crate::store::lists::Numbered;
use crate::store::lists::{Reached, Walked};
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

/// What verify's mark sorts: a reached id, the number of the leaf listing
/// it ([`NO_LEAF`] for a list blob) and how many of that leaf's slots do.
/// Sorted by id, then leaf: the join with the index meets each id's items
/// together, adds `raw_len x count` to each leaf's total there, and the
/// totals are summed up the trees ([`Numbered::totals`]). 40 bytes, 8
/// more than an id; the items of one id and leaf become one (their counts
/// added), so a run of zero pages is one item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InLeaf {
    pub id: Id,
    pub leaf: u32,
    pub count: u32,
}

/// The leaf of a list blob's item (no leaf lists it).
pub const NO_LEAF: u32 = UNNUMBERED;

impl Spillable for InLeaf {
    const LEN: usize = 40;
    type Key = (Id, u32);
    /// The counts of a key add up in any order.
    const ANY_FIRST: bool = true;

    fn key(&self) -> (Id, u32) {
        (self.id, self.leaf)
    }

    fn encode(&self, out: &mut [u8]) {
        out[..32].copy_from_slice(&self.id.0);
        out[32..36].copy_from_slice(&self.leaf.to_le_bytes());
        out[36..40].copy_from_slice(&self.count.to_le_bytes());
    }

    fn decode(b: &[u8]) -> InLeaf {
        let word = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        InLeaf {
            id: Id::decode(&b[..32]),
            leaf: word(32),
            count: word(36),
        }
    }

    fn absorb(&mut self, later: &InLeaf) {
        self.count = self.count.saturating_add(later.count);
    }
}

/// Any reached id with its leaf: what verify marks.
pub fn in_leaf(r: Reached, leaf: u32) -> Option<InLeaf> {
    Some(match r {
        Reached::Blob(id) => InLeaf {
            id,
            leaf: NO_LEAF,
            count: 0,
        },
        Reached::Chunk(id) => InLeaf { id, leaf, count: 1 },
    })
}

/// The sorted, deduplicated stream a [`Mark`] gives back.
pub type Marked<T> = Merged<T>;

/// Walks trees into a sort: what each reached blob or chunk becomes (if
/// anything) is the caller's choice. `W` is what the mark keeps of the
/// nodes walked: their ids ([`Mark::new`]: gc, stats), or their ids
/// numbered ([`Numbered`]: verify, which sums files' sizes up the trees).
pub struct Mark<'a, T: Spillable, W: Walked = IdSet> {
    store: &'a Store,
    index: &'a ChunkIndex,
    walked: W,
    sorter: SpillSorter<T>,
    /// The last item made, not yet sorted: the next one of the same key
    /// is absorbed into it (a run of zero pages is one item).
    pending: Option<T>,
    /// The first error of the sort (a run that could not be written):
    /// the walk cannot return it, [`Mark::finish`] does.
    failed: Option<Error>,
}

impl<'a, T: Spillable> Mark<'a, T> {
    pub fn new(store: &'a Store, index: &'a ChunkIndex, spill: &SpillDir) -> Mark<'a, T> {
        Mark::with(store, index, spill, IdSet::default())
    }

    /// Forgets the subtrees walked so far: the next trees are walked whole
    /// (stats counts each snapshot's own chunks).
    pub fn forget_walked(&mut self) {
        self.walked.clear();
    }

    /// Walks `f`'s list (each subtree not walked before), sorting what
    /// `item` makes of each reached id. The error is the walk's: a list
    /// blob missing or damaged (what was reached before it is sorted). A
    /// failure of the sort itself is [`Mark::finish`]'s error.
    pub fn file(&mut self, f: &FileEntry, item: impl Fn(Reached) -> Option<T>) -> Result<()> {
        self.file_in(f, |r, _| item(r)).map(drop)
    }
}

impl<'a, T: Spillable, W: Walked> Mark<'a, T, W> {
    /// A mark keeping `walked` of the nodes it walks.
    pub fn with(store: &'a Store, index: &'a ChunkIndex, spill: &SpillDir, walked: W) -> Self {
        Mark {
            store,
            index,
            walked,
            sorter: spill.sorter(),
            pending: None,
            failed: None,
        }
    }

    /// [`Mark::file`], `item` told each chunk's leaf number too; a
    /// format-1 list's own number ([`Store::file_reach_in`]).
    pub fn file_in(
        &mut self,
        f: &FileEntry,
        item: impl Fn(Reached, u32) -> Option<T>,
    ) -> Result<Option<u32>> {
        let (sorter, pending, failed) = (&mut self.sorter, &mut self.pending, &mut self.failed);
        self.store
            .file_reach_in(self.index, f, &mut self.walked, &mut |r, leaf| {
                if failed.is_some() {
                    return;
                }
                let Some(t) = item(r, leaf) else { return };
                if let Some(p) = pending.as_mut().filter(|p| p.key() == t.key()) {
                    p.absorb(&t);
                    return;
                }
                if let Some(p) = pending.replace(t) {
                    if let Err(e) = sorter.push(p) {
                        *failed = Some(e.into());
                    }
                }
            })
    }

    /// What the mark kept of the nodes walked.
    pub fn walked(&self) -> &W {
        &self.walked
    }

    /// Runs spilled so far (tests check that a tiny budget spills).
    pub fn runs(&self) -> usize {
        self.sorter.runs()
    }

    /// Everything sorted, each key once.
    pub fn finish(self) -> Result<Marked<T>> {
        Ok(self.finish_walked()?.0)
    }

    /// [`Mark::finish`], with what the mark kept of the nodes walked.
    pub fn finish_walked(mut self) -> Result<(Marked<T>, W)> {
        if let Some(p) = self.pending.take() {
            if let Err(e) = self.sorter.push(p) {
                self.failed.get_or_insert(e.into());
            }
        }
        if let Some(e) = self.failed {
            return Err(e);
        }
        Ok((self.sorter.finish()?, self.walked))
    }
}

/// Any reached id (list blobs and chunks): what gc marks.
pub fn any_id(r: Reached) -> Option<Id> {
    let (Reached::Blob(id) | Reached::Chunk(id)) = r;
    Some(id)
}
