//! `validate` (one snapshot: the gate before a restore) and `verify` (the
//! whole store, or named snapshots: an integrity audit of every object).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{BufReader, Read};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::extract::{self, ExtractError};
use crate::id::Id;
use crate::manifest::{FileEntry, Manifest};
use crate::sources::sqlite;
use crate::stamp::Stamp;
use crate::store::index::ChunkIndex;
use crate::store::lock;
use crate::store::pack::{self, PackEntry, PACK_MAGIC};
use crate::store::{ChunkFault, Store};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ValidateReport {
    pub stamp: String,
    pub exists: bool,
    pub valid: bool,
    pub db_ok: bool,
    pub registry_ok: Option<bool>,
    pub chroma_ok: Option<bool>,
    pub errors: Vec<String>,
    pub duration_ms: u64,
}

/// Validates one snapshot: re-hashes every chunk it references, rebuilds
/// the db in a temp file and runs `PRAGMA integrity_check`, parses the
/// registry. Malformed stamps are an error; a missing or damaged snapshot
/// is a report with `valid: false`.
pub fn validate(store: &Store, stamp: &str, lock_wait: Duration) -> Result<ValidateReport> {
    let stamp = Stamp::parse(stamp)?;
    let _lock = lock::lock_shared(store.root(), "validate", lock_wait)?;
    let started = Instant::now();
    let mut report = ValidateReport {
        stamp: stamp.to_string(),
        exists: false,
        valid: false,
        db_ok: false,
        registry_ok: None,
        chroma_ok: None,
        errors: Vec::new(),
        duration_ms: 0,
    };
    let manifest = match store.read_manifest(&stamp) {
        Ok(m) => m,
        Err(Error::SnapshotMissing { .. }) => {
            report.errors.push("snapshot_missing".into());
            return Ok(report);
        }
        Err(Error::ManifestCorrupt { detail, .. }) => {
            report.exists = true;
            report.errors.push(format!("manifest_corrupt: {detail}"));
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    report.exists = true;
    let index = store.load_index()?;
    validate_manifest(store, &index, &manifest, &mut report)?;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// The checks of `validate` on a decoded manifest.
pub fn validate_manifest(
    store: &Store,
    index: &ChunkIndex,
    manifest: &Manifest,
    report: &mut ValidateReport,
) -> Result<()> {
    let mut errors: BTreeSet<String> = BTreeSet::new();

    // The db: rebuilt into a temp file (which verifies its chunks), then
    // integrity-checked by SQLite itself.
    report.db_ok = match manifest.db() {
        None => {
            errors.insert("db_missing_from_snapshot".into());
            false
        }
        Some(db) => check_db(store, index, db, &mut errors)?,
    };

    // Every other chunk, each once, in parallel.
    let db_chunks: HashSet<&Id> = manifest
        .db()
        .map(|f| f.chunks.iter().collect())
        .unwrap_or_default();
    let others: HashSet<&Id> = manifest
        .entries
        .iter()
        .filter_map(|e| e.file())
        .flat_map(|f| f.chunks.iter())
        .filter(|id| !db_chunks.contains(id))
        .collect();
    let others: Vec<&Id> = others.into_iter().collect();
    let faults: HashMap<Id, ChunkFault> = others
        .par_iter()
        .filter_map(|id| store.read_chunk(index, id).err().map(|f| (**id, f)))
        .collect();
    let file_ok = |f: &FileEntry| f.chunks.iter().all(|id| !faults.contains_key(id));
    for (id, fault) in &faults {
        errors.insert(fault.code(id));
    }
    for entry in &manifest.entries {
        if let Some(f) = entry.file() {
            if extract::indexed_size(index, f).is_some_and(|s| s != f.size) {
                errors.insert(format!("size_mismatch: {}", entry.path_lossy()));
            }
        }
    }

    report.registry_ok = manifest.registry().map(|reg| {
        if !file_ok(reg) {
            return false;
        }
        match extract::read_small_file(store, index, reg) {
            Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(_) => true,
                Err(e) => {
                    errors.insert(format!("registry_invalid_json: {e}"));
                    false
                }
            },
            Err(_) => false,
        }
    });
    report.chroma_ok = manifest
        .chroma_included
        .then(|| manifest.chroma_files().all(|(_, f)| file_ok(f)));

    errors.extend(manifest.capture_errors.iter().cloned());
    report.errors = errors.into_iter().collect();
    report.valid = report.errors.is_empty();
    Ok(())
}

fn check_db(
    store: &Store,
    index: &ChunkIndex,
    db: &FileEntry,
    errors: &mut BTreeSet<String>,
) -> Result<bool> {
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{}-validate-", std::process::id()))
        .suffix(".db")
        .tempfile_in(store.tmp_dir()?)
        .ctx("create temp file in", store.tmp_dir()?)?;
    let mut out = std::io::BufWriter::new(tmp.as_file());
    match extract::write_file(store, index, db, &mut out, |_| {}) {
        Ok(_) => {}
        Err(ExtractError::Chunk(id, fault)) => {
            errors.insert(fault.code(&id));
            // Keep checking the db's other chunks so every fault is named.
            for id in &db.chunks {
                if let Err(f) = store.read_chunk(index, id) {
                    errors.insert(f.code(id));
                }
            }
            return Ok(false);
        }
        Err(ExtractError::Write(e)) => return Err(Error::io("write", tmp.path(), e)),
    }
    drop(out);
    tmp.as_file().sync_data().ctx("write", tmp.path())?;
    match sqlite::integrity_problems(tmp.path(), false)? {
        None => Ok(true),
        Some(p) => {
            errors.insert(format!("db_integrity_check_failed: {p}"));
            Ok(false)
        }
    }
}

// ---- verify ---------------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SnapshotHealth {
    pub ok: bool,
    /// Paths inside the snapshot whose data is damaged.
    pub damaged_files: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub objects_checked: u64,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub corrupt: Vec<String>,
    pub missing: Vec<String>,
    pub damaged_objects: Vec<String>,
    pub orphans: Vec<String>,
    pub reclaimable_bytes: u64,
    pub snapshots: BTreeMap<String, SnapshotHealth>,
    pub duration_ms: u64,
}

/// What reading one pack found.
#[derive(Default)]
struct PackCheck {
    bytes: u64,
    chunks: u64,
    corrupt: Vec<Id>,
    damage: Option<String>,
}

/// Audits the store (or only what `only` snapshots reference).
pub fn verify(store: &Store, only: &[String], lock_wait: Duration) -> Result<VerifyReport> {
    let started = Instant::now();
    let selected: Option<Vec<Stamp>> = if only.is_empty() {
        None
    } else {
        Some(
            only.iter()
                .map(|s| Stamp::parse(s))
                .collect::<Result<_>>()?,
        )
    };
    let _lock = lock::lock_shared(store.root(), "verify", lock_wait)?;
    let mut report = VerifyReport::default();

    let listing = store.list_snapshots()?;
    let stamps = match &selected {
        Some(s) => s.clone(),
        None => listing.stamps.clone(),
    };
    let mut manifests = Vec::new();
    for stamp in &stamps {
        match store.read_manifest(stamp) {
            Ok(m) => manifests.push((stamp.to_string(), m)),
            Err(e @ (Error::SnapshotMissing { .. } | Error::ManifestCorrupt { .. })) => {
                let code = if matches!(e, Error::SnapshotMissing { .. }) {
                    "snapshot_missing"
                } else {
                    "manifest_corrupt"
                };
                report.snapshots.insert(
                    stamp.to_string(),
                    SnapshotHealth {
                        ok: false,
                        damaged_files: vec![],
                        error: Some(format!("{code}: {e}")),
                    },
                );
            }
            Err(e) => return Err(e),
        }
    }

    let index = store.load_index()?;
    for d in &index.damaged {
        report.damaged_objects.push(d.name.clone());
    }
    let referenced: HashSet<Id> = manifests
        .iter()
        .flat_map(|(_, m)| m.entries.iter().filter_map(|e| e.file()))
        .flat_map(|f| f.chunks.iter().copied())
        .collect();

    // Packs to read: all of them, or those holding a referenced chunk.
    let mut pack_live: Vec<u64> = vec![0; index.packs().len()];
    for id in &referenced {
        if let Some(loc) = index.get(id) {
            pack_live[loc.pack as usize] += loc.stored_len() as u64;
        }
    }
    let to_check: Vec<u32> = (0..index.packs().len() as u32)
        .filter(|&p| selected.is_none() || pack_live[p as usize] > 0)
        .collect();
    let checks: Vec<(u32, PackCheck)> = to_check
        .par_iter()
        .map(|&p| (p, check_pack(store, &index, p)))
        .collect();

    let mut bad: HashMap<Id, &'static str> = HashMap::new();
    for (p, check) in &checks {
        report.objects_checked += 1;
        report.bytes_checked += check.bytes;
        report.chunks_checked += check.chunks;
        let name = pack::pack_name(&index.pack(*p).id);
        if check.damage.is_some() {
            report.damaged_objects.push(name);
        }
        for id in &check.corrupt {
            bad.insert(*id, "corrupt");
        }
    }
    for id in &referenced {
        if !index.contains(id) {
            bad.insert(*id, "missing");
        }
    }
    for (id, kind) in &bad {
        if *kind == "missing" {
            report.missing.push(id.to_hex());
        } else if referenced.contains(id) || selected.is_none() {
            report.corrupt.push(id.to_hex());
        }
    }

    for (stamp, m) in &manifests {
        let damaged: BTreeSet<String> = m
            .entries
            .iter()
            .filter(|e| {
                e.file()
                    .is_some_and(|f| f.chunks.iter().any(|id| bad.contains_key(id)))
            })
            .map(|e| e.path_lossy())
            .collect();
        report.snapshots.insert(
            stamp.clone(),
            SnapshotHealth {
                ok: damaged.is_empty(),
                damaged_files: damaged.into_iter().collect(),
                error: None,
            },
        );
    }

    if selected.is_none() {
        for (p, info) in index.packs().iter().enumerate() {
            if pack_live[p] == 0 {
                report.orphans.push(pack::pack_name(&info.id));
                report.reclaimable_bytes += info.size;
            } else {
                let total: u64 = index
                    .iter()
                    .filter(|(_, l)| l.pack as usize == p)
                    .map(|(_, l)| l.stored_len() as u64)
                    .sum();
                report.reclaimable_bytes += total.saturating_sub(pack_live[p]);
            }
        }
    }

    report.corrupt.sort();
    report.missing.sort();
    report.damaged_objects.sort();
    report.damaged_objects.dedup();
    report.ok = report.corrupt.is_empty()
        && report.missing.is_empty()
        && report.damaged_objects.is_empty()
        && report.snapshots.values().all(|s| s.ok);
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Streams one pack: checks its whole-file hash against its name and every
/// chunk against its id, with memory bounded by one chunk.
fn check_pack(store: &Store, index: &ChunkIndex, p: u32) -> PackCheck {
    let info = index.pack(p);
    let name = pack::pack_name(&info.id);
    let mut check = PackCheck::default();
    let entries = match store.read_pack_index(&name, info.size) {
        Ok(e) => e,
        Err(detail) => {
            check.damage = Some(detail);
            return check;
        }
    };
    let path = store.object_path(&name);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            check.damage = Some(format!("unreadable: {e}"));
            check.corrupt = entries.iter().map(|e| e.id).collect();
            return check;
        }
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut hasher = blake3::Hasher::new();
    let mut sorted: Vec<&PackEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.offset);
    let mut pos = 0u64;
    let mut buf = Vec::new();
    let mut read_exact =
        |n: u64, buf: &mut Vec<u8>, hasher: &mut blake3::Hasher| -> std::io::Result<()> {
            buf.resize(n as usize, 0);
            reader.read_exact(buf)?;
            hasher.update(buf);
            Ok(())
        };
    // Header, then each blob in offset order.
    if read_exact(PACK_MAGIC.len() as u64, &mut buf, &mut hasher).is_err() || buf != PACK_MAGIC {
        check.damage = Some("bad pack header".into());
    }
    pos += PACK_MAGIC.len() as u64;
    for e in sorted {
        if (e.offset as u64) < pos {
            check.damage = Some(format!("index entries overlap at chunk {}", e.id));
            check.corrupt.push(e.id);
            continue;
        }
        if read_exact(e.offset as u64 - pos, &mut buf, &mut hasher).is_err()
            || read_exact(e.stored_len as u64, &mut buf, &mut hasher).is_err()
        {
            check.damage = Some("truncated".into());
            check.corrupt.push(e.id);
            pos = u64::MAX;
            continue;
        }
        pos = e.offset as u64 + e.stored_len as u64;
        check.chunks += 1;
        check.bytes += e.stored_len as u64;
        if store
            .decode_chunk(std::mem::take(&mut buf), &e.id, e.compressed, e.raw_len)
            .is_err()
        {
            check.corrupt.push(e.id);
        }
    }
    // The rest (index and trailer) completes the whole-file hash.
    let mut rest = Vec::new();
    if pos != u64::MAX && reader.read_to_end(&mut rest).is_ok() {
        hasher.update(&rest);
        check.bytes += PACK_MAGIC.len() as u64 + rest.len() as u64;
        if check.damage.is_none() && Id::from(hasher.finalize()) != info.id {
            check.damage = Some("pack content does not match its name".into());
        }
    }
    if !check.corrupt.is_empty() && check.damage.is_none() {
        check.damage = Some(format!("{} corrupt chunk(s)", check.corrupt.len()));
    }
    check
}
