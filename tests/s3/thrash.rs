//! Two or three writers on one bucket at once, round after round: two
//! `create`s, a `create` and a `copy` into the bucket, a `create` and a
//! `gc --confirm` without grace period. Each round adds a new file of
//! several MiB to the Chroma tree, so the racing writers cut the same new
//! chunks into the same packs (same content, same name) and upload them in
//! multipart uploads (over 8 MiB) to one key at once. Every command must
//! succeed (or fail on the store lock, naming it), and afterwards every
//! listed snapshot validates and verify is clean.
//!
//! `ATOSNAP_THRASH_ROUNDS` sets the number of rounds (default 4; 20 for a
//! long run). Skipped without `ATOSNAP_TEST_S3_BUCKET`.

use crate::support::s3::*;
use crate::support::{Out, Runtime as Rt};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const DEFAULT_ROUNDS: usize = 4;

fn rounds() -> usize {
    std::env::var("ATOSNAP_THRASH_ROUNDS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_ROUNDS)
}

/// `mib` MiB of incompressible bytes from `seed` as a new Chroma file.
fn add_chroma_file(chroma: &Path, mib: usize, seed: u64) {
    let mut data = vec![0u8; mib << 20];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(chroma.join(format!("thrash-{seed:03}.bin")), data).unwrap();
}

/// atosnap on `store` with the runtime of `rt`, started now.
fn start(rt: &Rt, store: &str, cache: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_atosnap"))
        .args(["--quiet", "--store", store, "--db"])
        .arg(rt.db())
        .arg("--registry")
        .arg(rt.registry())
        .arg("--chroma-dir")
        .arg(rt.chroma())
        .args(["--lock-wait", "120"])
        .args(args)
        .env("ATOSNAP_CACHE_DIR", cache)
        .env("ATOSNAP_LOG", "info")
        .env_remove("ATOSNAP_FAILPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Exit 0, or 1 on the store lock (a writer that gave up waiting). Returns
/// a line for the history printed if the end checks fail.
fn check(round: usize, what: &str, out: Output) -> String {
    let code = out.status.code().unwrap_or(-1);
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let locked = code == 1 && json["error"]["code"] == "store_locked";
    assert!(
        code == 0 || locked,
        "round {round}: {what} exited {code}: {json}\n{stderr}"
    );
    if code == 0 && what.starts_with("create") {
        assert_eq!(json["validated"], true, "round {round}: {what}: {json}");
    }
    let stamp = json["stamp"].as_str().map(str::to_string);
    let published = json["snapshots_copied"].to_string();
    format!(
        "round {round}: {what}: exit {code}, stamp {stamp:?}, copied {published}\n{}",
        stderr.trim_end()
    )
}

#[test]
fn racing_writers_on_one_bucket_all_succeed_and_lose_nothing() {
    let Some(bucket) = bucket() else { return };
    let s = S3Rt::new(&bucket, "thrash");
    // A second cache: the other writer runs as if on another host.
    let other_cache = s.rt.path("cache-2");
    let other_cache = other_cache.as_path();
    // The source of the copies: a local store of the same runtime.
    let local = s.rt.path("local-store");
    let local = local.to_str().unwrap();
    s.ok(&["create", "--chroma"]);

    let rounds = rounds();
    let mut history = Vec::new();
    for round in 0..rounds {
        add_chroma_file(&s.rt.chroma(), 9 + round % 4, round as u64);
        let kind = round % 3;
        let mut writers: Vec<(&str, Child)> = Vec::new();
        match kind {
            0 => {
                writers.push((
                    "create (1)",
                    start(&s.rt, &s.url, &s.cache, &["create", "--chroma"]),
                ));
                writers.push((
                    "create (2)",
                    start(&s.rt, &s.url, other_cache, &["create", "--chroma"]),
                ));
                if round % 2 == 0 {
                    writers.push((
                        "create (3)",
                        start(&s.rt, &s.url, &s.cache, &["create", "--chroma"]),
                    ));
                }
            }
            1 => {
                // The same new data, already in the local store, copied in
                // while a create of the bucket sends it too.
                // Under a past stamp of its own: taken in the same second
                // as the bucket's create below, it would share its stamp,
                // and the copy would rightly refuse it as another snapshot.
                let at = format!("2020-01-01T{:02}:{:02}:00Z", round / 60, round % 60);
                let snap = start(
                    &s.rt,
                    local,
                    other_cache,
                    &["create", "--chroma", "--at", &at],
                );
                history.push(check(
                    round,
                    "local create",
                    snap.wait_with_output().unwrap(),
                ));
                writers.push((
                    "create",
                    start(&s.rt, &s.url, &s.cache, &["create", "--chroma"]),
                ));
                writers.push((
                    "copy",
                    start(&s.rt, local, other_cache, &["copy", "--to", &s.url]),
                ));
            }
            _ => {
                writers.push((
                    "create",
                    start(&s.rt, &s.url, &s.cache, &["create", "--chroma"]),
                ));
                writers.push((
                    "gc --confirm",
                    start(
                        &s.rt,
                        &s.url,
                        other_cache,
                        &["gc", "--confirm", "--grace-period", "0"],
                    ),
                ));
            }
        }
        for (what, child) in writers {
            history.push(check(round, what, child.wait_with_output().unwrap()));
        }
    }

    let stamps = s.stamps();
    assert!(stamps.len() > rounds, "{stamps:?}");
    for stamp in &stamps {
        let Out {
            json: v,
            code,
            stderr,
            ..
        } = s.run(&["validate", stamp]);
        if code == 0 && v["valid"] == true {
            continue;
        }
        // Tells a damaged bucket from a bad local copy (cache, spool): the
        // same validate again through the same cache, then a fresh one.
        let again = s.run(&["validate", stamp]).json;
        let fresh = s.rt.path("cache-fresh").display().to_string();
        let fresh_v =
            s.rt.run_env(
                &["validate", stamp],
                &[("ATOSNAP_CACHE_DIR", fresh.as_str())],
            )
            .json;
        let stale = cache_disagreements(&s);
        let verify = s.run(&["verify"]).json;
        let verify_fresh =
            s.rt.run_env(&["verify"], &[("ATOSNAP_CACHE_DIR", fresh.as_str())])
                .json;
        panic!(
            "{stamp}: {v}\n{stderr}\nagain: {again}\nfresh cache: {fresh_v}\n\
             cache entries that differ from the bucket: {stale:#?}\n\
             verify: {verify}\nverify, fresh cache: {verify_fresh}\n\
             writers:\n{}",
            history.join("\n")
        );
    }
    let verify = s.ok(&["verify"]);
    assert_eq!(verify["ok"], true, "{verify}");
    // Every cache entry the writers and readers shared holds what the
    // bucket holds under its name (entries of packs gc deleted aside).
    let stale = cache_disagreements(&s);
    assert!(
        stale.is_empty(),
        "{stale:#?}\nwriters:\n{}",
        history.join("\n")
    );
}

/// Every entry of the test's own cache (pack index tails, snapshot files)
/// whose bytes differ from what the bucket holds under its name now.
fn cache_disagreements(s: &S3Rt) -> Vec<String> {
    let backend = backend_for(&s.url, &s.cache);
    let mut out = Vec::new();
    let Ok(stores) = std::fs::read_dir(&s.cache) else {
        return vec![format!("{}: no cache", s.cache.display())];
    };
    for store in stores.flatten() {
        let root = store.path().join("objects");
        for path in files_under(&root) {
            let rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            let bytes = std::fs::read(&path).unwrap_or_default();
            let Some(entry) = bytes.get(32..) else {
                out.push(format!("{rel}: shorter than its hash"));
                continue;
            };
            let (name, from_bucket) = match rel.strip_prefix("packidx/") {
                Some(pack) => {
                    let tail = backend.size(pack).and_then(|size| {
                        let len = entry.len() as u64;
                        backend.read_range_direct(pack, size.saturating_sub(len), entry.len())
                    });
                    (pack.to_string(), tail)
                }
                None => {
                    let name = rel.rsplit_once('.').map_or(rel.as_str(), |(n, _)| n);
                    (name.to_string(), backend.read(name))
                }
            };
            match from_bucket {
                Ok(b) if b == entry => {}
                Ok(b) => out.push(format!(
                    "{rel}: {} bytes cached, the bucket's {name} ends in other bytes ({} read)",
                    entry.len(),
                    b.len()
                )),
                // A pack gc deleted: its entry is never used again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => out.push(format!("{rel}: {name} not readable now: {e}")),
            }
        }
    }
    out
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}
