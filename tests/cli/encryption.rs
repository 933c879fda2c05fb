//! Encrypted (`repokey`) stores, black-box through the binary: the round
//! trip, password sources and refusals, what the store's bytes reveal,
//! tamper detection per kind of sealed object, `key passwd`, dedup.

use assert_cmd::Command;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::support::copy_tree;

/// Cheap Argon2id so each command costs milliseconds, not 0.5 s.
const CHEAP_KDF: &str = "m=64,t=1,p=1";
const MARKER: &[u8] = b"ATOSNAP-PLAINTEXT-MARKER-5b1e9c";

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: PathBuf,
    runtime: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let runtime = root.join("runtime");
        copy_tree(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/runtime"),
            &runtime,
        );
        Env {
            _dir: dir,
            store: root.join("store"),
            root,
            runtime,
        }
    }

    fn db(&self) -> PathBuf {
        self.runtime.join("data/atocore.db")
    }

    fn registry(&self) -> PathBuf {
        self.runtime.join("config/project-registry.json")
    }

    /// Writes a password file and returns its path.
    fn password_file(&self, name: &str, password: &str) -> PathBuf {
        let p = self.root.join(name);
        std::fs::write(&p, format!("{password}\n")).unwrap();
        p
    }

    /// The binary with this runtime and store and no password source.
    fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("atosnap").unwrap();
        for var in [
            "ATOSNAP_PASSWORD",
            "ATOSNAP_PASSWORD_FILE",
            "ATOSNAP_NEW_PASSWORD",
            "ATOSNAP_NEW_PASSWORD_FILE",
            "ATOCORE_DATA_DIR",
            "ATOCORE_INGESTION_LOCK",
        ] {
            c.env_remove(var);
        }
        c.env("ATOSNAP_KDF_PARAMS", CHEAP_KDF)
            .env("ATOCORE_BACKUP_DIR", &self.store)
            .env("ATOCORE_DB_PATH", self.db())
            .env("ATOCORE_PROJECT_REGISTRY_PATH", self.registry())
            .env("ATOCORE_CHROMA_PATH", self.runtime.join("data/chroma"))
            .arg("--quiet");
        c
    }

    /// `init --encryption repokey` with the password from a file.
    fn init_repokey(&self, password: &str) -> PathBuf {
        let pw = self.password_file("pw", password);
        let (code, doc) = run(self
            .cmd()
            .args(["init", "--encryption", "repokey", "--password-file"])
            .arg(&pw));
        assert_eq!(code, 0, "{doc}");
        assert_eq!(doc["encryption"], "repokey");
        pw
    }

    fn create(&self, pw: &Path, extra: &[&str]) -> Value {
        let (code, doc) = run(self
            .cmd()
            .arg("create")
            .args(extra)
            .arg("--password-file")
            .arg(pw));
        assert_eq!(code, 0, "{doc}");
        assert_eq!(doc["validated"], true, "{doc}");
        doc
    }

    /// Every file of the store: relative path -> bytes.
    fn store_files(&self) -> BTreeMap<String, Vec<u8>> {
        walkdir::WalkDir::new(&self.store)
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let rel = e.path().strip_prefix(&self.store).unwrap();
                (
                    rel.to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    fn first_pack(&self) -> PathBuf {
        let files = self.store_files();
        let name = files
            .keys()
            .find(|k| k.ends_with(".pack"))
            .expect("a pack")
            .clone();
        self.store.join(name)
    }

    /// Adds a table holding random (incompressible) bytes around MARKER,
    /// so an unencrypted store would keep the marker verbatim.
    fn add_marker_row(&self) {
        let conn = rusqlite::Connection::open(self.db()).unwrap();
        let mut blob: Vec<u8> = (0..2500).map(|_| rand::random::<u8>()).collect();
        blob.extend_from_slice(MARKER);
        blob.extend((0..1000).map(|_| rand::random::<u8>()));
        conn.execute("CREATE TABLE leak_probe(b BLOB)", []).unwrap();
        conn.execute("INSERT INTO leak_probe(b) VALUES (?1)", [&blob])
            .unwrap();
        drop(conn);
    }
}

fn run(cmd: &mut Command) -> (i32, Value) {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), doc)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

