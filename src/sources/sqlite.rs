//! SQLite through the online backup API, never a raw file read: the copy
//! is a consistent database even while the service writes.

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use crate::chunk;
use crate::error::{Error, IoContext, Result};

/// The page size if `path` starts with a SQLite header; None otherwise.
pub fn sqlite_page_size_of(path: &Path) -> std::io::Result<Option<u32>> {
    let mut header = [0u8; 100];
    let mut f = std::fs::File::open(path)?;
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

/// `PRAGMA integrity_check` (or `quick_check`): None when ok, else the
/// first problems reported.
pub fn integrity_problems(path: &Path, quick: bool) -> Result<Option<String>> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| Error::sqlite(path, e))?;
    let pragma = if quick {
        "PRAGMA quick_check(20)"
    } else {
        "PRAGMA integrity_check(20)"
    };
    let rows: rusqlite::Result<Vec<String>> = conn
        .prepare(pragma)
        .and_then(|mut st| st.query_map([], |r| r.get::<_, String>(0))?.collect());
    match rows {
        Ok(rows) if rows.len() == 1 && rows[0] == "ok" => Ok(None),
        Ok(rows) => Ok(Some(rows.join("; "))),
        Err(e) => Ok(Some(e.to_string())),
    }
}

/// Row counts of every table, for the drill.
pub fn table_row_counts(path: &Path) -> Result<std::collections::BTreeMap<String, u64>> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| Error::sqlite(path, e))?;
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
