//! Names of the store's objects, in one place (as restic's `Handle{Type,
//! Name}` and rustic's `FileType` + id): commands and the `Store` parts
//! name an object with an [`Object`] and never build its path themselves.
//! The strings are exactly the on-disk layout of `docs/FORMAT.md`.

use crate::id::Id;
use crate::stamp::Stamp;

pub const CONFIG_NAME: &str = "config.json";
pub const MANIFEST_NAME: &str = "manifest.bin";
pub const METADATA_NAME: &str = "backup-metadata.json";
pub const QUARANTINE_DIR: &str = "quarantine";
pub const SNAPSHOTS_DIR: &str = "snapshots";

/// One of the store's audit logs: write-once records of what a command
/// found or did (see `store::audit_log`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Log {
    /// `drills/`: one record per drill.
    Drill,
    /// `verifies/`: one record per verify.
    Verify,
    /// `copies/`: one record per copy run (kept in the source store).
    Copy,
}

impl Log {
    pub const ALL: [Log; 3] = [Log::Drill, Log::Verify, Log::Copy];

    /// The log's folder (also the associated data its records are sealed under).
    pub const fn dir(self) -> &'static str {
        match self {
            Log::Drill => "drills",
            Log::Verify => "verifies",
            Log::Copy => "copies",
        }
    }
}

/// One object (or folder) of the store. A snapshot folder is named by its
/// stamp, or, for a folder a crashed writer left, by whatever name it has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    /// `objects/<xx>/<hex>.pack`
    Pack(Id),
    /// `snapshots/<folder>`
    SnapshotDir(String),
    /// `snapshots/<folder>/manifest.bin`
    Manifest(String),
    /// `snapshots/<folder>/backup-metadata.json`
    Summary(String),
    /// `<log dir>/<file>`: one record of an audit log.
    LogRecord(Log, String),
}

impl Object {
    pub fn manifest(stamp: &Stamp) -> Object {
        Object::Manifest(stamp.to_string())
    }

    pub fn summary(stamp: &Stamp) -> Object {
        Object::Summary(stamp.to_string())
    }

    pub fn snapshot_dir(stamp: &Stamp) -> Object {
        Object::SnapshotDir(stamp.to_string())
    }

    /// The object's name relative to the store root.
    pub fn name(&self) -> String {
        match self {
            Object::Pack(id) => {
                let hex = id.to_hex();
                format!("objects/{}/{}.pack", &hex[..2], hex)
            }
            Object::SnapshotDir(folder) => format!("{SNAPSHOTS_DIR}/{folder}"),
            Object::Manifest(folder) => format!("{SNAPSHOTS_DIR}/{folder}/{MANIFEST_NAME}"),
            Object::Summary(folder) => format!("{SNAPSHOTS_DIR}/{folder}/{METADATA_NAME}"),
            Object::LogRecord(log, file) => format!("{}/{file}", log.dir()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are the on-disk layout, unchanged.
    #[test]
    fn names_are_the_on_disk_layout() {
        let id = Id::from_hex(&"ab".repeat(32)).unwrap();
        assert_eq!(
            Object::Pack(id).name(),
            format!("objects/ab/{}.pack", "ab".repeat(32))
        );
        let stamp = Stamp::parse("20260411T120000Z").unwrap();
        assert_eq!(
            Object::snapshot_dir(&stamp).name(),
            "snapshots/20260411T120000Z"
        );
        assert_eq!(
            Object::manifest(&stamp).name(),
            "snapshots/20260411T120000Z/manifest.bin"
        );
        assert_eq!(
            Object::summary(&stamp).name(),
            "snapshots/20260411T120000Z/backup-metadata.json"
        );
        assert_eq!(
            Object::Manifest(".incomplete-x".into()).name(),
            "snapshots/.incomplete-x/manifest.bin"
        );
        assert_eq!(
            Object::LogRecord(Log::Drill, "x.json".into()).name(),
            "drills/x.json"
        );
        assert_eq!(Log::Verify.dir(), "verifies");
        assert_eq!(Log::Copy.dir(), "copies");
    }
}
