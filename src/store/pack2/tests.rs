//! Round trips and damage for format-2 frames, trailers and packs.
//! (compiled only for tests: `#[cfg(test)] mod tests;` in mod.rs).

use proptest::prelude::*;

use super::frame::decode_frame;
use super::*;
use crate::error::Error;
use crate::id::Id;
use crate::store::pack::PackIndexError;
use crate::store::seal::{MasterKey, Sealer};

fn sealer(encrypted: bool) -> Sealer {
    if encrypted {
        Sealer::repokey(MasterKey::from_bytes([7; 32]))
    } else {
        Sealer::Plain
    }
}

fn params() -> FrameParams {
    FrameParams::default_v2()
}

/// Chunk bytes: compressible text-like or random (incompressible).
fn chunk_bytes(seed: u64, len: usize, compressible: bool) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|i| {
            if compressible {
                b"ATOSNAP frame "[(i + seed as usize) % 14]
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }
        })
        .collect()
}

/// Frames cut from `chunks` the way a packer cuts them.
fn frames_of(chunks: &[Vec<u8>], s: &Sealer, p: &FrameParams) -> Vec<EncodedFrame> {
    let mut out = Vec::new();
    let mut buf = FrameBuf::new(FrameKind::Data);
    for c in chunks {
        if !buf.fits(c.len()) {
            out.push(std::mem::replace(&mut buf, FrameBuf::new(FrameKind::Data)).encode(p, s));
        }
        if buf.push(s.chunk_id(c), c, p).unwrap() {
            out.push(std::mem::replace(&mut buf, FrameBuf::new(FrameKind::Data)).encode(p, s));
        }
    }
    if !buf.is_empty() {
        out.push(buf.encode(p, s));
    }
    out
}

fn write_pack(frames: Vec<EncodedFrame>, s: &Sealer) -> (Vec<u8>, FinishedPackV2) {
    let mut w = PackWriterV2::new(Vec::new()).unwrap();
    for f in frames {
        w.add(f).unwrap();
    }
    w.finish(3, s).unwrap()
}

fn corrupt_ids(errors: &[Error]) -> Vec<String> {
    errors
        .iter()
        .map(|e| match e {
            Error::ChunkCorrupt { hash, .. } => hash.clone(),
            other => panic!("not chunk_corrupt: {other}"),
        })
        .collect()
}

fn hexes(chunks: &[ChunkEntry]) -> Vec<String> {
    chunks.iter().map(|c| c.id.to_hex()).collect()
}

