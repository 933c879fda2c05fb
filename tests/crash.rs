//! Crash safety, proven by killing: `create`, `gc --confirm`,
//! `cleanup --confirm` and a live `restore` are started on a copy of the
//! fixtures and SIGKILLed at a random moment of their run. Afterwards, for
//! the store commands:
//! 1. the snapshots listed are the ones expected (a killed create adds its
//!    snapshot whole or not at all; gc deletes none; cleanup only doomed
//!    ones), nothing under `snapshots/` is unparseable, every listed
//!    snapshot validates and `verify` finds nothing corrupt, missing or
//!    damaged;
//! 2. the next writer (a plain `create`) cleans the temp leftovers;
//! 3. the killed command, run again, converges (gc then has nothing left to
//!    do) and the store is still healthy.
//!
//! For restore (D1, with Chroma, put back in place onto the runtime at a
//! later state; trials alternate `--no-pre-snapshot` and a pre-restore
//! snapshot):
//! 1. every runtime file (db, registry, each Chroma file) is wholly old
//!    (its bytes and mode before the restore, or absent if it was) or
//!    wholly new (the snapshot's); nothing else lies beside them but the
//!    killed process's `.atosnap-restore-<pid>-*` temps and db sidecars,
//!    which the next run sweeps; the Chroma dir keeps its inode;
//! 2. the store is healthy, and holds the snapshots it held plus at most
//!    one whole `pre-restore` snapshot;
//! 3. the same restore, run again, converges: the runtime then equals a
//!    `restore --to` of D1 exactly (paths, contents, modes, file mtimes),
//!    the restored db passes its integrity check, and the next writer
//!    cleans the store's tmp/.
//!
//! `crash_trials_quick` runs 2 trials per command in the normal test run;
//! `crash_trials_stress` (ignored; `cargo test --test crash -- --ignored
//! --nocapture`) runs ATOSNAP_CRASH_TRIALS (default 24) per command and
//! prints the tally. ATOSNAP_CRASH_SEED fixes the random delays' seed;
//! ATOSNAP_CRASH_KINDS (e.g. `restore` or `gc,cleanup`) picks the commands.
//!
//! Half the kills land anywhere in the run, half in its second half (where
//! gc deletes and rewrites packs); a restore's are split between its short
//! write phase and what comes before it (see `start_and_kill`). The stores use 1 MiB packs so that each command publishes and deletes
//! many packs over its run: a kill lands between those steps.

#[path = "support/mod.rs"]
mod support;

#[path = "crash/failpoints.rs"]
mod failpoints;
use failpoints::assert_next_writer_cleans_tmp;

use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::{strs, Runtime as Env};

const D1: &str = "20260401T120000Z";
const D2: &str = "20260402T120000Z";
const D3: &str = "20260403T120000Z";
const D4: &str = "20260404T120000Z";

const CLEANUP: [&str; 8] = [
    "cleanup",
    "--confirm",
    "--keep-daily",
    "2",
    "--keep-weekly",
    "0",
    "--keep-monthly",
    "0",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Create,
    Gc,
    Cleanup,
    Restore,
}

const KINDS: [Kind; 4] = [Kind::Create, Kind::Gc, Kind::Cleanup, Kind::Restore];

/// The stores the trials start from.
struct Templates {
    /// D1 (with a 1 MiB junk file), D2 and D3 (60 % of the HNSW blocks
    /// rewritten each time), D4 (db only).
    base: Env,
    /// `base` with D1 and D2 deleted, not yet collected: gc deletes the
    /// junk packs and rewrites the sparse HNSW packs.
    collectable: Env,
    /// How long an unkilled run of each command (and create variant) took.
    durations: BTreeMap<(Kind, u64), Duration>,
    /// The packs once gc has run to its end (gc and cleanup trials).
    collected: BTreeSet<String>,
    /// How long an unkilled restore ran after its first temp file (its
    /// writes, then the integrity check), by variant.
    write_phase: BTreeMap<u64, Duration>,
    /// What `restore D1 --to DIR` writes: the state a live restore of D1
    /// must reach (keys as [`live_tree`] names them).
    reference: Tree,
}

