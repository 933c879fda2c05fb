//! Chunking and chunk encoding.
//!
//! Boundaries suit the data (see `docs/FORMAT.md`): SQLite databases are cut
//! at their page size, binaries rewritten in place (the HNSW `*.bin`) in
//! fixed blocks, everything else with FastCDC. Files are streamed in
//! batches of bounded size; boundaries do not depend on the batch size.
//!
//! Encoding: zstd at the store's level, kept only when it pays (at most
//! `max_ratio_percent` of the raw size), else the raw bytes; or always the
//! raw bytes in a store made with `init --compression none`. The zstd
//! calls (one compressor per thread, set to each call's tuning) are here; which codec a
//! format-2 frame gets is [`crate::codec`]'s choice.

use std::cell::RefCell;
use std::io::{self, Read};
use std::ops::Range;

use serde::{Deserialize, Serialize};

/// How files are cut into chunks (the `chunking` part of `config.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChunkingParams {
    /// SQLite databases are cut at their page size (from the header).
    pub sqlite_page_chunks: bool,
    /// Files whose name ends with one of these suffixes are cut in fixed
    /// blocks: binaries rewritten in place (the HNSW `*.bin`).
    pub fixed_block_suffixes: Vec<String>,
    pub fixed_block_size: u32,
    /// FastCDC (2020) parameters for every other file.
    pub cdc_min_size: u32,
    pub cdc_avg_size: u32,
    pub cdc_max_size: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
/// How chunks are encoded (the `compression` part of `config.json`).
/// Only writers look at it: every chunk records whether it is compressed.
pub struct CompressionParams {
    /// `zstd`, or `none`: every chunk stored raw.
    pub algorithm: String,
    /// The zstd level (1..=22); 0 with `none`.
    pub level: i32,
    /// A chunk is stored compressed only when the compressed form is at most
    /// this percentage of the raw size; otherwise it is stored raw.
    pub max_ratio_percent: u32,
    /// Whether the operator left the choice to atosnap (`init --compression
    /// auto`, the default; absent in stores made before the flag): a later
    /// build may pick another level for new chunks. `false`: pinned by
    /// `zstd:LEVEL` or `none`. Written only when false, so a default
    /// store's config.json is the same as before the flag.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub auto: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// The zstd levels `--compression zstd:LEVEL` accepts.
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = 1..=22;

impl CompressionParams {
    /// What `auto` means in this build: zstd level 1, raw when it does not
    /// shrink a chunk to 90 % (HNSW floats compress 1.1x).
    pub fn auto() -> CompressionParams {
        CompressionParams {
            algorithm: "zstd".to_string(),
            level: 1,
            max_ratio_percent: 90,
            auto: true,
        }
    }

    /// Parses an `init --compression` value: `auto`, `none` or
    /// `zstd:LEVEL` (1..=22). The error says what is accepted.
    pub fn parse_choice(value: &str) -> Result<CompressionParams, String> {
        let pinned = |algorithm: &str, level: i32| CompressionParams {
            algorithm: algorithm.to_string(),
            level,
            auto: false,
            ..CompressionParams::auto()
        };
        let expected = "expected auto, none or zstd:LEVEL with LEVEL 1..=22";
        match value {
            "auto" => Ok(CompressionParams::auto()),
            "none" => Ok(pinned("none", 0)),
            _ => {
                let level = value
                    .strip_prefix("zstd:")
                    .ok_or_else(|| format!("{value:?}: {expected}"))?;
                match level.parse::<i32>() {
                    Ok(l) if ZSTD_LEVELS.contains(&l) => Ok(pinned("zstd", l)),
                    _ => Err(format!("{value:?}: {expected}")),
                }
            }
        }
    }

    /// The `--compression` spelling of these parameters.
    pub fn choice(&self) -> String {
        match (self.auto, self.algorithm.as_str()) {
            (true, _) => "auto".to_string(),
            (false, "none") => "none".to_string(),
            (false, algorithm) => format!("{algorithm}:{}", self.level),
        }
    }

    /// Why a writer cannot use these parameters, if it cannot (the
    /// config.json check). The level is not checked: zstd clamps it.
    pub fn problem(&self) -> Option<String> {
        match self.algorithm.as_str() {
            "zstd" | "none" => None,
            other => Some(format!("unknown compression {other:?}")),
        }
    }
}

pub const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// The largest raw chunk any chunking makes (FastCDC's `max` is bounded
/// to 16 MiB by the config check; pages and fixed blocks are smaller). A
/// stored length above it is damage, and never sized an allocation.
pub const MAX_RAW_CHUNK: u32 = 1 << 24;

/// How a file is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    Fixed(usize),
    Cdc { min: u32, avg: u32, max: u32 },
}