fn chunk_set() -> impl Strategy<Value = Vec<(u64, usize, bool)>> {
    prop::collection::vec((any::<u64>(), 0usize..20_000, any::<bool>()), 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn frames_round_trip(set in chunk_set(), encrypted in any::<bool>(),
                         none in any::<bool>(), max_chunks in 1u32..12) {
        let s = sealer(encrypted);
        let mut p = params();
        p.frame_max_chunks = max_chunks;
        p.frame_max_bytes = 32 << 10;
        if none {
            p.compression.algorithm = "none".to_string();
        }
        let chunks: Vec<Vec<u8>> = set.iter().map(|&(seed, len, c)| chunk_bytes(seed, len, c)).collect();
        let mut back = Vec::new();
        for f in frames_of(&chunks, &s, &p) {
            prop_assert!(f.chunks.len() <= max_chunks as usize);
            let raw: usize = f.chunks.iter().map(|c| c.raw_len as usize).sum();
            prop_assert!(raw < (32 << 10) + 20_000);
            if none {
                prop_assert_eq!(f.codec, Codec::Raw);
            }
            if f.codec == Codec::Raw {
                prop_assert_eq!(f.stored.len(), raw + s.overhead());
            } else if !encrypted {
                // The design's codec 1: the content size is in the header.
                let size = zstd::zstd_safe::get_frame_content_size(&f.stored).ok();
                prop_assert_eq!(size, Some(Some(raw as u64)));
            }
            let d = decode_frame(f.stored, f.codec, &f.chunks, &s).unwrap();
            prop_assert!(d.errors().is_empty());
            for (_, r) in d.chunks() {
                back.push(r.unwrap().to_vec());
            }
        }
        prop_assert_eq!(back, chunks);
    }

    #[test]
    fn packs_round_trip(set in chunk_set(), encrypted in any::<bool>()) {
        let s = sealer(encrypted);
        let mut p = params();
        p.frame_max_bytes = 40 << 10;
        let chunks: Vec<Vec<u8>> = set.iter().map(|&(seed, len, c)| chunk_bytes(seed, len, c)).collect();
        let (bytes, done) = write_pack(frames_of(&chunks, &s, &p), &s);
        prop_assert_eq!(done.size, bytes.len() as u64);
        prop_assert_eq!(done.id, Id::hash(&bytes));
        prop_assert_eq!(&done.name, &crate::store::pack::pack_name(&done.id));
        let r = PackReaderV2::from_bytes(&bytes, &s).unwrap();
        prop_assert_eq!(r.trailer(), &done.trailer);
        for (ci, c) in chunks.iter().enumerate() {
            prop_assert_eq!(&r.read_chunk(&bytes, &s.chunk_id(c), &s).unwrap(), c);
            let (fi, span) = r.trailer().raw_span(ci).unwrap();
            let range = r.frame_range(fi).unwrap();
            let stored = bytes[range.start as usize..range.end as usize].to_vec();
            let d = r.decode_frame(fi, stored, &s).unwrap();
            let first = r.trailer().frames[fi].first_chunk as usize;
            prop_assert_eq!(d.chunk(ci - first).unwrap().unwrap(), c.as_slice());
            prop_assert_eq!(span.len(), c.len());
        }
    }
}

/// A pack of `n` frames of `per` incompressible 4 KiB chunks each (frames
/// of equal stored length, so two can be swapped without breaking tiling).
fn uniform_pack(s: &Sealer, n: usize, per: u32) -> (Vec<u8>, PackReaderV2) {
    let mut p = params();
    p.frame_max_chunks = per;
    let chunks: Vec<Vec<u8>> = (0..n as u64 * per as u64)
        .map(|i| chunk_bytes(i, 4096, false))
        .collect();
    let (bytes, _) = write_pack(frames_of(&chunks, s, &p), s);
    let r = PackReaderV2::from_bytes(&bytes, s).unwrap();
    assert_eq!(r.trailer().frames.len(), n);
    (bytes, r)
}

fn decode_at(
    bytes: &[u8],
    r: &PackReaderV2,
    fi: usize,
    s: &Sealer,
) -> Result<DecodedFrame, FrameError> {
    let range = r.frame_range(fi).unwrap();
    let stored = bytes[range.start as usize..range.end as usize].to_vec();
    r.decode_frame(fi, stored, s)
}

#[test]
fn a_flipped_frame_byte_names_every_chunk_of_that_frame() {
    for encrypted in [true, false] {
        let s = sealer(encrypted);
        let (mut bytes, r) = uniform_pack(&s, 3, 4);
        let range = r.frame_range(1).unwrap();
        bytes[range.start as usize + 100] ^= 0x40;
        let frame1 = hexes(r.trailer().frame_chunks(1));
        match decode_at(&bytes, &r, 1, &s) {
            // repokey: the seal does not open, so the whole frame is lost.
            Err(e) => {
                assert!(encrypted, "a plain raw frame decodes: {e}");
                assert_eq!(corrupt_ids(&e.errors()), frame1);
                assert!(e.detail.contains("does not open"), "{}", e.detail);
            }
            // plain, raw codec: only the chunk holding the byte is damaged.
            Ok(d) => {
                assert!(!encrypted);
                assert_eq!(corrupt_ids(&d.errors()), vec![frame1[0].clone()]);
                assert!(d.chunk(1).unwrap().is_ok());
            }
        }
        // The frames beside it are untouched.
        for fi in [0, 2] {
            assert!(decode_at(&bytes, &r, fi, &s).unwrap().errors().is_empty());
        }
        let id = r.trailer().frame_chunks(1)[3].id;
        let err = r.read_chunk(&bytes, &id, &s);
        assert_eq!(err.is_err(), encrypted, "{err:?}");
    }
}

#[test]
fn a_flipped_byte_of_a_zstd_frame_names_every_chunk_or_the_damaged_ones() {
    let s = Sealer::Plain;
    let chunks: Vec<Vec<u8>> = (0..8).map(|i| chunk_bytes(i, 4096, true)).collect();
    let f = frames_of(&chunks, &s, &params()).remove(0);
    assert_eq!(f.codec, Codec::Zstd);
    let mut stored = f.stored.clone();
    let at = stored.len() / 2;
    stored[at] ^= 0xff;
    let named = match decode_frame(stored, f.codec, &f.chunks, &s) {
        Err(e) => corrupt_ids(&e.errors()),
        Ok(d) => corrupt_ids(&d.errors()),
    };
    assert!(!named.is_empty());
    assert!(named.iter().all(|h| hexes(&f.chunks).contains(h)));
}

#[test]
fn a_swapped_frame_fails_authentication_or_the_hash_check() {
    for encrypted in [true, false] {
        let s = sealer(encrypted);
        let (mut bytes, r) = uniform_pack(&s, 2, 3);
        let (a, b) = (r.frame_range(0).unwrap(), r.frame_range(1).unwrap());
        assert_eq!(a.end - a.start, b.end - b.start);
        let (a, b) = (
            a.start as usize..a.end as usize,
            b.start as usize..b.end as usize,
        );
        let first = bytes[a.clone()].to_vec();
        bytes.copy_within(b.clone(), a.start);
        bytes[b].copy_from_slice(&first);
        for fi in [0, 1] {
            let ids = hexes(r.trailer().frame_chunks(fi));
            let named = match decode_at(&bytes, &r, fi, &s) {
                Err(e) => {
                    assert!(encrypted);
                    assert!(e.detail.contains("authentication failed"), "{}", e.detail);
                    corrupt_ids(&e.errors())
                }
                Ok(d) => {
                    assert!(!encrypted);
                    corrupt_ids(&d.errors())
                }
            };
            assert_eq!(named, ids);
        }
    }
}

#[test]
fn a_frame_under_other_ids_does_not_open() {
    let s = sealer(true);
    let chunks: Vec<Vec<u8>> = (0..3).map(|i| chunk_bytes(i, 100, true)).collect();
    let f = frames_of(&chunks, &s, &params()).remove(0);
    let mut reordered = f.chunks.clone();
    reordered.swap(0, 1);
    let e = decode_frame(f.stored, f.codec, &reordered, &s).unwrap_err();
    assert_eq!(corrupt_ids(&e.errors()), hexes(&reordered));
}

fn plain_trailer(sizes: &[&[u32]]) -> TrailerV2 {
    let mut t = TrailerV2::default();
    let mut at = 8u32;
    for (i, frame) in sizes.iter().enumerate() {
        let raw: u32 = frame.iter().sum();
        t.frames.push(FrameEntry {
            offset: at,
            stored_len: raw,
            first_chunk: t.chunks.len() as u32,
            n_chunks: frame.len() as u16,
            codec: Codec::Raw,
            kind: FrameKind::Data,
            dict: 0,
        });
        at += raw;
        for (j, &len) in frame.iter().enumerate() {
            let id = Id::hash(&[i as u8, j as u8]);
            t.chunks.push(ChunkEntry { id, raw_len: len });
        }
    }
    t
}

fn decode_plain(t: &TrailerV2, blob_end: u64) -> Result<TrailerV2, PackIndexError> {
    TrailerV2::decode(&t.encode(), 1 << 20, blob_end, 0)
}

fn refused(r: Result<TrailerV2, PackIndexError>, needle: &str) {
    match r {
        Err(PackIndexError::IndexDecode(d)) => assert!(d.contains(needle), "{d}"),
        other => panic!("expected a refusal with {needle:?}, got {other:?}"),
    }
}

#[test]
fn pack_v2_tiling_is_checked() {
    let t = plain_trailer(&[&[10, 20], &[5], &[7, 7, 7]]);
    assert_eq!(decode_plain(&t, 8 + 56).unwrap(), t);
    // The body is longer than the frames: a gap before the trailer.
    refused(decode_plain(&t, 8 + 57), "frames must tile the body");
    // A gap between frames, and an overlap.
    for delta in [1i64, -1] {
        let mut bad = t.clone();
        bad.frames[1].offset = (bad.frames[1].offset as i64 + delta) as u32;
        refused(decode_plain(&bad, 8 + 56), "frames must tile the body");
    }
    // The first frame must start right after the magic.
    let mut bad = t.clone();
    bad.frames[0].offset = 0;
    refused(decode_plain(&bad, 8 + 56), "frames must tile the body");
    // Chunk records: skipped, shared, or left over.
    let mut bad = t.clone();
    bad.frames[1].first_chunk = 1;
    refused(
        decode_plain(&bad, 8 + 56),
        "starts at chunk record 1, expected 2",
    );
    let mut bad = t.clone();
    bad.frames[2].n_chunks = 2;
    refused(
        decode_plain(&bad, 8 + 56),
        "raw frame 2 stores 21 bytes for 14",
    );
    let mut bad = t.clone();
    bad.frames[2].codec = Codec::Zstd;
    bad.frames[2].n_chunks = 2;
    refused(
        decode_plain(&bad, 8 + 56),
        "the frames hold 5 chunk records, the trailer has 6",
    );
    let mut bad = t.clone();
    bad.frames[1].n_chunks = 0;
    refused(decode_plain(&bad, 8 + 56), "frame 1 holds 0 chunks");
}

#[test]
fn trailer_bounds_are_checked_before_allocation() {
    let t = plain_trailer(&[&[10, 20]]);
    let good = t.encode();
    // A hostile n_chunks (or n_frames): refused by the length equation.
    for (at, value) in [(12usize, u32::MAX), (8, u32::MAX), (12, 3)] {
        let mut bytes = good.clone();
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        refused(TrailerV2::decode(&bytes, 1 << 20, 38, 0), "bytes), it has");
    }
    // More chunks than the stored trailer could hold.
    refused(
        TrailerV2::decode(&good, 0, 38, 0),
        "more than its 0 stored bytes",
    );
    // Too many dictionaries, a reserved field, a bad magic.
    let mut bytes = good.clone();
    bytes[16] = 16;
    refused(TrailerV2::decode(&bytes, 1 << 20, 38, 0), "16 dictionaries");
    let mut bytes = good.clone();
    bytes[18] = 1;
    refused(TrailerV2::decode(&bytes, 1 << 20, 38, 0), "reserved");
    let mut bytes = good.clone();
    bytes[0] = b'X';
    refused(TrailerV2::decode(&bytes, 1 << 20, 38, 0), "ATOPIDX2");
    // A frame declaring more raw bytes than any frame.
    let mut big = plain_trailer(&[&[MAX_FRAME_RAW, 1]]);
    big.frames[0].codec = Codec::Zstd;
    big.frames[0].stored_len = 30;
    refused(decode_plain(&big, 38), "more than any frame");
    // Codec and dictionary fields.
    let mut bytes = good.clone();
    bytes[20 + 14] = 4;
    refused(
        TrailerV2::decode(&bytes, 1 << 20, 38, 0),
        "unknown frame codec 4",
    );
    let mut dict = t.clone();
    dict.frames[0].codec = Codec::ZstdDict;
    dict.frames[0].dict = 1;
    refused(decode_plain(&dict, 38), "uses dictionary 1 of 0");
    // A sealed frame shorter than its seal.
    refused(
        TrailerV2::decode(&good, 1 << 20, 38, 40),
        "shorter than its seal",
    );
}

#[test]
fn a_trailer_declaring_a_huge_decoded_size_is_refused() {
    let s = Sealer::Plain;
    // A zstd frame of 64 MiB of zeros compresses to a few KiB: a bomb.
    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 3).unwrap();
    let err = TrailerV2::open(bomb.clone(), 8, &s).unwrap_err();
    assert!(
        err.to_string().contains("decoded bytes, more than the"),
        "{err}"
    );
    // A zstd stream without its content size is refused too.
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.include_contentsize(false).unwrap();
    std::io::Write::write_all(&mut enc, &plain_trailer(&[&[1]]).encode()).unwrap();
    let err = TrailerV2::open(enc.finish().unwrap(), 9, &s).unwrap_err();
    assert!(err.to_string().contains("content size"), "{err}");
}

