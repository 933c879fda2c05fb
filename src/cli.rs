//! Argument parsing, output and exit codes. Every command prints exactly one
//! JSON document on stdout, on failure too; messages and progress go to
//! stderr.

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

use atosnap::cleanup::{self, CleanupOptions};
use atosnap::config::Paths;
use atosnap::create::{self, CreateOptions};
use atosnap::error::Error;
use atosnap::retention::Policy;
use atosnap::store::Store;
use atosnap::{gc, list, verify};

use crate::progress_bar;

#[derive(Parser, Debug)]
#[command(
    name = "atosnap",
    version,
    about = "Content-addressed, incremental snapshots of an AtoCore runtime"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The snapshot store (a local folder).
    #[arg(long, global = true, env = "ATOCORE_BACKUP_DIR", value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// The live SQLite database [default: $ATOCORE_DATA_DIR/atocore.db].
    #[arg(long, global = true, env = "ATOCORE_DB_PATH", value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// The project registry [default: ./config/project-registry.json].
    #[arg(
        long,
        global = true,
        env = "ATOCORE_PROJECT_REGISTRY_PATH",
        value_name = "PATH"
    )]
    pub registry: Option<PathBuf>,
    /// The Chroma directory [default: $ATOCORE_DATA_DIR/chroma].
    #[arg(long, global = true, env = "ATOCORE_CHROMA_PATH", value_name = "DIR")]
    pub chroma_dir: Option<PathBuf>,
    /// Seconds to wait for the store lock before giving up.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECONDS")]
    pub lock_wait: u64,
    /// No progress output.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Cooperative ingestion lock held exclusively while Chroma is read.
    #[arg(
        long,
        global = true,
        env = "ATOCORE_INGESTION_LOCK",
        value_name = "PATH"
    )]
    pub ingestion_lock: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a store explicitly.
    Init {
        /// `none` (encrypted stores are not supported by this build yet).
        #[arg(long, default_value = "none")]
        encryption: String,
    },
    /// Take a snapshot.
    Create {
        /// Include the Chroma directory.
        #[arg(long)]
        chroma: bool,
        /// Tag the snapshot (repeatable).
        #[arg(long = "tag", value_name = "T")]
        tags: Vec<String>,
        /// The snapshot's time (RFC 3339), for imports and tests.
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
    },
    /// List snapshots, oldest first.
    List,
    /// Check one snapshot end to end: the gate before a restore.
    Validate { stamp: String },
    /// Audit the integrity of the whole store (or the named snapshots).
    Verify {
        #[arg(long = "snapshot", value_name = "STAMP")]
        snapshots: Vec<String>,
    },
    /// Apply the retention policy (dry run unless --confirm; then gc).
    Cleanup {
        /// Delete for real, then run gc.
        #[arg(long)]
        confirm: bool,
        /// Keep the newest snapshot of each of the N most recent days that have one.
        #[arg(long, default_value_t = 7, value_name = "N")]
        keep_daily: u32,
        /// Keep the newest Sunday snapshot of each of the N most recent weeks that have one.
        #[arg(long, default_value_t = 4, value_name = "N")]
        keep_weekly: u32,
        /// Keep the newest 1st-of-month snapshot of each of the N most recent months that have one.
        #[arg(long, default_value_t = 6, value_name = "N")]
        keep_monthly: u32,
        /// Keep every snapshot with this tag (repeatable).
        #[arg(long = "keep-tag", value_name = "T")]
        keep_tags: Vec<String>,
    },
    /// Delete objects no snapshot references (dry run unless --confirm).
    Gc {
        /// Delete for real (takes the exclusive store lock).
        #[arg(long)]
        confirm: bool,
    },
    /// Build a runtime from the fixtures and run the drill end to end.
    Demo,
}

/// Parses, runs, prints; returns the process exit code.
pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return 0;
            }
            let _ = e.print();
            let message = e.kind().to_string();
            print_json(&error_doc("usage", &format!("{message} (see --help)")));
            return 2;
        }
    };
    if !cli.global.quiet {
        atosnap::store::lock::set_wait_notifier(|msg| eprintln!("atosnap: {msg}"));
    }
    match dispatch(&cli) {
        Ok((doc, code)) => {
            print_json(&doc);
            code
        }
        Err(e) => {
            eprintln!("atosnap: {e}");
            print_json(&error_doc(e.code(), &e.to_string()));
            e.exit_code()
        }
    }
}

