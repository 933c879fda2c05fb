//! Fault injection against `verify`, continued from `verify.rs`: repair
//! after an interrupted run, `--sample`, repair's locking, large packs and
//! layout gaps, the files cache after a repair, and read-only auditors.

use super::verify::{
    damaged_files, pack_name_of, rewrite_trailer, shared_db_chunk, stamp_of, two_snapshots, verify,
};
use crate::support::{self, flip_bit, run_cmd, strings, truncate, unprivileged, Runtime as Env};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;

/// A repair cut short after moving a pack aside converges when run again:
/// the referenced chunks still intact in quarantine are taken back.
#[test]
fn repair_recovers_from_quarantine_after_an_interrupted_run() {
    let (env, s1, s2) = two_snapshots();
    let id = shared_db_chunk(&env, &s1, &s2);
    let (pack, _, _) = env.chunk_location(&id);
    let missing = env.first_missing(&s1, "atocore.db", &pack, id);
    let q = env.store.join("quarantine");
    fs::create_dir_all(&q).unwrap();
    fs::rename(&pack, q.join(pack.file_name().unwrap())).unwrap();
    let out = verify(&env, &[]);
    assert!(strings(&out.json["missing"]).contains(&missing.to_hex()));
    let out = verify(&env, &["--repair"]);
    let repair = &out.json["repair"];
    assert!(repair["chunks_salvaged"].as_u64().unwrap() > 0);
    assert_eq!(repair["chunks_lost"], serde_json::json!([]));
    assert_eq!(repair["healed"], true);
    let out = verify(&env, &[]);
    assert_eq!(out.json["ok"], true, "{out:?}");
    assert_eq!(env.run(&["validate", &s1]).code, 0);
}

// ---- --sample ----------------------------------------------------------------

/// A store whose packs are small, so there are many.
fn many_packs() -> (Env, String) {
    let env = Env::tiny();
    assert_eq!(env.run(&["init"]).code, 0);
    let path = env.store.join("config.json");
    let mut config: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    config["pack"]["target_size"] = (8 * 1024).into();
    // Frames of one chunk, so that packs close every 8 KiB.
    config["frames"]["max_chunks"] = 1.into();
    fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let s = stamp_of(&env.create(&["--chroma"]));
    assert!(env.packs().len() >= 8, "{} packs", env.packs().len());
    (env, s)
}

#[test]
fn sample_rehashes_a_share_and_checks_the_rest_structurally() {
    let (env, s) = many_packs();
    let n = env.packs().len() as u64;
    let out = verify(&env, &["--sample", "50"]);
    assert_eq!(out.json["ok"], true);
    assert_eq!(out.json["packs_total"], n);
    assert_eq!(out.json["packs_sampled"], n.div_ceil(2));
    assert_eq!(out.json["sampled_percent"], 50.0);
    assert_eq!(out.json["objects_checked"], n);

    // A flipped bit: always found at 100 %, never by structure alone.
    let id = env.file_chunks(&s, "chroma/seg/data_level0.bin")[4];
    let (pack, offset, len) = env.chunk_location(&id);
    flip_bit(&pack, offset + len / 2);
    let full = verify(&env, &["--sample", "100"]);
    assert_eq!(full.json["corrupt"], serde_json::json!([id.to_hex()]));
    assert_eq!(full.json["packs_sampled"], n);
    let quick = verify(&env, &["--sample", "0"]);
    assert_eq!(quick.json["ok"], true);
    assert_eq!(quick.json["chunks_checked"], 0);
    // Sampling finds it in about the share of runs it samples (all or
    // none of 20 runs: odds of 1 in 500,000).
    let found = (0..20)
        .filter(|_| verify(&env, &["--sample", "50"]).json["ok"] == false)
        .count();
    assert!(found > 0 && found < 20, "found in {found} of 20 runs");

    // A truncated pack: found by structure, whatever the sample.
    let other = env
        .packs()
        .into_iter()
        .find(|p| *p != pack)
        .expect("another pack");
    truncate(&other, 100);
    let quick = verify(&env, &["--sample", "0"]);
    assert_eq!(quick.json["ok"], false);
    assert!(strings(&quick.json["damaged_objects"]).contains(&pack_name_of(&env, &other)));

    let bad = env.run(&["verify", "--sample", "150"]);
    assert_eq!(bad.code, 2);
    assert_eq!(bad.error_code(), "usage");
}

// ---- locking -------------------------------------------------------------------

