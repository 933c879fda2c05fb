//! copy and a destination that lost packs: the snapshots published there
//! vouch for their trees only while no loss is known (see
//! `docs/FORMAT.md`, "Losses"); otherwise every chunk is looked up and
//! what is gone is sent again from the source.

use crate::copy::{copy_ok, on, u, validate_ok};
use crate::support::{run_cmd, Runtime as Env};
use std::path::{Path, PathBuf};

/// A destination snapshot that `verify --repair` found damaged vouches for
/// nothing: a later copy of a snapshot sharing its file trees sends them
/// again from the whole source, and the copy is whole.
#[test]
fn a_damaged_destination_snapshot_does_not_vouch_for_its_trees() {
    let env = Env::fixture();
    // Nothing changes at the source: the second snapshot's files have the
    // first one's trees.
    let (dest, s2) = lost_at_destination(&env, Some(&["verify", "--repair"]));
    copy_makes_whole(&env, &dest, &s2);
    validate_ok(&env, &dest, &s2, &[]);
}

/// s1 copied, then the destination loses its packs; `found_by`, a command
/// run there then, finds it (exit 3). Returns the destination and s2,
/// created at the source since.
fn lost_at_destination(env: &Env, found_by: Option<&[&str]>) -> (PathBuf, String) {
    let s1 = env.create_stamp(&["--chroma", "--at", "2026-04-10T12:00:00Z"]);
    let dest = env.dir.path().join("copy");
    copy_ok(env, &dest, &[&s1]);
    remove_packs(&dest);
    if let Some(args) = found_by {
        let v = run_cmd(on(env, &dest).args(args));
        assert_eq!(v.code, 3, "{v:?}");
    }
    let s2 = env.create_stamp(&["--chroma", "--at", "2026-04-11T12:00:00Z"]);
    (dest, s2)
}

/// The copy of s2 sends what is gone, and s2 verifies at the destination.
fn copy_makes_whole(env: &Env, dest: &Path, s2: &str) {
    let r = copy_ok(env, dest, &[s2]);
    assert!(u(&r, "chunks_sent") > 0, "{r}");
    let v = run_cmd(on(env, dest).args(["verify", "--snapshot", s2]));
    assert_eq!(v.code, 0, "{v:?}");
}

fn remove_packs(store: &Path) {
    for pack in walkdir::WalkDir::new(store.join("objects"))
        .into_iter()
        .flatten()
    {
        if pack.file_type().is_file() {
            std::fs::remove_file(pack.path()).unwrap();
        }
    }
}

/// Packs lost at the destination, found first by the copy itself (no
/// verify ran there since): the published snapshot's summary still says
/// validated, but its trees vouch for nothing then. The copy once skipped
/// them and published a snapshot whose chunks were gone, exit 0.
#[test]
fn packs_the_destination_lost_are_sent_again_not_vouched_for() {
    let env = Env::fixture();
    let (dest, s2) = lost_at_destination(&env, None);
    copy_makes_whole(&env, &dest, &s2);
}

/// The same loss found first by another command at the destination (a
/// `verify` without `--repair`, exit 3): the copy after it does not see
/// packs go in its own refresh, yet must not take the summaries on trust
/// until a whole verify passes there. It once did, and published a
/// snapshot whose chunks were gone, exit 0.
#[test]
fn a_loss_another_command_found_first_still_makes_the_copy_look() {
    let env = Env::fixture();
    let (dest, s2) = lost_at_destination(&env, Some(&["verify"]));
    copy_makes_whole(&env, &dest, &s2);
}

