//! Audit evidence that lasts (issue 17 item 4): `verify` and `copy` write
//! records into the store (`verifies/`, `copies/`) like the drill log;
//! `list` shows each snapshot's last verify; `verify --subset N/T` and
//! `--oldest PERCENT` sample with a coverage guarantee.

use crate::support::{flip_bit, strings, Out, Runtime as Env};
use crate::verify::{stamp_of, two_snapshots, verify};
use atosnap::store::audit_log::{self, CopyRecord, DrillRecord, VerifyRecord, VerifyScope};
use atosnap::store::names::Log;
use atosnap::store::{key::Secrets, location::StoreAddress, Store};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;

const CHEAP_KDF: &str = "m=64,t=1,p=1";
/// The environment of an encrypted store's commands here.
const SEALED: &[(&str, &str)] = &[
    ("ATOSNAP_PASSWORD", "pw"),
    ("ATOSNAP_KDF_PARAMS", CHEAP_KDF),
];

/// Runs `args` with `env_vars`, which must succeed; its result.
fn ok_with(env: &Env, args: &[&str], env_vars: &[(&str, &str)]) -> Value {
    let out = env.run_env(args, env_vars);
    assert_eq!(out.code, 0, "{args:?}: {out:?}");
    out.json
}

/// The verify records in the store, oldest first, as JSON (unencrypted).
fn records(env: &Env, dir: &str) -> Vec<Value> {
    let mut names: Vec<_> = fs::read_dir(env.store.join(dir))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .map(|p| serde_json::from_slice(&fs::read(p).unwrap()).unwrap())
        .collect()
}

fn last_verify(env: &Env, i: usize) -> Value {
    env.ok(&["list"])["snapshots"][i]["last_verify"].clone()
}

/// A store of five snapshots, each create writing its own pack.
fn five_packs() -> Env {
    let env = Env::tiny();
    for round in 0..5 {
        env.set_registry(3000, round);
        env.create(&[]);
    }
    assert_eq!(env.packs().len(), 5);
    env
}

fn selected(out: &Out) -> BTreeSet<String> {
    strings(&out.json["sample"]["packs_selected"])
        .into_iter()
        .collect()
}

fn all_packs(env: &Env) -> BTreeSet<String> {
    env.pack_sizes().into_iter().map(|(n, _)| n).collect()
}

#[test]
fn verify_records_its_outcome_and_list_shows_the_last_covering_one() {
    let (env, s1, s2) = two_snapshots();
    let list = env.ok(&["list"]);
    assert_eq!(list["snapshots"][0]["last_verify"], Value::Null, "{list}");
    assert!(list["snapshots"][0].get("last_drill").is_some());

    // Named snapshots: only that one is covered.
    let one = verify(&env, &["--snapshot", &s1]);
    let name = one.json["recorded"].as_str().unwrap().to_string();
    assert!(name.starts_with("verifies/"), "{name}");
    assert!(env.store.join(&name).is_file());
    let rec = &records(&env, "verifies")[0];
    assert_eq!(rec["scope"], "snapshots");
    assert_eq!(rec["ok"], true);
    assert_eq!(rec["snapshots"][&s1], true);
    assert!(rec["snapshots"].get(&s2).is_none(), "{rec}");
    assert!(rec["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(last_verify(&env, 0)["at"], rec["at"]);
    assert_eq!(last_verify(&env, 0)["ok"], true);
    assert_eq!(last_verify(&env, 1), Value::Null);

    // Whole store, damaged: the record names the pack, s2's mark is false.
    let chunk = env.file_chunks(&s2, "chroma/seg/index_metadata.pickle")[0];
    let (pack, offset, _) = env.chunk_location(&chunk);
    flip_bit(&pack, offset + 3);
    let bad = verify(&env, &[]);
    assert_eq!(bad.code, 3);
    let recs = records(&env, "verifies");
    assert_eq!(recs.len(), 2, "one record per run");
    let rec = recs.iter().find(|r| r["scope"] == "store").unwrap();
    assert_eq!(rec["ok"], false);
    assert_eq!(rec["damaged_objects"], bad.json["damaged_objects"]);
    assert!(!strings(&rec["damaged_objects"]).is_empty());
    // Both packs were read; only the sound one counts as verified.
    let read = strings(&rec["packs_read"]);
    assert_eq!(read.len(), 1, "{rec}");
    assert!(!pack.to_string_lossy().contains(&read[0]), "{rec}");
    assert_eq!(last_verify(&env, 1)["ok"], false);
    assert_eq!(last_verify(&env, 1)["at"], rec["at"]);
    assert_eq!(last_verify(&env, 0)["ok"], true);
    assert_eq!(
        last_verify(&env, 0)["at"],
        rec["at"],
        "the newest covering one"
    );
}

#[test]
fn an_unknown_snapshot_is_recorded_as_covering_nothing() {
    let (env, _, _) = two_snapshots();
    let out = env.run(&["verify", "--snapshot", "20200101T000000Z"]);
    assert_eq!(out.code, 3, "{out:?}");
    let recs = records(&env, "verifies");
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["snapshots"], serde_json::json!({}));
    assert_eq!(last_verify(&env, 0), Value::Null);
    let out = env.run(&["verify", "--snapshot", "../x"]);
    assert_eq!(out.code, 1, "{out:?}");
}

#[test]
fn a_record_that_cannot_be_written_is_a_warning_not_a_lost_verdict() {
    let (env, _, _) = two_snapshots();
    // A file where the log's folder should be: the write fails.
    fs::write(env.store.join("verifies"), b"in the way").unwrap();
    let out = verify(&env, &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["ok"], true);
    assert!(out.json.get("recorded").is_none());
    let warnings = strings(&out.json["warnings"]);
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("verify record not written")),
        "{warnings:?}"
    );
    assert_eq!(last_verify(&env, 0), Value::Null);
}

