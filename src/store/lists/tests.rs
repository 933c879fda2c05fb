//! List blobs, tested against the design's properties (§5 step 4): a tree
//! reads back what was built, a small change costs O(1) blobs, delta
//! chains stay bounded, an unchanged file writes nothing, and hostile
//! nodes are refused with the blob's id. `measure_list_bytes` (ignored)
//! prints the bytes a 1 % day costs a 4 GiB fixed-block file.
//! (compiled only for tests: `#[cfg(test)] mod tests;` in mod.rs).

use std::collections::HashMap;

use proptest::prelude::*;

use super::node::{delta_len, full_len, Delta, Node};
use super::read::{resolve_leaf, LeafWalk};
use super::*;

/// List blobs in memory.
#[derive(Default)]
pub(super) struct Mem {
    pub blobs: HashMap<Id, Vec<u8>>,
}

impl BlobSource for Mem {
    fn get(&self, id: &Id) -> Result<Vec<u8>> {
        self.blobs
            .get(id)
            .cloned()
            .ok_or(Error::ChunkMissing { hash: id.to_hex() })
    }
}

/// The blobs one build adds to a [`Mem`] (what a store would write).
struct Added<'a> {
    base: &'a Mem,
    new: HashMap<Id, Vec<u8>>,
}

impl BlobSink for Added<'_> {
    fn put(&mut self, id: Id, bytes: Vec<u8>) -> Result<()> {
        assert_eq!(id, Id::hash(&bytes), "the builder names blobs with id_of");
        if !self.base.blobs.contains_key(&id) {
            self.new.entry(id).or_insert(bytes);
        }
        Ok(())
    }
}

pub(super) struct Outcome {
    pub list: ListRef,
    /// Blobs the build added, decoded.
    pub new: Vec<Node>,
    pub new_bytes: u64,
    pub stats: BuildStats,
}

impl Outcome {
    fn new_leaves(&self) -> usize {
        self.new
            .iter()
            .filter(|n| !matches!(n, Node::Interior { .. }))
            .count()
    }

    fn new_interior(&self) -> usize {
        self.new.len() - self.new_leaves()
    }
}

/// Runs one build over `base` (against `old` if given), `feed` pushing
/// the ids; returns the result and the blobs it added.
fn run_build(
    base: &Mem,
    params: &ListParams,
    cut: LeafCut,
    old: Option<&ListRef>,
    feed: impl FnOnce(&mut ListBuilder),
) -> (Built, HashMap<Id, Vec<u8>>) {
    let mut sink = Added {
        base,
        new: HashMap::new(),
    };
    let id_of: &dyn Fn(&[u8]) -> Id = &Id::hash;
    let mut builder = ListBuilder::new(params, cut, id_of, &mut sink).unwrap();
    if let Some(old) = old {
        builder = builder.with_old(base, old);
    }
    feed(&mut builder);
    let built = builder.finish().unwrap();
    (built, sink.new)
}

/// Builds `ids` (against `old` if given) and adds the new blobs to `mem`.
pub(super) fn build(
    mem: &mut Mem,
    params: &ListParams,
    cut: LeafCut,
    ids: &[Id],
    old: Option<&ListRef>,
) -> Outcome {
    let (built, added) = run_build(mem, params, cut, old, |b| {
        ids.iter().for_each(|id| b.push(*id).unwrap())
    });
    assert!(built.old_fault.is_none(), "{:?}", built.old_fault);
    let new_bytes = added.values().map(|b| b.len() as u64).sum();
    let new = added
        .iter()
        .map(|(id, b)| Node::decode(id, b, params).unwrap())
        .collect();
    mem.blobs.extend(added);
    Outcome {
        list: built.list,
        new,
        new_bytes,
        stats: built.stats,
    }
}

pub(super) fn read_all(mem: &Mem, params: &ListParams, list: &ListRef) -> Result<Vec<Id>> {
    ListIter::new(mem, params, list)?.collect()
}

pub(super) fn id(n: u64) -> Id {
    Id::hash(&n.to_le_bytes())
}

/// Small parameters, so that small lists make deep trees.
fn small_params() -> impl Strategy<Value = ListParams> {
    (1u32..80, 16u32..40, 1u8..7, 1u32..20, 0u32..100, 0u8..8).prop_map(
        |(leaf_slots, node_slots, bits, min, extra, max_chain)| ListParams {
            leaf_slots,
            node_slots,
            cdc_leaf_bits: bits,
            cdc_leaf_min: min,
            cdc_leaf_max: min + extra,
            max_chain,
        },
    )
}

