//! `forget STAMP... [--confirm] [--force]`: deletes snapshots named by the
//! operator (where `cleanup` deletes the ones a policy does not keep).
//!
//! A dry run (the default) holds the shared lock, checks every stamp and
//! prices the deletion. With `--confirm` the exclusive lock is taken, the
//! checks are made again under it, the snapshots are deleted and gc runs
//! under the same lock ([`cleanup::delete_then_gc`]). Every stamp is
//! checked before anything is deleted: one unknown stamp refuses the whole
//! command. Deleting every remaining snapshot needs `--force` (dry run
//! too, so the dry run says what the real run would do).

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::ops::cleanup::{self};
use crate::ops::gc::GcResult;
use crate::stamp::Stamp;
use crate::store::Store;

#[derive(Clone, Debug)]
pub struct ForgetOptions {
    pub stamps: Vec<String>,
    pub confirm: bool,
    pub force: bool,
    pub lock_wait: Duration,
}

/// The result of `forget`: a dry run fills `would_delete_stamps` and
/// `bytes_reclaimable`, a confirmed run `deleted_stamps`,
/// `bytes_reclaimed` and `gc`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ForgetResult {
    pub dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_delete_stamps: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_stamps: Option<Vec<String>>,
    /// Snapshots left afterwards, oldest first.
    pub remaining_stamps: Vec<String>,
    /// What the dry run's gc plan found (chunks stored twice whose copies
    /// are damaged or unread).
    #[serde(default)]
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_reclaimable: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_reclaimed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gc: Option<GcResult>,
    pub duration_ms: u64,
    #[serde(skip)]
    pub exit_code: i32,
}

pub fn forget(store: &Store, opts: &ForgetOptions) -> Result<ForgetResult> {
    let started = Instant::now();
    if opts.stamps.is_empty() {
        return Err(Error::Usage("forget: name at least one STAMP".into()));
    }
    let mut wanted: Vec<Stamp> = Vec::new();
    for s in &opts.stamps {
        let stamp = Stamp::parse(s)?;
        if !wanted.contains(&stamp) {
            wanted.push(stamp);
        }
    }
    wanted.sort();
    let mut r = ForgetResult::default();
    if opts.confirm {
        let lock = store.lock_exclusive("forget --confirm", opts.lock_wait)?;
        r.remaining_stamps = check(store, &wanted, opts.force)?;
        let done = cleanup::delete_then_gc(store, &lock, &wanted)?;
        r.deleted_stamps = Some(done.deleted);
        r.bytes_reclaimed = Some(done.bytes_reclaimed);
        r.errors = done.errors;
        r.exit_code = done.exit_code;
        r.gc = done.gc;
    } else {
        let _lock = store.lock_shared_reader("forget", opts.lock_wait)?;
        r.dry_run = true;
        r.remaining_stamps = check(store, &wanted, opts.force)?;
        r.would_delete_stamps = Some(wanted.iter().map(|s| s.to_string()).collect());
        let priced = cleanup::price_deletion(store, &wanted);
        r.bytes_reclaimable = Some(priced.bytes_reclaimable);
        r.warnings = priced.warnings;
        r.errors = priced.errors;
        r.exit_code = priced.exit_code;
    }
    r.duration_ms = started.elapsed().as_millis() as u64;
    Ok(r)
}

/// Every wanted stamp must be a snapshot of the store; deleting them all
/// needs `force`. Returns the stamps that remain.
fn check(store: &Store, wanted: &[Stamp], force: bool) -> Result<Vec<String>> {
    let listing = store.list_snapshots()?;
    if let Some(unknown) = wanted.iter().find(|s| !listing.stamps.contains(s)) {
        return Err(Error::SnapshotMissing {
            stamp: unknown.to_string(),
        });
    }
    let remaining: Vec<String> = listing
        .stamps
        .iter()
        .filter(|s| !wanted.contains(s))
        .map(|s| s.to_string())
        .collect();
    if remaining.is_empty() && !force {
        return Err(Error::ForgetAll {
            count: wanted.len() as u64,
        });
    }
    Ok(remaining)
}
