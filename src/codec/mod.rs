//! Frame encoding (format 2): which codec a frame's raw bytes get, and
//! decoding by codec. The probe that chooses lives here; the zstd calls
//! are [`crate::chunk`]'s, the lanes transform [`lanes`]'s. On disk
//! a codec is a number (`store::pack2::Codec`); docs/FORMAT.md, "Frame
//! codecs", says when each is written.

pub mod lanes;

use crate::chunk::{decode, encode, zstd_at, CompressionParams};

/// Frames this large or larger are probed before they are encoded.
const PROBE_MIN: usize = 256 << 10;
/// The probe: this many bytes from each quarter of the frame.
const PROBE_SLICE: usize = 16 << 10;
/// A probe that zstd level 1 keeps at this share of its size or more is
/// data zstd barely shrinks (HNSW floats: 91 %, link lists: 80 %).
const PROBE_POOR_PERCENT: usize = 85;

/// A probe that zstd level 1 keeps at this share of its size or more, but
/// below [`PROBE_POOR_PERCENT`], is encoded at level 1 too: measured on the
/// 130k runtime's SQLite files in 1 MiB frames, level 3 took 2.5 s of one
/// core for 236 MB where level 1 took 1.6 s for 256 MB. Frames probing at
/// 30 % or more (all of `chroma.sqlite3`, whose probes lie at 37-66 %, and
/// a third of `atocore.db`) gave 0.88 s of that time for 16.5 MB; the
/// densest (most of `atocore.db`, probing at 25-30 %) are 9 % smaller at
/// level 3 for almost no time. The first snapshot's store is 1.030x its
/// floor (0.995x with level 3 throughout; 1.037x with level 1 for every
/// probed frame, 2 % faster again).
const PROBE_LEVEL_ONE_PERCENT: usize = 30;

/// A lanes probe at most this share of the plain probe's size makes the
/// frame a lanes frame: on the 130k runtime's HNSW floats the lanes probe
/// is about 90 % of the plain one; on SQLite pages and text, worse than it.
const LANES_PAY_PERCENT: usize = 95;

/// How a frame's raw bytes were encoded before sealing (the frame codecs
/// a writer uses; `store::pack2::Codec` is their number on disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameEncoding {
    Raw,
    Zstd,
    /// zstd over the frame's bytes gathered into 4-byte lanes
    /// ([`lanes`]).
    ZstdLanes,
}

/// Encodes a frame (format 2): as [`encode`], except that in a store whose
/// level is left to atosnap (`auto`) a frame whose level-1 probe barely
/// shrinks is encoded at level 1, its bytes gathered into lanes first when
/// `lanes` allows it and a lanes probe pays. On such data a higher level
/// finds no more matches: measured on the 130k runtime's `data_level0.bin`
/// in 1 MiB frames, level 3 was within 0.1 % of level 1's bytes at 2.4x
/// its time (in lanes, 1.3 % larger than level 1 at 1.8x). Frames whose
/// probe keeps [`PROBE_LEVEL_ONE_PERCENT`] or more are encoded at level 1
/// as well (level 3 saves them about 4 % at twice the time); only the
/// densest (probes below it) keep the store's level. Only the stored form
/// changes, never a chunk id; the probe costs a level-1 pass over 64 KiB
/// of the frame (two for a frame that barely shrinks).
pub fn encode_frame(
    raw: &[u8],
    params: &CompressionParams,
    lanes: bool,
) -> (Vec<u8>, FrameEncoding) {
    let plain = |(bytes, compressed): (Vec<u8>, bool)| {
        let encoding = if compressed {
            FrameEncoding::Zstd
        } else {
            FrameEncoding::Raw
        };
        (bytes, encoding)
    };
    if !(params.auto && params.algorithm == "zstd") {
        return plain(encode(raw, params));
    }
    let Some(sample) = probe_sample(raw) else {
        return plain(encode(raw, params));
    };
    let Some(plain_probe) = zstd_at(&sample, 1).map(|z| z.len()) else {
        return plain(encode(raw, params));
    };
    if plain_probe * 100 < sample.len() * PROBE_LEVEL_ONE_PERCENT {
        return plain(encode(raw, params));
    }
    let fast = CompressionParams {
        level: 1,
        ..params.clone()
    };
    if plain_probe * 100 < sample.len() * PROBE_POOR_PERCENT {
        return plain(encode(raw, &fast));
    }
    let lanes_probe = || {
        lanes::LaneProbe::of(&sample).filter(|p| p.total() * 100 <= plain_probe * LANES_PAY_PERCENT)
    };
    if let Some(probe) = lanes.then(lanes_probe).flatten() {
        return match lanes::encode(raw, &probe) {
            Some(z)
                if z.len() as u64 * 100 <= raw.len() as u64 * params.max_ratio_percent as u64 =>
            {
                (z, FrameEncoding::ZstdLanes)
            }
            _ => (raw.to_vec(), FrameEncoding::Raw),
        };
    }
    plain(encode(raw, &fast))
}

