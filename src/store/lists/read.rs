//! Reading a list tree back, lazily and in bounded memory: one decoded
//! node per interior level (at most [`MAX_LEVELS`] of them) plus one leaf
//! whose delta chain is resolved blob by blob.
//!
//! - [`ListIter`]: a file's chunk ids in order, from the start or from any
//!   slot (subtrees before it are skipped by their covered counts).
//! - [`OldList`]: the previous version's tree as the builder consults it,
//!   leaf by leaf, forward only.
//!
//! Every node is checked against what its parent says of it (level,
//! chunks covered), so a forged or damaged blob ends the walk with
//! `chunk_corrupt` naming it, never with a loop or a wrong id count.

use super::node::{delta_len, Delta, Node};
use super::{corrupt, BlobSource, ListParams, ListRef, MAX_LEVELS};
use crate::error::Result;
use crate::id::{Id, IdSet};

/// A leaf of a tree, not yet read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafRef {
    pub id: Id,
    /// Its first slot in the file's list.
    pub start: u64,
    pub len: u64,
}

/// A decoded interior node on the walk's stack.
struct Level {
    /// The level of its children (0: leaves).
    child_level: u8,
    children: Vec<(Id, u64)>,
    next: usize,
}

/// The leaves of a tree in order, each interior node read once.
pub struct LeafWalk<'a> {
    source: Box<dyn BlobSource + 'a>,
    params: ListParams,
    stack: Vec<Level>,
    /// The first slot of the next child to be visited.
    pos: u64,
}

impl<'a> LeafWalk<'a> {
    /// A walk over `list`, refusing an inconsistent reference up front.
    pub fn new(source: impl BlobSource + 'a, params: &ListParams, list: &ListRef) -> Result<Self> {
        list.check().map_err(|e| match list.root {
            Some(root) => corrupt(&root, e),
            // No root to name: the all-zero id stands for the reference.
            None => corrupt(&Id([0; 32]), e),
        })?;
        let stack = match list.root {
            Some(root) => vec![Level {
                child_level: list.levels,
                children: vec![(root, list.chunks)],
                next: 0,
            }],
            None => Vec::new(),
        };
        Ok(LeafWalk {
            source: Box::new(source),
            params: *params,
            stack,
            pos: 0,
        })
    }

    /// The first leaf not yet visited that ends after `slot`; the leaves
    /// and subtrees before it are skipped unread.
    pub fn next_leaf_covering(&mut self, slot: u64) -> Result<Option<LeafRef>> {
        loop {
            let Some(top) = self.stack.last_mut() else {
                return Ok(None);
            };
            let Some(&(id, covered)) = top.children.get(top.next) else {
                self.stack.pop();
                continue;
            };
            top.next += 1;
            let start = self.pos;
            // Checked on decode (interior sums) and by `ListRef::check`:
            // the walk's positions never pass the root's count.
            self.pos = start.saturating_add(covered);
            if self.pos <= slot {
                continue;
            }
            if top.child_level == 0 {
                return Ok(Some(LeafRef {
                    id,
                    start,
                    len: covered,
                }));
            }
            let child_level = top.child_level - 1;
            self.pos = start;
            let children = self.read_interior(&id, child_level + 1, covered)?;
            self.stack.push(Level {
                child_level,
                children,
                next: 0,
            });
        }
    }

    /// The next leaf.
    pub fn next_leaf(&mut self) -> Result<Option<LeafRef>> {
        self.next_leaf_covering(self.pos)
    }

    fn read_interior(&self, id: &Id, level: u8, covered: u64) -> Result<Vec<(Id, u64)>> {
        read_interior(&*self.source, &self.params, id, level, covered)
    }
}

