//! `atosnap gc` through the binary: what it deletes, what it rewrites, what
//! it must never touch, and its agreement with `verify`.
//!
//! The scenario (built once, copied per test):
//! - D1 `create --chroma`: pack A holds the db, the registry and Chroma;
//! - D2 `create --chroma` with a 1 MiB random `junk.bin` added: pack B
//!   holds only the junk;
//! - D3 `create` (db only): nothing new.
//!
//! Deleting D1 and D2 leaves B dead (deleted) and A mostly dead (the db is
//! its only live part: rewritten).

use crate::support::{dead_pid, strs, Runtime as Env};
use serde_json::Value;
use std::fs;
use std::sync::OnceLock;

struct Scenario {
    env: Env,
    pack_a: String,
    pack_b: String,
    d1: String,
    d2: String,
    d3: String,
}

fn scenario() -> &'static Scenario {
    static S: OnceLock<Scenario> = OnceLock::new();
    S.get_or_init(|| {
        let env = Env::fixture();
        let d1 = env.create_on("2026-04-01", &["--chroma"]);
        let packs = env.pack_sizes();
        assert_eq!(packs.len(), 1);
        let pack_a = packs[0].0.clone();
        env.add_junk("junk.bin", 1 << 20, 7);
        let d2 = env.create_on("2026-04-02", &["--chroma"]);
        fs::remove_file(env.chroma().join("junk.bin")).unwrap();
        let pack_b = env
            .pack_sizes()
            .into_iter()
            .map(|p| p.0)
            .find(|p| *p != pack_a)
            .unwrap();
        let d3 = env.create_on("2026-04-03", &[]);
        assert_eq!(env.pack_sizes().len(), 2);
        Scenario {
            env,
            pack_a,
            pack_b,
            d1,
            d2,
            d3,
        }
    })
}

/// A copy of the scenario with D1 and D2 deleted.
fn after_deletion() -> (Env, &'static Scenario) {
    let s = scenario();
    let env = Env::clone_of(&s.env);
    for stamp in [&s.d1, &s.d2] {
        fs::remove_dir_all(env.store.join("snapshots").join(stamp)).unwrap();
    }
    (env, s)
}

fn total(env: &Env) -> u64 {
    env.pack_sizes().iter().map(|p| p.1).sum()
}

#[test]
fn with_every_snapshot_present_nothing_is_garbage() {
    let s = scenario();
    let env = Env::clone_of(&s.env);
    let r = env.ok(&["gc", "--confirm"]);
    assert_eq!(r["deleted_packs"], serde_json::json!([]));
    assert_eq!(r["rewritten_packs"], serde_json::json!([]));
    assert_eq!(r["bytes_reclaimed"], 0);
    assert_eq!(r["snapshots_marked"], 3);
    assert_eq!(r["chunks_dead"], 0);
    assert_eq!(env.pack_sizes(), s.env.pack_sizes());
}

#[test]
fn dry_run_plans_agree_with_verify_and_delete_nothing() {
    let (env, s) = after_deletion();
    let before = env.pack_sizes();
    let r = env.ok(&["gc"]);
    assert_eq!(r["dry_run"], true);
    assert_eq!(strs(&r["would_delete_packs"]), [s.pack_b.as_str()]);
    assert_eq!(strs(&r["would_rewrite_packs"]), [s.pack_a.as_str()]);
    assert!(r.get("deleted_packs").is_none() && r.get("bytes_reclaimed").is_none());
    let size_b = before.iter().find(|p| p.0 == s.pack_b).unwrap().1;
    let reclaimable = r["bytes_reclaimable"].as_u64().unwrap();
    assert!(reclaimable > size_b, "{r}");
    assert_eq!(env.pack_sizes(), before);

    // Same notion of garbage as verify.
    let v = env.ok(&["verify"]);
    assert_eq!(strs(&v["orphans"]), [s.pack_b.as_str()]);
    assert_eq!(
        v["reclaimable_bytes"].as_u64().unwrap(),
        reclaimable + r["dead_bytes_kept"].as_u64().unwrap(),
        "verify {v}\ngc {r}"
    );
}

