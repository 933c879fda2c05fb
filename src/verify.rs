//! `validate` (one snapshot: the gate before a restore) and `verify` (the
//! whole store, or named snapshots: an integrity audit of every object).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Read;
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
    /// The manifest could not be read (the snapshot cannot be restored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The readable summary (`backup-metadata.json`) is missing or corrupt:
    /// the data is intact, `list` shows less; `--repair` rewrites it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_error: Option<String>,
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
    /// Why each damaged object is damaged.
    #[serde(default)]
    pub damage: BTreeMap<String, String>,
    pub orphans: Vec<String>,
    pub reclaimable_bytes: u64,
    pub snapshots: BTreeMap<String, SnapshotHealth>,
    /// Packs in the store, and how many of them were re-hashed (all of
    /// them unless `--sample`; the others were checked structurally).
    #[serde(default)]
    pub packs_total: u64,
    #[serde(default)]
    pub packs_sampled: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled_percent: Option<f64>,
    /// Objects waiting in `quarantine/` for an operator.
    #[serde(default)]
    pub quarantined_objects: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<crate::repair::RepairReport>,
    pub duration_ms: u64,
}

/// What `verify` is asked to do.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Only these snapshots (and only the objects they reference).
    pub snapshots: Vec<String>,
    /// Re-hash only this share of the packs, in percent (0 to 100); check
    /// the rest structurally. None: re-hash everything.
    pub sample_percent: Option<f64>,
    /// Quarantine damaged packs and keep their intact chunks (exclusive lock).
    pub repair: bool,
    pub lock_wait: Duration,
}

impl VerifyOptions {
    pub fn new(lock_wait: Duration) -> VerifyOptions {
        VerifyOptions {
            snapshots: Vec::new(),
            sample_percent: None,
            repair: false,
            lock_wait,
        }
    }
}

/// Audits the store (or only what `only` snapshots reference), re-hashing
/// everything.
pub fn verify(store: &Store, only: &[String], lock_wait: Duration) -> Result<VerifyReport> {
    verify_with(
        store,
        &VerifyOptions {
            snapshots: only.to_vec(),
            ..VerifyOptions::new(lock_wait)
        },
    )
}

