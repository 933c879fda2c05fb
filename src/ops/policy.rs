//! The retention policy stored in the store (`atosnap policy set/show`), so
//! that a systemd timer, an operator at a shell and any other caller of
//! `cleanup` apply the same rules.
//!
//! It lives in `policy.json` at the store root: a small JSON document
//! ([`StoredPolicy`]), sealed like the snapshot summaries in an encrypted
//! store (so a tampered policy is refused, never applied), replaced
//! atomically (temp file, fsync, rename on a local store; one PUT on a
//! bucket) exactly like the key file. Unknown fields are refused: a policy
//! written by a newer atosnap is not applied with rules missing.
//!
//! Precedence, per rule: a `cleanup` flag given on the command line beats
//! the stored policy, which beats the seed's defaults (daily 7, weekly 4,
//! monthly 6). `--keep-tag` flags add to the stored tags (a pin in the
//! stored policy is never dropped by a one-off run), and
//! `--weekly-any-day` switches the relaxation on.

use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ops::cleanup::retention::{Policy, Within};
use crate::store::{BackendErrorKind, Object, Store};

/// The version of `policy.json` this build writes and reads.
pub const POLICY_VERSION: u32 = 1;

/// The content of `policy.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredPolicy {
    pub version: u32,
    /// When it was set (RFC 3339, UTC).
    pub set_at: String,
    pub policy: Policy,
}

/// Rules given on a command line; `None` (or empty) leaves a rule to the
/// policy underneath.
#[derive(Clone, Debug, Default)]
pub struct RuleFlags {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    /// As typed (`36h`, `14d`, `2w`); parsed by [`RuleFlags::apply`].
    pub keep_within: Option<String>,
    pub weekly_any_day: bool,
    pub keep_tags: Vec<String>,
}

impl RuleFlags {
    pub fn is_empty(&self) -> bool {
        self.keep_last.is_none()
            && self.keep_hourly.is_none()
            && self.keep_daily.is_none()
            && self.keep_weekly.is_none()
            && self.keep_monthly.is_none()
            && self.keep_yearly.is_none()
            && self.keep_within.is_none()
            && !self.weekly_any_day
            && self.keep_tags.is_empty()
    }

    /// `base` with these flags laid over it. A malformed `--keep-within`
    /// is a usage error naming the flag.
    pub fn apply(&self, base: Policy) -> Result<Policy> {
        let mut p = base;
        let set = |slot: &mut u32, v: Option<u32>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(&mut p.keep_last, self.keep_last);
        set(&mut p.keep_hourly, self.keep_hourly);
        set(&mut p.keep_daily, self.keep_daily);
        set(&mut p.keep_weekly, self.keep_weekly);
        set(&mut p.keep_monthly, self.keep_monthly);
        set(&mut p.keep_yearly, self.keep_yearly);
        if let Some(text) = &self.keep_within {
            p.keep_within = Some(parse_within(text)?);
        }
        p.weekly_any_day |= self.weekly_any_day;
        for t in &self.keep_tags {
            if t.is_empty() {
                return Err(Error::Usage("--keep-tag: a tag cannot be empty".into()));
            }
            if !p.keep_tags.contains(t) {
                p.keep_tags.push(t.clone());
            }
        }
        Ok(p)
    }
}

/// Parses a `--keep-within` value; the error names the flag.
pub fn parse_within(text: &str) -> Result<Within> {
    Within::parse(text).map_err(|e| Error::Usage(format!("--keep-within: {e}")))
}

/// The result of `policy set` and `policy show`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyResult {
    /// Whether the store holds a policy (false: the defaults apply).
    pub stored: bool,
    /// The policy `cleanup` applies when given no rule flags.
    pub policy: Policy,
    pub set_at: Option<String>,
    /// Where it is kept.
    pub file: String,
}

