//! The key file of an encrypted (`repokey`) store and where passwords come
//! from. This module owns:
//!
//! - [`Secrets`]: the password source of a command (`--password-file` /
//!   `ATOSNAP_PASSWORD_FILE`, else `ATOSNAP_PASSWORD`; never a flag value).
//!   Passwords are held in zeroizing buffers and never printed: `Debug`
//!   shows only where a password would come from.
//! - [`KeyFile`]: `STORE/keys/repokey.json`, the store's master key wrapped
//!   with XChaCha20-Poly1305 under a key derived from the password by
//!   Argon2id, with the Argon2id parameters and salt recorded beside it.
//! - [`KdfCost`]: the Argon2id cost of new wraps (tuned to ~0.5 s and
//!   64 MiB; `ATOSNAP_KDF_PARAMS` overrides it, for tests only).
//!
//! The keys derived from the master key are `store::seal`'s.

use argon2::{Algorithm, Argon2, Block, Params, Version};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::store::seal::{MasterKey, NONCE_LEN, TAG_LEN};

/// The key file, relative to the store root.
pub const KEY_FILE: &str = "keys/repokey.json";
pub const KEY_FILE_VERSION: u32 = 1;
/// The password itself (the password file, when given, wins).
pub const PASSWORD_ENV: &str = "ATOSNAP_PASSWORD";
/// The new password of `key passwd` (the new password file, when given, wins).
pub const NEW_PASSWORD_ENV: &str = "ATOSNAP_NEW_PASSWORD";
/// Overrides the Argon2id cost of new wraps: `m=<KiB>,t=<iterations>,p=<lanes>`.
/// For tests, which would otherwise spend 0.5 s per command: never set it
/// for a real store.
pub const KDF_PARAMS_ENV: &str = "ATOSNAP_KDF_PARAMS";

/// Associated data of the wrapped master key.
const WRAP_AD: &[u8] = b"atosnap repokey v1 wrapped master key";
const SALT_LEN: usize = 32;
const MAX_PASSWORD_FILE: u64 = 64 * 1024;

/// Bounds a key file's Argon2id parameters must respect to be tried, so a
/// damaged key file cannot make a command allocate without limit.
const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
const MAX_ITERATIONS: u32 = 64;
const MAX_PARALLELISM: u32 = 64;

/// A password, zeroized on drop.
pub struct Password(Zeroizing<Vec<u8>>);

