//! Fault injection against `verify` (issue 5): small stores built here and
//! broken on purpose, each fault detected with the right exit code and
//! attributed to the right snapshot and file, never a panic; `--sample`
//! and `--repair` (quarantine, salvage, self-healing by the next create).

use crate::support::{
    self, flip_bit, open_up, run_cmd, strings, truncate, unprivileged, Out, Runtime as Env,
};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use atosnap::id::Id;
use atosnap::store::pack;

/// Runs verify; it must never panic and exits 0 (ok) or 3 (not ok).
pub(super) fn verify(env: &Env, args: &[&str]) -> Out {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    let out = env.run(&all);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    let ok = out.json["ok"].as_bool().expect("a verify report");
    assert_eq!(out.code, if ok { 0 } else { 3 }, "{out:?}");
    out
}

pub(super) fn stamp_of(v: &Value) -> String {
    v["stamp"].as_str().unwrap().to_string()
}

/// Two snapshots of the tiny runtime, the db and a Chroma file changed in
/// between; each create writes its own pack.
pub(super) fn two_snapshots() -> (Env, String, String) {
    let env = Env::tiny();
    env.init_with_single_chunk_frames();
    let s1 = stamp_of(&env.create(&["--chroma"]));
    change_runtime(&env, 1);
    let s2 = stamp_of(&env.create(&["--chroma"]));
    (env, s1, s2)
}

fn change_runtime(env: &Env, round: u64) {
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    conn.execute(
        "UPDATE memories SET content = content || ?1 WHERE id % 50 = 0",
        [format!(" (edit {round})")],
    )
    .unwrap();
    fs::write(
        env.chroma().join("seg/index_metadata.pickle"),
        support::pseudo_random(100 + round, 10_000),
    )
    .unwrap();
}

pub(super) fn pack_name_of(env: &Env, path: &Path) -> String {
    path.strip_prefix(&env.store)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// A db chunk both snapshots share.
pub(super) fn shared_db_chunk(env: &Env, s1: &str, s2: &str) -> Id {
    let b: BTreeSet<Id> = env.file_chunks(s2, "atocore.db").into_iter().collect();
    *env.file_chunks(s1, "atocore.db")
        .iter()
        .skip(1)
        .find(|id| b.contains(id))
        .expect("a shared db page")
}

fn health<'a>(out: &'a Out, stamp: &str) -> &'a Value {
    &out.json["snapshots"][stamp]
}

pub(super) fn damaged_files(out: &Out, stamp: &str) -> Vec<String> {
    strings(&health(out, stamp)["damaged_files"])
}

// ---- a healthy store --------------------------------------------------------------

#[test]
fn clean_store_reports_every_field() {
    let (env, s1, s2) = two_snapshots();
    let out = verify(&env, &[]);
    for field in [
        "ok",
        "objects_checked",
        "chunks_checked",
        "bytes_checked",
        "corrupt",
        "missing",
        "damaged_objects",
        "orphans",
        "reclaimable_bytes",
        "snapshots",
        "duration_ms",
        "packs_total",
        "packs_sampled",
    ] {
        assert!(out.json.get(field).is_some(), "verify lacks {field}");
    }
    assert_eq!(out.json["ok"], true);
    let packs = env.packs();
    assert_eq!(packs.len(), 2);
    assert_eq!(out.json["objects_checked"], 2);
    assert_eq!(out.json["packs_total"], 2);
    assert_eq!(out.json["packs_sampled"], 2);
    let total: u64 = packs.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    assert_eq!(out.json["bytes_checked"], total);
    let store = env.open_store();
    let chunks: usize = packs
        .iter()
        .map(|p| {
            let name = pack_name_of(&env, p);
            store
                .read_pack_index(
                    &atosnap::store::Object::Listed(name),
                    fs::metadata(p).unwrap().len(),
                )
                .unwrap()
                .chunks
                .len()
        })
        .sum();
    assert_eq!(out.json["chunks_checked"], chunks as u64);
    assert_eq!(out.json["orphans"], serde_json::json!([]));
    // The first snapshot's old pages and pickle are referenced: nothing dead.
    assert_eq!(out.json["reclaimable_bytes"], 0);
    for s in [&s1, &s2] {
        assert_eq!(health(&out, s)["ok"], true);
        assert_eq!(damaged_files(&out, s), Vec::<String>::new());
    }
}

