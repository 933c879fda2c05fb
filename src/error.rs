//! Errors of the atosnap library.
//!
//! Error policy:
//! - Every failure is a typed [`Error`] variant, never a panic. Each variant
//!   has a stable, snake_case `code()` that scripts and the HTTP API may rely
//!   on, and an `exit_code()` following SPEC §3: 1 refused or failed,
//!   2 usage, 3 integrity problem.
//! - The message names what is at fault: the file path, the chunk or pack
//!   hash, the flag, the stamp. Where an operator can act, it says how.
//! - I/O errors always carry the path and the operation; a full disk
//!   (ENOSPC) and a read-only filesystem (EROFS) get their own codes because
//!   the remedy differs.
//! - Integrity findings inside validate / verify are *results*, not errors:
//!   those commands return a report with stable error codes as strings. An
//!   [`Error`] with exit code 3 is used only where a command must stop
//!   because of damage (a corrupt manifest needed to go on, a restore refused
//!   by validation).

use std::io;
use std::path::{Path, PathBuf};

/// Library result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),

    #[error("invalid stamp {stamp:?}: {reason} (stamps look like 20260411T120000Z or 20260411T120000Z-2)")]
    InvalidStamp { stamp: String, reason: String },

    #[error("snapshot {stamp} does not exist in the store (see `atosnap list`)")]
    SnapshotMissing { stamp: String },

    #[error(
        "no store at {path}: create one with `atosnap init` or check --store / ATOCORE_BACKUP_DIR"
    )]
    StoreMissing { path: String },

    #[error("store at {path} has format version {found}, this atosnap reads up to {supported}: upgrade atosnap")]
    StoreTooNew {
        path: String,
        found: u32,
        supported: u32,
    },

    #[error("store {store} is format {found}, which this atosnap reads but no longer writes: copy it into a new store with `atosnap init --store NEW` then `atosnap copy --store {store} --to NEW` (the old store is never changed)")]
    StoreFormatReadOnly { store: String, found: u32 },

    #[error("store config {path} is unreadable: {detail}")]
    StoreConfigInvalid { path: String, detail: String },

    #[error("database {path} does not exist (set --db or ATOCORE_DB_PATH)")]
    DbMissing { path: PathBuf },

    #[error("database {path} is not a SQLite database: {detail}")]
    DbNotSqlite { path: PathBuf, detail: String },

    #[error("sqlite error on {path}: {detail}")]
    Sqlite { path: PathBuf, detail: String },

    #[error("disk full while trying to {op} {path}: free space on that filesystem and retry (nothing partial was published)")]
    DiskFull { op: &'static str, path: PathBuf },

    #[error("read-only filesystem while trying to {op} {path}")]
    ReadOnly { op: &'static str, path: PathBuf },

    #[error("permission denied while trying to {op} {path}{detail}")]
    PermissionDenied {
        op: &'static str,
        path: PathBuf,
        /// What the storage said, for a remote store (empty for a local one).
        detail: String,
    },

    #[error("could not {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "store is locked by {holders} (waited {waited_secs}s; raise --lock-wait or retry later)"
    )]
    Locked { holders: String, waited_secs: u64 },

    #[error("the store lock object {name} {why}, so others may have taken the store: stopping before anything is deleted or published; rerun the command")]
    LockLost { name: String, why: String },

    #[error("manifest of snapshot {stamp} is corrupt: {detail}")]
    ManifestCorrupt { stamp: String, detail: String },

    #[error("gc refused, nothing was deleted: the manifest of snapshot {snapshot} cannot be read ({detail}), so the chunks it references cannot be told from garbage. Run `atosnap verify`, then restore that snapshot's manifest or delete the snapshot folder")]
    GcUnsafe { snapshot: String, detail: String },

    #[error("gc refused, nothing was deleted: {path} is missing, so no snapshot can be seen and every object would look like garbage. Check --store and the mount")]
    SnapshotsDirMissing { path: PathBuf },

    #[error("object {name} is corrupt: {detail}")]
    ObjectCorrupt { name: String, detail: String },

    #[error("chunk {hash} is missing from the store")]
    ChunkMissing { hash: String },

    #[error("chunk {hash} is corrupt: {detail}")]
    ChunkCorrupt { hash: String, detail: String },

    #[error("restore of a live runtime needs --confirm-service-stopped: stop the AtoCore service first, then pass the flag")]
    NotConfirmed,

    #[error("snapshot {stamp} failed validation, restore refused: {errors}")]
    ValidationFailed { stamp: String, errors: String },

    #[error(
        "{path} is held open by pid {pid} ({command}): stop that process (the AtoCore service?) before restoring"
    )]
    DbInUse {
        path: PathBuf,
        pid: u32,
        command: String,
    },

    #[error(
        "{path} is in use by a connection this host's /proc does not show (a service in another container?): {detail}; stop it before restoring (nothing was changed)"
    )]
    DbHeldUnseen { path: PathBuf, detail: String },

    #[error("pre-restore safety snapshot failed, nothing was changed: {detail} (fix the cause, or pass --no-pre-snapshot after copying the live files aside)")]
    PreSnapshotFailed { detail: String },

    #[error("snapshot {stamp} has no Chroma tree: drop --chroma (or pick a snapshot taken with `create --chroma`)")]
    ChromaNotInSnapshot { stamp: String },

    #[error("the store has no snapshots yet (take one with `atosnap create`)")]
    NoSnapshots,

    #[error("restore target {path} is unusable: {detail}")]
    TargetInvalid { path: PathBuf, detail: String },

    #[error("restored database failed its integrity check: {detail}")]
    RestoredIntegrity { detail: String },

    /// `serve` refused to start (an unsafe listen address, a bad token
    /// file): the message says what to change.
    #[error("serve refused to start: {0}")]
    ServeRefused(String),
    #[error("the store at {path} is encrypted: give its password with --password-file FILE, ATOSNAP_PASSWORD_FILE or ATOSNAP_PASSWORD")]
    PasswordRequired { path: String },

    #[error("the new password is missing: give it with --new-password-file FILE, ATOSNAP_NEW_PASSWORD_FILE or ATOSNAP_NEW_PASSWORD")]
    NewPasswordRequired,

    #[error("password file {path}: {detail}")]
    PasswordFile { path: PathBuf, detail: String },

    #[error("wrong password for the encrypted store at {path} (its key file {key_file} does not open with it)")]
    WrongPassword { path: String, key_file: String },

    #[error("key file {path} is missing: without it this encrypted store cannot be read (restore the key file from a copy; a lost key file or password means lost backups)")]
    KeyFileMissing { path: String },

    #[error("key file {path} is damaged: {detail} (restore the key file from a copy; a lost key file or password means lost backups)")]
    KeyFileCorrupt { path: String, detail: String },

    #[error("the store at {path} is not encrypted: it has no key or password")]
    NotEncrypted { path: String },

    #[error("forget would delete every snapshot of the store ({count}): pass --force if that is really meant")]
    ForgetAll { count: u64 },

    #[error("{path:?} is not in snapshot {stamp} (see `atosnap ls {stamp}`)")]
    PathNotInSnapshot { stamp: String, path: String },

    #[error("{path:?} in snapshot {stamp} is {kind}, not a file")]
    NotAFile {
        stamp: String,
        path: String,
        kind: &'static str,
    },

    // Failures without a code of their own (code `error`, exit 1), by layer.
    /// Any layer: a value could not be encoded (JSON, Prometheus text).
    #[error("{detail}")]
    Encode { detail: String },
    /// store: `init` found a store already there.
    #[error("a store already exists at {path}")]
    StoreExists { path: String },
    /// store: a master key could not be generated or wrapped.
    #[error("{0}")]
    KeyMaterial(String),
    /// sources: the thread reading a database's pages panicked.
    #[error("page reader of {} panicked", path.display())]
    ReaderPanicked { path: PathBuf },
    /// ops (restore): internal sentinel that stops comparing a file's chunks
    /// at the first difference; `file_matches` turns it into "no match", it
    /// is never returned.
    #[error("differs")]
    ChunksDiffer,
    /// ops (copy): a chunk of a manifest was never mapped to its id in the
    /// destination (a bug, refused before anything is published).
    #[error("copy: chunk {id} has no destination id")]
    CopyIdUnmapped { id: String },
    /// ops (validate): the snapshot's db is larger than the scratch copy may grow.
    #[error("the db outgrew {limit} bytes")]
    DbTooLarge { limit: u64 },
    /// ops (tag): the snapshot's summary cannot be read, so it cannot be retagged.
    #[error("the summary of snapshot {stamp} cannot be read ({detail}): run `atosnap verify --repair` to rebuild it, then tag again")]
    SummaryUnreadable { stamp: String, detail: String },
    /// serve: the server could not start or watch its signals.
    #[error("{0}")]
    ServeRuntime(String),
    /// binary (demo): the demo's fixtures are missing or unreadable.
    #[error("{0}")]
    DemoFixtures(String),

    #[error("{to} already holds another snapshot {stamp} (another writer took that stamp in the same second): nothing was copied for it. Copy it to another store, or forget the destination's {stamp} if it is not wanted, then copy again")]
    CopyStampTaken { stamp: String, to: String },
    #[error("{to} holds an incomplete folder for snapshot {stamp}: another process is writing it, or one stopped less than 15 minutes ago (its folder counts as abandoned after that): nothing was copied for it. Run the copy again later")]
    CopyStampBusy { stamp: String, to: String },
    #[error("restore --to {to} would write the live runtime ({live}): restore live data with `atosnap restore STAMP --confirm-service-stopped` (without --to), which checks the service is stopped and takes a pre-restore snapshot first")]
    RestoreTargetIsLive { to: PathBuf, live: PathBuf },
    /// SIGINT or SIGTERM asked the command to stop: it published nothing
    /// more, released its lock; its temp files are swept by the next run.
    #[error("interrupted by {signal}: stopped before publishing anything more (the store lock is released; leftover temp files are swept by the next run)")]
    Interrupted { signal: String },
    /// A signal stopped `gc --confirm` (or cleanup's gc) between two of
    /// its steps, each of which leaves the store whole: `done` says what
    /// it had deleted by then, since that cannot be undone.
    #[error("interrupted by {signal}: gc stopped between two steps with the store whole, after it {done}; the next gc finishes the work (the store lock is released; leftover temp files are swept by the next run)")]
    GcInterrupted { signal: String, done: String },
    /// The folder where a restore stages its files lacks the room for
    /// them: refused before anything is written.
    #[error("not enough free space to stage the restore in {folder}: {needed} bytes needed (the staged files plus 5 %), {available} available; free space on that filesystem and retry (nothing was written)")]
    RestoreNoSpace {
        folder: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("no store at {path}, and a password was given: nothing was created. An encrypted store is made only by `atosnap init --encryption repokey`; if the store should be there, check the mount and --store / ATOCORE_BACKUP_DIR")]
    StoreMissingWithPassword { path: String },
}

