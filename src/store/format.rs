//! `config.json`: the store's format version and the parameters every
//! writer must use so that chunk boundaries (and so dedup) agree across
//! runs and hosts.

use serde::{Deserialize, Serialize};

pub use crate::chunk::{ChunkingParams, CompressionParams};
use crate::error::{Error, Result};
use crate::store::lists::ListParams;
use crate::store::pack2::FrameParams;

/// The format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format this build reads. Stores of an older format than
/// [`FORMAT_VERSION`] are read-only (`store_format_read_only`): `copy`
/// into a new store is the upgrade.
pub const FORMAT_VERSION_MIN: u32 = 1;

/// Bounds of `pack.target_size`. Entry offsets are `u32`: a pack closes
/// past its target plus one chunk (at most 16 MiB), far below 4 GiB.
pub const PACK_TARGET_MIN: u64 = 4 * 1024;
pub const PACK_TARGET_MAX: u64 = 1 << 30;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub format_version: u32,
    /// Random id of this store (hex), for logs and for the cache of remote stores.
    pub store_id: String,
    pub created_at: String,
    pub chunking: ChunkingParams,
    pub compression: CompressionParams,
    /// Format 2: the list-tree parameters (`docs/FORMAT.md`, "List
    /// blobs"); absent in format 1, whose manifests list every chunk id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lists: Option<ListParams>,
    pub pack: PackParams,
    pub encryption: EncryptionParams,
    /// Format 2: how consecutive new chunks are cut into zstd frames
    /// (`docs/design/format2.md` §1.3.2). Absent in format 1, whose packs
    /// hold one stored unit per chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<FrameConfig>,
}

/// The `frames` part of a format-2 `config.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FrameConfig {
    /// A frame closes when it holds this many chunks (1..=4096).
    pub max_chunks: u32,
    /// A frame closes once its raw bytes reach this (1..=8 MiB).
    pub max_bytes: u32,
    /// Whether writers may store frames of 4-byte numbers with codec 3
    /// (`zstd` over byte lanes). Written only when true: a build without
    /// the codec refuses such a config (an unknown field) instead of
    /// reporting its frames as damage; a store made before the codec
    /// keeps writing codecs 0 and 1.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lanes: bool,
}