fn templates() -> &'static Templates {
    static T: OnceLock<Templates> = OnceLock::new();
    T.get_or_init(|| {
        let base = Env::fixture();
        base.init_with_pack_size(1 << 20);
        base.add_junk("junk.bin", 1 << 20, 1);
        assert_eq!(base.create_on("2026-04-01", &["--chroma"]), D1);
        fs::remove_file(base.chroma().join("junk.bin")).unwrap();
        for (seed, day, stamp) in [(2, "2026-04-02", D2), (3, "2026-04-03", D3)] {
            base.scramble_hnsw(60, seed);
            base.mutate_db(50, seed);
            assert_eq!(base.create_on(day, &["--chroma"]), stamp);
        }
        base.mutate_db(50, 4);
        assert_eq!(base.create_on("2026-04-04", &[]), D4);

        let collectable = Env::clone_of(&base);
        for s in [D1, D2] {
            fs::remove_dir_all(collectable.store.join("snapshots").join(s)).unwrap();
        }

        let reference = {
            let dir = tempfile::tempdir().unwrap();
            let to = dir.path().join("to");
            let doc = base.ok(&["restore", D1, "--to", to.to_str().unwrap()]);
            assert_eq!(doc["restored_integrity_ok"], true, "{doc}");
            tree(&to, |rel| Some(rel.to_string()))
        };

        // Calibrate: one unkilled run of each, which also checks that the
        // scenario makes the commands do real work.
        let mut durations = BTreeMap::new();
        let mut collected = BTreeMap::new();
        let mut write_phase = BTreeMap::new();
        for (kind, variant) in [
            (Kind::Create, 0),
            (Kind::Create, 1),
            (Kind::Gc, 0),
            (Kind::Cleanup, 0),
            (Kind::Restore, 0),
            (Kind::Restore, 1),
        ] {
            let env = prepare(&base, &collectable, kind, variant);
            if kind == Kind::Restore {
                let (doc, took, writes) = watched_restore(&env, variant);
                durations.insert((kind, variant), took);
                write_phase.insert(variant, writes);
                for k in ["db_restored", "registry_restored", "chroma_restored"] {
                    assert_eq!(doc[k], true, "{doc}");
                }
                assert_eq!(doc["restored_integrity_ok"], true, "{doc}");
                assert!(doc["chroma_files_written"].as_u64().unwrap() >= 2, "{doc}");
                assert!(doc["chroma_files_removed"].as_u64().unwrap() >= 3, "{doc}");
                assert_eq!(
                    doc["pre_restore_snapshot"].is_string(),
                    variant == 1,
                    "{doc}"
                );
                assert_same(&live_tree(&env.runtime), &reference, "unkilled restore");
                continue;
            }
            let started = Instant::now();
            let doc = env.ok(&args(kind, variant));
            durations.insert((kind, variant), started.elapsed());
            if kind != Kind::Create {
                let gc = if kind == Kind::Gc { &doc } else { &doc["gc"] };
                assert!(!strs(&gc["deleted_packs"]).is_empty(), "{doc}");
                assert!(!strs(&gc["rewritten_packs"]).is_empty(), "{doc}");
                collected.insert(kind, pack_names(&env));
            }
        }
        // Pack names are content hashes: both end states are the same.
        assert_eq!(collected[&Kind::Gc], collected[&Kind::Cleanup]);
        eprintln!("crash: unkilled durations {durations:?}, restore writes {write_phase:?}");
        Templates {
            base,
            collectable,
            durations,
            collected: collected.remove(&Kind::Gc).unwrap(),
            write_phase,
            reference,
        }
    })
}

