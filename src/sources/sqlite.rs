//! SQLite databases captured online, never by a raw file read: the copy is
//! a consistent database even while the service writes.
//!
//! The primary path streams the pages through SQLite's own pager with the
//! `sqlite_dbpage` virtual table inside ONE read transaction (so every page
//! comes from the same snapshot, WAL content included), on a producer
//! thread that hands 512 KiB batches to the chunker through a bounded
//! channel: no second copy on disk, reading overlapped with hashing. When
//! the virtual table is unavailable, the online backup API copies the
//! database into a temp file instead (`backup_to`).

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::chunk;
use crate::error::{Error, IoContext, Result};

/// The page size if `path` starts with a SQLite header; None otherwise.
pub fn sqlite_page_size_of(path: &Path) -> std::io::Result<Option<u32>> {
    let mut header = [0u8; 100];
    let mut f = crate::os::open_regular(path)?;
    let mut n = 0;
    while n < header.len() {
        match f.read(&mut header[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(chunk::sqlite_page_size(&header[..n]))
}

/// Checks that `path` is an existing SQLite database.
pub fn check_database(path: &Path) -> Result<u32> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::DbMissing {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(Error::io("stat", path, e)),
        Ok(m) if !m.is_file() => {
            return Err(Error::DbNotSqlite {
                path: path.to_path_buf(),
                detail: "not a regular file".into(),
            })
        }
        Ok(_) => {}
    }
    sqlite_page_size_of(path)
        .ctx("read", path)?
        .ok_or_else(|| Error::DbNotSqlite {
            path: path.to_path_buf(),
            detail: "no SQLite header (expected \"SQLite format 3\")".into(),
        })
}

/// Copies the database at `src` into a new file `dest` with the online
/// backup API, in one step so the copy is a single consistent read.
pub fn backup_to(src: &Path, dest: &Path) -> Result<()> {
    let from = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sqlite(src, e))?;
    from.busy_timeout(Duration::from_secs(10))
        .map_err(|e| Error::sqlite(src, e))?;
    let mut to = Connection::open(dest).map_err(|e| Error::sqlite(dest, e))?;
    {
        let backup = Backup::new(&from, &mut to).map_err(|e| Error::sqlite(dest, e))?;
        let mut attempts = 0;
        loop {
            match backup.step(-1).map_err(|e| backup_error(src, dest, e))? {
                StepResult::Done => break,
                StepResult::More => continue,
                StepResult::Busy | StepResult::Locked => {
                    attempts += 1;
                    if attempts > 200 {
                        return Err(Error::Sqlite {
                            path: src.to_path_buf(),
                            detail: "database stayed locked for 10 s during backup".into(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => continue,
            }
        }
    }
    // A WAL source yields a WAL-mode copy; fold it into one file so the
    // copy is self-contained.
    to.execute_batch("PRAGMA journal_mode=DELETE;")
        .map_err(|e| Error::sqlite(dest, e))?;
    to.close().map_err(|(_, e)| Error::sqlite(dest, e))?;
    Ok(())
}

fn backup_error(src: &Path, dest: &Path, e: rusqlite::Error) -> Error {
    let detail = e.to_string();
    if detail.contains("disk is full") || detail.contains("SQLITE_FULL") {
        return Error::DiskFull {
            op: "write database backup",
            path: dest.to_path_buf(),
        };
    }
    if detail.contains("not a database") || detail.contains("file is not a database") {
        return Error::DbNotSqlite {
            path: src.to_path_buf(),
            detail,
        };
    }
    Error::Sqlite {
        path: src.to_path_buf(),
        detail,
    }
}

/// `PRAGMA integrity_check` (or `quick_check`) of a database file at rest:
/// None when ok, else the
/// first problems reported.
pub fn integrity_problems(path: &Path, quick: bool) -> Result<Option<String>> {
    let conn = open_at_rest(path)?;
    let pragma = if quick {
        "PRAGMA quick_check(20)"
    } else {
        "PRAGMA integrity_check(20)"
    };
    Ok(run_check(&conn, pragma))
}

/// Opens a database file at rest (a rebuilt temp copy, a just-restored
/// db) read-only and `immutable`: SQLite reads the file alone, takes no
/// locks and leaves no `-wal` / `-shm` behind, whatever the journal mode
/// recorded in its header.
fn open_at_rest(path: &Path) -> Result<Connection> {
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?immutable=1");
    Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sqlite(path, e))
}

/// Row counts of every table, for the drill.
pub fn table_row_counts(path: &Path) -> Result<std::collections::BTreeMap<String, u64>> {
    let conn = open_at_rest(path)?;
    let names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .and_then(|mut st| st.query_map([], |r| r.get::<_, String>(0))?.collect())
        .map_err(|e| Error::sqlite(path, e))?;
    let mut out = std::collections::BTreeMap::new();
    for name in names {
        let quoted = name.replace('"', "\"\"");
        let count: i64 = conn
            .query_row(&format!("SELECT count(*) FROM \"{quoted}\""), [], |r| {
                r.get(0)
            })
            .map_err(|e| Error::sqlite(path, e))?;
        out.insert(name, count.max(0) as u64);
    }
    Ok(out)
}

/// Bytes per batch handed from the page reader to the chunker. The
/// chunker's pipeline batches again (2 MiB), so these only need to keep
/// the hand-over cheap: three of them are in memory at once.
const PAGE_BATCH_BYTES: usize = 512 << 10;

/// The pages of a database, streamed from one read transaction.
pub struct PageStream {
    pub page_size: u32,
    rx: Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    worker: Option<JoinHandle<Result<Option<String>>>>,
    path: PathBuf,
}

/// Opens `path` and starts streaming its pages. Returns None when this
/// SQLite lacks the `sqlite_dbpage` table (the caller falls back to the
/// backup API). With `check`, `PRAGMA quick_check` runs in the same read
/// transaction after the pages are read; its outcome comes from `finish`.
pub fn stream_pages(path: &Path, check: bool) -> Result<Option<PageStream>> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sqlite(path, e))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| Error::sqlite(path, e))?;
    // Every page is read once, in order: a page cache only holds memory
    // (SQLite's default is 2 MiB per connection).
    conn.execute_batch("PRAGMA cache_size = -256")
        .map_err(|e| Error::sqlite(path, e))?;
    if conn
        .prepare("SELECT data FROM sqlite_dbpage LIMIT 0")
        .is_err()
    {
        return Ok(None);
    }
    // BEGIN, then the first read pins the snapshot every later read sees.
    conn.execute_batch("BEGIN")
        .map_err(|e| Error::sqlite(path, e))?;
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(|e| classify(path, e))?;
    let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(1);
    let owned = path.to_path_buf();
    let worker = std::thread::Builder::new()
        .name("sqlite-pages".into())
        .spawn(move || {
            let sent = (|| -> rusqlite::Result<bool> {
                let mut stmt = conn.prepare("SELECT data FROM sqlite_dbpage('main')")?;
                let mut rows = stmt.query([])?;
                let mut buf = Vec::with_capacity(PAGE_BATCH_BYTES);
                while let Some(row) = rows.next()? {
                    buf.extend_from_slice(row.get_ref(0)?.as_blob()?);
                    if buf.len() >= PAGE_BATCH_BYTES
                        && tx
                            .send(Ok(std::mem::replace(
                                &mut buf,
                                Vec::with_capacity(PAGE_BATCH_BYTES),
                            )))
                            .is_err()
                    {
                        return Ok(false);
                    }
                }
                Ok(buf.is_empty() || tx.send(Ok(buf)).is_ok())
            })();
            match sent {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(format!(
                        "reading pages of {}: {e}",
                        owned.display()
                    ))));
                    return Err(classify(&owned, e));
                }
            }
            drop(tx);
            let problems = if check {
                run_check(&conn, "PRAGMA quick_check(20)")
            } else {
                None
            };
            let _ = conn.execute_batch("COMMIT");
            Ok(problems)
        })
        .map_err(|e| Error::io("start page reader for", path, e))?;
    Ok(Some(PageStream {
        page_size: page_size.clamp(0, u32::MAX as i64) as u32,
        rx,
        current: Vec::new(),
        pos: 0,
        worker: Some(worker),
        path: path.to_path_buf(),
    }))
}

