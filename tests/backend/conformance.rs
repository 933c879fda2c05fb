//! The `Backend` contract (`src/store/backend.rs`), checked the same way on
//! every backend: on a local folder always, and on a fresh prefix of the
//! S3 test bucket when `ATOSNAP_TEST_S3_BUCKET` is set. After restic's
//! per-backend test suite (`internal/backend/test`). A missing object must
//! say so twice: its `io::ErrorKind` is `NotFound` and its
//! `BackendErrorKind` (what the store's callers ask) is `NotFound`.

use std::io::{ErrorKind, Read};

use atosnap::store::backend::{Backend, BackendErrorKind, LocalBackend};

use crate::support::s3::{backend_for, bucket, fresh_url};

#[test]
fn local_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    // The store creates tmp/ at init; the local backend stages writes there.
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    suite(&LocalBackend::new(dir.path()));
}

#[test]
fn s3_backend_conforms() {
    let Some(bucket) = bucket() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let b = backend_for(&fresh_url(&bucket, "conformance"), cache.path());
    suite(b.as_ref());
}

/// Every rule of the contract, each on names of its own.
fn suite(b: &dyn Backend) {
    missing_objects_are_not_found(b);
    written_bytes_read_back_whole_and_in_ranges(b);
    listings_show_what_was_written(b);
    replace_swaps_the_content(b);
    put_file_is_readable_after_barrier(b);
    write_dir_once_publishes_a_folder_once(b);
    deletes(b);
    renames(b);
}

fn assert_not_found<T: std::fmt::Debug>(r: std::io::Result<T>, what: &str) {
    let e = r.expect_err(what);
    assert_eq!(e.kind(), ErrorKind::NotFound, "{what}: {e}");
    assert_eq!(
        BackendErrorKind::of(&e),
        BackendErrorKind::NotFound,
        "{what}: {e}"
    );
}

/// Deterministic bytes, different per seed.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

fn missing_objects_are_not_found(b: &dyn Backend) {
    assert!(!b.exists("missing/object").unwrap());
    assert_not_found(b.read("missing/object"), "read of a missing object");
    assert_not_found(b.size("missing/object"), "size of a missing object");
    assert_not_found(
        b.read_range("missing/object", 0, 4),
        "range read of a missing object",
    );
    assert_not_found(
        b.read_range_direct("missing/object", 0, 4),
        "direct range read of a missing object",
    );
}

fn written_bytes_read_back_whole_and_in_ranges(b: &dyn Backend) {
    let data = pattern(100_000, 1);
    b.write_once("read/data", &data).unwrap();
    assert!(b.exists("read/data").unwrap());
    assert_eq!(b.read("read/data").unwrap(), data);
    assert_eq!(b.size("read/data").unwrap(), data.len() as u64);
    for (offset, len) in [(0, 10), (50_000, 1234), (99_990, 10), (0, 100_000)] {
        let want = &data[offset..offset + len];
        let o = offset as u64;
        assert_eq!(
            b.read_range("read/data", o, len).unwrap(),
            want,
            "{o}+{len}"
        );
        assert_eq!(
            b.read_range_direct("read/data", o, len).unwrap(),
            want,
            "direct {o}+{len}"
        );
    }
    assert!(
        b.read_range("read/data", 99_995, 10).is_err(),
        "a range past the end"
    );
    assert!(
        b.read_range_direct("read/data", 99_995, 10).is_err(),
        "a direct range past the end"
    );
}

fn listings_show_what_was_written(b: &dyn Backend) {
    let written = [
        ("objects/aa/aa01.pack", pattern(300, 2)),
        ("objects/aa/aa02.pack", pattern(10, 3)),
        ("objects/bb/bb01.pack", pattern(4096, 4)),
    ];
    for (name, data) in &written {
        b.write_once(name, data).unwrap();
    }
    let listed: Vec<(String, u64)> = b
        .list_files("objects")
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.size))
        .collect();
    let want: Vec<(String, u64)> = written
        .iter()
        .map(|(n, d)| (n.to_string(), d.len() as u64))
        .collect();
    assert_eq!(listed, want);
    assert_eq!(b.list_children("objects").unwrap(), ["aa", "bb"]);
    assert_eq!(
        b.list_children("objects/aa").unwrap(),
        ["aa01.pack", "aa02.pack"]
    );
    assert!(b.list_files("no-such-folder").unwrap().is_empty());
    assert!(b.list_children("no-such-folder").unwrap().is_empty());
    // A name that only starts like a folder's is no folder.
    assert!(b.list_files("objects/a").unwrap().is_empty());
}