fn errors(doc: &Value) -> Vec<String> {
    doc["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors field: {doc}"))
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn round_trip_with_password_file_and_env_and_dedup() {
    let env = Env::new();
    let pw = env.init_repokey("correct horse");
    let config: Value =
        serde_json::from_slice(&std::fs::read(env.store.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["encryption"]["scheme"], "repokey");
    assert!(env.store.join("keys/repokey.json").exists());

    let first = env.create(&pw, &["--chroma", "--at", "2026-04-10T12:00:00Z"]);
    let stamp = first["stamp"].as_str().unwrap().to_string();
    assert!(first["chunks_new"].as_u64().unwrap() > 100);

    // list with ATOSNAP_PASSWORD.
    let (code, doc) = run(env
        .cmd()
        .arg("list")
        .env("ATOSNAP_PASSWORD", "correct horse"));
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["snapshots"][0]["stamp"], stamp.as_str());
    assert_eq!(doc["snapshots"][0]["chroma_snapshot_included"], true);

    // validate with ATOSNAP_PASSWORD_FILE.
    let (code, doc) = run(env
        .cmd()
        .args(["validate", &stamp])
        .env("ATOSNAP_PASSWORD_FILE", &pw));
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["valid"], true);
    assert_eq!(doc["db_ok"], true);
    assert_eq!(doc["registry_ok"], true);
    assert_eq!(doc["chroma_ok"], true);

    // verify with the flag after the subcommand.
    let (code, doc) = run(env.cmd().arg("verify").arg("--password-file").arg(&pw));
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["ok"], true);
    assert!(doc["chunks_checked"].as_u64().unwrap() > 100);

    // Same data again: keyed ids are deterministic, so it dedups.
    let second = env.create(&pw, &["--chroma", "--at", "2026-04-11T12:00:00Z"]);
    let first_bytes = first["bytes_new_stored"].as_u64().unwrap();
    let second_bytes = second["bytes_new_stored"].as_u64().unwrap();
    assert!(
        second_bytes * 100 < first_bytes,
        "second create stored {second_bytes} bytes after {first_bytes}"
    );
    assert!(second["chunks_new"].as_u64().unwrap() * 100 < first["chunks_new"].as_u64().unwrap());
}

#[test]
fn store_bytes_reveal_no_content_nor_plain_chunk_hashes() {
    // The same runtime in an unencrypted and an encrypted store: the plain
    // store shows the probes (so the probes work), the encrypted one never.
    let env = Env::new();
    env.add_marker_row();
    let db = std::fs::read(env.db()).unwrap();
    assert!(contains(&db, MARKER));
    let registry = std::fs::read(env.registry()).unwrap();
    let registry_hash = *blake3::hash(&registry).as_bytes();
    // Plain blake3 of every 4 KiB page of the db (its chunks, plain-named).
    let page_hashes: HashSet<[u8; 32]> = db
        .chunks(4096)
        .map(|p| *blake3::hash(p).as_bytes())
        .collect();
    let find = |files: &BTreeMap<String, Vec<u8>>| {
        let mut marker = false;
        let mut registry_id = false;
        let mut pages = 0usize;
        let registry_hex = hex::encode(registry_hash);
        for (name, bytes) in files {
            marker |= contains(bytes, MARKER);
            registry_id |= contains(bytes, &registry_hash)
                || contains(bytes, registry_hex.as_bytes())
                || name.contains(&registry_hex);
            pages += bytes
                .windows(32)
                .filter(|w| page_hashes.contains(*w))
                .count();
            pages += page_hashes
                .iter()
                .filter(|h| name.contains(&hex::encode(h)))
                .count();
        }
        (marker, registry_id, pages)
    };

    let (code, doc) = run(env.cmd().arg("init"));
    assert_eq!(code, 0, "{doc}");
    let pw = env.password_file("unused", "unused");
    env.create(&pw, &[]);
    let (marker, registry_id, pages) = find(&env.store_files());
    assert!(marker, "control: the plain store keeps the raw page");
    assert!(
        registry_id,
        "control: the plain store names the registry chunk"
    );
    assert!(pages > 100, "control: plain page hashes found: {pages}");

    std::fs::remove_dir_all(&env.store).unwrap();
    let pw = env.init_repokey("s3cret");
    env.create(&pw, &[]);
    let files = env.store_files();
    let (marker, registry_id, pages) = find(&files);
    assert!(!marker, "plaintext found in the encrypted store");
    assert!(!registry_id, "plain blake3 of the registry found");
    assert_eq!(pages, 0, "plain blake3 of db pages found");
    // Nor is the password anywhere.
    for (name, bytes) in &files {
        assert!(!contains(bytes, b"s3cret"), "password in {name}");
    }
}

