//! Where objects are written: the packer groups new chunks (and list
//! blobs, [`Packer::add_list`]) into packs of the configured target size, publishes each pack once it is durable, and
//! records its chunks in the index. Chunks waiting in the open frame, in
//! frames being encoded or in the open pack are tracked so the same chunk
//! is never stored twice in one run.
//!
//! A format-2 store (`frames` in its config) gets format-2 packs:
//! consecutive new chunks are cut into frames (`pack2::FrameBuf`, closed
//! at `frame_max_chunks` / `frame_max_bytes` and when the pack is flushed),
//! each frame is compressed and sealed on a small pool of encoder threads
//! (at most [`FRAMES_IN_FLIGHT`] at a time, so a first snapshot keeps
//! both cores busy with bounded memory), and the encoded frames are
//! appended to the pack in the order they were cut. List blobs fill
//! frames of their own. A full pack is finished and published by a
//! publisher thread while the next one fills; `flush` waits for it. A
//! format-1 store (read-only for `create` since format 2) gets format-1
//! packs, each chunk encoded and sealed on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use crate::chunk::Strategy;
use crate::error::{Error, IoContext, Result};
use crate::id::{Id, IdSet};
use crate::store::backend::Backend;
use crate::store::index::ChunkIndex;
use crate::store::layout::PackLayout;
use crate::store::lists::{BlobSink, BuildStats, LeafCut, ListBuilder, ListRef};
use crate::store::pack::{self, PackWriter};
use crate::store::pack2::{
    EncodedFrame, FinishedPackV2, FrameBuf, FrameKind, FrameParams, PackWriterV2,
};
use crate::store::seal::Sealer;
use crate::store::{Object, Store};

/// New list blobs of one build, held until the build ends: the builder
/// reads the old tree through the index while it writes, and the packer
/// needs the index mutably. A file's new blobs are a few KiB on a day
/// (deltas), its whole list (32 B a chunk) on its first snapshot.
#[derive(Default)]
struct Pending {
    blobs: Vec<(Id, Vec<u8>)>,
    seen: IdSet,
}

impl BlobSink for Pending {
    fn put(&mut self, id: Id, bytes: Vec<u8>) -> Result<()> {
        if self.seen.insert(id) {
            self.blobs.push((id, bytes));
        }
        Ok(())
    }
}

/// What [`Packer::add_list`] made.
#[derive(Debug)]
pub struct BuiltList {
    pub list: ListRef,
    pub stats: BuildStats,
    /// List blobs the store did not hold and that were written.
    pub blobs_new: u64,
    /// The previous version's tree could not be read (the new one is
    /// complete without it): for a warning.
    pub old_fault: Option<Error>,
}

/// Frames cut but not yet written at most: about this many MiB of raw
/// frames and their encoded copies in memory. Measured on the 130k
/// runtime's first snapshot: 4 costs 15 % more wall time (the two
/// encoders wait), 6 buys nothing over 5 and holds 2 MiB more.
pub const FRAMES_IN_FLIGHT: usize = 5;
/// zstd level of format-2 trailers (chunk ids barely compress).
const TRAILER_LEVEL: i32 = 3;

pub struct Packer<'s> {
    store: &'s Store,
    mode: Mode,
    /// Chunks added but not yet in the index (their pack is open, being
    /// published or its frame encoded): a few packs' worth at a time. A
    /// B-tree, since a hash set that churns this way grows on tombstones
    /// to twice the table its peak needs (measured: 4.3 MB against 1.5).
    pending: BTreeSet<Id>,
    /// Packs published by this packer and their sizes.
    pub packs_written: Vec<(Id, u64)>,
}

enum Mode {
    V1(Option<Box<PackWriter>>),
    V2(Box<Framer>),
}

