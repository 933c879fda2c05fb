//! `ChunkIndex`, the lookup every command uses: chunk id to its place
//! (pack, frame, place in the frame). A format-1 chunk is a frame of one
//! chunk (`store::layout`).
//!
//! The chunks of the store are not held in RAM: they are in the on-disk
//! cache of `store::chunk_index` (sorted segments, a pack table),
//! refreshed from the pack trailers when a command opens the index
//! (`store::index_cache`). Packs a writer adds during the run sit in a
//! small pending map, spilled to private segments past [`PENDING_CAP`]
//! chunks, and are published to the cache when the index is dropped.
//!
//! RAM per chunk of the store: 4 bytes (a segment's prefix table, loaded
//! once it has served 1000 lookups, with a start table of about one byte
//! per record, at most 256 KiB), nothing for a command that makes fewer; plus about 100 bytes
//! per pack (its table row and `PackInfo`) and about 64 bytes per chunk a
//! writer adds, for at most [`PENDING_CAP`] chunks at a time (then 4 bytes
//! per spilled chunk). Measured at 1.32 M chunks (heaptrack, `validate`):
//! 5.3 MB, against about 120 MB for the map of every chunk it replaces.

use std::collections::BinaryHeap;
use std::path::PathBuf;

use crate::error::Result;
use crate::id::{Id, IdMap};
use crate::store::chunk_index::{
    IndexCache, IndexError, IndexRecord, IndexView, PackRow, Segment, SegmentWriter,
};
use crate::store::layout::{FrameSpan, PackFormat, PackLayout};
use crate::store::pack2::Codec;

/// The frame's stored length takes the low 29 bits of `frame_word`
/// (a frame is at most 16 MiB plus a seal), its codec the next two, and
/// the top bit says the frame is a format-2 one.
const LEN_MASK: u32 = (1 << 29) - 1;
const CODEC_SHIFT: u32 = 29;
const V2_BIT: u32 = 1 << 31;

/// Where a chunk lives: its frame in a pack, and its bytes in the frame's
/// raw bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: u32,
    /// From the start of the pack file.
    pub frame_offset: u32,
    frame_word: u32,
    /// Raw bytes of the whole frame (the chunk's own for a format-1 chunk).
    pub frame_raw_len: u32,
    /// Where the chunk starts in the frame's raw bytes.
    pub chunk_offset: u32,
    pub raw_len: u32,
}

impl Location {
    /// Stored bytes of the frame holding the chunk (seal included).
    pub fn frame_stored_len(&self) -> u32 {
        self.frame_word & LEN_MASK
    }

    pub fn codec(&self) -> Codec {
        Codec::from_u8(((self.frame_word >> CODEC_SHIFT) & 3) as u8).unwrap_or(Codec::ZstdDict)
    }

    /// Whether the frame is zstd-compressed.
    pub fn compressed(&self) -> bool {
        self.codec() == Codec::Zstd
    }

    /// Whether the chunk is in a format-2 frame (read through its pack's
    /// layout and the frame cache) rather than a format-1 chunk of its own.
    pub fn in_frame(&self) -> bool {
        self.frame_word & V2_BIT != 0
    }

    fn from_record(r: &IndexRecord, pack: u32) -> Location {
        let v2 = if r.ad_mode == 0 { V2_BIT } else { 0 };
        Location {
            pack,
            frame_offset: r.frame_offset,
            frame_word: (r.frame_stored_len & LEN_MASK)
                | ((r.codec as u32 & 3) << CODEC_SHIFT)
                | v2,
            frame_raw_len: r.frame_raw_len,
            chunk_offset: r.chunk_offset,
            raw_len: r.chunk_raw_len,
        }
    }

    /// The cache record of this location, naming pack row `pack`.
    fn record(&self, id: Id, pack: u32) -> IndexRecord {
        IndexRecord {
            id,
            pack,
            frame_offset: self.frame_offset,
            frame_stored_len: self.frame_stored_len(),
            frame_raw_len: self.frame_raw_len,
            chunk_offset: self.chunk_offset,
            chunk_raw_len: self.raw_len,
            codec: self.codec() as u8,
            kind: 0,
            dict: 0,
            ad_mode: u8::from(!self.in_frame()),
        }
    }

    /// The chunk's share of its frame's stored bytes.
    pub fn stored_share(&self) -> u64 {
        PackLayout::share(
            self.frame_stored_len(),
            self.frame_raw_len,
            self.raw_len as u64,
        )
    }
}

