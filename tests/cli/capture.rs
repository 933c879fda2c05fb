//! What create does with a source file that changes, vanishes or is read
//! again while it reads it: never a torn copy reported good, the snapshot
//! not validated and the file named.

use crate::support::{self, open_up, run_cmd, strings, unprivileged, Runtime as Env};
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;

use atosnap::ops::extract::{write_file, ChunkSource};

fn validate(env: &Env, stamp: &str) -> support::Out {
    env.run(&["validate", stamp])
}

/// A writer rewrites a large file in place, version after version, while
/// create reads it. Whatever the timing, a copy reported good must be a
/// state the file held at one instant, never a mix of reads taken while it
/// changed. (A writer descheduled half-way through a pass leaves such a
/// state on disk, unchanging while create reads it: no backup tool can
/// tell it from a whole version, which is what the ingestion lock is for.)
#[test]
fn a_file_changing_during_read_is_never_a_good_torn_copy() {
    const SIZE: usize = 8 << 20;
    let env = Env::tiny();
    let path = env.chroma().join("seg/big.pickle");
    fs::write(&path, vec![0u8; SIZE]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), path.clone());
        std::thread::spawn(move || {
            use std::io::{Seek, Write};
            let mut version = 1u8;
            let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
            let block = vec![0u8; 64 * 1024];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let block: Vec<u8> = block.iter().map(|_| version).collect();
                f.seek(std::io::SeekFrom::Start(0)).unwrap();
                for _ in 0..SIZE / block.len() {
                    f.write_all(&block).unwrap();
                }
                version = version.wrapping_add(1).max(1);
            }
        })
    };
    let results: Vec<Value> = (0..3).map(|_| env.create(&["--chroma"])).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();

    let store = env.open_store();
    let index = store.load_index().unwrap();
    let mut saw_torn_flagged = false;
    for r in &results {
        let stamp = r["stamp"].as_str().unwrap();
        let m = env.manifest(stamp);
        let entry = m.find("chroma/seg/big.pickle").unwrap().file().unwrap();
        let bytes = stored_bytes(&store, &index, entry);
        let whole = bytes.len() == SIZE && bytes.iter().all(|b| *b == bytes[0]);
        let instant = bytes.len() == SIZE && one_instant(&bytes);
        // A file read again after it changed counts its chunks once.
        let listed: u64 = m
            .entries
            .iter()
            .filter_map(|e| e.file())
            .map(|f| f.list.len())
            .sum();
        assert_eq!(r["chunks_total"], listed, "{stamp}");
        let errors = strings(&r["validation_errors"]);
        if r["validated"] == true {
            assert!(
                instant,
                "{stamp}: a torn copy was reported valid: {}",
                layout(&bytes)
            );
            if !whole {
                eprintln!(
                    "{stamp}: read while the writer paused mid-pass: {}",
                    layout(&bytes)
                );
            }
            assert_eq!(validate(&env, stamp).code, 0);
        } else {
            assert!(
                errors
                    .iter()
                    .any(|e| e == "file_changed_during_read: chroma/seg/big.pickle"),
                "{errors:?}"
            );
            assert_eq!(validate(&env, stamp).code, 3);
            saw_torn_flagged |= !whole;
        }
    }
    eprintln!("torn copies seen and flagged: {saw_torn_flagged}");
}

/// Whether `bytes` is a state the test's writer left on disk at one
/// instant: each pass writes the next version front to back, so the bytes
/// are the newer version up to some offset and the older one after it
/// (or one version throughout).
fn one_instant(bytes: &[u8]) -> bool {
    let (Some(&newer), Some(&older)) = (bytes.first(), bytes.last()) else {
        return true;
    };
    let split = bytes
        .iter()
        .position(|b| *b != newer)
        .unwrap_or(bytes.len());
    bytes[split..].iter().all(|b| *b == older)
        && (split == bytes.len() || newer == older.wrapping_add(1).max(1))
}

/// The runs of one value in `bytes`, as `value x length` (what a failure
/// shows).
fn layout(bytes: &[u8]) -> String {
    let mut runs: Vec<(u8, usize)> = Vec::new();
    for &b in bytes {
        match runs.last_mut() {
            Some((v, n)) if *v == b => *n += 1,
            _ => runs.push((b, 1)),
        }
    }
    let shown: Vec<String> = runs
        .iter()
        .take(12)
        .map(|(v, n)| format!("{v}x{n}"))
        .collect();
    format!("{} ({} runs)", shown.join(" "), runs.len())
}

