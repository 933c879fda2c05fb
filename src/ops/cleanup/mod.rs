//! `cleanup`: applies the retention policy ([`crate::ops::cleanup::retention`]) to the
//! store. It owns gathering the policy's input (each snapshot's tags from
//! its `backup-metadata.json`, else from its manifest; unreadable tags keep
//! the snapshot) and carrying the plan out.
//!
//! A dry run (the default) holds the shared lock and prices the deletion
//! with a gc plan that leaves the doomed snapshots out. With `--confirm`
//! the exclusive lock is taken first, the plan is made again under it (a
//! create may have finished since), the snapshots are deleted (each folder
//! disappears at once), then gc runs under the same lock. Folders under
//! `snapshots/` that are not stamps are reported and never touched.
//!
//! [`delete_then_gc`] and [`price_deletion`] are shared with `forget`,
//! which deletes snapshots named by the operator instead of by a policy.

pub mod retention;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::ops::gc::{self, GcResult};
use crate::stamp::Stamp;
use crate::store::lock::ExclusiveLock;
use crate::store::Store;
use retention::{Candidate, Policy};

#[derive(Clone, Debug)]
pub struct CleanupOptions {
    pub policy: Policy,
    pub confirm: bool,
    pub lock_wait: Duration,
}

/// The result of `cleanup` (SPEC §3). A dry run fills the `would_*` and
/// `bytes_reclaimable` fields, a confirmed run `deleted*`,
/// `bytes_reclaimed` and `gc`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CleanupResult {
    pub dry_run: bool,
    pub kept: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_delete: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<u64>,
    pub kept_stamps: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_delete_stamps: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_stamps: Option<Vec<String>>,
    /// Why each kept snapshot is kept: `last`, `within`, `hourly`,
    /// `daily`, `weekly`, `monthly`, `yearly`, `tag:T`, `tags_unreadable`,
    /// `newest` (every rule that keeps it).
    pub reasons: BTreeMap<String, Vec<String>>,
    /// The same map under its first name (kept for existing scripts).
    pub kept_reasons: BTreeMap<String, Vec<String>>,
    pub unparseable: Vec<String>,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_reclaimable: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_reclaimed: Option<u64>,
    pub policy: Policy,
    /// Where the policy came from: `store` (the stored policy, see
    /// `atosnap policy`), `defaults`, each with `+flags` when cleanup's own
    /// flags overrode some rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_source: Option<String>,
    /// The gc that followed the deletions (confirmed runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gc: Option<GcResult>,
    pub duration_ms: u64,
    /// Process exit code for this result (0, 1 or 3).
    #[serde(skip)]
    pub exit_code: i32,
}

pub fn cleanup(store: &Store, opts: &CleanupOptions) -> Result<CleanupResult> {
    let started = Instant::now();
    if opts.policy.keeps_nothing() {
        return Err(Error::Usage(
            "every --keep-* rule is 0 or unset and no --keep-tag is given: cleanup would delete every snapshot but the newest; keep at least one".into(),
        ));
    }
    let mut result = if opts.confirm {
        let lock = store.lock_exclusive("cleanup --confirm", opts.lock_wait)?;
        let (plan, mut r) = make_plan(store, &opts.policy)?;
        let done = delete_then_gc(store, &lock, &plan.delete)?;
        r.deleted = Some(done.deleted.len() as u64);
        r.deleted_stamps = Some(done.deleted);
        r.bytes_reclaimed = Some(done.bytes_reclaimed);
        r.errors.extend(done.errors);
        r.exit_code = r.exit_code.max(done.exit_code);
        r.gc = done.gc;
        r
    } else {
        let _lock = store.lock_shared_reader("cleanup", opts.lock_wait)?;
        let (plan, mut r) = make_plan(store, &opts.policy)?;
        r.dry_run = true;
        r.would_delete = Some(plan.delete.len() as u64);
        r.would_delete_stamps = Some(plan.delete.iter().map(|s| s.to_string()).collect());
        let priced = price_deletion(store, &plan.delete);
        r.bytes_reclaimable = Some(priced.bytes_reclaimable);
        r.warnings.extend(priced.warnings);
        r.errors.extend(priced.errors);
        r.exit_code = r.exit_code.max(priced.exit_code);
        r
    };
    result.duration_ms = started.elapsed().as_millis() as u64;
    Ok(result)
}

/// What deleting snapshots and the gc after it did.
#[derive(Clone, Debug, Default)]
pub struct Deletion {
    pub deleted: Vec<String>,
    pub bytes_reclaimed: u64,
    pub errors: Vec<String>,
    pub exit_code: i32,
    pub gc: Option<GcResult>,
}

