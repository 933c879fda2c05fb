//! Property: gc never removes a chunk, or a list blob (delta chains
//! included), that a remaining snapshot references.
//! Random small stores (tiny packs, so chunks spread over many packs and
//! share them), random snapshots deleted, gc --confirm, then every
//! remaining snapshot validates and a second gc finds nothing to do.
//! Library-level so that many cases run quickly (PROPTEST_CASES=200 for a
//! longer search).

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use atosnap::ops::create::{self, CreateOptions};
use atosnap::ops::gc;
use atosnap::ops::mark;
use atosnap::ops::verify;
use atosnap::progress::NoProgress;
use atosnap::stamp::Stamp;
use atosnap::store::lists::Reached;
use atosnap::store::lock::lock_exclusive;
use atosnap::store::{key::Secrets, location::StoreAddress, InitOptions, Store};

const BLOCK: usize = 4096;
const WAIT: Duration = Duration::from_secs(60);

/// One snapshot: Chroma files as lists of block numbers (from a shared
/// pool, so snapshots share chunks), and rows added to the db before it.
#[derive(Clone, Debug)]
struct Snap {
    files: Vec<Vec<u8>>,
    rows: u8,
    /// Some((slot, block)): the previous snapshot's files with one block
    /// replaced instead (so leaves become deltas of the previous ones).
    derive: Option<(u8, u8)>,
}

fn snap() -> impl Strategy<Value = Snap> {
    (
        proptest::collection::vec(proptest::collection::vec(0u8..24, 1..8), 1..4),
        0u8..40,
        proptest::option::of((0u8..8, 0u8..24)),
    )
        .prop_map(|(files, rows, derive)| Snap {
            files,
            rows,
            derive,
        })
}

fn pool() -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    (0..24)
        .map(|_| {
            let mut b = vec![0u8; BLOCK];
            rng.fill(&mut b[..]);
            b
        })
        .collect()
}

/// Tiny packs, and leaves of 4 ids so that files of up to 7 blocks have
/// interior roots and one changed block makes a delta leaf.
fn set_pack_size(root: &Path, target: u64) {
    let path = root.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["pack"]["target_size"] = serde_json::Value::from(target);
    config["lists"]["leaf_slots"] = serde_json::Value::from(4);
    config["lists"]["max_chain"] = serde_json::Value::from(8);
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
}

