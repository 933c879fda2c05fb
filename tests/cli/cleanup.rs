//! `atosnap cleanup` through the binary: the SPEC §3 reference cases with
//! their exact numbers, tags, unparseable folders, dry run vs --confirm.

use crate::support::{strs, Runtime as Env};
use std::fs;

fn days(env: &Env, from: u32, to: u32) -> Vec<String> {
    (from..=to)
        .map(|d| env.create_on(&format!("2026-04-{d:02}"), &[]))
        .collect()
}

fn noon(day: &str) -> String {
    format!("{}T120000Z", day.replace('-', ""))
}

#[test]
fn spec_ten_days_keep_7_delete_3() {
    let env = Env::fixture();
    days(&env, 2, 11);
    let r = env.ok(&["cleanup"]);
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["kept"], 7);
    assert_eq!(r["would_delete"], 3);
    assert_eq!(
        strs(&r["would_delete_stamps"]),
        ["20260402T120000Z", "20260403T120000Z", "20260404T120000Z"]
    );
    assert_eq!(strs(&r["kept_stamps"]).len(), 7);
    assert!(r["bytes_reclaimable"].is_u64());
    assert!(r.get("deleted").is_none() && r.get("bytes_reclaimed").is_none());
    // A dry run deletes nothing.
    assert_eq!(env.stamps().len(), 10);
}

#[test]
fn spec_seven_days_keep_7_delete_0() {
    let env = Env::fixture();
    days(&env, 5, 11);
    let r = env.ok(&["cleanup", "--confirm"]);
    assert_eq!(r["dry_run"], false);
    assert_eq!(r["kept"], 7);
    assert_eq!(r["deleted"], 0);
    assert_eq!(r["deleted_stamps"], serde_json::json!([]));
    assert_eq!(r["bytes_reclaimed"], 0);
    assert_eq!(env.stamps().len(), 7);
}

#[test]
fn spec_sundays_keep_9_delete_1() {
    let env = Env::fixture();
    days(&env, 5, 11);
    for d in ["2026-03-29", "2026-03-22", "2026-03-25"] {
        env.create_on(d, &[]);
    }
    let r = env.ok(&["cleanup"]);
    assert_eq!(
        (r["kept"].as_u64(), r["would_delete"].as_u64()),
        (Some(9), Some(1))
    );
    assert_eq!(strs(&r["would_delete_stamps"]), [noon("2026-03-25")]);
    assert_eq!(
        strs(&r["kept_reasons"][noon("2026-03-22")]),
        ["weekly"],
        "{r}"
    );
}

#[test]
fn spec_first_of_month_keep_9_delete_the_15th() {
    let env = Env::fixture();
    days(&env, 5, 11);
    for d in ["2026-01-01", "2025-12-01", "2026-01-15"] {
        env.create_on(d, &[]);
    }
    let r = env.ok(&["cleanup", "--confirm"]);
    assert_eq!(
        (r["kept"].as_u64(), r["deleted"].as_u64()),
        (Some(9), Some(1))
    );
    assert_eq!(strs(&r["deleted_stamps"]), [noon("2026-01-15")]);
    assert_eq!(strs(&r["kept_reasons"][noon("2025-12-01")]), ["monthly"]);
    let left = env.stamps();
    assert_eq!(left.len(), 9);
    assert!(!left.contains(&noon("2026-01-15")));
    env.assert_healthy();
}

#[test]
fn spec_unparseable_folder_is_reported_and_survives_confirm() {
    let env = Env::fixture();
    days(&env, 2, 11);
    let junk = env.store.join("snapshots/not-a-stamp");
    fs::create_dir(&junk).unwrap();
    fs::write(junk.join("note.txt"), b"operator's folder").unwrap();
    let r = env.ok(&["cleanup", "--confirm"]);
    assert_eq!(strs(&r["unparseable"]), ["not-a-stamp"]);
    assert_eq!(r["deleted"], 3);
    assert_eq!(
        fs::read(junk.join("note.txt")).unwrap(),
        b"operator's folder"
    );
    assert_eq!(strs(&env.ok(&["list"])["unparseable"]), ["not-a-stamp"]);
}

#[test]
fn confirm_deletes_then_gc_reclaims_space() {
    let env = Env::fixture();
    // Each day has a registry of its own, so deleted days free space.
    for d in 2..=11u32 {
        env.mutate_db(10, d as u64);
        env.set_registry(300_000, d as u64);
        env.create_on(&format!("2026-04-{d:02}"), &[]);
    }
    let dry = env.ok(&["cleanup"]);
    let reclaimable = dry["bytes_reclaimable"].as_u64().unwrap();
    assert!(reclaimable > 0, "{dry}");
    let before: u64 = env.pack_sizes().iter().map(|p| p.1).sum();
    let r = env.ok(&["cleanup", "--confirm"]);
    assert_eq!(r["deleted"], 3);
    assert_eq!(
        strs(&r["deleted_stamps"]),
        strs(&dry["would_delete_stamps"])
    );
    let reclaimed = r["bytes_reclaimed"].as_u64().unwrap();
    assert!(reclaimed > 0, "{r}");
    let after: u64 = env.pack_sizes().iter().map(|p| p.1).sum();
    assert_eq!(before - after, reclaimed, "{r}");
    assert_eq!(r["gc"]["dry_run"], false);
    assert_eq!(r["errors"], serde_json::json!([]));
    env.assert_healthy();
    // A second run deletes nothing more.
    let again = env.ok(&["cleanup", "--confirm"]);
    assert_eq!(again["deleted"], 0);
    assert_eq!(again["bytes_reclaimed"], 0);
}

