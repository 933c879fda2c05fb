//! Property test at the library level: a file of random bytes captured
//! into a snapshot and rebuilt from its chunks is byte-identical, whatever
//! its size and whichever chunking its name selects (fixed blocks for
//! `*.bin`, FastCDC otherwise).

use crate::support;

use proptest::prelude::*;
use std::fs;
use std::time::Duration;

use atosnap::ops::create::{create, CreateOptions};
use atosnap::ops::extract;
use atosnap::progress::NoProgress;
use atosnap::stamp::Stamp;
use atosnap::store::{key::Secrets, location::StoreAddress, Store};

fn round_trip(files: &[(String, Vec<u8>)]) -> Result<(), TestCaseError> {
    let env = support::Runtime::tiny();
    for (name, bytes) in files {
        fs::write(env.chroma().join(name), bytes).unwrap();
    }
    let store = Store::open_or_init(&StoreAddress::local(&env.store), &Secrets::none()).unwrap();
    let opts = CreateOptions {
        db: env.db(),
        registry: env.registry(),
        chroma: Some(env.chroma()),
        tags: vec![],
        at: None,
        lock_wait: Duration::from_secs(30),
        ingestion_lock: None,
    };
    let result = create(&store, &opts, &NoProgress).unwrap();
    prop_assert!(result.validated, "{:?}", result.validation_errors);
    let manifest = store
        .read_manifest(
            &Stamp::parse(&result.stamp).unwrap(),
            atosnap::store::ReadFrom::Cache,
        )
        .unwrap();
    let index = store.load_index().unwrap();
    for (name, bytes) in files {
        let entry = manifest
            .find(&format!("chroma/{name}"))
            .and_then(|e| e.file())
            .expect("the file is in the manifest");
        prop_assert_eq!(entry.size, bytes.len() as u64);
        let mut rebuilt = Vec::new();
        extract::write_file(
            &store,
            &index,
            entry,
            &mut rebuilt,
            |_| {},
            extract::ChunkSource::Store,
        )
        .unwrap();
        prop_assert!(&rebuilt == bytes, "{} differs after the round trip", name);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn random_files_round_trip(
        data in proptest::collection::vec(any::<u8>(), 0..300_000),
        runs in proptest::collection::vec((any::<u8>(), 1usize..20_000), 0..8),
    ) {
        // Random bytes with a few long runs, so some chunks compress.
        let mut mixed = data.clone();
        for (byte, len) in runs {
            let at = if mixed.is_empty() { 0 } else { len % mixed.len() };
            mixed.splice(at..at, std::iter::repeat_n(byte, len));
        }
        round_trip(&[
            ("random.bin".to_string(), data.clone()),
            ("random.dat".to_string(), data),
            ("mixed.pickle".to_string(), mixed),
        ])?;
    }
}

#[test]
fn empty_and_tiny_files_round_trip() {
    round_trip(&[
        ("empty.bin".to_string(), vec![]),
        ("empty.dat".to_string(), vec![]),
        ("one.bin".to_string(), vec![7]),
        ("one.dat".to_string(), vec![7]),
    ])
    .unwrap();
}