impl PageStream {
    /// Waits for the reader; returns the quick_check problems, if any.
    pub fn finish(self) -> Result<Option<String>> {
        self.pages_done().wait()
    }

    /// Ends the reading once every page was read: the quick_check (if
    /// any) goes on in the same read transaction, in the background, so
    /// the caller can capture other files meanwhile.
    pub fn pages_done(mut self) -> PendingCheck {
        // Drain so the worker is never blocked on a full channel.
        while self.rx.recv().is_ok() {}
        PendingCheck {
            worker: self.worker.take(),
            path: std::mem::take(&mut self.path),
        }
    }
}

/// A page stream's quick_check still running (see [`PageStream::pages_done`]).
pub struct PendingCheck {
    worker: Option<JoinHandle<Result<Option<String>>>>,
    path: PathBuf,
}

impl PendingCheck {
    /// Waits for the check; returns its problems, if any.
    pub fn wait(mut self) -> Result<Option<String>> {
        match self.worker.take().map(|w| w.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::ReaderPanicked { path: self.path }),
            None => Ok(None),
        }
    }
}

impl Read for PageStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(Ok(batch)) => {
                    self.current = batch;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Runs an integrity pragma: None when it answers a single "ok".
fn run_check(conn: &Connection, pragma: &str) -> Option<String> {
    let rows: rusqlite::Result<Vec<String>> = conn
        .prepare(pragma)
        .and_then(|mut st| st.query_map([], |r| r.get::<_, String>(0))?.collect());
    match rows {
        Ok(rows) if rows.len() == 1 && rows[0] == "ok" => None,
        Ok(rows) => Some(rows.join("; ")),
        Err(e) => Some(e.to_string()),
    }
}

fn classify(path: &Path, e: rusqlite::Error) -> Error {
    let detail = e.to_string();
    if detail.contains("not a database") {
        Error::DbNotSqlite {
            path: path.to_path_buf(),
            detail,
        }
    } else {
        Error::Sqlite {
            path: path.to_path_buf(),
            detail,
        }
    }
}

pub fn sidecars(db: &Path) -> Vec<PathBuf> {
    ["-wal", "-shm", "-journal"]
        .iter()
        .map(|s| {
            let mut p = db.as_os_str().to_os_string();
            p.push(s);
            PathBuf::from(p)
        })
        .collect()
}

/// Where a database's WAL stands for its readers (see [`wal_commit_point`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitPoint {
    /// No wal-index (no `-shm`, or one never set up): a reader opening the
    /// database takes every committed frame in the WAL.
    Unknown,
    /// A digest of the wal-index header.
    At(i64),
    /// The header was being rewritten each time it was read, or the
    /// `-shm` could not be read: not to be trusted.
    Moving,
}