/// 0..20,000 ids in runs of equal ids (zero pages), some runs long.
fn id_runs() -> impl Strategy<Value = Vec<Id>> {
    let run = prop_oneof![8 => 1usize..4, 1 => 1usize..6000];
    proptest::collection::vec((0u64..100_000, run), 0..120).prop_map(|runs| {
        let mut ids = Vec::new();
        for (n, len) in runs {
            ids.extend(std::iter::repeat_n(id(n), len));
        }
        ids.truncate(20_000);
        ids
    })
}

/// A fixed-block file's ids: distinct, as pages mostly are.
fn distinct(n: u64, salt: u64) -> Vec<Id> {
    (0..n).map(|i| id(i ^ (salt << 40))).collect()
}

/// Levels of interior nodes, and every leaf's depth and chain bytes
/// within the bounds.
fn check_leaves(mem: &Mem, params: &ListParams, list: &ListRef) {
    let mut walk = LeafWalk::new(mem, params, list).unwrap();
    while let Some(leaf) = walk.next_leaf().unwrap() {
        let old = resolve_leaf(mem, params, &leaf).unwrap();
        assert!(old.depth <= params.max_chain);
        assert!(old.chain_bytes as usize <= 2 * full_len(old.ids.len()));
    }
}

fn cuts(params: &ListParams) -> [LeafCut; 2] {
    [LeafCut::fixed(params), LeafCut::cdc(params)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn round_trip(
        ids in id_runs(),
        params in small_params(),
        slots in proptest::collection::vec(any::<prop::sample::Index>(), 3),
    ) {
        for cut in cuts(&params) {
            let mut mem = Mem::default();
            let out = build(&mut mem, &params, cut, &ids, None);
            prop_assert_eq!(out.list.chunks, ids.len() as u64);
            prop_assert_eq!(out.list.root.is_none(), ids.is_empty());
            prop_assert_eq!(&read_all(&mem, &params, &out.list).unwrap(), &ids);
            // Random access: from any slot on, and past the end.
            for slot in slots.iter().map(|s| s.index(ids.len() + 1)) {
                let tail: Vec<Id> = ListIter::from_slot(&mem, &params, &out.list, slot as u64)
                    .unwrap()
                    .collect::<Result<_>>()
                    .unwrap();
                prop_assert_eq!(&tail[..], &ids[slot..]);
            }
            let leaves = out.stats.leaves_full as usize;
            prop_assert!(out.list.levels as usize <= leaves.max(1).ilog(params.node_slots as usize) as usize + 1);
            check_leaves(&mem, &params, &out.list);
        }
    }

    #[test]
    fn unchanged_reuses_root(ids in id_runs(), params in small_params()) {
        for cut in cuts(&params) {
            let mut mem = Mem::default();
            let first = build(&mut mem, &params, cut, &ids, None);
            let again = build(&mut mem, &params, cut, &ids, Some(&first.list));
            prop_assert_eq!(again.list, first.list);
            prop_assert_eq!(again.new.len(), 0);
            if cut.is_positional() {
                prop_assert_eq!(again.stats.leaves_full + again.stats.leaves_delta, 0);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn one_change_is_o1_blobs(
        k in 1usize..=3,
        at in proptest::collection::vec(0u64..50_000, 3),
        salt in any::<u32>(),
        small in any::<bool>(),
    ) {
        let ids = distinct(50_000, salt as u64);
        let mut changed = ids.clone();
        for (i, slot) in at.iter().take(k).enumerate() {
            changed[*slot as usize] = id(u64::MAX - i as u64);
        }
        // Fixed: the design's parameters (one interior level) or small
        // ones (leaves of 64, nodes of 16: three levels).
        let params = match small {
            false => ListParams::default(),
            true => ListParams { leaf_slots: 64, node_slots: 16, ..ListParams::default() },
        };
        let mut mem = Mem::default();
        let old = build(&mut mem, &params, LeafCut::fixed(&params), &ids, None);
        let new = build(&mut mem, &params, LeafCut::fixed(&params), &changed, Some(&old.list));
        prop_assert_eq!(&read_all(&mem, &params, &new.list).unwrap(), &changed);
        prop_assert!(new.new_leaves() <= k, "{} leaves", new.new_leaves());
        prop_assert!(new.new.iter().all(|n| !matches!(n, Node::Full(_))), "deltas only");
        let levels = new.list.levels as usize;
        prop_assert!(new.new_interior() <= k * levels, "{} nodes, {levels} levels", new.new_interior());

        // Cdc: leaves around each change, one interior level (default
        // node_slots), leaves of about 80 or about 1280 ids.
        let params = match small {
            false => ListParams::default(),
            true => ListParams { cdc_leaf_bits: 6, cdc_leaf_min: 16, cdc_leaf_max: 256, ..ListParams::default() },
        };
        let mut mem = Mem::default();
        let old = build(&mut mem, &params, LeafCut::cdc(&params), &ids, None);
        let new = build(&mut mem, &params, LeafCut::cdc(&params), &changed, Some(&old.list));
        prop_assert_eq!(&read_all(&mem, &params, &new.list).unwrap(), &changed);
        prop_assert!(new.new_leaves() <= 2 * k + 2, "{} leaves", new.new_leaves());
        prop_assert!(new.new_interior() <= new.list.levels as usize);
    }

    #[test]
    fn insertion_resyncs(at in 0usize..=50_000, salt in any::<u32>(), small in any::<bool>()) {
        let params = match small {
            false => ListParams::default(),
            true => ListParams { cdc_leaf_bits: 6, cdc_leaf_min: 16, cdc_leaf_max: 256, ..ListParams::default() },
        };
        let ids = distinct(50_000, salt as u64);
        let mut inserted = ids.clone();
        inserted.insert(at, id(u64::MAX));
        let mut mem = Mem::default();
        let old = build(&mut mem, &params, LeafCut::cdc(&params), &ids, None);
        let new = build(&mut mem, &params, LeafCut::cdc(&params), &inserted, Some(&old.list));
        prop_assert_eq!(&read_all(&mem, &params, &new.list).unwrap(), &inserted);
        prop_assert!(new.new_leaves() <= 3, "{} leaves", new.new_leaves());
        prop_assert!(new.new_interior() <= new.list.levels as usize);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn chain_bounded(
        len in 1u64..400,
        leaf_slots in 2u32..80,
        max_chain in prop_oneof![0u8..6, Just(64u8)],
        edits in proptest::collection::vec(any::<prop::sample::Index>(), 200),
    ) {
        let params = ListParams { leaf_slots, node_slots: 16, max_chain, ..ListParams::default() };
        let mut ids = distinct(len, 0);
        let mut mem = Mem::default();
        let mut list = build(&mut mem, &params, LeafCut::fixed(&params), &ids, None).list;
        let mut deltas = 0;
        for (n, slot) in edits.iter().enumerate() {
            let at = slot.index(ids.len());
            ids[at] = id(1_000_000 + n as u64);
            let out = build(&mut mem, &params, LeafCut::fixed(&params), &ids, Some(&list));
            deltas += out.stats.leaves_delta;
            prop_assert_eq!(out.stats.leaves_full + out.stats.leaves_delta, 1);
            list = out.list;
            prop_assert_eq!(&read_all(&mem, &params, &list).unwrap(), &ids);
            check_leaves(&mem, &params, &list);
        }
        // Deltas are used whenever they are allowed and pay.
        if max_chain > 0 && delta_len(1) < full_len(leaf_slots.min(len as u32) as usize) {
            prop_assert!(deltas > 0);
        } else {
            prop_assert_eq!(deltas, 0);
        }
    }

    /// Whatever the bytes, decoding returns (no panic, no huge allocation).
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), kind in 0u8..4) {
        let mut bytes = bytes;
        if bytes.len() >= 8 {
            bytes[..4].copy_from_slice(b"ATL2");
            bytes[4] = kind;
        }
        let _ = Node::decode(&Id::hash(&bytes), &bytes, &ListParams::default());
    }
}

#[test]
fn a_keyed_store_names_blobs_with_its_key() {
    use crate::store::seal::{MasterKey, Sealer};
    let sealer = Sealer::repokey(MasterKey::from_bytes([7; 32]));
    let params = ListParams {
        leaf_slots: 4,
        ..ListParams::default()
    };
    let ids = distinct(10, 1);
    let mut blobs = HashMap::new();
    let id_of = |b: &[u8]| sealer.chunk_id(b);
    let built = {
        let mut sink = Keyed(&mut blobs);
        let mut b = ListBuilder::new(&params, LeafCut::fixed(&params), &id_of, &mut sink).unwrap();
        ids.iter().for_each(|i| b.push(*i).unwrap());
        b.finish().unwrap()
    };
    assert_eq!(blobs.len(), 4, "three leaves and a root");
    for (id, bytes) in &blobs {
        assert_eq!(*id, sealer.chunk_id(bytes));
        assert_ne!(*id, Id::hash(bytes));
    }
    let mem = Mem { blobs };
    assert_eq!(read_all(&mem, &params, &built.list).unwrap(), ids);
}

/// A sink that takes any id (the keyed test's ids are not plain hashes).
struct Keyed<'a>(&'a mut HashMap<Id, Vec<u8>>);

impl BlobSink for Keyed<'_> {
    fn put(&mut self, id: Id, bytes: Vec<u8>) -> Result<()> {
        self.0.insert(id, bytes);
        Ok(())
    }
}

/// A fixed-block file of `n` ids already in `mem` (leaves and nodes of 16).
fn stored_file(n: u64, salt: u64) -> (ListParams, Vec<Id>, Mem, ListRef) {
    let params = ListParams {
        leaf_slots: 16,
        node_slots: 16,
        ..ListParams::default()
    };
    let ids = distinct(n, salt);
    let mut mem = Mem::default();
    let old = build(&mut mem, &params, LeafCut::fixed(&params), &ids, None).list;
    (params, ids, mem, old)
}

#[test]
fn the_old_id_at_a_slot_is_known_without_the_index() {
    let (params, ids, mem, old) = stored_file(1000, 2);
    let (built, _) = run_build(&mem, &params, LeafCut::fixed(&params), Some(&old), |b| {
        for (slot, i) in ids.iter().enumerate() {
            assert_eq!(b.old_id_at(slot as u64), Some(*i));
            b.push(*i).unwrap();
        }
        assert_eq!(b.old_id_at(1000), None, "past the old end");
    });
    assert_eq!(built.list, old);
}

#[test]
fn an_unreadable_old_tree_falls_back_to_full_leaves() {
    let (params, ids, mut mem, old) = stored_file(100, 3);
    // Lose the old tree's third leaf.
    let mut walk = LeafWalk::new(&mem, &params, &old).unwrap();
    walk.next_leaf().unwrap();
    walk.next_leaf().unwrap();
    let third = walk.next_leaf().unwrap().unwrap();
    drop(walk);
    mem.blobs.remove(&third.id);
    let (built, added) = run_build(&mem, &params, LeafCut::fixed(&params), Some(&old), |b| {
        ids.iter().for_each(|i| b.push(*i).unwrap())
    });
    let fault = built.old_fault.expect("the lost leaf is reported");
    assert_eq!(fault.code(), "chunk_missing");
    assert!(fault.to_string().contains(&third.id.to_hex()));
    assert_eq!(
        built.stats.leaves_reused, 2,
        "the leaves before it were reused"
    );
    assert_eq!(built.stats.leaves_full, 5, "the rest written whole");
    mem.blobs.extend(added);
    assert_eq!(read_all(&mem, &params, &built.list).unwrap(), ids);
}

#[test]
fn parameters_no_reader_accepts_are_refused() {
    let ok = ListParams::default();
    assert_eq!(ok.check(), Ok(()));
    for bad in [
        ListParams {
            leaf_slots: 0,
            ..ok
        },
        ListParams {
            leaf_slots: MAX_LEAF_LEN + 1,
            ..ok
        },
        ListParams {
            node_slots: 15,
            ..ok
        },
        ListParams {
            cdc_leaf_bits: 17,
            ..ok
        },
        ListParams {
            cdc_leaf_min: 5000,
            ..ok
        },
    ] {
        let mut sink = Keyed(&mut HashMap::new());
        let id_of: &dyn Fn(&[u8]) -> Id = &Id::hash;
        let err = ListBuilder::new(&bad, LeafCut::fixed(&bad), id_of, &mut sink)
            .err()
            .unwrap();
        assert_eq!(err.code(), "store_config_invalid", "{bad:?}");
    }
}

#[test]
fn list_refs_round_trip_in_42_bytes() {
    let refs = [
        ListRef::EMPTY,
        ListRef {
            root: Some(id(1)),
            chunks: 1,
            levels: 0,
        },
        ListRef {
            root: Some(id(2)),
            chunks: u64::MAX,
            levels: MAX_LEVELS,
        },
    ];
    for r in refs {
        assert_eq!(ListRef::from_bytes(&r.to_bytes()), Ok(r));
    }
    let mut forged = ListRef::EMPTY.to_bytes();
    forged[33] = 5;
    assert!(
        ListRef::from_bytes(&forged).is_err(),
        "chunks without a root"
    );
    let mut forged = refs[1].to_bytes();
    forged[41] = MAX_LEVELS + 1;
    assert!(ListRef::from_bytes(&forged).is_err(), "too deep");
    assert!(ListRef::from_bytes(&forged[..41]).is_err(), "truncated");
}

mod hostile;
mod measure;

#[test]
fn the_old_cursor_loses_no_leaf_when_asked_behind_it() {
    let (params, ids, mem, old) = stored_file(100, 4);
    let mut cursor = OldList::new(&mem, &params, &old).unwrap();
    assert_eq!(cursor.id_at(20).unwrap(), Some(ids[20]));
    assert_eq!(cursor.id_at(3).unwrap(), None, "behind the cursor");
    assert_eq!(cursor.id_at(40).unwrap(), Some(ids[40]));
    assert_eq!(
        cursor.leaf_at(48).unwrap().map(|l| l.ids.clone()),
        Some(ids[48..64].to_vec())
    );
    assert!(cursor.leaf_at(50).unwrap().is_none(), "not a leaf start");
    assert_eq!(cursor.id_at(99).unwrap(), Some(ids[99]));
    assert_eq!(cursor.id_at(100).unwrap(), None, "past the end");
}

/// A source that counts the blobs read from it.
struct Counted<'a> {
    mem: &'a Mem,
    reads: std::cell::Cell<usize>,
}

