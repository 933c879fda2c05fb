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

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::id::{Id, IdSet};
use crate::stamp::Stamp;
use crate::store::lock::ExclusiveLock;
use crate::store::manifest::Manifest;
use crate::store::packer::Packer;
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
    let mut index = store.load_index()?;
    let stamps = store.list_snapshots()?.stamps;
    let mut readable = Vec::new();
    let mut unreadable: BTreeMap<String, String> = BTreeMap::new();
    let mut needed = IdSet::default();
    for stamp in &stamps {
        match store.read_manifest(stamp, ReadFrom::Cache) {
            Ok(m) => {
                needed.extend(
                    m.entries
                        .iter()
                        .filter_map(|e| e.file())
                        .flat_map(|f| f.chunks.iter())
                        .filter(|id| !index.contains(id))
                        .copied(),
                );
                readable.push(stamp.clone());
            }
            Err(e) => {
                unreadable.insert(stamp.to_string(), format!("{}: {e}", e.code()));
            }
        }
    }
    if !needed.is_empty() {
        let mut packer = Packer::new(store);
        for q in store.list_quarantined_packs()? {
            let quarantined = Object::Listed(q.name.clone());
            let Ok(layout) = store.read_pack_layout(&quarantined, q.size, Check::Salvage) else {
                continue;
            };
            for fi in 0..layout.frames.len() {
                let chunks = layout.frame_chunks(fi);
                if !chunks.iter().any(|c| needed.contains(&c.id)) {
                    continue;
                }
                let f = &layout.frames[fi];
                let stored = match store.read_object_range(
                    &quarantined,
                    f.offset as u64,
                    f.stored_len as usize,
                ) {
                    Ok(stored) => stored,
                    // The pack ends early or is gone: these chunks are lost.
                    Err(err) if pack_damage(&err) => continue,
                    // The storage itself fails (a server gone away): each
                    // further read would wait through its retries again,
                    // chunk after chunk, for nothing.
                    Err(err) => return Err(Error::io("read", store.display(&quarantined), err)),
                };
                // A frame that does not open or decode saves nothing; a
                // chunk that does not hash to its id is left out.
                let Ok(frame) = store.decode_frame(&layout, fi, stored) else {
                    continue;
                };
                for (id, bytes) in frame.chunks() {
                    let Ok(bytes) = bytes else { continue };
                    if !needed.contains(&id) {
                        continue;
                    }
                    if packer.add_raw(&mut index, id, bytes)? {
                        out.chunks_salvaged += 1;
                        out.bytes_salvaged += bytes.len() as u64;
                    }
                    needed.remove(&id);
                }
            }
        }
        packer.flush(&mut index)?;
        // Salvaged chunks count only once their packs are in the store: a
        // failed upload fails the repair instead of reporting it healed.
        store.packs_durable()?;
        out.packs_written = packer
            .packs_written
            .iter()
            .map(|(id, _)| Object::Pack(*id).name())
            .collect();
    }
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
        let damaged: Vec<String> = m
            .entries
            .iter()
            .filter(|e| {
                e.file()
                    .is_some_and(|f| f.chunks.iter().any(|id| !index.contains(id)))
            })
            .map(|e| e.path_lossy())
            .collect();
        if !damaged.is_empty() {
            out.still_damaged.insert(
                stamp.to_string(),
                SnapshotHealth {
                    ok: false,
                    damaged_files: damaged,
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
        "chunks_total": m.entries.iter().filter_map(|e| e.file()).map(|f| f.chunks.len() as u64).sum::<u64>(),
        "validated": m.capture_errors.is_empty(),
        "validation_errors": m.capture_errors,
        "warnings": [],
        "rebuilt_by": "verify --repair",
        "rebuilt_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}
