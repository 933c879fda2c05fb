//! Every command on an `s3://` store, against a real Garage server (see
//! tests/support/s3.rs). Skipped without `ATOSNAP_TEST_S3_BUCKET`.

use crate::support::s3::*;
use crate::support::Runtime as Rt;
use crate::support::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Retention that keeps only the newest snapshot.
const KEEP_ONE_DAY: &[&str] = &[
    "--keep-daily",
    "1",
    "--keep-weekly",
    "0",
    "--keep-monthly",
    "0",
];

#[test]
fn every_command_works_on_a_bucket() {
    let Some(bucket) = bucket() else { return };
    let s = S3Rt::new(&bucket, "every-command");
    let init = s.ok(&["init"]);
    assert_eq!(init["store"], s.url.as_str());

    let first = s.ok(&["create", "--chroma", "--tag", "t1"]);
    assert_eq!(first["validated"], true, "{first}");
    assert!(first["chunks_new"].as_u64().unwrap() > 0);
    assert!(first["bytes_new_stored"].as_u64().unwrap() > 0);
    let a = first["stamp"].as_str().unwrap().to_string();

    // Unchanged: nothing new, and the files cache and the remote cache
    // (pack indexes, the previous manifest) spare the downloads.
    let second = s.ok(&["create", "--chroma"]);
    assert_eq!(second["chunks_new"], 0, "{second}");
    assert_eq!(second["bytes_new_stored"], 0);
    assert!(s.cache.exists(), "the cache dir was made");
    let b = second["stamp"].as_str().unwrap().to_string();

    s.rt.insert_marker("after-b");
    let third = s.ok(&["create", "--chroma"]);
    let c = third["stamp"].as_str().unwrap().to_string();
    assert!(third["chunks_new"].as_u64().unwrap() > 0);

    let list = s.ok(&["list"]);
    assert_eq!(stamps_of(&list), vec![a.clone(), b.clone(), c.clone()]);
    assert_eq!(list["snapshots"][0]["tags"][0], "t1");
    assert!(list["unparseable"].as_array().unwrap().is_empty());

    let v = s.ok(&["validate", &a]);
    assert_eq!(v["valid"], true);
    assert_eq!(v["db_ok"], true);
    assert_eq!(v["chroma_ok"], true);

    let verify = s.ok(&["verify"]);
    assert_eq!(verify["ok"], true, "{verify}");
    assert!(verify["objects_checked"].as_u64().unwrap() > 0);
    assert!(verify["orphans"].as_array().unwrap().is_empty());

    let diff = s.ok(&["diff", &b, &c]);
    assert_eq!(diff["changed"][0]["path"], "atocore.db", "{diff}");

    let drill = s.ok(&["drill", &c]);
    assert_eq!(drill["ok"], true, "{drill}");
    assert_eq!(s.ok(&["list"])["snapshots"][2]["last_drill"]["ok"], true);

    // Restore from the bucket is byte-identical to the runtime captured.
    let want = s.rt.restorable();
    let to = s.rt.path("restored");
    let r = s.ok(&["restore", &c, "--to", to.to_str().unwrap()]);
    assert_eq!(r["restored_integrity_ok"], true, "{r}");
    let got = restorable_tree(&to.join("chroma"), &to.join("project-registry.json"));
    let diffs = tree_diff(&want, &got);
    assert!(diffs.is_empty(), "restore differs: {diffs:?}");
    assert!(has_marker(&to.join("atocore.db"), "after-b"));

    // Retention then gc: the default grace period keeps young packs.
    let dry = s.ok(&[&["cleanup"][..], KEEP_ONE_DAY].concat());
    assert_eq!(dry["dry_run"], true);
    let gone = s.ok(&[&["cleanup", "--confirm"][..], KEEP_ONE_DAY].concat());
    assert_eq!(
        gone["deleted_stamps"].as_array().unwrap().len(),
        2,
        "{gone}"
    );
    assert_eq!(s.stamps(), vec![c.clone()]);
    let gc = s.ok(&["gc"]);
    assert_eq!(gc["grace_period_secs"], 3600, "{gc}");
    let gc = s.ok(&["gc", "--confirm", "--grace-period", "0"]);
    assert_eq!(gc["grace_period_secs"], 0);
    let after = s.ok(&["verify"]);
    assert_eq!(after["ok"], true, "{after}");
    assert!(after["orphans"].as_array().unwrap().is_empty(), "{after}");
    assert_eq!(s.ok(&["validate", &c])["valid"], true);
}

