//! One segment file `seg-<u64 hex>.idx` (§1.5): write-once, records sorted
//! by (id, pack row), a dense table of their 4-byte id prefixes, and a
//! blake3 trailer over everything before it.
//!
//! ```text
//! 0       8    "ATOIDXS1"
//! 8       8    n u64 LE (records)
//! 16      4    first pack row this segment may name, u32 LE
//! 20      4    reserved (zero)
//! 24      4n   prefix table: id[0..4] of each record, u32 BE
//! 24+4n   60n  records (IndexRecord), sorted by id, ties by pack row
//! 24+64n  32   blake3 of bytes [0, 24+64n)
//! ```
//!
//! Reading holds no record in RAM: lookups are positioned reads
//! (`FileExt::read_exact_at`, no mmap and so no `unsafe`). A segment holds
//! its path, its handle and a few counters; after [`LAZY_PREFIX_AFTER`]
//! lookups it loads its prefix table, 4 bytes per record, so that a miss
//! then costs no read at all.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use super::{id_prefix, IndexError, IndexRecord, TempFile, RECORD_LEN};
use crate::id::Id;
use crate::store::backend;

pub const MAGIC: &[u8; 8] = b"ATOIDXS1";
pub const HEADER_LEN: u64 = 24;
pub const TRAILER_LEN: u64 = 32;
/// Lookups served by binary search on disk before the prefix table is
/// loaded (a no-change `create` makes about 30 and never loads it).
pub const LAZY_PREFIX_AFTER: u64 = 1000;
/// Buffer of every sequential pass over a segment or a temp file.
pub const IO_BUF: usize = 64 * 1024;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64)
}

/// `seg-<seq as 16 hex digits>.idx`.
pub fn segment_name(seq: u64) -> String {
    format!("seg-{seq:016x}.idx")
}

/// The sequence number of a segment file name, `None` for other names.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("seg-")?.strip_suffix(".idx")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Total length of a segment of `n` records, `None` if it overflows.
fn segment_len(n: u64) -> Option<u64> {
    n.checked_mul(4 + RECORD_LEN as u64)?
        .checked_add(HEADER_LEN + TRAILER_LEN)
}

fn header(n: u64, first_row: u32) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&n.to_le_bytes());
    h[16..20].copy_from_slice(&first_row.to_le_bytes());
    h
}

/// Writes one segment from records given in order. Records go to a temp
/// file as they come (memory stays O(1) whatever their number); `finish`
/// then writes the real file (header, prefixes, records, hash) to a second
/// temp, fsyncs it and renames it into place.
pub struct SegmentWriter {
    dir: PathBuf,
    path: PathBuf,
    records_tmp: TempFile,
    out: BufWriter<File>,
    first_row: u32,
    n: u64,
    last: Option<(Id, u32)>,
    /// fsynced (file and folder) once written: false for a writer's
    /// private scratch segments ([`SegmentWriter::scratch`]).
    durable: bool,
}

impl SegmentWriter {
    /// A writer of `dir/name` whose records all name pack rows
    /// `>= first_row`.
    pub fn create(dir: &Path, name: &str, first_row: u32) -> Result<SegmentWriter, IndexError> {
        let records_tmp = TempFile {
            path: backend::temp_path_in(dir, "segrec"),
        };
        let file = backend::create_private_file(&records_tmp.path)
            .map_err(IndexError::io("create", &records_tmp.path))?;
        Ok(SegmentWriter {
            dir: dir.to_path_buf(),
            path: dir.join(name),
            records_tmp,
            out: BufWriter::with_capacity(IO_BUF, file),
            first_row,
            n: 0,
            last: None,
            durable: true,
        })
    }

    /// A writer of a segment only this process reads, in a private folder
    /// removed when it ends (a writer's spilled pending chunks): nothing
    /// is fsynced, since after a crash nothing reads it again. Each fsync
    /// stalled `create`'s writer thread (about ten spills and merges on a
    /// first snapshot of 216,000 chunks).
    pub fn scratch(dir: &Path, name: &str, first_row: u32) -> Result<SegmentWriter, IndexError> {
        Ok(SegmentWriter {
            durable: false,
            ..SegmentWriter::create(dir, name, first_row)?
        })
    }

