//! Black-box tests of the foundation (issue 2): create, list, validate and
//! the CLI contract of SPEC §1-§4, run through the `atosnap` binary.

use crate::support::{
    self, flip_bit, is_root, open_up, run_cmd, strings, truncate, unprivileged, Runtime as Env,
};
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use atosnap::ops::extract::{write_file, ChunkSource};
use atosnap::store::manifest::EntryKind;

fn u(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a number in {v}"))
}

fn store_bytes(env: &Env) -> u64 {
    env.packs()
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

fn chroma_files_on_disk(dir: &Path) -> (u64, u64) {
    let mut n = 0;
    let mut bytes = 0;
    for e in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if e.file_type().is_file() {
            n += 1;
            bytes += e.metadata().unwrap().len();
        }
    }
    (n, bytes)
}

// ---- create -----------------------------------------------------------------

#[test]
fn first_create_with_chroma_reports_every_field() {
    let env = Env::fixture();
    let r = env.create(&["--chroma"]);
    for field in [
        "stamp",
        "created_at",
        "db_size_bytes",
        "registry_snapshot_included",
        "chroma_snapshot_included",
        "chroma_snapshot_files",
        "chroma_snapshot_bytes",
        "chunks_total",
        "chunks_new",
        "list_blobs_new",
        "bytes_new_stored",
        "duration_ms",
        "validated",
        "validation_errors",
        "warnings",
    ] {
        assert!(r.get(field).is_some(), "create result lacks {field}: {r}");
    }
    let stamp = r["stamp"].as_str().unwrap();
    atosnap::stamp::Stamp::parse(stamp).expect("a well-formed stamp");
    assert!(r["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        u(&r, "db_size_bytes"),
        fs::metadata(env.db()).unwrap().len()
    );
    assert_eq!(r["registry_snapshot_included"], true);
    assert_eq!(r["chroma_snapshot_included"], true);
    let (files, bytes) = chroma_files_on_disk(&env.chroma());
    assert_eq!(u(&r, "chroma_snapshot_files"), files);
    assert_eq!(u(&r, "chroma_snapshot_bytes"), bytes);
    assert!(u(&r, "chunks_new") > 0 && u(&r, "chunks_new") <= u(&r, "chunks_total"));
    // bytes_new_stored is what landed in objects/.
    assert_eq!(u(&r, "bytes_new_stored"), store_bytes(&env));
    assert_eq!(r["validated"], true, "{r}");
    assert_eq!(r["validation_errors"], serde_json::json!([]));
    assert_eq!(r["warnings"], serde_json::json!([]));
    // The layout of SPEC §2.
    assert!(env.store.join("config.json").is_file());
    assert!(env.snapshot_dir(stamp).join("manifest.bin").is_file());
    assert!(env
        .snapshot_dir(stamp)
        .join("backup-metadata.json")
        .is_file());
    let out = env.run(&["validate", stamp]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["valid"], true);
    assert_eq!(out.json["db_ok"], true);
    assert_eq!(out.json["registry_ok"], true);
    assert_eq!(out.json["chroma_ok"], true);
}

#[test]
fn second_create_without_change_stores_almost_nothing() {
    let env = Env::fixture();
    let first = env.create(&["--chroma"]);
    let second = env.create(&["--chroma"]);
    let (a, b) = (
        u(&first, "bytes_new_stored"),
        u(&second, "bytes_new_stored"),
    );
    assert!(a > 1_000_000, "first snapshot stored only {a} bytes");
    assert!(
        b * 200 < a,
        "an unchanged runtime stored {b} new bytes (first: {a})"
    );
    assert_ne!(first["stamp"], second["stamp"]);
    assert_eq!(second["validated"], true);
    assert_eq!(u(&second, "chunks_total"), u(&first, "chunks_total"));
}

#[test]
fn one_percent_change_of_the_db_stores_a_small_fraction() {
    let env = Env::fixture();
    let first = env.create(&["--chroma"]);
    {
        let conn = rusqlite::Connection::open(env.db()).unwrap();
        // 1 % of the memories updated, 1 % more inserted; same for the
        // interactions.
        conn.execute_batch(
            "UPDATE memories SET content = content || ' (edited)', updated_at = '2026-04-12'
               WHERE rowid % 100 = 7;
             INSERT INTO memories(id, memory_type, content, project, created_at)
               SELECT id || '-new', memory_type, content, project, '2026-04-12'
               FROM memories WHERE rowid % 100 = 3;
             UPDATE interactions SET response = response || ' (edited)' WHERE rowid % 100 = 11;",
        )
        .unwrap();
    }
    let second = env.create(&["--chroma"]);
    let (a, b) = (
        u(&first, "bytes_new_stored"),
        u(&second, "bytes_new_stored"),
    );
    assert!(b > 0, "the change stored nothing");
    assert!(
        b * 20 < a,
        "a 1 % change of the db stored {b} bytes, first snapshot {a}"
    );
    assert_eq!(second["validated"], true, "{second}");
    assert!(u(&second, "db_size_bytes") >= u(&first, "db_size_bytes"));
}

// ---- validate on a damaged store ------------------------------------------------

fn validate(env: &Env, stamp: &str) -> support::Out {
    env.run(&["validate", stamp])
}

#[test]
fn flipped_byte_in_a_chunk_is_chunk_corrupt() {
    let env = Env::tiny();
    env.init_with_single_chunk_frames();
    let stamp = env.create(&["--chroma"])["stamp"]
        .as_str()
        .unwrap()
        .to_string();
    let id = env.file_chunks(&stamp, "atocore.db")[3];
    let (pack, offset, len) = env.chunk_location(&id);
    flip_bit(&pack, offset + len / 2);
    let out = validate(&env, &stamp);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.json["valid"], false);
    assert_eq!(out.json["db_ok"], false);
    assert!(
        out.strings("errors")
            .contains(&format!("chunk_corrupt:{id}")),
        "{out:?}"
    );
}

