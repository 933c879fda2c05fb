//! Commands racing each other through the binary: concurrent creates, and
//! creates racing gc / cleanup --confirm (a thrash test). Whatever the
//! interleaving, every command succeeds and every snapshot stays valid.

use crate::support::{self, Runtime as Env};
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::thread;

fn spawn(c: &mut Command) -> Child {
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(children: Vec<Child>) -> Vec<serde_json::Value> {
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let r = support::parse(&out);
            assert_eq!(r.code, 0, "{r:?}");
            r.json
        })
        .collect()
}

#[test]
fn two_creates_in_the_same_second_get_distinct_stamps() {
    let env = Env::fixture();
    env.ok(&["init"]);
    let args = [
        "create",
        "--at",
        "2026-04-11T12:00:00Z",
        "--lock-wait",
        "600",
    ];
    let children = vec![
        spawn(env.command().args(args)),
        spawn(env.command().args(args)),
    ];
    let stamps: BTreeSet<String> = finish(children)
        .iter()
        .map(|d| d["stamp"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        stamps.into_iter().collect::<Vec<_>>(),
        ["20260411T120000Z", "20260411T120000Z-2"]
    );
    env.assert_healthy();
}

#[test]
fn two_creates_started_together_on_a_new_store_both_succeed() {
    // No store yet: both race to create it too.
    let env = Env::fixture();
    let args = ["create", "--chroma", "--lock-wait", "600"];
    let children = vec![
        spawn(env.command().args(args)),
        spawn(env.command().args(args)),
    ];
    let docs = finish(children);
    assert_ne!(docs[0]["stamp"], docs[1]["stamp"]);
    assert!(docs.iter().all(|d| d["validated"] == true));
    assert_eq!(env.stamps().len(), 2);
    env.assert_healthy();
}

#[test]
fn gc_and_cleanup_racing_creates_never_leave_a_snapshot_invalid() {
    let env = Env::fixture();
    env.init_with_pack_size(1 << 20);
    env.create_on("2026-03-01", &["--chroma"]);
    let env = &env;
    let rounds = 6u32;
    thread::scope(|s| {
        // Two writers: Chroma snapshots and db-only ones, on distinct days.
        for (first_day, extra) in [(1u32, &["--chroma"][..]), (11, &[][..])] {
            s.spawn(move || {
                for i in 0..rounds {
                    let at = format!("2026-04-{:02}T12:00:00Z", first_day + i);
                    let mut args = vec!["create", "--lock-wait", "600", "--at", &at];
                    args.extend_from_slice(extra);
                    let doc = env.ok(&args);
                    assert_eq!(doc["validated"], true, "{doc}");
                }
            });
        }
        // The service keeps writing to the db meanwhile.
        s.spawn(move || {
            for i in 0..rounds * 2 {
                env.mutate_db(30, 100 + i as u64);
            }
        });
        // The deleter: retention and gc, back to back.
        s.spawn(move || {
            for i in 0..rounds {
                let doc = if i % 2 == 0 {
                    env.ok(&[
                        "cleanup",
                        "--confirm",
                        "--lock-wait",
                        "600",
                        "--keep-daily",
                        "2",
                        "--keep-weekly",
                        "0",
                        "--keep-monthly",
                        "0",
                    ])
                } else {
                    env.ok(&["gc", "--confirm", "--lock-wait", "600"])
                };
                assert_eq!(doc["errors"], serde_json::json!([]), "{doc}");
            }
        });
    });
    env.assert_healthy();
    // And once more after a last cleanup and gc.
    env.ok(&["cleanup", "--confirm", "--keep-daily", "2"]);
    env.assert_healthy();
}
