//! Transport and size controls (issue 17 item 5), black box: `init
//! --compression`, `--limit-upload` / `--limit-download` on a local store
//! and their bad values, the "Global options" heading of `--help`, and a
//! closed stdout.

use crate::support::{run_cmd, Runtime, BIN};
use serde_json::Value;
use std::fs;
use std::process::Command;

/// `init --compression CHOICE`, then one snapshot of the fixture's db and
/// registry; its `create` result and the store's config.json.
fn snapshot_with(choice: &str) -> (Runtime, Value, Value) {
    let rt = Runtime::fixture();
    let init = rt.ok(&["init", "--compression", choice]);
    assert_eq!(init["compression"], choice, "{init}");
    let created = rt.create(&[]);
    let config: Value =
        serde_json::from_slice(&fs::read(rt.store.join("config.json")).unwrap()).unwrap();
    (rt, created, config)
}

/// Whether every chunk of the store is stored compressed (`Some(true)`),
/// none is (`Some(false)`), or some are.
fn all_compressed(rt: &Runtime) -> Option<bool> {
    let index = rt.open_store().load_index().unwrap();
    let flags: Vec<bool> = (index.iter().unwrap())
        .map(|r| r.unwrap().1.compressed())
        .collect();
    assert!(!flags.is_empty());
    match (flags.iter().all(|c| *c), flags.iter().any(|c| *c)) {
        (true, _) => Some(true),
        (false, false) => Some(false),
        _ => None,
    }
}

#[test]
fn compression_none_stores_chunks_raw_and_zstd_19_stores_less() {
    let (none_rt, none, none_config) = snapshot_with("none");
    let raw = none["db_size_bytes"].as_u64().unwrap();
    let stored_none = none["bytes_new_stored"].as_u64().unwrap();
    // Raw: at least the db's bytes (the fixture db compresses well, so
    // zstd would store far less), plus pack headers and indexes.
    assert!(stored_none >= raw, "none stored {stored_none} < raw {raw}");
    assert_eq!(all_compressed(&none_rt), Some(false));
    assert_eq!(none_config["compression"]["algorithm"], "none");
    assert_eq!(none_config["compression"]["auto"], false);

    let (_, z19, z19_config) = snapshot_with("zstd:19");
    let stored_19 = z19["bytes_new_stored"].as_u64().unwrap();
    assert!(
        stored_19 * 2 < stored_none,
        "zstd:19 stored {stored_19}, none {stored_none}"
    );
    assert_eq!(z19_config["compression"]["algorithm"], "zstd");
    assert_eq!(z19_config["compression"]["level"], 19);
    assert_eq!(z19_config["compression"]["auto"], false);

    // The default: format 2's frames at zstd level 3, raw above 97 %, and
    // no `auto` field in config.json.
    let (auto_rt, auto, auto_config) = snapshot_with("auto");
    assert_eq!(
        auto_config["compression"],
        serde_json::json!({"algorithm": "zstd", "level": 3, "max_ratio_percent": 97})
    );
    let stored_auto = auto["bytes_new_stored"].as_u64().unwrap();
    assert!(
        stored_auto * 2 < stored_none,
        "{stored_auto} vs {stored_none}"
    );
    assert_eq!(auto_rt.ok(&["stats"])["compression"], "auto");
    // A snapshot of a `none` store restores like any other.
    none_rt.assert_healthy();
}

#[test]
fn a_store_written_before_the_compression_flag_opens_and_takes_snapshots() {
    let rt = Runtime::tiny();
    rt.ok(&["init"]);
    // config.json as stores made before the flag hold it.
    let old = r#"{
  "format_version": 1,
  "store_id": "00112233445566778899aabbccddeeff",
  "created_at": "2026-01-01T00:00:00Z",
  "chunking": {"sqlite_page_chunks": true, "fixed_block_suffixes": [".bin"],
    "fixed_block_size": 4096, "cdc_min_size": 16384, "cdc_avg_size": 65536,
    "cdc_max_size": 262144},
  "compression": {"algorithm": "zstd", "level": 1, "max_ratio_percent": 90},
  "pack": {"target_size": 33554432},
  "encryption": {"scheme": "none"}
}"#;
    fs::write(rt.store.join("config.json"), old).unwrap();
    // Format 1 is read, never written: stats reads it as `auto`, create
    // is refused and the config stays as it was.
    let stats = rt.ok(&["stats"]);
    assert_eq!(stats["compression"], "auto", "{stats}");
    assert_eq!(rt.run(&["create"]).error_code(), "store_format_read_only");
    assert_eq!(
        fs::read_to_string(rt.store.join("config.json")).unwrap(),
        old
    );
    // The same config in format 2 (no `auto` field) takes snapshots.
    let v2 = old
        .replace(r#""format_version": 1,"#, r#""format_version": 2,"#)
        .replace(
            r#""pack":"#,
            r#""lists": {"leaf_slots": 1024, "node_slots": 1024, "cdc_leaf_bits": 10,
    "cdc_leaf_min": 256, "cdc_leaf_max": 4096, "max_chain": 64},
  "frames": {"max_chunks": 256, "max_bytes": 1048576},
  "pack":"#,
        );
    fs::write(rt.store.join("config.json"), &v2).unwrap();
    rt.create(&[]);
    let stats = rt.ok(&["stats"]);
    assert_eq!(stats["compression"], "auto", "{stats}");
    assert_eq!(stats["snapshots"], 1);
    assert_eq!(
        fs::read_to_string(rt.store.join("config.json")).unwrap(),
        v2
    );
}

