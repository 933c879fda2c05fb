//! Claims on a snapshot folder: how a claim names its writer, and when a
//! claim left by a crashed writer counts as abandoned.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::os::TempOwner;
use crate::store::backend::ListEntry;

use super::CLAIM_PREFIX;

/// The marker a writer puts in a folder it claims:
/// `.claim-<pid>-<host>-<boot>-<pidns>-<token>-<random>`, the writer named
/// as a temp file's owner is ([`TempOwner`]). The boot id and the PID
/// namespace matter: two containers may share a host name but not their
/// pids, and a pid looked up in the wrong namespace would condemn a live
/// writer.
pub fn claim_marker(owner: &TempOwner, random: u64) -> String {
    format!("{CLAIM_PREFIX}{}{random:016x}", owner.prefix())
}

/// The writer a claim marker names; `None` for a name of another form,
/// every field checked for its shape, so that a claim written before
/// claims named their PID namespace (`.claim-<host>-<pid>-<random>`, a
/// host that may hold dashes) never reads as one that does.
fn claim_owner(name: &str) -> Option<TempOwner> {
    let marker = name.rsplit('/').next()?.strip_prefix(CLAIM_PREFIX)?;
    let random = marker.splitn(6, '-').nth(5)?;
    let owner = TempOwner::parse(marker)?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let shaped = hex(random, 16)
        && (owner.boot == "0" || hex(&owner.boot, 8))
        && owner.pidns.bytes().all(|b| b.is_ascii_digit())
        && hex(&owner.token, 8);
    shaped.then_some(owner)
}

/// An incomplete folder left uncommitted this long is abandoned whoever
/// claimed it: a writer commits seconds after its claim.
pub(super) const ABANDONED_AFTER: Duration = Duration::from_secs(15 * 60);

/// Whether an incomplete folder (no commit file) was left by a writer that
/// is gone: every claim in it names a writer provably gone
/// ([`TempOwner::is_gone`]: a process of this host, boot and PID namespace
/// that no longer runs), or nothing in it changed for [`ABANDONED_AFTER`].
/// A claim of another host, boot or namespace (a bucket is shared between
/// machines, two of which may carry one host name), or of an older form,
/// is judged by time alone.
pub(super) fn abandoned(present: &[ListEntry]) -> bool {
    let stale = present.iter().all(|e| {
        e.modified
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= ABANDONED_AFTER)
    });
    let claims: Vec<Option<TempOwner>> = present
        .iter()
        .filter(|e| is_claim(&e.name))
        .map(|e| claim_owner(&e.name))
        .collect();
    let dead_claims = !claims.is_empty()
        && claims
            .iter()
            .all(|owner| owner.as_ref().is_some_and(TempOwner::is_gone));
    stale || dead_claims
}

/// Whether a writer that has just claimed a folder may go on, deleting
/// what else is in it. `before` is the listing taken before the claim,
/// empty or judged [`abandoned`]; `after` the folder as listed once the
/// claim was written, the claim itself left out. Why two listings: a
/// writer's process is looked up after the first, and in between it may
/// have committed and exited, so `before` alone would condemn a complete
/// folder. A writer judged gone writes nothing later, so `after` holds all
/// it wrote: its commit if it committed (the folder stays), and no claim
/// but the ones judged (a newer claim is another taker's, racing: both
/// step back and try again).
pub(super) fn may_clear(before: &[ListEntry], after: &[ListEntry], commit: &str) -> bool {
    let claims = |listing: &[ListEntry]| -> BTreeSet<String> {
        listing
            .iter()
            .filter(|e| is_claim(&e.name))
            .map(|e| e.name.clone())
            .collect()
    };
    !after.iter().any(|e| e.name == commit)
        && claims(after).is_subset(&claims(before))
        && abandoned(after)
}

