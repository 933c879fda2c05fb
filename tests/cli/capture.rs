//! What create does with a source file that changes, vanishes or is read
//! again while it reads it: never a torn copy reported good, the snapshot
//! not validated and the file named.

use crate::support::{self, strings, Runtime as Env};
use serde_json::Value;
use std::fs;

use atosnap::ops::extract::{write_file, ChunkSource};

fn validate(env: &Env, stamp: &str) -> support::Out {
    env.run(&["validate", stamp])
}

/// A writer rewrites a large file in place, version after version, while
/// create reads it. Whatever the timing, a copy reported good must be one
/// whole version, never a mix.
#[test]
fn a_file_changing_during_read_is_never_a_good_torn_copy() {
    const SIZE: usize = 8 << 20;
    let env = Env::tiny();
    let path = env.chroma().join("seg/big.pickle");
    fs::write(&path, vec![0u8; SIZE]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), path.clone());
        std::thread::spawn(move || {
            use std::io::{Seek, Write};
            let mut version = 1u8;
            let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
            let block = vec![0u8; 64 * 1024];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let block: Vec<u8> = block.iter().map(|_| version).collect();
                f.seek(std::io::SeekFrom::Start(0)).unwrap();
                for _ in 0..SIZE / block.len() {
                    f.write_all(&block).unwrap();
                }
                version = version.wrapping_add(1).max(1);
            }
        })
    };
    let results: Vec<Value> = (0..3).map(|_| env.create(&["--chroma"])).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();

    let store = env.open_store();
    let index = store.load_index().unwrap();
    let mut saw_torn_flagged = false;
    for r in &results {
        let stamp = r["stamp"].as_str().unwrap();
        let m = env.manifest(stamp);
        let entry = m.find("chroma/seg/big.pickle").unwrap().file().unwrap();
        let bytes = stored_bytes(&store, &index, entry);
        let whole = bytes.len() == SIZE && bytes.iter().all(|b| *b == bytes[0]);
        // A file read again after it changed counts its chunks once.
        let listed: u64 = m
            .entries
            .iter()
            .filter_map(|e| e.file())
            .map(|f| f.list.len())
            .sum();
        assert_eq!(r["chunks_total"], listed, "{stamp}");
        let errors = strings(&r["validation_errors"]);
        if r["validated"] == true {
            assert!(whole, "{stamp}: a torn copy was reported valid");
            assert_eq!(validate(&env, stamp).code, 0);
        } else {
            assert!(
                errors
                    .iter()
                    .any(|e| e == "file_changed_during_read: chroma/seg/big.pickle"),
                "{errors:?}"
            );
            assert_eq!(validate(&env, stamp).code, 3);
            saw_torn_flagged |= !whole;
        }
    }
    eprintln!("torn copies seen and flagged: {saw_torn_flagged}");
}

/// A file's bytes as the store holds them (every chunk verified).
fn stored_bytes(
    store: &atosnap::store::Store,
    index: &atosnap::store::index::ChunkIndex,
    entry: &atosnap::store::manifest::FileEntry,
) -> Vec<u8> {
    let mut bytes = Vec::new();
    write_file(store, index, entry, &mut bytes, |_| {}, ChunkSource::Store).unwrap();
    bytes
}

/// A Chroma file rewritten between two creates is captured afresh in the
/// second: the new bytes, not the previous snapshot's.
#[test]
fn changed_file_is_captured_fresh_on_the_next_create() {
    let env = Env::tiny();
    let first = env.create(&["--chroma"]);
    let path = env.chroma().join("seg/index_metadata.pickle");
    fs::write(&path, support::pseudo_random(99, 12_345)).unwrap();
    let second = env.create(&["--chroma"]);
    assert_eq!(second["validated"], true);
    let m = env.manifest(second["stamp"].as_str().unwrap());
    let entry = m
        .find("chroma/seg/index_metadata.pickle")
        .unwrap()
        .file()
        .unwrap();
    assert_eq!(entry.size, 12_345);
    let store = env.open_store();
    let index = store.load_index().unwrap();
    let bytes = stored_bytes(&store, &index, entry);
    assert_eq!(bytes, support::pseudo_random(99, 12_345));
    assert_ne!(first["stamp"], second["stamp"]);
}

// ---- permissions ---------------------------------------------------------------

/// Chroma files removed after the folder was listed, before they were
/// read: the snapshot is kept but not validated and names each, the
/// Chroma SQLite file as any other (it once failed the whole create).
#[test]
fn chroma_files_gone_before_they_are_read_are_named_not_fatal() {
    let env = Env::tiny();
    let gone = ["chroma/chroma.sqlite3", "chroma/seg/index_metadata.pickle"];
    let out = env.paused_at("create:chroma-scanned", &["create", "--chroma"], |_| {
        for rel in gone {
            fs::remove_file(env.runtime.join("data").join(rel)).unwrap();
        }
    });
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["validated"], false, "{out:?}");
    let errors = out.strings("validation_errors");
    for rel in gone {
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(&format!("file_unreadable: {rel}: "))),
            "{rel}: {errors:?}"
        );
    }
    let m = env.manifest(out.json["stamp"].as_str().unwrap());
    assert!(gone.iter().all(|rel| m.find(rel).is_none()));
}
