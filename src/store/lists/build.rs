//! Building a file's list tree from its chunk ids, in order, with the
//! previous version's tree at hand (design §1.4 and §2.1).
//!
//! Leaves end where the [`LeafCut`] says. For a positional (fixed-block)
//! leaf the builder asks the old tree for its leaf at the same slots and
//! picks, in this order:
//! 1. the same ids: the old leaf version is reused, nothing is written;
//! 2. another length (only the last leaf grows or shrinks): a FullLeaf;
//! 3. a DeltaLeaf patching the old version, when the chain stays within
//!    `max_chain`, the delta is smaller than a FullLeaf and the chain's
//!    delta bytes stay within two FullLeaves (so reading a leaf costs at
//!    most three FullLeaves);
//! 4. otherwise a FullLeaf.
//!
//! Content-defined leaves are always FullLeaves: an unchanged one has the
//! same bytes, hence the same id, and the sink drops it. Interior nodes
//! group `node_slots` children by position and close as they fill; the
//! tree ends at the level that holds one node. Memory: one leaf per level
//! being filled plus the old tree's cursor.

use super::node::{delta_len, full_len, Delta, Node};
use super::read::OldList;
use super::{BlobSink, BlobSource, LeafCut, ListParams, ListRef, MAX_LEVELS};
use crate::error::{Error, Result};
use crate::id::Id;

/// What a build wrote, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuildStats {
    /// Leaves whose old version was reused (nothing written).
    pub leaves_reused: u64,
    pub leaves_full: u64,
    pub leaves_delta: u64,
    pub interior: u64,
    /// Bytes handed to the sink (it drops blobs the store already holds).
    pub bytes: u64,
}

/// The result of a build.
#[derive(Debug)]
pub struct Built {
    pub list: ListRef,
    pub stats: BuildStats,
    /// The old tree could not be read from this error on, so the rest of
    /// the file was built without it (full leaves: correct, only larger).
    /// The new tree never depends on an old blob it did not read whole.
    pub old_fault: Option<Error>,
}

/// How a positional leaf is stored.
enum Choice {
    Reuse(Id),
    Delta(Delta),
    Full,
}

/// Streams one file's ids into list blobs.
pub struct ListBuilder<'a> {
    params: ListParams,
    cut: LeafCut,
    id_of: &'a dyn Fn(&[u8]) -> Id,
    sink: &'a mut dyn BlobSink,
    old: Option<OldList<'a>>,
    old_fault: Option<Error>,
    leaf: Vec<Id>,
    total: u64,
    /// `pending[k]`: the children of the node of level k+1 being filled.
    pending: Vec<Vec<(Id, u64)>>,
    stats: BuildStats,
}

impl<'a> ListBuilder<'a> {
    /// A builder cutting leaves by `cut`, naming blobs with `id_of` (the
    /// store's chunk id function) and writing them to `sink`. Refuses
    /// parameters no reader accepts (`store_config_invalid`).
    pub fn new(
        params: &ListParams,
        cut: LeafCut,
        id_of: &'a dyn Fn(&[u8]) -> Id,
        sink: &'a mut dyn BlobSink,
    ) -> Result<Self> {
        params.check().map_err(|detail| Error::StoreConfigInvalid {
            path: "config.json".into(),
            detail,
        })?;
        Ok(ListBuilder {
            params: *params,
            cut,
            id_of,
            sink,
            old: None,
            old_fault: None,
            leaf: Vec::new(),
            total: 0,
            pending: Vec::new(),
            stats: BuildStats::default(),
        })
    }

    /// Builds against `old`, the previous version's tree, read from
    /// `source` as the build goes. A reference that cannot be walked is
    /// reported in [`Built::old_fault`] and the build goes on without it.
    pub fn with_old(mut self, source: &'a dyn BlobSource, old: &ListRef) -> Self {
        match OldList::new(source, &self.params, old) {
            Ok(list) => self.old = Some(list),
            Err(e) => self.old_fault = Some(e),
        }
        self
    }

    /// The previous version's id at `slot`, if the old tree has one there:
    /// a chunk equal to it is known to be stored. Only forward: slots
    /// behind the leaf last consulted give None.
    pub fn old_id_at(&mut self, slot: u64) -> Option<Id> {
        let found = self.old.as_mut()?.id_at(slot);
        self.keep_old(found).flatten()
    }

    /// Appends the file's next chunk id.
    pub fn push(&mut self, id: Id) -> Result<()> {
        self.leaf.push(id);
        self.total += 1;
        if self.cut.ends_after(self.leaf.len(), &id) {
            self.close_leaf()?;
        }
        Ok(())
    }

