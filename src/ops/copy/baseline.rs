//! A re-keying copy (the two stores name chunks differently) without
//! reading again what an earlier copy re-keyed. A snapshot copied before
//! is at both stores, each of its files listing the same chunks in the
//! same order under the two names: zipping the two lists gives each source
//! id its destination id. A file whose source tree is the one it had then
//! takes the destination's tree whole; a changed file reads and re-hashes
//! only the chunks its earlier version did not hold. Without this, every
//! run re-read and re-hashed every chunk of every snapshot it copied (a
//! daily copy to an off-site store of its own key read the whole runtime).
//! Across runs only into a local store: a bucket's trees would come through
//! the spool, whole packs downloaded for their list blobs.
//!
//! Trust: an earlier snapshot counts only when the destination vouches for
//! what its published snapshots hold (as a same-key copy trusts their
//! trees), its summary says validated, both summaries agree on the
//! snapshot's facts, and, per file, the sizes and chunk counts agree and
//! the first chunk, read at the source and re-hashed, has the id the
//! destination lists first (another snapshot under the same stamp cannot
//! pass for the copy).

use std::cell::RefCell;
use std::collections::HashMap;

use crate::id::Id;
use crate::stamp::Stamp;
use crate::store::index::ChunkIndex;
use crate::store::list_stream::SharedBlobs;
use crate::store::lists::{ListIter, ListRef};
use crate::store::manifest::{ChunkList, FileEntry, Manifest};
use crate::store::{ReadFrom, Store};

/// The files of a snapshot at both stores, by path: as the source holds
/// it, and the destination's tree.
pub(super) struct Baseline {
    files: HashMap<Vec<u8>, (FileEntry, ListRef)>,
}

/// A snapshot's files as the source holds them, by path: format-2 trees
/// only (a format-1 list is every id of the file, too large to keep for
/// the next snapshot; such a source is read whole, as before).
pub(super) type SourceFiles = HashMap<Vec<u8>, FileEntry>;

/// What a [`Baseline`] keeps of a snapshot read at the source.
pub(super) fn source_files(m: &Manifest) -> SourceFiles {
    m.entries
        .iter()
        .filter_map(|e| {
            let f = e.file()?;
            matches!(f.list, ChunkList::Tree(_)).then(|| (e.path.clone(), f.clone()))
        })
        .collect()
}

impl Baseline {
    /// A snapshot this run copied: its files as read at the source, and
    /// the manifest published at the destination.
    pub fn copied(from: SourceFiles, to: &Manifest) -> Baseline {
        let theirs: HashMap<&[u8], ListRef> = to
            .entries
            .iter()
            .filter_map(|e| match &e.file()?.list {
                ChunkList::Tree(r) => Some((&e.path[..], *r)),
                ChunkList::Ids(_) => None,
            })
            .collect();
        let files = from
            .into_iter()
            .filter_map(|(path, f)| {
                let list = *theirs.get(&path[..])?;
                (list.chunks == f.list.len()).then_some((path, (f, list)))
            })
            .collect();
        Baseline { files }
    }

    /// The newest snapshot both stores hold that the destination vouches
    /// for (`vouched`: see `summaries_vouch`), if any.
    pub fn published(from: &Store, to: &Store, vouched: bool) -> Option<Baseline> {
        if !vouched {
            return None;
        }
        let at_source: std::collections::HashSet<Stamp> =
            from.list_snapshots().ok()?.stamps.into_iter().collect();
        let mut there = to.list_snapshots().ok()?.stamps;
        there.sort();
        let stamp = there.into_iter().rev().find(|s| {
            at_source.contains(s)
                && to.summary_says_validated(s)
                && super::same_snapshot(from, to, s)
        })?;
        let from_manifest = from.read_manifest(&stamp, ReadFrom::Cache).ok()?;
        let to_manifest = to.read_manifest(&stamp, ReadFrom::Cache).ok()?;
        Some(Baseline::copied(source_files(&from_manifest), &to_manifest))
    }

    /// The destination's trees by path (what new trees are built against).
    pub fn trees(&self) -> HashMap<Vec<u8>, ListRef> {
        self.files
            .iter()
            .map(|(path, (_, list))| (path.clone(), *list))
            .collect()
    }

    /// The destination's tree for `f` at `path` when `f` lists what it
    /// listed then (the same tree, or the same ids).
    pub fn unchanged(&self, path: &[u8], f: &FileEntry) -> Option<ListRef> {
        let (then, list) = self.files.get(path)?;
        (then.size == f.size && then.list == f.list).then_some(*list)
    }

    /// A cursor naming, window by window, the destination id of each chunk
    /// the file at `path` lists at the place its earlier version listed it
    /// (SQLite pages and HNSW blocks keep their places; a content-defined
    /// file matches up to its first shift): what need not be read. None
    /// when there is no earlier version, or its first pair does not check
    /// out (read at the source and re-hashed).
    pub fn cursor<'a>(
        &self,
        path: &[u8],
        (from, from_index): (&'a Store, &'a ChunkIndex),
        (to, to_index): (&'a Store, &'a RefCell<ChunkIndex>),
    ) -> Option<KnownCursor<'a>> {
        let (then, list) = self.files.get(path)?;
        let ChunkList::Tree(ours) = &then.list else {
            return None;
        };
        let blobs = SharedBlobs {
            store: to,
            index: to_index,
        };
        let mut ours =
            ListIter::new(from.list_blobs(from_index), &from.list_params(), ours).ok()?;
        let mut theirs = ListIter::new(blobs, &to.list_params(), list).ok()?;
        let (Some(Ok(first)), Some(Ok(first_there))) = (ours.next(), theirs.next()) else {
            return None;
        };
        match from.read_chunk(from_index, &first) {
            Ok(raw) if to.sealer().chunk_id(&raw) == first_there => {}
            _ => return None,
        }
        Some(KnownCursor {
            first: Some((first, first_there)),
            ours,
            theirs,
            ended: false,
        })
    }
}

/// The earlier version of a file at both stores, walked in step (see
/// [`Baseline::cursor`]). Memory: one leaf of each tree, and the window's
/// names (33 bytes per chunk of the window).
pub(super) struct KnownCursor<'a> {
    /// The checked first pair, not yet handed out.
    first: Option<(Id, Id)>,
    ours: ListIter<'a>,
    theirs: ListIter<'a>,
    /// A list stopped (a blob unread, or the earlier version ended).
    ended: bool,
}

impl KnownCursor<'_> {
    /// For each of `window` (the file's next ids now), its destination id
    /// when the earlier version listed that chunk at that place. A list
    /// that stops reading part-way leaves the rest unknown: never wrong,
    /// only read as without a baseline.
    pub fn next_window(&mut self, window: &[Id]) -> Vec<Option<Id>> {
        let mut named = vec![None; window.len()];
        for (now, slot) in window.iter().zip(named.iter_mut()) {
            let Some((a, b)) = self.next_pair() else {
                break;
            };
            if *now == a {
                *slot = Some(b);
            }
        }
        named
    }

    fn next_pair(&mut self) -> Option<(Id, Id)> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if self.ended {
            return None;
        }
        match (self.ours.next(), self.theirs.next()) {
            (Some(Ok(a)), Some(Ok(b))) => Some((a, b)),
            _ => {
                self.ended = true;
                None
            }
        }
    }
}
