//! gc and chunks stored twice (a killed gc's rewrite, raced writers): of
//! the copies gc keeps one, its *home*, and every pack that holds only
//! other copies may go. The home is read back first: a damaged one must
//! not be what is kept while the good copy is deleted.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::support::{make_db, pseudo_random};
use atosnap::id::Id;
use atosnap::ops::cleanup::{self, retention::Policy};
use atosnap::ops::create::{self, CreateOptions};
use atosnap::ops::forget;
use atosnap::ops::gc::{self, Action, GcOptions};
use atosnap::ops::verify::{self, VerifyOptions};
use atosnap::progress::NoProgress;
use atosnap::stamp::Stamp;
use atosnap::store::index::ChunkIndex;
use atosnap::store::lists::Reached;
use atosnap::store::lock::lock_exclusive;
use atosnap::store::names::Object;
use atosnap::store::packer::Packer;
use atosnap::store::{key::Secrets, location::StoreAddress, InitOptions, ReadFrom, Store};

const WAIT: Duration = Duration::from_secs(60);

fn snapshot(store: &Store, dir: &Path, day: i64) -> Stamp {
    let r = create::create(
        store,
        &CreateOptions {
            db: dir.join("atocore.db"),
            registry: dir.join("no-registry.json"),
            chroma: Some(dir.join("chroma")),
            tags: vec![],
            at: Some(
                chrono::DateTime::parse_from_rfc3339("2026-04-01T12:00:00Z")
                    .unwrap()
                    .with_timezone(&chrono::Utc)
                    + chrono::Duration::days(day),
            ),
            lock_wait: WAIT,
            ingestion_lock: None,
        },
        &NoProgress,
    )
    .unwrap();
    assert!(r.validated, "{:?}", r.validation_errors);
    Stamp::parse(&r.stamp).unwrap()
}

/// The data chunks of one snapshot file.
fn chunks_of(store: &Store, stamp: &Stamp, path: &str) -> Vec<Id> {
    let index = store.load_index().unwrap();
    let m = store.read_manifest(stamp, ReadFrom::Cache).unwrap();
    let f = (m.entries.iter())
        .find(|e| e.path_lossy() == path)
        .and_then(|e| e.file())
        .unwrap_or_else(|| panic!("{path} not in {stamp}"));
    let mut ids = Vec::new();
    store
        .file_reach(&index, f, &mut Default::default(), &mut |r| {
            if let Reached::Chunk(id) = r {
                ids.push(id)
            }
        })
        .unwrap();
    ids
}

/// Stores `ids` again, in a pack of their own (as a killed gc's rewrite
/// leaves them); returns that pack's id.
fn store_again(store: &Store, ids: &[Id]) -> Id {
    let index = store.load_index().unwrap();
    let mut packer = Packer::new(store);
    let mut scratch = ChunkIndex::new();
    for id in ids {
        let raw = store.read_chunk(&index, id).unwrap();
        assert!(packer.add_raw(&mut scratch, *id, &raw).unwrap());
    }
    packer.flush(&mut scratch).unwrap();
    store.packs_durable().unwrap();
    assert_eq!(packer.packs_written.len(), 1);
    packer.packs_written[0].0
}

/// Damages the copy of `id` in `pack` (a bit of its own bytes when its
/// frame is stored raw, else the middle of its frame).
fn damage_copy(store: &Store, root: &Path, pack: &str, id: &Id) {
    let path = root.join(pack);
    let size = std::fs::metadata(&path).unwrap().len();
    let layout = store
        .read_pack_index(&Object::Listed(pack.to_string()), size)
        .unwrap();
    let ci = layout.chunks.iter().position(|c| c.id == *id).unwrap() as u32;
    let f = (layout.frames.iter())
        .find(|f| (f.first_chunk..f.first_chunk + f.n_chunks).contains(&ci))
        .unwrap();
    let within = if f.stored_len == f.raw_len {
        let before = &layout.chunks[f.first_chunk as usize..ci as usize];
        before.iter().map(|c| c.raw_len as u64).sum::<u64>() + 1
    } else {
        f.stored_len as u64 / 2
    };
    crate::support::flip_bit(&path, f.offset as u64 + within);
}

/// A store where the chunks of `chroma/kept.bin` are stored twice: in the
/// first snapshot's pack (returned first), now mostly dead, and in a pack
/// of their own (returned second), wholly live. Also returns the second
/// snapshot and the chunks.
struct Twice {
    dir: tempfile::TempDir,
    secrets: Secrets,
    store: Store,
    old_pack: String,
    copy: Id,
    second: Stamp,
    kept: Vec<Id>,
}

fn stored_twice() -> Twice {
    stored_twice_in(InitOptions::default())
}