/// Audits the store as `opts` say; with `repair`, repairs what it found.
pub fn verify_with(store: &Store, opts: &VerifyOptions) -> Result<VerifyReport> {
    let started = Instant::now();
    let selected: Option<Vec<Stamp>> = if opts.snapshots.is_empty() {
        None
    } else {
        Some(
            opts.snapshots
                .iter()
                .map(|s| Stamp::parse(s))
                .collect::<Result<_>>()?,
        )
    };
    if let Some(p) = opts.sample_percent {
        if !(0.0..=100.0).contains(&p) {
            return Err(Error::Usage(format!(
                "--sample {p}: a percentage from 0 to 100"
            )));
        }
    }
    let mut report = if opts.repair {
        let lock = lock::lock_exclusive(store.root(), "verify --repair", opts.lock_wait)?;
        let audit = audit(store, selected.as_deref(), opts.sample_percent)?;
        let repaired = crate::repair::repair(store, &lock, &audit)?;
        let mut report = audit.report;
        report.repair = Some(repaired);
        report
    } else {
        let _lock = lock::lock_shared(store.root(), "verify", opts.lock_wait)?;
        audit(store, selected.as_deref(), opts.sample_percent)?.report
    };
    report.quarantined_objects = store.quarantined_objects()?.len() as u64;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// What the audit found, with what repair needs beyond the report.
pub struct Audit {
    pub report: VerifyReport,
    /// Snapshots whose manifest reads.
    pub manifests: Vec<(Stamp, Manifest)>,
    /// Snapshots whose manifest does not read.
    pub unreadable: Vec<Stamp>,
}

/// What checking one pack found.
#[derive(Default)]
struct PackCheck {
    /// Bytes of the pack file read.
    bytes: u64,
    /// Chunks re-hashed.
    chunks: u64,
    /// Chunks that do not decode to their id (or cannot be read).
    corrupt: Vec<Id>,
    /// The first fault of the pack's structure: trailer, index, layout,
    /// header, length, readability.
    structural: Option<String>,
    /// The file's hash is not its name (checked when nothing else is wrong).
    name_mismatch: bool,
    /// Stored bytes of all entries, and of those that are live here.
    total_stored: u64,
    live_stored: u64,
}

impl PackCheck {
    fn damaged(&mut self, detail: String) {
        if self.structural.is_none() {
            self.structural = Some(detail);
        }
    }

    /// What is wrong with the pack, if anything.
    fn detail(&self) -> Option<String> {
        if let Some(s) = &self.structural {
            return Some(s.clone());
        }
        if !self.corrupt.is_empty() {
            let mut ids: Vec<String> = self.corrupt.iter().take(3).map(Id::to_hex).collect();
            if self.corrupt.len() > 3 {
                ids.push("...".into());
            }
            return Some(format!(
                "{} corrupt chunk(s): {}",
                self.corrupt.len(),
                ids.join(", ")
            ));
        }
        self.name_mismatch
            .then(|| "pack content does not match its name".to_string())
    }

    /// Whether the damage concerns an audit of `referenced` only: damage to
    /// the pack as a whole does, a corrupt chunk only if referenced.
    fn concerns(&self, referenced: &HashSet<Id>) -> bool {
        // A corrupt chunk explains a name mismatch on its own.
        self.structural.is_some()
            || (self.name_mismatch && self.corrupt.is_empty())
            || self.corrupt.iter().any(|id| referenced.contains(id))
    }
}

fn audit(store: &Store, selected: Option<&[Stamp]>, sample: Option<f64>) -> Result<Audit> {
    let mut report = VerifyReport::default();
    let listing = store.list_snapshots()?;
    let stamps = match selected {
        Some(s) => s.to_vec(),
        None => listing.stamps.clone(),
    };
    let mut manifests = Vec::new();
    let mut unreadable = Vec::new();
    for stamp in &stamps {
        match store.read_manifest(stamp) {
            Ok(m) => manifests.push((stamp.clone(), m)),
            Err(e @ (Error::SnapshotMissing { .. } | Error::ManifestCorrupt { .. })) => {
                let code = e.code();
                report.snapshots.insert(
                    stamp.to_string(),
                    SnapshotHealth {
                        ok: false,
                        error: Some(format!("{code}: {e}")),
                        ..SnapshotHealth::default()
                    },
                );
                if code == "manifest_corrupt" {
                    unreadable.push(stamp.clone());
                }
            }
            Err(e) => return Err(e),
        }
    }

    let index = store.load_index()?;
    let referenced: HashSet<Id> = manifests
        .iter()
        .flat_map(|(_, m)| m.entries.iter().filter_map(|e| e.file()))
        .flat_map(|f| f.chunks.iter().copied())
        .collect();
    let missing: BTreeSet<Id> = referenced
        .iter()
        .filter(|id| !index.contains(id))
        .copied()
        .collect();

    // Packs whose index does not read: their chunks are unknown. With
    // --snapshot they matter only when a referenced chunk is missing (it
    // may be in one of them).
    if selected.is_none() || !missing.is_empty() {
        for d in &index.damaged {
            report.objects_checked += 1;
            report.damaged_objects.push(d.name.clone());
            report.damage.insert(d.name.clone(), d.detail.clone());
        }
    }

    // Packs to check: all of them, or those holding a referenced chunk.
    let npacks = index.packs().len();
    let mut pack_live: Vec<u64> = vec![0; npacks];
    for id in &referenced {
        if let Some(loc) = index.get(id) {
            pack_live[loc.pack as usize] += loc.stored_len() as u64;
        }
    }
    let to_check: Vec<u32> = (0..npacks as u32)
        .filter(|&p| selected.is_none() || pack_live[p as usize] > 0)
        .collect();
    let rehash: HashSet<u32> = match sample {
        None => to_check.iter().copied().collect(),
        Some(pct) => {
            let n = to_check.len();
            let k = ((n as f64 * pct / 100.0).ceil() as usize).min(n);
            let mut rng = rand::rng();
            rand::seq::index::sample(&mut rng, n, k)
                .into_iter()
                .map(|i| to_check[i])
                .collect()
        }
    };
    report.packs_total = (npacks + index.damaged.len()) as u64;
    report.packs_sampled = rehash.len() as u64;
    report.sampled_percent = sample;

    let checks: Vec<(u32, PackCheck)> = to_check
        .par_iter()
        .map(|&p| {
            let check = check_pack(store, &index, p, &referenced, rehash.contains(&p));
            (p, check)
        })
        .collect();

    // A chunk is bad when the copy every reader uses (its index location)
    // is corrupt, or when it is missing.
    let mut bad: HashSet<Id> = missing.iter().copied().collect();
    let mut corrupt: BTreeSet<Id> = BTreeSet::new();
    for (p, check) in &checks {
        report.objects_checked += 1;
        report.bytes_checked += check.bytes;
        report.chunks_checked += check.chunks;
        let name = pack::pack_name(&index.pack(*p).id);
        if let Some(detail) = check.detail() {
            if selected.is_none() || check.concerns(&referenced) {
                report.damaged_objects.push(name.clone());
                report.damage.insert(name, detail);
            }
        }
        for id in &check.corrupt {
            if selected.is_none() || referenced.contains(id) {
                corrupt.insert(*id);
            }
            if index.get(id).is_some_and(|loc| loc.pack == *p) {
                bad.insert(*id);
            }
        }
        if selected.is_none() {
            if pack_live[*p as usize] == 0 {
                report.orphans.push(pack::pack_name(&index.pack(*p).id));
                report.reclaimable_bytes += index.pack(*p).size;
            } else {
                report.reclaimable_bytes += check.total_stored.saturating_sub(check.live_stored);
            }
        }
    }
    report.corrupt = corrupt.iter().map(Id::to_hex).collect();
    report.missing = missing.iter().map(Id::to_hex).collect();

    for (stamp, m) in &manifests {
        let damaged: BTreeSet<String> = m
            .entries
            .iter()
            .filter(|e| {
                e.file()
                    .is_some_and(|f| f.chunks.iter().any(|id| bad.contains(id)))
            })
            .map(|e| e.path_lossy())
            .collect();
        let metadata_error = metadata_problem(store, stamp);
        report.snapshots.insert(
            stamp.to_string(),
            SnapshotHealth {
                ok: damaged.is_empty() && metadata_error.is_none(),
                damaged_files: damaged.into_iter().collect(),
                error: None,
                metadata_error,
            },
        );
    }

    report.orphans.sort();
    report.damaged_objects.sort();
    report.damaged_objects.dedup();
    report.ok = report.corrupt.is_empty()
        && report.missing.is_empty()
        && report.damaged_objects.is_empty()
        && report.snapshots.values().all(|s| s.ok);
    Ok(Audit {
        report,
        manifests,
        unreadable,
    })
}

/// Why a snapshot's `backup-metadata.json` is not usable, if it is not.
pub fn metadata_problem(store: &Store, stamp: &Stamp) -> Option<String> {
    let name = format!("snapshots/{stamp}/{}", crate::store::METADATA_NAME);
    match store.backend().exists(&name) {
        Ok(false) => Some(format!(
            "metadata_missing: {}",
            store.object_path(&name).display()
        )),
        Ok(true) => store
            .read_metadata(stamp)
            .err()
            .map(|e| format!("metadata_corrupt: {e}")),
        Err(e) => Some(format!(
            "metadata_unreadable: {}: {e}",
            store.object_path(&name).display()
        )),
    }
}

/// Bytes of a pack read at once when re-hashing: the chunks inside are
/// decoded and checked in parallel.
const WINDOW: usize = 4 << 20;

/// Checks one pack. Always its structure: the trailer and index read, the
/// entries tile the blob area exactly, raw chunks have their recorded
/// length, the header is there. With `rehash`, it streams the whole file:
/// its hash must be its name and every chunk must decode to its id. Memory
/// is bounded by one window.
fn check_pack(
    store: &Store,
    index: &ChunkIndex,
    p: u32,
    referenced: &HashSet<Id>,
    rehash: bool,
) -> PackCheck {
    let info = index.pack(p);
    let name = pack::pack_name(&info.id);
    let mut check = PackCheck::default();
    let layout = match store.read_pack_layout(&name, info.size) {
        Ok(l) => l,
        Err(detail) => {
            check.structural = Some(detail);
            check.corrupt = index
                .iter()
                .filter(|(_, l)| l.pack == p)
                .map(|(id, _)| *id)
                .collect();
            return check;
        }
    };
    check.bytes = (info.size - layout.blob_end).min(info.size);
    let mut sorted: Vec<&PackEntry> = layout.entries.iter().collect();
    sorted.sort_by_key(|e| (e.offset, e.stored_len));

    // Structure: entries back to back from the header to the index.
    let mut overlapping: Vec<&PackEntry> = Vec::new();
    let mut tiled: Vec<&PackEntry> = Vec::with_capacity(sorted.len());
    let mut pos = PACK_MAGIC.len() as u64;
    for e in &sorted {
        let start = e.offset as u64;
        let end = start + e.stored_len as u64;
        check.total_stored += e.stored_len as u64;
        if referenced.contains(&e.id) && index.get(&e.id).is_some_and(|l| l.pack == p) {
            check.live_stored += e.stored_len as u64;
        }
        if !e.compressed && e.stored_len != e.raw_len {
            check.damaged(format!(
                "index entry for chunk {} records {} raw bytes stored in {}",
                e.id, e.raw_len, e.stored_len
            ));
            check.corrupt.push(e.id);
        }
        if start < pos {
            check.damaged(format!(
                "index entries overlap at chunk {} (offset {start})",
                e.id
            ));
            overlapping.push(e);
            continue;
        }
        if start > pos {
            check.damaged(format!(
                "bytes {pos}..{start} of the blob area belong to no index entry"
            ));
        }
        tiled.push(e);
        pos = end;
    }
    if pos < layout.blob_end {
        check.damaged(format!(
            "bytes {pos}..{} of the blob area belong to no index entry",
            layout.blob_end
        ));
    }

    if !rehash {
        match store.backend().read_range(&name, 0, PACK_MAGIC.len()) {
            Ok(h) if h == PACK_MAGIC => {}
            Ok(_) => check.damaged("bad pack header".into()),
            Err(e) => check.damaged(format!("unreadable: {e}")),
        }
        check.bytes += PACK_MAGIC.len() as u64;
        return check;
    }

    // Re-hash: stream the file once, hashing it whole and decoding the
    // chunks of each window in parallel.
    let reader = match store.backend().open_read(&name) {
        Ok(r) => r,
        Err(e) => {
            check.damaged(format!("unreadable: {e}"));
            check.corrupt.extend(layout.entries.iter().map(|e| e.id));
            return check;
        }
    };
    check.bytes = 0;
    let mut win = Window::new(reader);
    match win.fill_to(PACK_MAGIC.len() as u64) {
        Ok(true) if win.slice(0, PACK_MAGIC.len() as u64) == PACK_MAGIC => {}
        Ok(_) => check.damaged("bad pack header".into()),
        Err(e) => check.damaged(format!("unreadable: {e}")),
    }
    let mut batch: Vec<&PackEntry> = Vec::new();
    let mut broken_at: Option<usize> = None;
    for (i, e) in tiled.iter().enumerate() {
        let end = e.offset as u64 + e.stored_len as u64;
        if !batch.is_empty() && end - win.start > WINDOW as u64 {
            decode_batch(store, &win, &batch, &mut check);
            batch.clear();
            win.discard_before(e.offset as u64);
        }
        match win.fill_to(end) {
            Ok(true) => batch.push(e),
            Ok(false) => {
                check.damaged(format!("truncated: chunk {} ends past the file", e.id));
                broken_at = Some(i);
                break;
            }
            Err(err) => {
                check.damaged(format!("unreadable: {err}"));
                broken_at = Some(i);
                break;
            }
        }
    }
    decode_batch(store, &win, &batch, &mut check);
    if let Some(i) = broken_at {
        check.corrupt.extend(tiled[i..].iter().map(|e| e.id));
    }
    // Entries overlapping others: each checked on its own.
    for e in overlapping {
        let decoded = store
            .backend()
            .read_range(&name, e.offset as u64, e.stored_len as usize)
            .map_err(|e| e.to_string())
            .and_then(|stored| {
                store
                    .decode_chunk(stored, &e.id, e.compressed, e.raw_len)
                    .map_err(|f| format!("{f:?}"))
            });
        check.chunks += 1;
        if decoded.is_err() {
            check.corrupt.push(e.id);
        }
    }
    // The rest (index and trailer) completes the whole-file hash.
    if broken_at.is_none() {
        match win.fill_to(u64::MAX) {
            Ok(_) => {
                check.bytes = win.end();
                if win.end() != info.size {
                    check.damaged(format!(
                        "size changed while read: {} bytes, listed {}",
                        win.end(),
                        info.size
                    ));
                } else {
                    check.name_mismatch = Id::from(win.hasher.finalize()) != info.id;
                }
            }
            Err(e) => check.damaged(format!("unreadable: {e}")),
        }
    } else {
        check.bytes = win.end();
    }
    check.corrupt.sort();
    check.corrupt.dedup();
    check
}

fn decode_batch(store: &Store, win: &Window, batch: &[&PackEntry], check: &mut PackCheck) {
    let (buf, start) = (&win.buf[..], win.start);
    let bad: Vec<Id> = batch
        .par_iter()
        .filter_map(|e| {
            let from = (e.offset as u64 - start) as usize;
            let stored = buf[from..from + e.stored_len as usize].to_vec();
            store
                .decode_chunk(stored, &e.id, e.compressed, e.raw_len)
                .err()
                .map(|_| e.id)
        })
        .collect();
    check.chunks += batch.len() as u64;
    check.corrupt.extend(bad);
}

/// A sliding window over a stream: bytes `[start, start + buf.len())`,
/// every byte hashed once as it is read.
struct Window {
    reader: Box<dyn Read + Send>,
    buf: Vec<u8>,
    start: u64,
    hasher: blake3::Hasher,
    eof: bool,
}

impl Window {
    fn new(reader: Box<dyn Read + Send>) -> Window {
        Window {
            reader,
            buf: Vec::with_capacity(WINDOW + (1 << 20)),
            start: 0,
            hasher: blake3::Hasher::new(),
            eof: false,
        }
    }

    fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    /// Reads until the window reaches `end`; false when the stream ends
    /// first (`u64::MAX` reads to the end).
    fn fill_to(&mut self, end: u64) -> std::io::Result<bool> {
        const STEP: usize = 1 << 20;
        while self.end() < end && !self.eof {
            let old = self.buf.len();
            self.buf.resize(old + STEP, 0);
            let n = loop {
                match self.reader.read(&mut self.buf[old..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.buf.truncate(old);
                        return Err(e);
                    }
                }
            };
            self.buf.truncate(old + n);
            if n == 0 {
                self.eof = true;
            } else {
                self.hasher.update(&self.buf[old..]);
            }
            if end == u64::MAX && self.buf.len() >= WINDOW {
                // Reading to the end: keep memory bounded.
                let keep = self.buf.len();
                self.discard_before(self.start + keep as u64);
            }
        }
        Ok(self.end() >= end)
    }

    fn slice(&self, offset: u64, len: u64) -> &[u8] {
        let from = (offset - self.start) as usize;
        &self.buf[from..from + len as usize]
    }

    fn discard_before(&mut self, offset: u64) {
        let n = (offset.saturating_sub(self.start) as usize).min(self.buf.len());
        self.buf.drain(..n);
        self.start += n as u64;
    }
}