/// A file's bytes as the store holds them (every chunk verified).
fn stored_bytes(
    store: &atosnap::store::Store,
    index: &atosnap::store::index::ChunkIndex,
    entry: &atosnap::store::manifest::FileEntry,
) -> Vec<u8> {
    let mut bytes = Vec::new();
    write_file(store, index, entry, &mut bytes, |_| {}, ChunkSource::Store).unwrap();
    bytes
}

/// A Chroma file rewritten between two creates is captured afresh in the
/// second: the new bytes, not the previous snapshot's.
#[test]
fn changed_file_is_captured_fresh_on_the_next_create() {
    let env = Env::tiny();
    let first = env.create(&["--chroma"]);
    let path = env.chroma().join("seg/index_metadata.pickle");
    fs::write(&path, support::pseudo_random(99, 12_345)).unwrap();
    let second = env.create(&["--chroma"]);
    assert_eq!(second["validated"], true);
    let m = env.manifest(second["stamp"].as_str().unwrap());
    let entry = m
        .find("chroma/seg/index_metadata.pickle")
        .unwrap()
        .file()
        .unwrap();
    assert_eq!(entry.size, 12_345);
    let store = env.open_store();
    let index = store.load_index().unwrap();
    let bytes = stored_bytes(&store, &index, entry);
    assert_eq!(bytes, support::pseudo_random(99, 12_345));
    assert_ne!(first["stamp"], second["stamp"]);
}

// ---- permissions ---------------------------------------------------------------

/// Chroma files removed after the folder was listed, before they were
/// read: the snapshot is kept but not validated and names each, the
/// Chroma SQLite file as any other (it once failed the whole create).
#[test]
fn chroma_files_gone_before_they_are_read_are_named_not_fatal() {
    let env = Env::tiny();
    let gone = ["chroma/chroma.sqlite3", "chroma/seg/index_metadata.pickle"];
    let out = env.paused_at("create:chroma-scanned", &["create", "--chroma"], |_| {
        for rel in gone {
            fs::remove_file(env.runtime.join("data").join(rel)).unwrap();
        }
    });
    assert_eq!(out.code, 0, "{out:?}");
    for rel in gone {
        names_unreadable(&out, rel);
    }
    let m = env.manifest(out.json["stamp"].as_str().unwrap());
    assert!(gone.iter().all(|rel| m.find(rel).is_none()));
}

fn rows(db: &std::path::Path) -> i64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row("SELECT count(*) FROM memories", [], |r| r.get(0))
        .unwrap()
}

/// `--db` a link to the live db (a volume, a bind mount): SQLite follows
/// it, and the service's `-wal` lies beside the real file. The files cache
/// once looked for `<link>-wal`, found none, took the db as unchanged and
/// kept the previous snapshot's: a row committed to the WAL was lost.
#[test]
fn commits_in_the_wal_of_a_linked_db_are_captured() {
    let env = Env::tiny();
    let real = env.runtime.join("real/atocore.db");
    fs::create_dir_all(real.parent().unwrap()).unwrap();
    support::make_db(&real, 300, true);
    fs::remove_file(env.db()).unwrap();
    std::os::unix::fs::symlink(&real, env.db()).unwrap();
    let service = rusqlite::Connection::open(&real).unwrap();
    service
        .execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;")
        .unwrap();
    // Past the files cache's racy window, so the first is cacheable.
    std::thread::sleep(std::time::Duration::from_millis(2200));
    assert_eq!(env.create(&[])["validated"], true);
    service
        .execute("INSERT INTO memories(id, content) VALUES (100000, 'x')", [])
        .unwrap();
    let second = env.create(&[]);
    assert_eq!(second["validated"], true, "{second}");
    assert_eq!(second["files_from_cache"], 0, "{second}");
    let out = env.path("out");
    env.ok(&[
        "restore",
        second["stamp"].as_str().unwrap(),
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(rows(&out.join("atocore.db")), 301);
}

/// The two copies of SQLite's wal-index header at the start of a `-shm`.
/// Read and written through one descriptor kept open: closing any
/// descriptor of the file drops every POSIX lock this process holds on
/// it, the service connection's among them (SQLite would then take the
/// `-shm` for abandoned and rebuild it).
fn wal_index_header(shm: &fs::File) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut header = vec![0u8; 96];
    shm.read_exact_at(&mut header, 0).unwrap();
    header
}

fn put_wal_index_header(shm: &fs::File, header: &[u8]) {
    use std::os::unix::fs::FileExt;
    shm.write_all_at(header, 0).unwrap();
}

/// A commit whose frames are in the WAL but which readers cannot see yet
/// (the writer's fsync stalled past the files cache's 2 s window) when a
/// create reads the db. When it lands, only the wal-index in `-shm`
/// changes, not the WAL's size or mtime: the files cache once took the
/// db as unchanged and kept the copy without the row until the next write.
#[test]
fn a_commit_landing_after_a_create_read_the_db_is_captured_by_the_next() {
    let env = Env::tiny();
    let db = env.db();
    let service = rusqlite::Connection::open(&db).unwrap();
    service
        .execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;")
        .unwrap();
    let before: i64 = rows(&db);
    let shm = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("{}-shm", db.display()))
        .unwrap();
    service
        .execute("INSERT INTO memories(id, content) VALUES (100000, 'a')", [])
        .unwrap();
    let visible = wal_index_header(&shm);
    service
        .execute("INSERT INTO memories(id, content) VALUES (100001, 'b')", [])
        .unwrap();
    let landed = wal_index_header(&shm);
    assert_ne!(visible, landed);
    // The second commit in flight: its frames written, readers held at
    // the first by the header.
    put_wal_index_header(&shm, &visible);
    assert_eq!(rows(&db), before + 1);
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let restored_rows = |out: &Value, to: &str| {
        let to = env.path(to);
        env.ok(&[
            "restore",
            out["stamp"].as_str().unwrap(),
            "--to",
            to.to_str().unwrap(),
        ]);
        rows(&to.join("atocore.db"))
    };
    let first = env.create(&[]);
    assert_eq!(first["validated"], true, "{first}");
    assert_eq!(restored_rows(&first, "first"), before + 1);

    // The commit lands: the WAL itself is not touched.
    put_wal_index_header(&shm, &landed);
    assert_eq!(rows(&db), before + 2);
    let second = env.create(&[]);
    assert_eq!(second["validated"], true, "{second}");
    assert_eq!(restored_rows(&second, "second"), before + 2);

    // Nothing more lands: the db comes from the files cache again.
    let third = env.create(&[]);
    let from_cache = |out: &Value| out["files_from_cache"].as_u64().unwrap();
    assert_eq!(from_cache(&third), from_cache(&second) + 1, "{third}");
    drop(shm);
}

