//! The local spool: packs waiting for upload, bounded in bytes, so a slow
//! bucket slows the writer instead of filling the disk.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::store::backend::{
    create_private_dir_all, create_private_file, tagged, BackendErrorKind,
};
use crate::store::pack;

use super::{lock, S3Backend};

/// Copies `src` into a new private file `part`: (bytes, blake3 of them).
fn copy_hashing(src: &mut dyn Read, part: &Path) -> io::Result<(u64, blake3::Hash)> {
    let _ = fs::remove_file(part);
    let mut out = create_private_file(part)?;
    let mut hasher = blake3::Hasher::new();
    // Large reads: each one of an S3 stream crosses into the async runtime.
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..got])?;
        hasher.update(&buf[..got]);
        n += got as u64;
    }
    out.flush()?;
    Ok((n, hasher.finalize()))
}

/// Local copies of whole packs, for `read_range`.
pub(super) struct Spool {
    dir: PathBuf,
    pub(super) budget: u64,
    state: Mutex<SpoolState>,
}

#[derive(Default)]
pub(super) struct SpoolState {
    slots: HashMap<String, SlotInfo>,
    tick: u64,
    total: u64,
    next_file: u64,
}

pub(super) struct SlotInfo {
    slot: Arc<Slot>,
    last_use: u64,
    /// 0 until downloaded.
    size: u64,
}

pub(super) struct Slot {
    path: PathBuf,
    /// Filled once by the first reader; others wait on the lock.
    pub(super) file: Mutex<Option<Arc<File>>>,
}

impl Spool {
    pub(super) fn new(dir: PathBuf, budget: u64) -> Spool {
        Spool {
            dir,
            budget,
            state: Mutex::new(SpoolState::default()),
        }
    }

    fn slot(&self, name: &str) -> Arc<Slot> {
        let mut st = lock(&self.state);
        st.tick += 1;
        let tick = st.tick;
        if let Some(info) = st.slots.get_mut(name) {
            info.last_use = tick;
            return info.slot.clone();
        }
        st.next_file += 1;
        let slot = Arc::new(Slot {
            path: self.dir.join(format!("{:08}.pack", st.next_file)),
            file: Mutex::new(None),
        });
        st.slots.insert(
            name.to_string(),
            SlotInfo {
                slot: slot.clone(),
                last_use: tick,
                size: 0,
            },
        );
        slot
    }

    /// The spooled copy of `name`, downloading it on first use.
    pub(super) fn file(&self, backend: &S3Backend, name: &str) -> io::Result<Arc<File>> {
        let slot = self.slot(name);
        let mut guard = lock(&slot.file);
        if let Some(f) = guard.as_ref() {
            return Ok(f.clone());
        }
        create_private_dir_all(&self.dir)?;
        let part = slot.path.with_extension("part");
        let fetch = || -> io::Result<Box<dyn Read>> {
            let reader = backend.op.reader(name).map_err(|e| backend.err(name, e))?;
            let src = reader.into_std_read(..).map_err(|e| backend.err(name, e))?;
            Ok(Box::new(backend.pacers.reading(src)))
        };
        let stored_size = || crate::store::backend::Backend::size(backend, name);
        let size = Self::download_checked(name, fetch, stored_size, &part, &slot.path)?;
        let f = Arc::new(File::open(&slot.path)?);
        *guard = Some(f.clone());
        drop(guard);
        self.account(name, &slot, size.max(1));
        Ok(f)
    }