/// Names the causes on stderr when a result carries errors.
fn report_errors(errors: &[String]) {
    for e in errors {
        eprintln!("atosnap: {e}");
    }
}

fn error_doc(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"error": {"code": code, "message": message}})
}

fn print_json(doc: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(doc).unwrap_or_else(|_| "{}".to_string())
    );
}

fn to_doc<T: Serialize>(value: &T) -> Result<serde_json::Value, Error> {
    serde_json::to_value(value).map_err(|e| Error::Other(format!("result encoding: {e}")))
}

pub fn paths(g: &Global) -> Paths {
    Paths::resolve(
        g.store.clone(),
        g.db.clone(),
        g.registry.clone(),
        g.chroma_dir.clone(),
    )
}

fn dispatch(cli: &Cli) -> Result<(serde_json::Value, i32), Error> {
    let g = &cli.global;
    let paths = paths(g);
    let lock_wait = Duration::from_secs(g.lock_wait);
    let progress = progress_bar::for_terminal(g.quiet);
    match &cli.command {
        Command::Init { encryption } => {
            if encryption != "none" {
                return Err(Error::Usage(format!(
                    "--encryption {encryption}: this build writes only unencrypted stores (`none`)"
                )));
            }
            let store = Store::init(&paths.store)?;
            Ok((
                serde_json::json!({
                    "store": paths.store.display().to_string(),
                    "format_version": store.config().format_version,
                    "encryption": store.config().encryption.scheme,
                    "store_id": store.config().store_id,
                }),
                0,
            ))
        }
        Command::Create { chroma, tags, at } => {
            let at = match at {
                Some(s) => Some(
                    chrono::DateTime::parse_from_rfc3339(s)
                        .map_err(|e| {
                            Error::Usage(format!("--at {s:?}: not an RFC 3339 time ({e})"))
                        })?
                        .with_timezone(&chrono::Utc),
                ),
                None => None,
            };
            // Refuse a missing db before a store is created for it.
            atosnap::sources::sqlite::check_database(&paths.db)?;
            let store = Store::open_or_init(&paths.store)?;
            let opts = CreateOptions {
                db: paths.db.clone(),
                registry: paths.registry.clone(),
                chroma: chroma.then(|| paths.chroma_dir.clone()),
                tags: tags.clone(),
                at,
                lock_wait,
                ingestion_lock: g.ingestion_lock.clone(),
            };
            let result = create::create(&store, &opts, progress.as_ref())?;
            Ok((to_doc(&result)?, 0))
        }
        Command::List => {
            let store = Store::open(&paths.store)?;
            Ok((to_doc(&list::list(&store)?)?, 0))
        }
        Command::Validate { stamp } => {
            let store = Store::open(&paths.store)?;
            let report = verify::validate(&store, stamp, lock_wait)?;
            let code = if report.valid { 0 } else { 3 };
            Ok((to_doc(&report)?, code))
        }
        Command::Verify { snapshots } => {
            let store = Store::open(&paths.store)?;
            let report = verify::verify(&store, snapshots, lock_wait)?;
            let code = if report.ok { 0 } else { 3 };
            Ok((to_doc(&report)?, code))
        }
        Command::Cleanup {
            confirm,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_tags,
        } => {
            let store = Store::open(&paths.store)?;
            let opts = CleanupOptions {
                policy: Policy {
                    keep_daily: *keep_daily,
                    keep_weekly: *keep_weekly,
                    keep_monthly: *keep_monthly,
                    keep_tags: keep_tags.clone(),
                },
                confirm: *confirm,
                lock_wait,
            };
            let result = cleanup::cleanup(&store, &opts)?;
            report_errors(&result.errors);
            Ok((to_doc(&result)?, result.exit_code))
        }
        Command::Gc { confirm } => {
            let store = Store::open(&paths.store)?;
            let result = gc::gc(&store, *confirm, lock_wait)?;
            report_errors(&result.errors);
            Ok((to_doc(&result)?, result.exit_code))
        }
        Command::Demo => crate::demo::run(),
    }
}
