//! Many chunk ids at once. BLAKE3 hashes the 1 KiB chunks of one input
//! side by side in SIMD lanes, so a 4 KiB input (a SQLite page, an HNSW
//! block: most of a runtime's chunks) fills only four of AVX-512's sixteen
//! lanes (AVX2: four of eight). Hashed sixteen at a time, the k-th kilobyte
//! of every input goes through the lanes together, then their parents,
//! then their roots: the same BLAKE3 tree for each input, about twice the
//! throughput.
//!
//! The lanes are reached through `blake3::platform`, which the crate marks
//! unstable: Cargo.toml pins the exact version, and the tests compare every
//! shape of input with `blake3::hash` and `blake3::keyed_hash`.

use blake3::platform::Platform;
use blake3::IncrementCounter;

use super::Id;

/// The one input length hashed in lanes.
const PAGE: usize = 4096;
/// Inputs hashed together: AVX-512's width (narrower units loop inside).
const GROUP: usize = 16;
const KIB: usize = 1024;

// BLAKE3's domain flags and IV (the BLAKE3 paper, section 2.1 and table 3).
const CHUNK_START: u8 = 1 << 0;
const CHUNK_END: u8 = 1 << 1;
const PARENT: u8 = 1 << 2;
const ROOT: u8 = 1 << 3;
const KEYED_HASH: u8 = 1 << 4;
const IV: [u32; 8] = [
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
];

/// How pieces are hashed: plain BLAKE3, or keyed (an encrypted store).
#[derive(Clone, Copy)]
pub enum Mode<'k> {
    Hash,
    Keyed(&'k [u8; 32]),
}

impl Mode<'_> {
    fn one(&self, piece: &[u8]) -> Id {
        match self {
            Mode::Hash => Id(*blake3::hash(piece).as_bytes()),
            Mode::Keyed(key) => Id(*blake3::keyed_hash(key, piece).as_bytes()),
        }
    }

    fn key_and_flag(&self) -> ([u32; 8], u8) {
        match self {
            Mode::Hash => (IV, 0),
            Mode::Keyed(key) => {
                let mut words = [0u32; 8];
                for (w, b) in words.iter_mut().zip(key.chunks_exact(4)) {
                    *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
                (words, KEYED_HASH)
            }
        }
    }
}

/// The ids of `pieces`, in order: `out[i]` is `mode`'s hash of
/// `pieces[i]`.
pub fn hash_many(mode: Mode<'_>, pieces: &[&[u8]]) -> Vec<Id> {
    let mut out = vec![Id([0; 32]); pieces.len()];
    let platform = Platform::detect();
    let mut group: Vec<(usize, &[u8; PAGE])> = Vec::with_capacity(GROUP);
    for (i, piece) in pieces.iter().enumerate() {
        match <&[u8; PAGE]>::try_from(*piece) {
            Ok(page) => {
                group.push((i, page));
                if group.len() == GROUP {
                    hash_pages(platform, mode, &group, &mut out);
                    group.clear();
                }
            }
            Err(_) => out[i] = mode.one(piece),
        }
    }
    match group.len() {
        0 => {}
        1 => out[group[0].0] = mode.one(group[0].1),
        _ => hash_pages(platform, mode, &group, &mut out),
    }
    out
}

/// Hashes up to [`GROUP`] 4 KiB inputs together into `out` at their
/// indices. Each input is the tree: four chunks (counters 0 to 3), two
/// parents, one root parent.
fn hash_pages(platform: Platform, mode: Mode<'_>, group: &[(usize, &[u8; PAGE])], out: &mut [Id]) {
    let n = group.len();
    debug_assert!(n <= GROUP);
    let (key, flag) = mode.key_and_flag();
    // cvs[i] holds input i's four chunk chaining values, in order, so that
    // its halves are the two parent blocks.
    let mut cvs = [[0u8; 4 * 32]; GROUP];
    let mut lane_out = [0u8; GROUP * 32];
    let zero = [0u8; KIB];
    for k in 0..4 {
        let mut parts: [&[u8; KIB]; GROUP] = [&zero; GROUP];
        for (part, (_, page)) in parts.iter_mut().zip(group) {
            *part = page[k * KIB..(k + 1) * KIB].try_into().expect("1 KiB");
        }
        platform.hash_many(
            &parts[..n],
            &key,
            k as u64,
            IncrementCounter::No,
            flag,
            CHUNK_START,
            CHUNK_END,
            &mut lane_out[..n * 32],
        );
        for (cv, got) in cvs.iter_mut().zip(lane_out.chunks_exact(32)).take(n) {
            cv[k * 32..(k + 1) * 32].copy_from_slice(got);
        }
    }
    let zero_block = [0u8; 64];
    let mut blocks: [&[u8; 64]; 2 * GROUP] = [&zero_block; 2 * GROUP];
    for (pair, cv) in blocks.chunks_exact_mut(2).zip(&cvs).take(n) {
        pair[0] = cv[..64].try_into().expect("64 bytes");
        pair[1] = cv[64..].try_into().expect("64 bytes");
    }
    let mut parents = [0u8; 2 * GROUP * 32];
    platform.hash_many(
        &blocks[..2 * n],
        &key,
        0,
        IncrementCounter::No,
        flag | PARENT,
        0,
        0,
        &mut parents[..2 * n * 32],
    );
    let mut roots_in: [&[u8; 64]; GROUP] = [&zero_block; GROUP];
    for (r, p) in roots_in.iter_mut().zip(parents.chunks_exact(64)).take(n) {
        *r = p.try_into().expect("64 bytes");
    }
    platform.hash_many(
        &roots_in[..n],
        &key,
        0,
        IncrementCounter::No,
        flag | PARENT | ROOT,
        0,
        0,
        &mut lane_out[..n * 32],
    );
    for ((i, _), root) in group.iter().zip(lane_out.chunks_exact(32)) {
        out[*i].0.copy_from_slice(root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        use rand::{RngCore, SeedableRng};
        let mut bytes = vec![0; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
        bytes
    }

    fn single(mode: Mode<'_>, pieces: &[&[u8]]) -> Vec<Id> {
        pieces.iter().map(|p| mode.one(p)).collect()
    }

    proptest! {
        /// Any mix of 4 KiB pages and other lengths, plain and keyed,
        /// gives blake3's own ids in order.
        #[test]
        fn many_ids_are_blake3s_ids(
            lens in proptest::collection::vec(
                prop_oneof![4 => Just(PAGE), 1 => 0usize..9000], 0..40),
            seed in any::<u64>(),
            keyed in any::<bool>(),
        ) {
            let data: Vec<Vec<u8>> =
                lens.iter().enumerate().map(|(i, &l)| noise(l, seed ^ i as u64)).collect();
            let pieces: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
            let key = *blake3::hash(&seed.to_le_bytes()).as_bytes();
            let mode = if keyed { Mode::Keyed(&key) } else { Mode::Hash };
            prop_assert_eq!(hash_many(mode, &pieces), single(mode, &pieces));
        }
    }

    #[test]
    fn full_and_partial_groups_of_pages_match() {
        for n in [1, 2, 15, 16, 17, 33] {
            let data: Vec<Vec<u8>> = (0..n).map(|i| noise(PAGE, i as u64 + 7)).collect();
            let pieces: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
            assert_eq!(
                hash_many(Mode::Hash, &pieces),
                single(Mode::Hash, &pieces),
                "{n}"
            );
            let key = [9u8; 32];
            let keyed = Mode::Keyed(&key);
            assert_eq!(
                hash_many(keyed, &pieces),
                single(keyed, &pieces),
                "{n} keyed"
            );
        }
    }
}
