//! Pruning the audit logs (`gc`): a record goes once it is older than
//! [`KEEP_RECORDS_FOR`] and no reader needs it. Without this, an hourly
//! copy or a daily verify adds a file a day for ever, and the readers that
//! look for something never recorded (a snapshot never verified, a pack
//! never read) read the whole log.
//!
//! What the readers need (`mod.rs`): the newest drill of each snapshot;
//! the newest copy and the newest successful copy to each destination; the
//! newest verify, and for each snapshot and each pack the newest verify
//! that covered it. Those records stay whatever their age, as long as what
//! they speak of exists; a record that does not read stays too (it may be
//! evidence, and nothing here can judge it).

use chrono::{DateTime, NaiveDateTime, Utc};
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use super::{by_key, read, split, CopyRecord, DrillRecord, VerifyRecord};
use crate::error::{Error, IoContext, Result};
use crate::store::backend::ListEntry;
use crate::store::lock::ExclusiveLock;
use crate::store::names::Log;
use crate::store::Store;

/// How long every record is kept, needed or not: the history an operator
/// reads back (a quarter of daily drills and verifies).
pub const KEEP_RECORDS_FOR: Duration = Duration::from_secs(90 * 24 * 3600);

/// What exists now, as the readers' keys name it.
pub struct Live<'a> {
    /// Stamps of the snapshots.
    pub stamps: &'a BTreeSet<String>,
    /// Pack ids, in hex.
    pub packs: &'a HashSet<String>,
}

/// The records no reader needs that are older than [`KEEP_RECORDS_FOR`]
/// at `now`, by object name.
pub fn prunable(store: &Store, live: &Live<'_>, now: DateTime<Utc>) -> Vec<String> {
    let old = |f: &ListEntry| written_at(f).is_some_and(|at| age(now, at) >= KEEP_RECORDS_FOR);
    let mut out = Vec::new();
    // Drills: per snapshot, only the newest is ever read.
    for entries in by_key(store, Log::Drill).into_values() {
        let mut newest_seen = false;
        for f in &entries {
            let Some(rec) = read::<DrillRecord>(store, Log::Drill, f) else {
                continue;
            };
            let needed = !newest_seen && live.stamps.contains(&rec.stamp);
            newest_seen = true;
            if !needed && old(f) {
                out.push(f.name.clone());
            }
        }
    }
    // Copies: per destination, the newest run and the newest that worked.
    for entries in by_key(store, Log::Copy).into_values() {
        let (mut newest_seen, mut ok_seen) = (false, false);
        for f in &entries {
            let Some(rec) = read::<CopyRecord>(store, Log::Copy, f) else {
                continue;
            };
            let needed = !newest_seen || (rec.ok && !ok_seen);
            newest_seen = true;
            ok_seen |= rec.ok;
            if !needed && old(f) {
                out.push(f.name.clone());
            }
        }
    }
    // Verifies: the newest, and the newest covering each snapshot or pack.
    let mut stamps_left: HashSet<&str> = live.stamps.iter().map(String::as_str).collect();
    let mut packs_left: HashSet<&str> = live.packs.iter().map(String::as_str).collect();
    let mut newest_seen = false;
    for f in by_key(store, Log::Verify).into_values().flatten() {
        let f = &f;
        // `newest_verify` skips what does not read: so does "newest" here.
        let Some(rec) = read::<VerifyRecord>(store, Log::Verify, f) else {
            continue;
        };
        let mut needed = !newest_seen;
        newest_seen = true;
        for stamp in rec.snapshots.keys() {
            needed |= stamps_left.remove(stamp.as_str());
        }
        for pack in &rec.packs_read {
            needed |= packs_left.remove(pack.as_str());
        }
        if !needed && old(f) {
            out.push(f.name.clone());
        }
    }
    out
}

/// Deletes `names` (from [`prunable`]) under the exclusive lock; returns
/// how many went and why the others did not (warnings: a record that
/// stays is never a reason for gc to fail). A lock found lost, or a
/// signal, is the error it is everywhere else.
pub fn prune(store: &Store, lock: &ExclusiveLock, names: &[String]) -> Result<(u64, Vec<String>)> {
    let mut removed = 0;
    let mut warnings = Vec::new();
    for name in names {
        match lock.still_held() {
            Ok(()) => {}
            Err(e @ Error::LockLost { .. }) => return Err(e),
            // The storage did not answer the check: the records stay.
            Err(e) => {
                warnings.push(format!("audit records not pruned: {e}"));
                break;
            }
        }
        crate::os::check_interrupted()?;
        let path = store.object_path(name);
        match store.backend().delete(name).ctx("delete", path) {
            Ok(()) => removed += 1,
            Err(e) => warnings.push(format!("audit record {name} not pruned: {e}")),
        }
    }
    Ok((removed, warnings))
}

/// When a record was written, from the time in its name
/// (`[<key>--]<YYYYMMDDTHHMMSS><millis>Z-<r>.json`); `None` for a name of
/// another form (such a record is never pruned).
fn written_at(f: &ListEntry) -> Option<DateTime<Utc>> {
    let time = split(f).1.get(..15)?;
    NaiveDateTime::parse_from_str(time, "%Y%m%dT%H%M%S")
        .ok()
        .map(|t| t.and_utc())
}

fn age(now: DateTime<Utc>, at: DateTime<Utc>) -> Duration {
    (now - at).to_std().unwrap_or(Duration::ZERO)
}
