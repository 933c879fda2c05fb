//! The retention policy of `cleanup` as a pure function: snapshots (stamp
//! and tags) and rules in, which to keep (with every reason) and which to
//! delete out. No I/O here; `cleanup` gathers the input and carries the
//! plan out.
//!
//! Rules (SPEC §3), each applied to the snapshots newest first, all days in
//! UTC (stamps are UTC):
//! - `daily N`: the most recent snapshot of each of the N most recent
//!   calendar days that have a snapshot;
//! - `weekly N`: the most recent Sunday snapshot of each of the N most
//!   recent weeks that have one (a week holds exactly one Sunday, so a week
//!   is named by its Sunday's date; snapshots of other weekdays never count
//!   for this rule);
//! - `monthly N`: the most recent 1st-of-month snapshot of each of the N
//!   most recent months that have one;
//! - `keep_tags`: every snapshot carrying one of these tags;
//! - a snapshot whose tags could not be read is kept (it might carry a
//!   kept tag), and so is every unparseable folder: they are not even
//!   candidates.
//!
//! Everything no rule names is deleted. The plan is idempotent: applied to
//! the snapshots it keeps, it keeps them all.

use chrono::{Datelike, NaiveDate, Weekday};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;

use crate::stamp::Stamp;

/// The rules. Counts of 0 switch a rule off.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_tags: Vec<String>,
}

impl Policy {
    /// True when no rule can keep anything: every snapshot would go.
    pub fn keeps_nothing(&self) -> bool {
        self.keep_daily == 0
            && self.keep_weekly == 0
            && self.keep_monthly == 0
            && self.keep_tags.is_empty()
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
    Daily,
    Weekly,
    Monthly,
    Tag(String),
    TagsUnreadable,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Daily => f.write_str("daily"),
            Reason::Weekly => f.write_str("weekly"),
            Reason::Monthly => f.write_str("monthly"),
            Reason::Tag(t) => write!(f, "tag:{t}"),
            Reason::TagsUnreadable => f.write_str("tags_unreadable"),
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

/// Applies `policy` to `candidates` (any order; stamps are unique).
pub fn plan(candidates: &[Candidate], unparseable: &[String], policy: &Policy) -> Plan {
    let mut newest_first: Vec<&Candidate> = candidates.iter().collect();
    newest_first.sort_by(|a, b| b.stamp.cmp(&a.stamp));
    let mut reasons: Vec<Vec<Reason>> = vec![Vec::new(); newest_first.len()];

    let date = |c: &Candidate| c.stamp.time().date_naive();
    let mut bucket_rule = |n: u32, counts: &dyn Fn(NaiveDate) -> bool, reason: Reason| {
        // Newest first, so the first snapshot met in a bucket is its most
        // recent one. A Sunday and a 1st-of-month are each one day, so the
        // day names the week and the month too.
        let mut buckets: HashSet<NaiveDate> = HashSet::new();
        for (i, c) in newest_first.iter().enumerate() {
            if buckets.len() >= n as usize {
                break;
            }
            let day = date(c);
            if counts(day) && buckets.insert(day) {
                reasons[i].push(reason.clone());
            }
        }
    };
    bucket_rule(policy.keep_daily, &|_| true, Reason::Daily);
    bucket_rule(
        policy.keep_weekly,
        &|d| d.weekday() == Weekday::Sun,
        Reason::Weekly,
    );
    bucket_rule(policy.keep_monthly, &|d| d.day() == 1, Reason::Monthly);

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
    use chrono::{Duration, TimeZone, Utc};
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
        Policy {
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 6,
            keep_tags: vec![],
        }
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
            keep_weekly: 0,
            keep_monthly: 0,
            keep_tags: vec!["pre-restore".into()],
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
    fn zero_counts_switch_rules_off() {
        let policy = Policy::default();
        assert!(policy.keeps_nothing());
        let p = plan(&days(2026, 4, 1, 5), &[], &policy);
        assert_eq!((p.keep.len(), p.delete.len()), (0, 5));
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
        (0u32..9, 0u32..6, 0u32..5, any::<bool>()).prop_map(|(d, w, m, tag)| Policy {
            keep_daily: d,
            keep_weekly: w,
            keep_monthly: m,
            keep_tags: if tag { vec!["keep".into()] } else { vec![] },
        })
    }

    /// A second, naive reading of the rules: for one rule, the set of
    /// snapshots it names.
    fn oracle(
        c: &[Candidate],
        n: u32,
        counts: impl Fn(NaiveDate) -> bool,
        bucket: impl Fn(NaiveDate) -> (i32, u32),
    ) -> BTreeSet<Stamp> {
        let eligible: Vec<&Candidate> = c
            .iter()
            .filter(|c| counts(c.stamp.time().date_naive()))
            .collect();
        let all_buckets: BTreeSet<(i32, u32)> = eligible
            .iter()
            .map(|c| bucket(c.stamp.time().date_naive()))
            .collect();
        let recent: Vec<(i32, u32)> = all_buckets.into_iter().rev().take(n as usize).collect();
        recent
            .iter()
            .filter_map(|b| {
                eligible
                    .iter()
                    .filter(|c| bucket(c.stamp.time().date_naive()) == *b)
                    .map(|c| c.stamp.clone())
                    .max()
            })
            .collect()
    }

    fn expected_keep(c: &[Candidate], p: &Policy) -> BTreeSet<Stamp> {
        let day = |d: NaiveDate| (d.year(), d.ordinal());
        let mut keep = oracle(c, p.keep_daily, |_| true, day);
        keep.extend(oracle(
            c,
            p.keep_weekly,
            |d| d.weekday() == Weekday::Sun,
            day,
        ));
        keep.extend(oracle(
            c,
            p.keep_monthly,
            |d| d.day() == 1,
            |d| (d.year(), d.month()),
        ));
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
        keep
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