#[test]
fn wrong_password_is_refused_before_any_work() {
    let env = Env::new();
    let pw = env.init_repokey("right");
    let first = env.create(&pw, &["--at", "2026-04-10T12:00:00Z"]);
    let stamp = first["stamp"].as_str().unwrap();
    let before = env.store_files();
    let wrong = env.password_file("wrong", "wrong");
    for args in [
        vec!["create", "--at", "2026-04-11T12:00:00Z"],
        vec!["list"],
        vec!["validate", stamp],
        vec!["verify"],
        vec!["key", "passwd"],
    ] {
        let (code, doc) = run(env
            .cmd()
            .args(&args)
            .arg("--password-file")
            .arg(&wrong)
            .env("ATOSNAP_NEW_PASSWORD", "other"));
        assert_eq!(code, 1, "{args:?}: {doc}");
        assert_eq!(doc["error"]["code"], "wrong_password", "{args:?}: {doc}");
        let message = doc["error"]["message"].as_str().unwrap();
        assert!(message.contains("wrong password"), "{message}");
    }
    // ATOSNAP_PASSWORD wrong too.
    let (code, doc) = run(env.cmd().arg("list").env("ATOSNAP_PASSWORD", "nope"));
    assert_eq!(
        (code, doc["error"]["code"].as_str()),
        (1, Some("wrong_password"))
    );
    assert_eq!(
        before,
        env.store_files(),
        "a refused command wrote something"
    );
}

#[test]
fn missing_password_is_refused_with_a_message_naming_the_sources() {
    let env = Env::new();
    // init repokey without a password: refused, no store created.
    let (code, doc) = run(env.cmd().args(["init", "--encryption", "repokey"]));
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["error"]["code"], "password_required");
    assert!(!env.store.join("config.json").exists());

    let pw = env.init_repokey("right");
    let before = env.store_files();
    for args in [vec!["create"], vec!["list"], vec!["verify"]] {
        let (code, doc) = run(env.cmd().args(&args));
        assert_eq!(code, 1, "{args:?}: {doc}");
        assert_eq!(doc["error"]["code"], "password_required");
        let message = doc["error"]["message"].as_str().unwrap();
        for source in [
            "--password-file",
            "ATOSNAP_PASSWORD_FILE",
            "ATOSNAP_PASSWORD",
        ] {
            assert!(message.contains(source), "{message}");
        }
    }
    // A password file that does not exist is named.
    let (code, doc) = run(env
        .cmd()
        .arg("list")
        .arg("--password-file")
        .arg(env.root.join("nope")));
    assert_eq!(code, 1);
    assert_eq!(doc["error"]["code"], "password_file_unreadable");
    assert!(doc["error"]["message"].as_str().unwrap().contains("nope"));
    assert_eq!(before, env.store_files());
    // The right one still works.
    let (code, _) = run(env.cmd().arg("list").arg("--password-file").arg(&pw));
    assert_eq!(code, 0);
}

