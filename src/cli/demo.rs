//! `atosnap demo`: the canonical drill on the bundled fixtures, in a temp
//! dir: create, change the runtime, create again, list, diff, verify,
//! restore the baseline in place (with its pre-restore safety snapshot),
//! check the change is gone and the safety snapshot holds it, drill.
//! Narration goes to stderr; the summary JSON to stdout; exit 0 only when
//! every step passed.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

use atosnap::error::{Error, IoContext};
use atosnap::ops::create::{self, CreateOptions};
use atosnap::ops::restore::{self, ChromaChoice, RestoreOptions};
use atosnap::ops::{diff, drill, list, verify};
use atosnap::progress::NoProgress;
use atosnap::store::{key::Secrets, location::StoreAddress, Store};

fn fixtures_dir() -> PathBuf {
    let compiled = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/runtime");
    if compiled.exists() {
        compiled
    } else {
        PathBuf::from("fixtures/runtime")
    }
}

fn step(n: usize, what: &str, detail: &Value) {
    eprintln!("\n== step {n}: {what}");
    eprintln!(
        "{}",
        serde_json::to_string_pretty(detail).unwrap_or_default()
    );
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), Error> {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.map_err(|e| Error::DemoFixtures(format!("reading fixtures: {e}")))?;
        let rel = entry.path().strip_prefix(from).unwrap_or(entry.path());
        let dest = to.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&dest).ctx("create", &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest).ctx("copy to", &dest)?;
        }
    }
    Ok(())
}