#[test]
fn orphans_and_dead_chunks_are_reclaimable_not_errors() {
    let (env, s1, s2) = two_snapshots();
    fs::remove_dir_all(env.snapshot_dir(&s1)).unwrap();
    let out = verify(&env, &[]);
    assert_eq!(out.json["ok"], true, "{out:?}");
    // The first pack still holds the pages both share; the old pickle and
    // the old pages are dead in it.
    assert_eq!(out.json["orphans"], serde_json::json!([]));
    let dead = out.json["reclaimable_bytes"].as_u64().unwrap();
    assert!(dead >= 10_000, "dead bytes {dead}");

    fs::remove_dir_all(env.snapshot_dir(&s2)).unwrap();
    let out = verify(&env, &[]);
    assert_eq!(out.json["ok"], true);
    let mut orphans = strings(&out.json["orphans"]);
    orphans.sort();
    let mut packs: Vec<String> = env.packs().iter().map(|p| pack_name_of(&env, p)).collect();
    packs.sort();
    assert_eq!(orphans, packs);
    let total: u64 = env
        .packs()
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(out.json["reclaimable_bytes"], total);
}

#[test]
fn verify_snapshot_checks_only_what_it_references() {
    let env = Env::tiny();
    env.init_with_single_chunk_frames();
    let s1 = stamp_of(&env.create(&["--chroma"]));
    let first_packs = env.packs();
    // A second runtime with nothing in common: a new pack of its own.
    fs::remove_file(env.db()).unwrap();
    support::make_db(&env.db(), 120, false);
    {
        let conn = rusqlite::Connection::open(env.db()).unwrap();
        conn.execute("UPDATE memories SET content = 'other ' || content", [])
            .unwrap();
    }
    fs::remove_dir_all(env.chroma()).unwrap();
    fs::write(env.registry(), br#"{"projects": []}"#).unwrap();
    let s2 = stamp_of(&env.create(&[]));
    let s2_pack: Vec<PathBuf> = env
        .packs()
        .into_iter()
        .filter(|p| !first_packs.contains(p))
        .collect();
    assert_eq!(s2_pack.len(), 1);
    // Damage a chunk that only the first snapshot uses.
    let id = env.file_chunks(&s1, "chroma/seg/data_level0.bin")[2];
    let (pack, offset, len) = env.chunk_location(&id);
    assert_eq!(pack, first_packs[0]);
    flip_bit(&pack, offset + len / 3);
    // And delete the first snapshot's summary: not the second's business.
    fs::remove_file(env.snapshot_dir(&s1).join("backup-metadata.json")).unwrap();

    let out = verify(&env, &["--snapshot", &s2]);
    assert_eq!(out.json["ok"], true, "{out:?}");
    assert_eq!(out.json["orphans"], serde_json::json!([]));
    assert_eq!(out.json["reclaimable_bytes"], 0);
    let snaps = out.json["snapshots"].as_object().unwrap();
    assert_eq!(snaps.keys().collect::<Vec<_>>(), vec![&s2]);
    assert_eq!(out.json["objects_checked"], 1);
    assert_eq!(
        out.json["bytes_checked"],
        fs::metadata(&s2_pack[0]).unwrap().len()
    );

    let out = verify(&env, &["--snapshot", &s1]);
    assert_eq!(out.json["ok"], false);
    assert_eq!(out.json["corrupt"], serde_json::json!([id.to_hex()]));
    assert_eq!(
        damaged_files(&out, &s1),
        vec!["chroma/seg/data_level0.bin".to_string()]
    );
    assert!(health(&out, &s1)["metadata_error"]
        .as_str()
        .unwrap()
        .starts_with("metadata_missing"));
    assert_eq!(out.json["orphans"], serde_json::json!([]));

    // Both named: both reported.
    let out = verify(&env, &["--snapshot", &s1, "--snapshot", &s2]);
    assert_eq!(out.json["ok"], false);
    assert_eq!(health(&out, &s2)["ok"], true);
    assert_eq!(health(&out, &s1)["ok"], false);

    let out = verify(&env, &["--snapshot", "20200101T000000Z"]);
    assert_eq!(out.json["ok"], false);
    assert!(health(&out, "20200101T000000Z")["error"]
        .as_str()
        .unwrap()
        .starts_with("snapshot_missing"));
}

// ---- faults, each detected, attributed, repaired -------------------------------------

#[test]
fn flipped_bit_in_a_chunk_then_repair_and_self_healing() {
    let (env, s1, s2) = two_snapshots();
    let id = shared_db_chunk(&env, &s1, &s2);
    let (pack, offset, len) = env.chunk_location(&id);
    let pack_name = pack_name_of(&env, &pack);
    flip_bit(&pack, offset + len / 2);

    let out = verify(&env, &[]);
    assert_eq!(out.json["ok"], false);
    assert_eq!(out.json["corrupt"], serde_json::json!([id.to_hex()]));
    assert_eq!(out.json["missing"], serde_json::json!([]));
    assert_eq!(out.json["damaged_objects"], serde_json::json!([pack_name]));
    assert!(out.json["damage"][&pack_name]
        .as_str()
        .unwrap()
        .contains(&id.to_hex()));
    for s in [&s1, &s2] {
        assert_eq!(health(&out, s)["ok"], false);
        assert_eq!(damaged_files(&out, s), vec!["atocore.db".to_string()]);
    }
    let v = env.run(&["validate", &s2]);
    assert_eq!(v.code, 3);
    assert!(v.strings("errors").contains(&format!("chunk_corrupt:{id}")));

    // Repair: the pack is quarantined, its other chunks kept.
    let out = verify(&env, &["--repair"]);
    assert_eq!(out.json["ok"], false, "repair reports what it found");
    let repair = &out.json["repair"];
    assert_eq!(repair["quarantined"][0]["object"], pack_name.as_str());
    let moved_to = repair["quarantined"][0]["moved_to"].as_str().unwrap();
    assert!(moved_to.starts_with("quarantine/"));
    assert!(env.store.join(moved_to).is_file(), "kept, never deleted");
    assert!(env.store.join(format!("{moved_to}.json")).is_file());
    assert!(!pack.exists());
    assert!(repair["chunks_salvaged"].as_u64().unwrap() > 10);
    assert_eq!(repair["chunks_lost"], serde_json::json!([id.to_hex()]));
    assert_eq!(repair["packs_written"].as_array().unwrap().len(), 1);
    assert_eq!(repair["healed"], false);
    for s in [&s1, &s2] {
        assert_eq!(
            strings(&repair["still_damaged"][s]["damaged_files"]),
            vec!["atocore.db".to_string()]
        );
    }

    // Now the chunk is missing, not corrupt, and nothing else is wrong.
    let out = verify(&env, &[]);
    assert_eq!(out.json["missing"], serde_json::json!([id.to_hex()]));
    assert_eq!(out.json["corrupt"], serde_json::json!([]));
    assert_eq!(out.json["damaged_objects"], serde_json::json!([]));
    assert_eq!(out.json["quarantined_objects"], 1);

    // The next create stores the page again from the live db: every
    // snapshot that shares it heals.
    let s3 = stamp_of(&env.create(&["--chroma"]));
    let v = env.run(&["validate", &s3]);
    assert_eq!(v.code, 0, "{v:?}");
    let out = verify(&env, &[]);
    assert_eq!(out.json["ok"], true, "{out:?}");
    assert_eq!(env.run(&["validate", &s1]).code, 0);
}

#[test]
fn truncated_pack_is_damaged_and_its_chunks_missing() {
    let (env, s1, s2) = two_snapshots();
    let id = shared_db_chunk(&env, &s1, &s2);
    let (pack, _, _) = env.chunk_location(&id);
    let pack_name = pack_name_of(&env, &pack);
    let missing = env.first_missing(&s1, "atocore.db", &pack, id);
    // Whether the second snapshot's db list is a delta on the first's leaf.
    let s2_needs_s1_list = missing != id && env.reachable_ids(&s2).contains(&missing);
    let len = fs::metadata(&pack).unwrap().len();
    truncate(&pack, len * 2 / 3);

    let out = verify(&env, &[]);
    assert_eq!(out.json["ok"], false);
    assert_eq!(out.json["damaged_objects"], serde_json::json!([pack_name]));
    assert!(strings(&out.json["missing"]).contains(&missing.to_hex()));
    for s in [&s1, &s2] {
        let files = damaged_files(&out, s);
        assert!(files.contains(&"atocore.db".to_string()), "{s}: {files:?}");
        assert!(files.contains(&"project-registry.json".to_string()));
    }
    // Structure alone finds it too.
    let quick = verify(&env, &["--sample", "0"]);
    assert_eq!(
        quick.json["damaged_objects"],
        serde_json::json!([pack_name])
    );

    let out = verify(&env, &["--repair"]);
    let repair = &out.json["repair"];
    assert_eq!(repair["quarantined"][0]["object"], pack_name.as_str());
    assert_eq!(repair["chunks_salvaged"], 0);
    assert!(strings(&repair["chunks_lost"]).contains(&missing.to_hex()));
    let s3 = stamp_of(&env.create(&["--chroma"]));
    assert_eq!(env.run(&["validate", &s3]).code, 0);
    // The runtime has not changed since the second snapshot: its chunks
    // heal; the first keeps the pages that only it had. A list blob is
    // not rebuilt from the live runtime: when the second snapshot's db
    // list is a delta on the first's lost leaf, it stays damaged and
    // names that leaf.
    let v = env.run(&["validate", &s2]);
    match s2_needs_s1_list {
        false => assert_eq!(v.code, 0, "{v:?}"),
        true => {
            assert_eq!(v.code, 3, "{v:?}");
            assert!(v
                .strings("errors")
                .contains(&format!("chunk_missing:{missing}")));
        }
    }
    let out = verify(&env, &[]);
    assert_eq!(health(&out, &s2)["ok"], !s2_needs_s1_list);
    assert_eq!(health(&out, &s3)["ok"], true);
    assert_eq!(health(&out, &s1)["ok"], false);
    assert!(damaged_files(&out, &s1).contains(&"atocore.db".to_string()));
}

#[test]
fn deleted_pack_is_missing_chunks() {
    let (env, s1, s2) = two_snapshots();
    // The second pack holds only what changed: the new pickle and pages.
    let second_pack = env
        .packs()
        .into_iter()
        .find(|p| {
            let id = env.file_chunks(&s2, "chroma/seg/index_metadata.pickle")[0];
            env.chunk_location(&id).0 == *p
        })
        .unwrap();
    fs::remove_file(&second_pack).unwrap();
    let out = verify(&env, &[]);
    assert_eq!(out.json["ok"], false);
    assert_eq!(out.json["damaged_objects"], serde_json::json!([]));
    assert!(!strings(&out.json["missing"]).is_empty());
    assert_eq!(health(&out, &s1)["ok"], true);
    let files = damaged_files(&out, &s2);
    assert!(files.contains(&"chroma/seg/index_metadata.pickle".to_string()));
    assert!(files.contains(&"atocore.db".to_string()));
    assert!(!files.contains(&"project-registry.json".to_string()));

    let out = verify(&env, &["--repair"]);
    assert_eq!(out.json["repair"]["quarantined"], serde_json::json!([]));
    assert_eq!(
        out.json["repair"]["still_damaged"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec![&s2]
    );
    let s3 = stamp_of(&env.create(&["--chroma"]));
    assert_eq!(env.run(&["validate", &s3]).code, 0);
    assert_eq!(verify(&env, &[]).json["ok"], true);
}

/// Rewrites a format-2 pack of an unencrypted store with its trailer
/// changed by `edit`, with a valid checksum and named by its new hash, so
/// that only the contents can tell.
pub(super) fn rewrite_trailer(
    env: &Env,
    pack: &Path,
    edit: impl FnOnce(&mut atosnap::store::pack2::TrailerV2),
) -> String {
    use atosnap::store::pack2::TrailerV2;
    use atosnap::store::seal::Sealer;
    let bytes = fs::read(pack).unwrap();
    let size = bytes.len() as u64;
    let (blob_end, len, _) =
        pack::parse_trailer(size, &bytes[bytes.len() - pack::TRAILER_LEN..]).unwrap();
    let body = bytes[blob_end as usize..blob_end as usize + len].to_vec();
    let mut trailer = TrailerV2::open(body, blob_end, &Sealer::Plain).unwrap();
    edit(&mut trailer);
    let index = trailer.seal(3, &Sealer::Plain).unwrap();
    let mut out = bytes[..blob_end as usize].to_vec();
    out.extend_from_slice(&index);
    out.extend_from_slice(&(index.len() as u32).to_le_bytes());
    out.extend_from_slice(blake3::hash(&index).as_bytes());
    out.extend_from_slice(pack::TRAILER_MAGIC);
    let name = pack::pack_name(&Id::hash(&out));
    fs::remove_file(pack).unwrap();
    let dest = env.store.join(&name);
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    fs::write(dest, out).unwrap();
    name
}

#[test]
fn pack_whose_index_disagrees_with_its_contents() {
    let (env, s1, s2) = two_snapshots();
    let a = env.file_chunks(&s1, "chroma/seg/data_level0.bin")[1];
    let b = env.file_chunks(&s1, "chroma/seg/data_level0.bin")[5];
    let (pack, _, _) = env.chunk_location(&a);
    // Swap two chunk records (one-chunk frames of equal size): the layout
    // stays tidy, the ids lie.
    let name = rewrite_trailer(&env, &pack, |t| {
        let i = t.chunks.iter().position(|c| c.id == a).unwrap();
        let j = t.chunks.iter().position(|c| c.id == b).unwrap();
        t.chunks[i].id = b;
        t.chunks[j].id = a;
    });
    let out = verify(&env, &[]);
    assert_eq!(out.json["ok"], false);
    let mut expected = vec![a.to_hex(), b.to_hex()];
    expected.sort();
    assert_eq!(out.json["corrupt"], serde_json::json!(expected));
    assert_eq!(out.json["damaged_objects"], serde_json::json!([name]));
    for s in [&s1, &s2] {
        assert_eq!(
            damaged_files(&out, s),
            vec!["chroma/seg/data_level0.bin".to_string()]
        );
    }
    // The sample says what it re-hashed.
    let quick = verify(&env, &["--sample", "0"]);
    assert_eq!(quick.json["packs_sampled"], 0);
    assert_eq!(quick.json["sampled_percent"], 0.0);
    assert_eq!(quick.json["chunks_checked"], 0);

    let out = verify(&env, &["--repair"]);
    let mut lost = strings(&out.json["repair"]["chunks_lost"]);
    lost.sort();
    assert_eq!(lost, expected);
    let s3 = stamp_of(&env.create(&["--chroma"]));
    assert_eq!(env.run(&["validate", &s3]).code, 0);
    assert_eq!(verify(&env, &[]).json["ok"], true);
}

/// The frame (one chunk each in `two_snapshots`' stores) holding chunk
/// record `id` of a trailer.
fn frame_index(t: &atosnap::store::pack2::TrailerV2, id: &Id) -> (usize, usize) {
    let ci = t.chunks.iter().position(|c| c.id == *id).unwrap();
    (t.frame_of(ci).unwrap(), ci)
}

#[test]
fn overlapping_or_gapped_index_entries_are_structural_damage() {
    // A format-2 trailer whose frames overlap is refused whole when read:
    // the pack is damaged and its chunks unknown (missing).
    let (env, s1, _) = two_snapshots();
    let a = env.file_chunks(&s1, "chroma/seg/data_level0.bin")[3];
    let (pack, _, _) = env.chunk_location(&a);
    // What a reader misses first once the pack is refused whole.
    let first = env.first_missing(&s1, "chroma/seg/data_level0.bin", &pack, a);
    let name = rewrite_trailer(&env, &pack, |t| {
        let (fi, _) = frame_index(t, &a);
        t.frames[fi].offset -= 10;
    });
    // Found without re-hashing anything.
    let out = verify(&env, &["--sample", "0"]);
    assert_eq!(out.json["ok"], false);
    assert_eq!(out.json["damaged_objects"], serde_json::json!([name]));
    let detail = out.json["damage"][&name].as_str().unwrap();
    assert!(detail.contains("tile"), "{detail}");
    let out = verify(&env, &[]);
    assert!(
        strings(&out.json["missing"]).contains(&first.to_hex()),
        "{out:?}"
    );
    assert!(damaged_files(&out, &s1).contains(&"chroma/seg/data_level0.bin".to_string()));

    // A raw frame whose recorded length is not its stored length.
    let (env, s1, _) = two_snapshots();
    let a = env.file_chunks(&s1, "chroma/seg/data_level0.bin")[0];
    let (pack, _, _) = env.chunk_location(&a);
    let first = env.first_missing(&s1, "chroma/seg/data_level0.bin", &pack, a);
    let name = rewrite_trailer(&env, &pack, |t| {
        let (fi, ci) = frame_index(t, &a);
        assert_eq!(
            t.frames[fi].codec,
            atosnap::store::pack2::Codec::Raw,
            "random data is stored raw"
        );
        t.chunks[ci].raw_len += 1;
    });
    let out = verify(&env, &["--sample", "0"]);
    assert_eq!(out.json["damaged_objects"], serde_json::json!([name]));
    let detail = out.json["damage"][&name].as_str().unwrap();
    assert!(detail.contains("raw frame"), "{detail}");
    assert!(
        strings(&out.json["missing"]).contains(&first.to_hex()),
        "{out:?}"
    );
}

#[test]
fn garbage_manifest_is_attributed_to_its_snapshot() {
    let (env, s1, s2) = two_snapshots();
    fs::write(
        env.snapshot_dir(&s1).join("manifest.bin"),
        support::pseudo_random(5, 3000),
    )
    .unwrap();
    let out = verify(&env, &[]);
    assert_eq!(out.json["ok"], false);
    assert!(health(&out, &s1)["error"]
        .as_str()
        .unwrap()
        .starts_with("manifest_corrupt"));
    assert_eq!(health(&out, &s2)["ok"], true);
    assert_eq!(out.json["damaged_objects"], serde_json::json!([]));
    // Repair cannot rebuild a manifest; it says so and leaves it in place.
    let out = verify(&env, &["--repair"]);
    let still = &out.json["repair"]["still_damaged"];
    assert!(still[&s1]["error"]
        .as_str()
        .unwrap()
        .starts_with("manifest_corrupt"));
    assert_eq!(out.json["repair"]["healed"], false);
    assert!(env.snapshot_dir(&s1).join("manifest.bin").is_file());
    assert_eq!(
        env.run(&["list"]).json["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn missing_or_corrupt_summary_is_reported_and_rebuilt() {
    let (env, s1, s2) = two_snapshots();
    let before = env.run(&["list"]).json["snapshots"][0].clone();
    let meta1 = env.snapshot_dir(&s1).join("backup-metadata.json");
    fs::remove_file(&meta1).unwrap();
    fs::write(
        env.snapshot_dir(&s2).join("backup-metadata.json"),
        b"{ not json",
    )
    .unwrap();

    // list still works and names the problem.
    let list = env.run(&["list"]);
    assert_eq!(list.code, 0, "{list:?}");
    let entries = list.json["snapshots"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries[0]["error"]
        .as_str()
        .unwrap()
        .contains("backup-metadata.json"));
    assert!(entries[1]["error"].as_str().is_some());

    let out = verify(&env, &[]);
    assert_eq!(out.json["ok"], false);
    let m1 = health(&out, &s1)["metadata_error"].as_str().unwrap();
    assert!(
        m1.starts_with("metadata_missing") && m1.contains(&s1),
        "{m1}"
    );
    assert!(health(&out, &s2)["metadata_error"]
        .as_str()
        .unwrap()
        .starts_with("metadata_corrupt"));
    assert_eq!(damaged_files(&out, &s1), Vec::<String>::new());

    let out = verify(&env, &["--repair"]);
    let mut rewritten = strings(&out.json["repair"]["metadata_rewritten"]);
    rewritten.sort();
    assert_eq!(rewritten, vec![s1.clone(), s2.clone()]);
    assert_eq!(out.json["repair"]["healed"], true);
    // The corrupt summary was moved aside, not deleted.
    assert!(out.json["repair"]["quarantined"]
        .as_array()
        .unwrap()
        .iter()
        .any(|q| q["object"] == format!("snapshots/{s2}/backup-metadata.json")));
    let list = env.run(&["list"]);
    let after = &list.json["snapshots"][0];
    assert!(after.get("error").is_none(), "{after}");
    for field in [
        "stamp",
        "created_at",
        "tags",
        "db_size_bytes",
        "chroma_snapshot_included",
        "chroma_snapshot_files",
        "chroma_snapshot_bytes",
        "validated",
    ] {
        assert_eq!(after[field], before[field], "{field}");
    }
    assert_eq!(verify(&env, &[]).json["ok"], true);
}

#[test]
fn unreadable_pack_and_manifest() {
    let Some(cmd) = unprivileged() else {
        eprintln!("skipped: running as root without setpriv");
        return;
    };
    let (env, s1, s2) = two_snapshots();
    let id = shared_db_chunk(&env, &s1, &s2);
    let (pack, _, _) = env.chunk_location(&id);
    let pack_name = pack_name_of(&env, &pack);
    let missing = env.first_missing(&s1, "atocore.db", &pack, id);
    open_up(env.dir.path());
    fs::set_permissions(&pack, fs::Permissions::from_mode(0o000)).unwrap();
    let manifest2 = env.snapshot_dir(&s2).join("manifest.bin");
    fs::set_permissions(&manifest2, fs::Permissions::from_mode(0o000)).unwrap();
    let as_user = |args: &[&str]| {
        let mut c = std::process::Command::new(cmd.get_program());
        c.args(cmd.get_args());
        c.arg("--quiet").arg("--store").arg(&env.store).args(args);
        let out = run_cmd(&mut c);
        assert!(!out.stderr.contains("panicked"));
        out
    };
    let out = as_user(&["verify"]);
    // The manifest that does not read is damage; the pack is only unreadable.
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.json["damaged_objects"], serde_json::json!([]));
    assert!(out.json["unreadable"][&pack_name]
        .as_str()
        .unwrap()
        .contains("unreadable"));
    assert!(strings(&health(&out, &s1)["unreadable_files"]).contains(&"atocore.db".to_string()));
    let err = health(&out, &s2)["error"].as_str().unwrap();
    assert!(
        err.starts_with("manifest_corrupt") && err.contains("ermission denied"),
        "{err}"
    );

    let v = as_user(&["validate", &s1]);
    assert_eq!(v.code, 3);
    assert!(v
        .strings("errors")
        .contains(&format!("chunk_missing:{missing}")));

    let out = as_user(&["verify", "--repair"]);
    assert_eq!(out.code, 3);
    assert_eq!(out.json["repair"]["quarantined"], serde_json::json!([]));
    assert_eq!(
        out.json["repair"]["unreadable"],
        serde_json::json!([pack_name])
    );
    assert!(pack.is_file(), "left in place");
    fs::set_permissions(&manifest2, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&pack, fs::Permissions::from_mode(0o644)).unwrap();
    let s3 = stamp_of(&env.create(&["--chroma"]));
    assert_eq!(env.run(&["validate", &s3]).code, 0);
    assert_eq!(verify(&env, &[]).json["ok"], true);
}

/// Issue 14, item 9: a pack that cannot be read (EACCES here; an S3
/// timeout alike) is not damage: reported as `unreadable`, exit 1, never
/// quarantined by `--repair`, and fine again once readable.
#[test]
fn unreadable_pack_is_reported_and_left_in_place() {
    let Some(cmd) = unprivileged() else {
        eprintln!("skipped: running as root without setpriv");
        return;
    };
    let (env, s1, s2) = two_snapshots();
    let id = shared_db_chunk(&env, &s1, &s2);
    let (pack, _, _) = env.chunk_location(&id);
    let pack_name = pack_name_of(&env, &pack);
    let size = fs::metadata(&pack).unwrap().len();
    open_up(env.dir.path());
    fs::set_permissions(&pack, fs::Permissions::from_mode(0o000)).unwrap();
    let as_user = |args: &[&str]| {
        let mut c = std::process::Command::new(cmd.get_program());
        c.args(cmd.get_args());
        c.arg("--quiet").arg("--store").arg(&env.store).args(args);
        let out = run_cmd(&mut c);
        assert!(!out.stderr.contains("panicked"));
        out
    };
    for args in [&["verify"][..], &["verify", "--sample", "0"]] {
        let out = as_user(args);
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert_eq!(out.json["ok"], false);
        assert_eq!(out.json["damaged_objects"], serde_json::json!([]));
        assert_eq!(out.json["corrupt"], serde_json::json!([]));
        assert_eq!(out.json["missing"], serde_json::json!([]));
        let detail = out.json["unreadable"][&pack_name].as_str().unwrap();
        assert!(detail.contains("ermission denied"), "{detail}");
        assert_eq!(damaged_files(&out, &s1), Vec::<String>::new());
        assert!(strings(&health(&out, &s1)["unreadable_files"]).contains(&"atocore.db".to_string()));
    }
    let out = as_user(&["verify", "--repair"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.json["repair"]["quarantined"], serde_json::json!([]));
    assert_eq!(out.json["repair"]["chunks_lost"], serde_json::json!([]));
    assert_eq!(out.json["repair"]["healed"], false);
    assert_eq!(
        out.json["repair"]["unreadable"],
        serde_json::json!([pack_name])
    );
    assert_eq!(fs::metadata(&pack).unwrap().len(), size, "left in place");
    assert_eq!(out.json["quarantined_objects"], 0);

    fs::set_permissions(&pack, fs::Permissions::from_mode(0o644)).unwrap();
    let out = verify(&env, &[]);
    assert_eq!(out.json["ok"], true, "{out:?}");
    assert_eq!(out.json["unreadable"], serde_json::json!({}));
}

#[test]
fn stale_temp_file_is_not_an_error() {
    let (env, _, _) = two_snapshots();
    let tmp = env.store.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    // A temp of a writer that died (a name of the earlier `<pid>-<random>`
    // form), and a file no atosnap temp (never atosnap's to remove).
    let (left, other) = (
        tmp.join("4194304-00000000000000bb.pack"),
        tmp.join("not-a-temp-name.pack"),
    );
    fs::write(&left, b"half a pack").unwrap();
    fs::write(&other, b"someone's").unwrap();
    let out = verify(&env, &[]);
    assert_eq!(out.json["ok"], true, "{out:?}");
    assert!(left.exists());
    let out = verify(&env, &["--repair"]);
    assert_eq!(out.json["ok"], true);
    assert_eq!(out.json["repair"]["tmp_files_removed"], 1);
    assert_eq!(out.json["repair"]["healed"], true);
    assert!(!left.exists() && other.exists());
}

// ---- the mark sorted on disk ------------------------------------------------------

/// A command's JSON without what differs between two runs of it.
fn steady(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("duration_ms");
        o.remove("recorded");
    }
    v
}

/// verify, verify --snapshot, gc (dry run), stats --per-snapshot and
/// validate report exactly the same whether the mark's sort keeps every id
/// in one run or spills them to many (a budget of a few dozen ids), on a
/// store with several snapshots, delta leaves, a deleted snapshot (an
/// orphan pack and partly live frames), a corrupt chunk and a missing
/// list blob's worth of missing chunks.
#[test]
fn a_mark_spilled_to_many_runs_reports_what_one_run_does() {
    let env = Env::tiny();
    env.ok(&["init"]);
    // Leaves of 4 ids: one changed page makes delta leaves, and the trees
    // have interior nodes.
    let path = env.store.join("config.json");
    let mut config: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    config["lists"]["leaf_slots"] = Value::from(4);
    config["lists"]["max_chain"] = Value::from(8);
    fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();

    let s1 = stamp_of(&env.create(&["--chroma"]));
    change_runtime(&env, 1);
    let s2 = stamp_of(&env.create(&["--chroma"]));
    env.add_junk("junk.bin", 300_000, 5);
    let s3 = stamp_of(&env.create(&["--chroma"]));
    fs::remove_file(env.chroma().join("junk.bin")).unwrap();
    change_runtime(&env, 2);
    let s4 = stamp_of(&env.create(&["--chroma"]));
    // s3 gone: its junk pack is an orphan; s1 gone: frames of the first
    // pack are partly live.
    fs::remove_dir_all(env.snapshot_dir(&s3)).unwrap();
    fs::remove_dir_all(env.snapshot_dir(&s1)).unwrap();

    let runs = |args: &[&str]| {
        let one = env.run(args);
        let many = env.run_env(args, &[("ATOSNAP_SORT_BUDGET_BYTES", "1024")]);
        assert!(!many.stderr.contains("panicked"), "{}", many.stderr);
        assert_eq!(one.code, many.code, "{args:?}: {one:?} / {many:?}");
        assert_eq!(steady(one.json.clone()), steady(many.json), "{args:?}");
        one
    };
    let healthy = runs(&["verify"]);
    assert_eq!(healthy.json["ok"], true, "{healthy:?}");
    assert!(healthy.json["reclaimable_bytes"].as_u64().unwrap() > 300_000);
    assert_eq!(healthy.json["orphans"].as_array().unwrap().len(), 1);
    let gc = runs(&["gc"]);
    assert!(!gc.strings("would_delete_packs").is_empty(), "{gc:?}");
    let stats = runs(&["stats", "--per-snapshot"]);
    assert_eq!(stats.json["per_snapshot"].as_array().unwrap().len(), 2);
    runs(&["validate", &s4]);

    // A corrupt frame holding a page both snapshots share, and a lost
    // pack (chunks and list blobs missing).
    let id = shared_db_chunk(&env, &s2, &s4);
    let (pack, offset, len) = env.chunk_location(&id);
    flip_bit(&pack, offset + len / 2);
    let v = runs(&["verify"]);
    assert!(!strings(&v.json["corrupt"]).is_empty(), "{v:?}");
    runs(&["verify", "--snapshot", &s2]);
    runs(&["verify", "--subset", "1/2"]);
    runs(&["gc"]);
    runs(&["stats", "--per-snapshot"]);
    assert_eq!(runs(&["validate", &s2]).code, 3);

    let newest = env
        .packs()
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().modified().unwrap())
        .unwrap();
    fs::remove_file(&newest).unwrap();
    let v = runs(&["verify"]);
    assert!(!strings(&v.json["missing"]).is_empty(), "{v:?}");
    runs(&["verify", "--snapshot", &s4]);
    runs(&["stats", "--per-snapshot"]);
    runs(&["validate", &s4]);
    // Nothing of the sorts is left behind.
    assert_eq!(env.tmp_entries(), Vec::<String>::new());
}
