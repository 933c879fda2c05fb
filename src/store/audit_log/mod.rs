//! The store's audit logs: drills (`drills/`), verifies (`verifies/`) and
//! copies (`copies/`, in the source store). Each record is one small
//! write-once JSON file, sealed in an encrypted store (the log's folder is
//! the associated data), so a log works on any backend and never needs an
//! append. Names say what a reader needs before it reads anything:
//! `<key>--<time>-<r>.json` for a keyed log (drills: the stamp; copies: a
//! hash of the destination) and `<time>-<r>.json` for verifies, the time
//! sortable, so the newest records are found from one listing and only
//! those are read (through the cache of a remote store).

mod prune;

pub use prune::{prunable, prune, Live, KEEP_RECORDS_FOR};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::error::{Error, IoContext, Result};
use crate::store::backend::ListEntry;
use crate::store::names::{Log, Object};
use crate::store::Store;

/// The last drill (or verify) of a snapshot, as `list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Mark {
    pub at: String,
    pub ok: bool,
}

/// The fields of a drill record every reader needs (the record is the
/// whole drill result plus these).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrillRecord {
    pub stamp: String,
    pub drill_at: String,
    pub ok: bool,
}

/// What a verify covered.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VerifyScope {
    /// Every pack and every snapshot.
    Store,
    /// The named snapshots and the packs they reference.
    Snapshots,
    /// Every snapshot, with only a sample of the packs re-hashed.
    Sample,
}

/// One verify run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VerifyRecord {
    pub at: String,
    pub scope: VerifyScope,
    /// The sample asked for (`percent:P`, `subset:N/T`, `oldest:P`).
    #[serde(default)]
    pub sample: Option<String>,
    pub ok: bool,
    #[serde(default)]
    pub damaged_objects: Vec<String>,
    /// Ids (hex) of the packs re-hashed end to end and found sound.
    #[serde(default)]
    pub packs_read: Vec<String>,
    /// Snapshots whose every chunk was re-hashed, with their health.
    #[serde(default)]
    pub snapshots: BTreeMap<String, bool>,
    #[serde(default)]
    pub duration_ms: u64,
}

/// One copy run, in the source store's log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CopyRecord {
    /// The destination's address (never credentials: those come from the
    /// environment only).
    pub to: String,
    pub at: String,
    pub stamps_copied: Vec<String>,
    /// The newest stamp the destination holds from this run (copied now or
    /// found there).
    pub newest_stamp: Option<String>,
    pub ok: bool,
    /// Why the run stopped, when it failed as a whole (the destination or
    /// the source failed mid-way); a run that only skipped damaged
    /// snapshots has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RecordedError>,
}

/// An error as a record keeps it: its stable code and its message.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RecordedError {
    pub code: String,
    pub message: String,
}

impl CopyRecord {
    /// The key of a destination in record names: a hash of its address.
    fn key(to: &str) -> String {
        blake3::hash(to.as_bytes()).to_hex()[..16].to_string()
    }
}

/// Writes one record of `log` (`key`: the stamp of a drill, none for a
/// verify); returns its name.
pub fn append<T: Serialize>(
    store: &Store,
    log: Log,
    key: Option<&str>,
    at: &str,
    record: &T,
) -> Result<String> {
    let compact_at: String = at.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let file = format!("{compact_at}-{:04x}.json", rand::random::<u16>());
    let file = match key {
        Some(k) => format!("{k}--{file}"),
        None => file,
    };
    let name = Object::LogRecord(log, file).name();
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Encode {
        detail: e.to_string(),
    })?;
    let sealed = store.sealer().seal(bytes, log.dir().as_bytes());
    store
        .backend()
        .write_once(&name, &sealed)
        .ctx("write", store.object_path(&name))?;
    Ok(name)
}

/// Writes a copy record (keyed by its destination).
pub fn append_copy(store: &Store, record: &CopyRecord) -> Result<String> {
    let key = CopyRecord::key(&record.to);
    append(store, Log::Copy, Some(&key), &record.at, record)
}

/// A record's file name split into its key (if any) and its sortable rest.
fn split(entry: &ListEntry) -> (Option<&str>, &str) {
    let file = entry.name.rsplit('/').next().unwrap_or(&entry.name);
    match file.split_once("--") {
        Some((key, rest)) => (Some(key), rest),
        None => (None, file),
    }
}