impl Password {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Password {
        Password(Zeroizing::new(bytes.into()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

/// Where a command's password comes from. Reading is lazy: a command on an
/// unencrypted store never opens the password file.
#[derive(Clone, Default)]
pub struct Secrets {
    password_file: Option<PathBuf>,
    password: Option<Zeroizing<Vec<u8>>>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("password_file", &self.password_file)
            .field("password", &self.password.as_ref().map(|_| ".."))
            .finish()
    }
}

impl Secrets {
    /// No password: enough for an unencrypted store.
    pub fn none() -> Secrets {
        Secrets::default()
    }

    /// A password given directly (library callers, tests).
    pub fn from_password(password: impl Into<Vec<u8>>) -> Secrets {
        Secrets {
            password_file: None,
            password: Some(Zeroizing::new(password.into())),
        }
    }

    pub fn from_file(path: impl Into<PathBuf>) -> Secrets {
        Secrets {
            password_file: Some(path.into()),
            password: None,
        }
    }

    /// The CLI's source: the password file (flag or `ATOSNAP_PASSWORD_FILE`,
    /// resolved by clap), else `ATOSNAP_PASSWORD`.
    pub fn from_env(password_file: Option<PathBuf>) -> Secrets {
        Secrets::from_env_var(password_file, PASSWORD_ENV)
    }

    /// `key passwd`'s new password: the new password file (flag or
    /// `ATOSNAP_NEW_PASSWORD_FILE`), else `ATOSNAP_NEW_PASSWORD`.
    pub fn new_password_from_env(new_password_file: Option<PathBuf>) -> Secrets {
        Secrets::from_env_var(new_password_file, NEW_PASSWORD_ENV)
    }

    fn from_env_var(password_file: Option<PathBuf>, var: &str) -> Secrets {
        use std::os::unix::ffi::OsStringExt;
        let password = std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(|v| Zeroizing::new(v.into_vec()));
        Secrets {
            password_file: password_file.filter(|p| !p.as_os_str().is_empty()),
            password,
        }
    }

    /// Whether any source was given.
    pub fn is_given(&self) -> bool {
        self.password_file.is_some() || self.password.is_some()
    }

    /// The password, or None when no source was given. A password file
    /// loses one trailing newline (`\n` or `\r\n`).
    pub fn password(&self) -> Result<Option<Password>> {
        if let Some(path) = &self.password_file {
            return read_password_file(path).map(Some);
        }
        Ok(self
            .password
            .as_ref()
            .map(|p| Password::new(p.as_slice().to_vec())))
    }
}

fn read_password_file(path: &Path) -> Result<Password> {
    let fail = |detail: String| Error::PasswordFile {
        path: path.to_path_buf(),
        detail,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    let mut buf = Zeroizing::new(Vec::new());
    file.take(MAX_PASSWORD_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if buf.len() as u64 > MAX_PASSWORD_FILE {
        return Err(fail(format!(
            "larger than {MAX_PASSWORD_FILE} bytes: not a password file"
        )));
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Ok(Password::new(buf.as_slice().to_vec()))
}

/// The Argon2id cost of a new wrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfCost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl KdfCost {
    /// 48 MiB and 11 passes: ~0.25 s of CPU on the project's machine
    /// (release build, 3 runs of `list`: 0.24-0.25 s user, as 64 MiB and
    /// 8 passes took). The memory is what any command on an encrypted
    /// store peaks at while it opens the key (the buffer plus ~5 MiB of
    /// process), so it stays under the 64 MiB every command is held to
    /// (SPEC §5): 64 MiB made every command peak at 69 MiB. The passes
    /// keep an attacker's cost per guess (memory times passes) where it
    /// was. This argon2 implementation runs its lanes on one thread, so
    /// more lanes would only help an attacker.
    pub const DEFAULT: KdfCost = KdfCost {
        memory_kib: 48 * 1024,
        iterations: 11,
        parallelism: 1,
    };

    /// The default, or `ATOSNAP_KDF_PARAMS` when set.
    pub fn from_env() -> Result<KdfCost> {
        match std::env::var(KDF_PARAMS_ENV) {
            Ok(v) if !v.is_empty() => {
                KdfCost::parse(&v).map_err(|e| Error::Usage(format!("{KDF_PARAMS_ENV}={v:?}: {e}")))
            }
            _ => Ok(KdfCost::DEFAULT),
        }
    }

    /// Parses `m=<KiB>,t=<iterations>,p=<lanes>` (any order, all three).
    pub fn parse(s: &str) -> std::result::Result<KdfCost, String> {
        let (mut m, mut t, mut p) = (None, None, None);
        for part in s.split(',') {
            let (k, v) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not key=value"))?;
            let v: u32 = v
                .trim()
                .parse()
                .map_err(|_| format!("{k}: {v:?} is not a number"))?;
            match k.trim() {
                "m" => m = Some(v),
                "t" => t = Some(v),
                "p" => p = Some(v),
                other => return Err(format!("unknown key {other:?} (expected m, t, p)")),
            }
        }
        let (Some(memory_kib), Some(iterations), Some(parallelism)) = (m, t, p) else {
            return Err("expected m=<KiB>,t=<iterations>,p=<lanes>".into());
        };
        let cost = KdfCost {
            memory_kib,
            iterations,
            parallelism,
        };
        cost.check()?;
        Ok(cost)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if !(1..=MAX_PARALLELISM).contains(&self.parallelism) {
            return Err(format!("parallelism must be 1..={MAX_PARALLELISM}"));
        }
        if !(1..=MAX_ITERATIONS).contains(&self.iterations) {
            return Err(format!("iterations must be 1..={MAX_ITERATIONS}"));
        }
        if self.memory_kib < 8 * self.parallelism || self.memory_kib > MAX_MEMORY_KIB {
            return Err(format!(
                "memory must be 8 * parallelism..={MAX_MEMORY_KIB} KiB"
            ));
        }
        Ok(())
    }
}

/// Argon2id parameters and salt of a wrap, as recorded in the key file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KdfParams {
    /// Always `argon2id`.
    pub algorithm: String,
    /// Argon2 version, 19 (0x13).
    pub version: u32,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// 32 random bytes, hex.
    pub salt: String,
}

/// The wrapped master key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WrappedKey {
    /// Always `xchacha20poly1305`.
    pub algorithm: String,
    /// 24 random bytes, hex.
    pub nonce: String,
    /// The 32-byte master key encrypted, then the 16-byte tag: 48 bytes, hex.
    pub ciphertext: String,
}

/// `STORE/keys/repokey.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub version: u32,
    /// Always `repokey`.
    pub scheme: String,
    /// Public id of the master key (also in `config.json`).
    pub key_id: String,
    /// When this wrap was written (by `init` or `key passwd`).
    pub wrapped_at: String,
    pub kdf: KdfParams,
    pub wrapped_key: WrappedKey,
}

/// Why a key file did not give its master key.
#[derive(Debug, PartialEq, Eq)]
pub enum UnwrapError {
    /// The tag did not verify: the password is wrong (or the wrapped key
    /// was altered, which cannot be told apart).
    WrongPassword,
    /// The key file is not a valid key file.
    Corrupt(String),
}

fn random_bytes<const N: usize>() -> std::result::Result<[u8; N], String> {
    use rand::TryRngCore;
    let mut out = [0u8; N];
    rand::rngs::OsRng
        .try_fill_bytes(&mut out)
        .map_err(|e| format!("the system random generator failed: {e}"))?;
    Ok(out)
}

fn hex_exact<const N: usize>(s: &str, what: &str) -> std::result::Result<[u8; N], String> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| format!("{what} is not {N} bytes of hex"))?;
    Ok(out)
}