/// [`stored_twice`] in a store made with `init`.
fn stored_twice_in(init: InitOptions) -> Twice {
    let dir = tempfile::tempdir().unwrap();
    make_db(&dir.path().join("atocore.db"), 20, false);
    let chroma = dir.path().join("chroma");
    std::fs::create_dir(&chroma).unwrap();
    std::fs::write(chroma.join("kept.bin"), pseudo_random(1, 256 << 10)).unwrap();
    std::fs::write(chroma.join("dropped.bin"), pseudo_random(2, 2 << 20)).unwrap();
    let root = dir.path().join("store");
    Store::init(&StoreAddress::local(&root), &init).unwrap();
    let store = Store::open(&StoreAddress::local(&root), &init.secrets).unwrap();
    let first = snapshot(&store, dir.path(), 0);
    std::fs::remove_file(chroma.join("dropped.bin")).unwrap();
    let second = snapshot(&store, dir.path(), 1);
    {
        let lock = lock_exclusive(&root, "test", WAIT).unwrap();
        store.delete_snapshot(&lock, &first).unwrap();
    }
    let kept = chunks_of(&store, &second, "chroma/kept.bin");
    let old_pack = store.list_packs().unwrap()[0].name.clone();
    let copy = store_again(&store, &kept);
    Twice {
        dir,
        secrets: init.secrets,
        store,
        old_pack,
        copy,
        second,
        kept,
    }
}

/// `gc`, a dry run or `--confirm`.
fn gc_run(store: &Store, confirm: bool) -> gc::GcResult {
    let opts = GcOptions {
        confirm,
        lock_wait: WAIT,
    };
    gc::gc(store, &opts).unwrap()
}

#[test]
fn a_damaged_home_copy_is_not_kept_in_place_of_the_good_one() {
    the_good_copy_is_kept_and_heals(stored_twice());
}

#[test]
fn in_an_encrypted_store_too() {
    let init = InitOptions {
        scheme: "repokey".into(),
        secrets: Secrets::from_password("correct horse"),
        ..InitOptions::default()
    };
    the_good_copy_is_kept_and_heals(stored_twice_in(init));
}

/// A home copy rots: gc keeps the good copy instead, and `verify
/// --repair` then heals the snapshot.
fn the_good_copy_is_kept_and_heals(t: Twice) {
    let root = t.dir.path().join("store");
    let copy_name = Object::Pack(t.copy).name();

    // The second copies are home (their pack is wholly live), and the
    // first snapshot's pack, mostly dead now, is rewritten without them.
    let plan = gc::plan(&t.store, &BTreeSet::new()).unwrap();
    let action = |name: &str| plan.packs.iter().find(|p| p.name == name).unwrap().action;
    assert_eq!(action(&copy_name), Action::Keep);
    assert_ne!(action(&t.old_pack), Action::Keep, "{:?}", plan.packs);
    assert_eq!(plan.damaged_copies, 0);

    // A home copy rots.
    damage_copy(&t.store, &root, &copy_name, &t.kept[0]);

    let dry = gc_run(&t.store, false);
    assert_eq!(dry.exit_code, 3, "{:?}", dry.warnings);
    assert!(dry.damaged_copies > 0);
    assert!(
        dry.warnings
            .iter()
            .any(|w| w.contains(&copy_name) && w.contains("verify --repair")),
        "{:?}",
        dry.warnings
    );
    let done = gc_run(&t.store, true);
    assert_eq!(done.exit_code, 3, "{:?} {:?}", done.warnings, done.errors);
    assert!(done.errors.is_empty(), "{:?}", done.errors);
    // The repair the warning asks for heals the snapshot: the rotten pack
    // is quarantined and its intact chunks salvaged, and the good copy of
    // the rotten chunk is still in the store (rewritten with the first
    // snapshot's live chunks, not dropped with its dead ones).
    let mut repair = VerifyOptions::new(WAIT);
    repair.repair = true;
    verify::verify(&t.store, &repair).unwrap();
    let store = Store::open(&StoreAddress::local(&root), &t.secrets).unwrap();
    let v = verify::validate(&store, &t.second.to_string(), WAIT).unwrap();
    assert!(v.valid, "{:?}", v.errors);
}

#[test]
fn when_no_copy_reads_back_every_copy_is_kept() {
    let t = stored_twice();
    let root = t.dir.path().join("store");
    let copy_name = Object::Pack(t.copy).name();
    damage_copy(&t.store, &root, &copy_name, &t.kept[0]);
    damage_copy(&t.store, &root, &t.old_pack, &t.kept[0]);

    let dry = gc_run(&t.store, false);
    assert_eq!(
        (dry.exit_code, dry.damaged_copies),
        (3, 2),
        "{:?}",
        dry.warnings
    );
    let none = format!("chunk {}: none of its 2 copies reads back whole", t.kept[0]);
    assert!(
        dry.warnings.iter().any(|w| w.starts_with(&none)),
        "{:?}",
        dry.warnings
    );
    let done = gc_run(&t.store, true);
    assert_eq!(done.exit_code, 3);
    // Both packs stay: the old one's rewrite meets the damaged copy and
    // leaves the pack as it is.
    assert!(root.join(&copy_name).exists());
    assert!(root.join(&t.old_pack).exists(), "{:?}", done.deleted_packs);
    assert!(
        done.errors.iter().any(|e| e.contains(&t.old_pack)),
        "{:?}",
        done.errors
    );
}

