//! `drill` and `diff`, black-box through the binary on the fixture runtime.

use crate::support::Runtime as Rt;
use crate::support::*;
use serde_json::Value;

const SEGMENT: &str = "e8763d70-0924-4389-9e69-cddb1f90792c";

fn last_drill(rt: &Rt, stamp: &str) -> Value {
    let list = rt.ok(&["list"]);
    list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stamp"] == stamp)
        .unwrap()["last_drill"]
        .clone()
}

#[test]
fn drill_proves_the_newest_snapshot_and_logs_it() {
    let rt = Rt::fixture();
    let s1 = rt.create_stamp(&[]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let s2 = rt.create_stamp(&["--chroma"]);
    let live_before = tree(&rt.runtime);

    let d = rt.ok(&["drill"]);
    assert_same_tree!(tree(&rt.runtime), live_before, "live data untouched");
    assert_eq!(d["stamp"], s2.as_str(), "defaults to the newest");
    assert_eq!(d["ok"], true, "{d}");
    // db + registry + 6 Chroma files
    assert_eq!(d["files_checked"], 8);
    let bytes: u64 = walkdir::WalkDir::new(rt.chroma())
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().unwrap().len())
        .sum::<u64>()
        + std::fs::metadata(rt.registry()).unwrap().len();
    let db_size = rt.ok(&["list"])["snapshots"][1]["db_size_bytes"]
        .as_u64()
        .unwrap();
    assert_eq!(d["bytes_checked"].as_u64().unwrap(), bytes + db_size);
    assert_eq!(d["db_integrity_ok"], true);
    assert_eq!(d["sqlite_files_checked"], 1, "chroma.sqlite3");
    assert_eq!(d["table_rows"]["memories"], FIXTURE_MEMORIES);
    assert_eq!(d["table_rows"]["interactions"], 600);
    assert_eq!(d["errors"], serde_json::json!([]));
    assert!(d["duration_ms"].is_u64());

    let mark = last_drill(&rt, &s2);
    assert_eq!(mark["ok"], true);
    assert!(mark["at"].as_str().unwrap().starts_with("20"));
    assert!(last_drill(&rt, &s1).is_null());
    // The scratch restore is gone.
    let leftovers: Vec<_> = std::fs::read_dir(rt.store.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // An explicit stamp, without Chroma.
    let d = rt.ok(&["drill", &s1]);
    assert_eq!(d["stamp"], s1.as_str());
    assert_eq!(d["files_checked"], 2);
    assert_eq!(d["sqlite_files_checked"], 0);
    assert_eq!(last_drill(&rt, &s1)["ok"], true);
}

#[test]
fn drill_of_a_damaged_snapshot_fails_with_exit_3_and_is_logged() {
    let rt = Rt::fixture();
    let s1 = rt.create_stamp(&["--chroma"]);
    rt.ok(&["drill", &s1]);
    rt.corrupt_packs();
    let Out { json: d, code, .. } = rt.run(&["drill", &s1]);
    assert_eq!(code, 3, "{d}");
    assert_eq!(d["ok"], false);
    let errors = d["errors"].as_array().unwrap();
    assert!(!errors.is_empty());
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("chunk_corrupt")),
        "{errors:?}"
    );
    assert_eq!(d["db_integrity_ok"], false);
    assert_eq!(last_drill(&rt, &s1)["ok"], false, "the newest drill wins");
}

#[test]
fn drill_refuses_clearly_without_snapshots_or_with_an_unknown_stamp() {
    let rt = Rt::fixture();
    rt.ok(&["init"]);
    let Out { json, code, .. } = rt.run(&["drill"]);
    assert_eq!(
        (code, json["error"]["code"].as_str()),
        (1, Some("no_snapshots"))
    );
    let Out { json, code, .. } = rt.run(&["drill", "20200101T000000Z"]);
    assert_eq!(
        (code, json["error"]["code"].as_str()),
        (1, Some("snapshot_missing"))
    );
    let Out { json, code, .. } = rt.run(&["drill", "../x"]);
    assert_eq!(
        (code, json["error"]["code"].as_str()),
        (1, Some("invalid_stamp"))
    );
    assert!(!rt.store.join("drills").exists(), "nothing logged");
}

