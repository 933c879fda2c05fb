//! `ChunkIndex` over the cache (`Store::load_index`): refresh against the
//! pack listing, packs added and removed by other handles, damage, two
//! refreshes at once, the pending spill, and file modes.
//! (compiled only for tests: `#[cfg(test)] mod index_cache_tests;` in mod.rs).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::id::Id;
use crate::store::index::{ChunkIndex, PENDING_CAP};
use crate::store::key::Secrets;
use crate::store::location::{RemoteSettings, StoreAddress};
use crate::store::packer::Packer;
use crate::store::{Object, Store};

fn address(dir: &Path) -> StoreAddress {
    StoreAddress {
        remote: RemoteSettings {
            cache_dir: Some(dir.join("cache")),
            ..RemoteSettings::default()
        },
        ..StoreAddress::local(dir.join("store"))
    }
}

fn store(dir: &Path) -> Store {
    Store::init(&address(dir), &Default::default()).unwrap()
}

fn handle(dir: &Path) -> Store {
    Store::open(&address(dir), &Secrets::none()).unwrap()
}

/// Writes one pack of `n` chunks through the store's own index (which
/// publishes it to the cache when dropped) or a scratch index (which does
/// not); returns the ids.
fn add_pack(store: &Store, seed: u8, n: usize, publish: bool) -> Vec<Id> {
    let mut index = if publish {
        store.load_index().unwrap()
    } else {
        ChunkIndex::new()
    };
    let mut packer = Packer::new(store);
    let mut ids = Vec::new();
    for i in 0..n {
        let data = format!("chunk {seed} {i} of a test pack");
        let id = store.sealer().chunk_id(data.as_bytes());
        packer.add_raw(&mut index, id, data.as_bytes()).unwrap();
        ids.push(id);
    }
    packer.flush(&mut index).unwrap();
    ids
}

fn index_dir(dir: &Path) -> PathBuf {
    let found: Vec<PathBuf> = fs::read_dir(dir.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path().join("index"))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut s: Vec<PathBuf> = fs::read_dir(index_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "idx"))
        .collect();
    s.sort();
    s
}

#[test]
fn a_pack_added_by_another_handle_is_seen_after_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let a = store(dir.path());
    let first = add_pack(&a, 1, 10, true);
    let b = handle(dir.path());
    let before = b.load_index().unwrap();
    // Published by `a`'s index: `b` finds it in the cache.
    assert!(before.get(&first[3]).unwrap().is_some());
    // A pack the cache was never told of (a scratch index): the next
    // refresh reads its trailer.
    let second = add_pack(&a, 2, 10, false);
    assert!(before.get(&second[0]).unwrap().is_none());
    let after = b.load_index().unwrap();
    for id in first.iter().chain(&second) {
        let loc = after.get(id).unwrap().expect("indexed");
        assert_eq!(b.read_chunk(&after, id).unwrap().len() as u32, loc.raw_len);
    }
    assert_eq!(after.packs().len(), 2);
    assert_eq!(after.chunk_count().unwrap(), 20);
}

#[test]
fn a_deleted_pack_disappears_from_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let kept = add_pack(&s, 1, 5, true);
    let gone = add_pack(&s, 2, 5, true);
    let index = s.load_index().unwrap();
    let pack = index.pack(index.get(&gone[0]).unwrap().unwrap().pack).id;
    drop(index);
    let lock = s.lock_exclusive("test", std::time::Duration::ZERO).unwrap();
    s.delete_pack(&lock, &pack).unwrap();
    drop(lock);
    let index = s.load_index().unwrap();
    assert!(index.get(&gone[0]).unwrap().is_none());
    assert!(index.get(&kept[0]).unwrap().is_some());
    assert_eq!(index.packs().len(), 1);
    assert_eq!(index.chunk_count().unwrap(), 5);
    assert!(index.iter().unwrap().all(|r| r.unwrap().1.pack == 0));
    // The table keeps the row, marked gone.
    let table = fs::read(index_dir(dir.path()).join("packs.tbl")).unwrap();
    assert_eq!(u32::from_le_bytes(table[8..12].try_into().unwrap()), 2);
}

#[test]
fn damaged_cache_files_are_rebuilt_with_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let ids = add_pack(&s, 1, 40, true);
    let want: Vec<_> = ids
        .iter()
        .map(|id| s.load_index().unwrap().get(id).unwrap().unwrap().raw_len)
        .collect();
    let check = || {
        let index = s.load_index().unwrap();
        let got: Vec<_> = ids
            .iter()
            .map(|id| index.get(id).unwrap().unwrap().raw_len)
            .collect();
        assert_eq!(got, want);
    };
    // A flipped byte in a record of the segment.
    let seg = segments(dir.path()).remove(0);
    let mut bytes = fs::read(&seg).unwrap();
    let at = bytes.len() - 40;
    bytes[at] ^= 0x10;
    fs::write(&seg, &bytes).unwrap();
    check();
    let rebuilt = segments(dir.path());
    assert_eq!(rebuilt.len(), 1);
    assert_ne!(fs::read(&rebuilt[0]).unwrap(), bytes, "rebuilt, not kept");
    // A truncated pack table.
    let table = index_dir(dir.path()).join("packs.tbl");
    let len = fs::metadata(&table).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&table)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    check();
    assert_eq!(fs::metadata(&table).unwrap().len(), len);
}

