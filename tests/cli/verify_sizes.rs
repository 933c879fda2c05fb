//! `verify` checks every file's recorded size against the raw lengths of
//! its chunks, as `validate` and `restore` do: a forged manifest (an
//! unencrypted store's checksum is unkeyed) whose size is off is damage,
//! exit 3, named with both numbers, and never recorded as a good verify;
//! found also when the file's tree was walked before, in another snapshot
//! (verify walks each distinct subtree once and keeps what it covers).

use crate::support::{strings, Out, Runtime as Env};
use crate::verify::{damaged_files, stamp_of, verify};
use atosnap::store::manifest::EntryKind;
use serde_json::Value;
use std::fs;

const DB: &str = "atocore.db";

/// Two snapshots of the tiny runtime with nothing changed in between: the
/// second's files have the first's list trees.
fn same_twice() -> (Env, String, String) {
    let env = Env::tiny();
    let s1 = stamp_of(&env.create(&["--chroma"]));
    let s2 = stamp_of(&env.create(&["--chroma"]));
    assert_eq!(env.list_root(&s1, DB), env.list_root(&s2, DB));
    (env, s1, s2)
}

/// Rewrites the recorded size of `path` in snapshot `stamp` to what `to`
/// makes of it; the true size.
fn forge_size(env: &Env, stamp: &str, path: &str, to: impl FnOnce(u64) -> u64) -> u64 {
    let mut truth = None;
    env.forge_manifest(stamp, |m| {
        let e = m.entries.iter_mut().find(|e| e.path == path.as_bytes());
        if let Some(EntryKind::File(f)) = e.map(|e| &mut e.kind) {
            truth = Some(f.size);
            f.size = to(f.size);
        }
    });
    truth.unwrap_or_else(|| panic!("{path} is a file of {stamp}"))
}

/// The verify log record `out`'s run wrote (an unencrypted store's is JSON).
fn record(env: &Env, out: &Out) -> Value {
    let name = out.json["recorded"].as_str().expect("a verify record");
    serde_json::from_slice(&fs::read(env.store.join(name)).unwrap()).unwrap()
}

/// `out` refuses snapshot `stamp` for `path` alone, recorded at `recorded`
/// bytes where its chunks hold `holds`: exit 3, the file named, the
/// verify log and `list` saying not ok, and validate finding the same.
fn assert_refused(env: &Env, out: &Out, stamp: &str, path: &str, recorded: u64, holds: u64) {
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.json["ok"], false, "{out:?}");
    let health = &out.json["snapshots"][stamp];
    assert_eq!(health["ok"], false, "{health}");
    assert_eq!(damaged_files(out, stamp), vec![path.to_string()]);
    let want =
        format!("size_mismatch: {path} ({recorded} bytes recorded, its chunks hold {holds})");
    assert_eq!(strings(&health["file_errors"]), vec![want.clone()]);
    assert_eq!(record(env, out)["snapshots"][stamp], false);
    let list = env.ok(&["list"]);
    let listed = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stamp"] == stamp)
        .expect("listed");
    assert_eq!(listed["last_verify"]["ok"], false, "{listed}");
    // The one finding validate makes too, in the same words.
    let validated = env.run(&["validate", stamp]);
    assert_eq!(validated.code, 3, "{validated:?}");
    assert!(validated.strings("errors").contains(&want), "{validated:?}");
}

/// `out` finds snapshot `stamp` whole.
fn assert_whole(env: &Env, out: &Out, stamp: &str) {
    assert_eq!(out.json["snapshots"][stamp]["ok"], true, "{out:?}");
    assert_eq!(record(env, out)["snapshots"][stamp], true);
}

#[test]
fn a_size_one_byte_off_is_damage_where_the_tree_was_walked_before() {
    let (env, s1, s2) = same_twice();
    // s1 is walked first and keeps the tree's bytes; s2 (one byte more
    // recorded) is checked against what s1's walk kept.
    let truth = forge_size(&env, &s2, DB, |s| s + 1);
    let out = verify(&env, &[]);
    assert_refused(&env, &out, &s2, DB, truth + 1, truth);
    assert_whole(&env, &out, &s1);
    // Named alone, s2 walks the tree itself.
    let out = verify(&env, &["--snapshot", &s2]);
    assert_refused(&env, &out, &s2, DB, truth + 1, truth);
    // One byte less is as wrong as one more.
    forge_size(&env, &s2, DB, |s| s - 2);
    let out = verify(&env, &[]);
    assert_refused(&env, &out, &s2, DB, truth - 1, truth);
}

#[test]
fn a_size_one_chunk_larger_is_damage_and_no_repair_heals_it() {
    let (env, s1, s2) = same_twice();
    let first = env.file_chunks(&s1, DB)[0];
    let store = env.open_store();
    let index = store.load_index().unwrap();
    let chunk = index.get(&first).unwrap().expect("indexed").raw_len as u64;
    drop((index, store));
    // s1, walked first, is the forged one; s2 shares its tree and is whole.
    let truth = forge_size(&env, &s1, DB, |s| s + chunk);
    let out = verify(&env, &[]);
    assert_refused(&env, &out, &s1, DB, truth + chunk, truth);
    assert_whole(&env, &out, &s2);
    // Repair salvages chunks, not manifests: the file stays damaged.
    let out = verify(&env, &["--repair"]);
    assert_refused(&env, &out, &s1, DB, truth + chunk, truth);
    let repair = &out.json["repair"];
    assert_eq!(repair["healed"], false, "{repair}");
    assert_eq!(
        strings(&repair["still_damaged"][&s1]["damaged_files"]),
        vec![DB.to_string()]
    );
    assert!(repair["still_damaged"].get(&s2).is_none(), "{repair}");
}
