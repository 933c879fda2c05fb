//! Argument parsing, output and exit codes. Every command prints exactly one
//! JSON document on stdout, on failure too; messages and progress go to
//! stderr.

mod demo;
pub(crate) mod docgen;
mod global;
pub(crate) mod logging;
mod progress_bar;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

use atosnap::error::Error;
use atosnap::ops::cleanup::{self, CleanupOptions};
use atosnap::ops::create::{self, CreateOptions};
use atosnap::ops::restore::{self, ChromaChoice, RestoreOptions};
use atosnap::ops::{copy, diff, drill, dump, forget, gc, list, ls, policy, stats, tag, verify};
use atosnap::sources::paths::Paths;
use atosnap::store::format::CompressionParams;
use atosnap::store::key::Secrets;
use atosnap::store::location::StoreAddress;
use atosnap::store::{InitOptions, Store};

pub use global::{open_store, paths, secrets, store_address, Global};

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

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a store explicitly.
    Init {
        /// `none`, or `repokey`: a random master key, wrapped under the
        /// password (--password-file / ATOSNAP_PASSWORD_FILE or
        /// ATOSNAP_PASSWORD), encrypts everything. A lost password means
        /// lost backups.
        #[arg(long, default_value = "none", value_parser = ["none", "repokey"])]
        encryption: String,
        /// How new chunks are compressed, in frames of consecutive chunks
        /// (up to 256 chunks / 1 MiB): `auto` (zstd level 3, a frame
        /// stored raw when that does not shrink it to 97 %), `zstd:LEVEL`
        /// (1-22, same rule) or `none` (every frame raw). Recorded in
        /// config.json; every writer of the store follows it. Default:
        /// `auto`, or the --copy-key-from store's (frames then move as is).
        #[arg(
            long,
            value_name = "auto|none|zstd:LEVEL",
            value_parser = CompressionParams::parse_choice
        )]
        compression: Option<CompressionParams>,
        /// With `repokey`: share the master key of this encrypted store
        /// (its password: --from-password-file, else ATOSNAP_FROM_PASSWORD,
        /// else this store's) instead of a fresh one; `copy` between the
        /// two then moves stored data as it is. Each keeps its own password.
        #[arg(long, value_name = "STORE")]
        copy_key_from: Option<PathBuf>,
        /// The --copy-key-from store's password file (unused without it).
        #[arg(long, env = "ATOSNAP_FROM_PASSWORD_FILE", value_name = "FILE")]
        from_password_file: Option<PathBuf>,
    },
    /// Manage the key of an encrypted store.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
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
        /// Check only this snapshot and the objects it references (repeatable).
        #[arg(long = "snapshot", value_name = "STAMP")]
        snapshots: Vec<String>,
        /// Re-hash only this share of the packs (0-100), picked at random;
        /// check the others structurally.
        #[arg(long, value_name = "PERCENT", conflicts_with_all = ["subset", "oldest"])]
        sample: Option<f64>,
        /// Re-hash subset N of T (by pack id, stable): over the runs
        /// 1/T..T/T every pack is read exactly once.
        #[arg(long, value_name = "N/T", value_parser = verify::Sample::parse_subset)]
        subset: Option<verify::Sample>,
        /// Re-hash the packs verified longest ago (never-verified first, as
        /// the verify log says) until PERCENT of the pack bytes is read.
        #[arg(long, value_name = "PERCENT", value_parser = verify::Sample::parse_oldest,
              conflicts_with_all = ["subset", "snapshots"])]
        oldest: Option<verify::Sample>,
        /// Move damaged packs into quarantine/, keep their intact chunks in a
        /// fresh pack, rebuild missing summaries (takes the exclusive lock).
        #[arg(long)]
        repair: bool,
    },
    /// Restore a snapshot into the live runtime (service stopped) or --to DIR.
    Restore {
        stamp: String,
        /// Required for a live restore: the AtoCore service is stopped.
        #[arg(long)]
        confirm_service_stopped: bool,
        /// Skip the pre-restore safety snapshot.
        #[arg(long)]
        no_pre_snapshot: bool,
        /// Restore the Chroma tree (default: when the snapshot has one).
        #[arg(long, conflicts_with = "no_chroma")]
        chroma: bool,
        /// Leave the Chroma dir alone.
        #[arg(long)]
        no_chroma: bool,
        /// Restore into DIR/atocore.db, DIR/project-registry.json, DIR/chroma.
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
        /// Restore only this path of the snapshot and what is below it
        /// (`chroma/<segment>`, `project-registry.json`, `atocore.db`;
        /// repeatable; needs --to). Only these files' chunks are checked;
        /// nothing else in DIR is touched.
        #[arg(long, value_name = "PATH", requires = "to", conflicts_with_all = ["chroma", "no_chroma"])]
        include: Vec<String>,
    },
    /// Prove a snapshot restorable (default: the newest) without touching live data.
    Drill { stamp: Option<String> },
    /// Files added, removed and changed between two snapshots.
    Diff { from: String, to: String },
    /// Apply the retention policy (dry run unless --confirm; then gc).
    ///
    /// The policy is the one stored in the store (`atosnap policy set`),
    /// else the defaults (daily 7, weekly 4, monthly 6); each rule flag
    /// given here overrides that rule, --keep-tag adds to the stored tags.
    Cleanup {
        /// Delete for real, then run gc.
        #[arg(long)]
        confirm: bool,
        #[command(flatten)]
        rules: RuleArgs,
        /// gc's grace period (see `gc --grace-period`).
        #[arg(long, value_name = "SECONDS")]
        grace_period: Option<u64>,
    },
    /// Show or set the retention policy stored in the store.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Delete the named snapshots (dry run unless --confirm; then gc).
    Forget {
        /// The snapshots to delete (every one must exist).
        #[arg(value_name = "STAMP", required = true)]
        stamps: Vec<String>,
        /// Delete for real (takes the exclusive store lock), then run gc.
        #[arg(long)]
        confirm: bool,
        /// Allow deleting every snapshot of the store.
        #[arg(long)]
        force: bool,
        /// gc's grace period (see `gc --grace-period`).
        #[arg(long, value_name = "SECONDS")]
        grace_period: Option<u64>,
    },
    /// Add or remove tags of a snapshot (e.g. pin it for `cleanup --keep-tag`).
    Tag {
        stamp: String,
        /// Tag to add (repeatable).
        #[arg(long = "add", value_name = "T")]
        add: Vec<String>,
        /// Tag to remove (repeatable; removals apply before additions).
        #[arg(long = "remove", value_name = "T")]
        remove: Vec<String>,
    },
    /// List a snapshot's entries (path, kind, size, mode, mtime).
    Ls {
        stamp: String,
        /// Only this path and what is below it (e.g. chroma/<segment>).
        path: Option<String>,
        /// Add each file's chunk count.
        #[arg(long)]
        long: bool,
    },
    /// Write one file of a snapshot to stdout, re-hashing every chunk.
    ///
    /// stdout carries the file's bytes only (like `restic dump`); the one
    /// JSON document (the result, or the error) goes to stderr as its last
    /// line. With --output FILE the bytes go to FILE (written whole, then
    /// renamed into place) and the JSON document to stdout as usual. A
    /// damaged chunk stops the stream: exit 3, the message names the chunk
    /// and the file.
    Dump {
        stamp: String,
        /// The file inside the snapshot: atocore.db,
        /// project-registry.json or chroma/<path>.
        path: String,
        /// Write the bytes to FILE instead of stdout.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Copy snapshots (default: all) to another store, sending only the
    /// chunks it lacks, each manifest last; rerun after a kill, it converges.
    Copy {
        /// The destination store (created when missing, with the source's
        /// encryption scheme; a repokey one gets a fresh key).
        #[arg(long, env = "ATOSNAP_COPY_TO", value_name = "STORE")]
        to: PathBuf,
        /// The source store [default: --store].
        #[arg(long, value_name = "STORE")]
        from: Option<PathBuf>,
        /// File holding the destination's password (else
        /// ATOSNAP_TO_PASSWORD; else the source's password).
        #[arg(long, env = "ATOSNAP_TO_PASSWORD_FILE", value_name = "FILE")]
        to_password_file: Option<PathBuf>,
        /// The snapshots to copy [default: every snapshot of the source].
        #[arg(value_name = "STAMP")]
        stamps: Vec<String>,
    },
    /// Store size, unique and deduplicated bytes, compression ratio and
    /// what gc would reclaim (reads every manifest and pack index).
    Stats {
        /// Add each snapshot's files, bytes, chunks and the bytes only it
        /// references (what forgetting it alone would free).
        #[arg(long)]
        per_snapshot: bool,
    },
    /// Delete objects no snapshot references (dry run unless --confirm).
    Gc {
        /// Delete for real (takes the exclusive store lock).
        #[arg(long)]
        confirm: bool,
        /// Never touch a pack modified less than this long ago [default:
        /// 3600 on an s3:// store, 0 on a local one].
        #[arg(long, value_name = "SECONDS")]
        grace_period: Option<u64>,
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

/// The retention rules, shared by `cleanup` and `policy set`. A rule not
/// given keeps its value from underneath (cleanup: the stored policy, else
/// the defaults; policy set: the defaults).
#[derive(Args, Debug, Clone, Default)]
pub struct RuleArgs {
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N")]
    keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent hours that have one.
    #[arg(long, value_name = "N")]
    keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent days that have one [default: 7].
    #[arg(long, value_name = "N")]
    keep_daily: Option<u32>,
    /// Keep the newest Sunday snapshot of each of the N most recent weeks that have one [default: 4].
    #[arg(long, value_name = "N")]
    keep_weekly: Option<u32>,
    /// Keep the newest 1st-of-month snapshot of each of the N most recent months that have one [default: 6].
    #[arg(long, value_name = "N")]
    keep_monthly: Option<u32>,
    /// Keep the newest January-1st snapshot of each of the N most recent years that have one.
    #[arg(long, value_name = "N")]
    keep_yearly: Option<u32>,
    /// Keep every snapshot taken within DURATION before the newest one
    /// (units h, d, w: 36h, 14d, 2w, 1w2d).
    #[arg(long, value_name = "DURATION")]
    keep_within: Option<String>,
    /// A week (month, year) whose Sunday (1st, January 1st) has no
    /// snapshot keeps its newest snapshot instead of none.
    #[arg(long)]
    weekly_any_day: bool,
    /// Keep every snapshot with this tag (repeatable).
    #[arg(long = "keep-tag", value_name = "T")]
    keep_tags: Vec<String>,
}

impl RuleArgs {
    fn flags(&self) -> policy::RuleFlags {
        policy::RuleFlags {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self.keep_within.clone(),
            weekly_any_day: self.weekly_any_day,
            keep_tags: self.keep_tags.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Store a retention policy: the defaults with the given rules laid
    /// over them (replaces any stored policy, atomically).
    Set {
        #[command(flatten)]
        rules: RuleArgs,
    },
    /// Show the stored policy (or the defaults, when none is stored).
    Show,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Re-wrap the master key under a new password, atomically (the old
    /// password comes from the usual --password-file / ATOSNAP_PASSWORD_FILE
    /// / ATOSNAP_PASSWORD).
    Passwd {
        /// File holding the new password (else ATOSNAP_NEW_PASSWORD).
        #[arg(long, env = "ATOSNAP_NEW_PASSWORD_FILE", value_name = "FILE")]
        new_password_file: Option<PathBuf>,
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
            let message = usage_message(&e);
            return print_json(&error_doc("usage", &format!("{message} (see --help)")), 2);
        }
    };
    logging::init(
        cli.global.log_format,
        matches!(cli.command, Command::Serve { .. }),
        cli.global.quiet,
    );
    if !cli.global.quiet {
        atosnap::store::lock::set_wait_notifier(|msg| tracing::warn!("{msg}"));
    }
    // Completions and the man page are not JSON.
    match &cli.command {
        Command::Completions { shell } => return docgen::completions(*shell),
        Command::Man { dir: None } => return docgen::man_to_stdout(),
        // stdout carries the file's bytes, so the JSON goes to stderr.
        Command::Dump {
            stamp,
            path,
            output: None,
        } => {
            crate::install_interrupt_handlers();
            return dump_to_stdout(&cli.global, stamp, path);
        }
        Command::Serve { .. } => {}
        _ => crate::install_interrupt_handlers(),
    }
    match dispatch(&cli) {
        // A signal that came after the last check: the work is done and
        // its result is the truth.
        Ok((mut doc, code)) => {
            if let Some(w) = unused_limits(&cli) {
                tracing::warn!("{w}");
                add_warning(&mut doc, w);
            }
            print_json(&doc, code)
        }
        Err(e) => {
            let e = interrupted_instead(e);
            tracing::error!("{e}");
            print_json(&error_doc(e.code(), &e.to_string()), e.exit_code())
        }
    }
}

/// The first line of clap's message (it names the flag and the value),
/// for the JSON error document.
fn usage_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first).trim();
    if first.is_empty() {
        e.kind().to_string()
    } else {
        first.to_string()
    }
}

/// `dump` without --output: the file's bytes on stdout, the one JSON
/// document (result or error) on stderr.
fn dump_to_stdout(g: &Global, stamp: &str, path: &str) -> i32 {
    use std::io::Write;
    let run = || -> Result<dump::DumpResult, Error> {
        let store = open_store(g, &paths(g))?;
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
        let r = dump::dump(
            &store,
            stamp,
            path,
            &mut out,
            "-",
            Duration::from_secs(g.lock_wait),
        )?;
        out.flush().map_err(|e| Error::io("write", "<stdout>", e))?;
        Ok(r)
    };
    let (doc, code) = match run() {
        Ok(r) => match to_doc(&r) {
            Ok(doc) => (doc, 0),
            Err(e) => (error_doc(e.code(), &e.to_string()), e.exit_code()),
        },
        Err(e) => {
            let e = interrupted_instead(e);
            tracing::error!("{e}");
            (error_doc(e.code(), &e.to_string()), e.exit_code())
        }
    };
    eprintln!(
        "{}",
        serde_json::to_string(&doc).unwrap_or_else(|_| "{}".to_string())
    );
    code
}

/// A command that failed after a signal asked it to stop reports the
/// signal (what the operator did), the failure it met on the way out on
/// stderr.
fn interrupted_instead(e: Error) -> Error {
    match atosnap::os::interrupted() {
        Some(sig) if !e.is_interrupted() => {
            tracing::warn!("while stopping: {e}");
            Error::Interrupted {
                signal: atosnap::os::signal_name(sig),
            }
        }
        _ => e,
    }
}

/// Names the causes on stderr when a result carries errors.
fn report_errors(errors: &[String]) {
    for e in errors {
        tracing::error!("{e}");
    }
}

fn error_doc(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"error": {"code": code, "message": message}})
}