/// The format-2 writer's state.
struct Framer {
    params: FrameParams,
    frame: FrameBuf,
    /// List blobs get frames of their own: a tree is then read a frame of
    /// blobs at a time, not a frame of chunk data per blob.
    list_frame: FrameBuf,
    pool: Option<EncodePool>,
    /// Sequence number of the next frame cut, and of the next to write.
    next_cut: u64,
    next_write: u64,
    /// Encoded frames waiting for an earlier one.
    done: BTreeMap<u64, EncodedFrame>,
    open: Option<(PathBuf, OpenPack)>,
    publisher: Option<Publisher>,
}

type OpenPack = PackWriterV2<BufWriter<File>>;

impl Framer {
    /// The frame being filled with chunks, or with list blobs.
    fn open_frame(&mut self, list: bool) -> &mut FrameBuf {
        if list {
            &mut self.list_frame
        } else {
            &mut self.frame
        }
    }
}

/// Full packs being finished on a background thread (trailer, fsync,
/// publish), so frames keep flowing into the next pack meanwhile: the
/// fsyncs of a first snapshot cost about 15 % of its wall time when they
/// were waited for. Chunks of a pack being published stay pending
/// ([`Packer::has`]) until its outcome is applied to the index.
struct Publisher {
    jobs: Option<mpsc::SyncSender<(PathBuf, OpenPack)>>,
    /// Behind a lock only so the packer stays `Sync` (see `EncodePool`).
    results: Mutex<mpsc::Receiver<Published>>,
    worker: Option<std::thread::JoinHandle<()>>,
    in_flight: usize,
}

/// The outcome of publishing one pack.
type Published = std::result::Result<FinishedPackV2, PublishFault>;

/// Why a pack was not published: which step, on which file.
enum PublishFault {
    Write(PathBuf, std::io::Error),
    Publish(String, std::io::Error),
}

/// Packs at most being published at once: one finishing while the next
/// one fills is enough to hide an fsync; a second bounds the wait.
const PACKS_PUBLISHING: usize = 1;

impl Publisher {
    fn start(backend: Arc<dyn Backend>, sealer: Sealer) -> Publisher {
        let (jobs, rx) = mpsc::sync_channel::<(PathBuf, OpenPack)>(PACKS_PUBLISHING);
        let (tx, results) = mpsc::channel();
        // A thread that does not start drops `rx`: the first hand-over
        // then fails with `publisher_gone`.
        let worker = std::thread::Builder::new()
            .name("pack-publisher".into())
            .spawn(move || {
                while let Ok((path, writer)) = rx.recv() {
                    if tx.send(publish(&*backend, &sealer, path, writer)).is_err() {
                        break;
                    }
                }
            })
            .ok();
        Publisher {
            jobs: Some(jobs),
            results: Mutex::new(results),
            worker,
            in_flight: 0,
        }
    }
}

/// Finishes a pack, makes it durable and publishes it under its name.
fn publish(backend: &dyn Backend, sealer: &Sealer, path: PathBuf, writer: OpenPack) -> Published {
    let finished = match writer.finish_file(TRAILER_LEVEL, sealer) {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(PublishFault::Write(path, e));
        }
    };
    match backend.put_file(&finished.name, &path) {
        Ok(()) => {
            crate::failpoint::hit(|| "pack:published".into());
            Ok(finished)
        }
        Err(e) => Err(PublishFault::Publish(finished.name, e)),
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // Packs handed over are finished (unreferenced until a snapshot
        // names them, as after a crash); nothing is left half written.
        self.jobs = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Encoder threads: frames in, encoded frames out (any order).
struct EncodePool {
    jobs: Option<mpsc::SyncSender<(u64, FrameBuf)>>,
    /// Behind a lock only so that a packer can be shared (`has`) with
    /// parallel readers; only the packer's owner receives.
    results: Mutex<mpsc::Receiver<(u64, EncodedFrame)>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    in_flight: usize,
}

impl EncodePool {
    fn start(params: &FrameParams, sealer: &Sealer) -> EncodePool {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 4);
        let (jobs, rx) = mpsc::sync_channel::<(u64, FrameBuf)>(FRAMES_IN_FLIGHT);
        let rx = Arc::new(Mutex::new(rx));
        let (tx, results) = mpsc::channel();
        let workers = (0..n)
            .filter_map(|_| {
                let (rx, tx) = (rx.clone(), tx.clone());
                let (params, sealer) = (params.clone(), sealer.clone());
                // With no thread started, `rx` is dropped here and the
                // first frame handed over fails with `pool_gone`.
                std::thread::Builder::new()
                    .name("frame-encoder".into())
                    .spawn(move || loop {
                        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok((seq, frame)) = job else { break };
                        if tx.send((seq, frame.encode(&params, &sealer))).is_err() {
                            break;
                        }
                    })
                    .ok()
            })
            .collect();
        EncodePool {
            jobs: Some(jobs),
            results: Mutex::new(results),
            workers,
            in_flight: 0,
        }
    }
}