/// The log's records by key, each newest first (an unreadable listing is
/// an empty log: the logs are evidence, never a reason to fail).
fn by_key(store: &Store, log: Log) -> BTreeMap<Option<String>, Vec<ListEntry>> {
    let mut out: BTreeMap<Option<String>, Vec<ListEntry>> = BTreeMap::new();
    for f in store.backend().list_files(log.dir()).unwrap_or_default() {
        let key = split(&f).0.map(str::to_string);
        out.entry(key).or_default().push(f);
    }
    for entries in out.values_mut() {
        entries.sort_by(|a, b| split(b).1.cmp(split(a).1));
    }
    out
}

/// Reads one record; None when it does not read, open or parse.
fn read<T: DeserializeOwned>(store: &Store, log: Log, f: &ListEntry) -> Option<T> {
    let bytes = store.read_immutable(&f.name, f.size).ok()?;
    let opened = store.sealer().open(bytes, log.dir().as_bytes()).ok()?;
    serde_json::from_slice(&opened).ok()
}

/// The records of an unkeyed log, newest first, each read when reached.
fn newest_first<'a, T: DeserializeOwned + 'a>(
    store: &'a Store,
    log: Log,
) -> impl Iterator<Item = T> + 'a {
    by_key(store, log)
        .into_values()
        .flatten()
        .collect::<Vec<_>>()
        .into_iter()
        .filter_map(move |f| read(store, log, &f))
}

/// The newest drill of each snapshot: one record read per snapshot, so
/// `list` costs one listing however many drills there were.
pub fn last_drills(store: &Store) -> HashMap<String, Mark> {
    let mut out: HashMap<String, Mark> = HashMap::new();
    for entries in by_key(store, Log::Drill).into_values() {
        let Some(doc) = entries
            .first()
            .and_then(|f| read::<DrillRecord>(store, Log::Drill, f))
        else {
            continue;
        };
        if out.get(&doc.stamp).is_none_or(|m| m.at < doc.drill_at) {
            out.insert(
                doc.stamp,
                Mark {
                    at: doc.drill_at,
                    ok: doc.ok,
                },
            );
        }
    }
    out
}

/// The newest verify covering each of `stamps` (read newest first until
/// every one is found or the log ends).
pub fn last_verifies(store: &Store, stamps: &[String]) -> HashMap<String, Mark> {
    let mut wanted: HashSet<&str> = stamps.iter().map(String::as_str).collect();
    let mut out = HashMap::new();
    if wanted.is_empty() {
        return out;
    }
    for rec in newest_first::<VerifyRecord>(store, Log::Verify) {
        for (stamp, ok) in &rec.snapshots {
            if wanted.remove(stamp.as_str()) {
                let at = rec.at.clone();
                out.insert(stamp.clone(), Mark { at, ok: *ok });
            }
        }
        if wanted.is_empty() {
            break;
        }
    }
    out
}

/// The newest verify of any scope.
pub fn newest_verify(store: &Store) -> Option<VerifyRecord> {
    newest_first(store, Log::Verify).next()
}

/// Whether the newest verify of the whole store passed, among the newest
/// [`RECENT_VERIFIES`] records of the log (None: none among them).
pub fn newest_whole_verify_ok(store: &Store) -> Option<bool> {
    newest_first::<VerifyRecord>(store, Log::Verify)
        .take(RECENT_VERIFIES)
        .find(|r| r.scope == VerifyScope::Store)
        .map(|r| r.ok)
}

/// Records [`newest_whole_verify_ok`] reads at most: each is a request on
/// a bucket, and a copy asks on every run.
const RECENT_VERIFIES: usize = 16;

/// When each of `packs` (ids in hex) was last re-hashed by a verify, read
/// from the log newest first until every one is found; packs never
/// re-hashed are absent.
pub fn packs_last_read(store: &Store, packs: &HashSet<String>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for rec in newest_first::<VerifyRecord>(store, Log::Verify) {
        for p in rec.packs_read {
            if packs.contains(&p) && !out.contains_key(&p) {
                out.insert(p, rec.at.clone());
            }
        }
        if out.len() == packs.len() {
            break;
        }
    }
    out
}

/// The newest successful copy to each destination (by destination).
pub fn last_copies(store: &Store) -> BTreeMap<String, CopyRecord> {
    let mut out = BTreeMap::new();
    for entries in by_key(store, Log::Copy).into_values() {
        let newest_ok = entries
            .iter()
            .filter_map(|f| read::<CopyRecord>(store, Log::Copy, f))
            .find(|r| r.ok);
        if let Some(r) = newest_ok {
            out.insert(r.to.clone(), r);
        }
    }
    out
}