/// The exit code of a command that succeeded but whose stdout is a closed
/// pipe (`atosnap list | head -c1`): what a shell reports for a process
/// ended by SIGPIPE (128 + 13), so a pipeline under `set -o pipefail` sees
/// the same as with any other tool. The work is done; only its report is
/// lost. A command that failed keeps its own code (1, 2 or 3).
pub const BROKEN_PIPE_EXIT: i32 = 141;

/// Prints the one JSON document and returns `code`; when stdout is a
/// closed pipe, quietly (no panic, no message) [`BROKEN_PIPE_EXIT`] in
/// place of 0; when stdout cannot be written otherwise (a full disk), a
/// line on stderr and at least 1.
fn print_json(doc: &serde_json::Value, code: i32) -> i32 {
    use std::io::Write;
    let text = serde_json::to_string_pretty(doc).unwrap_or_else(|_| "{}".to_string());
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => code,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => match code {
            0 => BROKEN_PIPE_EXIT,
            failed => failed,
        },
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "atosnap: cannot write the result: {e}");
            code.max(1)
        }
    }
}

/// The warning for `--limit-upload` / `--limit-download` given to a
/// command that names no s3:// store (see [`global::unused_limits_warning`]).
fn unused_limits(cli: &Cli) -> Option<String> {
    let g = &cli.global;
    let paths = paths(g);
    let mut stores: Vec<StoreAddress> = store_address(g, &paths).into_iter().collect();
    if let Command::Copy { to, from, .. } = &cli.command {
        for s in std::iter::once(to).chain(from) {
            stores.extend(StoreAddress::parse(s, global::remote_settings(g)));
        }
    }
    global::unused_limits_warning(g, &stores.iter().collect::<Vec<_>>())
}