#[test]
fn confirm_deletes_dead_packs_and_rewrites_sparse_ones() {
    let (env, s) = after_deletion();
    let before = total(&env);
    let r = env.ok(&["gc", "--confirm"]);
    let mut deleted = strs(&r["deleted_packs"]);
    deleted.sort();
    let mut expect = vec![s.pack_a.clone(), s.pack_b.clone()];
    expect.sort();
    assert_eq!(deleted, expect, "{r}");
    assert_eq!(strs(&r["rewritten_packs"]), [s.pack_a.as_str()]);
    let written = strs(&r["written_packs"]);
    assert_eq!(written.len(), 1);
    let after = env.pack_sizes();
    assert_eq!(
        after.iter().map(|p| p.0.clone()).collect::<Vec<_>>(),
        written
    );
    assert_eq!(before - total(&env), r["bytes_reclaimed"].as_u64().unwrap());
    assert_eq!(env.stamps(), [s.d3.as_str()]);
    let v = env.assert_healthy();
    assert_eq!(v["orphans"], serde_json::json!([]));
    assert_eq!(v["reclaimable_bytes"], 0);

    // Idempotent: nothing left to do.
    let again = env.ok(&["gc"]);
    assert_eq!(again["would_delete_packs"], serde_json::json!([]));
    assert_eq!(again["would_rewrite_packs"], serde_json::json!([]));
    assert_eq!(again["bytes_reclaimable"], 0);
}

fn assert_refused(env: &Env, args: &[&str], stamp: &str) {
    let before = env.pack_sizes();
    let r = env.run(args);
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(r.error_code(), "gc_refused_unreadable_manifest");
    let msg = r.json["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(stamp) && msg.contains("nothing was deleted"),
        "{msg}"
    );
    assert!(r.stderr.contains(stamp));
    assert_eq!(env.pack_sizes(), before);
}

#[test]
fn an_unreadable_manifest_makes_gc_refuse() {
    let (env, s) = after_deletion();
    let path = env.store.join("snapshots").join(&s.d3).join("manifest.bin");
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 40] ^= 0x01;
    fs::write(&path, bytes).unwrap();
    assert_refused(&env, &["gc"], &s.d3);
    assert_refused(&env, &["gc", "--confirm"], &s.d3);
}

#[test]
fn a_missing_manifest_makes_gc_refuse() {
    let (env, s) = after_deletion();
    fs::remove_file(env.store.join("snapshots").join(&s.d3).join("manifest.bin")).unwrap();
    assert_refused(&env, &["gc", "--confirm"], &s.d3);
}