fn is_claim(name: &str) -> bool {
    name.rsplit('/')
        .next()
        .is_some_and(|n| n.starts_with(CLAIM_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    const DIR: &str = "snapshots/20260101T000000Z";
    const COMMIT: &str = "snapshots/20260101T000000Z/manifest.bin";

    fn entry(name: &str, age: Duration) -> ListEntry {
        ListEntry {
            name: format!("{DIR}/{name}"),
            size: 1,
            modified: SystemTime::now().checked_sub(age),
            etag: None,
        }
    }

    /// A claim by this process's host, boot and namespace, with `pid`.
    fn claim_of_pid(pid: u32) -> ListEntry {
        claim_by(TempOwner {
            pid,
            ..TempOwner::current().clone()
        })
    }

    fn claim_by(owner: TempOwner) -> ListEntry {
        entry(&claim_marker(&owner, 0xab), Duration::ZERO)
    }

    /// The `n`th pid (from 0) of this host that runs no process.
    fn dead_pid_n(n: usize) -> u32 {
        (4_000_000..4_100_000)
            .filter(|p| !crate::os::process_alive(*p))
            .nth(n)
            .expect("a free pid")
    }

    fn dead_pid() -> u32 {
        dead_pid_n(0)
    }

    #[test]
    fn a_claim_is_abandoned_when_its_process_is_gone_or_the_folder_went_still() {
        let meta = entry("backup-metadata.json", Duration::ZERO);
        let dead = claim_of_pid(dead_pid());
        assert!(abandoned(&[dead.clone(), meta.clone()]));
        let live = claim_of_pid(std::process::id());
        assert!(!abandoned(&[live, meta.clone()]));
        // Another host's process cannot be looked up: only time tells.
        let remote = claim_by(TempOwner {
            pid: dead_pid(),
            host: "anotherhost".into(),
            ..TempOwner::current().clone()
        });
        assert!(claim_owner(&remote.name).is_some(), "a well-formed claim");
        assert!(!abandoned(&[remote, meta.clone()]));
        let old = entry(
            "backup-metadata.json",
            ABANDONED_AFTER + Duration::from_secs(1),
        );
        assert!(abandoned(&[old]));
        // No claim at all, fresh files: a writer may still be at work.
        assert!(!abandoned(&[meta]));
    }

    #[test]
    fn a_pid_is_looked_up_only_in_its_own_boot_and_namespace() {
        let me = TempOwner::current().clone();
        let meta = entry("backup-metadata.json", Duration::ZERO);
        let judged = |owner: TempOwner| abandoned(&[claim_by(owner), meta.clone()]);
        if me.pidns != "0" && me.boot != "0" {
            // Another container with this host name: its pids are not ours.
            let other_ns = TempOwner {
                pid: dead_pid(),
                pidns: format!("{}1", me.pidns),
                ..me.clone()
            };
            assert!(!judged(other_ns), "a pid of another namespace");
            // Another boot id under this host name: an earlier boot of
            // this machine, or another machine of the same name sharing
            // the bucket. Only time tells.
            let other_boot = TempOwner {
                pid: dead_pid(),
                boot: me.other_boot_id(),
                ..me.clone()
            };
            assert!(!judged(other_boot), "a claim of another boot");
            // An earlier process that had this very pid.
            let reused_pid = TempOwner {
                token: "ffffffff".into(),
                ..me.clone()
            };
            assert!(judged(reused_pid), "this pid, another process");
        }
        assert!(!judged(me), "this process");
        // A claim of the older form names no namespace: time alone tells,
        // even when its pid runs nothing here.
        let old_form = format!(
            "{CLAIM_PREFIX}{}-{}-00000000000000ab",
            crate::os::hostname(),
            dead_pid()
        );
        assert!(!abandoned(&[
            entry(&old_form, Duration::ZERO),
            meta.clone()
        ]));
        let old_and_still = entry(&old_form, ABANDONED_AFTER + Duration::from_secs(1));
        assert!(abandoned(&[old_and_still]));
        // An older marker whose host starts with digits and holds dashes
        // has six fields too, and is still not read as a new one.
        let dashed = format!("{CLAIM_PREFIX}1-db-a-b-{}-00000000000000ab", dead_pid());
        assert!(claim_owner(&dashed).is_none());
        assert!(!abandoned(&[entry(&dashed, Duration::ZERO), meta.clone()]));
        assert!(claim_owner(&claim_marker(TempOwner::current(), 7)).is_some());
    }

    #[test]
    fn a_writer_that_committed_after_the_listing_keeps_its_folder() {
        let dead = claim_of_pid(dead_pid());
        let meta = entry("backup-metadata.json", Duration::ZERO);
        let before = [dead.clone(), meta.clone()];
        assert!(abandoned(&before), "judged on the first listing alone");
        // It committed, dropped its claim and exited before it was looked up.
        let committed = [meta.clone(), entry("manifest.bin", Duration::ZERO)];
        assert!(!may_clear(&before, &committed, COMMIT));
        // Still without its commit: the leftovers of a dead writer go.
        assert!(may_clear(&before, &before, COMMIT));
        // It wrote one more file before it died: that goes too.
        let more = [dead, meta, entry("extra.json", Duration::ZERO)];
        assert!(may_clear(&before, &more, COMMIT));
    }

    #[test]
    fn an_empty_folder_is_won_only_when_nothing_else_came_in() {
        assert!(may_clear(&[], &[], COMMIT));
        let racer = claim_of_pid(std::process::id());
        assert!(!may_clear(&[], &[racer], COMMIT), "a racing taker");
        let committed = entry("manifest.bin", Duration::ZERO);
        assert!(!may_clear(&[], &[committed], COMMIT), "committed meanwhile");
        let fresh = entry("backup-metadata.json", Duration::ZERO);
        assert!(!may_clear(&[], &[fresh], COMMIT), "a writer at work");
    }

    #[test]
    fn a_claim_that_appeared_after_the_listing_is_left_to_its_writer() {
        let dead = claim_of_pid(dead_pid());
        let before = [dead.clone()];
        // A writer whose claim was not judged: even a gone one is judged
        // on a listing of its own first.
        let newer = [dead.clone(), claim_of_pid(dead_pid_n(1))];
        assert!(!may_clear(&before, &newer, COMMIT));
        let live = [dead, claim_of_pid(std::process::id())];
        assert!(!may_clear(&before, &live, COMMIT));
        // Emptied meanwhile (another taker cleared it): nothing to delete.
        assert!(may_clear(&before, &[], COMMIT));
    }
}