#[test]
fn a_trailer_checksum_or_seal_mismatch_is_refused() {
    let s = sealer(true);
    let (mut bytes, _) = uniform_pack(&s, 1, 2);
    let n = bytes.len();
    // The byte just before the tail is the trailer body's last byte.
    bytes[n - 45] ^= 1;
    assert_eq!(
        PackReaderV2::from_bytes(&bytes, &s).unwrap_err(),
        PackIndexError::IndexChecksum
    );
    let (bytes, _) = uniform_pack(&s, 1, 2);
    let other = Sealer::repokey(MasterKey::from_bytes([8; 32]));
    let err = PackReaderV2::from_bytes(&bytes, &other).unwrap_err();
    assert!(err.to_string().contains("authentication failed"), "{err}");
    let mut v1 = bytes.clone();
    v1[..8].copy_from_slice(b"ATOPACK1");
    assert!(PackReaderV2::from_bytes(&v1, &s)
        .unwrap_err()
        .to_string()
        .contains("ATOPACK2"));
}

#[test]
fn frame_buf_closes_at_its_limits() {
    let p = FrameParams {
        frame_max_chunks: 3,
        frame_max_bytes: 10,
        ..params()
    };
    let mut b = FrameBuf::new(FrameKind::List);
    assert!(!b.push(Id::hash(b"a"), b"1234", &p).unwrap());
    assert!(b.push(Id::hash(b"b"), b"1234567", &p).unwrap());
    let mut b = FrameBuf::new(FrameKind::Data);
    for _ in 0..2 {
        assert!(!b.push(Id::hash(b"c"), b"1", &p).unwrap());
    }
    assert!(b.push(Id::hash(b"c"), b"1", &p).unwrap());
    // No frame may pass the reader's raw limit, whatever the params.
    let b = FrameBuf::new(FrameKind::Data);
    assert!(b.fits(MAX_FRAME_RAW as usize));
    assert!(!b.fits(MAX_FRAME_RAW as usize + 1));
    assert!(FrameParams {
        frame_max_chunks: 0,
        ..params()
    }
    .check()
    .is_err());
    assert!(FrameParams {
        frame_max_bytes: MAX_FRAME_BYTES + 1,
        ..params()
    }
    .check()
    .is_err());
    assert!(params().check().is_ok());
}