#[test]
fn a_missing_snapshots_folder_makes_gc_refuse() {
    let (env, _) = after_deletion();
    fs::rename(env.store.join("snapshots"), env.dir.path().join("moved")).unwrap();
    let before = env.pack_sizes();
    let r = env.run(&["gc", "--confirm"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.error_code(), "snapshots_dir_missing");
    assert_eq!(env.pack_sizes(), before);
}

#[test]
fn a_damaged_pack_is_never_deleted() {
    let (env, s) = after_deletion();
    // B is dead, but its index no longer reads: gc leaves it to verify
    // and repair, and says so.
    let path = env.store.join(&s.pack_b);
    let len = fs::metadata(&path).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    // A dry run that prices a deletion with gc's plan says why it exits 3.
    let priced = env.run(&["forget", &s.d3, "--force"]);
    assert_eq!(priced.code, 3, "{priced:?}");
    assert!(
        priced
            .strings("warnings")
            .iter()
            .any(|w| w.starts_with(&format!("pack {} left alone: ", s.pack_b))),
        "{priced:?}"
    );
    // Left alone, the rest done, and said in the exit code (3: damage).
    let out = env.run(&["gc", "--confirm"]);
    assert_eq!(out.code, 3, "{out:?}");
    let r = out.json;
    assert_eq!(damaged_packs(&r), [s.pack_b.as_str()]);
    assert!(path.exists());
    assert_eq!(strs(&r["rewritten_packs"]), [s.pack_a.as_str()]);
    assert!(!env.store.join(&s.pack_a).exists());
    // The remaining snapshot is whole; verify still names the damage.
    let v = env.run(&["validate", &s.d3]);
    assert_eq!(v.code, 0, "{v:?}");
    assert_eq!(
        strs(&env.run(&["verify"]).json["damaged_objects"]),
        [s.pack_b.as_str()]
    );
}

#[test]
fn a_copy_of_a_live_pack_under_another_name_never_costs_the_pack() {
    // gc reads a listed pack by its listed name but deletes by id: a copy
    // of live pack A in the wrong shard folder once passed for A, was
    // judged the live one, and "the dead duplicate" deleted was A itself.
    let s = scenario();
    let env = Env::clone_of(&s.env);
    let file = s.pack_a.rsplit('/').next().unwrap();
    let shard = if s.pack_a.starts_with("objects/00/") {
        "01"
    } else {
        "00"
    };
    let stray = format!("objects/{shard}/{file}");
    fs::create_dir_all(env.store.join("objects").join(shard)).unwrap();
    fs::copy(env.store.join(&s.pack_a), env.store.join(&stray)).unwrap();
    for args in [&["gc"][..], &["gc", "--confirm"]] {
        let out = env.run(args);
        assert_eq!(out.code, 3, "{out:?}");
        assert_eq!(damaged_packs(&out.json), [stray.as_str()], "{out:?}");
        assert!(!out.json.to_string().contains(&s.pack_a), "{out:?}");
    }
    assert!(env.store.join(&s.pack_a).exists() && env.store.join(&stray).exists());
    for stamp in [&s.d1, &s.d2, &s.d3] {
        assert_eq!(env.run(&["validate", stamp]).code, 0, "{stamp}");
    }
}

/// Ctrl-C on `gc --confirm` stops it between two steps (SPEC §4: the
/// `interrupted` document, exit 1), each of which leaves the store whole;
/// it once went on rewriting and deleting to the end.
#[test]
fn an_interrupted_gc_stops_between_steps_and_leaves_the_store_whole() {
    let (env, s) = after_deletion();
    let dead = env.store.join(&s.pack_b);
    let dead_size = fs::metadata(&dead).unwrap().len();
    let out = env.interrupted_at("gc:before-rewrite", &["gc", "--confirm"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.error_code(), "interrupted", "{out:?}");
    // The dead pack went before the signal, and the error says so: a
    // deletion cannot be undone, so the operator learns of it.
    assert!(!dead.exists());
    let message = out.json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("deleted 1 dead pack(s) ({dead_size} bytes)")),
        "{message}"
    );
    assert!(
        env.store.join(&s.pack_a).exists(),
        "the sparse pack is not rewritten"
    );
    assert_eq!(env.run(&["validate", &s.d3]).code, 0);
    // The next gc finishes the work.
    let r = env.ok(&["gc", "--confirm"]);
    assert_eq!(strs(&r["rewritten_packs"]), [s.pack_a.as_str()]);
    assert_eq!(env.run(&["validate", &s.d3]).code, 0);
}

#[test]
fn a_pack_whose_index_the_storage_fails_to_deliver_is_kept_with_exit_1() {
    let (env, s) = after_deletion();
    // B is dead, but the storage fails every read of it: a failure of
    // the storage, not damage, and never a reason to delete it.
    let mut cmd = env.command();
    cmd.args(["gc", "--confirm"])
        .env("ATOSNAP_TEST_UNREADABLE_OBJECT", &s.pack_b);
    let out = crate::support::run_cmd(&mut cmd);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(damaged_packs(&out.json), [s.pack_b.as_str()]);
    let detail = out.json["damaged_packs"][0]["detail"].as_str().unwrap();
    assert!(detail.starts_with("unreadable: "), "{detail}");
    assert!(env.store.join(&s.pack_b).exists());
    assert_eq!(strs(&out.json["rewritten_packs"]), [s.pack_a.as_str()]);
    // Once it reads again, gc takes it.
    let r = env.ok(&["gc", "--confirm"]);
    assert!(strs(&r["deleted_packs"]).contains(&s.pack_b), "{r}");
    assert_eq!(env.run(&["validate", &s.d3]).code, 0);
}

