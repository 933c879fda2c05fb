//! The local spool: packs waiting for upload, bounded in bytes, so a slow
//! bucket slows the writer instead of filling the disk.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::store::backend::{create_private_dir_all, create_private_file};

use super::{lock, S3Backend};

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
        let downloaded = (|| {
            let reader = backend.op.reader(name).map_err(|e| backend.err(name, e))?;
            let mut src = reader.into_std_read(..).map_err(|e| backend.err(name, e))?;
            let _ = fs::remove_file(&part);
            let mut out = create_private_file(&part)?;
            // Large reads: each one crosses into the async runtime.
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
                n += got as u64;
            }
            out.flush()?;
            fs::rename(&part, &slot.path)?;
            Ok::<u64, io::Error>(n)
        })();
        let size = match downloaded {
            Ok(n) => n,
            Err(e) => {
                let _ = fs::remove_file(&part);
                return Err(e);
            }
        };
        let f = Arc::new(File::open(&slot.path)?);
        *guard = Some(f.clone());
        drop(guard);
        self.account(name, &slot, size.max(1));
        Ok(f)
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