impl Strategy {
    /// The largest chunk this strategy produces.
    pub fn max_chunk(&self) -> usize {
        match *self {
            Strategy::Fixed(n) => n,
            Strategy::Cdc { max, .. } => max as usize,
        }
    }
}

/// The page size from a SQLite header, if `header` is one.
pub fn sqlite_page_size(header: &[u8]) -> Option<u32> {
    if header.len() < 18 || &header[..16] != SQLITE_MAGIC {
        return None;
    }
    let raw = u16::from_be_bytes([header[16], header[17]]) as u32;
    let size = if raw == 1 { 65536 } else { raw };
    (size >= 512 && size.is_power_of_two()).then_some(size)
}

/// Picks the strategy for a file from its name and, for a SQLite
/// database, its page size.
pub fn strategy_for(name: &[u8], sqlite_page: Option<u32>, params: &ChunkingParams) -> Strategy {
    if let (true, Some(page)) = (params.sqlite_page_chunks, sqlite_page) {
        return Strategy::Fixed(page as usize);
    }
    if params
        .fixed_block_suffixes
        .iter()
        .any(|s| name.ends_with(s.as_bytes()))
    {
        return Strategy::Fixed(params.fixed_block_size as usize);
    }
    Strategy::Cdc {
        min: params.cdc_min_size,
        avg: params.cdc_avg_size,
        max: params.cdc_max_size,
    }
}

/// Cuts `data` into chunks. Unless `at_eof`, the trailing piece that might
/// continue in later data is left out (the caller carries it over).
pub fn cut(data: &[u8], strategy: Strategy, at_eof: bool) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    match strategy {
        Strategy::Fixed(n) => {
            let mut start = 0;
            while start < data.len() {
                let end = (start + n).min(data.len());
                if end - start < n && !at_eof {
                    break;
                }
                out.push(start..end);
                start = end;
            }
        }
        Strategy::Cdc { min, avg, max } => {
            for c in fastcdc::v2020::FastCDC::new(data, min, avg, max) {
                out.push(c.offset..c.offset + c.length);
            }
            // The last piece may be cut short by the end of the buffer.
            if !at_eof {
                out.pop();
            }
        }
    }
    out
}

/// Reads `reader` in batches of about `batch` bytes and calls `f` with each
/// batch and its chunk ranges. Returns the total bytes read.
pub fn for_each_batch<R: Read>(
    reader: R,
    strategy: Strategy,
    batch: usize,
    mut f: impl FnMut(&[u8], &[Range<usize>]) -> crate::error::Result<()>,
) -> crate::error::Result<io::Result<u64>> {
    let mut batcher = Batcher::new(reader, strategy, batch);
    let mut buf = Vec::with_capacity(batcher.batch_bytes());
    loop {
        match batcher.next_into(&mut buf) {
            Ok(Some(ranges)) => f(&buf, &ranges)?,
            Ok(None) => return Ok(Ok(batcher.total())),
            Err(e) => return Ok(Err(e)),
        }
    }
}

/// A stream read in batches of about `batch` bytes, each cut into chunks.
/// The piece at a batch's end that may continue in the next one is carried
/// over, so boundaries do not depend on the batch size; the caller owns
/// the buffers (a pipeline recycles a few).
pub struct Batcher<R> {
    reader: R,
    strategy: Strategy,
    batch: usize,
    tail: Vec<u8>,
    done: bool,
    total: u64,
}

impl<R: Read> Batcher<R> {
    pub fn new(reader: R, strategy: Strategy, batch: usize) -> Batcher<R> {
        Batcher {
            reader,
            strategy,
            // Two maximal chunks always fit, so every full batch makes
            // progress.
            batch: batch.max(2 * strategy.max_chunk()),
            tail: Vec::new(),
            done: false,
            total: 0,
        }
    }

    /// The most bytes a batch holds.
    pub fn batch_bytes(&self) -> usize {
        self.batch
    }

