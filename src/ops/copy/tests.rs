//! Unit tests of `copy` on stores in temp folders: an empty store, and
//! the id renaming of a re-keying copy.
//! (compiled only for tests: `#[cfg(test)] mod tests;` in mod.rs).

use super::rebuild::{map_ids, unknown};
use super::*;
use crate::progress::NoProgress;

fn opts() -> CopyOptions {
    CopyOptions {
        lock_wait: Duration::from_secs(1),
    }
}

#[test]
fn copy_of_an_empty_store_sends_nothing_and_named_missing_stamps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let from = Store::init(
        &crate::store::location::StoreAddress::local(dir.path().join("a")),
        &crate::store::InitOptions::default(),
    )
    .unwrap();
    let to = Store::init(
        &crate::store::location::StoreAddress::local(dir.path().join("b")),
        &crate::store::InitOptions::default(),
    )
    .unwrap();
    let r = copy(&from, &to, &[], &opts(), &NoProgress).unwrap();
    assert!(r.snapshots_copied.is_empty() && r.snapshots_skipped.is_empty());
    assert_eq!((r.chunks_sent, r.bytes_sent, r.exit_code), (0, 0, 0));
    assert!(!r.chunk_ids_rewritten);
    let stamp = Stamp::parse("20260411T120000Z").unwrap();
    let err = copy(&from, &to, &[stamp], &opts(), &NoProgress).unwrap_err();
    assert_eq!(err.code(), "snapshot_missing");
}

#[test]
fn map_ids_maps_every_chunk_and_refuses_a_gap() {
    let (a, b, c) = (Id::hash(b"a"), Id::hash(b"b"), Id::hash(b"c"));
    let mut ids = IdMap::default();
    ids.insert(a, c);
    let e = map_ids(&[a, b, a], None, &ids).unwrap_err();
    assert!(matches!(e, Error::CopyIdUnmapped { .. }), "{e}");
    ids.insert(b, a);
    assert_eq!(map_ids(&[a, b, a], None, &ids).unwrap(), vec![c, a, c]);
    // What a baseline names comes first, position by position.
    let known = [None, Some(b), None];
    let e = map_ids(&[a, c, c], Some(&known), &ids).unwrap_err();
    assert!(matches!(e, Error::CopyIdUnmapped { .. }), "{e}");
    assert_eq!(
        map_ids(&[a, b, a], Some(&known), &ids).unwrap(),
        vec![c, b, c]
    );
    assert_eq!(unknown(&[a, b, c], &known), vec![a, c]);
}
