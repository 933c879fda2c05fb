//! Argument parsing, output and exit codes. Every command prints exactly one
//! JSON document on stdout, on failure too; messages and progress go to
//! stderr.

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

use atosnap::config::Paths;
use atosnap::create::{self, CreateOptions};
use atosnap::error::Error;
use atosnap::store::Store;
use atosnap::{list, verify};

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
    /// Build a runtime from the fixtures and run the drill end to end.
    Demo,
    /// Serve the admin HTTP API until SIGTERM or Ctrl-C.
    Serve {
        /// Address to listen on (a non-loopback address needs a token).
        #[arg(long, default_value = "127.0.0.1:8101", value_name = "ADDR:PORT")]
        listen: std::net::SocketAddr,
        /// File holding the bearer token (never pass the token itself).
        #[arg(long, env = "ATOSNAP_TOKEN_FILE", value_name = "F")]
        token_file: Option<PathBuf>,
    },
    /// Print shell completions for bash, zsh, fish, elvish or powershell.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), or write one page per command into DIR.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
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
    // Completions and the man page are not JSON.
    match &cli.command {
        Command::Completions { shell } => return crate::docgen::completions(*shell),
        Command::Man { dir: None } => return crate::docgen::man_to_stdout(),
        _ => {}
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
        Command::Demo => crate::demo::run(),
        Command::Serve { listen, token_file } => {
            crate::logging::init(g.quiet);
            let token = match token_file {
                Some(f) => {
                    let (token, warning) = atosnap::serve::Token::from_file(f)?;
                    if let Some(w) = warning {
                        tracing::warn!("{w}");
                    }
                    Some(token)
                }
                None => None,
            };
            let summary = atosnap::serve::run(atosnap::serve::ServeConfig {
                listen: *listen,
                token,
                paths,
                lock_wait,
                ingestion_lock: g.ingestion_lock.clone(),
            })?;
            Ok((to_doc(&summary)?, 0))
        }
        Command::Completions { .. } => Err(Error::Usage("completions print no JSON".into())),
        Command::Man { dir } => crate::docgen::man_to_dir(dir.as_deref()),
    }
}
