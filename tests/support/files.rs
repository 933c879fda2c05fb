//! Files, trees and databases of the tests: the binary and the fixture
//! runtime, tree copies and comparisons, SQLite probes, deliberate damage,
//! and running the binary without the power to ignore file permissions.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const BIN: &str = env!("CARGO_BIN_EXE_atosnap");

/// Rows of `memories` in the fixture db.
pub const FIXTURE_MEMORIES: i64 = 1500;

/// The bundled fixture runtime.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/runtime")
}

/// Copies a tree (files and folders) from `from` into `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.unwrap();
        let dest = to.join(entry.path().strip_prefix(from).unwrap());
        if entry.file_type().is_dir() {
            fs::create_dir_all(&dest).unwrap();
        } else {
            fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// The strings of a JSON array; empty when `v` is no array.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The strings of a JSON array; panics when `v` is no array of strings
/// (for assertions that must not pass on a missing field).
pub fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// Writes a SQLite database of `rows` rows (WAL mode when `wal`).
pub fn make_db(path: &Path, rows: usize, wal: bool) {
    let conn = rusqlite::Connection::open(path).unwrap();
    if wal {
        conn.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
    }
    conn.execute_batch("CREATE TABLE memories(id INTEGER PRIMARY KEY, content TEXT NOT NULL);")
        .unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    for i in 0..rows {
        tx.execute(
            "INSERT INTO memories(id, content) VALUES (?1, ?2)",
            rusqlite::params![
                i as i64,
                format!("memory {i}: {}", "x".repeat(150 + i % 50))
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// Deterministic incompressible bytes.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Flips one bit of the byte at `offset`.
pub fn flip_bit(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x10;
    write_over(path, &bytes);
}

/// Replaces a file's content (store files are read-only for nobody but
/// writable by the owner; this goes through a rewrite either way).
pub fn write_over(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap();
}

pub fn truncate(path: &Path, len: u64) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len).unwrap();
}

pub fn is_root() -> bool {
    // Without libc: root is the one user that can write into a folder
    // whose mode forbids it.
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o555)).unwrap();
    let writable = fs::write(dir.path().join("probe"), b"x").is_ok();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    writable
}

/// A command that runs the binary without the power to ignore file
/// permissions: as is when the tests do not run as root, through
/// `setpriv` as `nobody` when they do. None when neither is possible (the
/// caller skips its test and says so).
pub fn unprivileged() -> Option<Command> {
    if !is_root() {
        return Some(Command::new(BIN));
    }
    let args = [
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ];
    let works = Command::new("setpriv")
        .args(args)
        .arg("true")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !works {
        return None;
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(args).arg(BIN);
    Some(cmd)
}

/// Makes a tree readable and writable by everyone (for `unprivileged`).
pub fn open_up(path: &Path) {
    for entry in walkdir::WalkDir::new(path).into_iter().flatten() {
        let mode = if entry.file_type().is_dir() {
            0o777
        } else {
            0o666
        };
        let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode));
    }
}

/// A pid that is not running.
pub fn dead_pid() -> u32 {
    (4_000_000..4_100_000)
        .find(|p| !Path::new("/proc").join(p.to_string()).exists())
        .unwrap()
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

pub fn count(db: &Path, table: &str) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
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

/// A Chroma tree and a registry file in the shape `Runtime::restorable`
/// gives (`chroma/<path>` and `registry`): for comparing a runtime with
/// what a `restore --to DIR` wrote (`DIR/chroma`, `DIR/project-registry.json`).
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

fn mtime_ns(m: &fs::Metadata) -> i64 {
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
        let m = fs::symlink_metadata(e.path()).unwrap();
        let ft = m.file_type();
        let node = if ft.is_symlink() {
            Node::Symlink {
                target: fs::read_link(e.path())
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
                content: blake3::hash(&fs::read(e.path()).unwrap()),
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
        let d = $crate::support::tree_diff(&$a, &$b);
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
    fs::metadata(p).unwrap().ino()
}

/// Names of files anywhere below `root` whose content contains `needle`.
pub fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            fs::read(e.path())
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .map(|e| e.into_path())
        .collect()
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

/// Makes a FIFO (named pipe) at `path`.
pub fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo").arg(path).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo {}", path.display());
}