#[test]
fn flipped_byte_in_a_pack_is_chunk_corrupt() {
    let env = Env::new();
    let pw = env.init_repokey("pw");
    let doc = env.create(&pw, &[]);
    let stamp = doc["stamp"].as_str().unwrap();
    // Offset 8 is the first stored frame: flip a byte of its ciphertext
    // (the frame no longer authenticates: every chunk of it is corrupt).
    flip_byte(&env.first_pack(), 8 + 30);
    let (code, doc) = run(env
        .cmd()
        .args(["validate", stamp])
        .arg("--password-file")
        .arg(&pw));
    assert_eq!(code, 3, "{doc}");
    assert_eq!(doc["valid"], false);
    let errs = errors(&doc);
    assert!(
        errs.iter().any(|e| e.starts_with("chunk_corrupt:")),
        "{errs:?}"
    );
    let (code, doc) = run(env.cmd().arg("verify").arg("--password-file").arg(&pw));
    assert_eq!(code, 3, "{doc}");
    let n = doc["corrupt"].as_array().unwrap().len();
    assert!((1..=256).contains(&n), "{doc}");
    assert_eq!(doc["damaged_objects"].as_array().unwrap().len(), 1, "{doc}");
}

#[test]
fn tampered_pack_index_is_detected_even_with_a_fixed_checksum() {
    let env = Env::new();
    let pw = env.init_repokey("pw");
    env.create(&pw, &[]);
    let pack = env.first_pack();
    let mut bytes = std::fs::read(&pack).unwrap();
    let n = bytes.len();
    // Trailer: index length u32 | blake3(index) | "ATOPKEND".
    let len = u32::from_le_bytes(bytes[n - 44..n - 40].try_into().unwrap()) as usize;
    let start = n - 44 - len;
    bytes[start + len / 2] ^= 0x01;
    let sum = *blake3::hash(&bytes[start..start + len]).as_bytes();
    bytes[n - 40..n - 8].copy_from_slice(&sum);
    std::fs::write(&pack, bytes).unwrap();
    let (code, doc) = run(env.cmd().arg("verify").arg("--password-file").arg(&pw));
    assert_eq!(code, 3, "{doc}");
    let damaged = doc["damaged_objects"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{doc}");
}

#[test]
fn tampered_or_swapped_manifest_is_manifest_corrupt() {
    let env = Env::new();
    let pw = env.init_repokey("pw");
    let a = env.create(&pw, &["--at", "2026-04-10T12:00:00Z"]);
    let b = env.create(&pw, &["--at", "2026-04-11T12:00:00Z"]);
    let (a, b) = (a["stamp"].as_str().unwrap(), b["stamp"].as_str().unwrap());
    let manifest = |s: &str| env.store.join(format!("snapshots/{s}/manifest.bin"));
    let validate = |s: &str| {
        run(env
            .cmd()
            .args(["validate", s])
            .arg("--password-file")
            .arg(&pw))
    };
    let original_b = std::fs::read(manifest(b)).unwrap();

    // 1. A flipped byte (caught by the checksum).
    flip_byte(&manifest(b), 20);
    let (code, doc) = validate(b);
    assert_eq!(code, 3, "{doc}");
    assert!(errors(&doc)
        .iter()
        .any(|e| e.starts_with("manifest_corrupt")));

    // 2. A flipped byte of the sealed body with the checksum recomputed:
    //    only the AEAD can catch it.
    let mut bytes = original_b.clone();
    let n = bytes.len();
    bytes[8 + 30] ^= 0x01;
    let sum = *blake3::hash(&bytes[..n - 32]).as_bytes();
    bytes[n - 32..].copy_from_slice(&sum);
    std::fs::write(manifest(b), &bytes).unwrap();
    let (code, doc) = validate(b);
    assert_eq!(code, 3, "{doc}");
    let errs = errors(&doc);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("manifest_corrupt") && e.contains("authentication")),
        "{errs:?}"
    );

    // 3. A's authentic manifest copied over B's.
    std::fs::copy(manifest(a), manifest(b)).unwrap();
    let (code, doc) = validate(b);
    assert_eq!(code, 3, "{doc}");
    assert!(
        errors(&doc)
            .iter()
            .any(|e| e.starts_with("manifest_corrupt") && e.contains("swapped")),
        "{doc}"
    );

    // Restored, it validates again; A was never harmed.
    std::fs::write(manifest(b), &original_b).unwrap();
    assert_eq!(validate(b).0, 0);
    assert_eq!(validate(a).0, 0);
}