#[test]
fn bad_compression_values_are_usage_errors_naming_the_flag() {
    let rt = Runtime::tiny();
    for bad in ["zstd:0", "zstd:23", "gzip", "zstd:x", ""] {
        let out = rt.run(&["init", "--compression", bad]);
        assert_eq!(out.code, 2, "{bad}: {out:?}");
        assert_eq!(out.error_code(), "usage", "{bad}");
        let msg = out.json["error"]["message"].as_str().unwrap();
        assert!(msg.contains("--compression"), "{bad}: {msg}");
        assert!(
            !rt.store.join("config.json").exists(),
            "{bad}: a store was made"
        );
    }
}

#[test]
fn transfer_limits_on_a_local_store_are_ignored_with_a_warning() {
    let rt = Runtime::tiny();
    let out = rt.run(&["create", "--limit-upload", "100"]);
    assert_eq!(out.code, 0, "{out:?}");
    let warnings = out.strings("warnings");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("--limit-upload ignored")),
        "{warnings:?}"
    );
    assert!(
        out.stderr.contains("--limit-upload ignored"),
        "{}",
        out.stderr
    );
    // From the environment too, on a result without warnings of its own.
    let out = rt.run_env(&["list"], &[("ATOSNAP_LIMIT_DOWNLOAD", "64")]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["snapshots"].as_array().unwrap().len(), 1);
    let warnings = out.strings("warnings");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("--limit-download ignored")),
        "{warnings:?}"
    );
    // Without a limit, no such warning.
    assert!(rt.ok(&["list"]).get("warnings").is_none());
}

#[test]
fn bad_transfer_limits_are_usage_errors_naming_the_flag() {
    let rt = Runtime::tiny();
    for flag in ["--limit-upload", "--limit-download"] {
        for bad in ["0", "-1", "x", "1.5"] {
            let out = rt.run(&["list", flag, bad]);
            assert_eq!(out.code, 2, "{flag} {bad}: {out:?}");
            let msg = out.json["error"]["message"].as_str().unwrap();
            assert!(msg.contains(flag), "{flag} {bad}: {msg}");
        }
        let var = format!("ATOSNAP_{}", flag[2..].replace('-', "_").to_uppercase());
        let out = rt.run_env(&["list"], &[(&var, "0")]);
        assert_eq!(out.code, 2, "{var}=0: {out:?}");
        assert!(out.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains(flag));
    }
}

#[test]
fn help_shows_the_command_options_first_and_the_global_ones_under_their_heading() {
    let out = Command::new(BIN)
        .args(["create", "--help"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    let global = help
        .find("\nGlobal options:\n")
        .expect("a Global options heading");
    let own = help
        .find("\nOptions:\n")
        .expect("the command's own options");
    assert!(own < global, "{help}");
    for flag in ["--chroma", "--tag", "--at"] {
        let at = help.find(flag).unwrap_or(usize::MAX);
        assert!(
            at < global,
            "{flag} is not among the command's own options:\n{help}"
        );
    }
    for flag in [
        "--store",
        "--lock-wait",
        "--limit-upload",
        "--password-file",
    ] {
        let at = help.find(flag).unwrap_or(0);
        assert!(at > global, "{flag} is not under Global options:\n{help}");
    }
}

#[test]
fn a_closed_stdout_ends_the_command_quietly_with_141() {
    let rt = Runtime::tiny();
    rt.create(&[]);
    // A success reports the lost output as SIGPIPE would; a failure keeps
    // its own code.
    for (args, code) in [
        (&["list"][..], 141),
        (&["completions", "bash"], 141),
        (&["stats"], 141),
        (&["list", "--bogus"], 2),
        (&["validate", "20000101T000000Z"], 3),
        (&["ls", "20000101T000000Z"], 1),
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        // The read end is closed before the command writes anything.
        drop(reader);
        let mut cmd = rt.command();
        cmd.args(args).stdout(writer);
        let out = run_cmd(&mut cmd);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
        assert!(!out.stderr.contains("panicked"), "{args:?}: {}", out.stderr);
        assert!(
            !out.stderr.contains("Broken pipe"),
            "{args:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn a_store_made_by_copy_keeps_the_source_compression() {
    let (rt, _, _) = snapshot_with("none");
    let to = rt.path("copy-dest");
    let out = rt.ok(&["copy", "--to", to.to_str().unwrap()]);
    assert_eq!(
        out["snapshots_copied"].as_array().map(|a| a.len()),
        Some(1),
        "{out}"
    );
    let config: Value = serde_json::from_slice(&fs::read(to.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["compression"]["algorithm"], "none", "{config}");
    assert_eq!(config["compression"]["auto"], false);
}
