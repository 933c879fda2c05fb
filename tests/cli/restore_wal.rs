//! `restore`'s steps 3 and 4 on the live db's sidecars, black-box through
//! the binary: the WAL folded in (or why not, in `warnings`), a db another
//! connection still holds refused, stale sidecars never replayed onto the
//! restored db.

use crate::support::Runtime as Rt;
use crate::support::*;

#[test]
fn a_live_wal_that_cannot_be_folded_in_is_reported() {
    let rt = Rt::fixture();
    let s1 = rt.create_stamp(&[]);
    // The live db is damaged (as when a restore is needed) and a WAL with
    // frames lies beside it: step 3 cannot fold it in, step 4 removes it.
    let wal = rt.path("runtime/data/atocore.db-wal");
    std::fs::write(&wal, vec![7u8; 4096]).unwrap();
    write_over(&rt.db(), &vec![0u8; 4096]);
    let r = rt.restore_live(&s1);
    assert_eq!(r["restored_integrity_ok"], true, "{r}");
    let warnings = strings(&r["warnings"]);
    assert_eq!(warnings.len(), 1, "{r}");
    assert!(
        warnings[0].contains("atocore.db could not be folded into it")
            && warnings[0].contains("are lost (--no-pre-snapshot)"),
        "{warnings:?}"
    );
    assert!(!wal.exists() || std::fs::read(&wal).unwrap().is_empty());
    // A healthy db without a WAL: nothing to say.
    let again = rt.restore_live(&s1);
    assert_eq!(again["warnings"], serde_json::json!([]), "{again}");
}

#[test]
fn a_live_db_held_by_a_process_proc_does_not_show_is_not_restored_over() {
    let rt = Rt::fixture();
    let s1 = rt.create_stamp(&[]);
    // The service in another container: a reader in a read transaction,
    // and a write after it (frames the reader keeps from being written
    // back). The restore runs in a PID namespace (and /proc) of its own,
    // where neither process shows.
    let service = rusqlite::Connection::open(rt.db()).unwrap();
    service.execute_batch("PRAGMA journal_mode=WAL").unwrap();
    let reader = rusqlite::Connection::open(rt.db()).unwrap();
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM memories;")
        .unwrap();
    insert_marker(&rt.db(), "written-after-the-reader");
    let mut cmd = rt.command();
    cmd.args([
        "restore",
        &s1,
        "--confirm-service-stopped",
        "--no-pre-snapshot",
    ]);
    let Some(out) = run_unshared(&["-rpf", "--mount-proc"], "", &[], &cmd) else {
        eprintln!("no PID namespace can be made here: skipped");
        return;
    };
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.json["error"]["code"], "db_in_use", "{}", out.stdout);
    let message = out.json["error"]["message"].as_str().unwrap();
    assert!(message.contains("/proc does not show"), "{message}");
    drop(reader);
    assert!(
        has_marker(&rt.db(), "written-after-the-reader"),
        "nothing changed"
    );
    drop(service);
}

#[test]
fn stale_wal_and_shm_bytes_do_not_survive() {
    let rt = Rt::fixture();
    let s1 = rt.create_stamp(&[]);
    let marker = b"STALE-SIDECAR-BYTES-0123456789";
    let mut stale = Vec::new();
    for _ in 0..200 {
        stale.extend_from_slice(marker);
    }
    let wal = rt.path("runtime/data/atocore.db-wal");
    let shm = rt.path("runtime/data/atocore.db-shm");
    std::fs::write(&wal, &stale).unwrap();
    std::fs::write(&shm, &stale).unwrap();
    let r = rt.restore_live(&s1);
    assert_eq!(r["restored_integrity_ok"], true);
    assert!(!wal.exists() || std::fs::read(&wal).unwrap().is_empty());
    assert!(!shm.exists());
    assert_eq!(
        files_containing(&rt.runtime, marker),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(count(&rt.db(), "memories"), FIXTURE_MEMORIES);
}

#[test]
fn a_real_wal_written_after_the_snapshot_is_not_replayed_onto_the_restored_db() {
    let rt = Rt::fixture();
    let s1 = rt.create_stamp(&[]);
    // Commit the marker into the WAL, keep a copy of that WAL, let the
    // connection close (which checkpoints), then put the WAL back as a
    // stale sidecar.
    let wal = rt.path("runtime/data/atocore.db-wal");
    let conn = rusqlite::Connection::open(rt.db()).unwrap();
    conn.execute_batch("PRAGMA wal_autocheckpoint=0;").unwrap();
    conn.execute(
        "INSERT INTO memories(id, memory_type, content) VALUES ('in-wal', 'note', 'x')",
        [],
    )
    .unwrap();
    let saved = std::fs::read(&wal).unwrap();
    assert!(!saved.is_empty());
    drop(conn);
    std::fs::write(&wal, &saved).unwrap();
    let r = rt.restore_live(&s1);
    assert_eq!(r["restored_integrity_ok"], true);
    assert!(!wal.exists());
    assert!(!has_marker(&rt.db(), "in-wal"));
    assert_eq!(count(&rt.db(), "memories"), FIXTURE_MEMORIES);
}