/// A registry that is a link to a regular file (how a Kubernetes
/// ConfigMap mounts one) is captured: it was left out with a warning.
#[test]
fn a_linked_registry_is_captured() {
    let env = Env::tiny();
    let data = env.runtime.join("config/..data");
    fs::create_dir_all(&data).unwrap();
    fs::rename(env.registry(), data.join("project-registry.json")).unwrap();
    std::os::unix::fs::symlink("..data/project-registry.json", env.registry()).unwrap();
    let out = env.create(&[]);
    assert_eq!(out["registry_snapshot_included"], true, "{out}");
    assert_eq!(out["validated"], true, "{out}");
}

/// A Chroma file replaced by a FIFO after the scan: create never blocks
/// opening it (it once hung for ever, holding the store lock); the file
/// is named as unreadable.
#[test]
fn a_fifo_put_in_after_the_scan_never_hangs_create() {
    let env = Env::tiny();
    let release = env.path("release");
    let mut child = env
        .command()
        .args(["create", "--chroma"])
        .env("ATOSNAP_FAILPOINT_PAUSE", "create:chroma-scanned")
        .env("ATOSNAP_FAILPOINT_RELEASE", &release)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !env.path("release.reached").exists() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let p = env.chroma().join("seg/index_metadata.pickle");
    fs::remove_file(&p).unwrap();
    support::mkfifo(&p);
    fs::write(&release, b"").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("create blocked on the FIFO");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = support::parse(&child.wait_with_output().unwrap());
    names_unreadable(&out, "chroma/seg/index_metadata.pickle");
}

/// The snapshot is not reported good, and names `rel` as unreadable.
fn names_unreadable(out: &support::Out, rel: &str) {
    assert_eq!(out.json["validated"], false, "{out:?}");
    let errors = out.strings("validation_errors");
    let named = format!("file_unreadable: {rel}: ");
    assert!(errors.iter().any(|e| e.starts_with(&named)), "{errors:?}");
}

#[test]
fn unreadable_chroma_file_is_named() {
    let Some(mut cmd) = unprivileged() else {
        eprintln!("skipped: running as root without setpriv");
        return;
    };
    let env = Env::tiny();
    open_up(env.dir.path());
    let secret = env.chroma().join("seg/index_metadata.pickle");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    let out = run_cmd(
        env.path_flags(cmd.arg("--quiet"), &env.db())
            .args(["create", "--chroma"]),
    );
    assert_eq!(out.code, 0, "{out:?}");
    names_unreadable(&out, "chroma/seg/index_metadata.pickle");
}
