//! The bytes of one list blob (`docs/FORMAT.md`, "List blobs"): a 32-byte
//! header and fixed little-endian records, decoded with every count bounded
//! before it sizes an allocation.
//!
//! ```text
//! 0   4  magic "ATL2"
//! 4   1  kind: 0 FullLeaf, 1 DeltaLeaf, 2 Interior
//! 5   1  depth: DeltaLeaf: chain length to its FullLeaf (1..=max_chain);
//!        Interior: its level (1: children are leaves); FullLeaf: 0
//! 6   2  reserved 0
//! 8   4  n: FullLeaf ids / DeltaLeaf patches / Interior children
//! 12  4  len: ids of the leaf (FullLeaf: = n); Interior: 0
//! 16  4  chain_bytes: DeltaLeaf: bytes of the delta blobs of its chain,
//!        itself included (not the FullLeaf); else 0
//! 20  4  reserved 0
//! 24  8  covered: chunks below (leaf: = len)
//! 32  …  FullLeaf: n × id[32]
//!        DeltaLeaf: prev id[32] ‖ n × (slot u32, id[32]), slots increasing
//!        Interior: n × (child id[32], child_covered u64)
//! ```

use super::{corrupt, ListParams, MAX_LEVELS};
use crate::error::Result;
use crate::id::Id;

pub const MAGIC: &[u8; 4] = b"ATL2";
pub const HEADER_LEN: usize = 32;
const KIND_FULL: u8 = 0;
const KIND_DELTA: u8 = 1;
const KIND_INTERIOR: u8 = 2;
const PATCH_LEN: usize = 36;
const CHILD_LEN: usize = 40;

/// A leaf stored as the leaf version it patches plus the slots that differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    /// The leaf version this one patches (same `len`).
    pub prev: Id,
    /// Hops down to a FullLeaf, this one included.
    pub depth: u8,
    /// Ids of the leaf.
    pub len: u32,
    /// Bytes of the delta blobs from this one down to the FullLeaf.
    pub chain_bytes: u32,
    /// (slot, id), slots strictly increasing and below `len`.
    pub patches: Vec<(u32, Id)>,
}

/// One decoded list blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Full(Vec<Id>),
    Delta(Delta),
    Interior {
        /// 1: the children are leaves.
        level: u8,
        /// (child id, chunks below it).
        children: Vec<(Id, u64)>,
    },
}

/// Bytes of a FullLeaf of `len` ids.
pub fn full_len(len: usize) -> usize {
    HEADER_LEN + 32 * len
}

/// Bytes of a DeltaLeaf of `patches` patches.
pub fn delta_len(patches: usize) -> usize {
    HEADER_LEN + 32 + PATCH_LEN * patches
}

struct Header {
    kind: u8,
    depth: u8,
    n: u32,
    len: u32,
    chain_bytes: u32,
    covered: u64,
}

