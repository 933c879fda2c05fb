//! `diff A B`: what changed between two snapshots, from their manifests
//! and chunk lists (no chunk is read). This module owns the comparison.
//! Two files with the same list root are unchanged without reading their
//! lists; only the lists of files whose roots differ are read.
//!
//! Files and symlinks are compared by path; folders are not listed (their
//! content is). A file is changed when its chunk list differs; a symlink
//! when its target differs (its "size" is the target's length). Mode- and
//! mtime-only changes are not content changes and are not listed.
//!
//! `bytes_differing` is counted in chunks' raw bytes: the larger of the
//! bytes of B's chunks that A's file does not have and the bytes of A's
//! chunks that B's file does not have. So a rewritten 4 KiB page counts
//! 4 KiB, an append counts what was appended, a truncation what was cut.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::error::Result;
use crate::id::Id;
use crate::stamp::Stamp;
use crate::store::index::ChunkIndex;
use crate::store::manifest::{Entry, EntryKind, FileEntry};
use crate::store::ReadFrom;
use crate::store::Store;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathSize {
    pub path: String,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    pub path: String,
    pub size_from: u64,
    pub size_to: u64,
    pub bytes_differing: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DiffResult {
    pub from: String,
    pub to: String,
    pub added: Vec<PathSize>,
    pub removed: Vec<PathSize>,
    pub changed: Vec<Changed>,
    pub unchanged_files: u64,
}

/// Compares snapshot `from` with snapshot `to`.
pub fn diff(store: &Store, from: &str, to: &str) -> Result<DiffResult> {
    let a_stamp = Stamp::parse(from)?;
    let b_stamp = Stamp::parse(to)?;
    let a = store.read_manifest(&a_stamp, ReadFrom::Cache)?;
    let b = store.read_manifest(&b_stamp, ReadFrom::Cache)?;
    let index = store.load_index()?;
    let mut out = DiffResult {
        from: a_stamp.to_string(),
        to: b_stamp.to_string(),
        ..DiffResult::default()
    };
    let a_map = contents(&a.entries);
    let b_map = contents(&b.entries);
    for (path, ea) in &a_map {
        match b_map.get(path) {
            None => out.removed.push(PathSize {
                path: lossy(path),
                size: size_of(ea),
            }),
            Some(eb) => {
                let (same, differing) = compare(store, &index, ea, eb)?;
                if differing == 0 && same {
                    out.unchanged_files += 1;
                } else {
                    out.changed.push(Changed {
                        path: lossy(path),
                        size_from: size_of(ea),
                        size_to: size_of(eb),
                        bytes_differing: differing,
                    });
                }
            }
        }
    }
    for (path, eb) in &b_map {
        if !a_map.contains_key(path) {
            out.added.push(PathSize {
                path: lossy(path),
                size: size_of(eb),
            });
        }
    }
    Ok(out)
}

fn contents(entries: &[Entry]) -> BTreeMap<&[u8], &EntryKind> {
    entries
        .iter()
        .filter(|e| !matches!(e.kind, EntryKind::Dir))
        .map(|e| (&e.path[..], &e.kind))
        .collect()
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

fn size_of(k: &EntryKind) -> u64 {
    match k {
        EntryKind::File(f) => f.size,
        EntryKind::Symlink { target } => target.len() as u64,
        EntryKind::Dir => 0,
    }
}

/// Whether two entries hold the same content, and the bytes that differ.
fn compare(store: &Store, index: &ChunkIndex, a: &EntryKind, b: &EntryKind) -> Result<(bool, u64)> {
    let (x, y) = match (a, b) {
        (EntryKind::File(x), EntryKind::File(y)) => (x, y),
        (EntryKind::Symlink { target: x }, EntryKind::Symlink { target: y }) if x == y => {
            return Ok((true, 0))
        }
        _ => return Ok((false, size_of(a).max(size_of(b)).max(1))),
    };
    if x.size == y.size && x.list == y.list {
        return Ok((true, 0));
    }
    // Roots differ: the ids decide (one content may have two trees, e.g.
    // a delta leaf and the full leaf it equals).
    let (mut xs, mut ys) = (
        store.file_chunk_ids(index, x)?,
        store.file_chunk_ids(index, y)?,
    );
    let same = x.size == y.size && xs == ys;
    // Sorted in place and merged: no set of a large file's ids (a
    // million for a 4 GiB HNSW file) beside its two lists.
    xs.sort_unstable();
    ys.sort_unstable();
    let differing = only(&ys, &xs, |id| chunk_len(index, y, id))?
        .max(only(&xs, &ys, |id| chunk_len(index, x, id))?);
    Ok((same, differing))
}

/// The bytes (`len` of each) of the chunks of `ps` (sorted, each
/// occurrence counted) that `qs` (sorted) does not hold.
fn only(ps: &[Id], qs: &[Id], len: impl Fn(&Id) -> Result<u64>) -> Result<u64> {
    let mut q = qs.iter().peekable();
    let mut bytes = 0;
    for id in ps {
        while q.next_if(|other| *other < id).is_some() {}
        if q.peek() != Some(&id) {
            bytes += len(id)?;
        }
    }
    Ok(bytes)
}

/// A chunk's raw length from the index; for a chunk the store lost, the
/// file's average chunk size.
fn chunk_len(index: &ChunkIndex, file: &FileEntry, id: &Id) -> Result<u64> {
    Ok(match index.get(id)? {
        Some(loc) => loc.raw_len as u64,
        None => file.size / file.list.len().max(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    proptest! {
        /// The merge counts what a set of the other list's ids would: each
        /// occurrence of an id the other list lacks.
        #[test]
        fn the_merge_counts_what_a_set_would(
            a in proptest::collection::vec(0u8..16, 0..64),
            b in proptest::collection::vec(0u8..16, 0..64),
        ) {
            let ids = |v: &[u8]| -> Vec<Id> { v.iter().map(|&n| Id([n; 32])).collect() };
            let (mut xs, mut ys) = (ids(&a), ids(&b));
            let other: HashSet<Id> = ys.iter().copied().collect();
            let want = xs.iter().filter(|id| !other.contains(id)).count() as u64;
            xs.sort_unstable();
            ys.sort_unstable();
            prop_assert_eq!(only(&xs, &ys, |_| Ok(1)).unwrap(), want);
        }
    }
}