impl EncodePool {
    /// The next encoded frame, waiting for it when `wait`.
    fn next(&self, wait: bool) -> Option<(u64, EncodedFrame)> {
        let results = self.results.lock().unwrap_or_else(|e| e.into_inner());
        if wait {
            results.recv().ok()
        } else {
            results.try_recv().ok()
        }
    }
}

impl Drop for EncodePool {
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn publisher_gone() -> Error {
    Error::io(
        "publish",
        "the packs written",
        std::io::Error::other("the pack publisher thread stopped"),
    )
}

fn pool_gone() -> Error {
    Error::io(
        "encode frames for",
        "the open pack",
        std::io::Error::other("the frame encoder threads stopped"),
    )
}

impl<'s> Packer<'s> {
    pub fn new(store: &'s Store) -> Packer<'s> {
        let mode = match store.config().frame_params() {
            Some(params) => Mode::V2(Box::new(Framer {
                params,
                frame: FrameBuf::new(FrameKind::Data),
                list_frame: FrameBuf::new(FrameKind::Data),
                pool: None,
                next_cut: 0,
                next_write: 0,
                done: BTreeMap::new(),
                open: None,
                publisher: None,
            })),
            None => Mode::V1(None),
        };
        Packer {
            store,
            mode,
            pending: BTreeSet::new(),
            packs_written: Vec::new(),
        }
    }

    /// Whether new chunks go into format-2 frames.
    pub fn frames(&self) -> bool {
        matches!(self.mode, Mode::V2(_))
    }

    /// True when the chunk is already stored or waiting to be.
    pub fn has(&self, index: &ChunkIndex, id: &Id) -> Result<bool> {
        Ok(self.pending.contains(id) || index.contains(id)?)
    }

    /// Adds a raw chunk (its id already computed). Returns false when the
    /// chunk was already present and nothing was written.
    pub fn add_raw(&mut self, index: &mut ChunkIndex, id: Id, raw: &[u8]) -> Result<bool> {
        self.add_to(index, id, raw, false)
    }

    /// Adds a list blob (its id already computed), into the open frame of
    /// list blobs. Returns false when the store already holds it.
    pub fn add_list_blob(&mut self, index: &mut ChunkIndex, id: Id, blob: &[u8]) -> Result<bool> {
        self.add_to(index, id, blob, true)
    }

    fn add_to(&mut self, index: &mut ChunkIndex, id: Id, raw: &[u8], list: bool) -> Result<bool> {
        if self.has(index, &id)? {
            return Ok(false);
        }
        if !self.frames() {
            let (encoded, compressed) = crate::chunk::encode(raw, &self.store.config().compression);
            let stored = self.store.sealer().seal(encoded, &id.0);
            return self.add(index, id, &stored, raw.len() as u32, compressed);
        }
        self.pending.insert(id);
        let Mode::V2(f) = &mut self.mode else {
            return Ok(true);
        };
        // The pack's temp file exists from its first chunk on, as in
        // format 1 (a run interrupted before its first frame is written
        // leaves it in tmp/ for the next run to sweep).
        if f.open.is_none() {
            let path = self.store.temp_path("pack")?;
            let w = PackWriterV2::create(&path).ctx("create", &path)?;
            f.open = Some((path, w));
        }
        if !f.open_frame(list).fits(raw.len()) {
            self.close_frame(index, list)?;
        }
        let Mode::V2(f) = &mut self.mode else {
            return Ok(true);
        };
        let Framer {
            params,
            frame,
            list_frame,
            ..
        } = &mut **f;
        let open = if list { list_frame } else { frame };
        let full = open
            .push(id, raw, params)
            .map_err(|e| Error::io("frame", "the open pack", std::io::Error::other(e)))?;
        if full {
            self.close_frame(index, list)?;
        }
        Ok(true)
    }

    /// Adds a format-2 frame as it is stored elsewhere in this store (or
    /// in a store sealing alike, `Sealer::same_ids_as`): its bytes are
    /// written unchanged, after the frames cut before it, so gc and copy
    /// move a whole live frame without decoding and re-encoding it. A
    /// frame's seal binds only its chunk ids (never its pack or offset),
    /// so it opens wherever it lands. The caller has checked it (decoded,
    /// every chunk re-hashed) and that this store holds none of its
    /// chunks. Refused in a format-1 store.
    pub fn add_frame(&mut self, index: &mut ChunkIndex, frame: EncodedFrame) -> Result<()> {
        if !self.frames() {
            return Err(Error::io(
                "add a format-2 frame to",
                self.store.display_dir(crate::store::Dir::Packs),
                std::io::Error::other("the store writes format-1 packs"),
            ));
        }
        // What is in the open frames was cut first.
        self.close_frame(index, false)?;
        self.close_frame(index, true)?;
        self.pending.extend(frame.chunks.iter().map(|c| c.id));
        let Mode::V2(f) = &mut self.mode else {
            return Ok(());
        };
        f.done.insert(f.next_cut, frame);
        f.next_cut += 1;
        self.write_ready(index)
    }

    /// Adds a stored (encoded and sealed) chunk to a format-1 pack.
    /// Returns false when the chunk was already present and nothing was
    /// written.
    pub fn add(
        &mut self,
        index: &mut ChunkIndex,
        id: Id,
        stored: &[u8],
        raw_len: u32,
        compressed: bool,
    ) -> Result<bool> {
        if self.has(index, &id)? {
            return Ok(false);
        }
        let Mode::V1(open) = &mut self.mode else {
            return Err(Error::io(
                "add a format-1 chunk to",
                self.store.display_dir(crate::store::Dir::Packs),
                std::io::Error::other("the store writes format-2 frames"),
            ));
        };
        let writer = match open {
            Some(w) => w,
            slot @ None => {
                let path = self.store.temp_path("pack")?;
                slot.insert(Box::new(PackWriter::create(&path).ctx("create", &path)?))
            }
        };
        writer
            .add(id, stored, raw_len, compressed)
            .ctx("write", writer.path())?;
        self.pending.insert(id);
        if writer.len() >= self.store.config().pack.target_size {
            self.flush(index)?;
        }
        Ok(true)
    }

    /// Hands the open frame (of list blobs with `list`) to the encoders
    /// and writes the frames that are ready, waiting for one when too many
    /// are in flight.
    fn close_frame(&mut self, index: &mut ChunkIndex, list: bool) -> Result<()> {
        let Mode::V2(f) = &mut self.mode else {
            return Ok(());
        };
        if f.open_frame(list).is_empty() {
            return Ok(());
        }
        let frame = std::mem::replace(f.open_frame(list), FrameBuf::new(FrameKind::Data));
        let pool = f
            .pool
            .get_or_insert_with(|| EncodePool::start(&f.params, self.store.sealer()));
        let jobs = pool.jobs.as_ref().ok_or_else(pool_gone)?;
        jobs.send((f.next_cut, frame)).map_err(|_| pool_gone())?;
        f.next_cut += 1;
        pool.in_flight += 1;
        while let Some((seq, enc)) = pool.next(false) {
            pool.in_flight -= 1;
            f.done.insert(seq, enc);
        }
        while pool.in_flight >= FRAMES_IN_FLIGHT {
            let (seq, enc) = pool.next(true).ok_or_else(pool_gone)?;
            pool.in_flight -= 1;
            f.done.insert(seq, enc);
        }
        self.write_ready(index)
    }

    /// Waits for every frame in flight and writes them all.
    fn drain(&mut self, index: &mut ChunkIndex) -> Result<()> {
        self.close_frame(index, false)?;
        self.close_frame(index, true)?;
        let Mode::V2(f) = &mut self.mode else {
            return Ok(());
        };
        if let Some(pool) = f.pool.as_mut() {
            while pool.in_flight > 0 {
                let (seq, enc) = pool.next(true).ok_or_else(pool_gone)?;
                pool.in_flight -= 1;
                f.done.insert(seq, enc);
            }
        }
        self.write_ready(index)
    }

    /// Appends the encoded frames that are next in cut order, closing the
    /// pack when it reaches its target size.
    fn write_ready(&mut self, index: &mut ChunkIndex) -> Result<()> {
        loop {
            let Mode::V2(f) = &mut self.mode else {
                return Ok(());
            };
            let Some(enc) = f.done.remove(&f.next_write) else {
                return Ok(());
            };
            f.next_write += 1;
            let (path, writer) = match &mut f.open {
                Some(open) => open,
                slot @ None => {
                    let path = self.store.temp_path("pack")?;
                    let w = PackWriterV2::create(&path).ctx("create", &path)?;
                    slot.insert((path, w))
                }
            };
            writer.add(enc).ctx("write", &*path)?;
            crate::failpoint::hit(|| "pack:frame-written".into());
            if writer.len() >= self.store.config().pack.target_size {
                self.finish_pack(index, false)?;
            }
        }
    }

    /// Hands the open format-2 pack to the publisher, then applies the
    /// packs it has published; waits for one while too many are in
    /// flight, or for all of them with `all`.
    fn finish_pack(&mut self, index: &mut ChunkIndex, all: bool) -> Result<()> {
        let Mode::V2(f) = &mut self.mode else {
            return Ok(());
        };
        if let Some((path, writer)) = f.open.take() {
            let publisher = f.publisher.get_or_insert_with(|| {
                Publisher::start(self.store.backend_handle(), self.store.sealer().clone())
            });
            let jobs = publisher.jobs.as_ref().ok_or_else(publisher_gone)?;
            jobs.send((path, writer)).map_err(|_| publisher_gone())?;
            publisher.in_flight += 1;
        }
        loop {
            let Mode::V2(f) = &mut self.mode else {
                return Ok(());
            };
            let Some(publisher) = f.publisher.as_mut() else {
                return Ok(());
            };
            let wait = publisher.in_flight > 0 && (all || publisher.in_flight > PACKS_PUBLISHING);
            let results = publisher
                .results
                .get_mut()
                .unwrap_or_else(|e| e.into_inner());
            let outcome = if wait {
                results.recv().map_err(|_| publisher_gone())?
            } else {
                match results.try_recv() {
                    Ok(outcome) => outcome,
                    Err(_) => return Ok(()),
                }
            };
            publisher.in_flight -= 1;
            let finished = outcome.map_err(|fault| match fault {
                PublishFault::Write(path, e) => Error::io("write", &path, e),
                PublishFault::Publish(name, e) => {
                    Error::io("publish pack", self.store.object_path(&name), e)
                }
            })?;
            self.published(index, finished);
        }
    }

    /// Records a published format-2 pack in the index.
    fn published(&mut self, index: &mut ChunkIndex, finished: FinishedPackV2) {
        let blob_end = finished
            .trailer
            .frames
            .last()
            .map(|fr| fr.offset as u64 + fr.stored_len as u64)
            .unwrap_or(0);
        let layout = PackLayout::from_v2(finished.trailer, blob_end);
        index.add_pack(finished.id, finished.size, &layout);
        for id in layout.ids() {
            self.pending.remove(&id);
        }
        self.packs_written.push((finished.id, finished.size));
    }

    /// Closes the open frame and pack (if any), makes the pack durable and
    /// publishes it.
    pub fn flush(&mut self, index: &mut ChunkIndex) -> Result<()> {
        if self.frames() {
            self.drain(index)?;
            return self.finish_pack(index, true);
        }
        let Mode::V1(open) = &mut self.mode else {
            return Ok(());
        };
        let Some(writer) = open.take() else {
            return Ok(());
        };
        let tmp_path = writer.path().to_path_buf();
        let sealer = self.store.sealer().clone();
        let finished = match writer.finish(|b| sealer.seal(b, pack::INDEX_AD)) {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp_path);
                return Err(Error::io("write", &tmp_path, e));
            }
        };
        let name = Object::Pack(finished.id).name();
        self.store
            .backend()
            .put_file(&name, &finished.path)
            .ctx("publish pack", self.store.object_path(&name))?;
        let layout = PackLayout::from_v1(finished.entries, 0);
        index.add_pack(finished.id, finished.size, &layout);
        for id in layout.ids() {
            self.pending.remove(&id);
        }
        self.packs_written.push((finished.id, finished.size));
        Ok(())
    }