/// The command line of a trial. Restore variant 0 skips the pre-restore
/// snapshot, variant 1 takes it.
fn args(kind: Kind, variant: u64) -> Vec<&'static str> {
    match kind {
        Kind::Create => vec!["create", "--chroma", "--at", "2026-04-05T12:00:00Z"],
        Kind::Gc => vec!["gc", "--confirm"],
        Kind::Cleanup => CLEANUP.to_vec(),
        Kind::Restore if variant == 0 => vec![
            "restore",
            D1,
            "--confirm-service-stopped",
            "--no-pre-snapshot",
        ],
        Kind::Restore => vec!["restore", D1, "--confirm-service-stopped"],
    }
}

/// Which variant trial `n` of `kind` runs.
fn variant_of(kind: Kind, n: u64) -> u64 {
    match kind {
        Kind::Create | Kind::Restore => n % 2,
        Kind::Gc | Kind::Cleanup => 0,
    }
}

/// A private copy to run one trial on. Create trials alternate between a
/// new empty store (the first, biggest snapshot) and the base store with a
/// changed runtime (an incremental one). Restore trials get the base
/// store and its runtime (at D4, Chroma as at D3) moved further away from
/// D1: more db rows, another registry, a Chroma file and a folder D1 does
/// not have (D1 also has a file the runtime lacks, and another HNSW file).
fn prepare(base: &Env, collectable: &Env, kind: Kind, trial: u64) -> Env {
    match kind {
        Kind::Create if trial.is_multiple_of(2) => {
            let env = Env::clone_of(base);
            fs::remove_dir_all(&env.store).unwrap();
            env.init_with_pack_size(1 << 20);
            env
        }
        Kind::Create => {
            let env = Env::clone_of(base);
            env.scramble_hnsw(30, 1000 + trial);
            env.mutate_db(100, 1000 + trial);
            env
        }
        Kind::Gc => Env::clone_of(collectable),
        Kind::Cleanup => Env::clone_of(base),
        Kind::Restore => {
            let env = Env::clone_of(base);
            env.mutate_db(20, 7000 + trial);
            env.set_registry(4000, 7000 + trial);
            env.add_junk("extra.bin", 256 << 10, 7000 + trial);
            fs::create_dir_all(env.chroma().join("extra-dir")).unwrap();
            env.add_junk("extra-dir/f.bin", 64 << 10, 8000 + trial);
            env
        }
    }
}

fn pack_names(env: &Env) -> BTreeSet<String> {
    env.pack_sizes().into_iter().map(|p| p.0).collect()
}

#[derive(Default, Debug)]
struct Tally {
    trials: u32,
    killed_mid_run: u32,
    finished_before_kill: u32,
    /// Restore trials killed during (or just after) the write phase.
    aimed_at_writes: u32,
    /// Trials after which tmp/ held leftovers of the killed process.
    tmp_leftovers: u32,
    /// Restore trials after which the runtime held the killed process's
    /// temp files or db sidecars (swept by the next run), and what they
    /// were (counted once per trial).
    runtime_leftovers: u32,
    leftover_kinds: BTreeMap<&'static str, u32>,
    /// Where in its work the kill left the store (or the runtime), with
    /// counts.
    phases: BTreeMap<String, u32>,
}

/// How long each command (and create variant) runs, learnt as the trials
/// go: a load change on the machine would otherwise move every kill
/// before the start or after the end.
#[derive(Clone, Debug)]
struct Estimates {
    /// Whole runs, by command and variant.
    runs: BTreeMap<(Kind, u64), Duration>,
    /// Restore: from its first temp file to its exit, by variant.
    writes: BTreeMap<u64, Duration>,
}

/// One kill: what to print when a check fails, and the killed pid.
struct Kill {
    context: String,
    pid: u32,
}

/// Whether restore trial `n` aims at its write phase: half of them do,
/// each variant alike, the first ones included (so the quick run writes
/// too); the other half are killed before the writes.
fn aims_at_writes(kind: Kind, n: u64) -> bool {
    kind == Kind::Restore && (n / 2).is_multiple_of(2)
}