#[test]
fn keep_tag_keeps_old_tagged_snapshots() {
    let env = Env::fixture();
    env.create_on("2026-02-10", &["--tag", "pre-restore"]);
    env.create_on("2026-02-11", &["--tag", "other"]);
    days(&env, 2, 11);
    let r = env.ok(&[
        "cleanup",
        "--confirm",
        "--keep-daily",
        "3",
        "--keep-weekly",
        "0",
        "--keep-monthly",
        "0",
        "--keep-tag",
        "pre-restore",
    ]);
    assert_eq!(r["kept"], 4);
    assert_eq!(
        strs(&r["kept_reasons"]["20260210T120000Z"]),
        ["tag:pre-restore"]
    );
    assert!(strs(&r["deleted_stamps"]).contains(&"20260211T120000Z".to_string()));
    assert!(env.stamps().contains(&"20260210T120000Z".to_string()));
}

/// The tags live in the summary (`atosnap tag` edits them there); the
/// manifest holds only those a snapshot was taken with. A snapshot whose
/// summary is gone may have been pinned since: it is kept, with a warning,
/// and `--confirm` deletes only the others.
#[test]
fn a_snapshot_whose_summary_is_gone_is_kept_as_it_may_have_been_pinned() {
    let env = Env::fixture();
    let pinned = env.create_on("2026-02-10", &[]);
    let plain = env.create_on("2026-02-11", &[]);
    days(&env, 3, 5);
    env.ok(&["tag", &pinned, "--add", "keep-me"]);
    for stamp in [&pinned, &plain] {
        let summary = env
            .store
            .join("snapshots")
            .join(stamp)
            .join("backup-metadata.json");
        fs::remove_file(summary).unwrap();
    }
    let r = env.ok(&[
        "cleanup",
        "--confirm",
        "--keep-daily",
        "1",
        "--keep-tag",
        "keep-me",
    ]);
    for stamp in [&pinned, &plain] {
        assert_eq!(strs(&r["kept_reasons"][stamp]), ["tags_unreadable"], "{r}");
        assert!(env.stamps().contains(stamp), "{stamp} kept");
        let warned = strs(&r["warnings"])
            .iter()
            .any(|w| w.contains(stamp.as_str()));
        assert!(warned, "{r}");
    }
    assert_eq!(strs(&r["deleted_stamps"]).len(), 2, "{r}");
}

#[test]
fn unreadable_tags_keep_the_snapshot() {
    let env = Env::fixture();
    let old = env.create_on("2026-02-10", &[]);
    days(&env, 2, 4);
    let dir = env.store.join("snapshots").join(&old);
    fs::remove_file(dir.join("backup-metadata.json")).unwrap();
    fs::write(dir.join("manifest.bin"), b"garbage").unwrap();
    let run = env.run(&["cleanup", "--keep-daily", "1"]);
    // Exit 3: the dry run met a damaged manifest.
    assert_eq!(run.code, 3, "{run:?}");
    let r = run.json;
    assert_eq!(strs(&r["kept_reasons"][&old]), ["tags_unreadable"], "{r}");
    assert!(strs(&r["warnings"])[0].contains(&old));
    // gc would refuse because of that manifest; the dry run says so.
    assert!(strs(&r["errors"])[0].contains("gc would refuse"), "{r}");
}

#[test]
fn a_policy_that_keeps_nothing_is_refused() {
    let env = Env::fixture();
    days(&env, 2, 3);
    let r = env.run(&[
        "cleanup",
        "--confirm",
        "--keep-daily",
        "0",
        "--keep-weekly",
        "0",
        "--keep-monthly",
        "0",
    ]);
    assert_eq!(r.code, 2, "{r:?}");
    assert_eq!(r.error_code(), "usage");
    assert_eq!(env.stamps().len(), 2);
}

#[test]
fn confirm_with_a_corrupt_manifest_deletes_but_gc_refuses() {
    let env = Env::fixture();
    days(&env, 2, 11);
    // A kept snapshot's manifest goes bad; its summary still has its tags.
    let bad = "20260411T120000Z";
    let path = env.store.join("snapshots").join(bad).join("manifest.bin");
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let packs_before = env.pack_sizes();
    let r = env.run(&["cleanup", "--confirm"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(r.json["deleted"], 3);
    assert_eq!(r.json["bytes_reclaimed"], 0);
    let errors = strs(&r.json["errors"]);
    assert!(errors[0].contains(bad), "{errors:?}");
    assert!(r.stderr.contains(bad));
    assert_eq!(env.pack_sizes(), packs_before);
}

#[test]
fn cleanup_on_a_missing_store_is_a_clear_error() {
    let env = Env::fixture();
    let r = env.run(&["cleanup"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.error_code(), "store_missing");
}

#[test]
fn every_result_field_of_the_spec_is_present() {
    let env = Env::fixture();
    days(&env, 2, 3);
    let dry = env.ok(&["cleanup", "--keep-daily", "1"]);
    let wet = env.ok(&["cleanup", "--confirm", "--keep-daily", "1"]);
    for k in ["dry_run", "kept", "kept_stamps", "unparseable", "errors"] {
        assert!(dry.get(k).is_some() && wet.get(k).is_some(), "{k}");
    }
    for k in ["would_delete", "would_delete_stamps", "bytes_reclaimable"] {
        assert!(dry.get(k).is_some() && wet.get(k).is_none(), "{k}");
    }
    for k in ["deleted", "deleted_stamps", "bytes_reclaimed"] {
        assert!(wet.get(k).is_some() && dry.get(k).is_none(), "{k}");
    }
    assert_eq!(dry["would_delete"], 1);
    assert_eq!(wet["deleted"], 1);
}