#[test]
fn records_are_sealed_in_an_encrypted_store() {
    let env = Env::tiny();
    let run = |args: &[&str]| ok_with(&env, args, SEALED);
    run(&["init", "--encryption", "repokey"]);
    let stamp = stamp_of(&run(&["create"]));
    let v = run(&["verify"]);
    let raw = fs::read(env.store.join(v["recorded"].as_str().unwrap())).unwrap();
    assert!(
        !String::from_utf8_lossy(&raw).contains("scope"),
        "a sealed record"
    );
    let list = run(&["list"]);
    assert_eq!(list["snapshots"][0]["stamp"], stamp.as_str());
    assert_eq!(list["snapshots"][0]["last_verify"]["ok"], true, "{list}");
    // copy from an encrypted source records there too.
    let dest = env.path("plain-copy");
    let c = run(&["copy", "--to", dest.to_str().unwrap()]);
    assert!(
        c["recorded"].as_str().unwrap().starts_with("copies/"),
        "{c}"
    );
}

#[test]
fn subsets_read_every_pack_exactly_once() {
    let env = five_packs();
    let mut seen: Vec<String> = Vec::new();
    for n in 1..=3 {
        let spec = format!("{n}/3");
        let out = verify(&env, &["--subset", &spec]);
        assert_eq!(out.json["sample"]["spec"], format!("subset:{spec}"));
        assert_eq!(out.json["packs_sampled"], selected(&out).len());
        // Stable: the same subset again picks the same packs.
        assert_eq!(
            selected(&verify(&env, &["--subset", &spec])),
            selected(&out)
        );
        seen.extend(selected(&out));
    }
    seen.sort();
    assert_eq!(seen, all_packs(&env).into_iter().collect::<Vec<_>>());
    let rec = records(&env, "verifies").pop().unwrap();
    assert_eq!(rec["scope"], "sample");
    assert!(rec["sample"].as_str().unwrap().starts_with("subset:"));
}

#[test]
fn oldest_reads_never_verified_packs_first_and_covers_the_store() {
    let env = five_packs();
    let s1 = env.stamps()[0].clone();
    // s1's pack is verified; the next --oldest must pick others first.
    let first = verify(&env, &["--snapshot", &s1]);
    assert_eq!(first.json["packs_sampled"], 1);
    let verified: BTreeSet<String> = env
        .pack_sizes()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| {
            records(&env, "verifies")[0]["packs_read"][0]
                .as_str()
                .is_some_and(|id| n.contains(id))
        })
        .collect();
    assert_eq!(verified.len(), 1);
    let a = verify(&env, &["--oldest", "40"]);
    assert_eq!(a.json["sample"]["spec"], "oldest:40");
    let a = selected(&a);
    assert!(a.is_disjoint(&verified), "{a:?} {verified:?}");
    let b = selected(&verify(&env, &["--oldest", "40"]));
    let c = selected(&verify(&env, &["--oldest", "40"]));
    // ceil(100 / 40) = 3 runs read every pack.
    let union: BTreeSet<String> = a.iter().chain(&b).chain(&c).cloned().collect();
    assert_eq!(union, all_packs(&env));
    // The second run read what the first left unread, not the first's packs.
    let never: BTreeSet<String> = all_packs(&env)
        .difference(&a)
        .filter(|n| !verified.contains(*n))
        .cloned()
        .collect();
    assert!(
        never.iter().all(|n| b.contains(n)) || b.iter().all(|n| never.contains(n)),
        "{b:?} {never:?}"
    );
}

