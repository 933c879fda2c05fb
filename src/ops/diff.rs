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

use crate::error::{Error, Result};
use crate::id::Id;
use crate::ops::mark::SpillDir;
use crate::stamp::Stamp;
use crate::store::chunk_index::spill::{Merged, Spillable};
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
    // One folder for every changed file's sorts (chosen once: a local
    // store's `tmp/` when it can be written).
    let spill = SpillDir::for_store(store)?;
    let mut out = DiffResult {
        from: a_stamp.to_string(),
        to: b_stamp.to_string(),
        ..DiffResult::default()
    };
    let a_map = contents(&a.entries);
    let b_map = contents(&b.entries);
    for (path, ea) in &a_map {
        crate::os::check_interrupted()?;
        match b_map.get(path) {
            None => out.removed.push(PathSize {
                path: lossy(path),
                size: size_of(ea),
            }),
            Some(eb) => {
                let (same, differing) = compare(store, &index, &spill, ea, eb)?;
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
fn compare(
    store: &Store,
    index: &ChunkIndex,
    spill: &SpillDir,
    a: &EntryKind,
    b: &EntryKind,
) -> Result<(bool, u64)> {
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
    // a delta leaf and the full leaf it equals). Both lists stream in file
    // order (equal?) into on-disk sorts, then merge: a 4 GiB HNSW file's
    // million ids are never held (they were: 90 MiB for diff at 4 GiB).
    let (mut sx, mut sy) = (spill.sorter(), spill.sorter());
    let (mut xs, mut ys) = (store.file_chunks(index, x)?, store.file_chunks(index, y)?);
    let mut same = x.size == y.size;
    let mut at = 0u64;
    loop {
        let (a, b) = (xs.next().transpose()?, ys.next().transpose()?);
        if a.is_none() && b.is_none() {
            break;
        }
        same &= a == b;
        if let Some(id) = a {
            sx.push(Occurrence { id, at })?;
        }
        if let Some(id) = b {
            sy.push(Occurrence { id, at })?;
        }
        at += 1;
    }
    let ids = |m: Merged<Occurrence>| m.map(|o| o.map(|o| o.id).map_err(Error::from));
    let (x_only, y_only) = only_each(
        ids(sx.finish()?),
        ids(sy.finish()?),
        |id| chunk_len(index, x, id),
        |id| chunk_len(index, y, id),
    )?;
    Ok((same, x_only.max(y_only)))
}

/// One place of a chunk in a file: sorted by id, every occurrence kept
/// (the place makes equal ids distinct keys).
struct Occurrence {
    id: Id,
    at: u64,
}

impl Spillable for Occurrence {
    const LEN: usize = 40;
    type Key = (Id, u64);

    fn key(&self) -> (Id, u64) {
        (self.id, self.at)
    }

    fn encode(&self, out: &mut [u8]) {
        self.id.encode(&mut out[..32]);
        out[32..].copy_from_slice(&self.at.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Occurrence {
        let mut at = [0u8; 8];
        at.copy_from_slice(&b[32..40]);
        Occurrence {
            id: <Id as Spillable>::decode(&b[..32]),
            at: u64::from_le_bytes(at),
        }
    }
}

/// Of two sorted id streams (each occurrence once), the bytes of the
/// occurrences of `xs` whose id `ys` lacks, and of `ys` whose id `xs`
/// lacks (`x_len`, `y_len` of each), in one merge.
fn only_each(
    xs: impl Iterator<Item = Result<Id>>,
    ys: impl Iterator<Item = Result<Id>>,
    x_len: impl Fn(&Id) -> Result<u64>,
    y_len: impl Fn(&Id) -> Result<u64>,
) -> Result<(u64, u64)> {
    let (mut xs, mut ys) = (xs.peekable(), ys.peekable());
    let (mut x_only, mut y_only) = (0u64, 0u64);
    loop {
        let next = match (head(&mut xs)?, head(&mut ys)?) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => return Ok((x_only, y_only)),
        };
        let (cx, cy) = (take_all(&mut xs, &next), take_all(&mut ys, &next));
        if cy == 0 {
            x_only += cx * x_len(&next)?;
        }
        if cx == 0 {
            y_only += cy * y_len(&next)?;
        }
    }
}

/// The id at the head of a sorted stream, or its error (taken).
fn head<I: Iterator<Item = Result<Id>>>(it: &mut std::iter::Peekable<I>) -> Result<Option<Id>> {
    match it.peek() {
        Some(Ok(id)) => Ok(Some(*id)),
        None => Ok(None),
        Some(Err(_)) => match it.next() {
            Some(Err(e)) => Err(e),
            _ => Ok(None),
        },
    }
}

/// Takes every occurrence of `id` at the head of a sorted stream.
fn take_all<I: Iterator<Item = Result<Id>>>(it: &mut std::iter::Peekable<I>, id: &Id) -> u64 {
    let mut n = 0;
    while it.next_if(|r| matches!(r, Ok(x) if x == id)).is_some() {
        n += 1;
    }
    n
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
            let lacking = |ps: &[Id], qs: &[Id]| {
                let other: HashSet<Id> = qs.iter().copied().collect();
                ps.iter().filter(|id| !other.contains(id)).map(|id| id.0[0] as u64 + 1).sum::<u64>()
            };
            let want = (lacking(&xs, &ys), lacking(&ys, &xs));
            xs.sort_unstable();
            ys.sort_unstable();
            let len = |id: &Id| Ok(id.0[0] as u64 + 1);
            let got = only_each(xs.into_iter().map(Ok), ys.into_iter().map(Ok), len, len).unwrap();
            prop_assert_eq!(got, want);
        }
    }
}