#[test]
fn an_encrypted_store_on_a_bucket_round_trips() {
    let Some(bucket) = bucket() else { return };
    let s = S3Rt::new(&bucket, "encrypted");
    let pw = s.rt.path("pw");
    std::fs::write(&pw, "correct horse battery staple").unwrap();
    let pw = pw.to_str().unwrap().to_string();
    let cache = s.cache.display().to_string();
    let env = [
        ("ATOSNAP_CACHE_DIR", cache.as_str()),
        ("ATOSNAP_KDF_PARAMS", "m=64,t=1,p=1"),
    ];
    let Out {
        json: j,
        code,
        stderr: err,
        ..
    } = s.rt.run_env(
        &["--password-file", &pw, "init", "--encryption", "repokey"],
        &env,
    );
    assert_eq!(code, 0, "{j}\n{err}");
    let Out {
        json: j,
        code,
        stderr: err,
        ..
    } =
        s.rt.run_env(&["--password-file", &pw, "create", "--chroma"], &env);
    assert_eq!(code, 0, "{j}\n{err}");
    let stamp = j["stamp"].as_str().unwrap().to_string();
    let Out { json: j, code, .. } =
        s.rt.run_env(&["--password-file", &pw, "validate", &stamp], &env);
    assert_eq!((code, &j["valid"]), (0, &serde_json::json!(true)), "{j}");
    // Without the password: refused before any work.
    let Out { json: j, code, .. } = s.rt.run_env(&["list"], &env);
    assert_eq!(code, 1);
    assert_eq!(j["error"]["code"], "password_required");

    // key passwd replaces the key object in the bucket.
    let new_pw = s.rt.path("new-pw");
    std::fs::write(&new_pw, "a new and better password").unwrap();
    let new_pw = new_pw.to_str().unwrap().to_string();
    let Out {
        json: j,
        code,
        stderr: err,
        ..
    } = s.rt.run_env(
        &[
            "--password-file",
            &pw,
            "key",
            "passwd",
            "--new-password-file",
            &new_pw,
        ],
        &env,
    );
    assert_eq!(code, 0, "{j}\n{err}");
    let Out { json: j, code, .. } = s.rt.run_env(&["--password-file", &pw, "list"], &env);
    assert_eq!(
        (code, &j["error"]["code"]),
        (1, &serde_json::json!("wrong_password"))
    );
    let Out { json: j, code, .. } =
        s.rt.run_env(&["--password-file", &new_pw, "validate", &stamp], &env);
    assert_eq!((code, &j["valid"]), (0, &serde_json::json!(true)), "{j}");
}

#[test]
fn the_cache_is_only_a_cache() {
    let Some(bucket) = bucket() else { return };
    let s = S3Rt::new(&bucket, "cache");
    s.ok(&["create", "--chroma"]);
    s.rt.insert_marker("m");
    s.ok(&["create", "--chroma"]);
    let list = s.ok(&["list"]);
    let entries: Vec<_> = walkdir::WalkDir::new(&s.cache)
        .into_iter()
        .flatten()
        .filter(|e| {
            // The scratch folder beside the cached objects is not cache.
            e.file_type().is_file()
                && e.path()
                    .strip_prefix(&s.cache)
                    .is_ok_and(|rel| !rel.components().any(|c| c.as_os_str() == "tmp"))
        })
        .map(|e| e.into_path())
        .collect();
    assert!(
        entries
            .iter()
            .any(|p| p.to_string_lossy().contains("packidx")),
        "pack indexes are cached: {entries:?}"
    );
    assert!(
        entries
            .iter()
            .any(|p| p.to_string_lossy().contains("manifest.bin")),
        "manifests are cached: {entries:?}"
    );
    assert!(
        entries.iter().any(|p| p.ends_with("index/packs.tbl")),
        "the chunk index is cached: {entries:?}"
    );
    // Damage every cache entry (the chunk index's files too; its empty
    // lock file has no byte to flip): results are the same (entries
    // refetched, the index rebuilt).
    for p in &entries {
        let mut bytes = std::fs::read(p).unwrap();
        let Some(last) = bytes.len().checked_sub(1) else {
            continue;
        };
        bytes[last] ^= 0x41;
        std::fs::write(p, bytes).unwrap();
    }
    assert_eq!(s.ok(&["list"]), list);
    let stamps = stamps_of(&list);
    assert_eq!(s.ok(&["validate", &stamps[1]])["valid"], true);
    // And without any cache.
    std::fs::remove_dir_all(&s.cache).unwrap();
    assert_eq!(s.ok(&["list"]), list);
    let again = s.ok(&["create", "--chroma"]);
    assert_eq!(again["chunks_new"], 0, "{again}");
}

