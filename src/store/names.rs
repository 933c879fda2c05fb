//! Names of the store's objects, in one place (as restic's `Handle{Type,
//! Name}` and rustic's `FileType` + id): commands and the `Store` parts
//! name an object with an [`Object`] (a folder with a [`Dir`]) and never
//! build its path themselves. The strings are exactly the on-disk layout of
//! `docs/FORMAT.md`.

use crate::id::Id;
use crate::stamp::Stamp;

pub const CONFIG_NAME: &str = "config.json";
pub const MANIFEST_NAME: &str = "manifest.bin";
pub const METADATA_NAME: &str = "backup-metadata.json";

/// A folder of the store (rustic's `FileType::dirname`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// `objects/`: the packs, fanned out by the first byte of their id.
    Packs,
    /// `snapshots/`: one folder per snapshot.
    Snapshots,
    /// An audit log's folder (`drills/`, `verifies/`, `copies/`).
    Log(Log),
    /// `locks/`: the store lock and its holders (lock objects on a bucket).
    Locks,
    /// `tmp/`: temp files of running writers.
    Tmp,
    /// `quarantine/`: damaged objects moved aside, beside their notes.
    Quarantine,
}

impl Dir {
    /// The folder's name relative to the store root.
    pub const fn name(self) -> &'static str {
        match self {
            Dir::Packs => "objects",
            Dir::Snapshots => "snapshots",
            Dir::Log(log) => log.dir(),
            Dir::Locks => "locks",
            Dir::Tmp => "tmp",
            Dir::Quarantine => "quarantine",
        }
    }

    /// Whether `name` (as a listing of the store gives it) is below this
    /// folder.
    pub fn holds(self, name: &str) -> bool {
        name.strip_prefix(self.name())
            .is_some_and(|rest| rest.starts_with('/'))
    }
}

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
    /// `config.json`
    Config,
    /// `keys/repokey.json`: an encrypted store's wrapped master key.
    KeyFile,
    /// `policy.json`: the retention policy `cleanup` applies.
    Policy,
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
    /// `locks/<mode>-<owner>.json`: a lock object on a bucket.
    Lock { mode: String, owner: String },
    /// `quarantine/<file>`: a damaged object moved aside, or its note.
    Quarantined(String),
    /// An object by the name the store itself gave it: a listing's entry
    /// or an audit's finding, handed back to the store as it came.
    Listed(String),
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
            Object::Config => CONFIG_NAME.to_string(),
            Object::KeyFile => super::key::KEY_FILE.to_string(),
            Object::Policy => "policy.json".to_string(),
            Object::Pack(id) => {
                let hex = id.to_hex();
                format!("{}/{}/{}.pack", Dir::Packs.name(), &hex[..2], hex)
            }
            Object::SnapshotDir(folder) => format!("{}/{folder}", Dir::Snapshots.name()),
            Object::Manifest(folder) => {
                format!("{}/{folder}/{MANIFEST_NAME}", Dir::Snapshots.name())
            }
            Object::Summary(folder) => {
                format!("{}/{folder}/{METADATA_NAME}", Dir::Snapshots.name())
            }
            Object::LogRecord(log, file) => format!("{}/{file}", log.dir()),
            Object::Lock { mode, owner } => format!("{}/{mode}-{owner}.json", Dir::Locks.name()),
            Object::Quarantined(file) => format!("{}/{file}", Dir::Quarantine.name()),
            Object::Listed(name) => name.clone(),
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
        assert_eq!(Object::Config.name(), "config.json");
        assert_eq!(Object::KeyFile.name(), "keys/repokey.json");
        assert_eq!(Object::Policy.name(), "policy.json");
        assert_eq!(
            Object::LogRecord(Log::Drill, "x.json".into()).name(),
            "drills/x.json"
        );
        assert_eq!(Log::Verify.dir(), "verifies");
        assert_eq!(Log::Copy.dir(), "copies");
        let lock = Object::Lock {
            mode: "shared".into(),
            owner: "h-1-0000000a".into(),
        };
        assert_eq!(lock.name(), "locks/shared-h-1-0000000a.json");
        assert_eq!(
            Object::Quarantined("x.pack".into()).name(),
            "quarantine/x.pack"
        );
        assert_eq!(Object::Listed("tmp/x".into()).name(), "tmp/x");
        let dirs = [
            Dir::Packs,
            Dir::Snapshots,
            Dir::Log(Log::Drill),
            Dir::Locks,
            Dir::Tmp,
            Dir::Quarantine,
        ];
        let names: Vec<_> = dirs.iter().map(|d| d.name()).collect();
        assert_eq!(
            names,
            [
                "objects",
                "snapshots",
                "drills",
                "locks",
                "tmp",
                "quarantine"
            ]
        );
        assert!(Dir::Tmp.holds("tmp/x.pack"));
        assert!(!Dir::Tmp.holds("tmpfile"));
        assert!(!Dir::Tmp.holds("objects/tmp/x"));
        assert!(!Dir::Locks.holds("locks"));
    }
}