    /// Downloads `name` (each attempt a fresh stream from `fetch`) to
    /// `part`, then renames it to `to`; returns its size. A pack is named
    /// by the hash of its bytes, so a copy that does not hash to its name
    /// (a stream cut short or garbled on the way) is fetched once more. A
    /// second mismatch of the object's full size (`stored_size`) is the
    /// object in the bucket itself: that copy is kept, and the chunk checks
    /// of the readers name what is damaged. A second copy of another size
    /// is the transport failing again: a transient error, never kept, so it
    /// is not reported as damage.
    fn download_checked(
        name: &str,
        mut fetch: impl FnMut() -> io::Result<Box<dyn Read>>,
        stored_size: impl FnOnce() -> io::Result<u64>,
        part: &Path,
        to: &Path,
    ) -> io::Result<u64> {
        let expected = pack::pack_id_from_name(name);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let copied = fetch().and_then(|mut src| copy_hashing(&mut src, part));
            let (n, hash) = match copied {
                Ok(got) => got,
                Err(e) => {
                    let _ = fs::remove_file(part);
                    return Err(e);
                }
            };
            let intact = expected.is_none_or(|id| id == crate::id::Id::from(hash));
            if !intact && attempt < 2 {
                tracing::warn!(
                    "{name}: the download ({n} bytes) does not hash to its name; fetching it again"
                );
                continue;
            }
            if !intact {
                let want = stored_size().inspect_err(|_| {
                    let _ = fs::remove_file(part);
                })?;
                if n != want {
                    let _ = fs::remove_file(part);
                    return Err(tagged(
                        io::ErrorKind::UnexpectedEof,
                        BackendErrorKind::Transient,
                        format!("{name}: two downloads cut off ({n} of {want} bytes)"),
                    ));
                }
                tracing::warn!("{name}: downloaded twice, {n} bytes that do not hash to its name");
            }
            if let Err(e) = fs::rename(part, to) {
                let _ = fs::remove_file(part);
                return Err(e);
            }
            return Ok(n);
        }
    }

    /// Records a finished download and evicts the least recently used
    /// other packs beyond the budget.
    fn account(&self, name: &str, slot: &Arc<Slot>, size: u64) {
        let mut st = lock(&self.state);
        match st.slots.get_mut(name) {
            Some(info) if Arc::ptr_eq(&info.slot, slot) => info.size = size,
            _ => {
                // Forgotten (deleted or renamed) meanwhile.
                let _ = fs::remove_file(&slot.path);
                return;
            }
        }
        st.total += size;
        while st.total > self.budget {
            let victim = st
                .slots
                .iter()
                .filter(|(n, info)| n.as_str() != name && info.size > 0)
                .min_by_key(|(_, info)| info.last_use)
                .map(|(n, _)| n.clone());
            let Some(victim) = victim else { break };
            if let Some(info) = st.slots.remove(&victim) {
                st.total -= info.size;
                // Readers holding the open file keep reading it.
                let _ = fs::remove_file(&info.slot.path);
            }
        }
    }

    pub(super) fn forget(&self, name: &str) {
        let mut st = lock(&self.state);
        if let Some(info) = st.slots.remove(name) {
            st.total -= info.size;
            let _ = fs::remove_file(&info.slot.path);
        }
    }

    pub(super) fn clear(&self) {
        let mut st = lock(&self.state);
        st.slots.clear();
        st.total = 0;
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams_of(mut v: Vec<Vec<u8>>) -> impl FnMut() -> io::Result<Box<dyn Read>> {
        move || Ok(Box::new(io::Cursor::new(v.pop().unwrap_or_default())))
    }

    #[test]
    fn s3_a_spool_download_not_matching_the_pack_name_is_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let good = b"ATOPACK1 some pack bytes".to_vec();
        let name = pack::pack_name(&crate::id::Id::from(blake3::hash(&good)));
        let (part, to) = (dir.path().join("1.part"), dir.path().join("1.pack"));
        // A stream cut short, then the whole object: the whole one is kept.
        let fetch = streams_of(vec![good.clone(), good[..10].to_vec()]);
        let size = || Ok(good.len() as u64);
        let n = Spool::download_checked(&name, fetch, size, &part, &to).unwrap();
        assert_eq!(n, good.len() as u64);
        assert_eq!(fs::read(&to).unwrap(), good);
        assert!(!part.exists());
        // Garbled twice: the object itself is damaged; its copy is served
        // (the chunk checks report the damage), after exactly two fetches.
        let mut bad = good.clone();
        bad[3] ^= 1;
        let mut fetched = 0;
        let mut inner = streams_of(vec![bad.clone(), bad.clone()]);
        let fetch = || {
            fetched += 1;
            inner()
        };
        Spool::download_checked(&name, fetch, size, &part, &to).unwrap();
        assert_eq!(fs::read(&to).unwrap(), bad);
        assert_eq!(fetched, 2);
        // Not a pack name (quarantine/): taken as it comes, once.
        let mut fetched = 0;
        let mut inner = streams_of(vec![bad.clone(), bad.clone()]);
        let fetch = || {
            fetched += 1;
            inner()
        };
        Spool::download_checked("quarantine/x.pack", fetch, size, &part, &to).unwrap();
        assert_eq!(fetched, 1);
    }

    #[test]
    fn s3_a_spool_download_cut_short_twice_is_a_transient_failure_not_a_kept_copy() {
        let dir = tempfile::tempdir().unwrap();
        let good = b"ATOPACK1 some pack bytes".to_vec();
        let name = pack::pack_name(&crate::id::Id::from(blake3::hash(&good)));
        let (part, to) = (dir.path().join("1.part"), dir.path().join("1.pack"));
        let fetch = streams_of(vec![good[..7].to_vec(), good[..10].to_vec()]);
        let size = || Ok(good.len() as u64);
        let e = Spool::download_checked(&name, fetch, size, &part, &to).unwrap_err();
        assert_eq!(BackendErrorKind::of(&e), BackendErrorKind::Transient, "{e}");
        assert!(e.to_string().contains("7 of 24 bytes"), "{e}");
        assert!(!to.exists() && !part.exists());
        // And what the readers make of it: a storage failure, not damage.
        let fault = crate::store::ChunkFault::of_read_error(to.clone(), &e);
        assert!(
            matches!(fault, crate::store::ChunkFault::Unreadable { .. }),
            "{fault:?}"
        );
        let err = fault.into_error(&crate::id::Id::from(blake3::hash(b"x")));
        assert_eq!(err.code(), "io_error");
        assert_eq!(err.exit_code(), 1);
    }
}