fn replace_swaps_the_content(b: &dyn Backend) {
    b.replace("mutable/key", b"first").unwrap();
    assert_eq!(b.read("mutable/key").unwrap(), b"first");
    b.replace("mutable/key", b"second, longer").unwrap();
    assert_eq!(b.read("mutable/key").unwrap(), b"second, longer");
    assert_eq!(b.size("mutable/key").unwrap(), 14);
}

fn put_file_is_readable_after_barrier(b: &dyn Backend) {
    let data = pattern(200_000, 5);
    let local = b.tmp_dir().join("conformance-put");
    std::fs::write(&local, &data).unwrap();
    b.put_file("put/object", &local).unwrap();
    b.barrier().unwrap();
    assert_eq!(b.read("put/object").unwrap(), data);
    let mut streamed = Vec::new();
    b.open_read("put/object")
        .unwrap()
        .read_to_end(&mut streamed)
        .unwrap();
    assert_eq!(streamed, data);
}

fn write_dir_once_publishes_a_folder_once(b: &dyn Backend) {
    let files = [
        ("manifest.bin", pattern(1000, 6)),
        ("summary.json", b"{}".to_vec()),
    ];
    assert!(b.write_dir_once("snapshots/s1", &files).unwrap());
    assert_eq!(
        b.read("snapshots/s1/summary.json").unwrap(),
        b"{}",
        "the last file is present"
    );
    assert_eq!(
        b.read("snapshots/s1/manifest.bin").unwrap(),
        files[0].1,
        "every file is present"
    );
    let other = [
        ("manifest.bin", pattern(1000, 7)),
        ("summary.json", b"[]".to_vec()),
    ];
    assert!(
        !b.write_dir_once("snapshots/s1", &other).unwrap(),
        "a folder that exists is not written again"
    );
    assert_eq!(b.read("snapshots/s1/manifest.bin").unwrap(), files[0].1);
    assert_eq!(b.read("snapshots/s1/summary.json").unwrap(), b"{}");
    assert_eq!(b.list_children("snapshots").unwrap(), ["s1"]);
}

fn deletes(b: &dyn Backend) {
    assert_not_found(b.delete("gone/never-written"), "delete of a missing object");
    b.write_once("gone/object", b"x").unwrap();
    b.delete("gone/object").unwrap();
    assert!(!b.exists("gone/object").unwrap());
    assert_not_found(b.read("gone/object"), "read after delete");

    let files = [("a", b"1".to_vec()), ("b", b"2".to_vec())];
    assert!(b.write_dir_once("doomed/d1", &files).unwrap());
    b.delete_dir("doomed/d1").unwrap();
    assert!(!b.exists("doomed/d1/a").unwrap());
    assert!(!b.exists("doomed/d1/b").unwrap());
    assert!(b.list_files("doomed/d1").unwrap().is_empty());
    assert!(b.list_children("doomed").unwrap().is_empty());
    assert_not_found(b.delete_dir("doomed/d1"), "delete_dir of a missing folder");
}

fn renames(b: &dyn Backend) {
    b.write_once("moving/from", b"payload").unwrap();
    b.write_once("moving/taken", b"occupant").unwrap();
    let e = b.rename("moving/from", "moving/taken").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    assert_eq!(b.read("moving/taken").unwrap(), b"occupant");
    assert_eq!(b.read("moving/from").unwrap(), b"payload");

    b.rename("moving/from", "quarantine/moved").unwrap();
    assert!(!b.exists("moving/from").unwrap());
    assert_eq!(b.read("quarantine/moved").unwrap(), b"payload");
}