/// Bytes of one copy of SQLite's wal-index header (`WalIndexHdr`), kept
/// twice at the start of the `-shm`; byte 12 is `isInit`.
const WAL_INDEX_HEADER: usize = 48;

/// What the readers of `db` (its canonical path) can see of its WAL: a
/// digest of the wal-index header in its `-shm`, which a reader trusts
/// for the frames it may take (`mxFrame`) and the WAL's generation (the
/// salts). A commit changes it, even one whose frames were written (the
/// WAL's size and mtime changed) before it became visible, which happens
/// when the writer's fsync stalls: a files cache keyed on the WAL's stat
/// alone took the database as unchanged once that commit landed. Read
/// before the capture's read transaction begins, so what the capture
/// sees is never older than the point recorded.
///
/// Call it only while this process holds no connection to `db`: closing
/// the descriptor it opens drops every POSIX lock the process holds on the
/// `-shm`, SQLite's read locks among them.
pub fn wal_commit_point(db: &Path) -> CommitPoint {
    let mut shm = db.as_os_str().to_os_string();
    shm.push("-shm");
    let file = match crate::os::open_regular(Path::new(&shm)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return CommitPoint::Unknown,
        Err(_) => return CommitPoint::Moving,
    };
    let mut both = [0u8; 2 * WAL_INDEX_HEADER];
    // SQLite writes the second copy, then the first; a reader that finds
    // them equal has one whole header. A few tries, as SQLite's own
    // readers make, before calling it moving.
    for _ in 0..4 {
        use std::os::unix::fs::FileExt;
        match file.read_exact_at(&mut both, 0) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return CommitPoint::Unknown,
            Err(_) => return CommitPoint::Moving,
        }
        let (first, second) = both.split_at(WAL_INDEX_HEADER);
        if first == second {
            if first[12] == 0 {
                return CommitPoint::Unknown;
            }
            let digest = blake3::hash(first);
            let mut point = [0u8; 8];
            point.copy_from_slice(&digest.as_bytes()[..8]);
            return CommitPoint::At(i64::from_le_bytes(point));
        }
        std::thread::yield_now();
    }
    CommitPoint::Moving
}

/// Why step 3 did not fold a WAL in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalNotFolded {
    /// Another connection holds the db (a reader on an older snapshot, or
    /// a writer): someone is using it.
    pub busy: bool,
    pub detail: String,
}

