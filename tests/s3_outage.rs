//! The S3 server goes away in the middle of a create, a copy, a gc and a
//! repair; after it comes back and the command is rerun, nothing listed is
//! broken and verify is clean. Its own test binary, because it stops the
//! Garage of `scripts/garage.sh` (the one `GARAGE_DIR` and the
//! `GARAGE_*_PORT` variables name, passed through to the script; cargo runs
//! test binaries one at a time). Skipped without `ATOSNAP_TEST_S3_BUCKET`.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use support::s3::*;
use support::{Out, Runtime as Rt};

/// Adds incompressible data to the Chroma dir so uploads take a while.
fn grow_chroma(chroma: &Path, mib: usize, seed: u64) {
    std::fs::write(
        chroma.join(format!("bulk-{seed}.dat")),
        noise(mib << 20, seed),
    )
    .unwrap();
}

fn spawn(s: &S3Rt, args: &[&str]) -> Child {
    spawn_env(s, args, &[])
}

/// An exclusive lock object the server went away under stays behind until
/// it expires: a short lifetime lets the checks after the outage in.
const SHORT_LOCK_TTL: (&str, &str) = ("ATOSNAP_LOCK_TTL_SECS", "8");

fn spawn_env(s: &S3Rt, args: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_atosnap"))
        .envs(env.iter().copied())
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
    outage_when(child, url, cache, |b| packs(b) > before).0
}

/// [`outage_during`] once `ready` holds for the bucket; also returns the
/// child's JSON document.
fn outage_when(
    child: Child,
    url: &str,
    cache: &Path,
    ready: impl Fn(&dyn atosnap::store::backend::Backend) -> bool,
) -> (i32, serde_json::Value) {
    let backend = backend_for(url, cache);
    wait_for(|| ready(backend.as_ref()));
    outage_now(child, || {})
}

/// The tests of this binary stop and start one shared Garage: run in
/// parallel (cargo's default), one test's outage cut another's commands
/// at random moments (a gc found its server back mid-outage, a copy found
/// it gone). Each test holds this for its whole run.
static ONE_OUTAGE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_outage_at_a_time() -> MutexGuard<'static, ()> {
    ONE_OUTAGE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Polls `cond` every 20 ms, for at most 2 minutes.
