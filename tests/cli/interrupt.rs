//! SIGINT and SIGTERM during a CLI command: it stops, releases the store
//! lock (on a bucket its lock object is deleted), leaves its temp files for
//! the next run to sweep, publishes nothing and prints the one JSON error
//! document (`interrupted`, exit 1). The next create and verify succeed.
//!
//! The interrupted create is caught at a known point, no sleeps: parked on
//! the cooperative ingestion lock the test holds (after the db is packed),
//! or frozen with SIGSTOP in the middle of packing a large Chroma file and
//! signalled while frozen (the signal is delivered when it resumes).

use crate::support::s3::*;
use crate::support::Runtime as Rt;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Polls until `cond` holds (the deadline only turns a hang into a failure).
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn names_in(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// The child's exit: code 1 and exactly one JSON document, `interrupted`.
fn assert_interrupted(child: Child, name: &str) {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let mut docs = serde_json::Deserializer::from_str(&stdout).into_iter::<serde_json::Value>();
    let doc = docs.next().expect("one JSON document").unwrap();
    assert!(docs.next().is_none(), "exactly one JSON document: {stdout}");
    assert_eq!(doc["error"]["code"], "interrupted", "{doc}\n{stderr}");
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(message.contains(name), "{message}");
}

/// Adds incompressible data to the Chroma dir so packing it takes a while.
fn grow_chroma(chroma: &Path, mib: usize) {
    let mut data = vec![0u8; mib << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(chroma.join("bulk.dat"), data).unwrap();
}

fn spawn_create(rt: &Rt, extra: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_atosnap"));
    c.args(["--quiet", "--store"])
        .arg(&rt.store)
        .arg("--db")
        .arg(rt.db())
        .arg("--registry")
        .arg(rt.registry())
        .arg("--chroma-dir")
        .arg(rt.chroma())
        .args(["create", "--chroma", "--lock-wait", "600"])
        .args(extra)
        .env_remove("ATOCORE_INGESTION_LOCK")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// The later run sweeps what the interrupted one left, then all is well.
fn assert_next_run_succeeds(rt: &Rt, pid: u32) {
    let stamp = rt.create_stamp(&["--chroma"]);
    assert_eq!(rt.stamps(), [stamp]);
    assert!(
        names_in(&rt.store.join("tmp"), &format!("{pid}-")).is_empty(),
        "the next create sweeps the interrupted one's temps"
    );
    let v = rt.ok(&["verify"]);
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn sigterm_while_waiting_for_the_ingestion_lock_releases_the_store_lock() {
    let rt = Rt::fixture();
    let ingestion = rt.path("ingestion.lock");
    let service = File::create(&ingestion).unwrap();
    service.lock_shared().unwrap(); // a service writer mid-write
    let child = spawn_create(&rt, &["--ingestion-lock", ingestion.to_str().unwrap()], &[]);
    let pid = child.id();
    let (locks, tmp) = (rt.store.join("locks"), rt.store.join("tmp"));
    wait_until("create to hold the store lock", || {
        !names_in(&locks, &format!("holder-{pid}-")).is_empty()
    });
    wait_until("create to open a pack", || {
        names_in(&tmp, &format!("{pid}-"))
            .iter()
            .any(|n| n.ends_with(".pack"))
    });
    signal(&child, libc::SIGTERM);
    assert_interrupted(child, "SIGTERM");
    assert!(names_in(&locks, &format!("holder-{pid}-")).is_empty());
    assert!(rt.stamps().is_empty(), "nothing published");
    // The store lock is free: an exclusive holder gets it at once.
    rt.ok(&["gc", "--lock-wait", "0"]);
    drop(service);
    assert_next_run_succeeds(&rt, pid);
}

#[test]
fn sigint_in_the_middle_of_packing_a_file_stops_the_create() {
    let rt = Rt::fixture();
    grow_chroma(&rt.chroma(), 192);
    let child = spawn_create(&rt, &[], &[]);
    let pid = child.id();
    let tmp = rt.store.join("tmp");
    wait_until("create to open a pack", || {
        names_in(&tmp, &format!("{pid}-"))
            .iter()
            .any(|n| n.ends_with(".pack"))
    });
    // Frozen mid-capture; SIGINT is delivered when it resumes.
    signal(&child, libc::SIGSTOP);
    signal(&child, libc::SIGINT);
    signal(&child, libc::SIGCONT);
    assert_interrupted(child, "SIGINT");
    assert!(rt.stamps().is_empty(), "nothing published");
    assert_next_run_succeeds(&rt, pid);
}

/// On a bucket the lock object is what others see: it is deleted.
#[test]
fn sigterm_on_a_bucket_deletes_the_lock_object() {
    let Some(bucket) = bucket() else { return };
    let s = S3Rt::new(&bucket, "interrupt");
    s.ok(&["init"]);
    let ingestion = s.rt.path("ingestion.lock");
    let service = File::create(&ingestion).unwrap();
    service.lock_shared().unwrap();
    let cache = s.cache.display().to_string();
    let child = spawn_create(
        &s.rt,
        &["--ingestion-lock", ingestion.to_str().unwrap()],
        &[("ATOSNAP_CACHE_DIR", cache.as_str())],
    );
    let pid = child.id();
    let b = s.backend();
    let lock_objects = || {
        b.list_files("locks")
            .unwrap()
            .into_iter()
            .filter(|e| e.name.contains(&format!("-{pid}-")))
            .count()
    };
    wait_until("create to write its lock object", || lock_objects() == 1);
    signal(&child, libc::SIGTERM);
    assert_interrupted(child, "SIGTERM");
    assert_eq!(lock_objects(), 0, "the lock object is deleted");
    assert!(s.stamps().is_empty(), "nothing published");
    drop(service);
    s.ok(&["create", "--chroma"]);
    assert_eq!(s.stamps().len(), 1);
    assert_eq!(s.ok(&["verify"])["ok"], true);
}

/// validate (a full read of the snapshot) stops at a signal, as create
/// does, instead of running on and reporting the snapshot valid.
#[test]
fn sigint_during_validate_reports_interrupted() {
    let rt = Rt::fixture();
    let stamp = rt.create_stamp(&["--chroma"]);
    let out = rt.interrupted_at("validate:before-reads", &["validate", &stamp]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.error_code(), "interrupted", "{out:?}");
}

/// stats, which reads every snapshot's lists, stops at a signal too.
#[test]
fn sigint_during_stats_reports_interrupted() {
    let rt = Rt::fixture();
    rt.create_stamp(&["--chroma"]);
    let out = rt.interrupted_at("stats:before-reads", &["stats"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.error_code(), "interrupted", "{out:?}");
}

/// dump streams a file of any size to stdout: a signal stops it between
/// two writes with the `interrupted` document on stderr, instead of
/// streaming to the end.
#[test]
fn sigint_stops_a_dump_to_stdout() {
    use std::io::Read;
    const MIB: usize = 64;
    let rt = Rt::fixture();
    grow_chroma(&rt.chroma(), MIB);
    let stamp = rt.create_stamp(&["--chroma"]);
    let mut child = rt
        .command()
        .args(["dump", &stamp, "chroma/bulk.dat"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // The dump has begun: it now waits on the full pipe.
    let mut first = vec![0u8; 64 << 10];
    stdout.read_exact(&mut first).unwrap();
    signal(&child, libc::SIGINT);
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
    assert_eq!(doc["error"]["code"], "interrupted", "{doc}");
    let streamed = first.len() + rest.len();
    assert!(
        streamed < (MIB << 20) / 2,
        "{streamed} bytes streamed after the signal"
    );
}