impl Error {
    /// A stable machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Usage(_) => "usage",
            Error::InvalidStamp { .. } => "invalid_stamp",
            Error::SnapshotMissing { .. } => "snapshot_missing",
            Error::StoreMissing { .. } => "store_missing",
            Error::StoreTooNew { .. } => "store_too_new",
            Error::StoreFormatReadOnly { .. } => "store_format_read_only",
            Error::StoreConfigInvalid { .. } => "store_config_invalid",
            Error::DbMissing { .. } => "db_missing",
            Error::DbNotSqlite { .. } => "db_not_sqlite",
            Error::Sqlite { .. } => "sqlite_error",
            Error::DiskFull { .. } => "disk_full",
            Error::ReadOnly { .. } => "read_only",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::Io { .. } => "io_error",
            Error::Locked { .. } => "store_locked",
            Error::LockLost { .. } => "store_lock_lost",
            Error::ManifestCorrupt { .. } => "manifest_corrupt",
            Error::GcUnsafe { .. } => "gc_refused_unreadable_manifest",
            Error::SnapshotsDirMissing { .. } => "snapshots_dir_missing",
            Error::ObjectCorrupt { .. } => "object_corrupt",
            Error::ChunkMissing { .. } => "chunk_missing",
            Error::ChunkCorrupt { .. } => "chunk_corrupt",
            Error::NotConfirmed => "confirmation_required",
            Error::ValidationFailed { .. } => "validation_failed",
            Error::DbInUse { .. } | Error::DbHeldUnseen { .. } => "db_in_use",
            Error::PreSnapshotFailed { .. } => "pre_snapshot_failed",
            Error::ChromaNotInSnapshot { .. } => "chroma_not_in_snapshot",
            Error::NoSnapshots => "no_snapshots",
            Error::TargetInvalid { .. } => "target_invalid",
            Error::RestoredIntegrity { .. } => "restored_integrity_failed",
            Error::ServeRefused(_) => "serve_refused",
            Error::PasswordRequired { .. } => "password_required",
            Error::NewPasswordRequired => "new_password_required",
            Error::PasswordFile { .. } => "password_file_unreadable",
            Error::WrongPassword { .. } => "wrong_password",
            Error::KeyFileMissing { .. } => "key_file_missing",
            Error::KeyFileCorrupt { .. } => "key_file_corrupt",
            Error::NotEncrypted { .. } => "store_not_encrypted",
            Error::ForgetAll { .. } => "forget_would_delete_all",
            Error::PathNotInSnapshot { .. } => "path_not_in_snapshot",
            Error::NotAFile { .. } => "not_a_file",
            Error::Encode { .. }
            | Error::StoreExists { .. }
            | Error::KeyMaterial(_)
            | Error::ReaderPanicked { .. }
            | Error::ChunksDiffer
            | Error::CopyIdUnmapped { .. }
            | Error::DbTooLarge { .. }
            | Error::SummaryUnreadable { .. }
            | Error::ServeRuntime(_)
            | Error::DemoFixtures(_) => "error",
            Error::RestoreTargetIsLive { .. } => "restore_target_is_live",
            Error::RestoreNoSpace { .. } => "restore_no_space",
            Error::CopyStampTaken { .. } => "copy_stamp_taken",
            Error::CopyStampBusy { .. } => "copy_stamp_busy",
            Error::Interrupted { .. } | Error::GcInterrupted { .. } => "interrupted",
            Error::StoreMissingWithPassword { .. } => "store_missing",
        }
    }

    /// Whether a signal stopped the command (SPEC §4: `interrupted`).
    pub fn is_interrupted(&self) -> bool {
        matches!(
            self,
            Error::Interrupted { .. } | Error::GcInterrupted { .. }
        )
    }

    /// Process exit code per SPEC §3.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            Error::ManifestCorrupt { .. }
            | Error::GcUnsafe { .. }
            | Error::ObjectCorrupt { .. }
            | Error::ChunkMissing { .. }
            | Error::ChunkCorrupt { .. }
            | Error::ValidationFailed { .. }
            | Error::RestoredIntegrity { .. } => 3,
            _ => 1,
        }
    }

    /// Wraps an I/O error with the operation and the path, classifying the
    /// cases whose remedy differs.
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Error {
        let path = path.as_ref().to_path_buf();
        match source.raw_os_error() {
            Some(code) if code == libc_enospc() => Error::DiskFull { op, path },
            Some(code) if code == libc_erofs() => Error::ReadOnly { op, path },
            _ if source.kind() == io::ErrorKind::PermissionDenied => {
                // A local EACCES says nothing the path does not; a remote
                // refusal says which credentials or bucket.
                let detail = match source.raw_os_error() {
                    Some(_) => String::new(),
                    None => format!(": {source}"),
                };
                Error::PermissionDenied { op, path, detail }
            }
            _ => Error::Io { op, path, source },
        }
    }

    pub fn sqlite(path: impl AsRef<Path>, err: rusqlite::Error) -> Error {
        Error::Sqlite {
            path: path.as_ref().to_path_buf(),
            detail: err.to_string(),
        }
    }
}

