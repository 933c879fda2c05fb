//! The retention policy of `cleanup` as a pure function: snapshots (stamp
//! and tags) and rules in, which to keep (with every reason) and which to
//! delete out. No I/O here; `cleanup` gathers the input and carries the
//! plan out, [`crate::ops::policy`] stores a policy in the store.
//!
//! Rules (SPEC §3), each applied to the snapshots newest first, all times
//! in UTC (stamps are UTC):
//! - `last N`: the N newest snapshots;
//! - `within D`: every snapshot taken at most D before the NEWEST
//!   snapshot (not before "now", as restic does: a timer that stopped
//!   weeks ago must not turn the next cleanup into "delete everything",
//!   and the plan stays a pure function of its input);
//! - `hourly N`: the most recent snapshot of each of the N most recent
//!   clock hours that have one;
//! - `daily N`: the most recent snapshot of each of the N most recent
//!   calendar days that have a snapshot;
//! - `weekly N`: the most recent Sunday snapshot of each of the N most
//!   recent weeks that have one (weeks run Monday to Sunday, so a week
//!   holds exactly one Sunday; snapshots of other weekdays never count for
//!   this rule);
//! - `monthly N`: the most recent 1st-of-month snapshot of each of the N
//!   most recent months that have one;
//! - `yearly N`: the most recent 1st-of-January snapshot of each of the N
//!   most recent years that have one;
//! - `weekly_any_day` (`--weekly-any-day`) relaxes the last three: a week
//!   (month, year) without a snapshot on its Sunday (1st, January 1st)
//!   keeps its newest snapshot instead of none;
//! - `keep_tags`: every snapshot carrying one of these tags;
//! - a snapshot whose tags could not be read is kept (it might carry a
//!   kept tag), and so is every unparseable folder: they are not even
//!   candidates;
//! - the newest snapshot is always kept (reason `newest` when no rule
//!   names it): retention never empties the store.
//!
//! Everything no rule names is deleted. The plan is idempotent: applied to
//! the snapshots it keeps, it keeps them all (the newest snapshot, the
//! reference of `within`, is among them).

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc, Weekday};
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::stamp::Stamp;

/// The seed's rules: 7 daily, 4 Sunday-weekly, 6 first-of-month.
pub const DEFAULT_DAILY: u32 = 7;
pub const DEFAULT_WEEKLY: u32 = 4;
pub const DEFAULT_MONTHLY: u32 = 6;

/// The rules. Counts of 0 switch a rule off. Unknown fields are refused
/// (a policy written by a newer atosnap with a rule this one does not
/// know must not be applied without it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default)]
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    #[serde(default)]
    pub keep_yearly: u32,
    #[serde(default)]
    pub keep_within: Option<Within>,
    #[serde(default)]
    pub weekly_any_day: bool,
    pub keep_tags: Vec<String>,
}

impl Policy {
    /// The seed's defaults (SPEC §3): daily 7, weekly 4, monthly 6.
    pub fn standard() -> Policy {
        Policy {
            keep_daily: DEFAULT_DAILY,
            keep_weekly: DEFAULT_WEEKLY,
            keep_monthly: DEFAULT_MONTHLY,
            ..Policy::default()
        }
    }

    /// True when no rule can keep anything: every snapshot but the newest
    /// would go.
    pub fn keeps_nothing(&self) -> bool {
        self.keep_last == 0
            && self.keep_hourly == 0
            && self.keep_daily == 0
            && self.keep_weekly == 0
            && self.keep_monthly == 0
            && self.keep_yearly == 0
            && self.keep_within.is_none()
            && self.keep_tags.is_empty()
    }
}

/// A `--keep-within` duration: whole hours, written as a sequence of
/// `<number><unit>` with units `h`, `d` (24 h) and `w` (7 d), e.g. `36h`,
/// `14d`, `2w`, `1w2d12h`. Kept as written, for the JSON and the policy
/// file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Within {
    hours: u64,
    text: String,
}

