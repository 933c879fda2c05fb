//! `verify` checks every file's recorded size against the raw lengths of
//! its chunks, as `validate` and `restore` do: a forged manifest (an
//! unencrypted store's checksum is unkeyed) whose size is off is damage,
//! exit 3, named with both numbers, and never recorded as a good verify;
//! found also when the file's tree was walked before, in another snapshot
//! (verify walks each distinct subtree once and keeps what it covers).

use crate::support::{strings, Out, Runtime as Env};
use crate::verify::{damaged_files, stamp_of, verify};
use atosnap::store::manifest::{ChunkList, EntryKind};
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
    // A sampled run (no pack re-hashed) still checks every size, and
    // records the verdict: it is the manifest's, not a pack's.
    let out = verify(&env, &["--sample", "0"]);
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

/// Writes a `.bin` file (cut in fixed 4 KiB blocks) into the Chroma dir
/// whose blocks repeat out of order, A B C A B C ..., with a short tail:
/// one leaf lists each of its chunks many times, never side by side.
fn add_repeating(env: &Env, name: &str) {
    let block = |seed: u8| -> Vec<u8> { (0..4096u32).map(|i| (i % 251) as u8 ^ seed).collect() };
    let mut data = Vec::new();
    for i in 0..30u8 {
        data.extend(block(i % 3 + 1));
    }
    data.extend(&block(7)[..1000]);
    fs::write(env.chroma().join(name), data).unwrap();
}

#[test]
fn sizes_add_up_across_the_runs_of_a_spilled_sort() {
    let env = Env::tiny();
    add_repeating(&env, "repeats.bin");
    let s1 = stamp_of(&env.create(&["--chroma"]));
    let s2 = stamp_of(&env.create(&["--chroma"]));
    let truth = forge_size(&env, &s2, DB, |s| s + 1);
    // A sort of a few items per run: a leaf's items of one chunk land in
    // different runs and must still add up to every slot.
    let out = env.run_env(&["verify"], &[("ATOSNAP_SORT_BUDGET_BYTES", "1024")]);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert_refused(&env, &out, &s2, DB, truth + 1, truth);
    assert_whole(&env, &out, &s1);
    // In RAM, the same.
    let out = verify(&env, &[]);
    assert_refused(&env, &out, &s2, DB, truth + 1, truth);
    assert_whole(&env, &out, &s1);
}

// ---- format 1 ----------------------------------------------------------------

/// Rewrites the recorded size of `path` in snapshot `stamp` of a plain
/// format-1 store (`Manifest::encode` writes format 2 only): in the
/// manifest's bincode, the size is the u64 before the length and first
/// id of the file's id list. The true size.
fn forge_v1_size(env: &Env, stamp: &str, path: &str, to: impl FnOnce(u64) -> u64) -> u64 {
    let m = env.manifest(stamp);
    let f = m
        .entries
        .iter()
        .find(|e| e.path == path.as_bytes())
        .and_then(|e| e.file())
        .unwrap_or_else(|| panic!("{path} is a file of {stamp}"));
    let ChunkList::Ids(ids) = &f.list else {
        panic!("{path} of {stamp} holds no format-1 list")
    };
    let file = env.snapshot_dir(stamp).join("manifest.bin");
    let bytes = fs::read(&file).unwrap();
    let (magic, rest) = bytes.split_at(8);
    let mut raw = zstd::decode_all(&rest[..rest.len() - 32]).unwrap();
    let mut pattern = f.size.to_le_bytes().to_vec();
    pattern.extend((ids.len() as u64).to_le_bytes());
    pattern.extend(ids[0].0);
    let at: Vec<usize> = (0..raw.len().saturating_sub(pattern.len()))
        .filter(|&i| raw[i..].starts_with(&pattern))
        .collect();
    assert_eq!(at.len(), 1, "the entry of {path} found once");
    raw[at[0]..at[0] + 8].copy_from_slice(&to(f.size).to_le_bytes());
    let mut out = magic.to_vec();
    out.extend(zstd::encode_all(&raw[..], 3).unwrap());
    let sum = *blake3::hash(&out).as_bytes();
    out.extend(sum);
    fs::write(&file, out).unwrap();
    f.size
}

/// A format-1 file (its manifest lists every chunk id) is a leaf of its
/// own: one whose recorded size is off is found, the other snapshots'
/// (the same ids, the true size) are whole.
#[test]
fn a_format_1_file_of_the_wrong_size_is_damage() {
    let env = Env::tiny();
    crate::support::copy_tree(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/format1/plain"),
        &env.store,
    );
    let stamp = "20260102T000000Z";
    assert_eq!(verify(&env, &[]).json["ok"], true);
    let truth = forge_v1_size(&env, stamp, DB, |s| s - 1);
    let out = verify(&env, &[]);
    assert_eq!(out.code, 3, "{out:?}");
    let want = format!(
        "size_mismatch: {DB} ({} bytes recorded, its chunks hold {truth})",
        truth - 1
    );
    for (s, health) in out.json["snapshots"].as_object().unwrap() {
        if s == stamp {
            assert_eq!(health["ok"], false, "{health}");
            assert_eq!(damaged_files(&out, s), vec![DB.to_string()]);
            assert_eq!(strings(&health["file_errors"]), vec![want.clone()]);
        } else {
            assert_eq!(health["ok"], true, "{s}: {health}");
        }
    }
    let validated = env.run(&["validate", stamp]);
    assert_eq!(validated.code, 3, "{validated:?}");
    assert!(validated.strings("errors").contains(&want), "{validated:?}");
}