// ENOSPC and EROFS are 28 and 30 on every Linux architecture.
const fn libc_enospc() -> i32 {
    28
}
const fn libc_erofs() -> i32 {
    30
}

/// Extension to attach a path and an operation to `io::Result`s.
pub trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The variants that replaced `Other(String)` keep its code, exit code
    /// and message text.
    #[test]
    fn named_variants_keep_the_generic_code() {
        let cases = [
            (Error::Encode { detail: "result encoding: x".into() }, "result encoding: x"),
            (Error::StoreExists { path: "/s".into() }, "a store already exists at /s"),
            (Error::KeyMaterial("no entropy".into()), "no entropy"),
            (Error::ReaderPanicked { path: "/db".into() }, "page reader of /db panicked"),
            (Error::ChunksDiffer, "differs"),
            (
                Error::CopyIdUnmapped { id: "ab".into() },
                "copy: chunk ab has no destination id",
            ),
            (Error::DbTooLarge { limit: 7 }, "the db outgrew 7 bytes"),
            (
                Error::SummaryUnreadable { stamp: "S".into(), detail: "gone".into() },
                "the summary of snapshot S cannot be read (gone): run `atosnap verify --repair` to rebuild it, then tag again",
            ),
            (Error::ServeRuntime("cannot watch SIGINT: x".into()), "cannot watch SIGINT: x"),
            (Error::DemoFixtures("reading fixtures: x".into()), "reading fixtures: x"),
        ];
        for (e, text) in cases {
            assert_eq!(e.code(), "error", "{e:?}");
            assert_eq!(e.exit_code(), 1, "{e:?}");
            assert_eq!(e.to_string(), text);
        }
    }
}