pub fn run() -> Result<(Value, i32), Error> {
    let fixtures = fixtures_dir();
    if !fixtures.exists() {
        return Err(Error::DemoFixtures(format!(
            "fixtures not found at {} (run the demo from the repository)",
            fixtures.display()
        )));
    }
    let tmp = tempfile::tempdir().ctx("create temp dir in", std::env::temp_dir())?;
    let runtime = tmp.path().join("runtime");
    copy_tree(&fixtures, &runtime)?;
    let store_dir = tmp.path().join("backups");
    eprintln!(
        "atosnap demo: runtime copied from {} to {}",
        fixtures.display(),
        runtime.display()
    );

    let store = Store::open_or_init(&StoreAddress::local(&store_dir), &Secrets::none())?;
    let opts = CreateOptions {
        db: runtime.join("data/atocore.db"),
        registry: runtime.join("config/project-registry.json"),
        chroma: Some(runtime.join("data/chroma")),
        tags: vec!["demo".into()],
        at: None,
        lock_wait: Duration::from_secs(30),
        ingestion_lock: None,
    };
    let mut steps = Vec::new();
    let wait = Duration::from_secs(30);

    let first = create::create(&store, &opts, &NoProgress)?;
    let first_doc = to_value(&first);
    step(1, "create --chroma (the baseline)", &first_doc);
    steps.push(json!({"step": "create", "result": first_doc}));

    // A day of use: a memory row and a rewritten block of the HNSW index.
    let conn = rusqlite::Connection::open(&opts.db).map_err(|e| Error::sqlite(&opts.db, e))?;
    conn.execute(
        "INSERT INTO memories(id, memory_type, content, project, created_at) VALUES (?1, 'note', 'DEMO MARKER: written after the first snapshot', 'demo', datetime('now'))",
        [MARKER],
    )
    .map_err(|e| Error::sqlite(&opts.db, e))?;
    drop(conn);
    let hnsw = first_hnsw_file(&runtime.join("data/chroma"))?;
    let original_hnsw = std::fs::read(&hnsw).ctx("read", &hnsw)?;
    let mut changed = original_hnsw.clone();
    let end = changed.len().min(4096);
    changed[..end].iter_mut().for_each(|b| *b ^= 0xff);
    std::fs::write(&hnsw, &changed).ctx("write", &hnsw)?;
    let change = json!({
        "inserted_memory": MARKER,
        "rewrote_chroma_block": hnsw.strip_prefix(&runtime).unwrap_or(&hnsw).display().to_string(),
    });
    step(
        2,
        "change the live runtime (marker row, a Chroma block)",
        &change,
    );
    steps.push(json!({"step": "mutate", "result": change}));

    // A second later so the stamps differ visibly.
    std::thread::sleep(Duration::from_millis(1100));
    let second = create::create(&store, &opts, &NoProgress)?;
    let second_doc = to_value(&second);
    step(3, "create --chroma again (incremental)", &second_doc);
    steps.push(json!({"step": "create", "result": second_doc}));

    let listing = to_value(&list::list(&store)?);
    step(4, "list", &listing);
    steps.push(json!({"step": "list", "result": listing}));

    let changes = diff::diff(&store, &first.stamp, &second.stamp)?;
    let changes_doc = to_value(&changes);
    step(5, "diff baseline -> second", &changes_doc);
    steps.push(json!({"step": "diff", "result": changes_doc}));

    let audit = verify::verify(&store, &verify::VerifyOptions::new(wait))?;
    let audit_doc = to_value(&audit);
    step(6, "verify (every object re-hashed)", &audit_doc);
    steps.push(json!({"step": "verify", "result": audit_doc}));

    std::thread::sleep(Duration::from_millis(1100));
    let restored = restore::restore(
        &store,
        &RestoreOptions {
            stamp: first.stamp.clone(),
            db: opts.db.clone(),
            registry: opts.registry.clone(),
            chroma_dir: runtime.join("data/chroma"),
            to: None,
            confirm_service_stopped: true,
            pre_snapshot: true,
            chroma: ChromaChoice::Auto,
            lock_wait: wait,
        },
        &NoProgress,
    )?;
    let restored_doc = to_value(&restored);
    step(
        7,
        "restore the baseline --confirm-service-stopped (live, in place)",
        &restored_doc,
    );
    steps.push(json!({"step": "restore", "result": restored_doc}));

    let marker_gone = !has_marker(&opts.db)?;
    let chroma_back = std::fs::read(&hnsw).ctx("read", &hnsw)? == original_hnsw;
    let pre = restored.pre_restore_snapshot.clone().unwrap_or_default();
    let scratch = tmp.path().join("pre-restore-copy");
    restore::restore(
        &store,
        &RestoreOptions {
            stamp: pre.clone(),
            db: opts.db.clone(),
            registry: opts.registry.clone(),
            chroma_dir: runtime.join("data/chroma"),
            to: Some(scratch.clone()),
            confirm_service_stopped: false,
            pre_snapshot: false,
            chroma: ChromaChoice::No,
            lock_wait: wait,
        },
        &NoProgress,
    )?;
    let pre_holds_marker = has_marker(&scratch.join("atocore.db"))?;
    let check = json!({
        "marker_gone_from_live_db": marker_gone,
        "chroma_block_restored": chroma_back,
        "pre_restore_snapshot": pre,
        "pre_restore_snapshot_holds_marker": pre_holds_marker,
    });
    step(
        8,
        "marker gone; the pre-restore snapshot still holds it",
        &check,
    );
    steps.push(json!({"step": "check", "result": check}));

    let drilled = drill::drill(&store, Some(&first.stamp), wait, &NoProgress)?;
    let drilled_doc = to_value(&drilled);
    step(
        9,
        "drill the baseline (restore to scratch, check everything)",
        &drilled_doc,
    );
    steps.push(json!({"step": "drill", "result": drilled_doc}));

    let ok = first.validated
        && second.validated
        && audit.ok
        && restored.restored_integrity_ok
        && marker_gone
        && chroma_back
        && pre_holds_marker
        && drilled.ok;
    eprintln!(
        "\natosnap demo: {} (baseline stored {} bytes, the second snapshot only {} new; restore wrote {} Chroma file(s), left {} alone)",
        if ok { "all steps passed" } else { "FAILED" },
        first.bytes_new_stored,
        second.bytes_new_stored,
        restored.chroma_files_written,
        restored.chroma_files_unchanged,
    );
    Ok((json!({"ok": ok, "steps": steps}), if ok { 0 } else { 1 }))
}

const MARKER: &str = "demo-marker";

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

fn has_marker(db: &Path) -> Result<bool, Error> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| Error::sqlite(db, e))?;
    conn.query_row(
        "SELECT count(*) FROM memories WHERE id = ?1",
        [MARKER],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .map_err(|e| Error::sqlite(db, e))
}

/// The first HNSW `data_level0.bin` of the Chroma tree.
fn first_hnsw_file(chroma: &Path) -> Result<PathBuf, Error> {
    walkdir::WalkDir::new(chroma)
        .sort_by_file_name()
        .into_iter()
        .flatten()
        .find(|e| e.file_type().is_file() && e.file_name() == "data_level0.bin")
        .map(|e| e.into_path())
        .ok_or_else(|| {
            Error::DemoFixtures(format!("no data_level0.bin under {}", chroma.display()))
        })
}
