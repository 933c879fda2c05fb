//! Packs of a store: listing them, reading their trailers into the chunk
//! index, reading and checking chunks, deleting packs.

use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use std::path::PathBuf;

use crate::error::{Error, IoContext, Result};
use crate::id::Id;

use super::backend::{self, BackendErrorKind};
use super::chunk_index::cache::SORT_BUDGET;
use super::chunk_index::{Checks, IndexCache, IndexRecord, PackRow};
use super::frame_cache::{OnceLru, FRAMES_KEPT, LAYOUTS_KEPT};
use super::index::{layout_records, ChunkIndex, DamagedPack, Location};
use super::layout::PackLayout;
use super::location::{self, StoreLocation};
use super::lock::ExclusiveLock;
use super::pack::{PackIndexError, TRAILER_LEN};
use super::pack2::{decode_unit, DecodedFrame, FrameError, TrailerV2, TRAILER2_AD};
use super::seal::Sealer;
use super::Store;
use super::{pack, Dir, Object};

/// The first bytes of a zstd frame: an unencrypted format-2 trailer body
/// starts so, a format-1 one with its entry count (a u64 that would claim
/// billions of entries).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A pack's layout, or why it did not read.
type LayoutRead = std::result::Result<Arc<PackLayout>, String>;

/// A store handle's caches for readers (see `frame_cache`).
pub(crate) struct ReadCaches {
    frames: OnceLru<(Id, u32), std::result::Result<Arc<DecodedFrame>, ChunkFault>>,
    layouts: OnceLru<Id, LayoutRead>,
}

impl Default for ReadCaches {
    fn default() -> Self {
        ReadCaches {
            frames: OnceLru::new(FRAMES_KEPT),
            layouts: OnceLru::new(LAYOUTS_KEPT),
        }
    }
}

impl Store {
    /// Keeps at most `n` decoded frames for this handle's readers from now
    /// on (default [`FRAMES_KEPT`]): a reader that walks chunks in the
    /// order they were stored (copy) needs few.
    pub fn keep_decoded_frames(&self, n: usize) {
        self.reads.frames.set_cap(n);
    }
}

/// Why a chunk could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkFault {
    Missing,
    Corrupt(String),
    /// Its pack could not be read: the storage failed (a refused
    /// connection, a cut stream, a timeout), which says nothing about the
    /// chunk. Never reported as damage: the command stops with an I/O
    /// error instead ([`ChunkFault::into_error`]), so a retry can succeed.
    Unreadable {
        pack: PathBuf,
        kind: std::io::ErrorKind,
        detail: String,
    },
}

impl ChunkFault {
    /// The stable error code of SPEC §3 for this chunk.
    pub fn code(&self, id: &Id) -> String {
        match self {
            ChunkFault::Missing => format!("chunk_missing:{id}"),
            ChunkFault::Corrupt(_) => format!("chunk_corrupt:{id}"),
            ChunkFault::Unreadable { .. } => format!("chunk_unreadable:{id}"),
        }
    }

    /// What a failed read of `pack` means for the chunks in it: a pack
    /// gone is a missing chunk, one the backend (not the transport) found
    /// cut short a corrupt one, anything else a storage failure. A
    /// transient failure is never damage, whatever its `io::ErrorKind`: a
    /// download cut mid-stream may say `UnexpectedEof`.
    pub fn of_read_error(pack: PathBuf, e: &std::io::Error) -> ChunkFault {
        match BackendErrorKind::of(e) {
            BackendErrorKind::NotFound => ChunkFault::Missing,
            BackendErrorKind::Permanent if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                ChunkFault::Corrupt(format!("pack {} is truncated", pack.display()))
            }
            _ => ChunkFault::Unreadable {
                pack,
                kind: e.kind(),
                detail: e.to_string(),
            },
        }
    }

    /// The error a command stops with when it cannot read chunk `id`.
    pub fn into_error(self, id: &Id) -> Error {
        match self {
            ChunkFault::Missing => Error::ChunkMissing { hash: id.to_hex() },
            ChunkFault::Corrupt(detail) => Error::ChunkCorrupt {
                hash: id.to_hex(),
                detail,
            },
            ChunkFault::Unreadable { pack, kind, detail } => {
                Error::io("read", pack, std::io::Error::new(kind, detail))
            }
        }
    }
}