    /// Writes what is still open and returns the tree's root.
    pub fn finish(mut self) -> Result<Built> {
        if !self.leaf.is_empty() {
            self.close_leaf()?;
        }
        let mut level = 0;
        let list = loop {
            let Some(here) = self.pending.get(level) else {
                break ListRef::EMPTY;
            };
            let above = self.pending[level + 1..].iter().any(|p| !p.is_empty());
            if let (false, [root]) = (above, here.as_slice()) {
                break ListRef {
                    root: Some(root.0),
                    chunks: self.total,
                    levels: level as u8,
                };
            }
            if !here.is_empty() {
                self.close_node(level)?;
            }
            level += 1;
        };
        Ok(Built {
            list,
            stats: self.stats,
            old_fault: self.old_fault,
        })
    }

    /// Keeps an old-tree read's value; on an error, drops the old tree
    /// and records why.
    fn keep_old<T>(&mut self, read: Result<T>) -> Option<T> {
        match read {
            Ok(v) => Some(v),
            Err(e) => {
                self.old = None;
                self.old_fault.get_or_insert(e);
                None
            }
        }
    }

    fn close_leaf(&mut self) -> Result<()> {
        let ids = std::mem::take(&mut self.leaf);
        let len = ids.len() as u64;
        let start = self.total - len;
        let choice = match self.old.as_mut() {
            Some(old) if self.cut.is_positional() => {
                let choice = choose(old, start, &ids, &self.params);
                self.keep_old(choice).unwrap_or(Choice::Full)
            }
            _ => Choice::Full,
        };
        let id = match choice {
            Choice::Reuse(id) => {
                self.stats.leaves_reused += 1;
                id
            }
            Choice::Delta(delta) => {
                self.stats.leaves_delta += 1;
                self.emit(Node::Delta(delta))?
            }
            Choice::Full => {
                self.stats.leaves_full += 1;
                self.emit(Node::Full(ids))?
            }
        };
        self.push_child(0, (id, len))
    }

    /// Adds a child to the node of level `level + 1` being filled, closing
    /// it when full.
    fn push_child(&mut self, level: usize, child: (Id, u64)) -> Result<()> {
        if self.pending.len() <= level {
            self.pending.push(Vec::new());
        }
        self.pending[level].push(child);
        if self.pending[level].len() >= self.params.node_slots as usize {
            self.close_node(level)?;
        }
        Ok(())
    }

    fn close_node(&mut self, level: usize) -> Result<()> {
        if level >= MAX_LEVELS as usize {
            return Err(Error::Encode {
                detail: format!(
                    "a file of {} chunks needs more than {MAX_LEVELS} list levels",
                    self.total
                ),
            });
        }
        let children = std::mem::take(&mut self.pending[level]);
        let covered = children.iter().map(|c| c.1).sum();
        self.stats.interior += 1;
        let id = self.emit(Node::Interior {
            level: level as u8 + 1,
            children,
        })?;
        self.push_child(level + 1, (id, covered))
    }

    fn emit(&mut self, node: Node) -> Result<Id> {
        let bytes = node.encode();
        let id = (self.id_of)(&bytes);
        self.stats.bytes += bytes.len() as u64;
        self.sink.put(id, bytes)?;
        Ok(id)
    }
}

/// The §1.4 rule for the positional leaf `ids` starting at `start`.
fn choose(old: &mut OldList, start: u64, ids: &[Id], params: &ListParams) -> Result<Choice> {
    let Some(old) = old.leaf_at(start)? else {
        return Ok(Choice::Full);
    };
    if old.ids == ids {
        return Ok(Choice::Reuse(old.id));
    }
    if old.ids.len() != ids.len() {
        return Ok(Choice::Full);
    }
    let patches: Vec<(u32, Id)> = (0u32..)
        .zip(ids.iter().zip(&old.ids))
        .filter(|(_, (new, was))| new != was)
        .map(|(slot, (new, _))| (slot, *new))
        .collect();
    let delta = delta_len(patches.len());
    let full = full_len(ids.len());
    let chain = old.chain_bytes as usize + delta;
    if old.depth < params.max_chain && delta < full && chain <= 2 * full {
        return Ok(Choice::Delta(Delta {
            prev: old.id,
            depth: old.depth + 1,
            len: ids.len() as u32,
            chain_bytes: chain as u32,
            patches,
        }));
    }
    Ok(Choice::Full)
}
