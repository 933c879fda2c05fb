//! Uploads: one object from a local file (multipart when large), and the
//! pool of background uploads whose first failure sticks.

use opendal::blocking;
use opendal::options::{ReadOptions, WriteOptions};
use opendal::ErrorKind as OdKind;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use crate::store::pack;

use super::errors::Names;
use super::throttle::{Pacers, PIECE};
use super::{lock, UPLOAD_CHUNK};

/// Uploads local file `local` as object `name`. A pack is named by the
/// hash of its bytes, so another writer (a concurrent `create` or `copy`
/// of the same new data) may store the very same object: one already
/// there with the same size and trailer is not uploaded again, and an
/// upload that fails while such a copy has appeared (S3 cancels one of
/// two multipart uploads racing for a key: `NoSuchUpload`) is not an
/// error. Only a key missing or different after the failure is.
pub(super) fn upload_file(
    op: &blocking::Operator,
    names: &Names,
    pacers: &Pacers,
    name: &str,
    local: &Path,
) -> io::Result<()> {
    if pack::pack_id_from_name(name).is_none() {
        return put_local(op, names, pacers, name, local);
    }
    if let Ok(Stored::Same) = stored_copy(op, names, name, local) {
        tracing::debug!(
            "{}: already stored, not uploaded again",
            names.display(name)
        );
        return Ok(());
    }
    let failed = match put_local(op, names, pacers, name, local) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    match stored_copy(op, names, name, local) {
        Ok(Stored::Same) => {
            tracing::info!(
                "{}: upload failed ({failed}) but another writer stored the same object meanwhile",
                names.display(name)
            );
            Ok(())
        }
        Ok(Stored::Different(what)) => Err(io::Error::new(
            failed.kind(),
            format!("{failed}; the object now in the bucket differs ({what})"),
        )),
        Ok(Stored::Missing) | Err(_) => Err(failed),
    }
}

/// What the bucket holds under a content-addressed name, compared with
/// the local file about to be uploaded there.
pub(super) enum Stored {
    Missing,
    /// Same size and the same pack trailer (index length and index hash):
    /// with the name the hash of the whole content, the same object.
    Same,
    Different(String),
}

/// One HEAD, and when the sizes agree one ranged GET of the trailer.
pub(super) fn stored_copy(
    op: &blocking::Operator,
    names: &Names,
    name: &str,
    local: &Path,
) -> io::Result<Stored> {
    let f = File::open(local)?;
    let len = f.metadata()?.len();
    let size = match op.stat(name) {
        Ok(meta) => meta.content_length(),
        Err(e) if e.kind() == OdKind::NotFound => return Ok(Stored::Missing),
        Err(e) => return Err(names.err(name, e)),
    };
    if size != len {
        return Ok(Stored::Different(format!("{size} bytes, not {len}")));
    }
    let tail = pack::TRAILER_LEN.min(len as usize);
    let offset = len - tail as u64;
    let mut want = vec![0u8; tail];
    f.read_exact_at(&mut want, offset)?;
    let opts = ReadOptions {
        range: (offset..len).into(),
        ..Default::default()
    };
    let got = op
        .read_options(name, opts)
        .map_err(|e| names.err(name, e))?
        .to_vec();
    Ok(if got == want {
        Stored::Same
    } else {
        Stored::Different("another trailer".into())
    })
}

/// Streams local file `local` to object `name` (paced by the upload
/// limit: fed to the writer in small pieces, so the parts leave at the
/// limit on average).
pub(super) fn put_local(
    op: &blocking::Operator,
    names: &Names,
    pacers: &Pacers,
    name: &str,
    local: &Path,
) -> io::Result<()> {
    let mut f = File::open(local)?;
    let len = f.metadata()?.len();
    if len <= UPLOAD_CHUNK as u64 {
        let mut buf = Vec::with_capacity(len as usize);
        f.read_to_end(&mut buf)?;
        pacers.upload(len);
        op.write(name, buf).map_err(|e| names.err(name, e))?;
        return Ok(());
    }
    let opts = WriteOptions {
        chunk: Some(UPLOAD_CHUNK),
        concurrent: 1,
        ..Default::default()
    };
    let mut w = op
        .writer_options(name, opts)
        .map_err(|e| names.err(name, e))?;
    let piece = if pacers.upload.is_some() {
        PIECE
    } else {
        UPLOAD_CHUNK
    };
    let mut left = len;
    while left > 0 {
        let n = left.min(piece as u64) as usize;
        let mut buf = vec![0u8; n];
        f.read_exact(&mut buf)?;
        pacers.upload_piece(n as u64);
        w.write(buf).map_err(|e| names.err(name, e))?;
        left -= n as u64;
    }
    let meta = w.close().map_err(|e| names.err(name, e))?;
    if meta.content_length() != 0 && meta.content_length() != len {
        return Err(io::Error::other(format!(
            "{}: uploaded {} bytes of {len}",
            names.display(name),
            meta.content_length()
        )));
    }
    Ok(())
}

