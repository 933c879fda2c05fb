//! `dump STAMP PATH`: one file of a snapshot, streamed to a writer (the
//! binary's stdout, or `--output FILE`). Every chunk is re-hashed against
//! its id as it is read (a damaged chunk stops the stream: exit 3 naming
//! the chunk and the file), and the bytes written are counted and hashed
//! (blake3, in the result). The database comes out as the SQLite file the
//! backup API produced, so `dump STAMP atocore.db > x.db` is a valid
//! database.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::ops::extract::{self, ExtractError};
use crate::ops::ls;
use crate::stamp::Stamp;
use crate::store::manifest::EntryKind;
use crate::store::ReadFrom;
use crate::store::{ChunkFault, Store};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DumpResult {
    pub stamp: String,
    pub path: String,
    /// Where the bytes went: `-` for stdout, else the file.
    pub output: String,
    pub size: u64,
    pub chunks: u64,
    /// blake3 of the bytes written.
    pub blake3: String,
    pub sqlite: bool,
    pub duration_ms: u64,
}

/// A writer that hashes what passes through it.
struct Hashing<'a, W: Write> {
    inner: &'a mut W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for Hashing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A dump of gigabytes takes a while: a signal stops it between two
        // writes (the CLI then reports `interrupted`). Not ErrorKind::
        // Interrupted, which `write_all` would retry.
        if let Some(sig) = crate::os::interrupted() {
            return Err(std::io::Error::other(format!(
                "interrupted by {}",
                crate::os::signal_name(sig)
            )));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Streams file `path` of snapshot `stamp` into `out`; `output` names
/// `out` for the result and for write errors.
pub fn dump<W: Write>(
    store: &Store,
    stamp: &str,
    path: &str,
    out: &mut W,
    output: &str,
    lock_wait: Duration,
) -> Result<DumpResult> {
    let started = Instant::now();
    let stamp = Stamp::parse(stamp)?;
    let wanted = ls::normalize(path).ok_or_else(|| {
        Error::Usage("dump: PATH must name one file of the snapshot (see `atosnap ls`)".into())
    })?;
    // Packs must not be rewritten by a gc while they are read.
    let _lock = store.lock_shared_reader("dump", lock_wait)?;
    let manifest = store.read_manifest(&stamp, ReadFrom::Cache)?;
    let entry = manifest
        .entries
        .iter()
        .find(|e| e.path == wanted.as_bytes())
        .ok_or_else(|| Error::PathNotInSnapshot {
            stamp: stamp.to_string(),
            path: wanted.clone(),
        })?;
    let EntryKind::File(file) = &entry.kind else {
        return Err(Error::NotAFile {
            stamp: stamp.to_string(),
            path: wanted,
            kind: ls::kind_name(&entry.kind),
        });
    };
    let index = store.load_index()?;
    let mut hashing = Hashing {
        inner: out,
        hasher: blake3::Hasher::new(),
    };
    let written = extract::write_file(
        store,
        &index,
        file,
        &mut hashing,
        |_| {},
        extract::ChunkSource::Store,
    )
    .map_err(|e| chunk_error(e, &wanted, output))?;
    hashing.flush().ctx("write", output)?;
    if written != file.size {
        return Err(Error::ManifestCorrupt {
            stamp: stamp.to_string(),
            detail: format!(
                "{wanted}: its chunks hold {written} bytes, the manifest says {}",
                file.size
            ),
        });
    }
    Ok(DumpResult {
        stamp: stamp.to_string(),
        path: wanted,
        output: output.to_string(),
        size: written,
        chunks: file.list.len(),
        blake3: hashing.hasher.finalize().to_hex().to_string(),
        sqlite: file.sqlite,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// `--output FILE`: the bytes go to a temp file beside FILE (mode 0600),
/// renamed over FILE only when the whole file was written and checked.
pub fn dump_to_file(
    store: &Store,
    stamp: &str,
    path: &str,
    file: &Path,
    lock_wait: Duration,
) -> Result<DumpResult> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = file
        .file_name()
        .ok_or_else(|| Error::Usage(format!("--output {}: not a file name", file.display())))?;
    let tmp = dir.join(format!(
        ".{}.atosnap-dump-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .ctx("create", &tmp)?;
    let shown = file.display().to_string();
    let written = (|| {
        let mut w = std::io::BufWriter::new(&f);
        let r = dump(store, stamp, path, &mut w, &shown, lock_wait)?;
        w.flush().ctx("write", &tmp)?;
        drop(w);
        f.sync_all().ctx("fsync", &tmp)?;
        std::fs::rename(&tmp, file).ctx("rename into place", file)?;
        Ok(r)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A chunk that cannot be read, named with the file it belongs to.
pub fn chunk_error(e: ExtractError, path: &str, output: &str) -> Error {
    match e {
        ExtractError::Chunk(id, ChunkFault::Corrupt(detail)) => Error::ChunkCorrupt {
            hash: id.to_hex(),
            detail: format!("{detail} (a chunk of {path})"),
        },
        ExtractError::Chunk(id, fault) => fault.into_error(&id),
        ExtractError::Write(e) => Error::io("write", output, e),
        // Only in-memory reads are bounded; dump streams, but a file larger
        // than its recorded size is still refused, naming it.
        ExtractError::TooLarge { limit } => Error::TargetInvalid {
            path: output.into(),
            detail: format!("{path} holds more than its recorded {limit} bytes"),
        },
    }
}
