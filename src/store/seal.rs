//! Sealing: how chunk ids are computed and how stored bytes are wrapped.
//! Every object that leaves the process goes through [`Sealer`]:
//!
//! - `none` ([`Sealer::Plain`]): ids are plain BLAKE3 of the raw chunk and
//!   stored bytes are exactly the encoded bytes.
//! - `repokey` ([`Sealer::Repokey`]): ids are keyed BLAKE3 (a key derived
//!   from the master key), so a chunk's name says nothing about its content;
//!   every stored object is sealed with XChaCha20-Poly1305 under a second
//!   derived key, a fresh random 192-bit nonce per object and the caller's
//!   associated data (the chunk id for chunks, a role name otherwise):
//!
//! ```text
//! nonce (24 bytes) | ciphertext (same length as the plaintext) | tag (16 bytes)
//! ```
//!
//! This module owns the key hierarchy below the master key ([`MasterKey`],
//! [`RepoKeys`]); the key file that wraps the master key under a password
//! is `store::key`. Key material is zeroized when dropped.

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use rayon::prelude::*;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use zeroize::Zeroizing;

use crate::id::batch::{self, Mode};
use crate::id::Id;

/// Chunks hashed per rayon task: 256 KiB of 4 KiB chunks, sixteen lane
/// groups, enough to make a task worth its scheduling.
const IDS_PER_TASK: usize = 64;

/// Length of the random nonce in front of every sealed object.
pub const NONCE_LEN: usize = 24;
/// Length of the Poly1305 tag at the end of every sealed object.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed object adds to its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// BLAKE3 `derive_key` contexts: each derived key serves one purpose only.
const CONTEXT_ID_KEY: &str = "atosnap repokey v1 chunk id key";
const CONTEXT_SEAL_KEY: &str = "atosnap repokey v1 object sealing key";
const CONTEXT_KEY_ID: &str = "atosnap repokey v1 public key id";

/// The store's 256-bit master key. Everything else is derived from it.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl MasterKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Result<MasterKey, String> {
        use rand::TryRngCore;
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng
            .try_fill_bytes(&mut key[..])
            .map_err(|e| format!("the system random generator failed: {e}"))?;
        Ok(MasterKey(key))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        MasterKey(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A public name of this key (16 bytes, hex), recorded in `config.json`
    /// and the key file so a key file can be matched to its store. One-way:
    /// it reveals nothing about the key.
    pub fn key_id(&self) -> String {
        let d = blake3::derive_key(CONTEXT_KEY_ID, &self.0[..]);
        hex::encode(&d[..16])
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// The working keys of a `repokey` store, derived from the master key.
pub struct RepoKeys {
    master: MasterKey,
    id_key: Zeroizing<[u8; 32]>,
    /// Zeroizes its key on drop (chacha20poly1305's own `Drop`).
    cipher: XChaCha20Poly1305,
}

impl RepoKeys {
    pub fn from_master(master: MasterKey) -> RepoKeys {
        let id_key = Zeroizing::new(blake3::derive_key(CONTEXT_ID_KEY, &master.0[..]));
        let seal_key = Zeroizing::new(blake3::derive_key(CONTEXT_SEAL_KEY, &master.0[..]));
        let cipher = XChaCha20Poly1305::new((&*seal_key).into());
        RepoKeys {
            master,
            id_key,
            cipher,
        }
    }

    pub fn master(&self) -> &MasterKey {
        &self.master
    }
}

impl fmt::Debug for RepoKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoKeys(key id {})", self.master.key_id())
    }
}

#[derive(Clone, Debug)]
pub enum Sealer {
    /// Unencrypted: ids are plain blake3, stored bytes are as encoded.
    Plain,
    /// Encrypted (`repokey`): keyed-blake3 ids, XChaCha20-Poly1305 objects.
    Repokey(Arc<RepoKeys>),
}

impl Sealer {
    /// The sealer of a scheme that needs no key (`none`); None for any
    /// other scheme (`repokey` is built from its key file by `Store`).
    pub fn from_scheme(scheme: &str) -> Option<Sealer> {
        match scheme {
            "none" => Some(Sealer::Plain),
            _ => None,
        }
    }

    pub fn repokey(master: MasterKey) -> Sealer {
        Sealer::Repokey(Arc::new(RepoKeys::from_master(master)))
    }

    /// Bytes sealing adds to an object.
    pub fn overhead(&self) -> usize {
        if self.is_encrypted() {
            SEAL_OVERHEAD
        } else {
            0
        }
    }

