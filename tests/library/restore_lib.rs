//! Restore's plan and apply through the library, on the fixture runtime:
//! what the plan decides, and that chunks reused from the file being
//! replaced are re-checked (bytes changed since the plan come from the
//! store instead).

use crate::support::Runtime as Rt;
use std::time::Duration;

use atosnap::ops::create::{self, CreateOptions};
use atosnap::ops::restore::{self, Targets};
use atosnap::progress::NoProgress;
use atosnap::stamp::Stamp;
use atosnap::store::{key::Secrets, location::StoreAddress, Store};

const SEGMENT: &str = "e8763d70-0924-4389-9e69-cddb1f90792c";

fn snapshot(rt: &Rt) -> (Store, String) {
    let store = Store::open_or_init(&StoreAddress::local(&rt.store), &Secrets::none()).unwrap();
    let r = create::create(
        &store,
        &CreateOptions {
            db: rt.db(),
            registry: rt.registry(),
            chroma: Some(rt.chroma()),
            tags: vec![],
            at: None,
            lock_wait: Duration::from_secs(10),
            ingestion_lock: None,
        },
        &NoProgress,
    )
    .unwrap();
    (store, r.stamp)
}

fn live_targets(rt: &Rt) -> Targets {
    Targets {
        db: rt.db(),
        registry: rt.registry(),
        chroma: rt.chroma(),
        live: true,
    }
}

#[test]
fn the_plan_names_what_differs_and_what_can_be_reused() {
    let rt = Rt::fixture();
    let (store, stamp) = snapshot(&rt);
    let manifest = store
        .read_manifest(
            &Stamp::parse(&stamp).unwrap(),
            atosnap::store::ReadFrom::Cache,
        )
        .unwrap();
    let data = rt.chroma().join(SEGMENT).join("data_level0.bin");
    let mtime = filetime::FileTime::from_last_modification_time(&std::fs::metadata(&data).unwrap());
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[4096 * 10 + 7] ^= 1;
    std::fs::write(&data, &bytes).unwrap();
    // Same size and mtime: only hashing tells (a file whose size or mtime
    // differs is not hashed by the plan; staging checks its chunks).
    filetime::set_file_mtime(&data, mtime).unwrap();
    std::fs::write(rt.chroma().join("extra"), b"x").unwrap();

    let plan = restore::plan(
        &store,
        &store.load_index().unwrap(),
        &manifest,
        &live_targets(&rt),
        true,
    )
    .unwrap();
    let chroma = plan.chroma.as_ref().unwrap();
    let path_of = |i: &usize| manifest.entries[*i].path_lossy();
    let written: Vec<String> = chroma.write.iter().map(path_of).collect();
    // chroma.sqlite3 is captured page for page, so the untouched live
    // database matches its snapshot and is left alone.
    assert_eq!(written, [format!("chroma/{SEGMENT}/data_level0.bin")]);
    assert_eq!(chroma.unchanged.len(), 5);
    assert_eq!(chroma.remove.len(), 1);
    assert_eq!(chroma.remove[0].rel, b"extra");
    assert!(chroma.root_exists && chroma.create_dirs.is_empty());
    // All of data_level0.bin but the changed block is reusable from disk.
    let i = chroma
        .write
        .iter()
        .find(|i| path_of(i).ends_with("data_level0.bin"))
        .unwrap();
    let file = manifest.entries[*i].file().unwrap();
    let ids = store
        .file_chunk_ids(&store.load_index().unwrap(), file)
        .unwrap();
    // One bit per 4 KiB slot (no map of the file's chunks): every slot
    // but the changed one.
    let reusable = &chroma.reusable[i];
    assert!(reusable.is_positional());
    assert_eq!(reusable.chunks(), ids.len() as u64 - 1);
    assert_eq!(reusable.at(&ids[10], 10 * 4096, 4096), None);
    assert_eq!(reusable.at(&ids[11], 11 * 4096, 4096), Some(11 * 4096));
    // The db: every page but the WAL-mode header page is on disk already.
    assert!(!plan.db_reusable.is_empty());
}