impl KdfParams {
    fn cost(&self) -> KdfCost {
        KdfCost {
            memory_kib: self.memory_kib,
            iterations: self.iterations,
            parallelism: self.parallelism,
        }
    }

    /// The key-encryption key from the password (Argon2id).
    fn derive(&self, password: &Password) -> std::result::Result<Zeroizing<[u8; 32]>, String> {
        if self.algorithm != "argon2id" || self.version != 0x13 {
            return Err(format!(
                "unsupported key derivation {} version {}",
                self.algorithm, self.version
            ));
        }
        self.cost().check().map_err(|e| format!("kdf: {e}"))?;
        let salt = hex::decode(&self.salt).map_err(|_| "kdf salt is not hex".to_string())?;
        if !(16..=64).contains(&salt.len()) {
            return Err("kdf salt must be 16..=64 bytes".into());
        }
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|e| format!("kdf parameters: {e}"))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut blocks = vec![Block::default(); argon.params().block_count()];
        let mut kek = Zeroizing::new([0u8; 32]);
        let result = argon.hash_password_into_with_memory(
            password.as_bytes(),
            &salt,
            &mut kek[..],
            &mut blocks,
        );
        blocks.iter_mut().for_each(Zeroize::zeroize);
        result.map_err(|e| format!("key derivation failed: {e}"))?;
        Ok(kek)
    }
}

