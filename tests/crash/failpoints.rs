//! Writers killed at named points (issue 15 step 9): where a random kill
//! rarely lands, a failpoint (`ATOSNAP_FAILPOINT`, see `src/failpoint.rs`)
//! makes the process die as after a kill -9, exactly there:
//! - `pack:frame-written`: a format-2 pack half written in `tmp/` (its
//!   first frame encoded and appended, no trailer);
//! - `pack:published`: the first pack durable under its name, nothing
//!   refers to it;
//! - `snapshot:before-publish`: every pack durable, the manifest not
//!   written;
//! - `backend:dir-staged:<dir>`: the snapshot's files durable in a temp
//!   folder, the rename not done.
//!
//! At each: no snapshot appears, the store is healthy, the rerun publishes
//! the snapshot, and the next writer leaves `tmp/` empty. gc's rewrite
//! goes through the same packer: killed at its first frame or first
//! published pack, it has deleted nothing, and after its rerun gc has
//! nothing left to do.

use super::*;

const NEW: &str = "20260405T120000Z";

/// The next writer (a plain `create`) leaves the store's `tmp/` empty.
pub(super) fn assert_next_writer_cleans_tmp(env: &Env, context: &str) {
    env.ok(&["create", "--at", "2026-04-10T12:00:00Z"]);
    assert!(
        env.tmp_entries().is_empty(),
        "{context}: {:?}",
        env.tmp_entries()
    );
}

fn create_points() -> [String; 4] {
    [
        "pack:frame-written".into(),
        "pack:published".into(),
        "snapshot:before-publish".into(),
        format!("backend:dir-staged:snapshots/{NEW}"),
    ]
}

/// Runs `args` with the failpoint set and checks that it died there (so a
/// point that moved or vanished fails this test instead of passing it).
fn killed_at(env: &Env, args: &[&str], point: &str) {
    let out = env
        .command()
        .args(args)
        .env("ATOSNAP_FAILPOINT", point)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(137),
        "{args:?} never reached {point}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stamps(env: &Env) -> Vec<String> {
    if env.store.join("snapshots").exists() {
        env.stamps()
    } else {
        Vec::new()
    }
}

#[test]
fn a_create_killed_at_each_kill_point_leaves_no_snapshot_and_converges() {
    let t = templates();
    for variant in [0, 1] {
        for point in create_points() {
            let context = format!("create variant {variant} killed at {point}");
            let env = prepare(&t.base, &t.collectable, Kind::Create, variant);
            let before = stamps(&env);
            killed_at(&env, &args(Kind::Create, variant), &point);
            assert_eq!(stamps(&env), before, "{context}");
            env.assert_healthy();

            let doc = env.ok(&args(Kind::Create, variant));
            assert_eq!(doc["stamp"], NEW, "{context}: {doc}");
            assert_eq!(doc["validated"], true, "{context}: {doc}");
            env.assert_healthy();
            assert_next_writer_cleans_tmp(&env, &context);
        }
    }
}

#[test]
fn a_gc_killed_while_rewriting_deletes_nothing_and_converges() {
    let t = templates();
    for point in ["pack:frame-written", "pack:published"] {
        let env = prepare(&t.base, &t.collectable, Kind::Gc, 0);
        let before = (stamps(&env), pack_names(&env));
        killed_at(&env, &["gc", "--confirm"], point);
        let after = pack_names(&env);
        assert_eq!(stamps(&env), before.0, "gc killed at {point}");
        assert!(
            before.1.is_subset(&after),
            "gc killed at {point} deleted {:?}",
            before.1.difference(&after).collect::<Vec<_>>()
        );
        env.assert_healthy();
        env.ok(&["gc", "--confirm"]);
        let dry = env.ok(&["gc"]);
        for k in ["would_delete_packs", "would_rewrite_packs"] {
            assert_eq!(
                dry[k],
                serde_json::json!([]),
                "gc rerun after {point}: {dry}"
            );
        }
        env.assert_healthy();
    }
}