#[test]
fn reused_bytes_that_changed_after_the_plan_come_from_the_store() {
    let rt = Rt::fixture();
    let (store, stamp) = snapshot(&rt);
    let manifest = store
        .read_manifest(
            &Stamp::parse(&stamp).unwrap(),
            atosnap::store::ReadFrom::Cache,
        )
        .unwrap();
    let data = rt.chroma().join(SEGMENT).join("data_level0.bin");
    let original = std::fs::read(&data).unwrap();
    let mut bytes = original.clone();
    bytes[0] ^= 1;
    std::fs::write(&data, &bytes).unwrap();
    let plan = restore::plan(
        &store,
        &store.load_index().unwrap(),
        &manifest,
        &live_targets(&rt),
        true,
    )
    .unwrap();
    // After the plan, damage blocks the plan counted as reusable.
    for block in [3usize, 200, 700] {
        bytes[block * 4096 + 1] ^= 0xff;
    }
    std::fs::write(&data, &bytes).unwrap();
    let index = store.load_index().unwrap();
    restore::apply(&store, &index, &manifest, &plan, &NoProgress).unwrap();
    assert!(std::fs::read(&data).unwrap() == original);
}

/// Past the manifest's own check (a manifest built in memory), and with a
/// folder swapped for a link after the plan: apply still refuses to write,
/// remove or set metadata through a symlink (issue 14, item 1).
#[test]
fn apply_never_writes_through_a_symlink() {
    use atosnap::store::manifest::{Entry, EntryKind};
    let rt = Rt::fixture();
    let (store, stamp) = snapshot(&rt);
    let mut manifest = store
        .read_manifest(
            &Stamp::parse(&stamp).unwrap(),
            atosnap::store::ReadFrom::Cache,
        )
        .unwrap();
    let outside = rt.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let registry = manifest.registry().unwrap().clone();
    manifest.entries.push(Entry {
        path: b"chroma/x".to_vec(),
        kind: EntryKind::Symlink {
            target: outside.as_os_str().as_encoded_bytes().to_vec(),
        },
        mode: 0o777,
        mtime_ns: 0,
    });
    manifest.entries.push(Entry {
        path: b"chroma/x/evil".to_vec(),
        kind: EntryKind::File(registry),
        mode: 0o644,
        mtime_ns: 0,
    });
    let to = rt.path("to");
    std::fs::create_dir_all(to.join("chroma")).unwrap();
    std::os::unix::fs::symlink(&outside, to.join("chroma/x")).unwrap();
    let targets = Targets {
        db: to.join("atocore.db"),
        registry: to.join("project-registry.json"),
        chroma: to.join("chroma"),
        live: false,
    };
    let index = store.load_index().unwrap();
    let plan = restore::plan(
        &store,
        &store.load_index().unwrap(),
        &manifest,
        &targets,
        true,
    )
    .unwrap();
    let err = restore::apply(&store, &index, &manifest, &plan, &NoProgress).unwrap_err();
    assert_eq!(err.code(), "target_invalid", "{err}");
    assert!(err.to_string().contains("chroma/x"), "{err}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

    // A real folder of the snapshot swapped for a link after the plan.
    manifest.entries.truncate(manifest.entries.len() - 2);
    let to = rt.path("to2");
    restore::apply(
        &store,
        &index,
        &manifest,
        &restore::plan(
            &store,
            &index,
            &manifest,
            &Targets {
                db: to.join("atocore.db"),
                registry: to.join("project-registry.json"),
                chroma: to.join("chroma"),
                live: false,
            },
            true,
        )
        .unwrap(),
        &NoProgress,
    )
    .unwrap();
    let seg = to.join("chroma").join(SEGMENT);
    std::fs::remove_file(seg.join("header.bin")).unwrap();
    let targets = Targets {
        db: to.join("atocore.db"),
        registry: to.join("project-registry.json"),
        chroma: to.join("chroma"),
        live: false,
    };
    let plan = restore::plan(
        &store,
        &store.load_index().unwrap(),
        &manifest,
        &targets,
        true,
    )
    .unwrap();
    std::fs::rename(&seg, rt.path("moved-seg")).unwrap();
    std::os::unix::fs::symlink(&outside, &seg).unwrap();
    let err = restore::apply(&store, &index, &manifest, &plan, &NoProgress).unwrap_err();
    assert_eq!(err.code(), "target_invalid", "{err}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}