impl Within {
    pub fn parse(s: &str) -> Result<Within, String> {
        let text = s.trim();
        if text.is_empty() {
            return Err("empty duration (write e.g. 36h, 14d or 2w)".into());
        }
        let mut hours: u64 = 0;
        let mut digits = String::new();
        for c in text.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let per = match c {
                'h' => 1,
                'd' => 24,
                'w' => 24 * 7,
                _ => {
                    return Err(format!(
                        "{text:?}: unknown unit {c:?} (units: h, d, w; e.g. 36h, 14d, 2w)"
                    ))
                }
            };
            if digits.is_empty() {
                return Err(format!("{text:?}: a number must come before {c:?}"));
            }
            let n: u64 = digits
                .parse()
                .map_err(|_| format!("{text:?}: {digits} is too large"))?;
            hours = n
                .checked_mul(per)
                .and_then(|h| hours.checked_add(h))
                .filter(|h| *h <= 24 * 366 * 1000)
                .ok_or_else(|| format!("{text:?}: longer than 1000 years"))?;
            digits.clear();
        }
        if !digits.is_empty() {
            return Err(format!(
                "{text:?}: {digits} has no unit (units: h, d, w; e.g. 36h)"
            ));
        }
        if hours == 0 {
            return Err(format!("{text:?}: the duration is zero"));
        }
        Ok(Within {
            hours,
            text: text.to_string(),
        })
    }

    pub fn hours(&self) -> u64 {
        self.hours
    }

    fn duration(&self) -> chrono::Duration {
        chrono::Duration::hours(self.hours as i64)
    }
}

impl fmt::Display for Within {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Within {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Within {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Within::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One snapshot as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub stamp: Stamp,
    /// `None` when the snapshot's tags could not be read.
    pub tags: Option<Vec<String>>,
}

/// Why a snapshot is kept.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    Last,
    Within,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    Tag(String),
    TagsUnreadable,
    Newest,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Last => f.write_str("last"),
            Reason::Within => f.write_str("within"),
            Reason::Hourly => f.write_str("hourly"),
            Reason::Daily => f.write_str("daily"),
            Reason::Weekly => f.write_str("weekly"),
            Reason::Monthly => f.write_str("monthly"),
            Reason::Yearly => f.write_str("yearly"),
            Reason::Tag(t) => write!(f, "tag:{t}"),
            Reason::TagsUnreadable => f.write_str("tags_unreadable"),
            Reason::Newest => f.write_str("newest"),
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A kept snapshot and every rule that keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    pub stamp: Stamp,
    pub reasons: Vec<Reason>,
}

/// The outcome: oldest first in both lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub keep: Vec<Kept>,
    pub delete: Vec<Stamp>,
    /// Folders under `snapshots/` that are not stamps: always kept.
    pub unparseable: Vec<String>,
}

impl Plan {
    pub fn kept_stamps(&self) -> impl Iterator<Item = &Stamp> {
        self.keep.iter().map(|k| &k.stamp)
    }
}

/// A calendar period rule: how a snapshot's time names its period, and
/// which day of the period is the designated one (Sunday, the 1st).
struct PeriodRule {
    count: u32,
    period: fn(DateTime<Utc>) -> (i32, u32),
    designated: fn(NaiveDate) -> bool,
    /// Fall back to the period's newest snapshot when the designated day
    /// has none.
    any_day: bool,
    reason: Reason,
}

fn hour_of(t: DateTime<Utc>) -> (i32, u32) {
    (t.year(), t.ordinal() * 24 + t.hour())
}
fn day_of(t: DateTime<Utc>) -> (i32, u32) {
    (t.year(), t.ordinal())
}
/// ISO weeks run Monday to Sunday: the Sunday is a week's last day.
fn week_of(t: DateTime<Utc>) -> (i32, u32) {
    let w = t.iso_week();
    (w.year(), w.week())
}
fn month_of(t: DateTime<Utc>) -> (i32, u32) {
    (t.year(), t.month())
}
fn year_of(t: DateTime<Utc>) -> (i32, u32) {
    (t.year(), 0)
}