#[test]
fn a_cache_read_that_fails_midway_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let ids = add_pack(&s, 1, 3, true);
    let index = s.load_index().unwrap();
    // The file shrinks under the open index (not something atosnap does:
    // segments are write-once): the read fails, never a wrong answer.
    let seg = segments(dir.path()).remove(0);
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(30)
        .unwrap();
    let err = index.get(&ids[0]).unwrap_err().to_string();
    assert!(err.contains(&seg.display().to_string()), "{err}");
    assert!(s.read_chunk(&index, &ids[0]).is_err());
}

#[test]
fn two_refreshes_at_once_agree() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let mut ids = Vec::new();
    for seed in 0..6 {
        ids.extend(add_pack(&s, seed, 30, false));
    }
    let counts: Vec<usize> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let dir = dir.path();
                let ids = &ids;
                scope.spawn(move || {
                    let h = handle(dir);
                    let mut n = 0;
                    for _ in 0..5 {
                        let index = h.load_index().unwrap();
                        n = ids
                            .iter()
                            .filter(|id| index.get(id).unwrap().is_some())
                            .count();
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert_eq!(counts, vec![ids.len(), ids.len()]);
    let index = s.load_index().unwrap();
    assert_eq!(index.chunk_count().unwrap(), ids.len());
    assert_eq!(index.packs().len(), 6);
}

#[test]
fn cache_files_are_0600_in_0700_folders() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    add_pack(&s, 1, 3, true);
    drop(s.load_index().unwrap());
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let index = index_dir(dir.path());
    for d in [index.parent().unwrap(), &index] {
        assert_eq!(mode(d), 0o700, "{}", d.display());
    }
    let files: Vec<PathBuf> = fs::read_dir(&index)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    for f in files {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
}

#[test]
fn pending_chunks_past_the_cap_are_spilled_and_still_found() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let mut index = s.load_index().unwrap();
    let mut packer = Packer::new(&s);
    let n = PENDING_CAP + PENDING_CAP / 2;
    let ids: Vec<Id> = (0..n)
        .map(|i| {
            let data = (i as u64).to_le_bytes();
            let id = s.sealer().chunk_id(&data);
            packer.add_raw(&mut index, id, &data).unwrap();
            id
        })
        .collect();
    packer.flush(&mut index).unwrap();
    drop(packer);
    // Spilled before it would double: one table of the cap at most.
    assert!(
        index.pending_room() <= PENDING_CAP,
        "{} > {PENDING_CAP}",
        index.pending_room()
    );
    for id in ids.iter().step_by(97) {
        assert_eq!(s.read_chunk(&index, id).unwrap().len(), 8);
    }
    let walked: Vec<Id> = index.iter().unwrap().map(|r| r.unwrap().0).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(walked, sorted, "one sorted walk, each chunk once");
    let before = segments(dir.path()).len();
    drop(index);
    // Published when dropped, as one new segment (the spilled segments
    // and the pending chunks merged in order): the next load reads no
    // trailer and finds every chunk.
    assert_eq!(segments(dir.path()).len(), before + 1);
    let again = handle(dir.path()).load_index().unwrap();
    assert_eq!(again.chunk_count().unwrap(), n);
    let pack = again.pack(again.get(&ids[0]).unwrap().unwrap().pack);
    assert!(s.object_exists(&Object::Pack(pack.id)).unwrap());
}

/// A pack this host's gc deleted is no loss; one gone otherwise (by hand,
/// bit rot, a gc elsewhere) is, and the mark of it outlives the refresh
/// that found it (a copy then looks up every chunk until a whole verify
/// passes: `ops::copy`).
#[test]
fn a_pack_gc_deleted_here_is_no_loss_but_one_gone_otherwise_is_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let a = add_pack(&s, 1, 5, true);
    let b = add_pack(&s, 2, 5, true);
    add_pack(&s, 3, 5, true);
    let index = s.load_index().unwrap();
    let pack_of = |id: &Id| index.pack(index.get(id).unwrap().unwrap().pack).id;
    let (pa, pb) = (pack_of(&a[0]), pack_of(&b[0]));
    drop(index);
    let lock = s.lock_exclusive("test", std::time::Duration::ZERO).unwrap();
    s.delete_pack(&lock, &pa).unwrap();
    drop(lock);
    let index = s.load_index().unwrap();
    assert_eq!((index.packs_lost, index.losses_seen.as_deref()), (0, None));
    drop(index);

    let name = Object::Pack(pb).name();
    fs::remove_file(dir.path().join("store").join(&name)).unwrap();
    let index = s.load_index().unwrap();
    assert_eq!(index.packs_lost, 1);
    let seen = index.losses_seen.clone().expect("the loss is marked");
    drop(index);
    let index = s.load_index().unwrap();
    assert_eq!(index.packs_lost, 0, "found once");
    assert_eq!(
        index.losses_seen.as_deref(),
        Some(seen.as_str()),
        "remembered"
    );
    drop(index);
    let cache = index_dir(dir.path());
    assert!(
        !cache.join("deleted-here").exists(),
        "the refresh took the record of this host's deletions"
    );
    // Cleared only while it is the mark a verify saw.
    s.clear_losses("another mark").unwrap();
    assert!(s.load_index().unwrap().losses_seen.is_some());
    s.clear_losses(&seen).unwrap();
    assert_eq!(s.load_index().unwrap().losses_seen, None);
    // A mark that exists but says nothing counts as a loss.
    fs::write(cache.join("losses-seen"), b"").unwrap();
    assert!(s.load_index().unwrap().losses_seen.is_some());
}
