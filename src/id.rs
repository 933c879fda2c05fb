//! 32-byte object identifiers: chunk ids (blake3 of the raw chunk, keyed
//! blake3 in an encrypted store) and pack ids (blake3 of the pack file).

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Id(pub [u8; 32]);

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

/// A hasher for ids: they are already uniform (BLAKE3 output), so the
/// first 8 bytes are a perfect hash; SipHash would only cost time on the
/// hot path of the chunk index.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Some(head) = bytes.first_chunk::<8>() {
            self.0 ^= u64::from_le_bytes(*head);
        } else {
            for b in bytes {
                self.0 = self.0.rotate_left(8) ^ *b as u64;
            }
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

    #[test]
    fn id_set_finds_what_it_holds() {
        let ids: Vec<Id> = (0..1000u32).map(|i| Id::hash(&i.to_le_bytes())).collect();
        let set: IdSet = ids.iter().take(500).copied().collect();
        assert_eq!(set.len(), 500);
        assert!(ids[..500].iter().all(|id| set.contains(id)));
        assert!(ids[500..].iter().all(|id| !set.contains(id)));
    }
}