#[test]
fn tampered_metadata_is_reported_by_list() {
    let env = Env::new();
    let pw = env.init_repokey("pw");
    let doc = env.create(&pw, &[]);
    let stamp = doc["stamp"].as_str().unwrap();
    let meta = env
        .store
        .join(format!("snapshots/{stamp}/backup-metadata.json"));
    let sealed = std::fs::read(&meta).unwrap();
    assert!(!contains(&sealed, b"db_size_bytes"), "metadata is sealed");
    flip_byte(&meta, 30);
    let (code, doc) = run(env.cmd().arg("list").arg("--password-file").arg(&pw));
    assert_eq!(code, 0, "{doc}");
    let error = doc["snapshots"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("corrupt"), "{doc}");
}

#[test]
fn key_passwd_rewraps_the_master_key() {
    let env = Env::new();
    let old = env.init_repokey("old password");
    let doc = env.create(&old, &[]);
    let stamp = doc["stamp"].as_str().unwrap();
    let new = env.password_file("new", "new password");

    // No new password: refused, nothing changed.
    let key_before = std::fs::read(env.store.join("keys/repokey.json")).unwrap();
    let (code, doc) = run(env
        .cmd()
        .args(["key", "passwd", "--password-file"])
        .arg(&old));
    assert_eq!(code, 1);
    assert_eq!(doc["error"]["code"], "new_password_required");
    assert_eq!(
        key_before,
        std::fs::read(env.store.join("keys/repokey.json")).unwrap()
    );

    let (code, doc) = run(env
        .cmd()
        .args(["key", "passwd", "--password-file"])
        .arg(&old)
        .arg("--new-password-file")
        .arg(&new));
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["changed"], true);
    assert!(!doc.to_string().contains("new password"));

    let (code, doc) = run(env
        .cmd()
        .args(["validate", stamp])
        .arg("--password-file")
        .arg(&old));
    assert_eq!(
        (code, doc["error"]["code"].as_str()),
        (1, Some("wrong_password"))
    );
    let (code, doc) = run(env
        .cmd()
        .args(["validate", stamp])
        .env("ATOSNAP_PASSWORD", "new password"));
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["valid"], true);

    // ATOSNAP_NEW_PASSWORD_FILE works too, and back again.
    let (code, doc) = run(env
        .cmd()
        .args(["key", "passwd"])
        .env("ATOSNAP_PASSWORD_FILE", &new)
        .env("ATOSNAP_NEW_PASSWORD_FILE", &old));
    assert_eq!(code, 0, "{doc}");
    let (code, _) = run(env.cmd().arg("verify").arg("--password-file").arg(&old));
    assert_eq!(code, 0);
    // No temp file of the re-wrap (`tmp/<pid>-<r>.obj`) is left behind.
    let files = env.store_files();
    let left: Vec<_> = files
        .keys()
        .filter(|k| k.starts_with("tmp/") && k.ends_with(".obj"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn missing_damaged_or_foreign_key_file_is_a_clear_error() {
    let env = Env::new();
    let pw = env.init_repokey("pw");
    let key = env.store.join("keys/repokey.json");
    let original = std::fs::read(&key).unwrap();
    let list = || run(env.cmd().arg("list").arg("--password-file").arg(&pw));

    std::fs::write(&key, b"{ not json").unwrap();
    let (code, doc) = list();
    assert_eq!(
        (code, doc["error"]["code"].as_str()),
        (1, Some("key_file_corrupt"))
    );
    assert!(doc["error"]["message"]
        .as_str()
        .unwrap()
        .contains("lost backups"));

    std::fs::remove_file(&key).unwrap();
    let (code, doc) = list();
    assert_eq!(
        (code, doc["error"]["code"].as_str()),
        (1, Some("key_file_missing"))
    );

    // The key file of another store (same password) is recognised.
    let other = Env::new();
    let other_pw = other.init_repokey("pw");
    std::fs::copy(other.store.join("keys/repokey.json"), &key).unwrap();
    let (code, doc) = list();
    assert_eq!(
        (code, doc["error"]["code"].as_str()),
        (1, Some("key_file_corrupt"))
    );
    assert!(doc["error"]["message"]
        .as_str()
        .unwrap()
        .contains("another store"));
    drop(other_pw);

    std::fs::write(&key, original).unwrap();
    assert_eq!(list().0, 0);
}

#[test]
fn unencrypted_stores_keep_their_format_and_need_no_password() {
    let env = Env::new();
    let (code, doc) = run(env.cmd().arg("init"));
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["encryption"], "none");
    let config = std::fs::read_to_string(env.store.join("config.json")).unwrap();
    assert!(!config.contains("key_id"), "{config}");
    assert!(!env.store.join("keys").exists());
    let (code, doc) = run(env.cmd().arg("create"));
    assert_eq!(code, 0, "{doc}");
    let stamp = doc["stamp"].as_str().unwrap();
    let (code, doc) = run(env.cmd().args(["validate", stamp]));
    assert_eq!(code, 0, "{doc}");
    // key passwd has nothing to do there.
    let (code, doc) = run(env
        .cmd()
        .args(["key", "passwd"])
        .env("ATOSNAP_NEW_PASSWORD", "x"));
    assert_eq!(
        (code, doc["error"]["code"].as_str()),
        (1, Some("store_not_encrypted"))
    );
    // `create` on a missing store with a password given makes nothing: the
    // operator meant an encrypted store (or the disk is not mounted).
    let implicit = env.root.join("implicit");
    let (code, doc) = run(env
        .cmd()
        .arg("create")
        .env("ATOCORE_BACKUP_DIR", &implicit)
        .env("ATOSNAP_PASSWORD", "meant to encrypt"));
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["error"]["code"], "store_missing", "{doc}");
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(message.contains("init --encryption repokey"), "{doc}");
    assert!(!implicit.join("config.json").exists());
    // An unknown scheme is a usage error.
    let (code, _) = run(env.cmd().args(["init", "--encryption", "rot13"]));
    assert_eq!(code, 2);
}