/// A snapshot forgotten and taken again in the same second gets the same
/// stamp, and its manifest can have the same size: the cached manifest of
/// the forgotten one must not stand in for it (it did: `dump` returned the
/// old registry, and a gc racing creates read lists long deleted).
#[test]
fn a_stamp_taken_again_after_its_snapshot_was_forgotten_reads_the_new_snapshot() {
    let Some(bucket) = bucket() else { return };
    let s = S3Rt::new(&bucket, "stamp-again");
    let at = ["--at", "2026-04-01T12:00:00Z"];
    let manifest_size = |stamp: &str| {
        s.backend()
            .size(&format!("snapshots/{stamp}/manifest.bin"))
            .unwrap()
    };
    s.rt.set_registry(64, 1);
    let old = std::fs::read_to_string(s.rt.registry()).unwrap();
    let stamp = s.ok(&[&["create"][..], &at].concat())["stamp"]
        .as_str()
        .unwrap()
        .to_string();
    let old_size = manifest_size(&stamp);
    // Read through the cache: the manifest and the summary are cached now.
    assert_eq!(
        s.run(&["dump", &stamp, "project-registry.json"]).stdout,
        old
    );
    s.ok(&["forget", &stamp, "--confirm", "--force"]);

    s.rt.set_registry(64, 2);
    let new = std::fs::read_to_string(s.rt.registry()).unwrap();
    assert_ne!(new, old);
    let again = s.ok(&[&["create"][..], &at].concat());
    assert_eq!(again["stamp"], stamp.as_str(), "the stamp is free again");
    assert_eq!(
        manifest_size(&stamp),
        old_size,
        "the two manifests have one size, so a key by size cannot tell them apart"
    );
    assert_eq!(
        s.run(&["dump", &stamp, "project-registry.json"]).stdout,
        new
    );
    assert_eq!(s.ok(&["validate", &stamp])["valid"], true);
    let ls = s.ok(&["ls", &stamp, "project-registry.json"]);
    assert_eq!(ls, s.rt.run(&["ls", &stamp, "project-registry.json"]).json);
}

/// `tag` rewrites a summary in place; edits of one size (`aa`, then `bb`)
/// must each be read back through the cache, from this host and another.
#[test]
fn tag_edits_of_one_size_are_read_through_the_cache() {
    let Some(bucket) = bucket() else { return };
    let s = S3Rt::new(&bucket, "tag-sizes");
    let stamp = s.ok(&["create"])["stamp"].as_str().unwrap().to_string();
    let other_host = s.rt.path("other-cache");
    let tags_seen = |cache: &std::path::Path| {
        let cache = cache.display().to_string();
        let out = s.rt.run_env(&["list"], &[("ATOSNAP_CACHE_DIR", &cache)]);
        out.json["snapshots"][0]["tags"].clone()
    };
    for (edit, want) in [
        (["--add", "aa"], serde_json::json!(["aa"])),
        (["--remove", "aa"], serde_json::json!([])),
        (["--add", "bb"], serde_json::json!(["bb"])),
        (["--remove", "bb"], serde_json::json!([])),
        (["--add", "aa"], serde_json::json!(["aa"])),
    ] {
        assert_eq!(tags_seen(&other_host), tags_seen(&s.cache));
        s.ok(&[&["tag", &stamp][..], &edit].concat());
        assert_eq!(tags_seen(&s.cache), want, "{edit:?}");
        assert_eq!(tags_seen(&other_host), want, "{edit:?}, another host");
    }
}