impl WalNotFolded {
    fn other(detail: impl Into<String>) -> WalNotFolded {
        WalNotFolded {
            busy: false,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for WalNotFolded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Step 3: folds the live db's WAL into it, best effort (a missing or
/// damaged db is about to be replaced anyway). Says why it did not.
pub fn checkpoint_wal(db: &Path) -> std::result::Result<(), WalNotFolded> {
    if !matches!(sqlite_page_size_of(db), Ok(Some(_))) {
        return Err(WalNotFolded::other("not a SQLite database"));
    }
    // A symlink is replaced, never written through (SPEC §4): the db it
    // names, with a WAL planted beside the link, is not the target's to
    // checkpoint.
    if !fs::symlink_metadata(db).is_ok_and(|m| m.file_type().is_file()) {
        return Err(WalNotFolded::other(
            "not a regular file: nothing is written through it",
        ));
    }
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| WalNotFolded::other(format!("cannot open it: {e}")))?;
    let _ = conn.busy_timeout(Duration::from_secs(2));
    // The pragma does not fail when another connection holds the db: its
    // row says so (busy, frames in the WAL, frames written back).
    let r = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
        ))
    });
    let closed = conn.close();
    match (r, closed) {
        (Err(e), _) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
            Err(WalNotFolded {
                busy: true,
                detail: format!("another connection holds it: {e}"),
            })
        }
        (Err(e), _) => Err(WalNotFolded::other(e.to_string())),
        (_, Err((_, e))) => Err(WalNotFolded::other(e.to_string())),
        (Ok((busy, log, done)), _) if busy != 0 || done < log => Err(WalNotFolded {
            busy: true,
            detail: format!(
                "another connection holds it: {done} of the WAL's {log} frames written back"
            ),
        }),
        _ => Ok(()),
    }
}