/// How strictly [`Store::read_pack_layout`] reads a pack's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The index checksum must match and every entry must lie in the blob
    /// area.
    Strict,
    /// What can be read of a damaged pack's index: the checksum is not
    /// required to match and entries pointing outside the blob area are
    /// left out. Only for salvage, where every chunk is checked against its
    /// id before it is kept.
    Salvage,
}

impl Store {
    /// Names and sizes of every pack file under `objects/`.
    pub fn list_packs(&self) -> Result<Vec<backend::ListEntry>> {
        let list = self
            .backend
            .list_files(Dir::Packs.name())
            .ctx("list", self.display_dir(Dir::Packs))?;
        Ok(list
            .into_iter()
            .filter(|e| e.name.ends_with(".pack"))
            .collect())
    }

    /// Reads a pack's own index from its trailer (strictly checked).
    pub fn read_pack_index(
        &self,
        pack: &Object,
        size: u64,
    ) -> std::result::Result<PackLayout, String> {
        self.read_pack_layout(pack, size, Check::Strict)
    }

    /// Reads a pack's trailer and index, checked as `check` says. The
    /// format is told by the trailer body itself: a format-2 body is a
    /// zstd frame sealed for "pack-index-v2".
    pub fn read_pack_layout(
        &self,
        pack: &Object,
        size: u64,
        check: Check,
    ) -> std::result::Result<PackLayout, String> {
        let (blob_end, stored, hash) = self.read_pack_trailer(&pack.name(), size)?;
        if check == Check::Strict && blake3::hash(&stored).as_bytes() != &hash {
            return Err(PackIndexError::IndexChecksum.to_string());
        }
        if let Some(z) = self.open_v2_trailer(&stored) {
            let trailer =
                TrailerV2::from_opened(&z, stored.len() as u64, blob_end, self.sealer.overhead())
                    .map_err(|e| e.to_string())?;
            return Ok(PackLayout::from_v2(trailer, blob_end));
        }
        if check == Check::Strict {
            let entries = pack::decode_index(stored, &hash, blob_end, |b| {
                self.sealer.open(b, pack::INDEX_AD)
            })
            .map_err(|e| e.to_string())?;
            return Ok(PackLayout::from_v1(entries, blob_end));
        }
        let encoded = self.sealer.open(stored, pack::INDEX_AD)?;
        let mut entries = pack::decode_entries(&encoded)?;
        entries.retain(|e| {
            e.offset as u64 >= pack::PACK_MAGIC.len() as u64
                && e.offset as u64 + e.stored_len as u64 <= blob_end
        });
        Ok(PackLayout::from_v1(entries, blob_end))
    }

    /// The opened (still zstd-compressed) body of a format-2 trailer; None
    /// when the body is a format-1 index.
    fn open_v2_trailer(&self, stored: &[u8]) -> Option<Vec<u8>> {
        match &self.sealer {
            Sealer::Plain => stored.starts_with(&ZSTD_MAGIC).then(|| stored.to_vec()),
            sealer => sealer.open(stored.to_vec(), TRAILER2_AD).ok(),
        }
    }

    /// (blob area end, stored index bytes, index checksum from the trailer).
    fn read_pack_trailer(
        &self,
        name: &str,
        size: u64,
    ) -> std::result::Result<(u64, Vec<u8>, [u8; 32]), String> {
        if size < TRAILER_LEN as u64 {
            return Err(PackIndexError::TooShort(size).to_string());
        }
        // A pack is named by its hash, so its cached tail never goes stale.
        // Only a tail whose index hashes to its trailer's checksum is used
        // or kept: an index read that came back wrong must not make the
        // pack look damaged from this cache ever after.
        let key = format!("packidx/{name}");
        if let Some(tail) = self.cache.as_ref().and_then(|c| c.get(&key)) {
            if tail.len() >= TRAILER_LEN {
                let (stored, trailer) = tail.split_at(tail.len() - TRAILER_LEN);
                if let Ok((blob_end, len, hash)) = pack::parse_trailer(size, trailer) {
                    if len == stored.len() && blake3::hash(stored).as_bytes() == &hash {
                        return Ok((blob_end, stored.to_vec(), hash));
                    }
                }
            }
        }
        let trailer = self
            .backend
            .read_range_direct(name, size - TRAILER_LEN as u64, TRAILER_LEN)
            .map_err(|e| format!("unreadable: {e}"))?;
        let (blob_end, len, hash) =
            pack::parse_trailer(size, &trailer).map_err(|e| e.to_string())?;
        let stored = self
            .backend
            .read_range_direct(name, blob_end, len)
            .map_err(|e| format!("unreadable: {e}"))?;
        let intact = blake3::hash(&stored).as_bytes() == &hash;
        if let Some(cache) = self.cache.as_ref().filter(|_| intact) {
            let mut tail = Vec::with_capacity(stored.len() + TRAILER_LEN);
            tail.extend_from_slice(&stored);
            tail.extend_from_slice(&trailer);
            cache.put(&key, &tail);
        }
        Ok((blob_end, stored, hash))
    }

