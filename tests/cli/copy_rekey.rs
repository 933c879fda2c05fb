//! A copy between stores of different keys after an earlier copy: only
//! what changed since is read and re-hashed (`src/ops/copy/baseline.rs`),
//! and a file's tree is rebuilt a window of ids at a time.

use super::copy::{change_db, on, restored, two_snapshots, u, validate_ok};
use crate::support::{flip_bit, run_cmd, Runtime as Env};
use std::collections::BTreeSet;

#[test]
fn a_re_keying_copy_reads_only_what_changed_since_the_last_copy() {
    re_keying_copy_reads_only_what_changed(None);
}

/// The same with files sent and renamed three chunks at a time: windows
/// end inside leaves and frames, and between the two lists' first pair
/// and the rest; a chunk met again in a later window is found again.
#[test]
fn a_re_keying_copy_in_windows_of_three_chunks_builds_the_same_snapshot() {
    re_keying_copy_reads_only_what_changed(Some("3"));
}

fn re_keying_copy_reads_only_what_changed(window: Option<&str>) {
    let env = Env::fixture();
    let (a, b) = two_snapshots(&env);
    let enc = env.dir.path().join("enc");
    let pw = [("ATOSNAP_PASSWORD", "enc secret")];
    let init = run_cmd(
        on(&env, &enc)
            .args(["init", "--encryption", "repokey"])
            .envs(pw),
    );
    assert_eq!(init.code, 0, "{init:?}");
    let copy_enc = || {
        let mut cmd = on(&env, &env.store);
        cmd.args(["copy", "--to"])
            .arg(&enc)
            .env("ATOSNAP_TO_PASSWORD", "enc secret");
        if let Some(n) = window {
            cmd.env("ATOSNAP_TEST_COPY_WINDOW", n);
        }
        run_cmd(&mut cmd)
    };
    let first = copy_enc();
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(
        first.strings("snapshots_copied"),
        vec![a.clone(), b.clone()]
    );
    for stamp in [&a, &b] {
        assert_eq!(
            restored(&env, &enc, stamp, &pw),
            restored(&env, &env.store, stamp, &[])
        );
    }

    change_db(&env, "probe_c");
    let c = env.create(&["--chroma", "--at", "2026-04-12T12:00:00Z"]);
    let c = c["stamp"].as_str().unwrap().to_string();
    let expected = restored(&env, &env.store, &c, &[]);
    let id = env.file_chunks(
        &c,
        "chroma/e8763d70-0924-4389-9e69-cddb1f90792c/data_level0.bin",
    )[1];
    // And a page of the db that c shares with b, from its end (the frame of
    // b's first page, which the copy reads to prove the lists' pairing, is
    // another one).
    let in_b: BTreeSet<_> = env.file_chunks(&b, "atocore.db").into_iter().collect();
    let shared = *env
        .file_chunks(&c, "atocore.db")
        .iter()
        .rev()
        .find(|id| in_b.contains(id))
        .unwrap();
    for id in [id, shared] {
        let (pack, offset, len) = env.chunk_location(&id);
        flip_bit(&pack, offset + len / 2);
    }

    let second = copy_enc();
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(second.strings("snapshots_copied"), vec![c.clone()]);
    assert!(u(&second.json, "chunks_sent") > 0, "{:?}", second.json);
    validate_ok(&env, &enc, &c, &pw);
    assert_eq!(restored(&env, &enc, &c, &pw), expected);
}