fn run_case(snaps: &[Snap], deleted: &[bool], pack_size: u64) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("atocore.db");
    let chroma = dir.path().join("chroma");
    std::fs::create_dir(&chroma).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE t(x TEXT)").unwrap();
    let root = dir.path().join("store");
    Store::init(&StoreAddress::local(&root), &InitOptions::default()).unwrap();
    set_pack_size(&root, pack_size);
    let store = Store::open(&StoreAddress::local(&root), &Secrets::none()).unwrap();
    let pool = pool();

    let mut stamps = Vec::new();
    let mut prev: Option<Vec<Vec<u8>>> = None;
    for (i, s) in snaps.iter().enumerate() {
        let files = match (s.derive, prev.take()) {
            (Some((slot, block)), Some(mut files)) => {
                let k = slot as usize % files.len();
                let f = &mut files[k];
                let n = f.len();
                f[slot as usize % n] = block;
                files
            }
            _ => s.files.clone(),
        };
        prev = Some(files.clone());
        for r in 0..s.rows {
            conn.execute(
                "INSERT INTO t VALUES (?1)",
                [format!("{i}-{r}-{}", "x".repeat(300))],
            )
            .unwrap();
        }
        for old in std::fs::read_dir(&chroma).unwrap().flatten() {
            std::fs::remove_file(old.path()).unwrap();
        }
        for (k, blocks) in files.iter().enumerate() {
            let data: Vec<u8> = blocks
                .iter()
                .flat_map(|b| pool[*b as usize].clone())
                .collect();
            std::fs::write(chroma.join(format!("f{k}.bin")), data).unwrap();
        }
        let opts = CreateOptions {
            db: db.clone(),
            registry: dir.path().join("no-registry.json"),
            chroma: Some(chroma.clone()),
            tags: vec![],
            at: Some(
                chrono::DateTime::parse_from_rfc3339("2026-04-01T12:00:00Z")
                    .unwrap()
                    .with_timezone(&chrono::Utc)
                    + chrono::Duration::days(i as i64),
            ),
            lock_wait: WAIT,
            ingestion_lock: None,
        };
        let r = create::create(&store, &opts, &NoProgress).unwrap();
        prop_assert!(r.validated, "{:?}", r.validation_errors);
        stamps.push(Stamp::parse(&r.stamp).unwrap());
    }

    {
        let lock = lock_exclusive(&root, "test", WAIT).unwrap();
        for (stamp, gone) in stamps.iter().zip(deleted) {
            if *gone {
                store.delete_snapshot(&lock, stamp).unwrap();
            }
        }
    }
    let before = store.load_index().unwrap();
    // The mark's sort spilled to many runs plans exactly what one run does.
    let dry = gc::GcOptions {
        confirm: false,
        lock_wait: WAIT,
    };
    let planned = |r: gc::GcResult| {
        (
            r.would_delete_packs,
            r.would_rewrite_packs,
            r.bytes_reclaimable,
            r.dead_bytes_kept,
            (r.chunks_live, r.chunks_dead, r.chunks_missing),
        )
    };
    let one_run = planned(gc::gc(&store, &dry).unwrap());
    let many_runs = planned(mark::with_sort_budget(256, || gc::gc(&store, &dry)).unwrap());
    prop_assert_eq!(one_run, many_runs);
    let confirm = gc::GcOptions {
        confirm: true,
        lock_wait: WAIT,
    };
    let r = gc::gc(&store, &confirm).unwrap();
    prop_assert_eq!(r.exit_code, 0, "{:?}", r.errors);

    // Every chunk a remaining snapshot references is still there and good.
    let index = store.load_index().unwrap();
    let mut referenced = HashSet::new();
    for (stamp, gone) in stamps.iter().zip(deleted) {
        if *gone {
            continue;
        }
        let m = store
            .read_manifest(stamp, atosnap::store::ReadFrom::Cache)
            .unwrap();
        for f in m.entries.iter().filter_map(|e| e.file()) {
            let mut ids = Vec::new();
            store
                .file_reach(&index, f, &mut Default::default(), &mut |r| {
                    let (Reached::Blob(id) | Reached::Chunk(id)) = r;
                    ids.push(id);
                })
                .map_err(|e| {
                    TestCaseError::fail(format!("{stamp}: a list does not read after gc: {e}"))
                })?;
            for id in &ids {
                prop_assert!(store.read_chunk(&index, id).is_ok(), "blob {} lost", id);
                referenced.insert(*id);
            }
        }
        let v = verify::validate(&store, &stamp.to_string(), WAIT).unwrap();
        prop_assert!(v.valid, "{} invalid after gc: {:?}", stamp, v.errors);
    }
    // gc's count of dead chunks is exactly what no remaining snapshot
    // references (no chunk is stored twice by sequential creates).
    let dead_before = (before.iter().unwrap())
        .map(|r| r.unwrap().0)
        .filter(|id| !referenced.contains(id))
        .count() as u64;
    prop_assert_eq!(r.chunks_dead, dead_before);
    prop_assert_eq!(r.chunks_live, referenced.len() as u64);

    // A second gc has nothing to do.
    let dry_run = gc::GcOptions {
        confirm: false,
        lock_wait: WAIT,
    };
    let again = gc::gc(&store, &dry_run).unwrap();
    prop_assert_eq!(again.would_delete_packs, Some(vec![]));
    prop_assert_eq!(again.would_rewrite_packs, Some(vec![]));
    if deleted.iter().take(snaps.len()).all(|d| *d) {
        prop_assert_eq!(store.list_packs().unwrap().len(), 0);
    }
    Ok(())
}

/// 16 cases by default; PROPTEST_CASES overrides.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    ProptestConfig::with_cases(cases)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn gc_never_removes_a_chunk_a_remaining_snapshot_references(
        snaps in proptest::collection::vec(snap(), 1..5),
        deleted in proptest::collection::vec(any::<bool>(), 5),
        pack_size in prop_oneof![Just(6_000u64), Just(12_000), Just(40_000)],
    ) {
        run_case(&snaps, &deleted, pack_size)?;
    }
}
