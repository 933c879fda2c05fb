//! The chunk index cache (format2.md §1.5), black box: it only saves
//! work. Removing it, damaging it or running two commands on it at once
//! changes no result, and a pack gc deletes leaves it.

use crate::support::Runtime;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

/// The document without what changes from run to run: times, the
/// record each verify adds (its name, and the store bytes it takes).
fn stable(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|k, _| {
                    !["at", "recorded", "store_bytes", "duration_ms"].contains(&k.as_str())
                });
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

/// The files of the index cache (the test's cache dir, see
/// `Runtime::bare_command`).
fn index_files(rt: &Runtime) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(stores) = fs::read_dir(rt.path("cache")) else {
        return out;
    };
    for s in stores {
        let dir = s.unwrap().path().join("index");
        if let Ok(files) = fs::read_dir(&dir) {
            out.extend(files.map(|f| f.unwrap().path()));
        }
    }
    out.sort();
    out
}

fn named(rt: &Runtime, ext: &str) -> PathBuf {
    index_files(rt)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(ext))
        .unwrap_or_else(|| panic!("no *{ext} in {:?}", index_files(rt)))
}

/// Two snapshots, the second with data of its own.
fn two_snapshots() -> Runtime {
    let rt = Runtime::tiny();
    rt.create(&["--chroma"]);
    rt.add_junk("noise.bin", 150 * 1024, 3);
    rt.create(&["--chroma"]);
    rt
}

/// The newest snapshot's stamp.
fn newest(rt: &Runtime) -> String {
    let list = rt.ok(&["list"]);
    let stamps: Vec<String> = (list["snapshots"].as_array().unwrap().iter())
        .map(|s| s["stamp"].as_str().unwrap().to_string())
        .collect();
    stamps.into_iter().max().unwrap_or_else(|| panic!("{list}"))
}

fn results(rt: &Runtime) -> Vec<Value> {
    let stamp = newest(rt);
    [
        &["validate", stamp.as_str()][..],
        &["verify"],
        &["list"],
        &["stats"],
    ]
    .iter()
    .map(|args| stable(rt.ok(args)))
    .collect()
}

fn pack_files(store: &Path) -> u64 {
    walkdir::WalkDir::new(store.join("objects"))
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
        .count() as u64
}

#[test]
fn deleting_the_index_cache_changes_no_result() {
    let rt = two_snapshots();
    let first = results(&rt);
    assert!(
        index_files(&rt).iter().any(|p| p.ends_with("packs.tbl")),
        "a local store's index is cached: {:?}",
        index_files(&rt)
    );
    fs::remove_dir_all(rt.path("cache")).unwrap();
    assert_eq!(results(&rt), first);
    // And again from the cache the runs above rebuilt.
    assert_eq!(results(&rt), first);
}

#[test]
fn a_damaged_index_cache_is_rebuilt_and_results_are_unchanged() {
    let rt = two_snapshots();
    let want = results(&rt);
    let seg = named(&rt, ".idx");
    let mut bytes = fs::read(&seg).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();
    assert_eq!(
        results(&rt),
        want,
        "after a flipped byte in {}",
        seg.display()
    );
    let rebuilt = named(&rt, ".idx");
    assert_ne!(fs::read(&rebuilt).unwrap(), bytes, "the segment is rebuilt");

    let table = named(&rt, "packs.tbl");
    let len = fs::metadata(&table).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&table)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    assert_eq!(results(&rt), want, "after a truncated pack table");
    assert_eq!(fs::metadata(&table).unwrap().len(), len);
}

#[test]
fn two_commands_refreshing_at_once_agree() {
    let rt = two_snapshots();
    let stamp = newest(&rt);
    let want = stable(rt.ok(&["validate", &stamp]));
    fs::remove_dir_all(rt.path("cache")).unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            let mut cmd = rt.command();
            cmd.args(["validate", &stamp])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    for child in children {
        let out = crate::support::parse(&child.wait_with_output().unwrap());
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(stable(out.json), want);
    }
    assert_eq!(stable(rt.ok(&["validate", &stamp])), want);
}