#[test]
fn a_flipped_byte_in_the_bucket_is_found_by_verify_and_named() {
    let Some(bucket) = bucket() else { return };
    let s = S3Rt::new(&bucket, "flip");
    let stamp = s.ok(&["create", "--chroma"])["stamp"]
        .as_str()
        .unwrap()
        .to_string();
    let backend = s.backend();
    let packs: Vec<_> = backend
        .list_files("objects")
        .unwrap()
        .into_iter()
        .filter(|e| e.name.ends_with(".pack"))
        .collect();
    let victim = &packs[0];
    let mut bytes = backend.read(&victim.name).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    backend.replace(&victim.name, &bytes).unwrap();

    let Out { json: v, code, .. } = s.run(&["verify"]);
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["ok"], false);
    let damaged = v["damaged_objects"].to_string();
    let file = victim.name.rsplit('/').next().unwrap();
    assert!(damaged.contains(file), "{file} not named in {damaged}");
    assert_eq!(v["snapshots"][&stamp]["ok"], false, "{v}");
    // validate, the gate of a restore, catches it too (if the flipped
    // byte lies in a referenced chunk, which the middle of a pack does).
    let Out {
        json: val, code, ..
    } = s.run(&["validate", &stamp]);
    assert_eq!(code, 3, "{val}");

    // Repair moves the pack into quarantine/ in the bucket (never deletes
    // it) and keeps its intact chunks; the next create heals the rest.
    let Out { json: r, code, .. } = s.run(&["verify", "--repair"]);
    assert_eq!(code, 3, "{r}");
    let moved_to = r["repair"]["quarantined"][0]["moved_to"].as_str().unwrap();
    assert!(backend.exists(moved_to).unwrap(), "{moved_to} kept");
    assert!(!backend.exists(&victim.name).unwrap());
    let healed = s.ok(&["create", "--chroma"]);
    let fresh = healed["stamp"].as_str().unwrap();
    assert_eq!(s.ok(&["validate", fresh])["valid"], true);
}

#[test]
fn create_and_gc_racing_never_lose_a_snapshot() {
    let Some(bucket) = bucket() else { return };
    let s = S3Rt::new(&bucket, "race");
    s.ok(&["create", "--chroma"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc_runs = {
        let stop = stop.clone();
        let cache = s.cache.clone();
        let store = s.url.clone();
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_atosnap"))
                    .args(["--quiet", "--store", &store, "--lock-wait", "120"])
                    .args(["gc", "--confirm", "--grace-period", "0"])
                    .env("ATOSNAP_CACHE_DIR", &cache)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "gc failed: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
                runs += 1;
            }
            runs
        })
    };
    let mut made = Vec::new();
    for i in 0..6 {
        s.rt.insert_marker(&format!("race-{i}"));
        let Out {
            json: j,
            code,
            stderr: err,
            ..
        } = s.run(&["--lock-wait", "120", "create", "--chroma"]);
        assert_eq!(code, 0, "{j}\n{err}");
        made.push(j["stamp"].as_str().unwrap().to_string());
        // Retention deletes all but the newest snapshot, so gc has work,
        // and the next create may take a forgotten snapshot's stamp again
        // (same second): the cached manifest of that one must not be read.
        let cleanup = ["--lock-wait", "120", "cleanup", "--confirm"];
        s.ok(&[&cleanup[..], &["--grace-period", "0"], KEEP_ONE_DAY].concat());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = gc_runs.join().unwrap();
    assert!(runs >= 1);
    let listed = s.stamps();
    assert!(listed.contains(made.last().unwrap()));
    for stamp in &listed {
        let v = s.ok(&["validate", stamp]);
        assert_eq!(v["valid"], true, "{stamp}: {v}");
    }
    let verify = s.ok(&["verify"]);
    assert_eq!(verify["ok"], true, "{verify}");
}