/// Interior node `id`, checked against what its parent says of it.
fn read_interior(
    source: &dyn BlobSource,
    params: &ListParams,
    id: &Id,
    level: u8,
    covered: u64,
) -> Result<Vec<(Id, u64)>> {
    {
        if level > MAX_LEVELS {
            return Err(corrupt(id, format!("interior level {level} is too deep")));
        }
        let node = Node::decode(id, &source.get(id)?, params)?;
        match node {
            Node::Interior {
                level: found,
                children,
            } if found == level && node_covered(&children) == covered => Ok(children),
            Node::Interior { level: found, .. } if found != level => Err(corrupt(
                id,
                format!("an interior node of level {found} where level {level} belongs"),
            )),
            Node::Interior { children, .. } => Err(corrupt(
                id,
                format!(
                    "covers {} chunks, its parent says {covered}",
                    node_covered(&children)
                ),
            )),
            _ => Err(corrupt(
                id,
                format!("a leaf where an interior node of level {level} belongs"),
            )),
        }
    }
}

fn node_covered(children: &[(Id, u64)]) -> u64 {
    children.iter().map(|c| c.1).sum()
}

/// A leaf's ids with its chain resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OldLeaf {
    /// The leaf version's id (a FullLeaf or a DeltaLeaf).
    pub id: Id,
    pub start: u64,
    /// The ids it stands for.
    pub ids: Vec<Id>,
    /// Delta hops down to its FullLeaf (0: it is one).
    pub depth: u8,
    /// Bytes of its chain's delta blobs (0 for a FullLeaf).
    pub chain_bytes: u32,
}

/// Reads leaf `leaf` and, for a delta leaf, its chain down to the FullLeaf,
/// newest first: a slot takes the newest patch that names it, and the
/// FullLeaf fills the rest. One blob is held at a time. Each hop must go
/// down exactly one in depth and keep `len`, and `chain_bytes` must add up,
/// so a chain ends within `max_chain` reads whatever the blobs say.
pub fn resolve_leaf(
    source: &dyn BlobSource,
    params: &ListParams,
    leaf: &LeafRef,
) -> Result<OldLeaf> {
    resolve_leaf_with(source, params, leaf, &mut |_| {})
}

/// [`resolve_leaf`], telling `blob` every list blob it reads (the leaf and
/// its whole delta chain: all of them are live while the leaf is).
fn resolve_leaf_with(
    source: &dyn BlobSource,
    params: &ListParams,
    leaf: &LeafRef,
    blob: &mut dyn FnMut(&Id),
) -> Result<OldLeaf> {
    let mut read = |id: &Id| {
        blob(id);
        Node::decode(id, &source.get(id)?, params)
    };
    let d = match read(&leaf.id)? {
        Node::Full(ids) => {
            check_len(&leaf.id, ids.len() as u64, leaf.len)?;
            return Ok(OldLeaf {
                id: leaf.id,
                start: leaf.start,
                ids,
                depth: 0,
                chain_bytes: 0,
            });
        }
        Node::Delta(d) => d,
        Node::Interior { .. } => {
            return Err(corrupt(&leaf.id, "an interior node where a leaf belongs"))
        }
    };
    check_len(&leaf.id, d.len as u64, leaf.len)?;
    let (depth, chain_bytes) = (d.depth, d.chain_bytes);
    let mut ids = vec![None; d.len as usize];
    let (mut cur_id, mut cur) = (leaf.id, d);
    loop {
        for (slot, id) in &cur.patches {
            ids[*slot as usize].get_or_insert(*id);
        }
        match read(&cur.prev)? {
            Node::Full(base) => {
                follows(&cur_id, &cur, base.len() as u32, 0, 0)?;
                let ids = ids
                    .into_iter()
                    .zip(base)
                    .map(|(p, b)| p.unwrap_or(b))
                    .collect();
                return Ok(OldLeaf {
                    id: leaf.id,
                    start: leaf.start,
                    ids,
                    depth,
                    chain_bytes,
                });
            }
            Node::Delta(below) => {
                follows(&cur_id, &cur, below.len, below.depth, below.chain_bytes)?;
                (cur_id, cur) = (cur.prev, below);
            }
            Node::Interior { .. } => {
                return Err(corrupt(
                    &cur_id,
                    format!("it patches interior node {}", cur.prev),
                ))
            }
        }
    }
}