#[test]
fn diff_lists_added_removed_and_changed_files_with_byte_counts() {
    let rt = Rt::fixture();
    let s1 = rt.create_stamp(&["--chroma"]);
    // One 4 KiB block of the HNSW data, a new file, a removed file, a row.
    let data = rt.chroma().join(SEGMENT).join("data_level0.bin");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[8192..8292].fill(0xab);
    std::fs::write(&data, bytes).unwrap();
    std::fs::write(rt.chroma().join("added.txt"), b"hello").unwrap();
    std::fs::remove_file(rt.chroma().join(SEGMENT).join("length.bin")).unwrap();
    rt.insert_marker("diff");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let s2 = rt.create_stamp(&["--chroma"]);

    let d = rt.ok(&["diff", &s1, &s2]);
    assert_eq!(d["from"], s1.as_str());
    assert_eq!(d["to"], s2.as_str());
    assert_eq!(
        d["added"],
        serde_json::json!([{"path": "chroma/added.txt", "size": 5}])
    );
    assert_eq!(
        d["removed"],
        serde_json::json!([{"path": format!("chroma/{SEGMENT}/length.bin"), "size": 8000}])
    );
    let changed = d["changed"].as_array().unwrap();
    let find = |p: &str| changed.iter().find(|c| c["path"] == p).cloned();
    let bin = find(&format!("chroma/{SEGMENT}/data_level0.bin")).unwrap();
    assert_eq!(bin["size_from"], 3_352_000);
    assert_eq!(bin["size_to"], 3_352_000);
    assert_eq!(bin["bytes_differing"], 4096, "one fixed block");
    let db = find("atocore.db").unwrap();
    let differing = db["bytes_differing"].as_u64().unwrap();
    assert!(differing > 0 && differing % 4096 == 0, "{db}");
    assert!(differing < 100 * 4096, "a row changes a few pages: {db}");
    assert_eq!(changed.len(), 2, "{changed:?}");
    // registry, chroma.sqlite3, header.bin, index_metadata.pickle, link_lists.bin
    assert_eq!(d["unchanged_files"], 5);
    // The lists are sorted on disk: with a 1 KiB budget (many runs per
    // file) the answer is the same.
    let spilled = rt.run_env(
        &["diff", &s1, &s2],
        &[("ATOSNAP_SORT_BUDGET_BYTES", "1024")],
    );
    assert_eq!(spilled.code, 0, "{spilled:?}");
    assert_eq!(spilled.json, d);

    let same = rt.ok(&["diff", &s2, &s2]);
    assert_eq!(same["added"], serde_json::json!([]));
    assert_eq!(same["removed"], serde_json::json!([]));
    assert_eq!(same["changed"], serde_json::json!([]));
    assert_eq!(same["unchanged_files"], 8);

    let Out { json, code, .. } = rt.run(&["diff", &s1, "20200101T000000Z"]);
    assert_eq!(
        (code, json["error"]["code"].as_str()),
        (1, Some("snapshot_missing"))
    );
    let Out { code, .. } = rt.run(&["diff", &s1]);
    assert_eq!(code, 2, "usage");
}

/// A drill killed mid-restore leaves its scratch restore (the size of the
/// runtime) in the store's `tmp/`: its folder names its owner, so the next
/// writer sweeps it rather than leaving it until a gc.
#[test]
fn a_killed_drills_scratch_is_swept_by_the_next_writer() {
    let rt = Rt::fixture();
    let s1 = rt.create_stamp(&["--chroma"]);
    let out = rt.run_env(
        &["drill", &s1],
        &[("ATOSNAP_FAILPOINT", "restore:after-stage")],
    );
    assert_eq!(out.code, 137, "{out:?}");
    let scratch = || -> Vec<String> {
        std::fs::read_dir(rt.store.join("tmp"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("-drill-"))
            .collect()
    };
    assert_eq!(scratch().len(), 1, "the killed drill's scratch");
    rt.create(&["--chroma"]);
    assert_eq!(scratch(), Vec::<String>::new());
}
