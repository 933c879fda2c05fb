//! The drill log: one small write-once file per drill under `drills/`,
//! named `<stamp>--<drill time>.json`, so it works on any backend and never
//! needs an append.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::store::{Dir, Object, Store};

/// The drill log's folder name: also the associated data its records
/// are sealed with.
pub const DRILLS_DIR: &str = Dir::Drills.name();

/// The last drill of a snapshot, as `list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DrillMark {
    pub at: String,
    pub ok: bool,
}

/// Records a drill outcome (`record` is the full drill result).
pub fn append(
    store: &Store,
    stamp: &str,
    at: &str,
    ok: bool,
    record: &serde_json::Value,
) -> Result<()> {
    let record_object = Object::new_drill(stamp, at);
    let mut doc = record.clone();
    doc["drill_at"] = serde_json::Value::String(at.to_string());
    doc["ok"] = serde_json::Value::Bool(ok);
    let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| Error::Encode {
        detail: e.to_string(),
    })?;
    let sealed = store.sealer().seal(bytes, DRILLS_DIR.as_bytes());
    store.write_object(&record_object, &sealed)
}

/// The newest drill of each snapshot. Only the newest record of each
/// snapshot is read (its name says which: `<stamp>--<time>-<rand>.json`,
/// the time sortable), through the cache of a remote store, so `list`
/// costs one listing however many drills there were.
pub fn last_drills(store: &Store) -> HashMap<String, DrillMark> {
    let mut out: HashMap<String, DrillMark> = HashMap::new();
    let Ok(files) = store.list_dir(Dir::Drills) else {
        return out;
    };
    let mut newest: HashMap<&str, &crate::store::backend::ListEntry> = HashMap::new();
    for f in &files {
        let file = f.name.rsplit('/').next().unwrap_or(&f.name);
        let Some((stamp, rest)) = file.split_once("--") else {
            continue;
        };
        let slot = newest.entry(stamp).or_insert(f);
        let best = slot.name.rsplit('/').next().unwrap_or(&slot.name);
        if best.split_once("--").is_none_or(|(_, r)| r < rest) {
            *slot = f;
        }
    }
    for f in newest.into_values() {
        let Ok(bytes) = store.read_immutable(&f.name, f.size) else {
            continue;
        };
        let Ok(opened) = store.sealer().open(bytes, DRILLS_DIR.as_bytes()) else {
            continue;
        };
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&opened) else {
            continue;
        };
        let (Some(stamp), Some(at), Some(ok)) = (
            doc.get("stamp").and_then(|v| v.as_str()),
            doc.get("drill_at").and_then(|v| v.as_str()),
            doc.get("ok").and_then(|v| v.as_bool()),
        ) else {
            continue;
        };
        let newer = out.get(stamp).is_none_or(|m| m.at.as_str() < at);
        if newer {
            out.insert(
                stamp.to_string(),
                DrillMark {
                    at: at.to_string(),
                    ok,
                },
            );
        }
    }
    out
}