/// Someone who can write the store edits `config.json` to say
/// "unencrypted" (and drops its `key_id`): the store must not open as a
/// plain one and take new data in the clear. Its key file says it was
/// encrypted.
#[test]
fn a_config_changed_to_unencrypted_cannot_downgrade_the_store() {
    let env = Env::new();
    let pw = env.init_repokey("s3cret");
    env.create(&pw, &["--at", "2026-04-10T12:00:00Z"]);
    let config_path = env.store.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["encryption"]["scheme"] = "none".into();
    config["encryption"]
        .as_object_mut()
        .unwrap()
        .remove("key_id");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    env.add_marker_row();
    for with_password in [true, false] {
        let mut cmd = env.cmd();
        cmd.args(["create", "--at", "2026-04-11T12:00:00Z"]);
        if with_password {
            cmd.arg("--password-file").arg(&pw);
        }
        let (code, doc) = run(&mut cmd);
        assert_eq!(code, 1, "{doc}");
        assert_eq!(doc["error"]["code"], "store_config_invalid", "{doc}");
        let msg = doc["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("config.json") && msg.contains("repokey.json"),
            "{msg}"
        );
    }
    let leaked: Vec<String> = env
        .store_files()
        .into_iter()
        .filter(|(_, b)| contains(b, MARKER))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(leaked, Vec::<String>::new());
}