fn index_dirs(env: &Env) -> Vec<std::path::PathBuf> {
    walkdir::WalkDir::new(env.path("cache"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_dir() && e.file_name() == "index")
        .map(|e| e.path().to_path_buf())
        .collect()
}

/// A cache made afresh (deleted, another host, a cache dir that cannot be
/// written) knows of no loss: the failed whole verify in the store's log
/// still keeps the summaries from vouching.
#[test]
fn a_loss_survives_a_cache_made_afresh_through_the_verify_log() {
    let env = Env::fixture();
    let (dest, s2) = lost_at_destination(&env, Some(&["verify"]));
    std::fs::remove_dir_all(env.path("cache")).unwrap();
    copy_makes_whole(&env, &dest, &s2);
}

/// A mark that does not read (torn) counts as a loss, never as none.
#[test]
fn a_torn_mark_of_lost_packs_still_counts_as_a_loss() {
    let env = Env::fixture();
    let (dest, s2) = lost_at_destination(&env, Some(&["verify"]));
    let marks: Vec<_> = index_dirs(&env)
        .into_iter()
        .map(|d| d.join("losses-seen"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(marks.len(), 1);
    std::fs::write(&marks[0], b"").unwrap();
    copy_makes_whole(&env, &dest, &s2);
}

/// The mark is written before the packs are marked gone: a refresh that
/// fails to write it fails before forgetting the loss, and the next one
/// finds the packs gone again.
#[test]
fn a_mark_that_cannot_be_written_never_forgets_the_loss() {
    let env = Env::fixture();
    let s1 = env.create_stamp(&["--chroma", "--at", "2026-04-10T12:00:00Z"]);
    let dest = env.dir.path().join("copy");
    copy_ok(&env, &dest, &[&s1]);
    remove_packs(&dest);
    let dirs = index_dirs(&env);
    for d in &dirs {
        std::fs::create_dir(d.join("losses-seen.tmp")).unwrap();
    }
    let v = run_cmd(on(&env, &dest).args(["verify"]));
    assert_eq!(v.code, 1, "{v:?}");
    for d in &dirs {
        std::fs::remove_dir(d.join("losses-seen.tmp")).unwrap();
    }
    // A verify log that says nothing either way: only the mark can tell.
    std::fs::remove_dir_all(dest.join("verifies")).ok();
    let s2 = env.create_stamp(&["--chroma", "--at", "2026-04-11T12:00:00Z"]);
    copy_makes_whole(&env, &dest, &s2);
}

/// A passing verify record that claims a later time (a host whose clock
/// runs fast, or a forged record) cannot clear this host's mark: only a
/// verify of the whole store run here, that started with the mark and
/// found every snapshot whole, does. (A whole verify that fails keeps
/// it: see `a_torn_mark_of_lost_packs_still_counts_as_a_loss`.)
#[test]
fn only_a_whole_verify_here_that_passes_clears_the_mark() {
    let env = Env::fixture();
    let (dest, s2) = lost_at_destination(&env, Some(&["verify"]));
    let fast = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let store = atosnap::store::Store::open(
        &atosnap::store::location::StoreAddress::local(&dest),
        &atosnap::store::key::Secrets::none(),
    )
    .unwrap();
    let forged = atosnap::store::audit_log::VerifyRecord {
        at: fast.clone(),
        scope: atosnap::store::audit_log::VerifyScope::Store,
        sample: None,
        ok: true,
        damaged_objects: vec![],
        packs_read: vec![],
        snapshots: Default::default(),
        duration_ms: 1,
    };
    atosnap::store::audit_log::append(
        &store,
        atosnap::store::names::Log::Verify,
        None,
        &fast,
        &forged,
    )
    .unwrap();
    copy_makes_whole(&env, &dest, &s2);
    let marked = || {
        index_dirs(&env)
            .iter()
            .any(|d| d.join("losses-seen").exists())
    };
    assert!(marked(), "a record from elsewhere cleared the mark");
    // The copy sent back every chunk s1 shares with s2 (the same tree):
    // the store is whole again, and a whole verify here says so.
    let v = run_cmd(on(&env, &dest).args(["verify"]));
    assert_eq!(v.code, 0, "{v:?}");
    assert!(!marked(), "the passing whole verify clears the mark");
}