    /// Appends a record; it must sort strictly after the previous one and
    /// name a row `>= first_row` (a caller's bug otherwise, refused so that
    /// no unsorted file is ever published).
    pub fn push(&mut self, r: &IndexRecord) -> Result<(), IndexError> {
        if self.last.is_some_and(|k| k >= r.key()) || r.pack < self.first_row {
            return Err(IndexError::damaged(
                &self.path,
                format!("record {} written out of order", self.n),
            ));
        }
        let mut b = [0u8; RECORD_LEN];
        r.encode(&mut b);
        self.out
            .write_all(&b)
            .map_err(IndexError::io("write", &self.records_tmp.path))?;
        self.last = Some(r.key());
        self.n += 1;
        Ok(())
    }

    /// Publishes the segment; returns its path. The records temp is
    /// removed whatever happens (dropped with `self`).
    pub fn finish(self) -> Result<PathBuf, IndexError> {
        let rec_path = &self.records_tmp.path;
        // Flushed and closed, then read back through a read handle (the
        // private file is created write-only).
        self.out
            .into_inner()
            .map_err(|e| IndexError::io("write", rec_path)(e.into_error()))?;
        let rec_file = File::open(rec_path).map_err(IndexError::io("open", rec_path))?;
        let tmp = backend::temp_path_in(&self.dir, "seg");
        let durable = self.durable;
        let written = write_final(&tmp, rec_file, rec_path, (self.n, self.first_row), durable)
            .and_then(|()| fs::rename(&tmp, &self.path).map_err(IndexError::io("rename", &tmp)))
            .and_then(|()| match durable {
                true => backend::sync_dir(&self.dir).map_err(IndexError::io("sync", &self.dir)),
                false => Ok(()),
            });
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map(|()| self.path)
    }
}

/// Header, then the prefixes (one pass over the records temp), then the
/// records (a second pass), then the hash; fsynced when `durable`. Both
/// passes read the temp in blocks of records, and the hash is fed what
/// the buffer flushes: a first snapshot writes about ten segments of up to
/// 270,000 records, and a read and a hash update per record cost more than
/// the writing.
fn write_final(
    tmp: &Path,
    mut records: File,
    rec_path: &Path,
    (n, first_row): (u64, u32),
    durable: bool,
) -> Result<(), IndexError> {
    const BLOCK: usize = 1024;
    let file = backend::create_private_file(tmp).map_err(IndexError::io("create", tmp))?;
    let mut out = BufWriter::with_capacity(
        IO_BUF,
        HashingWriter {
            inner: file,
            hasher: blake3::Hasher::new(),
        },
    );
    let werr = IndexError::io;
    out.write_all(&header(n, first_row))
        .map_err(werr("write", tmp))?;
    let mut block = vec![0u8; BLOCK * RECORD_LEN];
    let mut prefixes = Vec::with_capacity(BLOCK * 4);
    for pass in 0..2 {
        records
            .seek(SeekFrom::Start(0))
            .map_err(werr("read", rec_path))?;
        let mut input = BufReader::with_capacity(IO_BUF, &mut records);
        let mut left = n;
        while left > 0 {
            let k = left.min(BLOCK as u64) as usize;
            let bytes = &mut block[..k * RECORD_LEN];
            input.read_exact(bytes).map_err(werr("read", rec_path))?;
            if pass == 0 {
                prefixes.clear();
                prefixes.extend(bytes.chunks_exact(RECORD_LEN).flat_map(|r| &r[..4]));
                out.write_all(&prefixes).map_err(werr("write", tmp))?;
            } else {
                out.write_all(bytes).map_err(werr("write", tmp))?;
            }
            left -= k as u64;
        }
    }
    let HashingWriter {
        inner: mut file,
        hasher,
    } = out
        .into_inner()
        .map_err(|e| werr("write", tmp)(e.into_error()))?;
    file.write_all(hasher.finalize().as_bytes())
        .map_err(werr("write", tmp))?;
    if !durable {
        return Ok(());
    }
    file.sync_all().map_err(werr("sync", tmp))
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.hasher.update(&buf[..k]);
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A segment file that passed [`Segment::open`]'s whole-file check: its
/// length, mtime and inode then, the highest pack row it names, and when
/// the check ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    pub len: u64,
    pub mtime_ns: i64,
    pub ino: u64,
    pub max_row: Option<u32>,
    pub checked_ns: i64,
}

/// A check is trusted only when it ran this long after the file's mtime:
/// mtimes are coarse (a few ms), so a file rewritten in the same tick as
/// it was checked would keep its identity.
const SETTLED_NS: i64 = 2_000_000_000;