impl Header {
    fn write(&self, body_len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + body_len);
        out.extend_from_slice(MAGIC);
        out.push(self.kind);
        out.push(self.depth);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.n.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.chain_bytes.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.covered.to_le_bytes());
        out
    }

    fn read(id: &Id, b: &[u8]) -> Result<Header> {
        if b.len() < HEADER_LEN {
            return Err(corrupt(
                id,
                format!("{} bytes, shorter than a header", b.len()),
            ));
        }
        if &b[..4] != MAGIC {
            return Err(corrupt(id, "no ATL2 magic"));
        }
        if b[6..8] != [0, 0] || b[20..24] != [0; 4] {
            return Err(corrupt(id, "reserved header bytes are not zero"));
        }
        Ok(Header {
            kind: b[4],
            depth: b[5],
            n: u32_at(b, 8),
            len: u32_at(b, 12),
            chain_bytes: u32_at(b, 16),
            covered: u64_at(b, 24),
        })
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn id_at(b: &[u8], at: usize) -> Id {
    let mut w = [0u8; 32];
    w.copy_from_slice(&b[at..at + 32]);
    Id(w)
}

impl Node {
    /// The blob's bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Node::Full(ids) => {
                let n = ids.len() as u32;
                let mut out = Header {
                    kind: KIND_FULL,
                    depth: 0,
                    n,
                    len: n,
                    chain_bytes: 0,
                    covered: n as u64,
                }
                .write(32 * ids.len());
                ids.iter().for_each(|id| out.extend_from_slice(&id.0));
                out
            }
            Node::Delta(d) => {
                let mut out = Header {
                    kind: KIND_DELTA,
                    depth: d.depth,
                    n: d.patches.len() as u32,
                    len: d.len,
                    chain_bytes: d.chain_bytes,
                    covered: d.len as u64,
                }
                .write(32 + PATCH_LEN * d.patches.len());
                out.extend_from_slice(&d.prev.0);
                for (slot, id) in &d.patches {
                    out.extend_from_slice(&slot.to_le_bytes());
                    out.extend_from_slice(&id.0);
                }
                out
            }
            Node::Interior { level, children } => {
                let mut out = Header {
                    kind: KIND_INTERIOR,
                    depth: *level,
                    n: children.len() as u32,
                    len: 0,
                    chain_bytes: 0,
                    covered: children.iter().map(|c| c.1).sum(),
                }
                .write(CHILD_LEN * children.len());
                for (id, covered) in children {
                    out.extend_from_slice(&id.0);
                    out.extend_from_slice(&covered.to_le_bytes());
                }
                out
            }
        }
    }

    /// Chunks below this node.
    pub fn covered(&self) -> u64 {
        match self {
            Node::Full(ids) => ids.len() as u64,
            Node::Delta(d) => d.len as u64,
            Node::Interior { children, .. } => children.iter().map(|c| c.1).sum(),
        }
    }

    /// Decodes blob `id`, refusing (`chunk_corrupt`, naming `id`) anything a
    /// writer under `params` does not make: counts above the limits, a size
    /// that does not match the counts, covered counts that do not add up,
    /// delta slots out of order, a chain deeper than `max_chain`.
    pub fn decode(id: &Id, b: &[u8], params: &ListParams) -> Result<Node> {
        let h = Header::read(id, b)?;
        let n = h.n as usize;
        let sized = |want: usize| {
            if b.len() == want {
                Ok(())
            } else {
                Err(corrupt(
                    id,
                    format!("{} bytes, its counts say {want}", b.len()),
                ))
            }
        };
        match h.kind {
            KIND_FULL => {
                if h.depth != 0 || h.chain_bytes != 0 {
                    return Err(corrupt(id, "a full leaf with a chain"));
                }
                check_leaf_len(id, h.len, h.covered, params)?;
                if h.n != h.len {
                    return Err(corrupt(
                        id,
                        format!("a full leaf of {} ids holds {n}", h.len),
                    ));
                }
                sized(full_len(n))?;
                Ok(Node::Full(
                    (0..n).map(|i| id_at(b, HEADER_LEN + 32 * i)).collect(),
                ))
            }
            KIND_DELTA => {
                if h.depth == 0 || h.depth > params.max_chain {
                    return Err(corrupt(
                        id,
                        format!("delta depth {} (allowed 1..={})", h.depth, params.max_chain),
                    ));
                }
                check_leaf_len(id, h.len, h.covered, params)?;
                if h.n == 0 || h.n > h.len {
                    return Err(corrupt(id, format!("{n} patches to a leaf of {}", h.len)));
                }
                sized(delta_len(n))?;
                if (h.chain_bytes as usize) < b.len() {
                    return Err(corrupt(id, "chain_bytes below the blob's own size"));
                }
                let patches = decode_patches(id, b, n, h.len)?;
                Ok(Node::Delta(Delta {
                    prev: id_at(b, HEADER_LEN),
                    depth: h.depth,
                    len: h.len,
                    chain_bytes: h.chain_bytes,
                    patches,
                }))
            }
            KIND_INTERIOR => {
                if h.depth == 0 || h.depth > MAX_LEVELS || h.len != 0 || h.chain_bytes != 0 {
                    return Err(corrupt(
                        id,
                        format!("an interior node of level {}", h.depth),
                    ));
                }
                if h.n == 0 || h.n > params.node_slots {
                    return Err(corrupt(
                        id,
                        format!("{n} children (allowed 1..={})", params.node_slots),
                    ));
                }
                sized(HEADER_LEN + CHILD_LEN * n)?;
                let children = decode_children(id, b, n, h.covered)?;
                Ok(Node::Interior {
                    level: h.depth,
                    children,
                })
            }
            kind => Err(corrupt(id, format!("unknown kind {kind}"))),
        }
    }
}

fn check_leaf_len(id: &Id, len: u32, covered: u64, params: &ListParams) -> Result<()> {
    if len == 0 || len > params.max_leaf() {
        return Err(corrupt(
            id,
            format!("a leaf of {len} ids (allowed 1..={})", params.max_leaf()),
        ));
    }
    if covered != len as u64 {
        return Err(corrupt(id, format!("a leaf of {len} ids covers {covered}")));
    }
    Ok(())
}

fn decode_patches(id: &Id, b: &[u8], n: usize, len: u32) -> Result<Vec<(u32, Id)>> {
    let mut patches = Vec::with_capacity(n);
    let mut next_min = 0u32;
    for i in 0..n {
        let at = HEADER_LEN + 32 + PATCH_LEN * i;
        let slot = u32_at(b, at);
        if slot < next_min || slot >= len {
            return Err(corrupt(
                id,
                format!("patch slot {slot} out of order or beyond {len}"),
            ));
        }
        next_min = slot + 1;
        patches.push((slot, id_at(b, at + 4)));
    }
    Ok(patches)
}

fn decode_children(id: &Id, b: &[u8], n: usize, covered: u64) -> Result<Vec<(Id, u64)>> {
    let mut children = Vec::with_capacity(n);
    let mut sum = 0u64;
    for i in 0..n {
        let at = HEADER_LEN + CHILD_LEN * i;
        let below = u64_at(b, at + 32);
        sum = match sum.checked_add(below) {
            Some(s) if below > 0 => s,
            _ => return Err(corrupt(id, format!("child {i} covers {below} chunks"))),
        };
        children.push((id_at(b, at), below));
    }
    if sum != covered {
        return Err(corrupt(
            id,
            format!("covers {covered} chunks, its children {sum}"),
        ));
    }
    Ok(children)
}
