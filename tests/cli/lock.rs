//! The store lock through the binary: create holds it shared, gc and
//! cleanup --confirm exclusive; a blocked command names the holder (pid,
//! command, since), waits up to --lock-wait, then exits 1 with
//! `store_locked`; a SIGKILLed holder leaves no stale lock.
//!
//! The holder is either this test process (through the library) or an
//! `atosnap create` parked on the cooperative ingestion lock that the test
//! holds: no sleeps, every step waits for an observable state.

use crate::support::{self, Runtime as Env};
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use atosnap::store::lock::{lock_exclusive, lock_shared};

fn store_with_a_snapshot() -> Env {
    let env = Env::fixture();
    env.ok(&["create"]);
    env
}

fn assert_locked_by(r: &support::Out, pid: u32, command: &str) {
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.error_code(), "store_locked", "{r:?}");
    let msg = r.json["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&format!("pid {pid}")), "{msg}");
    assert!(msg.contains(&format!("`{command}`")), "{msg}");
    assert!(msg.contains("since 20"), "{msg}");
    assert!(r.stderr.contains(&format!("pid {pid}")), "{}", r.stderr);
}

#[test]
fn an_exclusive_holder_blocks_writers_and_readers() {
    let env = store_with_a_snapshot();
    let me = std::process::id();
    let held = lock_exclusive(&env.store, "test-holder", Duration::ZERO).unwrap();
    for args in [
        vec!["create", "--lock-wait", "0"],
        vec!["gc", "--lock-wait", "0"],
        vec!["gc", "--confirm", "--lock-wait", "0"],
        vec!["cleanup", "--confirm", "--lock-wait", "0"],
    ] {
        assert_locked_by(&env.run(&args), me, "test-holder");
    }
    drop(held);
    env.ok(&["create", "--lock-wait", "0"]);
    env.ok(&["gc", "--confirm", "--lock-wait", "0"]);
}

#[test]
fn a_shared_holder_blocks_only_deleters() {
    let env = store_with_a_snapshot();
    let me = std::process::id();
    let _held = lock_shared(&env.store, "create", Duration::ZERO).unwrap();
    env.ok(&["create", "--lock-wait", "0"]);
    env.ok(&["gc", "--lock-wait", "0"]);
    env.ok(&["cleanup", "--lock-wait", "0"]);
    assert_locked_by(
        &env.run(&["gc", "--confirm", "--lock-wait", "0"]),
        me,
        "create",
    );
    assert_locked_by(
        &env.run(&["cleanup", "--confirm", "--lock-wait", "0"]),
        me,
        "create",
    );
}

#[test]
fn a_waiting_command_says_who_is_in_the_way_and_goes_on_when_freed() {
    let env = store_with_a_snapshot();
    let held = lock_exclusive(&env.store, "gc --confirm", Duration::ZERO).unwrap();
    let mut child = env
        .loud_command()
        .args(["create", "--lock-wait", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let n = stderr.read_line(&mut line).unwrap();
        assert!(n > 0, "create ended without saying it waits");
        if line.contains("waits up to 120s") {
            break;
        }
    }
    assert!(
        line.contains(&format!("pid {}", std::process::id())) && line.contains("`gc --confirm`"),
        "{line}"
    );
    drop(held);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["validated"], true);
}

/// Polls until `cond` holds (a generous deadline only turns a hang into a
/// failure; nothing is asserted about time).
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn files_of(dir: &Path, prefix: &str) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_killed_holder_leaves_no_stale_lock() {
    let env = store_with_a_snapshot();
    env.mutate_db(50, 1); // new pages: the create opens a pack in tmp/
    let ingestion = env.dir.path().join("ingestion.lock");
    let service = File::create(&ingestion).unwrap();
    service.lock_shared().unwrap(); // a service writer mid-write
    let mut child = env
        .command()
        .args([
            "create",
            "--chroma",
            "--lock-wait",
            "600",
            "--ingestion-lock",
            ingestion.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let locks = env.store.join("locks");
    let tmp = env.store.join("tmp");
    wait_until("create to hold the store lock", || {
        !files_of(&locks, &format!("holder-{pid}-")).is_empty()
    });
    wait_until("create to open a pack", || {
        files_of(&tmp, &format!("{pid}-"))
            .iter()
            .any(|n| n.ends_with(".pack"))
    });
    assert_locked_by(
        &env.run(&["gc", "--confirm", "--lock-wait", "0"]),
        pid,
        "create",
    );

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!files_of(&tmp, &format!("{pid}-")).is_empty());

    let r = env.ok(&["gc", "--confirm", "--lock-wait", "0"]);
    assert!(r["tmp_files_removed"].as_u64().unwrap() >= 1, "{r}");
    assert!(env.tmp_entries().is_empty());
    assert!(files_of(&locks, &format!("holder-{pid}-")).is_empty());
    drop(service);
    env.assert_healthy();
}