#[test]
fn truncated_pack_is_chunk_missing() {
    let env = Env::tiny();
    let stamp = env.create(&["--chroma"])["stamp"]
        .as_str()
        .unwrap()
        .to_string();
    let id = env.file_chunks(&stamp, "atocore.db")[0];
    let (pack, _, _) = env.chunk_location(&id);
    let id = env.first_missing(&stamp, "atocore.db", &pack, id);
    let len = fs::metadata(&pack).unwrap().len();
    truncate(&pack, len / 2);
    let out = validate(&env, &stamp);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.strings("errors")
            .contains(&format!("chunk_missing:{id}")),
        "{out:?}"
    );
}

#[test]
fn deleted_pack_is_chunk_missing() {
    let env = Env::tiny();
    let stamp = env.create(&["--chroma"])["stamp"]
        .as_str()
        .unwrap()
        .to_string();
    let id = env.file_chunks(&stamp, "project-registry.json")[0];
    let (pack, _, _) = env.chunk_location(&id);
    let id = env.first_missing(&stamp, "project-registry.json", &pack, id);
    fs::remove_file(&pack).unwrap();
    let out = validate(&env, &stamp);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.strings("errors")
            .contains(&format!("chunk_missing:{id}")),
        "{out:?}"
    );
    assert_eq!(out.json["registry_ok"], false);
}

#[test]
fn garbage_manifest_is_manifest_corrupt() {
    let env = Env::tiny();
    let stamp = env.create(&[])["stamp"].as_str().unwrap().to_string();
    fs::write(
        env.snapshot_dir(&stamp).join("manifest.bin"),
        b"this is not a manifest at all, just some garbage bytes of text",
    )
    .unwrap();
    let out = validate(&env, &stamp);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.json["exists"], true);
    let errors = out.strings("errors");
    assert!(
        errors.iter().any(|e| e.starts_with("manifest_corrupt")),
        "{out:?}"
    );
    // list still works and still shows the snapshot.
    let list = env.run(&["list"]);
    assert_eq!(list.code, 0);
    assert_eq!(list.json["snapshots"][0]["stamp"], stamp.as_str());
}

#[test]
fn unknown_stamp_is_snapshot_missing() {
    let env = Env::tiny();
    env.create(&[]);
    let out = validate(&env, "20200101T000000Z");
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.json["exists"], false);
    assert_eq!(out.strings("errors"), vec!["snapshot_missing".to_string()]);
}

// ---- bad input ---------------------------------------------------------------

#[test]
fn registry_that_is_not_json_is_not_validated() {
    let env = Env::tiny();
    fs::write(env.registry(), b"{ projects: [ not json").unwrap();
    let r = env.create(&[]);
    assert_eq!(r["validated"], false);
    assert_eq!(r["registry_snapshot_included"], true);
    let errs = strings(&r["validation_errors"]);
    assert!(
        errs.iter().any(|e| e.starts_with("registry_invalid_json")),
        "{r}"
    );
    let out = validate(&env, r["stamp"].as_str().unwrap());
    assert_eq!(out.code, 3);
    assert_eq!(out.json["registry_ok"], false);
    assert_eq!(out.json["db_ok"], true);
    assert!(out
        .strings("errors")
        .iter()
        .any(|e| e.starts_with("registry_invalid_json")));
}