impl Location {
    /// The location of a chunk of `raw_len` bytes at `chunk_offset` in
    /// frame `f` of a pack of `format`, `pack` being the pack's number.
    pub fn in_frame_of(
        format: PackFormat,
        f: &FrameSpan,
        pack: u32,
        chunk_offset: u32,
        raw_len: u32,
    ) -> Location {
        let v2 = if format == PackFormat::V2 { V2_BIT } else { 0 };
        Location {
            pack,
            frame_offset: f.offset,
            frame_word: (f.stored_len & LEN_MASK) | ((f.codec as u32) << CODEC_SHIFT) | v2,
            frame_raw_len: f.raw_len,
            chunk_offset,
            raw_len,
        }
    }
}

/// Every (id, location) of a pack's layout, `pack` being its number.
pub fn layout_locations(
    layout: &PackLayout,
    pack: u32,
) -> impl Iterator<Item = (Id, Location)> + '_ {
    layout.frames.iter().enumerate().flat_map(move |(fi, f)| {
        let mut at = 0u32;
        layout.frame_chunks(fi).iter().map(move |c| {
            let loc = Location::in_frame_of(layout.format, f, pack, at, c.raw_len);
            at = at.saturating_add(c.raw_len);
            (c.id, loc)
        })
    })
}

/// The cache records of a pack's layout, naming pack row `row`.
pub fn layout_records(layout: &PackLayout, row: u32) -> impl Iterator<Item = IndexRecord> + '_ {
    layout_locations(layout, row).map(move |(id, loc)| loc.record(id, row))
}

/// A pack the index knows, with its size.
#[derive(Clone, Debug)]
pub struct PackInfo {
    pub id: Id,
    pub size: u64,
}

/// A pack whose index could not be read: listed, its chunks unknown.
#[derive(Clone, Debug)]
pub struct DamagedPack {
    pub name: String,
    pub detail: String,
}

/// Chunks of added packs held in RAM before they are spilled to a
/// private segment: 7/8 of 32,768, the most a map of 32,768 slots holds
/// before it doubles (57 bytes a slot: 1.8 MiB; one chunk more would
/// take 3.6 MiB). Spilled segments merge by level, so a small cap costs
/// a few rewrites, not more segments to look in.
pub const PENDING_CAP: usize = (1 << 15) / 8 * 7;

/// A private folder of spilled pending chunks, removed when dropped.
struct Spill {
    dir: tempfile::TempDir,
    /// Oldest first (the order lookups try them), each with its level:
    /// a spill is level 0, and [`SPILL_FAN_IN`] segments of one level
    /// merge into one of the next, so a writer's lookups try a few
    /// segments however many chunks it adds (1.3 M chunks: 7 segments, each
    /// record rewritten two or three times).
    segments: Vec<(u32, Segment)>,
    /// Names segments uniquely within the folder.
    written: u64,
}

/// A spill folder's name: this prefix, then its writer
/// ([`crate::os::TempOwner`]), then tempfile's random part.
const SPILL_PREFIX: &str = "pending-";

/// Removes the spill folders of writers that are gone (a folder removes
/// itself when its writer ends, but not after a kill), as the next
/// writer spilling beside them starts; and, with `old_form_too` (the
/// parent is atosnap's cache, not a shared temp dir), folders of the old
/// form, which name no writer, once untouched for [`OLD_FORM_STILL_FOR`].
/// Best effort: a folder that cannot be removed is left for the next one.
fn sweep_stale_spills(parent: &std::path::Path, old_form_too: bool) {
    sweep_spills_older_than(parent, old_form_too.then_some(OLD_FORM_STILL_FOR));
}

