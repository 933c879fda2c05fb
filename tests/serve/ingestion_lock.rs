//! The cooperative ingestion lock (SPEC §1): a writer process keeps
//! rewriting a Chroma file in place, taking the shared lock around each
//! write (python3 with fcntl.flock, as the service's writers do). With
//! `--ingestion-lock` every snapshot validates and holds one whole version
//! of the file; without it, a snapshot may flag the file as changed during
//! the read, but a torn copy is never reported good.

use crate::support::http::*;
use crate::support::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use atosnap::stamp::Stamp;
use atosnap::store::manifest::Entry;
use atosnap::store::{key::Secrets, location::StoreAddress, Store};

const FILE: &str = "seg-1/data_level0.bin";
const FILE_SIZE: usize = 4 << 20;

/// Rewrites FILE with one byte value per version (64 KiB writes), under
/// LOCK_SH, until STOP exists; counts versions in COUNT.
const WRITER: &str = r#"
import fcntl, os, sys, time
lock, path, stop, count = sys.argv[1:5]
size = os.path.getsize(path)
v = 0
while not os.path.exists(stop):
    v = v % 255 + 1
    with open(lock, "a") as lf:
        fcntl.flock(lf, fcntl.LOCK_SH)
        fd = os.open(path, os.O_WRONLY)
        block = bytes([v]) * 65536
        for off in range(0, size, 65536):
            os.pwrite(fd, block[: min(65536, size - off)], off)
        os.close(fd)
        fcntl.flock(lf, fcntl.LOCK_UN)
    with open(count, "w") as c:
        c.write(str(v))
    time.sleep(0.002)
"#;

struct Writer {
    child: Child,
    stop: std::path::PathBuf,
    count: std::path::PathBuf,
}

impl Writer {
    fn start(rt: &Runtime, lock: &Path) -> Option<Writer> {
        if Command::new("python3").arg("--version").output().is_err() {
            eprintln!("python3 not found: skipping");
            return None;
        }
        let target = rt.chroma().join(FILE);
        std::fs::write(&target, vec![0u8; FILE_SIZE]).unwrap();
        let stop = rt.path("writer.stop");
        let count = rt.path("writer.count");
        let child = Command::new("python3")
            .args(["-c", WRITER])
            .arg(lock)
            .arg(&target)
            .arg(&stop)
            .arg(&count)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("the writer to write", || count.exists());
        Some(Writer { child, stop, count })
    }

    fn versions_written(&self) -> String {
        std::fs::read_to_string(&self.count).unwrap_or_default()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop, b"");
        let _ = self.child.wait();
    }
}

/// The distinct byte values of the captured file (one: a whole version).
fn captured_values(store: &Store, stamp: &str) -> Vec<u8> {
    let manifest = store
        .read_manifest(
            &Stamp::parse(stamp).unwrap(),
            atosnap::store::ReadFrom::Cache,
        )
        .unwrap();
    let index = store.load_index().unwrap();
    let want = format!("chroma/{FILE}");
    let entry: &Entry = manifest
        .entries
        .iter()
        .find(|e| e.path == want.as_bytes())
        .expect("file captured");
    let bytes = atosnap::ops::extract::read_small_file(store, &index, entry.file().unwrap())
        .unwrap_or_else(|e| panic!("{stamp}: {e:?}"));
    assert_eq!(bytes.len(), FILE_SIZE);
    let mut seen = [false; 256];
    for b in bytes {
        seen[b as usize] = true;
    }
    (0..=255u8).filter(|v| seen[*v as usize]).collect()
}

fn snapshots(rt: &Runtime, lock: Option<&Path>, n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|_| {
            let mut args = vec!["create".to_string(), "--chroma".to_string()];
            if let Some(l) = lock {
                args.push("--ingestion-lock".into());
                args.push(l.display().to_string());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let Out {
                code, json: doc, ..
            } = rt.run(&args);
            assert_eq!(code, 0, "{doc}");
            doc
        })
        .collect()
}

#[test]
fn with_the_lock_every_snapshot_is_whole_and_valid() {
    let rt = Runtime::synthetic();
    let lock = rt.path("ingestion.lock");
    let Some(writer) = Writer::start(&rt, &lock) else {
        return;
    };
    let before = writer.versions_written();
    // Six snapshots at least, and more until the writer has written during
    // them (a fast create can take six before the writer's first turn).
    let mut docs = snapshots(&rt, Some(&lock), 6);
    while writer.versions_written() == before && docs.len() < 60 {
        docs.extend(snapshots(&rt, Some(&lock), 1));
    }
    let after = writer.versions_written();
    assert_ne!(before, after, "the writer did not run during the snapshots");
    drop(writer);
    let store = Store::open(&StoreAddress::local(rt.store()), &Secrets::none()).unwrap();
    for doc in &docs {
        let stamp = doc["stamp"].as_str().unwrap();
        assert_eq!(doc["validated"], true, "{doc}");
        let values = captured_values(&store, stamp);
        assert_eq!(
            values.len(),
            1,
            "{stamp}: torn copy with versions {values:?}"
        );
        let Out {
            code, json: report, ..
        } = rt.run(&["validate", stamp]);
        assert_eq!(code, 0, "{report}");
    }
}

#[test]
fn without_the_lock_a_torn_copy_is_never_reported_good() {
    let rt = Runtime::synthetic();
    let lock = rt.path("ingestion.lock");
    let Some(writer) = Writer::start(&rt, &lock) else {
        return;
    };
    let docs = snapshots(&rt, None, 6);
    drop(writer);
    let store = Store::open(&StoreAddress::local(rt.store()), &Secrets::none()).unwrap();
    let mut flagged = 0;
    for doc in &docs {
        let stamp = doc["stamp"].as_str().unwrap();
        let values = captured_values(&store, stamp);
        let named = doc["validation_errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str() == Some(&format!("file_changed_during_read: chroma/{FILE}")));
        if named {
            flagged += 1;
            assert_eq!(doc["validated"], false, "{doc}");
        }
        if values.len() > 1 {
            assert!(named, "{stamp}: torn copy {values:?} reported good: {doc}");
        }
    }
    eprintln!("{flagged} of {} snapshots flagged the file", docs.len());
}