/// The stored policy, if the store has one.
pub fn read(store: &Store) -> Result<Option<StoredPolicy>> {
    let path = store.display(&Object::Policy);
    let bytes = match store.read_object(&Object::Policy) {
        Ok(b) => b,
        Err(e) if BackendErrorKind::of(&e) == BackendErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    let invalid = |detail: String| Error::StoreConfigInvalid {
        path: path.display().to_string(),
        detail,
    };
    let opened = store
        .sealer()
        .open(bytes, Object::Policy.name().as_bytes())
        .map_err(invalid)?;
    let stored: StoredPolicy = serde_json::from_slice(&opened)
        .map_err(|e| invalid(format!("not a retention policy: {e}")))?;
    if stored.version > POLICY_VERSION {
        return Err(invalid(format!(
            "policy version {} is newer than this atosnap reads ({POLICY_VERSION}): upgrade atosnap",
            stored.version
        )));
    }
    Ok(Some(stored))
}

/// `policy show`.
pub fn show(store: &Store) -> Result<PolicyResult> {
    let stored = read(store)?;
    Ok(result(store, stored))
}

/// `policy set`: the seed's defaults with `flags` laid over them (not the
/// previous stored policy: what is stored never depends on history),
/// written atomically.
pub fn set(store: &Store, flags: &RuleFlags) -> Result<PolicyResult> {
    let policy = flags.apply(Policy::standard())?;
    if policy.keeps_nothing() {
        return Err(Error::Usage(
            "policy set: every --keep-* rule is 0 and no --keep-tag is given: cleanup would delete every snapshot but the newest".into(),
        ));
    }
    let stored = StoredPolicy {
        version: POLICY_VERSION,
        set_at: chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
        policy,
    };
    let json = serde_json::to_vec_pretty(&stored).map_err(|e| Error::Encode {
        detail: e.to_string(),
    })?;
    let sealed = store.sealer().seal(json, Object::Policy.name().as_bytes());
    store.replace_object(&Object::Policy, &sealed)?;
    Ok(result(store, Some(stored)))
}

/// The policy `cleanup` applies: the stored one (else the defaults) with
/// `flags` laid over it, and where it came from (`store`, `defaults`,
/// `+flags`).
pub fn resolve(store: &Store, flags: &RuleFlags) -> Result<(Policy, String)> {
    let (base, mut source) = match read(store)? {
        Some(s) => (s.policy, "store".to_string()),
        None => (Policy::standard(), "defaults".to_string()),
    };
    if !flags.is_empty() {
        source.push_str("+flags");
    }
    Ok((flags.apply(base)?, source))
}

fn result(store: &Store, stored: Option<StoredPolicy>) -> PolicyResult {
    let file = store.display(&Object::Policy).display().to_string();
    match stored {
        Some(s) => PolicyResult {
            stored: true,
            policy: s.policy,
            set_at: Some(s.set_at),
            file,
        },
        None => PolicyResult {
            stored: false,
            policy: Policy::standard(),
            set_at: None,
            file,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_per_rule_and_tags_add() {
        let base = Policy {
            keep_hourly: 24,
            keep_tags: vec!["pin".into()],
            ..Policy::standard()
        };
        let flags = RuleFlags {
            keep_daily: Some(2),
            keep_within: Some("2w".into()),
            keep_tags: vec!["x".into(), "pin".into()],
            ..RuleFlags::default()
        };
        let p = flags.apply(base).unwrap();
        assert_eq!(
            (p.keep_hourly, p.keep_daily, p.keep_weekly),
            (24, 2, crate::ops::cleanup::retention::DEFAULT_WEEKLY)
        );
        assert_eq!(p.keep_within.unwrap().hours(), 14 * 24);
        assert_eq!(p.keep_tags, ["pin", "x"]);
    }

    #[test]
    fn a_malformed_duration_names_the_flag() {
        let flags = RuleFlags {
            keep_within: Some("3x".into()),
            ..RuleFlags::default()
        };
        let e = flags.apply(Policy::standard()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--keep-within"), "{e}");
    }

    #[test]
    fn stored_policy_round_trips_and_refuses_unknown_rules() {
        let s = StoredPolicy {
            version: 1,
            set_at: "2026-04-11T12:00:00Z".into(),
            policy: Policy {
                keep_within: Some(Within::parse("36h").unwrap()),
                ..Policy::standard()
            },
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<StoredPolicy>(&json).unwrap(), s);
        let newer = json.replace("\"keep_last\"", "\"keep_fortnightly\": 3, \"keep_last\"");
        assert!(serde_json::from_str::<StoredPolicy>(&newer).is_err());
    }
}
