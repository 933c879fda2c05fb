//! `verify --repair`: what is done about the damage an audit found, under
//! the exclusive store lock.
//!
//! 1. Temp files of dead writers are removed (none are live: the lock is
//!    exclusive).
//! 2. Each damaged pack is moved into `quarantine/` with a note saying why;
//!    nothing is ever deleted. Its name leaves `objects/` before anything
//!    new is written, so a rewritten pack may take the same name.
//! 3. The chunk index is rebuilt from the healthy packs. Every chunk a
//!    snapshot references that it lacks is looked for in the quarantined
//!    packs (this run's and earlier ones, so a repair cut short by a crash
//!    converges when run again); each copy found is checked against its id
//!    and, when intact, written into a fresh pack.
//! 4. Referenced chunks still absent are dropped from the store: the next
//!    `create` stores them again from the live data where it still holds
//!    them (the files cache never vouches for a file whose chunks are
//!    absent), which heals every snapshot that shares them.
//! 5. A snapshot whose summary (`backup-metadata.json`) is missing or
//!    corrupt gets a new one rebuilt from its manifest (a corrupt one is
//!    quarantined first).
//!
//! The report says what was moved, kept and lost, and which snapshots stay
//! damaged, with the files in them. A pack that merely could not be read
//! (permission denied, a timeout) is not damage: it is reported as
//! `unreadable` and left where it is.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::id::{Id, IdSet};
use crate::stamp::Stamp;
use crate::store::index::ChunkIndex;
use crate::store::lists::{self, BlobSource, Reached};
use crate::store::lock::ExclusiveLock;
use crate::store::manifest::{ChunkList, FileEntry, Manifest};
use crate::store::packer::Packer;
use crate::store::PackLayout;
use crate::store::{pack, Object, Store};
use crate::store::{BackendErrorKind, Check, ReadFrom};

use super::audit::{metadata_problem, Audit};
use super::report::{Quarantined, RepairReport, SnapshotHealth};

/// Repairs what `audit` found. The caller holds the exclusive lock.
pub fn repair(store: &Store, lock: &ExclusiveLock, audit: &Audit) -> Result<RepairReport> {
    let mut out = RepairReport {
        tmp_files_removed: store.clean_tmp(Some(lock))?.files,
        ..RepairReport::default()
    };

    for (name, reason) in &audit.report.damage {
        let moved_to = store.quarantine_object(lock, &Object::Listed(name.clone()), reason)?;
        out.quarantined.push(Quarantined {
            object: name.clone(),
            moved_to,
            reason: reason.clone(),
        });
    }

    // Chunks that any snapshot references (not only those audited: a
    // quarantined pack may hold others' chunks) and the healthy packs lack.
    out.unreadable = audit.report.unreadable.keys().cloned().collect();
    let mut index = store.load_index_rechecked()?;
    let stamps = store.list_snapshots()?.stamps;
    let mut readable = Vec::new();
    let mut unreadable: BTreeMap<String, String> = BTreeMap::new();
    let mut manifests = Vec::new();
    for stamp in &stamps {
        match store.read_manifest(stamp, ReadFrom::Cache) {
            Ok(m) => {
                manifests.push(m);
                readable.push(stamp.clone());
            }
            Err(e) => {
                unreadable.insert(stamp.to_string(), format!("{}: {e}", e.code()));
            }
        }
    }
    // Trees are walked through the healthy packs and, for list blobs
    // they lack, the quarantined ones: a tree whose blobs are salvageable
    // reveals the chunks below it in the same pass.
    let quarantine = Quarantine::read(store)?;
    let mut needed = IdSet::default();
    {
        let source = Salvageable {
            store,
            index: &index,
            quarantine: &quarantine,
        };
        for f in manifests
            .iter()
            .flat_map(|m| m.entries.iter().filter_map(|e| e.file()))
        {
            needed.extend(lacking(store, &source, &index, f)?);
        }
    }
    let mut packer = Packer::new(store);
    salvage(
        store,
        &mut index,
        &mut packer,
        &quarantine,
        &mut needed,
        &mut out,
    )?;
    packer.flush(&mut index)?;
    drop(manifests);
    // Salvaged chunks count only once their packs are in the store: a
    // failed upload fails the repair instead of reporting it healed.
    store.packs_durable()?;
    out.packs_written = packer
        .packs_written
        .iter()
        .map(|(id, _)| Object::Pack(*id).name())
        .collect();
    drop(packer);
    if !index.damaged.iter().any(|d| pack::is_unreadable(&d.detail)) {
        let mut lost: Vec<String> = needed.iter().map(Id::to_hex).collect();
        lost.sort();
        out.chunks_lost = lost;
    }

    // Summaries rebuilt from the manifests.
    for stamp in &audit.readable {
        if metadata_problem(store, stamp).is_none() {
            continue;
        }
        let m = store.read_manifest(stamp, ReadFrom::Cache)?;
        let summary = Object::summary(stamp);
        if store.object_exists(&summary).unwrap_or(false) {
            let moved_to = store.quarantine_object(lock, &summary, "summary does not read")?;
            out.quarantined.push(Quarantined {
                object: summary.name(),
                moved_to,
                reason: "summary does not read".into(),
            });
        }
        store.write_metadata(lock, stamp, &rebuilt_metadata(stamp, &m))?;
        out.metadata_rewritten.push(stamp.to_string());
    }

    // What stays damaged, in every snapshot.
    for stamp in &readable {
        let m = store.read_manifest(stamp, ReadFrom::Cache)?;
        // A file whose recorded size its chunks do not hold stays
        // damaged whatever is salvaged: the manifest is what is wrong.
        let wrong = audit.wrong_sizes.get(&stamp.to_string());
        let wrong_path = |p: &str| wrong.into_iter().flatten().any(|w| w.path == p);
        let mut damaged: Vec<String> = Vec::new();
        for e in &m.entries {
            let Some(f) = e.file() else { continue };
            let path = e.path_lossy();
            if wrong_path(&path)
                || !lacking(store, &store.list_blobs(&index), &index, f)?.is_empty()
            {
                damaged.push(path);
            }
        }
        if !damaged.is_empty() {
            mark_not_validated(store, lock, stamp, &damaged)?;
            out.still_damaged.insert(
                stamp.to_string(),
                SnapshotHealth {
                    ok: false,
                    damaged_files: damaged,
                    file_errors: wrong.into_iter().flatten().map(|w| w.to_string()).collect(),
                    ..SnapshotHealth::default()
                },
            );
        }
    }
    for (stamp, error) in unreadable {
        out.still_damaged.insert(
            stamp,
            SnapshotHealth {
                ok: false,
                error: Some(error),
                ..SnapshotHealth::default()
            },
        );
    }
    out.healed = out.still_damaged.is_empty() && out.unreadable.is_empty();
    Ok(out)
}

