//! Operator workflows of issue 17 through the binary: retention rules for
//! frequent snapshots and the stored policy, `forget`, `tag`, `ls`, `dump`
//! and `restore --include`, good path and bad input.

use crate::support::{flip_bit, run_cmd, Out, Runtime as Env};
use serde_json::Value;
use std::fs;
use std::path::Path;

fn strs(v: &Value) -> Vec<String> {
    crate::support::strings(v)
}

/// A snapshot of the tiny runtime at `at` (RFC 3339).
fn snap(env: &Env, at: &str) -> String {
    env.create(&["--chroma", "--at", at])["stamp"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `restore STAMP --to DIR --include PATH...`.
fn restore_include(env: &Env, stamp: &str, to: &Path, paths: &[&str]) -> Out {
    let mut args = vec!["restore", stamp, "--to", to.to_str().unwrap()];
    for p in paths {
        args.extend(["--include", p]);
    }
    env.run(&args)
}

fn hourly(env: &Env, day: &str, hours: std::ops::Range<u32>) -> Vec<String> {
    hours
        .map(|h| snap(env, &format!("{day}T{h:02}:00:00Z")))
        .collect()
}

fn ok(env: &Env, args: &[&str]) -> Value {
    let out = env.run(args);
    assert_eq!(out.code, 0, "atosnap {args:?}: {out:?}");
    out.json
}

/// `rules`, with the default rules not named there switched off.
fn only(rules: &[&'static str]) -> Vec<&'static str> {
    let mut a = rules.to_vec();
    for flag in ["--keep-daily", "--keep-weekly", "--keep-monthly"] {
        if !rules.contains(&flag) {
            a.extend([flag, "0"]);
        }
    }
    a
}

// ---- retention --------------------------------------------------------------

#[test]
fn keep_hourly_last_and_within_with_reasons() {
    let env = Env::tiny();
    let stamps = hourly(&env, "2026-04-11", 0..10);
    let mut args = vec!["cleanup"];
    args.extend(only(&["--keep-hourly", "3", "--keep-last", "2"]));
    let r = ok(&env, &args);
    assert_eq!(strs(&r["kept_stamps"]), stamps[7..].to_vec(), "{r}");
    assert_eq!(strs(&r["reasons"][&stamps[9]]), ["last", "hourly"]);
    assert_eq!(strs(&r["reasons"][&stamps[7]]), ["hourly"]);
    // The old field stays.
    assert_eq!(r["kept_reasons"], r["reasons"]);
    assert_eq!(r["policy_source"], "defaults+flags");

    let mut args = vec!["cleanup", "--confirm"];
    args.extend(only(&["--keep-within", "4h"]));
    let r = ok(&env, &args);
    // 05:00..09:00: within 4 h of the newest snapshot (09:00).
    assert_eq!(strs(&r["kept_stamps"]), stamps[5..].to_vec(), "{r}");
    assert_eq!(strs(&r["reasons"][&stamps[5]]), ["within"]);
    assert_eq!(r["deleted"], 5);
    assert_eq!(r["policy"]["keep_within"], "4h");
}

#[test]
fn malformed_duration_or_rule_is_a_usage_error_naming_the_flag() {
    let env = Env::tiny();
    snap(&env, "2026-04-11T12:00:00Z");
    for (args, flag) in [
        (vec!["cleanup", "--keep-within", "3x"], "--keep-within"),
        (vec!["cleanup", "--keep-within", "12"], "--keep-within"),
        (vec!["cleanup", "--keep-hourly", "many"], "--keep-hourly"),
        (vec!["cleanup", "--keep-yearly=-1"], "--keep-yearly"),
        (
            vec!["policy", "set", "--keep-within", "2q"],
            "--keep-within",
        ),
        (vec!["policy", "set", "--keep-last", "x"], "--keep-last"),
    ] {
        let out = env.run(&args);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert_eq!(out.error_code(), "usage");
        let message = out.json["error"]["message"].as_str().unwrap();
        assert!(message.contains(flag), "{args:?}: {message}");
    }
    assert!(!env.store.join("policy.json").exists());
}

#[test]
fn stored_policy_is_applied_and_flags_override_it() {
    let env = Env::tiny();
    let stamps = hourly(&env, "2026-04-11", 0..6);
    let shown = ok(&env, &["policy", "show"]);
    assert_eq!(shown["stored"], false);
    assert_eq!(shown["policy"]["keep_daily"], 7);

    let set = ok(
        &env,
        &[
            "policy",
            "set",
            "--keep-hourly",
            "2",
            "--keep-daily",
            "0",
            "--keep-tag",
            "pin",
        ],
    );
    assert_eq!(set["stored"], true);
    assert_eq!(set["policy"]["keep_hourly"], 2);
    // Rules not given take the defaults, not what was stored before.
    assert_eq!(set["policy"]["keep_weekly"], 4);
    let file = env.store.join("policy.json");
    let on_disk: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    assert_eq!(on_disk["policy"]["keep_hourly"], 2);
    assert_eq!(ok(&env, &["policy", "show"])["policy"], set["policy"]);

    let r = ok(&env, &["cleanup"]);
    assert_eq!(r["policy_source"], "store");
    assert_eq!(strs(&r["kept_stamps"]), stamps[4..].to_vec(), "{r}");
    assert_eq!(strs(&r["policy"]["keep_tags"]), ["pin"]);

    // A flag overrides its rule only; --keep-tag adds to the stored tags.
    let r = ok(&env, &["cleanup", "--keep-hourly", "4", "--keep-tag", "x"]);
    assert_eq!(r["policy_source"], "store+flags");
    assert_eq!(strs(&r["kept_stamps"]), stamps[2..].to_vec(), "{r}");
    assert_eq!(strs(&r["policy"]["keep_tags"]), ["pin", "x"]);

    // A policy that keeps nothing is not stored.
    let out = env.run(&[
        "policy",
        "set",
        "--keep-daily",
        "0",
        "--keep-weekly",
        "0",
        "--keep-monthly",
        "0",
    ]);
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(ok(&env, &["policy", "show"])["policy"], set["policy"]);
}

#[test]
fn weekly_any_day_keeps_a_week_without_its_sunday() {
    let env = Env::tiny();
    // Wednesdays; one Sunday.
    for d in ["2026-03-04", "2026-03-11", "2026-03-22", "2026-03-25"] {
        snap(&env, &format!("{d}T12:00:00Z"));
    }
    let mut strict = vec!["cleanup"];
    strict.extend(only(&["--keep-weekly", "4"]));
    let r = ok(&env, &strict);
    assert_eq!(r["kept"], 2, "{r}");
    assert_eq!(strs(&r["reasons"]["20260325T120000Z"]), ["newest"]);
    strict.push("--weekly-any-day");
    let r = ok(&env, &strict);
    assert_eq!(r["kept"], 4, "{r}");
    assert_eq!(strs(&r["reasons"]["20260304T120000Z"]), ["weekly"]);
}

// ---- forget -----------------------------------------------------------------

#[test]
fn forget_dry_run_then_confirm_then_gc() {
    let env = Env::tiny();
    let a = snap(&env, "2026-04-10T12:00:00Z");
    fs::write(env.registry(), br#"{"projects": [], "changed": true}"#).unwrap();
    let b = snap(&env, "2026-04-11T12:00:00Z");
    let dry = ok(&env, &["forget", &b]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(strs(&dry["would_delete_stamps"]), vec![b.clone()]);
    assert_eq!(strs(&dry["remaining_stamps"]), vec![a.clone()]);
    assert!(dry["bytes_reclaimable"].as_u64().unwrap() > 0, "{dry}");
    assert!(env.snapshot_dir(&b).exists());

    let wet = ok(&env, &["forget", "--confirm", &b]);
    assert_eq!(wet["dry_run"], false);
    assert_eq!(strs(&wet["deleted_stamps"]), vec![b.clone()]);
    assert!(wet["gc"].is_object(), "{wet}");
    assert!(!env.snapshot_dir(&b).exists());
    assert_eq!(ok(&env, &["validate", &a])["valid"], true);
}

#[test]
fn forget_refuses_unknown_stamps_and_the_last_snapshot() {
    let env = Env::tiny();
    let a = snap(&env, "2026-04-10T12:00:00Z");
    let b = snap(&env, "2026-04-11T12:00:00Z");

    let out = env.run(&["forget", "--confirm", &a, "20200101T000000Z"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.error_code(), "snapshot_missing");
    assert!(out.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("20200101T000000Z"));
    assert!(env.snapshot_dir(&a).exists(), "nothing is deleted");

    let out = env.run(&["forget", "../x"]);
    assert_eq!(
        (out.code, out.error_code()),
        (1, "invalid_stamp"),
        "{out:?}"
    );
    let out = env.run(&["forget"]);
    assert_eq!(out.code, 2, "{out:?}");

    for confirm in [false, true] {
        let mut args = vec!["forget", &a, &b];
        if confirm {
            args.push("--confirm");
        }
        let out = env.run(&args);
        assert_eq!(out.code, 1, "{out:?}");
        assert_eq!(out.error_code(), "forget_would_delete_all");
        assert!(out.stderr.contains("--force"), "{out:?}");
    }
    assert!(env.snapshot_dir(&a).exists() && env.snapshot_dir(&b).exists());
    let r = ok(&env, &["forget", "--confirm", "--force", &a, &b]);
    assert_eq!(strs(&r["deleted_stamps"]), [a, b]);
    assert!(strs(&r["remaining_stamps"]).is_empty());
}

// ---- tag --------------------------------------------------------------------

#[test]
fn a_tagged_snapshot_survives_cleanup_through_keep_tag() {
    let env = Env::tiny();
    let stamps: Vec<String> = (1..=9)
        .map(|d| snap(&env, &format!("2026-03-{d:02}T12:00:00Z")))
        .collect();
    let pinned = &stamps[1];
    let r = ok(
        &env,
        &["tag", pinned, "--add", "pre-migration", "--add", "x"],
    );
    assert_eq!(strs(&r["tags"]), ["pre-migration", "x"]);
    assert_eq!(strs(&r["added"]), ["pre-migration", "x"]);
    assert_eq!(r["changed"], true);
    let r = ok(
        &env,
        &["tag", pinned, "--remove", "x", "--remove", "absent"],
    );
    assert_eq!(strs(&r["tags"]), ["pre-migration"]);
    assert_eq!(strs(&r["removed"]), ["x"]);
    let listed = ok(&env, &["list"]);
    let entry = listed["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stamp"] == pinned.as_str())
        .unwrap()
        .clone();
    assert_eq!(strs(&entry["tags"]), ["pre-migration"]);

    let mut args = vec!["cleanup", "--confirm", "--keep-tag", "pre-migration"];
    args.extend(only(&["--keep-daily", "2"]));
    let r = ok(&env, &args);
    assert_eq!(
        strs(&r["kept_stamps"]),
        [pinned.clone(), stamps[7].clone(), stamps[8].clone()],
        "{r}"
    );
    assert_eq!(strs(&r["reasons"][pinned]), ["tag:pre-migration"]);
    assert!(env.snapshot_dir(pinned).exists());
    // The pinned snapshot still validates (its manifest was not touched).
    assert_eq!(ok(&env, &["validate", pinned])["valid"], true);
}

#[test]
fn tag_bad_input() {
    let env = Env::tiny();
    let s = snap(&env, "2026-04-11T12:00:00Z");
    let out = env.run(&["tag", "20200101T000000Z", "--add", "x"]);
    assert_eq!(
        (out.code, out.error_code()),
        (1, "snapshot_missing"),
        "{out:?}"
    );
    let out = env.run(&["tag", "nope", "--add", "x"]);
    assert_eq!(
        (out.code, out.error_code()),
        (1, "invalid_stamp"),
        "{out:?}"
    );
    let out = env.run(&["tag", &s]);
    assert_eq!((out.code, out.error_code()), (2, "usage"), "{out:?}");
    let out = env.run(&["tag", &s, "--add", " "]);
    assert_eq!((out.code, out.error_code()), (2, "usage"), "{out:?}");
}

// ---- ls ---------------------------------------------------------------------

#[test]
fn ls_lists_entries_and_a_subtree() {
    let env = Env::tiny();
    let s = snap(&env, "2026-04-11T12:00:00Z");
    let all = ok(&env, &["ls", &s]);
    let paths: Vec<String> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    for p in [
        "atocore.db",
        "project-registry.json",
        "chroma",
        "chroma/seg/data_level0.bin",
    ] {
        assert!(paths.contains(&p.to_string()), "{p} in {paths:?}");
    }
    let sub = ok(&env, &["ls", &s, "chroma/seg/", "--long"]);
    assert_eq!(sub["path"], "chroma/seg");
    assert_eq!(sub["files"], 2);
    assert_eq!(sub["dirs"], 1);
    let bin = sub["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "chroma/seg/data_level0.bin")
        .unwrap();
    assert_eq!(bin["kind"], "file");
    assert_eq!(bin["size"], 64 * 1024);
    assert!(bin["chunks"].as_u64().unwrap() >= 1);
    assert!(bin["mode"].as_str().unwrap().starts_with('0'));
    assert!(bin["mtime"].as_str().unwrap().ends_with('Z'));
    assert!(
        all["entries"][0].get("chunks").is_none(),
        "only with --long"
    );
}

#[test]
fn ls_bad_input() {
    let env = Env::tiny();
    let s = snap(&env, "2026-04-11T12:00:00Z");
    let out = env.run(&["ls", &s, "chroma/nothing"]);
    assert_eq!(
        (out.code, out.error_code()),
        (1, "path_not_in_snapshot"),
        "{out:?}"
    );
    assert!(out.stderr.contains("chroma/nothing"));
    let out = env.run(&["ls", "20200101T000000Z"]);
    assert_eq!(
        (out.code, out.error_code()),
        (1, "snapshot_missing"),
        "{out:?}"
    );
    let out = env.run(&["ls", "../x"]);
    assert_eq!(
        (out.code, out.error_code()),
        (1, "invalid_stamp"),
        "{out:?}"
    );
}

// ---- dump -------------------------------------------------------------------

/// Runs `dump` to stdout: (exit code, stdout bytes, the JSON on stderr's last line).
fn dump_raw(env: &Env, args: &[&str]) -> (i32, Vec<u8>, Value) {
    let out = env.command().arg("dump").args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    let json: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("stderr's last line is not JSON ({e}): {stderr}"));
    (out.status.code().unwrap_or(-1), out.stdout, json)
}

#[test]
fn dump_writes_the_file_and_the_db_is_valid_sqlite() {
    let env = Env::tiny();
    let s = snap(&env, "2026-04-11T12:00:00Z");
    let (code, bytes, json) = dump_raw(&env, &[&s, "project-registry.json"]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(bytes, fs::read(env.registry()).unwrap());
    assert_eq!(json["size"], bytes.len() as u64);
    assert_eq!(json["blake3"], blake3::hash(&bytes).to_hex().as_str());

    let (code, bytes, json) = dump_raw(&env, &[&s, "chroma/seg/data_level0.bin"]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(
        bytes,
        fs::read(env.chroma().join("seg/data_level0.bin")).unwrap()
    );

    let out_file = env.dir.path().join("out.db");
    let out = run_cmd(
        env.command()
            .args(["dump", &s, "atocore.db", "--output"])
            .arg(&out_file),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["sqlite"], true);
    let conn = rusqlite::Connection::open(&out_file).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM memories", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 300);
}

#[test]
fn dump_bad_input() {
    let env = Env::tiny();
    let s = snap(&env, "2026-04-11T12:00:00Z");
    let (code, bytes, json) = dump_raw(&env, &[&s, "chroma/none"]);
    assert_eq!(code, 1);
    assert!(bytes.is_empty());
    assert_eq!(json["error"]["code"], "path_not_in_snapshot");
    let (code, _, json) = dump_raw(&env, &[&s, "chroma/seg"]);
    assert_eq!(
        (code, json["error"]["code"].as_str()),
        (1, Some("not_a_file"))
    );
    let (code, _, json) = dump_raw(&env, &["20200101T000000Z", "atocore.db"]);
    assert_eq!(
        (code, json["error"]["code"].as_str()),
        (1, Some("snapshot_missing"))
    );
    // With --output the JSON is on stdout, as for every command.
    let out = run_cmd(env.command().args(["dump", &s, "nope", "--output", "x"]));
    assert_eq!((out.code, out.error_code()), (1, "path_not_in_snapshot"));
    assert!(!env.dir.path().join("x").exists());
}

/// Damages one chunk of `path` in snapshot `s`; returns its id.
fn damage(env: &Env, s: &str, path: &str) -> String {
    let id = env.file_chunks(s, path)[0];
    let (pack, offset, len) = env.chunk_location(&id);
    flip_bit(&pack, offset + len / 2);
    id.to_string()
}

#[test]
fn a_corrupt_chunk_matters_only_in_the_file_asked_for() {
    let env = Env::tiny();
    env.init_with_single_chunk_frames();
    let s = snap(&env, "2026-04-11T12:00:00Z");
    let bad = damage(&env, &s, "chroma/seg/index_metadata.pickle");

    let (code, _, json) = dump_raw(&env, &[&s, "chroma/seg/index_metadata.pickle"]);
    assert_eq!(code, 3, "{json}");
    assert_eq!(json["error"]["code"], "chunk_corrupt");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&bad) && message.contains("index_metadata.pickle"),
        "{message}"
    );

    let (code, bytes, json) = dump_raw(&env, &[&s, "project-registry.json"]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(bytes, fs::read(env.registry()).unwrap());

    // restore --include: the same rule.
    let to = env.dir.path().join("partial");
    let out = restore_include(&env, &s, &to, &["chroma/seg"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.error_code(), "validation_failed");
    assert!(out.stderr.contains(&bad), "{out:?}");
    assert!(
        !to.join("chroma/seg/data_level0.bin").exists(),
        "nothing written"
    );

    let out = restore_include(&env, &s, &to, &["chroma/seg/data_level0.bin", "atocore.db"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["files_written"], 2);
    assert_eq!(out.json["restored_integrity_ok"], true);
    assert_eq!(
        fs::read(to.join("chroma/seg/data_level0.bin")).unwrap(),
        fs::read(env.chroma().join("seg/data_level0.bin")).unwrap()
    );
    assert!(!to.join("chroma/seg/index_metadata.pickle").exists());
    assert!(!to.join("project-registry.json").exists());
}

// ---- restore --include --------------------------------------------------------

#[test]
fn restore_include_restores_only_those_paths() {
    let env = Env::tiny();
    let s = snap(&env, "2026-04-11T12:00:00Z");
    let to = env.dir.path().join("out");
    fs::create_dir_all(to.join("chroma")).unwrap();
    fs::write(to.join("chroma/keep-me"), b"mine").unwrap();
    let out = restore_include(&env, &s, &to, &["chroma/seg", "project-registry.json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["registry_restored"], true);
    assert_eq!(out.json["db_restored"], false);
    assert_eq!(out.json["chroma_restored"], true);
    assert_eq!(out.json["files_written"], 3);
    for f in ["seg/data_level0.bin", "seg/index_metadata.pickle"] {
        assert_eq!(
            fs::read(to.join("chroma").join(f)).unwrap(),
            fs::read(env.chroma().join(f)).unwrap()
        );
    }
    assert_eq!(
        fs::read(to.join("project-registry.json")).unwrap(),
        fs::read(env.registry()).unwrap()
    );
    assert!(!to.join("atocore.db").exists());
    assert!(!to.join("chroma/chroma.sqlite3").exists());
    assert_eq!(
        fs::read(to.join("chroma/keep-me")).unwrap(),
        b"mine",
        "untouched"
    );
}

/// A stale `-wal` beside DIR/atocore.db would be replayed onto the
/// restored file by the next ordinary open: `--include` removes the
/// sidecars before it installs a SQLite file, as a full restore does.
#[test]
fn restore_include_removes_stale_sidecars_of_a_sqlite_file() {
    let env = Env::fixture();
    let s = snap(&env, "2026-04-11T12:00:00Z");
    let to = env.dir.path().join("out");
    let include = |failpoint: &str| {
        env.run_env(
            &[
                "restore",
                &s,
                "--to",
                to.to_str().unwrap(),
                "--include",
                "atocore.db",
            ],
            &[("ATOSNAP_FAILPOINT", failpoint)],
        )
    };
    assert_eq!(include("").code, 0);
    let db = to.join("atocore.db");
    let wal = to.join("atocore.db-wal");
    // A db whose WAL holds a table its main file does not: both files
    // copied aside while the writer's connection keeps the WAL unfolded
    // (closing checkpoints it and removes it).
    let (saved_db, saved_wal) = (env.dir.path().join("db"), env.dir.path().join("wal"));
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch("CREATE TABLE wal_probe(x); INSERT INTO wal_probe VALUES (1);")
            .unwrap();
        fs::copy(&db, &saved_db).unwrap();
        fs::copy(&wal, &saved_wal).unwrap();
    }
    let put_back = || {
        fs::copy(&saved_db, &db).unwrap();
        fs::copy(&saved_wal, &wal).unwrap();
    };
    // Killed with the new file staged, not yet renamed: the old db is
    // whole, its WAL folded in rather than lost with the sidecars.
    put_back();
    let killed = include("restore:before-rename:atocore.db");
    assert_eq!(killed.code, 137, "{killed:?}");
    assert!(!wal.exists());
    let has_probe = |db: &std::path::Path| crate::support::has_table(db, "wal_probe");
    assert!(has_probe(&db), "the old db keeps what its WAL held");
    // Restored: the stale WAL is gone, not replayed onto the new file.
    put_back();
    assert_eq!(include("").code, 0);
    assert!(!wal.exists(), "the stale WAL is removed");
    assert!(!has_probe(&db));
}

/// Hundreds of bad chunks in the included files: the refusal names the
/// first hundred faults, not one per chunk, and writes nothing.
#[test]
fn restore_include_names_at_most_a_hundred_faults() {
    let env = Env::fixture();
    let s = snap(&env, "2026-04-11T12:00:00Z");
    // Every lanes frame (the HNSW floats, up to 256 chunks each) gets its
    // zstd magic broken, so no chunk of it decodes; list frames and the
    // rest are left whole.
    let store = env.open_store();
    for (name, size) in env.pack_sizes() {
        let layout = store
            .read_pack_index(&atosnap::store::Object::Listed(name.clone()), size)
            .unwrap();
        for f in &layout.frames {
            if f.codec == atosnap::store::pack2::Codec::ZstdLanes {
                crate::support::flip_bit(&env.store.join(&name), f.offset as u64 + 1);
            }
        }
    }
    let to = env.dir.path().join("out");
    let out = restore_include(&env, &s, &to, &["chroma"]);
    assert_eq!(out.code, 3, "{out:?}");
    let named = out.stderr.matches("chunk_corrupt:").count();
    assert_eq!(named, 100, "{}", out.stderr);
    assert!(!to.join("chroma").exists(), "nothing written");
}

#[test]
fn restore_include_bad_input() {
    let env = Env::tiny();
    let s = snap(&env, "2026-04-11T12:00:00Z");
    let to = env.dir.path().join("out");
    let t = to.to_str().unwrap();
    let out = env.run(&["restore", &s, "--include", "chroma/seg"]);
    assert_eq!(
        (out.code, out.error_code()),
        (2, "usage"),
        "--include needs --to: {out:?}"
    );
    let out = env.run(&["restore", &s, "--to", t, "--include", "chroma/nope"]);
    assert_eq!(
        (out.code, out.error_code()),
        (1, "path_not_in_snapshot"),
        "{out:?}"
    );
    let out = restore_include(&env, "20200101T000000Z", Path::new(t), &["atocore.db"]);
    assert_eq!(
        (out.code, out.error_code()),
        (1, "snapshot_missing"),
        "{out:?}"
    );
    // DIR holding the live files is refused (the same check as restore
    // --to); a missing DIR inside the live Chroma dir is refused before it
    // is made: nothing appears in the live tree for the next create to take.
    let inside = env.chroma().join("restored-here");
    for live in [env.runtime.join("data"), inside.clone()] {
        let to = live.to_str().unwrap();
        let out = env.run(&["restore", &s, "--to", to, "--include", "atocore.db"]);
        assert_eq!(
            (out.code, out.error_code()),
            (1, "restore_target_is_live"),
            "{out:?}"
        );
    }
    assert!(!inside.exists(), "the refused DIR was created");
}

#[test]
fn new_commands_have_help_and_completions() {
    let env = Env::tiny();
    for cmd in ["forget", "tag", "ls", "dump", "policy"] {
        let out = env.bare_command().args([cmd, "--help"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{cmd} --help");
    }
    let help = env
        .bare_command()
        .args(["dump", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("stderr"));
    let bash = env
        .bare_command()
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&bash.stdout);
    for word in ["forget", "keep-within", "weekly-any-day", "--include"] {
        assert!(text.contains(word), "{word} in the completions");
    }
}
