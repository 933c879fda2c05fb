//! `atosnap copy`, black-box through the binary: every snapshot or named
//! ones into another store, only the missing chunks sent, restores from the
//! copy identical to restores from the source, re-encryption between
//! schemes and keys, damage at the source never propagated, and
//! convergence after a copy killed at any point.

use crate::support::{flip_bit, run_cmd, strings, Out, Runtime as Env};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Cheap Argon2id so each command on an encrypted store costs milliseconds.
const CHEAP_KDF: &str = "m=64,t=1,p=1";
const MARKER: &[u8] = b"ATOSNAP-COPY-PLAINTEXT-MARKER-77c1d";
const PASSWORD_VARS: &[&str] = &[
    "ATOSNAP_PASSWORD",
    "ATOSNAP_PASSWORD_FILE",
    "ATOSNAP_TO_PASSWORD",
    "ATOSNAP_TO_PASSWORD_FILE",
    "ATOSNAP_FROM_PASSWORD",
    "ATOSNAP_FROM_PASSWORD_FILE",
    "ATOSNAP_COPY_TO",
    "ATOSNAP_FAILPOINT",
];

pub(super) fn u(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a number in {v}"))
}

/// The binary on `store` (runtime paths from `env`), no password source.
pub(super) fn on(env: &Env, store: &Path) -> Command {
    let mut cmd = env.bare_command();
    for v in PASSWORD_VARS {
        cmd.env_remove(v);
    }
    cmd.env("ATOSNAP_KDF_PARAMS", CHEAP_KDF)
        .arg("--quiet")
        .arg("--store")
        .arg(store)
        .arg("--db")
        .arg(env.db())
        .arg("--registry")
        .arg(env.registry())
        .arg("--chroma-dir")
        .arg(env.chroma());
    cmd
}

/// `copy --to DEST [args]` from the env's store.
pub(super) fn copy(env: &Env, dest: &Path, args: &[&str]) -> Out {
    run_cmd(
        on(env, &env.store)
            .arg("copy")
            .arg("--to")
            .arg(dest)
            .args(args),
    )
}

pub(super) fn copy_ok(env: &Env, dest: &Path, args: &[&str]) -> Value {
    let out = copy(env, dest, args);
    assert_eq!(out.code, 0, "copy failed: {out:?}");
    out.json
}

pub(super) fn stamps_of(env: &Env, store: &Path, pw: &[(&str, &str)]) -> Vec<String> {
    let mut cmd = on(env, store);
    cmd.arg("list").envs(pw.iter().copied());
    let out = run_cmd(&mut cmd);
    assert_eq!(out.code, 0, "list failed: {out:?}");
    out.json["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stamp"].as_str().unwrap().to_string())
        .collect()
}

/// One restored thing: content (or link target) hash, mode, kind.
type Tree = BTreeMap<String, (String, u32)>;

/// Restores `stamp` from `store` into a fresh folder and describes it.
pub(super) fn restored(env: &Env, store: &Path, stamp: &str, pw: &[(&str, &str)]) -> Tree {
    let to = tempfile::tempdir_in(env.dir.path()).unwrap();
    let mut cmd = on(env, store);
    cmd.args(["restore", stamp, "--to"])
        .arg(to.path())
        .envs(pw.iter().copied());
    let out = run_cmd(&mut cmd);
    assert_eq!(out.code, 0, "restore {stamp} from {store:?}: {out:?}");
    let mut tree = Tree::new();
    for e in walkdir::WalkDir::new(to.path()).follow_links(false) {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(to.path())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        let what = if meta.file_type().is_symlink() {
            format!("link {:?}", std::fs::read_link(e.path()).unwrap())
        } else if meta.is_dir() {
            "dir".to_string()
        } else {
            blake3::hash(&std::fs::read(e.path()).unwrap())
                .to_hex()
                .to_string()
        };
        tree.insert(rel, (what, meta.permissions().mode() & 0o7777));
    }
    assert!(tree.contains_key("atocore.db"), "{tree:?}");
    tree
}