impl KeyFile {
    /// Wraps `master` under `password` with fresh salt and nonce.
    pub fn wrap(
        master: &MasterKey,
        password: &Password,
        cost: KdfCost,
    ) -> std::result::Result<KeyFile, String> {
        cost.check()?;
        let kdf = KdfParams {
            algorithm: "argon2id".into(),
            version: 0x13,
            memory_kib: cost.memory_kib,
            iterations: cost.iterations,
            parallelism: cost.parallelism,
            salt: hex::encode(random_bytes::<SALT_LEN>()?),
        };
        let kek = kdf.derive(password)?;
        let nonce = random_bytes::<NONCE_LEN>()?;
        let cipher = XChaCha20Poly1305::new((&*kek).into());
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: master.as_bytes(),
                    aad: WRAP_AD,
                },
            )
            .map_err(|_| "wrapping the master key failed".to_string())?;
        let file = KeyFile {
            version: KEY_FILE_VERSION,
            scheme: "repokey".into(),
            key_id: master.key_id(),
            wrapped_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            kdf,
            wrapped_key: WrappedKey {
                algorithm: "xchacha20poly1305".into(),
                nonce: hex::encode(nonce),
                ciphertext: hex::encode(ciphertext),
            },
        };
        // Prove the wrap opens before anyone relies on it.
        match file.unwrap_with_kek(&kek) {
            Ok(m) if m.as_bytes() == master.as_bytes() => Ok(file),
            _ => Err("the new key file does not open (internal error)".into()),
        }
    }

    /// Parses and checks a key file's fields (not the password).
    pub fn parse(bytes: &[u8]) -> std::result::Result<KeyFile, String> {
        let file: KeyFile =
            serde_json::from_slice(bytes).map_err(|e| format!("not a key file: {e}"))?;
        if file.version != KEY_FILE_VERSION {
            return Err(format!(
                "key file version {} (this atosnap reads {KEY_FILE_VERSION})",
                file.version
            ));
        }
        if file.scheme != "repokey" {
            return Err(format!("scheme {:?}, expected \"repokey\"", file.scheme));
        }
        if file.wrapped_key.algorithm != "xchacha20poly1305" {
            return Err(format!(
                "unsupported key wrap {:?}",
                file.wrapped_key.algorithm
            ));
        }
        hex_exact::<NONCE_LEN>(&file.wrapped_key.nonce, "wrapped_key.nonce")?;
        hex_exact::<{ 32 + TAG_LEN }>(&file.wrapped_key.ciphertext, "wrapped_key.ciphertext")?;
        hex_exact::<16>(&file.key_id, "key_id")?;
        Ok(file)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// The master key, given the password. Runs Argon2id (~0.5 s).
    pub fn unwrap(&self, password: &Password) -> std::result::Result<MasterKey, UnwrapError> {
        let kek = self.kdf.derive(password).map_err(UnwrapError::Corrupt)?;
        let master = self.unwrap_with_kek(&kek)?;
        if master.key_id() != self.key_id {
            return Err(UnwrapError::Corrupt(
                "key_id does not match the key it wraps".into(),
            ));
        }
        Ok(master)
    }

    fn unwrap_with_kek(&self, kek: &[u8; 32]) -> std::result::Result<MasterKey, UnwrapError> {
        let nonce = hex_exact::<NONCE_LEN>(&self.wrapped_key.nonce, "wrapped_key.nonce")
            .map_err(UnwrapError::Corrupt)?;
        let ct = hex_exact::<{ 32 + TAG_LEN }>(&self.wrapped_key.ciphertext, "ciphertext")
            .map_err(UnwrapError::Corrupt)?;
        let cipher = XChaCha20Poly1305::new(kek.into());
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &ct,
                        aad: WRAP_AD,
                    },
                )
                .map_err(|_| UnwrapError::WrongPassword)?,
        );
        let mut key = [0u8; 32];
        if plain.len() != 32 {
            return Err(UnwrapError::Corrupt("wrapped key is not 32 bytes".into()));
        }
        key.copy_from_slice(&plain);
        let master = MasterKey::from_bytes(key);
        key.zeroize();
        Ok(master)
    }

    /// What commands report about the key (nothing secret).
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "key_file": KEY_FILE,
            "key_id": self.key_id,
            "wrapped_at": self.wrapped_at,
            "kdf": {
                "algorithm": self.kdf.algorithm,
                "memory_kib": self.kdf.memory_kib,
                "iterations": self.kdf.iterations,
                "parallelism": self.kdf.parallelism,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: KdfCost = KdfCost {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn wrap_unwrap_and_wrong_password() {
        let master = MasterKey::from_bytes([9; 32]);
        let file = KeyFile::wrap(&master, &Password::new("right"), CHEAP).unwrap();
        let parsed = KeyFile::parse(&file.to_json()).unwrap();
        assert_eq!(parsed, file);
        let back = parsed.unwrap(&Password::new("right")).unwrap();
        assert_eq!(back.as_bytes(), master.as_bytes());
        assert_eq!(
            parsed.unwrap(&Password::new("wrong")).err(),
            Some(UnwrapError::WrongPassword)
        );
        let json = String::from_utf8(file.to_json()).unwrap();
        assert!(!json.contains(&hex::encode([9u8; 32])));
    }

    #[test]
    fn damaged_key_files_are_refused_not_tried() {
        let master = MasterKey::from_bytes([1; 32]);
        let file = KeyFile::wrap(&master, &Password::new("pw"), CHEAP).unwrap();
        assert!(KeyFile::parse(b"{").is_err());
        let mut f = file.clone();
        f.wrapped_key.nonce = "00".into();
        assert!(KeyFile::parse(&f.to_json()).is_err());
        let mut f = file.clone();
        f.kdf.memory_kib = u32::MAX;
        assert!(matches!(
            f.unwrap(&Password::new("pw")),
            Err(UnwrapError::Corrupt(_))
        ));
        let mut f = file.clone();
        f.key_id = "00".repeat(16);
        assert!(matches!(
            f.unwrap(&Password::new("pw")),
            Err(UnwrapError::Corrupt(_))
        ));
        let mut f = file;
        let mut ct = hex::decode(&f.wrapped_key.ciphertext).unwrap();
        ct[0] ^= 1;
        f.wrapped_key.ciphertext = hex::encode(ct);
        assert_eq!(
            f.unwrap(&Password::new("pw")).err(),
            Some(UnwrapError::WrongPassword)
        );
    }

    #[test]
    fn kdf_cost_parsing() {
        assert_eq!(KdfCost::parse("m=64,t=1,p=1").unwrap(), CHEAP);
        assert!(KdfCost::parse("m=64,t=1").is_err());
        assert!(KdfCost::parse("m=4,t=1,p=1").is_err());
        assert!(KdfCost::parse("m=64,t=0,p=1").is_err());
        assert!(KdfCost::parse("x=1,t=1,p=1").is_err());
        assert!(KdfCost::DEFAULT.check().is_ok());
    }

    #[test]
    fn password_file_loses_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "secret\r\n").unwrap();
        let pw = Secrets::from_file(&p).password().unwrap().unwrap();
        assert_eq!(pw.as_bytes(), b"secret");
        std::fs::write(&p, "two\n\n").unwrap();
        let pw = Secrets::from_file(&p).password().unwrap().unwrap();
        assert_eq!(pw.as_bytes(), b"two\n");
        assert!(Secrets::none().password().unwrap().is_none());
        assert!(Secrets::from_file(dir.path().join("missing"))
            .password()
            .is_err());
        let shown = format!("{:?}", Secrets::from_password("hunter2"));
        assert!(!shown.contains("hunter2"));
    }
}