/// The probe of a frame: [`PROBE_SLICE`] bytes from each quarter of `raw`,
/// each starting on a lane word (None for small frames: not probed).
fn probe_sample(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() < PROBE_MIN {
        return None;
    }
    let quarter = raw.len() / 4 / lanes::WORD * lanes::WORD;
    let mut sample = Vec::with_capacity(4 * PROBE_SLICE);
    for q in 0..4 {
        sample.extend_from_slice(&raw[q * quarter..q * quarter + PROBE_SLICE]);
    }
    Some(sample)
}

/// Decodes a stored frame's (opened) bytes back to its `raw_len` raw bytes.
pub fn decode_frame(
    encoded: Vec<u8>,
    encoding: FrameEncoding,
    raw_len: u32,
) -> Result<Vec<u8>, String> {
    match encoding {
        FrameEncoding::Raw => decode(encoded, false, raw_len),
        FrameEncoding::Zstd => decode(encoded, true, raw_len),
        FrameEncoding::ZstdLanes => decode(encoded, true, raw_len).map(|l| lanes::join(&l)),
    }
}

/// Test data: noise, but the last byte of every `period` bytes from a
/// small set (3 values), as a float's exponent byte is.
#[cfg(test)]
pub(crate) fn noise_with_exponents(len: usize, period: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % period == period - 1 {
                0x3c + (x % 3) as u8
            } else {
                x as u8
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Float-like bytes: one byte in eight from a small set (an exponent),
    /// the rest noise; zstd level 1 keeps about 90 % of them.
    fn floats(len: usize) -> Vec<u8> {
        noise_with_exponents(len, 8)
    }

    /// Embedding-like floats: f32 values near zero (a sum of uniforms),
    /// little-endian, as in Chroma's HNSW `data_level0.bin`.
    fn embedding(len: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        };
        (0..len / 4)
            .flat_map(|_| ((uniform() + uniform() + uniform()) * 0.1).to_le_bytes())
            .collect()
    }

    fn auto_level_3() -> CompressionParams {
        CompressionParams {
            level: 3,
            max_ratio_percent: 97,
            ..CompressionParams::auto()
        }
    }

    #[test]
    fn frames_that_barely_compress_are_encoded_at_level_1_when_auto() {
        let auto = auto_level_3();
        let data = floats(1 << 20);
        let (stored, encoding) = encode_frame(&data, &auto, false);
        assert_eq!(encoding, FrameEncoding::Zstd);
        assert_eq!(stored, zstd_at(&data, 1).unwrap());
        assert_ne!(stored, zstd_at(&data, 3).unwrap());
        let pinned = CompressionParams {
            auto: false,
            ..auto.clone()
        };
        assert_eq!(
            encode_frame(&data, &pinned, true).0,
            zstd_at(&data, 3).unwrap()
        );
        let text: Vec<u8> = (0..1 << 20)
            .flat_map(|i: u32| format!("row {i} of the chunk table; ").into_bytes())
            .take(1 << 20)
            .collect();
        assert_eq!(
            encode_frame(&text, &auto, true),
            (zstd_at(&text, 3).unwrap(), FrameEncoding::Zstd)
        );
        let small = floats(PROBE_MIN - 1);
        assert_eq!(
            encode_frame(&small, &auto, false).0,
            zstd_at(&small, 3).unwrap()
        );
        for (raw, (stored, encoding)) in [
            (&data, encode_frame(&data, &auto, false)),
            (&text, encode_frame(&text, &auto, true)),
        ] {
            assert_eq!(
                &decode_frame(stored, encoding, raw.len() as u32).unwrap(),
                raw
            );
        }
    }

    #[test]
    fn frames_that_compress_moderately_are_encoded_at_level_1_when_auto() {
        let auto = auto_level_3();
        // Sixteen symbols in random order: zstd keeps about half (Huffman
        // coded literals), between the dense and the poor probes.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let moderate: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b"abcdefghijklmnop"[(x % 16) as usize]
            })
            .collect();
        let probe = zstd_at(&probe_sample(&moderate).unwrap(), 1).unwrap().len();
        let kept = probe * 100 / (4 * PROBE_SLICE);
        assert!(
            (PROBE_LEVEL_ONE_PERCENT..PROBE_POOR_PERCENT).contains(&kept),
            "probe kept {kept} %"
        );
        let (stored, encoding) = encode_frame(&moderate, &auto, true);
        assert_eq!(
            (stored.as_slice(), encoding),
            (
                zstd_at(&moderate, 1).unwrap().as_slice(),
                FrameEncoding::Zstd
            )
        );
        let back = decode_frame(stored, encoding, moderate.len() as u32).unwrap();
        assert_eq!(back, moderate);
        // A store that pinned its level keeps it for such frames too.
        let pinned = CompressionParams {
            auto: false,
            ..auto
        };
        assert_eq!(
            encode_frame(&moderate, &pinned, true).0,
            zstd_at(&moderate, 3).unwrap()
        );
    }

    #[test]
    fn float_frames_are_stored_in_lanes_when_the_store_allows_it() {
        let auto = auto_level_3();
        // Not a multiple of 4: the tail travels as it is.
        let mut data = embedding(1 << 20);
        data.extend_from_slice(&[1, 2, 3]);
        let (plain, encoding) = encode_frame(&data, &auto, false);
        assert_eq!(encoding, FrameEncoding::Zstd);
        let (lanes, encoding) = encode_frame(&data, &auto, true);
        assert_eq!(encoding, FrameEncoding::ZstdLanes);
        assert!(
            lanes.len() * 100 <= plain.len() * 95,
            "lanes {} bytes, plain {}",
            lanes.len(),
            plain.len()
        );
        let back = decode_frame(lanes.clone(), FrameEncoding::ZstdLanes, data.len() as u32);
        assert_eq!(back.unwrap(), data);
        // The lanes' zstd frames decode to exactly the raw length: a
        // wrong one is refused, never a short or long frame.
        assert!(decode_frame(lanes, FrameEncoding::ZstdLanes, data.len() as u32 - 1).is_err());
        // Noise: neither form pays, stored raw.
        let noise: Vec<u8> = (0..1 << 20).map(|_| rand::random::<u8>()).collect();
        assert_eq!(
            encode_frame(&noise, &auto, true),
            (noise.clone(), FrameEncoding::Raw)
        );
        // `floats` has its exponent-like byte in every other word only:
        // lanes do not pay there, level 1 stays.
        let sparse = floats(1 << 20);
        assert_eq!(encode_frame(&sparse, &auto, true).1, FrameEncoding::Zstd);
    }
}