fn damaged_packs(r: &Value) -> Vec<String> {
    r["damaged_packs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_corrupt_live_chunk_keeps_its_sparse_pack() {
    let (env, s) = after_deletion();
    // Flip a byte inside a chunk of A that D3 still references.
    let store = atosnap::store::Store::open(
        &atosnap::store::location::StoreAddress::local(&env.store),
        &atosnap::store::key::Secrets::none(),
    )
    .unwrap();
    let d3 = atosnap::stamp::Stamp::parse(&s.d3).unwrap();
    let manifest = store
        .read_manifest(&d3, atosnap::store::ReadFrom::Cache)
        .unwrap();
    let live_chunk = store
        .file_chunk_ids(&store.load_index().unwrap(), manifest.db().unwrap())
        .unwrap()[0];
    let size = fs::metadata(env.store.join(&s.pack_a)).unwrap().len();
    let layout = store
        .read_pack_index(&atosnap::store::Object::Listed(s.pack_a.clone()), size)
        .unwrap();
    let ci = layout.ids().position(|id| id == live_chunk).unwrap() as u32;
    // The frame holding it (in format 2 a frame holds several chunks).
    let frame = *layout
        .frames
        .iter()
        .find(|f| (f.first_chunk..f.first_chunk + f.n_chunks).contains(&ci))
        .unwrap();
    drop(store);
    let path = env.store.join(&s.pack_a);
    let mut bytes = fs::read(&path).unwrap();
    bytes[frame.offset as usize + frame.stored_len as usize / 2] ^= 0x55;
    fs::write(&path, bytes).unwrap();

    let r = env.run(&["gc", "--confirm"]);
    assert_eq!(r.code, 3, "{r:?}");
    let errors = strs(&r.json["errors"]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    // The flipped byte lands in live_chunk's frame: a chunk of that frame
    // is named (the one the garbled bytes belong to).
    let frame_ids: Vec<String> = layout
        .frame_chunks(layout.frames.iter().position(|f| *f == frame).unwrap())
        .iter()
        .map(|c| format!("chunk_corrupt:{}", c.id))
        .collect();
    assert!(
        frame_ids.iter().any(|c| errors[0].contains(c)) && errors[0].contains(&s.pack_a),
        "{errors:?}"
    );
    // A stays (its chunk is still the one verify will report); B goes.
    assert!(env.store.join(&s.pack_a).exists());
    assert_eq!(strs(&r.json["deleted_packs"]), [s.pack_b.as_str()]);
    assert_eq!(r.json["rewritten_packs"], serde_json::json!([]));
}

#[test]
fn temp_leftovers_are_removed_by_confirm_only() {
    let (env, _) = after_deletion();
    let tmp = env.store.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let pid = dead_pid();
    fs::write(
        tmp.join(format!("{pid}-00000000000000aa.pack")),
        vec![7u8; 1000],
    )
    .unwrap();
    fs::create_dir(tmp.join(format!("{pid}-00000000000000bb.dir"))).unwrap();
    fs::write(
        tmp.join(format!("{pid}-00000000000000bb.dir/manifest.bin")),
        b"half",
    )
    .unwrap();
    let dry = env.ok(&["gc"]);
    assert_eq!(dry["tmp_files_removed"], 0);
    assert_eq!(env.tmp_entries().len(), 2);
    let r = env.ok(&["gc", "--confirm"]);
    assert_eq!(r["tmp_files_removed"], 2);
    assert_eq!(r["tmp_bytes_removed"], 1004);
    assert!(env.tmp_entries().is_empty());
}

#[test]
fn a_manifest_in_an_unparseable_folder_keeps_its_data() {
    let (env, s) = after_deletion();
    let kept = env.store.join("snapshots/keep-d1");
    fs::create_dir(&kept).unwrap();
    fs::copy(
        s.env
            .store
            .join("snapshots")
            .join(&s.d1)
            .join("manifest.bin"),
        kept.join("manifest.bin"),
    )
    .unwrap();
    let r = env.ok(&["gc", "--confirm"]);
    assert_eq!(strs(&r["protected_unparseable"]), ["keep-d1"]);
    assert_eq!(strs(&r["deleted_packs"]), [s.pack_b.as_str()]);
    assert!(env.store.join(&s.pack_a).exists());
    assert!(kept.join("manifest.bin").exists());
}

#[test]
fn every_result_field_is_present() {
    let (env, _) = after_deletion();
    let dry = env.ok(&["gc"]);
    let wet = env.ok(&["gc", "--confirm"]);
    let common_keys = [
        "dry_run",
        "snapshots_marked",
        "packs_total",
        "chunks_live",
        "chunks_dead",
        "chunks_missing",
        "rewrite_threshold_percent",
        "dead_bytes_kept",
        "damaged_packs",
        "protected_unparseable",
        "tmp_files_removed",
        "tmp_bytes_removed",
        "warnings",
        "errors",
        "duration_ms",
    ];
    let has = |v: &Value, k: &str| v.get(k).is_some();
    for k in common_keys {
        assert!(has(&dry, k) && has(&wet, k), "{k}");
    }
    for k in [
        "would_delete_packs",
        "would_rewrite_packs",
        "bytes_reclaimable",
    ] {
        assert!(has(&dry, k) && !has(&wet, k), "{k}");
    }
    for k in [
        "deleted_packs",
        "rewritten_packs",
        "written_packs",
        "bytes_reclaimed",
    ] {
        assert!(has(&wet, k) && !has(&dry, k), "{k}");
    }
    assert_eq!(dry["rewrite_threshold_percent"], 50);
}

#[test]
fn gc_on_a_missing_store_is_a_clear_error() {
    let env = Env::fixture();
    let r = env.run(&["gc", "--confirm"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.error_code(), "store_missing");
}

#[test]
fn the_grace_period_keeps_young_packs_until_it_passes() {
    let (env, s) = after_deletion();
    let before = env.pack_sizes();
    // Every pack was written moments ago: within an hour's grace, gc
    // deletes and rewrites nothing, and says why.
    let r = env.ok(&["gc", "--confirm", "--grace-period", "3600"]);
    assert_eq!(r["grace_period_secs"], 3600);
    assert_eq!(r["packs_within_grace"], 2, "{r}");
    assert_eq!(r["deleted_packs"], serde_json::json!([]));
    assert_eq!(r["rewritten_packs"], serde_json::json!([]));
    assert_eq!(env.pack_sizes(), before);
    // A local store's default is no grace: the same gc then reclaims.
    let r = env.ok(&["gc", "--confirm"]);
    assert_eq!(r["grace_period_secs"], 0);
    assert_eq!(r["packs_within_grace"], 0);
    assert!(strs(&r["deleted_packs"]).contains(&s.pack_b), "{r}");
    env.assert_healthy();
}

/// `tmp/` a link to another folder (a bigger disk, or planted): gc under
/// the exclusive lock removes only atosnap's own temp names there, never
/// anything else in that folder (it once emptied it).
#[test]
fn gc_never_removes_what_is_not_its_temp_through_a_linked_tmp() {
    let env = Env::tiny();
    env.create(&["--chroma"]);
    let elsewhere = env.dir.path().join("elsewhere");
    fs::create_dir_all(elsewhere.join("projects")).unwrap();
    fs::write(elsewhere.join("thesis.tex"), b"years of work").unwrap();
    fs::write(elsewhere.join("projects/notes.md"), b"notes").unwrap();
    let tmp = env.store.join("tmp");
    fs::remove_dir_all(&tmp).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &tmp).unwrap();
    let r = env.ok(&["gc", "--confirm"]);
    assert_eq!(r["tmp_files_removed"], 0, "{r}");
    assert!(elsewhere.join("thesis.tex").exists());
    assert!(elsewhere.join("projects/notes.md").exists());
}