#[test]
fn repair_waits_for_writers_and_says_who() {
    let (env, _, _) = two_snapshots();
    let _shared = atosnap::store::lock::lock_shared(
        &env.store,
        "a test writer",
        std::time::Duration::from_secs(1),
    )
    .unwrap();
    let out = env.run(&["--lock-wait", "0", "verify", "--repair"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.error_code(), "store_locked");
    assert!(out.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("a test writer"));
    // A plain verify shares the lock with writers.
    assert_eq!(verify(&env, &[]).json["ok"], true);
}

// ---- large packs and layout gaps ---------------------------------------------------

/// A pack of several MiB is streamed in blocks: every chunk is checked,
/// across block boundaries, and a flipped bit far into it is found.
#[test]
fn large_pack_is_checked_across_blocks() {
    let env = Env::fixture();
    let s = stamp_of(&env.create(&["--chroma"]));
    let packs = env.packs();
    assert_eq!(packs.len(), 1);
    let size = fs::metadata(&packs[0]).unwrap().len();
    assert!(size > 8 << 20, "pack of {size} bytes");
    let layout = env
        .open_store()
        .read_pack_index(
            &atosnap::store::Object::Listed(pack_name_of(&env, &packs[0])),
            size,
        )
        .unwrap();
    let out = verify(&env, &[]);
    assert_eq!(out.json["ok"], true);
    assert_eq!(out.json["chunks_checked"], layout.chunks.len() as u64);
    assert_eq!(out.json["bytes_checked"], size);

    // A frame beyond the first blocks, and the one straddling 4 MiB.
    let frames = &layout.frames;
    let far = (0..frames.len())
        .filter(|&i| frames[i].offset as u64 > 6 << 20)
        .max_by_key(|&i| frames[i].stored_len)
        .unwrap();
    let straddling = (0..frames.len())
        .find(|&i| (frames[i].offset as u64) < 4 << 20 && frames[i].end() > 4 << 20)
        .expect("a frame across the 4 MiB mark");
    flip_bit(
        &packs[0],
        frames[far].offset as u64 + frames[far].stored_len as u64 / 2,
    );
    flip_bit(&packs[0], frames[straddling].end() - 1);
    let out = verify(&env, &[]);
    let ids = |fi: usize| -> BTreeSet<String> {
        layout
            .frame_chunks(fi)
            .iter()
            .map(|c| c.id.to_hex())
            .collect()
    };
    let corrupt: BTreeSet<String> = strings(&out.json["corrupt"]).into_iter().collect();
    // Each damaged frame names its chunks (all of them when the frame no
    // longer decodes), and nothing else is named.
    assert!(!corrupt.is_disjoint(&ids(far)), "{corrupt:?}");
    assert!(!corrupt.is_disjoint(&ids(straddling)), "{corrupt:?}");
    assert!(corrupt.is_subset(&ids(far).union(&ids(straddling)).cloned().collect()));
    assert_eq!(out.json["chunks_checked"], layout.chunks.len() as u64);
    assert!(!damaged_files(&out, &s).is_empty());
}

#[test]
fn bytes_outside_every_index_entry_are_structural_damage() {
    // A format-2 trailer that leaves out a frame (bytes of the body no
    // record covers) is refused whole: the pack is damaged, its chunks are
    // missing, and repair cannot locate them either.
    let (env, s1, _) = two_snapshots();
    let a = env.file_chunks(&s1, "chroma/seg/index_metadata.pickle")[0];
    let (pack, _, _) = env.chunk_location(&a);
    // What a reader misses first once the pack is refused whole.
    let first = env.first_missing(&s1, "chroma/seg/index_metadata.pickle", &pack, a);
    let name = rewrite_trailer(&env, &pack, |t| {
        let ci = t.chunks.iter().position(|c| c.id == a).unwrap();
        let fi = t.frame_of(ci).unwrap();
        let n = t.frames[fi].n_chunks as u32;
        t.chunks.drain(ci..ci + n as usize);
        t.frames.remove(fi);
        for f in &mut t.frames[fi..] {
            f.first_chunk -= n;
        }
    });
    let out = verify(&env, &["--sample", "0"]);
    assert_eq!(out.json["ok"], false);
    assert_eq!(out.json["damaged_objects"], serde_json::json!([name]));
    assert!(out.json["damage"][&name].as_str().unwrap().contains("tile"));
    assert!(strings(&out.json["missing"]).contains(&first.to_hex()));
    assert!(damaged_files(&out, &s1).contains(&"chroma/seg/index_metadata.pickle".to_string()));
    let out = verify(&env, &["--repair"]);
    assert!(strings(&out.json["repair"]["chunks_lost"]).contains(&first.to_hex()));
}

/// The files cache never vouches for a file whose chunks repair dropped:
/// the next create reads it again and the store heals.
#[test]
fn files_cache_does_not_hide_a_lost_chunk() {
    let env = Env::tiny();
    env.init_with_single_chunk_frames();
    // Out of the files cache's window for just-modified files (not a
    // timing assertion: the cache is simply not trusted for 2 s).
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let s1 = stamp_of(&env.create(&["--chroma"]));
    let second = env.create(&["--chroma"]);
    // Both plain files and both SQLite databases (unchanged db and -wal).
    assert_eq!(second["files_from_cache"], 4, "{second}");
    let id = env.file_chunks(&s1, "chroma/seg/data_level0.bin")[7];
    let (pack, offset, len) = env.chunk_location(&id);
    flip_bit(&pack, offset + len / 2);
    let out = verify(&env, &["--repair"]);
    assert_eq!(
        out.json["repair"]["chunks_lost"],
        serde_json::json!([id.to_hex()])
    );
    let third = env.create(&["--chroma"]);
    assert_eq!(third["files_from_cache"], 3, "{third}");
    assert_eq!(third["chunks_new"], 1, "{third}");
    assert_eq!(env.run(&["validate", &stamp_of(&third)]).code, 0);
    let out = verify(&env, &[]);
    assert_eq!(out.json["ok"], true, "{out:?}");
}

/// An auditor that can read the store but not write it (a monitoring user,
/// a read-only mount) can still list, validate and verify it.
#[test]
fn readers_audit_a_store_they_cannot_write() {
    let Some(cmd) = unprivileged() else {
        eprintln!("skipped: running as root without setpriv");
        return;
    };
    if !support::is_root() {
        eprintln!("skipped: needs a store owned by another user");
        return;
    }
    let (env, s1, _) = two_snapshots();
    // World-readable, writable by its owner (root) only.
    for e in walkdir::WalkDir::new(&env.store).into_iter().flatten() {
        let mode = if e.file_type().is_dir() { 0o755 } else { 0o644 };
        fs::set_permissions(e.path(), fs::Permissions::from_mode(mode)).unwrap();
    }
    let as_user = |args: &[&str]| {
        let mut c = std::process::Command::new(cmd.get_program());
        c.args(cmd.get_args());
        c.arg("--quiet").arg("--store").arg(&env.store).args(args);
        run_cmd(&mut c)
    };
    let out = as_user(&["verify"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["ok"], true);
    let out = as_user(&["list"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = as_user(&["validate", &s1]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["valid"], true);
    // Repair needs to write: refused with a clear error.
    let out = as_user(&["verify", "--repair"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.error_code(), "permission_denied");
}

/// Repair limited to one snapshot's objects must not lose the chunks other
/// snapshots keep in the pack it quarantines.
#[test]
fn repair_of_one_snapshot_keeps_the_others_chunks() {
    let (env, s1, s2) = two_snapshots();
    let id = shared_db_chunk(&env, &s1, &s2);
    let (pack, offset, len) = env.chunk_location(&id);
    // The first snapshot's old pickle lives in the same pack; the live
    // runtime no longer has it, so losing it would be for good.
    let old_pickle = env.file_chunks(&s1, "chroma/seg/index_metadata.pickle")[0];
    assert_eq!(env.chunk_location(&old_pickle).0, pack);
    flip_bit(&pack, offset + len / 2);

    let out = verify(&env, &["--snapshot", &s2, "--repair"]);
    assert_eq!(
        out.json["repair"]["chunks_lost"],
        serde_json::json!([id.to_hex()])
    );
    // Every snapshot the lost chunk touches is named, not only the one asked.
    let still = out.json["repair"]["still_damaged"].as_object().unwrap();
    assert_eq!(still.keys().collect::<Vec<_>>(), vec![&s1, &s2]);

    let s3 = stamp_of(&env.create(&["--chroma"]));
    assert_eq!(env.run(&["validate", &s3]).code, 0);
    let out = verify(&env, &[]);
    assert_eq!(out.json["ok"], true, "{out:?}");
    assert_eq!(env.run(&["validate", &s1]).code, 0);
}
