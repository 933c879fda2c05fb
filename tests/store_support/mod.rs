//! Shared helpers of the black-box tests: a private copy of the fixture
//! runtime, a store beside it, and the `atosnap` binary run against them.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../shared/mod.rs"]
mod shared;
pub use shared::{copy_tree, fixtures, BIN};

/// A runtime and a store in a temp dir.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub runtime: PathBuf,
    pub store: PathBuf,
}

/// What a run of the binary gave.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub json: Value,
    pub stderr: String,
}

impl Run {
    pub fn error_code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

pub fn parse(out: &Output) -> Run {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {stdout}"));
    Run {
        code: out.status.code().unwrap_or(-1),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Env {
    /// A fresh copy of the fixture runtime; no store yet.
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("runtime");
        copy_tree(&fixtures(), &runtime);
        let store = dir.path().join("store");
        Env {
            dir,
            runtime,
            store,
        }
    }

    /// A copy of another env's runtime and store (both as they are now).
    pub fn clone_of(other: &Env) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("runtime");
        copy_tree(&other.runtime, &runtime);
        let store = dir.path().join("store");
        if other.store.exists() {
            copy_tree(&other.store, &store);
        }
        Env {
            dir,
            runtime,
            store,
        }
    }

    pub fn db(&self) -> PathBuf {
        self.runtime.join("data/atocore.db")
    }

    pub fn chroma(&self) -> PathBuf {
        self.runtime.join("data/chroma")
    }

    pub fn hnsw_bin(&self) -> PathBuf {
        let seg = fs::read_dir(self.chroma())
            .unwrap()
            .flatten()
            .find(|e| e.path().is_dir())
            .unwrap()
            .path();
        seg.join("data_level0.bin")
    }

    /// The binary with this env's paths (flags, so stray ATOCORE_* variables
    /// of the caller do not matter).
    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_with(args, true)
    }

    /// Like [`Env::cmd`], `--quiet` only when asked.
    pub fn cmd_with(&self, args: &[&str], quiet: bool) -> Command {
        let mut c = Command::new(BIN);
        for var in [
            "ATOCORE_BACKUP_DIR",
            "ATOCORE_DB_PATH",
            "ATOCORE_PROJECT_REGISTRY_PATH",
            "ATOCORE_CHROMA_PATH",
            "ATOCORE_DATA_DIR",
            "ATOCORE_INGESTION_LOCK",
        ] {
            c.env_remove(var);
        }
        c.arg("--store")
            .arg(&self.store)
            .arg("--db")
            .arg(self.db())
            .arg("--registry")
            .arg(self.runtime.join("config/project-registry.json"))
            .arg("--chroma-dir")
            .arg(self.chroma());
        if quiet {
            c.arg("--quiet");
        }
        c.args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        parse(&self.cmd(args).output().unwrap())
    }

    /// Runs and insists on exit 0.
    pub fn ok(&self, args: &[&str]) -> Value {
        let r = self.run(args);
        assert_eq!(r.code, 0, "atosnap {args:?} failed: {r:?}");
        r.json
    }

    /// `create` at noon UTC of `day` (YYYY-MM-DD); returns the stamp.
    pub fn create_on(&self, day: &str, extra: &[&str]) -> String {
        let at = format!("{day}T12:00:00Z");
        let mut args = vec!["create", "--at", &at];
        args.extend_from_slice(extra);
        self.ok(&args)["stamp"].as_str().unwrap().to_string()
    }

    pub fn stamps(&self) -> Vec<String> {
        self.ok(&["list"])["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stamp"].as_str().unwrap().to_string())
            .collect()
    }

    /// Inserts `rows` memories with random content into the live db.
    pub fn mutate_db(&self, rows: usize, seed: u64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let conn = rusqlite::Connection::open(self.db()).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .unwrap();
        for i in 0..rows {
            let text: String = (0..400)
                .map(|_| rng.random_range(b'a'..=b'z') as char)
                .collect();
            conn.execute(
                "INSERT OR REPLACE INTO memories(id, memory_type, content, project, created_at) VALUES (?1, 'note', ?2, 'test', datetime('now'))",
                rusqlite::params![format!("test-{seed}-{i}"), text],
            )
            .unwrap();
        }
    }

    /// Replaces the registry with valid JSON carrying `len` random
    /// characters, so each call gives the snapshot data of its own.
    pub fn set_registry(&self, len: usize, seed: u64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let pad: String = (0..len)
            .map(|_| rng.random_range(b'a'..=b'z') as char)
            .collect();
        let doc = serde_json::json!({"projects": [], "pad": pad});
        fs::write(
            self.runtime.join("config/project-registry.json"),
            serde_json::to_vec(&doc).unwrap(),
        )
        .unwrap();
    }

    /// Overwrites `percent` % of the 4 KiB blocks of the HNSW data file
    /// with random bytes (an in-place rewrite, like an HNSW insert).
    pub fn scramble_hnsw(&self, percent: u32, seed: u64) {
        let path = self.hnsw_bin();
        let mut data = fs::read(&path).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for block in data.chunks_mut(4096) {
            if rng.random_range(0..100) < percent {
                rng.fill(block);
            }
        }
        fs::write(&path, data).unwrap();
    }

    /// Writes a file of random bytes into the Chroma dir.
    pub fn add_junk(&self, name: &str, len: usize, seed: u64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut data = vec![0u8; len];
        rng.fill(&mut data[..]);
        fs::write(self.chroma().join(name), data).unwrap();
    }

    /// `init`, then a smaller pack target size so that a snapshot of the
    /// fixtures spans many packs.
    pub fn init_with_pack_size(&self, target: u64) {
        self.ok(&["init"]);
        let path = self.store.join("config.json");
        let mut config: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        config["pack"]["target_size"] = Value::from(target);
        fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    }

    /// Pack files under objects/, by relative name, with sizes.
    pub fn packs(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = walkdir::WalkDir::new(self.store.join("objects"))
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                (
                    e.path()
                        .strip_prefix(&self.store)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        out.sort();
        out
    }

    pub fn tmp_entries(&self) -> Vec<String> {
        match fs::read_dir(self.store.join("tmp")) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => vec![],
        }
    }

    /// Every listed snapshot validates, verify finds nothing corrupt,
    /// missing or damaged, and nothing under snapshots/ is unparseable.
    /// Returns the verify report.
    pub fn assert_healthy(&self) -> Value {
        let list = self.ok(&["list"]);
        assert_eq!(list["unparseable"], serde_json::json!([]), "{list}");
        for s in list["snapshots"].as_array().unwrap() {
            let stamp = s["stamp"].as_str().unwrap();
            let r = self.run(&["validate", stamp]);
            assert_eq!(r.code, 0, "snapshot {stamp} does not validate: {}", r.json);
            assert_eq!(r.json["valid"], true);
        }
        let v = self.run(&["verify"]);
        assert_eq!(v.code, 0, "verify: {}", v.json);
        for k in ["corrupt", "missing", "damaged_objects"] {
            assert_eq!(v.json[k], serde_json::json!([]), "verify {k}: {}", v.json);
        }
        v.json
    }
}

/// Strings of a JSON array.
pub fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// A pid that is not running.
pub fn dead_pid() -> u32 {
    (4_000_000..4_100_000)
        .find(|p| !Path::new("/proc").join(p.to_string()).exists())
        .unwrap()
}