/// Starts trial `n` of `kind` on `env` and SIGKILLs it after a random
/// delay: half the trials anywhere in [0, 1.3 T] of an unkilled run's
/// duration T, half late in it ([0.6 T, 1.2 T]), where gc deletes.
///
/// A restore spends most of its run validating, hashing and taking its
/// pre-restore snapshot, then writes for a few tens of milliseconds and
/// checks the db, so its trials are split in two strata that cover the
/// whole run: half wait for its first temp file beside the db and kill it
/// a random time in [0, W] after, W being how long the run goes on from
/// there; half are killed in [0, T - W] (validation, planning, and the
/// pre-restore snapshot when there is one). T and W are calibrated, then
/// learnt. Counts the trial.
fn start_and_kill(
    env: &Env,
    kind: Kind,
    n: u64,
    rng: &mut rand::rngs::StdRng,
    estimates: &mut Estimates,
    tally: &mut Tally,
) -> Kill {
    let variant = variant_of(kind, n);
    let whole = estimates.runs[&(kind, variant)].as_micros() as u64;
    let aimed = aims_at_writes(kind, n);
    let range = if aimed {
        let w = estimates.writes[&variant].as_micros() as u64;
        0..w + 1
    } else if kind == Kind::Restore {
        let w = estimates.writes[&variant].as_micros() as u64;
        0..whole.saturating_sub(w) + 1
    } else if (n / 2).is_multiple_of(2) {
        0..whole * 13 / 10 + 1
    } else {
        whole * 6 / 10..whole * 12 / 10 + 1
    };
    let after = Duration::from_micros(rng.random_range(range));

    let mut child = env
        .command()
        .args(args(kind, variant))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let pid = child.id();
    if aimed {
        let data = env.db().parent().unwrap().to_path_buf();
        while child.try_wait().unwrap().is_none() && !has_restore_temp(&data) {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "restore never wrote"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    std::thread::sleep(after);
    let delay = started.elapsed();
    let running = child.try_wait().unwrap().is_none();
    // A finished run bounds its duration; a running one extends it. (An
    // aimed kill only learns about the write phase: its delays crowd the
    // end of the run and would drag the whole-run estimate down.)
    let (estimate, taken) = if aimed {
        (estimates.writes.get_mut(&variant).unwrap(), after)
    } else {
        (estimates.runs.get_mut(&(kind, variant)).unwrap(), delay)
    };
    *estimate = if running {
        (*estimate).max(taken)
    } else {
        (*estimate).min(taken)
    };
    child.kill().unwrap(); // SIGKILL (a no-op if it already exited)
    child.wait().unwrap();

    tally.trials += 1;
    if running {
        tally.killed_mid_run += 1;
    } else {
        tally.finished_before_kill += 1;
    }
    if aimed {
        tally.aimed_at_writes += 1;
    }
    if !env.tmp_entries().is_empty() {
        tally.tmp_leftovers += 1;
    }
    let state = if running { "mid-run" } else { "after it ended" };
    let aim = if aimed {
        format!(" ({after:?} into its writes)")
    } else {
        String::new()
    };
    Kill {
        context: format!(
            "{kind:?} trial {n} (variant {variant}), killed {state} after {delay:?}{aim}"
        ),
        pid,
    }
}

/// Whether `dir` holds a restore temp file (a restore is writing there).
fn has_restore_temp(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".atosnap-restore-")
        })
    })
}

/// The runtime's entries by path and inode (db sidecars aside): a restore
/// changes it when it creates a temp file, renames one into place or
/// removes something.
fn fingerprint(runtime: &Path) -> BTreeSet<(PathBuf, u64)> {
    walkdir::WalkDir::new(runtime)
        .into_iter()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy();
            !["-wal", "-shm", "-journal"]
                .iter()
                .any(|s| name.ends_with(s))
        })
        .filter_map(|e| Some((e.path().to_path_buf(), e.metadata().ok()?.ino())))
        .collect()
}

