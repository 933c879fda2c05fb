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
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn noon(y: i32, m: u32, d: u32) -> Candidate {
        Candidate {
            stamp: Stamp::at(Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap()),
            tags: Some(vec![]),
        }
    }

    fn days(y: i32, m: u32, from: u32, to: u32) -> Vec<Candidate> {
        (from..=to).map(|d| noon(y, m, d)).collect()
    }

    fn defaults() -> Policy {
        Policy::standard()
    }

    fn names(stamps: impl IntoIterator<Item = Stamp>) -> Vec<String> {
        stamps.into_iter().map(|s| s.to_string()).collect()
    }

    // ---- SPEC §3 reference cases, exact numbers ----------------------------

    #[test]
    fn spec_ten_days_keep_7_delete_3() {
        let c = days(2026, 4, 2, 11);
        let p = plan(&c, &[], &defaults());
        assert_eq!((p.keep.len(), p.delete.len()), (7, 3));
        assert_eq!(
            names(p.delete),
            ["20260402T120000Z", "20260403T120000Z", "20260404T120000Z"]
        );
    }

    #[test]
    fn spec_seven_days_keep_7_delete_0() {
        let p = plan(&days(2026, 4, 5, 11), &[], &defaults());
        assert_eq!((p.keep.len(), p.delete.len()), (7, 0));
    }

    #[test]
    fn spec_sundays_keep_9_delete_the_wednesday() {
        let mut c = days(2026, 4, 5, 11);
        c.extend([noon(2026, 3, 29), noon(2026, 3, 22), noon(2026, 3, 25)]);
        let p = plan(&c, &[], &defaults());
        assert_eq!((p.keep.len(), p.delete.len()), (9, 1));
        assert_eq!(names(p.delete), ["20260325T120000Z"]);
        let weekly: Vec<String> = p
            .keep
            .iter()
            .filter(|k| k.reasons.contains(&Reason::Weekly))
            .map(|k| k.stamp.to_string())
            .collect();
        assert_eq!(
            weekly,
            ["20260322T120000Z", "20260329T120000Z", "20260405T120000Z"]
        );
    }

    #[test]
    fn spec_first_of_month_keep_9_delete_the_15th() {
        let mut c = days(2026, 4, 5, 11);
        c.extend([noon(2026, 1, 1), noon(2025, 12, 1), noon(2026, 1, 15)]);
        let p = plan(&c, &[], &defaults());
        assert_eq!((p.keep.len(), p.delete.len()), (9, 1));
        assert_eq!(names(p.delete), ["20260115T120000Z"]);
    }

    #[test]
    fn spec_unparseable_is_reported_and_kept() {
        let p = plan(&days(2026, 4, 2, 11), &["not-a-stamp".into()], &defaults());
        assert_eq!(p.unparseable, ["not-a-stamp"]);
        assert_eq!(p.keep.len() + p.delete.len(), 10);
    }

    // ---- finer points -------------------------------------------------------

    #[test]
    fn the_most_recent_of_a_day_is_kept() {
        let day = Utc.with_ymd_and_hms(2026, 4, 11, 0, 0, 0).unwrap();
        let c: Vec<Candidate> = [1, 9, 23]
            .iter()
            .map(|h| Candidate {
                stamp: Stamp::at(day + Duration::hours(*h)),
                tags: Some(vec![]),
            })
            .chain([Candidate {
                stamp: Stamp::at(day + Duration::hours(23)).with_seq(2),
                tags: Some(vec![]),
            }])
            .collect();
        let p = plan(&c, &[], &defaults());
        assert_eq!(names(p.kept_stamps().cloned()), ["20260411T230000Z-2"]);
        assert_eq!(p.delete.len(), 3);
    }

    #[test]
    fn tags_keep_and_unreadable_tags_keep() {
        let mut c = days(2026, 3, 2, 20);
        c[0].tags = Some(vec!["pre-restore".into(), "x".into()]);
        c[1].tags = None;
        let policy = Policy {
            keep_daily: 1,
            keep_tags: vec!["pre-restore".into()],
            ..Policy::default()
        };
        let p = plan(&c, &[], &policy);
        let kept: Vec<(String, Vec<String>)> = p
            .keep
            .iter()
            .map(|k| {
                (
                    k.stamp.to_string(),
                    k.reasons.iter().map(|r| r.to_string()).collect(),
                )
            })
            .collect();
        assert_eq!(
            kept,
            [
                (
                    "20260302T120000Z".to_string(),
                    vec!["tag:pre-restore".into()]
                ),
                (
                    "20260303T120000Z".to_string(),
                    vec!["tags_unreadable".into()]
                ),
                ("20260320T120000Z".to_string(), vec!["daily".into()]),
            ]
        );
    }

    #[test]
    fn zero_counts_switch_rules_off_but_the_newest_stays() {
        let policy = Policy::default();
        assert!(policy.keeps_nothing());
        let p = plan(&days(2026, 4, 1, 5), &[], &policy);
        assert_eq!((p.keep.len(), p.delete.len()), (1, 4));
        assert_eq!(p.keep[0].reasons, [Reason::Newest]);
        assert_eq!(p.keep[0].stamp.to_string(), "20260405T120000Z");
    }

    fn at(y: i32, m: u32, d: u32, h: u32) -> Candidate {
        Candidate {
            stamp: Stamp::at(Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()),
            tags: Some(vec![]),
        }
    }

    fn reasons_of(p: &Plan) -> Vec<(String, Vec<String>)> {
        p.keep
            .iter()
            .map(|k| {
                (
                    k.stamp.to_string(),
                    k.reasons.iter().map(|r| r.to_string()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn hourly_last_and_within() {
        // Every 30 minutes over 3 days (the newest at 04-11 23:30).
        let base = Utc.with_ymd_and_hms(2026, 4, 9, 0, 0, 0).unwrap();
        let c: Vec<Candidate> = (0..144)
            .map(|i| Candidate {
                stamp: Stamp::at(base + Duration::minutes(30 * i)),
                tags: Some(vec![]),
            })
            .collect();
        let hourly = Policy {
            keep_hourly: 5,
            ..Policy::default()
        };
        let p = plan(&c, &[], &hourly);
        assert_eq!(
            names(p.kept_stamps().cloned()),
            [
                "20260411T193000Z",
                "20260411T203000Z",
                "20260411T213000Z",
                "20260411T223000Z",
                "20260411T233000Z"
            ]
        );
        let last = Policy {
            keep_last: 3,
            ..Policy::default()
        };
        assert_eq!(plan(&c, &[], &last).keep.len(), 3);
        // 36 h before the newest (23:30 on the 11th): 11:30 on the 10th on.
        let within = Policy {
            keep_within: Some(Within::parse("36h").unwrap()),
            ..Policy::default()
        };
        let p = plan(&c, &[], &within);
        assert_eq!(p.keep.len(), 73);
        assert_eq!(p.keep[0].stamp.to_string(), "20260410T113000Z");
        assert!(p.keep.iter().all(|k| k.reasons == [Reason::Within]));
    }

    #[test]
    fn within_is_relative_to_the_newest_snapshot_not_now() {
        // A timer stopped long ago: everything is years old, the policy
        // still keeps the last 14 days of what exists.
        let c = days(2020, 1, 1, 31);
        let p = plan(
            &c,
            &[],
            &Policy {
                keep_within: Some(Within::parse("2w").unwrap()),
                ..Policy::default()
            },
        );
        assert_eq!(p.keep.len(), 15);
        assert_eq!(p.keep[0].stamp.to_string(), "20200117T120000Z");
    }

    #[test]
    fn weekly_any_day_keeps_the_newest_of_a_week_without_sunday() {
        // Wednesdays only, four weeks, plus one Sunday.
        let c = vec![
            noon(2026, 3, 4),
            noon(2026, 3, 11),
            noon(2026, 3, 18),
            noon(2026, 3, 22),
            noon(2026, 3, 25),
        ];
        let strict = Policy {
            keep_weekly: 4,
            ..Policy::default()
        };
        let p = plan(&c, &[], &strict);
        // Only the Sunday counts; the newest is kept as the floor.
        assert_eq!(
            reasons_of(&p),
            [
                ("20260322T120000Z".to_string(), vec!["weekly".to_string()]),
                ("20260325T120000Z".to_string(), vec!["newest".to_string()]),
            ]
        );
        let any = Policy {
            weekly_any_day: true,
            ..strict
        };
        let p = plan(&c, &[], &any);
        // Weeks: 03-02..08, 03-09..15, 03-16..22 (its Sunday), 03-23..29.
        assert_eq!(
            names(p.kept_stamps().cloned()),
            [
                "20260304T120000Z",
                "20260311T120000Z",
                "20260322T120000Z",
                "20260325T120000Z"
            ]
        );
        assert_eq!(p.delete.len(), 1);
    }

    #[test]
    fn monthly_and_yearly_any_day() {
        let c = vec![
            at(2024, 1, 1, 3),
            at(2024, 6, 15, 3),
            at(2025, 3, 10, 3),
            at(2025, 3, 20, 3),
            at(2026, 1, 1, 3),
            at(2026, 2, 1, 3),
            at(2026, 2, 9, 3),
        ];
        let strict = Policy {
            keep_yearly: 5,
            ..Policy::default()
        };
        let kept = |p: &Policy| names(plan(&c, &[], p).kept_stamps().cloned());
        assert_eq!(
            kept(&strict),
            ["20240101T030000Z", "20260101T030000Z", "20260209T030000Z"]
        );
        let any = Policy {
            weekly_any_day: true,
            ..strict
        };
        // (the newest stays as the floor)
        assert_eq!(
            kept(&any),
            [
                "20240101T030000Z",
                "20250320T030000Z",
                "20260101T030000Z",
                "20260209T030000Z"
            ]
        );
        let monthly_any = Policy {
            keep_monthly: 3,
            weekly_any_day: true,
            ..Policy::default()
        };
        // Feb 2026 keeps its 1st, Jan 2026 its 1st, Mar 2025 its newest.
        assert_eq!(
            kept(&monthly_any),
            [
                "20250320T030000Z",
                "20260101T030000Z",
                "20260201T030000Z",
                "20260209T030000Z"
            ]
        );
    }

    #[test]
    fn every_reason_is_reported() {
        let mut c = days(2026, 3, 1, 1);
        c[0].tags = Some(vec!["pin".into()]);
        let p = plan(
            &c,
            &[],
            &Policy {
                keep_last: 1,
                keep_daily: 1,
                keep_monthly: 1,
                keep_tags: vec!["pin".into()],
                ..Policy::default()
            },
        );
        assert_eq!(reasons_of(&p)[0].1, ["last", "daily", "monthly", "tag:pin"]);
    }

    #[test]
    fn within_durations_parse_and_refuse() {
        assert_eq!(Within::parse("36h").unwrap().hours(), 36);
        assert_eq!(Within::parse("14d").unwrap().hours(), 14 * 24);
        assert_eq!(Within::parse("2w").unwrap().hours(), 14 * 24);
        assert_eq!(Within::parse("1w2d12h").unwrap().hours(), 7 * 24 + 48 + 12);
        for bad in [
            "",
            "h",
            "12",
            "3x",
            "0d",
            "1.5d",
            "-1d",
            "99999999999999999999h",
        ] {
            assert!(Within::parse(bad).is_err(), "{bad:?} accepted");
        }
        let json = serde_json::to_string(&Within::parse("14d").unwrap()).unwrap();
        assert_eq!(json, "\"14d\"");
    }

    // ---- properties ---------------------------------------------------------

    /// Snapshots spread over ~100 days, several a day, some tagged.
    fn candidates() -> impl Strategy<Value = Vec<Candidate>> {
        let base = Utc.with_ymd_and_hms(2025, 12, 20, 0, 0, 0).unwrap();
        proptest::collection::btree_set((0i64..100 * 24, 0u32..3), 0..60).prop_flat_map(
            move |slots| {
                let n = slots.len();
                (
                    Just(slots),
                    proptest::collection::vec(
                        prop_oneof![
                            6 => Just(Some(vec![])),
                            2 => Just(Some(vec!["keep".to_string()])),
                            1 => Just(Some(vec!["other".to_string()])),
                            1 => Just(None),
                        ],
                        n,
                    ),
                )
                    .prop_map(move |(slots, tags)| {
                        slots
                            .into_iter()
                            .zip(tags)
                            .map(|((hour, seq), tags)| Candidate {
                                stamp: Stamp::at(base + Duration::hours(hour)).with_seq(seq + 1),
                                tags,
                            })
                            .collect()
                    })
            },
        )
    }

    fn policies() -> impl Strategy<Value = Policy> {
        (
            (0u32..9, 0u32..6, 0u32..5, any::<bool>()),
            (
                0u32..4,
                0u32..30,
                0u32..3,
                prop::option::of(1u64..200),
                any::<bool>(),
            ),
        )
            .prop_map(|((d, w, m, tag), (last, h, y, within, any_day))| Policy {
                keep_last: last,
                keep_hourly: h,
                keep_daily: d,
                keep_weekly: w,
                keep_monthly: m,
                keep_yearly: y,
                keep_within: within.map(|h| Within::parse(&format!("{h}h")).unwrap()),
                weekly_any_day: any_day,
                keep_tags: if tag { vec!["keep".into()] } else { vec![] },
            })
    }

    /// A second, naive reading of the rules: for one period rule, the set
    /// of snapshots it names.
    fn oracle(
        c: &[Candidate],
        n: u32,
        designated: impl Fn(NaiveDate) -> bool,
        any_day: bool,
        bucket: impl Fn(DateTime<Utc>) -> (i32, u32),
    ) -> BTreeSet<Stamp> {
        let all_buckets: BTreeSet<(i32, u32)> = c.iter().map(|c| bucket(c.stamp.time())).collect();
        let pick = |b: &(i32, u32)| -> Option<Stamp> {
            let in_bucket = c.iter().filter(|c| bucket(c.stamp.time()) == *b);
            let on_day = in_bucket
                .clone()
                .filter(|c| designated(c.stamp.time().date_naive()))
                .map(|c| c.stamp.clone())
                .max();
            on_day.or_else(|| {
                any_day
                    .then(|| in_bucket.map(|c| c.stamp.clone()).max())
                    .flatten()
            })
        };
        all_buckets
            .iter()
            .rev()
            .filter_map(pick)
            .take(n as usize)
            .collect()
    }

    fn expected_keep(c: &[Candidate], p: &Policy) -> BTreeSet<Stamp> {
        let any = p.weekly_any_day;
        let mut keep = oracle(c, p.keep_hourly, |_| true, true, hour_of);
        keep.extend(oracle(c, p.keep_daily, |_| true, true, day_of));
        keep.extend(oracle(
            c,
            p.keep_weekly,
            |d| d.weekday() == Weekday::Sun,
            any,
            week_of,
        ));
        keep.extend(oracle(c, p.keep_monthly, |d| d.day() == 1, any, month_of));
        keep.extend(oracle(
            c,
            p.keep_yearly,
            |d| d.month() == 1 && d.day() == 1,
            any,
            year_of,
        ));
        let mut sorted: Vec<&Stamp> = c.iter().map(|c| &c.stamp).collect();
        sorted.sort();
        keep.extend(
            sorted
                .iter()
                .rev()
                .take(p.keep_last as usize)
                .map(|s| (*s).clone()),
        );
        if let (Some(w), Some(newest)) = (&p.keep_within, sorted.last()) {
            let since = newest.time() - Duration::hours(w.hours() as i64);
            keep.extend(
                sorted
                    .iter()
                    .filter(|s| s.time() >= since)
                    .map(|s| (*s).clone()),
            );
        }
        for x in c {
            match &x.tags {
                None => {
                    keep.insert(x.stamp.clone());
                }
                Some(t) if t.iter().any(|t| p.keep_tags.contains(t)) => {
                    keep.insert(x.stamp.clone());
                }
                Some(_) => {}
            }
        }
        if let Some(newest) = sorted.last() {
            keep.insert((*newest).clone());
        }
        keep
    }

    /// Each rule of `p` on its own (the any-day switch goes with the
    /// calendar rules it relaxes).
    fn single_rules(p: &Policy) -> Vec<Policy> {
        let none = Policy {
            weekly_any_day: p.weekly_any_day,
            ..Policy::default()
        };
        vec![
            Policy {
                keep_last: p.keep_last,
                ..none.clone()
            },
            Policy {
                keep_hourly: p.keep_hourly,
                ..none.clone()
            },
            Policy {
                keep_daily: p.keep_daily,
                ..none.clone()
            },
            Policy {
                keep_weekly: p.keep_weekly,
                ..none.clone()
            },
            Policy {
                keep_monthly: p.keep_monthly,
                ..none.clone()
            },
            Policy {
                keep_yearly: p.keep_yearly,
                ..none.clone()
            },
            Policy {
                keep_within: p.keep_within.clone(),
                ..none.clone()
            },
            Policy {
                keep_tags: p.keep_tags.clone(),
                ..none
            },
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn keeps_exactly_what_the_rules_name(c in candidates(), policy in policies()) {
            let p = plan(&c, &[], &policy);
            let kept: BTreeSet<Stamp> = p.kept_stamps().cloned().collect();
            prop_assert_eq!(&kept, &expected_keep(&c, &policy));
            // A partition of the input.
            let deleted: BTreeSet<Stamp> = p.delete.iter().cloned().collect();
            prop_assert!(kept.is_disjoint(&deleted));
            prop_assert_eq!(kept.len() + deleted.len(), c.len());
            // Oldest first.
            prop_assert!(p.delete.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(p.keep.windows(2).all(|w| w[0].stamp < w[1].stamp));
        }

        #[test]
        fn never_deletes_a_tagged_or_unparseable_entry(
            c in candidates(),
            policy in policies(),
            junk in proptest::collection::vec("[a-z.-]{1,12}", 0..4),
        ) {
            let p = plan(&c, &junk, &policy);
            prop_assert_eq!(&p.unparseable, &junk);
            let deleted: BTreeSet<&Stamp> = p.delete.iter().collect();
            for x in &c {
                let protected = match &x.tags {
                    None => true,
                    Some(t) => t.iter().any(|t| policy.keep_tags.contains(t)),
                };
                if protected {
                    prop_assert!(!deleted.contains(&x.stamp), "{} deleted", x.stamp);
                }
            }
        }

        #[test]
        fn never_deletes_the_newest(c in candidates(), policy in policies()) {
            let p = plan(&c, &[], &policy);
            if let Some(newest) = c.iter().map(|x| &x.stamp).max() {
                prop_assert!(!p.delete.contains(newest), "{} deleted", newest);
            }
        }

        #[test]
        fn a_snapshot_kept_by_any_single_rule_is_kept(c in candidates(), policy in policies()) {
            let combined: BTreeSet<Stamp> = plan(&c, &[], &policy).kept_stamps().cloned().collect();
            for single in single_rules(&policy) {
                for s in plan(&c, &[], &single).kept_stamps() {
                    prop_assert!(combined.contains(s), "{} kept by {:?} alone but not by {:?}", s, single, policy);
                }
            }
        }

        #[test]
        fn a_second_run_deletes_nothing_more(c in candidates(), policy in policies()) {
            let first = plan(&c, &[], &policy);
            let remaining: Vec<Candidate> = c
                .iter()
                .filter(|x| first.kept_stamps().any(|s| *s == x.stamp))
                .cloned()
                .collect();
            let second = plan(&remaining, &[], &policy);
            prop_assert!(second.delete.is_empty(), "second run deletes {:?}", second.delete);
            prop_assert_eq!(second.keep, first.keep);
        }
    }
}
