//! Checking one pack: its structure always (trailer, index, frames that
//! tile the blob area, header); with a re-hash, the whole file streamed
//! once, hashed against its name, every frame decoded and every chunk
//! checked against its id. `rehash_packs` runs several at once.

use rayon::prelude::*;
use std::io::Read;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::store::index::ChunkIndex;
use crate::store::pack;
use crate::store::pack2::Codec;
use crate::store::{Check, Object, PackLayout, Store};

/// What checking one pack found.
#[derive(Default)]
pub(super) struct PackCheck {
    /// Bytes of the pack file read.
    pub(super) bytes: u64,
    /// Chunks re-hashed.
    pub(super) chunks: u64,
    /// Chunks that do not decode to their id (or cannot be read).
    pub(super) corrupt: Vec<Id>,
    /// The first fault of the pack's structure: trailer, index, layout,
    /// header, length, readability.
    pub(super) structural: Option<String>,
    /// The file's hash is not its name (checked when nothing else is wrong).
    pub(super) name_mismatch: bool,
    /// The first I/O error reading the pack (not damage), and the chunks
    /// it left unchecked.
    pub(super) unreadable: Option<String>,
    pub(super) unverified: Vec<Id>,
    /// Stored bytes of all its frames.
    pub(super) total_stored: u64,
}

impl PackCheck {
    fn damaged(&mut self, detail: String) {
        if self.structural.is_none() {
            self.structural = Some(detail);
        }
    }

    fn unreadable(&mut self, e: &std::io::Error, unchecked: impl IntoIterator<Item = Id>) {
        if self.unreadable.is_none() {
            self.unreadable = Some(pack::unreadable(e));
        }
        self.unverified.extend(unchecked);
    }

    /// What is wrong with the pack, if anything.
    pub(super) fn detail(&self) -> Option<String> {
        if let Some(s) = &self.structural {
            return Some(s.clone());
        }
        if !self.corrupt.is_empty() {
            let mut ids: Vec<String> = self.corrupt.iter().take(3).map(Id::to_hex).collect();
            if self.corrupt.len() > 3 {
                ids.push("...".into());
            }
            return Some(format!(
                "{} corrupt chunk(s): {}",
                self.corrupt.len(),
                ids.join(", ")
            ));
        }
        self.name_mismatch
            .then(|| "pack content does not match its name".to_string())
    }

    /// Whether the damage concerns an audit of what `referenced` accepts
    /// only: damage to the pack as a whole does, a corrupt chunk only if
    /// referenced.
    pub(super) fn concerns(&self, referenced: impl Fn(&Id) -> bool) -> bool {
        // A corrupt chunk explains a name mismatch on its own.
        self.structural.is_some()
            || (self.name_mismatch && self.corrupt.is_empty())
            || self.corrupt.iter().any(referenced)
    }
}

/// Stored bytes of the frames handed over at once when re-hashing: they
/// are decoded and checked in parallel while the next ones are read.
/// Frames are up to about 1 MiB, so a batch holds two or so; the other
/// pack being re-hashed keeps a core busy when one idles. 3 MiB batches
/// took verify's peak on the 130k runtime to 60-67 MiB, against a 64 MiB
/// target; 2 MiB ones peak at 55-58 MiB in the same time (0.67-0.73 s).
const BLOCK: usize = 2 << 20;
/// Packs re-hashed at once, whatever the number of cores (memory stays a
/// few blocks each). With one, a pack's last frames and the next one's
/// first reads left a core idle: on the 130k runtime two took verify
/// from 1.09-1.16 s to 0.84-0.99 s, and its peak from 44 to 49 MiB.
const PACKS_AT_ONCE: usize = 2;

/// Re-hashes `packs` ([`check_pack`]), [`PACKS_AT_ONCE`] at a time, each
/// streamed by its own reader thread with its frames decoded in parallel
/// on the shared pool. Results in the order of `packs`.
pub(super) fn rehash_packs(
    store: &Store,
    index: &ChunkIndex,
    packs: &[u32],
) -> Result<Vec<(u32, PackCheck)>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done: Vec<std::sync::Mutex<Option<PackCheck>>> =
        packs.iter().map(|_| Default::default()).collect();
    let interrupted = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..PACKS_AT_ONCE.min(packs.len()))
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    loop {
                        let at = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&p) = packs.get(at) else {
                            return Ok(());
                        };
                        crate::os::check_interrupted()?;
                        let check = check_pack(store, index, p, true);
                        if let Ok(mut slot) = done[at].lock() {
                            *slot = Some(check);
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            // A panicked worker's packs are caught below, by their slots.
            .map(|w| w.join().unwrap_or(Ok(())))
            .find(|r| r.is_err())
    });
    if let Some(Err(e)) = interrupted {
        return Err(e);
    }
    // A pack without a result (its worker panicked) fails the audit by
    // name: it is never passed over as checked.
    packs
        .iter()
        .zip(done)
        .map(|(&p, slot)| match slot.into_inner().ok().flatten() {
            Some(check) => Ok((p, check)),
            None => Err(Error::ReaderPanicked {
                path: store.display(&Object::Pack(index.pack(p).id)),
            }),
        })
        .collect()
}
/// The reader's buffer: small frames (format 1: one chunk each) are read
/// through it, large ones straight into their own buffers.
const READ_BUF: usize = 256 << 10;