#[test]
fn a_frame_declaring_more_than_it_decodes_to_is_corrupt() {
    let s = Sealer::Plain;
    let chunks: Vec<Vec<u8>> = (0..4).map(|i| chunk_bytes(i, 1000, true)).collect();
    let mut f = frames_of(&chunks, &s, &params()).remove(0);
    f.chunks[3].raw_len += 1;
    let e = decode_frame(f.stored, f.codec, &f.chunks, &s).unwrap_err();
    assert_eq!(corrupt_ids(&e.errors()), hexes(&f.chunks));
}

/// HNSW-like chunk bytes: float32 vector components in (-0.1, 0.1), whose
/// exponent bytes repeat and whose mantissas are random.
fn hnsw_like(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len / 4)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2;
            v.to_le_bytes()
        })
        .collect()
}

/// The figure of docs/FORMAT.md "Packs": bytes of a pack of 256
/// HNSW-like 4 KiB chunks in format 2 against format 1 (`cargo test --lib
/// store::pack2::tests::measure -- --ignored --nocapture`).
#[test]
#[ignore]
fn measure_hnsw_like_pack_against_format1() {
    let chunks: Vec<Vec<u8>> = (0..256).map(|i| hnsw_like(i, 4096)).collect();
    let raw: usize = chunks.iter().map(Vec::len).sum();
    let s = Sealer::Plain;
    let (v2, _) = write_pack(frames_of(&chunks, &s, &params()), &s);
    let dir = tempfile::tempdir().unwrap();
    for (name, cp) in [
        (
            "format 1, auto (zstd 1, 90 %)",
            crate::chunk::CompressionParams::auto(),
        ),
        ("format 1, zstd 3, 97 %", params().compression),
    ] {
        let mut w = crate::store::pack::PackWriter::create(&dir.path().join(&name[..12])).unwrap();
        for c in &chunks {
            let (stored, compressed) = crate::chunk::encode(c, &cp);
            w.add(s.chunk_id(c), &stored, c.len() as u32, compressed)
                .unwrap();
        }
        let v1 = w.finish(|b| b).unwrap().size;
        println!("{name}: {v1} bytes ({:.3} of raw)", v1 as f64 / raw as f64);
    }
    println!(
        "format 2, one 1 MiB frame (zstd 3, 97 %): {} bytes ({:.3} of raw)",
        v2.len(),
        v2.len() as f64 / raw as f64
    );
}