/// Runs a restore to its end while watching the runtime: its JSON result,
/// its duration, and how long it ran after its first temp file (writes
/// from there to the last change of the runtime's entries, then checks).
fn watched_restore(env: &Env, variant: u64) -> (serde_json::Value, Duration, Duration) {
    let mut child = env
        .command()
        .args(args(Kind::Restore, variant))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let data = env.db().parent().unwrap().to_path_buf();
    let mut last = fingerprint(&env.runtime);
    let mut first_write = None;
    let mut last_change = None;
    while child.try_wait().unwrap().is_none() {
        if first_write.is_none() && has_restore_temp(&data) {
            first_write = Some(started.elapsed());
        }
        let now = fingerprint(&env.runtime);
        if now != last {
            last_change = Some(started.elapsed());
            last = now;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let total = started.elapsed();
    let out = child.wait_with_output().unwrap();
    let run = support::parse(&out);
    assert_eq!(run.code, 0, "unkilled restore: {run:?}");
    let first = first_write.expect("the restore's db temp file was never seen");
    let writes = total.saturating_sub(first);
    eprintln!(
        "crash: unkilled restore (variant {variant}): writes from {first:?} to {:?}, exit at {total:?}",
        last_change.unwrap()
    );
    (run.json, total, writes.max(Duration::from_millis(20)))
}

fn trial(
    kind: Kind,
    n: u64,
    rng: &mut rand::rngs::StdRng,
    estimates: &mut Estimates,
    tally: &mut Tally,
) {
    if kind == Kind::Restore {
        return restore_trial(n, rng, estimates, tally);
    }
    let t = templates();
    let env = prepare(&t.base, &t.collectable, kind, n);
    let before: BTreeSet<String> = if env.store.join("snapshots").exists() {
        env.stamps().into_iter().collect()
    } else {
        BTreeSet::new()
    };
    let packs_before = pack_names(&env);
    let kill = start_and_kill(&env, kind, n, rng, estimates, tally);
    let context = kill.context;

    // 1. Expected snapshots, all valid.
    let after: BTreeSet<String> = env.stamps().into_iter().collect();
    let packs_after = pack_names(&env);
    let phase = match kind {
        Kind::Create if after != before => "snapshot published",
        Kind::Create if packs_after != packs_before => "packs published, no snapshot",
        Kind::Create => "nothing published",
        _ if packs_after == t.collected => "collection complete",
        _ if packs_after != packs_before => "collection partial",
        _ if after != before => "snapshots deleted, gc not started",
        _ => "store untouched",
    };
    *tally.phases.entry(phase.to_string()).or_default() += 1;
    match kind {
        Kind::Create => {
            let added: Vec<&String> = after.difference(&before).collect();
            assert!(
                before.is_subset(&after),
                "{context}: {before:?} -> {after:?}"
            );
            assert!(
                added.is_empty() || added == ["20260405T120000Z"],
                "{context}: {added:?}"
            );
        }
        Kind::Gc => assert_eq!(after, before, "{context}"),
        Kind::Cleanup => {
            assert!(after.is_subset(&before), "{context}");
            let gone: BTreeSet<&str> = before.difference(&after).map(|s| s.as_str()).collect();
            assert!(gone.is_subset(&[D1, D2].into()), "{context}: {gone:?}");
        }
        Kind::Restore => unreachable!("restore_trial"),
    }
    env.assert_healthy();

    // 2. The next writer cleans what the killed process left in tmp/.
    assert_next_writer_cleans_tmp(&env, &context);

    // 3. Run again: it converges.
    let doc = env.ok(&args(kind, variant_of(kind, n)));
    if let Some(errors) = doc.get("errors") {
        assert_eq!(errors, &serde_json::json!([]), "{context}: {doc}");
    }
    env.ok(&["gc", "--confirm"]);
    let dry = env.ok(&["gc"]);
    assert_eq!(
        dry["would_delete_packs"],
        serde_json::json!([]),
        "{context}"
    );
    assert_eq!(
        dry["would_rewrite_packs"],
        serde_json::json!([]),
        "{context}"
    );
    env.assert_healthy();
}

/// A file tree: path (relative, `/`-separated) to what is there.
type Tree = BTreeMap<String, Node>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    File {
        hash: blake3::Hash,
        len: u64,
        mode: u32,
        mtime_ns: i64,
    },
    Dir {
        mode: u32,
    },
    Symlink(PathBuf),
}

impl Node {
    /// The same file or symlink, mtimes aside (a killed restore may have
    /// replaced a file's content without its folder's metadata, and an
    /// unchanged file's mtime is fixed late).
    fn same_content(&self, other: &Node) -> bool {
        match (self, other) {
            (
                Node::File {
                    hash, len, mode, ..
                },
                Node::File {
                    hash: h,
                    len: l,
                    mode: m,
                    ..
                },
            ) => (hash, len, mode) == (h, l, m),
            (a, b) => a == b,
        }
    }
}

/// Everything under `root` (not itself), keyed by `key` of the relative
/// path (entries it maps to None are left out). Symlinks are not followed.
fn tree(root: &Path, key: impl Fn(&str) -> Option<String>) -> Tree {
    let mut out = Tree::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).follow_links(false) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_str().unwrap();
        let Some(k) = key(rel) else { continue };
        let m = e.path().symlink_metadata().unwrap();
        let mode = m.mode() & 0o7777;
        let node = if m.file_type().is_symlink() {
            Node::Symlink(fs::read_link(e.path()).unwrap())
        } else if m.is_dir() {
            Node::Dir { mode }
        } else {
            Node::File {
                hash: blake3::hash(&fs::read(e.path()).unwrap()),
                len: m.len(),
                mode,
                mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            }
        };
        out.insert(k, node);
    }
    out
}

