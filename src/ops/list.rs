//! `list`: the snapshots in the store, oldest first, with the folders under
//! `snapshots/` that are not stamps.

pub use crate::store::audit_log::Mark;
/// The last drill of a snapshot (the name `list` has always used).
pub type DrillMark = Mark;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::store::{audit_log, Store};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListEntry {
    pub stamp: String,
    pub created_at: String,
    pub tags: Vec<String>,
    pub db_size_bytes: u64,
    pub registry_snapshot_included: bool,
    pub chroma_snapshot_included: bool,
    pub chroma_snapshot_files: u64,
    pub chroma_snapshot_bytes: u64,
    pub validated: Option<bool>,
    /// The outcome of the last drill of this snapshot.
    pub last_drill: Option<DrillMark>,
    /// The newest verify that re-hashed all of this snapshot's data
    /// (`ok`: the snapshot's health then).
    pub last_verify: Option<Mark>,
    /// Set when the snapshot's summary could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListResult {
    pub snapshots: Vec<ListEntry>,
    pub unparseable: Vec<String>,
}

/// Lists snapshots from their `backup-metadata.json` summaries (cheap: the
/// manifests are not read; the summaries are read in parallel, in order).
pub fn list(store: &Store) -> Result<ListResult> {
    let listing = store.list_snapshots()?;
    let drills = audit_log::last_drills(store);
    let stamps: Vec<String> = listing.stamps.iter().map(|s| s.to_string()).collect();
    let verifies = audit_log::last_verifies(store, &stamps);
    let snapshots = listing
        .stamps
        .par_iter()
        .map(|stamp| {
            let mut entry = ListEntry {
                stamp: stamp.to_string(),
                created_at: String::new(),
                tags: vec![],
                db_size_bytes: 0,
                registry_snapshot_included: false,
                chroma_snapshot_included: false,
                chroma_snapshot_files: 0,
                chroma_snapshot_bytes: 0,
                validated: None,
                last_drill: drills.get(&stamp.to_string()).cloned(),
                last_verify: verifies.get(&stamp.to_string()).cloned(),
                error: None,
            };
            match store.read_metadata(stamp) {
                Ok(meta) => {
                    let u = |k: &str| meta.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
                    let b = |k: &str| meta.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
                    entry.created_at = meta
                        .get("created_at")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_string();
                    entry.tags = meta
                        .get("tags")
                        .and_then(|v| serde_json::from_value(v.clone()).ok())
                        .unwrap_or_default();
                    entry.db_size_bytes = u("db_size_bytes");
                    entry.registry_snapshot_included = b("registry_snapshot_included");
                    entry.chroma_snapshot_included = b("chroma_snapshot_included");
                    entry.chroma_snapshot_files = u("chroma_snapshot_files");
                    entry.chroma_snapshot_bytes = u("chroma_snapshot_bytes");
                    entry.validated = meta.get("validated").and_then(|v| v.as_bool());
                }
                Err(e) => {
                    entry.created_at = stamp
                        .time()
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    entry.error = Some(e.to_string());
                }
            }
            entry
        })
        .collect();
    Ok(ListResult {
        snapshots,
        unparseable: listing.unparseable,
    })
}