pub(super) fn verify_ok(env: &Env, store: &Path, pw: &[(&str, &str)]) -> Value {
    let mut cmd = on(env, store);
    cmd.arg("verify").envs(pw.iter().copied());
    let out = run_cmd(&mut cmd);
    assert_eq!(out.code, 0, "verify of {store:?}: {out:?}");
    assert_eq!(out.json["ok"], true);
    out.json
}

pub(super) fn validate_ok(env: &Env, store: &Path, stamp: &str, pw: &[(&str, &str)]) {
    let mut cmd = on(env, store);
    cmd.args(["validate", stamp]).envs(pw.iter().copied());
    let out = run_cmd(&mut cmd);
    assert_eq!(out.code, 0, "validate {stamp} of {store:?}: {out:?}");
    assert_eq!(out.json["valid"], true);
}

fn store_pack_bytes(store: &Path) -> u64 {
    walkdir::WalkDir::new(store.join("objects"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Names of the files below `root` holding `needle`.
fn files_with(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter(|e| contains(&std::fs::read(e.path()).unwrap(), needle))
        .map(|e| e.into_path())
        .collect()
}

/// A change to the live db: a new table of random bytes around MARKER.
pub(super) fn change_db(env: &Env, table: &str) {
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    let mut blob: Vec<u8> = (0..3000).map(|_| rand::random::<u8>()).collect();
    blob.extend_from_slice(MARKER);
    blob.extend((0..1000).map(|_| rand::random::<u8>()));
    conn.execute(&format!("CREATE TABLE {table}(b BLOB)"), [])
        .unwrap();
    conn.execute(&format!("INSERT INTO {table}(b) VALUES (?1)"), [&blob])
        .unwrap();
}

/// The fixture runtime with two snapshots (Chroma included), the db
/// changed in between. Returns their stamps.
pub(super) fn two_snapshots(env: &Env) -> (String, String) {
    let a = env.create(&["--chroma", "--tag", "first", "--at", "2026-04-10T12:00:00Z"]);
    change_db(env, "probe_b");
    let b = env.create(&["--chroma", "--at", "2026-04-11T12:00:00Z"]);
    (
        a["stamp"].as_str().unwrap().to_string(),
        b["stamp"].as_str().unwrap().to_string(),
    )
}

#[test]
fn copies_every_snapshot_and_the_copy_restores_identically() {
    let env = Env::fixture();
    let (a, b) = two_snapshots(&env);
    let dest = env.dir.path().join("copy");

    let r = copy_ok(&env, &dest, &[]);
    assert_eq!(strings(&r["snapshots_copied"]), vec![a.clone(), b.clone()]);
    assert_eq!(strings(&r["snapshots_skipped"]), Vec::<String>::new());
    assert_eq!(r["snapshots_failed"], serde_json::json!([]));
    assert_eq!(r["chunk_ids_rewritten"], false);
    assert!(u(&r, "chunks_sent") > 0, "{r}");
    assert_eq!(u(&r, "bytes_sent"), store_pack_bytes(&dest), "{r}");
    assert!(r["duration_ms"].is_u64());
    assert_eq!(r["from"].as_str().unwrap(), env.store.display().to_string());
    assert_eq!(r["to"].as_str().unwrap(), dest.display().to_string());
    // The same chunks, never more: dedup held across the two snapshots.
    // Chunks and list blobs: list blobs are sent like chunks.
    let src_chunks: BTreeSet<_> = [&a, &b].iter().flat_map(|s| env.reachable_ids(s)).collect();
    assert_eq!(u(&r, "chunks_sent"), src_chunks.len() as u64);

    // Listed with the same stamps and summaries (tags kept).
    assert_eq!(stamps_of(&env, &dest, &[]), vec![a.clone(), b.clone()]);
    let list = run_cmd(on(&env, &dest).arg("list")).json;
    assert_eq!(list["snapshots"][0]["tags"], serde_json::json!(["first"]));
    verify_ok(&env, &dest, &[]);
    for s in [&a, &b] {
        validate_ok(&env, &dest, s, &[]);
        assert_eq!(
            restored(&env, &env.store, s, &[]),
            restored(&env, &dest, s, &[]),
            "restore of {s} from the copy differs"
        );
    }

    // Again: nothing to do.
    let again = copy_ok(&env, &dest, &[]);
    assert_eq!(strings(&again["snapshots_copied"]), Vec::<String>::new());
    assert_eq!(strings(&again["snapshots_skipped"]), vec![a, b]);
    assert_eq!(u(&again, "chunks_sent"), 0);
    assert_eq!(u(&again, "bytes_sent"), 0);
}

#[test]
fn copies_named_stamps_only_and_refuses_unknown_or_malformed_ones() {
    let env = Env::fixture();
    let (a, b) = two_snapshots(&env);
    let dest = env.dir.path().join("copy");

    let r = copy_ok(&env, &dest, &[&b]);
    assert_eq!(strings(&r["snapshots_copied"]), vec![b.clone()]);
    assert_eq!(stamps_of(&env, &dest, &[]), vec![b.clone()]);
    // The chunks of B only: A's own (the db before the change) not sent.
    let b_chunks = env.reachable_ids(&b);
    assert_eq!(u(&r, "chunks_sent"), b_chunks.len() as u64);

    // --from names the source explicitly (the global --store is ignored).
    let elsewhere = env.dir.path().join("nowhere");
    let out = run_cmd(
        on(&env, &elsewhere)
            .arg("copy")
            .arg("--from")
            .arg(&env.store)
            .arg("--to")
            .arg(&dest)
            .args([&a, &b]),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.strings("snapshots_copied"), vec![a.clone()]);
    assert_eq!(out.strings("snapshots_skipped"), vec![b.clone()]);
    assert!(!elsewhere.exists());

    let out = copy(&env, &dest, &["20200101T000000Z"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.error_code(), "snapshot_missing");
    assert!(out.stderr.contains("20200101T000000Z"), "{}", out.stderr);

    let fresh = env.dir.path().join("never");
    let out = copy(&env, &fresh, &["../x"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert_eq!(out.error_code(), "invalid_stamp");
    assert!(!fresh.exists(), "a refused copy created its destination");

    // The destination from ATOSNAP_COPY_TO.
    let via_env = env.dir.path().join("via-env");
    let out = run_cmd(
        on(&env, &env.store)
            .arg("copy")
            .arg(&a)
            .env("ATOSNAP_COPY_TO", &via_env),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(stamps_of(&env, &via_env, &[]), vec![a]);
}

#[test]
fn another_snapshot_under_the_same_stamp_is_a_conflict_not_a_skip() {
    let env = Env::fixture();
    let at = "2026-04-10T12:00:00Z";
    let ours = env.create(&["--at", at]);
    let stamp = ours["stamp"].as_str().unwrap().to_string();
    // Another writer took the same stamp at the destination in that
    // second, with other contents (Chroma included).
    let dest = env.dir.path().join("copy");
    let theirs = run_cmd(on(&env, &dest).args(["create", "--chroma", "--at", at]));
    assert_eq!(theirs.code, 0, "{theirs:?}");
    assert_eq!(theirs.json["stamp"], stamp);

    let r = copy(&env, &dest, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(strings(&r.json["snapshots_skipped"]), Vec::<String>::new());
    assert_eq!(r.json["snapshots_failed"][0]["stamp"], stamp);
    assert_eq!(r.json["snapshots_failed"][0]["code"], "copy_stamp_taken");
    let message = r.json["snapshots_failed"][0]["message"].as_str().unwrap();
    assert!(
        message.contains(&stamp) && message.contains("copy"),
        "{message}"
    );
    // The destination's own snapshot is left as it was.
    let list = run_cmd(on(&env, &dest).arg("list")).json;
    assert_eq!(list["snapshots"][0]["chroma_snapshot_included"], true);

    // A real copy stays a skip after its tags are edited at the source.
    let dest2 = env.dir.path().join("copy2");
    copy_ok(&env, &dest2, &[]);
    env.ok(&["tag", &stamp, "--add", "pinned"]);
    let again = copy_ok(&env, &dest2, &[]);
    assert_eq!(strings(&again["snapshots_skipped"]), vec![stamp]);
}

#[test]
fn incremental_copy_sends_only_the_new_chunks() {
    let env = Env::fixture();
    env.create(&["--chroma", "--at", "2026-04-10T12:00:00Z"]);
    let dest = env.dir.path().join("copy");
    copy_ok(&env, &dest, &[]);
    let before = store_pack_bytes(&dest);

    change_db(&env, "probe_c");
    let c = env.create(&["--chroma", "--at", "2026-04-12T12:00:00Z"]);
    assert!(u(&c, "chunks_new") > 0);
    let r = copy_ok(&env, &dest, &[]);
    assert_eq!(
        strings(&r["snapshots_copied"]),
        vec![c["stamp"].as_str().unwrap().to_string()]
    );
    // The day's new chunks and new list blobs, nothing more.
    assert_eq!(
        u(&r, "chunks_sent"),
        u(&c, "chunks_new") + u(&c, "list_blobs_new"),
        "{r} vs {c}"
    );
    assert_eq!(u(&r, "bytes_sent"), store_pack_bytes(&dest) - before);
    verify_ok(&env, &dest, &[]);
}

#[test]
fn plain_to_repokey_to_plain_and_between_keys_re_encrypts() {
    let env = Env::fixture();
    let (a, b) = two_snapshots(&env);
    assert!(
        !files_with(&env.store, MARKER).is_empty(),
        "control: the plain source keeps the marker verbatim"
    );

    // plain -> repokey: the destination is initialised explicitly.
    let enc = env.dir.path().join("enc");
    let pw_enc = [("ATOSNAP_PASSWORD", "enc secret")];
    let out = run_cmd(
        on(&env, &enc)
            .args(["init", "--encryption", "repokey"])
            .envs(pw_enc),
    );
    assert_eq!(out.code, 0, "{out:?}");
    let out = run_cmd(
        on(&env, &env.store)
            .arg("copy")
            .arg("--to")
            .arg(&enc)
            .env("ATOSNAP_TO_PASSWORD", "enc secret"),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["chunk_ids_rewritten"], true);
    assert_eq!(out.strings("snapshots_copied"), vec![a.clone(), b.clone()]);
    assert!(
        files_with(&enc, MARKER).is_empty(),
        "plaintext in the encrypted copy"
    );
    // No plain chunk id is visible in the encrypted store either.
    let plain_ids: BTreeSet<String> = env.reachable_ids(&b).iter().map(|id| id.to_hex()).collect();
    for e in walkdir::WalkDir::new(&enc).into_iter().flatten() {
        let name = e.path().to_string_lossy().into_owned();
        assert!(
            !plain_ids.iter().any(|h| name.contains(h)),
            "plain chunk id in {name}"
        );
    }
    verify_ok(&env, &enc, &pw_enc);
    for s in [&a, &b] {
        validate_ok(&env, &enc, s, &pw_enc);
        assert_eq!(
            restored(&env, &env.store, s, &[]),
            restored(&env, &enc, s, &pw_enc)
        );
    }
    // Re-hashed chunks deduplicate too: a second copy sends nothing.
    let out = run_cmd(
        on(&env, &env.store)
            .arg("copy")
            .arg("--to")
            .arg(&enc)
            .env("ATOSNAP_TO_PASSWORD", "enc secret"),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(u(&out.json, "chunks_sent"), 0);

    // repokey -> plain: the chunk ids and manifests come back as they were.
    let plain = env.dir.path().join("plain");
    assert_eq!(run_cmd(on(&env, &plain).arg("init")).code, 0);
    let out = run_cmd(
        on(&env, &enc)
            .arg("copy")
            .arg("--to")
            .arg(&plain)
            .envs(pw_enc),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["chunk_ids_rewritten"], true);
    let back = atosnap::store::Store::open(
        &atosnap::store::location::StoreAddress::local(&plain),
        &atosnap::store::key::Secrets::none(),
    )
    .unwrap();
    for s in [&a, &b] {
        let stamp = atosnap::stamp::Stamp::parse(s).unwrap();
        assert_eq!(
            back.read_manifest(&stamp, atosnap::store::ReadFrom::Cache)
                .unwrap()
                .entries,
            env.manifest(s).entries
        );
        assert_eq!(
            restored(&env, &env.store, s, &[]),
            restored(&env, &plain, s, &[])
        );
    }
    verify_ok(&env, &plain, &[]);

    // repokey -> a new repokey store (created by copy, same scheme, a fresh
    // key under the destination password): re-encrypted again.
    let enc2 = env.dir.path().join("enc2");
    let to_pw = env.dir.path().join("to-pw");
    std::fs::write(&to_pw, "other secret\n").unwrap();
    let out = run_cmd(
        on(&env, &enc)
            .arg("copy")
            .arg("--to")
            .arg(&enc2)
            .arg("--to-password-file")
            .arg(&to_pw)
            .arg(&b)
            .envs(pw_enc),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["chunk_ids_rewritten"], true);
    let pw_enc2 = [("ATOSNAP_PASSWORD", "other secret")];
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(enc2.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["encryption"]["scheme"], "repokey");
    assert_ne!(
        std::fs::read(enc2.join("keys/repokey.json")).unwrap(),
        std::fs::read(enc.join("keys/repokey.json")).unwrap()
    );
    assert!(files_with(&enc2, MARKER).is_empty());
    // The source's password does not open the new store.
    let out = run_cmd(on(&env, &enc2).arg("list").envs(pw_enc));
    assert_eq!(out.error_code(), "wrong_password", "{out:?}");
    validate_ok(&env, &enc2, &b, &pw_enc2);
    assert_eq!(
        restored(&env, &env.store, &b, &[]),
        restored(&env, &enc2, &b, &pw_enc2)
    );

    // The same key on both sides (a copy falling back to the source
    // password into a store of its own key file): stored chunks pass as
    // they are.
    let out = run_cmd(
        on(&env, &enc2)
            .arg("copy")
            .arg("--to")
            .arg(&enc2)
            .envs(pw_enc2),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["chunk_ids_rewritten"], false);
    assert_eq!(out.strings("snapshots_skipped"), vec![b]);
}

/// A re-keying copy reads again only what changed since a snapshot it
/// copied before: a Chroma file unchanged since is taken whole from the
/// destination (a chunk of it damaged at the source afterwards is never
/// read; the destination holds it sound), and the changed db reads only
/// its new pages, the others mapped through the earlier copy's lists. A
/// run once re-read and re-hashed every chunk of every snapshot.
#[test]
fn a_corrupt_source_chunk_fails_its_snapshot_and_publishes_nothing_for_it() {
    let env = Env::fixture();
    let (a, b) = two_snapshots(&env);
    // A chunk only B has (the changed db), damaged in its pack.
    let a_ids: BTreeSet<_> = env.file_chunks(&a, "atocore.db").into_iter().collect();
    let bad = env
        .file_chunks(&b, "atocore.db")
        .into_iter()
        .find(|id| !a_ids.contains(id))
        .expect("B has a chunk of its own");
    let (pack, offset, len) = env.chunk_location(&bad);
    flip_bit(&pack, offset + len / 2);

    let dest = env.dir.path().join("copy");
    let out = copy(&env, &dest, &[]);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.strings("snapshots_copied"), vec![a.clone()]);
    let failed = &out.json["snapshots_failed"];
    assert_eq!(failed.as_array().unwrap().len(), 1, "{failed}");
    assert_eq!(failed[0]["stamp"], b.as_str());
    assert_eq!(failed[0]["code"], "chunk_corrupt");
    // The flipped byte lands in `bad`'s frame: a chunk of that frame (one
    // of B's own) is named, whichever the garbled bytes belong to.
    let b_only: Vec<String> = env
        .file_chunks(&b, "atocore.db")
        .into_iter()
        .filter(|id| !a_ids.contains(id))
        .map(|id| id.to_hex())
        .collect();
    let message = failed[0]["message"].as_str().unwrap();
    assert!(b_only.iter().any(|id| message.contains(id)), "{failed}");
    assert!(
        b_only.iter().any(|id| out.stderr.contains(id)),
        "{}",
        out.stderr
    );
    assert_eq!(stamps_of(&env, &dest, &[]), vec![a.clone()]);
    assert!(!dest.join("snapshots").join(&b).exists());
    verify_ok(&env, &dest, &[]);

    // Named alone, the same: exit 3, nothing published.
    let dest2 = env.dir.path().join("copy2");
    let out = copy(&env, &dest2, &[&b]);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.strings("snapshots_copied"), Vec::<String>::new());
    assert_eq!(stamps_of(&env, &dest2, &[]), Vec::<String>::new());

    // Re-encrypting, the damage is caught as well.
    let enc = env.dir.path().join("enc");
    let out = run_cmd(
        on(&env, &enc)
            .args(["init", "--encryption", "repokey"])
            .env("ATOSNAP_PASSWORD", "pw"),
    );
    assert_eq!(out.code, 0);
    let out = run_cmd(
        on(&env, &env.store)
            .arg("copy")
            .arg("--to")
            .arg(&enc)
            .env("ATOSNAP_TO_PASSWORD", "pw"),
    );
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.strings("snapshots_copied"), vec![a]);
    assert_eq!(out.json["snapshots_failed"][0]["code"], "chunk_corrupt");
}

#[test]
fn a_missing_source_pack_is_chunk_missing() {
    let env = Env::fixture();
    let a = env.create(&["--at", "2026-04-10T12:00:00Z"]);
    let a = a["stamp"].as_str().unwrap().to_string();
    let id = env.file_chunks(&a, "atocore.db")[0];
    let (pack, _, _) = env.chunk_location(&id);
    std::fs::remove_file(&pack).unwrap();
    let dest = env.dir.path().join("copy");
    let out = copy(&env, &dest, &[]);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.json["snapshots_failed"][0]["code"], "chunk_missing");
    assert_eq!(stamps_of(&env, &dest, &[]), Vec::<String>::new());
}

/// Runs a command expected to die at a failpoint: (exit code, stderr).
fn dies(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap();
    assert!(out.stdout.is_empty(), "a dying process printed a result");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_copy_killed_after_its_packs_converges_on_rerun() {
    let env = Env::fixture();
    let (a, b) = two_snapshots(&env);
    // A clean copy elsewhere, for the figures.
    let clean = copy_ok(&env, &env.dir.path().join("clean"), &[]);

    let dest = env.dir.path().join("copy");
    // Dies after A's packs are durable, before A's manifest.
    let (code, stderr) = dies(
        on(&env, &env.store)
            .arg("copy")
            .arg("--to")
            .arg(&dest)
            .env("ATOSNAP_FAILPOINT", "copy_after_packs"),
    );
    assert_eq!(code, 137, "{stderr}");
    assert!(stderr.contains("copy_after_packs"), "{stderr}");
    assert_eq!(stamps_of(&env, &dest, &[]), Vec::<String>::new());
    assert!(store_pack_bytes(&dest) > 0, "the packs were written");
    // An unfinished copy never shows: the listing is clean, the packs
    // are orphans.
    let v = verify_ok(&env, &dest, &[]);
    assert!(!v["orphans"].as_array().unwrap().is_empty(), "{v}");

    let r = copy_ok(&env, &dest, &[]);
    assert_eq!(strings(&r["snapshots_copied"]), vec![a.clone(), b.clone()]);
    assert!(
        u(&r, "chunks_sent") < u(&clean, "chunks_sent"),
        "the rerun sent again what had arrived: {r} vs {clean}"
    );
    let v = verify_ok(&env, &dest, &[]);
    assert_eq!(v["orphans"], serde_json::json!([]), "{v}");
    for s in [&a, &b] {
        validate_ok(&env, &dest, s, &[]);
    }

    // Dies after B's packs, A published already.
    let dest2 = env.dir.path().join("copy2");
    let (code, stderr) = dies(
        on(&env, &env.store)
            .arg("copy")
            .arg("--to")
            .arg(&dest2)
            .env("ATOSNAP_FAILPOINT", format!("copy_after_packs:{b}")),
    );
    assert_eq!(code, 137, "{stderr}");
    assert_eq!(stamps_of(&env, &dest2, &[]), vec![a.clone()]);
    let r = copy_ok(&env, &dest2, &[]);
    assert_eq!(strings(&r["snapshots_copied"]), vec![b.clone()]);
    assert_eq!(strings(&r["snapshots_skipped"]), vec![a.clone()]);
    assert_eq!(u(&r, "chunks_sent"), 0, "all of B's chunks had arrived");
    verify_ok(&env, &dest2, &[]);
    validate_ok(&env, &dest2, &b, &[]);

    for d in [&dest, &dest2] {
        let r = copy_ok(&env, d, &[]);
        assert_eq!(strings(&r["snapshots_copied"]), Vec::<String>::new());
        assert_eq!(u(&r, "chunks_sent"), 0);
        assert_eq!(u(&r, "bytes_sent"), 0);
    }
}

#[test]
fn a_copy_killed_at_any_moment_converges_on_rerun() {
    let env = Env::fixture();
    let (a, b) = two_snapshots(&env);
    for (i, delay_ms) in [5u64, 25, 60, 150].into_iter().enumerate() {
        let dest = env.dir.path().join(format!("copy-{i}"));
        let mut child = on(&env, &env.store)
            .arg("copy")
            .arg("--to")
            .arg(&dest)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // Whatever got published is a whole snapshot.
        if dest.join("config.json").exists() {
            for s in stamps_of(&env, &dest, &[]) {
                validate_ok(&env, &dest, &s, &[]);
            }
        }
        copy_ok(&env, &dest, &[]);
        assert_eq!(stamps_of(&env, &dest, &[]), vec![a.clone(), b.clone()]);
        verify_ok(&env, &dest, &[]);
        let r = copy_ok(&env, &dest, &[]);
        assert_eq!(u(&r, "chunks_sent"), 0);
    }
}

/// `init --encryption repokey --copy-key-from SRC`: the new store wraps the
/// source's master key under its own password, so a copy between the two
/// moves stored data as it is (no chunk re-hashed or re-sealed), and each
/// store opens with its own password only.
#[test]
fn init_copy_key_from_shares_the_master_key_under_another_password() {
    let env = Env::fixture();
    let src = env.dir.path().join("src");
    let pw_src = [("ATOSNAP_PASSWORD", "source secret")];
    let init_src = run_cmd(
        on(&env, &src)
            .args(["init", "--encryption", "repokey", "--compression", "zstd:5"])
            .envs(pw_src),
    );
    assert_eq!(init_src.code, 0, "{init_src:?}");
    let s1 = run_cmd(on(&env, &src).args(["create", "--chroma"]).envs(pw_src));
    assert_eq!(s1.code, 0, "{s1:?}");

    let dest = env.dir.path().join("dest");
    let pw_dest = [("ATOSNAP_PASSWORD", "dest secret")];
    let shared = |store: &Path, extra: &[&str], from_pw: &str| {
        run_cmd(
            on(&env, store)
                .args(["init", "--encryption", "repokey", "--copy-key-from"])
                .arg(&src)
                .args(extra)
                .envs(pw_dest)
                .env("ATOSNAP_FROM_PASSWORD", from_pw),
        )
    };
    // The source's password is checked before anything is written.
    let wrong = shared(&dest, &[], "not it");
    assert_eq!(wrong.code, 1, "{wrong:?}");
    assert_eq!(wrong.json["error"]["code"], "wrong_password", "{wrong:?}");
    assert!(!dest.join("config.json").exists());
    let made = shared(&dest, &[], "source secret");
    assert_eq!(made.code, 0, "{made:?}");
    assert_eq!(made.json["key"]["key_id"], init_src.json["key"]["key_id"]);
    // The source's compression too, unless asked otherwise: copy moves
    // frames only between stores that compress alike.
    assert_eq!(made.json["compression"], "zstd:5", "{made:?}");
    let again = shared(&dest, &[], "source secret");
    assert_eq!(again.code, 1, "{again:?}");
    let message = again.json["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("a store already exists"), "{again:?}");

    let out = run_cmd(
        on(&env, &src)
            .args(["copy", "--to"])
            .arg(&dest)
            .envs(pw_src)
            .env("ATOSNAP_TO_PASSWORD", "dest secret"),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["chunk_ids_rewritten"], false, "{out:?}");
    let stamp = s1.json["stamp"].as_str().unwrap();
    validate_ok(&env, &dest, stamp, &pw_dest);
    assert_eq!(
        restored(&env, &src, stamp, &pw_src),
        restored(&env, &dest, stamp, &pw_dest)
    );
    // One key, two key files: the source's password does not open the copy.
    let other = run_cmd(on(&env, &dest).arg("list").envs(pw_src));
    assert_eq!(other.json["error"]["code"], "wrong_password", "{other:?}");

    // Refused: a key from an unencrypted store, or for an unencrypted one.
    let plain = env.dir.path().join("plain");
    assert_eq!(run_cmd(on(&env, &plain).arg("init")).code, 0);
    let from_plain = run_cmd(
        on(&env, &env.dir.path().join("d2"))
            .args(["init", "--encryption", "repokey", "--copy-key-from"])
            .arg(&plain)
            .envs(pw_dest),
    );
    assert_eq!(from_plain.code, 1, "{from_plain:?}");
    assert_eq!(from_plain.json["error"]["code"], "store_not_encrypted");
    // Refused before the source is opened: no password for it is needed
    // to learn that.
    let to_plain = run_cmd(
        on(&env, &env.dir.path().join("d3"))
            .args(["init", "--copy-key-from"])
            .arg(&src),
    );
    assert_eq!(to_plain.code, 2, "{to_plain:?}");
    assert!(!env.dir.path().join("d3/config.json").exists());
    // A source password file without a source: made, with a warning (the
    // variable may come from an environment file every command shares).
    let lone = run_cmd(
        on(&env, &env.dir.path().join("d4"))
            .arg("init")
            .env("ATOSNAP_FROM_PASSWORD_FILE", "/nonexistent/pw"),
    );
    assert_eq!(lone.code, 0, "{lone:?}");
    let warned = strings(&lone.json["warnings"]);
    assert!(
        warned.iter().any(|w| w.contains("--from-password-file")),
        "{lone:?}"
    );
}

/// A malformed s3:// location is a usage error naming the flag that gave
/// it, whichever of the store flags that is; nothing is written.
#[test]
fn a_malformed_bucket_location_names_its_flag() {
    let env = Env::fixture();
    let cases: [(&str, &[&str]); 4] = [
        ("--store", &["--store", "s3:///no-bucket", "list"]),
        (
            "--to",
            &["--store", "local", "copy", "--to", "s3:///no-bucket"],
        ),
        (
            "--from",
            &["copy", "--from", "s3://b/../x", "--to", "elsewhere"],
        ),
        (
            "--copy-key-from",
            &[
                "--store",
                "new",
                "init",
                "--encryption",
                "repokey",
                "--copy-key-from",
                "s3:// /x",
            ],
        ),
    ];
    assert_eq!(
        run_cmd(on(&env, &env.dir.path().join("local")).arg("init")).code,
        0
    );
    for (flag, args) in cases {
        let mut cmd = env.bare_command();
        for v in PASSWORD_VARS {
            cmd.env_remove(v);
        }
        let out = run_cmd(cmd.arg("--quiet").args(args));
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        let message = out.json["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(&format!("{flag} s3://")),
            "{args:?}: {message}"
        );
    }
    assert!(!env.dir.path().join("new").exists());
    assert!(!env.dir.path().join("elsewhere").exists());
}