/// The live runtime as a `restore --to` folder names it: `atocore.db`,
/// `project-registry.json`, `chroma/...`; anything else beside them keeps
/// its runtime path (`data/...`, `config/...`), so it shows as extra.
fn live_tree(runtime: &Path) -> Tree {
    tree(runtime, |rel| match rel {
        "data" | "config" => None,
        "data/atocore.db" => Some("atocore.db".into()),
        "config/project-registry.json" => Some("project-registry.json".into()),
        _ => match rel.strip_prefix("data/chroma") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => Some(format!("chroma{rest}")),
            _ => Some(rel.to_string()),
        },
    })
}

/// Asserts two trees are equal, naming the paths that differ.
fn assert_same(have: &Tree, want: &Tree, context: &str) {
    let keys: BTreeSet<&String> = have.keys().chain(want.keys()).collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| have.get(*k) != want.get(*k))
        .map(|k| format!("{k}: have {:?}, want {:?}", have.get(k), want.get(k)))
        .collect();
    assert!(
        diffs.is_empty(),
        "{context}: trees differ:\n{}",
        diffs.join("\n")
    );
}

fn ino(p: &Path) -> u64 {
    fs::metadata(p).unwrap().ino()
}

/// Files (and symlinks) only: folders are checked through what they hold.
fn files_of(t: &Tree) -> BTreeMap<&String, &Node> {
    t.iter()
        .filter(|(_, n)| !matches!(n, Node::Dir { .. }))
        .collect()
}

/// A leftover the next restore sweeps: its own temps of a dead process
/// beside the db and registry are removed by name, those inside Chroma as
/// entries the snapshot lacks, and db sidecars by step 4 (the checkpoint
/// of step 3 may have opened them when the kill came).
fn sweepable(key: &str, pid: u32) -> bool {
    let name = key.rsplit('/').next().unwrap();
    name.starts_with(&format!(".atosnap-restore-{pid}-")) && name.ends_with(".tmp")
        || ["-wal", "-shm", "-journal"]
            .iter()
            .any(|s| key == format!("data/atocore.db{s}"))
}

