//! Format 1 stays readable: the stores in `fixtures/format1/` (plain and
//! repokey, made once by `scripts/make_format1_fixture.sh` with the binary
//! that wrote format 1) answer every read command on a copy as they did
//! when they were made (`fixtures/format1/expect.json`, stable fields only),
//! and restored or dumped files hash to what the fixture recorded. This is
//! the guard the format-2 work runs against (docs/design/format2.md §5 step 1).

use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

use crate::support::{copy_tree, Runtime};

const S1: &str = "20260101T000000Z";
const S2: &str = "20260102T000000Z";
const S3: &str = "20260103T000000Z";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/format1")
}

/// `expected` is a subset of `actual`: every key of an expected object is in
/// the actual one with a matching value; arrays match element by element
/// and have the same length; scalars are equal. `at` names the place for
/// the failure message.
fn assert_subset(expected: &Value, actual: &Value, at: &str) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                let got = a
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}.{k}: missing in {actual}"));
                assert_subset(v, got, &format!("{at}.{k}"));
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            assert_eq!(e.len(), a.len(), "{at}: {actual} against {expected}");
            for (i, (v, got)) in e.iter().zip(a).enumerate() {
                assert_subset(v, got, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(expected, actual, "{at}"),
    }
}

fn blake3_hex(path: &Path) -> String {
    blake3::hash(&fs::read(path).unwrap()).to_hex().to_string()
}

/// Runs every read command on a copy of the `kind` store and checks each
/// answer against the fixture's expectations, in the order the fixture
/// script asked them (drill adds a drill record that `list` would show).
fn check_store(kind: &str) {
    let rt = Runtime::tiny();
    copy_tree(&fixture_dir().join(kind), &rt.store);
    let config: Value =
        serde_json::from_slice(&fs::read(rt.store.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["format_version"], 1,
        "the fixture must stay format 1"
    );
    let expect: Value =
        serde_json::from_slice(&fs::read(fixture_dir().join("expect.json")).unwrap()).unwrap();
    let expect = &expect[kind];
    let password = fixture_dir().join("password");
    let cache = rt.dir.path().join("cache");
    let run = |args: &[&str]| -> Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend([
            "--password-file",
            password.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ]);
        rt.ok(&all)
    };

    assert_subset(&expect["list"], &run(&["list"]), "list");
    assert_subset(&expect["verify"], &run(&["verify"]), "verify");
    assert_subset(&expect["diff"][0], &run(&["diff", S1, S2]), "diff 1 2");
    assert_subset(&expect["diff"][1], &run(&["diff", S2, S3]), "diff 2 3");

    for stamp in [S1, S2, S3] {
        let want = &expect["snapshots"][stamp];
        assert_subset(&want["validate"], &run(&["validate", stamp]), "validate");
        assert_subset(&want["ls"], &run(&["ls", stamp, "--long"]), "ls");
        let dumps = want["dump"].as_array().unwrap();
        assert!(!dumps.is_empty(), "{stamp}: the fixture dumps its files");
        let dumped = rt.dir.path().join("dumped");
        for d in dumps {
            let path = d["path"].as_str().unwrap();
            let got = run(&["dump", stamp, path, "-o", dumped.to_str().unwrap()]);
            assert_subset(d, &got, &format!("dump {stamp} {path}"));
            assert_eq!(blake3_hex(&dumped), d["blake3"], "dump {stamp} {path}");
        }
        let to = rt.dir.path().join(format!("to-{stamp}"));
        let restored = run(&["restore", stamp, "--to", to.to_str().unwrap()]);
        assert_subset(&want["restore"], &restored, "restore");
        for d in dumps {
            let path = d["path"].as_str().unwrap();
            // `restore --to DIR` writes `chroma/...` below DIR/chroma and the
            // db and the registry at the top: the snapshot's own paths.
            assert_eq!(
                blake3_hex(&to.join(path)),
                d["blake3"],
                "restore {stamp} {path}"
            );
        }
        assert_subset(&want["drill"], &run(&["drill", stamp]), "drill");
    }
}

#[test]
fn fixture_stores_list_validate_verify_restore_plain() {
    check_store("plain");
}

#[test]
fn fixture_stores_list_validate_verify_restore_repokey() {
    check_store("repokey");
}
