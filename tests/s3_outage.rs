//! The S3 server goes away in the middle of a create and of a copy; after
//! it comes back and the command is rerun, nothing listed is broken and
//! verify is clean. Its own test binary, because it stops the shared Garage
//! (cargo runs test binaries one at a time). Skipped without
//! `ATOSNAP_TEST_S3_BUCKET`.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::s3::*;
use support::Runtime as Rt;

/// Adds incompressible data to the Chroma dir so uploads take a while.
fn grow_chroma(chroma: &Path, mib: usize, seed: u64) {
    let mut data = vec![0u8; mib << 20];
    let mut x = seed | 1;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(chroma.join(format!("bulk-{seed}.dat")), data).unwrap();
}

fn spawn(s: &S3Rt, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_atosnap"))
        .args(["--quiet", "--store", &s.url, "--db"])
        .arg(s.rt.db())
        .arg("--registry")
        .arg(s.rt.registry())
        .arg("--chroma-dir")
        .arg(s.rt.chroma())
        .args(args)
        .env("ATOSNAP_CACHE_DIR", &s.cache)
        .env("ATOSNAP_S3_RETRIES", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the bucket under `url` holds more packs than `before`
/// (the command is mid-way: uploading), then stops Garage, waits for the
/// child (it must end by itself, in bounded time) and starts Garage again.
/// Returns the child's exit code.
fn outage_during(child: Child, url: &str, cache: &Path, before: usize) -> i32 {
    let backend = backend_for(url, cache);
    let started = Instant::now();
    while packs(backend.as_ref()) <= before && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    garage("stop");
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    let waited = started.elapsed();
    garage("start");
    assert!(
        waited < Duration::from_secs(120),
        "the command hung {waited:?} after the server went away"
    );
    let code = out.status.code().unwrap_or(-1);
    if code != 0 {
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        assert!(json["error"]["code"].is_string(), "a JSON error: {json}");
        assert_eq!(code, 1, "{json}");
    }
    code
}

fn packs(backend: &dyn atosnap::store::backend::Backend) -> usize {
    backend
        .list_files("objects")
        .map(|l| l.iter().filter(|e| e.name.ends_with(".pack")).count())
        .unwrap_or(0)
}

fn assert_whole(s: &S3Rt) {
    for stamp in s.stamps() {
        let v = s.ok(&["validate", &stamp]);
        assert_eq!(v["valid"], true, "{stamp}: {v}");
    }
    let verify = s.ok(&["verify"]);
    assert_eq!(verify["ok"], true, "{verify}");
}

#[test]
fn the_server_going_away_mid_create_and_mid_copy_breaks_nothing() {
    let Some(bucket) = bucket() else { return };

    // create
    let s = S3Rt::new(&bucket, "outage-create");
    s.ok(&["create", "--chroma"]);
    let before = packs(s.backend().as_ref());
    let snapshots = s.stamps().len();
    grow_chroma(&s.rt.chroma(), 160, 7);
    let child = spawn(&s, &["create", "--chroma"]);
    let code = outage_during(child, &s.url, &s.cache, before);
    // 160 MiB were still to upload when the server went away.
    assert_eq!(code, 1, "the create was cut off mid-way");
    assert_eq!(
        s.stamps().len(),
        snapshots,
        "a failed create lists nothing new"
    );
    assert_whole(&s);
    let rerun = s.ok(&["create", "--chroma"]);
    assert_eq!(rerun["validated"], true, "{rerun}");
    assert_whole(&s);

    // copy (local store -> bucket)
    let local = Rt::fixture();
    grow_chroma(&local.chroma(), 160, 11);
    local.ok(&["create", "--chroma"]);
    let dest = S3Rt::new(&bucket, "outage-copy");
    let child = Command::new(env!("CARGO_BIN_EXE_atosnap"))
        .args(["--quiet", "--store"])
        .arg(&local.store)
        .args(["copy", "--to", &dest.url])
        .env("ATOSNAP_CACHE_DIR", &dest.cache)
        .env("ATOSNAP_S3_RETRIES", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = outage_during(child, &dest.url, &dest.cache, 0);
    assert_eq!(code, 1, "the copy was cut off mid-way");
    // The bucket lists nothing (the manifest goes last) or only whole
    // snapshots.
    assert!(dest.stamps().is_empty(), "{:?}", dest.stamps());
    let out = Command::new(env!("CARGO_BIN_EXE_atosnap"))
        .args(["--quiet", "--store"])
        .arg(&local.store)
        .args(["copy", "--to", &dest.url])
        .env("ATOSNAP_CACHE_DIR", &dest.cache)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(dest.stamps(), local.stamps());
    assert_whole(&dest);
}