/// Folders of the old form (`pending-` and tempfile's six random
/// characters, before spill folders named their writer) are removed when
/// untouched this long: no writer runs for a week without writing to its
/// folder, and a process stopped that long loses only its own create,
/// whose packs the next gc collects.
const OLD_FORM_STILL_FOR: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// [`sweep_stale_spills`] with the old form's quiet period given (None:
/// old-form folders are left alone).
fn sweep_spills_older_than(
    parent: &std::path::Path,
    old_form_still_for: Option<std::time::Duration>,
) {
    let Ok(list) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in list.flatten() {
        let name = entry.file_name();
        let Some(owned) = name.to_str().and_then(|n| n.strip_prefix(SPILL_PREFIX)) else {
            continue;
        };
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let untouched_for = |still: std::time::Duration| {
            crate::os::last_touched(&path)
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= still)
        };
        let stale = match (is_old_form(owned), old_form_still_for) {
            (true, Some(still)) => untouched_for(still),
            (true, None) => false,
            (false, _) => crate::os::temp_stale(owned, || crate::os::last_touched(&path)),
        };
        if stale {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// A spill folder name of the old form, after the prefix: tempfile's six
/// random letters and digits, and nothing else.
fn is_old_form(rest: &str) -> bool {
    rest.len() == 6 && rest.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Segments of one level merged into one of the next.
const SPILL_FAN_IN: usize = 4;

impl Spill {
    /// Writes `records` (sorted) as a new segment of the folder.
    fn write(
        &mut self,
        records: impl Iterator<Item = std::result::Result<IndexRecord, IndexError>>,
    ) -> std::result::Result<Segment, IndexError> {
        let name = crate::store::chunk_index::segment::segment_name(self.written);
        self.written += 1;
        let mut w = SegmentWriter::scratch(self.dir.path(), &name, 0)?;
        for r in records {
            w.push(&r?)?;
        }
        Segment::open(&w.finish()?)
    }

    /// While the newest [`SPILL_FAN_IN`] segments share a level, merges
    /// them into one of the next level (a chunk in two of them keeps the
    /// older location, as lookups find it).
    fn merge_full_levels(&mut self) -> std::result::Result<(), IndexError> {
        loop {
            let n = self.segments.len();
            if n < SPILL_FAN_IN {
                return Ok(());
            }
            let level = self.segments[n - 1].0;
            let tail = &self.segments[n - SPILL_FAN_IN..];
            if tail.iter().any(|(l, _)| *l != level) {
                return Ok(());
            }
            let sources = tail
                .iter()
                .map(|(_, seg)| seg.iter())
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let segment = self.write(merge_oldest_first(sources))?;
            for (_, old) in self.segments.drain(n - SPILL_FAN_IN..) {
                let path = old.path().to_path_buf();
                drop(old);
                std::fs::remove_file(&path).map_err(IndexError::io("remove", &path))?;
            }
            self.segments.push((level + 1, segment));
        }
    }
}

/// The k-way merge of sorted segments, one record per id: of an id in
/// several, the earliest source's (the one a lookup finds first).
fn merge_oldest_first<I>(
    sources: Vec<I>,
) -> impl Iterator<Item = std::result::Result<IndexRecord, IndexError>>
where
    I: Iterator<Item = std::result::Result<IndexRecord, IndexError>>,
{
    let mut heads: Vec<std::iter::Peekable<I>> =
        sources.into_iter().map(Iterator::peekable).collect();
    std::iter::from_fn(move || {
        let mut best: Option<(usize, Id)> = None;
        for (i, h) in heads.iter_mut().enumerate() {
            match h.peek() {
                Some(Err(_)) => return h.next(),
                Some(Ok(r)) if best.is_none_or(|(_, id)| r.id < id) => best = Some((i, r.id)),
                _ => {}
            }
        }
        let (i, id) = best?;
        let first = heads[i].next();
        for h in heads.iter_mut() {
            while matches!(h.peek(), Some(Ok(r)) if r.id == id) {
                h.next();
            }
        }
        first
    })
}

#[derive(Default)]
pub struct ChunkIndex {
    /// The live packs, numbered densely: those of the cache, then those
    /// added this run (from `first_added`).
    packs: Vec<PackInfo>,
    /// Pack table row of the cache -> number in `packs`.
    rows: Vec<u32>,
    view: Option<IndexView>,
    first_added: u32,
    /// Chunks of packs added this run, not yet spilled.
    pending: IdMap<Location>,
    spill: Option<Spill>,
    /// A spill failed: later chunks stay in RAM, no spill is tried again.
    spill_failed: bool,
    /// Where the spill folder goes (the cache folder, else the temp dir).
    spill_parent: Option<PathBuf>,
    /// The cache folder the view is of, where added packs are published.
    cache: Option<IndexCache>,
    pub damaged: Vec<DamagedPack>,
    /// Packs this index's refresh found gone or changed that the cache
    /// had as live, other than those this host deleted (gc): data may have
    /// been lost (or a gc ran on another host).
    pub packs_lost: usize,
    /// This host's mark of packs found lost (a time and a token), by this
    /// refresh or an earlier one: while it stands, the store's summaries
    /// do not vouch for its chunks. Only a verify of the whole store here
    /// that started with this mark and passed clears it.
    pub losses_seen: Option<String>,
}

/// `rows` entry of a pack that is gone.
const NO_PACK: u32 = u32::MAX;

impl ChunkIndex {
    /// An empty index held in RAM (spilled to the temp dir when large):
    /// writers' scratch indexes and tests.
    pub fn new() -> ChunkIndex {
        ChunkIndex::default()
    }

    /// The index of `view`, a view of `cache`; packs added later are
    /// published there.
    pub(crate) fn over_view(
        view: IndexView,
        damaged: Vec<DamagedPack>,
        cache: IndexCache,
    ) -> ChunkIndex {
        let mut packs = Vec::new();
        let mut rows = Vec::with_capacity(view.packs().rows.len());
        for r in &view.packs().rows {
            if r.gone {
                rows.push(NO_PACK);
                continue;
            }
            rows.push(packs.len() as u32);
            packs.push(PackInfo {
                id: r.id,
                size: r.size,
            });
        }
        ChunkIndex {
            first_added: packs.len() as u32,
            packs,
            rows,
            view: Some(view),
            pending: IdMap::default(),
            spill: None,
            spill_failed: false,
            spill_parent: Some(cache.dir().to_path_buf()),
            cache: Some(cache),
            damaged,
            packs_lost: 0,
            losses_seen: None,
        }
    }

    /// Adds a pack and its chunks (a writer's new pack). A chunk present
    /// in two packs keeps its first location (either copy is valid).
    pub fn add_pack(&mut self, id: Id, size: u64, layout: &PackLayout) -> u32 {
        let pack = self.packs.len() as u32;
        self.packs.push(PackInfo { id, size });
        if self.pending.capacity() == 0 {
            // Sized once: growing by doubling holds both tables at once.
            self.pending.reserve(PENDING_CAP);
        }
        for (id, loc) in layout_locations(layout, pack) {
            // Spilled at the cap, so the map never doubles.
            if self.pending.len() >= PENDING_CAP && !self.spill_failed {
                if let Err(e) = self.spill_pending() {
                    // Kept in RAM instead: only memory is lost.
                    tracing::debug!("pending chunk index not spilled: {e}");
                    self.spill_failed = true;
                }
            }
            self.pending.entry(id).or_insert(loc);
        }
        pack
    }

    /// How many pending chunks the map has room for (tests: it never
    /// grows past one table of [`PENDING_CAP`]).
    #[cfg(test)]
    pub(crate) fn pending_room(&self) -> usize {
        self.pending.capacity()
    }

    /// Writes the pending chunks to a private segment, sorted.
    fn spill_pending(&mut self) -> std::result::Result<(), IndexError> {
        let spill = match &mut self.spill {
            Some(s) => s,
            None => {
                // Old-form folders are atosnap's only in its own cache:
                // a shared temp dir may hold anyone's `pending-XXXXXX`.
                let (parent, old_form_too) = match &self.spill_parent {
                    Some(cache) => (cache.clone(), true),
                    None => (std::env::temp_dir(), false),
                };
                sweep_stale_spills(&parent, old_form_too);
                let owner = crate::os::TempOwner::current().prefix();
                let dir = tempfile::Builder::new()
                    .prefix(&format!("{SPILL_PREFIX}{owner}"))
                    .tempdir_in(&parent)
                    .map_err(IndexError::io("create", &parent))?;
                self.spill.insert(Spill {
                    dir,
                    segments: Vec::new(),
                    written: 0,
                })
            }
        };
        let mut records: Vec<IndexRecord> = self
            .pending
            .iter()
            .map(|(id, loc)| loc.record(*id, loc.pack))
            .collect();
        records.sort_unstable_by_key(IndexRecord::key);
        let segment = spill.write(records.iter().map(|r| Ok(*r)))?;
        drop(records);
        spill.segments.push((0, segment));
        // Emptied, its table kept for the next chunks.
        self.pending.clear();
        spill.merge_full_levels()
    }

    /// Where `id` is. An error is a cache file that could not be read
    /// (named in it); it was whole when the command opened it.
    pub fn get(&self, id: &Id) -> Result<Option<Location>> {
        Ok(self.lookup(id)?)
    }

    /// Where `id` is, with the cache's own error (`Store::read_chunk`
    /// makes it a chunk fault).
    pub(crate) fn lookup(&self, id: &Id) -> std::result::Result<Option<Location>, IndexError> {
        if let Some(view) = &self.view {
            if let Some(r) = view.get(id)? {
                if let Some(&pack) = self.rows.get(r.pack as usize) {
                    return Ok(Some(Location::from_record(&r, pack)));
                }
            }
        }
        if let Some(spill) = &self.spill {
            let mut found = Vec::new();
            for (_, seg) in &spill.segments {
                seg.find(id, &mut found)?;
                if let Some(r) = found.first() {
                    return Ok(Some(Location::from_record(r, r.pack)));
                }
            }
        }
        Ok(self.pending.get(id).copied())
    }

    pub fn contains(&self, id: &Id) -> Result<bool> {
        Ok(self.get(id)?.is_some())
    }

    pub fn pack(&self, n: u32) -> &PackInfo {
        &self.packs[n as usize]
    }

    pub fn packs(&self) -> &[PackInfo] {
        &self.packs
    }

    /// Distinct chunks (one streaming pass over the cache).
    pub fn chunk_count(&self) -> Result<usize> {
        let mut n = 0;
        for item in self.iter()? {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// Every chunk once with the location `get` gives, sorted by id: a
    /// k-way merge of the segments and the pending chunks, holding one
    /// record per segment.
    pub fn iter(&self) -> Result<ChunkIter<'_>> {
        let mut sources: Vec<Source<'_>> = Vec::new();
        if let Some(view) = &self.view {
            for seg in view.segments() {
                let rows = &self.rows;
                sources.push(Box::new(seg.iter()?.filter_map(move |r| match r {
                    Ok(r) => match rows.get(r.pack as usize) {
                        Some(&p) if p != NO_PACK => Some(Ok((r.id, Location::from_record(&r, p)))),
                        _ => None,
                    },
                    Err(e) => Some(Err(e.into())),
                })));
            }
        }
        if let Some(spill) = &self.spill {
            for (_, seg) in &spill.segments {
                sources.push(Box::new(seg.iter()?.map(|r| {
                    r.map(|r| (r.id, Location::from_record(&r, r.pack)))
                        .map_err(Into::into)
                })));
            }
        }
        let mut pending: Vec<(Id, Location)> = self.pending.iter().map(|(i, l)| (*i, *l)).collect();
        pending.sort_unstable_by_key(|p| p.0);
        sources.push(Box::new(pending.into_iter().map(Ok)));
        ChunkIter::new(sources)
    }

    /// The chunks whose location is in pack `p` (one streaming pass).
    pub fn ids_in_pack(&self, p: u32) -> Result<Vec<Id>> {
        let mut ids = Vec::new();
        for item in self.iter()? {
            let (id, loc) = item?;
            if loc.pack == p {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    pub fn total_pack_bytes(&self) -> u64 {
        self.packs.iter().map(|p| p.size).sum()
    }

    /// Records of the packs added this run, naming them by their place in
    /// the added packs, sorted by id, each id once (the spilled segments
    /// and the pending chunks merged; of an id in several, the location a
    /// lookup finds first).
    fn added_records(
        &self,
    ) -> std::result::Result<
        impl Iterator<Item = std::result::Result<IndexRecord, IndexError>> + '_,
        IndexError,
    > {
        let first = self.first_added;
        let rebase = move |r: IndexRecord| IndexRecord {
            pack: r.pack - first,
            ..r
        };
        let mut sources: Vec<RecordSource<'_>> = Vec::new();
        if let Some(spill) = &self.spill {
            for (_, seg) in &spill.segments {
                sources.push(Box::new(seg.iter()?.map(move |r| r.map(rebase))));
            }
        }
        let mut pending: Vec<IndexRecord> = (self.pending.iter())
            .map(|(id, loc)| rebase(loc.record(*id, loc.pack)))
            .collect();
        pending.sort_unstable_by_key(IndexRecord::key);
        sources.push(Box::new(pending.into_iter().map(Ok)));
        Ok(merge_oldest_first(sources))
    }

    /// Hands the packs added this run to the cache (best effort: a cache
    /// that misses them reads their trailers at the next refresh).
    fn publish(&mut self) {
        let Some(cache) = &self.cache else {
            return;
        };
        if self.packs.len() as u32 == self.first_added {
            return;
        }
        let packs: Vec<PackRow> = self.packs[self.first_added as usize..]
            .iter()
            .map(|p| PackRow {
                id: p.id,
                size: p.size,
                format: 2,
                gone: false,
            })
            .collect();
        let done = self
            .added_records()
            .and_then(|records| cache.publish(&packs, records));
        if let Err(e) = done {
            tracing::debug!("added packs not published to the index cache: {e}");
        }
    }
}

impl Drop for ChunkIndex {
    fn drop(&mut self) {
        self.publish();
    }
}

/// A sorted stream of (id, location) that [`ChunkIter`] merges.
type Source<'a> = Box<dyn Iterator<Item = Result<(Id, Location)>> + 'a>;
/// A stream of cache records of the packs added this run.
type RecordSource<'a> = Box<dyn Iterator<Item = std::result::Result<IndexRecord, IndexError>> + 'a>;

/// [`ChunkIndex::iter`]: sources merged by id; for an id in several, the
/// first source's location wins (the order `get` looks in).
pub struct ChunkIter<'a> {
    sources: Vec<Source<'a>>,
    /// (id, source) of each source's current item; its location is in
    /// `locs[source]`.
    heap: BinaryHeap<std::cmp::Reverse<(Id, usize)>>,
    locs: Vec<Option<Location>>,
    last: Option<Id>,
}

impl<'a> ChunkIter<'a> {
    fn new(sources: Vec<Source<'a>>) -> Result<ChunkIter<'a>> {
        let mut it = ChunkIter {
            locs: vec![None; sources.len()],
            sources,
            heap: BinaryHeap::new(),
            last: None,
        };
        for s in 0..it.sources.len() {
            it.advance(s)?;
        }
        Ok(it)
    }

    fn advance(&mut self, s: usize) -> Result<()> {
        if let Some(item) = self.sources[s].next() {
            let (id, loc) = item?;
            self.locs[s] = Some(loc);
            self.heap.push(std::cmp::Reverse((id, s)));
        }
        Ok(())
    }
}

impl Iterator for ChunkIter<'_> {
    type Item = Result<(Id, Location)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let std::cmp::Reverse((id, s)) = self.heap.pop()?;
            let loc = self.locs[s].take()?;
            if let Err(e) = self.advance(s) {
                return Some(Err(e));
            }
            if self.last == Some(id) {
                continue;
            }
            self.last = Some(id);
            return Some(Ok((id, loc)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::pack::PackEntry;

    fn layout(n: usize, salt: u8) -> PackLayout {
        let entries = (0..n)
            .map(|i| PackEntry {
                id: Id::hash(&[&(i as u64).to_le_bytes()[..], &[salt]].concat()),
                offset: i as u32 * 8,
                stored_len: 8,
                raw_len: 8,
                compressed: false,
            })
            .collect();
        PackLayout::from_v1(entries, n as u64 * 8)
    }

    /// The level of each spilled segment, oldest first.
    fn spill_levels(index: &ChunkIndex) -> Vec<u32> {
        let spill = index.spill.as_ref().expect("spilled");
        spill.segments.iter().map(|(l, _)| *l).collect()
    }

    #[test]
    fn a_spill_that_cannot_be_written_keeps_chunks_in_ram_and_is_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, b"x").unwrap();
        let mut index = ChunkIndex::new();
        index.spill_parent = Some(not_a_dir);
        let big = layout(PENDING_CAP + 10, 0);
        index.add_pack(Id::hash(b"pack"), 1, &big);
        assert!(index.spill_failed);
        assert!(index.spill.is_none());
        for c in big.chunks.iter().step_by(101) {
            assert!(index.lookup(&c.id).unwrap().is_some(), "{}", c.id);
        }
    }

    #[test]
    fn spilled_segments_merge_by_level_and_a_chunk_keeps_its_older_pack() {
        let mut index = ChunkIndex::new();
        // One spill's worth, twice under the same ids (packs 0 and 1),
        // then two more: four level-0 segments merge into one.
        let twice = layout(PENDING_CAP, 3);
        let a = index.add_pack(Id::hash(b"a"), 1, &twice);
        let b = index.add_pack(Id::hash(b"b"), 1, &twice);
        assert_ne!(a, b);
        let more = layout(2 * PENDING_CAP + 1, 4);
        index.add_pack(Id::hash(b"c"), 1, &more);
        let levels = spill_levels(&index);
        assert_eq!(levels, [1]);
        for c in twice.chunks.iter().step_by(97) {
            assert_eq!(index.lookup(&c.id).unwrap().map(|l| l.pack), Some(a));
        }
        for c in more.chunks.iter().step_by(97) {
            assert!(index.lookup(&c.id).unwrap().is_some());
        }
        // Nine spills: 4 -> 1, 4 -> 1, and one left at level 0.
        let mut nine = ChunkIndex::new();
        let big = layout(9 * PENDING_CAP + 1, 5);
        nine.add_pack(Id::hash(b"d"), 1, &big);
        let levels = spill_levels(&nine);
        assert_eq!(levels, [1, 1, 0]);
        let files = std::fs::read_dir(nine.spill.as_ref().unwrap().dir.path())
            .unwrap()
            .count();
        assert_eq!(files, 3, "merged segments are removed");
        let walked: Vec<Id> = nine.iter().unwrap().map(|r| r.unwrap().0).collect();
        let mut want: Vec<Id> = big.chunks.iter().map(|c| c.id).collect();
        want.sort();
        assert_eq!(walked, want, "each chunk once, sorted");
    }

    #[test]
    fn a_killed_writers_spill_folder_is_swept_by_the_next_spill() {
        let cache = tempfile::tempdir().unwrap();
        let me = crate::os::TempOwner::current().clone();
        // pid 4194304 is above Linux's pid_max: never a live process.
        let dead = crate::os::TempOwner {
            pid: 4_194_304,
            ..me.clone()
        };
        let folder = |owner: &crate::os::TempOwner| {
            let dir = cache
                .path()
                .join(format!("{SPILL_PREFIX}{}abc123", owner.prefix()));
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("segment"), b"records").unwrap();
            dir
        };
        let killed = folder(&dead);
        let running = folder(&me);
        let other_host = folder(&crate::os::TempOwner {
            host: "elsewhere".into(),
            ..dead.clone()
        });
        // A folder of the old form names no writer: swept only once
        // untouched for a week.
        let old_form = cache.path().join("pending-Xy12Ab");
        std::fs::create_dir(&old_form).unwrap();
        let mut index = ChunkIndex::new();
        index.spill_parent = Some(cache.path().to_path_buf());
        index.add_pack(Id::hash(b"pack"), 1, &layout(PENDING_CAP + 1, 6));
        assert!(!killed.exists(), "the killed writer's folder stays");
        assert!(running.exists() && other_host.exists() && old_form.exists());
        let own = index.spill.as_ref().unwrap().dir.path().to_path_buf();
        let name = own.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(&format!("{SPILL_PREFIX}{}", me.prefix())),
            "{name}"
        );
        drop(index);
        assert!(!own.exists());
    }

    #[test]
    fn an_old_form_spill_folder_goes_once_untouched_for_long_enough() {
        let cache = tempfile::tempdir().unwrap();
        let old_form = cache.path().join("pending-Xy12Ab");
        std::fs::create_dir(&old_form).unwrap();
        std::fs::write(old_form.join("segment"), b"records").unwrap();
        // Not the old form: a longer name, or one with other characters.
        let other = cache.path().join("pending-Xy12Ab7");
        let odd = cache.path().join("pending-Xy-2Ab");
        for dir in [&other, &odd] {
            std::fs::create_dir(dir).unwrap();
        }
        let hour = std::time::Duration::from_secs(3600);
        sweep_spills_older_than(cache.path(), Some(hour));
        assert!(old_form.exists(), "touched a moment ago");
        // A shared temp dir's `pending-XXXXXX` may be anyone's.
        sweep_spills_older_than(cache.path(), None);
        assert!(old_form.exists(), "not in atosnap's own cache");
        sweep_spills_older_than(cache.path(), Some(std::time::Duration::ZERO));
        assert!(!old_form.exists(), "quiet long enough");
        assert!(other.exists() && odd.exists(), "never the old form");
    }

    #[test]
    fn one_pack_of_more_chunks_than_the_cap_is_spilled_as_it_is_added() {
        let mut index = ChunkIndex::new();
        let big = layout(2 * PENDING_CAP + 3, 1);
        index.add_pack(Id::hash(b"pack"), 1, &big);
        assert!(index.pending_room() <= PENDING_CAP);
        assert_eq!(index.spill.as_ref().map(|s| s.segments.len()), Some(2));
        for c in big.chunks.iter().step_by(101) {
            assert!(index.lookup(&c.id).unwrap().is_some(), "{}", c.id);
        }
    }
}