    /// Builds the list tree of `ids` (a file chunked by `strategy`) into
    /// new list blobs, against an old tree of the same path: unchanged
    /// leaves are reused and changed fixed-block leaves become deltas.
    /// `olds` are tried in order (the previous snapshot's tree, then an
    /// older one) until one reads whole: so a rebuild whose previous tree
    /// lost a blob can rebuild that snapshot's own blobs against the tree
    /// it was built against, and heal it. List blobs are stored as chunk
    /// entries, sealed with their id as AD and never compressed (ids do
    /// not compress).
    pub fn add_list(
        &mut self,
        index: &mut ChunkIndex,
        strategy: &Strategy,
        ids: &[Id],
        olds: &[ListRef],
    ) -> Result<BuiltList> {
        let store = self.store;
        let params = store.list_params();
        let sealer = store.sealer().clone();
        let id_of = move |b: &[u8]| sealer.chunk_id(b);
        let mut tries = olds.iter().map(Some).collect::<Vec<_>>();
        if tries.is_empty() {
            tries.push(None);
        }
        let mut first_fault = None;
        for (n, old) in tries.iter().enumerate() {
            let mut pending = Pending::default();
            let built = {
                let blobs = store.list_blobs(index);
                let mut builder = ListBuilder::new(
                    &params,
                    LeafCut::for_strategy(strategy, &params),
                    &id_of,
                    &mut pending,
                )?;
                if let Some(old) = old {
                    builder = builder.with_old(&blobs, old);
                }
                for id in ids {
                    builder.push(*id)?;
                }
                builder.finish()?
            };
            if built.old_fault.is_some() && n + 1 < tries.len() {
                first_fault = first_fault.or(built.old_fault);
                continue;
            }
            let mut blobs_new = 0;
            for (id, bytes) in pending.blobs {
                if self.add_list_blob(index, id, &bytes)? {
                    blobs_new += 1;
                }
            }
            return Ok(BuiltList {
                list: built.list,
                stats: built.stats,
                blobs_new,
                old_fault: first_fault.or(built.old_fault),
            });
        }
        Err(Error::Encode {
            detail: "no list was built".into(),
        })
    }

    pub fn bytes_written(&self) -> u64 {
        self.packs_written.iter().map(|(_, s)| s).sum()
    }
}

impl Drop for Packer<'_> {
    fn drop(&mut self) {
        // An unfinished pack (error path) is removed; nothing references it.
        match &mut self.mode {
            Mode::V1(open) => {
                if let Some(w) = open.take() {
                    let _ = std::fs::remove_file(w.path());
                }
            }
            Mode::V2(f) => {
                f.pool = None;
                f.publisher = None;
                if let Some((path, w)) = f.open.take() {
                    drop(w);
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}
