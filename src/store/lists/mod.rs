//! List blobs (store format 2, `docs/design/format2.md` §1.4): a file's
//! chunk list stored as a tree of content-addressed blobs, so an unchanged
//! file costs one id and a changed one costs only the blobs that changed.
//!
//! This module owns the bytes of a list node ([`node`]), where leaves end
//! ([`cut`]), building a tree from a file's ids with the previous version's
//! tree at hand ([`build`]), reading one back ([`read`]) and numbering the
//! nodes walked so totals can be summed up the trees ([`numbered`]). It is pure: it
//! neither reads packs nor writes them. Blobs come in through a
//! [`BlobSource`] and go out through a [`BlobSink`]; ids are computed by
//! the caller's function (the store's `Sealer::chunk_id`, keyed in a
//! `repokey` store), so list blobs are ids like chunks.
//!
//! The store's side (blobs read from packs, `Store::file_chunks`) is in
//! `store/file_lists.rs`.

pub mod build;
pub mod cut;
pub mod node;
pub mod numbered;
pub mod read;

#[cfg(test)]
mod tests;

pub use build::{BuildStats, Built, ListBuilder};
pub use cut::LeafCut;
pub use node::Node;
pub use numbered::Numbered;
pub use read::{reach, reach_in, ListIter, OldLeaf, OldList, Reached, Walked};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::Id;

/// The most ids a leaf may hold, whatever the parameters (a leaf is then at
/// most 128 KiB): decoding refuses more before it allocates.
pub const MAX_LEAF_LEN: u32 = 4096;
/// The most children an interior node may hold (160 KiB).
pub const MAX_NODE_SLOTS: u32 = 4096;
/// Interior levels above the leaves at most: the reader's stack depth.
pub const MAX_LEVELS: u8 = 8;
/// The longest delta chain any store may allow (`depth` is one byte).
pub const MAX_CHAIN_LIMIT: u8 = 255;

/// The tree's parameters (the `lists` part of a format-2 `config.json`;
/// write-once, like the rest of the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Ids per positional leaf of a fixed-block file.
    pub leaf_slots: u32,
    /// Children per interior node.
    pub node_slots: u32,
    /// A content-defined leaf ends after an id whose boundary bits (the low
    /// `cdc_leaf_bits` of its bytes 30..32) are zero, ...
    pub cdc_leaf_bits: u8,
    /// ... once it holds at least this many ids; ...
    pub cdc_leaf_min: u32,
    /// ... and always at this many.
    pub cdc_leaf_max: u32,
    /// The longest chain of delta leaves down to a full leaf (0: no deltas).
    pub max_chain: u8,
}

impl Default for ListParams {
    /// The design's defaults (§1.2).
    fn default() -> ListParams {
        ListParams {
            leaf_slots: 1024,
            node_slots: 1024,
            cdc_leaf_bits: 10,
            cdc_leaf_min: 256,
            cdc_leaf_max: 4096,
            max_chain: 64,
        }
    }
}

impl ListParams {
    /// Refuses parameters that would make leaves or nodes larger than any
    /// reader accepts, or a tree that could not end: `Err` says which field.
    pub fn check(&self) -> std::result::Result<(), String> {
        let bad = |field: &str, want: String| Err(format!("lists.{field} must be {want}"));
        if !(1..=MAX_LEAF_LEN).contains(&self.leaf_slots) {
            return bad("leaf_slots", format!("in 1..={MAX_LEAF_LEN}"));
        }
        if !(16..=MAX_NODE_SLOTS).contains(&self.node_slots) {
            return bad("node_slots", format!("in 16..={MAX_NODE_SLOTS}"));
        }
        if !(1..=16).contains(&self.cdc_leaf_bits) {
            return bad("cdc_leaf_bits", "in 1..=16".into());
        }
        if !(1..=MAX_LEAF_LEN).contains(&self.cdc_leaf_max) {
            return bad("cdc_leaf_max", format!("in 1..={MAX_LEAF_LEN}"));
        }
        if !(1..=self.cdc_leaf_max).contains(&self.cdc_leaf_min) {
            return bad("cdc_leaf_min", "in 1..=cdc_leaf_max".into());
        }
        Ok(())
    }