/// A live restore of D1 onto the runtime at a later state, killed at a
/// random moment; see the module doc for the checks.
fn restore_trial(
    n: u64,
    rng: &mut rand::rngs::StdRng,
    estimates: &mut Estimates,
    tally: &mut Tally,
) {
    let t = templates();
    let env = prepare(&t.base, &t.collectable, Kind::Restore, n);
    let variant = variant_of(Kind::Restore, n);
    let before: BTreeSet<String> = env.stamps().into_iter().collect();
    let old = live_tree(&env.runtime);
    let new = &t.reference;
    let chroma_ino = ino(&env.chroma());
    assert_ne!(
        files_of(&old),
        files_of(new),
        "the runtime is already at D1"
    );

    let kill = start_and_kill(&env, Kind::Restore, n, rng, estimates, tally);
    let context = kill.context;

    // 1. Each file wholly old or wholly new; only sweepable leftovers.
    let now = live_tree(&env.runtime);
    let (old_files, new_files, now_files) = (files_of(&old), files_of(new), files_of(&now));
    let mut leftovers = Vec::new();
    for (k, node) in &now_files {
        if !old_files.contains_key(k) && !new_files.contains_key(k) {
            assert!(
                sweepable(k, kill.pid),
                "{context}: unexpected {k} in the runtime: {node:?}"
            );
            leftovers.push(k.to_string());
        }
    }
    if !leftovers.is_empty() {
        tally.runtime_leftovers += 1;
        let kinds: BTreeSet<&'static str> = leftovers
            .iter()
            .map(|k| match k.as_str() {
                k if k.starts_with("chroma/") => "restore temp in Chroma",
                k if k.starts_with("config/") => "restore temp beside the registry",
                k if k.starts_with("data/atocore.db") => "db sidecar",
                _ => "restore temp beside the db",
            })
            .collect();
        for k in kinds {
            *tally.leftover_kinds.entry(k).or_default() += 1;
        }
    }
    let same = |a: Option<&&Node>, b: Option<&&Node>| match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same_content(b),
        _ => false,
    };
    // Per file that the restore must change: is it new yet?
    let mut restored: BTreeMap<&str, bool> = BTreeMap::new();
    let keys: BTreeSet<&&String> = old_files.keys().chain(new_files.keys()).collect();
    for k in keys {
        let (o, w, c) = (old_files.get(k), new_files.get(k), now_files.get(k));
        let is_old = same(c, o);
        let is_new = same(c, w);
        assert!(
            is_old || is_new,
            "{context}: {k} is neither old nor new: {c:?} (old {o:?}, new {w:?})"
        );
        if !same(o, w) {
            restored.insert(k.as_str(), is_new);
        }
    }
    assert_eq!(
        ino(&env.chroma()),
        chroma_ino,
        "{context}: Chroma dir replaced"
    );

    // 2. The store: what it held, plus at most one whole pre-restore
    // snapshot; all of it valid.
    let list = env.ok(&["list"]);
    let after: BTreeMap<String, Vec<String>> = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["stamp"].as_str().unwrap().to_string(), strs(&s["tags"])))
        .collect();
    let added: Vec<(&String, &Vec<String>)> =
        after.iter().filter(|(s, _)| !before.contains(*s)).collect();
    assert!(
        before.iter().all(|s| after.contains_key(s)),
        "{context}: {before:?} -> {after:?}"
    );
    assert!(
        added.len() <= variant as usize,
        "{context}: snapshots added: {added:?}"
    );
    for (stamp, tags) in &added {
        assert!(
            tags.iter().any(|t| t == "pre-restore"),
            "{context}: {stamp} {tags:?}"
        );
    }
    env.assert_healthy();

    let changed = restored.len();
    let done = restored.values().filter(|&&v| v).count();
    let chroma: Vec<bool> = restored
        .iter()
        .filter(|(k, _)| k.starts_with("chroma/"))
        .map(|(_, &v)| v)
        .collect();
    let files = if done == 0 {
        "runtime untouched".to_string()
    } else if done == changed {
        "runtime wholly restored".to_string()
    } else {
        format!(
            "db {}, registry {}, Chroma {}/{} files restored",
            if restored["atocore.db"] { "new" } else { "old" },
            if restored["project-registry.json"] {
                "new"
            } else {
                "old"
            },
            chroma.iter().filter(|&&v| v).count(),
            chroma.len()
        )
    };
    let phase = match (variant, added.is_empty()) {
        (0, _) => format!("no pre-snapshot: {files}"),
        (_, true) => format!("pre-snapshot not published: {files}"),
        (_, false) => format!("pre-snapshot published: {files}"),
    };
    *tally.phases.entry(phase).or_default() += 1;

    // 3. The same restore run again converges on the snapshot exactly.
    let doc = env.ok(&args(Kind::Restore, variant));
    assert_eq!(doc["restored_integrity_ok"], true, "{context}: {doc}");
    assert_same(&live_tree(&env.runtime), new, &context);
    assert_eq!(
        ino(&env.chroma()),
        chroma_ino,
        "{context}: Chroma dir replaced"
    );
    // The next writer cleans what a killed pre-restore snapshot left.
    env.ok(&["create", "--at", "2026-04-10T12:00:00Z"]);
    assert!(
        env.tmp_entries().is_empty(),
        "{context}: {:?}",
        env.tmp_entries()
    );
    env.assert_healthy();
}

