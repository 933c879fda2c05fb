//! The three sources of an AtoCore runtime: the SQLite database (online
//! backup API), the project registry, and the Chroma directory tree.

pub mod paths;

pub mod chroma;
pub mod restore_patch;
pub mod sqlite;

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

use crate::store::manifest::SourceStat;

/// The identity of a file for change detection and the files cache.
pub fn source_stat(m: &Metadata) -> SourceStat {
    SourceStat {
        size: m.len(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        ino: m.ino(),
        dev: m.dev(),
    }
}

pub fn mtime_ns(m: &Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}
