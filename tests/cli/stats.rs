//! `atosnap stats [--per-snapshot]`, black box: the figures against what
//! `create`, `gc` and the manifests say, an empty store, a missing one and
//! an encrypted one.

use crate::support::Runtime;
use serde_json::Value;
use std::fs;

fn u(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a count: {v}"))
}

/// The per-snapshot entry of `stamp`.
fn share<'a>(stats: &'a Value, stamp: &str) -> &'a Value {
    stats["per_snapshot"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stamp"] == stamp)
        .unwrap_or_else(|| panic!("{stamp} not in {stats}"))
}

#[test]
fn stats_add_up_with_create_gc_and_the_manifests() {
    let rt = Runtime::tiny();
    let a = rt.create(&["--chroma"]);
    let a_stamp = a["stamp"].as_str().unwrap();

    // One snapshot alone: its unique chunks are all the store holds, and
    // all it added.
    let one = rt.ok(&["stats", "--per-snapshot"]);
    assert_eq!(u(&one, "snapshots"), 1, "{one}");
    let a_share = share(&one, a_stamp);
    assert_eq!(u(a_share, "unique_chunks"), u(&a, "chunks_new"), "{one}");
    assert_eq!(u(a_share, "unique_chunks"), u(&one, "chunks"));
    assert_eq!(
        u(a_share, "unique_stored_bytes"),
        u(&one, "unique_stored_bytes")
    );
    assert!(u(a_share, "unique_stored_bytes") <= u(&a, "bytes_new_stored"));
    assert_eq!(u(&one, "deduplicated_bytes"), u(a_share, "raw_bytes"));

    // A second snapshot adding 200 KiB of noise (stored raw) to the same
    // data: its unique share is exactly that new data.
    rt.add_junk("noise.bin", 200 * 1024, 7);
    let b = rt.create(&["--chroma"]);
    let b_stamp = b["stamp"].as_str().unwrap();
    let two = rt.ok(&["stats", "--per-snapshot"]);
    assert_eq!(u(&two, "snapshots"), 2);
    let b_share = share(&two, b_stamp);
    assert_eq!(u(b_share, "unique_chunks"), u(&b, "chunks_new"), "{two}");
    let unique_raw = u(b_share, "unique_raw_bytes");
    assert!(unique_raw >= 200 * 1024, "{two}");
    assert!(u(b_share, "unique_stored_bytes") <= u(&b, "bytes_new_stored"));
    assert!(u(b_share, "unique_stored_bytes") >= 200 * 1024);
    // Every file of A is in B unchanged: A has nothing of its own.
    assert_eq!(u(share(&two, a_stamp), "unique_chunks"), 0, "{two}");
    assert_eq!(u(b_share, "files"), u(share(&two, a_stamp), "files") + 1);
    assert_eq!(
        u(b_share, "raw_bytes"),
        u(share(&two, a_stamp), "raw_bytes") + 200 * 1024
    );

    // Store-wide figures.
    let raw_sum = u(share(&two, a_stamp), "raw_bytes") + u(b_share, "raw_bytes");
    assert_eq!(u(&two, "deduplicated_bytes"), raw_sum);
    assert!(u(&two, "unique_raw_bytes") < raw_sum, "{two}");
    assert!(two["dedup_ratio"].as_f64().unwrap() > 1.5, "{two}");
    assert!(two["compression_ratio"].as_f64().unwrap() >= 1.0, "{two}");
    assert!(u(&two, "store_bytes") > u(&two, "unique_stored_bytes"));
    assert!(u(&two, "packs") >= 2);
    assert_eq!(u(&two, "chunks_missing"), 0);
    assert_eq!(two["compression"], "auto");
    assert_eq!(two["encryption"], "none");
    // Without the flag, no per-snapshot list.
    assert!(rt.ok(&["stats"]).get("per_snapshot").is_none());

    // Nothing to reclaim yet; once B's folder is gone by hand, exactly
    // what gc's dry run says.
    assert_eq!(u(&two, "bytes_reclaimable"), 0);
    fs::remove_dir_all(rt.snapshot_dir(b_stamp)).unwrap();
    let after = rt.ok(&["stats"]);
    let gc = rt.ok(&["gc"]);
    assert!(u(&gc, "bytes_reclaimable") > 0, "{gc}");
    assert_eq!(u(&after, "bytes_reclaimable"), u(&gc, "bytes_reclaimable"));
    assert_eq!(u(&after, "dead_bytes_kept"), u(&gc, "dead_bytes_kept"));
    assert_eq!(u(&after, "snapshots"), 1);
}

#[test]
fn stats_of_an_empty_store_and_of_a_missing_one() {
    let rt = Runtime::tiny();
    let missing = rt.run(&["stats"]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert_eq!(missing.error_code(), "store_missing");
    assert!(!rt.store.exists(), "stats created a store");

    rt.ok(&["init"]);
    let empty = rt.ok(&["stats", "--per-snapshot"]);
    for field in [
        "snapshots",
        "packs",
        "chunks",
        "unique_raw_bytes",
        "deduplicated_bytes",
    ] {
        assert_eq!(u(&empty, field), 0, "{field}: {empty}");
    }
    assert_eq!(empty["compression_ratio"], Value::Null);
    assert_eq!(empty["dedup_ratio"], Value::Null);
    assert_eq!(u(&empty, "bytes_reclaimable"), 0);
    assert!(u(&empty, "store_bytes") > 0, "config.json counts: {empty}");
    assert_eq!(empty["per_snapshot"], serde_json::json!([]));
}

#[test]
fn stats_read_an_encrypted_store_with_its_password() {
    let rt = Runtime::tiny();
    let env = [
        ("ATOSNAP_PASSWORD", "s3cret"),
        ("ATOSNAP_KDF_PARAMS", "m=64,t=1,p=1"),
    ];
    let init = rt.run_env(&["init", "--encryption", "repokey"], &env);
    assert_eq!(init.code, 0, "{init:?}");
    let created = rt.run_env(&["create", "--chroma"], &env);
    assert_eq!(created.code, 0, "{created:?}");
    let out = rt.run_env(&["stats", "--per-snapshot"], &env);
    assert_eq!(out.code, 0, "{out:?}");
    let s = out.json;
    assert_eq!(s["encryption"], "repokey");
    assert_eq!(u(&s, "snapshots"), 1);
    assert_eq!(u(&s, "chunks"), u(&created.json, "chunks_new"));
    let stamp = created.json["stamp"].as_str().unwrap();
    assert_eq!(u(share(&s, stamp), "unique_chunks"), u(&s, "chunks"));

    let refused = rt.run(&["stats"]);
    assert_eq!(refused.code, 1);
    assert_eq!(refused.error_code(), "password_required");
}
