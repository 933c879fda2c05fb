//! `tag STAMP --add T --remove T`: edits a snapshot's tags after the fact
//! (pin a pre-migration snapshot so `cleanup --keep-tag` keeps it).
//!
//! Where tags live: a snapshot's manifest records the tags it was taken
//! with, and is sealed and checksummed as a whole, so it is never
//! rewritten. Its summary `backup-metadata.json` carries a `tags` list too,
//! and that list is the authoritative one: `list` and `cleanup` read tags
//! from the summary (the manifest only when the summary is unreadable).
//! `tag` rewrites the summary under the store's exclusive lock through
//! [`Store::replace_metadata`] (atomic; sealed in an encrypted store), so
//! a cleanup never sees half an edit and never runs in the middle of one.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::stamp::Stamp;
use crate::store::Store;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TagResult {
    pub stamp: String,
    pub tags_before: Vec<String>,
    pub tags: Vec<String>,
    /// Tags that were added (not already there).
    pub added: Vec<String>,
    /// Tags that were removed (that were there).
    pub removed: Vec<String>,
    /// Whether the summary was rewritten.
    pub changed: bool,
}

/// The new tag list: `before` without `remove`, then `add` appended in
/// order, no duplicates. Removal comes first, so `--remove t --add t`
/// keeps `t`.
pub fn edit(before: &[String], add: &[String], remove: &[String]) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for t in before.iter().filter(|t| !remove.contains(t)) {
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    for t in add {
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    tags
}

/// The tags of a new snapshot, given as `what` (`--tag`, or the `tags`
/// of a backup request): none blank, since `tag --remove` could never
/// take a blank one off again, and each once, in the order given.
pub fn new_tags(what: &str, tags: &[String]) -> Result<Vec<String>> {
    refuse_blank(what, tags.iter())?;
    Ok(edit(&[], tags, &[]))
}

fn refuse_blank<'a>(what: &str, mut tags: impl Iterator<Item = &'a String>) -> Result<()> {
    match tags.find(|t| t.trim().is_empty()) {
        Some(bad) => Err(Error::Usage(format!(
            "{what}: {bad:?} is not a tag (empty or blank)"
        ))),
        None => Ok(()),
    }
}

pub fn tag(
    store: &Store,
    stamp: &str,
    add: &[String],
    remove: &[String],
    lock_wait: Duration,
) -> Result<TagResult> {
    let stamp = Stamp::parse(stamp)?;
    if add.is_empty() && remove.is_empty() {
        return Err(Error::Usage(
            "tag: give at least one --add T or --remove T".into(),
        ));
    }
    refuse_blank("tag", add.iter().chain(remove))?;
    let lock = store.lock_exclusive("tag", lock_wait)?;
    if !store.snapshot_exists(&stamp)? {
        return Err(Error::SnapshotMissing {
            stamp: stamp.to_string(),
        });
    }
    let mut meta = store
        .read_metadata(&stamp)
        .map_err(|e| Error::SummaryUnreadable {
            stamp: stamp.to_string(),
            detail: e.to_string(),
        })?;
    let before: Vec<String> = meta
        .get("tags")
        .and_then(|t| serde_json::from_value(t.clone()).ok())
        .unwrap_or_default();
    let tags = edit(&before, add, remove);
    let changed = tags != before;
    if changed {
        meta["tags"] = serde_json::json!(tags);
        store.replace_metadata(&lock, &stamp, &meta)?;
    }
    Ok(TagResult {
        stamp: stamp.to_string(),
        added: tags
            .iter()
            .filter(|t| !before.contains(t))
            .cloned()
            .collect(),
        removed: before
            .iter()
            .filter(|t| !tags.contains(t))
            .cloned()
            .collect(),
        tags_before: before,
        tags,
        changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn edits_keep_order_and_drop_duplicates() {
        assert_eq!(
            edit(&v(&["a", "b"]), &v(&["c", "a"]), &v(&["b"])),
            v(&["a", "c"])
        );
        assert_eq!(edit(&v(&["a"]), &v(&["a"]), &v(&["a"])), v(&["a"]));
        assert_eq!(edit(&v(&[]), &v(&["x", "x"]), &v(&[])), v(&["x"]));
    }
}