/// Adds `warning` to the `warnings` of a result document.
fn add_warning(doc: &mut serde_json::Value, warning: String) {
    let Some(obj) = doc.as_object_mut() else {
        return;
    };
    match obj.get_mut("warnings").and_then(|w| w.as_array_mut()) {
        Some(list) => list.push(warning.into()),
        None => {
            obj.insert("warnings".into(), serde_json::json!([warning]));
        }
    }
}

fn to_doc<T: Serialize>(value: &T) -> Result<serde_json::Value, Error> {
    serde_json::to_value(value).map_err(|e| Error::Encode {
        detail: format!("result encoding: {e}"),
    })
}

/// [`open_store`] with gc's grace period as `--grace-period` says.
fn open_store_with_grace(g: &Global, paths: &Paths, grace: Option<u64>) -> Result<Store, Error> {
    let mut store = open_store(g, paths)?;
    if let Some(secs) = grace {
        store.set_gc_grace(Duration::from_secs(secs));
    }
    Ok(store)
}

/// Opens `copy`'s destination, creating it when missing with the source's
/// encryption scheme (a repokey store gets its own fresh master key,
/// wrapped under the destination password) and compression.
fn open_or_init_like(
    address: &StoreAddress,
    source: &Store,
    secrets: &Secrets,
) -> Result<Store, Error> {
    match Store::open(address, secrets) {
        Err(Error::StoreMissing { .. }) => {
            let config = source.config();
            let options = InitOptions {
                scheme: config.encryption.scheme.clone(),
                secrets: secrets.clone(),
                compression: config.compression.clone(),
                shared_key: None,
            };
            match Store::init(address, &options) {
                // Another process created it between our check and init.
                Err(_) if Store::exists(address)? => Store::open(address, secrets),
                other => other,
            }
        }
        other => other,
    }
}