/// Deletes `stamps` (each folder disappears at once), then runs gc under
/// the same exclusive lock. A snapshot that cannot be deleted is an error
/// in the result; the others still go. A signal stops it between two
/// deletions (`interrupted`): what is gone is gone, gc runs next time.
pub fn delete_then_gc(store: &Store, lock: &ExclusiveLock, stamps: &[Stamp]) -> Result<Deletion> {
    let mut d = Deletion::default();
    for stamp in stamps {
        crate::os::check_interrupted()?;
        match store.delete_snapshot(lock, stamp) {
            Ok(()) => d.deleted.push(stamp.to_string()),
            Err(e) => {
                d.errors.push(format!("snapshot {stamp} not deleted: {e}"));
                d.exit_code = d.exit_code.max(1);
            }
        }
    }
    match gc::collect(store, lock) {
        Ok(g) => {
            d.bytes_reclaimed = g.bytes_reclaimed.unwrap_or(0);
            d.errors.extend(g.errors.iter().map(|e| format!("gc: {e}")));
            d.exit_code = d.exit_code.max(g.exit_code);
            d.gc = Some(g);
        }
        Err(e) if e.is_interrupted() => return Err(e),
        Err(e) => {
            d.errors.push(format!("gc: {e}"));
            d.exit_code = d.exit_code.max(e.exit_code());
        }
    }
    Ok(d)
}

/// What a dry run says deleting `doomed` would give back.
#[derive(Clone, Debug, Default)]
pub struct Priced {
    pub bytes_reclaimable: u64,
    /// What gc's plan found about chunks stored twice (it would report
    /// them too).
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
    pub exit_code: i32,
}

/// Prices the deletion of `doomed` with a gc plan that leaves them out.
pub fn price_deletion(store: &Store, doomed: &[Stamp]) -> Priced {
    let doomed: BTreeSet<Stamp> = doomed.iter().cloned().collect();
    match gc::plan(store, &doomed) {
        Ok(g) => Priced {
            bytes_reclaimable: g.bytes_reclaimable(),
            exit_code: g.exit_code(),
            warnings: g.warnings,
            errors: Vec::new(),
        },
        Err(e) => Priced {
            errors: vec![format!("gc would refuse: {e}")],
            exit_code: e.exit_code(),
            ..Priced::default()
        },
    }
}

/// Lists the snapshots, reads their tags and applies the policy.
fn make_plan(store: &Store, policy: &Policy) -> Result<(retention::Plan, CleanupResult)> {
    let listing = store.list_snapshots()?;
    let mut warnings = Vec::new();
    let candidates: Vec<Candidate> = listing
        .stamps
        .iter()
        .map(|stamp| {
            let tags = read_tags(store, stamp).map_err(|e| {
                warnings.push(format!("{stamp}: tags unreadable ({e}); kept"));
            });
            Candidate {
                stamp: stamp.clone(),
                tags: tags.ok(),
            }
        })
        .collect();
    let plan = retention::plan(&candidates, &listing.unparseable, policy);
    let reasons: BTreeMap<String, Vec<String>> = plan
        .keep
        .iter()
        .map(|k| {
            (
                k.stamp.to_string(),
                k.reasons.iter().map(|r| r.to_string()).collect(),
            )
        })
        .collect();
    let result = CleanupResult {
        kept: plan.keep.len() as u64,
        kept_stamps: plan.kept_stamps().map(|s| s.to_string()).collect(),
        kept_reasons: reasons.clone(),
        reasons,
        unparseable: plan.unparseable.clone(),
        warnings,
        policy: policy.clone(),
        ..CleanupResult::default()
    };
    Ok((plan, result))
}

/// Tags from the summary, where `atosnap tag` edits them. When it does not
/// read, the tags are unknown (and the snapshot kept): the manifest holds
/// only the tags it was taken with, so a tag added since (a pin) would be
/// missed and the snapshot judged by its date alone.
pub fn read_tags(store: &Store, stamp: &Stamp) -> std::result::Result<Vec<String>, String> {
    let metadata = store.read_metadata(stamp).map_err(|e| {
        format!("{e}; `verify --repair` rebuilds it (with the tags the snapshot was taken with)")
    })?;
    metadata
        .get("tags")
        .and_then(|t| serde_json::from_value::<Vec<String>>(t.clone()).ok())
        .ok_or_else(|| "backup-metadata.json has no tags list".to_string())
}
