//! Where a leaf ends (design §1.4, "Leaf boundaries").
//!
//! - Fixed-block files (SQLite pages, HNSW `*.bin`) are rewritten in place:
//!   leaf i covers chunks `[i·leaf_slots, (i+1)·leaf_slots)`, so today's
//!   leaf i and yesterday's cover the same bytes and one may patch the
//!   other (delta leaves).
//! - FastCDC files may shift on insertion: a leaf ends after an id whose
//!   boundary bits are zero (bytes 30..32 of the id, uniform because ids
//!   are hashes, keyed in a `repokey` store), at least `cdc_leaf_min` ids
//!   in, and always at `cdc_leaf_max` (bupstash's `htree` split rule with
//!   its guard), so cuts resynchronise right after a change.

use super::ListParams;
use crate::chunk::Strategy;
use crate::id::Id;

/// A leaf cutting rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafCut {
    /// Positional leaves of `slots` ids.
    Fixed { slots: u32 },
    /// Content-defined leaves.
    Cdc { bits: u8, min: u32, max: u32 },
}

impl LeafCut {
    /// The rule for a file chunked with `strategy`.
    pub fn for_strategy(strategy: &Strategy, params: &ListParams) -> LeafCut {
        match strategy {
            Strategy::Fixed(_) => LeafCut::fixed(params),
            Strategy::Cdc { .. } => LeafCut::cdc(params),
        }
    }

    pub fn fixed(params: &ListParams) -> LeafCut {
        LeafCut::Fixed {
            slots: params.leaf_slots,
        }
    }

    pub fn cdc(params: &ListParams) -> LeafCut {
        LeafCut::Cdc {
            bits: params.cdc_leaf_bits,
            min: params.cdc_leaf_min,
            max: params.cdc_leaf_max,
        }
    }

    /// Whether a leaf that holds `len` ids, the last being `last`, ends
    /// here.
    pub fn ends_after(&self, len: usize, last: &Id) -> bool {
        match *self {
            LeafCut::Fixed { slots } => len >= slots as usize,
            LeafCut::Cdc { bits, min, max } => {
                len >= max as usize || (len >= min as usize && is_boundary(last, bits))
            }
        }
    }

    /// Positional leaves can be patched by delta leaves.
    pub fn is_positional(&self) -> bool {
        matches!(self, LeafCut::Fixed { .. })
    }
}

/// The content-defined boundary test: the low `bits` of the id's bytes 30
/// and 31 (little endian) are zero.
pub fn is_boundary(id: &Id, bits: u8) -> bool {
    let word = u16::from_le_bytes([id.0[30], id.0[31]]) as u32;
    word & ((1u32 << bits) - 1) == 0
}