impl BlobSource for Counted<'_> {
    fn get(&self, id: &Id) -> Result<Vec<u8>> {
        self.reads.set(self.reads.get() + 1);
        self.mem.get(id)
    }
}

/// What verify's size check rests on: a numbered walk tells each chunk
/// slot with its leaf's number (a repeated id counts again), the leaves'
/// totals summed up the trees are each tree's total, a tree sharing
/// subtrees with one walked before reads only what it does not share and
/// still adds up, and a leaf of unknown total makes every tree above it
/// unknown.
#[test]
fn numbered_walks_sum_every_slot_and_read_each_subtree_once() {
    use super::numbered::{add, UNKNOWN};
    let params = ListParams {
        leaf_slots: 64,
        node_slots: 16,
        ..ListParams::default()
    };
    let weight = |id: &Id| id.0[0] as u64 + 1;
    let mut ids = distinct(5_000, 7);
    ids[100] = ids[99];
    ids[300] = ids[99];
    let mut changed = ids.clone();
    changed[4_000] = id(u64::MAX);
    let mut mem = Mem::default();
    let cut = LeafCut::fixed(&params);
    let old = build(&mut mem, &params, cut, &ids, None);
    let new = build(&mut mem, &params, cut, &changed, Some(&old.list));
    assert!(old.list.levels >= 2);
    let source = Counted {
        mem: &mem,
        reads: Default::default(),
    };
    let mut numbered = Numbered::default();
    let mut leaf_bytes: Vec<u64> = Vec::new();
    // The leaf listing ids[10].
    let mut holding = None;
    let mut walk = |list: &ListRef, numbered: &mut Numbered, leaf_bytes: &mut Vec<u64>| {
        let before = source.reads.get();
        reach_in(&source, &params, list, numbered, &mut |r, leaf| {
            let Reached::Chunk(c) = r else { return };
            let at = leaf as usize;
            if leaf_bytes.len() <= at {
                leaf_bytes.resize(at + 1, 0);
            }
            leaf_bytes[at] = add(leaf_bytes[at], weight(&c));
            if c == ids[10] {
                holding = Some(at);
            }
        })
        .unwrap();
        source.reads.get() - before
    };
    let total = |numbered: &Numbered, leaf_bytes: &[u64], list: &ListRef| {
        let root = numbered.number(&list.root.unwrap()).expect("walked whole");
        numbered.totals(leaf_bytes.to_vec())[root as usize]
    };
    let sum = |ids: &[Id]| ids.iter().map(weight).sum::<u64>();

    let whole = walk(&old.list, &mut numbered, &mut leaf_bytes);
    assert_eq!(total(&numbered, &leaf_bytes, &old.list), sum(&ids));
    let reads = walk(&new.list, &mut numbered, &mut leaf_bytes);
    assert_eq!(total(&numbered, &leaf_bytes, &new.list), sum(&changed));
    assert_eq!(total(&numbered, &leaf_bytes, &old.list), sum(&ids));
    // The new path (a delta leaf and its interior nodes) and the leaf the
    // delta patches: nothing the two trees share.
    assert!(
        reads <= new.new.len() + 1,
        "{reads} reads, {}",
        new.new.len()
    );
    assert!(reads < whole, "{reads} of {whole}");
    assert_eq!(walk(&new.list, &mut numbered, &mut leaf_bytes), 0);

    // Both trees share the leaf holding ids[10] (the change is at 4000).
    let holding = holding.expect("ids[10] reached");
    leaf_bytes[holding] = UNKNOWN;
    assert_eq!(total(&numbered, &leaf_bytes, &old.list), UNKNOWN);
    assert_eq!(total(&numbered, &leaf_bytes, &new.list), UNKNOWN);
}
