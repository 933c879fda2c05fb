//! `atosnap demo`: a newcomer's tour on the bundled fixtures, in a temp
//! dir. Narration goes to stderr; the summary JSON to stdout.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

use atosnap::create::{self, CreateOptions};
use atosnap::error::{Error, IoContext};
use atosnap::progress::NoProgress;
use atosnap::store::Store;
use atosnap::{list, verify};

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
        let entry = entry.map_err(|e| Error::Other(format!("reading fixtures: {e}")))?;
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
        return Err(Error::Other(format!(
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

    let store = Store::open_or_init(&store_dir)?;
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

    let first = create::create(&store, &opts, &NoProgress)?;
    let first_doc = serde_json::to_value(&first).unwrap_or_default();
    step(1, "create --chroma (first snapshot)", &first_doc);
    steps.push(json!({"step": "create", "result": first_doc}));

    let conn = rusqlite::Connection::open(&opts.db).map_err(|e| Error::sqlite(&opts.db, e))?;
    conn.execute(
        "INSERT INTO memories(id, memory_type, content, project, created_at) VALUES ('demo-marker', 'note', 'DEMO MARKER: written after the first snapshot', 'demo', datetime('now'))",
        [],
    )
    .map_err(|e| Error::sqlite(&opts.db, e))?;
    drop(conn);
    let change = json!({"inserted_memory": "demo-marker"});
    step(2, "change the live db (marker memory row)", &change);
    steps.push(json!({"step": "mutate", "result": change}));

    // A second later so the stamps differ visibly.
    std::thread::sleep(Duration::from_millis(1100));
    let second = create::create(&store, &opts, &NoProgress)?;
    let second_doc = serde_json::to_value(&second).unwrap_or_default();
    step(3, "create --chroma again (incremental)", &second_doc);
    steps.push(json!({"step": "create", "result": second_doc}));

    let listing = serde_json::to_value(list::list(&store)?).unwrap_or_default();
    step(4, "list", &listing);
    steps.push(json!({"step": "list", "result": listing}));

    let report = verify::validate(&store, &second.stamp, Duration::from_secs(30))?;
    let report_doc = serde_json::to_value(&report).unwrap_or_default();
    step(5, "validate the newest snapshot", &report_doc);
    steps.push(json!({"step": "validate", "result": report_doc}));

    let ok = first.validated && second.validated && report.valid;
    eprintln!(
        "\natosnap demo: {} (first snapshot stored {} bytes, the second only {} new)",
        if ok { "all steps passed" } else { "FAILED" },
        first.bytes_new_stored,
        second.bytes_new_stored
    );
    Ok((json!({"ok": ok, "steps": steps}), if ok { 0 } else { 1 }))
}
