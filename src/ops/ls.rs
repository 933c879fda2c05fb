//! `ls STAMP [PATH]`: a snapshot's entries from its manifest (no chunk is
//! read): path, kind, size, mode, mtime; with `--long` the chunk count of
//! each file. PATH selects an entry and everything below it (`chroma`,
//! `chroma/<segment>`, `atocore.db`, `project-registry.json`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::stamp::Stamp;
use crate::store::manifest::{Entry, EntryKind, Manifest};
use crate::store::ReadFrom;
use crate::store::Store;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LsEntry {
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    /// Bytes of a file (0 for folders and symlinks).
    pub size: u64,
    /// Permission bits, octal (`0644`).
    pub mode: String,
    /// RFC 3339, UTC.
    pub mtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `--long`: the file's chunks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u64>,
    /// `--long`: captured through the SQLite backup API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlite: Option<bool>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LsResult {
    pub stamp: String,
    /// The PATH asked for (null: the whole snapshot).
    pub path: Option<String>,
    pub entries: Vec<LsEntry>,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Sum of the listed files' sizes.
    pub total_bytes: u64,
}

/// `./chroma/seg/` → `chroma/seg`; `""` and `.` → the whole snapshot.
pub fn normalize(path: &str) -> Option<String> {
    let p = path.trim_start_matches("./").trim_end_matches('/');
    (!p.is_empty() && p != ".").then(|| p.to_string())
}

/// Whether `entry` is `path` or below it.
pub fn selects(path: &str, entry: &Entry) -> bool {
    let e = &entry.path[..];
    let p = path.as_bytes();
    e == p || (e.len() > p.len() && e.starts_with(p) && e[p.len()] == b'/')
}

/// The entries `path` selects (all for None); an empty selection is
/// [`Error::PathNotInSnapshot`].
pub fn select<'m>(manifest: &'m Manifest, path: Option<&str>) -> Result<Vec<&'m Entry>> {
    let chosen: Vec<&Entry> = manifest
        .entries
        .iter()
        .filter(|e| path.is_none_or(|p| selects(p, e)))
        .collect();
    match path {
        Some(p) if chosen.is_empty() => Err(Error::PathNotInSnapshot {
            stamp: manifest.stamp.clone(),
            path: p.to_string(),
        }),
        _ => Ok(chosen),
    }
}

pub fn kind_name(kind: &EntryKind) -> &'static str {
    match kind {
        EntryKind::File(_) => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink { .. } => "symlink",
    }
}

pub fn ls(store: &Store, stamp: &str, path: Option<&str>, long: bool) -> Result<LsResult> {
    let stamp = Stamp::parse(stamp)?;
    let manifest = store.read_manifest(&stamp, ReadFrom::Cache)?;
    let path = path.and_then(normalize);
    let mut entries: Vec<LsEntry> = select(&manifest, path.as_deref())?
        .into_iter()
        .map(|e| describe(e, long))
        .collect();
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let count = |k: &str| entries.iter().filter(|e| e.kind == k).count() as u64;
    Ok(LsResult {
        stamp: stamp.to_string(),
        files: count("file"),
        dirs: count("dir"),
        symlinks: count("symlink"),
        total_bytes: entries.iter().map(|e| e.size).sum(),
        path,
        entries,
    })
}

fn describe(e: &Entry, long: bool) -> LsEntry {
    let mtime = chrono::DateTime::from_timestamp_nanos(e.mtime_ns)
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    let (size, target, chunks, sqlite) = match &e.kind {
        EntryKind::File(f) => (f.size, None, Some(f.list.len()), Some(f.sqlite)),
        EntryKind::Dir => (0, None, None, None),
        EntryKind::Symlink { target } => (
            0,
            Some(String::from_utf8_lossy(target).into_owned()),
            None,
            None,
        ),
    };
    LsEntry {
        path: e.path_lossy(),
        kind: kind_name(&e.kind).to_string(),
        size,
        mode: format!("{:04o}", e.mode & 0o7777),
        mtime,
        target,
        chunks: chunks.filter(|_| long),
        sqlite: sqlite.filter(|_| long),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind: EntryKind::Dir,
            mode: 0o40755,
            mtime_ns: 0,
        }
    }

    #[test]
    fn a_path_selects_itself_and_what_is_below_it_only() {
        assert!(selects("chroma", &entry("chroma")));
        assert!(selects("chroma", &entry("chroma/a/b")));
        assert!(!selects("chroma", &entry("chromatic")));
        assert!(!selects("chroma/a", &entry("chroma/ab")));
        assert_eq!(normalize("./chroma/a/").as_deref(), Some("chroma/a"));
        assert_eq!(normalize("."), None);
        assert_eq!(describe(&entry("chroma"), false).mode, "0755");
    }
}
