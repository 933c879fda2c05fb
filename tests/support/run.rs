//! The one way the tests run the binary: a command with a clean
//! environment and every path given as a flag, and its output read as at
//! most one JSON document ([`Out`]).

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

use super::files::{strings, BIN};
use super::runtime::Runtime;

/// Environment variables atosnap reads: cleared so the caller's shell
/// cannot leak into a test.
pub const ENV_VARS: &[&str] = &[
    "ATOCORE_DATA_DIR",
    "ATOCORE_BACKUP_DIR",
    "ATOCORE_DB_PATH",
    "ATOCORE_PROJECT_REGISTRY_PATH",
    "ATOCORE_CHROMA_PATH",
    "ATOCORE_INGESTION_LOCK",
    "ATOSNAP_FAILPOINT",
    "ATOSNAP_TOKEN_FILE",
    "ATOSNAP_LOG",
    "ATOSNAP_LIMIT_UPLOAD",
    "ATOSNAP_LIMIT_DOWNLOAD",
];

/// One run of the binary.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    /// The one JSON document of stdout; `Null` when stdout is empty (a
    /// usage error prints nothing there).
    pub json: Value,
    pub stdout: String,
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

/// Reads a finished run; panics when stdout is neither empty nor exactly
/// one JSON document.
pub fn parse(output: &Output) -> Out {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("stdout is not exactly one JSON document ({e}):\n{stdout}\nstderr:\n{stderr}")
        })
    };
    Out {
        code: output.status.code().unwrap_or(-1),
        json,
        stdout,
        stderr,
    }
}

/// Runs a prepared command and reads its output (see [`parse`]).
pub fn run_cmd(cmd: &mut Command) -> Out {
    parse(&cmd.output().expect("the atosnap binary runs"))
}

/// Runs `cmd` in namespaces of its own (`unshare` with `flags`), after the
/// shell `prelude` (given `prelude_args` as `$1`...; empty, or ending in
/// `&&`); None where such namespaces cannot be made.
pub fn run_unshared(
    flags: &[&str],
    prelude: &str,
    prelude_args: &[&std::path::Path],
    cmd: &Command,
) -> Option<Out> {
    let can = Command::new("unshare")
        .args(flags)
        .arg("true")
        .status()
        .is_ok_and(|s| s.success());
    if !can {
        return None;
    }
    let script = format!("{prelude} shift {} && exec \"$@\"", prelude_args.len());
    let mut wrapped = Command::new("unshare");
    wrapped
        .args(flags)
        .args(["sh", "-c", &script, "sh"])
        .args(prelude_args)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    Some(run_cmd(&mut wrapped))
}

impl Runtime {
    /// Runs `args`, held at the failpoint `point` (`ATOSNAP_FAILPOINT_PAUSE`),
    /// where it gets SIGINT; then released. Its output.
    pub fn interrupted_at(&self, point: &str, args: &[&str]) -> Out {
        self.paused_at(point, args, |child| {
            // SAFETY: kill(2) on our own child.
            assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
        })
    }

    /// Runs `args`, held at the failpoint `point` while `act` runs, then
    /// released.
    pub fn paused_at(
        &self,
        point: &str,
        args: &[&str],
        act: impl FnOnce(&std::process::Child),
    ) -> Out {
        let release = self.path("release");
        let reached = self.path("release.reached");
        let mut cmd = self.command();
        cmd.args(args)
            .env("ATOSNAP_FAILPOINT_PAUSE", point)
            .env("ATOSNAP_FAILPOINT_RELEASE", &release)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = cmd.spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while !reached.exists() {
            assert!(std::time::Instant::now() < deadline, "{point} not reached");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        act(&child);
        std::fs::write(&release, b"").unwrap();
        parse(&child.wait_with_output().unwrap())
    }

    /// The binary with no path flags and a clean environment, in the temp
    /// dir.
    pub fn bare_command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        for v in ENV_VARS {
            cmd.env_remove(v);
        }
        // The chunk index cache of every store, kept with the test's
        // files rather than in the user's cache (a flag or a later
        // `env` of the caller overrides it).
        cmd.env("ATOSNAP_CACHE_DIR", self.path("cache"));
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// The binary with every path given as a flag, `--quiet`.
    pub fn command(&self) -> Command {
        let mut cmd = self.loud_command();
        cmd.arg("--quiet");
        cmd
    }

    /// As [`Runtime::command`] without `--quiet` (progress and log lines
    /// on stderr).
    pub fn loud_command(&self) -> Command {
        self.command_with_db(&self.db())
    }

    /// As [`Runtime::loud_command`] with another `--db`.
    pub fn command_with_db(&self, db: &Path) -> Command {
        let mut cmd = self.bare_command();
        self.path_flags(&mut cmd, db);
        cmd
    }

    /// Adds `--store`, `--db db`, `--registry` and `--chroma-dir` to `cmd`
    /// (one made otherwise, e.g. [`super::unprivileged`]).
    pub fn path_flags<'c>(&self, cmd: &'c mut Command, db: &Path) -> &'c mut Command {
        cmd.arg("--store")
            .arg(&self.store)
            .arg("--db")
            .arg(db)
            .arg("--registry")
            .arg(self.registry())
            .arg("--chroma-dir")
            .arg(self.chroma())
    }

    pub fn run(&self, args: &[&str]) -> Out {
        self.run_env(args, &[])
    }

    /// Runs with extra environment variables.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut cmd = self.command();
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_cmd(&mut cmd)
    }

    /// Runs `args`, killed after `secs` seconds: None when it hung.
    pub fn run_within(&self, args: &[&str], secs: u64) -> Option<Out> {
        let mut cmd = self.command();
        cmd.args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Some(parse(&child.wait_with_output().unwrap()))
    }

    /// Runs and insists on exit 0.
    pub fn ok(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert_eq!(out.code, 0, "atosnap {args:?} failed: {out:?}");
        out.json
    }

    /// `restore STAMP` over the live runtime, without a pre-restore
    /// snapshot; its result (the command must succeed).
    pub fn restore_live(&self, stamp: &str) -> Value {
        self.ok(&[
            "restore",
            stamp,
            "--confirm-service-stopped",
            "--no-pre-snapshot",
        ])
    }

    /// `create` with `args`, which must succeed.
    pub fn create(&self, args: &[&str]) -> Value {
        let mut all = vec!["create"];
        all.extend_from_slice(args);
        self.ok(&all)
    }

    /// `create` with `args`, which must succeed; its stamp.
    pub fn create_stamp(&self, args: &[&str]) -> String {
        self.create(args)["stamp"].as_str().unwrap().to_string()
    }

    /// `create` at noon UTC of `day` (YYYY-MM-DD); returns the stamp.
    pub fn create_on(&self, day: &str, extra: &[&str]) -> String {
        let at = format!("{day}T12:00:00Z");
        let mut args = vec!["--at", &at];
        args.extend_from_slice(extra);
        self.create_stamp(&args)
    }

    /// The stamps `list` gives.
    pub fn stamps(&self) -> Vec<String> {
        stamps_of(&self.ok(&["list"]))
    }
}

/// The stamps of a `list` document.
pub fn stamps_of(list: &Value) -> Vec<String> {
    list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stamp"].as_str().unwrap().to_string())
        .collect()
}