#[test]
fn bad_sample_flags_are_usage_errors_naming_the_flag() {
    let (env, s1, _) = two_snapshots();
    for (args, flag) in [
        (vec!["--subset", "0/3"], "--subset"),
        (vec!["--subset", "4/3"], "--subset"),
        (vec!["--subset", "x"], "--subset"),
        (vec!["--oldest", "0"], "--oldest"),
        (vec!["--oldest", "101"], "--oldest"),
        (vec!["--oldest", "x"], "--oldest"),
        (vec!["--oldest", "10", "--snapshot", &s1], "--oldest"),
        (vec!["--subset", "1/2", "--sample", "5"], "--subset"),
        (vec!["--subset", "1/2", "--oldest", "5"], "--oldest"),
    ] {
        let out = env.run(&[&["verify"][..], &args].concat());
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stderr.contains(flag), "{args:?}: {}", out.stderr);
    }
    assert!(records(&env, "verifies").is_empty(), "nothing ran");
    // --subset with --snapshot is a subset of that snapshot's packs.
    let out = verify(&env, &["--subset", "1/1", "--snapshot", &s1]);
    assert_eq!(out.json["packs_sampled"], 1);
}

/// A copy that stops on an error at the destination still leaves its
/// record in the source (not ok, with the error's code), so the log shows
/// the failure instead of only the last success growing old.
#[test]
fn a_copy_failing_at_the_destination_is_recorded_with_its_error() {
    let (env, s1, s2) = two_snapshots();
    let dest = env.path("offsite");
    let to = dest.to_str().unwrap();
    env.ok(&["copy", "--to", to, &s1]);
    // A file where the destination's scratch folder should be: the copy
    // of s2 cannot stage anything there.
    fs::remove_dir_all(dest.join("tmp")).unwrap();
    fs::write(dest.join("tmp"), b"in the way").unwrap();
    let out = env.run(&["copy", "--to", to]);
    assert_eq!(out.code, 1, "{out:?}");
    let code = out.error_code();
    let recs = records(&env, "copies");
    assert_eq!(recs.len(), 2, "{recs:?}");
    let failed = recs
        .iter()
        .find(|r| r["ok"] == false)
        .expect("a failed record");
    assert_eq!(failed["error"]["code"], code, "{failed}");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("tmp"), "names what failed: {message}");
    assert_eq!(failed["stamps_copied"], serde_json::json!([]));
    assert_eq!(failed["newest_stamp"], s1.as_str(), "s1 was found there");
    // Only successes count as the last copy; the next good run is one.
    fs::remove_file(dest.join("tmp")).unwrap();
    let again = env.ok(&["copy", "--to", to]);
    assert_eq!(again["snapshots_copied"][0], s2.as_str());
    let recs = records(&env, "copies");
    assert_eq!(recs.len(), 3);
    assert_eq!(recs.iter().filter(|r| r["ok"] == true).count(), 2);
    assert!(recs
        .iter()
        .filter(|r| r["ok"] == true)
        .all(|r| r.get("error").is_none()));
}