/// What the quarantined packs hold (read leniently, as salvage does):
/// each id with its pack, that pack's layout and the frame holding it.
struct Quarantine {
    entries: HashMap<Id, (Object, Arc<PackLayout>, usize)>,
}

impl Quarantine {
    fn read(store: &Store) -> Result<Quarantine> {
        let mut entries = HashMap::new();
        for q in store.list_quarantined_packs()? {
            let quarantined = Object::Listed(q.name.clone());
            let Ok(layout) = store.read_pack_layout(&quarantined, q.size, Check::Salvage) else {
                continue;
            };
            let layout = Arc::new(layout);
            for fi in 0..layout.frames.len() {
                for c in layout.frame_chunks(fi) {
                    entries
                        .entry(c.id)
                        .or_insert_with(|| (quarantined.clone(), layout.clone(), fi));
                }
            }
        }
        Ok(Quarantine { entries })
    }

    /// The raw bytes of `id` if a quarantined pack holds it intact (its
    /// frame opens and the chunk hashes to its id). Err only when the
    /// storage itself fails (a server gone away).
    fn raw(&self, store: &Store, id: &Id) -> Result<Option<Vec<u8>>> {
        let Some((pack, layout, fi)) = self.entries.get(id) else {
            return Ok(None);
        };
        let f = &layout.frames[*fi];
        let stored = match store.read_object_range(pack, f.offset as u64, f.stored_len as usize) {
            Ok(stored) => stored,
            // The pack ends early or is gone: this chunk is lost.
            Err(err) if pack_damage(&err) => return Ok(None),
            // The storage itself fails (a server gone away): each further
            // read would wait through its retries again, for nothing.
            Err(err) => return Err(Error::io("read", store.display(pack), err)),
        };
        let Ok(frame) = store.decode_frame(layout, *fi, stored) else {
            return Ok(None);
        };
        let raw = frame
            .chunks()
            .find(|(c, _)| c == id)
            .and_then(|(_, bytes)| bytes.ok().map(<[u8]>::to_vec));
        Ok(raw)
    }
}

/// List blobs from the healthy packs, else intact from quarantine.
struct Salvageable<'a> {
    store: &'a Store,
    index: &'a ChunkIndex,
    quarantine: &'a Quarantine,
}

