//! Helpers shared by the black-box tests: a runtime copied from the
//! fixtures into a temp dir, the binary run against it, tree snapshots for
//! comparisons.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[path = "../shared/mod.rs"]
mod shared;
pub use shared::copy_tree;

pub const FIXTURE_MEMORIES: i64 = 1500;

pub struct Rt {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub db: PathBuf,
    pub registry: PathBuf,
    pub chroma: PathBuf,
}

impl Rt {
    /// The fixture runtime in a fresh temp dir.
    pub fn fixture() -> Rt {
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/runtime");
        copy_tree(&src, &dir.path().join("rt"));
        Rt {
            store: dir.path().join("store"),
            db: dir.path().join("rt/data/atocore.db"),
            registry: dir.path().join("rt/config/project-registry.json"),
            chroma: dir.path().join("rt/data/chroma"),
            dir,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn cmd(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::cargo_bin("atosnap").unwrap();
        for v in [
            "ATOCORE_DATA_DIR",
            "ATOCORE_BACKUP_DIR",
            "ATOCORE_DB_PATH",
            "ATOCORE_PROJECT_REGISTRY_PATH",
            "ATOCORE_CHROMA_PATH",
            "ATOCORE_INGESTION_LOCK",
            "ATOSNAP_FAILPOINT",
        ] {
            c.env_remove(v);
        }
        c.current_dir(self.dir.path())
            .arg("--quiet")
            .arg("--store")
            .arg(&self.store)
            .arg("--db")
            .arg(&self.db)
            .arg("--registry")
            .arg(&self.registry)
            .arg("--chroma-dir")
            .arg(&self.chroma);
        c
    }

    /// Runs atosnap with `args`: (stdout JSON, exit code, stderr).
    pub fn run(&self, args: &[&str]) -> (Value, i32, String) {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> (Value, i32, String) {
        let mut c = self.cmd();
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let json: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        (
            json,
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs and expects exit 0.
    pub fn ok(&self, args: &[&str]) -> Value {
        let (json, code, stderr) = self.run(args);
        assert_eq!(code, 0, "atosnap {args:?} failed: {json}\n{stderr}");
        json
    }

    pub fn create(&self, args: &[&str]) -> String {
        let mut a = vec!["create"];
        a.extend_from_slice(args);
        let json = self.ok(&a);
        json["stamp"].as_str().unwrap().to_string()
    }

    pub fn stamps(&self) -> Vec<String> {
        self.ok(&["list"])["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stamp"].as_str().unwrap().to_string())
            .collect()
    }

    /// What a restore puts back, besides the db (whose bytes a rebuild
    /// may legitimately change): the registry and the Chroma tree. The
    /// folders holding the db and the registry are not restored, so their
    /// mtimes are not part of it.
    pub fn restorable(&self) -> BTreeMap<Vec<u8>, Node> {
        restorable_tree(&self.chroma, &self.registry)
    }

    pub fn insert_marker(&self, id: &str) {
        insert_marker(&self.db, id);
    }

    /// The packs of the store.
    pub fn packs(&self) -> Vec<PathBuf> {
        walkdir::WalkDir::new(self.store.join("objects"))
            .into_iter()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
            .map(|e| e.into_path())
            .collect()
    }

    /// Flips a byte in the middle of every pack (inside chunk data).
    pub fn corrupt_packs(&self) {
        for p in self.packs() {
            let mut bytes = std::fs::read(&p).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x5a;
            std::fs::write(&p, bytes).unwrap();
        }
    }
}

pub fn insert_marker(db: &Path, id: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute(
        "INSERT INTO memories(id, memory_type, content, project, created_at) VALUES (?1, 'note', 'MARKER', 'test', datetime('now'))",
        [id],
    )
    .unwrap();
}

pub fn has_marker(db: &Path, id: &str) -> bool {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row("SELECT count(*) FROM memories WHERE id = ?1", [id], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap()
        > 0
}

/// A Chroma tree and a registry file in the shape `Rt::restorable` gives
/// (`chroma/<path>` and `registry`): for comparing a runtime with what a
/// `restore --to DIR` wrote (`DIR/chroma`, `DIR/project-registry.json`).
pub fn restorable_tree(chroma: &Path, registry: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut t: BTreeMap<Vec<u8>, Node> = tree(chroma)
        .into_iter()
        .map(|(k, v)| {
            let mut p = b"chroma/".to_vec();
            p.extend_from_slice(&k);
            (p, v)
        })
        .collect();
    t.extend(
        tree(registry)
            .into_values()
            .map(|v| (b"registry".to_vec(), v)),
    );
    t
}

pub fn count(db: &Path, table: &str) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// One thing in a tree, as compared by the tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    File {
        content: blake3::Hash,
        size: u64,
        mode: u32,
        mtime_ns: i64,
    },
    Dir {
        mode: u32,
        mtime_ns: i64,
    },
    Symlink {
        target: Vec<u8>,
        mtime_ns: i64,
    },
    Other,
}

fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

/// Every entry below `root` (and `root` itself as the empty path), by
/// relative path bytes; symlinks not followed.
pub fn tree(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).follow_links(false) {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let ft = m.file_type();
        let node = if ft.is_symlink() {
            Node::Symlink {
                target: std::fs::read_link(e.path())
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
                mtime_ns: mtime_ns(&m),
            }
        } else if ft.is_dir() {
            Node::Dir {
                mode: m.mode() & 0o7777,
                mtime_ns: mtime_ns(&m),
            }
        } else if ft.is_file() {
            Node::File {
                content: blake3::hash(&std::fs::read(e.path()).unwrap()),
                size: m.len(),
                mode: m.mode() & 0o7777,
                mtime_ns: mtime_ns(&m),
            }
        } else {
            Node::Other
        };
        out.insert(rel, node);
    }
    out
}

/// Readable differences between two trees (empty when equal).
pub fn tree_diff(a: &BTreeMap<Vec<u8>, Node>, b: &BTreeMap<Vec<u8>, Node>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => out.push(format!("only left: {}", String::from_utf8_lossy(k))),
            Some(w) if w != v => out.push(format!(
                "differs: {}: {v:?} vs {w:?}",
                String::from_utf8_lossy(k)
            )),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            out.push(format!("only right: {}", String::from_utf8_lossy(k)));
        }
    }
    out
}

#[macro_export]
macro_rules! assert_same_tree {
    ($a:expr, $b:expr) => {
        assert_same_tree!($a, $b, "")
    };
    ($a:expr, $b:expr, $($msg:tt)+) => {{
        let d = $crate::common::tree_diff(&$a, &$b);
        assert!(d.is_empty(), "trees differ {}:\n{}", format!($($msg)+), d.join("\n"));
    }};
}

/// `tree` without one path (e.g. a SQLite file whose bytes legitimately
/// differ from the live file's after the backup API).
pub fn tree_without(root: &Path, skip: &[&str]) -> BTreeMap<Vec<u8>, Node> {
    let mut t = tree(root);
    for s in skip {
        t.remove(s.as_bytes());
    }
    t
}

pub fn ino(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().ino()
}

/// Names of files anywhere below `root` whose content contains `needle`.
pub fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            std::fs::read(e.path())
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .map(|e| e.into_path())
        .collect()
}

pub fn has_table(db: &Path, table: &str) -> bool {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [table],
        |r| r.get::<_, i64>(0),
    )
    .unwrap()
        > 0
}

/// Paths below `root` whose file name starts with `prefix`.
pub fn files_named(root: &Path, prefix: &str) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter(|e| e.file_name().as_bytes().starts_with(prefix.as_bytes()))
        .map(|e| e.into_path())
        .collect()
}