/// Indexes (into `newest_first`) that `rule` keeps: per period, newest
/// period first, the newest snapshot of its designated day (else, with
/// `any_day`, its newest snapshot), for the `count` most recent periods
/// that have such a pick.
fn period_picks(newest_first: &[&Candidate], rule: &PeriodRule) -> Vec<usize> {
    let mut picks = Vec::new();
    let mut i = 0;
    while i < newest_first.len() && picks.len() < rule.count as usize {
        let key = (rule.period)(newest_first[i].stamp.time());
        let mut end = i;
        while end < newest_first.len() && (rule.period)(newest_first[end].stamp.time()) == key {
            end += 1;
        }
        // Periods are contiguous spans of time, so newest first groups a
        // period's snapshots together, newest first within it.
        let designated =
            (i..end).find(|&j| (rule.designated)(newest_first[j].stamp.time().date_naive()));
        if let Some(j) = designated.or(rule.any_day.then_some(i)) {
            picks.push(j);
        }
        i = end;
    }
    picks
}

/// Applies `policy` to `candidates` (any order; stamps are unique).
pub fn plan(candidates: &[Candidate], unparseable: &[String], policy: &Policy) -> Plan {
    let mut newest_first: Vec<&Candidate> = candidates.iter().collect();
    newest_first.sort_by(|a, b| b.stamp.cmp(&a.stamp));
    let mut reasons: Vec<Vec<Reason>> = vec![Vec::new(); newest_first.len()];

    for r in reasons.iter_mut().take(policy.keep_last as usize) {
        r.push(Reason::Last);
    }
    if let (Some(within), Some(newest)) = (&policy.keep_within, newest_first.first()) {
        let since = newest.stamp.time() - within.duration();
        for (i, c) in newest_first.iter().enumerate() {
            if c.stamp.time() < since {
                break;
            }
            reasons[i].push(Reason::Within);
        }
    }
    let any = policy.weekly_any_day;
    let rules = [
        (
            policy.keep_hourly,
            hour_of as fn(_) -> _,
            (|_| true) as fn(NaiveDate) -> bool,
            true,
            Reason::Hourly,
        ),
        (policy.keep_daily, day_of, |_| true, true, Reason::Daily),
        (
            policy.keep_weekly,
            week_of,
            |d| d.weekday() == Weekday::Sun,
            any,
            Reason::Weekly,
        ),
        (
            policy.keep_monthly,
            month_of,
            |d| d.day() == 1,
            any,
            Reason::Monthly,
        ),
        (
            policy.keep_yearly,
            year_of,
            |d| d.ordinal() == 1,
            any,
            Reason::Yearly,
        ),
    ];
    for (count, period, designated, any_day, reason) in rules {
        let rule = PeriodRule {
            count,
            period,
            designated,
            any_day,
            reason,
        };
        for i in period_picks(&newest_first, &rule) {
            reasons[i].push(rule.reason.clone());
        }
    }

    for (i, c) in newest_first.iter().enumerate() {
        match &c.tags {
            None => reasons[i].push(Reason::TagsUnreadable),
            Some(tags) => {
                for t in &policy.keep_tags {
                    if tags.contains(t) && !reasons[i].contains(&Reason::Tag(t.clone())) {
                        reasons[i].push(Reason::Tag(t.clone()));
                    }
                }
            }
        }
    }
    if let Some(first) = reasons.first_mut() {
        if first.is_empty() {
            first.push(Reason::Newest);
        }
    }

    let mut out = Plan {
        unparseable: unparseable.to_vec(),
        ..Plan::default()
    };
    for (c, r) in newest_first.iter().zip(reasons).rev() {
        if r.is_empty() {
            out.delete.push(c.stamp.clone());
        } else {
            out.keep.push(Kept {
                stamp: c.stamp.clone(),
                reasons: r,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