    pub fn is_encrypted(&self) -> bool {
        matches!(self, Sealer::Repokey(_))
    }

    /// The keys of an encrypted store.
    pub fn keys(&self) -> Option<&RepoKeys> {
        match self {
            Sealer::Plain => None,
            Sealer::Repokey(k) => Some(k),
        }
    }

    /// Whether `other` names chunks exactly as this sealer does: both
    /// unencrypted, or both under the same master key (so the same id key,
    /// and the same sealing key too). Stored chunks then pass between the
    /// two stores unchanged; otherwise every chunk must be decoded,
    /// re-hashed and re-sealed (`copy`).
    pub fn same_ids_as(&self, other: &Sealer) -> bool {
        match (self, other) {
            (Sealer::Plain, Sealer::Plain) => true,
            (Sealer::Repokey(a), Sealer::Repokey(b)) => {
                // The keys are compared through a MAC of each, so no copy
                // of key material is left behind un-zeroized; blake3::Hash
                // compares in constant time.
                let fingerprint =
                    |k: &RepoKeys| blake3::keyed_hash(k.master.as_bytes(), b"atosnap same ids");
                Arc::ptr_eq(a, b) || fingerprint(a) == fingerprint(b)
            }
            _ => false,
        }
    }

    /// The id of a raw chunk.
    pub fn chunk_id(&self, raw: &[u8]) -> Id {
        match self {
            Sealer::Plain => Id::hash(raw),
            Sealer::Repokey(k) => Id(*blake3::keyed_hash(&k.id_key, raw).as_bytes()),
        }
    }

    /// The ids of many raw chunks, in order: [`Sealer::chunk_id`] of each,
    /// 4 KiB chunks hashed side by side (`id::batch`).
    pub fn chunk_ids(&self, raws: &[&[u8]]) -> Vec<Id> {
        match self {
            Sealer::Plain => batch::hash_many(Mode::Hash, raws),
            Sealer::Repokey(k) => batch::hash_many(Mode::Keyed(&k.id_key), raws),
        }
    }

    /// The ids of the chunks at `ranges` of `buf`, in order, hashed on all
    /// cores in runs of [`IDS_PER_TASK`].
    pub fn chunk_ids_in(&self, buf: &[u8], ranges: &[Range<usize>]) -> Vec<Id> {
        ranges
            .par_chunks(IDS_PER_TASK)
            .flat_map_iter(|run| {
                let pieces: Vec<&[u8]> = run.iter().map(|r| &buf[r.clone()]).collect();
                self.chunk_ids(&pieces)
            })
            .collect()
    }

