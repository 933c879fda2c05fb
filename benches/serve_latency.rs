//! Latency of the admin API (a benchmark, not a test):
//!
//! 1. `GET /admin/backup` on a store of 1,000 snapshots (made quickly
//!    through the library with `at` set, on a tiny runtime);
//! 2. `GET /healthz` while `POST /admin/backup` captures a large Chroma
//!    file (fresh random data each round, so every create does real work).
//!
//! Each request is a fresh connection, as curl or a prober makes them.
//! Run: `cargo bench --bench serve_latency` (SNAPSHOTS=N, REQUESTS=N,
//! CHROMA_MIB=N override the sizes). Prints p50 / p90 / p99 / max.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use atosnap::ops::create::{self, CreateOptions};
use atosnap::progress::NoProgress;
use atosnap::store::{key::Secrets, location::StoreAddress, Store};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn get(addr: SocketAddr, path: &str, body: &[u8], method: &str) -> (u16, usize) {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let status = std::str::from_utf8(&raw[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, raw.len())
}

fn percentiles(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{name}: n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
        samples.len(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.90).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
    );
}

fn tiny_runtime(dir: &Path) {
    std::fs::create_dir_all(dir.join("chroma")).unwrap();
    let db = rusqlite::Connection::open(dir.join("atocore.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE docs(id INTEGER PRIMARY KEY, body TEXT);
         INSERT INTO docs(body) VALUES ('one'), ('two');",
    )
    .unwrap();
    std::fs::write(dir.join("registry.json"), b"{\"projects\": []}").unwrap();
}

fn start_server(dir: &Path, store: &Path) -> (std::process::Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_atosnap"))
        .arg("--store")
        .arg(store)
        .arg("--db")
        .arg(dir.join("atocore.db"))
        .arg("--registry")
        .arg(dir.join("registry.json"))
        .arg("--chroma-dir")
        .arg(dir.join("chroma"))
        .args(["--quiet", "serve", "--listen", "127.0.0.1:0"])
        .env_remove("ATOSNAP_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("server output").unwrap();
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn main() {
    // `cargo bench` passes --bench; ignore arguments.
    let snapshots = env_usize("SNAPSHOTS", 1000);
    let requests = env_usize("REQUESTS", 500);
    let chroma_mib = env_usize("CHROMA_MIB", 256);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    tiny_runtime(dir);
    let store_dir = dir.join("store");
    let store = Store::open_or_init(&StoreAddress::local(&store_dir), &Secrets::none()).unwrap();

    let made = Instant::now();
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    for i in 0..snapshots {
        let opts = CreateOptions {
            db: dir.join("atocore.db"),
            registry: dir.join("registry.json"),
            chroma: None,
            tags: vec![format!("bench-{i}")],
            at: Some(base + chrono::Duration::minutes(i as i64)),
            lock_wait: Duration::from_secs(30),
            ingestion_lock: None,
        };
        create::create(&store, &opts, &NoProgress).unwrap();
    }
    println!(
        "made {snapshots} snapshots in {:.1} s",
        made.elapsed().as_secs_f64()
    );
    let mut in_process = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let l = atosnap::ops::list::list(&store).unwrap();
        assert_eq!(l.snapshots.len(), snapshots);
        in_process.push(t.elapsed());
    }
    percentiles("list::list (in process)", in_process);

    let (mut child, addr) = start_server(dir, &store_dir);
    for _ in 0..20 {
        get(addr, "/admin/backup", b"", "GET");
    }
    let mut list_lat = Vec::new();
    let mut size = 0;
    for _ in 0..requests {
        let t = Instant::now();
        let (status, n) = get(addr, "/admin/backup", b"", "GET");
        list_lat.push(t.elapsed());
        assert_eq!(status, 200);
        size = n;
    }
    percentiles(
        &format!(
            "GET /admin/backup, {snapshots} snapshots ({} KiB)",
            size / 1024
        ),
        list_lat,
    );
    let mut health_idle = Vec::new();
    for _ in 0..requests {
        let t = Instant::now();
        assert_eq!(get(addr, "/healthz", b"", "GET").0, 200);
        health_idle.push(t.elapsed());
    }
    percentiles("GET /healthz, idle", health_idle);

    // healthz while creates of a large Chroma file run.
    let big = dir.join("chroma/seg/data_level0.bin");
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    let mut during = Vec::new();
    let mut create_ms = Vec::new();
    for round in 0..3u64 {
        let mut data = vec![0u8; chroma_mib << 20];
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ round;
        for w in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
        std::fs::write(&big, &data).unwrap();
        drop(data);
        let t = Instant::now();
        let creating = std::thread::spawn(move || {
            get(
                addr,
                "/admin/backup",
                br#"{"include_chroma": true}"#,
                "POST",
            )
            .0
        });
        // Probe only while the create is running (the first probe may
        // precede its start by a few ms; it still counts as "during").
        while !creating.is_finished() {
            let p = Instant::now();
            assert_eq!(get(addr, "/healthz", b"", "GET").0, 200);
            during.push(p.elapsed());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(creating.join().unwrap(), 200);
        create_ms.push(t.elapsed());
    }
    percentiles(
        &format!("POST /admin/backup, {chroma_mib} MiB of new Chroma data"),
        create_ms,
    );
    percentiles("GET /healthz while a create runs", during);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