/// Checks one pack. Always its structure: the trailer and index read, the
/// frames (format-1 chunks) tile the blob area exactly, raw frames have
/// their recorded length, the header is there. With `rehash`, it streams
/// the whole file: its hash must be its name, every frame must decode and
/// every chunk in it must hash to its id (a frame that does not decode
/// makes every chunk in it corrupt). Memory is bounded by one window.
pub(super) fn check_pack(store: &Store, index: &ChunkIndex, p: u32, rehash: bool) -> PackCheck {
    let info = index.pack(p);
    let pack = Object::Pack(info.id);
    let mut check = PackCheck::default();
    let layout = match store.read_pack_layout(&pack, info.size, Check::Strict) {
        Ok(l) => l,
        Err(detail) => {
            // A cache that does not read names no chunks: the pack is
            // still reported, by name.
            let ids = index.ids_in_pack(p).unwrap_or_default();
            if pack::is_unreadable(&detail) {
                check.unreadable = Some(detail);
                check.unverified = ids;
            } else {
                check.structural = Some(detail);
                check.corrupt = ids;
            }
            return check;
        }
    };
    let magic = layout.magic();
    check.bytes = (info.size - layout.blob_end).min(info.size);
    let mut sorted: Vec<usize> = (0..layout.frames.len()).collect();
    sorted.sort_by_key(|&fi| (layout.frames[fi].offset, layout.frames[fi].stored_len));
    let ids_of = |fi: usize| layout.frame_chunks(fi).iter().map(|c| c.id);
    let first_id = |fi: usize| ids_of(fi).next().map(|id| id.to_hex()).unwrap_or_default();

    // Structure: frames back to back from the header to the index.
    let mut overlapping: Vec<usize> = Vec::new();
    let mut tiled: Vec<usize> = Vec::with_capacity(sorted.len());
    let mut pos = magic.len() as u64;
    let overhead = store.sealer().overhead() as u64;
    for &fi in &sorted {
        let f = &layout.frames[fi];
        let start = f.offset as u64;
        check.total_stored += f.stored_len as u64;
        if f.codec == Codec::Raw && f.stored_len as u64 != f.raw_len as u64 + overhead {
            check.damaged(format!(
                "index entry for chunk {} records {} raw bytes stored in {}",
                first_id(fi),
                f.raw_len,
                f.stored_len
            ));
            check.corrupt.extend(ids_of(fi));
        }
        if start < pos {
            check.damaged(format!(
                "index entries overlap at chunk {} (offset {start})",
                first_id(fi)
            ));
            overlapping.push(fi);
            continue;
        }
        if start > pos {
            check.damaged(format!(
                "bytes {pos}..{start} of the blob area belong to no index entry"
            ));
        }
        tiled.push(fi);
        pos = f.end();
    }
    if pos < layout.blob_end {
        check.damaged(format!(
            "bytes {pos}..{} of the blob area belong to no index entry",
            layout.blob_end
        ));
    }

    if !rehash {
        match store.read_object_range(&pack, 0, magic.len()) {
            Ok(h) if h == magic => {}
            Ok(_) => check.damaged("bad pack header".into()),
            Err(e) => check.unreadable(&e, layout.ids()),
        }
        check.bytes += magic.len() as u64;
        return check;
    }

    // Re-hash: a reader thread streams the file once, frame by frame into
    // buffers of their own, hashing it whole, while the frames it has read
    // are decoded and checked in parallel (no buffer is copied again).
    let reader = match store.open_object(&pack) {
        Ok(r) => r,
        Err(e) => {
            check.unreadable(&e, layout.ids());
            return check;
        }
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(usize, Vec<u8>)>>(1);
    let mut next = 0usize;
    let streamed = std::thread::scope(|scope| {
        let places = tiled.iter().map(|&fi| {
            let f = &layout.frames[fi];
            (fi, f.offset as u64, f.stored_len as usize)
        });
        let places: Vec<(usize, u64, usize)> = places.collect();
        let reading = scope.spawn(move || stream_frames(reader, magic.len(), &places, tx));
        for batch in rx {
            next += batch.len();
            decode_batch(store, &layout, batch, &mut check);
        }
        reading
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the reader thread failed")))
    });
    match streamed {
        Ok(Streamed { hash, len, header }) => {
            check.bytes = len;
            if header != magic {
                check.damaged("bad pack header".into());
            }
            if let Some(&fi) = tiled.get(next) {
                check.damaged(format!(
                    "truncated: chunk {} ends past the end of the file ({len} bytes)",
                    first_id(fi)
                ));
                check
                    .corrupt
                    .extend(tiled[next..].iter().flat_map(|&fi| ids_of(fi)));
            } else if len != info.size {
                check.damaged(format!(
                    "size changed while read: {len} bytes, listed {}",
                    info.size
                ));
            } else {
                check.name_mismatch = hash != info.id;
            }
        }
        Err(e) => {
            let unchecked = tiled[next.min(tiled.len())..]
                .iter()
                .flat_map(|&fi| ids_of(fi));
            check.unreadable(&e, unchecked);
        }
    }
    // Frames overlapping others: each checked on its own.
    for fi in overlapping {
        let f = &layout.frames[fi];
        match store.read_object_range(&pack, f.offset as u64, f.stored_len as usize) {
            Ok(stored) => {
                let bad = frame_faults(store, &layout, fi, stored);
                check.chunks += layout.frame_chunks(fi).len() as u64;
                check.corrupt.extend(bad);
            }
            Err(err) => check.unreadable(&err, ids_of(fi)),
        }
    }
    check.corrupt.sort();
    check.corrupt.dedup();
    check
}

/// Decodes and checks, in parallel, frames read whole (frame index,
/// stored bytes).
fn decode_batch(
    store: &Store,
    layout: &PackLayout,
    batch: Vec<(usize, Vec<u8>)>,
    check: &mut PackCheck,
) {
    check.chunks += batch
        .iter()
        .map(|(fi, _)| layout.frame_chunks(*fi).len() as u64)
        .sum::<u64>();
    let bad: Vec<Vec<Id>> = batch
        .into_par_iter()
        .map(|(fi, stored)| frame_faults(store, layout, fi, stored))
        .collect();
    check.corrupt.extend(bad.into_iter().flatten());
}

/// The chunks of frame `fi` that do not decode to their id: all of them
/// when the frame itself does not open or decode.
fn frame_faults(store: &Store, layout: &PackLayout, fi: usize, stored: Vec<u8>) -> Vec<Id> {
    match store.decode_frame(layout, fi, stored) {
        Ok(frame) => (0..frame.len())
            .filter(|&i| !matches!(frame.chunk(i), Some(Ok(_))))
            .filter_map(|i| frame.id(i))
            .collect(),
        Err(e) => layout
            .frame_chunks(fi)
            .iter()
            .map(|c| c.id)
            .chain(e.ids)
            .collect(),
    }
}

/// What reading a pack through found.
struct Streamed {
    /// blake3 of every byte read, and how many.
    hash: Id,
    len: u64,
    /// The first bytes (the magic's length, fewer if the file is shorter).
    header: Vec<u8>,
}

/// Reads a pack to its end, hashing every byte, and sends the frames at
/// `places` (frame index, offset, stored length; in file order, not
/// overlapping) in batches of about [`BLOCK`] bytes, each frame in a
/// buffer of its own. Bytes between frames are hashed only; the file
/// ending inside a frame stops the sending (that frame and the later ones
/// are not sent).
fn stream_frames(
    reader: Box<dyn Read + Send>,
    header_len: usize,
    places: &[(usize, u64, usize)],
    tx: std::sync::mpsc::SyncSender<Vec<(usize, Vec<u8>)>>,
) -> std::io::Result<Streamed> {
    let mut input = std::io::BufReader::with_capacity(READ_BUF, reader);
    let mut hasher = blake3::Hasher::new();
    let mut header = Vec::with_capacity(header_len);
    let mut len = (&mut input)
        .take(header_len as u64)
        .read_to_end(&mut header)? as u64;
    hasher.update(&header);
    let mut batch: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut batch_bytes = 0usize;
    let places = match len == header_len as u64 {
        true => places,
        false => &[],
    };
    for &(fi, offset, stored_len) in places {
        if offset > len {
            let gap = offset - len;
            let skipped = std::io::copy(&mut (&mut input).take(gap), &mut hasher)?;
            len += skipped;
            if skipped < gap {
                break;
            }
        }
        let mut stored = Vec::with_capacity(stored_len);
        let got = (&mut input)
            .take(stored_len as u64)
            .read_to_end(&mut stored)?;
        hasher.update(&stored);
        len += got as u64;
        if got < stored_len {
            break;
        }
        batch_bytes += stored_len;
        batch.push((fi, stored));
        if batch_bytes >= BLOCK {
            batch_bytes = 0;
            if tx.send(std::mem::take(&mut batch)).is_err() {
                return Err(std::io::Error::other("the checking side stopped"));
            }
        }
    }
    if !batch.is_empty() && tx.send(batch).is_err() {
        return Err(std::io::Error::other("the checking side stopped"));
    }
    drop(tx);
    // The rest: the index and trailer (or whatever follows), hashed.
    len += std::io::copy(&mut input, &mut hasher)?;
    Ok(Streamed {
        hash: Id::from(hasher.finalize()),
        len,
        header,
    })
}