/// Step 4: removes the db's `-wal`, `-shm` and `-journal`: replayed onto
/// the restored file they would corrupt it. Returns those removed.
pub fn remove_sidecars(db: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for p in sidecars(db) {
        match fs::remove_file(&p) {
            Ok(()) => removed.push(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove stale sidecar", &p, e)),
        }
    }
    if !removed.is_empty() {
        if let Some(parent) = db.parent() {
            crate::store::backend::sync_dir(parent).ctx("fsync folder", parent)?;
        }
    }
    Ok(removed)
}

/// Step 8: `PRAGMA integrity_check` on the restored db; None when ok.
pub fn final_integrity(db: &Path) -> Option<String> {
    match integrity_problems(db, false) {
        Ok(problems) => problems,
        Err(e) => Some(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The commit point follows what a commit changes in the wal-index,
    /// stays put while nothing commits, and is never trusted from a
    /// header whose two copies disagree.
    #[test]
    fn the_commit_point_follows_commits_and_distrusts_a_torn_header() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("live.db");
        assert_eq!(wal_commit_point(&db), CommitPoint::Unknown);
        let live = Connection::open(&db).unwrap();
        live.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t(x);",
        )
        .unwrap();
        // (`live` loses its locks on the -shm each time: harmless here,
        // where it is the only connection.)
        let first = wal_commit_point(&db);
        assert!(matches!(first, CommitPoint::At(_)), "{first:?}");
        assert_eq!(wal_commit_point(&db), first);
        live.execute("INSERT INTO t VALUES (1)", []).unwrap();
        let second = wal_commit_point(&db);
        assert!(matches!(second, CommitPoint::At(_)) && second != first);

        // A copy of the -shm with the copies torn apart, then one never set up.
        let copy = dir.path().join("copy.db");
        let mut shm = fs::read(dir.path().join("live.db-shm")).unwrap();
        shm[WAL_INDEX_HEADER + 16] ^= 1;
        fs::write(dir.path().join("copy.db-shm"), &shm).unwrap();
        assert_eq!(wal_commit_point(&copy), CommitPoint::Moving);
        fs::write(dir.path().join("copy.db-shm"), [0u8; 2 * WAL_INDEX_HEADER]).unwrap();
        assert_eq!(wal_commit_point(&copy), CommitPoint::Unknown);
        fs::write(dir.path().join("copy.db-shm"), [0u8; 10]).unwrap();
        assert_eq!(wal_commit_point(&copy), CommitPoint::Unknown);
    }

    /// Pages streamed while the WAL still holds the latest rows rebuild a
    /// database that has them: the stream reads through SQLite's pager.
    #[test]
    fn streamed_pages_include_wal_content_and_rebuild_a_sound_db() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("live.db");
        let live = Connection::open(&src).unwrap();
        live.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(x TEXT); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<3000)
             INSERT INTO t SELECT printf('row %d', i) FROM n;",
        )
        .unwrap();
        let wal = dir.path().join("live.db-wal");
        assert!(
            std::fs::metadata(&wal).unwrap().len() > 0,
            "rows must sit in the WAL"
        );

        let mut stream = stream_pages(&src, true)
            .unwrap()
            .expect("sqlite_dbpage is compiled in");
        assert_eq!(stream.page_size, 4096);
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).unwrap();
        assert_eq!(stream.finish().unwrap(), None);
        assert_eq!(bytes.len() % 4096, 0);

        let copy = dir.path().join("copy.db");
        std::fs::write(&copy, &bytes).unwrap();
        assert_eq!(integrity_problems(&copy, false).unwrap(), None);
        let n: i64 = Connection::open(&copy)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3000);
        drop(live);
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.db");
        std::fs::write(&p, b"hello, not a database").unwrap();
        assert_eq!(check_database(&p).unwrap_err().code(), "db_not_sqlite");
        assert_eq!(
            check_database(&dir.path().join("missing.db"))
                .unwrap_err()
                .code(),
            "db_missing"
        );
    }

    #[test]
    fn stale_sidecars_are_removed_and_missing_ones_are_fine() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        fs::write(&db, b"db").unwrap();
        fs::write(dir.path().join("a.db-wal"), b"w").unwrap();
        fs::write(dir.path().join("a.db-shm"), b"s").unwrap();
        let removed = remove_sidecars(&db).unwrap();
        assert_eq!(removed.len(), 2);
        assert!(db.exists());
        assert!(!dir.path().join("a.db-wal").exists());
        assert!(remove_sidecars(&db).unwrap().is_empty());
        // Not a database: the checkpoint reports it, best effort.
        assert!(checkpoint_wal(&db).is_err());
    }

    /// A db with a WAL that holds a committed write: `db` and `db-wal`
    /// copied while the writer's connection kept the WAL unfolded.
    fn db_with_a_wal(dir: &Path, name: &str) -> PathBuf {
        let scratch = dir.join(format!("{name}.scratch"));
        let conn = rusqlite::Connection::open(&scratch).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        let db = dir.join(name);
        fs::copy(&scratch, &db).unwrap();
        fs::copy(
            dir.join(format!("{name}.scratch-wal")),
            dir.join(format!("{name}-wal")),
        )
        .unwrap();
        db
    }

    #[test]
    fn the_checkpoint_folds_a_wal_but_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let wal_len = |db: &Path| {
            fs::metadata(sidecars(db)[0].clone())
                .map(|m| m.len())
                .unwrap_or(0)
        };
        let real = db_with_a_wal(dir.path(), "real.db");
        assert!(wal_len(&real) > 0);
        assert_eq!(checkpoint_wal(&real), Ok(()));
        assert_eq!(wal_len(&real), 0, "folded in and truncated");

        let outside = db_with_a_wal(dir.path(), "outside.db");
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let before = (fs::read(&outside).unwrap(), wal_len(&outside));
        // The outside db's WAL planted beside the link, as a checkpoint
        // through the link would read it.
        fs::copy(sidecars(&outside)[0].clone(), sidecars(&link)[0].clone()).unwrap();
        assert!(checkpoint_wal(&link).is_err(), "refused");
        assert_eq!((fs::read(&outside).unwrap(), wal_len(&outside)), before);
    }

    #[test]
    fn a_checkpoint_another_connection_keeps_from_finishing_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("held.db");
        let writer = rusqlite::Connection::open(&db).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
                 CREATE TABLE t(x); INSERT INTO t VALUES (1);",
            )
            .unwrap();
        // A reader on the db as it is now, then more frames it does not see:
        // those cannot be written back while it reads.
        let reader = rusqlite::Connection::open(&db).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM t;")
            .unwrap();
        writer.execute("INSERT INTO t VALUES (2)", []).unwrap();
        let why = checkpoint_wal(&db).expect_err("reported");
        assert!(
            why.busy && why.detail.contains("another connection holds it"),
            "{why}"
        );
        reader.execute_batch("COMMIT").unwrap();
        assert_eq!(checkpoint_wal(&db), Ok(()));
    }
}