    /// Bytes handed out in chunks so far (the whole stream once
    /// [`next_into`](Batcher::next_into) said None).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Fills `buf` (its old content dropped) with the next batch and
    /// returns its chunk ranges; None once the stream has ended.
    pub fn next_into(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<Vec<Range<usize>>>> {
        if self.done {
            return Ok(None);
        }
        buf.clear();
        buf.append(&mut self.tail);
        let want = self.batch.saturating_sub(buf.len());
        let read = (&mut self.reader).take(want as u64).read_to_end(buf)?;
        let eof = read < want;
        self.done = eof;
        if buf.is_empty() {
            return Ok(None);
        }
        let ranges = cut(buf, self.strategy, eof);
        let consumed = ranges.last().map(|r| r.end).unwrap_or(0);
        self.tail.extend_from_slice(&buf[consumed..]);
        self.total += consumed as u64;
        Ok(Some(ranges))
    }
}

thread_local! {
    /// This thread's compressor and the tuning it is set to. One context,
    /// set again when the tuning changes, rather than one per tuning: a
    /// frame may go through four (the store's level, the probe's level 1,
    /// the two of lanes), and each context holds its tables (about 1 to
    /// 3 MiB at these levels) for as long as its thread lives.
    static COMPRESSOR: RefCell<Option<(Tuning, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Encodes a raw chunk: (stored bytes, compressed?).
pub fn encode(raw: &[u8], params: &CompressionParams) -> (Vec<u8>, bool) {
    if params.algorithm == "none" {
        return (raw.to_vec(), false);
    }
    match zstd_at(raw, params.level) {
        Some(c)
            if (c.len() as u64) * 100 <= (raw.len() as u64) * params.max_ratio_percent as u64 =>
        {
            (c, true)
        }
        _ => (raw.to_vec(), false),
    }
}

/// How zstd is set for one call (only the stored form depends on it:
/// every zstd frame decodes the same way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tuning {
    /// A zstd level; at level 3 (the default), matches of 6 bytes or
    /// more instead of zstd's 5. Measured on the 130k runtime's SQLite
    /// files in 1 MiB frames: 0.6 % larger, 7 % faster to write and 5 %
    /// faster to read; the Chroma pickle shrinks 5 %.
    Level(i32),
    /// Level 1 taking only long matches (7 bytes or more, from a table of
    /// 256 entries), so that nearly everything is a literal, Huffman-coded:
    /// for bytes of low entropy that seldom repeat in runs, as a lane of
    /// float exponents. Measured on that lane of the 130k runtime's HNSW
    /// file: 31.7 % of its size at about half the time of plain level 1,
    /// which keeps 36.2 % (short matches code such bytes worse than
    /// Huffman does).
    Entropy,
}

impl Tuning {
    /// Sets `c` to this tuning, from whatever it was set to.
    fn set(self, c: &mut zstd::bulk::Compressor<'static>) -> Option<()> {
        use zstd::zstd_safe::{CParameter, ResetDirective};
        c.context_mut().reset(ResetDirective::Parameters).ok()?;
        match self {
            Tuning::Level(level) => {
                c.set_compression_level(level).ok()?;
                if level == 3 {
                    c.set_parameter(CParameter::MinMatch(6)).ok()?;
                }
                Some(())
            }
            Tuning::Entropy => {
                c.set_compression_level(1).ok()?;
                c.set_parameter(CParameter::MinMatch(7)).ok()?;
                c.set_parameter(CParameter::HashLog(8)).ok()
            }
        }
    }
}

/// zstd of `raw` at `level` with this thread's compressor for it.
pub(crate) fn zstd_at(raw: &[u8], level: i32) -> Option<Vec<u8>> {
    zstd_with(raw, Tuning::Level(level))
}

/// zstd of `raw`, tuned as `tuning` says, with this thread's compressor
/// for it (one zstd frame, its content size in its header).
pub fn zstd_with(raw: &[u8], tuning: Tuning) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(set_to, _)| *set_to) != Some(tuning) {
            let mut c = match slot.take() {
                Some((_, c)) => c,
                None => zstd::bulk::Compressor::new(0).ok()?,
            };
            // A failed set leaves the slot empty: the next call makes a
            // new context rather than trust one set halfway.
            tuning.set(&mut c)?;
            *slot = Some((tuning, c));
        }
        slot.as_mut()?.1.compress(raw).ok()
    })
}