impl FrameConfig {
    /// Whether a frame a store of config `from` wrote may move as it is
    /// into a store of this config: cut the same way, and in a codec this
    /// config allows (lanes frames only into a store that declares lanes).
    pub fn takes_frames_of(&self, from: &FrameConfig) -> bool {
        (self.max_chunks, self.max_bytes) == (from.max_chunks, from.max_bytes)
            && (self.lanes || !from.lanes)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PackParams {
    /// A pack is closed once it holds at least this many bytes.
    pub target_size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EncryptionParams {
    /// `none` or `repokey` (a password-wrapped master key in
    /// `keys/repokey.json`; see `store::key`).
    pub scheme: String,
    /// `repokey` only: the public id of the master key (hex, 16 bytes), so
    /// a key file of another store is recognised as such.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

impl StoreConfig {
    pub fn new_default() -> StoreConfig {
        StoreConfig {
            format_version: FORMAT_VERSION,
            store_id: hex::encode(rand::random::<[u8; 16]>()),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            chunking: ChunkingParams {
                sqlite_page_chunks: true,
                fixed_block_suffixes: vec![".bin".to_string()],
                fixed_block_size: 4096,
                cdc_min_size: 16 * 1024,
                cdc_avg_size: 64 * 1024,
                cdc_max_size: 256 * 1024,
            },
            compression: FrameParams::default_v2().compression,
            lists: Some(ListParams::default()),
            pack: PackParams {
                target_size: 32 * 1024 * 1024,
            },
            encryption: EncryptionParams {
                scheme: "none".to_string(),
                key_id: None,
            },
            frames: Some(FrameConfig {
                max_chunks: FrameParams::default_v2().frame_max_chunks,
                max_bytes: FrameParams::default_v2().frame_max_bytes,
                lanes: FrameParams::default_v2().lanes,
            }),
        }
    }

    /// How `init --compression` reads in this format: `auto` is step 0's
    /// frame defaults (zstd 3, raw above 97 %), `zstd:N` that level with
    /// the same cutoff, `none` every frame raw.
    pub fn set_compression(&mut self, choice: &CompressionParams) {
        let defaults = FrameParams::default_v2().compression;
        self.compression = if choice.auto {
            defaults
        } else {
            CompressionParams {
                algorithm: choice.algorithm.clone(),
                level: choice.level,
                max_ratio_percent: defaults.max_ratio_percent,
                auto: false,
            }
        };
    }

    /// The frame parameters of a format-2 store (None in format 1).
    pub fn frame_params(&self) -> Option<FrameParams> {
        self.frames.as_ref().map(|f| FrameParams {
            compression: self.compression.clone(),
            frame_max_chunks: f.max_chunks,
            frame_max_bytes: f.max_bytes,
            lanes: f.lanes,
        })
    }

    /// Parses `config.json`, refusing a newer format before looking at
    /// anything else (a newer writer may have changed every other field).
    pub fn parse(bytes: &[u8], path: &str) -> Result<StoreConfig> {
        let invalid = |detail: String| Error::StoreConfigInvalid {
            path: path.to_string(),
            detail,
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let version = value
            .get("format_version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| invalid("no numeric format_version".to_string()))?;
        if version < FORMAT_VERSION_MIN as u64 {
            return Err(invalid(format!(
                "format_version {version} was never written"
            )));
        }
        if version > FORMAT_VERSION as u64 {
            return Err(Error::StoreTooNew {
                path: path.to_string(),
                found: version.min(u32::MAX as u64) as u32,
                supported: FORMAT_VERSION,
            });
        }
        let config: StoreConfig =
            serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
        config.check().map_err(invalid)?;
        Ok(config)
    }

    /// Whether this build writes to a store of this config: only to one of
    /// its own format (an older one is read-only).
    pub fn is_writable(&self) -> bool {
        self.format_version == FORMAT_VERSION
    }

    /// The list-tree parameters of a format-2 store (`None` in format 1).
    pub fn list_params(&self) -> Option<&ListParams> {
        self.lists.as_ref()
    }

    fn check(&self) -> std::result::Result<(), String> {
        match (self.format_version, &self.lists) {
            (1, None) => {}
            (1, Some(_)) => return Err("lists is not a field of format 1".into()),
            (_, None) => return Err("lists is required in format 2".into()),
            (_, Some(l)) => l.check()?,
        }
        let c = &self.chunking;
        if c.fixed_block_size == 0 || c.fixed_block_size > 1 << 20 {
            return Err("chunking.fixed_block_size out of range".into());
        }
        // FastCDC's own bounds; outside them it would refuse to run.
        let ok = (64..=1 << 20).contains(&c.cdc_min_size)
            && (256..=1 << 22).contains(&c.cdc_avg_size)
            && (1024..=1 << 24).contains(&c.cdc_max_size)
            && c.cdc_min_size <= c.cdc_avg_size
            && c.cdc_avg_size <= c.cdc_max_size;
        if !ok {
            return Err("chunking.cdc sizes outside FastCDC's bounds (min 64..1Mi, avg 256..4Mi, max 1Ki..16Mi, min <= avg <= max)".into());
        }
        let target = self.pack.target_size;
        if !(PACK_TARGET_MIN..=PACK_TARGET_MAX).contains(&target) {
            return Err(format!(
                "pack.target_size {target} is outside {PACK_TARGET_MIN}..={PACK_TARGET_MAX} bytes (4 KiB..1 GiB)"
            ));
        }
        if let Some(problem) = self.compression.problem() {
            return Err(problem);
        }
        match (self.format_version, self.frame_params()) {
            (1, None) => {}
            (1, Some(_)) => {
                return Err("frames are a format-2 field, this store is format 1".into())
            }
            (_, None) => return Err("frames (frame_max_chunks, frame_max_bytes) missing".into()),
            (_, Some(p)) => p.check().map_err(|e| format!("frames: {e}"))?,
        }
        let e = &self.encryption;
        match (e.scheme.as_str(), &e.key_id) {
            ("none", None) => {}
            ("none", Some(_)) => return Err("encryption.key_id set for scheme \"none\"".into()),
            ("repokey", Some(id)) if id.len() == 32 && hex::decode(id).is_ok() => {}
            ("repokey", _) => {
                return Err(
                    "encryption.key_id (32 hex digits) is required for scheme \"repokey\"".into(),
                )
            }
            (other, _) => {
                return Err(format!(
                    "encryption scheme {other:?} is not supported by this build"
                ))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with_target(target: u64) -> Result<StoreConfig> {
        let mut config = StoreConfig::new_default();
        config.pack.target_size = target;
        StoreConfig::parse(&serde_json::to_vec(&config).unwrap(), "config.json")
    }

    #[test]
    fn a_default_config_has_no_auto_field_and_pinned_ones_read_back() {
        let default = StoreConfig::new_default();
        let json = serde_json::to_string(&default).unwrap();
        // Format 2: step 0's defaults, `auto` not written.
        assert!(
            json.contains(r#""compression":{"algorithm":"zstd","level":3,"max_ratio_percent":97}"#),
            "{json}"
        );
        assert!(
            json.contains(r#""frames":{"max_chunks":256,"max_bytes":1048576,"lanes":true}"#),
            "{json}"
        );
        let back = StoreConfig::parse(json.as_bytes(), "config.json").unwrap();
        assert_eq!(back.compression.choice(), "auto");
        for choice in ["none", "zstd:19"] {
            let mut config = StoreConfig::new_default();
            config.set_compression(&CompressionParams::parse_choice(choice).unwrap());
            let json = serde_json::to_vec(&config).unwrap();
            let back = StoreConfig::parse(&json, "config.json").unwrap();
            assert_eq!(back.compression.choice(), choice);
            assert_eq!(back.format_version, FORMAT_VERSION);
        }
        let mut config = StoreConfig::new_default();
        config.compression.algorithm = "gzip".into();
        let e =
            StoreConfig::parse(&serde_json::to_vec(&config).unwrap(), "config.json").unwrap_err();
        assert!(
            e.to_string().contains("unknown compression \"gzip\""),
            "{e}"
        );
    }

    #[test]
    fn frames_are_required_in_format_2_and_refused_in_format_1() {
        let parse = |c: &StoreConfig| StoreConfig::parse(&serde_json::to_vec(c).unwrap(), "c");
        let mut config = StoreConfig::new_default();
        assert_eq!(config.format_version, 2);
        assert_eq!(config.frame_params(), Some(FrameParams::default_v2()));
        assert!(parse(&config).is_ok());
        config.frames.as_mut().unwrap().max_chunks = 0;
        let e = parse(&config).unwrap_err();
        assert!(e.to_string().contains("frame_max_chunks 0"), "{e}");
        config.frames = None;
        let e = parse(&config).unwrap_err();
        assert!(e.to_string().contains("frames"), "{e}");
        config.format_version = 1;
        config.compression = CompressionParams::auto();
        config.lists = None;
        assert!(parse(&config).is_ok(), "a format-1 config has no frames");
        config.frames = StoreConfig::new_default().frames;
        assert!(parse(&config).is_err());
    }

    #[test]
    fn pack_target_size_is_bounded() {
        assert!(parse_with_target(32 << 20).is_ok());
        assert!(parse_with_target(PACK_TARGET_MIN).is_ok());
        assert!(parse_with_target(PACK_TARGET_MAX).is_ok());
        for absurd in [0, PACK_TARGET_MIN - 1, PACK_TARGET_MAX + 1, u64::MAX] {
            let e = parse_with_target(absurd).unwrap_err();
            assert_eq!(e.code(), "store_config_invalid");
            assert!(e.to_string().contains("pack.target_size"), "{e}");
        }
    }
}