/// Runs atosnap with `env` against `store`; (json, exit code, elapsed).
fn run_timed(
    store: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> (serde_json::Value, i32, Duration) {
    let started = Instant::now();
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_atosnap"));
    c.args(["--quiet", "--store", store]).args(args);
    c.env("ATOSNAP_S3_RETRIES", "2");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (json, out.status.code().unwrap_or(-1), started.elapsed())
}

#[test]
fn bad_credentials_missing_bucket_and_unreachable_endpoint_fail_clearly() {
    let Some(bucket) = bucket() else { return };
    let url = fresh_url(&bucket, "bad");
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().to_str().unwrap().to_string();
    let base = [("ATOSNAP_CACHE_DIR", cache.as_str())];

    let wrong = [
        base[0],
        ("AWS_ACCESS_KEY_ID", "GKnotakey0000000000000000"),
        (
            "AWS_SECRET_ACCESS_KEY",
            "0000000000000000000000000000000000000000000000000000000000000000",
        ),
    ];
    let (j, code, took) = run_timed(&url, &wrong, &["list"]);
    assert_eq!(code, 1, "{j}");
    let msg = j["error"]["message"].as_str().unwrap_or("");
    assert!(
        !msg.contains("0000000000000000000000000000000000000000"),
        "secret leaked: {msg}"
    );
    assert!(took < Duration::from_secs(60), "{took:?}");

    let missing = format!(
        "s3://atosnap-no-such-bucket-{:08x}/x",
        rand::random::<u64>() as u32
    );
    let (j, code, took) = run_timed(&missing, &base, &["list"]);
    assert_eq!(code, 1, "{j}");
    assert!(
        j["error"]["message"]
            .as_str()
            .unwrap()
            .contains("atosnap-no-such-bucket"),
        "{j}"
    );
    assert!(took < Duration::from_secs(60), "{took:?}");

    let unreachable = [base[0], ("ATOSNAP_S3_ENDPOINT", "http://127.0.0.1:9")];
    let (j, code, took) = run_timed(&url, &unreachable, &["list"]);
    assert_eq!(code, 1, "{j}");
    let msg = j["error"]["message"].as_str().unwrap();
    assert!(msg.contains("127.0.0.1:9"), "{j}");
    // Bounded retries (ATOSNAP_S3_RETRIES=2: one pause of 0.5 s), then
    // the failure, never a hang.
    assert!(msg.contains("tried 2 times"), "{j}");
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_secs(60), "{took:?}");

    // A create against the unreachable endpoint writes nothing and fails.
    let rt = Rt::fixture();
    let (j, code, _) = run_timed(
        &url,
        &unreachable,
        &[
            "--db",
            rt.db().to_str().unwrap(),
            "--registry",
            rt.registry().to_str().unwrap(),
            "create",
        ],
    );
    assert_eq!(code, 1, "{j}");
    assert!(j.get("stamp").is_none(), "{j}");
}