/// Checks that delta `cur` patches a leaf of its length, one hop shallower,
/// whose chain bytes plus its own are its own `chain_bytes`: what keeps a
/// chain finite whatever the blobs say.
fn follows(cur_id: &Id, cur: &Delta, len: u32, depth: u8, bytes: u32) -> Result<()> {
    let own = delta_len(cur.patches.len()) as u32;
    if len == cur.len
        && depth as u16 + 1 == cur.depth as u16
        && bytes.checked_add(own) == Some(cur.chain_bytes)
    {
        return Ok(());
    }
    Err(corrupt(
        cur_id,
        format!(
            "len {}, depth {}, chain_bytes {} do not follow from the leaf it patches, {} (len {len}, depth {depth}, chain_bytes {bytes})",
            cur.len, cur.depth, cur.chain_bytes, cur.prev
        ),
    ))
}

fn check_len(id: &Id, found: u64, want: u64) -> Result<()> {
    if found == want {
        Ok(())
    } else {
        Err(corrupt(
            id,
            format!("a leaf of {found} ids where its parent says {want}"),
        ))
    }
}

/// What [`reach`] meets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reached {
    /// A list blob of the tree (interior node, leaf, or a blob of a delta
    /// leaf's chain).
    Blob(Id),
    /// A chunk the tree lists (once per slot of each leaf read).
    Chunk(Id),
}

/// What a walk keeps of the nodes it has met, so that each distinct node
/// is walked once: their ids ([`IdSet`]: gc, stats, copy), or their ids
/// numbered with each interior node's children ([`Numbered`](super::Numbered): verify,
/// which adds its files' sizes up the trees).
pub trait Walked {
    /// Node `id` is met: true when it was not met before (walk it now).
    fn enter(&mut self, id: Id) -> bool;
    /// Leaf `id` (entered) resolved: the number its chunks carry.
    fn leaf(&mut self, id: Id) -> u32;
    /// Interior node `id` (entered) walked whole, every child in
    /// `children` walked before it returns.
    fn interior(&mut self, id: Id, children: &[(Id, u64)]);
    /// A format-1 flat list: a leaf of its own, with no id.
    fn flat(&mut self) -> u32;
}

impl Walked for IdSet {
    fn enter(&mut self, id: Id) -> bool {
        self.insert(id)
    }
    fn leaf(&mut self, _: Id) -> u32 {
        0
    }
    fn interior(&mut self, _: Id, _: &[(Id, u64)]) {}
    fn flat(&mut self) -> u32 {
        0
    }
}

/// Walks every blob `list` reaches and every chunk it lists, telling
/// `visit`, each node checked as [`ListIter`] checks it. A subtree whose
/// root is in `seen` was walked before (by an earlier file or snapshot
/// sharing `seen`) and is skipped: gc and verify walk many snapshots'
/// trees and read each distinct node once.
pub fn reach(
    source: &dyn BlobSource,
    params: &ListParams,
    list: &ListRef,
    seen: &mut IdSet,
    visit: &mut dyn FnMut(Reached),
) -> Result<()> {
    reach_in(source, params, list, seen, &mut |r, _| visit(r))
}

/// [`reach`], keeping what `walked` keeps of the nodes met, and telling
/// `visit` with each chunk the number `walked` gave its leaf.
pub fn reach_in<W: Walked + ?Sized>(
    source: &dyn BlobSource,
    params: &ListParams,
    list: &ListRef,
    walked: &mut W,
    visit: &mut dyn FnMut(Reached, u32),
) -> Result<()> {
    // The reference's own checks (levels, chunks) are LeafWalk's.
    LeafWalk::new(source, params, list)?;
    match list.root {
        Some(root) => reach_node(
            source,
            params,
            (root, list.chunks),
            list.levels,
            walked,
            visit,
        ),
        None => Ok(()),
    }
}

fn reach_node<W: Walked + ?Sized>(
    source: &dyn BlobSource,
    params: &ListParams,
    (id, covered): (Id, u64),
    level: u8,
    walked: &mut W,
    visit: &mut dyn FnMut(Reached, u32),
) -> Result<()> {
    // Entered before it is read: a node that does not read is not read
    // again for the next tree sharing it (its damage is reported once).
    if !walked.enter(id) {
        return Ok(());
    }
    if level == 0 {
        let leaf = LeafRef {
            id,
            start: 0,
            len: covered,
        };
        let resolved =
            resolve_leaf_with(source, params, &leaf, &mut |b| visit(Reached::Blob(*b), 0))?;
        let n = walked.leaf(id);
        resolved
            .ids
            .iter()
            .for_each(|c| visit(Reached::Chunk(*c), n));
        return Ok(());
    }
    visit(Reached::Blob(id), 0);
    let children = read_interior(source, params, &id, level, covered)?;
    for child in &children {
        reach_node(source, params, *child, level - 1, walked, visit)?;
    }
    walked.interior(id, &children);
    Ok(())
}