#[test]
fn packs_deleted_by_gc_leave_the_index() {
    let rt = two_snapshots();
    let first = rt.ok(&["list"]);
    let stamp = first["snapshots"][0]["stamp"]
        .as_str()
        .unwrap_or_else(|| panic!("{first}"))
        .to_string();
    let before = rt.ok(&["stats"]);
    assert_eq!(before["packs"].as_u64(), Some(pack_files(&rt.store)));
    // A pack only the first snapshot needs: forget it, gc, and the
    // store has fewer packs; stats (which reads the cached index) agrees.
    rt.add_junk("noise.bin", 150 * 1024, 4);
    rt.create(&["--chroma"]);
    rt.ok(&["forget", "--confirm", &stamp]);
    let second = rt.ok(&["list"])["snapshots"][0]["stamp"].clone();
    rt.ok(&["forget", "--confirm", second.as_str().unwrap()]);
    let gc = rt.ok(&["gc", "--confirm"]);
    let after = rt.ok(&["stats"]);
    assert_eq!(
        after["packs"].as_u64(),
        Some(pack_files(&rt.store)),
        "{gc}\n{after}"
    );
    assert_eq!(after["chunks_missing"].as_u64(), Some(0), "{after}");
    assert_eq!(rt.ok(&["verify"])["ok"], true);
}

/// A segment damaged in place with its mtime put back (as bit rot leaves
/// it): the `verified` record still vouches for it, but only writers trust
/// that record; every reader checks the segment whole, finds the damage
/// and rebuilds. A writer trusting it can only store a chunk again.
#[test]
fn a_segment_damaged_behind_its_recorded_check_is_caught_by_every_reader() {
    use std::os::unix::fs::FileExt;
    let rt = two_snapshots();
    // Two seconds after the segments were written, a writer records them.
    std::thread::sleep(std::time::Duration::from_millis(2200));
    rt.create(&["--chroma"]);
    assert!(
        index_files(&rt).iter().any(|p| p.ends_with("verified")),
        "{:?}",
        index_files(&rt)
    );
    let want = results(&rt);
    let seg = named(&rt, ".idx");
    let mtime = filetime::FileTime::from_last_modification_time(&fs::metadata(&seg).unwrap());
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .unwrap();
    let mut n = [0u8; 8];
    f.read_exact_at(&mut n, 8).unwrap();
    let n = u64::from_le_bytes(n);
    // A byte of the id of the middle record.
    let at = 24 + 4 * n + 60 * (n / 2) + 5;
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0x10], at).unwrap();
    drop(f);
    filetime::set_file_mtime(&seg, mtime).unwrap();
    let damaged = fs::read(&seg).unwrap();
    let after = results(&rt);
    assert_eq!(after, want, "after a damaged record in {}", seg.display());
    let rebuilt = fs::read(named(&rt, ".idx")).unwrap();
    assert_ne!(rebuilt, damaged, "the segment was rebuilt");

    // Damaged again: a writer trusts the record, and at worst stores a
    // chunk again; its snapshot is whole.
    std::thread::sleep(std::time::Duration::from_millis(2200));
    rt.create(&["--chroma"]);
    let seg = named(&rt, ".idx");
    let mtime = filetime::FileTime::from_last_modification_time(&fs::metadata(&seg).unwrap());
    let mut bytes = fs::read(&seg).unwrap();
    bytes[at as usize] ^= 0x10;
    fs::write(&seg, &bytes).unwrap();
    filetime::set_file_mtime(&seg, mtime).unwrap();
    rt.add_junk("more.bin", 20 * 1024, 9);
    let created = rt.create(&["--chroma"]);
    assert_eq!(created["validated"], true, "{created}");
    let verified = rt.ok(&["verify"]);
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["missing"], serde_json::json!([]), "{verified}");
}