    /// Wraps encoded bytes for storage. `ad` binds them to their name.
    pub fn seal(&self, encoded: Vec<u8>, ad: &[u8]) -> Vec<u8> {
        match self {
            Sealer::Plain => encoded,
            Sealer::Repokey(k) => {
                let nonce: [u8; NONCE_LEN] = rand::random();
                let mut out = Vec::with_capacity(encoded.len() + SEAL_OVERHEAD);
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&encoded);
                drop(encoded);
                // XChaCha20 refuses only messages above 2^38 bytes (256 GiB);
                // atosnap's objects are bounded far below (chunks <= 16 MiB,
                // pack indexes <= 1 GiB, manifests held in memory).
                let tag = k
                    .cipher
                    .encrypt_in_place_detached(
                        XNonce::from_slice(&nonce),
                        ad,
                        &mut out[NONCE_LEN..],
                    )
                    .expect("XChaCha20-Poly1305 accepts any object below 256 GiB");
                out.extend_from_slice(&tag);
                out
            }
        }
    }

    /// Reverses [`Sealer::seal`]; an error means the bytes were tampered
    /// with (or truncated, or sealed under another key or for another name).
    pub fn open(&self, stored: Vec<u8>, ad: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Sealer::Plain => Ok(stored),
            Sealer::Repokey(k) => {
                let mut buf = stored;
                if buf.len() < SEAL_OVERHEAD {
                    return Err(format!(
                        "sealed object too short ({} bytes, at least {SEAL_OVERHEAD})",
                        buf.len()
                    ));
                }
                let nonce = *XNonce::from_slice(&buf[..NONCE_LEN]);
                let tag_at = buf.len() - TAG_LEN;
                let tag = *Tag::from_slice(&buf[tag_at..]);
                buf.truncate(tag_at);
                buf.drain(..NONCE_LEN);
                k.cipher
                    .decrypt_in_place_detached(&nonce, ad, &mut buf, &tag)
                    .map_err(|_| {
                        "authentication failed: the sealed bytes were modified, or were \
                         not sealed by this store's key for this name"
                            .to_string()
                    })?;
                Ok(buf)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sealer(seed: u8) -> Sealer {
        Sealer::repokey(MasterKey::from_bytes([seed; 32]))
    }

    #[test]
    fn round_trip_with_fresh_nonces() {
        let s = sealer(1);
        let a = s.seal(b"hello chunk".to_vec(), b"ad");
        let b = s.seal(b"hello chunk".to_vec(), b"ad");
        assert_eq!(a.len(), 11 + SEAL_OVERHEAD);
        assert_ne!(a, b, "each seal draws a new nonce");
        assert_eq!(s.open(a, b"ad").unwrap(), b"hello chunk");
        assert_eq!(s.open(b, b"ad").unwrap(), b"hello chunk");
        let empty = s.seal(Vec::new(), b"ad");
        assert_eq!(s.open(empty, b"ad").unwrap(), b"");
    }

    #[test]
    fn ciphertext_hides_the_plaintext() {
        let s = sealer(1);
        let plain = b"DISTINCTIVE PLAINTEXT MARKER".repeat(4);
        let sealed = s.seal(plain.clone(), b"ad");
        assert!(!sealed
            .windows(b"DISTINCTIVE".len())
            .any(|w| w == b"DISTINCTIVE"));
    }

    #[test]
    fn tamper_wrong_ad_wrong_key_and_truncation_fail() {
        let s = sealer(1);
        let sealed = s.seal(b"payload".to_vec(), b"chunk-a");
        assert!(s.open(sealed.clone(), b"chunk-b").is_err());
        assert!(sealer(2).open(sealed.clone(), b"chunk-a").is_err());
        assert!(s
            .open(sealed[..sealed.len() - 1].to_vec(), b"chunk-a")
            .is_err());
        assert!(s.open(sealed[..10].to_vec(), b"chunk-a").is_err());
        assert!(Sealer::Plain.open(sealed.clone(), b"x").is_ok());
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x80;
            assert!(s.open(t, b"chunk-a").is_err(), "flip at byte {i} opened");
        }
    }

    #[test]
    fn keyed_ids_differ_from_plain_and_between_keys() {
        let data = b"some chunk";
        let plain = Sealer::Plain.chunk_id(data);
        assert_eq!(plain, Id::hash(data));
        let a = sealer(1).chunk_id(data);
        assert_ne!(a, plain);
        assert_eq!(a, sealer(1).chunk_id(data), "deterministic: dedup works");
        assert_ne!(a, sealer(2).chunk_id(data));
    }

    #[test]
    fn same_ids_only_for_plain_pairs_and_one_master_key() {
        assert!(Sealer::Plain.same_ids_as(&Sealer::Plain));
        assert!(!Sealer::Plain.same_ids_as(&sealer(1)));
        assert!(!sealer(1).same_ids_as(&Sealer::Plain));
        assert!(
            sealer(1).same_ids_as(&sealer(1)),
            "the same key, two handles"
        );
        assert!(!sealer(1).same_ids_as(&sealer(2)));
    }

    #[test]
    fn derived_keys_are_distinct_and_debug_hides_them() {
        let m = MasterKey::from_bytes([7; 32]);
        let id = blake3::derive_key(CONTEXT_ID_KEY, m.as_bytes());
        let seal = blake3::derive_key(CONTEXT_SEAL_KEY, m.as_bytes());
        assert_ne!(id, seal);
        assert_ne!(&id, m.as_bytes());
        let shown = format!("{:?}", sealer(7));
        assert!(!shown.contains(&hex::encode([7u8; 32])));
        assert!(!shown.contains(&hex::encode(id)));
        assert_eq!(m.key_id().len(), 32);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_round_trips_and_any_bit_flip_fails(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            ad in proptest::collection::vec(any::<u8>(), 0..40),
            bit in any::<usize>(),
        ) {
            let s = sealer(3);
            let sealed = s.seal(data.clone(), &ad);
            prop_assert_eq!(s.open(sealed.clone(), &ad).unwrap(), data);
            let mut flipped = sealed;
            let bit = bit % (flipped.len() * 8);
            flipped[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(s.open(flipped, &ad).is_err());
        }
    }
}