fn wait_for(cond: impl Fn() -> bool) {
    let started = Instant::now();
    while !cond() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops Garage, runs `stopped` (releases a paused child), waits for the
/// child (it must end by itself, in bounded time) and starts Garage again.
/// Returns the child's exit code and JSON document.
fn outage_now(child: Child, stopped: impl FnOnce()) -> (i32, serde_json::Value) {
    garage("stop");
    stopped();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    let waited = started.elapsed();
    garage("start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        waited < Duration::from_secs(120),
        "the command hung {waited:?} after the server went away; its stderr ends: {}",
        &stderr[stderr.len().saturating_sub(3000)..]
    );
    let code = out.status.code().unwrap_or(-1);
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    if code != 0 {
        assert!(
            json["error"]["code"].is_string() || json["errors"].is_array(),
            "a JSON error: {json}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(code, 1, "{json}");
    }
    (code, json)
}

fn packs(backend: &dyn atosnap::store::backend::Backend) -> usize {
    packs_in(backend, "objects")
}

fn packs_in(backend: &dyn atosnap::store::backend::Backend, dir: &str) -> usize {
    backend
        .list_files(dir)
        .map(|l| l.iter().filter(|e| e.name.ends_with(".pack")).count())
        .unwrap_or(0)
}

/// Incompressible bytes from `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    let mut x = seed | 1;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    data
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
    let _serial = one_outage_at_a_time();

    // create
    let s = S3Rt::new(&bucket, "outage-create");
    s.ok(&["create", "--chroma"]);
    assert_whole(&s);
    let before = packs(s.backend().as_ref());
    let snapshots = s.stamps().len();
    grow_chroma(&s.rt.chroma(), 160, 7);
    // Uploads paced at 4 MiB/s: the outage lands mid-way however fast the
    // create is (unpaced, a create of 160 MiB can finish within the 10 s
    // a stopping Garage may keep serving).
    let child = spawn(&s, &["create", "--chroma", "--limit-upload", "4096"]);
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
        // Paced like the create above, so the outage lands mid-way.
        .args(["copy", "--to", &dest.url, "--limit-upload", "4096"])
        .env("ATOSNAP_CACHE_DIR", &dest.cache)
        .env("ATOSNAP_S3_RETRIES", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = outage_during(child, &dest.url, &dest.cache, 0);
    assert_eq!(code, 1, "the copy was cut off mid-way");
    // The cut-off run is in the source's copy log, with its error.
    let failed = copy_records(&local.store);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["ok"], false, "{failed:?}");
    assert!(failed[0]["error"]["code"].is_string(), "{failed:?}");
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

/// The copy records of a local, unencrypted store, as JSON.
fn copy_records(store: &Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(store.join("copies"))
        .map(|d| {
            d.map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// gc rewrites sparse packs: their live chunks go into new packs, uploaded
/// in the background, and only then may the old packs go. The server stops
/// while the new packs upload: gc must fail (exit 1) without deleting any
/// pack whose live chunks did not arrive, and after the server is back
/// every snapshot is whole and verify is clean.
#[test]
fn the_server_going_away_mid_gc_deletes_no_live_pack() {
    let Some(bucket) = bucket() else { return };
    let _serial = one_outage_at_a_time();
    let s = S3Rt::new(&bucket, "outage-gc");
    // Interleaved files, 1.0 MiB to keep and 1.3 MiB to drop: every pack
    // of the first snapshot ends up less than half live.
    let mixed = s.rt.chroma().join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    for i in 0..96u64 {
        std::fs::write(
            mixed.join(format!("{i:03}-keep.dat")),
            noise(1 << 20, 100 + i),
        )
        .unwrap();
        std::fs::write(
            mixed.join(format!("{i:03}-drop.dat")),
            noise(13 << 17, 1000 + i),
        )
        .unwrap();
    }
    s.ok(&["create", "--chroma"]);
    for i in 0..96u64 {
        std::fs::remove_file(mixed.join(format!("{i:03}-drop.dat"))).unwrap();
    }
    let kept = s.ok(&["create", "--chroma"]);
    // Retention drops the first snapshot; the default grace period keeps
    // every pack for now.
    let cleanup = s.ok(&[
        "cleanup",
        "--confirm",
        "--keep-daily",
        "1",
        "--keep-weekly",
        "0",
        "--keep-monthly",
        "0",
    ]);
    assert_eq!(
        s.stamps(),
        vec![kept["stamp"].as_str().unwrap()],
        "{cleanup}"
    );
    let dry = s.ok(&["gc", "--grace-period", "0"]);
    let sparse = dry["would_rewrite_packs"].as_array().unwrap().len();
    assert!(sparse >= 3, "packs to rewrite: {dry}");
    let dead = dry["would_delete_packs"].as_array().unwrap().len();
    let before = packs(s.backend().as_ref()) - dead;

    // gc holds (a failpoint) once every rewritten pack is handed to the
    // backend, before it waits for the uploads or deletes anything: the
    // server goes away exactly there.
    let release = s.rt.path("gc-release");
    let reached = s.rt.path("gc-release.reached");
    let child = spawn_env(
        &s,
        &["gc", "--confirm", "--grace-period", "0"],
        &[
            SHORT_LOCK_TTL,
            ("ATOSNAP_FAILPOINT_PAUSE", "gc:before-upload-barrier"),
            ("ATOSNAP_FAILPOINT_RELEASE", release.to_str().unwrap()),
        ],
    );
    wait_for(|| reached.exists());
    assert!(reached.exists(), "gc never reached its failpoint");
    let (code, json) = outage_now(child, || std::fs::write(&release, b"go").unwrap());
    assert_eq!(code, 1, "gc was cut off before its deletions: {json}");
    let errors = json["errors"].to_string();
    assert!(
        errors.contains("127.0.0.1") || errors.contains("connect"),
        "the errors name the storage failure: {json}"
    );
    let rewritten = json["rewritten_packs"].as_array().map_or(0, Vec::len);
    assert_eq!(rewritten, 0, "no sparse pack may go: {json}");
    // Every sparse pack (holding live chunks) is still there.
    let backend = s.backend();
    for name in dry["would_rewrite_packs"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        assert!(backend.exists(name).unwrap(), "{name} deleted: {json}");
    }
    assert!(packs(backend.as_ref()) >= before, "{json}");
    assert_whole(&s);
    // The rerun finishes the job: each sparse pack is rewritten, or, when
    // the cut-off gc's new packs had all arrived before the server went
    // away, deleted as dead (its live chunks are in those new packs).
    let gc = s.ok(&["gc", "--confirm", "--grace-period", "0"]);
    let gone: Vec<&serde_json::Value> = ["rewritten_packs", "deleted_packs"]
        .iter()
        .flat_map(|k| gc[k].as_array().unwrap())
        .collect();
    for name in dry["would_rewrite_packs"].as_array().unwrap() {
        assert!(gone.contains(&name), "{name} left: {gc}");
        assert!(!backend.exists(name.as_str().unwrap()).unwrap(), "{gc}");
    }
    assert!(gone.len() >= sparse, "{gc}");
    assert_whole(&s);
}

/// `verify --repair` quarantines damaged packs and writes their intact
/// chunks into fresh packs. The server stops while those upload: the
/// repair must fail rather than report the store healed, and a rerun once
/// the server is back heals it.
#[test]
fn the_server_going_away_mid_repair_reports_nothing_healed() {
    let Some(bucket) = bucket() else { return };
    let _serial = one_outage_at_a_time();
    let s = S3Rt::new(&bucket, "outage-repair");
    grow_chroma(&s.rt.chroma(), 160, 13);
    s.ok(&["create", "--chroma"]);
    let backend = s.backend();
    // A wrong header byte: the packs no longer match their names, while
    // every chunk in them stays intact (all salvageable).
    let mut damaged: Vec<(String, u64)> = backend
        .list_files("objects")
        .unwrap()
        .into_iter()
        .filter(|e| e.name.ends_with(".pack"))
        .map(|e| (e.name, e.size))
        .collect();
    damaged.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
    damaged.truncate(4);
    for (name, _) in &damaged {
        let mut bytes = backend.read(name).unwrap();
        bytes[0] ^= 0x20;
        backend.write_once(name, &bytes).unwrap();
    }
    drop(backend);
    let audit = s.run(&["verify"]).json;
    assert_eq!(audit["ok"], false, "{audit}");
    let before = packs(s.backend().as_ref());

    // Without the spool: one ranged read per salvaged chunk. Each failing
    // read waits through its retries (~5 s); salvage used to skip it and
    // go on to the next chunk, hundreds of them (~17 min).
    let child = spawn_env(
        &s,
        &["verify", "--repair"],
        &[SHORT_LOCK_TTL, ("ATOSNAP_S3_SPOOL_BYTES", "0")],
    );
    // Quarantined, and the first salvage pack is in.
    let (code, json) = outage_when(child, &s.url, &s.cache, |b| {
        packs_in(b, "quarantine") >= damaged.len() && packs(b) > before - damaged.len()
    });
    assert_eq!(code, 1, "repair was cut off while uploading: {json}");
    assert_ne!(json["repair"]["healed"], true, "{json}");
    // Once the server is back, a rerun salvages again from quarantine/
    // (exit 3: it reports the damage it found, then heals it).
    let Out {
        json: repaired,
        code,
        stderr,
        ..
    } = s.run(&["verify", "--repair"]);
    assert!(code == 0 || code == 3, "{repaired}\n{stderr}");
    assert_eq!(repaired["repair"]["healed"], true, "{repaired}");
    assert_whole(&s);
}

/// An endpoint that accepts connections and never answers (a server hung,
/// or a firewall swallowing replies): each attempt gives up after
/// `ATOSNAP_S3_TIMEOUT_SECS`, so the command fails in seconds, not after
/// the 60 s default per attempt. Needs no bucket.
#[test]
fn a_silent_endpoint_fails_within_the_configured_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    // Accepted connections are kept open, unanswered, until the test ends.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_atosnap"))
        .args(["--quiet", "--store", "s3://silent-bucket/store", "list"])
        .env("ATOSNAP_S3_ENDPOINT", &endpoint)
        .env("AWS_ACCESS_KEY_ID", "GKsilent000000000000000000")
        .env("AWS_SECRET_ACCESS_KEY", "0".repeat(64))
        .env("AWS_REGION", "garage")
        .env("ATOSNAP_CACHE_DIR", cache.path())
        .env("ATOSNAP_S3_RETRIES", "2")
        .env("ATOSNAP_S3_TIMEOUT_SECS", "2")
        .output()
        .unwrap();
    let took = started.elapsed();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(out.status.code(), Some(1), "{json}");
    let msg = json["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("timed out"), "{json}");
    // Two attempts of 2 s (plus a pause each, as retried inside and when
    // the store is opened); the default would take minutes.
    assert!(took < Duration::from_secs(40), "{took:?}: {json}");
}

/// A pack the server fails to deliver says nothing about the pack: a
/// validate or a gc rewrite that meets the outage stops with a storage
/// error (exit 1), never `chunk_corrupt` (exit 3), and touches nothing.
/// (Before, a read that failed mid-stream was reported as a corrupt chunk,
/// and gc kept the pack "as it is" with exit 3.)
#[test]
fn the_server_going_away_mid_read_is_a_storage_failure_not_damage() {
    let Some(bucket) = bucket() else { return };
    let _serial = one_outage_at_a_time();
    let s = S3Rt::new(&bucket, "outage-read");
    let mixed = s.rt.chroma().join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    for i in 0..24u64 {
        std::fs::write(
            mixed.join(format!("{i:03}-keep.dat")),
            noise(1 << 20, 300 + i),
        )
        .unwrap();
        std::fs::write(
            mixed.join(format!("{i:03}-drop.dat")),
            noise(13 << 17, 3000 + i),
        )
        .unwrap();
    }
    let first = s.ok(&["create", "--chroma"]);
    let first = first["stamp"].as_str().unwrap().to_string();

    let paused = |args: &[&str], point: &str| {
        let release = s.rt.path(&format!("{point}-release").replace(':', "-"));
        let mut reached = release.clone().into_os_string();
        reached.push(".reached");
        let child = spawn_env(
            &s,
            args,
            &[
                SHORT_LOCK_TTL,
                ("ATOSNAP_FAILPOINT_PAUSE", point),
                ("ATOSNAP_FAILPOINT_RELEASE", release.to_str().unwrap()),
            ],
        );
        let reached = std::path::PathBuf::from(reached);
        wait_for(|| reached.exists());
        assert!(reached.exists(), "{args:?} never reached {point}");
        outage_now(child, || std::fs::write(&release, b"go").unwrap())
    };

    let (code, json) = paused(&["validate", &first], "validate:before-reads");
    assert_eq!(code, 1, "{json}");
    assert_eq!(json["error"]["code"], "io_error", "{json}");
    assert!(!json.to_string().contains("chunk_corrupt"), "{json}");

    for i in 0..24u64 {
        std::fs::remove_file(mixed.join(format!("{i:03}-drop.dat"))).unwrap();
    }
    s.ok(&["create", "--chroma"]);
    // The default grace period keeps every pack through forget's own gc.
    s.ok(&["forget", &first, "--confirm"]);
    let dry = s.ok(&["gc", "--grace-period", "0"]);
    assert!(
        !dry["would_rewrite_packs"].as_array().unwrap().is_empty(),
        "a sparse pack to rewrite: {dry}"
    );
    let before = packs(s.backend().as_ref());
    let (code, json) = paused(
        &["gc", "--confirm", "--grace-period", "0"],
        "gc:before-rewrite",
    );
    assert_eq!(code, 1, "{json}");
    let errors = json["errors"].to_string();
    assert!(!errors.contains("chunk_corrupt"), "{json}");
    // The sparse pack may have been read before the outage (gc's mark
    // reads list blobs from the packs, which downloads them whole): then
    // the upload of its rewrite is what fails. Either way, a storage
    // failure, named.
    assert!(
        errors.contains("could not read") || errors.contains("could not upload"),
        "{json}"
    );
    assert_eq!(
        json["rewritten_packs"].as_array().map_or(0, Vec::len),
        0,
        "{json}"
    );
    assert!(
        packs(s.backend().as_ref()) >= before - dry["would_delete_packs"].as_array().unwrap().len()
    );
    assert_whole(&s);
}
