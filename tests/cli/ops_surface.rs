//! The operations surface besides HTTP: shell completions and man pages
//! generated from the clap definitions, and the systemd units of
//! `contrib/systemd/` (checked with `systemd-analyze verify` when present).

use crate::support::BIN;
use std::path::Path;
use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn completions_cover_every_command_in_each_shell() {
    for (shell, marker) in [
        ("bash", "_atosnap()"),
        ("zsh", "#compdef atosnap"),
        ("fish", "complete -c atosnap"),
    ] {
        let (code, text) = run(&["completions", shell]);
        assert_eq!(code, 0, "{shell}");
        assert!(text.contains(marker), "{shell}: {marker} missing");
        for word in [
            "serve",
            "create",
            "validate",
            "token-file",
            "ingestion-lock",
        ] {
            assert!(text.contains(word), "{shell}: {word} missing");
        }
    }
    let (code, _) = run(&["completions", "tcsh"]);
    assert_eq!(code, 2);
}

#[test]
fn man_pages_come_from_the_cli_definition() {
    let (code, page) = run(&["man"]);
    assert_eq!(code, 0);
    assert!(page.contains(".TH atosnap 1"), "{page}");
    assert!(page.contains("serve"));
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["written"].as_array().unwrap().len() >= 6);
    let serve = std::fs::read_to_string(dir.path().join("atosnap-serve.1")).unwrap();
    assert!(serve.contains("token\\-file"), "{serve}");
    assert!(serve.contains("127.0.0.1:8101"));
}

const UNITS: [&str; 9] = [
    "atosnap-serve.service",
    "atosnap-create.service",
    "atosnap-create.timer",
    "atosnap-cleanup.service",
    "atosnap-cleanup.timer",
    "atosnap-drill.service",
    "atosnap-drill.timer",
    "atosnap-copy.service",
    "atosnap-copy.timer",
];

fn contrib() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/systemd"))
}

#[test]
fn units_are_hardened_and_write_only_the_store_and_data() {
    for unit in UNITS.iter().filter(|u| u.ends_with(".service")) {
        let text = std::fs::read_to_string(contrib().join(unit)).unwrap();
        for line in [
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
        ] {
            assert!(text.lines().any(|l| l == line), "{unit}: {line} missing");
        }
        let rw: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("ReadWritePaths="))
            .flat_map(str::split_whitespace)
            .collect();
        assert!(rw.contains(&"/srv/backups/atosnap"), "{unit}: {rw:?}");
        assert!(
            rw.iter()
                .all(|p| ["/srv/backups/atosnap", "/srv/atocore/data"].contains(p)),
            "{unit}: {rw:?}"
        );
    }
    let serve = std::fs::read_to_string(contrib().join("atosnap-serve.service")).unwrap();
    assert!(serve.contains("--listen 127.0.0.1:"));
}

#[test]
fn systemd_analyze_verifies_the_units() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not found: skipping");
        return;
    };
    if !probe.status.success() {
        eprintln!("systemd-analyze does not run here: skipping");
        return;
    }
    // The units point at /usr/local/bin/atosnap and /etc/atosnap; verify
    // copies pointing at the built binary and the bundled env file.
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("atosnap.env");
    std::fs::copy(contrib().join("atosnap.env"), &env_file).unwrap();
    let mut paths = Vec::new();
    for unit in UNITS {
        let text = std::fs::read_to_string(contrib().join(unit))
            .unwrap()
            .replace("/usr/local/bin/atosnap", BIN)
            .replace("/etc/atosnap.env", &env_file.display().to_string());
        let path = dir.path().join(unit);
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains("atosnap")).collect();
    assert!(complaints.is_empty(), "{complaints:#?}");
}