    /// The chunk index: the store's index cache refreshed against the
    /// pack listing (`store::chunk_index`, format2.md §1.5). Only the
    /// trailers of packs the cache lacks are read (in parallel); packs no
    /// longer listed are marked gone. Packs whose index cannot be read are
    /// listed in `damaged`.
    pub fn load_index(&self) -> Result<ChunkIndex> {
        self.refresh_index(false, Checks::Again)
    }

    /// [`Store::load_index`] for a writer (create, copy's destination),
    /// trusting the cache files checked whole before (`index/verified`).
    /// A writer asks only whether a chunk is stored already: a cache file
    /// damaged since its check could only make it store a chunk again.
    pub fn load_index_for_writes(&self) -> Result<ChunkIndex> {
        self.refresh_index(false, Checks::Trusted)
    }

    /// As [`Store::load_index`], reading every listed pack's trailer again
    /// (verify, repair): a pack damaged since the cache indexed it is
    /// then in `damaged` and out of the index.
    pub fn load_index_rechecked(&self) -> Result<ChunkIndex> {
        self.refresh_index(true, Checks::Again)
    }

    /// The trailers of `packs`, read in parallel rounds as the iterator is
    /// drawn: the decoded layouts of one round at a time are in memory.
    fn read_trailers<'a>(
        &'a self,
        packs: &'a [(Id, backend::ListEntry)],
    ) -> impl Iterator<Item = (usize, std::result::Result<PackLayout, String>)> + 'a {
        /// Packs whose indexes are read in parallel at a time.
        const PACKS_PER_ROUND: usize = 8;
        packs
            .chunks(PACKS_PER_ROUND)
            .enumerate()
            .flat_map(move |(k, round)| {
                let loaded: Vec<_> = round
                    .par_iter()
                    .map(|(_, p)| self.read_pack_index(&Object::Listed(p.name.clone()), p.size))
                    .collect();
                loaded
                    .into_iter()
                    .enumerate()
                    .map(move |(j, r)| (k * PACKS_PER_ROUND + j, r))
            })
    }

    /// This store's folder of the index cache: under the remote cache of
    /// an S3 store; for a local store under the cache root, keyed by its
    /// canonical path and store id (a copied folder is another store).
    fn index_cache_dir(&self) -> std::path::PathBuf {
        match &self.location {
            StoreLocation::S3(loc) => location::cache_dir(loc, &self.remote).join("index"),
            StoreLocation::Local(root) => {
                let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
                let mut h = blake3::Hasher::new();
                h.update(b"local\0");
                h.update(root.as_os_str().as_encoded_bytes());
                h.update(b"\0");
                h.update(self.config.store_id.as_bytes());
                let key = h.finalize().to_hex();
                self.remote
                    .cache_root()
                    .join(&key.as_str()[..24])
                    .join("index")
            }
        }
    }

    fn refresh_index(&self, recheck: bool, checks: Checks) -> Result<ChunkIndex> {
        let cache = IndexCache::at(self.index_cache_dir())?;
        let lock = cache.lock()?;
        let mut view = cache.open(&lock, checks)?;
        let live: HashMap<Id, u64> = view
            .packs()
            .rows
            .iter()
            .filter(|r| !r.gone)
            .map(|r| (r.id, r.size))
            .collect();
        let mut damaged = Vec::new();
        let mut listed_ids = HashSet::new();
        let (mut to_add, mut to_check) = (Vec::new(), Vec::new());
        for p in self.list_packs()? {
            let Some(id) = pack::pack_id_from_name(&p.name) else {
                damaged.push(DamagedPack {
                    name: p.name.clone(),
                    detail: "not a pack name".into(),
                });
                continue;
            };
            listed_ids.insert(id);
            match live.get(&id) {
                Some(&size) if size == p.size => {
                    if recheck {
                        to_check.push((id, p));
                    }
                }
                _ => to_add.push((id, p)),
            }
        }
        // Not listed any more, or listed with another size (a pack is
        // named by its hash: that file is damaged and is read again).
        let mut gone: Vec<Id> = live
            .keys()
            .filter(|id| !listed_ids.contains(*id))
            .copied()
            .collect();
        gone.extend(
            to_add
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| live.contains_key(id)),
        );
        for (i, result) in self.read_trailers(&to_check) {
            if let Err(detail) = result {
                gone.push(to_check[i].0);
                damaged.push(DamagedPack {
                    name: to_check[i].1.name.clone(),
                    detail,
                });
            }
        }
        // Before the new rows exist: a pack read again after a size change
        // gets a new row, and marks go by id.
        let deleted_here = cache.take_deleted_here();
        let packs_lost = gone.iter().filter(|id| !deleted_here.contains(id)).count();
        if packs_lost > 0 {
            cache.note_losses()?;
        }
        if !gone.is_empty() {
            view.mark_all_gone(&gone)?;
        }
        if !to_add.is_empty() {
            let rows: Vec<PackRow> = to_add
                .iter()
                .map(|(id, p)| PackRow {
                    id: *id,
                    size: p.size,
                    format: 2,
                    gone: false,
                })
                .collect();
            let mut failed = Vec::new();
            let records = self.read_trailers(&to_add).flat_map(|(i, result)| {
                let records: Vec<IndexRecord> = match result {
                    Ok(layout) => layout_records(&layout, i as u32).collect(),
                    Err(detail) => {
                        failed.push((i, detail));
                        Vec::new()
                    }
                };
                records.into_iter().map(Ok)
            });
            view.add_packs_from(&rows, records, SORT_BUDGET)?;
            let mut unread = Vec::new();
            for (i, detail) in failed {
                unread.push(to_add[i].0);
                damaged.push(DamagedPack {
                    name: to_add[i].1.name.clone(),
                    detail,
                });
            }
            if !unread.is_empty() {
                view.mark_all_gone(&unread)?;
            }
        }
        if view.needs_compaction() {
            view.compact(SORT_BUDGET)?;
        }
        drop(lock);
        let losses_seen = cache.losses_seen();
        let mut index = ChunkIndex::over_view(view, damaged, cache);
        index.packs_lost = packs_lost;
        index.losses_seen = losses_seen;
        Ok(index)
    }

    /// Clears this host's mark of lost packs if it is still `seen`: a
    /// verify of the whole store that started with that mark found every
    /// snapshot whole (see `store::chunk_index::cache`).
    pub fn clear_losses(&self, seen: &str) -> Result<()> {
        let cache = IndexCache::at(self.index_cache_dir())?;
        Ok(cache.clear_losses(seen)?)
    }

    /// Runs `work` while, on a remote store, two helper threads fetch the
    /// packs holding `ids` in the order they are first needed, so that the
    /// readers in `work` find each pack downloaded instead of each waiting
    /// for its own. A local store just runs `work`.
    pub fn with_packs_prefetched<T, I: std::borrow::Borrow<Id>>(
        &self,
        index: &ChunkIndex,
        ids: impl Iterator<Item = I>,
        work: impl FnOnce() -> T,
    ) -> T {
        if !self.is_remote() {
            return work();
        }
        let mut seen = std::collections::HashSet::new();
        let names: Vec<String> = ids
            // A cache read that fails only loses the prefetch of that pack.
            .filter_map(|id| index.get(id.borrow()).ok().flatten())
            .filter(|loc| seen.insert(loc.pack))
            .map(|loc| Object::Pack(index.pack(loc.pack).id).name())
            .collect();
        const PREFETCHERS: usize = 2;
        std::thread::scope(|scope| {
            for first in 0..PREFETCHERS {
                let names = &names;
                scope.spawn(move || {
                    for name in names.iter().skip(first).step_by(PREFETCHERS) {
                        // A failure here is met again, and reported, by
                        // the reader that needs the pack.
                        let _ = self.backend.prefetch(name);
                    }
                });
            }
            work()
        })
    }

    /// Reads, unseals, decompresses and re-hashes one chunk. A chunk in a
    /// format-2 frame is taken from the frame cache, the frame read and
    /// decoded (every chunk of it re-hashed) on a miss.
    pub fn read_chunk(
        &self,
        index: &ChunkIndex,
        id: &Id,
    ) -> std::result::Result<Vec<u8>, ChunkFault> {
        let loc = index.locate(id)?;
        if !loc.in_frame() {
            let stored = self.read_stored(&index.pack(loc.pack).id, &loc)?;
            return self.decode_chunk(stored, id, loc.compressed(), loc.raw_len);
        }
        let mut out = vec![0; loc.raw_len as usize];
        self.read_chunk_into(index, id, &loc, &mut out)?;
        Ok(out)
    }

    /// [`Store::read_chunk`] of the chunk `id` found at `loc`, its bytes
    /// copied into `out`, which must be exactly `loc.raw_len` long (a
    /// restore fills one buffer per write with many chunks: no allocation
    /// per chunk).
    pub fn read_chunk_into(
        &self,
        index: &ChunkIndex,
        id: &Id,
        loc: &Location,
        out: &mut [u8],
    ) -> std::result::Result<(), ChunkFault> {
        let pack = index.pack(loc.pack);
        let put = |out: &mut [u8], bytes: &[u8]| {
            if bytes.len() != out.len() {
                return Err(ChunkFault::Corrupt(format!(
                    "{} bytes where the index records {}",
                    bytes.len(),
                    out.len()
                )));
            }
            out.copy_from_slice(bytes);
            Ok(())
        };
        if !loc.in_frame() {
            let stored = self.read_stored(&pack.id, loc)?;
            let raw = self.decode_chunk(stored, id, loc.compressed(), loc.raw_len)?;
            return put(out, &raw);
        }
        let frame = self.cached_frame(&pack.id, pack.size, loc)?;
        let i = frame
            .position_at(loc.chunk_offset as usize)
            .filter(|&i| frame.id(i) == Some(*id))
            .ok_or_else(|| {
                let name = Object::Pack(pack.id).name();
                ChunkFault::Corrupt(format!(
                    "not at its recorded place in its frame of pack {name}"
                ))
            })?;
        match frame.chunk(i) {
            Some(Ok(bytes)) => put(out, bytes),
            _ => Err(ChunkFault::Corrupt(
                "content does not match its hash".into(),
            )),
        }
    }

    /// Reads chunks that lie scattered in frames (an in-place restore
    /// fetching the few chunks that differ): each `(id, location, range)`
    /// into `buf[range]`. A frame already decoded is used; otherwise the
    /// frame is decoded only up to the end of the last chunk wanted from
    /// it (not kept), and only the wanted chunks are re-hashed (a lanes
    /// frame, which cannot be decoded in part, is decoded whole and kept).
    pub fn read_scattered_into(
        &self,
        index: &ChunkIndex,
        wanted: &[(Id, Location, std::ops::Range<usize>)],
        buf: &mut [u8],
    ) -> std::result::Result<(), (Id, ChunkFault)> {
        let same_frame = |a: &Location, b: &Location| {
            (a.pack, a.frame_offset) == (b.pack, b.frame_offset) && a.in_frame()
        };
        let mut rest = wanted;
        while let Some((_, first, _)) = rest.first() {
            let n = rest
                .iter()
                .take_while(|(_, l, _)| same_frame(first, l))
                .count()
                .max(1);
            let (group, next) = rest.split_at(n);
            rest = next;
            let pack = index.pack(first.pack);
            let cached = first.in_frame()
                && self
                    .reads
                    .frames
                    .peek(&(pack.id, first.frame_offset))
                    .is_some();
            // A lanes frame has no prefix to decode: decoded whole, it
            // is kept for the next chunk asked of it.
            let whole = first.codec() == super::pack2::Codec::ZstdLanes;
            if !first.in_frame() || cached || whole {
                for (id, loc, range) in group {
                    self.read_chunk_into(index, id, loc, &mut buf[range.clone()])
                        .map_err(|f| (*id, f))?;
                }
                continue;
            }
            self.read_frame_prefix(index, group, buf)?;
        }
        Ok(())
    }

    /// [`Store::read_scattered_into`] of chunks of one frame, decoded up
    /// to the last one's end.
    fn read_frame_prefix(
        &self,
        index: &ChunkIndex,
        group: &[(Id, Location, std::ops::Range<usize>)],
        buf: &mut [u8],
    ) -> std::result::Result<(), (Id, ChunkFault)> {
        let Some((first_id, loc, _)) = group.first() else {
            return Ok(());
        };
        let fault = |f: ChunkFault| (*first_id, f);
        let pack = index.pack(loc.pack);
        let name = Object::Pack(pack.id).name();
        let stored = self.read_stored(&pack.id, loc).map_err(fault)?;
        let layout = self.cached_layout(&pack.id, pack.size).map_err(|detail| {
            fault(ChunkFault::Corrupt(format!(
                "the index of pack {name} does not read: {detail}"
            )))
        })?;
        let corrupt = |detail: String| fault(ChunkFault::Corrupt(detail));
        let fi = layout.frame_at(loc.frame_offset).ok_or_else(|| {
            corrupt(format!(
                "pack {name} has no frame at offset {}",
                loc.frame_offset
            ))
        })?;
        let upto = group
            .iter()
            .map(|(_, l, _)| l.chunk_offset as usize + l.raw_len as usize)
            .max()
            .unwrap_or(0);
        let codec = layout
            .frames
            .get(fi)
            .map(|f| f.codec)
            .ok_or_else(|| corrupt(format!("frame {fi} is not in pack {name}")))?;
        let raw = super::pack2::decode_prefix(
            stored,
            codec,
            layout.frame_chunks(fi),
            layout.ad_mode(),
            &self.sealer,
            upto,
        )
        .map_err(|e| corrupt(format!("in pack {name}: {}", e.detail)))?;
        let mismatch = |id: &Id| {
            (
                *id,
                ChunkFault::Corrupt("content does not match its hash".into()),
            )
        };
        // The pieces up to the first one not where (or not as long as) its
        // records say; the chunks before that one are checked first, so
        // the error names the first bad chunk in the frame's order.
        let pieces: Vec<&[u8]> = group
            .iter()
            .map_while(|(_, l, range)| {
                let start = l.chunk_offset as usize;
                raw.get(start..start + l.raw_len as usize)
                    .filter(|b| b.len() == range.len())
            })
            .collect();
        let ids = self.sealer.chunk_ids(&pieces);
        if let Some(((id, _, _), _)) = group.iter().zip(ids).find(|((id, _, _), got)| got != id) {
            return Err(mismatch(id));
        }
        if let Some((id, _, _)) = group.get(pieces.len()) {
            return Err(mismatch(id));
        }
        for ((_, _, range), b) in group.iter().zip(pieces) {
            buf[range.clone()].copy_from_slice(b);
        }
        Ok(())
    }

    /// The decoded frame holding the chunk at `loc` in pack `pack` of
    /// `size` bytes, from the cache or read and decoded once.
    fn cached_frame(
        &self,
        pack: &Id,
        size: u64,
        loc: &Location,
    ) -> std::result::Result<Arc<DecodedFrame>, ChunkFault> {
        let load = || {
            let name = Object::Pack(*pack).name();
            // The frame first: a pack gone is a missing chunk.
            let stored = self.read_stored(pack, loc)?;
            let layout = self.cached_layout(pack, size).map_err(|detail| {
                ChunkFault::Corrupt(format!("the index of pack {name} does not read: {detail}"))
            })?;
            let fi = layout.frame_at(loc.frame_offset).ok_or_else(|| {
                ChunkFault::Corrupt(format!(
                    "pack {name} has no frame at offset {}",
                    loc.frame_offset
                ))
            })?;
            self.decode_frame(&layout, fi, stored)
                .map(Arc::new)
                .map_err(|e| ChunkFault::Corrupt(format!("in pack {name}: {e}")))
        };
        self.reads
            .frames
            .get_or_load(&(*pack, loc.frame_offset), load, |r| r.is_ok())
    }

    /// A pack's layout, from the cache or read once.
    pub(super) fn cached_layout(&self, pack: &Id, size: u64) -> LayoutRead {
        let load = || {
            self.read_pack_index(&Object::Pack(*pack), size)
                .map(Arc::new)
        };
        self.reads.layouts.get_or_load(pack, load, |r| r.is_ok())
    }

    /// Opens and decodes frame `fi` of a pack with `layout` from its stored
    /// bytes, re-hashing every chunk in it.
    pub fn decode_frame(
        &self,
        layout: &PackLayout,
        fi: usize,
        stored: Vec<u8>,
    ) -> std::result::Result<DecodedFrame, FrameError> {
        let chunks = layout.frame_chunks(fi);
        let Some(f) = layout.frames.get(fi) else {
            return Err(FrameError {
                ids: Vec::new(),
                detail: format!("frame {fi} is not in the pack"),
            });
        };
        decode_unit(stored, f.codec, chunks, layout.ad_mode(), &self.sealer)
    }

    /// The stored bytes of the frame holding the chunk at `loc` in pack
    /// `pack` (a format-1 chunk's own), as they are in the pack (sealed,
    /// maybe compressed); a failed read as [`ChunkFault::of_read_error`]
    /// says.
    pub fn read_stored(
        &self,
        pack: &Id,
        loc: &Location,
    ) -> std::result::Result<Vec<u8>, ChunkFault> {
        let pack = Object::Pack(*pack);
        self.backend
            .read_range(
                &pack.name(),
                loc.frame_offset as u64,
                loc.frame_stored_len() as usize,
            )
            .map_err(|e| ChunkFault::of_read_error(self.display(&pack), &e))
    }

    /// Turns a stored chunk back into its raw bytes and checks its id.
    pub fn decode_chunk(
        &self,
        stored: Vec<u8>,
        id: &Id,
        compressed: bool,
        raw_len: u32,
    ) -> std::result::Result<Vec<u8>, ChunkFault> {
        let encoded = self
            .sealer
            .open(stored, &id.0)
            .map_err(ChunkFault::Corrupt)?;
        let raw =
            crate::chunk::decode(encoded, compressed, raw_len).map_err(ChunkFault::Corrupt)?;
        if self.sealer.chunk_id(&raw) != *id {
            return Err(ChunkFault::Corrupt(
                "content does not match its hash".into(),
            ));
        }
        Ok(raw)
    }

    /// Checks a stored chunk against its id without keeping the raw bytes
    /// (verify): no copy of the stored bytes, none of raw chunks.
    pub fn check_chunk(
        &self,
        stored: &[u8],
        id: &Id,
        compressed: bool,
        raw_len: u32,
    ) -> std::result::Result<(), ChunkFault> {
        match &self.sealer {
            Sealer::Plain if !compressed => {
                if stored.len() != raw_len as usize {
                    return Err(ChunkFault::Corrupt(format!(
                        "stored length {} differs from the recorded {raw_len}",
                        stored.len()
                    )));
                }
                if self.sealer.chunk_id(stored) != *id {
                    return Err(ChunkFault::Corrupt(
                        "content does not match its hash".into(),
                    ));
                }
                Ok(())
            }
            _ => self
                .decode_chunk(stored.to_vec(), id, compressed, raw_len)
                .map(|_| ()),
        }
    }

    /// Deletes a pack. Only under the exclusive lock.
    pub fn delete_pack(&self, lock: &ExclusiveLock, id: &Id) -> Result<()> {
        lock.still_held()?;
        // Recorded first: a refresh that finds the pack gone then knows
        // this host deleted it, and that nothing was lost.
        crate::store::chunk_index::cache::note_pack_deleted(&self.index_cache_dir(), id);
        let name = Object::Pack(*id).name();
        self.backend
            .delete(&name)
            .ctx("delete", self.object_path(&name))?;
        if let Some(cache) = &self.cache {
            cache.forget(&format!("packidx/{name}"));
        }
        Ok(())
    }

    // ---- quarantine -------------------------------------------------------
}
