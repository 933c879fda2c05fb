//! Black-box tests of issue 14's store items: store files are private
//! (0600 files, 0700 folders) whatever the umask; a password given for a
//! store that is not there makes nothing; every command logs its warnings
//! to stderr (text or JSON lines), never into the JSON document on stdout.

use crate::support::Runtime as Rt;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// `atosnap` on the runtime with a clean environment and without
/// `--quiet` (the lock wait message is a warning).
fn cmd(rt: &Rt) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_atosnap"));
    for v in [
        "ATOCORE_DATA_DIR",
        "ATOCORE_BACKUP_DIR",
        "ATOCORE_DB_PATH",
        "ATOCORE_PROJECT_REGISTRY_PATH",
        "ATOCORE_CHROMA_PATH",
        "ATOCORE_INGESTION_LOCK",
        "ATOSNAP_PASSWORD",
        "ATOSNAP_PASSWORD_FILE",
        "ATOSNAP_LOG",
    ] {
        c.env_remove(v);
    }
    c.current_dir(rt.dir.path())
        .arg("--db")
        .arg(rt.db())
        .arg("--registry")
        .arg(rt.registry())
        .arg("--chroma-dir")
        .arg(rt.chroma());
    c
}

/// Stdout must be exactly one JSON document.
fn one_document(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Every file and folder below `root` (itself included) whose mode is not
/// 0600 (files) or 0700 (folders).
fn loose_entries(root: &Path) -> Vec<String> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter_map(|e| {
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            let want = if e.file_type().is_dir() { 0o700 } else { 0o600 };
            (mode != want).then(|| format!("{:o} {}", mode, e.path().display()))
        })
        .collect()
}

#[test]
fn store_files_are_0600_and_folders_0700_under_umask_022() {
    // SAFETY: umask only sets this process's file creation mask (inherited
    // by the commands it runs); no other thread of this test binary creates
    // files that depend on it.
    unsafe {
        libc::umask(0o022);
    }
    let rt = Rt::fixture();
    rt.ok(&["init"]);
    let first = rt.create_stamp(&["--chroma"]);
    rt.insert_marker("modes");
    rt.create_stamp(&["--chroma"]);
    rt.ok(&["drill", &first]);
    assert!(rt.store.join("drills").is_dir());
    assert!(rt.store.join("locks/store.lock").is_file());
    assert_eq!(loose_entries(&rt.store), Vec::<String>::new());

    // An existing store folder keeps the mode its owner chose.
    let other = rt.path("shared-store");
    std::fs::create_dir(&other).unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o750)).unwrap();
    let out = cmd(&rt)
        .arg("--store")
        .arg(&other)
        .args(["--quiet", "create"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", one_document(&out));
    let mode = std::fs::metadata(&other).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o750);
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(loose_entries(&other), Vec::<String>::new());
}

/// How a password is given: (name, arguments, environment).
type PasswordSource<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)]);

#[test]
fn a_password_without_a_store_creates_nothing() {
    let rt = Rt::fixture();
    let pw = rt.path("password");
    std::fs::write(&pw, "meant to encrypt\n").unwrap();
    let missing = rt.path("unmounted-disk/backups");
    let pw_arg = pw.to_str().unwrap();
    let sources: [PasswordSource; 3] = [
        (
            "ATOSNAP_PASSWORD",
            &[],
            &[("ATOSNAP_PASSWORD", "meant to encrypt")],
        ),
        ("--password-file", &["--password-file", pw_arg], &[]),
        (
            "ATOSNAP_PASSWORD_FILE",
            &[],
            &[("ATOSNAP_PASSWORD_FILE", pw_arg)],
        ),
    ];
    for (source, args, env) in sources {
        let mut c = cmd(&rt);
        c.arg("--store").arg(&missing).args(args).arg("create");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let doc = one_document(&out);
        assert_eq!(out.status.code(), Some(1), "{source}: {doc}");
        assert_eq!(doc["error"]["code"], "store_missing", "{source}: {doc}");
        let message = doc["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("atosnap init --encryption repokey"),
            "{source}: {message}"
        );
        assert!(!missing.exists(), "{source}: something was created");
    }
    // `init --encryption repokey` with that password makes the store, and
    // then create uses it, encrypted.
    let with_pw = |args: &[&str]| {
        let out = cmd(&rt)
            .arg("--store")
            .arg(&missing)
            .args(["--password-file", pw_arg])
            .args(args)
            .env("ATOSNAP_KDF_PARAMS", "m=64,t=1,p=1")
            .output()
            .unwrap();
        (out.status.code(), one_document(&out))
    };
    let (code, doc) = with_pw(&["init", "--encryption", "repokey"]);
    assert_eq!(code, Some(0), "{doc}");
    let (code, doc) = with_pw(&["create"]);
    assert_eq!(code, Some(0), "{doc}");
    let config = std::fs::read_to_string(missing.join("config.json")).unwrap();
    assert!(config.contains("repokey"), "{config}");
    // Without a password a missing store is still made, unencrypted.
    let plain = rt.path("plain");
    let out = cmd(&rt)
        .arg("--store")
        .arg(&plain)
        .arg("create")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", one_document(&out));
}

#[test]
fn warnings_go_to_stderr_as_text_or_json_lines_never_to_stdout() {
    let rt = Rt::fixture();
    rt.ok(&["init"]);
    // A gc holds the store: create waits (a warning), then gives up (an
    // error).
    let held =
        atosnap::store::lock::lock_exclusive(&rt.store, "gc-held-by-test", Duration::ZERO).unwrap();
    let run = |format: &str| {
        let out = cmd(&rt)
            .arg("--store")
            .arg(&rt.store)
            .args(["--log-format", format, "--lock-wait", "1", "create"])
            .output()
            .unwrap();
        let doc = one_document(&out);
        assert_eq!(out.status.code(), Some(1), "{doc}");
        assert_eq!(doc["error"]["code"], "store_locked", "{doc}");
        String::from_utf8(out.stderr).unwrap()
    };

    let text = run("text");
    let warning = text
        .lines()
        .find(|l| l.contains("waits up to 1s"))
        .unwrap_or_else(|| panic!("no wait warning: {text}"));
    assert!(
        warning.starts_with("atosnap: warning: store is locked by"),
        "{text}"
    );
    assert!(warning.contains("gc-held-by-test"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("atosnap: store is locked by")),
        "{text}"
    );

    let json = run("json");
    let lines: Vec<Value> = json
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let level_of = |needle: &str| {
        lines
            .iter()
            .find(|l| l["message"].as_str().is_some_and(|m| m.contains(needle)))
            .map(|l| l["level"].as_str().unwrap().to_string())
    };
    assert_eq!(
        level_of("waits up to 1s").as_deref(),
        Some("warn"),
        "{json}"
    );
    assert_eq!(
        level_of("raise --lock-wait").as_deref(),
        Some("error"),
        "{json}"
    );

    // An unknown format is a usage error.
    drop(held);
    let out = cmd(&rt)
        .arg("--store")
        .arg(&rt.store)
        .args(["--log-format", "xml", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
