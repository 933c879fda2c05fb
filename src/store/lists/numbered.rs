//! The distinct nodes of the list trees a walk met, numbered, with each
//! interior node's children by number: what `verify` adds its files'
//! sizes up over. Its mark carries each chunk's leaf number through the
//! sort it joins with the chunk index, sums raw lengths per leaf there,
//! and [`Numbered::totals`] then sums each distinct node once, children
//! before parents, however many trees and snapshots share it.
//!
//! Memory: per distinct node its id and number (a map like the walk's
//! set of ids, 4 bytes more), where its children end (8 bytes) and one
//! number per child (4 bytes); about one node per thousand chunks.

use std::collections::hash_map::Entry;

use crate::id::{Id, IdMap};

use super::read::Walked;

/// The number of a node that has no total: its walk failed (or is under
/// way), or numbers ran out. Never a valid number.
pub const UNNUMBERED: u32 = u32::MAX;

/// A total that is not known: a node under it did not read, or a chunk
/// of it is not in the index. Real totals stop one below (saturating).
pub const UNKNOWN: u64 = u64::MAX;

/// Numbers in the order the nodes' walks end: a leaf when it has been
/// resolved, an interior node when its last child is done, so every child
/// has a smaller number than its parent (one met before, all the more).
#[derive(Default)]
pub struct Numbered {
    /// Every node entered: its number, or [`UNNUMBERED`].
    nodes: IdMap<u32>,
    /// Per number: where its children end in `children` (they start where
    /// the previous number's end).
    ends: Vec<usize>,
    children: Vec<u32>,
}

impl Numbered {
    /// The number of node `id`, walked whole.
    pub fn number(&self, id: &Id) -> Option<u32> {
        self.nodes.get(id).copied().filter(|&n| n != UNNUMBERED)
    }

    /// How many numbers were given (leaves, interior nodes, flat lists).
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The next number, its children (already pushed) ending here;
    /// [`UNNUMBERED`] past `u32::MAX - 1` nodes.
    fn next(&mut self) -> u32 {
        match u32::try_from(self.ends.len()) {
            Ok(n) if n != UNNUMBERED => {
                self.ends.push(self.children.len());
                n
            }
            _ => UNNUMBERED,
        }
    }

    /// Every number's total: a leaf's is `leaf_bytes` at its number (what
    /// the join added up for it), an interior node's the sum of its
    /// children's; [`UNKNOWN`] when any part is. `leaf_bytes` is taken
    /// as the totals (one pass, in number order).
    pub fn totals(&self, mut leaf_bytes: Vec<u64>) -> Vec<u64> {
        leaf_bytes.resize(self.len(), 0);
        let mut start = 0;
        for (n, &end) in self.ends.iter().enumerate() {
            let kids = self.children.get(start..end).unwrap_or_default();
            start = end;
            if kids.is_empty() {
                continue;
            }
            let mut total = 0u64;
            for &k in kids {
                // Children are numbered first: anything else is no total.
                let part = match (k as usize) < n {
                    true => leaf_bytes[k as usize],
                    false => UNKNOWN,
                };
                total = add(total, part);
            }
            leaf_bytes[n] = total;
        }
        leaf_bytes
    }
}

/// `a + b`, [`UNKNOWN`] when either is, saturating one below it.
pub fn add(a: u64, b: u64) -> u64 {
    if a == UNKNOWN || b == UNKNOWN {
        return UNKNOWN;
    }
    a.saturating_add(b).min(UNKNOWN - 1)
}

impl Walked for Numbered {
    fn enter(&mut self, id: Id) -> bool {
        match self.nodes.entry(id) {
            Entry::Vacant(v) => {
                v.insert(UNNUMBERED);
                true
            }
            Entry::Occupied(_) => false,
        }
    }

    fn leaf(&mut self, id: Id) -> u32 {
        let n = self.next();
        self.nodes.insert(id, n);
        n
    }

    fn interior(&mut self, id: Id, children: &[(Id, u64)]) {
        for (child, _) in children {
            let k = self.nodes.get(child).copied().unwrap_or(UNNUMBERED);
            self.children.push(k);
        }
        let n = self.next();
        if n == UNNUMBERED {
            self.children
                .truncate(self.ends.last().copied().unwrap_or(0));
        }
        self.nodes.insert(id, n);
    }

    fn flat(&mut self) -> u32 {
        self.next()
    }
}