fn dispatch(cli: &Cli) -> Result<(serde_json::Value, i32), Error> {
    let g = &cli.global;
    let paths = paths(g);
    let lock_wait = Duration::from_secs(g.lock_wait);
    let progress = progress_bar::for_terminal(g.quiet);
    match &cli.command {
        Command::Init {
            encryption,
            compression,
            copy_key_from,
            from_password_file,
        } => {
            let address = store_address(g, &paths)?;
            let (shared_key, source_compression) = global::key_to_share(
                g,
                &address,
                encryption,
                copy_key_from.as_deref(),
                from_password_file,
            )?;
            let options = InitOptions {
                compression: compression
                    .clone()
                    .or(source_compression)
                    .unwrap_or_else(CompressionParams::auto),
                shared_key,
                ..InitOptions::with_scheme(encryption, &secrets(g))
            };
            let store = Store::init(&address, &options)?;
            let mut doc = serde_json::json!({
                "store": address.display(),
                "format_version": store.config().format_version,
                "encryption": store.config().encryption.scheme,
                "compression": store.config().compression.choice(),
                "store_id": store.config().store_id,
            });
            if let Some(file) = store.key_file() {
                doc["key"] = file.summary();
                doc["warnings"] = serde_json::json!([
                    "keep the password (and a copy of keys/repokey.json) safe: a lost password or key file means lost backups"
                ]);
            }
            if from_password_file.is_some() && copy_key_from.is_none() {
                let w = "--from-password-file (ATOSNAP_FROM_PASSWORD_FILE) ignored: it is the password of a --copy-key-from store";
                add_warning(&mut doc, w.into());
            }
            Ok((doc, 0))
        }
        Command::Key {
            command: KeyCommand::Passwd { new_password_file },
        } => {
            let new = Secrets::new_password_from_env(new_password_file.clone())
                .password()?
                .ok_or(Error::NewPasswordRequired)?;
            let store = open_store(g, &paths)?;
            let file = store.change_password(&new)?;
            let mut doc = file.summary();
            doc["store"] = serde_json::json!(store.location().display());
            doc["changed"] = serde_json::json!(true);
            Ok((doc, 0))
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
            // Refuse a missing db, or a blank tag, before a store is
            // created for them.
            atosnap::sources::sqlite::check_database(&paths.db)?;
            let tags = atosnap::ops::tag::new_tags("--tag", tags)?;
            // A password with no store is refused there, not turned into
            // an unencrypted store.
            let store = Store::open_or_init(&store_address(g, &paths)?, &secrets(g))?;
            let opts = CreateOptions {
                db: paths.db.clone(),
                registry: paths.registry.clone(),
                chroma: chroma.then(|| paths.chroma_dir.clone()),
                tags,
                at,
                lock_wait,
                ingestion_lock: g.ingestion_lock.clone(),
            };
            let result = create::create(&store, &opts, progress.as_ref())?;
            Ok((to_doc(&result)?, 0))
        }
        Command::List => {
            let store = open_store(g, &paths)?;
            Ok((to_doc(&list::list(&store)?)?, 0))
        }
        Command::Validate { stamp } => {
            let store = open_store(g, &paths)?;
            let report = verify::validate(&store, stamp, lock_wait)?;
            let code = if report.valid { 0 } else { 3 };
            Ok((to_doc(&report)?, code))
        }
        Command::Verify {
            snapshots,
            sample,
            subset,
            oldest,
            repair,
        } => {
            let store = open_store(g, &paths)?;
            let opts = verify::VerifyOptions {
                snapshots: snapshots.clone(),
                sample: sample
                    .map(verify::Sample::Percent)
                    .or_else(|| subset.clone().or_else(|| oldest.clone())),
                repair: *repair,
                lock_wait,
            };
            let report = verify::verify(&store, &opts)?;
            let code = report.exit_code();
            Ok((to_doc(&report)?, code))
        }
        Command::Restore {
            stamp,
            confirm_service_stopped,
            no_pre_snapshot,
            chroma,
            no_chroma,
            to,
            include,
        } => {
            if let (false, Some(to)) = (include.is_empty(), to) {
                let store = open_store(g, &paths)?;
                let opts = restore::include::IncludeOptions {
                    stamp: stamp.clone(),
                    to: to.clone(),
                    include: include.clone(),
                    live: [
                        paths.db.clone(),
                        paths.registry.clone(),
                        paths.chroma_dir.clone(),
                    ],
                    lock_wait,
                };
                let result = restore::include::restore_paths(&store, &opts)?;
                let code = if result.restored_integrity_ok { 0 } else { 3 };
                return Ok((to_doc(&result)?, code));
            }
            let opts = RestoreOptions {
                stamp: stamp.clone(),
                db: paths.db.clone(),
                registry: paths.registry.clone(),
                chroma_dir: paths.chroma_dir.clone(),
                to: to.clone(),
                confirm_service_stopped: *confirm_service_stopped,
                pre_snapshot: !no_pre_snapshot,
                chroma: match (chroma, no_chroma) {
                    (true, _) => ChromaChoice::Yes,
                    (_, true) => ChromaChoice::No,
                    _ => ChromaChoice::Auto,
                },
                lock_wait,
            };
            // The gate comes before anything else, the store included.
            restore::check_confirmation(&opts)?;
            let store = open_store(g, &paths)?;
            let result = restore::restore(&store, &opts, progress.as_ref())?;
            let code = if result.restored_integrity_ok { 0 } else { 3 };
            Ok((to_doc(&result)?, code))
        }
        Command::Drill { stamp } => {
            let store = open_store(g, &paths)?;
            let result = drill::drill(&store, stamp.as_deref(), lock_wait, progress.as_ref())?;
            let code = if result.ok { 0 } else { 3 };
            Ok((to_doc(&result)?, code))
        }
        Command::Diff { from, to } => {
            let store = open_store(g, &paths)?;
            Ok((to_doc(&diff::diff(&store, from, to)?)?, 0))
        }
        Command::Cleanup {
            confirm,
            rules,
            grace_period,
        } => {
            let store = open_store_with_grace(g, &paths, *grace_period)?;
            let (policy, source) = policy::resolve(&store, &rules.flags())?;
            let opts = CleanupOptions {
                policy,
                confirm: *confirm,
                lock_wait,
            };
            let mut result = cleanup::cleanup(&store, &opts)?;
            result.policy_source = Some(source);
            report_errors(&result.errors);
            Ok((to_doc(&result)?, result.exit_code))
        }
        Command::Policy { command } => {
            let store = open_store(g, &paths)?;
            let result = match command {
                PolicyCommand::Set { rules } => policy::set(&store, &rules.flags())?,
                PolicyCommand::Show => policy::show(&store)?,
            };
            Ok((to_doc(&result)?, 0))
        }
        Command::Forget {
            stamps,
            confirm,
            force,
            grace_period,
        } => {
            let store = open_store_with_grace(g, &paths, *grace_period)?;
            let opts = forget::ForgetOptions {
                stamps: stamps.clone(),
                confirm: *confirm,
                force: *force,
                lock_wait,
            };
            let result = forget::forget(&store, &opts)?;
            report_errors(&result.errors);
            Ok((to_doc(&result)?, result.exit_code))
        }
        Command::Tag { stamp, add, remove } => {
            let store = open_store(g, &paths)?;
            Ok((
                to_doc(&tag::tag(&store, stamp, add, remove, lock_wait)?)?,
                0,
            ))
        }
        Command::Ls { stamp, path, long } => {
            let store = open_store(g, &paths)?;
            Ok((to_doc(&ls::ls(&store, stamp, path.as_deref(), *long)?)?, 0))
        }
        Command::Dump {
            stamp,
            path,
            output,
        } => {
            let store = open_store(g, &paths)?;
            let file = output
                .as_deref()
                .ok_or_else(|| Error::Usage("dump to stdout prints no JSON here".into()))?;
            let result = dump::dump_to_file(&store, stamp, path, file, lock_wait)?;
            Ok((to_doc(&result)?, 0))
        }
        Command::Copy {
            to,
            from,
            to_password_file,
            stamps,
        } => {
            let stamps = stamps
                .iter()
                .map(|s| atosnap::stamp::Stamp::parse(s))
                .collect::<Result<Vec<_>, _>>()?;
            let from = match from {
                Some(from) => global::address_of("--from", from, g)?,
                None => global::store_address(g, &paths)?,
            };
            let source = Store::open(&from, &secrets(g))?;
            let to = global::address_of("--to", to, g)?;
            // `--to-password-file`, else ATOSNAP_TO_PASSWORD, else the source's.
            let to_secrets = global::other_secrets(g, to_password_file, "ATOSNAP_TO_PASSWORD");
            let dest = open_or_init_like(&to, &source, &to_secrets)?;
            let opts = copy::CopyOptions { lock_wait };
            let result = copy::copy(&source, &dest, &stamps, &opts, progress.as_ref())?;
            for f in &result.snapshots_failed {
                tracing::error!("{}: {}", f.stamp, f.message);
            }
            Ok((to_doc(&result)?, result.exit_code))
        }
        Command::Stats { per_snapshot } => {
            let store = open_store(g, &paths)?;
            let result = stats::stats(&store, *per_snapshot, lock_wait)?;
            Ok((to_doc(&result)?, 0))
        }
        Command::Gc {
            confirm,
            grace_period,
        } => {
            let store = open_store_with_grace(g, &paths, *grace_period)?;
            let opts = gc::GcOptions {
                confirm: *confirm,
                lock_wait,
            };
            let result = gc::gc(&store, &opts)?;
            report_errors(&result.errors);
            Ok((to_doc(&result)?, result.exit_code))
        }
        Command::Demo => demo::run(),
        Command::Serve { listen, token_file } => {
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
            let store = store_address(g, &paths)?;
            let summary = atosnap::serve::run(atosnap::serve::ServeConfig {
                listen: *listen,
                token,
                store,
                paths,
                secrets: secrets(g),
                lock_wait,
                ingestion_lock: g.ingestion_lock.clone(),
                limits: atosnap::serve::ServeLimits::from_env()?,
            })?;
            Ok((to_doc(&summary)?, 0))
        }
        Command::Completions { .. } => Err(Error::Usage("completions print no JSON".into())),
        Command::Man { dir } => docgen::man_to_dir(dir.as_deref()),
    }
}