/// A child process killed when the test ends, passed or failed.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_works_on_a_bucket() {
    let Some(bucket) = bucket() else { return };
    let s = S3Rt::new(&bucket, "serve");
    s.ok(&["create"]);
    let port = 20000 + (rand::random::<u64>() % 20000) as u16;
    let listen = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_atosnap"));
    child
        .args(["--quiet", "--store", &s.url, "--db"])
        .arg(s.rt.db())
        .args(["--registry"])
        .arg(s.rt.registry())
        .args(["serve", "--listen", &listen])
        .env("ATOSNAP_CACHE_DIR", &s.cache)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = KillOnDrop(child.spawn().unwrap());
    let get = |path: &str, method: &str| -> Option<String> {
        let mut c = std::net::TcpStream::connect(&listen).ok()?;
        write!(
            c,
            "{method} {path} HTTP/1.1\r\nHost: {listen}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        c.read_to_string(&mut out).ok()?;
        Some(out)
    };
    let started = Instant::now();
    let mut listing = None;
    while started.elapsed() < Duration::from_secs(60) {
        if let Some(r) = get("/admin/backup", "GET") {
            listing = Some(r);
            break;
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            let mut err = String::new();
            child
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("serve exited ({status}) before answering: {err}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let listing = listing.expect("serve answered");
    assert!(listing.starts_with("HTTP/1.1 200"), "{listing}");
    let created = get("/admin/backup", "POST").unwrap();
    assert!(created.starts_with("HTTP/1.1 200"), "{created}");
    let body = created.split("\r\n\r\n").nth(1).unwrap_or("");
    let created_json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(created_json["validated"], true, "{created}");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = child.0.wait().unwrap();
    assert!(status.success());
    assert_eq!(s.stamps().len(), 2);
}

#[test]
fn a_folder_abandoned_between_claim_and_commit_is_taken_over() {
    let Some(bucket) = bucket() else { return };
    let s = S3Rt::new(&bucket, "abandoned");
    s.ok(&["init"]);
    let b = s.backend();
    let dir = "snapshots/20260101T000000Z";
    let files = [
        ("backup-metadata.json", b"{}".to_vec()),
        ("manifest.bin", b"m".to_vec()),
    ];
    // A claim by a process of this host that still runs: respected.
    let live = claim_in(dir, std::process::id(), 1);
    b.write_once(&live, b"x").unwrap();
    assert!(!b.write_dir_once(dir, &files).unwrap());
    b.delete(&live).unwrap();
    // A writer that died after its claim and its summary: the folder is
    // not a snapshot, and the next writer of the name takes it over.
    let dead = claim_in(dir, dead_pid(), 2);
    b.write_once(&dead, b"x").unwrap();
    b.write_once(&format!("{dir}/backup-metadata.json"), b"half")
        .unwrap();
    assert!(s.stamps().is_empty());
    assert!(b.write_dir_once(dir, &files).unwrap());
    assert!(!b.exists(&dead).unwrap());
    assert_eq!(
        b.read(&format!("{dir}/backup-metadata.json")).unwrap(),
        b"{}"
    );
    assert_eq!(b.read(&format!("{dir}/manifest.bin")).unwrap(), b"m");
}

/// SPEC §2: a folder under `snapshots/` that is not a stamp is listed,
/// never deleted. On a bucket a folder without a manifest was taken for an
/// abandoned snapshot before its name was looked at, and gc removed it.
#[test]
fn a_folder_that_is_not_a_stamp_is_listed_and_never_deleted() {
    let Some(bucket) = bucket() else { return };
    let s = S3Rt::new(&bucket, "not-a-stamp");
    s.ok(&["init"]);
    s.ok(&["create"]);
    let b = s.backend();
    b.write_once("snapshots/notes/readme.txt", b"operator notes")
        .unwrap();
    let list = s.ok(&["list"]);
    assert_eq!(list["unparseable"], serde_json::json!(["notes"]), "{list}");
    let out = s.run(&["gc", "--confirm", "--grace-period", "0"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.json["abandoned_snapshot_folders"],
        serde_json::json!([])
    );
    assert!(b.exists("snapshots/notes/readme.txt").unwrap());
    // An abandoned stamp-named folder is still taken.
    b.write_once("snapshots/20260101T000000Z/backup-metadata.json", b"{}")
        .unwrap();
    let out = s.run(&["gc", "--confirm", "--grace-period", "0"]);
    assert_eq!(
        out.json["abandoned_snapshot_folders"],
        serde_json::json!(["20260101T000000Z"]),
        "{out:?}"
    );
    assert!(b.exists("snapshots/notes/readme.txt").unwrap());
}

#[test]
fn tag_forget_policy_ls_dump_and_partial_restore_on_a_bucket() {
    let Some(bucket) = bucket() else { return };
    let s = S3Rt::new(&bucket, "ops");
    s.ok(&["init"]);
    let a = s.ok(&["create", "--chroma", "--at", "2026-04-10T12:00:00Z"])["stamp"]
        .as_str()
        .unwrap()
        .to_string();
    let b = s.ok(&["create", "--chroma", "--at", "2026-04-11T12:00:00Z"])["stamp"]
        .as_str()
        .unwrap()
        .to_string();

    // Tag edits of the same length: the cache (keyed by size) must not
    // hand back the old summary.
    s.ok(&["list"]);
    assert_eq!(s.ok(&["tag", &a, "--add", "aa"])["tags"][0], "aa");
    assert_eq!(s.ok(&["list"])["snapshots"][0]["tags"][0], "aa");
    s.ok(&["tag", &a, "--remove", "aa", "--add", "bb"]);
    assert_eq!(s.ok(&["list"])["snapshots"][0]["tags"][0], "bb");

    // The stored policy lives in the bucket and cleanup applies it.
    s.ok(&[
        "policy",
        "set",
        "--keep-last",
        "1",
        "--keep-daily",
        "0",
        "--keep-weekly",
        "0",
        "--keep-monthly",
        "0",
        "--keep-tag",
        "bb",
    ]);
    assert_eq!(s.ok(&["policy", "show"])["stored"], true);
    let dry = s.ok(&["cleanup"]);
    assert_eq!(dry["policy_source"], "store");
    assert_eq!(dry["reasons"][&a][0], "tag:bb", "{dry}");

    let ls = s.ok(&["ls", &b, "chroma", "--long"]);
    assert!(ls["files"].as_u64().unwrap() > 0, "{ls}");
    let out = s.rt.path("registry.out");
    let d = s.ok(&[
        "dump",
        &b,
        "project-registry.json",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(s.rt.registry()).unwrap(),
        "{d}"
    );
    let to = s.rt.path("partial");
    let r = s.ok(&[
        "restore",
        &b,
        "--to",
        to.to_str().unwrap(),
        "--include",
        "project-registry.json",
    ]);
    assert_eq!(r["registry_restored"], true, "{r}");

    let f = s.ok(&["forget", "--confirm", "--grace-period", "0", &a]);
    assert_eq!(f["deleted_stamps"][0], a.as_str(), "{f}");
    assert_eq!(s.stamps(), vec![b.clone()]);
    let Out { json, code, .. } = s.run(&["forget", &b]);
    assert_eq!(code, 1, "{json}");
    assert_eq!(json["error"]["code"], "forget_would_delete_all");
    assert_eq!(s.ok(&["verify"])["ok"], true);
}

#[test]
fn verify_and_copy_record_their_outcomes_in_a_bucket() {
    let Some(bucket) = bucket() else { return };
    let s = S3Rt::new(&bucket, "audit-log");
    s.ok(&["init"]);
    let a = s.ok(&["create"])["stamp"].as_str().unwrap().to_string();
    s.rt.insert_marker("second");
    s.ok(&["create"]);

    let v = s.ok(&["verify", "--snapshot", &a]);
    assert!(
        v["recorded"].as_str().unwrap().starts_with("verifies/"),
        "{v}"
    );
    let list = s.ok(&["list"]);
    assert_eq!(list["snapshots"][0]["last_verify"]["ok"], true, "{list}");
    assert_eq!(list["snapshots"][1]["last_verify"], serde_json::Value::Null);

    // Two subsets read every pack once; --oldest 100 reads them all.
    let total = v["packs_total"].as_u64().unwrap();
    let halves: u64 = ["1/2", "2/2"]
        .iter()
        .map(|n| {
            s.ok(&["verify", "--subset", n])["packs_sampled"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(halves, total);
    let all = s.ok(&["verify", "--oldest", "100"]);
    assert_eq!(all["packs_sampled"].as_u64().unwrap(), total, "{all}");
    let list = s.ok(&["list"]);
    assert_eq!(list["snapshots"][1]["last_verify"]["ok"], true, "{list}");
    let Out { code, .. } = s.run(&["verify", "--subset", "4/3"]);
    assert_eq!(code, 2);

    // The copy log stays in the source bucket.
    let dest = s.rt.path("local-copy");
    let c = s.ok(&["copy", "--to", dest.to_str().unwrap()]);
    assert!(
        c["recorded"].as_str().unwrap().starts_with("copies/"),
        "{c}"
    );
}

/// A folder left incomplete in the bucket under a stamp the copy wants (a
/// writer at work there: its claim names a live process of this host) is
/// a `copy_stamp_busy` failure, recorded as such, and the writer's files
/// are left alone; once the folder is gone the copy goes through. (Before,
/// the refused publish was counted as "already there": a skip, exit 0.)
#[test]
fn an_incomplete_folder_at_the_destination_is_busy_not_skipped() {
    let Some(bucket) = bucket() else { return };
    let local = Rt::fixture();
    let a = local.ok(&["create"])["stamp"].as_str().unwrap().to_string();
    let dest = S3Rt::new(&bucket, "copy-busy");
    dest.ok(&["init"]);
    let b = dest.backend();
    let dir = format!("snapshots/{a}");
    let claim = claim_in(&dir, std::process::id(), 1);
    let meta = format!("{dir}/backup-metadata.json");
    b.write_once(&claim, b"claim").unwrap();
    b.write_once(&meta, b"half-written").unwrap();
    let cache = dest.cache.display().to_string();
    let env = [("ATOSNAP_CACHE_DIR", cache.as_str())];
    let out = local.run_env(&["copy", "--to", &dest.url], &env);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.json["snapshots_failed"][0]["stamp"],
        a.as_str(),
        "{out:?}"
    );
    assert_eq!(out.json["snapshots_failed"][0]["code"], "copy_stamp_busy");
    assert_eq!(out.json["snapshots_skipped"], serde_json::json!([]));
    assert_eq!(out.json["snapshots_copied"], serde_json::json!([]));
    let record = std::fs::read(
        out.json["recorded"]
            .as_str()
            .map(|r| local.store.join(r))
            .unwrap(),
    )
    .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&record).unwrap();
    assert_eq!(record["ok"], false, "{record}");
    assert_eq!(
        b.read(&meta).unwrap(),
        b"half-written",
        "the writer's file stays"
    );
    assert!(dest.stamps().is_empty());
    // Its writer gave up and cleaned up: the copy goes through.
    b.delete(&claim).unwrap();
    b.delete(&meta).unwrap();
    let out = local.run_env(&["copy", "--to", &dest.url], &env);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["snapshots_copied"][0], a.as_str());
    assert_eq!(dest.stamps(), vec![a]);
}

/// A tiny runtime holding `noise` bytes of random data in its Chroma dir,
/// backed up to a fresh prefix of the bucket.
fn tiny_on_bucket(bucket: &str, test: &str, noise: usize) -> S3Rt {
    let mut rt = Rt::tiny();
    rt.add_junk("noise.bin", noise, 17);
    let url = fresh_url(bucket, test);
    rt.store = std::path::PathBuf::from(&url);
    let cache = rt.path("cache");
    S3Rt { rt, url, cache }
}

#[test]
fn stats_on_a_bucket_add_up() {
    let Some(bucket) = bucket() else { return };
    let s = tiny_on_bucket(&bucket, "stats", 256 * 1024);
    s.ok(&["init", "--compression", "zstd:9"]);
    let created = s.ok(&["create", "--chroma"]);
    let stats = s.ok(&["stats", "--per-snapshot"]);
    assert_eq!(stats["store"], s.url.as_str(), "{stats}");
    assert_eq!(stats["compression"], "zstd:9");
    assert_eq!(stats["snapshots"], 1);
    assert_eq!(stats["chunks"], created["chunks_new"], "{stats}");
    let share = &stats["per_snapshot"][0];
    assert_eq!(share["stamp"], created["stamp"]);
    assert_eq!(share["unique_chunks"], stats["chunks"]);
    assert!(share["unique_raw_bytes"].as_u64().unwrap() >= 256 * 1024);
    assert!(
        stats["store_bytes"].as_u64().unwrap() > stats["unique_stored_bytes"].as_u64().unwrap()
    );
    // gc's dry run on the bucket, not another reckoning: both say 0 here
    // (nothing dead, and young packs are within the grace period).
    assert_eq!(
        stats["bytes_reclaimable"],
        s.ok(&["gc"])["bytes_reclaimable"]
    );
}

#[test]
fn transfer_limits_slow_uploads_and_downloads_of_a_bucket() {
    let Some(bucket) = bucket() else { return };
    // 4 MiB of noise: stored raw, so about 4 MiB goes up and comes down.
    let s = tiny_on_bucket(&bucket, "limits", 4 << 20);
    s.ok(&["init"]);
    let started = Instant::now();
    let created = s.ok(&["create", "--chroma", "--limit-upload", "1024"]);
    let took = started.elapsed();
    assert!(created["bytes_new_stored"].as_u64().unwrap() >= 4 << 20);
    assert!(
        took >= Duration::from_secs(3),
        "4 MiB at 1024 KiB/s took {took:?}"
    );
    assert!(created
        .get("warnings")
        .is_none_or(|w| !w.to_string().contains("ignored")));
    let stamp = created["stamp"].as_str().unwrap().to_string();

    // A fresh cache: the pack is downloaded again, at the limit.
    let out = s.rt.path("noise.out");
    let fresh = s.rt.path("fresh-cache");
    let started = Instant::now();
    let dumped = s.rt.run_env(
        &[
            "dump",
            &stamp,
            "chroma/noise.bin",
            "--output",
            out.to_str().unwrap(),
            "--limit-download",
            "1024",
        ],
        &[("ATOSNAP_CACHE_DIR", fresh.to_str().unwrap())],
    );
    let took = started.elapsed();
    assert_eq!(dumped.code, 0, "{dumped:?}");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 4 << 20);
    assert!(
        took >= Duration::from_secs(3),
        "4 MiB at 1024 KiB/s took {took:?}"
    );

    // Bad values are usage errors on a bucket too, before any request.
    for bad in ["0", "-1", "x"] {
        let Out { json, code, .. } = s.run(&["list", "--limit-upload", bad]);
        assert_eq!(code, 2, "{bad}: {json}");
        assert!(json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--limit-upload"));
    }
}
