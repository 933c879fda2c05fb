//! The previous snapshot as `create` uses it: the files cache, the old
//! trees new lists are built against, and the check of what the new
//! manifest references.

use crate::stamp::Stamp;
use crate::store::index::ChunkIndex;
use crate::store::manifest::{ChunkList, Entry, Manifest};
use crate::store::{ReadFrom, Store};

/// The previous snapshot, for the files cache and as the old trees.
pub(super) struct Previous {
    pub manifest: Manifest,
    /// The readable snapshot before it, when it is suspect: the trees its
    /// own trees were built against (see `Packer::add_list`).
    pub older: Option<Manifest>,
    /// Its summary does not say it validated (a capture error, or `verify
    /// --repair` found chunks of it lost): the cache then checks that a
    /// file's chunks are all stored before it vouches for the file.
    pub suspect: bool,
}

/// The newest snapshot whose manifest reads, for the files cache. Only
/// snapshots not after this one's second count: one under a far-future
/// stamp (a wrong clock, a forged folder) would otherwise be the newest
/// forever and stand in for every later create's previous snapshot.
pub(super) fn newest_manifest(store: &Store, wanted: &Stamp) -> Option<Previous> {
    let listing = store.list_snapshots().ok()?;
    let mut readable = listing
        .stamps
        .iter()
        .rev()
        .filter(|s| s.time() <= wanted.time())
        .take(4)
        .filter_map(|s| Some((s, store.read_manifest(s, ReadFrom::Cache).ok()?)));
    let (stamp, manifest) = readable.next()?;
    let suspect = !store.summary_says_validated(stamp);
    Some(Previous {
        manifest,
        older: suspect.then(|| readable.next().map(|(_, m)| m)).flatten(),
        suspect,
    })
}

/// The chunk ids (format 1) and list roots (format 2) of the new manifest
/// that the index lacks. Trees copied from the previous snapshot are
/// trusted below their root (the shared lock keeps gc out; verify audits
/// them); nothing is looked up when no file was read (`index` None).
pub(super) fn unresolved_references(
    manifest: &Manifest,
    index: Option<&ChunkIndex>,
) -> crate::error::Result<Vec<String>> {
    let Some(index) = index else {
        return Ok(Vec::new());
    };
    let mut missing = Vec::new();
    let ids = manifest
        .entries
        .iter()
        .filter_map(Entry::file)
        .flat_map(|f| match &f.list {
            ChunkList::Ids(ids) => ids.clone(),
            ChunkList::Tree(r) => r.root.into_iter().collect(),
        });
    for id in ids {
        if !index.contains(&id)? {
            missing.push(format!("chunk_missing:{id}"));
        }
    }
    missing.sort();
    missing.dedup();
    Ok(missing)
}
