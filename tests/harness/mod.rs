//! Shared helpers of the black-box tests: a runtime in a temp dir (a copy
//! of `fixtures/runtime`, or a tiny one built on the spot), the `atosnap`
//! binary run against it with explicit flags, its one JSON document parsed,
//! and small tools to damage a store on purpose.
#![allow(dead_code)]

use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use atosnap::id::Id;
use atosnap::manifest::Manifest;
use atosnap::stamp::Stamp;
use atosnap::store::Store;

#[path = "../shared/mod.rs"]
mod shared;
pub use shared::{copy_tree, BIN};

/// Environment variables atosnap reads: cleared so the caller's shell
/// cannot leak into a test.
pub const ENV_VARS: &[&str] = &[
    "ATOCORE_BACKUP_DIR",
    "ATOCORE_DB_PATH",
    "ATOCORE_PROJECT_REGISTRY_PATH",
    "ATOCORE_CHROMA_PATH",
    "ATOCORE_DATA_DIR",
    "ATOCORE_INGESTION_LOCK",
];

/// One run of the binary.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub json: Value,
    pub stderr: String,
}

impl Out {
    /// The stable error code of an error document.
    pub fn error_code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }

    /// The strings of a JSON array field.
    pub fn strings(&self, field: &str) -> Vec<String> {
        strings(&self.json[field])
    }
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs a prepared command and parses stdout as exactly one JSON document.
pub fn run_cmd(cmd: &mut Command) -> Out {
    let output = cmd.output().expect("the atosnap binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("stdout is not exactly one JSON document ({e}):\n{stdout}\nstderr:\n{stderr}")
    });
    Out {
        code: output.status.code().unwrap_or(-1),
        json,
        stderr,
    }
}

/// A runtime and a store in a temp dir.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub runtime: PathBuf,
    pub store: PathBuf,
}

impl Env {
    /// A copy of `fixtures/runtime` (the real 2,000-vector Chroma store).
    pub fn fixture() -> Env {
        let env = Env::empty();
        let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/runtime");
        copy_tree(&from, &env.runtime);
        env
    }

    /// A tiny runtime: a small SQLite db (rollback journal), a registry and
    /// a Chroma dir with a SQLite file, an HNSW-like `.bin` and a pickle.
    pub fn tiny() -> Env {
        let env = Env::empty();
        fs::create_dir_all(env.runtime.join("data/chroma/seg")).unwrap();
        fs::create_dir_all(env.runtime.join("config")).unwrap();
        make_db(&env.db(), 300, false);
        fs::write(
            env.registry(),
            br#"{"projects": [{"id": "p1", "name": "alpha"}, {"id": "p2", "name": "beta"}]}"#,
        )
        .unwrap();
        make_db(&env.chroma().join("chroma.sqlite3"), 100, false);
        fs::write(
            env.chroma().join("seg/data_level0.bin"),
            pseudo_random(1, 64 * 1024),
        )
        .unwrap();
        fs::write(
            env.chroma().join("seg/index_metadata.pickle"),
            pseudo_random(2, 10_000),
        )
        .unwrap();
        env
    }

    fn empty() -> Env {
        let dir = tempfile::tempdir().unwrap();
        // Traversable by an unprivileged user (see `unprivileged`).
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let runtime = dir.path().join("runtime");
        let store = dir.path().join("store");
        fs::create_dir_all(&runtime).unwrap();
        Env {
            dir,
            runtime,
            store,
        }
    }

    pub fn db(&self) -> PathBuf {
        self.runtime.join("data/atocore.db")
    }
    pub fn registry(&self) -> PathBuf {
        self.runtime.join("config/project-registry.json")
    }
    pub fn chroma(&self) -> PathBuf {
        self.runtime.join("data/chroma")
    }

    /// The binary with no path flags and a clean environment.
    pub fn bare_command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        for v in ENV_VARS {
            cmd.env_remove(v);
        }
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// The binary with every path given as a flag.
    pub fn command(&self) -> Command {
        let mut cmd = self.bare_command();
        cmd.arg("--quiet")
            .arg("--store")
            .arg(&self.store)
            .arg("--db")
            .arg(self.db())
            .arg("--registry")
            .arg(self.registry())
            .arg("--chroma-dir")
            .arg(self.chroma());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Out {
        run_cmd(self.command().args(args))
    }

    /// `create` with `args`, which must succeed.
    pub fn create(&self, args: &[&str]) -> Value {
        let mut all = vec!["create"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert_eq!(out.code, 0, "create failed: {out:?}");
        out.json
    }

    pub fn open_store(&self) -> Store {
        Store::open(&self.store).unwrap()
    }

    pub fn manifest(&self, stamp: &str) -> Manifest {
        self.open_store()
            .read_manifest(&Stamp::parse(stamp).unwrap())
            .unwrap()
    }

    pub fn snapshot_dir(&self, stamp: &str) -> PathBuf {
        self.store.join("snapshots").join(stamp)
    }

    /// Every pack file of the store.
    pub fn packs(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = walkdir::WalkDir::new(self.store.join("objects"))
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| e.path().to_path_buf())
            .collect();
        out.sort();
        out
    }

    /// Where a chunk is stored: (pack file, offset, stored length).
    pub fn chunk_location(&self, id: &Id) -> (PathBuf, u64, u64) {
        let store = self.open_store();
        let index = store.load_index().unwrap();
        let loc = index.get(id).expect("chunk is in the index");
        let name = atosnap::store::pack::pack_name(&index.pack(loc.pack).id);
        (
            store.object_path(&name),
            loc.offset as u64,
            loc.stored_len() as u64,
        )
    }

    /// The chunk ids of a file in a snapshot.
    pub fn file_chunks(&self, stamp: &str, path: &str) -> Vec<Id> {
        let m = self.manifest(stamp);
        let entry = m.find(path).unwrap_or_else(|| panic!("{path} in {stamp}"));
        entry.file().expect("a file").chunks.clone()
    }
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