/// Background uploads: at most `max` at once. The first failure is
/// sticky: every later `acquire` and `wait_idle` reports it again, so a
/// caller that saw one barrier fail cannot slip a delete or a publish
/// through the next (gc would delete the only copies of chunks whose new
/// pack never arrived).
pub(super) struct UploadPool {
    max: usize,
    state: Mutex<PoolState>,
    cv: Condvar,
}

#[derive(Default)]
pub(super) struct PoolState {
    in_flight: usize,
    failed: Option<UploadFailure>,
}

/// The first upload failure of a backend, kept for its lifetime
/// (`io::Error` is not `Clone`: its kind and message are).
pub(super) struct UploadFailure {
    kind: io::ErrorKind,
    message: String,
}

impl UploadFailure {
    fn error(&self) -> io::Error {
        io::Error::new(self.kind, self.message.clone())
    }
}

impl UploadPool {
    pub(super) fn new(max: usize) -> UploadPool {
        UploadPool {
            max: max.max(1),
            state: Mutex::new(PoolState::default()),
            cv: Condvar::new(),
        }
    }

    /// Runs `job` (which uploads `local`) on a thread of its own once a
    /// slot is free; `local` is removed when it ends, or at once when the
    /// job cannot start (an earlier upload failed).
    pub(super) fn spawn(
        self: &Arc<Self>,
        local: PathBuf,
        job: impl FnOnce() -> io::Result<()> + Send + 'static,
    ) -> io::Result<()> {
        if let Err(e) = self.acquire() {
            let _ = fs::remove_file(&local);
            return Err(e);
        }
        let pool = self.clone();
        let spawned = std::thread::Builder::new()
            .name("atosnap-s3-upload".into())
            .spawn({
                let local = local.clone();
                move || {
                    let r = job();
                    let _ = fs::remove_file(&local);
                    pool.release(r);
                }
            });
        if let Err(e) = spawned {
            let _ = fs::remove_file(&local);
            self.release(Ok(()));
            return Err(e);
        }
        Ok(())
    }

    /// Waits for a free slot; a recorded failure is returned instead.
    fn acquire(&self) -> io::Result<()> {
        let mut st = lock(&self.state);
        loop {
            if let Some(f) = &st.failed {
                return Err(f.error());
            }
            if st.in_flight < self.max {
                st.in_flight += 1;
                return Ok(());
            }
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn release(&self, result: io::Result<()>) {
        let mut st = lock(&self.state);
        st.in_flight -= 1;
        if let Err(e) = result {
            if st.failed.is_none() {
                st.failed = Some(UploadFailure {
                    kind: e.kind(),
                    message: e.to_string(),
                });
            }
        }
        self.cv.notify_all();
    }

    /// Waits until no upload runs; the first failure ever recorded, if any.
    pub(super) fn wait_idle(&self) -> io::Result<()> {
        let mut st = lock(&self.state);
        while st.in_flight > 0 {
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        match &st.failed {
            Some(f) => Err(f.error()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_upload_pool_keeps_first_error() {
        let pool = UploadPool::new(1);
        pool.acquire().unwrap();
        pool.release(Err(io::Error::other("first")));
        let e = pool.acquire().unwrap_err();
        assert_eq!(e.to_string(), "first");
        // Sticky: neither a later acquire nor waiting clears it.
        assert_eq!(pool.acquire().unwrap_err().to_string(), "first");
        assert_eq!(pool.wait_idle().unwrap_err().to_string(), "first");
        assert_eq!(pool.wait_idle().unwrap_err().to_string(), "first");
    }
}