#[test]
fn the_dry_runs_of_cleanup_and_forget_report_what_gc_would() {
    let t = stored_twice();
    let root = t.dir.path().join("store");
    let copy_name = Object::Pack(t.copy).name();
    damage_copy(&t.store, &root, &copy_name, &t.kept[0]);
    let third = snapshot(&t.store, t.dir.path(), 2);
    let named = |warnings: &[String]| warnings.iter().any(|w| w.contains(&copy_name));

    let forget = forget::forget(
        &t.store,
        &forget::ForgetOptions {
            stamps: vec![third.to_string()],
            confirm: false,
            force: false,
            lock_wait: WAIT,
        },
    )
    .unwrap();
    assert_eq!(forget.exit_code, 3, "{forget:?}");
    assert!(named(&forget.warnings), "{:?}", forget.warnings);

    let cleanup = cleanup::cleanup(
        &t.store,
        &cleanup::CleanupOptions {
            policy: Policy {
                keep_last: 10,
                ..Policy::default()
            },
            confirm: false,
            lock_wait: WAIT,
        },
    )
    .unwrap();
    assert_eq!(cleanup.exit_code, 3, "{cleanup:?}");
    assert!(named(&cleanup.warnings), "{:?}", cleanup.warnings);
}

/// The packs holding a copy of `id`.
fn packs_holding(store: &Store, root: &Path, id: &Id) -> Vec<String> {
    let mut holding = Vec::new();
    for p in store.list_packs().unwrap() {
        let size = std::fs::metadata(root.join(&p.name)).unwrap().len();
        let layout = store
            .read_pack_index(&Object::Listed(p.name.clone()), size)
            .unwrap();
        if layout.chunks.iter().any(|c| c.id == *id) {
            holding.push(p.name);
        }
    }
    holding.sort();
    holding
}

/// `atosnap gc` on the store at `root` (the binary, so a read failure can
/// be injected), its cache in `cache`.
fn gc_bin(
    root: &Path,
    cache: &Path,
    confirm: bool,
    unreadable: Option<&str>,
) -> (i32, serde_json::Value) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_atosnap"));
    cmd.args(["--quiet", "--store"]).arg(root).arg("gc");
    if confirm {
        cmd.arg("--confirm");
    }
    cmd.env("ATOSNAP_CACHE_DIR", cache);
    if let Some(name) = unreadable {
        cmd.env("ATOSNAP_TEST_UNREADABLE_FRAMES", name);
    }
    let out = cmd.output().unwrap();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), json)
}

/// The home copy cannot be read (the storage fails, the bytes may be
/// fine): gc cannot tell whether it is sound, so it keeps every copy and
/// exits 1; once the pack reads again, gc keeps one copy as before.
#[test]
fn an_unreadable_home_copy_keeps_every_copy() {
    let t = stored_twice();
    let root = t.dir.path().join("store");
    let cache = t.dir.path().join("cache");
    let copy_name = Object::Pack(t.copy).name();
    let before = packs_holding(&t.store, &root, &t.kept[0]);
    assert_eq!(before.len(), 2, "stored twice: {before:?}");
    // The index cache is filled while every pack reads.
    let (code, dry) = gc_bin(&root, &cache, false, None);
    assert_eq!(code, 0, "{dry}");

    for confirm in [false, true] {
        let (code, r) = gc_bin(&root, &cache, confirm, Some(&copy_name));
        assert_eq!(code, 1, "confirm {confirm}: {r}");
        let each = t.kept.len() as u64;
        assert_eq!(r["unreadable_copies"].as_u64(), Some(each), "{r}");
        assert_eq!(r["damaged_copies"], 0, "{r}");
        let said = format!("its copy in {copy_name} could not be read");
        let warned = (r["warnings"].as_array().unwrap().iter())
            .filter_map(|w| w.as_str())
            .any(|w| w.contains(&said) && w.contains("every copy is kept"));
        assert!(warned, "the pack and the failure are named: {r}");
    }
    let after = packs_holding(&t.store, &root, &t.kept[0]);
    assert!(after.contains(&copy_name), "{after:?}");
    assert_eq!(after.len(), 2, "the other copy is kept too: {after:?}");

    // The pack reads again: one copy goes, the snapshot stays whole.
    let (code, r) = gc_bin(&root, &cache, true, None);
    assert_eq!(code, 0, "{r}");
    assert_eq!(packs_holding(&t.store, &root, &t.kept[0]).len(), 1);
    let store = Store::open(&StoreAddress::local(&root), &t.secrets).unwrap();
    let v = verify::validate(&store, &t.second.to_string(), WAIT).unwrap();
    assert!(v.valid, "{:?}", v.errors);
}