    /// The most ids a leaf written under these parameters holds.
    pub fn max_leaf(&self) -> u32 {
        self.leaf_slots.max(self.cdc_leaf_max)
    }
}

/// What a manifest holds for one file: the root of its list tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRef {
    /// None: an empty file (no chunks, no blob).
    pub root: Option<Id>,
    /// The number of chunks: what the root covers.
    pub chunks: u64,
    /// Interior levels above the leaves; 0: the root is a leaf.
    pub levels: u8,
}

/// Bytes of [`ListRef::to_bytes`].
pub const LIST_REF_LEN: usize = 42;

impl ListRef {
    /// The list of an empty file.
    pub const EMPTY: ListRef = ListRef {
        root: None,
        chunks: 0,
        levels: 0,
    };

    /// Refuses a reference no builder makes: a root without chunks or
    /// chunks without a root, or more levels than a reader walks.
    pub fn check(&self) -> std::result::Result<(), String> {
        match self.root {
            None if self.chunks != 0 || self.levels != 0 => Err(format!(
                "a list without a root claims {} chunks and {} levels",
                self.chunks, self.levels
            )),
            Some(_) if self.chunks == 0 => Err("a list with a root claims no chunks".into()),
            _ if self.levels > MAX_LEVELS => Err(format!(
                "a list claims {} interior levels, at most {MAX_LEVELS} are allowed",
                self.levels
            )),
            _ => Ok(()),
        }
    }

    /// Fixed little-endian form: `has_root u8 | root [32] (zero if none) |
    /// chunks u64 | levels u8`.
    pub fn to_bytes(&self) -> [u8; LIST_REF_LEN] {
        let mut out = [0u8; LIST_REF_LEN];
        if let Some(root) = self.root {
            out[0] = 1;
            out[1..33].copy_from_slice(&root.0);
        }
        out[33..41].copy_from_slice(&self.chunks.to_le_bytes());
        out[41] = self.levels;
        out
    }

    /// The inverse of [`ListRef::to_bytes`], checked ([`ListRef::check`]).
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<ListRef, String> {
        let b: &[u8; LIST_REF_LEN] = bytes.try_into().map_err(|_| {
            format!(
                "a list reference is {LIST_REF_LEN} bytes, not {}",
                bytes.len()
            )
        })?;
        let mut root = [0u8; 32];
        root.copy_from_slice(&b[1..33]);
        let root = match b[0] {
            0 if root == [0u8; 32] => None,
            1 => Some(Id(root)),
            flag => return Err(format!("a list reference has root flag {flag}")),
        };
        let mut chunks = [0u8; 8];
        chunks.copy_from_slice(&b[33..41]);
        let list = ListRef {
            root,
            chunks: u64::from_le_bytes(chunks),
            levels: b[41],
        };
        list.check()?;
        Ok(list)
    }
}

/// Where list blobs are read from (the store's frame reader). A source
/// returns the bytes whose id is `id` (the store re-hashes every blob it
/// decodes); the readers here still bound and cross-check everything they
/// decode, so a source that returns other bytes cannot make them loop,
/// over-allocate or panic.
pub trait BlobSource {
    /// The blob's bytes; [`Error::ChunkMissing`] (naming `id`) when the
    /// store does not hold it.
    fn get(&self, id: &Id) -> Result<Vec<u8>>;
}

impl<T: BlobSource + ?Sized> BlobSource for &T {
    fn get(&self, id: &Id) -> Result<Vec<u8>> {
        (**self).get(id)
    }
}

/// Where new list blobs go (the list-blob packer).
pub trait BlobSink {
    /// Stores blob `id` (the store's chunk id of `bytes`). A blob the store
    /// already holds is ignored: ids are content addresses.
    fn put(&mut self, id: Id, bytes: Vec<u8>) -> Result<()>;
}

/// A list blob that cannot be what it claims (`chunk_corrupt`, naming it):
/// list blobs are reported like chunks (design §2.3).
pub(crate) fn corrupt(id: &Id, detail: impl std::fmt::Display) -> Error {
    Error::ChunkCorrupt {
        hash: id.to_hex(),
        detail: format!("list blob: {detail}"),
    }
}