impl Verified {
    /// Whether this check vouches for a file with `now`'s identity.
    fn vouches_for(&self, now: &Verified) -> bool {
        (self.len, self.mtime_ns, self.ino) == (now.len, now.mtime_ns, now.ino)
            && self.checked_ns - self.mtime_ns >= SETTLED_NS
    }

    /// One line of the `verified` file:
    /// `name len mtime_ns ino max_row|- checked_ns`.
    pub fn line(&self, name: &str) -> String {
        let row = self.max_row.map_or("-".to_string(), |r| r.to_string());
        let (len, mtime, ino, at) = (self.len, self.mtime_ns, self.ino, self.checked_ns);
        format!("{name} {len} {mtime} {ino} {row} {at}\n")
    }

    /// A line of the `verified` file; None when it does not parse.
    pub fn parse(line: &str) -> Option<(String, Verified)> {
        let mut w = line.split(' ');
        let name = w.next()?.to_string();
        let len = w.next()?.parse().ok()?;
        let mtime_ns = w.next()?.parse().ok()?;
        let ino = w.next()?.parse().ok()?;
        let max_row = match w.next()? {
            "-" => None,
            r => Some(r.parse().ok()?),
        };
        let checked_ns = w.next()?.parse().ok()?;
        w.next().is_none().then_some((
            name,
            Verified {
                len,
                mtime_ns,
                ino,
                max_row,
                checked_ns,
            },
        ))
    }
}

/// An open, verified segment.
#[derive(Debug)]
pub struct Segment {
    path: PathBuf,
    file: File,
    n: u64,
    first_row: u32,
    max_row: Option<u32>,
    lookups: AtomicU64,
    prefixes: OnceLock<Prefixes>,
}

/// A segment's prefix table in RAM, with where each value of its top
/// bits starts (so a lookup searches a few entries, not the whole table).
#[derive(Debug)]
struct Prefixes {
    table: Vec<u32>,
    /// How far a prefix is shifted to give its bucket: the top
    /// `32 - shift` bits, about one bucket per 4 entries (8 to 16 bits).
    shift: u32,
    /// `starts[b]`: the first entry whose bucket is `>= b` (at most 65,537
    /// entries, 256 KiB; a spilled segment of 28,672 records has 8,193).
    starts: Vec<u32>,
}

impl Prefixes {
    fn new(table: Vec<u32>) -> Prefixes {
        let bits = (usize::BITS - table.len().leading_zeros()).saturating_sub(2);
        let shift = 32 - bits.clamp(8, 16);
        let buckets = 1u32 << (32 - shift);
        let mut starts = Vec::with_capacity(buckets as usize + 1);
        let mut i = 0usize;
        for b in 0..=buckets {
            while i < table.len() && (table[i] >> shift) < b {
                i += 1;
            }
            starts.push(i as u32);
        }
        Prefixes {
            table,
            shift,
            starts,
        }
    }

    /// The entries whose prefix is `want`.
    fn range(&self, want: u32) -> (u64, u64) {
        let b = (want >> self.shift) as usize;
        let (lo, hi) = (self.starts[b] as usize, self.starts[b + 1] as usize);
        let part = &self.table[lo..hi];
        let first = part.partition_point(|&x| x < want);
        let len = part[first..].partition_point(|&x| x == want);
        ((lo + first) as u64, (lo + first + len) as u64)
    }
}

impl Segment {
    /// Opens `path` and checks it whole in one sequential pass with O(1)
    /// memory: magic, length, blake3, records in strict order, rows at or
    /// above the header's first row, and the prefix table equal to the
    /// records' prefixes. It reads the file once (about 20 ms per 80 MB);
    /// a view opens each segment once per process.
    pub fn open(path: &Path) -> Result<Segment, IndexError> {
        Segment::open_known(path, None).map(|(seg, _)| seg)
    }