/// The commands to try: ATOSNAP_CRASH_KINDS (comma-separated names such as
/// `restore,gc`), else all.
fn kinds() -> Vec<Kind> {
    let wanted = std::env::var("ATOSNAP_CRASH_KINDS").unwrap_or_default();
    let names: Vec<String> = wanted
        .split(',')
        .map(|w| w.trim().to_lowercase())
        .filter(|w| !w.is_empty())
        .collect();
    if names.is_empty() {
        return KINDS.to_vec();
    }
    let picked: Vec<Kind> = KINDS
        .into_iter()
        .filter(|k| names.contains(&format!("{k:?}").to_lowercase()))
        .collect();
    assert_eq!(
        picked.len(),
        names.len(),
        "ATOSNAP_CRASH_KINDS={wanted}: unknown names"
    );
    picked
}

fn run_trials(per_kind: u64) -> BTreeMap<Kind, Tally> {
    let seed = std::env::var("ATOSNAP_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("crash: seed {seed} (ATOSNAP_CRASH_SEED), {per_kind} trials per command");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tallies = BTreeMap::new();
    let mut estimates = Estimates {
        runs: templates().durations.clone(),
        writes: templates().write_phase.clone(),
    };
    let kinds = kinds();
    for n in 0..per_kind {
        for &kind in &kinds {
            trial(
                kind,
                n,
                &mut rng,
                &mut estimates,
                tallies.entry(kind).or_default(),
            );
        }
    }
    for (kind, t) in &tallies {
        eprintln!("crash: {kind:?}: {t:?}");
    }
    eprintln!("crash: final duration estimates {estimates:?}");
    tallies
}

#[test]
fn crash_trials_quick() {
    let tallies = run_trials(2);
    assert_eq!(tallies.len(), kinds().len());
    assert!(tallies.values().all(|t| t.trials == 2));
}

#[test]
#[ignore = "stress: ~10 minutes; run with --ignored --nocapture"]
fn crash_trials_stress() {
    let per_kind = std::env::var("ATOSNAP_CRASH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let tallies = run_trials(per_kind);
    for (kind, t) in &tallies {
        assert_eq!(t.trials as u64, per_kind);
        // The delays must hit the commands mid-run most of the time, or
        // the trials prove little.
        assert!(
            t.killed_mid_run * 2 > t.trials,
            "{kind:?}: only {} of {} kills landed mid-run",
            t.killed_mid_run,
            t.trials
        );
    }
}