#[test]
fn copy_records_the_newest_stamp_per_destination() {
    let (env, s1, s2) = two_snapshots();
    let dest = env.path("offsite");
    let to = dest.to_str().unwrap();
    let c = env.ok(&["copy", "--to", to, &s1]);
    assert!(
        c["recorded"].as_str().unwrap().starts_with("copies/"),
        "{c}"
    );
    let again = env.ok(&["copy", "--to", to]);
    assert_eq!(again["snapshots_copied"][0], s2.as_str());
    let recs = records(&env, "copies");
    assert_eq!(recs.len(), 2);
    let newest = recs
        .iter()
        .find(|r| r["stamps_copied"][0] == s2.as_str())
        .unwrap();
    assert_eq!(newest["to"], again["to"]);
    assert_eq!(newest["newest_stamp"], s2.as_str());
    assert_eq!(newest["ok"], true);
    assert!(!dest.join("copies").exists(), "kept in the source only");
    // Nothing left to copy is still a successful, recorded copy.
    let noop = env.ok(&["copy", "--to", to]);
    assert!(noop["snapshots_copied"].as_array().unwrap().is_empty());
    assert_eq!(records(&env, "copies").len(), 3);
    // An unknown stamp is refused before any work: no record.
    let out = env.run(&["copy", "--to", to, "20200101T000000Z"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.error_code(), "snapshot_missing");
    assert_eq!(records(&env, "copies").len(), 3);
}

/// Writes one record of `log` as if at `at`, through the library.
fn old_record<T: serde::Serialize>(store: &Store, log: Log, key: Option<&str>, at: &str, rec: &T) {
    audit_log::append(store, log, key, at, rec).unwrap();
}

fn drill(stamp: &str, at: &str) -> DrillRecord {
    DrillRecord {
        stamp: stamp.into(),
        drill_at: at.into(),
        ok: true,
    }
}

fn copy_to(at: &str, ok: bool) -> CopyRecord {
    CopyRecord {
        to: "/backups/elsewhere".into(),
        at: at.into(),
        stamps_copied: vec![],
        newest_stamp: None,
        ok,
        error: None,
    }
}

fn verified(at: &str, stamps: &[&str], packs: &[&str]) -> VerifyRecord {
    VerifyRecord {
        at: at.into(),
        scope: VerifyScope::Snapshots,
        sample: None,
        ok: true,
        damaged_objects: vec![],
        packs_read: packs.iter().map(|p| p.to_string()).collect(),
        snapshots: stamps.iter().map(|s| (s.to_string(), true)).collect(),
        duration_ms: 1,
    }
}

/// The record files of every log, by name.
fn log_files(env: &Env) -> BTreeSet<String> {
    ["drills", "verifies", "copies"]
        .iter()
        .flat_map(|d| fs::read_dir(env.store.join(d)).into_iter().flatten())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// gc prunes the audit records no reader needs once they are 90 days old,
/// and keeps what `list` and the copy log show: the newest drill of each
/// snapshot, the newest and the newest good copy to a destination, the
/// newest verify and the newest covering each snapshot and pack, every
/// young record, and any record it cannot read.
#[test]
fn gc_prunes_old_audit_records_no_reader_needs() {
    let (env, s1, s2) = two_snapshots();
    prunes_what_no_reader_needs(&env, &s1, &s2, Secrets::none(), &[]);
}

/// The same in an encrypted store, whose records are sealed: gc reads
/// them through the store's key to judge them.
#[test]
fn gc_prunes_sealed_audit_records_alike() {
    let env = Env::tiny();
    let ok = |args: &[&str]| ok_with(&env, args, SEALED);
    ok(&["init", "--encryption", "repokey"]);
    let s1 = stamp_of(&ok(&["create", "--chroma"]));
    let s2 = stamp_of(&ok(&["create", "--chroma"]));
    prunes_what_no_reader_needs(&env, &s1, &s2, Secrets::from_password("pw"), SEALED);
}

fn prunes_what_no_reader_needs(
    env: &Env,
    s1: &str,
    s2: &str,
    secrets: Secrets,
    pw: &[(&str, &str)],
) {
    let ok = |args: &[&str]| ok_with(env, args, pw);
    let store = Store::open(&StoreAddress::local(&env.store), &secrets).unwrap();
    let pack = {
        let (name, _) = env.pack_sizes().remove(0);
        let id = atosnap::store::pack::pack_id_from_name(&name).unwrap();
        id.to_hex()
    };
    let gone = "20190101T000000Z";
    let now = chrono::Utc::now();
    let day_ago = (now - chrono::Duration::days(1)).to_rfc3339();
    let at = |h: u32| format!("2020-01-01T{h:02}:00:00.000Z");
    let (d, v) = (Log::Drill, Log::Verify);
    old_record(&store, d, Some(s1), &at(1), &drill(s1, &at(1))); // superseded
    old_record(&store, d, Some(s1), &at(2), &drill(s1, &at(2))); // s1's newest
    old_record(&store, d, Some(gone), &at(3), &drill(gone, &at(3))); // its snapshot is gone
    old_record(&store, d, Some(s2), &day_ago, &drill(s2, &day_ago)); // young, superseded
    let now = now.to_rfc3339();
    old_record(&store, d, Some(s2), &now, &drill(s2, &now));
    for (h, ok) in [(4, true), (5, true), (6, false)] {
        // The first is superseded; the second is the newest good one.
        audit_log::append_copy(&store, &copy_to(&at(h), ok)).unwrap();
    }
    let none: &[&str] = &[];
    old_record(&store, v, None, &at(7), &verified(&at(7), &[s1], none)); // superseded
    old_record(&store, v, None, &at(8), &verified(&at(8), none, &[&pack])); // superseded
    old_record(&store, v, None, &at(9), &verified(&at(9), &[gone], &["00"])); // nothing left
    old_record(&store, v, None, &at(10), &verified(&at(10), none, &[&pack])); // the pack's
    old_record(&store, v, None, &at(11), &verified(&at(11), &[s1], none)); // s1's

    // The newest readable one; the file after it does not read: kept, and
    // the readers' newest verify is the one before it.
    old_record(&store, v, None, &at(12), &verified(&at(12), &[gone], none));
    fs::write(
        env.store.join("verifies/20200101T130000000Z-beef.json"),
        b"not json",
    )
    .unwrap();
    let before = log_files(env);
    let listed = ok(&["list"]);

    let dry = ok(&["gc"]);
    assert_eq!(dry["would_prune_audit_records"], 6, "{dry}");
    assert_eq!(log_files(env), before, "a dry run deletes nothing");
    let done = ok(&["gc", "--confirm"]);
    assert_eq!(done["audit_records_pruned"], 6, "{done}");
    let pruned: BTreeSet<String> = before.difference(&log_files(env)).cloned().collect();
    let hours: BTreeSet<String> = pruned
        .iter()
        .map(|n| n.rsplit_once("--").map_or(n.as_str(), |(_, t)| t)[9..11].to_string())
        .collect();
    assert_eq!(
        hours,
        ["01", "03", "04", "07", "08", "09"]
            .map(String::from)
            .into()
    );
    assert_eq!(ok(&["list"]), listed, "what list shows is unchanged");
    assert_eq!(ok(&["gc", "--confirm"])["audit_records_pruned"], 0);
}

/// A pack `--oldest` found damaged is not "verified": the next run reads
/// it again first (and reports it) until a read finds it sound. It once
/// counted as the most recently verified pack, and the runs after the one
/// that found it reported ok for a whole rotation.
#[test]
fn oldest_reads_a_pack_found_damaged_again_until_it_is_sound() {
    let env = five_packs();
    let (pack, size) = env.pack_sizes().into_iter().next().unwrap();
    flip_bit(&env.store.join(&pack), size / 2);
    let mut found = false;
    for _ in 0..3 {
        if verify(&env, &["--oldest", "40"]).json["ok"] == false {
            found = true;
            break;
        }
    }
    assert!(found, "a full rotation never read {pack}");
    for _ in 0..2 {
        let next = verify(&env, &["--oldest", "40"]);
        assert_eq!(next.json["ok"], false, "{}", next.json);
        assert!(selected(&next).contains(&pack), "{:?}", selected(&next));
    }
}

fn verify_rec(at: &str, scope: VerifyScope, ok: bool, duration_ms: u64) -> VerifyRecord {
    VerifyRecord {
        at: at.into(),
        scope,
        sample: None,
        ok,
        damaged_objects: vec![],
        packs_read: vec![],
        snapshots: Default::default(),
        duration_ms,
    }
}

/// What copy asks of the log: whether the newest verify of the whole
/// store passed. Verifies of some snapshots or of a sample say nothing.
#[test]
fn the_newest_whole_verify_decides_and_partial_ones_say_nothing() {
    let env = Env::fixture();
    env.create_stamp(&[]);
    let store = Store::open(&StoreAddress::local(&env.store), &Secrets::none()).unwrap();
    let newest = || audit_log::newest_whole_verify_ok(&store);
    assert_eq!(newest(), None, "no verify at all");
    let add = |at: &str, scope, ok| {
        old_record(
            &store,
            Log::Verify,
            None,
            at,
            &verify_rec(at, scope, ok, 1000),
        )
    };
    add("2026-05-01T11:00:00.000Z", VerifyScope::Snapshots, false);
    add("2026-05-01T11:10:00.000Z", VerifyScope::Sample, false);
    assert_eq!(newest(), None, "only partial verifies");
    add("2026-05-01T12:00:00.000Z", VerifyScope::Store, false);
    add("2026-05-01T12:10:00.000Z", VerifyScope::Snapshots, true);
    assert_eq!(newest(), Some(false));
    add("2026-05-01T13:00:00.000Z", VerifyScope::Store, true);
    assert_eq!(newest(), Some(true));
}