/// A restore fetching one chunk early in a frame decodes only the frame's
/// head: the prefix equals the full decode's first bytes, for zstd and
/// raw frames, plain and sealed; a prefix longer than the frame is cut to
/// it; a damaged frame is refused as the full decode refuses it.
#[test]
fn a_frame_prefix_decodes_to_the_head_of_the_full_decode() {
    for (encrypted, compressible) in [(false, true), (false, false), (true, true), (true, false)] {
        let s = sealer(encrypted);
        let mut p = params();
        p.frame_max_chunks = 8;
        let chunks: Vec<Vec<u8>> = (0..8u64)
            .map(|i| chunk_bytes(i, 4096, compressible))
            .collect();
        let f = frames_of(&chunks, &s, &p).remove(0);
        assert_eq!(f.chunks.len(), 8);
        assert_eq!(f.codec == Codec::Zstd, compressible);
        let whole: Vec<u8> = chunks.concat();
        let ad = AdMode::Frame;
        for upto in [1, 4096, 3 * 4096 + 5, whole.len(), whole.len() + 10] {
            let head = decode_prefix(f.stored.clone(), f.codec, &f.chunks, ad, &s, upto).unwrap();
            assert_eq!(
                head,
                whole[..upto.min(whole.len())],
                "{encrypted} {compressible}"
            );
        }
        let mut bad = f.stored.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        match decode_prefix(bad, f.codec, &f.chunks, ad, &s, whole.len()) {
            Err(e) => assert_eq!(e.ids.len(), 8, "{}", e.detail),
            // A plain frame may decode to other bytes: the caller's hash
            // check finds them.
            Ok(head) => assert!(!encrypted && head != whole),
        }
    }
}

/// A format-1 reader refuses a pack index past `MAX_STORED_INDEX` unread:
/// every format-2 trailer, sealed, must fit under it.
#[test]
fn the_largest_trailer_fits_under_the_stored_index_bound() {
    let sealing = 1 << 20;
    assert!(trailer::MAX_TRAILER_DECODED + sealing <= crate::store::pack::MAX_STORED_INDEX);
}
