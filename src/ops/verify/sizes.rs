//! verify's size check: every file's recorded size against the raw
//! lengths of its chunks, as `validate` and `restore` require, at no
//! lookup of its own. The mark numbers the distinct list-tree nodes it
//! walks ([`Numbered`]) and carries each chunk's leaf number through the
//! sort verify joins with the chunk index ([`crate::ops::mark::InLeaf`]);
//! the join adds each chunk's raw length, times its slots, to its leaf's
//! total; [`Numbered::totals`] sums the leaves up the trees, each distinct
//! node once. This module keeps what the files claim until then and
//! names the files whose claim is wrong.
//!
//! Memory: one entry per distinct (root, recorded size) pair, not per
//! file and snapshot (a series of unchanged snapshots claims the same
//! pairs), plus the numbers of format-1 flat lists, each its own leaf.

use std::collections::{BTreeMap, HashSet};

use crate::error::Result;
use crate::stamp::Stamp;
use crate::store::lists::numbered::UNKNOWN;
use crate::store::lists::Numbered;
use crate::store::manifest::{ChunkList, FileEntry};
use crate::store::{ReadFrom, Store};

use super::report::SizeMismatch;

/// What a file's list adds up to, by the walk.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Root {
    /// An empty tree: no chunks, 0 bytes.
    Empty,
    /// The node (or flat list) of this number.
    Node(u32),
    /// A tree whose root was not walked whole (its damage is reported as
    /// a list blob's): no total.
    Unknown,
}

/// The files' claims, gathered while the mark walks the snapshots.
#[derive(Default)]
pub(super) struct Sizes {
    /// Each distinct (root, recorded size) pair of a file walked whole.
    claims: HashSet<(Root, u64)>,
    /// Per snapshot walked (in order), the numbers of its format-1 files'
    /// flat lists by entry (its place in the manifest): they have no id
    /// to find them by.
    flat: Vec<Vec<(usize, u32)>>,
}

impl Sizes {
    /// The mark starts on the next snapshot's files.
    pub fn snapshot(&mut self) {
        self.flat.push(Vec::new());
    }

    /// File `f`, entry `at` of the current snapshot, was walked whole
    /// (`flat`: its flat list's number, for a format-1 file).
    pub fn walked(&mut self, walked: &Numbered, at: usize, f: &FileEntry, flat: Option<u32>) {
        if let (Some(n), Some(numbers)) = (flat, self.flat.last_mut()) {
            numbers.push((at, n));
        }
        let root = root(walked, f, flat);
        if root != Root::Unknown {
            self.claims.insert((root, f.size));
        }
    }

    /// The files whose recorded size their chunks do not hold, per
    /// snapshot (`stamps`: the snapshots walked, in order), given the
    /// leaves' totals from the join. The manifests are read again only
    /// when some claim is wrong, for the files' paths.
    pub fn check(
        self,
        store: &Store,
        walked: &Numbered,
        leaf_bytes: Vec<u64>,
        stamps: &[Stamp],
    ) -> Result<BTreeMap<String, Vec<SizeMismatch>>> {
        let totals = walked.totals(leaf_bytes);
        let holds = |root: Root| match root {
            Root::Empty => Some(0),
            Root::Node(n) => totals.get(n as usize).copied().filter(|&t| t != UNKNOWN),
            Root::Unknown => None,
        };
        let wrong = |root: Root, size: u64| holds(root).filter(|&b| b != size);
        let mut out = BTreeMap::new();
        if !self
            .claims
            .iter()
            .any(|&(root, size)| wrong(root, size).is_some())
        {
            return Ok(out);
        }
        for (stamp, flat) in stamps.iter().zip(&self.flat) {
            // The manifest the mark walked: the store's own.
            let m = store.read_manifest(stamp, ReadFrom::Store)?;
            let mut found = Vec::new();
            for (at, e) in m.entries.iter().enumerate() {
                let Some(f) = e.file() else { continue };
                // Pushed in entry order.
                let n = flat
                    .binary_search_by_key(&at, |&(a, _)| a)
                    .ok()
                    .map(|i| flat[i].1);
                let root = root(walked, f, n);
                if let Some(chunks_hold) = wrong(root, f.size) {
                    found.push(SizeMismatch {
                        path: e.path_lossy(),
                        recorded: f.size,
                        chunks_hold,
                    });
                }
            }
            if !found.is_empty() {
                out.insert(stamp.to_string(), found);
            }
        }
        Ok(out)
    }
}

/// Where `f`'s total is to be found once the trees are summed.
fn root(walked: &Numbered, f: &FileEntry, flat: Option<u32>) -> Root {
    match &f.list {
        ChunkList::Ids(_) => flat.map_or(Root::Unknown, Root::Node),
        ChunkList::Tree(r) => match r.root {
            None => Root::Empty,
            Some(id) => walked.number(&id).map_or(Root::Unknown, Root::Node),
        },
    }
}