    /// [`Segment::open`], except that the whole-file pass is skipped when
    /// `known` says this very file (length, mtime, inode) passed it at least
    /// 2 s after it was last written; the header and length are checked
    /// still. Returns what a later open
    /// may be given. Why: the pass reads and hashes every record, so each
    /// command paid for it in proportion to the store (70 ms of an 85 ms
    /// no-change snapshot of a 10 GB runtime). Segments are written once,
    /// privately, fsynced before they are renamed into place: one that
    /// passed stays good unless something rewrites it behind our back
    /// and puts its mtime back. `verify` rebuilds its index from the packs
    /// and never relies on this.
    pub fn open_known(
        path: &Path,
        known: Option<&Verified>,
    ) -> Result<(Segment, Verified), IndexError> {
        let file = File::open(path).map_err(IndexError::io("open", path))?;
        let meta = file.metadata().map_err(IndexError::io("stat", path))?;
        let len = meta.len();
        let mut h = [0u8; HEADER_LEN as usize];
        if len < HEADER_LEN + TRAILER_LEN {
            return Err(IndexError::damaged(path, format!("{len} bytes, too short")));
        }
        file.read_exact_at(&mut h, 0)
            .map_err(IndexError::io("read", path))?;
        if &h[..8] != MAGIC {
            return Err(IndexError::damaged(path, "not a segment (bad magic)"));
        }
        if h[20..24] != [0; 4] {
            return Err(IndexError::damaged(
                path,
                "reserved header bytes are not zero",
            ));
        }
        let n = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
        let first_row = u32::from_le_bytes(h[16..20].try_into().unwrap_or_default());
        if segment_len(n) != Some(len) {
            return Err(IndexError::damaged(
                path,
                format!("{len} bytes but the header says {n} records"),
            ));
        }
        use std::os::unix::fs::MetadataExt;
        let now = Verified {
            len,
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ino: meta.ino(),
            max_row: None,
            checked_ns: now_ns(),
        };
        let passed = match known {
            Some(k) if k.vouches_for(&now) => *k,
            _ => Verified {
                max_row: verify(&file, path, n, first_row)?,
                ..now
            },
        };
        let max_row = passed.max_row;
        let segment = Segment {
            path: path.to_path_buf(),
            file,
            n,
            first_row,
            max_row,
            lookups: AtomicU64::new(0),
            prefixes: OnceLock::new(),
        };
        Ok((segment, passed))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn first_row(&self) -> u32 {
        self.first_row
    }

    /// The highest pack row any record names (`None` if empty).
    pub fn max_row(&self) -> Option<u32> {
        self.max_row
    }

    /// Whether the prefix table is in RAM (4 bytes per record).
    pub fn prefixes_loaded(&self) -> bool {
        self.prefixes.get().is_some()
    }

    fn records_at(&self) -> u64 {
        HEADER_LEN + 4 * self.n
    }

    /// Record `i` (< n), by one positioned read.
    fn record(&self, i: u64) -> Result<IndexRecord, IndexError> {
        let mut b = [0u8; RECORD_LEN];
        self.file
            .read_exact_at(&mut b, self.records_at() + i * RECORD_LEN as u64)
            .map_err(IndexError::io("read", &self.path))?;
        Ok(IndexRecord::decode(&b))
    }

    /// Appends to `out` every record of `id` (one per pack that holds it,
    /// by pack row), reading only those records once the prefix table is
    /// loaded and about log2(n) records before.
    pub fn find(&self, id: &Id, out: &mut Vec<IndexRecord>) -> Result<(), IndexError> {
        let (mut i, end) = match self.prefix_table()? {
            // Records sharing the prefix are contiguous; only they can
            // match, and a miss among them reads nothing else.
            Some(p) => p.range(id_prefix(id)),
            None => (self.lower_bound(id)?, self.n),
        };
        while i < end {
            let r = self.record(i)?;
            i += 1;
            match r.id.cmp(id) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => out.push(r),
                std::cmp::Ordering::Greater => break,
            }
        }
        Ok(())
    }

    /// The first record index whose id is `>= id`, by binary search on disk.
    fn lower_bound(&self, id: &Id) -> Result<u64, IndexError> {
        let (mut lo, mut hi) = (0u64, self.n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.record(mid)?.id < *id {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The prefix table once this segment has served enough lookups.
    fn prefix_table(&self) -> Result<Option<&Prefixes>, IndexError> {
        if let Some(p) = self.prefixes.get() {
            return Ok(Some(p));
        }
        if self.lookups.fetch_add(1, Ordering::Relaxed) < LAZY_PREFIX_AFTER {
            return Ok(None);
        }
        // Read in 64 KiB pieces straight into the table: 4 bytes per
        // record and no second copy of it.
        let mut table = Vec::with_capacity(self.n as usize);
        let mut raw = vec![0u8; IO_BUF];
        let mut at = HEADER_LEN;
        let end = self.records_at();
        while at < end {
            let piece = &mut raw[..(end - at).min(IO_BUF as u64) as usize];
            self.file
                .read_exact_at(piece, at)
                .map_err(IndexError::io("read", &self.path))?;
            let words = piece.chunks_exact(4);
            table.extend(words.map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])));
            at += piece.len() as u64;
        }
        Ok(Some(self.prefixes.get_or_init(|| Prefixes::new(table))))
    }

