//! Claims on a snapshot folder: when a claim left by a crashed writer counts
//! as abandoned.

use std::time::Duration;

use crate::store::backend::ListEntry;

use super::CLAIM_PREFIX;

/// An incomplete folder left uncommitted this long is abandoned whoever
/// claimed it: a writer commits seconds after its claim.
pub(super) const ABANDONED_AFTER: Duration = Duration::from_secs(15 * 60);

/// Whether an incomplete folder (no commit file) was left by a writer that
/// is gone: its claim marker names a process of this host that no longer
/// runs, or nothing in it changed for [`ABANDONED_AFTER`].
pub(super) fn abandoned(present: &[ListEntry]) -> bool {
    let stale = present.iter().all(|e| {
        e.modified
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= ABANDONED_AFTER)
    });
    let host = crate::store::lock::object::hostname();
    let claims: Vec<(&str, u32)> = present
        .iter()
        .filter_map(|e| e.name.rsplit('/').next()?.strip_prefix(CLAIM_PREFIX))
        .filter_map(|rest| {
            // `<host>-<pid>-<random>`; the host may hold dashes.
            let mut parts = rest.rsplitn(3, '-');
            let (_random, pid, claimed_on) = (parts.next()?, parts.next()?, parts.next()?);
            Some((claimed_on, pid.parse().ok()?))
        })
        .collect();
    let dead_local_claim = !claims.is_empty()
        && claims
            .iter()
            .all(|(h, pid)| *h == host && !crate::os::process_alive(*pid));
    stale || dead_local_claim
}