impl BlobSource for Salvageable<'_> {
    fn get(&self, id: &Id) -> Result<Vec<u8>> {
        if self.index.contains(id)? {
            return self.store.list_blobs(self.index).get(id);
        }
        self.quarantine
            .raw(self.store, id)?
            .ok_or_else(|| Error::ChunkMissing { hash: id.to_hex() })
    }
}

/// Copies the chunks (and list blobs) in `needed` that the quarantined
/// packs still hold intact into new packs; what is left in `needed` is
/// lost.
fn salvage(
    store: &Store,
    index: &mut ChunkIndex,
    packer: &mut Packer<'_>,
    quarantine: &Quarantine,
    needed: &mut IdSet,
    out: &mut RepairReport,
) -> Result<()> {
    let mut ids: Vec<Id> = needed.iter().copied().collect();
    ids.sort();
    for id in ids {
        let Some(raw) = quarantine.raw(store, &id)? else {
            continue;
        };
        if packer.add_raw(index, id, &raw)? {
            out.chunks_salvaged += 1;
            out.bytes_salvaged += raw.len() as u64;
        }
        needed.remove(&id);
    }
    Ok(())
}

/// The ids file `f` reaches (list blobs and chunks) that the index lacks,
/// its tree read through `source`; a list blob that does not read is
/// among them (its subtree is unknown).
fn lacking(
    store: &Store,
    source: &dyn BlobSource,
    index: &ChunkIndex,
    f: &FileEntry,
) -> Result<Vec<Id>> {
    let mut out = Vec::new();
    // A cache read that fails stops the repair: the id is not lacking.
    let mut failed = None;
    let mut visit = |r| {
        let (Reached::Blob(id) | Reached::Chunk(id)) = r;
        match index.contains(&id) {
            Ok(true) => {}
            Ok(false) => out.push(id),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    };
    let walked = match &f.list {
        ChunkList::Tree(r) => lists::reach(
            source,
            &store.list_params(),
            r,
            &mut IdSet::default(),
            &mut visit,
        ),
        ChunkList::Ids(_) => store.file_reach(index, f, &mut IdSet::default(), &mut visit),
    };
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some((id, _)) = walked.err().as_ref().and_then(crate::store::error_fault) {
        out.push(id);
    }
    Ok(out)
}

/// Records in a snapshot's summary that files of it stay damaged, so
/// that `create`'s files cache no longer vouches for its files unread.
fn mark_not_validated(
    store: &Store,
    lock: &ExclusiveLock,
    stamp: &Stamp,
    damaged: &[String],
) -> Result<()> {
    let Ok(mut summary) = store.read_metadata(stamp) else {
        return Ok(());
    };
    if summary.get("validated") == Some(&serde_json::Value::Bool(false)) {
        return Ok(());
    }
    summary["validated"] = serde_json::Value::Bool(false);
    let mut errors = summary["validation_errors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    errors.extend(
        damaged
            .iter()
            .map(|p| serde_json::Value::String(format!("file_damaged: {p} (verify --repair)"))),
    );
    summary["validation_errors"] = serde_json::Value::Array(errors);
    store.replace_metadata(lock, stamp, &summary)
}

/// Whether a failed read of a quarantined pack says something about the
/// pack (cut short, or gone) rather than about the storage.
fn pack_damage(e: &std::io::Error) -> bool {
    BackendErrorKind::of(e) == BackendErrorKind::NotFound
        || e.kind() == std::io::ErrorKind::UnexpectedEof
}

/// A snapshot's summary as `create` writes it, from its manifest (the
/// figures of the run that made it, such as bytes stored, are gone).
fn rebuilt_metadata(stamp: &Stamp, m: &Manifest) -> serde_json::Value {
    serde_json::json!({
        "stamp": stamp.to_string(),
        "created_at": m.created_at,
        "tags": m.tags,
        "db_size_bytes": m.db_size(),
        "registry_snapshot_included": m.registry().is_some(),
        "chroma_snapshot_included": m.chroma_included,
        "chroma_snapshot_files": m.chroma_file_count(),
        "chroma_snapshot_bytes": m.chroma_bytes(),
        "chunks_total": m.entries.iter().filter_map(|e| e.file()).map(|f| f.list.len()).sum::<u64>(),
        "validated": m.capture_errors.is_empty(),
        "validation_errors": m.capture_errors,
        "warnings": [],
        "rebuilt_by": "verify --repair",
        "rebuilt_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}
