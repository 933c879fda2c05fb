//! hostile_nodes_are_refused: forged or damaged list blobs end a read with
//! `chunk_corrupt` (or `chunk_missing`) naming the blob at fault, never
//! with a loop, a panic, a wrong id count or a large allocation.
//! (compiled only for tests: a module of the `#[cfg(test)]` tests).

use super::*;

/// Stores `bytes` under their own id.
fn put(mem: &mut Mem, bytes: Vec<u8>) -> Id {
    let id = Id::hash(&bytes);
    mem.blobs.insert(id, bytes);
    id
}

/// A header and body as a forger writes them, bypassing `Node::encode`.
fn raw(kind: u8, depth: u8, n: u32, len: u32, chain: u32, covered: u64, body: &[u8]) -> Vec<u8> {
    let mut b = b"ATL2".to_vec();
    b.extend_from_slice(&[kind, depth, 0, 0]);
    for w in [n, len, chain, 0] {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b.extend_from_slice(&covered.to_le_bytes());
    b.extend_from_slice(body);
    b
}

fn ids_body(n: u64) -> Vec<u8> {
    (0..n).flat_map(|i| id(i).0).collect()
}

/// Asserts `e` is `code` naming `blob`.
fn names(e: &Error, code: &str, blob: &Id) {
    assert_eq!(e.code(), code, "{e}");
    let hash = match e {
        Error::ChunkCorrupt { hash, .. } | Error::ChunkMissing { hash } => hash,
        other => panic!("not a chunk error: {other}"),
    };
    assert_eq!(hash, &blob.to_hex(), "{e}");
}

fn decode_err(bytes: &[u8], params: &ListParams) -> Error {
    let id = Id::hash(bytes);
    let e = Node::decode(&id, bytes, params).unwrap_err();
    names(&e, "chunk_corrupt", &id);
    e
}

fn read_err(mem: &Mem, params: &ListParams, list: &ListRef) -> Error {
    read_all(mem, params, list).unwrap_err()
}

/// Reading `list` is refused as corrupt, naming `blob`.
fn refused(mem: &Mem, params: &ListParams, list: &ListRef, blob: &Id) {
    names(&read_err(mem, params, list), "chunk_corrupt", blob);
}

fn leaf_ref(root: Id, chunks: u64, levels: u8) -> ListRef {
    ListRef {
        root: Some(root),
        chunks,
        levels,
    }
}

fn samples() -> Vec<Node> {
    vec![
        Node::Full(distinct(3, 9)),
        Node::Delta(Delta {
            prev: id(1),
            depth: 1,
            len: 3,
            chain_bytes: delta_len(2) as u32,
            patches: vec![(0, id(2)), (2, id(3))],
        }),
        Node::Interior {
            level: 1,
            children: vec![(id(4), 3), (id(5), 7)],
        },
    ]
}

#[test]
fn truncated_and_padded_blobs_are_refused() {
    let params = ListParams::default();
    for node in samples() {
        let bytes = node.encode();
        assert_eq!(Node::decode(&id(0), &bytes, &params).unwrap(), node);
        for cut in 0..bytes.len() {
            decode_err(&bytes[..cut], &params);
        }
        let mut longer = bytes.clone();
        longer.push(0);
        decode_err(&longer, &params);
    }
}

#[test]
fn counts_above_the_limits_are_refused() {
    let params = ListParams {
        node_slots: 16,
        max_chain: 4,
        ..ListParams::default()
    };
    let n = params.max_leaf() + 1;
    let e = decode_err(&raw(0, 0, n, n, 0, n as u64, &ids_body(n as u64)), &params);
    assert!(e.to_string().contains("a leaf of 4097 ids"), "{e}");
    // A count far beyond the bytes is refused before anything is sized.
    decode_err(
        &raw(0, 0, u32::MAX, u32::MAX, 0, u32::MAX as u64, &[]),
        &params,
    );
    decode_err(&raw(2, 1, u32::MAX, 0, 0, 0, &[]), &params);
    let children: Vec<u8> = (0..17u64)
        .flat_map(|i| [&id(i).0[..], &1u64.to_le_bytes()].concat())
        .collect();
    let e = decode_err(&raw(2, 1, 17, 0, 0, 17, &children), &params);
    assert!(e.to_string().contains("17 children"), "{e}");
    // More patches than slots.
    let patches: Vec<u8> = (0..3u32)
        .flat_map(|s| [&s.to_le_bytes()[..], &id(7).0].concat())
        .collect();
    let body = [&id(1).0[..], &patches].concat();
    decode_err(&raw(1, 1, 3, 2, delta_len(3) as u32, 2, &body), &params);
    // Interior levels above the limit.
    decode_err(
        &raw(
            2,
            MAX_LEVELS + 1,
            1,
            0,
            0,
            1,
            &[&id(1).0[..], &1u64.to_le_bytes()].concat(),
        ),
        &params,
    );
}

#[test]
fn malformed_headers_are_refused() {
    let params = ListParams::default();
    let full = Node::Full(distinct(2, 1)).encode();
    let flip = |at: usize, v: u8| {
        let mut b = full.clone();
        b[at] = v;
        b
    };
    decode_err(&flip(0, b'X'), &params); // magic
    decode_err(&flip(4, 3), &params); // unknown kind
    decode_err(&flip(5, 1), &params); // a full leaf with a depth
    decode_err(&flip(6, 1), &params); // reserved
    decode_err(&flip(21, 1), &params); // reserved
    decode_err(&flip(16, 1), &params); // a full leaf with chain bytes
    decode_err(&flip(24, 3), &params); // covers more than it holds
    let delta = |slots: &[u32], chain: u32| {
        let patches: Vec<u8> = slots
            .iter()
            .flat_map(|s| [&s.to_le_bytes()[..], &id(7).0].concat())
            .collect();
        raw(
            1,
            1,
            slots.len() as u32,
            4,
            chain,
            4,
            &[&id(1).0[..], &patches].concat(),
        )
    };
    let own = delta_len(2) as u32;
    assert!(Node::decode(&id(0), &delta(&[1, 3], own), &params).is_ok());
    decode_err(&delta(&[3, 1], own), &params); // out of order
    decode_err(&delta(&[1, 1], own), &params); // twice
    decode_err(&delta(&[1, 4], own), &params); // beyond the leaf
    decode_err(&delta(&[1, 3], own - 1), &params); // chain smaller than itself
    let child = |covered: u64| [&id(1).0[..], &covered.to_le_bytes()].concat();
    decode_err(&raw(2, 1, 1, 0, 0, 0, &child(0)), &params); // an empty child
    decode_err(&raw(2, 1, 1, 0, 0, 6, &child(5)), &params); // sum
    let two = [child(u64::MAX), child(2)].concat();
    decode_err(&raw(2, 1, 2, 0, 0, 1, &two), &params); // overflow
    decode_err(&raw(2, 0, 1, 0, 0, 5, &child(5)), &params); // level 0
}

#[test]
fn covered_counts_that_disagree_are_refused() {
    let params = ListParams::default();
    let mut mem = Mem::default();
    let leaf = put(&mut mem, Node::Full(distinct(3, 1)).encode());
    // The parent says 4 ids, the leaf holds 3.
    let lying = put(
        &mut mem,
        raw(
            2,
            1,
            1,
            0,
            0,
            4,
            &[&leaf.0[..], &4u64.to_le_bytes()].concat(),
        ),
    );
    refused(&mem, &params, &leaf_ref(lying, 4, 1), &leaf);
    // The manifest says 5 chunks, the root covers 3.
    let honest = put(
        &mut mem,
        raw(
            2,
            1,
            1,
            0,
            0,
            3,
            &[&leaf.0[..], &3u64.to_le_bytes()].concat(),
        ),
    );
    assert_eq!(
        read_all(&mem, &params, &leaf_ref(honest, 3, 1))
            .unwrap()
            .len(),
        3
    );
    refused(&mem, &params, &leaf_ref(honest, 5, 1), &honest);
    refused(&mem, &params, &leaf_ref(leaf, 2, 0), &leaf);
}

#[test]
fn levels_that_disagree_are_refused() {
    let params = ListParams::default();
    let mut mem = Mem::default();
    let leaf = put(&mut mem, Node::Full(distinct(3, 1)).encode());
    let node = Node::Interior {
        level: 1,
        children: vec![(leaf, 3)],
    };
    let node = put(&mut mem, node.encode());
    refused(&mem, &params, &leaf_ref(node, 3, 0), &node);
    refused(&mem, &params, &leaf_ref(leaf, 3, 1), &leaf);
    refused(&mem, &params, &leaf_ref(node, 3, 2), &node);
    let top = put(
        &mut mem,
        Node::Interior {
            level: 2,
            children: vec![(node, 3)],
        }
        .encode(),
    );
    assert_eq!(
        read_all(&mem, &params, &leaf_ref(top, 3, 2)).unwrap().len(),
        3
    );
    // A level-2 node where a level-1 node belongs.
    let skip = put(
        &mut mem,
        Node::Interior {
            level: 2,
            children: vec![(top, 3)],
        }
        .encode(),
    );
    refused(&mem, &params, &leaf_ref(skip, 3, 2), &top);
    // A manifest that claims more levels than a reader walks.
    refused(&mem, &params, &leaf_ref(top, 3, MAX_LEVELS + 1), &top);
    let e = ListIter::new(
        &mem,
        &params,
        &ListRef {
            root: None,
            chunks: 3,
            levels: 0,
        },
    )
    .err()
    .unwrap();
    assert_eq!(e.code(), "chunk_corrupt");
}

/// A delta of `len` ids with its chain fields as given (a forger's).
fn forged_delta(prev: Id, depth: u8, len: u32, chain_bytes: u32) -> Vec<u8> {
    Node::Delta(Delta {
        prev,
        depth,
        len,
        chain_bytes,
        patches: vec![(0, id(99))],
    })
    .encode()
}

#[test]
fn chains_deeper_than_max_chain_are_refused() {
    let params = ListParams {
        leaf_slots: 4,
        node_slots: 16,
        max_chain: 3,
        ..ListParams::default()
    };
    let mut ids = distinct(4, 1);
    let mut mem = Mem::default();
    let mut list = build(&mut mem, &params, LeafCut::fixed(&params), &ids, None).list;
    for n in 0..3 {
        ids[n] = id(50 + n as u64);
        list = build(
            &mut mem,
            &params,
            LeafCut::fixed(&params),
            &ids,
            Some(&list),
        )
        .list;
    }
    let top = list.root.unwrap();
    assert!(matches!(
        Node::decode(&top, &mem.blobs[&top], &params),
        Ok(Node::Delta(Delta { depth: 3, .. }))
    ));
    assert_eq!(read_all(&mem, &params, &list).unwrap(), ids);
    let shorter = ListParams {
        max_chain: 2,
        ..params
    };
    let e = read_err(&mem, &shorter, &list);
    names(&e, "chunk_corrupt", &top);
    assert!(e.to_string().contains("delta depth 3"), "{e}");
    // A delta that claims depth 2 but patches a full leaf directly.
    let full = put(&mut mem, Node::Full(distinct(4, 1)).encode());
    let liar = put(&mut mem, forged_delta(full, 2, 4, 2 * delta_len(1) as u32));
    refused(&mem, &params, &leaf_ref(liar, 4, 0), &liar);
    // Three deltas that all claim depth 1 (their chain bytes consistent):
    // a chain longer than max_chain = 2 cannot hide behind a lying depth.
    let own = delta_len(1) as u32;
    let d1 = put(&mut mem, forged_delta(full, 1, 4, own));
    assert_eq!(
        read_all(&mem, &params, &leaf_ref(d1, 4, 0)).unwrap().len(),
        4
    );
    let d2 = put(&mut mem, forged_delta(d1, 1, 4, 2 * own));
    let d3 = put(&mut mem, forged_delta(d2, 1, 4, 3 * own));
    refused(&mem, &shorter, &leaf_ref(d3, 4, 0), &d3);
    // chain_bytes that do not add up.
    let liar = put(&mut mem, forged_delta(full, 1, 4, delta_len(1) as u32 + 1));
    refused(&mem, &params, &leaf_ref(liar, 4, 0), &liar);
    // A delta of another length than the leaf it patches.
    let liar = put(&mut mem, forged_delta(full, 1, 3, delta_len(1) as u32));
    refused(&mem, &params, &leaf_ref(liar, 3, 0), &liar);
}

#[test]
fn cycles_through_forged_ids_are_refused() {
    let params = ListParams::default();
    let mut mem = Mem::default();
    let own = delta_len(1) as u32;
    // A delta patching itself (stored under an id its bytes do not hash to).
    let x = id(1000);
    mem.blobs.insert(x, forged_delta(x, 1, 4, own));
    refused(&mem, &params, &leaf_ref(x, 4, 0), &x);
    // Two deltas patching each other, their depths and bytes consistent
    // for one hop.
    let (a, b) = (id(1001), id(1002));
    mem.blobs.insert(a, forged_delta(b, 2, 4, 2 * own));
    mem.blobs.insert(b, forged_delta(a, 1, 4, own));
    refused(&mem, &params, &leaf_ref(a, 4, 0), &b);
    // The deepest chain a store allows, looping back to its top: refused
    // once the depths run out, after at most max_chain reads.
    let ring: Vec<Id> = (0..64u64).map(|i| id(2000 + i)).collect();
    for (i, at) in ring.iter().enumerate() {
        let depth = 64 - i as u8;
        let prev = ring[(i + 1) % ring.len()];
        mem.blobs
            .insert(*at, forged_delta(prev, depth, 4, own * depth as u32));
    }
    refused(&mem, &params, &leaf_ref(ring[0], 4, 0), &ring[63]);
    // An interior node listing itself: as a leaf (level 1), and as its own
    // child level (level 2).
    for (n, level) in [(3000, 1), (3001, 2)] {
        let at = id(n);
        let children = vec![(at, 4)];
        mem.blobs
            .insert(at, Node::Interior { level, children }.encode());
        refused(&mem, &params, &leaf_ref(at, 4, level), &at);
    }
    let y = id(3000);
    // A delta patching an interior node.
    let w = id(3002);
    mem.blobs.insert(w, forged_delta(y, 1, 4, own));
    refused(&mem, &params, &leaf_ref(w, 4, 0), &w);
}

#[test]
fn missing_blobs_are_named_and_end_the_iteration() {
    let params = ListParams {
        leaf_slots: 4,
        node_slots: 16,
        ..ListParams::default()
    };
    let mut ids = distinct(12, 1);
    let mut mem = Mem::default();
    let old = build(&mut mem, &params, LeafCut::fixed(&params), &ids, None).list;
    ids[5] = id(77);
    let new = build(&mut mem, &params, LeafCut::fixed(&params), &ids, Some(&old)).list;
    // The delta's base (the old second leaf) goes missing.
    let mut walk = LeafWalk::new(&mem, &params, &old).unwrap();
    walk.next_leaf().unwrap();
    let base = walk.next_leaf().unwrap().unwrap().id;
    drop(walk);
    mem.blobs.remove(&base);
    let mut it = ListIter::new(&mem, &params, &new).unwrap();
    let read: Vec<Id> = it.by_ref().take(4).map(|r| r.unwrap()).collect();
    assert_eq!(read, ids[..4]);
    names(&it.next().unwrap().unwrap_err(), "chunk_missing", &base);
    assert!(it.next().is_none(), "an error ends the iteration");
    drop(it);
    let root = new.root.unwrap();
    mem.blobs.remove(&root);
    names(&read_err(&mem, &params, &new), "chunk_missing", &root);
}
