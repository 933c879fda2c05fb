//! 32-byte object identifiers: chunk ids (blake3 of the raw chunk, keyed
//! blake3 in an encrypted store) and pack ids (blake3 of the pack file).

pub mod batch;

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Id(pub [u8; 32]);

/// Bytewise order (sorted index segments and spill files rely on it),
/// decided for hashes nearly always by the first eight bytes: compared as
/// one big-endian word, without a call to `memcmp` (3 % of a first
/// snapshot's CPU went to comparing ids in the packer's B-tree and the
/// index).
impl Ord for Id {
    fn cmp(&self, other: &Id) -> std::cmp::Ordering {
        let head = |id: &Id| {
            id.0.first_chunk::<8>()
                .map_or(0, |b| u64::from_be_bytes(*b))
        };
        head(self)
            .cmp(&head(other))
            .then_with(|| self.0[8..].cmp(&other.0[8..]))
    }
}

impl PartialOrd for Id {
    fn partial_cmp(&self, other: &Id) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Id {
    pub fn hash(data: &[u8]) -> Id {
        Id(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Id> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Id(out))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", &self.to_hex()[..16])
    }
}

impl From<blake3::Hash> for Id {
    fn from(h: blake3::Hash) -> Id {
        Id(*h.as_bytes())
    }
}

/// A hasher for ids, keyed per process. Ids are uniform when they come
/// from BLAKE3, but a forged pack index may list ids of its own making: a
/// hash of only some bytes would let ids sharing them collide and make
/// loading the index quadratic. So every byte of the id goes into the
/// hash, mixed nonlinearly with a random key the forger cannot know; still
/// much cheaper than SipHash on the hot path of the chunk index.
#[derive(Clone, Copy)]
pub struct IdHasher(u64);

/// The process's hashing key (random, odd bits spread).
fn hash_key() -> u64 {
    static KEY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KEY.get_or_init(rand::random::<u64>)
}

/// One round of the mix: xor a word in, then a bijective scramble
/// (multiplication by an odd constant, xor-shift), so distinct words give
/// distinct states.
fn mix(state: u64, word: u64) -> u64 {
    let x = (state ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^ (x >> 29)
}

impl Default for IdHasher {
    fn default() -> IdHasher {
        IdHasher(hash_key())
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        mix(self.0, hash_key().rotate_left(32))
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            self.0 = mix(self.0, u64::from_le_bytes(word));
        }
        for b in words.remainder() {
            self.0 = mix(self.0, *b as u64);
        }
    }

    fn write_usize(&mut self, _len: usize) {}
}

pub type BuildIdHasher = BuildHasherDefault<IdHasher>;
pub type IdMap<V> = std::collections::HashMap<Id, V, BuildIdHasher>;
pub type IdSet = HashSet<Id, BuildIdHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The order is bytewise, whatever the bytes: ids sharing a long
        /// prefix (the first word equal) included.
        #[test]
        fn ids_order_bytewise(
            a in any::<[u8; 32]>(),
            b in any::<[u8; 32]>(),
            shared in 0usize..=32,
        ) {
            let mut b = b;
            b[..shared].copy_from_slice(&a[..shared]);
            prop_assert_eq!(Id(a).cmp(&Id(b)), a.cmp(&b));
            prop_assert_eq!(Id(b).cmp(&Id(a)), b.cmp(&a));
            prop_assert_eq!(Id(a).partial_cmp(&Id(a)), Some(std::cmp::Ordering::Equal));
        }
    }

    #[test]
    fn id_set_finds_what_it_holds() {
        let ids: Vec<Id> = (0..1000u32).map(|i| Id::hash(&i.to_le_bytes())).collect();
        let set: IdSet = ids.iter().take(500).copied().collect();
        assert_eq!(set.len(), 500);
        assert!(ids[..500].iter().all(|id| set.contains(id)));
        assert!(ids[500..].iter().all(|id| !set.contains(id)));
    }

    #[test]
    fn ids_sharing_a_prefix_hash_apart() {
        use std::hash::BuildHasher;
        // A forged index: ids equal in their first 24 bytes.
        let build = BuildIdHasher::default();
        let hashes: HashSet<u64> = (0..10_000u64)
            .map(|i| {
                let mut id = [7u8; 32];
                id[24..].copy_from_slice(&i.to_le_bytes());
                build.hash_one(Id(id))
            })
            .collect();
        assert_eq!(hashes.len(), 10_000);
        // The top bits (hashbrown's control bytes) spread too.
        let tops: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(tops.len() > 100, "{}", tops.len());
        let set: IdSet = (0..10_000u64)
            .map(|i| {
                let mut id = [7u8; 32];
                id[24..].copy_from_slice(&i.to_le_bytes());
                Id(id)
            })
            .collect();
        assert_eq!(set.len(), 10_000);
    }
}
