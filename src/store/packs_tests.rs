//! Tests of reading packs through the store (`packs.rs`): the pack index
//! cache, hostile format-2 trailers, frames decoded once, scattered reads
//! (compiled only for tests: `#[cfg(test)] mod packs_tests;` in mod.rs).

use super::*;
use crate::id::Id;
use crate::store::cache::ObjectCache;
use crate::store::index::ChunkIndex;
use std::sync::Arc;

/// A store with one pack, and a cache as a remote store has.
fn store_with_a_pack(dir: &std::path::Path) -> (Store, backend::ListEntry) {
    let address = crate::store::location::StoreAddress::local(dir.join("store"));
    let mut store = Store::init(&address, &Default::default()).unwrap();
    store.cache = Some(Arc::new(ObjectCache::new(dir.join("cache"))));
    let mut index = ChunkIndex::new();
    let mut packer = crate::store::packer::Packer::new(&store);
    for data in [&b"first chunk"[..], b"second chunk"] {
        let id = store.sealer.chunk_id(data);
        packer.add_raw(&mut index, id, data).unwrap();
    }
    packer.flush(&mut index).unwrap();
    drop(packer);
    let pack = store.list_packs().unwrap().remove(0);
    (store, pack)
}

#[test]
fn a_cached_pack_index_that_does_not_match_its_trailer_is_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let (store, pack) = store_with_a_pack(dir.path());
    let object = Object::Listed(pack.name.clone());
    let good = store.read_pack_index(&object, pack.size).unwrap();
    let key = format!("packidx/{}", pack.name);
    let cache = store.cache.as_ref().unwrap();
    let tail = cache.get(&key).expect("the index is cached");
    // The same trailer over other index bytes of the same length (an
    // index read that came back wrong): intact as a cache entry, but
    // not the pack's index.
    let mut poisoned = tail.clone();
    poisoned[0] ^= 0xff;
    cache.put(&key, &poisoned);
    let again = store.read_pack_index(&object, pack.size);
    assert_eq!(
        again.as_ref().map(|l| l.chunks.len()),
        Ok(good.chunks.len()),
        "{again:?}"
    );
    assert_eq!(cache.get(&key), Some(tail), "the entry is replaced");
}

/// A format-2 pack file around a trailer body (as stored), named by
/// its hash, put under `objects/`.
fn put_v2_pack(root: &std::path::Path, body: &[u8]) -> String {
    let mut bytes = crate::store::pack2::PACK2_MAGIC.to_vec();
    bytes.extend_from_slice(body);
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(blake3::hash(body).as_bytes());
    bytes.extend_from_slice(pack::TRAILER_MAGIC);
    let name = pack::pack_name(&Id::hash(&bytes));
    let path = root.join(&name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    name
}

#[test]
fn hostile_v2_trailer_counts_are_refused_through_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let address = crate::store::location::StoreAddress::local(&root);
    let store = Store::init(&address, &Default::default()).unwrap();
    // A header claiming u32::MAX chunks over 20 bytes of records, and
    // a zstd bomb: neither is allocated for, both make the pack damaged.
    let mut header = b"ATOPIDX2".to_vec();
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    header.extend_from_slice(&[0u8; 4]);
    let claims = put_v2_pack(&root, &zstd::bulk::compress(&header, 3).unwrap());
    let bomb = put_v2_pack(
        &root,
        &zstd::bulk::compress(&vec![0u8; 64 << 20], 3).unwrap(),
    );
    let index = store.load_index().unwrap();
    assert_eq!(index.chunk_count().unwrap(), 0);
    let detail = |name: &str| {
        index
            .damaged
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.detail.clone())
            .unwrap_or_else(|| panic!("{name} is damaged: {:?}", index.damaged))
    };
    assert!(detail(&claims).contains("it has"), "{}", detail(&claims));
    assert!(
        detail(&bomb).contains("decoded bytes, more than the"),
        "{}",
        detail(&bomb)
    );
}

#[test]
fn a_v2_store_reads_chunks_of_one_frame_with_one_decode() {
    let dir = tempfile::tempdir().unwrap();
    let (store, pack) = store_with_a_pack(dir.path());
    let object = Object::Listed(pack.name.clone());
    let layout = store.read_pack_index(&object, pack.size).unwrap();
    assert_eq!(layout.format, crate::store::layout::PackFormat::V2);
    assert_eq!((layout.frames.len(), layout.chunks.len()), (1, 2));
    let index = store.load_index().unwrap();
    for data in [&b"first chunk"[..], b"second chunk"] {
        let id = store.sealer.chunk_id(data);
        assert_eq!(store.read_chunk(&index, &id).unwrap(), data);
    }
    // The frame is cached: with the pack gone the chunks still read
    // (and a fresh handle finds them missing).
    std::fs::remove_file(dir.path().join("store").join(&pack.name)).unwrap();
    let id = store.sealer.chunk_id(b"first chunk");
    assert_eq!(store.read_chunk(&index, &id).unwrap(), b"first chunk");
    let fresh = store.reopened();
    assert_eq!(fresh.read_chunk(&index, &id), Err(ChunkFault::Missing));
}

/// Two bad chunks asked of one frame: a wrong id, then a wrong
/// length (a forged list). The error names the first in the frame.
#[test]
fn a_scattered_read_names_the_first_bad_chunk_of_a_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_with_a_pack(dir.path());
    let index = store.load_index().unwrap();
    let first = store.sealer.chunk_id(b"first chunk");
    let second = store.sealer.chunk_id(b"second chunk");
    let loc = |id: &Id| index.get(id).unwrap().unwrap();
    let forged = store.sealer.chunk_id(b"not the first chunk");
    let wanted = [(forged, loc(&first), 0..11), (second, loc(&second), 11..20)];
    let mut buf = vec![0u8; 20];
    let got = store
        .reopened()
        .read_scattered_into(&index, &wanted, &mut buf);
    assert_eq!(got.map_err(|(id, _)| id), Err(forged));
    // Either alone is found too.
    let got = store
        .reopened()
        .read_scattered_into(&index, &wanted[1..], &mut buf);
    assert_eq!(got.map_err(|(id, _)| id), Err(second));
    let good = [(first, loc(&first), 0..11), (second, loc(&second), 11..23)];
    let mut buf = vec![0u8; 23];
    store
        .reopened()
        .read_scattered_into(&index, &good, &mut buf)
        .unwrap();
    assert_eq!(buf, b"first chunksecond chunk");
}