    /// Every record in order, through one 64 KiB buffer (for merges).
    pub fn iter(&self) -> Result<SegmentIter, IndexError> {
        let mut file = self
            .file
            .try_clone()
            .map_err(IndexError::io("open", &self.path))?;
        file.seek(SeekFrom::Start(self.records_at()))
            .map_err(IndexError::io("read", &self.path))?;
        Ok(SegmentIter {
            input: BufReader::with_capacity(IO_BUF, file),
            path: self.path.clone(),
            left: self.n,
        })
    }
}

/// The records of a segment in order (see [`Segment::iter`]).
pub struct SegmentIter {
    input: BufReader<File>,
    path: PathBuf,
    left: u64,
}

impl Iterator for SegmentIter {
    type Item = Result<IndexRecord, IndexError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut b = [0u8; RECORD_LEN];
        Some(match self.input.read_exact(&mut b) {
            Ok(()) => Ok(IndexRecord::decode(&b)),
            Err(e) => Err(IndexError::io("read", &self.path)(e)),
        })
    }
}

/// The one pass of [`Segment::open`]; returns the highest row named. The
/// prefix table is compared with the records through a second hash of each
/// (so the pass needs no second cursor and no table in RAM). The hashes
/// are fed whole buffers (blake3 is slow on small updates): records are
/// read 1,024 at a time and their prefixes gathered for the second hash.
fn verify(file: &File, path: &Path, n: u64, first_row: u32) -> Result<Option<u32>, IndexError> {
    /// Records read (and checked) at a time.
    const BATCH: u64 = 1024;
    let mut input = BufReader::with_capacity(IO_BUF, file);
    let mut all = blake3::Hasher::new();
    let mut table = blake3::Hasher::new();
    let mut derived = blake3::Hasher::new();
    let read = |input: &mut BufReader<&File>, b: &mut [u8]| {
        input.read_exact(b).map_err(IndexError::io("read", path))
    };
    let mut h = [0u8; HEADER_LEN as usize];
    read(&mut input, &mut h)?;
    all.update(&h);
    let mut buf = vec![0u8; IO_BUF.max(BATCH as usize * RECORD_LEN)];
    let mut left = 4 * n;
    while left > 0 {
        let piece = &mut buf[..left.min(IO_BUF as u64) as usize];
        read(&mut input, piece)?;
        all.update(piece);
        table.update(piece);
        left -= piece.len() as u64;
    }
    let (mut last, mut max_row) = (None, None);
    let mut prefixes = Vec::with_capacity(4 * BATCH as usize);
    let mut i = 0u64;
    while i < n {
        let k = (n - i).min(BATCH);
        let piece = &mut buf[..k as usize * RECORD_LEN];
        read(&mut input, piece)?;
        all.update(piece);
        prefixes.clear();
        for rec in piece.chunks_exact(RECORD_LEN) {
            prefixes.extend_from_slice(&rec[..4]);
            let mut b = [0u8; RECORD_LEN];
            b.copy_from_slice(rec);
            let r = IndexRecord::decode(&b);
            if last.is_some_and(|k| k >= r.key()) {
                return Err(IndexError::damaged(
                    path,
                    format!("record {i} is out of order"),
                ));
            }
            if r.pack < first_row {
                return Err(IndexError::damaged(
                    path,
                    format!(
                        "record {i} names pack row {} below the segment's first {first_row}",
                        r.pack
                    ),
                ));
            }
            last = Some(r.key());
            max_row = max_row.max(Some(r.pack));
            i += 1;
        }
        derived.update(&prefixes);
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    read(&mut input, &mut trailer)?;
    if all.finalize().as_bytes() != &trailer {
        return Err(IndexError::damaged(path, "blake3 trailer does not match"));
    }
    if table.finalize() != derived.finalize() {
        return Err(IndexError::damaged(
            path,
            "prefix table does not match the records",
        ));
    }
    Ok(max_row)
}