/// Decodes a stored chunk back to `raw_len` raw bytes.
pub fn decode(stored: Vec<u8>, compressed: bool, raw_len: u32) -> Result<Vec<u8>, String> {
    if raw_len > MAX_RAW_CHUNK {
        return Err(format!(
            "recorded raw length {raw_len} is more than any chunk ({MAX_RAW_CHUNK})"
        ));
    }
    if !compressed {
        if stored.len() != raw_len as usize {
            return Err(format!(
                "stored length {} differs from the recorded {raw_len}",
                stored.len()
            ));
        }
        return Ok(stored);
    }
    let raw = DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = zstd::bulk::Decompressor::new().ok();
        }
        match slot.as_mut() {
            Some(d) => d
                .decompress(&stored, raw_len as usize)
                .map_err(|e| format!("does not decompress: {e}")),
            None => Err("no zstd decompressor".to_string()),
        }
    })?;
    if raw.len() != raw_len as usize {
        return Err(format!(
            "decompressed to {} bytes, expected {raw_len}",
            raw.len()
        ));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest};

    fn cdc() -> Strategy {
        Strategy::Cdc {
            min: 256,
            avg: 1024,
            max: 4096,
        }
    }

    fn chunks_streamed(data: &[u8], strategy: Strategy, batch: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for_each_batch(data, strategy, batch, |buf, ranges| {
            out.extend(ranges.iter().map(|r| buf[r.clone()].to_vec()));
            Ok(())
        })
        .unwrap()
        .unwrap();
        out
    }

    proptest! {
        #[test]
        fn chunks_concatenate_and_respect_bounds(
            data in proptest::collection::vec(any::<u8>(), 0..40_000),
            fixed in 1usize..5000,
            batch in 1usize..20_000,
        ) {
            for strategy in [Strategy::Fixed(fixed), cdc()] {
                let chunks = chunks_streamed(&data, strategy, batch);
                prop_assert_eq!(chunks.concat(), data.clone());
                let n = chunks.len();
                for (i, c) in chunks.iter().enumerate() {
                    prop_assert!(!c.is_empty());
                    prop_assert!(c.len() <= strategy.max_chunk());
                    let last = i + 1 == n;
                    match strategy {
                        Strategy::Fixed(size) => prop_assert!(last || c.len() == size),
                        Strategy::Cdc { min, .. } => prop_assert!(last || c.len() >= min as usize),
                    }
                }
            }
        }

        #[test]
        fn boundaries_do_not_depend_on_batch_size(
            data in proptest::collection::vec(any::<u8>(), 0..60_000),
            a in 1usize..30_000,
            b in 1usize..30_000,
        ) {
            prop_assert_eq!(chunks_streamed(&data, cdc(), a), chunks_streamed(&data, cdc(), b));
            prop_assert_eq!(
                chunks_streamed(&data, Strategy::Fixed(4096), a),
                chunks_streamed(&data, Strategy::Fixed(4096), b)
            );
        }

        #[test]
        fn encode_decode_round_trip(data in proptest::collection::vec(any::<u8>(), 0..9000), zeros in 0usize..9000) {
            let params = CompressionParams { level: 3, ..CompressionParams::auto() };
            let mut raw = data;
            raw.extend(std::iter::repeat_n(0u8, zeros));
            let (stored, compressed) = encode(&raw, &params);
            prop_assert_eq!(decode(stored, compressed, raw.len() as u32).unwrap(), raw);
        }
    }

    #[test]
    fn cdc_insertion_shifts_few_chunks() {
        let data: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut edited = data.clone();
        edited.splice(100_000..100_000, b"inserted".iter().copied());
        let a = chunks_streamed(&data, cdc(), 1 << 16);
        let b = chunks_streamed(&edited, cdc(), 1 << 16);
        let shared = b.iter().filter(|c| a.contains(c)).count();
        assert!(
            shared + 3 >= b.len(),
            "only {shared} of {} chunks shared",
            b.len()
        );
    }

    #[test]
    fn sqlite_header_page_size() {
        let mut h = SQLITE_MAGIC.to_vec();
        h.extend_from_slice(&4096u16.to_be_bytes());
        assert_eq!(sqlite_page_size(&h), Some(4096));
        h[16..18].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(sqlite_page_size(&h), Some(65536));
        assert_eq!(sqlite_page_size(b"not sqlite at all"), None);
    }

    #[test]
    fn incompressible_is_stored_raw_and_compressible_is_not() {
        let params = CompressionParams {
            level: 3,
            ..CompressionParams::auto()
        };
        let noise: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
        let (stored, compressed) = encode(&noise, &params);
        assert!(!compressed);
        assert_eq!(stored, noise);
        let (stored, compressed) = encode(&[7u8; 4096], &params);
        assert!(compressed && stored.len() < 100);
        let none = CompressionParams::parse_choice("none").unwrap();
        assert_eq!(encode(&[7u8; 4096], &none), (vec![7u8; 4096], false));
    }

    #[test]
    fn compression_choices_parse_and_print_back() {
        for good in ["auto", "none", "zstd:1", "zstd:19", "zstd:22"] {
            let p = CompressionParams::parse_choice(good).unwrap();
            assert_eq!(p.choice(), good);
            assert_eq!(p.problem(), None);
        }
        assert_eq!(
            CompressionParams::parse_choice("zstd:19").unwrap().level,
            19
        );
        assert_eq!(
            CompressionParams::parse_choice("auto").unwrap(),
            CompressionParams::auto()
        );
        for bad in [
            "zstd:0", "zstd:23", "gzip", "zstd:x", "zstd:", "", "zstd:-1", "ZSTD:3",
        ] {
            let e = CompressionParams::parse_choice(bad).unwrap_err();
            assert!(
                e.contains("expected auto, none or zstd:LEVEL"),
                "{bad}: {e}"
            );
        }
    }
}