/// A file's chunk ids in order. An error ends the iteration: it is
/// yielded once, then `None`.
pub struct ListIter<'a> {
    walk: LeafWalk<'a>,
    leaf: std::vec::IntoIter<Id>,
    failed: bool,
}

impl<'a> ListIter<'a> {
    /// Every id of `list`.
    pub fn new(source: impl BlobSource + 'a, params: &ListParams, list: &ListRef) -> Result<Self> {
        ListIter::from_slot(source, params, list, 0)
    }

    /// The ids of `list` from slot `slot` on (none when `slot` is past the
    /// end): reads the nodes on the path to that slot only.
    pub fn from_slot(
        source: impl BlobSource + 'a,
        params: &ListParams,
        list: &ListRef,
        slot: u64,
    ) -> Result<Self> {
        let mut it = ListIter {
            walk: LeafWalk::new(source, params, list)?,
            leaf: Vec::new().into_iter(),
            failed: false,
        };
        if let Some(leaf) = it.walk.next_leaf_covering(slot)? {
            let skip = slot.saturating_sub(leaf.start) as usize;
            it.leaf = it.resolve(&leaf)?.into_iter();
            if skip > 0 {
                it.leaf.nth(skip - 1);
            }
        }
        Ok(it)
    }

    fn resolve(&self, leaf: &LeafRef) -> Result<Vec<Id>> {
        Ok(resolve_leaf(&*self.walk.source, &self.walk.params, leaf)?.ids)
    }

    fn advance(&mut self) -> Result<Option<Id>> {
        loop {
            if let Some(id) = self.leaf.next() {
                return Ok(Some(id));
            }
            match self.walk.next_leaf()? {
                Some(leaf) => self.leaf = self.resolve(&leaf)?.into_iter(),
                None => return Ok(None),
            }
        }
    }
}

impl Iterator for ListIter<'_> {
    type Item = Result<Id>;

    fn next(&mut self) -> Option<Result<Id>> {
        if self.failed {
            return None;
        }
        match self.advance() {
            Ok(id) => id.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// The previous version's tree as the builder consults it: forward only,
/// one resolved leaf at a time.
pub struct OldList<'a> {
    walk: LeafWalk<'a>,
    current: Option<OldLeaf>,
}

impl<'a> OldList<'a> {
    pub fn new(source: impl BlobSource + 'a, params: &ListParams, list: &ListRef) -> Result<Self> {
        Ok(OldList {
            walk: LeafWalk::new(source, params, list)?,
            current: None,
        })
    }

    /// The old leaf holding `slot` (read when first asked for); None past
    /// the end or behind the cursor. The cursor moves only when the leaf
    /// it holds ends at or before `slot`, so asking behind it loses no leaf.
    pub fn leaf_holding(&mut self, slot: u64) -> Result<Option<&OldLeaf>> {
        let ends_after = |l: &OldLeaf| slot < l.start + l.ids.len() as u64;
        if !self.current.as_ref().is_some_and(ends_after) {
            self.current = match self.walk.next_leaf_covering(slot)? {
                Some(leaf) => Some(resolve_leaf(&*self.walk.source, &self.walk.params, &leaf)?),
                None => None,
            };
        }
        Ok(self.current.as_ref().filter(|l| l.start <= slot))
    }

    /// The old leaf that starts exactly at `start`, if there is one.
    pub fn leaf_at(&mut self, start: u64) -> Result<Option<&OldLeaf>> {
        Ok(self.leaf_holding(start)?.filter(|l| l.start == start))
    }

    /// The old id at `slot`.
    pub fn id_at(&mut self, slot: u64) -> Result<Option<Id>> {
        Ok(self
            .leaf_holding(slot)?
            .map(|l| l.ids[(slot - l.start) as usize]))
    }
}