#[test]
fn missing_db_is_exit_1_and_writes_nothing() {
    let env = Env::tiny();
    fs::remove_file(env.db()).unwrap();
    let out = env.run(&["create", "--chroma"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.error_code(), "db_missing");
    assert!(out.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("atocore.db"));
    assert!(out.stderr.contains("atocore.db"), "{}", out.stderr);
    assert!(!env.store.exists(), "a store was created for a missing db");

    // With an existing store: still no snapshot.
    let env = Env::tiny();
    env.create(&[]);
    fs::remove_file(env.db()).unwrap();
    let out = env.run(&["create"]);
    assert_eq!(out.code, 1);
    assert_eq!(out.error_code(), "db_missing");
    assert_eq!(
        env.run(&["list"]).json["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn db_that_is_not_sqlite_is_refused() {
    let env = Env::tiny();
    fs::write(env.db(), b"just text, no database here\n".repeat(100)).unwrap();
    let out = env.run(&["create"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.error_code(), "db_not_sqlite");
    assert!(!env.store.exists());
    // A directory where the db should be.
    fs::remove_file(env.db()).unwrap();
    fs::create_dir(env.db()).unwrap();
    let out = env.run(&["create"]);
    assert_eq!(out.code, 1);
    assert_eq!(out.error_code(), "db_not_sqlite");
}

#[test]
fn malformed_stamps_are_rejected() {
    let env = Env::tiny();
    env.create(&[]);
    for bad in [
        "../x",
        "",
        "20260411T120000Z/../..",
        "x",
        "20260411T120000Z-1",
    ] {
        let out = validate(&env, bad);
        assert_eq!(out.code, 1, "{bad:?}: {out:?}");
        assert_eq!(out.error_code(), "invalid_stamp", "{bad:?}");
        let out = env.run(&["verify", "--snapshot", bad]);
        assert_eq!(out.code, 1, "{bad:?}: {out:?}");
        assert_eq!(out.error_code(), "invalid_stamp", "{bad:?}");
    }
}

#[test]
fn a_store_of_a_newer_format_is_refused() {
    let env = Env::tiny();
    env.create(&[]);
    let path = env.store.join("config.json");
    let mut config: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    config["format_version"] = 99.into();
    config["something_new"] = "from the future".into();
    fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    for args in [
        vec!["list"],
        vec!["create"],
        vec!["verify"],
        vec!["validate", "20260101T000000Z"],
    ] {
        let out = env.run(&args);
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert_eq!(out.error_code(), "store_too_new", "{args:?}");
        assert!(out.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("99"));
    }
    assert_eq!(
        fs::read_dir(env.store.join("snapshots")).unwrap().count(),
        1
    );
}

#[test]
fn missing_store_is_store_missing() {
    let env = Env::tiny();
    let out = env.run(&["list"]);
    assert_eq!(out.code, 1);
    assert_eq!(out.error_code(), "store_missing");
    let out = env.run(&["verify"]);
    assert_eq!(out.error_code(), "store_missing");
}

#[test]
fn usage_errors_are_exit_2_with_a_json_document() {
    let env = Env::tiny();
    let out = env.run(&["create", "--no-such-flag"]);
    assert_eq!(out.code, 2);
    assert_eq!(out.error_code(), "usage");
    let out = env.run(&["create", "--at", "yesterday"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(out.error_code(), "usage");
    assert!(!env.store.exists(), "a usage error wrote a store");
}

// ---- paths from the environment ----------------------------------------------

#[test]
fn env_vars_are_used_and_flags_beat_them() {
    let env = Env::tiny();
    // Only environment variables.
    let out = run_cmd(
        env.bare_command()
            .env("ATOCORE_BACKUP_DIR", &env.store)
            .env("ATOCORE_DB_PATH", env.db())
            .env("ATOCORE_PROJECT_REGISTRY_PATH", env.registry())
            .env("ATOCORE_CHROMA_PATH", env.chroma())
            .args(["--quiet", "create", "--chroma"]),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["registry_snapshot_included"], true);
    assert_eq!(out.json["chroma_snapshot_included"], true);
    assert_eq!(out.json["chroma_snapshot_files"], 3);
    assert!(env.store.join("config.json").exists());

    // ATOCORE_DATA_DIR gives the db and Chroma defaults; the registry
    // default is relative to the working dir.
    let other_store = env.dir.path().join("store2");
    let out = run_cmd(
        env.bare_command()
            .current_dir(&env.runtime)
            .env("ATOCORE_DATA_DIR", env.runtime.join("data"))
            .args(["--quiet", "--store"])
            .arg(&other_store)
            .args(["create", "--chroma"]),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["registry_snapshot_included"], true);
    assert_eq!(out.json["chroma_snapshot_files"], 3);

    // Flags beat variables: the variables point nowhere useful.
    let flag_store = env.dir.path().join("store3");
    let out = run_cmd(
        env.bare_command()
            .env("ATOCORE_BACKUP_DIR", env.dir.path().join("not-this-store"))
            .env("ATOCORE_DB_PATH", env.dir.path().join("no-such.db"))
            .env("ATOCORE_CHROMA_PATH", env.dir.path().join("no-chroma"))
            .arg("--store")
            .arg(&flag_store)
            .arg("--db")
            .arg(env.db())
            .arg("--chroma-dir")
            .arg(env.chroma())
            .args(["create", "--chroma", "--quiet"]),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["chroma_snapshot_files"], 3);
    assert!(flag_store.join("config.json").exists());
    assert!(!env.dir.path().join("not-this-store").exists());

    // And the variable alone is used when no flag is given (it is wrong).
    let out = run_cmd(
        env.bare_command()
            .env("ATOCORE_DB_PATH", env.dir.path().join("no-such.db"))
            .arg("--store")
            .arg(&flag_store)
            .args(["create", "--quiet"]),
    );
    assert_eq!(out.code, 1);
    assert_eq!(out.error_code(), "db_missing");
    assert!(out.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no-such.db"));
}

#[test]
fn missing_chroma_dir_is_a_warning() {
    let env = Env::tiny();
    fs::remove_dir_all(env.chroma()).unwrap();
    let r = env.create(&["--chroma"]);
    assert_eq!(r["chroma_snapshot_included"], false);
    assert_eq!(r["validated"], true);
    assert!(strings(&r["warnings"]).iter().any(|w| w.contains("chroma")));
}

// ---- stamps, tags, list --------------------------------------------------------

/// A blank tag could never be taken off again (`tag --remove` refuses
/// blank tags): create refuses one as `tag` does, and stores a repeated
/// tag once.
#[test]
fn create_refuses_blank_tags_and_keeps_each_tag_once() {
    let env = Env::tiny();
    for blank in ["", " "] {
        let out = env.run(&["create", "--tag", "ok", "--tag", blank]);
        assert_eq!(out.code, 2, "{out:?}");
        let msg = out.json["error"]["message"].as_str().unwrap();
        assert!(msg.contains("--tag"), "{msg}");
    }
    // Refused before anything was made: no store for a bad command.
    assert!(!env.store.exists());
    let r = env.create(&["--tag", "a", "--tag", "b", "--tag", "a"]);
    assert_eq!(r["tags"], serde_json::json!(["a", "b"]));
}

#[test]
fn same_second_gets_a_suffix_and_tags_are_listed() {
    let env = Env::tiny();
    let at = "2026-04-11T12:00:00Z";
    let a = env.create(&["--at", at, "--tag", "nightly", "--tag", "keep"]);
    let b = env.create(&["--at", at]);
    let c = env.create(&["--at", "2026-04-11T12:00:00.700+00:00"]);
    assert_eq!(a["stamp"], "20260411T120000Z");
    assert_eq!(b["stamp"], "20260411T120000Z-2");
    assert_eq!(c["stamp"], "20260411T120000Z-3");
    let list = env.run(&["list"]);
    assert_eq!(list.code, 0);
    let snaps = list.json["snapshots"].as_array().unwrap();
    let stamps: Vec<&str> = snaps.iter().map(|s| s["stamp"].as_str().unwrap()).collect();
    assert_eq!(
        stamps,
        [
            "20260411T120000Z",
            "20260411T120000Z-2",
            "20260411T120000Z-3"
        ]
    );
    assert_eq!(snaps[0]["tags"], serde_json::json!(["nightly", "keep"]));
    assert_eq!(snaps[1]["tags"], serde_json::json!([]));
    for s in snaps {
        for field in [
            "stamp",
            "created_at",
            "tags",
            "db_size_bytes",
            "chroma_snapshot_included",
            "chroma_snapshot_files",
            "chroma_snapshot_bytes",
        ] {
            assert!(s.get(field).is_some(), "list entry lacks {field}");
        }
    }
    assert_eq!(snaps[0]["created_at"], "2026-04-11T12:00:00Z");
    assert_eq!(validate(&env, "20260411T120000Z-2").code, 0);
}

/// Stamps order snapshots: a snapshot taken after the first of its second
/// was forgotten must still sort after the ones left of that second, or
/// retention ("keep the newest") would delete it and the files cache
/// would take an older snapshot for the previous one.
#[test]
fn a_snapshot_never_takes_a_stamp_before_one_of_its_second_that_stands() {
    let env = Env::tiny();
    let at = ["--at", "2026-04-11T12:00:00Z"];
    assert_eq!(env.create(&at)["stamp"], "20260411T120000Z");
    assert_eq!(env.create(&at)["stamp"], "20260411T120000Z-2");
    let forget = env.run(&["forget", "20260411T120000Z", "--confirm"]);
    assert_eq!(forget.code, 0, "{forget:?}");
    let newest = env.create(&at);
    assert_eq!(newest["stamp"], "20260411T120000Z-3", "{newest}");
    let keep = env.run(&["cleanup", "--confirm", "--keep-last", "1"]);
    assert_eq!(keep.code, 0, "{keep:?}");
    assert_eq!(strings(&keep.json["kept_stamps"]), ["20260411T120000Z-3"]);
    // Once the whole second is gone its first stamp is free again.
    let forget = env.run(&["forget", "20260411T120000Z-3", "--confirm", "--force"]);
    assert_eq!(forget.code, 0, "{forget:?}");
    assert_eq!(env.create(&at)["stamp"], "20260411T120000Z");
}

#[test]
fn unparseable_folders_are_listed_never_touched() {
    let env = Env::tiny();
    let stamp = env.create(&[])["stamp"].as_str().unwrap().to_string();
    for name in ["garbage", "20260411T120000Z-01", "20260411"] {
        fs::create_dir(env.store.join("snapshots").join(name)).unwrap();
    }
    let list = env.run(&["list"]);
    assert_eq!(list.code, 0);
    let mut unparseable = strings(&list.json["unparseable"]);
    unparseable.sort();
    assert_eq!(unparseable, ["20260411", "20260411T120000Z-01", "garbage"]);
    assert_eq!(list.json["snapshots"].as_array().unwrap().len(), 1);
    assert_eq!(list.json["snapshots"][0]["stamp"], stamp.as_str());
    let out = env.run(&["verify"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(env.store.join("snapshots/garbage").is_dir());
}

// ---- what the Chroma walk captures -----------------------------------------------

#[test]
fn symlinks_are_recorded_not_followed() {
    let env = Env::tiny();
    let outside = env.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret.txt"), b"must not be captured").unwrap();
    std::os::unix::fs::symlink(&outside, env.chroma().join("linked-dir")).unwrap();
    std::os::unix::fs::symlink("seg/data_level0.bin", env.chroma().join("rel-link")).unwrap();
    // A loop: never followed, so harmless.
    std::os::unix::fs::symlink("loop-b", env.chroma().join("loop-a")).unwrap();
    std::os::unix::fs::symlink("loop-a", env.chroma().join("loop-b")).unwrap();
    let r = env.create(&["--chroma"]);
    assert_eq!(r["validated"], true, "{r}");
    assert_eq!(r["chroma_snapshot_files"], 3);
    let m = env.manifest(r["stamp"].as_str().unwrap());
    let target = |p: &str| match &m.find(p).unwrap_or_else(|| panic!("{p}")).kind {
        EntryKind::Symlink { target } => String::from_utf8_lossy(target).into_owned(),
        other => panic!("{p} recorded as {other:?}"),
    };
    assert_eq!(target("chroma/linked-dir"), outside.display().to_string());
    assert_eq!(target("chroma/rel-link"), "seg/data_level0.bin");
    assert_eq!(target("chroma/loop-a"), "loop-b");
    assert!(m.entries.iter().all(|e| !e.path_lossy().contains("secret")));
}

#[test]
fn special_files_are_skipped_with_a_warning() {
    let env = Env::tiny();
    let fifo = env.chroma().join("seg/a-fifo");
    support::mkfifo(&fifo);
    let r = env.create(&["--chroma"]);
    assert_eq!(r["validated"], true, "{r}");
    assert_eq!(r["chroma_snapshot_files"], 3);
    let warnings = strings(&r["warnings"]);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("special file") && w.contains("chroma/seg/a-fifo")),
        "{warnings:?}"
    );
    let m = env.manifest(r["stamp"].as_str().unwrap());
    assert!(m.find("chroma/seg/a-fifo").is_none());
}

#[test]
fn sqlite_in_chroma_is_captured_through_the_backup_api_without_sidecars() {
    let env = Env::tiny();
    let path = env.chroma().join("extra.sqlite3");
    support::make_db(&path, 50, true);
    // Rows that live only in the WAL while this connection stays open.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA wal_autocheckpoint=0;").unwrap();
    conn.execute(
        "INSERT INTO memories(id, content) VALUES (1000, 'only in the wal')",
        [],
    )
    .unwrap();
    assert!(env.chroma().join("extra.sqlite3-wal").exists());
    assert!(env.chroma().join("extra.sqlite3-shm").exists());

    let r = env.create(&["--chroma"]);
    assert_eq!(r["validated"], true, "{r}");
    let stamp = r["stamp"].as_str().unwrap();
    let m = env.manifest(stamp);
    let paths: Vec<String> = m.entries.iter().map(|e| e.path_lossy()).collect();
    assert!(paths.contains(&"chroma/extra.sqlite3".to_string()));
    assert!(
        paths
            .iter()
            .all(|p| !p.ends_with("-wal") && !p.ends_with("-shm")),
        "{paths:?}"
    );
    let entry = m.find("chroma/extra.sqlite3").unwrap().file().unwrap();
    assert!(entry.sqlite);

    // The captured copy holds the WAL-only row and is self-contained.
    let store = env.open_store();
    let index = store.load_index().unwrap();
    let out = env.dir.path().join("extracted.sqlite3");
    let mut f = fs::File::create(&out).unwrap();
    write_file(&store, &index, entry, &mut f, |_| {}, ChunkSource::Store).unwrap();
    drop(f);
    let copy = rusqlite::Connection::open(&out).unwrap();
    let n: i64 = copy
        .query_row(
            "SELECT count(*) FROM memories WHERE content = 'only in the wal'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    drop(conn);
}

#[test]
fn read_only_store_is_a_clear_error() {
    let Some(mut cmd) = unprivileged() else {
        eprintln!("skipped: running as root without setpriv");
        return;
    };
    let env = Env::tiny();
    let first = env.create(&[])["stamp"].as_str().unwrap().to_string();
    open_up(&env.runtime);
    // Readable, not writable, for the unprivileged user.
    for e in walkdir::WalkDir::new(&env.store).into_iter().flatten() {
        let mode = if e.file_type().is_dir() { 0o555 } else { 0o444 };
        fs::set_permissions(e.path(), fs::Permissions::from_mode(mode)).unwrap();
    }
    let out = run_cmd(env.path_flags(cmd.arg("--quiet"), &env.db()).arg("create"));
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        ["permission_denied", "read_only"].contains(&out.error_code()),
        "{out:?}"
    );
    let message = out.json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&env.store.display().to_string()),
        "{message}"
    );
    fs::set_permissions(&env.store, fs::Permissions::from_mode(0o755)).unwrap();
    let list = env.run(&["list"]);
    assert_eq!(list.json["snapshots"].as_array().unwrap().len(), 1);
    assert_eq!(list.json["snapshots"][0]["stamp"], first.as_str());
    if is_root() {
        eprintln!("ran unprivileged through setpriv");
    }
}

#[test]
fn non_utf8_names_are_captured_as_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::tiny();
    let name = std::ffi::OsStr::from_bytes(b"seg/\xff\xfe-odd.pickle");
    fs::write(env.chroma().join(name), support::pseudo_random(7, 5000)).unwrap();
    let r = env.create(&["--chroma"]);
    assert_eq!(r["validated"], true, "{r}");
    assert_eq!(r["chroma_snapshot_files"], 4);
    let stamp = r["stamp"].as_str().unwrap();
    let m = env.manifest(stamp);
    let entry = m
        .entries
        .iter()
        .find(|e| e.path == b"chroma/seg/\xff\xfe-odd.pickle")
        .expect("the raw name is kept");
    assert_eq!(entry.file().unwrap().size, 5000);
    assert_eq!(validate(&env, stamp).code, 0);
}
